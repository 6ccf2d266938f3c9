//! What a target's code looks like, for choosing where to probe: its
//! functions, a function's instructions with the engine's verdict on each,
//! and the dry run of a spec (`POST /api/probes?dry_run=true`).
//!
//! The service computes these itself, with the engine's own resolution
//! code (`wprobe_core::symbols::browse`), from /proc/PID/maps and the ELF
//! files — never from the target's memory, which holds breakpoints, and
//! without a round trip to the core: the answers need no privilege beyond
//! reading the target's maps, and they are the ones `AddProbe` would give.

use std::sync::Mutex;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wprobe_core::spec::ProbeSpec;
use wprobe_core::symbols::browse::{BrowseError, Browser, CheckedPlacement, FunctionInfo};
use wprobe_core::symbols::SymbolError;

use super::error::{ApiError, ErrorBody};
use super::targets;
use super::AppState;

/// The most functions one answer lists.
const MAX_LIMIT: usize = 5000;
const DEFAULT_LIMIT: usize = 200;
/// The most instructions one answer decodes.
const MAX_COUNT: usize = 512;
const DEFAULT_COUNT: usize = 32;

/// The parsed files, kept between requests: every answer reads every file
/// the target maps, and a large program maps hundreds. Emptied when it
/// holds more than [`MAX_CACHED_FILES`], since each keeps its bytes.
// Process-wide for now; its place is `AppState` (see the report to the lead).
static BROWSER: Mutex<Option<Browser>> = Mutex::new(None);
const MAX_CACHED_FILES: usize = 64;

/// Runs `f` with the shared [`Browser`]; blocking. The lock is held only
/// to take the browser and to put it back, never across the work: a
/// request that finds it taken works with a fresh one (no cache) rather
/// than waiting for another request's work.
fn with_browser<T>(f: impl FnOnce(&mut Browser) -> T) -> T {
    let taken = BROWSER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut browser = taken
        .filter(|b| b.cached_files() <= MAX_CACHED_FILES)
        .unwrap_or_default();
    let r = f(&mut browser);
    let mut slot = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(browser);
    }
    r
}

/// The longest probe spec, symbol name or symbol query accepted, in bytes:
/// resolving a name and suggesting others costs work in proportion to its
/// length, in the service and in the core.
/// Counted in characters, as the OpenAPI document's `maxLength` counts
/// them (4096 characters are at most 16 KiB, the core's own bound).
pub const MAX_SPEC_CHARS: usize = 4096;

/// Refuses a spec or name (`what`) that is too long (422, naming the
/// limit) or holds a NUL byte (400), before any work is done on it.
pub fn check_text(what: &str, text: &str) -> Result<(), ApiError> {
    // Bytes bound characters: the count is only taken when it may matter.
    if text.len() > MAX_SPEC_CHARS && text.chars().count() > MAX_SPEC_CHARS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the {what} is {} characters, more than the limit of {MAX_SPEC_CHARS} \
                 characters: no probe spec or symbol name is that long",
                text.chars().count()
            ),
        ));
    }
    if let Some(at) = text.find('\0') {
        return Err(ApiError::bad_request(format!(
            "the {what} holds a NUL byte (at byte {at}): specs and names are text without NULs"
        )));
    }
    Ok(())
}

/// The query of `GET /api/targets/{id}/symbols`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SymbolsQuery {
    /// A glob (`mall*`, `str?cmp`) over the raw and demangled names, or
    /// else a case-insensitive substring of them; every function when
    /// absent.
    #[param(max_length = 4096)]
    pub q: Option<String>,
    /// At most this many (1 to 5000; default 200).
    #[param(minimum = 1, maximum = 5000)]
    pub limit: Option<usize>,
}

/// A function of a target.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionSymbol {
    /// The name as the symbol table spells it.
    pub name: String,
    /// The readable name of a C++ or Rust symbol.
    pub demangled: Option<String>,
    /// Where it is in the process.
    pub address: u64,
    /// Where it is in its file (as `objdump` shows it).
    pub file_address: u64,
    /// Its size in bytes; 0 when the symbol table gives none.
    pub size: u64,
    /// Its file, as /proc/PID/maps shows the path.
    pub module: String,
    /// A GNU indirect function (libc's `memcpy`, `strlen`): the address is
    /// the resolver the dynamic linker runs once, not the code each call
    /// runs.
    pub ifunc: bool,
}

impl From<FunctionInfo> for FunctionSymbol {
    fn from(f: FunctionInfo) -> FunctionSymbol {
        FunctionSymbol {
            name: f.name,
            demangled: f.demangled,
            address: f.address,
            file_address: f.file_address,
            size: f.size,
            module: f.module,
            ifunc: f.ifunc,
        }
    }
}

/// The query of `GET /api/targets/{id}/disasm`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DisasmQuery {
    /// The function as a spec names it: `main`, `libc:malloc`,
    /// `/usr/bin/bash:readline`. Required.
    #[param(required = true, min_length = 1, max_length = 4096)]
    pub symbol: Option<String>,
    /// How many instructions from its entry (1 to 512; default 32).
    #[param(minimum = 1, maximum = 512)]
    pub count: Option<usize>,
}

/// The first instructions of a function.
#[derive(Debug, Serialize, ToSchema)]
pub struct Disassembly {
    /// The function's name (demangled for C++ and Rust).
    pub symbol: String,
    /// Its file, as /proc/PID/maps shows the path.
    pub module: String,
    /// Where it is in the process.
    pub address: u64,
    /// Where it is in its file.
    pub file_address: u64,
    /// Its size in bytes; 0 when the symbol table gives none.
    pub size: u64,
    /// Up to `count`, stopping at the function's end.
    pub instructions: Vec<DisasmInstruction>,
}

/// One instruction, and whether a probe may go on it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DisasmInstruction {
    /// From the function's entry; a probe spec names it `FUNCTION+OFFSET`.
    pub offset: u64,
    /// In the process.
    pub address: u64,
    /// The file's bytes, hex, space-separated (`48 89 e5`).
    pub bytes: String,
    /// Intel syntax.
    pub text: String,
    /// Whether the engine accepts a probe here.
    pub probe: bool,
    /// When it does: "simulate", "boost" (run out of line, then a jump
    /// back) or "out-of-line" (run out of line, then a stop).
    pub decision: Option<String>,
    /// When it does not: the engine's refusal, word for word.
    pub reason: Option<String>,
}

/// One place a dry run found, in one process.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckedPlacementJson {
    pub pid: i32,
    /// The probed address; absent while the module is not mapped.
    pub address: Option<u64>,
    /// `MODULE:function+0x12`, as an armed probe reports it; the module
    /// the spec names while pending.
    pub location: String,
    /// The probed instruction, in Intel syntax.
    pub instruction: Option<String>,
    /// "simulate", "boost", "out-of-line", or "pending": the module is not
    /// mapped yet, and the probe is armed when it is.
    pub decision: String,
    /// Why it is pending, or a warning the engine gives when it arms it.
    pub note: Option<String>,
}

impl From<CheckedPlacement> for CheckedPlacementJson {
    fn from(p: CheckedPlacement) -> CheckedPlacementJson {
        CheckedPlacementJson {
            pid: p.pid,
            address: p.address,
            location: p.location,
            instruction: p.instruction,
            decision: p.decision.to_string(),
            note: p.note,
        }
    }
}

/// The functions of a running target: its executable's and those of every
/// library it has mapped. Exact matches come first, then the executable's
/// functions, then the rest by name; aliases at one address are listed
/// once.
#[utoipa::path(get, path = "/api/targets/{id}/symbols",
    params(("id" = i64, Path, description = "The target's id"), SymbolsQuery),
    responses(
        (status = 200, description = "The functions", body = Vec<FunctionSymbol>),
        (status = 400, description = "The id is not a number, or a bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 409, description = "The target is not running", body = ErrorBody),
        (status = 422, description = "`q` is longer than 4096 characters", body = ErrorBody)))]
pub async fn symbols(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<SymbolsQuery>, QueryRejection>,
) -> Result<Json<Vec<FunctionSymbol>>, ApiError> {
    let id = target_id(id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = in_range("limit", query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let q = query.q.unwrap_or_default();
    check_text("query `q`", &q)?;
    let pid = running_pid(&state, id)?;
    tokio::task::spawn_blocking(move || with_browser(|b| b.functions(pid, &q, limit)))
        .await
        .map_err(|e| ApiError::internal(format!("listing the functions of pid {pid}: {e}")))?
        .map(|found| Json(found.into_iter().map(FunctionSymbol::from).collect()))
        .map_err(|e| symbol_error(pid, e))
}

/// The first instructions of a function of a running target, decoded from
/// its file, each with the engine's verdict on a probe there.
#[utoipa::path(get, path = "/api/targets/{id}/disasm",
    params(("id" = i64, Path, description = "The target's id"), DisasmQuery),
    responses(
        (status = 200, description = "The instructions", body = Disassembly),
        (status = 400, description = "The id is not a number, a bad query, or a name that \
            does not say which function or module", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such target, module or function", body = ErrorBody),
        (status = 409, description = "The target is not running", body = ErrorBody),
        (status = 422, description = "The function has no code in its file, or `symbol` is \
            longer than 4096 characters", body = ErrorBody)))]
pub async fn disasm(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<DisasmQuery>, QueryRejection>,
) -> Result<Json<Disassembly>, ApiError> {
    let id = target_id(id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let count = in_range("count", query.count, DEFAULT_COUNT, MAX_COUNT)?;
    let symbol = query.symbol.ok_or_else(|| {
        ApiError::bad_request("give the function: `?symbol=NAME`, such as `main` or `libc:malloc`")
    })?;
    check_text("symbol", &symbol)?;
    let pid = running_pid(&state, id)?;
    let d = tokio::task::spawn_blocking(move || with_browser(|b| b.disasm(pid, &symbol, count)))
        .await
        .map_err(|e| ApiError::internal(format!("disassembling in pid {pid}: {e}")))?
        .map_err(|e| match e {
            BrowseError::Symbol(e) => symbol_error(pid, e),
            e @ BrowseError::BadName { .. } => ApiError::bad_request(e.to_string()),
            e @ BrowseError::NoCode { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
        })?;
    Ok(Json(Disassembly {
        symbol: d.symbol,
        module: d.module,
        address: d.address,
        file_address: d.file_address,
        size: d.size,
        instructions: d
            .instructions
            .into_iter()
            .map(|i| {
                let (decision, reason) = match i.verdict {
                    Ok(d) => (Some(d.to_string()), None),
                    Err(r) => (None, Some(r)),
                };
                DisasmInstruction {
                    offset: i.offset,
                    address: i.address,
                    bytes: hex(&i.bytes),
                    text: i.text,
                    probe: decision.is_some(),
                    decision,
                    reason,
                }
            })
            .collect(),
    }))
}

/// The dry run of `spec` in process `pid`: where the engine would put it
/// and how it would run it, or its refusal (422, word for word as the
/// engine gives it); 400 when the spec does not parse. Blocking: call it
/// off the async threads.
pub fn check(pid: i32, spec: &str) -> Result<Vec<CheckedPlacementJson>, ApiError> {
    check_text("spec", spec)?;
    let spec = ProbeSpec::parse(spec).map_err(|e| ApiError::bad_request(e.to_string()))?;
    with_browser(|b| b.check_spec(pid, &spec))
        .map(|placed| placed.into_iter().map(CheckedPlacementJson::from).collect())
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))
}

fn target_id(id: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("target id `{id}` is not a number")))
}

/// The pid of target `id`, which must be running: the answers are read
/// from the live process's maps. The start time guards against a pid the
/// system gave to another process since.
fn running_pid(state: &AppState, id: i64) -> Result<i32, ApiError> {
    let t = state
        .store()
        .target(id)?
        .ok_or_else(|| ApiError::not_found(format!("no target with id {id}")))?;
    if t.state != "running" || targets::start_time(t.pid) != Some(t.start_time) {
        let state = if t.state == "running" {
            "exited"
        } else {
            &t.state
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "target {id} (pid {}, {}) is {state}: its code is read from the running \
                 process; attach or spawn it again (POST /api/targets)",
                t.pid, t.cmdline
            ),
        ));
    }
    Ok(t.pid)
}

/// A numeric query parameter: its default when absent, 400 outside 1..=max.
fn in_range(name: &str, v: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "`{name}` is {n}: give 1 to {max}"
        ))),
    }
}

/// The status of a symbol error: what the user named is not there (404),
/// names several modules (400), or the process went away (409).
fn symbol_error(pid: i32, e: SymbolError) -> ApiError {
    match &e {
        SymbolError::UnknownSymbol { .. } | SymbolError::NoModule { .. } => {
            ApiError::not_found(e.to_string())
        }
        SymbolError::AmbiguousModule { .. } => ApiError::bad_request(e.to_string()),
        SymbolError::NoProcess { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        SymbolError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{e}: the service may not read process {pid}'s files; run it as the \
                     process's user"
                ),
            )
        }
        _ => ApiError::internal(e.to_string()),
    }
}

/// Space-separated lower-case hex bytes, as the engine prints them.
fn hex(bytes: &[u8]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks a numeric query parameter: the value, or the error's text.
    fn check(v: Option<usize>, expect: Result<usize, &str>) {
        let got = in_range("limit", v, 200, 5000).map_err(|e| e.message);
        assert_eq!(got, expect.map_err(str::to_string));
    }

    #[test]
    fn limits() {
        check(None, Ok(200));
        check(Some(1), Ok(1));
        check(Some(5000), Ok(5000));
        check(Some(0), Err("`limit` is 0: give 1 to 5000"));
        check(Some(5001), Err("`limit` is 5001: give 1 to 5000"));
    }

    /// A request's browse work never waits for another's: while one call
    /// holds the browser (its work blocked here), a second one runs to
    /// its end. With the lock held across the work it would wait for
    /// ever; the bound below turns that into a failure.
    #[test]
    fn browse_work_never_waits_for_another_requests() {
        use std::sync::mpsc;
        use std::time::Duration;
        let (inside_tx, inside_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let first = std::thread::spawn(move || {
            with_browser(|_| {
                inside_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
        });
        inside_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || done_tx.send(with_browser(|_| 42)).unwrap());
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(60)),
            Ok(42),
            "the second request waited for the first one's work"
        );
        release_tx.send(()).unwrap();
        first.join().unwrap();
    }

    /// The dry run's statuses, in this very process (it maps libc).
    #[test]
    fn dry_runs() {
        let pid = std::process::id() as i32;
        let placed = super::check(pid, "uprobe:libc:malloc").expect("malloc is probeable");
        assert_eq!(placed.len(), 1);
        assert!(placed[0].address.is_some() && placed[0].location.ends_with(":malloc"));
        let e = super::check(pid, "uprobe:libc:mallocc").expect_err("no such function");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            e.message
                .starts_with("uprobe:libc:mallocc: no symbol `mallocc`"),
            "{}",
            e.message
        );
        let e = super::check(pid, "kprobe:libc:malloc").expect_err("not a spec");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    /// The handlers are axum handlers of the service's state (their futures
    /// are `Send`), ready for the route table.
    #[test]
    fn routable() {
        use axum::routing::get;
        let _: axum::Router<AppState> = axum::Router::new()
            .route("/api/targets/{id}/symbols", get(symbols))
            .route("/api/targets/{id}/disasm", get(disasm));
    }

    /// The routes' descriptions are complete before the API document
    /// lists them: parameters and the schemas of their bodies.
    #[test]
    fn described() {
        use utoipa::OpenApi;
        #[derive(OpenApi)]
        #[openapi(paths(symbols, disasm))]
        struct Doc;
        let doc = serde_json::to_value(Doc::openapi()).expect("json");
        let symbols = &doc["paths"]["/api/targets/{id}/symbols"]["get"];
        let names: Vec<&str> = symbols["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["id", "q", "limit"]);
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "FunctionSymbol",
            "Disassembly",
            "DisasmInstruction",
            "ErrorBody",
        ] {
            assert!(schemas.contains_key(name), "{name} in {schemas:?}");
        }
    }
}
