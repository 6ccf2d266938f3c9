//! Return probes (kretprobes) on real processes: return values, latency,
//! recursion and maxactive, longjmp, tail-call chains, threads, fork, and
//! what C++ exceptions and backtrace() do through a hijacked frame —
//! checked against the kernel's own uretprobes where tracefs is there.

use wprobe_tests::*;

/// Runs `returns MODE N` under the given specs (`BIN` stands for the
/// fixture).
fn run(bin: &std::path::Path, specs: &[&str], args: &[&str]) -> Trace {
    run_with(bin, &[], specs, args)
}

/// [`run`] with more options for `wprobe trace`.
fn run_with(bin: &std::path::Path, opts: &[&str], specs: &[&str], args: &[&str]) -> Trace {
    let b = bin.to_string_lossy().into_owned();
    let specs: Vec<String> = specs.iter().map(|s| s.replace("BIN", &b)).collect();
    let mut a: Vec<&str> = vec!["--no-regs"];
    a.extend_from_slice(opts);
    for s in &specs {
        a.push("-e");
        a.push(s);
    }
    a.push("--");
    a.push(&b);
    a.extend_from_slice(args);
    trace(&a)
}

/// A probe's number and a return value.
type ProbeValue = (u64, i64);

/// The (probe, return value) of each event of a `tail N` run, and what
/// they must be: the leaf's return (probe 2), then the tail-calling
/// function's (probe 1), with one value.
fn tail_returns(t: &Trace, n: i64) -> (Vec<ProbeValue>, Vec<ProbeValue>) {
    let rets = t
        .events
        .iter()
        .map(|e| {
            (
                e["probe"].as_u64().unwrap(),
                e["retval"].as_u64().unwrap() as i64,
            )
        })
        .collect();
    let expect = (0..n)
        .flat_map(|i| [(2, i * 2 + 100), (1, i * 2 + 100)])
        .collect();
    (rets, expect)
}

/// The run's probes were placed as jumps (its stderr says so).
fn assert_optimized(t: &Trace) {
    assert!(t.stderr.contains(": optimized"), "{}", t.stderr);
    assert!(!t.stderr.contains(": int3: "), "{}", t.stderr);
}

fn retvals(t: &Trace, probe: u64) -> Vec<i64> {
    t.events_of(probe, "return")
        .iter()
        .map(|e| e["retval"].as_u64().unwrap() as i64)
        .collect()
}

fn own_stdout(t: &Trace) -> String {
    t.stdout
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn return_values_and_counts_equal_the_kernel_uretprobe() {
    let bin = build("returns", "kernel", &["-O2"]);
    let t = run(
        &bin,
        &["uretprobe:BIN:work", "uprobe:BIN:work"],
        &["threads", "50"],
    );
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_optimized(&t);
    assert_eq!((t.hits(1), t.hits(2)), (200, 200));
    let mut mine = retvals(&t, 1);
    mine.sort_unstable();
    let mut expect: Vec<i64> = (0..50).flat_map(|i| [i * 3 + 1; 4]).collect();
    expect.sort_unstable();
    assert_eq!(mine, expect);
    // Every return event knows its entry: same thread, later, latency >= 0.
    for e in t.events_of(1, "return") {
        assert!(e["entry_time_ns"].as_u64().unwrap() <= e["time_ns"].as_u64().unwrap());
        assert_eq!(
            e["retval"].as_u64().unwrap(),
            e["entry_args"][0].as_u64().unwrap() * 3 + 1
        );
    }
    if tracefs_available() {
        let k = KernelProbes::new(&bin, &[('r', "work", 0)]);
        assert!(run_plain(&bin, &["threads", "50"]).status.success());
        assert_eq!(k.counts(), vec![200]);
        let mut theirs = k.return_values(0);
        theirs.sort_unstable();
        assert_eq!(theirs, mine);
    }
}

#[test]
fn entry_and_return_fire_in_order_on_every_thread() {
    let bin = build("returns", "order", &["-O2"]);
    let t = run(
        &bin,
        &["uprobe:BIN:work", "uretprobe:BIN:work"],
        &["threads", "300"],
    );
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    let mut open: std::collections::HashMap<u64, u64> = Default::default();
    for e in &t.events {
        let tid = e["tid"].as_u64().unwrap();
        match e["kind"].as_str().unwrap() {
            "entry" => {
                assert!(
                    open.insert(tid, e["args"][0].as_u64().unwrap()).is_none(),
                    "entry twice on {tid}"
                );
            }
            "return" => {
                let arg = open.remove(&tid).expect("a return follows its entry");
                assert_eq!(e["entry_args"][0].as_u64(), Some(arg));
            }
            k => panic!("unexpected kind {k}"),
        }
    }
    assert!(open.is_empty());
    assert_eq!((t.hits(1), t.hits(2)), (1200, 1200));
}

#[test]
fn recursion_1000_deep_with_maxactive_and_without() {
    let bin = build("returns", "rec", &["-O0"]);
    let t = run(
        &bin,
        &["uretprobe:BIN:rec maxactive=1001"],
        &["rec", "1000"],
    );
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(own_stdout(&t), "rec=500500\n");
    assert_eq!(t.hits(1), 1001);
    // Innermost returns first: 0, 1, 3, 6, ... 500500.
    let vals = retvals(&t, 1);
    let expect: Vec<i64> = (0..=1000).map(|n| n * (n + 1) / 2).collect();
    assert_eq!(vals, expect);
    // Optimized (the default), without maxactive: the process's return
    // instances (1024 in flight) hold every call, reported innermost first.
    let t = run(&bin, &["uretprobe:BIN:rec"], &["rec", "1000"]);
    assert!(t.stderr.contains(": optimized"), "{}", t.stderr);
    assert_eq!(t.hits(1), 1001);
    assert_eq!(retvals(&t, 1), expect);
    // On int3 without maxactive, as uprobes: 64 instances deep per thread
    // at most, so the outermost 64 calls are reported; the rest are
    // counted as missed. The kernel's uretprobe reports the same calls.
    let t = run_with(
        &bin,
        &["--no-optimize"],
        &["uretprobe:BIN:rec"],
        &["rec", "1000"],
    );
    let summary = t.summary.as_ref().unwrap();
    let (hits, missed) = (
        summary["probes"][0]["hits"].as_u64().unwrap(),
        summary["probes"][0]["nmissed"].as_u64().unwrap(),
    );
    assert_eq!((hits, missed), (64, 1001 - 64));
    assert_eq!(own_stdout(&t), "rec=500500\n");
    let outermost: Vec<i64> = (1000 - 63..=1000).map(|n| n * (n + 1) / 2).collect();
    assert_eq!(retvals(&t, 1), outermost);
    if tracefs_available() {
        let k = KernelProbes::new(&bin, &[('r', "rec", 0)]);
        assert!(run_plain(&bin, &["rec", "1000"]).status.success());
        assert_eq!(k.return_values(0), outermost);
    }
}

#[test]
fn ordinary_recursion_reports_every_return_by_default() {
    // fib(21): 21 deep, 2 F(22) - 1 = 35421 calls, each one reported (a
    // bound on instances in flight, kretprobes' max(10, 2 × CPUs), used
    // to miss a third of them).
    let bin = build("returns", "fib", &["-O0"]);
    let calls: u64 = 2 * 17711 - 1;
    let t = run(&bin, &["uretprobe:BIN:fib"], &["fib", "21"]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(own_stdout(&t), "fib=10946\n");
    let summary = t.summary.as_ref().unwrap();
    assert_eq!(summary["probes"][0]["hits"], calls, "{summary}");
    assert_eq!(summary["probes"][0]["nmissed"], 0, "{summary}");
    let mut mine = retvals(&t, 1);
    mine.sort_unstable();
    if tracefs_available() {
        let k = KernelProbes::new(&bin, &[('r', "fib", 0)]);
        assert!(run_plain(&bin, &["fib", "21"]).status.success());
        let mut theirs = k.return_values(0);
        theirs.sort_unstable();
        assert_eq!(theirs, mine);
    }
}

#[test]
fn longjmp_out_of_ten_probed_frames() {
    let bin = build("returns", "longjmp", &["-O0"]);
    // maxactive=10: if the ten abandoned instances were not dropped, the
    // later calls would all be missed.
    let t = run(
        &bin,
        &[
            "uretprobe:BIN:deep maxactive=10",
            "uretprobe:BIN:leafy maxactive=10",
        ],
        &["longjmp"],
    );
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(own_stdout(&t), "after longjmp: 50\n");
    assert_eq!(t.hits(1), 0, "no frame of deep returned");
    assert_eq!(retvals(&t, 2), vec![0, 5, 10, 15, 20]);
    assert_eq!(t.summary.as_ref().unwrap()["probes"][1]["nmissed"], 0);
}

/// The same without maxactive: optimized, each return through its pad;
/// the instances of the frames longjmp left are freed once the producers
/// run short, and the later calls are all reported.
#[test]
fn longjmp_out_of_optimized_frames() {
    let bin = build("returns", "longjmp-opt", &["-O0"]);
    let t = run(
        &bin,
        &["uretprobe:BIN:deep", "uretprobe:BIN:leafy"],
        &["longjmp"],
    );
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_optimized(&t);
    assert_eq!(own_stdout(&t), "after longjmp: 50\n");
    assert_eq!(t.hits(1), 0, "no frame of deep returned");
    assert_eq!(retvals(&t, 2), vec![0, 5, 10, 15, 20]);
    assert_eq!(t.summary.as_ref().unwrap()["probes"][1]["nmissed"], 0);
}

#[test]
fn tail_call_chains_fire_innermost_first() {
    let bin = build("returns", "tail", &["-O2"]);
    let t = run(
        &bin,
        &["uretprobe:BIN:tail", "uretprobe:BIN:leaf"],
        &["tail", "20"],
    );
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(
        own_stdout(&t),
        String::from_utf8_lossy(&run_plain(&bin, &["tail", "20"]).stdout)
    );
    assert_eq!((t.hits(1), t.hits(2)), (20, 20));
    let (rets, expect) = tail_returns(&t, 20);
    assert_eq!(rets, expect, "leaf's return, then tail's, with one value");
    if tracefs_available() {
        let k = KernelProbes::new(&bin, &[('r', "tail", 0), ('r', "leaf", 0)]);
        run_plain(&bin, &["tail", "20"]);
        assert_eq!(k.counts(), vec![20, 20]);
        assert_eq!(k.return_values(0), retvals(&t, 1));
    }
}

/// The same chain through two optimized return probes: the tail-called
/// function's entry hijacks a return address that is already the outer
/// call's pad; the one `ret` goes through both pads, innermost first.
#[test]
fn tail_call_chains_through_optimized_returns() {
    let bin = build("returns", "ltail", &["-O2"]);
    let t = run(
        &bin,
        &["uretprobe:BIN:ltail", "uretprobe:BIN:lleaf"],
        &["ltail", "20"],
    );
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_optimized(&t);
    assert_eq!(
        own_stdout(&t),
        String::from_utf8_lossy(&run_plain(&bin, &["ltail", "20"]).stdout)
    );
    let (rets, expect) = tail_returns(&t, 20);
    assert_eq!(rets, expect, "lleaf's return, then ltail's, with one value");
}

#[test]
fn fork_inside_a_probed_frame_leaves_the_child_untouched() {
    let bin = build("returns", "fork", &["-O2"]);
    let t = run(&bin, &["uretprobe:BIN:ret_fork"], &["fork"]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    // The child returned through the frame with its own return address.
    assert_eq!(own_stdout(&t), "fork: child ok\n");
    assert_eq!(retvals(&t, 1), vec![2]);
}

#[test]
fn cxx_exceptions_and_backtrace_through_a_hijacked_frame() {
    // Documented behaviour (README, "Return probes"), the same as the
    // kernel's uretprobes: the unwinder cannot step past the trampoline, so
    // an exception thrown through a return-probed frame terminates the
    // program, and backtrace() stops at the trampoline.
    let exc = build("exc", "exc", &["-O2"]);
    let plain = run_plain(&exc, &[]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "caught boom\n");
    let t = run(&exc, &["uretprobe:BIN:middle"], &[]);
    assert_eq!(t.status, Some(128 + libc::SIGABRT), "{}", t.stderr);
    assert!(
        t.stderr.contains("C++ exception"),
        "the user is warned: {}",
        t.stderr
    );
    // Said once for the module, however many of its functions are probed.
    let t = run(
        &exc,
        &["uretprobe:BIN:middle", "uretprobe:BIN:thrower"],
        &[],
    );
    assert_eq!(t.stderr.matches("unwinding").count(), 1, "{}", t.stderr);
    // Not through a hijacked frame (the probe is on the thrower, which
    // the exception leaves before returning): fine.
    let t = run(&exc, &["uprobe:BIN:thrower"], &[]);
    assert_eq!(own_stdout(&t), "caught boom\n");

    let bin = build("returns", "bt", &["-O0"]);
    let plain = String::from_utf8_lossy(&run_plain(&bin, &["bt"]).stdout).into_owned();
    let t = run(&bin, &["uretprobe:BIN:with_bt"], &["bt"]);
    let frames = |s: &str| -> u32 { s.trim().trim_start_matches("frames=").parse().unwrap() };
    assert!(
        frames(&own_stdout(&t)) < frames(&plain),
        "backtrace stops at the trampoline"
    );
    if tracefs_available() {
        let k = KernelProbes::new(&bin, &[('r', "with_bt", 0)]);
        let kernel = String::from_utf8_lossy(&run_plain(&bin, &["bt"]).stdout).into_owned();
        drop(k);
        assert_eq!(
            frames(&kernel),
            frames(&own_stdout(&t)),
            "as with the kernel's uretprobe"
        );
    }
}

#[test]
fn refused_where_hijacking_is_unsafe() {
    let bin = build("returns", "refuse", &["-O2"]);
    let b = bin.to_string_lossy();
    let t = trace(&["-e", &format!("uretprobe:{b}:work+4"), "--", &b]);
    assert_eq!(t.status, Some(2));
    assert!(
        t.stderr
            .contains("a return probe goes on a function's entry"),
        "{}",
        t.stderr
    );
}

#[test]
fn ctrl_c_with_live_return_instances_on_four_threads() {
    let bin = build("returns", "detach", &["-O2"]);
    let target = start_ready(&bin, &["slow", "3000"]);
    let pid = target.id() as i32;
    for round in 0..2 {
        // Every thread sits in `slow` (hijacked) most of the time, inside
        // usleep's slot (post) some of it.
        let live = LiveTrace::start(
            &format!("ret-detach-{round}"),
            &[
                "-e".into(),
                format!("uretprobe:{}:slow", bin.display()),
                "-e".into(),
                "uprobe:libc:usleep post".into(),
                "-p".into(),
                pid.to_string(),
            ],
        );
        live.wait_for_events("returns", |t| t.matches("\"return\"").count() > 50);
        live.interrupt();
        assert_untouched(pid, &bin, "slow");
    }
    // No thread returned into a stale trampoline.
    assert_eq!(
        finish(target),
        format!("slow={}\n", 4 * (0..3000).map(|i| i * 2).sum::<i64>())
    );
}

#[test]
fn threads_that_exit_inside_a_probed_frame_leak_nothing() {
    let bin = build("returns", "texit", &["-O2"]);
    // maxactive=2: the two instances of the threads that died inside
    // `exits` must be freed, or the five later calls would all be missed.
    let t = run(&bin, &["uretprobe:BIN:exits maxactive=2"], &["texit"]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(own_stdout(&t), "texit=35\n");
    assert_eq!(retvals(&t, 1), vec![7; 5]);
    assert_eq!(t.summary.as_ref().unwrap()["probes"][0]["nmissed"], 0);
}

#[test]
fn go_programs_are_refused() {
    let bin = build("gomark", "go", &["-O2"]);
    let b = bin.to_string_lossy();
    let t = trace(&["-e", &format!("uretprobe:{b}:work"), "--", &b]);
    assert_eq!(t.status, Some(2), "{}", t.stderr);
    assert!(t.stderr.contains("is a Go program"), "{}", t.stderr);
    assert!(!t.stdout.contains('7'), "the program did not run");
    // Entry probes are fine.
    let t = trace(&["--no-regs", "-e", &format!("uprobe:{b}:work"), "--", &b]);
    assert_eq!((t.status, t.hits(1)), (Some(0), 1));
}

#[test]
fn return_probes_on_a_dlopened_library() {
    let lib = build_dlt_library("libdlt-ret.so");
    let bin = build("dlmain", "ret", &["-O2"]);
    let l = lib.to_string_lossy().into_owned();
    let t = run(&bin, &[&format!("uretprobe:{l}:dl_func")], &[&l]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(retvals(&t, 1), vec![0, 7, 14, 21, 28]);
    assert!(
        t.stderr.contains("gone"),
        "dlclose retires it: {}",
        t.stderr
    );
}

#[test]
fn return_probes_across_exec_with_follow() {
    let bin = build("execer", "ret-exec", &["-O2"]);
    let b = bin.to_string_lossy();
    // The program execs itself: the trampoline of the old image is gone
    // with it; the new image gets its own.
    let t = trace(&[
        "--no-regs",
        "--follow-exec",
        "-e",
        &format!("uretprobe:{b}:work"),
        "--",
        &b,
        &b,
    ]);
    assert_eq!(t.status, Some(1), "{}", t.stderr);
    assert_eq!(t.stdout.matches("execer: 21").count(), 2);
    assert_eq!(retvals(&t, 1), vec![4, 7, 10, 4, 7, 10]);
}

#[test]
fn longjmp_then_a_call_at_the_same_depth() {
    // A frame left by longjmp has its stack slot reused by the next call
    // from the same depth: the new call's instance is the live one, at
    // every return and in the fork child that copies it.
    let bin = build("returns", "reuse", &["-O0"]);
    let t = run(
        &bin,
        &["uretprobe:BIN:jumper", "uretprobe:BIN:forking"],
        &["reuse", "30"],
    );
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(
        own_stdout(&t),
        String::from_utf8_lossy(&run_plain(&bin, &["reuse", "30"]).stdout)
    );
    assert!(own_stdout(&t).contains("child ok"), "{}", t.stdout);
    assert_eq!(retvals(&t, 1), vec![9; 5]);
    assert_eq!(t.summary.as_ref().unwrap()["probes"][0]["nmissed"], 0);
    if tracefs_available() {
        // uprobe_profile counts a uretprobe's entries; its returns are in
        // the trace.
        let k = KernelProbes::new(&bin, &[('r', "jumper", 0)]);
        run_plain(&bin, &["reuse", "30"]);
        assert_eq!(k.return_values(0), vec![9; 5]);
    }
}

#[test]
fn a_callee_that_pops_its_arguments() {
    let bin = build("returns", "retn", &["-O2"]);
    let t = run(&bin, &["uretprobe:BIN:pops8 force"], &["retn"]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(own_stdout(&t), "retn=126\n");
    assert_eq!(retvals(&t, 1), vec![42; 3]);
}

#[test]
fn a_return_probe_off_a_function_entry_is_refused() {
    let bin = build("returns", "midaddr", &["-O2"]);
    let elf = wprobe_core::symbols::ElfFile::open(&bin).unwrap();
    let work = elf.lookup("work").unwrap().addr;
    let b = bin.to_string_lossy();
    // work: lea rax, [rdi+rdi*2+1] (5 bytes); ret
    let t = trace(&[
        "-e",
        &format!("uretprobe:{b}:{:#x}", work + 5),
        "--",
        &b,
        "threads",
        "1",
    ]);
    assert_eq!(t.status, Some(2), "{}", t.stderr);
    assert!(
        t.stderr.contains("goes on a function's entry") && t.stderr.contains("`work`+0x5"),
        "{}",
        t.stderr
    );
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uretprobe:{b}:{work:#x}"),
        "--",
        &b,
        "threads",
        "1",
    ]);
    assert_eq!((t.status, t.hits(1)), (Some(0), 4));
}
