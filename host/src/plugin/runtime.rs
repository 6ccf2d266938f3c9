//! The plugin runtime: wasmtime with the sandbox and limits of
//! docs/plugin-abi.md, the `wprobe` host functions, faults and quarantine,
//! and atomic replacement.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmtime::{
    AsContextMut, Caller, Engine, ExternType, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc, UpdateDeadline, ValType,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};
use wprobe_core::proto::{Event, EventKind};

use super::abi::{self, FLAG_LIVE_READS, FLAG_MUTATION, FLAG_SYNC};
use super::compile::{self, Compiler};
use super::manifest::{self, Manifest};
use super::maps::{Key, MapError, Maps, Op};

/// The bounds of every plugin instance (docs/plugin-abi.md, "Sandbox and
/// limits").
#[derive(Debug, Clone)]
pub struct Limits {
    pub module_bytes: usize,
    /// Bounds on what is handed to the compiler, checked first (see
    /// `prescan`): compiling costs memory well beyond the module's size
    /// in deeply nested code.
    pub compile: CompileLimits,
    pub memory_bytes: usize,
    pub call_deadline: Duration,
    /// The wall-clock bound of one call (never less than `call_deadline`):
    /// CPU time alone does not see a call that waits.
    pub wall_deadline: Duration,
    pub stack_bytes: usize,
    pub max_keys: usize,
    pub emits_per_sec: u32,
    pub quarantine_after: u32,
    /// What stdout and stderr may write to the log in all.
    pub output_bytes: usize,
    pub log_lines: usize,
    pub call_data_calls: usize,
    /// Test-only fault injection: every call of the host function
    /// `wprobe.NAME` panics, as a bug in it would. `wprobe serve` sets it
    /// from [`FAULT_INJECTION`] in its environment, read once at start.
    pub host_panic: Option<String>,
}

/// The environment variable that makes `wprobe serve` inject a panic in a
/// host function (its value names it, e.g. `log`): the tests check that
/// such a bug faults the plugin, and the target's state stays true.
/// Without it (or empty), nothing is injected.
pub const FAULT_INJECTION: &str = "WPROBE_HOST_FAULT_INJECTION";

/// What a module may hold to be compiled (docs/plugin-abi.md, "Sandbox and
/// limits").
#[derive(Debug, Clone, Copy)]
pub struct CompileLimits {
    pub functions: u32,
    /// Bytes of one function's body.
    pub function_bytes: usize,
    /// Locals of one function (its parameters left out).
    pub locals: u64,
    /// Blocks (`block`, `loop`, `if`, `try`) open at once in one function.
    pub nesting: u32,
    /// The memory (`RLIMIT_DATA`) of the child process that compiles a
    /// module (see [`Compiler`]): what passes the pre-scan may still cost
    /// the compiler more than the service can spare.
    pub memory_bytes: u64,
    /// The CPU time (`RLIMIT_CPU`) of that child.
    pub cpu: Duration,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            functions: 50_000,
            function_bytes: 1 << 20,
            locals: 50_000,
            nesting: 1_000,
            memory_bytes: 512 << 20,
            cpu: Duration::from_secs(60),
        }
    }
}

/// Reads the code of a module without compiling it, and refuses one that
/// exceeds `limits`: fifty thousand nested blocks in 150 KB took the
/// compiler past 1 GiB. The message names the limit and the value.
fn prescan(bytes: &[u8], limits: &CompileLimits) -> Result<(), String> {
    use wasmparser::{Operator, Parser, Payload};
    let invalid = |e: wasmparser::BinaryReaderError| format!("not a valid WebAssembly module: {e}");
    let mut index = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::CodeSectionStart { count, .. } if count > limits.functions => {
                return Err(format!(
                    "the module has {count} functions; plugins may have at most {}",
                    limits.functions
                ));
            }
            Payload::CodeSectionEntry(body) => {
                let at = index;
                index += 1;
                let size = body.range().len();
                if size > limits.function_bytes {
                    return Err(format!(
                        "function {at} is {size} bytes; a plugin's functions may be at most {} bytes",
                        limits.function_bytes
                    ));
                }
                let mut locals = 0u64;
                for l in body.get_locals_reader().map_err(invalid)? {
                    locals = locals.saturating_add(u64::from(l.map_err(invalid)?.0));
                }
                if locals > limits.locals {
                    return Err(format!(
                        "function {at} has {locals} locals; a plugin's functions may have at most {}",
                        limits.locals
                    ));
                }
                let mut ops = body.get_operators_reader().map_err(invalid)?;
                let mut depth = 0u32;
                while !ops.eof() {
                    match ops.read().map_err(invalid)? {
                        Operator::Block { .. }
                        | Operator::Loop { .. }
                        | Operator::If { .. }
                        | Operator::Try { .. }
                        | Operator::TryTable { .. } => {
                            depth += 1;
                            if depth > limits.nesting {
                                return Err(format!(
                                    "function {at} nests blocks more than {} deep; plugins may \
                                     nest at most {} (the compiler's memory grows with the depth)",
                                    limits.nesting, limits.nesting
                                ));
                            }
                        }
                        Operator::End => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

impl Limits {
    /// The wall-clock bound in effect: `wall_deadline`, or the CPU-time
    /// bound when that is longer.
    pub fn wall(&self) -> Duration {
        self.wall_deadline.max(self.call_deadline)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            module_bytes: 8 << 20,
            compile: CompileLimits::default(),
            memory_bytes: 64 << 20,
            call_deadline: Duration::from_millis(5),
            wall_deadline: Duration::from_secs(1),
            stack_bytes: 512 << 10,
            max_keys: 10_000,
            emits_per_sec: 10_000,
            quarantine_after: 5,
            output_bytes: 1 << 20,
            log_lines: 1000,
            call_data_calls: 65_536,
            host_panic: None,
        }
    }
}

/// The error codes of the host functions.
mod code {
    pub const EFAULT_TARGET: i32 = -1;
    pub const EFAULT_PLUGIN: i32 = -2;
    pub const E2BIG: i32 = -3;
    pub const EINVAL: i32 = -4;
    pub const EPERM: i32 = -5;
    pub const ENOENT: i32 = -6;
    pub const ELIMIT: i32 = -7;
    pub const ESRCH: i32 = -8;
}

const MAX_READ: i32 = 65536;
const MAX_EMIT: i32 = 65536;
const MAX_CALL_DATA: i32 = 1024;
const MAX_NAME: i32 = 64;
const MAX_KEY: i32 = 256;
/// The epoch ticks every this long.
const TICK: Duration = Duration::from_millis(1);

/// The host functions of import module `wprobe`, with their types
/// (parameters, results), for the check at load.
const HOST_FUNCTIONS: &[(&str, &[ValType], &[ValType])] = &[
    (
        "read_memory",
        &[ValType::I64, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "read_string",
        &[ValType::I64, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    ("emit", &[ValType::I32, ValType::I32], &[ValType::I32]),
    (
        "map_update",
        &[
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I64,
        ],
        &[ValType::I32],
    ),
    (
        "map_lhist",
        &[
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I64,
            ValType::I64,
            ValType::I64,
            ValType::I64,
        ],
        &[ValType::I32],
    ),
    (
        "call_data_set",
        &[ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "call_data_get",
        &[ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "log",
        &[ValType::I32, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    ("now_ns", &[], &[ValType::I64]),
    (
        "set_register",
        &[ValType::I32, ValType::I64],
        &[ValType::I32],
    ),
    ("set_return", &[ValType::I64], &[ValType::I32]),
];

/// Reads the memory of traced processes for `read_memory`/`read_string`.
pub trait TargetMemory: Send + Sync {
    /// Fills as much of `buf` as is readable at `addr`; the count, or an
    /// ABI error code.
    fn read(&self, pid: i32, addr: u64, buf: &mut [u8]) -> Result<usize, i32>;
}

/// `process_vm_readv`: the host may read a process its user could trace.
pub struct ProcessMemory;

impl TargetMemory for ProcessMemory {
    fn read(&self, pid: i32, addr: u64, buf: &mut [u8]) -> Result<usize, i32> {
        if buf.is_empty() {
            return Ok(0);
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: one local iovec over `buf`, which we own and which is as
        // long as it says; the remote one is only read by the kernel.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ESRCH) => code::ESRCH,
                _ => code::EFAULT_TARGET,
            });
        }
        Ok(n as usize)
    }
}

/// A clock that stands still: WASI's clocks are not the plugin's (it has
/// `now_ns`).
struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The engine shared by every plugin, with its epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    pub limits: Limits,
    reader: Arc<dyn TargetMemory>,
    /// Private directories of plugins that ask for one: `<root>/<name>`.
    data_root: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    compiler: Compiler,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A validated, compiled plugin (one version of it).
pub struct Plugin {
    pub manifest: Manifest,
    module: Module,
    /// SHA-256 is the service's business; this is for logs: size in bytes.
    pub size: usize,
    pub handlers: Handlers,
}

/// Which handlers a plugin exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handlers {
    pub entry: bool,
    pub post: bool,
    pub ret: bool,
    pub init: bool,
}

/// What the host knows about the event besides its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallInfo {
    /// The thread waits for the handler.
    pub sync: bool,
    /// The probe allows mutation.
    pub mutation: bool,
    /// The probe is a return probe (entry events of it may keep per-call
    /// data).
    pub return_probe: bool,
}

/// What one handler call produced.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// The handler ran (it exists, the plugin is not quarantined).
    pub called: bool,
    pub records: Vec<Value>,
    /// Register changes, in the event's register order.
    pub set_regs: Vec<(usize, u64)>,
    pub set_return: Option<u64>,
    pub fault: Option<String>,
}

/// Counters of one attachment.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub calls: u64,
    pub faults: u64,
    pub consecutive_faults: u32,
    pub last_fault: Option<String>,
    pub quarantined: Option<String>,
    pub records: u64,
    pub records_dropped: u64,
    pub call_data_dropped: u64,
    /// Map updates refused (`-7`) because the plugin's maps held as many
    /// keys as they may.
    pub map_updates_refused: u64,
    pub busy_ns: u64,
}

/// What survives a plugin's replacement: maps, per-call data, the log, the
/// counters.
pub struct Shared {
    pub maps: Mutex<Maps>,
    call_data: Mutex<CallData>,
    pub log: Mutex<VecDeque<String>>,
    pub stats: Mutex<Stats>,
    emit_window: Mutex<(Instant, u32)>,
}

#[derive(Default)]
struct CallData {
    map: HashMap<(i32, i32, u64), Vec<u8>>,
    order: VecDeque<(i32, i32, u64)>,
}

/// The event being handled, as the host functions see it.
struct CallCtx {
    pid: i32,
    tid: i32,
    kind: EventKind,
    flags: u8,
    return_probe: bool,
    entry_time_ns: u64,
    records: Vec<Value>,
    read_after_hit: bool,
    set_regs: Vec<(usize, u64)>,
    set_return: Option<u64>,
}

/// A Store's data.
pub struct State {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    shared: Arc<Shared>,
    call: Option<CallCtx>,
    reader: Arc<dyn TargetMemory>,
    rt: Limits,
    may_mutate: bool,
    output: MemoryOutputPipe,
    /// The calling thread's CPU time at the first epoch tick of the call
    /// in progress (`None` until a call lasts that long).
    cpu_at_first_tick: Option<u64>,
    /// When the call in progress began, for the wall-clock bound.
    call_started: Instant,
    /// The call in progress was cut by the wall-clock bound.
    cut_by_wall: bool,
    /// The instance's exported memory, once known (looking it up by name
    /// at every host call was a tenth of a handler's cost).
    memory: Option<Memory>,
}

/// This thread's CPU time, nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Arms the deadline for one call: the next epoch tick runs the callback,
/// which measures the CPU time the call has used.
fn arm(store: &mut Store<State>) {
    let s = store.data_mut();
    s.cpu_at_first_tick = None;
    s.call_started = Instant::now();
    s.cut_by_wall = false;
    store.set_epoch_deadline(1);
}

/// One plugin attached: its live instance, and what outlives it.
pub struct Attachment {
    pub shared: Arc<Shared>,
    plugin: Mutex<Arc<Plugin>>,
    instance: Mutex<Live>,
    config: String,
}

struct Live {
    inst: Instance,
    /// Bytes of stdout/stderr already copied into the log.
    output_seen: usize,
}

struct Instance {
    store: Store<State>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    entry: Option<TypedFunc<(i32, i32), i32>>,
    post: Option<TypedFunc<(i32, i32), i32>>,
    ret: Option<TypedFunc<(i32, i32), i32>>,
    buf: (i32, usize),
    scratch: Vec<u8>,
}

/// What a fault says of a panic caught in host code under a plugin call.
fn host_panic_reason(panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("made the host panic ({what}); this is a wprobe bug, please report it")
}

fn trap_reason(e: &wasmtime::Error, s: &State) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) if s.cut_by_wall => format!(
            "ran longer than its {:?} wall-clock bound (it waited, or the host was stalled)",
            s.rt.wall()
        ),
        Some(Trap::Interrupt) => format!(
            "ran longer than its {:?} deadline (CPU time)",
            s.rt.call_deadline
        ),
        Some(Trap::StackOverflow) => "overflowed its wasm stack".into(),
        Some(t) => format!("trapped: {t}"),
        None => format!("failed: {e:#}"),
    }
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Runtime, String> {
        Self::with_reader(limits, Arc::new(ProcessMemory), None)
    }

    pub fn with_reader(
        limits: Limits,
        reader: Arc<dyn TargetMemory>,
        data_root: Option<PathBuf>,
    ) -> Result<Runtime, String> {
        Self::build(limits, reader, data_root).map_err(|e| format!("plugin runtime: {e:#}"))
    }

    fn build(
        limits: Limits,
        reader: Arc<dyn TargetMemory>,
        data_root: Option<PathBuf>,
    ) -> wasmtime::Result<Runtime> {
        let engine = Engine::new(&compile::engine_config(limits.stack_bytes))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut State| &mut s.wasi)?;
        add_host_functions(&mut linker)?;
        // Some of WASI's functions are ours, not wasmtime-wasi's: the
        // ones that would block the host's thread, and those whose bad
        // arguments would trap instead of failing.
        linker.allow_shadowing(true);
        add_wasi_overrides(&mut linker)?;
        if let Some(name) = &limits.host_panic {
            inject_host_panic(&mut linker, &engine, name)?;
        }
        linker.allow_shadowing(false);
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("wprobe-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    e.increment_epoch();
                }
            })?;
        Ok(Runtime {
            engine,
            linker,
            limits,
            reader,
            data_root,
            stop,
            compiler: Compiler::default(),
        })
    }

    /// Compile modules with `compiler` instead of the default (see
    /// [`Compiler::default`]).
    pub fn with_compiler(mut self, compiler: Compiler) -> Runtime {
        self.compiler = compiler;
        self
    }

    /// Validates and compiles a module (binary, or text for tests).
    /// `manifest` (JSON) overrides the module's own; `file_name` names a
    /// plugin that has neither.
    pub fn load(
        &self,
        bytes: &[u8],
        manifest: Option<&str>,
        file_name: &str,
    ) -> Result<Plugin, String> {
        if bytes.len() > self.limits.module_bytes {
            return Err(format!(
                "the module is {} bytes; plugins may be at most {} bytes",
                bytes.len(),
                self.limits.module_bytes
            ));
        }
        let binary = to_binary(bytes)?;
        let bytes: &[u8] = &binary;
        prescan(bytes, &self.limits.compile)?;
        let invalid = |e: wasmtime::Error| format!("not a valid WebAssembly module: {e:#}");
        let module = match &self.compiler {
            Compiler::InProcess => Module::new(&self.engine, bytes).map_err(invalid)?,
            Compiler::Child(helper) => {
                // Validating costs memory in proportion to the module (its
                // functions one at a time); compiling does not.
                Module::validate(&self.engine, bytes).map_err(invalid)?;
                compile::in_child(
                    &self.engine,
                    helper,
                    &self.limits.compile,
                    self.limits.stack_bytes,
                    bytes,
                )?
            }
        };
        let manifest = match manifest {
            Some(text) => Manifest::parse(text)?,
            None => match manifest::custom_section(bytes, manifest::SECTION) {
                Some(s) => Manifest::parse(
                    std::str::from_utf8(s)
                        .map_err(|_| "the manifest section is not UTF-8".to_string())?,
                )?,
                None => Manifest::unnamed(file_name),
            },
        };
        for import in module.imports() {
            match import.module() {
                "wasi_snapshot_preview1" => {}
                "wprobe" => {
                    let Some((_, params, results)) =
                        HOST_FUNCTIONS.iter().find(|f| f.0 == import.name())
                    else {
                        return Err(format!(
                            "imports `wprobe.{}`, which ABI version 1 does not have",
                            import.name()
                        ));
                    };
                    let ok = match import.ty() {
                        ExternType::Func(f) => {
                            same(f.params(), params) && same(f.results(), results)
                        }
                        _ => false,
                    };
                    if !ok {
                        return Err(format!(
                            "imports `wprobe.{}` with the wrong type; see docs/plugin-abi.md",
                            import.name()
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "imports `{other}.{}`: plugins may import only from `wprobe` and \
                         `wasi_snapshot_preview1`",
                        import.name()
                    ))
                }
            }
        }
        let func = |name: &str, params: &[ValType], results: &[ValType]| -> Result<bool, String> {
            match module.get_export(name) {
                None => Ok(false),
                Some(ExternType::Func(f))
                    if same(f.params(), params) && same(f.results(), results) =>
                {
                    Ok(true)
                }
                Some(_) => Err(format!(
                    "exports `{name}` with the wrong type; see docs/plugin-abi.md"
                )),
            }
        };
        let i32_ = [ValType::I32];
        let i32x2 = [ValType::I32, ValType::I32];
        if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
            return Err("does not export its memory as `memory`".into());
        }
        // A reactor's constructor of another type would not be called:
        // refused like any mistyped export.
        func("_initialize", &[], &[])?;
        if !func("wprobe_abi_version", &[], &i32_)? {
            return Err("does not export `wprobe_abi_version` (is it a wprobe plugin?)".into());
        }
        if !func("wprobe_alloc", &i32_, &i32_)? {
            return Err("does not export `wprobe_alloc`".into());
        }
        let handler = |name: &str| func(name, &i32x2, &i32_);
        let handlers = Handlers {
            entry: handler("wprobe_on_entry")?,
            post: handler("wprobe_on_post")?,
            ret: handler("wprobe_on_return")?,
            init: handler("wprobe_init")?,
        };
        if !(handlers.entry || handlers.post || handlers.ret) {
            return Err(
                "exports no handler: one of `wprobe_on_entry`, `wprobe_on_return`, \
                 `wprobe_on_post` is needed"
                    .into(),
            );
        }
        Ok(Plugin {
            manifest,
            module,
            size: bytes.len(),
            handlers,
        })
    }

    /// Instantiates `plugin` with `config` (JSON text) and attaches it.
    pub fn attach(&self, plugin: Arc<Plugin>, config: &str) -> Result<Attachment, String> {
        let shared = Arc::new(Shared {
            maps: Mutex::new(Maps::default()),
            call_data: Mutex::new(CallData::default()),
            log: Mutex::new(VecDeque::new()),
            stats: Mutex::new(Stats::default()),
            emit_window: Mutex::new((Instant::now(), 0)),
        });
        let (inst, output_seen) = self.instantiate(&plugin, config, &shared)?;
        Ok(Attachment {
            shared,
            plugin: Mutex::new(plugin),
            instance: Mutex::new(Live { inst, output_seen }),
            config: config.to_string(),
        })
    }

    /// [`Runtime::instantiate_unguarded`], where a panic in host code
    /// (under `_initialize`, `wprobe_init` or the allocator, which may call
    /// host functions) is a refusal that says so, not an unwinding through
    /// the caller (a request's thread of `wprobe serve`, `wprobe trace`).
    fn instantiate(
        &self,
        plugin: &Plugin,
        config: &str,
        shared: &Arc<Shared>,
    ) -> Result<(Instance, usize), String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.instantiate_unguarded(plugin, config, shared)
        }))
        .unwrap_or_else(|panic| Err(host_panic_reason(&panic)))
    }

    fn instantiate_unguarded(
        &self,
        plugin: &Plugin,
        config: &str,
        shared: &Arc<Shared>,
    ) -> Result<(Instance, usize), String> {
        serde_json::from_str::<Value>(config)
            .map_err(|e| format!("the configuration is not JSON: {e}"))?;
        let output = MemoryOutputPipe::new(self.limits.output_bytes);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(output.clone())
            .stderr(output.clone())
            .wall_clock(Frozen)
            .monotonic_clock(Frozen)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if plugin.manifest.needs.data_dir {
            let Some(root) = &self.data_root else {
                return Err(format!(
                    "plugin `{}` needs a data directory, and this host gives none",
                    plugin.manifest.name
                ));
            };
            let dir = root.join(&plugin.manifest.name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            wasi.preopened_dir(&dir, "/data", wasmtime_wasi::FsPerms::ReadWrite)
                .map_err(|e| format!("cannot open {}: {e:#}", dir.display()))?;
        }
        let state = State {
            wasi: wasi.build_p1(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .instances(1)
                .memories(1)
                .tables(4)
                .table_elements(100_000)
                .build(),
            shared: shared.clone(),
            call: None,
            reader: self.reader.clone(),
            rt: self.limits.clone(),
            may_mutate: plugin.manifest.needs.mutation,
            output: output.clone(),
            cpu_at_first_tick: None,
            call_started: Instant::now(),
            cut_by_wall: false,
            memory: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // The deadline is CPU time, not wall time: a thread preempted on a
        // loaded machine is not a plugin running long. The epoch ticks every
        // millisecond of wall time; at each tick during a call this
        // callback looks at the thread's CPU clock (it started counting at
        // the first tick, so a call is cut within a tick of its budget).
        // Wall time bounds a call as well, more loosely (`Limits::wall`):
        // a call that waits in a host function uses no CPU.
        let budget = self.limits.call_deadline.as_nanos() as u64;
        let wall = self.limits.wall();
        let tick = TICK.as_nanos() as u64;
        store.epoch_deadline_callback(move |mut ctx| {
            let now = thread_cpu_ns();
            let s = ctx.data_mut();
            if s.call_started.elapsed() > wall {
                s.cut_by_wall = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            let first = *s.cpu_at_first_tick.get_or_insert(now);
            if now.saturating_sub(first) + tick > budget {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        arm(&mut store);
        let instance = self
            .linker
            .instantiate(&mut store, &plugin.module)
            .map_err(|e| match e.downcast_ref::<Trap>() {
                // The module's start function ran, under the same bounds
                // as a handler: say which it overran, not wasmtime's
                // backtrace.
                Some(_) => format!(
                    "cannot instantiate: its start function {}",
                    trap_reason(&e, store.data())
                ),
                None => format!("cannot instantiate: {e:#}"),
            })?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("does not export its memory")?;
        store.data_mut().memory = Some(memory);
        let typed = |store: &mut Store<State>, name: &str| {
            instance.get_typed_func::<(i32, i32), i32>(store, name).ok()
        };
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            arm(&mut store);
            init.call(&mut store, ())
                .map_err(|e| format!("_initialize {}", trap_reason(&e, store.data())))?;
        }
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "wprobe_abi_version")
            .map_err(|e| e.to_string())?;
        arm(&mut store);
        let v = version
            .call(&mut store, ())
            .map_err(|e| format!("wprobe_abi_version {}", trap_reason(&e, store.data())))?;
        if v != abi::ABI_VERSION {
            return Err(format!(
                "exports ABI version {v}; this host serves version {}",
                abi::ABI_VERSION
            ));
        }
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "wprobe_alloc")
            .map_err(|e| e.to_string())?;
        let mut inst = Instance {
            entry: typed(&mut store, "wprobe_on_entry"),
            post: typed(&mut store, "wprobe_on_post"),
            ret: typed(&mut store, "wprobe_on_return"),
            store,
            memory,
            alloc,
            buf: (0, 0),
            scratch: Vec::new(),
        };
        if let Some(init) = typed(&mut inst.store, "wprobe_init") {
            let bytes = config.as_bytes().to_vec();
            let ptr = inst.put(&bytes)?;
            arm(&mut inst.store);
            let r = init
                .call(&mut inst.store, (ptr, bytes.len() as i32))
                .map_err(|e| format!("wprobe_init {}", trap_reason(&e, inst.store.data())))?;
            let seen = copy_output(&inst.store, 0);
            if r != 0 {
                return Err(format!(
                    "wprobe_init refused the configuration (returned {r}); see the plugin's log"
                ));
            }
            return Ok((inst, seen));
        }
        Ok((inst, 0))
    }
}

/// The module as binary: binary as it is; the text format (documented in
/// docs/plugin-abi.md, "The module": what starts with `(` after blanks and
/// comments) turned into binary, so that its custom sections
/// (`(@custom "wprobe.manifest" …)`) are found like a binary's; anything
/// else refused, naming its first bytes.
fn to_binary(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.starts_with(MAGIC) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    if looks_like_text(bytes) {
        return wat::parse_bytes(bytes).map_err(|e| format!("not valid WebAssembly text: {e}"));
    }
    let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let shown: String = bytes
        .iter()
        .take(4)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    Err(format!(
        "not a WebAssembly module (magic bytes {} `{shown}`; a module starts with 00 61 73 6d \
         `\\0asm`, or is WebAssembly text starting with `(`)",
        if head.is_empty() {
            "none: the file is empty".to_string()
        } else {
            head.join(" ")
        }
    ))
}

/// Whether `bytes` are WebAssembly text: `(` first, after blanks and
/// `;;` line or `(; … ;)` block comments.
fn looks_like_text(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    loop {
        rest = match rest {
            [b' ' | b'\t' | b'\n' | b'\r', tail @ ..] => tail,
            [b';', b';', tail @ ..] => match tail.iter().position(|&b| b == b'\n') {
                Some(i) => &tail[i + 1..],
                None => return false,
            },
            [b'(', ..] => return true,
            _ => return false,
        };
    }
}

fn same(have: impl ExactSizeIterator<Item = ValType>, want: &[ValType]) -> bool {
    let have: Vec<ValType> = have.collect();
    have.len() == want.len() && have.iter().zip(want).all(|(a, b)| ValType::eq(a, b))
}

/// Copies new stdout/stderr output of the instance into its log.
fn copy_output(store: &Store<State>, seen: usize) -> usize {
    let s = store.data();
    let all = s.output.contents();
    if all.len() > seen {
        let text = String::from_utf8_lossy(&all[seen..]);
        let mut log = s.shared.log.lock().unwrap_or_else(PoisonError::into_inner);
        for line in text.lines() {
            push_log(&mut log, s.rt.log_lines, format!("output: {line}"));
        }
    }
    all.len()
}

fn push_log(log: &mut VecDeque<String>, cap: usize, line: String) {
    if log.len() >= cap {
        log.pop_front();
    }
    log.push_back(line);
}

impl Instance {
    /// Puts `bytes` into the plugin's buffer (growing it with
    /// `wprobe_alloc`); the pointer.
    fn put(&mut self, bytes: &[u8]) -> Result<i32, String> {
        if bytes.len() > self.buf.1 {
            let want = bytes.len().next_power_of_two().max(1024);
            arm(&mut self.store);
            let ptr = self
                .alloc
                .call(&mut self.store, want as i32)
                .map_err(|e| format!("wprobe_alloc {}", trap_reason(&e, self.store.data())))?;
            if ptr <= 0 {
                return Err(format!("wprobe_alloc({want}) returned {ptr}"));
            }
            self.buf = (ptr, want);
        }
        let (ptr, _) = self.buf;
        let mem = self.memory.data_mut(&mut self.store);
        let dst = (ptr as usize)
            .checked_add(bytes.len())
            .filter(|&end| end <= mem.len())
            .ok_or_else(|| format!("wprobe_alloc returned {ptr}, outside its memory"))?;
        mem[ptr as usize..dst].copy_from_slice(bytes);
        Ok(ptr)
    }
}

impl Attachment {
    /// The plugin's maps, locked (a panic elsewhere does not make them
    /// unreadable).
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.shared
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn plugin(&self) -> Arc<Plugin> {
        self.plugin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn stats(&self) -> Stats {
        let mut s = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Counted where the refusal is decided.
        s.map_updates_refused = self.maps().overflow;
        s
    }

    pub fn log(&self) -> Vec<String> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Runs the plugin's handler for `e`. Never fails: a fault is counted
    /// (and said in the outcome), and enough of them quarantine the
    /// plugin.
    pub fn handle(&self, rt: &Runtime, e: &Event, info: CallInfo) -> Outcome {
        let mut out = Outcome::default();
        if self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .quarantined
            .is_some()
        {
            return out;
        }
        let mut live = self.instance.lock().unwrap_or_else(PoisonError::into_inner);
        let inst = &mut live.inst;
        let handler = match e.kind {
            EventKind::Entry => inst.entry.clone(),
            EventKind::Post => inst.post.clone(),
            EventKind::Return => inst.ret.clone(),
        };
        let Some(handler) = handler else {
            return out;
        };
        out.called = true;
        let mut flags = 0;
        if info.sync {
            flags |= FLAG_SYNC;
        } else {
            flags |= FLAG_LIVE_READS;
        }
        // The entry of a return probe's call may wait (sync) but not
        // change anything: the core hijacks the return from the registers
        // as they are.
        let return_entry = info.return_probe && e.kind == EventKind::Entry;
        if info.sync && info.mutation && !return_entry {
            flags |= FLAG_MUTATION;
        }
        let mut scratch = std::mem::take(&mut inst.scratch);
        abi::encode_event(e, flags, &mut scratch);
        let started = Instant::now();
        let mut host_panicked = false;
        // A panic in host code under the call (a bug of ours, not the
        // plugin's) faults the plugin instead of unwinding through the
        // caller (a probe's thread, `wprobe trace`'s loop), the other
        // plugins of the event with it; the plugin is quarantined at once
        // below. The allocator is a call too: it may call host functions.
        // The locks a panic may have poisoned are taken as they are.
        let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ptr = inst.put(&scratch)?;
            inst.store.data_mut().call = Some(CallCtx {
                pid: e.pid,
                tid: e.tid,
                kind: e.kind,
                flags,
                return_probe: info.return_probe,
                entry_time_ns: e.ret.map_or(e.time_ns, |r| r.entry_time_ns),
                records: Vec::new(),
                read_after_hit: false,
                set_regs: Vec::new(),
                set_return: None,
            });
            arm(&mut inst.store);
            handler
                .call(&mut inst.store, (ptr, scratch.len() as i32))
                .map_err(|err| trap_reason(&err, inst.store.data()))
        }));
        let result = call.unwrap_or_else(|panic| {
            host_panicked = true;
            Err(host_panic_reason(&panic))
        });
        inst.scratch = scratch;
        let call = inst.store.data_mut().call.take();
        live.output_seen = copy_output(&live.inst.store, live.output_seen);
        let fault = match result {
            Ok(0) => None,
            Ok(r) => Some(format!("handler returned {r}")),
            Err(reason) => Some(reason),
        };
        let mut stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stats.calls += 1;
        stats.busy_ns += started.elapsed().as_nanos() as u64;
        match fault {
            None => {
                stats.consecutive_faults = 0;
                if let Some(c) = call {
                    stats.records += c.records.len() as u64;
                    out.records = c.records;
                    out.set_regs = c.set_regs;
                    out.set_return = c.set_return;
                }
            }
            Some(reason) => {
                stats.faults += 1;
                stats.consecutive_faults += 1;
                let name = self.plugin().manifest.name.clone();
                let reason = format!("plugin `{name}` {reason}");
                stats.last_fault = Some(reason.clone());
                let mut log = self
                    .shared
                    .log
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                push_log(&mut log, rt.limits.log_lines, format!("fault: {reason}"));
                if stats.consecutive_faults >= rt.limits.quarantine_after || host_panicked {
                    let q = format!(
                        "quarantined after {} faults in a row; the last: {reason}",
                        stats.consecutive_faults
                    );
                    push_log(&mut log, rt.limits.log_lines, q.clone());
                    stats.quarantined = Some(q);
                }
                out.fault = Some(reason);
            }
        }
        out
    }

    /// Replaces the plugin with a new version, atomically between two
    /// events; maps, per-call data and the log stay. A quarantine ends.
    pub fn replace(&self, rt: &Runtime, plugin: Arc<Plugin>) -> Result<(), String> {
        let (inst, output_seen) = rt.instantiate(&plugin, &self.config, &self.shared)?;
        let mut live = self.instance.lock().unwrap_or_else(PoisonError::into_inner);
        *live = Live { inst, output_seen };
        *self.plugin.lock().unwrap_or_else(PoisonError::into_inner) = plugin;
        let mut stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stats.quarantined = None;
        stats.consecutive_faults = 0;
        Ok(())
    }

    /// Forgets the per-call data of a process that ended.
    pub fn process_exited(&self, pid: i32) {
        let mut cd = self
            .shared
            .call_data
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cd.map.retain(|k, _| k.0 != pid);
        cd.order.retain(|k| k.0 != pid);
    }

    pub fn maps_json(&self) -> Value {
        self.maps().to_json()
    }

    pub fn histograms(&self) -> Vec<super::maps::Histogram> {
        self.maps().histograms()
    }

    /// Whether the plugin's maps hold no key.
    pub fn maps_empty(&self) -> bool {
        self.maps().keys() == 0
    }

    pub fn maps_text(&self) -> String {
        self.maps().to_text()
    }

    /// The maps as JSON written to `out`, cut when `stop` says so
    /// (`Ok(false)`); see `Maps::write_json`.
    pub fn write_maps_json(
        &self,
        out: &mut dyn std::io::Write,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<bool> {
        self.maps().write_json(out, stop)
    }

    /// The maps as text written to `out`, cut when `stop` says so
    /// (`Ok(false)`); see `Maps::write_text`.
    pub fn write_maps_text(
        &self,
        out: &mut dyn std::io::Write,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<bool> {
        self.maps().write_text(out, stop)
    }
}

/// The plugin's memory and the store's data, for a host function.
fn memory<'a>(caller: &'a mut Caller<'_, State>) -> Option<(&'a mut [u8], &'a mut State)> {
    let m = match caller.data().memory {
        Some(m) => m,
        // During instantiation (`_initialize`), before it is known.
        None => caller.get_export("memory")?.into_memory()?,
    };
    Some(m.data_and_store_mut(caller))
}

/// The plugin's memory, the store's data, and `ptr..ptr+len` in that
/// memory, after the checks every buffer argument gets: `len` at most
/// `max`, the range inside the memory.
type Buffer<'a> = (&'a mut [u8], &'a mut State, std::ops::Range<usize>);

fn buffer<'a>(
    caller: &'a mut Caller<'_, State>,
    ptr: i32,
    len: i32,
    max: i32,
) -> Result<Buffer<'a>, i32> {
    if len > max {
        return Err(code::E2BIG);
    }
    let (mem, state) = memory(caller).ok_or(code::EFAULT_PLUGIN)?;
    let r = range(ptr, len, mem.len()).ok_or(code::EFAULT_PLUGIN)?;
    Ok((mem, state, r))
}

fn range(ptr: i32, len: i32, mem: usize) -> Option<std::ops::Range<usize>> {
    if ptr < 0 || len < 0 {
        return None;
    }
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    (end <= mem).then_some(start..end)
}

fn key_of(mem: &[u8], kind: i32, ptr: i32, len: i32) -> Result<Key, i32> {
    match kind {
        0 => Ok(Key::None),
        1 => {
            if len > MAX_KEY {
                return Err(code::E2BIG);
            }
            let r = range(ptr, len, mem.len()).ok_or(code::EFAULT_PLUGIN)?;
            Ok(Key::Bytes(mem[r].to_vec()))
        }
        2 => {
            let r = range(ptr, len, mem.len()).ok_or(code::EFAULT_PLUGIN)?;
            let b: [u8; 8] = mem[r].try_into().map_err(|_| code::EINVAL)?;
            Ok(Key::Int(i64::from_le_bytes(b)))
        }
        _ => Err(code::EINVAL),
    }
}

fn name_of(mem: &[u8], ptr: i32, len: i32) -> Result<&str, i32> {
    if len > MAX_NAME || len == 0 {
        return Err(if len == 0 { code::EINVAL } else { code::E2BIG });
    }
    let r = range(ptr, len, mem.len()).ok_or(code::EFAULT_PLUGIN)?;
    std::str::from_utf8(&mem[r]).map_err(|_| code::EINVAL)
}

fn map_result(r: Result<(), MapError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(MapError::Invalid) => code::EINVAL,
        Err(MapError::Limit) => code::ELIMIT,
    }
}

/// Reads target memory for the call in progress into a fresh buffer.
fn read_target(state: &mut State, addr: i64, len: usize, string: bool) -> Result<Vec<u8>, i32> {
    let Some(call) = state.call.as_mut() else {
        return Err(code::EPERM);
    };
    if call.flags & FLAG_SYNC == 0 {
        call.read_after_hit = true;
    }
    let pid = call.pid;
    let mut out = vec![0u8; len];
    if !string {
        let n = state.reader.read(pid, addr as u64, &mut out)?;
        if n < len {
            return Err(code::EFAULT_TARGET);
        }
        return Ok(out);
    }
    // A string: page by page, so that one ending before an unmapped page
    // is still read.
    let mut got = 0;
    while got < len {
        let at = (addr as u64).wrapping_add(got as u64);
        let to_page = 4096 - (at % 4096) as usize;
        let want = to_page.min(len - got);
        let n = state.reader.read(pid, at, &mut out[got..got + want])?;
        if let Some(nul) = out[got..got + n].iter().position(|&b| b == 0) {
            out.truncate(got + nul);
            return Ok(out);
        }
        got += n;
        if n < want {
            // The string runs into memory that cannot be read.
            return Err(code::EFAULT_TARGET);
        }
    }
    Ok(out)
}

/// `map_update` and `map_lhist`: the name `(ptr, len)` and the key
/// `(kind, ptr, len)` read from the plugin's memory, then one update.
fn map_update(
    caller: &mut Caller<'_, State>,
    op: Op,
    (name, name_len): (i32, i32),
    (key_kind, key, key_len): (i32, i32, i32),
    value: i64,
) -> i32 {
    let Some((mem, state)) = memory(caller) else {
        return code::EFAULT_PLUGIN;
    };
    let name = match name_of(mem, name, name_len) {
        Ok(n) => n,
        Err(c) => return c,
    };
    let key = match key_of(mem, key_kind, key, key_len) {
        Ok(k) => k,
        Err(c) => return c,
    };
    let max = state.rt.max_keys;
    map_result(
        state
            .shared
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update(name, op, key, value, max),
    )
}

/// WASI preview 1 errno values.
mod errno {
    pub const SUCCESS: u16 = 0;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const NOTSUP: u16 = 58;
}

/// `poll_oneoff(subscriptions, events, n, nevents)` that never waits: a
/// plugin's WASI clocks stand still, so a clock subscription is reported
/// elapsed at once, and an fd subscription fails with `ENOTSUP` (stdin is
/// empty, the output is never full, files are always ready). wasmtime-wasi's
/// own sleeps on the host's thread for as long as the plugin asks.
fn poll_oneoff(
    caller: &mut Caller<'_, State>,
    subs: i32,
    events: i32,
    n: i32,
    nevents: i32,
) -> i32 {
    /// `subscription` and `event`, as the witx lays them out.
    const SUB: usize = 48;
    const EVENT: usize = 32;
    let Some((mem, _)) = memory(caller) else {
        return errno::FAULT;
    };
    if n == 0 {
        // wasmtime-wasi's answer too: "indefinite sleeping" is not served.
        return errno::INVAL;
    }
    let count = n as u32 as usize;
    let sizes = (count.checked_mul(SUB), count.checked_mul(EVENT));
    let (Some(sub_bytes), Some(event_bytes)) = sizes else {
        return errno::FAULT;
    };
    let as_len = |n: usize| i32::try_from(n).unwrap_or(-1);
    let (Some(subs), Some(events), Some(out)) = (
        range(subs, as_len(sub_bytes), mem.len()),
        range(events, as_len(event_bytes), mem.len()),
        range(nevents, 4, mem.len()),
    ) else {
        return errno::FAULT;
    };
    let read: Vec<([u8; 8], u8)> = mem[subs]
        .chunks_exact(SUB)
        .map(|s| {
            let userdata: [u8; 8] = s[..8].try_into().expect("8 bytes");
            (userdata, s[8])
        })
        .collect();
    for ((userdata, tag), ev) in read.into_iter().zip(mem[events].chunks_exact_mut(EVENT)) {
        let error = if tag == 0 {
            errno::SUCCESS
        } else {
            errno::NOTSUP
        };
        ev.fill(0);
        ev[..8].copy_from_slice(&userdata);
        ev[8..10].copy_from_slice(&error.to_le_bytes());
        ev[10] = tag;
    }
    mem[out].copy_from_slice(&(count as u32).to_le_bytes());
    0
}

/// [`Limits::host_panic`]: host function `wprobe.NAME` replaced by one of
/// its type that panics.
fn inject_host_panic(
    linker: &mut Linker<State>,
    engine: &Engine,
    name: &str,
) -> wasmtime::Result<()> {
    let Some((_, params, results)) = HOST_FUNCTIONS.iter().find(|f| f.0 == name) else {
        let names: Vec<&str> = HOST_FUNCTIONS.iter().map(|f| f.0).collect();
        return Err(wasmtime::Error::msg(format!(
            "{FAULT_INJECTION}={name}: there is no host function `wprobe.{name}`; one of {}",
            names.join(", ")
        )));
    };
    let ty = wasmtime::FuncType::new(engine, params.iter().cloned(), results.iter().cloned());
    let what = format!("{FAULT_INJECTION}: wprobe.{name} panics");
    linker.func_new("wprobe", name, ty, move |_, _, _| panic!("{what}"))?;
    Ok(())
}

fn add_wasi_overrides(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    const WASI: &str = "wasi_snapshot_preview1";
    linker.func_wrap(
        WASI,
        "poll_oneoff",
        |mut caller: Caller<'_, State>, subs: i32, events: i32, n: i32, nevents: i32| -> i32 {
            poll_oneoff(&mut caller, subs, events, n, nevents)
        },
    )?;
    // wasmtime-wasi's returns at once as well; ours says so here.
    linker.func_wrap(WASI, "sched_yield", |_: Caller<'_, State>| -> i32 { 0 })?;

    // wasmtime-wasi converts flags and enums before calling its function,
    // and a value with bits or a number WASI does not define traps there
    // (a fault, then quarantine) where it should merely fail. These check
    // first and answer EINVAL, then call wasmtime-wasi's function.
    use wasmtime_wasi::p1::types::{
        Advice, Clockid, Fdflags, Fstflags, Lookupflags, Oflags, Riflags, Rights, Sdflags, Signal,
        Whence,
    };
    use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;
    macro_rules! checked {
        ($mode:ident $name:ident ($($arg:ident: $ty:ty),*) [$($flag:ident: $fty:ty),*]) => {
            linker.func_wrap(
                WASI,
                stringify!($name),
                |mut caller: Caller<'_, State>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                    if false $(|| <$fty>::try_from($flag).is_err())* {
                        return Ok(errno::INVAL);
                    }
                    // As wasmtime-wasi's own wrapper does: the fuel bounds
                    // what one call may copy out of the plugin's memory.
                    let fuel = caller.as_context_mut().hostcall_fuel();
                    let Some((mem, state)) = memory(&mut caller) else {
                        return Ok(errno::FAULT);
                    };
                    p1::WasiSnapshotPreview1::set_hostcall_fuel(&mut state.wasi, fuel);
                    let mut mem = wiggle::GuestMemory::Unshared(mem);
                    checked!(@call $mode p1::$name(&mut state.wasi, &mut mem, $($arg),*))
                },
            )?;
        };
        (@call async $call:expr) => { wasmtime_wasi::runtime::in_tokio($call) };
        (@call sync $call:expr) => { $call };
    }
    checked!(async path_open(fd: i32, dirflags: i32, path: i32, path_len: i32, oflags: i32,
        base: i64, inheriting: i64, fdflags: i32, out: i32)
        [dirflags: Lookupflags, oflags: Oflags, base: Rights, inheriting: Rights, fdflags: Fdflags]);
    checked!(async fd_seek(fd: i32, offset: i64, whence: i32, out: i32) [whence: Whence]);
    checked!(async fd_advise(fd: i32, offset: i64, len: i64, advice: i32) [advice: Advice]);
    checked!(async fd_filestat_set_times(fd: i32, atim: i64, mtim: i64, fst: i32)
        [fst: Fstflags]);
    checked!(async path_filestat_get(fd: i32, flags: i32, path: i32, path_len: i32, out: i32)
        [flags: Lookupflags]);
    checked!(async path_filestat_set_times(fd: i32, flags: i32, path: i32, path_len: i32,
        atim: i64, mtim: i64, fst: i32) [flags: Lookupflags, fst: Fstflags]);
    checked!(async path_link(fd: i32, flags: i32, old: i32, old_len: i32, new_fd: i32,
        new: i32, new_len: i32) [flags: Lookupflags]);
    checked!(sync fd_fdstat_set_flags(fd: i32, flags: i32) [flags: Fdflags]);
    checked!(sync fd_fdstat_set_rights(fd: i32, base: i64, inheriting: i64)
        [base: Rights, inheriting: Rights]);
    checked!(sync clock_time_get(id: i32, precision: i64, out: i32) [id: Clockid]);
    checked!(sync clock_res_get(id: i32, out: i32) [id: Clockid]);
    checked!(sync sock_accept(fd: i32, flags: i32, out: i32) [flags: Fdflags]);
    checked!(sync sock_shutdown(fd: i32, how: i32) [how: Sdflags]);
    checked!(sync sock_recv(fd: i32, data: i32, data_len: i32, flags: i32, out: i32,
        out_flags: i32) [flags: Riflags]);
    checked!(sync proc_raise(sig: i32) [sig: Signal]);
    Ok(())
}

fn add_host_functions(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "wprobe",
        "read_memory",
        |mut caller: Caller<'_, State>, addr: i64, buf: i32, len: i32| -> i32 {
            let (mem, state, r) = match buffer(&mut caller, buf, len, MAX_READ) {
                Ok(b) => b,
                Err(c) => return c,
            };
            match read_target(state, addr, len as usize, false) {
                Ok(bytes) => {
                    mem[r].copy_from_slice(&bytes);
                    len
                }
                Err(c) => c,
            }
        },
    )?;
    linker.func_wrap(
        "wprobe",
        "read_string",
        |mut caller: Caller<'_, State>, addr: i64, buf: i32, max: i32| -> i32 {
            let (mem, state, r) = match buffer(&mut caller, buf, max, MAX_READ) {
                Ok(b) => b,
                Err(c) => return c,
            };
            match read_target(state, addr, max as usize, true) {
                Ok(bytes) => {
                    mem[r.start..r.start + bytes.len()].copy_from_slice(&bytes);
                    bytes.len() as i32
                }
                Err(c) => c,
            }
        },
    )?;
    linker.func_wrap(
        "wprobe",
        "emit",
        |mut caller: Caller<'_, State>, ptr: i32, len: i32| -> i32 {
            let (mem, state, r) = match buffer(&mut caller, ptr, len, MAX_EMIT) {
                Ok(b) => b,
                Err(c) => return c,
            };
            let Ok(mut value) = serde_json::from_slice::<Value>(&mem[r]) else {
                return code::EINVAL;
            };
            let Some(call) = state.call.as_mut() else {
                return code::EPERM;
            };
            {
                let mut w = state
                    .shared
                    .emit_window
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if w.0.elapsed() >= Duration::from_secs(1) {
                    *w = (Instant::now(), 0);
                }
                if w.1 >= state.rt.emits_per_sec {
                    state
                        .shared
                        .stats
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .records_dropped += 1;
                    return code::ELIMIT;
                }
                w.1 += 1;
            }
            if call.read_after_hit {
                match &mut value {
                    Value::Object(o) => {
                        o.insert("live_reads".into(), Value::Bool(true));
                    }
                    other => {
                        value = json!({"record": other.take(), "live_reads": true});
                    }
                }
            }
            call.records.push(value);
            0
        },
    )?;
    linker.func_wrap(
        "wprobe",
        "map_update",
        |mut caller: Caller<'_, State>,
         op: i32,
         name: i32,
         name_len: i32,
         key_kind: i32,
         key: i32,
         key_len: i32,
         value: i64|
         -> i32 {
            match Op::from_abi(op) {
                Some(op) => map_update(
                    &mut caller,
                    op,
                    (name, name_len),
                    (key_kind, key, key_len),
                    value,
                ),
                None => code::EINVAL,
            }
        },
    )?;
    linker.func_wrap(
        "wprobe",
        "map_lhist",
        |mut caller: Caller<'_, State>,
         name: i32,
         name_len: i32,
         key_kind: i32,
         key: i32,
         key_len: i32,
         value: i64,
         min: i64,
         max: i64,
         step: i64|
         -> i32 {
            let op = Op::Lhist { min, max, step };
            map_update(
                &mut caller,
                op,
                (name, name_len),
                (key_kind, key, key_len),
                value,
            )
        },
    )?;
    linker.func_wrap(
        "wprobe",
        "call_data_set",
        |mut caller: Caller<'_, State>, ptr: i32, len: i32| -> i32 {
            let (mem, state, r) = match buffer(&mut caller, ptr, len, MAX_CALL_DATA) {
                Ok(b) => b,
                Err(c) => return c,
            };
            let Some(call) = state.call.as_ref() else {
                return code::EPERM;
            };
            if call.kind != EventKind::Entry || !call.return_probe {
                return code::EPERM;
            }
            let k = (call.pid, call.tid, call.entry_time_ns);
            let mut cd = state
                .shared
                .call_data
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !cd.map.contains_key(&k) {
                if cd.order.len() >= state.rt.call_data_calls {
                    if let Some(old) = cd.order.pop_front() {
                        cd.map.remove(&old);
                        state
                            .shared
                            .stats
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .call_data_dropped += 1;
                    }
                }
                cd.order.push_back(k);
            }
            cd.map.insert(k, mem[r].to_vec());
            0
        },
    )?;
    linker.func_wrap(
        "wprobe",
        "call_data_get",
        |mut caller: Caller<'_, State>, ptr: i32, max: i32| -> i32 {
            let (mem, state, r) = match buffer(&mut caller, ptr, max, i32::MAX) {
                Ok(b) => b,
                Err(c) => return c,
            };
            let Some(call) = state.call.as_ref() else {
                return code::EPERM;
            };
            if call.kind != EventKind::Return {
                return code::EPERM;
            }
            let k = (call.pid, call.tid, call.entry_time_ns);
            let mut cd = state
                .shared
                .call_data
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(data) = cd.map.remove(&k) else {
                return code::ENOENT;
            };
            cd.order.retain(|o| *o != k);
            let n = data.len().min(r.len());
            mem[r.start..r.start + n].copy_from_slice(&data[..n]);
            data.len() as i32
        },
    )?;
    linker.func_wrap(
        "wprobe",
        "log",
        |mut caller: Caller<'_, State>, level: i32, ptr: i32, len: i32| -> i32 {
            let Some(level) = ["error", "warn", "info", "debug"].get(level as usize) else {
                return code::EINVAL;
            };
            let (mem, state, r) = match buffer(&mut caller, ptr, len, 4096) {
                Ok(b) => b,
                Err(c) => return c,
            };
            let text = String::from_utf8_lossy(&mem[r]).into_owned();
            let mut log = state
                .shared
                .log
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            push_log(&mut log, state.rt.log_lines, format!("{level}: {text}"));
            0
        },
    )?;
    linker.func_wrap("wprobe", "now_ns", |_: Caller<'_, State>| -> i64 {
        wprobe_core::engine::monotonic_ns() as i64
    })?;
    linker.func_wrap(
        "wprobe",
        "set_register",
        |mut caller: Caller<'_, State>, index: i32, value: i64| -> i32 {
            let state = caller.data_mut();
            let may = state.may_mutate;
            let Some(call) = state.call.as_mut() else {
                return code::EPERM;
            };
            if !may || call.flags & (FLAG_SYNC | FLAG_MUTATION) != (FLAG_SYNC | FLAG_MUTATION) {
                return code::EPERM;
            }
            if !(0..wprobe_core::proto::X86_64_NREGS as i32).contains(&index) {
                return code::EINVAL;
            }
            call.set_regs.push((index as usize, value as u64));
            0
        },
    )?;
    linker.func_wrap(
        "wprobe",
        "set_return",
        |mut caller: Caller<'_, State>, value: i64| -> i32 {
            let state = caller.data_mut();
            let may = state.may_mutate;
            let Some(call) = state.call.as_mut() else {
                return code::EPERM;
            };
            if !may
                || call.kind != EventKind::Return
                || call.flags & (FLAG_SYNC | FLAG_MUTATION) != (FLAG_SYNC | FLAG_MUTATION)
            {
                return code::EPERM;
            }
            call.set_return = Some(value as u64);
            0
        },
    )?;
    Ok(())
}
