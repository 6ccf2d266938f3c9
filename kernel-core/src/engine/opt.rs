//! Optimized probes in the engine: a site armed with `int3` is then
//! patched, when it is safe, with a jump into a trampoline that writes the
//! hit into the process's shared ring — no stop at all (docs/optprobes.md).
//!
//! The x86_64 byte logic is in `arch::native` (`arch_prepare_optimized_kprobe`,
//! `arch_prepare_trampoline`); this module places it (Linux's
//! `arch_optimize_kprobes` / `arch_unoptimize_kprobe`), reads the rings and
//! keeps the rules that need the live process:
//!
//! - every thread is stopped while bytes change, and none may be inside
//!   the replaced range, on the site's `int3`, or in its out-of-line slot
//!   (the copy jumps back into the range) — otherwise the engine tries
//!   again later;
//! - a signal the engine saw delivered at an address inside a candidate
//!   range keeps that site on `int3` for good (its handler returns there);
//! - a thread found inside a trampoline (at unoptimize, detach, or a
//!   signal) is stepped out of it first, so that no signal frame ever
//!   returns into a trampoline and one given back can be reused;
//! - every event is read from a ring the target can scribble on: a thread
//!   key or index the engine does not know is dropped or attributed to
//!   the process, never trusted further.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::xol::{self, TRAMP_LEN};
use super::{capture, monotonic_ns, Engine, Hit, HitKind, ProbeId, Result, Sink};
use crate::arch::native::{self, OptRegion, Regs, RingPlace, BREAKPOINT};
use crate::ring::{self, Ring};
use crate::spec::{CaptureType, Fetch, Kind};
use crate::target::{Resume, SigInfo, Stop, Target, Tid};

/// Slots of a process's ring: 8 MiB, so that a burst of 32 768 hits goes
/// by without the program waiting for the reader (past that, a hit that
/// finds the ring full traps, and the program runs at the reader's pace).
pub const RING_SLOTS: usize = 32768;
/// Ring positions the engine reads per turn of its loop.
const DRAIN_TURN: u64 = 2048;
/// Tries to optimize a site whose range a thread keeps being found in.
const MAX_ATTEMPTS: u32 = 100;
/// Signal addresses remembered per process; past this every multi-
/// instruction range is refused (a program that takes signals everywhere).
const MAX_SIGNAL_SITES: usize = 4096;

/// Wakes the thread that runs the engine (it sleeps in `waitpid`, which a
/// futex cannot interrupt) when a ring has events: `run` then returns or
/// loops, and reads them. Without one, probes stay on `int3`.
pub type RingWaker = Arc<dyn Fn() + Send + Sync>;

/// Where a site stands as an optimized probe.
#[derive(Clone, Debug)]
pub(super) enum OptState {
    /// On `int3`, and why.
    Int3(String),
    Optimized(OptSite),
}

#[derive(Clone, Debug)]
pub(super) struct OptSite {
    pub region: OptRegion,
    pub tramp: u64,
    /// The trampoline's `int3` for a hit that found the ring full.
    pub full_trap: u64,
    /// The site's ring-local index.
    pub index: u32,
    /// The probes the trampoline reports for.
    pub probes: Vec<ProbeId>,
}

/// The function around a site, as its file has it.
#[derive(Clone, Debug)]
pub(super) struct FuncInfo {
    /// Its address in the process, and its bytes.
    pub addr: u64,
    pub bytes: Vec<u8>,
    /// The module file it is in, and the module's load bias.
    pub file: std::path::PathBuf,
    pub bias: u64,
}

/// What a ring-local index stands for.
#[derive(Clone, Debug)]
struct IndexEntry {
    site: u64,
    probes: Vec<ProbeId>,
    /// Its trampoline hijacks returns (return probes at the site).
    returns: bool,
    /// The producers' `missed` count of this index already reported.
    missed_seen: u64,
    /// Unoptimized when the head was here: free once the reader passed it.
    retired_at: Option<u64>,
}

/// A process's ring: the engine's mapping, the target's, and what its
/// indices and thread keys mean.
pub(super) struct OptRing {
    ring: Ring,
    _fd: OwnedFd,
    /// Where the target maps it, and how long it is.
    addr: u64,
    len: u64,
    index: Vec<Option<IndexEntry>>,
    /// Thread key (`fs_base`) → tid.
    keys: HashMap<u64, Tid>,
    /// The reader's position, for the watcher.
    tail: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// The return code of optimized return probes, once one is placed.
    ret_code: Option<native::ReturnCode>,
}

impl Drop for OptRing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl OptRing {
    fn alloc_index(&mut self, site: u64, probes: Vec<ProbeId>, returns: bool) -> Option<u32> {
        let free = self.index.iter().position(Option::is_none)?;
        self.index[free] = Some(IndexEntry {
            site,
            probes,
            returns,
            missed_seen: self.ring.missed(free as u32),
            retired_at: None,
        });
        Some(free as u32)
    }

    fn retire(&mut self, i: u32, head: u64) {
        if let Some(Some(e)) = self.index.get_mut(i as usize) {
            e.retired_at = Some(head);
        }
    }
}

/// What stopped an attempt: for good, or for now.
enum Fail {
    Refused(String),
    Busy(String),
}

impl From<super::EngineError> for Fail {
    fn from(e: super::EngineError) -> Fail {
        Fail::Refused(e.to_string())
    }
}

#[path = "opt_ret.rs"]
mod ret;

/// The producers' clock (the TSC) and CLOCK_MONOTONIC read together once,
/// to turn a batch of events' times into nanoseconds.
struct TickClock {
    ticks: u64,
    ns: u64,
    rate: f64,
}

impl TickClock {
    fn now() -> TickClock {
        TickClock {
            ticks: native::clock_ticks(),
            ns: monotonic_ns(),
            rate: ns_per_tick(),
        }
    }

    /// A producer's clock reading as CLOCK_MONOTONIC nanoseconds.
    fn ns(&self, t: u64) -> u64 {
        let ago = (self.ticks.saturating_sub(t) as f64 * self.rate) as u64;
        self.ns.saturating_sub(ago)
    }
}

/// Nanoseconds per TSC tick, measured once over 2 ms.
fn ns_per_tick() -> f64 {
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let (t0, m0) = (native::clock_ticks(), monotonic_ns());
        while monotonic_ns() < m0 + 2_000_000 {
            std::hint::spin_loop();
        }
        let (t1, m1) = (native::clock_ticks(), monotonic_ns());
        (m1 - m0) as f64 / t1.saturating_sub(t0).max(1) as f64
    })
}

/// Whether a capture needs only the registers (memory is read safely only
/// while the thread is stopped, which an optimized hit never is).
fn register_only(c: &crate::spec::Capture) -> bool {
    matches!(
        c.ty,
        CaptureType::Unsigned(_) | CaptureType::Signed(_) | CaptureType::Hex(_)
    ) && match c.fetch {
        Fetch::Reg(_) | Fetch::StackPointer => true,
        Fetch::Arg(n) => (1..=6).contains(&n),
        _ => false,
    }
}

impl<T: Target> Engine<T> {
    /// Lets the engine optimize probes: `waker` is called from a watcher
    /// thread when a ring has events (see [`RingWaker`]).
    pub fn set_ring_waker(&mut self, waker: RingWaker) {
        self.ring_waker = Some(waker);
    }

    /// Allows or forbids optimizing one probe (`--no-optimize` for one
    /// probe); its sites follow at once.
    pub fn set_optimize(&mut self, id: ProbeId, on: bool) -> Result<()> {
        let probe = self
            .probes
            .get_mut(&id)
            .ok_or(super::EngineError::NoProbe(id.0))?;
        probe.optimize = on;
        let placed: Vec<(Tid, u64)> = probe.placed.iter().map(|(&p, &a)| (p, a)).collect();
        for (pid, addr) in placed {
            self.sync_opt(pid, addr);
        }
        Ok(())
    }

    /// How the probe is placed in each process: `optimized`, or `int3: `
    /// and why not.
    pub fn placement_states(&self, id: ProbeId) -> Vec<(Tid, u64, String)> {
        let mut v: Vec<(Tid, u64, String)> = self
            .placements(id)
            .into_iter()
            .filter_map(|(pid, addr)| {
                let site = self.processes.get(&pid)?.sites.get(&addr)?;
                let state = match &site.opt {
                    OptState::Optimized(_) => "optimized".to_string(),
                    OptState::Int3(why) => format!("int3: {why}"),
                };
                Some((pid, addr, state))
            })
            .collect();
        v.sort();
        v
    }

    /// Why the site cannot be optimized now, from the probes and options
    /// alone (nothing is read from the process).
    fn opt_refusal(&self, pid: Tid, addr: u64) -> Option<String> {
        if self.options.no_optimize {
            return Some("optimization is off (--no-optimize)".into());
        }
        if self.ring_waker.is_none() {
            return Some("this engine has no ring reader".into());
        }
        let site = self.processes.get(&pid)?.sites.get(&addr)?;
        if site.internal.is_some() {
            return Some("the engine's own breakpoint".into());
        }
        if !site.armed {
            return Some("disabled".into());
        }
        for id in &site.probes {
            let Some(p) = self.probes.get(id) else {
                continue;
            };
            if !p.optimize {
                return Some("the probe asks for int3 (no-optimize, or a sync probe)".into());
            }
            if p.spec.kind == Kind::Return {
                if let Some(max) = p.spec.maxactive {
                    return Some(format!(
                        "maxactive={max} is counted per probe on the trap path only"
                    ));
                }
                if !p.spec.captures.is_empty() {
                    return Some(
                        "a return probe's captures are taken at entry, on the trap path only"
                            .into(),
                    );
                }
            }
            if p.spec.post {
                return Some("a post handler needs a stop after the instruction".into());
            }
            if let Some(c) = p.spec.captures.iter().find(|c| !register_only(c)) {
                return Some(format!(
                    "capture `{}` reads memory, which is read safely only while the thread is \
                     stopped",
                    c.name
                ));
            }
        }
        if site.func.is_none() {
            return Some(
                "no sized function symbol covers it, so its branches cannot be checked".into(),
            );
        }
        None
    }

    /// The enabled probes of a site, which its trampoline reports for.
    fn site_probes(&self, pid: Tid, addr: u64) -> Vec<ProbeId> {
        self.processes[&pid].sites[&addr]
            .probes
            .iter()
            .copied()
            .filter(|id| self.probes.get(id).is_some_and(|p| p.enabled))
            .collect()
    }

    /// Makes a site's optimization agree with its probes: unoptimized when
    /// it may no longer be or reports for other probes, optimized when it
    /// may be. Failures leave it on `int3`, with the reason as its state.
    pub(super) fn sync_opt(&mut self, pid: Tid, addr: u64) {
        let Some(site) = self.processes.get(&pid).and_then(|p| p.sites.get(&addr)) else {
            return;
        };
        let refusal = self.opt_refusal(pid, addr);
        if let OptState::Optimized(o) = &site.opt {
            if refusal.is_none() && o.probes == self.site_probes(pid, addr) {
                return;
            }
            if let Err(e) = self.unoptimize(pid, addr) {
                self.set_opt_state(pid, addr, OptState::Int3(format!("unoptimizing: {e}")));
                return;
            }
        }
        if let Some(why) = refusal {
            self.set_opt_state(pid, addr, OptState::Int3(why));
            return;
        }
        self.optimize(pid, addr, 0);
    }

    fn set_opt_state(&mut self, pid: Tid, addr: u64, state: OptState) {
        let Some(site) = self
            .processes
            .get_mut(&pid)
            .and_then(|p| p.sites.get_mut(&addr))
        else {
            return;
        };
        let words = |s: &OptState| match s {
            OptState::Optimized(_) => "optimized".to_string(),
            OptState::Int3(why) => format!("int3: {why}"),
        };
        let (before, after) = (words(&site.opt), words(&state));
        site.opt = state;
        // Said when it means something to the user: not the passing
        // states of a site being worked on.
        let passing = after.starts_with("int3: waiting") || after == "int3: unoptimized";
        if before != after && !passing && site.armed && site.internal.is_none() {
            for &probe in &site.probes {
                self.placed_notices.push(super::Notice::Placed {
                    probe,
                    pid,
                    addr,
                    state: after.clone(),
                });
            }
        }
    }

    /// One attempt; a busy site is tried again from `run`.
    fn optimize(&mut self, pid: Tid, addr: u64, attempt: u32) {
        let state = match self.try_optimize(pid, addr) {
            Ok(o) => OptState::Optimized(o),
            Err(Fail::Refused(why)) => OptState::Int3(why),
            Err(Fail::Busy(why)) if attempt + 1 >= MAX_ATTEMPTS => {
                OptState::Int3(format!("{why} at each of {MAX_ATTEMPTS} tries"))
            }
            Err(Fail::Busy(why)) => {
                self.opt_retry.push((pid, addr, attempt + 1));
                OptState::Int3(format!("waiting: {why}"))
            }
        };
        self.set_opt_state(pid, addr, state);
    }

    /// Sites that were busy get another try (from `run`, between stops).
    pub(super) fn retry_optimizations(&mut self) {
        for (pid, addr, attempt) in std::mem::take(&mut self.opt_retry) {
            let still = self
                .processes
                .get(&pid)
                .and_then(|p| p.sites.get(&addr))
                .is_some_and(|s| matches!(s.opt, OptState::Int3(_)));
            if still && self.opt_refusal(pid, addr).is_none() {
                self.optimize(pid, addr, attempt);
            }
        }
    }

    fn try_optimize(&mut self, pid: Tid, addr: u64) -> std::result::Result<OptSite, Fail> {
        if !native::has_rdfsbase() {
            // Without it the thread key comes from %fs:0, which faults in
            // a thread whose TLS is not set up yet.
            return Err(Fail::Refused(
                "this CPU or kernel does not let user space read fs_base (rdfsbase)".into(),
            ));
        }
        let site = &self.processes[&pid].sites[&addr];
        let func = site.func.clone().expect("checked by opt_refusal");
        let orig_first = site.prepared.bytes[0];
        let returns = self
            .site_probes(pid, addr)
            .into_iter()
            .any(|id| self.is_return_probe(id));
        if returns && addr != func.addr {
            return Err(Fail::Refused(format!(
                "a return probe's jump must be at its function's first instruction ({:#x})",
                func.addr
            )));
        }
        let region = native::arch_prepare_optimized_kprobe(&func.bytes, func.addr, addr)
            .map_err(Fail::Refused)?;
        if region.bytes.len() > native::JMP_LEN || region.addr != addr {
            // Several instructions (or one after an endbr64): nothing
            // anywhere in the module may branch inside.
            let targets = self.branch_targets_of(&func.file)?;
            let (lo, hi) = (
                region.addr.wrapping_sub(func.bias),
                region.end().wrapping_sub(func.bias),
            );
            let i = targets.partition_point(|&t| t <= lo);
            if let Some(&t) = targets.get(i).filter(|&&t| t < hi) {
                return Err(Fail::Refused(format!(
                    "code elsewhere in {} branches to {:#x}, inside the range a jump would \
                     replace",
                    func.file.display(),
                    t.wrapping_add(func.bias)
                )));
            }
        }
        let proc_ = &self.processes[&pid];
        // Another probe inside the range, or a range around this site.
        if let Some((&a, _)) = proc_
            .sites
            .range(region.addr..region.end())
            .find(|(&a, _)| a != addr)
        {
            return Err(Fail::Refused(format!(
                "another probe at {a:#x} is inside the {} bytes a jump would replace",
                region.bytes.len()
            )));
        }
        if let Some(&a) = self.signal_sites.get(&pid).and_then(|s| {
            s.iter()
                .find(|&&a| a > region.addr && a < region.end())
                .or(s.len().ge(&MAX_SIGNAL_SITES).then_some(&region.addr))
        }) {
            return Err(Fail::Refused(format!(
                "a signal interrupted a thread at {a:#x}, inside the range a jump would \
                 replace: its handler may return there"
            )));
        }
        let mut live = vec![0u8; region.bytes.len()];
        self.target
            .read_memory(pid, region.addr, &mut live)
            .map_err(|e| Fail::Refused(e.to_string()))?;
        if region.addr == addr {
            live[0] = orig_first;
        }
        if live != region.bytes {
            return Err(Fail::Refused(
                "the live bytes of the range differ from the file's".into(),
            ));
        }
        let probes = self.site_probes(pid, addr);
        if probes.is_empty() {
            return Err(Fail::Refused("no enabled probe".into()));
        }
        // Every thread stops; from here on, each way out resumes them.
        let quiet = self.stop_all(pid);
        let r = self.optimize_stopped(pid, addr, region, probes);
        self.resume_quiet(quiet);
        r
    }

    /// Every direct branch target in the executable segments of `file`
    /// (file addresses, sorted), decoded once per module.
    fn branch_targets_of(
        &mut self,
        file: &std::path::Path,
    ) -> std::result::Result<Arc<Vec<u64>>, Fail> {
        if let Some(t) = self.branch_targets.get(file) {
            return Ok(t.clone());
        }
        let elf = self
            .elf
            .get(file)
            .map_err(|e| Fail::Refused(e.to_string()))?;
        let mut all = Vec::new();
        for seg in elf.segments.iter().filter(|s| s.exec) {
            if let Some(code) = elf.file_bytes(seg.vaddr, seg.filesz as usize) {
                all.extend(native::direct_branch_targets(&code, seg.vaddr));
            }
        }
        all.sort_unstable();
        all.dedup();
        let all = Arc::new(all);
        self.branch_targets.insert(file.to_path_buf(), all.clone());
        Ok(all)
    }

    /// The part of [`try_optimize`] that needs every thread stopped.
    fn optimize_stopped(
        &mut self,
        pid: Tid,
        addr: u64,
        region: OptRegion,
        probes: Vec<ProbeId>,
    ) -> std::result::Result<OptSite, Fail> {
        self.learn_keys(pid);
        // No thread in the range, on the int3, or in the site's slot.
        let slot = self.processes[&pid].sites[&addr]
            .slot
            .as_ref()
            .map(|(a, _)| *a);
        for tid in self.threads_of(pid) {
            if self.threads[&tid].in_slot.is_some_and(|x| x.site == addr) {
                return Err(Fail::Busy(format!(
                    "thread {tid} is stepping the probe's copy"
                )));
            }
            let Ok(regs) = self.target.get_regs(tid) else {
                continue;
            };
            let ip = regs.rip;
            let in_range = ip > region.addr && ip < region.end();
            let on_int3 = ip == addr + 1;
            let in_slot = slot.is_some_and(|s| ip >= s && ip < s + native::SLOT_SIZE as u64);
            if in_range || on_int3 || in_slot {
                return Err(Fail::Busy(format!("thread {tid} is at {ip:#x}")));
            }
        }
        let tramp = self.alloc_tramp(pid, region.addr)?;
        let r = self.place_trampoline(pid, addr, &region, tramp, probes.clone());
        let (index, full_trap) = match r {
            Ok(i) => i,
            Err(e) => {
                self.release_tramp(pid, tramp);
                return Err(e);
            }
        };
        let patch = region.patch(tramp).map_err(Fail::Refused)?;
        let write = self
            .target
            .write_memory(pid, region.addr, &patch)
            .and_then(|_| {
                if region.addr != addr {
                    // The int3 before an endbr64 goes: the jump is after it.
                    let first = self.processes[&pid].sites[&addr].prepared.bytes[0];
                    self.target.write_memory(pid, addr, &[first])
                } else {
                    Ok(())
                }
            });
        if let Err(e) = write {
            let _ = self
                .target
                .write_memory(pid, region.addr, &region.bytes)
                .and_then(|_| self.target.write_memory(pid, addr, BREAKPOINT));
            self.release_tramp(pid, tramp);
            if let Some(r) = self.rings.get_mut(&pid) {
                r.index[index as usize] = None;
            }
            return Err(Fail::Refused(e.to_string()));
        }
        Ok(OptSite {
            region,
            tramp,
            full_trap,
            index,
            probes,
        })
    }

    /// Writes the site's trampoline at `tramp`, with a ring index of its
    /// own (making the ring first if the process has none).
    fn place_trampoline(
        &mut self,
        pid: Tid,
        addr: u64,
        region: &OptRegion,
        tramp: u64,
        probes: Vec<ProbeId>,
    ) -> std::result::Result<(u32, u64), Fail> {
        self.ensure_ring(pid)?;
        let returns = probes.iter().any(|&id| self.is_return_probe(id));
        let entry_event = probes.iter().any(|id| {
            self.probes
                .get(id)
                .is_some_and(|p| p.spec.kind != Kind::Return || p.spec.entry)
        });
        let return_pads = if returns {
            Some(self.ensure_return_code(pid, addr)?)
        } else {
            None
        };
        let r = self.rings.get_mut(&pid).expect("just made");
        let index = r.alloc_index(addr, probes, returns).ok_or_else(|| {
            Fail::Refused(format!(
                "{} optimized sites already write into this process's ring",
                ring::MAX_PROBES
            ))
        })?;
        let place = RingPlace {
            addr: r.addr,
            slots: r.ring.slots(),
            probe: index,
            rdfsbase: native::has_rdfsbase(),
            return_pads,
            entry_event,
        };
        let built = native::arch_prepare_trampoline(region, tramp, place).and_then(|t| {
            if t.code.len() as u64 > TRAMP_LEN {
                Err(format!("a trampoline of {} bytes", t.code.len()))
            } else {
                Ok(t)
            }
        });
        let written = built.and_then(|t| {
            self.target
                .write_memory(pid, tramp, &t.code)
                .map_err(|e| e.to_string())
                .map(|_| t.full_trap)
        });
        match written {
            Ok(full_trap) => Ok((index, full_trap)),
            Err(e) => {
                if let Some(r) = self.rings.get_mut(&pid) {
                    r.index[index as usize] = None;
                }
                Err(Fail::Refused(e))
            }
        }
    }

    /// Room for a trampoline within reach of `near`.
    fn alloc_tramp(&mut self, pid: Tid, near: u64) -> std::result::Result<u64, Fail> {
        self.alloc_in_area(pid, near, "a trampoline", xol::Area::alloc_tramp)
    }

    /// What `take` finds in an area of `pid` within reach of `near`, in a
    /// new area mapped there if none has room.
    fn alloc_in_area(
        &mut self,
        pid: Tid,
        near: u64,
        what: &str,
        take: impl Fn(&mut xol::Area) -> Option<u64>,
    ) -> std::result::Result<u64, Fail> {
        let find = |e: &mut Self| {
            e.processes
                .get_mut(&pid)
                .expect("checked")
                .areas
                .iter_mut()
                .filter(|a| a.reaches(near))
                .find_map(&take)
        };
        if let Some(t) = find(self) {
            return Ok(t);
        }
        // A new area: map it as for a slot, and give the slot back.
        let slot = self.alloc_slot(pid, near)?;
        if let Some(a) = self
            .processes
            .get_mut(&pid)
            .expect("checked")
            .areas
            .iter_mut()
            .find(|a| a.contains(slot))
        {
            a.release(slot);
        }
        find(self)
            .ok_or_else(|| Fail::Refused(format!("no room for {what} within 2 GiB of {near:#x}")))
    }

    fn release_tramp(&mut self, pid: Tid, tramp: u64) {
        if self.pinned.contains(&tramp) {
            return;
        }
        if let Some(a) = self
            .processes
            .get_mut(&pid)
            .and_then(|p| p.areas.iter_mut().find(|a| a.contains(tramp)))
        {
            a.release_tramp(tramp);
        }
    }

    /// The process's ring, made in the target (memfd_create, ftruncate,
    /// mmap shared, madvise DONTFORK, close — injected into a stopped
    /// thread) and opened by the engine through /proc, so that no
    /// descriptor of the engine ever enters the target. The caller has
    /// every thread stopped and an area mapped.
    fn ensure_ring(&mut self, pid: Tid) -> std::result::Result<(), Fail> {
        if self.rings.contains_key(&pid) {
            return Ok(());
        }
        let Some(area) = self.processes[&pid].areas.first() else {
            return Err(Fail::Refused("no engine area in the process".into()));
        };
        let (gadget, scratch) = (area.gadget(), area.start + xol::SCRATCH_OFFSET);
        let tid = self.stopped_thread(pid)?;
        if self.threads.get(&tid).is_some_and(|t| t.at_event_stop) {
            self.leave_syscall_stop(tid)?;
        }
        let len = Ring::len_for(RING_SLOTS) as u64;
        let mut signals = Vec::new();
        let made = self.make_ring_in(pid, tid, gadget, scratch, len, &mut signals);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.pending.extend(signals);
        }
        let (fd, addr) = made.map_err(|e| Fail::Refused(format!("making the event ring: {e}")))?;
        let ring = Ring::adopt(&fd, RING_SLOTS)
            .map_err(|e| Fail::Refused(format!("making the event ring: {e}")))?;
        let tail = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = Ring::open(&fd).map_err(|e| Fail::Refused(e.to_string()))?;
        let waker = self.ring_waker.clone().expect("checked by opt_refusal");
        let (t, s) = (tail.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("wprobe-ring-{pid}"))
            .spawn(move || watch(watcher, t, s, waker))
            .map_err(|e| Fail::Refused(format!("starting the ring's watcher: {e}")))?;
        self.rings.insert(
            pid,
            OptRing {
                ring,
                _fd: fd,
                addr,
                len,
                index: vec![None; ring::MAX_PROBES],
                keys: HashMap::new(),
                tail,
                stop,
                ret_code: None,
            },
        );
        self.learn_keys(pid);
        Ok(())
    }

    fn make_ring_in(
        &mut self,
        pid: Tid,
        tid: Tid,
        gadget: u64,
        scratch: u64,
        len: u64,
        signals: &mut Vec<SigInfo>,
    ) -> std::result::Result<(OwnedFd, u64), String> {
        let mut call = |e: &mut Self, nr: libc::c_long, args: [u64; 6], what: &str| {
            let r = xol::inject_syscall(&mut e.target, tid, gadget, nr as u64, args, signals)
                .map_err(|e| e.to_string())?;
            if (r as i64) < 0 && (r as i64) > -4096 {
                return Err(format!(
                    "{what} in process {pid} failed: {}",
                    std::io::Error::from_raw_os_error(-(r as i64) as i32)
                ));
            }
            Ok(r)
        };
        self.target
            .write_memory(pid, scratch, b"wprobe-ring\0")
            .map_err(|e| e.to_string())?;
        let flags = (libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) as u64;
        let tfd = call(
            self,
            libc::SYS_memfd_create,
            [scratch, flags, 0, 0, 0, 0],
            "memfd_create",
        )?;
        let made = (|| {
            call(
                self,
                libc::SYS_ftruncate,
                [tfd, len, 0, 0, 0, 0],
                "ftruncate",
            )?;
            let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
            let addr = call(
                self,
                libc::SYS_mmap,
                [0, len, prot, libc::MAP_SHARED as u64, tfd, 0],
                "mmap",
            )?;
            // A fork child does not share it: its probes are made anew.
            let advised = call(
                self,
                libc::SYS_madvise,
                [addr, len, libc::MADV_DONTFORK as u64, 0, 0, 0],
                "madvise",
            );
            let path = format!("/proc/{pid}/fd/{tfd}");
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("opening {path}: {e}"));
            match advised.and(opened) {
                Ok(f) => Ok((OwnedFd::from(f), addr)),
                Err(e) => {
                    let _ = call(self, libc::SYS_munmap, [addr, len, 0, 0, 0, 0], "munmap");
                    Err(e)
                }
            }
        })();
        let _ = call(self, libc::SYS_close, [tfd, 0, 0, 0, 0, 0], "close");
        made
    }

    /// Records the thread key of every stopped thread of `pid`.
    fn learn_keys(&mut self, pid: Tid) {
        for tid in self.threads_of(pid) {
            if self.threads[&tid].stopped {
                self.learn_key(pid, tid);
            }
        }
    }

    /// Records the thread key of `tid`, stopped.
    pub(super) fn learn_key(&mut self, pid: Tid, tid: Tid) {
        if !self.rings.contains_key(&pid) {
            return;
        }
        if let Ok(r) = self.target.get_regs(tid) {
            if let Some(ring) = self.rings.get_mut(&pid) {
                ring.keys.retain(|_, t| *t != tid);
                ring.keys.insert(r.fs_base, tid);
            }
        }
    }

    /// A thread that ended no longer owns its key (a new thread may reuse
    /// its TCB).
    pub(super) fn forget_key(&mut self, pid: Tid, tid: Tid) {
        if let Some(r) = self.rings.get_mut(&pid) {
            r.keys.retain(|_, t| *t != tid);
        }
    }

    /// Lets go the threads [`stop_all`](Self::stop_all) stopped.
    pub(super) fn resume_quiet(&mut self, quiet: Vec<(Tid, bool)>) {
        for (tid, group) in quiet {
            if self.threads.get(&tid).is_some_and(|t| t.stopped) {
                // Back to its group-stop, unless it was stepped out of a
                // trampoline meanwhile (no longer in that stop: LISTEN
                // would fail and leave it stopped for good).
                let stepped = self.threads.get(&tid).is_some_and(|t| t.at_signal_stop);
                let how = if group && !stepped {
                    Resume::Listen
                } else {
                    Resume::Continue
                };
                let _ = self.resume(tid, how, 0);
            }
        }
    }

    /// Takes the jump out: the original bytes back (and the `int3` if the
    /// site stays armed), every thread out of the trampoline first.
    pub(super) fn unoptimize(&mut self, pid: Tid, addr: u64) -> Result<()> {
        let Some(OptState::Optimized(o)) = self
            .processes
            .get(&pid)
            .and_then(|p| p.sites.get(&addr))
            .map(|s| s.opt.clone())
        else {
            return Ok(());
        };
        let mut quiet = self.stop_all(pid);
        quiet.extend(self.take_full_traps(pid, addr, &o));
        let r = self.unoptimize_stopped(pid, addr, &o);
        self.resume_quiet(quiet);
        r
    }

    /// Threads stopped at the trampoline's full-ring trap whose stop the
    /// run loop has not handled: their hits are reported now (after what
    /// the ring holds, which came first), kept for `drain`, and their
    /// stops taken off the queue — once stepped out of the trampoline the
    /// trap would no longer be recognized. Returns them, to be let go.
    fn take_full_traps(&mut self, pid: Tid, addr: u64, o: &OptSite) -> Vec<(Tid, bool)> {
        let mut trapped = Vec::new();
        let deferred = std::mem::take(&mut self.deferred);
        for s in deferred {
            let at_trap = match &s {
                Stop::Signal { tid, info }
                    if info.signo() == libc::SIGTRAP
                        && self.threads.get(tid).is_some_and(|t| t.pid == pid) =>
                {
                    self.target
                        .get_regs(*tid)
                        .ok()
                        .filter(|r| r.rip == o.full_trap + 1)
                }
                _ => None,
            };
            match at_trap {
                Some(regs) => trapped.push((s.tid(), regs)),
                None => self.deferred.push_back(s),
            }
        }
        if trapped.is_empty() {
            return Vec::new();
        }
        self.keep_late_hits(pid);
        let mut c = Collect::default();
        let mut quiet = Vec::new();
        for (tid, regs) in trapped {
            let mut at_probe = regs;
            at_probe.rip = addr;
            let _ = self.emit(tid, pid, addr, &mut at_probe, HitKind::Entry, &mut c);
            self.full_trap_return_entries(tid, pid, addr, &at_probe, &mut c);
            quiet.push((tid, false));
        }
        self.late_hits.extend(c.0);
        quiet
    }

    fn unoptimize_stopped(&mut self, pid: Tid, addr: u64, o: &OptSite) -> Result<()> {
        let mut pinned = false;
        for tid in self.threads_of(pid) {
            pinned |= !self.step_out_of(tid, o.tramp);
        }
        if o.probes.iter().any(|&id| self.is_return_probe(id)) {
            // Returns in flight through this site's instances go home
            // directly (their return events are not reported, as when a
            // kretprobe is unregistered).
            self.out_of_return_code(pid);
            let index = o.index;
            self.write_back_instances(pid, pid, |i| i.probe == index);
        }
        self.target
            .write_memory(pid, o.region.addr, &o.region.bytes)?;
        let armed = self.processes[&pid].sites[&addr].armed;
        if armed {
            self.target.write_memory(pid, addr, BREAKPOINT)?;
        }
        if let Some(r) = self.rings.get_mut(&pid) {
            // Every thread is out of the trampoline: nothing claimed after
            // the head as it is now can name this index.
            let head = r.ring.head();
            r.retire(o.index, head);
        }
        if pinned {
            self.pinned.insert(o.tramp);
        }
        self.release_tramp(pid, o.tramp);
        self.set_opt_state(pid, addr, OptState::Int3("unoptimized".into()));
        Ok(())
    }

    /// Steps a stopped thread until it is out of the trampoline at
    /// `tramp`. False when it cannot leave (an instruction of the
    /// relocated copy faults there): the trampoline is then kept for good.
    pub(super) fn step_out_of(&mut self, tid: Tid, tramp: u64) -> bool {
        let pid = self.threads.get(&tid).map_or(tid, |t| t.pid);
        // A trampoline, or the return code (longer).
        let len = self
            .return_code_at(pid, tramp)
            .map_or(TRAMP_LEN, |(_, len)| len);
        let inside = |ip: u64| ip >= tramp && ip < tramp + len;
        for _ in 0..10_000 {
            let Ok(regs) = self.target.get_regs(tid) else {
                return true;
            };
            if self.is_return_trap(pid, regs.rip.wrapping_sub(1)) {
                // Stopped at the return code's trap, a stop still to be
                // handled: never stepped on from there (it goes home from
                // the instance), and that stop is then the engine's.
                self.late_full_trap(tid, pid);
                let before = self.deferred.len();
                self.deferred.retain(|s| {
                    !matches!(s, Stop::Signal { tid: t, info }
                        if *t == tid && info.signo() == libc::SIGTRAP
                            && info.code() == super::run::SI_KERNEL)
                });
                if self.deferred.len() == before {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.trap_settled = true;
                    }
                }
                continue;
            }
            if !inside(regs.rip) {
                self.take_step_trap(tid);
                // The trap flag of the steps never stays behind: a popfq
                // stepped (or one stepped while a signal was due) leaves
                // it in the flags, and the thread would trap on.
                if let Ok(mut r) = self.target.get_regs(tid) {
                    if r.eflags & 0x100 != 0 {
                        r.eflags &= !0x100;
                        let _ = self.target.set_regs(tid, &r);
                    }
                }
                return true;
            }
            // A `pushfq` stepped pushes the trap flag the step set; the
            // `popfq` after it would keep the thread stepping untraced.
            let mut op = [0u8; 1];
            let pushf = self.target.read_memory(pid, regs.rip, &mut op).is_ok() && op[0] == 0x9c;
            if self.target.resume(tid, Resume::Step, 0).is_err() {
                return true;
            }
            let stop = self.target.wait_for(tid);
            if pushf {
                self.clear_pushed_trap_flag(tid, pid, regs.rsp - 8);
            }
            match stop {
                Ok(Stop::Signal { info, .. }) => {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.at_signal_stop = true;
                    }
                    let step = info.signo() == libc::SIGTRAP && info.code() > 0;
                    if info.signo() == libc::SIGTRAP && info.code() == super::run::SI_KERNEL {
                        // The full-ring trap, reached while stepping: its
                        // hit is kept for `drain`, after the ring's.
                        self.late_full_trap(tid, pid);
                    }
                    if !step {
                        if info.is_fault() {
                            // The relocated instruction faults: it will
                            // again when the thread runs, and the signal is
                            // delivered then, in place (see `on_signal`).
                            return false;
                        }
                        if let Some(t) = self.threads.get_mut(&tid) {
                            t.pending.push(info);
                        }
                    }
                }
                Ok(s @ (Stop::Exited { .. } | Stop::Killed { .. })) => {
                    // Its end is the run loop's to handle.
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.exiting = true;
                    }
                    self.deferred.push_back(s);
                    return true;
                }
                Err(_) => return true,
                Ok(_) => {}
            }
        }
        false
    }

    /// The site whose trampoline traps at `addr` for a full ring.
    pub(super) fn full_trap_site(&self, pid: Tid, addr: u64) -> Option<u64> {
        self.processes
            .get(&pid)?
            .sites
            .iter()
            .find_map(|(&a, s)| match &s.opt {
                OptState::Optimized(o) if o.full_trap == addr => Some(a),
                _ => None,
            })
    }

    /// A hit that found the ring full, stopped at its trampoline's trap
    /// with the registers of the probe: the ring first (those hits came
    /// before), then this one, as an `int3` hit is reported.
    pub(super) fn on_full_trap(
        &mut self,
        tid: Tid,
        pid: Tid,
        site: u64,
        regs: Regs,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        self.drain_ring_all(pid, sink, true);
        let mut at_probe = regs;
        at_probe.rip = site;
        let before = at_probe;
        self.emit(tid, pid, site, &mut at_probe, HitKind::Entry, sink)?;
        self.full_trap_return_entries(tid, pid, site, &at_probe, sink);
        debug_assert_eq!(before, at_probe, "optimized probes take no verdict");
        self.resume(tid, Resume::Continue, 0)
    }

    /// Reports (for `drain`) the hit of a thread stopped at a full-ring
    /// trap outside the run loop.
    pub(super) fn late_full_trap(&mut self, tid: Tid, pid: Tid) {
        let Ok(regs) = self.target.get_regs(tid) else {
            return;
        };
        if self.is_return_trap(pid, regs.rip.wrapping_sub(1)) {
            self.keep_late_hits(pid);
            let mut c = Collect::default();
            self.settle_return_trap(tid, pid, &mut c);
            self.late_hits.extend(c.0);
            return;
        }
        let Some(site) = self.full_trap_site(pid, regs.rip.wrapping_sub(1)) else {
            return;
        };
        self.keep_late_hits(pid);
        let mut c = Collect::default();
        let mut at_probe = regs;
        at_probe.rip = site;
        let _ = self.emit(tid, pid, site, &mut at_probe, HitKind::Entry, &mut c);
        self.full_trap_return_entries(tid, pid, site, &at_probe, &mut c);
        self.late_hits.extend(c.0);
    }

    /// Clears TF in the flags a stepped `pushfq` left at `at`, if the
    /// thread's stack pointer says the push happened.
    fn clear_pushed_trap_flag(&mut self, tid: Tid, pid: Tid, at: u64) {
        let Ok(now) = self.target.get_regs(tid) else {
            return;
        };
        if now.rsp != at {
            return;
        }
        let mut w = [0u8; 8];
        if self.target.read_memory(pid, at, &mut w).is_ok() {
            let flags = u64::from_le_bytes(w) & !0x100;
            let _ = self.target.write_memory(pid, at, &flags.to_le_bytes());
        }
    }

    /// A step's trap still queued behind another signal's stop is taken
    /// now, so that it never reaches the program.
    fn take_step_trap(&mut self, tid: Tid) {
        for _ in 0..4 {
            if !self.target.trap_pending(tid) {
                return;
            }
            if self.target.resume(tid, Resume::Continue, 0).is_err() {
                return;
            }
            match self.target.wait_for(tid) {
                Ok(Stop::Signal { info, .. }) => {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.at_signal_stop = true;
                        if info.signo() != libc::SIGTRAP {
                            t.pending.push(info);
                        }
                    }
                }
                Ok(s @ (Stop::Exited { .. } | Stop::Killed { .. })) => {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.exiting = true;
                    }
                    self.deferred.push_back(s);
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// `buf`, read from `pid` at `addr`, with the original bytes put back
    /// where an optimized site's jump replaced them: what the memory holds
    /// for the program.
    pub(super) fn overlay_original(&self, pid: Tid, addr: u64, buf: &mut [u8]) {
        let Some(p) = self.processes.get(&pid) else {
            return;
        };
        let end = addr + buf.len() as u64;
        for s in p.sites.values() {
            let OptState::Optimized(o) = &s.opt else {
                continue;
            };
            for (i, &b) in o.region.bytes.iter().enumerate() {
                let a = o.region.addr + i as u64;
                if a >= addr && a < end {
                    buf[(a - addr) as usize] = b;
                }
            }
        }
    }

    /// Steps `tid`, stopped, out of the trampoline it is in, if any.
    pub(super) fn out_of_trampoline(&mut self, tid: Tid) {
        let Some(pid) = self.threads.get(&tid).map(|t| t.pid) else {
            return;
        };
        if !self.rings.contains_key(&pid) {
            return;
        }
        let Ok(regs) = self.target.get_regs(tid) else {
            return;
        };
        if let Some(tramp) = self.trampoline_at(pid, regs.rip) {
            if !self.step_out_of(tid, tramp) {
                self.pinned.insert(tramp);
            }
        }
    }

    /// The trampoline `ip` is in, in `pid`.
    pub(super) fn trampoline_at(&self, pid: Tid, ip: u64) -> Option<u64> {
        self.processes
            .get(&pid)?
            .sites
            .values()
            .find_map(|s| match &s.opt {
                OptState::Optimized(o) if ip >= o.tramp && ip < o.tramp + TRAMP_LEN => {
                    Some(o.tramp)
                }
                _ => None,
            })
            .or_else(|| self.return_code_at(pid, ip).map(|(start, _)| start))
    }

    /// Remembers where a signal found a thread: a handler may return there.
    pub(super) fn note_signal_site(&mut self, pid: Tid, ip: u64) {
        let s = self.signal_sites.entry(pid).or_default();
        if s.len() < MAX_SIGNAL_SITES {
            s.insert(ip);
        }
    }

    /// Unoptimizes every site of `pid` (detach).
    pub(super) fn unoptimize_all(&mut self, pid: Tid) {
        let sites: Vec<u64> = self
            .processes
            .get(&pid)
            .map(|p| {
                p.sites
                    .iter()
                    .filter(|(_, s)| matches!(s.opt, OptState::Optimized(_)))
                    .map(|(&a, _)| a)
                    .collect()
            })
            .unwrap_or_default();
        for addr in sites {
            let _ = self.unoptimize(pid, addr);
        }
        // Instances of sites unoptimized earlier whose index the producers
        // could still name: none may be left on a stack when the engine's
        // pages go.
        if self.rings.get(&pid).is_some_and(|r| r.ret_code.is_some()) {
            let quiet = self.stop_all(pid);
            self.out_of_return_code(pid);
            self.write_back_instances(pid, pid, |_| true);
            self.resume_quiet(quiet);
        }
    }

    /// Steps every stopped thread of `pid` out of its return code.
    fn out_of_return_code(&mut self, pid: Tid) {
        let Some(start) = self
            .rings
            .get(&pid)
            .and_then(|r| r.ret_code.as_ref())
            .map(|rc| rc.pads)
        else {
            return;
        };
        for tid in self.threads_of(pid) {
            if !self.step_out_of(tid, start) {
                self.pinned.insert(start);
            }
        }
    }

    /// A fork child copied the parent's jumps but not its ring (it is
    /// `MADV_DONTFORK`): its sites go back to `int3` in its memory, and
    /// are optimized anew with a ring of its own.
    pub(super) fn fork_child_unoptimized(&mut self, parent: Tid, child: Tid) {
        // Its stacks hold the parent's pads, which write into a ring it
        // does not have: the return addresses go back first.
        self.write_back_instances(parent, child, |_| true);
        let sites: Vec<(u64, OptSite, bool)> = self
            .processes
            .get(&child)
            .map(|p| {
                p.sites
                    .iter()
                    .filter_map(|(&a, s)| match &s.opt {
                        OptState::Optimized(o) => Some((a, o.clone(), s.armed)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (addr, o, armed) in &sites {
            let _ = self
                .target
                .write_memory(child, o.region.addr, &o.region.bytes);
            if *armed {
                let _ = self.target.write_memory(child, *addr, BREAKPOINT);
            }
            // The copy of the trampoline stays unused in the child's area.
            self.set_opt_state(child, *addr, OptState::Int3("fork child".into()));
        }
        for (addr, _, _) in sites {
            self.sync_opt(child, addr);
        }
    }

    /// The original bytes of an optimized site's range, for memory that
    /// must look unprobed (`into`: the process or a child of it).
    pub(super) fn restore_opt_bytes(&mut self, pid: Tid, into: Tid) -> Result<()> {
        let ranges: Vec<OptRegion> = self.processes[&pid]
            .sites
            .values()
            .filter_map(|s| match &s.opt {
                OptState::Optimized(o) => Some(o.region.clone()),
                _ => None,
            })
            .collect();
        for r in ranges {
            self.target.write_memory(into, r.addr, &r.bytes)?;
        }
        Ok(())
    }

    /// Reads the events of every ring (after hits kept from earlier).
    pub(super) fn drain_rings(&mut self, sink: &mut dyn Sink) {
        for n in std::mem::take(&mut self.placed_notices) {
            sink.notice(&n);
        }
        self.deliver_late_hits(sink);
        let pids: Vec<Tid> = self.rings.keys().copied().collect();
        for pid in pids {
            self.drain_ring(pid, sink, true);
        }
    }

    /// Reads `pid`'s ring and reports its events as hits. With `refresh`,
    /// a thread key not known yet makes the engine stop the process's
    /// threads once to learn every key; without it, such events are
    /// attributed to the process's main thread.
    pub(super) fn drain_ring(&mut self, pid: Tid, sink: &mut dyn Sink, refresh: bool) {
        let Some(r) = self.rings.get_mut(&pid) else {
            return;
        };
        // Nothing claimed past the reader, and no position it passed while
        // its producer had not committed yet: nothing new.
        let mut events = Vec::new();
        if r.ring.claimed_past(r.ring.tail()) || r.ring.pending() > 0 {
            // A few milliseconds of events per turn: requests and stops
            // are not kept waiting behind a full ring (the watcher wakes
            // the engine again for the rest).
            r.ring.poll_at_most(DRAIN_TURN, |e| events.push(e));
        }
        r.tail.store(r.ring.oldest_unread(), Ordering::SeqCst);
        self.deliver_ring_events(pid, events, sink, refresh);
    }

    /// Reads everything the ring held when called (a bounded number of
    /// turns: producers may go on meanwhile).
    pub(super) fn drain_ring_all(&mut self, pid: Tid, sink: &mut dyn Sink, refresh: bool) {
        for _ in 0..=(RING_SLOTS as u64 / DRAIN_TURN) {
            let more = self
                .rings
                .get(&pid)
                .is_some_and(|r| r.ring.claimed_past(r.ring.tail()) || r.ring.pending() > 0);
            if !more {
                return;
            }
            self.drain_ring(pid, sink, refresh);
        }
    }

    /// Reports ring events as hits, then gives back the indices of sites
    /// unoptimized whose positions the reader has all passed.
    fn deliver_ring_events(
        &mut self,
        pid: Tid,
        events: Vec<ring::RawEvent>,
        sink: &mut dyn Sink,
        refresh: bool,
    ) {
        let unknown = self
            .rings
            .get(&pid)
            .is_some_and(|r| events.iter().any(|e| !r.keys.contains_key(&e.thread_key)));
        if unknown && refresh {
            let quiet = self.stop_all(pid);
            self.learn_keys(pid);
            self.resume_quiet(quiet);
        }
        let clock = TickClock::now();
        for e in events {
            let Some(r) = self.rings.get(&pid) else {
                return;
            };
            let Some(entry) = r.index.get(e.probe as usize).and_then(|x| x.clone()) else {
                continue;
            };
            let tid = r.keys.get(&e.thread_key).copied().unwrap_or(pid);
            let time_ns = clock.ns(e.time);
            let at = ret::RecordAt {
                pid,
                tid,
                site: entry.site,
                probes: &entry.probes,
                time_ns,
            };
            if e.kind == ring::KIND_RETURN {
                let (regs, entry_ticks, args) = native::return_record(&e.regs);
                self.report_return(&at, &regs, clock.ns(entry_ticks), args, sink);
                continue;
            }
            let regs = Regs::from_words(&e.regs);
            for id in &entry.probes {
                let Some(p) = self.probes.get_mut(id) else {
                    continue;
                };
                if p.spec.kind == Kind::Return {
                    continue;
                }
                p.stats.hits += 1;
                let caps = p.spec.captures.clone();
                let captures: Vec<(String, capture::Value)> = caps
                    .iter()
                    .map(|c| {
                        (
                            c.name.clone(),
                            capture::evaluate(&mut self.target, pid, &regs, c),
                        )
                    })
                    .collect();
                sink.hit(&Hit {
                    probe: *id,
                    kind: HitKind::Entry,
                    pid,
                    tid,
                    time_ns,
                    addr: entry.site,
                    regs: &regs,
                    captures: &captures,
                    ret: None,
                });
            }
            if e.kind == ring::KIND_ENTRY_HIJACKED {
                self.report_return_entries(&at, &regs, sink);
            }
        }
        // Returns the producers could not hijack: counted; and when they
        // ran out of instances, those of frames gone are freed.
        if self.note_missed(pid) && refresh {
            let quiet = self.stop_all(pid);
            // A thread inside an entry trampoline may hold an instance not
            // filled in yet: it finishes first. One in the return code or
            // at a trap is left as it is (its instance's slot holds the
            // pad's pushed address, which counts as live).
            for tid in self.threads_of(pid) {
                let Ok(regs) = self.target.get_regs(tid) else {
                    continue;
                };
                let at = regs.rip.wrapping_sub(1);
                let in_entry = self.return_code_at(pid, regs.rip).is_none()
                    && self.full_trap_site(pid, at).is_none();
                if in_entry && self.threads.get(&tid).is_some_and(|t| t.stopped) {
                    self.out_of_trampoline(tid);
                }
            }
            self.free_dead_instances(pid);
            self.resume_quiet(quiet);
        }
        // After the events: those just read may be the retired sites'.
        if let Some(r) = self.rings.get_mut(&pid) {
            let passed = r.ring.oldest_unread();
            for e in r.index.iter_mut() {
                if e.as_ref()
                    .is_some_and(|e| e.retired_at.is_some_and(|h| h <= passed))
                {
                    *e = None;
                }
            }
        }
    }

    /// The ring of a process that ended, or that the engine lets go: its
    /// last events are read (those committed late too), positions still
    /// claimed are counted abandoned, and the watcher stops.
    pub(super) fn close_ring(&mut self, pid: Tid, sink: &mut dyn Sink) {
        self.drain_ring(pid, sink, false);
        let mut last = Vec::new();
        if let Some(r) = self.rings.get_mut(&pid) {
            r.ring.abandon(|e| last.push(e));
        }
        self.deliver_ring_events(pid, last, sink, false);
        self.rings.remove(&pid);
        self.signal_sites.remove(&pid);
        self.opt_retry.retain(|(p, _, _)| *p != pid);
    }

    /// Unmaps the ring from the target (detach), through `tid`, stopped.
    pub(super) fn unmap_ring(&mut self, pid: Tid, tid: Tid, gadget: u64) {
        if let Some(r) = self.rings.remove(&pid) {
            let mut sigs = Vec::new();
            let _ = xol::inject_syscall(
                &mut self.target,
                tid,
                gadget,
                libc::SYS_munmap as u64,
                [r.addr, r.len, 0, 0, 0, 0],
                &mut sigs,
            );
            if let Some(t) = self.threads.get_mut(&tid) {
                t.pending.extend(sigs);
            }
        }
        self.signal_sites.remove(&pid);
    }

    /// The sites of `pid` whose optimized range covers `addr` (a probe
    /// about to be placed inside one: the jump's bytes would be broken).
    pub(super) fn unoptimize_covering(&mut self, pid: Tid, addr: u64) {
        let covering: Vec<u64> = self
            .processes
            .get(&pid)
            .map(|p| {
                p.sites
                    .iter()
                    .filter(|(_, s)| match &s.opt {
                        OptState::Optimized(o) => addr >= o.region.addr && addr < o.region.end(),
                        _ => false,
                    })
                    .map(|(&a, _)| a)
                    .collect()
            })
            .unwrap_or_default();
        for site in covering {
            if site != addr {
                let _ = self.unoptimize(pid, site);
                self.set_opt_state(
                    pid,
                    site,
                    OptState::Int3(format!("another probe at {addr:#x} is inside its range")),
                );
            }
        }
    }
}

/// The watcher: sleeps on the ring's futex and calls the waker when
/// producers claimed positions the reader has not looked at; then waits
/// for the reader to catch up before sleeping again.
fn watch(ring: Ring, tail: Arc<AtomicU64>, stop: Arc<AtomicBool>, waker: RingWaker) {
    while !stop.load(Ordering::SeqCst) {
        let t = tail.load(Ordering::SeqCst);
        if !ring.claimed_past(t) {
            ring.wait_past(t, Duration::from_millis(100));
            continue;
        }
        waker();
        for _ in 0..2000 {
            if stop.load(Ordering::SeqCst) || tail.load(Ordering::SeqCst) != t {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// A hit read from a ring when no sink was at hand (detach): kept until
/// [`Engine::drain`] hands it over.
pub(super) struct LateHit {
    probe: ProbeId,
    pid: Tid,
    tid: Tid,
    time_ns: u64,
    addr: u64,
    regs: Regs,
    captures: Vec<(String, capture::Value)>,
}

/// Collects hits as [`LateHit`]s.
#[derive(Default)]
struct Collect(Vec<LateHit>);

impl Sink for Collect {
    fn hit(&mut self, hit: &Hit<'_>) {
        self.0.push(LateHit {
            probe: hit.probe,
            pid: hit.pid,
            tid: hit.tid,
            time_ns: hit.time_ns,
            addr: hit.addr,
            regs: *hit.regs,
            captures: hit.captures.to_vec(),
        });
    }
    fn notice(&mut self, _: &super::Notice) {}
}

impl<T: Target> Engine<T> {
    /// Hands over every optimized hit not reported yet: those read when a
    /// process was let go, then what the rings hold. `run` does this by
    /// itself; call it after a detach.
    pub fn drain(&mut self, sink: &mut dyn Sink) {
        self.drain_rings(sink);
        let pids: Vec<Tid> = self.rings.keys().copied().collect();
        for pid in pids {
            self.drain_ring_all(pid, sink, true);
        }
    }

    fn deliver_late_hits(&mut self, sink: &mut dyn Sink) {
        for h in std::mem::take(&mut self.late_hits) {
            sink.hit(&Hit {
                probe: h.probe,
                kind: HitKind::Entry,
                pid: h.pid,
                tid: h.tid,
                time_ns: h.time_ns,
                addr: h.addr,
                regs: &h.regs,
                captures: &h.captures,
                ret: None,
            });
        }
    }

    /// Reads `pid`'s ring one last time without a sink (detach).
    pub(super) fn keep_late_hits(&mut self, pid: Tid) {
        let mut c = Collect::default();
        self.drain_ring_all(pid, &mut c, false);
        self.late_hits.extend(c.0);
    }
}

impl<T: Target> Engine<T> {
    /// Before any stop of a process with a ring is handled, the ring's
    /// events are read: they happened before it (an `int3` hit after
    /// optimized ones is reported after them), and their thread keys still
    /// mean their threads.
    pub(super) fn drain_before(&mut self, stop: &Stop, sink: &mut dyn Sink) {
        use crate::target::Event;
        let tid = stop.tid();
        let Some(pid) = self.threads.get(&tid).map(|t| t.pid) else {
            return;
        };
        if !self.rings.contains_key(&pid) {
            return;
        }
        match stop {
            Stop::Exited { .. }
            | Stop::Killed { .. }
            | Stop::Event {
                event: Event::Exec(_),
                ..
            } => self.drain_ring_all(pid, sink, false),
            _ => {
                // Stopped, and noted so, before the others are stopped to
                // learn a key.
                self.note_stop(tid, stop);
                self.drain_ring(pid, sink, true);
            }
        }
    }
}
