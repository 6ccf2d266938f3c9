//! `wprobe demo`: the service with something to look at, within seconds of
//! a fresh clone. It runs `wprobe serve` on a scratch data directory,
//! spawns the bundled workload (`wprobe-demo-workload`, built with this
//! binary), uploads the demo plugins (committed modules, rebuilt from
//! plugins/c and compared by the test command) and puts probes on the
//! workload with them — over the REST API, as any client would — then
//! prints the URL with its token. Ctrl-C stops it all; the workload ends
//! with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use clap::Args;
use serde_json::{json, Value};

use crate::cli::Api;
use crate::serve::{self, Listening, ServeArgs};

/// The demo's plugins: count, latency and mallocsize from plugins/c, as
/// committed in plugins/demo.
const PLUGINS: [(&str, &[u8]); 3] = [
    ("count", include_bytes!("../../plugins/demo/count.wasm")),
    ("latency", include_bytes!("../../plugins/demo/latency.wasm")),
    (
        "mallocsize",
        include_bytes!("../../plugins/demo/mallocsize.wasm"),
    ),
];

/// `wprobe demo`'s options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Where the demo's token and database live; emptied at start. Default:
    /// a directory of this user under the system's temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The workload to probe (default: wprobe-demo-workload beside this
    /// executable).
    #[arg(long)]
    pub workload: Option<PathBuf>,
}

fn workload_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let w = exe.with_file_name("wprobe-demo-workload");
    if w.exists() {
        Ok(w)
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build -p wprobe` (or give --workload)",
            w.display()
        ))
    }
}

/// Runs the demo until Ctrl-C; the exit code.
pub fn main(args: DemoArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wprobe demo: {e}");
            1
        }
    }
}

fn run(args: DemoArgs) -> Result<(), String> {
    let workload = workload_binary(args.workload)?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let dir = args
        .data_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("wprobe-demo-{uid}")));
    // A fresh start: no targets or probes of an earlier demo.
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("emptying the demo's data directory {}: {e}", dir.display()))?;
    }
    let pid = Arc::new(AtomicI32::new(0));
    let spawned = pid.clone();
    let r = serve::run(ServeArgs::new(args.listen, dir), move |l| {
        set_up(l, &workload, &spawned)
    });
    let p = pid.load(Ordering::SeqCst);
    if p > 0 {
        // The service let it go untouched; the demo's workload ends here.
        // SAFETY: a plain signal to the process the demo started.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    r
}

/// Uploads the plugins, spawns the workload and probes it, over the API.
fn set_up(l: &Listening, workload: &std::path::Path, pid: &AtomicI32) -> Result<(), String> {
    let api = Api::new(&format!("http://{}", l.addr), &l.token);
    let mut ids = std::collections::HashMap::new();
    for (name, bytes) in PLUGINS {
        let up = api.upload_plugin(bytes.to_vec(), Some(name))?;
        ids.insert(name, id(&up)?);
    }
    let target = api.post(
        "/api/targets",
        &json!({"spawn": [workload.display().to_string()]}),
    )?;
    pid.store(target["pid"].as_i64().unwrap_or(0) as i32, Ordering::SeqCst);
    let t = id(&target)?;
    let w = workload.display();
    let probes = json!({"probes": [
        {"target": t, "spec": "uprobe:libc:malloc size=%rdi:u64",
         "plugins": [{"plugin": ids["mallocsize"]}]},
        {"target": t, "spec": format!("uretprobe:{w}:demo_work entry"),
         "plugins": [{"plugin": ids["latency"]}]},
        {"target": t, "spec": format!("uprobe:{w}:demo_parse line=+0($arg1):string"),
         "plugins": [{"plugin": ids["count"]}]},
        {"target": t, "spec": format!("uretprobe:{w}:demo_checksum"),
         "plugins": []},
    ]});
    let made = api.post("/api/probes/batch", &probes)?;
    let n = made.as_array().map_or(0, Vec::len);
    eprintln!(
        "wprobe demo: {} (pid {}) is traced with {n} probes and {} plugins:",
        w,
        target["pid"],
        PLUGINS.len()
    );
    for p in probes["probes"].as_array().into_iter().flatten() {
        eprintln!("  {}", p["spec"].as_str().unwrap_or_default());
    }
    eprintln!("open");
    eprintln!("  {}", l.url());
    eprintln!("or, from a shell: wprobe probe ls --url '{}'", l.url());
    Ok(())
}

fn id(v: &Value) -> Result<i64, String> {
    v["id"]
        .as_i64()
        .ok_or_else(|| format!("the service answered without an id: {v}"))
}
