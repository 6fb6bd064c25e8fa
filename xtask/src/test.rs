//! `cargo xtask test`: the whole suite, in stages, with a summary.
//!
//! 1. setup check (installs the toolchain when something is missing);
//! 2. `cargo test` of the userspace crates (the default members: unit tests of scaler,
//!    scaler-common, xtask), release profile so the eBPF build is shared with the next stages;
//! 3. the root integration tests (`scaler-tests`) on the host, with `SCALER_BIN` set;
//! 4. the same tests in VMs on cgroup v2 kernels (`vm-test`; 6.1, 6.12 and 6.18 by default);
//! 5. `scaler bench --quick` (once the agent has a `bench` command);
//! 6. (after the unit tests) the cargo-fuzz targets, bounded (`fuzz/run.sh`);
//! 7. (after the host integration tests) the packages: `cargo xtask dist --no-image`, then
//!    tests/tests/dist.rs with `SCALER_DIST_DIR` (the .deb installed with dpkg, the image built
//!    and run with podman, the Kubernetes manifests through kubernetes-validate).

use std::{path::Path, process::Command, time::Instant};

use anyhow::Result;

use crate::{
    cargo, dist,
    report::{run_counted, run_host_integration, Outcome, Report},
    setup, util, vm,
};

/// Where the fuzz stage builds: `<user cache>/scaler-fuzz/target`.
fn fuzz_target_dir() -> std::path::PathBuf {
    util::user_cache().join("scaler-fuzz/target")
}

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip the VM stage.
    #[arg(long)]
    pub no_vm: bool,
    /// Only the host stages (same as --no-vm, and skips the benchmark smoke test).
    #[arg(long)]
    pub host_only: bool,
    /// Kernel(s) for the VM stage [default: all].
    #[arg(long, value_enum)]
    pub kernel: Option<vm::KernelChoice>,
    /// Filter (and other libtest arguments) passed to the integration test binaries.
    #[arg(last = true)]
    pub filter: Vec<String>,
}

/// Whether the built agent has a `bench` subcommand yet.
fn agent_has_bench(agent: &Path) -> bool {
    util::probe_output(Command::new(agent).args(["bench", "--help"])).is_some()
}

/// The VM kernels when `--kernel` is not given: all three (6.1, 6.12, 6.18), one VM after the
/// other, about 26 minutes of emulation on two cores (CI after issue 17: 6.1 469 s, 6.12 434 s,
/// 6.18 about 650 s with the files only it runs), the larger part of CI's time. `--kernel 6.12`
/// boots one.
fn default_kernels() -> vm::KernelChoice {
    vm::KernelChoice::All
}

/// Test files whose code paths do not depend on the kernel's version: a Kubernetes API client
/// against a stand-in server (`kube_api`), the kubelet's configuration file (`node_budget`),
/// the container runtimes and packages (`runtimes`, `dist`: they skip in every VM), and the
/// benchmark's smoke test (`bench`: the same cgroup v2 interfaces as the rescue tests, which
/// the older kernels still run; about 100 s per VM). They run on the host and in the newest
/// kernel's VM; the older kernels' VMs (6.1, 6.12) leave them out, which keeps CI's emulated
/// stages within its time (each file costs 40-100 s per VM there). So does the right-sizing
/// test (`rightsize`: a 40 s hold under emulation), whose v2 path (`memory.reclaim` before a
/// lowering, 5.19+) the newest kernel runs; the older ones run the same decider through the
/// rescue and scale-down tests of `exec`. (Its 1.5x and 1.3x bounds need the early-warning
/// tracepoint, which 6.1 and 6.12 lack: there every raise answers reclaim and doubles, by
/// design, and the test skips, saying so; measured in the README's architecture section.)
const NEWEST_VM_ONLY: [&str; 6] = [
    "kube_api",
    "node_budget",
    "runtimes",
    "dist",
    "bench",
    "rightsize",
];

/// The test binaries a kernel's VM runs: all on the newest kernel, all but
/// [`NEWEST_VM_ONLY`] on the older ones.
fn vm_executables(
    kernel: &vm::Kernel,
    executables: &[std::path::PathBuf],
) -> Vec<std::path::PathBuf> {
    let newest = vm::KERNELS.last().is_some_and(|k| k.name == kernel.name);
    executables
        .iter()
        .filter(|e| newest || !NEWEST_VM_ONLY.iter().any(|n| is_test_binary(e, n)))
        .cloned()
        .collect()
}

/// Whether `exe` is cargo's binary of the integration test `name` (`<name>-<hash>`).
fn is_test_binary(exe: &std::path::Path, name: &str) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit_once('-'))
        .is_some_and(|(stem, hash)| stem == name && hash.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The packages stage: dist (the .deb and the image context), then the dist test binary with
/// `SCALER_DIST_DIR` and kubernetes-validate's virtual environment on PATH.
fn packages_stage(
    agent: &Path,
    executables: &[std::path::PathBuf],
    filter: &[String],
    counts: &mut crate::report::Counts,
) -> Result<Outcome> {
    let Some(exe) = executables.iter().find(|e| {
        e.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("dist-"))
    }) else {
        return Ok(Outcome::Skipped("scaler-tests has no `dist` test".into()));
    };
    setup::ensure_dist()?;
    let out = dist::dist(&dist::Options { no_image: true })?;
    let mut cmd = cargo::test_command(exe, agent, filter);
    let mut path = std::ffi::OsString::from(setup::dist_venv().join("bin"));
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    cmd.env("SCALER_DIST_DIR", dist::dist_dir())
        .env("PATH", path);
    println!("packages: {}", out.deb.display());
    run_counted(&mut cmd, counts)
}

/// `cargo xtask test`.
pub fn test(opts: &Options) -> Result<()> {
    let vm_wanted = !(opts.no_vm || opts.host_only);
    let mut report = Report::default();
    let total = Instant::now();

    let setup_ok = report.stage("setup check", |_| {
        setup::ensure(vm_wanted)?;
        // The root tests validate JSON output with check-jsonschema, from the packages
        // stage's virtual environment.
        setup::ensure_dist()?;
        // ... and the metrics and the example alerts with promtool.
        setup::ensure_test_tools()?;
        Ok(Outcome::Passed)
    });
    if !setup_ok {
        report.print();
        anyhow::bail!("the toolchain could not be installed");
    }

    report.stage("unit tests (cargo test)", |counts| {
        let mut cmd = util::cargo();
        cmd.args(["test", "--profile", cargo::PROFILE]);
        run_counted(&mut cmd, counts)
    });

    // ---- fuzz stage (added by the hardening work, issue 8): every cargo-fuzz target for a
    // bounded time (FUZZ_SECONDS, default 20 s each) through fuzz/run.sh, which picks a
    // nightly-capable compiler and installs cargo-fuzz when it is missing. Its instrumented
    // build (another compiler and flags than the workspace's: nothing shared with target/)
    // goes to the user's cache unless FUZZ_TARGET_DIR says otherwise: from a fresh clone it
    // took 8 of the stage's 9.5 minutes in CI, and only the scaler crate changes between runs.
    report.stage("fuzz (bounded)", |_| {
        let mut cmd = Command::new("bash");
        cmd.arg(util::workspace_root().join("fuzz/run.sh"))
            .env("PATH", util::path_with_cargo_bin());
        if std::env::var_os("FUZZ_TARGET_DIR").is_none() {
            cmd.env("FUZZ_TARGET_DIR", fuzz_target_dir());
        }
        let status = util::run_status(&mut cmd)?;
        Ok(if status.success() {
            Outcome::Passed
        } else {
            Outcome::Failed(format!(
                "fuzz/run.sh exited with {status} (crash inputs under fuzz/artifacts/)"
            ))
        })
    });

    let mut agent = None;
    let mut executables = Vec::new();
    let built = report.stage("build (agent + tests)", |_| {
        agent = Some(cargo::build_agent()?);
        executables = cargo::build_integration_tests()?;
        println!("integration test binaries: {}", executables.len());
        Ok(Outcome::Passed)
    });

    match (&agent, built) {
        (Some(agent), true) => {
            report.stage("integration tests (host)", |counts| {
                if executables.is_empty() {
                    return Ok(Outcome::Skipped("scaler-tests has no test targets".into()));
                }
                run_host_integration(&executables, agent, &opts.filter, counts)
            });
            report.stage("packages (.deb, image, manifests)", |counts| {
                packages_stage(agent, &executables, &opts.filter, counts)
            });
            if vm_wanted {
                let choice = opts.kernel.unwrap_or_else(default_kernels);
                for kernel in choice.kernels() {
                    let name = format!("integration tests (VM {})", kernel.name);
                    report.stage(&name, |counts| {
                        if executables.is_empty() {
                            return Ok(Outcome::Skipped("scaler-tests has no test targets".into()));
                        }
                        let exes = vm_executables(kernel, &executables);
                        vm::run_tests_in_vm(kernel, &exes, agent, &opts.filter, counts)
                    });
                }
            } else {
                report.skip("integration tests (VM)", "--no-vm/--host-only");
            }
            // Hook for issue 5: the benchmark's smoke test, once `scaler bench` exists.
            if opts.host_only {
                report.skip("scaler bench --quick", "--host-only");
            } else if agent_has_bench(agent) {
                report.stage("scaler bench --quick", |_| {
                    let json = std::env::temp_dir()
                        .join(format!("scaler-bench-{}.json", std::process::id()));
                    let mut cmd = Command::new(agent);
                    cmd.args(["bench", "--quick", "--json"]).arg(&json);
                    let status = util::run_status(&mut cmd)?;
                    if !status.success() {
                        return Ok(Outcome::Failed(format!(
                            "scaler bench --quick exited with {status}"
                        )));
                    }
                    let text = std::fs::read_to_string(&json)?;
                    let _ = std::fs::remove_file(&json);
                    serde_json::from_str::<serde_json::Value>(&text)
                        .map_err(|e| anyhow::anyhow!("bench JSON does not parse: {e}"))?;
                    Ok(Outcome::Passed)
                });
            } else {
                report.skip(
                    "scaler bench --quick",
                    "the agent has no `bench` command yet",
                );
            }
        }
        _ => report.skip("integration tests", "the build failed"),
    }

    report.print();
    println!("(total {:.0}s)", total.elapsed().as_secs_f64());
    if !report.success() {
        anyhow::bail!("test suite failed");
    }
    Ok(())
}

#[cfg(test)]
mod vm_selection_tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn older_kernels_leave_out_only_the_kernel_independent_files() {
        let exes: Vec<PathBuf> = [
            "/t/agent-0123abcd",
            "/t/kube_api-89ef0123",
            "/t/node_budget-deadbeef",
            "/t/runtimes-00ff00ff",
            "/t/dist-0a0b0c0d",
            "/t/bench-feedbeef",
            "/t/kubernetes-11223344",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let names = |k: &vm::Kernel| -> Vec<String> {
            vm_executables(k, &exes)
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        let newest = vm::KERNELS.last().unwrap();
        assert_eq!(
            names(newest).len(),
            exes.len(),
            "the newest kernel runs every file"
        );
        for k in &vm::KERNELS[..vm::KERNELS.len() - 1] {
            assert_eq!(
                names(k),
                ["agent-0123abcd", "kubernetes-11223344"],
                "kernel {}",
                k.name
            );
        }
        assert!(!is_test_binary(
            std::path::Path::new("/t/kube_api-xyz"),
            "kube_api"
        ));
    }
}
