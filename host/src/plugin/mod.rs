//! WebAssembly handler plugins (docs/plugin-abi.md): the ABI's event
//! layout, manifests, host-side maps, and the wasmtime runtime that runs
//! handlers in a sandbox.

pub mod abi;
pub mod compile;
mod dispatch;
pub mod manifest;
pub mod maps;
mod runtime;

pub use compile::Compiler;
pub use dispatch::dispatch;
pub use runtime::{
    Attachment, CallInfo, CompileLimits, Handlers, Limits, Outcome, Plugin, ProcessMemory, Runtime,
    Stats, TargetMemory, FAULT_INJECTION,
};

#[cfg(test)]
mod tests;
