//! Each frame's payload, encoded and decoded field by field in the order
//! of the tables in `docs/core-protocol.md`.

use super::wire::{Cursor, Put};
use super::*;

/// Smallest encodings, used to check counts before allocating. Each is a
/// lower bound over every valid encoding of the element.
const MIN_STRING: usize = 4;
const MIN_OPTIONS: usize = 1 + 1 + 4 + 1;
const MIN_PLACEMENT: usize = 4 + 8 + MIN_STRING;
const MIN_PROBE_INFO: usize = 4 + MIN_STRING + MIN_OPTIONS + 1 + 8 + 8 + 8 + 4 + 4 + 4;
const MIN_PROBE_COUNTERS: usize = 4 + 8 + 8 + 8;
const MIN_CAPTURE: usize = MIN_STRING + 1 + 4;
const MIN_REGSET: usize = 2 + X86_64_NREGS * 8;
pub(super) const MIN_EVENT: usize = 8 + 4 + 1 + 1 + 4 + 4 + 8 + 8 + MIN_REGSET + 4 + 1;

/// Encodes one whole frame: length, type, payload.
///
/// A frame whose length would exceed [`MAX_FRAME`] is still encoded (the
/// length field then says so); [`write_frame`](super::write_frame) refuses
/// to send it and [`decode`] refuses to read it. Only an `Events` frame
/// with huge captures or an oversize string can get there; build event
/// frames with [`EventBatch`](super::EventBatch), which stays under the
/// limit.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(frame, &mut out);
    out
}

/// Appends one whole frame to `out`.
pub fn encode_into(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(frame.frame_type());
    put_payload(frame, out);
    patch_length(out, start);
}

/// Writes the length field of the frame that starts at `start`.
pub(super) fn patch_length(out: &mut [u8], start: usize) {
    let len = out.len() - start - HEADER_LEN;
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

/// Decodes one whole frame: `buf` holds the length field, the type byte
/// and the payload, and nothing else.
pub fn decode(buf: &[u8]) -> Result<Frame, ProtoError> {
    let mut c = Cursor::new(buf);
    let declared = c.u32("frame length")?;
    check_length(declared)?;
    let actual = c.remaining();
    if (declared as usize) > actual {
        return Err(ProtoError::Truncated {
            what: "frame",
            need: declared as usize,
            have: actual,
        });
    }
    if (declared as usize) < actual {
        return Err(ProtoError::LengthMismatch { declared, actual });
    }
    let ty = c.u8("frame type")?;
    let name = frame_name(ty).ok_or(ProtoError::UnknownFrameType(ty))?;
    let frame = get_payload(ty, &mut c)?;
    c.finish(name)?;
    Ok(frame)
}

/// Refuses a length field of 0 or above [`MAX_FRAME`].
pub(super) fn check_length(len: u32) -> Result<(), ProtoError> {
    if len == 0 {
        Err(ProtoError::EmptyFrame)
    } else if len > MAX_FRAME {
        Err(ProtoError::Oversize {
            len: len.into(),
            max: MAX_FRAME,
        })
    } else {
        Ok(())
    }
}

fn put_payload(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Hello(h) => {
            out.extend_from_slice(&MAGIC);
            out.put_u16(h.version);
            out.put_str(&h.client);
        }
        Frame::Welcome(w) => {
            out.put_u16(w.version);
            out.put_u32(w.core_pid);
            out.put_u32(w.max_frame);
        }
        Frame::Incompatible(i) => {
            out.put_u16(i.supported.0);
            out.put_u16(i.supported.1);
            out.put_str(&i.message);
        }
        Frame::Request(r) => {
            out.put_u32(r.id);
            put_op(&r.op, out);
        }
        Frame::Ok { id, body } => {
            out.put_u32(*id);
            put_body(body, out);
        }
        Frame::Error { id, kind, message } => {
            out.put_u32(*id);
            out.put_u16(kind.code());
            out.put_str(message);
        }
        Frame::Events(events) => {
            out.put_count(events.len());
            for e in events {
                put_event(e, out);
            }
        }
        Frame::Loss { probe, count } => {
            out.put_u32(*probe);
            out.put_u64(*count);
        }
        Frame::Notice(n) => put_notice(n, out),
        Frame::Verdict { seq, action } => {
            out.put_u64(*seq);
            match action {
                Action::Continue => out.put_u8(0),
                Action::SetRegs(regs) => {
                    out.put_u8(1);
                    put_regs(regs, out);
                }
                Action::SetReturn(v) => {
                    out.put_u8(2);
                    out.put_u64(*v);
                }
            }
        }
    }
}

fn get_payload(ty: u8, c: &mut Cursor<'_>) -> Result<Frame, ProtoError> {
    use frame_type::*;
    Ok(match ty {
        HELLO => {
            let magic: [u8; 4] = c
                .take(4, "Hello magic")?
                .try_into()
                .expect("take(4) yields 4 bytes");
            if magic != MAGIC {
                return Err(ProtoError::BadMagic { found: magic });
            }
            Frame::Hello(Hello {
                version: c.u16("Hello version")?,
                client: c.string("Hello client")?,
            })
        }
        WELCOME => Frame::Welcome(Welcome {
            version: c.u16("Welcome version")?,
            core_pid: c.u32("Welcome core_pid")?,
            max_frame: c.u32("Welcome max_frame")?,
        }),
        INCOMPATIBLE => Frame::Incompatible(Incompatible {
            supported: (
                c.u16("Incompatible min version")?,
                c.u16("Incompatible max version")?,
            ),
            message: c.string("Incompatible message")?,
        }),
        REQUEST => Frame::Request(Request {
            id: c.u32("request id")?,
            op: get_op(c)?,
        }),
        OK => Frame::Ok {
            id: c.u32("request id")?,
            body: get_body(c)?,
        },
        ERROR => {
            let id = c.u32("request id")?;
            let code = c.u16("error kind")?;
            let kind = ErrorKind::from_code(code).ok_or(ProtoError::UnknownTag {
                what: "error kind",
                tag: code.into(),
            })?;
            Frame::Error {
                id,
                kind,
                message: c.string("error message")?,
            }
        }
        EVENTS => {
            let n = c.count("event count", MIN_EVENT)?;
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                events.push(get_event(c)?);
            }
            Frame::Events(events)
        }
        LOSS => Frame::Loss {
            probe: c.u32("Loss probe")?,
            count: c.u64("Loss count")?,
        },
        NOTICE => Frame::Notice(get_notice(c)?),
        VERDICT => {
            let seq = c.u64("Verdict seq")?;
            let action = match c.u8("verdict action")? {
                0 => Action::Continue,
                1 => Action::SetRegs(get_regs(c)?),
                2 => Action::SetReturn(c.u64("verdict return value")?),
                tag => return Err(unknown("verdict action", tag)),
            };
            Frame::Verdict { seq, action }
        }
        _ => return Err(ProtoError::UnknownFrameType(ty)),
    })
}

fn unknown(what: &'static str, tag: u8) -> ProtoError {
    ProtoError::UnknownTag {
        what,
        tag: tag.into(),
    }
}

fn put_op(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::Spawn { argv, env, stdio } => {
            out.put_u8(1);
            put_strings(argv, out);
            out.put_bool(env.is_some());
            if let Some(env) = env {
                put_strings(env, out);
            }
            out.put_u8(match stdio {
                SpawnStdio::Inherit => 0,
                SpawnStdio::Null => 1,
                SpawnStdio::Passed => 2,
            });
        }
        Op::Attach { pid } => {
            out.put_u8(2);
            out.put_i32(*pid);
        }
        Op::Detach { pid } => {
            out.put_u8(3);
            out.put_i32(*pid);
        }
        Op::AddProbe { spec, options } => {
            out.put_u8(4);
            out.put_str(spec);
            put_options(options, out);
        }
        Op::EnableProbe { id } => {
            out.put_u8(5);
            out.put_u32(*id);
        }
        Op::DisableProbe { id } => {
            out.put_u8(6);
            out.put_u32(*id);
        }
        Op::RemoveProbe { id } => {
            out.put_u8(7);
            out.put_u32(*id);
        }
        Op::ListProbes => out.put_u8(8),
        Op::Stats => out.put_u8(9),
        Op::Ping => out.put_u8(10),
        Op::Resume { pid } => {
            out.put_u8(11);
            out.put_i32(*pid);
        }
        Op::Configure {
            follow_fork,
            follow_exec,
            no_optimize,
        } => {
            out.put_u8(12);
            out.put_bool(*follow_fork);
            out.put_bool(*follow_exec);
            out.put_bool(*no_optimize);
        }
    }
}

fn get_op(c: &mut Cursor<'_>) -> Result<Op, ProtoError> {
    Ok(match c.u8("request op")? {
        1 => {
            let argv = get_strings(c, "Spawn argv count", "Spawn argv")?;
            let env = if c.bool("Spawn has env")? {
                Some(get_strings(c, "Spawn env count", "Spawn env")?)
            } else {
                None
            };
            let stdio = match c.u8("Spawn stdio")? {
                0 => SpawnStdio::Inherit,
                1 => SpawnStdio::Null,
                2 => SpawnStdio::Passed,
                tag => return Err(unknown("Spawn stdio", tag)),
            };
            Op::Spawn { argv, env, stdio }
        }
        2 => Op::Attach {
            pid: c.i32("Attach pid")?,
        },
        3 => Op::Detach {
            pid: c.i32("Detach pid")?,
        },
        4 => Op::AddProbe {
            spec: c.string("AddProbe spec")?,
            options: get_options(c)?,
        },
        5 => Op::EnableProbe {
            id: c.u32("EnableProbe id")?,
        },
        6 => Op::DisableProbe {
            id: c.u32("DisableProbe id")?,
        },
        7 => Op::RemoveProbe {
            id: c.u32("RemoveProbe id")?,
        },
        8 => Op::ListProbes,
        9 => Op::Stats,
        10 => Op::Ping,
        11 => Op::Resume {
            pid: c.i32("Resume pid")?,
        },
        12 => Op::Configure {
            follow_fork: c.bool("Configure follow_fork")?,
            follow_exec: c.bool("Configure follow_exec")?,
            no_optimize: c.bool("Configure no_optimize")?,
        },
        tag => return Err(unknown("request op", tag)),
    })
}

fn put_strings(v: &[String], out: &mut Vec<u8>) {
    out.put_count(v.len());
    for a in v {
        out.put_str(a);
    }
}

fn get_strings(
    c: &mut Cursor<'_>,
    count: &'static str,
    each: &'static str,
) -> Result<Vec<String>, ProtoError> {
    let n = c.count(count, MIN_STRING)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(c.string(each)?);
    }
    Ok(v)
}

fn put_options(o: &ProbeOptions, out: &mut Vec<u8>) {
    out.put_u8(match o.mode {
        Mode::Async => 0,
        Mode::Sync => 1,
    });
    out.put_bool(o.allow_mutation);
    out.put_u32(o.sync_deadline_us);
    out.put_bool(o.no_optimize);
}

fn get_options(c: &mut Cursor<'_>) -> Result<ProbeOptions, ProtoError> {
    let mode = match c.u8("probe mode")? {
        0 => Mode::Async,
        1 => Mode::Sync,
        tag => return Err(unknown("probe mode", tag)),
    };
    Ok(ProbeOptions {
        mode,
        allow_mutation: c.bool("allow_mutation")?,
        sync_deadline_us: c.u32("sync_deadline_us")?,
        no_optimize: c.bool("no_optimize")?,
    })
}

fn put_body(body: &Body, out: &mut Vec<u8>) {
    match body {
        Body::Empty => out.put_u8(0),
        Body::Target { pid } => {
            out.put_u8(1);
            out.put_i32(*pid);
        }
        Body::Probe { id } => {
            out.put_u8(2);
            out.put_u32(*id);
        }
        Body::Probes(list) => {
            out.put_u8(3);
            out.put_count(list.len());
            for p in list {
                out.put_u32(p.id);
                out.put_str(&p.spec);
                put_options(&p.options, out);
                out.put_bool(p.enabled);
                out.put_u64(p.hits);
                out.put_u64(p.nmissed);
                out.put_u64(p.dropped);
                out.put_count(p.placements.len());
                for pl in &p.placements {
                    out.put_i32(pl.pid);
                    out.put_u64(pl.addr);
                    out.put_str(&pl.state);
                }
                out.put_u32(p.owner_uid);
                out.put_i32(p.owner_pid);
            }
        }
        Body::Stats(s) => {
            out.put_u8(4);
            out.put_u64(s.events_sent);
            out.put_u64(s.events_dropped);
            out.put_u32(s.queue_len);
            out.put_u32(s.queue_capacity);
            out.put_count(s.probes.len());
            for p in &s.probes {
                out.put_u32(p.id);
                out.put_u64(p.hits);
                out.put_u64(p.nmissed);
                out.put_u64(p.dropped);
            }
        }
    }
}

fn get_body(c: &mut Cursor<'_>) -> Result<Body, ProtoError> {
    Ok(match c.u8("reply body")? {
        0 => Body::Empty,
        1 => Body::Target {
            pid: c.i32("Target pid")?,
        },
        2 => Body::Probe {
            id: c.u32("Probe id")?,
        },
        3 => {
            let n = c.count("probe count", MIN_PROBE_INFO)?;
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                let id = c.u32("probe id")?;
                let spec = c.string("probe spec")?;
                let options = get_options(c)?;
                let enabled = c.bool("probe enabled")?;
                let hits = c.u64("probe hits")?;
                let nmissed = c.u64("probe nmissed")?;
                let dropped = c.u64("probe dropped")?;
                let m = c.count("placement count", MIN_PLACEMENT)?;
                let mut placements = Vec::with_capacity(m);
                for _ in 0..m {
                    placements.push(Placement {
                        pid: c.i32("placement pid")?,
                        addr: c.u64("placement addr")?,
                        state: c.string("placement state")?,
                    });
                }
                let owner_uid = c.u32("probe owner uid")?;
                let owner_pid = c.i32("probe owner pid")?;
                list.push(ProbeInfo {
                    id,
                    spec,
                    options,
                    enabled,
                    hits,
                    nmissed,
                    dropped,
                    placements,
                    owner_uid,
                    owner_pid,
                });
            }
            Body::Probes(list)
        }
        4 => {
            let events_sent = c.u64("events_sent")?;
            let events_dropped = c.u64("events_dropped")?;
            let queue_len = c.u32("queue_len")?;
            let queue_capacity = c.u32("queue_capacity")?;
            let n = c.count("probe counters count", MIN_PROBE_COUNTERS)?;
            let mut probes = Vec::with_capacity(n);
            for _ in 0..n {
                probes.push(ProbeCounters {
                    id: c.u32("probe id")?,
                    hits: c.u64("probe hits")?,
                    nmissed: c.u64("probe nmissed")?,
                    dropped: c.u64("probe dropped")?,
                });
            }
            Body::Stats(Stats {
                events_sent,
                events_dropped,
                queue_len,
                queue_capacity,
                probes,
            })
        }
        tag => return Err(unknown("reply body", tag)),
    })
}

fn put_regs(regs: &RegSet, out: &mut Vec<u8>) {
    out.put_u16(regs.arch());
    match regs {
        RegSet::X86_64(values) => {
            for v in values {
                out.put_u64(*v);
            }
        }
    }
}

fn get_regs(c: &mut Cursor<'_>) -> Result<RegSet, ProtoError> {
    match c.u16("register set arch")? {
        RegSet::EM_X86_64 => Ok(RegSet::X86_64(c.u64s("x86_64 registers")?)),
        arch => Err(ProtoError::UnknownTag {
            what: "register set arch (ELF e_machine)",
            tag: arch.into(),
        }),
    }
}

/// Appends one event (no frame header): used by `EventBatch` too.
pub(super) fn put_event(e: &Event, out: &mut Vec<u8>) {
    out.put_u64(e.seq);
    out.put_u32(e.probe);
    out.put_u8(match e.kind {
        EventKind::Entry => 0,
        EventKind::Post => 1,
        EventKind::Return => 2,
    });
    out.put_bool(e.sync);
    out.put_i32(e.pid);
    out.put_i32(e.tid);
    out.put_u64(e.time_ns);
    out.put_u64(e.addr);
    put_regs(&e.regs, out);
    out.put_count(e.captures.len());
    for (name, value) in &e.captures {
        out.put_str(name);
        match value {
            CaptureValue::Unsigned(v) => {
                out.put_u8(0);
                out.put_u64(*v);
            }
            CaptureValue::Signed(v) => {
                out.put_u8(1);
                out.put_i64(*v);
            }
            CaptureValue::Hex(v) => {
                out.put_u8(2);
                out.put_u64(*v);
            }
            CaptureValue::String { bytes, truncated } => {
                out.put_u8(3);
                out.put_bool(*truncated);
                out.put_bytes(bytes);
            }
            CaptureValue::Bytes(bytes) => {
                out.put_u8(4);
                out.put_bytes(bytes);
            }
            CaptureValue::Error(message) => {
                out.put_u8(5);
                out.put_str(message);
            }
        }
    }
    match &e.ret {
        None => out.put_u8(0),
        Some(r) => {
            out.put_u8(1);
            out.put_u64(r.value);
            out.put_u64(r.entry_time_ns);
            for a in r.entry_args {
                out.put_u64(a);
            }
            out.put_u64(r.return_address);
        }
    }
}

fn get_event(c: &mut Cursor<'_>) -> Result<Event, ProtoError> {
    let seq = c.u64("event seq")?;
    let probe = c.u32("event probe")?;
    let kind = match c.u8("event kind")? {
        0 => EventKind::Entry,
        1 => EventKind::Post,
        2 => EventKind::Return,
        tag => return Err(unknown("event kind", tag)),
    };
    let sync = c.bool("event sync")?;
    let pid = c.i32("event pid")?;
    let tid = c.i32("event tid")?;
    let time_ns = c.u64("event time_ns")?;
    let addr = c.u64("event addr")?;
    let regs = get_regs(c)?;
    let n = c.count("capture count", MIN_CAPTURE)?;
    let mut captures = Vec::with_capacity(n);
    for _ in 0..n {
        let name = c.string("capture name")?;
        let value = match c.u8("capture value")? {
            0 => CaptureValue::Unsigned(c.u64("capture u64")?),
            1 => CaptureValue::Signed(c.i64("capture i64")?),
            2 => CaptureValue::Hex(c.u64("capture hex")?),
            3 => {
                let truncated = c.bool("capture string truncated")?;
                CaptureValue::String {
                    bytes: c.bytes("capture string")?.to_vec(),
                    truncated,
                }
            }
            4 => CaptureValue::Bytes(c.bytes("capture bytes")?.to_vec()),
            5 => CaptureValue::Error(c.string("capture error")?),
            tag => return Err(unknown("capture value", tag)),
        };
        captures.push((name, value));
    }
    let ret = if c.present("event ret")? {
        Some(RetInfo {
            value: c.u64("ret value")?,
            entry_time_ns: c.u64("ret entry_time_ns")?,
            entry_args: c.u64s("ret entry_args")?,
            return_address: c.u64("ret return_address")?,
        })
    } else {
        None
    };
    Ok(Event {
        seq,
        probe,
        kind,
        sync,
        pid,
        tid,
        time_ns,
        addr,
        regs,
        captures,
        ret,
    })
}

fn put_notice(n: &Notice, out: &mut Vec<u8>) {
    match n {
        Notice::Warning { text } => {
            out.put_u8(0);
            out.put_str(text);
        }
        Notice::Armed {
            probe,
            pid,
            addr,
            location,
        } => {
            out.put_u8(1);
            out.put_u32(*probe);
            out.put_i32(*pid);
            out.put_u64(*addr);
            out.put_str(location);
        }
        Notice::Pending { probe, pid, reason }
        | Notice::Refused { probe, pid, reason }
        | Notice::Gone { probe, pid, reason } => {
            out.put_u8(match n {
                Notice::Pending { .. } => 2,
                Notice::Refused { .. } => 3,
                _ => 4,
            });
            out.put_u32(*probe);
            out.put_i32(*pid);
            out.put_str(reason);
        }
        Notice::Exited { pid, status } => {
            out.put_u8(5);
            out.put_i32(*pid);
            match status {
                ExitStatus::Code(v) => {
                    out.put_u8(0);
                    out.put_i32(*v);
                }
                ExitStatus::Signal(v) => {
                    out.put_u8(1);
                    out.put_i32(*v);
                }
            }
        }
        Notice::Idle => out.put_u8(6),
        Notice::Placed {
            probe,
            pid,
            addr,
            state,
        } => {
            out.put_u8(7);
            out.put_u32(*probe);
            out.put_i32(*pid);
            out.put_u64(*addr);
            out.put_str(state);
        }
    }
}

fn get_notice(c: &mut Cursor<'_>) -> Result<Notice, ProtoError> {
    Ok(match c.u8("notice kind")? {
        0 => Notice::Warning {
            text: c.string("warning text")?,
        },
        1 => Notice::Armed {
            probe: c.u32("notice probe")?,
            pid: c.i32("notice pid")?,
            addr: c.u64("notice addr")?,
            location: c.string("notice location")?,
        },
        tag @ 2..=4 => {
            let probe = c.u32("notice probe")?;
            let pid = c.i32("notice pid")?;
            let reason = c.string("notice reason")?;
            match tag {
                2 => Notice::Pending { probe, pid, reason },
                3 => Notice::Refused { probe, pid, reason },
                _ => Notice::Gone { probe, pid, reason },
            }
        }
        5 => {
            let pid = c.i32("notice pid")?;
            let status = match c.u8("exit status")? {
                0 => ExitStatus::Code(c.i32("exit code")?),
                1 => ExitStatus::Signal(c.i32("exit signal")?),
                tag => return Err(unknown("exit status", tag)),
            };
            Notice::Exited { pid, status }
        }
        6 => Notice::Idle,
        7 => Notice::Placed {
            probe: c.u32("Placed probe")?,
            pid: c.i32("Placed pid")?,
            addr: c.u64("Placed addr")?,
            state: c.string("Placed state")?,
        },
        tag => return Err(unknown("notice kind", tag)),
    })
}
