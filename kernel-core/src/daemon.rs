//! `wprobe-core`: the engine as a daemon serving one client over a Unix
//! socket with the protocol of [`crate::proto`].
//!
//! The one key decision: **every ptrace call stays on one thread**, the one
//! that runs [`serve`] (Linux ties a tracee to the thread that seized it).
//! That thread alternates between the engine's stop loop and the client's
//! requests: a reader thread decodes requests, queues them, raises a wake
//! flag and interrupts the engine's `waitpid` with a signal, so that control
//! is served at once however many events are flowing. A writer thread sends
//! replies before events; events wait in a bounded queue, and when it is
//! full they are dropped and counted per probe, which the client learns in
//! `Loss` frames.
//!
//! When the client goes away (it closed the socket, or died) or the core
//! gets SIGTERM/SIGINT, every target is disarmed and let go, as `wprobe
//! trace` does on Ctrl-C. This first version serves one client per run in
//! the same-uid mode (the client starts the core); several clients and the
//! root "system mode" with SO_PEERCRED checks come next.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::engine::{self, Engine, Hit, ProbeId, RunEnd, Sink};
use crate::proto::{
    self, Body, ErrorKind, Event, Frame, Incompatible, Mode, Op, ProbeInfo, Welcome,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use crate::spec::ProbeSpec;
use crate::target::ptrace::Ptrace;

/// Events waiting for the client at most, by default; beyond, they are
/// dropped and counted.
pub const EVENT_QUEUE: usize = 65536;
/// Events per `Events` frame at most.
const BATCH: usize = 256;

/// Raised by SIGTERM/SIGINT: disarm, detach, exit.
static TERMINATE: AtomicBool = AtomicBool::new(false);
/// Makes the engine's `run` return: a request waits, or TERMINATE.
static WAKE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
    WAKE.store(true, Ordering::SeqCst);
}

extern "C" fn on_wake(_: libc::c_int) {}

/// What the reader thread hands the engine thread.
enum Control {
    Request(proto::Request),
    /// The client closed the connection, died, or broke the protocol.
    Gone,
}

/// Wakes the engine thread out of `waitpid`: the flag makes `run` return,
/// and a signal (SIGUSR1, whose handler does nothing and does not restart
/// system calls) interrupts the wait. The signal is sent again until the
/// engine has seen the flag, which closes the window between its check of
/// the flag and its next wait.
struct Waker {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Waker {
    fn new(engine_tid: libc::pid_t) -> Arc<Waker> {
        let w = Arc::new(Waker {
            pending: Mutex::new(false),
            cv: Condvar::new(),
        });
        let poker = w.clone();
        std::thread::spawn(move || loop {
            // A request wakes this at once; SIGTERM (whose handler cannot
            // use a condition variable) within 50 ms.
            let p = poker.pending.lock().expect("waker lock");
            let (p, _) = poker
                .cv
                .wait_timeout_while(p, Duration::from_millis(50), |p| !*p)
                .expect("waker lock");
            drop(p);
            while WAKE.load(Ordering::SeqCst) {
                // SAFETY: signalling the engine thread of this process,
                // whose SIGUSR1 handler does nothing.
                unsafe {
                    libc::syscall(libc::SYS_tgkill, libc::getpid(), engine_tid, libc::SIGUSR1)
                };
                std::thread::sleep(Duration::from_millis(1));
            }
            *poker.pending.lock().expect("waker lock") = false;
        });
        w
    }

    fn wake(&self) {
        WAKE.store(true, Ordering::SeqCst);
        *self.pending.lock().expect("waker lock") = true;
        self.cv.notify_one();
    }
}

/// What goes to the writer thread besides events.
enum Out {
    Frame(Box<Frame>),
    Close,
}

/// Counters shared by the sink, the writer and the request handlers.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    capacity: AtomicU64,
    /// Per probe: events dropped in all, and not yet said in a Loss frame.
    dropped: Mutex<HashMap<u32, (u64, u64)>>,
}

impl Counters {
    fn dropped_of(&self, probe: u32) -> u64 {
        self.dropped
            .lock()
            .expect("counters")
            .get(&probe)
            .map_or(0, |d| d.0)
    }

    /// Losses not yet reported, now reported.
    fn take_unreported(&self) -> Vec<(u32, u64)> {
        let mut d = self.dropped.lock().expect("counters");
        d.iter_mut()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(&p, (_, n))| (p, std::mem::take(n)))
            .collect()
    }
}

/// Turns hits into events for the client's queue.
struct QueueSink {
    events: SyncSender<Event>,
    out: Sender<Out>,
    counters: Arc<Counters>,
    seq: u64,
}

impl Sink for QueueSink {
    fn hit(&mut self, hit: &Hit<'_>) {
        self.seq += 1;
        let event = Event {
            seq: self.seq,
            probe: hit.probe.0,
            kind: hit.kind.into(),
            sync: false,
            pid: hit.pid,
            tid: hit.tid,
            time_ns: hit.time_ns,
            addr: hit.addr,
            regs: hit.regs.into(),
            captures: hit
                .captures
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect(),
            ret: hit.ret.map(Into::into),
        };
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                // Counted here, said by the writer in Loss frames between
                // event batches: a slow client learns of every loss.
                let mut d = self.counters.dropped.lock().expect("counters");
                let n = d.entry(hit.probe.0).or_default();
                n.0 += 1;
                n.1 += 1;
            }
        }
    }

    fn notice(&mut self, notice: &engine::Notice) {
        let _ = self
            .out
            .send(Out::Frame(Box::new(Frame::Notice(notice.clone().into()))));
    }
}

/// Serves one client on `listener`, then disarms and detaches everything.
/// Runs on the calling thread, which does every ptrace call. `queue` bounds
/// the events waiting for the client.
pub fn serve(listener: UnixListener, queue: usize) -> std::io::Result<()> {
    install_signals();
    let (stream, _) = listener.accept()?;
    let mut engine = Engine::new(Ptrace::new());
    // SAFETY: gettid has no preconditions.
    let engine_tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
    let waker = Waker::new(engine_tid);

    let mut reader = stream.try_clone()?;
    let writer_stream = stream.try_clone()?;
    // A client that stops reading must not hold the core (and its targets)
    // forever: a write that cannot go on for this long ends the connection.
    writer_stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    if !handshake(&mut reader, &stream)? {
        return Ok(());
    }

    let (ctl_tx, ctl_rx) = mpsc::channel::<Control>();
    let (out_tx, out_rx) = mpsc::channel::<Out>();
    let (ev_tx, ev_rx) = mpsc::sync_channel::<Event>(queue);
    let counters = Arc::new(Counters::default());

    let w = waker.clone();
    std::thread::spawn(move || read_requests(reader, ctl_tx, w));
    counters.capacity.store(queue as u64, Ordering::Relaxed);
    let c = counters.clone();
    let writer = std::thread::spawn(move || write_frames(writer_stream, out_rx, ev_rx, c));

    let mut sink = QueueSink {
        events: ev_tx,
        out: out_tx.clone(),
        counters: counters.clone(),
        seq: 0,
    };
    let mut specs: HashMap<ProbeId, (String, proto::ProbeOptions)> = HashMap::new();
    // A panic in the engine loop (a bug) must not leave breakpoints behind:
    // it is caught, and everything is disarmed and let go as on a normal
    // end, as far as the engine's state still allows.
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
        WAKE.store(false, Ordering::SeqCst);
        let mut gone = false;
        while let Ok(c) = ctl_rx.try_recv() {
            match c {
                Control::Request(r) => {
                    let frame = handle(&mut engine, &mut sink, &mut specs, &counters, r);
                    let _ = out_tx.send(Out::Frame(Box::new(frame)));
                }
                Control::Gone => gone = true,
            }
        }
        if gone || TERMINATE.load(Ordering::SeqCst) {
            break;
        }
        if engine.pids().is_empty() {
            // Nothing to wait for but the client.
            match ctl_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Control::Request(r)) => {
                    let frame = handle(&mut engine, &mut sink, &mut specs, &counters, r);
                    let _ = out_tx.send(Out::Frame(Box::new(frame)));
                }
                Ok(Control::Gone) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            continue;
        }
        match engine.run(&mut sink, &WAKE) {
            // A refusal found while running was said as a notice.
            Ok(RunEnd::AllExited | RunEnd::Stopped | RunEnd::Refused) => {}
            Err(e) => {
                let _ = out_tx.send(Out::Frame(Box::new(Frame::Notice(
                    proto::Notice::Warning {
                        text: format!("engine: {e}"),
                    },
                ))));
            }
        }
    }));
    if served.is_err() {
        eprintln!("wprobe-core: internal error; disarming and detaching every target");
    }
    // The client is gone or we were told to stop: leave every target as it
    // was found.
    let _ = engine.detach_all();
    let _ = out_tx.send(Out::Close);
    drop(sink);
    // The targets are safe now; what is left is telling the client. One
    // that does not read gets two seconds, then its connection is cut.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        let _ = stream.shutdown(std::net::Shutdown::Both);
    });
    let _ = writer.join();
    Ok(())
}

fn install_signals() {
    // SAFETY: installing handlers that only store to an atomic, or do
    // nothing; no SA_RESTART, so they interrupt the engine's waitpid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_terminate as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        sa.sa_sigaction = on_wake as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        // A client that vanishes must not kill the core mid-write.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Reads the client's Hello and answers Welcome or Incompatible. Returns
/// whether the connection goes on.
fn handshake(reader: &mut UnixStream, stream: &UnixStream) -> std::io::Result<bool> {
    reader.set_read_timeout(Some(Duration::from_secs(5)))?;
    let hello = proto::read_frame(reader);
    reader.set_read_timeout(None)?;
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
                    let _ = proto::write_frame(&mut w, &welcome);
                    return Ok(true);
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

fn read_requests(mut stream: UnixStream, ctl: Sender<Control>, waker: Arc<Waker>) {
    let mut reader = proto::FrameReader::new();
    loop {
        match reader.read_from(&mut stream) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match reader.next_frame() {
                Ok(Some(Frame::Request(r))) => {
                    let _ = ctl.send(Control::Request(r));
                    waker.wake();
                }
                // Sync probes are not served yet: no verdict is awaited.
                Ok(Some(Frame::Verdict { .. })) => {}
                Ok(Some(_)) | Err(_) => {
                    let _ = ctl.send(Control::Gone);
                    waker.wake();
                    return;
                }
                Ok(None) => break,
            }
        }
    }
    let _ = ctl.send(Control::Gone);
    waker.wake();
}

/// Writes replies and notices first, then events in batches.
fn write_frames(
    mut stream: UnixStream,
    out: Receiver<Out>,
    events: Receiver<Event>,
    counters: Arc<Counters>,
) {
    loop {
        // Control first.
        loop {
            match out.try_recv() {
                Ok(Out::Frame(f)) => {
                    if proto::write_frame(&mut stream, &f).is_err() {
                        return;
                    }
                }
                Ok(Out::Close) | Err(mpsc::TryRecvError::Disconnected) => {
                    flush_events(&mut stream, &events, &counters);
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        match events.recv_timeout(Duration::from_millis(5)) {
            Ok(first) => {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match events.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                counters
                    .sent
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if proto::write_frame(&mut stream, &Frame::Events(batch)).is_err() {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        for (probe, count) in counters.take_unreported() {
            if proto::write_frame(&mut stream, &Frame::Loss { probe, count }).is_err() {
                return;
            }
        }
        let _ = stream.flush();
    }
}

/// At the end: the events still queued, then the losses not yet said.
fn flush_events(stream: &mut UnixStream, events: &Receiver<Event>, counters: &Counters) {
    let rest: Vec<Event> = events.try_iter().collect();
    for chunk in rest.chunks(BATCH) {
        counters
            .sent
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if proto::write_frame(stream, &Frame::Events(chunk.to_vec())).is_err() {
            return;
        }
    }
    for (probe, count) in counters.take_unreported() {
        let _ = proto::write_frame(stream, &Frame::Loss { probe, count });
    }
}

/// Serves one request on the engine thread.
fn handle(
    engine: &mut Engine<Ptrace>,
    sink: &mut QueueSink,
    specs: &mut HashMap<ProbeId, (String, proto::ProbeOptions)>,
    counters: &Counters,
    r: proto::Request,
) -> Frame {
    let id = r.id;
    let err = |kind: ErrorKind, message: String| Frame::Error { id, kind, message };
    let ok = |body: Body| Frame::Ok { id, body };
    let engine_err = |e: engine::EngineError| {
        let kind = match &e {
            engine::EngineError::Spec(_) => ErrorKind::Spec,
            engine::EngineError::Symbol(_) => ErrorKind::Symbol,
            engine::EngineError::NoProbe(_) => ErrorKind::NoProbe,
            engine::EngineError::NotImplemented(_) => ErrorKind::NotImplemented,
            _ => ErrorKind::Refused,
        };
        Frame::Error {
            id,
            kind,
            message: e.to_string(),
        }
    };
    let probe_id = |n: u32| ProbeId(n);
    match r.op {
        Op::Ping => ok(Body::Empty),
        // It waits before its first instruction until Resume.
        Op::Spawn { argv } => match engine
            .spawn(&argv)
            .and_then(|pid| engine.hold(pid, true).map(|_| pid))
        {
            Ok(pid) => ok(Body::Target { pid }),
            Err(e) => engine_err(e),
        },
        Op::Resume { pid } => match engine.hold(pid, false) {
            Ok(()) => ok(Body::Empty),
            Err(e) => err(ErrorKind::NoTarget, e.to_string()),
        },
        Op::Attach { pid } => match engine.attach(pid) {
            Ok(()) => ok(Body::Target { pid }),
            Err(e) => err(ErrorKind::Permission, e.to_string()),
        },
        Op::Detach { pid } => {
            if !engine.pids().contains(&pid) {
                return err(
                    ErrorKind::NoTarget,
                    format!("process {pid} is not traced by this client"),
                );
            }
            match engine.detach_process(pid) {
                Ok(()) => ok(Body::Empty),
                Err(e) => engine_err(e),
            }
        }
        Op::AddProbe { spec, options } => {
            if options.mode == Mode::Sync {
                return err(
                    ErrorKind::NotImplemented,
                    "sync probes are not served yet by this core; create the probe as async".into(),
                );
            }
            let parsed = match ProbeSpec::parse(&spec) {
                Ok(p) => p,
                Err(e) => return err(ErrorKind::Spec, e.to_string()),
            };
            match engine.add_probe(parsed, sink) {
                Ok(pid) => {
                    specs.insert(pid, (spec, options));
                    ok(Body::Probe { id: pid.0 })
                }
                Err(e) => engine_err(e),
            }
        }
        Op::EnableProbe { id: p } | Op::DisableProbe { id: p } => {
            let enable = matches!(r.op, Op::EnableProbe { .. });
            match engine.set_enabled(probe_id(p), enable) {
                Ok(()) => ok(Body::Empty),
                Err(e) => engine_err(e),
            }
        }
        Op::RemoveProbe { id: p } => match engine.remove_probe(probe_id(p)) {
            Ok(()) => {
                specs.remove(&probe_id(p));
                ok(Body::Empty)
            }
            Err(e) => engine_err(e),
        },
        Op::ListProbes => {
            let infos = engine
                .probe_ids()
                .into_iter()
                .map(|p| {
                    let st = engine.stats(p).unwrap_or_default();
                    let (spec, options) = specs.get(&p).cloned().unwrap_or_else(|| {
                        (
                            engine.probe_text(p).unwrap_or_default().to_string(),
                            proto::ProbeOptions {
                                mode: Mode::Async,
                                allow_mutation: false,
                                sync_deadline_us: 0,
                            },
                        )
                    });
                    ProbeInfo {
                        id: p.0,
                        spec,
                        options,
                        enabled: engine.is_enabled(p),
                        hits: st.hits,
                        nmissed: st.nmissed,
                        dropped: counters.dropped_of(p.0),
                        placements: engine
                            .placements(p)
                            .into_iter()
                            .map(|(pid, addr)| proto::Placement { pid, addr })
                            .collect(),
                    }
                })
                .collect();
            ok(Body::Probes(infos))
        }
        Op::Stats => {
            let ids = engine.probe_ids();
            ok(Body::Stats(proto::Stats {
                events_sent: counters.sent.load(Ordering::Relaxed),
                events_dropped: ids.iter().map(|p| counters.dropped_of(p.0)).sum(),
                queue_len: 0,
                queue_capacity: counters.capacity.load(Ordering::Relaxed) as u32,
                probes: ids
                    .into_iter()
                    .map(|p| {
                        let st = engine.stats(p).unwrap_or_default();
                        proto::ProbeCounters {
                            id: p.0,
                            hits: st.hits,
                            nmissed: st.nmissed,
                            dropped: counters.dropped_of(p.0),
                        }
                    })
                    .collect(),
            }))
        }
    }
}
