//! JSON shapes that `wprobe trace` and `wprobe serve` share.

use serde_json::{json, Value};
use wprobe_core::proto::CaptureValue;

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
