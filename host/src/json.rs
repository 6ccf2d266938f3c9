//! JSON shapes that `wprobe trace` and `wprobe serve` share. Events are
//! written field by field rather than through a `serde_json::Map` (a map of
//! 27 registers per event was most of the cost of one).

use std::io::Write;

use serde_json::{json, Map, Value};
use wprobe_core::arch::native::Regs;
use wprobe_core::proto::CaptureValue;

/// `,"spec":…,"module":…,"symbol":…`: which probe fired, and where. The
/// same three fields in the events of `wprobe trace` and of `wprobe serve`
/// (docs/events.md), so a line says which function it is on its own.
/// `location` is the engine's `MODULE:SYMBOL+OFFSET` (the `location` of
/// the `Armed` notice); empty when it is not known.
pub fn write_place(o: &mut impl Write, spec: &str, location: &str) {
    let (module, symbol) = split_location(location);
    let _ = o.write_all(b",\"spec\":");
    let _ = serde_json::to_writer(&mut *o, spec);
    let _ = o.write_all(b",\"module\":");
    let _ = serde_json::to_writer(&mut *o, module);
    let _ = o.write_all(b",\"symbol\":");
    let _ = serde_json::to_writer(&mut *o, symbol);
}

/// `/usr/lib/libc.so.6:malloc+0x4` → (`/usr/lib/libc.so.6`, `malloc+0x4`).
/// The module is an absolute path, the symbol may hold `::` (C++): the
/// first colon after the path's last `/` separates them.
pub fn split_location(location: &str) -> (&str, &str) {
    let from = location.rfind('/').unwrap_or(0);
    match location[from..].find(':') {
        Some(i) => (&location[..from + i], &location[from + i + 1..]),
        None => ("", location),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_into_module_and_symbol() {
        let check = |location: &str, expect: (&str, &str)| {
            assert_eq!(split_location(location), expect, "{location}");
        };
        check(
            "/usr/lib/libc.so.6:malloc",
            ("/usr/lib/libc.so.6", "malloc"),
        );
        check(
            "/b/app:ns::Widget::frob(int)+0x4",
            ("/b/app", "ns::Widget::frob(int)+0x4"),
        );
        check("/b/app:0x1139", ("/b/app", "0x1139"));
        check("/b/odd:dir/app:work", ("/b/odd:dir/app", "work"));
        check("", ("", ""));
    }

    #[test]
    fn place_fields() {
        let mut o = Vec::new();
        write_place(&mut o, "uprobe:libc:malloc", "/usr/lib/libc.so.6:malloc");
        assert_eq!(
            String::from_utf8(o).unwrap(),
            r#","spec":"uprobe:libc:malloc","module":"/usr/lib/libc.so.6","symbol":"malloc""#
        );
    }
}
