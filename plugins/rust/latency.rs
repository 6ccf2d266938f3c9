//! latency — a log2 histogram of how long a function takes.
//!
//! Attach it to a return probe (`uretprobe:libc:malloc`): the host then
//! calls `on_entry` when the function is entered and `on_return` when that
//! same call returns. The entry handler keeps the entry time as per-call
//! data; the return handler takes it back and adds the difference to the
//! histogram `latency_ns`, like bpftrace's `@latency_ns = hist(nsecs -
//! @start[tid])` but without a map of start times to clean up: the host
//! keys call data by thread and call, so recursion and threads cannot mix.
//!
//! In bpftrace's notation, for a fast function:
//!
//!     @latency_ns:
//!     [64, 128)     12 |@@@@                |
//!     [128, 256)    51 |@@@@@@@@@@@@@@@@@@@@|

use wprobe_plugin_sdk::{
    call_data_get_u64, call_data_set_u64, map, wprobe_plugin, Error, Event, Key,
};

/// Keeps the time of the entry hit (8 bytes; a later version that keeps
/// something else should tag the bytes with a version, since a replacement
/// gets the call data its predecessor kept).
fn on_entry(ev: &Event) -> Result<(), Error> {
    call_data_set_u64(ev.time_ns())
}

fn on_return(ev: &Event) -> Result<(), Error> {
    let entered = match call_data_get_u64() {
        Ok(t) => t,
        // No call data: the function was entered before the plugin was
        // attached. The event knows the entry time too; use it.
        Err(Error::NoEntry) => ev.entry_time_ns(),
        Err(e) => return Err(e),
    };
    // The return event's own time, rather than `now_ns()`: an async handler
    // may run a little after the return, and that delay is not the
    // function's.
    let latency = ev.time_ns().saturating_sub(entered);
    map::hist("latency_ns", Key::None, latency as i64)
}

wprobe_plugin! {
    manifest: r#"{"name": "latency-rust", "version": "0.1.0", "abi": 1}"#,
    on_entry: on_entry,
    on_return: on_return,
}
