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

/// Generated cases per operation and phase; `WPROBE_SCHEMATHESIS_EXAMPLES`
/// sets more for a longer run.
const MAX_EXAMPLES: &str = "40";
/// A request without an answer after this long is a hang (seconds).
const REQUEST_TIMEOUT: &str = "30";
/// The whole run, past which it is killed and the test fails.
const RUN_BOUND: Duration = Duration::from_secs(600);
/// Fixed, so that a failure can be run again as it was.
const SEED: &str = "20261206";

/// A plugin as WebAssembly text.
const WAT_PLUGIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))"#;

/// A process killed on drop.
struct Sleeper(std::process::Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    // Things for the id routes to find: a process of the test's own,
    // attached (so the service never owns it and it is killed here), a
    // plugin, and a probe running it.
    let sleeper = Sleeper(
        Command::new("sleep")
            .arg("3600")
            .spawn()
            .expect("start sleep"),
    );
    let target = server.call(
        "POST",
        "/api/targets",
        format!(r#"{{"pid": {}}}"#, sleeper.0.id()).as_bytes(),
    );
    assert_eq!(target.status, 201, "{}", target.text);
    let plugin = server.call("POST", "/api/plugins?name=seed", WAT_PLUGIN.as_bytes());
    assert_eq!(plugin.status, 201, "{}", plugin.text);
    let probe = server.call(
        "POST",
        "/api/probes",
        format!(
            r#"{{"target": {}, "spec": "uprobe:libc:malloc", "plugins": [{{"plugin": {}}}]}}"#,
            target.json["id"], plugin.json["id"]
        )
        .as_bytes(),
    );
    assert_eq!(probe.status, 201, "{}", probe.text);
    // Half the generated ids of each route are these.
    let examples =
        std::env::var("WPROBE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.into());
    let config = work.join("schemathesis.toml");
    let mut toml = String::new();
    for (name, id, regex) in [
        ("targets", &target.json["id"], "^/api/targets/"),
        ("plugins", &plugin.json["id"], "^/api/plugins/"),
        ("probes", &probe.json["id"], "^/api/probes/"),
    ] {
        toml += &format!(
            "[dictionaries.{name}]\nvalues = [{id}]\n\n[[operations]]\n\
             include-path-regex = '{regex}'\n\
             parameters = {{ \"path.id\" = {{ dictionary = \"{name}\", probability = 0.5 }} }}\n\n"
        );
    }
    std::fs::write(&config, toml).expect("write the schemathesis config");
    let hooks = repo_root().join("tests/schemathesis/hooks.py");
    let out_path = work.join("output.txt");
    let out = std::fs::File::create(&out_path).expect("create the output file");
    let mut child = Command::new(&bin)
        .arg("--config-file")
        .arg(&config)
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
        .args(["--max-examples", &examples])
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

/// Where a case puts the value the document describes.
enum At<'a> {
    /// A query parameter; `None` leaves it out.
    Query(&'static str, Option<&'a str>),
    /// The JSON body.
    Body(&'a str),
}

/// What the document allows is what the service takes: for each value just
/// inside or just outside a limit the service keeps, the service refuses
/// it as a bad request (400, or 422 naming a length limit) exactly when
/// the document's schema refuses it.
/// The other checks come first in each handler, so a value the service
/// takes is answered with something else (no such target, not a module).
#[test]
fn the_documents_limits_are_the_services() {
    let long_name = "n".repeat(64);
    let too_long_name = "n".repeat(65);
    // Specs and names: 4096 characters at most (a character may be several
    // bytes), and no NUL.
    let q_max = "q".repeat(4096);
    let q_over = "q".repeat(4097);
    let spec = |name: &str| {
        serde_json::json!({"target": 987654, "spec": format!("uprobe:libc:{name}")}).to_string()
    };
    let spec_max = spec(&"m".repeat(4096 - 12));
    let spec_over = spec(&"m".repeat(4097 - 12));
    let spec_wide = spec(&"é".repeat(2100));
    let spec_wide_over = spec(&"é".repeat(4097 - 12));
    let spec_nul = spec("ma\u{0}lloc");
    let cases: Vec<(&str, &str, &str, At)> = vec![
        // (method, path template, the rest of the query, where the value is)
        (
            "GET",
            "/api/targets/{id}/symbols",
            "",
            At::Query("q", Some(q_max.as_str())),
        ),
        (
            "GET",
            "/api/targets/{id}/symbols",
            "",
            At::Query("q", Some(q_over.as_str())),
        ),
        (
            "GET",
            "/api/targets/{id}/disasm",
            "",
            At::Query("symbol", Some(q_max.as_str())),
        ),
        (
            "GET",
            "/api/targets/{id}/disasm",
            "",
            At::Query("symbol", Some(q_over.as_str())),
        ),
        ("POST", "/api/probes", "", At::Body(spec_max.as_str())),
        ("POST", "/api/probes", "", At::Body(spec_over.as_str())),
        ("POST", "/api/probes", "", At::Body(spec_wide.as_str())),
        ("POST", "/api/probes", "", At::Body(spec_wide_over.as_str())),
        ("POST", "/api/probes", "", At::Body(spec_nul.as_str())),
        (
            "GET",
            "/api/targets/{id}/symbols",
            "",
            At::Query("limit", Some("0")),
        ),
        (
            "GET",
            "/api/targets/{id}/symbols",
            "",
            At::Query("limit", Some("1")),
        ),
        (
            "GET",
            "/api/targets/{id}/symbols",
            "",
            At::Query("limit", Some("5000")),
        ),
        (
            "GET",
            "/api/targets/{id}/symbols",
            "",
            At::Query("limit", Some("5001")),
        ),
        (
            "GET",
            "/api/targets/{id}/disasm",
            "symbol=main",
            At::Query("count", Some("0")),
        ),
        (
            "GET",
            "/api/targets/{id}/disasm",
            "symbol=main",
            At::Query("count", Some("512")),
        ),
        (
            "GET",
            "/api/targets/{id}/disasm",
            "symbol=main",
            At::Query("count", Some("513")),
        ),
        (
            "GET",
            "/api/targets/{id}/disasm",
            "",
            At::Query("symbol", None),
        ),
        (
            "GET",
            "/api/targets/{id}/disasm",
            "",
            At::Query("symbol", Some("main")),
        ),
        (
            "GET",
            "/api/events.jsonl",
            "",
            At::Query("limit", Some("4294967295")),
        ),
        (
            "GET",
            "/api/events.jsonl",
            "",
            At::Query("limit", Some("4294967296")),
        ),
        ("POST", "/api/plugins", "", At::Query("name", Some(".."))),
        ("POST", "/api/plugins", "", At::Query("name", Some("a..b"))),
        ("POST", "/api/plugins", "", At::Query("name", Some("a b"))),
        (
            "POST",
            "/api/plugins",
            "",
            At::Query("name", Some(long_name.as_str())),
        ),
        (
            "POST",
            "/api/plugins",
            "",
            At::Query("name", Some(too_long_name.as_str())),
        ),
        ("POST", "/api/targets", "", At::Body(r#"{}"#)),
        (
            "POST",
            "/api/targets",
            "",
            At::Body(r#"{"pid": 987654321, "spawn": ["x"]}"#),
        ),
        ("POST", "/api/targets", "", At::Body(r#"{"spawn": []}"#)),
        (
            "POST",
            "/api/targets",
            "",
            At::Body(r#"{"pid": 987654321}"#),
        ),
        (
            "POST",
            "/api/targets",
            "",
            At::Body(r#"{"spawn": ["/no/such/program"]}"#),
        ),
        ("PATCH", "/api/probes/{id}", "", At::Body(r#"{}"#)),
        (
            "PATCH",
            "/api/probes/{id}",
            "",
            At::Body(r#"{"enabled": true}"#),
        ),
        (
            "POST",
            "/api/probes/batch",
            "",
            At::Body(r#"{"probes": []}"#),
        ),
        (
            "POST",
            "/api/probes/batch",
            "",
            At::Body(r#"{"probes": [{"target": 987654, "spec": "uprobe:libc:malloc"}]}"#),
        ),
    ];
    let server = Server::start(&data_dir("api-schema-limits"), &[]);
    let doc = server.call("GET", "/api/openapi.json", b"");
    assert_eq!(doc.status, 200, "{}", doc.text);
    let doc = doc.json;
    let mut wrong = vec![];
    for (method, template, rest, at) in &cases {
        let op = &doc["paths"][*template][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let path = template.replace("{id}", "987654");
        let (query, body, documented) = match at {
            At::Query(name, value) => {
                let param = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == *name && p["in"] == "query")
                    .unwrap_or_else(|| panic!("{method} {template} documents no `{name}`"));
                let documented = match value {
                    None => param["required"] != true,
                    Some(v) => {
                        // A query value is text; the schema's type says how
                        // it reads.
                        let typed = match param["schema"]["type"].as_str() {
                            Some("integer") => serde_json::json!(v
                                .parse::<u64>()
                                .unwrap_or_else(|_| panic!("`{v}` is not an integer"))),
                            _ => serde_json::json!(v),
                        };
                        schema_allows(&doc, &param["schema"], &typed)
                    }
                };
                let mut query: Vec<String> = vec![];
                if !rest.is_empty() {
                    query.push(rest.to_string());
                }
                if let Some(v) = value {
                    query.push(format!("{name}={}", v.replace(' ', "%20")));
                }
                (query.join("&"), Vec::new(), documented)
            }
            At::Body(body) => {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                assert!(
                    schema.is_object(),
                    "{method} {template} documents no JSON body"
                );
                let value: serde_json::Value = serde_json::from_str(body).expect("a JSON case");
                (
                    String::new(),
                    body.as_bytes().to_vec(),
                    schema_allows(&doc, schema, &value),
                )
            }
        };
        let url = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        let auth = format!("Bearer {}", server.token);
        let ct = if *template == "/api/plugins" {
            "application/wasm"
        } else {
            "application/json"
        };
        let reply = server.raw(
            method,
            &url,
            &[("Authorization", &auth), ("Content-Type", ct)],
            &body,
        );
        // Refused: a bad request, or a value past a length limit (422
        // naming the limit).
        let refused =
            reply.status == 400 || (reply.status == 422 && reply.text.contains("limit of"));
        let taken = !refused;
        if taken != documented {
            wrong.push(format!(
                "{method} {url} {}: the document {}, the service answers {} {}",
                String::from_utf8_lossy(&body),
                if documented {
                    "allows it"
                } else {
                    "refuses it"
                },
                reply.status,
                reply.text
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the document and the service disagree:\n{}",
        wrong.join("\n")
    );
}

/// Whether `value` matches `schema`, a schema of `doc` (its `$ref`s into
/// `#/components` resolved against the document).
fn schema_allows(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
) -> bool {
    let root = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": doc["components"],
    });
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .unwrap_or_else(|e| panic!("the documented schema {schema} is invalid: {e}"))
        .is_valid(value)
}
