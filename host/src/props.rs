//! Property tests of the plugin side's byte formats: the manifest (its
//! JSON and the wasm custom section that carries it) and the event
//! encoder, whose other half is the guest SDK's `Event::parse`. Neither
//! panics on arbitrary input; what is encoded decodes to itself.

use proptest::collection::vec;
use proptest::prelude::*;
use wprobe_core::proto::{CaptureValue, Event, EventKind, RegSet, RetInfo, X86_64_NREGS};
use wprobe_plugin_sdk::event as sdk;

use crate::plugin::abi::{encode_event, kind_byte, ABI_VERSION};
use crate::plugin::manifest::{custom_section, Manifest, Needs, SECTION};

/// The proptest configuration: `cases`, or `PROPTEST_CASES` when set (for
/// the longer run of docs/testing.md; `with_cases` alone would ignore it).
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig::with_cases(cases)
}

/// The files of `tests/fuzz-corpus/<target>/` at the top of the
/// repository, sorted, as `(name, bytes)`; an empty or missing corpus is a
/// failure, not a vacuous pass.
pub(crate) fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz-corpus")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("a directory entry").path();
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("a readable seed"))
        })
        .collect();
    seeds.sort();
    assert!(
        !seeds.is_empty(),
        "the fuzz corpus {} is empty",
        dir.display()
    );
    seeds
}

// --- The manifest ------------------------------------------------------------

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        "[A-Za-z0-9_.-]{1,64}",
        any::<String>(),
        any::<(bool, bool)>(),
    )
        .prop_map(|(name, version, (data_dir, mutation))| Manifest {
            name,
            version,
            abi: ABI_VERSION,
            needs: Needs { data_dir, mutation },
        })
}

/// A wasm module's bytes: the header, then sections `(id, body)`, custom
/// ones (id 0) carrying their name first.
fn module(sections: &[(u8, Vec<u8>)]) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut out = b"\0asm\x01\0\0\0".to_vec();
    for (id, body) in sections {
        out.push(*id);
        leb(body.len(), &mut out);
        out.extend_from_slice(body);
    }
    out
}

fn custom(name: &str, payload: &[u8]) -> (u8, Vec<u8>) {
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    (0, body)
}

/// Checks what a manifest that parsed promises.
fn check_manifest(text: &str) {
    if let Ok(m) = Manifest::parse(text) {
        assert!(!m.name.is_empty() && m.name.len() <= 64, "{m:?}");
        assert!(m
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
        assert_eq!(m.abi, ABI_VERSION);
        let again = serde_json::to_string(&m).expect("a manifest serializes");
        assert_eq!(Manifest::parse(&again).as_ref(), Ok(&m));
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn manifest_parse_never_panics(text in any::<String>(), bytes in vec(any::<u8>(), 0..64)) {
        check_manifest(&text);
        check_manifest(&String::from_utf8_lossy(&bytes));
    }

    /// JSON-shaped text with the manifest's own keys, so the checks after
    /// serde are reached.
    #[test]
    fn manifest_parse_never_panics_on_near_misses(
        name in ".{0,70}",
        version in prop_oneof![Just("\"1.0\"".to_string()), Just("1".to_string()), ".{0,4}"],
        abi in prop_oneof![Just(ABI_VERSION as i64), any::<i64>()],
        needs in prop_oneof![Just(String::new()), ",\"needs\":\\{\"(data_dir|mutation|x)\":(true|1|null)\\}"],
    ) {
        let name = serde_json::to_string(&name).expect("a string serializes");
        check_manifest(&format!("{{\"name\":{name},\"version\":{version},\"abi\":{abi}{needs}}}"));
    }

    #[test]
    fn manifest_round_trips(m in manifest()) {
        let text = serde_json::to_string(&m).expect("a manifest serializes");
        prop_assert_eq!(Manifest::parse(&text), Ok(m));
    }

    /// A module without a manifest is named after its file: whatever the
    /// file name, the name passes the manifest's own check.
    #[test]
    fn unnamed_manifests_are_valid(file in any::<String>()) {
        let m = Manifest::unnamed(&file);
        let text = serde_json::to_string(&m).expect("a manifest serializes");
        prop_assert_eq!(Manifest::parse(&text), Ok(m));
    }

    #[test]
    fn custom_section_never_panics(
        bytes in vec(any::<u8>(), 0..200),
        with_header in any::<bool>(),
    ) {
        let input = if with_header { [&b"\0asm\x01\0\0\0"[..], &bytes].concat() } else { bytes };
        let _ = custom_section(&input, SECTION);
    }

    /// The manifest's section is found among other sections, custom ones
    /// with near names included, and carries the manifest back.
    #[test]
    fn manifest_section_round_trips(
        m in manifest(),
        before in vec((1u8..12, vec(any::<u8>(), 0..40)), 0..3),
        after in vec((1u8..12, vec(any::<u8>(), 0..40)), 0..3),
        decoy in prop::sample::select(vec!["wprobe.manifes", "wprobe.manifest2", "name"]),
    ) {
        let json = serde_json::to_vec(&m).expect("a manifest serializes");
        let mut sections = before;
        sections.push(custom(decoy, b"{}"));
        sections.push(custom(SECTION, &json));
        sections.extend(after);
        let wasm = module(&sections);
        prop_assert_eq!(custom_section(&wasm, SECTION), Some(&json[..]));
        let text = std::str::from_utf8(&json).expect("JSON is UTF-8");
        prop_assert_eq!(Manifest::parse(text), Ok(m));
    }
}

/// The committed seeds (`tests/fuzz-corpus/manifest/`): `ok-*.wasm` carry a
/// valid manifest section, `bad-*` files are refused or carry none; none
/// panics.
#[test]
fn manifest_corpus_replays() {
    for (name, bytes) in seeds("manifest") {
        let section = custom_section(&bytes, SECTION);
        let parsed = section
            .and_then(|s| std::str::from_utf8(s).ok())
            .map(Manifest::parse);
        if name.starts_with("ok-") {
            assert!(matches!(parsed, Some(Ok(_))), "{name}: {parsed:?}");
        } else {
            assert!(!matches!(parsed, Some(Ok(_))), "{name}: {parsed:?}");
        }
    }
}

// --- The event ---------------------------------------------------------------

fn capture_value() -> impl Strategy<Value = CaptureValue> {
    prop_oneof![
        any::<u64>().prop_map(CaptureValue::Unsigned),
        any::<i64>().prop_map(CaptureValue::Signed),
        any::<u64>().prop_map(CaptureValue::Hex),
        (vec(any::<u8>(), 0..40), any::<bool>())
            .prop_map(|(bytes, truncated)| CaptureValue::String { bytes, truncated }),
        vec(any::<u8>(), 0..40).prop_map(CaptureValue::Bytes),
        ".{0,20}".prop_map(CaptureValue::Error),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    let kind = prop_oneof![
        Just(EventKind::Entry),
        Just(EventKind::Post),
        Just(EventKind::Return)
    ];
    let ret = proptest::option::of(any::<(u64, u64, u64, [u64; 6])>().prop_map(
        |(value, entry_time_ns, return_address, entry_args)| RetInfo {
            value,
            entry_time_ns,
            entry_args,
            return_address,
        },
    ));
    (
        any::<(u64, u32, bool, i32, i32, u64, u64)>(),
        kind,
        any::<[u64; X86_64_NREGS]>(),
        vec((".{0,12}", capture_value()), 0..5),
        ret,
    )
        .prop_map(
            |((seq, probe, sync, pid, tid, time_ns, addr), kind, regs, captures, ret)| Event {
                seq,
                probe,
                kind,
                sync,
                pid,
                tid,
                time_ns,
                addr,
                regs: RegSet::X86_64(regs),
                captures,
                ret,
            },
        )
}

/// Encodes `e` and reads it back with the guest SDK: every field as the
/// ABI document says.
fn check_event(e: &Event, flags: u8) {
    let mut out = vec![0xaa; 3];
    encode_event(e, flags, &mut out);
    let got = sdk::Event::parse(&out).unwrap_or_else(|err| panic!("{err} for {e:?}"));
    let RegSet::X86_64(regs) = &e.regs;
    assert_eq!(got.size() as usize, out.len());
    assert_eq!(got.probe(), e.probe);
    let kind = match got.kind() {
        sdk::Kind::Entry => EventKind::Entry,
        sdk::Kind::Post => EventKind::Post,
        sdk::Kind::Return => EventKind::Return,
        other => panic!("kind {other:?} for {e:?}"),
    };
    assert_eq!(kind_byte(kind), kind_byte(e.kind));
    assert_eq!(got.flags().0, flags);
    assert_eq!(got.arch(), e.regs.arch());
    assert_eq!((got.pid(), got.tid()), (e.pid, e.tid));
    assert_eq!((got.time_ns(), got.addr()), (e.time_ns, e.addr));
    match &e.ret {
        Some(r) => {
            assert_eq!(got.entry_time_ns(), r.entry_time_ns);
            assert_eq!(got.retval(), r.value);
            assert_eq!(got.return_address(), r.return_address);
            assert_eq!(got.args(), r.entry_args);
        }
        None => {
            assert_eq!(got.entry_time_ns(), e.time_ns);
            assert_eq!(got.args(), [14, 13, 12, 11, 9, 8].map(|i| regs[i]));
        }
    }
    assert_eq!(got.regs().collect::<Vec<_>>(), regs.to_vec());
    assert_eq!(got.ncaptures() as usize, e.captures.len());
    for (c, (name, value)) in got.captures().zip(&e.captures) {
        assert_eq!(c.name, name);
        let (expect, truncated) = match value {
            CaptureValue::Unsigned(v) => (sdk::CaptureValue::Unsigned(*v), false),
            CaptureValue::Signed(v) => (sdk::CaptureValue::Signed(*v), false),
            CaptureValue::Hex(v) => (sdk::CaptureValue::Hex(*v), false),
            CaptureValue::String { bytes, truncated } => {
                (sdk::CaptureValue::Str(bytes), *truncated)
            }
            CaptureValue::Bytes(b) => (sdk::CaptureValue::Bytes(b), false),
            CaptureValue::Error(m) => (sdk::CaptureValue::Error(m), false),
        };
        assert_eq!(
            (c.value, c.truncated),
            (expect, truncated),
            "capture `{name}`"
        );
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn events_encode_and_parse_back(e in event(), flags in any::<u8>()) {
        check_event(&e, flags);
    }

    /// The guest's parser on damaged and arbitrary events: an error or a
    /// view whose every capture can be read, never a panic.
    #[test]
    fn sdk_parse_never_panics(
        e in event(),
        hits in vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        arbitrary in vec(any::<u8>(), 0..300),
    ) {
        let mut out = vec![];
        encode_event(&e, 0, &mut out);
        for (at, byte) in hits {
            let i = at.index(out.len());
            out[i] = byte;
        }
        out.truncate(cut.index(out.len() + 1));
        for input in [&out, &arbitrary] {
            if let Ok(ev) = sdk::Event::parse(input) {
                let _ = ev.captures().count();
                let _ = ev.regs().count();
                let _ = ev.args();
            }
        }
    }
}
