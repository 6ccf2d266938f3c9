//! `arch_prepare_kprobe`: bytes, their disassembly, and the decision.

use super::super::arch_prepare_kprobe;
use super::{summary, ADDR};

/// Prepares `code` at `ADDR` and compares the disassembly and the decision.
/// `expect` is the summary (`boost rip`, `simulate jmp 0x401010`) or
/// `reject: ` followed by the start of the refusal reason.
#[track_caller]
fn check(code: &[u8], text: &str, expect: &str) {
    match arch_prepare_kprobe(code, ADDR) {
        Ok(p) => {
            assert_eq!(p.text, text, "disassembly of {code:02x?}");
            assert_eq!(summary(&p), expect, "decision for `{text}`");
        }
        Err(r) => {
            assert_eq!(r.text, text, "disassembly of {code:02x?}");
            let got = format!("reject: {}", r.reason);
            assert!(got.starts_with(expect), "decision for `{text}`:\n  got {got}\n want {expect}…");
        }
    }
}

#[test]
fn function_prologues_and_plain_instructions_are_boosted() {
    check(&[0x55], "push rbp", "boost");
    check(&[0x48, 0x89, 0xe5], "mov rbp, rsp", "boost");
    check(&[0x41, 0x57], "push r15", "boost");
    check(&[0x48, 0x83, 0xec, 0x20], "sub rsp, 0x20", "boost");
    check(&[0x5d], "pop rbp", "boost");
    check(&[0xc9], "leave", "boost");
    check(&[0xc8, 0x10, 0x00, 0x00], "enter 0x10, 0", "boost");
    check(&[0x9c], "pushfq", "boost");
    check(&[0x9d], "popfq", "boost");
    check(&[0xf3, 0x48, 0xa5], "rep movsq [rdi], [rsi]", "boost");
    check(&[0xf0, 0x48, 0x0f, 0xb1, 0x17], "lock cmpxchg [rdi], rdx", "boost");
    check(&[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00], "mov rax, fs:[0x28]", "boost");
    check(&[0x0f, 0xa2], "cpuid", "boost");
    check(&[0x0f, 0x31], "rdtsc", "boost");
    check(&[0xf3, 0x90], "pause", "boost");
}

#[test]
fn rip_relative_operands_are_boosted_and_re_pointed() {
    check(&[0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], "mov rax, [rip+0x10]", "boost rip"); // load
    check(&[0x89, 0x15, 0xf0, 0xff, 0xff, 0xff], "mov [rip-0x10], edx", "boost rip"); // store
    check(&[0x48, 0x8d, 0x3d, 0x00, 0x01, 0x00, 0x00], "lea rdi, [rip+0x100]", "boost rip");
    check(&[0x83, 0x3d, 0x10, 0x00, 0x00, 0x00, 0x05], "cmp dword ptr [rip+0x10], 5", "boost rip"); // with imm8
    check(&[0xc5, 0xfd, 0x6f, 0x05, 0x20, 0x00, 0x00, 0x00], "vmovdqa ymm0, [rip+0x20]", "boost rip"); // AVX
    check(&[0x66, 0x0f, 0x6f, 0x05, 0x20, 0x00, 0x00, 0x00], "movdqa xmm0, [rip+0x20]", "boost rip"); // SSE2
    check(&[0x62, 0xf1, 0x7c, 0x48, 0x10, 0x05, 0x40, 0x00, 0x00, 0x00], "vmovups zmm0, [rip+0x40]", "boost rip"); // AVX-512
    check(&[0xff, 0x35, 0x02, 0x2f, 0x00, 0x00], "push qword ptr [rip+0x2f02]", "boost rip"); // PLT0
    check(&[0xf2, 0xff, 0x25, 0x03, 0x2f, 0x00, 0x00], "bnd jmp qword ptr [rip+0x2f03]", "boost rip may-leave"); // PLT
}

#[test]
fn relative_branches_calls_returns_and_nops_are_simulated() {
    check(&[0xeb, 0x0e], "jmp 0x401010", "simulate jmp 0x401010");
    check(&[0xe9, 0xfb, 0xef, 0xff, 0xff], "jmp 0x400000", "simulate jmp 0x400000");
    check(&[0x75, 0x0e], "jne 0x401010", "simulate jne 0x401010");
    check(&[0x0f, 0x8f, 0x0a, 0x00, 0x00, 0x00], "jg 0x401010", "simulate jg 0x401010");
    check(&[0x3e, 0x74, 0x0d], "hint-taken je 0x401010", "simulate je 0x401010"); // branch hint "taken"
    check(&[0xf2, 0xe9, 0x0a, 0x00, 0x00, 0x00], "bnd jmp 0x401010", "simulate jmp 0x401010");
    check(&[0xe8, 0x0b, 0x00, 0x00, 0x00], "call 0x401010", "simulate call 0x401010");
    check(&[0xe8, 0x00, 0x00, 0x00, 0x00], "call 0x401005", "simulate call 0x401005"); // get-pc idiom
    check(&[0xc3], "ret", "simulate ret 0");
    check(&[0xf3, 0xc3], "rep ret", "simulate ret 0"); // old AMD-tuned epilogue
    check(&[0xc2, 0x10, 0x00], "ret 0x10", "simulate ret 16");
    check(&[0xe2, 0x0e], "loop 0x401010", "simulate loop 0x401010");
    check(&[0xe1, 0x0e], "loope 0x401010", "simulate loope 0x401010");
    check(&[0xe0, 0x0e], "loopne 0x401010", "simulate loopne 0x401010");
    check(&[0xe3, 0x0e], "jrcxz 0x401010", "simulate jrcxz 0x401010");
    check(&[0x67, 0xe3, 0x0d], "jecxz 0x401010", "simulate jecxz 0x401010");
    check(&[0x67, 0xe2, 0x0d], "addr32 loop 0x401010", "simulate loop ecx 0x401010");
    check(&[0x90], "nop", "simulate nop");
    check(&[0x66, 0x90], "xchg ax, ax", "simulate nop");
    check(&[0x0f, 0x1f, 0x44, 0x00, 0x00], "nop [rax+rax]", "simulate nop");
    check(&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00], "nop [rax+rax]", "simulate nop");
    check(&[0xf3, 0x0f, 0x1e, 0xfa], "endbr64", "simulate nop");
}

#[test]
fn indirect_branches_run_out_of_line() {
    check(&[0xff, 0xd0], "call rax", "out-of-line call-fixup may-leave");
    check(&[0xff, 0x15, 0x10, 0x00, 0x00, 0x00], "call qword ptr [rip+0x10]", "out-of-line rip call-fixup may-leave");
    check(&[0x41, 0xff, 0x54, 0x24, 0x08], "call qword ptr [r12+8]", "out-of-line call-fixup may-leave");
    check(&[0xff, 0xe0], "jmp rax", "boost may-leave");
    check(&[0x3e, 0xff, 0xe0], "notrack jmp rax", "boost may-leave"); // CET switch table
    check(&[0x0f, 0x05], "syscall", "boost may-leave");
}

#[test]
fn refusals_say_why() {
    check(&[0xcc], "int3", "reject: the instruction is already a breakpoint — is another debugger attached?");
    check(&[0xf1], "int1", "reject: `int1` (icebp)");
    check(&[0xcd, 0x80], "int 0x80", "reject: software interrupts");
    check(&[0x48, 0xcf], "iretq", "reject: `iret`");
    check(&[0xf4], "hlt", "reject: `hlt` is privileged");
    check(&[0xfa], "cli", "reject: `cli`/`sti`");
    check(&[0xec], "in al, dx", "reject: port I/O");
    check(&[0xcb], "ret far", "reject: far returns");
    check(&[0xff, 0x18], "call far fword ptr [rax]", "reject: far calls");
    check(&[0x48, 0xff, 0x28], "jmp far tbyte ptr [rax]", "reject: far calls");
    check(&[0x0f, 0x0b], "ud2", "reject: the instruction raises #UD");
    check(&[0xc7, 0xf8, 0x10, 0x00, 0x00, 0x00], "xbegin 0x401016", "reject: `xbegin`");
    check(&[0x0f, 0x34], "sysenter", "reject: only `syscall`");
    check(&[0x0f, 0x01, 0xf8], "swapgs", "reject: privileged");
    check(&[0x0f, 0x22, 0xd8], "mov cr3, rax", "reject: privileged");
    check(&[0x0f, 0x01, 0x0f], "sidt [rdi]", "reject: descriptor-table");
    check(&[0x8e, 0xd0], "mov ss, ax", "reject: `mov ss`");
    check(&[0x66, 0xe9, 0x00, 0x00, 0x00, 0x00], "jmp 0x401006", "reject: operand-size prefix");
    check(&[0x66, 0xc3], "ret", "reject: operand-size prefix");
    check(&[0x67, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], "mov eax, [eip+0x10]", "reject: RIP-relative operand with a 32-bit");
    check(&[0x06], "(bad)", "reject: bytes 06 are not a valid x86_64 instruction");
    check(&[0x48, 0x8b, 0x05, 0x10], "(bad)", "reject: the instruction is cut off after 4 bytes");
    check(&[], "(bad)", "reject: no instruction bytes");
}

#[test]
fn only_the_first_instruction_counts() {
    // `push rbp; mov rbp, rsp`: the probe covers the push only.
    let p = arch_prepare_kprobe(&[0x55, 0x48, 0x89, 0xe5], ADDR).expect("push rbp decodes");
    assert_eq!((p.len, p.next_ip(), p.insn()), (1, ADDR + 1, &[0x55][..]));
}

#[test]
fn refusal_display_names_address_and_instruction() {
    let r = arch_prepare_kprobe(&[0xcc], 0x401136).expect_err("int3 is refused");
    assert_eq!(
        r.to_string(),
        "cannot probe 0x401136 (`int3`): the instruction is already a breakpoint — is another debugger attached?"
    );
}
