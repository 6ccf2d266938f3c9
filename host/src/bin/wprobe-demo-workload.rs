//! `wprobe-demo-workload`: a small, busy program to put probes on.
//!
//! About 200 times a second (or as `--rate` says), forever or for
//! `--iterations N`, it allocates blocks of varying sizes with libc's
//! `malloc` (sizes spread over 8 bytes to 64 KiB, so that a
//! `uprobe:libc:malloc size=%rdi:u64` probe sees a histogram rather than
//! one value), reads a file it wrote at start, and calls three functions of
//! its own whose running time varies from call to call:
//!
//! - `demo_work(n)`: `n` rounds of integer mixing (n from 64 to 64 Ki);
//! - `demo_parse(text)`: sums the numbers in a NUL-terminated string (the
//!   line just read, so a string capture of `%rdi` shows it);
//! - `demo_checksum(data, len)`: a checksum of `len` bytes (the file's
//!   contents, repeated a varying number of times).
//!
//! Entry and return probes on them give a latency histogram. They are
//! `#[no_mangle]` and `#[inline(never)]`, so their symbols stay in the
//! binary, debug and release alike, and every call is a real call.
//!
//! It prints one line at start with its pid and the function names, and
//! needs nothing but cargo to build.

use std::ffi::{c_char, CStr};
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

/// `n` rounds of integer mixing: its running time grows with `n`.
#[no_mangle]
#[inline(never)]
pub extern "C" fn demo_work(n: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15_u64 ^ n);
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = black_box(x.wrapping_add(i));
    }
    x
}

/// The sum of the decimal numbers in the NUL-terminated string `text`.
///
/// # Safety
///
/// `text` points to a NUL-terminated string that stays valid for the call.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn demo_parse(text: *const c_char) -> u64 {
    // SAFETY: the caller passes a valid NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(text) }.to_bytes();
    let mut sum = 0u64;
    let mut number: Option<u64> = None;
    for &b in black_box(bytes) {
        if b.is_ascii_digit() {
            let d = u64::from(b - b'0');
            number = Some(number.unwrap_or(0).wrapping_mul(10).wrapping_add(d));
        } else if let Some(n) = number.take() {
            sum = sum.wrapping_add(n);
        }
    }
    sum.wrapping_add(number.unwrap_or(0))
}

/// A checksum (Fletcher-64 style) of the `len` bytes at `data`.
///
/// # Safety
///
/// `data` points to `len` readable bytes that stay valid for the call.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn demo_checksum(data: *const u8, len: usize) -> u64 {
    // SAFETY: the caller passes `len` readable bytes at `data`.
    let bytes = unsafe { std::slice::from_raw_parts(data, len) };
    let (mut a, mut b) = (1u64, 0u64);
    for &byte in black_box(bytes) {
        a = (a + u64::from(byte)) % 0xffff_fffb;
        b = (b + a) % 0xffff_fffb;
    }
    (b << 32) | a
}

/// The function names probes can be put on, as printed at start.
const FUNCTIONS: [&str; 3] = ["demo_work", "demo_parse", "demo_checksum"];

const USAGE: &str = "usage: wprobe-demo-workload [--iterations N] [--rate PER_SECOND]";

struct Options {
    /// None: forever.
    iterations: Option<u64>,
    /// Iterations per second.
    rate: u32,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        iterations: None,
        rate: 200,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs {what}\n{USAGE}"))
        };
        match name {
            "--iterations" | "-n" => {
                let v = value("a count")?;
                let n = v
                    .parse()
                    .map_err(|_| format!("--iterations `{v}`: give a whole number\n{USAGE}"))?;
                options.iterations = Some(n);
            }
            "--rate" => {
                let v = value("a number of iterations per second")?;
                options.rate =
                    v.parse().ok().filter(|&r| r > 0).ok_or_else(|| {
                        format!("--rate `{v}`: give a whole number above 0\n{USAGE}")
                    })?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => return Err(format!("unknown argument `{arg}`\n{USAGE}")),
        }
    }
    Ok(options)
}

/// xorshift64*: a small deterministic generator for sizes and counts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number from 2^lo to 2^hi, spread evenly over the powers of two
    /// (what a log2 histogram shows as a flat spread).
    fn log_uniform(&mut self, lo: u32, hi: u32) -> u64 {
        let shift = lo + (self.next() % u64::from(hi - lo)) as u32;
        let base = 1u64 << shift;
        base + self.next() % base
    }
}

/// Writes the file the loop reads: a few lines of numbers.
fn write_input() -> Result<std::path::PathBuf, String> {
    let path = std::env::temp_dir().join(format!("wprobe-demo-{}.txt", std::process::id()));
    let mut text = String::new();
    for i in 0..16u64 {
        text += &format!("line {i}: {} {} {}\n", i * 7, i * i, 1000 + i);
    }
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

fn run(options: Options) -> Result<(), String> {
    let input = write_input()?;
    // The file is removed at once: the loop reads it through its open
    // descriptor's path in /proc, so nothing is left behind however the
    // program ends.
    let file = std::fs::File::open(&input).map_err(|e| format!("{}: {e}", input.display()))?;
    let _ = std::fs::remove_file(&input);
    let file_path = {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", file.as_raw_fd())
    };

    println!(
        "wprobe-demo-workload pid {}: functions {}; {} iterations/s{}",
        std::process::id(),
        FUNCTIONS.join(" "),
        options.rate,
        match options.iterations {
            Some(n) => format!(", {n} iterations"),
            None => String::new(),
        }
    );
    let _ = std::io::stdout().flush();

    let period = Duration::from_secs(1) / options.rate;
    let mut rng = Rng(0x853c_49e6_748f_ea9b ^ u64::from(std::process::id()));
    let mut total = 0u64;
    let start = Instant::now();
    let mut i = 0u64;
    while options.iterations.is_none_or(|n| i < n) {
        // Allocations of varying sizes, some kept over a few at once.
        let mut blocks = [std::ptr::null_mut::<libc::c_void>(); 4];
        let count = 1 + (rng.next() % blocks.len() as u64) as usize;
        for block in blocks.iter_mut().take(count) {
            let size = rng.log_uniform(3, 16) as usize;
            // SAFETY: malloc may be called with any size; the result is
            // checked for null before it is written to.
            let p = unsafe { libc::malloc(size) };
            if !p.is_null() {
                // SAFETY: p points to at least size >= 8 writable bytes.
                unsafe { p.cast::<u8>().write_bytes(0xa5, size.min(64)) };
            }
            *block = black_box(p);
        }

        // The file, read whole, then one of its lines parsed.
        let text = std::fs::read(&file_path).map_err(|e| format!("reading the input: {e}"))?;
        let line = text
            .split(|&b| b == b'\n')
            .nth((i % 16) as usize)
            .unwrap_or_default();
        let line = std::ffi::CString::new(line).map_err(|e| format!("the input: {e}"))?;
        // SAFETY: `line` is a NUL-terminated string alive for the call.
        total = total.wrapping_add(unsafe { demo_parse(line.as_ptr()) });

        // A checksum of the contents repeated 1 to 32 times.
        let repeat = 1 + (rng.next() % 32) as usize;
        let data = text.repeat(repeat);
        // SAFETY: `data` has `data.len()` bytes alive for the call.
        total = total.wrapping_add(unsafe { demo_checksum(data.as_ptr(), data.len()) });

        total = total.wrapping_add(demo_work(rng.log_uniform(6, 16)));

        for p in blocks.into_iter().take(count) {
            // SAFETY: p came from malloc above (or is null) and is freed
            // once.
            unsafe { libc::free(p) };
        }

        i += 1;
        // Keep the pace against the clock, not by sleeping a fixed time,
        // so that slow iterations (a probed program is slower) do not
        // lower the rate more than they must.
        let due = start + period * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    black_box(total);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(run);
    if let Err(e) = result {
        eprintln!("wprobe-demo-workload: {e}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expect: Result<(Option<u64>, u32), &str>) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let got = parse_args(&args).map(|o| (o.iterations, o.rate));
        match (got, expect) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{args:?}"),
            (Err(g), Err(e)) => assert!(g.contains(e), "{args:?}: {g}"),
            (g, e) => panic!("{args:?}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn arguments() {
        check(&[], Ok((None, 200)));
        check(&["--iterations", "5"], Ok((Some(5), 200)));
        check(&["--iterations=5", "--rate", "50"], Ok((Some(5), 50)));
        check(&["--iterations"], Err("--iterations needs a count"));
        check(&["--rate", "0"], Err("--rate `0`"));
        check(&["--bogus"], Err("unknown argument `--bogus`"));
    }

    #[test]
    fn functions() {
        assert_eq!(demo_work(0), 0x9e37_79b9_7f4a_7c15);
        let line = c"line 3: 21 9 1003";
        // SAFETY: a literal C string.
        assert_eq!(unsafe { demo_parse(line.as_ptr()) }, 3 + 21 + 9 + 1003);
        let data = b"abc";
        // SAFETY: three bytes.
        let sum = unsafe { demo_checksum(data.as_ptr(), data.len()) };
        // a: 1+97+98+99 = 295; b: 98 + 196 + 295 = 589.
        assert_eq!(sum, (589 << 32) | 295);
    }

    #[test]
    fn sizes_spread() {
        let mut rng = Rng(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let s = rng.log_uniform(3, 16);
            assert!((8..1 << 16).contains(&s), "{s}");
            seen.insert(63 - s.leading_zeros());
        }
        assert_eq!(
            seen.len(),
            13,
            "every power of two from 2^3 to 2^15: {seen:?}"
        );
    }
}
