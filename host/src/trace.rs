//! `wprobe trace`: a one-shot trace, as a client of `wprobe-core`.
//!
//! It starts its own core (same-user mode: the core gets one end of a
//! socket pair and ends with the connection), or connects to a running one
//! with `--core SOCKET` (a root core in system mode). Events go out as JSON
//! Lines (to stdout, or to `-o FILE`), a summary object follows them, and
//! wprobe's own messages go to stderr, so that with `-o FILE` the traced
//! command's stdout is exactly its own. The exit status is the traced
//! command's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value as Json};
use wprobe_core::engine::{monotonic_ns, Engine};
use wprobe_core::proto::{
    Body, Client, ClientError, Event, EventKind, ExitStatus, Frame, Mode, Notice, Op, ProbeOptions,
};
use wprobe_core::spec::ProbeSpec;
use wprobe_core::symbols::{self, ElfCache};
use wprobe_core::target::ptrace::Ptrace;
use wprobe_host::json::{write_captures, write_place, write_regs, write_u64s};

#[derive(Args)]
pub struct TraceArgs {
    /// A probe: `uprobe:MODULE:SYMBOL[+OFF]`, `uprobe:MODULE:0xADDR` or
    /// `uretprobe:MODULE:SYMBOL`, then captures (`name=%rdi:u64`,
    /// `path=+0($arg1):string`; a return probe takes them at entry) and
    /// `post`, `force`, `maxactive=N`, `entry` (a return probe reports each
    /// call's entry too). May be given several times.
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
    /// Keep every probe on `int3` (a trap per hit) instead of a jump into
    /// a trampoline that writes the hit into shared memory.
    #[arg(long)]
    no_optimize: bool,
    /// Run this WebAssembly handler plugin on every probe's hits
    /// (docs/plugin-abi.md); `FILE.wasm:{"json":"config"}` passes a
    /// configuration. May be given several times. With plugins, the raw
    /// events are printed only with `--events`. SIGHUP reloads the files.
    #[arg(long = "plugin", value_name = "FILE.wasm[:CONFIG]")]
    plugins: Vec<String>,
    /// Print the raw events too when plugins are given.
    #[arg(long)]
    events: bool,
    /// How much CPU time a plugin's handler may use per call, in
    /// milliseconds, before it is cut (a fault).
    #[arg(long, value_name = "MS", default_value_t = 5)]
    plugin_deadline: u64,
    /// How much memory compiling a plugin may take, in MiB: a module whose
    /// compilation needs more is refused (it is compiled in a child
    /// process under this limit).
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    plugin_compile_memory: u64,
    /// Sync probes: the hit thread waits for the plugins' handlers, whose
    /// memory reads are then consistent.
    #[arg(long)]
    sync: bool,
    /// Let sync handlers change registers and return values (plugins whose
    /// manifest asks for mutation).
    #[arg(long, requires = "sync")]
    allow_mutation: bool,
    /// Use the wprobe-core listening on this socket (e.g. a root core in
    /// system mode) instead of starting one.
    #[arg(long, value_name = "SOCKET")]
    core: Option<PathBuf>,
    /// The command to run, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Ctrl-C and SIGTERM presses so far: the first detaches in good order,
/// the second stops waiting for the command.
static STOPS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    STOPS.fetch_add(1, Ordering::SeqCst);
}

fn install_stop_handler() {
    // SAFETY: installing a handler that only adds to an atomic; without
    // SA_RESTART it interrupts the wait for the core's next frame.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
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
    // Whatever can be checked from the files alone is checked before the
    // command runs.
    let mut offline = Engine::new(Ptrace::new());
    for text in &args.probes {
        match ProbeSpec::parse(text)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                offline
                    .check_offline(&s)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }) {
            Ok(()) => {}
            Err(e) => return fail(e),
        }
    }
    let out: std::fs::File = match args.output.as_deref() {
        // A File over stdout's descriptor, not `Stdout`: its line buffer
        // would retry a write a signal interrupted (see LineChunks), and
        // LineChunks buffers already.
        None | Some("-") => match std::io::stdout().as_fd().try_clone_to_owned() {
            Ok(fd) => std::fs::File::from(fd),
            Err(e) => return fail(format!("cannot write to stdout: {e}")),
        },
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => f,
            Err(e) => return fail(format!("cannot write {path}: {e}")),
        },
    };
    let mut json = JsonOut {
        out: LineChunks::file(out),
        texts: Vec::new(),
        regs: !args.no_regs,
        last_flush: monotonic_ns(),
        places: Default::default(),
        last_place: Default::default(),
    };
    let plugins = match crate::trace_plugins::Plugins::load(
        &args.plugins,
        args.plugin_deadline,
        args.plugin_compile_memory,
    ) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if plugins.as_ref().is_some_and(|p| p.want_mutation()) && !args.allow_mutation {
        eprintln!(
            "wprobe: a plugin asks to change registers or return values; add \
             `--sync --allow-mutation` to let it (it runs without)"
        );
    }
    install_stop_handler();
    let name = format!("wprobe trace {}", env!("CARGO_PKG_VERSION"));
    let client = match &args.core {
        Some(socket) => Client::connect(socket, &name),
        None => Client::start_core(&wprobe_host::core_binary(), &name),
    };
    let mut client = match client {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut session = Session {
        client: &mut client,
        json: &mut json,
        spawned: args.pid.is_none(),
        pid: 0,
        traced: BTreeSet::new(),
        exit: None,
        idle: false,
        refused: BTreeMap::new(),
        print_events: plugins.is_none() || args.events,
        plugins,
        return_probes: std::collections::HashSet::new(),
        allow_mutation: args.allow_mutation,
    };
    match session.run(&args) {
        Ok(code) => code,
        Err(e) => {
            let code = fail(e);
            let _ = json.out.flush();
            code
        }
    }
}

/// One trace: the connection, and what it has learned so far.
struct Session<'a> {
    client: &'a mut Client,
    json: &'a mut JsonOut,
    spawned: bool,
    /// The command spawned or the process attached.
    pid: i32,
    /// Processes traced now (the first, and fork children followed).
    traced: BTreeSet<i32>,
    exit: Option<ExitStatus>,
    /// The core traces nothing any more.
    idle: bool,
    /// A probe was refused while the program ran (a library mapped later);
    /// the summary says so, per probe.
    refused: BTreeMap<u32, String>,
    print_events: bool,
    plugins: Option<crate::trace_plugins::Plugins>,
    /// Probes that are return probes (their entry events may keep per-call
    /// data).
    return_probes: std::collections::HashSet<u32>,
    allow_mutation: bool,
}

impl Session<'_> {
    fn run(&mut self, args: &TraceArgs) -> Result<i32, ClientError> {
        self.client.call(Op::Configure {
            follow_fork: args.follow_fork,
            follow_exec: args.follow_exec,
            no_optimize: args.no_optimize,
        })?;
        let started = match args.pid {
            Some(pid) => self.client.call(Op::Attach { pid }),
            // As from a shell: this command's environment and terminal,
            // whether the core is its own or a system core.
            None => self.client.spawn_here(args.command.clone()),
        };
        self.pid = match started? {
            Body::Target { pid } => pid,
            other => return Err(unexpected(&other)),
        };
        self.traced.insert(self.pid);
        let want_entries = self.plugins.as_ref().is_some_and(|p| p.want_entries());
        for text in &args.probes {
            let text = &absolute_module(text);
            let is_return =
                ProbeSpec::parse(text).is_ok_and(|s| s.kind == wprobe_core::spec::Kind::Return);
            // A plugin with an entry handler on a return probe: the core
            // reports each call's entry too (kretprobes' entry handler).
            let spec =
                if is_return && want_entries && !text.split_whitespace().any(|w| w == "entry") {
                    format!("{text} entry")
                } else {
                    text.clone()
                };
            let added = self.client.call(Op::AddProbe {
                spec,
                options: ProbeOptions {
                    mode: if args.sync { Mode::Sync } else { Mode::Async },
                    allow_mutation: args.allow_mutation,
                    sync_deadline_us: 0,
                    no_optimize: false,
                },
            });
            match added {
                Ok(Body::Probe { id }) => {
                    if is_return {
                        self.return_probes.insert(id);
                    }
                    self.json.texts.push((id, text.clone()))
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(e) => {
                    eprintln!("wprobe: {e}");
                    self.give_up()?;
                    return Ok(2);
                }
            }
        }
        if self.spawned {
            self.client.call(Op::Resume { pid: self.pid })?;
        }
        let code = self.follow()?;
        self.summary()?;
        let _ = self.json.out.flush();
        Ok(code)
    }

    /// Events and notices until the end: every traced process gone, and a
    /// spawned command's end known.
    fn follow(&mut self) -> Result<i32, ClientError> {
        let mut stopping = 0;
        loop {
            let stops = STOPS.load(Ordering::SeqCst);
            if stops > stopping {
                stopping = stops;
                if stops == 1 {
                    self.detach_all()?;
                    eprintln!(
                        "wprobe: detached from process {}; it runs on untraced",
                        self.pid
                    );
                } else {
                    // A second Ctrl-C: stop waiting for the command.
                    return Ok(130);
                }
            }
            if self.idle && (!self.spawned || self.exit.is_some()) {
                break;
            }
            if let Some(p) = self.plugins.as_mut() {
                p.reload_if_asked();
            }
            match self.client.next(Some(Duration::from_millis(100))) {
                Ok(Some(f)) => self.frame(f)?,
                // A lone event is not left in the buffer while nothing
                // else comes (a program blocked after one hit).
                Ok(None) => self.json.maybe_flush(),
                Err(ClientError::Closed) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(match self.exit {
            Some(ExitStatus::Code(c)) if self.spawned => c,
            Some(ExitStatus::Signal(s)) if self.spawned => 128 + s,
            _ => 0,
        })
    }

    fn frame(&mut self, f: Frame) -> Result<(), ClientError> {
        match f {
            Frame::Events(batch) => {
                for e in &batch {
                    if self.print_events {
                        self.json.event(e);
                    }
                    self.traced.insert(e.pid);
                    let verdict = match self.plugins.as_mut() {
                        Some(p) => p.handle(
                            e,
                            self.return_probes.contains(&e.probe),
                            self.allow_mutation,
                            &mut self.json.out,
                        ),
                        None => None,
                    };
                    if e.sync {
                        let action = verdict.unwrap_or(wprobe_core::proto::Action::Continue);
                        self.client.verdict(e.seq, action)?;
                    }
                }
                self.json.maybe_flush();
            }
            Frame::Loss { probe, count } => eprintln!(
                "wprobe: {} lost {count} events: the output did not keep up",
                self.json.text(probe)
            ),
            Frame::Notice(n) => {
                self.json.notice(&n);
                match n {
                    Notice::Armed { pid, .. } => {
                        self.traced.insert(pid);
                    }
                    Notice::Exited { pid, status } => {
                        self.traced.remove(&pid);
                        if let Some(p) = &self.plugins {
                            p.process_exited(pid);
                        }
                        if pid == self.pid {
                            self.exit = Some(status);
                        }
                    }
                    Notice::Idle => {
                        self.idle = true;
                        self.traced.clear();
                    }
                    // Known only now (a library loaded later): the
                    // program goes on untouched, without this probe.
                    // The engine holds the process until told: resume it.
                    Notice::Refused { probe, pid, reason } => {
                        self.refused.insert(probe, reason);
                        match self.client.call(Op::Resume { pid }) {
                            // Gone meanwhile.
                            Ok(_) | Err(ClientError::Core { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    _ => {}
                }
            }
            Frame::Error { message, .. } => eprintln!("wprobe: {message}"),
            _ => {}
        }
        Ok(())
    }

    /// Lets every traced process go; they run on untraced.
    fn detach_all(&mut self) -> Result<(), ClientError> {
        for pid in std::mem::take(&mut self.traced) {
            match self.client.call(Op::Detach { pid }) {
                // Gone meanwhile.
                Ok(_) | Err(ClientError::Core { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A probe could not be placed: a spawned command is killed (it has
    /// not run, or would run unprobed), an attached process let go as it
    /// was.
    fn give_up(&mut self) -> Result<(), ClientError> {
        if self.spawned {
            // SAFETY: signalling the command this trace started.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            return Ok(());
        }
        self.detach_all()
    }

    fn summary(&mut self) -> Result<(), ClientError> {
        let probes = match self.client.call(Op::ListProbes)? {
            Body::Probes(p) => p,
            other => return Err(unexpected(&other)),
        };
        let probes: Vec<Json> = probes
            .iter()
            .map(|p| {
                // The place, canonical, as the engine names it.
                let place = ProbeSpec::parse(&p.spec)
                    .map(|s| wprobe_core::engine::spec_text(&s))
                    .unwrap_or_else(|_| p.spec.clone());
                let mut j = json!({
                    "probe": p.id,
                    "spec": place,
                    "hits": p.hits,
                    "nmissed": p.nmissed,
                    "dropped": p.dropped,
                });
                if let Some(reason) = self.refused.get(&p.id) {
                    j["refused"] = json!(reason);
                }
                j
            })
            .collect();
        // A stop signal that comes while the summary is made or written
        // (one that came before made it: Ctrl-C prints the maps) cuts it:
        // the maps of many keys take long to make, and stderr may be a
        // pipe nobody reads.
        let before = STOPS.load(Ordering::SeqCst);
        let stop = || STOPS.load(Ordering::SeqCst) > before;
        self.json.out.careful_after = Some(before);
        let mut whole = true;
        if let Some(p) = &self.plugins {
            // Through LineChunks: whole lines, and a write blocked on a
            // full pipe gives up on a stop signal (eprintln! waits on).
            let mut err = match std::io::stderr().as_fd().try_clone_to_owned() {
                Ok(fd) => LineChunks::file(std::fs::File::from(fd)),
                Err(_) => LineChunks::new(Box::new(std::io::sink())),
            };
            err.careful_after = Some(before);
            whole = p.summary(&mut self.json.out, &mut err, &stop);
            if !whole {
                let _ = writeln!(err, "wprobe: the summary was cut short by a stop signal");
            }
            let _ = err.flush();
        }
        let exit = match self.exit {
            Some(ExitStatus::Code(c)) => json!({ "code": c }),
            Some(ExitStatus::Signal(s)) => json!({ "signal": s }),
            None => Json::Null,
        };
        let mut summary = json!({ "probes": probes, "exit": exit });
        if !whole {
            summary["cut"] = json!(true);
        }
        self.json.write(&json!({ "summary": summary }));
        Ok(())
    }
}

/// The spec with a relative module path (`./prog`) made absolute: the core
/// resolves paths as the target sees them, not from our directory.
fn absolute_module(text: &str) -> String {
    let Ok(spec) = ProbeSpec::parse(text) else {
        return text.to_string();
    };
    match (&spec.module, std::env::current_dir()) {
        (Some(m), Ok(cwd)) if m.contains('/') && !m.starts_with('/') => {
            let abs = cwd.join(m);
            text.replacen(&format!(":{m}:"), &format!(":{}:", abs.display()), 1)
        }
        _ => text.to_string(),
    }
}

fn unexpected(body: &Body) -> ClientError {
    ClientError::Core {
        kind: wprobe_core::proto::ErrorKind::Internal,
        message: format!("unexpected reply from wprobe-core: {body:?}"),
    }
}

/// A buffered writer that writes whole lines only, in writes of at most
/// `PIPE_BUF` bytes where lines allow: on a pipe shared with the traced
/// command (stdout), such writes are atomic, so the command's own output
/// is never cut into the middle of an event line, nor an event line into
/// the command's.
///
/// Each byte is looked at a bounded number of times, however long a line
/// is: `write` notes whether new data holds a newline, and the buffer is
/// scanned only then (a line of megabytes written in small pieces once
/// made the output quadratic).
struct LineChunks {
    inner: Box<dyn Write>,
    buf: Vec<u8>,
    /// `buf` holds a newline (it holds none after `write_lines`).
    has_line: bool,
    /// A stop signal came while a write was blocked (a full pipe nobody
    /// reads): the output is given up, so that wprobe can end.
    stopped: bool,
    /// The descriptor under `inner`, when it is a file.
    fd: Option<RawFd>,
    /// Once the stop signals counted pass this (the summary is being
    /// written), writes never wait: see `write_all_or_stop`.
    careful_after: Option<u32>,
}

/// `write_all`, but a write interrupted by a signal while Ctrl-C or
/// SIGTERM has been pressed gives the output up (then and from then on)
/// instead of waiting again: with the reader of a pipe gone quiet, the
/// signals are honoured.
///
/// `careful`: a stop signal came since the output was told to be careful
/// (see `LineChunks::careful_after`), and writing must no longer wait:
/// each write is of at most `PIPE_BUF` bytes, made only when `poll` says
/// the descriptor takes it now (a pipe then has a free page), and the
/// output is given up when it does not.
fn write_all_or_stop(
    w: &mut dyn Write,
    mut data: &[u8],
    stopped: &mut bool,
    careful: Option<RawFd>,
) -> std::io::Result<()> {
    let gone = || {
        std::io::Error::other("the output was given up: a stop signal came while it was blocked")
    };
    while !data.is_empty() {
        if *stopped {
            return Err(gone());
        }
        let mut n = data.len();
        if let Some(fd) = careful {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one pollfd, ours, for a descriptor the output owns;
            // a zero timeout never waits.
            let ready = unsafe { libc::poll(&mut p, 1, 0) };
            if ready != 1 || p.revents & libc::POLLOUT == 0 {
                *stopped = true;
                continue;
            }
            n = n.min(LineChunks::PIPE_BUF);
        }
        match w.write(&data[..n]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if STOPS.load(Ordering::SeqCst) > 0 {
                    *stopped = true;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl LineChunks {
    const PIPE_BUF: usize = 4096;

    fn new(inner: Box<dyn Write>) -> Self {
        LineChunks {
            inner,
            buf: Vec::with_capacity(1 << 16),
            has_line: false,
            stopped: false,
            fd: None,
            careful_after: None,
        }
    }

    /// Over a file (stdout, stderr, `-o FILE`): its descriptor can be
    /// polled once the output must be careful.
    fn file(f: std::fs::File) -> Self {
        let fd = f.as_raw_fd();
        LineChunks {
            fd: Some(fd),
            ..LineChunks::new(Box::new(f))
        }
    }

    /// The descriptor to poll before each write, when a stop signal came
    /// since `careful_after` was set.
    fn careful(&self) -> Option<RawFd> {
        let n = self.careful_after?;
        if STOPS.load(Ordering::SeqCst) > n {
            self.fd
        } else {
            None
        }
    }

    /// Writes the complete lines buffered.
    fn write_lines(&mut self) -> std::io::Result<()> {
        if !self.has_line {
            return Ok(());
        }
        // Scanned from the end: only the unfinished last line is passed
        // over, and it was written since the last call.
        let Some(end) = self.buf.iter().rposition(|&b| b == b'\n') else {
            self.has_line = false;
            return Ok(());
        };
        let mut start = 0;
        while start <= end {
            let limit = (start + Self::PIPE_BUF).min(end + 1);
            let cut = match self.buf[start..limit].iter().rposition(|&b| b == b'\n') {
                Some(i) => start + i + 1,
                // One line longer than PIPE_BUF: it goes in one write.
                None => {
                    start
                        + self.buf[start..=end]
                            .iter()
                            .position(|&b| b == b'\n')
                            .unwrap_or(end)
                        + 1
                }
            };
            let careful = self.careful();
            write_all_or_stop(
                &mut self.inner,
                &self.buf[start..cut],
                &mut self.stopped,
                careful,
            )?;
            start = cut;
        }
        self.buf.drain(..=end);
        self.has_line = false;
        Ok(())
    }
}

impl Write for LineChunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.has_line |= data.contains(&b'\n');
        if self.has_line && self.buf.len() >= 1 << 16 {
            self.write_lines()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_lines()?;
        if self.stopped {
            return Ok(());
        }
        self.inner.flush()
    }
}

/// Events as JSON Lines.
struct JsonOut {
    out: LineChunks,
    texts: Vec<(u32, String)>,
    regs: bool,
    last_flush: u64,
    /// Where each probe was armed, per process (`MODULE:SYMBOL+OFF`).
    places: std::collections::HashMap<(u32, i32), String>,
    /// Where each probe was armed last, in any process.
    last_place: std::collections::HashMap<u32, String>,
}

impl JsonOut {
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

    fn text(&self, id: u32) -> String {
        self.texts
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| format!("probe {id}"))
    }

    /// One event as one JSON line, written field by field rather than
    /// through a `serde_json::Map` (a map of 27 registers per event was
    /// most of the cost of one).
    fn event(&mut self, e: &Event) {
        let kind = match e.kind {
            EventKind::Entry => "entry",
            EventKind::Post => "post",
            EventKind::Return => "return",
        };
        let regs = e.regs.to_x86_64().unwrap_or_default();
        let o = &mut self.out;
        let _ = write!(
            o,
            "{{\"probe\":{},\"kind\":\"{kind}\",\"pid\":{},\"tid\":{},\"time_ns\":{},\"addr\":\"{:#x}\"",
            e.probe, e.pid, e.tid, e.time_ns, e.addr
        );
        let spec = self
            .texts
            .iter()
            .find(|(i, _)| *i == e.probe)
            .map_or("", |(_, t)| t.as_str());
        // Where it was armed in this process; a fork child inherits the
        // parent's breakpoints without a notice of its own.
        let location = self
            .places
            .get(&(e.probe, e.pid))
            .or_else(|| self.last_place.get(&e.probe))
            .map_or("", String::as_str);
        let o = &mut self.out;
        write_place(o, spec, location);
        let _ = o.write_all(b",\"args\":");
        write_u64s(o, &regs.args());
        if let Some(r) = &e.ret {
            let _ = write!(
                o,
                ",\"retval\":{},\"return_address\":\"{:#x}\",\"entry_time_ns\":{},\"latency_ns\":{},\"entry_args\":",
                r.value,
                r.return_address,
                r.entry_time_ns,
                e.time_ns.saturating_sub(r.entry_time_ns)
            );
            write_u64s(o, &r.entry_args);
        }
        write_captures(o, &e.captures);
        if self.regs {
            let _ = o.write_all(b",\"regs\":");
            write_regs(o, &regs);
        }
        let _ = o.write_all(b"}\n");
        self.maybe_flush();
    }

    fn notice(&mut self, n: &Notice) {
        match n {
            Notice::Armed {
                probe,
                pid,
                addr,
                location,
            } => {
                eprintln!(
                    "wprobe: {} armed in process {pid} at {addr:#x} ({location})",
                    self.text(*probe)
                );
                self.places.insert((*probe, *pid), location.clone());
                self.last_place.insert(*probe, location.clone());
            }
            Notice::Pending { probe, reason, .. } => {
                eprintln!("wprobe: {} pending: {reason}", self.text(*probe))
            }
            Notice::Refused { reason, .. } => {
                eprintln!("wprobe: refused: {reason}; the program runs on without this probe")
            }
            Notice::Gone { probe, reason, .. } => {
                eprintln!("wprobe: {} gone: {reason}", self.text(*probe))
            }
            Notice::Placed {
                probe, pid, state, ..
            } => eprintln!("wprobe: {} in process {pid}: {state}", self.text(*probe)),
            Notice::Exited { .. } | Notice::Idle => {}
            Notice::Warning { text } => eprintln!("wprobe: warning: {text}"),
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

#[cfg(test)]
mod line_chunks_tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records each write it gets.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(data.to_vec());
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn whole_lines_in_pipe_sized_writes() {
        let w = Writes::default();
        let mut out = LineChunks::new(Box::new(w.clone()));
        let short = vec![b'a'; 99];
        for _ in 0..1000 {
            out.write_all(&short).unwrap();
            out.write_all(b"\n").unwrap();
        }
        let long = vec![b'b'; 10_000];
        out.write_all(&long).unwrap();
        out.write_all(b"\ntail").unwrap();
        out.flush().unwrap();
        let writes = w.0.lock().unwrap();
        let all: Vec<u8> = writes.concat();
        assert_eq!(all.len(), 1000 * 100 + 10_001, "the unfinished line stays");
        for (i, chunk) in writes.iter().enumerate() {
            assert_eq!(chunk.last(), Some(&b'\n'), "write {i} ends a line");
            assert!(
                chunk.len() <= LineChunks::PIPE_BUF || !chunk[..chunk.len() - 1].contains(&b'\n'),
                "write {i}: {} bytes, more than one line past PIPE_BUF",
                chunk.len()
            );
        }
        assert!(
            writes.iter().any(|c| c.len() == 10_001),
            "the long line in one write"
        );
    }

    #[test]
    fn a_line_of_megabytes_in_small_writes_is_linear() {
        // 16 MiB in 16-byte writes (a JSON summary of maps with long keys
        // is written so). Rescanning the buffer at every write once it
        // passed 64 KiB made this some 10^13 byte comparisons: hours. The
        // bound below is for a hang, not a measurement.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let w = Writes::default();
            let mut out = LineChunks::new(Box::new(w.clone()));
            let piece = [b'x'; 16];
            for _ in 0..(1 << 20) {
                out.write_all(&piece).unwrap();
            }
            out.write_all(b"\n").unwrap();
            out.flush().unwrap();
            let n: usize = w.0.lock().unwrap().iter().map(Vec::len).sum();
            let _ = tx.send(n);
        });
        let n = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("16 MiB through LineChunks within two minutes");
        assert_eq!(n, (16 << 20) + 1);
    }

    #[test]
    fn a_stop_signal_gives_up_a_blocked_output() {
        // A pipe nobody reads: once full, a write blocks. SIGTERM (our
        // handler, no SA_RESTART) interrupts it, and the output is given
        // up instead of waited on again.
        install_stop_handler();
        let mut fds = [0; 2];
        // SAFETY: a valid array of two descriptors for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe(2) just made these descriptors, owned from here on.
        let (reader, writer) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            let _ = tx.send(unsafe { libc::pthread_self() });
            let mut out = LineChunks::new(Box::new(writer));
            let line = [b'y'; 1023];
            let mut result = Ok(());
            while result.is_ok() {
                result = out
                    .write_all(&line)
                    .and_then(|_| out.write_all(b"\n"))
                    .and_then(|_| out.flush());
            }
            result
        });
        let id = rx.recv().unwrap();
        // Signal until the writer gives up (each signal interrupts the
        // write it is blocked in, if it is blocked yet).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !thread.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the blocked writer did not give up"
            );
            // SAFETY: signalling a thread of this process that is alive
            // (not finished, and joined only below).
            unsafe { libc::pthread_kill(id, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(10));
        }
        let e = thread.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("given up"), "{e}");
        drop(reader);
    }
}
