//! `arch_simulate`: bytes, the registers before, and what changed after.

use super::super::{arch_prepare_kprobe, arch_simulate, Action, Reg, Regs};
use super::{FakeMem, ADDR};

/// The stack the tests run on: `[STACK, STACK + 0x100)`, `rsp` in the middle,
/// and a return address `0x402000` at `[rsp]`.
const STACK: u64 = 0x7f00;
const RSP: u64 = 0x7f80;

/// Simulates `code` at `ADDR` with the registers in `setup` (`eflags`, `rcx`,
/// `rsp`, ...) and lists what changed: `rip=… rsp=… [addr]=…` (memory as
/// 8-byte words), or `fault at …`.
#[track_caller]
fn check(code: &[u8], setup: &[(&str, u64)], expect: &str) {
    let p = arch_prepare_kprobe(code, ADDR).expect("the case decodes");
    let Action::Simulate(sim) = &p.action else { panic!("`{}` is not simulated", p.text) };
    let mut regs = Regs { rip: ADDR, rsp: RSP, ..Regs::default() };
    for (name, value) in setup {
        match *name {
            "eflags" => regs.eflags = *value,
            _ => regs.set(Reg::from_name(name).expect("a register name"), *value),
        }
    }
    let mut mem = FakeMem::new(STACK, 0x100);
    let before_mem = {
        let r = mem.range(RSP, 8).expect("rsp is inside the stack");
        mem.bytes[r].copy_from_slice(&0x402000u64.to_le_bytes());
        mem.bytes.clone()
    };
    let before = regs;

    let mut got: Vec<String> = Vec::new();
    if let Err(e) = arch_simulate(&p, sim, &mut regs, &mut mem) {
        got.push(format!("fault at {:#x}", e.addr));
        assert_eq!(regs, before, "a fault leaves the registers untouched");
    }
    for ((name, old), (_, new)) in before.named().iter().zip(regs.named()) {
        if *old != new {
            got.push(format!("{name}={new:#x}"));
        }
    }
    for offset in (0..mem.bytes.len()).step_by(8) {
        if mem.bytes[offset..offset + 8] != before_mem[offset..offset + 8] {
            let addr = STACK + offset as u64;
            got.push(format!("[{addr:#x}]={:#x}", mem.u64_at(addr)));
        }
    }
    assert_eq!(got.join(" "), expect, "simulating `{}` with {setup:?}", p.text);
}

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

#[test]
fn jumps_and_nops() {
    check(&[0xeb, 0x0e], &[], "rip=0x401010"); // jmp 0x401010
    check(&[0xe9, 0xfb, 0xef, 0xff, 0xff], &[], "rip=0x400000"); // jmp 0x400000
    check(&[0x90], &[], "rip=0x401001"); // nop
    check(&[0x0f, 0x1f, 0x44, 0x00, 0x00], &[], "rip=0x401005"); // nop [rax+rax]
    check(&[0xf3, 0x0f, 0x1e, 0xfa], &[], "rip=0x401004"); // endbr64
}

#[test]
fn every_jcc_condition_both_ways() {
    // (opcode of the rel8 form, flags that make it taken, flags that do not)
    let cases: &[(u8, &str, u64, u64)] = &[
        (0x70, "jo", OF, 0),
        (0x71, "jno", 0, OF),
        (0x72, "jb", CF, 0),
        (0x73, "jae", 0, CF),
        (0x74, "je", ZF, 0),
        (0x75, "jne", 0, ZF),
        (0x76, "jbe", ZF, 0),
        (0x77, "ja", 0, CF),
        (0x78, "js", SF, 0),
        (0x79, "jns", 0, SF),
        (0x7a, "jp", PF, 0),
        (0x7b, "jnp", 0, PF),
        (0x7c, "jl", SF, SF | OF),
        (0x7d, "jge", SF | OF, OF),
        (0x7e, "jle", ZF, 0),
        (0x7f, "jg", OF | SF, ZF | OF | SF),
    ];
    for &(opcode, name, taken, not_taken) in cases {
        let p = arch_prepare_kprobe(&[opcode, 0x0e], ADDR).expect("jcc decodes");
        assert_eq!(p.text, format!("{name} 0x401010"));
        check(&[opcode, 0x0e], &[("eflags", taken)], "rip=0x401010");
        check(&[opcode, 0x0e], &[("eflags", not_taken)], "rip=0x401002");
        // The rel32 form (0f 8x) takes the same decision.
        check(&[0x0f, opcode + 0x10, 0x0a, 0x00, 0x00, 0x00], &[("eflags", taken)], "rip=0x401010");
        check(&[0x0f, opcode + 0x10, 0x0a, 0x00, 0x00, 0x00], &[("eflags", not_taken)], "rip=0x401006");
    }
    check(&[0x76, 0x0e], &[("eflags", CF)], "rip=0x401010"); // jbe on CF alone
    check(&[0x7e, 0x0e], &[("eflags", OF)], "rip=0x401010"); // jle on SF != OF
}

#[test]
fn calls_and_returns_use_the_stack() {
    check(&[0xe8, 0x0b, 0x00, 0x00, 0x00], &[], "rip=0x401010 rsp=0x7f78 [0x7f78]=0x401005"); // call 0x401010
    check(&[0xc3], &[], "rip=0x402000 rsp=0x7f88"); // ret
    check(&[0xf3, 0xc3], &[], "rip=0x402000 rsp=0x7f88"); // rep ret
    check(&[0xc2, 0x10, 0x00], &[], "rip=0x402000 rsp=0x7f98"); // ret 0x10
    check(&[0xe8, 0x0b, 0x00, 0x00, 0x00], &[("rsp", 0x1000)], "fault at 0xff8"); // call with a bad stack
    check(&[0xc3], &[("rsp", 0x1000)], "fault at 0x1000"); // ret with a bad stack
}

#[test]
fn loops_count_rcx_or_ecx() {
    check(&[0xe2, 0x0e], &[("rcx", 2)], "rcx=0x1 rip=0x401010"); // loop: 2 -> 1, taken
    check(&[0xe2, 0x0e], &[("rcx", 1)], "rcx=0x0 rip=0x401002"); // loop: 1 -> 0, falls through
    check(&[0xe2, 0x0e], &[("rcx", 0)], "rcx=0xffffffffffffffff rip=0x401010"); // loop: 0 wraps
    check(&[0xe1, 0x0e], &[("rcx", 2), ("eflags", ZF)], "rcx=0x1 rip=0x401010"); // loope, ZF set
    check(&[0xe1, 0x0e], &[("rcx", 2)], "rcx=0x1 rip=0x401002"); // loope, ZF clear
    check(&[0xe0, 0x0e], &[("rcx", 2)], "rcx=0x1 rip=0x401010"); // loopne, ZF clear
    check(&[0xe0, 0x0e], &[("rcx", 2), ("eflags", ZF)], "rcx=0x1 rip=0x401002"); // loopne, ZF set
    check(&[0xe3, 0x0e], &[("rcx", 0)], "rip=0x401010"); // jrcxz taken
    check(&[0xe3, 0x0e], &[("rcx", 1 << 32)], "rip=0x401002"); // jrcxz sees all 64 bits
    check(&[0x67, 0xe3, 0x0d], &[("rcx", 1 << 32)], "rip=0x401010"); // jecxz sees ecx only
    check(&[0x67, 0xe2, 0x0d], &[("rcx", (1 << 32) | 1)], "rcx=0x0 rip=0x401003"); // addr32 loop: ecx 1 -> 0, zero-extended
}
