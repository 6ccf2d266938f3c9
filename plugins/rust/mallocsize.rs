//! mallocsize — what sizes each thread asks `malloc` for.
//!
//! Attach it to `uprobe:libc:malloc`: the first argument is the size. The
//! handler adds it to a log2 histogram keyed by the calling thread, like
//! bpftrace's `@malloc_size[tid] = hist(arg0)`:
//!
//!     @malloc_size[4242]:
//!     [16, 32)      310 |@@@@@@@@@@@@@@@@@@@@|
//!     [32, 64)       97 |@@@@@@              |
//!     [4K, 8K)        3 |                    |

use wprobe_plugin_sdk::{map, wprobe_plugin, Error, Event, Key};

fn on_entry(ev: &Event) -> Result<(), Error> {
    let size = ev.args()[0];
    // A size above i64::MAX (a bug in the program, or `malloc(-1)`) lands
    // in the histogram's negative bucket, where it stands out.
    map::hist("malloc_size", Key::Int(i64::from(ev.tid())), size as i64)
}

wprobe_plugin! {
    manifest: r#"{"name": "mallocsize-rust", "version": "0.1.0", "abi": 1}"#,
    on_entry: on_entry,
}
