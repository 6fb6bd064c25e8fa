//! Small helpers shared by the xtask commands: locating the workspace, running commands loudly,
//! and checking what is installed.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
};

use anyhow::{bail, Context as _, Result};

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The user's cache folder: `$XDG_CACHE_HOME`, else `~/.cache`, else the temporary folder.
/// What xtask keeps between runs lives in a folder of its own here, never in the repository
/// (CI clones afresh; this folder persists).
pub fn user_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir)
}

/// The cargo that runs xtask (`$CARGO`, set by `cargo run`), or `cargo` from `PATH`.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    // Make sure a bpf-linker installed by `cargo install` is found by the agent's build.rs
    // even when $CARGO_HOME/bin is not on the caller's PATH.
    cmd.env("PATH", path_with_cargo_bin());
    cmd
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`), where `cargo install` puts binaries.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home).join("bin"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin"))
}

/// `PATH` with `$CARGO_HOME/bin` appended when it is missing.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(bin) = cargo_bin_dir().filter(|bin| !dirs.contains(bin)) {
        dirs.push(bin);
    }
    std::env::join_paths(dirs).unwrap_or(path)
}

/// Renders a command line for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(shell_quote));
    parts.join(" ")
}

fn shell_quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio, echoing it first; fails if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = run_status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` with inherited stdio, echoing it first, and returns its exit status.
pub fn run_status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("+ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Runs `cmd` quietly and returns its stdout if it succeeded, `None` if it could not start
/// or failed (used by the checks: "is this installed?").
pub fn probe_output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` quietly and returns its stdout; fails with its stderr if it exits non-zero.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with its stdout streamed to our stdout line by line and also passed to
/// `on_line`; stderr is inherited. Returns the exit status.
pub fn run_streaming(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<ExitStatus> {
    eprintln!("+ {}", display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    let stdout = child.stdout.take().context("child stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading child output")?;
        println!("{line}");
        on_line(&line);
    }
    child.wait().context("waiting for child")
}

/// Spawns a thread that copies `reader` line by line (lossily decoded, `\r` stripped) into a
/// channel; the channel closes at EOF.
pub fn line_reader(reader: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Whether we run as root (package installation and the VM's 9p share need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether an executable named `name` is on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "a b", "it's"]);
        assert_eq!(display(&cmd), r"apt-get install -y 'a b' 'it'\''s'");
    }
}
