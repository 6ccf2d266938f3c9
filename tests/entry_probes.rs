//! Entry probes on real processes: hits counted exactly (and equal to the
//! kernel's own uprobes), captures, post events, several probes at one
//! address, threads, PIE and non-PIE, libraries by soname and by dlopen,
//! C++ names, separate debug files, listing.

use std::process::Command;

use serde_json::json;
use wprobe_tests::*;

/// Runs `basic` with `n` iterations under the given specs (`BIN` in a
/// spec stands for the fixture's path).
fn trace_basic(tag: &str, flags: &[&str], n: u64, specs: &[&str]) -> (std::path::PathBuf, Trace) {
    let bin = build("basic", tag, flags);
    let b = bin.to_string_lossy().into_owned();
    let specs: Vec<String> = specs.iter().map(|s| s.replace("BIN", &b)).collect();
    let mut args: Vec<&str> = Vec::new();
    for s in &specs {
        args.push("-e");
        args.push(s);
    }
    let n = n.to_string();
    args.extend(["--", &b, &n]);
    let t = trace(&args);
    (bin, t)
}

#[test]
fn hits_are_exact_pie_non_pie_and_static() {
    for (tag, flags) in [
        ("pie", &["-O2", "-fPIE", "-pie"][..]),
        ("nopie", &["-O0", "-fno-pie", "-no-pie"][..]),
        ("static", &["-O2", "-static"][..]),
    ] {
        let (bin, t) = trace_basic(tag, flags, 1000, &["uprobe:BIN:work", "uprobe:BIN:greet"]);
        let plain = run_plain(&bin, &["1000"]);
        assert_eq!(
            t.status,
            Some(7),
            "{tag}: exit status is the command's\n{}",
            t.stderr
        );
        assert_eq!(t.hits(1), 1000, "{tag}: work");
        assert_eq!(t.hits(2), 2, "{tag}: greet");
        assert_eq!(t.events_of(1, "entry").len(), 1000);
        // The program's own output is untouched (events are JSON lines).
        let own: Vec<&str> = t.stdout.lines().filter(|l| !l.starts_with('{')).collect();
        assert_eq!(
            own.join("\n") + "\n",
            String::from_utf8_lossy(&plain.stdout)
        );
        // The jprobe view: the first argument of work(i) is i.
        let firsts: Vec<u64> = t
            .events_of(1, "entry")
            .iter()
            .map(|e| e["args"][0].as_u64().expect("arg"))
            .collect();
        assert_eq!(
            firsts,
            (0..1000).collect::<Vec<u64>>(),
            "{tag}: args in order"
        );
        let e = t.events_of(1, "entry")[0];
        assert_eq!(
            e["regs"]["rip"].as_u64(),
            u64::from_str_radix(e["addr"].as_str().unwrap().trim_start_matches("0x"), 16).ok()
        );
        assert_eq!(e["pid"], e["tid"]);
    }
}

#[test]
fn counts_equal_the_kernel_uprobe() {
    if !tracefs_available() {
        return;
    }
    let bin = build("basic", "oracle", &["-O2"]);
    let kernel = kernel_uprobe_counts(&bin, &[("work", 0), ("greet", 0), ("hidden", 0)], || {
        assert!(run_plain(&bin, &["777"]).status.code() == Some(7));
    });
    let b = bin.to_string_lossy();
    let t = trace(&[
        "-o",
        "/dev/null",
        "-e",
        &format!("uprobe:{b}:work"),
        "-e",
        &format!("uprobe:{b}:greet"),
        "-e",
        &format!("uprobe:{b}:hidden"),
        "--",
        &b,
        "777",
    ]);
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    // With -o the summary goes to the file too; read it from there instead.
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:work"),
        "-e",
        &format!("uprobe:{b}:greet"),
        "-e",
        &format!("uprobe:{b}:hidden"),
        "--",
        &b,
        "777",
    ]);
    assert_eq!(vec![t.hits(1), t.hits(2), t.hits(3)], kernel);
    assert_eq!(kernel, vec![777, 2, 777]);
}

#[test]
fn output_file_keeps_stdout_exact() {
    let bin = build("basic", "ofile", &["-O2"]);
    let events = scratch_dir().join("ofile-events.jsonl");
    let b = bin.to_string_lossy();
    let out = Command::new(wprobe_bin())
        .args(["trace", "-o"])
        .arg(&events)
        .args(["-e", &format!("uprobe:{b}:work"), "--", &b, "50"])
        .output()
        .expect("run wprobe");
    let plain = run_plain(&bin, &["50"]);
    assert_eq!(
        out.stdout, plain.stdout,
        "byte for byte the command's own stdout"
    );
    assert_eq!(out.status.code(), Some(7));
    let (ev, summary) = parse_jsonl(&std::fs::read_to_string(&events).expect("events file"));
    assert_eq!(ev.len(), 50);
    assert_eq!(summary.expect("summary")["probes"][0]["hits"], 50);
}

#[test]
fn captures_read_at_the_hit() {
    let (_, t) = trace_basic(
        "capture",
        &["-O2"],
        3,
        &["uprobe:BIN:greet name=+0(%rdi):string first=+0(%rdi):u8 raw=%rdi:bytes[3] x=$arg1:x64 bad=+0(@0x10):string"],
    );
    let ev = t.events_of(1, "entry");
    assert_eq!(ev.len(), 2, "{}", t.stderr);
    let names: Vec<&str> = ev
        .iter()
        .map(|e| e["captures"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(ev[0]["captures"]["first"], u64::from(b'a'));
    assert_eq!(ev[1]["captures"]["raw"], "626f62");
    assert_eq!(
        ev[0]["captures"]["x"].as_str().unwrap(),
        format!("{:#x}", ev[0]["args"][0].as_u64().unwrap())
    );
    assert!(ev[0]["captures"]["bad"]["error"]
        .as_str()
        .unwrap()
        .contains("0x10"));
}

#[test]
fn post_events_see_the_instruction_done() {
    // At -O0 `work` starts with `push rbp`: after it, rsp is 8 lower.
    let (_, t) = trace_basic(
        "post",
        &["-O0"],
        5,
        &["uprobe:BIN:work post", "uprobe:BIN:work"],
    );
    let entries = t.events_of(1, "entry");
    let posts = t.events_of(1, "post");
    assert_eq!((entries.len(), posts.len()), (5, 5), "{}", t.stderr);
    for (e, p) in entries.iter().zip(&posts) {
        assert_eq!(
            p["regs"]["rsp"].as_u64().unwrap() + 8,
            e["regs"]["rsp"].as_u64().unwrap()
        );
        assert_eq!(
            p["regs"]["rip"].as_u64().unwrap(),
            e["regs"]["rip"].as_u64().unwrap() + 1
        );
    }
    // The second probe at the same address fires on every hit too, with
    // no post events of its own.
    assert_eq!(t.hits(2), 5);
    assert!(t.events_of(2, "post").is_empty());
}

#[test]
fn threads_created_later_are_followed() {
    let bin = build("threads", "follow", &["-O2"]);
    let b = bin.to_string_lossy();
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        "2000",
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(t.hits(1), 8000);
    let tids: std::collections::HashSet<u64> =
        t.events.iter().filter_map(|e| e["tid"].as_u64()).collect();
    assert_eq!(tids.len(), 4, "four threads hit the probe");
    assert!(t
        .stdout
        .contains(&String::from_utf8_lossy(&run_plain(&bin, &["2000"]).stdout).to_string()));
    if tracefs_available() {
        let k = kernel_uprobe_counts(&bin, &[("work", 0)], || {
            run_plain(&bin, &["2000"]);
        });
        assert_eq!(k, vec![8000]);
    }
}

#[test]
fn library_probes_by_soname() {
    let (_, t) = trace_basic(
        "soname",
        &["-O2"],
        3,
        &["uprobe:libc:malloc size=%rdi:u64", "uprobe:libc:free"],
    );
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    // Armed once libc was mapped by the dynamic linker, before main.
    assert!(t.stderr.contains("libc.so.6:malloc"), "{}", t.stderr);
    let sizes: Vec<u64> = t
        .events_of(1, "entry")
        .iter()
        .filter_map(|e| e["captures"]["size"].as_u64())
        .collect();
    assert!(sizes.contains(&100), "malloc(100) seen: {sizes:?}");
    assert!(t.hits(2) >= 1);
}

#[test]
fn dlopen_arms_pending_probes_and_dlclose_retires_them() {
    let lib = build_dlt_library("libdlt-pending.so");
    let bin = build("dlmain", "pending", &["-O2"]);
    let (b, l) = (bin.to_string_lossy(), lib.to_string_lossy());
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{l}:dl_func"),
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        &l,
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert!(t.stderr.contains("pending"), "{}", t.stderr);
    assert_eq!(t.hits(1), 5);
    assert_eq!(t.hits(2), 2);
    assert!(
        t.stderr.contains("gone"),
        "dlclose retires the probe: {}",
        t.stderr
    );
    assert!(t.stdout.contains("sum=81"), "{}", t.stdout);
}

#[test]
fn events_say_which_probe_module_and_function_they_are() {
    // Each line stands alone (a run killed before its summary still says
    // what fired): the spec, the module, the symbol and offset.
    let bin = build("basic", "place", &["-O2"]);
    let b = bin.to_string_lossy();
    let libc = libc_path();
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:work"),
        "-e",
        &format!("uretprobe:{b}:work"),
        "-e",
        "uprobe:libc:exit",
        "--",
        &b,
        "3",
    ]);
    let check = |probe: u64, kind: &str, spec: &str, module: &str, symbol: &str| {
        let events = t.events_of(probe, kind);
        assert!(!events.is_empty(), "probe {probe}: {}", t.stdout);
        for e in events {
            assert_eq!(
                (&e["spec"], &e["module"], &e["symbol"]),
                (&json!(spec), &json!(module), &json!(symbol)),
                "{e}"
            );
        }
    };
    check(1, "entry", &format!("uprobe:{b}:work"), &b, "work");
    check(2, "return", &format!("uretprobe:{b}:work"), &b, "work");
    check(
        3,
        "entry",
        "uprobe:libc:exit",
        &libc.to_string_lossy(),
        "exit",
    );
}

#[test]
fn a_probe_refused_in_a_library_loaded_later_leaves_the_program_alone() {
    // Not among the libraries the program needs at start: only dlopen
    // shows that the symbol is not there. The program must run on, its
    // other probes too; never be killed.
    let lib = build_dlt_library("libdlt-later.so");
    let bin = build("dlmain", "later", &["-O2"]);
    let (b, l) = (bin.to_string_lossy(), lib.to_string_lossy());
    let t = trace(&[
        "--no-regs",
        "-e",
        "uprobe:libdlt-later:dl_fnuc",
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        &l,
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert!(t.stderr.contains("loads it later (dlopen)"), "{}", t.stderr);
    assert!(t.stderr.contains("no symbol `dl_fnuc`"), "{}", t.stderr);
    assert!(
        t.stderr.contains("runs on without this probe"),
        "{}",
        t.stderr
    );
    assert!(t.stdout.contains("sum=81"), "{}", t.stdout);
    assert_eq!(t.hits(2), 2);
    let summary = t.summary.as_ref().expect("summary");
    assert!(
        summary["probes"][0]["refused"]
            .as_str()
            .is_some_and(|r| r.contains("dl_fnuc")),
        "{summary}"
    );
    assert_eq!(summary["exit"]["code"], 0);
}

#[test]
fn cxx_names_are_demangled() {
    let bin = build("cxx", "demangle", &["-O2"]);
    let b = bin.to_string_lossy();
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:ns::Widget::frob"),
        "--",
        &b,
    ]);
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(t.hits(1), 3);
    let out = Command::new(wprobe_bin())
        .args(["trace", "-l", &format!("uprobe:{b}:ns::Widget::*")])
        .output()
        .expect("list");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ns::Widget::frob(int)"));
}

#[test]
fn separate_debug_file_gives_static_functions() {
    let bin = build("basic", "debuglink", &["-O2"]);
    let debug = bin.with_extension("debug");
    let run = |args: &[&std::ffi::OsStr]| {
        assert!(Command::new("objcopy")
            .args(args)
            .status()
            .expect("objcopy")
            .success());
    };
    run(&[
        "--only-keep-debug".as_ref(),
        bin.as_os_str(),
        debug.as_os_str(),
    ]);
    assert!(Command::new("strip")
        .args(["--strip-debug", "--strip-unneeded"])
        .arg(&bin)
        .status()
        .unwrap()
        .success());
    let link = format!("--add-gnu-debuglink={}", debug.display());
    run(&[link.as_ref(), bin.as_os_str()]);
    let b = bin.to_string_lossy();
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{b}:hidden"),
        "--",
        &b,
        "9",
    ]);
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    assert_eq!(t.hits(1), 9);
}

#[test]
fn list_matches_globs_and_stems() {
    let out = Command::new(wprobe_bin())
        .args(["trace", "-l", "uprobe:libc:mall*"])
        .output()
        .expect("list");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().any(|l| l.ends_with("libc.so.6:malloc")),
        "{text}"
    );
    assert!(
        text.lines()
            .all(|l| l.contains("libc.so") && !l.contains("libcrypto")),
        "{text}"
    );
    let none = Command::new(wprobe_bin())
        .args(["trace", "-l", "uprobe:libc:zzzz*"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
}

#[test]
fn attach_to_a_running_process_with_threads() {
    let bin = build("spin", "attach", &["-O2"]);
    let mut child = Command::new(&bin)
        .args(["3000", "3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start spin");
    let pid = child.id().to_string();
    // Wait for "ready", then attach while it runs.
    let mut first = [0u8; 6];
    use std::io::Read;
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    let t = trace(&[
        "--no-regs",
        "-e",
        &format!("uprobe:{}:work", bin.display()),
        "-p",
        &pid,
    ]);
    let status = child.wait().expect("spin exits");
    assert!(status.success());
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    // Attached after some calls: fewer than all, but many, from 3 threads.
    let hits = t.hits(1);
    assert!(hits > 0 && hits <= 9000, "hits {hits}");
    let tids: std::collections::HashSet<u64> =
        t.events.iter().filter_map(|e| e["tid"].as_u64()).collect();
    assert_eq!(tids.len(), 3, "all threads were taken");
}

#[test]
fn paths_as_the_process_sees_them_in_a_chroot() {
    // A program in a chroot maps /app, which is JAIL/app here: a spec names
    // the file as the process sees it, through /proc/PID/root.
    let bin = build("basic", "chroot", &["-O2", "-static"]);
    let jail = scratch_dir().join("jail");
    std::fs::create_dir_all(&jail).unwrap();
    std::fs::copy(&bin, jail.join("app")).unwrap();
    let j = jail.to_string_lossy();
    let t = trace(&[
        "--no-regs",
        "--follow-exec",
        "-e",
        "uprobe:/app:work",
        "-e",
        "uprobe:/app:greet s=+0(%rdi):string",
        "--",
        "chroot",
        &j,
        "/app",
        "3",
    ]);
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    assert_eq!((t.hits(1), t.hits(2)), (3, 2));
    let names: Vec<&str> = t
        .events_of(2, "entry")
        .iter()
        .map(|e| e["captures"]["s"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
}
