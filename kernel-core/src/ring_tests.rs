use super::*;
use std::collections::HashMap;
use std::sync::Arc;

fn regs(seed: u64) -> [u64; NREGS] {
    std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u64))
}

/// Drains `ring` until `done` says the producers are finished and nothing
/// is left.
fn drain(ring: &mut Ring, events: &mut Vec<RawEvent>, done: &dyn Fn() -> bool) {
    loop {
        let finished = done();
        let stats = ring.poll(|e| events.push(e));
        if finished && stats.delivered == 0 && stats.pending == 0 {
            return;
        }
        if stats.delivered == 0 {
            ring.wait(Duration::from_millis(10));
        }
    }
}

#[test]
fn an_event_comes_out_as_it_went_in() {
    let (mut ring, _fd) = Ring::create(8).unwrap();
    assert!(ring.produce(3, 1, 1234, 0x7f00_0000_1000, &regs(9)));
    let mut got = Vec::new();
    let stats = ring.poll(|e| got.push(e));
    assert_eq!(
        stats,
        PollStats {
            delivered: 1,
            pending: 0,
            corrupt: 0
        }
    );
    assert_eq!(
        got,
        [RawEvent {
            pos: 0,
            probe: 3,
            kind: 1,
            time: 1234,
            thread_key: 0x7f00_0000_1000,
            regs: regs(9),
        }]
    );
    assert_eq!(ring.counters(3), Some((1, 0)));
    assert_eq!(ring.counters(MAX_PROBES as u32), None);
}

#[test]
fn a_full_ring_counts_losses_and_frees_slots_as_they_are_read() {
    let (mut ring, _fd) = Ring::create(4).unwrap();
    let sent: Vec<bool> = (0..6).map(|i| ring.produce(0, 0, i, 0, &regs(i))).collect();
    assert_eq!(sent, [true, true, true, true, false, false]);
    let mut got = Vec::new();
    ring.poll(|e| got.push(e.time));
    assert_eq!(got, [0, 1, 2, 3]);
    // Room again, and positions go on.
    assert!(ring.produce(0, 0, 10, 0, &regs(10)));
    ring.poll(|e| got.push(e.pos));
    assert_eq!(got.last(), Some(&4));
    assert_eq!(ring.counters(0), Some((7, 2)));
}

#[test]
fn many_producers_never_block_and_every_hit_is_accounted_for() {
    const THREADS: u64 = 4;
    const EACH: u64 = 50_000;
    let (mut ring, fd) = Ring::create(64).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let ring = Ring::open(&fd).unwrap();
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    // regs[0]: this producer's own sequence number.
                    let mut r = regs(i);
                    r[0] = i;
                    ring.produce(t as u32, 0, i, t, &r);
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let mut events = Vec::new();
    drain(&mut ring, &mut events, &|| {
        done.load(Ordering::SeqCst) == THREADS
    });
    for p in producers {
        p.join().unwrap();
    }
    let mut per: HashMap<u64, Vec<u64>> = HashMap::new();
    for e in &events {
        assert_eq!(e.probe as u64, e.thread_key, "fields stay together");
        assert_eq!(e.regs[1..], regs(e.regs[0])[1..], "payload intact");
        per.entry(e.thread_key).or_default().push(e.regs[0]);
    }
    for t in 0..THREADS {
        let seen = per.remove(&t).unwrap_or_default();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "each producer's events come in its order, once"
        );
        let (hits, lost) = ring.counters(t as u32).unwrap();
        assert_eq!(hits, EACH);
        assert_eq!(hits, seen.len() as u64 + lost, "hits = delivered + lost");
    }
    assert_eq!((ring.abandoned(), ring.corrupt()), (0, 0));
}

#[test]
fn a_producer_stopped_between_claim_and_commit_holds_one_slot_and_is_abandoned_when_it_dies() {
    let (mut ring, fd) = Ring::create(8).unwrap();
    // A real process producing into the same memfd, killed after its
    // claim and before its commit.
    // SAFETY: the child only uses the ring mapping (atomics), raise and
    // _exit; it never returns.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        fn die<T>(code: i32) -> T {
            // SAFETY: _exit ends the child at once.
            unsafe { libc::_exit(code) }
        }
        let ring = Ring::open(&fd).unwrap_or_else(|_| die(3));
        ring.produce(1, 0, 1, 1, &regs(1));
        ring.u64_at(OFF_HITS + 8).fetch_add(1, Ordering::Relaxed);
        let pos = ring.claim().unwrap_or_else(|| die(4));
        ring.fill(pos, 1, 0, 2, 1, &regs(2));
        // SAFETY: stopping ourselves; the parent kills us.
        unsafe {
            libc::raise(libc::SIGSTOP);
            libc::_exit(5)
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our child's stop.
    unsafe { libc::waitpid(child, &mut status, libc::WUNTRACED) };
    assert!(libc::WIFSTOPPED(status));
    // Another producer goes on past the held slot.
    assert!(ring.produce(1, 0, 3, 2, &regs(3)));
    let mut got = Vec::new();
    let stats = ring.poll(|e| got.push(e.time));
    assert_eq!(got, [1, 3], "every committed event, around the held slot");
    assert_eq!(stats.pending, 1);
    // SAFETY: killing and reaping our child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, &mut status, 0);
    }
    assert_eq!(ring.abandon(|e| got.push(e.time)), 1);
    let (hits, lost) = ring.counters(1).unwrap();
    assert_eq!(
        (hits, got.len() as u64, lost, ring.abandoned()),
        (3, 2, 0, 1),
        "hits = delivered + lost + abandoned"
    );
}

#[test]
fn a_hostile_target_cannot_mislead_or_stall_the_reader() {
    let (mut ring, _fd) = Ring::create(8).unwrap();
    // A head far ahead: at most one ring's worth is looked at.
    ring.scribble(OFF_HEAD, u64::MAX - 3);
    let stats = ring.poll(|_| panic!("nothing was committed"));
    assert_eq!((stats.delivered, stats.pending), (0, 8));
    // A slot that claims to be committed with a probe index out of range.
    let (mut ring, _fd) = Ring::create(8).unwrap();
    ring.scribble(OFF_HEAD, 1);
    ring.scribble(HEADER_LEN, 1);
    ring.scribble(HEADER_LEN + 8, u64::from(u32::MAX));
    let stats = ring.poll(|_| panic!("a corrupt slot is not delivered"));
    assert_eq!(stats.corrupt, 1);
    // Random bytes everywhere: no panic, bounded work, and the reader
    // goes on.
    let (mut ring, _fd) = Ring::create(16).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x as usize) % ring.len;
            ring.scribble(off, x.rotate_left(round));
        }
        let mut n = 0u64;
        let stats = ring.poll(|_| n += 1);
        assert!(n <= 2 * ring.slots(), "bounded: {n}");
        assert!(stats.pending <= ring.slots());
    }
}

#[test]
fn open_refuses_what_is_not_a_whole_ring() {
    let check = |fd: &OwnedFd, want: &str| match Ring::open(fd) {
        Err(e) => assert!(e.to_string().contains(want), "{e}"),
        Ok(_) => panic!("opened: expected `{want}`"),
    };
    let (ring, fd) = Ring::create(8).unwrap();
    ring.scribble(OFF_MAGIC, 0);
    check(&fd, &format!("not a version-{VERSION} wprobe ring"));
    let (ring, fd) = Ring::create(8).unwrap();
    ring.u32_at(OFF_SLOTS).store(16, Ordering::Relaxed);
    check(&fd, "16 slots do not fit a file of");
    let f = std::fs::File::from(unsealed_file());
    check(&OwnedFd::from(f), "not a memfd sealed against shrinking");
    assert!(Ring::create(6).is_err());
}

fn unsealed_file() -> OwnedFd {
    // SAFETY: a new memfd without sealing; checked.
    let fd = unsafe { libc::memfd_create(c"plain".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sizing our memfd.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 65536) }, 0);
    fd
}
