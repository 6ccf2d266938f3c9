//! `wprobe`: the command a user runs.
//!
//! Today it has one subcommand, `trace`: spawn or attach, place probes,
//! print every hit as one JSON object per line, detach cleanly. It is a
//! client of the privileged `wprobe-core`, which it starts itself (or finds
//! with `--core SOCKET`). `serve` runs the service (host/src/serve/): today
//! its plugin store and REST API; targets, probes and events come next.

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
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Trace(args) => trace::main(args),
        Cmd::Serve(args) => wprobe_host::serve::main(args),
    };
    std::process::exit(code);
}
