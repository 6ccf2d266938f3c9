//! `wprobe trace`: a one-shot trace with the engine in this process.
//!
//! Events go out as JSON Lines (to stdout, or to `-o FILE`), a summary
//! object follows them, and wprobe's own messages go to stderr, so that with
//! `-o FILE` the traced command's stdout is exactly its own. The exit status
//! is the traced command's.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use serde_json::{json, Map, Value as Json};
use wprobe_core::engine::{
    monotonic_ns, Engine, ExitStatus, Hit, HitKind, Notice, Options, RunEnd, Sink, Value,
};
use wprobe_core::spec::ProbeSpec;
use wprobe_core::symbols::{self, ElfCache};
use wprobe_core::target::ptrace::Ptrace;

#[derive(Args)]
pub struct TraceArgs {
    /// A probe: `uprobe:MODULE:SYMBOL[+OFF]`, `uprobe:MODULE:0xADDR` or
    /// `uretprobe:MODULE:SYMBOL`, then captures (`name=%rdi:u64`,
    /// `path=+0($arg1):string`; a return probe takes them at entry) and
    /// `post`, `force`, `maxactive=N`. May be given several times.
    #[arg(short = 'e', long = "probe", value_name = "SPEC")]
    probes: Vec<String>,
    /// Attach to this running process (all its threads) instead of running
    /// a command.
    #[arg(short = 'p', long = "pid", conflicts_with = "command")]
    pid: Option<i32>,
    /// List the probe points matching a spec with a glob, e.g.
    /// `uprobe:libc:mall*`, and exit.
    #[arg(short = 'l', long = "list", value_name = "SPEC")]
    list: Option<String>,
    /// Write events to FILE (`-` for stdout, the default).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<String>,
    /// Leave out the register snapshot of each event.
    #[arg(long)]
    no_regs: bool,
    /// Trace fork children with the same probes (by default a child has
    /// every probe taken out and runs untraced).
    #[arg(long)]
    follow_fork: bool,
    /// After the traced program calls execve, resolve the probes again
    /// against the new image (by default they end and it runs untraced).
    #[arg(long)]
    follow_exec: bool,
    /// The command to run, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM raise `STOP`. The handler is installed without
/// SA_RESTART so that it interrupts the engine's wait; a watcher thread
/// signals the main thread again until it noticed, which closes the window
/// between checking the flag and blocking in waitpid.
fn install_stop_handler() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
    // SAFETY: getpid has no preconditions; the main thread's tid is the pid.
    let main_tid = unsafe { libc::getpid() };
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if STOP.load(Ordering::SeqCst) {
            // SAFETY: signalling our own main thread; the handler is installed.
            unsafe { libc::syscall(libc::SYS_tgkill, main_tid, main_tid, libc::SIGINT) };
        }
    });
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("wprobe: {msg}");
    2
}

pub fn main(args: TraceArgs) -> i32 {
    if let Some(spec) = &args.list {
        return list(spec, args.pid);
    }
    if args.probes.is_empty() {
        return fail("no probe given: add `-e SPEC`, e.g. `-e uprobe:libc:malloc`");
    }
    if args.pid.is_none() && args.command.is_empty() {
        return fail("nothing to trace: give `-p PID` or a command after `--`");
    }
    let mut specs = Vec::new();
    for text in &args.probes {
        match ProbeSpec::parse(text) {
            Ok(s) => specs.push(s),
            Err(e) => return fail(e),
        }
    }
    let out: Box<dyn Write> = match args.output.as_deref() {
        None | Some("-") => Box::new(std::io::stdout()),
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Box::new(f),
            Err(e) => return fail(format!("cannot write {path}: {e}")),
        },
    };
    let mut sink = JsonSink {
        out: std::io::BufWriter::with_capacity(1 << 16, out),
        texts: Vec::new(),
        regs: !args.no_regs,
        last_flush: monotonic_ns(),
    };
    let mut engine = Engine::new(Ptrace::new());
    engine.set_options(Options {
        follow_fork: args.follow_fork,
        follow_exec: args.follow_exec,
    });
    // Whatever can be checked from the files alone is checked before the
    // command runs.
    for spec in &specs {
        if let Err(e) = engine.check_offline(spec) {
            return fail(e);
        }
    }
    install_stop_handler();
    let spawned = args.pid.is_none();
    let started = match args.pid {
        Some(pid) => engine.attach(pid).map(|_| pid),
        None => engine.spawn(&args.command),
    };
    let pid = match started {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    for (spec, text) in specs.into_iter().zip(&args.probes) {
        match engine.add_probe(spec, &mut sink) {
            Ok(id) => sink.texts.push((id.0, text.clone())),
            Err(e) => {
                let code = fail(e);
                give_up(&mut engine, spawned);
                return code;
            }
        }
    }
    let end = engine.run(&mut sink, &STOP);
    let mut code = 0;
    match end {
        Ok(RunEnd::AllExited) => {}
        Ok(RunEnd::Stopped) => {
            if let Err(e) = engine.detach_all() {
                eprintln!("wprobe: detach: {e}");
            }
            eprintln!("wprobe: detached from process {pid}; it runs on untraced");
        }
        Ok(RunEnd::Refused) => {
            // The refusal itself was said as it happened (a notice).
            give_up(&mut engine, spawned);
            code = 2;
        }
        Err(e) => {
            eprintln!("wprobe: {e}");
            if let Err(e) = engine.detach_all() {
                eprintln!("wprobe: detach: {e}");
            }
            code = 1;
        }
    }
    let exit = engine.exits().iter().find(|(p, _)| *p == pid).map(|e| e.1);
    sink.summary(&engine, exit);
    if let Err(e) = sink.out.flush() {
        eprintln!("wprobe: writing events: {e}");
    }
    if code != 0 {
        return code;
    }
    match exit {
        Some(ExitStatus::Code(c)) => c,
        Some(ExitStatus::Signal(s)) => 128 + s,
        None if spawned => wait_detached(pid),
        None => 0,
    }
}

/// Before the program ran: a spawned one is killed, an attached one left
/// as it was.
fn give_up(engine: &mut Engine<Ptrace>, spawned: bool) {
    if spawned {
        engine.kill_all();
    } else if let Err(e) = engine.detach_all() {
        eprintln!("wprobe: detach: {e}");
    }
}

/// After Ctrl-C the spawned command, untraced now, is still our child: its
/// status becomes ours, as a shell's would. A second Ctrl-C stops waiting.
fn wait_detached(pid: i32) -> i32 {
    STOP.store(false, Ordering::SeqCst);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r != pid {
        return 130;
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

struct JsonSink {
    out: std::io::BufWriter<Box<dyn Write>>,
    texts: Vec<(u32, String)>,
    regs: bool,
    last_flush: u64,
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Unsigned(x) => json!(x),
        Value::Signed(x) => json!(x),
        Value::Hex(x) => json!(format!("{x:#x}")),
        Value::String { bytes, truncated } => {
            let s = String::from_utf8_lossy(bytes).into_owned();
            if *truncated {
                json!({"string": s, "truncated": true})
            } else {
                json!(s)
            }
        }
        Value::Bytes(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        Value::Error(e) => json!({ "error": e }),
    }
}

impl JsonSink {
    fn write(&mut self, v: &Json) {
        let _ = serde_json::to_writer(&mut self.out, v);
        let _ = self.out.write_all(b"\n");
        self.maybe_flush();
    }

    /// Events reach a reader within a tenth of a second even when they are
    /// few, without a write per event when they are many.
    fn maybe_flush(&mut self) {
        let now = monotonic_ns();
        if now - self.last_flush > 100_000_000 {
            let _ = self.out.flush();
            self.last_flush = now;
        }
    }

    fn summary(&mut self, engine: &Engine<Ptrace>, exit: Option<ExitStatus>) {
        let probes: Vec<Json> = engine
            .probe_ids()
            .into_iter()
            .map(|id| {
                let st = engine.stats(id).unwrap_or_default();
                json!({
                    "probe": id.0,
                    "spec": engine.probe_text(id),
                    "hits": st.hits,
                    "nmissed": st.nmissed,
                })
            })
            .collect();
        let exit = match exit {
            Some(ExitStatus::Code(c)) => json!({ "code": c }),
            Some(ExitStatus::Signal(s)) => json!({ "signal": s }),
            None => Json::Null,
        };
        self.write(&json!({ "summary": { "probes": probes, "exit": exit } }));
    }
}

impl Sink for JsonSink {
    /// One event as one JSON line. Written field by field rather than
    /// through a `serde_json::Map`: this runs while the target thread is
    /// stopped, and building a map of 27 registers per hit was most of the
    /// cost of an event.
    fn hit(&mut self, hit: &Hit<'_>) {
        let kind = match hit.kind {
            HitKind::Entry => "entry",
            HitKind::Post => "post",
            HitKind::Return => "return",
        };
        let o = &mut self.out;
        let _ = write!(
            o,
            "{{\"probe\":{},\"kind\":\"{kind}\",\"pid\":{},\"tid\":{},\"time_ns\":{},\"addr\":\"{:#x}\",\"args\":[",
            hit.probe.0, hit.pid, hit.tid, hit.time_ns, hit.addr
        );
        for (i, a) in hit.regs.args().iter().enumerate() {
            let _ = write!(o, "{}{a}", if i == 0 { "" } else { "," });
        }
        let _ = o.write_all(b"]");
        if let Some(r) = &hit.ret {
            let _ = write!(
                o,
                ",\"retval\":{},\"return_address\":\"{:#x}\",\"entry_time_ns\":{},\"latency_ns\":{},\"entry_args\":[",
                r.value,
                r.return_address,
                r.entry_time_ns,
                hit.time_ns.saturating_sub(r.entry_time_ns)
            );
            for (i, a) in r.entry_args.iter().enumerate() {
                let _ = write!(o, "{}{a}", if i == 0 { "" } else { "," });
            }
            let _ = o.write_all(b"]");
        }
        if !hit.captures.is_empty() {
            let caps: Map<String, Json> = hit
                .captures
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect();
            let _ = o.write_all(b",\"captures\":");
            let _ = serde_json::to_writer(&mut *o, &caps);
        }
        if self.regs {
            let _ = o.write_all(b",\"regs\":{");
            for (i, (k, v)) in hit.regs.named().iter().enumerate() {
                let _ = write!(o, "{}\"{k}\":{v}", if i == 0 { "" } else { "," });
            }
            let _ = o.write_all(b"}");
        }
        let _ = o.write_all(b"}\n");
        self.maybe_flush();
    }

    fn notice(&mut self, n: &Notice) {
        let text = |id: u32| {
            self.texts
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, t)| t.clone())
                .unwrap_or_else(|| format!("probe {id}"))
        };
        match n {
            Notice::Armed {
                probe,
                pid,
                addr,
                location,
            } => eprintln!(
                "wprobe: {} armed in process {pid} at {addr:#x} ({location})",
                text(probe.0)
            ),
            Notice::Pending { probe, reason, .. } => {
                eprintln!("wprobe: {} pending: {reason}", text(probe.0))
            }
            Notice::Refused { reason, .. } => eprintln!("wprobe: refused: {reason}"),
            Notice::Gone { probe, reason, .. } => {
                eprintln!("wprobe: {} gone: {reason}", text(probe.0))
            }
            Notice::Exited { .. } => {}
            Notice::Warning(w) => eprintln!("wprobe: warning: {w}"),
        }
    }
}

/// Where shared libraries are looked for when a stem (`libc`) is listed
/// without a process.
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/usr/local/lib",
];

fn list(text: &str, pid: Option<i32>) -> i32 {
    let spec = match ProbeSpec::parse(text) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let glob = spec.location.to_string();
    let Some(module) = spec.module.clone() else {
        return fail(format!(
            "`{text}`: name a module to list, e.g. `uprobe:libc:{glob}`"
        ));
    };
    let mut cache = ElfCache::new();
    let files: Vec<std::path::PathBuf> = match pid {
        Some(pid) => {
            let r = symbols::read_maps(pid)
                .and_then(|maps| symbols::modules(pid, &maps, &mut cache))
                .and_then(|mods| {
                    symbols::find_module(&module, &mods, &mut cache).map(|m| m.file.clone())
                });
            match r {
                Ok(f) => vec![f],
                Err(e) => return fail(e),
            }
        }
        None if module.contains('/') => vec![module.clone().into()],
        None => {
            let mut found: Vec<std::path::PathBuf> = Vec::new();
            for dir in LIB_DIRS {
                let Ok(rd) = std::fs::read_dir(dir) else {
                    continue;
                };
                for e in rd.flatten() {
                    let p = e.path();
                    let canon = std::fs::canonicalize(&p).unwrap_or(p.clone());
                    if symbols::module_matches(&module, &p.to_string_lossy(), None)
                        && !found.contains(&canon)
                    {
                        found.push(canon);
                    }
                }
            }
            if found.is_empty() {
                return fail(format!(
                    "no library matching `{module}` in {}; give its path",
                    LIB_DIRS.join(", ")
                ));
            }
            found
        }
    };
    let mut n = 0;
    let explicit = files.len() == 1;
    for f in files {
        let elf = match cache.get(&f) {
            Ok(e) => e,
            Err(e) if explicit => return fail(e),
            // A directory scan meets linker scripts (libc.so) and the like.
            Err(_) => continue,
        };
        let mut seen = std::collections::HashSet::new();
        for s in elf.matching(&glob) {
            let name = s.demangled.clone().unwrap_or_else(|| s.name.clone());
            if seen.insert(name.clone()) {
                println!("uprobe:{}:{name}", f.display());
                n += 1;
            }
        }
    }
    if n == 0 {
        return fail(format!("nothing matches `{text}`"));
    }
    0
}
