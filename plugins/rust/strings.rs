//! strings — the strings a function is given, emitted and counted.
//!
//! For each hit the plugin takes a string argument — a path passed to
//! `open` or `openat`, a command to `system` — emits it, and counts it in
//! the map `strings`. Which argument is configuration: `{"arg": 1}` for
//! `openat(dirfd, path, …)`; the default is `{"arg": 0}`, and `"max"`
//! bounds the length read (default 256 bytes).
//!
//! If the probe captures a string (`-e 'uprobe:libc:openat path=+0($arg2):string'`),
//! the plugin uses that capture instead: it was read while the thread was
//! stopped, so it is consistent even when the handler runs after the
//! thread resumed. Otherwise it reads the target's memory with
//! `read_string`.
//!
//!     {"probe":1,"tid":4242,"string":"/etc/ld.so.cache","truncated":false,"source":"memory"}
//!     @strings[/etc/ld.so.cache]: 1

use std::sync::atomic::{AtomicUsize, Ordering};

use wprobe_plugin_sdk::json;
use wprobe_plugin_sdk::{
    map, read_string, wprobe_plugin, CaptureValue, Error, Event, JsonObject, Key,
};

/// The argument index and the length bound, set once by `init`. (Atomics
/// rather than `static mut`: safe, and free in single-threaded wasm.)
static ARG: AtomicUsize = AtomicUsize::new(0);
static MAX: AtomicUsize = AtomicUsize::new(256);

/// The largest `max`: PATH_MAX, and a record that stays well below the
/// 65536 bytes `emit` takes even when every byte needs escaping.
const MAX_LIMIT: u64 = 4096;

/// Reads the configuration; an error refuses the attachment, and its text
/// tells the user what to write instead.
fn init(config: &str) -> Result<(), String> {
    let field = |name: &str| json::get(config, name).map_err(|e| format!("configuration: {e}"));
    if let Some(v) = field("arg")? {
        match v.as_u64() {
            Some(a) if a < 6 => ARG.store(a as usize, Ordering::Relaxed),
            _ => return Err(format!("\"arg\" is {v}; give an argument index, 0 to 5")),
        }
    }
    if let Some(v) = field("max")? {
        match v.as_u64() {
            Some(m) if (1..=MAX_LIMIT).contains(&m) => MAX.store(m as usize, Ordering::Relaxed),
            _ => {
                return Err(format!(
                    "\"max\" is {v}; give a length from 1 to {MAX_LIMIT}"
                ))
            }
        }
    }
    Ok(())
}

fn on_entry(ev: &Event) -> Result<(), Error> {
    // The first string capture, if the probe has one; else the argument.
    let captured = ev.captures().find_map(|c| match c.value {
        CaptureValue::Str(bytes) => Some((bytes.to_vec(), c.truncated)),
        _ => None,
    });
    let (bytes, truncated, source) = match captured {
        Some((bytes, truncated)) => (bytes, truncated, "capture"),
        None => {
            let addr = ev.args()[ARG.load(Ordering::Relaxed)];
            let s = read_string(addr, MAX.load(Ordering::Relaxed))?;
            (s.bytes, s.truncated, "memory")
        }
    };
    // Target memory need not be UTF-8: the record shows it with U+FFFD for
    // bad bytes, the map key keeps the bytes (shown as hex if not UTF-8).
    // A key is at most 256 bytes: longer strings are counted by their start.
    let key = &bytes[..bytes.len().min(map::MAX_KEY_BYTES)];
    map::count("strings", Key::Bytes(key))?;
    JsonObject::new()
        .u64("probe", u64::from(ev.probe()))
        .i64("tid", i64::from(ev.tid()))
        .str_lossy("string", &bytes)
        .bool("truncated", truncated)
        .str("source", source)
        .emit()
}

wprobe_plugin! {
    manifest: r#"{"name": "strings-rust", "version": "0.1.0", "abi": 1}"#,
    init: init,
    on_entry: on_entry,
}
