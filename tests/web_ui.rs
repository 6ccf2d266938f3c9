//! The web UI in a real browser: a real `wprobe serve` (with the UI files
//! embedded in the binary, as shipped), headless chromium driven by
//! `web-ui/tests/ui-test.mjs` (playwright-core), and real processes. The
//! script spawns the `spin` fixture through the UI, uploads the latency
//! plugin through the file picker, adds a return probe from the symbol
//! view, watches hits and the histogram, opens a live event, reloads, then
//! disables and deletes the probe; it also attaches to a `gated` process
//! and detaches from it. Afterwards both processes must have their code
//! exactly as in their files, and still run correctly.
//!
//! Needs node, chromium and `npm ci --prefix web-ui/tests`. Without node or
//! chromium the test says so and passes, unless WPROBE_REQUIRE_BROWSER=1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use wprobe_tests::service::{Gated, Server};
use wprobe_tests::*;

/// A process the service spawned for the UI, killed at the end.
struct Spawned(i32);

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid this test had the service spawn; it is
        // still our fixture (checked running just before).
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_browser(chromium: &Path) -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(node, Ok(s) if s.success()) {
        return Some("node is not installed".into());
    }
    if !chromium.exists() {
        return Some(format!(
            "no chromium at {} (set CHROMIUM)",
            chromium.display()
        ));
    }
    None
}

#[test]
fn web_ui_in_a_browser() {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if let Some(why) = missing_browser(&chromium) {
        if std::env::var("WPROBE_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("WPROBE_REQUIRE_BROWSER=1 but {why}");
        }
        println!("skipped: {why} (WPROBE_REQUIRE_BROWSER=1 makes this a failure)");
        return;
    }
    let ui_tests = repo_root().join("web-ui/tests");
    assert!(
        ui_tests.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix web-ui/tests`"
    );

    let spin = build("spin", "web_ui", &["-O2", "-pthread"]);
    let gated_bin = build("gated", "web_ui", &["-O2", "-pthread"]);
    let plugin = example_plugin("latency.c.wasm");
    let mut gated = Gated::start(&gated_bin, 1000, false);
    gated.round();

    let dir = scratch_dir().join("data");
    let _ = std::fs::remove_dir_all(&dir);
    let server = Server::start(&dir, &[]);
    let url = format!("http://{}/#token={}", server.addr, server.token);

    let out = Command::new("node")
        .arg(ui_tests.join("ui-test.mjs"))
        .current_dir(&ui_tests)
        .env("WPROBE_UI_URL", &url)
        .env("WPROBE_FIXTURE", &spin)
        .env("WPROBE_PLUGIN", &plugin)
        .env("WPROBE_ATTACH_PID", gated.pid().to_string())
        .env("WPROBE_SCREENSHOTS", repo_root().join("docs/screenshots"))
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    // The process the UI spawned: find it before judging the script, so
    // that it is killed whatever happened.
    let r = server.call("GET", "/api/targets", b"");
    assert_eq!(r.status, 200, "{}", r.text);
    let spawned: Vec<i32> = r
        .json
        .as_array()
        .expect("a list")
        .iter()
        .filter(|t| t["kind"] == "spawned")
        .map(|t| t["pid"].as_i64().expect("a pid") as i32)
        .collect();
    let _kill: Vec<Spawned> = spawned.iter().map(|&p| Spawned(p)).collect();

    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("ui-test: ok"), "{stdout}\n{stderr}");
    assert_eq!(
        spawned.len(),
        1,
        "one target spawned through the UI: {}",
        r.text
    );

    // No probe is left, and the code of both processes is the file's.
    let r = server.call("GET", "/api/probes", b"");
    assert_eq!(r.json.as_array().map(Vec::len), Some(0), "{}", r.text);
    let pid = spawned[0];
    assert_eq!(
        proc_status(pid, "State").map(|s| s.starts_with('Z')),
        Some(false),
        "the spawned spin still runs"
    );
    let (live, file) = live_and_file_bytes(pid, &spin, "work", 16);
    assert_eq!(
        live, file,
        "the code of `work` in the spawned target equals the file's"
    );
    // Detached through the UI: nothing of the engine is left in it.
    assert_untouched(gated.pid(), &gated_bin, "work");
    gated.round();
    gated.end();
}
