//! A minimal wprobe-core client for the tests, as a process of its own so
//! that a test can kill it: `core-client SOCKET PID SPEC...` attaches to
//! PID, adds the probes, prints "ready" once events flow, then keeps
//! reading until it is killed or the core goes.

use std::io::Write;
use std::os::unix::net::UnixStream;

use wprobe_core::proto::{self, Frame, Hello, Mode, Op, ProbeOptions, Request, PROTOCOL_VERSION};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, pid, specs @ ..] = args.as_slice() else {
        eprintln!("usage: core-client SOCKET PID SPEC...");
        std::process::exit(2);
    };
    let pid: i32 = pid.parse().expect("a pid");
    let mut conn = UnixStream::connect(socket).expect("connect to the core");
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: "core-client".into(),
    });
    proto::write_frame(&mut conn, &hello).expect("Hello");
    let mut ops = vec![Op::Attach { pid }];
    ops.extend(specs.iter().map(|s| Op::AddProbe {
        spec: s.clone(),
        options: ProbeOptions {
            mode: Mode::Async,
            allow_mutation: false,
            sync_deadline_us: 0,
        },
    }));
    for (i, op) in ops.into_iter().enumerate() {
        let r = Frame::Request(Request {
            id: i as u32 + 1,
            op,
        });
        proto::write_frame(&mut conn, &r).expect("Request");
    }
    let mut events = 0usize;
    let mut said = false;
    while let Ok(Some(f)) = proto::read_frame(&mut conn) {
        match f {
            Frame::Events(b) => events += b.len(),
            Frame::Error { message, .. } => {
                eprintln!("core-client: {message}");
                std::process::exit(1);
            }
            _ => {}
        }
        if events >= 100 && !said {
            println!("ready");
            std::io::stdout().flush().expect("stdout");
            said = true;
        }
    }
}
