//! Refusals: a probe that cannot be placed gets an error naming the value
//! and saying what to do; nothing is written to the target, and
//! `wprobe trace` exits non-zero without running the command.

use std::path::Path;
use std::process::Command;

use wprobe_core::engine::{Engine, Hit, Notice, Sink};
use wprobe_core::spec::ProbeSpec;
use wprobe_core::target::ptrace::Ptrace;
use wprobe_tests::*;

/// Runs `wprobe trace -e SPEC -- BIN 3` (`BIN` in the spec stands for the
/// fixture) and checks the refusal: exit status 2, the program never ran
/// (its stdout is empty), and stderr holds every expected fragment.
fn check(bin: &Path, spec: &str, expect: &[&str]) {
    let b = bin.to_string_lossy();
    let spec = spec.replace("BIN", &b);
    let t = trace(&["-e", &spec, "--", &b, "3"]);
    assert_eq!(
        t.status,
        Some(2),
        "`{spec}` must be refused; stderr:\n{}",
        t.stderr
    );
    assert!(
        !t.stdout.contains("sum="),
        "`{spec}`: the command must not run:\n{}",
        t.stdout
    );
    for e in expect {
        assert!(
            t.stderr.contains(e),
            "`{spec}`: expected `{e}` in:\n{}",
            t.stderr
        );
    }
}

#[test]
fn refusals_name_the_value() {
    // -O0: `work` is push rbp (1 byte); mov rbp, rsp (3 bytes); ...
    let bin = build("basic", "refuse", &["-O0"]);
    check(
        &bin,
        "uprobe:BIN:work+2",
        &["not an instruction boundary in `work`", "+0x1", "+0x4"],
    );
    check(
        &bin,
        "uprobe:BIN:work+0x1000",
        &["+0x1000 is outside `work`", "bytes long"],
    );
    check(
        &bin,
        "uprobe:BIN:wrok",
        &["no symbol `wrok`", "did you mean", "`work`"],
    );
    check(
        &bin,
        "uprobe:BIN:nosize",
        &["`nosize`", "has no size", "add `force`"],
    );
    check(
        &bin,
        "uprobe:BIN:odd_int3",
        &["int3", "already a breakpoint"],
    );
    check(&bin, "uprobe:BIN:odd_ud2+1", &["cannot probe", "ud2"]);
    check(&bin, "uprobe:BIN:odd_hlt", &["cannot probe", "hlt"]);
    check(
        &bin,
        "uprobe:BIN:0x10",
        &["0x10 is not in an executable segment"],
    );
    check(
        &bin,
        "uprobe:0x1000",
        &["0x1000 is in no executable mapping of process"],
    );
    // A library the program loads at start (DT_NEEDED) is checked in its
    // file before the program runs, as the dynamic linker would find it.
    check(
        &bin,
        "uprobe:libc:mallco",
        &[
            "no symbol `mallco`",
            "libc.so.6",
            "did you mean",
            "`malloc`",
        ],
    );
    check(
        &bin,
        "uretprobe:libc.so.6:frea",
        &["no symbol `frea`", "`free`"],
    );
    check(&bin, "uprobe:/no/such/file:f", &["/no/such/file"]);
    check(&bin, "uprobe:BIN:work x=%foo", &["unknown register `%foo`"]);
    check(
        &bin,
        "uprobe:BIN:work x=%rdi:u12",
        &["unknown capture type `u12`"],
    );
    check(&bin, "kprobe:BIN:work", &["unknown probe kind `kprobe`"]);
    check(
        &bin,
        "uretprobe:BIN:work+4",
        &["a return probe goes on a function's entry"],
    );
}

#[test]
fn force_accepts_a_symbol_without_size() {
    let bin = build("basic", "force", &["-O0"]);
    let b = bin.to_string_lossy();
    let t = trace(&["-e", &format!("uprobe:{b}:nosize force"), "--", &b, "3"]);
    assert_eq!(t.status, Some(7), "{}", t.stderr);
    assert_eq!(t.hits(1), 0);
}

struct Quiet;
impl Sink for Quiet {
    fn hit(&mut self, _: &Hit<'_>) {}
    fn notice(&mut self, _: &Notice) {}
}

fn work_bytes(pid: i32, bin: &Path) -> (Vec<u8>, Vec<u8>) {
    live_and_file_bytes(pid, bin, "work", 16)
}

#[test]
fn another_tools_breakpoint_is_refused_and_left_alone() {
    let bin = build("basic", "foreign", &["-O2"]);
    let mut engine = Engine::new(Ptrace::new());
    let pid = engine
        .spawn(&[bin.to_string_lossy().into_owned(), "3".into()])
        .expect("spawn");
    // Another tool's breakpoint on `work`.
    let (live, file) = work_bytes(pid, &bin);
    assert_eq!(live, file);
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("mem");
    let addr = {
        use wprobe_core::symbols::{find_module, modules, read_maps, ElfCache};
        let mut c = ElfCache::new();
        let mods = modules(pid, &read_maps(pid).unwrap(), &mut c).unwrap();
        let m = find_module(&bin.to_string_lossy(), &mods, &mut c)
            .unwrap()
            .clone();
        c.get(&m.file)
            .unwrap()
            .lookup("work")
            .unwrap()
            .addr
            .wrapping_add(m.bias)
    };
    use std::io::{Seek, SeekFrom, Write};
    mem.seek(SeekFrom::Start(addr)).unwrap();
    mem.write_all(&[0xcc]).unwrap();
    let spec = ProbeSpec::parse(&format!("uprobe:{}:work", bin.display())).unwrap();
    let err = engine
        .add_probe(spec, &mut Quiet)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("live bytes") && err.contains("differ") && err.contains("live cc"),
        "{err}"
    );
    let (live2, _) = work_bytes(pid, &bin);
    assert_eq!(
        live2,
        live.iter()
            .enumerate()
            .map(|(i, &b)| if i == 0 { 0xcc } else { b })
            .collect::<Vec<_>>()
    );
    engine.kill_all();
}

#[test]
fn the_engines_own_pages_cannot_be_probed() {
    let bin = build("basic", "ownpages", &["-O2"]);
    let mut engine = Engine::new(Ptrace::new());
    let pid = engine
        .spawn(&[bin.to_string_lossy().into_owned(), "3".into()])
        .expect("spawn");
    let spec = ProbeSpec::parse(&format!("uprobe:{}:work", bin.display())).unwrap();
    engine
        .add_probe(spec, &mut Quiet)
        .expect("work is probeable");
    let maps = wprobe_core::symbols::read_maps(pid).unwrap();
    let area = maps
        .iter()
        .find(|m| m.exec && m.path.is_none() && m.end - m.start == 0x10000)
        .expect("the engine's out-of-line area");
    let spec = ProbeSpec::parse(&format!("uprobe:{:#x}", area.start + 32)).unwrap();
    let err = engine
        .add_probe(spec, &mut Quiet)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("engine's own"), "{err}");
    engine.kill_all();
}

#[test]
fn a_process_traced_by_someone_else_is_refused_with_the_tracer_named() {
    let bin = build("spin", "traced", &["-O2"]);
    let mut engine = Engine::new(Ptrace::new());
    let pid = engine
        .spawn(&[bin.to_string_lossy().into_owned(), "100".into()])
        .expect("spawn");
    let t = trace(&[
        "-e",
        &format!("uprobe:{}:work", bin.display()),
        "-p",
        &pid.to_string(),
    ]);
    assert_eq!(t.status, Some(2));
    assert!(
        t.stderr
            .contains(&format!("already traced by process {}", std::process::id())),
        "{}",
        t.stderr
    );
    engine.kill_all();
    let t = trace(&["-e", "uprobe:libc:malloc", "-p", "999999999"]);
    assert_eq!(t.status, Some(2));
    assert!(t.stderr.contains("999999999"), "{}", t.stderr);
}

#[test]
fn refusal_after_attach_leaves_the_target_as_it_was() {
    let bin = build("spin", "after", &["-O2"]);
    let mut child = Command::new(&bin)
        .args(["20000", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn spin");
    let pid = child.id() as i32;
    use std::io::Read;
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    // The first probe is armed, the second refused: the first must go.
    let t = trace(&[
        "-e",
        &format!("uprobe:{}:work", bin.display()),
        "-e",
        "uprobe:0x1000",
        "-p",
        &pid.to_string(),
    ]);
    assert_eq!(t.status, Some(2), "{}", t.stderr);
    assert!(t.stderr.contains("no executable mapping"), "{}", t.stderr);
    let (live, file) = work_bytes(pid, &bin);
    assert_eq!(live, file, "original bytes restored");
    assert_eq!(proc_status(pid, "TracerPid:").as_deref(), Some("0"));
    let mut rest = String::new();
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        rest,
        format!("sum={}\n", 2 * (0..20000).map(|i| i * 3 + 1).sum::<i64>())
    );
}
