//! The runtime against real wasm: every host function, and plugins that
//! try to hurt the host. Modules are WebAssembly text; the "target" whose
//! memory they read is this test process itself (its own pid), read with
//! the real `process_vm_readv`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wprobe_core::proto::{CaptureValue, Event, EventKind, RegSet, RetInfo};

use super::maps::Key;
use super::{CallInfo, Limits, Runtime};

/// The imports every test module declares (a module may use any).
const IMPORTS: &str = r#"
  (import "wprobe" "read_memory" (func $read_memory (param i64 i32 i32) (result i32)))
  (import "wprobe" "read_string" (func $read_string (param i64 i32 i32) (result i32)))
  (import "wprobe" "emit" (func $emit (param i32 i32) (result i32)))
  (import "wprobe" "map_update" (func $map_update (param i32 i32 i32 i32 i32 i32 i64) (result i32)))
  (import "wprobe" "map_lhist" (func $map_lhist (param i32 i32 i32 i32 i32 i64 i64 i64 i64) (result i32)))
  (import "wprobe" "call_data_set" (func $call_data_set (param i32 i32) (result i32)))
  (import "wprobe" "call_data_get" (func $call_data_get (param i32 i32) (result i32)))
  (import "wprobe" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "wprobe" "now_ns" (func $now_ns (result i64)))
  (import "wprobe" "set_register" (func $set_register (param i32 i64) (result i32)))
  (import "wprobe" "set_return" (func $set_return (param i64) (result i32)))
"#;

/// A plugin module: `entry`, `ret` are the bodies of the entry and return
/// handlers (locals `$ev`, `$len`); `extra` adds functions or data.
/// `$report K V` adds V to key K of the sum map "r"; memory below 4096 is
/// scratch, events go at 65536.
fn module(entry: &str, ret: &str, extra: &str) -> String {
    format!(
        r#"(module {IMPORTS}
  (memory (export "memory") 2)
  (data (i32.const 0) "r")
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 65536)
  (func $report (param $k i64) (param $v i32)
    (i64.store (i32.const 8) (local.get $k))
    (drop (call $map_update (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 2)
                            (i32.const 8) (i32.const 8) (i64.extend_i32_s (local.get $v)))))
  (func (export "wprobe_on_entry") (param $ev i32) (param $len i32) (result i32)
    {entry}
    i32.const 0)
  (func (export "wprobe_on_return") (param $ev i32) (param $len i32) (result i32)
    {ret}
    i32.const 0)
  {extra})"#
    )
}

/// An event of this process, with `arg0` as its first argument.
fn event(kind: EventKind, arg0: u64) -> Event {
    let mut regs = [0u64; 27];
    regs[14] = arg0; // rdi
    regs[16] = 0x401000; // rip
    Event {
        seq: 1,
        probe: 3,
        kind,
        sync: false,
        pid: std::process::id() as i32,
        tid: std::process::id() as i32,
        time_ns: 1_000,
        addr: 0x401000,
        regs: RegSet::X86_64(regs),
        captures: vec![("n".into(), CaptureValue::Unsigned(7))],
        ret: (kind == EventKind::Return).then_some(RetInfo {
            value: 42,
            entry_time_ns: 1_000,
            entry_args: [arg0, 0, 0, 0, 0, 0],
            return_address: 0x401234,
        }),
    }
}

/// The default limits but a deadline long enough that a test thread
/// preempted on a loaded machine is not cut (the deadline is wall time);
/// the deadline itself has its own test.
fn relaxed() -> Limits {
    Limits {
        call_deadline: Duration::from_secs(1),
        ..Limits::default()
    }
}

fn runtime(limits: Limits) -> Runtime {
    Runtime::new(limits).expect("runtime")
}

fn attach(rt: &Runtime, wat: &str) -> super::Attachment {
    let plugin = rt.load(wat.as_bytes(), None, "test.wasm").expect("load");
    rt.attach(Arc::new(plugin), "{}").expect("attach")
}

fn result(a: &super::Attachment, k: i64) -> Option<i64> {
    a.shared.maps.lock().unwrap().get_int("r", &Key::Int(k))
}

static TARGET: [u8; 16] = *b"hello\0world!!!!\0";

#[test]
fn reads_of_target_memory() {
    let rt = runtime(relaxed());
    let a = attach(
        &rt,
        &module(
            r#"
    ;; 1: read 5 bytes at arg0 into 100, 2: the first byte
    (call $report (i64.const 1) (call $read_memory (i64.load offset=64 (local.get $ev)) (i32.const 100) (i32.const 5)))
    (call $report (i64.const 2) (i32.load8_u (i32.const 100)))
    ;; 3: the string at arg0, 4: its length bound hit (max 3)
    (call $report (i64.const 3) (call $read_string (i64.load offset=64 (local.get $ev)) (i32.const 200) (i32.const 64)))
    (call $report (i64.const 4) (call $read_string (i64.load offset=64 (local.get $ev)) (i32.const 200) (i32.const 3)))
    ;; 5: an unmapped address, 6: a buffer outside the plugin's memory,
    ;; 7: a length above the bound, 8: a negative length
    (call $report (i64.const 5) (call $read_memory (i64.const 8) (i32.const 100) (i32.const 4)))
    (call $report (i64.const 6) (call $read_memory (i64.load offset=64 (local.get $ev)) (i32.const 131070) (i32.const 5)))
    (call $report (i64.const 7) (call $read_memory (i64.load offset=64 (local.get $ev)) (i32.const 100) (i32.const 1000000)))
    (call $report (i64.const 8) (call $read_string (i64.load offset=64 (local.get $ev)) (i32.const 100) (i32.const -1)))
    "#,
            "",
            "",
        ),
    );
    let addr = TARGET.as_ptr() as u64;
    let out = a.handle(&rt, &event(EventKind::Entry, addr), CallInfo::default());
    assert!(out.called && out.fault.is_none(), "{out:?}");
    assert_eq!(result(&a, 1), Some(5));
    assert_eq!(result(&a, 2), Some(b'h' as i64));
    assert_eq!(result(&a, 3), Some(5), "hello");
    assert_eq!(result(&a, 4), Some(3), "bound reached");
    assert_eq!(result(&a, 5), Some(-1), "EFAULT_TARGET");
    assert_eq!(result(&a, 6), Some(-2), "EFAULT_PLUGIN");
    assert_eq!(result(&a, 7), Some(-3), "E2BIG");
    assert_eq!(result(&a, 8), Some(-2), "a negative length is a bad buffer");
}

#[test]
fn emit_log_now_and_maps() {
    let rt = runtime(relaxed());
    let a = attach(
        &rt,
        &module(
            r#"
    (call $report (i64.const 1) (call $emit (i32.const 300) (i32.const 13)))
    (call $report (i64.const 2) (call $emit (i32.const 320) (i32.const 5)))
    (call $report (i64.const 3) (call $log (i32.const 2) (i32.const 340) (i32.const 5)))
    (call $report (i64.const 4) (call $log (i32.const 9) (i32.const 340) (i32.const 5)))
    (call $report (i64.const 5) (i32.wrap_i64 (i64.shr_u (call $now_ns) (i64.const 63))))
    ;; count by bytes key "ab", hist and lhist with no key
    (call $report (i64.const 6) (call $map_update (i32.const 0) (i32.const 360) (i32.const 1) (i32.const 1) (i32.const 370) (i32.const 2) (i64.const 0)))
    (call $report (i64.const 7) (call $map_update (i32.const 5) (i32.const 361) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 1000)))
    (call $report (i64.const 8) (call $map_lhist (i32.const 362) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 15) (i64.const 0) (i64.const 100) (i64.const 10)))
    ;; errors: unknown op, another kind for map "c", a key kind 9, an
    ;; integer key of 3 bytes, an empty name
    (call $report (i64.const 9) (call $map_update (i32.const 77) (i32.const 360) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0)))
    (call $report (i64.const 10) (call $map_update (i32.const 1) (i32.const 360) (i32.const 1) (i32.const 1) (i32.const 370) (i32.const 2) (i64.const 0)))
    (call $report (i64.const 11) (call $map_update (i32.const 0) (i32.const 360) (i32.const 1) (i32.const 9) (i32.const 370) (i32.const 2) (i64.const 0)))
    (call $report (i64.const 12) (call $map_update (i32.const 0) (i32.const 363) (i32.const 1) (i32.const 2) (i32.const 370) (i32.const 3) (i64.const 0)))
    (call $report (i64.const 13) (call $map_update (i32.const 0) (i32.const 360) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0)))
    "#,
            "",
            r#"(data (i32.const 300) "{\"x\": [1, 2]}")
  (data (i32.const 320) "{bad}")
  (data (i32.const 340) "hello")
  (data (i32.const 360) "chld")
  (data (i32.const 370) "ab")"#,
        ),
    );
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(out.fault.is_none(), "{out:?}");
    assert_eq!(result(&a, 1), Some(0));
    assert_eq!(result(&a, 2), Some(-4), "invalid JSON");
    assert_eq!((result(&a, 3), result(&a, 4)), (Some(0), Some(-4)));
    assert_eq!(result(&a, 5), Some(0), "now_ns is positive");
    assert_eq!(
        (result(&a, 6), result(&a, 7), result(&a, 8)),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(
        (
            result(&a, 9),
            result(&a, 10),
            result(&a, 11),
            result(&a, 12),
            result(&a, 13)
        ),
        (Some(-4), Some(-4), Some(-4), Some(-4), Some(-4))
    );
    assert_eq!(out.records, vec![serde_json::json!({"x": [1, 2]})]);
    assert!(a.log().iter().any(|l| l == "info: hello"), "{:?}", a.log());
    let maps = a.maps_json();
    assert_eq!(maps["c"]["values"][0]["key"], "ab");
    assert_eq!(maps["c"]["values"][0]["value"], 1);
    assert_eq!(maps["h"]["values"][0]["value"][0]["low"], 512);
    assert_eq!(maps["l"]["values"][0]["value"][0]["low"], 10);
}

#[test]
fn call_data_goes_from_entry_to_the_matching_return() {
    let rt = runtime(relaxed());
    let a = attach(
        &rt,
        &module(
            r#"
    (i64.store (i32.const 500) (i64.load offset=64 (local.get $ev)))
    (call $report (i64.const 1) (call $call_data_set (i32.const 500) (i32.const 8)))
    (call $report (i64.const 2) (call $call_data_get (i32.const 600) (i32.const 8)))
    (call $report (i64.const 3) (call $call_data_set (i32.const 500) (i32.const 5000)))
    "#,
            r#"
    (call $report (i64.const 10) (call $call_data_get (i32.const 600) (i32.const 8)))
    (call $report (i64.const 11) (i32.wrap_i64 (i64.load (i32.const 600))))
    (call $report (i64.const 12) (call $call_data_set (i32.const 500) (i32.const 8)))
    "#,
            "",
        ),
    );
    let info = CallInfo {
        return_probe: true,
        ..CallInfo::default()
    };
    // Two calls in flight on one thread (recursion): each gets its own.
    let mut outer = event(EventKind::Entry, 111);
    outer.time_ns = 1_000;
    let mut inner = event(EventKind::Entry, 222);
    inner.time_ns = 2_000;
    a.handle(&rt, &outer, info);
    a.handle(&rt, &inner, info);
    assert_eq!(result(&a, 1), Some(0));
    assert_eq!(
        result(&a, 2),
        Some(-5 * 2),
        "no call data in an entry handler"
    );
    assert_eq!(result(&a, 3), Some(-3 * 2), "above 1024 bytes");
    let mut ret_inner = event(EventKind::Return, 0);
    ret_inner.ret.as_mut().unwrap().entry_time_ns = 2_000;
    a.handle(&rt, &ret_inner, info);
    assert_eq!(result(&a, 11), Some(222));
    let mut ret_outer = event(EventKind::Return, 0);
    ret_outer.ret.as_mut().unwrap().entry_time_ns = 1_000;
    a.handle(&rt, &ret_outer, info);
    assert_eq!(result(&a, 11), Some(222 + 111));
    assert_eq!(result(&a, 10), Some(16), "8 bytes, twice");
    // Taken: a second return of the same call finds nothing.
    a.handle(&rt, &ret_outer, info);
    assert_eq!(result(&a, 10), Some(16 - 6), "ENOENT");
    assert_eq!(result(&a, 12), Some(-5 * 3), "no set in a return handler");
    // Not a return probe: entry handlers may not keep data.
    a.handle(&rt, &outer, CallInfo::default());
    assert_eq!(result(&a, 1), Some(-5));
}

#[test]
fn mutation_only_when_sync_and_allowed() {
    let rt = runtime(relaxed());
    let body = r#"
    (call $report (i64.const 1) (call $set_register (i32.const 14) (i64.const 99)))
    (call $report (i64.const 2) (call $set_register (i32.const 27) (i64.const 99)))
    (call $report (i64.const 3) (call $set_return (i64.const 5)))"#;
    let wat = module(body, body, "");
    let needs = r#"{"name":"m","version":"1","abi":1,"needs":{"mutation":true}}"#;
    let plugin = Arc::new(rt.load(wat.as_bytes(), Some(needs), "m").unwrap());
    let a = rt.attach(plugin, "{}").unwrap();
    let sync_mut = CallInfo {
        sync: true,
        mutation: true,
        return_probe: false,
    };
    let out = a.handle(&rt, &event(EventKind::Entry, 0), sync_mut);
    assert_eq!(out.set_regs, vec![(14, 99)]);
    assert_eq!(out.set_return, None);
    assert_eq!(
        (result(&a, 1), result(&a, 2), result(&a, 3)),
        (Some(0), Some(-4), Some(-5))
    );
    let out = a.handle(&rt, &event(EventKind::Return, 0), sync_mut);
    assert_eq!(out.set_return, Some(5));
    // Async, or a probe without mutation: refused, nothing changes.
    for info in [
        CallInfo::default(),
        CallInfo {
            sync: true,
            ..CallInfo::default()
        },
    ] {
        let out = a.handle(&rt, &event(EventKind::Return, 0), info);
        assert!(out.set_regs.is_empty() && out.set_return.is_none());
    }
    // Allowed twice (entry, return), refused twice.
    assert_eq!(result(&a, 1), Some(-5 * 2));
    // A plugin whose manifest does not ask for mutation never gets it.
    let b = attach(&rt, &wat);
    let out = b.handle(&rt, &event(EventKind::Return, 0), sync_mut);
    assert!(out.set_regs.is_empty() && out.set_return.is_none());
    assert_eq!(result(&b, 1), Some(-5));
}

#[test]
fn refused_modules_say_why() {
    let rt = runtime(Limits {
        module_bytes: 100_000,
        ..relaxed()
    });
    let refused = |bytes: &[u8], expect: &str| {
        let e = rt.load(bytes, None, "x.wasm").err().expect("refused");
        assert!(e.contains(expect), "expected `{expect}` in: {e}");
    };
    refused(b"\0asm\x01\0\0\0\x01\x05", "not a valid WebAssembly module");
    // Issue 17: neither binary nor text is said so, not with a message of
    // the text parser.
    refused(
        b"not wasm at all",
        "not a WebAssembly module (magic bytes 6e 6f 74 20 `not `; a module starts with 00 61 73 6d",
    );
    refused(
        b"\x7fELF\x02\x01",
        "not a WebAssembly module (magic bytes 7f 45 4c 46 `.ELF`",
    );
    refused(
        b"",
        "not a WebAssembly module (magic bytes none: the file is empty",
    );
    refused(b"  (modul", "not valid WebAssembly text");
    refused(&vec![0u8; 200_000], "at most 100000 bytes");
    let good = module("", "", "");
    let mut truncated = wat::parse_str(&good).unwrap();
    truncated.truncate(truncated.len() / 2);
    refused(&truncated, "not a valid WebAssembly module");
    let importing = |import: &str| good.replacen(IMPORTS, &format!("{IMPORTS}{import}"), 1);
    refused(
        importing(r#"(import "env" "socket" (func))"#).as_bytes(),
        "imports `env.socket`",
    );
    refused(
        importing(r#"(import "wprobe" "exec" (func))"#).as_bytes(),
        "`wprobe.exec`, which ABI version 1 does not have",
    );
    refused(
        importing(r#"(import "wprobe" "now_ns" (func $x (result i32)))"#).as_bytes(),
        "`wprobe.now_ns` with the wrong type",
    );
    refused(
        br#"(module (memory (export "memory") 1) (func (export "wprobe_alloc") (param i32) (result i32) i32.const 0)
             (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))"#,
        "does not export `wprobe_abi_version`",
    );
    refused(
        br#"(module (memory (export "memory") 1) (func (export "wprobe_abi_version") (result i32) i32.const 1)
             (func (export "wprobe_alloc") (param i32) (result i32) i32.const 0))"#,
        "exports no handler",
    );
    // Issue 17: an `_initialize` of another type than `() -> ()` was
    // silently not called.
    refused(
        good.replacen(
            "(memory",
            r#"(func (export "_initialize") (param i32) (result i32) i32.const 0) (memory"#,
            1,
        )
        .as_bytes(),
        "exports `_initialize` with the wrong type",
    );
    // A start function that never returns is cut at the deadline (CPU or
    // wall-clock: both are 1 s here), and the refusal says so, not only
    // wasmtime's backtrace.
    let p = rt
        .load(
            good.replacen(
                "(memory",
                "(func $forever (loop $l (br $l))) (start $forever) (memory",
                1,
            )
            .as_bytes(),
            None,
            "start",
        )
        .expect("loads: the start function runs at instantiation");
    let e = rt.attach(Arc::new(p), "{}").err().expect("refused");
    assert!(
        e.contains("cannot instantiate: its start function ran longer than its 1s "),
        "{e}"
    );
    // Text after blanks and comments is text.
    rt.load(
        format!(";; a plugin\n (; in text ;)\n{good}").as_bytes(),
        None,
        "c",
    )
    .expect("text after comments");
    let v2 = good.replace("(result i32) i32.const 1)", "(result i32) i32.const 2)");
    let p = rt.load(v2.as_bytes(), None, "v2").unwrap();
    let e = rt.attach(Arc::new(p), "{}").err().unwrap();
    assert!(
        e.contains("exports ABI version 2; this host serves version 1"),
        "{e}"
    );
    let p = rt.load(good.as_bytes(), None, "c").unwrap();
    let e = rt.attach(Arc::new(p), "{nope").err().unwrap();
    assert!(e.contains("configuration is not JSON"), "{e}");
    let e = rt
        .load(
            good.as_bytes(),
            Some(r#"{"name":"x","version":"1","abi":7}"#),
            "c",
        )
        .err()
        .unwrap();
    assert!(e.contains("ABI version 7"), "{e}");
}

/// A hostile plugin: faults are counted with a clear reason, the host goes
/// on, and a plugin that keeps faulting is quarantined.
fn hostile(rt: &Runtime, body: &str, extra: &str, reason: &str) -> super::Attachment {
    let a = attach(rt, &module(body, "", extra));
    for i in 0..rt.limits.quarantine_after {
        let t = Instant::now();
        let out = a.handle(rt, &event(EventKind::Entry, 0), CallInfo::default());
        let fault = out.fault.unwrap_or_else(|| panic!("call {i} should fault"));
        assert!(fault.contains(reason), "expected `{reason}` in: {fault}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "bounded: {:?}",
            t.elapsed()
        );
    }
    let st = a.stats();
    assert_eq!(st.faults, rt.limits.quarantine_after as u64);
    let q = st.quarantined.expect("quarantined");
    assert!(q.contains(reason), "{q}");
    // Quarantined: no longer called.
    let out = a.handle(rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(!out.called && out.fault.is_none());
    a
}

#[test]
fn an_infinite_loop_is_cut_at_the_deadline() {
    let rt = runtime(Limits {
        call_deadline: Duration::from_millis(20),
        ..relaxed()
    });
    let t = Instant::now();
    hostile(&rt, "(loop $l (br $l))", "", "deadline");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn deep_recursion_overflows_the_wasm_stack_not_the_host() {
    let rt = runtime(relaxed());
    hostile(
        &rt,
        "(drop (call $deep (i64.const 0)))",
        "(func $deep (param i64) (result i64) (call $deep (i64.add (local.get 0) (i64.const 1))))",
        "stack",
    );
}

#[test]
fn memory_grows_only_to_the_cap() {
    let rt = runtime(Limits {
        memory_bytes: 4 << 20,
        ..relaxed()
    });
    // Grow page by page until refused, then use memory beyond it: a trap.
    let a = hostile(
        &rt,
        r#"(block $done (loop $l
             (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
             (br $l)))
           (call $report (i64.const 1) (memory.size))
           (i32.store (i32.const 5000000) (i32.const 1))"#,
        "",
        "out of bounds",
    );
    assert_eq!(
        result(&a, 1),
        Some(5 * 64),
        "64 pages of 64 KiB = 4 MiB, five calls"
    );
}

#[test]
fn bad_pointers_and_huge_lengths_never_trap() {
    let rt = runtime(relaxed());
    let mut body = String::new();
    let calls = [
        "(call $read_memory (i64.const 0) (i32.const -5) (i32.const 4))",
        "(call $read_memory (i64.const 0) (i32.const 0) (i32.const 2147483647))",
        "(call $read_string (i64.const -1) (i32.const 131000) (i32.const 1000))",
        "(call $emit (i32.const 2147483600) (i32.const 100))",
        "(call $emit (i32.const 0) (i32.const 2147483647))",
        "(call $map_update (i32.const 0) (i32.const -1) (i32.const 5) (i32.const 1) (i32.const 0) (i32.const 1) (i64.const 0))",
        "(call $map_update (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 1) (i32.const 131070) (i32.const 200) (i64.const 0))",
        "(call $map_lhist (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 1) (i64.const 5) (i64.const 5) (i64.const 0))",
        "(call $call_data_get (i32.const 131071) (i32.const 64))",
        "(call $log (i32.const 0) (i32.const 131070) (i32.const 100))",
        "(call $log (i32.const 0) (i32.const 0) (i32.const 1000000))",
    ];
    for (i, c) in calls.iter().enumerate() {
        body.push_str(&format!("(call $report (i64.const {}) {c})\n", i + 100));
    }
    let a = attach(&rt, &module(&body, "", ""));
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(out.fault.is_none(), "{out:?}");
    for (i, call) in calls.iter().enumerate() {
        let r = result(&a, i as i64 + 100).unwrap();
        assert!(r < 0, "call {i} `{call}` returned {r}");
    }
}

#[test]
fn a_flood_of_emits_is_capped_and_counted() {
    // A long deadline: this is about the cap on emits, not about time.
    let rt = runtime(Limits {
        emits_per_sec: 1000,
        call_deadline: Duration::from_secs(2),
        ..relaxed()
    });
    let a = attach(
        &rt,
        &module(
            r#"(local $i i32)
               (loop $l
                 (drop (call $emit (i32.const 300) (i32.const 1)))
                 (local.set $i (i32.add (local.get $i) (i32.const 1)))
                 (br_if $l (i32.lt_u (local.get $i) (i32.const 5000))))"#,
            "",
            r#"(data (i32.const 300) "1")"#,
        ),
    );
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(out.fault.is_none(), "{out:?}");
    assert_eq!(out.records.len(), 1000);
    assert_eq!(a.stats().records_dropped, 4000);
}

#[test]
fn map_keys_are_capped_and_counted() {
    let rt = runtime(Limits {
        max_keys: 50,
        call_deadline: Duration::from_secs(2),
        ..relaxed()
    });
    let a = attach(
        &rt,
        &module(
            r#"(local $i i64)
               (loop $l
                 (i64.store (i32.const 400) (local.get $i))
                 (drop (call $map_update (i32.const 0) (i32.const 300) (i32.const 1) (i32.const 2) (i32.const 400) (i32.const 8) (i64.const 0)))
                 (local.set $i (i64.add (local.get $i) (i64.const 1)))
                 (br_if $l (i64.lt_u (local.get $i) (i64.const 1000))))"#,
            "",
            r#"(data (i32.const 300) "k")"#,
        ),
    );
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(out.fault.is_none(), "{out:?}");
    let maps = a.shared.maps.lock().unwrap();
    assert_eq!(maps.keys(), 50);
    assert_eq!(maps.overflow, 950);
    drop(maps);
    assert_eq!(a.stats().map_updates_refused, 950, "in the stats");
}

#[test]
fn files_sockets_and_clocks_are_not_there() {
    // WASI path_open on fd 3 (no preopen), sock_accept, and the WASI clock.
    let extra = r#"
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (data (i32.const 300) "/etc/passwd")
  (data (i32.const 320) "\4c\01\00\00\06\00\00\00")
  (data (i32.const 332) "hello\n")"#;
    // The WASI imports go with the others, the data after "r".
    let wat = module(
        r#"
    (call $report (i64.const 1) (call $path_open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const 11) (i32.const 0) (i64.const 1) (i64.const 1) (i32.const 0) (i32.const 400)))
    (call $report (i64.const 2) (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 400)))
    (call $report (i64.const 3) (call $clock (i32.const 1) (i64.const 1) (i32.const 408)))
    (call $report (i64.const 4) (i32.wrap_i64 (i64.load (i32.const 408))))
    (call $report (i64.const 5) (call $fd_write (i32.const 1) (i32.const 320) (i32.const 1) (i32.const 416)))
    "#,
        "",
        "",
    )
    .replacen(IMPORTS, &format!("{IMPORTS}{}", &extra[..extra.find("(data").unwrap()]), 1)
    .replacen("(data (i32.const 0) \"r\")", &format!("(data (i32.const 0) \"r\"){}", &extra[extra.find("(data").unwrap()..]), 1);
    let rt = rt_default();
    let a = attach(&rt, &wat);
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(out.fault.is_none(), "{out:?}");
    assert!(result(&a, 1).unwrap() != 0, "no file opens");
    assert!(result(&a, 2).unwrap() != 0, "no sockets");
    assert_eq!(result(&a, 3), Some(0));
    assert_eq!(result(&a, 4), Some(0), "the WASI clock stands still");
    assert_eq!(result(&a, 5), Some(0), "stdout works");
    assert!(
        a.log().iter().any(|l| l == "output: hello"),
        "stdout goes to the log: {:?}",
        a.log()
    );
}

fn rt_default() -> Runtime {
    runtime(relaxed())
}

#[test]
fn replacement_keeps_maps_and_call_data_and_ends_a_quarantine() {
    let rt = runtime(Limits {
        quarantine_after: 2,
        ..relaxed()
    });
    let v1 = module(
        r#"(call $report (i64.const 1) (i32.const 1))
           (i64.store (i32.const 500) (i64.const 77))
           (drop (call $call_data_set (i32.const 500) (i32.const 8)))
           unreachable"#,
        "",
        "",
    );
    let a = attach(&rt, &v1);
    let info = CallInfo {
        return_probe: true,
        ..CallInfo::default()
    };
    // v1 keeps call data at entry, then traps: quarantined after two.
    a.handle(&rt, &event(EventKind::Entry, 0), info);
    a.handle(&rt, &event(EventKind::Entry, 0), info);
    assert!(a.stats().quarantined.is_some());
    let v2 = module(
        "(call $report (i64.const 1) (i32.const 10))",
        r#"(call $report (i64.const 2) (call $call_data_get (i32.const 600) (i32.const 8)))
           (call $report (i64.const 3) (i32.wrap_i64 (i64.load (i32.const 600))))"#,
        "",
    );
    let p2 = Arc::new(rt.load(v2.as_bytes(), None, "v2").unwrap());
    a.replace(&rt, p2).unwrap();
    assert!(a.stats().quarantined.is_none());
    a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert_eq!(result(&a, 1), Some(1 + 1 + 10), "the map survived");
    // The call v1 entered returns under v2, which gets v1's data.
    a.handle(&rt, &event(EventKind::Return, 0), info);
    assert_eq!((result(&a, 2), result(&a, 3)), (Some(8), Some(77)));
}

#[test]
fn replacement_is_atomic_while_events_flow() {
    // Compiling the new versions competes for the CPU with the handlers:
    // a generous deadline, since this is about atomicity.
    let rt = Arc::new(runtime(Limits {
        call_deadline: Duration::from_secs(1),
        ..relaxed()
    }));
    let v = |n: i32| {
        module(
            &format!("(call $report (i64.const {n}) (i32.const 1))"),
            "",
            "",
        )
    };
    let a = Arc::new(attach(&rt, &v(1)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a2, rt2, stop2) = (a.clone(), rt.clone(), stop.clone());
    let feeder = std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let out = a2.handle(&rt2, &event(EventKind::Entry, 0), CallInfo::default());
            assert!(out.called && out.fault.is_none());
            n += 1;
        }
        n
    });
    for k in 2..=20 {
        std::thread::sleep(Duration::from_millis(5));
        let p = Arc::new(rt.load(v(k).as_bytes(), None, "v").unwrap());
        a.replace(&rt, p).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = feeder.join().unwrap();
    let total: i64 = (1..=20).map(|k| result(&a, k).unwrap_or(0)).sum();
    assert_eq!(total as u64, n, "every event went to exactly one version");
}

#[test]
fn a_data_directory_only_when_the_manifest_asks() {
    // path_open(3 = the first preopen, "out.txt", O_CREAT), fd_write of
    // "saved\n", fd_close.
    let wasi = r#"
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))"#;
    let body = r#"
    (call $report (i64.const 1) (call $path_open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const 7)
                                  (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 400)))
    (i32.store (i32.const 320) (i32.const 340))
    (i32.store (i32.const 324) (i32.const 6))
    (call $report (i64.const 2) (call $fd_write (i32.load (i32.const 400)) (i32.const 320) (i32.const 1) (i32.const 404)))
    (call $report (i64.const 3) (call $fd_close (i32.load (i32.const 400))))"#;
    let wat = module(
        body,
        "",
        r#"(data (i32.const 300) "out.txt") (data (i32.const 340) "saved\n")"#,
    )
    .replacen(IMPORTS, &format!("{IMPORTS}{wasi}"), 1);
    let root = std::env::temp_dir().join(format!("wprobe-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let rt = Runtime::with_reader(
        relaxed(),
        Arc::new(super::ProcessMemory),
        Some(root.clone()),
    )
    .unwrap();
    let needs = r#"{"name":"saver","version":"1","abi":1,"needs":{"data_dir":true}}"#;
    let p = Arc::new(rt.load(wat.as_bytes(), Some(needs), "saver").unwrap());
    let a = rt.attach(p, "{}").unwrap();
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(out.fault.is_none(), "{out:?} {:?}", a.log());
    assert_eq!(
        (result(&a, 1), result(&a, 2), result(&a, 3)),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(
        std::fs::read_to_string(root.join("saver/out.txt")).unwrap(),
        "saved\n",
        "written in its own directory"
    );
    // Without the manifest's consent there is no directory to open.
    let b = attach(&rt, &wat);
    b.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert_ne!(result(&b, 1), Some(0));
    // And a host that gives no directories refuses a plugin that needs one.
    let none = runtime(relaxed());
    let p = Arc::new(none.load(wat.as_bytes(), Some(needs), "saver").unwrap());
    let e = none.attach(p, "{}").err().unwrap();
    assert!(e.contains("needs a data directory"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

// Hostile plugins of issue 17: each case once crashed, stalled or fooled
// the host.

#[test]
fn lhist_bounds_that_overflow_are_an_error_code_not_a_panic() {
    let rt = rt_default();
    // (min, max, step, expected result of map_lhist), each on its own map
    // ("a", "b", …: the first call fixes a map's bounds).
    let cases: &[(i64, i64, i64, i64)] = &[
        (i64::MIN, i64::MAX, 1, -4),
        (-(1 << 62), 1 << 62, 1 << 61, 0),
        (i64::MIN, i64::MAX, i64::MAX, 0),
        (0, 100, 10, 0),
    ];
    let mut body = String::new();
    for (i, (min, max, step, _)) in cases.iter().enumerate() {
        body.push_str(&format!(
            "(call $report (i64.const {i}) (call $map_lhist (i32.const {}) (i32.const 1) (i32.const 0) \
             (i32.const 0) (i32.const 0) (i64.const {min}) (i64.const {min}) (i64.const {max}) (i64.const {step})))\n",
            300 + i
        ));
    }
    let a = attach(&rt, &module(&body, "", r#"(data (i32.const 300) "abcd")"#));
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(out.fault.is_none(), "{out:?}");
    for (i, (min, max, step, expect)) in cases.iter().enumerate() {
        assert_eq!(
            result(&a, i as i64),
            Some(*expect),
            "map_lhist(min {min}, max {max}, step {step})"
        );
    }
    // The maps show without trouble.
    assert!(a.maps_text().contains("@c:"), "{}", a.maps_text());
}

/// Runs `a`'s entry handler on another thread; its outcome, or `None` when
/// it has not returned within a minute (far longer than any call may
/// take: the bounds are milliseconds to a second).
fn handle_bounded(rt: &Arc<Runtime>, a: &Arc<super::Attachment>) -> Option<super::Outcome> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (rt, a) = (rt.clone(), a.clone());
    std::thread::spawn(move || {
        let _ = tx.send(a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default()));
    });
    rx.recv_timeout(Duration::from_secs(60)).ok()
}

#[test]
fn poll_oneoff_and_sched_yield_return_at_once() {
    // Three subscriptions: a relative clock of an hour (userdata 11), an
    // absolute one at the end of time (12), a read of stdin (13).
    let wasi = r#"
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))"#;
    let body = r#"
    (i64.store (i32.const 1000) (i64.const 11))
    (i32.store8 (i32.const 1008) (i32.const 0))
    (i32.store (i32.const 1016) (i32.const 1))
    (i64.store (i32.const 1024) (i64.const 3600000000000))
    (i64.store (i32.const 1048) (i64.const 12))
    (i32.store8 (i32.const 1056) (i32.const 0))
    (i32.store (i32.const 1064) (i32.const 0))
    (i64.store (i32.const 1072) (i64.const -1))
    (i32.store16 (i32.const 1088) (i32.const 1))
    (i64.store (i32.const 1096) (i64.const 13))
    (i32.store8 (i32.const 1104) (i32.const 1))
    (i32.store (i32.const 1112) (i32.const 0))
    (call $report (i64.const 1) (call $poll (i32.const 1000) (i32.const 2000) (i32.const 3) (i32.const 2200)))
    (call $report (i64.const 2) (i32.load (i32.const 2200)))
    ;; each event: userdata, error, type
    (call $report (i64.const 3) (i32.wrap_i64 (i64.load (i32.const 2000))))
    (call $report (i64.const 4) (i32.load16_u (i32.const 2008)))
    (call $report (i64.const 5) (i32.load8_u (i32.const 2010)))
    (call $report (i64.const 6) (i32.wrap_i64 (i64.load (i32.const 2032))))
    (call $report (i64.const 7) (i32.load16_u (i32.const 2040)))
    (call $report (i64.const 8) (i32.wrap_i64 (i64.load (i32.const 2064))))
    (call $report (i64.const 9) (i32.load16_u (i32.const 2072)))
    (call $report (i64.const 10) (i32.load8_u (i32.const 2074)))
    ;; no subscriptions, and subscriptions outside the memory: errors
    (call $report (i64.const 11) (call $poll (i32.const 1000) (i32.const 2000) (i32.const 0) (i32.const 2200)))
    (call $report (i64.const 12) (call $poll (i32.const 131000) (i32.const 2000) (i32.const 1000) (i32.const 2200)))
    (call $report (i64.const 13) (call $yield))"#;
    let wat = module(body, "", "").replacen(IMPORTS, &format!("{IMPORTS}{wasi}"), 1);
    let rt = Arc::new(rt_default());
    let a = Arc::new(attach(&rt, &wat));
    let out = handle_bounded(&rt, &a).expect("poll_oneoff slept on the host's thread");
    assert!(out.fault.is_none(), "{out:?}");
    let got: Vec<Option<i64>> = (1..=13).map(|k| result(&a, k)).collect();
    let expect = [
        0,  // poll_oneoff succeeded
        3,  // three events
        11, // a relative clock: elapsed at once, no error, type clock
        0, 0, 12, // an absolute one: the same
        0, 13, // a read of stdin: ENOTSUP, type fd_read
        58, 1, 28, // EINVAL
        21, // EFAULT
        0,  // sched_yield
    ];
    assert_eq!(got, expect.map(Some), "results 1..=13");
}

/// Target memory that takes its time: a read that waits, as a host call
/// blocked on something would.
struct SlowMemory;

impl super::TargetMemory for SlowMemory {
    fn read(&self, _: i32, _: u64, buf: &mut [u8]) -> Result<usize, i32> {
        std::thread::sleep(Duration::from_millis(5));
        buf.fill(0);
        Ok(buf.len())
    }
}

#[test]
fn a_call_that_waits_is_cut_by_the_wall_clock_bound() {
    // 2000 reads of 5 ms: ten seconds of waiting, next to no CPU time. The
    // CPU-time deadline never fires; the wall-clock bound does.
    let limits = Limits {
        call_deadline: Duration::from_millis(100),
        wall_deadline: Duration::from_millis(200),
        ..relaxed()
    };
    assert_eq!(limits.wall(), Duration::from_millis(200));
    // The bound in effect is never below the CPU-time deadline.
    let long = Limits {
        call_deadline: Duration::from_secs(2),
        ..limits.clone()
    };
    assert_eq!(long.wall(), Duration::from_secs(2));
    let rt = Runtime::with_reader(limits, Arc::new(SlowMemory), None).unwrap();
    hostile(
        &rt,
        r#"(local $i i32)
           (loop $l
             (drop (call $read_memory (i64.const 4096) (i32.const 100) (i32.const 8)))
             (local.set $i (i32.add (local.get $i) (i32.const 1)))
             (br_if $l (i32.lt_u (local.get $i) (i32.const 2000))))"#,
        "",
        "wall-clock bound",
    );
}

#[test]
fn code_that_would_cost_the_compiler_dearly_is_refused_first() {
    let rt = rt_default();
    let limits = super::CompileLimits::default();
    // A handler whose body is `body`; flat instructions (`block` … `end`),
    // since the text parser bounds folded nesting itself.
    let with = |body: &str| module(body, "", "");
    let nested = |n: u32| {
        let mut b = "block\n".repeat(n as usize);
        b.push_str(&"end\n".repeat(n as usize));
        with(&b)
    };
    let many = |n: u32| {
        let mut extra = String::new();
        for _ in 0..n {
            extra.push_str("(func)\n");
        }
        module("", "", &extra)
    };
    let locals = |n: u64| with(&format!("(local {})", "i64 ".repeat(n as usize)));
    let long = |bytes: usize| with(&"(drop (i32.const 1))\n".repeat(bytes / 3));
    // (module, refused with): None loads.
    let cases: Vec<(String, Option<&str>)> = vec![
        // Issue 17: 50 000 nested blocks in 150 KB took `wprobe trace`
        // past 1 GiB while compiling.
        (
            nested(50_000),
            Some("nests blocks more than 1000 deep; plugins may nest at most 1000"),
        ),
        (
            nested(limits.nesting + 1),
            Some("nests blocks more than 1000 deep"),
        ),
        (nested(limits.nesting), None),
        (
            many(limits.functions),
            Some("functions; plugins may have at most 50000"),
        ),
        (many(100), None),
        (
            locals(limits.locals + 1),
            Some("has 50001 locals; a plugin's functions may have at most 50000"),
        ),
        (locals(1000), None),
        (
            long(limits.function_bytes + 10),
            Some("bytes; a plugin's functions may be at most 1048576 bytes"),
        ),
    ];
    for (i, (wat, expect)) in cases.iter().enumerate() {
        match (rt.load(wat.as_bytes(), None, "x.wasm"), expect) {
            (Ok(_), None) => {}
            (Err(e), Some(want)) => {
                assert!(e.contains(want), "case {i}: expected `{want}` in: {e}")
            }
            (Ok(_), Some(want)) => panic!("case {i}: loaded; expected a refusal with `{want}`"),
            (Err(e), None) => panic!("case {i}: refused: {e}"),
        }
    }
}

#[test]
fn wasi_flags_and_enums_out_of_range_fail_not_trap() {
    // Each call has one argument with bits or a value WASI does not
    // define; wasmtime-wasi trapped on them (a fault, then quarantine) for
    // a call that should merely fail with EINVAL (28).
    let wasi = r#"
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_advise" (func $fd_advise (param i32 i64 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_set_flags" (func $fd_fdstat_set_flags (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_set_rights" (func $fd_fdstat_set_rights (param i32 i64 i64) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_set_times" (func $fd_filestat_set_times (param i32 i64 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_filestat_get" (func $path_filestat_get (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $sock_shutdown (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_recv" (func $sock_recv (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_raise" (func $proc_raise (param i32) (result i32)))"#;
    let calls = [
        // Issue 17: rights with bits past the last defined one.
        "(call $path_open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const 3) (i32.const 0) (i64.const -1) (i64.const 0) (i32.const 0) (i32.const 400))",
        "(call $path_open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const 3) (i32.const 0) (i64.const 0) (i64.const -1) (i32.const 0) (i32.const 400))",
        "(call $path_open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const 3) (i32.const 0x100) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 400))",
        "(call $path_open (i32.const 3) (i32.const 0) (i32.const 300) (i32.const 3) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0x10000) (i32.const 400))",
        "(call $path_open (i32.const 3) (i32.const 0x80) (i32.const 300) (i32.const 3) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 400))",
        "(call $fd_seek (i32.const 1) (i64.const 0) (i32.const 9) (i32.const 400))",
        "(call $fd_advise (i32.const 1) (i64.const 0) (i64.const 0) (i32.const 9))",
        "(call $fd_fdstat_set_flags (i32.const 1) (i32.const 0x7fff0000))",
        "(call $fd_fdstat_set_rights (i32.const 1) (i64.const -1) (i64.const 0))",
        "(call $fd_filestat_set_times (i32.const 1) (i64.const 0) (i64.const 0) (i32.const 0x100))",
        "(call $path_filestat_get (i32.const 3) (i32.const 0x80) (i32.const 300) (i32.const 3) (i32.const 400))",
        "(call $clock_time_get (i32.const 9) (i64.const 0) (i32.const 400))",
        "(call $clock_res_get (i32.const -1) (i32.const 400))",
        "(call $sock_accept (i32.const 3) (i32.const 0x10000) (i32.const 400))",
        "(call $sock_shutdown (i32.const 3) (i32.const 0x100))",
        // Found by the hostile corpus (tests/plugins/hostile): a signal
        // number WASI does not define, and receive flags it does not.
        "(call $proc_raise (i32.const 200))",
        "(call $sock_recv (i32.const 3) (i32.const 400) (i32.const 0) (i32.const 0x100) (i32.const 400) (i32.const 404))",
    ];
    let mut body = String::new();
    for (i, c) in calls.iter().enumerate() {
        body.push_str(&format!("(call $report (i64.const {i}) {c})\n"));
    }
    let wat = module(&body, "", r#"(data (i32.const 300) "a.t")"#).replacen(
        IMPORTS,
        &format!("{IMPORTS}{wasi}"),
        1,
    );
    let rt = rt_default();
    let a = attach(&rt, &wat);
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(out.fault.is_none(), "{out:?}");
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(result(&a, i as i64), Some(28), "call {i}: {c}");
    }
}

/// Target memory whose read panics: a stand-in for a bug in host code.
struct PanickyMemory;

impl super::TargetMemory for PanickyMemory {
    fn read(&self, _: i32, addr: u64, _: &mut [u8]) -> Result<usize, i32> {
        panic!("a host bug at {addr:#x}");
    }
}

#[test]
fn a_panic_in_host_code_faults_the_plugin_not_the_caller() {
    let rt = Runtime::with_reader(relaxed(), Arc::new(PanickyMemory), None).unwrap();
    let a = attach(
        &rt,
        &module(
            "(drop (call $read_memory (i64.const 4096) (i32.const 100) (i32.const 8)))",
            "",
            "",
        ),
    );
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    let fault = out.fault.expect("a fault");
    assert!(
        fault.contains("made the host panic (a host bug at 0x1000)"),
        "{fault}"
    );
    // Quarantined at once: not called again.
    let st = a.stats();
    assert!(st.quarantined.is_some(), "{st:?}");
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    assert!(!out.called, "{out:?}");
    // What it kept shows all the same.
    a.maps_json();
}

#[test]
fn a_panic_under_the_allocator_or_at_attachment_faults_or_refuses_the_plugin() {
    // The fault injection of `wprobe serve` (WPROBE_HOST_FAULT_INJECTION):
    // every call of `wprobe.log` panics.
    let rt = runtime(Limits {
        host_panic: Some("log".into()),
        ..relaxed()
    });
    let log = "(drop (call $log (i32.const 2) (i32.const 0) (i32.const 1)))";
    let panic = "made the host panic (WPROBE_HOST_FAULT_INJECTION: wprobe.log panics)";
    // In the allocator, asked for a buffer at the first event: it ran
    // before the handler's own guard, and unwound through the caller.
    let a = attach(
        &rt,
        &module("", "", "").replacen(
            "(result i32) i32.const 65536)",
            &format!("(result i32) {log} i32.const 65536)"),
            1,
        ),
    );
    let out = a.handle(&rt, &event(EventKind::Entry, 0), CallInfo::default());
    let fault = out.fault.expect("a fault");
    assert!(fault.contains(panic), "{fault}");
    assert!(a.stats().quarantined.is_some(), "{:?}", a.stats());
    // In wprobe_init: the attachment is refused, saying why.
    let init = module(
        "",
        "",
        &format!(r#"(func (export "wprobe_init") (param i32 i32) (result i32) {log} i32.const 0)"#),
    );
    let p = rt.load(init.as_bytes(), None, "init").expect("loads");
    let e = rt.attach(Arc::new(p), "{}").err().expect("refused");
    assert!(e.contains(panic), "{e}");
    // Only a host function can be named.
    let e = Runtime::new(Limits {
        host_panic: Some("system".into()),
        ..relaxed()
    })
    .err()
    .expect("refused");
    assert!(e.contains("no host function `wprobe.system`"), "{e}");
}
