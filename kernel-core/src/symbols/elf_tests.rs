//! Tests of [`ElfFile`] on real programs compiled at test time with gcc and
//! g++, stripped and split with binutils the way distributions do it.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection};

use super::*;

/// A C program with a global function, a static one and `main`. It is
/// built without optimisation so that `secret_helper` stays a function.
const C_SOURCE: &str = r#"
#include <stdio.h>
static int __attribute__((noinline)) secret_helper(int x) { return x * 7 + 1; }
int __attribute__((noinline)) work(int x) { return secret_helper(x) + 2; }
int main(int argc, char **argv) { (void)argv; printf("%d\n", work(argc)); return 0; }
"#;

/// A C++ program with a namespace, overloads, a template and an anonymous
/// namespace.
const CPP_SOURCE: &str = r#"
namespace ns {
struct Widget {
    int v;
    int frob(int x);
    int frob(double x);
    int size() const;
};
int __attribute__((noinline)) Widget::frob(int x) { return v + x; }
int __attribute__((noinline)) Widget::frob(double x) { return v + (int)x; }
int __attribute__((noinline)) Widget::size() const { return v; }
template <typename T> T __attribute__((noinline)) twice(T x) { return x + x; }
}
namespace { int __attribute__((noinline)) hidden() { return 5; } }
int main() {
    ns::Widget w{1};
    return w.frob(2) + w.frob(2.5) + w.size() + ns::twice<int>(3) + hidden();
}
"#;

/// Looks `name` up and compares a one-line rendering of the result with
/// `expect`: `name kind global|local sized|unsized`, or the error message.
fn check(elf: &ElfFile, name: &str, expect: &str) {
    let actual = match elf.lookup(name) {
        Ok(s) => format!(
            "{} {:?} {} {}",
            s.display_name(),
            s.kind,
            if s.global { "global" } else { "local" },
            if s.size > 0 { "sized" } else { "unsized" }
        ),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        actual,
        expect,
        "looking up `{name}` in {}",
        elf.path.display()
    );
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("wprobe-symbols-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command and fails the test with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Compiles `source` with `compiler` and `flags` into `dir/name`.
fn compile(
    dir: &TempDir,
    compiler: &str,
    ext: &str,
    source: &str,
    name: &str,
    flags: &[&str],
) -> PathBuf {
    let src = dir.path(&format!("{name}.{ext}"));
    std::fs::write(&src, source).expect("write source");
    let out = dir.path(name);
    let mut args = vec!["-O0", "-g", "-Wl,--build-id", "-o"];
    let (src_s, out_s) = (src.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    args.push(out_s);
    args.push(src_s);
    args.extend_from_slice(flags);
    run(compiler, &args);
    out
}

/// The bytes of `.text` according to the section headers, read with the
/// `object` crate directly, and the section's address.
fn text_section(path: &Path) -> (u64, Vec<u8>) {
    let data = std::fs::read(path).expect("read binary");
    let file = object::File::parse(data.as_slice()).expect("parse");
    let text = file.section_by_name(".text").expect(".text");
    (text.address(), text.data().expect("text data").to_vec())
}

/// Splits the symbols of `binary` into `debug`, then strips `binary`.
fn split_debug(binary: &Path, debug: &Path) {
    let (b, d) = (
        binary.to_str().expect("utf-8"),
        debug.to_str().expect("utf-8"),
    );
    run("objcopy", &["--only-keep-debug", b, d]);
    run("strip", &["--strip-debug", "--strip-unneeded", b]);
}

#[test]
fn non_pie_and_pie_executables() {
    let dir = TempDir::new("pie");
    for (name, flags, is_dyn) in [
        ("nopie", &["-no-pie", "-fno-pie"][..], false),
        ("pie", &["-pie", "-fPIE"][..], true),
    ] {
        let path = compile(&dir, "gcc", "c", C_SOURCE, name, flags);
        let elf = ElfFile::open(&path).expect("open compiled program");
        assert_eq!(elf.is_dyn, is_dyn, "{name}");
        assert_eq!(elf.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(elf.build_id.as_ref().is_some_and(|id| id.len() == 20));
        assert_eq!(elf.debug_file, None);
        assert!(!elf.is_go);
        assert_eq!(elf.soname, None);
        assert!(elf.symbols.windows(2).all(|w| w[0].addr <= w[1].addr));

        check(&elf, "main", "main Func global sized");
        check(&elf, "work", "work Func global sized");
        check(&elf, "secret_helper", "secret_helper Func local sized");
        check(&elf, "main@GLIBC_2.2.5", "main Func global sized");
        check(
            &elf,
            "secret_helpr",
            &format!(
                "no symbol `secret_helpr` in {} (did you mean `secret_helper`?)",
                path.display()
            ),
        );

        // The bytes of `main` as the file holds them, compared with `.text`
        // as the section headers describe it.
        let main = elf.lookup("main").expect("main");
        let (text_addr, text) = text_section(&path);
        let start = (main.addr - text_addr) as usize;
        let expected = &text[start..start + main.size as usize];
        assert_eq!(
            elf.file_bytes(main.addr, main.size as usize).as_deref(),
            Some(expected)
        );
        // Past the end of the file-backed part there are no file bytes.
        let last = elf.segments.last().expect("segments");
        assert_eq!(elf.file_bytes(last.vaddr + last.filesz, 1), None);
        assert_eq!(elf.file_bytes(u64::MAX - 1, 4), None);

        let segment = elf.segment_for(main.addr).expect("main is in a segment");
        assert!(
            segment.exec && segment.read && !segment.write,
            "{segment:?}"
        );
        assert_eq!(
            elf.segment_for(0x10),
            if is_dyn { elf.segment_for(0) } else { None }
        );

        let (at, offset) = elf.symbol_at(main.addr + 3).expect("inside main");
        assert_eq!((at.name.as_str(), offset), ("main", 3));
        let helper = elf.lookup("secret_helper").expect("helper");
        assert_eq!(
            elf.symbol_at(helper.addr)
                .map(|(s, o)| (s.name.as_str(), o)),
            Some(("secret_helper", 0))
        );
        assert_eq!(elf.symbol_at(0), None);

        let globbed: Vec<&str> = elf
            .matching("*_helper")
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(globbed, ["secret_helper"]);
    }
}

#[test]
fn separate_debug_file_by_debuglink() {
    let dir = TempDir::new("debuglink");
    let path = compile(&dir, "gcc", "c", C_SOURCE, "prog", &[]);
    let debug = dir.path("prog.debug");
    split_debug(&path, &debug);

    // Stripped and without a link, only the dynamic symbols are left.
    let bare = ElfFile::open(&path).expect("open stripped");
    assert_eq!(bare.debug_file, None);
    check(
        &bare,
        "secret_helper",
        &format!(
            "no symbol `secret_helper` in {} (list the functions with a glob such as `prefix*`)",
            path.display()
        ),
    );

    let link = format!("--add-gnu-debuglink={}", debug.display());
    run("objcopy", &[&link, path.to_str().expect("utf-8")]);
    // Remove the build-id route so that only the debuglink can succeed.
    let elf = ElfFile::open(&path).expect("open linked");
    assert_eq!(elf.debug_file.as_deref(), Some(debug.as_path()));
    check(&elf, "secret_helper", "secret_helper Func local sized");
    check(&elf, "main", "main Func global sized");

    // The same link, with the debug file moved to `.debug/`.
    std::fs::create_dir_all(dir.path(".debug")).expect("mkdir .debug");
    let moved = dir.path(".debug/prog.debug");
    std::fs::rename(&debug, &moved).expect("move debug file");
    let elf = ElfFile::open(&path).expect("open linked");
    assert_eq!(elf.debug_file.as_deref(), Some(moved.as_path()));
    check(&elf, "secret_helper", "secret_helper Func local sized");

    // A debug file whose CRC no longer matches is refused.
    let mut bytes = std::fs::read(&moved).expect("read debug file");
    bytes.push(0);
    std::fs::write(&moved, bytes).expect("write debug file");
    let elf = ElfFile::open(&path).expect("open linked");
    assert_eq!(elf.debug_file, None);
}

#[test]
fn separate_debug_file_by_build_id_under_a_root() {
    let dir = TempDir::new("buildid");
    let root = dir.path("root");
    std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir root");
    let built = compile(&dir, "gcc", "c", C_SOURCE, "prog", &[]);
    let path = root.join("usr/bin/prog");
    std::fs::rename(&built, &path).expect("move into root");
    let staging = dir.path("prog.debug");
    split_debug(&path, &staging);

    let elf = ElfFile::open_in_root(&path, &root).expect("open stripped");
    assert_eq!(elf.debug_file, None);
    assert_eq!(elf.display_path(), Path::new("/usr/bin/prog"));
    let id = elf.build_id.clone().expect("build id");
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let by_id = root
        .join("usr/lib/debug/.build-id")
        .join(&hex[..2])
        .join(format!("{}.debug", &hex[2..]));
    std::fs::create_dir_all(by_id.parent().expect("parent")).expect("mkdir build-id");
    std::fs::rename(&staging, &by_id).expect("install debug file");

    let elf = ElfFile::open_in_root(&path, &root).expect("open stripped");
    assert_eq!(elf.debug_file.as_deref(), Some(by_id.as_path()));
    check(&elf, "secret_helper", "secret_helper Func local sized");
    check(
        &elf,
        "secret",
        "no symbol `secret` in /usr/bin/prog (did you mean `secret_helper`?)",
    );

    // The cache hands out the same parse for the same file.
    let mut cache = ElfCache::new();
    let first = cache.get_in_root(&path, &root).expect("cache");
    let second = cache.get_in_root(&path, &root).expect("cache");
    assert!(std::sync::Arc::ptr_eq(&first, &second));
    assert_eq!(cache.len(), 1);
}

#[test]
fn cpp_names_are_found_demangled() {
    let dir = TempDir::new("cpp");
    let path = compile(&dir, "g++", "cpp", CPP_SOURCE, "widget", &[]);
    let elf = ElfFile::open(&path).expect("open C++ program");

    check(
        &elf,
        "ns::Widget::frob(int)",
        "ns::Widget::frob(int) Func global sized",
    );
    check(
        &elf,
        "_ZN2ns6Widget4frobEd",
        "ns::Widget::frob(double) Func global sized",
    );
    check(
        &elf,
        "ns::Widget::size",
        "ns::Widget::size() const Func global sized",
    );
    check(
        &elf,
        "ns::twice<int>",
        "ns::twice<int>(int) Func global sized",
    );
    check(
        &elf,
        "(anonymous namespace)::hidden",
        "(anonymous namespace)::hidden() Func local sized",
    );
    check(
        &elf,
        "ns::Widget::frb",
        &format!(
            "no symbol `ns::Widget::frb` in {} (did you mean `ns::Widget::frob`?)",
            path.display()
        ),
    );

    // Both overloads, one address each.
    let mut overloads: Vec<&str> = elf
        .lookup_all("ns::Widget::frob")
        .iter()
        .map(|s| s.display_name())
        .collect();
    overloads.sort();
    assert_eq!(
        overloads,
        ["ns::Widget::frob(double)", "ns::Widget::frob(int)"]
    );

    let mut members: Vec<&str> = elf
        .matching("ns::Widget::*")
        .iter()
        .map(|s| s.display_name())
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            "ns::Widget::frob(double)",
            "ns::Widget::frob(int)",
            "ns::Widget::size() const"
        ]
    );
    let raw: Vec<&str> = elf
        .matching("_ZN2ns6Widget4frob*")
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(raw.len(), 2);
}

#[test]
fn files_that_are_not_elf_say_why() {
    let dir = TempDir::new("notelf");
    let text = dir.path("notes.txt");
    std::fs::write(&text, "hello").expect("write");
    let error = ElfFile::open(&text).expect_err("not ELF");
    assert_eq!(
        error.to_string(),
        format!(
            "{} is not a usable ELF file: it does not start with the ELF magic bytes",
            text.display()
        )
    );
    let missing = dir.path("missing");
    let error = ElfFile::open(&missing).expect_err("missing");
    assert_eq!(
        error.to_string(),
        format!(
            "cannot read {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let error = ElfFile::open(Path::new("/dev/null")).expect_err("a device");
    assert_eq!(
        error.to_string(),
        "/dev/null is not a usable ELF file: it is not a regular file"
    );
    let mut truncated = b"\x7fELF\x02\x01\x01".to_vec();
    truncated.resize(20, 0);
    std::fs::write(&text, truncated).expect("write");
    let error = ElfFile::open(&text).expect_err("truncated");
    assert!(
        error.to_string().contains("may be truncated or corrupt"),
        "{error}"
    );
}
