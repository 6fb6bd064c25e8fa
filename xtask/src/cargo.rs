//! Cargo invocations shared by the commands. Everything is built with ONE profile (release), so
//! the nested eBPF build of the agent's build.rs (about 1.5 min) runs once, not per command.

use std::{
    fs,
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::util;

/// The cargo profile every xtask command uses.
pub const PROFILE: &str = "release";
/// The package whose build.rs embeds the eBPF object (the agent library).
pub const AGENT_PACKAGE: &str = "scaler";
/// The package of the `scaler` binary (the agent library plus, by default, the tools).
pub const BIN_PACKAGE: &str = "scaler-cli";
/// The binary.
pub const BIN_NAME: &str = "scaler";
/// The root integration tests.
pub const TESTS_PACKAGE: &str = "scaler-tests";

/// Options shared by commands that build.
#[derive(Debug, clap::Args)]
pub struct BuildOptions {
    /// Accepted for familiarity: xtask always builds with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// The outcome of a `--message-format=json` cargo run.
#[derive(Debug, Default)]
pub struct Artifacts {
    /// Executables of test targets (`profile.test == true`).
    pub test_executables: Vec<PathBuf>,
    /// Executables of binary targets, by target name.
    pub binaries: Vec<(String, PathBuf)>,
    /// OUT_DIRs of build scripts that ran (or were fresh), by package name.
    pub out_dirs: Vec<(String, PathBuf)>,
}

/// Parses cargo's JSON messages (one object per line).
pub fn parse_messages(lines: impl Iterator<Item = String>) -> Artifacts {
    let mut artifacts = Artifacts::default();
    for line in lines {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-artifact") => {
                let Some(exe) = msg["executable"].as_str() else {
                    continue;
                };
                if msg["profile"]["test"].as_bool() == Some(true) {
                    artifacts.test_executables.push(exe.into());
                } else if let Some(name) = msg["target"]["name"].as_str() {
                    artifacts.binaries.push((name.to_string(), exe.into()));
                }
            }
            Some("build-script-executed") => {
                let (Some(id), Some(out)) = (msg["package_id"].as_str(), msg["out_dir"].as_str())
                else {
                    continue;
                };
                artifacts.out_dirs.push((package_name_of(id), out.into()));
            }
            _ => {}
        }
    }
    artifacts
}

/// Extracts the package name from a cargo package id: either the old form
/// `name 0.1.0 (path+file:///...)` or the new `path+file:///...#name@0.1.0` /
/// `path+file:///.../name#0.1.0`.
pub fn package_name_of(id: &str) -> String {
    if let Some((_, frag)) = id.rsplit_once('#') {
        if let Some((name, _)) = frag.split_once('@') {
            return name.to_string();
        }
        // `...path/name#version`: the name is the last path segment.
        let url = &id[..id.len() - frag.len() - 1];
        return url.rsplit('/').next().unwrap_or(url).to_string();
    }
    id.split_whitespace().next().unwrap_or(id).to_string()
}

/// Runs cargo with `--message-format=json-render-diagnostics` (diagnostics still reach the
/// terminal) and returns the artifacts.
pub fn cargo_json(args: &[&str]) -> Result<Artifacts> {
    let mut cmd = util::cargo();
    cmd.args(args)
        .arg("--message-format=json-render-diagnostics");
    eprintln!("+ {}", util::display(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let lines: Vec<String> = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed: {status}", util::display(&cmd));
    }
    Ok(parse_messages(lines.into_iter()))
}

/// What a built eBPF object file is.
#[derive(Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// A BPF ELF object.
    Elf,
    /// The empty stub build.rs writes when it skipped the eBPF build.
    Stub,
}

/// Classifies the embedded object by its first bytes.
pub fn object_kind(path: &Path) -> Result<ObjectKind> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(if bytes.starts_with(b"\x7fELF") {
        ObjectKind::Elf
    } else {
        ObjectKind::Stub
    })
}

/// Refuses to build a stub agent when SCALER_SKIP_EBPF asks for one.
fn refuse_skip_ebpf() -> Result<()> {
    if let Ok(v) = std::env::var("SCALER_SKIP_EBPF") {
        bail!(
            "SCALER_SKIP_EBPF={v} is set: xtask builds the agent with its eBPF programs only; \
             unset it (it is for `cargo test` of the userspace crates without bpf-linker)"
        );
    }
    Ok(())
}

/// Builds the agent binary (release) with the real eBPF object and returns its absolute path.
/// Fails loudly if the embedded object would be the empty stub.
pub fn build_agent() -> Result<PathBuf> {
    refuse_skip_ebpf()?;
    let args = [
        "build",
        "--profile",
        PROFILE,
        "-p",
        BIN_PACKAGE,
        "--bin",
        BIN_NAME,
    ];
    let mut artifacts = cargo_json(&args)?;
    if stub_object(&artifacts)? {
        // build.rs wrote the stub on an earlier run (bpf-linker was missing then) and cargo
        // kept that result. Make it rerun now that the toolchain is present.
        eprintln!(
            "xtask: the agent embeds an empty eBPF stub from an earlier build without bpf-linker; \
             rebuilding it"
        );
        let build_rs = util::workspace_root().join(AGENT_PACKAGE).join("build.rs");
        let now = std::time::SystemTime::now();
        fs::File::options()
            .append(true)
            .open(&build_rs)
            .and_then(|f| f.set_modified(now))
            .with_context(|| format!("touching {}", build_rs.display()))?;
        artifacts = cargo_json(&args)?;
        if stub_object(&artifacts)? {
            bail!(
                "the agent was built with an empty eBPF stub even though the toolchain checks \
                 passed; see the build.rs warning above"
            );
        }
    }
    artifacts
        .binaries
        .into_iter()
        .find(|(name, _)| name == BIN_NAME)
        .map(|(_, path)| path)
        .context("cargo did not report the scaler binary")
}

/// Whether the agent's build script produced the stub (`None` OUT_DIR counts as a failure).
fn stub_object(artifacts: &Artifacts) -> Result<bool> {
    let out_dir = artifacts
        .out_dirs
        .iter()
        .find(|(name, _)| name == AGENT_PACKAGE)
        .map(|(_, dir)| dir)
        .context("cargo did not report the agent's build-script OUT_DIR")?;
    Ok(object_kind(&out_dir.join("scaler"))? == ObjectKind::Stub)
}

/// Builds the root integration tests (release, no run) and returns their executables.
pub fn build_integration_tests() -> Result<Vec<PathBuf>> {
    refuse_skip_ebpf()?;
    let artifacts = cargo_json(&[
        "test",
        "--profile",
        PROFILE,
        "-p",
        TESTS_PACKAGE,
        "--no-run",
    ])?;
    Ok(artifacts.test_executables)
}

/// A `Command` for a test executable, run the way `cargo test` would (cwd = the package dir).
pub fn test_command(exe: &Path, agent: &Path, filter: &[String]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.current_dir(util::workspace_root().join("tests"))
        .env("SCALER_BIN", agent)
        .arg("--test-threads=1")
        .args(filter);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_ids() {
        assert_eq!(
            package_name_of("scaler 0.1.0 (path+file:///work/main/scaler)"),
            "scaler"
        );
        assert_eq!(
            package_name_of("path+file:///work/main/scaler#0.1.0"),
            "scaler"
        );
        assert_eq!(
            package_name_of("path+file:///work/main/scaler-cli#0.1.0"),
            "scaler-cli"
        );
        assert_eq!(
            package_name_of("path+file:///work/main/tests#scaler-tests@0.1.0"),
            "scaler-tests"
        );
        assert_eq!(
            package_name_of("registry+https://github.com/rust-lang/crates.io-index#libc@0.2.1"),
            "libc"
        );
    }

    #[test]
    fn parses_artifacts() {
        let lines = [
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#scaler-tests@0.1.0","target":{"kind":["test"],"name":"memory"},"profile":{"test":true},"executable":"/w/target/release/deps/memory-abc"}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/scaler-cli#0.1.0","target":{"kind":["bin"],"name":"scaler"},"profile":{"test":false},"executable":"/w/target/release/scaler"}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/scaler#0.1.0","target":{"kind":["lib"],"name":"scaler"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"build-script-executed","package_id":"path+file:///w/scaler#0.1.0","out_dir":"/w/target/release/build/scaler-1/out"}"#,
            "not json",
            r#"{"reason":"build-finished","success":true}"#,
        ];
        let a = parse_messages(lines.iter().map(|s| s.to_string()));
        assert_eq!(
            a.test_executables,
            vec![PathBuf::from("/w/target/release/deps/memory-abc")]
        );
        assert_eq!(
            a.binaries,
            vec![("scaler".into(), PathBuf::from("/w/target/release/scaler"))]
        );
        assert_eq!(
            a.out_dirs,
            vec![(
                "scaler".into(),
                PathBuf::from("/w/target/release/build/scaler-1/out")
            )]
        );
    }

    #[test]
    fn classifies_objects() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("stub");
        let elf = dir.path().join("elf");
        fs::write(&stub, b"").unwrap();
        fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
        assert_eq!(object_kind(&stub).unwrap(), ObjectKind::Stub);
        assert_eq!(object_kind(&elf).unwrap(), ObjectKind::Elf);
        assert!(object_kind(&dir.path().join("missing")).is_err());
    }
}
