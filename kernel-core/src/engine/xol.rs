//! Out-of-line execution areas: pages the engine maps in a target, within
//! ±2 GB of the code they serve, cut into fixed-size slots.
//!
//! The first slot of every area holds `syscall; int3`, the gadget through
//! which the engine makes the target call `mmap`/`munmap` later, and the
//! `int3` that hijacked return addresses point to (the return trampoline). Before an
//! area exists, any `0f 05` byte pair in an executable mapping serves (the
//! vdso has some), since a single step runs exactly those two bytes.

use crate::arch::native::{Regs, SLOT_SIZE};
use crate::symbols::MapEntry;
use crate::target::{Resume, SigInfo, Stop, Target, TargetError, Tid};

/// Slots reach their probed code with a rel32 jump; keep a margin.
pub const REACH: u64 = (1 << 31) - 2 * AREA_LEN;
/// Bytes per area: 16 pages.
pub const AREA_LEN: u64 = 16 * 4096;
/// `syscall; int3` at the area's start, then the return trampoline's
/// `int3` at [`TRAMPOLINE_OFFSET`].
const HEADER: [u8; 9] = [0x0f, 0x05, 0xcc, 0x90, 0x90, 0x90, 0x90, 0x90, 0xcc];
/// Where in an area the return trampoline is.
pub const TRAMPOLINE_OFFSET: u64 = 8;
const USER_LOW: u64 = 0x10000;
const USER_HIGH: u64 = 0x7fff_ffff_f000;

#[derive(Clone, Debug)]
pub struct Area {
    pub start: u64,
    next: u64,
    free: Vec<u64>,
    /// Trampolines of optimized probes given back (no thread in them).
    free_tramps: Vec<u64>,
}

/// Bytes set aside for one optimized probe's trampoline.
pub const TRAMP_LEN: u64 = 1024;
/// Where in an area's first slot the engine writes a string argument of a
/// system call it injects (after the header).
pub const SCRATCH_OFFSET: u64 = 16;

impl Area {
    pub fn new(start: u64) -> Self {
        Area {
            start,
            next: start + SLOT_SIZE as u64,
            free: Vec::new(),
            free_tramps: Vec::new(),
        }
    }
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.start + AREA_LEN
    }
    pub fn gadget(&self) -> u64 {
        self.start
    }
    /// Hijacked return addresses point here (uprobes' trampoline).
    pub fn trampoline(&self) -> u64 {
        self.start + TRAMPOLINE_OFFSET
    }
    /// A slot no thread is in, or `None` when the area is full.
    pub fn alloc(&mut self) -> Option<u64> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        if self.next + SLOT_SIZE as u64 <= self.start + AREA_LEN {
            let s = self.next;
            self.next += SLOT_SIZE as u64;
            return Some(s);
        }
        None
    }
    /// Room for a trampoline ([`TRAMP_LEN`] bytes, cache-line aligned),
    /// or `None` when the area is full.
    pub fn alloc_tramp(&mut self) -> Option<u64> {
        if let Some(t) = self.free_tramps.pop() {
            return Some(t);
        }
        let t = self.next.next_multiple_of(64);
        if t + TRAMP_LEN <= self.start + AREA_LEN {
            self.next = t + TRAMP_LEN;
            return Some(t);
        }
        None
    }
    /// `len` bytes for good (a process's return code), cache-line
    /// aligned, or `None` when the area has not that much room.
    pub fn alloc_block(&mut self, len: u64) -> Option<u64> {
        let t = self.next.next_multiple_of(64);
        if t + len <= self.start + AREA_LEN {
            self.next = t + len;
            return Some(t);
        }
        None
    }
    /// Gives a trampoline back. The caller guarantees that no thread is
    /// inside it and no signal frame returns into it.
    pub fn release_tramp(&mut self, tramp: u64) {
        self.free_tramps.push(tramp);
    }
    /// Gives a slot back. The caller guarantees that no thread is inside it.
    pub fn release(&mut self, slot: u64) {
        self.free.push(slot);
    }
    pub fn reaches(&self, addr: u64) -> bool {
        self.start.abs_diff(addr) < REACH
    }
}

/// The bytes written at the start of a new area.
pub fn area_header() -> &'static [u8] {
    &HEADER
}

/// A free, page-aligned range of `len` bytes as close as possible to `near`
/// and within `REACH` of it.
pub fn find_gap(maps: &[MapEntry], near: u64, len: u64) -> Option<u64> {
    let mut used: Vec<(u64, u64)> = maps.iter().map(|m| (m.start, m.end)).collect();
    used.sort_unstable();
    let mut best: Option<u64> = None;
    let mut consider = |lo: u64, hi: u64| {
        // A guard page on either side keeps the area from touching others.
        let lo = lo.max(USER_LOW) + 4096;
        let hi = hi.min(USER_HIGH).saturating_sub(4096);
        if hi <= lo || hi - lo < len {
            return;
        }
        let cand = (near & !0xfff).clamp(lo, hi - len);
        let end_far = cand.abs_diff(near).max((cand + len).abs_diff(near));
        if end_far < REACH && best.is_none_or(|b| cand.abs_diff(near) < b.abs_diff(near)) {
            best = Some(cand);
        }
    };
    let mut prev_end = 0u64;
    for &(s, e) in &used {
        if s > prev_end {
            consider(prev_end, s);
        }
        prev_end = prev_end.max(e);
    }
    consider(prev_end, USER_HIGH);
    best
}

/// Finds `syscall` bytes in an executable mapping, the vdso first.
pub fn find_syscall_bytes<T: Target>(target: &mut T, pid: Tid, maps: &[MapEntry]) -> Option<u64> {
    let mut order: Vec<&MapEntry> = maps.iter().filter(|m| m.exec).collect();
    order.sort_by_key(|m| m.path.as_deref() != Some("[vdso]"));
    for m in order {
        let len = (m.end - m.start).min(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        if target.read_memory(pid, m.start, &mut buf).is_err() {
            continue;
        }
        if let Some(i) = buf.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Some(m.start + i as u64);
        }
    }
    None
}

/// Makes the stopped thread `tid` run one system call at `gadget` and
/// returns its result; every register is restored afterwards. Signals that
/// arrive meanwhile are returned in `deferred` for the caller to deliver.
pub fn inject_syscall<T: Target>(
    target: &mut T,
    tid: Tid,
    gadget: u64,
    nr: u64,
    args: [u64; 6],
    deferred: &mut Vec<SigInfo>,
) -> Result<u64, TargetError> {
    let saved = target.get_regs(tid)?;
    let mut r: Regs = saved;
    r.rax = nr;
    // -1 in orig_rax stops the kernel from restarting a system call the
    // thread was interrupted in, with our registers.
    r.orig_rax = u64::MAX;
    r.rdi = args[0];
    r.rsi = args[1];
    r.rdx = args[2];
    r.r10 = args[3];
    r.r8 = args[4];
    r.r9 = args[5];
    r.rip = gadget;
    target.set_regs(tid, &r)?;
    let result = loop {
        target.resume(tid, Resume::Step, 0)?;
        match target.wait_for(tid)? {
            Stop::Signal { info, .. } => {
                let now = target.get_regs(tid)?;
                let step_trap = info.signo() == libc::SIGTRAP && info.code() > 0;
                if now.rip == gadget + 2 && step_trap {
                    break now.rax;
                }
                if info.is_fault() && now.rip == gadget {
                    target.set_regs(tid, &saved)?;
                    return Err(TargetError::Attach(format!(
                        "thread {tid} cannot run the system call at {gadget:#x} (signal {})",
                        info.signo()
                    )));
                }
                if !step_trap {
                    deferred.push(info);
                }
                if now.rip != gadget {
                    // The call ran but the step trap was merged with the
                    // signal's stop: take the result as it is.
                    if now.rip == gadget + 2 {
                        break now.rax;
                    }
                    target.set_regs(tid, &r)?;
                }
            }
            Stop::Exited { .. } | Stop::Killed { .. } => {
                return Err(TargetError::Attach(format!(
                    "thread {tid} died while the engine was mapping its pages"
                )))
            }
            _ => {}
        }
    };
    target.set_regs(tid, &saved)?;
    Ok(result)
}

/// Maps a new area at `at` (fixed, never replacing anything) in the
/// process of the stopped thread `tid`.
pub fn map_area<T: Target>(
    target: &mut T,
    tid: Tid,
    pid: Tid,
    gadget: u64,
    at: u64,
    deferred: &mut Vec<SigInfo>,
) -> Result<Area, String> {
    let ret = inject_syscall(
        target,
        tid,
        gadget,
        libc::SYS_mmap as u64,
        [
            at,
            AREA_LEN,
            (libc::PROT_READ | libc::PROT_EXEC) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
        deferred,
    )
    .map_err(|e| e.to_string())?;
    if ret != at {
        let errno = (ret as i64).unsigned_abs();
        return Err(format!(
            "mmap of an out-of-line area at {at:#x} in process {pid} failed (errno {errno})"
        ));
    }
    target
        .write_memory(pid, at, area_header())
        .map_err(|e| e.to_string())?;
    Ok(Area::new(at))
}

pub fn unmap_area<T: Target>(
    target: &mut T,
    tid: Tid,
    area: &Area,
    deferred: &mut Vec<SigInfo>,
) -> Result<(), TargetError> {
    inject_syscall(
        target,
        tid,
        area.gadget(),
        libc::SYS_munmap as u64,
        [area.start, AREA_LEN, 0, 0, 0, 0],
        deferred,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: u64, end: u64) -> MapEntry {
        MapEntry {
            start,
            end,
            read: true,
            write: false,
            exec: true,
            shared: false,
            offset: 0,
            dev_major: 0,
            dev_minor: 0,
            inode: 0,
            path: None,
            deleted: false,
        }
    }

    fn check(maps: &[MapEntry], near: u64, expect: Option<u64>) {
        assert_eq!(find_gap(maps, near, AREA_LEN), expect);
    }

    #[test]
    fn gaps() {
        // Right after the code mapping, past a guard page.
        check(
            &[m(0x400000, 0x401000), m(0x7fff_0000_0000, 0x7fff_0001_0000)],
            0x400500,
            Some(0x402000),
        );
        // Below, when the space above is taken up to beyond reach.
        check(
            &[m(0x100000000, 0x100001000), m(0x100002000, 0x300000000)],
            0x100000500,
            Some(0x100000000 - 4096 - AREA_LEN),
        );
        // Nothing within 2 GB.
        check(&[m(0x10000, 0x7fff_ffff_f000)], 0x400000, None);
    }
}
