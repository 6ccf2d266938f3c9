//! Every route of the API against its own OpenAPI document: the routes are
//! enumerated from `/api/openapi.json` of a real `wprobe serve`, so a new
//! route cannot escape these checks, and the document is checked to list
//! every route the service serves (`route_table()`).
//!
//! For each path and method: no token and a wrong token are 401 (public
//! operations, `security: [{}]`, answer without one); a foreign `Host` and
//! `Origin: null` are 403 even with the token; a cross-origin `text/plain`
//! POST/PATCH/PUT, the request a web page may send without a preflight, is
//! refused, and a same-origin one with the token is not taken as JSON.
//! Path parameters are ids that do not exist: the checks come first.

use std::time::Duration;

use serde_json::Value;
use wprobe_tests::service::{data_dir, request_within, Reply, Server};

/// Long enough for any refusal; a reply still streaming after it is a bug.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One operation of the document.
struct Op {
    method: String,
    /// The path with its parameters filled.
    path: String,
    /// The document's path, for messages.
    template: String,
    public: bool,
}

/// The operations of `doc`, path parameters filled with values of their
/// type that name nothing.
fn operations(doc: &Value) -> Vec<Op> {
    let top_security = doc["security"].as_array().cloned().unwrap_or_default();
    let mut ops = vec![];
    let paths = doc["paths"].as_object().expect("the document has paths");
    for (template, item) in paths {
        for (method, op) in item.as_object().expect("a path item") {
            if !["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                continue;
            }
            let security = op["security"]
                .as_array()
                .cloned()
                .unwrap_or(top_security.clone());
            // `[]` or a `{}` alternative: no credentials needed.
            let public = security.is_empty()
                || security
                    .iter()
                    .any(|s| s.as_object().is_some_and(|o| o.is_empty()));
            let mut path = template.clone();
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    let name = p["name"].as_str().expect("a parameter name");
                    let value = match p["schema"]["type"].as_str() {
                        Some("integer") | Some("number") => "987654",
                        _ => "no-such-thing",
                    };
                    path = path.replace(&format!("{{{name}}}"), value);
                }
            }
            assert!(
                !path.contains('{'),
                "{method} {template}: a path parameter is not described"
            );
            ops.push(Op {
                method: method.to_uppercase(),
                path,
                template: template.clone(),
                public,
            });
        }
    }
    ops
}

fn send(server: &Server, op: &Op, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    request_within(
        &server.addr,
        &op.method,
        &op.path,
        headers,
        body,
        Some(READ_TIMEOUT),
    )
}

#[test]
fn every_documented_route_checks_token_host_and_origin() {
    let server = Server::start(&data_dir("api-routes"), &[]);
    let doc = server.call("GET", "/api/openapi.json", b"");
    assert_eq!(doc.status, 200, "{}", doc.text);
    let ops = operations(&doc.json);

    // The document lists every route served, /metrics and the event
    // stream among them, so enumerating it enumerates the service.
    let documented: Vec<(String, String)> = ops
        .iter()
        .map(|o| (o.method.clone(), o.template.clone()))
        .collect();
    for (method, path) in wprobe_host::serve::route_table() {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is served but not in /api/openapi.json"
        );
    }
    for must in ["/metrics", "/api/events"] {
        assert!(
            documented.iter().any(|(_, p)| p == must),
            "{must} is not documented"
        );
    }

    let token = format!("Bearer {}", server.token);
    let wrong = format!("Bearer {}x", server.token);
    let mut failures = vec![];
    for op in &ops {
        let what = format!("{} {}", op.method, op.path);
        let mut expect = |case: &str, reply: Reply, ok: &dyn Fn(u16) -> bool| {
            if !ok(reply.status) {
                failures.push(format!(
                    "{what} {case}: HTTP {} {}",
                    reply.status,
                    reply.text.trim()
                ));
            }
        };
        let refused_401 = |s: u16| s == 401;
        let answered = |s: u16| (200..300).contains(&s) || s == 404;

        let r = send(&server, op, &[], b"");
        if op.public {
            expect("without a token (public)", r, &answered);
        } else {
            expect("without a token", r, &refused_401);
            let r = send(&server, op, &[("Authorization", &wrong)], b"");
            expect("with a wrong token", r, &refused_401);
            let r = send(&server, op, &[("Authorization", "Basic d3Byb2JlOng=")], b"");
            expect("with Basic credentials", r, &refused_401);
        }
        let r = send(
            &server,
            op,
            &[("Authorization", &token), ("Host", "evil.example:80")],
            b"",
        );
        expect("with a foreign Host", r, &|s| s == 403);
        let r = send(
            &server,
            op,
            &[("Authorization", &token), ("Origin", "null")],
            b"",
        );
        expect("with Origin: null", r, &|s| s == 403);
        let r = send(
            &server,
            op,
            &[("Authorization", &token), ("Origin", "http://evil.example")],
            b"",
        );
        expect("from another origin", r, &|s| s == 403);

        if ["POST", "PATCH", "PUT"].contains(&op.method.as_str()) {
            let body = br#"{"argv":["/bin/true"],"spec":"uprobe:libc:malloc"}"#;
            let plain = [
                ("Content-Type", "text/plain"),
                ("Origin", "http://evil.example"),
            ];
            let r = send(&server, op, &plain, body);
            expect("cross-origin text/plain without a token", r, &|s| s == 403);
            let r = send(
                &server,
                op,
                &[plain[0], plain[1], ("Authorization", &token)],
                body,
            );
            expect("cross-origin text/plain with the token", r, &|s| s == 403);
            let r = send(&server, op, &[plain[0], ("Authorization", &token)], body);
            expect("same-origin text/plain with the token", r, &|s| {
                (400..500).contains(&s)
            });
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing the refused requests carried was done.
    for list in ["/api/targets", "/api/probes", "/api/plugins"] {
        let r = server.call("GET", list, b"");
        assert_eq!(
            (r.status, r.json.as_array().map(Vec::len)),
            (200, Some(0)),
            "{list}: {}",
            r.text
        );
    }
}
