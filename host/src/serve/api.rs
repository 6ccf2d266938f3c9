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

use super::error::{ApiError, ErrorBody};
use super::store::{PluginDetail, PluginSummary, Target, Uploaded};
use super::targets::{self, Command, Process};
use super::AppState;

/// The OpenAPI document of the routes below.
#[derive(OpenApi)]
#[openapi(
    info(title = "wprobe", description = "The REST API of `wprobe serve`."),
    paths(health, openapi_json, upload_plugin, list_plugins, get_plugin, delete_plugin,
        list_processes, add_target, list_targets, get_target, delete_target),
    modifiers(&BearerAuth),
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
pub struct UploadQuery {
    /// The plugin's name (1 to 64 of A-Z a-z 0-9 _ . -); by default the
    /// name in the module's manifest. Uploading under a name that exists
    /// adds a version.
    pub name: Option<String>,
    /// A manifest (JSON) that replaces the module's own.
    pub manifest: Option<String>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err(ApiError::bad_request(format!(
            "plugin name `{name}` must be 1 to 64 of A-Z a-z 0-9 _ . -"
        )));
    }
    Ok(())
}

/// Uploads a plugin: the raw module (binary, or text) as the body. The
/// module is validated before anything is stored.
#[utoipa::path(post, path = "/api/plugins", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/wasm",
        description = "The module's bytes"),
    responses(
        (status = 201, description = "Stored as a new version", body = Uploaded),
        (status = 400, description = "Bad name or query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Larger than the upload cap", body = ErrorBody),
        (status = 415, description = "Not application/wasm", body = ErrorBody),
        (status = 422, description = "Not a valid plugin", body = ErrorBody)))]
pub async fn upload_plugin(
    State(state): State<AppState>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let base = ct.split(';').next().unwrap_or("").trim();
        if base != "application/wasm" && base != "application/octet-stream" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type `{ct}`: send the module as application/wasm or \
                     application/octet-stream"
                ),
            ));
        }
    }
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
    let uploaded = state.store().add_version(
        &name,
        &body,
        &plugin.manifest.name,
        &plugin.manifest.version,
    )?;
    Ok((StatusCode::CREATED, Json(uploaded)))
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

/// One plugin with all its versions.
#[utoipa::path(get, path = "/api/plugins/{id}",
    params(("id" = i64, Path, description = "The plugin's id")),
    responses(
        (status = 200, description = "The plugin", body = PluginDetail),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody)))]
pub async fn get_plugin(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<PluginDetail>, ApiError> {
    let id = plugin_id(id)?;
    state
        .store()
        .get(id)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no plugin with id {id}")))
}

/// Removes a plugin and every version of it.
#[utoipa::path(delete, path = "/api/plugins/{id}",
    params(("id" = i64, Path, description = "The plugin's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such plugin", body = ErrorBody)))]
pub async fn delete_plugin(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = plugin_id(id)?;
    if state.store().delete(id)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no plugin with id {id}")))
    }
}

/// The processes that can be attached: every one with a command line
/// (kernel threads have none), by pid.
#[utoipa::path(get, path = "/api/processes",
    responses(
        (status = 200, description = "The processes, by pid", body = Vec<Process>),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn list_processes() -> Result<Json<Vec<Process>>, ApiError> {
    tokio::task::spawn_blocking(targets::processes)
        .await
        .map(Json)
        .map_err(|e| ApiError::internal(format!("listing processes: {e}")))
}

/// The body of `POST /api/targets`: exactly one of `pid` and `spawn`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTarget {
    /// Attach to this running process.
    pub pid: Option<i32>,
    /// Start this command (program and arguments) traced, and let it run.
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
        (status = 422, description = "The core refused (permission, ptrace, exec)",
            body = ErrorBody),
        (status = 503, description = "The connection to wprobe-core is closed",
            body = ErrorBody)))]
pub async fn add_target(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Target>), ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let req: NewTarget = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a target: {e}")))?;
    let target = match (req.pid, req.spawn) {
        (Some(pid), None) => state.core.ask(|reply| Command::Attach(pid, reply)).await?,
        (None, Some(argv)) if !argv.is_empty() => {
            state.core.ask(|reply| Command::Spawn(argv, reply)).await?
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

/// Lets a target go: the core detaches, and the process runs on untouched.
#[utoipa::path(delete, path = "/api/targets/{id}",
    params(("id" = i64, Path, description = "The target's id")),
    responses(
        (status = 204, description = "Detached and removed"),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 422, description = "The core could not detach", body = ErrorBody),
        (status = 503, description = "The connection to wprobe-core is closed",
            body = ErrorBody)))]
pub async fn delete_target(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = target_id(id)?;
    if state.core.ask(|reply| Command::Remove(id, reply)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no target with id {id}")))
    }
}
