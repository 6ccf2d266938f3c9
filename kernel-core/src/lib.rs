//! wprobe's probe engine: kprobe-style breakpoints in live user-space
//! programs.
//!
//! The one key decision: **the displaced instruction runs out of line, in a
//! page the engine maps inside the target**, as kprobes and uprobes do —
//! never by writing the original byte back and single-stepping in place.
//! The breakpoint therefore stays armed while other threads run through
//! the same code, and most hits cost one stop: the copy in the slot is
//! followed by a jump back ("boosted"). Branches, calls and returns, whose
//! effect depends on where they run, are simulated on the registers
//! instead.
//!
//! The crate knows nothing of HTTP, JSON or WebAssembly. Its parts:
//!
//! - [`arch`] — per-architecture byte logic (decode, classify, build
//!   slots, simulate), named after the kernel's hooks; compiles everywhere.
//! - [`target`] — the `Target` trait the engine drives, and the Linux
//!   ptrace backend.
//! - [`symbols`] — /proc/PID/maps, ELF symbol tables, debug files,
//!   demangling.
//! - [`spec`] — probe specifications (`uprobe:libc:malloc size=%rdi:u64`).
//! - [`engine`] — the probe table, the hit state machine and detach.
//! - [`daemon`] — `wprobe-core`: the engine serving a client over a Unix
//!   socket.
//! - [`proto`] — the `wprobe-core` wire protocol: frames, codec, reader.
//! - [`ring`] — the shared-memory event ring optimized probes write into
//!   (groundwork: the ring and its reader; the trampolines come next).

pub mod arch;
pub mod daemon;
pub mod engine;
pub mod proto;
pub mod ring;
pub mod spec;
pub mod symbols;
pub mod target;

#[cfg(test)]
pub(crate) mod fuzz_corpus;
