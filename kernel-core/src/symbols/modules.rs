//! Modules: the executables and shared libraries mapped in a process.
//!
//! A module is one file mapped several times (one mapping per `PT_LOAD`
//! segment, often split further by `mprotect`). Its load bias is what the
//! loader added to every file virtual address: `runtime = vaddr + bias`,
//! in wrapping arithmetic, and 0 for a non-PIE executable.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::elf::{ElfCache, ElfFile};
use super::maps::MapEntry;
use super::SymbolError;

/// A file-backed ELF object mapped in a process.
#[derive(Debug, Clone)]
pub struct Module {
    /// The path as `/proc/PID/maps` shows it.
    pub path: String,
    /// Where the engine opens it. /proc/PID/maps shows paths from the
    /// *reader's* root, so for a process in a chroot or container the path
    /// is the host's; otherwise `/proc/PID/root/<path>` is the file. The
    /// one whose inode is the mapping's is taken, and
    /// `/proc/PID/map_files/<start>-<end>` when neither is (a deleted file).
    pub file: PathBuf,
    /// The process's root (`/proc/PID/root`): where a path a user gives,
    /// as the process sees it, is looked up.
    pub root: PathBuf,
    pub inode: u64,
    /// Device (major, minor) as `/proc/PID/maps` shows it.
    pub dev: (u32, u32),
    /// The mappings of the file, in address order.
    pub mappings: Vec<MapEntry>,
    /// Runtime address = file vaddr + bias (wrapping).
    pub bias: u64,
}

impl Module {
    /// The file name part of the path, such as `libc.so.6`.
    pub fn basename(&self) -> &str {
        basename(&self.path)
    }

    /// The runtime address of a file virtual address.
    pub fn runtime_addr(&self, vaddr: u64) -> u64 {
        vaddr.wrapping_add(self.bias)
    }

    /// The file virtual address of a runtime address.
    pub fn file_vaddr(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.bias)
    }

    /// True when a mapping of this module contains the runtime address.
    pub fn contains(&self, addr: u64) -> bool {
        self.mappings.iter().any(|m| m.contains(addr))
    }

    /// The root of the traced process's file system.
    fn root(&self) -> PathBuf {
        self.root.clone()
    }
}

/// Groups the file-backed entries of `maps` into modules and computes each
/// one's load bias.
///
/// Only ELF files are modules: mapped data files (locale archives, fonts,
/// shared memory) are skipped, and so are files that cannot be read, since
/// one unreadable mapping should not hide the rest. Pseudo-mappings such as
/// `[vdso]` are skipped too. The ELF files are parsed through `cache`, which
/// looks for separate debug files under `/proc/PID/root`.
///
/// The bias comes from the program headers: for a `PT_LOAD` whose
/// page-aligned `p_offset` equals a mapping's offset,
/// `bias = mapping.start - page_align_down(p_vaddr)`. A bias is accepted
/// when every executable segment is then found mapped, executable, where it
/// predicts; this rules out extra mappings of the file that a program made
/// itself.
pub fn modules(
    pid: i32,
    maps: &[MapEntry],
    cache: &mut ElfCache,
) -> Result<Vec<Module>, SymbolError> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let page = page_size();

    let mut groups: Vec<Module> = Vec::new();
    for entry in maps.iter().filter(|e| e.is_file()) {
        let Some(path) = entry.path.as_deref() else {
            continue;
        };
        let dev = (entry.dev_major, entry.dev_minor);
        match groups
            .iter_mut()
            .find(|m| m.inode == entry.inode && m.dev == dev && m.path == path)
        {
            Some(module) => module.mappings.push(entry.clone()),
            None => groups.push(Module {
                path: path.to_string(),
                file: mapped_file(pid, &root, entry, path),
                root: root.clone(),
                inode: entry.inode,
                dev,
                mappings: vec![entry.clone()],
                bias: 0,
            }),
        }
    }

    let mut modules = Vec::new();
    for mut module in groups {
        let Ok(elf) = cache.get_in_root(&module.file, &root) else {
            continue;
        };
        let Some(bias) = load_bias(&elf, &module.mappings, page) else {
            continue;
        };
        module.bias = bias;
        modules.push(module);
    }
    Ok(modules)
}

/// Finds the module a person named in `spec`:
///
/// - an absolute path, equal to the mapped path or naming the same file once
///   symlinks are resolved inside the process's root;
/// - a file name (`libc.so.6`) or a `DT_SONAME`;
/// - a stem (`libc`), which matches `libc.so.6` and `libc-2.31.so` but
///   never `libcrypto.so.3` or `libcap.so.2`: what follows the stem must be
///   `.so…`, or `.` or `-` and a digit.
///
/// The first of these kinds of match that finds anything decides. Several
/// distinct files matching is an [`SymbolError::AmbiguousModule`]; none is a
/// [`SymbolError::NoModule`] listing what is loaded.
pub fn find_module<'m>(
    spec: &str,
    modules: &'m [Module],
    cache: &mut ElfCache,
) -> Result<&'m Module, SymbolError> {
    let spec = spec.trim();
    let mut sonames: Vec<Option<String>> = Vec::with_capacity(modules.len());
    for module in modules {
        let soname = cache
            .get_in_root(&module.file, &module.root())
            .ok()
            .and_then(|elf| elf.soname.clone());
        sonames.push(soname);
    }

    let found: Vec<&Module> = if spec.starts_with('/') {
        modules
            .iter()
            .filter(|m| {
                m.path == spec || same_file(&m.root().join(spec.trim_start_matches('/')), &m.file)
            })
            .collect()
    } else {
        let named = |matches: fn(&str, &str) -> bool| -> Vec<&Module> {
            modules
                .iter()
                .zip(&sonames)
                .filter(|(m, soname)| {
                    matches(spec, m.basename())
                        || soname.as_deref().is_some_and(|s| matches(spec, s))
                })
                .map(|(m, _)| m)
                .collect()
        };
        let exact = named(|spec, name| spec == name);
        if exact.is_empty() {
            named(stem_matches)
        } else {
            exact
        }
    };

    let mut distinct: Vec<&Module> = Vec::new();
    for module in found {
        if !distinct
            .iter()
            .any(|d| d.inode == module.inode && d.dev == module.dev)
        {
            distinct.push(module);
        }
    }
    match distinct.as_slice() {
        [one] => Ok(one),
        [] => {
            let mut loaded: Vec<String> = Vec::new();
            for module in modules {
                if !loaded.contains(&module.path) {
                    loaded.push(module.path.clone());
                }
            }
            Err(SymbolError::NoModule {
                spec: spec.to_string(),
                loaded,
            })
        }
        several => Err(SymbolError::AmbiguousModule {
            spec: spec.to_string(),
            candidates: several.iter().map(|m| m.path.clone()).collect(),
        }),
    }
}

/// True when `spec` names the module at `path` (with `soname`, if it has
/// one) by any of the rules of [`find_module`], comparing absolute paths as
/// strings only.
pub fn module_matches(spec: &str, path: &str, soname: Option<&str>) -> bool {
    let spec = spec.trim();
    if spec.starts_with('/') {
        return spec == path;
    }
    let name = basename(path);
    spec == name
        || stem_matches(spec, name)
        || soname.is_some_and(|s| spec == s || stem_matches(spec, s))
}

/// True when `name` is `stem` followed by nothing, by `.so…`, or by `.` or
/// `-` and a digit (a version).
fn stem_matches(stem: &str, name: &str) -> bool {
    if stem.is_empty() {
        return false;
    }
    let Some(rest) = name.strip_prefix(stem) else {
        return false;
    };
    let mut chars = rest.chars();
    match (chars.next(), chars.next()) {
        (None, _) => true,
        (Some('.' | '-'), Some(c)) if c.is_ascii_digit() => true,
        _ => rest.starts_with(".so"),
    }
}

/// The file name part of a path.
fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// True when both paths name the same file (device and inode).
/// Where the engine can open the file of a mapping; see [`Module::file`].
fn mapped_file(pid: i32, root: &Path, entry: &MapEntry, path: &str) -> PathBuf {
    let map_files = || {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            entry.start, entry.end
        ))
    };
    if entry.deleted {
        return map_files();
    }
    let is_it = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.ino() == entry.inode);
    let in_root = root.join(path.trim_start_matches('/'));
    if is_it(&in_root) {
        return in_root;
    }
    let as_shown = PathBuf::from(path);
    if is_it(&as_shown) {
        return as_shown;
    }
    map_files()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The load bias of `elf` given the mappings of its file; see [`modules`].
fn load_bias(elf: &ElfFile, mappings: &[MapEntry], page: u64) -> Option<u64> {
    let down = |value: u64| value & !(page - 1);
    let mut candidates = elf.segments.iter().flat_map(|segment| {
        mappings
            .iter()
            .filter(move |m| m.offset == down(segment.offset))
            .map(move |m| m.start.wrapping_sub(down(segment.vaddr)))
    });
    let first = candidates.next()?;
    let consistent = |bias: u64| {
        elf.segments.iter().filter(|s| s.exec).all(|segment| {
            let start = down(segment.vaddr).wrapping_add(bias);
            mappings.iter().any(|m| m.exec && m.start == start)
        })
    };
    if consistent(first) {
        return Some(first);
    }
    Some(candidates.find(|&bias| consistent(bias)).unwrap_or(first))
}

/// The runtime page size, which the loader aligns mappings to.
fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no
    // preconditions and touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks whether `spec` names the module at `path` with `soname`.
    fn check(spec: &str, path: &str, soname: Option<&str>, expect: bool) {
        assert_eq!(
            module_matches(spec, path, soname),
            expect,
            "`{spec}` vs {path} (soname {soname:?})"
        );
    }

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    #[test]
    fn names_match_modules() {
        check("libc", LIBC, Some("libc.so.6"), true);
        check("libc.so.6", LIBC, Some("libc.so.6"), true);
        check("libc.so", LIBC, Some("libc.so.6"), true);
        check(LIBC, LIBC, Some("libc.so.6"), true);
        check("/lib/libc.so.6", LIBC, Some("libc.so.6"), false);
        check(
            "libc",
            "/lib/x86_64-linux-gnu/libc-2.31.so",
            Some("libc.so.6"),
            true,
        );
        check(
            "libc",
            "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
            Some("libcrypto.so.3"),
            false,
        );
        check(
            "libc",
            "/usr/lib/x86_64-linux-gnu/libcap.so.2",
            Some("libcap.so.2"),
            false,
        );
        check(
            "libc",
            "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0",
            None,
            false,
        );
        check(
            "libcrypto",
            "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
            None,
            true,
        );
        check(
            "libstdc++",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",
            None,
            true,
        );
        check("python3", "/usr/bin/python3.11", None, true);
        check("python3", "/usr/bin/python3-config", None, false);
        check("cat", "/usr/bin/cat", None, true);
        check("ca", "/usr/bin/cat", None, false);
        check("", "/usr/bin/cat", None, false);
        // The soname counts too: a library installed under another file name.
        check(
            "libfoo",
            "/opt/app/lib/foo-renamed.so",
            Some("libfoo.so.1"),
            true,
        );
        check(
            "ld-linux-x86-64",
            "/usr/lib64/ld-linux-x86-64.so.2",
            None,
            true,
        );
    }

    #[no_mangle]
    #[inline(never)]
    extern "C" fn wprobe_symbols_bias_probe(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(3)
    }

    #[test]
    fn bias_maps_file_addresses_to_function_pointers() {
        let pid = std::process::id() as i32;
        let maps = super::super::read_maps(pid).expect("own maps");
        let mut cache = ElfCache::new();
        let modules = modules(pid, &maps, &mut cache).expect("own modules");
        let exe = std::env::current_exe().expect("current exe");
        let exe = exe.to_str().expect("utf-8 exe path");
        let module = find_module(exe, &modules, &mut cache).expect("test binary is a module");
        let elf = cache.get(&module.file).expect("test binary parses");

        let symbol = elf
            .lookup("wprobe_symbols_bias_probe")
            .expect("probe function");
        let pointer = wprobe_symbols_bias_probe as extern "C" fn(u64) -> u64 as usize as u64;
        assert_eq!(
            module.runtime_addr(symbol.addr),
            pointer,
            "bias {:#x}",
            module.bias
        );
        assert_eq!(module.file_vaddr(pointer), symbol.addr);
        assert!(module.contains(pointer));
        let (at, offset) = elf
            .symbol_at(module.file_vaddr(pointer) + 1)
            .expect("symbol at");
        assert_eq!((at.name.as_str(), offset), ("wprobe_symbols_bias_probe", 1));
        // The live code is the code in the file.
        let live = {
            // SAFETY: `pointer` is the address of a function of this process,
            // whose code is mapped readable and at least 4 bytes long.
            unsafe { std::slice::from_raw_parts(pointer as *const u8, 4) }
        };
        assert_eq!(elf.file_bytes(symbol.addr, 4).as_deref(), Some(live));
        assert_eq!(wprobe_symbols_bias_probe(2), 6);

        // Rust functions are found by their demangled path, whatever the
        // crate is called.
        let this_test =
            elf.matching("*::modules::tests::bias_maps_file_addresses_to_function_pointers");
        assert_eq!(this_test.len(), 1, "{this_test:?}");
        let name = this_test[0].demangled.clone().expect("demangled");
        assert_eq!(
            elf.lookup(&name).map(|s| s.addr).ok(),
            Some(this_test[0].addr)
        );
    }

    /// A child process killed when the test ends, even when it fails.
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn modules_of_another_process_even_once_its_file_is_deleted() {
        use std::os::unix::fs::FileExt;

        let dir = std::env::temp_dir().join(format!("wprobe-symbols-{}-child", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let source = dir.join("sleeper.c");
        let binary = dir.join("sleeper");
        std::fs::write(
            &source,
            "#include <unistd.h>\n\
             int __attribute__((noinline)) work(int x) { return x * 3; }\n\
             int main(void) { for (;;) pause(); return work(1); }\n",
        )
        .expect("write source");
        let status = std::process::Command::new("gcc")
            .args(["-O0", "-pie", "-fPIE", "-o"])
            .arg(&binary)
            .arg(&source)
            .status()
            .expect("run gcc");
        assert!(status.success());
        let child = Child(
            std::process::Command::new(&binary)
                .spawn()
                .expect("start sleeper"),
        );
        let pid = child.0.id() as i32;

        // The dynamic loader maps libc shortly after exec; wait for it.
        let mut cache = ElfCache::new();
        let mut found = Vec::new();
        for _ in 0..500 {
            let maps = super::super::read_maps(pid).expect("child maps");
            found = modules(pid, &maps, &mut cache).expect("child modules");
            if find_module("libc", &found, &mut cache).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let module = find_module("sleeper", &found, &mut cache).expect("the executable");
        assert_eq!(module.path, binary.to_str().expect("utf-8"));
        assert_eq!(
            module.file,
            PathBuf::from(format!("/proc/{pid}/root{}", module.path))
        );
        let elf = cache.get(&module.file).expect("parse");
        let work = elf.lookup("work").expect("work");
        let live = |module: &Module| {
            let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open child memory");
            let mut bytes = vec![0; work.size as usize];
            mem.read_exact_at(&mut bytes, module.runtime_addr(work.addr))
                .expect("read child code");
            bytes
        };
        assert_eq!(
            elf.file_bytes(work.addr, work.size as usize),
            Some(live(module))
        );

        // Once the file is unlinked, maps say so and the module is opened
        // through map_files (which needs the privileges a tracer has).
        std::fs::remove_dir_all(&dir).expect("delete the executable");
        let maps = super::super::read_maps(pid).expect("child maps");
        assert!(maps
            .iter()
            .any(|m| m.deleted && m.path.as_deref() == Some(module.path.as_str())));
        let mut fresh = ElfCache::new();
        let after = modules(pid, &maps, &mut fresh).expect("child modules");
        let deleted = find_module("sleeper", &after, &mut fresh).expect("still found");
        assert!(
            deleted.file.starts_with(format!("/proc/{pid}/map_files/")),
            "{deleted:?}"
        );
        assert_eq!(deleted.bias, module.bias);
        let elf = fresh.get(&deleted.file).expect("parse deleted file");
        assert_eq!(
            elf.file_bytes(work.addr, work.size as usize),
            Some(live(deleted))
        );
    }

    #[test]
    fn libc_of_this_process() {
        let pid = std::process::id() as i32;
        let maps = super::super::read_maps(pid).expect("own maps");
        let mut cache = ElfCache::new();
        let modules = modules(pid, &maps, &mut cache).expect("own modules");
        assert!(modules.iter().all(|m| m.path.starts_with('/')));

        let libc = find_module("libc", &modules, &mut cache).expect("libc is loaded");
        assert_eq!(libc.basename(), "libc.so.6");
        assert_eq!(
            find_module("libc.so.6", &modules, &mut cache)
                .expect("by file name")
                .path,
            libc.path
        );
        assert_eq!(
            find_module(&libc.path, &modules, &mut cache)
                .expect("by path")
                .path,
            libc.path
        );

        let elf = cache.get(&libc.file).expect("libc parses");
        assert_eq!(elf.soname.as_deref(), Some("libc.so.6"));
        let malloc = elf.lookup("malloc").expect("malloc");
        assert_eq!(malloc.kind, super::super::SymKind::Func);
        let pointer =
            libc::malloc as unsafe extern "C" fn(libc::size_t) -> *mut libc::c_void as usize as u64;
        assert_eq!(libc.runtime_addr(malloc.addr), pointer);

        let error = elf.lookup("mallco").expect_err("misspelt");
        match &error {
            SymbolError::UnknownSymbol { suggestions, .. } => {
                assert_eq!(
                    suggestions.first().map(String::as_str),
                    Some("malloc"),
                    "{error}"
                )
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(
            error.to_string().starts_with(&format!(
                "no symbol `mallco` in {} (did you mean `malloc`",
                libc.path
            )),
            "{error}"
        );

        let missing = find_module("libdoesnotexist", &modules, &mut cache).expect_err("absent");
        assert!(missing.to_string().contains(&libc.path), "{missing}");
    }
}
