//! Symbols: what is mapped in a process, and which function lives where.
//!
//! The probe engine speaks in runtime addresses; people speak in names such
//! as `libc:malloc` or `ns::Widget::frob`. This module translates between the
//! two, the way the kernel's uprobe front ends (perf, bpftrace) do:
//!
//! - [`maps`] parses `/proc/PID/maps` into [`MapEntry`] values;
//! - [`modules`](fn@modules) groups the file-backed entries into [`Module`]s
//!   (an executable or a shared library) and computes each one's load bias,
//!   so that `runtime address = file vaddr + bias`;
//! - [`ElfFile`] holds one parsed ELF file: its segments, its function symbols
//!   (from `.symtab`, `.dynsym` and a separate debug file, found the way gdb
//!   finds it) and its bytes, so live code can be compared with the file;
//! - [`demangle`](fn@demangle) turns C++ and Rust symbol names into readable ones;
//! - [`browse`] shows a process's functions and instructions with the
//!   engine's verdict on each, from the files alone; the engine resolves
//!   specs with its code.
//!
//! The key design decision: every address stored here is a *file* virtual
//! address, and a [`Module`] carries the bias. An [`ElfFile`] is therefore
//! independent of any process and is parsed once per file (the [`ElfCache`]
//! keys it by device, inode, size and mtime), however many processes map it
//! and wherever they map it.
//!
//! Nothing here writes to a process or needs privileges beyond reading
//! `/proc/PID/maps` and `/proc/PID/root`.

pub mod browse;
mod debuginfo;
mod demangle;
mod elf;
mod maps;
mod modules;
pub mod needed;

use std::path::PathBuf;

pub use debuginfo::{find_debug_file, gnu_debuglink_crc32};
pub use demangle::{demangle, glob_match, strip_params};
pub use elf::{ElfCache, ElfFile, Segment, SymKind, Symbol};
pub use maps::{parse_maps, read_maps, MapEntry};
pub use modules::{find_module, module_matches, modules, Module};

/// Everything that can go wrong while reading maps, ELF files and symbols.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The process has no `/proc` entry.
    #[error("process {pid} does not exist (it may have exited); check the pid with `ps -p {pid}`")]
    NoProcess { pid: i32 },

    /// The file exists but is not an ELF file this module can use.
    #[error("{} is not a usable ELF file: {reason}", path.display())]
    BadElf { path: PathBuf, reason: String },

    /// No function of that name in the file.
    #[error("no symbol `{name}` in {}{}", file.display(), did_you_mean(suggestions))]
    UnknownSymbol {
        name: String,
        file: PathBuf,
        suggestions: Vec<String>,
    },

    /// Nothing mapped in the process matches what the user named.
    #[error(
        "no module matching `{spec}` is mapped in the process (loaded: {}); \
         name one by absolute path, file name or stem such as `libc`",
        list_or_none(loaded)
    )]
    NoModule { spec: String, loaded: Vec<String> },

    /// Several different files match what the user named.
    #[error("`{spec}` matches several modules ({}); name one by its absolute path", candidates.join(", "))]
    AmbiguousModule {
        spec: String,
        candidates: Vec<String>,
    },

    /// A line of `/proc/PID/maps` did not parse.
    #[error("line {line} of the maps is malformed (`{text}`): {reason}")]
    Maps {
        line: usize,
        text: String,
        reason: String,
    },
}

/// Formats the " (did you mean ...?)" tail of an unknown-symbol message.
fn did_you_mean(suggestions: &[String]) -> String {
    let quoted: Vec<String> = suggestions.iter().map(|s| format!("`{s}`")).collect();
    match quoted.as_slice() {
        [] => " (list the functions with a glob such as `prefix*`)".to_string(),
        [one] => format!(" (did you mean {one}?)"),
        [init @ .., last] => format!(" (did you mean {} or {last}?)", init.join(", ")),
    }
}

/// Formats a list of names for a message, saying so when it is empty.
fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the text of an error message.
    fn check(error: SymbolError, expect: &str) {
        assert_eq!(error.to_string(), expect);
    }

    #[test]
    fn messages_name_the_value_and_the_next_step() {
        let libc = PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6");
        check(
            SymbolError::UnknownSymbol {
                name: "mallco".into(),
                file: libc.clone(),
                suggestions: vec!["malloc".into()],
            },
            "no symbol `mallco` in /usr/lib/x86_64-linux-gnu/libc.so.6 (did you mean `malloc`?)",
        );
        check(
            SymbolError::UnknownSymbol {
                name: "mal".into(),
                file: libc.clone(),
                suggestions: vec!["malloc".into(), "mallopt".into(), "calloc".into()],
            },
            "no symbol `mal` in /usr/lib/x86_64-linux-gnu/libc.so.6 \
             (did you mean `malloc`, `mallopt` or `calloc`?)",
        );
        check(
            SymbolError::UnknownSymbol {
                name: "zzz".into(),
                file: libc,
                suggestions: vec![],
            },
            "no symbol `zzz` in /usr/lib/x86_64-linux-gnu/libc.so.6 \
             (list the functions with a glob such as `prefix*`)",
        );
        check(
            SymbolError::NoModule {
                spec: "libfoo".into(),
                loaded: vec!["/usr/bin/cat".into(), "/usr/lib/libc.so.6".into()],
            },
            "no module matching `libfoo` is mapped in the process \
             (loaded: /usr/bin/cat, /usr/lib/libc.so.6); \
             name one by absolute path, file name or stem such as `libc`",
        );
    }
}
