//! Per-architecture probe hooks, named after the Linux kernel's.
//!
//! Each architecture lives in its own module and exports the same names, so
//! a reader who knows `arch/x86/kernel/kprobes/core.c` and
//! `arch/x86/kernel/uprobes.c` finds `arch_prepare_kprobe`,
//! `arch_simulate`, `arch_post_xol` and `arch_abort_xol` where they expect
//! them.
//!
//! The one design decision here: arch logic is *byte logic*. Decoding an
//! instruction, deciding whether it can be simulated or run out of line,
//! building the out-of-line slot and simulating branches only read and write
//! bytes and a register file, so every architecture compiles and is tested on
//! every host. Target memory is reached through the [`Memory`] trait, which the
//! engine implements over ptrace or `process_vm_readv`/`process_vm_writev`.
//! Only the native register glue is gated on `cfg(target_arch)`, and only
//! here: [`native`] names the module for the architecture we run on.

pub mod x86_64;

/// The architecture this build runs on, for the engine's native glue.
#[cfg(target_arch = "x86_64")]
pub use self::x86_64 as native;

/// Target memory as the arch code sees it.
///
/// The engine implements it over ptrace (`PTRACE_PEEKDATA`/`POKEDATA`) or
/// `process_vm_readv`/`process_vm_writev`; unit tests implement it over a
/// `Vec<u8>`. A failed access names the first address that could not be
/// reached.
pub trait Memory {
    /// Reads `buf.len()` bytes starting at `addr`, or fails without a partial result.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Writes all of `buf` starting at `addr`.
    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), MemoryError>;
}

/// Target memory could not be read or written at `addr` (unmapped, or not
/// accessible to the tracer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot access target memory at {addr:#x}")]
pub struct MemoryError {
    /// The first address that could not be accessed.
    pub addr: u64,
}
