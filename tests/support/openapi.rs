//! Checks real responses against the served OpenAPI 3.1 document: the
//! operation (method and path template) and the status must be documented,
//! and a JSON body must match that response's schema. The schemas are JSON
//! Schema 2020-12 (OpenAPI 3.1's dialect) and are validated by the
//! `jsonschema` crate, with `#/components/...` references resolved against
//! the document itself.

use serde_json::{json, Map, Value};

/// The operations of one OpenAPI document, ready to check responses.
pub struct OpenApiValidator {
    /// (path template, its path item), in the document's order.
    paths: Vec<(String, Value)>,
    /// The document's `components`, for `$ref`s.
    components: Value,
}

impl OpenApiValidator {
    /// From the document as served (GET /api/openapi.json). Fails when it is
    /// not an OpenAPI 3.1 document with `paths`.
    pub fn new(doc: &Value) -> Result<OpenApiValidator, String> {
        let version = doc["openapi"].as_str().unwrap_or("");
        if !version.starts_with("3.1") {
            return Err(format!(
                "not an OpenAPI 3.1 document (openapi: {})",
                doc["openapi"]
            ));
        }
        let paths = doc["paths"]
            .as_object()
            .ok_or("the document has no `paths` object")?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let components = doc.get("components").cloned().unwrap_or_else(|| json!({}));
        Ok(OpenApiValidator { paths, components })
    }

    /// The documented path template that a concrete request path (query
    /// and fragment allowed) matches: a template without parameters wins
    /// over one with, then the one with the most literal segments.
    pub fn template_for(&self, path: &str) -> Option<&str> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let segments: Vec<&str> = path.split('/').collect();
        self.paths
            .iter()
            .filter_map(|(template, _)| {
                let parts: Vec<&str> = template.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal = 0;
                for (t, s) in parts.iter().zip(&segments) {
                    if !t.contains('{') {
                        if t != s {
                            return None;
                        }
                        literal += 1;
                    } else if !segment_matches(t, s) {
                        return None;
                    }
                }
                Some((template.as_str(), literal))
            })
            .max_by_key(|&(_, literal)| literal)
            .map(|(template, _)| template)
    }

    /// Checks one response: `method` (any case) and the concrete `path`
    /// (e.g. `/api/targets/3?x=1`) must name a documented operation,
    /// `status` one of its documented responses (an exact code, else
    /// `4XX`-style ranges, else `default`), and `body` must match that
    /// response's `application/json` schema. A response documented without
    /// a body must come with none (`Value::Null`); one documented with a
    /// content type but no schema takes any body.
    pub fn validate(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), String> {
        let method_lc = method.to_ascii_lowercase();
        let method_uc = method.to_ascii_uppercase();
        let template = self.template_for(path).ok_or_else(|| {
            format!(
                "{method_uc} {path}: no documented path matches (documented: {})",
                self.paths
                    .iter()
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let item = &self
            .paths
            .iter()
            .find(|(t, _)| t == template)
            .expect("template")
            .1;
        let op_name = format!("{method_uc} {template}");
        let operation = item.get(&method_lc).ok_or_else(|| {
            let methods: Vec<String> = item
                .as_object()
                .map(|o| {
                    o.keys()
                        .filter(|k| HTTP_METHODS.contains(&k.as_str()))
                        .map(|k| k.to_ascii_uppercase())
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{op_name} (request {path}): the method is not documented for this path \
                 (documented: {})",
                methods.join(", ")
            )
        })?;
        let op_name = match operation["operationId"].as_str() {
            Some(id) => format!("{op_name} ({id})"),
            None => op_name,
        };
        let responses = operation["responses"]
            .as_object()
            .ok_or_else(|| format!("{op_name}: the operation documents no responses"))?;
        let code = status.to_string();
        let range = format!("{}XX", status / 100);
        let response = responses
            .get(&code)
            .or_else(|| {
                responses
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&range))
                    .map(|(_, v)| v)
            })
            .or_else(|| responses.get("default"))
            .ok_or_else(|| {
                format!(
                    "{op_name}: status {status} is not documented (documented: {})",
                    responses.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
        let response = self.deref(response, &op_name)?;
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            if body.is_null() {
                return Ok(());
            }
            return Err(format!(
                "{op_name} → {status}: documented without a body, but got {}",
                short(body)
            ));
        };
        let media = content
            .iter()
            .find(|(k, _)| is_json_media_type(k))
            .map(|(_, v)| v)
            .ok_or_else(|| {
                format!(
                    "{op_name} → {status}: no JSON content documented (content types: {})",
                    content.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
        let Some(schema) = media.get("schema") else {
            return Ok(());
        };
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.components,
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .map_err(|e| format!("{op_name} → {status}: the documented schema is invalid: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| {
                let pointer = e.instance_path().as_str().to_string();
                let pointer = if pointer.is_empty() {
                    "(the body's root)".to_string()
                } else {
                    pointer
                };
                format!("at {pointer}: {e} (schema {})", e.schema_path().as_str())
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{op_name} → {status}: the body does not match the documented schema:\n  {}\nbody: {}",
                errors.join("\n  "),
                short(body)
            ))
        }
    }

    /// A response object, following one `$ref` into `components/responses`.
    fn deref<'a>(&'a self, v: &'a Value, op_name: &str) -> Result<&'a Value, String> {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            return Ok(v);
        };
        r.strip_prefix("#/components/")
            .map(|rest| format!("/{rest}"))
            .and_then(|p| self.components.pointer(&p))
            .ok_or_else(|| format!("{op_name}: unresolvable response reference {r}"))
    }
}

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn is_json_media_type(t: &str) -> bool {
    let base = t.split(';').next().unwrap_or("").trim();
    base == "application/json" || base.ends_with("+json")
}

/// Whether one concrete segment matches a template segment such as `{id}`
/// or `v{major}.json`: every `{param}` takes at least one character and no
/// `/`; the literal text around them must be there.
fn segment_matches(template: &str, segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    // Literal pieces between parameters.
    let mut literals = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        literals.push(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => rest = &rest[open + close + 1..],
            None => return false,
        }
    }
    literals.push(rest);
    let (first, last) = (literals[0], literals[literals.len() - 1]);
    if !segment.starts_with(first) || segment.len() < first.len() + last.len() {
        return false;
    }
    if !segment[first.len()..].ends_with(last) {
        return false;
    }
    let mut middle = &segment[first.len()..segment.len() - last.len()];
    // Each parameter takes at least one character, then the next literal.
    for lit in &literals[1..literals.len() - 1] {
        let Some(at) = middle.get(1..).and_then(|m| m.find(lit)) else {
            return false;
        };
        middle = &middle[1 + at + lit.len()..];
    }
    !middle.is_empty()
}

fn short(body: &Value) -> String {
    let s = body.to_string();
    if s.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

/// The documented (METHOD, path template, status) triples, e.g. for a
/// test that checks each was exercised.
pub fn documented_responses(doc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if !HTTP_METHODS.contains(&method.as_str()) {
                continue;
            }
            for status in op["responses"]
                .as_object()
                .map(Map::keys)
                .into_iter()
                .flatten()
            {
                out.push((method.to_ascii_uppercase(), path.clone(), status.clone()));
            }
        }
    }
    out
}
