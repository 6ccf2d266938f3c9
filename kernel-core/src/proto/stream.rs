//! Frames over a byte stream: an incremental reader for the daemon, blocking
//! helpers for a client, and a batcher for `Events` frames.

use std::io::{self, Read, Write};

use super::codec::{check_length, decode, encode, patch_length, put_event, MIN_EVENT};
use super::wire::Put;
use super::{frame_type, Event, Frame, ProtoError, HEADER_LEN, MAX_FRAME};

/// How much [`FrameReader::read_from`] asks for in one `read`.
const READ_CHUNK: usize = 64 * 1024;

/// Turns bytes, as they arrive in any pieces, into whole frames.
///
/// The daemon feeds it whatever a non-blocking `read` returned
/// ([`push`](Self::push) or [`read_from`](Self::read_from)) and then takes
/// frames with [`next_frame`](Self::next_frame) until it says `None`. A
/// frame's length is checked as soon as its four length bytes are in, so
/// an oversize frame is refused before its body is buffered.
///
/// Errors. A length of 0 or above [`MAX_FRAME`] loses the framing: the
/// reader keeps returning that error, and the connection must be closed. A
/// frame that is framed correctly but does not decode is consumed before
/// its error is returned, so the next call goes on with the next frame;
/// the core nevertheless closes on any error (see docs/core-protocol.md).
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Where the first unconsumed byte is in `buf`.
    start: usize,
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader::default()
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Does one `read` from `r` into the buffer and returns its result: the
    /// number of bytes read, 0 at end of stream (then see
    /// [`finish`](Self::finish)), or the error (`WouldBlock` included) as
    /// it came.
    pub fn read_from<R: Read>(&mut self, r: &mut R) -> io::Result<usize> {
        self.compact();
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let got = r.read(&mut self.buf[old..]);
        let n = *got.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        got
    }

    /// The next whole frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        let avail = &self.buf[self.start..];
        let Some(header) = avail.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(header.try_into().expect("a 4-byte slice"));
        check_length(len)?;
        let total = HEADER_LEN + len as usize;
        let Some(frame) = avail.get(..total) else {
            return Ok(None);
        };
        let result = decode(frame);
        self.start += total;
        result.map(Some)
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Call at end of stream: fails if the peer stopped in the middle of a
    /// frame.
    pub fn finish(&self) -> Result<(), ProtoError> {
        let have = self.buffered();
        if have == 0 {
            return Ok(());
        }
        let need = match self.buf[self.start..].get(..HEADER_LEN) {
            Some(h) => HEADER_LEN + u32::from_le_bytes(h.try_into().expect("4 bytes")) as usize,
            None => HEADER_LEN,
        };
        Err(ProtoError::Closed { have, need })
    }

    /// Drops consumed bytes once they are half the buffer, so the buffer
    /// stays about one frame plus one read long.
    fn compact(&mut self) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Reads one frame from a blocking stream. `Ok(None)` at a clean end of
/// stream (between frames). The length is checked before the body is
/// allocated.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Frame>, ProtoError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        have => {
            return Err(ProtoError::Closed {
                have,
                need: HEADER_LEN,
            })
        }
    }
    let len = u32::from_le_bytes(header);
    check_length(len)?;
    let total = HEADER_LEN + len as usize;
    let mut frame = vec![0u8; total];
    frame[..HEADER_LEN].copy_from_slice(&header);
    let got = read_full(r, &mut frame[HEADER_LEN..])?;
    if got < len as usize {
        return Err(ProtoError::Closed {
            have: HEADER_LEN + got,
            need: total,
        });
    }
    decode(&frame).map(Some)
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Encodes and writes one frame (no flush). A frame longer than
/// [`MAX_FRAME`] is refused with `Oversize` and nothing is written.
pub fn write_frame<W: Write>(w: &mut W, frame: &Frame) -> Result<(), ProtoError> {
    let bytes = encode(frame);
    let len = (bytes.len() - HEADER_LEN) as u64;
    if len > u64::from(MAX_FRAME) {
        return Err(ProtoError::Oversize {
            len,
            max: MAX_FRAME,
        });
    }
    w.write_all(&bytes)?;
    Ok(())
}

/// Packs events into one `Events` frame that stays under [`MAX_FRAME`].
///
/// ```
/// # use wprobe_core::proto::EventBatch;
/// let mut batch = EventBatch::new();
/// // for each queued event: if !batch.push(&e) { send(batch.finish()); batch.push(&e); }
/// let frame: Vec<u8> = batch.finish(); // a complete frame, ready to write
/// assert_eq!(frame.len(), 9);
/// ```
#[derive(Debug)]
pub struct EventBatch {
    buf: Vec<u8>,
    count: u32,
}

/// Length field, type byte, event count.
const BATCH_HEADER: usize = HEADER_LEN + 1 + 4;

impl Default for EventBatch {
    fn default() -> Self {
        let mut buf = Vec::with_capacity(BATCH_HEADER + 16 * MIN_EVENT);
        buf.put_u32(0);
        buf.put_u8(frame_type::EVENTS);
        buf.put_u32(0);
        EventBatch { buf, count: 0 }
    }
}

impl EventBatch {
    pub fn new() -> Self {
        EventBatch::default()
    }

    /// Adds an event if the frame stays within [`MAX_FRAME`]. `false`: it
    /// does not fit — send [`finish`](Self::finish)'s frame and push it
    /// again. `false` on an empty batch means the event alone is too large
    /// to send (its captures exceed the frame limit); drop it and count it
    /// as lost.
    pub fn push(&mut self, e: &Event) -> bool {
        let before = self.buf.len();
        put_event(e, &mut self.buf);
        if (self.buf.len() - HEADER_LEN) as u64 > u64::from(MAX_FRAME) || self.count == u32::MAX {
            self.buf.truncate(before);
            return false;
        }
        self.count += 1;
        true
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The complete `Events` frame; the batch is empty again afterwards.
    pub fn finish(&mut self) -> Vec<u8> {
        let EventBatch { mut buf, count } = std::mem::take(self);
        patch_length(&mut buf, 0);
        buf[HEADER_LEN + 1..BATCH_HEADER].copy_from_slice(&count.to_le_bytes());
        buf
    }
}
