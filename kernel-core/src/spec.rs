//! Probe specifications: where a probe goes and what it captures.
//!
//! The syntax is bpftrace's for the place and perf probe's for the
//! captures (its "fetch-args"):
//!
//! ```text
//! uprobe:/usr/bin/bash:readline                 entry of a function
//! uprobe:libc:malloc size=%rdi:u64             soname stem, a capture
//! uprobe:/path/bin:func+0x12 post               an instruction inside, with a post event
//! uprobe:/path/bin:0x401230                     a virtual address in that file
//! uprobe:0x7f12345678                           an address in the process
//! uprobe:libc:open path=+0($arg1):string        a string read at the first argument
//! ```
//!
//! Capture fetches: `%REG`, `$argN` (1-based, SysV order), `$stackN`
//! (Nth word above the stack pointer), `$stack`, `@ADDR`, and
//! `+OFF(FETCH)` / `-OFF(FETCH)` to read memory at FETCH plus OFF. Types:
//! `u8..u64`, `s8..s64`, `x8..x64`, `string` (up to 256 bytes),
//! `string[N]`, `bytes[N]` (N at most 4096).

use std::fmt;

/// Largest capture the engine reads at a hit.
pub const MAX_CAPTURE: usize = 4096;
/// Bound of a `string` capture without an explicit size.
pub const DEFAULT_STRING: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An entry probe (kprobe): fires before the instruction runs.
    Entry,
    /// A return probe (kretprobe).
    Return,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A symbol plus an offset into it.
    Symbol { name: String, offset: u64 },
    /// A virtual address in the module's file (as `objdump` shows it).
    FileAddress(u64),
    /// An address in the process (no module given).
    ProcessAddress(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    Reg(String),
    /// 1-based argument number.
    Arg(u8),
    /// Nth 8-byte word above the stack pointer.
    Stack(u32),
    StackPointer,
    Absolute(u64),
    /// Memory at the inner fetch plus an offset.
    Deref(i64, Box<Fetch>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureType {
    Unsigned(u8),
    Signed(u8),
    Hex(u8),
    /// NUL-terminated string, at most this many bytes.
    String(usize),
    Bytes(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub name: String,
    pub fetch: Fetch,
    pub ty: CaptureType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: Kind,
    /// A path or soname stem; `None` means the main executable (or, with a
    /// `ProcessAddress`, whatever is mapped there).
    pub module: Option<String>,
    pub location: Location,
    pub captures: Vec<Capture>,
    /// Report a post event after the instruction ran.
    pub post: bool,
    /// Accept a symbol whose size is zero or unknown.
    pub force: bool,
    /// Return probes: how many calls may be in flight at once (kretprobes'
    /// `maxactive`); further calls are counted in `nmissed`.
    pub maxactive: Option<u32>,
    /// Return probes: also report the entry of each call whose return will
    /// be reported (kretprobes' `entry_handler`), with the same timestamp
    /// as the return event's `entry_time_ns`, so the two can be paired.
    pub entry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad probe spec `{spec}`: {reason}")]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
}

/// The longest spec accepted, in bytes: far beyond any real one, and a
/// bound on the work (symbol lookups, suggestions) one spec can cause.
pub const MAX_SPEC_LEN: usize = 16 * 1024;

impl ProbeSpec {
    pub fn parse(text: &str) -> Result<ProbeSpec, SpecError> {
        if text.len() > MAX_SPEC_LEN {
            let head: String = text.chars().take(64).collect();
            return Err(SpecError {
                spec: format!("{head}…"),
                reason: format!(
                    "{} bytes long; the longest spec accepted is {MAX_SPEC_LEN} bytes",
                    text.len()
                ),
            });
        }
        if let Some(at) = text.find(|c: char| c.is_control() && !c.is_whitespace()) {
            return Err(SpecError {
                spec: text.escape_debug().to_string(),
                reason: format!(
                    "a control character ({:?}) at byte {at}; a spec is printable text",
                    text[at..].chars().next().unwrap_or_default()
                ),
            });
        }
        let err = |reason: String| SpecError {
            spec: text.to_string(),
            reason,
        };
        let mut words = text.split_whitespace();
        let head = words
            .next()
            .ok_or_else(|| err("empty; expected e.g. `uprobe:libc:malloc`".into()))?;
        let (kind_s, rest) = head.split_once(':').ok_or_else(|| {
            err("expected KIND:MODULE:LOCATION, e.g. `uprobe:/bin/bash:readline`".into())
        })?;
        let kind = match kind_s {
            "uprobe" | "u" | "p" => Kind::Entry,
            "uretprobe" | "ur" | "r" => Kind::Return,
            other => {
                return Err(err(format!(
                    "unknown probe kind `{other}` (use `uprobe` or `uretprobe`)"
                )))
            }
        };
        let (module, loc) = match split_module(rest) {
            Some((m, l)) => (Some(m.to_string()), l),
            None => (None, rest),
        };
        if module.as_deref() == Some("") {
            return Err(err("empty module name".into()));
        }
        let location = parse_location(loc, module.is_some()).map_err(err)?;
        let mut spec = ProbeSpec {
            kind,
            module,
            location,
            captures: Vec::new(),
            post: false,
            force: false,
            maxactive: None,
            entry: false,
        };
        if spec.kind == Kind::Return {
            if let Location::Symbol { offset, .. } = spec.location {
                if offset != 0 {
                    return Err(err(format!(
                        "a return probe goes on a function's entry; drop `+{offset:#x}`"
                    )));
                }
            }
        }
        for w in words {
            match w {
                "post" => spec.post = true,
                "force" => spec.force = true,
                "entry" if spec.kind == Kind::Return => spec.entry = true,
                "entry" => {
                    return Err(err(
                        "`entry` applies to return probes (an entry probe reports entries)".into(),
                    ))
                }
                _ if w.starts_with("maxactive=") => {
                    let n = &w["maxactive=".len()..];
                    match n.parse::<u32>() {
                        Ok(v @ 1..=100_000) if spec.kind == Kind::Return => {
                            spec.maxactive = Some(v)
                        }
                        Ok(_) if spec.kind == Kind::Return => {
                            return Err(err(format!(
                                "maxactive `{n}` must be between 1 and 100000"
                            )))
                        }
                        _ if spec.kind != Kind::Return => {
                            return Err(err("maxactive applies to return probes only".into()))
                        }
                        _ => return Err(err(format!("maxactive `{n}` is not a number"))),
                    }
                }
                _ => {
                    let c = parse_capture(w).map_err(err)?;
                    if spec.captures.iter().any(|o| o.name == c.name) {
                        return Err(err(format!("capture name `{}` used twice", c.name)));
                    }
                    spec.captures.push(c);
                }
            }
        }
        Ok(spec)
    }
}

/// Splits `MODULE:LOCATION` at the first colon that is not part of a C++
/// `::`, so that `ns::f` stays one location.
fn split_module(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b':' {
            if b.get(i + 1) == Some(&b':') {
                i += 2;
                continue;
            }
            return Some((&s[..i], &s[i + 1..]));
        }
        i += 1;
    }
    None
}

fn parse_number(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn parse_location(s: &str, has_module: bool) -> Result<Location, String> {
    if s.is_empty() {
        return Err("missing location: give a symbol, symbol+offset or an address".into());
    }
    if s.starts_with("0x") || s.starts_with("0X") {
        let a = parse_number(s).ok_or_else(|| format!("bad address `{s}`"))?;
        return Ok(if has_module {
            Location::FileAddress(a)
        } else {
            Location::ProcessAddress(a)
        });
    }
    if let Some((name, off)) = s.rsplit_once('+') {
        if let Some(offset) = parse_number(off) {
            if name.is_empty() {
                return Err(format!("missing symbol before `+{off}`"));
            }
            return Ok(Location::Symbol {
                name: name.to_string(),
                offset,
            });
        }
    }
    Ok(Location::Symbol {
        name: s.to_string(),
        offset: 0,
    })
}

fn parse_capture(w: &str) -> Result<Capture, String> {
    let (name, rest) = w.split_once('=').ok_or_else(|| {
        format!("`{w}` is not a capture: expected NAME=FETCH[:TYPE], e.g. `size=%rdi:u64`")
    })?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "capture name `{name}` must be letters, digits and `_`"
        ));
    }
    let (fetch_s, ty_s) = match rest.rsplit_once(':') {
        Some((f, t)) if !t.contains(')') => (f, Some(t)),
        _ => (rest, None),
    };
    let fetch = parse_fetch(fetch_s, 0)?;
    let ty = match ty_s {
        None => CaptureType::Hex(64),
        Some(t) => parse_type(t)?,
    };
    Ok(Capture {
        name: name.to_string(),
        fetch,
        ty,
    })
}

fn parse_type(t: &str) -> Result<CaptureType, String> {
    let sized = |prefix: &str| -> Option<Result<usize, String>> {
        let inner = t
            .strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?;
        Some(match parse_number(inner) {
            Some(n) if n > 0 && n as usize <= MAX_CAPTURE => Ok(n as usize),
            _ => Err(format!(
                "size `{inner}` in `{t}` must be between 1 and {MAX_CAPTURE}"
            )),
        })
    };
    if t == "string" {
        return Ok(CaptureType::String(DEFAULT_STRING));
    }
    if let Some(n) = sized("string") {
        return n.map(CaptureType::String);
    }
    if let Some(n) = sized("bytes") {
        return n.map(CaptureType::Bytes);
    }
    // By prefix, not by splitting at byte 1: `t` may be empty, or start
    // with a character longer than a byte.
    let (ctor, bits): (fn(u8) -> CaptureType, &str) = if let Some(b) = t.strip_prefix('u') {
        (CaptureType::Unsigned, b)
    } else if let Some(b) = t.strip_prefix('s') {
        (CaptureType::Signed, b)
    } else if let Some(b) = t.strip_prefix('x') {
        (CaptureType::Hex, b)
    } else {
        return Err(type_error(t));
    };
    match bits {
        "8" | "16" | "32" | "64" => Ok(ctor(bits.parse().expect("literal"))),
        _ => Err(type_error(t)),
    }
}

fn type_error(t: &str) -> String {
    format!(
        "unknown capture type `{t}` (use u8..u64, s8..s64, x8..x64, string, string[N] or bytes[N])"
    )
}

/// How many `OFF(...)` memory reads a fetch may nest: a bound on the
/// parser's recursion, far above what a capture needs.
const MAX_DEREF_DEPTH: usize = 16;

/// Parses a fetch nested inside `depth` memory reads.
fn parse_fetch(s: &str, depth: usize) -> Result<Fetch, String> {
    if let Some(r) = s.strip_prefix('%') {
        return Ok(Fetch::Reg(r.to_ascii_lowercase()));
    }
    if let Some(n) = s.strip_prefix("$arg") {
        return match n.parse::<u8>() {
            Ok(n @ 1..=6) => Ok(Fetch::Arg(n)),
            _ => Err(format!(
                "`{s}`: only $arg1..$arg6 are in registers (use $stackN for later arguments)"
            )),
        };
    }
    if s == "$stack" {
        return Ok(Fetch::StackPointer);
    }
    if let Some(n) = s.strip_prefix("$stack") {
        return n
            .parse()
            .map(Fetch::Stack)
            .map_err(|_| format!("bad stack slot `{s}`"));
    }
    if let Some(a) = s.strip_prefix('@') {
        return parse_number(a)
            .map(Fetch::Absolute)
            .ok_or_else(|| format!("bad address `{s}`"));
    }
    if let (Some(open), true) = (s.find('('), s.ends_with(')')) {
        let off_s = &s[..open];
        let inner = &s[open + 1..s.len() - 1];
        let (negative, magnitude) = match off_s.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, off_s.strip_prefix('+').unwrap_or(off_s)),
        };
        let magnitude =
            parse_number(magnitude).ok_or_else(|| format!("bad offset `{off_s}` in `{s}`"))?;
        let off = if negative {
            0i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(magnitude).ok()
        }
        .ok_or_else(|| {
            format!(
                "offset `{off_s}` in `{s}` is out of range: it must be between \
                 -0x8000000000000000 and +0x7fffffffffffffff"
            )
        })?;
        if depth >= MAX_DEREF_DEPTH {
            return Err(format!(
                "`{s}` nests memory reads more than {MAX_DEREF_DEPTH} deep; read fewer levels"
            ));
        }
        return Ok(Fetch::Deref(off, Box::new(parse_fetch(inner, depth + 1)?)));
    }
    Err(format!(
        "bad fetch `{s}`: use %REG, $argN, $stackN, $stack, @ADDR or OFF(FETCH)"
    ))
}

/// The canonical text of a spec: it parses back to the same spec. Kinds
/// are spelled out (`uprobe`, `uretprobe`), numbers are hex, and every
/// capture names its type.
impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Entry => f.write_str("uprobe:")?,
            Kind::Return => f.write_str("uretprobe:")?,
        }
        if let Some(module) = &self.module {
            write!(f, "{module}:")?;
        }
        write!(f, "{}", self.location)?;
        if self.post {
            f.write_str(" post")?;
        }
        if self.force {
            f.write_str(" force")?;
        }
        if self.entry {
            f.write_str(" entry")?;
        }
        if let Some(n) = self.maxactive {
            write!(f, " maxactive={n}")?;
        }
        for c in &self.captures {
            write!(f, " {}={}:{}", c.name, c.fetch, c.ty)?;
        }
        Ok(())
    }
}

impl fmt::Display for Fetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fetch::Reg(r) => write!(f, "%{r}"),
            Fetch::Arg(n) => write!(f, "$arg{n}"),
            Fetch::Stack(n) => write!(f, "$stack{n}"),
            Fetch::StackPointer => f.write_str("$stack"),
            Fetch::Absolute(a) => write!(f, "@{a:#x}"),
            Fetch::Deref(off, inner) if *off < 0 => {
                write!(f, "-{:#x}({inner})", off.unsigned_abs())
            }
            Fetch::Deref(off, inner) => write!(f, "+{off:#x}({inner})"),
        }
    }
}

impl fmt::Display for CaptureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureType::Unsigned(bits) => write!(f, "u{bits}"),
            CaptureType::Signed(bits) => write!(f, "s{bits}"),
            CaptureType::Hex(bits) => write!(f, "x{bits}"),
            CaptureType::String(DEFAULT_STRING) => f.write_str("string"),
            CaptureType::String(n) => write!(f, "string[{n}]"),
            CaptureType::Bytes(n) => write!(f, "bytes[{n}]"),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A name that itself ends in `+NUMBER` keeps its `+0x0`, or it
            // would read back as that number of bytes into a shorter name.
            Location::Symbol { name, offset: 0 }
                if name
                    .rsplit_once('+')
                    .is_some_and(|(_, off)| parse_number(off).is_some()) =>
            {
                write!(f, "{name}+0x0")
            }
            Location::Symbol { name, offset: 0 } => write!(f, "{name}"),
            Location::Symbol { name, offset } => write!(f, "{name}+{offset:#x}"),
            Location::FileAddress(a) | Location::ProcessAddress(a) => write!(f, "{a:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let got = match ProbeSpec::parse(input) {
            Ok(s) => format!(
                "{:?} {:?} {}{}{} {:?}",
                s.kind,
                s.module,
                s.location,
                if s.post { " post" } else { "" },
                if s.force { " force" } else { "" },
                s.captures
                    .iter()
                    .map(|c| format!("{}={:?}:{:?}", c.name, c.fetch, c.ty))
                    .collect::<Vec<_>>()
            ),
            Err(e) => format!("error: {}", e.reason),
        };
        assert_eq!(got, expect, "input: {input}");
    }

    #[test]
    fn specs() {
        check("uprobe:libc:malloc", r#"Entry Some("libc") malloc []"#);
        check(
            "uprobe:/usr/bin/bash:readline",
            r#"Entry Some("/usr/bin/bash") readline []"#,
        );
        check(
            "uprobe:/b:func+0x12 post",
            r#"Entry Some("/b") func+0x12 post []"#,
        );
        check("uprobe:/b:func+18", r#"Entry Some("/b") func+0x12 []"#);
        check("uprobe:/b:0x401230", r#"Entry Some("/b") 0x401230 []"#);
        check("uprobe:0x7f0000001000", "Entry None 0x7f0000001000 []");
        check("uprobe:main", "Entry None main []");
        check(
            "uprobe:/b:ns::Widget::frob",
            r#"Entry Some("/b") ns::Widget::frob []"#,
        );
        check("uprobe:ns::f", "Entry None ns::f []");
        check("uretprobe:libc:malloc", r#"Return Some("libc") malloc []"#);
        check(
            "uretprobe:/b:f+4",
            "error: a return probe goes on a function's entry; drop `+0x4`",
        );
        check(
            "uprobe:/b:f maxactive=3",
            "error: maxactive applies to return probes only",
        );
        check(
            "uretprobe:/b:f maxactive=0",
            "error: maxactive `0` must be between 1 and 100000",
        );
        check("uprobe:/b:f force", r#"Entry Some("/b") f force []"#);
        check(
            "kprobe:x",
            "error: unknown probe kind `kprobe` (use `uprobe` or `uretprobe`)",
        );
        check(
            "uprobe:libc:",
            "error: missing location: give a symbol, symbol+offset or an address",
        );
        check("uprobe::f", "error: empty module name");
        check(
            "uprobe",
            "error: expected KIND:MODULE:LOCATION, e.g. `uprobe:/bin/bash:readline`",
        );
    }

    #[test]
    fn captures() {
        check(
            "uprobe:libc:malloc size=%rdi:u64",
            r#"Entry Some("libc") malloc ["size=Reg(\"rdi\"):Unsigned(64)"]"#,
        );
        check(
            "uprobe:libc:open path=+0($arg1):string",
            r#"Entry Some("libc") open ["path=Deref(0, Arg(1)):String(256)"]"#,
        );
        check(
            "uprobe:/b:f buf=-8(%rsp):bytes[16] s=$stack2:s32 a=@0x1000:x8 sp=$stack",
            r#"Entry Some("/b") f ["buf=Deref(-8, Reg(\"rsp\")):Bytes(16)", "s=Stack(2):Signed(32)", "a=Absolute(4096):Hex(8)", "sp=StackPointer:Hex(64)"]"#,
        );
        check(
            "uprobe:/b:f p=+8(+0(%rdi)):string[32]",
            r#"Entry Some("/b") f ["p=Deref(8, Deref(0, Reg(\"rdi\"))):String(32)"]"#,
        );
        check(
            "uprobe:/b:f x=$arg7",
            "error: `$arg7`: only $arg1..$arg6 are in registers (use $stackN for later arguments)",
        );
        check("uprobe:/b:f x=%rdi:u12", "error: unknown capture type `u12` (use u8..u64, s8..s64, x8..x64, string, string[N] or bytes[N])");
        check(
            "uprobe:/b:f x=%rdi:bytes[0]",
            "error: size `0` in `bytes[0]` must be between 1 and 4096",
        );
        check(
            "uprobe:/b:f x=%rdi y=%rsi x=%rdx",
            "error: capture name `x` used twice",
        );
        check(
            "uprobe:/b:f oops",
            "error: `oops` is not a capture: expected NAME=FETCH[:TYPE], e.g. `size=%rdi:u64`",
        );
        check("uprobe:/b:f x=%rdi:", "error: unknown capture type `` (use u8..u64, s8..s64, x8..x64, string, string[N] or bytes[N])");
        check("uprobe:/b:f x=%rdi:é", "error: unknown capture type `é` (use u8..u64, s8..s64, x8..x64, string, string[N] or bytes[N])");
        check(
            "uprobe:/b:f x=-0x8000000000000000(%rdi):u8",
            r#"Entry Some("/b") f ["x=Deref(-9223372036854775808, Reg(\"rdi\")):Unsigned(8)"]"#,
        );
        check(
            "uprobe:/b:f x=-0x8000000000000001(%rdi)",
            "error: offset `-0x8000000000000001` in `-0x8000000000000001(%rdi)` is out of range: it must be between -0x8000000000000000 and +0x7fffffffffffffff",
        );
        check(
            "uprobe:/b:f x=+0x8000000000000000(%rdi)",
            "error: offset `+0x8000000000000000` in `+0x8000000000000000(%rdi)` is out of range: it must be between -0x8000000000000000 and +0x7fffffffffffffff",
        );
        // Nesting is bounded, so a long spec cannot exhaust the stack.
        let nested = |n: usize| format!("uprobe:/b:f x={}%rdi{}", "0(".repeat(n), ")".repeat(n));
        assert!(ProbeSpec::parse(&nested(16)).is_ok());
        let deep = ProbeSpec::parse(&nested(17)).expect_err("17 levels are refused");
        assert!(
            deep.reason.contains("nests memory reads more than 16 deep"),
            "{deep}"
        );
        assert!(ProbeSpec::parse(&nested(300_000)).is_err());
        check(
            "uprobe:/b:f x=rdi",
            "error: bad fetch `rdi`: use %REG, $argN, $stackN, $stack, @ADDR or OFF(FETCH)",
        );
    }
}

#[cfg(test)]
mod props;
