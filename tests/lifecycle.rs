//! What a process's life does to a probed program: Ctrl-C detach, job
//! control, fork and vfork, and signals and faults while an instruction
//! runs out of line. In every case the program must behave (and print)
//! exactly as without the probes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wprobe_tests::*;

fn spin_sum(iters: i64, threads: i64) -> String {
    format!(
        "sum={}\n",
        threads * (0..iters).map(|i| i * 3 + 1).sum::<i64>()
    )
}

fn sigint(child: &Child) {
    // SAFETY: signalling a child of this test.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

#[test]
fn ctrl_c_detaches_and_the_target_runs_on() {
    let bin = build("spin", "ctrlc", &["-O2"]);
    let target = start_ready(&bin, &["60000", "4"]);
    let pid = target.id() as i32;
    // Three rounds of attach and Ctrl-C on the same process: each must
    // leave it exactly as it was, whatever its threads were doing. A
    // boosted probe, and a post probe (its threads sit in slots between
    // two stops), on every thread.
    for round in 0..3 {
        let live = LiveTrace::start(
            &format!("ctrlc-{round}"),
            &[
                "-e".into(),
                format!("uprobe:{}:work", bin.display()),
                "-e".into(),
                "uprobe:libc:usleep post".into(),
                "-p".into(),
                pid.to_string(),
            ],
        );
        live.wait_for_events("events", |t| t.len() > 10_000);
        let (_, summary) = live.interrupt();
        assert_untouched(pid, &bin, "work");
        let summary = summary.expect("summary after Ctrl-C");
        assert!(
            summary["probes"][0]["hits"].as_u64().unwrap() > 0,
            "round {round}"
        );
    }
    // And it finishes with the right output.
    assert_eq!(finish(target), spin_sum(60000, 4));
}

#[test]
fn ctrl_c_of_a_spawned_command_detaches_and_waits_for_it() {
    let bin = build("spin", "ctrlc-spawn", &["-O2"]);
    let events = scratch_dir().join("ctrlc-spawn.jsonl");
    let _ = std::fs::remove_file(&events);
    let wprobe = start_trace_ready(&[
        "--no-regs".into(),
        "-o".into(),
        events.to_string_lossy().into_owned(),
        "-e".into(),
        format!("uprobe:{}:work", bin.display()),
        "--".into(),
        bin.to_string_lossy().into_owned(),
        "5000".into(),
        "2".into(),
    ]);
    // Ctrl-C once it is tracing (its first events are written).
    assert!(wait_until(60, || std::fs::metadata(&events).is_ok_and(|m| m.len() > 0)));
    sigint(&wprobe);
    let out = wprobe.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only wprobe got SIGINT: the command ran on, untraced, to its end.
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), spin_sum(5000, 2));
}

#[test]
fn job_control_works_as_without_the_tracer() {
    let bin = build("spin", "jobctl", &["-O2"]);
    let target = start_ready(&bin, &["30000", "1"]);
    let pid = target.id() as i32;
    let live = LiveTrace::start(
        "jobctl",
        &[
            "-e".into(),
            format!("uprobe:{}:work", bin.display()),
            "-p".into(),
            pid.to_string(),
        ],
    );
    live.wait_for_events("events", |t| !t.is_empty());
    let size = || {
        std::fs::metadata(&live.events)
            .map(|m| m.len())
            .unwrap_or(0)
    };
    // SAFETY: signalling our child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Stopped for good once SIGSTOP is no longer pending (it was taken)
    // and the thread is in a stop. A hit's own trap stop (also `t`) comes
    // before the signal is taken: its event's time is from before `from`.
    let stopped = || {
        let state = proc_status(pid, "State:").unwrap_or_default();
        let pending = ["SigPnd:", "ShdPnd:"].iter().any(|k| {
            let mask = proc_status(pid, k).unwrap_or_default();
            u64::from_str_radix(&mask, 16).unwrap_or(0) & (1 << (libc::SIGSTOP - 1)) != 0
        });
        (state.starts_with('T') || state.starts_with('t')) && !pending
    };
    assert!(wait_until(60, stopped), "the target stops on SIGSTOP");
    let from = wprobe_core::engine::monotonic_ns();
    // However long this lasts, no hit may be timed inside it: the events
    // are checked at the end, when all of them are written.
    std::thread::sleep(Duration::from_millis(300));
    assert!(stopped(), "still stopped");
    let before = size();
    let to = wprobe_core::engine::monotonic_ns();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        wait_until(60, || size() > before),
        "runs again after SIGCONT"
    );
    let (events, _) = parse_jsonl(&live.events_text());
    let inside: Vec<u64> = events
        .iter()
        .filter_map(|e| e["time_ns"].as_u64())
        .filter(|t| (from..to).contains(t))
        .collect();
    assert!(inside.is_empty(), "hits while stopped: {inside:?}");
    live.interrupt();
    assert_eq!(finish(target), spin_sum(30000, 1));
}

#[test]
fn fork_children_run_untouched_and_vfork_children_exec() {
    let bin = build("forker", "fork", &["-O2"]);
    let b = bin.to_string_lossy();
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        "100",
        "50",
    ]);
    let plain = run_plain(&bin, &["100", "50"]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    let own: String = t
        .stdout
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(own, String::from_utf8_lossy(&plain.stdout));
    assert!(
        own.contains("fork child: exit 0") && own.contains("vfork child: exit 0"),
        "{own}"
    );
    assert_eq!(
        t.hits(1),
        100,
        "only the parent's calls: the fork child has no breakpoints"
    );
}

#[test]
fn signals_and_faults_in_slots_are_delivered_as_without_probes() {
    for (tag, extra) in [("boost", ""), ("post", " post")] {
        let bin = build("signals", &format!("sig-{tag}"), &["-O2"]);
        let b = bin.to_string_lossy();
        let t = trace(&[
            "--no-regs",
            "-o",
            "/dev/null",
            "-e",
            &format!("uprobe:{b}:deref{extra}"),
            "-e",
            &format!("uprobe:{b}:work{extra}"),
            "--",
            &b,
            "30000",
        ]);
        let plain = run_plain(&bin, &["30000"]);
        assert_eq!(t.status, Some(0), "{tag}: {}", t.stderr);
        let expect = String::from_utf8_lossy(&plain.stdout);
        let alarms: u64 = t
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("alarms="))
            .and_then(|n| n.parse().ok())
            .expect("the fixture reports its alarms");
        assert!(alarms > 0, "{tag}: alarms came while probes were hit");
        assert!(
            expect.contains("fault at deref: yes, si_addr=0") && expect.contains("outside=0"),
            "{expect}"
        );
        assert_eq!(
            t.stdout, expect,
            "{tag}: the handler saw the original address, never a slot"
        );
    }
}

#[test]
fn fault_hit_counts_equal_the_kernel_uprobe() {
    let bin = build("signals", "sig-oracle", &["-O2"]);
    let b = bin.to_string_lossy();
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:deref"),
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        "20000",
    ]);
    assert_eq!((t.hits(1), t.hits(2)), (1, 20000), "{}", t.stderr);
    if tracefs_available() {
        let k = kernel_uprobe_counts(&bin, &[("deref", 0), ("work", 0)], || {
            run_plain(&bin, &["20000"]);
        });
        assert_eq!(k, vec![1, 20000]);
    }
}

#[test]
fn exec_ends_probes_unless_followed() {
    let execer = build("execer", "exec", &["-O2"]);
    let basic = build("basic", "exec-target", &["-O2"]);
    let (e, b) = (execer.to_string_lossy(), basic.to_string_lossy());
    let specs = [format!("uprobe:{e}:work"), format!("uprobe:{b}:work")];
    let plain = run_plain(&execer, &[&b, "4"]);
    assert_eq!(plain.status.code(), Some(7));
    // By default the old probes end at exec and the new image runs untraced.
    let t = trace(&[
        "--no-regs",
        "-e",
        &specs[0],
        "-e",
        &specs[1],
        "--",
        &e,
        &b,
        "4",
    ]);
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    assert_eq!((t.hits(1), t.hits(2)), (3, 0));
    assert!(t.stderr.contains("ended its probes"), "{}", t.stderr);
    let own: String = t
        .stdout
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(own, String::from_utf8_lossy(&plain.stdout));
    // Followed, the probe on the new image's `work` is armed after exec.
    let t = trace(&[
        "--no-regs",
        "--follow-exec",
        "-e",
        &specs[0],
        "-e",
        &specs[1],
        "--",
        &e,
        &b,
        "4",
    ]);
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    assert_eq!((t.hits(1), t.hits(2)), (3, 4));
}

#[test]
fn fork_children_can_be_followed() {
    let bin = build("forker", "follow", &["-O2"]);
    let b = bin.to_string_lossy();
    let t = trace(&[
        "--no-regs",
        "--follow-fork",
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        "100",
        "50",
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert!(t.stdout.contains("fork child: exit 0"), "{}", t.stdout);
    assert_eq!(t.hits(1), 150, "the parent's 100 calls and the child's 50");
    let pids: std::collections::HashSet<u64> =
        t.events.iter().filter_map(|e| e["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 2);
}

#[test]
fn a_target_killed_mid_hit_ends_the_trace_cleanly() {
    let bin = build("spin", "killed", &["-O2"]);
    let events = scratch_dir().join("killed.jsonl");
    let _ = std::fs::remove_file(&events);
    let wprobe = Command::new(wprobe_bin())
        .args(["trace", "--no-regs", "-o"])
        .arg(&events)
        .args([
            "-e",
            &format!("uprobe:{}:work", bin.display()),
            "-e",
            "uprobe:libc:usleep post",
            "--",
        ])
        .arg(&bin)
        .args(["100000", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wprobe");
    assert!(wait_until(60, || std::fs::metadata(&events)
        .map(|m| m.len() > 5000)
        .unwrap_or(false)));
    let pid = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .next()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["pid"].as_i64())
        .expect("a pid in the events") as i32;
    // SAFETY: killing the traced fixture.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let out = wprobe.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGKILL), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    let (_, summary) = parse_jsonl(&std::fs::read_to_string(&events).unwrap());
    assert_eq!(summary.expect("summary")["exit"]["signal"], libc::SIGKILL);
}

#[test]
fn a_thread_blocked_in_a_stepped_syscall_survives_detach() {
    let bin = build("sysprobe", "read", &["-O2"]);
    let off = syscall_offset(&libc_path(), "read");
    // `post` on a `syscall` makes the engine single-step it in its slot:
    // the thread sits there, blocked in read, when Ctrl-C comes.
    let events = scratch_dir().join("stepped-read.jsonl");
    let _ = std::fs::remove_file(&events);
    let mut wprobe = start_trace_ready(&[
        "--no-regs".into(),
        "-o".into(),
        events.to_string_lossy().into_owned(),
        "-e".into(),
        format!("uprobe:libc:read+{off:#x} post"),
        "--".into(),
        bin.to_string_lossy().into_owned(),
        "read".into(),
    ]);
    // The hit's event names the process; then it blocks in read (syscall
    // 0) inside the slot. Ctrl-C only then, and the input only once the
    // engine has let go.
    let mut pid = 0;
    assert!(wait_until(60, || {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        pid = parse_jsonl(&text)
            .0
            .first()
            .and_then(|e| e["pid"].as_i64())
            .unwrap_or(0) as i32;
        pid != 0
    }));
    let in_read = || {
        std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|s| s.starts_with("0 "))
    };
    assert!(wait_until(60, in_read), "blocked in read");
    sigint(&wprobe);
    assert!(wait_until(60, || proc_status(pid, "TracerPid:").as_deref()
        == Some("0")));
    assert!(in_read(), "still blocked in read after the detach");
    use std::io::Write;
    wprobe
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"hello\n")
        .unwrap();
    drop(wprobe.stdin.take());
    let out = wprobe.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got 6: hello\n");
}

#[test]
fn threads_and_vfork_children_born_in_a_stepped_slot() {
    let bin = build("sysprobe", "clone", &["-O2"]);
    let off = syscall_offset(&libc_path(), "clone");
    for extra in ["", " post"] {
        let t = trace(&[
            "--no-regs",
            "-e",
            &format!("uprobe:libc:clone+{off:#x}{extra}"),
            "--",
            &bin.to_string_lossy(),
            "clone",
        ]);
        assert_eq!(t.status, Some(0), "`{extra}`: {}", t.stderr);
        assert!(
            t.stdout.contains("thread ran\nvfork child status 0\n"),
            "{}",
            t.stdout
        );
        assert_eq!(t.hits(1), 2);
    }
}

#[test]
fn ctrl_c_while_the_target_forks() {
    let bin = build("sysprobe", "forkloop", &["-O2"]);
    let fork_off = syscall_offset(&libc_path(), "_Fork");
    for round in 0..3 {
        let wprobe = start_trace_ready(&[
            "--no-regs".into(),
            "-o".into(),
            "/dev/null".into(),
            "-e".into(),
            format!("uprobe:libc:_Fork+{fork_off:#x}"),
            "--".into(),
            bin.to_string_lossy().into_owned(),
            "forkloop".into(),
            "3000".into(),
        ]);
        std::thread::sleep(Duration::from_millis(50 + 70 * round));
        sigint(&wprobe);
        let out = wprobe.wait_with_output().unwrap();
        // No child left stopped and traced (the loop would hang), none
        // killed by a stray breakpoint, no fork() that failed.
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "forks=3000 bad=0\n");
    }
}

#[test]
fn clone_vm_children_are_processes_of_their_own_in_our_memory() {
    let bin = build("sysprobe", "vm", &["-O2"]);
    let b = bin.to_string_lossy();
    // The child execs: only it leaves; the parent's probes go on.
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        "vmexec",
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert!(t.stdout.contains("vmexec: child 0, s=70"), "{}", t.stdout);
    assert_eq!(t.hits(1), 10);
    // The parent exits first: the child, still in the probed memory, is
    // let go with the original bytes and finishes.
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        "vmlive",
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert!(t.stdout.contains("vm child done: 35"), "{}", t.stdout);
}

#[test]
fn ctrl_c_while_a_vfork_child_is_slow_to_exec() {
    let bin = build("forker", "vfork-slow", &["-O2"]);
    // forker's vfork child execs /bin/true at once; attach to a spin-like
    // loop of vforks would race, so use the fork fixture in a loop instead:
    // a parent held in vfork must not keep wprobe from detaching.
    let live = LiveTrace::start(
        "vfork-slow",
        &[
            "-e".into(),
            format!("uprobe:{}:work", bin.display()),
            "--".into(),
            bin.to_string_lossy().into_owned(),
            "200000".into(),
            "10".into(),
        ],
    );
    live.wait_for_events("events", |t| t.len() > 1000);
    let (out, _) = live.interrupt();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("fork child: exit 0") && stdout.contains("vfork child: exit 0"),
        "{stdout}"
    );
}
