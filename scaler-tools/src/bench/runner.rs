//! One run: a fresh cgroup at the starting limits, one competitor, one workload, and every
//! measurement taken from the kernel's files and the clocks.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use scaler::cgroupfs::{Cgroup, CgroupVersion};
use scaler::clock::monotonic_ns;

use super::cgroups::{BenchRoot, Hierarchies, RunCgroup};
use super::competitors::{
    self, ActionRecord, Actuator, CompetitorCtx, CompetitorId, CompetitorStats, Resource,
};
use super::ebpf::{self, ExecSummary};
use super::kobserver::{KernelObserver, KernelObserverError};
use super::observer::{
    match_latencies, Matched, Onset, OnsetMethod, Recording, Sample, Sampler, SamplerTarget,
    ThresholdObserver,
};
use super::real::{self, Progress, RealRun, RealSpec, RunPaths};
use super::rule::{cpu_policy, memory_policy, DeciderRule, ScaleRule};
use super::sys::{process_cpu_ns, EventFd};
use super::BenchError;
use crate::workload::WorkloadReport;

/// A workload as the benchmark runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Short name (`steps`, `spike`, ...).
    pub id: String,
    /// Which limit it stresses.
    pub resource: Resource,
    /// Arguments after `scaler workload`; `{file}` is replaced by a fresh path per run.
    pub args: Vec<String>,
    /// Starting limit (bytes, or quota µs per period).
    pub start: u64,
    /// Maximum any competitor may raise to.
    pub max: u64,
    /// Memory workloads: early-warning headroom below the limit.
    pub headroom: u64,
    /// CPU workloads: the CFS period (µs).
    pub period_us: u64,
    /// A workload of the real suite: the program run instead of `scaler workload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<RealSpec>,
}

/// Everything set up once for all runs.
pub struct BenchEnv {
    /// The hierarchies found.
    pub hierarchies: Hierarchies,
    /// The benchmark's cgroups.
    pub root: BenchRoot,
    /// The binary providing `workload` and `exec`.
    pub exe: PathBuf,
    /// A scratch directory on a disk-backed file system (page-cache workload files).
    pub scratch: PathBuf,
    /// The PSI trigger window accepted, or why none was.
    pub psi_window_us: Result<u64, competitors::PsiUnavailable>,
    /// What `scaler exec` supports.
    pub exec: ebpf::ExecSupport,
    /// Sampling interval.
    pub sample_interval: Duration,
    /// The kernel-side onset observer, or why it is not available.
    pub kobserver: Result<KernelObserver, KernelObserverError>,
    /// The machine (memory and CPUs).
    pub node: scaler::config::NodeInfo,
    /// The decider's node memory budget (what `scaler exec` uses).
    pub memory_budget: u64,
    /// The decider's node CPU budget, cores.
    pub cpu_budget_cores: f64,
    /// Per-run timeout.
    pub timeout: Duration,
    /// `--cooldown` for `scaler exec` (its default if `None`).
    pub cooldown: Option<Duration>,
    /// The longest hold phase of a real workload (after its work).
    pub hold: Duration,
}

/// How the workload process ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if it was killed.
    pub signal: Option<i32>,
    /// Whether the benchmark ended it at the timeout.
    pub timed_out: bool,
}

/// How many kernel events of each kind the kernel observer saw in a run's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KernelEventCounts {
    /// Early warnings (one per limit at most).
    pub usage_high: u64,
    /// Memcg reclaim rounds begun at the limit.
    pub reclaim_begin: u64,
    /// OOM victims chosen.
    pub oom_kill: u64,
}

/// Every raw measurement of one run (the JSON's `runs[]`).
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RunRecord {
    /// Competitor name.
    pub competitor: String,
    /// Workload name.
    pub workload: String,
    /// Repetition index.
    pub repeat: u32,
    /// `None` if the run was carried out; else why it could not be.
    pub error: Option<String>,
    /// How the workload (or `scaler exec`) ended.
    pub exit: ExitInfo,
    /// OOM kills in the run's cgroup.
    pub oom_kills: u64,
    /// Spawn to exit, µs.
    pub completion_us: u64,
    /// The workload's own JSON line, if it printed one.
    pub workload_report: Option<WorkloadReport>,
    /// The last lines the workload (or `scaler exec`) wrote on stderr, if any.
    pub stderr_tail: Option<String>,
    /// Starting limit.
    pub start_limit: u64,
    /// Highest limit in force.
    pub peak_limit: u64,
    /// Limit at the end.
    pub final_limit: u64,
    /// Highest usage (memory: kernel's max usage / peak; CPU: not set).
    pub peak_usage_bytes: Option<u64>,
    /// PSI `some` total of the run's unified cgroup (memory.pressure or cpu.pressure), µs.
    pub stall_some_us: Option<u64>,
    /// CPU: throttled time from cpu.stat, µs.
    pub throttled_us: Option<u64>,
    /// CPU: throttled periods from cpu.stat.
    pub nr_throttled: Option<u64>,
    /// CPU time the competitor itself used, µs.
    pub agent_cpu_us: Option<f64>,
    /// How the agent CPU time was measured.
    pub agent_cpu_method: Option<&'static str>,
    /// How onsets were observed.
    pub onset_method: Option<OnsetMethod>,
    /// Reaction latencies, µs, one per answered onset.
    pub reaction_latency_us: Vec<f64>,
    /// Onset / write bookkeeping.
    pub matching: Matched,
    /// Kernel events seen in the run's cgroup by the kernel observer.
    pub kernel_events: Option<KernelEventCounts>,
    /// Every write (in-process competitors), CLOCK_MONOTONIC ns.
    pub actions: Vec<ActionRecord>,
    /// Every onset, CLOCK_MONOTONIC ns.
    pub onsets: Vec<Onset>,
    /// CLOCK_MONOTONIC at workload spawn.
    pub t0_ns: u64,
    /// The competitor thread's stats.
    pub competitor_stats: Option<CompetitorStats>,
    /// The eBPF scaler's own summary.
    pub exec_summary: Option<ExecSummary>,
    /// Usage and limit over time (one run per competitor of the timeline workload; real
    /// suite: the first run of each case, thinned to about 1,500 samples).
    pub timeline: Option<Vec<Sample>>,
    /// The real suite's figures (hold phase, right-sizing, MiB-seconds, P = W/T).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<RealRun>,
}

impl RunRecord {
    fn new(c: CompetitorId, w: &WorkloadSpec, repeat: u32) -> Self {
        Self {
            competitor: c.name().to_owned(),
            workload: w.id.clone(),
            repeat,
            start_limit: w.start,
            peak_limit: w.start,
            final_limit: w.start,
            ..Default::default()
        }
    }
}

/// Runs one case; errors are recorded in the returned record, never hidden.
pub fn run_one(
    env: &BenchEnv,
    competitor: CompetitorId,
    w: &WorkloadSpec,
    repeat: u32,
    timeline: bool,
) -> RunRecord {
    let mut rec = RunRecord::new(competitor, w, repeat);
    if let Err(e) = run_inner(env, competitor, w, timeline, &mut rec) {
        rec.error = Some(competitors::causes(&e));
    }
    rec
}

/// The decider managing this run's cgroup, with the policy `scaler exec` would use.
fn rule_for(env: &BenchEnv, w: &WorkloadSpec) -> Box<dyn ScaleRule> {
    let now = monotonic_ns();
    match w.resource {
        Resource::Memory => Box::new(DeciderRule::memory(
            memory_policy(w.max, w.headroom),
            w.start,
            env.memory_budget,
            now,
        )),
        Resource::Cpu => Box::new(DeciderRule::cpu(
            cpu_policy(w.max as f64 / w.period_us as f64),
            w.start,
            w.period_us,
            env.cpu_budget_cores,
            now,
        )),
    }
}

fn fmt_limit(w: &WorkloadSpec, v: u64) -> String {
    match w.resource {
        Resource::Memory => v.to_string(),
        Resource::Cpu => format!("{:.3}", v as f64 / w.period_us as f64),
    }
}

fn run_inner(
    env: &BenchEnv,
    competitor: CompetitorId,
    w: &WorkloadSpec,
    timeline: bool,
    rec: &mut RunRecord,
) -> Result<(), BenchError> {
    let label = format!("{}-{}", w.id, competitor.name());
    let cg = env.root.run_cgroup(&label)?;
    let file = env.scratch.join(format!("{label}-{}.dat", monotonic_ns()));
    let wl_args: Vec<String> = w
        .args
        .iter()
        .map(|a| a.replace("{file}", &file.display().to_string()))
        .collect();
    if competitor == CompetitorId::Ebpf {
        return run_exec(env, w, &cg, &wl_args, timeline, rec);
    }
    let cgroup = match w.resource {
        Resource::Memory => cg.memory.clone(),
        Resource::Cpu => cg.cpu.clone(),
    }
    .ok_or(BenchError::NoController(match w.resource {
        Resource::Memory => "memory",
        Resource::Cpu => "cpu",
    }))?;
    let version = cgroup.version();
    // The starting limit (CPU: and the period) goes through the same files as every write
    // (not logged as an action).
    let mut actuator = Actuator::open(&cgroup, w.resource, w.start, w.period_us)?;
    if competitor == CompetitorId::V2MemoryEvents && version == CgroupVersion::V2 {
        actuator = actuator.with_high(&cgroup, w.headroom)?;
    }
    let actuator = Arc::new(actuator);

    let stop = Arc::new(EventFd::new().map_err(|source| BenchError::Os {
        call: "eventfd",
        source,
    })?);
    let ctx = CompetitorCtx {
        actuator: Arc::clone(&actuator),
        rule: rule_for(env, w),
        cgroup: cgroup.clone(),
        unified: cg.unified.clone(),
        headroom: w.headroom,
        psi_window_us: env.psi_window_us.as_ref().ok().copied(),
        stop,
    };
    let running = competitors::start(competitor, w.resource, ctx)?;
    let stop_running = |r: Option<competitors::Running>| r.map(competitors::Running::stop);
    // Onsets: the kernel observer where the eBPF programs load (identical for every
    // competitor); else a v1 threshold eventfd observer; else the sampler.
    let kernel = match (w.resource, &env.kobserver) {
        (Resource::Memory, Ok(k)) => {
            let id = cgroup.id()?.0;
            match k.watch(id, w.headroom) {
                Ok(()) => Some((k, id)),
                Err(e) => {
                    stop_running(running);
                    return Err(BenchError::CompetitorFailed {
                        competitor: "kernel observer",
                        source: Box::new(e.into()),
                    });
                }
            }
        }
        _ => None,
    };
    let observer = match (w.resource, version, &kernel) {
        (_, _, Some(_)) => None,
        (Resource::Memory, CgroupVersion::V1, None) => {
            match ThresholdObserver::start(&cgroup, Arc::clone(&actuator), w.headroom) {
                Ok(o) => Some(o),
                Err(e) => {
                    stop_running(running);
                    return Err(e);
                }
            }
        }
        _ => None,
    };
    rec.onset_method = Some(match (&kernel, &observer) {
        (Some(_), _) => OnsetMethod::KernelEvent,
        (None, Some(o)) if o.rt => OnsetMethod::V1ThresholdRt,
        (None, Some(_)) => OnsetMethod::V1Threshold,
        (None, None) => OnsetMethod::Sampler,
    });
    let t0 = monotonic_ns();
    rec.t0_ns = t0;
    let target = match w.resource {
        Resource::Memory => SamplerTarget::Memory {
            cgroup: cgroup.clone(),
            actuator: Arc::clone(&actuator),
            headroom: w.headroom,
        },
        Resource::Cpu => SamplerTarget::Cpu {
            cgroup: cgroup.clone(),
            actuator: Arc::clone(&actuator),
        },
    };
    let recording = recording_for(w, timeline);
    let sampler = match Sampler::start_with(target, env.sample_interval, recording, t0) {
        Ok(s) => s,
        Err(e) => {
            stop_running(running);
            if let Some(o) = observer {
                let _ = o.stop();
            }
            return Err(e);
        }
    };

    let mut progress = None;
    let waited = match &w.real {
        None => {
            let mut argv = vec!["workload".to_owned()];
            argv.extend(wl_args.iter().cloned());
            let spawned = spawn(&env.exe, &argv, &cg.procs_fds());
            spawned.and_then(|child| wait(child, env.timeout, None))
        }
        Some(r) => {
            let paths = RunPaths::new(&env.scratch, w, &label);
            let argv = real::command(&env.exe, r, &paths);
            let spawned = spawn(Path::new(&argv[0]), &argv[1..], &cg.procs_fds());
            let driven = spawned.and_then(|child| {
                real::drive(
                    r,
                    &paths,
                    child,
                    None,
                    &sampler,
                    w.start,
                    env.timeout,
                    None,
                    t0,
                )
            });
            paths.remove();
            driven.map(|(waited, p)| {
                progress = Some(p);
                waited
            })
        }
    };
    // Stop everything before reading the results, whatever happened.
    let stats = stop_running(running);
    let sampled = sampler.stop();
    let onsets = match (kernel, observer) {
        (Some((k, id)), _) => {
            let events = k.finish(id);
            let count = |kind: scaler_common::EventKind| {
                events.iter().filter(|e| e.kind == kind.as_str()).count() as u64
            };
            rec.kernel_events = Some(KernelEventCounts {
                usage_high: count(scaler_common::EventKind::UsageHigh),
                reclaim_begin: count(scaler_common::EventKind::ReclaimBegin),
                oom_kill: count(scaler_common::EventKind::OomKill),
            });
            super::kobserver::onsets(&events)
        }
        (None, Some(o)) => o.stop()?,
        (None, None) => sampled.onsets.clone(),
    };
    let _ = std::fs::remove_file(&file);
    let waited = waited?;
    rec.exit = waited.exit;
    rec.completion_us = waited.elapsed.as_micros() as u64;
    rec.workload_report = parse_report(&waited.stdout);
    rec.stderr_tail = tail(&waited.stderr);

    let actions = actuator.actions();
    rec.peak_limit = actions
        .iter()
        .map(|a| a.new)
        .max()
        .unwrap_or(w.start)
        .max(w.start);
    rec.final_limit = actuator.current();
    rec.matching = match_latencies(&onsets, &actions);
    rec.reaction_latency_us = rec.matching.latencies_us.clone();
    rec.actions = actions;
    rec.onsets = onsets;
    rec.agent_cpu_us = Some(stats.as_ref().map_or(0.0, |s| s.cpu_ns as f64 / 1000.0));
    rec.agent_cpu_method = Some("CLOCK_THREAD_CPUTIME_ID of the competitor thread");
    if let Some(s) = &stats {
        if let Some(e) = &s.error {
            rec.error = Some(format!("competitor stopped with an error: {e}"));
        }
    }
    rec.competitor_stats = stats;
    collect_counters(&cgroup, cg.unified.as_ref(), w, rec, sampled.peak_usage);
    let raises = rec.actions.iter().filter(|a| a.new > a.old).count() as u32;
    finish_timeline(w, rec, progress, sampled.timeline, timeline, raises);
    Ok(())
}

/// What the sampler keeps: the synthetic suite's timeline workload keeps every sample; a real
/// workload always keeps a timeline (its figures come from it) every 10 ms with the working set.
fn recording_for(w: &WorkloadSpec, timeline: bool) -> Recording {
    match w.real {
        None => Recording {
            timeline,
            ..Recording::default()
        },
        Some(_) => Recording {
            timeline: true,
            every: real::KEEP_EVERY,
            working_set: true,
        },
    }
}

/// Computes a real run's figures from its timeline; keeps the timeline (thinned, for a real
/// workload) if `keep`.
fn finish_timeline(
    w: &WorkloadSpec,
    rec: &mut RunRecord,
    progress: Option<Progress>,
    tl: Vec<Sample>,
    keep: bool,
    raises: u32,
) {
    match (&w.real, progress) {
        (Some(r), Some(p)) => {
            let figures = real::figures(r, rec, &p, &tl, raises);
            rec.real = Some(figures);
            rec.timeline = keep.then(|| real::thin(&tl, real::TIMELINE_POINTS));
        }
        _ => rec.timeline = keep.then_some(tl),
    }
}

/// The PSI `some` total (µs) of `resource` in `unified`, if it has the file.
fn stall_some_us(unified: Option<&Cgroup>, resource: Resource) -> Option<u64> {
    let u = unified?;
    let p = match resource {
        Resource::Memory => u.memory_pressure(),
        Resource::Cpu => u.cpu_pressure(),
    };
    p.ok().flatten().map(|p| p.some.total_us)
}

/// Reads the run's kernel counters (before the cgroup is removed): `cgroup` is the run's
/// memory or cpu cgroup, `unified` its unified-hierarchy cgroup.
fn collect_counters(
    cgroup: &Cgroup,
    unified: Option<&Cgroup>,
    w: &WorkloadSpec,
    rec: &mut RunRecord,
    sampled_peak: u64,
) {
    match w.resource {
        Resource::Memory => {
            rec.oom_kills = cgroup.oom_kills().ok().flatten().unwrap_or(0);
            rec.peak_usage_bytes = cgroup
                .memory_peak()
                .ok()
                .flatten()
                .or((sampled_peak > 0).then_some(sampled_peak));
        }
        Resource::Cpu => {
            let stat = cgroup.cpu_stat().ok();
            rec.nr_throttled = stat.map(|s| s.nr_throttled);
            rec.throttled_us = stat.map(|s| s.throttled_ns / 1000);
        }
    }
    rec.stall_some_us = stall_some_us(unified, w.resource);
}

/// The eBPF competitor: the workload under `scaler exec`.
fn run_exec(
    env: &BenchEnv,
    w: &WorkloadSpec,
    cg: &RunCgroup,
    wl_args: &[String],
    timeline: bool,
    rec: &mut RunRecord,
) -> Result<(), BenchError> {
    let support = match w.resource {
        Resource::Memory => &env.exec.memory,
        Resource::Cpu => &env.exec.cpu,
    };
    support.clone().map_err(|e| BenchError::CompetitorFailed {
        competitor: CompetitorId::Ebpf.name(),
        source: Box::new(e.into()),
    })?;
    let summary_path = env
        .scratch
        .join(format!("exec-summary-{}.json", monotonic_ns()));
    let (start, max) = (fmt_limit(w, w.start), fmt_limit(w, w.max));
    let cpu = (w.resource == Resource::Cpu).then_some((start.as_str(), max.as_str()));
    let headroom = w.headroom.to_string();
    let cooldown = env.cooldown.map(|d| format!("{}ms", d.as_millis()));
    let paths = RunPaths::new(&env.scratch, w, &format!("{}-ebpf", w.id));
    let command: Vec<String> = match &w.real {
        None => [env.exe.display().to_string(), "workload".into()]
            .into_iter()
            .chain(wl_args.iter().cloned())
            .collect(),
        Some(r) => real::command(&env.exe, r, &paths),
    };
    let args = ebpf::exec_args(
        &start,
        &max,
        &headroom,
        cpu,
        cooldown.as_deref(),
        &summary_path,
        &command,
    );
    // exec makes its own memory and cpu cgroups under its own. With memory on v1 it goes into
    // the run's unified cgroup (for the PSI stall); on v2 that would leave it in a cgroup with
    // processes, which cannot delegate controllers: it stays in ours, and the stall is read
    // from its cgroup while it runs.
    let memory_v1 = env.hierarchies.memory_version() == Some(CgroupVersion::V1);
    let fds: Vec<i32> = if memory_v1 {
        cg.unified_procs_fd().into_iter().collect()
    } else {
        Vec::new()
    };
    let child = spawn(&env.exe, &args, &fds)?;
    let pid = child.id() as i32;
    let t0 = monotonic_ns();
    rec.t0_ns = t0;
    let sampler = match w.resource {
        Resource::Memory => Some(Sampler::start_with(
            SamplerTarget::ForeignMemory {
                parent_pid: pid,
                memory: env.hierarchies.memory.clone(),
            },
            env.sample_interval,
            recording_for(w, timeline),
            t0,
        )?),
        Resource::Cpu => None,
    };
    let mut progress = None;
    let waited = match (&w.real, &sampler) {
        (Some(r), Some(s)) => {
            let driven = real::drive(
                r,
                &paths,
                child,
                Some(pid),
                s,
                w.start,
                env.timeout,
                Some(env.hold),
                t0,
            );
            driven.map(|(waited, p)| {
                progress = Some(p);
                waited
            })
        }
        _ => wait(child, env.timeout, Some(pid)),
    };
    paths.remove();
    let sampled = sampler.map(Sampler::stop);
    let summary = ExecSummary::read(&summary_path);
    let _ = std::fs::remove_file(&summary_path);
    let waited = waited?;
    rec.exit = waited.exit;
    rec.completion_us = waited.elapsed.as_micros() as u64;
    rec.workload_report = parse_report(&waited.stdout);
    rec.stderr_tail = tail(&waited.stderr);
    rec.onset_method = Some(OnsetMethod::EbpfSummary);
    rec.stall_some_us = if memory_v1 {
        stall_some_us(cg.unified.as_ref(), w.resource)
    } else {
        sampled.as_ref().and_then(|s| s.psi_some_total_us)
    };
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            rec.error = Some(format!(
                "{}; exec stderr: {}",
                competitors::causes(&e),
                waited.stderr.lines().last().unwrap_or("")
            ));
            let tl = sampled.map(|s| s.timeline).unwrap_or_default();
            finish_timeline(w, rec, progress, tl, timeline, 0);
            return Ok(());
        }
    };
    rec.oom_kills = summary.oom_kills.unwrap_or(0);
    rec.peak_usage_bytes = summary
        .peak_usage_bytes
        .or(sampled.as_ref().map(|s| s.peak_usage).filter(|p| *p > 0));
    rec.peak_limit = summary.peak_limit().unwrap_or(w.start).max(w.start);
    rec.final_limit = summary.final_limit_bytes.unwrap_or(rec.peak_limit);
    rec.reaction_latency_us = summary
        .actions
        .iter()
        .filter(|a| a.new > a.old)
        .filter_map(|a| a.latency_us)
        .collect();
    match summary.agent_cpu_us {
        Some(us) => {
            rec.agent_cpu_us = Some(us);
            rec.agent_cpu_method = Some("reported by scaler exec");
        }
        None => {
            rec.agent_cpu_us = waited.agent_cpu_ns.map(|ns| ns as f64 / 1000.0);
            rec.agent_cpu_method = Some(
                "utime+stime of the scaler exec process from /proc (includes loading the eBPF \
                 programs; 10 ms tick resolution)",
            );
        }
    }
    let raises = summary
        .actions
        .iter()
        .filter(|a| a.resource.as_deref().is_none_or(|r| r == "memory"))
        .filter(|a| a.new.zip(a.old).is_some_and(|(n, o)| n > o))
        .count() as u32;
    rec.exec_summary = Some(summary);
    let tl = sampled.map(|s| s.timeline).unwrap_or_default();
    finish_timeline(w, rec, progress, tl, timeline, raises);
    Ok(())
}

/// Spawns `exe args` with its stdout/stderr captured, moved into the cgroups whose
/// `cgroup.procs` fds are given before it executes anything, and killed if the benchmark dies.
fn spawn(exe: &Path, args: &[String], procs_fds: &[i32]) -> Result<Child, BenchError> {
    let fds = procs_fds.to_vec();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes async-signal-safe syscalls (write, prctl).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| BenchError::Spawn {
        exe: exe.to_owned(),
        source,
    })
}

/// How a process ended, and what it wrote.
pub struct Waited {
    /// Its exit (real workloads: the work's).
    pub exit: ExitInfo,
    /// Spawn (or the start of the watch) to exit.
    pub elapsed: Duration,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Everything it wrote on stderr.
    pub stderr: String,
    /// CPU time of the process watched for it, ns.
    pub agent_cpu_ns: Option<u64>,
}

/// A running child: its output drained by two threads, its CPU time sampled.
pub struct Watch {
    child: Child,
    start: Instant,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
    cpu_of: Option<i32>,
    cpu: Option<u64>,
    ticks: u32,
}

impl Watch {
    /// Starts draining `child`'s output; samples the CPU time of `cpu_of` (the exec process)
    /// while it runs.
    pub fn new(mut child: Child, cpu_of: Option<i32>) -> Self {
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        Self {
            child,
            start: Instant::now(),
            out,
            err,
            cpu_of,
            cpu: None,
            ticks: 0,
        }
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn poll(&mut self) -> Result<Option<std::process::ExitStatus>, BenchError> {
        let s = self.child.try_wait().map_err(|source| BenchError::Os {
            call: "waitpid",
            source,
        })?;
        if s.is_none() {
            if let Some(pid) = self.cpu_of {
                // Every 5 polls: /proc reads are not free.
                if self.ticks.is_multiple_of(5) {
                    self.cpu = process_cpu_ns(pid).or(self.cpu);
                }
            }
            self.ticks = self.ticks.wrapping_add(1);
        }
        Ok(s)
    }

    /// Sends `signal` to the child (ours, by pid; only before it is reaped).
    pub fn kill(&self, signal: i32) {
        // SAFETY: our own child, by pid, not yet reaped (poll has not returned its status).
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Collects the output after `status`.
    pub fn finish(self, status: std::process::ExitStatus, timed_out: bool) -> Waited {
        Waited {
            exit: ExitInfo {
                code: status.code(),
                signal: status.signal(),
                timed_out,
            },
            elapsed: self.start.elapsed(),
            stdout: self.out.join().unwrap_or_default(),
            stderr: self.err.join().unwrap_or_default(),
            agent_cpu_ns: self.cpu,
        }
    }
}

/// Waits for `child` (killing it by pid at the timeout), draining its output; samples the CPU
/// time of `cpu_of` (the exec process) while it runs.
pub fn wait(child: Child, timeout: Duration, cpu_of: Option<i32>) -> Result<Waited, BenchError> {
    let mut w = Watch::new(child, cpu_of);
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = w.poll()? {
            break s;
        }
        if !timed_out && (w.start.elapsed() > timeout || super::interrupted()) {
            timed_out = true;
            w.kill(libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    Ok(w.finish(status, timed_out))
}

/// The last 5 lines of `text`, if it has any.
pub fn tail(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    (!lines.is_empty()).then(|| lines[lines.len().saturating_sub(5)..].join("\n"))
}

/// The last line of `stdout` that is a workload report.
fn parse_report(stdout: &str) -> Option<WorkloadReport> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<WorkloadReport>(l.trim()).ok())
}
