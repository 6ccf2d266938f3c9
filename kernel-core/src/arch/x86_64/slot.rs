//! Out-of-line execution: building the slot (Linux: the copy and the
//! `handle_riprel_insn` fixups of `arch_uprobe_analyze_insn`), and mapping the
//! thread back after the copy ran (`arch_uprobe_post_xol`) or was interrupted
//! (`arch_uprobe_abort_xol`).

use iced_x86::{Encoder, Instruction, InstructionInfoFactory, Mnemonic};

use super::decode::{decode, disassemble, Action, Fixup, Prepared, Refusal, Xol};
use super::{Memory, MemoryError, Reg, Regs, BREAKPOINT, SLOT_SIZE};

/// What follows the copy in a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotMode {
    /// Copy, then `jmp next_ip`: one stop per hit (kprobes' boost).
    Boost,
    /// Copy, then `int3`: a second stop after the copy, for post-handlers
    /// (as x86 kprobes do since Linux 5.14 instead of single-stepping).
    TrapAfter,
    /// Copy only; the engine single-steps it (`PTRACE_SINGLESTEP`).
    Step,
}

/// The code placed in one out-of-line slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The slot bytes, at most [`SLOT_SIZE`].
    pub code: Vec<u8>,
    /// Length of the (possibly re-encoded) copy at the start of the slot.
    pub copy_len: usize,
    /// Set when a RIP-relative operand was rewritten through a scratch
    /// register because its target is out of ±2 GB of the slot: before entering
    /// the slot the engine saves the register and sets it to the `u64`; the
    /// mode is then always [`SlotMode::Step`].
    pub scratch: Option<(Reg, u64)>,
    /// What follows the copy.
    pub mode: SlotMode,
}

/// Where a thread stopped inside a slot was, for [`arch_abort_xol`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XolPosition {
    /// The copy had not run: `rip` is back at the probed address.
    BeforeCopy,
    /// The copy had run: `rip` is at the next instruction.
    AfterCopy,
    /// Somewhere else (should not happen); registers are untouched.
    Inside,
}

/// Registers the scratch rewrite may use, most preferred first: `rax` and
/// `rcx` as uprobes, then the rest. `rsp` and `r12` are left out because as a
/// base they need a SIB byte, `rbp`/`r13` last because they need a displacement
/// (which we keep anyway).
const SCRATCH_CANDIDATES: [Reg; 14] = [
    Reg::Rax,
    Reg::Rcx,
    Reg::Rdx,
    Reg::Rbx,
    Reg::Rsi,
    Reg::Rdi,
    Reg::R8,
    Reg::R9,
    Reg::R10,
    Reg::R11,
    Reg::R14,
    Reg::R15,
    Reg::Rbp,
    Reg::R13,
];

/// Builds the slot for `p` placed at `slot_addr` (Linux: the copy made by
/// `arch_uprobe_analyze_insn` with its `handle_riprel_insn` fixup).
///
/// Instructions without a RIP-relative operand are copied byte for byte.
/// A RIP-relative one is re-encoded at `slot_addr` so it reaches the same
/// absolute address; when that address is out of ±2 GB of the slot, the operand
/// is rewritten as `[scratch + disp32]` with a register the instruction does
/// not use, which the engine sets to `p.next_ip()` (so the sum is the original
/// target). That needs [`SlotMode::Step`]; any other mode is refused, and the
/// engine asks again with `Step`.
pub fn arch_prepare_slot(p: &Prepared, slot_addr: u64, mode: SlotMode) -> Result<Slot, Refusal> {
    let refuse = |reason: String| Refusal {
        addr: p.addr,
        text: p.text.clone(),
        reason,
    };
    let xol = match &p.action {
        Action::OutOfLine(xol) => xol,
        Action::Simulate(_) => {
            return Err(refuse(
                "the instruction is simulated, it needs no slot".to_string(),
            ))
        }
    };
    if mode == SlotMode::Boost && !xol.boostable {
        return Err(refuse(format!(
            "the instruction needs a fixup after it runs, so it cannot be boosted; use {:?}",
            SlotMode::Step
        )));
    }
    if xol.fixup == Fixup::CallIndirect && mode != SlotMode::Step {
        return Err(refuse(
            "an indirect call must be single-stepped (SlotMode::Step) so its return address \
             can be fixed before the callee runs"
                .to_string(),
        ));
    }

    let (mut code, scratch) = if xol.rip_relative {
        copy_rip_relative(p, slot_addr, mode).map_err(refuse)?
    } else {
        (p.insn().to_vec(), None)
    };
    let copy_len = code.len();

    match mode {
        SlotMode::Boost => {
            let jmp_end = slot_addr.wrapping_add(copy_len as u64 + 5);
            let rel = p.next_ip().wrapping_sub(jmp_end) as i64;
            let rel = i32::try_from(rel).map_err(|_| {
                refuse(format!(
                    "the slot at {slot_addr:#x} is out of ±2 GB of the next instruction \
                     {:#x}, so the jump back cannot reach it; place slots near the code",
                    p.next_ip()
                ))
            })?;
            code.push(0xe9);
            code.extend_from_slice(&rel.to_le_bytes());
        }
        SlotMode::TrapAfter => code.extend_from_slice(BREAKPOINT),
        SlotMode::Step => {}
    }
    if code.len() > SLOT_SIZE {
        return Err(refuse(format!(
            "the slot code is {} bytes, more than the {SLOT_SIZE}-byte slot",
            code.len()
        )));
    }
    Ok(Slot {
        code,
        copy_len,
        scratch,
        mode,
    })
}

/// The scratch register of a rewritten copy and the value it must hold.
type Scratch = Option<(Reg, u64)>;

/// Re-encodes a RIP-relative instruction at `slot_addr`, through a scratch
/// register when the target is out of reach.
fn copy_rip_relative(
    p: &Prepared,
    slot_addr: u64,
    mode: SlotMode,
) -> Result<(Vec<u8>, Scratch), String> {
    let mut instr = decode(p.insn(), p.addr)?;
    let target = instr.ip_rel_memory_address();
    let mut encoder = Encoder::new(64);
    if encoder.encode(&instr, slot_addr).is_ok() {
        let code = encoder.take_buffer();
        same_after_encoding(&instr, &code, slot_addr)?;
        return Ok((code, None));
    }
    if mode != SlotMode::Step {
        return Err(format!(
            "its RIP-relative operand {target:#x} is out of ±2 GB of the slot at {slot_addr:#x}; \
             the scratch-register rewrite needs SlotMode::Step"
        ));
    }

    let mut factory = InstructionInfoFactory::new();
    let used: Vec<iced_x86::Register> = factory
        .info(&instr)
        .used_registers()
        .iter()
        .map(|u| u.register().full_register())
        .collect();
    let reg = SCRATCH_CANDIDATES
        .into_iter()
        .find(|r| !used.contains(&r.iced()))
        .ok_or_else(|| {
            "no free general-purpose register to rewrite its RIP-relative operand".to_string()
        })?;

    // [rip + disp] == [next_ip + disp] == [reg + disp] once reg = next_ip.
    let disp = target.wrapping_sub(p.next_ip());
    instr.set_memory_base(reg.iced());
    instr.set_memory_displacement64(disp);
    instr.set_memory_displ_size(8);
    let mut encoder = Encoder::new(64);
    encoder.encode(&instr, slot_addr).map_err(|e| {
        format!(
            "cannot re-encode `{}` through {reg}: {e}",
            disassemble(&instr)
        )
    })?;
    let code = encoder.take_buffer();
    same_after_encoding(&instr, &code, slot_addr)?;
    Ok((code, Some((reg, p.next_ip()))))
}

/// Refuses a re-encoding that is another instruction: iced encodes a few
/// reserved-NOP forms (`66 REX.W 0f 1c /r`) as the instruction that now
/// owns their opcode (`cldemote`). Compared as iced compares, the address
/// and length aside and a RIP-relative operand by its absolute target.
fn same_after_encoding(instr: &Instruction, code: &[u8], at: u64) -> Result<(), String> {
    match decode(code, at) {
        Ok(copy) if copy == *instr && copy.len() == code.len() => Ok(()),
        _ => Err(format!(
            "`{}` does not re-encode as itself out of line",
            disassemble(instr)
        )),
    }
}

/// Fixes the registers after the copy ran (Linux: `arch_uprobe_post_xol`,
/// kprobes' `resume_execution`).
///
/// Call it at the `int3` stop of a [`SlotMode::TrapAfter`] slot
/// (`rip == slot_addr + copy_len + 1`) or at the stop after a
/// [`SlotMode::Step`]. It
///
/// * writes the original return address (`next_ip`) at `[rsp]` for an
///   indirect call (`UPROBE_FIX_CALL`);
/// * clears TF in the flags a single-stepped `pushf` pushed (kprobes'
///   `resume_execution` does the same), since the program never set it;
/// * restores the scratch register from `saved_scratch`;
/// * maps `rip` back: the end of the copy (or the `int3` after it) becomes
///   `next_ip`; `slot_addr` itself becomes `p.addr` (a `rep` string
///   instruction stops after each iteration when single-stepped, so the probe
///   will hit again, as with uprobes); any other `rip` means control left the
///   slot (indirect jump or call, `syscall` doing `rt_sigreturn`) and is kept.
pub fn arch_post_xol(
    p: &Prepared,
    slot: &Slot,
    slot_addr: u64,
    saved_scratch: Option<u64>,
    regs: &mut Regs,
    mem: &mut dyn Memory,
) -> Result<(), MemoryError> {
    let fixup = match &p.action {
        Action::OutOfLine(Xol { fixup, .. }) => *fixup,
        Action::Simulate(_) => Fixup::None,
    };
    let end = slot_addr.wrapping_add(slot.copy_len as u64);
    let fell_through =
        regs.rip == end || (slot.mode == SlotMode::TrapAfter && regs.rip == end.wrapping_add(1));

    // Memory first, so a failed write leaves the registers as they were.
    if fixup == Fixup::CallIndirect {
        mem.write(regs.rsp, &p.next_ip().to_le_bytes())?;
    }
    if slot.mode == SlotMode::Step && fell_through && is_pushf(p) {
        const TF: u64 = 1 << 8;
        let mut pushed = [0u8; 8];
        mem.read(regs.rsp, &mut pushed)?;
        let flags = u64::from_le_bytes(pushed) & !TF;
        mem.write(regs.rsp, &flags.to_le_bytes())?;
    }

    restore_scratch(slot, saved_scratch, regs);
    if fell_through {
        regs.rip = p.next_ip();
    } else if regs.rip == slot_addr {
        regs.rip = p.addr;
    }
    Ok(())
}

/// Maps a thread that stopped (signal, fault) with `rip` inside a slot back to
/// the program (Linux: `arch_uprobe_abort_xol`).
///
/// At `slot_addr` the copy has not run: `rip = p.addr`. At the end of the copy
/// (the `jmp` or `int3` that follows it, or just past that `int3`) it has:
/// `rip = p.next_ip()`. In both cases the scratch register is restored.
/// Anywhere else nothing is changed and [`XolPosition::Inside`] is returned.
pub fn arch_abort_xol(
    p: &Prepared,
    slot: &Slot,
    slot_addr: u64,
    saved_scratch: Option<u64>,
    regs: &mut Regs,
) -> XolPosition {
    let end = slot_addr.wrapping_add(slot.copy_len as u64);
    let position = if regs.rip == slot_addr {
        XolPosition::BeforeCopy
    } else if regs.rip == end
        || (slot.mode == SlotMode::TrapAfter && regs.rip == end.wrapping_add(1))
    {
        XolPosition::AfterCopy
    } else {
        return XolPosition::Inside;
    };
    restore_scratch(slot, saved_scratch, regs);
    regs.rip = match position {
        XolPosition::BeforeCopy => p.addr,
        _ => p.next_ip(),
    };
    position
}

fn restore_scratch(slot: &Slot, saved_scratch: Option<u64>, regs: &mut Regs) {
    if let (Some((reg, _)), Some(saved)) = (slot.scratch, saved_scratch) {
        regs.set(reg, saved);
    }
}

fn is_pushf(p: &Prepared) -> bool {
    decode(p.insn(), p.addr)
        .is_ok_and(|i| i.mnemonic() == Mnemonic::Pushfq || i.mnemonic() == Mnemonic::Pushf)
}
