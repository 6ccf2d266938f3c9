//! Return probes (kretprobes): at a function's entry the return address on
//! the stack is replaced by the trampoline, an `int3` in the engine's first
//! area; when the function returns there, the return events fire and the
//! thread goes on at the original return address.
//!
//! Each thread keeps its hijacked returns oldest first, each keyed by the
//! stack slot it hijacked (uprobes' `return_instance`). A return to the
//! trampoline is matched by slot (`rsp - 8` after the `ret`), never by
//! position alone, so that `longjmp` (instances whose frames are gone are
//! dropped), coroutines and signal handlers on an alternate stack cannot
//! pair a return with the wrong call. A function that tail-calls another
//! hijacked function leaves the trampoline as the return address: the new
//! instance is chained to the one below it and both fire on the one return.

use super::{capture, monotonic_ns, Engine, Hit, HitKind, Result, RetInstance, Return, Sink};
use crate::arch::native::Regs;
use crate::spec::Kind;
use crate::target::{Resume, Target, Tid};

impl<T: Target> Engine<T> {
    /// The process's trampoline, mapping the first area if there is none
    /// (the caller has a stopped thread, as when placing a probe).
    pub(super) fn ensure_trampoline(&mut self, pid: Tid, near: u64) -> Result<u64> {
        if let Some(t) = self.processes[&pid].trampoline {
            return Ok(t);
        }
        if self.processes[&pid].areas.is_empty() {
            // The slot is not used; mapping the area is what matters.
            self.alloc_slot(pid, near)?;
        }
        let t = self.processes[&pid].areas[0].trampoline();
        self.processes
            .get_mut(&pid)
            .expect("caller checked")
            .trampoline = Some(t);
        Ok(t)
    }

    /// Refuses return probes where hijacking the return address is unsafe:
    /// Go programs (the runtime copies goroutine stacks, carrying the
    /// trampoline address to where no instance expects it) and threads
    /// with a CET shadow stack (the hardware compares the return address
    /// with its own copy and kills the thread).
    pub(super) fn check_return_probe(
        &mut self,
        pid: Tid,
        module_file: &std::path::Path,
    ) -> std::result::Result<(), String> {
        crate::symbols::browse::return_probe_refusal(&mut self.elf, pid, module_file)
    }

    /// At the entry of a function with return probes (the thread is stopped
    /// at the entry, before the first instruction): hijack its return.
    pub(super) fn hijack_return(
        &mut self,
        tid: Tid,
        pid: Tid,
        site: u64,
        regs: &Regs,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let Some(trampoline) = self.processes[&pid].trampoline else {
            return Ok(());
        };
        let ids: Vec<_> = self.processes[&pid].sites[&site]
            .probes
            .iter()
            .copied()
            .filter(|id| {
                self.probes
                    .get(id)
                    .is_some_and(|p| p.enabled && p.spec.kind == Kind::Return)
            })
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let sp = regs.rsp;
        let mut word = [0u8; 8];
        self.target.read_memory(pid, sp, &mut word)?;
        let current = u64::from_le_bytes(word);
        // A frame at this very slot whose return address is not the
        // trampoline any more was left (longjmp) and its slot reused.
        self.drop_dead_returns(tid, pid, sp, current != trampoline);
        let full = |e: &Self, id: &super::ProbeId| {
            let p = &e.probes[id];
            p.spec.maxactive.is_some_and(|max| p.active >= max)
        };
        if ids.iter().any(|id| full(self, id)) {
            self.free_returns_of_exited_threads(pid);
        }
        let depth = self.threads.get(&tid).map_or(0, |t| t.returns.len());
        let mut probes = Vec::new();
        for id in ids {
            let p = self.probes.get_mut(&id).expect("listed");
            let room = match p.spec.maxactive {
                // kretprobes: maxactive instances in flight at most, on
                // all threads together.
                Some(max) => p.active < max,
                // uprobes: a nesting depth per thread.
                None => depth < super::MAX_RETURN_DEPTH,
            };
            if !room {
                // The rest are missed, and counted.
                p.stats.nmissed += 1;
                continue;
            }
            p.active += 1;
            let caps = p.spec.captures.clone();
            let values: Vec<(String, super::Value)> = caps
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        capture::evaluate(&mut self.target, pid, regs, c),
                    )
                })
                .collect();
            probes.push((id, values));
        }
        if probes.is_empty() {
            return Ok(());
        }
        let thread = self.threads.get_mut(&tid).expect("known");
        let (orig_ret, chained) = if current == trampoline {
            // A tail call: the function below us already hijacked this
            // slot, and returns through it together with us.
            match thread.returns.iter().rev().find(|r| r.slot == sp) {
                Some(below) => (below.orig_ret, true),
                None => {
                    for (id, _) in &probes {
                        if let Some(p) = self.probes.get_mut(id) {
                            p.active -= 1;
                            p.stats.nmissed += 1;
                        }
                    }
                    return Ok(());
                }
            }
        } else {
            (current, false)
        };
        let entry_time_ns = monotonic_ns();
        // kretprobes' entry handler: the calls whose return will be
        // reported, reported at entry too, paired by the timestamp. A sync
        // probe's entry waits for its verdict like any sync hit (its
        // handlers' reads are consistent), but the verdict cannot change
        // the entry: the return is hijacked below from the registers as
        // they are (docs/plugin-abi.md, "Mutation").
        for (id, values) in &probes {
            if self.probes.get(id).is_some_and(|p| p.spec.entry) {
                let _ = sink.decide(&Hit {
                    probe: *id,
                    kind: HitKind::Entry,
                    pid,
                    tid,
                    time_ns: entry_time_ns,
                    addr: site,
                    regs,
                    captures: values,
                    ret: None,
                });
            }
        }
        let thread = self.threads.get_mut(&tid).expect("known");
        thread.returns.push(RetInstance {
            probes,
            site,
            orig_ret,
            slot: sp,
            entry_time_ns,
            entry_args: regs.args(),
            chained,
        });
        if !chained {
            self.target
                .write_memory(pid, sp, &trampoline.to_le_bytes())?;
        }
        Ok(())
    }

    /// Drops the thread's instances whose frames are gone: their slot lies
    /// below the stack pointer (or at it, with `inclusive`) on the same
    /// stack — a `longjmp` out of them. Instances on another stack (a
    /// coroutine's, a signal handler's alternate stack) are kept.
    fn drop_dead_returns(&mut self, tid: Tid, pid: Tid, sp: u64, inclusive: bool) {
        let below = |slot: u64| slot < sp || (inclusive && slot == sp);
        let thread = self.threads.get_mut(&tid).expect("known");
        if !thread.returns.iter().any(|r| below(r.slot)) {
            return;
        }
        let maps = crate::symbols::read_maps(pid).unwrap_or_default();
        let region = |a: u64| maps.iter().position(|m| a >= m.start && a < m.end);
        let here = region(sp);
        let mut dead = Vec::new();
        thread.returns.retain(|r| {
            let gone = below(r.slot) && here.is_some() && region(r.slot) == here;
            if gone {
                dead.push(r.probes.iter().map(|(id, _)| *id).collect::<Vec<_>>());
            }
            !gone
        });
        for ids in dead {
            self.release(&ids);
        }
    }

    fn release(&mut self, ids: &[super::ProbeId]) {
        for id in ids {
            if let Some(p) = self.probes.get_mut(id) {
                p.active = p.active.saturating_sub(1);
            }
        }
    }

    /// A thread that exited inside a probed call is reported to the engine
    /// only after the program may already have joined it and called again:
    /// when maxactive is reached, free the instances of threads that are
    /// already dead (zombies not yet reaped by the engine).
    fn free_returns_of_exited_threads(&mut self, pid: Tid) {
        let dead: Vec<Tid> = self
            .threads_of(pid)
            .into_iter()
            .filter(|t| !self.threads[t].returns.is_empty())
            .filter(|t| {
                // After the command name: state, ppid, pgrp, session,
                // tty, tpgid, flags. PF_EXITING (0x4) is set before the
                // kernel wakes a joiner, so it closes the window in which
                // the program already went on.
                const PF_EXITING: u64 = 0x4;
                std::fs::read_to_string(format!("/proc/{pid}/task/{t}/stat"))
                    .ok()
                    .and_then(|s| {
                        let rest = s
                            .rsplit_once(')')?
                            .1
                            .split_whitespace()
                            .map(str::to_owned)
                            .collect::<Vec<_>>();
                        let dead = rest.first()?.starts_with(['Z', 'X']);
                        let flags: u64 = rest.get(6)?.parse().ok()?;
                        Some(dead || flags & PF_EXITING != 0)
                    })
                    .unwrap_or(true)
            })
            .collect();
        for t in dead {
            let returns = std::mem::take(&mut self.threads.get_mut(&t).expect("listed").returns);
            self.forget_returns(returns);
        }
    }

    /// Forgets a thread, freeing its return instances (they count against
    /// their probes' maxactive). Every path that loses a thread goes here.
    pub(super) fn drop_thread(&mut self, tid: Tid) -> Option<super::Thread> {
        let mut t = self.threads.remove(&tid)?;
        let returns = std::mem::take(&mut t.returns);
        self.forget_returns(returns);
        Some(t)
    }

    /// Frees return instances that will never return.
    pub(super) fn forget_returns(&mut self, returns: Vec<RetInstance>) {
        for r in returns {
            let ids: Vec<_> = r.probes.iter().map(|(id, _)| *id).collect();
            self.release(&ids);
        }
    }

    /// A thread returned into the trampoline (`rip` = trampoline + 1).
    pub(super) fn on_trampoline(
        &mut self,
        tid: Tid,
        pid: Tid,
        mut regs: Regs,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        // The `ret` popped the return address: its slot is just below. A
        // `ret imm16` pops more: then the innermost instance below the
        // stack pointer on the same stack, as uprobes does.
        let popped = regs.rsp.wrapping_sub(8);
        let maps = std::cell::OnceCell::new();
        let same_stack = |a: u64, b: u64| {
            let maps = maps.get_or_init(|| crate::symbols::read_maps(pid).unwrap_or_default());
            let region = |x: u64| maps.iter().position(|m| x >= m.start && x < m.end);
            region(a).is_some() && region(a) == region(b)
        };
        let thread = self.threads.get_mut(&tid).expect("known");
        let first = thread
            .returns
            .iter()
            .rposition(|r| r.slot == popped && !r.chained)
            .or_else(|| {
                thread
                    .returns
                    .iter()
                    .rposition(|r| r.slot < regs.rsp && !r.chained && same_stack(r.slot, regs.rsp))
            });
        let Some(first) = first else {
            // Nothing can say where this return should go: fail this
            // thread alone, with SIGILL at the trampoline as uprobes does.
            sink.notice(&super::Notice::Warning(format!(
                "thread {tid} of process {pid} returned to the trampoline from stack slot \
                 {popped:#x}, which no return instance holds; it gets SIGILL"
            )));
            return self.resume(tid, Resume::Continue, libc::SIGILL);
        };
        let slot = thread.returns[first].slot;
        // The instance and those chained to it (pushed after it, same
        // slot); instances pushed after it deeper on the same stack were
        // left by longjmp; those on other stacks live on.
        let fired: Vec<RetInstance> = thread.returns.drain(first..).collect();
        let (mine, later): (Vec<_>, Vec<_>) = fired.into_iter().partition(|r| r.slot == slot);
        let (dead, others): (Vec<_>, Vec<_>) = later
            .into_iter()
            .partition(|r| r.slot < slot && same_stack(r.slot, slot));
        self.threads
            .get_mut(&tid)
            .expect("known")
            .returns
            .extend(others);
        self.forget_returns(dead);
        let orig_ret = mine[0].orig_ret;
        regs.rip = orig_ret;
        let time_ns = monotonic_ns();
        // The instances are off the thread: released before any handler
        // runs, so that none is left counted or released twice, whatever
        // the verdicts are (or if the thread dies meanwhile).
        let fired: Vec<_> = mine
            .iter()
            .flat_map(|inst| inst.probes.iter().map(|(id, _)| *id))
            .collect();
        self.release(&fired);
        // Innermost first: the tail-called function returns before its
        // caller. Each handler sees the registers the verdicts before it
        // left; the thread goes on with the last ones.
        for inst in mine.iter().rev() {
            for (id, captures) in &inst.probes {
                let Some(p) = self.probes.get_mut(id) else {
                    continue;
                };
                if !p.enabled {
                    continue;
                }
                p.stats.hits += 1;
                let verdict = sink.decide(&Hit {
                    probe: *id,
                    kind: HitKind::Return,
                    pid,
                    tid,
                    time_ns,
                    addr: inst.site,
                    regs: &regs,
                    captures,
                    ret: Some(Return {
                        value: regs.rax,
                        entry_time_ns: inst.entry_time_ns,
                        entry_args: inst.entry_args,
                        return_address: orig_ret,
                    }),
                });
                self.apply_verdict(tid, pid, *id, verdict, &mut regs, sink)?;
            }
        }
        self.target.set_regs(tid, &regs)?;
        self.resume(tid, Resume::Continue, 0)
    }

    /// Writes every hijacked return address of `pid`'s threads back (into
    /// `into`'s memory: the process itself, or a fork child that copied
    /// the stack), and moves a thread sitting at the trampoline to its
    /// original return address.
    pub(super) fn restore_returns(&mut self, pid: Tid, tids: &[Tid], into: Tid) -> Result<()> {
        let Some(trampoline) = self.processes.get(&pid).and_then(|p| p.trampoline) else {
            return Ok(());
        };
        for &tid in tids {
            let Some(thread) = self.threads.get(&tid) else {
                continue;
            };
            let returns = thread.returns.clone();
            // Newest first: where a slot was reused, the live instance's
            // return address is the one to write.
            for r in returns.iter().rev().filter(|r| !r.chained) {
                let mut word = [0u8; 8];
                if self.target.read_memory(into, r.slot, &mut word).is_ok()
                    && u64::from_le_bytes(word) == trampoline
                {
                    self.target
                        .write_memory(into, r.slot, &r.orig_ret.to_le_bytes())?;
                }
            }
            if into != pid {
                continue;
            }
            // A thread that already returned into the trampoline.
            if let Ok(mut regs) = self.target.get_regs(tid) {
                if regs.rip == trampoline || regs.rip == trampoline + 1 {
                    let slot = regs.rsp.wrapping_sub(8);
                    if let Some(r) = returns.iter().rev().find(|r| r.slot == slot && !r.chained) {
                        regs.rip = r.orig_ret;
                        self.target.set_regs(tid, &regs)?;
                    }
                }
            }
        }
        Ok(())
    }
}
