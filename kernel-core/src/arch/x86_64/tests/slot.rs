//! `arch_prepare_slot`: bytes, where the slot is, the mode, and the slot code.

use super::super::decode::{decode, disassemble, hex};
use super::super::{arch_prepare_kprobe, arch_prepare_slot, SlotMode, SLOT_SIZE};
use super::ADDR;

/// A slot page near the code (within ±2 GB) and one far away.
const NEAR: u64 = 0x7000_0000;
const FAR: u64 = 0x7fff_f7ff_0000;

/// Builds the slot for `code` at `ADDR` placed at `slot_addr` and describes
/// it as `slot bytes | disassembly of the copy at slot_addr [| scratch reg=value]`,
/// or `refused: reason`. For a RIP-relative instruction it also checks that the
/// copy reaches the same absolute address as the original.
#[track_caller]
fn check(code: &[u8], slot_addr: u64, mode: SlotMode, expect: &str) {
    let p = arch_prepare_kprobe(code, ADDR).expect("the case decodes");
    let got = match arch_prepare_slot(&p, slot_addr, mode) {
        Err(r) => format!("refused: {}", r.reason),
        Ok(slot) => {
            assert!(slot.code.len() <= SLOT_SIZE);
            assert_eq!(slot.mode, mode);
            let copy = decode(&slot.code[..slot.copy_len], slot_addr).expect("the copy decodes");
            assert_eq!(copy.len(), slot.copy_len, "the copy is one instruction");
            let original = decode(p.insn(), ADDR).expect("the original decodes");
            if original.is_ip_rel_memory_operand() {
                let reached = match slot.scratch {
                    Some((_, value)) => value.wrapping_add(copy.memory_displacement64()),
                    None => copy.ip_rel_memory_address(),
                };
                assert_eq!(reached, original.ip_rel_memory_address(), "the copy reaches the original operand");
            }
            let mut s = format!("{} | {}", hex(&slot.code), disassemble(&copy));
            if let Some((reg, value)) = slot.scratch {
                s.push_str(&format!(" | scratch {reg}={value:#x}"));
            }
            s
        }
    };
    assert!(got.starts_with(expect), "slot for `{}` at {slot_addr:#x} ({mode:?}):\n  got {got}\n want {expect}…", p.text);
}

#[test]
fn plain_instructions_are_copied_byte_for_byte() {
    check(&[0x55], NEAR, SlotMode::Boost, "55 e9 fb 0f 40 90 | push rbp"); // jmp 0x401001
    check(&[0x55], NEAR, SlotMode::TrapAfter, "55 cc | push rbp");
    check(&[0x55], NEAR, SlotMode::Step, "55 | push rbp");
    check(&[0x48, 0x89, 0xe5], FAR, SlotMode::Step, "48 89 e5 | mov rbp, rsp");
    check(&[0xff, 0xd0], NEAR, SlotMode::Step, "ff d0 | call rax");
}

#[test]
fn rip_relative_operands_are_re_pointed_to_the_same_address() {
    // mov rax, [rip+0x10] at 0x401000 reads 0x401017.
    check(&[0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], NEAR, SlotMode::Boost, "48 8b 05 10 10 40 90 e9");
    check(&[0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], NEAR, SlotMode::TrapAfter, "48 8b 05 10 10 40 90 cc | mov rax, [rip-0x6fbfeff0]");
    // A store with an immediate after the displacement: mov dword ptr [rip+0x10], 1.
    check(&[0xc7, 0x05, 0x10, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00], NEAR, SlotMode::Step, "c7 05 10 10 40 90 01 00 00 00 | mov dword ptr [rip-0x6fbfeff0], 1");
    // vmovdqa ymm0, [rip+0x20] (VEX).
    check(&[0xc5, 0xfd, 0x6f, 0x05, 0x20, 0x00, 0x00, 0x00], NEAR, SlotMode::Boost, "c5 fd 6f 05 20 10 40 90 e9 fb 0f 40 90 | vmovdqa ymm0, [rip-0x6fbfefe0]");
    // call qword ptr [rip+0x10]
    check(&[0xff, 0x15, 0x10, 0x00, 0x00, 0x00], NEAR, SlotMode::Step, "ff 15 10 10 40 90 |");
}

#[test]
fn out_of_range_rip_relative_goes_through_a_scratch_register() {
    // mov rax, [rip+0x10] far away: rax is used, so rcx carries next_ip (0x401007).
    check(&[0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], FAR, SlotMode::Step, "48 8b 81 10 00 00 00 | mov rax, [rcx+0x10] | scratch rcx=0x401007");
    // mov [rip+0x10], ecx: uses rcx only, so rax.
    check(&[0x89, 0x0d, 0x10, 0x00, 0x00, 0x00], FAR, SlotMode::Step, "89 88 10 00 00 00 | mov [rax+0x10], ecx | scratch rax=0x401006");
    // lock cmpxchg [rip+0x10], rcx uses rax implicitly and rcx: rdx is next.
    check(&[0xf0, 0x48, 0x0f, 0xb1, 0x0d, 0x10, 0x00, 0x00, 0x00], FAR, SlotMode::Step, "f0 48 0f b1 8a 10 00 00 00 | lock cmpxchg [rdx+0x10], rcx | scratch rdx=0x401009");
    // vmovdqa ymm0, [rip+0x20]
    check(&[0xc5, 0xfd, 0x6f, 0x05, 0x20, 0x00, 0x00, 0x00], FAR, SlotMode::Step, "c5 fd 6f 80 20 00 00 00 | vmovdqa ymm0, [rax+0x20] | scratch rax=0x401008");
    // call qword ptr [rip+0x10]: rsp is implicit, rax is free.
    check(&[0xff, 0x15, 0x10, 0x00, 0x00, 0x00], FAR, SlotMode::Step, "ff 90 10 00 00 00 | call qword ptr [rax+0x10] | scratch rax=0x401006");
    // Other modes cannot restore the scratch register after the copy.
    check(&[0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], FAR, SlotMode::Boost, "refused: its RIP-relative operand 0x401017 is out of ±2 GB of the slot at 0x7ffff7ff0000; the scratch-register rewrite needs SlotMode::Step");
    check(&[0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], FAR, SlotMode::TrapAfter, "refused: its RIP-relative operand");
}

#[test]
fn modes_the_instruction_cannot_use_are_refused() {
    check(&[0xff, 0xd0], NEAR, SlotMode::Boost, "refused: the instruction needs a fixup after it runs"); // call rax
    check(&[0xff, 0xd0], NEAR, SlotMode::TrapAfter, "refused: an indirect call must be single-stepped");
    check(&[0x55], FAR, SlotMode::Boost, "refused: the slot at 0x7ffff7ff0000 is out of ±2 GB of the next instruction 0x401001");
    check(&[0xc3], NEAR, SlotMode::Step, "refused: the instruction is simulated, it needs no slot"); // ret
}
