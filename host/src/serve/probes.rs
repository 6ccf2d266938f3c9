//! `/api/probes`: creating (one, or a batch that is all or nothing),
//! listing, enabling and disabling, changing plugins, removing; and the
//! dry run, which resolves and checks a spec without arming anything.
//!
//! Everything a request could fail on is checked before anything changes
//! (target, spec syntax, plugins and their configurations, the cap); the
//! rest (the core refusing a spec) is undone when it fails, so a failed
//! request leaves no probe, no row and no byte behind.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wprobe_core::spec::ProbeSpec;

use super::error::{json_body, ApiError, ErrorBody};
use super::store::{ProbePlugin, ProbeRow};
use super::targets::{Attached, Cmd, NewProbe, Placement, ProbeLive, Targets};
use super::AppState;

/// The body of `POST /api/probes`, and each element of a batch.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProbeBody {
    /// The target's id.
    pub target: i64,
    /// The probe spec, e.g. `uprobe:libc:malloc size=%rdi:u64` or
    /// `uretprobe:/usr/bin/prog:parse`: at most 4096 characters, no NUL.
    #[schema(max_length = 4096, pattern = "^[^\\x00]*$")]
    pub spec: String,
    /// Plugins run on each of its events, in this order.
    #[serde(default)]
    pub plugins: Vec<ProbePlugin>,
    /// Armed at once (default), or created disabled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whether plugins may change registers or the return value. Such a
    /// probe is synchronous: the hit thread waits for its plugins (at most
    /// 50 ms).
    #[serde(default)]
    pub allow_mutation: bool,
}

fn yes() -> bool {
    true
}

/// The body of `POST /api/probes/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    #[schema(min_items = 1)]
    pub probes: Vec<NewProbeBody>,
}

/// The body of `PATCH /api/probes/{id}`: what to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbePatch {
    #[schema(nullable = false)]
    pub enabled: Option<bool>,
    /// The new list of plugins (replaces the old one; their maps start
    /// empty).
    #[schema(nullable = false)]
    pub plugins: Option<Vec<ProbePlugin>>,
}

/// `?dry_run=true`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DryRunQuery {
    /// Resolve and check the spec, arm nothing, store nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `GET /api/probes?target=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProbeQuery {
    /// Only this target's probes.
    pub target: Option<i64>,
}

/// A plugin of a probe, with its counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProbePluginView {
    pub plugin: i64,
    pub name: String,
    /// The version running.
    pub version: i64,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Handler calls so far.
    pub calls: u64,
    /// Calls that trapped, ran over their deadline, or were refused.
    pub faults: u64,
    pub last_fault: Option<String>,
    /// Why it is quarantined (not called any more), when it is.
    pub quarantined: Option<String>,
    /// CPU time spent in its handlers, nanoseconds.
    pub busy_ns: u64,
    /// Map updates refused because its maps held as many keys as they may.
    pub map_updates_refused: u64,
}

/// A probe.
#[derive(Debug, Serialize, ToSchema)]
pub struct Probe {
    pub id: i64,
    pub target: i64,
    pub spec: String,
    pub enabled: bool,
    pub allow_mutation: bool,
    /// "armed", "pending" (its module is not mapped yet), "disabled",
    /// "refused", "gone" (its code was unmapped), or "inactive" (its
    /// target is not traced).
    pub state: String,
    /// Why it is not armed, when it is not.
    pub reason: Option<String>,
    pub hits: u64,
    /// Hits whose handlers could not run (kprobes' nmissed).
    pub nmissed: u64,
    /// Events dropped because the core's queue was full.
    pub dropped: u64,
    /// Where it is armed.
    pub placements: Vec<Placement>,
    pub plugins: Vec<ProbePluginView>,
    /// When it was created, seconds since the Unix epoch.
    pub created: i64,
}

/// What a dry run found: where each spec would go. Nothing was armed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRun {
    pub dry_run: bool,
    pub probes: Vec<DryRunProbe>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunProbe {
    pub target: i64,
    pub spec: String,
    pub placements: Vec<super::symbols::CheckedPlacementJson>,
}

pub fn plugin_view(a: &Attached) -> ProbePluginView {
    let s = a.att.stats();
    ProbePluginView {
        plugin: a.plugin,
        name: a.name.clone(),
        version: a.version.load(Ordering::Relaxed),
        config: a.config.clone(),
        calls: s.calls,
        faults: s.faults,
        last_fault: s.last_fault,
        quarantined: s.quarantined,
        busy_ns: s.busy_ns,
        map_updates_refused: s.map_updates_refused,
    }
}

/// A stored probe with what is live of it.
fn view(row: ProbeRow, live: Option<&ProbeLive>) -> Probe {
    let (state, reason) = match live {
        None => (
            "inactive".to_string(),
            Some("its target is not traced".to_string()),
        ),
        Some(l) if !row.enabled && l.state != "inactive" => ("disabled".to_string(), None),
        Some(l) => (l.state.to_string(), l.reason.clone()),
    };
    let plugins = match live {
        Some(l) if !l.plugins.is_empty() => l.plugins.iter().map(|a| plugin_view(a)).collect(),
        // Not attached (its target is not traced): the stored list.
        _ => row
            .plugins
            .iter()
            .map(|pp| ProbePluginView {
                plugin: pp.plugin,
                name: String::new(),
                version: 0,
                config: pp.config.clone(),
                calls: 0,
                faults: 0,
                last_fault: None,
                quarantined: None,
                busy_ns: 0,
                map_updates_refused: 0,
            })
            .collect(),
    };
    Probe {
        id: row.id,
        target: row.target,
        spec: row.spec,
        enabled: row.enabled,
        allow_mutation: row.allow_mutation,
        state,
        reason,
        hits: live.map_or(0, |l| l.hits),
        nmissed: live.map_or(0, |l| l.nmissed),
        dropped: live.map_or(0, |l| l.dropped),
        placements: live.map_or_else(Vec::new, |l| l.placements.clone()),
        plugins,
        created: row.created,
    }
}

fn views(targets: &Targets, rows: Vec<ProbeRow>) -> Vec<Probe> {
    let live = targets.probes.lock().unwrap_or_else(|e| e.into_inner());
    rows.into_iter()
        .map(|r| {
            let l = live.get(&r.id);
            view(r, l)
        })
        .collect()
}

/// Runs `f` where it may block (the store, the core, plugin compiles).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("{e}")))?
}

/// Checks one new probe; the pid of its target.
fn check_new(state: &AppState, p: &NewProbeBody) -> Result<i32, ApiError> {
    // What the request says alone first, before anything is looked up.
    super::symbols::check_text("spec", &p.spec)?;
    let target = state.store().target(p.target)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "there is no target with id {}: attach or spawn one first (POST /api/targets)",
                p.target
            ),
        )
    })?;
    if !state.targets.is_live(p.target) {
        return Err(state.targets.why_not_live(target.id));
    }
    state.targets.check_attachments(p.plugins.len())?;
    ProbeSpec::parse(&p.spec).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for pp in &p.plugins {
        if state.store().latest_module(pp.plugin)?.is_none() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "there is no plugin with id {}: upload it first (POST /api/plugins)",
                    pp.plugin
                ),
            ));
        }
    }
    Ok(target.pid)
}

fn at(batch: bool, i: usize, e: ApiError) -> ApiError {
    if batch {
        ApiError::new(e.status, format!("probes[{i}]: {}", e.message))
    } else {
        e
    }
}

/// Creates `list`, all or nothing; the ids in order.
fn create(
    state: &AppState,
    list: Vec<NewProbeBody>,
    batch: bool,
    dry_run: bool,
) -> Result<Created, ApiError> {
    if list.is_empty() {
        return Err(ApiError::bad_request(
            "`probes` is empty: give at least one",
        ));
    }
    let mut pids = Vec::new();
    for (i, p) in list.iter().enumerate() {
        pids.push(check_new(state, p).map_err(|e| at(batch, i, e))?);
    }
    // The cap, counting what this request adds.
    let mut adding: BTreeMap<i64, usize> = BTreeMap::new();
    for p in &list {
        *adding.entry(p.target).or_default() += 1;
    }
    for (&target, &n) in &adding {
        // Early, before plugins are instantiated; the target's thread
        // checks again as it adds them (concurrent requests).
        let have = state.store().probe_count(target)?;
        super::targets::cap_check(target, have, n, state.targets.max_probes)?;
    }
    if dry_run {
        let mut probes = Vec::new();
        for (i, (p, pid)) in list.iter().zip(&pids).enumerate() {
            let placements = super::symbols::check(*pid, &p.spec).map_err(|e| at(batch, i, e))?;
            probes.push(DryRunProbe {
                target: p.target,
                spec: p.spec.clone(),
                placements,
            });
        }
        return Ok(Created::DryRun(DryRun {
            dry_run: true,
            probes,
        }));
    }
    // Plugins attached (and their configurations accepted) before any
    // probe is armed.
    let mut groups: BTreeMap<i64, Vec<(usize, NewProbe)>> = BTreeMap::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for (i, p) in list.into_iter().enumerate() {
        let plugins = state
            .targets
            .attach_plugins(&p.plugins)
            .map_err(|e| at(batch, i, e))?;
        let row = ProbeRow {
            id: 0,
            target: p.target,
            spec: p.spec,
            enabled: p.enabled,
            allow_mutation: p.allow_mutation,
            plugins: p.plugins,
            created: now,
        };
        groups
            .entry(row.target)
            .or_default()
            .push((i, NewProbe { row, plugins }));
    }
    let mut made: Vec<(usize, i64, i64)> = Vec::new(); // (index, target, id)
    for (target, group) in groups {
        let (index, probes): (Vec<usize>, Vec<NewProbe>) = group.into_iter().unzip();
        let answer = state
            .targets
            .ask(target, |reply| Cmd::AddProbes(probes, reply))
            .and_then(|r| r.map_err(|(k, e)| at(batch, index[k], e)));
        match answer {
            Ok(ids) => made.extend(index.iter().zip(ids).map(|(&i, id)| (i, target, id))),
            Err(e) => {
                for &(_, t, id) in &made {
                    let _ = state.targets.ask(t, |reply| Cmd::Remove(id, reply));
                }
                return Err(e);
            }
        }
    }
    made.sort();
    let mut rows = Vec::new();
    for (_, _, id) in made {
        if let Some(r) = state.store().probe(id)? {
            rows.push(r);
        }
    }
    Ok(Created::Probes(views(&state.targets, rows)))
}

/// What a create request made: probes, or, for a dry run, where they
/// would go.
enum Created {
    Probes(Vec<Probe>),
    DryRun(DryRun),
}

/// 201 with the probe (`one`) or the list; 200 with a dry run.
fn created(r: Created, one: bool) -> Response {
    match r {
        Created::Probes(mut probes) if one => {
            (StatusCode::CREATED, Json(probes.remove(0))).into_response()
        }
        Created::Probes(probes) => (StatusCode::CREATED, Json(probes)).into_response(),
        Created::DryRun(dry) => (StatusCode::OK, Json(dry)).into_response(),
    }
}

/// Creates a probe on a target, with its plugins. With `?dry_run=true`,
/// only resolves and checks the spec in the target (200, a [`DryRun`]).
#[utoipa::path(post, path = "/api/probes", params(DryRunQuery),
    request_body(content = NewProbeBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (and armed unless `enabled` is false)", body = Probe),
        (status = 200, description = "Dry run: where it would go", body = DryRun),
        (status = 400, description = "Bad JSON or a spec that does not parse", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "The target is not traced", body = ErrorBody),
        (status = 413, description = "The body is over --max-body", body = ErrorBody),
        (status = 422, description = "Unknown target or plugin, a configuration the plugin \
            refuses, a spec the engine refuses, or the probes-per-target cap", body = ErrorBody),
        (status = 503, description = "The connection to wprobe-core is closed",
            body = ErrorBody),
        (status = 507, description = "The data directory's disk is full: nothing was \
            stored", body = ErrorBody)))]
pub async fn create_probe(
    State(state): State<AppState>,
    query: Result<Query<DryRunQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let p: NewProbeBody = json_body(body, "a probe", state.max_body)?;
    let r = blocking(move || create(&state, vec![p], false, q.dry_run)).await?;
    Ok(created(r, true))
}

/// Creates several probes at once: all of them, or, when any fails, none
/// (the error names the first that failed as `probes[i]`).
#[utoipa::path(post, path = "/api/probes/batch", params(DryRunQuery),
    request_body(content = BatchBody, content_type = "application/json"),
    responses(
        (status = 201, description = "All created", body = Vec<Probe>),
        (status = 200, description = "Dry run", body = DryRun),
        (status = 400, description = "Bad JSON, an empty list, or a spec that does not parse",
            body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "A target is not traced", body = ErrorBody),
        (status = 413, description = "The body is over --max-body", body = ErrorBody),
        (status = 422, description = "As for one probe", body = ErrorBody),
        (status = 503, description = "The connection to wprobe-core is closed",
            body = ErrorBody),
        (status = 507, description = "The data directory's disk is full: nothing was \
            stored", body = ErrorBody)))]
pub async fn create_batch(
    State(state): State<AppState>,
    query: Result<Query<DryRunQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let b: BatchBody = json_body(body, "a batch of probes", state.max_body)?;
    let r = blocking(move || create(&state, b.probes, true, q.dry_run)).await?;
    Ok(created(r, false))
}

/// Every probe, with its state, counters and plugins.
#[utoipa::path(get, path = "/api/probes", params(ProbeQuery),
    responses(
        (status = 200, description = "The probes, by id", body = Vec<Probe>),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn list_probes(
    State(state): State<AppState>,
    query: Result<Query<ProbeQuery>, QueryRejection>,
) -> Result<Json<Vec<Probe>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    blocking(move || {
        state.targets.refresh_counters();
        let rows = state.store().probes(q.target)?;
        Ok(Json(views(&state.targets, rows)))
    })
    .await
}

fn probe_id(id: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("probe id `{id}` is not a number")))
}

fn stored(state: &AppState, id: i64) -> Result<ProbeRow, ApiError> {
    state
        .store()
        .probe(id)?
        .ok_or_else(|| ApiError::not_found(format!("no probe with id {id}")))
}

fn one(state: &AppState, id: i64) -> Result<Json<Probe>, ApiError> {
    let row = stored(state, id)?;
    Ok(Json(views(&state.targets, vec![row]).remove(0)))
}

/// One probe.
#[utoipa::path(get, path = "/api/probes/{id}",
    params(("id" = i64, Path, description = "The probe's id")),
    responses(
        (status = 200, description = "The probe", body = Probe),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such probe", body = ErrorBody)))]
pub async fn get_probe(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Probe>, ApiError> {
    let id = probe_id(id)?;
    blocking(move || {
        let target = stored(&state, id)?.target;
        if state.targets.is_live(target) {
            let _ = state.targets.ask(target, Cmd::Counters);
        }
        one(&state, id)
    })
    .await
}

/// Enables or disables a probe, or changes its plugins.
#[utoipa::path(patch, path = "/api/probes/{id}",
    params(("id" = i64, Path, description = "The probe's id")),
    request_body(content = ProbePatch, content_type = "application/json"),
    responses(
        (status = 200, description = "Changed", body = Probe),
        (status = 400, description = "Bad JSON, or nothing to change", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such probe", body = ErrorBody),
        (status = 409, description = "Its target is not traced", body = ErrorBody),
        (status = 413, description = "The body is over --max-body", body = ErrorBody),
        (status = 422, description = "Unknown plugin, or a configuration it refuses",
            body = ErrorBody),
        (status = 507, description = "The data directory's disk is full: nothing was \
            stored", body = ErrorBody)))]
pub async fn patch_probe(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Probe>, ApiError> {
    let id = probe_id(id)?;
    let patch: ProbePatch = json_body(body, "a probe change", state.max_body)?;
    if patch.enabled.is_none() && patch.plugins.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give `enabled` and/or `plugins`",
        ));
    }
    blocking(move || {
        let row = stored(&state, id)?;
        let t = row.target;
        if !state.targets.is_live(t) {
            let e = state.targets.why_not_live(t);
            return Err(ApiError::new(
                e.status,
                format!("probe {id} cannot change now: {}", e.message),
            ));
        }
        let old: Option<Vec<Arc<Attached>>> = state
            .targets
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(|l| l.plugins.clone());
        if let Some(plugins) = &patch.plugins {
            let attached = state.targets.attach_plugins(plugins)?;
            let rows = plugins.clone();
            state
                .targets
                .ask(t, |reply| Cmd::SetPlugins(id, rows, attached, reply))??;
        }
        if let Some(on) = patch.enabled {
            let r = state
                .targets
                .ask(t, |reply| Cmd::SetEnabled(id, on, reply))
                .and_then(|r| r);
            if let Err(e) = r {
                // Put the plugins back: a failed request changes nothing.
                if let (Some(_), Some(old)) = (&patch.plugins, old) {
                    let rows = row.plugins.clone();
                    let _ = state
                        .targets
                        .ask(t, |reply| Cmd::SetPlugins(id, rows, old, reply));
                }
                return Err(e);
            }
        }
        one(&state, id)
    })
    .await
}

/// Removes a probe: disarmed, its bytes restored, its definition and
/// plugins gone.
#[utoipa::path(delete, path = "/api/probes/{id}",
    params(("id" = i64, Path, description = "The probe's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such probe", body = ErrorBody),
        (status = 503, description = "The connection to wprobe-core is closed",
            body = ErrorBody),
        (status = 507, description = "The data directory's disk is full: nothing was \
            stored", body = ErrorBody)))]
pub async fn delete_probe(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = probe_id(id)?;
    blocking(move || {
        // Bound first: the store's lock must not live through the match.
        let found = state.store().probe(id);
        let row = match found {
            Ok(Some(row)) => row,
            Ok(None) => return Err(ApiError::not_found(format!("no probe with id {id}"))),
            // A row that cannot be read was never armed (start-up skips
            // it): the row is all there is to delete.
            Err(_) => {
                state.store().delete_probe(id)?;
                return Ok(StatusCode::NO_CONTENT);
            }
        };
        match state
            .targets
            .ask(row.target, |reply| Cmd::Remove(id, reply))
        {
            Ok(r) => r?,
            // A thread that is still there but busy: the probe may be
            // armed, so its row stays.
            Err(e) if state.targets.is_live(row.target) => return Err(e),
            // Its target is not traced: only the definition is left.
            Err(_) => {
                state.store().delete_probe(id)?;
                state
                    .targets
                    .probes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            }
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
