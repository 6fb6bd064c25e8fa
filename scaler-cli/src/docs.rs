//! Shell completions and manual pages, generated from the same clap definition the binary
//! parses with (hidden subcommands `scaler completions SHELL` and `scaler manpage`; the
//! Debian package built by `cargo xtask dist` installs their output).

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use clap::Command;
use clap_complete::Shell;

/// The binary's name (the command the scripts complete).
const BIN: &str = "scaler";

/// Options of `scaler completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for (bash, zsh, fish, elvish, powershell).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Options of `scaler manpage`.
#[derive(Debug, clap::Args)]
pub struct ManpageArgs {
    /// Write scaler.1 and one scaler-SUBCOMMAND.1 per subcommand into DIR instead of printing
    /// scaler.1 on stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Writes the completion script for `shell` to `out`. Hidden subcommands (the test tools,
/// `completions`, `manpage`) are left out: some generators would offer them otherwise.
pub fn completions(cmd: Command, shell: Shell, out: &mut dyn Write) {
    let name = BIN;
    debug_assert_eq!(cmd.get_name(), BIN);
    let visible: Vec<Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let mut shown = Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommands(visible);
    clap_complete::generate(shell, &mut shown, name, out);
}

/// The subcommands a manual documents: the visible ones, without clap's `help`.
pub fn documented_subcommands(cmd: &Command) -> Vec<&Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect()
}

/// Renders the top-level page, `scaler(1)`: clap_mangen's sections plus EXIT STATUS, FILES,
/// ENVIRONMENT and SEE ALSO (one page per subcommand).
pub fn render_main(cmd: Command, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_string();
    let see_also: Vec<String> = documented_subcommands(&cmd)
        .iter()
        .map(|s| format!(".BR {name}\\-{} (1)", s.get_name()))
        .collect();
    let man = clap_mangen::Man::new(cmd);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    use scaler::cli::exit;
    let statuses = [
        (0, "success (help and version included)"),
        (exit::FAILURE, "a runtime failure; the message names it"),
        (exit::USAGE, "a command line that does not parse (EX_USAGE)"),
        (
            exit::UNAVAILABLE,
            "a kernel feature is missing: BTF, a tracepoint, a cgroup controller, or the \
             verifier refused a program (EX_UNAVAILABLE)",
        ),
        (
            exit::NOPERM,
            "a privilege is missing: capabilities or write access to cgroupfs (EX_NOPERM)",
        ),
        (
            exit::CONFIG,
            "an invalid configuration (EX_CONFIG); the systemd unit does not restart on it",
        ),
        (
            exit::EXEC_FAILED,
            "scaler exec failed itself; otherwise it exits with the command's status \
             (128 + signal number if the command died of a signal)",
        ),
        (
            exit::EXEC_NOT_RUNNABLE,
            "scaler exec: the command was found but could not be run",
        ),
        (
            exit::EXEC_NOT_FOUND,
            "scaler exec: the command was not found",
        ),
    ];
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for (code, what) in statuses {
        writeln!(out, ".TP\n{code}\n{what}")?;
    }
    writeln!(
        out,
        ".SH FILES\n\
         .TP\n/etc/scaler/scaler.toml\nthe agent's configuration (the systemd unit's \
         \\fB\\-\\-config\\fR); validate it with \\fBscaler check\\-config\\fR\n\
         .TP\n/var/lib/scaler/state.json\nthe original limits of the cgroups the agent changed\n\
         .TP\n/run/scaler/status.sock\nthe socket \\fBscaler status\\fR reads\n\
         .SH ENVIRONMENT\n\
         .TP\nSCALER_LOG\nthe log filter when \\fB\\-\\-log\\fR is not given; then RUST_LOG, \
         then info\n\
         .TP\nNO_COLOR\nno ANSI colours in text logs (they are used only on a terminal anyway)\n\
         .SH \"SEE ALSO\""
    )?;
    writeln!(out, "{}", see_also.join(",\n"))?;
    man.render_version_section(out)
}

/// Writes `scaler.1` and one `scaler-SUBCOMMAND.1` per documented subcommand into `dir`;
/// returns the files written.
pub fn write_pages(cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let main = dir.join(format!("{}.1", cmd.get_name()));
    let mut text = Vec::new();
    render_main(cmd.clone(), &mut text)?;
    std::fs::write(&main, text)?;
    written.push(main);
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    for sub in documented_subcommands(&cmd) {
        // After build(), a subcommand's display name is `scaler-<name>`.
        let man = clap_mangen::Man::new(sub.clone());
        written.push(man.generate_to(dir)?);
    }
    Ok(written)
}
