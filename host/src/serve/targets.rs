//! The service's targets and their probes, live. Each traced process has a
//! thread of its own that owns its connection to wprobe-core (see
//! [`super::core`] for why one connection per target): handlers send it
//! [`Cmd`]s, and between commands it reads the core's frames, runs the
//! probes' plugins on each event, answers sync events with their verdict,
//! and publishes the events on the bus. What handlers show of a probe
//! (state, placements, counters, plugins) is kept in [`ProbeLive`].
//!
//! Also the list of processes that can be attached, from /proc.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use wprobe_core::proto::client::{Client, ClientError};
use wprobe_core::proto::{
    Action, Body, ErrorKind, Event, EventKind, ExitStatus, Frame, Mode, Notice, Op, ProbeOptions,
    SpawnStdio,
};

use wprobe_core::spec::{Kind, ProbeSpec};

use super::core::{CoreLink, Wake};
use super::error::ApiError;
use super::events::{event_json, Bus, Item};
use super::store::{ProbePlugin, ProbeRow, Store, Target, TargetExit};
use crate::plugin::{dispatch, Attachment, CallInfo, Plugin, Runtime};

/// The state of a probe just added, until the core says where it went.
const ARMING: &str = "arming";

/// Frames a target's thread handles between two looks at its commands.
const FRAMES_PER_TURN: usize = 16;

/// How long a sync hit waits for the plugins' verdict.
const SYNC_DEADLINE_US: u32 = 50_000;

/// How long `GET /api/probes` and `/metrics` wait, in all, for targets'
/// counters before answering with those they have.
const COUNTERS_WAIT: Duration = Duration::from_secs(1);

/// A plugin attached to a probe.
pub struct Attached {
    pub plugin: i64,
    pub name: String,
    /// The version running now (an upload replaces it in place).
    pub version: AtomicI64,
    pub config: Value,
    pub att: Attachment,
    /// Its share of the plugin memory budget, given back when it goes.
    _memory: Reservation,
}

/// The bounds [`Targets`] keeps (the `wprobe serve` options of the same
/// names).
pub struct Caps {
    pub max_probes: usize,
    pub core_timeout: Duration,
    pub max_attachments: usize,
    pub memory: Arc<MemoryBudget>,
    /// `--no-optimize`: every probe stays on `int3`.
    pub no_optimize: bool,
}

/// The plugin memory budget (`--plugin-memory-budget`): every instance
/// counts for its memory cap, whether it uses it yet or not, so that the
/// instances attached can never grow past the budget together.
pub struct MemoryBudget {
    limit: usize,
    per_instance: usize,
    used: Mutex<usize>,
}

impl MemoryBudget {
    pub fn new(limit: usize, per_instance: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            per_instance,
            used: Mutex::new(0),
        })
    }

    /// One instance's share; a 422 that names the budget when it is spent.
    fn reserve(self: &Arc<Self>) -> Result<Reservation, ApiError> {
        let mut used = lock(&self.used);
        if *used + self.per_instance > self.limit {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the plugins attached now may use {} bytes of memory ({} instances of at \
                     most {} bytes); one more would pass the budget of {} bytes \
                     (--plugin-memory-budget): remove plugins from probes first",
                    *used,
                    *used / self.per_instance.max(1),
                    self.per_instance,
                    self.limit
                ),
            ));
        }
        *used += self.per_instance;
        Ok(Reservation(self.clone()))
    }

    /// The bytes reserved by the instances attached now.
    pub fn used(&self) -> usize {
        *lock(&self.used)
    }
}

/// One instance's share of the [`MemoryBudget`].
struct Reservation(Arc<MemoryBudget>);

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = lock(&self.0.used);
        *used = used.saturating_sub(self.0.per_instance);
    }
}

/// One place a probe is armed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Placement {
    pub pid: i32,
    /// The address in the process.
    pub address: u64,
    /// The symbol and offset, and the module.
    pub location: String,
    /// `optimized` (a jump into a trampoline: no stop per hit), or
    /// `int3: ` and why not.
    pub placement: String,
}

/// What the service knows of a probe beyond its stored definition.
pub struct ProbeLive {
    pub target: i64,
    /// "armed", "pending", "refused", "gone", "inactive" (see
    /// [`ProbeLive::state`]).
    pub state: &'static str,
    pub reason: Option<String>,
    pub placements: Vec<Placement>,
    pub hits: u64,
    pub nmissed: u64,
    pub dropped: u64,
    pub plugins: Vec<Arc<Attached>>,
}

/// A probe to create: its definition and its plugins, attached already.
pub struct NewProbe {
    pub row: ProbeRow,
    pub plugins: Vec<Arc<Attached>>,
}

/// What a handler asks of a target's thread. Each carries where to answer.
pub enum Cmd {
    /// Creates probes, all or none; the error names the index of the one
    /// that failed.
    AddProbes(
        Vec<NewProbe>,
        mpsc::Sender<Result<Vec<i64>, (usize, ApiError)>>,
    ),
    /// Arms again stored probes (after a restart): each on its own.
    Restore(Vec<NewProbe>),
    SetEnabled(i64, bool, mpsc::Sender<Result<(), ApiError>>),
    SetPlugins(
        i64,
        Vec<ProbePlugin>,
        Vec<Arc<Attached>>,
        mpsc::Sender<Result<(), ApiError>>,
    ),
    Remove(i64, mpsc::Sender<Result<(), ApiError>>),
    /// Refreshes the probes' counters from the core.
    Counters(mpsc::Sender<()>),
    /// Lets the process go and ends the connection.
    Detach(mpsc::Sender<Result<(), ApiError>>),
}

#[derive(Clone)]
struct Handle {
    tx: mpsc::Sender<Cmd>,
    wake: Arc<Wake>,
}

/// Every target's thread, the probes' live state, and compiled plugins.
pub struct Targets {
    link: CoreLink,
    store: Arc<Mutex<Store>>,
    pub runtime: Arc<Runtime>,
    pub bus: Arc<Bus>,
    threads: Mutex<HashMap<i64, Handle>>,
    pub probes: Mutex<HashMap<i64, ProbeLive>>,
    /// Compiled modules by SHA-256: attaching a plugin to a second probe
    /// does not compile it again.
    modules: Mutex<HashMap<String, Arc<Plugin>>>,
    /// The most probes one target may have.
    pub max_probes: usize,
    /// The most plugins one probe may have (`--max-attachments-per-probe`).
    pub max_attachments: usize,
    pub memory: Arc<MemoryBudget>,
    /// How long one call to the core may take before its connection is
    /// declared lost (`--core-timeout`).
    core_timeout: Duration,
    no_optimize: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why target `t` has no live connection, from what the store says of it.
fn not_live(t: &Target) -> ApiError {
    let what = format!("target {} (pid {}, {})", t.id, t.pid, t.cmdline);
    match (t.state.as_str(), &t.reason) {
        ("lost", Some(why)) => ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{what} is lost: {why}; delete it (DELETE /api/targets/{}) and attach again",
                t.id
            ),
        ),
        (state, _) => ApiError::new(
            StatusCode::CONFLICT,
            format!("{what} is {state}, not traced: probes go on running targets"),
        ),
    }
}

impl Targets {
    pub fn new(
        link: CoreLink,
        store: Arc<Mutex<Store>>,
        runtime: Arc<Runtime>,
        bus: Arc<Bus>,
        caps: Caps,
    ) -> Targets {
        let Caps {
            max_probes,
            core_timeout,
            max_attachments,
            memory,
            no_optimize,
        } = caps;
        Targets {
            max_attachments,
            memory,
            core_timeout,
            no_optimize,
            link,
            store,
            runtime,
            bus,
            threads: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            max_probes,
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Stops the core this service started (every target let go).
    pub fn shutdown(&self) {
        self.link.stop();
    }

    /// The pid of the core this service uses.
    pub fn core_pid(&self) -> u32 {
        self.link.core_pid
    }

    /// Whether target `id` has a live connection.
    pub fn is_live(&self, id: i64) -> bool {
        lock(&self.threads).contains_key(&id)
    }

    /// Why target `id` cannot take a command: what the store says of it.
    pub fn why_not_live(&self, id: i64) -> ApiError {
        match self.store().target(id) {
            Ok(Some(t)) => not_live(&t),
            Ok(None) => ApiError::not_found(format!("no target with id {id}")),
            Err(e) => e.into(),
        }
    }

    /// Sends a command to target `id`'s thread and waits for its answer. A
    /// target without a thread (exited, lost, let go) answers at once;
    /// a thread's calls to the core are bounded by `--core-timeout`, after
    /// which it declares its connection lost and answers.
    pub fn ask<T>(
        &self,
        id: i64,
        make: impl FnOnce(mpsc::Sender<T>) -> Cmd,
    ) -> Result<T, ApiError> {
        let Some(handle) = lock(&self.threads).get(&id).cloned() else {
            return Err(self.why_not_live(id));
        };
        let (tx, rx) = mpsc::channel();
        if handle.tx.send(make(tx)).is_err() {
            return Err(self.why_not_live(id));
        }
        handle.wake.ring();
        // Commands queued before this one may each wait for the core too.
        let bound = self.core_timeout * 4 + Duration::from_secs(5);
        match rx.recv_timeout(bound) {
            Ok(r) => Ok(r),
            // The thread ended without answering: it says why in the store.
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.why_not_live(id)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "target {id}'s thread did not answer within {} s (it is busy with \
                     earlier requests to wprobe-core): try again",
                    bound.as_secs()
                ),
            )),
        }
    }

    /// Asks every live target to refresh its probes' counters, waiting
    /// one second at most in all: a target whose thread is stuck on its
    /// core shows the counters it last had.
    pub fn refresh_counters(&self) {
        let handles: Vec<Handle> = lock(&self.threads).values().cloned().collect();
        let waits: Vec<mpsc::Receiver<()>> = handles
            .iter()
            .filter_map(|h| {
                let (tx, rx) = mpsc::channel();
                h.tx.send(Cmd::Counters(tx)).ok()?;
                h.wake.ring();
                Some(rx)
            })
            .collect();
        let deadline = Instant::now() + COUNTERS_WAIT;
        for rx in waits {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = rx.recv_timeout(left);
        }
    }

    /// The compiled newest version of plugin `id`, and its name and version.
    fn module(&self, id: i64) -> Result<(Arc<Plugin>, String, i64), ApiError> {
        let latest = self.store().latest_module(id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("there is no plugin with id {id}: upload it first (POST /api/plugins)"),
            )
        })?;
        if let Some(p) = lock(&self.modules).get(&latest.sha256) {
            return Ok((p.clone(), latest.name, latest.version));
        }
        // Loaded as the upload was validated: with the manifest it gave.
        let plugin = self
            .runtime
            .load(&latest.bytes, latest.manifest.as_deref(), &latest.name)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "plugin {id} (`{}` version {}) does not load: {e}; upload a version \
                         that does",
                        latest.name, latest.version
                    ),
                )
            })?;
        let plugin = Arc::new(plugin);
        lock(&self.modules).insert(latest.sha256, plugin.clone());
        Ok((plugin, latest.name, latest.version))
    }

    /// Compiles (once) and instantiates each plugin with its configuration.
    /// A configuration the plugin refuses is a 422 naming the plugin.
    pub fn attach_plugins(&self, plugins: &[ProbePlugin]) -> Result<Vec<Arc<Attached>>, ApiError> {
        self.check_attachments(plugins.len())?;
        plugins
            .iter()
            .map(|pp| {
                let (plugin, name, version) = self.module(pp.plugin)?;
                let memory = self.memory.reserve()?;
                let config = serde_json::to_string(&pp.config).unwrap_or_else(|_| "{}".into());
                let att = self.runtime.attach(plugin, &config).map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "plugin {} (`{name}`) refused the configuration {config}: {e}",
                            pp.plugin
                        ),
                    )
                })?;
                Ok(Arc::new(Attached {
                    plugin: pp.plugin,
                    name,
                    version: AtomicI64::new(version),
                    config: pp.config.clone(),
                    att,
                    _memory: memory,
                }))
            })
            .collect()
    }

    /// A probe with `n` plugins is within `--max-attachments-per-probe`.
    pub fn check_attachments(&self, n: usize) -> Result<(), ApiError> {
        if n > self.max_attachments {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{n} plugins on one probe: the cap is {} (--max-attachments-per-probe)",
                    self.max_attachments
                ),
            ));
        }
        Ok(())
    }

    /// Replaces plugin `id` by its newest version wherever it is attached;
    /// how many attachments were replaced, and the failures.
    pub fn upgrade_plugin(&self, id: i64) -> (usize, Vec<String>) {
        let attached: Vec<(i64, Arc<Attached>)> = lock(&self.probes)
            .iter()
            .flat_map(|(pid, p)| {
                p.plugins
                    .iter()
                    .filter(|a| a.plugin == id)
                    .map(|a| (*pid, a.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        if attached.is_empty() {
            return (0, Vec::new());
        }
        let (plugin, _, version) = match self.module(id) {
            Ok(m) => m,
            Err(e) => return (0, vec![e.message]),
        };
        let mut done = 0;
        let mut failed = Vec::new();
        for (probe, a) in attached {
            match a.att.replace(&self.runtime, plugin.clone()) {
                Ok(()) => {
                    a.version.store(version, Ordering::Relaxed);
                    done += 1;
                }
                Err(e) => failed.push(format!("probe {probe}: {e}")),
            }
        }
        (done, failed)
    }

    /// Attaches to `pid` with a connection of its own.
    pub fn attach(self: &Arc<Self>, pid: i32) -> Result<Target, ApiError> {
        self.refuse_own(pid)?;
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
        let exe = exe(pid);
        let mut client = self.connect()?;
        match self.call(&mut client, Op::Attach { pid }) {
            Ok(Body::Target { .. }) => {}
            Ok(other) => return Err(ApiError::internal(format!("wprobe-core: {other:?}"))),
            Err(e) => return Err(core_error(e, &format!("attaching to pid {pid}"))),
        }
        let target = self
            .store()
            .add_target(pid, start_time, &cmdline, &exe, "attached")?;
        self.start_thread(target.id, pid, client);
        Ok(target)
    }

    /// Refuses the service's own process and its core's (any of their
    /// threads): a probe there would stall the service or the core on its
    /// own breakpoints.
    fn refuse_own(&self, pid: i32) -> Result<(), ApiError> {
        let tgid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| status_field::<u32>(&s, "Tgid:"));
        let whose = match tgid {
            Some(t) if t == std::process::id() => "this wprobe serve itself",
            Some(t) if t == self.link.core_pid => "the wprobe-core this service uses",
            _ => return Ok(()),
        };
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "pid {pid} is {whose}: tracing it would stall the service on its own \
                 breakpoints; attach another process"
            ),
        ))
    }

    /// Starts `argv` under the core, then lets it run.
    pub fn spawn(self: &Arc<Self>, argv: Vec<String>) -> Result<Target, ApiError> {
        let what = format!("spawning {argv:?}");
        let mut client = self.connect()?;
        let spawn = Op::Spawn {
            argv: argv.clone(),
            env: None,
            stdio: SpawnStdio::Inherit,
        };
        let pid = match self.call(&mut client, spawn) {
            Ok(Body::Target { pid }) => pid,
            Ok(other) => return Err(ApiError::internal(format!("wprobe-core: {other:?}"))),
            Err(e) => return Err(core_error(e, &what)),
        };
        let start_time = start_time(pid).unwrap_or(0);
        let exe = exe(pid);
        let target = self
            .store()
            .add_target(pid, start_time, &argv.join(" "), &exe, "spawned")?;
        if let Err(e) = self.call(&mut client, Op::Resume { pid }) {
            return Err(core_error(e, &format!("resuming pid {pid}")));
        }
        self.start_thread(target.id, pid, client);
        Ok(target)
    }

    /// A new connection to the core, configured, and the frames read on
    /// it so far.
    fn connect(&self) -> Result<Client, ApiError> {
        let mut client = self
            .link
            .connect(&format!("wprobe serve {}", std::process::id()))
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
        // A core that stops reading blocks a write no longer than a call.
        client
            .stream()
            .set_write_timeout(Some(self.core_timeout))
            .map_err(|e| ApiError::internal(format!("the core's socket: {e}")))?;
        // Children of a target are traced with its probes, and an exec
        // resolves them again in the new program, as uprobes on a binary
        // follow it wherever it runs.
        let op = Op::Configure {
            follow_fork: true,
            follow_exec: true,
            no_optimize: self.no_optimize,
        };
        self.call(&mut client, op)
            .map_err(|e| core_error(e, "configuring the connection"))?;
        Ok(client)
    }

    /// One request to the core, its answer awaited `--core-timeout` at
    /// most; frames that come before it stay in the client for
    /// `Client::next`.
    fn call(&self, client: &mut Client, op: Op) -> Result<Body, ClientError> {
        client
            .call_within(op, self.core_timeout)
            .map_err(|e| match e {
                ClientError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                    ClientError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "wprobe-core did not answer within {} s (--core-timeout)",
                            self.core_timeout.as_secs_f64()
                        ),
                    ))
                }
                e => e,
            })
    }

    fn start_thread(self: &Arc<Self>, id: i64, pid: i32, client: Client) {
        let (tx, rx) = mpsc::channel();
        let wake = match Wake::new() {
            Ok(w) => Arc::new(w),
            Err(e) => {
                eprintln!("wprobe serve: target {id}: eventfd: {e}");
                return;
            }
        };
        lock(&self.threads).insert(
            id,
            Handle {
                tx,
                wake: wake.clone(),
            },
        );
        let conn = Conn {
            targets: self.clone(),
            id,
            pid,
            client,
            wake,
            by_core: HashMap::new(),
            done: false,
        };
        let targets = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("target {id}"))
            .spawn(move || {
                // A panic anywhere on the thread must not leave the target
                // shown as armed: the connection closes as the thread
                // unwinds (so the core lets the process go), and the
                // target and its probes say what happened.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.run(rx)));
                if let Err(panic) = run {
                    targets.thread_died(id, &panic_message(&panic));
                }
            });
        if let Err(e) = spawned {
            eprintln!("wprobe serve: target {id}: starting its thread: {e}");
            lock(&self.threads).remove(&id);
        }
    }

    /// Lets target `id` go (if it is traced) and forgets it with its
    /// probes; with `kill`, a target the service spawned is then killed.
    /// `Ok(false)` for an unknown id. Nothing is forgotten while the core
    /// still traces the process (a lost connection the core has not let go
    /// of yet): that is an error that says so.
    pub fn remove(&self, id: i64, kill: bool) -> Result<bool, ApiError> {
        let Some(t) = self.store().target(id)? else {
            return Ok(false);
        };
        if kill && t.kind != "spawned" {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "target {id} (pid {}) was attached, not spawned by the service: \
                     ?kill=true ends only processes the service started; delete it without \
                     ?kill to let it go",
                    t.pid
                ),
            ));
        }
        if self.is_live(id) {
            // An error of `ask` means the thread ended or is stuck: what is
            // true of the process is checked below either way.
            if let Ok(r) = self.ask(id, Cmd::Detach) {
                r?
            }
        }
        // The core lets go of a lost connection's targets when it sees the
        // connection end: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Some(tracer) = self.traced_by_core(&t) {
            if Instant::now() > deadline {
                let t = self.store().target(id)?.unwrap_or(t);
                let why = t.reason.map(|r| format!(" ({r})")).unwrap_or_default();
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "target {id} (pid {}) is still traced by wprobe-core (pid {}, thread \
                         {tracer}), whose connection for it is {}{why}: nothing was deleted. \
                         Try again once the core answers; a core that ends lets every target \
                         go, restored",
                        t.pid, self.link.core_pid, t.state
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if kill {
            kill_process(&t)?;
        }
        let probes: Vec<i64> = self
            .store()
            .probes(Some(id))?
            .iter()
            .map(|p| p.id)
            .collect();
        let gone = self.store().delete_target(id)?;
        let mut live = lock(&self.probes);
        for p in probes {
            live.remove(&p);
        }
        Ok(gone)
    }

    /// Target `id`'s thread ended with a panic: the target is "lost" and
    /// its probes inactive, with the panic's message.
    fn thread_died(&self, id: i64, panic: &str) {
        lock(&self.threads).remove(&id);
        let why = format!("the service's thread for it panicked ({panic})");
        eprintln!("wprobe serve: target {id} lost: {why}");
        if let Err(e) = self.store().target_lost(id, &why) {
            eprintln!("wprobe serve: target {id}: recording its loss: {e}");
        }
        let reason = format!("its target was lost: {why}");
        for p in lock(&self.probes).values_mut().filter(|p| p.target == id) {
            p.state = "inactive";
            p.reason = Some(reason.clone());
            p.placements.clear();
        }
    }

    /// The thread of this service's wprobe-core that traces a thread of
    /// target `t`'s process, if one does (and the process is the same).
    fn traced_by_core(&self, t: &Target) -> Option<i32> {
        if start_time(t.pid) != Some(t.start_time) {
            return None;
        }
        let tasks = std::fs::read_dir(format!("/proc/{}/task", t.pid)).ok()?;
        tasks.flatten().find_map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let tracer: i32 = status_field(&status, "TracerPid:")?;
            let tracer_status = std::fs::read_to_string(format!("/proc/{tracer}/status")).ok()?;
            let tgid: u32 = status_field(&tracer_status, "Tgid:")?;
            (tracer != 0 && tgid == self.link.core_pid).then_some(tracer)
        })
    }

    /// At start-up: targets of the previous run that still run (same pid,
    /// same start time) are attached again and their probes re-armed; the
    /// others are "gone". Nothing is respawned.
    pub fn restore(self: &Arc<Self>) {
        let targets = match self.store().targets() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("wprobe serve: reading targets: {e}");
                return;
            }
        };
        for t in targets.into_iter().filter(|t| t.state == "running") {
            let alive = start_time(t.pid) == Some(t.start_time);
            let attached = if alive {
                self.reattach(&t)
            } else {
                Err("it is not running any more".into())
            };
            if let Err(why) = attached {
                eprintln!(
                    "wprobe serve: target {} (pid {}, {}) not traced again: {why}",
                    t.id, t.pid, t.cmdline
                );
                if let Err(e) = self.store().target_gone(t.id) {
                    eprintln!("wprobe serve: target {}: {e}", t.id);
                }
            }
        }
    }

    fn reattach(self: &Arc<Self>, t: &Target) -> Result<(), String> {
        let mut client = self.connect().map_err(|e| e.message)?;
        self.call(&mut client, Op::Attach { pid: t.pid })
            .map_err(|e| e.to_string())?;
        let rows = self.store().probes(Some(t.id)).map_err(|e| e.to_string())?;
        self.start_thread(t.id, t.pid, client);
        let mut restore = Vec::new();
        for row in rows {
            match self.attach_plugins(&row.plugins) {
                Ok(plugins) => restore.push(NewProbe { row, plugins }),
                Err(e) => {
                    lock(&self.probes)
                        .insert(row.id, ProbeLive::new(t.id, "refused", Some(e.message)));
                }
            }
        }
        let handle = lock(&self.threads).get(&t.id).cloned();
        if let Some(h) = handle {
            let _ = h.tx.send(Cmd::Restore(restore));
            h.wake.ring();
        }
        Ok(())
    }
}

impl ProbeLive {
    fn new(target: i64, state: &'static str, reason: Option<String>) -> ProbeLive {
        ProbeLive {
            target,
            state,
            reason,
            placements: Vec::new(),
            hits: 0,
            nmissed: 0,
            dropped: 0,
            plugins: Vec::new(),
        }
    }
}

/// A probe as its target's thread knows it.
struct Local {
    id: i64,
    core: u32,
    return_probe: bool,
    mutation: bool,
    plugins: Vec<Arc<Attached>>,
    /// Its spec, and the last place it was armed (`MODULE:SYMBOL+OFF`),
    /// for the events' `spec`, `module` and `symbol`.
    spec: String,
    symbol: String,
}

/// A target's thread.
struct Conn {
    targets: Arc<Targets>,
    id: i64,
    pid: i32,
    /// Frames read while a call waited for its reply stay in it, and
    /// `Client::next` hands them out first.
    client: Client,
    wake: Arc<Wake>,
    by_core: HashMap<u32, Local>,
    /// The connection is over (the target ended or was let go).
    done: bool,
}

impl Conn {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        while !self.done {
            loop {
                match rx.try_recv() {
                    // Once the connection is over, the rest is refused
                    // with what is true of the target.
                    Ok(cmd) if self.done => self.refuse(cmd),
                    Ok(cmd) => self.command(cmd),
                    Err(mpsc::TryRecvError::Empty) => break,
                    // The service is going away: let go of the process.
                    Err(mpsc::TryRecvError::Disconnected) => {
                        let _ = self.call(Op::Detach { pid: self.pid });
                        self.done = true;
                        break;
                    }
                }
            }
            // Frames (a reply may have left some in the client's backlog),
            // a bounded number before commands are looked at again: under
            // a flood of events a request still gets its answer at once.
            // Only those there now: waiting for the socket is the poll
            // below, which a command also ends. (A read with a timeout
            // held every command that came within 8 ms of the previous
            // one: the socket's timeout is counted in the kernel's ticks.)
            let mut read = 0;
            while !self.done && read < FRAMES_PER_TURN {
                match self.try_next() {
                    Some(f) => {
                        self.frame(f);
                        read += 1;
                    }
                    None => break,
                }
            }
            if !self.done && read < FRAMES_PER_TURN {
                self.wake
                    .wait(self.client.stream(), Duration::from_millis(500));
                self.wake.clear();
            }
        }
        lock(&self.targets.threads).remove(&self.id);
        // Answer what is still queued, so that no handler waits in vain.
        while let Ok(cmd) = rx.try_recv() {
            self.refuse(cmd);
        }
    }

    fn refuse(&self, cmd: Cmd) {
        let e = || self.targets.why_not_live(self.id);
        match cmd {
            Cmd::AddProbes(_, r) => drop(r.send(Err((0, e())))),
            Cmd::SetEnabled(.., r) | Cmd::SetPlugins(.., r) | Cmd::Remove(_, r) => {
                drop(r.send(Err(e())))
            }
            // Whether the process is still traced is checked by the caller.
            Cmd::Detach(r) => drop(r.send(Ok(()))),
            Cmd::Counters(r) => drop(r.send(())),
            Cmd::Restore(_) => {}
        }
    }

    /// The next frame: one a call left in the client, else from the core
    /// within `timeout`. A connection that fails is lost.
    fn next(&mut self, timeout: Duration) -> Option<Frame> {
        match self.client.next(Some(timeout)) {
            Ok(f) => f,
            Err(e) => {
                self.lost(&format!("the connection to wprobe-core ended: {e}"));
                None
            }
        }
    }

    /// The next frame if one is there now, without waiting (see
    /// `Client::try_next`). A connection that fails is lost.
    fn try_next(&mut self) -> Option<Frame> {
        match self.client.try_next() {
            Ok(f) => f,
            Err(e) => {
                self.lost(&format!("the connection to wprobe-core ended: {e}"));
                None
            }
        }
    }

    /// One request to the core (see [`Targets::call`]). A connection that
    /// fails or does not answer in time is lost: a core that has stopped
    /// reading or writing would leave every later request waiting.
    fn call(&mut self, op: Op) -> Result<Body, ClientError> {
        if self.done {
            return Err(ClientError::Closed);
        }
        let r = self.targets.call(&mut self.client, op);
        if let Err(e @ (ClientError::Io(_) | ClientError::Closed | ClientError::Proto(_))) = &r {
            let why = match e {
                ClientError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => io.to_string(),
                e => format!("the connection to wprobe-core ended: {e}"),
            };
            self.lost(&why);
        }
        r
    }

    /// The connection failed: it is closed (the core lets go of every
    /// target of a connection that ends), the target is "lost" with the
    /// reason, its probes inactive, and every later command is answered
    /// at once.
    fn lost(&mut self, why: &str) {
        if self.done {
            return;
        }
        let _ = self.client.stream().shutdown(std::net::Shutdown::Both);
        eprintln!(
            "wprobe serve: target {} (pid {}) lost: {why}",
            self.id, self.pid
        );
        if let Err(e) = self.targets.store().target_lost(self.id, why) {
            eprintln!("wprobe serve: target {}: recording its loss: {e}", self.id);
        }
        self.closed(&format!("its target was lost: {why}"));
    }

    /// The connection is over: the probes stay listed, inactive.
    fn closed(&mut self, why: &str) {
        self.done = true;
        let ids: Vec<i64> = self.by_core.values().map(|l| l.id).collect();
        let mut live = lock(&self.targets.probes);
        for id in ids {
            if let Some(p) = live.get_mut(&id) {
                p.state = "inactive";
                p.reason = Some(why.to_string());
                p.placements.clear();
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::AddProbes(list, reply) => {
                let r = self.add_probes(list);
                let _ = reply.send(r);
            }
            Cmd::Restore(list) => self.restore(list),
            Cmd::SetEnabled(id, on, reply) => {
                let r = self.set_enabled(id, on);
                let _ = reply.send(r);
            }
            Cmd::SetPlugins(id, rows, plugins, reply) => {
                let r = self.set_plugins(id, rows, plugins);
                let _ = reply.send(r);
            }
            Cmd::Remove(id, reply) => {
                let r = self.remove(id);
                let _ = reply.send(r);
            }
            Cmd::Counters(reply) => {
                self.counters();
                let _ = reply.send(());
            }
            Cmd::Detach(reply) => {
                let r = match self.call(Op::Detach { pid: self.pid }) {
                    Ok(_)
                    | Err(ClientError::Core {
                        kind: ErrorKind::NoTarget,
                        ..
                    }) => Ok(()),
                    Err(e) => Err(core_error(e, &format!("detaching from pid {}", self.pid))),
                };
                if r.is_ok() {
                    self.counters();
                    self.closed("its target was let go");
                }
                let _ = reply.send(r);
            }
        }
    }

    /// Creates one probe in the core; its core id.
    fn add_one(&mut self, row: &ProbeRow) -> Result<u32, ApiError> {
        let options = ProbeOptions {
            mode: if row.allow_mutation {
                Mode::Sync
            } else {
                Mode::Async
            },
            allow_mutation: row.allow_mutation,
            sync_deadline_us: SYNC_DEADLINE_US,
            no_optimize: false,
        };
        let core = match self.call(Op::AddProbe {
            spec: row.spec.clone(),
            options,
        }) {
            Ok(Body::Probe { id }) => id,
            Ok(other) => return Err(ApiError::internal(format!("wprobe-core: {other:?}"))),
            Err(e) => return Err(core_error(e, &format!("probe `{}`", row.spec))),
        };
        if !row.enabled {
            if let Err(e) = self.call(Op::DisableProbe { id: core }) {
                let _ = self.call(Op::RemoveProbe { id: core });
                return Err(core_error(e, &format!("disabling probe `{}`", row.spec)));
            }
        }
        Ok(core)
    }

    fn add_probes(&mut self, list: Vec<NewProbe>) -> Result<Vec<i64>, (usize, ApiError)> {
        // The cap is checked here, on the one thread that adds this
        // target's probes, so that concurrent requests cannot all pass it.
        let have = self
            .targets
            .store()
            .probe_count(self.id)
            .map_err(|e| (0, e.into()))?;
        if let Err(e) = cap_check(self.id, have, list.len(), self.targets.max_probes) {
            return Err((0, e));
        }
        let mut cores = Vec::new();
        for (i, np) in list.iter().enumerate() {
            match self.add_one(&np.row) {
                Ok(c) => cores.push(c),
                Err(e) => {
                    self.undo(&cores);
                    return Err((i, e));
                }
            }
        }
        let rows: Vec<ProbeRow> = list.iter().map(|np| np.row.clone()).collect();
        let stored = self.targets.store().add_probes(&rows);
        let ids = match stored {
            Ok(ids) => ids,
            Err(e) => {
                self.undo(&cores);
                return Err((0, e.into()));
            }
        };
        for ((np, core), id) in list.into_iter().zip(cores).zip(&ids) {
            self.register(*id, core, np);
        }
        self.await_placement(&ids);
        Ok(ids)
    }

    /// Reads frames until the core has said where each new probe went
    /// (armed, pending, refused): its reply to AddProbe may overtake those
    /// notices, and the answer to the request should show them. Two
    /// seconds at most; after that the probe shows "pending".
    fn await_placement(&mut self, ids: &[i64]) {
        let undecided = |t: &Targets| {
            let live = lock(&t.probes);
            ids.iter()
                .any(|id| live.get(id).is_some_and(|p| p.state == ARMING))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while undecided(&self.targets) && std::time::Instant::now() < deadline && !self.done {
            if let Some(f) = self.next(Duration::from_millis(10)) {
                self.frame(f);
            }
        }
        let mut live = lock(&self.targets.probes);
        for id in ids {
            if let Some(p) = live.get_mut(id).filter(|p| p.state == ARMING) {
                p.state = "pending";
                p.reason = Some("the core has not said where it is armed yet".into());
            }
        }
    }

    fn undo(&mut self, cores: &[u32]) {
        for &id in cores {
            let _ = self.call(Op::RemoveProbe { id });
        }
    }

    fn register(&mut self, id: i64, core: u32, np: NewProbe) {
        // The core accepted the spec, so it parses.
        let return_probe = ProbeSpec::parse(&np.row.spec).is_ok_and(|s| s.kind == Kind::Return);
        let mut live = ProbeLive::new(self.id, ARMING, None);
        live.plugins = np.plugins.clone();
        // Notices of this probe read while it was added wait in the
        // client: they find the entry made here.
        lock(&self.targets.probes).insert(id, live);
        self.by_core.insert(
            core,
            Local {
                id,
                core,
                return_probe,
                mutation: np.row.allow_mutation,
                plugins: np.plugins,
                spec: np.row.spec.clone(),
                symbol: String::new(),
            },
        );
    }

    fn restore(&mut self, list: Vec<NewProbe>) {
        let mut ids = Vec::new();
        for np in list {
            let id = np.row.id;
            match self.add_one(&np.row) {
                Ok(core) => {
                    self.register(id, core, np);
                    ids.push(id);
                }
                Err(e) => {
                    lock(&self.targets.probes)
                        .insert(id, ProbeLive::new(self.id, "refused", Some(e.message)));
                }
            }
        }
        self.await_placement(&ids);
    }

    fn local(&self, id: i64) -> Result<u32, ApiError> {
        self.by_core
            .values()
            .find(|l| l.id == id)
            .map(|l| l.core)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!("probe {id} is not armed in its target (it was refused at start-up)"),
                )
            })
    }

    fn set_enabled(&mut self, id: i64, on: bool) -> Result<(), ApiError> {
        let core = self.local(id)?;
        let op = if on {
            Op::EnableProbe { id: core }
        } else {
            Op::DisableProbe { id: core }
        };
        self.call(op)
            .map_err(|e| core_error(e, &format!("probe {id}")))?;
        let stored = self.targets.store().set_probe_enabled(id, on);
        if let Err(e) = stored {
            // Back as it was: the request changes nothing.
            let undo = if on {
                Op::DisableProbe { id: core }
            } else {
                Op::EnableProbe { id: core }
            };
            let _ = self.call(undo);
            return Err(e.into());
        }
        Ok(())
    }

    fn set_plugins(
        &mut self,
        id: i64,
        rows: Vec<ProbePlugin>,
        plugins: Vec<Arc<Attached>>,
    ) -> Result<(), ApiError> {
        let core = self.local(id)?;
        self.targets.store().set_probe_plugins(id, &rows)?;
        if let Some(l) = self.by_core.get_mut(&core) {
            l.plugins = plugins.clone();
        }
        if let Some(p) = lock(&self.targets.probes).get_mut(&id) {
            p.plugins = plugins;
        }
        Ok(())
    }

    fn remove(&mut self, id: i64) -> Result<(), ApiError> {
        // A probe refused at start-up is in the store only.
        if let Ok(core) = self.local(id) {
            match self.call(Op::RemoveProbe { id: core }) {
                Ok(_)
                | Err(ClientError::Core {
                    kind: ErrorKind::NoProbe,
                    ..
                }) => {}
                Err(e) => return Err(core_error(e, &format!("removing probe {id}"))),
            }
            self.by_core.remove(&core);
        }
        self.targets.store().delete_probe(id)?;
        lock(&self.targets.probes).remove(&id);
        Ok(())
    }

    fn counters(&mut self) {
        let Ok(Body::Stats(stats)) = self.call(Op::Stats) else {
            return;
        };
        let mut live = lock(&self.targets.probes);
        for c in stats.probes {
            let Some(l) = self.by_core.get(&c.id) else {
                continue;
            };
            if let Some(p) = live.get_mut(&l.id) {
                p.hits = c.hits;
                p.nmissed = c.nmissed;
                p.dropped = c.dropped;
            }
        }
    }

    fn frame(&mut self, frame: Frame) {
        match frame {
            Frame::Events(batch) => {
                for e in batch {
                    self.event(e);
                }
            }
            Frame::Loss { probe, count } => {
                let probe = self.by_core.get(&probe).map(|l| l.id);
                self.targets.bus.publish(Item::Loss {
                    target: self.id,
                    probe,
                    count,
                });
            }
            Frame::Notice(n) => self.notice(n),
            _ => {}
        }
    }

    fn event(&mut self, e: Event) {
        let Some(local) = self.by_core.get(&e.probe) else {
            if e.sync {
                self.verdict(e.seq, Action::Continue);
            }
            return;
        };
        let info = CallInfo {
            sync: e.sync,
            mutation: local.mutation,
            return_probe: local.return_probe && e.kind != EventKind::Return,
        };
        let mut records = Vec::new();
        // A panic in the plugins' host side ends this event's dispatch,
        // not the target's thread: the event gets no verdict but Continue.
        let dispatched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            dispatch(
                &self.targets.runtime,
                local.plugins.iter().map(|a| &a.att),
                &e,
                info,
                |n, _, r| {
                    records
                        .push(serde_json::json!({"plugin": local.plugins[n].plugin, "record": r}))
                },
                |_, _| {},
            )
        }));
        let action = match dispatched {
            Ok(action) => action,
            Err(panic) => {
                eprintln!(
                    "wprobe serve: target {}: probe {}: a plugin call panicked ({}); the \
                     event continues unchanged",
                    self.id,
                    local.id,
                    panic_message(&panic)
                );
                e.sync.then_some(Action::Continue)
            }
        };
        let json = event_json(self.id, local.id, &local.spec, &local.symbol, &e, &records);
        let probe = local.id;
        if let Some(action) = action {
            // The thread waits: the verdict before anything else.
            self.verdict(e.seq, action);
        }
        self.targets.bus.publish(Item::Hit {
            target: self.id,
            probe,
            json,
        });
    }

    /// Answers a sync event; a write that fails loses the connection.
    fn verdict(&mut self, seq: u64, action: Action) {
        if self.done {
            return;
        }
        if let Err(e) = self.client.verdict(seq, action) {
            self.lost(&format!("sending a verdict to wprobe-core: {e}"));
        }
    }

    fn id_of(&self, core: u32) -> Option<i64> {
        self.by_core.get(&core).map(|l| l.id)
    }

    fn notice(&mut self, n: Notice) {
        match n {
            Notice::Armed {
                probe,
                pid,
                addr,
                location,
            } => {
                let Some(id) = self.id_of(probe) else { return };
                if let Some(l) = self.by_core.get_mut(&probe) {
                    l.symbol = location.clone();
                }
                if let Some(p) = lock(&self.targets.probes).get_mut(&id) {
                    p.placements
                        .retain(|pl| (pl.pid, pl.address) != (pid, addr));
                    p.placements.push(Placement {
                        pid,
                        address: addr,
                        location,
                        placement: "int3: being placed".into(),
                    });
                    p.state = "armed";
                    p.reason = None;
                }
            }
            Notice::Pending { probe, reason, .. } => {
                self.set_state(self.id_of(probe), "pending", reason, None);
            }
            Notice::Refused { probe, pid, reason } => {
                self.set_state(self.id_of(probe), "refused", reason, Some(pid));
                // A refusal found while the program runs (a library loaded
                // later) holds the process until its client says: it goes
                // on untouched, without this probe. (Gone meanwhile: the
                // core says so, and its Exited follows.)
                let _ = self.call(Op::Resume { pid });
            }
            Notice::Gone { probe, pid, reason } => {
                self.set_state(self.id_of(probe), "gone", reason, Some(pid));
            }
            Notice::Placed {
                probe,
                pid,
                addr,
                state,
            } => {
                let Some(id) = self.id_of(probe) else { return };
                if let Some(p) = lock(&self.targets.probes).get_mut(&id) {
                    for pl in &mut p.placements {
                        if (pl.pid, pl.address) == (pid, addr) {
                            pl.placement = state.clone();
                        }
                    }
                }
            }
            Notice::Exited { pid, status } => {
                for l in self.by_core.values() {
                    for a in &l.plugins {
                        a.att.process_exited(pid);
                    }
                }
                {
                    let mut live = lock(&self.targets.probes);
                    for l in self.by_core.values() {
                        if let Some(p) = live.get_mut(&l.id) {
                            p.placements.retain(|pl| pl.pid != pid);
                        }
                    }
                }
                if pid == self.pid {
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
                    if let Err(e) = self.targets.store().target_exited(pid, exit) {
                        eprintln!("wprobe serve: recording the exit of pid {pid}: {e}");
                    }
                }
            }
            Notice::Idle => {
                self.counters();
                self.closed("its target exited");
            }
            Notice::Warning { text } => eprintln!("wprobe serve: target {}: {text}", self.id),
        }
    }

    /// A probe left a process (or could not be placed in it): its state
    /// when no placement is left.
    fn set_state(&self, id: Option<i64>, state: &'static str, reason: String, pid: Option<i32>) {
        let Some(id) = id else { return };
        if let Some(p) = lock(&self.targets.probes).get_mut(&id) {
            if let Some(pid) = pid {
                p.placements.retain(|pl| pl.pid != pid);
            }
            if p.placements.is_empty() {
                p.state = state;
                p.reason = Some(reason);
            }
        }
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

/// Whether target `target`, with `have` probes, may take `adding` more.
pub fn cap_check(target: i64, have: usize, adding: usize, cap: usize) -> Result<(), ApiError> {
    if have + adding > cap {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "target {target} has {have} probes; {adding} more would pass the cap of {cap} \
                 (--max-probes-per-target): remove some first"
            ),
        ));
    }
    Ok(())
}

/// What a caught panic said.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// A numeric field of /proc/PID/status ("TracerPid:", "Tgid:").
fn status_field<T: std::str::FromStr>(status: &str, name: &str) -> Option<T> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].trim().parse().ok()
}

/// Kills target `t`'s process (SIGKILL), through a pidfd opened while its
/// start time was checked, so that a later process with the same pid is
/// never hit. A process already gone is fine.
fn kill_process(t: &Target) -> Result<(), ApiError> {
    if start_time(t.pid) != Some(t.start_time) {
        return Ok(());
    }
    // SAFETY: pidfd_open takes a pid and flags, no memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, t.pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(ApiError::internal(format!("opening pid {}: {e}", t.pid)));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    if start_time(t.pid) != Some(t.start_time) {
        return Ok(());
    }
    // SAFETY: a signal through a valid pidfd; no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(ApiError::internal(format!("killing pid {}: {e}", t.pid)));
        }
    }
    Ok(())
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

/// /proc/PID/exe, or "" when it cannot be read.
pub fn exe(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
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

/// Every process with a command line, by pid, but the service itself and
/// `core` (which cannot be targets).
pub fn processes(core: u32) -> Vec<Process> {
    let users = user_names();
    let me = std::process::id() as i32;
    let core = core as i32;
    let mut list: Vec<Process> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && pid != core)
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
        assert!(processes(0).windows(2).all(|w| w[0].pid < w[1].pid));
    }
}
