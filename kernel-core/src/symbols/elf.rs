//! One parsed ELF file: segments, function symbols and the file's bytes.
//!
//! Parsing is done by the `object` crate; this file only chooses what to
//! keep. Every address here is a file virtual address (`p_vaddr`,
//! `st_value`); a [`Module`](super::Module) adds its load bias.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::elf;
use object::read::elf::{Dyn as _, ElfFile64, FileHeader as _, ProgramHeader as _, Sym as _};
use object::{Endianness, Object};

use super::debuginfo::find_debug_data;
use super::demangle::{demangle, glob_match, strip_params};
use super::SymbolError;

/// How many suggestions an unknown-symbol error offers at most.
const MAX_SUGGESTIONS: usize = 3;
/// Names longer than this (in characters) get no suggestions.
const MAX_SUGGESTED_NAME: usize = 512;

/// How far `symbol_at` walks back past the nearest symbols looking for a
/// function whose size covers the address (functions nested in others).
const SYMBOL_AT_LOOKBACK: usize = 16;

/// What kind of function a symbol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymKind {
    /// `STT_FUNC`: the address is the code that runs on every call.
    Func,
    /// `STT_GNU_IFUNC`: the address is a *resolver* that the dynamic linker
    /// calls once to choose an implementation (libc's `memcpy`, `strlen`).
    /// Probing it catches the resolution, not the calls.
    IFunc,
}

/// A loadable segment (`PT_LOAD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub align: u64,
}

impl Segment {
    /// True when `vaddr` lies in the segment's memory image.
    pub fn contains(&self, vaddr: u64) -> bool {
        vaddr >= self.vaddr && vaddr - self.vaddr < self.memsz
    }
}

/// A function symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// The name as the symbol table spells it, without any `@VERSION`.
    pub name: String,
    /// The readable name for C++ and Rust symbols.
    pub demangled: Option<String>,
    /// The file virtual address.
    pub addr: u64,
    /// The size in bytes as the table gives it; 0 for hand-written assembly
    /// that did not declare one.
    pub size: u64,
    pub kind: SymKind,
    /// True for `STB_GLOBAL`, `STB_WEAK` and `STB_GNU_UNIQUE`.
    pub global: bool,
}

impl Symbol {
    /// The demangled name if there is one, else the raw name.
    pub fn display_name(&self) -> &str {
        self.demangled.as_deref().unwrap_or(&self.name)
    }

    /// True when `vaddr` lies inside the function according to its size.
    pub fn covers(&self, vaddr: u64) -> bool {
        vaddr >= self.addr && vaddr - self.addr < self.size
    }
}

/// A parsed ELF file with its bytes.
pub struct ElfFile {
    /// The path the file was read from.
    pub path: PathBuf,
    pub build_id: Option<Vec<u8>>,
    /// `DT_SONAME`, for shared libraries that declare one.
    pub soname: Option<String>,
    /// The requested program interpreter (`PT_INTERP`).
    pub interp: Option<String>,
    pub entry: u64,
    /// `ET_DYN`: a PIE executable or a shared library, loaded at a bias.
    pub is_dyn: bool,
    /// The `PT_LOAD` segments in file order.
    pub segments: Vec<Segment>,
    /// Functions (and ifuncs) from `.symtab`, `.dynsym` and the separate
    /// debug file, sorted by address and deduplicated by (address, name).
    pub symbols: Vec<Symbol>,
    /// The separate debug file whose symbols were merged in, if one was found.
    pub debug_file: Option<PathBuf>,
    /// True for a Go binary (`.go.buildinfo`, `.gopclntab` or `runtime.main`).
    pub is_go: bool,
    /// The path as the traced process names it, for messages.
    display_path: PathBuf,
    /// The whole file, for [`ElfFile::file_bytes`].
    data: Vec<u8>,
}

impl fmt::Debug for ElfFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bytes and the full symbol list would drown everything else.
        f.debug_struct("ElfFile")
            .field("path", &self.path)
            .field("build_id", &self.build_id.as_deref().map(hex))
            .field("soname", &self.soname)
            .field("interp", &self.interp)
            .field("entry", &format_args!("{:#x}", self.entry))
            .field("is_dyn", &self.is_dyn)
            .field("segments", &self.segments)
            .field("symbols", &self.symbols.len())
            .field("debug_file", &self.debug_file)
            .field("is_go", &self.is_go)
            .finish()
    }
}

impl ElfFile {
    /// Reads and parses the ELF file at `path`, merging in the symbols of a
    /// separate debug file found under `/`.
    pub fn open(path: &Path) -> Result<ElfFile, SymbolError> {
        Self::open_in_root(path, Path::new("/"))
    }

    /// As [`ElfFile::open`], looking for the separate debug file under
    /// `root` (such as `/proc/PID/root`). When `path` lies under `root`,
    /// messages name it as the process sees it.
    pub fn open_in_root(path: &Path, root: &Path) -> Result<ElfFile, SymbolError> {
        Self::parse(path, root, read_elf_bytes(path)?)
    }

    /// Parses `data`, the contents of `path`.
    fn parse(path: &Path, root: &Path, data: Vec<u8>) -> Result<ElfFile, SymbolError> {
        let bad = |reason: String| SymbolError::BadElf {
            path: path.to_path_buf(),
            reason,
        };
        if !data.starts_with(&elf::ELFMAG) {
            return Err(bad("it does not start with the ELF magic bytes".into()));
        }
        // Byte 4 of the identification is EI_CLASS.
        if data.get(4) != Some(&elf::ELFCLASS64) {
            return Err(bad(
                "it is a 32-bit ELF file, and only 64-bit ELF files are supported".into(),
            ));
        }
        let file = ElfFile64::<Endianness>::parse(data.as_slice())
            .map_err(|e| bad(format!("{e} (the file may be truncated or corrupt)")))?;
        let endian = file.endian();
        let header = file.elf_header();

        let mut segments = Vec::new();
        let mut interp = None;
        for phdr in file.elf_program_headers() {
            match phdr.p_type(endian) {
                elf::PT_LOAD => {
                    let flags = phdr.p_flags(endian);
                    segments.push(Segment {
                        vaddr: phdr.p_vaddr(endian),
                        memsz: phdr.p_memsz(endian),
                        offset: phdr.p_offset(endian),
                        filesz: phdr.p_filesz(endian),
                        read: flags & elf::PF_R != 0,
                        write: flags & elf::PF_W != 0,
                        exec: flags & elf::PF_X != 0,
                        align: phdr.p_align(endian),
                    });
                }
                elf::PT_INTERP => {
                    interp = phdr
                        .data(endian, data.as_slice())
                        .ok()
                        .map(|bytes| nul_terminated(bytes).to_string());
                }
                _ => {}
            }
        }

        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let debuglink = file.gnu_debuglink().ok().flatten();
        let soname = soname(&file, data.as_slice());
        let is_go = file.section_by_name(".go.buildinfo").is_some()
            || file.section_by_name(".gopclntab").is_some();

        let mut raw = Vec::new();
        collect_functions(&file, file.elf_symbol_table(), &mut raw);
        collect_functions(&file, file.elf_dynamic_symbol_table(), &mut raw);

        let debug = find_debug_data(path, root, build_id.as_deref(), debuglink);
        let debug_file = match debug {
            Some((debug_path, debug_data)) => {
                // A debug file that does not parse is ignored rather than
                // failing the stripped file, which is still usable.
                if let Ok(debug_elf) = ElfFile64::<Endianness>::parse(debug_data.as_slice()) {
                    collect_functions(&debug_elf, debug_elf.elf_symbol_table(), &mut raw);
                    Some(debug_path)
                } else {
                    None
                }
            }
            None => None,
        };

        let symbols = finish_symbols(raw);
        let is_go = is_go || symbols.iter().any(|s| s.name == "runtime.main");
        let display_path = match path.strip_prefix(root) {
            Ok(relative) if root != Path::new("/") => Path::new("/").join(relative),
            _ => path.to_path_buf(),
        };

        Ok(ElfFile {
            path: path.to_path_buf(),
            build_id,
            soname,
            interp,
            entry: header.e_entry(endian),
            is_dyn: header.e_type(endian) == elf::ET_DYN,
            segments,
            symbols,
            debug_file,
            is_go,
            display_path,
            data,
        })
    }

    /// The file address of a defined data object in the dynamic symbol
    /// table (such as the dynamic linker's `_r_debug`). Functions are in
    /// [`ElfFile::symbols`]; data symbols are rarely needed, so they are
    /// looked up on demand rather than kept.
    pub fn data_symbol(&self, name: &str) -> Option<u64> {
        let file = ElfFile64::<Endianness>::parse(self.data.as_slice()).ok()?;
        let endian = file.endian();
        let table = file.elf_dynamic_symbol_table();
        table.iter().find_map(|sym| {
            let wanted = sym.st_type() == elf::STT_OBJECT
                && sym.st_shndx(endian) != elf::SHN_UNDEF
                && table
                    .symbol_name(endian, sym)
                    .is_ok_and(|n| strip_version(&String::from_utf8_lossy(n)) == name);
            wanted.then(|| sym.st_value(endian))
        })
    }

    /// The path as the traced process names it (without `/proc/PID/root`).
    pub fn display_path(&self) -> &Path {
        &self.display_path
    }

    /// Finds a function by name.
    ///
    /// The name is matched exactly against the raw symbol names, then the
    /// demangled names, then the demangled names without their parameter
    /// list (`ns::Widget::frob` for `ns::Widget::frob(int)`); the first of
    /// these that matches anything decides. A trailing `@VERSION` is ignored.
    ///
    /// When several symbols match, `FUNC` is preferred over `IFUNC` (an
    /// ifunc's address is the resolver the dynamic linker runs once, not the
    /// code that runs on each call, so a `FUNC` of the same name is almost
    /// always what was meant), then global over local, then a known size
    /// over size 0. Static functions of the same name in different source
    /// files, or C++ overloads, give several addresses; this returns the
    /// first and [`ElfFile::lookup_all`] gives them all.
    pub fn lookup(&self, name: &str) -> Result<&Symbol, SymbolError> {
        self.lookup_all(name)
            .into_iter()
            .next()
            .ok_or_else(|| SymbolError::UnknownSymbol {
                name: name.to_string(),
                file: self.display_path.clone(),
                suggestions: self.suggestions(name),
            })
    }

    /// Every function `name` could mean, one per address, best first (see
    /// [`ElfFile::lookup`] for the order).
    pub fn lookup_all(&self, name: &str) -> Vec<&Symbol> {
        let name = strip_version(name.trim());
        if name.is_empty() {
            return Vec::new();
        }
        let tiers: [&dyn Fn(&Symbol) -> bool; 3] = [
            &|s| s.name == name,
            &|s| s.demangled.as_deref() == Some(name),
            &|s| s.demangled.as_deref().map(strip_params) == Some(name),
        ];
        for tier in tiers {
            let mut found: Vec<&Symbol> = self.symbols.iter().filter(|s| tier(s)).collect();
            if found.is_empty() {
                continue;
            }
            found.sort_by_key(|s| (s.kind != SymKind::Func, !s.global, s.size == 0, s.addr));
            let mut seen = Vec::new();
            found.retain(|s| {
                let fresh = !seen.contains(&s.addr);
                seen.push(s.addr);
                fresh
            });
            return found;
        }
        Vec::new()
    }

    /// The functions whose raw or demangled name (with or without the
    /// parameter list) matches a glob such as `mall*`, in address order.
    pub fn matching(&self, glob: &str) -> Vec<&Symbol> {
        self.symbols
            .iter()
            .filter(|s| {
                glob_match(glob, &s.name)
                    || s.demangled
                        .as_deref()
                        .is_some_and(|d| glob_match(glob, d) || glob_match(glob, strip_params(d)))
            })
            .collect()
    }

    /// The function containing `vaddr`, and the offset of `vaddr` into it.
    ///
    /// A function contains the addresses its size covers. A symbol of size 0
    /// is taken to run up to the next symbol, within its segment, when no
    /// sized symbol covers the address. Among aliases at the same address a
    /// global name is preferred, then the one with fewest leading
    /// underscores (`malloc` rather than `__libc_malloc`).
    pub fn symbol_at(&self, vaddr: u64) -> Option<(&Symbol, u64)> {
        let end = self.symbols.partition_point(|s| s.addr <= vaddr);
        let nearest = self.symbols[..end].last()?;
        fn best<'s>(candidates: impl Iterator<Item = &'s Symbol>) -> Option<&'s Symbol> {
            candidates.min_by_key(|s| {
                (
                    !s.global,
                    s.kind != SymKind::Func,
                    s.name.len() - s.name.trim_start_matches('_').len(),
                    s.name.len(),
                )
            })
        }
        let group_start = self.symbols[..end].partition_point(|s| s.addr < nearest.addr);
        let window_start = group_start.saturating_sub(SYMBOL_AT_LOOKBACK);
        // The closest start address wins among the symbols that cover vaddr.
        let covering = self.symbols[window_start..end]
            .iter()
            .filter(|s| s.covers(vaddr))
            .max_by_key(|s| s.addr)
            .map(|s| s.addr);
        let chosen = match covering {
            Some(addr) => best(
                self.symbols[window_start..end]
                    .iter()
                    .filter(|s| s.addr == addr && s.covers(vaddr)),
            ),
            None => {
                let same_segment = match (self.segment_for(nearest.addr), self.segment_for(vaddr)) {
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                };
                if !same_segment {
                    return None;
                }
                best(
                    self.symbols[group_start..end]
                        .iter()
                        .filter(|s| s.size == 0),
                )
            }
        }?;
        Some((chosen, vaddr - chosen.addr))
    }

    /// The bytes the file holds for `[vaddr, vaddr + len)`, or `None` when
    /// the range is not entirely inside the file-backed part of one segment.
    pub fn file_bytes(&self, vaddr: u64, len: usize) -> Option<Vec<u8>> {
        let len64 = u64::try_from(len).ok()?;
        let segment = self.segments.iter().find(|s| {
            vaddr >= s.vaddr
                && (vaddr - s.vaddr)
                    .checked_add(len64)
                    .is_some_and(|end| end <= s.filesz)
        })?;
        let start = usize::try_from(segment.offset.checked_add(vaddr - segment.vaddr)?).ok()?;
        self.data
            .get(start..start.checked_add(len)?)
            .map(<[u8]>::to_vec)
    }

    /// The loadable segment whose memory image contains `vaddr`.
    pub fn segment_for(&self, vaddr: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.contains(vaddr))
    }

    /// Up to three names close to `name`: by edit distance first, then
    /// names that start with it, then names that contain it.
    fn suggestions(&self, name: &str) -> Vec<String> {
        let name = strip_version(name.trim());
        let wanted_len = name.chars().count();
        // No symbol is this long: nothing is close, and an edit distance
        // to every symbol would cost time quadratic in the name.
        if wanted_len > MAX_SUGGESTED_NAME {
            return Vec::new();
        }
        let max_distance = (wanted_len / 3).max(1);
        let mut scored: HashMap<&str, (u8, usize)> = HashMap::new();
        for symbol in &self.symbols {
            let readable = symbol
                .demangled
                .as_deref()
                .map_or(symbol.name.as_str(), strip_params);
            // The distance is at least the difference in length (in
            // characters; bytes are at most 4 a character): skip the
            // quadratic computation where it cannot be small enough.
            let distance = if readable.len().abs_diff(name.len()) <= max_distance * 4 {
                strsim::damerau_levenshtein(name, readable)
            } else {
                usize::MAX
            };
            let score = if distance <= max_distance {
                (0, distance)
            } else if readable.starts_with(name) {
                (1, readable.len())
            } else if wanted_len >= 3 && readable.contains(name) {
                (2, readable.len())
            } else {
                continue;
            };
            let entry = scored.entry(readable).or_insert(score);
            *entry = (*entry).min(score);
        }
        // Names much further away than the closest one are noise.
        let closest = scored.values().filter(|s| s.0 == 0).map(|s| s.1).min();
        let mut ranked: Vec<(&str, (u8, usize))> = scored
            .into_iter()
            .filter(|(_, score)| score.0 != 0 || closest.is_some_and(|c| score.1 <= c + 1))
            .collect();
        ranked.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
        ranked
            .into_iter()
            .take(MAX_SUGGESTIONS)
            .map(|(n, _)| n.to_string())
            .collect()
    }
}

/// Parsed ELF files, keyed by device, inode, size and modification time, so
/// that a library mapped by many processes (or reached through several
/// `/proc/PID/root` paths) is parsed once.
///
/// The separate debug file is looked up under the root given by whoever
/// opens the file first; two roots holding the same inode of a library are
/// taken to hold the same debug files.
#[derive(Default)]
pub struct ElfCache {
    files: HashMap<CacheKey, Arc<ElfFile>>,
}

/// What identifies one version of one file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    dev: u64,
    inode: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl ElfCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The parsed file at `path`, reading it on first use.
    pub fn get(&mut self, path: &Path) -> Result<Arc<ElfFile>, SymbolError> {
        self.get_in_root(path, Path::new("/"))
    }

    /// As [`ElfCache::get`], looking for the debug file under `root`.
    pub fn get_in_root(&mut self, path: &Path, root: &Path) -> Result<Arc<ElfFile>, SymbolError> {
        let meta = std::fs::metadata(path).map_err(|source| SymbolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let key = CacheKey {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        if let Some(file) = self.files.get(&key) {
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(ElfFile::open_in_root(path, root)?);
        self.files.insert(key, Arc::clone(&file));
        Ok(file)
    }

    /// How many files are cached.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Reads a whole ELF file, refusing anything that is not a regular file
/// starting with the ELF magic before reading more than its first bytes:
/// processes map data files of hundreds of megabytes (locale archives) and
/// devices that must not be read.
fn read_elf_bytes(path: &Path) -> Result<Vec<u8>, SymbolError> {
    use std::io::Read;

    let io = |source| SymbolError::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_elf = |reason: &str| SymbolError::BadElf {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    // Checked before opening: opening a FIFO or a device can block or act.
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(not_elf("it is not a regular file"));
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut data = Vec::new();
    (&mut file).take(4).read_to_end(&mut data).map_err(io)?;
    if data != elf::ELFMAG {
        return Err(not_elf("it does not start with the ELF magic bytes"));
    }
    file.read_to_end(&mut data).map_err(io)?;
    Ok(data)
}

/// A function symbol before sorting and deduplication.
type RawSymbols = Vec<Symbol>;

/// Appends the defined function and ifunc symbols of `table` to `out`.
fn collect_functions(
    file: &ElfFile64<'_, Endianness>,
    table: &object::read::elf::SymbolTable<'_, elf::FileHeader64<Endianness>>,
    out: &mut RawSymbols,
) {
    let endian = file.endian();
    for sym in table.iter() {
        let kind = match sym.st_type() {
            elf::STT_FUNC => SymKind::Func,
            elf::STT_GNU_IFUNC => SymKind::IFunc,
            _ => continue,
        };
        if sym.st_shndx(endian) == elf::SHN_UNDEF {
            continue;
        }
        let Ok(name) = table.symbol_name(endian, sym) else {
            continue;
        };
        let name = strip_version(&String::from_utf8_lossy(name)).to_string();
        if name.is_empty() {
            continue;
        }
        out.push(Symbol {
            name,
            demangled: None,
            addr: sym.st_value(endian),
            size: sym.st_size(endian),
            kind,
            global: sym.st_bind() != elf::STB_LOCAL,
        });
    }
}

/// Sorts by address, merges duplicates of one (address, name) that several
/// tables list, and demangles.
fn finish_symbols(mut raw: RawSymbols) -> Vec<Symbol> {
    raw.sort_by(|a, b| a.addr.cmp(&b.addr).then_with(|| a.name.cmp(&b.name)));
    raw.dedup_by(|later, kept| {
        if later.addr != kept.addr || later.name != kept.name {
            return false;
        }
        kept.size = kept.size.max(later.size);
        kept.global |= later.global;
        if later.kind == SymKind::IFunc {
            kept.kind = SymKind::IFunc;
        }
        true
    });
    for symbol in &mut raw {
        symbol.demangled = demangle(&symbol.name);
    }
    raw
}

/// The `DT_SONAME` of a file with a dynamic section.
fn soname(file: &ElfFile64<'_, Endianness>, data: &[u8]) -> Option<String> {
    let endian = file.endian();
    let sections = file.elf_section_table();
    let (dynamic, link) = sections.dynamic(endian, data).ok()??;
    let strings = sections.strings(endian, data, link).ok()?;
    let entry = dynamic
        .iter()
        .find(|d| d.d_tag(endian) == u64::from(elf::DT_SONAME))?;
    let offset = u32::try_from(entry.d_val(endian)).ok()?;
    let name = strings.get(offset).ok()?;
    Some(String::from_utf8_lossy(name).into_owned())
}

/// Removes a symbol version (`memcpy@GLIBC_2.2.5`, `memcpy@@GLIBC_2.14`).
fn strip_version(name: &str) -> &str {
    match name.find('@') {
        Some(at) if at > 0 => &name[..at],
        _ => name,
    }
}

/// The text of a NUL-terminated byte string.
fn nul_terminated(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).unwrap_or("")
}

/// Lowercase hex of a byte string, as build IDs are written.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[path = "elf_tests.rs"]
mod tests;
