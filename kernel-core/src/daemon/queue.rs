//! A connection's outgoing side: the bounded event queue and the writer
//! that serves control frames first.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::proto::{self, Event, Frame, Notice};

/// Events per `Events` frame at most.
const BATCH: usize = 256;

/// What waits in the event queue, in the order it happened.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every item is an event; boxing them would cost an allocation per hit"
)]
pub(super) enum Item {
    Event(Event),
    Notice(Notice),
}

struct State {
    items: VecDeque<Item>,
    /// How many of `items` are events: only they count against the bound.
    events: usize,
    closed: bool,
    /// A control frame waits in the writer's channel: do not sleep.
    poked: bool,
}

/// The bounded event queue of one connection. Events beyond `capacity` are
/// refused (the caller counts them as dropped); notices always go in.
pub(super) struct EventQueue {
    state: Mutex<State>,
    /// Signalled when something was queued, or the queue closed.
    filled: Condvar,
    /// Signalled when the writer took something (room for a sync event).
    drained: Condvar,
    pub capacity: usize,
}

impl EventQueue {
    pub fn new(capacity: usize) -> Self {
        EventQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                events: 0,
                poked: false,
                closed: false,
            }),
            filled: Condvar::new(),
            drained: Condvar::new(),
            capacity,
        }
    }

    /// Queues an event unless the queue is full; whether it was queued.
    pub fn push_event(&self, e: Event) -> bool {
        let mut s = self.state.lock().expect("queue");
        if s.events >= self.capacity {
            return false;
        }
        s.events += 1;
        s.items.push_back(Item::Event(e));
        self.filled.notify_one();
        true
    }

    /// Queues an event, waiting for room until `deadline` (sync events).
    pub fn push_event_until(&self, e: Event, deadline: Instant) -> bool {
        let mut s = self.state.lock().expect("queue");
        while s.events >= self.capacity && !s.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .drained
                .wait_timeout(s, deadline - now)
                .expect("queue")
                .0;
        }
        if s.closed {
            return false;
        }
        s.events += 1;
        s.items.push_back(Item::Event(e));
        self.filled.notify_one();
        true
    }

    pub fn push_notice(&self, n: Notice) {
        let mut s = self.state.lock().expect("queue");
        s.items.push_back(Item::Notice(n));
        self.filled.notify_one();
    }

    /// Events waiting now.
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue").events
    }

    /// No more items will come: the writer sends what is left and ends.
    pub fn close(&self) {
        let mut s = self.state.lock().expect("queue");
        s.closed = true;
        self.filled.notify_all();
        self.drained.notify_all();
    }

    /// The next frame's worth: up to BATCH consecutive events, or one
    /// notice; waits up to `wait`. `None` when closed and empty.
    fn take(&self, wait: Duration) -> Option<Vec<Item>> {
        let mut s = self.state.lock().expect("queue");
        if s.items.is_empty() && !s.closed && !s.poked {
            s = self.filled.wait_timeout(s, wait).expect("queue").0;
        }
        s.poked = false;
        if s.items.is_empty() {
            return if s.closed { None } else { Some(Vec::new()) };
        }
        let mut out = Vec::new();
        while out.len() < BATCH {
            match s.items.front() {
                Some(Item::Event(_)) => {}
                Some(Item::Notice(_)) if out.is_empty() => {
                    out.push(s.items.pop_front().expect("front"));
                    break;
                }
                _ => break,
            }
            out.push(s.items.pop_front().expect("front"));
            s.events -= 1;
        }
        self.drained.notify_all();
        Some(out)
    }
}

/// Counters shared by the sink, the writer and the request handlers.
#[derive(Default)]
pub(super) struct Counters {
    pub sent: AtomicU64,
    /// Per probe: events dropped in all, and not yet said in a Loss frame.
    dropped: Mutex<HashMap<u32, (u64, u64)>>,
    /// Per probe: sync hits whose verdict did not come in time.
    sync_missed: Mutex<HashMap<u32, u64>>,
}

impl Counters {
    pub fn drop_event(&self, probe: u32) {
        let mut d = self.dropped.lock().expect("counters");
        let n = d.entry(probe).or_default();
        n.0 += 1;
        n.1 += 1;
    }

    pub fn dropped_of(&self, probe: u32) -> u64 {
        self.dropped
            .lock()
            .expect("counters")
            .get(&probe)
            .map_or(0, |d| d.0)
    }

    pub fn miss_sync(&self, probe: u32) {
        *self
            .sync_missed
            .lock()
            .expect("counters")
            .entry(probe)
            .or_default() += 1;
    }

    pub fn sync_missed_of(&self, probe: u32) -> u64 {
        self.sync_missed
            .lock()
            .expect("counters")
            .get(&probe)
            .copied()
            .unwrap_or(0)
    }

    /// Losses not yet reported, now reported.
    fn take_unreported(&self) -> Vec<(u32, u64)> {
        let mut d = self.dropped.lock().expect("counters");
        let mut v: Vec<(u32, u64)> = d
            .iter_mut()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(&p, (_, n))| (p, std::mem::take(n)))
            .collect();
        v.sort_unstable();
        v
    }
}

impl EventQueue {
    /// Wakes the writer for a control frame. The flag is set under the
    /// lock, so a poke between the writer's look at its channel and its
    /// wait is not lost: replies go out at once, not after the wait.
    fn poke(&self) {
        self.state.lock().expect("queue").poked = true;
        self.filled.notify_all();
    }
}

/// The writer's channel for control frames; each send wakes the writer.
#[derive(Clone)]
pub(super) struct Outbox {
    tx: mpsc::Sender<Out>,
    queue: std::sync::Arc<EventQueue>,
}

impl Outbox {
    pub fn new(tx: mpsc::Sender<Out>, queue: std::sync::Arc<EventQueue>) -> Outbox {
        Outbox { tx, queue }
    }

    pub fn send(&self, out: Out) -> Result<(), mpsc::SendError<Out>> {
        let r = self.tx.send(out);
        self.queue.poke();
        r
    }
}

/// What goes to the writer besides the event queue: control frames.
pub(super) enum Out {
    Frame(Box<Frame>),
    /// Send what is queued, then end.
    Close,
}

/// Writes control frames first, then the event queue, a frame at a time,
/// with the losses counted meanwhile after each batch. Returns when the
/// queue is closed and written, or at the first write that fails (the
/// caller then ends the connection).
pub(super) fn write_frames(
    mut stream: UnixStream,
    out: Receiver<Out>,
    queue: &EventQueue,
    counters: &Counters,
) {
    let mut closing = false;
    loop {
        loop {
            match out.try_recv() {
                Ok(Out::Frame(f)) => {
                    if write_reply(&mut stream, *f).is_err() {
                        return;
                    }
                }
                Ok(Out::Close) | Err(mpsc::TryRecvError::Disconnected) => {
                    if !closing {
                        closing = true;
                        queue.close();
                    }
                    break;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        let Some(items) = queue.take(Duration::from_millis(5)) else {
            let _ = write_losses(&mut stream, counters);
            let _ = stream.flush();
            return;
        };
        let written = match items.first() {
            None => Ok(()),
            Some(Item::Notice(_)) => match items.into_iter().next() {
                Some(Item::Notice(n)) => write_reply(&mut stream, Frame::Notice(n)),
                _ => Ok(()),
            },
            Some(Item::Event(_)) => write_events(&mut stream, items, counters),
        };
        if written.is_err() || write_losses(&mut stream, counters).is_err() {
            return;
        }
    }
}

/// Messages longer than this are cut (an error may quote a spec of any
/// length the client sent).
const MAX_MESSAGE: usize = 4096;

/// The first `max` bytes of `s` (at a character boundary), saying how much
/// was left out.
fn cut(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes cut)", &s[..end], s.len() - end)
}

/// Writes a control frame or notice; every frame the core sends but
/// events passes here, so the bounds are kept here. A message is cut to
/// [`MAX_MESSAGE`]; a reply that would still be larger than a frame may be
/// (a list of many probes with long specs) is not sent as it is — that
/// would leave the client waiting — but as an `Error` of kind `Limit` to
/// the same request.
fn write_reply(stream: &mut UnixStream, f: Frame) -> Result<(), proto::ProtoError> {
    let f = match f {
        Frame::Error { id, kind, message } => Frame::Error {
            id,
            kind,
            message: cut(message, MAX_MESSAGE),
        },
        Frame::Notice(Notice::Warning { text }) => Frame::Notice(Notice::Warning {
            text: cut(text, MAX_MESSAGE),
        }),
        f => f,
    };
    match (proto::write_frame(stream, &f), f) {
        (Err(proto::ProtoError::Oversize { len, max }), Frame::Ok { id, .. }) => {
            let limit = Frame::Error {
                id,
                kind: proto::ErrorKind::Limit,
                message: format!(
                    "the reply to request {id} would be {len} bytes, above the protocol's \
                     frame limit of {max}; ask for less (fewer or shorter probe specs)"
                ),
            };
            proto::write_frame(stream, &limit)
        }
        (r, _) => r,
    }
}

/// Writes a batch of events in as many `Events` frames as keep each under
/// the frame limit. An event too large to fit a frame alone is dropped and
/// counted as a loss of its probe.
fn write_events(
    stream: &mut UnixStream,
    items: Vec<Item>,
    counters: &Counters,
) -> Result<(), proto::ProtoError> {
    let mut batch = proto::EventBatch::new();
    for item in items {
        let Item::Event(e) = item else { continue };
        if batch.push(&e) {
            continue;
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            stream.write_all(&batch.finish())?;
            counters.sent.fetch_add(n, Ordering::Relaxed);
            if batch.push(&e) {
                continue;
            }
        }
        counters.drop_event(e.probe);
    }
    if !batch.is_empty() {
        let n = batch.len() as u64;
        stream.write_all(&batch.finish())?;
        counters.sent.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

fn write_losses(stream: &mut UnixStream, counters: &Counters) -> Result<(), proto::ProtoError> {
    for (probe, count) in counters.take_unreported() {
        proto::write_frame(stream, &Frame::Loss { probe, count })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Body, Mode, ProbeInfo, ProbeOptions};

    /// A reply larger than a frame goes out as a `Limit` error to the same
    /// request, and the connection goes on: the next reply arrives.
    #[test]
    fn a_reply_larger_than_a_frame_is_a_limit_error_and_the_stream_goes_on() {
        let (mut core, mut client) = UnixStream::pair().unwrap();
        let probe = |id| ProbeInfo {
            id,
            spec: "x".repeat(600_000),
            options: ProbeOptions {
                mode: Mode::Async,
                allow_mutation: false,
                sync_deadline_us: 0,
                no_optimize: false,
            },
            enabled: true,
            hits: 0,
            nmissed: 0,
            dropped: 0,
            placements: Vec::new(),
            owner_uid: 0,
            owner_pid: 1,
        };
        let big = Frame::Ok {
            id: 7,
            body: Body::Probes(vec![probe(1), probe(2)]),
        };
        let writer = std::thread::spawn(move || {
            write_reply(&mut core, big).unwrap();
            write_reply(
                &mut core,
                Frame::Ok {
                    id: 8,
                    body: Body::Empty,
                },
            )
            .unwrap();
        });
        match proto::read_frame(&mut client).unwrap() {
            Some(Frame::Error { id, kind, message }) => {
                assert_eq!((id, kind), (7, proto::ErrorKind::Limit));
                assert!(message.contains("frame limit"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            proto::read_frame(&mut client).unwrap(),
            Some(Frame::Ok {
                id: 8,
                body: Body::Empty
            })
        ));
        writer.join().unwrap();
    }
}
