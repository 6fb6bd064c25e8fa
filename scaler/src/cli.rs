//! Command-line interface.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "scaler", version, about = "eBPF-backed, low-latency cgroup scaler")]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `scaler=debug`. Also RUST_LOG.
    #[arg(long, global = true, env = "SCALER_LOG", default_value = "info")]
    pub log: String,
    /// Log as JSON lines (for log shippers).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream memory-pressure events as they happen.
    Watch(crate::cmd::watch::WatchArgs),
    /// The node agent: observe every cgroup, manage those the configuration selects.
    Agent(crate::cmd::agent::AgentArgs),
    /// What the running agent manages: limits, recent actions, latency percentiles.
    Status(crate::cmd::agent::status::StatusArgs),
    /// Validate a configuration file (exit status 2 when it is invalid).
    CheckConfig(crate::cmd::agent::CheckConfigArgs),
    /// Run a command in a fresh managed cgroup; exits with its status.
    Exec(crate::cmd::exec::ExecArgs),
    /// Benchmark the eBPF scaler against the alternatives, side by side.
    Bench(crate::bench::BenchArgs),
    /// Run a synthetic workload (used by the tests and the benchmark).
    #[command(hide = true)]
    Workload(crate::workload::WorkloadArgs),
    /// Measure what the scheduler programs cost (context-switch benchmark, with vs without).
    #[command(hide = true)]
    Overhead(crate::cmd::overhead::OverheadArgs),
    /// LOAD TESTING ONLY: inject a synthetic event storm into a running agent's ring buffer.
    #[command(hide = true)]
    LoadTest(crate::inject::LoadTestArgs),
}

fn init_tracing(filter: &str, json: bool) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = std::env::var("RUST_LOG").ok().unwrap_or_else(|| filter.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let b = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
    // aya-log records (from the kernel programs) arrive through the `log` facade.
    let _ = tracing_log::LogTracer::init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json);
    let res = match cli.command {
        Command::Watch(a) => crate::cmd::watch::run(a),
        Command::Agent(a) => crate::cmd::agent::run(a),
        Command::CheckConfig(a) => crate::cmd::agent::check_config(a),
        Command::Status(a) => crate::cmd::agent::status::run(a),
        Command::Exec(a) => crate::cmd::exec::run(a),
        Command::Bench(a) => crate::bench::run(a.into()),
        Command::Workload(a) => crate::workload::run(a),
        Command::Overhead(a) => crate::cmd::overhead::run(a),
        Command::LoadTest(a) => crate::inject::run(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scaler: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
