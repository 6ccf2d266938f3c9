//! Simulation of branches, calls, returns and nops on the register file
//! (Linux: `branch_emulate_op`, `push_emulate_op` and the kprobes `sim`
//! handlers of arm64/riscv).

use super::decode::{LoopKind, Prepared, Sim};
use super::{Memory, MemoryError, Regs};

/// Runs a simulated instruction on the registers (Linux: `branch_emulate_op`
/// and friends). On a memory error the registers are left untouched.
///
/// Note: a simulated `call`/`ret` does not touch a CET shadow stack; a
/// process that enabled user shadow stacks would fault at the matching
/// `ret`. Linux pushes to the shadow stack here (`shstk_push`); we do not
/// support such processes yet.
pub fn arch_simulate(
    p: &Prepared,
    sim: &Sim,
    regs: &mut Regs,
    mem: &mut dyn Memory,
) -> Result<(), MemoryError> {
    let next = p.next_ip();
    match *sim {
        Sim::Nop => regs.rip = next,
        Sim::Jmp { target } => regs.rip = target,
        Sim::Jcc { cond, target } => {
            regs.rip = if cond.holds(regs.eflags) {
                target
            } else {
                next
            }
        }
        Sim::Call { target } => {
            let sp = regs.rsp.wrapping_sub(8);
            mem.write(sp, &next.to_le_bytes())?;
            regs.rsp = sp;
            regs.rip = target;
        }
        Sim::Ret { pop } => {
            let mut ret = [0u8; 8];
            mem.read(regs.rsp, &mut ret)?;
            regs.rsp = regs.rsp.wrapping_add(8 + u64::from(pop));
            regs.rip = u64::from_le_bytes(ret);
        }
        Sim::Loop {
            kind,
            target,
            addr32,
        } => {
            // With a 0x67 prefix the counter is ecx; like every 32-bit
            // register write in 64-bit mode, the result is zero-extended.
            let mask = if addr32 {
                u64::from(u32::MAX)
            } else {
                u64::MAX
            };
            let zf = regs.eflags & (1 << 6) != 0;
            let taken = if kind == LoopKind::Jrcxz {
                regs.rcx & mask == 0
            } else {
                let count = regs.rcx.wrapping_sub(1) & mask;
                regs.rcx = count;
                count != 0
                    && match kind {
                        LoopKind::Loope => zf,
                        LoopKind::Loopne => !zf,
                        _ => true,
                    }
            };
            regs.rip = if taken { target } else { next };
        }
    }
    Ok(())
}
