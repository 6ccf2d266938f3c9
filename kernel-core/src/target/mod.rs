//! The `Target` abstraction: what the engine needs from whatever runs the
//! traced program.
//!
//! The engine never calls ptrace itself. It reads and writes memory and
//! registers, resumes and single-steps threads and waits for their stops
//! through this trait, so that other backends (a GDB remote-protocol client
//! for gdbserver or QEMU) can stand where the Linux ptrace backend stands now.

pub mod ptrace;

use crate::arch::native::Regs;

/// A thread id (Linux tid); the thread-group leader's tid is the pid.
pub type Tid = i32;

/// How a stopped thread is let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Run on.
    Continue,
    /// Run one instruction, then stop again.
    Step,
    /// Stay in group-stop (job control) but report the next event
    /// (`PTRACE_LISTEN`): Ctrl-Z and SIGCONT behave as without a tracer.
    Listen,
}

/// The fields of a `siginfo_t` that the engine inspects; the raw bytes are
/// kept so that a signal can be delivered later with its original siginfo.
#[derive(Clone, Copy)]
pub struct SigInfo {
    pub raw: [u8; 128],
}

impl SigInfo {
    pub fn signo(&self) -> i32 {
        self.i32_at(0)
    }
    pub fn code(&self) -> i32 {
        self.i32_at(8)
    }
    /// `si_addr` for fault signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP).
    pub fn addr(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.raw[16..24]);
        u64::from_ne_bytes(b)
    }
    pub fn set_addr(&mut self, addr: u64) {
        self.raw[16..24].copy_from_slice(&addr.to_ne_bytes());
    }
    fn i32_at(&self, off: usize) -> i32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.raw[off..off + 4]);
        i32::from_ne_bytes(b)
    }
    /// A signal the kernel raised because of the instruction the thread was
    /// running, as opposed to one sent by kill, tgkill or sigqueue (whose
    /// codes are zero or negative). A general-protection fault is SIGSEGV
    /// with `SI_KERNEL`, which is positive too.
    pub fn is_fault(&self) -> bool {
        matches!(
            self.signo(),
            libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
        ) && self.code() > 0
    }
}

impl std::fmt::Debug for SigInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigInfo")
            .field("signo", &self.signo())
            .field("code", &self.code())
            .field("addr", &format_args!("{:#x}", self.addr()))
            .finish()
    }
}

/// The ptrace events the engine asks to be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new thread; the message is its tid.
    Clone(Tid),
    /// A `fork` child; the message is its pid.
    Fork(Tid),
    /// A `vfork` / `CLONE_VM` child; the message is its pid.
    Vfork(Tid),
    /// The `vfork` child released its parent (exec or exit).
    VforkDone,
    /// The thread called execve successfully; the message is its former tid.
    Exec(Tid),
    /// The thread is about to exit; the message is its exit status.
    Exit(i32),
}

/// What `wait` reports.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// A signal is about to be delivered (signal-delivery-stop). `SIGTRAP`
    /// with `si_code == SI_KERNEL` is a breakpoint; `TRAP_TRACE` a
    /// finished single step.
    Signal { tid: Tid, info: SigInfo },
    /// A ptrace event stop.
    Event { tid: Tid, event: Event },
    /// Job-control stop of the whole group (SIGSTOP, SIGTSTP, ...).
    GroupStop { tid: Tid, signo: i32 },
    /// Stopped by our `interrupt`, or the first stop of a new thread.
    Interrupted { tid: Tid },
    /// The thread exited with this status.
    Exited { tid: Tid, code: i32 },
    /// The thread was killed by this signal.
    Killed { tid: Tid, signo: i32 },
}

impl Stop {
    pub fn tid(&self) -> Tid {
        match *self {
            Stop::Signal { tid, .. }
            | Stop::Event { tid, .. }
            | Stop::GroupStop { tid, .. }
            | Stop::Interrupted { tid }
            | Stop::Exited { tid, .. }
            | Stop::Killed { tid, .. } => tid,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{op} on thread {tid} failed: {source}")]
    Os {
        op: &'static str,
        tid: Tid,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot access memory of process {pid} at {addr:#x} ({len} bytes): {source}")]
    Memory {
        pid: Tid,
        addr: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Attach(String),
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
}

impl TargetError {
    /// The thread is gone (exited or killed under us): most callers treat
    /// this as "nothing left to do" rather than as a failure.
    pub fn is_gone(&self) -> bool {
        match self {
            TargetError::Os { source, .. } => source.raw_os_error() == Some(libc::ESRCH),
            // /proc/PID/mem of a process already reaped is no more.
            TargetError::Memory { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ESRCH | libc::ENOENT))
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, TargetError>;

/// How a program is started, besides its argv. What the default gives is
/// the tracer's environment and descriptors 0–2; every other descriptor is
/// closed and every signal disposition and the signal mask are the
/// defaults, whatever the tracer had.
#[derive(Debug, Default)]
pub struct SpawnConfig {
    /// The environment (`NAME=value`); `None` keeps the tracer's.
    pub env: Option<Vec<String>>,
    /// Descriptors 0, 1 and 2 of the program; `None` keeps the tracer's.
    pub stdio: Option<[std::os::fd::OwnedFd; 3]>,
    /// Start in a session of its own (`setsid`): no controlling terminal,
    /// so no `TIOCSTI` into the tracer's.
    pub new_session: bool,
}

/// What the engine needs from a backend. Memory operations take the pid of
/// the thread group (one address space); register and run-control
/// operations a tid.
pub trait Target {
    /// Starts a command under the backend, stopped before its first
    /// instruction (at its exec stop). Returns its pid.
    fn spawn(&mut self, argv: &[String], how: SpawnConfig) -> Result<Tid>;
    /// Takes every thread of a running process and asks each to stop;
    /// their stops are then collected with `wait_for`. Returns the tids.
    fn attach(&mut self, pid: Tid) -> Result<Vec<Tid>>;
    /// The threads of a process, as the backend sees them now.
    fn threads(&mut self, pid: Tid) -> Result<Vec<Tid>>;
    fn read_memory(&mut self, pid: Tid, addr: u64, buf: &mut [u8]) -> Result<()>;
    fn write_memory(&mut self, pid: Tid, addr: u64, buf: &[u8]) -> Result<()>;
    /// Forgets cached handles of `pid`'s memory (after exec the address
    /// space is a new one).
    fn memory_changed(&mut self, pid: Tid);
    fn get_regs(&mut self, tid: Tid) -> Result<Regs>;
    fn set_regs(&mut self, tid: Tid, regs: &Regs) -> Result<()>;
    fn get_siginfo(&mut self, tid: Tid) -> Result<SigInfo>;
    fn set_siginfo(&mut self, tid: Tid, info: &SigInfo) -> Result<()>;
    /// Lets a stopped thread go, delivering `signal` (0 for none).
    fn resume(&mut self, tid: Tid, how: Resume, signal: i32) -> Result<()>;
    /// Asks a running thread to stop; `wait` then reports `Interrupted`.
    fn interrupt(&mut self, tid: Tid) -> Result<()>;
    /// Blocks until some traced thread stops or exits. Returns
    /// `TargetError::Interrupted` when a signal to the tracer interrupted
    /// the wait.
    fn wait(&mut self) -> Result<Stop>;
    /// As `wait`, but for one thread only.
    fn wait_for(&mut self, tid: Tid) -> Result<Stop>;
    /// Lets a thread go for good, delivering `signal` (0 for none).
    fn detach(&mut self, tid: Tid, signal: i32) -> Result<()>;
    /// Whether a SIGTRAP is queued for the stopped thread but not reported
    /// yet. An `interrupt` stop can be reported before the trap of a
    /// breakpoint the thread just hit; that trap must still be collected
    /// (or it would kill the thread once it runs untraced).
    fn trap_pending(&mut self, tid: Tid) -> bool;
    /// The thread's blocked-signal mask (bit n-1 for signal n).
    fn get_sigmask(&mut self, tid: Tid) -> Result<u64>;
    fn set_sigmask(&mut self, tid: Tid, mask: u64) -> Result<()>;
    /// Whether the thread has ended but is not reaped (a zombie): it will
    /// never stop again, and a thread-group leader is reported only after
    /// every other thread of its group.
    fn is_zombie(&mut self, _tid: Tid) -> bool {
        false
    }
    /// Whether two threads run in one address space (a thread, or a
    /// `CLONE_VM` child), as opposed to a copy of it (a fork child).
    fn same_memory(&mut self, a: Tid, b: Tid) -> bool;
}
