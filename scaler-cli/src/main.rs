//! The `scaler` binary: the agent's subcommands and, with the `tools` feature (on by default),
//! the tools' (`bench` and the hidden `workload`, `overhead`, `load-test`).

mod docs;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

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
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Agent(scaler::cli::Command),
    #[cfg(feature = "tools")]
    #[command(flatten)]
    Tools(scaler_tools::Command),
    /// Print the completion script for a shell (the Debian package installs them).
    #[command(hide = true)]
    Completions(docs::CompletionsArgs),
    /// Print the manual page scaler(1), or write every page into a directory.
    #[command(hide = true)]
    Manpage(docs::ManpageArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` print and succeed; a command line that does not parse is
        // EX_USAGE (clap's own default is 2).
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                scaler::cli::exit::USAGE
            } else {
                0
            });
        }
    };
    scaler::cli::init_tracing(&cli.global);
    let result = match cli.command {
        Command::Agent(c) => scaler::cli::run(c),
        #[cfg(feature = "tools")]
        Command::Tools(c) => scaler_tools::run(c),
        Command::Completions(a) => {
            docs::completions(Cli::command(), a.shell, &mut std::io::stdout().lock());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage(a) => manpage(a),
    };
    scaler::cli::exit_code(result)
}

fn manpage(args: docs::ManpageArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    match args.out_dir {
        Some(dir) => {
            for page in docs::write_pages(Cli::command(), &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?
            {
                println!("{}", page.display());
            }
        }
        None => docs::render_main(Cli::command(), &mut std::io::stdout().lock())
            .context("writing the manual page to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tools_are_there_only_with_the_feature() {
        let bench = Cli::try_parse_from(["scaler", "bench", "--quick"]);
        assert_eq!(bench.is_ok(), cfg!(feature = "tools"));
        let watch = Cli::try_parse_from(["scaler", "--log", "debug", "watch"]).unwrap();
        assert!(matches!(
            watch.command,
            Command::Agent(scaler::cli::Command::Watch(_))
        ));
        assert_eq!(watch.global.log.as_deref(), Some("debug"));
    }
}
