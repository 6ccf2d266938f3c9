//! JSON shapes that `wprobe trace` and `wprobe serve` share. Events are
//! written field by field rather than through a `serde_json::Map` (a map of
//! 27 registers per event was most of the cost of one).

use std::io::Write;

use serde_json::{json, Map, Value};
use wprobe_core::arch::native::Regs;
use wprobe_core::proto::CaptureValue;

/// `[a,b,...]`.
pub fn write_u64s(o: &mut impl Write, xs: &[u64]) {
    let _ = o.write_all(b"[");
    for (i, x) in xs.iter().enumerate() {
        let _ = write!(o, "{}{x}", if i == 0 { "" } else { "," });
    }
    let _ = o.write_all(b"]");
}

/// `{"r15":…,…,"gs":…}`: every register by name, as decimal numbers.
pub fn write_regs(o: &mut impl Write, regs: &Regs) {
    let _ = o.write_all(b"{");
    for (i, (k, v)) in regs.named().iter().enumerate() {
        let _ = write!(o, "{}\"{k}\":{v}", if i == 0 { "" } else { "," });
    }
    let _ = o.write_all(b"}");
}

/// `,"captures":{name: value, ...}`, or nothing when there are none.
pub fn write_captures(o: &mut impl Write, captures: &[(String, CaptureValue)]) {
    if captures.is_empty() {
        return;
    }
    let caps: Map<String, Value> = captures
        .iter()
        .map(|(k, v)| (k.clone(), capture_value(v)))
        .collect();
    let _ = o.write_all(b",\"captures\":");
    let _ = serde_json::to_writer(&mut *o, &caps);
}

/// A capture's value: numbers as numbers, hex as a `0x` string, strings as
/// strings (`{"string", "truncated": true}` when cut at their bound),
/// bytes as hex, a failed fetch as `{"error"}`.
pub fn capture_value(v: &CaptureValue) -> Value {
    match v {
        CaptureValue::Unsigned(x) => json!(x),
        CaptureValue::Signed(x) => json!(x),
        CaptureValue::Hex(x) => json!(format!("{x:#x}")),
        CaptureValue::String { bytes, truncated } => {
            let s = String::from_utf8_lossy(bytes).into_owned();
            if *truncated {
                json!({"string": s, "truncated": true})
            } else {
                json!(s)
            }
        }
        CaptureValue::Bytes(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        CaptureValue::Error(e) => json!({ "error": e }),
    }
}
