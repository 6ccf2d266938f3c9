//! count — how often each probe fires, and on which threads.
//!
//! The smallest useful plugin: every entry hit adds one to two counters
//! kept by the host, one keyed by the probe id and one by the thread id,
//! like bpftrace's `@hits_by_probe[probe] = count(); @hits_by_tid[tid] =
//! count();`. Nothing is emitted per hit; the maps are the result, and the
//! host shows them (and keeps them if the plugin is replaced). On
//! `uprobe:libc:malloc`, in bpftrace's notation:
//!
//!     @hits_by_probe[1]: 1234
//!     @hits_by_tid[4242]: 1200
//!     @hits_by_tid[4243]: 34

use wprobe_plugin_sdk::{map, wprobe_plugin, Error, Event, Key};

/// Called for every entry hit (and, on a return probe, for every call).
fn on_entry(ev: &Event) -> Result<(), Error> {
    // Integer keys: the host shows them as numbers. `?` hands a refusal
    // (e.g. the 10 000-key cap, `Error::Limit`) to the SDK, which logs it.
    map::count("hits_by_probe", Key::Int(i64::from(ev.probe())))?;
    map::count("hits_by_tid", Key::Int(i64::from(ev.tid())))
}

wprobe_plugin! {
    // The manifest says who the plugin is (a custom section of the module).
    manifest: r#"{"name": "count-rust", "version": "0.1.0", "abi": 1}"#,
    on_entry: on_entry,
}
