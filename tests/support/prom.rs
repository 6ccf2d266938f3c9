//! Prometheus text exposition format (0.0.4), as served at GET /metrics.
//!
//! Every line is read strictly against the format ([`parse`] refuses
//! anything it does not allow, naming the line), and the result is then
//! cross-checked with the `prometheus-parse` crate. That crate alone would
//! not do: it silently skips lines it cannot read (a bad value, a metric
//! name with `:`), ends the labels at the first `}` (so it drops
//! `route="/api/targets/{id}"`), splits them on `,` and `=` without
//! unescaping, and takes any `# TYPE`. So it is asked to read the lines it
//! can read right, and must find exactly the series the strict reader
//! found there; the other lines are the strict reader's alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Labels in a canonical form: sorted; `le` and `quantile` values as
/// [`canon_bound`] writes them.
pub type LabelSet = BTreeMap<String, String>;

/// One time series: a name (with its `_bucket`/`_sum`/`_count` suffix),
/// labels, a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: LabelSet,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Every series, in the text's order.
    pub series: Vec<Series>,
    /// Each family's `# TYPE`: counter, gauge, histogram, summary, untyped.
    pub types: BTreeMap<String, String>,
    /// Each family's `# HELP` text, unescaped.
    pub help: BTreeMap<String, String>,
}

/// Parses a /metrics body. Fails, naming the line, on anything the text
/// format does not allow (see [`check_strict`]), and when prometheus-parse
/// reads the lines it can read differently.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let Read {
        scrape,
        readable_text,
        readable_series,
    } = read(text)?;
    let lines = readable_text.lines().map(|l| Ok(l.to_string()));
    let crate_scrape =
        prometheus_parse::Scrape::parse(lines).map_err(|e| format!("prometheus-parse: {e}"))?;
    let key = |s: &Series| (s.name.clone(), s.labels.clone());
    let want: BTreeMap<_, f64> = readable_series.iter().map(|s| (key(s), s.value)).collect();
    let got: BTreeMap<_, f64> = crate_series(&crate_scrape)
        .iter()
        .map(|s| (key(s), s.value))
        .collect();
    let mut diffs = Vec::new();
    for (k, v) in &want {
        match got.get(k) {
            None => diffs.push(format!("{} missed by prometheus-parse", show(&k.0, &k.1))),
            Some(g) if !same(*g, *v) => diffs.push(format!(
                "{}: prometheus-parse read {g}, the strict reader {v}",
                show(&k.0, &k.1)
            )),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!(
            "{} read by prometheus-parse but not by the strict reader",
            show(&k.0, &k.1)
        ));
    }
    if diffs.is_empty() {
        Ok(scrape)
    } else {
        Err(format!(
            "prometheus-parse disagrees with the strict reader:\n  {}",
            diffs.join("\n  ")
        ))
    }
}

/// The value of the series `name` whose labels are exactly `labels` (in
/// any order; none for a series without labels): counters, gauges,
/// untyped samples, histogram `_sum`, `_count` and `_bucket` (give `le`),
/// summary quantiles (give `quantile`) and summary `_sum`, `_count`.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want = label_set(labels);
    scrape
        .series
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// The series of the family or series `name` (any labels), e.g. to see
/// which label sets a counter has.
pub fn series_of<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Series> {
    scrape.series.iter().filter(|s| s.name == name).collect()
}

/// The histogram `name` with exactly `labels` (without `le`): its buckets
/// as (upper bound, cumulative count), in increasing bound order and
/// ending with +Inf, then its `_sum` and `_count`. [`parse`] already
/// checked that the buckets are cumulative and that +Inf equals `_count`;
/// this asserts it again for a [`Scrape`] made elsewhere.
#[allow(clippy::type_complexity)]
pub fn histogram(
    scrape: &Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<(Vec<(f64, f64)>, f64, f64)> {
    let want = label_set(labels);
    let bucket_name = format!("{name}_bucket");
    let buckets: Vec<(f64, f64)> = scrape
        .series
        .iter()
        .filter(|s| s.name == bucket_name)
        .filter_map(|s| {
            let mut rest = s.labels.clone();
            let le = parse_float(&rest.remove("le")?)?;
            (rest == want).then_some((le, s.value))
        })
        .collect();
    if buckets.is_empty() {
        return None;
    }
    let sum = value(scrape, &format!("{name}_sum"), labels)?;
    let count = value(scrape, &format!("{name}_count"), labels)?;
    if let Err(e) = check_buckets(&buckets, count) {
        panic!("histogram {}: {e}", show(name, &want));
    }
    Some((buckets, sum, count))
}

/// The series prometheus-parse read, histograms and summaries spread into
/// their `_bucket` / quantile series.
fn crate_series(scrape: &prometheus_parse::Scrape) -> Vec<Series> {
    use prometheus_parse::Value;
    let mut out = Vec::new();
    for s in &scrape.samples {
        let labels = canon_labels(&s.labels);
        let with = |k: &str, v: f64| {
            let mut l = labels.clone();
            l.insert(k.to_string(), canon_bound_f64(v));
            l
        };
        match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => out.push(Series {
                name: s.metric.clone(),
                labels,
                value: *v,
            }),
            Value::Histogram(hs) => out.extend(hs.iter().map(|h| Series {
                name: format!("{}_bucket", s.metric),
                labels: with("le", h.less_than),
                value: h.count,
            })),
            Value::Summary(qs) => out.extend(qs.iter().map(|q| Series {
                name: s.metric.clone(),
                labels: with("quantile", q.quantile),
                value: q.count,
            })),
        }
    }
    out
}

/// A bound (`le`, `quantile`) in one spelling: `+Inf`, `-Inf`, `NaN`, or
/// the shortest decimal (`1`, `0.005`), so that `1.0` and `1` are the same.
pub fn canon_bound(s: &str) -> String {
    match parse_float(s) {
        Some(v) => canon_bound_f64(v),
        None => s.to_string(),
    }
}

fn canon_bound_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn canon_labels(labels: &HashMap<String, String>) -> LabelSet {
    labels
        .iter()
        .map(|(k, v)| (k.clone(), canon_label(k, v)))
        .collect()
}

fn canon_label(k: &str, v: &str) -> String {
    if k == "le" || k == "quantile" {
        canon_bound(v)
    } else {
        v.to_string()
    }
}

fn label_set(labels: &[(&str, &str)]) -> LabelSet {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), canon_label(k, v)))
        .collect()
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn show(name: &str, labels: &LabelSet) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// Go's strconv.ParseFloat as the format uses it: decimals, `NaN`,
/// `+Inf`/`-Inf`/`Inf` in any case.
fn parse_float(s: &str) -> Option<f64> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if ok {
        s.parse::<f64>().ok()
    } else {
        None
    }
}

fn check_buckets(buckets: &[(f64, f64)], count: f64) -> Result<(), String> {
    let Some(&(last_le, last_count)) = buckets.last() else {
        return Err("no buckets".into());
    };
    for w in buckets.windows(2) {
        if w[1].0 <= w[0].0 {
            return Err(format!(
                "bucket bounds not increasing: le={} after le={}",
                canon_bound_f64(w[1].0),
                canon_bound_f64(w[0].0)
            ));
        }
        if w[1].1 < w[0].1 {
            return Err(format!(
                "buckets not cumulative: le={} has {} but le={} has {}",
                canon_bound_f64(w[1].0),
                w[1].1,
                canon_bound_f64(w[0].0),
                w[0].1
            ));
        }
    }
    if last_le != f64::INFINITY {
        return Err(format!(
            "the last bucket is le={}, not le=\"+Inf\"",
            canon_bound_f64(last_le)
        ));
    }
    if !same(last_count, count) {
        return Err(format!(
            "the +Inf bucket has {last_count} but _count is {count}"
        ));
    }
    Ok(())
}

const TYPES: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];

fn valid_metric_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One sample line, read strictly.
struct Line {
    name: String,
    labels: LabelSet,
    value: f64,
    /// Whether prometheus-parse reads this line right.
    readable: bool,
}

/// Reads `name{label="value",...} value [timestamp]`.
fn read_sample(line: &str) -> Result<Line, String> {
    let s = line.trim_start_matches([' ', '\t']);
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    let name = &s[..end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &s[end..];
    let mut labels = LabelSet::new();
    // The line as prometheus-parse can read it, to compare.
    let mut rendered = name.to_string();
    let mut pairs = Vec::new();
    if let Some(r) = rest.trim_start_matches([' ', '\t']).strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', '\t']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let key = &rest[..end];
            if !valid_label_name(key) {
                return Err(format!("invalid label name at {:?}", trunc(rest)));
            }
            if key.starts_with("__") {
                return Err(format!("label name {key:?} is reserved (starts with __)"));
            }
            rest = rest[end..].trim_start_matches([' ', '\t']);
            rest = rest
                .strip_prefix('=')
                .ok_or_else(|| format!("expected `=` after label {key:?}"))?
                .trim_start_matches([' ', '\t']);
            rest = rest
                .strip_prefix('"')
                .ok_or_else(|| format!("the value of label {key:?} is not quoted"))?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next() {
                    None => return Err(format!("unterminated value of label {key:?}")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => {
                            return Err(format!(
                                "bad escape \\{} in the value of label {key:?}",
                                other.map(|(_, c)| c.to_string()).unwrap_or_default()
                            ))
                        }
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            pairs.push(format!("{key}=\"{}\"", &rest[..close]));
            rest = &rest[close + 1..];
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key:?} given twice"));
            }
            rest = rest.trim_start_matches([' ', '\t']);
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err(format!(
                    "expected `,` or `}}` after label {key:?}, found {:?}",
                    trunc(rest)
                ));
            }
        }
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!(
            "expected a blank then the value after {name}, found {:?}",
            trunc(rest)
        ));
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let token = fields.next().ok_or("no value")?;
    let value = parse_float(token).ok_or_else(|| format!("invalid value {token:?}"))?;
    if !pairs.is_empty() {
        rendered = format!("{rendered}{{{}}}", pairs.join(","));
    }
    rendered = format!("{rendered} {token}");
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("invalid timestamp {ts:?} (milliseconds, an integer)"))?;
        rendered = format!("{rendered} {ts}");
    }
    if let Some(extra) = fields.next() {
        return Err(format!(
            "unexpected {extra:?} after the value and timestamp"
        ));
    }
    // prometheus-parse 0.2 splits labels on `,` and `=`, ends them at the
    // first `}`, does not unescape, reads no `:` in names and no blank
    // before `{` or inside the braces.
    let readable = !name.contains(':')
        && rendered == s.trim_end_matches([' ', '\t'])
        && labels
            .values()
            .all(|v| !v.contains(['}', ',', '=', '"', '\\', '\n']));
    Ok(Line {
        name: name.to_string(),
        labels,
        value,
        readable,
    })
}

fn trunc(s: &str) -> &str {
    let end = (0..=s.len().min(20))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

/// Checks a whole exposition against the text format, strictly, and
/// returns its series (`le`/`quantile` canonical). Rejected, naming the
/// line: a sample line not `name{label="value",...} value [timestamp]`
/// (valid metric and label names, quoted values with only `\\` `\"` `\n`
/// escapes, a float value, an integer timestamp); a sample whose family
/// has no `# TYPE` line before it; a malformed, repeated or late `# TYPE`
/// or `# HELP`; a family whose samples are not together; a series given
/// twice; a negative counter; a histogram without `le`, `_sum` or
/// `_count`, whose buckets are not increasing and cumulative or do not end
/// with +Inf equal to `_count`; a summary without `quantile` in [0, 1],
/// `_sum` or `_count`; text whose last line does not end with `\n`.
pub fn check_strict(text: &str) -> Result<Vec<Series>, String> {
    read(text).map(|r| r.scrape.series)
}

/// What [`read`] found: the scrape, and the lines prometheus-parse can
/// read with the series on them.
struct Read {
    scrape: Scrape,
    readable_text: String,
    readable_series: Vec<Series>,
}

fn read(text: &str) -> Result<Read, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line does not end with a line feed".into());
    }
    let mut types: HashMap<String, &str> = HashMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut readable_text = String::new();
    let mut readable_series = Vec::new();
    // Families whose samples have started, and those that have ended.
    let mut started: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut out: Vec<Series> = Vec::new();
    let mut seen: BTreeSet<(String, LabelSet)> = BTreeSet::new();
    // Histogram/summary parts: (family, labels without le/quantile).
    let mut buckets: BTreeMap<(String, LabelSet), Vec<(f64, f64)>> = BTreeMap::new();
    let mut sums: BTreeSet<(String, LabelSet)> = BTreeSet::new();
    let mut counts: BTreeMap<(String, LabelSet), f64> = BTreeMap::new();
    let mut quantiles: BTreeSet<(String, LabelSet)> = BTreeSet::new();

    for (i, raw) in text.split('\n').enumerate() {
        let no = i + 1;
        let err = |m: String| format!("line {no}: {m}: {raw:?}");
        let line = raw.trim_start_matches([' ', '\t']);
        if line.trim_end_matches([' ', '\t']).is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            readable_text.push_str(raw);
            readable_text.push('\n');
            let mut words = comment.split([' ', '\t']).filter(|w| !w.is_empty());
            let kind = words.next();
            if kind != Some("HELP") && kind != Some("TYPE") {
                continue; // A plain comment.
            }
            let kind = kind.unwrap_or_default();
            let name = words
                .next()
                .ok_or_else(|| err(format!("{kind} without a metric name")))?;
            if !valid_metric_name(name) {
                return Err(err(format!("invalid metric name {name:?} in {kind}")));
            }
            if kind == "HELP" {
                let doc = comment
                    .split_once(name)
                    .map(|(_, d)| d.trim_start_matches([' ', '\t']))
                    .unwrap_or("");
                let mut unescaped = String::new();
                let mut cs = doc.chars();
                while let Some(c) = cs.next() {
                    if c != '\\' {
                        unescaped.push(c);
                        continue;
                    }
                    match cs.next() {
                        Some('\\') => unescaped.push('\\'),
                        Some('n') => unescaped.push('\n'),
                        _ => {
                            return Err(err(format!(
                                "HELP of {name}: only \\\\ and \\n are escapes"
                            )))
                        }
                    }
                }
                if helps.insert(name.to_string(), unescaped).is_some() {
                    return Err(err(format!("a second HELP for {name}")));
                }
            } else {
                let ty = words
                    .next()
                    .ok_or_else(|| err(format!("TYPE of {name} without a type")))?;
                if !TYPES.contains(&ty) {
                    return Err(err(format!(
                        "unknown type {ty:?} (one of {})",
                        TYPES.join(", ")
                    )));
                }
                if let Some(extra) = words.next() {
                    return Err(err(format!("unexpected {extra:?} after the type")));
                }
                if types.contains_key(name) {
                    return Err(err(format!("a second TYPE for {name}")));
                }
                if started.contains(name) {
                    return Err(err(format!("TYPE of {name} after its samples")));
                }
                let ty = TYPES
                    .iter()
                    .find(|t| **t == ty)
                    .copied()
                    .unwrap_or("untyped");
                types.insert(name.to_string(), ty);
            }
            continue;
        }
        let l = read_sample(line).map_err(err)?;
        // The family: the name itself when it has a TYPE, else a histogram
        // or summary whose part it is.
        let (family, ty, part) = if let Some(&ty) = types.get(&l.name) {
            (l.name.clone(), ty, "")
        } else {
            let parted = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let base = l.name.strip_suffix(suffix)?;
                let ty = *types.get(base)?;
                let fits = match ty {
                    "histogram" => true,
                    "summary" => *suffix != "_bucket",
                    _ => false,
                };
                fits.then(|| (base.to_string(), ty, *suffix))
            });
            parted.ok_or_else(|| {
                err(format!(
                    "sample {} has no `# TYPE` line for its family before it",
                    l.name
                ))
            })?
        };
        if current.as_deref() != Some(family.as_str()) {
            if started.contains(&family) {
                return Err(err(format!(
                    "the samples of {family} are not together (other families in between)"
                )));
            }
            started.insert(family.clone());
            current = Some(family.clone());
        }
        let mut labels = l.labels.clone();
        let mut rest = labels.clone(); // Without le/quantile.
        match (ty, part) {
            ("histogram", "") => {
                return Err(err(format!(
                    "histogram {family} has a sample without a _bucket/_sum/_count suffix"
                )))
            }
            ("histogram", "_bucket") => {
                let le = rest
                    .remove("le")
                    .ok_or_else(|| err(format!("bucket of {family} without `le`")))?;
                let bound = parse_float(&le)
                    .ok_or_else(|| err(format!("invalid le=\"{le}\" of {family}")))?;
                labels.insert("le".into(), canon_bound_f64(bound));
                buckets
                    .entry((family.clone(), rest))
                    .or_default()
                    .push((bound, l.value));
            }
            ("summary", "") => {
                let q = rest
                    .remove("quantile")
                    .ok_or_else(|| err(format!("summary {family} sample without `quantile`")))?;
                let q = parse_float(&q)
                    .filter(|q| (0.0..=1.0).contains(q))
                    .ok_or_else(|| err(format!("quantile=\"{q}\" of {family} not in [0, 1]")))?;
                labels.insert("quantile".into(), canon_bound_f64(q));
                quantiles.insert((family.clone(), rest));
            }
            (_, "_sum") => {
                sums.insert((family.clone(), rest));
            }
            (_, "_count") => {
                counts.insert((family.clone(), rest), l.value);
            }
            ("counter", _) if l.value < 0.0 => {
                return Err(err(format!("counter {family} is negative")));
            }
            _ => {}
        }
        if part != "_bucket" && ty == "histogram" && l.labels.contains_key("le") {
            return Err(err(format!("{} of histogram {family} has `le`", l.name)));
        }
        if !seen.insert((l.name.clone(), labels.clone())) {
            return Err(err(format!(
                "series {} given twice",
                show(&l.name, &labels)
            )));
        }
        let series = Series {
            name: l.name,
            labels,
            value: l.value,
        };
        if l.readable {
            readable_text.push_str(raw);
            readable_text.push('\n');
            readable_series.push(series.clone());
        }
        out.push(series);
    }

    // Histograms and summaries: complete and consistent.
    let mut groups: BTreeSet<(String, LabelSet)> = buckets.keys().cloned().collect();
    groups.extend(quantiles.iter().cloned());
    groups.extend(sums.iter().cloned());
    groups.extend(counts.keys().cloned());
    for key in &groups {
        let (family, labels) = key;
        let what = show(family, labels);
        let ty = types.get(family).copied().unwrap_or("untyped");
        if !sums.contains(key) {
            return Err(format!("{ty} {what} has no {family}_sum"));
        }
        let Some(&count) = counts.get(key) else {
            return Err(format!("{ty} {what} has no {family}_count"));
        };
        if ty == "histogram" {
            let bs = buckets
                .get(key)
                .ok_or_else(|| format!("histogram {what} has no buckets"))?;
            check_buckets(bs, count).map_err(|e| format!("histogram {what}: {e}"))?;
        }
    }
    Ok(Read {
        scrape: Scrape {
            series: out,
            types: types.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
            help: helps,
        },
        readable_text,
        readable_series,
    })
}
