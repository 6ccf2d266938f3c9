//! `wprobe serve` on 127.0.0.1: the real binary, a real SQLite database in
//! a scratch data directory, real plugins. Token and Host/Origin checks,
//! uploads with versions and content-addressed blobs, refusals that change
//! nothing, restart persistence, and the OpenAPI document against the
//! route table.
//!
//! The client is a few lines of HTTP/1.1 over a `TcpStream` rather than an
//! HTTP crate: the tests must send forged `Host` headers and oversized
//! bodies that a client library would correct or refuse.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use wprobe_tests::*;

/// A running `wprobe serve`, killed on drop.
struct Server {
    child: Child,
    addr: String,
    token: String,
}

impl Server {
    fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(wprobe_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wprobe serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the URL");
        // http://127.0.0.1:PORT/#token=TOKEN
        let rest = line
            .trim()
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        let (addr, token) = rest
            .split_once("/#token=")
            .unwrap_or_else(|| panic!("no token in {line:?}"));
        Server {
            addr: addr.to_string(),
            token: token.to_string(),
            child,
        }
    }

    /// A request with the token and the right Host, unless `headers` give
    /// others.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let auth = format!("Bearer {}", self.token);
        self.raw(method, path, &[("Authorization", &auth)], body)
    }

    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        request(&self.addr, method, path, headers, body)
    }

    fn plugins(&self) -> Vec<Value> {
        let r = self.call("GET", "/api/plugins", b"");
        assert_eq!(r.status, 200, "{}", r.text);
        r.json.as_array().expect("a list").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    text: String,
    json: Value,
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head += &format!("Host: {addr}\r\n");
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send the head");
    // A refused body may be cut off by the server: what counts is the reply.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply to {method} {path}: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    Reply {
        status,
        text: body.to_string(),
        json,
    }
}

/// A fresh data directory for one test.
fn data_dir(tag: &str) -> PathBuf {
    let dir = scratch_dir().join(format!("serve-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// An example plugin built by plugins/build.sh (run here if it was not).
fn example_plugin(file: &str) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/plugins").join(file);
    if !path.exists() {
        let status = Command::new("flock")
            .arg(root.join("target/plugins.lock"))
            .args(["bash", "-c"])
            .arg(format!(
                "[ -e '{}' ] || bash '{}'",
                path.display(),
                root.join("plugins/build.sh").display()
            ))
            .status()
            .expect("run plugins/build.sh");
        assert!(status.success(), "plugins/build.sh failed");
    }
    std::fs::read(&path).expect("read the plugin")
}

/// A small plugin as WebAssembly text, which the runtime accepts too.
const WAT_PLUGIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))"#;

fn blob_count(dir: &Path) -> i64 {
    let db = rusqlite::Connection::open(dir.join("wprobe.db")).expect("open the db");
    db.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))
        .expect("count blobs")
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// `GET path` with `headers` answers `status`; an error names `words`.
fn check(s: &Server, path: &str, headers: &[(&str, &str)], status: u16, words: &str) {
    let r = s.raw("GET", path, headers, b"");
    assert_eq!(r.status, status, "GET {path} with {headers:?}: {}", r.text);
    if status >= 400 {
        let msg = r.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON error: {}", r.text));
        assert!(msg.contains(words), "{msg}");
    }
}

#[test]
fn token_host_and_origin() {
    let dir = data_dir("auth");
    let s = Server::start(&dir, &[]);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("token")), 0o600);
    assert_eq!(s.token.len(), 64);

    let wrong = "Bearer 0000";
    let good = format!("Bearer {}", s.token);
    let port = s.addr.rsplit(':').next().expect("port");
    let localhost = format!("localhost:{port}");
    let origin = format!("http://{}", s.addr);
    check(&s, "/api/health", &[], 200, "");
    check(&s, "/api/plugins", &[], 401, "missing");
    check(
        &s,
        "/api/plugins",
        &[("Authorization", wrong)],
        401,
        "wrong",
    );
    check(
        &s,
        "/api/plugins",
        &[("Authorization", &s.token)],
        401,
        "missing",
    );
    check(&s, "/api/openapi.json", &[], 401, "missing");
    check(&s, "/api/plugins", &[("Authorization", &good)], 200, "");
    let h = [("Authorization", good.as_str()), ("Host", &localhost)];
    check(&s, "/api/plugins", &h, 200, "");
    let h = [("Authorization", good.as_str()), ("Origin", &origin)];
    check(&s, "/api/plugins", &h, 200, "");
    check(
        &s,
        "/api/health",
        &[("Host", "evil.example:80")],
        403,
        "evil",
    );
    let h = [
        ("Authorization", good.as_str()),
        ("Host", "rebound.example"),
    ];
    check(&s, "/api/plugins", &h, 403, "rebound");
    let h = [
        ("Authorization", good.as_str()),
        ("Origin", "http://evil.example"),
    ];
    check(&s, "/api/plugins", &h, 403, "evil");
    check(&s, "/api/health", &[("Origin", "null")], 403, "null");
    let health = s.raw("GET", "/api/health", &[], b"").json;
    assert_eq!(health["status"], "ok");
    assert!(health["version"].is_string(), "{health}");
}

#[test]
fn plugins_versions_refusals_and_restart() {
    let dir = data_dir("plugins");
    let s = Server::start(&dir, &[]);
    let count = example_plugin("count.rust.wasm");

    let a = s.call("POST", "/api/plugins?name=count", &count);
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["name"], "count");
    assert_eq!(a.json["version"]["version"], 1);
    assert_eq!(a.json["version"]["manifest"]["name"], "count-rust");
    assert_eq!(a.json["version"]["size"], count.len());
    assert_eq!(a.json["new_blob"], true);
    let id = a.json["id"].as_i64().expect("id");

    // The same name again: a second version of the same plugin, and the
    // same bytes are stored once.
    let b = s.call("POST", "/api/plugins?name=count", &count);
    assert_eq!(b.status, 201, "{}", b.text);
    assert_eq!(b.json["id"], id);
    assert_eq!(b.json["version"]["version"], 2);
    assert_eq!(b.json["new_blob"], false);
    assert_eq!(b.json["version"]["sha256"], a.json["version"]["sha256"]);
    assert_eq!(blob_count(&dir), 1);

    // A text module, named by its upload.
    let w = s.call("POST", "/api/plugins?name=tiny", WAT_PLUGIN.as_bytes());
    assert_eq!(w.status, 201, "{}", w.text);
    assert_eq!(w.json["version"]["manifest"]["name"], "tiny");
    let tiny = w.json["id"].as_i64().expect("id");
    assert_ne!(tiny, id);
    assert_eq!(blob_count(&dir), 2);

    let listed = s.plugins();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["versions"], 2);
    assert_eq!(listed[0]["latest"]["version"], 2);
    let detail = s.call("GET", &format!("/api/plugins/{id}"), b"");
    assert_eq!(detail.status, 200, "{}", detail.text);
    assert_eq!(
        detail.json["versions"].as_array().expect("versions").len(),
        2
    );

    // Refusals change nothing.
    let no_handler = WAT_PLUGIN.replace("wprobe_on_entry", "something_else");
    let refusals: &[(&str, &[u8], u16, &str)] = &[
        (
            "/api/plugins?name=bad",
            b"not wasm at all",
            422,
            "not a valid WebAssembly",
        ),
        (
            "/api/plugins?name=bad",
            b"\0asm\x01\0\0\0\xff",
            422,
            "not a valid WebAssembly",
        ),
        (
            "/api/plugins?name=bad",
            no_handler.as_bytes(),
            422,
            "exports no handler",
        ),
        ("/api/plugins?name=count", b"(module)", 422, "memory"),
        (
            "/api/plugins?name=no%20spaces",
            WAT_PLUGIN.as_bytes(),
            400,
            "no spaces",
        ),
        (
            "/api/plugins?name=x&manifest=%7B",
            WAT_PLUGIN.as_bytes(),
            422,
            "manifest",
        ),
    ];
    for (path, body, status, words) in refusals {
        let r = s.call("POST", path, body);
        assert_eq!(r.status, *status, "POST {path}: {}", r.text);
        let msg = r.json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", r.text));
        assert!(msg.contains(words), "POST {path}: {msg}");
    }
    let r = s.raw(
        "POST",
        "/api/plugins?name=t",
        &[
            ("Authorization", &format!("Bearer {}", s.token)),
            ("Content-Type", "text/plain"),
        ],
        WAT_PLUGIN.as_bytes(),
    );
    assert_eq!(r.status, 415, "{}", r.text);
    assert_eq!(s.plugins(), listed);
    assert_eq!(blob_count(&dir), 2);

    // Unknown and malformed ids.
    for (method, path, status) in [
        ("GET", "/api/plugins/999", 404),
        ("DELETE", "/api/plugins/999", 404),
        ("GET", "/api/plugins/abc", 400),
    ] {
        let r = s.call(method, path, b"");
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
        assert!(r.json["error"].is_string(), "{}", r.text);
    }

    // A restart (even a kill) on the same data directory lists the same
    // plugins and keeps the token.
    let token = s.token.clone();
    drop(s);
    let s = Server::start(&dir, &[]);
    assert_eq!(s.token, token);
    assert_eq!(s.plugins(), listed);

    // Deleting removes the versions and the blobs no one else uses.
    let r = s.call("DELETE", &format!("/api/plugins/{id}"), b"");
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(
        s.call("GET", &format!("/api/plugins/{id}"), b"").status,
        404
    );
    assert_eq!(s.plugins().len(), 1);
    assert_eq!(blob_count(&dir), 1);
}

#[test]
fn upload_cap() {
    let dir = data_dir("cap");
    // The upload cap, not the smaller cap of other bodies, bounds uploads.
    let s = Server::start(&dir, &["--max-upload", "4096", "--max-body", "1024"]);
    let big = format!("{WAT_PLUGIN};;{}", " ".repeat(8192));
    let r = s.call("POST", "/api/plugins?name=big", big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(
        r.json["error"].as_str().expect("error").contains("4096"),
        "{}",
        r.text
    );
    assert_eq!(s.plugins(), Vec::<Value>::new());
    // Under the upload cap (though over --max-body), the module is fine.
    let padded = format!("{WAT_PLUGIN};;{}", " ".repeat(3000));
    let r = s.call("POST", "/api/plugins?name=small", padded.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["version"]["size"], padded.len());
}

#[test]
fn openapi_lists_the_served_routes() {
    let dir = data_dir("openapi");
    let s = Server::start(&dir, &[]);
    let r = s.call("GET", "/api/openapi.json", b"");
    assert_eq!(r.status, 200, "{}", r.text);
    let doc = r.json;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let table: BTreeSet<(String, String)> = wprobe_host::serve::route_table()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, table);
    assert!(
        doc["components"]["schemas"]["ErrorBody"].is_object(),
        "{doc}"
    );

    // Every route in the table is served: its answer is the route's own
    // (JSON, or 204), never the router's empty 404 or 405.
    for (method, path) in &table {
        let path = path.replace("{id}", "424242");
        let r = s.call(method, &path, b"");
        assert!(
            r.status != 405 && (r.status == 204 || !r.json.is_null()),
            "{method} {path}: {} {}",
            r.status,
            r.text
        );
    }
    let r = s.call("GET", "/api/nothing", b"");
    assert_eq!(r.status, 404);
}
