//! Guest-side SDK for wprobe handler plugins: the Rust side of
//! [docs/plugin-abi.md](../../docs/plugin-abi.md), ABI version 1.
//!
//! The one key design decision: **a plugin is plain Rust functions plus one
//! macro, and nothing else is required of it**. [`wprobe_plugin!`] writes
//! every export the host looks for (`wprobe_abi_version`, `wprobe_alloc`,
//! `_initialize`, `wprobe_init`, the handlers) and the `wprobe.manifest`
//! custom section; the handlers get a parsed, bounds-checked [`Event`] and
//! call safe wrappers of the `wprobe` host functions. A `macro_rules!` macro
//! rather than a procedural one keeps the crate free of dependencies, so it
//! builds with a bare `rustc` (Debian's 1.63 has the `wasm32-wasi` standard
//! library; its `cargo` may be missing), and so it builds natively too, where
//! its pure logic is unit-tested and the host functions answer
//! [`Error::NotWasm`].
//!
//! A complete plugin that counts hits per thread:
//!
//! ```
//! use wprobe_plugin_sdk::{map, wprobe_plugin, Error, Event, Key};
//!
//! fn on_entry(ev: &Event) -> Result<(), Error> {
//!     map::count("hits", Key::Int(ev.tid() as i64))
//! }
//!
//! wprobe_plugin! {
//!     manifest: r#"{"name": "hits", "version": "0.1.0", "abi": 1}"#,
//!     on_entry: on_entry,
//! }
//! # fn main() {}
//! ```
//!
//! Plugins link `std`: the SDK uses `Vec` and `String`, and a `no_std`
//! `cdylib` with only `alloc` does not build on Rust 1.63. The wasm module
//! is a WASI reactor (the macro exports `_initialize`), so the standard
//! library's constructors run once, before anything else.
//!
//! What is where: [`event`] reads the event layout, [`host`] wraps the host
//! functions (re-exported here), [`map`] updates the host's maps, [`json`]
//! writes records for [`emit`] and reads the configuration, [`arch`] names
//! registers, and [`wprobe_plugin!`] makes the exports.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod arch;
pub mod event;
mod export;
pub mod host;
pub mod json;
pub mod map;

pub use event::{Capture, CaptureValue, Captures, Event, EventBuilder, EventError, Flags, Kind};
pub use host::{
    call_data_get, call_data_get_into, call_data_get_u64, call_data_set, call_data_set_u64, emit,
    log, log_debug, log_error, log_info, log_warn, now_ns, read_memory, read_memory_into,
    read_string, read_u64, set_register, set_return, Error, Level, TargetString,
};
pub use json::JsonObject;
pub use map::Key;

/// The ABI version this SDK speaks; `wprobe_abi_version` returns it.
pub const ABI_VERSION: i32 = 1;

/// Items the macro's expansion uses; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{
        alloc, dispatch_event, dispatch_init, initialize, manifest_bytes, Outcome,
    };
}
