//! The engine as its own process, `wprobe-core`, driven over its socket
//! with the protocol of docs/core-protocol.md: requests and replies, events,
//! version mismatch, and — whatever way the client or the core goes — the
//! targets left as they were found.

use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wprobe_core::daemon::MAX_SYNC_DEADLINE_US;
use wprobe_core::proto::{
    self, Body, ErrorKind, Frame, Hello, Mode, Op, ProbeOptions, Request, SpawnStdio,
    PROTOCOL_VERSION,
};
use wprobe_tests::*;

fn core_bin() -> std::path::PathBuf {
    wprobe_bin().with_file_name("wprobe-core")
}

/// A running `wprobe-core` serving clients on a socket.
struct Core {
    child: Child,
    sock: std::path::PathBuf,
}

/// One connection to a core, spoken frame by frame.
struct Conn {
    conn: UnixStream,
    next_id: u32,
    /// Events and other frames read while waiting for a reply.
    events: Vec<proto::Event>,
    losses: u64,
    notices: Vec<proto::Notice>,
    errors: Vec<(ErrorKind, String)>,
}

impl Core {
    fn start(name: &str) -> Core {
        Core::start_with(name, &[])
    }

    fn start_with(name: &str, args: &[&str]) -> Core {
        let sock = scratch_dir().join(format!("{name}.sock"));
        Core::start_at(sock, args)
    }

    fn start_at(sock: std::path::PathBuf, args: &[&str]) -> Core {
        Core::start_to(sock, args, Stdio::null())
    }

    /// A core whose stdout (which the programs it spawns inherit) goes to
    /// `stdout`.
    fn start_to(sock: std::path::PathBuf, args: &[&str], stdout: Stdio) -> Core {
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(core_bin())
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .stdout(stdout)
            .spawn()
            .expect("start wprobe-core");
        assert!(wait_until(60, || sock.exists()), "the core listens");
        Core { child, sock }
    }

    fn connect(&self) -> Conn {
        Conn {
            conn: wprobe_core::proto::sockpath::short(&self.sock)
                .and_then(|short| UnixStream::connect(short.path()))
                .expect("connect"),
            next_id: 1,
            events: Vec::new(),
            losses: 0,
            notices: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A connection past its handshake.
    fn client(&self) -> Conn {
        let mut c = self.connect();
        assert!(matches!(c.hello(PROTOCOL_VERSION), Frame::Welcome(_)));
        c
    }

    /// SIGTERM: every client's targets are let go, and the core exits.
    fn stop(mut self) {
        // SAFETY: signalling the core we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "the core ends cleanly on SIGTERM: {status}"
        );
        assert!(!self.sock.exists(), "and removes its socket");
    }
}

impl Drop for Core {
    /// A test that failed half way does not leave its core behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling the core we started.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

impl Conn {
    fn hello(&mut self, version: u16) -> Frame {
        let hello = Frame::Hello(Hello {
            version,
            client: "core_daemon test".into(),
        });
        proto::write_frame(&mut self.conn, &hello).unwrap();
        proto::read_frame(&mut self.conn)
            .unwrap()
            .expect("an answer to Hello")
    }

    /// Sends a request and returns its reply, keeping what comes between.
    fn call(&mut self, op: Op) -> Frame {
        let id = self.next_id;
        self.next_id += 1;
        proto::write_frame(&mut self.conn, &Frame::Request(Request { id, op })).unwrap();
        loop {
            match proto::read_frame(&mut self.conn).unwrap().expect("a reply") {
                f @ (Frame::Ok { id: i, .. } | Frame::Error { id: i, .. }) if i == id => return f,
                other => self.keep(other),
            }
        }
    }

    /// The body of a successful reply.
    fn ok(&mut self, op: Op) -> Body {
        let what = format!("{op:?}");
        match self.call(op) {
            Frame::Ok { body, .. } => body,
            other => panic!("{what}: {other:?}"),
        }
    }

    /// The kind and message of a refused request.
    fn refused(&mut self, op: Op) -> (ErrorKind, String) {
        let what = format!("{op:?}");
        match self.call(op) {
            Frame::Error { kind, message, .. } => (kind, message),
            other => panic!("{what} should fail: {other:?}"),
        }
    }

    fn probe(&mut self, spec: String) -> u32 {
        match self.ok(async_probe(spec)) {
            Body::Probe { id } => id,
            other => panic!("AddProbe: {other:?}"),
        }
    }

    fn keep(&mut self, f: Frame) {
        match f {
            Frame::Events(batch) => self.events.extend(batch),
            Frame::Loss { count, .. } => self.losses += count,
            Frame::Notice(n) => self.notices.push(n),
            Frame::Error { kind, message, .. } => self.errors.push((kind, message)),
            _ => {}
        }
    }

    /// Reads frames until `n` events have arrived.
    fn events_until(&mut self, n: usize) {
        while self.events.len() < n {
            let f = proto::read_frame(&mut self.conn).unwrap().expect("events");
            self.keep(f);
        }
    }

    /// Reads frames until `cond` holds.
    fn until(&mut self, mut cond: impl FnMut(&Conn) -> bool) {
        while !cond(self) {
            let f = proto::read_frame(&mut self.conn).unwrap().expect("a frame");
            self.keep(f);
        }
    }
}

fn core_client_bin() -> std::path::PathBuf {
    wprobe_bin().with_file_name("core-client")
}

/// `core-client` (tests/bin/core_client.rs): a client in a process of its
/// own, driven line by line, possibly as another user.
struct CoreClient {
    child: Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl CoreClient {
    fn start(bin: &std::path::Path, sock: &std::path::Path, uid: Option<u32>) -> CoreClient {
        CoreClient::start_env(bin, sock, uid, &[])
    }

    fn start_env(
        bin: &std::path::Path,
        sock: &std::path::Path,
        uid: Option<u32>,
        env: &[(&str, &str)],
    ) -> CoreClient {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin);
        cmd.arg(sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .envs(env.iter().copied());
        if let Some(uid) = uid {
            // std drops root's supplementary groups along with the uid.
            cmd.uid(uid).gid(uid).current_dir("/");
        }
        let mut child = cmd.spawn().expect("start core-client");
        CoreClient {
            input: child.stdin.take().unwrap(),
            output: std::io::BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    /// One command, its JSON answer.
    fn ask(&mut self, line: &str) -> serde_json::Value {
        use std::io::{BufRead, Write};
        writeln!(self.input, "{line}").expect("to core-client");
        let mut answer = String::new();
        self.output
            .read_line(&mut answer)
            .expect("from core-client");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("`{line}` → {answer:?}: {e}"))
    }
}

/// Waits until the kernel says `pid` has no tracer.
fn untraced(pid: i32) -> bool {
    wait_until(60, || {
        proc_status(pid, "TracerPid:").as_deref() == Some("0")
    })
}

fn async_probe(spec: String) -> Op {
    Op::AddProbe {
        spec,
        options: ProbeOptions {
            mode: Mode::Async,
            allow_mutation: false,
            sync_deadline_us: 0,
            no_optimize: false,
        },
    }
}

#[test]
fn a_client_that_goes_away_leaves_its_targets_clean() {
    let bin = build("spin", "core-gone", &["-O2"]);
    let target = start_ready(&bin, &["30000", "3"]);
    let pid = target.id() as i32;
    let core = Core::start("gone");
    let mut c = core.client();
    assert_eq!(
        c.call(Op::Ping),
        Frame::Ok {
            id: 1,
            body: Body::Empty
        }
    );
    assert_eq!(
        c.call(Op::Attach { pid }),
        Frame::Ok {
            id: 2,
            body: Body::Target { pid }
        }
    );
    let probe = c.probe(format!("uprobe:{}:work", bin.display()));
    // A refused probe is an error naming the value; nothing changes.
    let (kind, message) = c.refused(async_probe(format!("uprobe:{}:wrok", bin.display())));
    assert_eq!(kind, ErrorKind::Refused);
    assert!(
        message.contains("did you mean") && message.contains("`work`"),
        "{message}"
    );
    c.events_until(200);
    assert!(c.events.iter().all(|e| e.probe == probe && e.pid == pid));
    match c.ok(Op::ListProbes) {
        Body::Probes(list) => {
            assert_eq!(list.len(), 1);
            assert!(list[0].hits >= 200 && list[0].enabled);
            assert_eq!(list[0].placements.len(), 1);
            assert_eq!(list[0].owner_pid, std::process::id() as i32);
        }
        other => panic!("ListProbes: {other:?}"),
    }
    // The client vanishes (as when it is killed: the kernel closes its
    // socket). The core disarms and detaches, and serves on.
    drop(c);
    assert!(untraced(pid), "detached when its client went");
    assert_untouched(pid, &bin, "work");
    let mut again = core.client();
    assert!(matches!(again.call(Op::Ping), Frame::Ok { .. }));
    core.stop();
    assert_eq!(
        finish(target),
        format!("sum={}\n", 3 * (0..30000).map(|i| i * 3 + 1).sum::<i64>())
    );
}

#[test]
fn sigterm_of_the_core_leaves_targets_clean() {
    let bin = build("returns", "core-term", &["-O2"]);
    let target = start_ready(&bin, &["slow", "2000"]);
    let pid = target.id() as i32;
    let core = Core::start("term");
    let mut c = core.client();
    assert!(matches!(c.call(Op::Attach { pid }), Frame::Ok { .. }));
    // Live return instances on four threads, and threads in usleep's slot.
    for spec in [
        format!("uretprobe:{}:slow", bin.display()),
        "uprobe:libc:usleep post".into(),
    ] {
        c.probe(spec);
    }
    c.events_until(100);
    core.stop();
    assert_untouched(pid, &bin, "slow");
    assert_eq!(
        finish(target),
        format!("slow={}\n", 4 * (0..2000).map(|i| i * 2).sum::<i64>())
    );
}

#[test]
fn a_version_mismatch_is_a_clear_error_not_a_hang() {
    let core = Core::start("version");
    let mut c = core.connect();
    match c.hello(PROTOCOL_VERSION + 41) {
        Frame::Incompatible(i) => {
            assert_eq!(i.supported, (1, PROTOCOL_VERSION));
            assert!(
                i.message.contains(&(PROTOCOL_VERSION + 41).to_string()),
                "{}",
                i.message
            );
        }
        other => panic!("expected Incompatible: {other:?}"),
    }
    assert!(
        proto::read_frame(&mut c.conn).unwrap().is_none(),
        "then the core closes"
    );
    // A malformed frame after the handshake: an error naming the value,
    // then the connection closes; the core serves others on.
    let mut bad = core.client();
    use std::io::Write;
    bad.conn
        .write_all(&[6, 0, 0, 0, 0x10, 1, 0, 0, 0, 99])
        .unwrap();
    match proto::read_frame(&mut bad.conn).unwrap() {
        Some(Frame::Error {
            id: 0,
            kind,
            message,
        }) => {
            assert_eq!(kind, ErrorKind::BadRequest);
            assert!(message.contains("99"), "{message}");
        }
        other => panic!("expected BadRequest: {other:?}"),
    }
    assert!(proto::read_frame(&mut bad.conn).unwrap().is_none());
    assert!(matches!(core.client().call(Op::Ping), Frame::Ok { .. }));
    core.stop();
}

#[test]
fn a_slow_client_gets_loss_records_and_control_first() {
    let bin = build("bench_loop", "core-slow", &["-O2"]);
    let core = Core::start_with("slow", &["--queue", "2000"]);
    let mut c = core.client();
    let pid = match c.ok(Op::Spawn {
        argv: vec![bin.to_string_lossy().into_owned(), "150000".into()],
        env: None,
        stdio: SpawnStdio::Inherit,
    }) {
        Body::Target { pid } => pid,
        other => panic!("Spawn: {other:?}"),
    };
    let probe = c.probe(format!("uprobe:{}:bench_target", bin.display()));
    // The program waited for its probe; now it runs.
    assert!(matches!(c.call(Op::Resume { pid }), Frame::Ok { .. }));
    // Read nothing until the program has made all its 150000 hits and
    // gone: the core's queue of 2000 filled and it dropped, however fast
    // or slow the machine is.
    assert!(
        wait_until(120, || proc_status(pid, "State:")
            .is_none_or(|s| s.starts_with('Z'))),
        "the program ends"
    );
    let asked = Instant::now();
    let reply = c.call(Op::DisableProbe { id: probe });
    let took = asked.elapsed();
    assert!(matches!(reply, Frame::Ok { .. }), "{reply:?}");
    eprintln!(
        "DisableProbe answered in {took:?} behind {} queued events",
        c.events.len()
    );
    // Everything recorded is either delivered or counted as lost.
    let stats = match c.ok(Op::Stats) {
        Body::Stats(s) => s,
        other => panic!("Stats: {other:?}"),
    };
    let hits = stats.probes[0].hits;
    assert!(stats.events_dropped > 0, "the queue overflowed: {stats:?}");
    assert_eq!(stats.queue_capacity, 2000);
    // Disabled, the program runs to its end: its Exited, then Idle.
    c.until(|c| c.notices.contains(&proto::Notice::Idle));
    let exited = c
        .notices
        .iter()
        .position(|n| matches!(n, proto::Notice::Exited { pid: p, .. } if *p == pid))
        .expect("Exited");
    assert!(exited < c.notices.len() - 1, "Exited comes before Idle");
    drop(c.conn.shutdown(std::net::Shutdown::Write));
    while let Ok(Some(f)) = proto::read_frame(&mut c.conn) {
        c.keep(f);
    }
    assert!(c.losses > 0, "loss records in the stream");
    assert_eq!(
        c.events.len() as u64 + c.losses,
        hits,
        "delivered + dropped = hits"
    );
    let seqs: Vec<u64> = c.events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(
        *seqs.last().unwrap() <= hits,
        "seq counts every event, dropped ones included"
    );
    core.stop();
}

#[test]
fn sigkill_of_the_client_process_leaves_targets_clean() {
    // The client is a process of its own, killed outright while probes are
    // armed in the executable (a return probe: live instances on four
    // threads) and in libc (post: threads inside slots).
    let bin = build("returns", "core-kill", &["-O2"]);
    let target = start_ready(&bin, &["slow", "3000"]);
    let pid = target.id() as i32;
    let core = Core::start("kill");
    let mut client = CoreClient::start(&core_client_bin(), &core.sock, None);
    assert!(client.ask(&format!("attach {pid}"))["ok"].is_i64());
    for spec in [
        format!("uretprobe:{}:slow", bin.display()),
        "uprobe:libc:usleep post".into(),
    ] {
        assert!(client.ask(&format!("probe {spec}"))["ok"].is_u64());
    }
    assert!(client.ask("events 100")["ok"].is_u64());
    client.child.kill().expect("SIGKILL the client");
    let _ = client.child.wait();
    assert!(untraced(pid), "the core lets go when its client dies");
    assert_untouched(pid, &bin, "slow");
    core.stop();
    assert_eq!(
        finish(target),
        format!("slow={}\n", 4 * (0..3000).map(|i| i * 2).sum::<i64>())
    );
}

#[test]
fn several_clients_each_have_their_own_targets_and_probes() {
    let bin = build("spin", "core-many", &["-O2"]);
    // Long enough to outlive every check below on a loaded machine.
    let t1 = start_ready(&bin, &["50000", "2"]);
    let t2 = start_ready(&bin, &["50000", "1"]);
    let (p1, p2) = (t1.id() as i32, t2.id() as i32);
    let core = Core::start("many");
    let mut a = core.client();
    let mut b = core.client();
    assert!(matches!(a.call(Op::Attach { pid: p1 }), Frame::Ok { .. }));
    assert!(matches!(b.call(Op::Attach { pid: p2 }), Frame::Ok { .. }));
    // One tracer per process: the second client is told who has it.
    let (kind, message) = b.refused(Op::Attach { pid: p1 });
    assert_eq!(kind, ErrorKind::Permission, "{message}");
    assert!(
        message.contains("another client of this wprobe-core"),
        "{message}"
    );
    // The same spec in both: two probes, each armed in its client's process.
    let spec = format!("uprobe:{}:work", bin.display());
    let pa = a.probe(spec.clone());
    let pb = b.probe(spec);
    assert_ne!(pa, pb, "probe ids are unique in the core");
    a.events_until(100);
    b.events_until(100);
    assert!(a.events.iter().all(|e| e.probe == pa && e.pid == p1));
    assert!(b.events.iter().all(|e| e.probe == pb && e.pid == p2));
    // A client cannot touch another's probe.
    let (kind, _) = b.refused(Op::DisableProbe { id: pa });
    assert_eq!(kind, ErrorKind::NoProbe);
    let (kind, _) = b.refused(Op::Detach { pid: p1 });
    assert_eq!(kind, ErrorKind::NoTarget);
    // Root's clients see every client's probes, marked with their owner.
    match b.ok(Op::ListProbes) {
        Body::Probes(list) => {
            let ids: Vec<u32> = list.iter().map(|p| p.id).collect();
            assert_eq!(ids, vec![pb, pa], "its own first, then the others'");
            assert!(list.iter().all(|p| p.owner_uid == 0));
            assert_eq!(list[1].placements[0].pid, p1);
        }
        other => panic!("ListProbes: {other:?}"),
    }
    // One client leaves: its target is let go, the other's stays probed.
    drop(a);
    assert!(untraced(p1));
    assert_untouched(p1, &bin, "work");
    let before = b.events.len();
    b.events_until(before + 100);
    let tracer: i32 = proc_status(p2, "TracerPid:").unwrap().parse().unwrap();
    assert_eq!(
        wprobe_core::target::ptrace::thread_group_of(tracer),
        Some(core.child.id() as i32),
        "still traced by the core"
    );
    core.stop();
    assert_untouched(p2, &bin, "work");
    let sum = |n: i64, t: i64| format!("sum={}\n", t * (0..n).map(|i| i * 3 + 1).sum::<i64>());
    assert_eq!(finish(t1), sum(50000, 2));
    assert_eq!(finish(t2), sum(50000, 1));
}

fn sync_probe(spec: String, allow_mutation: bool, sync_deadline_us: u32) -> Op {
    Op::AddProbe {
        spec,
        options: ProbeOptions {
            mode: Mode::Sync,
            allow_mutation,
            sync_deadline_us,
            no_optimize: false,
        },
    }
}

impl Conn {
    /// Spawns `argv` with `probe` added, lets it run, and answers each of
    /// its sync events with `answer` (None: no verdict) until it exits.
    fn run_sync(
        &mut self,
        argv: &[String],
        probe: Op,
        mut answer: impl FnMut(&proto::Event) -> Option<proto::Action>,
    ) -> u32 {
        let pid = match self.ok(Op::Spawn {
            argv: argv.to_vec(),
            env: None,
            stdio: SpawnStdio::Inherit,
        }) {
            Body::Target { pid } => pid,
            other => panic!("Spawn: {other:?}"),
        };
        let id = match self.ok(probe) {
            Body::Probe { id } => id,
            other => panic!("AddProbe: {other:?}"),
        };
        assert!(matches!(self.call(Op::Resume { pid }), Frame::Ok { .. }));
        let mut answered = 0;
        loop {
            while answered < self.events.len() {
                let e = self.events[answered].clone();
                answered += 1;
                assert!(e.sync, "events of a sync probe say so");
                if let Some(a) = answer(&e) {
                    let v = Frame::Verdict {
                        seq: e.seq,
                        action: a,
                    };
                    proto::write_frame(&mut self.conn, &v).unwrap();
                }
            }
            if self
                .notices
                .iter()
                .any(|n| matches!(n, proto::Notice::Exited { pid: p, .. } if *p == pid))
            {
                break;
            }
            let f = proto::read_frame(&mut self.conn).unwrap().expect("frames");
            self.keep(f);
        }
        id
    }
}

#[test]
fn sync_probes_wait_for_verdicts_and_mutate_only_when_allowed() {
    let bin = build("basic", "core-sync", &["-O2"]);
    let out = scratch_dir().join("core-sync.out");
    let core = Core::start_to(
        scratch_dir().join("sync.sock"),
        &[],
        Stdio::from(std::fs::File::create(&out).unwrap()),
    );
    let mut c = core.client();
    let argv = vec![bin.to_string_lossy().into_owned(), "10".into()];
    let work = format!("uretprobe:{}:work", bin.display());
    let hidden: i64 = (0..10).map(|i: i64| i ^ 0x5a).sum();
    let plain = (0..10).map(|i: i64| i * 3 + 1).sum::<i64>() + hidden + 8;

    // Allowed to mutate: each call of work returns what the verdict says.
    let p = c.run_sync(
        &argv,
        sync_probe(work.clone(), true, MAX_SYNC_DEADLINE_US),
        |e| {
            let arg = e.ret.as_ref().expect("return event").entry_args[0];
            Some(proto::Action::SetReturn(1000 + arg))
        },
    );
    assert_eq!(c.events.len(), 10);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    c.ok(Op::RemoveProbe { id: p });

    // Not allowed: the verdict is refused, the thread goes on unchanged,
    // and the connection stays.
    c.events.clear();
    let p = c.run_sync(
        &argv,
        sync_probe(work.clone(), false, MAX_SYNC_DEADLINE_US),
        |_| Some(proto::Action::SetReturn(5)),
    );
    c.ok(Op::RemoveProbe { id: p });
    assert_eq!(c.errors.len(), 10, "{:?}", c.errors);
    assert!(c
        .errors
        .iter()
        .all(|(k, m)| *k == ErrorKind::BadVerdict && m.contains("allow_mutation")));

    // No verdict at all: each hit waits out its deadline and counts as
    // missed; a late or unknown verdict is refused.
    c.events.clear();
    c.errors.clear();
    let p = c.run_sync(&argv, sync_probe(work, true, 2_000), |_| None);
    match c.ok(Op::ListProbes) {
        Body::Probes(list) => {
            let me = list.iter().find(|i| i.id == p).expect("the probe");
            assert_eq!((me.hits, me.nmissed), (10, 10));
            assert_eq!(me.options.sync_deadline_us, 2_000);
        }
        other => panic!("{other:?}"),
    }
    proto::write_frame(
        &mut c.conn,
        &Frame::Verdict {
            seq: 999_999,
            action: proto::Action::Continue,
        },
    )
    .unwrap();
    c.until(|c| !c.errors.is_empty());
    assert_eq!(c.errors[0].0, ErrorKind::BadVerdict);
    assert!(c.errors[0].1.contains("999999"), "{}", c.errors[0].1);

    // Options that make no sense are refused, naming the value.
    let (kind, m) = c.refused(sync_probe(
        format!("uprobe:{}:work", bin.display()),
        true,
        9_000_000,
    ));
    assert_eq!(kind, ErrorKind::Spec);
    assert!(m.contains("9000000"), "{m}");
    let (kind, m) = c.refused(Op::AddProbe {
        spec: format!("uprobe:{}:work", bin.display()),
        options: ProbeOptions {
            mode: Mode::Async,
            allow_mutation: true,
            sync_deadline_us: 0,
            no_optimize: false,
        },
    });
    assert_eq!(kind, ErrorKind::Spec);
    assert!(m.contains("allow_mutation"), "{m}");
    core.stop();
    let printed = std::fs::read_to_string(&out).unwrap();
    let mutated = (0..10).map(|i: i64| 1000 + i).sum::<i64>() + hidden + 8;
    assert_eq!(
        printed,
        format!("sum={mutated}\nsum={plain}\nsum={plain}\n"),
        "only the allowed verdicts changed what the program computed"
    );
}

/// A directory every user may read, holding copies of the binaries a test
/// runs as another user (the build tree may sit under a private home).
fn shared_dir(name: &str, bins: &[&std::path::Path]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("wprobe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for b in bins {
        let to = dir.join(b.file_name().unwrap());
        std::fs::copy(b, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// `spin` started as user `uid`, once it said it is ready.
fn spin_as(bin: &std::path::Path, uid: u32, args: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdout(Stdio::piped()).current_dir("/");
    // std drops root's supplementary groups along with the uid.
    cmd.uid(uid).gid(uid);
    let mut child = cmd.spawn().expect("spin as another user");
    read_ready(&mut child);
    child
}

#[test]
fn system_mode_lets_each_user_trace_only_what_it_could() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: system mode needs the tests to run as root");
        return;
    }
    // Two users that exist only as numbers: this test's own.
    let (alice, bob) = (47231u32, 47232u32);
    let built = build("spin", "core-system", &["-O2"]);
    let dir = shared_dir("system", &[&built, &core_client_bin()]);
    let bin = dir.join(built.file_name().unwrap());
    let client_bin = dir.join("core-client");
    let core = Core::start_at(dir.join("core.sock"), &["--system"]);
    let mode = std::fs::metadata(&core.sock).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o666, "anyone may connect");

    let roots = start_ready(&bin, &["50000", "1"]);
    let alices = spin_as(&bin, alice, &["50000", "1"]);
    let (root_pid, alice_pid) = (roots.id() as i32, alices.id() as i32);

    let mut a = CoreClient::start(&client_bin, &core.sock, Some(alice));
    // Root's process: refused, saying why; nothing is touched.
    let r = a.ask(&format!("attach {root_pid}"));
    assert_eq!(r["error"], "Permission", "{r}");
    let m = r["message"].as_str().unwrap();
    assert!(
        m.contains(&format!("user {alice} may not trace process {root_pid}")),
        "{m}"
    );
    assert_eq!(proc_status(root_pid, "TracerPid:").as_deref(), Some("0"));
    // Her own: yes.
    assert_eq!(a.ask(&format!("attach {alice_pid}"))["ok"], alice_pid);
    let spec = format!("uprobe:{}:work", bin.display());
    let pa = a.ask(&format!("probe {spec}"))["ok"].as_u64().unwrap();
    assert!(a.ask("events 50")["ok"].is_u64());
    // What she spawns runs as her, not as the core's root.
    let spawned = a.ask(&format!("spawn {} 10 1", bin.display()))["ok"]
        .as_i64()
        .unwrap() as i32;
    let uids = proc_status(spawned, "Uid:").unwrap();
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        vec![alice.to_string(); 4],
        "spawned as alice"
    );
    assert_eq!(
        proc_status(spawned, "NoNewPrivs:").as_deref(),
        Some("1"),
        "a set-user-ID program gains nothing under the root core"
    );
    assert!(a.ask(&format!("resume {spawned}"))["ok"].is_null());

    // Bob may not touch alice's process, and sees none of her probes.
    let mut b = CoreClient::start(&client_bin, &core.sock, Some(bob));
    let r = b.ask(&format!("attach {alice_pid}"));
    assert_eq!(r["error"], "Permission", "{r}");
    assert_eq!(b.ask("list")["ok"], serde_json::json!([]));

    // Root traces its own process beside them, and sees every probe.
    let mut root = core.client();
    assert!(matches!(
        root.call(Op::Attach { pid: root_pid }),
        Frame::Ok { .. }
    ));
    let pr = root.probe(spec);
    match root.ok(Op::ListProbes) {
        Body::Probes(list) => {
            let owners: Vec<(u32, u32)> = list.iter().map(|p| (p.id, p.owner_uid)).collect();
            assert_eq!(owners, vec![(pr, 0), (pa as u32, alice)]);
        }
        other => panic!("{other:?}"),
    }
    // Alice sees only her own.
    let list = a.ask("list")["ok"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["owner_uid"], alice);

    // Alice's client dies: her process is let go, root's stays probed.
    a.child.kill().unwrap();
    let _ = a.child.wait();
    assert!(untraced(alice_pid));
    assert_untouched(alice_pid, &bin, "work");
    assert_ne!(proc_status(root_pid, "TracerPid:").as_deref(), Some("0"));
    drop(b);
    core.stop();
    assert_untouched(root_pid, &bin, "work");
    let sum = format!("sum={}\n", (0..50000).map(|i: i64| i * 3 + 1).sum::<i64>());
    assert_eq!(finish(roots), sum);
    assert_eq!(finish(alices), sum);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the tests run as root (system mode and other users need it).
fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        // CI runs as root: there a skip would pass without testing.
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but not root: this test acts as a second user"
        );
        eprintln!("skipped: this test needs to run as root");
    }
    root
}

/// The user the security tests act as.
const NOBODY: u32 = 65534;

/// `setpriv` running `argv` as nobody with `extra` options (capabilities).
fn as_nobody(extra: &[&str], argv: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(extra)
        .args(argv)
        .current_dir("/");
    cmd
}

/// Processes SIGKILLed when it drops.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: killing a process the test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The effective capability set of a process.
fn cap_effective(pid: i32) -> u64 {
    u64::from_str_radix(&proc_status(pid, "CapEff:").unwrap(), 16).unwrap()
}

/// The permitted capability set of a process.
fn cap_permitted(pid: i32) -> u64 {
    u64::from_str_radix(&proc_status(pid, "CapPrm:").unwrap(), 16).unwrap()
}

#[test]
fn system_mode_refuses_a_process_holding_capabilities_its_user_lacks() {
    if !root() {
        return;
    }
    let built = build("spin", "core-caps", &["-O2"]);
    let dir = shared_dir("caps", &[&built, &core_client_bin()]);
    let bin = dir.join(built.file_name().unwrap());
    let core = Core::start_at(dir.join("core.sock"), &["--system"]);
    let b = bin.to_str().unwrap();

    // nobody's process that holds CAP_DAC_READ_SEARCH (ambient): nobody
    // could not ptrace it (the kernel's cap_ptrace_access_check).
    let caps = [
        "--inh-caps",
        "+dac_read_search",
        "--ambient-caps",
        "+dac_read_search",
    ];
    let mut capped = as_nobody(&caps, &[b, "20000", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    read_ready(&mut capped);
    let capped_pid = capped.id() as i32;
    assert_ne!(
        cap_permitted(capped_pid),
        0,
        "the process holds a capability"
    );
    let mut plain = as_nobody(&[], &[b, "20000", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    read_ready(&mut plain);
    let plain_pid = plain.id() as i32;

    let mut c = CoreClient::start(&dir.join("core-client"), &core.sock, Some(NOBODY));
    let r = c.ask(&format!("attach {capped_pid}"));
    assert_eq!(r["error"], "Permission", "{r}");
    let m = r["message"].as_str().unwrap();
    assert!(
        m.contains("cap_dac_read_search") && m.contains(&format!("process {capped_pid}")),
        "{m}"
    );
    assert_eq!(proc_status(capped_pid, "TracerPid:").as_deref(), Some("0"));
    // Its own process without capabilities: yes.
    assert_eq!(c.ask(&format!("attach {plain_pid}"))["ok"], plain_pid);
    assert!(c.ask(&format!("detach {plain_pid}"))["ok"].is_null());

    let sum = format!("sum={}\n", (0..20000).map(|i: i64| i * 3 + 1).sum::<i64>());
    assert_eq!(finish(capped), sum);
    assert_eq!(finish(plain), sum);
    drop(c);
    core.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client of nobody's whose connecting process then runs a set-user-ID
/// root program (while its parent keeps the socket) gains nothing: the
/// capabilities /proc shows by the time the core looks are not the
/// client's. The core is stopped until the exec happened, so the check
/// always sees the root program.
#[test]
fn a_client_whose_connecting_process_exec_d_set_user_id_root_gains_nothing() {
    use std::os::unix::fs::PermissionsExt;
    if !root() {
        return;
    }
    let built = build("spin", "core-suid", &["-O2"]);
    let dir = shared_dir("suid", &[&built, &core_client_bin()]);
    let suid = dir.join("suid-spin");
    std::fs::copy(&built, &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // root's own process.
    let mut roots = Command::new(&built)
        .args(["20000", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    read_ready(&mut roots);
    let root_pid = roots.id() as i32;
    let core = Core::start_at(dir.join("core.sock"), &["--system"]);
    let core_pid = core.child.id() as i32;
    // SAFETY: stopping the core this test started (continued below).
    unsafe { libc::kill(core_pid, libc::SIGSTOP) };
    let mut c = {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(dir.join("core-client"));
        cmd.arg(&core.sock)
            .arg("--connect-in-child-then")
            .arg(&suid)
            .args(["100000000", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .uid(NOBODY)
            .gid(NOBODY)
            .current_dir("/");
        let mut child = cmd.spawn().expect("start core-client");
        CoreClient {
            input: child.stdin.take().unwrap(),
            output: std::io::BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    };
    let connected: serde_json::Value = {
        use std::io::BufRead;
        let mut line = String::new();
        c.output.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let child = connected["connected"]
        .as_i64()
        .expect("the child connected") as i32;
    // Killed however the test ends (it is root's now, and holds the pipe
    // of the test's output).
    let _kill = KillOnDrop(vec![child, roots.id() as i32]);
    assert!(
        wait_until(60, || proc_status(child, "Uid:")
            .is_some_and(|u| u.split_whitespace().nth(1) == Some("0"))),
        "the child runs the set-user-ID program"
    );
    assert_ne!(cap_effective(child), 0, "and holds root's capabilities");
    // SAFETY: continuing the core stopped above.
    unsafe { libc::kill(core_pid, libc::SIGCONT) };
    let r = c.ask(&format!("attach {root_pid}"));
    assert_eq!(r["error"], "Permission", "{r}");
    assert_eq!(proc_status(root_pid, "TracerPid:").as_deref(), Some("0"));
    drop(_kill);
    let _ = roots.wait();
    drop(c);
    core.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn system_mode_lets_go_a_process_whose_execve_gained_capabilities() {
    if !root() {
        return;
    }
    let built = build("spin", "core-execcaps", &["-O2"]);
    let dir = shared_dir("execcaps", &[&built, &core_client_bin()]);
    let bin = dir.join(built.file_name().unwrap());
    // A program with a file capability: whoever runs it gains it.
    let status = Command::new("setcap")
        .arg("cap_dac_read_search+ep")
        .arg(&bin)
        .status()
        .expect("setcap (libcap2-bin)");
    assert!(status.success());
    let core = Core::start_at(dir.join("core.sock"), &["--system"]);

    // nobody's shell, which runs the program when told to.
    let script = format!("read go; exec {} 20000 1", bin.display());
    let mut sh = as_nobody(&[], &["/bin/sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let pid = sh.id() as i32;
    // Once setpriv has become the shell: before its execve, a process that
    // changed its uid is not dumpable, and nobody could not trace it.
    assert!(
        wait_until(20, || std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end() == "sh")),
        "setpriv did not run the shell"
    );
    // The shell is nobody's, without capabilities: nobody may trace it,
    // and follows it through execve.
    let mut c = CoreClient::start(&dir.join("core-client"), &core.sock, Some(NOBODY));
    assert_eq!(c.ask(&format!("attach {pid}"))["ok"], pid);
    assert!(c.ask("follow")["ok"].is_null());
    assert_ne!(proc_status(pid, "TracerPid:").as_deref(), Some("0"));
    {
        use std::io::Write;
        writeln!(sh.stdin.as_mut().unwrap(), "go").unwrap();
    }
    read_ready(&mut sh);
    assert_ne!(
        cap_permitted(pid),
        0,
        "the new image holds the file's capability"
    );
    // At the exec stop the core checked again: nobody could not trace
    // this process now, so it was let go.
    assert!(
        untraced(pid),
        "let go after an execve that gained capabilities"
    );
    let sum = format!("sum={}\n", (0..20000).map(|i: i64| i * 3 + 1).sum::<i64>());
    assert_eq!(finish(sh), sum);
    drop(c);
    core.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lines of a selfreport file once it is complete.
fn report(path: &std::path::Path) -> Vec<String> {
    assert!(
        wait_until(20, || std::fs::read_to_string(path)
            .is_ok_and(|t| t.ends_with("end\n"))),
        "{} was written",
        path.display()
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn lines_with<'a>(report: &'a [String], prefix: &str) -> Vec<&'a str> {
    report
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .collect()
}

/// What every spawned program must be given, whoever asked: default
/// signal dispositions, nothing blocked, descriptors 0–2 only.
fn assert_clean_start(report: &[String]) {
    assert_eq!(
        lines_with(report, "ignored "),
        Vec::<&str>::new(),
        "SIG_IGN inherited"
    );
    assert_eq!(
        lines_with(report, "blocked "),
        Vec::<&str>::new(),
        "signals blocked"
    );
    let fds: Vec<&str> = lines_with(report, "fd ")
        .into_iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "descriptors: {report:?}");
}

#[test]
fn a_program_spawned_for_a_user_gets_nothing_of_the_system_core() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !root() {
        return;
    }
    let built = build("selfreport", "core-selfreport", &[]);
    let dir = shared_dir("spawnclean", &[&built, &core_client_bin()]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let bin = dir.join(built.file_name().unwrap());
    // The root core has a secret in its environment, a terminal-like
    // stdin (a pipe here), a log as stdout, and a stray descriptor 9.
    let sock = dir.join("core.sock");
    let stray = std::fs::File::create(dir.join("stray")).unwrap();
    let stray_fd = std::os::fd::AsRawFd::as_raw_fd(&stray);
    let mut cmd = Command::new(core_bin());
    cmd.arg("--socket")
        .arg(&sock)
        .arg("--system")
        .env("WPROBE_SECRET", "hunter2")
        .env("HOME", "/root")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(dir.join("core.log")).unwrap());
    // SAFETY: dup2 is async-signal-safe; the descriptor is open.
    unsafe {
        cmd.pre_exec(move || {
            libc::dup2(stray_fd, 9);
            Ok(())
        })
    };
    let mut core_child = cmd.spawn().expect("start wprobe-core");
    assert!(wait_until(10, || sock.exists()));

    let mut c = CoreClient::start_env(
        &dir.join("core-client"),
        &sock,
        Some(NOBODY),
        &[("WPROBE_SECRET_OF_THE_CLIENT", "not-root")],
    );
    // Nothing said: /dev/null and a clean environment.
    let out = dir.join("unsaid.txt");
    let pid = c.ask(&format!("spawn {} {}", bin.display(), out.display()))["ok"]
        .as_i64()
        .unwrap();
    assert!(c.ask(&format!("resume {pid}"))["ok"].is_null());
    let r = report(&out);
    assert_eq!(
        lines_with(&r, "env "),
        ["PATH=/usr/local/bin:/usr/bin:/bin"],
        "only a clean PATH"
    );
    let targets: Vec<&str> = lines_with(&r, "fd ")
        .into_iter()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    assert_eq!(targets, ["/dev/null"; 3]);
    assert!(r.contains(&"session LEADER".to_string()), "{r:?}");
    assert!(r.contains(&"tty NO".to_string()), "{r:?}");
    assert_clean_start(&r);

    // The client's own descriptors and environment, passed over the
    // socket.
    let out = dir.join("passed.txt");
    let pid = c.ask(&format!("spawn_here {} {}", bin.display(), out.display()))["ok"]
        .as_i64()
        .unwrap();
    assert!(c.ask(&format!("resume {pid}"))["ok"].is_null());
    let r = report(&out);
    let client_out = std::fs::read_link(format!("/proc/{}/fd/1", c.child.id())).unwrap();
    assert!(
        r.contains(&format!("fd 1 {}", client_out.display())),
        "stdout is the client's {client_out:?}: {r:?}"
    );
    let env = lines_with(&r, "env ");
    assert!(!env.iter().any(|v| v.contains("hunter2")), "{env:?}");
    assert!(
        env.contains(&"WPROBE_SECRET_OF_THE_CLIENT=not-root"),
        "{env:?}"
    );
    assert!(r.contains(&"session LEADER".to_string()), "{r:?}");
    assert_clean_start(&r);

    drop(c);
    // SAFETY: signalling the core we started.
    unsafe { libc::kill(core_child.id() as i32, libc::SIGTERM) };
    assert!(core_child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wprobe_trace_starts_its_command_with_default_signals_and_no_stray_descriptors() {
    let bin = build("selfreport", "trace-selfreport", &[]);
    let out = scratch_dir().join("trace-selfreport.txt");
    let _ = std::fs::remove_file(&out);
    let t = trace(&[
        "-e",
        &format!("uprobe:{}:main", bin.display()),
        "--",
        bin.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(t.hits(1), 1);
    let r = report(&out);
    assert_clean_start(&r);
    // Like a shell's command: in the terminal's session, with the
    // environment of the command that ran it.
    assert!(r.contains(&"session MEMBER".to_string()), "{r:?}");
    assert!(lines_with(&r, "env ")
        .iter()
        .any(|v| v.starts_with("PATH=")));
}

#[test]
fn a_failed_spawn_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let core = Core::start("spawnfail");
    let mut c = core.client();
    let dir = scratch_dir().join("spawnfail");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script");
    std::fs::write(&script, "#!/nonexistent/interpreter\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let unrunnable = dir.join("unrunnable");
    std::fs::write(&unrunnable, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&unrunnable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = build("spin", "spawnfail", &["-O2"]);
    let spawn = |argv: Vec<String>| Op::Spawn {
        argv,
        env: None,
        stdio: SpawnStdio::Inherit,
    };
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![s(&script)],
            "No such file or directory (os error 2): the interpreter `/nonexistent/interpreter` \
             named on its #! line does not exist",
        ),
        // One argument longer than the kernel's MAX_ARG_STRLEN (128 KiB).
        (vec![s(&bin), "x".repeat(200_000)], "Argument list too long"),
    ];
    for (argv, want) in cases {
        let (kind, m) = c.refused(spawn(argv));
        assert_eq!(kind, ErrorKind::Target, "{m}");
        assert!(m.contains(want), "{m}");
        assert!(!m.contains("Exec format error"), "{m}");
    }
    // No execute bit at all: even root may not run it.
    let (kind, m) = c.refused(spawn(vec![s(&unrunnable)]));
    assert_eq!(kind, ErrorKind::Permission, "{m}");
    assert!(m.contains("Permission denied"), "{m}");
    // And a file that is no program at all is said to be one.
    let junk = dir.join("junk");
    std::fs::write(&junk, [0u8; 64]).unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_, m) = c.refused(spawn(vec![s(&junk)]));
    assert!(m.contains("Exec format error"), "{m}");
    drop(c);
    core.stop();
}

#[test]
fn a_reply_too_large_for_a_frame_is_an_error_reply_and_the_connection_goes_on() {
    let bin = build("spin", "core-bigreply", &["-O2"]);
    let core = Core::start("bigreply");
    let mut c = core.client();
    // A reply that never comes would hang the test: fail instead.
    c.conn
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let child = start_ready(&bin, &["100000", "1"]);
    let pid = child.id() as i32;
    assert!(matches!(c.ok(Op::Attach { pid }), Body::Target { .. }));
    // A 600 KB spec naming a missing symbol: its error would quote it.
    let name = "x".repeat(600_000);
    let (kind, m) = c.refused(async_probe(format!("uprobe:{}:{name}", bin.display())));
    assert_eq!(kind, ErrorKind::Spec, "{m}");
    assert!(m.len() < 8192, "the message is bounded: {} bytes", m.len());
    assert!(
        m.contains("the longest spec accepted is 16384 bytes"),
        "{m}"
    );
    // A long name the spec limit lets through: the suggestion work is
    // bounded too, and the answer comes.
    let (kind, m) = c.refused(async_probe(format!(
        "uprobe:{}:{}",
        bin.display(),
        "y".repeat(15_000)
    )));
    assert_ne!(kind, ErrorKind::Limit, "{m}");
    assert!(m.len() < 8192, "{}", m.len());
    // Still served.
    assert!(matches!(c.ok(Op::Ping), Body::Empty));
    let probe = c.probe(format!("uprobe:{}:work", bin.display()));
    c.events_until(1);
    assert!(matches!(c.ok(Op::RemoveProbe { id: probe }), Body::Empty));
    drop(c);
    assert!(untraced(pid));
    assert_untouched(pid, &bin, "work");
    let _ = finish(child);
    core.stop();
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_its_targets_let_go() {
    let bin = build("spin", "core-deaf", &["-O2"]);
    let core = Core::start_with("deaf", &["--client-timeout", "1", "--queue", "100000"]);
    let mut c = core.client();
    let child = start_ready(&bin, &["100000000", "1"]);
    let pid = child.id() as i32;
    assert!(matches!(c.ok(Op::Attach { pid }), Body::Target { .. }));
    c.probe(format!("uprobe:{}:work", bin.display()));
    // From here on the client reads nothing: events fill the socket, the
    // core's writer blocks, and after --client-timeout the connection
    // ends — with the target let go and restored, though the client
    // never closed anything.
    assert!(
        untraced(pid)
            || wait_until(60, || proc_status(pid, "TracerPid:").as_deref()
                == Some("0")),
        "the target is let go"
    );
    assert_untouched(pid, &bin, "work");
    // The connection is closed: what is left to read ends.
    c.conn
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let ended = loop {
        match proto::read_frame(&mut c.conn) {
            Ok(Some(_)) => continue,
            Ok(None) => break true,
            Err(proto::ProtoError::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    assert!(ended, "the core closed the connection");
    let mut child = child;
    child.kill().unwrap();
    let _ = child.wait();
    core.stop();
}

/// A core out of descriptors leaves the connections it cannot accept in
/// the backlog, says so once per ten seconds at most (not on every turn of
/// its loop), and accepts them once descriptors are free again.
#[test]
fn a_core_out_of_descriptors_backs_off_says_so_once_and_recovers() {
    use std::os::unix::process::CommandExt;
    let sock = scratch_dir().join("nofile.sock");
    let log = scratch_dir().join("nofile.stderr");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(core_bin());
    cmd.arg("--socket")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 24,
                rlim_max: 24,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start wprobe-core");
    let core = Core {
        child,
        sock: sock.clone(),
    };
    assert!(wait_until(60, || sock.exists()), "the core listens");
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let said = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("cannot accept a connection"))
            .count()
    };
    let pid = core.child.id();
    // Raw connections, each accepted (a descriptor more in the core) until
    // the core has none left and says so.
    let mut held = Vec::new();
    let start = Instant::now();
    while said() == 0 {
        assert!(held.len() < 64, "the core never ran out of descriptors");
        let before = fds(pid);
        held.push(core.connect());
        assert!(
            wait_until(60, || fds(pid) > before || said() > 0),
            "the connection was accepted, or the core said it cannot"
        );
    }
    // Twenty more while it has none: each waits or is told, and stderr is
    // not flooded (the bound below holds however long this takes).
    for _ in 0..20 {
        held.push(core.connect());
    }
    // The last one waits in the backlog, or was told why not (a Limit
    // error, when it took the last descriptor): never dropped unanswered.
    let mut last = held.pop().expect("the last connection");
    drop(held);
    last.conn
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _ = proto::write_frame(
        &mut last.conn,
        &Frame::Hello(wprobe_core::proto::Hello {
            version: PROTOCOL_VERSION,
            client: "last".into(),
        }),
    );
    match proto::read_frame(&mut last.conn) {
        Ok(Some(Frame::Welcome(_))) => {}
        Ok(Some(Frame::Error { kind, message, .. })) => {
            assert_eq!(kind, ErrorKind::Limit, "{message}");
            assert!(message.contains("out of file descriptors"), "{message}");
        }
        other => panic!("the last connection got {other:?}"),
    }
    // Everything let go: a new client is served.
    let _new = core.client();
    let lines = said();
    let allowed = 1 + start.elapsed().as_secs() as usize / 10 + 1;
    assert!(
        lines <= allowed,
        "{lines} lines about it in {:?}, one per ten seconds at most",
        start.elapsed()
    );
    drop(last);
    core.stop();
}

#[test]
fn connections_beyond_the_limits_are_refused_and_counted_back() {
    let core = Core::start_with("connlimit", &["--max-connections", "2"]);
    let a = core.client();
    let _b = core.client();
    // The core answers a connection too many at once, without waiting
    // for its Hello.
    let mut c = core.connect();
    match proto::read_frame(&mut c.conn).unwrap() {
        Some(Frame::Error { kind, message, .. }) => {
            assert_eq!(kind, ErrorKind::Limit);
            assert!(message.contains("--max-connections 2"), "{message}");
        }
        other => panic!("a third connection: {other:?}"),
    }
    drop(a);
    // Its place is free once the core has seen it go.
    assert!(wait_until(20, || {
        let mut d = core.connect();
        let hello = Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: "core_daemon test".into(),
        });
        proto::write_frame(&mut d.conn, &hello).is_ok()
            && matches!(proto::read_frame(&mut d.conn), Ok(Some(Frame::Welcome(_))))
    }));
    drop(_b);
    core.stop();

    if !root() {
        return;
    }
    let dir = shared_dir("uidlimit", &[&core_client_bin()]);
    let core = Core::start_at(
        dir.join("core.sock"),
        &["--system", "--max-connections-per-uid", "2"],
    );
    let client = dir.join("core-client");
    let mut one = CoreClient::start(&client, &core.sock, Some(NOBODY));
    let mut two = CoreClient::start(&client, &core.sock, Some(NOBODY));
    assert!(one.ask("ping")["ok"].is_null());
    assert!(two.ask("ping")["ok"].is_null());
    let mut three = CoreClient::start(&client, &core.sock, Some(NOBODY));
    let r = three.ask("ping");
    assert_eq!(r["error"], "connect", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("--max-connections-per-uid 2"),
        "{r}"
    );
    // Root is not counted against a user's limit.
    let mut root_conn = core.client();
    assert!(matches!(root_conn.ok(Op::Ping), Body::Empty));
    drop(one);
    drop(two);
    core.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The state letter of /proc/PID/stat ('Z' for a zombie), if it exists.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn a_spawned_program_let_go_is_reaped_after_its_client_left() {
    let bin = build("spin", "core-orphan", &["-O2"]);
    let core = Core::start("orphan");
    let mut c = core.client();
    let pid = match c.ok(Op::Spawn {
        argv: vec![bin.to_string_lossy().into_owned(), "100000000".into()],
        env: None,
        stdio: SpawnStdio::Null,
    }) {
        Body::Target { pid } => pid,
        other => panic!("{other:?}"),
    };
    assert!(matches!(c.ok(Op::Resume { pid }), Body::Empty));
    assert!(matches!(c.ok(Op::Detach { pid }), Body::Empty));
    // The client goes; its program runs on, untraced, then ends.
    drop(c);
    assert!(untraced(pid));
    // SAFETY: killing the program this test had spawned.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        wait_until(30, || proc_state(pid).is_none()),
        "reaped, not left a zombie: state {:?}",
        proc_state(pid)
    );
    core.stop();
}

#[test]
fn a_panic_in_one_connection_lets_its_targets_go_and_spares_the_others() {
    let bin = build("spin", "core-panic", &["-O2"]);
    let sock = scratch_dir().join("panic.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(core_bin())
        .arg("--socket")
        .arg(&sock)
        .env("WPROBE_CORE_FAULT_INJECTION", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wprobe-core");
    assert!(wait_until(10, || sock.exists()), "the core listens");
    let core = Core { child, sock };
    let spec = format!("uprobe:{}:work", bin.display());

    let (mut a, mut b) = (core.client(), core.client());
    let xa = start_ready(&bin, &["100000000", "2"]);
    let xb = start_ready(&bin, &["100000000", "2"]);
    let (pa, pb) = (xa.id() as i32, xb.id() as i32);
    assert!(matches!(a.ok(Op::Attach { pid: pa }), Body::Target { .. }));
    assert!(matches!(b.ok(Op::Attach { pid: pb }), Body::Target { .. }));
    a.probe(spec.clone());
    b.probe(spec);
    a.events_until(1);
    b.events_until(1);

    // A bug on a's engine thread: a's connection ends, its target is let
    // go with every byte restored.
    let id = a.next_id;
    proto::write_frame(
        &mut a.conn,
        &Frame::Request(Request {
            id,
            op: async_probe("wprobe-test:panic".into()),
        }),
    )
    .unwrap();
    let closed = loop {
        match proto::read_frame(&mut a.conn) {
            Ok(Some(Frame::Ok { id: i, .. } | Frame::Error { id: i, .. })) if i == id => {
                break false
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break true,
        }
    };
    assert!(closed, "the connection ends instead of answering");
    assert!(untraced(pa));
    assert_untouched(pa, &bin, "work");

    // b goes on as before.
    let seen = b.events.len();
    b.events_until(seen + 10);
    assert_ne!(proc_status(pb, "TracerPid:").as_deref(), Some("0"));
    assert!(matches!(b.ok(Op::Ping), Body::Empty));
    drop(b);
    assert!(untraced(pb));
    assert_untouched(pb, &bin, "work");
    for mut x in [xa, xb] {
        x.kill().unwrap();
        let _ = x.wait();
    }
    core.stop();
}

/// A core removes its socket's file at the end only while it is its own:
/// a core started meanwhile on the same path (a restarted `wprobe serve`
/// starts one once the old core stops listening, while it may still be
/// ending) keeps its socket and stays reachable.
#[test]
fn a_core_ending_leaves_the_socket_of_a_later_core_on_its_path() {
    let sock = scratch_dir().join("succession.sock");
    let mut old = Core::start_at(sock.clone(), &[]);
    // The path taken over: the old core's file gone, a new core there.
    std::fs::remove_file(&sock).expect("remove the old core's socket file");
    let new = Core::start_at(sock.clone(), &[]);
    // SAFETY: signalling the core we started.
    unsafe { libc::kill(old.child.id() as i32, libc::SIGTERM) };
    let status = old.child.wait().expect("the old core ends");
    assert!(status.success(), "{status}");
    assert!(sock.exists(), "the old core removed the new core's socket");
    drop(new.client());
    new.stop();
}
