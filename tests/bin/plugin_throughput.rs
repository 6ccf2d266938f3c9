//! How many events per second one core pushes through a plugin on the
//! host's event path: protocol frames decoded (`FrameReader`, as from the
//! core's socket), each event handed to the plugin (`Attachment::handle`).
//!
//! `plugin-throughput PLUGIN.wasm EVENTS` prints one line:
//! `events=N decode_ns=T handle_ns=T per_event_ns=X rate=Y`. The events
//! are copies of one real-looking entry event (27 registers, a string
//! capture), 256 to a frame as the core sends them.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use wprobe_core::proto::{self, CaptureValue, Event, EventKind, Frame, FrameReader, RegSet};
use wprobe_host::plugin::{CallInfo, Limits, Runtime};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, plugin, n] = args.as_slice() else {
        eprintln!("usage: plugin-throughput PLUGIN.wasm EVENTS");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("a number of events");
    let rt = Runtime::new(Limits::default()).expect("runtime");
    let bytes = std::fs::read(plugin).expect("read the plugin");
    let p = rt.load(&bytes, None, plugin).expect("load");
    let a = rt.attach(Arc::new(p), "{}").expect("attach");

    let mut regs = [0u64; 27];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = 0x7fff_0000_0000 + i as u64 * 8;
    }
    let event = |seq: u64| Event {
        seq,
        probe: 1,
        kind: EventKind::Entry,
        sync: false,
        pid: std::process::id() as i32,
        tid: 1000 + (seq % 4) as i32,
        time_ns: seq * 1000,
        addr: 0x401000,
        regs: RegSet::X86_64(regs),
        captures: vec![(
            "name".into(),
            CaptureValue::String {
                bytes: b"overhead".to_vec(),
                truncated: false,
            },
        )],
        ret: None,
    };
    let mut wire = Vec::new();
    let mut seq = 0;
    while seq < n as u64 {
        let batch: Vec<Event> = (0..256.min(n as u64 - seq))
            .map(|i| event(seq + i + 1))
            .collect();
        seq += batch.len() as u64;
        proto::write_frame(&mut wire, &Frame::Events(batch)).expect("encode");
    }

    // Decoding alone, then decoding and handling.
    let decode = |mut each: Box<dyn FnMut(&Event)>| {
        let mut reader = FrameReader::new();
        let mut src = Cursor::new(&wire);
        let t = Instant::now();
        let mut count = 0usize;
        loop {
            match reader.next_frame().expect("decode") {
                Some(Frame::Events(b)) => {
                    for e in &b {
                        each(e);
                    }
                    count += b.len();
                }
                Some(_) => {}
                None => {
                    if reader.read_from(&mut src).expect("read") == 0 {
                        break;
                    }
                }
            }
        }
        (count, t.elapsed().as_nanos() as u64)
    };
    let (count, decode_ns) = decode(Box::new(|_| {}));
    assert_eq!(count, n);
    let (count, total_ns) = decode(Box::new(|e| {
        let out = a.handle(&rt, e, CallInfo::default());
        assert!(out.called && out.fault.is_none(), "{out:?}");
    }));
    assert_eq!(count, n);
    assert_eq!(a.stats().calls, n as u64, "every event reached the plugin");
    let per = total_ns as f64 / n as f64;
    println!(
        "events={n} decode_ns={decode_ns} total_ns={total_ns} per_event_ns={per:.0} rate={:.0}",
        1e9 / per
    );
}
