//! `wprobe serve` under the conditions of the security review (issue 16):
//! a core connection that dies or stops answering, slow and half-sent
//! HTTP clients, concurrent requests against a cap, the service's own
//! pid as a target, oversized specs, corrupt rows. A real server on
//! 127.0.0.1, real wprobe-core processes killed or stopped for real, real
//! traced processes (the `gated` fixture).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};
use wprobe_tests::service::*;
use wprobe_tests::*;

fn gated(tag: &str) -> PathBuf {
    build("gated", tag, &["-O2", "-pthread"])
}

fn core_bin() -> PathBuf {
    wprobe_bin().with_file_name("wprobe-core")
}

/// A `wprobe-core` of the test's own, listening on a socket; killed (and
/// continued first, if stopped) on drop.
struct Core {
    child: Child,
    socket: PathBuf,
}

impl Core {
    fn start(dir: &Path) -> Core {
        std::fs::create_dir_all(dir).expect("scratch dir");
        let socket = dir.join("own-core.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(core_bin())
            .arg("--socket")
            .arg(&socket)
            .spawn()
            .expect("start wprobe-core");
        assert!(
            wait_until(10, || socket.exists()),
            "wprobe-core did not listen on {}",
            socket.display()
        );
        Core { child, socket }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids of the children of `parent` named `name`.
fn children_named(parent: u32, name: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            proc_status(pid, "PPid:").as_deref() == Some(&parent.to_string())
                && proc_status(pid, "Name:").as_deref() == Some(name)
        })
        .collect()
}

fn json_call(s: &Server, method: &str, path: &str, body: Value) -> Reply {
    s.call(method, path, body.to_string().as_bytes())
}

/// `method path body` answers `status` with an error naming `words`.
fn refused(s: &Server, method: &str, path: &str, body: &str, status: u16, words: &[&str]) {
    let r = s.call(method, path, body.as_bytes());
    assert_eq!(r.status, status, "{method} {path} {body}: {}", r.text);
    let msg = r.json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error: {}", r.text));
    for w in words {
        assert!(msg.contains(w), "{method} {path}: `{msg}` lacks `{w}`");
    }
}

fn attach(s: &Server, pid: i32) -> i64 {
    let r = json_call(s, "POST", "/api/targets", json!({ "pid": pid }));
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["id"].as_i64().expect("id")
}

fn add_probe(s: &Server, target: i64, spec: &str) -> Value {
    let r = json_call(
        s,
        "POST",
        "/api/probes",
        json!({"target": target, "spec": spec}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    r.json
}

fn get(s: &Server, path: &str) -> Value {
    let r = s.call("GET", path, b"");
    assert_eq!(r.status, 200, "GET {path}: {}", r.text);
    r.json
}

fn tracer(pid: i32) -> i32 {
    proc_status(pid, "TracerPid:")
        .and_then(|v| v.parse().ok())
        .expect("TracerPid")
}

/// The service's own core is killed: the target is "lost" with the
/// reason at once, its probes inactive, every later request about it is
/// answered at once with what is true, and the lists still answer; the
/// process is not traced any more (the kernel let it go), so DELETE
/// answers 204.
#[test]
fn a_core_that_dies_loses_its_targets_truthfully() {
    let bin = gated("core-dies");
    let dir = data_dir("core-dies");
    let s = Server::start(&dir, &[]);
    let g = Gated::start(&bin, 10, false);
    let t = attach(&s, g.pid());
    let p = add_probe(&s, t, &format!("uprobe:{}:work", bin.display()));
    assert_eq!(p["state"], "armed", "{p}");
    let core = children_named(s.child.id(), "wprobe-core");
    assert_eq!(core.len(), 1, "the service's core: {core:?}");
    // SAFETY: a signal to the test's grandchild, identified just now.
    assert_eq!(unsafe { libc::kill(core[0], libc::SIGKILL) }, 0);

    let path = format!("/api/targets/{t}");
    assert!(
        wait_until(20, || get(&s, &path)["state"] == "lost"),
        "{}",
        get(&s, &path)
    );
    let target = get(&s, &path);
    let reason = target["reason"].as_str().expect("a reason");
    assert!(reason.contains("wprobe-core"), "{reason}");
    let probe = get(&s, &format!("/api/probes/{}", p["id"]));
    assert_eq!(probe["state"], "inactive", "{probe}");
    assert!(
        probe["reason"].as_str().unwrap().contains("lost"),
        "{probe}"
    );
    let spec = json!({"target": t, "spec": format!("uprobe:{}:work", bin.display())});
    refused(
        &s,
        "POST",
        "/api/probes",
        &spec.to_string(),
        409,
        &["lost", "wprobe-core"],
    );
    refused(
        &s,
        "PATCH",
        &format!("/api/probes/{}", p["id"]),
        r#"{"enabled": false}"#,
        409,
        &["lost"],
    );
    assert_eq!(get(&s, "/api/probes").as_array().unwrap().len(), 1);
    let r = s.call("GET", "/metrics", b"");
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(wait_until(10, || tracer(g.pid()) == 0));
    let r = s.call("DELETE", &path, b"");
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(s.call("GET", &path, b"").status, 404);
}

/// A core (the test's own, `--core`) that stops answering: the request
/// that meets it fails after `--core-timeout` with a 503 that says so, the
/// target is "lost", later requests are answered at once, and DELETE
/// refuses to claim a detach while the stopped core still traces the
/// process (nothing deleted). Once the core runs again it sees the closed
/// connection and lets the process go, restored; then DELETE answers 204.
#[test]
fn a_core_that_stops_answering_is_not_waited_for() {
    let bin = gated("core-stops");
    let dir = data_dir("core-stops");
    let core = Core::start(&scratch_dir().join("core-stops-core"));
    let sock = core.socket.display().to_string();
    let s = Server::start(&dir, &["--core", &sock, "--core-timeout", "2"]);
    let mut g = Gated::start(&bin, 10, false);
    let t = attach(&s, g.pid());
    let spec = format!("uprobe:{}:work", bin.display());
    let p = add_probe(&s, t, &spec);
    assert_eq!(p["state"], "armed", "{p}");
    core.signal(libc::SIGSTOP);

    let body = json!({"target": t, "spec": spec}).to_string();
    refused(
        &s,
        "POST",
        "/api/probes",
        &body,
        503,
        &["did not answer", "--core-timeout"],
    );
    let path = format!("/api/targets/{t}");
    let target = get(&s, &path);
    assert_eq!(target["state"], "lost", "{target}");
    refused(&s, "POST", "/api/probes", &body, 409, &["lost"]);
    // The lists answer with what is known.
    assert_eq!(get(&s, "/api/probes").as_array().unwrap().len(), 1);
    assert_eq!(s.call("GET", "/metrics", b"").status, 200);
    // The stopped core still traces the process: no false 204.
    assert_ne!(tracer(g.pid()), 0);
    refused(
        &s,
        "DELETE",
        &path,
        "",
        409,
        &["still traced by wprobe-core", "nothing was deleted"],
    );
    assert_eq!(get(&s, &path)["id"], t);

    core.signal(libc::SIGCONT);
    assert!(wait_until(20, || tracer(g.pid()) == 0));
    let r = s.call("DELETE", &path, b"");
    assert_eq!(r.status, 204, "{}", r.text);
    // Let go restored: the program runs its rounds right.
    g.round();
    assert_untouched(g.pid(), &bin, "work");
    g.end();
}

/// A connection that sent `text` and then nothing.
fn half_sent(s: &Server, text: &str) -> TcpStream {
    let mut c = TcpStream::connect(&s.addr).expect("connect");
    c.write_all(text.as_bytes()).expect("send");
    c
}

/// Half-sent requests past `--max-connections` do not hold the service:
/// the connection past the cap is answered 503 at once, naming the
/// option; once the slow clients go, everyone is served again.
#[test]
fn connections_past_the_cap_are_refused_at_once() {
    let dir = data_dir("conn-cap");
    // A header timeout long enough that no slow client is dropped while
    // the test opens the others.
    let s = Server::start(&dir, &["--max-connections", "8", "--header-timeout", "600"]);
    let head = format!("GET /api/health HTTP/1.1\r\nHost: {}\r\n", s.addr);
    let slow: Vec<TcpStream> = (0..8).map(|_| half_sent(&s, &head)).collect();
    let r = s.raw("GET", "/api/health", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text);
    let msg = r.json["error"].as_str().expect("an error");
    assert!(msg.contains("--max-connections"), "{msg}");
    drop(slow);
    assert!(wait_until(30, || s
        .raw("GET", "/api/health", &[], b"")
        .status
        == 200));
}

/// A client that sends half a request head, or nothing, is disconnected
/// after `--header-timeout`, whatever it does next.
#[test]
fn slow_and_idle_clients_are_disconnected() {
    let dir = data_dir("header-timeout");
    let s = Server::start(&dir, &["--header-timeout", "1"]);
    let head = format!("GET /api/health HTTP/1.1\r\nHost: {}\r\n", s.addr);
    for (what, text) in [("half a head", head.as_str()), ("nothing", "")] {
        let mut c = half_sent(&s, text);
        // Far longer than the timeout: a read that waits this long means
        // the service kept the connection.
        c.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a client that sent {what} was kept: {e}"),
        }
        let text = String::from_utf8_lossy(&rest);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{what}: {text}"
        );
    }
    assert_eq!(s.raw("GET", "/api/health", &[], b"").status, 200);
}

/// `--max-probes-per-target` holds under concurrent requests: of many
/// made at once, exactly the cap's worth are created, the others refused
/// naming the option.
#[test]
fn the_probe_cap_holds_under_concurrent_requests() {
    let bin = gated("probe-cap");
    let dir = data_dir("probe-cap");
    let s = Server::start(&dir, &["--max-probes-per-target", "3"]);
    let g = Gated::start(&bin, 10, false);
    let t = attach(&s, g.pid());
    let body = json!({"target": t, "spec": format!("uprobe:{}:work", bin.display())}).to_string();
    let answers: Vec<Reply> = std::thread::scope(|sc| {
        let calls: Vec<_> = (0..24)
            .map(|_| sc.spawn(|| s.call("POST", "/api/probes", body.as_bytes())))
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("a request"))
            .collect()
    });
    let made = answers.iter().filter(|r| r.status == 201).count();
    for r in answers.iter().filter(|r| r.status != 201) {
        assert_eq!(r.status, 422, "{}", r.text);
        assert!(r.text.contains("--max-probes-per-target"), "{}", r.text);
    }
    assert_eq!(made, 3);
    let list = get(&s, &format!("/api/probes?target={t}"));
    assert_eq!(list.as_array().expect("a list").len(), 3, "{list}");
}

/// The service's own process (any of its threads) and its core's are
/// refused as targets, with a reason, and are not offered in the list.
#[test]
fn the_service_and_its_core_are_not_targets() {
    let dir = data_dir("own-pid");
    let s = Server::start(&dir, &[]);
    let me = s.child.id() as i32;
    let core = children_named(s.child.id(), "wprobe-core");
    assert_eq!(core.len(), 1, "the service's core: {core:?}");
    let a_thread: i32 = std::fs::read_dir(format!("/proc/{me}/task"))
        .expect("tasks")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .find(|&tid| tid != me)
        .expect("the service has threads");
    for (pid, words) in [
        (me, "this wprobe serve itself"),
        (a_thread, "this wprobe serve itself"),
        (core[0], "the wprobe-core this service uses"),
    ] {
        let body = json!({ "pid": pid }).to_string();
        refused(&s, "POST", "/api/targets", &body, 422, &[words]);
    }
    assert!(get(&s, "/api/targets").as_array().unwrap().is_empty());
    let listed: Vec<i64> = get(&s, "/api/processes")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    assert!(!listed.contains(&(me as i64)) && !listed.contains(&(core[0] as i64)));
}

/// Specs and names past the length limit are refused before any work
/// (422 naming the limit), and so are NUL bytes (400); nothing is made.
#[test]
fn long_specs_and_nul_bytes_are_refused_before_any_work() {
    let bin = gated("long-spec");
    let dir = data_dir("long-spec");
    let s = Server::start(&dir, &[]);
    let g = Gated::start(&bin, 10, false);
    let t = attach(&s, g.pid());
    let long = format!("uprobe:{}:{}", bin.display(), "w".repeat(600_000));
    let nul = format!("uprobe:{}:wo\u{0}rk", bin.display());
    for (path, spec, status, words) in [
        (
            "/api/probes",
            long.as_str(),
            422,
            "limit of 4096 characters",
        ),
        (
            "/api/probes?dry_run=true",
            long.as_str(),
            422,
            "limit of 4096 characters",
        ),
        ("/api/probes", nul.as_str(), 400, "NUL byte"),
        ("/api/probes?dry_run=true", nul.as_str(), 400, "NUL byte"),
    ] {
        let body = json!({"target": t, "spec": spec}).to_string();
        refused(&s, "POST", path, &body, status, &[words]);
    }
    // The limit counts characters, as the OpenAPI document's maxLength
    // does: 2100 two-byte characters are within it.
    let wide = format!("uprobe:{}:{}", bin.display(), "é".repeat(2100));
    let body = json!({"target": t, "spec": wide}).to_string();
    let r = s.call("POST", "/api/probes?dry_run=true", body.as_bytes());
    assert!(!r.text.contains("limit of 4096"), "{}", r.text);
    let batch = json!({"probes": [{"target": t, "spec": long}]}).to_string();
    refused(
        &s,
        "POST",
        "/api/probes/batch",
        &batch,
        422,
        &["probes[0]", "4096"],
    );
    let q = "w".repeat(5000);
    for path in [
        format!("/api/targets/{t}/symbols?q={q}"),
        format!("/api/targets/{t}/disasm?symbol={q}"),
    ] {
        refused(&s, "GET", &path, "", 422, &["limit of 4096 characters"]);
    }
    assert!(get(&s, "/api/probes").as_array().unwrap().is_empty());
}

/// A probe row damaged in the database is skipped (and can be deleted):
/// the lists and `/metrics` answer, and its target is attached again at
/// restart with its other probes.
#[test]
fn a_corrupt_probe_row_is_skipped_not_fatal() {
    let bin = gated("corrupt-row");
    let dir = data_dir("corrupt-row");
    let g = Gated::start(&bin, 10, false);
    let spec = format!("uprobe:{}:work", bin.display());
    let (t, bad, good) = {
        let s = Server::start(&dir, &[]);
        let t = attach(&s, g.pid());
        let bad = add_probe(&s, t, &spec)["id"].as_i64().unwrap();
        let good = add_probe(&s, t, &spec)["id"].as_i64().unwrap();
        (t, bad, good)
        // Killed here: its core lets the process go.
    };
    assert!(wait_until(10, || tracer(g.pid()) == 0));
    let db = rusqlite::Connection::open(dir.join("wprobe.db")).expect("open the db");
    db.execute(
        "UPDATE probes SET plugins = 'not json' WHERE id = ?1",
        [bad],
    )
    .expect("damage a row");
    drop(db);

    let s = Server::start(&dir, &[]);
    let target = get(&s, &format!("/api/targets/{t}"));
    assert_eq!(target["state"], "running", "{target}");
    let list = get(&s, "/api/probes");
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [good], "{list}");
    // And said, naming the row and what to do.
    let said = std::fs::read_to_string(dir.with_extension("stderr")).unwrap_or_default();
    assert!(
        said.lines()
            .any(|l| l.contains(&format!("probe row {bad}")) && l.contains("DELETE /api/probes")),
        "{said}"
    );
    assert_eq!(get(&s, &format!("/api/probes/{good}"))["state"], "armed");
    let r = s.call("GET", "/metrics", b"");
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.call("DELETE", &format!("/api/probes/{bad}"), b"");
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(
        s.call("GET", &format!("/api/probes/{bad}"), b"").status,
        404
    );
}

/// A plugin whose own (embedded) manifest is refused, uploaded with a
/// manifest that replaces it: attaching it loads it the way the upload
/// was validated, with the replacing manifest.
const ABI2_PLUGIN: &str = r#"(module
  (@custom "wprobe.manifest" "{\"name\":\"future\",\"version\":\"1\",\"abi\":2}")
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))"#;

#[test]
fn an_uploaded_manifest_is_the_one_attached() {
    let bin = gated("manifest");
    let dir = data_dir("manifest");
    let s = Server::start(&dir, &[]);
    let auth = format!("Bearer {}", s.token);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/wasm"),
    ];
    // Its own manifest is refused at upload, naming why.
    let r = s.raw("POST", "/api/plugins", &headers, ABI2_PLUGIN.as_bytes());
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("ABI version 2"), "{}", r.text);
    // With one that replaces it, it uploads, and attaches.
    let manifest = "%7B%22name%22%3A%22now%22%2C%22version%22%3A%221%22%2C%22abi%22%3A1%7D";
    let r = s.raw(
        "POST",
        &format!("/api/plugins?manifest={manifest}"),
        &headers,
        ABI2_PLUGIN.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let plugin = r.json["id"].as_i64().expect("id");
    let g = Gated::start(&bin, 10, false);
    let t = attach(&s, g.pid());
    let r = json_call(
        &s,
        "POST",
        "/api/probes",
        json!({"target": t, "spec": format!("uprobe:{}:work", bin.display()),
               "plugins": [{"plugin": plugin}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["plugins"][0]["name"], "now", "{}", r.text);
}

/// A minimal plugin, as WebAssembly text.
const WAT_PLUGIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))"#;

/// Plugins per probe are capped, and all instances together are held to
/// the memory budget, each counted for its memory cap (64 MiB); an
/// attachment that goes gives its share back.
#[test]
fn plugin_attachments_are_capped_and_budgeted() {
    let bin = gated("attach-cap");
    let dir = data_dir("attach-cap");
    let budget = (3u64 << 26).to_string(); // three instances of 64 MiB
    let s = Server::start(
        &dir,
        &[
            "--max-attachments-per-probe",
            "2",
            "--plugin-memory-budget",
            &budget,
        ],
    );
    let auth = format!("Bearer {}", s.token);
    let r = s.raw(
        "POST",
        "/api/plugins?name=tiny",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/wasm"),
        ],
        WAT_PLUGIN.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let plugin = r.json["id"].as_i64().unwrap();
    let g = Gated::start(&bin, 10, false);
    let t = attach(&s, g.pid());
    let spec = format!("uprobe:{}:work", bin.display());
    let with = |n: usize| {
        let plugins: Vec<Value> = (0..n).map(|_| json!({ "plugin": plugin })).collect();
        json!({"target": t, "spec": spec, "plugins": plugins}).to_string()
    };
    refused(
        &s,
        "POST",
        "/api/probes",
        &with(3),
        422,
        &["--max-attachments-per-probe"],
    );
    let r = s.call("POST", "/api/probes", with(2).as_bytes());
    assert_eq!(r.status, 201, "{}", r.text);
    let first = r.json["id"].as_i64().unwrap();
    refused(
        &s,
        "POST",
        "/api/probes",
        &with(2),
        422,
        &["--plugin-memory-budget"],
    );
    let patch = json!({"plugins": [{"plugin": plugin}, {"plugin": plugin}]}).to_string();
    let path = format!("/api/probes/{first}");
    // Replacing its own two needs two more while the old ones run.
    refused(&s, "PATCH", &path, &patch, 422, &["--plugin-memory-budget"]);
    let r = s.call("POST", "/api/probes", with(1).as_bytes());
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(s.call("DELETE", &path, b"").status, 204);
    let r = s.call("POST", "/api/probes", with(2).as_bytes());
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(get(&s, "/api/probes").as_array().unwrap().len(), 2);
}

/// `DELETE /api/targets/{id}?kill=true` ends a process the service
/// spawned; for an attached one it is refused and nothing changes.
#[test]
fn kill_ends_spawned_targets_only() {
    let bin = gated("kill");
    let dir = data_dir("kill");
    let s = Server::start(&dir, &[]);
    let r = json_call(
        &s,
        "POST",
        "/api/targets",
        json!({"spawn": ["sleep", "1000"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let (spawned, pid) = (
        r.json["id"].as_i64().unwrap(),
        r.json["pid"].as_i64().unwrap() as i32,
    );
    let g = Gated::start(&bin, 10, false);
    let attached = attach(&s, g.pid());
    let path = format!("/api/targets/{attached}?kill=true");
    refused(&s, "DELETE", &path, "", 422, &["attached, not spawned"]);
    assert_eq!(
        get(&s, &format!("/api/targets/{attached}"))["state"],
        "running"
    );
    assert_ne!(tracer(g.pid()), 0, "still traced");

    let r = s.call("DELETE", &format!("/api/targets/{spawned}?kill=true"), b"");
    assert_eq!(r.status, 204, "{}", r.text);
    // Dead: gone, or a zombie until its parent (the core) reaps it.
    assert!(wait_until(20, || {
        proc_status(pid, "State:").is_none_or(|s| s.starts_with('Z'))
    }));
    refused(
        &s,
        "DELETE",
        "/api/targets/1?kill=maybe",
        "",
        400,
        &["kill"],
    );
}

/// Lesser findings: the bearer scheme in any case is accepted (RFC 7235),
/// two Host headers are refused, a plugin name of dots is refused, and the
/// database files are private even in a data directory that was 0755.
#[test]
fn lesser_findings() {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir("lesser");
    std::fs::create_dir_all(&dir).expect("data dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let s = Server::start(&dir, &[]);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {}", s.token);
        for path in ["/api/plugins", "/metrics"] {
            let r = s.raw("GET", path, &[("Authorization", &auth)], b"");
            assert_eq!(r.status, 200, "{scheme} on {path}: {}", r.text);
        }
    }
    let auth = format!("Bearer {}", s.token);
    let r = s.raw(
        "GET",
        "/api/plugins",
        &[
            ("Authorization", &auth),
            ("Host", &s.addr),
            ("Host", &s.addr),
        ],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("more than one Host"), "{}", r.text);
    let r = s.raw(
        "POST",
        "/api/plugins?name=..",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/wasm"),
        ],
        WAT_PLUGIN.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("not only dots"), "{}", r.text);
    for f in ["wprobe.db", "wprobe.db-wal", "wprobe.db-shm"] {
        let path = dir.join(f);
        if path.exists() {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
}

/// On every interface (`--listen 0.0.0.0`), the machine's own names and
/// addresses and each `--allow-host` are accepted as Host; others still
/// get 403.
#[test]
fn on_every_interface_the_machines_names_and_allowed_hosts_are_accepted() {
    let dir = data_dir("any-interface");
    let s = Server::try_start_on(
        &wprobe_bin(),
        "0.0.0.0:0",
        &dir,
        &["--allow-host", "wprobe.test"],
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let port = s.addr.rsplit(':').next().expect("a port").to_string();
    let loopback = format!("127.0.0.1:{port}");
    let auth = format!("Bearer {}", s.token);
    let status = |host: &str| {
        request(
            &loopback,
            "GET",
            "/api/plugins",
            &[("Authorization", &auth), ("Host", host)],
            b"",
        )
        .status
    };
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the host name")
        .trim()
        .to_string();
    for host in [
        format!("wprobe.test:{port}"),
        format!("{name}:{port}"),
        format!("localhost:{port}"),
        loopback.clone(),
    ] {
        assert_eq!(status(&host), 200, "Host {host}");
    }
    for host in [format!("evil.example:{port}"), "wprobe.test:1".to_string()] {
        assert_eq!(status(&host), 403, "Host {host}");
    }
}

/// A program the service spawns (`POST /api/targets` with `spawn`) starts
/// as a shell's command would: default signal dispositions (the service
/// itself ignores SIGPIPE, as every Rust program does), nothing blocked,
/// and only descriptors 0–2.
#[test]
fn a_spawned_target_starts_with_default_signals_and_no_stray_descriptors() {
    let bin = build("selfreport", "serve-selfreport", &[]);
    let dir = data_dir("selfreport");
    let out = scratch_dir().join("serve-selfreport.txt");
    let _ = std::fs::remove_file(&out);
    let s = Server::start(&dir, &[]);
    let argv = json!({"spawn": [bin.to_str().unwrap(), out.to_str().unwrap()]});
    let r = s.call("POST", "/api/targets", argv.to_string().as_bytes());
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        wait_until(60, || std::fs::read_to_string(&out)
            .is_ok_and(|t| t.ends_with("end\n"))),
        "the program wrote its report"
    );
    let report = std::fs::read_to_string(&out).unwrap();
    let with = |prefix: &str| -> Vec<&str> {
        report
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .collect()
    };
    assert_eq!(with("ignored "), Vec::<&str>::new(), "SIG_IGN inherited");
    assert_eq!(with("blocked "), Vec::<&str>::new(), "signals blocked");
    let fds: Vec<&str> = with("fd ")
        .into_iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "descriptors: {report}");
}
