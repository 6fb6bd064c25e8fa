//! The kernel-side onset observer: the project's eBPF programs ([`scaler::ebpf::Pipeline`]),
//! loaded once for the whole benchmark, watching each run's memory cgroup.
//!
//! Onset is then the kernel timestamp (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) of the first
//! early-warning (`usage >= limit - headroom`, reported once per limit, and again after 100 ms
//! at an unchanged one, by the kernel side) or
//! memcg-reclaim event for each limit in force: the same events, from the same programs, as the
//! eBPF scaler measures its own reaction from. So every competitor's reaction latency is
//! "kernel event to limit written", measured the same way.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use scaler::ebpf::{EbpfError, Pipeline, PipelineOptions};
use scaler::engine::{run_ring_loop, Handler, LoopStats, StopHandle};
use scaler::events::MemEvent;
use scaler_common::EventKind;

use super::observer::Onset;

/// One kernel event kept for a watched cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KernelEvent {
    /// `usage_high`, `reclaim_begin`, `oom_kill`, ...
    pub kind: &'static str,
    /// Kernel CLOCK_MONOTONIC, ns.
    pub ts_ns: u64,
    /// Usage of the cgroup, bytes.
    pub usage: u64,
    /// The limit in force, bytes.
    pub limit: u64,
}

struct Collector {
    watched: Arc<Mutex<HashSet<u64>>>,
    events: Arc<Mutex<Vec<(u64, MemEvent)>>>,
}

impl Handler for Collector {
    fn on_event(&mut self, ev: &MemEvent) {
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let id = if watched.contains(&ev.target_id) {
            ev.target_id
        } else if watched.contains(&ev.cgroup_id) {
            ev.cgroup_id
        } else {
            return;
        };
        drop(watched);
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, *ev));
    }
}

/// Why the kernel observer is not available, or could not watch a run's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum KernelObserverError {
    /// No case needs it (only the eBPF scaler, or only CPU workloads, are run).
    #[error("not needed")]
    NotNeeded,
    #[error("cannot load the eBPF programs")]
    Load(#[source] Box<EbpfError>),
    #[error("the early-warning program (count_memcg_events) is not attached on this kernel")]
    NoEarlyWarning,
    #[error("the eBPF event ring buffer was already taken")]
    RingTaken,
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("thread spawn")]
    Thread(#[source] std::io::Error),
    #[error("watching cgroup id {id}")]
    Watch {
        id: u64,
        #[source]
        source: Box<EbpfError>,
    },
}

/// The loaded programs and the thread reading their ring buffer.
pub struct KernelObserver {
    pipeline: Mutex<Pipeline>,
    watched: Arc<Mutex<HashSet<u64>>>,
    events: Arc<Mutex<Vec<(u64, MemEvent)>>>,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl KernelObserver {
    /// Loads and attaches the programs; `Err` says why they are not available.
    pub fn start() -> Result<Self, KernelObserverError> {
        let mut pipeline = Pipeline::load(&PipelineOptions::default())
            .map_err(|e| KernelObserverError::Load(Box::new(e)))?;
        let early = pipeline
            .programs()
            .iter()
            .any(|p| p.tracepoint == "count_memcg_events" && p.attached);
        if !early {
            return Err(KernelObserverError::NoEarlyWarning);
        }
        let mut ring = pipeline
            .take_events()
            .ok_or(KernelObserverError::RingTaken)?;
        let stop = StopHandle::new().map_err(KernelObserverError::EventFd)?;
        let watched = Arc::new(Mutex::new(HashSet::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut collector = Collector {
            watched: Arc::clone(&watched),
            events: Arc::clone(&events),
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-kobserver".into())
            .spawn(move || {
                let stats = LoopStats::default();
                if let Err(e) = run_ring_loop(
                    &mut ring,
                    &stop2,
                    Duration::from_millis(100),
                    &stats,
                    &mut collector,
                ) {
                    eprintln!("scaler bench: the kernel observer stopped: {e}");
                }
            })
            .map_err(KernelObserverError::Thread)?;
        Ok(Self {
            pipeline: Mutex::new(pipeline),
            watched,
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts watching the cgroup `id` ([`scaler::cgroupfs::Cgroup::id`]) with early warnings
    /// `headroom` below its limit.
    pub fn watch(&self, id: u64, headroom: u64) -> Result<(), KernelObserverError> {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        self.pipeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watch(
                id,
                scaler::resource::memory::watch_config(headroom, 0, true),
            )
            .map_err(|e| KernelObserverError::Watch {
                id,
                source: Box::new(e),
            })
    }

    /// Stops watching `id` and returns its events (after a short grace period for events
    /// still in the ring buffer).
    pub fn finish(&self, id: u64) -> Vec<KernelEvent> {
        std::thread::sleep(Duration::from_millis(5));
        let _ = self
            .pipeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwatch(id);
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let mut all = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|(i, _)| *i == id);
        *all = rest;
        let mut out: Vec<KernelEvent> = mine
            .into_iter()
            .map(|(_, e)| KernelEvent {
                kind: e.kind.as_str(),
                ts_ns: e.ts_ns,
                usage: e.usage,
                limit: e.limit,
            })
            .collect();
        out.sort_by_key(|e| e.ts_ns);
        out
    }
}

impl Drop for KernelObserver {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Onsets from kernel events: for each limit, the first early-warning or reclaim event.
pub fn onsets(events: &[KernelEvent]) -> Vec<Onset> {
    let mut out: Vec<Onset> = Vec::new();
    for e in events {
        if e.kind != EventKind::UsageHigh.as_str() && e.kind != EventKind::ReclaimBegin.as_str() {
            continue;
        }
        if out.iter().any(|o| o.limit == e.limit) {
            continue;
        }
        out.push(Onset {
            t_ns: e.ts_ns,
            limit: e.limit,
            value: e.usage,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, ts: u64, limit: u64) -> KernelEvent {
        KernelEvent {
            kind: kind.as_str(),
            ts_ns: ts,
            usage: 0,
            limit,
        }
    }

    #[test]
    fn first_pressure_event_per_limit_is_the_onset() {
        let evs = [
            ev(EventKind::ReclaimEnd, 1, 64),
            ev(EventKind::UsageHigh, 10, 64),
            ev(EventKind::ReclaimBegin, 12, 64),
            ev(EventKind::ReclaimBegin, 30, 128),
            ev(EventKind::UsageHigh, 31, 128),
            ev(EventKind::OomKill, 40, 128),
        ];
        let o = onsets(&evs);
        assert_eq!(o.len(), 2);
        assert_eq!((o[0].t_ns, o[0].limit), (10, 64));
        assert_eq!((o[1].t_ns, o[1].limit), (30, 128));
    }
}
