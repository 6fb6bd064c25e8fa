//! `scaler exec`: run a command in a fresh managed cgroup, with the eBPF pipeline attached.
//!
//! With `--memory`, its memory limit is managed; with `--cpu`, its CFS quota too (the command
//! also gets a fresh cgroup in the cpu hierarchy, which on cgroup v1 is a separate directory
//! under the caller's own cpu cgroup; on v2 it is the same directory).

use std::{
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use scaler_common::EventKind;
use serde::Serialize;

use crate::{
    actuator::{CpuActuator, GuardLimits as _},
    cgroupfs::{Cgroup, CgroupGuard, Controller, CpuQuota, Hierarchy, Limit},
    config::{Config, NodeInfo},
    decider::{CpuPolicy, MemoryPolicy, WriteOutcome},
    ebpf::{Pipeline, PipelineOptions},
    engine::{
        ActionRecord, Budget, Command, Engine, EngineConfig, ManageRequest, Policy, Record, Signal,
    },
    resource::{self, ManagedResource as _},
    units,
};

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Starting memory limit (e.g. 64M). Without it the cgroup has no memory limit and is only
    /// observed.
    #[arg(long, value_parser = units::parse_size)]
    pub memory: Option<u64>,
    /// Highest memory limit the scaler may set (default: the node budget, physical memory
    /// minus 1 GiB).
    #[arg(long, value_parser = units::parse_size)]
    pub memory_max: Option<u64>,
    /// Lowest memory limit scale-down may set (default 16M).
    #[arg(long, value_parser = units::parse_size)]
    pub memory_min: Option<u64>,
    /// Early-warning distance below the limit (default 64M, at most an eighth of the limit in
    /// force).
    #[arg(long, value_parser = units::parse_size)]
    pub headroom: Option<u64>,
    /// Rely on reclaim events alone (no early warnings below the limit): for comparisons.
    #[arg(long)]
    pub no_early_warning: bool,
    /// Quiet time before the limit is lowered again (e.g. 30s).
    #[arg(long, value_parser = units::parse_duration)]
    pub cooldown: Option<Duration>,
    /// Least time between two lowering steps (e.g. 5s).
    #[arg(long, value_parser = units::parse_duration)]
    pub down_interval: Option<Duration>,
    /// How often usage is sampled for scale-down and rate estimation.
    #[arg(long, default_value = "1s", value_parser = units::parse_duration)]
    pub sample_interval: Duration,
    /// Starting CPU quota in cores (e.g. 0.2 or 200m): the command also runs in a fresh
    /// cgroup of the cpu controller, whose quota the scaler raises before it is throttled and
    /// lowers after the cooldown. Without it, CPU is not managed (and the scheduler programs
    /// are not attached).
    #[arg(long, value_parser = units::parse_cores)]
    pub cpu: Option<f64>,
    /// Highest CPU quota the scaler may set, in cores, at most the node's CPU count (default:
    /// the node's CPUs minus the configured reserve).
    #[arg(long, value_parser = units::parse_cores)]
    pub cpu_max: Option<f64>,
    /// Lowest CPU quota scale-down may set, in cores (default: --cpu, so that the quota
    /// returns to where it started).
    #[arg(long, value_parser = units::parse_cores)]
    pub cpu_min: Option<f64>,
    /// Quiet time (no quota-near, throttling or latency signal) before the CPU quota is
    /// lowered again (default 20s).
    #[arg(long, value_parser = units::parse_duration)]
    pub cpu_cooldown: Option<Duration>,
    /// Least time between two CPU lowering steps (default 2s).
    #[arg(long, value_parser = units::parse_duration)]
    pub cpu_down_interval: Option<Duration>,
    /// Fraction of the quota used within a period that the kernel reports as "near" (default
    /// 0.8).
    #[arg(long)]
    pub cpu_near: Option<f64>,
    /// Run-queue latency (p99 within a period) above which a quota-bound cgroup is raised
    /// (default 5ms).
    #[arg(long, value_parser = units::parse_duration)]
    pub runq_target: Option<Duration>,
    /// Decide and log, but never write a limit.
    #[arg(long)]
    pub dry_run: bool,
    /// Write a JSON summary here at exit.
    #[arg(long, value_name = "FILE")]
    pub json_summary: Option<PathBuf>,
    /// Don't print the summary on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ActionSummary {
    pub resource: &'static str,
    pub cgroup_id: u64,
    pub old: u64,
    pub new: u64,
    pub reason: &'static str,
    pub latency_us: f64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Kernel timestamp of the triggering event (CLOCK_MONOTONIC ns).
    pub trigger_ts_ns: u64,
}

#[derive(Debug, Default, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `v` (sorted in place).
    pub fn of(v: &mut [f64]) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| crate::stats::percentile(v, p).unwrap_or(f64::NAN);
        Self {
            count: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// `scaler exec --json-summary FILE`: what happened to the command and its limits.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Summary {
    /// [`crate::schema::SCHEMA_VERSION`].
    pub schema_version: u32,
    pub command: Vec<String>,
    pub cgroup: String,
    pub backend: String,
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub oom_kills: u64,
    pub oom_kill_events: u64,
    pub peak_usage_bytes: Option<u64>,
    pub start_limit_bytes: Option<u64>,
    pub final_limit_bytes: Option<u64>,
    pub max_limit_bytes: Option<u64>,
    /// Peak usage over the final limit (U = R/C at the end).
    pub peak_utilization: Option<f64>,
    pub reclaim_events: u64,
    pub reclaim_stall_ns_total: u64,
    pub elapsed_s: f64,
    pub actions: Vec<ActionSummary>,
    /// From the kernel event to the new limit in place, for raises caused by pressure.
    pub reaction_latency_us: Percentiles,
    pub kernel: crate::ebpf::KernelStats,
    pub records_dropped: u64,
    /// CPU figures (with `--cpu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuSummary>,
    /// `cpu.stat` throttled time of the command's cpu cgroup at exit, µs (with `--cpu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttled_usec: Option<u64>,
    /// `cpu.stat` throttled periods at exit (with `--cpu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nr_throttled: Option<u64>,
}

/// CPU figures of a `scaler exec --cpu` run.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CpuSummary {
    /// The command's cgroup in the cpu hierarchy.
    pub cgroup: String,
    pub start_quota_cores: f64,
    /// Quota at exit (None: unlimited).
    pub final_quota_cores: Option<f64>,
    /// Highest quota set during the run.
    pub peak_quota_cores: f64,
    pub max_quota_cores: f64,
    pub period_us: u64,
    /// `cpu.stat` at exit.
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
    /// CPU time used (v2 usage_usec, v1 cpuacct.usage), µs.
    pub usage_usec: Option<u64>,
    /// Kernel events received for the cgroup.
    pub quota_near_events: u64,
    pub runq_latency_events: u64,
    /// Run-queue latency estimates from the kernel's histogram (bucket upper bounds, µs).
    pub runq_samples: u64,
    pub runq_p50_us: Option<u64>,
    pub runq_p99_us: Option<u64>,
    /// Whether the scheduler programs were attached (false: CPU managed from cpu.stat samples
    /// alone).
    pub kernel_events: bool,
}

/// The command could not be started.
#[derive(Debug, thiserror::Error)]
#[error("starting {command:?}: {source}")]
pub struct SpawnError {
    command: String,
    #[source]
    source: std::io::Error,
}

/// `scaler exec`'s own exit status for an error, like env(1): 127 when the command was not
/// found, 126 when it was found but could not be run, 125 for any failure of scaler itself.
pub fn exit_status_of(e: &anyhow::Error) -> u8 {
    use crate::cli::exit;
    match e.downcast_ref::<SpawnError>() {
        Some(s) if s.source.kind() == std::io::ErrorKind::NotFound => exit::EXEC_NOT_FOUND,
        Some(_) => exit::EXEC_NOT_RUNNABLE,
        None => exit::EXEC_FAILED,
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        _ => (1, None),
    }
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    // Block SIGINT/SIGTERM before any thread starts (threads inherit the mask), so that
    // only the signal thread started below takes them.
    {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block()?;
    }
    let node = NodeInfo::detect().context("reading /proc/meminfo")?;
    let budget = Config::default().memory_budget(&node);
    let mem_h = Hierarchy::discover(Path::new("/"), Controller::Memory)?;
    crate::privilege::check_startup(crate::privilege::Role::Exec, None)?;
    let mut pipeline = Pipeline::load_with_cpu(&PipelineOptions::default(), args.cpu.is_some())?;
    crate::privilege::after_load(crate::privilege::Role::Exec);
    pipeline.forward_logs();

    let cpu_h = match args.cpu {
        Some(_) => Some(
            Hierarchy::discover(Path::new("/"), Controller::Cpu).context(
                "--cpu needs the cpu controller (cgroup v2 cpu.max or the v1 cpu hierarchy)",
            )?,
        ),
        None => None,
    };
    // On a v2 tree one directory serves memory and cpu: create it with both controllers.
    let guard = match &cpu_h {
        Some(ch) if ch.same_tree(&mem_h) => {
            CgroupGuard::create_under_own(&[&mem_h, ch], "scaler-exec")?
        }
        _ => CgroupGuard::create_under_own(&[&mem_h], "scaler-exec")?,
    };
    let cg = guard
        .cgroup(Controller::Memory)
        .context("memory cgroup")?
        .clone();
    if let Some(m) = args.memory {
        guard.set_memory_limit(Limit::Bytes(m))?;
    }
    let id = cg.id()?.0;
    let mut policy = MemoryPolicy {
        max: args.memory_max.unwrap_or(budget).min(budget),
        ..MemoryPolicy::default()
    };
    if let Some(m) = args.memory_min {
        policy.min = m;
    }
    if let Some(c) = args.cooldown {
        policy.cooldown_ns = c.as_nanos() as u64;
    }
    if let Some(d) = args.down_interval {
        policy.down_interval_ns = d.as_nanos() as u64;
    }
    if let Some(h) = args.headroom {
        policy.headroom = h;
    }
    if let Some(m) = args.memory {
        anyhow::ensure!(
            policy.max >= m,
            "--memory-max {} is below --memory {}",
            units::format_size(policy.max),
            units::format_size(m)
        );
        anyhow::ensure!(policy.min <= m, "--memory-min is above --memory");
    }
    let managed = args.memory.is_some();
    pipeline.watch(
        id,
        resource::memory::watch_config(
            policy.headroom,
            policy.headroom_permille(),
            managed && !args.no_early_warning,
        ),
    )?;
    // CPU: a cgroup in the cpu hierarchy (under our own cpu cgroup, which on v1 may be at a
    // different path from our memory cgroup), its starting quota, and the kernel watch.
    // An explicit --cpu-max is honoured up to the node's CPU count (a quota above it cannot
    // be used); without it, the default node budget (CPUs minus the reserve) bounds the quota.
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu_budget = match args.cpu_max {
        Some(m) => m.min(nproc),
        None => Config::default().cpu_budget(&node),
    };
    let cpu_setup = match (args.cpu, &cpu_h) {
        (Some(start), Some(ch)) => Some(setup_cpu(
            &args,
            start,
            cpu_budget,
            ch,
            &guard,
            &mut pipeline,
        )?),
        _ => None,
    };
    let ring = pipeline.take_events().context("event ring buffer")?;
    // Shared with the sampler (the kernel's CPU time of the cgroup, where cpu.stat has none).
    let pipeline = Arc::new(std::sync::Mutex::new(pipeline));
    let mut engine = Engine::start(
        ring,
        EngineConfig {
            memory_available: crate::config::mem_available()
                .map_or(budget, |a| Config::default().memory_room(&node, a)),
            cpu_budget_cores: cpu_budget,
            dry_run: args.dry_run,
            ..EngineConfig::default()
        },
    )?;
    if let Some(c) = &cpu_setup {
        engine
            .send(Command::Manage(Box::new(ManageRequest {
                id: c.id,
                path: Arc::from(c.cg.path()),
                parent: None,
                policy: Policy::Cpu(c.policy),
                writer: resource::Cpu.open(&c.cg, Some(c.id))?,
                usage: 0,
                sampled_ns: crate::clock::monotonic_ns(),
                mark: None,
            })))
            .context("managing the cgroup's CPU quota")?;
        // A baseline sample, so that the first periodic one measures an interval.
        if let Some(s) = resource::cpu::sample(&c.cg) {
            let _ = engine.send(Command::Signal(c.id, Signal::Cpu(s)));
        }
    }
    if managed {
        let writer = resource::Memory.open(&cg, Some(id))?;
        // The time of the usage figure is taken before it is read (never newer than the data).
        let sampled_ns = crate::clock::monotonic_ns();
        let usage = resource::Memory.usage(&cg);
        engine
            .send(Command::Manage(Box::new(ManageRequest {
                id,
                path: Arc::from(cg.path()),
                parent: None,
                policy: Policy::Memory(policy),
                writer,
                usage,
                sampled_ns,
                mark: None,
            })))
            .context("managing the cgroup's memory limit")?;
    }
    let records = engine.take_records().context("records")?;
    let audit_path = cg.path().to_string();
    let cpu_id = cpu_setup.as_ref().map(|c| c.id);
    let cpu_audit_path = cpu_setup.as_ref().map(|c| c.cg.path().to_string());
    let collector = std::thread::Builder::new()
        .name("records".into())
        .spawn(move || {
            let mut actions: Vec<ActionRecord> = Vec::new();
            let (mut ooms, mut reclaims, mut stall) = (0u64, 0u64, 0u64);
            let (mut near, mut runq) = (0u64, 0u64);
            let mut refusals = std::collections::HashMap::new();
            for r in records {
                match r {
                    Record::Refused(rr) => {
                        let path = match rr.resource {
                            crate::decider::Resource::Cpu => cpu_audit_path.as_deref(),
                            crate::decider::Resource::Memory => Some(audit_path.as_str()),
                        };
                        crate::cmd::log_refusal(&rr, path, None, &mut refusals);
                    }
                    Record::Action(a) => {
                        let path = match a.action.resource {
                            crate::decider::Resource::Cpu => cpu_audit_path.as_deref(),
                            crate::decider::Resource::Memory => Some(audit_path.as_str()),
                        };
                        crate::cmd::audit(&a, path);
                        actions.push(a);
                    }
                    Record::Event(ev) if ev.cpu().is_some() => {
                        if Some(ev.cgroup_id) == cpu_id {
                            match ev.kind {
                                EventKind::CpuQuotaNear => near += 1,
                                EventKind::RunqLatency => runq += 1,
                                _ => {}
                            }
                        }
                    }
                    Record::Event(ev) if ev.target_id == id || ev.cgroup_id == id => {
                        match ev.kind {
                            EventKind::OomKill => ooms += 1,
                            EventKind::ReclaimBegin => reclaims += 1,
                            EventKind::ReclaimEnd => stall += ev.value,
                            _ => {}
                        }
                    }
                    Record::Event(_) => {}
                }
            }
            (actions, ooms, reclaims, stall, near, runq)
        })?;

    // The child: moves itself into the cgroup before exec (no allocation after fork).
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.file("cgroup.procs"))
        .with_context(|| format!("opening {}", cg.file("cgroup.procs").display()))?;
    let procs_fd = procs.as_raw_fd();
    let cpu_procs = match &cpu_setup {
        Some(c) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.cg.file("cgroup.procs"))
                .with_context(|| format!("opening {}", c.cg.file("cgroup.procs").display()))?,
        ),
        None => None,
    };
    // The same file on a v2 tree (one directory serves both): written once.
    let cpu_procs_fd = cpu_procs
        .as_ref()
        .filter(|_| cpu_setup.as_ref().is_some_and(|c| c.cg.dir() != cg.dir()))
        .map_or(-1, |f| f.as_raw_fd());
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    // SAFETY: only async-signal-safe calls (write, sigprocmask) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if cpu_procs_fd >= 0 && libc::write(cpu_procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().map_err(|source| SpawnError {
        command: args.command[0].clone(),
        source,
    })?;
    drop(procs);
    drop(cpu_procs);
    let child_pid = child.id() as i32;
    crate::cmd::forward_signals(child_pid)?;

    // Slow path: periodic samples for scale-down and allocation-rate estimation.
    let done = Arc::new(AtomicBool::new(false));
    let peak_quota = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = if managed || cpu_setup.is_some() {
        let done = done.clone();
        let cg = cg.clone();
        let cpu = cpu_setup.as_ref().map(|c| (c.id, c.cg.clone()));
        let interval = args.sample_interval;
        let sender = engine_sender(&engine);
        let peak_quota = peak_quota.clone();
        let pipeline = pipeline.clone();
        Some(
            std::thread::Builder::new()
                .name("sampler".into())
                .spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        std::thread::sleep(interval);
                        if managed {
                            // What the node can back beyond the default reserve.
                            let measured_ns = crate::clock::monotonic_ns();
                            if let Ok(a) = crate::config::mem_available() {
                                sender(Command::SetBudget(Budget::MemoryAvailable {
                                    bytes: Config::default().memory_room(&node, a),
                                    measured_ns,
                                }));
                            }
                            if let Some(s) = resource::Memory.sample(&cg, None) {
                                sender(Command::Signal(id, s.signal));
                            }
                        }
                        if let Some((cpu_id, cpu_cg)) = &cpu {
                            let p = pipeline.lock().unwrap_or_else(|e| e.into_inner());
                            // v1 keeps CPU time in cpuacct, often a separate hierarchy: the
                            // sample takes what the kernel programs accounted instead.
                            let s = resource::Cpu.sample(cpu_cg, Some((&p, *cpu_id)));
                            drop(p);
                            if let Some(s) = s {
                                if let crate::actuator::Setting::Cpu(CpuQuota::Quota {
                                    quota_us,
                                    ..
                                }) = s.observed
                                {
                                    peak_quota.fetch_max(quota_us, Ordering::Relaxed);
                                }
                                sender(Command::Signal(*cpu_id, s.signal));
                            }
                        }
                    }
                })?,
        )
    } else {
        None
    };

    let status = child.wait().context("waiting for the command")?;
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let final_limit = match cg.memory_limit() {
        Ok(Limit::Bytes(b)) => Some(b),
        _ => None,
    };
    let peak = cg.memory_peak().ok().flatten();
    let oom_kills_file = cg.oom_kills().ok().flatten();
    let records_dropped = engine.stats().records_dropped.load(Ordering::Relaxed);
    engine.stop()?;
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let (kernel, cpu_kernel_state, cpu_kernel_events) = {
        let p = pipeline.lock().unwrap_or_else(|e| e.into_inner());
        (
            p.kernel_stats(),
            cpu_setup.as_ref().and_then(|c| p.cpu_state(c.id)),
            p.cpu_enabled(),
        )
    };
    drop(pipeline);
    let (actions, oom_events, reclaims, stall, near_events, runq_events) = collector
        .join()
        .map_err(|_| anyhow::anyhow!("record collector panicked"))?;
    let cpu_summary = cpu_setup.as_ref().map(|c| {
        let stat = c.cg.cpu_stat().unwrap_or_default();
        let (quota, period_us) = c.cg.cpu_max().unwrap_or((CpuQuota::Max, c.period_us));
        let start_us = CpuQuota::from_cores(c.start_cores, c.period_us);
        let start_q = match start_us {
            CpuQuota::Quota { quota_us, .. } => quota_us,
            CpuQuota::Max => 0,
        };
        let peak_us = actions
            .iter()
            .filter(|a| {
                a.action.resource == crate::decider::Resource::Cpu
                    && a.outcome != WriteOutcome::Failed
            })
            .map(|a| a.action.new)
            .chain([start_q, peak_quota.load(Ordering::Relaxed)])
            .max()
            .unwrap_or(start_q);
        let hist = cpu_kernel_state.map(|s| s.runq_hist);
        let usage_ns = stat.usage_ns.or_else(|| {
            c.cg.read_optional("cpuacct.usage")
                .ok()
                .flatten()
                .and_then(|s| s.trim().parse().ok())
        });
        CpuSummary {
            cgroup: c.cg.path().to_string(),
            start_quota_cores: c.start_cores,
            final_quota_cores: quota.cores(),
            peak_quota_cores: peak_us as f64 / period_us.max(1) as f64,
            max_quota_cores: c.policy.max_cores,
            period_us,
            nr_periods: stat.nr_periods,
            nr_throttled: stat.nr_throttled,
            throttled_usec: stat.throttled_ns / 1000,
            usage_usec: usage_ns
                .or(cpu_kernel_state.map(|s| s.total_ns))
                .map(|n: u64| n / 1000),
            quota_near_events: near_events,
            runq_latency_events: runq_events,
            runq_samples: hist.map_or(0, |h| h.iter().sum()),
            runq_p50_us: hist.and_then(|h| crate::cmd::watch::runq_percentile_us(&h, 0.5)),
            runq_p99_us: hist.and_then(|h| crate::cmd::watch::runq_percentile_us(&h, 0.99)),
            kernel_events: cpu_kernel_events,
        }
    });
    let (exit_code, signal) = exit_code_of(status);
    let mut lat: Vec<f64> = actions
        .iter()
        .filter(|a| a.outcome == WriteOutcome::Written && a.action.is_raise())
        .map(|a| a.latency_ns as f64 / 1000.0)
        .collect();
    let summary = Summary {
        schema_version: crate::schema::SCHEMA_VERSION,
        command: args.command.clone(),
        cgroup: cg.path().to_string(),
        backend: mem_h.version.to_string(),
        exit_code,
        signal,
        oom_kills: oom_kills_file.unwrap_or(oom_events),
        oom_kill_events: oom_events,
        peak_usage_bytes: peak,
        start_limit_bytes: args.memory,
        final_limit_bytes: final_limit,
        max_limit_bytes: managed.then_some(policy.max),
        peak_utilization: match (peak, final_limit) {
            (Some(p), Some(l)) if l > 0 => Some(p as f64 / l as f64),
            _ => None,
        },
        reclaim_events: reclaims,
        reclaim_stall_ns_total: stall,
        elapsed_s: elapsed.as_secs_f64(),
        actions: actions
            .iter()
            .map(|a| ActionSummary {
                resource: a.action.resource.as_str(),
                cgroup_id: a.action.cgroup,
                old: a.action.old,
                new: a.action.new,
                reason: a.action.reason.as_str(),
                latency_us: a.latency_ns as f64 / 1000.0,
                ok: a.outcome != WriteOutcome::Failed,
                errno: a.errno,
                trigger_ts_ns: a.action.trigger_ts_ns,
            })
            .collect(),
        reaction_latency_us: Percentiles::of(&mut lat),
        kernel,
        records_dropped,
        throttled_usec: cpu_summary.as_ref().map(|c| c.throttled_usec),
        nr_throttled: cpu_summary.as_ref().map(|c| c.nr_throttled),
        cpu: cpu_summary,
    };
    if !args.quiet {
        print_summary(&summary);
    }
    if let Some(path) = &args.json_summary {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    drop(guard);
    if let Some(c) = cpu_setup {
        drop(c.guard);
    }
    Ok(ExitCode::from(u8::try_from(exit_code).unwrap_or(255)))
}

/// The command's cgroup in the cpu hierarchy, as set up by [`setup_cpu`].
struct CpuSetup {
    /// Owns the cpu cgroup when it is a separate directory (v1); `None` when the memory
    /// guard's directory serves cpu as well (v2).
    guard: Option<CgroupGuard>,
    cg: Cgroup,
    id: u64,
    policy: CpuPolicy,
    start_cores: f64,
    period_us: u64,
}

/// Creates (or, on a shared v2 tree, reuses) the command's cpu cgroup, sets the starting
/// quota, and watches it in the kernel.
fn setup_cpu(
    args: &ExecArgs,
    start: f64,
    budget: f64,
    cpu_h: &Hierarchy,
    mem_guard: &CgroupGuard,
    pipeline: &mut Pipeline,
) -> anyhow::Result<CpuSetup> {
    let (guard, cg) = if let Some(cg) = mem_guard.cgroup(Controller::Cpu) {
        // v2: the memory guard's directory, created with the cpu controller enabled.
        (None, cg.clone())
    } else {
        let g = CgroupGuard::create_under_own(&[cpu_h], "scaler-exec")?;
        let cg = g.cgroup(Controller::Cpu).context("cpu cgroup")?.clone();
        (Some(g), cg)
    };
    let (_, period_us) = cg
        .cpu_max()
        .with_context(|| format!("reading the CFS period of {}", cg.dir().display()))?;
    let mut policy = CpuPolicy {
        max_cores: args.cpu_max.unwrap_or(budget).min(budget),
        ..CpuPolicy::default()
    };
    policy.min_cores = args.cpu_min.unwrap_or(start);
    if let Some(c) = args.cpu_cooldown {
        policy.cooldown_ns = u64::try_from(c.as_nanos()).unwrap_or(u64::MAX);
    }
    if let Some(d) = args.cpu_down_interval {
        policy.down_interval_ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    }
    if let Some(n) = args.cpu_near {
        anyhow::ensure!(
            n > 0.0 && n <= 1.0,
            "--cpu-near must be a fraction in (0, 1], not {n}"
        );
        policy.quota_near_fraction = n;
    }
    if let Some(t) = args.runq_target {
        policy.runq_latency_target_us = u64::try_from(t.as_micros()).unwrap_or(u64::MAX);
    }
    anyhow::ensure!(
        policy.max_cores >= start,
        "--cpu-max {} is below --cpu {} (or the node has fewer CPUs)",
        units::format_cores(policy.max_cores),
        units::format_cores(start)
    );
    anyhow::ensure!(policy.min_cores <= start, "--cpu-min is above --cpu");
    let quota = CpuQuota::from_cores(start, period_us);
    CpuActuator::open(&cg)?.set_cpu_quota(quota)?;
    let id = cg.id()?.0;
    if pipeline.cpu_enabled() {
        let runq_target = Duration::from_micros(policy.runq_latency_target_us);
        pipeline.watch_cpu(
            id,
            resource::cpu::watch_config(policy.quota_near_fraction, runq_target),
        )?;
    } else {
        tracing::warn!(
            "the scheduler programs are not attached: the CPU quota is managed from cpu.stat \
             samples alone (every --sample-interval)"
        );
    }
    Ok(CpuSetup {
        guard,
        cg,
        id,
        policy,
        start_cores: start,
        period_us,
    })
}

fn engine_sender(engine: &Engine) -> impl Fn(Command) + Send + 'static {
    let (tx, _) = engine.command_sender();
    move |c| {
        // A refused sample is counted by the engine; the next one comes an interval later.
        let _ = tx.send(c);
    }
}

fn print_summary(s: &Summary) {
    let sz = |v: Option<u64>| v.map_or("-".to_string(), units::format_size);
    eprintln!(
        "scaler exec: {} exited {}{} after {:.2}s in {} ({})",
        s.command.join(" "),
        s.exit_code,
        s.signal
            .map(|g| format!(" (signal {g})"))
            .unwrap_or_default(),
        s.elapsed_s,
        s.cgroup,
        s.backend
    );
    eprintln!(
        "  oom_kills={} peak_usage={} limit: start={} final={} max={} U(peak/final)={}",
        s.oom_kills,
        sz(s.peak_usage_bytes),
        sz(s.start_limit_bytes),
        sz(s.final_limit_bytes),
        sz(s.max_limit_bytes),
        s.peak_utilization.map_or("-".into(), |u| format!("{u:.2}"))
    );
    if let Some(c) = &s.cpu {
        eprintln!(
            "  cpu: quota start={} peak={} final={} max={} cores; throttled {} of {} periods, {:.1} ms; quota_near events={} runq_latency events={} runq p50<={}us p99<={}us",
            units::format_cores(c.start_quota_cores),
            units::format_cores(c.peak_quota_cores),
            c.final_quota_cores.map_or("max".into(), units::format_cores),
            units::format_cores(c.max_quota_cores),
            c.nr_throttled,
            c.nr_periods,
            c.throttled_usec as f64 / 1000.0,
            c.quota_near_events,
            c.runq_latency_events,
            c.runq_p50_us.map_or("-".into(), |v| v.to_string()),
            c.runq_p99_us.map_or("-".into(), |v| v.to_string()),
        );
    }
    let r = &s.reaction_latency_us;
    eprintln!(
        "  actions={} reclaim_events={} reaction latency (event -> limit written): p50={:.1}us p99={:.1}us max={:.1}us over {} raises",
        s.actions.len(),
        s.reclaim_events,
        r.p50,
        r.p99,
        r.max,
        r.count
    );
}
