//! The service's side of the core: one thread owns the blocking
//! [`Client`]; handlers send it [`Command`]s and await the answer on a
//! oneshot. Between commands the thread reads the core's frames and applies
//! the notices (a target that exits is marked so in the store). Also the
//! list of processes that can be attached, from /proc.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde::Serialize;
use tokio::sync::oneshot;
use utoipa::ToSchema;
use wprobe_core::proto::client::{Client, ClientError};
use wprobe_core::proto::{Body, ErrorKind, ExitStatus, Frame, Notice, Op};

use super::error::ApiError;
use super::store::{Store, Target, TargetExit};

/// What a handler asks of the core's thread.
pub enum Command {
    Attach(i32, oneshot::Sender<Result<Target, ApiError>>),
    /// Spawn, then let it run at once.
    Spawn(Vec<String>, oneshot::Sender<Result<Target, ApiError>>),
    /// Let a target go (its row is removed); `Ok(false)` for an unknown id.
    Remove(i64, oneshot::Sender<Result<bool, ApiError>>),
}

/// The handle handlers use.
#[derive(Clone)]
pub struct Core {
    tx: mpsc::Sender<Command>,
}

impl Core {
    /// Starts the thread that owns `client`.
    pub fn start(client: Client, store: Arc<Mutex<Store>>) -> Core {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("wprobe-core client".into())
            .spawn(move || run(client, store, rx))
            .expect("start the core thread");
        Core { tx }
    }

    /// Sends a command made with a fresh oneshot and awaits its answer.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command,
    ) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| core_gone())?;
        answer.await.map_err(|_| core_gone())?
    }
}

fn core_gone() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the connection to wprobe-core is closed",
    )
}

/// The `wprobe-core` binary: $WPROBE_CORE, else the one beside this
/// executable, else from PATH (as `wprobe trace` finds it).
pub fn core_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WPROBE_CORE") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("wprobe-core"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "wprobe-core".into())
}

struct Thread {
    client: Client,
    store: Arc<Mutex<Store>>,
    closed: bool,
}

fn run(client: Client, store: Arc<Mutex<Store>>, rx: mpsc::Receiver<Command>) {
    let mut t = Thread {
        client,
        store,
        closed: false,
    };
    loop {
        loop {
            match rx.try_recv() {
                Ok(cmd) => t.command(cmd),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if t.closed {
            match rx.recv() {
                Ok(cmd) => t.command(cmd),
                Err(_) => return,
            }
            continue;
        }
        match t.client.next(Some(Duration::from_millis(20))) {
            Ok(Some(frame)) => t.frame(frame),
            Ok(None) => {}
            Err(e) => {
                eprintln!("wprobe serve: wprobe-core: {e}");
                t.closed = true;
            }
        }
    }
}

impl Thread {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn frame(&mut self, frame: Frame) {
        if let Frame::Notice(Notice::Exited { pid, status }) = frame {
            let exit = match status {
                ExitStatus::Code(c) => TargetExit {
                    code: Some(c),
                    signal: None,
                },
                ExitStatus::Signal(s) => TargetExit {
                    code: None,
                    signal: Some(s),
                },
            };
            if let Err(e) = self.store().target_exited(pid, exit) {
                eprintln!("wprobe serve: recording the exit of pid {pid}: {e}");
            }
        }
    }

    fn call(&mut self, op: Op) -> Result<Body, ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        let r = self.client.call(op);
        if matches!(r, Err(ClientError::Closed | ClientError::Io(_))) {
            self.closed = true;
        }
        r
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Attach(pid, reply) => {
                let _ = reply.send(self.attach(pid));
            }
            Command::Spawn(argv, reply) => {
                let _ = reply.send(self.spawn(argv));
            }
            Command::Remove(id, reply) => {
                let _ = reply.send(self.remove(id));
            }
        }
    }

    fn attach(&mut self, pid: i32) -> Result<Target, ApiError> {
        if self.store().running_target(pid)?.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("pid {pid} is already a target"),
            ));
        }
        let Some(start_time) = start_time(pid) else {
            return Err(ApiError::not_found(format!("no process with pid {pid}")));
        };
        let cmdline = cmdline(pid).unwrap_or_default();
        match self.call(Op::Attach { pid }) {
            Ok(Body::Target { .. }) => {}
            Ok(other) => return Err(ApiError::internal(format!("wprobe-core: {other:?}"))),
            Err(e) => return Err(core_error(e, &format!("attaching to pid {pid}"))),
        }
        Ok(self
            .store()
            .add_target(pid, start_time, &cmdline, "attached")?)
    }

    fn spawn(&mut self, argv: Vec<String>) -> Result<Target, ApiError> {
        let what = format!("spawning {argv:?}");
        let pid = match self.call(Op::Spawn { argv: argv.clone() }) {
            Ok(Body::Target { pid }) => pid,
            Ok(other) => return Err(ApiError::internal(format!("wprobe-core: {other:?}"))),
            Err(e) => return Err(core_error(e, &what)),
        };
        let start_time = start_time(pid).unwrap_or(0);
        // Stored before it runs, so that its exit finds the row.
        let target = self
            .store()
            .add_target(pid, start_time, &argv.join(" "), "spawned")?;
        if let Err(e) = self.call(Op::Resume { pid }) {
            return Err(core_error(e, &format!("resuming pid {pid}")));
        }
        Ok(target)
    }

    fn remove(&mut self, id: i64) -> Result<bool, ApiError> {
        let Some(target) = self.store().target(id)? else {
            return Ok(false);
        };
        if target.state == "running" {
            match self.call(Op::Detach { pid: target.pid }) {
                // Gone meanwhile: its Exited notice is on its way.
                Ok(_)
                | Err(ClientError::Core {
                    kind: ErrorKind::NoTarget,
                    ..
                }) => {}
                Err(e) => return Err(core_error(e, &format!("detaching from pid {}", target.pid))),
            }
        }
        Ok(self.store().delete_target(id)?)
    }
}

/// A failed call as the answer to a route: what the core said about the
/// process is 422, a lost core 503.
fn core_error(e: ClientError, what: &str) -> ApiError {
    match e {
        ClientError::Core { message, .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what}: {message}"),
        ),
        ClientError::Closed | ClientError::Io(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what}: wprobe-core: {e}"),
        ),
        e => ApiError::internal(format!("{what}: wprobe-core: {e}")),
    }
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks
/// since boot. `None` when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // from the last ')', which is field 2's end; field 3 follows it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// /proc/PID/cmdline with its arguments separated by spaces; `None` when
/// it is empty (a kernel thread) or unreadable.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// A process that could be attached.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Process {
    pub pid: i32,
    /// The command line, its arguments separated by spaces.
    pub cmdline: String,
    /// The real uid.
    pub uid: u32,
    /// The user name of `uid`, when /etc/passwd has one.
    pub user: Option<String>,
}

fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn user_names() -> std::collections::HashMap<u32, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// Every process with a command line, by pid, but the service itself.
pub fn processes() -> Vec<Process> {
    let users = user_names();
    let me = std::process::id() as i32;
    let mut list: Vec<Process> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let cmdline = cmdline(pid)?;
            let uid = uid_of(pid)?;
            Some(Process {
                pid,
                cmdline,
                uid,
                user: users.get(&uid).cloned(),
            })
        })
        .collect();
    list.sort_by_key(|p| p.pid);
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some_and(|t| t > 0));
        assert!(cmdline(me).is_some());
        assert_eq!(start_time(i32::MAX), None);
        assert!(processes().windows(2).all(|w| w[0].pid < w[1].pid));
    }
}
