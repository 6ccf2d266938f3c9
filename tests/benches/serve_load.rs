//! `wprobe serve` under load: how many events per second reach a
//! Server-Sent Events client while a target calls a probed function as
//! fast as it can, and how many API requests per second the service
//! answers.
//!
//! Run it with
//!
//! ```text
//! cargo build --release -p wprobe -p wprobe-core
//! cargo bench -p wprobe-tests --bench serve_load
//! ```
//!
//! It measures the release binaries beside it (`target/release/wprobe`,
//! which starts the `wprobe-core` beside it), or those in
//! `WPROBE_BENCH_BIN_DIR` (another build, e.g. from before a change), and
//! does not build them: it stops with a message when they are missing and
//! warns when they are older than the sources.
//!
//! Each repetition, round-robin so that a noisy neighbour hurts every case
//! alike:
//!
//! 1. The ceiling: the `gated` fixture in `spin` mode (a thread calling
//!    `work()` without end) under the kernel's uprobe on `work`, no wprobe,
//!    its hits per second read from tracefs `uprobe_profile`.
//! 2. SSE: the same fixture (another copy of the file, so that no kernel
//!    uprobe can be left on it) attached with `POST /api/targets`, an entry
//!    probe on `work` (`POST /api/probes`); then one client, and then four
//!    at once, read `GET /api/events` as fast as they can. After a second
//!    of warm-up, a window of `WPROBE_BENCH_SSE_SECS` (default 5) counts
//!    what each client received (hit events, loss records and the events
//!    they stand for), beside the probe's hit counter
//!    (`GET /api/probes/{id}`) and the service's event counter
//!    (`/metrics`) over the same window: what the core produced, what
//!    reached the service, what reached each client.
//! 3. API: `GET /api/probes` (with an idle target and its probe attached,
//!    so that the route does its real work: a store query and a counter
//!    refresh from the target's thread and its core) and `GET /api/health`
//!    (the cheapest route, the baseline), each for `WPROBE_BENCH_API_SECS`
//!    (default 3): from 1 and 4 client threads, each on one keep-alive
//!    HTTP/1.1 connection, requests back to back; from 1 thread with a new
//!    connection for each request; and from 1 thread with 20 ms between a
//!    reply and the next request. Requests per second and latency
//!    percentiles. Back to back against paced tells a wait that outlives
//!    each answer from the route's own cost (issue 11, item 7).
//!
//! `WPROBE_BENCH_REPS` (default 5) sets the number of repetitions; each
//! number is given as median (min..max) over them. The results are printed
//! and written into `docs/benchmarks.md` between the markers of its own
//! generated section (`WPROBE_BENCH_NO_DOC=1` leaves the file alone).
//!
//! Every process it starts (the service, through it the core, the
//! fixtures) is ended by a drop guard, also when the bench panics.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wprobe_tests::bench::{
    check_binaries, doc_path, env_u64, loadavg, machine, today, writes_doc, BenchService, Conn,
    CONTROL_TIMEOUT,
};
use wprobe_tests::{build, scratch_dir, tracefs_available, write_doc_section, KernelProbes};

/// How API requests reach the service.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// One keep-alive connection per client thread, requests back to back.
    KeepAlive,
    /// A new connection for each request, back to back.
    NewConnection,
    /// One keep-alive connection, a pause of this many ms after each reply.
    Paced(u64),
}

impl Mode {
    fn describe(self) -> String {
        match self {
            Mode::KeepAlive => "keep-alive, back to back".into(),
            Mode::NewConnection => "a new connection each, back to back".into(),
            Mode::Paced(ms) => format!("keep-alive, {ms} ms between a reply and the next request"),
        }
    }
}

fn main() {
    let reps = env_u64("WPROBE_BENCH_REPS", 5).max(1) as usize;
    let sse_secs = env_u64("WPROBE_BENCH_SSE_SECS", 5).max(1);
    let api_secs = env_u64("WPROBE_BENCH_API_SECS", 3).max(1);

    check_binaries("serve_load");
    let load_before = loadavg();
    let bin = build("gated", "serve-load", &["-O2", "-pthread"]);
    let bin_kernel = build("gated", "serve-load-kernel", &["-O2", "-pthread"]);
    let kernel = tracefs_available();

    let dir = scratch_dir().join("serve-load");
    let _ = std::fs::remove_dir_all(&dir);
    let svc = BenchService::start(&dir, &[]);
    let health = svc.call("GET", "/api/health", None);
    assert_eq!(health["status"], "ok", "{health}");

    // The target of the API cases: idle, one probe, attached all along.
    let idle = Fixture::start(&bin, false);
    let idle_target = svc.attach(idle.pid());
    let idle_probe = probe(&svc, idle_target, &bin);

    let started = Instant::now();
    let mut kernel_rates: Vec<f64> = Vec::new();
    let mut sse: [Vec<SseRun>; 2] = [Vec::new(), Vec::new()];
    // Back to back, every request comes right after the previous answer;
    // paced, after a pause long enough for anything the previous request
    // set going to be over: a difference between the two is a wait in the
    // service that outlives its answers (issue 11, item 7).
    let api_cases: [(&str, usize, Mode); 7] = [
        ("/api/health", 1, Mode::KeepAlive),
        ("/api/probes", 1, Mode::KeepAlive),
        ("/api/health", 1, Mode::NewConnection),
        ("/api/probes", 1, Mode::NewConnection),
        ("/api/probes", 1, Mode::Paced(20)),
        ("/api/health", 4, Mode::KeepAlive),
        ("/api/probes", 4, Mode::KeepAlive),
    ];
    let mut api: Vec<Vec<ApiRun>> = vec![Vec::new(); api_cases.len()];
    for rep in 0..reps {
        eprintln!("repetition {}/{reps}", rep + 1);
        if kernel {
            let r = kernel_rate(&bin_kernel, sse_secs);
            eprintln!("  kernel uprobe: {r:.0} hits/s");
            kernel_rates.push(r);
        }
        {
            let spin = Fixture::start(&bin, true);
            let target = svc.attach(spin.pid());
            let probe = probe(&svc, target, &bin);
            std::thread::sleep(Duration::from_secs(1));
            for (i, clients) in [1usize, 4].into_iter().enumerate() {
                let run = sse_window(&svc, probe, clients, sse_secs);
                eprintln!("  {}", run.line(clients));
                sse[i].push(run);
            }
            // The process first: its thread then has nothing more to
            // read, and letting the target go is only bookkeeping.
            drop(spin);
            svc.call_status("DELETE", &format!("/api/targets/{target}"), None, 204);
        }
        for (i, &(path, threads, mode)) in api_cases.iter().enumerate() {
            let run = api_run(&svc, path, threads, mode, api_secs);
            eprintln!(
                "  GET {path}, {threads} thread(s), {}: {:.0} requests/s, p50 {:.0} µs, p99 \
                 {:.0} µs",
                mode.describe(),
                run.rate,
                run.p50_us,
                run.p99_us
            );
            api[i].push(run);
        }
    }
    let elapsed = started.elapsed();
    // The idle target's probe still counts nothing: the API cases only
    // read it.
    let p = svc.call("GET", &format!("/api/probes/{idle_probe}"), None);
    assert_eq!(p["hits"], 0, "the idle target's probe: {p}");
    drop(idle);
    drop(svc);

    let report = Report {
        reps,
        sse_secs,
        api_secs,
        load_before,
        load_after: loadavg(),
        kernel: kernel_rates,
        sse,
        api: api_cases
            .iter()
            .zip(api)
            .map(|(&(path, threads, mode), runs)| (path, threads, mode, runs))
            .collect(),
    };
    let md = report.markdown();
    print!("{md}");
    eprintln!("measured in {:.1} s", elapsed.as_secs_f64());
    if writes_doc() {
        let doc = doc_path();
        write_doc(&doc, &md);
        eprintln!("wrote {}", doc.display());
    }
}

/// An entry probe on `work` of `bin` in `target`, armed.
fn probe(svc: &BenchService, target: i64, bin: &Path) -> i64 {
    let spec = format!("uprobe:{}:work", bin.display());
    let p = svc.call(
        "POST",
        "/api/probes",
        Some(&json!({ "target": target, "spec": spec })),
    );
    assert_eq!(p["state"], "armed", "{p}");
    p["id"].as_i64().unwrap_or_else(|| panic!("no id in {p}"))
}

/// The probe's hit counter, when it was read, and how long reading it
/// took. The target's thread reads the counter from the core when it gets
/// to the request, just before the reply: the value is of the reply's
/// time, however long the request waited. After 60 s the service gives up
/// waiting and answers the last value it had (stale).
fn hits(svc: &BenchService, probe: i64) -> (u64, Instant, Duration) {
    let t = Instant::now();
    let p = svc.call("GET", &format!("/api/probes/{probe}"), None);
    let at = Instant::now();
    let hits = p["hits"]
        .as_u64()
        .unwrap_or_else(|| panic!("no hits in {p}"));
    (hits, at, at - t)
}

/// (events the service received from the core, events the core dropped,
/// events SSE clients missed), from /metrics.
fn bus_counters(svc: &BenchService) -> [u64; 3] {
    svc.metrics([
        "wprobe_events_total",
        "wprobe_events_dropped_total",
        "wprobe_sse_lost_total",
    ])
    .map(|v| v as u64)
}

/// The `gated` fixture, waiting on its stdin (which is never written: no
/// round runs); with `spin`, its second thread calls `work()` without
/// end. Killed on drop.
struct Fixture {
    child: Child,
    _stdin: ChildStdin,
}

impl Fixture {
    fn start(bin: &Path, spin: bool) -> Fixture {
        let mut cmd = Command::new(bin);
        cmd.arg("1");
        if spin {
            cmd.arg("spin");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let mut fixture = Fixture {
            child,
            _stdin: stdin,
        };
        let mut ready = [0u8; 6];
        fixture
            .child
            .stdout
            .as_mut()
            .expect("piped stdout")
            .read_exact(&mut ready)
            .expect("the fixture says ready");
        assert_eq!(&ready, b"ready\n");
        fixture
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hits per second of the kernel's uprobe on `work` of a spinning fixture,
/// no wprobe anywhere: what the function's call rate is under the
/// cheapest breakpoint there is.
fn kernel_rate(bin: &Path, secs: u64) -> f64 {
    let fixture = Fixture::start(bin, true);
    let k = KernelProbes::new(bin, &[('p', "work", 0)]);
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (k.counts()[0], Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, t1) = (k.counts()[0], Instant::now());
    drop(k);
    drop(fixture);
    assert!(c1 > c0, "the kernel uprobe counted no hit");
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// What an SSE client has received so far.
#[derive(Default)]
struct SseStats {
    /// `hit` events.
    hits: AtomicU64,
    /// `loss` records, and the events they stand for: lost because this
    /// client read too slowly, or because the core's queue was full.
    loss_records: AtomicU64,
    lost_client: AtomicU64,
    lost_core: AtomicU64,
    /// Bytes of the stream (chunk framing included).
    bytes: AtomicU64,
    /// The longest time between two records, since it was last reset.
    max_gap_ns: AtomicU64,
    /// What went wrong in the reader, if anything.
    error: Mutex<Option<String>>,
}

/// A client reading `GET /api/events` on a thread of its own, as fast as
/// it can; closed and joined on drop.
struct SseClient {
    stats: Arc<SseStats>,
    sock: TcpStream,
    thread: Option<JoinHandle<()>>,
}

impl SseClient {
    fn open(svc: &BenchService, probe: i64) -> SseClient {
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
        let mut r = BufReader::with_capacity(256 << 10, sock.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("the SSE status line");
        assert!(
            line.starts_with("HTTP/1.1 200"),
            "GET /api/events: {line:?}"
        );
        loop {
            line.clear();
            r.read_line(&mut line).expect("an SSE header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let stats = Arc::new(SseStats::default());
        let s = stats.clone();
        let thread = std::thread::spawn(move || read_events(r, &s, probe));
        SseClient {
            stats,
            sock,
            thread: Some(thread),
        }
    }

    fn snap(&self) -> ClientSnap {
        let s = &self.stats;
        if let Some(e) = s.error.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            panic!("an SSE client failed: {e}");
        }
        ClientSnap {
            at: Instant::now(),
            hits: s.hits.load(Ordering::Relaxed),
            loss_records: s.loss_records.load(Ordering::Relaxed),
            lost_client: s.lost_client.load(Ordering::Relaxed),
            lost_core: s.lost_core.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            max_gap_ns: s.max_gap_ns.load(Ordering::Relaxed),
        }
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the stream until it ends: counts `hit` events without parsing
/// them (but for the first, which must be of `probe`), parses `loss`
/// records. Chunk-size lines of the transfer encoding are skipped by
/// looking only at `event:` and `data:` lines.
fn read_events(mut r: BufReader<TcpStream>, s: &SseStats, probe: i64) {
    let mut line = Vec::with_capacity(4096);
    let mut loss = false;
    let mut checked = false;
    let mut last = Instant::now();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) => s.bytes.fetch_add(n as u64, Ordering::Relaxed),
        };
        let record = if line.starts_with(b"event: hit") {
            s.hits.fetch_add(1, Ordering::Relaxed);
            loss = false;
            true
        } else if line.starts_with(b"event: loss") {
            s.loss_records.fetch_add(1, Ordering::Relaxed);
            loss = true;
            true
        } else {
            false
        };
        if record {
            let now = Instant::now();
            s.max_gap_ns
                .fetch_max((now - last).as_nanos() as u64, Ordering::Relaxed);
            last = now;
            continue;
        }
        let Some(data) = line.strip_prefix(b"data: ") else {
            continue;
        };
        if !loss && checked {
            continue;
        }
        let v: Value = match serde_json::from_slice(data.trim_ascii_end()) {
            Ok(v) => v,
            Err(e) => {
                *s.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "bad SSE data {:?}: {e}",
                    String::from_utf8_lossy(data)
                ));
                return;
            }
        };
        if loss {
            let n = v["lost"].as_u64().unwrap_or(0);
            // The core's losses name their target; a slow client's do not.
            if v.get("target").is_some_and(|t| !t.is_null()) {
                s.lost_core.fetch_add(n, Ordering::Relaxed);
            } else {
                s.lost_client.fetch_add(n, Ordering::Relaxed);
            }
        } else {
            checked = true;
            if v["probe"] != probe || v["kind"] != "entry" {
                *s.error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("an event not of entry probe {probe}: {v}"));
                return;
            }
        }
    }
}

#[derive(Clone, Copy)]
struct ClientSnap {
    at: Instant,
    hits: u64,
    loss_records: u64,
    lost_client: u64,
    lost_core: u64,
    bytes: u64,
    max_gap_ns: u64,
}

/// The counters at one end of a window.
struct Snap {
    clients: Vec<ClientSnap>,
    hits: u64,
    hits_at: Instant,
    hits_took: Duration,
    bus: [u64; 3],
    bus_at: Instant,
}

/// The hit counter first (its read may wait long, see [`hits`]),
/// the clients' counts at once after it, so that both are of the same
/// moment, then the service's counters (read at the reply too).
fn snap(svc: &BenchService, probe: i64, clients: &[SseClient]) -> Snap {
    let (hits, hits_at, hits_took) = hits(svc, probe);
    let c = clients.iter().map(SseClient::snap).collect();
    let bus = bus_counters(svc);
    Snap {
        clients: c,
        hits,
        hits_at,
        hits_took,
        bus,
        bus_at: Instant::now(),
    }
}

/// One window of SSE reading.
struct SseRun {
    /// Hits per second of the probe, by its counter; NaN when a read of
    /// the counter timed out in the service (its value was stale).
    hits: f64,
    /// The window's length, from counter read to counter read.
    secs: f64,
    /// Events per second the service received from the core.
    published: f64,
    /// Events per second each client received.
    per_client: Vec<f64>,
    loss_records: u64,
    lost_client: u64,
    /// Events the core dropped, by its counter (/metrics) and by the loss
    /// records the first client received.
    lost_core: u64,
    lost_core_records: u64,
    bytes_per_event: f64,
    max_gap_ms: f64,
    /// The slowest read of the hit counter at either end.
    counter_ms: f64,
}

impl SseRun {
    fn total(&self) -> f64 {
        self.per_client.iter().sum()
    }

    fn mean_client(&self) -> f64 {
        self.total() / self.per_client.len() as f64
    }

    fn line(&self, clients: usize) -> String {
        format!(
            "{clients} SSE client(s): hits {:.0}/s, received by the service {:.0}/s, per client \
             {}/s, {} loss records ({} events lost by slow clients, {} in the core), \
             longest pause {:.0} ms, counter read {:.0} ms, window {:.1} s",
            self.hits,
            self.published,
            self.per_client
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.loss_records,
            self.lost_client,
            self.lost_core,
            self.max_gap_ms,
            self.counter_ms,
            self.secs
        )
    }
}

/// `clients` clients read the stream; after a second of warm-up, a window
/// of `secs` seconds.
fn sse_window(svc: &BenchService, probe: i64, clients: usize, secs: u64) -> SseRun {
    let open: Vec<SseClient> = (0..clients).map(|_| SseClient::open(svc, probe)).collect();
    std::thread::sleep(Duration::from_secs(1));
    for c in &open {
        c.stats.max_gap_ns.store(0, Ordering::Relaxed);
    }
    let a = snap(svc, probe, &open);
    std::thread::sleep(Duration::from_secs(secs));
    let b = snap(svc, probe, &open);
    drop(open);
    let per_s = |n0: u64, n1: u64, t0: Instant, t1: Instant| {
        n1.saturating_sub(n0) as f64 / (t1 - t0).as_secs_f64()
    };
    let pairs: Vec<(&ClientSnap, &ClientSnap)> = a.clients.iter().zip(&b.clients).collect();
    let sum = |f: fn(&ClientSnap) -> u64| -> u64 {
        pairs.iter().map(|(x, y)| f(y).saturating_sub(f(x))).sum()
    };
    let received = sum(|c| c.hits);
    let stale = a.hits_took.max(b.hits_took) >= Duration::from_secs(59);
    SseRun {
        hits: if stale {
            f64::NAN
        } else {
            per_s(a.hits, b.hits, a.hits_at, b.hits_at)
        },
        secs: (b.hits_at - a.hits_at).as_secs_f64(),
        published: per_s(a.bus[0], b.bus[0], a.bus_at, b.bus_at),
        per_client: pairs
            .iter()
            .map(|(x, y)| per_s(x.hits, y.hits, x.at, y.at))
            .collect(),
        loss_records: sum(|c| c.loss_records),
        lost_client: sum(|c| c.lost_client),
        lost_core: b.bus[1].saturating_sub(a.bus[1]),
        lost_core_records: pairs
            .first()
            .map_or(0, |(x, y)| y.lost_core.saturating_sub(x.lost_core)),
        bytes_per_event: sum(|c| c.bytes) as f64 / received.max(1) as f64,
        max_gap_ms: pairs.iter().map(|(_, y)| y.max_gap_ns).max().unwrap_or(0) as f64 / 1e6,
        counter_ms: a.hits_took.max(b.hits_took).as_secs_f64() * 1e3,
    }
}

/// One API case.
#[derive(Clone)]
struct ApiRun {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `threads` threads send `GET path` for `secs` seconds, as `mode` says.
fn api_run(svc: &BenchService, path: &str, threads: usize, mode: Mode, secs: u64) -> ApiRun {
    let barrier = Barrier::new(threads);
    let open = || Conn::open(&svc.addr, &svc.token, Some(CONTROL_TIMEOUT)).expect("connect");
    let results: Vec<(Vec<u32>, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut c = open();
                    // One request first: the connection is up, the reply
                    // is what it should be.
                    let (status, body) = c.send("GET", path, None).expect("request");
                    assert_eq!(
                        status,
                        200,
                        "GET {path}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    let v: Value = serde_json::from_slice(&body).expect("a JSON reply");
                    if path == "/api/probes" {
                        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
                    } else {
                        assert_eq!(v["status"], "ok", "{v}");
                    }
                    let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
                    barrier.wait();
                    let start = Instant::now();
                    let end = start + Duration::from_secs(secs);
                    loop {
                        let t = Instant::now();
                        if t >= end {
                            break;
                        }
                        if mode == Mode::NewConnection {
                            c = open();
                        }
                        let (status, body) = c.send("GET", path, None).expect("request");
                        lat.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                        assert_eq!(
                            status,
                            200,
                            "GET {path}: {}",
                            String::from_utf8_lossy(&body)
                        );
                        if let Mode::Paced(ms) = mode {
                            std::thread::sleep(Duration::from_millis(ms));
                        }
                    }
                    (lat, start.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an API client thread"))
            .collect()
    });
    let took = results
        .iter()
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let mut lat: Vec<u32> = results.into_iter().flat_map(|(l, _)| l).collect();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1e3
    };
    ApiRun {
        rate: lat.len() as f64 / took,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

/// (min, median, max).
fn spread(v: &[f64]) -> Option<(f64, f64, f64)> {
    // NaN: not measured.
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    Some((s[0], s[s.len() / 2], s[s.len() - 1]))
}

/// "median (min..max)".
fn mmm(v: &[f64], digits: usize) -> String {
    match spread(v) {
        None => "—".into(),
        Some((lo, med, hi)) if lo == hi => format!("{med:.digits$}"),
        Some((lo, med, hi)) => format!("{med:.digits$} ({lo:.digits$}..{hi:.digits$})"),
    }
}

fn median(v: &[f64]) -> Option<f64> {
    spread(v).map(|(_, m, _)| m)
}

struct Report {
    reps: usize,
    sse_secs: u64,
    api_secs: u64,
    load_before: String,
    load_after: String,
    kernel: Vec<f64>,
    /// One client, four clients.
    sse: [Vec<SseRun>; 2],
    api: Vec<(&'static str, usize, Mode, Vec<ApiRun>)>,
}

impl Report {
    fn api_runs(&self, path: &str, threads: usize, mode: Mode) -> &[ApiRun] {
        self.api
            .iter()
            .find(|(p, t, m, _)| *p == path && *t == threads && *m == mode)
            .map_or(&[], |(_, _, _, runs)| runs.as_slice())
    }

    fn api_rates(&self, path: &str, threads: usize, mode: Mode) -> Vec<f64> {
        let runs = self.api_runs(path, threads, mode);
        runs.iter().map(|r| r.rate).collect()
    }

    fn api_p50(&self, path: &str, threads: usize, mode: Mode) -> Option<f64> {
        let runs = self.api_runs(path, threads, mode);
        median(&runs.iter().map(|r| r.p50_us).collect::<Vec<_>>())
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "- Machine: {}", machine());
        let _ = writeln!(
            s,
            "- Date: {} (UTC); load average before the run: {}, after: {}",
            today(),
            self.load_before,
            self.load_after
        );
        let _ = writeln!(
            s,
            "- Run: {} repetitions round-robin, each number median (min..max) over them; \
             release `wprobe serve` with its default options (`--sse-buffer 4096`) and its \
             own `wprobe-core`; target `gated 1 spin` (a thread calling `work()` without \
             end) with one entry probe `uprobe:…/gated:work` (default event: arguments and \
             registers); SSE windows of {} s after 1 s of warm-up, API cases of {} s each",
            self.reps, self.sse_secs, self.api_secs
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "Events through SSE, busy target:\n");
        let _ = writeln!(
            s,
            "| case | probe hits/s | events/s into the service | events/s received, per \
             client | received ÷ hits | events/s received, all clients | loss records | \
             events lost: slow client / core queue | longest pause |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        if !self.kernel.is_empty() {
            let _ = writeln!(
                s,
                "| kernel uprobe on `work`, no wprobe (the ceiling) | {} | — | — | — | — | — | — | — |",
                mmm(&self.kernel, 0)
            );
        }
        for (runs, clients) in self.sse.iter().zip([1, 4]) {
            if runs.is_empty() {
                continue;
            }
            let col = |f: &dyn Fn(&SseRun) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
            let per_client = if clients == 1 {
                mmm(&col(&|r| r.mean_client()), 0)
            } else {
                // Every client of every window.
                let all: Vec<f64> = runs.iter().flat_map(|r| r.per_client.clone()).collect();
                mmm(&all, 0)
            };
            let records: u64 = runs.iter().map(|r| r.loss_records).sum();
            let lost_client: u64 = runs.iter().map(|r| r.lost_client).sum();
            let lost_core: u64 = runs.iter().map(|r| r.lost_core).sum();
            let max_gap = runs.iter().map(|r| r.max_gap_ms).fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "| wprobe serve, {clients} SSE client{} | {} | {} | {} | {} | {} | {records} | \
                 {lost_client} / {lost_core} | {max_gap:.0} ms |",
                if clients == 1 { "" } else { "s" },
                mmm(&col(&|r| r.hits), 0),
                mmm(&col(&|r| r.published), 0),
                per_client,
                mmm(&col(&|r| r.mean_client() / r.hits), 3),
                mmm(&col(&|r| r.total()), 0),
            );
        }
        let _ = writeln!(
            s,
            "\nProbe hits/s: the probe's hit counter (`GET /api/probes/{{id}}`) over the \
             window (see below for what reading it costs); events/s into the service: `wprobe_events_total` of `/metrics`; \
             received: `event: hit` records each client read. Loss records, events lost \
             (by the records: a slow client's; by `wprobe_events_dropped_total`: the \
             core's) and the longest pause between two records a client saw are over all \
             {} windows of the row; spread of the per-client rate with 4 clients is over \
             every client of every window.",
            self.reps
        );
        let one = &self.sse[0];
        let bpe = median(&one.iter().map(|r| r.bytes_per_event).collect::<Vec<_>>());
        let mbps = median(
            &one.iter()
                .map(|r| r.mean_client() * r.bytes_per_event / 1e6)
                .collect::<Vec<_>>(),
        );
        if let (Some(bpe), Some(mbps)) = (bpe, mbps) {
            let _ = writeln!(
                s,
                "An event is {bpe:.0} bytes of stream (the `event:` line, the JSON, chunk \
                 framing): {mbps:.1} MB/s to one client."
            );
        }
        let counter_ms = self
            .sse
            .iter()
            .flatten()
            .map(|r| r.counter_ms)
            .fold(0.0, f64::max);
        let reads: Vec<f64> = self.sse.iter().flatten().map(|r| r.counter_ms).collect();
        let windows: Vec<f64> = self.sse.iter().flatten().map(|r| r.secs).collect();
        let stale = self
            .sse
            .iter()
            .flatten()
            .filter(|r| r.hits.is_nan())
            .count();
        let core_records: u64 = self.sse.iter().flatten().map(|r| r.lost_core_records).sum();
        let _ = writeln!(
            s,
            "**Reading the hit counter during the flood stalls**: one `GET /api/probes/{{id}}` \
             took {} ms (median over the windows' slower read; longest {counter_ms:.0} ms), \
             so a window — from the reply of one counter read to the reply of the next, \
             the clients' counts taken at the same moments — lasted {} s instead of {}. \
             {stale} of {} windows had a read that hit the service's 60 s limit and answered \
             a stale counter: their hits/s are left out (—). The core's loss records a \
             client received name {core_records} events.",
            mmm(&reads, 0),
            mmm(&windows, 1),
            self.sse_secs,
            windows.len()
        );

        let _ = writeln!(
            s,
            "\nAPI requests over HTTP/1.1 (an idle target with one probe attached):\n"
        );
        let _ = writeln!(
            s,
            "| route | requests | client threads | requests/s | ÷ /api/health | latency p50 µs \
             | p99 µs |"
        );
        let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|");
        for (path, threads, mode, runs) in &self.api {
            let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
            let paced = matches!(mode, Mode::Paced(_));
            let ratio = match (
                *path != "/api/health" && !paced,
                median(&rates),
                median(&self.api_rates("/api/health", *threads, *mode)),
            ) {
                (true, Some(r), Some(h)) => format!("{:.4}", r / h),
                _ => "—".into(),
            };
            let _ = writeln!(
                s,
                "| `GET {path}` | {} | {threads} | {} | {ratio} | {} | {} |",
                mode.describe(),
                if paced { "—".into() } else { mmm(&rates, 0) },
                mmm(&runs.iter().map(|r| r.p50_us).collect::<Vec<_>>(), 0),
                mmm(&runs.iter().map(|r| r.p99_us).collect::<Vec<_>>(), 0),
            );
        }
        let _ = writeln!(
            s,
            "\nLatency: per request, from sending it to its whole reply, pooled over the \
             client threads of a case; the median (min..max) of the {} repetitions' \
             percentiles.",
            self.reps
        );

        // The ratios, in one place.
        let ratio = |runs: &[SseRun], f: fn(&SseRun) -> f64| {
            median(&runs.iter().map(f).collect::<Vec<_>>())
        };
        let fmt = |v: Option<f64>, d: usize| v.map_or_else(|| "—".into(), |x| format!("{x:.d$}"));
        let hits1 = ratio(&self.sse[0], |r| r.hits);
        let kernel_med = median(&self.kernel);
        let api_ratio = |t: usize| {
            median(&self.api_rates("/api/probes", t, Mode::KeepAlive))
                .zip(median(&self.api_rates("/api/health", t, Mode::KeepAlive)))
                .map(|(p, h)| p / h)
        };
        let probes_p50 = |mode| self.api_p50("/api/probes", 1, mode);
        let back_to_back = probes_p50(Mode::KeepAlive);
        let _ = writeln!(
            s,
            "\nRatios: SSE received ÷ probe hits, 1 client {}, 4 clients {} per client; \
             probe hits ÷ kernel uprobe hits {} (1 client); `/api/probes` ÷ `/api/health` \
             {} with 1 thread, {} with 4 (keep-alive); `/api/probes` p50 back to back ÷ \
             paced {}, keep-alive ÷ new connections {}.",
            fmt(ratio(&self.sse[0], |r| r.mean_client() / r.hits), 3),
            fmt(ratio(&self.sse[1], |r| r.mean_client() / r.hits), 3),
            fmt(hits1.zip(kernel_med).map(|(w, k)| w / k), 3),
            fmt(api_ratio(1), 4),
            fmt(api_ratio(4), 4),
            fmt(
                back_to_back
                    .zip(probes_p50(Mode::Paced(20)))
                    .map(|(b, p)| b / p),
                2
            ),
            fmt(
                back_to_back
                    .zip(probes_p50(Mode::NewConnection))
                    .map(|(k, n)| k / n),
                2
            ),
        );
        s
    }
}

/// Replaces this benchmark's section of `docs/benchmarks.md`.
fn write_doc(path: &Path, body: &str) {
    let intro = "## wprobe serve under load\n\nRun `cargo build --release -p wprobe -p \
                 wprobe-core`, then `cargo bench -p wprobe-tests --bench serve_load` (see the \
                 doc comment of `tests/benches/serve_load.rs`).\n\n";
    write_doc_section(path, "serve_load", intro, body);
}
