//! Finding the separate debug file of a stripped ELF file, in gdb's order.
//!
//! Distributions strip their binaries and ship the full symbol tables in
//! separate files. gdb looks for them in this order, and so do we:
//!
//! 1. by build ID: `<root>/usr/lib/debug/.build-id/ab/cdef….debug`, accepted
//!    when the candidate carries the same build ID;
//! 2. by the `.gnu_debuglink` name, accepted when the CRC32 of the whole
//!    candidate equals the one stored beside the name, in
//!    `<dir>/<name>`, `<dir>/.debug/<name>` and `<root>/usr/lib/debug/<dir>/<name>`,
//!    where `<dir>` is the directory of the stripped file.
//!
//! `root` is the file system root of the traced process (`/proc/PID/root`),
//! so a process in a container finds the debug files installed in it.

use std::path::{Path, PathBuf};

use object::Object;

/// Where the global debug directory lives, relative to the root.
const DEBUG_DIR: &str = "usr/lib/debug";

/// Returns the path of the separate debug file for `file`, if one is found
/// and passes its check. `build_id` and `debuglink` (name and CRC32) are the
/// ones `file` carries.
pub fn find_debug_file(
    file: &Path,
    root: &Path,
    build_id: Option<&[u8]>,
    debuglink: Option<(&[u8], u32)>,
) -> Option<PathBuf> {
    find_debug_data(file, root, build_id, debuglink).map(|(path, _)| path)
}

/// As [`find_debug_file`], also returning the debug file's bytes so they are
/// read only once.
pub(super) fn find_debug_data(
    file: &Path,
    root: &Path,
    build_id: Option<&[u8]>,
    debuglink: Option<(&[u8], u32)>,
) -> Option<(PathBuf, Vec<u8>)> {
    if let Some(id) = build_id.filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let candidate = root
            .join(DEBUG_DIR)
            .join(".build-id")
            .join(&hex[..2])
            .join(format!("{}.debug", &hex[2..]));
        if let Some(data) = read_other_file(&candidate, file) {
            if build_id_of(&data).as_deref() == Some(id) {
                return Some((candidate, data));
            }
        }
    }

    let (name, crc) = debuglink?;
    let name = std::str::from_utf8(name).ok()?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    for dir in search_dirs(file, root) {
        for candidate in [
            dir.real.join(name),
            dir.real.join(".debug").join(name),
            root.join(DEBUG_DIR)
                .join(dir.logical.trim_start_matches('/'))
                .join(name),
        ] {
            if let Some(data) = read_other_file(&candidate, file) {
                if gnu_debuglink_crc32(&data) == crc {
                    return Some((candidate, data));
                }
            }
        }
    }
    None
}

/// A directory that may hold a debug file: as this process reaches it, and
/// as the traced process names it (below its root).
struct SearchDir {
    real: PathBuf,
    logical: String,
}

/// The directories of `file` to search: its own, and, when the root is ours,
/// the one it resolves to through symlinks (`/lib` → `/usr/lib`).
fn search_dirs(file: &Path, root: &Path) -> Vec<SearchDir> {
    let mut dirs = Vec::new();
    let mut push = |path: &Path| {
        let Some(real) = path.parent() else { return };
        let logical = match real.strip_prefix(root) {
            Ok(relative) => format!("/{}", relative.display()),
            Err(_) => real.display().to_string(),
        };
        if !dirs.iter().any(|d: &SearchDir| d.real == real) {
            dirs.push(SearchDir {
                real: real.to_path_buf(),
                logical,
            });
        }
    };
    push(file);
    // Resolving symlinks under another root would follow absolute links
    // into our own file system, so only do it for our own root.
    if root == Path::new("/") {
        if let Ok(canonical) = std::fs::canonicalize(file) {
            push(&canonical);
        }
    }
    dirs
}

/// Reads `candidate` unless it is `original` itself (a debug link that names
/// the stripped file, which gdb also refuses).
fn read_other_file(candidate: &Path, original: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(candidate).ok()?;
    if !meta.is_file() {
        return None;
    }
    if let Ok(original_meta) = std::fs::metadata(original) {
        use std::os::unix::fs::MetadataExt;
        if meta.dev() == original_meta.dev() && meta.ino() == original_meta.ino() {
            return None;
        }
    }
    std::fs::read(candidate).ok()
}

/// The build ID of an ELF file's bytes, if it parses and has one.
fn build_id_of(data: &[u8]) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    file.build_id().ok()?.map(<[u8]>::to_vec)
}

/// The CRC32 that `.gnu_debuglink` stores: the IEEE 802.3 polynomial,
/// reflected, as zlib's `crc32` computes it.
pub fn gnu_debuglink_crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = CRC_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The byte-at-a-time table for [`gnu_debuglink_crc32`].
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares the debuglink CRC32 of `input` with `expect`.
    fn check(input: &[u8], expect: u32) {
        assert_eq!(gnu_debuglink_crc32(input), expect, "crc32 of {input:?}");
    }

    #[test]
    fn crc32_matches_zlib() {
        check(b"", 0);
        check(b"a", 0xe8b7_be43);
        check(b"123456789", 0xcbf4_3926);
        check(b"The quick brown fox jumps over the lazy dog", 0x414f_a339);
    }
}
