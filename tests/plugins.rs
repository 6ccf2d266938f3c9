//! WebAssembly handler plugins on real processes, through `wprobe trace
//! --plugin`: each example plugin (plugins/, in Rust and in C) with exact
//! results, a plugin swapped while its target keeps hitting, a plugin that
//! misbehaves, and a sync plugin that changes what a function returns.

use std::process::Command;

use serde_json::Value;
use wprobe_tests::*;

/// The summary line of the plugin named `name`.
fn summary_of<'a>(t: &'a Trace, name: &str) -> &'a Value {
    t.events
        .iter()
        .find_map(|e| e.get("plugin").filter(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no summary of plugin {name}; stderr:\n{}", t.stderr))
}

/// The values of map `map` of a plugin summary, as (key, value) pairs.
fn map<'a>(summary: &'a Value, map: &str) -> Vec<(&'a Value, &'a Value)> {
    summary["maps"][map]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no map {map} in {summary}"))
        .iter()
        .map(|v| (&v["key"], &v["value"]))
        .collect()
}

/// A histogram value as (low, count) pairs.
fn buckets(hist: &Value) -> Vec<(i64, u64)> {
    hist.as_array()
        .expect("buckets")
        .iter()
        .map(|b| (b["low"].as_i64().unwrap(), b["count"].as_u64().unwrap()))
        .collect()
}

/// The records a plugin emitted.
fn records<'a>(t: &'a Trace, name: &str) -> Vec<&'a Value> {
    t.events
        .iter()
        .filter(|e| e["plugin"] == name)
        .map(|e| &e["record"])
        .collect()
}

const LANGS: [&str; 2] = ["rust", "c"];

#[test]
fn count_is_exact_per_probe_and_per_thread() {
    let bin = build("threads", "plugin-count", &["-O2"]);
    let b = bin.to_string_lossy();
    for lang in LANGS {
        let p = example_plugin(&format!("count.{lang}.wasm"));
        let t = trace(&[
            "--plugin",
            &p.to_string_lossy(),
            "-e",
            &format!("uprobe:{b}:work"),
            "--",
            &b,
            "2000",
        ]);
        assert_eq!(t.status, Some(0), "{}", t.stderr);
        assert_eq!(t.hits(1), 8000);
        let s = summary_of(&t, &format!("count-{lang}"));
        assert_eq!(
            map(s, "hits_by_probe"),
            vec![(&Value::from(1), &Value::from(8000))]
        );
        let by_tid = map(s, "hits_by_tid");
        assert_eq!(by_tid.len(), 4, "four threads: {by_tid:?}");
        assert!(by_tid.iter().all(|(_, n)| **n == 2000), "{by_tid:?}");
        assert_eq!(s["stats"]["faults"], 0);
        // Without --events, the raw events are not printed.
        assert!(t.events.iter().all(|e| e.get("kind").is_none()));
        // The maps also print as text, bpftrace's way.
        assert!(t.stderr.contains("@hits_by_probe[1]: 8000"), "{}", t.stderr);
    }
}

#[test]
fn args_records_carry_each_call_s_arguments() {
    let bin = build("basic", "plugin-args", &["-O2"]);
    let b = bin.to_string_lossy();
    for lang in LANGS {
        let p = example_plugin(&format!("args.{lang}.wasm"));
        let t = trace(&[
            "--plugin",
            &p.to_string_lossy(),
            "--events",
            "-e",
            &format!("uprobe:{b}:work"),
            "--",
            &b,
            "50",
        ]);
        assert_eq!(t.status, Some(7), "{}", t.stderr);
        let recs = records(&t, &format!("args-{lang}"));
        let firsts: Vec<u64> = recs
            .iter()
            .map(|r| r["args"][0].as_u64().unwrap())
            .collect();
        assert_eq!(firsts, (0..50).collect::<Vec<u64>>());
        // And each equals the event's own view of the arguments.
        let events: Vec<&Value> = t.events.iter().filter(|e| e["kind"] == "entry").collect();
        assert_eq!(events.len(), 50);
        for (r, e) in recs.iter().zip(&events) {
            assert_eq!(r["args"], e["args"]);
            assert_eq!(r["tid"], e["tid"]);
        }
    }
}

/// The low bound of the log2 bucket that holds `ns` (as the plugins'
/// histograms count).
fn log2_bucket(ns: i64) -> i64 {
    1 << (63 - ns.leading_zeros())
}

#[test]
fn latency_histogram_pairs_each_return_with_its_entry() {
    let bin = build("plugged", "plugin-latency", &["-O2"]);
    let b = bin.to_string_lossy();
    for lang in LANGS {
        let p = example_plugin(&format!("latency.{lang}.wasm"));
        let t = trace(&[
            "--plugin",
            &p.to_string_lossy(),
            "-e",
            &format!("uretprobe:{b}:slow"),
            "--",
            &b,
            "slow",
        ]);
        assert_eq!(t.status, Some(0), "{}", t.stderr);
        assert!(t.stdout.contains("slept=10000"), "{}", t.stdout);
        let s = summary_of(&t, &format!("latency-{lang}"));
        let hist = map(s, "latency_ns");
        assert_eq!(hist.len(), 1, "one series: {hist:?}");
        let b = buckets(hist[0].1);
        let total: u64 = b.iter().map(|x| x.1).sum();
        assert_eq!(total, 10, "every call, once: {b:?}");
        // The five 2 ms sleeps take at least 2 ms, and at most anything:
        // 2.0–2.1 ms is the bucket [2^20, 2^21), more its neighbours above.
        // Their bucket is at least the one that holds 2 ms exactly. (The
        // five others are short, but how short depends on the machine's
        // load, so they may land anywhere too.)
        let floor = log2_bucket(2_000_000);
        assert_eq!(floor, 1 << 20);
        let long: u64 = b.iter().filter(|x| x.0 >= floor).map(|x| x.1).sum();
        assert!(long >= 5, "{b:?}");
        assert!(b.iter().all(|x| x.0 > 0), "no call takes no time: {b:?}");
        assert_eq!(s["stats"]["faults"], 0, "{s}");
    }
}

#[test]
fn malloc_sizes_by_thread() {
    let bin = build("plugged", "plugin-malloc", &["-O2"]);
    let b = bin.to_string_lossy();
    for lang in LANGS {
        let p = example_plugin(&format!("mallocsize.{lang}.wasm"));
        // On the program's own wrapper, the sizes are exactly known.
        let t = trace(&[
            "--plugin",
            &p.to_string_lossy(),
            "-e",
            &format!("uprobe:{b}:alloc_one"),
            "--",
            &b,
            "allocs",
        ]);
        assert_eq!(t.status, Some(0), "{}", t.stderr);
        let s = summary_of(&t, &format!("mallocsize-{lang}"));
        let series = map(s, "malloc_size");
        assert_eq!(series.len(), 1, "one thread: {series:?}");
        assert_eq!(
            buckets(series[0].1),
            vec![(16, 25), (64, 25), (512, 25), (4096, 25)]
        );
        // On libc's malloc itself, those calls are among all the others.
        let t = trace(&[
            "--plugin",
            &p.to_string_lossy(),
            "-e",
            "uprobe:libc:malloc",
            "--",
            &b,
            "allocs",
        ]);
        assert_eq!(t.status, Some(0), "{}", t.stderr);
        let s = summary_of(&t, &format!("mallocsize-{lang}"));
        let all: u64 = map(s, "malloc_size")
            .iter()
            .flat_map(|(_, h)| buckets(h))
            .map(|x| x.1)
            .sum();
        assert_eq!(all, t.hits(1), "every hit in the histogram");
        let got = buckets(map(s, "malloc_size")[0].1);
        for low in [16, 64, 512, 4096] {
            let n = got.iter().find(|x| x.0 == low).map_or(0, |x| x.1);
            assert!(n >= 25, "bucket {low}: {got:?}");
        }
    }
}

#[test]
fn strings_read_the_paths_given_to_open() {
    let bin = build("plugged", "plugin-strings", &["-O2"]);
    let b = bin.to_string_lossy();
    for lang in LANGS {
        let p = example_plugin(&format!("strings.{lang}.wasm"));
        let name = format!("strings-{lang}");
        // The program's own function, path in the first argument, read by
        // the plugin while the thread waits (--sync): an async handler
        // runs after the hit, when the program may have ended already.
        let t = trace(&[
            "--plugin",
            &p.to_string_lossy(),
            "--sync",
            "-e",
            &format!("uprobe:{b}:open_path"),
            "--",
            &b,
            "opens",
        ]);
        assert_eq!(t.status, Some(0), "{}", t.stderr);
        let counts: Vec<(String, u64)> = map(summary_of(&t, &name), "strings")
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_u64().unwrap()))
            .collect();
        assert_eq!(
            counts,
            vec![("/etc/hostname".into(), 3), ("/nonexistent/x".into(), 2)]
        );
        assert_eq!(records(&t, &name).len(), 5);
        // libc's open (glibc's open makes the system call itself, so
        // libc's `openat` would not see it), async: the path is captured
        // at the hit; the configuration names the argument the plugin
        // would read without a capture.
        let t = trace(&[
            "--plugin",
            &format!("{}:{{\"arg\": 0}}", p.display()),
            "-e",
            "uprobe:libc:open path=+0(%rdi):string",
            "--",
            &b,
            "opens",
        ]);
        assert_eq!(t.status, Some(0), "{}", t.stderr);
        let s = summary_of(&t, &name);
        let find = |path: &str| {
            map(s, "strings")
                .iter()
                .find(|(k, _)| *k == path)
                .and_then(|(_, v)| v.as_u64())
        };
        assert_eq!(find("/etc/hostname"), Some(3), "{s}");
        assert_eq!(find("/nonexistent/x"), Some(2), "{s}");
        // A configuration the plugin refuses stops the trace before the
        // program runs.
        let t = trace(&[
            "--plugin",
            &format!("{}:{{\"arg\": 9}}", p.display()),
            "-e",
            "uprobe:libc:openat",
            "--",
            &b,
            "opens",
        ]);
        assert_eq!(t.status, Some(2), "{}", t.stderr);
        assert!(t.stderr.contains("wprobe_init refused"), "{}", t.stderr);
        assert!(!t.stdout.contains("opened="), "the program did not run");
    }
}

#[test]
fn a_plugin_swapped_while_its_target_hits_loses_and_doubles_nothing() {
    let bin = build("plugged", "plugin-swap", &["-O2"]);
    let b = bin.to_string_lossy();
    let file = scratch_dir().join("swap.wasm");
    std::fs::copy(example_plugin("count.rust.wasm"), &file).unwrap();
    let live = LiveTrace::start(
        "swap",
        &[
            "--events".into(),
            "--plugin".into(),
            file.to_string_lossy().into_owned(),
            "-e".into(),
            format!("uprobe:{b}:work"),
            "--".into(),
            b.to_string(),
            "loop".into(),
            "20000".into(),
        ],
    );
    live.wait_for_events("hits", |t| t.matches("\"kind\"").count() > 1000);
    // The C version replaces the Rust one while the loop runs.
    std::fs::copy(example_plugin("count.c.wasm"), &file).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(live.child.id() as i32, libc::SIGHUP) };
    let out = live.child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("reloaded"), "{stderr}");
    let t = Trace {
        status: out.status.code(),
        events: parse_jsonl(&std::fs::read_to_string(&live.events).unwrap()).0,
        summary: parse_jsonl(&std::fs::read_to_string(&live.events).unwrap()).1,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: stderr.into_owned(),
    };
    assert_eq!(t.hits(1), 20000);
    let after = t.events.iter().filter(|e| e.get("kind").is_some()).count();
    assert_eq!(after, 20000, "every event was printed");
    // The summary carries the new version's name; the map both versions
    // counted into holds every hit exactly once.
    let s = summary_of(&t, "count-c");
    assert_eq!(
        map(s, "hits_by_probe"),
        vec![(&Value::from(1), &Value::from(20000))]
    );
    let sum: i64 = (0..20000).map(|i| i * 3 + 1).sum();
    assert!(t.stdout.contains(&format!("sum={sum}")), "{}", t.stdout);
}

/// A plugin in WebAssembly text that loops forever in its handler.
const SPINNER: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) (loop $l (br $l)) i32.const 0))"#;

#[test]
fn a_plugin_that_never_returns_is_quarantined_and_the_target_runs_on() {
    let bin = build("basic", "plugin-spin", &["-O2"]);
    let b = bin.to_string_lossy();
    let file = scratch_dir().join("spinner.wasm");
    std::fs::write(&file, SPINNER).unwrap();
    let good = example_plugin("count.c.wasm");
    let t = trace(&[
        "--plugin",
        &file.to_string_lossy(),
        "--plugin",
        &good.to_string_lossy(),
        "-e",
        &format!("uprobe:{b}:work"),
        "--",
        &b,
        "100",
    ]);
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    let plain = Command::new(&bin).arg("100").output().unwrap();
    assert!(t
        .stdout
        .starts_with(&*String::from_utf8_lossy(&plain.stdout)));
    assert!(t.stderr.contains("deadline"), "{}", t.stderr);
    assert!(
        t.stderr.contains("quarantined after 5 faults"),
        "{}",
        t.stderr
    );
    let s = summary_of(&t, "spinner");
    assert_eq!(s["stats"]["calls"], 5);
    assert!(s["stats"]["quarantined"]
        .as_str()
        .unwrap()
        .contains("deadline"));
    // The other plugin on the same probe never noticed.
    let c = summary_of(&t, "count-c");
    assert_eq!(
        map(c, "hits_by_probe"),
        vec![(&Value::from(1), &Value::from(100))]
    );
}

/// A sync plugin allowed to mutate: every return of `work` becomes 5.
const FIVE: &str = r#"(module
  (import "wprobe" "set_return" (func $set_return (param i64) (result i32)))
  (@custom "wprobe.manifest" "{\"name\":\"five\",\"version\":\"1\",\"abi\":1,\"needs\":{\"mutation\":true}}")
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_return") (param i32 i32) (result i32)
    (drop (call $set_return (i64.const 5))) i32.const 0))"#;

#[test]
fn a_sync_plugin_changes_return_values_only_when_allowed() {
    let bin = build("basic", "plugin-five", &["-O2"]);
    let b = bin.to_string_lossy();
    let file = scratch_dir().join("five.wasm");
    std::fs::write(&file, FIVE).unwrap();
    let hidden: i64 = (0..10).map(|i: i64| i ^ 0x5a).sum();
    let run = |extra: &[&str]| {
        let mut args = vec!["--plugin", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        let spec = format!("uretprobe:{b}:work");
        args.extend_from_slice(&["-e", &spec, "--", &b, "10"]);
        trace(&args)
    };
    let t = run(&["--sync", "--allow-mutation"]);
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    assert!(
        t.stdout.contains(&format!("sum={}\n", 5 * 10 + hidden + 8)),
        "{}",
        t.stdout
    );
    // Async, or sync without --allow-mutation: the program is untouched.
    let plain: i64 = (0..10).map(|i: i64| i * 3 + 1).sum::<i64>() + hidden + 8;
    for extra in [&[][..], &["--sync"][..]] {
        let t = run(extra);
        assert!(
            t.stdout.contains(&format!("sum={plain}\n")),
            "{extra:?}: {}",
            t.stdout
        );
        assert!(
            t.stderr.contains("asks to change registers"),
            "{}",
            t.stderr
        );
    }
}

/// Issue 17: the flags of every event, by kind (`entry` and `return` maps,
/// keyed by the flags byte), and what `set_register` answers at entry.
const FLAGS: &str = r#"(module
  (import "wprobe" "map_update" (func $map_update (param i32 i32 i32 i32 i32 i32 i64) (result i32)))
  (import "wprobe" "set_register" (func $set_register (param i32 i64) (result i32)))
  (@custom "wprobe.manifest" "{\"name\":\"flags\",\"version\":\"1\",\"abi\":1,\"needs\":{\"mutation\":true}}")
  (memory (export "memory") 1)
  (data (i32.const 0) "entryreturnset_register")
  (func $count (param $name i32) (param $len i32) (param $key i64)
    (i64.store (i32.const 64) (local.get $key))
    (drop (call $map_update (i32.const 0) (local.get $name) (local.get $len) (i32.const 2)
                            (i32.const 64) (i32.const 8) (i64.const 0))))
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param $ev i32) (param i32) (result i32)
    (call $count (i32.const 0) (i32.const 5) (i64.load8_u offset=9 (local.get $ev)))
    ;; rdi (index 14) as it is: a change would be harmless, and refused.
    (call $count (i32.const 11) (i32.const 12)
      (i64.extend_i32_s (call $set_register (i32.const 14) (i64.load offset=232 (local.get $ev)))))
    i32.const 0)
  (func (export "wprobe_on_return") (param $ev i32) (param i32) (result i32)
    (call $count (i32.const 5) (i32.const 6) (i64.load8_u offset=9 (local.get $ev)))
    i32.const 0))"#;

#[test]
fn under_sync_a_return_probe_s_entries_are_sync_too() {
    let bin = build("basic", "plugin-flags", &["-O2"]);
    let b = bin.to_string_lossy();
    let file = scratch_dir().join("flags.wasm");
    std::fs::write(&file, FLAGS).unwrap();
    let spec = format!("uretprobe:{b}:work");
    let t = trace(&[
        "--plugin",
        file.to_str().unwrap(),
        "--sync",
        "--allow-mutation",
        "-e",
        &spec,
        "--",
        &b,
        "10",
    ]);
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    let s = summary_of(&t, "flags");
    // Entries: sync (bit 0), never mutation (bit 1): the return is
    // hijacked from the registers as they are. Returns: sync, mutation.
    assert_eq!(
        map(s, "entry"),
        vec![(&Value::from(1), &Value::from(10))],
        "{s}"
    );
    assert_eq!(
        map(s, "return"),
        vec![(&Value::from(3), &Value::from(10))],
        "{s}"
    );
    assert_eq!(
        map(s, "set_register"),
        vec![(&Value::from(-5), &Value::from(10))],
        "{s}"
    );
}

/// A plugin that, at its first hit, counts 9 000 keys in map `keys`: its
/// maps make a summary line of some 200 KB and 130 KB of text bars.
const MANY_KEYS: &str = r#"(module
  (import "wprobe" "map_update"
    (func $map_update (param i32 i32 i32 i32 i32 i32 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "keys")
  (global $done (mut i32) (i32.const 0))
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (local $k i64)
    (if (global.get $done) (then (return (i32.const 0))))
    (global.set $done (i32.const 1))
    (loop $next
      (i64.store (i32.const 64) (local.get $k))
      (drop (call $map_update (i32.const 0) (i32.const 0) (i32.const 4)
                              (i32.const 2) (i32.const 64) (i32.const 8) (i64.const 0)))
      (local.set $k (i64.add (local.get $k) (i64.const 1)))
      (br_if $next (i64.lt_u (local.get $k) (i64.const 9000))))
    i32.const 0))"#;

#[test]
fn a_stop_signal_during_the_summary_cuts_it_and_wprobe_ends() {
    // The plugin's summary line goes out on stdout, which the test reads;
    // then its bars go to stderr, which the test does not read until
    // wprobe ends: past the pipe's 64 KiB, writing them waits for ever.
    // SIGTERM sent once the summary line is seen must end wprobe (it
    // waited on: eprintln! retries a write a signal interrupts), and the
    // summary must say it was cut.
    use std::io::{BufRead, Read};
    let dir = scratch_dir().join("summary-stop");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let plugin = dir.join("keys.wasm");
    std::fs::write(&plugin, MANY_KEYS).expect("write the plugin");
    let mut child = Command::new(wprobe_bin())
        .args(["trace", "--plugin-deadline", "60000", "--plugin"])
        .arg(&plugin)
        .args(["-e", "uprobe:libc:malloc", "--", "sh", "-c", "echo"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run wprobe");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait = std::time::Duration::from_secs(120);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.starts_with(r#"{"plugin""#)) {
        let line = rx
            .recv_timeout(wait)
            .expect("the plugin's summary line within two minutes");
        lines.push(line);
    }
    // SAFETY: signalling the wprobe we started, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let ended = wait_until(60, || child.try_wait().expect("try_wait").is_some());
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        panic!("wprobe did not end within a minute of SIGTERM during its summary");
    }
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    lines.extend(rx.iter());
    let summary: Value = lines
        .iter()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("summary").is_some())
        })
        .unwrap_or_else(|| panic!("no summary line in {} lines", lines.len()));
    assert_eq!(summary["summary"]["cut"], true, "{summary}");
    // What went to stderr is whole lines: the bars cut between two.
    let bars: Vec<&str> = err.lines().filter(|l| l.starts_with("@keys")).collect();
    assert!(bars.len() < 9000, "{} bars: nothing was cut", bars.len());
    for l in &bars {
        assert!(
            l.starts_with("@keys[") && l.ends_with("]: 1"),
            "a cut line: {l:?}"
        );
    }
}

/// Runs `wprobe trace -o FILE ARGS`: the events and summary are the file's,
/// stdout is the program's own.
fn trace_to_file(tag: &str, args: &[&str]) -> Trace {
    let out = scratch_dir().join(format!("{tag}.jsonl"));
    let _ = std::fs::remove_file(&out);
    let mut all = vec!["-o", out.to_str().expect("a UTF-8 path")];
    all.extend_from_slice(args);
    let mut t = trace(&all);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (t.events, t.summary) = parse_jsonl(&text);
    t
}

/// Issue 17, item 1: linear histograms at the ends of `i64`. The first
/// has too many buckets (-4), the others are fine; the handler counts
/// each answer, logs the refusal, and returns it (a fault, so the plugin
/// is quarantined after 5).
const LHIST_ENDS: &str = r#"(module
  (import "wprobe" "map_lhist" (func $lhist (param i32 i32 i32 i32 i32 i64 i64 i64 i64) (result i32)))
  (import "wprobe" "map_update" (func $update (param i32 i32 i32 i32 i32 i32 i64) (result i32)))
  (import "wprobe" "log" (func $log (param i32 i32 i32) (result i32)))
  (@custom "wprobe.manifest" "{\"name\":\"lhist-ends\",\"version\":\"1\",\"abi\":1}")
  (memory (export "memory") 1)
  (data (i32.const 4096) "widehugeendsrc_widerc_hugerc_endsmap_lhist refused its bounds")
  (func $count (param $name i32) (param $rc i32)
    (i64.store (i32.const 4200) (i64.extend_i32_s (local.get $rc)))
    (drop (call $update (i32.const 0) (local.get $name) (i32.const 7) (i32.const 2)
                        (i32.const 4200) (i32.const 8) (i64.const 0))))
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param $ev i32) (param i32) (result i32)
    (local $v i64)
    (local $wide i32)
    (local.set $v (i64.load offset=64 (local.get $ev)))
    ;; -2^63 .. 2^63-1 by 1: index out of bounds before issue 17
    (local.set $wide (call $lhist (i32.const 4096) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0)
      (local.get $v) (i64.const -9223372036854775808) (i64.const 9223372036854775807) (i64.const 1)))
    (call $count (i32.const 4108) (local.get $wide))
    ;; -2^62 .. 2^62 by 2^61: a capacity overflow before issue 17
    (call $count (i32.const 4115) (call $lhist (i32.const 4100) (i32.const 4) (i32.const 0) (i32.const 0)
      (i32.const 0) (local.get $v) (i64.const -4611686018427387904) (i64.const 4611686018427387904)
      (i64.const 2305843009213693952)))
    ;; -2^63 .. 2^63-1 by 2^63-1
    (call $count (i32.const 4122) (call $lhist (i32.const 4104) (i32.const 4) (i32.const 0) (i32.const 0)
      (i32.const 0) (local.get $v) (i64.const -9223372036854775808) (i64.const 9223372036854775807)
      (i64.const 9223372036854775807)))
    (if (local.get $wide)
      (then (drop (call $log (i32.const 0) (i32.const 4129) (i32.const 28)))))
    (local.get $wide)))"#;

#[test]
fn lhist_bounds_at_the_ends_of_i64_are_an_error_code_and_the_trace_goes_on() {
    let bin = build("plugged", "plugin-lhist-ends", &["-O2"]);
    let b = bin.to_string_lossy();
    let file = scratch_dir().join("lhist-ends.wasm");
    std::fs::write(&file, LHIST_ENDS).unwrap();
    let spec = format!("uprobe:{b}:alloc_one");
    let t = trace_to_file(
        "lhist-ends",
        &[
            "--events",
            "--plugin",
            file.to_str().unwrap(),
            "-e",
            &spec,
            "--",
            &b,
            "allocs",
        ],
    );
    // Issue 17: exit 101, the -o file empty, no summary.
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert!(!t.stderr.contains("panicked"), "{}", t.stderr);
    let plain = run_plain(&bin, &["allocs"]);
    assert_eq!(t.stdout, String::from_utf8_lossy(&plain.stdout));
    // The -o file has every event, the plugin's summary and the trace's.
    assert_eq!(t.events_of(1, "entry").len(), 100);
    assert_eq!(t.hits(1), 100);
    let s = summary_of(&t, "lhist-ends");
    // Each call got -4 for the first histogram, made the others, and said
    // so; the handler returned -4, a fault, five times, then quarantine.
    let st = &s["stats"];
    assert_eq!((&st["calls"], &st["faults"]), (&5.into(), &5.into()), "{s}");
    let last = st["last_fault"].as_str().unwrap_or_default();
    assert_eq!(last, "plugin `lhist-ends` handler returned -4", "{s}");
    assert!(
        st["quarantined"]
            .as_str()
            .is_some_and(|q| q.ends_with("the last: plugin `lhist-ends` handler returned -4")),
        "{s}"
    );
    assert_eq!(map(s, "rc_wide"), vec![(&(-4).into(), &5.into())], "{s}");
    assert_eq!(map(s, "rc_huge"), vec![(&0.into(), &5.into())], "{s}");
    assert_eq!(map(s, "rc_ends"), vec![(&0.into(), &5.into())], "{s}");
    assert!(
        s["maps"].get("wide").is_none(),
        "a refused lhist makes no map: {s}"
    );
    // The five sizes (24, 100, 1000, 5000, 24) in the bucket from 0.
    let total = |name: &str| -> u64 { buckets(map(s, name)[0].1).iter().map(|b| b.1).sum() };
    assert_eq!((total("huge"), total("ends")), (5, 5), "{s}");
    assert_eq!(
        buckets(map(s, "huge")[0].1),
        vec![(0, 5)],
        "[0, 2^61) holds them: {s}"
    );
    // The faults, the quarantine, the log and the bars on stderr.
    for said in [
        "wprobe: plugin `lhist-ends` handler returned -4",
        "quarantined after 5 faults in a row",
        "error: map_lhist refused its bounds",
        "@huge:",
        "@ends:",
    ] {
        assert!(t.stderr.contains(said), "`{said}` not in:\n{}", t.stderr);
    }
}

/// Issue 17, item 5: at each hit, 300 new keys in map `k`; answers of
/// -7 (the key cap) summed in map `refused` (made at the first hit, under
/// the cap).
const KEY_HOARDER: &str = r#"(module
  (import "wprobe" "map_update" (func $update (param i32 i32 i32 i32 i32 i32 i64) (result i32)))
  (@custom "wprobe.manifest" "{\"name\":\"hoarder\",\"version\":\"1\",\"abi\":1}")
  (memory (export "memory") 1)
  (global $next (mut i64) (i64.const 0))
  (data (i32.const 4096) "krefused")
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (local $i i32)
    (drop (call $update (i32.const 1) (i32.const 4097) (i32.const 7) (i32.const 0) (i32.const 0)
                        (i32.const 0) (i64.const 0)))
    (loop $l
      (i64.store (i32.const 4200) (global.get $next))
      (global.set $next (i64.add (global.get $next) (i64.const 1)))
      (if (i32.eq (i32.const -7)
            (call $update (i32.const 0) (i32.const 4096) (i32.const 1) (i32.const 2) (i32.const 4200)
                          (i32.const 8) (i64.const 0)))
        (then (drop (call $update (i32.const 1) (i32.const 4097) (i32.const 7) (i32.const 0)
                                  (i32.const 0) (i32.const 0) (i64.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 300))))
    i32.const 0))"#;

#[test]
fn updates_refused_at_the_key_cap_show_in_the_summary() {
    let bin = build("plugged", "plugin-key-cap", &["-O2"]);
    let b = bin.to_string_lossy();
    let file = scratch_dir().join("hoarder.wasm");
    std::fs::write(&file, KEY_HOARDER).unwrap();
    let spec = format!("uprobe:{b}:alloc_one");
    // A long deadline: 300 updates a call must not be cut on a busy machine.
    let t = trace_to_file(
        "key-cap",
        &[
            "--plugin-deadline",
            "5000",
            "--plugin",
            file.to_str().unwrap(),
            "-e",
            &spec,
            "--",
            &b,
            "allocs",
        ],
    );
    assert_eq!(t.status, Some(0), "{}", t.stderr);
    assert_eq!(t.hits(1), 100);
    let s = summary_of(&t, "hoarder");
    assert_eq!(s["stats"]["faults"], 0, "{}", s["stats"]);
    // 100 × 300 new keys, 10 000 keys at most, one of them `refused`'s.
    let refused = 100 * 300 - (10_000 - 1);
    assert_eq!(
        map(s, "refused"),
        vec![(&Value::Null, &refused.into())],
        "what the plugin was refused"
    );
    assert_eq!(
        s["stats"]["map_updates_refused"], refused,
        "what the host counted: {}",
        s["stats"]
    );
    assert_eq!(
        s["maps"]["k"]["values"].as_array().map(Vec::len),
        Some(9_999)
    );
    // And where a person reads the summary.
    let said = format!(
        "hoarder: {refused} map updates refused (-7): its maps held 10000 keys, the most they may"
    );
    assert!(t.stderr.contains(&said), "`{said}` not in the stderr");
}
