//! `wprobe-core`: the engine as a daemon, serving clients over a Unix
//! socket with the protocol of [`crate::proto`] (docs/core-protocol.md).
//!
//! The one key decision: **a connection's ptrace calls all stay on one
//! thread**, the connection's own (Linux ties a tracee to the thread that
//! seized it). Each client gets a thread running an [`Engine`] of its own,
//! which makes "each client sees only its own probes and targets" a matter
//! of construction; waits use `__WNOTHREAD`, so engines never take each
//! other's stops. That thread alternates between the engine's stop loop and
//! the client's requests: a reader thread decodes requests, queues them,
//! raises the connection's wake flag and interrupts the engine's `waitpid`
//! with a signal, so that control is served at once however many events
//! flow. A writer thread sends replies before events; events wait in a
//! bounded queue, and when it is full they are dropped and counted per
//! probe, which the client learns in `Loss` frames.
//!
//! Two ways to run:
//! - **same-uid mode** ([`serve_one`], `wprobe-core --fd N`): a client
//!   starts the core with one end of a socket pair, and the core serves
//!   that connection and exits with it; or [`serve`] on a socket only its
//!   user can reach (`--socket PATH`), for clients of the same user.
//! - **system mode** ([`serve`] with [`Config::system`], `wprobe-core
//!   --system --socket PATH` as root): clients of every user connect; each
//!   is identified with `SO_PEERCRED` and may only touch processes its own
//!   user could trace (see [`creds`]). Programs it spawns run as that user,
//!   with `no_new_privs`. Root's clients also see everyone's probes.
//!
//! When a client goes away (it closed the socket, died, or broke the
//! protocol) or the core gets SIGTERM/SIGINT, every target of that client
//! is disarmed and let go, as `wprobe trace` does on Ctrl-C; a panic in a
//! connection's engine loop is caught and does the same.

mod conn;
pub mod creds;
mod queue;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use creds::Peer;

/// Events waiting for a client at most, by default; beyond, async events
/// are dropped and counted.
pub const EVENT_QUEUE: usize = 65536;
/// How long a sync hit waits for its verdict when the probe does not say.
pub const DEFAULT_SYNC_DEADLINE_US: u32 = 50_000;
/// The longest deadline a sync probe may ask for: a thread never waits
/// longer than this for a client.
pub const MAX_SYNC_DEADLINE_US: u32 = 5_000_000;

/// Connections a core serves at once, by default.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections one user's clients may hold at once in system mode, by
/// default (root's are not counted against it).
pub const MAX_CONNECTIONS_PER_UID: usize = 32;

/// How long a write to a client may block, by default.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the core serves.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Events waiting for each client at most.
    pub queue: usize,
    /// System mode: clients of any user, checked per request.
    pub system: bool,
    /// Connections served at once; one more is refused with a `Limit`
    /// error. Each costs four threads.
    pub max_connections: usize,
    /// In system mode, connections of one non-root user at once.
    pub max_connections_per_uid: usize,
    /// How long a write to a client may block (it does not read): then the
    /// connection ends and its targets are let go.
    pub client_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue: EVENT_QUEUE,
            system: false,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_uid: MAX_CONNECTIONS_PER_UID,
            client_timeout: CLIENT_TIMEOUT,
        }
    }
}

/// Raised by SIGTERM/SIGINT: every connection disarms, detaches, ends.
static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

extern "C" fn on_wake(_: libc::c_int) {}

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

/// Wakes a connection's engine thread out of `waitpid`: the flag makes
/// `run` return, and a signal (SIGUSR1, whose handler does nothing and does
/// not restart system calls) interrupts the wait. The signal is sent again
/// until the engine has seen the flag, which closes the window between its
/// check of the flag and its next wait; a new wake between two of those
/// sends it at once. SIGTERM, whose handler cannot use a condition
/// variable, is noticed within 50 ms.
pub(crate) struct Waker {
    /// The engine's stop flag.
    pub flag: Arc<AtomicBool>,
    pending: Mutex<bool>,
    cv: Condvar,
    done: AtomicBool,
}

/// How long the waker waits before it signals the engine again, when the
/// engine has not seen its flag yet.
const RESIGNAL: Duration = Duration::from_millis(1);

impl Waker {
    fn new(engine_tid: libc::pid_t) -> Arc<Waker> {
        Waker::with_resignal(engine_tid, RESIGNAL)
    }

    fn with_resignal(engine_tid: libc::pid_t, resignal: Duration) -> Arc<Waker> {
        let w = Arc::new(Waker {
            flag: Arc::new(AtomicBool::new(false)),
            pending: Mutex::new(false),
            cv: Condvar::new(),
            done: AtomicBool::new(false),
        });
        let poker = w.clone();
        std::thread::spawn(move || {
            while !poker.done.load(Ordering::SeqCst) {
                let p = poker.pending.lock().expect("waker lock");
                let (mut p, _) = poker
                    .cv
                    .wait_timeout_while(p, Duration::from_millis(50), |p| !*p)
                    .expect("waker lock");
                // Taken now, under the lock: a wake that comes while the
                // engine is being signalled below raises it again and is
                // served at the next turn. (Clearing it after the loop
                // lost such a wake: the engine then slept in waitpid for
                // up to the 50 ms timeout.)
                *p = false;
                drop(p);
                if TERMINATE.load(Ordering::SeqCst) {
                    poker.flag.store(true, Ordering::SeqCst);
                }
                while poker.flag.load(Ordering::SeqCst) && !poker.done.load(Ordering::SeqCst) {
                    // SAFETY: signalling the engine thread of this process,
                    // whose SIGUSR1 handler does nothing.
                    unsafe {
                        libc::syscall(libc::SYS_tgkill, libc::getpid(), engine_tid, libc::SIGUSR1)
                    };
                    // Until the next try, or a new wake: that one is sent
                    // at once. (A plain sleep here held every request that
                    // came within 1 ms of the previous signal: back to
                    // back, each waited out the sleep.)
                    let p = poker.pending.lock().expect("waker lock");
                    let (mut p, _) = poker
                        .cv
                        .wait_timeout_while(p, resignal, |p| !*p)
                        .expect("waker lock");
                    *p = false;
                }
            }
        });
        w
    }

    pub fn wake(&self) {
        self.flag.store(true, Ordering::SeqCst);
        *self.pending.lock().expect("waker lock") = true;
        self.cv.notify_one();
    }

    /// The engine thread is ending: the poker stops.
    fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        self.cv.notify_one();
    }
}

/// What one connection offers the others: root's clients ask every
/// connection for its probes.
struct Handle {
    ctl: Sender<conn::Control>,
    waker: Arc<Waker>,
}

/// The connections of a core serving many clients.
#[derive(Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<u64, Handle>>,
    next: AtomicU64,
    /// Open connections per client uid (handshake included).
    open: Mutex<HashMap<u32, usize>>,
    /// Programs spawned by connections that have ended, still running
    /// untraced: reaped by the accept loop when they end, so that none is
    /// left a zombie for the core's lifetime.
    orphans: Mutex<Vec<i32>>,
}

/// A connection counted in [`Registry::open`]; uncounted when dropped.
pub(crate) struct Slot {
    registry: Arc<Registry>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().expect("registry");
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

impl Registry {
    /// Counts a new connection of `peer`, or says why it is one too many.
    fn admit(self: &Arc<Self>, peer: &Peer, config: &Config) -> Result<Slot, String> {
        let mut open = self.open.lock().expect("registry");
        let total: usize = open.values().sum();
        if total >= config.max_connections {
            return Err(format!(
                "this wprobe-core serves {total} connections, its limit \
                 (--max-connections {}); close one, or start the core with a higher limit",
                config.max_connections
            ));
        }
        let mine = open.get(&peer.uid).copied().unwrap_or(0);
        if config.system && !peer.is_root() && mine >= config.max_connections_per_uid {
            return Err(format!(
                "user {} already has {mine} connections to this wprobe-core, the limit per \
                 user (--max-connections-per-uid {}); close one first",
                peer.uid, config.max_connections_per_uid
            ));
        }
        *open.entry(peer.uid).or_default() += 1;
        Ok(Slot {
            registry: self.clone(),
            uid: peer.uid,
        })
    }

    /// Hands over programs a closing connection spawned and that still run.
    pub(crate) fn adopt(&self, pids: Vec<i32>) {
        self.orphans.lock().expect("registry").extend(pids);
    }

    /// Reaps the orphans that have ended (from the accept loop; a wait for
    /// a given pid reaps a child of any of the core's threads).
    fn reap_orphans(&self) {
        self.orphans.lock().expect("registry").retain(|&pid| {
            let mut status = 0;
            // SAFETY: a non-blocking wait for one given child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
            r == 0
        });
    }

    fn add(&self, h: Handle) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().expect("registry").insert(id, h);
        id
    }

    fn remove(&self, id: u64) {
        self.conns.lock().expect("registry").remove(&id);
    }

    /// The probes of every connection but `except`, each asked on its own
    /// thread; one that does not answer within a second is left out.
    fn probes_of_others(&self, except: u64) -> Vec<crate::proto::ProbeInfo> {
        let asks: Vec<_> = {
            let conns = self.conns.lock().expect("registry");
            conns
                .iter()
                .filter(|(&id, _)| id != except)
                .filter_map(|(_, h)| {
                    let (tx, rx) = std::sync::mpsc::channel();
                    h.ctl.send(conn::Control::Snapshot(tx)).ok()?;
                    h.waker.wake();
                    Some(rx)
                })
                .collect()
        };
        asks.into_iter()
            .filter_map(|rx| rx.recv_timeout(Duration::from_secs(1)).ok())
            .flatten()
            .collect()
    }
}

/// Serves the one client connected on `stream` (same-uid mode: the client
/// started the core), then disarms and detaches everything. Runs on the
/// calling thread, which does every ptrace call.
pub fn serve_one(stream: UnixStream, config: Config) -> std::io::Result<()> {
    install_signals();
    // The client that started this core decides when it ends: a Ctrl-C at
    // the terminal reaches both, and the client detaches in good order
    // (and learns how its command ended). SIGINT still interrupts waits;
    // a handler, unlike SIG_IGN, is not inherited by spawned programs.
    // SAFETY: a handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wake as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    conn::run(stream, config, None);
    Ok(())
}

/// Tells a client it is one connection too many, and closes.
fn refuse(stream: UnixStream, message: String) {
    // The frame is small and the socket new: the write does not block for
    // long, and a client that does not read only loses the message.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = crate::proto::write_frame(
        &mut &stream,
        &crate::proto::Frame::Error {
            id: 0,
            kind: crate::proto::ErrorKind::Limit,
            message,
        },
    );
}

/// Serves every client that connects on `listener`, each on a thread of its
/// own, until SIGTERM/SIGINT; then every connection disarms and detaches
/// its targets, and this returns.
pub fn serve(listener: UnixListener, config: Config) -> std::io::Result<()> {
    install_signals();
    listener.set_nonblocking(true)?;
    let registry = Arc::new(Registry::default());
    let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut out_of_fds_said: Option<std::time::Instant> = None;
    while !TERMINATE.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        registry.reap_orphans();
        // Out of descriptors (EMFILE, ENFILE) or memory: said once in a
        // while rather than on every turn.
        let mut short_of = |e: &std::io::Error, open: usize| {
            if out_of_fds_said.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                eprintln!(
                    "wprobe-core: cannot accept a connection: {e} ({open} connections open); \
                     trying again"
                );
                out_of_fds_said = Some(std::time::Instant::now());
            }
        };
        match listener.accept() {
            Ok((stream, _)) => {
                let peer = match creds::peer_of(&stream) {
                    Ok(p) => p,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                        // Accepted with the last descriptor: nothing left to
                        // learn who it is. The client is told, not dropped.
                        short_of(&e, threads.len());
                        refuse(
                            stream,
                            format!(
                                "wprobe-core is out of file descriptors ({e}) with {} \
                                 connections open; try again once some have closed",
                                threads.len()
                            ),
                        );
                        continue;
                    }
                    Err(_) => continue, // gone already
                };
                let slot = match registry.admit(&peer, &config) {
                    Ok(slot) => slot,
                    Err(message) => {
                        refuse(stream, message);
                        continue;
                    }
                };
                stream.set_nonblocking(false)?;
                let r = registry.clone();
                threads.push(std::thread::spawn(move || {
                    let _slot = slot;
                    conn::run(stream, config, Some(r))
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // The connection waits in the backlog; poll would say
                // "readable" again at once, so wait before trying.
                short_of(&e, threads.len());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        threads.retain(|t| !t.is_finished());
    }
    // Each connection's waker sees TERMINATE within 50 ms.
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A wake that comes while the waker waits to signal the engine again
    /// is sent at once, not after that wait: with a wait of an hour, each
    /// of five wakes in a row reaches the engine. (A sleep there held every
    /// request that came back to back for the sleep's length.)
    #[test]
    fn a_new_wake_is_signalled_at_once() {
        // SAFETY: a handler that does nothing, for SIGUSR1 only.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_wake as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        }
        let (tid_tx, tid_rx) = mpsc::channel();
        let (flag_tx, flag_rx) = mpsc::channel::<Arc<AtomicBool>>();
        let (served_tx, served_rx) = mpsc::channel();
        // In place of an engine thread: it waits for SIGUSR1 as waitpid
        // would be interrupted by it, and sees its flag. SIGUSR1 is blocked
        // but while it waits, so that a signal sent between its look at
        // the flag and its wait is not lost.
        std::thread::spawn(move || {
            // SAFETY: sigset_t is plain data; these calls only fill it and
            // change this thread's signal mask.
            let (mut blocked, mut open): (libc::sigset_t, libc::sigset_t) =
                unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
            // SAFETY: as above; gettid has no arguments.
            let tid = unsafe {
                libc::sigemptyset(&mut blocked);
                libc::sigaddset(&mut blocked, libc::SIGUSR1);
                libc::sigemptyset(&mut open);
                libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
                libc::syscall(libc::SYS_gettid) as libc::pid_t
            };
            tid_tx.send(tid).expect("the test waits for the tid");
            let flag = flag_rx.recv().expect("the waker's flag");
            loop {
                if flag.swap(false, Ordering::SeqCst) {
                    if served_tx.send(()).is_err() {
                        return;
                    }
                    continue;
                }
                // SAFETY: waits with every signal open; returns after a
                // handler ran.
                unsafe { libc::sigsuspend(&open) };
            }
        });
        let tid = tid_rx.recv().expect("the engine's tid");
        let waker = Waker::with_resignal(tid, Duration::from_secs(3600));
        flag_tx.send(waker.flag.clone()).expect("the engine waits");
        for i in 0..5 {
            waker.wake();
            served_rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("wake {i} did not reach the engine"));
        }
        waker.finish();
    }
}
