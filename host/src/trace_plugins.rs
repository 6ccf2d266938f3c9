//! `wprobe trace --plugin FILE.wasm[:CONFIG]`: handler plugins on the
//! probes of a one-shot trace. Records go out as JSON lines beside the
//! events; at the end each plugin's maps print as JSON, and as text bars
//! (bpftrace's) on stderr. SIGHUP reloads every plugin file: the new
//! version replaces the old between two events, maps and per-call data
//! kept.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;
use wprobe_core::proto::{Action, Event};
use wprobe_host::plugin::{dispatch, Attachment, CallInfo, CompileLimits, Limits, Runtime};

/// Raised by SIGHUP.
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

/// One `--plugin` argument.
pub struct PluginArg {
    pub path: String,
    pub config: String,
}

impl PluginArg {
    /// `FILE.wasm`, or `FILE.wasm:{JSON}`.
    pub fn parse(text: &str) -> PluginArg {
        match text.find(".wasm:") {
            Some(i) => PluginArg {
                path: text[..i + 5].to_string(),
                config: text[i + 6..].to_string(),
            },
            None => PluginArg {
                path: text.to_string(),
                config: "{}".into(),
            },
        }
    }
}

/// The plugins of a trace.
pub struct Plugins {
    rt: Runtime,
    list: Vec<(PluginArg, Attachment)>,
    /// Faults said on stderr so far (the first few are).
    faults_said: u32,
    /// Quarantines said on stderr, per plugin.
    quarantine_said: Vec<bool>,
}

impl Plugins {
    /// Loads and attaches every plugin; an error names the file and why.
    pub fn load(
        args: &[String],
        deadline_ms: u64,
        compile_mib: u64,
    ) -> Result<Option<Plugins>, String> {
        if args.is_empty() {
            return Ok(None);
        }
        if deadline_ms == 0 {
            return Err("--plugin-deadline must be at least 1 ms".into());
        }
        if compile_mib == 0 {
            return Err("--plugin-compile-memory must be at least 1 MiB".into());
        }
        let defaults = Limits::default();
        let rt = Runtime::new(Limits {
            call_deadline: std::time::Duration::from_millis(deadline_ms),
            compile: CompileLimits {
                memory_bytes: compile_mib.saturating_mul(1 << 20),
                ..defaults.compile
            },
            ..defaults
        })?;
        let mut list = Vec::new();
        for a in args {
            let arg = PluginArg::parse(a);
            let attachment = attach(&rt, &arg)?;
            list.push((arg, attachment));
        }
        // SAFETY: a handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_hup as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut());
        }
        Ok(Some(Plugins {
            rt,
            quarantine_said: vec![false; list.len()],
            list,
            faults_said: 0,
        }))
    }

    /// Whether some plugin handles entries: return probes then report their
    /// entries too (kretprobes' entry handler).
    pub fn want_entries(&self) -> bool {
        self.list.iter().any(|(_, a)| a.plugin().handlers.entry)
    }

    /// Whether some plugin's manifest asks for mutation.
    pub fn want_mutation(&self) -> bool {
        self.list
            .iter()
            .any(|(_, a)| a.plugin().manifest.needs.mutation)
    }

    /// SIGHUP: every plugin file read again and swapped in.
    pub fn reload_if_asked(&mut self) {
        if !RELOAD.swap(false, Ordering::SeqCst) {
            return;
        }
        for (arg, a) in &self.list {
            let result = std::fs::read(&arg.path)
                .map_err(|e| format!("cannot read {}: {e}", arg.path))
                .and_then(|bytes| self.rt.load(&bytes, None, &arg.path))
                .and_then(|p| {
                    let version = p.manifest.version.clone();
                    a.replace(&self.rt, Arc::new(p)).map(|_| version)
                });
            match result {
                Ok(v) => eprintln!("wprobe: plugin {} reloaded (version {v})", arg.path),
                Err(e) => eprintln!("wprobe: plugin {} not reloaded: {e}", arg.path),
            }
        }
    }

    /// Runs every plugin on `e`; writes their records; the verdict for a
    /// sync event.
    pub fn handle(
        &mut self,
        e: &Event,
        return_probe: bool,
        mutation: bool,
        out: &mut dyn Write,
    ) -> Option<Action> {
        let info = CallInfo {
            sync: e.sync,
            mutation,
            return_probe,
        };
        let mut faults = Vec::new();
        let action = dispatch(
            &self.rt,
            self.list.iter().map(|(_, a)| a),
            e,
            info,
            |_, a, r| {
                let line = json!({
                    "plugin": a.plugin().manifest.name,
                    "probe": e.probe,
                    "pid": e.pid,
                    "tid": e.tid,
                    "time_ns": e.time_ns,
                    "record": r,
                });
                let _ = serde_json::to_writer(&mut *out, &line);
                let _ = out.write_all(b"\n");
            },
            |n, f| faults.push((n, f)),
        );
        for (n, f) in faults {
            let (arg, a) = &self.list[n];
            if self.faults_said < 10 {
                eprintln!("wprobe: {f} ({})", arg.path);
                self.faults_said += 1;
            }
            if let Some(q) = a.stats().quarantined {
                if !self.quarantine_said[n] {
                    eprintln!("wprobe: plugin {}: {q}", arg.path);
                    self.quarantine_said[n] = true;
                }
            }
        }
        action
    }

    pub fn process_exited(&self, pid: i32) {
        for (_, a) in &self.list {
            a.process_exited(pid);
        }
    }

    /// Each plugin's maps and counters as one JSON line on `out`; text bars
    /// and the log on `err`. Each part is written entry by entry, asking
    /// `stop` before each: when it says so (a stop signal came), what is
    /// written is closed where it is, the line says `"cut": true`, and the
    /// rest is left out. Whether it all went out.
    pub fn summary(
        &self,
        out: &mut dyn Write,
        err: &mut dyn Write,
        stop: &dyn Fn() -> bool,
    ) -> bool {
        let max_keys = self.rt.limits.max_keys;
        for (arg, a) in &self.list {
            match plugin_summary(arg, a, max_keys, out, err, stop) {
                Ok(true) => {}
                Ok(false) | Err(_) => return false,
            }
        }
        true
    }
}

/// One plugin's part of the summary; `Ok(false)` when `stop` cut it.
/// `max_keys`: the key cap of its maps.
fn plugin_summary(
    arg: &PluginArg,
    a: &Attachment,
    max_keys: usize,
    out: &mut dyn Write,
    err: &mut dyn Write,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<bool> {
    let p = a.plugin();
    let stats = a.stats();
    let refused = stats.map_updates_refused;
    // `{"plugin": {…, "maps": {…}}}`, the maps written as they are read.
    let head = json!({
        "name": p.manifest.name,
        "version": p.manifest.version,
        "file": arg.path,
        "stats": stats,
    });
    let head = serde_json::to_string(&head)?;
    let head = head.strip_suffix('}').unwrap_or(&head);
    write!(out, "{{\"plugin\":{head},\"maps\":")?;
    let whole = a.write_maps_json(out, stop)?;
    if !whole {
        out.write_all(b",\"cut\":true")?;
    }
    out.write_all(b"}}\n")?;
    // What is whole goes out now: the bars on stderr may take long.
    out.flush()?;
    if !whole {
        return Ok(false);
    }
    if !a.maps_empty() {
        writeln!(err, "{}:", p.manifest.name)?;
        let whole = a.write_maps_text(err, stop)?;
        writeln!(err)?;
        err.flush()?;
        if !whole {
            return Ok(false);
        }
    }
    // The updates its maps lost to the key cap, where a person reads the
    // maps (the JSON line has them as `map_updates_refused`).
    if refused > 0 {
        writeln!(
            err,
            "{}: {refused} map updates refused (-7): its maps held {max_keys} keys, the most \
             they may",
            p.manifest.name
        )?;
        err.flush()?;
    }
    let log = a.log();
    if !log.is_empty() {
        writeln!(err, "{} log (last {}):", p.manifest.name, log.len().min(20))?;
        for l in log.iter().rev().take(20).rev() {
            writeln!(err, "  {l}")?;
        }
        err.flush()?;
    }
    Ok(true)
}

fn attach(rt: &Runtime, arg: &PluginArg) -> Result<Attachment, String> {
    let bytes =
        std::fs::read(&arg.path).map_err(|e| format!("cannot read plugin {}: {e}", arg.path))?;
    let plugin = rt
        .load(&bytes, None, &arg.path)
        .map_err(|e| format!("plugin {} refused: {e}", arg.path))?;
    rt.attach(Arc::new(plugin), &arg.config)
        .map_err(|e| format!("plugin {} refused: {e}", arg.path))
}
