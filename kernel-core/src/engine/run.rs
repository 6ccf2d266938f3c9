//! The hit state machine and the rest of a tracee's life: stops are
//! taken one at a time, handled, and the thread is let go.

use std::sync::atomic::Ordering;

use super::{
    capture, monotonic_ns, Engine, ExitStatus, Hit, HitKind, InSlot, Internal, Notice, ProbeId,
    Result, RunEnd, Sink, StopFlag, Verdict,
};
use crate::arch::native::{
    arch_abort_xol, arch_post_xol, arch_simulate, Action, Regs, SlotMode, XolPosition,
};
use crate::arch::{Memory, MemoryError};
use crate::spec::Kind;
use crate::target::{Event, Resume, SigInfo, Stop, Target, TargetError, Tid};

/// `si_code` of a SIGTRAP raised by `int3`.
pub(super) const SI_KERNEL: i32 = 0x80;

/// Target memory of one process, as the arch code wants it.
struct Mem<'a, T: Target> {
    target: &'a mut T,
    pid: Tid,
}

impl<T: Target> Memory for Mem<'_, T> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> std::result::Result<(), MemoryError> {
        self.target
            .read_memory(self.pid, addr, buf)
            .map_err(|_| MemoryError { addr })
    }
    fn write(&mut self, addr: u64, buf: &[u8]) -> std::result::Result<(), MemoryError> {
        self.target
            .write_memory(self.pid, addr, buf)
            .map_err(|_| MemoryError { addr })
    }
}

impl<T: Target> Engine<T> {
    /// Runs until every traced process has ended or `stop` is raised.
    /// Raising `stop` from a signal handler interrupts the wait.
    pub fn run(&mut self, sink: &mut dyn Sink, stop: &StopFlag) -> Result<RunEnd> {
        // Threads stopped at start (spawned, attached) are let go first,
        // but for those of a held process.
        let stopped: Vec<Tid> = self
            .threads
            .iter()
            .filter(|(_, t)| t.stopped && !self.processes.get(&t.pid).is_some_and(|p| p.held))
            .map(|(&t, _)| t)
            .filter(|t| !self.deferred.iter().any(|s| s.tid() == *t))
            .collect();
        for tid in stopped {
            match self.resume(tid, Resume::Continue, 0) {
                // Killed meanwhile: its end is reported by the loop.
                Err(e) if is_gone(&e) => {}
                r => r?,
            }
        }
        loop {
            if self.processes.is_empty() {
                return Ok(RunEnd::AllExited);
            }
            // Optimized hits first: they happened before whatever stop
            // comes next.
            self.drain_rings(sink);
            if self.deferred.is_empty() && !self.opt_retry.is_empty() {
                self.retry_optimizations();
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(RunEnd::Stopped);
            }
            let s = match self.deferred.pop_front() {
                Some(s) => s,
                None => match self.target.wait() {
                    Ok(s) => s,
                    Err(TargetError::Interrupted) => continue,
                    Err(e) => return Err(e.into()),
                },
            };
            let before = self.refusals.len();
            let tid = s.tid();
            self.drain_before(&s, sink);
            match self.handle(s, sink) {
                Ok(()) => {}
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(e),
            }
            if self.refusals.len() > before {
                // The user asked for a probe that cannot be placed in this
                // process: it is held, its threads stopped at their next
                // chance, until whoever runs the engine decides (resume it,
                // detach it, or kill it).
                if let Some(pid) = self.threads.get(&tid).map(|t| t.pid) {
                    self.hold(pid, true)?;
                    for t in self.threads_of(pid) {
                        if !self.threads[&t].stopped {
                            let _ = self.target.interrupt(t);
                        }
                    }
                }
                return Ok(RunEnd::Refused);
            }
        }
    }

    pub(super) fn resume(&mut self, tid: Tid, how: Resume, sig: i32) -> Result<()> {
        let mut sig = sig;
        let mut how = how;
        // A thread stepping a copy that stopped for something else (an
        // event of the `clone` it is stepping, say) keeps stepping: let go
        // with a plain continue it would run past the end of the copy.
        if how == Resume::Continue && self.is_stepping(tid) {
            how = Resume::Step;
        }
        // Not stepping a copy any more: its own signal mask back.
        if how != Resume::Step {
            self.unblock_signals(tid);
        }
        // A signal is never delivered inside a trampoline: its handler's
        // frame would return there. The thread finishes it first.
        let delivering = sig != 0
            || self
                .threads
                .get(&tid)
                .is_some_and(|t| !t.pending.is_empty() && how != Resume::Listen);
        let here = self
            .threads
            .get_mut(&tid)
            .is_some_and(|t| std::mem::take(&mut t.signal_here));
        if delivering && how != Resume::Step && !here {
            self.out_of_trampoline(tid);
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            if sig == 0 && !t.pending.is_empty() && how != Resume::Listen {
                let info = t.pending.remove(0);
                // Deliver it with its own siginfo where the stop allows;
                // elsewhere the kernel would drop it, so send it anew.
                if t.at_signal_stop && self.target.set_siginfo(tid, &info).is_ok() {
                    sig = info.signo();
                } else {
                    // SAFETY: sending a signal to a thread of ours.
                    unsafe { libc::syscall(libc::SYS_tgkill, t.pid, tid, info.signo()) };
                }
            }
            t.stopped = false;
            t.at_signal_stop = false;
            t.at_event_stop = false;
        }
        self.target.resume(tid, how, sig)?;
        Ok(())
    }

    /// Blocks every signal of `tid` until [`Self::unblock_signals`]: for
    /// the single step of a copy taken to deliver a signal after it.
    fn block_signals(&mut self, tid: Tid) {
        if self
            .threads
            .get(&tid)
            .is_some_and(|t| t.saved_mask.is_none())
        {
            if let Ok(mask) = self.target.get_sigmask(tid) {
                if self.target.set_sigmask(tid, u64::MAX).is_ok() {
                    self.threads.get_mut(&tid).expect("checked").saved_mask = Some(mask);
                }
            }
        }
    }

    fn unblock_signals(&mut self, tid: Tid) {
        if let Some(mask) = self.threads.get_mut(&tid).and_then(|t| t.saved_mask.take()) {
            let _ = self.target.set_sigmask(tid, mask);
        }
    }

    /// Whether `tid` is single-stepping a copy in a slot.
    fn is_stepping(&self, tid: Tid) -> bool {
        let Some(t) = self.threads.get(&tid) else {
            return false;
        };
        let Some(x) = t.in_slot else {
            return false;
        };
        x.stepping_for_signal
            || self
                .processes
                .get(&t.pid)
                .and_then(|p| p.sites.get(&x.site))
                .and_then(|s| s.slot.as_ref())
                .is_some_and(|(_, slot)| slot.mode == SlotMode::Step)
    }

    fn handle(&mut self, stop: Stop, sink: &mut dyn Sink) -> Result<()> {
        let tid = stop.tid();
        if !self.threads.contains_key(&tid) {
            // A child of ours that was let go (a spawned program detached,
            // or one whose execve ended its probes) still reports its end
            // here: whoever spawned it learns how it ended.
            match stop {
                Stop::Exited { tid, code } => {
                    let status = ExitStatus::Code(code);
                    sink.notice(&Notice::Exited { pid: tid, status });
                    return Ok(());
                }
                Stop::Killed { tid, signo } => {
                    let status = ExitStatus::Signal(signo);
                    sink.notice(&Notice::Exited { pid: tid, status });
                    return Ok(());
                }
                _ => {}
            }
            // A new thread's first stop before its creator's event: adopt
            // it when the group is ours, else keep it for the fork event.
            match crate::target::ptrace::thread_group_of(tid) {
                Some(pid) if self.processes.contains_key(&pid) => {
                    self.thread(tid, pid);
                }
                _ => {
                    self.orphans.insert(tid, stop);
                    return Ok(());
                }
            }
        }
        self.note_stop(tid, &stop);
        match stop {
            Stop::Signal { tid, info } => self.on_signal(tid, info, sink),
            Stop::Event { tid, event } => self.on_event(tid, event, sink),
            Stop::GroupStop { tid, .. } => self.resume(tid, Resume::Listen, 0),
            Stop::Interrupted { tid } => {
                let stray = self
                    .threads
                    .get_mut(&tid)
                    .map(|t| std::mem::take(&mut t.stray_interrupt))
                    .unwrap_or(false);
                // The first stop of a new thread: it may start in a slot.
                // (Not a stray interrupt's: that thread may be running a
                // boosted copy, which it must finish.)
                if !stray && self.threads.get(&tid).is_some_and(|t| t.in_slot.is_none()) {
                    let pid = self.threads[&tid].pid;
                    self.move_out_of_slot(tid, pid)?;
                    // Its TLS is set (CLONE_SETTLS): its thread key is known
                    // before it runs a trampoline.
                    self.learn_key(pid, tid);
                }
                // A held process's threads stay stopped until it is let go
                // (the next `run` after `hold(pid, false)` resumes them).
                let pid = self.threads[&tid].pid;
                if self.processes.get(&pid).is_some_and(|p| p.held) {
                    return Ok(());
                }
                self.resume(tid, Resume::Continue, 0)
            }
            Stop::Exited { tid, code } => {
                self.thread_gone(tid, ExitStatus::Code(code), sink);
                Ok(())
            }
            Stop::Killed { tid, signo } => {
                self.thread_gone(tid, ExitStatus::Signal(signo), sink);
                Ok(())
            }
        }
    }

    fn thread_gone(&mut self, tid: Tid, status: ExitStatus, sink: &mut dyn Sink) {
        let Some(t) = self.drop_thread(tid) else {
            return;
        };
        let pid = t.pid;
        if let Some(p) = self.processes.get_mut(&pid) {
            p.vfork_children.remove(&tid);
        }
        self.forget_key(pid, tid);
        if tid == pid {
            // With __WALL the leader is reported last: the process is gone.
            self.close_ring(pid, sink);
            self.release_shared_children(pid);
            self.forget_process(pid);
            self.exits.push((pid, status));
            sink.notice(&Notice::Exited { pid, status });
        }
    }

    fn on_event(&mut self, tid: Tid, event: Event, sink: &mut dyn Sink) -> Result<()> {
        let pid = self.threads[&tid].pid;
        match event {
            Event::Clone(child) if !self.target.same_memory(pid, child) => {
                // A clone without CLONE_VM is a fork in all but name.
                self.untouch_fork_child(pid, tid, child)?;
                self.resume(tid, Resume::Continue, 0)
            }
            Event::Clone(new)
                if crate::target::ptrace::thread_group_of(new).is_some_and(|g| g != pid) =>
            {
                // CLONE_VM without CLONE_THREAD: a process of its own in our
                // memory.
                self.adopt_shared_child(pid, new);
                self.resume(tid, Resume::Continue, 0)
            }
            Event::Clone(new) => {
                self.thread(new, pid).stopped = false;
                if let Some(s) = self.orphans.remove(&new) {
                    self.deferred.push_back(s);
                    self.threads.get_mut(&new).expect("just added").stopped = true;
                }
                self.resume(tid, Resume::Continue, 0)
            }
            Event::Fork(child) if self.target.same_memory(pid, child) => {
                // clone(CLONE_VM) without CLONE_VFORK reports as a fork, but
                // the child runs in our memory: it is one of ours.
                self.adopt_shared_child(pid, child);
                self.resume(tid, Resume::Continue, 0)
            }
            Event::Fork(child) => {
                if self.options.follow_fork {
                    self.follow_fork_child(pid, tid, child, sink)?;
                } else {
                    self.untouch_fork_child(pid, tid, child)?;
                }
                self.resume(tid, Resume::Continue, 0)
            }
            Event::Vfork(child) => {
                // The child shares our memory: it keeps every breakpoint and
                // is traced like one of our threads until it execs.
                self.adopt_shared_child(pid, child);
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.in_vfork = true;
                }
                self.resume(tid, Resume::Continue, 0)
            }
            Event::VforkDone => {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.in_vfork = false;
                }
                self.resume(tid, Resume::Continue, 0)
            }
            Event::Exit(_) => {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.exiting = true;
                }
                self.resume(tid, Resume::Continue, 0)
            }
            Event::Exec(_) => {
                if self.processes[&pid].vfork_children.contains(&tid) {
                    // A vfork child left our address space: it runs a new
                    // image with no breakpoint of ours. Let it go.
                    self.processes
                        .get_mut(&pid)
                        .expect("exists")
                        .vfork_children
                        .remove(&tid);
                    self.drop_thread(tid);
                    self.target.memory_changed(tid);
                    let _ = self.target.detach(tid, 0);
                    return Ok(());
                }
                // The whole group now is one thread with the leader's tid,
                // running the new image: every old thread, call and probe
                // ended with the old image. Signals pending for the thread
                // that called execve stay its own.
                let pending = self
                    .threads
                    .get(&tid)
                    .map(|t| t.pending.clone())
                    .unwrap_or_default();
                for t in self.threads_of(pid) {
                    self.drop_thread(t);
                }
                self.thread(pid, pid).pending = pending;
                self.target.memory_changed(pid);
                let placed: Vec<_> = self
                    .probes
                    .iter()
                    .filter(|(_, p)| p.placed.contains_key(&pid))
                    .map(|(&id, _)| id)
                    .collect();
                // Whoever the engine works for may not be allowed to trace
                // the new image (a set-user-ID program): then it is let go
                // before its first instruction, as without follow-exec.
                let refused = self.exec_guard.as_mut().and_then(|g| g(pid));
                let follow = self.options.follow_exec && refused.is_none();
                let reason = match &refused {
                    Some(why) => why.as_str(),
                    None if follow => {
                        "the process called execve; resolving again against the new image"
                    }
                    None => {
                        "the process called execve, which ended its probes \
                         (follow exec to resolve them against the new image)"
                    }
                };
                for id in placed {
                    sink.notice(&Notice::Gone {
                        probe: id,
                        pid,
                        reason: reason.into(),
                    });
                }
                if let Some(why) = &refused {
                    sink.notice(&Notice::Warning(format!("process {pid}: {why}")));
                }
                if !follow {
                    // Nothing of ours is in the new image: let it go, with
                    // what signals it had waiting.
                    let pending = self.drop_thread(pid).map(|t| t.pending).unwrap_or_default();
                    self.forget_process(pid);
                    let _ = self.target.detach(pid, 0);
                    for info in pending {
                        // SAFETY: sending a signal the thread had waiting.
                        unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, info.signo()) };
                    }
                    return Ok(());
                }
                self.setup_image(pid, false, sink)?;
                self.resume(pid, Resume::Continue, 0)
            }
        }
    }

    /// Follows a fork child with the same probes. Its memory is a copy of
    /// the parent's, breakpoints, slots and hijacked return addresses
    /// included, so it is traced as a copy of the parent's state.
    fn follow_fork_child(
        &mut self,
        pid: Tid,
        parent: Tid,
        child: Tid,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        if !self.first_stop_of_child(child)? {
            return Ok(());
        }
        let mut copy = self.processes[&pid].clone();
        copy.vfork_children.clear();
        self.processes.insert(child, copy);
        self.thread(child, child);
        self.fork_child_unoptimized(pid, child);
        let returns = self.threads[&parent].returns.clone();
        for r in &returns {
            for (id, _) in &r.probes {
                if let Some(p) = self.probes.get_mut(id) {
                    p.active += 1;
                }
            }
        }
        self.thread(child, child).returns = returns;
        self.child_mask_as_parent_had_it(parent, child);
        // The child is not stepping the copy its parent was in.
        self.move_out_of_slot(child, child)?;
        let placed: Vec<(super::ProbeId, u64, String)> = self
            .probes
            .iter()
            .filter_map(|(&id, p)| {
                let addr = *p.placed.get(&pid)?;
                let location = self.processes[&pid].sites.get(&addr)?.location.clone();
                Some((id, addr, location))
            })
            .collect();
        for (id, addr, location) in placed {
            self.probes
                .get_mut(&id)
                .expect("listed")
                .placed
                .insert(child, addr);
            sink.notice(&Notice::Armed {
                probe: id,
                pid: child,
                addr,
                location,
            });
        }
        self.resume(child, Resume::Continue, 0)
    }

    /// A child running in our memory (vfork, clone with CLONE_VM): it keeps
    /// every breakpoint and is traced like one of our threads until it
    /// execs or exits.
    fn adopt_shared_child(&mut self, pid: Tid, child: Tid) {
        self.thread(child, pid).stopped = false;
        if let Some(p) = self.processes.get_mut(&pid) {
            p.vfork_children.insert(child);
        }
        if let Some(s) = self.orphans.remove(&child) {
            self.deferred.push_back(s);
            self.threads.get_mut(&child).expect("just added").stopped = true;
        }
    }

    /// The process ended while children sharing its memory run on: they
    /// get the original bytes and return addresses back and are let go.
    fn release_shared_children(&mut self, pid: Tid) {
        let children: Vec<Tid> = self
            .processes
            .get(&pid)
            .map(|p| p.vfork_children.iter().copied().collect())
            .unwrap_or_default();
        for child in children {
            if self.threads.get(&child).is_some_and(|t| !t.stopped) {
                let _ = self.target.interrupt(child);
                match self.target.wait_for(child) {
                    Ok(s @ (Stop::Exited { .. } | Stop::Killed { .. }))
                    | Ok(
                        s @ Stop::Event {
                            event: Event::Exec(_),
                            ..
                        },
                    ) => {
                        if matches!(s, Stop::Event { .. }) {
                            let _ = self.target.detach(child, 0);
                        }
                        self.drop_thread(child);
                        continue;
                    }
                    Ok(s) => self.note_stop(child, &s),
                    Err(_) => continue,
                }
            }
            let _ = self.restore_bytes(pid, child);
            let _ = self.restore_returns(pid, &[child], child);
            let _ = self.move_out_of_slot(child, pid);
            self.target.memory_changed(child);
            self.drop_thread(child);
            let _ = self.target.detach(child, 0);
        }
    }

    /// A child forked while its parent had every signal blocked for a step
    /// inherits that mask: give it the parent's own.
    fn child_mask_as_parent_had_it(&mut self, parent: Tid, child: Tid) {
        if let Some(mask) = self.threads.get(&parent).and_then(|t| t.saved_mask) {
            let _ = self.target.set_sigmask(child, mask);
        }
    }

    /// Writes the original byte back at every armed breakpoint of `pid`,
    /// in the memory of `into`: the process itself, or a child that copied
    /// or shares its memory.
    fn restore_bytes(&mut self, pid: Tid, into: Tid) -> Result<()> {
        self.restore_opt_bytes(pid, into)?;
        let sites: Vec<(u64, u8)> = self.processes[&pid]
            .sites
            .iter()
            .filter(|(_, s)| s.armed)
            .map(|(&a, s)| (a, s.prepared.bytes[0]))
            .collect();
        for (addr, orig) in sites {
            self.target.write_memory(into, addr, &[orig])?;
        }
        Ok(())
    }

    /// Waits for a new child's first stop, unless it was already seen (an
    /// orphan stop, reported before its parent's event). False when the
    /// child is already gone.
    fn first_stop_of_child(&mut self, child: Tid) -> Result<bool> {
        if self.orphans.remove(&child).is_some() {
            return Ok(true);
        }
        loop {
            match self.target.wait_for(child)? {
                Stop::Exited { .. } | Stop::Killed { .. } => return Ok(false),
                Stop::Interrupted { .. } | Stop::GroupStop { .. } => return Ok(true),
                _ => continue,
            }
        }
    }

    /// A fork child has a copy of our breakpoints; write the original bytes
    /// into it and let it go, so that it runs untouched (as uprobes does).
    fn untouch_fork_child(&mut self, pid: Tid, parent: Tid, child: Tid) -> Result<()> {
        if !self.first_stop_of_child(child)? {
            return Ok(());
        }
        self.restore_bytes(pid, child)?;
        self.child_mask_as_parent_had_it(parent, child);
        // The child copied the forking thread's stack, hijacked return
        // addresses included.
        self.restore_returns(pid, &[parent], child)?;
        self.write_back_instances(pid, child, |_| true);
        // A fork from an instruction running out of line (a probed
        // `syscall`) leaves the child inside the slot.
        self.move_out_of_slot(child, pid)?;
        // The engine's pages go too: the child runs as if never probed.
        let areas = self.processes[&pid].areas.clone();
        for area in &areas {
            let mut sigs = Vec::new();
            let _ = super::xol::unmap_area(&mut self.target, child, area, &mut sigs);
        }
        self.target.memory_changed(child);
        let _ = self.target.detach(child, 0);
        Ok(())
    }

    fn on_signal(&mut self, tid: Tid, info: SigInfo, sink: &mut dyn Sink) -> Result<()> {
        let pid = self.threads[&tid].pid;
        let mut regs = self.target.get_regs(tid)?;
        if info.signo() == libc::SIGTRAP && info.code() == SI_KERNEL {
            if let Some(site) = self.full_trap_site(pid, regs.rip.wrapping_sub(1)) {
                return self.on_full_trap(tid, pid, site, regs, sink);
            }
            if self.settle_return_trap(tid, pid, sink) {
                return self.resume(tid, Resume::Continue, 0);
            }
            if let Some(t) = self.threads.get_mut(&tid) {
                if std::mem::take(&mut t.trap_settled) {
                    // Its trap was handled already (see `trap_settled`).
                    return self.resume(tid, Resume::Continue, 0);
                }
            }
        }
        if let Some(tramp) = self.trampoline_at(pid, regs.rip) {
            // No signal frame may return into a trampoline: the thread
            // finishes it first, and takes the signal where it lands. One
            // whose relocated instruction faults takes it there, and the
            // trampoline is never given back.
            if info.is_fault() {
                self.pinned.insert(tramp);
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.signal_here = true;
                }
                return self.resume(tid, Resume::Continue, info.signo());
            }
            let is_step = info.signo() == libc::SIGTRAP && info.code() > 0;
            if !is_step {
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.pending.push(info);
                }
            }
            self.step_out_of(tid, tramp);
            if self.threads.contains_key(&tid) {
                return self.resume(tid, Resume::Continue, 0);
            }
            return Ok(());
        }
        if !(info.signo() == libc::SIGTRAP && info.code() > 0) {
            // A handler may return here: no jump may cover this address.
            self.note_signal_site(pid, regs.rip);
        }
        if info.signo() == libc::SIGTRAP {
            if let Some(x) = self.threads[&tid].in_slot {
                if self.slot_stop(tid, pid, x, &mut regs, &info, sink)? {
                    return Ok(());
                }
            }
            if info.code() == SI_KERNEL {
                let addr = regs.rip.wrapping_sub(1);
                let p = &self.processes[&pid];
                if p.trampoline == Some(addr) {
                    return self.on_trampoline(tid, pid, regs, sink);
                }
                if p.sites.get(&addr).is_some_and(|s| s.armed) {
                    return self.on_breakpoint(tid, pid, addr, regs, sink);
                }
                if p.lifted.contains(&addr) || p.sites.contains_key(&addr) {
                    // It trapped before the breakpoint was taken out: run
                    // the original instruction now in place.
                    regs.rip = addr;
                    self.target.set_regs(tid, &regs)?;
                    return self.resume(tid, Resume::Continue, 0);
                }
            }
        }
        if let Some((slot_addr, site_addr)) = self.processes[&pid].slot_at(regs.rip) {
            return self.signal_in_slot(tid, pid, site_addr, slot_addr, regs, info, sink);
        }
        // Not ours: deliver it as without the tracer.
        self.resume(tid, Resume::Continue, info.signo())
    }

    /// Hands the hit to every probe at `addr` of this kind, in turn, and
    /// applies their verdicts to `regs`: each probe sees the registers the
    /// verdicts before it left.
    pub(super) fn emit(
        &mut self,
        tid: Tid,
        pid: Tid,
        addr: u64,
        regs: &mut Regs,
        kind: HitKind,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let time_ns = monotonic_ns();
        let ids = self.processes[&pid].sites[&addr].probes.clone();
        for id in ids {
            let Some(probe) = self.probes.get_mut(&id) else {
                continue;
            };
            if !probe.enabled
                || probe.spec.kind == Kind::Return
                || (kind == HitKind::Post && !probe.spec.post)
            {
                continue;
            }
            if kind == HitKind::Entry {
                probe.stats.hits += 1;
            }
            let caps: Vec<_> = probe.spec.captures.clone();
            let captures: Vec<(String, capture::Value)> = caps
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        capture::evaluate(&mut self.target, pid, regs, c),
                    )
                })
                .collect();
            let verdict = sink.decide(&Hit {
                probe: id,
                kind,
                pid,
                tid,
                time_ns,
                addr,
                regs,
                captures: &captures,
                ret: None,
            });
            self.apply_verdict(tid, pid, id, verdict, regs, sink)?;
        }
        Ok(())
    }

    /// Takes a handler's verdict into `regs` (which the caller writes to
    /// the thread before it resumes), or refuses it with a warning: a
    /// `rip` inside the engine's pages, or registers the kernel will not
    /// take.
    pub(super) fn apply_verdict(
        &mut self,
        tid: Tid,
        pid: Tid,
        probe: ProbeId,
        verdict: Verdict,
        regs: &mut Regs,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let Verdict::SetRegs(new) = verdict else {
            return Ok(());
        };
        if new == *regs {
            return Ok(());
        }
        if self.processes[&pid]
            .areas
            .iter()
            .any(|a| a.contains(new.rip))
        {
            sink.notice(&Notice::Warning(format!(
                "probe {}: a verdict sent thread {tid} of process {pid} to {:#x}, inside the \
                 engine's own pages; refused, the thread goes on as before it",
                probe.0, new.rip
            )));
            return Ok(());
        }
        // The kernel checks what it will not run with (segment selectors,
        // the fs/gs bases): ask it now, while the thread is stopped here.
        match self.target.set_regs(tid, &new) {
            Ok(()) => {
                *regs = new;
                Ok(())
            }
            Err(e) if e.is_gone() => Err(e.into()),
            Err(e) => {
                // PTRACE_SETREGS stops at the first field it refuses, with
                // those before it written: put them back.
                let _ = self.target.set_regs(tid, regs);
                sink.notice(&Notice::Warning(format!(
                    "probe {}: the registers of a verdict for thread {tid} of process {pid} \
                     were refused ({e}); the thread goes on as before it",
                    probe.0
                )));
                Ok(())
            }
        }
    }

    /// The hit state machine: handlers, then the displaced instruction is
    /// simulated or sent to its slot.
    fn on_breakpoint(
        &mut self,
        tid: Tid,
        pid: Tid,
        addr: u64,
        mut regs: Regs,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        regs.rip = addr;
        // Back at a probe after a signal was delivered ahead of its
        // instruction: the handlers already saw this hit.
        let again = self.threads.get_mut(&tid).and_then(|t| t.rehit.take()) == Some(addr);
        if !again {
            self.emit(tid, pid, addr, &mut regs, HitKind::Entry, sink)?;
            if regs.rip == addr {
                self.hijack_return(tid, pid, addr, &regs, sink)?;
            }
        }
        if let Some(Internal::LinkerHook { r_debug }) = self.processes[&pid].sites[&addr].internal {
            self.linker_event(pid, r_debug, sink)?;
        }
        if regs.rip != addr {
            // A verdict sent the thread elsewhere (a kprobe pre-handler
            // that changed the ip): the probed instruction is skipped, with
            // neither its step nor its post event nor a return hijack.
            self.target.set_regs(tid, &regs)?;
            return self.resume(tid, Resume::Continue, 0);
        }
        let Some(site) = self.processes.get(&pid).and_then(|p| p.sites.get(&addr)) else {
            // The library holding it went away meanwhile.
            self.target.set_regs(tid, &regs)?;
            return self.resume(tid, Resume::Continue, 0);
        };
        let prepared = site.prepared.clone();
        match &prepared.action {
            Action::Simulate(sim) => {
                let r = arch_simulate(
                    &prepared,
                    sim,
                    &mut regs,
                    &mut Mem {
                        target: &mut self.target,
                        pid,
                    },
                );
                if let Err(e) = r {
                    // As the instruction itself would have: a SIGSEGV at the
                    // probed address.
                    return self.fault_at(tid, regs, addr, e.addr);
                }
                self.emit(tid, pid, addr, &mut regs, HitKind::Post, sink)?;
                self.target.set_regs(tid, &regs)?;
                self.resume(tid, Resume::Continue, 0)
            }
            Action::OutOfLine(_) => {
                let (slot_addr, slot) = site.slot.clone().expect("out-of-line sites have a slot");
                regs.rip = slot_addr;
                let mut saved_scratch = None;
                if let Some((r, v)) = slot.scratch {
                    saved_scratch = Some(regs.get(r));
                    regs.set(r, v);
                }
                // A signal waiting for this thread is delivered only after
                // the copy ran, so that its handler never sees the slot:
                // the copy is then single-stepped even where it is boosted.
                let thread = self.threads.get_mut(&tid).expect("known");
                let for_signal = !thread.pending.is_empty();
                let may_leave = matches!(&prepared.action, Action::OutOfLine(x) if x.may_leave);
                if for_signal && may_leave {
                    // The copy may block (a `syscall`) or never come back:
                    // deliver the signal now, before the instruction, and
                    // let it hit again after the handler, as the same hit.
                    thread.rehit = Some(addr);
                    regs.rip = addr;
                    if let Some(r) = saved_scratch.zip(slot.scratch) {
                        regs.set(r.1 .0, r.0);
                    }
                    self.target.set_regs(tid, &regs)?;
                    return self.resume(tid, Resume::Continue, 0);
                }
                if slot.mode != SlotMode::Boost || for_signal {
                    thread.in_slot = Some(InSlot {
                        site: addr,
                        slot_addr,
                        saved_scratch,
                        stepping_for_signal: for_signal,
                    });
                }
                if slot.mode == SlotMode::Step || for_signal {
                    thread.stopped = false;
                    self.target.set_regs(tid, &regs)?;
                    if for_signal {
                        self.block_signals(tid);
                    }
                    self.target.resume(tid, Resume::Step, 0)?;
                    Ok(())
                } else {
                    self.target.set_regs(tid, &regs)?;
                    self.resume(tid, Resume::Continue, 0)
                }
            }
        }
    }

    /// A SIGTRAP while the thread runs a copy: the post stop. Returns
    /// false when the trap was something else.
    fn slot_stop(
        &mut self,
        tid: Tid,
        pid: Tid,
        x: InSlot,
        regs: &mut Regs,
        info: &SigInfo,
        sink: &mut dyn Sink,
    ) -> Result<bool> {
        let Some(site) = self.processes[&pid].sites.get(&x.site) else {
            self.threads.get_mut(&tid).expect("known").in_slot = None;
            return Ok(false);
        };
        let (_, slot) = site.slot.clone().expect("out-of-line site");
        let prepared = site.prepared.clone();
        let end = x.slot_addr + slot.copy_len as u64;
        let trap_after =
            slot.mode == SlotMode::TrapAfter && info.code() == SI_KERNEL && regs.rip == end + 1;
        // A finished step is TRAP_TRACE, or TRAP_BRKPT after a `syscall`;
        // codes <= 0 are SIGTRAPs someone sent, not the step's end.
        let stepped = (slot.mode == SlotMode::Step || x.stepping_for_signal)
            && info.code() > 0
            && info.code() != SI_KERNEL;
        if !trap_after && !stepped {
            return Ok(false);
        }
        self.threads.get_mut(&tid).expect("known").in_slot = None;
        if x.stepping_for_signal && slot.mode != SlotMode::Step {
            // Stepped only to deliver a signal after the copy: put the
            // thread where the original instruction would have left it.
            arch_abort_xol(&prepared, &slot, x.slot_addr, x.saved_scratch, regs);
        } else {
            arch_post_xol(
                &prepared,
                &slot,
                x.slot_addr,
                x.saved_scratch,
                regs,
                &mut Mem {
                    target: &mut self.target,
                    pid,
                },
            )
            .map_err(|e| super::EngineError::Refused(format!("post-step fixup failed: {e}")))?;
        }
        self.emit(tid, pid, x.site, regs, HitKind::Post, sink)?;
        self.target.set_regs(tid, regs)?;
        self.resume(tid, Resume::Continue, 0)?;
        Ok(true)
    }

    /// A signal while the thread is inside a slot (uprobes' abort_xol). A
    /// fault of the copied instruction is delivered at the original address
    /// with the original siginfo; an asynchronous signal waits until the
    /// copy has run, so that the handler never sees the slot.
    #[allow(clippy::too_many_arguments)]
    fn signal_in_slot(
        &mut self,
        tid: Tid,
        pid: Tid,
        site_addr: u64,
        slot_addr: u64,
        mut regs: Regs,
        mut info: SigInfo,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let site = &self.processes[&pid].sites[&site_addr];
        let (_, slot) = site.slot.clone().expect("out-of-line site");
        let prepared = site.prepared.clone();
        let x = self.threads[&tid].in_slot;
        let saved = x.and_then(|x| x.saved_scratch);
        let mut moved = regs;
        let pos = arch_abort_xol(&prepared, &slot, slot_addr, saved, &mut moved);
        let may_leave = matches!(&prepared.action, Action::OutOfLine(x) if x.may_leave);
        let stepping = x.is_some_and(|x| x.stepping_for_signal);
        match pos {
            XolPosition::BeforeCopy if !info.is_fault() && (may_leave || stepping) => {
                // The copy may block or leave, or a signal storm keeps the
                // step from getting through: deliver now, before the
                // instruction (the handler must run for the program to go
                // on), and take the breakpoint again after it, as the same
                // hit.
                let t = self.threads.get_mut(&tid).expect("known");
                t.in_slot = None;
                t.rehit = Some(site_addr);
                if info.signo() >= libc::SIGRTMIN()
                    || !t.pending.iter().any(|p| p.signo() == info.signo())
                {
                    t.pending.push(info);
                }
                self.target.set_regs(tid, &moved)?;
                self.resume(tid, Resume::Continue, 0)
            }
            XolPosition::BeforeCopy if !info.is_fault() => {
                // Step the copy first, then deliver. A standard signal
                // already waiting is not queued twice, as the kernel would
                // not queue it either.
                let t = self.threads.get_mut(&tid).expect("known");
                if info.signo() >= libc::SIGRTMIN()
                    || !t.pending.iter().any(|p| p.signo() == info.signo())
                {
                    t.pending.push(info);
                }
                self.threads.get_mut(&tid).expect("known").in_slot = Some(InSlot {
                    site: site_addr,
                    slot_addr,
                    saved_scratch: saved,
                    stepping_for_signal: true,
                });
                self.block_signals(tid);
                self.target.resume(tid, Resume::Step, 0)?;
                self.threads.get_mut(&tid).expect("known").stopped = false;
                Ok(())
            }
            XolPosition::BeforeCopy => {
                self.threads.get_mut(&tid).expect("known").in_slot = None;
                let a = info.addr();
                if a >= slot_addr && a < slot_addr + crate::arch::native::SLOT_SIZE as u64 {
                    info.set_addr(site_addr + (a - slot_addr));
                    self.target.set_siginfo(tid, &info)?;
                }
                self.target.set_regs(tid, &moved)?;
                self.resume(tid, Resume::Continue, info.signo())
            }
            XolPosition::AfterCopy => {
                self.threads.get_mut(&tid).expect("known").in_slot = None;
                if slot.mode == SlotMode::Step || slot.mode == SlotMode::TrapAfter {
                    regs = moved;
                    if slot.mode == SlotMode::Step {
                        // Fixups (return address, scratch) of a finished copy.
                        let mut r = self.target.get_regs(tid)?;
                        arch_post_xol(
                            &prepared,
                            &slot,
                            slot_addr,
                            saved,
                            &mut r,
                            &mut Mem {
                                target: &mut self.target,
                                pid,
                            },
                        )
                        .map_err(|e| {
                            super::EngineError::Refused(format!("post-step fixup failed: {e}"))
                        })?;
                        regs = r;
                    }
                    self.emit(tid, pid, site_addr, &mut regs, HitKind::Post, sink)?;
                } else {
                    regs = moved;
                }
                self.target.set_regs(tid, &regs)?;
                self.resume(tid, Resume::Continue, info.signo())
            }
            XolPosition::Inside => self.resume(tid, Resume::Continue, info.signo()),
        }
    }

    /// Delivers SIGSEGV at `addr` as the instruction there would have.
    fn fault_at(&mut self, tid: Tid, mut regs: Regs, addr: u64, bad: u64) -> Result<()> {
        regs.rip = addr;
        self.target.set_regs(tid, &regs)?;
        let mut info = self.target.get_siginfo(tid)?;
        info.raw = [0; 128];
        info.raw[0..4].copy_from_slice(&libc::SIGSEGV.to_ne_bytes());
        info.raw[8..12].copy_from_slice(&1i32.to_ne_bytes()); // SEGV_MAPERR
        info.set_addr(bad);
        self.target.set_siginfo(tid, &info)?;
        self.resume(tid, Resume::Continue, libc::SIGSEGV)
    }

    /// Lets one traced process go, as [`Engine::detach_all`] does for all.
    pub fn detach_process(&mut self, pid: Tid) -> Result<()> {
        if !self.processes.contains_key(&pid) {
            return Ok(());
        }
        self.detach(pid)
    }

    /// Takes every breakpoint out, moves every thread out of the engine's
    /// slots, unmaps its pages and lets every thread go: the programs run
    /// on as if never probed.
    pub fn detach_all(&mut self) -> Result<()> {
        let pids = self.pids();
        let mut first_err = None;
        for pid in pids {
            if let Err(e) = self.detach(pid) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether a kernel-sent SIGTRAP of `tid` is the engine's: a
    /// breakpoint, the trampoline, or the end of a copy it stepped.
    fn trap_is_ours(&mut self, tid: Tid, pid: Tid) -> bool {
        if self.threads.get(&tid).is_some_and(|t| t.in_slot.is_some()) {
            return true;
        }
        let Ok(regs) = self.target.get_regs(tid) else {
            return false;
        };
        let p = &self.processes[&pid];
        let at = regs.rip.wrapping_sub(1);
        p.slot_at(regs.rip).is_some()
            || self.full_trap_site(pid, at).is_some()
            || self.is_return_trap(pid, at)
            || p.sites.contains_key(&at)
            || p.lifted.contains(&at)
            || p.trampoline == Some(at)
    }

    /// Takes a thread (or a vfork child) born in `pid` into the table,
    /// stopped: its first stop is collected if it was not yet.
    fn adopt_new_thread(&mut self, pid: Tid, tid: Tid) {
        if self.threads.get(&tid).is_some_and(|t| t.stopped) {
            return;
        }
        if self.orphans.remove(&tid).is_none() {
            let _ = self.target.wait_for(tid);
        }
        self.thread(tid, pid).stopped = true;
        let _ = self.move_out_of_slot(tid, pid);
        self.learn_key(pid, tid);
    }

    /// A thread that is not stepping a copy must never run inside a slot:
    /// one created by a `clone`/`fork` running out of line starts at the
    /// end of the copy. Send it where the original instruction would have
    /// left it. `pid` is the process whose slots the thread may be in.
    pub(super) fn move_out_of_slot(&mut self, tid: Tid, pid: Tid) -> Result<()> {
        let Ok(mut regs) = self.target.get_regs(tid) else {
            return Ok(());
        };
        let Some((slot_addr, site_addr)) = self.processes[&pid].slot_at(regs.rip) else {
            return Ok(());
        };
        let site = &self.processes[&pid].sites[&site_addr];
        let (_, slot) = site.slot.clone().expect("out-of-line site");
        let prepared = site.prepared.clone();
        // A scratch register the copy used holds the engine's value; the
        // stepping thread that spawned this one saved the program's.
        let saved = self.threads.values().find_map(|t| {
            t.in_slot
                .filter(|x| x.slot_addr == slot_addr)
                .and_then(|x| x.saved_scratch)
        });
        arch_abort_xol(&prepared, &slot, slot_addr, saved, &mut regs);
        self.target.set_regs(tid, &regs)?;
        Ok(())
    }

    /// Stops every running thread of `pid`. Returns those that stopped
    /// for the asking (true: in group-stop), which the caller lets go
    /// again; threads with a stop to handle are kept for the run loop.
    pub(super) fn stop_all(&mut self, pid: Tid) -> Vec<(Tid, bool)> {
        let mut quiet = Vec::new();
        let running: Vec<Tid> = self
            .threads
            .iter()
            .filter(|(_, t)| t.pid == pid && !t.stopped && !t.in_vfork && !t.exiting)
            .map(|(&t, _)| t)
            .collect();
        // A thread the kernel will not interrupt is gone or a zombie (a
        // leader whose group is exiting reports only after the others):
        // waiting for it would never end.
        let running: Vec<Tid> = running
            .into_iter()
            .filter(|&tid| {
                let ok = !self.target.is_zombie(tid) && self.target.interrupt(tid).is_ok();
                if !ok {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.exiting = true;
                    }
                }
                ok
            })
            .collect();
        for tid in running {
            if self.threads.get(&tid).is_none_or(|t| t.stopped) {
                continue;
            }
            let stop = self
                .target
                .wait_for(tid)
                .map_err(super::EngineError::from)
                .and_then(|s| self.settle_interrupt(tid, s));
            match stop {
                Ok(s @ (Stop::Interrupted { .. } | Stop::GroupStop { .. })) => {
                    self.note_stop(tid, &s);
                    quiet.push((tid, matches!(s, Stop::GroupStop { .. })));
                }
                Ok(s @ (Stop::Signal { .. } | Stop::Event { .. })) => {
                    self.note_stop(tid, &s);
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.stray_interrupt = true;
                    }
                    self.deferred.push_back(s);
                }
                // An end is handled by the run loop, which knows whether
                // the process ended with it (detach drops the thread).
                Ok(s @ (Stop::Exited { .. } | Stop::Killed { .. })) => {
                    if let Some(t) = self.threads.get_mut(&tid) {
                        t.stopped = true;
                        t.exiting = true;
                    }
                    self.deferred.push_back(s);
                }
                Err(_) => {
                    self.drop_thread(tid);
                }
            }
        }
        quiet
    }

    fn detach(&mut self, pid: Tid) -> Result<()> {
        self.stop_all(pid);
        // Stops not handled yet: breakpoint traps are rewound below, real
        // signals delivered at detach.
        let mut trapped: Vec<Tid> = Vec::new();
        let mut exec_seen = false;
        // Threads whose current stop is a signal-delivery-stop.
        let mut deferred_signal_stop: Vec<Tid> = self
            .threads
            .iter()
            .filter(|(_, t)| t.pid == pid && t.at_signal_stop && t.stopped)
            .map(|(&t, _)| t)
            .collect();
        let deferred: Vec<Stop> = self.deferred.drain(..).collect();
        for s in deferred {
            let Some(t) = self.threads.get(&s.tid()) else {
                self.deferred.push_back(s);
                continue;
            };
            if t.pid != pid {
                self.deferred.push_back(s);
                continue;
            }
            match s {
                Stop::Signal { tid, info } => {
                    deferred_signal_stop.push(tid);
                    if info.signo() == libc::SIGTRAP
                        && info.code() > 0
                        && self.trap_is_ours(tid, pid)
                    {
                        // A hit stopped at a full ring's trap: kept for
                        // `drain` before the jump goes.
                        self.late_full_trap(tid, pid);
                        trapped.push(tid);
                    } else if let Some(t) = self.threads.get_mut(&tid) {
                        t.pending.push(info);
                    }
                }
                // A child born just before detach: a fork child is cleaned
                // and let go; a vfork child shares our memory and is let go
                // with our threads.
                Stop::Event {
                    tid,
                    event: Event::Fork(child),
                } => {
                    if self.target.same_memory(pid, child) {
                        self.adopt_new_thread(pid, child);
                    } else {
                        let _ = self.untouch_fork_child(pid, tid, child);
                    }
                }
                Stop::Event {
                    event: Event::Vfork(child) | Event::Clone(child),
                    ..
                } => self.adopt_new_thread(pid, child),
                Stop::Event {
                    tid,
                    event: Event::Exec(_),
                } if tid != pid => {
                    // A child sharing our memory exec'd: it left it.
                    self.target.memory_changed(tid);
                    self.drop_thread(tid);
                    let _ = self.target.detach(tid, 0);
                    if let Some(p) = self.processes.get_mut(&pid) {
                        p.vfork_children.remove(&tid);
                    }
                }
                Stop::Event {
                    event: Event::Exec(_),
                    ..
                } => exec_seen = true,
                Stop::Exited { tid, .. } | Stop::Killed { tid, .. } => {
                    self.drop_thread(tid);
                }
                _ => {}
            }
        }
        if exec_seen {
            // The process replaced its image meanwhile: nothing of ours is
            // in its memory any more. Let its threads go.
            self.target.memory_changed(pid);
            for tid in self.threads_of(pid) {
                let _ = self.target.detach(tid, 0);
            }
            self.forget_process(pid);
            return Ok(());
        }
        // 0. Jumps out (threads stepped out of trampolines), the last
        //    optimized hits kept for `drain`.
        self.unoptimize_all(pid);
        self.keep_late_hits(pid);
        // 1. Original bytes back.
        self.restore_bytes(pid, pid)?;
        // 2. Threads out of the slots, and off the breakpoints.
        let tids = self.threads_of(pid);
        for &tid in &tids {
            let Ok(mut regs) = self.target.get_regs(tid) else {
                continue;
            };
            let before = regs;
            let in_slot = self.threads[&tid].in_slot;
            if let Some((slot_addr, site_addr)) = self.processes[&pid].slot_at(regs.rip) {
                let site = &self.processes[&pid].sites[&site_addr];
                let (_, slot) = site.slot.clone().expect("out-of-line");
                let saved = in_slot.and_then(|x| x.saved_scratch);
                if regs.rip == slot_addr + slot.copy_len as u64 + 1
                    && slot.mode == SlotMode::TrapAfter
                {
                    regs.rip -= 1;
                }
                if regs.rip == slot_addr + slot.copy_len as u64 && slot.mode == SlotMode::Step {
                    let p = site.prepared.clone();
                    let _ = arch_post_xol(
                        &p,
                        &slot,
                        slot_addr,
                        saved,
                        &mut regs,
                        &mut Mem {
                            target: &mut self.target,
                            pid,
                        },
                    );
                } else {
                    let p = site.prepared.clone();
                    arch_abort_xol(&p, &slot, slot_addr, saved, &mut regs);
                }
            } else if trapped.contains(&tid)
                && self.processes[&pid]
                    .sites
                    .contains_key(&regs.rip.wrapping_sub(1))
            {
                regs.rip -= 1;
            }
            if regs != before {
                self.target.set_regs(tid, &regs)?;
            }
        }
        // 3. Hijacked return addresses back on every thread's stack.
        self.restore_returns(pid, &tids, pid)?;
        self.release_vfork_parents(pid, &tids, &deferred_signal_stop);
        let tids: Vec<Tid> = tids
            .into_iter()
            .filter(|t| self.threads.contains_key(t))
            .collect();
        // 4. The engine's pages go.
        let areas = std::mem::take(&mut self.processes.get_mut(&pid).expect("exists").areas);
        // A thread at an event stop is inside a system call; step one out
        // of it if no other thread can run the munmap.
        let injector = match tids
            .iter()
            .copied()
            .find(|t| self.threads.get(t).is_some_and(|t| !t.at_event_stop))
        {
            Some(t) => Some(t),
            None => match tids.first() {
                Some(&t) => self.leave_syscall_stop(t).ok().map(|_| t),
                None => None,
            },
        };
        if let Some(tid) = injector {
            if let Some(a) = areas.first() {
                self.unmap_ring(pid, tid, a.gadget());
            }
            for area in &areas {
                let mut sigs = Vec::new();
                let _ = super::xol::unmap_area(&mut self.target, tid, area, &mut sigs);
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.pending.extend(sigs);
                }
            }
        }
        // 5. Let go, delivering what was pending.
        for tid in tids {
            if self.threads.contains_key(&tid) {
                self.let_go(pid, tid, deferred_signal_stop.contains(&tid));
            }
        }
        self.forget_process(pid);
        Ok(())
    }

    /// Detaches one stopped thread, delivering the signals it had waiting
    /// (the first with its siginfo where its stop allows).
    fn let_go(&mut self, pid: Tid, tid: Tid, at_signal_stop: bool) {
        self.unblock_signals(tid);
        let Some(t) = self.drop_thread(tid) else {
            return;
        };
        let mut sig = 0;
        let mut resend = t.pending.as_slice();
        if let Some((first, rest)) = t.pending.split_first() {
            if at_signal_stop && self.target.set_siginfo(tid, first).is_ok() {
                sig = first.signo();
                resend = rest;
            }
        }
        let _ = self.target.detach(tid, sig);
        for s in resend {
            // SAFETY: sending again a signal the thread had pending.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, s.signo()) };
        }
    }

    /// A vfork parent is held in the kernel until its child execs or
    /// exits, out of reach of an interrupt: let the children sharing our
    /// memory go first (every byte is already restored), then collect the
    /// parents' vfork-done stops.
    fn release_vfork_parents(&mut self, pid: Tid, tids: &[Tid], signal_stops: &[Tid]) {
        let parents: Vec<Tid> = tids
            .iter()
            .copied()
            .filter(|t| self.threads.get(t).is_some_and(|t| t.in_vfork))
            .collect();
        if parents.is_empty() {
            return;
        }
        let children: Vec<Tid> = self.processes[&pid]
            .vfork_children
            .iter()
            .copied()
            .collect();
        for child in children {
            if self.threads.get(&child).is_some_and(|t| t.stopped) {
                self.let_go(pid, child, signal_stops.contains(&child));
                self.processes
                    .get_mut(&pid)
                    .expect("exists")
                    .vfork_children
                    .remove(&child);
            }
        }
        for parent in parents {
            loop {
                match self.target.wait_for(parent) {
                    Ok(
                        s @ Stop::Event {
                            event: Event::VforkDone,
                            ..
                        },
                    ) => {
                        self.note_stop(parent, &s);
                        break;
                    }
                    Ok(Stop::Exited { .. } | Stop::Killed { .. }) | Err(_) => {
                        self.drop_thread(parent);
                        break;
                    }
                    Ok(s) => {
                        // Anything else on the way (a signal): keep it for
                        // delivery at detach, and go on to vfork-done.
                        if let Stop::Signal { info, .. } = s {
                            if let Some(t) = self.threads.get_mut(&parent) {
                                t.pending.push(info);
                            }
                        }
                        let _ = self.target.resume(parent, Resume::Continue, 0);
                    }
                }
            }
            if let Some(t) = self.threads.get_mut(&parent) {
                t.in_vfork = false;
            }
            let _ = self.move_out_of_slot(parent, pid);
        }
    }

    /// Kills every traced process (a spawned program whose probes were
    /// refused before it ran).
    pub fn kill_all(&mut self) {
        for pid in self.pids() {
            // SAFETY: killing a process we traced.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            loop {
                match self.target.wait() {
                    Ok(Stop::Killed { tid, .. } | Stop::Exited { tid, .. }) if tid == pid => break,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            self.forget_process(pid);
        }
    }
}

fn is_gone(e: &super::EngineError) -> bool {
    matches!(e, super::EngineError::Target(t) if t.is_gone())
}
