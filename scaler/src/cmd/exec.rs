//! `scaler exec`: run a command in a fresh managed cgroup, with the eBPF pipeline attached.

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
use scaler_common::{EventKind, WatchConfig, WATCH_MEMORY, WATCH_USAGE_HIGH};
use serde::Serialize;

use crate::{
    actuator::{MemoryActuator, MemoryOptions},
    cgroupfs::{Cgroup, CgroupGuard, Controller, Hierarchy, Limit},
    config::{Config, NodeInfo},
    decider::{MemoryPolicy, MemorySignal, WriteOutcome},
    ebpf::{monotonic_ns, Pipeline, PipelineOptions},
    engine::{ActionRecord, Command, Engine, EngineConfig, ManageRequest, Record},
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
    /// Early-warning distance below the limit (default: a quarter of the starting limit, at
    /// most 64M).
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

#[derive(Debug, Serialize)]
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

#[derive(Debug, Default, Serialize)]
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
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self { count: v.len(), p50: rank(0.50), p99: rank(0.99), max: v[v.len() - 1] }
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
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
}

fn exit_code_of(status: std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        _ => (1, None),
    }
}

/// Reads a sample of the managed cgroup for the decider (slow path).
pub fn sample(cg: &Cgroup) -> Option<MemorySignal> {
    let usage = cg.memory_usage().ok()?;
    let limit = match cg.memory_limit().ok()? {
        Limit::Bytes(b) => b,
        Limit::Max => u64::MAX,
    };
    let working_set = cg.memory_stat().map(|s| usage.saturating_sub(s.inactive_file)).unwrap_or(usage);
    let psi = cg.memory_pressure().ok().flatten().map(|p| p.some.total_us);
    Some(MemorySignal::Sample { ts_ns: monotonic_ns(), usage, limit, working_set, psi_some_total_us: psi })
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let node = NodeInfo::detect().context("reading /proc/meminfo")?;
    let budget = Config::default().memory_budget(&node);
    let mem_h = Hierarchy::discover(Path::new("/"), Controller::Memory)?;
    crate::privilege::check_startup(crate::privilege::Role::Exec, None)?;
    let mut pipeline = Pipeline::load(&PipelineOptions::default())?;
    crate::privilege::after_load(crate::privilege::Role::Exec);
    pipeline.forward_logs();

    let guard = CgroupGuard::create_under_own(&[&mem_h], "scaler-exec")?;
    let cg = guard.cgroup(Controller::Memory).context("memory cgroup")?.clone();
    if let Some(m) = args.memory {
        guard.set_memory_limit(Limit::Bytes(m))?;
    }
    let id = cg.id()?.0;
    let mut policy = MemoryPolicy::default();
    policy.max = args.memory_max.unwrap_or(budget).min(budget);
    if let Some(m) = args.memory_min {
        policy.min = m;
    }
    if let Some(c) = args.cooldown {
        policy.cooldown_ns = c.as_nanos() as u64;
    }
    if let Some(d) = args.down_interval {
        policy.down_interval_ns = d.as_nanos() as u64;
    }
    let start_limit = args.memory;
    let headroom = args
        .headroom
        .unwrap_or_else(|| start_limit.map_or(policy.headroom, |l| (l / 4).min(policy.headroom)));
    policy.headroom = headroom;
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
        WatchConfig {
            flags: WATCH_MEMORY
                | if managed && !args.no_early_warning { WATCH_USAGE_HIGH } else { 0 },
            _pad: 0,
            headroom_bytes: headroom,
        },
    )?;
    let ring = pipeline.take_events().context("event ring buffer")?;
    let mut engine = Engine::start(
        ring,
        EngineConfig { memory_budget: budget, dry_run: args.dry_run, ..EngineConfig::default() },
    )?;
    if managed {
        let actuator = MemoryActuator::open(&cg, MemoryOptions::default())?;
        engine.send(Command::Manage(Box::new(ManageRequest {
            id,
            path: Arc::from(cg.path()),
            parent: None,
            policy,
            actuator,
            usage: cg.memory_usage().unwrap_or(0),
        })));
    }
    let records = engine.take_records().context("records")?;
    let audit_path = cg.path().to_string();
    let collector = std::thread::Builder::new().name("records".into()).spawn(move || {
        let mut actions: Vec<ActionRecord> = Vec::new();
        let (mut ooms, mut reclaims, mut stall) = (0u64, 0u64, 0u64);
        for r in records {
            match r {
                Record::Action(a) => {
                    crate::cmd::audit(&a, Some(&audit_path));
                    actions.push(a);
                }
                Record::Event(ev) if ev.target_id == id || ev.cgroup_id == id => match ev.kind {
                    EventKind::OomKill => ooms += 1,
                    EventKind::ReclaimBegin => reclaims += 1,
                    EventKind::ReclaimEnd => stall += ev.value,
                    _ => {}
                },
                Record::Event(_) => {}
            }
        }
        (actions, ooms, reclaims, stall)
    })?;

    // The child: moves itself into the cgroup before exec (no allocation after fork).
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.file("cgroup.procs"))
        .with_context(|| format!("opening {}", cg.file("cgroup.procs").display()))?;
    let procs_fd = procs.as_raw_fd();
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    // SAFETY: only async-signal-safe calls (write, sigprocmask) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {:?}", args.command[0]))?;
    drop(procs);
    let child_pid = child.id() as i32;
    crate::cmd::forward_signals(child_pid)?;

    // Slow path: periodic samples for scale-down and allocation-rate estimation.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = if managed {
        let done = done.clone();
        let cg = cg.clone();
        let interval = args.sample_interval;
        let sender = engine_sender(&engine);
        Some(std::thread::Builder::new().name("sampler".into()).spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                if let Some(s) = sample(&cg) {
                    sender(Command::Sample(id, s));
                }
            }
        })?)
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
    let kernel = pipeline.kernel_stats();
    drop(pipeline);
    let (actions, oom_events, reclaims, stall) =
        collector.join().map_err(|_| anyhow::anyhow!("record collector panicked"))?;
    let (exit_code, signal) = exit_code_of(status);
    let mut lat: Vec<f64> = actions
        .iter()
        .filter(|a| a.outcome == WriteOutcome::Written && a.action.is_raise())
        .map(|a| a.latency_ns as f64 / 1000.0)
        .collect();
    let summary = Summary {
        command: args.command.clone(),
        cgroup: cg.path().to_string(),
        backend: mem_h.version.to_string(),
        exit_code,
        signal,
        oom_kills: oom_kills_file.unwrap_or(oom_events),
        oom_kill_events: oom_events,
        peak_usage_bytes: peak,
        start_limit_bytes: start_limit,
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
    };
    if !args.quiet {
        print_summary(&summary);
    }
    if let Some(path) = &args.json_summary {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    drop(guard);
    Ok(ExitCode::from(u8::try_from(exit_code).unwrap_or(255)))
}

fn engine_sender(engine: &Engine) -> impl Fn(Command) + Send + 'static {
    let (tx, ctl) = engine.command_sender();
    move |c| {
        if tx.send(c).is_ok() {
            ctl.wake();
        }
    }
}

fn print_summary(s: &Summary) {
    let sz = |v: Option<u64>| v.map_or("-".to_string(), units::format_size);
    eprintln!(
        "scaler exec: {} exited {}{} after {:.2}s in {} ({})",
        s.command.join(" "),
        s.exit_code,
        s.signal.map(|g| format!(" (signal {g})")).unwrap_or_default(),
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
