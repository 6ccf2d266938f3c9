//! What an optimized probe's trampoline costs per hit, beside a kernel
//! uprobe on the same instruction in the same run.
//!
//! `cargo bench -p wprobe-tests --bench trampoline` maps a small function
//! from a file (so that the kernel can probe it), calls it in a loop, and
//! times: the function alone; with a kernel uprobe (tracefs) at its first
//! instruction; with an optimized wprobe probe there (the `jmp` to a
//! trampoline that writes the shared ring, read by a thread as the core
//! will). The engine does not place optimized probes yet: this measures
//! the trampoline and ring that it will place, in this process. Results go
//! to docs/benchmarks.md.

use std::hint::black_box;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use wprobe_core::arch::native::{
    arch_prepare_optimized_kprobe, arch_prepare_trampoline, RingPlace,
};
use wprobe_core::ring::Ring;
use wprobe_tests::{scratch_dir, write_doc_section};

const TRACING: &str = "/sys/kernel/tracing";
/// `mov rax, rdi; add rax, rsi; ret`: the probe replaces the first two.
const FUNC: [u8; 7] = [0x48, 0x89, 0xf8, 0x48, 0x01, 0xf0, 0xc3];
const CALLS: u64 = 2_000_000;
const KERNEL_CALLS: u64 = 200_000;
const RUNS: usize = 5;

type Func = extern "C" fn(u64, u64) -> u64;

/// The function mapped from its file, with 1 MiB of anonymous memory after
/// it for the trampoline (within ±2 GiB, as the engine places it).
struct Mapped {
    base: *mut u8,
    len: usize,
}

impl Mapped {
    fn new(file: &Path) -> Mapped {
        let len = 1 << 20;
        // SAFETY: reserving anonymous memory; checked.
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
        let f = std::fs::File::open(file).unwrap();
        // SAFETY: the file's first page over the start of our own reserve.
        let m = unsafe {
            libc::mmap(
                base,
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_eq!(m, base);
        Mapped {
            base: base.cast(),
            len,
        }
    }

    fn addr(&self, off: usize) -> u64 {
        self.base as u64 + off as u64
    }

    fn func(&self) -> Func {
        // SAFETY: FUNC, a function of this ABI, is at offset 0.
        unsafe { std::mem::transmute::<*mut u8, Func>(self.base) }
    }

    /// Writes `bytes` at `off`, making the page writable meanwhile.
    fn write(&self, off: usize, bytes: &[u8]) {
        let page = off & !4095;
        // SAFETY: pages of our own mapping; no thread runs them meanwhile.
        unsafe {
            let p = self.base.add(page).cast();
            assert_eq!(
                libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_WRITE),
                0
            );
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off), bytes.len());
            assert_eq!(
                libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC),
                0
            );
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Nanoseconds per call of `f`, the best of [`RUNS`].
fn time(f: Func, calls: u64) -> f64 {
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let mut acc = 0u64;
            for i in 0..calls {
                acc = acc.wrapping_add(f(black_box(i), black_box(1)));
            }
            black_box(acc);
            start.elapsed().as_nanos() as f64 / calls as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn tracefs(file: &str, text: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(Path::new(TRACING).join(file))?
        .write_all(text.as_bytes())
}

fn main() {
    let dir = scratch_dir().join("trampoline-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("func.bin");
    let mut page = FUNC.to_vec();
    page.resize(4096, 0xcc);
    std::fs::write(&file, &page).unwrap();

    let plain = Mapped::new(&file);
    let bare = time(plain.func(), CALLS);
    drop(plain);

    // A kernel uprobe on the same instruction of the same file.
    let kernel = if Path::new(TRACING).join("uprobe_events").exists() {
        let def = format!("p:wprobe_tramp/f {}:0x0\n", file.display());
        tracefs("uprobe_events", &def).expect("define the uprobe");
        tracefs("events/wprobe_tramp/f/enable", "1").expect("enable the uprobe");
        let m = Mapped::new(&file);
        let ns = time(m.func(), KERNEL_CALLS);
        drop(m);
        let _ = tracefs("events/wprobe_tramp/f/enable", "0");
        let _ = tracefs("uprobe_events", "-:wprobe_tramp/f\n");
        Some(ns)
    } else {
        eprintln!("tracefs is not available: no kernel uprobe row");
        None
    };

    // The optimized probe: jmp to a trampoline, events into the ring, a
    // reader thread draining it as the core will.
    let (ring, _fd) = Ring::create(1 << 16).unwrap();
    let m = Mapped::new(&file);
    let region = arch_prepare_optimized_kprobe(&FUNC, m.addr(0), m.addr(0)).unwrap();
    let tramp = arch_prepare_trampoline(
        &region,
        m.addr(8192),
        RingPlace {
            addr: ring.address(),
            slots: ring.slots(),
            probe: 0,
            rdfsbase: false,
            return_pads: None,
            entry_event: true,
        },
    )
    .unwrap();
    m.write(8192, &tramp.code);
    // A full ring makes a hit trap (the engine reports it from the
    // registers); here a handler that returns stands for the engine.
    extern "C" fn on_trap(_: libc::c_int) {}
    // SAFETY: a handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_trap as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut());
    }
    m.write(0, &region.patch(m.addr(8192)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let mut ring = ring;
        std::thread::spawn(move || {
            let mut delivered = 0u64;
            loop {
                let done = stop.load(Ordering::SeqCst);
                let s = ring.poll(|_| delivered += 1);
                if done && s.delivered == 0 {
                    let (hits, lost) = ring.counters(0).unwrap();
                    return (hits, lost, delivered);
                }
                if s.delivered == 0 {
                    ring.wait(std::time::Duration::from_millis(1));
                }
            }
        })
    };
    let optimized = time(m.func(), CALLS);
    stop.store(true, Ordering::SeqCst);
    let (hits, lost, delivered) = reader.join().unwrap();
    assert_eq!(hits, delivered + lost, "hits = delivered + lost");

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let date = String::from_utf8(
        std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut body = format!(
        "Machine: {cpu}, {} CPUs; {} UTC. Best of {RUNS} runs of {CALLS} calls \
         ({KERNEL_CALLS} with the kernel uprobe).\n\n\
         | the function `mov rax, rdi; add rax, rsi; ret` | ns per call | added per hit |\n\
         | --- | ---: | ---: |\n\
         | unprobed | {bare:.1} | — |\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        date.trim(),
    );
    if let Some(k) = kernel {
        body += &format!(
            "| kernel uprobe (int3, in-kernel handler) | {k:.1} | {:.1} |\n",
            k - bare
        );
    }
    body += &format!(
        "| wprobe optimized (jmp, trampoline, ring) | {optimized:.1} | {:.1} |\n\n",
        optimized - bare
    );
    if let Some(k) = kernel {
        body += &format!(
            "A hit costs {:.0}× less than a kernel uprobe's. ",
            (k - bare) / (optimized - bare).max(0.1)
        );
    }
    body += &format!(
        "The reader thread received {delivered} of {hits} events ({lost} lost to a full ring: \
         a single reader of a 65 536-slot ring against a caller in a tight loop).\n\n"
    );
    print!("{body}");
    write_doc_section(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md"),
        "trampoline",
        "## Optimized probe trampoline\n\nThe trampoline and ring an optimized probe will use \
         (docs/optprobes.md), timed in-process beside a kernel uprobe on the same \
         instruction. The engine does not place them yet; this is their cost per hit.\n\n",
        &body,
    );
}
