//! The read-only views of a process (`symbols::browse`): its functions, a
//! function's instructions with the engine's verdict on each, and a dry
//! run of a spec. Each answer is checked against what the engine itself
//! does in the same process — the address it arms, the refusal it gives —
//! and the process's code is checked to be untouched by the views.

use std::os::unix::fs::FileExt;
use std::path::Path;

use wprobe_core::engine::{spec_text, Engine, Hit, Notice, Sink};
use wprobe_core::spec::ProbeSpec;
use wprobe_core::symbols::browse::{check_spec, disasm, functions, BrowseError};
use wprobe_core::target::ptrace::Ptrace;
use wprobe_tests::*;

/// Keeps the notices, for the reason of a pending probe.
#[derive(Default)]
struct Notes(Vec<Notice>);
impl Sink for Notes {
    fn hit(&mut self, _: &Hit<'_>) {}
    fn notice(&mut self, n: &Notice) {
        self.0.push(n.clone());
    }
}

/// Checks that the dry run of `spec` (`BIN` stands for the fixture) says
/// what `add_probe` then does in the same process: the same address and
/// decision, the same pending reason, or the same refusal, word for word.
/// Returns the dry run's address, if any.
fn check(engine: &mut Engine<Ptrace>, pid: i32, bin: &Path, spec: &str) -> Option<u64> {
    let text = spec.replace("BIN", &bin.to_string_lossy());
    let spec = ProbeSpec::parse(&text).expect("the spec parses");
    let dry = check_spec(pid, &spec);
    let mut notes = Notes::default();
    let real = engine.add_probe(spec.clone(), &mut notes);
    match (&dry, real) {
        (Ok(placed), Ok(id)) => {
            assert_eq!(placed.len(), 1, "`{text}`: one process");
            let p = &placed[0];
            assert_eq!(p.pid, pid);
            match engine.placements(id).as_slice() {
                [(at_pid, addr)] => {
                    assert_eq!(*at_pid, pid);
                    assert_eq!(
                        p.address,
                        Some(*addr),
                        "`{text}`: the engine armed it elsewhere"
                    );
                    assert!(
                        matches!(p.decision, "simulate" | "boost" | "out-of-line"),
                        "`{text}`: {p:?}"
                    );
                    let armed = notes.0.iter().find_map(|n| match n {
                        Notice::Armed { location, .. } => Some(location.clone()),
                        _ => None,
                    });
                    assert_eq!(armed.as_deref(), Some(p.location.as_str()), "`{text}`");
                }
                [] => {
                    assert_eq!(p.decision, "pending", "`{text}`: {p:?}");
                    let reason = notes.0.iter().find_map(|n| match n {
                        Notice::Pending { reason, .. } => Some(reason.clone()),
                        _ => None,
                    });
                    assert_eq!(reason, p.note, "`{text}`");
                }
                more => panic!("`{text}`: placed {more:?}"),
            }
            engine.remove_probe(id).expect("remove");
        }
        (Err(dry), Err(real)) => assert_eq!(dry, &real.to_string(), "`{text}`"),
        (dry, real) => panic!("`{text}`: the dry run says {dry:?}, the engine {real:?}"),
    }
    dry.ok().and_then(|p| p[0].address)
}

/// The process's bytes of `len` bytes at `addr`.
fn live(pid: i32, addr: u64, len: usize) -> Vec<u8> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut buf = vec![0u8; len];
    mem.read_exact_at(&mut buf, addr).expect("read live code");
    buf
}

#[test]
fn functions_of_a_running_program() {
    let bin = build("spin", "browse-fn", &["-O2"]);
    let mut child = start_ready(&bin, &["100000000"]);
    let pid = child.id() as i32;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    let exe = exe.to_string_lossy();

    let work = functions(pid, "work", 50).expect("functions");
    assert_eq!(
        work[0].name, "work",
        "an exact match comes first: {work:#?}"
    );
    assert_eq!(work[0].module, exe);
    let malloc = functions(pid, "MALLOC", 5000).expect("functions");
    let m = &malloc[0];
    assert_eq!(m.name, "malloc", "exact, in any case, first: {malloc:#?}");
    assert!(m.module.contains("libc"), "{m:?}");
    assert!(m.size > 0 && !m.ifunc);
    assert!(malloc
        .iter()
        .all(|f| f.name.to_lowercase().contains("malloc")
            || f.demangled
                .as_deref()
                .is_some_and(|d| d.to_lowercase().contains("malloc"))));
    // Aliases at one address (malloc, __libc_malloc) are shown once.
    let mut places: Vec<(&str, u64)> = malloc
        .iter()
        .map(|f| (f.module.as_str(), f.address))
        .collect();
    places.sort();
    let all = places.len();
    places.dedup();
    assert_eq!(places.len(), all, "an address listed twice: {malloc:#?}");

    // The runtime address is the file address plus the module's load bias,
    // as /proc/PID/maps places the file.
    let maps = wprobe_core::symbols::read_maps(pid).expect("maps");
    let libc = maps
        .iter()
        .find(|e| e.path.as_deref() == Some(m.module.as_str()) && e.offset == 0)
        .expect("libc's first mapping");
    assert_eq!(m.address, libc.start + m.file_address, "{m:?}");

    let glob = functions(pid, "wor*", 50).expect("functions");
    assert!(
        glob.iter().any(|f| f.name == "work" && f.module == exe),
        "{glob:#?}"
    );
    assert!(glob.iter().all(|f| f.name.starts_with("wor")), "{glob:#?}");
    let sub = functions(pid, "ORK", 5000).expect("functions");
    assert!(sub.iter().any(|f| f.name == "work"), "{sub:#?}");
    assert!(
        sub.iter().any(|f| f.name == "fork"),
        "libc's fork has `ork` too: {sub:#?}"
    );

    let five = functions(pid, "", 5).expect("functions");
    assert_eq!(five.len(), 5);
    assert!(
        five.iter().all(|f| f.module == exe),
        "the executable first: {five:#?}"
    );
    let everything = functions(pid, "", 100_000).expect("functions");
    assert!(everything.len() > 1000, "libc alone has thousands");

    // Nothing of that touched the program.
    let before = (live(pid, work[0].address, 16), live(pid, m.address, 16));
    disasm(pid, "libc:malloc", 64).expect("disasm");
    let dry = check_spec(pid, &ProbeSpec::parse("uprobe:libc:malloc").unwrap()).expect("dry run");
    assert_eq!(dry[0].address, Some(m.address));
    assert_eq!(
        (live(pid, work[0].address, 16), live(pid, m.address, 16)),
        before
    );
    let (now, file) = live_and_file_bytes(pid, &bin, "work", 16);
    assert_eq!(now, file);

    // The engine arms exactly there.
    let mut engine = Engine::new(Ptrace::new());
    engine.attach(pid).expect("attach to our own child");
    assert_eq!(
        check(&mut engine, pid, &bin, "uprobe:libc:malloc"),
        Some(m.address)
    );
    assert_eq!(
        check(&mut engine, pid, &bin, "uprobe:BIN:work"),
        Some(work[0].address)
    );
    check(&mut engine, pid, &bin, "uprobe:libc:mallocc");
    check(&mut engine, pid, &bin, "uprobe:libnothere:f");
    check(&mut engine, pid, &bin, "uprobe:/no/such/file:f");
    engine.detach_all().expect("detach");
    child.kill().expect("kill our fixture");
    let _ = child.wait();
}

#[test]
fn instructions_and_verdicts_agree_with_the_engine() {
    // -O0: `work` is push rbp (1 byte); mov rbp, rsp (3 bytes); ...
    let bin = build("basic", "browse-disasm", &["-O0"]);
    let mut engine = Engine::new(Ptrace::new());
    // Stopped before its first instruction: only the program and the
    // dynamic linker are mapped.
    let pid = engine
        .spawn(&[bin.to_string_lossy().into_owned(), "3".into()])
        .expect("spawn");
    let (before, _) = live_and_file_bytes(pid, &bin, "work", 32);

    let d = disasm(pid, "work", 512).expect("disasm work");
    assert_eq!(d.symbol, "work");
    assert!(d.size > 0);
    let first = &d.instructions[0];
    assert_eq!((first.offset, first.address), (0, d.address));
    assert_eq!(first.text, "push rbp");
    assert_eq!(first.bytes, [0x55]);
    assert!(first.verdict.is_ok(), "{first:?}");
    assert_eq!(d.instructions[1].offset, 1);
    assert_eq!(
        d.instructions[2].offset, 4,
        "+2 is inside `mov rbp, rsp`: not listed"
    );
    for pair in d.instructions.windows(2) {
        assert_eq!(pair[0].offset + pair[0].bytes.len() as u64, pair[1].offset);
    }
    let last = d.instructions.last().expect("one");
    assert_eq!(
        last.offset + last.bytes.len() as u64,
        d.size,
        "up to the function's end"
    );
    assert_eq!(last.text, "ret");
    // Every listed offset is where the engine would put the probe.
    for insn in &d.instructions {
        let spec = format!("uprobe:BIN:work+{:#x}", insn.offset);
        assert_eq!(
            check(&mut engine, pid, &bin, &spec),
            Some(insn.address),
            "{insn:?}"
        );
        let dry = check_spec(
            pid,
            &ProbeSpec::parse(&spec.replace("BIN", &bin.to_string_lossy())).unwrap(),
        )
        .expect("placed");
        assert_eq!(Ok(dry[0].decision), insn.verdict, "{insn:?}");
    }
    assert_eq!(
        disasm(pid, "work", 2).expect("disasm").instructions.len(),
        2
    );

    // `odd_ud2` is nop; ud2; ret: the ud2 is refused, with the engine's words.
    let odd = disasm(pid, "odd_ud2", 16).expect("disasm odd_ud2");
    let texts: Vec<&str> = odd.instructions.iter().map(|i| i.text.as_str()).collect();
    assert_eq!(texts, ["nop", "ud2", "ret"]);
    let ud2 = &odd.instructions[1];
    let reason = ud2.verdict.clone().expect_err("ud2 is refused");
    let spec = ProbeSpec::parse(&format!("uprobe:{}:odd_ud2+1", bin.display())).unwrap();
    let real = engine
        .add_probe(spec.clone(), &mut Notes::default())
        .expect_err("the engine refuses ud2");
    assert_eq!(real.to_string(), format!("{}: {reason}", spec_text(&spec)));
    assert_eq!(
        odd.instructions[0].verdict,
        Ok("simulate"),
        "a nop is simulated"
    );

    // Dry runs of good and bad specs say what the engine does.
    check(&mut engine, pid, &bin, "uprobe:BIN:work");
    check(&mut engine, pid, &bin, "uretprobe:BIN:work");
    check(&mut engine, pid, &bin, "uprobe:BIN:work+2");
    check(&mut engine, pid, &bin, "uprobe:BIN:work+0x1000");
    check(&mut engine, pid, &bin, "uprobe:BIN:wrok");
    check(&mut engine, pid, &bin, "uprobe:BIN:nosize");
    check(&mut engine, pid, &bin, "uprobe:BIN:nosize force");
    check(&mut engine, pid, &bin, "uprobe:BIN:odd_int3");
    check(&mut engine, pid, &bin, "uprobe:BIN:odd_hlt");
    check(&mut engine, pid, &bin, "uprobe:BIN:0x10");
    check(&mut engine, pid, &bin, "uprobe:0x1000");
    check(&mut engine, pid, &bin, "uretprobe:BIN:odd_ud2");
    // libc is not mapped yet: pending, for both.
    check(&mut engine, pid, &bin, "uprobe:libc:malloc");
    check(&mut engine, pid, &bin, "uprobe:/no/such/file:f");

    // Names that are not functions.
    let err = |s: &str| disasm(pid, s, 8).expect_err(s);
    assert!(
        matches!(err("wrok"), BrowseError::Symbol(_))
            && err("wrok").to_string().contains("did you mean `work`?"),
        "{}",
        err("wrok")
    );
    assert!(matches!(err("work+4"), BrowseError::BadName { .. }));
    assert!(err("libnothere:f")
        .to_string()
        .contains("no module matching `libnothere`"));

    let (after, file) = live_and_file_bytes(pid, &bin, "work", 32);
    assert_eq!(
        after, before,
        "the views and removed probes left the code as it was"
    );
    assert_eq!(after, file);
    engine.kill_all();
}
