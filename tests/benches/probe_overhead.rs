//! Probe overhead: what one probed call costs under wprobe, beside the
//! kernel's uprobes on the same function in the same run (issue 2 and the
//! return-probe goal), in the shape of the seed's "Probe Overhead" table:
//! k = entry probe, j = entry probe that sees the arguments, r = return
//! probe, kr = entry + return probe on the same function, jr = the
//! argument-reading entry probe + return probe.
//!
//! Run it with
//!
//! ```text
//! cargo bench -p wprobe-tests --bench probe_overhead
//! ```
//!
//! It first runs `cargo build --release -p wprobe`, so that the `wprobe`
//! it measures is the release binary of the tree it was built from
//! (`WPROBE_BENCH_NO_BUILD=1` skips that and uses whatever
//! `target/release/wprobe` is there). Then it compiles
//! `fixtures/bench_loop.c`, which calls a `noinline` function N times in a
//! tight loop and prints how long the loop took by its own clock, so that
//! process start-up, attaching and symbol resolution are not counted. Each
//! case runs several times, round-robin so that a noisy neighbour hurts
//! every case alike, and the median is kept. The cost is given per call:
//! `(probed loop − unprobed loop) / calls`. One call is one hit of each
//! probe of the case, so for kr and jr it is an entry hit and a return hit.
//!
//! The results are printed and written into `docs/benchmarks.md`, between
//! the markers of its generated section (`WPROBE_BENCH_NO_DOC=1` leaves the
//! file alone). `WPROBE_BENCH_CALLS` (default 20000) and
//! `WPROBE_BENCH_REPS` (default 7) change the size of the run.
//!
//! Kernel uprobes are a baseline for time and hit counts only: docs/design.md
//! records a kernel on which a uprobe on an AVX store corrupts the
//! program, so the probed program's own result is compared with an
//! unprobed run, never taken from a kernel-probed one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use wprobe_tests::{
    build, example_plugin, file_offset, parse_jsonl, scratch_dir, write_doc_section,
};

/// The probed function of the fixture.
const FUNC: &str = "bench_target";
/// The string its first argument points to.
const WORD: &str = "overhead";
const TRACING: &str = "/sys/kernel/tracing";

fn main() {
    let calls = env_u64("WPROBE_BENCH_CALLS", 20_000);
    let reps = env_u64("WPROBE_BENCH_REPS", 7).max(1) as usize;
    let threads = 4u64;
    // Four threads share the same total number of hits as one.
    let calls_mt = (calls / threads).max(1);

    let wprobe = release_wprobe();
    let bin = build("bench_loop", "bench", &["-O2"]);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = KernelProbes::new(&bin);
    if kernel.is_none() {
        eprintln!(
            "tracefs is not available ({TRACING}/uprobe_events): \
             the kernel-uprobe baseline is left out"
        );
    }

    let entry = format!("uprobe:{}:{FUNC}", bin.display());
    // Plugins: one that does nothing (text; the runtime takes it), and the
    // example that counts per probe and per thread.
    let noop = scratch_dir().join("noop.wasm");
    std::fs::write(&noop, NOOP_PLUGIN).expect("write the no-op plugin");
    let count_c = example_plugin("count.c.wasm");
    let with_plugin = |plugin: &Path, sync: bool| {
        let mut a = vec![
            "-e".to_string(),
            entry.clone(),
            "--no-regs".into(),
            "--events".into(),
            "--plugin".into(),
            plugin.to_string_lossy().into_owned(),
        ];
        if sync {
            a.push("--sync".into());
        }
        How::Wprobe(a)
    };
    let ret = format!("uretprobe:{}:{FUNC}", bin.display());
    let capture = format!("{entry} s=+0(%rdi):string");
    let post = format!("{entry} post");
    let wp = |specs: &[&str], regs: bool| {
        let mut a = Vec::new();
        for spec in specs {
            a.push("-e".to_string());
            a.push(spec.to_string());
        }
        if !regs {
            a.push("--no-regs".into());
        }
        How::Wprobe(a)
    };
    // The same with every probe on int3.
    let wpi = |specs: &[&str], regs: bool| match wp(specs, regs) {
        How::Wprobe(mut a) => {
            a.push("--no-optimize".into());
            How::Wprobe(a)
        }
        other => other,
    };
    let mut cases = vec![
        Case::new("unprobed", Row::Base, 1, How::Plain),
        Case::new("kernel uprobe", Row::Kernel, 1, How::Kernel(&["p"])).seed("k", Side::Kernel),
        Case::new(
            "kernel uprobe + six argument fetchargs",
            Row::Other,
            1,
            How::Kernel(&["args"]),
        )
        .seed("j", Side::Kernel),
        Case::new(
            "kernel uprobe + string fetcharg",
            Row::Other,
            1,
            How::Kernel(&["cap"]),
        ),
        Case::new("kernel uretprobe", Row::Other, 1, How::Kernel(&["ret"])).seed("r", Side::Kernel),
        Case::new(
            "kernel uprobe + uretprobe",
            Row::Other,
            1,
            How::Kernel(&["p", "ret"]),
        )
        .seed("kr", Side::Kernel),
        Case::new(
            "kernel uprobe + six argument fetchargs + uretprobe",
            Row::Other,
            1,
            How::Kernel(&["args", "ret"]),
        )
        .seed("jr", Side::Kernel),
        Case::new(
            "bare ptrace stop: wait4 + CONT (floor)",
            Row::Floor,
            1,
            How::Floor { regs: false },
        ),
        Case::new(
            "bare ptrace stop + GETREGS",
            Row::Floor,
            1,
            How::Floor { regs: true },
        ),
        Case::new(
            "wprobe entry (optimized), --no-regs",
            Row::Entry,
            1,
            wp(&[&entry], false),
        )
        .seed("k", Side::Wprobe),
        Case::new(
            "wprobe entry + args + registers (default event)",
            Row::Other,
            1,
            wp(&[&entry], true),
        )
        .seed("j", Side::Wprobe),
        Case::new(
            "wprobe entry + string capture, --no-regs",
            Row::Other,
            1,
            wp(&[&capture], false),
        ),
        Case::new(
            "wprobe entry + post-handler, --no-regs",
            Row::Other,
            1,
            wp(&[&post], false),
        ),
        Case::new(
            "wprobe return, --no-regs",
            Row::Other,
            1,
            wp(&[&ret], false),
        )
        .seed("r", Side::Wprobe),
        // The same with `maxactive` given: the default is worked out
        // again at every entry (see docs/benchmarks.md), and this row
        // shows what that costs.
        Case::new(
            "wprobe return, --no-regs, maxactive=10",
            Row::Other,
            1,
            wp(&[&format!("{ret} maxactive=10")], false),
        ),
        Case::new(
            "wprobe entry + return, --no-regs",
            Row::Other,
            1,
            wp(&[&entry, &ret], false),
        )
        .seed("kr", Side::Wprobe),
        Case::new(
            "wprobe entry + return, default event (args + registers)",
            Row::Other,
            1,
            wp(&[&entry, &ret], true),
        )
        .seed("jr", Side::Wprobe),
        Case::new(
            "wprobe entry, int3 (--no-optimize), --no-regs",
            Row::Other,
            1,
            wpi(&[&entry], false),
        )
        .seed("k", Side::Int3),
        Case::new(
            "wprobe entry + args + registers, int3",
            Row::Other,
            1,
            wpi(&[&entry], true),
        )
        .seed("j", Side::Int3),
        Case::new(
            "wprobe return, int3, --no-regs",
            Row::Other,
            1,
            wpi(&[&ret], false),
        )
        .seed("r", Side::Int3),
        Case::new(
            "wprobe entry + return, int3, --no-regs",
            Row::Other,
            1,
            wpi(&[&entry, &ret], false),
        )
        .seed("kr", Side::Int3),
        Case::new(
            "wprobe entry + return, int3, default event",
            Row::Other,
            1,
            wpi(&[&entry, &ret], true),
        )
        .seed("jr", Side::Int3),
        // The daemon's own cost: the same probe with the engine in the
        // measuring process (as before wprobe-core existed), and through
        // a wprobe-core whose client only counts the events.
        Case::new(
            "in-process engine entry, event built (no daemon)",
            Row::Other,
            1,
            How::Helper("inproc", entry.clone()),
        ),
        Case::new(
            "wprobe-core entry, events counted by its client",
            Row::Other,
            1,
            How::Helper("core", entry.clone()),
        ),
        // Plugins on the same probe, events still printed: what a plugin
        // adds per hit, async (the thread has gone on when it runs) and
        // sync (the thread waits for it, through the core's verdict).
        Case::new(
            "wprobe entry + no-op async plugin, --no-regs",
            Row::Other,
            1,
            with_plugin(&noop, false),
        ),
        Case::new(
            "wprobe entry + count plugin (C), --no-regs",
            Row::Other,
            1,
            with_plugin(&count_c, false),
        ),
        Case::new(
            "wprobe entry + no-op sync plugin, --no-regs",
            Row::Other,
            1,
            with_plugin(&noop, true),
        ),
        Case::new("unprobed, 4 threads", Row::Base, threads, How::Plain),
        Case::new(
            "kernel uprobe, 4 threads",
            Row::Kernel,
            threads,
            How::Kernel(&["p"]),
        ),
        Case::new(
            "wprobe entry, --no-regs, 4 threads",
            Row::Entry,
            threads,
            wp(&[&entry], false),
        ),
        Case::new(
            "wprobe entry, int3, --no-regs, 4 threads",
            Row::Other,
            threads,
            wpi(&[&entry], false),
        ),
        Case::new(
            "wprobe-core entry, events counted by its client, 4 threads",
            Row::Other,
            threads,
            How::Helper("core", entry.clone()),
        ),
    ];
    if kernel.is_none() {
        cases.retain(|c| !matches!(c.how, How::Kernel(_)));
    }

    // A small run of every wprobe case first, with its events kept, checks
    // that each really hits as often as called and reads what it should;
    // a benchmark of a probe that silently misses would measure nothing.
    for case in &cases {
        if let How::Wprobe(args) = &case.how {
            verify(&wprobe, &bin, args, case.threads, &case.name);
        }
    }

    let expected_sum = |t: u64, n: u64| run_plain(&bin, n, t).sum;
    let sums = [expected_sum(1, calls), expected_sum(threads, calls_mt)];
    let started = Instant::now();
    for _ in 0..reps {
        for case in cases.iter_mut() {
            let n = if case.threads == 1 { calls } else { calls_mt };
            let run = match &case.how {
                How::Plain => run_plain(&bin, n, case.threads),
                How::Kernel(events) => kernel
                    .as_ref()
                    .expect("kernel cases were dropped without tracefs")
                    .run(events, &bin, n, case.threads),
                How::Wprobe(args) => run_wprobe(&wprobe, &bin, args, n, case.threads),
                How::Floor { regs } => run_floor(&bin, n, *regs),
                How::Helper(mode, spec) => run_helper(&wprobe, mode, spec, &bin, n, case.threads),
            };
            let want = if case.threads == 1 { sums[0] } else { sums[1] };
            assert_eq!(
                run.sum, want,
                "{}: the probed program computed a different result than unprobed",
                case.name
            );
            case.hits = n * case.threads;
            case.loop_ns.push(run.loop_ns);
            case.wall_ns.push(run.wall_ns);
        }
    }
    let elapsed = started.elapsed();
    drop(kernel);

    let throughput = plugin_throughput(&wprobe, &count_c, &example_plugin("count.rust.wasm"));
    let report = Report::new(&cases, calls, calls_mt, threads, reps, &load_before);
    print!("{}", report.table_text());
    print!("{throughput}");
    println!();
    print!("{}", report.seed_table(false));
    eprintln!("measured in {:.1} s", elapsed.as_secs_f64());
    if std::env::var("WPROBE_BENCH_NO_DOC").as_deref() != Ok("1") {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace above tests/")
            .join("docs/benchmarks.md");
        write_doc(&doc, &format!("{}\n{throughput}", report.markdown()));
        eprintln!("wrote {}", doc.display());
    }
}

/// How a case runs the fixture.
enum How {
    /// On its own.
    Plain,
    /// With these events of `KernelProbes` enabled together.
    Kernel(&'static [&'static str]),
    /// Under `wprobe trace` with these arguments.
    Wprobe(Vec<String>),
    /// Under `engine-bench MODE SPEC` (tests/bin/engine_bench.rs).
    Helper(&'static str, String),
    /// With an `int3` before each call, under a minimal tracer that only
    /// waits and resumes (and reads the registers, if `regs`): the cost of
    /// a ptrace stop itself.
    Floor { regs: bool },
}

/// The part a case plays in the ratios.
#[derive(PartialEq)]
enum Row {
    /// The unprobed run of its thread count.
    Base,
    /// The kernel uprobe of its thread count: the denominator of ratios.
    Kernel,
    /// The wprobe case the 2.5× goal is about.
    Entry,
    /// The bare ptrace stop: a floor, not a probe.
    Floor,
    Other,
}

/// Which side of a column of the seed's table a case is.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Kernel,
    /// wprobe as it runs by default: entry probes optimized (a jump into
    /// a trampoline) where they can be.
    Wprobe,
    /// wprobe with `--no-optimize`: every probe an int3 and a ptrace stop.
    Int3,
}

/// The columns of the seed's table, in its order.
const SEED: [&str; 5] = ["k", "j", "r", "kr", "jr"];

struct Case {
    name: String,
    row: Row,
    /// The column of the seed's table this case fills, and on which side.
    seed: Option<(&'static str, Side)>,
    threads: u64,
    how: How,
    hits: u64,
    loop_ns: Vec<u64>,
    wall_ns: Vec<u64>,
}

impl Case {
    fn new(name: &str, row: Row, threads: u64, how: How) -> Case {
        Case {
            name: name.to_string(),
            row,
            seed: None,
            threads,
            how,
            hits: 0,
            loop_ns: Vec::new(),
            wall_ns: Vec::new(),
        }
    }

    fn seed(mut self, column: &'static str, side: Side) -> Case {
        self.seed = Some((column, side));
        self
    }
}

/// What one run of the fixture reported.
struct Run {
    loop_ns: u64,
    wall_ns: u64,
    sum: i64,
}

fn env_u64(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Builds the release `wprobe` (unless told not to) and returns its path:
/// `target/release/wprobe`, beside this benchmark's own directory.
fn release_wprobe() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    // target/release/deps/probe_overhead-<hash> → target/release
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    if !release {
        eprintln!(
            "warning: this is not a release build ({}); numbers from a debug \
             `wprobe` say little — use `cargo bench`",
            dir.display()
        );
    }
    if std::env::var("WPROBE_BENCH_NO_BUILD").as_deref() != Ok("1") {
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let mut cmd = Command::new(cargo);
        // wprobe trace starts the wprobe-core beside it; engine-bench is
        // the in-process engine and a bare core client.
        cmd.args([
            "build",
            "-p",
            "wprobe",
            "-p",
            "wprobe-core",
            "-p",
            "wprobe-tests",
            "--bins",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p wprobe");
        assert!(status.success(), "cargo build -p wprobe failed");
    }
    let bin = dir.join("wprobe");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p wprobe`",
        bin.display()
    );
    bin
}

/// Parses the fixture's `loop_ns=… calls=… threads=… sum=…` line.
fn parse_fixture(stdout: &str, wall_ns: u64) -> Run {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("loop_ns="))
        .unwrap_or_else(|| panic!("no loop_ns line in the fixture's output:\n{stdout}"));
    let field = |key: &str| -> &str {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    Run {
        loop_ns: field("loop_ns=").parse().expect("loop_ns is a number"),
        sum: field("sum=").parse().expect("sum is a number"),
        wall_ns,
    }
}

fn run_timed(mut cmd: Command, what: &str) -> Run {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let wall = t.elapsed().as_nanos() as u64;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_fixture(&stdout, wall)
}

fn run_plain(bin: &Path, calls: u64, threads: u64) -> Run {
    let mut cmd = Command::new(bin);
    cmd.arg(calls.to_string()).arg(threads.to_string());
    run_timed(cmd, "the unprobed fixture")
}

/// `wprobe trace ARGS -o /dev/null -- bench_loop N T`: the events are
/// formatted and written, but to a file that costs nothing, so that no
/// terminal or disk is measured. The fixture's stdout stays its own.
fn run_wprobe(wprobe: &Path, bin: &Path, args: &[String], calls: u64, threads: u64) -> Run {
    let mut cmd = Command::new(wprobe);
    cmd.arg("trace")
        .args(args)
        .args(["-o", "/dev/null", "--"])
        .arg(bin)
        .arg(calls.to_string())
        .arg(threads.to_string());
    run_timed(cmd, "wprobe trace")
}

/// A plugin that does nothing, in WebAssembly text.
const NOOP_PLUGIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))"#;

/// Events per second one core pushes through the count plugins on the
/// host's event path (tests/bin/plugin_throughput.rs), as markdown lines.
fn plugin_throughput(wprobe: &Path, c: &Path, rust: &Path) -> String {
    let bin = wprobe.with_file_name("plugin-throughput");
    let mut s = String::from(
        "\nHost event path, one core: protocol frames decoded and each event \
         handed to the plugin (`plugin-throughput`, 1 000 000 events, 5 runs):\n\n\
         | plugin | ns per event, best | median | events per second, best | median |\n\
         | --- | ---: | ---: | ---: | ---: |\n",
    );
    for (name, plugin) in [("count (C)", c), ("count (Rust)", rust)] {
        let mut runs: Vec<f64> = Vec::new();
        for _ in 0..5 {
            let out = Command::new(&bin)
                .arg(plugin)
                .arg("1000000")
                .output()
                .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            let field = |k: &str| -> f64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {k} in {line}"))
            };
            runs.push(field("per_event_ns="));
        }
        runs.sort_by(f64::total_cmp);
        let (best, med) = (runs[0], runs[runs.len() / 2]);
        s.push_str(&format!(
            "| {name} | {best:.0} | {med:.0} | {:.0} | {:.0} |\n",
            1e9 / best,
            1e9 / med
        ));
    }
    s
}

/// `engine-bench MODE SPEC -- bench_loop N T`; checks that every call was
/// one event.
fn run_helper(wprobe: &Path, mode: &str, spec: &str, bin: &Path, calls: u64, threads: u64) -> Run {
    let helper = wprobe.with_file_name("engine-bench");
    let t = Instant::now();
    let out = Command::new(&helper)
        .args([mode, spec, "--"])
        .arg(bin)
        .arg(calls.to_string())
        .arg(threads.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", helper.display()));
    let wall = t.elapsed().as_nanos() as u64;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "engine-bench {mode}: {}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(&format!("events={}", calls * threads)),
        "engine-bench {mode}: every call is one event: {stderr}"
    );
    parse_fixture(&String::from_utf8_lossy(&out.stdout), wall)
}

/// Runs `bench_loop N 1 int3` under the smallest tracer there is: at each
/// stop it resumes the thread (after `PTRACE_GETREGS` if `regs`), nothing
/// else. The int3 is the program's own, so no register has to change.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by the waitpid loop, which the lint cannot see"
)]
fn run_floor(bin: &Path, calls: u64, regs: bool) -> Run {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    cmd.arg(calls.to_string())
        .args(["1", "int3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: between fork and exec the child only calls ptrace(2), which
    // is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = Instant::now();
    let mut child = cmd.spawn().expect("spawn the floor fixture");
    let pid = child.id() as libc::pid_t;
    let mut traps = 0u64;
    let mut exec_seen = false;
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "the floor fixture failed: status {status:#x}"
            );
            break;
        }
        let sig = libc::WSTOPSIG(status);
        let deliver = if sig == libc::SIGTRAP {
            // The first SIGTRAP is the exec, the others are the int3s.
            if exec_seen {
                traps += 1;
            }
            exec_seen = true;
            0
        } else {
            sig
        };
        if regs {
            // SAFETY: `user_regs_struct` is plain data that GETREGS fills.
            let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
            // SAFETY: the tracee is in a ptrace stop; `r` is a valid buffer.
            unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut r) };
        }
        // SAFETY: resuming our own stopped tracee.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, deliver) };
    }
    let wall = t.elapsed().as_nanos() as u64;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .expect("read the floor fixture's output");
    assert_eq!(traps, calls, "floor: int3 stops");
    parse_fixture(&stdout, wall)
}

/// One small run with the events kept: every call is one hit of each
/// probe, of the right kind; captures read the string; a return event
/// carries the value `bench_target` returned for the argument its entry
/// saw, and follows that entry on the same thread; the summary agrees.
fn verify(wprobe: &Path, bin: &Path, args: &[String], threads: u64, name: &str) {
    let calls = 100;
    let out_file = scratch_dir().join("verify.jsonl");
    let mut cmd = Command::new(wprobe);
    cmd.arg("trace")
        .args(args)
        .arg("-o")
        .arg(&out_file)
        .arg("--")
        .arg(bin)
        .arg(calls.to_string())
        .arg(threads.to_string());
    run_timed(cmd, "wprobe trace (check run)");
    let text = std::fs::read_to_string(&out_file).expect("read the check run's events");
    let (events, summary) = parse_jsonl(&text);
    let want = calls * threads;
    // The probes are numbered from 1 in the order of their `-e`.
    let specs: Vec<&String> = args
        .iter()
        .zip(args.iter().skip(1))
        .filter(|(flag, _)| *flag == "-e")
        .map(|(_, spec)| spec)
        .collect();
    let of = |probe: usize, kind: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["probe"] == probe as u64 && e["kind"] == kind)
            .collect()
    };
    for (i, spec) in specs.iter().enumerate() {
        let probe = i + 1;
        let kind = if spec.starts_with("uretprobe:") {
            "return"
        } else {
            "entry"
        };
        assert_eq!(
            of(probe, kind).len() as u64,
            want,
            "{name}: {kind} events of {spec}"
        );
        let stats = summary
            .as_ref()
            .and_then(|s| s["probes"].as_array())
            .and_then(|ps| ps.iter().find(|p| p["probe"] == probe as u64));
        let field = |key: &str| stats.and_then(|p| p[key].as_u64());
        assert_eq!(
            field("hits"),
            Some(want),
            "{name}: hits of {spec} in the summary"
        );
        assert_eq!(field("nmissed"), Some(0), "{name}: nmissed of {spec}");
        if spec.contains(" post") {
            assert_eq!(of(probe, "post").len() as u64, want, "{name}: post events");
        }
        if spec.contains(":string") {
            for e in of(probe, "entry") {
                assert_eq!(e["captures"]["s"], Value::from(WORD), "{name}: capture");
            }
        }
        if kind == "return" {
            check_returns(&of(probe, "return"), calls, threads, name);
        }
    }
    // With an entry and a return probe on the function, every thread sees
    // entry, return, entry, return, …, each return naming its entry's
    // arguments.
    if specs.len() > 1 {
        let mut open = std::collections::HashMap::new();
        for e in &events {
            let tid = e["tid"].as_u64().expect("tid");
            match e["kind"].as_str() {
                Some("entry") => {
                    let arg = e["args"][1].as_u64();
                    assert!(
                        open.insert(tid, arg).is_none(),
                        "{name}: entry twice on {tid}"
                    );
                }
                Some("return") => {
                    let arg = open.remove(&tid).expect("a return follows its entry");
                    assert_eq!(e["entry_args"][1].as_u64(), arg, "{name}: entry_args");
                }
                k => panic!("{name}: unexpected event kind {k:?}"),
            }
        }
        assert!(open.is_empty(), "{name}: entries without their return");
    }
    let has_regs = events.iter().all(|e| e.get("regs").is_some());
    let no_regs = args.iter().any(|a| a == "--no-regs");
    assert_eq!(has_regs, !no_regs, "{name}: registers");
}

/// The return events of one probe: `bench_target(WORD, i)` returns `i`
/// plus the sum of WORD's bytes, so each thread's returns are exactly
/// `i + 846` for `i` in `0..calls` (for "overhead"), each one's
/// `entry_args` hold its `i`, and its latency is the time since its entry.
fn check_returns(returns: &[&Value], calls: u64, threads: u64, name: &str) {
    let word: u64 = WORD.bytes().map(u64::from).sum();
    let num = |e: &Value, key: &str| {
        e[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no {key} in {e}"))
    };
    let mut got: Vec<u64> = returns.iter().map(|e| num(e, "retval")).collect();
    got.sort_unstable();
    let mut expect: Vec<u64> = (0..calls)
        .flat_map(|i| std::iter::repeat_n(i + word, threads as usize))
        .collect();
    expect.sort_unstable();
    assert_eq!(got, expect, "{name}: return values");
    for e in returns {
        let i = e["entry_args"][1].as_u64();
        assert_eq!(
            Some(num(e, "retval")),
            i.map(|i| i + word),
            "{name}: retval of {e}"
        );
        let (t, entry) = (num(e, "time_ns"), num(e, "entry_time_ns"));
        assert!(entry <= t, "{name}: return before its entry: {e}");
        assert_eq!(num(e, "latency_ns"), t - entry, "{name}: latency_ns of {e}");
    }
    let few: Vec<String> = returns
        .iter()
        .take(3)
        .map(|e| format!("{}({}) = {}", FUNC, e["entry_args"][1], e["retval"]))
        .collect();
    eprintln!(
        "{name}: {} return events, values as computed, e.g. {}",
        returns.len(),
        few.join(", ")
    );
}

/// Kernel uprobe events on the fixture, defined once, enabled as each case
/// says and removed again on drop: `p` at the function's entry, `args`
/// there with the six argument registers as fetch-args (the jprobe view),
/// `cap` there with a string fetch-arg (the kernel's counterpart of a
/// capture), `ret` a uretprobe on it.
struct KernelProbes {
    group: String,
    bin: PathBuf,
}

impl KernelProbes {
    fn new(bin: &Path) -> Option<KernelProbes> {
        if !Path::new(TRACING).join("uprobe_events").exists() {
            return None;
        }
        let kp = KernelProbes {
            group: format!("wprobe_bench_{}", std::process::id()),
            bin: bin.to_path_buf(),
        };
        let off = file_offset(bin, FUNC, 0);
        let at = format!("{}:{off:#x}", bin.display());
        let g = &kp.group;
        for def in [
            format!("p:{g}/p {at}"),
            format!("p:{g}/args {at} a0=%di a1=%si a2=%dx a3=%cx a4=%r8 a5=%r9"),
            format!("p:{g}/cap {at} s=+0(%di):string"),
            format!("r:{g}/ret {at}"),
        ] {
            append(&Path::new(TRACING).join("uprobe_events"), &def);
        }
        Some(kp)
    }

    fn enable(&self, event: &str, on: bool) {
        let path = Path::new(TRACING)
            .join("events")
            .join(&self.group)
            .join(event)
            .join("enable");
        std::fs::write(&path, if on { "1" } else { "0" })
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The event's hit count so far, from uprobe_profile, whose lines read
    /// `PATH EVENT NHIT` (the event without its group, on this kernel; with
    /// it on some others).
    fn hits(&self, event: &str) -> u64 {
        let profile = std::fs::read_to_string(Path::new(TRACING).join("uprobe_profile"))
            .expect("read uprobe_profile");
        let path = self.bin.display().to_string();
        let key = format!("{}/{event}", self.group);
        profile
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.len() == 3 && w[0] == path && (w[1] == event || w[1] == key))
            .and_then(|w| w.get(2).copied())
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in uprobe_profile:\n{profile}"))
    }

    /// One run with these events enabled together; each must hit once per
    /// call.
    fn run(&self, events: &[&str], bin: &Path, calls: u64, threads: u64) -> Run {
        for ev in events {
            self.enable(ev, true);
        }
        let before: Vec<u64> = events.iter().map(|ev| self.hits(ev)).collect();
        let run = run_plain(bin, calls, threads);
        for (ev, b) in events.iter().zip(before) {
            self.enable(ev, false);
            assert_eq!(self.hits(ev) - b, calls * threads, "kernel {ev}: hits");
        }
        run
    }
}

impl Drop for KernelProbes {
    fn drop(&mut self) {
        for ev in ["p", "args", "cap", "ret"] {
            self.enable(ev, false);
            append(
                &Path::new(TRACING).join("uprobe_events"),
                &format!("-:{}/{ev}", self.group),
            );
        }
    }
}

fn append(path: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    writeln!(f, "{line}").unwrap_or_else(|e| panic!("write {line:?} to {}: {e}", path.display()));
}

fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

/// One line of the results.
struct Line {
    name: String,
    /// The boosted entry probe the goal is about.
    entry: bool,
    /// The bare ptrace stop, without reading registers.
    floor: bool,
    seed: Option<(&'static str, Side)>,
    threads: u64,
    hits: u64,
    loop_ms: f64,
    spread: (f64, f64),
    us_per_hit: Option<f64>,
    ratio: Option<f64>,
    hits_per_s: Option<f64>,
}

struct Report {
    lines: Vec<Line>,
    calls: u64,
    calls_mt: u64,
    threads: u64,
    reps: usize,
    startup_ms: Option<f64>,
    load: String,
}

impl Report {
    fn new(
        cases: &[Case],
        calls: u64,
        calls_mt: u64,
        threads: u64,
        reps: usize,
        load: &str,
    ) -> Report {
        let find = |row: Row, t: u64| {
            cases
                .iter()
                .find(|c| c.row == row && c.threads == t)
                .map(|c| median(&c.loop_ns))
        };
        let mut lines = Vec::new();
        for c in cases {
            let med = median(&c.loop_ns);
            let base = find(Row::Base, c.threads).expect("an unprobed case per thread count");
            let per_hit = |loop_ns: u64| (loop_ns as f64 - base as f64) / c.hits as f64 / 1e3;
            let us = (c.row != Row::Base).then(|| per_hit(med));
            let kernel_us = find(Row::Kernel, c.threads).map(per_hit);
            let ratio = match (us, kernel_us) {
                (Some(u), Some(k)) if c.row != Row::Kernel => Some(u / k),
                _ => None,
            };
            let lo = *c.loop_ns.iter().min().expect("at least one rep") as f64 / 1e6;
            let hi = *c.loop_ns.iter().max().expect("at least one rep") as f64 / 1e6;
            lines.push(Line {
                name: c.name.clone(),
                entry: c.row == Row::Entry,
                floor: matches!(c.how, How::Floor { regs: false }),
                seed: c.seed,
                threads: c.threads,
                hits: c.hits,
                loop_ms: med as f64 / 1e6,
                spread: (lo, hi),
                us_per_hit: us,
                ratio,
                hits_per_s: (c.row != Row::Base).then(|| c.hits as f64 / (med as f64 / 1e9)),
            });
        }
        // What a `wprobe trace` run costs besides its hits: spawning,
        // resolving, arming, the exit and the summary.
        let extra = |c: &Case| median(&c.wall_ns) as f64 / 1e6 - median(&c.loop_ns) as f64 / 1e6;
        let startup_ms = cases
            .iter()
            .find(|c| c.row == Row::Entry && c.threads == 1)
            .zip(cases.iter().find(|c| c.row == Row::Base && c.threads == 1))
            .map(|(e, b)| extra(e) - extra(b));
        Report {
            lines,
            calls,
            calls_mt,
            threads,
            reps,
            startup_ms,
            load: load
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    fn entry_ratio(&self, threads: u64) -> Option<f64> {
        self.lines
            .iter()
            .find(|l| l.threads == threads && l.entry)
            .and_then(|l| l.ratio)
    }

    /// µs per call of a column of the seed's table, on one side.
    fn seed_us(&self, column: &str, side: Side) -> Option<f64> {
        self.lines
            .iter()
            .find(|l| l.seed == Some((column, side)))
            .and_then(|l| l.us_per_hit)
    }

    /// wprobe ÷ kernel in a column of the seed's table.
    fn seed_ratio(&self, column: &str, side: Side) -> Option<f64> {
        self.seed_us(column, side)
            .zip(self.seed_us(column, Side::Kernel))
            .map(|(w, k)| w / k)
    }

    /// The seed's table: one column per kind of probe, one row per side.
    fn seed_table(&self, markdown: bool) -> String {
        let row = |f: &dyn Fn(&str) -> Option<f64>| -> Vec<String> {
            SEED.iter().map(|c| opt(f(c), 2)).collect()
        };
        let rows = [
            (
                "kernel, µs per call",
                row(&|c| self.seed_us(c, Side::Kernel)),
            ),
            (
                "wprobe, µs per call",
                row(&|c| self.seed_us(c, Side::Wprobe)),
            ),
            (
                "wprobe int3, µs per call",
                row(&|c| self.seed_us(c, Side::Int3)),
            ),
            (
                "wprobe ÷ kernel",
                row(&|c| self.seed_ratio(c, Side::Wprobe)),
            ),
            (
                "wprobe int3 ÷ kernel",
                row(&|c| self.seed_ratio(c, Side::Int3)),
            ),
        ];
        let mut s = String::new();
        if markdown {
            let _ = writeln!(s, "| | {} |", SEED.join(" | "));
            let _ = writeln!(s, "|---|{}", "--:|".repeat(SEED.len()));
            for (label, cells) in &rows {
                let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
            }
        } else {
            let head: String = SEED.iter().map(|c| format!(" {c:>8}")).collect();
            let _ = writeln!(s, "{:<22}{head}", "");
            for (label, cells) in &rows {
                let cells: String = cells.iter().map(|c| format!(" {c:>8}")).collect();
                let _ = writeln!(s, "{label:<22}{cells}");
            }
        }
        s
    }

    fn table_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<56} {:>3} {:>7} {:>10} {:>19} {:>9} {:>8} {:>11}",
            "case", "thr", "calls", "loop ms", "min..max ms", "µs/call", "× kernel", "calls/s"
        );
        for l in &self.lines {
            let _ = writeln!(
                s,
                "{:<56} {:>3} {:>7} {:>10.2} {:>19} {:>9} {:>8} {:>11}",
                l.name,
                l.threads,
                l.hits,
                l.loop_ms,
                format!("{:.1}..{:.1}", l.spread.0, l.spread.1),
                opt(l.us_per_hit, 2),
                opt(l.ratio, 2),
                opt(l.hits_per_s, 0),
            );
        }
        s
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let _ = writeln!(s, "- Machine: {cpu}, {cores} cores, Linux {kernel}");
        let _ = writeln!(
            s,
            "- Date: {} (UTC); load average before the run: {}",
            today(),
            self.load
        );
        let _ = writeln!(
            s,
            "- Run: {} calls per single-thread case, {} threads × {} calls for the \
             threaded ones; {} repetitions round-robin, median kept; `wprobe` \
             release build; events written with `-o /dev/null`",
            self.calls, self.threads, self.calls_mt, self.reps
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| case | threads | loop ms (median) | min..max ms | µs per call | × kernel uprobe |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
        for l in &self.lines {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.1}..{:.1} | {} | {} |",
                l.name,
                l.threads,
                l.loop_ms,
                l.spread.0,
                l.spread.1,
                opt(l.us_per_hit, 2),
                opt(l.ratio, 2),
            );
        }
        let _ = writeln!(
            s,
            "\nµs per call = (probed loop − unprobed loop) / calls. A call is one hit of \
             each probe of the row: an entry hit and a return hit where there are both. \
             × kernel uprobe divides by the kernel uprobe (`p:`) of the same thread count."
        );
        let _ = writeln!(
            s,
            "\nThe seed's table (k = entry probe, j = entry probe seeing the arguments, \
             r = return probe, kr = entry + return probe on the same function, jr = j + r), \
             each wprobe case beside the kernel's equivalent from the rows above:\n"
        );
        s.push_str(&self.seed_table(true));
        let _ = writeln!(s);
        let tput: Vec<String> = self
            .lines
            .iter()
            .filter(|l| l.threads > 1)
            .filter_map(|l| {
                l.hits_per_s
                    .map(|h| format!("{}: {:.0} hits/s", l.name.replace(", 4 threads", ""), h))
            })
            .collect();
        let _ = writeln!(
            s,
            "Four threads hammering one probe: {}.",
            if tput.is_empty() {
                "not measured".to_string()
            } else {
                tput.join("; ")
            }
        );
        if let Some(ms) = self.startup_ms {
            let _ = writeln!(
                s,
                "\nNot in the per-call numbers: a `wprobe trace` run costs about {ms:.1} ms \
                 more wall time than the bare program (spawn, symbol resolution, arming, \
                 exit, summary)."
            );
        }
        let _ = writeln!(s);
        let goal = |ratio: Option<f64>| match ratio {
            Some(r) if r <= 2.5 => format!("met ({r:.2}×)"),
            Some(r) => format!("**not met** ({r:.2}×)"),
            None => "not measured (no kernel baseline)".into(),
        };
        let _ = writeln!(
            s,
            "Goal (issue 2): an entry probe costs at most 2.5× a kernel uprobe hit. \
             One thread: {}. Four threads: {}.",
            goal(self.entry_ratio(1)),
            goal(self.entry_ratio(self.threads))
        );
        let _ = writeln!(
            s,
            "\nGoal (return probes): a return probe costs at most 2.5× a kernel uretprobe \
             hit. One thread: {}.",
            goal(self.seed_ratio("r", Side::Wprobe))
        );
        // Issue 12: an optimized entry probe adds at most 50 ns per hit.
        if let Some(us) = self.seed_us("k", Side::Wprobe) {
            let ns = us * 1e3;
            let verdict = if ns <= 50.0 { "met" } else { "**not met**" };
            let _ = writeln!(
                s,
                "\nGoal (optimized probes): an optimized entry probe adds at most 50 ns per \
                 hit. One thread: {verdict} ({ns:.0} ns; int3: {}).",
                self.seed_us("k", Side::Int3)
                    .map_or("not measured".to_string(), |u| format!("{:.0} ns", u * 1e3))
            );
        }
        let floor = self
            .lines
            .iter()
            .find(|l| l.floor)
            .and_then(|l| l.ratio.zip(l.us_per_hit));
        if let Some((ratio, us)) = floor {
            let _ = writeln!(
                s,
                "\nFor scale: a bare ptrace stop — the program's own int3, a tracer that \
                 only waits and resumes — costs {us:.2} µs here, {ratio:.2}× a kernel \
                 uprobe hit, before any probe work."
            );
            // A return probe stops the thread twice per call: at the entry,
            // to hijack the return address, and at the trampoline.
            if let Some(k) = self.seed_us("r", Side::Kernel) {
                let _ = writeln!(
                    s,
                    "A return probe stops twice per call (at the entry, to hijack the return \
                     address, and at the trampoline): two bare stops are {:.2} µs, {:.2}× a \
                     kernel uretprobe hit.",
                    2.0 * us,
                    2.0 * us / k
                );
            }
        }
        s
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |x| format!("{x:.digits$}"))
}

/// Today's date, from the system clock (days since the epoch to a civil
/// date, Howard Hinnant's algorithm).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Replaces this benchmark's section of `docs/benchmarks.md`.
fn write_doc(path: &Path, body: &str) {
    let intro = "## Probe overhead\n\nRun `cargo bench -p wprobe-tests --bench probe_overhead` (see the doc comment of `tests/benches/probe_overhead.rs`).\n\n";
    write_doc_section(path, "probe_overhead", intro, body);
}
