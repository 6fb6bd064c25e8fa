//! Command-line interface of the agent: the global options, the agent's own subcommands and
//! their dispatch. The `scaler` binary (package `scaler-cli`) flattens them into its parser,
//! next to the tools' subcommands (package `scaler-tools`) when built with its `tools` feature.

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Options every subcommand accepts (flatten into the top-level parser).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `scaler=debug`. Precedence: this
    /// option, then SCALER_LOG, then RUST_LOG, then `info`.
    #[arg(long, global = true, env = "SCALER_LOG")]
    pub log: Option<String>,
    /// Log format on stderr: `text` (coloured only on a terminal, never when NO_COLOR is set)
    /// or `json` (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The same as `--log-format json`.
    #[arg(long, global = true)]
    pub log_json: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl GlobalArgs {
    /// The log filter in force: `--log`/SCALER_LOG, else RUST_LOG, else `info`.
    pub fn filter(&self, rust_log: Option<String>) -> String {
        self.log
            .clone()
            .or(rust_log.filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "info".to_string())
    }

    /// The log format in force (`--log-json` is `--log-format json`).
    pub fn format(&self) -> LogFormat {
        if self.log_json {
            LogFormat::Json
        } else {
            self.log_format
        }
    }
}

/// Whether text logs carry ANSI colours: only on a terminal, and never when NO_COLOR is set to
/// a non-empty value (https://no-color.org). journald and `kubectl logs` are not terminals.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
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
    /// Validate a configuration file (exit status 78 when it is invalid).
    CheckConfig(crate::cmd::agent::CheckConfigArgs),
    /// Run a command in a fresh managed cgroup; exits with its status.
    Exec(crate::cmd::exec::ExecArgs),
}

/// Installs the tracing subscriber on stderr, in the format and with the filter of
/// [`GlobalArgs`]; an invalid filter falls back to `info` with a warning.
pub fn init_tracing(global: &GlobalArgs) {
    use std::io::IsTerminal;
    use tracing_subscriber::{fmt, EnvFilter};
    let wanted = global.filter(std::env::var("RUST_LOG").ok());
    let (filter, bad) = match EnvFilter::try_new(&wanted) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let b = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match global.format() {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b
            .with_ansi(use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .init(),
    }
    if let Some(e) = bad {
        tracing::warn!(filter = %wanted, "invalid log filter ({e}); logging at info");
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
        // Like env(1): 125 for its own failure, 126/127 for a command it cannot run or find.
        Command::Exec(a) => Ok(crate::cmd::exec::run(a).unwrap_or_else(|e| {
            eprintln!("scaler: error: {e:#}");
            ExitCode::from(crate::cmd::exec::exit_status_of(&e))
        })),
    }
}

/// Exit statuses. They follow sysexits(3), whose numbers systemd names in `systemctl status`
/// (`status=78/CONFIG`); `scaler exec` follows env(1) and timeout(1) for its own failures.
pub mod exit {
    /// A runtime failure (an error the message names).
    pub const FAILURE: u8 = 1;
    /// A command line that does not parse (EX_USAGE).
    pub const USAGE: u8 = 64;
    /// The agent's engine thread died or stalled; limits were restored as configured and a
    /// supervisor should restart it (EX_SOFTWARE).
    pub const SOFTWARE: u8 = 70;
    /// A kernel feature the programs need is missing: BTF, a tracepoint, a cgroup controller,
    /// or the verifier refused a program (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// A privilege is missing: capabilities, or write access to cgroupfs (EX_NOPERM).
    pub const NOPERM: u8 = 77;
    /// An invalid configuration (EX_CONFIG): restarting will not fix it.
    pub const CONFIG: u8 = 78;
    /// `scaler exec` failed itself (before or instead of running the command).
    pub const EXEC_FAILED: u8 = 125;
    /// `scaler exec`: the command was found but could not be run.
    pub const EXEC_NOT_RUNNABLE: u8 = 126;
    /// `scaler exec`: the command was not found.
    pub const EXEC_NOT_FOUND: u8 = 127;
}

/// The exit status for an error: the class of the first typed cause in its chain.
pub fn exit_status_of(e: &anyhow::Error) -> u8 {
    use crate::ebpf::EbpfError;
    for cause in e.chain() {
        if let Some(p) = cause.downcast_ref::<crate::privilege::PrivilegeError>() {
            use crate::privilege::PrivilegeError as P;
            if matches!(p, P::Missing(_) | P::CgroupAccess { .. }) {
                return exit::NOPERM;
            }
        }
        if let Some(b) = cause.downcast_ref::<EbpfError>() {
            if matches!(
                b,
                EbpfError::Btf(_)
                    | EbpfError::MissingTracepoint { .. }
                    | EbpfError::Load(_)
                    | EbpfError::Program { .. }
            ) {
                return exit::UNAVAILABLE;
            }
        }
        if let Some(crate::btf::BtfError::Read { .. }) = cause.downcast_ref() {
            return exit::UNAVAILABLE;
        }
        if let Some(crate::cgroupfs::CgroupError::ControllerNotMounted { .. }) =
            cause.downcast_ref()
        {
            return exit::UNAVAILABLE;
        }
        if cause.downcast_ref::<crate::config::ConfigError>().is_some() {
            return exit::CONFIG;
        }
    }
    exit::FAILURE
}

/// The process's exit status for a subcommand's result: an error is printed as
/// `scaler: error: ...` (with its causes) and exits with [`exit_status_of`] it.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scaler: error: {e:#}");
            ExitCode::from(exit_status_of(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn args(log: Option<&str>, format: LogFormat, json: bool) -> GlobalArgs {
        GlobalArgs {
            log: log.map(str::to_string),
            log_format: format,
            log_json: json,
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        // NO_COLOR set but empty does not count (no-color.org).
        assert!(use_colour(true, Some(OsStr::new(""))));
    }

    #[test]
    fn the_log_option_beats_rust_log() {
        let a = args(Some("debug"), LogFormat::Text, false);
        assert_eq!(a.filter(Some("trace".into())), "debug");
        let a = args(None, LogFormat::Text, false);
        assert_eq!(a.filter(Some("warn".into())), "warn");
        assert_eq!(a.filter(Some(String::new())), "info");
        assert_eq!(a.filter(None), "info");
    }

    #[test]
    fn log_json_is_the_json_format() {
        assert_eq!(args(None, LogFormat::Text, true).format(), LogFormat::Json);
        assert_eq!(args(None, LogFormat::Json, false).format(), LogFormat::Json);
        assert_eq!(args(None, LogFormat::Text, false).format(), LogFormat::Text);
    }
}
