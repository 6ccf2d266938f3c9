//! Tests of the x86_64 hooks, as tables of byte cases with their disassembly.
//!
//! Each file has one `check` helper; this module holds what they share: a
//! `Vec`-backed fake of target memory and a one-line summary of a decision.

// The case tables keep one case per line, with the disassembly beside it.
#[rustfmt::skip]
mod opcode_table;
#[rustfmt::skip]
mod prepare;
#[rustfmt::skip]
mod simulate;
#[rustfmt::skip]
mod slot;
#[rustfmt::skip]
mod xol;
mod props;

use super::{Action, LoopKind, Memory, MemoryError, Prepared, Sim, Xol};
use std::fmt::Write as _;

/// The address probed instructions are placed at in the tables.
const ADDR: u64 = 0x40_1000;

/// Target memory over a `Vec`: `base..base + bytes.len()` is mapped.
struct FakeMem {
    base: u64,
    bytes: Vec<u8>,
}

impl FakeMem {
    fn new(base: u64, len: usize) -> FakeMem {
        FakeMem {
            base,
            bytes: vec![0; len],
        }
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        let start = addr.checked_sub(self.base).ok_or(MemoryError { addr })? as usize;
        if start + len > self.bytes.len() {
            return Err(MemoryError { addr });
        }
        Ok(start..start + len)
    }

    fn u64_at(&self, addr: u64) -> u64 {
        let r = self.range(addr, 8).expect("test reads inside the fake");
        u64::from_le_bytes(self.bytes[r].try_into().expect("8 bytes"))
    }
}

impl Memory for FakeMem {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(addr, buf.len())?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }
}

/// One line for what happens to a prepared instruction, e.g. `boost rip`,
/// `out-of-line rip call-fixup may-leave`, `simulate jne 0x401010`.
fn summary(p: &Prepared) -> String {
    let mut s = p.decision().to_string();
    match &p.action {
        Action::Simulate(sim) => {
            let _ = match sim {
                Sim::Nop => write!(s, " nop"),
                Sim::Jmp { target } => write!(s, " jmp {target:#x}"),
                Sim::Jcc { cond, target } => {
                    write!(s, " j{} {target:#x}", format!("{cond:?}").to_lowercase())
                }
                Sim::Call { target } => write!(s, " call {target:#x}"),
                Sim::Ret { pop } => write!(s, " ret {pop}"),
                Sim::Loop {
                    kind,
                    target,
                    addr32,
                } => {
                    let name = match (kind, addr32) {
                        (LoopKind::Jrcxz, true) => "jecxz".to_string(),
                        (kind, _) => format!("{kind:?}").to_lowercase(),
                    };
                    let ecx = if *addr32 && *kind != LoopKind::Jrcxz {
                        " ecx"
                    } else {
                        ""
                    };
                    write!(s, " {name}{ecx} {target:#x}")
                }
            };
        }
        Action::OutOfLine(Xol {
            rip_relative,
            fixup,
            may_leave,
            ..
        }) => {
            if *rip_relative {
                s.push_str(" rip");
            }
            if *fixup == super::Fixup::CallIndirect {
                s.push_str(" call-fixup");
            }
            if *may_leave {
                s.push_str(" may-leave");
            }
        }
    }
    s
}
