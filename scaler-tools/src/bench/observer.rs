//! Measuring pressure onset the same way for every competitor, and sampling usage and limit.
//!
//! **Onset** is the moment usage crosses the early-warning mark (limit minus headroom) of the
//! limit in force. It is taken by an observer independent of the competitor:
//! - memory on cgroup v1: a `memory.usage_in_bytes` threshold eventfd of the observer's own,
//!   armed at the mark and re-armed after each write, on a SCHED_FIFO thread so it runs before
//!   the competitor's thread when both are woken by the same charge; onset is the observer's
//!   CLOCK_MONOTONIC when it wakes (a few µs after the kernel noticed the crossing; the kernel
//!   checks thresholds every 128 page charges per CPU);
//! - elsewhere (memory on v2, CPU): the [`Sampler`], polling every `sample_interval` (1 ms by
//!   default): onset is the first sample at or above the mark (memory) or showing a new
//!   throttled period (CPU), so its resolution is the sample interval.
//!
//! **Limit written** is CLOCK_MONOTONIC right after the competitor's write returned
//! ([`Actuator::set`](super::competitors::Actuator::set)). Reaction latency = written - onset,
//! one per onset that was answered (see [`match_latencies`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use scaler::actuator::NumberFile;
use scaler::cgroupfs::notify::FileWatch;
use scaler::cgroupfs::{Cgroup, CgroupVersion, Pressure};
use scaler::clock::monotonic_ns;
use serde::Serialize;

use super::cgroups::Place;
use super::competitors::{
    open_cpu_stat, open_usage, read_cpu_stat, threshold_for, ActionRecord, Actuator, ThresholdArm,
};
use super::sys::{poll, set_fifo, EventFd};
use super::BenchError;

/// One pressure onset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Onset {
    /// CLOCK_MONOTONIC of the onset.
    pub t_ns: u64,
    /// The limit in force.
    pub limit: u64,
    /// Usage at the onset (memory), or `nr_throttled` (CPU).
    pub value: u64,
}

/// How onsets were observed in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnsetMethod {
    /// Kernel timestamp of the first early-warning or memcg-reclaim event for the limit, from
    /// the project's eBPF programs watching the run's cgroup.
    KernelEvent,
    /// v1 threshold eventfd on a SCHED_FIFO observer thread.
    V1ThresholdRt,
    /// v1 threshold eventfd on a normal-priority thread (SCHED_FIFO was refused).
    V1Threshold,
    /// The first sample above the mark.
    Sampler,
    /// Reported by the eBPF scaler itself (kernel event timestamp to write completion).
    EbpfSummary,
}

/// The v1 threshold observer thread.
pub struct ThresholdObserver {
    handle: JoinHandle<Result<Vec<Onset>, BenchError>>,
    stop: Arc<EventFd>,
    /// Whether the thread got SCHED_FIFO.
    pub rt: bool,
}

impl ThresholdObserver {
    /// Starts observing the v1 memory cgroup `cgroup`, following `actuator`'s writes.
    pub fn start(
        cgroup: &Cgroup,
        actuator: Arc<Actuator>,
        headroom: u64,
    ) -> Result<Self, BenchError> {
        let stop = Arc::new(EventFd::new().map_err(|source| BenchError::Os {
            call: "eventfd",
            source,
        })?);
        let stop2 = Arc::clone(&stop);
        let cgroup = cgroup.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("bench-observer".into())
            .spawn(move || {
                let rt = set_fifo(50);
                let usage = open_usage(&cgroup);
                let usage = match usage {
                    Ok(u) => u,
                    Err(e) => {
                        let _ = tx.send(rt);
                        return Err(e);
                    }
                };
                let mut limit = actuator.current();
                let arm = ThresholdArm::arm(&cgroup, threshold_for(limit, headroom));
                let _ = tx.send(rt);
                let mut arm = arm?;
                let mut onsets = Vec::new();
                let mut fired = false;
                loop {
                    let r = poll(
                        &[
                            (stop2.fd(), libc::POLLIN),
                            (arm.fd(), libc::POLLIN),
                            (actuator.changed_fd().fd(), libc::POLLIN),
                        ],
                        None,
                    )
                    .map_err(|source| BenchError::Os {
                        call: "poll",
                        source,
                    })?;
                    if r[0] != 0 {
                        break;
                    }
                    if r[1] != 0 {
                        let t = monotonic_ns();
                        arm.take();
                        let u = usage.read_u64()?;
                        if !fired && u >= arm.threshold {
                            onsets.push(Onset {
                                t_ns: t,
                                limit,
                                value: u,
                            });
                            fired = true;
                        }
                    }
                    if r[2] != 0 {
                        actuator.changed_fd().take();
                        let now = actuator.current();
                        if now != limit {
                            limit = now;
                            arm = ThresholdArm::arm(&cgroup, threshold_for(limit, headroom))?;
                            fired = false;
                            let t = monotonic_ns();
                            let u = usage.read_u64()?;
                            if u >= arm.threshold {
                                // Already past the new mark when it was armed.
                                onsets.push(Onset {
                                    t_ns: t,
                                    limit,
                                    value: u,
                                });
                                fired = true;
                            }
                        }
                    }
                }
                Ok(onsets)
            })
            .map_err(|source| BenchError::Os {
                call: "thread spawn",
                source,
            })?;
        let rt = rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false);
        Ok(Self { handle, stop, rt })
    }

    /// Stops the observer; returns the onsets it saw.
    pub fn stop(self) -> Result<Vec<Onset>, BenchError> {
        self.stop.signal();
        self.handle
            .join()
            .unwrap_or(Err(BenchError::ThreadPanicked("observer")))
    }
}

/// One sample of the run's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Sample {
    /// Microseconds since the run started.
    pub t_us: u64,
    /// Memory usage (bytes), or cumulative `nr_throttled` (CPU).
    pub usage: u64,
    /// The limit in force (bytes, or quota µs per period).
    pub limit: u64,
    /// Memory working set, bytes: usage minus inactive file pages (v1 `memory.stat`
    /// `total_inactive_file`, v2 `inactive_file`); recorded by the real suite only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set: Option<u64>,
}

/// What a [`Sampler`] keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    /// Keep a timeline.
    pub timeline: bool,
    /// Keep a sample in the timeline only this long after the last one kept, or when the
    /// limit changed (zero: every sample).
    pub every: Duration,
    /// Read the working set (memory.stat) for every sample kept.
    pub working_set: bool,
}

/// What the sampler watches.
pub enum SamplerTarget {
    /// A memory cgroup whose limit is written by an in-process [`Actuator`].
    Memory {
        cgroup: Cgroup,
        actuator: Arc<Actuator>,
        headroom: u64,
    },
    /// A memory cgroup created by another process (`scaler exec`) in the memory hierarchy
    /// `memory`: found through the first child of `parent_pid`, and its limit read from the
    /// file.
    ForeignMemory {
        parent_pid: i32,
        memory: Option<Place>,
    },
    /// A cpu cgroup: `nr_throttled` and the quota.
    Cpu {
        cgroup: Cgroup,
        actuator: Arc<Actuator>,
    },
}

/// The result of a sampler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sampled {
    /// Every sample, if a timeline was asked for.
    pub timeline: Vec<Sample>,
    /// Onsets by sample (see the module docs).
    pub onsets: Vec<Onset>,
    /// Highest usage seen.
    pub peak_usage: u64,
    /// The foreign cgroup directory found, if any.
    pub foreign_dir: Option<PathBuf>,
    /// The foreign cgroup's last PSI `some` total (v2), µs.
    pub psi_some_total_us: Option<u64>,
}

/// A thread sampling the run's cgroup every `interval`.
pub struct Sampler {
    handle: JoinHandle<Sampled>,
    stop: Arc<EventFd>,
    latest: Arc<std::sync::Mutex<Option<Sample>>>,
}

/// Finds the memory cgroup of the first child of `pid` (any thread's child).
fn foreign_memory_cgroup(parent_pid: i32, memory: &Place) -> Option<Cgroup> {
    let tasks = std::fs::read_dir(format!("/proc/{parent_pid}/task")).ok()?;
    for t in tasks.flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        if let Some(kid) = kids.split_whitespace().next() {
            let kid: u32 = kid.parse().ok()?;
            let theirs = memory.hierarchy.pid_cgroup(kid).ok()?;
            // Until the child has moved itself into its cgroup, it is still in ours.
            let ours = memory.hierarchy.own_cgroup().ok()?;
            return (theirs != ours)
                .then(|| memory.hierarchy.cgroup(&theirs).ok())
                .flatten();
        }
    }
    None
}

impl Sampler {
    /// Starts sampling; `timeline` keeps every sample.
    pub fn start(
        target: SamplerTarget,
        interval: Duration,
        timeline: bool,
        t0_ns: u64,
    ) -> Result<Self, BenchError> {
        let rec = Recording {
            timeline,
            ..Recording::default()
        };
        Self::start_with(target, interval, rec, t0_ns)
    }

    /// Starts sampling, keeping what `rec` asks for.
    pub fn start_with(
        target: SamplerTarget,
        interval: Duration,
        rec: Recording,
        t0_ns: u64,
    ) -> Result<Self, BenchError> {
        let stop = Arc::new(EventFd::new().map_err(|source| BenchError::Os {
            call: "eventfd",
            source,
        })?);
        let stop2 = Arc::clone(&stop);
        let latest = Arc::new(std::sync::Mutex::new(None));
        let latest2 = Arc::clone(&latest);
        let timeline = rec.timeline;
        let handle = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                let mut out = Sampled::default();
                let mut kept: Option<Sample> = None;
                let mut foreign: Option<Cgroup> = None;
                let mut usage_file: Option<NumberFile> = None;
                let mut limit_file: Option<NumberFile> = None;
                let mut psi_file: Option<FileWatch> = None;
                let mut stat_file: Option<FileWatch> = None;
                let mut onset_limit = None;
                let mut last_throttled = None;
                loop {
                    if let Ok(r) = poll(&[(stop2.fd(), libc::POLLIN)], Some(interval)) {
                        if r[0] != 0 {
                            break;
                        }
                    }
                    let now = monotonic_ns();
                    let t_us = now.saturating_sub(t0_ns) / 1000;
                    let (usage, limit, mark) = match &target {
                        SamplerTarget::Memory {
                            cgroup,
                            actuator,
                            headroom,
                        } => {
                            if usage_file.is_none() {
                                usage_file = open_usage(cgroup).ok();
                            }
                            let Some(u) = usage_file.as_ref().and_then(|f| f.read_u64().ok())
                            else {
                                continue;
                            };
                            let l = actuator.current();
                            (u, l, Some(threshold_for(l, *headroom)))
                        }
                        SamplerTarget::ForeignMemory { parent_pid, memory } => {
                            if out.foreign_dir.is_none() {
                                let found = memory
                                    .as_ref()
                                    .and_then(|m| foreign_memory_cgroup(*parent_pid, m));
                                foreign.clone_from(&found);
                                if let Some(cg) = &found {
                                    out.foreign_dir = Some(cg.dir().to_path_buf());
                                    usage_file = open_usage(cg).ok();
                                    let lname = match cg.version() {
                                        CgroupVersion::V1 => "memory.limit_in_bytes",
                                        CgroupVersion::V2 => "memory.max",
                                    };
                                    limit_file = NumberFile::open(cg.file(lname)).ok();
                                    if cg.version() == CgroupVersion::V2 {
                                        psi_file = FileWatch::open(cg, "memory.pressure").ok();
                                    }
                                }
                            }
                            // v2: the cgroup's PSI total, kept while it exists (scaler exec
                            // removes the cgroup when it exits).
                            if let Some(f) = &psi_file {
                                let mut pbuf = [0u8; 256];
                                if let Some(p) = f.read_into(&mut pbuf).ok().and_then(|n| {
                                    Pressure::parse(std::str::from_utf8(&pbuf[..n]).ok()?).ok()
                                }) {
                                    out.psi_some_total_us = Some(p.some.total_us);
                                }
                            }
                            let (Some(u), Some(l)) = (
                                usage_file.as_ref().and_then(|f| f.read_u64().ok()),
                                limit_file.as_ref().and_then(|f| f.read_u64().ok()),
                            ) else {
                                continue;
                            };
                            (u, l, None)
                        }
                        SamplerTarget::Cpu { cgroup, actuator } => {
                            if stat_file.is_none() {
                                stat_file = open_cpu_stat(cgroup).ok();
                            }
                            let Some(n) = stat_file.as_ref().and_then(|f| {
                                read_cpu_stat(f, cgroup.version())
                                    .ok()
                                    .map(|s| s.nr_throttled)
                            }) else {
                                continue;
                            };
                            let l = actuator.current();
                            let grew = last_throttled.is_some_and(|p| n > p);
                            last_throttled = Some(n);
                            if grew && onset_limit != Some(l) {
                                out.onsets.push(Onset {
                                    t_ns: now,
                                    limit: l,
                                    value: n,
                                });
                                onset_limit = Some(l);
                            }
                            (n, l, None)
                        }
                    };
                    if let Some(mark) = mark {
                        if usage >= mark && onset_limit != Some(limit) {
                            out.onsets.push(Onset {
                                t_ns: now,
                                limit,
                                value: usage,
                            });
                            onset_limit = Some(limit);
                        }
                    }
                    out.peak_usage = out.peak_usage.max(usage);
                    let keep = timeline
                        && kept.is_none_or(|k| {
                            k.limit != limit
                                || t_us.saturating_sub(k.t_us) >= rec.every.as_micros() as u64
                        });
                    if keep {
                        let stat_of = match &target {
                            SamplerTarget::Memory { cgroup, .. } => Some(cgroup),
                            SamplerTarget::ForeignMemory { .. } => foreign.as_ref(),
                            SamplerTarget::Cpu { .. } => None,
                        };
                        let working_set = stat_of
                            .filter(|_| rec.working_set)
                            .and_then(|cg| cg.memory_stat().ok())
                            .map(|st| st.working_set(usage));
                        let smp = Sample {
                            t_us,
                            usage,
                            limit,
                            working_set,
                        };
                        out.timeline.push(smp);
                        kept = Some(smp);
                        if let Ok(mut l) = latest2.lock() {
                            *l = Some(smp);
                        }
                    }
                }
                out
            })
            .map_err(|source| BenchError::Os {
                call: "thread spawn",
                source,
            })?;
        Ok(Self {
            handle,
            stop,
            latest,
        })
    }

    /// The last sample kept in the timeline, if any.
    pub fn latest(&self) -> Option<Sample> {
        self.latest.lock().ok().and_then(|l| *l)
    }

    /// Stops the sampler and returns what it saw.
    pub fn stop(self) -> Sampled {
        self.stop.signal();
        self.handle.join().unwrap_or_default()
    }
}

/// Latencies matched from onsets and writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Matched {
    /// One reaction latency per answered onset, µs.
    pub latencies_us: Vec<f64>,
    /// Onsets with no write answering them (the run ended, or the workload was OOM-killed
    /// first).
    pub unanswered: u32,
    /// Writes that came before the observer recorded the onset of the limit they replaced
    /// (counted with latency 0: a lower bound).
    pub raced: u32,
    /// Writes for which no onset of the replaced limit was recorded at all.
    pub unmatched_writes: u32,
}

/// Limits as written and as the kernel reports them (in whole pages) are the same limit.
fn same_limit(a: u64, b: u64) -> bool {
    a / 4096 == b / 4096
}

/// Matches writes to onsets: a write replacing limit `L` answers the onset recorded while `L`
/// was in force; its latency is `written - onset`.
pub fn match_latencies(onsets: &[Onset], actions: &[ActionRecord]) -> Matched {
    let mut m = Matched::default();
    let mut used = vec![false; onsets.len()];
    for a in actions {
        let found = onsets
            .iter()
            .enumerate()
            .find(|(i, o)| !used[*i] && same_limit(o.limit, a.old));
        match found {
            Some((i, o)) => {
                used[i] = true;
                if o.t_ns <= a.written_ns {
                    m.latencies_us.push((a.written_ns - o.t_ns) as f64 / 1000.0);
                } else {
                    m.raced += 1;
                    m.latencies_us.push(0.0);
                }
            }
            None => m.unmatched_writes += 1,
        }
    }
    m.unanswered = used.iter().filter(|u| !**u).count() as u32;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(t: u64, old: u64, new: u64) -> ActionRecord {
        ActionRecord {
            written_ns: t,
            old,
            new,
            trigger: "x",
        }
    }

    fn on(t: u64, limit: u64) -> Onset {
        Onset {
            t_ns: t,
            limit,
            value: 0,
        }
    }

    #[test]
    fn matches_each_write_to_the_onset_of_the_limit_it_replaced() {
        let onsets = [on(1_000, 64), on(5_000, 128), on(9_000, 192)];
        let actions = [act(1_250, 64, 128), act(5_500, 128, 192)];
        let m = match_latencies(&onsets, &actions);
        assert_eq!(m.latencies_us, [0.25, 0.5]);
        assert_eq!(m.unanswered, 1);
        assert_eq!((m.raced, m.unmatched_writes), (0, 0));
    }

    #[test]
    fn early_and_unmatched_writes_are_counted_not_hidden() {
        let onsets = [on(2_000, 64)];
        let actions = [act(1_000, 64, 128), act(3_000, 128, 192)];
        let m = match_latencies(&onsets, &actions);
        assert_eq!(m.latencies_us, [0.0]);
        assert_eq!(m.raced, 1);
        assert_eq!(m.unmatched_writes, 1);
        assert_eq!(m.unanswered, 0);
    }
}
