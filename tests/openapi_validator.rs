//! The OpenAPI response validator of tests/support/openapi.rs: on a small
//! hand-made document, then on the real document of `wprobe serve`
//! (utoipa's output: `$ref`s, arrays of refs, nullable fields as
//! `type: [X, "null"]`).

use serde_json::{json, Value};
use wprobe_tests::openapi::{documented_responses, OpenApiValidator};

fn small_doc() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/api/health": {
                "get": {
                    "operationId": "health",
                    "responses": {"200": {"description": "up", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}}
                }
            },
            "/api/targets": {
                "get": {"responses": {"200": {"description": "list", "content": {
                    "application/json": {"schema": {
                        "type": "array", "items": {"$ref": "#/components/schemas/Target"}}}}}}}
            },
            "/api/targets/{id}": {
                "get": {"responses": {
                    "200": {"description": "one", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Target"}}}},
                    "404": {"$ref": "#/components/responses/NotFound"}
                }},
                "delete": {"responses": {"204": {"description": "gone"}}}
            },
            "/api/targets/stats": {
                "get": {"responses": {"200": {"description": "stats", "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["count"],
                        "properties": {"count": {"type": "integer"}}}}}}}}
            }
        },
        "components": {
            "schemas": {
                "Health": {"type": "object", "required": ["status", "version"], "properties": {
                    "status": {"type": "string"}, "version": {"type": "string"}}},
                "Exit": {"type": "object", "properties": {
                    "code": {"type": ["integer", "null"], "format": "int32"}}},
                "Target": {"type": "object", "required": ["id", "pid", "exit"], "properties": {
                    "id": {"type": "integer", "format": "int64"},
                    "pid": {"type": "integer", "format": "int32"},
                    "exit": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Exit"}]}}},
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"}}}
            },
            "responses": {
                "NotFound": {"description": "no such target", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        }
    })
}

fn small() -> OpenApiValidator {
    OpenApiValidator::new(&small_doc()).expect("a valid document")
}

fn expect_err(r: Result<(), String>, parts: &[&str]) -> String {
    let e = r.expect_err("the validator should refuse this");
    for p in parts {
        assert!(e.contains(p), "the message should name {p:?}:\n{e}");
    }
    e
}

#[test]
fn valid_bodies_pass() {
    let v = small();
    v.validate(
        "GET",
        "/api/health",
        200,
        &json!({"status": "ok", "version": "0.1.0"}),
    )
    .unwrap();
    let t = json!({"id": 3, "pid": 100, "exit": null});
    v.validate("get", "/api/targets/3?x=1", 200, &t).unwrap();
    v.validate("GET", "/api/targets/3#frag", 200, &t).unwrap();
    let exited = json!({"id": 3, "pid": 100, "exit": {"code": null}});
    v.validate("GET", "/api/targets/3", 200, &exited).unwrap();
    v.validate("GET", "/api/targets", 200, &json!([t, exited]))
        .unwrap();
    v.validate("GET", "/api/targets", 200, &json!([])).unwrap();
    // A response $ref into components/responses.
    v.validate(
        "GET",
        "/api/targets/9",
        404,
        &json!({"error": "no target 9"}),
    )
    .unwrap();
    // Documented without a body.
    v.validate("DELETE", "/api/targets/3", 204, &Value::Null)
        .unwrap();
}

#[test]
fn a_literal_path_wins_over_a_template() {
    let v = small();
    assert_eq!(
        v.template_for("/api/targets/stats"),
        Some("/api/targets/stats")
    );
    assert_eq!(
        v.template_for("/api/targets/7?a=b"),
        Some("/api/targets/{id}")
    );
    assert_eq!(v.template_for("/api/targets/"), None);
    assert_eq!(v.template_for("/api/targets/1/2"), None);
    v.validate("GET", "/api/targets/stats", 200, &json!({"count": 2}))
        .unwrap();
    // Validated against the stats schema, not Target's.
    expect_err(
        v.validate(
            "GET",
            "/api/targets/stats",
            200,
            &json!({"id": 1, "pid": 2, "exit": null}),
        ),
        &["GET /api/targets/stats", "200", "count"],
    );
}

#[test]
fn a_missing_required_field_fails_naming_the_pointer() {
    let v = small();
    let e = expect_err(
        v.validate("GET", "/api/health", 200, &json!({"status": "ok"})),
        &[
            "GET /api/health",
            "(health)",
            "200",
            "\"version\"",
            "required",
        ],
    );
    assert!(e.contains("the body's root"), "{e}");
    // Inside an array of refs: the pointer names the element.
    expect_err(
        v.validate(
            "GET",
            "/api/targets",
            200,
            &json!([{"id": 1, "pid": 2, "exit": null}, {"id": 2, "exit": null}]),
        ),
        &["GET /api/targets", "200", "at /1:", "\"pid\"", "required"],
    );
}

#[test]
fn a_wrong_type_fails_naming_the_pointer() {
    let v = small();
    expect_err(
        v.validate(
            "GET",
            "/api/targets/3",
            200,
            &json!({"id": "three", "pid": 2, "exit": null}),
        ),
        &["GET /api/targets/{id}", "200", "at /id:", "integer"],
    );
    // A nullable field (type: [X, "null"]) refuses other types.
    expect_err(
        v.validate(
            "GET",
            "/api/targets/3",
            200,
            &json!({"id": 3, "pid": 2, "exit": {"code": "zero"}}),
        ),
        &["GET /api/targets/{id}", "at /exit"],
    );
    // The error body of a $ref'd response is checked too.
    expect_err(
        v.validate("GET", "/api/targets/3", 404, &json!({"error": 404})),
        &["404", "at /error:", "string"],
    );
}

#[test]
fn an_undocumented_status_fails() {
    let v = small();
    expect_err(
        v.validate("GET", "/api/targets/3", 500, &json!({"error": "boom"})),
        &[
            "GET /api/targets/{id}",
            "status 500 is not documented",
            "200, 404",
        ],
    );
}

#[test]
fn an_unknown_path_or_method_fails() {
    let v = small();
    expect_err(
        v.validate("GET", "/api/nope", 200, &json!({})),
        &[
            "GET /api/nope",
            "no documented path matches",
            "/api/targets/{id}",
        ],
    );
    expect_err(
        v.validate("POST", "/api/health", 200, &json!({})),
        &["POST /api/health", "method is not documented", "GET"],
    );
}

#[test]
fn a_body_where_none_is_documented_fails() {
    let v = small();
    expect_err(
        v.validate("DELETE", "/api/targets/3", 204, &json!({"x": 1})),
        &["DELETE /api/targets/{id}", "204", "without a body"],
    );
}

#[test]
fn documents_other_than_openapi_3_1_are_refused() {
    let mut doc = small_doc();
    doc["openapi"] = json!("3.0.3");
    let e = OpenApiValidator::new(&doc).err().expect("refused");
    assert!(e.contains("3.1"), "{e}");
    assert!(OpenApiValidator::new(&json!({"openapi": "3.1.0"})).is_err());
}

#[test]
fn documented_responses_lists_every_triple() {
    let all = documented_responses(&small_doc());
    assert!(all.contains(&("GET".into(), "/api/targets/{id}".into(), "404".into())));
    assert!(all.contains(&("DELETE".into(), "/api/targets/{id}".into(), "204".into())));
    assert_eq!(all.len(), 6, "{all:?}");
}

// --- The real document -------------------------------------------------

fn real_doc() -> Value {
    use utoipa::OpenApi;
    serde_json::to_value(wprobe_host::serve::ApiDoc::openapi()).expect("serialize the document")
}

/// A body that a schema accepts, built from its required properties: the
/// real schemas change as the API grows, the test should not.
fn example(schema: &Value, doc: &Value) -> Value {
    if let Some(r) = schema["$ref"].as_str() {
        let target = doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("unresolved {r}"));
        return example(target, doc);
    }
    // allOf (utoipa's #[serde(flatten)]): every part's properties.
    if let Some(parts) = schema["allOf"].as_array() {
        let mut out = serde_json::Map::new();
        for part in parts {
            if let Value::Object(o) = example(part, doc) {
                out.extend(o);
            }
        }
        return Value::Object(out);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(first) = schema[key].as_array().and_then(|a| a.first()) {
            return example(first, doc);
        }
    }
    let ty = match &schema["type"] {
        Value::Array(ts) if ts.iter().any(|t| t == "null") => return Value::Null,
        Value::String(t) => t.as_str(),
        _ => "object",
    };
    match ty {
        "string" => json!("x"),
        "integer" => json!(1),
        "number" => json!(1.5),
        "boolean" => json!(true),
        "array" => json!([example(&schema["items"], doc)]),
        _ => {
            let mut out = serde_json::Map::new();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().expect("a property name");
                out.insert(name.into(), example(&schema["properties"][name], doc));
            }
            Value::Object(out)
        }
    }
}

#[test]
fn utoipas_document_of_the_service_is_understood() {
    let doc = real_doc();
    let v = OpenApiValidator::new(&doc).expect("utoipa emits OpenAPI 3.1");

    // Health: a plain $ref.
    v.validate(
        "GET",
        "/api/health",
        200,
        &json!({"status": "ok", "version": "x"}),
    )
    .unwrap();
    expect_err(
        v.validate("GET", "/api/health", 200, &json!({"status": "ok"})),
        &["GET /api/health", "200", "\"version\"", "required"],
    );
    expect_err(
        v.validate(
            "GET",
            "/api/health",
            200,
            &json!({"status": 1, "version": "x"}),
        ),
        &["at /status:", "string"],
    );

    // The error body of every documented error.
    v.validate(
        "GET",
        "/api/targets/42",
        404,
        &json!({"error": "no target 42"}),
    )
    .unwrap();
    expect_err(
        v.validate("GET", "/api/targets/42", 404, &json!({"message": "no"})),
        &["GET /api/targets/{id}", "404", "\"error\""],
    );
    expect_err(
        v.validate("GET", "/api/targets/42", 599, &json!({"error": "x"})),
        &["status 599 is not documented"],
    );
    v.validate("DELETE", "/api/targets/42", 204, &Value::Null)
        .unwrap();

    // Target: `exit` is Option<TargetExit> (nullable), its fields
    // Option<i32> (type: [integer, null]).
    let target_schema = &doc["components"]["schemas"]["Target"];
    let mut t = example(target_schema, &doc);
    t["exit"] = Value::Null;
    v.validate("GET", "/api/targets/1", 200, &t)
        .unwrap_or_else(|e| panic!("{e}\nschema: {target_schema:#}"));
    t["exit"] = json!({"code": 0, "signal": null});
    v.validate("GET", "/api/targets/1", 200, &t).unwrap();
    t["exit"] = json!({"code": null, "signal": 9});
    v.validate("GET", "/api/targets/1", 200, &t).unwrap();
    let mut bad = t.clone();
    bad["exit"] = json!({"code": "zero", "signal": null});
    expect_err(
        v.validate("GET", "/api/targets/1", 200, &bad),
        &["GET /api/targets/{id}", "200", "at /exit"],
    );
    let mut bad = t.clone();
    bad["pid"] = json!("1234");
    expect_err(
        v.validate("GET", "/api/targets/1", 200, &bad),
        &["at /pid:"],
    );

    // Arrays of refs: GET /api/targets.
    v.validate("GET", "/api/targets", 200, &json!([t.clone(), t.clone()]))
        .unwrap();
    let mut second = t.clone();
    second.as_object_mut().unwrap().remove("pid");
    expect_err(
        v.validate("GET", "/api/targets", 200, &json!([t, second])),
        &["GET /api/targets", "at /1:", "\"pid\""],
    );

    // Every documented JSON response schema compiles and accepts its own
    // example.
    for (method, path, status) in documented_responses(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        let Some(schema) = op["responses"][&status]["content"]["application/json"].get("schema")
        else {
            continue;
        };
        let Ok(code) = status.parse::<u16>() else {
            continue;
        };
        let concrete = path.replace(['{', '}'], "");
        v.validate(&method, &concrete, code, &example(schema, &doc))
            .unwrap_or_else(|e| panic!("the example of {method} {path} {status}: {e}"));
    }
}
