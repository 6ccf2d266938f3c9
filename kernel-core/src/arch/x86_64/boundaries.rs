//! Instruction boundaries of a function, for refusing probes that would
//! land in the middle of an instruction (perf probe does the same with
//! its instruction decoder).

use iced_x86::{Decoder, DecoderOptions};

/// Offsets, from the start of `code`, at which instructions begin when
/// `code` is decoded linearly from its first byte. Decoding stops at the
/// first byte sequence that is not an instruction (data in the text, or a
/// truncated tail).
pub fn insn_boundaries(code: &[u8]) -> Vec<usize> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let pos = decoder.position();
        let insn = decoder.decode();
        if insn.is_invalid() {
            break;
        }
        out.push(pos);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(code: &[u8], expect: &[usize]) {
        assert_eq!(insn_boundaries(code), expect);
    }

    #[test]
    fn boundaries() {
        check(
            &[
                0x55, // push rbp
                0x48, 0x89, 0xe5, // mov rbp, rsp
                0x8b, 0x05, 0x10, 0x00, 0x00, 0x00, // mov eax, [rip+0x10]
                0xc3, // ret
            ],
            &[0, 1, 4, 10],
        );
        // A truncated instruction at the end is not a boundary.
        check(&[0x90, 0x48, 0x8b], &[0]);
    }
}
