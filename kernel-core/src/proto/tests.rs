//! Table tests of the codec: exact layouts (the byte tables of
//! docs/core-protocol.md), round trips of every frame and variant, error
//! messages, the handshake helper, and the stream helpers.

use super::*;

/// `n` little-endian u64s, for register blocks in layouts.
fn le64s(vals: &[u64]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn regs_1_to_27() -> [u64; 27] {
    std::array::from_fn(|i| i as u64 + 1)
}

fn sample_event(seq: u64) -> Event {
    Event {
        seq,
        probe: 3,
        kind: EventKind::Return,
        sync: true,
        pid: 100,
        tid: 101,
        time_ns: 5_000_000_000,
        addr: 0x40_1000,
        regs: RegSet::X86_64(regs_1_to_27()),
        captures: vec![
            ("size".into(), CaptureValue::Unsigned(32)),
            ("delta".into(), CaptureValue::Signed(-5)),
            ("ptr".into(), CaptureValue::Hex(0xdead_beef)),
            (
                "name".into(),
                CaptureValue::String {
                    bytes: b"ab\xff".to_vec(),
                    truncated: true,
                },
            ),
            ("raw".into(), CaptureValue::Bytes(vec![0, 1, 2])),
            ("bad".into(), CaptureValue::Error("cannot read 0x0".into())),
        ],
        ret: Some(RetInfo {
            value: 42,
            entry_time_ns: 4_999_999_000,
            entry_args: [1, 2, 3, 4, 5, 6],
            return_address: 0x40_2000,
        }),
    }
}

/// Every frame kind and every variant of every enum inside one.
fn every_frame() -> Vec<Frame> {
    let options = ProbeOptions {
        mode: Mode::Sync,
        allow_mutation: true,
        sync_deadline_us: 250_000,
        no_optimize: false,
    };
    let mut frames = vec![
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: "wprobe trace 0.1.0 ✓".into(),
        }),
        Frame::Welcome(Welcome {
            version: 1,
            core_pid: 4242,
            max_frame: MAX_FRAME,
        }),
        Frame::Incompatible(Incompatible {
            supported: (1, 3),
            message: "upgrade".into(),
        }),
        Frame::Loss {
            probe: 9,
            count: u64::MAX,
        },
        Frame::Events(vec![]),
        Frame::Events(vec![
            sample_event(1),
            Event {
                kind: EventKind::Entry,
                sync: false,
                captures: vec![],
                ret: None,
                ..sample_event(2)
            },
            Event {
                kind: EventKind::Post,
                pid: -1,
                ..sample_event(u64::MAX)
            },
        ]),
        Frame::Verdict {
            seq: 17,
            action: Action::Continue,
        },
        Frame::Verdict {
            seq: 18,
            action: Action::SetRegs(RegSet::X86_64([u64::MAX; 27])),
        },
        Frame::Verdict {
            seq: 19,
            action: Action::SetReturn(0),
        },
    ];
    let ops = [
        Op::Spawn {
            argv: vec!["/bin/true".into(), "".into(), "ü".into()],
            env: None,
            stdio: SpawnStdio::Inherit,
        },
        Op::Spawn {
            argv: vec![],
            env: Some(vec!["A=1".into(), "".into()]),
            stdio: SpawnStdio::Passed,
        },
        Op::Spawn {
            argv: vec!["x".into()],
            env: Some(vec![]),
            stdio: SpawnStdio::Null,
        },
        Op::Attach { pid: 1 },
        Op::Detach { pid: i32::MAX },
        Op::AddProbe {
            spec: "uprobe:libc:malloc size=%rdi:u64".into(),
            options,
        },
        Op::AddProbe {
            spec: String::new(),
            options: ProbeOptions {
                mode: Mode::Async,
                allow_mutation: false,
                sync_deadline_us: 0,
                no_optimize: false,
            },
        },
        Op::EnableProbe { id: 1 },
        Op::DisableProbe { id: 2 },
        Op::RemoveProbe { id: u32::MAX },
        Op::ListProbes,
        Op::Stats,
        Op::Ping,
        Op::Resume { pid: 4242 },
        Op::Configure {
            follow_fork: true,
            follow_exec: false,
            no_optimize: true,
        },
    ];
    frames.extend(ops.into_iter().enumerate().map(|(i, op)| {
        Frame::Request(Request {
            id: i as u32 + 1,
            op,
        })
    }));
    let bodies = [
        Body::Empty,
        Body::Target { pid: 77 },
        Body::Probe { id: 5 },
        Body::Probes(vec![]),
        Body::Probes(vec![
            ProbeInfo {
                id: 1,
                spec: "uretprobe:/bin/x:f".into(),
                options,
                enabled: false,
                hits: 10,
                nmissed: 1,
                dropped: 2,
                placements: vec![],
                owner_uid: 0,
                owner_pid: 1,
            },
            ProbeInfo {
                id: 2,
                spec: "uprobe:libc:free".into(),
                options,
                enabled: true,
                hits: u64::MAX,
                nmissed: 0,
                dropped: 0,
                placements: vec![
                    Placement {
                        pid: 10,
                        addr: 0x7f00_0000_1000,
                        state: "optimized".into(),
                    },
                    Placement {
                        pid: 11,
                        addr: 0,
                        state: "int3: disabled".into(),
                    },
                ],
                owner_uid: 1000,
                owner_pid: -1,
            },
        ]),
        Body::Stats(Stats {
            events_sent: 1000,
            events_dropped: 3,
            queue_len: 12,
            queue_capacity: 65536,
            probes: vec![ProbeCounters {
                id: 1,
                hits: 1003,
                nmissed: 0,
                dropped: 3,
            }],
        }),
    ];
    frames.extend(
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Frame::Ok { id: i as u32, body }),
    );
    frames.extend(ErrorKind::ALL.into_iter().map(|kind| Frame::Error {
        id: kind.code().into(),
        kind,
        message: format!("{kind:?}"),
    }));
    let notices = [
        Notice::Warning {
            text: "careful".into(),
        },
        Notice::Armed {
            probe: 1,
            pid: 2,
            addr: 0x401000,
            location: "main+0x4".into(),
        },
        Notice::Pending {
            probe: 1,
            pid: 2,
            reason: "libfoo not mapped".into(),
        },
        Notice::Refused {
            probe: 1,
            pid: 2,
            reason: "no".into(),
        },
        Notice::Gone {
            probe: 1,
            pid: 2,
            reason: "exec".into(),
        },
        Notice::Exited {
            pid: 2,
            status: ExitStatus::Code(-1),
        },
        Notice::Exited {
            pid: 2,
            status: ExitStatus::Signal(9),
        },
        Notice::Idle,
        Notice::Placed {
            probe: 1,
            pid: 2,
            addr: 0x401000,
            state: "optimized".into(),
        },
    ];
    frames.extend(notices.into_iter().map(Frame::Notice));
    frames
}

/// Round trips: every frame decodes to itself, and the reader yields it
/// from a byte-at-a-time stream.
mod roundtrip {
    use super::*;

    fn check(frame: &Frame) {
        let bytes = encode(frame);
        assert_eq!(
            decode(&bytes).as_ref().ok(),
            Some(frame),
            "{} frame did not round-trip: {bytes:02x?}",
            frame.name()
        );
        let mut r = FrameReader::new();
        let mut out = vec![];
        for b in &bytes {
            r.push(std::slice::from_ref(b));
            if let Some(f) = r.next_frame().expect("valid stream") {
                out.push(f);
            }
        }
        assert_eq!(out, vec![frame.clone()]);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn every_frame_kind() {
        let frames = every_frame();
        let kinds: std::collections::BTreeSet<u8> = frames.iter().map(Frame::frame_type).collect();
        assert_eq!(kinds.len(), 10, "a frame type is missing from the table");
        let from_client: std::collections::BTreeSet<&str> = frames
            .iter()
            .filter(|f| f.sent_by_client())
            .map(Frame::name)
            .collect();
        assert_eq!(Vec::from_iter(from_client), ["Hello", "Request", "Verdict"]);
        for f in &frames {
            check(f);
        }
    }
}

/// Exact bytes: each case is a frame and its encoding, as the tables in
/// docs/core-protocol.md give it.
mod layout {
    use super::*;

    fn check(frame: Frame, expect: &[u8]) {
        let bytes = encode(&frame);
        assert_eq!(bytes, expect, "encoding of {frame:?}");
        assert_eq!(decode(expect).expect("decodes"), frame);
    }

    #[test]
    fn handshake() {
        check(
            Frame::Hello(Hello {
                version: 1,
                client: "cli".into(),
            }),
            &[
                14, 0, 0, 0,    // length 14 (type + payload)
                0x01, // Hello
                b'W', b'P', b'R', b'B', // magic
                1, 0, // version 1
                3, 0, 0, 0, b'c', b'l', b'i', // client "cli"
            ],
        );
        check(
            Frame::Welcome(Welcome {
                version: 1,
                core_pid: 0x1234,
                max_frame: MAX_FRAME,
            }),
            &[
                11, 0, 0, 0,    // length 11
                0x02, // Welcome
                1, 0, // version 1
                0x34, 0x12, 0, 0, // core_pid 0x1234
                0, 0, 0x10, 0, // max_frame 1 MiB
            ],
        );
        check(
            Frame::Incompatible(Incompatible {
                supported: (1, 2),
                message: "no".into(),
            }),
            &[
                11, 0, 0, 0,    // length 11
                0x03, // Incompatible
                1, 0, 2, 0, // supported 1..=2
                2, 0, 0, 0, b'n', b'o', // message "no"
            ],
        );
    }

    #[test]
    fn control() {
        check(
            Frame::Request(Request {
                id: 7,
                op: Op::Attach { pid: 1234 },
            }),
            &[
                10, 0, 0, 0,    // length 10
                0x10, // Request
                7, 0, 0, 0, // id 7
                2, // op Attach
                0xd2, 0x04, 0, 0, // pid 1234
            ],
        );
        check(
            Frame::Request(Request {
                id: 1,
                op: Op::AddProbe {
                    spec: "u:f".into(),
                    options: ProbeOptions {
                        mode: Mode::Sync,
                        allow_mutation: true,
                        sync_deadline_us: 1000,
                        no_optimize: false,
                    },
                },
            }),
            &[
                20, 0, 0, 0,    // length 20
                0x10, // Request
                1, 0, 0, 0, // id 1
                4, // op AddProbe
                3, 0, 0, 0, b'u', b':', b'f', // spec "u:f"
                1,    // mode Sync
                1,    // allow_mutation
                0xe8, 0x03, 0, 0, // sync_deadline_us 1000
                0, // no_optimize
            ],
        );
        check(
            Frame::Request(Request {
                id: 2,
                op: Op::Spawn {
                    argv: vec!["ls".into(), "-l".into()],
                    env: Some(vec!["A=b".into()]),
                    stdio: SpawnStdio::Passed,
                },
            }),
            &[
                35, 0, 0, 0,    // length 35
                0x10, // Request
                2, 0, 0, 0, // id 2
                1, // op Spawn
                2, 0, 0, 0, // argv count 2
                2, 0, 0, 0, b'l', b's', // "ls"
                2, 0, 0, 0, b'-', b'l', // "-l"
                1,    // has env
                1, 0, 0, 0, // env count 1
                3, 0, 0, 0, b'A', b'=', b'b', // "A=b"
                2,    // stdio Passed
            ],
        );
        check(
            Frame::Ok {
                id: 7,
                body: Body::Target { pid: 1234 },
            },
            &[
                10, 0, 0, 0,    // length 10
                0x20, // Ok
                7, 0, 0, 0, // id 7
                1, // body Target
                0xd2, 0x04, 0, 0, // pid 1234
            ],
        );
        check(
            Frame::Ok {
                id: 3,
                body: Body::Probes(vec![ProbeInfo {
                    id: 5,
                    spec: "s".into(),
                    options: ProbeOptions {
                        mode: Mode::Async,
                        allow_mutation: false,
                        sync_deadline_us: 0,
                        no_optimize: false,
                    },
                    enabled: true,
                    hits: 2,
                    nmissed: 1,
                    dropped: 0,
                    placements: vec![Placement {
                        pid: 9,
                        addr: 0x401000,
                        state: "optimized".into(),
                    }],
                    owner_uid: 1000,
                    owner_pid: 77,
                }]),
            },
            &[
                88, 0, 0, 0,    // length 88
                0x20, // Ok
                3, 0, 0, 0, // id 3
                3, // body Probes
                1, 0, 0, 0, // probe count 1
                5, 0, 0, 0, // id 5
                1, 0, 0, 0, b's', // spec "s"
                0, 0, 0, 0, 0, 0, 0, // mode Async, no mutation, deadline 0, may optimize
                1, // enabled
                2, 0, 0, 0, 0, 0, 0, 0, // hits 2
                1, 0, 0, 0, 0, 0, 0, 0, // nmissed 1
                0, 0, 0, 0, 0, 0, 0, 0, // dropped 0
                1, 0, 0, 0, // placement count 1
                9, 0, 0, 0, // pid 9
                0x00, 0x10, 0x40, 0, 0, 0, 0, 0, // addr 0x401000
                9, 0, 0, 0, b'o', b'p', b't', b'i', b'm', b'i', b'z', b'e', b'd', // state
                0xe8, 0x03, 0, 0, // owner uid 1000
                77, 0, 0, 0, // owner pid 77
            ],
        );
        check(
            Frame::Error {
                id: 7,
                kind: ErrorKind::NoProbe,
                message: "no".into(),
            },
            &[
                13, 0, 0, 0,    // length 13
                0x21, // Error
                7, 0, 0, 0, // id 7
                6, 0, // kind NoProbe
                2, 0, 0, 0, b'n', b'o', // message "no"
            ],
        );
    }

    #[test]
    fn stream() {
        check(
            Frame::Loss {
                probe: 2,
                count: 300,
            },
            &[
                13, 0, 0, 0,    // length 13
                0x31, // Loss
                2, 0, 0, 0, // probe 2
                0x2c, 0x01, 0, 0, 0, 0, 0, 0, // count 300
            ],
        );
        check(
            Frame::Notice(Notice::Exited {
                pid: 50,
                status: ExitStatus::Signal(9),
            }),
            &[
                11, 0, 0, 0,    // length 11
                0x32, // Notice
                5,    // Exited
                50, 0, 0, 0, // pid 50
                1, // status Signal
                9, 0, 0, 0, // signal 9
            ],
        );
        check(
            Frame::Verdict {
                seq: 9,
                action: Action::SetReturn(0xffff_ffff_ffff_ffff),
            },
            &[
                18, 0, 0, 0,    // length 18
                0x40, // Verdict
                9, 0, 0, 0, 0, 0, 0, 0, // seq 9
                2, // SetReturn
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // value -1
            ],
        );
        let regs = regs_1_to_27();
        let event = Event {
            seq: 1,
            probe: 2,
            kind: EventKind::Entry,
            sync: false,
            pid: 3,
            tid: 4,
            time_ns: 5,
            addr: 6,
            regs: RegSet::X86_64(regs),
            captures: vec![("n".into(), CaptureValue::Unsigned(7))],
            ret: None,
        };
        let expect = [
            &[
                0x18, 1, 0, 0,    // length 280
                0x30, // Events
                1, 0, 0, 0, // event count 1
                1, 0, 0, 0, 0, 0, 0, 0, // seq 1
                2, 0, 0, 0, // probe 2
                0, // kind Entry
                0, // sync: no
                3, 0, 0, 0, // pid 3
                4, 0, 0, 0, // tid 4
                5, 0, 0, 0, 0, 0, 0, 0, // time_ns 5
                6, 0, 0, 0, 0, 0, 0, 0, // addr 6
                62, 0, // arch x86_64 (EM_X86_64)
            ][..],
            &le64s(&regs), // r15 .. gs
            &[
                1, 0, 0, 0, // capture count 1
                1, 0, 0, 0, b'n', // name "n"
                0,    // Unsigned
                7, 0, 0, 0, 0, 0, 0, 0, // 7
                0, // no ret
            ],
        ]
        .concat();
        check(Frame::Events(vec![event]), &expect);
    }
}

/// Malformed input: each case is bytes and the error's message.
mod errors {
    use super::*;

    fn check(bytes: &[u8], expect: &str) {
        match decode(bytes) {
            Ok(f) => panic!("{bytes:02x?} decoded as {f:?}; expected `{expect}`"),
            Err(e) => assert_eq!(e.to_string(), expect, "for {bytes:02x?}"),
        }
        // The reader gives the same verdict on the same bytes, except that a
        // short frame is not an error there: it waits for more.
        let mut r = FrameReader::new();
        r.push(bytes);
        match r.next_frame() {
            Ok(None) => assert!(expect.starts_with("truncated frame: frame ")),
            Ok(Some(f)) => panic!("reader decoded {f:?}"),
            Err(e) => assert_eq!(e.to_string(), expect),
        }
    }

    /// A frame of type `ty` whose payload is `payload`, length correct.
    fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() + 1) as u32;
        [&len.to_le_bytes()[..], &[ty], payload].concat()
    }

    #[test]
    fn framing() {
        check(&[], "truncated frame: frame length needs 4 bytes, 0 left");
        check(
            &[1, 0],
            "truncated frame: frame length needs 4 bytes, 2 left",
        );
        check(
            &[0, 0, 0, 0],
            "frame length 0: every frame has at least its type byte",
        );
        check(
            &[0x01, 0x00, 0x10, 0x00],
            "frame length 1048577 exceeds the maximum 1048576 \
             (is the peer speaking the wprobe-core protocol?)",
        );
        check(
            b"GET / HTTP/1.1\r\n",
            "frame length 542393671 exceeds the maximum 1048576 \
             (is the peer speaking the wprobe-core protocol?)",
        );
        check(
            &[10, 0, 0, 0, 0x10, 1, 2],
            "truncated frame: frame needs 10 bytes, 3 left",
        );
        check(&[1, 0, 0, 0, 0x7f], "unknown frame type 0x7f");
        check(&[1, 0, 0, 0, 0x00], "unknown frame type 0x00");
        check(
            &frame(0x10, &[1, 0, 0, 0, 10, 0xaa]),
            "unexpected trailing data in a Request frame: 1 byte(s) after its last field",
        );
    }

    #[test]
    fn length_mismatch() {
        // Only `decode` sees this: given a frame and more, the reader
        // would return the frame and keep the rest for the next one.
        let mut bytes = encode(&Frame::Request(Request {
            id: 1,
            op: Op::Ping,
        }));
        bytes.push(0);
        assert_eq!(
            decode(&bytes).map_err(|e| e.to_string()),
            Err("frame length field says 6 bytes but 7 follow it".to_string())
        );
    }

    #[test]
    fn handshake() {
        check(
            &frame(0x01, b"WPRX\x01\x00\x00\x00\x00\x00"),
            "bad magic [57, 50, 52, 58] in Hello: expected \"WPRB\" (is the peer a wprobe client?)",
        );
        check(
            &frame(0x01, b"WPRB\x01\x00\x02\x00\x00\x00\xc3\x28"),
            "Hello client is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 0",
        );
        check(
            &frame(0x01, b"WPRB\x01\x00\x64\x00\x00\x00"),
            "truncated frame: Hello client needs 100 bytes, 0 left",
        );
        check(
            &frame(0x01, b"WPRB\x01"),
            "truncated frame: Hello version needs 2 bytes, 1 left",
        );
        check(
            &frame(0x02, &[1, 0, 0, 0]),
            "truncated frame: Welcome core_pid needs 4 bytes, 2 left",
        );
    }

    #[test]
    fn tags_and_counts() {
        check(&frame(0x10, &[1, 0, 0, 0, 99]), "unknown request op tag 99");
        check(
            &frame(0x10, &[1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]),
            "allow_mutation must be 0 or 1, found 2",
        );
        check(
            &frame(0x10, &[1, 0, 0, 0, 4, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0]),
            "unknown probe mode tag 7",
        );
        check(
            &frame(0x10, &[1, 0, 0, 0, 1, 0xe8, 0x03, 0, 0]),
            "Spawn argv count: count 1000 needs at least 4000 bytes, only 0 left",
        );
        check(
            &frame(0x30, &[0xff, 0xff, 0xff, 0xff]),
            "event count: count 4294967295 needs at least 1120986463995 bytes, only 0 left",
        );
        check(&frame(0x20, &[1, 0, 0, 0, 9]), "unknown reply body tag 9");
        check(
            &frame(0x20, &[1, 0, 0, 0, 3, 2, 0, 0, 0]),
            "probe count: count 2 needs at least 104 bytes, only 0 left",
        );
        check(
            &frame(0x21, &[1, 0, 0, 0, 0xe7, 0x03, 0, 0, 0, 0]),
            "unknown error kind tag 999",
        );
        check(
            &frame(0x21, &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            "unknown error kind tag 0",
        );
        check(&frame(0x32, &[8]), "unknown notice kind tag 8");
        check(
            &frame(0x32, &[5, 1, 0, 0, 0, 2, 0, 0, 0, 0]),
            "unknown exit status tag 2",
        );
        check(
            &frame(0x40, &[1, 0, 0, 0, 0, 0, 0, 0, 3]),
            "unknown verdict action tag 3",
        );
        check(
            &frame(0x40, &[1, 0, 0, 0, 0, 0, 0, 0, 1, 183, 0]),
            "unknown register set arch (ELF e_machine) tag 183",
        );
        check(
            &frame(0x40, &[1, 0, 0, 0, 0, 0, 0, 0, 1, 62, 0, 0]),
            "truncated frame: x86_64 registers needs 216 bytes, 1 left",
        );
    }

    #[test]
    fn inside_events() {
        // One valid event, then its fields spoilt one at a time.
        let good = encode(&Frame::Events(vec![sample_event(1)]));
        let at = |offset: usize, byte: u8| {
            let mut b = good.clone();
            b[offset] = byte;
            b
        };
        // Offsets: header 4, type 1, count 4; then seq 8, probe 4, kind.
        let kind = 9 + 12;
        check(&at(kind, 3), "unknown event kind tag 3");
        check(&at(kind + 1, 2), "event sync must be 0 or 1, found 2");
        // After pid, tid, time_ns, addr: the arch, then 27 registers, then
        // the capture count and the first capture's name ("size").
        let name = kind + 2 + 4 + 4 + 8 + 8 + 2 + 216 + 4;
        check(
            &at(name + 4, 0xff),
            "capture name is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 0",
        );
        check(&at(name + 8, 6), "unknown capture value tag 6");
        // The ret marker, then value, entry time, 6 args, return address.
        let last = good.len() - 1 - 8 * 9;
        check(&at(last, 2), "event ret must be 0 or 1, found 2");
    }

    #[test]
    fn stream_errors() {
        // A peer that stops in the middle of a frame.
        let bytes = encode(&Frame::Request(Request {
            id: 1,
            op: Op::Ping,
        }));
        let mut r = FrameReader::new();
        r.push(&bytes[..7]);
        assert!(matches!(r.next_frame(), Ok(None)));
        assert_eq!(
            r.finish().map_err(|e| e.to_string()),
            Err("connection closed in the middle of a frame (7 of 10 bytes)".to_string())
        );
        assert_eq!(
            read_frame(&mut &bytes[..7]).map_err(|e| e.to_string()),
            Err("connection closed in the middle of a frame (7 of 10 bytes)".to_string())
        );
        assert_eq!(
            read_frame(&mut &bytes[..2]).map_err(|e| e.to_string()),
            Err("connection closed in the middle of a frame (2 of 4 bytes)".to_string())
        );
        // An oversize frame is refused on its header, before any body.
        let mut r = FrameReader::new();
        r.push(&[0, 0, 0, 0x80]);
        let e = r.next_frame().map_err(|e| e.to_string());
        assert_eq!(
            e,
            Err("frame length 2147483648 exceeds the maximum 1048576 \
                 (is the peer speaking the wprobe-core protocol?)"
                .to_string())
        );
        assert_eq!(r.next_frame().map_err(|e| e.to_string()), e, "sticky");
        assert!(read_frame(&mut &[0u8, 0, 0, 0x80][..]).is_err());
        // Writing a frame over the limit is refused and writes nothing.
        let huge = Frame::Error {
            id: 1,
            kind: ErrorKind::Internal,
            message: "x".repeat(MAX_FRAME as usize),
        };
        let mut out = vec![];
        assert_eq!(
            write_frame(&mut out, &huge).map_err(|e| e.to_string()),
            Err("frame length 1048587 exceeds the maximum 1048576 \
                 (is the peer speaking the wprobe-core protocol?)"
                .to_string())
        );
        assert!(out.is_empty());
    }
}

/// The handshake helper: each case is the client's version, the range the
/// core serves, and the outcome.
mod negotiate {
    use super::*;

    fn check(version: u16, min: u16, max: u16, expect: Result<u16, &str>) {
        let hello = Hello {
            version,
            client: "wprobe trace 0.1.0".into(),
        };
        let got = super::super::negotiate(&hello, min, max);
        match (got, expect) {
            (Ok(v), Ok(e)) => assert_eq!(v, e),
            (Err(i), Err(e)) => {
                assert_eq!(i.supported, (min, max));
                assert_eq!(i.message, e);
            }
            (got, expect) => panic!("{got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn versions() {
        check(1, 1, 1, Ok(1));
        check(2, 1, 3, Ok(2));
        check(
            2,
            1,
            1,
            Err(
                "client `wprobe trace 0.1.0` speaks wprobe-core protocol version 2; \
                 this wprobe-core serves version 1: \
                 upgrade wprobe-core, or use a client of the same release",
            ),
        );
        check(
            1,
            2,
            4,
            Err(
                "client `wprobe trace 0.1.0` speaks wprobe-core protocol version 1; \
                 this wprobe-core serves versions 2..=4: \
                 upgrade the client, or use a wprobe-core of the same release",
            ),
        );
    }
}

/// The stream helpers on valid input.
mod streams {
    use super::*;

    fn check(frames: &[Frame]) {
        let mut bytes = vec![];
        for f in frames {
            write_frame(&mut bytes, f).expect("fits");
        }
        // Blocking reads.
        let mut src = &bytes[..];
        let mut got = vec![];
        while let Some(f) = read_frame(&mut src).expect("valid") {
            got.push(f);
        }
        assert_eq!(got, frames);
        // Incremental reads, through `read_from` with 5-byte reads.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(5).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut src = Trickle(&bytes);
        let mut r = FrameReader::new();
        let mut got = vec![];
        while r.read_from(&mut src).expect("reads") > 0 {
            while let Some(f) = r.next_frame().expect("valid") {
                got.push(f);
            }
        }
        r.finish().expect("ends between frames");
        assert_eq!(got, frames);
    }

    #[test]
    fn read_and_write() {
        check(&[]);
        check(&every_frame());
    }

    #[test]
    fn a_bad_frame_is_skipped_by_the_reader() {
        let ping = encode(&Frame::Request(Request {
            id: 1,
            op: Op::Ping,
        }));
        let mut r = FrameReader::new();
        r.push(&[2, 0, 0, 0, 0x10, 0]);
        r.push(&ping);
        assert_eq!(
            r.next_frame().map_err(|e| e.to_string()),
            Err("truncated frame: request id needs 4 bytes, 1 left".to_string())
        );
        assert!(matches!(r.next_frame(), Ok(Some(Frame::Request(_)))));
        assert!(matches!(r.next_frame(), Ok(None)));
    }

    #[test]
    fn event_batches_stay_under_the_limit() {
        let big = |seq| Event {
            captures: vec![("b".into(), CaptureValue::Bytes(vec![7; 300_000]))],
            ..sample_event(seq)
        };
        let mut batch = EventBatch::new();
        let mut frames = vec![];
        for seq in 0..7 {
            if !batch.push(&big(seq)) {
                frames.push(batch.finish());
                assert!(batch.push(&big(seq)), "fits in an empty batch");
            }
        }
        frames.push(batch.finish());
        assert!(batch.is_empty());
        let counts: Vec<usize> = frames
            .iter()
            .map(|f| {
                assert!(f.len() - HEADER_LEN <= MAX_FRAME as usize);
                match decode(f).expect("valid") {
                    Frame::Events(ev) => ev.len(),
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(counts, [3, 3, 1]);
        // An event too large for any frame is refused even when alone.
        let huge = Event {
            captures: vec![("b".into(), CaptureValue::Bytes(vec![0; MAX_FRAME as usize]))],
            ..sample_event(0)
        };
        assert!(!batch.push(&huge));
        assert!(batch.is_empty());
        assert_eq!(decode(&batch.finish()).ok(), Some(Frame::Events(vec![])));
        // A batch's bytes are exactly `encode` of the same frame.
        let events = vec![sample_event(1), sample_event(2)];
        for e in &events {
            assert!(batch.push(e));
        }
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.finish(), encode(&Frame::Events(events)));
    }

    #[test]
    fn register_sets_mirror_the_engine() {
        use crate::arch::x86_64::Regs;
        let regs = Regs {
            r15: 1,
            rax: 11,
            rip: 17,
            gs: 27,
            ..Regs::default()
        };
        let set = RegSet::from(&regs);
        let RegSet::X86_64(v) = set;
        assert_eq!((v[0], v[10], v[16], v[26]), (1, 11, 17, 27));
        assert_eq!(set.to_x86_64(), Some(regs));
        assert_eq!(set.arch(), 62);
    }
}

/// The byte strings in docs/core-protocol.md's worked session decode, and
/// encode back to the same bytes, each as the frame its caption names.
mod document {
    use super::*;

    fn check(caption: &str, hex: &str) {
        let bytes: Vec<u8> = hex
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
            .collect();
        let frame = decode(&bytes).unwrap_or_else(|e| panic!("`{caption}`: {e}"));
        let name = caption.split_whitespace().nth(3).expect("a frame name");
        assert_eq!(
            frame.name(),
            name.trim_end_matches([',', ':']),
            "`{caption}`"
        );
        assert_eq!(encode(&frame), bytes, "`{caption}`");
    }

    #[test]
    fn session_example() {
        let doc = include_str!("../../../docs/core-protocol.md");
        let session = doc
            .split("## A session, byte by byte")
            .nth(1)
            .expect("the session section");
        let block = session.split("```").nth(1).expect("its code block");
        let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 18, "captions and byte lines in pairs");
        for pair in lines.chunks(2) {
            check(pair[0], pair[1]);
        }
    }
}
