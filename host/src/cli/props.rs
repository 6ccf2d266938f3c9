//! Property tests of what the CLI parses from the service: the event
//! stream (`SseParser`), the stream's JSON events (`event_line`) and
//! error answers (`status_error`). None panics on arbitrary input; a
//! stream written by the rules comes back as the events written.

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::{event_line, status_error, EventLine, SseEvent, SseParser};
use crate::props::{config, seeds};

/// One event as a server may write it: its type line (or none), its data
/// lines, comments and unknown fields among them, `\n` or `\r\n` endings.
#[derive(Debug, Clone)]
struct Written {
    event: Option<String>,
    data: Vec<String>,
    noise: Vec<(usize, String)>,
    crlf: bool,
}

/// Text without line breaks (which would end the line).
fn line_text() -> impl Strategy<Value = String> {
    "[^\r\n]{0,12}"
}

fn written() -> impl Strategy<Value = Written> {
    let noise = prop_oneof![
        line_text().prop_map(|c| format!(":{c}")),
        line_text().prop_map(|v| format!("id: {v}")),
        Just("retry: 1000".to_string()),
        "[a-z]{1,5}".prop_map(|f| format!("{f}: x")),
    ];
    (
        proptest::option::of(line_text()),
        vec(line_text(), 1..4),
        vec((0usize..4, noise), 0..3),
        any::<bool>(),
    )
        .prop_map(|(event, data, noise, crlf)| Written {
            event,
            data,
            noise,
            crlf,
        })
}

impl Written {
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![];
        if let Some(e) = &self.event {
            lines.push(format!("event: {e}"));
        }
        for d in &self.data {
            lines.push(format!("data: {d}"));
        }
        for (at, n) in &self.noise {
            lines.insert((*at).min(lines.len()), n.clone());
        }
        lines.push(String::new());
        let end = if self.crlf { "\r\n" } else { "\n" };
        lines.into_iter().map(|l| l + end).collect()
    }

    /// What the standard says a client dispatches: the type, or `message`
    /// when none or an empty one was given; the data lines joined.
    fn expected(&self) -> SseEvent {
        SseEvent {
            event: match self.event.as_deref() {
                None | Some("") => "message".to_string(),
                Some(e) => e.to_string(),
            },
            data: self.data.join("\n"),
        }
    }
}

/// `event_line` and `status_error` on one input: never a panic, and what
/// they promise.
fn check_json(event: &str, data: &str, status: u16) {
    let line = event_line(&SseEvent {
        event: event.to_string(),
        data: data.to_string(),
    });
    match (&line, serde_json::from_str::<Value>(data)) {
        (EventLine::Out(out), Ok(v)) => {
            // One JSON line, the same value.
            assert!(!out.contains('\n'), "{out}");
            assert_eq!(serde_json::from_str::<Value>(out).ok(), Some(v));
        }
        (EventLine::Out(out), Err(_)) => assert!(!out.contains('\n'), "{out}"),
        _ => {}
    }
    let message = status_error(status, Some("Reason"), data);
    assert!(
        message.contains(&format!("(HTTP {status} Reason)")),
        "{message}"
    );
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn sse_parser_never_panics(lines in vec(any::<String>(), 0..12)) {
        let mut p = SseParser::default();
        for l in &lines {
            let _ = p.line(l);
        }
    }

    #[test]
    fn sse_stream_yields_the_events_written(events in vec(written(), 0..5)) {
        let mut p = SseParser::default();
        let mut got = vec![];
        for e in &events {
            for l in e.lines() {
                got.extend(p.line(&l));
            }
        }
        let expected: Vec<SseEvent> = events.iter().map(Written::expected).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn json_parsers_never_panic(
        event in prop::sample::select(vec!["hit", "message", "loss", "error", "other"]),
        data in any::<String>(),
        status in 100u16..600,
    ) {
        check_json(event, &data, status);
    }

    /// JSON shaped like the service's answers, with fields of every type.
    #[test]
    fn json_parsers_take_any_field_types(
        event in prop::sample::select(vec!["hit", "loss", "error"]),
        lost in prop_oneof![Just(json!(3)), Just(json!("3")), Just(json!(null)), Just(json!([1])), Just(json!(-1.5))],
        text in prop_oneof![any::<String>().prop_map(Value::String), Just(json!(7)), Just(json!({"a": 1}))],
        status in 100u16..600,
    ) {
        let data = json!({"lost": lost, "reason": text, "error": text}).to_string();
        check_json(event, &data, status);
        if let Value::String(s) = &text {
            prop_assert!(status_error(status, None, &data).starts_with(s.as_str()));
        }
    }
}

/// The committed seeds (`tests/fuzz-corpus/sse/`): recorded streams, each
/// with the events it holds in a file of the same name ending `.expect`
/// (`event<TAB>data` lines, data newlines as `\n`).
#[test]
fn sse_corpus_replays() {
    let all = seeds("sse");
    let mut replayed = 0;
    for (name, bytes) in &all {
        let Some(stem) = name.strip_suffix(".stream") else {
            continue;
        };
        let stream = String::from_utf8_lossy(bytes);
        let mut p = SseParser::default();
        let mut got = String::new();
        for l in stream.split_inclusive('\n') {
            if let Some(e) = p.line(l) {
                got += &format!("{}\t{}\n", e.event, e.data.replace('\n', "\\n"));
                check_json(&e.event, &e.data, 500);
            }
        }
        let expect = all
            .iter()
            .find(|(n, _)| *n == format!("{stem}.expect"))
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| panic!("{name} has no {stem}.expect"));
        assert_eq!(got, expect, "{name}");
        replayed += 1;
    }
    assert!(replayed > 0, "no .stream seeds in tests/fuzz-corpus/sse");
}
