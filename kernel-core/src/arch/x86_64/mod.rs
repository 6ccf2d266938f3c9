//! x86_64 probe hooks, named after Linux's `arch/x86/kernel/kprobes/core.c`
//! and `arch/x86/kernel/uprobes.c`.
//!
//! A probe replaces the first byte of an instruction with [`BREAKPOINT`]
//! (`int3`). When it hits, the engine either *simulates* the instruction on
//! the registers ([`arch_simulate`]) or runs a copy *out of line* in a slot
//! ([`arch_prepare_slot`], then [`arch_post_xol`] or, on a signal,
//! [`arch_abort_xol`]). [`arch_prepare_kprobe`] decides which, once, when the
//! probe is registered.
//!
//! Everything here is byte logic over [`Regs`] and [`Memory`](super::Memory)
//! and compiles on every host; the engine owns ptrace.
//!
//! Decisions that differ from uprobes (each rule is in [`decode`]'s code):
//!
//! * Relative branches, `call rel32`, `ret`, `loop`/`jrcxz` and nops are
//!   simulated (uprobes runs `ret` and `loop` out of line). `endbr64` is
//!   simulated as a nop: it only matters to indirect-branch tracking, which
//!   Linux does not enable for user space, and it makes function entries
//!   cheap.
//! * The `lock` prefix and the ignored `es`/`cs`/`ss`/`ds` segment prefixes
//!   (branch hints, `notrack`) are allowed: an atomic instruction is just as
//!   atomic in the slot, and 64-bit mode ignores those segments. uprobes
//!   refuses both, which rules out probing most lock fast paths.
//! * VEX/EVEX (AVX, AVX-512) instructions are allowed; iced re-encodes their
//!   RIP-relative operands like any other.
//! * `syscall` is allowed out of line: the kernel returns to the end of the
//!   copy, and `rcx` (the return address the ABI clobbers) holds a slot address
//!   instead of a program one. It is `may_leave` because it may be
//!   `rt_sigreturn`. Prefer [`SlotMode::Boost`] for it: a `fork`/`clone` child
//!   runs the rest of the slot untraced, and only a jump back brings it home.
//! * `pushf` may be boosted; when single-stepped, [`arch_post_xol`] clears the
//!   TF bit it pushed (kprobes' `resume_execution` does the same).
//! * `mov ss, r/m` is refused: it suppresses the single-step trap after it.
//! * `enter`/`leave` run out of line and may be boosted: they only touch
//!   `rsp`/`rbp` and the stack, like uprobes allows.
//! * `xbegin` is refused (relative fallback, and the breakpoint aborts the
//!   transaction anyway); `xend`/`xabort`/`xtest` run out of line.
//! * Operand-size-prefixed (`66`) branches and returns are refused, as Linux
//!   refuses them: Intel ignores the prefix, AMD truncates the target.

mod boundaries;
mod decode;
mod opt;
mod regs;
mod sim;
mod slot;

#[cfg(test)]
mod tests;

pub use self::boundaries::insn_boundaries;
pub use self::decode::{
    arch_prepare_kprobe, Action, Cond, Fixup, LoopKind, Prepared, Refusal, Sim, Xol,
};
pub use self::opt::{
    arch_prepare_optimized_kprobe, arch_prepare_return_code, arch_prepare_trampoline,
    direct_branch_targets, has_rdfsbase, return_record, OptRegion, ReturnCode, RingPlace,
    Trampoline, JMP_LEN, PAD_LEN,
};
pub use self::regs::{Reg, Regs};
pub use self::sim::arch_simulate;
pub use self::slot::{
    arch_abort_xol, arch_post_xol, arch_prepare_slot, Slot, SlotMode, XolPosition,
};

pub use super::{Memory, MemoryError};

/// The breakpoint instruction planted at a probe address (`int3`).
pub const BREAKPOINT: &[u8] = &[0xCC];
/// The longest x86 instruction, in bytes.
pub const MAX_INSN_LEN: usize = 15;
/// Bytes per out-of-line slot: the longest instruction re-encoded (it can
/// grow by a prefix when rewritten through a scratch register) plus a 5-byte
/// jump back, rounded up.
pub const SLOT_SIZE: usize = 32;
/// The clock an optimized probe's trampoline stamps events with: the
/// TSC, which is invariant and shared by every core on the machines this
/// runs on; the engine converts it to `CLOCK_MONOTONIC`.
pub fn clock_ticks() -> u64 {
    // SAFETY: rdtsc has no preconditions in user space.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The architecture's name as Linux spells it.
pub const ARCH_NAME: &str = "x86_64";
