//! Helpers shared by the end-to-end tests: C fixtures compiled at test
//! time, the `wprobe` binary, and kernel uprobes through tracefs as the
//! oracle for hit counts.

pub mod bench;
pub mod openapi;
pub mod prom;
pub mod service;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use wprobe_core::symbols::ElfFile;

/// The source directory of the fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A scratch directory for this test binary's builds.
pub fn scratch_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test>-<hash> → target/wprobe-fixtures/<test>-<hash>
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir");
    let name = exe
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let dir = target.join("wprobe-fixtures").join(name);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Compiles `fixtures/NAME.c` (or `.cc` with g++) with `flags` into an
/// executable whose path is unique to `tag`, so that tests running in
/// parallel never share a file (a kernel uprobe on one file is seen by
/// every process that maps it).
pub fn build(name: &str, tag: &str, flags: &[&str]) -> PathBuf {
    let c = fixtures_dir().join(format!("{name}.c"));
    let cc = fixtures_dir().join(format!("{name}.cc"));
    let (src, compiler) = if c.exists() { (c, "gcc") } else { (cc, "g++") };
    let out = scratch_dir().join(format!("{name}-{tag}"));
    let status = Command::new(compiler)
        .args(flags)
        .arg("-g")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .arg("-lpthread")
        .arg("-ldl")
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling {} failed", src.display());
    out
}

/// The `wprobe` binary built beside the tests.
pub fn wprobe_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/debug");
    let bin = dir.join("wprobe");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// The result of one `wprobe trace` run.
pub struct Trace {
    pub status: Option<i32>,
    pub events: Vec<Value>,
    pub summary: Option<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl Trace {
    pub fn from_output(out: Output) -> Trace {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let (events, summary) = parse_jsonl(&stdout);
        Trace {
            status: out.status.code(),
            events,
            summary,
            stdout,
            stderr,
        }
    }

    /// Hits of the probe with this 1-based id, from the summary.
    pub fn hits(&self, probe: u64) -> u64 {
        self.summary
            .as_ref()
            .and_then(|s| s["probes"].as_array().cloned())
            .and_then(|ps| ps.into_iter().find(|p| p["probe"] == probe))
            .and_then(|p| p["hits"].as_u64())
            .unwrap_or_else(|| panic!("no summary for probe {probe}; stderr:\n{}", self.stderr))
    }

    /// Events of `probe` the core dropped (its queue for this client was
    /// full), from the summary.
    pub fn dropped(&self, probe: u64) -> u64 {
        self.summary
            .as_ref()
            .and_then(|s| s["probes"].as_array().cloned())
            .and_then(|ps| ps.into_iter().find(|p| p["probe"] == probe))
            .and_then(|p| p["dropped"].as_u64())
            .unwrap_or_else(|| panic!("no summary for probe {probe}; stderr:\n{}", self.stderr))
    }

    pub fn events_of(&self, probe: u64, kind: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["probe"] == probe && e["kind"] == kind)
            .collect()
    }
}

/// Splits JSON Lines into events and the final summary; lines that are not
/// JSON objects (the traced program's own output) are skipped.
pub fn parse_jsonl(text: &str) -> (Vec<Value>, Option<Value>) {
    let mut events = Vec::new();
    let mut summary = None;
    for line in text.lines() {
        if !line.starts_with('{') {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(s) = v.get("summary") {
            summary = Some(s.clone());
        } else {
            events.push(v);
        }
    }
    (events, summary)
}

/// Runs `wprobe trace` with these arguments and collects everything. A
/// run that has not ended after two minutes is killed (the test then
/// fails on its status) rather than left to hang the suite.
pub fn trace(args: &[&str]) -> Trace {
    let child = Command::new(wprobe_bin())
        .arg("trace")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wprobe");
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while std::time::Instant::now() < end {
            if d.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if !d.load(Ordering::SeqCst) {
            // SAFETY: killing the wprobe this test started (SIGINT first:
            // it detaches cleanly).
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
    });
    let out = child.wait_with_output().expect("run wprobe");
    done.store(true, Ordering::SeqCst);
    Trace::from_output(out)
}

/// Runs a program without any probe and returns its output.
pub fn run_plain(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run fixture")
}

/// Whether kernel uprobes can be used here. Without tracefs a test skips
/// its cross-check, unless `WPROBE_REQUIRE_TRACEFS=1` (CI) makes that a
/// failure.
pub fn tracefs_available() -> bool {
    let ok = Path::new("/sys/kernel/tracing/uprobe_events").exists();
    if !ok && std::env::var("WPROBE_REQUIRE_TRACEFS").as_deref() == Ok("1") {
        panic!("WPROBE_REQUIRE_TRACEFS=1 but /sys/kernel/tracing/uprobe_events is missing");
    }
    if !ok {
        eprintln!("tracefs not available: skipping the kernel-uprobe cross-check");
    }
    ok
}

/// The file offset of a symbol (+ offset), as uprobe_events wants it.
pub fn file_offset(bin: &Path, symbol: &str, off: u64) -> u64 {
    let elf = ElfFile::open(bin).expect("parse fixture");
    let sym = elf.lookup(symbol).expect("symbol in fixture");
    let vaddr = sym.addr + off;
    let seg = elf.segment_for(vaddr).expect("segment");
    vaddr - seg.vaddr + seg.offset
}

static EVENT_SEQ: AtomicU32 = AtomicU32::new(0);

/// Kernel uprobes and uretprobes on one file, enabled in a tracefs
/// instance of their own: the oracle the engine's counts and return values
/// must equal. Dropping it disables and deletes them, also when a test
/// fails halfway.
pub struct KernelProbes {
    group: String,
    names: Vec<String>,
}

const TRACING: &str = "/sys/kernel/tracing";

impl KernelProbes {
    /// `points`: (kind, symbol, offset), kind `p` (entry; counts) or `r`
    /// (return; also records the return value).
    pub fn new(bin: &Path, points: &[(char, &str, u64)]) -> KernelProbes {
        let tracing = Path::new(TRACING);
        let group = format!(
            "wprobe_{}_{}",
            std::process::id(),
            EVENT_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let mut k = KernelProbes {
            group: group.clone(),
            names: Vec::new(),
        };
        for (i, (kind, sym, off)) in points.iter().enumerate() {
            // uprobe_profile shows event names without their group: keep
            // them unique on their own.
            let name = format!("{group}_{kind}{i}");
            let fetch = if *kind == 'r' { " ret=$retval:s64" } else { "" };
            let def = format!(
                "{kind}:{group}/{name} {}:{:#x}{fetch}\n",
                bin.display(),
                file_offset(bin, sym, *off)
            );
            append(&tracing.join("uprobe_events"), &def);
            k.names.push(name);
        }
        std::fs::create_dir(k.instance()).expect("create a tracefs instance");
        // Room for tens of thousands of events per CPU: a full buffer
        // would drop the oldest, and the oracle would be short.
        std::fs::write(k.instance().join("buffer_size_kb"), "16384")
            .expect("size the tracefs instance's buffer");
        std::fs::write(k.instance().join("events").join(&group).join("enable"), "1")
            .expect("enable uprobe events");
        k
    }

    fn instance(&self) -> PathBuf {
        Path::new(TRACING).join("instances").join(&self.group)
    }

    /// Hits of each point so far, from uprobe_profile. For an `r` point
    /// that counts the function's entries; its returns are in
    /// [`KernelProbes::return_values`].
    pub fn counts(&self) -> Vec<u64> {
        // uprobe_profile is read in pieces: when another test adds or
        // removes its uprobes meanwhile, a line can be skipped. Ours stay
        // defined while `self` lives, so a read that misses one is read
        // again.
        let mut profile = String::new();
        for _ in 0..200 {
            profile = std::fs::read_to_string(Path::new(TRACING).join("uprobe_profile"))
                .expect("uprobe_profile");
            let counts: Option<Vec<u64>> = self
                .names
                .iter()
                .map(|n| {
                    profile
                        .lines()
                        .find(|l| l.split_whitespace().nth(1) == Some(n.as_str()))
                        .and_then(|l| l.split_whitespace().nth(2))
                        .and_then(|c| c.parse().ok())
                })
                .collect();
            if let Some(c) = counts {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("not all of {:?} in uprobe_profile:\n{profile}", self.names)
    }

    /// The return values the `r` point with this index recorded, in order.
    pub fn return_values(&self, index: usize) -> Vec<i64> {
        let trace = std::fs::read_to_string(self.instance().join("trace")).expect("trace");
        let tag = format!("{}:", self.names[index]);
        trace
            .lines()
            .filter(|l| l.contains(&tag))
            .filter_map(|l| {
                l.rsplit_once("ret=")
                    .and_then(|(_, v)| v.trim().parse().ok())
            })
            .collect()
    }
}

impl Drop for KernelProbes {
    fn drop(&mut self) {
        let tracing = Path::new(TRACING);
        let _ = std::fs::write(
            self.instance()
                .join("events")
                .join(&self.group)
                .join("enable"),
            "0",
        );
        let _ = std::fs::remove_dir(self.instance());
        for n in &self.names {
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .open(tracing.join("uprobe_events"))
                .and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(format!("-:{}/{n}\n", self.group).as_bytes())
                });
        }
    }
}

/// Kernel uprobe hit counts of `points` while `run` runs.
pub fn kernel_uprobe_counts(bin: &Path, points: &[(&str, u64)], run: impl FnOnce()) -> Vec<u64> {
    let pts: Vec<(char, &str, u64)> = points.iter().map(|&(s, o)| ('p', s, o)).collect();
    let k = KernelProbes::new(bin, &pts);
    run();
    k.counts()
}

fn append(path: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(line.as_bytes())
        .unwrap_or_else(|e| panic!("write {line:?} to {}: {e}", path.display()));
}

/// The live bytes of a symbol's first `len` bytes in process `pid`, and
/// the file's bytes there.
pub fn live_and_file_bytes(pid: i32, bin: &Path, symbol: &str, len: usize) -> (Vec<u8>, Vec<u8>) {
    use std::os::unix::fs::FileExt;
    use wprobe_core::symbols::{find_module, modules, read_maps, ElfCache};
    let mut cache = ElfCache::new();
    let maps = read_maps(pid).expect("maps");
    let mods = modules(pid, &maps, &mut cache).expect("modules");
    let module = find_module(&bin.to_string_lossy(), &mods, &mut cache).expect("fixture mapped");
    let elf = cache.get(&module.file).expect("parse fixture");
    let sym = elf.lookup(symbol).expect("symbol");
    let file = elf.file_bytes(sym.addr, len).expect("file bytes");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut live = vec![0u8; len];
    mem.read_exact_at(&mut live, sym.addr.wrapping_add(module.bias))
        .expect("read live code");
    (live, file)
}

/// The value after `key:` in /proc/PID/status.
pub fn proc_status(pid: i32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

/// Waits until `cond` holds, up to `secs` seconds.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cond()
}

/// The offset of the first `syscall` instruction of a function of a
/// library, for probes on the instruction itself.
pub fn syscall_offset(lib: &Path, function: &str) -> u64 {
    let elf = ElfFile::open(lib).expect("parse library");
    let sym = elf.lookup(function).expect("function");
    let code = elf.file_bytes(sym.addr, sym.size as usize).expect("code");
    wprobe_core::arch::native::insn_boundaries(&code)
        .into_iter()
        .find(|&b| code[b..].starts_with(&[0x0f, 0x05]))
        .unwrap_or_else(|| panic!("no syscall instruction in {function}")) as u64
}

/// The C library the fixtures link.
pub fn libc_path() -> PathBuf {
    std::fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").expect("libc.so.6")
}

/// Builds tests/fixtures/libdlt.c as the shared library `name` in the
/// scratch directory (a library the dlmain fixture loads with dlopen).
pub fn build_dlt_library(name: &str) -> PathBuf {
    let lib = scratch_dir().join(name);
    let st = Command::new("gcc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(fixtures_dir().join("libdlt.c"))
        .status()
        .expect("gcc");
    assert!(st.success(), "gcc built {name}");
    lib
}

/// Reads the "ready\n" a fixture prints once it runs from its piped stdout.
pub fn read_ready(child: &mut std::process::Child) {
    use std::io::Read;
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .expect("piped")
        .read_exact(&mut ready)
        .expect("fixture says ready");
    assert_eq!(&ready, b"ready\n");
}

/// Starts a fixture that prints "ready" once it runs, and waits for that.
pub fn start_ready(bin: &Path, args: &[&str]) -> std::process::Child {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start fixture");
    read_ready(&mut child);
    child
}

/// Starts `wprobe trace ARGS` running a fixture that prints "ready" (its
/// stdout is the fixture's), and waits for that.
pub fn start_trace_ready(args: &[String]) -> std::process::Child {
    use std::io::Read;
    let mut child = Command::new(wprobe_bin())
        .arg("trace")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wprobe");
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .expect("piped")
        .read_exact(&mut ready)
        .expect("the traced fixture says ready");
    assert_eq!(&ready, b"ready\n");
    child
}

/// Waits for a fixture started with [`start_ready`] to end successfully
/// and returns the rest of what it printed.
pub fn finish(mut child: std::process::Child) -> String {
    use std::io::Read;
    let mut rest = String::new();
    child
        .stdout
        .as_mut()
        .expect("piped")
        .read_to_string(&mut rest)
        .expect("read fixture output");
    let status = child.wait().expect("wait for fixture");
    assert!(status.success(), "fixture ended with {status}");
    rest
}

/// A `wprobe trace` running in the background, its events going to a
/// file of its own.
pub struct LiveTrace {
    pub child: std::process::Child,
    pub events: PathBuf,
}

impl LiveTrace {
    /// `wprobe trace --no-regs -o EVENTS ARGS...`; `name` names the events
    /// file (fresh for each start).
    pub fn start(name: &str, args: &[String]) -> LiveTrace {
        let events = scratch_dir().join(format!("{name}.jsonl"));
        let _ = std::fs::remove_file(&events);
        let child = Command::new(wprobe_bin())
            .args(["trace", "--no-regs", "-o"])
            .arg(&events)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wprobe");
        LiveTrace { child, events }
    }

    pub fn events_text(&self) -> String {
        std::fs::read_to_string(&self.events).unwrap_or_default()
    }

    /// Waits (10 s at most) until the events written so far satisfy `cond`.
    pub fn wait_for_events(&self, what: &str, cond: impl Fn(&str) -> bool) {
        assert!(
            wait_until(60, || cond(&self.events_text())),
            "waiting for {what}"
        );
    }

    /// Ctrl-C, then wprobe's exit; asserts it detached cleanly (status 0).
    pub fn interrupt(self) -> (Output, Option<Value>) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = self.child.wait_with_output().expect("wait for wprobe");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("detached"), "{stderr}");
        let (_, summary) = parse_jsonl(&std::fs::read_to_string(&self.events).unwrap_or_default());
        (out, summary)
    }
}

/// Checks that `pid` is as wprobe found it after a detach: untraced, the
/// code of `symbol` equal to the file's, no engine pages left.
pub fn assert_untouched(pid: i32, bin: &Path, symbol: &str) {
    assert_eq!(
        proc_status(pid, "TracerPid:").as_deref(),
        Some("0"),
        "untraced"
    );
    let (live, file) = live_and_file_bytes(pid, bin, symbol, 16);
    assert_eq!(live, file, "the code of `{symbol}` equals the file's");
    let left = wprobe_core::symbols::read_maps(pid)
        .expect("maps")
        .into_iter()
        .any(|m| m.exec && m.path.is_none() && m.end - m.start == 0x10000);
    assert!(!left, "the engine's pages are unmapped");
}

/// An example plugin built by plugins/build.sh (run here if it was not).
pub fn example_plugin(file: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/plugins");
    let path = out.join(file);
    if !path.exists() {
        // Several test binaries may get here at once: one builds.
        let status = Command::new("flock")
            .arg(root.join("target/plugins.lock"))
            .args(["bash", "-c"])
            .arg(format!(
                "[ -e '{}' ] || bash '{}'",
                path.display(),
                root.join("plugins/build.sh").display()
            ))
            .status()
            .expect("run plugins/build.sh");
        assert!(status.success(), "plugins/build.sh failed");
    }
    path
}

/// Replaces the section a benchmark generates in `path` (between
/// `<!-- BEGIN bench: ... -->` and `<!-- END bench -->`), keeping what
/// people wrote around it. Without the section, `intro` and the section go
/// at the end (the file is made when there is none).
pub fn write_doc_section(path: &Path, bench: &str, intro: &str, body: &str) {
    let begin = format!(
        "<!-- BEGIN {bench}: generated by `cargo bench -p wprobe-tests --bench {bench}`; \
         edits inside are overwritten -->"
    );
    let end = format!("<!-- END {bench} -->");
    let section = format!("{begin}\n{body}{end}\n");
    let text = match std::fs::read_to_string(path) {
        Ok(old) => match (old.find(&begin), old.find(&end)) {
            (Some(b), Some(e)) if b < e => {
                let after = old[e + end.len()..].trim_start_matches('\n');
                let gap = if after.is_empty() { "" } else { "\n" };
                format!("{}{section}{gap}{after}", &old[..b])
            }
            _ => format!("{}\n\n{intro}{section}", old.trim_end()),
        },
        Err(_) => format!("# Benchmarks\n\n{intro}{section}"),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create docs/");
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
