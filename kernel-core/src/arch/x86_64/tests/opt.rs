//! Optimized probes: which ranges may carry a jump (tables of functions,
//! bytes with their disassembly), and trampolines run for real in this
//! process against the shared ring.

use super::*;

const BASE: u64 = 0x40_1000;

/// `u64 add(u64 a, u64 b)`: the probe replaces its first two instructions.
#[cfg(target_arch = "x86_64")]
const ADD: [u8; 7] = [
    0x48, 0x89, 0xf8, // mov rax, rdi
    0x48, 0x01, 0xf0, // add rax, rsi
    0xc3, // ret
];

/// `expect`: `Ok(replaced length)` or `Err(part of the reason)`.
fn check(func: &[u8], probe_off: u64, expect: Result<usize, &str>) {
    let got = arch_prepare_optimized_kprobe(func, BASE, BASE + probe_off);
    match (got, expect) {
        (Ok(r), Ok(len)) => assert_eq!(r.bytes.len(), len, "{r:?}"),
        (Err(why), Err(part)) => assert!(why.contains(part), "{why}"),
        (got, expect) => panic!("{got:?}, expected {expect:?}"),
    }
}

#[test]
fn a_jump_replaces_whole_movable_instructions_and_nothing_branches_inside() {
    // One instruction of five bytes or more.
    check(
        &[
            0xb8, 0x2a, 0x00, 0x00, 0x00, // mov eax, 0x2a
            0xc3, // ret
        ],
        0,
        Ok(5),
    );
    // Two instructions, no branch into the second.
    check(
        &[
            0x55, // push rbp
            0x48, 0x89, 0xe5, // mov rbp, rsp
            0x48, 0x89, 0xf8, // mov rax, rdi
            0x5d, // pop rbp
            0xc3, // ret
        ],
        0,
        Ok(7),
    );
    // endbr64 stays; the range starts after it.
    let f = [
        0xf3, 0x0f, 0x1e, 0xfa, // endbr64
        0x48, 0x8d, 0x05, 0x10, 0x00, 0x00, 0x00, // lea rax, [rip+0x10]
        0xc3, // ret
    ];
    let r = arch_prepare_optimized_kprobe(&f, BASE, BASE).unwrap();
    assert_eq!((r.probe_addr, r.addr, r.bytes.len()), (BASE, BASE + 4, 7));
    // A loop back into the second instruction of the range.
    check(
        &[
            0x31, 0xc0, // xor eax, eax
            0xff, 0xc0, // inc eax  <- loop head
            0x83, 0xf8, 0x0a, // cmp eax, 10
            0x75, 0xf9, // jne -7 (to inc eax)
            0xc3, // ret
        ],
        0,
        Err("a branch at 0x401007 targets 0x401002"),
    );
    // The same loop, probed at the loop head: the branch targets the first
    // byte, which is allowed.
    check(
        &[
            0x31, 0xc0, // xor eax, eax
            0xff, 0xc0, // inc eax
            0x83, 0xf8, 0x0a, // cmp eax, 10
            0x75, 0xf9, // jne -7
            0xc3, // ret
        ],
        2,
        Ok(5),
    );
    // An indirect jump in the function, and a range of two instructions.
    check(
        &[
            0x89, 0xf8, // mov eax, edi
            0x83, 0xe0, 0x03, // and eax, 3
            0xff, 0xe0, // jmp rax
        ],
        0,
        Err("indirect jump at 0x401005"),
    );
    // A call in the range depends on where it runs.
    check(
        &[
            0xe8, 0x00, 0x00, 0x00, 0x00, // call +0
            0xc3, // ret
        ],
        0,
        Err("depends on where it runs"),
    );
    // A syscall too.
    check(
        &[
            0x0f, 0x05, // syscall
            0x48, 0x89, 0xc7, // mov rdi, rax
            0xc3, // ret
        ],
        0,
        Err("depends on where it runs"),
    );
    // Too close to the end of the function.
    check(
        &[
            0x48, 0x89, 0xf8, // mov rax, rdi
            0xc3, // ret
        ],
        0,
        Err("depends on where it runs"),
    );
    check(
        &[
            0x48, 0x89, 0xf8, // mov rax, rdi
        ],
        0,
        Err("the function ends 3 bytes after the probe"),
    );
}

#[test]
fn the_patch_is_a_jump_then_traps() {
    let r = arch_prepare_optimized_kprobe(
        &[
            0x55, // push rbp
            0x48, 0x89, 0xe5, // mov rbp, rsp
            0x48, 0x89, 0xf8, // mov rax, rdi
            0xc3, // ret
        ],
        BASE,
        BASE,
    )
    .unwrap();
    assert_eq!(
        r.patch(BASE + 0x1000).unwrap(),
        [0xe9, 0xfb, 0x0f, 0x00, 0x00, 0xcc, 0xcc]
    );
    assert!(r.patch(BASE + (3u64 << 31)).is_err());
}

/// Executable memory in this process holding a function and trampolines.
#[cfg(target_arch = "x86_64")]
mod live {
    use super::*;
    use crate::ring::{RawEvent, Ring};

    pub struct Code {
        base: *mut u8,
        len: usize,
    }

    impl Code {
        pub fn new(len: usize) -> Code {
            // SAFETY: a private anonymous mapping; checked.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            Code {
                base: base.cast(),
                len,
            }
        }

        pub fn addr(&self, off: usize) -> u64 {
            self.base as u64 + off as u64
        }

        pub fn write(&self, off: usize, bytes: &[u8]) {
            assert!(off + bytes.len() <= self.len);
            // SAFETY: in bounds of our writable mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off), bytes.len())
            };
        }

        pub fn executable(&self) {
            // SAFETY: our mapping; from now on only executed.
            let r = unsafe {
                libc::mprotect(
                    self.base.cast(),
                    self.len,
                    libc::PROT_READ | libc::PROT_EXEC,
                )
            };
            assert_eq!(r, 0);
        }

        /// The function at `off` as `extern "C" fn(u64, u64) -> u64`.
        pub fn func(&self, off: usize) -> extern "C" fn(u64, u64) -> u64 {
            // SAFETY: the caller placed a function of this ABI at `off`.
            unsafe { std::mem::transmute::<u64, extern "C" fn(u64, u64) -> u64>(self.addr(off)) }
        }
    }

    // SAFETY: after `executable` the mapping is only read and executed;
    // sharing its address between threads is what the tests are about.
    unsafe impl Send for Code {}
    // SAFETY: as above.
    unsafe impl Sync for Code {}

    impl Drop for Code {
        fn drop(&mut self) {
            // SAFETY: our mapping.
            unsafe { libc::munmap(self.base.cast(), self.len) };
        }
    }

    /// `func` placed at offset 0 with an optimized probe at `probe_off`,
    /// its trampoline at 4096, writing into `ring` as probe index 7.
    pub fn probed(func: &[u8], probe_off: usize, ring: &Ring) -> Code {
        let code = Code::new(8192);
        code.write(0, func);
        let region =
            arch_prepare_optimized_kprobe(func, code.addr(0), code.addr(probe_off)).unwrap();
        let tramp = arch_prepare_trampoline(
            &region,
            code.addr(4096),
            RingPlace {
                addr: ring.address(),
                slots: ring.slots(),
                probe: 7,
                rdfsbase: false,
                return_pads: None,
                entry_event: true,
            },
        )
        .unwrap();
        code.write(4096, &tramp.code);
        let off = (region.addr - code.addr(0)) as usize;
        code.write(off, &region.patch(code.addr(4096)).unwrap());
        code.executable();
        code
    }

    /// What the engine does at a trampoline's trap for a full ring, done
    /// in this process: a SIGTRAP handler that counts and returns (the
    /// thread runs on into the relocated instructions).
    pub fn full_traps() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Once;
        static TRAPS: AtomicU64 = AtomicU64::new(0);
        static INSTALL: Once = Once::new();
        extern "C" fn on_trap(_: libc::c_int) {
            TRAPS.fetch_add(1, Ordering::SeqCst);
        }
        INSTALL.call_once(|| {
            // SAFETY: a handler that only touches an atomic.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_trap as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut());
            }
        });
        TRAPS.load(Ordering::SeqCst)
    }

    pub fn events(ring: &mut Ring) -> Vec<RawEvent> {
        let mut v = Vec::new();
        ring.poll(|e| v.push(e));
        v
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_trampoline_records_the_registers_and_the_function_runs_as_before() {
    use crate::ring::Ring;
    let (mut ring, _fd) = Ring::create(16).unwrap();
    let code = live::probed(&ADD, 0, &ring);
    let f = code.func(0);
    assert_eq!(f(2, 3), 5);
    assert_eq!(f(40, 2), 42);
    let ev = live::events(&mut ring);
    assert_eq!(ev.len(), 2);
    let regs = crate::proto::RegSet::X86_64(ev[0].regs)
        .to_x86_64()
        .unwrap();
    assert_eq!((regs.rdi, regs.rsi), (2, 3));
    assert_eq!(regs.rip, code.addr(0), "rip is the probe's address");
    assert_eq!(regs.orig_rax, u64::MAX);
    // The caller's stack pointer: at the entry, [rsp] is the return
    // address, which lies in this test's code.
    assert_eq!(regs.rsp % 16, 8, "rsp as at a function's entry");
    assert_eq!(ev[0].probe, 7);
    assert_eq!(
        (ev[1].regs[14], ev[1].regs[13]),
        (40, 2),
        "rdi, rsi of the second call"
    );
    assert_ne!(ev[0].thread_key, 0, "%fs:0, the thread's TCB");
    assert_eq!(regs.fs_base, ev[0].thread_key);
    assert!(ev[1].time > ev[0].time, "the TSC goes forward");
    assert_eq!(ring.counters(7), Some((2, 0)));
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_leaf_functions_red_zone_survives_the_trampoline() {
    use crate::ring::Ring;
    let (mut ring, _fd) = Ring::create(16).unwrap();
    // Keeps rdi below rsp, then the probed instruction, then reads it back.
    let code = live::probed(
        &[
            0x48, 0x89, 0x7c, 0x24, 0xf8, // mov [rsp-8], rdi
            0x48, 0x89, 0x74, 0x24, 0x80, // mov [rsp-0x80], rsi
            0x48, 0xc7, 0xc1, 0x67, 0x45, 0x23, 0x01, // mov rcx, 0x1234567   <- probe
            0x48, 0x8b, 0x44, 0x24, 0xf8, // mov rax, [rsp-8]
            0x48, 0x03, 0x44, 0x24, 0x80, // add rax, [rsp-0x80]
            0x48, 0x01, 0xc8, // add rax, rcx
            0xc3, // ret
        ],
        10,
        &ring,
    );
    let f = code.func(0);
    assert_eq!(f(1000, 5), 1000 + 5 + 0x1234567);
    assert_eq!(live::events(&mut ring).len(), 1);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_rip_relative_instruction_is_re_pointed_in_the_trampoline() {
    use crate::ring::Ring;
    let (mut ring, _fd) = Ring::create(16).unwrap();
    // lea rax, [rip+0x20]: the function's own address + 7 + 0x20.
    let code = live::probed(
        &[
            0x48, 0x8d, 0x05, 0x20, 0x00, 0x00, 0x00, // lea rax, [rip+0x20]
            0xc3, // ret
        ],
        0,
        &ring,
    );
    assert_eq!(code.func(0)(0, 0), code.addr(7 + 0x20));
    assert_eq!(live::events(&mut ring).len(), 1);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_full_ring_traps_counted_and_the_function_still_runs() {
    use crate::ring::Ring;
    let (mut ring, _fd) = Ring::create(2).unwrap();
    let code = live::probed(&ADD, 0, &ring);
    let f = code.func(0);
    let before = live::full_traps();
    let sums: Vec<u64> = (0..5).map(|i| f(i, 1)).collect();
    assert_eq!(sums, [1, 2, 3, 4, 5]);
    assert_eq!(live::events(&mut ring).len(), 2);
    assert_eq!(ring.counters(7), Some((5, 3)), "hits = delivered + full");
    // This test's threads are the only ones trapping on a full ring now
    // (the other test that fills a ring counts its own).
    assert!(live::full_traps() - before >= 3, "each full hit trapped");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn threads_hitting_one_trampoline_lose_nothing_but_what_is_counted() {
    use crate::ring::Ring;
    use std::sync::Arc;
    let (mut ring, _fd) = Ring::create(256).unwrap();
    let code = Arc::new(live::probed(&ADD, 0, &ring));
    live::full_traps();
    const EACH: u64 = 20_000;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (code, done) = (code.clone(), done.clone());
            std::thread::spawn(move || {
                let f = code.func(0);
                for i in 0..EACH {
                    assert_eq!(f(t, i), t + i);
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .collect();
    let mut delivered = 0u64;
    let mut last: std::collections::HashMap<u64, u64> = Default::default();
    loop {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst) == 4;
        let stats = ring.poll(|e| {
            delivered += 1;
            // Per thread (rdi), the second argument only grows.
            let prev = last.insert(e.regs[14], e.regs[13]);
            assert!(prev.is_none_or(|p| p < e.regs[13]));
        });
        if finished && stats.delivered == 0 && stats.pending == 0 {
            break;
        }
        if stats.delivered == 0 {
            ring.wait(std::time::Duration::from_millis(5));
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    let (hits, lost) = ring.counters(7).unwrap();
    assert_eq!(hits, 4 * EACH);
    assert_eq!(hits, delivered + lost);
}

/// `add` with a return probe: the entry moves the return address into an
/// instance and the return comes back through its pad, writing the event;
/// the caller gets its result and goes on where it called from.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_return_through_a_pad_records_the_result_and_returns_home() {
    use crate::ring::{Ring, KIND_ENTRY_HIJACKED, KIND_RETURN};
    let (mut ring, _fd) = Ring::create(16).unwrap();
    let code = live::Code::new(64 * 1024);
    code.write(0, &ADD);
    let (ring_addr, ring_slots) = (ring.address(), ring.slots());
    let place = |entry_event| RingPlace {
        addr: ring_addr,
        slots: ring_slots,
        probe: 7,
        rdfsbase: false,
        return_pads: Some(code.addr(16384)),
        entry_event,
    };
    let region = arch_prepare_optimized_kprobe(&ADD, code.addr(0), code.addr(0)).unwrap();
    let tramp = arch_prepare_trampoline(&region, code.addr(4096), place(true)).unwrap();
    assert!(tramp.code.len() <= 1024, "{} bytes", tramp.code.len());
    let ret = arch_prepare_return_code(code.addr(16384), place(true)).unwrap();
    code.write(4096, &tramp.code);
    code.write(16384, &ret.code);
    code.write(0, &region.patch(code.addr(4096)).unwrap());
    code.executable();
    let f = code.func(0);
    let home = a_return_through_a_pad_records_the_result_and_returns_home as *const () as u64;
    assert_eq!(f(2, 3), 5);
    assert_eq!(f(40, 2), 42);
    let ev = live::events(&mut ring);
    let kinds: Vec<u32> = ev.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            KIND_ENTRY_HIJACKED,
            KIND_RETURN,
            KIND_ENTRY_HIJACKED,
            KIND_RETURN
        ]
    );
    let (regs, entry_time, args) = return_record(&ev[1].regs);
    assert_eq!(regs.rax, 5, "the result");
    assert_eq!(args[..2], [2, 3], "the arguments at entry");
    assert!(
        entry_time <= ev[0].time,
        "the entry's time, taken just before its event"
    );
    assert!(ev[1].time >= entry_time);
    assert_eq!(ev[1].probe, 7);
    let at_entry = crate::proto::RegSet::X86_64(ev[0].regs)
        .to_x86_64()
        .unwrap();
    assert_eq!(regs.rsp, at_entry.rsp + 8, "rsp as after the ret");
    assert!(
        regs.rip > home.saturating_sub(1 << 20) && regs.rip < home + (1 << 20),
        "rip {:#x} is the original return address, in this test's code (near {home:#x})",
        regs.rip
    );
    assert_eq!((regs.cs, regs.ss), (0x33, 0x2b));
    for i in 0..crate::ring::INSTANCES {
        assert!(ring.instance(i).is_none(), "instance {i} freed");
    }
    // Each return went through the pad of the instance it claimed.
    assert_eq!(ret.instance_of_pushed(ret.pad(3) + 5), Some(3));
    assert_eq!(ret.instance_of_pushed(ret.pad(3) + 4), None);
    // Many calls: every instance is given back, none is missed.
    for i in 0..5000u64 {
        assert_eq!(f(i, 1), i + 1);
        assert_eq!(live::events(&mut ring).len(), 2);
    }
    live::events(&mut ring);
    assert_eq!(ring.missed(7), 0);
    for i in 0..crate::ring::INSTANCES {
        assert!(ring.instance(i).is_none(), "instance {i} freed");
    }
    // Return probes alone write no entry event.
    let only = arch_prepare_trampoline(&region, code.addr(4096), place(false)).unwrap();
    assert!(only.code.len() < tramp.code.len());
}
