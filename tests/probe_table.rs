//! The probe table through the engine's own API: several probes at one
//! address, enabling and disabling without removing, and removal restoring
//! the original bytes, checked in the live process between runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wprobe_core::engine::{Engine, Hit, Notice, ProbeId, RunEnd, Sink};
use wprobe_core::spec::ProbeSpec;
use wprobe_core::target::ptrace::Ptrace;
use wprobe_tests::*;

/// Counts hits per probe and raises the stop flag when `probe` reaches
/// `until` hits.
struct Counter {
    hits: std::collections::HashMap<ProbeId, u64>,
    until: Option<(ProbeId, u64)>,
    stop: Arc<AtomicBool>,
}

impl Sink for Counter {
    fn hit(&mut self, hit: &Hit<'_>) {
        let n = self.hits.entry(hit.probe).or_default();
        *n += 1;
        if self.until == Some((hit.probe, *n)) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
    fn notice(&mut self, _: &Notice) {}
}

impl Counter {
    fn run_until(&mut self, engine: &mut Engine<Ptrace>, probe: ProbeId, hits: u64) -> RunEnd {
        self.until = Some((probe, hits));
        self.stop.store(false, Ordering::SeqCst);
        let stop = self.stop.clone();
        engine.run(self, &stop).expect("run")
    }
    fn get(&self, p: ProbeId) -> u64 {
        self.hits.get(&p).copied().unwrap_or(0)
    }
}

#[test]
fn enable_disable_remove_at_one_address() {
    let bin = build("basic", "table", &["-O2"]);
    let mut engine = Engine::new(Ptrace::new());
    let pid = engine
        .spawn(&[bin.to_string_lossy().into_owned(), "100000000".into()])
        .expect("spawn");
    let mut c = Counter {
        hits: Default::default(),
        until: None,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let spec = || ProbeSpec::parse(&format!("uprobe:{}:work", bin.display())).unwrap();
    let a = engine.add_probe(spec(), &mut c).expect("a");
    let b = engine.add_probe(spec(), &mut c).expect("b, same address");
    // While `work` is bare the program runs freely (a thread resumed after
    // a hit may not have reached the breakpoint again before the test
    // changes it): the long loop leaves hits to come, and a probe on
    // `greet`, called after the loop, keeps the process for the byte check.
    let keep = ProbeSpec::parse(&format!("uprobe:{}:greet", bin.display())).unwrap();
    let keep = engine.add_probe(keep, &mut c).expect("greet");
    assert_eq!(engine.placements(a), engine.placements(b));
    let code = |pid| live_and_file_bytes(pid, &bin, "work", 16);

    // Both fire on every hit.
    assert_eq!(c.run_until(&mut engine, a, 10), RunEnd::Stopped);
    assert_eq!((c.get(a), c.get(b)), (10, 10));

    // Disabled, `a` sees nothing; `b` keeps the breakpoint armed.
    engine.set_enabled(a, false).unwrap();
    let (live, file) = code(pid);
    assert_eq!(live[0], 0xcc);
    assert_eq!(live[1..], file[1..]);
    c.run_until(&mut engine, b, 30);
    assert_eq!((c.get(a), c.get(b)), (10, 30));

    // No enabled probe left: the original byte is back while both exist.
    engine.set_enabled(b, false).unwrap();
    let (live, file) = code(pid);
    assert_eq!(live, file, "disarmed without removing");

    // Removing `b` keeps `a`; re-enabling `a` arms again.
    engine.remove_probe(b).unwrap();
    assert!(engine.stats(b).is_none());
    engine.set_enabled(a, true).unwrap();
    assert_eq!(code(pid).0[0], 0xcc);
    c.run_until(&mut engine, a, 20);
    assert_eq!((c.get(a), c.get(b)), (20, 30));

    // Removing the last probe restores every byte.
    engine.remove_probe(a).unwrap();
    assert_eq!(c.run_until(&mut engine, keep, 1), RunEnd::Stopped);
    let (live, file) = code(pid);
    assert_eq!(live, file, "removal restores the original bytes exactly");
    assert_eq!(c.run_until(&mut engine, a, u64::MAX), RunEnd::AllExited);
    assert_eq!((c.get(a), c.get(b), c.get(keep)), (20, 30, 2));
    assert_eq!(
        engine.exits(),
        &[(pid, wprobe_core::engine::ExitStatus::Code(7))]
    );
}
