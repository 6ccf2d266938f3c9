//! The automation CLI (`wprobe target|probe|plugin|events`) against a real
//! `wprobe serve` on 127.0.0.1: the real binaries, the committed demo
//! plugins, and `wprobe-demo-workload` as the target. Each way of giving
//! the token (the data directory, the URL's fragment, `--token`,
//! `$WPROBE_TOKEN`), tables and `--json`, the API's refusals as exit code 1
//! with the message and the status, and a service that is not running.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use wprobe_tests::service::{data_dir, Server};
use wprobe_tests::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn workload_bin() -> PathBuf {
    let bin = wprobe_bin().with_file_name("wprobe-demo-workload");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// `wprobe ARGS` with no WPROBE_* variables but those in `env`.
fn wprobe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(wprobe_bin());
    cmd.args(args)
        .env_remove("WPROBE_URL")
        .env_remove("WPROBE_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run wprobe")
}

/// Runs `wprobe ARGS`; checks its exit code and that stdout (code 0) or
/// stderr (otherwise) contains `expect`; returns stdout.
fn check(server: &Server, args: &[&str], code: i32, expect: &str) -> String {
    let url = format!("http://{}", server.addr);
    // The options go right after the command's name: anything after
    // `--spawn` is the spawned command's.
    let mut all = vec![args[0], "--url", &url, "--token", &server.token];
    all.extend(&args[1..]);
    check_env(&all, &[], code, expect)
}

fn check_env(args: &[&str], env: &[(&str, &str)], code: i32, expect: &str) -> String {
    let out = wprobe(args, env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "wprobe {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    let text = if code == 0 { &stdout } else { &stderr };
    assert!(
        text.contains(expect),
        "wprobe {args:?}: expected {expect:?} in\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

/// A process the service spawned for a test: detaching leaves it running,
/// so it is killed on drop (also when the test fails).
struct Spawned(i32);

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a process this test had the service spawn.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn demo_plugin(name: &str) -> String {
    repo()
        .join("plugins/demo")
        .join(format!("{name}.wasm"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn plugins_and_targets() {
    let dir = data_dir("cli-basic");
    let server = Server::start(&dir, &[]);
    let url = format!("http://{}", server.addr);
    let dir_s = dir.to_string_lossy().into_owned();
    let count = demo_plugin("count");

    // The token from the data directory, then from the URL's fragment.
    check_env(
        &[
            "plugin",
            "upload",
            &count,
            "--url",
            &url,
            "--data-dir",
            &dir_s,
        ],
        &[],
        0,
        "plugin 1 `count-c` version 1: 9388 bytes",
    );
    let printed = format!("{url}/#token={}", server.token);
    let list = json(&check_env(
        &["plugin", "ls", "--json", "--url", &printed],
        &[],
        0,
        "count-c",
    ));
    assert_eq!(list[0]["name"], "count-c", "{list}");
    check(&server, &["plugin", "ls"], 0, "1   count-c  1");

    // Refusals: the API's message and status, exit code 1.
    check_env(
        &["plugin", "ls", "--url", &url, "--token", "wrong"],
        &[],
        1,
        "(HTTP 401 Unauthorized); give the service's token",
    );
    let junk = scratch_dir().join("not-a-plugin.txt");
    std::fs::write(&junk, "hello\n").expect("write");
    check(
        &server,
        &["plugin", "upload", &junk.to_string_lossy()],
        1,
        "(HTTP 422 Unprocessable Entity)",
    );
    check(
        &server,
        &["plugin", "rm", "nosuch"],
        1,
        "no plugin named `nosuch` (plugins: count-c)",
    );

    // A spawned target, through $WPROBE_URL and $WPROBE_TOKEN.
    let workload = workload_bin().to_string_lossy().into_owned();
    let env = [
        ("WPROBE_URL", url.as_str()),
        ("WPROBE_TOKEN", &server.token),
    ];
    let target = json(&check_env(
        &[
            "target", "add", "--json", "--spawn", &workload, "--rate", "50",
        ],
        &env,
        0,
        "\"spawned\"",
    ));
    let id = target["id"].as_i64().expect("an id").to_string();
    let pid = target["pid"].as_i64().expect("a pid");
    let _workload = Spawned(pid as i32);
    assert!(PathBuf::from(format!("/proc/{pid}")).exists(), "{target}");
    let table = check_env(&["target", "ls"], &env, 0, "running");
    assert!(
        table.starts_with("ID  PID") && table.contains("--rate 50"),
        "{table}"
    );
    check_env(
        &["target", "rm", &id],
        &env,
        0,
        &format!("removed target {id}"),
    );
    check_env(
        &["target", "rm", &id],
        &env,
        1,
        &format!("no target with id {id} (HTTP 404 Not Found)"),
    );
    // Detached, it runs on untraced (until `_workload` ends it).
    assert!(
        wait_until(60, || proc_status(pid as i32, "TracerPid:").as_deref()
            == Some("0")),
        "{pid} is still traced"
    );

    check(&server, &["plugin", "rm", "count-c"], 0, "removed plugin 1");
    check(&server, &["plugin", "ls", "--json"], 0, "[]");
}

#[test]
fn probes_and_events() {
    let dir = data_dir("cli-probes");
    let server = Server::start(&dir, &[]);
    let url = format!("http://{}", server.addr);
    let workload = workload_bin().to_string_lossy().into_owned();

    check(
        &server,
        &["plugin", "upload", &demo_plugin("count")],
        0,
        "count-c",
    );
    let target = json(&check(
        &server,
        &["target", "add", "--json", "--spawn", &workload],
        0,
        "spawned",
    ));
    let tid = target["id"].as_i64().expect("an id").to_string();
    let _workload = Spawned(target["pid"].as_i64().expect("a pid") as i32);

    // A name for the plugin, looked up; a batch of two specs.
    let probes = json(&check(
        &server,
        &[
            "probe",
            "add",
            "--json",
            "--target",
            &tid,
            "uprobe:wprobe-demo-workload:demo_work",
            "uprobe:libc:malloc size=%rdi:u64",
            "--plugin",
            "count-c",
        ],
        0,
        "demo_work",
    ));
    let ids: Vec<String> = probes
        .as_array()
        .expect("a batch answers with a list")
        .iter()
        .map(|p| p["id"].as_i64().expect("an id").to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{probes}");

    // Hits of the first probe, one JSON line each.
    let mut events = Command::new(wprobe_bin())
        .args(["events", "--probe", &ids[0], "--url", &url, "--token"])
        .arg(&server.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wprobe events");
    let mut line = String::new();
    BufReader::new(events.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read an event");
    let _ = events.kill();
    let _ = events.wait();
    let event = json(&line);
    assert_eq!(event["probe"].to_string(), ids[0], "{event}");
    assert_eq!(event["kind"], "entry", "{event}");

    // A misspelt symbol: the service's message, nothing created.
    check(
        &server,
        &["probe", "add", "--target", &tid, "uprobe:libc:mallco"],
        1,
        "did you mean `malloc`",
    );

    let table = check(&server, &["probe", "disable", &ids[0]], 0, "disabled");
    assert!(table.starts_with("ID  TARGET  STATE"), "{table}");
    let list = json(&check(
        &server,
        &["probe", "ls", "--json", "--target", &tid],
        0,
        "",
    ));
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert!(list[0]["hits"].as_u64() > Some(0), "{list}");
    check(&server, &["probe", "enable", &ids[0]], 0, "armed");
    check(
        &server,
        &["probe", "rm", &ids[0], &ids[1]],
        0,
        &format!("removed probe {}", ids[1]),
    );
    check(&server, &["probe", "ls"], 0, "ID  TARGET");
    check(&server, &["target", "rm", &tid], 0, "removed target");
}

#[test]
fn service_not_running() {
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    check_env(
        &["target", "ls", "--url", &url, "--token", "t"],
        &[],
        1,
        &format!("the service is not running at {url} (connection refused); start it with `wprobe serve`"),
    );
    // No token anywhere.
    let empty = data_dir("cli-no-token");
    check_env(
        &["probe", "ls", "--url", &url, "--data-dir"],
        &[],
        2,
        "--data-dir",
    );
    check_env(
        &[
            "probe",
            "ls",
            "--url",
            &url,
            "--data-dir",
            &empty.to_string_lossy(),
        ],
        &[],
        1,
        "no token: cannot read",
    );
}
