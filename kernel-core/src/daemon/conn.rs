//! One client connection: its engine, on this thread; a reader thread; a
//! writer thread.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::creds::{self, Peer};
use super::queue::{write_frames, Counters, EventQueue, Out, Outbox};
use super::{Config, Handle, Registry, Waker, TERMINATE};
use crate::engine::{self, Engine, Hit, ProbeId, RunEnd, Sink};
use crate::proto::{
    self, Action, Body, ErrorKind, Event, EventKind, Frame, Incompatible, Mode, Op, ProbeInfo,
    ProbeOptions, Welcome, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use crate::spec::ProbeSpec;
use crate::target::ptrace::Ptrace;
use crate::target::{SpawnConfig, TargetError};

/// What the reader thread and other connections hand the engine thread.
pub(super) enum Control {
    /// A request, with the descriptors the client sent for it (a Spawn
    /// with `SpawnStdio::Passed`).
    Request(proto::Request, Vec<OwnedFd>),
    /// Root's client on another connection asks for this one's probes.
    Snapshot(Sender<Vec<ProbeInfo>>),
    /// The client closed the connection, died, or broke the protocol.
    Gone,
}

/// Serves one connection to its end, on the calling thread.
pub(super) fn run(stream: UnixStream, config: Config, registry: Option<Arc<Registry>>) {
    let Ok(peer) = creds::peer_of(&stream) else {
        return;
    };
    match handshake(&stream) {
        Ok(true) => {}
        _ => return,
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !config.system && peer.uid != me && !peer.is_root() {
        let _ = proto::write_frame(
            &mut &stream,
            &Frame::Error {
                id: 0,
                kind: ErrorKind::Permission,
                message: format!(
                    "this wprobe-core serves only user {me} (it runs in same-user mode); user \
                     {} needs its own core, or a core started as root with --system",
                    peer.uid
                ),
            },
        );
        return;
    }
    let limited = config.system && !peer.is_root();
    let ptrace = if limited {
        Ptrace::spawning_as(creds::spawn_credentials(&peer))
    } else {
        Ptrace::new()
    };
    let mut engine = Engine::new(ptrace);
    if limited {
        engine.set_exec_guard(Box::new(move |pid| {
            creds::may_trace(&peer, pid)
                .err()
                .map(|why| format!("after execve, {why}; the process was let go untouched"))
        }));
    }
    // SAFETY: gettid has no preconditions.
    let engine_tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
    let waker = Waker::new(engine_tid);
    // Optimized probes' events arrive without a stop: a watcher of each
    // ring wakes this thread out of waitpid, as a request does.
    let ring_waker = waker.clone();
    engine.set_ring_waker(Arc::new(move || ring_waker.wake()));

    let (ctl_tx, ctl_rx) = mpsc::channel::<Control>();
    let (verdict_tx, verdict_rx) = mpsc::channel::<(u64, Action)>();
    let (out_tx, out_rx) = mpsc::channel::<Out>();
    let queue = Arc::new(EventQueue::new(config.queue));
    let out_tx = Outbox::new(out_tx, queue.clone());
    let counters = Arc::new(Counters::default());

    let conn_id = registry.as_ref().map(|r| {
        r.add(Handle {
            ctl: ctl_tx.clone(),
            waker: waker.clone(),
        })
    });
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let Ok(writer_stream) = stream.try_clone() else {
        return;
    };
    // A client that stops reading must not hold the core (and its targets)
    // forever: a write that cannot go on for this long ends the connection.
    let _ = writer_stream.set_write_timeout(Some(config.client_timeout));
    let w = waker.clone();
    let ctl = ctl_tx.clone();
    let o = out_tx.clone();
    std::thread::spawn(move || read_frames(reader, ctl, verdict_tx, o, w));
    let (q, c) = (queue.clone(), counters.clone());
    let (w, ctl) = (waker.clone(), ctl_tx.clone());
    let writer = std::thread::spawn(move || {
        // A writer that cannot write (the client stopped reading for the
        // write timeout, or the socket broke) ends the connection: its
        // targets are let go now, not kept traced for a client that
        // hears nothing.
        write_frames(writer_stream, out_rx, &q, &c);
        let _ = ctl.send(Control::Gone);
        w.wake();
    });

    let mut conn = Conn {
        peer,
        config,
        out: out_tx,
        counters,
        registry: registry.clone(),
        conn_id,
        children: Vec::new(),
    };
    let mut sink = QueueSink {
        queue: queue.clone(),
        out: conn.out.clone(),
        counters: conn.counters.clone(),
        verdicts: verdict_rx,
        seq: 0,
        probes: HashMap::new(),
    };
    // A panic in the engine loop (a bug) must not leave breakpoints behind:
    // it is caught, and everything is disarmed and let go as on a normal
    // end, as far as the engine's state still allows.
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve(&mut engine, &mut sink, &mut conn, &ctl_rx, &waker)
    }));
    if served.is_err() {
        eprintln!(
            "wprobe-core: internal error; disarming and detaching every target of this client"
        );
    }
    if let (Some(r), Some(id)) = (&registry, conn_id) {
        r.remove(id);
    }
    waker.finish();
    // The client is gone or we were told to stop: leave every target as it
    // was found.
    let _ = engine.detach_all();
    engine.drain(&mut sink);
    // Programs it spawned that still run are reaped by the core when they
    // end (this thread, their parent, is ending).
    conn.reap_children(&engine, &queue);
    if let Some(r) = &registry {
        r.adopt(std::mem::take(&mut conn.children));
    }
    let _ = conn.out.send(Out::Close);
    drop(sink);
    // The targets are safe now; what is left is telling the client. One
    // that does not read gets two seconds, then its connection is cut.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        let _ = stream.shutdown(std::net::Shutdown::Both);
    });
    let _ = writer.join();
}

/// The connection's state besides the engine and the sink.
struct Conn {
    peer: Peer,
    config: Config,
    out: Outbox,
    counters: Arc<Counters>,
    registry: Option<Arc<Registry>>,
    conn_id: Option<u64>,
    /// Programs this connection spawned: children of this thread, reaped
    /// here once the engine no longer traces them (detached, or let go at
    /// an execve), so that their end is still reported.
    children: Vec<i32>,
}

impl Conn {
    /// Reports and reaps spawned programs that ended untraced.
    fn reap_children(&mut self, engine: &Engine<Ptrace>, queue: &EventQueue) {
        let traced = engine.pids();
        self.children.retain(|&pid| {
            if traced.contains(&pid) {
                return true;
            }
            let mut status = 0;
            // SAFETY: a non-blocking wait for our own child.
            let r = unsafe {
                libc::waitpid(
                    pid,
                    &mut status,
                    libc::WNOHANG | libc::__WALL | libc::__WNOTHREAD,
                )
            };
            if r == 0 {
                return true;
            }
            if r == pid {
                let status = if libc::WIFEXITED(status) {
                    proto::ExitStatus::Code(libc::WEXITSTATUS(status))
                } else {
                    proto::ExitStatus::Signal(libc::WTERMSIG(status))
                };
                queue.push_notice(proto::Notice::Exited { pid, status });
            }
            false
        });
    }
}

/// The engine thread's loop: requests first, then the engine until woken.
fn serve(
    engine: &mut Engine<Ptrace>,
    sink: &mut QueueSink,
    conn: &mut Conn,
    ctl: &Receiver<Control>,
    waker: &Waker,
) {
    let mut had_targets = false;
    loop {
        waker.flag.store(false, Ordering::SeqCst);
        let mut gone = false;
        while let Ok(c) = ctl.try_recv() {
            gone |= control(engine, sink, conn, c);
        }
        sink.refuse_stale_verdicts();
        if gone || TERMINATE.load(Ordering::SeqCst) {
            return;
        }
        let idle = engine.pids().is_empty();
        if idle && had_targets {
            sink.queue.push_notice(proto::Notice::Idle);
        }
        had_targets = !idle;
        if idle {
            conn.reap_children(engine, &sink.queue);
            // Nothing to wait for but the client.
            match ctl.recv_timeout(Duration::from_millis(100)) {
                Ok(c) => {
                    if control(engine, sink, conn, c) {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            continue;
        }
        match engine.run(sink, &waker.flag) {
            // A refusal found while running was said as a notice.
            Ok(RunEnd::AllExited | RunEnd::Stopped | RunEnd::Refused) => {}
            Err(e) => sink.queue.push_notice(proto::Notice::Warning {
                text: format!("engine: {e}"),
            }),
        }
    }
}

/// Serves one control item; true when the client is gone.
fn control(engine: &mut Engine<Ptrace>, sink: &mut QueueSink, conn: &mut Conn, c: Control) -> bool {
    match c {
        Control::Request(r, fds) => {
            let frame = handle(engine, sink, conn, r, fds);
            let _ = conn.out.send(Out::Frame(Box::new(frame)));
            false
        }
        Control::Snapshot(tx) => {
            let _ = tx.send(probe_infos(engine, sink, conn));
            false
        }
        Control::Gone => true,
    }
}

/// A probe's spec and options, as the client gave them (the deadline as
/// applied).
struct ProbeEntry {
    spec: String,
    options: ProbeOptions,
}

/// Turns hits into events in the client's queue, and waits for the
/// client's verdict on sync probes.
struct QueueSink {
    queue: Arc<EventQueue>,
    out: Outbox,
    counters: Arc<Counters>,
    verdicts: Receiver<(u64, Action)>,
    seq: u64,
    probes: HashMap<ProbeId, ProbeEntry>,
}

impl QueueSink {
    fn event(&mut self, hit: &Hit<'_>, sync: bool) -> Event {
        self.seq += 1;
        Event::from_hit(hit, self.seq, sync)
    }

    fn bad_verdict(&self, message: String) {
        let _ = self.out.send(Out::Frame(Box::new(Frame::Error {
            id: 0,
            kind: ErrorKind::BadVerdict,
            message,
        })));
    }

    /// Verdicts that arrived while no sync hit waited for them.
    fn refuse_stale_verdicts(&mut self) {
        while let Ok((seq, _)) = self.verdicts.try_recv() {
            self.bad_verdict(stale(seq));
        }
    }

    /// What a verdict does to the thread, if it is allowed.
    fn apply(
        &self,
        hit: &Hit<'_>,
        seq: u64,
        options: ProbeOptions,
        action: Action,
    ) -> engine::Verdict {
        let refuse = |why: String| {
            self.bad_verdict(format!(
                "verdict for seq {seq} (probe {}): {why}; the thread went on unchanged",
                hit.probe.0
            ));
            engine::Verdict::Continue
        };
        if action != Action::Continue && !options.allow_mutation {
            return refuse(
                "the probe does not allow mutation (create it with allow_mutation)".into(),
            );
        }
        match action {
            Action::Continue => engine::Verdict::Continue,
            Action::SetRegs(set) => match set.to_x86_64() {
                Some(regs) => engine::Verdict::SetRegs(regs),
                None => refuse(format!(
                    "registers of architecture {} given for an x86_64 thread",
                    set.arch()
                )),
            },
            Action::SetReturn(value) => {
                if EventKind::from(hit.kind) != EventKind::Return {
                    return refuse("SetReturn is only for return events".into());
                }
                let mut regs = *hit.regs;
                regs.rax = value;
                engine::Verdict::SetRegs(regs)
            }
        }
    }
}

fn stale(seq: u64) -> String {
    format!(
        "no sync hit waits for a verdict with seq {seq}: it is unknown, or its deadline passed \
         and the thread went on unchanged"
    )
}

impl Sink for QueueSink {
    fn hit(&mut self, hit: &Hit<'_>) {
        let event = self.event(hit, false);
        if !self.queue.push_event(event) {
            // Counted here, said by the writer in Loss frames between
            // event batches: a slow client learns of every loss.
            self.counters.drop_event(hit.probe.0);
        }
    }

    fn notice(&mut self, notice: &engine::Notice) {
        self.queue.push_notice(notice.clone().into());
    }

    fn decide(&mut self, hit: &Hit<'_>) -> engine::Verdict {
        let Some(options) = self
            .probes
            .get(&hit.probe)
            .map(|p| p.options)
            .filter(|o| o.mode == Mode::Sync)
        else {
            self.hit(hit);
            return engine::Verdict::Continue;
        };
        let deadline = Instant::now() + Duration::from_micros(options.sync_deadline_us.into());
        let event = self.event(hit, true);
        let seq = event.seq;
        if !self.queue.push_event_until(event, deadline) {
            self.counters.miss_sync(hit.probe.0);
            return engine::Verdict::Continue;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.verdicts.recv_timeout(left) {
                Ok((s, action)) if s == seq => return self.apply(hit, seq, options, action),
                Ok((s, _)) => self.bad_verdict(stale(s)),
                Err(_) => {
                    self.counters.miss_sync(hit.probe.0);
                    return engine::Verdict::Continue;
                }
            }
        }
    }
}

/// Reads the client's Hello and answers Welcome or Incompatible. Returns
/// whether the connection goes on.
fn handshake(stream: &UnixStream) -> std::io::Result<bool> {
    let mut reader = stream;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let hello = proto::read_frame(&mut reader);
    stream.set_read_timeout(None)?;
    let mut w = stream;
    let reply = match hello {
        Ok(Some(Frame::Hello(h))) => {
            match proto::negotiate(&h, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION) {
                Ok(version) => {
                    let welcome = Frame::Welcome(Welcome {
                        version,
                        core_pid: std::process::id(),
                        max_frame: proto::MAX_FRAME,
                    });
                    return Ok(proto::write_frame(&mut w, &welcome).is_ok());
                }
                Err(inc) => Frame::Incompatible(inc),
            }
        }
        Ok(Some(other)) => Frame::Incompatible(Incompatible {
            supported: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
            message: format!("expected Hello as the first frame, got {}", other.name()),
        }),
        Ok(None) => return Ok(false),
        Err(e) => Frame::Incompatible(Incompatible {
            supported: (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
            message: format!("this is not a wprobe-core client: {e}"),
        }),
    };
    let _ = proto::write_frame(&mut w, &reply);
    Ok(false)
}

/// Descriptors the reader keeps for requests still to come; beyond, the
/// oldest are closed (a client that sends descriptors for no request only
/// wastes its own).
const PENDING_FDS: usize = 6;

/// Decodes the client's frames: requests go to the engine thread, verdicts
/// to the sink waiting for them. A malformed frame is answered with a
/// BadRequest (through the writer, which owns the socket's write side)
/// and ends the connection. Descriptors that came with the bytes are kept
/// in order and handed to the request that asks for them.
fn read_frames(
    stream: UnixStream,
    ctl: Sender<Control>,
    verdicts: Sender<(u64, Action)>,
    out: Outbox,
    waker: Arc<Waker>,
) {
    let mut reader = proto::FrameReader::new();
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let gone = |message: Option<String>| {
        if let Some(message) = message {
            let _ = out.send(Out::Frame(Box::new(Frame::Error {
                id: 0,
                kind: ErrorKind::BadRequest,
                message,
            })));
        }
        let _ = ctl.send(Control::Gone);
        waker.wake();
    };
    loop {
        match proto::scm::recv_with_fds(&stream, &mut buf) {
            Ok((0, _)) | Err(_) => return gone(None),
            Ok((n, new)) => {
                reader.push(&buf[..n]);
                fds.extend(new);
                while fds.len() > PENDING_FDS {
                    fds.pop_front();
                }
            }
        }
        loop {
            match reader.next_frame() {
                Ok(Some(Frame::Request(r))) if r.id != 0 => {
                    let passed = if matches!(
                        r.op,
                        Op::Spawn {
                            stdio: proto::SpawnStdio::Passed,
                            ..
                        }
                    ) {
                        let n = fds.len().min(3);
                        fds.drain(..n).collect()
                    } else {
                        Vec::new()
                    };
                    let _ = ctl.send(Control::Request(r, passed));
                    waker.wake();
                }
                Ok(Some(Frame::Request(_))) => {
                    return gone(Some("request id 0 is reserved; use a nonzero id".into()))
                }
                // Read by the sink waiting for it, on the engine thread.
                Ok(Some(Frame::Verdict { seq, action })) => {
                    let _ = verdicts.send((seq, action));
                }
                Ok(Some(f)) => {
                    return gone(Some(format!(
                        "a {} frame is not expected from a client after the handshake",
                        f.name()
                    )))
                }
                Err(e) => return gone(Some(e.to_string())),
                Ok(None) => break,
            }
        }
    }
}

/// With `WPROBE_CORE_FAULT_INJECTION=1` in the core's environment, an
/// AddProbe of this spec panics on the engine thread: the tests check that
/// such a bug costs only its own connection, whose targets are let go
/// cleanly. Without the variable it is an ordinary (bad) spec.
const INJECTED_PANIC: &str = "wprobe-test:panic";

fn fault_injection() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WPROBE_CORE_FAULT_INJECTION").as_deref() == Ok("1"))
}

/// The environment a program spawned in system mode gets when its client
/// gives none.
const CLEAN_PATH: &str = "PATH=/usr/local/bin:/usr/bin:/bin";

/// What a spawned program gets besides its argv. In same-user mode the
/// core is the client's own process, so what the client leaves unsaid is
/// the core's. In system mode nothing of the root core reaches it: its
/// descriptors 0–2 are the client's (passed over the socket) or
/// /dev/null, its environment is the client's or a clean one, and it runs
/// in a session of its own, with no terminal to push keystrokes into.
fn spawn_config(
    conn: &Conn,
    env: Option<Vec<String>>,
    stdio: proto::SpawnStdio,
    fds: Vec<OwnedFd>,
) -> Result<SpawnConfig, (ErrorKind, String)> {
    let system = conn.config.system;
    if system && conn.peer.uid == 0 && !conn.peer.is_root() {
        // Root's programs get every capability at execve; dropping them
        // for this client is not done here.
        return Err((
            ErrorKind::Permission,
            "a client running as uid 0 without CAP_SYS_PTRACE may not spawn through the system \
             core (its programs would run with all of root's capabilities); start the program \
             yourself and Attach to it"
                .into(),
        ));
    }
    let null = || -> Result<[OwnedFd; 3], (ErrorKind, String)> {
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| (ErrorKind::Target, format!("cannot open /dev/null: {e}")))
        };
        Ok([open()?, open()?, open()?])
    };
    let stdio = match stdio {
        proto::SpawnStdio::Inherit if !system => None,
        proto::SpawnStdio::Inherit | proto::SpawnStdio::Null => Some(null()?),
        proto::SpawnStdio::Passed => match <[OwnedFd; 3]>::try_from(fds) {
            Ok(three) => Some(three),
            Err(got) => {
                return Err((
                    ErrorKind::BadRequest,
                    format!(
                        "Spawn with stdio Passed needs 3 descriptors sent with the request \
                         (SCM_RIGHTS), and {} came; send stdin, stdout and stderr with it",
                        got.len()
                    ),
                ))
            }
        },
    };
    let env = match env {
        None if system => Some(vec![CLEAN_PATH.to_string()]),
        env => env,
    };
    Ok(SpawnConfig {
        env,
        stdio,
        new_session: system,
    })
}

/// How an engine error reads on the wire.
fn engine_error(id: u32, e: engine::EngineError) -> Frame {
    use engine::EngineError as E;
    let kind = match &e {
        E::Spec(_) => ErrorKind::Spec,
        E::Symbol(_) => ErrorKind::Symbol,
        E::NoProbe(_) => ErrorKind::NoProbe,
        E::NotImplemented(_) => ErrorKind::NotImplemented,
        E::Target(TargetError::Attach(m)) if m.contains("permission") => ErrorKind::Permission,
        E::Target(TargetError::Spawn { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            ErrorKind::Permission
        }
        E::Target(_) => ErrorKind::Target,
        _ => ErrorKind::Refused,
    };
    Frame::Error {
        id,
        kind,
        message: e.to_string(),
    }
}

/// This connection's probes, as ListProbes shows them.
fn probe_infos(engine: &Engine<Ptrace>, sink: &QueueSink, conn: &Conn) -> Vec<ProbeInfo> {
    engine
        .probe_ids()
        .into_iter()
        .map(|p| {
            let st = engine.stats(p).unwrap_or_default();
            let (spec, options) = match sink.probes.get(&p) {
                Some(e) => (e.spec.clone(), e.options),
                None => (
                    engine.probe_text(p).unwrap_or_default().to_string(),
                    ProbeOptions {
                        mode: Mode::Async,
                        allow_mutation: false,
                        sync_deadline_us: 0,
                        no_optimize: false,
                    },
                ),
            };
            ProbeInfo {
                id: p.0,
                spec,
                options,
                enabled: engine.is_enabled(p),
                hits: st.hits,
                nmissed: st.nmissed + conn.counters.sync_missed_of(p.0),
                dropped: conn.counters.dropped_of(p.0),
                placements: engine
                    .placement_states(p)
                    .into_iter()
                    .map(|(pid, addr, state)| proto::Placement { pid, addr, state })
                    .collect(),
                owner_uid: conn.peer.uid,
                owner_pid: conn.peer.pid,
            }
        })
        .collect()
}

/// Serves one request on the engine thread.
fn handle(
    engine: &mut Engine<Ptrace>,
    sink: &mut QueueSink,
    conn: &mut Conn,
    r: proto::Request,
    fds: Vec<OwnedFd>,
) -> Frame {
    let id = r.id;
    let err = |kind: ErrorKind, message: String| Frame::Error { id, kind, message };
    let ok = |body: Body| Frame::Ok { id, body };
    let limited = conn.config.system && !conn.peer.is_root();
    match r.op {
        Op::Ping => ok(Body::Empty),
        // It waits before its first instruction until Resume.
        Op::Spawn { argv, env, stdio } => {
            if argv.is_empty() {
                return err(ErrorKind::Target, "Spawn needs a program to run".into());
            }
            let how = match spawn_config(conn, env, stdio, fds) {
                Ok(how) => how,
                Err((kind, message)) => return err(kind, message),
            };
            match engine
                .spawn_with(&argv, how)
                .and_then(|pid| engine.hold(pid, true).map(|_| pid))
            {
                Ok(pid) => {
                    conn.children.push(pid);
                    ok(Body::Target { pid })
                }
                Err(e) => engine_error(id, e),
            }
        }
        Op::Resume { pid } => match engine.hold(pid, false) {
            Ok(()) => ok(Body::Empty),
            Err(e) => err(ErrorKind::NoTarget, e.to_string()),
        },
        Op::Attach { pid } => {
            if engine.pids().contains(&pid) {
                return err(
                    ErrorKind::Target,
                    format!("process {pid} is already traced by this client"),
                );
            }
            if limited {
                if let Err(why) = creds::may_trace(&conn.peer, pid) {
                    return err(ErrorKind::Permission, why);
                }
            }
            if let Err(e) = engine.attach(pid) {
                return match e {
                    engine::EngineError::Target(TargetError::Attach(m)) => {
                        err(ErrorKind::Permission, m)
                    }
                    e => engine_error(id, e),
                };
            }
            // The process may have changed credentials between the check
            // and the attach (an execve of a set-user-ID program).
            if limited {
                if let Err(why) = creds::may_trace(&conn.peer, pid) {
                    let _ = engine.detach_process(pid);
                    engine.drain(sink);
                    return err(ErrorKind::Permission, why);
                }
            }
            ok(Body::Target { pid })
        }
        Op::Detach { pid } => {
            if !engine.pids().contains(&pid) {
                return err(
                    ErrorKind::NoTarget,
                    format!("process {pid} is not traced by this client"),
                );
            }
            let r = engine.detach_process(pid);
            engine.drain(sink);
            match r {
                Ok(()) => ok(Body::Empty),
                Err(e) => engine_error(id, e),
            }
        }
        Op::Configure {
            follow_fork,
            follow_exec,
            no_optimize,
        } => {
            engine.set_options(engine::Options {
                follow_fork,
                follow_exec,
                no_optimize,
            });
            ok(Body::Empty)
        }
        Op::AddProbe { spec, mut options } => {
            if spec == INJECTED_PANIC && fault_injection() {
                panic!("a panic injected by a test ({INJECTED_PANIC})");
            }
            if options.mode == Mode::Async && options.allow_mutation {
                return err(
                    ErrorKind::Spec,
                    "allow_mutation is for sync probes: only a verdict can mutate; create the \
                     probe with mode sync, or without allow_mutation"
                        .into(),
                );
            }
            if options.sync_deadline_us > super::MAX_SYNC_DEADLINE_US {
                return err(
                    ErrorKind::Spec,
                    format!(
                        "sync_deadline_us {} is above the longest a thread may wait, {} µs; \
                         give a shorter deadline",
                        options.sync_deadline_us,
                        super::MAX_SYNC_DEADLINE_US
                    ),
                );
            }
            if options.mode == Mode::Sync && options.sync_deadline_us == 0 {
                options.sync_deadline_us = super::DEFAULT_SYNC_DEADLINE_US;
            }
            let parsed = match ProbeSpec::parse(&spec) {
                Ok(p) => p,
                Err(e) => return err(ErrorKind::Spec, e.to_string()),
            };
            // A sync probe's verdict may change the thread: it traps.
            let optimize = options.mode == Mode::Async && !options.no_optimize;
            match engine.add_probe_with(parsed, optimize, sink) {
                Ok(p) => {
                    sink.probes.insert(p, ProbeEntry { spec, options });
                    ok(Body::Probe { id: p.0 })
                }
                Err(e) => engine_error(id, e),
            }
        }
        Op::EnableProbe { id: p } | Op::DisableProbe { id: p } => {
            let enable = matches!(r.op, Op::EnableProbe { .. });
            match engine.set_enabled(ProbeId(p), enable) {
                Ok(()) => ok(Body::Empty),
                Err(e) => engine_error(id, e),
            }
        }
        Op::RemoveProbe { id: p } => match engine.remove_probe(ProbeId(p)) {
            Ok(()) => {
                sink.probes.remove(&ProbeId(p));
                ok(Body::Empty)
            }
            Err(e) => engine_error(id, e),
        },
        Op::ListProbes => {
            // Counters as of now: optimized hits still in a ring first.
            engine.drain(sink);
            let mut infos = probe_infos(engine, sink, conn);
            if conn.peer.is_root() {
                if let (Some(r), Some(me)) = (&conn.registry, conn.conn_id) {
                    infos.extend(r.probes_of_others(me));
                }
            }
            ok(Body::Probes(infos))
        }
        Op::Stats => {
            engine.drain(sink);
            let ids = engine.probe_ids();
            let c = &conn.counters;
            ok(Body::Stats(proto::Stats {
                events_sent: c.sent.load(Ordering::Relaxed),
                events_dropped: ids.iter().map(|p| c.dropped_of(p.0)).sum(),
                queue_len: sink.queue.len() as u32,
                queue_capacity: sink.queue.capacity as u32,
                probes: ids
                    .into_iter()
                    .map(|p| {
                        let st = engine.stats(p).unwrap_or_default();
                        proto::ProbeCounters {
                            id: p.0,
                            hits: st.hits,
                            nmissed: st.nmissed + c.sync_missed_of(p.0),
                            dropped: c.dropped_of(p.0),
                        }
                    })
                    .collect(),
            }))
        }
    }
}
