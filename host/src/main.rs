//! `wprobe`: the command a user runs.
//!
//! Today it has one subcommand, `trace`, which runs the probe engine in its
//! own process: spawn or attach, place probes, print every hit as one JSON
//! object per line, detach cleanly. The service (`wprobe serve`) and the
//! separate privileged `wprobe-core` daemon come next; `trace` will then
//! become one client of the daemon.

mod trace;

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
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Trace(args) => trace::main(args),
    };
    std::process::exit(code);
}
