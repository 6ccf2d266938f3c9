//! args — one JSON record per call, with the six integer arguments.
//!
//! The arguments are in the event already (x86_64 SysV: rdi, rsi, rdx,
//! rcx, r8, r9), so the handler reads no target memory: it writes them as
//! a record of the event stream. What they mean depends on the function;
//! for `uprobe:libc:write` they are the fd, the buffer address and the
//! length:
//!
//!     {"probe":1,"tid":4242,"addr":"0x7f3a1c0e4870","args":[1,94360117473952,3,0,0,0]}

use wprobe_plugin_sdk::{wprobe_plugin, Error, Event, JsonObject};

fn on_entry(ev: &Event) -> Result<(), Error> {
    // A JSON object without serde; `emit` sends it (at most 10 000 records
    // per second per plugin: beyond that `Error::Limit`, counted by the
    // host).
    JsonObject::new()
        .u64("probe", u64::from(ev.probe()))
        .i64("tid", i64::from(ev.tid()))
        .hex("addr", ev.addr())
        .u64_array("args", &ev.args())
        .emit()
}

wprobe_plugin! {
    manifest: r#"{"name": "args-rust", "version": "0.1.0", "abi": 1}"#,
    on_entry: on_entry,
}
