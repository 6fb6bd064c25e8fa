//! `scaler bench`: the eBPF scaler against the ways cgroups are scaled today, on identical
//! workloads, in one run.
//!
//! Competitors ([`CompetitorId`]): a static limit; polling at 1 s and 100 ms; PSI triggers at the
//! smallest window the kernel accepts for this process; the cgroup v1 usage-threshold eventfd
//! (v1) or `memory.events` notification (v2); and the eBPF scaler. Every in-process competitor
//! applies the same scale-up rule ([`rule`]) through the same pre-opened limit file, and every
//! run starts from the same limits in a fresh cgroup. How onset and reaction are measured is
//! described in [`observer`]; the JSON output in `docs/bench-json.md`.
//!
//! Entry points for the CLI: [`BenchArgs`] (flatten it into the `bench` subcommand) and
//! [`run`].

pub mod cgroups;
pub mod competitors;
pub mod ebpf;
pub mod kobserver;
pub mod observer;
pub mod real;
pub mod report;
pub mod rule;
pub mod runner;
pub mod stats;
pub mod sys;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use scaler::actuator::ActuatorError;
use scaler::cgroupfs::{CgroupError, CgroupVersion};
use scaler::clock::monotonic_ns;
use serde::Serialize;

pub use competitors::{CompetitorId, Resource};
pub use real::Suite;
pub use runner::{RunRecord, WorkloadSpec};
pub use stats::CaseSummary;

use cgroups::{BenchRoot, Hierarchies};
use competitors::{causes, PsiUnavailable};
use runner::BenchEnv;
use stats::Availability;

/// Errors of the benchmark. A message leaves its `#[source]` out: [`causes`] (or the
/// command's error printing) adds the chain after it.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A system call on no file (eventfd, poll, thread spawn, waitpid) failed.
    #[error("{call}")]
    Os {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot create the benchmark's cgroups (the benchmark creates its cgroups under its own \
         cgroup, see /proc/self/cgroup, and must run as root)"
    )]
    CreateCgroup(#[source] CgroupError),
    /// The project's cgroupfs layer.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The project's actuator.
    #[error(transparent)]
    Actuator(#[from] ActuatorError),
    #[error("unexpected contents of {path}: {text:?}")]
    Parse { path: PathBuf, text: String },
    #[error("competitor {competitor} does not apply to {what}")]
    NotApplicable {
        competitor: &'static str,
        what: &'static str,
    },
    /// A competitor (or the kernel observer) could not start or run a case.
    #[error("competitor {competitor} could not run")]
    CompetitorFailed {
        competitor: &'static str,
        #[source]
        source: Box<BenchError>,
    },
    #[error("did not become ready within {} s", .0.as_secs())]
    NotReady(Duration),
    #[error("{mechanism} exist only on {version}")]
    WrongVersion {
        mechanism: &'static str,
        version: CgroupVersion,
    },
    #[error("no unified cgroup with PSI files for this run")]
    NoUnifiedCgroup,
    #[error("PSI trigger")]
    PsiTrigger(#[source] CgroupError),
    #[error("PSI trigger: POLLERR (cgroup gone?)")]
    PsiPollErr,
    /// Why the eBPF scaler (`scaler exec`) cannot run a case.
    #[error(transparent)]
    Exec(#[from] ebpf::ExecUnsupported),
    /// The kernel-side onset observer.
    #[error(transparent)]
    KernelObserver(#[from] kobserver::KernelObserverError),
    #[error("cannot read the exec summary {path}")]
    ReadSummary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the exec summary {path} is not valid JSON")]
    ParseSummary {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("this process has no {0} cgroup controller (see /proc/self/cgroup)")]
    NoController(&'static str),
    #[error("cannot run {exe}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {0} thread panicked")]
    ThreadPanicked(&'static str),
    #[error("cannot serialize the results")]
    Json(#[source] serde_json::Error),
    #[error("unknown {kind} `{name}`; known: {known}")]
    UnknownName {
        kind: &'static str,
        name: String,
        known: String,
    },
}

/// Command-line arguments of `scaler bench` (flatten into the subcommand).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct BenchArgs {
    /// Which workloads: the project's own shapes (synthetic) or real programs (real:
    /// stress-ng, redis, xz, sort, numpy, make; see docs/bench-json.md).
    #[arg(long, value_enum, default_value_t = Suite::Synthetic)]
    pub suite: Suite,
    /// Small sizes, one repeat, short CPU bursts: finishes in under two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Runs of each (workload, competitor) case [default: 5; 1 with --quick or --suite real].
    #[arg(long)]
    pub repeat: Option<u32>,
    /// Write every raw measurement as JSON to FILE (schema: docs/bench-json.md).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a Markdown report with SVG plots into DIR.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Only these workloads (comma-separated: steps,spike,ramp,threads,procs,pagecache,cpu;
    /// real suite: stress-vm,redis,xz,sort,numpy-steps,numpy-spike,make).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Only these competitors (comma-separated: static,poll-1s,poll-100ms,psi,v1-threshold,
    /// v2-memory-events,ebpf).
    #[arg(long, value_delimiter = ',')]
    pub competitors: Vec<String>,
    /// Starting memory limit of every memory run.
    #[arg(long, default_value = "64M", value_parser = scaler::units::parse_size)]
    pub memory: u64,
    /// Highest memory limit any competitor may set.
    #[arg(long, default_value = "2G", value_parser = scaler::units::parse_size)]
    pub memory_max: u64,
    /// Early-warning headroom below the limit (threshold eventfd, polling, onset mark).
    #[arg(long, default_value = "16M", value_parser = scaler::units::parse_size)]
    pub headroom: u64,
    /// Sampling interval of usage and limit (timelines, sampler onsets).
    #[arg(long, default_value = "1ms", value_parser = scaler::units::parse_duration)]
    pub sample_interval: Duration,
    /// A run whose work is still going after this is ended (and recorded as timed out)
    /// [default: 60s (20s at most with --quick); real suite: 180s].
    #[arg(long, value_parser = scaler::units::parse_duration)]
    pub timeout: Option<Duration>,
    /// Quiet time before the eBPF scaler lowers a limit (`scaler exec --cooldown`)
    /// [default: the decider's, 30s].
    #[arg(long, value_parser = scaler::units::parse_duration)]
    pub cooldown: Option<Duration>,
    /// Real suite: the longest hold after a workload's work, waiting for the eBPF scaler to
    /// right-size the limit [default: the cooldown + 45s].
    #[arg(long, value_parser = scaler::units::parse_duration)]
    pub hold: Option<Duration>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// The binary providing `workload` and `exec` [default: this executable].
    #[arg(long, hide = true)]
    pub exe: Option<PathBuf>,
}

/// Resolved options of a benchmark run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct BenchOptions {
    /// `--suite`.
    pub suite: Suite,
    /// `--quick`.
    pub quick: bool,
    /// Repeats per case.
    pub repeat: u32,
    /// JSON output file.
    pub json: Option<PathBuf>,
    /// Report directory.
    pub report: Option<PathBuf>,
    /// Workload filter (empty: all).
    pub workloads: Vec<String>,
    /// Competitor filter (empty: all).
    pub competitors: Vec<String>,
    /// Starting memory limit.
    pub memory: u64,
    /// Maximum memory limit.
    pub memory_max: u64,
    /// Early-warning headroom.
    pub headroom: u64,
    /// Sampling interval.
    pub sample_interval: Duration,
    /// Per-run timeout.
    pub timeout: Duration,
    /// `--cooldown` passed to `scaler exec` (`None`: its default).
    pub cooldown: Option<Duration>,
    /// The longest hold phase (real suite).
    pub hold: Duration,
    /// Show a progress bar.
    pub progress: bool,
    /// The binary providing `workload` and `exec`.
    pub exe: Option<PathBuf>,
}

impl From<BenchArgs> for BenchOptions {
    fn from(a: BenchArgs) -> Self {
        let real = a.suite == Suite::Real;
        let cooldown = a.cooldown.unwrap_or(Duration::from_nanos(
            scaler::decider::memory::MemoryPolicy::default().cooldown_ns,
        ));
        Self {
            suite: a.suite,
            quick: a.quick,
            repeat: a
                .repeat
                .unwrap_or(if a.quick || real { 1 } else { 5 })
                .max(1),
            json: a.json,
            report: a.report,
            workloads: a.workloads,
            competitors: a.competitors,
            memory: a.memory,
            memory_max: a.memory_max,
            headroom: a.headroom,
            sample_interval: a.sample_interval,
            timeout: match (real, a.quick) {
                (true, _) => a.timeout.unwrap_or(Duration::from_secs(180)),
                (false, true) => a
                    .timeout
                    .unwrap_or(Duration::from_secs(60))
                    .min(Duration::from_secs(20)),
                (false, false) => a.timeout.unwrap_or(Duration::from_secs(60)),
            },
            cooldown: a.cooldown,
            hold: a.hold.unwrap_or(cooldown + real::HOLD_BEYOND_COOLDOWN),
            progress: !a.no_progress,
            exe: a.exe,
        }
    }
}

/// CFS period of the CPU runs, µs.
const CPU_PERIOD_US: u64 = 100_000;

/// The workloads of a run (full or `--quick`) of the suite asked for.
pub fn workloads(o: &BenchOptions) -> Vec<WorkloadSpec> {
    match o.suite {
        Suite::Synthetic => synthetic_workloads(o),
        Suite::Real => real::workloads(o),
    }
}

/// The synthetic suite's workloads.
fn synthetic_workloads(o: &BenchOptions) -> Vec<WorkloadSpec> {
    let mem = |id: &str, args: &str| WorkloadSpec {
        id: id.to_owned(),
        resource: Resource::Memory,
        args: args.split_whitespace().map(str::to_owned).collect(),
        start: o.memory,
        max: o.memory_max,
        headroom: o.headroom,
        period_us: CPU_PERIOD_US,
        real: None,
    };
    let cpu = |args: &str| WorkloadSpec {
        id: "cpu".to_owned(),
        resource: Resource::Cpu,
        args: args.split_whitespace().map(str::to_owned).collect(),
        start: CPU_PERIOD_US / 2,
        max: 2 * CPU_PERIOD_US,
        headroom: 0,
        period_us: CPU_PERIOD_US,
        real: None,
    };
    let all = if o.quick {
        vec![
            mem("steps", "steps --total 256M --step 8M --interval 10ms"),
            mem("spike", "spike --size 200M"),
            mem("ramp", "ramp --total 128M --rate 128M/s"),
            mem(
                "threads",
                "steps --total 256M --step 8M --interval 10ms --threads 4",
            ),
            mem(
                "procs",
                "procs --procs 4 --total 256M --step 8M --interval 10ms",
            ),
            mem("pagecache", "pagecache --file {file} --size 128M"),
            cpu("cpu --busy-threads 2 --burst 500ms --idle 250ms --cycles 2"),
        ]
    } else {
        vec![
            mem("steps", "steps --total 256M --step 8M --interval 10ms"),
            mem("spike", "spike --size 200M"),
            mem("ramp", "ramp --total 256M --rate 20M/s"),
            mem(
                "threads",
                "steps --total 256M --step 8M --interval 10ms --threads 4",
            ),
            mem(
                "procs",
                "procs --procs 4 --total 256M --step 8M --interval 10ms",
            ),
            mem("pagecache", "pagecache --file {file} --size 256M"),
            cpu("cpu --busy-threads 2 --burst 2s --idle 1s --cycles 3"),
        ]
    };
    all.into_iter()
        .filter(|w| o.workloads.is_empty() || o.workloads.contains(&w.id))
        .collect()
}

/// The workload whose first run per competitor records a usage/limit timeline.
pub const TIMELINE_WORKLOAD: &str = "steps";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Whether SIGINT/SIGTERM arrived (the benchmark then stops after cleaning up).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// A scratch directory on a disk-backed file system, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Result<Self, BenchError> {
        let mut base = std::env::temp_dir();
        if is_tmpfs(&base) {
            // Page cache on tmpfs is shmem: without swap it cannot be reclaimed, so the
            // page-cache workload would measure something else.
            base = PathBuf::from("/var/tmp");
        }
        let dir = base.join(format!(
            "scaler-bench-{}-{}",
            std::process::id(),
            monotonic_ns()
        ));
        std::fs::create_dir(&dir).map_err(|source| BenchError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// `f_type`'s integer type differs between architectures.
#[allow(clippy::unnecessary_cast)]
fn is_tmpfs(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == libc::TMPFS_MAGIC as i64
    }
}

fn select_competitors(o: &BenchOptions) -> Result<Vec<CompetitorId>, BenchError> {
    if o.competitors.is_empty() {
        return Ok(CompetitorId::ALL.to_vec());
    }
    o.competitors
        .iter()
        .map(|n| {
            CompetitorId::from_name(n).ok_or_else(|| BenchError::UnknownName {
                kind: "competitor",
                name: n.clone(),
                known: CompetitorId::ALL.map(CompetitorId::name).join(", "),
            })
        })
        .collect()
}

/// Whether competitor `c` can run workloads on `r` in `env`, and why not.
fn availability(env: &BenchEnv, c: CompetitorId, r: Resource) -> Availability {
    let no = |reason: String| Availability {
        available: false,
        reason: Some(reason),
    };
    let yes = Availability {
        available: true,
        reason: None,
    };
    let controller = match r {
        Resource::Memory => env.hierarchies.memory_version(),
        Resource::Cpu => env.hierarchies.cpu_version(),
    };
    let Some(version) = controller else {
        return no(format!(
            "this process has no {} controller",
            match r {
                Resource::Memory => "memory",
                Resource::Cpu => "cpu",
            }
        ));
    };
    match (c, r, version) {
        (CompetitorId::Static | CompetitorId::Poll1s | CompetitorId::Poll100ms, _, _) => yes,
        (CompetitorId::Psi, _, _) => match (&env.hierarchies.unified, &env.psi_window_us) {
            (None, _) => no("no cgroup v2 (unified) hierarchy, so no PSI files".into()),
            (_, Err(e)) => no(causes(e)),
            (Some(_), Ok(_)) => yes,
        },
        (CompetitorId::V1Threshold | CompetitorId::V2MemoryEvents, Resource::Cpu, _) => {
            no("a memory-only mechanism".into())
        }
        (CompetitorId::V1Threshold, Resource::Memory, CgroupVersion::V1) => yes,
        (CompetitorId::V1Threshold, Resource::Memory, CgroupVersion::V2) => {
            no("usage threshold eventfds exist only on cgroup v1".into())
        }
        (CompetitorId::V2MemoryEvents, Resource::Memory, CgroupVersion::V2) => yes,
        (CompetitorId::V2MemoryEvents, Resource::Memory, CgroupVersion::V1) => {
            no("n/a on cgroup v1: memory.events and memory.high exist only on cgroup v2".into())
        }
        (CompetitorId::Ebpf, Resource::Memory, _) => match &env.exec.memory {
            Ok(()) => yes,
            Err(e) => no(causes(e)),
        },
        (CompetitorId::Ebpf, Resource::Cpu, _) => match &env.exec.cpu {
            Ok(()) => yes,
            Err(e) => no(causes(e)),
        },
    }
}

fn host_info(env: &BenchEnv) -> report::HostInfo {
    // SAFETY: uname into a zeroed struct.
    let kernel = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) == 0 {
            std::ffi::CStr::from_ptr(u.release.as_ptr())
                .to_string_lossy()
                .into_owned()
        } else {
            "unknown".into()
        }
    };
    report::HostInfo {
        kernel,
        cpus: u64::from(env.node.nproc),
        memory_bytes: env.node.mem_total,
        memory_cgroup: env.hierarchies.memory_version(),
        cpu_cgroup: env.hierarchies.cpu_version(),
        unified_psi: env.hierarchies.unified.is_some(),
        psi_window_us: env.psi_window_us.clone(),
    }
}

/// Runs the benchmark: every selected competitor on every selected workload, `repeat` times,
/// interleaved; prints the table; writes `--json` and `--report` if asked.
///
/// Returns failure if no run could be carried out, 130 if interrupted.
pub fn run(opts: BenchOptions) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let started = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let competitors = select_competitors(&opts)?;
    let specs = workloads(&opts);
    if specs.is_empty() {
        anyhow::bail!(
            "no workload selected; known: {}",
            match opts.suite {
                Suite::Synthetic => "steps, spike, ramp, threads, procs, pagecache, cpu",
                Suite::Real => real::NAMES,
            }
        );
    }
    // A missing program skips its workloads, loudly, not the suite.
    let (specs, skipped) = real::check_installed(specs);
    for s in &skipped {
        eprintln!(
            "scaler bench: skipping workload {}: {}",
            s.workload, s.reason
        );
    }
    if !skipped.is_empty() {
        eprintln!(
            "scaler bench: the real suite's programs: {}",
            real::INSTALL_ALL
        );
    }
    if specs.is_empty() {
        anyhow::bail!("every selected workload was skipped: its programs are missing (see above)");
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    let exe = match &opts.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().context("cannot find this executable")?,
    };
    let hierarchies = Hierarchies::discover()?;
    let root = BenchRoot::create(&hierarchies)?;
    let psi_window_us = match &hierarchies.unified {
        None => Err(PsiUnavailable::NoUnifiedHierarchy),
        Some(_) => {
            // Probe on a cgroup of our own (the bench root in the unified hierarchy).
            let probe_cg = root.run_cgroup("psi-probe")?;
            match &probe_cg.unified {
                Some(u) if u.file("memory.pressure").exists() => competitors::probe_psi_window(u),
                Some(u) => Err(PsiUnavailable::NoPressureFile {
                    path: u.file("memory.pressure"),
                }),
                None => Err(PsiUnavailable::NoUnifiedCgroup),
            }
        }
    };
    let scratch = Scratch::create()?;
    real::prepare(&specs, &scratch.0).context("generating the real workloads' input")?;
    let node = scaler::config::NodeInfo::detect().context("reading /proc/meminfo")?;
    let memory_budget = scaler::config::Config::default().memory_budget(&node);
    let cpu_budget_cores = f64::from(node.nproc);
    let kobserver = if competitors.iter().any(|c| *c != CompetitorId::Ebpf)
        && specs.iter().any(|w| w.resource == Resource::Memory)
    {
        kobserver::KernelObserver::start()
    } else {
        Err(kobserver::KernelObserverError::NotNeeded)
    };
    if let Err(e) = &kobserver {
        eprintln!(
            "scaler bench: no kernel observer ({}); pressure onset falls back to a v1 \
             threshold eventfd observer or the 1 ms sampler",
            causes(e)
        );
    }
    let env = BenchEnv {
        node,
        kobserver,
        memory_budget,
        cpu_budget_cores,
        exec: ebpf::probe(&exe),
        hierarchies,
        root,
        exe,
        scratch: scratch.0.clone(),
        psi_window_us,
        sample_interval: opts.sample_interval,
        timeout: opts.timeout,
        cooldown: opts.cooldown,
        hold: opts.hold,
    };

    let mut plan = Vec::new();
    for rep in 0..opts.repeat {
        for w in &specs {
            let mut cs: Vec<CompetitorId> = competitors
                .iter()
                .copied()
                .filter(|&c| availability(&env, c, w.resource).available)
                .filter(|c| w.resource == Resource::Memory || c.does_cpu())
                .collect();
            if !cs.is_empty() {
                let k = rep as usize % cs.len();
                cs.rotate_left(k);
            }
            for c in cs {
                plan.push((rep, w, c));
            }
        }
    }
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(plan.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut runs = Vec::with_capacity(plan.len());
    let mut timeline_done = std::collections::HashSet::new();
    for (rep, w, c) in plan {
        if interrupted() {
            break;
        }
        bar.set_message(format!("{} / {} #{}", w.id, c.name(), rep + 1));
        // The synthetic suite plots one workload; the real suite every workload's first run of
        // each competitor.
        let timeline = (w.id == TIMELINE_WORKLOAD || w.real.is_some())
            && timeline_done.insert((w.id.clone(), c));
        let rec = runner::run_one(&env, c, w, rep, timeline);
        if let Some(e) = &rec.error {
            bar.println(format!("{} / {} #{}: {e}", w.id, c.name(), rep + 1));
        }
        runs.push(rec);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let avail = |c: CompetitorId, r: Resource| availability(&env, c, r);
    let summary = stats::summarize(&specs, &competitors, avail, &runs);
    match opts.suite {
        Suite::Synthetic => println!("{}", report::table(&summary, &specs, false)),
        Suite::Real => {
            println!("{}", report::real_table(&summary, false));
            for s in &skipped {
                println!("skipped {}: {}", s.workload, s.reason);
            }
        }
    }

    let doc = report::Document {
        schema_version: scaler::schema::SCHEMA_VERSION,
        schema: report::SCHEMA,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_unix_s,
        duration_s: started.elapsed().as_secs_f64(),
        host: host_info(&env),
        method: report::Method {
            onset: report::ONSET_TEXT,
            written: report::WRITTEN_TEXT,
            aggregation: report::AGGREGATION_TEXT,
            rule: format!(
                "the project's decider with scaler exec's policy: memory {:?}; CPU {:?}",
                rule::memory_policy(opts.memory_max, opts.headroom),
                rule::cpu_policy(2.0)
            ),
        },
        options: &opts,
        competitors: competitors
            .iter()
            .map(|&c| report::CompetitorInfo {
                name: c.name().into(),
                description: c.describe().into(),
                memory: availability(&env, c, Resource::Memory),
                cpu: if c.does_cpu() {
                    availability(&env, c, Resource::Cpu)
                } else {
                    Availability {
                        available: false,
                        reason: Some("a memory-only mechanism".into()),
                    }
                },
            })
            .collect(),
        workloads: &specs,
        skipped: &skipped,
        runs: &runs,
        summary: &summary,
    };
    if let Some(p) = &opts.json {
        report::write_json(p, &doc)?;
        eprintln!("raw measurements written to {}", p.display());
    }
    if let Some(d) = &opts.report {
        report::write_report(d, &doc, TIMELINE_WORKLOAD)?;
        eprintln!("report written to {}", d.join("report.md").display());
    }
    drop(env);
    drop(scratch);
    if interrupted() {
        return Ok(ExitCode::from(130));
    }
    if !runs.is_empty() && runs.iter().all(|r| r.error.is_some()) {
        anyhow::bail!("every benchmark run failed; see the errors above");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
impl BenchOptions {
    /// The options of a plain `scaler bench`.
    pub(crate) fn test_default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            b: BenchArgs,
        }
        Cli::try_parse_from(["b"]).unwrap().b.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        b: BenchArgs,
    }

    #[test]
    fn real_suite_options() {
        let o: BenchOptions =
            Cli::try_parse_from(["b", "--suite", "real", "--quick", "--cooldown", "2s"])
                .unwrap()
                .b
                .into();
        assert_eq!(o.suite, Suite::Real);
        assert_eq!(o.repeat, 1);
        assert_eq!(o.cooldown, Some(Duration::from_secs(2)));
        assert_eq!(o.hold, Duration::from_secs(47));
        assert_eq!(o.timeout, Duration::from_secs(180));
        let full: BenchOptions = Cli::try_parse_from(["b", "--suite", "real", "--hold", "5s"])
            .unwrap()
            .b
            .into();
        assert_eq!((full.repeat, full.cooldown), (1, None));
        assert_eq!(full.hold, Duration::from_secs(5));
        let default: BenchOptions = Cli::try_parse_from(["b", "--suite", "real"])
            .unwrap()
            .b
            .into();
        assert_eq!(
            default.hold,
            Duration::from_secs(75),
            "30 s cooldown + 45 s"
        );
        assert_eq!(workloads(&default).len(), 7);
        // The synthetic defaults are unchanged.
        let syn: BenchOptions = Cli::try_parse_from(["b"]).unwrap().b.into();
        assert_eq!(syn.suite, Suite::Synthetic);
        assert_eq!((syn.repeat, syn.timeout), (5, Duration::from_secs(60)));
        assert!(workloads(&syn).iter().all(|w| w.real.is_none()));
    }

    #[test]
    fn quick_defaults() {
        let o: BenchOptions = Cli::try_parse_from(["b", "--quick", "--json", "out.json"])
            .unwrap()
            .b
            .into();
        assert_eq!(o.repeat, 1);
        assert_eq!(o.memory, 64 << 20);
        assert_eq!(o.json.as_deref(), Some(Path::new("out.json")));
        assert!(o.timeout <= Duration::from_secs(20));
        let ws = workloads(&o);
        assert_eq!(
            ws.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            [
                "steps",
                "spike",
                "ramp",
                "threads",
                "procs",
                "pagecache",
                "cpu"
            ]
        );
        // Every workload's arguments parse as the `workload` subcommand does.
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            w: crate::workload::WorkloadArgs,
        }
        for w in &ws {
            let mut argv = vec!["w".to_owned()];
            argv.extend(w.args.iter().map(|a| a.replace("{file}", "/tmp/x")));
            W::try_parse_from(&argv).unwrap_or_else(|e| panic!("{}: {e}", w.id));
        }
    }

    #[test]
    fn error_lines_read_as_before() {
        let enoent = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let line = |e: BenchError| causes(&e);
        // The source is not in the message, once in the line.
        let io = BenchError::Io {
            path: PathBuf::from("/x/y.json"),
            source: enoent(),
        };
        assert_eq!(io.to_string(), "/x/y.json");
        assert_eq!(
            line(io),
            "/x/y.json: No such file or directory (os error 2)"
        );
        assert_eq!(
            line(BenchError::CompetitorFailed {
                competitor: "psi",
                source: Box::new(BenchError::NotReady(Duration::from_secs(10))),
            }),
            "competitor psi could not run: did not become ready within 10 s"
        );
        let no_exe = ebpf::ExecUnsupported::Run {
            exe: PathBuf::from("/nonexistent"),
            source: std::sync::Arc::new(enoent()),
        };
        assert_eq!(
            causes(&no_exe),
            "cannot run /nonexistent: No such file or directory (os error 2)"
        );
        assert_eq!(
            line(BenchError::CompetitorFailed {
                competitor: CompetitorId::Ebpf.name(),
                source: Box::new(no_exe.into()),
            }),
            "competitor ebpf could not run: cannot run /nonexistent: No such file or directory \
             (os error 2)"
        );
        assert_eq!(
            line(BenchError::WrongVersion {
                mechanism: "threshold eventfds",
                version: CgroupVersion::V1,
            }),
            "threshold eventfds exist only on cgroup v1"
        );
        assert_eq!(
            line(BenchError::Spawn {
                exe: PathBuf::from("/bin/x"),
                source: enoent(),
            }),
            "cannot run /bin/x: No such file or directory (os error 2)"
        );
        // A message that quotes its source (as some of the project's errors do) is not
        // followed by it again.
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Quoting(#[source] std::io::Error);
        assert_eq!(
            causes(&Quoting(enoent())),
            "outer: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn filters_and_names() {
        let o: BenchOptions = Cli::try_parse_from([
            "b",
            "--workloads",
            "steps,cpu",
            "--competitors",
            "static,ebpf",
            "--repeat",
            "3",
        ])
        .unwrap()
        .b
        .into();
        assert_eq!(o.repeat, 3);
        assert_eq!(workloads(&o).len(), 2);
        assert_eq!(
            select_competitors(&o).unwrap(),
            [CompetitorId::Static, CompetitorId::Ebpf]
        );
        let bad = BenchOptions {
            competitors: vec!["nope".into()],
            ..o
        };
        assert!(matches!(
            select_competitors(&bad),
            Err(BenchError::UnknownName { .. })
        ));
        for c in CompetitorId::ALL {
            assert_eq!(CompetitorId::from_name(c.name()), Some(c));
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
    }
}
