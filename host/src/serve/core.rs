//! The service's wprobe-core: one it starts itself, listening on a socket
//! in the data directory, or one already running (`--core SOCKET`). Every
//! target gets a connection of its own, because a connection's probes
//! apply to every process it traces: one connection per target keeps a
//! probe on target A out of target B, and lets the core's per-connection
//! engine threads run targets in parallel.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wprobe_core::proto::client::Client;

/// Where the service's connections go.
pub struct CoreLink {
    socket: PathBuf,
    /// The core's pid (from its Welcome, or the child's), to tell its
    /// threads among a target's tracers.
    pub core_pid: u32,
    /// The core this service started; `None` for `--core SOCKET`.
    child: Mutex<Option<Child>>,
}

impl CoreLink {
    /// Uses the core listening on `socket`.
    pub fn external(socket: &Path) -> Result<CoreLink, String> {
        let mut link = CoreLink {
            socket: socket.to_path_buf(),
            core_pid: 0,
            child: Mutex::new(None),
        };
        // Fail at start-up, not at the first attach.
        link.core_pid = link.connect("wprobe serve (check)")?.core_pid;
        Ok(link)
    }

    /// Starts `core` listening on `socket` (same-user mode, 0600). The core
    /// gets SIGTERM when the service dies however it dies, and then lets
    /// every target go with its bytes restored.
    pub fn start(core: &Path, socket: &Path) -> Result<CoreLink, String> {
        // A core of an earlier service may still be letting its targets go
        // (it got SIGTERM when that service died): give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while socket.exists() {
            if !listens(socket) {
                // Left by a core that is gone: nobody listens any more.
                std::fs::remove_file(socket)
                    .map_err(|e| format!("removing the stale socket {}: {e}", socket.display()))?;
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "a wprobe-core already listens on {}: is another `wprobe serve` using \
                     this data directory? Stop it, or give --core {} to share its core",
                    socket.display(),
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut cmd = Command::new(core);
        cmd.arg("--socket").arg(socket);
        // SAFETY: prctl is async-signal-safe and touches only this child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting wprobe-core ({}): {e}", core.display()))?;
        // Until it listens: the socket's file appears only once the core
        // accepts connections (`sockpath::listen`), and a core that cannot
        // start says so by ending.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listens(socket) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "wprobe-core ({}) ended at start: {status}",
                    core.display()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "wprobe-core ({}) did not listen on {} within 10 s",
                    core.display(),
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(CoreLink {
            socket: socket.to_path_buf(),
            core_pid: child.id(),
            child: Mutex::new(Some(child)),
        })
    }

    /// A new connection.
    pub fn connect(&self, name: &str) -> Result<Client, String> {
        Client::connect(&self.socket, name).map_err(|e| format!("wprobe-core: {e}"))
    }

    /// Stops the core this service started: SIGTERM, on which it lets
    /// every target go, restored.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            // SAFETY: a plain signal to our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for CoreLink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether something listens on `socket`: a connection is accepted (into
/// its backlog; it is closed at once, which a core takes for a client that
/// changed its mind).
fn listens(socket: &Path) -> bool {
    wprobe_core::proto::sockpath::short(socket)
        .and_then(|short| std::os::unix::net::UnixStream::connect(short.path()))
        .is_ok()
}

/// An eventfd that wakes a target's thread from its poll when a command
/// is queued for it.
pub struct Wake(OwnedFd);

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. A full counter (never,
        // in practice) still leaves the fd readable, which is all we need.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears the counter.
    pub fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; nonblocking.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }

    /// Waits until `sock` is readable or the wake rang, at most `timeout`.
    pub fn wait(&self, sock: &impl AsRawFd, timeout: Duration) {
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis() as i32) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `start` returns once the core listens, not once its socket's file
    /// exists: a core that binds and listens a second later (a real one
    /// does both within microseconds, but may be descheduled between
    /// them) is not reachable before. The stand-in is a Python script.
    #[test]
    fn start_waits_until_the_core_listens() {
        let dir = std::env::temp_dir().join(format!("wprobe-corelink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let core = dir.join("slow-core");
        std::fs::write(
            &core,
            "#!/usr/bin/env python3\n\
             import socket, sys, time\n\
             path = sys.argv[sys.argv.index('--socket') + 1]\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
             s.bind(path)\n\
             time.sleep(1)\n\
             s.listen(16)\n\
             time.sleep(60)\n",
        )
        .expect("write the stand-in core");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&core, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
        let socket = dir.join("core.sock");
        let link = CoreLink::start(&core, &socket).expect("the stand-in core starts");
        let reached = std::os::unix::net::UnixStream::connect(&socket);
        drop(link);
        let _ = std::fs::remove_dir_all(&dir);
        reached.expect("the core listens once start returns");
    }
}
