//! Primitive encodings: little-endian integers, booleans, length-prefixed
//! strings and byte strings, counted lists. Reading goes through a
//! [`Cursor`] that checks every length against the bytes left.

use super::ProtoError;

/// Reads primitives from a payload, never past its end.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, or `Truncated` naming `what`.
    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let have = self.remaining();
        if n > have {
            return Err(ProtoError::Truncated {
                what,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, ProtoError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(super) fn i32(&mut self, what: &'static str) -> Result<i32, ProtoError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(super) fn i64(&mut self, what: &'static str) -> Result<i64, ProtoError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    pub(super) fn u64s<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u64; N], ProtoError> {
        // Check the whole array at once so the error names its full size.
        let bytes = self.take(N * 8, what)?;
        let mut a = [0u64; N];
        for (v, b) in a.iter_mut().zip(bytes.chunks_exact(8)) {
            *v = u64::from_le_bytes(b.try_into().expect("chunks_exact(8) yields 8 bytes"));
        }
        Ok(a)
    }

    /// A boolean: exactly 0 or 1.
    pub(super) fn bool(&mut self, what: &'static str) -> Result<bool, ProtoError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(ProtoError::BadBool { what, value }),
        }
    }

    /// A `u32` length, then that many bytes.
    pub(super) fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let n = self.u32(what)?;
        self.take(n as usize, what)
    }

    /// A `u32` length, then that many bytes of UTF-8.
    pub(super) fn string(&mut self, what: &'static str) -> Result<String, ProtoError> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|error| ProtoError::BadUtf8 { what, error })
    }

    /// A `u32` element count, checked against the bytes left given that
    /// each element takes at least `min_size` bytes. The count returned can
    /// be used as a `Vec` capacity: it is at most `remaining / min_size`.
    pub(super) fn count(
        &mut self,
        what: &'static str,
        min_size: usize,
    ) -> Result<usize, ProtoError> {
        debug_assert!(min_size > 0);
        let count = self.u32(what)?;
        let need = u64::from(count) * min_size as u64;
        let have = self.remaining();
        if need > have as u64 {
            return Err(ProtoError::CountTooLarge {
                what,
                count,
                need,
                have,
            });
        }
        Ok(count as usize)
    }

    /// An `Option` marker: 0 absent, 1 present.
    pub(super) fn present(&mut self, what: &'static str) -> Result<bool, ProtoError> {
        self.bool(what)
    }

    /// Fails unless every byte was read.
    pub(super) fn finish(&self, frame: &'static str) -> Result<(), ProtoError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(ProtoError::TrailingBytes { frame, extra }),
        }
    }
}

/// Appends primitives to a buffer.
pub(super) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_i32(&mut self, v: i32);
    fn put_u64(&mut self, v: u64);
    fn put_i64(&mut self, v: i64);
    fn put_bool(&mut self, v: bool);
    /// A `u32` length, then the bytes. Lengths above `u32::MAX` cannot
    /// occur in a frame under [`MAX_FRAME`](super::MAX_FRAME); they are
    /// clamped, and the frame is refused for its size when written.
    fn put_bytes(&mut self, v: &[u8]);
    fn put_str(&mut self, v: &str);
    /// A `u32` count (clamped as in `put_bytes`).
    fn put_count(&mut self, n: usize);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_bool(&mut self, v: bool) {
        self.push(u8::from(v));
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.put_count(v.len());
        self.extend_from_slice(v);
    }
    fn put_str(&mut self, v: &str) {
        self.put_bytes(v.as_bytes());
    }
    fn put_count(&mut self, n: usize) {
        self.put_u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
}
