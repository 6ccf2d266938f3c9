//! Property tests of the spec parser: it never panics, on arbitrary text
//! and on text built from the grammar's own pieces, and whatever parses
//! prints back (`Display`) to text that parses to the same spec.

use proptest::collection::vec;
use proptest::prelude::*;

use super::ProbeSpec;

/// Parses `text`; when it parses, checks the printed form parses to the
/// same spec and prints the same (the printed form is canonical).
fn check(text: &str) -> bool {
    let Ok(spec) = ProbeSpec::parse(text) else {
        return false;
    };
    let printed = spec.to_string();
    match ProbeSpec::parse(&printed) {
        Ok(again) => {
            assert_eq!(
                again, spec,
                "`{text}` printed as `{printed}` parses differently"
            );
            assert_eq!(again.to_string(), printed, "`{printed}` is not canonical");
        }
        Err(e) => panic!("`{text}` printed as `{printed}`, which does not parse: {e}"),
    }
    true
}

/// Pieces of the grammar, and of its near misses, to build specs from.
const PIECES: &[&str] = &[
    "uprobe:",
    "uretprobe:",
    "u:",
    "r:",
    "p:",
    "kprobe:",
    ":",
    "::",
    "libc:",
    "/b:",
    "0x",
    "0X",
    "1f",
    "+",
    "-",
    "+0x",
    "18",
    "f",
    "ns::f",
    " ",
    " post",
    " force",
    " entry",
    " maxactive=",
    "0",
    "100000",
    "100001",
    " x=",
    " y=",
    "=",
    "%rdi",
    "%RSP",
    "%",
    "$arg",
    "$arg1",
    "$arg7",
    "$stack",
    "$stack2",
    "@",
    "@0x1000",
    "(",
    ")",
    "+8(",
    "-8(",
    ":u8",
    ":s16",
    ":x64",
    ":u12",
    ":",
    ":string",
    ":string[",
    ":bytes[",
    "]",
    "4096",
    "4097",
    "0x8000000000000000",
    "0xffffffffffffffff",
    "é",
    "\u{0}",
    "\t",
];

fn pieces() -> impl Strategy<Value = String> {
    vec(prop::sample::select(PIECES), 0..16).prop_map(|p| p.concat())
}

/// A well-formed fetch, nested a few levels.
fn fetch() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        "%[a-zA-Z0-9]{0,4}",
        (0u8..9).prop_map(|n| format!("$arg{n}")),
        any::<u32>().prop_map(|n| format!("$stack{n}")),
        Just("$stack".to_string()),
        any::<u64>().prop_map(|a| format!("@{a:#x}")),
        any::<u64>().prop_map(|a| format!("@{a}")),
    ];
    leaf.prop_recursive(4, 8, 1, |inner| {
        let offset = prop_oneof![
            any::<u64>(),
            prop::sample::select(vec![0, 1, i64::MAX as u64, 1 << 63, u64::MAX]),
        ];
        (
            prop_oneof![Just("+"), Just("-"), Just("")],
            offset,
            any::<bool>(),
            inner,
        )
            .prop_map(|(sign, off, hex, inner)| {
                if hex {
                    format!("{sign}{off:#x}({inner})")
                } else {
                    format!("{sign}{off}({inner})")
                }
            })
    })
}

fn capture_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[usx](8|16|32|64|12|)".prop_map(|t| format!(":{t}")),
        (prop_oneof![Just("string"), Just("bytes")], 0usize..5000)
            .prop_map(|(t, n)| format!(":{t}[{n}]")),
        Just(":string".to_string()),
        // Near misses: an empty or one-character type, a multi-byte one.
        "[usxé]?[0-9]?".prop_map(|t| format!(":{t}")),
    ]
}

/// A spec made of well-formed parts (most of which parse).
fn spec_text() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec!["uprobe", "uretprobe", "u", "r", "p", "ur"]);
    let module = proptest::option::of("[a-z/._:-]{1,8}");
    let location = prop_oneof![
        "[a-zA-Z_:][a-zA-Z0-9_:+]{0,8}",
        (any::<u64>()).prop_map(|a| format!("0x{a:x}")),
        ("[a-z_]{1,6}", any::<u64>()).prop_map(|(s, o)| format!("{s}+{o:#x}")),
        ("[a-z_]{1,6}\\+[0-9]{1,3}", any::<u8>()).prop_map(|(s, o)| format!("{s}+{o}")),
    ];
    let word = prop_oneof![
        Just("post".to_string()),
        Just("force".to_string()),
        Just("entry".to_string()),
        (0u32..200_000).prop_map(|n| format!("maxactive={n}")),
        ("[a-z_0-9]{1,3}", fetch(), capture_type()).prop_map(|(n, f, t)| format!("{n}={f}{t}")),
    ];
    (kind, module, location, vec(word, 0..4)).prop_map(|(kind, module, location, words)| {
        let mut s = format!("{kind}:");
        if let Some(m) = module {
            s.push_str(&m);
            s.push(':');
        }
        s.push_str(&location);
        for w in words {
            s.push(' ');
            s.push_str(&w);
        }
        s
    })
}

proptest! {
    #![proptest_config(crate::fuzz_corpus::config(3000))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        check(&text);
    }

    #[test]
    fn parse_never_panics_on_grammar_pieces(text in pieces()) {
        check(&text);
    }

    #[test]
    fn parsed_specs_print_back_to_themselves(text in spec_text()) {
        check(&text);
    }
}

/// The committed seeds (`tests/fuzz-corpus/spec/`, one spec per line);
/// a file named `ok-*` holds specs that parse, `bad-*` specs that do not.
#[test]
fn corpus_round_trips() {
    for (name, bytes) in crate::fuzz_corpus::seeds("spec") {
        let text = String::from_utf8(bytes).expect("the spec corpus is text");
        for line in text.lines() {
            let parsed = check(line);
            assert_eq!(parsed, name.starts_with("ok-"), "{name}: `{line}`");
        }
    }
}
