//! Just enough JSON for a plugin without serde: [`JsonObject`] writes the
//! records a handler [`emit`]s, and [`get`] reads a top-level
//! field of the configuration `wprobe_init` gets.

use std::fmt::Write as _;

use crate::host::{emit, Error};

/// Appends `s` to `out` as a JSON string, quotes included: `"`, `\` and
/// control characters are escaped, everything else is kept as it is.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a JSON string, quotes included.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

/// A JSON object written field by field:
///
/// ```
/// use wprobe_plugin_sdk::JsonObject;
///
/// let mut o = JsonObject::new();
/// o.u64("probe", 3).str("path", "/tmp/\"x\"").hex("addr", 0x401000);
/// assert_eq!(o.finish(), r#"{"probe":3,"path":"/tmp/\"x\"","addr":"0x401000"}"#);
/// ```
///
/// Keys are escaped like values; the writer does not check that they are
/// unique.
#[derive(Clone, Debug, Default)]
pub struct JsonObject {
    /// The text so far, without the closing brace.
    buf: String,
}

impl JsonObject {
    /// An empty object.
    pub fn new() -> JsonObject {
        JsonObject {
            buf: String::from("{"),
        }
    }

    /// Starts a field: the separator and the key.
    fn key(&mut self, key: &str) -> &mut String {
        if self.buf.is_empty() {
            self.buf.push('{');
        } else if self.buf.len() > 1 {
            self.buf.push(',');
        }
        write_str(&mut self.buf, key);
        self.buf.push(':');
        &mut self.buf
    }

    /// An unsigned integer field.
    pub fn u64(&mut self, key: &str, v: u64) -> &mut Self {
        let _ = write!(self.key(key), "{v}");
        self
    }

    /// A signed integer field.
    pub fn i64(&mut self, key: &str, v: i64) -> &mut Self {
        let _ = write!(self.key(key), "{v}");
        self
    }

    /// A number field; NaN and infinities, which JSON has not, are `null`.
    pub fn f64(&mut self, key: &str, v: f64) -> &mut Self {
        let out = self.key(key);
        if v.is_finite() {
            let _ = write!(out, "{v}");
        } else {
            out.push_str("null");
        }
        self
    }

    /// A boolean field.
    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.key(key).push_str(if v { "true" } else { "false" });
        self
    }

    /// A `null` field.
    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key).push_str("null");
        self
    }

    /// A string field.
    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        write_str(self.key(key), v);
        self
    }

    /// A string field from bytes that may not be UTF-8 (memory of the
    /// target): invalid sequences become U+FFFD.
    pub fn str_lossy(&mut self, key: &str, v: &[u8]) -> &mut Self {
        write_str(self.key(key), &String::from_utf8_lossy(v));
        self
    }

    /// An address or other integer as a `"0x…"` string, as the host shows
    /// addresses.
    pub fn hex(&mut self, key: &str, v: u64) -> &mut Self {
        let _ = write!(self.key(key), "\"{v:#x}\"");
        self
    }

    /// An array of unsigned integers.
    pub fn u64_array(&mut self, key: &str, vs: &[u64]) -> &mut Self {
        let out = self.key(key);
        out.push('[');
        for (i, v) in vs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{v}");
        }
        out.push(']');
        self
    }

    /// A nested object.
    pub fn object(&mut self, key: &str, v: &JsonObject) -> &mut Self {
        let inner = v.finish();
        self.key(key).push_str(&inner);
        self
    }

    /// A field whose value is JSON text the caller vouches for.
    pub fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key).push_str(json);
        self
    }

    /// The object's text.
    pub fn finish(&self) -> String {
        let mut s = String::with_capacity(self.buf.len() + 2);
        s.push_str(if self.buf.is_empty() { "{" } else { &self.buf });
        s.push('}');
        s
    }

    /// [`emit`]s the object as a record of the event stream.
    pub fn emit(&self) -> Result<(), Error> {
        emit(&self.finish())
    }
}

/// A value found by [`get`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as its text.
    Number(&'a str),
    /// A string, unescaped.
    Str(String),
    /// An object or array, as its text.
    Composite(&'a str),
}

impl Value<'_> {
    /// A number that is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    /// A number that is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    /// A number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// The value as JSON text (a string quoted and escaped again).
impl std::fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) | Value::Composite(n) => f.write_str(n),
            Value::Str(s) => f.write_str(&quote(s)),
        }
    }
}

/// Why [`get`] could not read the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// The byte offset where the text stopped making sense.
    pub offset: usize,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid JSON at byte {}", self.offset)
    }
}

impl std::error::Error for SyntaxError {}

/// The value of field `key` of the JSON object `text` (the last one, if
/// the key repeats); `Ok(None)` when it has no such field. `text` must be
/// one object; anything else is a [`SyntaxError`].
///
/// ```
/// use wprobe_plugin_sdk::json;
///
/// let config = r#"{"arg": 1, "max": 256, "name": "open\tat"}"#;
/// assert_eq!(json::get(config, "arg").unwrap().and_then(|v| v.as_u64()), Some(1));
/// assert_eq!(json::get(config, "name").unwrap().unwrap().as_str(), Some("open\tat"));
/// assert_eq!(json::get(config, "missing").unwrap(), None);
/// ```
pub fn get<'a>(text: &'a str, key: &str) -> Result<Option<Value<'a>>, SyntaxError> {
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        at: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let mut found = None;
    p.ws();
    if p.peek() == Some(b'}') {
        p.at += 1;
    } else {
        loop {
            p.ws();
            let k = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let v = p.value()?;
            if k == key {
                found = Some(v);
            }
            p.ws();
            match p.peek() {
                Some(b',') => p.at += 1,
                Some(b'}') => {
                    p.at += 1;
                    break;
                }
                _ => return Err(p.error()),
            }
        }
    }
    p.ws();
    if p.at != p.s.len() {
        return Err(p.error());
    }
    Ok(found)
}

/// A recursive-descent reader of RFC 8259 JSON, nested at most 64 deep.
struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn error(&self) -> SyntaxError {
        SyntaxError { offset: self.at }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Result<(), SyntaxError> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn value(&mut self) -> Result<Value<'a>, SyntaxError> {
        let start = self.at;
        match self.peek() {
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'{' | b'[') => {
                self.skip_composite(0)?;
                Ok(Value::Composite(&self.text[start..self.at]))
            }
            Some(b't') => self.word("true", Value::Bool(true)),
            Some(b'f') => self.word("false", Value::Bool(false)),
            Some(b'n') => self.word("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Ok(Value::Number(&self.text[start..self.at]))
            }
            _ => Err(self.error()),
        }
    }

    fn word(&mut self, w: &str, v: Value<'a>) -> Result<Value<'a>, SyntaxError> {
        if self.s[self.at..].starts_with(w.as_bytes()) {
            self.at += w.len();
            Ok(v)
        } else {
            Err(self.error())
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<(), SyntaxError> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error()),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.error());
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.error());
            }
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let digits = self
            .s
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.error())?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error())?;
        let v = u32::from_str_radix(text, 16).map_err(|_| self.error())?;
        self.at += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote or backslash as it is.
            let start = self.at;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.at += 1;
            }
            out.push_str(&self.text[start..self.at]);
            match self.next() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => {}
                _ => {
                    self.at = self.at.saturating_sub(1);
                    return Err(self.error());
                }
            }
            let c = match self.next() {
                Some(b'"') => '"',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'b') => '\u{8}',
                Some(b'f') => '\u{c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => {
                    let hi = self.hex4()?;
                    let code = if (0xd800..0xdc00).contains(&hi) {
                        // A surrogate pair: the low half must follow.
                        if !self.s[self.at..].starts_with(b"\\u") {
                            return Err(self.error());
                        }
                        self.at += 2;
                        let lo = self.hex4()?;
                        if !(0xdc00..0xe000).contains(&lo) {
                            return Err(self.error());
                        }
                        0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                    } else {
                        hi
                    };
                    char::from_u32(code).ok_or_else(|| self.error())?
                }
                _ => return Err(self.error()),
            };
            out.push(c);
        }
    }

    fn skip_composite(&mut self, depth: usize) -> Result<(), SyntaxError> {
        if depth >= 64 {
            return Err(self.error());
        }
        let close = match self.next() {
            Some(b'{') => b'}',
            Some(b'[') => b']',
            _ => return Err(self.error()),
        };
        self.ws();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if close == b'}' {
                self.string()?;
                self.ws();
                self.expect(b':')?;
                self.ws();
            }
            match self.peek() {
                Some(b'{' | b'[') => self.skip_composite(depth + 1)?,
                _ => {
                    self.value()?;
                }
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(c) if c == close => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(self.error()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_str(input: &str, expect: &str) {
        assert_eq!(quote(input), expect);
    }

    #[test]
    fn strings_are_escaped() {
        check_str("plain", r#""plain""#);
        check_str("", r#""""#);
        check_str("say \"hi\"", r#""say \"hi\"""#);
        check_str("C:\\dir", r#""C:\\dir""#);
        check_str("a\nb\rc\td", r#""a\nb\rc\td""#);
        check_str("\u{0}\u{1f}\u{8}\u{c}", r#""\u0000\u001f\b\f""#);
        check_str("\u{7f}é€😀", "\"\u{7f}é€😀\"");
        check_str("</script>", r#""</script>""#);
    }

    #[test]
    fn objects_are_written_in_order() {
        let mut o = JsonObject::new();
        assert_eq!(o.finish(), "{}");
        o.u64("a", u64::MAX)
            .i64("b", i64::MIN)
            .bool("c", true)
            .null("d");
        o.f64("e", 1.5)
            .f64("nan", f64::NAN)
            .str_lossy("f", b"ok\xff");
        o.u64_array("args", &[1, 2])
            .u64_array("none", &[])
            .hex("addr", 0);
        let mut inner = JsonObject::new();
        inner.str("k\"", "v");
        o.object("inner", &inner).raw("raw", "[true]");
        assert_eq!(
            o.finish(),
            r#"{"a":18446744073709551615,"b":-9223372036854775808,"c":true,"d":null,"e":1.5,"nan":null,"f":"ok�","args":[1,2],"none":[],"addr":"0x0","inner":{"k\"":"v"},"raw":[true]}"#
        );
        assert_eq!(JsonObject::default().str("x", "y").finish(), r#"{"x":"y"}"#);
        assert_eq!(JsonObject::default().finish(), "{}");
    }

    fn check_get(text: &str, key: &str, expect: Result<Option<Value>, usize>) {
        assert_eq!(
            get(text, key),
            expect.map_err(|offset| SyntaxError { offset }),
            "{text}"
        );
    }

    #[test]
    fn fields_are_found_at_the_top_level_only() {
        check_get("{}", "arg", Ok(None));
        check_get(" { \"arg\" : 2 } ", "arg", Ok(Some(Value::Number("2"))));
        check_get(
            r#"{"arg":-1.5e3}"#,
            "arg",
            Ok(Some(Value::Number("-1.5e3"))),
        );
        check_get(
            r#"{"a":{"arg":1},"arg":[1,{"x":[]}]}"#,
            "arg",
            Ok(Some(Value::Composite(r#"[1,{"x":[]}]"#))),
        );
        check_get(r#"{"a":{"arg":1}}"#, "arg", Ok(None));
        check_get(r#"{"arg":1,"arg":2}"#, "arg", Ok(Some(Value::Number("2"))));
        check_get(
            r#"{"s":"a\"b\\c\u00e9\ud83d\ude00\n"}"#,
            "s",
            Ok(Some(Value::Str("a\"b\\cé😀\n".into()))),
        );
        check_get(
            r#"{"t":true,"f":false,"n":null}"#,
            "f",
            Ok(Some(Value::Bool(false))),
        );
        check_get(
            r#"{"t":true,"f":false,"n":null}"#,
            "n",
            Ok(Some(Value::Null)),
        );
        check_get(r#"{"a\u0072g":3}"#, "arg", Ok(Some(Value::Number("3"))));
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        check_get("", "a", Err(0));
        check_get("[]", "a", Err(0));
        check_get("{", "a", Err(1));
        check_get(r#"{"a":1"#, "a", Err(6));
        check_get(r#"{"a":1,}"#, "a", Err(7));
        check_get(r#"{"a":01}"#, "a", Err(6));
        check_get(r#"{"a":1.}"#, "a", Err(7));
        check_get(r#"{"a":tru}"#, "a", Err(5));
        check_get(r#"{"a":"x"} x"#, "a", Err(10));
        check_get("{\"a\":\"\u{1}\"}", "a", Err(6));
        check_get(r#"{"a":"\u12"}"#, "a", Err(8));
        check_get(r#"{"a":"\ud800"}"#, "a", Err(12));
        check_get(r#"{"a":"\x"}"#, "a", Err(8));
        check_get(r#"{"a":[1 2]}"#, "a", Err(8));
        check_get(
            &format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100)),
            "a",
            Err(69),
        );
        // Every prefix of a valid text is refused without a panic.
        let text = r#"{"a": [1, {"b": "\u00e9"}], "c": -2.5e-3, "d": "é"}"#;
        for cut in 0..text.len() {
            if text.is_char_boundary(cut) {
                assert!(get(&text[..cut], "a").is_err(), "{cut}");
            }
        }
        assert!(get(text, "d").is_ok());
    }

    #[test]
    fn values_convert() {
        assert_eq!(Value::Number("12").as_u64(), Some(12));
        assert_eq!(Value::Number("-12").as_u64(), None);
        assert_eq!(Value::Number("-12").as_i64(), Some(-12));
        assert_eq!(Value::Number("1.5").as_f64(), Some(1.5));
        assert_eq!(Value::Str("x".into()).as_str(), Some("x"));
        assert_eq!(Value::Bool(true).as_bool(), Some(true));
        assert_eq!(Value::Null.as_u64(), None);
        assert_eq!(Value::Str("a\"b".into()).to_string(), r#""a\"b""#);
        assert_eq!(Value::Composite("[1, 2]").to_string(), "[1, 2]");
        assert_eq!(Value::Bool(false).to_string(), "false");
    }
}
