//! Property tests: the decoder on arbitrary and on damaged input (it never
//! panics and never holds more memory than its input could describe),
//! round trips of arbitrary frames, the reader on arbitrary chunking, every
//! frame type cut short or lengthened, lengths of 0 or above `MAX_FRAME`, and
//! the seeds of `tests/fuzz-corpus/proto/`.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..24)
}

fn options() -> impl Strategy<Value = ProbeOptions> {
    (any::<bool>(), any::<bool>(), any::<u32>()).prop_map(|(sync, allow_mutation, deadline)| {
        ProbeOptions {
            mode: if sync { Mode::Sync } else { Mode::Async },
            allow_mutation,
            sync_deadline_us: deadline,
            no_optimize: false,
        }
    })
}

fn regs() -> impl Strategy<Value = RegSet> {
    any::<[u64; X86_64_NREGS]>().prop_map(RegSet::X86_64)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            vec(text(), 0..4),
            proptest::option::of(vec(text(), 0..3)),
            prop_oneof![
                Just(SpawnStdio::Inherit),
                Just(SpawnStdio::Null),
                Just(SpawnStdio::Passed)
            ]
        )
            .prop_map(|(argv, env, stdio)| Op::Spawn { argv, env, stdio }),
        any::<i32>().prop_map(|pid| Op::Attach { pid }),
        any::<i32>().prop_map(|pid| Op::Detach { pid }),
        (text(), options()).prop_map(|(spec, options)| Op::AddProbe { spec, options }),
        any::<u32>().prop_map(|id| Op::EnableProbe { id }),
        any::<u32>().prop_map(|id| Op::DisableProbe { id }),
        any::<u32>().prop_map(|id| Op::RemoveProbe { id }),
        Just(Op::ListProbes),
        Just(Op::Stats),
        Just(Op::Ping),
        any::<i32>().prop_map(|pid| Op::Resume { pid }),
        any::<(bool, bool, bool)>().prop_map(|(follow_fork, follow_exec, no_optimize)| {
            Op::Configure {
                follow_fork,
                follow_exec,
                no_optimize,
            }
        }),
    ]
}

fn probe_info() -> impl Strategy<Value = ProbeInfo> {
    (
        any::<u32>(),
        text(),
        options(),
        any::<bool>(),
        any::<(u64, u64, u64)>(),
        vec(
            (any::<(i32, u64)>(), text()).prop_map(|((pid, addr), state)| Placement {
                pid,
                addr,
                state,
            }),
            0..3,
        ),
        any::<(u32, i32)>(),
    )
        .prop_map(
            |(id, spec, options, enabled, (hits, nmissed, dropped), placements, owner)| ProbeInfo {
                id,
                spec,
                options,
                enabled,
                hits,
                nmissed,
                dropped,
                placements,
                owner_uid: owner.0,
                owner_pid: owner.1,
            },
        )
}

fn body() -> impl Strategy<Value = Body> {
    let counters =
        any::<(u32, u64, u64, u64)>().prop_map(|(id, hits, nmissed, dropped)| ProbeCounters {
            id,
            hits,
            nmissed,
            dropped,
        });
    prop_oneof![
        Just(Body::Empty),
        any::<i32>().prop_map(|pid| Body::Target { pid }),
        any::<u32>().prop_map(|id| Body::Probe { id }),
        vec(probe_info(), 0..3).prop_map(Body::Probes),
        (any::<(u64, u64, u32, u32)>(), vec(counters, 0..3)).prop_map(
            |((events_sent, events_dropped, queue_len, queue_capacity), probes)| {
                Body::Stats(Stats {
                    events_sent,
                    events_dropped,
                    queue_len,
                    queue_capacity,
                    probes,
                })
            }
        ),
    ]
}

fn capture_value() -> impl Strategy<Value = CaptureValue> {
    prop_oneof![
        any::<u64>().prop_map(CaptureValue::Unsigned),
        any::<i64>().prop_map(CaptureValue::Signed),
        any::<u64>().prop_map(CaptureValue::Hex),
        (bytes(), any::<bool>())
            .prop_map(|(bytes, truncated)| CaptureValue::String { bytes, truncated }),
        bytes().prop_map(CaptureValue::Bytes),
        text().prop_map(CaptureValue::Error),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let kind = prop_oneof![
        Just(EventKind::Entry),
        Just(EventKind::Post),
        Just(EventKind::Return),
    ];
    let ret = proptest::option::of((any::<(u64, u64, u64)>(), any::<[u64; 6]>()).prop_map(
        |((value, entry_time_ns, return_address), entry_args)| RetInfo {
            value,
            entry_time_ns,
            entry_args,
            return_address,
        },
    ));
    (
        any::<(u64, u32, bool, i32, i32, u64, u64)>(),
        kind,
        regs(),
        vec((text(), capture_value()), 0..4),
        ret,
    )
        .prop_map(
            |((seq, probe, sync, pid, tid, time_ns, addr), kind, regs, captures, ret)| Event {
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
            },
        )
}

fn notice() -> impl Strategy<Value = Notice> {
    let status = prop_oneof![
        any::<i32>().prop_map(ExitStatus::Code),
        any::<i32>().prop_map(ExitStatus::Signal),
    ];
    prop_oneof![
        text().prop_map(|text| Notice::Warning { text }),
        (any::<(u32, i32, u64)>(), text()).prop_map(|((probe, pid, addr), location)| {
            Notice::Armed {
                probe,
                pid,
                addr,
                location,
            }
        }),
        (any::<(u32, i32)>(), text()).prop_map(|((probe, pid), reason)| Notice::Pending {
            probe,
            pid,
            reason
        }),
        (any::<(u32, i32)>(), text()).prop_map(|((probe, pid), reason)| Notice::Refused {
            probe,
            pid,
            reason
        }),
        (any::<(u32, i32)>(), text()).prop_map(|((probe, pid), reason)| Notice::Gone {
            probe,
            pid,
            reason
        }),
        (any::<i32>(), status).prop_map(|(pid, status)| Notice::Exited { pid, status }),
        Just(Notice::Idle),
        (any::<(u32, i32, u64)>(), text()).prop_map(|((probe, pid, addr), state)| {
            Notice::Placed {
                probe,
                pid,
                addr,
                state,
            }
        }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let kind = (0..ErrorKind::ALL.len()).prop_map(|i| ErrorKind::ALL[i]);
    let action = prop_oneof![
        Just(Action::Continue),
        regs().prop_map(Action::SetRegs),
        any::<u64>().prop_map(Action::SetReturn),
    ];
    prop_oneof![
        (any::<u16>(), text())
            .prop_map(|(version, client)| Frame::Hello(Hello { version, client })),
        any::<(u16, u32, u32)>().prop_map(|(version, core_pid, max_frame)| {
            Frame::Welcome(Welcome {
                version,
                core_pid,
                max_frame,
            })
        }),
        (any::<(u16, u16)>(), text()).prop_map(|(supported, message)| {
            Frame::Incompatible(Incompatible { supported, message })
        }),
        (any::<u32>(), op()).prop_map(|(id, op)| Frame::Request(Request { id, op })),
        (any::<u32>(), body()).prop_map(|(id, body)| Frame::Ok { id, body }),
        (any::<u32>(), kind, text()).prop_map(|(id, kind, message)| Frame::Error {
            id,
            kind,
            message
        }),
        vec(event(), 0..4).prop_map(Frame::Events),
        any::<(u32, u64)>().prop_map(|(probe, count)| Frame::Loss { probe, count }),
        notice().prop_map(Frame::Notice),
        (any::<u64>(), action).prop_map(|(seq, action)| Frame::Verdict { seq, action }),
    ]
}

/// Heap bytes a decoded frame holds (capacities, not lengths, so that an
/// over-eager `with_capacity` would show).
fn heap(f: &Frame) -> usize {
    use std::mem::size_of;
    fn s(x: &str) -> usize {
        x.len()
    }
    fn cap<T>(v: &Vec<T>) -> usize {
        v.capacity() * size_of::<T>()
    }
    match f {
        Frame::Hello(h) => s(&h.client),
        Frame::Incompatible(i) => s(&i.message),
        Frame::Request(Request {
            op: Op::Spawn { argv, env, .. },
            ..
        }) => {
            let strings = |v: &Vec<String>| cap(v) + v.iter().map(|a| s(a)).sum::<usize>();
            strings(argv) + env.as_ref().map_or(0, strings)
        }
        Frame::Request(Request {
            op: Op::AddProbe { spec, .. },
            ..
        }) => s(spec),
        Frame::Ok {
            body: Body::Probes(list),
            ..
        } => {
            cap(list)
                + list
                    .iter()
                    .map(|p| s(&p.spec) + cap(&p.placements))
                    .sum::<usize>()
        }
        Frame::Ok {
            body: Body::Stats(st),
            ..
        } => cap(&st.probes),
        Frame::Error { message, .. } => s(message),
        Frame::Events(events) => {
            cap(events)
                + events
                    .iter()
                    .map(|e| {
                        cap(&e.captures)
                            + e.captures
                                .iter()
                                .map(|(n, v)| {
                                    s(n) + match v {
                                        CaptureValue::String { bytes, .. }
                                        | CaptureValue::Bytes(bytes) => bytes.capacity(),
                                        CaptureValue::Error(m) => s(m),
                                        _ => 0,
                                    }
                                })
                                .sum::<usize>()
                    })
                    .sum::<usize>()
        }
        Frame::Notice(n) => match n {
            Notice::Warning { text: t }
            | Notice::Armed { location: t, .. }
            | Notice::Pending { reason: t, .. }
            | Notice::Refused { reason: t, .. }
            | Notice::Gone { reason: t, .. }
            | Notice::Placed { state: t, .. } => s(t),
            Notice::Exited { .. } | Notice::Idle => 0,
        },
        _ => 0,
    }
}

/// What decoding `input` may hold at most: every element of every list
/// takes at least 4 wire bytes and at most 64 bytes in memory beside its
/// own strings, so 16 heap bytes per input byte is a generous bound; the
/// point is that it is linear, not what a count field claims.
fn check_bounded(input: &[u8]) {
    if let Ok(f) = decode(input) {
        let held = heap(&f);
        assert!(
            held <= 16 * input.len(),
            "{held} heap bytes from {} input bytes: {f:?}",
            input.len()
        );
    }
}

/// Frame type bytes, known and not.
fn frame_type_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        prop::sample::select(vec![
            0x01, 0x02, 0x03, 0x10, 0x20, 0x21, 0x30, 0x31, 0x32, 0x40
        ]),
        any::<u8>(),
    ]
}

proptest! {
    #![proptest_config(crate::fuzz_corpus::config(2000))]

    /// Arbitrary bytes, as they come.
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(input in vec(any::<u8>(), 0..600)) {
        check_bounded(&input);
        let mut r = FrameReader::new();
        r.push(&input);
        while let Ok(Some(_)) = r.next_frame() {}
        let _ = read_frame(&mut &input[..]);
    }

    /// Arbitrary payloads behind a correct header, so the payload decoders
    /// see them rather than the length check.
    #[test]
    fn decode_never_panics_on_arbitrary_payloads(
        ty in frame_type_byte(),
        payload in vec(any::<u8>(), 0..600),
    ) {
        let len = (payload.len() + 1) as u32;
        let input = [&len.to_le_bytes()[..], &[ty], &payload].concat();
        check_bounded(&input);
    }

    /// Valid frames damaged: bytes overwritten, the frame cut short (with
    /// the length fixed up, so the payload decoder sees the damage).
    #[test]
    fn decode_never_panics_on_damaged_frames(
        f in frame(),
        hits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        fix_length in any::<bool>(),
    ) {
        let mut input = encode(&f);
        for (at, byte) in hits {
            let i = at.index(input.len());
            input[i] = byte;
        }
        check_bounded(&input);
        let keep = HEADER_LEN + 1 + cut.index(input.len() - HEADER_LEN);
        input.truncate(keep.min(input.len()));
        if fix_length {
            let len = (input.len() - HEADER_LEN) as u32;
            input[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
        }
        check_bounded(&input);
    }
}

proptest! {
    #![proptest_config(crate::fuzz_corpus::config(500))]

    #[test]
    fn decode_inverts_encode(f in frame()) {
        let bytes = encode(&f);
        prop_assert_eq!(
            u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len() - HEADER_LEN
        );
        prop_assert_eq!(decode(&bytes).ok(), Some(f));
    }

    /// A stream of frames cut into arbitrary pieces comes out whole.
    #[test]
    fn reader_yields_the_frames_of_any_chunking(
        frames in vec(frame(), 0..6),
        sizes in vec(1usize..80, 1..20),
    ) {
        let mut stream = vec![];
        for f in &frames {
            encode_into(f, &mut stream);
        }
        let mut r = FrameReader::new();
        let mut got = vec![];
        let mut rest = &stream[..];
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            r.push(chunk);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert!(r.finish().is_ok());
        prop_assert_eq!(got, frames);
    }
}

/// A length field the decoder must refuse before looking further: zero, or
/// above [`MAX_FRAME`] up to `u32::MAX`.
fn bad_length() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), (MAX_FRAME + 1)..=u32::MAX, Just(u32::MAX)]
}

proptest! {
    #![proptest_config(crate::fuzz_corpus::config(1000))]

    /// Every frame type cut short, its length fixed up so the payload
    /// decoder sees the cut, is an error, never a shorter frame; so is a
    /// frame with bytes added at its end.
    #[test]
    fn truncated_or_extended_frames_are_errors(
        f in frame(),
        cut in any::<prop::sample::Index>(),
        extra in vec(any::<u8>(), 1..8),
    ) {
        let whole = encode(&f);
        let payload = whole.len() - HEADER_LEN;
        // Keep the type byte and 0..payload-1 bytes after it.
        let keep = 1 + cut.index(payload);
        if keep < payload {
            let mut cut_short = ((keep as u32).to_le_bytes()).to_vec();
            cut_short.extend_from_slice(&whole[HEADER_LEN..HEADER_LEN + keep]);
            prop_assert!(decode(&cut_short).is_err(), "{f:?} cut to {keep} payload bytes decoded");
        }
        let mut longer = whole.clone();
        longer.extend_from_slice(&extra);
        let len = (longer.len() - HEADER_LEN) as u32;
        longer[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
        prop_assert!(decode(&longer).is_err(), "{f:?} with {extra:02x?} after it decoded");
    }

    /// A length of 0 or above MAX_FRAME is refused by every entry point,
    /// whatever follows it, before anything is allocated for it.
    #[test]
    fn huge_or_zero_lengths_are_refused(len in bad_length(), rest in vec(any::<u8>(), 0..64)) {
        let input = [&len.to_le_bytes()[..], &rest].concat();
        prop_assert!(decode(&input).is_err());
        let mut r = FrameReader::new();
        r.push(&input);
        prop_assert!(r.next_frame().is_err());
        prop_assert!(read_frame(&mut &input[..]).is_err());
    }
}

/// The committed seeds (`tests/fuzz-corpus/proto/`): `ok-*` files are one
/// frame each, which decodes and encodes back to the same bytes; `bad-*`
/// files do not decode. All go through the bounded-memory check and the
/// reader in pieces of every size.
#[test]
fn corpus_replays() {
    for (name, input) in crate::fuzz_corpus::seeds("proto") {
        check_bounded(&input);
        let decoded = decode(&input);
        if name.starts_with("ok-") {
            let f = decoded.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(encode(&f), input, "{name}: does not encode back");
        } else {
            assert!(decoded.is_err(), "{name} decoded: {decoded:?}");
        }
        for size in 1..=input.len().max(1) {
            let mut r = FrameReader::new();
            let mut got = vec![];
            for chunk in input.chunks(size) {
                r.push(chunk);
                match r.next_frame() {
                    Ok(Some(f)) => got.push(f),
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
            if name.starts_with("ok-") {
                assert_eq!(got.len(), 1, "{name} in pieces of {size}");
            }
        }
    }
}

/// Writes the `ok-*` seeds of `tests/fuzz-corpus/proto/` (run by hand with
/// `WPROBE_WRITE_CORPUS=1` after a protocol change; otherwise it only checks
/// that the committed files are what it would write).
#[test]
fn corpus_seeds_are_current() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-corpus/proto");
    let seeds: Vec<(&str, Frame)> = vec![
        (
            "ok-hello.bin",
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                client: "wprobe trace".into(),
            }),
        ),
        (
            "ok-request-add-probe.bin",
            Frame::Request(Request {
                id: 7,
                op: Op::AddProbe {
                    spec: "uprobe:libc:malloc size=%rdi:u64".into(),
                    options: ProbeOptions {
                        mode: Mode::Sync,
                        allow_mutation: true,
                        sync_deadline_us: 1000,
                        no_optimize: false,
                    },
                },
            }),
        ),
        (
            "ok-events.bin",
            Frame::Events(vec![Event {
                seq: 1,
                probe: 2,
                kind: EventKind::Return,
                sync: false,
                pid: 100,
                tid: 101,
                time_ns: 5,
                addr: 0x40_1000,
                regs: RegSet::X86_64([3; X86_64_NREGS]),
                captures: vec![
                    (
                        "s".into(),
                        CaptureValue::String {
                            bytes: b"hi".to_vec(),
                            truncated: true,
                        },
                    ),
                    ("b".into(), CaptureValue::Bytes(vec![0, 255])),
                    ("e".into(), CaptureValue::Error("cannot read 0x0".into())),
                ],
                ret: Some(RetInfo {
                    value: 1,
                    entry_time_ns: 2,
                    entry_args: [1, 2, 3, 4, 5, 6],
                    return_address: 0x40_2000,
                }),
            }]),
        ),
        (
            "ok-notice-exited.bin",
            Frame::Notice(Notice::Exited {
                pid: 9,
                status: ExitStatus::Signal(11),
            }),
        ),
        (
            "ok-verdict.bin",
            Frame::Verdict {
                seq: 3,
                action: Action::SetReturn(u64::MAX),
            },
        ),
    ];
    for (name, f) in seeds {
        let path = dir.join(name);
        let bytes = encode(&f);
        if std::env::var_os("WPROBE_WRITE_CORPUS").is_some() {
            std::fs::write(&path, &bytes).expect("write a seed");
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            committed, bytes,
            "{name} is stale: rerun with WPROBE_WRITE_CORPUS=1"
        );
    }
}
