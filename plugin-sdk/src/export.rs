//! The module's exports (docs/plugin-abi.md, "The module"), written by
//! [`wprobe_plugin!`] from plain functions.
//!
//! Memory from `wprobe_alloc` is never freed: the host asks for a buffer
//! for the configuration and one for events (again, larger, when an event
//! outgrows it), and keeps writing into the event buffer for as long as the
//! instance lives. So a few buffers leak per instance, the largest one the
//! size of the largest event; in exchange nothing the host holds can dangle.

use std::alloc::{self, Layout};
use std::fmt;

use crate::event::Event;
use crate::host::{log_error, log_warn};

/// The alignment of `wprobe_alloc`'s buffers: the event's `u64` fields are
/// then aligned too (the SDK does not rely on it; C code that casts may).
const ALLOC_ALIGN: usize = 8;

/// What a handler or `init` function may return: `()`, or a `Result`
/// whose error says what went wrong.
pub trait Outcome {
    /// `Ok` or the error's text.
    fn into_result(self) -> Result<(), String>;
}

impl Outcome for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> Outcome for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// `wprobe_alloc`: `size` bytes that stay valid for the instance's life,
/// aligned to 8; `0` when out of memory or `size` is negative.
pub fn alloc(size: i32) -> i32 {
    if size < 0 {
        return 0;
    }
    // A zero-sized allocation is not allowed; the host gets one byte.
    let layout = match Layout::from_size_align((size as usize).max(1), ALLOC_ALIGN) {
        Ok(layout) => layout,
        Err(_) => return 0,
    };
    // SAFETY: the layout's size is not zero. The memory is never freed
    // (see the module's doc), so the pointer stays valid; a null pointer
    // (out of memory) is the ABI's `0`.
    let ptr = unsafe { alloc::alloc(layout) };
    ptr as usize as i32
}

/// `_initialize`: runs the module's constructors once.
pub fn initialize() {
    crate::host::initialize()
}

/// The `len` bytes at `ptr`, or `None` for a negative length or a null
/// pointer with bytes.
///
/// # Safety
///
/// `ptr..ptr + len` must be memory of this module that nothing writes
/// while the slice lives (the host's buffer during a call).
unsafe fn host_bytes<'a>(ptr: i32, len: i32) -> Option<&'a [u8]> {
    if len < 0 || (ptr == 0 && len > 0) {
        return None;
    }
    if len == 0 {
        return Some(&[]);
    }
    // SAFETY: the caller vouches for the memory; pointers are 32-bit in
    // wasm32, so the `i32` is read as unsigned.
    Some(unsafe { std::slice::from_raw_parts(ptr as u32 as usize as *const u8, len as usize) })
}

/// A handler export: parses the event and calls `handler` with it.
///
/// Returns `0` when the handler ran, whatever it returned: an `Err` is
/// logged as a warning (a failed read of a bad pointer is no fault of the
/// plugin). A malformed event is logged as an error and returns `1`, which
/// the host counts as a fault. A handler that wants a fault panics: the
/// panic message goes to the plugin's log and the trap is the fault.
///
/// # Safety
///
/// `event..event + len` must be the host's event buffer, filled by it for
/// this call, as the ABI promises.
pub unsafe fn dispatch_event<F, R>(event: i32, len: i32, name: &str, handler: F) -> i32
where
    F: FnOnce(&Event<'_>) -> R,
    R: Outcome,
{
    // SAFETY: forwarded from the caller.
    match unsafe { host_bytes(event, len) } {
        Some(bytes) => handle_event(bytes, name, handler),
        None => {
            log_error(&format!(
                "wprobe_{name}: bad event buffer ({len} bytes at {event:#x})"
            ));
            1
        }
    }
}

/// [`dispatch_event`] once the buffer is a slice.
fn handle_event<F, R>(bytes: &[u8], name: &str, handler: F) -> i32
where
    F: FnOnce(&Event<'_>) -> R,
    R: Outcome,
{
    match Event::parse(bytes) {
        Ok(ev) => {
            if let Err(e) = handler(&ev).into_result() {
                log_warn(&format!("wprobe_{name}: {e}"));
            }
            0
        }
        Err(e) => {
            log_error(&format!("wprobe_{name}: {e}"));
            1
        }
    }
}

/// The `wprobe_init` export: calls `init` with the configuration text;
/// an `Err` refuses the attachment (logged as an error, returns `1`).
///
/// # Safety
///
/// `config..config + len` must be the host's configuration buffer.
pub unsafe fn dispatch_init<F, R>(config: i32, len: i32, init: F) -> i32
where
    F: FnOnce(&str) -> R,
    R: Outcome,
{
    // SAFETY: forwarded from the caller.
    match unsafe { host_bytes(config, len) } {
        Some(bytes) => handle_init(bytes, init),
        None => {
            log_error(&format!(
                "wprobe_init: bad configuration buffer ({len} bytes at {config:#x})"
            ));
            1
        }
    }
}

/// [`dispatch_init`] once the buffer is a slice.
fn handle_init<F, R>(bytes: &[u8], init: F) -> i32
where
    F: FnOnce(&str) -> R,
    R: Outcome,
{
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            log_error(&format!(
                "wprobe_init: the configuration is not UTF-8 ({e})"
            ));
            return 1;
        }
    };
    match init(text).into_result() {
        Ok(()) => 0,
        Err(e) => {
            log_error(&format!("wprobe_init: refused: {e}"));
            1
        }
    }
}

/// The manifest's bytes as an array, for a `#[link_section]` static (which
/// must hold its data, not a reference to it).
pub const fn manifest_bytes<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// Writes a plugin's exports from plain functions, and its manifest.
///
/// ```
/// use wprobe_plugin_sdk::{map, wprobe_plugin, Error, Event};
///
/// fn init(config: &str) -> Result<(), String> {
///     // `config` is the JSON given at attachment, `{}` when none; an
///     // `Err` refuses the attachment.
///     Ok(())
/// }
///
/// fn on_return(ev: &Event) -> Result<(), Error> {
///     map::hist("latency_ns", map::Key::None, ev.latency_ns() as i64)
/// }
///
/// wprobe_plugin! {
///     manifest: r#"{"name": "lat", "version": "1.0.0", "abi": 1}"#,
///     init: init,
///     on_return: on_return,
/// }
/// # fn main() {}
/// ```
///
/// Items, each optional, in any order, separated by commas:
///
/// - `manifest: "…"` — a `&str` constant (JSON text), put in the
///   `wprobe.manifest` custom section as it is;
/// - `init: f` — `fn(&str) -> R`, called once with the configuration;
///   `R` is `()` or `Result<(), E: Display>`, and an `Err` refuses the
///   attachment;
/// - `on_entry: f`, `on_return: f`, `on_post: f` — `fn(&Event) -> R`
///   (functions or closures); an `Err` is logged as a warning and is no
///   fault. The host calls a plugin only for the kinds it has handlers for.
///
/// It always writes `wprobe_abi_version` (returns 1), `wprobe_alloc` (see
/// the `export` module's doc: its memory is never freed) and `_initialize`
/// (runs the constructors, as a WASI reactor's does). Use it once per
/// plugin, at the crate's top level.
#[macro_export]
macro_rules! wprobe_plugin {
    ($($items:tt)*) => {
        /// ABI v1: the host refuses any other answer.
        #[no_mangle]
        pub extern "C" fn wprobe_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        /// `size` bytes that stay valid for the instance's life; 0 when out
        /// of memory.
        #[no_mangle]
        pub extern "C" fn wprobe_alloc(size: i32) -> i32 {
            $crate::__private::alloc(size)
        }

        /// The WASI reactor's constructor: the host calls it first, once.
        #[no_mangle]
        pub extern "C" fn _initialize() {
            $crate::__private::initialize()
        }

        $crate::__wprobe_plugin_items! { $($items)* }
    };
}

/// The items of [`wprobe_plugin!`], one at a time.
#[doc(hidden)]
#[macro_export]
macro_rules! __wprobe_plugin_items {
    () => {};
    (manifest: $manifest:expr $(, $($rest:tt)*)?) => {
        const __WPROBE_MANIFEST_TEXT: &str = $manifest;
        /// The `wprobe.manifest` custom section.
        #[link_section = "wprobe.manifest"]
        #[used]
        static __WPROBE_MANIFEST: [u8; __WPROBE_MANIFEST_TEXT.len()] =
            $crate::__private::manifest_bytes::<{ __WPROBE_MANIFEST_TEXT.len() }>(
                __WPROBE_MANIFEST_TEXT,
            );
        $crate::__wprobe_plugin_items! { $($($rest)*)? }
    };
    (init: $init:expr $(, $($rest:tt)*)?) => {
        /// Called once with the configuration; nonzero refuses it.
        #[no_mangle]
        pub extern "C" fn wprobe_init(config: i32, len: i32) -> i32 {
            // SAFETY: the host calls this with the configuration it wrote
            // into a buffer from `wprobe_alloc`.
            unsafe { $crate::__private::dispatch_init(config, len, $init) }
        }
        $crate::__wprobe_plugin_items! { $($($rest)*)? }
    };
    (on_entry: $handler:expr $(, $($rest:tt)*)?) => {
        $crate::__wprobe_plugin_items! { @handler wprobe_on_entry "on_entry" $handler }
        $crate::__wprobe_plugin_items! { $($($rest)*)? }
    };
    (on_return: $handler:expr $(, $($rest:tt)*)?) => {
        $crate::__wprobe_plugin_items! { @handler wprobe_on_return "on_return" $handler }
        $crate::__wprobe_plugin_items! { $($($rest)*)? }
    };
    (on_post: $handler:expr $(, $($rest:tt)*)?) => {
        $crate::__wprobe_plugin_items! { @handler wprobe_on_post "on_post" $handler }
        $crate::__wprobe_plugin_items! { $($($rest)*)? }
    };
    (@handler $export:ident $name:literal $handler:expr) => {
        /// A handler: `(event, len)` of the host's event buffer.
        #[no_mangle]
        pub extern "C" fn $export(event: i32, len: i32) -> i32 {
            // SAFETY: the host calls handlers with the event it wrote into a
            // buffer from `wprobe_alloc`, and writes nothing else meanwhile.
            unsafe { $crate::__private::dispatch_event(event, len, $name, $handler) }
        }
    };
    ($other:tt $($rest:tt)*) => {
        compile_error!(concat!(
            "wprobe_plugin!: unexpected `",
            stringify!($other),
            "`; the items are `manifest: \"…\"`, `init: f`, `on_entry: f`, `on_return: f` ",
            "and `on_post: f`, separated by commas"
        ));
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBuilder, Kind};

    #[test]
    fn manifest_bytes_copy_the_text() {
        const M: &str = r#"{"name":"x","abi":1}"#;
        const B: [u8; M.len()] = manifest_bytes::<{ M.len() }>(M);
        assert_eq!(&B[..], M.as_bytes());
    }

    #[test]
    fn outcomes() {
        assert_eq!(().into_result(), Ok(()));
        assert_eq!(Ok::<(), String>(()).into_result(), Ok(()));
        assert_eq!(
            Err::<(), _>(crate::Error::NoEntry)
                .into_result()
                .map_err(|e| e.starts_with("-6 ENOENT")),
            Err(true)
        );
    }

    /// Runs a handler that returns `outcome` on `bytes`; compares the
    /// export's result.
    fn check(bytes: &[u8], outcome: Result<(), &str>, expect: i32) {
        let mut called = false;
        let got = handle_event(bytes, "on_entry", |_: &Event| {
            called = true;
            outcome
        });
        assert_eq!(got, expect);
        assert_eq!(called, Event::parse(bytes).is_ok());
    }

    #[test]
    fn handlers_return_zero_unless_the_event_is_malformed() {
        let good = EventBuilder::new(Kind::Entry).build();
        check(&good, Ok(()), 0);
        check(&good, Err("read failed"), 0);
        check(&good[..100], Ok(()), 1);
        check(&[], Ok(()), 1);
    }

    #[test]
    fn bad_buffers_are_faults() {
        // SAFETY: neither buffer is dereferenced: a negative length and a
        // null pointer with bytes are refused first.
        unsafe {
            assert_eq!(dispatch_event(16, -1, "on_entry", |_: &Event| ()), 1);
            assert_eq!(dispatch_event(0, 4, "on_entry", |_: &Event| ()), 1);
            assert_eq!(
                dispatch_init(0, 0, |c: &str| if c.is_empty() { Ok(()) } else { Err("x") }),
                0
            );
        }
    }

    #[test]
    fn init_refuses_on_error_or_bad_text() {
        assert_eq!(handle_init(b"{}", |c: &str| assert_eq!(c, "{}")), 0);
        assert_eq!(handle_init(b"{}", |_: &str| Err::<(), _>("no")), 1);
        assert_eq!(handle_init(&[0xff], |_: &str| ()), 1);
    }

    #[test]
    fn alloc_refuses_negative_sizes() {
        assert_eq!(alloc(-1), 0);
    }
}
