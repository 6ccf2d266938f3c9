//! Instruction analysis at a probe address: Linux's `arch_prepare_kprobe` /
//! `arch_uprobe_analyze_insn`.
//!
//! Every instruction gets one of three fates:
//!
//! * **simulate**: relative branches, calls, returns, loops and nops are run
//!   on the register file by [`arch_simulate`](super::arch_simulate), so they
//!   need no slot and stop the thread once;
//! * **out of line**: everything else that behaves the same at another
//!   address is copied to a slot (re-pointing a RIP-relative operand) and
//!   executed there; when nothing has to be fixed after it, the copy may be
//!   followed by a jump back (*boost*, kprobes' `can_boost`);
//! * **refused**, with a reason a user can act on.
//!
//! The starting point is uprobes' `good_insns_64` / `good_2byte_insns`
//! tables, expressed over iced-x86's decoded instruction rather than raw
//! opcode bits. Where we differ from uprobes, the rule below says why.

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderError, DecoderOptions, FlowControl, Formatter,
    Instruction, IntelFormatter, Mnemonic, Register,
};

use super::MAX_INSN_LEN;

/// The analysis of one instruction at a probe address
/// (Linux: `arch_prepare_kprobe` / `arch_uprobe_analyze_insn`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The probed address.
    pub addr: u64,
    /// Length of the original instruction in bytes.
    pub len: usize,
    /// The original instruction bytes; only `bytes[..len]` are meaningful.
    pub bytes: [u8; MAX_INSN_LEN],
    /// Intel-syntax disassembly, e.g. `push rbp`.
    pub text: String,
    /// What the engine does when the probe hits.
    pub action: Action,
}

impl Prepared {
    /// The address of the next instruction (`addr + len`).
    pub fn next_ip(&self) -> u64 {
        self.addr.wrapping_add(self.len as u64)
    }

    /// The original instruction bytes.
    pub fn insn(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// One word for what happens on a hit: `"simulate"`, `"boost"` (out of
    /// line followed by a jump back) or `"out-of-line"` (out of line, with a
    /// stop after the copy).
    pub fn decision(&self) -> &'static str {
        match &self.action {
            Action::Simulate(_) => "simulate",
            Action::OutOfLine(x) if x.boostable => "boost",
            Action::OutOfLine(_) => "out-of-line",
        }
    }
}

/// What the engine does with a probed instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run it on the registers with [`arch_simulate`](super::arch_simulate).
    Simulate(Sim),
    /// Copy it to a slot with [`arch_prepare_slot`](super::arch_prepare_slot) and run it there.
    OutOfLine(Xol),
}

/// A simulated instruction (Linux: the `branch_emulate_op` family and the
/// kprobes `sim` handlers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sim {
    /// Nothing happens but `rip = next_ip`: `nop`, `0f 1f /0` multi-byte nops, `endbr64`.
    Nop,
    /// `jmp rel8/rel32`.
    Jmp { target: u64 },
    /// `jcc rel8/rel32`, taken when `cond` holds on `eflags`.
    Jcc { cond: Cond, target: u64 },
    /// `call rel32`: push `next_ip`, jump to `target`.
    Call { target: u64 },
    /// `ret` / `ret imm16`: pop `rip`, then release `pop` more bytes of stack.
    Ret { pop: u16 },
    /// `loop`, `loope`, `loopne`, `jrcxz`; with `addr32` (a `0x67` prefix) the
    /// counter is `ecx` (`jecxz`).
    Loop {
        kind: LoopKind,
        target: u64,
        addr32: bool,
    },
}

/// A `jcc` condition, named after its `j<cc>` mnemonic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    O,
    No,
    B,
    Ae,
    E,
    Ne,
    Be,
    A,
    S,
    Ns,
    P,
    Np,
    L,
    Ge,
    Le,
    G,
}

/// `eflags` bits read by conditions.
const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

impl Cond {
    /// Whether the condition holds for these flags (Linux: `check_jmp_cond`).
    pub fn holds(self, eflags: u64) -> bool {
        let f = |bit: u64| eflags & bit != 0;
        match self {
            Cond::O => f(OF),
            Cond::No => !f(OF),
            Cond::B => f(CF),
            Cond::Ae => !f(CF),
            Cond::E => f(ZF),
            Cond::Ne => !f(ZF),
            Cond::Be => f(CF) || f(ZF),
            Cond::A => !f(CF) && !f(ZF),
            Cond::S => f(SF),
            Cond::Ns => !f(SF),
            Cond::P => f(PF),
            Cond::Np => !f(PF),
            Cond::L => f(SF) != f(OF),
            Cond::Ge => f(SF) == f(OF),
            Cond::Le => f(ZF) || f(SF) != f(OF),
            Cond::G => !f(ZF) && f(SF) == f(OF),
        }
    }

    fn from_iced(c: ConditionCode) -> Option<Cond> {
        Some(match c {
            ConditionCode::o => Cond::O,
            ConditionCode::no => Cond::No,
            ConditionCode::b => Cond::B,
            ConditionCode::ae => Cond::Ae,
            ConditionCode::e => Cond::E,
            ConditionCode::ne => Cond::Ne,
            ConditionCode::be => Cond::Be,
            ConditionCode::a => Cond::A,
            ConditionCode::s => Cond::S,
            ConditionCode::ns => Cond::Ns,
            ConditionCode::p => Cond::P,
            ConditionCode::np => Cond::Np,
            ConditionCode::l => Cond::L,
            ConditionCode::ge => Cond::Ge,
            ConditionCode::le => Cond::Le,
            ConditionCode::g => Cond::G,
            _ => return None,
        })
    }
}

/// The flavours of `loop` (opcodes `e0`..`e3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopKind {
    /// `loop`: decrement the counter, jump if it is not zero.
    Loop,
    /// `loope`: decrement, jump if not zero and ZF set.
    Loope,
    /// `loopne`: decrement, jump if not zero and ZF clear.
    Loopne,
    /// `jrcxz` / `jecxz`: jump if the counter is zero, without decrementing.
    Jrcxz,
}

/// How an instruction runs out of line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xol {
    /// It has a RIP-relative memory operand that must be re-pointed in the slot.
    pub rip_relative: bool,
    /// The copy may be followed by a jump back, so a hit costs one stop
    /// (kprobes' `can_boost`).
    pub boostable: bool,
    /// What [`arch_post_xol`](super::arch_post_xol) fixes after the copy ran.
    pub fixup: Fixup,
    /// Control may not fall through to the end of the copy (indirect jumps
    /// and calls, `syscall` which may be `rt_sigreturn`), so a stop after the
    /// copy may never come.
    pub may_leave: bool,
}

/// A post-step fixup (Linux: `UPROBE_FIX_CALL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixup {
    /// Nothing beyond mapping `rip` back.
    None,
    /// An indirect `call` pushed the slot's address as return address; after
    /// the step, write the original return address (`next_ip`) at `[rsp]`.
    CallIndirect,
}

/// Why an instruction cannot be probed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot probe {addr:#x} (`{text}`): {reason}")]
pub struct Refusal {
    /// The probed address.
    pub addr: u64,
    /// The disassembly, or `(bad)` when the bytes do not decode.
    pub text: String,
    /// Why, in words a user can act on.
    pub reason: String,
}

/// Analyses the instruction at `addr` (Linux: `arch_prepare_kprobe` /
/// `arch_uprobe_analyze_insn`).
///
/// `code` holds the *original* bytes at `addr` (never a breakpoint we
/// planted): up to [`MAX_INSN_LEN`] bytes, fewer near the end of a mapping.
pub fn arch_prepare_kprobe(code: &[u8], addr: u64) -> Result<Prepared, Refusal> {
    let code = &code[..code.len().min(MAX_INSN_LEN)];
    let instr = decode(code, addr).map_err(|reason| Refusal {
        addr,
        text: "(bad)".to_string(),
        reason,
    })?;
    let len = instr.len();
    let mut bytes = [0u8; MAX_INSN_LEN];
    bytes[..len].copy_from_slice(&code[..len]);
    let text = disassemble(&instr);
    match analyze(&instr, &code[..len]) {
        Ok(action) => Ok(Prepared {
            addr,
            len,
            bytes,
            text,
            action,
        }),
        Err(reason) => Err(Refusal {
            addr,
            text,
            reason: reason.to_string(),
        }),
    }
}

/// Decodes one instruction in 64-bit mode, or says why the bytes are not one.
pub(crate) fn decode(code: &[u8], addr: u64) -> Result<Instruction, String> {
    if code.is_empty() {
        return Err("no instruction bytes could be read at this address".to_string());
    }
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        let hex = hex(code);
        // iced reports "no more bytes" for a short buffer even when the bytes
        // could never start an instruction, so decode again with padding to
        // tell a cut-off instruction from an invalid one.
        let mut padded = [0u8; MAX_INSN_LEN];
        padded[..code.len()].copy_from_slice(code);
        let cut_off = decoder.last_error() == DecoderError::NoMoreBytes
            && !Decoder::with_ip(64, &padded, addr, DecoderOptions::NONE)
                .decode()
                .is_invalid();
        return Err(if cut_off {
            format!(
                "the instruction is cut off after {} bytes ({hex}); is the address \
                 at the end of a mapping, or not an instruction boundary?",
                code.len()
            )
        } else {
            format!(
                "bytes {hex} are not a valid x86_64 instruction (invalid in 64-bit \
                 mode, or not an instruction boundary)"
            )
        });
    }
    Ok(instr)
}

/// Intel-syntax disassembly as shown to users: `mov rax, [rip+0x10]`.
pub(crate) fn disassemble(instr: &Instruction) -> String {
    let mut formatter = IntelFormatter::new();
    let o = formatter.options_mut();
    o.set_hex_prefix("0x");
    o.set_hex_suffix("");
    o.set_uppercase_hex(false);
    o.set_space_after_operand_separator(true);
    o.set_rip_relative_addresses(true);
    o.set_show_branch_size(false);
    o.set_branch_leading_zeros(false);
    let mut out = String::new();
    formatter.format(instr, &mut out);
    out
}

/// Space-separated lower-case hex bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let parts: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(" ")
}

/// The legacy prefix bytes in front of the opcode (REX excluded).
fn legacy_prefixes(insn: &[u8]) -> &[u8] {
    let n = insn
        .iter()
        .take_while(|b| {
            matches!(
                b,
                0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3
            )
        })
        .count();
    &insn[..n]
}

/// Decides the fate of one decoded instruction: the action, or the reason it
/// is refused.
fn analyze(instr: &Instruction, insn: &[u8]) -> Result<Action, &'static str> {
    let code = instr.code();
    let mnemonic = instr.mnemonic();
    let prefixes = legacy_prefixes(insn);

    // Refusals with a specific reason come first, so the generic
    // "privileged" rule below does not hide a better explanation.
    match mnemonic {
        Mnemonic::Int3 => {
            return Err("the instruction is already a breakpoint — is another debugger attached?")
        }
        Mnemonic::Int1 => {
            return Err("`int1` (icebp) raises a debug trap that the tracer would take for its own single-step")
        }
        Mnemonic::Int | Mnemonic::Into => {
            return Err("software interrupts are refused, as uprobes does: the kernel's handler \
                        would see the slot's address instead of the program's")
        }
        Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => {
            return Err("`iret` reloads code segment and flags from an interrupt frame; refused, as uprobes does")
        }
        Mnemonic::Retf => {
            return Err("far returns change the code segment; refused, as uprobes does")
        }
        Mnemonic::Hlt => return Err("`hlt` is privileged: it faults in user mode"),
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => {
            return Err("the instruction raises #UD on purpose (it marks unreachable code); \
                        probe the instruction before it")
        }
        Mnemonic::Xbegin => {
            return Err("`xbegin` starts a hardware transaction with a relative fallback address; \
                        the breakpoint would abort every transaction, so it is refused")
        }
        Mnemonic::Sysenter | Mnemonic::Sysexit | Mnemonic::Sysret => {
            return Err("only `syscall` enters the kernel from 64-bit user code; \
                        `sysenter`/`sysexit`/`sysret` fault or are privileged")
        }
        Mnemonic::In | Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd | Mnemonic::Out
        | Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => {
            return Err("port I/O (`in`/`out`/`ins`/`outs`) is refused, as uprobes does")
        }
        Mnemonic::Cli | Mnemonic::Sti => {
            return Err("`cli`/`sti` need I/O privilege and fault in ordinary user code; refused, as uprobes does")
        }
        Mnemonic::Sgdt | Mnemonic::Sidt | Mnemonic::Sldt | Mnemonic::Smsw | Mnemonic::Str
        | Mnemonic::Lgdt | Mnemonic::Lidt | Mnemonic::Lldt | Mnemonic::Lmsw | Mnemonic::Ltr
        | Mnemonic::Verr | Mnemonic::Verw => {
            return Err("descriptor-table system instructions (opcode group 0f 00 / 0f 01) are \
                        refused, as uprobes does")
        }
        _ => {}
    }
    if code.is_call_far()
        || code.is_call_far_indirect()
        || code.is_jmp_far()
        || code.is_jmp_far_indirect()
    {
        return Err("far calls and jumps change the code segment; refused, as uprobes does");
    }
    if code == Code::Mov_Sreg_rm16 && instr.op0_register() == Register::SS
        || code == Code::Mov_Sreg_r32m16 && instr.op0_register() == Register::SS
        || code == Code::Mov_Sreg_r64m16 && instr.op0_register() == Register::SS
    {
        return Err(
            "`mov ss` holds off the single-step trap for one more instruction, \
                    so a stepped copy would run past its end",
        );
    }
    if instr.is_privileged() {
        return Err("privileged instruction: it faults (#GP) in user mode");
    }
    if instr.memory_base() == Register::EIP {
        return Err(
            "RIP-relative operand with a 32-bit address-size prefix (`[eip+...]`) \
                    cannot be re-pointed",
        );
    }

    // Simulated: nops and relative control transfers.
    if matches!(
        mnemonic,
        Mnemonic::Nop | Mnemonic::Endbr64 | Mnemonic::Endbr32
    ) {
        return Ok(Action::Simulate(Sim::Nop));
    }
    let relative_branch = code.is_jmp_short_or_near()
        || code.is_jcc_short_or_near()
        || code.is_loop()
        || code.is_loopcc()
        || code.is_jcx_short()
        || (code.is_call_near() && !code.is_call_near_indirect());
    let is_ret = matches!(
        code,
        Code::Retnq | Code::Retnq_imm16 | Code::Retnw | Code::Retnw_imm16
    );
    if (relative_branch || is_ret) && prefixes.contains(&0x66) {
        return Err(
            "operand-size prefix (0x66) on a branch: a 16-bit target on AMD, ignored \
                    on Intel; refused, as Linux does",
        );
    }
    if relative_branch || is_ret {
        let target = instr.near_branch_target();
        let sim = if code.is_jmp_short_or_near() {
            Sim::Jmp { target }
        } else if code.is_jcc_short_or_near() {
            let cond = Cond::from_iced(instr.condition_code())
                .ok_or("conditional jump with an unknown condition")?;
            Sim::Jcc { cond, target }
        } else if code.is_call_near() {
            Sim::Call { target }
        } else if is_ret {
            Sim::Ret {
                pop: if instr.op_count() == 1 {
                    instr.immediate16()
                } else {
                    0
                },
            }
        } else {
            let kind = match mnemonic {
                Mnemonic::Loop => LoopKind::Loop,
                Mnemonic::Loope => LoopKind::Loope,
                Mnemonic::Loopne => LoopKind::Loopne,
                _ => LoopKind::Jrcxz,
            };
            let addr32 = matches!(
                code,
                Code::Loop_rel8_64_ECX
                    | Code::Loope_rel8_64_ECX
                    | Code::Loopne_rel8_64_ECX
                    | Code::Jecxz_rel8_64
            );
            Sim::Loop {
                kind,
                target,
                addr32,
            }
        };
        return Ok(Action::Simulate(sim));
    }

    match instr.flow_control() {
        _ if mnemonic == Mnemonic::Syscall => {}
        FlowControl::Next | FlowControl::IndirectBranch | FlowControl::IndirectCall => {}
        // `xabort`/`xend` outside a transaction are a no-op or #GP, the same
        // in the slot; inside one the breakpoint has already aborted it.
        FlowControl::XbeginXabortXend => {}
        _ => return Err("this control transfer cannot be simulated or run out of line"),
    }

    let call_indirect = code.is_call_near_indirect();
    Ok(Action::OutOfLine(Xol {
        rip_relative: instr.is_ip_rel_memory_operand(),
        boostable: !call_indirect,
        fixup: if call_indirect {
            Fixup::CallIndirect
        } else {
            Fixup::None
        },
        may_leave: matches!(
            instr.flow_control(),
            FlowControl::IndirectBranch | FlowControl::IndirectCall
        ) || mnemonic == Mnemonic::Syscall,
    }))
}
