//! The libraries a program loads at start, found as the dynamic linker
//! finds them: its `DT_NEEDED` entries, and theirs, looked up through
//! `DT_RPATH`, `LD_LIBRARY_PATH`, `DT_RUNPATH`, the directories of
//! `/etc/ld.so.conf` and the default ones (ld.so(8), "Rpath token
//! expansion" for `$ORIGIN`).
//!
//! A probe on `libc:malloc` in a command that has not run yet cannot be
//! resolved in the process (libc is not mapped until the linker maps it),
//! but it can be checked in the file the linker will map, as bpftrace does:
//! so a typo is refused before the command runs.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{Dyn, ElfFile64};
use object::{Endianness, Object};

/// One library the program needs at start, as the process will name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    /// The path inside the process's root (`/usr/lib/…/libc.so.6`).
    pub path: String,
    /// Its `DT_SONAME`, if it has one.
    pub soname: Option<String>,
}

/// What the dynamic section of one file says about loading.
#[derive(Default, Debug)]
struct Dynamic {
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
    soname: Option<String>,
}

/// The libraries `exe` (a path inside `root`) loads at start, in the
/// linker's breadth-first order. `ld_library_path` is the program's
/// `LD_LIBRARY_PATH`. A library that cannot be found is left out: the
/// linker would refuse to start the program, and says so itself.
pub fn needed_libraries(root: &Path, exe: &str, ld_library_path: Option<&str>) -> Vec<Needed> {
    let system = system_dirs(root);
    let env_dirs: Vec<String> = ld_library_path
        .map(|p| {
            p.split([':', ';'])
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let Some(main) = read_dynamic(&in_root(root, exe)) else {
        return Vec::new();
    };
    let mut found: Vec<Needed> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    // (name, the path of the object that needs it, its dynamic section)
    let mut queue: VecDeque<(String, String, std::rc::Rc<Dynamic>)> = VecDeque::new();
    let main = std::rc::Rc::new(main);
    for n in &main.needed {
        queue.push_back((n.clone(), exe.to_owned(), main.clone()));
    }
    while let Some((name, by, by_dyn)) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let candidates: Vec<String> = if name.contains('/') {
            vec![name.clone()]
        } else {
            let origin = Path::new(&by)
                .parent()
                .map_or_else(|| "/".to_owned(), |p| p.to_string_lossy().into_owned());
            let expand = |dirs: &[String]| -> Vec<String> {
                dirs.iter()
                    .filter_map(|d| expand_origin(d, &origin))
                    .collect()
            };
            // DT_RPATH counts only when there is no DT_RUNPATH; the
            // executable's DT_RPATH applies to every library.
            let mut dirs = Vec::new();
            if by_dyn.runpath.is_empty() {
                dirs.extend(expand(&by_dyn.rpath));
                if main.runpath.is_empty() {
                    dirs.extend(expand(&main.rpath));
                }
            }
            dirs.extend(env_dirs.iter().cloned());
            dirs.extend(expand(&by_dyn.runpath));
            dirs.extend(system.iter().cloned());
            dirs.iter()
                .map(|d| format!("{}/{name}", d.trim_end_matches('/')))
                .collect()
        };
        let Some((path, dynamic)) = candidates
            .into_iter()
            .find_map(|c| read_dynamic(&in_root(root, &c)).map(|d| (c, d)))
        else {
            continue;
        };
        let dynamic = std::rc::Rc::new(dynamic);
        for n in &dynamic.needed {
            queue.push_back((n.clone(), path.clone(), dynamic.clone()));
        }
        found.push(Needed {
            path,
            soname: dynamic.soname.clone(),
        });
    }
    found
}

/// `$ORIGIN` (or `${ORIGIN}`) replaced; `None` for the other tokens
/// (`$LIB`, `$PLATFORM`), which depend on the machine's loader.
fn expand_origin(dir: &str, origin: &str) -> Option<String> {
    let d = dir.replace("${ORIGIN}", origin).replace("$ORIGIN", origin);
    (!d.contains('$')).then_some(d)
}

/// `path` (absolute, as the process sees it) under `root`.
fn in_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The directories of `/etc/ld.so.conf` (with its `include`s) and then
/// the linker's defaults.
fn system_dirs(root: &Path) -> Vec<String> {
    let mut dirs = Vec::new();
    read_conf(root, "/etc/ld.so.conf", &mut dirs, 0);
    for d in ["/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
        dirs.push(d.to_owned());
    }
    dirs
}

fn read_conf(root: &Path, file: &str, dirs: &mut Vec<String>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(in_root(root, file)) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            let pattern = pattern.trim();
            let pattern = if pattern.starts_with('/') {
                pattern.to_owned()
            } else {
                let base = Path::new(file).parent().unwrap_or(Path::new("/"));
                format!("{}/{pattern}", base.display())
            };
            for f in glob_files(root, &pattern) {
                read_conf(root, &f, dirs, depth + 1);
            }
        } else if line.starts_with('/') {
            dirs.push(line.to_owned());
        }
    }
}

/// The files matching `pattern`, whose last part may hold `*` (as
/// `include /etc/ld.so.conf.d/*.conf`), sorted as glob(3) sorts them.
fn glob_files(root: &Path, pattern: &str) -> Vec<String> {
    let p = Path::new(pattern);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(in_root(root, &dir.to_string_lossy())) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| super::glob_match(&name, f))
        .map(|f| format!("{}/{f}", dir.display()))
        .collect();
    out.sort();
    out
}

/// The dynamic section of a 64-bit ELF file; `None` for a file that is not
/// one (the linker skips those too and looks further).
fn read_dynamic(path: &Path) -> Option<Dynamic> {
    let data = std::fs::read(path).ok()?;
    if data.get(4) != Some(&elf::ELFCLASS64) {
        return None;
    }
    let file = ElfFile64::<Endianness>::parse(data.as_slice()).ok()?;
    if file.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let endian = file.endian();
    let sections = file.elf_section_table();
    let Some((dynamic, link)) = sections.dynamic(endian, data.as_slice()).ok()? else {
        return Some(Dynamic::default());
    };
    let strings = sections.strings(endian, data.as_slice(), link).ok()?;
    let mut out = Dynamic::default();
    for d in dynamic {
        let Ok(offset) = u32::try_from(d.d_val(endian)) else {
            continue;
        };
        let text = || {
            strings
                .get(offset)
                .ok()
                .map(|s| String::from_utf8_lossy(s).into_owned())
        };
        let split = |s: String| -> Vec<String> {
            s.split(':')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect()
        };
        match u32::try_from(d.d_tag(endian)).unwrap_or(u32::MAX) {
            elf::DT_NEEDED => out.needed.extend(text()),
            elf::DT_RPATH => out.rpath.extend(text().map(split).unwrap_or_default()),
            elf::DT_RUNPATH => out.runpath.extend(text().map(split).unwrap_or_default()),
            elf::DT_SONAME => out.soname = text(),
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_expansion() {
        let check = |dir: &str, expect: Option<&str>| {
            assert_eq!(
                expand_origin(dir, "/opt/app/bin").as_deref(),
                expect,
                "{dir}"
            );
        };
        check("$ORIGIN/../lib", Some("/opt/app/bin/../lib"));
        check("${ORIGIN}/lib", Some("/opt/app/bin/lib"));
        check("/usr/local/lib", Some("/usr/local/lib"));
        check("$LIB/x", None);
    }

    #[test]
    fn a_c_program_needs_libc() {
        // This test's own executable is a Rust program linked with the C
        // library, which it names in DT_NEEDED.
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let found = needed_libraries(Path::new("/"), &exe.to_string_lossy(), None);
        let libc = found
            .iter()
            .find(|n| n.soname.as_deref() == Some("libc.so.6"))
            .unwrap_or_else(|| panic!("libc among {found:?}"));
        assert!(Path::new(&libc.path).exists(), "{libc:?}");
    }
}
