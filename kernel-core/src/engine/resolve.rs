//! Placing probes: from a spec to an address in a process, the checks that
//! refuse it, and the site (breakpoint + out-of-line slot) that arms it.
//!
//! Every check runs before anything is written: a refused probe leaves no
//! byte of the target changed.

use super::xol::{self, Area};
use super::{capture, Engine, EngineError, Internal, Notice, Probe, ProbeId, Result, Sink, Site};
use crate::arch::native::{
    arch_prepare_kprobe, arch_prepare_slot, Action, Prepared, SlotMode, BREAKPOINT,
};
use crate::spec::{Kind, ProbeSpec};
use crate::symbols::browse::{code_at, file_vaddr, resolve_spec, Place, Resolution, Tracer};
use crate::symbols::{self, ElfCache, MapEntry, Module};
use crate::target::{SpawnConfig, Target, Tid};

/// Where a probe resolved to in one process.
pub(super) enum Resolved {
    At {
        addr: u64,
        prepared: Prepared,
        location: String,
        return_probe: bool,
        /// Said to the user when the probe is armed.
        warning: Option<String>,
        /// The function around `addr`, for an optimized probe's checks.
        func: Option<super::opt::FuncInfo>,
    },
    /// The module is not mapped (yet).
    Pending(String),
}

const RT_CONSISTENT: u32 = 0;

/// Probe ids are unique in the process, across engines: `wprobe-core`
/// runs one engine per client, and root may list every client's probes.
static NEXT_PROBE_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

impl<T: Target> Engine<T> {
    /// Starts a command under the engine. It stops before its first
    /// instruction; probes added now are armed before it runs.
    pub fn spawn(&mut self, argv: &[String]) -> Result<Tid> {
        self.spawn_with(argv, SpawnConfig::default())
    }

    /// As [`spawn`](Self::spawn), with the environment, descriptors and
    /// session given.
    pub fn spawn_with(&mut self, argv: &[String], how: SpawnConfig) -> Result<Tid> {
        let pid = self.target.spawn(argv, how)?;
        self.new_process(pid);
        self.thread(pid, pid).stopped = true;
        self.setup_image(pid, false, &mut NoSink)?;
        Ok(pid)
    }

    /// Takes a running process with all its threads; they stay stopped
    /// until `run`.
    pub fn attach(&mut self, pid: Tid) -> Result<()> {
        let tids = self.target.attach(pid)?;
        self.new_process(pid);
        for &tid in &tids {
            self.thread(tid, pid).stopped = false;
        }
        for &tid in &tids {
            self.wait_until_stopped(tid)?;
        }
        self.setup_image(pid, true, &mut NoSink)?;
        Ok(())
    }

    /// Adds a probe to every traced process (and to those traced later).
    /// When it cannot be placed in one of them, nothing is written
    /// anywhere and the error says why.
    pub fn add_probe(&mut self, spec: ProbeSpec, sink: &mut dyn Sink) -> Result<ProbeId> {
        self.add_probe_with(spec, true, sink)
    }

    /// As [`add_probe`](Self::add_probe); `optimize` false keeps the
    /// probe on `int3` (a probe whose handler changes registers, or one
    /// the user wants trapped).
    pub fn add_probe_with(
        &mut self,
        spec: ProbeSpec,
        optimize: bool,
        sink: &mut dyn Sink,
    ) -> Result<ProbeId> {
        let text = spec_text(&spec);
        for c in &spec.captures {
            capture::validate(c)
                .map_err(|e| EngineError::Refused(format!("{text}: capture `{}`: {e}", c.name)))?;
        }
        // Resolve everywhere first, then arm: all or nothing.
        let mut placements = Vec::new();
        let pids = self.pids();
        for pid in pids {
            match self.resolve(pid, &spec) {
                Ok(r) => placements.push((pid, r)),
                Err(e) => return Err(EngineError::Refused(format!("{text}: {e}"))),
            }
        }
        let id = ProbeId(NEXT_PROBE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.probes.insert(
            id,
            Probe {
                spec,
                text,
                enabled: true,
                stats: Default::default(),
                placed: Default::default(),
                active: 0,
                optimize,
            },
        );
        for (pid, r) in placements {
            if let Err(e) = self.place(pid, id, r, sink) {
                let _ = self.remove_probe(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Checks a spec against a file without any process: the symbol, the
    /// offset and the instruction. Only for specs naming a file by path.
    /// A path that does not exist here may exist in the target's root (a
    /// container, a chroot): that is left to the check in the process.
    pub fn check_offline(&mut self, spec: &ProbeSpec) -> Result<Option<String>> {
        let Some(path) = spec
            .module
            .as_deref()
            .filter(|m| m.contains('/') && std::path::Path::new(m).exists())
        else {
            return Ok(None);
        };
        let elf = self.elf.get(std::path::Path::new(path))?;
        let (vaddr, location) = file_vaddr(&elf, path, spec)?;
        let code = code_at(&elf, path, vaddr)?;
        let p = arch_prepare_kprobe(&code, vaddr).map_err(|r| refused(&r))?;
        Ok(Some(format!("{location} ({}: {})", p.text, p.decision())))
    }

    /// Enables or disables a probe without removing it. A breakpoint with
    /// no enabled probe left is taken out of memory.
    pub fn set_enabled(&mut self, id: ProbeId, enabled: bool) -> Result<()> {
        let probe = self.probes.get_mut(&id).ok_or(EngineError::NoProbe(id.0))?;
        probe.enabled = enabled;
        let placed: Vec<(Tid, u64)> = probe.placed.iter().map(|(&p, &a)| (p, a)).collect();
        for (pid, addr) in placed {
            self.sync_site_unless_ending(pid, addr)?;
        }
        Ok(())
    }

    /// Removes a probe; where it was the last at its address, the original
    /// bytes are written back.
    pub fn remove_probe(&mut self, id: ProbeId) -> Result<()> {
        let probe = self.probes.remove(&id).ok_or(EngineError::NoProbe(id.0))?;
        for (pid, addr) in probe.placed {
            if let Some(site) = self
                .processes
                .get_mut(&pid)
                .and_then(|p| p.sites.get_mut(&addr))
            {
                site.probes.retain(|&p| p != id);
            }
            self.sync_site_unless_ending(pid, addr)?;
        }
        Ok(())
    }

    /// As [`sync_site`](Self::sync_site), for a change the user asked for:
    /// a process that is ending (its threads past their exit event, its
    /// memory going) has nothing left to change, and is not an error.
    fn sync_site_unless_ending(&mut self, pid: Tid, addr: u64) -> Result<()> {
        match self.sync_site(pid, addr) {
            Err(EngineError::Target(e)) if e.is_gone() => Ok(()),
            Err(_) if self.threads_of(pid).iter().all(|t| self.threads[t].exiting) => Ok(()),
            r => r,
        }
    }

    /// Makes memory agree with the probes of a site: armed when one is
    /// enabled (or the engine needs it), out of memory otherwise; dropped
    /// when nothing uses it.
    fn sync_site(&mut self, pid: Tid, addr: u64) -> Result<()> {
        let Some(proc_) = self.processes.get(&pid) else {
            return Ok(());
        };
        let Some(site) = proc_.sites.get(&addr) else {
            return Ok(());
        };
        let want = site.internal.is_some()
            || site
                .probes
                .iter()
                .any(|id| self.probes.get(id).is_some_and(|p| p.enabled));
        let keep = site.internal.is_some() || !site.probes.is_empty();
        let armed = site.armed;
        let orig = site.prepared.bytes;
        if !want && matches!(site.opt, super::opt::OptState::Optimized(_)) {
            // The jump out first: the int3 it replaced comes back, and
            // goes below with the rest.
            self.unoptimize(pid, addr)?;
        }
        if want && !armed {
            self.target.write_memory(pid, addr, BREAKPOINT)?;
        } else if !want && armed {
            self.target
                .write_memory(pid, addr, &orig[..BREAKPOINT.len()])?;
        }
        let proc_ = self.processes.get_mut(&pid).expect("checked above");
        if want != armed {
            if !want {
                proc_.lifted.insert(addr);
            } else {
                proc_.lifted.remove(&addr);
            }
        }
        if keep {
            if let Some(site) = proc_.sites.get_mut(&addr) {
                site.armed = want;
            }
            self.refresh_slot(pid, addr)?;
            self.sync_opt(pid, addr);
        } else if let Some(site) = proc_.sites.remove(&addr) {
            // The slot is retired, not reused: a thread may still be
            // running its copy.
            if let Some((slot_addr, _)) = site.slot {
                proc_.slots.remove(&slot_addr);
            }
        }
        Ok(())
    }

    /// The slot mode a site needs now: post events need a stop after the
    /// copy; otherwise boost where the instruction allows it.
    fn wanted_mode(&self, site: &Site) -> Option<SlotMode> {
        let Action::OutOfLine(x) = &site.prepared.action else {
            return None;
        };
        let post = site.probes.iter().any(|id| {
            self.probes
                .get(id)
                .is_some_and(|p| p.enabled && p.spec.post)
        });
        Some(if post {
            if x.may_leave {
                SlotMode::Step
            } else {
                SlotMode::TrapAfter
            }
        } else if x.boostable {
            SlotMode::Boost
        } else {
            SlotMode::Step
        })
    }

    /// Gives the site a slot built for the mode it needs, if it has none
    /// or its slot was built for another mode.
    fn refresh_slot(&mut self, pid: Tid, addr: u64) -> Result<()> {
        let site = &self.processes[&pid].sites[&addr];
        let Some(mode) = self.wanted_mode(site) else {
            return Ok(());
        };
        if let Some((_, slot)) = &site.slot {
            // A slot rewritten through a scratch register must be stepped
            // whatever was asked.
            if slot.mode == mode || (slot.scratch.is_some() && slot.mode == SlotMode::Step) {
                return Ok(());
            }
        }
        let prepared = site.prepared.clone();
        let slot_addr = self.alloc_slot(pid, addr)?;
        let slot = match arch_prepare_slot(&prepared, slot_addr, mode) {
            Ok(s) => s,
            Err(_) if mode != SlotMode::Step => {
                arch_prepare_slot(&prepared, slot_addr, SlotMode::Step).map_err(|r| refused(&r))?
            }
            Err(r) => return Err(refused(&r)),
        };
        self.target.write_memory(pid, slot_addr, &slot.code)?;
        let proc_ = self.processes.get_mut(&pid).expect("caller checked");
        proc_.slots.insert(slot_addr, addr);
        let site = proc_.sites.get_mut(&addr).expect("caller checked");
        if let Some((old, _)) = site.slot.replace((slot_addr, slot)) {
            proc_.slots.remove(&old);
        }
        Ok(())
    }

    /// A free slot within reach of `near`, mapping a new area if needed.
    pub(super) fn alloc_slot(&mut self, pid: Tid, near: u64) -> Result<u64> {
        let proc_ = self.processes.get_mut(&pid).expect("caller checked");
        if let Some(s) = proc_
            .areas
            .iter_mut()
            .filter(|a| a.reaches(near))
            .find_map(Area::alloc)
        {
            return Ok(s);
        }
        let maps = symbols::read_maps(pid)?;
        let at = xol::find_gap(&maps, near, xol::AREA_LEN).ok_or_else(|| {
            EngineError::Refused(format!(
                "no free address range within 2 GB of {near:#x} for out-of-line slots"
            ))
        })?;
        let gadget = match proc_.areas.first() {
            Some(a) => a.gadget(),
            None => match proc_.syscall_bytes {
                Some(g) => g,
                None => {
                    let g = xol::find_syscall_bytes(&mut self.target, pid, &maps).ok_or_else(|| {
                        EngineError::Refused(format!(
                            "process {pid} has no `syscall` instruction the engine could use to map its pages"
                        ))
                    })?;
                    self.processes.get_mut(&pid).expect("checked").syscall_bytes = Some(g);
                    g
                }
            },
        };
        let tid = self.stopped_thread(pid)?;
        if self.threads.get(&tid).is_some_and(|t| t.at_event_stop) {
            self.leave_syscall_stop(tid)?;
        }
        let mut signals = Vec::new();
        let area = xol::map_area(&mut self.target, tid, pid, gadget, at, &mut signals)
            .map_err(EngineError::Refused);
        self.threads
            .get_mut(&tid)
            .expect("stopped thread is known")
            .pending
            .extend(signals);
        let mut area = area?;
        let slot = area.alloc().expect("a new area has free slots");
        self.processes
            .get_mut(&pid)
            .expect("checked")
            .areas
            .push(area);
        Ok(slot)
    }

    /// A thread of `pid` in a ptrace-stop, interrupting one if none is.
    pub(super) fn stopped_thread(&mut self, pid: Tid) -> Result<Tid> {
        if let Some((&tid, _)) = self
            .threads
            .iter()
            .find(|(_, t)| t.pid == pid && t.stopped && !t.exiting)
        {
            return Ok(tid);
        }
        let tid = self
            .threads
            .iter()
            .find(|(_, t)| t.pid == pid && !t.in_vfork && !t.exiting)
            .map(|(&t, _)| t)
            .ok_or_else(|| EngineError::Refused(format!("process {pid} has no threads left")))?;
        self.target.interrupt(tid)?;
        self.wait_until_stopped(tid)?;
        Ok(tid)
    }

    /// Waits until `tid` is in a ptrace-stop. Stops that need handling
    /// (hits, signals, events) are kept for the run loop; the thread stays
    /// stopped meanwhile.
    pub(super) fn wait_until_stopped(&mut self, tid: Tid) -> Result<()> {
        use crate::target::Stop;
        let stop = self.target.wait_for(tid)?;
        let stop = self.settle_interrupt(tid, stop)?;
        self.note_stop(tid, &stop);
        match stop {
            Stop::Interrupted { .. } => {}
            Stop::Exited { .. } | Stop::Killed { .. } => {
                self.deferred.push_back(stop);
                return Err(EngineError::Refused(format!("thread {tid} exited")));
            }
            _ => {
                // The interrupt is still to come (see `stray_interrupt`).
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.stray_interrupt = true;
                }
                self.deferred.push_back(stop)
            }
        }
        Ok(())
    }

    /// An interrupt stop may be reported while the trap of a breakpoint
    /// the thread just executed is still queued: let the thread take it now
    /// (it stops again before running any instruction) and report that
    /// stop instead.
    pub(super) fn settle_interrupt(
        &mut self,
        tid: Tid,
        stop: crate::target::Stop,
    ) -> Result<crate::target::Stop> {
        use crate::target::{Resume, Stop};
        if matches!(stop, Stop::Interrupted { .. }) && self.target.trap_pending(tid) {
            self.target.resume(tid, Resume::Continue, 0)?;
            return Ok(self.target.wait_for(tid)?);
        }
        Ok(stop)
    }

    /// Puts probe `id` at its resolved place in `pid`.
    pub(super) fn place(
        &mut self,
        pid: Tid,
        id: ProbeId,
        r: Resolved,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        match r {
            Resolved::Pending(reason) => {
                let proc_ = self.processes.get_mut(&pid).expect("caller checked");
                if proc_.pending_noted.insert(id) {
                    sink.notice(&Notice::Pending {
                        probe: id,
                        pid,
                        reason,
                    });
                }
                Ok(())
            }
            Resolved::At {
                addr,
                prepared,
                location,
                return_probe,
                warning,
                func,
            } => {
                self.unoptimize_covering(pid, addr);
                if return_probe {
                    self.ensure_trampoline(pid, addr)?;
                }
                if let Some(w) = warning {
                    if self.warned.insert(w.clone()) {
                        sink.notice(&Notice::Warning(w));
                    }
                }
                self.install_site(pid, addr, prepared, location.clone(), None)?;
                if let Some(f) = func {
                    let site = self
                        .processes
                        .get_mut(&pid)
                        .and_then(|p| p.sites.get_mut(&addr))
                        .expect("installed");
                    if site.func.is_none() {
                        site.func = Some(std::sync::Arc::new(f));
                    }
                }
                let proc_ = self.processes.get_mut(&pid).expect("caller checked");
                let site = proc_.sites.get_mut(&addr).expect("installed");
                if !site.probes.contains(&id) {
                    site.probes.push(id);
                }
                self.probes
                    .get_mut(&id)
                    .expect("caller inserted")
                    .placed
                    .insert(pid, addr);
                self.sync_site(pid, addr)?;
                sink.notice(&Notice::Armed {
                    probe: id,
                    pid,
                    addr,
                    location,
                });
                Ok(())
            }
        }
    }

    fn install_site(
        &mut self,
        pid: Tid,
        addr: u64,
        prepared: Prepared,
        location: String,
        internal: Option<Internal>,
    ) -> Result<()> {
        let proc_ = self.processes.get_mut(&pid).expect("caller checked");
        if let Some(site) = proc_.sites.get_mut(&addr) {
            if internal.is_some() {
                site.internal = internal;
            }
            return Ok(());
        }
        proc_.sites.insert(
            addr,
            Site {
                prepared,
                probes: Vec::new(),
                internal,
                armed: false,
                slot: None,
                location,
                func: None,
                opt: super::opt::OptState::Int3("not tried yet".into()),
            },
        );
        if let Err(e) = self.refresh_slot(pid, addr) {
            self.processes
                .get_mut(&pid)
                .expect("checked")
                .sites
                .remove(&addr);
            return Err(e);
        }
        Ok(())
    }

    /// Resolves a spec in one process without changing anything: what the
    /// files say ([`resolve_spec`], shared with the service's read-only
    /// views), then the live bytes, which must still be the file's.
    pub(super) fn resolve(
        &mut self,
        pid: Tid,
        spec: &ProbeSpec,
    ) -> std::result::Result<Resolved, String> {
        let maps = symbols::read_maps(pid).map_err(|e| e.to_string())?;
        let modules = symbols::modules(pid, &maps, &mut self.elf).map_err(|e| e.to_string())?;
        let Place {
            module,
            addr,
            location,
            code,
            prepared,
            warning,
            func,
        } = match resolve_spec(self, pid, spec, &maps, &modules)? {
            Resolution::At(place) => *place,
            Resolution::Pending(reason) => return Ok(Resolved::Pending(reason)),
        };
        if let Some(site) = self.processes[&pid].sites.get(&addr) {
            // Ours already: several probes at one address share it.
            let _ = site;
        } else {
            let mut live = vec![0u8; prepared.len];
            self.target
                .read_memory(pid, addr, &mut live)
                .map_err(|e| e.to_string())?;
            // Inside another probe's jump: what the program sees is the
            // original (the jump is taken out before this one goes in).
            self.overlay_original(pid, addr, &mut live);
            if live != code[..prepared.len] {
                return Err(format!(
                    "the live bytes at {addr:#x} ({location}) differ from {}: live {}, file {} — \
                     another tool's breakpoint or self-modifying code; remove it and retry",
                    module.path,
                    hex(&live),
                    hex(&code[..prepared.len])
                ));
            }
        }
        Ok(Resolved::At {
            addr,
            prepared,
            location: format!("{}:{location}", module.path),
            return_probe: spec.kind == Kind::Return,
            warning,
            func: func.map(|(addr, bytes)| super::opt::FuncInfo {
                addr,
                bytes,
                file: module.file.clone(),
                bias: module.bias,
            }),
        })
    }

    /// After exec (or attach): forget the old image, hook the dynamic
    /// linker, and place every probe that can be placed now.
    pub(super) fn setup_image(
        &mut self,
        pid: Tid,
        attached: bool,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        if !attached {
            self.leave_syscall_stop(pid)?;
        }
        // A new image: nothing of the old one's sites, pages or state.
        self.new_process(pid);
        self.processes
            .get_mut(&pid)
            .expect("just made")
            .startup_done = attached;
        for probe in self.probes.values_mut() {
            probe.placed.remove(&pid);
        }
        let maps = symbols::read_maps(pid)?;
        let modules = symbols::modules(pid, &maps, &mut self.elf)?;
        self.processes.get_mut(&pid).expect("exists").maps_seen = maps_key(&maps);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let interp = modules
            .iter()
            .find(|m| m.path == exe)
            .and_then(|m| self.elf.get(&m.file).ok())
            .and_then(|e| e.interp.clone());
        match interp {
            Some(interp) => self.hook_linker(pid, &interp, &modules)?,
            None => self.processes.get_mut(&pid).expect("exists").startup_done = true,
        }
        self.place_all(pid, sink)
    }

    /// At an event stop (exec, fork, clone, ...) the thread is still inside
    /// the system call, whose return value the kernel writes into rax on
    /// the way out; a system call the engine injected there would see its
    /// number overwritten, and the interrupted call its result. One single
    /// step finishes the call: the kernel reports it before the next
    /// instruction runs.
    pub(super) fn leave_syscall_stop(&mut self, tid: Tid) -> Result<()> {
        use crate::target::{Resume, Stop};
        self.target.resume(tid, Resume::Step, 0)?;
        loop {
            let stop = self.target.wait_for(tid)?;
            match stop {
                Stop::Signal { info, .. } if info.signo() == libc::SIGTRAP && info.code() > 0 => {
                    self.note_stop(tid, &stop);
                    return Ok(());
                }
                s @ (Stop::Exited { .. } | Stop::Killed { .. }) => {
                    self.deferred.push_back(s);
                    return Err(EngineError::Refused(format!(
                        "thread {tid} died in a system call"
                    )));
                }
                Stop::Signal { info, .. } => {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.pending.push(info);
                    }
                    self.target.resume(tid, Resume::Step, 0)?;
                }
                _ => self.target.resume(tid, Resume::Step, 0)?,
            }
        }
    }

    fn hook_linker(&mut self, pid: Tid, interp: &str, modules: &[Module]) -> Result<()> {
        let Ok(ld) = symbols::find_module(interp, modules, &mut self.elf).cloned() else {
            self.processes.get_mut(&pid).expect("exists").startup_done = true;
            return Ok(());
        };
        let elf = self.elf.get(&ld.file)?;
        let (Ok(hook), Some(rdebug_v)) =
            (elf.lookup("_dl_debug_state"), elf.data_symbol("_r_debug"))
        else {
            self.processes.get_mut(&pid).expect("exists").startup_done = true;
            return Ok(());
        };
        let hook_v = hook.addr;
        let addr = hook_v.wrapping_add(ld.bias);
        let code = code_at(&elf, &ld.path, hook_v)?;
        let prepared = arch_prepare_kprobe(&code, addr).map_err(|r| refused(&r))?;
        self.install_site(
            pid,
            addr,
            prepared,
            format!("{}:_dl_debug_state", ld.path),
            Some(Internal::LinkerHook {
                r_debug: rdebug_v.wrapping_add(ld.bias),
            }),
        )?;
        self.sync_site(pid, addr)
    }

    /// Tries every probe not yet placed in `pid`.
    pub(super) fn place_all(&mut self, pid: Tid, sink: &mut dyn Sink) -> Result<()> {
        let ids: Vec<ProbeId> = self
            .probes
            .iter()
            .filter(|(id, p)| {
                !p.placed.contains_key(&pid) && !self.processes[&pid].refused.contains(id)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let spec = self.probes[&id].spec.clone();
            match self.resolve(pid, &spec) {
                Ok(r) => {
                    if let Err(e) = self.place(pid, id, r, sink) {
                        self.refuse(pid, id, e.to_string(), sink);
                    }
                }
                Err(reason) => self.refuse(pid, id, reason, sink),
            }
        }
        Ok(())
    }

    fn refuse(&mut self, pid: Tid, id: ProbeId, reason: String, sink: &mut dyn Sink) {
        let text = self.probes[&id].text.clone();
        self.processes
            .get_mut(&pid)
            .expect("caller checked")
            .refused
            .insert(id);
        let reason = format!("{text}: {reason}");
        self.refusals.push(reason.clone());
        sink.notice(&Notice::Refused {
            probe: id,
            pid,
            reason,
        });
    }

    /// The dynamic linker's hook was hit: when its list of objects is
    /// consistent, arm probes of newly mapped objects and retire those of
    /// unmapped ones.
    pub(super) fn linker_event(
        &mut self,
        pid: Tid,
        r_debug: u64,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let mut state = [0u8; 4];
        self.target.read_memory(pid, r_debug + 24, &mut state)?;
        if u32::from_le_bytes(state) != RT_CONSISTENT {
            return Ok(());
        }
        let maps = symbols::read_maps(pid)?;
        let key = maps_key(&maps);
        let first = !self.processes[&pid].startup_done;
        if !first && self.processes[&pid].maps_seen == key {
            return Ok(());
        }
        self.processes.get_mut(&pid).expect("exists").maps_seen = key;
        self.retire_unmapped(pid, &maps, sink)?;
        self.processes.get_mut(&pid).expect("exists").startup_done = true;
        self.place_all(pid, sink)
    }

    fn retire_unmapped(&mut self, pid: Tid, maps: &[MapEntry], sink: &mut dyn Sink) -> Result<()> {
        let gone: Vec<u64> = self.processes[&pid]
            .sites
            .iter()
            .filter(|(&a, s)| {
                s.internal.is_none() && !maps.iter().any(|m| m.exec && a >= m.start && a < m.end)
            })
            .map(|(&a, _)| a)
            .collect();
        for addr in gone {
            let site = self
                .processes
                .get_mut(&pid)
                .expect("exists")
                .sites
                .remove(&addr)
                .expect("listed");
            for id in site.probes {
                if let Some(p) = self.probes.get_mut(&id) {
                    p.placed.remove(&pid);
                }
                sink.notice(&Notice::Gone {
                    probe: id,
                    pid,
                    reason: format!("{} was unmapped", site.location),
                });
            }
        }
        Ok(())
    }
}

fn maps_key(maps: &[MapEntry]) -> Vec<(u64, u64, u64)> {
    maps.iter()
        .filter(|m| m.exec)
        .map(|m| (m.start, m.end, m.inode))
        .collect()
}

struct NoSink;
impl Sink for NoSink {
    fn hit(&mut self, _: &super::Hit<'_>) {}
    fn notice(&mut self, _: &Notice) {}
}

fn refused(r: &crate::arch::native::Refusal) -> EngineError {
    EngineError::Refused(r.to_string())
}

/// The probe's spec as the user would write it.
pub fn spec_text(spec: &ProbeSpec) -> String {
    let kind = match spec.kind {
        Kind::Entry => "uprobe",
        Kind::Return => "uretprobe",
    };
    match &spec.module {
        Some(m) => format!("{kind}:{m}:{}", spec.location),
        None => format!("{kind}:{}", spec.location),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What only the engine knows when a spec is resolved in a process it
/// traces.
impl<T: Target> Tracer for Engine<T> {
    fn elf(&mut self) -> &mut ElfCache {
        &mut self.elf
    }

    fn in_own_pages(&self, pid: Tid, addr: u64) -> bool {
        self.processes
            .get(&pid)
            .is_some_and(|p| p.areas.iter().any(|ar| ar.contains(addr)))
    }

    fn refuses_missing_files(&self, pid: Tid) -> bool {
        self.processes[&pid].startup_done && !self.options.follow_exec
    }

    fn before_start(&self, pid: Tid) -> bool {
        !self.processes[&pid].startup_done && !self.options.follow_exec
    }

    fn return_probe_refusal(
        &mut self,
        pid: Tid,
        file: &std::path::Path,
    ) -> std::result::Result<(), String> {
        self.check_return_probe(pid, file)
    }
}
