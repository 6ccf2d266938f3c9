//! `wprobe`: the command a user runs.
//!
//! `trace`: spawn or attach, place probes, print every hit as one JSON
//! object per line, detach cleanly; a client of the privileged
//! `wprobe-core`, which it starts itself (or finds with `--core SOCKET`).
//! `serve` runs the service (host/src/serve/): REST API, live events,
//! metrics, persistence. `demo` runs it with a workload already probed.
//! `target`, `probe`, `plugin` and `events` drive a running service over
//! its REST API (host/src/cli.rs).

mod trace;
mod trace_plugins;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wprobe",
    version,
    about = "kprobes for live user-space programs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trace a command or a running process with entry and return probes;
    /// print each hit as a JSON line.
    Trace(trace::TraceArgs),
    /// Run the service: a REST API (and, later, the web UI) on
    /// 127.0.0.1:7878 by default; prints its URL with the token.
    Serve(wprobe_host::serve::ServeArgs),
    /// Run the service with a demo workload, probed with the example
    /// plugins; prints the URL to open.
    Demo(wprobe_host::demo::DemoArgs),
    /// Targets of a running service: attach (--pid), spawn, list, detach.
    Target(wprobe_host::cli::TargetArgs),
    /// Probes of a running service: add, list, remove, enable, disable.
    Probe(wprobe_host::cli::ProbeArgs),
    /// Plugins of a running service: upload, list, remove.
    Plugin(wprobe_host::cli::PluginArgs),
    /// Follow a running service's events: each hit as a JSON line.
    Events(wprobe_host::cli::EventsArgs),
    /// Compile a plugin's module for the `wprobe` that started this one
    /// (host/src/plugin/compile.rs): wasm on stdin, the artifact on
    /// stdout, under the memory limit the parent set.
    #[command(name = "__compile-plugin", hide = true)]
    CompilePlugin {
        #[arg(long)]
        stack_bytes: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    // Plugins are compiled by a child running this very executable, under
    // a memory limit: /proc/self/exe stays it even when the file is
    // replaced on disk.
    wprobe_host::plugin::compile::set_helper("/proc/self/exe".into());
    let code = match cli.cmd {
        Cmd::Trace(args) => trace::main(args),
        Cmd::Serve(args) => wprobe_host::serve::main(args),
        Cmd::Demo(args) => wprobe_host::demo::main(args),
        Cmd::Target(args) => wprobe_host::cli::target(args),
        Cmd::Probe(args) => wprobe_host::cli::probe(args),
        Cmd::Plugin(args) => wprobe_host::cli::plugin(args),
        Cmd::Events(args) => wprobe_host::cli::events(args),
        Cmd::CompilePlugin { stack_bytes } => {
            wprobe_host::plugin::compile::helper_main(stack_bytes)
        }
    };
    std::process::exit(code);
}
