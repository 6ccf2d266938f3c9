//! The shared-memory event ring of optimized probes.
//!
//! An optimized probe replaces the probed instructions with a jump to a
//! trampoline inside the target, and the trampoline writes the event here
//! instead of stopping the thread (docs/optprobes.md). The ring is a memfd
//! that the core creates, maps into the target read-write, and reads from
//! its own mapping — or hands to the host with `SCM_RIGHTS`.
//!
//! The one key decision: **a producer never blocks and never holds
//! anything another thread waits for.** Producers are threads of the
//! traced program, which may be stopped, signalled or killed at any
//! instruction; so there is no lock (a dead holder would wedge everyone),
//! and a slot is claimed by a compare-and-swap on the head that succeeds
//! only when the slot is free (Dmitry Vyukov's bounded queue). A full ring
//! costs the producer one counted loss, never a wait. A producer stopped
//! between claim and commit holds exactly one slot: the reader delivers
//! every other event around it, and counts the slot `abandoned` once the
//! process is dead. So for each probe, at any time after the producers
//! are gone: `hits = delivered + lost + abandoned`, exactly.
//!
//! The other rule: **everything in the ring is untrusted.** The target can
//! write any byte of it. The reader checks every number before it uses
//! it, scans at most one ring's worth per call, and a corrupt slot is
//! counted, never believed. The memfd is sealed against shrinking, so the
//! target cannot make the reader's mapping fault.
//!
//! # Layout (little-endian; docs/optprobes.md has the same tables)
//!
//! Header, [`HEADER_LEN`] bytes:
//!
//! | offset | type | field |
//! | --- | --- | --- |
//! | 0 | `u64` | magic `"WPRBRING"` |
//! | 8 | `u32` | version, 1 |
//! | 12 | `u32` | slot size in bytes, [`SLOT_SIZE`] |
//! | 16 | `u32` | slots, a power of two |
//! | 20 | `u32` | probes: entries in each counter table, [`MAX_PROBES`] |
//! | 64 | `u64` | `head`: the next position to claim (producers, CAS) |
//! | 128 | `u32` | `consumer_sleeping`: a futex word; 1 while the reader waits |
//! | 192 | `u64` | `instance_next`: where producers look for a free return instance (`lock xadd`) |
//! | 4096 | `u64[MAX_PROBES]` | `hits`: incremented by a producer first thing |
//! | 8192 | `u64[MAX_PROBES]` | `lost`: hits that found the ring full |
//! | 12288 | `u64[MAX_PROBES]` | `missed`: returns not hijacked (no free instance) |
//!
//! Slot `i` starts at `HEADER_LEN + i * SLOT_SIZE`:
//!
//! | offset | type | field |
//! | --- | --- | --- |
//! | 0 | `u64` | `seq`: `p` free for position `p`; `p + 1` committed; the reader frees it with `p + slots` |
//! | 8 | `u32` | probe: the ring-local probe index (< probes) |
//! | 12 | `u32` | kind: 0 entry, 1 return, 2 entry whose return was hijacked |
//! | 16 | `u64` | time (the producer's clock: the TSC on x86_64) |
//! | 24 | `u64` | thread key (`%fs:0` on x86_64: the thread's TCB) |
//! | 32 | `u64[NREGS]` | registers, in the order of the arch's register set (27 on x86_64) |
//!
//! After the slots, [`INSTANCES`] return instances of [`INSTANCE_SIZE`]
//! bytes: a call whose return address an optimized return probe replaced
//! (uprobes' `return_instance`, in shared memory):
//!
//! | offset | type | field |
//! | --- | --- | --- |
//! | 0 | `u64` | state: 0 free, 1 live (claimed by `lock cmpxchg` 0 → 1) |
//! | 8 | `u64` | the original return address |
//! | 16 | `u64` | the stack slot that held it |
//! | 24 | `u64` | thread key |
//! | 32 | `u64` | entry time |
//! | 40 | `u32` | probe (ring-local index) |
//! | 48 | `u64[6]` | the argument registers at entry |
//!
//! Instance `i` is returned to through pad `i` of the process's return
//! code, so a return finds its instance without a search; the return
//! writes a kind-1 event and frees the instance.
//!
//! # The producer's steps (the trampoline does exactly these)
//!
//! 1. `lock inc hits[probe]`.
//! 2. `pos = head`; `s = slot(pos & (slots-1))`; `seq = s.seq` (acquire).
//!    If `seq == pos`: `lock cmpxchg head, pos → pos+1`; on failure go to
//!    2 with the value read. If `seq < pos` (as a signed difference): the
//!    ring is full: `lock inc lost[probe]`, done. Otherwise another
//!    producer was faster: go to 2.
//! 3. Write the payload, then `s.seq = pos + 1` (release).
//! 4. If `consumer_sleeping` is 1: `FUTEX_WAKE` it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// `"WPRBRING"`, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"WPRBRING");
/// The layout version this code reads and writes.
pub const VERSION: u32 = 2;
/// Bytes of one slot.
pub const SLOT_SIZE: usize = 256;
/// Entries of each per-probe counter table: probes one ring serves.
pub const MAX_PROBES: usize = 512;
/// Bytes before the first slot: a control page and three counter tables.
pub const HEADER_LEN: usize = 4 * 4096;
/// Registers in a slot: the words of the native register set (the
/// arch's `Regs`, in the layout ptrace uses), so that arch knowledge stays
/// in `arch/`.
pub const NREGS: usize = std::mem::size_of::<crate::arch::native::Regs>() / 8;

// The slot's header (32 bytes) and the registers fit in a slot.
const _: () = assert!(32 + 8 * NREGS <= SLOT_SIZE);

// Offsets of the header's fields (the table above), for the trampolines.
pub const OFF_MAGIC: usize = 0;
pub const OFF_VERSION: usize = 8;
pub const OFF_SLOT_SIZE: usize = 12;
pub const OFF_SLOTS: usize = 16;
pub const OFF_PROBES: usize = 20;
pub const OFF_HEAD: usize = 64;
pub const OFF_SLEEPING: usize = 128;
pub const OFF_INSTANCE_NEXT: usize = 192;
pub const OFF_HITS: usize = 4096;
pub const OFF_LOST: usize = 8192;
pub const OFF_MISSED: usize = 12288;
/// Return instances per ring: calls in flight through optimized return
/// probes, all threads together.
pub const INSTANCES: usize = 1024;
/// Bytes of one return instance.
pub const INSTANCE_SIZE: usize = 128;
// Offsets in an instance (the table above).
pub const INST_STATE: usize = 0;
pub const INST_ORIG_RET: usize = 8;
pub const INST_SLOT: usize = 16;
pub const INST_KEY: usize = 24;
pub const INST_TIME: usize = 32;
pub const INST_PROBE: usize = 40;
pub const INST_ARGS: usize = 48;
/// Record kinds.
pub const KIND_ENTRY: u32 = 0;
pub const KIND_RETURN: u32 = 1;
pub const KIND_ENTRY_HIJACKED: u32 = 2;
/// The most slots a ring may have (64 MiB of slots).
pub const MAX_SLOTS: usize = 1 << 18;

/// What an event slot holds, as read (and checked) by the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent {
    /// The producer's claim position: increasing in the order of claims.
    pub pos: u64,
    pub probe: u32,
    pub kind: u32,
    pub time: u64,
    pub thread_key: u64,
    pub regs: [u64; NREGS],
}

/// A live return instance, as read (see the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub index: usize,
    pub orig_ret: u64,
    pub slot: u64,
    pub thread_key: u64,
    pub time: u64,
    pub probe: u32,
    pub args: [u64; 6],
}

/// Why a ring could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("event ring: {op}: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("event ring: {0}")]
    Bad(String),
}

/// Sleeps on the futex `word` while it is 1, `timeout` at most.
fn sleep_while_one(word: &AtomicU32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a futex wait on a word of a shared mapping, with a valid
    // timeout; it returns at once if the word is not 1.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            1u32,
            &ts as *const libc::timespec,
        )
    };
}

fn check_slots(slots: usize) -> Result<(), RingError> {
    if !slots.is_power_of_two() || slots > MAX_SLOTS {
        return Err(RingError::Bad(format!(
            "{slots} slots: a ring has a power of two of them, at most {MAX_SLOTS}"
        )));
    }
    Ok(())
}

fn os(op: &'static str) -> RingError {
    RingError::Os {
        op,
        source: io::Error::last_os_error(),
    }
}

/// What one [`Ring::poll`] saw besides the events it handed out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollStats {
    pub delivered: u64,
    /// Positions claimed but not committed yet (a producer is between its
    /// claim and its commit, or was stopped there).
    pub pending: u64,
    /// Slots whose contents cannot be right (a probe index out of range):
    /// freed and counted, not delivered.
    pub corrupt: u64,
}

/// A mapping of a ring: the reader's side, or (in tests and as the model
/// of the trampoline) a producer's.
pub struct Ring {
    base: *mut u8,
    len: usize,
    slots: u64,
    /// The next position the reader looks at.
    tail: u64,
    /// Positions below `tail` claimed but not committed when last looked
    /// at, oldest first.
    pending: std::collections::VecDeque<u64>,
    /// Pending positions given up: their producer is gone, or their slot
    /// was taken over.
    abandoned: u64,
    corrupt: u64,
}

// SAFETY: the mapping is shared memory accessed only through atomics; the
// reader's private state is plain data. Moving the reader to another
// thread is fine (it is not Sync: one reader at a time).
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/len are the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

impl Ring {
    /// Makes a ring of `slots` slots (a power of two, at most
    /// [`MAX_SLOTS`]) in a new sealed memfd; returns the reader's mapping
    /// and the descriptor to map into the target or hand to the host.
    pub fn create(slots: usize) -> Result<(Ring, OwnedFd), RingError> {
        check_slots(slots)?;
        let len = Ring::len_for(slots);
        // SAFETY: a NUL-terminated name and valid flags.
        let fd = unsafe {
            libc::memfd_create(
                c"wprobe-ring".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: fd is a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a plain call on our descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(os("ftruncate"));
        }
        let ring = Ring::adopt(&fd, slots)?;
        Ok((ring, fd))
    }

    /// Makes a ring of `slots` slots in a memfd created elsewhere (by the
    /// target, for the engine: its own descriptor then never leaves the
    /// core) and already sized: seals it against shrinking and growing,
    /// maps it and writes a fresh header.
    pub fn adopt(fd: &OwnedFd, slots: usize) -> Result<Ring, RingError> {
        check_slots(slots)?;
        let len = Ring::len_for(slots);
        // SAFETY: plain calls on a descriptor the caller owns.
        unsafe {
            // The target holds the descriptor a moment: it must not be able
            // to shrink the file under the reader's mapping (SIGBUS).
            let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
            if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
                return Err(os("F_ADD_SEALS"));
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(os("fstat"));
            }
            if st.st_size as usize != len {
                return Err(RingError::Bad(format!(
                    "the memfd holds {} bytes; a ring of {slots} slots needs {len}",
                    st.st_size
                )));
            }
        }
        let ring = Ring::map(fd, len, slots as u64)?;
        ring.u32_at(OFF_VERSION).store(VERSION, Ordering::Relaxed);
        ring.u32_at(OFF_SLOT_SIZE)
            .store(SLOT_SIZE as u32, Ordering::Relaxed);
        ring.u32_at(OFF_SLOTS)
            .store(slots as u32, Ordering::Relaxed);
        ring.u32_at(OFF_PROBES)
            .store(MAX_PROBES as u32, Ordering::Relaxed);
        for i in 0..slots as u64 {
            ring.seq(i).store(i, Ordering::Relaxed);
        }
        ring.u64_at(OFF_HEAD).store(0, Ordering::Relaxed);
        ring.u64_at(OFF_MAGIC).store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Bytes of a ring of `slots` slots.
    pub fn len_for(slots: usize) -> usize {
        Ring::instances_offset(slots) + INSTANCES * INSTANCE_SIZE
    }

    /// Where the return instances start, from the ring's base.
    pub fn instances_offset(slots: usize) -> usize {
        HEADER_LEN + slots * SLOT_SIZE
    }

    /// Maps a ring made by [`create`](Self::create) elsewhere (the host's
    /// side). The header is checked against the file: a ring whose header
    /// claims more than the file holds is refused.
    pub fn open(fd: &OwnedFd) -> Result<Ring, RingError> {
        // SAFETY: stat is plain data filled by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(os("fstat"));
        }
        let size = st.st_size as usize;
        // SAFETY: F_GET_SEALS only reads.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(RingError::Bad(
                "the descriptor is not a memfd sealed against shrinking; a ring could fault \
                 its reader"
                    .into(),
            ));
        }
        if size < HEADER_LEN + SLOT_SIZE {
            return Err(RingError::Bad(format!(
                "{size} bytes is too small for a ring"
            )));
        }
        let probe = Ring::map(fd, HEADER_LEN, 0)?;
        let magic = probe.u64_at(OFF_MAGIC).load(Ordering::Acquire);
        let version = probe.u32_at(OFF_VERSION).load(Ordering::Relaxed);
        let slot_size = probe.u32_at(OFF_SLOT_SIZE).load(Ordering::Relaxed) as usize;
        let slots = probe.u32_at(OFF_SLOTS).load(Ordering::Relaxed) as usize;
        let probes = probe.u32_at(OFF_PROBES).load(Ordering::Relaxed) as usize;
        drop(probe);
        if magic != MAGIC || version != VERSION {
            return Err(RingError::Bad(format!(
                "not a version-{VERSION} wprobe ring (magic {magic:#x}, version {version})"
            )));
        }
        if slot_size != SLOT_SIZE || probes != MAX_PROBES {
            return Err(RingError::Bad(format!(
                "slot size {slot_size} and {probes} probes; this reader knows {SLOT_SIZE} and \
                 {MAX_PROBES}"
            )));
        }
        if !slots.is_power_of_two() || slots > MAX_SLOTS || Ring::len_for(slots) != size {
            return Err(RingError::Bad(format!(
                "{slots} slots do not fit a file of {size} bytes"
            )));
        }
        Ring::map(fd, size, slots as u64)
    }

    fn map(fd: &OwnedFd, len: usize, slots: u64) -> Result<Ring, RingError> {
        // SAFETY: a shared mapping of a file at least `len` long (checked
        // or made by the callers, and sealed against shrinking).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os("mmap"));
        }
        Ok(Ring {
            base: base.cast(),
            len,
            slots,
            tail: 0,
            pending: Default::default(),
            abandoned: 0,
            corrupt: 0,
        })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.len,
            "offset {off} in the ring"
        );
        // SAFETY: in bounds (checked), 8-aligned (the mapping is page
        // aligned), and shared memory is only ever accessed atomically.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "offset {off} in the ring"
        );
        // SAFETY: as for u64_at, 4-aligned.
        unsafe { &*self.base.add(off).cast::<AtomicU32>() }
    }

    fn slot_off(&self, pos: u64) -> usize {
        HEADER_LEN + (pos & (self.slots - 1)) as usize * SLOT_SIZE
    }

    fn seq(&self, pos: u64) -> &AtomicU64 {
        self.u64_at(self.slot_off(pos))
    }

    /// Where this mapping of the ring is, in this process.
    pub fn address(&self) -> u64 {
        self.base as u64
    }

    /// Slots in the ring.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Hits and losses the producers counted for ring-local probe `probe`
    /// (untrusted: the target writes them).
    pub fn counters(&self, probe: u32) -> Option<(u64, u64)> {
        let p = probe as usize;
        (p < MAX_PROBES).then(|| {
            (
                self.u64_at(OFF_HITS + 8 * p).load(Ordering::Relaxed),
                self.u64_at(OFF_LOST + 8 * p).load(Ordering::Relaxed),
            )
        })
    }

    /// Returns the producers could not hijack for ring-local probe
    /// `probe` (untrusted).
    pub fn missed(&self, probe: u32) -> u64 {
        let p = probe as usize;
        if p < MAX_PROBES {
            self.u64_at(OFF_MISSED + 8 * p).load(Ordering::Relaxed)
        } else {
            0
        }
    }

    fn instance_word(&self, i: usize, field: usize) -> &AtomicU64 {
        let base = Ring::instances_offset(self.slots as usize) + i * INSTANCE_SIZE;
        self.u64_at(base + field)
    }

    /// Return instance `i` if it is live (untrusted: the target writes it).
    pub fn instance(&self, i: usize) -> Option<Instance> {
        if i >= INSTANCES || self.instance_word(i, INST_STATE).load(Ordering::Acquire) != 1 {
            return None;
        }
        let w = |f: usize| self.instance_word(i, f).load(Ordering::Relaxed);
        let mut args = [0; 6];
        for (k, a) in args.iter_mut().enumerate() {
            *a = w(INST_ARGS + 8 * k);
        }
        Some(Instance {
            index: i,
            orig_ret: w(INST_ORIG_RET),
            slot: w(INST_SLOT),
            thread_key: w(INST_KEY),
            time: w(INST_TIME),
            probe: w(INST_PROBE) as u32,
            args,
        })
    }

    /// Points live instance `i`'s return somewhere else (the engine, with
    /// every thread stopped: an instance it frees was returned to by
    /// this one's pad).
    pub fn set_instance_orig_ret(&self, i: usize, to: u64) {
        if i < INSTANCES {
            self.instance_word(i, INST_ORIG_RET)
                .store(to, Ordering::Relaxed);
        }
    }

    /// Frees return instance `i` (the engine, with every thread of the
    /// target stopped and out of its trampolines).
    pub fn free_instance(&self, i: usize) {
        if i < INSTANCES {
            self.instance_word(i, INST_STATE)
                .store(0, Ordering::Release);
        }
    }

    /// Claimed positions given up on so far (see [`abandon`](Self::abandon)).
    pub fn abandoned(&self) -> u64 {
        self.abandoned
    }

    /// Slots found corrupt so far.
    pub fn corrupt(&self) -> u64 {
        self.corrupt
    }

    /// Hands every committed event to `out` (at most one ring's worth of
    /// new positions per call), freeing its slot, and remembers the
    /// positions claimed but not committed yet.
    pub fn poll(&mut self, out: impl FnMut(RawEvent)) -> PollStats {
        self.poll_at_most(u64::MAX, out)
    }

    /// As [`poll`](Self::poll), looking at `max` new positions at most (a
    /// reader with other work keeps each turn short).
    pub fn poll_at_most(&mut self, max: u64, mut out: impl FnMut(RawEvent)) -> PollStats {
        let mut stats = PollStats::default();
        let head = self.u64_at(OFF_HEAD).load(Ordering::Acquire);
        // An untrusted head: never scan more than one ring's worth, and a
        // head behind the tail is no new position.
        let end = head
            .min(self.tail.saturating_add(self.slots))
            .min(self.tail.saturating_add(max));
        // Positions pending since earlier calls first: oldest first.
        let mut still = std::collections::VecDeque::new();
        while let Some(p) = self.pending.pop_front() {
            match self.take(p, &mut out) {
                Taken::Event => stats.delivered += 1,
                Taken::Corrupt => stats.corrupt += 1,
                Taken::NotYet if p.saturating_add(self.slots) >= end => still.push_back(p),
                // No honest producer claims a position a whole ring past
                // one still held: a head beyond it is a lie, and the held
                // position is given up (this keeps `pending` within one
                // ring).
                Taken::NotYet => self.abandoned += 1,
            }
        }
        self.pending = still;
        while self.tail < end {
            let p = self.tail;
            match self.take(p, &mut out) {
                Taken::Event => stats.delivered += 1,
                Taken::Corrupt => stats.corrupt += 1,
                Taken::NotYet => self.pending.push_back(p),
            }
            self.tail += 1;
        }
        stats.pending = self.pending.len() as u64;
        self.corrupt += stats.corrupt;
        stats
    }

    /// Delivers position `p` if its slot holds it committed.
    fn take(&mut self, p: u64, out: &mut impl FnMut(RawEvent)) -> Taken {
        let off = self.slot_off(p);
        if self.u64_at(off).load(Ordering::Acquire) != p.wrapping_add(1) {
            return Taken::NotYet;
        }
        let word = |i: usize| self.u64_at(off + 8 * i).load(Ordering::Relaxed);
        let ids = word(1);
        let mut regs = [0u64; NREGS];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = word(4 + i);
        }
        let ev = RawEvent {
            pos: p,
            probe: ids as u32,
            kind: (ids >> 32) as u32,
            time: word(2),
            thread_key: word(3),
            regs,
        };
        // Free the slot for position p + slots.
        self.u64_at(off)
            .store(p.wrapping_add(self.slots), Ordering::Release);
        if ev.probe as usize >= MAX_PROBES || ev.kind > KIND_ENTRY_HIJACKED {
            return Taken::Corrupt;
        }
        out(ev);
        Taken::Event
    }

    /// The producers are gone (the process died, or ptrace shows no thread
    /// between a claim and its commit): after a last [`poll`](Self::poll),
    /// every position still pending is counted as abandoned. Returns how
    /// many.
    pub fn abandon(&mut self, out: impl FnMut(RawEvent)) -> u64 {
        self.poll(out);
        let n = self.pending.len() as u64;
        self.pending.clear();
        self.abandoned += n;
        n
    }

    /// Waits until a producer commits something, or `timeout` passes.
    /// Producers wake the reader only when it says it sleeps, so the fast
    /// path of a hit makes no system call.
    pub fn wait(&self, timeout: Duration) {
        let word = self.u32_at(OFF_SLEEPING);
        word.store(1, Ordering::SeqCst);
        // Anything committed meanwhile: do not sleep.
        if self.seq(self.tail).load(Ordering::SeqCst) != self.tail.wrapping_add(1) {
            sleep_while_one(word, timeout);
        }
        word.store(0, Ordering::SeqCst);
    }

    /// The next position the reader looks at.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Positions the reader passed whose producer had not committed yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The oldest position the reader has not delivered: the oldest
    /// pending one, else the tail. A watcher compares the head with it.
    pub fn oldest_unread(&self) -> u64 {
        self.pending.front().copied().unwrap_or(self.tail)
    }

    /// The next position producers will claim (untrusted).
    pub fn head(&self) -> u64 {
        self.u64_at(OFF_HEAD).load(Ordering::SeqCst)
    }

    /// Whether producers claimed positions at or beyond `tail` (untrusted:
    /// a hint to wake the reader, nothing more).
    pub fn claimed_past(&self, tail: u64) -> bool {
        self.u64_at(OFF_HEAD).load(Ordering::SeqCst) != tail
    }

    /// Waits until a producer commits something after `tail` was read by
    /// the reader, or `timeout` passes: for a thread that watches the ring
    /// on behalf of a reader that cannot sleep on it (the engine sleeps in
    /// `waitpid`). A producer wakes the sleeper after its commit; the claim
    /// before it is a locked instruction, so a producer that claimed after
    /// this sleeper looked at the head sees `consumer_sleeping` set.
    pub fn wait_past(&self, tail: u64, timeout: Duration) {
        let word = self.u32_at(OFF_SLEEPING);
        word.store(1, Ordering::SeqCst);
        if !self.claimed_past(tail) {
            sleep_while_one(word, timeout);
        }
        word.store(0, Ordering::SeqCst);
    }

    /// Emits one event as the trampoline does (the steps in this module's
    /// documentation): the reference the machine code follows, and the
    /// producer of the tests. Whether it went in (false: the ring was full
    /// and a loss was counted).
    pub fn produce(
        &self,
        probe: u32,
        kind: u32,
        time: u64,
        thread_key: u64,
        regs: &[u64; NREGS],
    ) -> bool {
        let p = probe as usize % MAX_PROBES;
        self.u64_at(OFF_HITS + 8 * p)
            .fetch_add(1, Ordering::Relaxed);
        let Some(pos) = self.claim() else {
            self.u64_at(OFF_LOST + 8 * p)
                .fetch_add(1, Ordering::Relaxed);
            return false;
        };
        self.fill(pos, probe, kind, time, thread_key, regs);
        self.commit(pos);
        true
    }

    /// Step 2: a position whose slot is free, or `None` when full.
    pub fn claim(&self) -> Option<u64> {
        let head = self.u64_at(OFF_HEAD);
        let mut pos = head.load(Ordering::Relaxed);
        loop {
            let seq = self.seq(pos).load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as i64;
            if diff == 0 {
                match head.compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => return Some(pos),
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                return None;
            } else {
                pos = head.load(Ordering::Relaxed);
            }
        }
    }

    /// Step 3's payload.
    pub fn fill(
        &self,
        pos: u64,
        probe: u32,
        kind: u32,
        time: u64,
        thread_key: u64,
        regs: &[u64; NREGS],
    ) {
        let off = self.slot_off(pos);
        let put = |i: usize, v: u64| self.u64_at(off + 8 * i).store(v, Ordering::Relaxed);
        put(1, u64::from(probe) | (u64::from(kind) << 32));
        put(2, time);
        put(3, thread_key);
        for (i, &r) in regs.iter().enumerate() {
            put(4 + i, r);
        }
    }

    /// Steps 3 and 4: publish, and wake a sleeping reader.
    pub fn commit(&self, pos: u64) {
        self.seq(pos).store(pos + 1, Ordering::Release);
        let word = self.u32_at(OFF_SLEEPING);
        if word.load(Ordering::SeqCst) == 1 {
            // SAFETY: a futex wake on a word of our shared mapping.
            unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
        }
    }

    /// Writes raw bytes anywhere in the mapping: what a hostile or broken
    /// target can do (tests of the reader).
    #[cfg(test)]
    fn scribble(&self, off: usize, v: u64) {
        self.u64_at(off & !7).store(v, Ordering::Relaxed);
    }
}

enum Taken {
    Event,
    NotYet,
    Corrupt,
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
