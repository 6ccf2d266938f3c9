//! Running a probe's plugins on one event: every plugin in order, their
//! records handed on, and, for a sync event, the verdict their register
//! and return-value changes add up to (the last change of a register
//! wins). `wprobe trace --plugin` and `wprobe serve` both run plugins so.

use serde_json::Value;
use wprobe_core::proto::{Action, Event, EventKind, RegSet};

use super::{Attachment, CallInfo, Runtime};

/// Runs each attachment's handler for `e`; `on_record` gets each record
/// with the attachment that emitted it and its place in the list,
/// `on_fault` each fault with that place. The verdict
/// for a sync event, `None` for an async one.
pub fn dispatch<'a>(
    rt: &Runtime,
    attachments: impl IntoIterator<Item = &'a Attachment>,
    e: &Event,
    info: CallInfo,
    mut on_record: impl FnMut(usize, &'a Attachment, Value),
    mut on_fault: impl FnMut(usize, String),
) -> Option<Action> {
    // A copy of the registers only once a plugin changes one.
    let mut regs: Option<[u64; wprobe_core::proto::X86_64_NREGS]> = None;
    let mut set_return = None;
    for (n, a) in attachments.into_iter().enumerate() {
        let o = a.handle(rt, e, info);
        for r in o.records {
            on_record(n, a, r);
        }
        for (i, v) in o.set_regs {
            let RegSet::X86_64(now) = &e.regs;
            regs.get_or_insert(*now)[i] = v;
        }
        if o.set_return.is_some() {
            set_return = o.set_return;
        }
        if let Some(f) = o.fault {
            on_fault(n, f);
        }
    }
    if !e.sync {
        return None;
    }
    Some(match (set_return, regs) {
        (Some(v), None) if e.kind == EventKind::Return => Action::SetReturn(v),
        (Some(v), Some(mut r)) if e.kind == EventKind::Return => {
            r[10] = v; // rax
            Action::SetRegs(RegSet::X86_64(r))
        }
        (_, Some(r)) => Action::SetRegs(RegSet::X86_64(r)),
        _ => Action::Continue,
    })
}
