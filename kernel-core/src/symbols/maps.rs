//! Parsing `/proc/PID/maps`.
//!
//! Each line reads `start-end perms offset major:minor inode [path]`. The path
//! is everything after the inode once the padding spaces are skipped, so it
//! may itself contain spaces. The kernel appends ` (deleted)` to the path of a
//! file that was unlinked after it was mapped; that suffix is removed from
//! [`MapEntry::path`] and recorded in [`MapEntry::deleted`].

use std::io::ErrorKind;
use std::path::PathBuf;

use super::SymbolError;

/// The suffix the kernel appends to the path of an unlinked file.
const DELETED_SUFFIX: &str = " (deleted)";

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// True for `s` (shared), false for `p` (private, copy-on-write).
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// `None` for an anonymous mapping; pseudo-paths such as `[vdso]` and
    /// `[stack]` are kept as they are; ` (deleted)` is removed.
    pub path: Option<String>,
    /// True when the kernel marked the file as unlinked with ` (deleted)`.
    pub deleted: bool,
}

impl MapEntry {
    /// True when the mapping is backed by a file (its path is absolute and
    /// its inode is not 0), as opposed to `[heap]`, `[vdso]` or anonymous
    /// memory.
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }

    /// The length of the mapping in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True for an empty range, which the kernel never reports.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `addr` lies inside the mapping.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

/// Parses the text of a `/proc/PID/maps` file.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, SymbolError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            parse_line(line).map_err(|reason| SymbolError::Maps {
                line: index + 1,
                text: line.to_string(),
                reason,
            })
        })
        .collect()
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: i32) -> Result<Vec<MapEntry>, SymbolError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = std::fs::read_to_string(&path).map_err(|source| {
        if source.kind() == ErrorKind::NotFound {
            SymbolError::NoProcess { pid }
        } else {
            SymbolError::Io { path, source }
        }
    })?;
    parse_maps(&text)
}

/// Parses one line; the error is the reason, which the caller wraps with the
/// line number and text.
fn parse_line(line: &str) -> Result<MapEntry, String> {
    let mut rest = line;
    let range = next_field(&mut rest).ok_or("missing address range")?;
    let perms = next_field(&mut rest).ok_or("missing permissions")?;
    let offset = next_field(&mut rest).ok_or("missing offset")?;
    let dev = next_field(&mut rest).ok_or("missing device")?;
    let inode = next_field(&mut rest).ok_or("missing inode")?;

    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| format!("address range `{range}` has no `-`"))?;
    let start = hex(start, "start address")?;
    let end = hex(end, "end address")?;
    if end < start {
        return Err(format!("end address {end:#x} is below start {start:#x}"));
    }

    let perms = perms.as_bytes();
    if perms.len() != 4 {
        return Err(format!(
            "permissions `{}` are not four characters like `r-xp`",
            String::from_utf8_lossy(perms)
        ));
    }
    let flag = |index: usize, set: u8| -> Result<bool, String> {
        match perms[index] {
            c if c == set => Ok(true),
            b'-' => Ok(false),
            b'p' if index == 3 => Ok(false),
            other => Err(format!(
                "unexpected permission character `{}` at position {}",
                other as char,
                index + 1
            )),
        }
    };

    let (major, minor) = dev
        .split_once(':')
        .ok_or_else(|| format!("device `{dev}` is not `major:minor`"))?;
    let dev_major = u32::from_str_radix(major, 16)
        .map_err(|_| format!("device major `{major}` is not hexadecimal"))?;
    let dev_minor = u32::from_str_radix(minor, 16)
        .map_err(|_| format!("device minor `{minor}` is not hexadecimal"))?;
    let inode: u64 = inode
        .parse()
        .map_err(|_| format!("inode `{inode}` is not a decimal number"))?;

    let raw_path = rest.trim_start_matches([' ', '\t']);
    let (path, deleted) = match raw_path {
        "" => (None, false),
        p => match p.strip_suffix(DELETED_SUFFIX) {
            Some(stripped) if stripped.starts_with('/') => (Some(stripped.to_string()), true),
            _ => (Some(p.to_string()), false),
        },
    };

    Ok(MapEntry {
        start,
        end,
        read: flag(0, b'r')?,
        write: flag(1, b'w')?,
        exec: flag(2, b'x')?,
        shared: flag(3, b's')?,
        offset: hex(offset, "offset")?,
        dev_major,
        dev_minor,
        inode,
        path,
        deleted,
    })
}

/// Splits off the next space-separated field, skipping leading spaces.
fn next_field<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let trimmed = rest.trim_start_matches([' ', '\t']);
    if trimmed.is_empty() {
        return None;
    }
    let end = trimmed.find([' ', '\t']).unwrap_or(trimmed.len());
    let (field, tail) = trimmed.split_at(end);
    *rest = tail;
    Some(field)
}

/// Parses a hexadecimal number without `0x`, naming `what` on failure.
fn hex(text: &str, what: &str) -> Result<u64, String> {
    u64::from_str_radix(text, 16).map_err(|_| format!("{what} `{text}` is not hexadecimal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses one line and compares the entry (or the error message) with
    /// `expect`, written as `start end perms offset dev inode path deleted`.
    fn check(line: &str, expect: &str) {
        let actual = match parse_maps(line) {
            Ok(entries) => {
                assert_eq!(entries.len(), 1, "{line}");
                let e = &entries[0];
                format!(
                    "{:x} {:x} {}{}{}{} {:x} {}:{} {} {:?} {}",
                    e.start,
                    e.end,
                    if e.read { 'r' } else { '-' },
                    if e.write { 'w' } else { '-' },
                    if e.exec { 'x' } else { '-' },
                    if e.shared { 's' } else { 'p' },
                    e.offset,
                    e.dev_major,
                    e.dev_minor,
                    e.inode,
                    e.path,
                    if e.deleted { "deleted" } else { "present" },
                )
            }
            Err(error) => error.to_string(),
        };
        assert_eq!(actual, expect, "for line {line:?}");
    }

    #[test]
    fn lines() {
        check(
            "55d1c5a00000-55d1c5a02000 r--p 00000000 fd:01 1835101                    /usr/bin/cat",
            r#"55d1c5a00000 55d1c5a02000 r--p 0 253:1 1835101 Some("/usr/bin/cat") present"#,
        );
        check(
            "7f3a1c228000-7f3a1c3bd000 r-xp 00028000 08:02 3150049 /usr/lib/x86_64-linux-gnu/libc.so.6",
            r#"7f3a1c228000 7f3a1c3bd000 r-xp 28000 8:2 3150049 Some("/usr/lib/x86_64-linux-gnu/libc.so.6") present"#,
        );
        // Anonymous memory has no path at all, sometimes not even padding.
        check(
            "7f3a1c400000-7f3a1c40d000 rw-p 00000000 00:00 0 ",
            "7f3a1c400000 7f3a1c40d000 rw-p 0 0:0 0 None present",
        );
        check(
            "7f3a1c400000-7f3a1c40d000 rw-p 00000000 00:00 0",
            "7f3a1c400000 7f3a1c40d000 rw-p 0 0:0 0 None present",
        );
        check(
            "7ffc8a5f3000-7ffc8a5f5000 r-xp 00000000 00:00 0                          [vdso]",
            r#"7ffc8a5f3000 7ffc8a5f5000 r-xp 0 0:0 0 Some("[vdso]") present"#,
        );
        check(
            "7ffc8a4d2000-7ffc8a4f3000 rw-p 00000000 00:00 0                          [stack]",
            r#"7ffc8a4d2000 7ffc8a4f3000 rw-p 0 0:0 0 Some("[stack]") present"#,
        );
        check(
            "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
            r#"ffffffffff600000 ffffffffff601000 --xp 0 0:0 0 Some("[vsyscall]") present"#,
        );
        // Paths keep inner and trailing spaces apart from the padding.
        check(
            "7f0000000000-7f0000001000 r-xp 00001000 08:02 42   /opt/My App/lib thing.so",
            r#"7f0000000000 7f0000001000 r-xp 1000 8:2 42 Some("/opt/My App/lib thing.so") present"#,
        );
        check(
            "7f0000000000-7f0000001000 r-xp 00001000 08:02 42 /tmp/a.out (deleted)",
            r#"7f0000000000 7f0000001000 r-xp 1000 8:2 42 Some("/tmp/a.out") deleted"#,
        );
        check(
            "7f0000000000-7f0000001000 rw-s 00000000 00:05 1234 /dev/shm/ring",
            r#"7f0000000000 7f0000001000 rw-s 0 0:5 1234 Some("/dev/shm/ring") present"#,
        );
        check(
            "7f0000000000-7f0000001000 rw-s 00000000 00:01 1234 /memfd:jit (deleted)",
            r#"7f0000000000 7f0000001000 rw-s 0 0:1 1234 Some("/memfd:jit") deleted"#,
        );
        check(
            "7f0000000000 r-xp 00000000 00:00 0",
            "line 1 of the maps is malformed (`7f0000000000 r-xp 00000000 00:00 0`): \
             address range `7f0000000000` has no `-`",
        );
        check(
            "7f0000000000-7f0000001000 r-xq 00000000 00:00 0",
            "line 1 of the maps is malformed (`7f0000000000-7f0000001000 r-xq 00000000 00:00 0`): \
             unexpected permission character `q` at position 4",
        );
        check(
            "7f0000000000-7f0000001000 r-xp 00000000 00:00",
            "line 1 of the maps is malformed (`7f0000000000-7f0000001000 r-xp 00000000 00:00`): \
             missing inode",
        );
    }

    #[test]
    fn own_maps_parse_and_contain_this_function() {
        let maps = read_maps(std::process::id() as i32).expect("own maps are readable");
        let here = own_maps_parse_and_contain_this_function as fn() as usize as u64;
        let entry = maps
            .iter()
            .find(|e| e.contains(here))
            .expect("code is mapped");
        assert!(entry.exec && entry.is_file(), "{entry:?}");
    }

    #[test]
    fn missing_process_says_so() {
        let error = read_maps(i32::MAX).expect_err("no such pid");
        assert_eq!(
            error.to_string(),
            format!(
                "process {0} does not exist (it may have exited); check the pid with `ps -p {0}`",
                i32::MAX
            )
        );
    }
}
