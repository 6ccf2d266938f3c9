//! `arch_post_xol` and `arch_abort_xol`: where the thread stopped in the slot,
//! and the registers and stack after mapping it back.

use super::super::{arch_abort_xol, arch_post_xol, arch_prepare_kprobe, arch_prepare_slot, Regs, SlotMode};
use super::{FakeMem, ADDR};

const NEAR: u64 = 0x7000_0000;
const FAR: u64 = 0x7fff_f7ff_0000;
const STACK: u64 = 0x7f00;
const RSP: u64 = 0x7f80;

/// The thread's state when it stopped in the slot.
enum Stop {
    /// At `slot_addr + offset`, after the copy ran (`arch_post_xol`).
    Post(u64),
    /// At `slot_addr + offset`, stopped by a signal (`arch_abort_xol`).
    Abort(u64),
    /// Somewhere outside the slot (an indirect branch left it), after the copy ran.
    PostAt(u64),
}

/// Builds the slot for `code` at `slot_addr` in `mode`, puts the thread at
/// `stop` with `rax = rcx = 0x5ca7c4` (as the scratch register would hold
/// `next_ip`), `[rsp] = slot_addr + copy_len` (as a stepped call pushed it)
/// and `saved_scratch = 0x5a7ed`, then describes the outcome:
/// `[position] rip=… rax=… rcx=… [rsp]=…`.
#[track_caller]
fn check(code: &[u8], slot_addr: u64, mode: SlotMode, stop: Stop, expect: &str) {
    let p = arch_prepare_kprobe(code, ADDR).expect("the case decodes");
    let slot = arch_prepare_slot(&p, slot_addr, mode).expect("the slot builds");
    let mut mem = FakeMem::new(STACK, 0x100);
    let pushed = slot_addr + slot.copy_len as u64;
    let r = mem.range(RSP, 8).expect("rsp is on the stack");
    mem.bytes[r].copy_from_slice(&pushed.to_le_bytes());
    let mut regs = Regs { rsp: RSP, rax: 0x5ca7c4, rcx: 0x5ca7c4, ..Regs::default() };
    let saved = slot.scratch.map(|_| 0x5a7ed);
    let mut got = String::new();
    match stop {
        Stop::Post(offset) | Stop::PostAt(offset) => {
            regs.rip = if matches!(stop, Stop::Post(_)) { slot_addr + offset } else { offset };
            arch_post_xol(&p, &slot, slot_addr, saved, &mut regs, &mut mem).expect("the stack is mapped");
        }
        Stop::Abort(offset) => {
            regs.rip = slot_addr + offset;
            got = format!("{:?} ", arch_abort_xol(&p, &slot, slot_addr, saved, &mut regs));
        }
    }
    got.push_str(&format!(
        "rip={:#x} rax={:#x} rcx={:#x} [rsp]={:#x}",
        regs.rip,
        regs.rax,
        regs.rcx,
        mem.u64_at(RSP)
    ));
    assert_eq!(got, expect, "`{}` in a {mode:?} slot", p.text);
}

#[test]
fn post_xol_maps_rip_back_to_the_next_instruction() {
    // push rbp (1 byte): stepped, the thread stops at the end of the copy.
    check(&[0x55], NEAR, SlotMode::Step, Stop::Post(1), "rip=0x401001 rax=0x5ca7c4 rcx=0x5ca7c4 [rsp]=0x70000001");
    // TrapAfter: the int3 after the copy has run, rip is one past the copy.
    check(&[0x55], NEAR, SlotMode::TrapAfter, Stop::Post(2), "rip=0x401001 rax=0x5ca7c4 rcx=0x5ca7c4 [rsp]=0x70000001");
    // A rep string instruction stepped one iteration: back to the probe.
    check(&[0xf3, 0x48, 0xa5], NEAR, SlotMode::Step, Stop::Post(0), "rip=0x401000 rax=0x5ca7c4 rcx=0x5ca7c4 [rsp]=0x70000003");
    // jmp rax left the slot: rip is kept.
    check(&[0xff, 0xe0], NEAR, SlotMode::Step, Stop::PostAt(0x404040), "rip=0x404040 rax=0x5ca7c4 rcx=0x5ca7c4 [rsp]=0x70000002");
}

#[test]
fn post_xol_fixes_the_return_address_of_an_indirect_call() {
    // call rax stepped: rip is the callee, [rsp] becomes the original return address.
    check(&[0xff, 0xd0], NEAR, SlotMode::Step, Stop::PostAt(0x404040), "rip=0x404040 rax=0x5ca7c4 rcx=0x5ca7c4 [rsp]=0x401002");
    // call qword ptr [rip+0x10] far away: through rax, restored after.
    check(&[0xff, 0x15, 0x10, 0x00, 0x00, 0x00], FAR, SlotMode::Step, Stop::PostAt(0x404040), "rip=0x404040 rax=0x5a7ed rcx=0x5ca7c4 [rsp]=0x401006");
}

#[test]
fn post_xol_restores_the_scratch_register() {
    // mov rax, [rip+0x10] far away ran as mov rax, [rcx+0x10]: rcx is restored, rax keeps the load.
    check(&[0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], FAR, SlotMode::Step, Stop::Post(7), "rip=0x401007 rax=0x5ca7c4 rcx=0x5a7ed [rsp]=0x7ffff7ff0007");
}

#[test]
fn post_xol_clears_tf_pushed_by_a_stepped_pushf() {
    // pushfq stepped pushes TF (0x100) with the flags; here [rsp] stands for that push.
    let tf_and_if = 0x302;
    let p = arch_prepare_kprobe(&[0x9c], ADDR).expect("pushfq decodes");
    let slot = arch_prepare_slot(&p, NEAR, SlotMode::Step).expect("the slot builds");
    let mut mem = FakeMem::new(STACK, 0x100);
    let r = mem.range(RSP, 8).expect("rsp is on the stack");
    mem.bytes[r].copy_from_slice(&u64::to_le_bytes(tf_and_if));
    let mut regs = Regs { rsp: RSP, rip: NEAR + 1, ..Regs::default() };
    arch_post_xol(&p, &slot, NEAR, None, &mut regs, &mut mem).expect("the stack is mapped");
    assert_eq!((regs.rip, mem.u64_at(RSP)), (0x401001, 0x202));
}

#[test]
fn abort_xol_says_where_the_thread_was() {
    check(&[0x55], NEAR, SlotMode::Boost, Stop::Abort(0), "BeforeCopy rip=0x401000 rax=0x5ca7c4 rcx=0x5ca7c4 [rsp]=0x70000001");
    check(&[0x55], NEAR, SlotMode::Boost, Stop::Abort(1), "AfterCopy rip=0x401001 rax=0x5ca7c4 rcx=0x5ca7c4 [rsp]=0x70000001");
    check(&[0x55], NEAR, SlotMode::TrapAfter, Stop::Abort(2), "AfterCopy rip=0x401001 rax=0x5ca7c4 rcx=0x5ca7c4 [rsp]=0x70000001");
    check(&[0x55], NEAR, SlotMode::Boost, Stop::Abort(3), "Inside rip=0x70000003 rax=0x5ca7c4 rcx=0x5ca7c4 [rsp]=0x70000001");
    // A scratch-register rewrite interrupted before the copy: rcx comes back.
    check(&[0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00], FAR, SlotMode::Step, Stop::Abort(0), "BeforeCopy rip=0x401000 rax=0x5ca7c4 rcx=0x5a7ed [rsp]=0x7ffff7ff0007");
}
