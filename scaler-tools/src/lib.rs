//! scaler's tools, kept out of the node agent: the benchmark ([`bench`]), the synthetic
//! workloads the tests and the benchmark run ([`workload`]), event injection for load tests
//! ([`inject`]) and the scheduler programs' overhead measurement ([`overhead`]).
//!
//! Built on the agent library's public API (`scaler`). The `scaler` binary (package
//! `scaler-cli`) links them in through its default `tools` feature and flattens [`Command`]
//! into its command line; an agent built without the feature has none of this code.

pub mod bench;
pub mod inject;
pub mod overhead;
pub mod workload;

use std::process::ExitCode;

use clap::Subcommand;

/// The tools' subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmark the eBPF scaler against the alternatives, side by side.
    Bench(bench::BenchArgs),
    /// Run a synthetic workload (used by the tests and the benchmark).
    #[command(hide = true)]
    Workload(workload::WorkloadArgs),
    /// Measure what the scheduler programs cost (context-switch benchmark, with vs without).
    #[command(hide = true)]
    Overhead(overhead::OverheadArgs),
    /// LOAD TESTING ONLY: inject a synthetic event storm into a running agent's ring buffer.
    #[command(hide = true)]
    LoadTest(inject::LoadTestArgs),
}

/// Runs one of the tools' subcommands.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Bench(a) => bench::run(a.into()),
        Command::Workload(a) => workload::run(a),
        Command::Overhead(a) => overhead::run(a),
        Command::LoadTest(a) => inject::run(a),
    }
}
