//! The arch-neutral probe engine, in the shape of Linux `kernel/kprobes.c`
//! plus uprobes: the probe table (address → probes), the hit state machine
//! (hit → handlers → out-of-line step or simulation → post handlers),
//! per-thread out-of-line state, and clean detach.
//!
//! Everything happens on the caller's thread: `run` waits for the next stop
//! of any traced thread, handles it and lets the thread go. Probe handlers
//! are a [`Sink`]: the engine hands it each hit while the thread is still
//! stopped, with the registers and captures read at that moment.

pub mod capture;
mod opt;
mod resolve;
pub use opt::{RingWaker, RING_SLOTS};
pub use resolve::spec_text;
mod ret;
mod run;
pub mod xol;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;

use crate::arch::native::{Prepared, Slot};
use crate::spec::ProbeSpec;
use crate::symbols::ElfCache;
use crate::target::{SigInfo, Stop, Target, TargetError, Tid};

pub use crate::arch::native::Regs;
pub use capture::Value;
use xol::Area;

/// A probe's handle, unique in one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u32);

/// Which moment of a hit an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitKind {
    /// Before the probed instruction ran.
    Entry,
    /// After it ran (probes created with `post`).
    Post,
    /// The function returned (return probes).
    Return,
}

/// What a return event adds: the kretprobe view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Return {
    /// The return value register.
    pub value: u64,
    /// When the function was entered (CLOCK_MONOTONIC, ns).
    pub entry_time_ns: u64,
    /// The arguments at entry.
    pub entry_args: [u64; 6],
    /// Where the function returned to.
    pub return_address: u64,
}

/// One probe hit, handed to the [`Sink`] while the thread is stopped.
pub struct Hit<'a> {
    pub probe: ProbeId,
    pub kind: HitKind,
    pub pid: Tid,
    pub tid: Tid,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub time_ns: u64,
    /// The probed address in the process.
    pub addr: u64,
    /// The registers. For entry events `rip` is the probed address (unless
    /// a verdict of a probe before this one, at the same hit, changed it);
    /// for post events it is where the instruction left the thread; for
    /// return events it is the original return address, where the thread
    /// goes on (never the trampoline).
    pub regs: &'a Regs,
    /// The probe's captures, by name, in the order of the spec. Return
    /// events carry the captures taken at entry.
    pub captures: &'a [(String, Value)],
    /// For return events.
    pub ret: Option<Return>,
}

/// What the engine tells its user besides hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The probe's breakpoint is in place in this process.
    Armed {
        probe: ProbeId,
        pid: Tid,
        addr: u64,
        location: String,
    },
    /// The probe's module is not mapped yet; it is armed when it is.
    Pending {
        probe: ProbeId,
        pid: Tid,
        reason: String,
    },
    /// The probe cannot be placed in this process (found when a library
    /// was mapped); nothing was written.
    Refused {
        probe: ProbeId,
        pid: Tid,
        reason: String,
    },
    /// The probed code went away (exec, library unmapped).
    Gone {
        probe: ProbeId,
        pid: Tid,
        reason: String,
    },
    /// How an armed probe is placed changed: `optimized` (a jump into a
    /// trampoline, no stop per hit), or `int3: ` and why not.
    Placed {
        probe: ProbeId,
        pid: Tid,
        addr: u64,
        state: String,
    },
    /// A process ended.
    Exited {
        pid: Tid,
        status: ExitStatus,
    },
    Warning(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// What a handler wants done with the thread after its hit.
///
/// The engine asks every probe of a hit in turn ([`Sink::decide`]); each
/// one sees the registers as the verdicts before it left them, and the
/// thread goes on with the final ones (uprobes' handler chain). What a
/// changed register set does depends on the kind of the hit:
///
/// - **Entry**: the thread's registers are replaced. If `rip` is still the
///   probed address, the displaced instruction then runs (simulated or out
///   of line) on the new registers, the post event follows, and a return
///   probe on the function hijacks the return with the new registers
///   (its entry arguments and captures are taken from them). If `rip` is
///   anywhere else, the probed instruction is skipped and the thread
///   resumes at `rip`, as after a kprobe pre-handler that changed
///   `regs->ip`: no out-of-line step, no post event, no return hijack
///   (the function did not run). Emulating a return —
///   `rip = [rsp]`, `rsp += 8`, `rax = value` — skips a function entirely.
/// - **Post**: the registers after the instruction are replaced before
///   the thread resumes.
/// - **Return**: the event's `regs.rip` is the original return address
///   (the trampoline never shows), so the thread resumes exactly with the
///   registers given: changing only `rax` makes the caller see that return
///   value, at its own return address; a changed `rip` sends the thread
///   there instead. The return instance was already taken off the thread
///   when the handlers run, whatever they decide.
///
/// A verdict is refused (a [`Notice::Warning`], the registers as before
/// it) when its `rip` lies in the engine's own pages (slots, trampoline),
/// which a thread must never run outside the engine's control, or when
/// the kernel rejects the register set (a bad segment selector, an
/// `fs_base` outside user space). `SetRegs` with the registers of the hit
/// unchanged is `Continue`. A hit taken again after a signal was delivered
/// ahead of the instruction (its handlers already ran) asks for no
/// verdict.
// A register file by value, once per hit: no allocation on the hit path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the thread go as it is.
    Continue,
    /// Replace the thread's registers.
    SetRegs(Regs),
}

/// Receives hits and notices.
pub trait Sink {
    fn hit(&mut self, hit: &Hit<'_>);
    fn notice(&mut self, notice: &Notice);
    /// Called by the engine for every hit instead of `hit`; the default
    /// reports the hit and lets the thread go unchanged. See [`Verdict`]
    /// for what a changed register set does.
    fn decide(&mut self, hit: &Hit<'_>) -> Verdict {
        self.hit(hit);
        Verdict::Continue
    }
}

/// Counters of one probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub hits: u64,
    /// Hits whose handlers could not run.
    pub nmissed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Symbol(#[from] crate::symbols::SymbolError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("not implemented: {0}")]
    NotImplemented(String),
    #[error("no probe {0}")]
    NoProbe(u32),
}

pub type Result<T> = std::result::Result<T, EngineError>;

struct Probe {
    spec: ProbeSpec,
    text: String,
    enabled: bool,
    stats: ProbeStats,
    /// Where it is armed, per process.
    placed: HashMap<Tid, u64>,
    /// Return probes: calls in flight (live return instances).
    active: u32,
    /// Whether its sites may be optimized (a jump instead of `int3`).
    optimize: bool,
}

/// How deep return instances may nest on one thread when a probe gives no
/// `maxactive`: uprobes' `MAX_URETPROBE_DEPTH`. Ordinary recursion is
/// reported whole, as the kernel's uretprobe reports it; calls deeper than
/// this on one thread are counted in `nmissed`, as the kernel omits them.
pub const MAX_RETURN_DEPTH: usize = 64;

/// One hijacked return (kretprobes' `kretprobe_instance`, uprobes'
/// `return_instance`), keyed by the stack slot that held the return address.
#[derive(Clone, Debug)]
struct RetInstance {
    /// The return probes this call reports to, with their entry captures.
    probes: Vec<(ProbeId, Vec<(String, Value)>)>,
    /// The function's entry address.
    site: u64,
    /// The return address the trampoline replaced.
    orig_ret: u64,
    /// Where on the stack the return address lives.
    slot: u64,
    entry_time_ns: u64,
    entry_args: [u64; 6],
    /// A tail call from one hijacked function into another: the return
    /// address was already the trampoline; both return at once.
    chained: bool,
}

/// Why the engine has a breakpoint of its own somewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Internal {
    /// The dynamic linker's debugger hook (`r_debug.r_brk`).
    LinkerHook { r_debug: u64 },
}

/// One probed address in one process.
#[derive(Clone)]
struct Site {
    prepared: Prepared,
    probes: Vec<ProbeId>,
    internal: Option<Internal>,
    /// Whether the breakpoint byte is in memory now.
    armed: bool,
    slot: Option<(u64, Slot)>,
    /// Module path and symbol, for messages.
    location: String,
    /// The function around the site.
    func: Option<std::sync::Arc<opt::FuncInfo>>,
    /// Whether a jump replaced the `int3`.
    opt: opt::OptState,
}

#[derive(Clone, Copy, Debug)]
struct InSlot {
    site: u64,
    slot_addr: u64,
    saved_scratch: Option<u64>,
    /// A signal arrived before the copy ran; it is delivered once the
    /// copy has been single-stepped.
    stepping_for_signal: bool,
}

struct Thread {
    pid: Tid,
    /// In a ptrace-stop the engine has not yet resumed.
    stopped: bool,
    in_slot: Option<InSlot>,
    /// Signals to deliver at the next resume, with their siginfo.
    pending: Vec<SigInfo>,
    /// The current stop is a signal-delivery-stop: only there does the
    /// kernel honour a signal given to PTRACE_CONT.
    at_signal_stop: bool,
    /// The current stop is a ptrace event (fork, clone, exec, ...): the
    /// thread is inside a system call whose return value the kernel has
    /// yet to write, so no system call may be injected there.
    at_event_stop: bool,
    /// Hijacked returns, oldest first.
    returns: Vec<RetInstance>,
    /// A vfork parent waiting for its child to exec or exit: the kernel
    /// holds it in the system call, where an interrupt does not reach it.
    in_vfork: bool,
    /// The thread was sent back to this probed address to take a signal
    /// first: its next hit there is the same hit again, not a new one.
    rehit: Option<u64>,
    /// Its own signal mask, while the engine blocks every signal for the
    /// step of a copy (as uprobes defers signals during its single step):
    /// a signal flood could otherwise keep the copy from ever running.
    saved_mask: Option<u64>,
    /// An interrupt the engine asked for is still to be reported: the
    /// thread stopped for something else first. Its `Interrupted` stop is
    /// then not a new thread's first stop (which may need moving out of a
    /// slot): the thread just goes on.
    stray_interrupt: bool,
    /// Its next resume delivers its signal where it is, even inside a
    /// trampoline (a fault of a relocated instruction).
    signal_here: bool,
    /// It stopped at the return code's trap and the engine already sent it
    /// home while that stop was still to be handled: the stop, when it
    /// comes, is the engine's, not the program's.
    trap_settled: bool,
    /// Past its exit event: it is gone for the program, and a leader
    /// stays a zombie (never stopping again) until the others have ended.
    exiting: bool,
}

#[derive(Clone)]
struct Process {
    sites: BTreeMap<u64, Site>,
    areas: Vec<Area>,
    /// Slot address → site address.
    slots: BTreeMap<u64, u64>,
    /// Addresses whose breakpoint was removed or disarmed: a thread that
    /// trapped there before it was taken away is rewound.
    lifted: HashSet<u64>,
    /// `syscall` bytes usable before any area exists.
    syscall_bytes: Option<u64>,
    /// Maps seen at the last rescan, to skip work when nothing changed.
    maps_seen: Vec<(u64, u64, u64)>,
    /// Whether the dynamic linker has finished loading the initial
    /// libraries (until then a soname that is not mapped is not an error).
    startup_done: bool,
    /// Children sharing this address space (vfork, or clone with CLONE_VM
    /// but not CLONE_THREAD), traced like threads until they exec or exit.
    vfork_children: HashSet<Tid>,
    /// Probes found impossible in this process (not tried again).
    refused: HashSet<ProbeId>,
    /// Probes already reported as pending here.
    pending_noted: HashSet<ProbeId>,
    /// The return trampoline: an `int3` in the first area.
    trampoline: Option<u64>,
    /// Kept stopped by `run` (a spawned program waiting for its probes).
    held: bool,
}

impl Process {
    /// The slot `ip` is in, and the site it serves.
    fn slot_at(&self, ip: u64) -> Option<(u64, u64)> {
        self.slots
            .range(..=ip)
            .next_back()
            .map(|(&slot, &site)| (slot, site))
            .filter(|&(slot, _)| ip < slot + crate::arch::native::SLOT_SIZE as u64)
    }
}

/// The probe engine over one backend.
pub struct Engine<T: Target> {
    target: T,
    probes: BTreeMap<ProbeId, Probe>,
    processes: HashMap<Tid, Process>,
    threads: HashMap<Tid, Thread>,
    /// Stops collected while waiting for one thread, handled next.
    deferred: VecDeque<Stop>,
    /// Stops of threads not known yet (a new thread's first stop can come
    /// before its creator's clone event).
    orphans: HashMap<Tid, Stop>,
    elf: ElfCache,
    exits: Vec<(Tid, ExitStatus)>,
    /// Refusals found while running (a library mapped later): the user
    /// asked for a probe that cannot be placed.
    refusals: Vec<String>,
    options: Options,
    exec_guard: Option<ExecGuard>,
    /// Warnings already said (each is said once per engine).
    warned: std::collections::HashSet<String>,
    /// Optimized probes: each process's event ring.
    rings: HashMap<Tid, opt::OptRing>,
    ring_waker: Option<RingWaker>,
    /// Sites to try optimizing again (a thread was in the way), with the
    /// attempts made.
    opt_retry: Vec<(Tid, u64, u32)>,
    /// Where signals found threads, per process (see `opt`).
    signal_sites: HashMap<Tid, HashSet<u64>>,
    /// Optimized hits read at a detach, for the next [`Engine::drain`].
    late_hits: Vec<opt::LateHit>,
    /// Placement changes to tell the sink at the next drain.
    placed_notices: Vec<Notice>,
    /// Per module file: every direct branch target in its code (file
    /// addresses, sorted), for optimized probes' checks.
    branch_targets: HashMap<std::path::PathBuf, std::sync::Arc<Vec<u64>>>,
    /// Trampolines a signal frame may return into: never reused.
    pinned: HashSet<u64>,
}

/// Asked at every execve of a traced process, before the new image runs:
/// `Some(reason)` lets the process go instead of tracing the new image.
pub type ExecGuard = Box<dyn FnMut(Tid) -> Option<String> + Send>;

/// How the engine treats a traced process's children and new images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Trace fork children with the same probes. Without it a child gets
    /// every breakpoint and hijacked return address taken out and runs
    /// untraced (as with uprobes).
    pub follow_fork: bool,
    /// After execve, resolve the probes again against the new image.
    /// Without it the old probes end, visibly, and the process is let go.
    pub follow_exec: bool,
    /// Keep every probe on `int3`: no jumps into trampolines.
    pub no_optimize: bool,
}

/// Why `run` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every traced process is gone.
    AllExited,
    /// The stop flag was raised.
    Stopped,
    /// A probe was refused while the program was starting (its library
    /// was mapped and the probe cannot be placed there).
    Refused,
}

impl<T: Target> Engine<T> {
    pub fn new(target: T) -> Self {
        Engine {
            target,
            probes: BTreeMap::new(),
            processes: HashMap::new(),
            threads: HashMap::new(),
            deferred: VecDeque::new(),
            orphans: HashMap::new(),
            elf: ElfCache::new(),
            exits: Vec::new(),
            refusals: Vec::new(),
            options: Options::default(),
            exec_guard: None,
            warned: Default::default(),
            rings: HashMap::new(),
            ring_waker: None,
            opt_retry: Vec::new(),
            signal_sites: HashMap::new(),
            late_hits: Vec::new(),
            placed_notices: Vec::new(),
            branch_targets: HashMap::new(),
            pinned: HashSet::new(),
        }
    }

    pub fn set_options(&mut self, options: Options) {
        self.options = options;
    }

    /// Sets the check made at every execve (see [`ExecGuard`]).
    pub fn set_exec_guard(&mut self, guard: ExecGuard) {
        self.exec_guard = Some(guard);
    }

    pub fn target_mut(&mut self) -> &mut T {
        &mut self.target
    }

    /// The processes traced now.
    pub fn pids(&self) -> Vec<Tid> {
        let mut v: Vec<Tid> = self.processes.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// How each traced process that ended, ended.
    pub fn exits(&self) -> &[(Tid, ExitStatus)] {
        &self.exits
    }

    /// Refusals found after start (probes on libraries mapped later).
    pub fn refusals(&self) -> &[String] {
        &self.refusals
    }

    pub fn probe_ids(&self) -> Vec<ProbeId> {
        self.probes.keys().copied().collect()
    }

    pub fn probe_text(&self, id: ProbeId) -> Option<&str> {
        self.probes.get(&id).map(|p| p.text.as_str())
    }

    /// Keeps a traced process stopped (or lets it go on) across `run`: a
    /// program spawned for a client waits until its probes are in place.
    pub fn hold(&mut self, pid: Tid, held: bool) -> Result<()> {
        let p = self
            .processes
            .get_mut(&pid)
            .ok_or_else(|| EngineError::Refused(format!("process {pid} is not traced")))?;
        p.held = held;
        Ok(())
    }

    pub fn is_enabled(&self, id: ProbeId) -> bool {
        self.probes.get(&id).is_some_and(|p| p.enabled)
    }

    pub fn stats(&self, id: ProbeId) -> Option<ProbeStats> {
        self.probes.get(&id).map(|p| p.stats.clone())
    }

    /// Where the probe is armed, per process.
    pub fn placements(&self, id: ProbeId) -> Vec<(Tid, u64)> {
        let mut v: Vec<(Tid, u64)> = self
            .probes
            .get(&id)
            .map(|p| p.placed.iter().map(|(&a, &b)| (a, b)).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// The original bytes of every armed site of `pid` (what its memory
    /// holds when no probe is armed), for checks.
    pub fn armed_sites(&self, pid: Tid) -> Vec<u64> {
        self.processes
            .get(&pid)
            .map(|p| {
                p.sites
                    .iter()
                    .filter(|(_, s)| s.armed)
                    .map(|(&a, _)| a)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn thread(&mut self, tid: Tid, pid: Tid) -> &mut Thread {
        self.threads.entry(tid).or_insert(Thread {
            pid,
            stopped: true,
            in_slot: None,
            pending: Vec::new(),
            at_signal_stop: false,
            at_event_stop: false,
            returns: Vec::new(),
            in_vfork: false,
            rehit: None,
            saved_mask: None,
            stray_interrupt: false,
            signal_here: false,
            trap_settled: false,
            exiting: false,
        })
    }

    /// The threads of `pid` the engine knows.
    fn threads_of(&self, pid: Tid) -> Vec<Tid> {
        let mut v: Vec<Tid> = self
            .threads
            .iter()
            .filter(|(_, t)| t.pid == pid)
            .map(|(&t, _)| t)
            .collect();
        v.sort_unstable();
        v
    }

    /// Forgets a process that is gone or let go: its threads (and their
    /// return instances), its sites, and where its probes were placed.
    fn forget_process(&mut self, pid: Tid) {
        for t in self.threads_of(pid) {
            self.drop_thread(t);
        }
        self.processes.remove(&pid);
        self.rings.remove(&pid);
        self.signal_sites.remove(&pid);
        self.opt_retry.retain(|(p, _, _)| *p != pid);
        for probe in self.probes.values_mut() {
            probe.placed.remove(&pid);
        }
    }

    /// Records what kind of stop `tid` is in.
    fn note_stop(&mut self, tid: Tid, stop: &Stop) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.stopped = true;
            t.at_signal_stop = matches!(stop, Stop::Signal { .. });
            t.at_event_stop = matches!(stop, Stop::Event { .. });
        }
    }

    fn new_process(&mut self, pid: Tid) {
        // A new image: the old ring went with the old address space.
        self.rings.remove(&pid);
        self.signal_sites.remove(&pid);
        self.opt_retry.retain(|(p, _, _)| *p != pid);
        self.processes.insert(
            pid,
            Process {
                sites: BTreeMap::new(),
                areas: Vec::new(),
                slots: BTreeMap::new(),
                lifted: HashSet::new(),
                syscall_bytes: None,
                maps_seen: Vec::new(),
                startup_done: false,
                vfork_children: HashSet::new(),
                refused: HashSet::new(),
                pending_noted: HashSet::new(),
                trampoline: None,
                held: false,
            },
        );
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raised by a signal handler of the caller to make `run` return and
/// leave the targets clean.
pub type StopFlag = AtomicBool;
