//! The event a handler gets (docs/plugin-abi.md, "The event"), read in
//! place from its bytes.
//!
//! [`Event::parse`] checks the whole layout once — the header, the register
//! array and every capture record — so the accessors after it cannot fail
//! and never index out of bounds. A short or malformed buffer is an
//! [`EventError`], never a panic. Bytes past the last capture are ignored:
//! a later ABI may append fields there, and `size` covers them.

use std::fmt;

use crate::arch;

/// Length of the fixed part of the event, before the registers.
pub const HEADER_LEN: usize = 120;
/// Length of a capture record's fixed part, before its name.
pub const CAPTURE_HEADER_LEN: usize = 12;

/// What the hit was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Before the probed instruction (`wprobe_on_entry`).
    Entry,
    /// After the probed instruction ran (`wprobe_on_post`).
    Post,
    /// The function returned (`wprobe_on_return`).
    Return,
    /// A kind this SDK does not know (a later ABI).
    Other(u8),
}

impl Kind {
    /// The kind of the event's byte 8.
    pub fn from_byte(b: u8) -> Kind {
        match b {
            0 => Kind::Entry,
            1 => Kind::Post,
            2 => Kind::Return,
            other => Kind::Other(other),
        }
    }

    /// `"entry"`, `"post"`, `"return"` or `"other"`, as the host shows them.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Entry => "entry",
            Kind::Post => "post",
            Kind::Return => "return",
            Kind::Other(_) => "other",
        }
    }
}

/// The event's flags byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    /// Bit 0: the thread waits for the handler; reads are consistent.
    pub const SYNC: u8 = 1;
    /// Bit 1: the handler may change registers or the return value.
    pub const MUTATION: u8 = 2;
    /// Bit 2: the thread has resumed; memory reads see the process after
    /// the hit.
    pub const LIVE_READS: u8 = 4;

    /// Whether the thread waits for the handler.
    pub fn sync(self) -> bool {
        self.0 & Self::SYNC != 0
    }

    /// Whether `set_register` and `set_return` are allowed.
    pub fn mutation(self) -> bool {
        self.0 & Self::MUTATION != 0
    }

    /// Whether memory reads see the process after the hit.
    pub fn live_reads(self) -> bool {
        self.0 & Self::LIVE_READS != 0
    }
}

/// Why an event buffer was refused. Each names the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventError {
    /// Fewer bytes than the 120-byte header.
    TooShort {
        /// The buffer's length.
        len: usize,
    },
    /// The `size` field disagrees with the buffer: larger than it, or
    /// smaller than the header.
    BadSize {
        /// The `size` field.
        size: u32,
        /// The buffer's length.
        len: usize,
    },
    /// `nregs` registers do not fit in `size` bytes.
    RegsOverflow {
        /// The `nregs` field.
        nregs: u32,
        /// The `size` field.
        size: u32,
    },
    /// Capture record `index` (from 0) runs past the end of the event.
    CaptureOverflow {
        /// The record's index.
        index: u32,
        /// Where the record starts in the event.
        offset: usize,
    },
    /// Capture record `index` has a name, or an error text, that is not
    /// UTF-8.
    CaptureNotUtf8 {
        /// The record's index.
        index: u32,
    },
    /// Capture record `index` is an integer (tag 0–2) whose value is not 8
    /// bytes.
    CaptureBadLength {
        /// The record's index.
        index: u32,
        /// The record's tag.
        tag: u8,
        /// The record's `value_len`.
        value_len: u32,
    },
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EventError::TooShort { len } => write!(
                f,
                "event of {len} bytes is shorter than the {HEADER_LEN}-byte header \
                 (does the host speak ABI v1?)"
            ),
            EventError::BadSize { size, len } => write!(
                f,
                "event size field {size} does not fit a buffer of {len} bytes \
                 (it must be at least {HEADER_LEN} and at most the buffer)"
            ),
            EventError::RegsOverflow { nregs, size } => write!(
                f,
                "event says {nregs} registers, which do not fit in its {size} bytes"
            ),
            EventError::CaptureOverflow { index, offset } => write!(
                f,
                "capture record {index} at offset {offset} runs past the end of the event"
            ),
            EventError::CaptureNotUtf8 { index } => {
                write!(
                    f,
                    "capture record {index} has a name or error text that is not UTF-8"
                )
            }
            EventError::CaptureBadLength {
                index,
                tag,
                value_len,
            } => write!(
                f,
                "capture record {index} is an integer (tag {tag}) of {value_len} bytes; \
                 integers are 8 bytes"
            ),
        }
    }
}

impl std::error::Error for EventError {}

/// One capture of the probe (e.g. `path=+0(%rdi):string`), read while the
/// thread was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture<'a> {
    /// The capture's name, as written in the probe spec.
    pub name: &'a str,
    /// Its value.
    pub value: CaptureValue<'a>,
    /// Strings: the bound was reached before a NUL.
    pub truncated: bool,
}

/// A capture's value, by its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureValue<'a> {
    /// Tag 0: an unsigned integer (`u8`..`u64`).
    Unsigned(u64),
    /// Tag 1: a signed integer (`s8`..`s64`).
    Signed(i64),
    /// Tag 2: an integer shown in hex (`x8`..`x64`).
    Hex(u64),
    /// Tag 3: the bytes of a string before its NUL (not necessarily UTF-8).
    Str(&'a [u8]),
    /// Tag 4: raw bytes.
    Bytes(&'a [u8]),
    /// Tag 5: why the fetch failed.
    Error(&'a str),
    /// A tag this SDK does not know (a later ABI), with its raw value.
    Other {
        /// The tag.
        tag: u8,
        /// The value's bytes.
        bytes: &'a [u8],
    },
}

impl<'a> CaptureValue<'a> {
    /// The integer of tags 0–2 (a signed one as its two's complement bits).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            CaptureValue::Unsigned(v) | CaptureValue::Hex(v) => Some(v),
            CaptureValue::Signed(v) => Some(v as u64),
            _ => None,
        }
    }

    /// The integer of tags 0–2 as signed.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_u64().map(|v| v as i64)
    }

    /// The bytes of a string or bytes capture.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            CaptureValue::Str(b) | CaptureValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A string capture that is valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            CaptureValue::Str(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The failure text of an error capture.
    pub fn as_error(&self) -> Option<&'a str> {
        match *self {
            CaptureValue::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// A parsed event: a view of the bytes the host wrote. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Event<'a> {
    /// The event's bytes, cut to its `size`.
    bytes: &'a [u8],
    nregs: usize,
    ncaptures: u32,
    captures_at: usize,
}

impl<'a> Event<'a> {
    /// Checks `buf` against the layout and returns a view of it. Bytes past
    /// `size` and past the last capture are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<Event<'a>, EventError> {
        if buf.len() < HEADER_LEN {
            return Err(EventError::TooShort { len: buf.len() });
        }
        let size = le_u32(buf, 0);
        let bytes = match buf.get(..size as usize) {
            Some(b) if b.len() >= HEADER_LEN => b,
            _ => {
                return Err(EventError::BadSize {
                    size,
                    len: buf.len(),
                })
            }
        };
        let nregs32 = le_u32(bytes, 112);
        let captures_at = (nregs32 as usize)
            .checked_mul(8)
            .and_then(|n| n.checked_add(HEADER_LEN))
            .filter(|end| *end <= bytes.len())
            .ok_or(EventError::RegsOverflow {
                nregs: nregs32,
                size,
            })?;
        let ev = Event {
            bytes,
            nregs: nregs32 as usize,
            ncaptures: le_u32(bytes, 20),
            captures_at,
        };
        // Walk every record once so that `captures()` cannot meet a bad one.
        let mut at = captures_at;
        for index in 0..ev.ncaptures {
            let (_, next) = decode_capture(bytes, at, index)?;
            at = next;
        }
        Ok(ev)
    }

    /// The event's bytes (its `size` of them).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The event's total length (the `size` field).
    pub fn size(&self) -> u32 {
        self.bytes.len() as u32
    }

    /// The probe id.
    pub fn probe(&self) -> u32 {
        le_u32(self.bytes, 4)
    }

    /// Entry, post or return.
    pub fn kind(&self) -> Kind {
        Kind::from_byte(self.bytes[8])
    }

    /// The flags byte.
    pub fn flags(&self) -> Flags {
        Flags(self.bytes[9])
    }

    /// The thread waits for the handler (reads are consistent).
    pub fn is_sync(&self) -> bool {
        self.flags().sync()
    }

    /// The handler may change registers or the return value.
    pub fn may_mutate(&self) -> bool {
        self.flags().mutation()
    }

    /// The thread has resumed: memory reads see the process after the hit.
    pub fn live_reads(&self) -> bool {
        self.flags().live_reads()
    }

    /// ELF `e_machine` of the target ([`arch::EM_X86_64`] is 62).
    pub fn arch(&self) -> u16 {
        u16::from_le_bytes([self.bytes[10], self.bytes[11]])
    }

    /// The target process.
    pub fn pid(&self) -> i32 {
        le_u32(self.bytes, 12) as i32
    }

    /// The thread that hit the probe.
    pub fn tid(&self) -> i32 {
        le_u32(self.bytes, 16) as i32
    }

    /// CLOCK_MONOTONIC of the hit, nanoseconds.
    pub fn time_ns(&self) -> u64 {
        le_u64(self.bytes, 24)
    }

    /// The probed address in the process.
    pub fn addr(&self) -> u64 {
        le_u64(self.bytes, 32)
    }

    /// Return events: when the function was entered; otherwise `time_ns`.
    pub fn entry_time_ns(&self) -> u64 {
        le_u64(self.bytes, 40)
    }

    /// `time_ns - entry_time_ns`: a return event's latency (0 otherwise,
    /// and 0 rather than a wrap if the clock values disagree).
    pub fn latency_ns(&self) -> u64 {
        self.time_ns().saturating_sub(self.entry_time_ns())
    }

    /// Return events: the return value register (`rax`); otherwise 0.
    pub fn retval(&self) -> u64 {
        le_u64(self.bytes, 48)
    }

    /// Return events: where the function returns to; otherwise 0.
    pub fn return_address(&self) -> u64 {
        le_u64(self.bytes, 56)
    }

    /// The six integer arguments (x86_64 SysV: rdi, rsi, rdx, rcx, r8,
    /// r9); for return events, those at entry.
    pub fn args(&self) -> [u64; 6] {
        let mut args = [0u64; 6];
        for (i, a) in args.iter_mut().enumerate() {
            *a = le_u64(self.bytes, 64 + 8 * i);
        }
        args
    }

    /// Argument `i` (0–5).
    pub fn arg(&self, i: usize) -> Option<u64> {
        if i < 6 {
            Some(le_u64(self.bytes, 64 + 8 * i))
        } else {
            None
        }
    }

    /// How many registers the event carries (27 on x86_64).
    pub fn nregs(&self) -> usize {
        self.nregs
    }

    /// Register `index` in the event's order (`struct user_regs_struct`).
    pub fn reg(&self, index: usize) -> Option<u64> {
        if index < self.nregs {
            Some(le_u64(self.bytes, HEADER_LEN + 8 * index))
        } else {
            None
        }
    }

    /// The index of register `name` (`"rdi"` or `"%rdi"`) for this event's
    /// architecture; for [`crate::set_register`].
    pub fn reg_index(&self, name: &str) -> Option<usize> {
        arch::reg_index(self.arch(), name).filter(|i| *i < self.nregs)
    }

    /// Register `name` (`"rdi"` or `"%rdi"`), for architectures [`arch`]
    /// describes (x86_64).
    pub fn reg_by_name(&self, name: &str) -> Option<u64> {
        self.reg_index(name).and_then(|i| self.reg(i))
    }

    /// The registers in the event's order.
    pub fn regs(&self) -> impl Iterator<Item = u64> + 'a {
        let regs = &self.bytes[HEADER_LEN..self.captures_at];
        regs.chunks_exact(8).map(|c| le_u64(c, 0))
    }

    /// The registers with their names, for architectures [`arch`]
    /// describes; empty for others.
    pub fn named_regs(&self) -> impl Iterator<Item = (&'static str, u64)> + 'a {
        let arch = self.arch();
        self.regs()
            .enumerate()
            .filter_map(move |(i, v)| arch::reg_name(arch, i).map(|n| (n, v)))
    }

    /// How many captures the event carries.
    pub fn ncaptures(&self) -> u32 {
        self.ncaptures
    }

    /// The probe's captures, in the order of its spec.
    pub fn captures(&self) -> Captures<'a> {
        Captures {
            bytes: self.bytes,
            at: self.captures_at,
            index: 0,
            count: self.ncaptures,
        }
    }

    /// The first capture called `name`.
    pub fn capture(&self, name: &str) -> Option<Capture<'a>> {
        self.captures().find(|c| c.name == name)
    }
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("size", &self.size())
            .field("probe", &self.probe())
            .field("kind", &self.kind())
            .field("flags", &self.flags())
            .field("arch", &self.arch())
            .field("pid", &self.pid())
            .field("tid", &self.tid())
            .field("time_ns", &self.time_ns())
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("args", &self.args())
            .field("nregs", &self.nregs)
            .field("captures", &self.captures().collect::<Vec<_>>())
            .finish()
    }
}

/// The captures of an [`Event`], in order.
#[derive(Clone, Debug)]
pub struct Captures<'a> {
    bytes: &'a [u8],
    at: usize,
    index: u32,
    count: u32,
}

impl<'a> Iterator for Captures<'a> {
    type Item = Capture<'a>;

    fn next(&mut self) -> Option<Capture<'a>> {
        if self.index >= self.count {
            return None;
        }
        // `Event::parse` checked every record; a failure here would be a bug,
        // and ends the iteration rather than panicking.
        match decode_capture(self.bytes, self.at, self.index) {
            Ok((capture, next)) => {
                self.at = next;
                self.index += 1;
                Some(capture)
            }
            Err(_) => {
                self.index = self.count;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count - self.index) as usize;
        (left, Some(left))
    }
}

/// Decodes capture record `index` at offset `at`; returns it and the offset
/// of the next one.
fn decode_capture(bytes: &[u8], at: usize, index: u32) -> Result<(Capture<'_>, usize), EventError> {
    let overflow = EventError::CaptureOverflow { index, offset: at };
    let header = at
        .checked_add(CAPTURE_HEADER_LEN)
        .and_then(|end| bytes.get(at..end))
        .ok_or(overflow)?;
    let name_len = le_u32(header, 0) as usize;
    let value_len32 = le_u32(header, 4);
    let (tag, truncated) = (header[8], header[9] != 0);
    let name_at = at + CAPTURE_HEADER_LEN;
    let value_at = name_at.checked_add(name_len).ok_or(overflow)?;
    let end = value_at.checked_add(value_len32 as usize).ok_or(overflow)?;
    let name = bytes.get(name_at..value_at).ok_or(overflow)?;
    let value = bytes.get(value_at..end).ok_or(overflow)?;
    let name = std::str::from_utf8(name).map_err(|_| EventError::CaptureNotUtf8 { index })?;
    let integer = || {
        if value.len() == 8 {
            Ok(le_u64(value, 0))
        } else {
            Err(EventError::CaptureBadLength {
                index,
                tag,
                value_len: value_len32,
            })
        }
    };
    let value = match tag {
        0 => CaptureValue::Unsigned(integer()?),
        1 => CaptureValue::Signed(integer()? as i64),
        2 => CaptureValue::Hex(integer()?),
        3 => CaptureValue::Str(value),
        4 => CaptureValue::Bytes(value),
        5 => CaptureValue::Error(
            std::str::from_utf8(value).map_err(|_| EventError::CaptureNotUtf8 { index })?,
        ),
        tag => CaptureValue::Other { tag, bytes: value },
    };
    Ok((
        Capture {
            name,
            value,
            truncated,
        },
        end,
    ))
}

/// The `u32` at `at`, or 0 past the end (callers check bounds first).
fn le_u32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at.saturating_add(4)) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// The `u64` at `at`, or 0 past the end (callers check bounds first).
fn le_u64(b: &[u8], at: usize) -> u64 {
    match b.get(at..at.saturating_add(8)) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        }
        None => 0,
    }
}

/// Writes events in the ABI's layout: for native tests of handler logic
/// (and of this crate). Defaults: an x86_64 entry event of probe 1, pid and
/// tid 100, 27 zero registers, no captures.
#[derive(Clone, Debug)]
pub struct EventBuilder {
    header: [u8; HEADER_LEN],
    regs: Vec<u64>,
    captures: Vec<u8>,
    ncaptures: u32,
}

impl Default for EventBuilder {
    fn default() -> Self {
        EventBuilder::new(Kind::Entry)
    }
}

impl EventBuilder {
    /// An event of `kind`, with the defaults above.
    pub fn new(kind: Kind) -> EventBuilder {
        let mut b = EventBuilder {
            header: [0; HEADER_LEN],
            regs: vec![0; arch::x86_64::NAMES.len()],
            captures: Vec::new(),
            ncaptures: 0,
        };
        b.header[8] = match kind {
            Kind::Entry => 0,
            Kind::Post => 1,
            Kind::Return => 2,
            Kind::Other(k) => k,
        };
        b.arch(arch::EM_X86_64).pid(100).tid(100).probe(1);
        b
    }

    fn put(&mut self, at: usize, bytes: &[u8]) -> &mut Self {
        self.header[at..at + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// Sets the probe id.
    pub fn probe(&mut self, id: u32) -> &mut Self {
        self.put(4, &id.to_le_bytes())
    }

    /// Sets the flags byte ([`Flags::SYNC`] | …).
    pub fn flags(&mut self, flags: u8) -> &mut Self {
        self.header[9] = flags;
        self
    }

    /// Sets the architecture (ELF `e_machine`).
    pub fn arch(&mut self, arch: u16) -> &mut Self {
        self.put(10, &arch.to_le_bytes())
    }

    /// Sets the pid.
    pub fn pid(&mut self, pid: i32) -> &mut Self {
        self.put(12, &pid.to_le_bytes())
    }

    /// Sets the tid.
    pub fn tid(&mut self, tid: i32) -> &mut Self {
        self.put(16, &tid.to_le_bytes())
    }

    /// Sets `time_ns`.
    pub fn time_ns(&mut self, t: u64) -> &mut Self {
        self.put(24, &t.to_le_bytes())
    }

    /// Sets `addr`.
    pub fn addr(&mut self, addr: u64) -> &mut Self {
        self.put(32, &addr.to_le_bytes())
    }

    /// Sets `entry_time_ns`.
    pub fn entry_time_ns(&mut self, t: u64) -> &mut Self {
        self.put(40, &t.to_le_bytes())
    }

    /// Sets `retval`.
    pub fn retval(&mut self, v: u64) -> &mut Self {
        self.put(48, &v.to_le_bytes())
    }

    /// Sets `return_address`.
    pub fn return_address(&mut self, a: u64) -> &mut Self {
        self.put(56, &a.to_le_bytes())
    }

    /// Sets the six arguments.
    pub fn args(&mut self, args: [u64; 6]) -> &mut Self {
        for (i, a) in args.iter().enumerate() {
            self.put(64 + 8 * i, &a.to_le_bytes());
        }
        self
    }

    /// Replaces the registers.
    pub fn regs(&mut self, regs: &[u64]) -> &mut Self {
        self.regs = regs.to_vec();
        self
    }

    /// Appends a capture record with a raw tag and value.
    pub fn capture_raw(&mut self, name: &str, tag: u8, truncated: bool, value: &[u8]) -> &mut Self {
        self.captures
            .extend_from_slice(&(name.len() as u32).to_le_bytes());
        self.captures
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.captures
            .extend_from_slice(&[tag, truncated as u8, 0, 0]);
        self.captures.extend_from_slice(name.as_bytes());
        self.captures.extend_from_slice(value);
        self.ncaptures += 1;
        self
    }

    /// Appends a capture: an unsigned integer.
    pub fn capture_u64(&mut self, name: &str, v: u64) -> &mut Self {
        self.capture_raw(name, 0, false, &v.to_le_bytes())
    }

    /// Appends a capture: a string.
    pub fn capture_str(&mut self, name: &str, s: &[u8], truncated: bool) -> &mut Self {
        self.capture_raw(name, 3, truncated, s)
    }

    /// The event's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut header = self.header;
        let size = HEADER_LEN + 8 * self.regs.len() + self.captures.len();
        header[0..4].copy_from_slice(&(size as u32).to_le_bytes());
        header[20..24].copy_from_slice(&self.ncaptures.to_le_bytes());
        header[112..116].copy_from_slice(&(self.regs.len() as u32).to_le_bytes());
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&header);
        for r in &self.regs {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&self.captures);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `bytes` and compares a one-line summary of the result.
    fn check(bytes: &[u8], expect: &str) {
        let got = match Event::parse(bytes) {
            Ok(ev) => summary(&ev),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect);
    }

    fn summary(ev: &Event) -> String {
        let caps: Vec<String> = ev
            .captures()
            .map(|c| {
                format!(
                    "{}={:?}{}",
                    c.name,
                    c.value,
                    if c.truncated { "…" } else { "" }
                )
            })
            .collect();
        format!(
            "{} probe={} pid={} tid={} flags={} t={} entry={} ret={} args={:?} nregs={} caps=[{}]",
            ev.kind().as_str(),
            ev.probe(),
            ev.pid(),
            ev.tid(),
            ev.flags().0,
            ev.time_ns(),
            ev.entry_time_ns(),
            ev.retval(),
            ev.args(),
            ev.nregs(),
            caps.join(", ")
        )
    }

    fn entry() -> EventBuilder {
        let mut b = EventBuilder::new(Kind::Entry);
        b.probe(7).pid(42).tid(43).time_ns(1000).entry_time_ns(1000);
        b
    }

    #[test]
    fn well_formed_events() {
        check(
            &entry().args([1, 2, 3, 4, 5, 6]).build(),
            "entry probe=7 pid=42 tid=43 flags=0 t=1000 entry=1000 ret=0 args=[1, 2, 3, 4, 5, 6] \
             nregs=27 caps=[]",
        );
        check(
            &EventBuilder::new(Kind::Return)
                .flags(Flags::SYNC | Flags::MUTATION)
                .time_ns(5000)
                .entry_time_ns(1200)
                .retval(u64::MAX)
                .build(),
            "return probe=1 pid=100 tid=100 flags=3 t=5000 entry=1200 ret=18446744073709551615 \
             args=[0, 0, 0, 0, 0, 0] nregs=27 caps=[]",
        );
        check(
            &entry()
                .regs(&[])
                .capture_u64("size", 24)
                .capture_raw("delta", 1, false, &(-5i64).to_le_bytes())
                .capture_raw("flags", 2, false, &0x1fu64.to_le_bytes())
                .capture_str("path", b"/etc/hostname", false)
                .capture_str("long", b"abcd", true)
                .capture_raw("raw", 4, false, &[0xde, 0xad])
                .capture_raw("bad", 5, false, b"unmapped address 0x10")
                .capture_raw("future", 9, false, &[1])
                .build(),
            "entry probe=7 pid=42 tid=43 flags=0 t=1000 entry=1000 ret=0 args=[0, 0, 0, 0, 0, 0] \
             nregs=0 caps=[size=Unsigned(24), delta=Signed(-5), flags=Hex(31), \
             path=Str([47, 101, 116, 99, 47, 104, 111, 115, 116, 110, 97, 109, 101]), \
             long=Str([97, 98, 99, 100])…, raw=Bytes([222, 173]), \
             bad=Error(\"unmapped address 0x10\"), future=Other { tag: 9, bytes: [1] }]",
        );
        // Bytes past `size` (the host's buffer is larger) and past the last
        // capture (fields of a later ABI) are ignored.
        let mut longer = entry().capture_u64("n", 1).build();
        longer.extend_from_slice(&[0xff; 16]);
        check(
            &longer,
            "entry probe=7 pid=42 tid=43 flags=0 t=1000 entry=1000 ret=0 args=[0, 0, 0, 0, 0, 0] \
             nregs=27 caps=[n=Unsigned(1)]",
        );
    }

    #[test]
    fn malformed_events_are_errors() {
        let good = entry().capture_str("path", b"/tmp", false).build();
        check(&[], "error: event of 0 bytes is shorter than the 120-byte header (does the host speak ABI v1?)");
        check(&good[..119], "error: event of 119 bytes is shorter than the 120-byte header (does the host speak ABI v1?)");
        // Every truncation of a good event is refused, none panics.
        for cut in HEADER_LEN..good.len() {
            assert!(Event::parse(&good[..cut]).is_err(), "cut at {cut}");
        }

        let with = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            b
        };
        let len = good.len();
        check(
            &with(0, &(len as u32 + 1).to_le_bytes()),
            &format!("error: event size field {} does not fit a buffer of {len} bytes (it must be at least 120 and at most the buffer)", len + 1),
        );
        check(
            &with(0, &8u32.to_le_bytes()),
            &format!("error: event size field 8 does not fit a buffer of {len} bytes (it must be at least 120 and at most the buffer)"),
        );
        check(
            &with(112, &u32::MAX.to_le_bytes()),
            &format!("error: event says 4294967295 registers, which do not fit in its {len} bytes"),
        );
        check(
            &with(112, &30u32.to_le_bytes()),
            &format!("error: event says 30 registers, which do not fit in its {len} bytes"),
        );
        // A second capture that is not there.
        check(
            &with(20, &2u32.to_le_bytes()),
            &format!("error: capture record 1 at offset {len} runs past the end of the event"),
        );
        // A name length that points past the end, or wraps around.
        let cap = HEADER_LEN + 27 * 8;
        check(
            &with(cap, &u32::MAX.to_le_bytes()),
            &format!("error: capture record 0 at offset {cap} runs past the end of the event"),
        );
        check(
            &with(cap + 4, &u32::MAX.to_le_bytes()),
            &format!("error: capture record 0 at offset {cap} runs past the end of the event"),
        );
        // Not UTF-8 in a name.
        check(
            &with(cap + 12, &[0xff]),
            "error: capture record 0 has a name or error text that is not UTF-8",
        );
        // An integer tag with a 4-byte value.
        check(
            &with(cap + 8, &[0]),
            "error: capture record 0 is an integer (tag 0) of 4 bytes; integers are 8 bytes",
        );
        check(
            &entry().capture_raw("e", 5, false, &[0xc3]).build(),
            "error: capture record 0 has a name or error text that is not UTF-8",
        );
    }

    #[test]
    fn accessors() {
        let mut regs = vec![0u64; 27];
        regs[arch::x86_64::RDI] = 0xabc;
        regs[arch::x86_64::RIP] = 0x401000;
        let bytes = EventBuilder::new(Kind::Post)
            .flags(Flags::LIVE_READS)
            .addr(0x401000)
            .time_ns(10)
            .entry_time_ns(30)
            .return_address(0x77)
            .regs(&regs)
            .capture_str("path", b"/etc/passwd", false)
            .capture_str("path", b"second", false)
            .build();
        let ev = Event::parse(&bytes).expect("a built event parses");
        assert_eq!(ev.kind(), Kind::Post);
        assert!(ev.live_reads() && !ev.is_sync() && !ev.may_mutate());
        assert_eq!(
            (ev.arch(), ev.addr(), ev.return_address()),
            (62, 0x401000, 0x77)
        );
        assert_eq!(ev.latency_ns(), 0, "entry after the hit saturates to 0");
        assert_eq!(ev.arg(5), Some(0));
        assert_eq!(ev.arg(6), None);
        assert_eq!(ev.reg(27), None);
        assert_eq!(ev.reg_by_name("rdi"), Some(0xabc));
        assert_eq!(ev.reg_by_name("%rip"), Some(0x401000));
        assert_eq!(ev.reg_by_name("xmm0"), None);
        assert_eq!(ev.regs().count(), 27);
        assert_eq!(ev.named_regs().nth(14), Some(("rdi", 0xabc)));
        assert_eq!(ev.size() as usize, bytes.len());
        let path = ev.capture("path").expect("the first path capture");
        assert_eq!(path.value.as_str(), Some("/etc/passwd"));
        assert_eq!(ev.captures().size_hint(), (2, Some(2)));

        // Registers of an architecture the SDK does not name are still
        // reachable by index.
        let other = EventBuilder::new(Kind::Entry)
            .arch(183)
            .regs(&[9; 34])
            .build();
        let ev = Event::parse(&other).expect("an aarch64 event parses");
        assert_eq!(
            (ev.reg(33), ev.reg_by_name("x0"), ev.named_regs().count()),
            (Some(9), None, 0)
        );
    }

    #[test]
    fn capture_values_convert() {
        assert_eq!(CaptureValue::Signed(-1).as_u64(), Some(u64::MAX));
        assert_eq!(CaptureValue::Hex(16).as_i64(), Some(16));
        assert_eq!(CaptureValue::Str(b"\xff").as_str(), None);
        assert_eq!(CaptureValue::Bytes(b"ab").as_bytes(), Some(&b"ab"[..]));
        assert_eq!(CaptureValue::Bytes(b"ab").as_str(), None);
        assert_eq!(CaptureValue::Error("gone").as_error(), Some("gone"));
        assert_eq!(CaptureValue::Error("gone").as_u64(), None);
    }
}
