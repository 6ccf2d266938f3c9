//! Live events: every target's thread publishes its events, as JSON made
//! once, on one bus. Server-Sent Events clients each read the bus at their
//! own pace: a client that falls behind loses the oldest events *it* has
//! not read and is told how many in a `loss` record, while the others and
//! the targets go on (a broadcast channel, not a queue per client that
//! could push back). Recent events are also kept, a bounded number, for
//! `GET /api/events.jsonl`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use utoipa::IntoParams;
use wprobe_core::proto::{Event, EventKind};

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::json;

/// What goes over the bus.
#[derive(Debug)]
pub enum Item {
    /// One hit: its target and probe (the service's ids) and its JSON.
    Hit {
        target: i64,
        probe: i64,
        json: String,
    },
    /// Events that never reached the service: the core's queue for a
    /// target was full.
    Loss {
        target: i64,
        probe: Option<i64>,
        count: u64,
    },
}

/// The bus, the retained events and the counters `/metrics` shows.
pub struct Bus {
    tx: broadcast::Sender<Arc<Item>>,
    recent: Mutex<VecDeque<Arc<Item>>>,
    retain: usize,
    pub published: AtomicU64,
    /// Events the core dropped before the service saw them.
    pub lost_in_core: AtomicU64,
    /// Events SSE clients missed because they read too slowly.
    pub lost_by_clients: AtomicU64,
    pub clients: AtomicUsize,
    pub max_clients: usize,
}

impl Bus {
    /// `buffer`: how many events a client may fall behind before it loses
    /// some; `retain`: how many recent events events.jsonl keeps.
    pub fn new(buffer: usize, retain: usize, max_clients: usize) -> Bus {
        Bus {
            tx: broadcast::channel(buffer.max(1)).0,
            recent: Mutex::new(VecDeque::with_capacity(retain.min(1 << 16))),
            retain,
            published: AtomicU64::new(0),
            lost_in_core: AtomicU64::new(0),
            lost_by_clients: AtomicU64::new(0),
            clients: AtomicUsize::new(0),
            max_clients,
        }
    }

    pub fn publish(&self, item: Item) {
        match &item {
            Item::Hit { .. } => self.published.fetch_add(1, Ordering::Relaxed),
            Item::Loss { count, .. } => self.lost_in_core.fetch_add(*count, Ordering::Relaxed),
        };
        let item = Arc::new(item);
        if self.retain > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == self.retain {
                recent.pop_front();
            }
            recent.push_back(item.clone());
        }
        // No subscriber is not an error.
        let _ = self.tx.send(item);
    }
}

/// Which events a reader wants.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Only this target's events (a target id).
    pub target: Option<i64>,
    /// Only this probe's events (a probe id).
    pub probe: Option<i64>,
    /// events.jsonl: at most this many, the most recent (default: all
    /// retained; at most 2^32 - 1).
    #[param(maximum = 4294967295_u64)]
    pub limit: Option<u32>,
}

impl EventFilter {
    fn wants(&self, item: &Item) -> bool {
        let (t, p) = match item {
            Item::Hit { target, probe, .. } => (*target, Some(*probe)),
            Item::Loss { target, probe, .. } => (*target, *probe),
        };
        self.target.is_none_or(|want| want == t)
            && self.probe.is_none_or(|want| p.is_none_or(|p| p == want))
    }
}

impl Item {
    /// The SSE event type: "hit" or "loss".
    fn kind(&self) -> &'static str {
        match self {
            Item::Hit { .. } => "hit",
            Item::Loss { .. } => "loss",
        }
    }

    /// Its JSON: the event's, or a loss record.
    fn json(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Item::Hit { json, .. } => json.as_str().into(),
            Item::Loss {
                target,
                probe,
                count,
            } => json!({"lost": count, "target": target, "probe": probe,
                "reason": "the core's event queue for this target was full"})
            .to_string()
            .into(),
        }
    }
}

/// Decrements the client count when a stream ends.
struct ClientSlot(Arc<Bus>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Live events as Server-Sent Events: `event: hit` with one event's JSON
/// as data, `event: loss` with `{"lost": N, "reason": ...}` when events
/// were lost (this client read too slowly, or the core's queue was full).
/// Read it with fetch and the bearer header; a comment line every 15 s
/// keeps idle connections open.
#[utoipa::path(get, path = "/api/events", params(EventFilter),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream"),
        (status = 400, description = "Bad filter", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 429, description = "As many streams as --max-sse-clients are open",
            body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    filter: Result<Query<EventFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = filter.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let bus = state.bus.clone();
    let n = bus.clients.fetch_add(1, Ordering::Relaxed);
    let slot = ClientSlot(bus.clone());
    if n >= bus.max_clients {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} event streams are open, the most --max-sse-clients allows: close one \
                 (or read /api/events.jsonl)",
                bus.max_clients
            ),
        ));
    }
    let rx = bus.tx.subscribe();
    Ok(Sse::new(stream(rx, filter, slot))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn stream(
    rx: broadcast::Receiver<Arc<Item>>,
    filter: EventFilter,
    slot: ClientSlot,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold((rx, filter, slot), |(mut rx, filter, slot)| async move {
        loop {
            match rx.recv().await {
                Ok(item) if filter.wants(&item) => {
                    let ev = SseEvent::default().event(item.kind()).data(item.json());
                    return Some((Ok(ev), (rx, filter, slot)));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    slot.0.lost_by_clients.fetch_add(n, Ordering::Relaxed);
                    let data = json!({"lost": n,
                            "reason": "this client read too slowly; the oldest events it had \
                                       not read were dropped"});
                    let ev = SseEvent::default().event("loss").data(data.to_string());
                    return Some((Ok(ev), (rx, filter, slot)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// The most recent events (at most --retain-events of them are kept), one
/// JSON object per line, oldest first; loss records are lines with a
/// `lost` field.
#[utoipa::path(get, path = "/api/events.jsonl", params(EventFilter),
    responses(
        (status = 200, description = "JSON Lines", content_type = "application/jsonl"),
        (status = 400, description = "Bad filter", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn events_jsonl(
    State(state): State<AppState>,
    filter: Result<Query<EventFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = filter.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let items: Vec<Arc<Item>> = {
        let recent = state.bus.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().filter(|i| filter.wants(i)).cloned().collect()
    };
    let skip = filter
        .limit
        .map_or(0, |limit| items.len().saturating_sub(limit as usize));
    let mut body = Vec::new();
    for item in &items[skip..] {
        body.extend_from_slice(item.json().as_bytes());
        body.push(b'\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], body).into_response())
}

/// One event as the service shows it: ids of the service, the full
/// register snapshot, the six arguments, captures, the return view, and
/// the records the probe's plugins emitted for it. Written field by field:
/// a `serde_json::Map` of 27 registers per event was most of the cost.
pub fn event_json(
    target: i64,
    probe: i64,
    spec: &str,
    location: &str,
    e: &Event,
    records: &[Value],
) -> String {
    let kind = match e.kind {
        EventKind::Entry => "entry",
        EventKind::Post => "post",
        EventKind::Return => "return",
    };
    let regs = e.regs.to_x86_64().unwrap_or_default();
    let mut o: Vec<u8> = Vec::with_capacity(768);
    let _ = write!(
        o,
        "{{\"seq\":{},\"target\":{target},\"probe\":{probe},\"kind\":\"{kind}\",\"sync\":{},\
         \"pid\":{},\"tid\":{},\"time_ns\":{},\"address\":{}",
        e.seq, e.sync, e.pid, e.tid, e.time_ns, e.addr
    );
    json::write_place(&mut o, spec, location);
    o.extend_from_slice(b",\"args\":");
    json::write_u64s(&mut o, &regs.args());
    o.extend_from_slice(b",\"regs\":");
    json::write_regs(&mut o, &regs);
    if let Some(r) = &e.ret {
        let _ = write!(
            o,
            ",\"ret\":{{\"value\":{},\"return_address\":{},\"entry_time_ns\":{},\
             \"latency_ns\":{},\"entry_args\":",
            r.value,
            r.return_address,
            r.entry_time_ns,
            e.time_ns.saturating_sub(r.entry_time_ns)
        );
        json::write_u64s(&mut o, &r.entry_args);
        o.extend_from_slice(b"}");
    }
    json::write_captures(&mut o, &e.captures);
    if !records.is_empty() {
        o.extend_from_slice(b",\"records\":");
        let _ = serde_json::to_writer(&mut o, records);
    }
    o.push(b'}');
    String::from_utf8(o).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_retention() {
        let bus = Bus::new(4, 3, 1);
        for p in 1..=4 {
            bus.publish(Item::Hit {
                target: 1,
                probe: p,
                json: format!("{{\"probe\":{p}}}"),
            });
        }
        let recent = bus.recent.lock().expect("lock");
        assert_eq!(recent.len(), 3);
        let f = EventFilter {
            probe: Some(3),
            ..Default::default()
        };
        assert_eq!(recent.iter().filter(|i| f.wants(i)).count(), 1);
        let loss = Item::Loss {
            target: 2,
            probe: None,
            count: 5,
        };
        assert!(
            f.wants(&loss),
            "a loss of unknown probes concerns every probe"
        );
        let t = EventFilter {
            target: Some(1),
            ..Default::default()
        };
        assert!(!t.wants(&loss));
    }
}
