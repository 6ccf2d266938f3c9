//! `wprobe-core`: the privileged half of wprobe (docs/core-protocol.md).
//!
//! - `wprobe-core --fd N`: same-user mode. A client started the core and
//!   passed it descriptor N, one end of a connected Unix socket pair; the
//!   core serves that connection and exits when it ends.
//! - `wprobe-core --socket PATH`: serve clients of this user on a socket
//!   created mode 0600, until SIGTERM/SIGINT.
//! - `wprobe-core --system --socket PATH`: as root, serve clients of every
//!   user (socket mode 0666); each may only touch what its own user could
//!   trace.
//!
//! Whenever a client goes away, and on SIGTERM/SIGINT, every probe of that
//! client is disarmed and its targets let go, untouched.

use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;

use wprobe_core::daemon::{self, Config};

const USAGE: &str = "usage: wprobe-core (--fd N | --socket PATH [--system]) [--queue EVENTS] \
                     [--max-connections N] [--max-connections-per-uid N] \
                     [--client-timeout SECONDS]";

fn fail(msg: String) -> ! {
    eprintln!("wprobe-core: {msg}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut fd = None;
    let mut socket = None;
    let mut config = Config::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| fail(format!("{a} needs a value\n{USAGE}")))
        };
        match a.as_str() {
            "--fd" => {
                let v = value();
                fd = Some(
                    v.parse::<i32>()
                        .ok()
                        .filter(|&n| n >= 0)
                        .unwrap_or_else(|| {
                            fail(format!("--fd `{v}` must be an open descriptor number"))
                        }),
                );
            }
            "--socket" => socket = Some(value()),
            "--system" => config.system = true,
            "--queue" => {
                let q = value();
                config.queue = q
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| {
                        fail(format!("--queue `{q}` must be a positive number of events"))
                    });
            }
            "--max-connections" | "--max-connections-per-uid" => {
                let v = value();
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| {
                        fail(format!(
                            "{a} `{v}` must be a positive number of connections"
                        ))
                    });
                if a == "--max-connections" {
                    config.max_connections = n;
                } else {
                    config.max_connections_per_uid = n;
                }
            }
            "--client-timeout" => {
                let v = value();
                let secs = v.parse::<u64>().ok().filter(|&n| n > 0).unwrap_or_else(|| {
                    fail(format!(
                        "--client-timeout `{v}` must be a positive number of seconds"
                    ))
                });
                config.client_timeout = std::time::Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => fail(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let r = match (fd, socket) {
        (Some(fd), None) if !config.system => {
            // SAFETY: the caller handed us this descriptor to own; fstat
            // below checks it is a socket before anything else uses it.
            let stream = unsafe { UnixStream::from_raw_fd(fd) };
            if stream.peer_addr().is_err() {
                fail(format!("--fd {fd} is not a connected Unix socket"));
            }
            daemon::serve_one(stream, config)
        }
        (None, Some(path)) => listen(&path, config),
        _ => fail(USAGE.into()),
    };
    if let Err(e) = r {
        eprintln!("wprobe-core: {e}");
        std::process::exit(1);
    }
}

fn listen(path: &str, config: Config) -> std::io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if config.system && unsafe { libc::geteuid() } != 0 {
        fail("--system needs root: the core traces other users' processes for them".into());
    }
    if std::path::Path::new(path).exists() {
        fail(format!(
            "{path} already exists; remove it or choose another path"
        ));
    }
    // Same-user mode: only this user may connect. System mode: anyone,
    // each checked with SO_PEERCRED.
    let mode = if config.system { 0o666 } else { 0o600 };
    let listener = wprobe_core::proto::sockpath::listen(std::path::Path::new(path), mode)
        .unwrap_or_else(|e| fail(format!("cannot listen on {path}: {e}")));
    // The file this core made, to remove it and no other at the end: by
    // then a new core may listen on the same path (a restarted service
    // starts one once this one stops listening), and removing its socket
    // would leave it unreachable.
    let ours = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let r = daemon::serve(listener, config);
    drop_socket_file(path, ours);
    r
}

/// Removes `path` if it is still the file `ours` (device, inode).
fn drop_socket_file(path: &str, ours: Option<(u64, u64)>) {
    let now = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    if now.is_some() && now == ours {
        let _ = std::fs::remove_file(path);
    }
}
