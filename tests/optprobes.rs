//! Optimized probes (docs/optprobes.md), end to end: a jump into a
//! trampoline instead of an int3, hits through the shared ring, and every
//! refusal visible as the probe's placement. Counts are exact and equal the
//! kernel's uprobe counts; the probed program computes what it computes
//! without probes; detach and kill leave nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wprobe_core::proto::client::Client;
use wprobe_core::proto::{Body, Frame, Mode, Notice, Op, ProbeInfo, ProbeOptions};
use wprobe_tests::*;

fn core_client() -> Client {
    let core = wprobe_bin().with_file_name("wprobe-core");
    Client::start_core(&core, "optprobes test").expect("start a core")
}

fn fixture(tag: &str) -> std::path::PathBuf {
    build("optfix", tag, &["-O2", "-pthread"])
}

/// `optfix N THREADS`, started by the test (so that its output can be
/// read), waiting for its "go".
struct Fix {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Fix {
    fn start(bin: &std::path::Path, rounds: u64, threads: u32) -> Fix {
        let mut child = Command::new(bin)
            .args([rounds.to_string(), threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start optfix");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ready");
        assert_eq!(line, "ready\n");
        Fix { child, out }
    }
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to optfix");
        stdin.flush().expect("flush");
    }
    /// Its last line (`calls=C bad=B`) and exit code.
    fn end(mut self) -> (String, Option<i32>) {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("result line");
        let status = self.child.wait().expect("wait");
        (line, status.code())
    }
}

fn add(c: &mut Client, spec: String) -> u32 {
    match c.call(Op::AddProbe {
        spec,
        options: ProbeOptions {
            mode: Mode::Async,
            allow_mutation: false,
            sync_deadline_us: 0,
            no_optimize: false,
        },
    }) {
        Ok(Body::Probe { id }) => id,
        other => panic!("AddProbe: {other:?}"),
    }
}

fn probes(c: &mut Client) -> Vec<ProbeInfo> {
    match c.call(Op::ListProbes) {
        Ok(Body::Probes(p)) => p,
        other => panic!("ListProbes: {other:?}"),
    }
}

fn state(c: &mut Client, id: u32) -> String {
    let p = probes(c);
    let p = p.iter().find(|p| p.id == id).expect("listed");
    assert_eq!(p.placements.len(), 1, "{p:?}");
    p.placements[0].state.clone()
}

/// Reads frames until `done` says so (or the core closes); counts events
/// per probe.
fn pump(
    c: &mut Client,
    counts: &mut std::collections::HashMap<u32, u64>,
    mut done: impl FnMut(&Frame) -> bool,
) {
    loop {
        let Ok(Some(f)) = c.next(Some(Duration::from_secs(60))) else {
            panic!("no frame from the core for a minute");
        };
        if let Frame::Events(evs) = &f {
            for e in evs {
                *counts.entry(e.probe).or_default() += 1;
            }
        }
        if done(&f) {
            return;
        }
    }
}

/// Counts the frames already received or on the socket now, up to a bound
/// (under a flood more keep arriving).
fn drain_ready(c: &mut Client, counts: &mut std::collections::HashMap<u32, u64>) {
    for _ in 0..100_000 {
        match c.try_next() {
            Ok(Some(Frame::Events(evs))) => {
                for e in evs {
                    *counts.entry(e.probe).or_default() += 1;
                }
            }
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

/// `optfix` running `threads` threads without end, attached by a core
/// with an entry probe on `hot`, once `events` of its hits have arrived and
/// the probe is optimized. Returns the fixture, the client, the probe and
/// the events counted so far.
fn flooded(
    bin: &std::path::Path,
    threads: u32,
    events: u64,
) -> (Fix, Client, u32, std::collections::HashMap<u32, u64>) {
    let mut fix = Fix::start(bin, 0, threads);
    let mut c = core_client();
    assert!(matches!(
        c.call(Op::Attach { pid: fix.pid() }),
        Ok(Body::Target { .. })
    ));
    let id = add(&mut c, format!("uprobe:{}:hot", bin.display()));
    fix.say("go");
    let mut counts = Default::default();
    let mut seen = 0u64;
    pump(&mut c, &mut counts, |f| {
        if let Frame::Events(e) = f {
            seen += e.len() as u64;
        }
        seen >= events
    });
    assert_eq!(state(&mut c, id), "optimized");
    (fix, c, id, counts)
}

#[test]
fn an_optimized_probe_counts_exactly_what_the_kernel_uprobe_counts() {
    let bin = fixture("count");
    let b = bin.to_string_lossy();
    for threads in ["1", "4"] {
        let t = trace(&["-e", &format!("uprobe:{b}:hot"), "--", &b, "20000", threads]);
        assert_eq!(t.status, Some(0), "{}", t.stderr);
        assert!(t.stderr.contains(": optimized"), "{}", t.stderr);
        let n: u64 = 20000 * threads.parse::<u64>().unwrap();
        assert_eq!(t.hits(1), n, "{}", t.stderr);
        // Delivered, or dropped from the core's queue when this test's
        // reader fell behind (counted): never lost, never doubled.
        let entries = t.events_of(1, "entry");
        assert_eq!(entries.len() as u64 + t.dropped(1), n);
        // Per thread, the argument only grows, and the registers are the
        // probe's.
        let mut next: std::collections::HashMap<u64, i64> = Default::default();
        for e in entries {
            let tid = e["tid"].as_u64().unwrap();
            let rdi = e["regs"]["rdi"].as_u64().unwrap() as i64;
            let prev = next.insert(tid, rdi).unwrap_or(-1);
            assert!(rdi > prev, "thread {tid}: {rdi} after {prev}");
            let addr = e["addr"].as_str().unwrap().trim_start_matches("0x");
            assert_eq!(
                e["regs"]["rip"].as_u64(),
                u64::from_str_radix(addr, 16).ok()
            );
        }
        assert_eq!(
            next.len(),
            threads.parse::<usize>().unwrap(),
            "each thread its own tid"
        );
    }
    if tracefs_available() {
        let k = kernel_uprobe_counts(&bin, &[("hot", 0)], || {
            run_plain(&bin, &["20000", "4"]);
        });
        assert_eq!(k, [80000]);
    }
}

#[test]
fn no_optimize_keeps_int3_and_says_why() {
    let bin = fixture("noopt");
    let b = bin.to_string_lossy();
    let t = trace(&[
        "--no-optimize",
        "-e",
        &format!("uprobe:{b}:hot"),
        "--",
        &b,
        "300",
        "2",
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert!(
        t.stderr
            .contains("int3: optimization is off (--no-optimize)"),
        "{}",
        t.stderr
    );
    assert!(!t.stderr.contains(": optimized"), "{}", t.stderr);
    assert_eq!(t.hits(1), 600);
}

#[test]
fn a_branch_into_the_range_or_a_jump_table_keeps_int3_and_the_code_runs_as_before() {
    let bin = fixture("refuse");
    let b = bin.to_string_lossy();
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:looper"),
        "-e",
        &format!("uprobe:{b}:dispatch"),
        "-e",
        &format!("uprobe:{b}:hot"),
        "--",
        &b,
        "500",
        "2",
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert!(t.stdout.contains("calls=1000 bad=0"), "{}", t.stdout);
    assert!(
        t.stderr.contains("looper in process")
            && t.stderr.contains("inside the range a jump would replace"),
        "the loop back to looper+2 keeps it on int3: {}",
        t.stderr
    );
    assert!(
        t.stderr.contains("indirect jump"),
        "dispatch's jump table keeps it on int3: {}",
        t.stderr
    );
    assert_eq!((t.hits(1), t.hits(2), t.hits(3)), (1000, 1000, 1000));
    if tracefs_available() {
        let k = kernel_uprobe_counts(&bin, &[("looper", 0), ("dispatch", 0), ("hot", 0)], || {
            run_plain(&bin, &["500", "2"]);
        });
        assert_eq!(k, [1000, 1000, 1000]);
    }
}

/// Disable and enable a probe, each time taking the jump out and putting
/// it back, while four threads run through it: every call still computes
/// right, and every hit is counted once. 2000 cycles here (about 30 s of a
/// debug build); `WPROBE_OPT_CYCLES=10000` for the 10 000.
#[test]
fn optimize_unoptimize_cycles_while_four_threads_run() {
    let bin = fixture("cycles");
    let mut fix = Fix::start(&bin, 0, 4);
    let mut c = core_client();
    assert!(matches!(
        c.call(Op::Attach { pid: fix.pid() }),
        Ok(Body::Target { .. })
    ));
    let id = add(&mut c, format!("uprobe:{}:hot", bin.display()));
    fix.say("go");
    let mut counts = Default::default();
    let mut optimized = 0;
    let cycles = std::env::var("WPROBE_OPT_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000u32);
    for _ in 0..cycles {
        assert!(matches!(c.call(Op::DisableProbe { id }), Ok(Body::Empty)));
        assert!(matches!(c.call(Op::EnableProbe { id }), Ok(Body::Empty)));
        if state(&mut c, id) == "optimized" {
            optimized += 1;
        }
        // The replies above came after whatever events the core sent
        // first, which the client holds: count them now, or two thousand
        // cycles under a four-thread flood hold gigabytes.
        drain_ready(&mut c, &mut counts);
    }
    assert!(
        optimized > 0,
        "the probe was optimized again after enabling"
    );
    fix.say("stop");
    pump(&mut c, &mut counts, |f| {
        matches!(f, Frame::Notice(Notice::Exited { .. }))
    });
    let p = probes(&mut c).remove(0);
    let (line, code) = fix.end();
    assert_eq!(code, Some(0), "{line}");
    assert!(line.ends_with("bad=0\n"), "{line}");
    // A client slower than four threads loses events from the core's
    // queue, counted: nothing else is missing, nothing is doubled.
    let delivered = counts.get(&id).copied().unwrap_or(0);
    assert_eq!(delivered + p.dropped, p.hits, "hits = delivered + dropped");
    let hits = p.hits;
    assert!(hits > 0);
}

/// The target is killed while two threads flood an optimized probe: the
/// core reads what the ring holds, reports the exit, and every hit it
/// counted was delivered.
#[test]
fn sigkill_during_a_two_thread_flood_ends_cleanly() {
    let bin = fixture("kill");
    let (fix, mut c, id, mut counts) = flooded(&bin, 2, 5000);
    // SAFETY: killing the fixture this test started.
    unsafe { libc::kill(fix.pid(), libc::SIGKILL) };
    pump(&mut c, &mut counts, |f| {
        matches!(f, Frame::Notice(Notice::Exited { .. }))
    });
    let hits = match c.call(Op::Stats) {
        Ok(Body::Stats(s)) => s.probes[0].hits,
        other => panic!("Stats: {other:?}"),
    };
    let dropped = probes(&mut c)[0].dropped;
    assert_eq!(counts[&id] + dropped, hits, "hits = delivered + dropped");
    let mut fix = fix;
    let status = fix.child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

/// Detach while four threads run through an optimized probe: every byte of
/// the program's code is the file's again, the engine's pages are gone,
/// and the threads run on and finish right.
#[test]
fn detach_under_load_restores_every_byte() {
    let bin = fixture("detach");
    let (mut fix, mut c, _, _) = flooded(&bin, 4, 2000);
    let pid = fix.pid();
    let maps_before = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(maps_before.contains("memfd:wprobe-ring"), "{maps_before}");
    assert!(matches!(c.call(Op::Detach { pid }), Ok(Body::Empty)));
    // The code is the file's, byte for byte, and nothing of the engine's
    // is mapped any more.
    let (live, file) = live_and_file_bytes(pid, &bin, "hot", 64);
    assert_eq!(live, file);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("wprobe-ring"), "{maps}");
    assert_eq!(proc_status(pid, "TracerPid:").as_deref(), Some("0"));
    fix.say("stop");
    let (line, code) = fix.end();
    assert_eq!(code, Some(0), "{line}");
    assert!(line.ends_with("bad=0\n"), "{line}");
}

/// A fork child of a traced process (not followed) runs clean: no jump,
/// no trampoline, no ring.
#[test]
fn a_fork_child_without_follow_fork_runs_without_the_jump() {
    let bin = build("forker", "opt-fork", &["-O2"]);
    let b = bin.to_string_lossy();
    let plain = run_plain(&bin, &["100", "50"]);
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        "100",
        "50",
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert!(t.stderr.contains(": optimized"), "{}", t.stderr);
    let own: String = t
        .stdout
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(own, String::from_utf8_lossy(&plain.stdout));
    assert_eq!(t.hits(1), 100, "only the parent's calls");
}
