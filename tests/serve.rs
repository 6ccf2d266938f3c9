//! `wprobe serve` on 127.0.0.1: the real binary, a real SQLite database in
//! a scratch data directory, real plugins. Token and Host/Origin checks,
//! uploads with versions and content-addressed blobs, refusals that change
//! nothing, restart persistence, the OpenAPI document against the route
//! table, and targets: real processes attached, detached and spawned
//! through the service's own wprobe-core.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use wprobe_tests::service::*;
use wprobe_tests::*;

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

    // No Host at all (HTTP/1.0 allows it; a rebinding page's request can
    // lack it too): refused, as a foreign one is.
    let reply = http_exchange(&s.addr, "GET /api/health HTTP/1.0\r\n\r\n");
    assert!(
        reply.starts_with("HTTP/1.0 403") || reply.starts_with("HTTP/1.1 403"),
        "{reply}"
    );
    assert!(reply.contains("Host ``"), "{reply}");
    // The UI is served under a strict Content-Security-Policy.
    let page = http_exchange(
        &s.addr,
        &format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.addr
        ),
    );
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let csp = page
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-security-policy"))
                .map(|(_, v)| v.trim().to_string())
        })
        .expect("a Content-Security-Policy header");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
}

/// Sends `request` as it is and returns the whole reply, head and body.
fn http_exchange(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.write_all(request.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn plugins_versions_refusals_and_restart() {
    let dir = data_dir("plugins");
    let s = Server::start(&dir, &[]);
    let count = std::fs::read(example_plugin("count.rust.wasm")).expect("read the plugin");

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
            "not a WebAssembly module (magic bytes 6e 6f 74 20",
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

/// Where a clone lives decides how deep the data directory is: a core
/// socket path longer than a socket address holds (107 bytes) must still
/// work, and did not (CI's clone is deeper than a developer's).
#[test]
fn a_data_directory_deeper_than_a_socket_address_works() {
    let mut dir = data_dir("deep");
    while dir.join("core.sock").as_os_str().len() <= 140 {
        dir.push("a-directory-deep-enough-to-overflow-sun-path");
    }
    let s = Server::start(&dir, &[]);
    // The core it started answers: a process is attached through it.
    let bin = build("spin", "serve", &["-O2"]);
    let mut spin = start_ready(&bin, &["20000", "1"]);
    let body = format!("{{\"pid\": {}}}", spin.id());
    let r = s.call("POST", "/api/targets", body.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["state"], "running");
    let _ = spin.kill();
    let _ = spin.wait();
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
    // (JSON, or 204), never the router's empty 404 or 405. The event
    // routes get a bad filter (a stream would not end), /metrics is text.
    for (method, path) in &table {
        let mut path = path.replace("{id}", "424242");
        if path.starts_with("/api/events") {
            path += "?bad=1";
        }
        let r = s.call(method, &path, b"");
        if path == "/metrics" {
            assert!(r.status == 200 && r.text.contains("# TYPE"), "{}", r.text);
            continue;
        }
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

fn targets(s: &Server) -> Vec<Value> {
    let r = s.call("GET", "/api/targets", b"");
    assert_eq!(r.status, 200, "{}", r.text);
    r.json.as_array().expect("a list").clone()
}

#[test]
fn targets_attach_detach_spawn_and_restart() {
    let bin = build("spin", "serve", &["-O2"]);
    let dir = data_dir("targets");
    let s = Server::start(&dir, &[]);
    let spin = start_ready(&bin, &["20000", "1"]);
    let pid = spin.id() as i32;

    // The process list has it, with its command line.
    let r = s.call("GET", "/api/processes", b"");
    assert_eq!(r.status, 200, "{}", r.text);
    let procs = r.json.as_array().expect("a list");
    let me = procs
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not listed: {}", r.text));
    assert_eq!(me["cmdline"], format!("{} 20000 1", bin.display()));
    assert!(me["uid"].is_u64());
    let pids: Vec<i64> = procs.iter().map(|p| p["pid"].as_i64().unwrap()).collect();
    assert!(pids.windows(2).all(|w| w[0] < w[1]), "sorted by pid");

    // Attach: traced by a thread of the server's core.
    let r = s.call(
        "POST",
        "/api/targets",
        format!("{{\"pid\": {pid}}}").as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_i64().expect("id");
    assert_eq!(r.json["pid"], pid);
    assert_eq!(r.json["kind"], "attached");
    assert_eq!(r.json["state"], "running");
    assert!(r.json["exit"].is_null());
    let tracer: i32 = proc_status(pid, "TracerPid:")
        .and_then(|t| t.parse().ok())
        .expect("TracerPid");
    assert_ne!(tracer, 0, "traced");
    let core: i32 = proc_status(tracer, "Tgid:")
        .and_then(|t| t.parse().ok())
        .expect("the tracer's Tgid");
    assert_eq!(
        proc_status(core, "PPid:").and_then(|p| p.parse().ok()),
        Some(s.child.id() as i32),
        "the tracer is the core the server started"
    );
    assert_eq!(targets(&s).len(), 1);
    let r = s.call("GET", &format!("/api/targets/{id}"), b"");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["pid"], pid);

    // Twice is a conflict.
    let r = s.call(
        "POST",
        "/api/targets",
        format!("{{\"pid\": {pid}}}").as_bytes(),
    );
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.json["error"].as_str().unwrap().contains(&pid.to_string()));

    // Detach: the process runs on untouched and computes what it should.
    let r = s.call("DELETE", &format!("/api/targets/{id}"), b"");
    assert_eq!(r.status, 204, "{}", r.text);
    assert_untouched(pid, &bin, "work");
    assert!(targets(&s).is_empty());
    assert_eq!(
        finish(spin),
        format!("sum={}\n", (0..20000).map(|i| i * 3 + 1).sum::<i64>())
    );

    // Spawn: it runs at once, and its exit is recorded.
    let argv = serde_json::json!({"spawn": [bin.to_str().unwrap(), "100", "1"]});
    let r = s.call("POST", "/api/targets", argv.to_string().as_bytes());
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["kind"], "spawned");
    let spawned = r.json["id"].as_i64().expect("id");
    let path = format!("/api/targets/{spawned}");
    assert!(
        wait_until(60, || s.call("GET", &path, b"").json["state"] == "exited"),
        "the spawned process exits"
    );
    let r = s.call("GET", &path, b"");
    assert_eq!(r.json["exit"]["code"], 0, "{}", r.text);
    assert!(r.json["exit"]["signal"].is_null(), "{}", r.text);

    // Refusals.
    let r = s.call("POST", "/api/targets", b"{\"pid\": 999999999}");
    assert!((400..500).contains(&r.status), "{}", r.text);
    assert!(r.json["error"].as_str().unwrap().contains("999999999"));
    for bad in [
        &b"{\"pid\": "[..],
        b"{}",
        b"{\"pid\": 1, \"spawn\": [\"x\"]}",
    ] {
        let r = s.call("POST", "/api/targets", bad);
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.json["error"].is_string(), "{}", r.text);
    }
    for method in ["GET", "DELETE"] {
        let r = s.call(method, "/api/targets/12345", b"");
        assert_eq!(r.status, 404, "{}", r.text);
        assert!(r.json["error"].as_str().unwrap().contains("12345"));
    }

    // A target still running when the server stops is traced again by the
    // next one (same pid, same start time).
    let spin = start_ready(&bin, &["20000", "1"]);
    let pid = spin.id() as i32;
    let r = s.call(
        "POST",
        "/api/targets",
        format!("{{\"pid\": {pid}}}").as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    drop(s);
    let s = Server::start(&dir, &[]);
    let list = targets(&s);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["state"], "exited");
    assert_eq!(list[1]["state"], "running");
    assert_eq!(list[1]["pid"], pid);
    let tracer = || -> i32 {
        proc_status(pid, "TracerPid:")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    };
    assert!(wait_until(60, || tracer() != 0), "traced again");
    let core = proc_status(tracer(), "Tgid:").expect("the tracer's Tgid");
    assert_eq!(
        proc_status(core.parse().unwrap(), "PPid:").and_then(|p| p.parse().ok()),
        Some(s.child.id() as i32),
        "by the new server's core"
    );
    // Stopping the server lets it go, untouched.
    drop(s);
    assert!(wait_until(60, || tracer() == 0));
    assert_untouched(pid, &bin, "work");
    assert_eq!(
        finish(spin),
        format!("sum={}\n", (0..20000).map(|i| i * 3 + 1).sum::<i64>())
    );
}
