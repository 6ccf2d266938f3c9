//! Counters and histograms kept by the host (docs/plugin-abi.md, "Maps"),
//! the bpftrace way: `map::count("hits", Key::Int(tid))` is
//! `@hits[tid] = count()`.
//!
//! Maps live in the host: they survive the plugin's replacement and the host
//! shows them without calling into wasm. A map's first update fixes its kind
//! (count, sum, …, hist, lhist); a later update of another kind is
//! [`Error::Invalid`]. A plugin has at most 10 000 keys across its maps by
//! default; one more is [`Error::Limit`], and the host counts it.

use crate::host::{map_lhist_raw, map_update_raw, Error};

/// A map's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// No key: the map has one value (bpftrace's `@x`).
    None,
    /// Bytes (≤ 256), shown as a string when they are UTF-8, else as hex.
    Bytes(&'a [u8]),
    /// Text; the same as `Bytes` of its UTF-8.
    Str(&'a str),
    /// An integer (a tid, a probe id, an argument).
    Int(i64),
}

/// The longest bytes key a map takes.
pub const MAX_KEY_BYTES: usize = 256;
/// The longest map name.
pub const MAX_NAME_BYTES: usize = 64;

/// `key_kind` of the ABI: no key.
pub const KEY_NONE: i32 = 0;
/// `key_kind` of the ABI: bytes.
pub const KEY_BYTES: i32 = 1;
/// `key_kind` of the ABI: an 8-byte integer.
pub const KEY_INT: i32 = 2;

impl<'a> Key<'a> {
    /// The ABI's `key_kind` and key bytes. An integer is 8 bytes
    /// little-endian, written into `scratch` so that no allocation is needed.
    pub fn encode<'s>(&'s self, scratch: &'s mut [u8; 8]) -> (i32, &'s [u8]) {
        match *self {
            Key::None => (KEY_NONE, &[]),
            Key::Bytes(b) => (KEY_BYTES, b),
            Key::Str(s) => (KEY_BYTES, s.as_bytes()),
            Key::Int(v) => {
                *scratch = v.to_le_bytes();
                (KEY_INT, &scratch[..])
            }
        }
    }
}

impl From<i64> for Key<'_> {
    fn from(v: i64) -> Self {
        Key::Int(v)
    }
}

impl From<i32> for Key<'_> {
    fn from(v: i32) -> Self {
        Key::Int(v as i64)
    }
}

impl From<u32> for Key<'_> {
    fn from(v: u32) -> Self {
        Key::Int(v as i64)
    }
}

/// As its two's complement bits: `u64::MAX` is the key `-1`.
impl From<u64> for Key<'_> {
    fn from(v: u64) -> Self {
        Key::Int(v as i64)
    }
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Self {
        Key::Str(s)
    }
}

impl<'a> From<&'a [u8]> for Key<'a> {
    fn from(b: &'a [u8]) -> Self {
        Key::Bytes(b)
    }
}

/// `op` of `map_update`: the bpftrace function it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `count()`: +1; the value is ignored.
    Count = 0,
    /// `sum(v)`.
    Sum = 1,
    /// `min(v)`.
    Min = 2,
    /// `max(v)`.
    Max = 3,
    /// `avg(v)`: count and sum, shown as their quotient.
    Avg = 4,
    /// `hist(v)`: log2 buckets `0`, `1`, `[2,4)`, `[4,8)` …, negatives in
    /// one bucket.
    Hist = 5,
}

/// Applies `op` with `value` to map `name` (UTF-8, ≤ 64 bytes) at `key`.
pub fn update<'a>(op: Op, name: &str, key: impl Into<Key<'a>>, value: i64) -> Result<(), Error> {
    let key = key.into();
    let mut scratch = [0u8; 8];
    let (kind, bytes) = key.encode(&mut scratch);
    map_update_raw(op as i32, name, kind, bytes, value)
}

/// `@name[key] = count()`.
pub fn count<'a>(name: &str, key: impl Into<Key<'a>>) -> Result<(), Error> {
    update(Op::Count, name, key, 0)
}

/// `@name[key] = sum(value)`.
pub fn sum<'a>(name: &str, key: impl Into<Key<'a>>, value: i64) -> Result<(), Error> {
    update(Op::Sum, name, key, value)
}

/// `@name[key] = min(value)`.
pub fn min<'a>(name: &str, key: impl Into<Key<'a>>, value: i64) -> Result<(), Error> {
    update(Op::Min, name, key, value)
}

/// `@name[key] = max(value)`.
pub fn max<'a>(name: &str, key: impl Into<Key<'a>>, value: i64) -> Result<(), Error> {
    update(Op::Max, name, key, value)
}

/// `@name[key] = avg(value)`.
pub fn avg<'a>(name: &str, key: impl Into<Key<'a>>, value: i64) -> Result<(), Error> {
    update(Op::Avg, name, key, value)
}

/// `@name[key] = hist(value)`: a log2 histogram.
pub fn hist<'a>(name: &str, key: impl Into<Key<'a>>, value: i64) -> Result<(), Error> {
    update(Op::Hist, name, key, value)
}

/// `@name[key] = lhist(value, min, max, step)`: buckets of width `step`
/// from `min` to `max`, plus one below and one above. The first call fixes
/// the bounds.
pub fn lhist<'a>(
    name: &str,
    key: impl Into<Key<'a>>,
    value: i64,
    min: i64,
    max: i64,
    step: i64,
) -> Result<(), Error> {
    let key = key.into();
    let mut scratch = [0u8; 8];
    let (kind, bytes) = key.encode(&mut scratch);
    map_lhist_raw(name, kind, bytes, value, min, max, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: Key, kind: i32, bytes: &[u8]) {
        let mut scratch = [0u8; 8];
        assert_eq!(key.encode(&mut scratch), (kind, bytes), "{key:?}");
    }

    #[test]
    fn keys_encode_as_the_abi_says() {
        check(Key::None, 0, &[]);
        check(Key::Str("/etc/passwd"), 1, b"/etc/passwd");
        check(Key::Str(""), 1, b"");
        check(Key::Bytes(&[0xff, 0]), 1, &[0xff, 0]);
        check(Key::Int(1), 2, &[1, 0, 0, 0, 0, 0, 0, 0]);
        check(Key::Int(-1), 2, &[0xff; 8]);
        check(Key::Int(0x0102030405060708), 2, &[8, 7, 6, 5, 4, 3, 2, 1]);
        check(Key::from(u64::MAX), 2, &[0xff; 8]);
        check(Key::from(7u32), 2, &[7, 0, 0, 0, 0, 0, 0, 0]);
        check(
            Key::from(-2i32),
            2,
            &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        );
        check(Key::from("x"), 1, b"x");
    }

    #[test]
    fn natively_updates_report_no_host() {
        assert_eq!(count("hits", 5i64), Err(Error::NotWasm));
        assert_eq!(hist("lat", Key::None, 100), Err(Error::NotWasm));
        assert_eq!(lhist("l", "k", 1, 0, 100, 10), Err(Error::NotWasm));
    }
}
