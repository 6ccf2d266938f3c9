//! The routes under `/api`, with their OpenAPI descriptions (utoipa), and
//! the route table that the router and the OpenAPI test both read.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::error::{json_body, ApiError, ErrorBody};
use super::store::{PluginDetail, PluginSummary, Target, Uploaded};
use super::targets::{self, Process};
use super::AppState;

/// The OpenAPI document of the routes below.
#[derive(OpenApi)]
#[openapi(
    info(title = "wprobe", description = "The REST API of `wprobe serve`."),
    paths(health, openapi_json, upload_plugin, list_plugins, get_plugin, delete_plugin,
        list_processes, add_target, list_targets, get_target, delete_target,
        super::symbols::symbols, super::symbols::disasm,
        super::probes::create_probe, super::probes::create_batch, super::probes::list_probes,
        super::probes::get_probe, super::probes::patch_probe, super::probes::delete_probe,
        super::events::events, super::events::events_jsonl,
        super::metrics::aggregations, super::metrics::metrics),
    modifiers(&BearerAuth, &ExactBodies),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What the derives cannot say of some bodies, set on the generated
/// schemas (utoipa 5.5's `min_properties` sets `maxProperties`): a target
/// is exactly one of `pid` and `spawn`; a probe patch changes something.
struct ExactBodies;

impl Modify for ExactBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for (name, min, max) in [("NewTarget", 1, Some(1)), ("ProbePatch", 1, None)] {
            if let Some(RefOr::T(utoipa::openapi::Schema::Object(o))) =
                components.schemas.get_mut(name)
            {
                o.min_properties = Some(min);
                o.max_properties = max;
            }
        }
    }
}

/// `GET /api/health`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always "ok" when the service answers.
    pub status: String,
    /// The version of wprobe.
    pub version: String,
}

/// The service is up (no token needed).
#[utoipa::path(get, path = "/api/health", security(()),
    responses((status = 200, description = "The service answers", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json",
    responses((status = 200, description = "The OpenAPI 3 document of the API",
        content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The query of `POST /api/plugins`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The plugin's name (1 to 64 of A-Z a-z 0-9 _ . -, not only dots); by
    /// default the name in the module's manifest. Uploading under a name
    /// that exists adds a version.
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
    )]
    pub name: Option<String>,
    /// A manifest (JSON) that replaces the module's own.
    pub manifest: Option<String>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    // Only dots would read as a path (`.`, `..`).
    let dots = name.chars().all(|c| c == '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) || dots {
        return Err(ApiError::bad_request(format!(
            "plugin name `{name}` must be 1 to 64 of A-Z a-z 0-9 _ . -, not only dots"
        )));
    }
    Ok(())
}

/// A WebAssembly module's bytes (binary, or the text format).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct WasmModule(#[allow(dead_code)] Vec<u8>);

/// Uploads a plugin: the raw module (binary, or text) as the body. The
/// module is validated before anything is stored.
#[utoipa::path(post, path = "/api/plugins", params(UploadQuery),
    request_body(content = WasmModule, content_type = "application/wasm",
        description = "The module's bytes (or multipart/form-data with the module as the \
            `file` field and optional `name` and `manifest` fields)"),
    responses(
        (status = 201, description = "Stored as a new version", body = Uploaded),
        (status = 400, description = "Bad name or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Larger than the upload cap", body = ErrorBody),
        (status = 415, description = "Not application/wasm", body = ErrorBody),
        (status = 422, description = "Not a valid plugin", body = ErrorBody),
        (status = 507, description = "The data directory's disk is full: nothing was \
            stored", body = ErrorBody)))]
pub async fn upload_plugin(
    State(state): State<AppState>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let Query(mut query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                e.status(),
                format!(
                    "the module is larger than the upload cap of {} bytes (--max-upload)",
                    state.max_upload
                ),
            )
        } else {
            ApiError::new(e.status(), e.body_text())
        }
    })?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|ct| ct.to_str().unwrap_or("").to_string());
    let base = ct.as_deref().map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let body = match base.as_deref() {
        None | Some("application/wasm" | "application/octet-stream") => body,
        Some("multipart/form-data") => {
            let form = multipart_module(ct.as_deref().unwrap_or(""), body).await?;
            query.name = query.name.or(form.name);
            query.manifest = query.manifest.or(form.manifest);
            form.module
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type `{}`: send the module as application/wasm or \
                     application/octet-stream, or as the `file` field of multipart/form-data",
                    ct.unwrap_or_default()
                ),
            ))
        }
    };
    if body.len() > state.max_upload {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the module is {} bytes, more than the upload cap of {} bytes (--max-upload)",
                body.len(),
                state.max_upload
            ),
        ));
    }
    if let Some(name) = &query.name {
        check_name(name)?;
    }
    let runtime = state.runtime.clone();
    let bytes = body.clone();
    let manifest = query.manifest.clone();
    let file_name = query.name.clone().unwrap_or_else(|| "plugin".into());
    let plugin =
        tokio::task::spawn_blocking(move || runtime.load(&bytes, manifest.as_deref(), &file_name))
            .await
            .map_err(|e| ApiError::internal(format!("validating the module: {e}")))?
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let name = query.name.unwrap_or_else(|| plugin.manifest.name.clone());
    check_name(&name)?;
    let mut uploaded = state.store().add_version(
        &name,
        &body,
        &plugin.manifest.name,
        &plugin.manifest.version,
        query.manifest.as_deref(),
    )?;
    // Probes running this plugin get the new version, maps kept.
    let targets = state.targets.clone();
    let id = uploaded.id;
    let (replaced, errors) = tokio::task::spawn_blocking(move || targets.upgrade_plugin(id))
        .await
        .map_err(|e| ApiError::internal(format!("{e}")))?;
    uploaded.replaced = replaced;
    uploaded.replace_errors = errors;
    Ok((StatusCode::CREATED, Json(uploaded)))
}

/// What a multipart upload carried.
struct Form {
    module: Bytes,
    name: Option<String>,
    manifest: Option<String>,
}

/// Reads a multipart/form-data upload: the module is the field `file` (or
/// the first field with a file name); `name` and `manifest` fields stand
/// for the query parameters of the same names.
async fn multipart_module(content_type: &str, body: Bytes) -> Result<Form, ApiError> {
    let bad = |m: String| ApiError::bad_request(m);
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| bad(format!("content type `{content_type}`: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut out = Form {
        module: Bytes::new(),
        name: None,
        manifest: None,
    };
    let mut found = false;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| bad(format!("the multipart body: {e}")))?
    {
        let field_name = field.name().unwrap_or("").to_string();
        let is_file = field_name == "file" || (field.file_name().is_some() && !found);
        let data = field
            .bytes()
            .await
            .map_err(|e| bad(format!("multipart field `{field_name}`: {e}")))?;
        let text = || {
            String::from_utf8(data.to_vec())
                .map_err(|_| bad(format!("multipart field `{field_name}` is not UTF-8")))
        };
        match field_name.as_str() {
            "name" => out.name = Some(text()?.trim().to_string()),
            "manifest" => out.manifest = Some(text()?),
            _ if is_file => {
                out.module = data;
                found = true;
            }
            other => {
                return Err(bad(format!(
                    "unknown multipart field `{other}`: send `file` (the module), and \
                     optionally `name` and `manifest`"
                )))
            }
        }
    }
    if !found {
        return Err(bad(
            "the multipart body has no `file` field: put the module there".into(),
        ));
    }
    Ok(out)
}

/// Every plugin with its latest version.
#[utoipa::path(get, path = "/api/plugins",
    responses(
        (status = 200, description = "The plugins, by id", body = Vec<PluginSummary>),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn list_plugins(
    State(state): State<AppState>,
) -> Result<Json<Vec<PluginSummary>>, ApiError> {
    Ok(Json(state.store().list()?))
}

fn plugin_id(id: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("plugin id `{id}` is not a number")))
}

/// Where a plugin runs: one probe's attachment of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginUse {
    pub probe: i64,
    #[serde(flatten)]
    pub plugin: super::probes::ProbePluginView,
}

/// A plugin: its versions, where it runs, and how that goes.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    #[serde(flatten)]
    pub detail: PluginDetail,
    /// "unused" (attached to no probe), "active", or "quarantined" (at
    /// least one attachment is not called any more after repeated faults).
    pub state: String,
    /// Faults over all its attachments.
    pub faults: u64,
    pub attachments: Vec<PluginUse>,
    /// The newest lines its attachments wrote (stdout, stderr, faults),
    /// each prefixed with its probe.
    pub log: Vec<String>,
}

/// One plugin with all its versions, where it is attached, its faults and
/// its log.
#[utoipa::path(get, path = "/api/plugins/{id}",
    params(("id" = i64, Path, description = "The plugin's id")),
    responses(
        (status = 200, description = "The plugin", body = PluginView),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody)))]
pub async fn get_plugin(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<PluginView>, ApiError> {
    let id = plugin_id(id)?;
    let detail = state
        .store()
        .get(id)?
        .ok_or_else(|| ApiError::not_found(format!("no plugin with id {id}")))?;
    let uses: Vec<(i64, std::sync::Arc<targets::Attached>)> = {
        let live = state
            .targets
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = live
            .iter()
            .flat_map(|(&probe, l)| {
                l.plugins
                    .iter()
                    .filter(|a| a.plugin == id)
                    .map(move |a| (probe, a.clone()))
            })
            .collect();
        v.sort_by_key(|(p, _)| *p);
        v
    };
    let attachments: Vec<PluginUse> = uses
        .iter()
        .map(|(probe, a)| PluginUse {
            probe: *probe,
            plugin: super::probes::plugin_view(a),
        })
        .collect();
    let mut log = Vec::new();
    for (probe, a) in &uses {
        log.extend(
            a.att
                .log()
                .into_iter()
                .map(|l| format!("probe {probe}: {l}")),
        );
    }
    let keep = log.len().saturating_sub(200);
    log.drain(..keep);
    let state_name = if attachments.is_empty() {
        "unused"
    } else if attachments.iter().any(|a| a.plugin.quarantined.is_some()) {
        "quarantined"
    } else {
        "active"
    };
    Ok(Json(PluginView {
        detail,
        state: state_name.into(),
        faults: attachments.iter().map(|a| a.plugin.faults).sum(),
        attachments,
        log,
    }))
}

/// Removes a plugin and every version of it.
#[utoipa::path(delete, path = "/api/plugins/{id}",
    params(("id" = i64, Path, description = "The plugin's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody),
        (status = 409, description = "Probes use it", body = ErrorBody),
        (status = 507, description = "The data directory's disk is full: nothing was \
            stored", body = ErrorBody)))]
pub async fn delete_plugin(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = plugin_id(id)?;
    let users = state.store().probes_using(id)?;
    if !users.is_empty() {
        let list: Vec<String> = users.iter().map(|p| p.to_string()).collect();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "plugin {id} is attached to probe(s) {}: remove it from them (PATCH \
                 /api/probes/ID with other plugins) or delete them first",
                list.join(", ")
            ),
        ));
    }
    if state.store().delete(id)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no plugin with id {id}")))
    }
}

/// The processes that can be attached: every one with a command line
/// (kernel threads have none), by pid, but the service and its core.
#[utoipa::path(get, path = "/api/processes",
    responses(
        (status = 200, description = "The processes, by pid", body = Vec<Process>),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn list_processes(State(state): State<AppState>) -> Result<Json<Vec<Process>>, ApiError> {
    let core = state.targets.core_pid();
    tokio::task::spawn_blocking(move || targets::processes(core))
        .await
        .map(Json)
        .map_err(|e| ApiError::internal(format!("listing processes: {e}")))
}

/// The body of `POST /api/targets`: exactly one of `pid` and `spawn`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTarget {
    /// Attach to this running process.
    #[schema(nullable = false)]
    pub pid: Option<i32>,
    /// Start this command (program and arguments) traced, and let it run.
    #[schema(nullable = false, min_items = 1)]
    pub spawn: Option<Vec<String>>,
}

/// Attaches to a process or spawns one; the core traces it from now on.
#[utoipa::path(post, path = "/api/targets",
    request_body(content = NewTarget, content_type = "application/json"),
    responses(
        (status = 201, description = "Traced", body = Target),
        (status = 400, description = "Bad JSON, or not exactly one of pid and spawn",
            body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No process with that pid", body = ErrorBody),
        (status = 409, description = "The pid is already a target", body = ErrorBody),
        (status = 413, description = "The body is over --max-body", body = ErrorBody),
        (status = 422, description = "The core refused (permission, ptrace, exec), or the \
            pid is the service's own or its core's", body = ErrorBody),
        (status = 503, description = "The connection to wprobe-core is closed",
            body = ErrorBody),
        (status = 507, description = "The data directory's disk is full: nothing was \
            stored", body = ErrorBody)))]
pub async fn add_target(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Target>), ApiError> {
    let req: NewTarget = json_body(body, "a target", state.max_body)?;
    let targets = state.targets.clone();
    let blocking = |f: Box<dyn FnOnce() -> Result<Target, ApiError> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::internal(format!("{e}")))?
    };
    let target = match (req.pid, req.spawn) {
        (Some(pid), None) => blocking(Box::new(move || targets.attach(pid))).await?,
        (None, Some(argv)) if !argv.is_empty() => {
            blocking(Box::new(move || targets.spawn(argv))).await?
        }
        (None, Some(_)) => return Err(ApiError::bad_request("`spawn` is empty: name a program")),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `pid` (attach) and `spawn` (a command to start)",
            ))
        }
    };
    Ok((StatusCode::CREATED, Json(target)))
}

/// Every target, by id: those of this run, and those of earlier runs
/// (state "gone").
#[utoipa::path(get, path = "/api/targets",
    responses(
        (status = 200, description = "The targets, by id", body = Vec<Target>),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn list_targets(State(state): State<AppState>) -> Result<Json<Vec<Target>>, ApiError> {
    Ok(Json(state.store().targets()?))
}

fn target_id(id: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("target id `{id}` is not a number")))
}

/// One target.
#[utoipa::path(get, path = "/api/targets/{id}",
    params(("id" = i64, Path, description = "The target's id")),
    responses(
        (status = 200, description = "The target", body = Target),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody)))]
pub async fn get_target(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Target>, ApiError> {
    let id = target_id(id)?;
    state
        .store()
        .target(id)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no target with id {id}")))
}

/// `DELETE /api/targets/{id}?kill=true`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteTargetQuery {
    /// Also kill the process (SIGKILL) once it is let go: only for targets
    /// the service spawned.
    #[serde(default)]
    pub kill: bool,
}

/// Lets a target go: the core detaches, and the process runs on untouched
/// (or, with `?kill=true`, a process the service spawned is killed). 204
/// only once the process is not traced by the core any more; a target the
/// core still holds (its connection lost, the core not answering) is a 409
/// that says so, and nothing is deleted.
#[utoipa::path(delete, path = "/api/targets/{id}",
    params(("id" = i64, Path, description = "The target's id"), DeleteTargetQuery),
    responses(
        (status = 204, description = "Detached (and killed, with `kill`) and removed"),
        (status = 400, description = "The id is not a number, or a bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 409, description = "The core still traces the process; nothing was deleted",
            body = ErrorBody),
        (status = 422, description = "The core could not detach, or `kill` for a target the \
            service did not spawn", body = ErrorBody),
        (status = 503, description = "The connection to wprobe-core is closed, or the \
            target's thread is busy", body = ErrorBody),
        (status = 507, description = "The data directory's disk is full: nothing was \
            stored", body = ErrorBody)))]
pub async fn delete_target(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<DeleteTargetQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let id = target_id(id)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let targets = state.targets.clone();
    let removed = tokio::task::spawn_blocking(move || targets.remove(id, q.kill))
        .await
        .map_err(|e| ApiError::internal(format!("{e}")))??;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no target with id {id}")))
    }
}
