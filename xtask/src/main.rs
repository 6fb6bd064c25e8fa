//! `cargo xtask`: orchestration for the scaler workspace (not the build path: the agent's
//! build.rs builds and embeds the eBPF object).
//!
//! - `setup [--vm] [--check]`: install the eBPF toolchain (and the VM tools) idempotently;
//! - `build`: the agent with its real eBPF object (release profile);
//! - `run [-- ARGS]`: setup check, build, `scaler agent ARGS`;
//! - `test [--no-vm|--host-only] [--kernel K] [-- FILTER]`: the whole suite;
//! - `vm-test [--kernel 6.1|6.12|6.18|all] [-- FILTER]`: integration tests on cgroup v2 kernels;
//! - `dist [--no-image]`: the Debian package and the OCI image, built offline (target/dist);
//! - `lint`: rustfmt and clippy on the userspace crates.

mod cargo;
mod dist;
mod report;
mod setup;
mod test;
mod util;
mod vm;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Setup, build, run and test scaler")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what the eBPF build (and with --vm, the VM tests) needs; idempotent.
    Setup(setup::Options),
    /// Build the agent with its eBPF programs (release profile).
    Build(cargo::BuildOptions),
    /// Build and run the agent (`scaler agent`, built-in default configuration) as root.
    Run {
        /// Arguments passed to `scaler agent`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The whole test suite: unit tests, integration tests on the host and in a VM, bench smoke.
    Test(test::Options),
    /// Run the integration tests in VMs on cgroup v2 kernels.
    VmTest(vm::Options),
    /// The Debian package and the OCI image (FROM scratch), built offline into target/dist.
    Dist(dist::Options),
    /// rustfmt --check and clippy on the userspace crates.
    Lint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup(opts) => setup::setup(&opts),
        Cmd::Build(_) => {
            setup::ensure(false)?;
            let agent = cargo::build_agent()?;
            println!("built {}", agent.display());
            Ok(())
        }
        Cmd::Run { args } => run(&args),
        Cmd::Test(opts) => test::test(&opts),
        Cmd::VmTest(opts) => vm::vm_test(&opts),
        Cmd::Dist(opts) => {
            let d = dist::dist(&opts)?;
            println!("dist: package {}", d.deb.display());
            println!("dist: image build context {}", d.image_context.display());
            if let Some(a) = d.oci_archive {
                println!("dist: OCI archive {}", a.display());
            }
            Ok(())
        }
        Cmd::Lint => lint(),
    }
}

fn run(args: &[String]) -> Result<()> {
    setup::ensure(false)?;
    let agent = cargo::build_agent()?;
    if !util::is_root() {
        eprintln!("xtask: warning: the agent needs root (CAP_BPF, CAP_PERFMON, cgroupfs writes)");
    }
    let mut cmd = Command::new(&agent);
    cmd.arg("agent").args(args);
    eprintln!("+ {}", util::display(&cmd));
    use std::os::unix::process::CommandExt as _;
    let err = cmd.exec();
    Err(err).with_context(|| format!("executing {}", agent.display()))
}

fn lint() -> Result<()> {
    // Run both checks and report both, so one run shows everything to fix.
    let fmt = util::run(util::cargo().args(["fmt", "--all", "--check"]));
    // The eBPF crate only builds for the BPF target: lint the host crates (the userspace
    // default members and the integration tests) without the nested eBPF build.
    let clippy = util::run(
        util::cargo()
            .env("SCALER_SKIP_EBPF", "1")
            .args([
                "clippy",
                "-p",
                "scaler",
                "-p",
                "scaler-cli",
                "-p",
                "scaler-common",
                "-p",
                "scaler-tools",
                "-p",
                "xtask",
            ])
            .args([
                "-p",
                "scaler-tests",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
    );
    match (fmt, clippy) {
        (Ok(()), Ok(())) => Ok(()),
        (fmt, clippy) => {
            let why: Vec<String> = [("rustfmt", fmt), ("clippy", clippy)]
                .into_iter()
                .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e:#}")))
                .collect();
            anyhow::bail!("lint failed:\n  {}", why.join("\n  "))
        }
    }
}
