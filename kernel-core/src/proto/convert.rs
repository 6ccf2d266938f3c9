//! Conversions from the engine's types to the protocol's. The protocol has
//! its own copies so that its byte layout changes only when the protocol
//! version does; a new engine variant fails to compile here, which is the
//! reminder to add it to the protocol (and bump the version).

use super::{CaptureValue, EventKind, ExitStatus, Notice, RegSet, RetInfo, X86_64_NREGS};
use crate::arch::x86_64::Regs;
use crate::engine;

impl From<engine::Value> for CaptureValue {
    fn from(v: engine::Value) -> Self {
        match v {
            engine::Value::Unsigned(v) => CaptureValue::Unsigned(v),
            engine::Value::Signed(v) => CaptureValue::Signed(v),
            engine::Value::Hex(v) => CaptureValue::Hex(v),
            engine::Value::String { bytes, truncated } => CaptureValue::String { bytes, truncated },
            engine::Value::Bytes(b) => CaptureValue::Bytes(b),
            engine::Value::Error(e) => CaptureValue::Error(e),
        }
    }
}

impl From<engine::HitKind> for EventKind {
    fn from(k: engine::HitKind) -> Self {
        match k {
            engine::HitKind::Entry => EventKind::Entry,
            engine::HitKind::Post => EventKind::Post,
            engine::HitKind::Return => EventKind::Return,
        }
    }
}

impl From<engine::Return> for RetInfo {
    fn from(r: engine::Return) -> Self {
        RetInfo {
            value: r.value,
            entry_time_ns: r.entry_time_ns,
            entry_args: r.entry_args,
            return_address: r.return_address,
        }
    }
}

impl From<engine::ExitStatus> for ExitStatus {
    fn from(s: engine::ExitStatus) -> Self {
        match s {
            engine::ExitStatus::Code(c) => ExitStatus::Code(c),
            engine::ExitStatus::Signal(s) => ExitStatus::Signal(s),
        }
    }
}

impl From<engine::Notice> for Notice {
    fn from(n: engine::Notice) -> Self {
        match n {
            engine::Notice::Armed {
                probe,
                pid,
                addr,
                location,
            } => Notice::Armed {
                probe: probe.0,
                pid,
                addr,
                location,
            },
            engine::Notice::Pending { probe, pid, reason } => Notice::Pending {
                probe: probe.0,
                pid,
                reason,
            },
            engine::Notice::Refused { probe, pid, reason } => Notice::Refused {
                probe: probe.0,
                pid,
                reason,
            },
            engine::Notice::Gone { probe, pid, reason } => Notice::Gone {
                probe: probe.0,
                pid,
                reason,
            },
            engine::Notice::Exited { pid, status } => Notice::Exited {
                pid,
                status: status.into(),
            },
            engine::Notice::Warning(text) => Notice::Warning { text },
            engine::Notice::Placed {
                probe,
                pid,
                addr,
                state,
            } => Notice::Placed {
                probe: probe.0,
                pid,
                addr,
                state,
            },
        }
    }
}

impl From<&Regs> for RegSet {
    fn from(r: &Regs) -> Self {
        let mut values = [0u64; X86_64_NREGS];
        for (v, (_, reg)) in values.iter_mut().zip(r.named()) {
            *v = reg;
        }
        RegSet::X86_64(values)
    }
}

impl RegSet {
    /// The x86_64 register file, if this set is one (for applying a
    /// `SetRegs` verdict).
    pub fn to_x86_64(&self) -> Option<Regs> {
        let RegSet::X86_64(v) = self;
        Some(Regs {
            r15: v[0],
            r14: v[1],
            r13: v[2],
            r12: v[3],
            rbp: v[4],
            rbx: v[5],
            r11: v[6],
            r10: v[7],
            r9: v[8],
            r8: v[9],
            rax: v[10],
            rcx: v[11],
            rdx: v[12],
            rsi: v[13],
            rdi: v[14],
            orig_rax: v[15],
            rip: v[16],
            cs: v[17],
            eflags: v[18],
            rsp: v[19],
            ss: v[20],
            fs_base: v[21],
            gs_base: v[22],
            ds: v[23],
            es: v[24],
            fs: v[25],
            gs: v[26],
        })
    }
}

impl super::Event {
    /// The event of an engine hit, numbered `seq`.
    pub fn from_hit(hit: &engine::Hit<'_>, seq: u64, sync: bool) -> super::Event {
        super::Event {
            seq,
            probe: hit.probe.0,
            kind: hit.kind.into(),
            sync,
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
        }
    }
}
