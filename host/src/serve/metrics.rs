//! `GET /metrics` (Prometheus text format) and `GET /api/aggregations`
//! (the plugins' maps as JSON): what the probes and their plugins counted.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::targets::Attached;
use super::AppState;

/// `GET /api/aggregations?probe=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AggregationQuery {
    /// Only this probe's plugins.
    pub probe: Option<i64>,
}

/// The maps of one plugin on one probe.
#[derive(Debug, Serialize, ToSchema)]
pub struct Aggregation {
    pub probe: i64,
    pub target: i64,
    pub plugin: i64,
    pub name: String,
    pub version: i64,
    /// `{map: {"kind": "count"|"sum"|"min"|"max"|"avg"|"hist"|"lhist",
    /// "values": [{"key", "value"}]}}`; a histogram's value is its
    /// buckets, `[{"low", "high", "count"}]` (values in [low, high)).
    #[schema(value_type = Object)]
    pub maps: serde_json::Value,
    /// Handler calls, faults and CPU time, as for the probe.
    pub calls: u64,
    pub faults: u64,
    pub busy_ns: u64,
}

/// Every attachment, by probe id then place.
fn attachments(state: &AppState) -> Vec<(i64, i64, Arc<Attached>)> {
    let live = state
        .targets
        .probes
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<(i64, i64, Arc<Attached>)> = live
        .iter()
        .flat_map(|(&id, p)| p.plugins.iter().map(move |a| (id, p.target, a.clone())))
        .collect();
    out.sort_by_key(|(id, _, a)| (*id, a.plugin));
    out
}

/// The counters and histograms of every plugin attached to a probe.
#[utoipa::path(get, path = "/api/aggregations", params(AggregationQuery),
    responses(
        (status = 200, description = "By probe", body = Vec<Aggregation>),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn aggregations(
    State(state): State<AppState>,
    query: Result<Query<AggregationQuery>, QueryRejection>,
) -> Result<Json<Vec<Aggregation>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let list = attachments(&state)
        .into_iter()
        .filter(|(id, ..)| q.probe.is_none_or(|p| p == *id))
        .map(|(probe, target, a)| {
            let s = a.att.stats();
            Aggregation {
                probe,
                target,
                plugin: a.plugin,
                name: a.name.clone(),
                version: a.version.load(Ordering::Relaxed),
                maps: a.att.maps_json(),
                calls: s.calls,
                faults: s.faults,
                busy_ns: s.busy_ns,
            }
        })
        .collect();
    Ok(Json(list))
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text: per probe hits, nmissed and dropped; per plugin on a
/// probe its calls, faults, CPU time and quarantine; the event bus; and
/// every plugin histogram as a Prometheus histogram (`le` is the bucket's
/// inclusive upper bound: values are integers, a bucket `[lo, hi)` is
/// `le = hi - 1`).
#[utoipa::path(get, path = "/metrics",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4",
            content_type = "text/plain"),
        (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = tokio::task::spawn_blocking(move || render(&state))
        .await
        .map_err(|e| ApiError::internal(format!("{e}")))??;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn render(state: &AppState) -> Result<String, ApiError> {
    state.targets.refresh_counters();
    let rows = state.store().probes(None)?;
    let mut out = String::new();
    {
        let live = state
            .targets
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let probe_labels = |id: i64, target: i64, spec: &str| {
            format!("probe=\"{id}\",target=\"{target}\",spec=\"{}\"", esc(spec))
        };
        type Field = fn(&super::targets::ProbeLive) -> u64;
        let counters: [(&str, &str, Field); 3] = [
            ("wprobe_probe_hits_total", "Hits of the probe.", |l| l.hits),
            (
                "wprobe_probe_nmissed_total",
                "Hits whose handlers could not run (kprobes' nmissed).",
                |l| l.nmissed,
            ),
            (
                "wprobe_probe_dropped_total",
                "Events of the probe dropped because the core's queue was full.",
                |l| l.dropped,
            ),
        ];
        for (name, help, field) in counters {
            family(&mut out, name, "counter", help);
            for r in &rows {
                let v = live.get(&r.id).map_or(0, field);
                let _ = writeln!(
                    out,
                    "{name}{{{}}} {v}",
                    probe_labels(r.id, r.target, &r.spec)
                );
            }
        }
    }
    let atts = attachments(state);
    let plugin_labels = |probe: i64, a: &Attached| {
        format!(
            "probe=\"{probe}\",plugin=\"{}\",name=\"{}\"",
            a.plugin,
            esc(&a.name)
        )
    };
    type Stat = fn(&crate::plugin::Stats) -> String;
    let stats: [(&str, &str, &str, Stat); 5] = [
        (
            "wprobe_plugin_calls_total",
            "counter",
            "Handler calls.",
            |s| s.calls.to_string(),
        ),
        (
            "wprobe_plugin_faults_total",
            "counter",
            "Handler calls that trapped, ran over their deadline or were refused.",
            |s| s.faults.to_string(),
        ),
        (
            "wprobe_plugin_cpu_seconds_total",
            "counter",
            "CPU time spent in the plugin's handlers.",
            |s| format!("{}", s.busy_ns as f64 / 1e9),
        ),
        (
            "wprobe_plugin_quarantined",
            "gauge",
            "1 when the plugin is quarantined (not called any more).",
            |s| u8::from(s.quarantined.is_some()).to_string(),
        ),
        (
            "wprobe_plugin_map_updates_refused_total",
            "counter",
            "Map updates refused because the plugin's maps held as many keys as they may.",
            |s| s.map_updates_refused.to_string(),
        ),
    ];
    let all_stats: Vec<crate::plugin::Stats> = atts.iter().map(|(_, _, a)| a.att.stats()).collect();
    for (name, kind, help, f) in stats {
        family(&mut out, name, kind, help);
        for ((probe, _, a), s) in atts.iter().zip(&all_stats) {
            let _ = writeln!(out, "{name}{{{}}} {}", plugin_labels(*probe, a), f(s));
        }
    }
    let bus = &state.bus;
    for (name, kind, help, v) in [
        (
            "wprobe_events_total",
            "counter",
            "Events the service received from the core.",
            bus.published.load(Ordering::Relaxed) as usize,
        ),
        (
            "wprobe_events_dropped_total",
            "counter",
            "Events the core dropped because a target's queue was full.",
            bus.lost_in_core.load(Ordering::Relaxed) as usize,
        ),
        (
            "wprobe_sse_lost_total",
            "counter",
            "Events that event-stream clients missed by reading too slowly.",
            bus.lost_by_clients.load(Ordering::Relaxed) as usize,
        ),
        (
            "wprobe_sse_clients",
            "gauge",
            "Open event streams.",
            bus.clients.load(Ordering::Relaxed),
        ),
    ] {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(
        &mut out,
        "wprobe_plugin_histogram",
        "histogram",
        "The plugins' hist and lhist maps, by probe, plugin, map and key.",
    );
    for (probe, _, a) in &atts {
        for h in a.att.histograms() {
            let labels = format!(
                "{},map=\"{}\",key=\"{}\"",
                plugin_labels(*probe, a),
                esc(&h.map),
                esc(h.key.as_deref().unwrap_or(""))
            );
            let mut cumulative = 0;
            for (_, hi, n) in &h.buckets {
                cumulative += n;
                if *hi == i64::MAX {
                    continue; // only +Inf holds it
                }
                let _ = writeln!(
                    out,
                    "wprobe_plugin_histogram_bucket{{{labels},le=\"{}\"}} {cumulative}",
                    hi - 1
                );
            }
            let _ = writeln!(
                out,
                "wprobe_plugin_histogram_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "wprobe_plugin_histogram_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "wprobe_plugin_histogram_count{{{labels}}} {}", h.count);
        }
    }
    Ok(out)
}
