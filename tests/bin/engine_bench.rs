//! The benchmark's two ways of running the engine without `wprobe trace`,
//! so that the daemon's own cost can be told from the engine's:
//!
//! - `engine-bench inproc SPEC -- CMD...`: the engine in this process, as
//!   `wprobe trace` ran it before the daemon; each hit is turned into a
//!   protocol `Event` (what the core's sink does) and counted.
//! - `engine-bench core SPEC -- CMD...`: a `wprobe-core` started beside
//!   this program (same directory), the command spawned through it; the
//!   events arrive over the socket, decoded, and are counted.
//!
//! The command inherits stdout. The count goes to stderr as `events=N`;
//! the exit status is the command's.

use std::sync::atomic::AtomicBool;

use wprobe_core::engine::{Engine, ExitStatus, Hit, Notice, Sink};
use wprobe_core::proto::{self, Body, Client, Frame, Mode, Op, ProbeOptions, SpawnStdio};
use wprobe_core::spec::ProbeSpec;
use wprobe_core::target::ptrace::Ptrace;

struct Count {
    events: u64,
    seq: u64,
}

impl Sink for Count {
    fn hit(&mut self, hit: &Hit<'_>) {
        self.seq += 1;
        let e = proto::Event::from_hit(hit, self.seq, false);
        std::hint::black_box(&e);
        self.events += 1;
    }
    fn notice(&mut self, _: &Notice) {}
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: engine-bench (inproc|core) SPEC -- CMD...");
        std::process::exit(2)
    };
    let [mode, spec, dashes, cmd @ ..] = args.as_slice() else {
        usage()
    };
    if dashes != "--" || cmd.is_empty() {
        usage()
    }
    let (events, status) = match mode.as_str() {
        "inproc" => inproc(spec, cmd),
        "core" => core(spec, cmd),
        _ => usage(),
    };
    eprintln!("events={events}");
    std::process::exit(match status {
        Some(ExitStatus::Code(c)) => c,
        Some(ExitStatus::Signal(s)) => 128 + s,
        None => 1,
    });
}

fn inproc(spec: &str, cmd: &[String]) -> (u64, Option<ExitStatus>) {
    let mut engine = Engine::new(Ptrace::new());
    let pid = engine.spawn(cmd).expect("spawn");
    let mut sink = Count { events: 0, seq: 0 };
    engine
        .add_probe(ProbeSpec::parse(spec).expect("spec"), &mut sink)
        .expect("probe");
    engine.run(&mut sink, &AtomicBool::new(false)).expect("run");
    let status = engine.exits().iter().find(|e| e.0 == pid).map(|e| e.1);
    (sink.events, status)
}

fn core(spec: &str, cmd: &[String]) -> (u64, Option<ExitStatus>) {
    let core = std::env::current_exe()
        .expect("own path")
        .with_file_name("wprobe-core");
    let mut c = Client::start_core(&core, "engine-bench").expect("start the core");
    let pid = match c
        .call(Op::Spawn {
            argv: cmd.to_vec(),
            env: None,
            stdio: SpawnStdio::Inherit,
        })
        .expect("spawn")
    {
        Body::Target { pid } => pid,
        other => panic!("{other:?}"),
    };
    c.call(Op::AddProbe {
        spec: spec.into(),
        options: ProbeOptions {
            mode: Mode::Async,
            allow_mutation: false,
            sync_deadline_us: 0,
            no_optimize: false,
        },
    })
    .expect("probe");
    c.call(Op::Resume { pid }).expect("resume");
    let mut events = 0u64;
    let mut status = None;
    loop {
        match c.next(None).expect("frames") {
            Some(Frame::Events(b)) => events += b.len() as u64,
            Some(Frame::Notice(proto::Notice::Exited { pid: p, status: s })) if p == pid => {
                status = Some(match s {
                    proto::ExitStatus::Code(c) => ExitStatus::Code(c),
                    proto::ExitStatus::Signal(s) => ExitStatus::Signal(s),
                })
            }
            Some(Frame::Notice(proto::Notice::Idle)) => break,
            Some(Frame::Loss { count, .. }) => eprintln!("lost {count}"),
            _ => {}
        }
    }
    (events, status)
}
