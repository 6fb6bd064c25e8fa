//! `cargo xtask vm-test`: runs the root integration tests on real cgroup v2 kernels under
//! qemu (software emulation), the way aya runs its integration tests in VMs.
//!
//! Per kernel: fetch the Debian kernel package through a private apt configuration (the
//! system's apt state is untouched), extract the ELF `vmlinux` and the 9p modules into a cache
//! dir, build a busybox initramfs whose init mounts the host `/` read-only over 9p (plus a
//! writable work dir), mounts cgroup v2 with the memory and cpu controllers, chroots into the
//! host view and runs the test binaries. The exit status and output come back through files in
//! the work dir; the guest console is streamed to the terminal and kept in a log.

mod initramfs;
mod kernel;
mod qemu;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    cargo,
    report::{Counts, Outcome, Report},
    setup,
};

pub use kernel::{Kernel, KERNELS};

/// Which kernel(s) to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// Debian bookworm's 6.1.
    #[value(name = "6.1")]
    V6_1,
    /// Debian trixie's 6.12.
    #[value(name = "6.12")]
    V6_12,
    /// Debian trixie-backports' 6.18.
    #[value(name = "6.18")]
    V6_18,
    /// All three, one after the other.
    All,
}

impl KernelChoice {
    /// The kernel `cargo xtask test` boots by default.
    pub const DEFAULT: KernelChoice = KernelChoice::V6_12;

    /// The kernels this choice stands for.
    pub fn kernels(self) -> Vec<&'static Kernel> {
        let pick = |name: &str| {
            kernel::KERNELS
                .iter()
                .find(|k| k.name == name)
                .expect("known kernel")
        };
        match self {
            Self::V6_1 => vec![pick("6.1")],
            Self::V6_12 => vec![pick("6.12")],
            Self::V6_18 => vec![pick("6.18")],
            Self::All => kernel::KERNELS.iter().collect(),
        }
    }
}

/// Options of `cargo xtask vm-test`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Kernel(s) to boot.
    #[arg(long, value_enum, default_value_t = KernelChoice::DEFAULT)]
    pub kernel: KernelChoice,
    /// Look up the newest kernel package again instead of using the cached one.
    #[arg(long)]
    pub refresh: bool,
    /// Run this shell command in the guest instead of the integration tests (debugging).
    #[arg(long)]
    pub cmd: Option<String>,
    /// Filter (and other libtest arguments) passed to the integration test binaries.
    #[arg(last = true)]
    pub filter: Vec<String>,
}

/// Per-VM settings (environment overrides: SCALER_VM_TIMEOUT seconds, SCALER_VM_MEMORY MiB,
/// SCALER_VM_CPUS, SCALER_VM_DISK MiB, SCALER_VM_TCG_THREAD=multi|single, SCALER_VM_APPEND extra
/// kernel command-line words).
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kill the VM after this long: a guard against a hung guest, not a budget. 15 minutes:
    /// the newest kernel's VM runs every test file, about 11 minutes under emulation on two
    /// cores (650 s of tests measured on 6.18 after issue 17; the 10 minutes before cut it
    /// off in CI), the older kernels' about 8.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// CPUs.
    pub cpus: u32,
    /// Size of the scratch disk (the guest's /tmp) in MiB; sparse on the host.
    pub disk_mib: u32,
    /// Run all vCPUs on one host thread (`-accel tcg,thread=single`) instead of one host thread
    /// per vCPU (`thread=multi`, the default). Multi-threaded TCG is what lets the workload and
    /// the scaler's engine run at the same time, which the rescue and CPU tests need (under
    /// single-threaded TCG they skip). It oopsed 6.12 guests (`int3` in `enqueue_entity`, then
    /// in `ttwu_do_activate`: a vCPU ran a stale `int3` of the kernel's live text patching while
    /// BPF programs attached to scheduler tracepoints), so under it the guest keeps the agent's
    /// tracepoints enabled for the whole boot and attaching patches no kernel text (see
    /// [`initramfs::pinned_tracepoints`]); the console is checked for an oops after every run.
    pub single_thread: bool,
    /// Extra kernel command-line words (`SCALER_VM_APPEND`).
    pub append: String,
}

impl VmConfig {
    /// Defaults, overridable from the environment.
    pub fn from_env() -> Self {
        let num = |var: &str, default: u64| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            timeout: Duration::from_secs(num("SCALER_VM_TIMEOUT", 15 * 60)),
            memory_mib: num("SCALER_VM_MEMORY", 2048) as u32,
            cpus: num("SCALER_VM_CPUS", 2) as u32,
            disk_mib: num("SCALER_VM_DISK", 4096) as u32,
            single_thread: std::env::var("SCALER_VM_TCG_THREAD").is_ok_and(|v| v == "single"),
            append: std::env::var("SCALER_VM_APPEND").unwrap_or_default(),
        }
    }
}

/// The cache root: `$SCALER_VM_CACHE`, else `$XDG_CACHE_HOME/scaler-vm`, else
/// `~/.cache/scaler-vm` (`/var/tmp/scaler-vm` without HOME). Never inside the repository.
pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SCALER_VM_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("scaler-vm"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache/scaler-vm")),
        None => Ok(PathBuf::from("/var/tmp/scaler-vm")),
    }
}

/// What runs inside the guest.
#[derive(Debug, Clone)]
pub enum GuestCommand {
    /// The integration test executables, with the agent binary and a libtest filter.
    Tests {
        executables: Vec<PathBuf>,
        agent: PathBuf,
        filter: Vec<String>,
    },
    /// A shell command.
    Shell(String),
}

/// The result of one VM run.
#[derive(Debug)]
pub struct VmResult {
    /// Exit status of the guest command (`None` if the VM died or timed out before writing it).
    pub status: Option<i32>,
    /// libtest counts parsed from the guest's test output.
    pub counts: Counts,
    /// The console log on the host.
    pub console_log: PathBuf,
    /// Time from starting qemu until it exited.
    pub elapsed: Duration,
    /// Why the VM did not finish, if it did not.
    pub problem: Option<String>,
}

/// Prepares `kernel` and boots it with `command`; used by `test` and `vm-test`.
pub fn run_in_vm(kernel: &Kernel, command: &GuestCommand, refresh: bool) -> Result<VmResult> {
    if !crate::util::is_root() {
        anyhow::bail!(
            "the VM tests need root: qemu shares the host's / with the guest (which runs the \
             tests as root) and the kernel packages are unpacked with their owners"
        );
    }
    let cache = cache_root()?;
    let prepared = kernel::prepare(kernel, &cache, refresh)
        .with_context(|| format!("preparing kernel {}", kernel.name))?;
    qemu::run(&prepared, command, &cache, &VmConfig::from_env())
}

/// The VM stage of `cargo xtask test`: the integration tests in one kernel.
pub fn run_tests_in_vm(
    kernel: &Kernel,
    executables: &[PathBuf],
    agent: &Path,
    filter: &[String],
    counts: &mut Counts,
) -> Result<Outcome> {
    let command = GuestCommand::Tests {
        executables: executables.to_vec(),
        agent: agent.to_path_buf(),
        filter: filter.to_vec(),
    };
    let result = run_in_vm(kernel, &command, false)?;
    *counts = counts.plus(result.counts);
    Ok(outcome_of(&result))
}

fn outcome_of(result: &VmResult) -> Outcome {
    match (&result.problem, result.status) {
        (Some(problem), _) => Outcome::Failed(format!(
            "{problem} (console log: {})",
            result.console_log.display()
        )),
        (None, Some(0)) => Outcome::Passed,
        (None, Some(code)) => Outcome::Failed(format!(
            "guest command exited with {code} (console log: {})",
            result.console_log.display()
        )),
        (None, None) => Outcome::Failed(format!(
            "the guest wrote no exit status (console log: {})",
            result.console_log.display()
        )),
    }
}

/// `cargo xtask vm-test`.
pub fn vm_test(opts: &Options) -> Result<()> {
    let start = Instant::now();
    setup::ensure(true)?;
    let command = match &opts.cmd {
        Some(cmd) => GuestCommand::Shell(cmd.clone()),
        None => {
            let agent = cargo::build_agent()?;
            let executables = cargo::build_integration_tests()?;
            if executables.is_empty() {
                anyhow::bail!("scaler-tests has no test targets to run");
            }
            GuestCommand::Tests {
                executables,
                agent,
                filter: opts.filter.clone(),
            }
        }
    };
    let mut report = Report::default();
    for kernel in opts.kernel.kernels() {
        report.stage(&format!("VM {}", kernel.name), |counts| {
            let result = run_in_vm(kernel, &command, opts.refresh)?;
            println!(
                "vm-test: kernel {} finished in {:.1}s, status {:?}",
                kernel.name,
                result.elapsed.as_secs_f64(),
                result.status
            );
            *counts = counts.plus(result.counts);
            Ok(outcome_of(&result))
        });
    }
    report.print();
    println!("(total {:.0}s)", start.elapsed().as_secs_f64());
    if !report.success() {
        anyhow::bail!("vm-test failed");
    }
    Ok(())
}
