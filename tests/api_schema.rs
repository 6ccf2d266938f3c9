//! The API against its own OpenAPI document, by schemathesis (PyPI): a real
//! `wprobe serve` with a scratch data directory, and schemathesis's CLI
//! generating requests from `/api/openapi.json` (valid ones and ones the
//! document forbids), with the token. A run fails on any 5xx, any answer
//! whose status the document does not list for the operation, whose content
//! type it does not give, or whose body breaks the schema it gives; and on
//! a request that gets no answer within the per-request timeout.
//!
//! schemathesis lives in a virtualenv under `target/` that
//! `tests/run-all.sh` installs (`tests/schemathesis/install.sh`, the
//! version pinned there). Without it the test says so and passes, unless
//! `CI=true` or `WPROBE_REQUIRE_SCHEMATHESIS=1` (`.ci/run`) makes that a
//! failure.
//!
//! Bounded: `--max-examples` per operation, one worker (hypothesis, under
//! it, is not safe to run from several threads on Python 3.11), a timeout
//! per request, and the whole run killed past [`RUN_BOUND`].
//! `GET /api/events` is left out: a server-sent event stream never ends,
//! so every answer to it would be a read timeout (tests/serve.rs and
//! tests/api_routes.rs cover its refusals).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wprobe_tests::scratch_dir;
use wprobe_tests::service::{data_dir, Server};

/// Generated cases per operation and phase.
const MAX_EXAMPLES: &str = "40";
/// A request without an answer after this long is a hang (seconds).
const REQUEST_TIMEOUT: &str = "30";
/// The whole run, past which it is killed and the test fails.
const RUN_BOUND: Duration = Duration::from_secs(600);
/// Fixed, so that a failure can be run again as it was.
const SEED: &str = "20261206";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn required() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("WPROBE_REQUIRE_SCHEMATHESIS").as_deref() == Ok("1")
}

#[test]
fn api_conforms_to_its_openapi_document() {
    let bin = repo_root().join("target/schemathesis-venv/bin/schemathesis");
    if !bin.exists() {
        let why = format!(
            "schemathesis is not installed at {}: run `bash tests/schemathesis/install.sh`",
            bin.display()
        );
        if required() {
            panic!("CI=true or WPROBE_REQUIRE_SCHEMATHESIS=1, but {why}");
        }
        println!("skipped: {why} (WPROBE_REQUIRE_SCHEMATHESIS=1 makes this a failure)");
        return;
    }
    let server = Server::start(&data_dir("api-schema"), &[]);
    let url = format!("http://{}/api/openapi.json", server.addr);
    let work = scratch_dir().join("schemathesis");
    std::fs::create_dir_all(&work).expect("create the schemathesis directory");
    let hooks = repo_root().join("tests/schemathesis/hooks.py");
    let out_path = work.join("output.txt");
    let out = std::fs::File::create(&out_path).expect("create the output file");
    let mut child = Command::new(&bin)
        .arg("run")
        .arg(&url)
        .args([
            "--header",
            &format!("Authorization: Bearer {}", server.token),
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
        ])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--request-timeout", REQUEST_TIMEOUT])
        .args(["--workers", "1"])
        .args(["--seed", SEED])
        .args(["--exclude-path", "/api/events"])
        .args(["--no-color", "--output-truncate", "false"])
        .env("SCHEMATHESIS_HOOKS", &hooks)
        // Its own files (hypothesis's example database) stay in scratch.
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the output file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break Some(status);
        }
        if start.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut output = String::new();
    std::fs::File::open(&out_path)
        .and_then(|mut f| f.read_to_string(&mut output))
        .expect("read schemathesis's output");
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("schemathesis found problems ({s}):\n{output}"),
        None => panic!("schemathesis ran longer than {RUN_BOUND:?} and was killed:\n{output}"),
    }
    // It tested every operation of the document but the event stream and
    // the document itself (schemathesis leaves out the operation it loaded
    // the document from).
    let doc = server.call("GET", "/api/openapi.json", b"");
    assert_eq!(doc.status, 200, "{}", doc.text);
    let operations: Vec<String> = doc.json["paths"]
        .as_object()
        .expect("the document has paths")
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().into_iter().flat_map(|o| o.keys());
            methods.map(move |m| format!("{m} {path}"))
        })
        .collect();
    let tested = format!("Tested: {}", operations.len() - 2);
    assert!(
        output.contains(&tested),
        "schemathesis's summary does not say `{tested}` ({operations:?}):\n{output}"
    );
    // And the service is still up and answering.
    let health = server.call("GET", "/api/health", b"");
    assert_eq!(health.status, 200, "{}", health.text);
}
