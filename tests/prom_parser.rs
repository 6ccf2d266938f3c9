//! The Prometheus text parser of tests/support/prom.rs: well-formed
//! expositions read right, malformed ones refused with the line named.

use wprobe_tests::prom::{self, canon_bound};

const GOOD: &str = r#"# HELP wprobe_http_requests_total Requests answered, by route and status.
# TYPE wprobe_http_requests_total counter
wprobe_http_requests_total{method="GET",route="/api/health",status="200"} 3
wprobe_http_requests_total{method="GET",route="/api/targets/{id}",status="404"} 1
# HELP wprobe_targets Targets traced now.
# TYPE wprobe_targets gauge
wprobe_targets 2
# A plain comment.

# TYPE wprobe_http_request_duration_seconds histogram
wprobe_http_request_duration_seconds_bucket{route="/api/health",le="0.005"} 1
wprobe_http_request_duration_seconds_bucket{route="/api/health",le="0.05"} 2
wprobe_http_request_duration_seconds_bucket{route="/api/health",le="1.0"} 3
wprobe_http_request_duration_seconds_bucket{route="/api/health",le="+Inf"} 3
wprobe_http_request_duration_seconds_sum{route="/api/health"} 0.0123
wprobe_http_request_duration_seconds_count{route="/api/health"} 3
wprobe_http_request_duration_seconds_bucket{route="/api/plugins",le="0.005"} 0
wprobe_http_request_duration_seconds_bucket{route="/api/plugins",le="0.05"} 0
wprobe_http_request_duration_seconds_bucket{route="/api/plugins",le="1.0"} 0
wprobe_http_request_duration_seconds_bucket{route="/api/plugins",le="+Inf"} 0
wprobe_http_request_duration_seconds_sum{route="/api/plugins"} 0
wprobe_http_request_duration_seconds_count{route="/api/plugins"} 0
# TYPE wprobe_probe_latency_seconds summary
wprobe_probe_latency_seconds{quantile="0.5"} 0.001
wprobe_probe_latency_seconds{quantile="0.99"} 0.004
wprobe_probe_latency_seconds_sum 0.5
wprobe_probe_latency_seconds_count 200
# TYPE wprobe_up untyped
wprobe_up 1 1700000000000
# TYPE process_start_time_seconds gauge
process_start_time_seconds NaN
"#;

#[test]
fn a_good_exposition_reads_right() {
    let s = prom::parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    let req = "wprobe_http_requests_total";
    assert_eq!(
        prom::value(
            &s,
            req,
            &[
                ("method", "GET"),
                ("route", "/api/health"),
                ("status", "200")
            ]
        ),
        Some(3.0)
    );
    // Labels in any order; a label value with braces.
    assert_eq!(
        prom::value(
            &s,
            req,
            &[
                ("status", "404"),
                ("route", "/api/targets/{id}"),
                ("method", "GET")
            ]
        ),
        Some(1.0)
    );
    // Exactly these labels: a subset does not match.
    assert_eq!(prom::value(&s, req, &[("route", "/api/health")]), None);
    assert_eq!(prom::value(&s, "wprobe_targets", &[]), Some(2.0));
    assert_eq!(prom::value(&s, "wprobe_up", &[]), Some(1.0));
    assert!(prom::value(&s, "process_start_time_seconds", &[])
        .unwrap()
        .is_nan());
    assert_eq!(prom::value(&s, "wprobe_missing", &[]), None);

    let h = "wprobe_http_request_duration_seconds";
    let (buckets, sum, count) =
        prom::histogram(&s, h, &[("route", "/api/health")]).expect("the histogram");
    assert_eq!(
        buckets,
        vec![(0.005, 1.0), (0.05, 2.0), (1.0, 3.0), (f64::INFINITY, 3.0)]
    );
    assert_eq!((sum, count), (0.0123, 3.0));
    let (buckets, _, count) = prom::histogram(&s, h, &[("route", "/api/plugins")]).unwrap();
    assert_eq!((buckets.len(), count), (4, 0.0));
    assert!(prom::histogram(&s, h, &[("route", "/nope")]).is_none());
    assert!(prom::histogram(&s, h, &[]).is_none());
    // Histogram parts through value(), `le` in any spelling.
    assert_eq!(
        prom::value(&s, &format!("{h}_count"), &[("route", "/api/health")]),
        Some(3.0)
    );
    assert_eq!(
        prom::value(
            &s,
            &format!("{h}_bucket"),
            &[("route", "/api/health"), ("le", "1")]
        ),
        Some(3.0)
    );
    // Summary quantiles.
    let q = "wprobe_probe_latency_seconds";
    assert_eq!(prom::value(&s, q, &[("quantile", "0.99")]), Some(0.004));
    assert_eq!(prom::value(&s, &format!("{q}_count"), &[]), Some(200.0));
}

#[test]
fn bounds_have_one_spelling() {
    assert_eq!(canon_bound("1.0"), "1");
    assert_eq!(canon_bound("1"), "1");
    assert_eq!(canon_bound("+Inf"), "+Inf");
    assert_eq!(canon_bound("inf"), "+Inf");
    assert_eq!(canon_bound("0.005"), "0.005");
}

#[test]
fn escaped_label_values_and_blanks_read_right() {
    let text = "# TYPE a counter\n\
                a{path=\"C:\\\\x\",q=\"say \\\"hi\\\"\",nl=\"1\\n2\"} 1\n\
                # TYPE b gauge\n  b { x = \"1\" , } \t 2 \n\
                # TYPE c gauge\nc{} 3\n";
    let s = prom::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let labels = [("path", "C:\\x"), ("q", "say \"hi\""), ("nl", "1\n2")];
    assert_eq!(prom::value(&s, "a", &labels), Some(1.0));
    assert_eq!(prom::value(&s, "b", &[("x", "1")]), Some(2.0));
    assert_eq!(prom::value(&s, "c", &[]), Some(3.0));
    assert_eq!(prom::check_strict(text).unwrap(), s.series);
}

#[test]
fn types_and_help_are_kept() {
    let s = prom::parse(GOOD).unwrap();
    assert_eq!(s.types["wprobe_targets"], "gauge");
    assert_eq!(s.types["wprobe_http_request_duration_seconds"], "histogram");
    assert_eq!(s.help["wprobe_targets"], "Targets traced now.");
    let s = prom::parse("# HELP a Two\\nlines, one \\\\.\n# TYPE a gauge\na 1\n").unwrap();
    assert_eq!(s.help["a"], "Two\nlines, one \\.");
    let req = prom::series_of(&s, "a");
    assert_eq!(req.len(), 1);
}

/// Each malformed exposition is refused, and the message has `want`.
#[track_caller]
fn refused(text: &str, want: &str) {
    match prom::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => assert!(e.contains(want), "expected {want:?} in:\n{e}\nfor:\n{text}"),
    }
}

#[test]
fn malformed_lines_are_refused() {
    refused(
        "# TYPE a counter\na{x=\"1\"} one\n",
        "line 2: invalid value \"one\"",
    );
    refused("# TYPE a counter\na 1 2 3\n", "unexpected \"3\"");
    refused("# TYPE a counter\na 1 later\n", "invalid timestamp");
    refused(
        "# TYPE a counter\na\n",
        "line 2: expected a blank then the value",
    );
    refused("# TYPE a counter\na{x=1} 1\n", "not quoted");
    refused("# TYPE a counter\na{x=\"1} 1\n", "unterminated");
    refused(
        "# TYPE a counter\na{x=\"1\" y=\"2\"} 1\n",
        "expected `,` or `}`",
    );
    refused("# TYPE a counter\na{1x=\"1\"} 1\n", "invalid label name");
    refused("# TYPE a counter\na{__x=\"1\"} 1\n", "reserved");
    refused("# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n", "given twice");
    refused("# TYPE a counter\na{x=\"\\t\"} 1\n", "bad escape");
    refused("1a 1\n", "invalid metric name");
    refused("# TYPE a-b counter\n", "invalid metric name \"a-b\"");
    refused("# TYPE a counter\na 1", "does not end with a line feed");
    refused("# TYPE a counter\r\na 1\r\n", "line 1");
}

#[test]
fn types_and_families_are_checked() {
    refused("a 1\n", "sample a has no `# TYPE` line");
    refused("# HELP a Some help.\na 1\n", "no `# TYPE`");
    refused("a 1\n# TYPE a counter\n", "line 1");
    refused(
        "# TYPE a gauge\na 1\n# TYPE a gauge\n",
        "a second TYPE for a",
    );
    refused(
        "# TYPE a counter\n# TYPE b counter\na 1\nb 1\n# HELP x x\na{x=\"1\"} 2\n",
        "not together",
    );
    refused("# TYPE a countr\n", "unknown type \"countr\"");
    refused("# TYPE a\n", "without a type");
    refused("# TYPE a counter extra\n", "unexpected \"extra\"");
    refused("# HELP a one\n# HELP a two\n", "a second HELP");
    refused("# HELP a bad \\t escape\n", "escapes");
    refused("# TYPE a counter\na 1\na 2\n", "series a given twice");
    refused("# TYPE a counter\na -1\n", "counter a is negative");
    // A counter's TYPE names the sample itself: no suffix games.
    refused(
        "# TYPE a counter\na_total 1\n",
        "sample a_total has no `# TYPE`",
    );
    refused(
        "# TYPE a gauge\na_bucket{le=\"1\"} 1\n",
        "a_bucket has no `# TYPE`",
    );
}

const H: &str = "# TYPE h histogram\n";

#[test]
fn broken_histograms_and_summaries_are_refused() {
    refused(
        &format!("{H}h_bucket{{le=\"1\"}} 2\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 1\n"),
        "not cumulative",
    );
    refused(
        &format!("{H}h_bucket{{le=\"2\"}} 1\nh_bucket{{le=\"1\"}} 1\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 1\n"),
        "not increasing",
    );
    refused(
        &format!("{H}h_bucket{{le=\"1\"}} 1\nh_sum 1\nh_count 1\n"),
        "not le=\"+Inf\"",
    );
    refused(
        &format!("{H}h_bucket{{le=\"1\"}} 1\nh_bucket{{le=\"+Inf\"}} 2\nh_sum 1\nh_count 3\n"),
        "the +Inf bucket has 2 but _count is 3",
    );
    refused(
        &format!("{H}h_bucket{{le=\"+Inf\"}} 2\nh_count 2\n"),
        "has no h_sum",
    );
    refused(
        &format!("{H}h_bucket{{le=\"+Inf\"}} 2\nh_sum 2\n"),
        "has no h_count",
    );
    refused(&format!("{H}h_sum 2\nh_count 2\n"), "has no buckets");
    refused(&format!("{H}h_bucket 2\n"), "without `le`");
    refused(&format!("{H}h_bucket{{le=\"x\"}} 2\n"), "invalid le");
    refused(&format!("{H}h 2\n"), "without a _bucket/_sum/_count suffix");
    refused(
        &format!("{H}h_bucket{{le=\"+Inf\"}} 2\nh_sum{{le=\"1\"}} 2\nh_count 2\n"),
        "has `le`",
    );
    // Per label set: one complete histogram does not cover another.
    refused(
        &format!(
            "{H}h_bucket{{r=\"a\",le=\"+Inf\"}} 1\nh_sum{{r=\"a\"}} 1\nh_count{{r=\"a\"}} 1\n\
             h_bucket{{r=\"b\",le=\"+Inf\"}} 1\nh_sum{{r=\"b\"}} 1\n"
        ),
        "histogram h{r=\"b\"} has no h_count",
    );
    refused(
        "# TYPE s summary\ns 1\ns_sum 1\ns_count 1\n",
        "without `quantile`",
    );
    refused(
        "# TYPE s summary\ns{quantile=\"2\"} 1\ns_sum 1\ns_count 1\n",
        "not in [0, 1]",
    );
    refused(
        "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_count 1\n",
        "has no s_sum",
    );
}

#[test]
fn what_prometheus_parse_misreads_is_read_by_the_strict_reader() {
    // Valid text that prometheus-parse 0.2 drops or misreads: read right
    // all the same.
    let s = prom::parse("# TYPE a:b counter\na:b 1\n").unwrap();
    assert_eq!(prom::value(&s, "a:b", &[]), Some(1.0));
    for v in ["1,2", "k=v", "}", "/api/targets/{id}"] {
        let text = format!("# TYPE a counter\na{{x=\"{v}\",y=\"z\"}} 7\n");
        let s = prom::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            prom::value(&s, "a", &[("x", v), ("y", "z")]),
            Some(7.0),
            "{text}"
        );
    }
    // A histogram with such a label.
    let text = "# TYPE h histogram\n\
                h_bucket{r=\"/t/{id}\",le=\"1\"} 1\n\
                h_bucket{r=\"/t/{id}\",le=\"+Inf\"} 2\n\
                h_sum{r=\"/t/{id}\"} 1.5\n\
                h_count{r=\"/t/{id}\"} 2\n";
    let s = prom::parse(text).unwrap();
    assert_eq!(
        prom::histogram(&s, "h", &[("r", "/t/{id}")]),
        Some((vec![(1.0, 1.0), (f64::INFINITY, 2.0)], 1.5, 2.0))
    );
}

#[test]
fn empty_text_is_an_empty_scrape() {
    let s = prom::parse("").unwrap();
    assert!(s.series.is_empty());
    let s = prom::parse("# just a comment\n\n").unwrap();
    assert!(s.series.is_empty());
}
