//! Verdicts: a handler changes what the probed thread does, through the
//! engine's own API (`Sink::decide`). The fixture `mutate` prints values
//! that depend on what the verdicts changed, and every run is checked
//! against what the program must print, line by line, and its exit status.
//!
//! The tests run one at a time: each drives an engine on its own thread,
//! and a wait for any tracee must not take another engine's stops.

use std::cell::Cell;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use wprobe_core::engine::{
    Engine, ExitStatus, Hit, HitKind, Notice, ProbeId, Regs, Return, RunEnd, Sink, Value, Verdict,
};
use wprobe_core::spec::ProbeSpec;
use wprobe_core::symbols::ElfFile;
use wprobe_core::target::ptrace::Ptrace;
use wprobe_tests::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture(tag: &str) -> PathBuf {
    build("mutate", tag, &["-O2", "-fno-optimize-sibling-calls"])
}

/// One hit as its handler saw it.
#[derive(Clone, Debug)]
struct Ev {
    probe: ProbeId,
    kind: HitKind,
    addr: u64,
    regs: Regs,
    captures: Vec<(String, Value)>,
    ret: Option<Return>,
}

type Decide = Box<dyn FnMut(&Hit<'_>) -> Verdict>;
type StopWhen = Box<dyn FnMut(&[Ev]) -> bool>;

/// A probe id known only once the probe is added, for a handler made
/// before.
fn later_id() -> Rc<Cell<ProbeId>> {
    Rc::new(Cell::new(ProbeId(0)))
}

/// A sink whose `decide` answers with a closure, recording every hit.
struct Handler {
    decide: Decide,
    events: Vec<Ev>,
    warnings: Vec<String>,
    /// Raises `stop` when it returns true (after the hit's verdict).
    stop_when: Option<StopWhen>,
    stop: Arc<AtomicBool>,
}

impl Handler {
    fn new(decide: impl FnMut(&Hit<'_>) -> Verdict + 'static) -> Handler {
        Handler {
            decide: Box::new(decide),
            events: Vec::new(),
            warnings: Vec::new(),
            stop_when: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn of(&self, probe: ProbeId, kind: HitKind) -> Vec<&Ev> {
        self.events
            .iter()
            .filter(|e| e.probe == probe && e.kind == kind)
            .collect()
    }
}

impl Sink for Handler {
    fn hit(&mut self, _: &Hit<'_>) {
        panic!("the engine calls `decide`, and this sink does not call `hit`");
    }
    fn notice(&mut self, notice: &Notice) {
        if let Notice::Warning(w) = notice {
            self.warnings.push(w.clone());
        }
    }
    fn decide(&mut self, hit: &Hit<'_>) -> Verdict {
        let verdict = (self.decide)(hit);
        self.events.push(Ev {
            probe: hit.probe,
            kind: hit.kind,
            addr: hit.addr,
            regs: *hit.regs,
            captures: hit.captures.to_vec(),
            ret: hit.ret,
        });
        if let Some(f) = self.stop_when.as_mut() {
            if f(&self.events) {
                self.stop.store(true, Ordering::SeqCst);
            }
        }
        verdict
    }
}

/// A sink that only implements `hit`: the default `decide` must report the
/// hit and let the thread go unchanged.
#[derive(Default)]
struct Recorder {
    events: Vec<(ProbeId, HitKind, Regs, Option<Return>)>,
    warnings: Vec<String>,
}

impl Sink for Recorder {
    fn hit(&mut self, hit: &Hit<'_>) {
        self.events.push((hit.probe, hit.kind, *hit.regs, hit.ret));
    }
    fn notice(&mut self, notice: &Notice) {
        if let Notice::Warning(w) = notice {
            self.warnings.push(w.clone());
        }
    }
}

/// The fixture under the engine, its output going to a file of its own.
struct Traced {
    engine: Engine<Ptrace>,
    pid: i32,
    out: PathBuf,
    bin: PathBuf,
}

impl Traced {
    fn spawn(bin: &Path, tag: &str, args: &[&str]) -> Traced {
        let out = scratch_dir().join(format!("{tag}.out"));
        let _ = std::fs::remove_file(&out);
        let mut argv = vec![
            bin.to_string_lossy().into_owned(),
            out.to_string_lossy().into_owned(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut engine = Engine::new(Ptrace::new());
        let pid = engine.spawn(&argv).expect("spawn");
        Traced {
            engine,
            pid,
            out,
            bin: bin.to_path_buf(),
        }
    }

    fn probe(&mut self, sink: &mut dyn Sink, text: &str) -> ProbeId {
        let text = text.replace("BIN", &self.bin.to_string_lossy());
        let spec = ProbeSpec::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        self.engine
            .add_probe(spec, sink)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// Runs until the program ended; its exit status and output.
    fn finish(&mut self, sink: &mut dyn Sink) -> (ExitStatus, String) {
        let stop = AtomicBool::new(false);
        assert_eq!(
            self.engine.run(sink, &stop).expect("run"),
            RunEnd::AllExited
        );
        let exits = self.engine.exits();
        assert_eq!(exits.len(), 1, "{exits:?}");
        assert_eq!(exits[0].0, self.pid);
        (exits[0].1, self.output())
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).expect("the fixture's output")
    }
}

/// The fixture run without any tracer: its output and exit status.
fn plain(bin: &Path, tag: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = scratch_dir().join(format!("{tag}.plain.out"));
    let _ = std::fs::remove_file(&out);
    let mut a = vec![out.to_str().expect("utf-8 path")];
    a.extend_from_slice(args);
    let r = run_plain(bin, &a);
    (
        r.status.code(),
        std::fs::read_to_string(&out).expect("plain output"),
    )
}

/// What `mutate calls N` prints when `f(i)` returns `value(i)` and its
/// body ran `count` times.
fn calls_output(n: i64, value: impl Fn(i64) -> i64, count: i64) -> String {
    let mut s: String = (0..n).map(|i| format!("{i} {}\n", value(i))).collect();
    s.push_str(&format!("count {count}\n"));
    s
}

/// What `mutate rec N R` prints when `rec(k)` returns `value(k)`.
fn rec_output(n: i64, rounds: usize, value: impl Fn(i64) -> i64) -> String {
    let round: String = (0..=n).map(|k| format!("{k} {}\n", value(k))).collect();
    round.repeat(rounds)
}

/// Offsets of `f`'s instructions in the file, and their first bytes.
fn f_code(bin: &Path) -> (Vec<usize>, Vec<u8>) {
    let elf = ElfFile::open(bin).expect("parse fixture");
    let sym = elf.lookup("f").expect("f");
    let code = elf.file_bytes(sym.addr, sym.size as usize).expect("code");
    (wprobe_core::arch::native::insn_boundaries(&code), code)
}

/// The offset of `f`'s `ret`.
fn f_ret_offset(bin: &Path) -> usize {
    let (insns, code) = f_code(bin);
    let at = *insns.last().expect("instructions");
    assert_eq!(code[at], 0xc3, "f ends with a plain `ret`: {code:02x?}");
    at
}

fn hex(caps: &[(String, Value)], name: &str) -> u64 {
    match caps.iter().find(|(n, _)| n == name) {
        Some((_, Value::Hex(v))) => *v,
        other => panic!("capture {name}: {other:?}"),
    }
}

fn read_u64(pid: i32, addr: u64) -> u64 {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut b = [0u8; 8];
    mem.read_exact_at(&mut b, addr).expect("read the stack");
    u64::from_le_bytes(b)
}

#[test]
fn continue_everywhere_changes_nothing() {
    let _serial = serial();
    let bin = fixture("continue");
    let ret_off = f_ret_offset(&bin);
    let n = 40;

    // Untraced: what `f` computes.
    let (status, expected) = plain(&bin, "continue", &["calls", "40"]);
    assert_eq!(status, Some(3));
    assert_eq!(expected, calls_output(n, |i| 3 * i + 1, n));

    // Entry, post (out of line, and simulated at the `ret`) and return
    // probes whose sink knows nothing of verdicts.
    let mut rec = Recorder::default();
    let mut t = Traced::spawn(&bin, "continue", &["calls", "40"]);
    let entry = t.probe(&mut rec, "uprobe:BIN:f post");
    let at_ret = t.probe(&mut rec, &format!("uprobe:BIN:f+{ret_off:#x} post"));
    let ret = t.probe(&mut rec, "uretprobe:BIN:f");
    assert_eq!(t.finish(&mut rec), (ExitStatus::Code(3), expected.clone()));
    let count = |p, k| rec.events.iter().filter(|e| e.0 == p && e.1 == k).count();
    assert_eq!(count(entry, HitKind::Entry), 40);
    assert_eq!(count(entry, HitKind::Post), 40);
    assert_eq!(count(at_ret, HitKind::Entry), 40);
    assert_eq!(count(at_ret, HitKind::Post), 40);
    let values: Vec<u64> = rec
        .events
        .iter()
        .filter(|e| e.0 == ret)
        .map(|e| e.3.expect("return").value)
        .collect();
    assert_eq!(values, (0..40u64).map(|i| 3 * i + 1).collect::<Vec<_>>());
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);

    // The same probes answering `Continue`, and `SetRegs` with the very
    // registers of the hit, in turn: nothing changes either.
    let mut flip = false;
    let mut h = Handler::new(move |hit| {
        flip = !flip;
        if flip {
            Verdict::Continue
        } else {
            Verdict::SetRegs(*hit.regs)
        }
    });
    let mut t = Traced::spawn(&bin, "continue", &["calls", "40"]);
    t.probe(&mut h, "uprobe:BIN:f post");
    t.probe(&mut h, &format!("uprobe:BIN:f+{ret_off:#x} post"));
    t.probe(&mut h, "uretprobe:BIN:f");
    assert_eq!(t.finish(&mut h), (ExitStatus::Code(3), expected));
    assert_eq!(h.events.len(), 200);
    assert!(h.warnings.is_empty(), "{:?}", h.warnings);

    // Recursion with entry and return probes.
    let (status, expected) = plain(&bin, "continue-rec", &["rec", "8", "3"]);
    assert_eq!(status, Some(3));
    assert_eq!(expected, rec_output(8, 3, |k| k * (k + 1) / 2));
    let mut h = Handler::new(|_| Verdict::Continue);
    let mut t = Traced::spawn(&bin, "continue-rec", &["rec", "8", "3"]);
    let entry = t.probe(&mut h, "uprobe:BIN:rec");
    let ret = t.probe(&mut h, "uretprobe:BIN:rec");
    assert_eq!(t.finish(&mut h), (ExitStatus::Code(3), expected));
    assert_eq!(h.of(entry, HitKind::Entry).len(), 3 * 45);
    assert_eq!(h.of(ret, HitKind::Return).len(), 3 * 45);
}

#[test]
fn entry_verdict_changes_an_argument() {
    let _serial = serial();
    let bin = fixture("arg");
    // `f` starts with an instruction that runs out of line (a RIP-relative
    // `add` to the counter): the copy runs on the new registers.
    let n = 12;
    let x = |i: i64| if i % 2 == 1 { i * 10 } else { i };
    let chosen = later_id();
    let c = chosen.clone();
    let mut h = Handler::new(move |hit| {
        // Only the first probe changes anything: odd arguments times ten.
        if hit.kind == HitKind::Entry && hit.probe == c.get() && hit.regs.rdi % 2 == 1 {
            let mut r = *hit.regs;
            r.rdi *= 10;
            Verdict::SetRegs(r)
        } else {
            Verdict::Continue
        }
    });
    let mut t = Traced::spawn(&bin, "arg", &["calls", "12"]);
    let changer = t.probe(&mut h, "uprobe:BIN:f");
    chosen.set(changer);
    let watcher = t.probe(&mut h, "uprobe:BIN:f arg=%rdi:s64");
    let ret = t.probe(&mut h, "uretprobe:BIN:f arg=$arg1:s64");
    let (status, out) = t.finish(&mut h);
    assert_eq!(status, ExitStatus::Code(3));
    assert_eq!(out, calls_output(n, |i| 3 * x(i) + 1, n));

    // The changer saw the program's argument; the probe after it at the
    // same address saw the changed one, in its registers and captures.
    let seen = |p| -> Vec<i64> {
        h.of(p, HitKind::Entry)
            .iter()
            .map(|e| e.regs.rdi as i64)
            .collect()
    };
    assert_eq!(seen(changer), (0..n).collect::<Vec<_>>());
    assert_eq!(seen(watcher), (0..n).map(x).collect::<Vec<_>>());
    let caps: Vec<Value> = h
        .of(watcher, HitKind::Entry)
        .iter()
        .map(|e| e.captures[0].1.clone())
        .collect();
    assert_eq!(
        caps,
        (0..n).map(|i| Value::Signed(x(i))).collect::<Vec<_>>()
    );
    // The return was hijacked with the final registers: entry arguments
    // and captures are the changed ones, and the value follows from them.
    let rets = h.of(ret, HitKind::Return);
    assert_eq!(rets.len(), n as usize);
    for (i, e) in rets.iter().enumerate() {
        let r = e.ret.expect("return");
        assert_eq!(r.entry_args[0] as i64, x(i as i64));
        assert_eq!(e.captures[0].1, Value::Signed(x(i as i64)));
        assert_eq!(r.value as i64, 3 * x(i as i64) + 1);
    }
    assert!(h.warnings.is_empty(), "{:?}", h.warnings);
}

#[test]
fn entry_verdict_skips_the_function() {
    let _serial = serial();
    let bin = fixture("skip");
    let ret_off = f_ret_offset(&bin);
    let n = 10;
    // Even arguments: return -(100 + x) at once, as if `f` had run and
    // returned — rip = [rsp], rsp += 8, rax = the value.
    let chosen = later_id();
    let c = chosen.clone();
    let mut h = Handler::new(move |hit| {
        if hit.kind != HitKind::Entry || hit.probe != c.get() || hit.regs.rdi % 2 == 1 {
            return Verdict::Continue;
        }
        let mut r = *hit.regs;
        r.rip = hex(hit.captures, "ra");
        r.rsp += 8;
        r.rax = (-(100 + hit.regs.rdi as i64)) as u64;
        Verdict::SetRegs(r)
    });
    let mut t = Traced::spawn(&bin, "skip", &["calls", "10"]);
    let skipper = t.probe(&mut h, "uprobe:BIN:f ra=$stack0:x64");
    chosen.set(skipper);
    // After it, at the same address: an entry probe with a post handler.
    let same = t.probe(&mut h, "uprobe:BIN:f post");
    let at_ret = t.probe(&mut h, &format!("uprobe:BIN:f+{ret_off:#x}"));
    // One instance at most: a skipped call that hijacked a return anyway
    // would leave one behind, and the next call would be missed.
    let ret = t.probe(&mut h, "uretprobe:BIN:f maxactive=1");
    let (status, out) = t.finish(&mut h);
    assert_eq!(status, ExitStatus::Code(3));
    // The chosen values come back; f's body (the counter) ran only for
    // the odd arguments.
    let value = |i: i64| if i % 2 == 0 { -(100 + i) } else { 3 * i + 1 };
    assert_eq!(out, calls_output(n, value, n / 2));

    // The probe after the skipper saw every hit, with the new rip on the
    // skipped ones; no post event, no `ret` reached, no return event for
    // those.
    let entries = h.of(same, HitKind::Entry);
    assert_eq!(entries.len(), n as usize);
    let skipped = h.of(skipper, HitKind::Entry);
    for (i, (e, s)) in entries.iter().zip(&skipped).enumerate() {
        if i % 2 == 0 {
            assert_eq!(e.regs.rip, hex(&s.captures, "ra"), "call {i}");
            assert_eq!(e.regs.rsp, s.regs.rsp + 8);
            assert_ne!(e.regs.rip, e.addr);
        } else {
            assert_eq!(e.regs.rip, e.addr, "call {i}");
        }
    }
    let odd = |evs: Vec<&Ev>| -> Vec<u64> { evs.iter().map(|e| e.regs.rdi).collect() };
    assert_eq!(odd(h.of(same, HitKind::Post)), vec![1, 3, 5, 7, 9]);
    assert_eq!(odd(h.of(at_ret, HitKind::Entry)), vec![1, 3, 5, 7, 9]);
    let rets: Vec<(u64, u64)> = h
        .of(ret, HitKind::Return)
        .iter()
        .map(|e| {
            let r = e.ret.expect("return");
            (r.entry_args[0], r.value)
        })
        .collect();
    assert_eq!(rets, vec![(1, 4), (3, 10), (5, 16), (7, 22), (9, 28)]);
    // The return probe's hits count the calls that ran.
    let stats = t.engine.stats(ret).expect("stats");
    assert_eq!((stats.hits, stats.nmissed), (5, 0));
    assert!(h.warnings.is_empty(), "{:?}", h.warnings);
}

#[test]
fn post_verdict_changes_registers_after_the_instruction() {
    let _serial = serial();
    let bin = fixture("post");
    let (insns, code) = f_code(&bin);
    // f: the counter's RIP-relative `add` (out of line, with a trap after
    // the copy for the post event), the `lea` of the result, `ret`
    // (simulated).
    assert_eq!(
        &code[..3],
        &[0x48, 0x83, 0x05],
        "f starts with the add: {code:02x?}"
    );
    assert_eq!(
        &code[insns[1]..insns[1] + 2],
        &[0x48, 0x8d],
        "then the lea: {code:02x?}"
    );
    let ret_off = f_ret_offset(&bin);
    let n = 10;
    let mut h = Handler::new(|hit| {
        if hit.kind != HitKind::Post {
            return Verdict::Continue;
        }
        let mut r = *hit.regs;
        if hit.regs.rip < hit.addr || hit.regs.rip > hit.addr + 16 {
            // After the `ret`: in the caller, which sees the value.
            r.rax *= 2;
        } else {
            // After the `add`: the `lea` still to run reads rdi.
            r.rdi += 100;
        }
        Verdict::SetRegs(r)
    });
    let mut t = Traced::spawn(&bin, "post", &["calls", "10"]);
    let add = t.probe(&mut h, "uprobe:BIN:f post");
    let ret = t.probe(&mut h, &format!("uprobe:BIN:f+{ret_off:#x} post"));
    let (status, out) = t.finish(&mut h);
    assert_eq!(status, ExitStatus::Code(3));
    assert_eq!(out, calls_output(n, |i| ((i + 100) * 3 + 1) * 2, n));
    // The entry events saw the registers before; the post ones, after
    // the instruction: the entry of `ret` sees the changed rdi.
    let rdi = |p, k| -> Vec<u64> { h.of(p, k).iter().map(|e| e.regs.rdi).collect() };
    assert_eq!(rdi(add, HitKind::Entry), (0..10).collect::<Vec<_>>());
    assert_eq!(rdi(add, HitKind::Post), (0..10).collect::<Vec<_>>());
    assert_eq!(rdi(ret, HitKind::Entry), (100..110).collect::<Vec<_>>());
    let rax: Vec<i64> = h
        .of(ret, HitKind::Post)
        .iter()
        .map(|e| e.regs.rax as i64)
        .collect();
    assert_eq!(rax, (0..n).map(|i| (i + 100) * 3 + 1).collect::<Vec<_>>());
    assert!(h.warnings.is_empty(), "{:?}", h.warnings);
}

#[test]
fn return_verdict_sets_what_the_caller_sees() {
    let _serial = serial();
    let bin = fixture("retval");
    let n = 12;
    let chosen = later_id();
    let c = chosen.clone();
    let mut h = Handler::new(move |hit| {
        let r = hit.ret.expect("return events only");
        if hit.probe == c.get() && r.entry_args[0] % 3 == 0 {
            // Only rax changes: rip stays the real return address.
            let mut regs = *hit.regs;
            regs.rax += 1_000_000;
            Verdict::SetRegs(regs)
        } else {
            Verdict::Continue
        }
    });
    let mut t = Traced::spawn(&bin, "retval", &["calls", "12"]);
    let changer = t.probe(&mut h, "uretprobe:BIN:f");
    chosen.set(changer);
    let watcher = t.probe(&mut h, "uretprobe:BIN:f");
    let (status, out) = t.finish(&mut h);
    assert_eq!(status, ExitStatus::Code(3));
    let value = |i: i64| 3 * i + 1 + if i % 3 == 0 { 1_000_000 } else { 0 };
    assert_eq!(out, calls_output(n, value, n));

    // A return event's rip is the original return address — in `main`,
    // after its one call of `f` — never the trampoline.
    let elf = ElfFile::open(&bin).expect("parse");
    let (f, main) = (elf.lookup("f").unwrap(), elf.lookup("main").unwrap());
    let first = h.of(changer, HitKind::Return);
    let bias = first[0].addr - f.addr;
    let ra = first[0].ret.unwrap().return_address;
    assert!(
        ra >= main.addr + bias && ra < main.addr + bias + main.size,
        "{ra:#x} is in main"
    );
    for e in h.events.iter() {
        assert_eq!(e.regs.rip, ra);
        assert_eq!(e.ret.unwrap().return_address, ra);
    }
    // The second probe saw the first one's value.
    let seen: Vec<i64> = h
        .of(watcher, HitKind::Return)
        .iter()
        .map(|e| e.ret.unwrap().value as i64)
        .collect();
    assert_eq!(seen, (0..n).map(value).collect::<Vec<_>>());
    assert!(h.warnings.is_empty(), "{:?}", h.warnings);
}

#[test]
fn return_verdicts_in_recursion() {
    let _serial = serial();
    let bin = fixture("recursion");
    const N: i64 = 8;
    const ROUNDS: usize = 3;
    // rec(n) = n + rec(n - 1). The first return probe adds 100·n + 1, n
    // being the argument of the call returning (its instance's own entry
    // argument), the second adds 1: rec'(n) = rec'(n - 1) + 101·n + 2.
    let chosen = later_id();
    let c = chosen.clone();
    let mut h = Handler::new(move |hit| {
        let Some(r) = hit.ret else {
            return Verdict::Continue;
        };
        let mut regs = *hit.regs;
        regs.rax += if hit.probe == c.get() {
            100 * r.entry_args[0] + 1
        } else {
            1
        };
        Verdict::SetRegs(regs)
    });
    let mut t = Traced::spawn(&bin, "recursion", &["rec", "8", "3"]);
    let entry = t.probe(&mut h, "uprobe:BIN:rec");
    // Exactly as many instances as rec(8) has live at its deepest: one
    // left behind (or released twice and over-counted) shows as a miss.
    let first = t.probe(&mut h, "uretprobe:BIN:rec maxactive=9");
    chosen.set(first);
    let second = t.probe(&mut h, "uretprobe:BIN:rec maxactive=9 n=$arg1:s64");
    let (status, out) = t.finish(&mut h);
    assert_eq!(status, ExitStatus::Code(3));
    let value = |k: i64| 2 * (k + 1) + 101 * k * (k + 1) / 2;
    assert_eq!(out, rec_output(N, ROUNDS, value));

    // Every call returned once, innermost first, each with its own
    // instance: argument n, value rec'(n - 1) + n before the verdicts.
    let order: Vec<i64> = (0..ROUNDS)
        .flat_map(|_| (0..=N).flat_map(|k| 0..=k))
        .collect();
    for p in [first, second] {
        let rets = h.of(p, HitKind::Return);
        let args: Vec<i64> = rets
            .iter()
            .map(|e| e.ret.unwrap().entry_args[0] as i64)
            .collect();
        assert_eq!(args, order);
        for e in rets {
            let n = e.ret.unwrap().entry_args[0] as i64;
            let before = if n == 0 { 0 } else { value(n - 1) + n };
            let expect = if p == first {
                before
            } else {
                before + 100 * n + 1
            };
            assert_eq!(e.ret.unwrap().value as i64, expect, "rec({n})");
            assert_eq!(e.regs.rax as i64, expect);
        }
        let stats = t.engine.stats(p).expect("stats");
        assert_eq!((stats.hits, stats.nmissed), (order.len() as u64, 0));
    }
    assert_eq!(h.of(entry, HitKind::Entry).len(), order.len());
    assert!(h.warnings.is_empty(), "{:?}", h.warnings);
}

#[test]
fn refused_verdicts_leave_the_thread_alone() {
    let _serial = serial();
    let bin = fixture("refused");
    let (status, expected) = plain(&bin, "refused", &["calls", "6"]);
    assert_eq!(status, Some(3));
    // A return's `ret` popped the trampoline's address from just below the
    // stack pointer: a verdict sending the thread there (or to an entry,
    // later) is refused, as is one the kernel does not take.
    let trampoline = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let tr = trampoline.clone();
    let pid = std::rc::Rc::new(std::cell::Cell::new(0i32));
    let p = pid.clone();
    let mut h = Handler::new(move |hit| {
        let mut r = *hit.regs;
        match hit.kind {
            HitKind::Return => {
                tr.set(read_u64(p.get(), hit.regs.rsp - 8));
                r.rip = tr.get();
                r.rax = 5;
            }
            HitKind::Entry if hit.regs.rdi == 1 || hit.regs.rdi == 2 => {
                r.rip = tr.get();
                r.rdi = 1000;
            }
            HitKind::Entry if hit.regs.rdi == 3 => {
                r.fs_base = 0xffff_ffff_ffff_0000;
                r.rdi = 1000;
            }
            _ => return Verdict::Continue,
        }
        Verdict::SetRegs(r)
    });
    let mut t = Traced::spawn(&bin, "refused", &["calls", "6"]);
    pid.set(t.pid);
    t.probe(&mut h, "uprobe:BIN:f");
    t.probe(&mut h, "uretprobe:BIN:f");
    assert_eq!(t.finish(&mut h), (ExitStatus::Code(3), expected));
    assert_ne!(trampoline.get(), 0);
    let pages = h
        .warnings
        .iter()
        .filter(|w| w.contains("engine's own pages"))
        .count();
    let kernel = h
        .warnings
        .iter()
        .filter(|w| w.contains("were refused"))
        .count();
    assert_eq!(
        (pages, kernel, h.warnings.len()),
        (6 + 2, 1, 9),
        "{:?}",
        h.warnings
    );
}

#[test]
fn detach_mid_run_leaves_code_and_stacks_as_in_the_file() {
    let _serial = serial();
    let bin = fixture("detach");
    let hold = scratch_dir().join("detach.hold");
    let _ = std::fs::remove_file(&hold);
    // The program waits for this file at its end: made on the way out
    // whatever happens, so that a failing test leaves no process behind.
    struct Release(PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let release = Release(hold.clone());
    const ROUNDS: usize = 400;
    let mut h = Handler::new(|hit| match hit.kind {
        HitKind::Return => {
            let mut r = *hit.regs;
            r.rax += 1;
            Verdict::SetRegs(r)
        }
        _ => Verdict::Continue,
    });
    // Stop deep inside a recursion, with instances live, after a while.
    h.stop_when = Some(Box::new(|evs: &[Ev]| {
        let depth = evs
            .iter()
            .map(|e| match e.kind {
                HitKind::Entry => 1i64,
                _ => -1,
            })
            .sum::<i64>();
        evs.len() > 600 && depth >= 4
    }));
    let mut t = Traced::spawn(
        &bin,
        "detach",
        &["rec", "8", &ROUNDS.to_string(), hold.to_str().unwrap()],
    );
    t.probe(&mut h, "uprobe:BIN:rec");
    let ret = t.probe(&mut h, "uretprobe:BIN:rec maxactive=9");
    let stop = h.stop.clone();
    assert_eq!(t.engine.run(&mut h, &stop).expect("run"), RunEnd::Stopped);
    assert_eq!(live_and_file_bytes(t.pid, &bin, "rec", 1).0, vec![0xcc]);
    t.engine.detach_all().expect("detach");
    assert_eq!(t.engine.stats(ret).unwrap().nmissed, 0);

    // It runs on untraced to its end, where it waits for us.
    let pid = t.pid;
    let lines = ROUNDS * 9;
    assert!(
        wait_until(60, || std::fs::read_to_string(&t.out)
            .is_ok_and(|s| s.lines().count() == lines)),
        "the program finishes its rounds untraced"
    );
    assert_untouched(pid, &bin, "rec");
    let (live, file) = live_and_file_bytes(pid, &bin, "f", 16);
    assert_eq!(live, file);
    drop(release);
    let mut st = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 3,
        "status {st:#x}"
    );

    // Lines before the detach have every return one more, those after
    // none; at most the call in flight has some.
    let plain_v = |k: i64| k * (k + 1) / 2;
    let traced_v = |k: i64| plain_v(k) + k + 1;
    let mut phase = 0; // 0: traced, 1: the call in flight seen, 2: plain
    let (mut traced, mut untraced) = (0, 0);
    for line in t.output().lines() {
        let (k, v) = line.split_once(' ').expect("k v");
        let (k, v): (i64, i64) = (k.parse().unwrap(), v.parse().unwrap());
        if phase == 0 && v == traced_v(k) {
            traced += 1;
            continue;
        }
        if phase < 2 && v != plain_v(k) {
            assert!(
                phase == 0 && v > plain_v(k) && v < traced_v(k),
                "line {line:?}"
            );
            phase = 1;
            continue;
        }
        assert_eq!(v, plain_v(k), "line {line:?} after the detach");
        phase = 2;
        untraced += 1;
    }
    assert!(
        traced >= 10 && untraced >= 100,
        "{traced} traced, {untraced} untraced"
    );
}
