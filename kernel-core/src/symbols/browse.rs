//! Read-only views of a process for someone choosing where to probe: its
//! functions ([`functions`]), a function's instructions with the engine's
//! verdict on each ([`disasm`]), and what the engine would do with a spec
//! ([`check_spec`]).
//!
//! Everything is computed from `/proc/PID/maps` and the ELF files, never
//! from the process's memory: memory may hold breakpoints (the engine's,
//! another tool's), while the file holds the original bytes, which are what
//! the engine decodes too. Nothing here stops, traces or writes to the
//! process, so the service may call it on a process a core is tracing.
//!
//! The key decision: the engine places probes with this module's code.
//! [`resolve_spec`] — from a spec to a module, an address, every check that
//! refuses it and the instruction's analysis — lives here, and
//! `engine::resolve` adds to it what only the tracer knows (its own pages,
//! whether the program finished loading, the live bytes, through
//! [`Tracer`]). A verdict shown here is therefore the one `AddProbe` gives,
//! word for word, short of the live-bytes comparison.

use std::path::Path;
use std::sync::Arc;

use super::{
    find_module, glob_match, modules, read_maps, strip_params, ElfCache, ElfFile, MapEntry, Module,
    SymKind, Symbol, SymbolError,
};
use crate::arch::native::{arch_prepare_kprobe, insn_boundaries, Prepared, MAX_INSN_LEN};
use crate::engine::{capture, spec_text, EngineError, Result as EngineResult};
use crate::spec::{Kind, Location, ProbeSpec};

/// One function of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// The name as the symbol table spells it.
    pub name: String,
    /// The readable name of a C++ or Rust symbol.
    pub demangled: Option<String>,
    /// Where the function is in the process.
    pub address: u64,
    /// Where it is in its file (as `objdump` shows it).
    pub file_address: u64,
    /// Its size in bytes; 0 when the symbol table gives none.
    pub size: u64,
    /// The file, as `/proc/PID/maps` shows its path.
    pub module: String,
    /// A GNU indirect function: the address is the resolver the dynamic
    /// linker runs once, not the code that runs on each call.
    pub ifunc: bool,
}

/// The first instructions of one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disasm {
    /// The function's name as found (demangled when it is C++ or Rust).
    pub symbol: String,
    /// The file, as `/proc/PID/maps` shows its path.
    pub module: String,
    /// The function's address in the process.
    pub address: u64,
    /// Its address in the file.
    pub file_address: u64,
    /// Its size in bytes; 0 when the symbol table gives none.
    pub size: u64,
    pub instructions: Vec<Instruction>,
}

/// One instruction of a [`Disasm`], with what the engine would do with a
/// probe on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// From the function's start.
    pub offset: u64,
    /// In the process.
    pub address: u64,
    /// The file's bytes (what memory holds when nothing is probed).
    pub bytes: Vec<u8>,
    /// Intel syntax, as the engine shows it.
    pub text: String,
    /// `Ok` with the engine's decision (`simulate`, `boost`,
    /// `out-of-line`), or `Err` with its refusal, as `AddProbe` words it
    /// after the spec.
    pub verdict: Result<&'static str, String>,
}

/// What the engine would do with a spec in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPlacement {
    pub pid: i32,
    /// The probed address; `None` while the module is not mapped.
    pub address: Option<u64>,
    /// `MODULE:func+0x12` as the engine reports it when armed; the module
    /// the spec names while it is pending.
    pub location: String,
    /// The probed instruction, in Intel syntax.
    pub instruction: Option<String>,
    /// `simulate`, `boost` or `out-of-line` (see
    /// [`Prepared::decision`]), or `pending`: the module is not mapped
    /// yet, and the engine arms the probe when it is.
    pub decision: &'static str,
    /// Why it is pending, or a warning the engine gives when it arms it.
    pub note: Option<String>,
}

/// Why a function could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error(transparent)]
    Symbol(#[from] SymbolError),

    /// What was given is not a function name in the spec grammar.
    #[error("`{given}` does not name a function: {reason}")]
    BadName { given: String, reason: String },

    /// The function's code is not in its file (it lies in a part of a
    /// segment the loader zero-fills).
    #[error("`{name}` in {path} has no bytes in the file at {vaddr:#x}; it is not code")]
    NoCode {
        name: String,
        path: String,
        vaddr: u64,
    },
}

/// The views, keeping the files they parse for the next call: a library
/// is parsed once however often it is browsed (the cache notices a file
/// replaced on disk). The free functions use a fresh one each time.
#[derive(Default)]
pub struct Browser {
    elf: ElfCache,
}

impl Browser {
    pub fn new() -> Browser {
        Browser::default()
    }

    /// How many files it holds (with their bytes); drop it to free them.
    pub fn cached_files(&self) -> usize {
        self.elf.len()
    }

    /// See [`functions`].
    pub fn functions(
        &mut self,
        pid: i32,
        query: &str,
        limit: usize,
    ) -> Result<Vec<FunctionInfo>, SymbolError> {
        list_functions(&mut self.elf, pid, query, limit)
    }

    /// See [`disasm`].
    pub fn disasm(&mut self, pid: i32, symbol: &str, count: usize) -> Result<Disasm, BrowseError> {
        disassemble(&mut self.elf, pid, symbol, count)
    }

    /// See [`check_spec`].
    pub fn check_spec(
        &mut self,
        pid: i32,
        spec: &ProbeSpec,
    ) -> Result<Vec<CheckedPlacement>, String> {
        check(&mut self.elf, pid, spec)
    }
}

/// The functions of the executable and of every library mapped in `pid`,
/// matching `query`, at most `limit` of them.
///
/// A query holding `*` or `?` is a glob over the raw, demangled and
/// parameter-less names (as [`ElfFile::matching`]); anything else is a
/// case-insensitive substring of the raw or demangled name, and the empty
/// query matches everything. (`[` is not taken as a glob: [`glob_match`]
/// has no character classes, and C++ names such as `operator[]` are
/// looked up by substring.)
///
/// Aliases at one address of one file are shown once, under the name that
/// matched, preferring the name `symbol_at` would give. Exact matches come
/// first, then the main executable's functions, then the rest by name.
pub fn functions(pid: i32, query: &str, limit: usize) -> Result<Vec<FunctionInfo>, SymbolError> {
    Browser::new().functions(pid, query, limit)
}

fn list_functions(
    cache: &mut ElfCache,
    pid: i32,
    query: &str,
    limit: usize,
) -> Result<Vec<FunctionInfo>, SymbolError> {
    let maps = read_maps(pid)?;
    let modules = modules(pid, &maps, cache)?;
    let main = module_named(pid, None, &modules, cache)
        .ok()
        .map(|m| (m.dev, m.inode));
    let query = Query::new(query);
    let mut found: Vec<(bool, bool, FunctionInfo)> = Vec::new();
    for module in &modules {
        // `modules` parsed every file it kept; one that fails now was
        // replaced on disk meanwhile, and is left out rather than failing
        // the whole list.
        let Ok(elf) = cache.get(&module.file) else {
            continue;
        };
        let in_main = main == Some((module.dev, module.inode));
        let mut matching: Vec<(bool, &Symbol)> = elf
            .symbols
            .iter()
            .filter(|s| query.matches(s))
            .map(|s| (query.exact(s), s))
            .collect();
        // The best alias of each address first, then keep only it.
        matching.sort_by_key(|&(exact, s)| (s.addr, !exact, alias_rank(s)));
        matching.dedup_by_key(|(_, s)| s.addr);
        found.extend(matching.into_iter().map(|(exact, s)| {
            (
                exact,
                in_main,
                FunctionInfo {
                    name: s.name.clone(),
                    demangled: s.demangled.clone(),
                    address: module.runtime_addr(s.addr),
                    file_address: s.addr,
                    size: s.size,
                    module: module.path.clone(),
                    ifunc: s.kind == SymKind::IFunc,
                },
            )
        }));
    }
    found.sort_by(|(ea, ma, a), (eb, mb, b)| {
        (!ea, !ma, display(a), &a.module, a.address).cmp(&(
            !eb,
            !mb,
            display(b),
            &b.module,
            b.address,
        ))
    });
    found.truncate(limit);
    Ok(found.into_iter().map(|(_, _, f)| f).collect())
}

/// Decodes the first `count` instructions of a function of `pid` from its
/// file, and says for each whether a probe may go there.
///
/// `symbol` is a function as a spec names it: `work`, `libc:malloc`,
/// `/usr/bin/bash:readline`. The listing stops at the function's end (its
/// size; for a symbol without one, the next symbol or the end of the
/// segment's bytes) and at bytes that do not decode. Each verdict is the
/// engine's for `uprobe:SYMBOL+OFFSET`, so an offset inside an instruction
/// is never listed.
pub fn disasm(pid: i32, symbol: &str, count: usize) -> Result<Disasm, BrowseError> {
    Browser::new().disasm(pid, symbol, count)
}

fn disassemble(
    cache: &mut ElfCache,
    pid: i32,
    symbol: &str,
    count: usize,
) -> Result<Disasm, BrowseError> {
    let (module_name, name) = parse_function(symbol)?;
    let maps = read_maps(pid)?;
    let modules = modules(pid, &maps, cache)?;
    let module = module_named(pid, module_name.as_deref(), &modules, cache)?;
    let elf = cache.get(&module.file)?;
    let sym = elf.lookup(&name)?.clone();
    let end = function_end(&elf, &sym, count);
    let code = elf
        .file_bytes(sym.addr, (end - sym.addr) as usize)
        .ok_or_else(|| BrowseError::NoCode {
            name: sym.display_name().to_string(),
            path: module.path.clone(),
            vaddr: sym.addr,
        })?;
    let bounds = insn_boundaries(&code);
    // The module is mapped, so whether the program finished loading does
    // not matter here.
    let mut env = Outside {
        elf: cache,
        started: true,
    };
    let mut instructions = Vec::new();
    for (i, &off) in bounds.iter().enumerate().take(count) {
        let vaddr = sym.addr + off as u64;
        let address = module.runtime_addr(vaddr);
        // The engine's own code path, for the offset a user would give.
        let spec = ProbeSpec {
            kind: Kind::Entry,
            module: module_name.clone(),
            location: Location::Symbol {
                name: name.clone(),
                offset: off as u64,
            },
            captures: Vec::new(),
            post: false,
            force: false,
            maxactive: None,
            entry: false,
        };
        let verdict = match resolve_spec(&mut env, pid, &spec, &maps, &modules) {
            Ok(Resolution::At(p)) => Ok(p.prepared.decision()),
            Ok(Resolution::Pending(reason)) => Err(reason),
            Err(reason) => Err(reason),
        };
        let analysed = code_at(&elf, &module.path, vaddr)
            .ok()
            .map(|c| arch_prepare_kprobe(&c, address));
        let len = match (bounds.get(i + 1), &analysed) {
            (Some(&next), _) => next - off,
            (None, Some(Ok(p))) => p.len,
            // The last instruction before undecodable bytes, refused: its
            // length is not known here; show what is left of the function,
            // at most one instruction's worth.
            (None, _) => (code.len() - off).min(MAX_INSN_LEN),
        };
        let text = match analysed {
            Some(Ok(p)) => p.text,
            Some(Err(r)) => r.text,
            None => "(bad)".to_string(),
        };
        instructions.push(Instruction {
            offset: off as u64,
            address,
            bytes: code[off..off + len].to_vec(),
            text,
            verdict,
        });
    }
    Ok(Disasm {
        symbol: sym.display_name().to_string(),
        module: module.path.clone(),
        address: module.runtime_addr(sym.addr),
        file_address: sym.addr,
        size: sym.size,
        instructions,
    })
}

/// What the engine would do with `spec` in `pid`, without touching the
/// process: where the probe goes and how it runs, or the engine's refusal,
/// word for word as `AddProbe` gives it (`SPEC: reason`).
///
/// The one check left out is the engine's last: that the live bytes equal
/// the file's (another tool's breakpoint), which needs the memory this
/// module never reads. A process that is still starting (its libraries not
/// loaded yet) gets `pending` for a library that is not mapped, as it does
/// from the engine; afterwards a path that does not exist is refused.
pub fn check_spec(pid: i32, spec: &ProbeSpec) -> Result<Vec<CheckedPlacement>, String> {
    Browser::new().check_spec(pid, spec)
}

fn check(
    cache: &mut ElfCache,
    pid: i32,
    spec: &ProbeSpec,
) -> Result<Vec<CheckedPlacement>, String> {
    let text = spec_text(spec);
    for c in &spec.captures {
        capture::validate(c).map_err(|e| format!("{text}: capture `{}`: {e}", c.name))?;
    }
    let refused = |e: String| format!("{text}: {e}");
    let maps = read_maps(pid).map_err(|e| refused(e.to_string()))?;
    let modules = modules(pid, &maps, cache).map_err(|e| refused(e.to_string()))?;
    let started = loading_done(pid, &modules, cache);
    let mut env = Outside {
        elf: cache,
        started,
    };
    let placement = match resolve_spec(&mut env, pid, spec, &maps, &modules).map_err(refused)? {
        Resolution::At(p) => CheckedPlacement {
            pid,
            address: Some(p.addr),
            location: format!("{}:{}", p.module.path, p.location),
            instruction: Some(p.prepared.text.clone()),
            decision: p.prepared.decision(),
            note: p.warning,
        },
        Resolution::Pending(reason) => CheckedPlacement {
            pid,
            address: None,
            location: spec.module.clone().unwrap_or_default(),
            instruction: None,
            decision: "pending",
            note: Some(reason),
        },
    };
    Ok(vec![placement])
}

/// A query of [`functions`].
enum Query {
    All,
    Glob(String),
    /// Lower-cased.
    Substring(String),
}

impl Query {
    fn new(q: &str) -> Query {
        let q = q.trim();
        if q.is_empty() {
            Query::All
        } else if q.contains(['*', '?']) {
            Query::Glob(q.to_string())
        } else {
            Query::Substring(q.to_lowercase())
        }
    }

    fn matches(&self, s: &Symbol) -> bool {
        match self {
            Query::All => true,
            Query::Glob(g) => {
                glob_match(g, &s.name)
                    || s.demangled
                        .as_deref()
                        .is_some_and(|d| glob_match(g, d) || glob_match(g, strip_params(d)))
            }
            Query::Substring(q) => {
                s.name.to_lowercase().contains(q)
                    || s.demangled
                        .as_deref()
                        .is_some_and(|d| d.to_lowercase().contains(q))
            }
        }
    }

    /// The whole name is the query (any case), with or without the
    /// parameter list of a demangled name.
    fn exact(&self, s: &Symbol) -> bool {
        let Query::Substring(q) = self else {
            return false;
        };
        s.name.eq_ignore_ascii_case(q)
            || s.demangled.as_deref().is_some_and(|d| {
                d.eq_ignore_ascii_case(q) || strip_params(d).eq_ignore_ascii_case(q)
            })
    }
}

/// Which of several aliases at one address to show: as
/// [`ElfFile::symbol_at`] prefers, a global function name with the fewest
/// leading underscores (`malloc` rather than `__libc_malloc`).
fn alias_rank(s: &Symbol) -> (bool, bool, usize, usize) {
    (
        !s.global,
        s.kind != SymKind::Func,
        s.name.len() - s.name.trim_start_matches('_').len(),
        s.name.len(),
    )
}

fn display(f: &FunctionInfo) -> &str {
    f.demangled.as_deref().unwrap_or(&f.name)
}

/// Splits `MODULE:NAME` (or `NAME`) the way a spec does.
fn parse_function(symbol: &str) -> Result<(Option<String>, String), BrowseError> {
    let bad = |reason: String| BrowseError::BadName {
        given: symbol.to_string(),
        reason,
    };
    if symbol.trim().is_empty() {
        return Err(bad(
            "it is empty; give one such as `main` or `libc:malloc`".into()
        ));
    }
    if symbol.contains(char::is_whitespace) {
        return Err(bad(
            "a name in a spec has no spaces; give the raw (mangled) name, or the \
             demangled one without its parameter list"
                .into(),
        ));
    }
    let spec = ProbeSpec::parse(&format!("uprobe:{symbol}")).map_err(|e| bad(e.reason))?;
    match spec.location {
        Location::Symbol { name, offset: 0 } => Ok((spec.module, name)),
        Location::Symbol { name, offset } => Err(bad(format!(
            "give the function without an offset (`{name}`, not `{name}+{offset:#x}`)"
        ))),
        Location::FileAddress(_) | Location::ProcessAddress(_) => Err(bad(
            "that is an address; give a function name such as `main` or `libc:malloc`".into(),
        )),
    }
}

/// Where decoding a function stops: its end by its size or, for a symbol
/// without one, the next symbol or the end of the segment's file bytes,
/// and never more than `count` of the longest instructions.
fn function_end(elf: &ElfFile, sym: &Symbol, count: usize) -> u64 {
    let budget = sym.addr.saturating_add((count * MAX_INSN_LEN) as u64);
    if sym.size != 0 {
        return (sym.addr + sym.size).min(budget);
    }
    let seg_end = elf
        .segment_for(sym.addr)
        .map_or(sym.addr, |s| s.vaddr + s.filesz);
    let next = elf
        .symbols
        .iter()
        .map(|s| s.addr)
        .find(|&a| a > sym.addr)
        .unwrap_or(u64::MAX);
    seg_end.min(next).min(budget).max(sym.addr)
}

/// Whether the dynamic linker has loaded the program's first libraries.
/// The engine knows it from the linker's hook; from outside, a dynamically
/// linked program with nothing but itself and its linker mapped is still
/// starting.
fn loading_done(pid: i32, modules: &[Module], cache: &mut ElfCache) -> bool {
    let Ok(main) = module_named(pid, None, modules, cache) else {
        return true;
    };
    let Some(interp) = cache.get(&main.file).ok().and_then(|e| e.interp.clone()) else {
        return true;
    };
    let Ok(ld) = find_module(&interp, modules, cache).cloned() else {
        return true;
    };
    modules.iter().any(|m| {
        (m.dev, m.inode) != (main.dev, main.inode) && (m.dev, m.inode) != (ld.dev, ld.inode)
    })
}

// ---------------------------------------------------------------------------
// Resolution, shared with the engine (`engine::resolve`).

/// What resolving a spec needs from whoever traces the process. The engine
/// answers from its own state; [`check_spec`] and [`disasm`] answer for a
/// process seen from outside.
pub(crate) trait Tracer {
    /// The parsed files, shared across calls.
    fn elf(&mut self) -> &mut ElfCache;
    /// Whether `addr` is in the tracer's own pages (out-of-line slots,
    /// trampoline) in `pid`.
    fn in_own_pages(&self, pid: i32, addr: u64) -> bool;
    /// Whether a file a spec names that does not exist in the process's
    /// root is a refusal (the program finished loading, and will not exec
    /// into a new image that may have it) rather than `pending`.
    fn refuses_missing_files(&self, pid: i32) -> bool;
    /// Whether the process has not run yet (and will not exec into another
    /// image that counts): the libraries it needs at start (DT_NEEDED) are
    /// still to be mapped by the dynamic linker, and a file it names that
    /// does not exist now is refused at once.
    fn before_start(&self, _pid: i32) -> bool {
        false
    }
    /// Refuses a return probe in this process or file (a Go program, a
    /// shadow stack).
    fn return_probe_refusal(&mut self, pid: i32, file: &Path) -> std::result::Result<(), String>;
}

/// Where a spec resolved to in one process, from the files alone.
pub(crate) enum Resolution {
    At(Box<Place>),
    /// The module is not mapped (yet); why, in words.
    Pending(String),
}

/// A resolved place, before the live bytes are compared with `code`.
pub(crate) struct Place {
    pub module: Module,
    /// The address in the process.
    pub addr: u64,
    /// `func+0x12` or an address, without the module.
    pub location: String,
    /// The file's bytes at `vaddr` (up to the longest instruction).
    pub code: Vec<u8>,
    pub prepared: Prepared,
    /// Said to the user when the probe is armed.
    pub warning: Option<String>,
    /// The function around `addr`, as the file has it, at its address in
    /// the process: what an optimized probe checks for branches into the
    /// instructions it would replace. `None` for code no sized symbol
    /// covers.
    pub func: Option<(u64, Vec<u8>)>,
}

/// The function covering `vaddr` (a sized symbol), its file bytes at its
/// address in the process.
fn function_around(elf: &ElfFile, vaddr: u64, bias: u64) -> Option<(u64, Vec<u8>)> {
    let (sym, _) = elf.symbol_at(vaddr)?;
    if sym.size == 0 || sym.size > 1 << 20 || !(sym.addr..sym.addr + sym.size).contains(&vaddr) {
        return None;
    }
    let bytes = elf.file_bytes(sym.addr, sym.size as usize)?;
    Some((sym.addr.wrapping_add(bias), bytes))
}

/// Resolves a spec in one process without changing anything: the module,
/// the address, every check that needs only the maps and the files, and
/// the instruction's analysis. The error is the refusal, without the spec.
pub(crate) fn resolve_spec(
    env: &mut dyn Tracer,
    pid: i32,
    spec: &ProbeSpec,
    maps: &[MapEntry],
    modules: &[Module],
) -> std::result::Result<Resolution, String> {
    let (module, elf, vaddr, location) = match &spec.location {
        Location::ProcessAddress(a) => {
            let a = *a;
            if env.in_own_pages(pid, a) {
                return Err(format!(
                    "{a:#x} is inside the engine's own out-of-line pages; probe the original code instead"
                ));
            }
            if !maps.iter().any(|m| m.exec && a >= m.start && a < m.end) {
                return Err(format!(
                    "{a:#x} is in no executable mapping of process {pid} (see /proc/{pid}/maps)"
                ));
            }
            let module = modules
                .iter()
                .find(|m| m.mappings.iter().any(|e| a >= e.start && a < e.end))
                .ok_or_else(|| {
                    format!("{a:#x} is not in a file-backed mapping; the engine only probes code it can compare with its file")
                })?;
            let elf = env.elf().get(&module.file).map_err(|e| e.to_string())?;
            let vaddr = a.wrapping_sub(module.bias);
            let location = describe(&elf, vaddr);
            if let Some((sym, off)) = elf.symbol_at(vaddr) {
                check_boundary(&elf, &module.path, sym, off)?;
            }
            (module.clone(), elf, vaddr, location)
        }
        _ => {
            let module = match module_named(pid, spec.module.as_deref(), modules, env.elf()) {
                Ok(m) => m,
                Err(SymbolError::NoModule { .. }) if spec.module.is_some() => {
                    let m = spec.module.as_deref().unwrap_or_default();
                    // Validate what can be validated now, in the file
                    // the process would map: under its root.
                    if m.contains('/') {
                        let in_root = std::path::PathBuf::from(format!("/proc/{pid}/root{m}"));
                        if in_root.exists() {
                            let elf = env.elf().get(&in_root).map_err(|e| e.to_string())?;
                            file_vaddr(&elf, m, spec).map_err(|e| e.to_string())?;
                        } else if env.refuses_missing_files(pid) || env.before_start(pid) {
                            return Err(format!(
                                "there is no file {m} in process {pid}'s root (/proc/{pid}/root)"
                            ));
                        }
                    }
                    if !m.contains('/') && env.before_start(pid) {
                        return needed_at_start(env, pid, m, spec);
                    }
                    return Ok(Resolution::Pending(format!(
                        "`{m}` is not mapped in process {pid} yet; the probe is armed when it is loaded"
                    )));
                }
                Err(e) => return Err(e.to_string()),
            };
            let elf = env.elf().get(&module.file).map_err(|e| e.to_string())?;
            let (vaddr, location) =
                file_vaddr(&elf, &module.path, spec).map_err(|e| e.to_string())?;
            (module, elf, vaddr, location)
        }
    };
    let addr = vaddr.wrapping_add(module.bias);
    if !module
        .mappings
        .iter()
        .any(|m| m.exec && addr >= m.start && addr < m.end)
    {
        return Err(format!(
            "{location} ({addr:#x}) is not in an executable mapping of {}",
            module.path
        ));
    }
    let code = code_at(&elf, &module.path, vaddr).map_err(|e| e.to_string())?;
    let prepared = arch_prepare_kprobe(&code, addr).map_err(|r| r.to_string())?;
    let mut warning = None;
    if spec.kind == Kind::Return {
        // The return address is at the stack pointer only at entry.
        match elf.symbol_at(vaddr) {
            Some((_, 0)) => {}
            Some((sym, off)) => {
                return Err(format!(
                    "a return probe goes on a function's entry; {addr:#x} is `{}`+{off:#x}",
                    sym.demangled.as_deref().unwrap_or(&sym.name)
                ))
            }
            None if !spec.force => {
                return Err(format!(
                    "no known function starts at {addr:#x}, and a return probe must be at a \
                     function's entry; add `force` if it is one"
                ))
            }
            None => {}
        }
        env.return_probe_refusal(pid, &module.file)?;
        // Itanium mangling (C++, and Rust's legacy mangling) or Rust's v0:
        // a function that exceptions or panics may unwind through. An
        // `extern "C"` function keeps a plain name, and is not warned of.
        let mangled = elf
            .symbol_at(vaddr)
            .is_some_and(|(s, _)| s.name.starts_with("_Z") || s.name.starts_with("_R"));
        if mangled {
            // Said once per module: it is the same for all its functions.
            warning = Some(format!(
                "return probes in {}, C++ or Rust code: a C++ exception or Rust panic unwinding \
                 through a probed call ends the program (as with the kernel's uretprobes)",
                module.path
            ));
        }
    }
    let func = function_around(&elf, vaddr, module.bias);
    Ok(Resolution::At(Box::new(Place {
        module,
        addr,
        location,
        code,
        prepared,
        warning,
        func,
    })))
}

/// A soname probe in a program that has not run yet: when `m` is among
/// the libraries the program needs at start, the spec is checked in the
/// file the dynamic linker will map, so that a wrong name is refused before
/// the program runs; otherwise the library can only come later (dlopen).
fn needed_at_start(
    env: &mut dyn Tracer,
    pid: i32,
    m: &str,
    spec: &ProbeSpec,
) -> std::result::Result<Resolution, String> {
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let ld_library_path = environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"LD_LIBRARY_PATH="))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let needed = super::needed::needed_libraries(&root, &exe, ld_library_path.as_deref());
    let Some(lib) = needed
        .iter()
        .find(|n| super::module_matches(m, &n.path, n.soname.as_deref()))
    else {
        return Ok(Resolution::Pending(format!(
            "`{m}` is not among the libraries process {pid} loads at start; the probe is armed \
             if the program loads it later (dlopen)"
        )));
    };
    let file = root.join(lib.path.trim_start_matches('/'));
    let elf = env
        .elf()
        .get_in_root(&file, &root)
        .map_err(|e| e.to_string())?;
    file_vaddr(&elf, &lib.path, spec).map_err(|e| e.to_string())?;
    Ok(Resolution::Pending(format!(
        "`{m}` is {}, which process {pid} loads at start; the probe is armed when it is loaded",
        lib.path
    )))
}

/// The module a spec names (`None`: the main executable, which is the one
/// `/proc/PID/exe` names, else the first mapped).
pub(crate) fn module_named(
    pid: i32,
    name: Option<&str>,
    modules: &[Module],
    cache: &mut ElfCache,
) -> std::result::Result<Module, SymbolError> {
    match name {
        Some(m) => find_module(m, modules, cache).cloned(),
        None => {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            modules
                .iter()
                .find(|m| m.path == exe)
                .or_else(|| modules.first())
                .cloned()
                .ok_or(SymbolError::NoModule {
                    spec: "(main executable)".into(),
                    loaded: Vec::new(),
                })
        }
    }
}

/// "func+0x12" or "0x401230" for an address in a file.
fn describe(elf: &ElfFile, vaddr: u64) -> String {
    match elf.symbol_at(vaddr) {
        Some((s, 0)) => s.demangled.clone().unwrap_or_else(|| s.name.clone()),
        Some((s, off)) => format!(
            "{}+{off:#x}",
            s.demangled.clone().unwrap_or_else(|| s.name.clone())
        ),
        None => format!("{vaddr:#x}"),
    }
}

/// The file address a symbol or file-address spec names, with every check
/// that needs only the file.
pub(crate) fn file_vaddr(
    elf: &Arc<ElfFile>,
    path: &str,
    spec: &ProbeSpec,
) -> EngineResult<(u64, String)> {
    match &spec.location {
        Location::Symbol { name, offset } => {
            let sym = elf.lookup(name)?;
            if sym.size == 0 && !spec.force {
                return Err(EngineError::Refused(format!(
                    "`{name}` in {path} has no size, so the engine cannot check that {}is an instruction boundary; \
                     add `force` to the spec to probe it anyway",
                    if *offset == 0 { "its entry ".to_string() } else { format!("+{offset:#x} ") }
                )));
            }
            if sym.size != 0 && *offset >= sym.size {
                return Err(EngineError::Refused(format!(
                    "offset +{offset:#x} is outside `{name}` in {path}, which is {:#x} bytes long",
                    sym.size
                )));
            }
            if sym.size != 0 {
                check_boundary(elf, path, sym, *offset).map_err(EngineError::Refused)?;
            }
            Ok((sym.addr + offset, spec.location.to_string()))
        }
        Location::FileAddress(v) => {
            if !elf.segment_for(*v).is_some_and(|s| s.exec) {
                return Err(EngineError::Refused(format!(
                    "{v:#x} is not in an executable segment of {path}"
                )));
            }
            if let Some((sym, off)) = elf.symbol_at(*v) {
                check_boundary(elf, path, sym, off).map_err(EngineError::Refused)?;
            }
            Ok((*v, describe(elf, *v)))
        }
        Location::ProcessAddress(_) => Err(EngineError::Refused(
            "a process address needs a process".into(),
        )),
    }
}

/// Refuses an offset that is not where an instruction starts when the
/// function is decoded from its entry.
fn check_boundary(
    elf: &ElfFile,
    path: &str,
    sym: &Symbol,
    off: u64,
) -> std::result::Result<(), String> {
    if off == 0 || sym.size == 0 {
        return Ok(());
    }
    let Some(code) = elf.file_bytes(sym.addr, sym.size as usize) else {
        return Ok(());
    };
    let bounds = insn_boundaries(&code);
    if bounds.contains(&(off as usize)) {
        return Ok(());
    }
    let lower: Vec<usize> = bounds
        .iter()
        .copied()
        .filter(|&b| (b as u64) < off)
        .collect();
    let before: Vec<String> = lower[lower.len().saturating_sub(2)..]
        .iter()
        .map(|b| format!("+{b:#x}"))
        .collect();
    let after: Vec<String> = bounds
        .iter()
        .filter(|&&b| (b as u64) > off)
        .take(2)
        .map(|b| format!("+{b:#x}"))
        .collect();
    let name = sym.demangled.as_deref().unwrap_or(&sym.name);
    Err(format!(
        "{:#x} is not an instruction boundary in `{name}` in {path} (nearest boundaries: {})",
        sym.addr + off,
        before
            .into_iter()
            .chain(after)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The file's bytes of the instruction at `vaddr` (up to 15).
pub(crate) fn code_at(elf: &ElfFile, path: &str, vaddr: u64) -> EngineResult<Vec<u8>> {
    let seg = elf
        .segment_for(vaddr)
        .ok_or_else(|| EngineError::Refused(format!("{vaddr:#x} is in no segment of {path}")))?;
    let avail = (seg.vaddr + seg.filesz).saturating_sub(vaddr) as usize;
    let len = avail.min(MAX_INSN_LEN);
    elf.file_bytes(vaddr, len)
        .ok_or_else(|| EngineError::Refused(format!("{vaddr:#x} has no file bytes in {path}")))
}

/// A process seen from outside, by the service rather than its tracer.
struct Outside<'c> {
    elf: &'c mut ElfCache,
    /// Whether the program finished loading its libraries (see
    /// [`loading_done`]).
    started: bool,
}

impl Tracer for Outside<'_> {
    fn elf(&mut self) -> &mut ElfCache {
        self.elf
    }

    // The engine's pages are anonymous mappings: a process address in one
    // is refused anyway, as "not in a file-backed mapping".
    fn in_own_pages(&self, _pid: i32, _addr: u64) -> bool {
        false
    }

    // The service does not make its cores follow exec, so once the program
    // has loaded its libraries a missing file stays missing.
    fn refuses_missing_files(&self, _pid: i32) -> bool {
        self.started
    }

    // Still starting: the libraries it needs at start are checked in the
    // files the dynamic linker will map, as the engine checks them.
    fn before_start(&self, _pid: i32) -> bool {
        !self.started
    }

    fn return_probe_refusal(&mut self, pid: i32, file: &Path) -> std::result::Result<(), String> {
        return_probe_refusal(self.elf, pid, file)
    }
}

/// Why a return probe may not go into `pid`'s `module_file`, if it may
/// not: the rule the engine applies (`Engine::check_return_probe`) and a
/// dry run shows.
pub(crate) fn return_probe_refusal(
    cache: &mut ElfCache,
    pid: i32,
    module_file: &Path,
) -> std::result::Result<(), String> {
    if cache.get(module_file).is_ok_and(|e| e.is_go) {
        return Err(format!(
            "{} is a Go program: its runtime moves goroutine stacks, which would carry a hijacked \
             return address away; use entry probes (`uprobe:`) on Go code",
            module_file.display()
        ));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let shstk = status
        .lines()
        .find_map(|l| l.strip_prefix("x86_Thread_features:"))
        .is_some_and(|f| f.split_whitespace().any(|w| w == "shstk"));
    if shstk {
        return Err(format!(
            "process {pid} uses a CET shadow stack, which would kill it at a hijacked return; \
             use entry probes, or run it without shadow stacks (glibc.cpu.x86_shstk=off)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a function name as `disasm` does.
    fn check(given: &str, expect: std::result::Result<(Option<&str>, &str), &str>) {
        let got = parse_function(given).map_err(|e| e.to_string());
        let expect = expect
            .map(|(m, n)| (m.map(str::to_string), n.to_string()))
            .map_err(str::to_string);
        assert_eq!(got, expect, "parsing `{given}`");
    }

    #[test]
    fn function_names_follow_the_spec_grammar() {
        check("work", Ok((None, "work")));
        check("libc:malloc", Ok((Some("libc"), "malloc")));
        check(
            "/usr/bin/bash:readline",
            Ok((Some("/usr/bin/bash"), "readline")),
        );
        check("ns::Widget::frob", Ok((None, "ns::Widget::frob")));
        check(
            "work+4",
            Err(
                "`work+4` does not name a function: give the function without an offset \
                 (`work`, not `work+0x4`)",
            ),
        );
        check(
            "0x401000",
            Err(
                "`0x401000` does not name a function: that is an address; give a function \
                 name such as `main` or `libc:malloc`",
            ),
        );
        check(
            "f(int, long)",
            Err(
                "`f(int, long)` does not name a function: a name in a spec has no spaces; \
                 give the raw (mangled) name, or the demangled one without its parameter list",
            ),
        );
        check(
            "",
            Err(
                "`` does not name a function: it is empty; give one such as `main` or \
                 `libc:malloc`",
            ),
        );
    }

    /// Sorts and filters as `functions` does, over one file's symbols.
    fn query(q: &str, names: &[&str]) -> Vec<bool> {
        let q = Query::new(q);
        names
            .iter()
            .map(|n| {
                q.matches(&Symbol {
                    name: n.to_string(),
                    demangled: super::super::demangle(n),
                    addr: 0,
                    size: 0,
                    kind: SymKind::Func,
                    global: true,
                })
            })
            .collect()
    }

    #[test]
    fn queries_are_globs_or_substrings() {
        let names = [
            "malloc",
            "__libc_malloc",
            "MallocExtension",
            "free",
            "_ZN2ns6Widget4frobEi",
        ];
        assert_eq!(query("", &names), [true, true, true, true, true]);
        assert_eq!(query("malloc", &names), [true, true, true, false, false]);
        assert_eq!(query("mall*", &names), [true, false, false, false, false]);
        assert_eq!(query("*malloc", &names), [true, true, false, false, false]);
        assert_eq!(query("fre?", &names), [false, false, false, true, false]);
        assert_eq!(
            query("widget::FROB", &names),
            [false, false, false, false, true]
        );
        assert_eq!(
            query("ns::Widget::*", &names),
            [false, false, false, false, true]
        );
    }
}
