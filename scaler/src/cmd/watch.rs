//! `scaler watch`: a live stream of memory-pressure events, and of CPU events (quota nearly
//! used up within a period, run-queue latency above a target) of the cpu cgroups named with
//! `--cpu-cgroup`.

use std::{
    io::{BufWriter, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use scaler_common::{WatchConfig, WATCH_MEMORY, WATCH_USAGE_HIGH};

use crate::{
    cgroupfs::{CgroupIndex, Controller, Hierarchy},
    ebpf::{monotonic_ns, Pipeline, PipelineOptions},
    engine::{run_ring_loop, Handler, LoopStats, StopHandle},
    events::{CpuEvent, MemEvent},
};

/// One line of `scaler watch --json`: an event as the kernel reported it, with the cgroup's
/// path and the figures of its kind (memory: usage, limit, U; CPU: quota used or run-queue
/// latency). Fields of another kind are absent, not null.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WatchEvent<'a> {
    /// [`crate::schema::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `reclaim_begin`, `reclaim_end`, `early_warning`, `oom_kill`, `quota_near`,
    /// `runq_latency`, ...
    pub kind: &'a str,
    /// CLOCK_MONOTONIC nanoseconds of the event in the kernel.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
    /// The cgroup the event is charged to (the memory cgroup, or the cpu cgroup for CPU
    /// events) and its path relative to the hierarchy's root (`?` when unknown).
    pub cgroup_id: u64,
    pub cgroup: &'a str,
    /// Memory events: the cgroup whose limit binds (the cgroup itself or an ancestor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    /// How long after the event this process printed it, µs.
    pub seen_after_us: f64,
    /// Memory usage of the target at the event, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    /// The target's limit at the event, bytes; `null` when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<Option<u64>>,
    /// usage / limit (U = R/C).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// Reclaim end: time spent in reclaim, ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_ns: Option<u64>,
    /// Quota near: CPU time used in the period, the quota and the period, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_cores: Option<f64>,
    /// Quota near: used / quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_fraction: Option<f64>,
    /// Run-queue latency: the estimate and the target, µs, and the samples it covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_in_period: Option<u64>,
}

impl<'a> WatchEvent<'a> {
    fn new(ev: &'a MemEvent, cgroup: &'a str, seen_after_us: f64) -> Self {
        Self {
            schema_version: crate::schema::SCHEMA_VERSION,
            kind: ev.kind.as_str(),
            ts_ns: ev.ts_ns,
            pid: ev.pid,
            tid: ev.tid,
            comm: ev.comm(),
            cgroup_id: ev.cgroup_id,
            cgroup,
            target_id: None,
            target: None,
            seen_after_us,
            usage_bytes: None,
            limit_bytes: None,
            utilization: None,
            stall_ns: None,
            used_us: None,
            quota_us: None,
            period_us: None,
            quota_cores: None,
            used_fraction: None,
            latency_us: None,
            target_us: None,
            samples_in_period: None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only this memory cgroup (and its descendants' reclaim where its limit binds): a path
    /// relative to the memory hierarchy's root (`/a/b`) or an absolute cgroupfs path. Repeat
    /// for several. Without it, every cgroup is shown.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Early-warning headroom for the watched cgroups: report when usage comes within this
    /// many bytes of the limit (e.g. 16M). 0 disables early warnings.
    #[arg(long, default_value = "0", value_parser = crate::units::parse_size)]
    pub headroom: u64,
    /// Also show CPU events of this cgroup of the cpu controller (`cpu_quota_near`,
    /// `runq_latency`): a path relative to the cpu hierarchy's root or an absolute cgroupfs
    /// path (on cgroup v1 the cpu hierarchy is separate from the memory one, so this is a
    /// separate option). Repeat for several. Attaches the scheduler programs. With only
    /// `--cpu-cgroup` options, memory events of other cgroups are not shown.
    #[arg(long = "cpu-cgroup", value_name = "PATH")]
    pub cpu_cgroups: Vec<String>,
    /// Report `cpu_quota_near` when a cgroup used this fraction of its quota within a period.
    #[arg(long, default_value = "0.8")]
    pub cpu_near: f64,
    /// Report `runq_latency` when a cgroup's run-queue latency p99 (within a period) exceeds
    /// this (e.g. 5ms; 0 disables).
    #[arg(long, default_value = "5ms", value_parser = crate::units::parse_duration)]
    pub runq_target: Duration,
    /// Stop after this many events (for scripts and tests).
    #[arg(long)]
    pub count: Option<u64>,
}

/// A run-queue latency histogram (log2 µs buckets, see [`scaler_common::RUNQ_BUCKETS`]) as
/// `"<1us:12 1-2us:40 ... >=1073741824us:0"`, non-empty buckets only; with p50/p99 estimates
/// (the bucket's upper bound).
pub fn format_runq_hist(hist: &[u64]) -> String {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return "no samples".into();
    }
    let mut parts = Vec::new();
    for (b, &n) in hist.iter().enumerate() {
        if n == 0 {
            continue;
        }
        parts.push(if b == 0 {
            format!("<1us:{n}")
        } else {
            format!("{}-{}us:{n}", 1u64 << (b - 1), 1u64 << b)
        });
    }
    let pct = |p: f64| runq_percentile_us(hist, p).map_or("-".into(), |v| format!("{v}us"));
    format!(
        "{} samples, p50<={} p99<={}: {}",
        total,
        pct(0.5),
        pct(0.99),
        parts.join(" ")
    )
}

/// Upper bound (µs) of the bucket holding the `p` quantile of a run-queue histogram.
pub fn runq_percentile_us(hist: &[u64], p: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (b, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(1u64 << b);
        }
    }
    None
}

pub use crate::resource::cpu::watch_config as cpu_watch;

/// Resolves a user-given cgroup to its path relative to the hierarchy root and its directory.
pub fn resolve_cgroup(h: &Hierarchy, arg: &str) -> anyhow::Result<(String, PathBuf)> {
    let p = Path::new(arg);
    let rel = if p.starts_with(&h.mount) {
        h.cgroup_path_of_dir(p).with_context(|| {
            format!(
                "{arg} is not inside the {} hierarchy at {}",
                h.controller,
                h.mount.display()
            )
        })?
    } else {
        arg.to_string()
    };
    let dir = h.dir_of(&rel)?;
    if !dir.is_dir() {
        anyhow::bail!(
            "cgroup {rel} does not exist in the {} hierarchy ({} is not a directory)",
            h.controller,
            dir.display()
        );
    }
    Ok((rel, dir))
}

struct Printer<W: Write> {
    out: W,
    json: bool,
    index: CgroupIndex,
    /// Paths of the cpu hierarchy (for CPU events).
    cpu_index: Option<CgroupIndex>,
    remaining: Option<u64>,
    stop: StopHandle,
}

impl<W: Write> Printer<W> {
    fn print_cpu(&mut self, ev: &MemEvent, c: CpuEvent) -> std::io::Result<()> {
        let now = monotonic_ns();
        let cgroup = self
            .cpu_index
            .as_mut()
            .and_then(|i| i.path_of(ev.cgroup_id).map(str::to_string))
            .unwrap_or_else(|| "?".into());
        let delay_us = now.saturating_sub(ev.ts_ns) as f64 / 1000.0;
        if self.json {
            let mut v = WatchEvent::new(ev, &cgroup, delay_us);
            match c {
                CpuEvent::QuotaNear {
                    used_ns,
                    quota_ns,
                    period_ns,
                } => {
                    v.used_us = Some(used_ns / 1000);
                    v.quota_us = Some(quota_ns / 1000);
                    v.period_us = Some(period_ns / 1000);
                    v.quota_cores = Some(quota_ns as f64 / period_ns.max(1) as f64);
                    v.used_fraction = c.quota_fraction();
                }
                CpuEvent::RunqLatency {
                    latency_ns,
                    samples,
                    target_ns,
                } => {
                    v.latency_us = Some(latency_ns as f64 / 1000.0);
                    v.target_us = Some(target_ns as f64 / 1000.0);
                    v.samples_in_period = Some(samples);
                }
            }
            serde_json::to_writer(&mut self.out, &v)?;
            writeln!(self.out)?;
        } else {
            let figures = match c {
                CpuEvent::QuotaNear {
                    used_ns,
                    quota_ns,
                    period_ns,
                } => format!(
                    "used={:.1}ms of quota={:.1}ms/{:.0}ms ({:.2} cores) U={:.2}",
                    used_ns as f64 / 1e6,
                    quota_ns as f64 / 1e6,
                    period_ns as f64 / 1e6,
                    quota_ns as f64 / period_ns.max(1) as f64,
                    c.quota_fraction().unwrap_or(0.0)
                ),
                CpuEvent::RunqLatency {
                    latency_ns,
                    samples,
                    target_ns,
                } => format!(
                    "latency={:.1}us target={:.0}us samples_in_period={samples}",
                    latency_ns as f64 / 1000.0,
                    target_ns as f64 / 1000.0
                ),
            };
            writeln!(
                self.out,
                "{:>16.6} {:<14} pid={:<7} comm={:<16} cpu_cgroup={} {} (+{:.0}us)",
                ev.ts_ns as f64 / 1e9,
                ev.kind.as_str(),
                ev.pid,
                ev.comm(),
                cgroup,
                figures,
                delay_us
            )?;
        }
        self.out.flush()
    }

    fn print(&mut self, ev: &MemEvent) -> std::io::Result<()> {
        if let Some(c) = ev.cpu() {
            return self.print_cpu(ev, c);
        }
        let now = monotonic_ns();
        let cgroup = self.index.path_of(ev.cgroup_id).unwrap_or("?").to_string();
        let target = if ev.target_id == ev.cgroup_id {
            cgroup.clone()
        } else {
            self.index.path_of(ev.target_id).unwrap_or("?").to_string()
        };
        let delay_us = now.saturating_sub(ev.ts_ns) as f64 / 1000.0;
        if self.json {
            let mut v = WatchEvent::new(ev, &cgroup, delay_us);
            v.target_id = Some(ev.target_id);
            v.target = Some(&target);
            if ev.usage != 0 || ev.limit != 0 {
                v.usage_bytes = Some(ev.usage);
                v.limit_bytes = Some((ev.limit != u64::MAX).then_some(ev.limit));
                if ev.limit != 0 && ev.limit != u64::MAX {
                    v.utilization = Some(ev.usage as f64 / ev.limit as f64);
                }
            }
            v.stall_ns = ev.stall_ns();
            serde_json::to_writer(&mut self.out, &v)?;
            writeln!(self.out)?;
        } else {
            let stall = ev
                .stall_ns()
                .map(|s| format!(" stall={:.1}us", s as f64 / 1000.0))
                .unwrap_or_default();
            let ut = if ev.limit != 0 && ev.limit != u64::MAX {
                format!(
                    " usage={} limit={} U={:.2}",
                    crate::units::format_size(ev.usage),
                    crate::units::format_size(ev.limit),
                    ev.usage as f64 / ev.limit as f64
                )
            } else {
                String::new()
            };
            let tgt = if ev.target_id != ev.cgroup_id {
                format!(" target={target}")
            } else {
                String::new()
            };
            writeln!(
                self.out,
                "{:>16.6} {:<14} pid={:<7} comm={:<16} cgroup={}{}{}{} (+{:.0}us)",
                ev.ts_ns as f64 / 1e9,
                ev.kind.as_str(),
                ev.pid,
                ev.comm(),
                cgroup,
                tgt,
                ut,
                stall,
                delay_us
            )?;
        }
        self.out.flush()
    }
}

impl<W: Write> Handler for Printer<W> {
    fn on_event(&mut self, ev: &MemEvent) {
        if let Err(e) = self.print(ev) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                self.stop.stop();
                return;
            }
            tracing::warn!("writing event: {e}");
        }
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.stop.stop();
            }
        }
    }
}

pub fn run(args: WatchArgs) -> anyhow::Result<std::process::ExitCode> {
    // Block SIGINT/SIGTERM before any thread starts (threads inherit the mask), so that
    // only the signal thread started below takes them.
    {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block()?;
    }
    let h = Hierarchy::discover(Path::new("/"), Controller::Memory)?;
    let mut targets = Vec::new();
    for c in &args.cgroups {
        targets.push(resolve_cgroup(&h, c)?);
    }
    let cpu_h = if args.cpu_cgroups.is_empty() {
        None
    } else {
        Some(Hierarchy::discover(Path::new("/"), Controller::Cpu)?)
    };
    let mut cpu_targets = Vec::new();
    if let Some(ch) = &cpu_h {
        for c in &args.cpu_cgroups {
            cpu_targets.push(resolve_cgroup(ch, c)?);
        }
    }
    anyhow::ensure!(
        args.cpu_near > 0.0 && args.cpu_near <= 1.0,
        "--cpu-near must be a fraction in (0, 1], not {}",
        args.cpu_near
    );
    let all = targets.is_empty() && cpu_targets.is_empty();
    let opts = PipelineOptions {
        watch_all: all,
        default_headroom_bytes: if all { args.headroom } else { 0 },
        early_warning: args.headroom > 0,
        ..PipelineOptions::default()
    };
    crate::privilege::check_startup(crate::privilege::Role::Watch, None)?;
    let mut pipeline = Pipeline::load_with_cpu(&opts, !cpu_targets.is_empty())?;
    crate::privilege::after_load(crate::privilege::Role::Watch);
    pipeline.forward_logs();
    for (rel, dir) in &cpu_targets {
        let id = std::fs::metadata(dir)
            .with_context(|| format!("stat {}", dir.display()))?
            .ino();
        pipeline.watch_cpu(id, cpu_watch(args.cpu_near, args.runq_target))?;
        tracing::info!(cpu_cgroup = %rel, id, "watching CPU");
    }
    for (rel, dir) in &targets {
        let id = std::fs::metadata(dir)
            .with_context(|| format!("stat {}", dir.display()))?
            .ino();
        let flags = WATCH_MEMORY
            | if args.headroom > 0 {
                WATCH_USAGE_HIGH
            } else {
                0
            };
        pipeline.watch(
            id,
            WatchConfig {
                flags,
                headroom_permille: 0,
                headroom_bytes: args.headroom,
            },
        )?;
        tracing::info!(cgroup = %rel, id, "watching");
    }
    for p in pipeline.programs() {
        if !p.attached {
            tracing::warn!(
                program = p.program,
                "not attached: {}",
                p.note.as_deref().unwrap_or("?")
            );
        }
    }
    let mut ring = pipeline.take_events().context("event ring buffer")?;
    let stop = StopHandle::new()?;
    let stats = Arc::new(LoopStats::default());
    let index = CgroupIndex::new(h.clone());
    let mut printer = Printer {
        out: BufWriter::new(std::io::stdout().lock()),
        json: args.json,
        index,
        cpu_index: cpu_h.map(CgroupIndex::new),
        remaining: args.count,
        stop: stop.clone(),
    };
    crate::cmd::stop_on_signals(stop.clone())?;
    tracing::info!(
        programs = pipeline.programs().iter().filter(|p| p.attached).count(),
        "attached; streaming events (Ctrl-C detaches)"
    );
    run_ring_loop(
        &mut ring,
        &stop,
        Duration::from_millis(200),
        &stats,
        &mut printer,
    )?;
    let k = pipeline.kernel_stats();
    tracing::info!(
        submitted = k.submitted,
        dropped = k.ringbuf_dropped,
        observe_shed = k.observe_shed,
        filtered = k.filtered,
        read_errors = k.read_errors,
        "detached"
    );
    for (rel, dir) in &cpu_targets {
        let Ok(id) = std::fs::metadata(dir).map(|m| m.ino()) else {
            continue;
        };
        if let Some(st) = pipeline.cpu_state(id) {
            tracing::info!(
                cpu_cgroup = %rel,
                cpu_ms = st.total_ns as f64 / 1e6,
                "run-queue latency: {}",
                format_runq_hist(&st.runq_hist)
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scaler_common::{CPU_WATCH_QUOTA, CPU_WATCH_RUNQ};

    #[test]
    fn cpu_watch_from_flags() {
        let w = cpu_watch(0.8, Duration::from_millis(5));
        assert_eq!(w.near_permille, 800);
        assert_eq!(w.runq_target_ns, 5_000_000);
        assert_eq!(w.flags, CPU_WATCH_QUOTA | CPU_WATCH_RUNQ);
        let w = cpu_watch(1.5, Duration::ZERO);
        assert_eq!((w.near_permille, w.flags), (1000, CPU_WATCH_QUOTA));
    }

    #[test]
    fn runq_histogram_text_and_percentiles() {
        let mut h = [0u64; scaler_common::RUNQ_BUCKETS];
        assert_eq!(format_runq_hist(&h), "no samples");
        h[0] = 50; // < 1us
        h[3] = 49; // 4-8us
        h[10] = 1; // 512-1024us
        assert_eq!(runq_percentile_us(&h, 0.5), Some(1));
        assert_eq!(runq_percentile_us(&h, 0.99), Some(8));
        assert_eq!(runq_percentile_us(&h, 1.0), Some(1024));
        let s = format_runq_hist(&h);
        assert!(s.starts_with("100 samples, p50<=1us p99<=8us"), "{s}");
        assert!(s.contains("<1us:50 4-8us:49 512-1024us:1"), "{s}");
    }
}
