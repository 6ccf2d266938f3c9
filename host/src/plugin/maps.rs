//! Host-side maps: bpftrace's count/sum/min/max/avg/hist/lhist, keyed by
//! nothing, bytes or integers. They live outside the plugin so that they
//! survive its replacement and can be shown without calling into wasm.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use serde_json::{json, Value};

/// A map key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    None,
    Bytes(Vec<u8>),
    Int(i64),
}

impl Key {
    fn label(&self) -> String {
        match self {
            Key::None => String::new(),
            Key::Int(i) => i.to_string(),
            Key::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => s.to_string(),
                Err(_) => b.iter().map(|x| format!("{x:02x}")).collect(),
            },
        }
    }
}

/// What a map aggregates; fixed by its first update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Hist,
    Lhist { min: i64, max: i64, step: i64 },
}

impl Op {
    /// The ABI's `op` numbers (docs/plugin-abi.md).
    pub fn from_abi(op: i32) -> Option<Op> {
        Some(match op {
            0 => Op::Count,
            1 => Op::Sum,
            2 => Op::Min,
            3 => Op::Max,
            4 => Op::Avg,
            5 => Op::Hist,
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Op::Count => "count",
            Op::Sum => "sum",
            Op::Min => "min",
            Op::Max => "max",
            Op::Avg => "avg",
            Op::Hist => "hist",
            Op::Lhist { .. } => "lhist",
        }
    }
}

#[derive(Debug, Clone)]
enum Value_ {
    Int(i64),
    Avg {
        count: u64,
        sum: i64,
    },
    /// log2 buckets: index 0 holds negatives, 1 holds 0, 2 holds 1, k+2
    /// holds [2^k, 2^(k+1)).
    Hist(Vec<u64>),
    /// below min, the buckets, at or above max.
    Lhist(Vec<u64>),
}

#[derive(Debug, Clone)]
struct Map {
    op: Op,
    entries: BTreeMap<Key, Value_>,
    /// Histograms: the sum of the values recorded at each key (for
    /// Prometheus' `_sum`).
    sums: BTreeMap<Key, i64>,
}

/// One histogram of a plugin, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    pub map: String,
    /// The key as text, `None` for the map's only value.
    pub key: Option<String>,
    /// `(low, high, count)`: values in `[low, high)`, empty buckets left
    /// out, in order.
    pub buckets: Vec<(i64, i64, u64)>,
    pub sum: i64,
    pub count: u64,
}

/// Why an update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Another kind than the map's, or lhist bounds that make no buckets.
    Invalid,
    /// The key cap was reached.
    Limit,
}

/// Every map of one plugin.
#[derive(Debug, Default, Clone)]
pub struct Maps {
    maps: BTreeMap<String, Map>,
    keys: usize,
    /// Updates refused because the key cap was reached.
    pub overflow: u64,
}

/// The most buckets a linear histogram may have between its bounds.
pub const MAX_LHIST_BUCKETS: i128 = 10_000;

/// The number of buckets of width `step` from `min` to `max` (the ones
/// below and above left out), or `None` when the bounds make none or more
/// than [`MAX_LHIST_BUCKETS`]. The arithmetic is in i128: the bounds are
/// the plugin's, and `max - min` of two i64s may not fit an i64.
fn lhist_buckets(min: i64, max: i64, step: i64) -> Option<usize> {
    if step <= 0 || max <= min {
        return None;
    }
    // Rounded up: the last bucket may be narrower, `[lo, max)`.
    let span = i128::from(max) - i128::from(min);
    let n = (span + i128::from(step) - 1) / i128::from(step);
    if !(1..=MAX_LHIST_BUCKETS).contains(&n) {
        return None;
    }
    usize::try_from(n).ok()
}

fn log2_bucket(v: i64) -> usize {
    if v < 0 {
        0
    } else if v == 0 {
        1
    } else {
        2 + (63 - (v as u64).leading_zeros()) as usize
    }
}

impl Maps {
    /// Applies one update; `max_keys` caps the keys over all maps.
    pub fn update(
        &mut self,
        name: &str,
        op: Op,
        key: Key,
        value: i64,
        max_keys: usize,
    ) -> Result<(), MapError> {
        if let Op::Lhist { min, max, step } = op {
            lhist_buckets(min, max, step).ok_or(MapError::Invalid)?;
        }
        if !self.maps.contains_key(name) {
            if self.keys >= max_keys {
                self.overflow += 1;
                return Err(MapError::Limit);
            }
            self.maps.insert(
                name.to_string(),
                Map {
                    op,
                    entries: BTreeMap::new(),
                    sums: BTreeMap::new(),
                },
            );
        }
        let map = self.maps.get_mut(name).expect("inserted");
        if map.op != op {
            return Err(MapError::Invalid);
        }
        if !map.entries.contains_key(&key) {
            if self.keys >= max_keys {
                self.overflow += 1;
                return Err(MapError::Limit);
            }
            self.keys += 1;
            let fresh = match op {
                Op::Count | Op::Sum => Value_::Int(0),
                Op::Min => Value_::Int(i64::MAX),
                Op::Max => Value_::Int(i64::MIN),
                Op::Avg => Value_::Avg { count: 0, sum: 0 },
                Op::Hist => Value_::Hist(Vec::new()),
                Op::Lhist { min, max, step } => {
                    let n = lhist_buckets(min, max, step).ok_or(MapError::Invalid)?;
                    Value_::Lhist(vec![0; n + 2])
                }
            };
            map.entries.insert(key.clone(), fresh);
        }
        if matches!(op, Op::Hist | Op::Lhist { .. }) {
            let sum = map.sums.entry(key.clone()).or_default();
            *sum = sum.saturating_add(value);
        }
        let v = map.entries.get_mut(&key).expect("inserted");
        match (op, v) {
            (Op::Count, Value_::Int(n)) => *n = n.saturating_add(1),
            (Op::Sum, Value_::Int(n)) => *n = n.saturating_add(value),
            (Op::Min, Value_::Int(n)) => *n = (*n).min(value),
            (Op::Max, Value_::Int(n)) => *n = (*n).max(value),
            (Op::Avg, Value_::Avg { count, sum }) => {
                *count = count.saturating_add(1);
                *sum = sum.saturating_add(value);
            }
            (Op::Hist, Value_::Hist(b)) => {
                let i = log2_bucket(value);
                if b.len() <= i {
                    b.resize(i + 1, 0);
                }
                b[i] = b[i].saturating_add(1);
            }
            (Op::Lhist { min, max, step }, Value_::Lhist(b)) => {
                // In i128: `value - min` may not fit an i64. The index is
                // at most the bucket count (value < max), and clamped to the
                // last bucket all the same.
                let last = b.len() - 1;
                let i = if value < min {
                    0
                } else if value >= max {
                    last
                } else {
                    let k = (i128::from(value) - i128::from(min)) / i128::from(step);
                    usize::try_from(k).map_or(last, |k| (k + 1).min(last))
                };
                b[i] = b[i].saturating_add(1);
            }
            _ => return Err(MapError::Invalid),
        }
        Ok(())
    }

    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Every histogram (hist and lhist maps), by map and key.
    pub fn histograms(&self) -> Vec<Histogram> {
        let mut out = Vec::new();
        for (name, m) in &self.maps {
            for (k, v) in &m.entries {
                if !matches!(v, Value_::Hist(_) | Value_::Lhist(_)) {
                    continue;
                }
                let buckets = bucket_list(m.op, v);
                out.push(Histogram {
                    map: name.clone(),
                    key: match k {
                        Key::None => None,
                        _ => Some(k.label()),
                    },
                    count: buckets.iter().map(|b| b.2).sum(),
                    buckets,
                    sum: m.sums.get(k).copied().unwrap_or(0),
                });
            }
        }
        out
    }

    /// The value of a count/sum/min/max map at `key` (for tests and
    /// summaries).
    pub fn get_int(&self, name: &str, key: &Key) -> Option<i64> {
        match self.maps.get(name)?.entries.get(key)? {
            Value_::Int(n) => Some(*n),
            Value_::Avg { count, sum } => Some(if *count == 0 { 0 } else { sum / *count as i64 }),
            _ => None,
        }
    }

    /// The counts of a histogram at `key`, bucket by bucket, as
    /// `(low, high, count)` with empty buckets left out.
    pub fn buckets(&self, name: &str, key: &Key) -> Vec<(i64, i64, u64)> {
        let Some(m) = self.maps.get(name) else {
            return Vec::new();
        };
        let Some(v) = m.entries.get(key) else {
            return Vec::new();
        };
        bucket_list(m.op, v)
    }

    /// Every map as JSON: `{name: {"kind": k, "values": [{"key", "value"}…]}}`.
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (name, m) in &self.maps {
            let values: Vec<Value> = m.entries.iter().map(|(k, v)| entry_json(m, k, v)).collect();
            out.insert(name.clone(), json!({"kind": m.op.name(), "values": values}));
        }
        Value::Object(out)
    }

    /// [`to_json`](Self::to_json) written to `out` entry by entry, asking
    /// `stop` before each: when it says so, the JSON is closed where it is
    /// (whole entries only) and `Ok(false)` says it was cut. A summary of
    /// many keys takes long to make; a stop signal must not wait for it.
    pub fn write_json(&self, out: &mut dyn Write, stop: &dyn Fn() -> bool) -> io::Result<bool> {
        out.write_all(b"{")?;
        for (i, (name, m)) in self.maps.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, name)?;
            out.write_all(b":{\"kind\":")?;
            serde_json::to_writer(&mut *out, m.op.name())?;
            out.write_all(b",\"values\":[")?;
            for (j, (k, v)) in m.entries.iter().enumerate() {
                if stop() {
                    out.write_all(b"]}}")?;
                    return Ok(false);
                }
                if j > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, &entry_json(m, k, v))?;
            }
            out.write_all(b"]}")?;
        }
        out.write_all(b"}")?;
        Ok(true)
    }

    /// Every map as text, histograms as bars, the way bpftrace prints them.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (name, m) in &self.maps {
            for (k, v) in &m.entries {
                entry_text(&mut s, name, m, k, v);
            }
        }
        s
    }

    /// [`to_text`](Self::to_text) written to `out` entry by entry, asking
    /// `stop` before each; `Ok(false)` when it said so and the text was
    /// cut (after a whole entry).
    pub fn write_text(&self, out: &mut dyn Write, stop: &dyn Fn() -> bool) -> io::Result<bool> {
        let mut s = String::new();
        for (name, m) in &self.maps {
            for (k, v) in &m.entries {
                if stop() {
                    return Ok(false);
                }
                s.clear();
                entry_text(&mut s, name, m, k, v);
                out.write_all(s.as_bytes())?;
            }
        }
        Ok(true)
    }
}

/// One entry of map `m` as JSON: `{"key": …, "value": …}`.
fn entry_json(m: &Map, k: &Key, v: &Value_) -> Value {
    let key = match k {
        Key::None => Value::Null,
        Key::Int(i) => json!(i),
        Key::Bytes(_) => json!(k.label()),
    };
    let value = match v {
        Value_::Int(n) => json!(n),
        Value_::Avg { count, sum } => json!({
            "count": count, "sum": sum,
            "avg": if *count == 0 { 0 } else { sum / *count as i64 }
        }),
        Value_::Hist(_) | Value_::Lhist(_) => Value::Array(
            bucket_list(m.op, v)
                .into_iter()
                .map(|(lo, hi, n)| json!({"low": lo, "high": hi, "count": n}))
                .collect(),
        ),
    };
    json!({"key": key, "value": value})
}

/// One entry of map `name` as text, appended to `s`.
fn entry_text(s: &mut String, name: &str, m: &Map, k: &Key, v: &Value_) {
    let label = match k {
        Key::None => format!("@{name}"),
        _ => format!("@{name}[{}]", k.label()),
    };
    match v {
        Value_::Int(n) => {
            let _ = writeln!(s, "{label}: {n}");
        }
        Value_::Avg { count, sum } => {
            let avg = if *count == 0 { 0 } else { sum / *count as i64 };
            let _ = writeln!(s, "{label}: {avg}");
        }
        _ => {
            let _ = writeln!(s, "{label}:");
            s.push_str(&bars(&bucket_list(m.op, v)));
            s.push('\n');
        }
    }
}

fn bucket_list(op: Op, v: &Value_) -> Vec<(i64, i64, u64)> {
    let mut out = Vec::new();
    match (op, v) {
        (_, Value_::Hist(b)) => {
            for (i, &n) in b.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let (lo, hi) = match i {
                    0 => (i64::MIN, 0),
                    1 => (0, 1),
                    k => {
                        let lo = 1i64.checked_shl((k - 2) as u32).unwrap_or(i64::MAX);
                        (lo, lo.checked_mul(2).unwrap_or(i64::MAX))
                    }
                };
                out.push((lo, hi, n));
            }
        }
        (Op::Lhist { min, max, step }, Value_::Lhist(b)) => {
            let last = b.len() - 1;
            for (i, &n) in b.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let (lo, hi) = if i == 0 {
                    (i64::MIN, min)
                } else if i == last {
                    (max, i64::MAX)
                } else {
                    // In i128, as the bucket count was: lo < max, and
                    // hi is at most max.
                    let lo = i128::from(min) + (i as i128 - 1) * i128::from(step);
                    let hi = (lo + i128::from(step)).min(i128::from(max));
                    let fit = |v: i128| i64::try_from(v).unwrap_or(max);
                    (fit(lo), fit(hi))
                };
                out.push((lo, hi, n));
            }
        }
        _ => {}
    }
    out
}

fn bound(v: i64) -> String {
    match v {
        i64::MIN => "...".into(),
        i64::MAX => "...".into(),
        v if v != 0 && v % (1 << 30) == 0 => format!("{}G", v >> 30),
        v if v != 0 && v % (1 << 20) == 0 => format!("{}M", v >> 20),
        v if v != 0 && v % (1 << 10) == 0 => format!("{}K", v >> 10),
        v => v.to_string(),
    }
}

/// bpftrace's bars: `[lo, hi)   count |@@@@@   |`, 52 columns at the most.
fn bars(buckets: &[(i64, i64, u64)]) -> String {
    let top = buckets.iter().map(|b| b.2).max().unwrap_or(0).max(1);
    let mut s = String::new();
    for &(lo, hi, n) in buckets {
        let range = if lo.checked_add(1) == Some(hi) {
            format!("[{}]", bound(lo))
        } else {
            format!("[{}, {})", bound(lo), bound(hi))
        };
        let width = (u128::from(n) * 52).div_ceil(u128::from(top)) as usize;
        let _ = writeln!(s, "{range:<20}{n:>8} |{:<52}|", "@".repeat(width));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps of two kinds, with `n` keys each.
    fn sample(n: i64) -> Maps {
        let mut m = Maps::default();
        for k in 0..n {
            m.update("a", Op::Count, Key::Int(k), 0, 1000).unwrap();
            m.update("h", Op::Hist, Key::Bytes(vec![b'k'; 200]), k, 1000)
                .unwrap();
            m.update("h", Op::Hist, Key::Int(k), k, 1000).unwrap();
        }
        m
    }

    #[test]
    fn writing_the_maps_asks_to_stop_at_each_entry_and_cuts_cleanly() {
        let maps = sample(50);
        let all = maps.to_json();
        let entries: usize = all
            .as_object()
            .unwrap()
            .values()
            .map(|m| m["values"].as_array().unwrap().len())
            .sum();
        // (entries written before `stop` says so; None: never)
        for after in [
            Some(0),
            Some(1),
            Some(50),
            Some(77),
            Some(entries - 1),
            None,
        ] {
            let asked = std::cell::Cell::new(0);
            let stop = || {
                asked.set(asked.get() + 1);
                after.is_some_and(|n| asked.get() > n)
            };
            let mut json = Vec::new();
            let whole = maps.write_json(&mut json, &stop).unwrap();
            let got: Value = serde_json::from_slice(&json)
                .unwrap_or_else(|e| panic!("cut after {after:?}: not JSON: {e}"));
            let written: usize = got
                .as_object()
                .unwrap()
                .values()
                .map(|m| m["values"].as_array().unwrap().len())
                .sum();
            assert_eq!(whole, after.is_none(), "cut after {after:?}");
            assert_eq!(written, after.unwrap_or(entries), "cut after {after:?}");
            if after.is_none() {
                assert_eq!(got, all);
            }
            asked.set(0);
            let mut text = Vec::new();
            let whole = maps.write_text(&mut text, &stop).unwrap();
            let text = String::from_utf8(text).unwrap();
            assert_eq!(whole, after.is_none(), "text cut after {after:?}");
            assert_eq!(
                text.lines().filter(|l| l.starts_with('@')).count(),
                after.unwrap_or(entries),
                "text cut after {after:?}"
            );
            assert!(
                maps.to_text().starts_with(&text),
                "text cut after {after:?}"
            );
        }
    }

    #[test]
    fn aggregations_and_kinds() {
        let mut m = Maps::default();
        for v in [5, -3, 9] {
            m.update("c", Op::Count, Key::Int(1), v, 100).unwrap();
            m.update("s", Op::Sum, Key::None, v, 100).unwrap();
            m.update("lo", Op::Min, Key::None, v, 100).unwrap();
            m.update("hi", Op::Max, Key::None, v, 100).unwrap();
            m.update("a", Op::Avg, Key::Bytes(b"x".to_vec()), v, 100)
                .unwrap();
        }
        assert_eq!(m.get_int("c", &Key::Int(1)), Some(3));
        assert_eq!(m.get_int("s", &Key::None), Some(11));
        assert_eq!(m.get_int("lo", &Key::None), Some(-3));
        assert_eq!(m.get_int("hi", &Key::None), Some(9));
        assert_eq!(m.get_int("a", &Key::Bytes(b"x".to_vec())), Some(3));
        // A map keeps the kind of its first update.
        assert_eq!(
            m.update("c", Op::Sum, Key::Int(1), 1, 100),
            Err(MapError::Invalid)
        );
    }

    #[test]
    fn log2_and_linear_buckets() {
        let mut m = Maps::default();
        for v in [0, 1, 2, 3, 4, 1000, -7] {
            m.update("h", Op::Hist, Key::None, v, 100).unwrap();
        }
        assert_eq!(
            m.buckets("h", &Key::None),
            vec![
                (i64::MIN, 0, 1),
                (0, 1, 1),
                (1, 2, 1),
                (2, 4, 2),
                (4, 8, 1),
                (512, 1024, 1)
            ]
        );
        let op = Op::Lhist {
            min: 0,
            max: 100,
            step: 10,
        };
        for v in [-1, 0, 9, 10, 99, 100, 5000] {
            m.update("l", op, Key::None, v, 100).unwrap();
        }
        assert_eq!(
            m.buckets("l", &Key::None),
            vec![
                (i64::MIN, 0, 1),
                (0, 10, 2),
                (10, 20, 1),
                (90, 100, 1),
                (100, i64::MAX, 2)
            ]
        );
        let bad = Op::Lhist {
            min: 5,
            max: 5,
            step: 1,
        };
        assert_eq!(
            m.update("z", bad, Key::None, 1, 100),
            Err(MapError::Invalid)
        );
        let text = m.to_text();
        assert!(text.contains("@h:\n"), "{text}");
        assert!(text.contains("[512, 1K)"), "{text}");
    }

    #[test]
    fn lhist_bounds_at_the_ends_of_i64_are_checked_not_overflowed() {
        // (min, max, step, values, expect): `None` refused, else the
        // buckets.
        type Case = (i64, i64, i64, &'static [i64], Option<Vec<(i64, i64, u64)>>);
        let cases: &[Case] = &[
            // Issue 17: `max - min` overflows i64; 2^64 buckets.
            (i64::MIN, i64::MAX, 1, &[0], None),
            // `max - min` = 2^63 wrapped to i64::MIN: a capacity overflow
            // once; four buckets in fact.
            (
                -(1 << 62),
                1 << 62,
                1 << 61,
                &[-(1 << 62), 0, (1 << 62) - 1, 1 << 62],
                Some(vec![
                    (-(1 << 62), -(1 << 61), 1),
                    (0, 1 << 61, 1),
                    (1 << 61, 1 << 62, 1),
                    (1 << 62, i64::MAX, 1),
                ]),
            ),
            (0, 10, 0, &[0], None),
            (0, 10, -1, &[0], None),
            (0, 100_001, 10, &[0], None),
            // The widest bounds with few buckets are fine.
            (
                i64::MIN,
                i64::MAX,
                1 << 62,
                &[i64::MIN, -1, 0, i64::MAX - 1, i64::MAX],
                Some(vec![
                    (i64::MIN, -(1 << 62), 1),
                    (-(1 << 62), 0, 1),
                    (0, 1 << 62, 1),
                    (1 << 62, i64::MAX, 1),
                    (i64::MAX, i64::MAX, 1),
                ]),
            ),
            // A step wider than the range: one bucket, `[min, max)`.
            (0, 5, 10, &[4, 5], Some(vec![(0, 5, 1), (5, i64::MAX, 1)])),
            // A range that is not a multiple of the step: the last bucket
            // is narrower, and a value below max is in it, not above.
            (0, 25, 10, &[22], Some(vec![(20, 25, 1)])),
        ];
        for (min, max, step, values, expect) in cases {
            let mut m = Maps::default();
            let op = Op::Lhist {
                min: *min,
                max: *max,
                step: *step,
            };
            let got: Result<(), MapError> = values
                .iter()
                .try_for_each(|v| m.update("l", op, Key::None, *v, 100));
            match expect {
                None => assert_eq!(got, Err(MapError::Invalid), "{min} {max} {step}"),
                Some(b) => {
                    assert_eq!(got, Ok(()), "{min} {max} {step}");
                    assert_eq!(&m.buckets("l", &Key::None), b, "{min} {max} {step}");
                    m.to_text();
                }
            }
        }
    }

    #[test]
    fn keys_are_capped_and_the_overflow_counted() {
        let mut m = Maps::default();
        for i in 0..10 {
            m.update("c", Op::Count, Key::Int(i), 0, 4).ok();
        }
        assert_eq!(m.keys(), 4);
        assert_eq!(m.overflow, 6);
        // Existing keys still count.
        m.update("c", Op::Count, Key::Int(0), 0, 4).unwrap();
        assert_eq!(m.get_int("c", &Key::Int(0)), Some(2));
    }
}
