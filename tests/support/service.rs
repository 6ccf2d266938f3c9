//! A `wprobe serve` for tests: the real binary on 127.0.0.1:0 with a
//! scratch data directory, and a few lines of HTTP/1.1 over a `TcpStream`
//! rather than an HTTP crate, because the tests must send forged `Host`
//! headers and oversized bodies that a client library would correct or
//! refuse.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use crate::{scratch_dir, wprobe_bin};

/// A running `wprobe serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub token: String,
    /// Held open: processes the service spawns write to it.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_bin(&wprobe_bin(), dir, extra)
    }

    /// [`Server::start`] with these variables added to its environment.
    pub fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::try_start_with(&wprobe_bin(), "127.0.0.1:0", dir, extra, false, env)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Server::start`] of another `wprobe` binary (the benches measure
    /// release builds).
    pub fn start_bin(bin: &Path, dir: &Path, extra: &[&str]) -> Server {
        Server::try_start_bin(bin, dir, extra, false).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `bin serve`; the service's stderr, when it does not say where
    /// it listens. Its stderr goes to DIR.stderr, a new file, or with
    /// `append` the end of the one there (a service started again and
    /// again, in the soak).
    pub fn try_start_bin(
        bin: &Path,
        dir: &Path,
        extra: &[&str],
        append: bool,
    ) -> Result<Server, String> {
        Server::try_start_on(bin, "127.0.0.1:0", dir, extra, append)
    }

    /// [`Server::try_start_bin`] listening on `listen`.
    pub fn try_start_on(
        bin: &Path,
        listen: &str,
        dir: &Path,
        extra: &[&str],
        append: bool,
    ) -> Result<Server, String> {
        Server::try_start_with(bin, listen, dir, extra, append, &[])
    }

    /// [`Server::try_start_on`] with `env` added to the environment.
    pub fn try_start_with(
        bin: &Path,
        listen: &str,
        dir: &Path,
        extra: &[&str],
        append: bool,
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let log = dir.with_extension("stderr");
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).expect("the data directory's parent");
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log)
            .expect("a log for the service's stderr");
        let start = stderr.metadata().map_or(0, |m| m.len() as usize);
        let mut child = Command::new(bin)
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("start {} serve: {e}", bin.display()))?;
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let _ = stdout.read_line(&mut line);
        // http://127.0.0.1:PORT/#token=TOKEN
        let Some((addr, token)) = line
            .trim()
            .strip_prefix("http://")
            .and_then(|rest| rest.split_once("/#token="))
        else {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read(&log).unwrap_or_default();
            let err = String::from_utf8_lossy(err.get(start..).unwrap_or_default());
            return Err(format!("no URL in {line:?}; the service's stderr:\n{err}"));
        };
        Ok(Server {
            addr: addr.to_string(),
            token: token.to_string(),
            child,
            _stdout: stdout,
        })
    }

    /// A request with the token and the right Host, unless `headers` give
    /// others.
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let auth = format!("Bearer {}", self.token);
        self.raw(method, path, &[("Authorization", &auth)], body)
    }

    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        request(&self.addr, method, path, headers, body)
    }

    pub fn plugins(&self) -> Vec<Value> {
        let r = self.call("GET", "/api/plugins", b"");
        assert_eq!(r.status, 200, "{}", r.text);
        r.json.as_array().expect("a list").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: u16,
    pub text: String,
    pub json: Value,
}

pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    request_within(addr, method, path, headers, body, None)
}

/// [`request`], with a bound on each read: a reply that never ends (an
/// event stream answered where a refusal was due) fails the test instead
/// of hanging it.
pub fn request_within(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    read_timeout: Option<std::time::Duration>,
) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(read_timeout)
        .expect("set the read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head += &format!("Host: {addr}\r\n");
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send the head");
    // A refused body may be cut off by the server: what counts is the reply.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply to {method} {path}: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    Reply {
        status,
        text: body.to_string(),
        json,
    }
}

/// A fresh data directory for one test.
pub fn data_dir(tag: &str) -> PathBuf {
    let dir = scratch_dir().join(format!("serve-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The `gated` fixture (tests/fixtures/gated.c): one round of `work` calls
/// per `round()`, so that a probe sees an exact number of calls.
pub struct Gated {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    n: u64,
}

impl Gated {
    /// Starts `gated N` (with `spin`, a thread also calls `work` without
    /// end) and waits for its "ready".
    pub fn start(bin: &Path, n: u64, spin: bool) -> Gated {
        let mut cmd = Command::new(bin);
        cmd.arg(n.to_string());
        if spin {
            cmd.arg("spin");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start gated");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready");
        assert_eq!(line, "ready\n");
        Gated {
            child,
            stdin: Some(stdin),
            stdout,
            n,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs a round; checks its sum (the program computed what it should).
    pub fn round(&mut self) {
        writeln!(self.stdin.as_mut().expect("open"), "go").expect("start a round");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("round done");
        let sum: u64 = (0..self.n).map(|i| i * 3 + 1).sum();
        assert!(line.ends_with(&format!(" sum={sum}\n")), "{line:?}");
    }

    /// Ends its input: it exits.
    pub fn end(&mut self) {
        self.stdin.take();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{status}");
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
