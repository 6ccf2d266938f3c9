//! A client of `wprobe-core`: the handshake, requests matched with their
//! replies, and the frames that arrive meanwhile. `wprobe trace` and the
//! host service are built on it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{
    write_frame, Action, Body, ErrorKind, Frame, FrameReader, Hello, Op, ProtoError, Request,
    PROTOCOL_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad frame from wprobe-core: {0}")]
    Proto(#[from] ProtoError),
    #[error("wprobe-core refused the connection: {0}")]
    Incompatible(String),
    /// The core answered the request with an error.
    #[error("{message}")]
    Core { kind: ErrorKind, message: String },
    #[error("wprobe-core closed the connection")]
    Closed,
    #[error("wprobe-core sent {0} where a Welcome was expected")]
    Unexpected(&'static str),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// One connection to a core.
pub struct Client {
    stream: UnixStream,
    reader: FrameReader,
    next_id: u32,
    /// Frames read while waiting for a reply, to be handed out by `next`.
    backlog: VecDeque<Frame>,
    /// The core's pid, from its Welcome.
    pub core_pid: u32,
    /// A core this client started (same-user mode).
    child: Option<Child>,
}

impl Client {
    /// Connects to a core listening on `path`.
    pub fn connect(path: &Path, name: &str) -> Result<Client> {
        let stream = super::sockpath::short(path)
            .and_then(|short| UnixStream::connect(short.path()))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot connect to wprobe-core at {}: {e}", path.display()),
                )
            })?;
        Self::handshake(stream, name, None)
    }

    /// Speaks to a core over `stream`, already connected (by this process
    /// or another that shares the socket).
    pub fn over(stream: UnixStream, name: &str) -> Result<Client> {
        Self::handshake(stream, name, None)
    }

    /// Starts `core` (the `wprobe-core` binary) in same-user mode with one
    /// end of a socket pair, and connects over the other.
    pub fn start_core(core: &Path, name: &str) -> Result<Client> {
        let (ours, theirs) = UnixStream::pair()?;
        let fd: OwnedFd = theirs.into();
        let raw = fd.as_raw_fd();
        let mut cmd = Command::new(core);
        cmd.args(["--fd", "3"]);
        // SAFETY: between fork and exec only dup2/fcntl run, both
        // async-signal-safe, on a descriptor that stays open until spawn
        // returns.
        unsafe {
            cmd.pre_exec(move || {
                if raw == 3 {
                    // dup2 onto itself would keep close-on-exec.
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start wprobe-core ({}): {e}", core.display()),
            )
        })?;
        drop(fd);
        Self::handshake(ours, name, Some(child))
    }

    fn handshake(stream: UnixStream, name: &str, child: Option<Child>) -> Result<Client> {
        let mut c = Client {
            stream,
            reader: FrameReader::new(),
            next_id: 1,
            backlog: VecDeque::new(),
            core_pid: 0,
            child,
        };
        let sent = write_frame(
            &mut c.stream,
            &Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                client: name.into(),
            }),
        );
        // A core that refuses a connection (too many) answers at once and
        // closes, which can break the Hello's write: its answer says why.
        let timeout = sent.is_err().then_some(Duration::from_secs(1));
        let answer = match (c.read(timeout), sent) {
            (Ok(Some(f)), _) => Some(f),
            (_, Err(e)) => return Err(e.into()),
            (r, Ok(())) => r?,
        };
        match answer {
            Some(Frame::Welcome(w)) => {
                if w.version != PROTOCOL_VERSION {
                    return Err(ClientError::Incompatible(format!(
                        "it speaks version {}, this client {PROTOCOL_VERSION}",
                        w.version
                    )));
                }
                c.core_pid = w.core_pid;
                Ok(c)
            }
            Some(Frame::Incompatible(i)) => Err(ClientError::Incompatible(i.message)),
            Some(Frame::Error { message, .. }) => Err(ClientError::Incompatible(message)),
            Some(f) => Err(ClientError::Unexpected(f.name())),
            None => Err(ClientError::Closed),
        }
    }

    /// Reads one frame from the socket; `None` when `timeout` passed.
    fn read(&mut self, timeout: Option<Duration>) -> Result<Option<Frame>> {
        self.stream.set_read_timeout(timeout)?;
        loop {
            if let Some(f) = self.reader.next_frame()? {
                return Ok(Some(f));
            }
            match self.reader.read_from(&mut self.stream) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a request without waiting for its reply; returns its id.
    pub fn send(&mut self, op: Op) -> Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        write_frame(&mut self.stream, &Frame::Request(Request { id, op }))?;
        Ok(id)
    }

    /// Sends a request and waits for its reply; frames that come first are
    /// kept for [`Client::next`].
    pub fn call(&mut self, op: Op) -> Result<Body> {
        let id = self.send(op)?;
        self.reply(id, None)
    }

    /// As [`call`](Self::call), waiting `timeout` at most for the reply;
    /// then an `Io` error of kind `TimedOut` (the reply, should it come
    /// later, is kept for [`Client::next`] like any other frame).
    pub fn call_within(&mut self, op: Op, timeout: Duration) -> Result<Body> {
        let id = self.send(op)?;
        self.reply(id, Some(Instant::now() + timeout))
    }

    /// Starts `argv` under the core as a shell would start it from this
    /// process: with this process's environment and its descriptors 0, 1
    /// and 2, sent over the socket (so it works the same with a core of
    /// this user and with a system core, which gives a program nothing of
    /// its own). The reply is [`Body::Target`]; the program waits for
    /// `Resume`. A descriptor this process has closed is /dev/null there.
    pub fn spawn_here(&mut self, argv: Vec<String>) -> Result<Body> {
        use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
        // Variables that are not UTF-8 cannot travel in the protocol's
        // strings; they are left out.
        let env: Vec<String> = std::env::vars_os()
            .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v.to_str()?)))
            .collect();
        let null: Vec<OwnedFd> = (0..3)
            .filter_map(|_| {
                std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .ok()
            })
            .map(OwnedFd::from)
            .collect();
        let fds: Vec<BorrowedFd<'_>> = (0..3)
            .map(|fd| {
                // SAFETY: F_GETFD only asks whether the descriptor is open.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
                    // SAFETY: descriptors 0–2 are open (checked) and stay
                    // open while this call borrows them.
                    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
                } else {
                    null.get(fd as usize)
                        .map(|f| f.as_fd())
                        .ok_or_else(|| io::Error::other("cannot open /dev/null"))
                }
            })
            .collect::<io::Result<_>>()?;
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let op = Op::Spawn {
            argv,
            env: Some(env),
            stdio: super::SpawnStdio::Passed,
        };
        let bytes = super::encode(&Frame::Request(Request { id, op }));
        let len = (bytes.len() - super::HEADER_LEN) as u64;
        if len > u64::from(super::MAX_FRAME) {
            return Err(ProtoError::Oversize {
                len,
                max: super::MAX_FRAME,
            }
            .into());
        }
        super::scm::send_with_fds(&self.stream, &bytes, &fds)?;
        self.reply(id, None)
    }

    /// Waits for the reply to request `id`, until `deadline` if one is
    /// given; frames that come first are kept for [`Client::next`].
    fn reply(&mut self, id: u32, deadline: Option<Instant>) -> Result<Body> {
        loop {
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ClientError::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "wprobe-core did not answer in time",
                        )));
                    }
                    Some(left)
                }
            };
            match self.read(timeout)? {
                Some(Frame::Ok { id: i, body }) if i == id => return Ok(body),
                Some(Frame::Error {
                    id: i,
                    kind,
                    message,
                }) if i == id || (i == 0 && kind == ErrorKind::BadRequest) => {
                    return Err(ClientError::Core { kind, message })
                }
                Some(f) => self.backlog.push_back(f),
                None => {}
            }
        }
    }

    /// Answers a sync event.
    pub fn verdict(&mut self, seq: u64, action: Action) -> Result<()> {
        write_frame(&mut self.stream, &Frame::Verdict { seq, action })?;
        Ok(())
    }

    /// The next frame that is not a reply to [`Client::call`]: events,
    /// losses, notices, errors about no request. `Ok(None)` when `timeout`
    /// passed first (or a signal interrupted the wait); `Err(Closed)` at
    /// the end of the connection.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Frame>> {
        if let Some(f) = self.backlog.pop_front() {
            return Ok(Some(f));
        }
        self.read(timeout)
    }

    /// [`Client::next`] without waiting: a frame already received, or one
    /// whose bytes are on the socket now; `Ok(None)` at once otherwise
    /// (also when only part of a frame is there yet).
    ///
    /// For a loop that also waits for something else (`poll` on
    /// [`Client::stream`] and its own wake-up): `next` with a timeout
    /// would hold it in the socket's read for that timeout, which the
    /// kernel counts in scheduler ticks, so that even 1 ms can be 8 ms
    /// (HZ=250).
    pub fn try_next(&mut self) -> Result<Option<Frame>> {
        if let Some(f) = self.backlog.pop_front() {
            return Ok(Some(f));
        }
        loop {
            if let Some(f) = self.reader.next_frame()? {
                return Ok(Some(f));
            }
            let mut pfd = libc::pollfd {
                fd: self.stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a timeout of 0 never blocks.
            if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
                return Ok(None);
            }
            // Readable: the read returns at once, with bytes or at the end.
            match self.reader.read_from(&mut self.stream) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Tells the core this client is done: it disarms, detaches, sends
    /// what it still has, and closes.
    pub fn finish(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    /// The socket, for a second reader or `poll`.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Waits for a core this client started to exit.
    pub fn wait_core(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.wait().ok())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A core started by this client ends with the connection; reap it.
        if let Some(mut c) = self.child.take() {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{encode, read_frame, Notice, Welcome, MAX_FRAME};
    use std::io::Write;
    use std::sync::mpsc;

    /// A client on one end of a socket pair, handshake done; the core's
    /// end is the other.
    fn pair() -> (Client, UnixStream) {
        let (ours, mut core) = UnixStream::pair().expect("a socket pair");
        let welcome = Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            core_pid: 1,
            max_frame: MAX_FRAME,
        });
        write_frame(&mut core, &welcome).expect("send the welcome");
        let client = Client::handshake(ours, "test", None).expect("the handshake");
        let hello = read_frame(&mut core).expect("the client's hello");
        assert!(matches!(hello, Some(Frame::Hello(_))), "{hello:?}");
        (client, core)
    }

    /// What `client.try_next()` gives; a call that waits for the socket
    /// fails the test (after 30 s: a correct one answers at once).
    fn try_next(client: Client) -> (Client, String) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut client = client;
            let got = match client.try_next() {
                Ok(Some(f)) => f.name().to_string(),
                Ok(None) => "none".to_string(),
                Err(e) => format!("error: {e}"),
            };
            let _ = tx.send((client, got));
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("try_next waited for the socket instead of answering at once")
    }

    #[test]
    fn try_next_takes_what_is_there_and_never_waits() {
        let (client, mut core) = pair();
        let (client, got) = try_next(client);
        assert_eq!(got, "none", "nothing sent yet");

        let idle = encode(&Frame::Notice(Notice::Idle));
        core.write_all(&idle).expect("send");
        core.write_all(&idle).expect("send");
        let (client, first) = try_next(client);
        let (client, second) = try_next(client);
        let (client, third) = try_next(client);
        assert_eq!([first, second, third], ["Notice", "Notice", "none"]);

        // Half a frame is not a frame yet; the rest makes it one.
        core.write_all(&idle[..3]).expect("send");
        let (client, got) = try_next(client);
        assert_eq!(got, "none", "half a frame");
        core.write_all(&idle[3..]).expect("send");
        let (client, got) = try_next(client);
        assert_eq!(got, "Notice", "the frame completed");

        drop(core);
        let (_, got) = try_next(client);
        assert_eq!(got, "error: wprobe-core closed the connection");
    }
}
