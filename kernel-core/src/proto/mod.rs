//! The wire protocol between `wprobe-core` and its client: frames, their
//! byte encoding, and an incremental reader.
//!
//! The one key decision: **every frame is a length-prefixed blob decoded
//! from a byte slice that is already complete, and every length or count
//! inside it is checked against the bytes that are left before anything is
//! allocated.** The core, which holds `CAP_SYS_PTRACE`, therefore never
//! trusts a number it read: a 4 GiB length is refused from its first four
//! bytes, a list that claims a billion entries is refused before a `Vec` is
//! made, and no input makes the decoder panic. The byte layout of every
//! frame is documented in `docs/core-protocol.md`; the tests in this module
//! check a few of its tables byte for byte.
//!
//! The module is pure byte logic: it knows nothing of sockets (only
//! `std::io::Read`/`Write` helpers), nothing of JSON, and nothing of the
//! engine beyond the `From` conversions (in `convert.rs`) that turn an
//! engine hit or notice into a frame.
//!
//! - [`Frame`] and the types it carries; [`encode`] / [`decode`] for one
//!   whole frame.
//! - [`FrameReader`] — bytes in as they arrive, whole frames out; for a
//!   non-blocking daemon.
//! - [`read_frame`] / [`write_frame`] — blocking helpers for a client.
//! - [`EventBatch`] — packs events into one `Events` frame under
//!   [`MAX_FRAME`].
//! - [`negotiate`] — the core's answer to a [`Hello`].
//! - [`scm`] — descriptors passed with a frame (`SCM_RIGHTS`), the one
//!   part that needs a Unix socket; [`sockpath`] — socket paths longer
//!   than a socket address holds.

pub mod client;
mod codec;
mod convert;
pub mod scm;
pub mod sockpath;
mod stream;
mod wire;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

pub use client::{Client, ClientError};
pub use codec::{decode, encode, encode_into};
pub use stream::{read_frame, write_frame, EventBatch, FrameReader};

/// The four bytes a [`Hello`] starts with.
pub const MAGIC: [u8; 4] = *b"WPRB";

/// The protocol version this build speaks (and the newest it serves).
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest protocol version this build serves.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

const _: () = assert!(MIN_PROTOCOL_VERSION <= PROTOCOL_VERSION);

/// The largest value of a frame's length field: the frame type byte plus
/// the payload, 1 MiB. A longer frame is refused from its header alone.
pub const MAX_FRAME: u32 = 1 << 20;

/// Bytes before the frame type: the `u32` little-endian length.
pub const HEADER_LEN: usize = 4;

/// Number of registers in an x86_64 register set (`struct user_regs_struct`).
pub const X86_64_NREGS: usize = 27;

/// Frame type bytes. The handshake's three (`0x01`–`0x03`) keep their
/// layout in every protocol version, so that any two versions can at least
/// tell each other they disagree.
pub mod frame_type {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const INCOMPATIBLE: u8 = 0x03;
    pub const REQUEST: u8 = 0x10;
    pub const OK: u8 = 0x20;
    pub const ERROR: u8 = 0x21;
    pub const EVENTS: u8 = 0x30;
    pub const LOSS: u8 = 0x31;
    pub const NOTICE: u8 = 0x32;
    pub const VERDICT: u8 = 0x40;
}

/// One frame, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → core, first frame of a connection.
    Hello(Hello),
    /// Core → client: the handshake succeeded.
    Welcome(Welcome),
    /// Core → client: the versions do not overlap; the core then closes.
    Incompatible(Incompatible),
    /// Client → core: a control request.
    Request(Request),
    /// Core → client: request `id` succeeded.
    Ok { id: u32, body: Body },
    /// Core → client: request `id` failed. `id` 0 is about no request: a
    /// malformed or unexpected frame (the core then closes) or a bad
    /// verdict.
    Error {
        id: u32,
        kind: ErrorKind,
        message: String,
    },
    /// Core → client: probe hits, oldest first.
    Events(Vec<Event>),
    /// Core → client: `count` async events of `probe` were dropped because
    /// this client's event queue was full.
    Loss { probe: u32, count: u64 },
    /// Core → client: something happened to a probe or a process.
    Notice(Notice),
    /// Client → core: the answer to a sync event.
    Verdict { seq: u64, action: Action },
}

impl Frame {
    /// The frame type byte on the wire.
    pub fn frame_type(&self) -> u8 {
        use frame_type::*;
        match self {
            Frame::Hello(_) => HELLO,
            Frame::Welcome(_) => WELCOME,
            Frame::Incompatible(_) => INCOMPATIBLE,
            Frame::Request(_) => REQUEST,
            Frame::Ok { .. } => OK,
            Frame::Error { .. } => ERROR,
            Frame::Events(_) => EVENTS,
            Frame::Loss { .. } => LOSS,
            Frame::Notice(_) => NOTICE,
            Frame::Verdict { .. } => VERDICT,
        }
    }

    /// Whether clients send this frame (`Hello`, `Request`, `Verdict`);
    /// the core sends every other. A frame from the wrong side is a
    /// `BadRequest`.
    pub fn sent_by_client(&self) -> bool {
        matches!(
            self,
            Frame::Hello(_) | Frame::Request(_) | Frame::Verdict { .. }
        )
    }

    /// The frame's name, as error messages and the protocol document spell
    /// it.
    pub fn name(&self) -> &'static str {
        frame_name(self.frame_type()).unwrap_or("?")
    }
}

/// The name of a frame type byte, or `None` for an unknown one.
pub fn frame_name(ty: u8) -> Option<&'static str> {
    use frame_type::*;
    Some(match ty {
        HELLO => "Hello",
        WELCOME => "Welcome",
        INCOMPATIBLE => "Incompatible",
        REQUEST => "Request",
        OK => "Ok",
        ERROR => "Error",
        EVENTS => "Events",
        LOSS => "Loss",
        NOTICE => "Notice",
        VERDICT => "Verdict",
        _ => return None,
    })
}

/// The client's first frame. On the wire it starts with [`MAGIC`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub version: u16,
    /// Who is asking, for the core's log (`"wprobe trace 0.1.0"`).
    pub client: String,
}

/// The core accepts the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The version both sides speak from now on (the client's).
    pub version: u16,
    /// The core's process id.
    pub core_pid: u32,
    /// The largest frame length the core accepts and sends.
    pub max_frame: u32,
}

/// The core refuses the client's version (or its Hello); it closes the
/// connection after sending this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatible {
    /// The versions the core serves, inclusive.
    pub supported: (u16, u16),
    /// What went wrong and what to do, for a person.
    pub message: String,
}

/// A control request; the reply carries the same `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client, nonzero; replies are matched by it.
    pub id: u32,
    pub op: Op,
}

/// What a request asks for. Wire tags in parentheses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// (1) Start `argv[0]` (searched in `PATH`) under the core; the reply
    /// is [`Body::Target`].
    Spawn {
        argv: Vec<String>,
        /// The program's environment (`NAME=value` strings); `None` keeps
        /// the core's in same-user mode, and is a clean one (`PATH` only)
        /// in system mode.
        env: Option<Vec<String>>,
        /// Where its descriptors 0, 1 and 2 come from.
        stdio: SpawnStdio,
    },
    /// (2) Trace a running process; the reply is [`Body::Target`].
    Attach { pid: i32 },
    /// (3) Disarm every probe in `pid` and let it go; [`Body::Empty`].
    Detach { pid: i32 },
    /// (4) Create a probe from its textual spec (parsed by the core with
    /// `spec::ProbeSpec::parse`, captures included); [`Body::Probe`].
    AddProbe { spec: String, options: ProbeOptions },
    /// (5) Arm a disabled probe; [`Body::Empty`].
    EnableProbe { id: u32 },
    /// (6) Disarm a probe but keep it; [`Body::Empty`].
    DisableProbe { id: u32 },
    /// (7) Disarm and forget a probe; [`Body::Empty`].
    RemoveProbe { id: u32 },
    /// (8) This client's probes; [`Body::Probes`].
    ListProbes,
    /// (9) Counters; [`Body::Stats`].
    Stats,
    /// (10) Liveness; [`Body::Empty`].
    Ping,
    /// (11) Let a process started by `Spawn` run: it waits, stopped before
    /// its first instruction, so that probes can be added first;
    /// [`Body::Empty`].
    Resume { pid: i32 },
    /// (12) How this connection's targets are followed from now on: fork
    /// children traced with the same probes, and probes resolved again
    /// after execve; [`Body::Empty`].
    Configure {
        follow_fork: bool,
        follow_exec: bool,
        /// Keep every probe of this client on `int3`.
        no_optimize: bool,
    },
}

/// Descriptors 0, 1 and 2 of a spawned program. Wire tags in parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnStdio {
    /// (0) The core's own, in same-user mode (the client started the core,
    /// so they are the client's); `/dev/null` in system mode, where a
    /// program of one user never gets a descriptor of the root core's.
    Inherit,
    /// (1) `/dev/null` for all three.
    Null,
    /// (2) The three descriptors the client sent with the request's bytes
    /// as `SCM_RIGHTS` ancillary data, in order 0, 1, 2.
    Passed,
}

/// How a probe's events are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOptions {
    pub mode: Mode,
    /// Whether a verdict may change registers or the return value. Only
    /// meaningful for sync probes.
    pub allow_mutation: bool,
    /// How long a sync hit waits for its verdict, in microseconds; after
    /// it the thread continues and the hit counts in `nmissed`.
    pub sync_deadline_us: u32,
    /// Keep the probe on `int3`: never replaced by a jump into a
    /// trampoline (sync probes are never optimized anyway).
    pub no_optimize: bool,
}

/// When the hit thread continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// (0) At once; the event is queued for the client.
    Async,
    /// (1) When the client's verdict arrives, or at the deadline.
    Sync,
}

/// The body of an `Ok` reply. Wire tags in parentheses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// (0) Nothing to say.
    Empty,
    /// (1) The process spawned or attached.
    Target { pid: i32 },
    /// (2) The probe created.
    Probe { id: u32 },
    /// (3) The client's probes.
    Probes(Vec<ProbeInfo>),
    /// (4) Counters.
    Stats(Stats),
}

/// One probe, as `ListProbes` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeInfo {
    pub id: u32,
    /// The spec as given to `AddProbe`.
    pub spec: String,
    pub options: ProbeOptions,
    pub enabled: bool,
    pub hits: u64,
    /// Hits whose handlers could not run (the engine's `nmissed`).
    pub nmissed: u64,
    /// Async events dropped because the client's queue was full.
    pub dropped: u64,
    /// Where the probe is armed.
    pub placements: Vec<Placement>,
    /// The client that created it: its uid and process id (from
    /// `SO_PEERCRED`). Only root sees other clients' probes.
    pub owner_uid: u32,
    pub owner_pid: i32,
}

/// One place a probe is armed: an address in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub pid: i32,
    pub addr: u64,
    /// `optimized` (a jump into a trampoline), or `int3: ` and why not.
    pub state: String,
}

/// Counters of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Events written to this client so far.
    pub events_sent: u64,
    /// Async events dropped because the queue was full (all probes).
    pub events_dropped: u64,
    /// Events waiting in the queue now.
    pub queue_len: u32,
    /// The queue's bound.
    pub queue_capacity: u32,
    /// Per probe.
    pub probes: Vec<ProbeCounters>,
}

/// Counters of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCounters {
    pub id: u32,
    pub hits: u64,
    pub nmissed: u64,
    pub dropped: u64,
}

/// Why a request failed. Wire codes (`u16`) in parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// (1) Malformed or unexpected frame, request id 0, a frame in the
    /// wrong direction.
    BadRequest,
    /// (2) The probe spec does not parse.
    Spec,
    /// (3) A module or symbol was not found.
    Symbol,
    /// (4) The probe cannot be placed (instruction, blacklist, live bytes
    /// differ from the file).
    Refused,
    /// (5) The pid is not traced by this client.
    NoTarget,
    /// (6) No probe with that id belongs to this client.
    NoProbe,
    /// (7) Not allowed: ptrace permission, or the client's uid may not
    /// trace that process.
    Permission,
    /// (8) ptrace or spawning failed.
    Target,
    /// (9) Not implemented yet.
    NotImplemented,
    /// (10) A verdict names an unknown or expired seq, or mutates where
    /// the probe does not allow it.
    BadVerdict,
    /// (11) A bug in the core.
    Internal,
    /// (12) A bound was reached: too many connections, a reply larger
    /// than a frame may be.
    Limit,
}

impl ErrorKind {
    /// Every kind, in code order.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::BadRequest,
        ErrorKind::Spec,
        ErrorKind::Symbol,
        ErrorKind::Refused,
        ErrorKind::NoTarget,
        ErrorKind::NoProbe,
        ErrorKind::Permission,
        ErrorKind::Target,
        ErrorKind::NotImplemented,
        ErrorKind::BadVerdict,
        ErrorKind::Internal,
        ErrorKind::Limit,
    ];

    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 1,
            ErrorKind::Spec => 2,
            ErrorKind::Symbol => 3,
            ErrorKind::Refused => 4,
            ErrorKind::NoTarget => 5,
            ErrorKind::NoProbe => 6,
            ErrorKind::Permission => 7,
            ErrorKind::Target => 8,
            ErrorKind::NotImplemented => 9,
            ErrorKind::BadVerdict => 10,
            ErrorKind::Internal => 11,
            ErrorKind::Limit => 12,
        }
    }

    /// The kind with this wire code.
    pub fn from_code(code: u16) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// One probe hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Per connection, increasing by one for every event recorded for this
    /// client, dropped ones included: a gap is a loss.
    pub seq: u64,
    pub probe: u32,
    pub kind: EventKind,
    /// The thread is stopped until a [`Frame::Verdict`] for `seq` arrives
    /// or the probe's deadline passes.
    pub sync: bool,
    pub pid: i32,
    pub tid: i32,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub time_ns: u64,
    /// The probed address in the process.
    pub addr: u64,
    pub regs: RegSet,
    /// The probe's captures, by name, in the order of the spec.
    pub captures: Vec<(String, CaptureValue)>,
    /// For return events.
    pub ret: Option<RetInfo>,
}

/// Which moment of a hit an event reports (the engine's `HitKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// (0) Before the probed instruction ran.
    Entry,
    /// (1) After it ran.
    Post,
    /// (2) The function returned.
    Return,
}

/// A register snapshot, tagged with its architecture. The tag is the ELF
/// `e_machine` number (x86_64: 62), so aarch64 (183) and riscv64 (243)
/// fit later as new variants with their own register counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegSet {
    /// `struct user_regs_struct` order: r15, r14, r13, r12, rbp, rbx, r11,
    /// r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags,
    /// rsp, ss, fs_base, gs_base, ds, es, fs, gs.
    X86_64([u64; X86_64_NREGS]),
}

impl RegSet {
    /// ELF `e_machine` of x86_64.
    pub const EM_X86_64: u16 = 62;

    /// The architecture tag on the wire.
    pub fn arch(&self) -> u16 {
        match self {
            RegSet::X86_64(_) => RegSet::EM_X86_64,
        }
    }
}

/// A captured value (the engine's `Value`). Wire tags in parentheses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureValue {
    /// (0)
    Unsigned(u64),
    /// (1)
    Signed(i64),
    /// (2)
    Hex(u64),
    /// (3) The bytes before the NUL (or the bound); `truncated` when the
    /// bound was reached first. Not necessarily UTF-8.
    String { bytes: Vec<u8>, truncated: bool },
    /// (4)
    Bytes(Vec<u8>),
    /// (5) The fetch failed; the message says where.
    Error(String),
}

/// What a return event adds: the kretprobe view (the engine's `Return`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetInfo {
    /// The return value register.
    pub value: u64,
    /// When the function was entered (CLOCK_MONOTONIC, ns).
    pub entry_time_ns: u64,
    /// The six integer arguments at entry.
    pub entry_args: [u64; 6],
    /// Where the function returned to.
    pub return_address: u64,
}

/// What happened besides hits (the engine's `Notice`). Wire tags in
/// parentheses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// (0) For a person.
    Warning { text: String },
    /// (1) The probe's breakpoint is in place in this process.
    Armed {
        probe: u32,
        pid: i32,
        addr: u64,
        location: String,
    },
    /// (2) The probe's module is not mapped yet; it is armed when it is.
    Pending {
        probe: u32,
        pid: i32,
        reason: String,
    },
    /// (3) The probe cannot be placed in this process; nothing was written.
    Refused {
        probe: u32,
        pid: i32,
        reason: String,
    },
    /// (4) The probed code went away (exec, library unmapped).
    Gone {
        probe: u32,
        pid: i32,
        reason: String,
    },
    /// (5) A traced process ended.
    Exited { pid: i32, status: ExitStatus },
    /// (6) This connection traces no process any more (the last one exited
    /// or was let go); sent after the last `Exited`.
    Idle,
    /// (7) How an armed probe is placed changed: `optimized`, or `int3: `
    /// and why not.
    Placed {
        probe: u32,
        pid: i32,
        addr: u64,
        state: String,
    },
}

/// How a process ended. Wire tags in parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// (0) `exit(code)`.
    Code(i32),
    /// (1) Killed by this signal.
    Signal(i32),
}

/// The client's answer to a sync event. Wire tags in parentheses.
// A verdict is one value per sync hit, handled at once and never stored in
// bulk: boxing the register set would buy an allocation and nothing else.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// (0) Let the thread go unchanged.
    Continue,
    /// (1) Replace the registers, then go (probes with mutation allowed).
    SetRegs(RegSet),
    /// (2) Make the function return this value (return probes with
    /// mutation allowed).
    SetReturn(u64),
}

/// A frame that could not be read. Every message names the offending
/// value.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("truncated frame: {what} needs {need} bytes, {have} left")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error(
        "frame length {len} exceeds the maximum {max} \
         (is the peer speaking the wprobe-core protocol?)"
    )]
    Oversize { len: u64, max: u32 },
    #[error("frame length 0: every frame has at least its type byte")]
    EmptyFrame,
    #[error("frame length field says {declared} bytes but {actual} follow it")]
    LengthMismatch { declared: u32, actual: usize },
    #[error("unexpected trailing data in a {frame} frame: {extra} byte(s) after its last field")]
    TrailingBytes { frame: &'static str, extra: usize },
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u64 },
    #[error("{what} must be 0 or 1, found {value}")]
    BadBool { what: &'static str, value: u8 },
    #[error("{what} is not valid UTF-8: {error}")]
    BadUtf8 {
        what: &'static str,
        error: std::str::Utf8Error,
    },
    #[error("{what}: count {count} needs at least {need} bytes, only {have} left")]
    CountTooLarge {
        what: &'static str,
        count: u32,
        need: u64,
        have: usize,
    },
    #[error("bad magic {found:02x?} in Hello: expected \"WPRB\" (is the peer a wprobe client?)")]
    BadMagic { found: [u8; 4] },
    #[error("connection closed in the middle of a frame ({have} of {need} bytes)")]
    Closed { have: usize, need: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The core's answer to a [`Hello`]: the version to speak, or the
/// [`Incompatible`] frame to send before closing. `min..=max` are the
/// versions the core serves ([`MIN_PROTOCOL_VERSION`]..=[`PROTOCOL_VERSION`]).
pub fn negotiate(hello: &Hello, min: u16, max: u16) -> Result<u16, Incompatible> {
    if (min..=max).contains(&hello.version) {
        return Ok(hello.version);
    }
    let advice = if hello.version > max {
        "upgrade wprobe-core, or use a client of the same release"
    } else {
        "upgrade the client, or use a wprobe-core of the same release"
    };
    let served = if min == max {
        format!("version {min}")
    } else {
        format!("versions {min}..={max}")
    };
    Err(Incompatible {
        supported: (min, max),
        message: format!(
            "client `{}` speaks wprobe-core protocol version {}; this wprobe-core serves {served}: {advice}",
            hello.client, hello.version
        ),
    })
}
