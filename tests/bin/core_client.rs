//! A wprobe-core client for the tests, as a process of its own so that a
//! test can kill it or run it as another user: `core-client SOCKET`, then
//! one command per line on stdin, one answer per line on stdout:
//!
//! - `attach PID`, `detach PID`, `spawn ARG...`, `resume PID`
//! - `spawn_here ARG...`: spawn with this process's environment and
//!   descriptors 0–2 passed over the socket
//! - `follow`: follow exec (and fork) from now on
//! - `probe SPEC` (async), `list`, `ping`
//! - `events N`: wait until N events have arrived in all
//!
//! Answers are JSON: `{"ok": BODY}` or `{"error": KIND, "message": ...}`;
//! `list` gives `[{"id", "hits", "owner_uid", "pids"}...]`.

use std::io::{BufRead, Write};

use serde_json::{json, Value};
use wprobe_core::proto::{Body, Client, ClientError, Frame, Mode, Op, ProbeOptions, SpawnStdio};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let connected = match args.as_slice() {
        [_, socket] => Client::connect(socket.as_ref(), "core-client"),
        [_, socket, flag, program, rest @ ..] if flag == "--connect-in-child-then" => {
            connect_in_child_then(socket, program, rest)
        }
        _ => {
            eprintln!(
                "usage: core-client SOCKET [--connect-in-child-then PROGRAM ARG...]  \
                 (commands on stdin)"
            );
            std::process::exit(2);
        }
    };
    let mut client = match connected {
        Ok(c) => c,
        Err(e) => {
            println!("{}", json!({"error": "connect", "message": e.to_string()}));
            std::process::exit(1);
        }
    };
    let mut events = 0usize;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let pid = |i: usize| words.get(i).and_then(|w| w.parse().ok()).unwrap_or(-1);
        let op = match words.first().copied() {
            Some("attach") => Op::Attach { pid: pid(1) },
            Some("detach") => Op::Detach { pid: pid(1) },
            Some("resume") => Op::Resume { pid: pid(1) },
            Some("spawn") => Op::Spawn {
                argv: words[1..].iter().map(|s| s.to_string()).collect(),
                env: None,
                stdio: SpawnStdio::Inherit,
            },
            Some("follow") => Op::Configure {
                follow_fork: true,
                follow_exec: true,
                no_optimize: false,
            },
            Some("no-optimize") => Op::Configure {
                follow_fork: false,
                follow_exec: false,
                no_optimize: true,
            },
            Some("spawn_here") => {
                let argv = words[1..].iter().map(|s| s.to_string()).collect();
                println!("{}", answer(client.spawn_here(argv)));
                std::io::stdout().flush().expect("stdout");
                continue;
            }
            Some("probe") => Op::AddProbe {
                spec: line["probe".len()..].trim().to_string(),
                options: ProbeOptions {
                    mode: Mode::Async,
                    allow_mutation: false,
                    sync_deadline_us: 0,
                    no_optimize: false,
                },
            },
            Some("list") => Op::ListProbes,
            Some("ping") => Op::Ping,
            Some("events") => {
                let want: usize = words.get(1).and_then(|w| w.parse().ok()).unwrap_or(1);
                while events < want {
                    match client.next(None) {
                        Ok(Some(Frame::Events(b))) => events += b.len(),
                        Ok(_) => {}
                        Err(e) => {
                            println!("{}", json!({"error": "closed", "message": e.to_string()}));
                            std::process::exit(1);
                        }
                    }
                }
                println!("{}", json!({ "ok": events }));
                std::io::stdout().flush().expect("stdout");
                continue;
            }
            _ => {
                println!("{}", json!({"error": "usage", "message": line}));
                continue;
            }
        };
        println!("{}", answer(client.call(op)));
        std::io::stdout().flush().expect("stdout");
    }
}

/// The socket shared with a child that connects it and then runs
/// `program` (its stdout to /dev/null), keeping the socket open: the core
/// sees the child as the peer. Says `{"connected": CHILD}` once the child
/// connected, then speaks over the socket itself.
fn connect_in_child_then(
    socket: &str,
    program: &str,
    args: &[String],
) -> Result<Client, ClientError> {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let short = wprobe_core::proto::sockpath::short(socket.as_ref())?;
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr
        .sun_path
        .iter_mut()
        .zip(short.path().as_os_str().as_bytes())
    {
        *d = *s as libc::c_char;
    }
    let argv: Vec<CString> = std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(|a| CString::new(a).expect("no NUL"))
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let devnull = CString::new("/dev/null").expect("no NUL");
    // SAFETY: plain system calls; between fork and exec the child runs
    // only async-signal-safe ones on memory prepared before the fork.
    unsafe {
        // Not close-on-exec: the child's program keeps it.
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        let mut pipe = [0; 2];
        if fd < 0 || libc::pipe(pipe.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let child = libc::fork();
        if child == 0 {
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(1);
            }
            libc::write(pipe[1], b"c".as_ptr().cast(), 1);
            let null = libc::open(devnull.as_ptr(), libc::O_WRONLY);
            libc::dup2(null, 1);
            libc::execv(argv_ptrs[0], argv_ptrs.as_ptr());
            libc::_exit(127);
        }
        libc::close(pipe[1]);
        let mut b = [0u8; 1];
        if child < 0 || libc::read(pipe[0], b.as_mut_ptr().cast(), 1) != 1 {
            return Err(std::io::Error::other("the child did not connect").into());
        }
        println!("{}", json!({ "connected": child }));
        std::io::stdout().flush().expect("stdout");
        Client::over(
            std::os::unix::net::UnixStream::from_raw_fd(fd),
            "core-client",
        )
    }
}

/// A reply as a JSON line; a closed connection ends this client.
fn answer(reply: Result<Body, ClientError>) -> Value {
    match reply {
        Ok(body) => json!({ "ok": body_json(body) }),
        Err(ClientError::Core { kind, message }) => {
            json!({"error": format!("{kind:?}"), "message": message})
        }
        Err(e) => {
            println!("{}", json!({"error": "closed", "message": e.to_string()}));
            std::process::exit(1);
        }
    }
}

fn body_json(body: Body) -> Value {
    match body {
        Body::Empty => Value::Null,
        Body::Target { pid } => json!(pid),
        Body::Probe { id } => json!(id),
        Body::Probes(list) => list
            .iter()
            .map(|p| {
                json!({
                    "id": p.id,
                    "hits": p.hits,
                    "owner_uid": p.owner_uid,
                    "pids": p.placements.iter().map(|pl| pl.pid).collect::<Vec<_>>(),
                })
            })
            .collect(),
        Body::Stats(s) => json!({ "sent": s.events_sent, "dropped": s.events_dropped }),
    }
}
