//! Soak: `wprobe serve` for half an hour with everything going on at
//! once, and the checks that nothing was harmed or lost on the way (issue
//! 11). A benchmark rather than a test: it takes long, and what it finds
//! is written into docs/benchmarks.md.
//!
//! Run it with
//!
//! ```text
//! cargo build --release -p wprobe -p wprobe-core
//! cargo bench -p wprobe-tests --bench soak
//! ```
//!
//! It measures the release binaries (as serve_load does; see
//! `tests/support/bench.rs`). All at once:
//!
//! - **Targets**: `WPROBE_SOAK_TARGETS` (10) copies of the `soak` fixture
//!   (tests/fixtures/soak.c), each with `WPROBE_SOAK_THREADS` (2) threads
//!   that call 99 distinct functions in rounds, one round every
//!   `WPROBE_SOAK_ROUND_MS` (1000) ms, and check every result. Half are
//!   started by the bench and attached by pid, half spawned by the
//!   service (`POST /api/targets {"spawn": …}`).
//! - **Probes**: `WPROBE_SOAK_PROBES` (100) on each target, 1000 in all: an
//!   entry probe on each function, a return probe instead on every tenth
//!   (`f09`, `f19`, …), an argument capture on others (`f05`, `f15`, …), and
//!   one on `soak_mark`, the fixture's marker (below). Two probes of each
//!   target (`f00`, `f04`) run a counting plugin.
//! - **Event streams**: `WPROBE_SOAK_SSE` (4) clients read `GET
//!   /api/events` and count every event by probe.
//! - **Plugin uploads**: twice a minute a new version of that plugin is
//!   uploaded under its name (the C and the Rust build of the `count`
//!   example by turns): it replaces the running one wherever it is
//!   attached.
//! - **Targets killed and replaced**: twice a minute a target is killed
//!   and a new one with its probes takes its place: an attached one by
//!   SIGKILL from the bench, then `DELETE /api/targets/{id}`; a spawned
//!   one by `DELETE /api/targets/{id}?kill=true`.
//! - **The service killed**: at the end of every cycle of
//!   `WPROBE_SOAK_CYCLE_SECS` (60) seconds the service gets SIGKILL, at a
//!   moment when threads of at least two targets are in a round (stopped
//!   at breakpoints, inside functions with a return probe), and is started
//!   again at once with the same `--data-dir`, as a supervisor would: it
//!   attaches its running targets again and re-arms their probes from
//!   SQLite. Its core, told by the kernel (SIGTERM), lets them go first.
//!
//! for `WPROBE_SOAK_MINUTES` (30) minutes, that is minutes × 60 ÷ cycle
//! cycles.
//!
//! What is checked, and reported rather than stopping the run (a finding
//! is printed with its time, listed in the report, and makes the exit
//! status 1):
//!
//! - **Every event accounted for.** Twice a cycle the targets are paused
//!   at a known point: each thread, between two rounds, calls
//!   `soak_mark(generation, thread)` and waits. The marker's event, once
//!   every client has it from every thread of every target, says that all
//!   earlier events are behind it. Then `GET /api/probes` reads every
//!   counter. Between the two pauses of a cycle, for every probe and
//!   every client: new hits = events the client received + events the
//!   core dropped (the `hits`, `dropped` of the API; the events by the
//!   client's count), and for a probe with the plugin, its calls = the
//!   events delivered. A client that fell behind (a `loss` record of its
//!   own) is reported as such. Each probe's events name its spec.
//! - **Nothing lost across restarts**: after each restart every target of
//!   the bench is `running` with its pid, every probe is there with its
//!   spec and armed (how long that takes is the restore time), and every
//!   plugin attachment runs the newest version.
//! - **No target harmed**: along the way, every target is alive, its
//!   rounds go on, and none of its results was wrong; at the end, once the
//!   last service and its core are gone, every target is untraced, none of
//!   its threads is stopped (`t`/`T`), the bytes of every executable
//!   mapping of a file in /proc/PID/mem equal the file's, no mapping of
//!   the engine is left, and its rounds still go on.
//! - **Resources flat**: the service's and its core's resident memory,
//!   open descriptors and threads, sampled once a cycle just before the
//!   kill (first, last, largest).
//!
//! The results are printed and written into `docs/benchmarks.md` between
//! the markers of its own section (`WPROBE_BENCH_NO_DOC=1` leaves it
//! alone). Every process it starts is ended by a drop guard.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wprobe_tests::bench::{
    check_binaries, doc_path, env_u64, is_core, loadavg, machine, proc_state, today, writes_doc,
    BenchService, CONTROL_TIMEOUT,
};
use wprobe_tests::{build, example_plugin, read_ready, scratch_dir, write_doc_section};

/// The name the plugin is uploaded under, version after version.
const PLUGIN: &str = "soak-count";
/// How long a pause, a marker, a restore may take before it is a finding.
const DEADLINE: Duration = Duration::from_secs(60);

fn main() {
    let plan = Plan::from_env();
    check_binaries("soak");
    let load_before = loadavg();
    let bin = build("soak", "soak", &["-O2", "-pthread", "-fno-ipa-icf"]);
    let work = scratch_dir().join("soak");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("the soak's scratch directory");
    let mut soak = Soak::new(plan, bin, work);
    eprintln!(
        "soak: {} targets × {} probes, {} SSE clients, a restart every {} s, {} cycles",
        plan.targets, plan.probes, plan.sse, plan.cycle_secs, plan.cycles
    );
    let mut last_core: Option<JoinHandle<Option<Duration>>> = None;
    for cycle in 0..plan.cycles {
        let svc = soak.start_service();
        if let Some(core) = last_core.take() {
            soak.core_exit(core);
        }
        let start = Instant::now();
        if cycle == 0 {
            soak.set_up(&svc);
        } else {
            soak.check_restored(&svc);
        }
        let readers: Vec<Reader> = (0..plan.sse).map(|_| Reader::open(&svc)).collect();
        let a = soak.checkpoint(&svc, &readers);
        let secs = plan.cycle_secs as f64;
        let at = |frac: f64| start + Duration::from_secs_f64(secs * frac);
        sleep_until(at(0.25));
        soak.upload(&svc);
        sleep_until(at(0.40));
        soak.replace_target(&svc, cycle, false);
        sleep_until(at(0.55));
        soak.upload(&svc);
        sleep_until(at(0.70));
        soak.replace_target(&svc, cycle, true);
        sleep_until(at(0.80));
        let b = soak.checkpoint(&svc, &readers);
        soak.account(&a, &b);
        soak.sample(&svc);
        sleep_until(at(1.0));
        // SIGKILL under load, while threads are in their rounds (stopped
        // at breakpoints, inside functions with a return probe); the core
        // lets the targets go on its own.
        soak.wait_for_rounds();
        let core = svc.core;
        svc.kill();
        soak.killed = Instant::now();
        soak.stats.kills += 1;
        soak.end_readers(readers);
        last_core = core.map(watch_core);
        eprintln!(
            "[{}] cycle {}/{} done",
            soak.elapsed(),
            cycle + 1,
            plan.cycles
        );
    }
    if let Some(core) = last_core.take() {
        soak.core_exit(core);
    }
    soak.final_checks();
    let elapsed = soak.started.elapsed();
    let md = soak.report(&load_before, &loadavg(), elapsed);
    print!("{md}");
    if writes_doc() {
        let intro = "## Soak\n\nRun `cargo build --release -p wprobe -p wprobe-core`, then \
                     `cargo bench -p wprobe-tests --bench soak` (see the doc comment of \
                     `tests/benches/soak.rs`).\n\n";
        write_doc_section(&doc_path(), "soak", intro, &md);
        eprintln!("wrote {}", doc_path().display());
    }
    let failed = !soak.findings.is_empty();
    drop(soak);
    if failed {
        std::process::exit(1);
    }
}

/// The settings, from the environment.
#[derive(Clone, Copy)]
struct Plan {
    minutes: u64,
    targets: usize,
    probes: usize,
    threads: u64,
    round_ms: u64,
    cycle_secs: u64,
    sse: usize,
    cycles: u64,
}

impl Plan {
    fn from_env() -> Plan {
        let minutes = env_u64("WPROBE_SOAK_MINUTES", 30).max(1);
        let cycle_secs = env_u64("WPROBE_SOAK_CYCLE_SECS", 60).max(20);
        let probes = env_u64("WPROBE_SOAK_PROBES", 100) as usize;
        assert!(
            (2..=100).contains(&probes),
            "WPROBE_SOAK_PROBES={probes}: give 2 to 100 (the fixture has 99 functions and a \
             marker)"
        );
        Plan {
            minutes,
            targets: (env_u64("WPROBE_SOAK_TARGETS", 10) as usize).max(2),
            probes,
            threads: env_u64("WPROBE_SOAK_THREADS", 2).clamp(1, 56),
            round_ms: env_u64("WPROBE_SOAK_ROUND_MS", 1000),
            cycle_secs,
            sse: (env_u64("WPROBE_SOAK_SSE", 4) as usize).max(1),
            cycles: (minutes * 60).div_ceil(cycle_secs),
        }
    }

    /// The probes of one target: (spec, runs the plugin).
    fn specs(&self, bin: &Path) -> Vec<(String, bool)> {
        let b = bin.display();
        let mut v: Vec<(String, bool)> = (0..self.probes - 1)
            .map(|k| {
                let spec = match k % 10 {
                    9 => format!("uretprobe:{b}:f{k:02}"),
                    5 => format!("uprobe:{b}:f{k:02} x=%rdi:u64"),
                    _ => format!("uprobe:{b}:f{k:02}"),
                };
                (spec, k == 0 || k == 4)
            })
            .collect();
        v.push((format!("uprobe:{b}:soak_mark"), false));
        v
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// The fixture's control file (`struct control` in soak.c), shared with
/// it through mmap; read and written here with pread/pwrite of whole
/// aligned words.
struct Control {
    file: std::fs::File,
    path: PathBuf,
}

impl Control {
    const PAUSE: u64 = 0;
    const BAD: u64 = 1;
    const ROUNDS: u64 = 2;
    const PID: u64 = 3;
    const PARKED: u64 = 8;
    const INROUND: u64 = 8 + 56;

    fn create(path: PathBuf) -> Control {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        file.write_all_at(&[0; 4096], 0)
            .expect("size the control file");
        Control { file, path }
    }

    fn get(&self, word: u64) -> u64 {
        let mut b = [0u8; 8];
        self.file
            .read_exact_at(&mut b, word * 8)
            .expect("read the control file");
        u64::from_le_bytes(b)
    }

    fn set(&self, word: u64, v: u64) {
        self.file
            .write_all_at(&v.to_le_bytes(), word * 8)
            .expect("write the control file");
    }
}

/// Field 22 of /proc/PID/stat, which tells a process from a later one
/// with the same pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// One copy of the fixture, and what the service calls it.
struct Target {
    slot: usize,
    /// The bench's child when it was attached by pid; `None` when the
    /// service spawned it.
    child: Option<Child>,
    pid: i32,
    start_time: u64,
    /// The service's id.
    id: i64,
    ctl: Control,
    /// The service's probe ids (the marker's last).
    probes: Vec<i64>,
    /// Its rounds at the last look.
    rounds: u64,
}

impl Target {
    /// Whether its process still runs (the same one).
    fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
            && !matches!(proc_state(self.pid), Some('Z' | 'X') | None)
    }

    /// Kills the process (it is ours, or the service spawned it for us).
    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        } else if start_time(self.pid) == Some(self.start_time) {
            // SAFETY: a signal to the process the service spawned for the
            // bench, checked to be the same by its start time.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one event-stream client has read.
#[derive(Default)]
struct Seen {
    events: u64,
    by_probe: HashMap<i64, u64>,
    /// (generation, target) → marker events.
    marks: HashMap<(u64, i64), u64>,
    loss_records: u64,
    /// Events this client missed by reading too slowly.
    lost_client: u64,
    /// Events the core dropped, by probe (0: no probe named).
    lost_core: HashMap<i64, u64>,
    /// The spec the first event of each probe named.
    specs: HashMap<i64, String>,
    error: Option<String>,
    ended: bool,
}

/// A client reading `GET /api/events` on a thread of its own, as fast as
/// it can.
struct Reader {
    seen: Arc<Mutex<Seen>>,
    sock: TcpStream,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    fn open(svc: &BenchService) -> Reader {
        let mut sock = TcpStream::connect(&svc.addr).expect("connect for SSE");
        write!(
            sock,
            "GET /api/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Accept: text/event-stream\r\n\r\n",
            svc.addr, svc.token
        )
        .expect("send the SSE request");
        sock.set_read_timeout(Some(CONTROL_TIMEOUT))
            .expect("read timeout");
        let r = BufReader::with_capacity(256 << 10, sock.try_clone().expect("clone"));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let thread = std::thread::spawn(move || {
            let why = read_stream(r, &s).err();
            let mut seen = s.lock().unwrap_or_else(|e| e.into_inner());
            seen.ended = true;
            if seen.error.is_none() {
                seen.error = why;
            }
        });
        Reader {
            seen,
            sock,
            thread: Some(thread),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the response: its head, then its chunked body as SSE records
/// (`event:` and `data:` lines, a blank line after each). Ends with the
/// stream (`Ok`), or with what was wrong.
fn read_stream(mut r: BufReader<TcpStream>, seen: &Mutex<Seen>) -> Result<(), String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(format!("GET /api/events answered {line:?}"));
    }
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut chunk = Vec::new();
    loop {
        line.clear();
        // The end of the stream (the service was killed) ends the reader.
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            return Ok(());
        }
        chunk.resize(size + 2, 0);
        if r.read_exact(&mut chunk).is_err() {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..size]);
        // Whole records only; a record cut by a chunk waits for the rest.
        let mut start = 0;
        while let Some(end) = find(&buf[start..], b"\n\n") {
            record(&buf[start..start + end], seen)?;
            start += end + 2;
        }
        buf.drain(..start);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The integer after the first `"key":` of a JSON text.
fn int_field(json: &[u8], key: &str) -> Option<i64> {
    let pat = format!("\"{key}\":");
    let at = find(json, pat.as_bytes())? + pat.len();
    let digits: Vec<u8> = json[at..]
        .iter()
        .copied()
        .take_while(|c| c.is_ascii_digit() || *c == b'-')
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// One SSE record. A hit event is counted by its probe from the head of
/// its JSON (`{"seq":…,"target":…,"probe":…`, docs/events.md) without
/// parsing the rest; the first of each probe and every marker are parsed
/// whole.
fn record(rec: &[u8], seen: &Mutex<Seen>) -> Result<(), String> {
    let mut kind: &[u8] = b"";
    let mut data: &[u8] = b"";
    for l in rec.split(|&c| c == b'\n') {
        if let Some(k) = l.strip_prefix(b"event: ") {
            kind = k;
        } else if let Some(d) = l.strip_prefix(b"data: ") {
            data = d;
        }
    }
    let bad = |what: &str| format!("{what}: {}", String::from_utf8_lossy(rec));
    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
    match kind {
        b"hit" => {
            let probe = int_field(data, "probe").ok_or_else(|| bad("an event without a probe"))?;
            s.events += 1;
            *s.by_probe.entry(probe).or_default() += 1;
            let marker = find(data, b":soak_mark").is_some();
            if marker || !s.specs.contains_key(&probe) {
                let v: Value = serde_json::from_slice(data).map_err(|e| bad(&e.to_string()))?;
                let spec = v["spec"].as_str().unwrap_or("").to_string();
                if marker {
                    let generation = v["args"][0].as_u64().ok_or_else(|| bad("a marker"))?;
                    let target = v["target"].as_i64().ok_or_else(|| bad("a marker"))?;
                    *s.marks.entry((generation, target)).or_default() += 1;
                }
                s.specs.entry(probe).or_insert(spec);
            }
        }
        b"loss" => {
            let v: Value = serde_json::from_slice(data).map_err(|e| bad(&e.to_string()))?;
            let n = v["lost"].as_u64().ok_or_else(|| bad("a loss record"))?;
            s.loss_records += 1;
            // The core's losses name their target; a slow client's do not.
            if v.get("target").is_some_and(|t| !t.is_null()) {
                let probe = v["probe"].as_i64().unwrap_or(0);
                *s.lost_core.entry(probe).or_default() += n;
            } else {
                s.lost_client += n;
            }
        }
        // Keep-alive comments and anything else.
        _ => {}
    }
    Ok(())
}

/// A probe as `GET /api/probes` shows it.
#[derive(Clone)]
struct ProbeView {
    target: i64,
    spec: String,
    state: String,
    reason: String,
    hits: u64,
    dropped: u64,
    nmissed: u64,
    /// Calls of its plugins, and the versions they run.
    calls: u64,
    versions: Vec<i64>,
}

fn probe_views(svc: &BenchService) -> HashMap<i64, ProbeView> {
    let list = svc.call("GET", "/api/probes", None);
    list.as_array()
        .expect("a list of probes")
        .iter()
        .map(|p| {
            let plugins = p["plugins"].as_array().cloned().unwrap_or_default();
            let u = |v: &Value| v.as_u64().unwrap_or(0);
            (
                p["id"].as_i64().expect("an id"),
                ProbeView {
                    target: p["target"].as_i64().unwrap_or(0),
                    spec: p["spec"].as_str().unwrap_or("").to_string(),
                    state: p["state"].as_str().unwrap_or("").to_string(),
                    reason: p["reason"].as_str().unwrap_or("").to_string(),
                    hits: u(&p["hits"]),
                    dropped: u(&p["dropped"]),
                    nmissed: u(&p["nmissed"]),
                    calls: plugins.iter().map(|a| u(&a["calls"])).sum(),
                    versions: plugins
                        .iter()
                        .map(|a| a["version"].as_i64().unwrap_or(0))
                        .collect(),
                },
            )
        })
        .collect()
}

/// A client's counts at a pause: events by probe, events it lost by
/// reading too slowly, the core's losses by probe.
type ClientCounts = (HashMap<i64, u64>, u64, HashMap<i64, u64>);

/// The counters at one pause: the API's, and each client's.
struct Checkpoint {
    probes: HashMap<i64, ProbeView>,
    /// Per client: events by probe, events lost by the client, the core's
    /// losses by probe.
    seen: Vec<ClientCounts>,
    /// The targets (by the service's id) paused at it.
    targets: HashSet<i64>,
    /// The spec the first event of each probe named, by the first client.
    specs: HashMap<i64, String>,
}

/// One sample of a process's resources.
#[derive(Clone, Copy, Default)]
struct Use {
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

fn usage(pid: i32) -> Use {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Use {
        rss_kib: field("VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        threads: field("Threads:"),
    }
}

/// The anonymous executable mappings of a process (the engine's pages
/// while it is traced).
fn anon_exec_maps(pid: i32) -> usize {
    wprobe_core::symbols::read_maps(pid)
        .map(|maps| maps.iter().filter(|m| m.exec && m.path.is_none()).count())
        .unwrap_or(0)
}

/// Watches an old core until it has exited (its service was killed):
/// how long that took, or `None` after two minutes.
fn watch_core(core: i32) -> JoinHandle<Option<Duration>> {
    let t = Instant::now();
    std::thread::spawn(move || {
        while is_core(core) {
            if t.elapsed() > Duration::from_secs(120) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(t.elapsed())
    })
}

#[derive(Default)]
struct Stats {
    kills: u64,
    /// Target threads in a round when the service was killed, summed.
    in_round_at_kills: u64,
    start_failures: u64,
    restores: Vec<f64>,
    core_exits: Vec<f64>,
    uploads: u64,
    replaced: u64,
    respawned: u64,
    checkpoints: u64,
    windows: u64,
    probe_windows: u64,
    hits: u64,
    delivered: u64,
    dropped: u64,
    nmissed: u64,
    plugin_calls: u64,
    events_read: u64,
    client_losses: u64,
    /// Per cycle, just before the kill: (minute, service, core, database
    /// and write-ahead log bytes, most engine mappings in a target).
    samples: Vec<(f64, Use, Use, [u64; 2], usize)>,
    targets_checked: usize,
    bytes_compared: u64,
}

/// The soak's state.
struct Soak {
    plan: Plan,
    bin: PathBuf,
    work: PathBuf,
    data: PathBuf,
    started: Instant,
    targets: Vec<Target>,
    plugin: i64,
    latest: i64,
    uploads: usize,
    generation: u64,
    /// When the last service was killed.
    killed: Instant,
    findings: Vec<String>,
    stats: Stats,
}

impl Soak {
    fn new(plan: Plan, bin: PathBuf, work: PathBuf) -> Soak {
        Soak {
            plan,
            bin,
            data: work.join("data"),
            work,
            started: Instant::now(),
            targets: Vec::new(),
            plugin: 0,
            latest: 0,
            uploads: 0,
            generation: 0,
            killed: Instant::now(),
            findings: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn elapsed(&self) -> String {
        let s = self.started.elapsed().as_secs();
        format!("{:02}:{:02}", s / 60, s % 60)
    }

    /// A finding: printed at once, reported at the end.
    fn find(&mut self, what: String) {
        let line = format!("[{}] {what}", self.elapsed());
        eprintln!("FINDING {line}");
        self.findings.push(line);
    }

    /// Starts the service, again after a failure (as a supervisor would,
    /// each failure a finding) up to five times.
    fn start_service(&mut self) -> BenchService {
        // A target's probes are more than the default cap of 64.
        let extra = ["--max-probes-per-target", &self.plan.probes.to_string()];
        for attempt in 1..=5 {
            match BenchService::try_start(&self.data, &extra, true) {
                Ok(svc) => return svc,
                Err(e) => {
                    self.stats.start_failures += 1;
                    self.find(format!(
                        "the service did not start (attempt {attempt}): {}",
                        e.trim_end()
                    ));
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
        panic!(
            "the service did not start five times in a row: {:?}",
            self.findings
        );
    }

    fn core_exit(&mut self, watch: JoinHandle<Option<Duration>>) {
        match watch.join().expect("the core watcher") {
            Some(d) => self.stats.core_exits.push(d.as_secs_f64()),
            None => self.find("a killed service's core was still running after 120 s".into()),
        }
    }

    /// The first service: the plugin, the targets and their probes.
    fn set_up(&mut self, svc: &BenchService) {
        self.upload(svc);
        for slot in 0..self.plan.targets {
            let t = self.start_target(svc, slot, 0);
            self.targets.push(t);
        }
        eprintln!(
            "[{}] {} targets, {} probes",
            self.elapsed(),
            self.targets.len(),
            self.targets.iter().map(|t| t.probes.len()).sum::<usize>()
        );
    }

    /// Uploads the next version of the plugin: the C and the Rust count
    /// example by turns.
    fn upload(&mut self, svc: &BenchService) {
        let file = if self.uploads.is_multiple_of(2) {
            "count.c.wasm"
        } else {
            "count.rust.wasm"
        };
        let bytes = std::fs::read(example_plugin(file)).expect("the plugin's module");
        let mut c = svc.conn().expect("connect");
        let (status, body) = c
            .send_bytes(
                "POST",
                &format!("/api/plugins?name={PLUGIN}"),
                "application/wasm",
                &bytes,
            )
            .expect("upload");
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != 201 {
            self.find(format!("uploading {file}: {status} {v}"));
            return;
        }
        self.uploads += 1;
        self.stats.uploads += 1;
        self.plugin = v["id"].as_i64().expect("the plugin's id");
        self.latest = v["version"]["version"].as_i64().expect("its version");
        let replaced = v["replaced"].as_u64().unwrap_or(0);
        self.stats.replaced += replaced;
        let per_target = self.plan.specs(&self.bin).iter().filter(|s| s.1).count();
        let want = (per_target * self.targets.len()) as u64;
        if replaced != want
            || v["replace_errors"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        {
            self.find(format!(
                "upload of version {}: {replaced} attachments replaced, not {want}: {v}",
                self.latest
            ));
        }
    }

    /// Starts a copy of the fixture in `slot` and gives it its probes:
    /// attached by pid in even slots, spawned by the service in odd ones.
    fn start_target(&mut self, svc: &BenchService, slot: usize, born: u64) -> Target {
        let ctl = Control::create(self.work.join(format!("ctl-{slot}-{born}")));
        let args = [
            ctl.path.display().to_string(),
            self.plan.threads.to_string(),
            self.plan.round_ms.to_string(),
        ];
        let (child, id, pid) = if slot.is_multiple_of(2) {
            let mut child = Command::new(&self.bin)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the soak fixture");
            read_ready(&mut child);
            let pid = child.id() as i32;
            (Some(child), svc.attach(pid), pid)
        } else {
            let mut argv = vec![self.bin.display().to_string()];
            argv.extend(args);
            let t = svc.call("POST", "/api/targets", Some(&json!({ "spawn": argv })));
            let pid = t["pid"].as_i64().expect("a pid") as i32;
            (None, t["id"].as_i64().expect("an id"), pid)
        };
        let end = Instant::now() + DEADLINE;
        while ctl.get(Control::PID) != pid as u64 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(ctl.get(Control::PID), pid as u64, "the fixture runs");
        let start_time = start_time(pid).expect("its start time");
        let specs = self.plan.specs(&self.bin);
        let body = json!({
            "probes": specs.iter().map(|(spec, plugin)| {
                let plugins = if *plugin { json!([{"plugin": self.plugin}]) } else { json!([]) };
                json!({"target": id, "spec": spec, "plugins": plugins})
            }).collect::<Vec<_>>()
        });
        let made = svc.call("POST", "/api/probes/batch", Some(&body));
        let probes: Vec<i64> = made
            .as_array()
            .expect("the probes made")
            .iter()
            .map(|p| p["id"].as_i64().expect("an id"))
            .collect();
        assert_eq!(probes.len(), specs.len(), "{made}");
        Target {
            slot,
            child,
            pid,
            start_time,
            id,
            ctl,
            probes,
            rounds: 0,
        }
    }

    /// Kills the target of the next slot of its kind and starts another
    /// in its place.
    fn replace_target(&mut self, svc: &BenchService, cycle: u64, spawned: bool) {
        let kinds: Vec<usize> = (0..self.targets.len())
            .filter(|&i| (self.targets[i].slot % 2 == 1) == spawned)
            .collect();
        let i = kinds[cycle as usize % kinds.len()];
        let (slot, id, pid) = {
            let t = &self.targets[i];
            (t.slot, t.id, t.pid)
        };
        if spawned {
            let (status, body) =
                svc.request("DELETE", &format!("/api/targets/{id}?kill=true"), None);
            if status != 204 {
                self.find(format!(
                    "DELETE /api/targets/{id}?kill=true: {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            let t = &self.targets[i];
            let end = Instant::now() + DEADLINE;
            while t.alive() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.targets[i].alive() {
                self.find(format!(
                    "target {id} (pid {pid}) still runs after DELETE ?kill=true"
                ));
            }
        } else {
            self.targets[i].kill();
            // The service sees it end; then it can be deleted.
            let end = Instant::now() + DEADLINE;
            let state = loop {
                let t = svc.call("GET", &format!("/api/targets/{id}"), None);
                let state = t["state"].as_str().unwrap_or("").to_string();
                if state != "running" || Instant::now() > end {
                    break state;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if state != "exited" {
                self.find(format!(
                    "target {id} (pid {pid}), killed, is `{state}`, not exited"
                ));
            }
            let (status, body) = svc.request("DELETE", &format!("/api/targets/{id}"), None);
            if status != 204 {
                self.find(format!(
                    "DELETE /api/targets/{id}: {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
        }
        let born = cycle + 1;
        let new = self.start_target(svc, slot, born);
        self.targets[i] = new;
        self.stats.respawned += 1;
    }

    /// Pauses every target at its marker, waits until every client has
    /// every marker, reads the counters, and lets the targets go on.
    fn checkpoint(&mut self, svc: &BenchService, readers: &[Reader]) -> Checkpoint {
        self.generation += 1;
        let generation = self.generation;
        self.stats.checkpoints += 1;
        for t in &self.targets {
            t.ctl.set(Control::PAUSE, generation);
        }
        // Every thread of every target stopped at its marker.
        let threads = self.plan.threads;
        let end = Instant::now() + DEADLINE;
        let parked =
            |t: &Target| (0..threads).all(|i| t.ctl.get(Control::PARKED + i) == generation);
        while !self.targets.iter().all(parked) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let stuck: Vec<String> = self
            .targets
            .iter()
            .filter(|t| !parked(t))
            .map(|t| format!("target {} (pid {}, alive {})", t.id, t.pid, t.alive()))
            .collect();
        if !stuck.is_empty() {
            self.find(format!(
                "pause {generation}: not every thread stopped at its marker within {} s: {}",
                DEADLINE.as_secs(),
                stuck.join(", ")
            ));
        }
        // Every client has every marker: all earlier events are behind
        // them.
        let want: Vec<i64> = self.targets.iter().map(|t| t.id).collect();
        let complete = |r: &Reader| {
            r.with(|s| {
                want.iter()
                    .all(|id| s.marks.get(&(generation, *id)).copied().unwrap_or(0) >= threads)
            })
        };
        while !readers.iter().all(complete) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        for (i, r) in readers.iter().enumerate() {
            if !complete(r) {
                let missing: Vec<i64> = want
                    .iter()
                    .copied()
                    .filter(|id| {
                        r.with(|s| s.marks.get(&(generation, *id)).copied()) < Some(threads)
                    })
                    .collect();
                let (ended, error) = r.with(|s| (s.ended, s.error.clone()));
                self.find(format!(
                    "pause {generation}: client {i} has not every marker event (targets \
                     {missing:?}; stream ended {ended}, error {error:?})"
                ));
            }
        }
        let probes = probe_views(svc);
        let seen = readers
            .iter()
            .map(|r| r.with(|s| (s.by_probe.clone(), s.lost_client, s.lost_core.clone())))
            .collect();
        // Alive, not harmed, rounds going on.
        for i in 0..self.targets.len() {
            let (id, pid, alive, bad, rounds, last) = {
                let t = &self.targets[i];
                (
                    t.id,
                    t.pid,
                    t.alive(),
                    t.ctl.get(Control::BAD),
                    t.ctl.get(Control::ROUNDS),
                    t.rounds,
                )
            };
            if !alive {
                self.find(format!("target {id} (pid {pid}) is not running any more"));
            }
            if bad != 0 {
                self.find(format!(
                    "target {id} (pid {pid}) computed {bad} wrong results"
                ));
            }
            if rounds <= last && alive {
                self.find(format!(
                    "target {id} (pid {pid}) made no round since the last pause ({rounds})"
                ));
            }
            self.targets[i].rounds = rounds;
        }
        for t in &self.targets {
            t.ctl.set(Control::PAUSE, 0);
        }
        Checkpoint {
            probes,
            seen,
            targets: want.into_iter().collect(),
            specs: readers
                .first()
                .map(|r| r.with(|s| s.specs.clone()))
                .unwrap_or_default(),
        }
    }

    /// Every probe's events between two pauses of one service.
    fn account(&mut self, a: &Checkpoint, b: &Checkpoint) {
        self.stats.windows += 1;
        let mut findings = Vec::new();
        let ours: HashSet<i64> = self
            .targets
            .iter()
            .flat_map(|t| t.probes.iter().copied())
            .collect();
        let total = self.plan.targets * self.plan.probes;
        if ours.len() != total {
            findings.push(format!("{} probes, not {total}", ours.len()));
        }
        for id in &ours {
            let Some(pb) = b.probes.get(id) else {
                findings.push(format!("probe {id} is not listed"));
                continue;
            };
            if !b.targets.contains(&pb.target) {
                continue;
            }
            if pb.state != "armed" {
                findings.push(format!(
                    "probe {id} ({}) is {}: {}",
                    pb.spec, pb.state, pb.reason
                ));
            }
            if pb.versions.iter().any(|&v| v != self.latest) {
                findings.push(format!(
                    "probe {id}: its plugin runs version {:?}, not {}",
                    pb.versions, self.latest
                ));
            }
            // Events say which probe they are (issue 11, item 3).
            if let Some(named) = b.specs.get(id).filter(|s| **s != pb.spec) {
                findings.push(format!(
                    "probe {id} ({}): its events name `{named}`",
                    pb.spec
                ));
            }
            // A probe made since the first pause counts from nothing.
            let pa = a.probes.get(id).filter(|p| a.targets.contains(&p.target));
            let (h0, d0, c0) = pa.map_or((0, 0, 0), |p| (p.hits, p.dropped, p.calls));
            let hits = pb.hits.saturating_sub(h0);
            let dropped = pb.dropped.saturating_sub(d0);
            let delivered = hits.saturating_sub(dropped);
            if pb.hits < h0 || pb.dropped < d0 {
                findings.push(format!(
                    "probe {id}: its counters went back ({h0} → {} hits, {d0} → {} dropped)",
                    pb.hits, pb.dropped
                ));
            }
            for (i, ((sa, la, _), (sb, lb, cb))) in a.seen.iter().zip(&b.seen).enumerate() {
                let got = sb.get(id).copied().unwrap_or(0) - sa.get(id).copied().unwrap_or(0);
                if got + dropped != hits && lb == la {
                    findings.push(format!(
                        "probe {id} ({}): {hits} hits, {dropped} dropped, but client {i} \
                         received {got}",
                        pb.spec
                    ));
                }
                let core_lost = cb.get(id).copied().unwrap_or(0);
                if i == 0 && pb.dropped > 0 && core_lost < pb.dropped.min(dropped) {
                    findings.push(format!(
                        "probe {id}: {dropped} dropped by the core, but client 0 has loss \
                         records for {core_lost}"
                    ));
                }
            }
            if !pb.versions.is_empty() {
                let calls = pb.calls.saturating_sub(c0);
                self.stats.plugin_calls += calls;
                if calls != delivered {
                    findings.push(format!(
                        "probe {id}: its plugin ran {calls} times for {delivered} events"
                    ));
                }
            }
            self.stats.probe_windows += 1;
            self.stats.hits += hits;
            self.stats.delivered += delivered;
            self.stats.dropped += dropped;
            self.stats.nmissed += pb.nmissed.saturating_sub(pa.map_or(0, |p| p.nmissed));
        }
        for (i, ((_, la, _), (_, lb, _))) in a.seen.iter().zip(&b.seen).enumerate() {
            if lb > la {
                findings.push(format!(
                    "client {i} fell behind and lost {} events",
                    lb - la
                ));
            }
        }
        // A long list says the same thing many times: the first ten.
        let n = findings.len();
        for f in findings.into_iter().take(10) {
            self.find(format!("accounting: {f}"));
        }
        if n > 10 {
            self.find(format!("accounting: … and {} more", n - 10));
        }
    }

    /// After a restart: every target running again with its probes armed
    /// and its plugins at the newest version.
    fn check_restored(&mut self, svc: &BenchService) {
        let list = svc.call("GET", "/api/targets", None);
        let listed: HashMap<i64, Value> = list
            .as_array()
            .expect("a list of targets")
            .iter()
            .map(|t| (t["id"].as_i64().unwrap_or(0), t.clone()))
            .collect();
        let mut wrong: Vec<String> = self
            .targets
            .iter()
            .filter_map(|t| match listed.get(&t.id) {
                None => Some(format!("target {} (pid {}) is not listed", t.id, t.pid)),
                Some(v) if v["state"] != "running" || v["pid"] != t.pid => Some(format!(
                    "target {} (pid {}, alive {}): {v}",
                    t.id,
                    t.pid,
                    t.alive()
                )),
                Some(_) => None,
            })
            .collect();
        if listed.len() != self.targets.len() {
            wrong.push(format!(
                "{} targets listed, not {}",
                listed.len(),
                self.targets.len()
            ));
        }
        let ours: HashMap<i64, usize> = self
            .targets
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.probes.iter().map(move |&p| (p, i)))
            .collect();
        let end = Instant::now() + DEADLINE;
        let (views, armed) = loop {
            let views = probe_views(svc);
            let armed = ours
                .keys()
                .all(|id| views.get(id).is_some_and(|p| p.state == "armed"));
            if armed || Instant::now() > end {
                break (views, armed);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if armed {
            self.stats
                .restores
                .push(self.killed.elapsed().as_secs_f64());
        }
        for (id, &i) in &ours {
            match views.get(id) {
                None => wrong.push(format!("probe {id} is gone")),
                Some(p) if p.target != self.targets[i].id => {
                    wrong.push(format!("probe {id} is of target {}", p.target))
                }
                Some(p) if p.state != "armed" => wrong.push(format!(
                    "probe {id} ({}) is {}: {}",
                    p.spec, p.state, p.reason
                )),
                Some(p) if p.versions.iter().any(|&v| v != self.latest) => wrong.push(format!(
                    "probe {id}: its plugin runs version {:?}, not {}",
                    p.versions, self.latest
                )),
                Some(_) => {}
            }
        }
        if views.len() != ours.len() {
            wrong.push(format!("{} probes listed, not {}", views.len(), ours.len()));
        }
        let n = wrong.len();
        for w in wrong.into_iter().take(10) {
            self.find(format!("after the restart: {w}"));
        }
        if n > 10 {
            self.find(format!("after the restart: … and {} more", n - 10));
        }
    }

    /// Waits (5 s at most) until threads of at least two targets are in
    /// a round; counts the threads in one at that moment.
    fn wait_for_rounds(&mut self) {
        let threads = self.plan.threads;
        let busy = |t: &Target| {
            (0..threads)
                .filter(|&i| t.ctl.get(Control::INROUND + i) != 0)
                .count()
        };
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let counts: Vec<usize> = self.targets.iter().map(busy).collect();
            let targets = counts.iter().filter(|&&n| n > 0).count();
            if targets >= 2.min(self.targets.len()) || Instant::now() > end {
                self.stats.in_round_at_kills += counts.iter().sum::<usize>() as u64;
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// The resources of the service and its core, just before the kill.
    fn sample(&mut self, svc: &BenchService) {
        let service = usage(svc.pid());
        let core = svc.core.map(usage).unwrap_or_default();
        let db = ["wprobe.db", "wprobe.db-wal"]
            .map(|f| std::fs::metadata(self.data.join(f)).map_or(0, |m| m.len()));
        let maps = self
            .targets
            .iter()
            .map(|t| anon_exec_maps(t.pid))
            .max()
            .unwrap_or(0);
        let minute = self.started.elapsed().as_secs_f64() / 60.0;
        eprintln!(
            "[{}] service {} KiB, {} fds, {} threads; core {} KiB, {} fds, {} threads; \
             database {} + {} bytes (log); engine mappings in a target: {maps}",
            self.elapsed(),
            service.rss_kib,
            service.fds,
            service.threads,
            core.rss_kib,
            core.fds,
            core.threads,
            db[0],
            db[1]
        );
        self.stats.samples.push((minute, service, core, db, maps));
    }

    /// The clients of a killed service: their stream ended; what they read.
    fn end_readers(&mut self, readers: Vec<Reader>) {
        for (i, r) in readers.into_iter().enumerate() {
            let (events, lost, error) = r.with(|s| (s.events, s.lost_client, s.error.clone()));
            drop(r);
            self.stats.events_read += events;
            self.stats.client_losses += lost;
            if let Some(e) = error {
                self.find(format!("client {i}: {e}"));
            }
        }
    }

    /// Once the last service and its core are gone: every target as it
    /// would be had it never been traced, and still running.
    fn final_checks(&mut self) {
        // The rounds it has now, to see it go on.
        let before: Vec<u64> = self
            .targets
            .iter()
            .map(|t| t.ctl.get(Control::ROUNDS))
            .collect();
        let mut findings = Vec::new();
        for t in &self.targets {
            if !t.alive() {
                findings.push(format!("target {} (pid {}) is not running", t.id, t.pid));
                continue;
            }
            self.stats.targets_checked += 1;
            let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", t.pid))
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            for tid in &tasks {
                let status = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", t.pid))
                    .unwrap_or_default();
                let field = |k: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default()
                };
                if field("TracerPid:") != "0" {
                    findings.push(format!(
                        "target {} thread {tid} is still traced by {}",
                        t.id,
                        field("TracerPid:")
                    ));
                }
                let state = field("State:");
                if state.starts_with('t') || state.starts_with('T') {
                    findings.push(format!("target {} thread {tid} is stopped: {state}", t.id));
                }
            }
            match compare_text(t.pid) {
                Ok(n) => self.stats.bytes_compared += n,
                Err(e) => findings.push(format!("target {}: {e}", t.id)),
            }
            let left = anon_exec_maps(t.pid);
            if left != 0 {
                findings.push(format!(
                    "target {} keeps {left} anonymous executable mappings",
                    t.id
                ));
            }
            let bad = t.ctl.get(Control::BAD);
            if bad != 0 {
                findings.push(format!("target {} computed {bad} wrong results", t.id));
            }
        }
        // Its threads go on, untraced: two rounds each.
        let end = Instant::now() + Duration::from_secs(30);
        let want = |i: usize| before[i] + 2 * self.plan.threads;
        while (0..self.targets.len()).any(|i| self.targets[i].ctl.get(Control::ROUNDS) < want(i))
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (i, t) in self.targets.iter().enumerate() {
            let r = t.ctl.get(Control::ROUNDS);
            if r < want(i) {
                findings.push(format!(
                    "target {} made {} rounds in 30 s after the end, not {}",
                    t.id,
                    r - before[i],
                    want(i) - before[i]
                ));
            }
        }
        for f in findings {
            self.find(format!("at the end: {f}"));
        }
    }

    fn report(&self, load_before: &str, load_after: &str, elapsed: Duration) -> String {
        let p = &self.plan;
        let st = &self.stats;
        let mut s = String::new();
        let _ = writeln!(s, "- Machine: {}", machine());
        let _ = writeln!(
            s,
            "- Date: {} (UTC); load average before the run: {load_before}, after: {load_after}",
            today()
        );
        let _ = writeln!(
            s,
            "- Run: {:.1} minutes ({} cycles of {} s, asked: {} minutes); {} targets × {} probes \
             ({} threads each, a round of 99 calls every {} ms), {} SSE clients; release \
             binaries",
            elapsed.as_secs_f64() / 60.0,
            p.cycles,
            p.cycle_secs,
            p.minutes,
            p.targets,
            p.probes,
            p.threads,
            p.round_ms,
            p.sse
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "| what | count |");
        let _ = writeln!(s, "|---|--:|");
        let rows: [(&str, String); 10] = [
            ("service SIGKILLed and started again", st.kills.to_string()),
            (
                "target threads in a round at those kills, in all",
                st.in_round_at_kills.to_string(),
            ),
            (
                "starts that failed (and were tried again)",
                st.start_failures.to_string(),
            ),
            ("targets killed and replaced", st.respawned.to_string()),
            ("plugin versions uploaded", st.uploads.to_string()),
            (
                "plugin attachments replaced by uploads",
                st.replaced.to_string(),
            ),
            (
                "pauses (every thread at its marker, every marker at every client)",
                st.checkpoints.to_string(),
            ),
            (
                "events read by all clients together",
                st.events_read.to_string(),
            ),
            (
                "events clients lost by reading too slowly",
                st.client_losses.to_string(),
            ),
            ("findings", self.findings.len().to_string()),
        ];
        for (what, n) in rows {
            let _ = writeln!(s, "| {what} | {n} |");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "**Accounting** over {} windows (from one pause to the next in the same service), \
             {} probe-windows: {} hits = {} events delivered + {} dropped by the core; every \
             client received the delivered ones of every probe; the plugin ran {} times, once \
             per delivered event of its probes; nmissed {}.",
            st.windows,
            st.probe_windows,
            st.hits,
            st.delivered,
            st.dropped,
            st.plugin_calls,
            st.nmissed
        );
        let spread = |v: &[f64]| -> String {
            if v.is_empty() {
                return "—".into();
            }
            let mut w = v.to_vec();
            w.sort_by(f64::total_cmp);
            format!(
                "median {:.2} s, max {:.2} s (n = {})",
                w[w.len() / 2],
                w[w.len() - 1],
                w.len()
            )
        };
        let _ = writeln!(
            s,
            "\n**Restarts**: from the SIGKILL to every probe armed again in the new \
             service, {}; a killed service's core took {} to let its targets go and exit.",
            spread(&st.restores),
            spread(&st.core_exits)
        );
        let _ = writeln!(
            s,
            "\n**At the end** (the last service killed, its core gone): {} targets checked, \
             {} bytes of executable mappings compared with their files.",
            st.targets_checked, st.bytes_compared
        );
        let _ = writeln!(
            s,
            "\nResources, sampled in each cycle before the kill (first / last / largest):\n"
        );
        let _ = writeln!(s, "| | first | last | largest |");
        let _ = writeln!(s, "|---|--:|--:|--:|");
        type Pick = fn(&(f64, Use, Use, [u64; 2], usize)) -> u64;
        let series: [(&str, Pick); 9] = [
            ("service RSS, KiB", |x| x.1.rss_kib),
            ("service open fds", |x| x.1.fds),
            ("service threads", |x| x.1.threads),
            ("core RSS, KiB", |x| x.2.rss_kib),
            ("core open fds", |x| x.2.fds),
            ("core threads", |x| x.2.threads),
            ("database file, bytes", |x| x.3[0]),
            ("its write-ahead log, bytes", |x| x.3[1]),
            ("engine mappings in a target, most", |x| x.4 as u64),
        ];
        for (name, f) in series {
            let v: Vec<u64> = st.samples.iter().map(f).collect();
            if let (Some(first), Some(last), Some(max)) = (v.first(), v.last(), v.iter().max()) {
                let _ = writeln!(s, "| {name} | {first} | {last} | {max} |");
            }
        }
        let rss: Vec<String> = st
            .samples
            .iter()
            .map(|x| format!("{}", x.1.rss_kib / 1024))
            .collect();
        let _ = writeln!(s, "\nService RSS by cycle, MiB: {}.", rss.join(" "));
        let _ = writeln!(s);
        if self.findings.is_empty() {
            let _ = writeln!(s, "No findings.");
        } else {
            let _ = writeln!(s, "Findings ({}):\n", self.findings.len());
            for f in self.findings.iter().take(40) {
                let _ = writeln!(s, "- {f}");
            }
            if self.findings.len() > 40 {
                let _ = writeln!(s, "- … and {} more", self.findings.len() - 40);
            }
        }
        s
    }
}

/// Compares every executable mapping of a file in process `pid` with the
/// file's bytes; the number of bytes compared, or where they differ.
fn compare_text(pid: i32) -> Result<u64, String> {
    let maps = wprobe_core::symbols::read_maps(pid).map_err(|e| e.to_string())?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(|e| e.to_string())?;
    let mut compared = 0;
    for m in maps.iter().filter(|m| m.exec && m.is_file() && !m.deleted) {
        let Some(path) = m.path.as_deref() else {
            continue;
        };
        let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        // The part of the mapping the file covers (the rest is zeros).
        let len = m.len().min(size.saturating_sub(m.offset)) as usize;
        let mut want = vec![0u8; len];
        file.read_exact_at(&mut want, m.offset)
            .map_err(|e| format!("{path}: {e}"))?;
        let mut live = vec![0u8; len];
        mem.read_exact_at(&mut live, m.start)
            .map_err(|e| format!("/proc/{pid}/mem at {:#x}: {e}", m.start))?;
        if let Some(at) = live.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(format!(
                "{path}: the byte at {:#x} (file offset {:#x}) is {:#04x}, the file's {:#04x}",
                m.start + at as u64,
                m.offset + at as u64,
                live[at],
                want[at]
            ));
        }
        compared += len as u64;
    }
    Ok(compared)
}
