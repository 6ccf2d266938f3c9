//! The event as a plugin sees it: the byte layout of docs/plugin-abi.md,
//! "The event".

use wprobe_core::proto::{CaptureValue, Event, EventKind, RegSet};

/// The ABI version this host serves.
pub const ABI_VERSION: i32 = 1;

/// Offset of the registers in the event.
pub const REGS_OFFSET: usize = 120;

/// Event flags (byte 9).
pub const FLAG_SYNC: u8 = 1;
pub const FLAG_MUTATION: u8 = 2;
pub const FLAG_LIVE_READS: u8 = 4;

pub fn kind_byte(k: EventKind) -> u8 {
    match k {
        EventKind::Entry => 0,
        EventKind::Post => 1,
        EventKind::Return => 2,
    }
}

/// Writes `e` into `out` (cleared first) in the ABI layout.
pub fn encode_event(e: &Event, flags: u8, out: &mut Vec<u8>) {
    out.clear();
    let RegSet::X86_64(regs) = &e.regs;
    let put32 = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
    let put64 = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
    put32(out, 0); // size, patched below
    put32(out, e.probe);
    out.push(kind_byte(e.kind));
    out.push(flags);
    out.extend_from_slice(&e.regs.arch().to_le_bytes());
    put32(out, e.pid as u32);
    put32(out, e.tid as u32);
    put32(out, e.captures.len() as u32);
    put64(out, e.time_ns);
    put64(out, e.addr);
    match &e.ret {
        Some(r) => {
            put64(out, r.entry_time_ns);
            put64(out, r.value);
            put64(out, r.return_address);
            for a in r.entry_args {
                put64(out, a);
            }
        }
        None => {
            put64(out, e.time_ns);
            put64(out, 0);
            put64(out, 0);
            // rdi, rsi, rdx, rcx, r8, r9 in user_regs_struct order.
            for i in [14, 13, 12, 11, 9, 8] {
                put64(out, regs[i]);
            }
        }
    }
    put32(out, regs.len() as u32);
    put32(out, 0);
    debug_assert_eq!(out.len(), REGS_OFFSET);
    for r in regs {
        put64(out, *r);
    }
    for (name, value) in &e.captures {
        let (tag, truncated, bytes): (u8, bool, Vec<u8>) = match value {
            CaptureValue::Unsigned(v) => (0, false, v.to_le_bytes().to_vec()),
            CaptureValue::Signed(v) => (1, false, v.to_le_bytes().to_vec()),
            CaptureValue::Hex(v) => (2, false, v.to_le_bytes().to_vec()),
            CaptureValue::String { bytes, truncated } => (3, *truncated, bytes.clone()),
            CaptureValue::Bytes(b) => (4, false, b.clone()),
            CaptureValue::Error(m) => (5, false, m.as_bytes().to_vec()),
        };
        put32(out, name.len() as u32);
        put32(out, bytes.len() as u32);
        out.push(tag);
        out.push(truncated as u8);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&bytes);
    }
    let size = out.len() as u32;
    out[..4].copy_from_slice(&size.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use wprobe_core::proto::RetInfo;

    #[test]
    fn layout() {
        let mut regs = [0u64; 27];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = 100 + i as u64;
        }
        let e = Event {
            seq: 1,
            probe: 7,
            kind: EventKind::Return,
            sync: true,
            pid: 10,
            tid: 11,
            time_ns: 5000,
            addr: 0x401000,
            regs: RegSet::X86_64(regs),
            captures: vec![(
                "s".into(),
                CaptureValue::String {
                    bytes: b"hi".to_vec(),
                    truncated: true,
                },
            )],
            ret: Some(RetInfo {
                value: 42,
                entry_time_ns: 4000,
                entry_args: [1, 2, 3, 4, 5, 6],
                return_address: 0x401234,
            }),
        };
        let mut out = Vec::new();
        encode_event(&e, FLAG_SYNC | FLAG_MUTATION, &mut out);
        let u32_at = |o: usize| u32::from_le_bytes(out[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(out[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0) as usize, out.len());
        assert_eq!(out.len(), REGS_OFFSET + 27 * 8 + 12 + 1 + 2);
        assert_eq!(u32_at(4), 7);
        assert_eq!((out[8], out[9]), (2, 3));
        assert_eq!(u16::from_le_bytes([out[10], out[11]]), 62);
        assert_eq!((u32_at(12), u32_at(16), u32_at(20)), (10, 11, 1));
        assert_eq!((u64_at(24), u64_at(32)), (5000, 0x401000));
        assert_eq!((u64_at(40), u64_at(48), u64_at(56)), (4000, 42, 0x401234));
        assert_eq!((u64_at(64), u64_at(104)), (1, 6));
        assert_eq!((u32_at(112), u32_at(116)), (27, 0));
        assert_eq!(u64_at(REGS_OFFSET), 100);
        assert_eq!(u64_at(REGS_OFFSET + 16 * 8), 116, "rip");
        let c = REGS_OFFSET + 27 * 8;
        assert_eq!(
            (u32_at(c), u32_at(c + 4), out[c + 8], out[c + 9]),
            (1, 2, 3, 1)
        );
        assert_eq!(&out[c + 12..], b"shi");

        // An entry event: args from the registers, entry time = time.
        let mut entry = e.clone();
        entry.kind = EventKind::Entry;
        entry.ret = None;
        encode_event(&entry, 0, &mut out);
        let u64_at = |o: usize| u64::from_le_bytes(out[o..o + 8].try_into().unwrap());
        assert_eq!((u64_at(40), u64_at(48)), (5000, 0));
        assert_eq!(u64_at(64), 114, "rdi");
        assert_eq!(u64_at(72), 113, "rsi");
        assert_eq!(u64_at(96), 109, "r8");
    }
}
