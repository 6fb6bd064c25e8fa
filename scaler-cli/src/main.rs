//! The `scaler` binary: parses the command line and runs the subcommand.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "scaler",
    version,
    about = "eBPF-backed, low-latency cgroup scaler"
)]
struct Cli {
    #[command(flatten)]
    global: scaler::cli::GlobalArgs,
    #[command(subcommand)]
    command: scaler::cli::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    scaler::cli::init_tracing(&cli.global);
    scaler::cli::exit_code(scaler::cli::run(cli.command))
}
