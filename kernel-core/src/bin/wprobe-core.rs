//! `wprobe-core --socket PATH [--queue N]`: the privileged half of wprobe.
//!
//! It listens on a Unix socket (created mode 0600, so only its own user can
//! connect), serves one client with the protocol of docs/core-protocol.md,
//! and when the client goes away or SIGTERM/SIGINT arrives, disarms and
//! detaches every target before it exits.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let usage = || -> ! {
        eprintln!("usage: wprobe-core --socket PATH [--queue EVENTS]");
        std::process::exit(2);
    };
    let Some(path) = value("--socket") else {
        usage()
    };
    let queue = match value("--queue") {
        None => wprobe_core::daemon::EVENT_QUEUE,
        Some(q) => match q.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("wprobe-core: --queue `{q}` must be a positive number of events");
                std::process::exit(2);
            }
        },
    };
    if std::path::Path::new(&path).exists() {
        eprintln!("wprobe-core: {path} already exists; remove it or choose another path");
        std::process::exit(2);
    }
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wprobe-core: cannot listen on {path}: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        eprintln!("wprobe-core: cannot restrict {path} to its owner: {e}");
        let _ = std::fs::remove_file(&path);
        std::process::exit(2);
    }
    let r = wprobe_core::daemon::serve(listener, queue);
    let _ = std::fs::remove_file(&path);
    if let Err(e) = r {
        eprintln!("wprobe-core: {e}");
        std::process::exit(1);
    }
}
