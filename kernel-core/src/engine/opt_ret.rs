//! Optimized return probes: the entry trampoline moves a call's return
//! address into a return instance in the ring and puts that instance's
//! pad in its place; the return comes back through the pad into the
//! process's return code, which writes the event and returns home — no
//! stop either way (`arch::native::arch_prepare_return_code`).
//!
//! What needs the live process is here: placing the return code, turning
//! return records into hits, writing hijacked return addresses back when a
//! site is unoptimized, the process detached or forked, freeing the
//! instances of frames that are gone (`longjmp`, a thread's end), and the
//! return code's trap for a full ring.

use super::{Fail, Regs};
use crate::arch::native;
use crate::engine::{monotonic_ns, Engine, Hit, HitKind, ProbeId, Return, Sink};
use crate::ring::{self, Instance};
use crate::spec::Kind;
use crate::target::{Target, Tid};

/// Where a record came from: its process and thread, the site and the
/// probes its index stands for, and when.
pub(super) struct RecordAt<'a> {
    pub pid: Tid,
    pub tid: Tid,
    pub site: u64,
    pub probes: &'a [ProbeId],
    pub time_ns: u64,
}

/// Bytes set aside for a process's return code.
const RETURN_CODE_LEN: u64 = native::PAD_LEN * ring::INSTANCES as u64 + 1024;

impl<T: Target> Engine<T> {
    /// Whether `id` is a return probe.
    pub(super) fn is_return_probe(&self, id: ProbeId) -> bool {
        self.probes
            .get(&id)
            .is_some_and(|p| p.spec.kind == Kind::Return)
    }

    /// The pads of `pid`'s return code, placing it first if it has none
    /// (every thread stopped, the ring made).
    pub(super) fn ensure_return_code(
        &mut self,
        pid: Tid,
        near: u64,
    ) -> std::result::Result<u64, Fail> {
        if let Some(rc) = self.rings.get(&pid).and_then(|r| r.ret_code.as_ref()) {
            return Ok(rc.pads);
        }
        let base = self.alloc_in_area(pid, near, "the return code", |a| {
            a.alloc_block(RETURN_CODE_LEN)
        })?;
        let r = self.rings.get(&pid).expect("made by the caller");
        let place = native::RingPlace {
            addr: r.addr,
            slots: r.ring.slots(),
            probe: 0,
            rdfsbase: native::has_rdfsbase(),
            return_pads: None,
            entry_event: false,
        };
        let code = native::arch_prepare_return_code(base, place).map_err(Fail::Refused)?;
        if code.len() > RETURN_CODE_LEN {
            return Err(Fail::Refused(format!(
                "a return code of {} bytes",
                code.len()
            )));
        }
        self.target
            .write_memory(pid, base, &code.code)
            .map_err(|e| Fail::Refused(e.to_string()))?;
        let pads = code.pads;
        self.rings.get_mut(&pid).expect("checked").ret_code = Some(code);
        Ok(pads)
    }

    /// The return code's start if `ip` is in it.
    pub(in crate::engine) fn return_code_at(&self, pid: Tid, ip: u64) -> Option<(u64, u64)> {
        let rc = self.rings.get(&pid)?.ret_code.as_ref()?;
        (ip >= rc.pads && ip < rc.pads + rc.len()).then_some((rc.pads, rc.len()))
    }

    /// Reports a return record of `at`'s probes.
    pub(super) fn report_return(
        &mut self,
        at: &RecordAt<'_>,
        regs: &Regs,
        entry_time_ns: u64,
        args: [u64; 6],
        sink: &mut dyn Sink,
    ) {
        for &id in at.probes {
            if !self.is_return_probe(id) {
                continue;
            }
            let Some(p) = self.probes.get_mut(&id) else {
                continue;
            };
            p.stats.hits += 1;
            sink.hit(&Hit {
                probe: id,
                kind: HitKind::Return,
                pid: at.pid,
                tid: at.tid,
                time_ns: at.time_ns,
                addr: at.site,
                regs,
                captures: &[],
                ret: Some(Return {
                    value: regs.rax,
                    entry_time_ns,
                    entry_args: args,
                    return_address: regs.rip,
                }),
            });
        }
    }

    /// The entry events of `at`'s return probes that report entries too
    /// (kretprobes' entry handler): only for a call whose return was
    /// hijacked, as on the trap path.
    pub(super) fn report_return_entries(
        &mut self,
        at: &RecordAt<'_>,
        regs: &Regs,
        sink: &mut dyn Sink,
    ) {
        for &id in at.probes {
            let entry = self
                .probes
                .get(&id)
                .is_some_and(|p| p.spec.kind == Kind::Return && p.spec.entry);
            if entry {
                sink.hit(&Hit {
                    probe: id,
                    kind: HitKind::Entry,
                    pid: at.pid,
                    tid: at.tid,
                    time_ns: at.time_ns,
                    addr: at.site,
                    regs,
                    captures: &[],
                    ret: None,
                });
            }
        }
    }

    /// At an entry trampoline's trap for a full ring: the entry events of
    /// the site's return probes that report entries, if the trampoline
    /// hijacked the return (the return address is a pad).
    pub(super) fn full_trap_return_entries(
        &mut self,
        tid: Tid,
        pid: Tid,
        site: u64,
        regs: &Regs,
        sink: &mut dyn Sink,
    ) {
        let Some(rc) = self.rings.get(&pid).and_then(|r| r.ret_code.clone()) else {
            return;
        };
        let mut word = [0u8; 8];
        let hijacked = self.target.read_memory(pid, regs.rsp, &mut word).is_ok()
            && rc.instance_of_pad(u64::from_le_bytes(word)).is_some();
        if !hijacked {
            return;
        }
        let probes = self.processes[&pid].sites[&site].probes.clone();
        let at = RecordAt {
            pid,
            tid,
            site,
            probes: &probes,
            time_ns: monotonic_ns(),
        };
        self.report_return_entries(&at, regs, sink);
    }

    /// Adds what the producers counted as missed returns (no free
    /// instance) to the return probes' `nmissed`; true when some were, so
    /// that the instances of frames gone are looked for.
    pub(super) fn note_missed(&mut self, pid: Tid) -> bool {
        let Some(r) = self.rings.get_mut(&pid) else {
            return false;
        };
        let mut add: Vec<(Vec<ProbeId>, u64)> = Vec::new();
        for (i, e) in r.index.iter_mut().enumerate() {
            let Some(e) = e.as_mut().filter(|e| e.returns) else {
                continue;
            };
            let now = r.ring.missed(i as u32);
            if now > e.missed_seen {
                add.push((e.probes.clone(), now - e.missed_seen));
                e.missed_seen = now;
            }
        }
        let any = !add.is_empty();

        for (probes, n) in add {
            for id in probes {
                if self.is_return_probe(id) {
                    if let Some(p) = self.probes.get_mut(&id) {
                        p.stats.nmissed += n;
                    }
                }
            }
        }
        any
    }

    /// Every live instance of `pid`'s ring.
    fn live_instances(&self, pid: Tid) -> Vec<Instance> {
        let Some(r) = self.rings.get(&pid) else {
            return Vec::new();
        };
        (0..ring::INSTANCES)
            .filter_map(|i| r.ring.instance(i))
            .collect()
    }

    /// Writes back the return addresses of the instances `free` picks, in
    /// `into`'s memory (the process, or a fork child that copied its
    /// stacks); in the process itself they are then freed, and an
    /// instance that returned into a freed one's pad (a tail call) returns
    /// where that one would have. Every thread is stopped and out of the
    /// trampolines and the return code.
    pub(in crate::engine) fn write_back_instances(
        &mut self,
        pid: Tid,
        into: Tid,
        free: impl Fn(&Instance) -> bool,
    ) {
        let Some(rc) = self.rings.get(&pid).and_then(|r| r.ret_code.clone()) else {
            return;
        };
        let live = self.live_instances(pid);
        let freed: Vec<&Instance> = live.iter().filter(|i| free(i)).collect();
        if freed.is_empty() {
            return;
        }
        // Where a return through `a` ends once the freed instances are
        // gone: through their pads to the first address that is not one.
        let resolve = |mut a: u64| {
            for _ in 0..ring::INSTANCES {
                let Some(j) = rc.instance_of_pad(a) else {
                    break;
                };
                match freed.iter().find(|f| f.index == j) {
                    Some(f) => a = f.orig_ret,
                    None => break,
                }
            }
            a
        };
        for inst in &freed {
            let mut word = [0u8; 8];
            if self.target.read_memory(into, inst.slot, &mut word).is_ok()
                && u64::from_le_bytes(word) == rc.pad(inst.index)
            {
                let _ = self.target.write_memory(
                    into,
                    inst.slot,
                    &resolve(inst.orig_ret).to_le_bytes(),
                );
            }
        }
        if into != pid {
            return;
        }
        let r = self.rings.get(&pid).expect("checked");
        for other in live.iter().filter(|i| !free(i)) {
            let to = resolve(other.orig_ret);
            if to != other.orig_ret {
                r.ring.set_instance_orig_ret(other.index, to);
            }
        }
        for inst in &freed {
            r.ring.free_instance(inst.index);
        }
    }

    /// Frees the instances whose frame is gone: their stack slot no longer
    /// holds their pad (a `longjmp` left the frame and the stack was used
    /// again, or the thread ended and its stack went). Every thread is
    /// stopped and out of the trampolines and the return code.
    pub(super) fn free_dead_instances(&mut self, pid: Tid) {
        let Some(rc) = self.rings.get(&pid).and_then(|r| r.ret_code.clone()) else {
            return;
        };
        let mut dead = Vec::new();
        for inst in self.live_instances(pid) {
            let mut word = [0u8; 8];
            let holds = self.target.read_memory(pid, inst.slot, &mut word).is_ok()
                && rc.slot_is_live(inst.index, u64::from_le_bytes(word));
            if !holds {
                dead.push(inst.index);
            }
        }
        if let Some(r) = self.rings.get(&pid) {
            for i in dead {
                r.ring.free_instance(i);
            }
        }
    }

    /// Whether `ip` is the return code's trap for a full ring.
    pub(in crate::engine) fn is_return_trap(&self, pid: Tid, ip: u64) -> bool {
        self.rings
            .get(&pid)
            .and_then(|r| r.ret_code.as_ref())
            .is_some_and(|rc| rc.full_trap == ip)
    }

    /// A thread stopped at the return code's trap (a return that found
    /// the ring full): the ring is read first (its events came before),
    /// the return reported from the instance, the instance freed and the
    /// thread sent home. False if it is not at that trap.
    pub(in crate::engine) fn settle_return_trap(
        &mut self,
        tid: Tid,
        pid: Tid,
        sink: &mut dyn Sink,
    ) -> bool {
        let Ok(mut regs) = self.target.get_regs(tid) else {
            return false;
        };
        if !self.is_return_trap(pid, regs.rip.wrapping_sub(1)) {
            return false;
        }
        self.drain_ring_all(pid, sink, false);
        let rc = self.rings[&pid].ret_code.clone().expect("checked");
        let mut word = [0u8; 8];
        let inst = self
            .target
            .read_memory(pid, native::ReturnCode::pushed_at(&regs), &mut word)
            .ok()
            .and_then(|_| rc.instance_of_pushed(u64::from_le_bytes(word)))
            .and_then(|i| self.rings[&pid].ring.instance(i));
        let Some(inst) = inst else {
            sink.notice(&super::super::Notice::Warning(format!(
                "thread {tid} of process {pid} stopped in the return code with no return \
                 instance to go on with; it gets SIGILL"
            )));
            // SAFETY: a signal to a thread of the traced process; it is
            // delivered when the thread next runs.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGILL) };
            return true;
        };
        native::ReturnCode::go_home(&mut regs, inst.orig_ret);
        let entry = self.rings[&pid]
            .index
            .get(inst.probe as usize)
            .and_then(|e| e.clone());
        if let Some(entry) = entry {
            let at = RecordAt {
                pid,
                tid,
                site: entry.site,
                probes: &entry.probes,
                time_ns: monotonic_ns(),
            };
            let entry_ns = super::TickClock::now().ns(inst.time);
            self.report_return(&at, &regs, entry_ns, inst.args, sink);
        }
        self.rings[&pid].ring.free_instance(inst.index);
        let _ = self.target.set_regs(tid, &regs);
        true
    }
}
