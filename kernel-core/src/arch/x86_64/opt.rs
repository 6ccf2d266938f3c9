//! Optimized probes: a `jmp rel32` into a trampoline instead of an `int3`
//! (Linux: `arch/x86/kernel/kprobes/opt.c`). docs/optprobes.md has the
//! design.
//!
//! [`arch_prepare_optimized_kprobe`] decides whether a probe address may
//! carry a jump and which whole instructions it replaces;
//! [`arch_prepare_trampoline`] builds the trampoline that records the event
//! into the shared ring (`crate::ring`, following `Ring::produce` step by
//! step), restores everything, runs the relocated instructions and jumps
//! back. Both are byte logic; the engine places and patches.

use iced_x86::code_asm::*;
use iced_x86::{
    BlockEncoderOptions, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind,
};

use super::decode::{arch_prepare_kprobe, Action, Fixup, Sim};
use super::Regs;
use crate::ring;

/// Bytes of the `jmp rel32` written over the probed instructions.
pub const JMP_LEN: usize = 5;
/// The x86_64 red zone: a leaf function may keep data below `rsp`.
pub const RED_ZONE: i32 = 128;
/// Bytes of `endbr64`, kept in place in front of a replaced range.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// The instructions an optimized probe replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptRegion {
    /// The probe's address (reported as the event's `rip`).
    pub probe_addr: u64,
    /// The first replaced byte: `probe_addr`, or after an `endbr64` there.
    pub addr: u64,
    /// The original bytes of the replaced instructions (≥ [`JMP_LEN`]).
    pub bytes: Vec<u8>,
}

impl OptRegion {
    /// The first address after the replaced range.
    pub fn end(&self) -> u64 {
        self.addr + self.bytes.len() as u64
    }

    /// What is written over the range: the jump to `trampoline`, then
    /// `int3` on the rest (never reached: nothing branches inside).
    pub fn patch(&self, trampoline: u64) -> Result<Vec<u8>, String> {
        let rel = trampoline.wrapping_sub(self.addr + JMP_LEN as u64) as i64;
        let rel = i32::try_from(rel).map_err(|_| {
            format!(
                "the trampoline at {trampoline:#x} is out of ±2 GiB of {:#x}",
                self.addr
            )
        })?;
        let mut out = vec![0xe9];
        out.extend_from_slice(&rel.to_le_bytes());
        out.resize(self.bytes.len(), 0xcc);
        Ok(out)
    }
}

/// Whether an optimized probe may replace the instructions at `probe_addr`,
/// given the whole function `func` at `func_addr`, and which ones (Linux:
/// `arch_prepare_optimized_kprobe` and its `can_optimize`). `Err` is why
/// the probe stays on `int3`, in words for its placement state.
///
/// The rules: whole instructions of at least [`JMP_LEN`] bytes from the
/// probe (after an `endbr64`, which stays), inside the function; each one
/// runs the same anywhere (out of line, boostable, no fixup, never leaving:
/// no branch, call, `syscall` or trap); and no thread can arrive inside the
/// range other than through its first byte — no direct branch of the
/// function targets its interior, and when it holds more than one
/// instruction the function has no indirect jump (a jump table could land
/// inside).
pub fn arch_prepare_optimized_kprobe(
    func: &[u8],
    func_addr: u64,
    probe_addr: u64,
) -> Result<OptRegion, String> {
    let func_end = func_addr + func.len() as u64;
    if probe_addr < func_addr || probe_addr >= func_end {
        return Err(format!(
            "{probe_addr:#x} is outside its function ({func_addr:#x}..{func_end:#x})"
        ));
    }
    let at = |a: u64| &func[(a - func_addr) as usize..];
    let mut addr = probe_addr;
    if at(addr).starts_with(&ENDBR64) {
        addr += ENDBR64.len() as u64;
    }
    let start = addr;
    let mut count = 0;
    while addr < start + JMP_LEN as u64 {
        if addr >= func_end {
            return Err(format!(
                "the function ends {} bytes after the probe; a jump needs {JMP_LEN}",
                func_end - start
            ));
        }
        let p = arch_prepare_kprobe(at(addr), addr).map_err(|r| r.reason)?;
        let movable = match &p.action {
            Action::Simulate(Sim::Nop) => true,
            Action::Simulate(_) => false,
            Action::OutOfLine(x) => x.boostable && x.fixup == Fixup::None && !x.may_leave,
        };
        if !movable || is_trap_or_syscall(&p.bytes[..p.len], addr) {
            return Err(format!(
                "`{}` at {addr:#x} in the range a jump would replace depends on where it \
                 runs (a branch, call, return or system call)",
                p.text
            ));
        }
        addr = p.next_ip();
        count += 1;
    }
    let end = addr;
    // Everything that could arrive inside the range.
    let mut decoder = Decoder::with_ip(64, func, func_addr, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            return Err(format!(
                "the function does not decode at {:#x}; its branches cannot be checked",
                insn.ip()
            ));
        }
        match insn.flow_control() {
            FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call
            | FlowControl::XbeginXabortXend
                if matches!(
                    insn.op0_kind(),
                    OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
                ) =>
            {
                let target = insn.near_branch_target();
                if target > start && target < end {
                    return Err(format!(
                        "a branch at {:#x} targets {target:#x}, inside the range a jump would \
                         replace",
                        insn.ip()
                    ));
                }
            }
            FlowControl::IndirectBranch if count > 1 => {
                return Err(format!(
                    "the function has an indirect jump at {:#x} (a jump table?) that could \
                     land inside the {count} instructions a jump would replace",
                    insn.ip()
                ));
            }
            _ => {}
        }
    }
    Ok(OptRegion {
        probe_addr,
        addr: start,
        bytes: at(start)[..(end - start) as usize].to_vec(),
    })
}

/// Every target of a direct jump, call or conditional branch in `code`
/// (at `addr`), decoded linearly: for a module's executable segments, the
/// places other functions branch into (glibc's `__mempcpy_*_erms` jumps
/// into `__memmove_*_unaligned_erms`, a `foo.cold` part back into `foo`),
/// which a jump over several instructions must not cover.
pub fn direct_branch_targets(code: &[u8], addr: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if matches!(
            insn.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        ) {
            out.push(insn.near_branch_target());
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `int3`, `int n`, `ud2`, `syscall`, `sysenter`: nothing of this kind may
/// be moved into a trampoline (the kernel would report the trampoline's
/// address, or the instruction is a probe of someone else's).
fn is_trap_or_syscall(bytes: &[u8], addr: u64) -> bool {
    let insn = Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE).decode();
    matches!(
        insn.mnemonic(),
        Mnemonic::Int3
            | Mnemonic::Int
            | Mnemonic::Int1
            | Mnemonic::Into
            | Mnemonic::Ud0
            | Mnemonic::Ud1
            | Mnemonic::Ud2
            | Mnemonic::Syscall
            | Mnemonic::Sysenter
    )
}

/// Where a trampoline writes: the ring's address in the target, its slot
/// count, and the ring-local index of the probe.
#[derive(Clone, Copy, Debug)]
pub struct RingPlace {
    pub addr: u64,
    pub slots: u64,
    pub probe: u32,
    /// Read the thread key with `rdfsbase` (the kernel allows it:
    /// `AT_HWCAP2` has `HWCAP2_FSGSBASE`) rather than from `%fs:0`, which
    /// faults in a thread whose TLS is not set up yet (the dynamic loader
    /// before it made the TCB).
    pub rdfsbase: bool,
    /// A return probe is at the site (a function's entry): the return
    /// address is moved into a return instance and replaced by that
    /// instance's pad in the process's [`ReturnCode`] at this address.
    pub return_pads: Option<u64>,
    /// Whether the entry writes an event (entry probes, or return probes
    /// that report entries too); a site with only return probes writes
    /// just the return's.
    pub entry_event: bool,
}

/// Whether this kernel and CPU let user space read `fs_base` with
/// `rdfsbase` (`HWCAP2_FSGSBASE` in the auxiliary vector).
pub fn has_rdfsbase() -> bool {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(libc::AT_HWCAP2) & 2 != 0 }
}

/// Builds the trampoline of `region` at `tramp_addr` (Linux:
/// `arch_prepare_optimized_kprobe`'s template copy). It
///
/// 1. steps over the red zone and saves the flags and the registers it
///    uses;
/// 2. with a return probe, claims a free return instance, moves the
///    return address there and puts the instance's pad in its place (no
///    free instance after a few tries: counted in `missed`);
/// 3. counts the hit, claims a slot and writes the event as
///    `Ring::produce` does: the registers in `user_regs_struct` order (the
///    probe address as `rip`, the caller's `rsp`, `fs_base`, also the
///    thread key), the TSC as time; or, when the ring is full, counts it
///    and traps (see [`Trampoline::full_trap`]);
/// 4. wakes the reader if it sleeps (`FUTEX_WAKE`, the only system call);
/// 5. restores everything, runs the replaced instructions re-encoded for
///    their new address, and jumps back after the range.
pub fn arch_prepare_trampoline(
    region: &OptRegion,
    tramp_addr: u64,
    ring: RingPlace,
) -> Result<Trampoline, String> {
    check_place(&ring)?;
    build(region, tramp_addr, ring).map_err(|e| format!("cannot assemble the trampoline: {e}"))
}

fn check_place(ring: &RingPlace) -> Result<(), String> {
    if !ring.slots.is_power_of_two() || ring.probe as usize >= ring::MAX_PROBES {
        return Err(format!(
            "ring of {} slots, probe index {}: not a ring this trampoline can write",
            ring.slots, ring.probe
        ));
    }
    Ok(())
}

/// A trampoline's code and the address of its `int3` for a full ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trampoline {
    pub code: Vec<u8>,
    /// A hit that finds the ring full counts it in `lost[probe]`, puts
    /// every register back as at the probe, and stops here (`int3`): the
    /// engine reads the ring, reports the hit from the registers, and lets
    /// the thread run on into the relocated instructions. A full ring
    /// therefore slows the program down instead of losing events.
    pub full_trap: u64,
}

/// Offsets of the registers in a slot's register set
/// (`user_regs_struct`).
mod slot_reg {
    pub const R15: i32 = 0;
    pub const R14: i32 = 1;
    pub const R13: i32 = 2;
    pub const R12: i32 = 3;
    pub const RBP: i32 = 4;
    pub const RBX: i32 = 5;
    pub const R11: i32 = 6;
    pub const R10: i32 = 7;
    pub const R9: i32 = 8;
    pub const R8: i32 = 9;
    pub const RAX: i32 = 10;
    pub const RCX: i32 = 11;
    pub const RDX: i32 = 12;
    pub const RSI: i32 = 13;
    pub const RDI: i32 = 14;
    pub const ORIG_RAX: i32 = 15;
    pub const RIP: i32 = 16;
    pub const CS: i32 = 17;
    pub const EFLAGS: i32 = 18;
    pub const RSP: i32 = 19;
    pub const SS: i32 = 20;
    pub const FS_BASE: i32 = 21;
    pub const GS_BASE: i32 = 22;
    pub const DS: i32 = 23;
    pub const ES: i32 = 24;
    pub const FS: i32 = 25;
    pub const GS: i32 = 26;
}

/// The registers a trampoline saves, pushed in this order after the
/// flags: `[rsp + 8*k]` holds `SAVED[SAVED.len() - 1 - k]`, the flags are
/// at `[rsp + FRAME - 8]`.
const SAVED: [AsmRegister64; 6] = [rax, rcx, rdx, rsi, rdi, r11];
const FRAME: i32 = 8 * (SAVED.len() as i32 + 1);
/// Where a saved register is, from `rsp` after the pushes.
fn saved_at(r: AsmRegister64) -> i32 {
    let k = SAVED
        .iter()
        .position(|&x| x == r)
        .expect("a saved register");
    8 * (SAVED.len() - 1 - k) as i32
}
const FLAGS_AT: i32 = FRAME - 8;
/// Tries at a free return instance before a return counts as missed.
const INSTANCE_TRIES: i32 = 16;

/// The slot's register `i`, from its base in rsi.
fn reg_at(i: i32) -> AsmMemoryOperand {
    qword_ptr(rsi + (32 + 8 * i))
}

fn save(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.pushfq()?;
    for r in SAVED {
        a.push(r)?;
    }
    Ok(())
}

fn restore(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for r in SAVED.into_iter().rev() {
        a.pop(r)?;
    }
    a.popfq()
}

fn thread_key(a: &mut CodeAssembler, ring: &RingPlace) -> Result<(), IcedError> {
    if ring.rdfsbase {
        a.rdfsbase(rax)
    } else {
        a.mov(rax, qword_ptr(0u64).fs())
    }
}

/// With the ring in rdi: claims a slot, leaving it in rsi and its
/// position in rcx (rax, rdx changed); jumps to `full` when the ring is
/// full.
fn claim_slot(a: &mut CodeAssembler, slots: u64, full: CodeLabel) -> Result<(), IcedError> {
    let head = ring::OFF_HEAD as i32;
    let mut retry = a.create_label();
    let mut claim = a.create_label();
    a.mov(rax, qword_ptr(rdi + head))?;
    a.set_label(&mut retry)?;
    a.mov(rcx, rax)?;
    a.and(rcx, (slots - 1) as i32)?;
    a.shl(rcx, ring::SLOT_SIZE.trailing_zeros())?;
    a.lea(rsi, ptr(rdi + rcx + ring::HEADER_LEN as i32))?;
    a.mov(rdx, qword_ptr(rsi))?;
    a.sub(rdx, rax)?;
    a.jz(claim)?;
    a.js(full)?;
    a.mov(rax, qword_ptr(rdi + head))?;
    a.jmp(retry)?;
    a.set_label(&mut claim)?;
    a.lea(rdx, ptr(rax + 1))?;
    a.lock().cmpxchg(qword_ptr(rdi + head), rdx)?;
    a.jnz(retry)?;
    a.mov(rcx, rax)
}

/// Fills the claimed slot (rsi) with the time, the thread key and every
/// register as the thread had them, `rsp` being `rsp + sp_delta` (rax and
/// rdx changed). The caller writes the probe and kind, and `rip`.
fn fill_slot(a: &mut CodeAssembler, ring: &RingPlace, sp_delta: i32) -> Result<(), IcedError> {
    use slot_reg as R;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(qword_ptr(rsi + 16), rax)?;
    thread_key(a, ring)?;
    a.mov(qword_ptr(rsi + 24), rax)?;
    a.mov(reg_at(R::FS_BASE), rax)?;
    // Registers the trampoline has not touched.
    for (r, i) in [
        (r15, R::R15),
        (r14, R::R14),
        (r13, R::R13),
        (r12, R::R12),
        (rbp, R::RBP),
        (rbx, R::RBX),
        (r10, R::R10),
        (r9, R::R9),
        (r8, R::R8),
    ] {
        a.mov(reg_at(i), r)?;
    }
    // Those it saved, from the stack.
    for (r, i) in [
        (rax, R::RAX),
        (rcx, R::RCX),
        (rdx, R::RDX),
        (rsi, R::RSI),
        (rdi, R::RDI),
        (r11, R::R11),
    ] {
        a.mov(rax, qword_ptr(rsp + saved_at(r)))?;
        a.mov(reg_at(i), rax)?;
    }
    a.mov(rax, qword_ptr(rsp + FLAGS_AT))?;
    a.mov(reg_at(R::EFLAGS), rax)?;
    a.lea(rax, ptr(rsp + sp_delta))?;
    a.mov(reg_at(R::RSP), rax)?;
    a.mov(reg_at(R::ORIG_RAX), -1)?;
    a.mov(reg_at(R::GS_BASE), 0)?;
    for (s, i) in [
        (cs, R::CS),
        (ss, R::SS),
        (ds, R::DS),
        (es, R::ES),
        (fs, R::FS),
        (gs, R::GS),
    ] {
        a.mov(rax, s)?;
        a.mov(reg_at(i), rax)?;
    }
    Ok(())
}

/// Publishes the slot (rsi, position rcx; x86 stores are release stores)
/// and wakes a sleeping reader (ring in rdi; rax, rdx, rsi, rdi changed).
fn commit_and_wake(a: &mut CodeAssembler, done: CodeLabel) -> Result<(), IcedError> {
    a.lea(rax, ptr(rcx + 1))?;
    a.mov(qword_ptr(rsi), rax)?;
    a.cmp(dword_ptr(rdi + ring::OFF_SLEEPING as i32), 1)?;
    a.jne(done)?;
    a.mov(eax, libc::SYS_futex as u32)?;
    a.lea(rdi, ptr(rdi + ring::OFF_SLEEPING as i32))?;
    a.mov(esi, libc::FUTEX_WAKE as u32)?;
    a.mov(edx, 1u32)?;
    a.syscall()?;
    a.jmp(done)
}

/// Offset of return instance `i`'s field `f` from the ring, for rdi-based
/// addressing: `rsi = ring + instances + i * INSTANCE_SIZE` is computed
/// at run time; this is the constant part.
fn instances_offset(ring: &RingPlace) -> i32 {
    crate::ring::Ring::instances_offset(ring.slots as usize) as i32
}

/// The hijack of step 2 (ring in rdi; leaves the record's kind in r11).
fn hijack(a: &mut CodeAssembler, ring: &RingPlace, pads: u64) -> Result<(), IcedError> {
    let ret_at = FRAME + RED_ZONE;
    let mut again = a.create_label();
    let mut got = a.create_label();
    let mut out = a.create_label();
    a.mov(ecx, INSTANCE_TRIES as u32)?;
    a.set_label(&mut again)?;
    a.mov(eax, 1u32)?;
    a.lock()
        .xadd(qword_ptr(rdi + ring::OFF_INSTANCE_NEXT as i32), rax)?;
    // Scattered (Fibonacci hashing of the counter): the instances of
    // long-lived outer frames sit together, and consecutive tries must not
    // all land among them.
    a.imul_3(eax, eax, 0x9E37_79B1u32 as i32)?;
    a.shr(eax, 32 - ring::INSTANCES.trailing_zeros())?;
    a.mov(rdx, rax)?;
    a.mov(rsi, rax)?;
    a.shl(rsi, ring::INSTANCE_SIZE.trailing_zeros())?;
    a.lea(rsi, ptr(rdi + rsi + instances_offset(ring)))?;
    a.xor(eax, eax)?;
    a.mov(r11d, 1u32)?;
    a.lock()
        .cmpxchg(qword_ptr(rsi + ring::INST_STATE as i32), r11)?;
    a.jz(got)?;
    a.dec(ecx)?;
    a.jnz(again)?;
    a.lock().inc(qword_ptr(
        rdi + (ring::OFF_MISSED + 8 * ring.probe as usize) as i32,
    ))?;
    a.mov(r11d, ring::KIND_ENTRY)?;
    a.jmp(out)?;
    // Instance rdx at rsi, ours.
    a.set_label(&mut got)?;
    a.mov(rax, qword_ptr(rsp + ret_at))?;
    a.mov(qword_ptr(rsi + ring::INST_ORIG_RET as i32), rax)?;
    a.lea(rax, ptr(rsp + ret_at))?;
    a.mov(qword_ptr(rsi + ring::INST_SLOT as i32), rax)?;
    thread_key(a, ring)?;
    a.mov(qword_ptr(rsi + ring::INST_KEY as i32), rax)?;
    a.mov(qword_ptr(rsi + ring::INST_PROBE as i32), ring.probe as i32)?;
    for (k, r) in [rdi, rsi, rdx, rcx].into_iter().enumerate() {
        a.mov(rax, qword_ptr(rsp + saved_at(r)))?;
        a.mov(qword_ptr(rsi + (ring::INST_ARGS + 8 * k) as i32), rax)?;
    }
    a.mov(qword_ptr(rsi + (ring::INST_ARGS + 32) as i32), r8)?;
    a.mov(qword_ptr(rsi + (ring::INST_ARGS + 40) as i32), r9)?;
    a.mov(rax, pads)?;
    a.lea(rax, ptr(rax + rdx * 8))?;
    a.mov(qword_ptr(rsp + ret_at), rax)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(qword_ptr(rsi + ring::INST_TIME as i32), rax)?;
    a.mov(r11d, ring::KIND_ENTRY_HIJACKED)?;
    a.set_label(&mut out)
}

fn build(region: &OptRegion, tramp_addr: u64, ring: RingPlace) -> Result<Trampoline, IcedError> {
    use slot_reg as R;
    let mut a = CodeAssembler::new(64)?;
    let hits = (ring::OFF_HITS + 8 * ring.probe as usize) as i32;
    let lost = (ring::OFF_LOST + 8 * ring.probe as usize) as i32;
    let mut full = a.create_label();
    let mut done = a.create_label();
    let mut trap = a.create_label();
    let mut copy = a.create_label();

    // 1. Below the red zone; flags first (nothing below changes them before).
    a.lea(rsp, ptr(rsp - RED_ZONE))?;
    save(&mut a)?;
    a.mov(rdi, ring.addr)?;
    a.lock().inc(qword_ptr(rdi + hits))?;
    // 2. The return.
    match ring.return_pads {
        Some(pads) => hijack(&mut a, &ring, pads)?,
        None => a.mov(r11d, ring::KIND_ENTRY)?,
    }
    if ring.entry_event {
        // 3. A slot, the event.
        claim_slot(&mut a, ring.slots, full)?;
        a.mov(rax, r11)?;
        a.shl(rax, 32)?;
        a.or(rax, ring.probe as i32)?;
        a.mov(qword_ptr(rsi + 8), rax)?;
        fill_slot(&mut a, &ring, FRAME + RED_ZONE)?;
        a.mov(rax, region.probe_addr)?;
        a.mov(reg_at(R::RIP), rax)?;
        // 4. A sleeping reader is woken.
        commit_and_wake(&mut a, done)?;
        // A full ring: counted, then everything back and a trap (see
        // `Trampoline::full_trap`).
        a.set_label(&mut full)?;
        a.lock().inc(qword_ptr(rdi + lost))?;
        restore(&mut a)?;
        a.lea(rsp, ptr(rsp + RED_ZONE))?;
        a.set_label(&mut trap)?;
        a.int3()?;
        a.jmp(copy)?;
    } else {
        // Nothing written, nothing to trap for (the trap is never reached).
        a.jmp(done)?;
        a.set_label(&mut trap)?;
        a.int3()?;
    }
    // 5. Back as it was; the replaced instructions; home.
    a.set_label(&mut done)?;
    restore(&mut a)?;
    a.lea(rsp, ptr(rsp + RED_ZONE))?;
    a.set_label(&mut copy)?;
    let mut decoder = Decoder::with_ip(64, &region.bytes, region.addr, DecoderOptions::NONE);
    for insn in decoder.iter() {
        a.add_instruction(insn)?;
    }
    a.jmp(region.end())?;
    let r = a.assemble_options(
        tramp_addr,
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    Ok(Trampoline {
        full_trap: r.label_ip(&trap)?,
        code: r.inner.code_buffer,
    })
}

/// Bytes of one return pad: `call` to the common return code, padded.
pub const PAD_LEN: u64 = 8;

/// A process's return code: a pad per return instance, through which a
/// hijacked return arrives, and the code they all call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnCode {
    pub code: Vec<u8>,
    /// Pad `i` is at `pads + i * PAD_LEN`.
    pub pads: u64,
    /// The `int3` of a return that found the ring full: every register as
    /// at the return, `[rsp]` the pad's `call`'s return address. The
    /// engine reports the return from the instance, frees it, and sends
    /// the thread to the original return address.
    pub full_trap: u64,
}

impl ReturnCode {
    /// Bytes of the whole return code.
    pub fn len(&self) -> u64 {
        self.code.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// The instance whose pad's `call` pushed `pushed`.
    pub fn instance_of_pushed(&self, pushed: u64) -> Option<usize> {
        let off = pushed.checked_sub(self.pads + 5)?;
        (off % PAD_LEN == 0 && off / PAD_LEN < ring::INSTANCES as u64)
            .then_some((off / PAD_LEN) as usize)
    }

    /// The pad of instance `i`.
    pub fn pad(&self, i: usize) -> u64 {
        self.pads + i as u64 * PAD_LEN
    }

    /// The instance whose pad is `addr`.
    pub fn instance_of_pad(&self, addr: u64) -> Option<usize> {
        self.instance_of_pushed(addr.wrapping_add(5))
    }

    /// Whether a hijacked stack slot holding `word` still belongs to
    /// instance `i`: its pad, or the address the pad's `call` pushed there
    /// (a return under way).
    pub fn slot_is_live(&self, i: usize, word: u64) -> bool {
        word == self.pad(i) || word == self.pad(i) + 5
    }

    /// Where a thread stopped at [`ReturnCode::full_trap`] holds the
    /// address its pad's `call` pushed.
    pub fn pushed_at(regs: &Regs) -> u64 {
        regs.rsp
    }

    /// A thread stopped at [`ReturnCode::full_trap`], sent to `orig_ret`
    /// as its `ret` would have: the pushed address popped.
    pub fn go_home(regs: &mut Regs, orig_ret: u64) {
        regs.rip = orig_ret;
        regs.rsp = regs.rsp.wrapping_add(8);
    }
}

/// Builds the return code at `base`, writing into the ring at
/// `ring.addr` (`ring.probe` unused: each instance names its probe). A
/// return into pad `i` calls the common part, which
///
/// 1. saves what it uses below the returned-from frame (dead now);
/// 2. finds instance `i` from the pushed address, claims a slot and
///    writes a kind-1 event: the registers as after the `ret` (`rip` the
///    original return address), and in place of `orig_rax` the entry
///    time, of the segment registers the six argument registers at entry
///    (see [`return_record`]); or traps when the ring is full;
/// 3. frees the instance, wakes the reader, restores everything and
///    returns to the original address.
pub fn arch_prepare_return_code(base: u64, ring: RingPlace) -> Result<ReturnCode, String> {
    check_place(&ring)?;
    build_return(base, ring).map_err(|e| format!("cannot assemble the return code: {e}"))
}

fn build_return(base: u64, ring: RingPlace) -> Result<ReturnCode, IcedError> {
    use slot_reg as R;
    let mut a = CodeAssembler::new(64)?;
    let mut common = a.create_label();
    let mut full = a.create_label();
    let mut done = a.create_label();
    let mut trap = a.create_label();
    for _ in 0..ring::INSTANCES {
        a.call(common)?;
        for _ in 5..PAD_LEN {
            a.int3()?;
        }
    }
    a.set_label(&mut common)?;
    save(&mut a)?;
    // The instance, in r11.
    let pushed = FRAME;
    a.mov(rax, qword_ptr(rsp + pushed))?;
    a.mov(rcx, base + 5)?;
    a.sub(rax, rcx)?;
    a.shr(rax, PAD_LEN.trailing_zeros())?;
    a.shl(rax, ring::INSTANCE_SIZE.trailing_zeros())?;
    a.mov(rdi, ring.addr)?;
    a.lea(r11, ptr(rdi + rax + instances_offset(&ring)))?;
    claim_slot(&mut a, ring.slots, full)?;
    a.mov(eax, dword_ptr(r11 + ring::INST_PROBE as i32))?;
    a.mov(rdx, u64::from(ring::KIND_RETURN) << 32)?;
    a.or(rax, rdx)?;
    a.mov(qword_ptr(rsi + 8), rax)?;
    fill_slot(&mut a, &ring, pushed + 8)?;
    a.mov(rax, qword_ptr(r11 + ring::INST_ORIG_RET as i32))?;
    a.mov(reg_at(R::RIP), rax)?;
    // The `ret` below goes there.
    a.mov(qword_ptr(rsp + pushed), rax)?;
    a.mov(rax, qword_ptr(r11 + ring::INST_TIME as i32))?;
    a.mov(reg_at(R::ORIG_RAX), rax)?;
    for (k, i) in RETURN_ARGS.into_iter().enumerate() {
        a.mov(rax, qword_ptr(r11 + (ring::INST_ARGS + 8 * k) as i32))?;
        a.mov(reg_at(i), rax)?;
    }
    // Copied: the instance is free again.
    a.mov(qword_ptr(r11 + ring::INST_STATE as i32), 0)?;
    commit_and_wake(&mut a, done)?;
    // A full ring: counted, everything back, and a trap (see
    // `ReturnCode::full_trap`).
    a.set_label(&mut full)?;
    a.mov(eax, dword_ptr(r11 + ring::INST_PROBE as i32))?;
    a.and(eax, (ring::MAX_PROBES - 1) as u32)?;
    a.lock()
        .inc(qword_ptr(rdi + rax * 8 + ring::OFF_LOST as i32))?;
    restore(&mut a)?;
    a.set_label(&mut trap)?;
    a.int3()?;
    a.set_label(&mut done)?;
    restore(&mut a)?;
    a.ret()?;
    let r = a.assemble_options(base, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    Ok(ReturnCode {
        full_trap: r.label_ip(&trap)?,
        pads: base,
        code: r.inner.code_buffer,
    })
}

/// The register-set words of a return event that carry the argument
/// registers at entry (the segment registers, which the reader knows).
const RETURN_ARGS: [i32; 6] = [
    slot_reg::CS,
    slot_reg::SS,
    slot_reg::DS,
    slot_reg::ES,
    slot_reg::FS,
    slot_reg::GS,
];

/// A return event's registers as the thread had them after the `ret`,
/// the entry time (producer's clock) and the argument registers at entry
/// (see [`arch_prepare_return_code`]).
pub fn return_record(words: &[u64; crate::ring::NREGS]) -> (Regs, u64, [u64; 6]) {
    let mut args = [0; 6];
    for (k, &i) in RETURN_ARGS.iter().enumerate() {
        args[k] = words[i as usize];
    }
    let time = words[slot_reg::ORIG_RAX as usize];
    let mut regs = Regs::from_words(words);
    regs.orig_rax = u64::MAX;
    // What every 64-bit Linux thread has.
    regs.cs = 0x33;
    regs.ss = 0x2b;
    regs.ds = 0;
    regs.es = 0;
    regs.fs = 0;
    regs.gs = 0;
    (regs, time, args)
}

#[cfg(test)]
#[path = "tests/opt.rs"]
mod tests;
