//! Safe wrappers of the host functions of import module `wprobe`
//! (docs/plugin-abi.md, "Host functions").
//!
//! Each wrapper turns a negative result into an [`Error`]. Outside wasm
//! (native unit tests) there is no host: every wrapper returns
//! [`Error::NotWasm`], except [`now_ns`], which reads a monotonic clock.

use std::fmt;

/// What a host function refused, by its negative code
/// (docs/plugin-abi.md, "Error codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `-1` `EFAULT_TARGET`: the target address cannot be read.
    FaultTarget,
    /// `-2` `EFAULT_PLUGIN`: a pointer and length outside the plugin's
    /// memory.
    FaultPlugin,
    /// `-3` `E2BIG`: a length above the function's bound.
    TooBig,
    /// `-4` `EINVAL`: a bad argument.
    Invalid,
    /// `-5` `EPERM`: not allowed here.
    NotPermitted,
    /// `-6` `ENOENT`: no per-call data for this call.
    NoEntry,
    /// `-7` `ELIMIT`: a cap was reached; the host counted the overflow.
    Limit,
    /// `-8` `ESRCH`: the target process is gone.
    NoProcess,
    /// A negative code this SDK does not know (a later ABI).
    Other(i32),
    /// Not running in wasm: there is no host (native unit tests).
    NotWasm,
}

impl Error {
    /// The error of a negative result.
    pub fn from_code(code: i32) -> Error {
        match code {
            -1 => Error::FaultTarget,
            -2 => Error::FaultPlugin,
            -3 => Error::TooBig,
            -4 => Error::Invalid,
            -5 => Error::NotPermitted,
            -6 => Error::NoEntry,
            -7 => Error::Limit,
            -8 => Error::NoProcess,
            other => Error::Other(other),
        }
    }

    /// The ABI's code (`0` for [`Error::NotWasm`], which has none).
    pub fn code(&self) -> i32 {
        match *self {
            Error::FaultTarget => -1,
            Error::FaultPlugin => -2,
            Error::TooBig => -3,
            Error::Invalid => -4,
            Error::NotPermitted => -5,
            Error::NoEntry => -6,
            Error::Limit => -7,
            Error::NoProcess => -8,
            Error::Other(code) => code,
            Error::NotWasm => 0,
        }
    }

    /// The ABI's name of the code (`EFAULT_TARGET`, …).
    pub fn name(&self) -> &'static str {
        match *self {
            Error::FaultTarget => "EFAULT_TARGET",
            Error::FaultPlugin => "EFAULT_PLUGIN",
            Error::TooBig => "E2BIG",
            Error::Invalid => "EINVAL",
            Error::NotPermitted => "EPERM",
            Error::NoEntry => "ENOENT",
            Error::Limit => "ELIMIT",
            Error::NoProcess => "ESRCH",
            Error::Other(_) => "unknown",
            Error::NotWasm => "not wasm",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match *self {
            Error::FaultTarget => "the target address cannot be read (unmapped, or a guard page)",
            Error::FaultPlugin => "a pointer and length outside the plugin's memory",
            Error::TooBig => "a length above the function's bound (reads and emits: 65536 bytes, call data: 1024)",
            Error::Invalid => "a bad argument (map name not UTF-8, a map updated with another kind, invalid JSON, lhist bounds without buckets)",
            Error::NotPermitted => "not allowed here (mutation needs a sync event of a probe with mutation allowed and a manifest that asks for it; call_data_set needs an entry handler)",
            Error::NoEntry => "no per-call data for this call (the entry handler kept none, or ran before the plugin was attached)",
            Error::Limit => "a cap was reached (map keys, histogram series or emitted records per second); the host counted the overflow",
            Error::NoProcess => "the target process is gone",
            Error::Other(_) => "an error code this SDK does not know (is the host newer?)",
            Error::NotWasm => "no host: the plugin runs natively, outside wasm",
        };
        write!(f, "{} {}: {}", self.code(), self.name(), what)
    }
}

impl std::error::Error for Error {}

/// `Ok(result)` for a result `>= 0`, else its error.
fn check(rc: i32) -> Result<usize, Error> {
    if Some(rc) == sys::NO_HOST {
        Err(Error::NotWasm)
    } else if rc >= 0 {
        Ok(rc as usize)
    } else {
        Err(Error::from_code(rc))
    }
}

/// A length as the ABI's `i32`; a length that does not fit is above any
/// bound of the ABI.
fn len_i32(len: usize) -> Result<i32, Error> {
    if len > i32::MAX as usize {
        Err(Error::TooBig)
    } else {
        Ok(len as i32)
    }
}

/// The most bytes one `read_memory`, `read_string` or `emit` moves.
pub const MAX_TRANSFER: usize = 65536;
/// The most bytes `call_data_set` keeps.
pub const MAX_CALL_DATA: usize = 1024;

/// Copies `len` bytes (at most [`MAX_TRANSFER`]) of the target at `addr`.
pub fn read_memory(addr: u64, len: usize) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; len];
    let n = read_memory_into(addr, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Copies `buf.len()` bytes of the target at `addr` into `buf`.
pub fn read_memory_into(addr: u64, buf: &mut [u8]) -> Result<usize, Error> {
    let len = len_i32(buf.len())?;
    // SAFETY: the host writes at most `len` bytes into `buf`, which is
    // `len` bytes of this module's memory that we borrow mutably.
    check(unsafe { sys::read_memory(addr as i64, buf.as_mut_ptr(), len) })
}

/// Reads the 8-byte little-endian integer at `addr` (a pointer, a `long`).
pub fn read_u64(addr: u64) -> Result<u64, Error> {
    let mut b = [0u8; 8];
    read_memory_into(addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A NUL-terminated string read from the target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetString {
    /// The bytes before the NUL (not necessarily UTF-8).
    pub bytes: Vec<u8>,
    /// No NUL was found within the bound: `bytes` is its first part.
    pub truncated: bool,
}

impl TargetString {
    /// The string, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    /// The string with invalid UTF-8 replaced by U+FFFD.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Reads the NUL-terminated string at `addr`, at most `max` bytes of it
/// (`max` ≤ [`MAX_TRANSFER`]).
///
/// `truncated` says that no NUL came within `max` bytes. The host's own
/// answer cannot tell a string of exactly `max` bytes from a longer one, so
/// for `max` below [`MAX_TRANSFER`] the SDK asks for one byte more and
/// keeps `max`.
pub fn read_string(addr: u64, max: usize) -> Result<TargetString, Error> {
    let ask = string_request(max);
    let mut buf = vec![0u8; ask];
    let n = read_string_into(addr, &mut buf)?;
    Ok(string_result(buf, n, max))
}

/// How many bytes to ask the host for, to read a string of at most `max`.
fn string_request(max: usize) -> usize {
    if max < MAX_TRANSFER {
        max + 1
    } else {
        max
    }
}

/// The string of `read_string(addr, max)`, from the host's answer `n` for
/// `buf` of `string_request(max)` bytes.
fn string_result(mut buf: Vec<u8>, n: usize, max: usize) -> TargetString {
    // The host fills all of `buf` only when no NUL came within it.
    let truncated = n >= buf.len();
    buf.truncate(n.min(max));
    TargetString {
        bytes: buf,
        truncated,
    }
}

/// The raw `read_string`: copies the string at `addr` into `buf` (without
/// its NUL) and returns its length; `buf.len()` means no NUL was found.
pub fn read_string_into(addr: u64, buf: &mut [u8]) -> Result<usize, Error> {
    let len = len_i32(buf.len())?;
    // SAFETY: the host writes at most `len` bytes into `buf`, which we
    // borrow mutably.
    check(unsafe { sys::read_string(addr as i64, buf.as_mut_ptr(), len) })
}

/// Sends a record to the event stream: UTF-8 JSON text, at most
/// [`MAX_TRANSFER`] bytes (see [`crate::JsonObject`]).
pub fn emit(json: &str) -> Result<(), Error> {
    let len = len_i32(json.len())?;
    // SAFETY: the host only reads `len` bytes of `json`.
    check(unsafe { sys::emit(json.as_ptr(), len) }).map(drop)
}

/// The raw `map_update` (see [`crate::map`] for the typed functions).
pub fn map_update_raw(
    op: i32,
    name: &str,
    key_kind: i32,
    key: &[u8],
    value: i64,
) -> Result<(), Error> {
    let name_len = len_i32(name.len())?;
    let key_len = len_i32(key.len())?;
    // SAFETY: the host only reads `name_len` bytes of `name` and `key_len`
    // bytes of `key`.
    let rc = unsafe {
        sys::map_update(
            op,
            name.as_ptr(),
            name_len,
            key_kind,
            key.as_ptr(),
            key_len,
            value,
        )
    };
    check(rc).map(drop)
}

/// The raw `map_lhist` (see [`crate::map::lhist`]).
#[allow(clippy::too_many_arguments)]
pub fn map_lhist_raw(
    name: &str,
    key_kind: i32,
    key: &[u8],
    value: i64,
    min: i64,
    max: i64,
    step: i64,
) -> Result<(), Error> {
    let name_len = len_i32(name.len())?;
    let key_len = len_i32(key.len())?;
    // SAFETY: the host only reads `name_len` bytes of `name` and `key_len`
    // bytes of `key`.
    let rc = unsafe {
        sys::map_lhist(
            name.as_ptr(),
            name_len,
            key_kind,
            key.as_ptr(),
            key_len,
            value,
            min,
            max,
            step,
        )
    };
    check(rc).map(drop)
}

/// In an entry handler: keeps `data` (at most [`MAX_CALL_DATA`] bytes) for
/// the return handler of the same call. A plugin that may change what it
/// keeps should put a version in the bytes: a replacement's return handler
/// gets what the old version kept.
pub fn call_data_set(data: &[u8]) -> Result<(), Error> {
    let len = len_i32(data.len())?;
    // SAFETY: the host only reads `len` bytes of `data`.
    check(unsafe { sys::call_data_set(data.as_ptr(), len) }).map(drop)
}

/// In a return handler: the bytes the entry handler of this call kept;
/// [`Error::NoEntry`] when it kept none.
pub fn call_data_get() -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; MAX_CALL_DATA];
    let n = call_data_get_into(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// In a return handler: copies at most `buf.len()` bytes of this call's
/// data into `buf`, and returns their full length (which may be more).
pub fn call_data_get_into(buf: &mut [u8]) -> Result<usize, Error> {
    let len = len_i32(buf.len())?;
    // SAFETY: the host writes at most `len` bytes into `buf`, which we
    // borrow mutably.
    check(unsafe { sys::call_data_get(buf.as_mut_ptr(), len) })
}

/// [`call_data_set`] of one integer, 8 bytes little-endian.
pub fn call_data_set_u64(v: u64) -> Result<(), Error> {
    call_data_set(&v.to_le_bytes())
}

/// [`call_data_get`] of what [`call_data_set_u64`] kept; [`Error::Invalid`]
/// when the kept data is not 8 bytes.
pub fn call_data_get_u64() -> Result<u64, Error> {
    let mut b = [0u8; 8];
    match call_data_get_into(&mut b)? {
        8 => Ok(u64::from_le_bytes(b)),
        _ => Err(Error::Invalid),
    }
}

/// A log line's level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `0`
    Error = 0,
    /// `1`
    Warn = 1,
    /// `2`
    Info = 2,
    /// `3`
    Debug = 3,
}

/// A line in the plugin's log.
pub fn log(level: Level, msg: &str) -> Result<(), Error> {
    let len = len_i32(msg.len())?;
    // SAFETY: the host only reads `len` bytes of `msg`.
    check(unsafe { sys::log(level as i32, msg.as_ptr(), len) }).map(drop)
}

/// [`log`] at [`Level::Error`], ignoring a failure (there is nowhere to
/// report it).
pub fn log_error(msg: &str) {
    let _ = log(Level::Error, msg);
}

/// [`log`] at [`Level::Warn`], ignoring a failure.
pub fn log_warn(msg: &str) {
    let _ = log(Level::Warn, msg);
}

/// [`log`] at [`Level::Info`], ignoring a failure.
pub fn log_info(msg: &str) {
    let _ = log(Level::Info, msg);
}

/// [`log`] at [`Level::Debug`], ignoring a failure.
pub fn log_debug(msg: &str) {
    let _ = log(Level::Debug, msg);
}

/// CLOCK_MONOTONIC in nanoseconds: the host's clock, the same as the
/// events' `time_ns`. Natively, a monotonic clock from an arbitrary origin.
pub fn now_ns() -> u64 {
    sys::now_ns() as u64
}

/// Sync handlers of probes with mutation allowed: register `index` (the
/// event's order, e.g. [`crate::arch::x86_64::RAX`] or
/// [`crate::Event::reg_index`]) takes `value` when the thread resumes.
pub fn set_register(index: usize, value: u64) -> Result<(), Error> {
    let index = len_i32(index).map_err(|_| Error::Invalid)?;
    // SAFETY: no pointers are passed.
    check(unsafe { sys::set_register(index, value as i64) }).map(drop)
}

/// Sync return handlers of probes with mutation allowed: the function
/// returns `value`.
pub fn set_return(value: u64) -> Result<(), Error> {
    // SAFETY: no pointers are passed.
    check(unsafe { sys::set_return(value as i64) }).map(drop)
}

/// The imports themselves. This is the one place that knows whether there
/// is a host: in wasm the functions are imports of module `wprobe`;
/// natively they are stubs that answer "no host".
#[cfg(target_arch = "wasm32")]
mod sys {
    /// Every result comes from the host.
    pub const NO_HOST: Option<i32> = None;

    #[link(wasm_import_module = "wprobe")]
    extern "C" {
        pub fn read_memory(addr: i64, buf: *mut u8, len: i32) -> i32;
        pub fn read_string(addr: i64, buf: *mut u8, max: i32) -> i32;
        pub fn emit(json: *const u8, len: i32) -> i32;
        pub fn map_update(
            op: i32,
            name: *const u8,
            name_len: i32,
            key_kind: i32,
            key: *const u8,
            key_len: i32,
            value: i64,
        ) -> i32;
        #[allow(clippy::too_many_arguments)]
        pub fn map_lhist(
            name: *const u8,
            name_len: i32,
            key_kind: i32,
            key: *const u8,
            key_len: i32,
            value: i64,
            min: i64,
            max: i64,
            step: i64,
        ) -> i32;
        pub fn call_data_set(buf: *const u8, len: i32) -> i32;
        pub fn call_data_get(buf: *mut u8, max: i32) -> i32;
        pub fn log(level: i32, msg: *const u8, len: i32) -> i32;
        #[link_name = "now_ns"]
        fn now_ns_import() -> i64;
        pub fn set_register(index: i32, value: i64) -> i32;
        pub fn set_return(value: i64) -> i32;
    }

    pub fn now_ns() -> i64 {
        // SAFETY: takes nothing, returns an integer.
        unsafe { now_ns_import() }
    }

    extern "C" {
        /// Made by wasm-ld: runs the static constructors of the module
        /// (wasi-libc's and the standard library's).
        fn __wasm_call_ctors();
    }

    /// What `_initialize` does in a WASI reactor: run the constructors once.
    pub fn initialize() {
        // SAFETY: called once, by the host, before any other export
        // (docs/plugin-abi.md, "Lifecycle"), as crt1-reactor.o would.
        unsafe { __wasm_call_ctors() }
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
mod sys {
    //! Native stubs with the imports' signatures: "no host".

    /// The stubs' result, which `check` turns into `Error::NotWasm`.
    pub const NO_HOST: Option<i32> = Some(NO_HOST_CODE);
    const NO_HOST_CODE: i32 = i32::MIN;

    pub unsafe fn read_memory(_: i64, _: *mut u8, _: i32) -> i32 {
        NO_HOST_CODE
    }
    pub unsafe fn read_string(_: i64, _: *mut u8, _: i32) -> i32 {
        NO_HOST_CODE
    }
    pub unsafe fn emit(_: *const u8, _: i32) -> i32 {
        NO_HOST_CODE
    }
    pub unsafe fn map_update(
        _: i32,
        _: *const u8,
        _: i32,
        _: i32,
        _: *const u8,
        _: i32,
        _: i64,
    ) -> i32 {
        NO_HOST_CODE
    }
    pub unsafe fn map_lhist(
        _: *const u8,
        _: i32,
        _: i32,
        _: *const u8,
        _: i32,
        _: i64,
        _: i64,
        _: i64,
        _: i64,
    ) -> i32 {
        NO_HOST_CODE
    }
    pub unsafe fn call_data_set(_: *const u8, _: i32) -> i32 {
        NO_HOST_CODE
    }
    pub unsafe fn call_data_get(_: *mut u8, _: i32) -> i32 {
        NO_HOST_CODE
    }
    pub unsafe fn log(_: i32, _: *const u8, _: i32) -> i32 {
        NO_HOST_CODE
    }
    pub unsafe fn set_register(_: i32, _: i64) -> i32 {
        NO_HOST_CODE
    }
    pub unsafe fn set_return(_: i64) -> i32 {
        NO_HOST_CODE
    }

    pub fn now_ns() -> i64 {
        use std::time::Instant;
        thread_local!(static ORIGIN: Instant = Instant::now());
        ORIGIN.with(|o| o.elapsed().as_nanos() as i64)
    }

    pub fn initialize() {}
}

/// `_initialize`'s body (see [`crate::wprobe_plugin!`]).
pub(crate) fn initialize() {
    sys::initialize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_code(code: i32, expect: Error, name: &str) {
        let e = Error::from_code(code);
        assert_eq!(e, expect);
        assert_eq!(e.code(), code);
        assert_eq!(e.name(), name);
        assert!(
            e.to_string().starts_with(&format!("{code} {name}: ")),
            "{e}"
        );
    }

    #[test]
    fn error_codes_round_trip() {
        check_code(-1, Error::FaultTarget, "EFAULT_TARGET");
        check_code(-2, Error::FaultPlugin, "EFAULT_PLUGIN");
        check_code(-3, Error::TooBig, "E2BIG");
        check_code(-4, Error::Invalid, "EINVAL");
        check_code(-5, Error::NotPermitted, "EPERM");
        check_code(-6, Error::NoEntry, "ENOENT");
        check_code(-7, Error::Limit, "ELIMIT");
        check_code(-8, Error::NoProcess, "ESRCH");
        check_code(-99, Error::Other(-99), "unknown");
    }

    /// `read_string(max)` after the host found a string of `len` bytes
    /// (`None`: no NUL anywhere).
    fn check_string(max: usize, len: Option<usize>, expect: (&[u8], bool)) {
        let ask = string_request(max);
        let text: Vec<u8> = (0..ask).map(|i| b'a' + (i % 26) as u8).collect();
        // What the host does: copy up to the NUL, at most `ask` bytes.
        let n = len.map_or(ask, |l| l.min(ask));
        let mut buf = vec![0u8; ask];
        buf[..n].copy_from_slice(&text[..n]);
        let got = string_result(buf, n, max);
        assert_eq!(
            (&got.bytes[..], got.truncated),
            expect,
            "max {max}, len {len:?}"
        );
    }

    #[test]
    fn read_string_tells_a_full_string_from_a_cut_one() {
        check_string(8, Some(3), (b"abc", false));
        check_string(8, Some(0), (b"", false));
        check_string(8, Some(8), (b"abcdefgh", false));
        check_string(8, Some(9), (b"abcdefgh", true));
        check_string(8, None, (b"abcdefgh", true));
        check_string(0, Some(0), (b"", false));
        check_string(0, None, (b"", true));
        // At the host's bound there is no byte more to ask for: a string of
        // exactly 65536 bytes counts as cut, as the ABI says.
        assert_eq!(string_request(MAX_TRANSFER), MAX_TRANSFER);
        let got = string_result(vec![b'x'; MAX_TRANSFER], MAX_TRANSFER - 1, MAX_TRANSFER);
        assert_eq!((got.bytes.len(), got.truncated), (MAX_TRANSFER - 1, false));
        let got = string_result(vec![b'x'; MAX_TRANSFER], MAX_TRANSFER, MAX_TRANSFER);
        assert_eq!((got.bytes.len(), got.truncated), (MAX_TRANSFER, true));
    }

    #[test]
    fn natively_there_is_no_host() {
        assert_eq!(read_memory(0x1000, 8), Err(Error::NotWasm));
        assert_eq!(read_string(0x1000, 16), Err(Error::NotWasm));
        assert_eq!(emit("{}"), Err(Error::NotWasm));
        assert_eq!(call_data_get(), Err(Error::NotWasm));
        assert_eq!(call_data_get_u64(), Err(Error::NotWasm));
        assert_eq!(log(Level::Info, "x"), Err(Error::NotWasm));
        assert_eq!(set_register(0, 1), Err(Error::NotWasm));
        assert_eq!(set_return(0), Err(Error::NotWasm));
        assert_eq!(Error::NotWasm.code(), 0);
        let (a, b) = (now_ns(), now_ns());
        assert!(b >= a);
    }
}
