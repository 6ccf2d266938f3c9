//! Compiling a plugin's module in a child process with bounded memory.
//!
//! The pre-scan (`prescan` in runtime.rs) refuses what is known to cost
//! the compiler dearly, but what the compiler needs is not a function of
//! the module's size that one can bound in advance. So the service never
//! compiles a module in its own address space: it runs its own executable
//! again (`wprobe __compile-plugin`) under `RLIMIT_DATA` and `RLIMIT_CPU`,
//! hands it the validated module on stdin, and loads the artifact the
//! child writes on stdout with `Module::deserialize`. A module whose
//! compilation needs more than the limit kills the child, not the service,
//! and is refused with the limit named.
//!
//! The child is started with fork and exec, and between the two it only
//! calls `setrlimit` (async-signal-safe): the service is multi-threaded,
//! and a forked copy of it must not allocate or take locks.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine, Module};

use super::runtime::CompileLimits;

/// The hidden subcommand of `wprobe` that compiles a module for its parent.
pub const SUBCOMMAND: &str = "__compile-plugin";

/// Where modules are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// In this process. Only the pre-scan bounds the compiler then: for
    /// programs without the `wprobe` executable (library tests, benches).
    InProcess,
    /// In a child process running `PATH __compile-plugin`, under
    /// `CompileLimits::memory_bytes` and `CompileLimits::cpu`.
    Child(PathBuf),
}

static HELPER: OnceLock<PathBuf> = OnceLock::new();

/// Makes every runtime created from now on compile in a child running
/// `path` (the `wprobe` executable, which has the subcommand): `wprobe`
/// calls it first thing with `/proc/self/exe`, which stays this very
/// executable even when the file is replaced on disk.
pub fn set_helper(path: PathBuf) {
    let _ = HELPER.set(path);
}

impl Default for Compiler {
    /// `Child` of the executable given to [`set_helper`], else `InProcess`.
    fn default() -> Self {
        match HELPER.get() {
            Some(path) => Compiler::Child(path.clone()),
            None => Compiler::InProcess,
        }
    }
}

/// The engine's configuration, the same in the runtime and in the child
/// that compiles for it: an artifact compiled under another configuration
/// is refused by `Module::deserialize`.
pub fn engine_config(stack_bytes: usize) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.max_wasm_stack(stack_bytes);
    config
}

/// The child's side, `wprobe __compile-plugin --stack-bytes N`: the module
/// on stdin, the artifact on stdout; exit status 0, or 2 with the reason on
/// stderr. The limits were set by the parent before exec.
pub fn helper_main(stack_bytes: usize) -> i32 {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("cannot read the module from stdin: {e}");
        return 2;
    }
    let artifact = Engine::new(&engine_config(stack_bytes))
        .and_then(|engine| engine.precompile_module(&bytes));
    let artifact = match artifact {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return 2;
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&artifact).and_then(|_| out.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cannot write the compiled module to stdout: {e}");
            2
        }
    }
}

/// Compiles `bytes`, a module already validated with `engine`, in a child
/// running `helper` under `limits`, and loads the result into `engine`.
pub fn in_child(
    engine: &Engine,
    helper: &Path,
    limits: &CompileLimits,
    stack_bytes: usize,
    bytes: &[u8],
) -> Result<Module, String> {
    let memory = limits.memory_bytes;
    // RLIMIT_CPU counts whole seconds; the soft limit sends SIGXCPU, the
    // hard one a second later SIGKILL.
    let cpu = limits.cpu.as_secs().max(1);
    let mut cmd = Command::new(helper);
    cmd.arg(SUBCOMMAND)
        .arg("--stack-bytes")
        .arg(stack_bytes.to_string())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe functions may be called: it calls setrlimit(2) on
    // values computed before the fork, allocates nothing and takes no lock
    // (`last_os_error` reads errno).
    unsafe {
        cmd.pre_exec(move || {
            let data = libc::rlimit {
                rlim_cur: memory as libc::rlim_t,
                rlim_max: memory as libc::rlim_t,
            };
            let time = libc::rlimit {
                rlim_cur: cpu as libc::rlim_t,
                rlim_max: (cpu + 1) as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &data) != 0
                || libc::setrlimit(libc::RLIMIT_CPU, &time) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start the plugin compiler `{} {SUBCOMMAND}`: {e}",
            helper.display()
        )
    })?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let mut stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr = child.stderr.take().expect("stderr was piped");
    // A child asleep uses no CPU time: one that waits for ever (a lock
    // taken again in an allocation failure's report) is killed after
    // four times its CPU time, far more than compiling on a busy machine
    // takes.
    let wall = Duration::from_secs(cpu.saturating_mul(4));
    let (done, artifact) = mpsc::channel();
    let (status, stdout, stderr, timed_out) = std::thread::scope(|s| {
        // The child reads the whole module before it writes: the module is
        // written beside the reads. A child that dies early makes the
        // write fail (EPIPE; SIGPIPE is ignored in Rust programs); its
        // status says why.
        s.spawn(move || {
            let _ = stdin.write_all(bytes);
        });
        let said = s.spawn(move || {
            let mut v = Vec::new();
            let _ = stderr.read_to_end(&mut v);
            v
        });
        s.spawn(move || {
            let mut v = Vec::new();
            let _ = stdout.read_to_end(&mut v);
            let _ = done.send(v);
        });
        // stdout ends when the child does.
        let out = match artifact.recv_timeout(wall) {
            Ok(v) => Some(v),
            Err(_) => {
                let _ = child.kill();
                None
            }
        };
        let status = child.wait();
        let timed_out = out.is_none();
        let out = out.or_else(|| artifact.recv().ok());
        (status, out, said.join().unwrap_or_default(), timed_out)
    });
    if timed_out {
        return Err(format!(
            "compiling it took longer than {} s, the limit of the plugin compiler \
             (it was killed); make the module smaller or simpler",
            wall.as_secs()
        ));
    }
    let status = status.map_err(|e| format!("the plugin compiler failed: {e}"))?;
    let output = std::process::Output {
        status,
        stdout: stdout.unwrap_or_default(),
        stderr,
    };
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.trim();
    // The line of a report that says what failed: a panic's message
    // follows its location, and Rust's note about backtraces follows both.
    let first = said
        .lines()
        .find(|l| !l.starts_with("thread '") && !l.starts_with("note:"))
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default();
    let mib = memory >> 20;
    let over = |how: String| {
        format!(
            "compiling it needed more than {mib} MiB of memory, the limit of the plugin \
             compiler ({how}); make the module smaller or simpler (fewer or shorter \
             functions, less nesting), or raise the limit (--plugin-compile-memory of \
             wprobe trace and wprobe serve)"
        )
    };
    match (output.status.code(), output.status.signal()) {
        (Some(0), _) => {}
        (_, Some(libc::SIGXCPU)) => {
            return Err(format!(
                "compiling it took more than {cpu} s of CPU time, the limit of the plugin \
                 compiler; make the module smaller or simpler"
            ))
        }
        // A failure to allocate that wasmtime reports as an error (most
        // abort the child instead) is the memory limit too.
        (Some(2), _) if !said.contains("alloc") && !said.contains("memory") => {
            return Err(format!("the compiler refused it: {said}"));
        }
        (Some(code), _) => return Err(over(format!("it exited with status {code}{first}"))),
        (None, Some(sig)) => return Err(over(format!("it was killed by signal {sig}{first}"))),
        (None, None) => return Err(over(format!("it ended so: {}", output.status))),
    }
    // SAFETY: `Module::deserialize` trusts its bytes to be an artifact of
    // this version of wasmtime. They are: our own executable
    // (/proc/self/exe) made them with `Engine::precompile_module` under the
    // same `engine_config`, from the module validated above, and they came
    // straight from the child's stdout, never from the user. wasmtime also
    // checks that the artifact's version and configuration match `engine`
    // and refuses it otherwise. Trusting the compiler's output is what
    // compiling in this process would do.
    unsafe { Module::deserialize(engine, &output.stdout) }
        .map_err(|e| format!("cannot load what the plugin compiler made: {e:#}"))
}
