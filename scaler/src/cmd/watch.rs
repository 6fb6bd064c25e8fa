//! `scaler watch`: a live stream of memory-pressure events.

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
    events::MemEvent,
};

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
    /// Stop after this many events (for scripts and tests).
    #[arg(long)]
    pub count: Option<u64>,
}

/// Resolves a user-given cgroup to its path relative to the hierarchy root and its directory.
pub fn resolve_cgroup(h: &Hierarchy, arg: &str) -> anyhow::Result<(String, PathBuf)> {
    let p = Path::new(arg);
    let rel = if p.starts_with(&h.mount) {
        h.cgroup_path_of_dir(p)
            .with_context(|| format!("{arg} is not inside the {} hierarchy at {}", h.controller, h.mount.display()))?
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
    remaining: Option<u64>,
    stop: StopHandle,
}

impl<W: Write> Printer<W> {
    fn print(&mut self, ev: &MemEvent) -> std::io::Result<()> {
        let now = monotonic_ns();
        let cgroup = self.index.path_of(ev.cgroup_id).unwrap_or("?").to_string();
        let target = if ev.target_id == ev.cgroup_id {
            cgroup.clone()
        } else {
            self.index.path_of(ev.target_id).unwrap_or("?").to_string()
        };
        let delay_us = now.saturating_sub(ev.ts_ns) as f64 / 1000.0;
        if self.json {
            let mut v = serde_json::json!({
                "kind": ev.kind.as_str(),
                "ts_ns": ev.ts_ns,
                "pid": ev.pid,
                "tid": ev.tid,
                "comm": ev.comm(),
                "cgroup_id": ev.cgroup_id,
                "cgroup": cgroup,
                "target_id": ev.target_id,
                "target": target,
                "seen_after_us": delay_us,
            });
            let o = v.as_object_mut().expect("object");
            if ev.usage != 0 || ev.limit != 0 {
                o.insert("usage_bytes".into(), ev.usage.into());
                o.insert(
                    "limit_bytes".into(),
                    if ev.limit == u64::MAX { serde_json::Value::Null } else { ev.limit.into() },
                );
                if ev.limit != 0 && ev.limit != u64::MAX {
                    o.insert("utilization".into(), (ev.usage as f64 / ev.limit as f64).into());
                }
            }
            if let Some(stall) = ev.stall_ns() {
                o.insert("stall_ns".into(), stall.into());
            }
            writeln!(self.out, "{v}")?;
        } else {
            let stall = ev.stall_ns().map(|s| format!(" stall={:.1}us", s as f64 / 1000.0)).unwrap_or_default();
            let ut = if ev.limit != 0 && ev.limit != u64::MAX {
                format!(" usage={} limit={} U={:.2}", crate::units::format_size(ev.usage), crate::units::format_size(ev.limit), ev.usage as f64 / ev.limit as f64)
            } else {
                String::new()
            };
            let tgt = if ev.target_id != ev.cgroup_id { format!(" target={target}") } else { String::new() };
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
    let h = Hierarchy::discover(Path::new("/"), Controller::Memory)?;
    let mut targets = Vec::new();
    for c in &args.cgroups {
        targets.push(resolve_cgroup(&h, c)?);
    }
    let opts = PipelineOptions {
        watch_all: targets.is_empty(),
        default_headroom_bytes: if targets.is_empty() { args.headroom } else { 0 },
        early_warning: args.headroom > 0,
    };
    crate::privilege::check_startup(crate::privilege::Role::Watch, None)?;
    let mut pipeline = Pipeline::load(&opts)?;
    crate::privilege::after_load(crate::privilege::Role::Watch);
    pipeline.forward_logs();
    for (rel, dir) in &targets {
        let id = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?.ino();
        let flags = WATCH_MEMORY | if args.headroom > 0 { WATCH_USAGE_HIGH } else { 0 };
        pipeline.watch(id, WatchConfig { flags, _pad: 0, headroom_bytes: args.headroom })?;
        tracing::info!(cgroup = %rel, id, "watching");
    }
    for p in pipeline.programs() {
        if !p.attached {
            tracing::warn!(program = p.program, "not attached: {}", p.note.as_deref().unwrap_or("?"));
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
        remaining: args.count,
        stop: stop.clone(),
    };
    crate::cmd::stop_on_signals(stop.clone())?;
    tracing::info!(
        programs = pipeline.programs().iter().filter(|p| p.attached).count(),
        "attached; streaming events (Ctrl-C detaches)"
    );
    run_ring_loop(&mut ring, &stop, Duration::from_millis(200), &stats, &mut printer)?;
    let k = pipeline.kernel_stats();
    tracing::info!(
        submitted = k.submitted,
        dropped = k.ringbuf_dropped,
        filtered = k.filtered,
        read_errors = k.read_errors,
        "detached"
    );
    Ok(std::process::ExitCode::SUCCESS)
}
