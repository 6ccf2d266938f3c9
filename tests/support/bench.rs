//! What the benchmarks of `tests/benches` share: their settings from the
//! environment, the machine they ran on, the release binaries they
//! measure, a `wprobe serve` of those binaries, and a keep-alive HTTP/1.1
//! client (a few lines over a `TcpStream`, like [`crate::service`], so
//! that what is timed is the service and not a client library).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::service::Server;

/// How long a control request (attach, probe, counters) may take before a
/// bench gives up: longer than the service's own 60 s wait for a target's
/// thread.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(90);

/// A number from the environment, or `default`; a value that is not a
/// number stops the bench with a message that names it.
pub fn env_u64(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The load averages (1, 5, 15 minutes) of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// "CPU model, N cores, Linux release".
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

/// Today's date, from the system clock (days since the epoch to a civil
/// date, Howard Hinnant's algorithm).
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The workspace's root (above tests/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace above tests/")
        .to_path_buf()
}

/// docs/benchmarks.md, where the benches write their sections.
pub fn doc_path() -> PathBuf {
    repo_root().join("docs/benchmarks.md")
}

/// Whether the bench may write its section of docs/benchmarks.md
/// (`WPROBE_BENCH_NO_DOC=1` says no).
pub fn writes_doc() -> bool {
    std::env::var("WPROBE_BENCH_NO_DOC").as_deref() != Ok("1")
}

/// The directory of the binaries a bench measures: `WPROBE_BENCH_BIN_DIR`
/// when given (to measure another build of the same benchmark, e.g. one
/// from before a change), else target/release when run by `cargo bench`
/// (target/release/deps/BENCH-HASH → its grandparent).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WPROBE_BENCH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("bench binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// Stops `bench` with what to do when `wprobe` or `wprobe-core` is
/// missing from [`bin_dir`]; warns when they are not release builds or
/// older than the sources.
pub fn check_binaries(bench: &str) {
    let dir = bin_dir();
    const BUILD: &str = "cargo build --release -p wprobe -p wprobe-core";
    for name in ["wprobe", "wprobe-core"] {
        let bin = dir.join(name);
        if !bin.exists() {
            eprintln!(
                "\n{bench}: {} is missing.\nBuild the binaries this bench measures first:\n\n    \
                 {BUILD}\n\nthen run `cargo bench -p wprobe-tests --bench {bench}` again.\n",
                bin.display()
            );
            std::process::exit(2);
        }
    }
    if std::env::var_os("WPROBE_BENCH_BIN_DIR").is_some() {
        eprintln!("measuring the binaries in {}", dir.display());
        return;
    }
    if dir.file_name().is_none_or(|n| n != "release") {
        eprintln!(
            "warning: not a release build ({}); numbers from debug binaries say little — \
             use `cargo bench`",
            dir.display()
        );
    }
    let root = repo_root();
    let newest_source = ["host/src", "kernel-core/src"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    let oldest_bin = ["wprobe", "wprobe-core"]
        .iter()
        .filter_map(|b| {
            std::fs::metadata(dir.join(b))
                .and_then(|m| m.modified())
                .ok()
        })
        .min();
    if let (Some(src), Some(bin)) = (newest_source, oldest_bin) {
        if src > bin {
            eprintln!(
                "warning: {} or wprobe-core is older than the newest source file: \
                 run `{BUILD}` to measure the tree as it is",
                dir.join("wprobe").display()
            );
        }
    }
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// The pids of `pid`'s children, from /proc.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    out
}

/// Whether `pid` is a running `wprobe-core` (not a pid reused since).
pub fn is_core(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|e| e.file_name().is_some_and(|n| n == "wprobe-core"))
        && !matches!(proc_state(pid), Some('Z' | 'X'))
}

/// The state letter of /proc/PID/stat (R, S, D, t, T, Z, ...).
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Ends the service's core if it outlived the service (it should not: it
/// gets SIGTERM when the service dies). Only while that pid is still a
/// wprobe-core, so that a reused pid is left alone.
pub fn end_orphan_core(core: i32) {
    let end = Instant::now() + Duration::from_secs(5);
    while is_core(core) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_core(core) {
        eprintln!("warning: wprobe-core {core} outlived the service: SIGTERM, then SIGKILL");
        // SAFETY: a plain signal to the core the service started.
        unsafe { libc::kill(core, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while is_core(core) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_core(core) {
            // SAFETY: as above.
            unsafe { libc::kill(core, libc::SIGKILL) };
        }
    }
}

/// A `wprobe serve` of the binaries in [`bin_dir`], with its own
/// `wprobe-core`. On drop: SIGTERM (it lets its targets go and stops its
/// core), SIGKILL if it has not ended within 10 s, and then the core too
/// if it is somehow still there.
pub struct BenchService {
    server: Option<Server>,
    pub addr: String,
    pub token: String,
    /// The core it started.
    pub core: Option<i32>,
}

impl BenchService {
    pub fn start(dir: &Path, extra: &[&str]) -> BenchService {
        BenchService::try_start(dir, extra, false).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts it; what went wrong when it does not listen. With `append`,
    /// its stderr goes to the end of DIR.stderr rather than to a new file.
    pub fn try_start(dir: &Path, extra: &[&str], append: bool) -> Result<BenchService, String> {
        let server = Server::try_start_bin(&bin_dir().join("wprobe"), dir, extra, append)?;
        let pid = server.child.id() as i32;
        let core = children(pid).into_iter().find(|&c| is_core(c));
        if core.is_none() {
            eprintln!("warning: no wprobe-core among the service's children");
        }
        Ok(BenchService {
            addr: server.addr.clone(),
            token: server.token.clone(),
            server: Some(server),
            core,
        })
    }

    /// The service's pid.
    pub fn pid(&self) -> i32 {
        self.server.as_ref().map_or(0, |s| s.child.id() as i32)
    }

    /// A keep-alive connection to it.
    pub fn conn(&self) -> std::io::Result<Conn> {
        Conn::open(&self.addr, &self.token, Some(CONTROL_TIMEOUT))
    }

    /// A request on a connection of its own; the status and the body.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
        let mut c = self
            .conn()
            .unwrap_or_else(|e| panic!("connect to the service: {e}"));
        let body = body.map(|b| b.to_string());
        c.send(method, path, body.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A request that must succeed; its JSON.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, text) = self.request(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&text)
        );
        serde_json::from_slice(&text).unwrap_or(Value::Null)
    }

    pub fn call_status(&self, method: &str, path: &str, body: Option<&Value>, want: u16) {
        let (status, text) = self.request(method, path, body);
        assert_eq!(
            status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&text)
        );
    }

    /// Attaches to `pid`; the target's id.
    pub fn attach(&self, pid: i32) -> i64 {
        let t = self.call("POST", "/api/targets", Some(&json!({ "pid": pid })));
        t["id"].as_i64().unwrap_or_else(|| panic!("no id in {t}"))
    }

    /// The values of `names` in `/metrics` (without labels).
    pub fn metrics<const N: usize>(&self, names: [&str; N]) -> [f64; N] {
        let (status, text) = self.request("GET", "/metrics", None);
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, 200, "/metrics: {text}");
        let scrape = crate::prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        names.map(|name| {
            crate::prom::value(&scrape, name, &[])
                .unwrap_or_else(|| panic!("no {name} in /metrics"))
        })
    }

    /// Ends the service with SIGKILL, as a crash or the OOM killer would,
    /// and reaps it. Its core gets SIGTERM from the kernel (it asked for
    /// that when the service started it) and lets its targets go on its
    /// own; it is not waited for.
    pub fn kill(mut self) {
        if let Some(server) = self.server.take() {
            // Server's drop: SIGKILL and the wait.
            drop(server);
        }
        self.core = None;
    }
}

impl Drop for BenchService {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let pid = server.child.id() as i32;
            // SAFETY: a plain signal to our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Server's own drop: SIGKILL if still running, and the wait.
            drop(server);
        }
        if let Some(core) = self.core {
            end_orphan_core(core);
        }
    }
}

/// One keep-alive HTTP/1.1 connection: requests one after the other,
/// replies read by their Content-Length (or chunks).
pub struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    head: String,
}

impl Conn {
    pub fn open(addr: &str, token: &str, timeout: Option<Duration>) -> std::io::Result<Conn> {
        let w = TcpStream::connect(addr)?;
        w.set_nodelay(true)?;
        w.set_read_timeout(timeout)?;
        let r = BufReader::with_capacity(64 << 10, w.try_clone()?);
        Ok(Conn {
            w,
            r,
            head: format!(
                "Host: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: keep-alive\r\n"
            ),
        })
    }

    /// Sends one request with a JSON body (or none) and reads its reply:
    /// (status, body).
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        match body {
            Some(b) => self.send_bytes(method, path, "application/json", b.as_bytes()),
            None => {
                let req = format!("{method} {path} HTTP/1.1\r\n{}\r\n", self.head);
                self.w.write_all(req.as_bytes())?;
                self.read_reply()
            }
        }
    }

    /// Sends one request with a body of `content_type` and reads its reply.
    pub fn send_bytes(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n{}", self.head);
        let _ = write!(
            req,
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.w.write_all(&bytes)?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::{Error, ErrorKind};
        let bad = |what: String| Error::new(ErrorKind::InvalidData, what);
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed"));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(Error::new(ErrorKind::UnexpectedEof, "inside the headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    length = Some(v.parse().map_err(|_| bad(format!("bad length {v:?}")))?);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                let start = body.len();
                body.resize(start + size, 0);
                self.r.read_exact(&mut body[start..])?;
                line.clear();
                self.r.read_line(&mut line)?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.r.read_exact(&mut body)?;
        }
        Ok((status, body))
    }
}
