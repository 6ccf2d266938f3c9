//! The committed seed inputs of the property tests
//! (`tests/fuzz-corpus/<target>/` at the top of the repository): every
//! property test that has a corpus replays it before its random cases, so an
//! input that once found a bug, or that reaches a rare path, runs every time.

use std::path::PathBuf;

/// The files of `tests/fuzz-corpus/<target>/`, sorted by name, as
/// `(file name, bytes)`. Panics when the directory is missing or empty: a
/// corpus that silently vanished would make its replay pass vacuously.
pub(crate) fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz-corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|e| {
            let path = e.expect("a directory entry").path();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            (name, bytes)
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

/// The proptest configuration of a property test: `cases` random cases, or
/// as many as `PROPTEST_CASES` says when it is set, for a longer run
/// (`PROPTEST_CASES=100000 cargo test -p wprobe-core --lib props`; see
/// docs/testing.md). proptest's own `with_cases` would ignore the variable.
pub(crate) fn config(cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    proptest::test_runner::Config::with_cases(cases)
}
