//! The engine as its own process, `wprobe-core`, driven over its socket
//! with the protocol of docs/core-protocol.md: requests and replies, events,
//! version mismatch, and — whatever way the client or the core goes — the
//! targets left as they were found.

use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wprobe_core::proto::{
    self, Body, ErrorKind, Frame, Hello, Mode, Op, ProbeOptions, Request, PROTOCOL_VERSION,
};
use wprobe_tests::*;

fn core_bin() -> std::path::PathBuf {
    wprobe_bin().with_file_name("wprobe-core")
}

/// A running `wprobe-core` and a connection to it.
struct Core {
    child: Child,
    conn: UnixStream,
    next_id: u32,
    /// Events and other frames read while waiting for a reply.
    events: Vec<proto::Event>,
    losses: u64,
}

impl Core {
    fn start(name: &str) -> Core {
        Core::start_with(name, &[])
    }

    fn start_with(name: &str, args: &[&str]) -> Core {
        let sock = scratch_dir().join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock);
        let child = Command::new(core_bin())
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start wprobe-core");
        assert!(wait_until(10, || sock.exists()), "the core listens");
        let conn = UnixStream::connect(&sock).expect("connect");
        Core {
            child,
            conn,
            next_id: 1,
            events: Vec::new(),
            losses: 0,
        }
    }

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

    fn keep(&mut self, f: Frame) {
        match f {
            Frame::Events(batch) => self.events.extend(batch),
            Frame::Loss { count, .. } => self.losses += count,
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

    fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

fn async_probe(spec: String) -> Op {
    Op::AddProbe {
        spec,
        options: ProbeOptions {
            mode: Mode::Async,
            allow_mutation: false,
            sync_deadline_us: 0,
        },
    }
}

#[test]
fn a_client_that_goes_away_leaves_its_targets_clean() {
    let bin = build("spin", "core-gone", &["-O2"]);
    let target = start_ready(&bin, &["30000", "3"]);
    let pid = target.id() as i32;
    let mut core = Core::start("gone");
    assert!(matches!(core.hello(PROTOCOL_VERSION), Frame::Welcome(_)));
    assert_eq!(
        core.call(Op::Ping),
        Frame::Ok {
            id: 1,
            body: Body::Empty
        }
    );
    assert_eq!(
        core.call(Op::Attach { pid }),
        Frame::Ok {
            id: 2,
            body: Body::Target { pid }
        }
    );
    let probe = match core.call(async_probe(format!("uprobe:{}:work", bin.display()))) {
        Frame::Ok {
            body: Body::Probe { id },
            ..
        } => id,
        other => panic!("AddProbe: {other:?}"),
    };
    // A refused probe is an error naming the value; nothing changes.
    match core.call(async_probe(format!("uprobe:{}:wrok", bin.display()))) {
        Frame::Error { kind, message, .. } => {
            assert_eq!(kind, ErrorKind::Refused);
            assert!(
                message.contains("did you mean") && message.contains("`work`"),
                "{message}"
            );
        }
        other => panic!("expected an error: {other:?}"),
    }
    core.events_until(200);
    assert!(core.events.iter().all(|e| e.probe == probe && e.pid == pid));
    match core.call(Op::ListProbes) {
        Frame::Ok {
            body: Body::Probes(list),
            ..
        } => {
            assert_eq!(list.len(), 1);
            assert!(list[0].hits >= 200 && list[0].enabled);
            assert_eq!(list[0].placements.len(), 1);
        }
        other => panic!("ListProbes: {other:?}"),
    }
    // The client vanishes (as when it is killed: the kernel closes its
    // socket). The core disarms, detaches and exits.
    let Core {
        conn, mut child, ..
    } = core;
    drop(conn);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_untouched(pid, &bin, "work");
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
    let mut core = Core::start("term");
    assert!(matches!(core.hello(PROTOCOL_VERSION), Frame::Welcome(_)));
    assert!(matches!(core.call(Op::Attach { pid }), Frame::Ok { .. }));
    // Live return instances on four threads, and threads in usleep's slot.
    for spec in [
        format!("uretprobe:{}:slow", bin.display()),
        "uprobe:libc:usleep post".into(),
    ] {
        assert!(matches!(core.call(async_probe(spec)), Frame::Ok { .. }));
    }
    core.events_until(100);
    // SAFETY: signalling the core we started.
    unsafe { libc::kill(core.child.id() as i32, libc::SIGTERM) };
    assert!(core.wait().success());
    assert_untouched(pid, &bin, "slow");
    assert_eq!(
        finish(target),
        format!("slow={}\n", 4 * (0..2000).map(|i| i * 2).sum::<i64>())
    );
}

#[test]
fn a_version_mismatch_is_a_clear_error_not_a_hang() {
    let mut core = Core::start("version");
    match core.hello(PROTOCOL_VERSION + 41) {
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
        proto::read_frame(&mut core.conn).unwrap().is_none(),
        "then the core closes"
    );
    assert!(core.wait().success());
}

#[test]
fn a_slow_client_gets_loss_records_and_control_first() {
    let bin = build("bench_loop", "core-slow", &["-O2"]);
    let mut core = Core::start_with("slow", &["--queue", "2000"]);
    assert!(matches!(core.hello(PROTOCOL_VERSION), Frame::Welcome(_)));
    let pid = match core.call(Op::Spawn {
        argv: vec![bin.to_string_lossy().into_owned(), "150000".into()],
    }) {
        Frame::Ok {
            body: Body::Target { pid },
            ..
        } => pid,
        other => panic!("Spawn: {other:?}"),
    };
    let probe = match core.call(async_probe(format!(
        "uprobe:{}:bench_target",
        bin.display()
    ))) {
        Frame::Ok {
            body: Body::Probe { id },
            ..
        } => id,
        other => panic!("AddProbe: {other:?}"),
    };
    // The program waited for its probe; now it runs.
    assert!(matches!(core.call(Op::Resume { pid }), Frame::Ok { .. }));
    // Read nothing for a while: the core's queue fills and it drops.
    std::thread::sleep(Duration::from_millis(2500));
    let asked = Instant::now();
    let reply = core.call(Op::DisableProbe { id: probe });
    let took = asked.elapsed();
    assert!(matches!(reply, Frame::Ok { .. }), "{reply:?}");
    eprintln!(
        "DisableProbe answered in {took:?} behind {} queued events",
        core.events.len()
    );
    // Everything recorded is either delivered or counted as lost.
    let stats = match core.call(Op::Stats) {
        Frame::Ok {
            body: Body::Stats(s),
            ..
        } => s,
        other => panic!("Stats: {other:?}"),
    };
    let hits = stats.probes[0].hits;
    assert!(stats.events_dropped > 0, "the queue overflowed: {stats:?}");
    // Disabled, the program runs to its end; drain what is still on its
    // way and say goodbye.
    let _ = pid;
    drop(core.conn.shutdown(std::net::Shutdown::Write));
    while let Ok(Some(f)) = proto::read_frame(&mut core.conn) {
        core.keep(f);
    }
    assert!(core.losses > 0, "loss records in the stream");
    assert_eq!(
        core.events.len() as u64 + core.losses,
        hits,
        "delivered + dropped = hits"
    );
    assert!(core.wait().success());
}

#[test]
fn sigkill_of_the_client_process_leaves_targets_clean() {
    // The client is a process of its own, killed outright while probes are
    // armed in the executable (a return probe: live instances on four
    // threads) and in libc (post: threads inside slots).
    let bin = build("returns", "core-kill", &["-O2"]);
    let target = start_ready(&bin, &["slow", "3000"]);
    let pid = target.id() as i32;
    let sock = scratch_dir().join("kill.sock");
    let _ = std::fs::remove_file(&sock);
    let mut core = Command::new(core_bin())
        .arg("--socket")
        .arg(&sock)
        .spawn()
        .expect("core");
    assert!(wait_until(10, || sock.exists()));
    let client_bin = wprobe_bin().with_file_name("core-client");
    let mut client = start_ready(
        &client_bin,
        &[
            &sock.to_string_lossy(),
            &pid.to_string(),
            &format!("uretprobe:{}:slow", bin.display()),
            "uprobe:libc:usleep post",
        ],
    );
    client.kill().expect("SIGKILL the client");
    let _ = client.wait();
    assert!(
        core.wait().unwrap().success(),
        "the core leaves when its client dies"
    );
    assert_untouched(pid, &bin, "slow");
    assert_eq!(
        finish(target),
        format!("slow={}\n", 4 * (0..3000).map(|i| i * 2).sum::<i64>())
    );
}
