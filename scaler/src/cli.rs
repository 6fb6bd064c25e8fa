//! Command-line interface of the agent: the global options, the agent's own subcommands and
//! their dispatch. The `scaler` binary (package `scaler-cli`) flattens them into its parser,
//! next to the tools' subcommands (package `scaler-tools`) when built with its `tools` feature.

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Options every subcommand accepts (flatten into the top-level parser).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `scaler=debug`. Also RUST_LOG.
    #[arg(long, global = true, env = "SCALER_LOG", default_value = "info")]
    pub log: String,
    /// Log as JSON lines (for log shippers).
    #[arg(long, global = true)]
    pub log_json: bool,
}

/// The agent's subcommands.
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
}

/// Installs the tracing subscriber (stderr, text or JSON lines) for `--log` / `--log-json`.
pub fn init_tracing(global: &GlobalArgs) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = std::env::var("RUST_LOG")
        .ok()
        .unwrap_or_else(|| global.log.clone());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let b = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if global.log_json {
        b.json().init();
    } else {
        b.init();
    }
    // aya-log records (from the kernel programs) arrive through the `log` facade.
    let _ = tracing_log::LogTracer::init();
}

/// Runs one of the agent's subcommands.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Watch(a) => crate::cmd::watch::run(a),
        Command::Agent(a) => crate::cmd::agent::run(a),
        Command::CheckConfig(a) => crate::cmd::agent::check_config(a),
        Command::Status(a) => crate::cmd::agent::status::run(a),
        Command::Exec(a) => crate::cmd::exec::run(a),
    }
}

/// The process's exit status for a subcommand's result: an error is printed as
/// `scaler: error: ...` (with its causes) and exits with 1.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scaler: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
