//! The hot loop: ring buffer -> decode -> handler, on a dedicated OS thread.
//!
//! A plain thread blocked in `poll(2)` on the ring buffer's fd is woken by the kernel's
//! `BPF_RB_FORCE_WAKEUP` and runs the handler (decide and write) before anything else: no async
//! hop, no allocation, no I/O besides the handler's limit write. A second fd (an eventfd) stops
//! the loop; a timeout lets the handler do periodic work (draining events submitted without a
//! wakeup, slow-path commands).

use std::{
    os::fd::AsFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::eventfd::{EfdFlags, EventFd},
};

use crate::events::{decode, DecodeError, MemEvent};

/// Stops a [`run_ring_loop`] from another thread, or wakes it to handle commands.
#[derive(Clone)]
pub struct StopHandle {
    fd: Arc<EventFd>,
    wake: Arc<EventFd>,
}

impl StopHandle {
    pub fn new() -> std::io::Result<Self> {
        let new = || {
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(std::io::Error::from)
        };
        Ok(Self {
            fd: Arc::new(new()?),
            wake: Arc::new(new()?),
        })
    }

    /// Wakes the loop so that it runs [`Handler::on_tick`] now (for commands).
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }

    /// Asks the loop to stop; it returns after the events already read are handled.
    pub fn stop(&self) {
        let _ = self.fd.write(1);
    }

    fn is_stopped(&self) -> bool {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

/// Counters of the consumer side.
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Records read from the ring buffer.
    pub records: AtomicU64,
    /// Records that did not decode.
    pub decode_errors: AtomicU64,
    /// Times the loop was woken with data.
    pub wakeups: AtomicU64,
}

/// What the loop asks of its handler.
pub trait Handler {
    /// One decoded event. Hot path: no allocation, no blocking I/O besides the limit write.
    fn on_event(&mut self, ev: &MemEvent);
    /// A record that did not decode (counted; the default ignores it).
    fn on_decode_error(&mut self, _err: DecodeError) {}
    /// Called after each drain of the ring buffer and at least every `tick`; slow-path work.
    fn on_tick(&mut self) {}
}

/// Reads the ring buffer until `stop`, calling `handler` for each event.
pub fn run_ring_loop(
    ring: &mut RingBuf<MapData>,
    stop: &StopHandle,
    tick: Duration,
    stats: &LoopStats,
    handler: &mut impl Handler,
) -> std::io::Result<()> {
    let timeout = PollTimeout::try_from(tick.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::NONE);
    loop {
        // Drain first: events submitted without a wakeup are read here too.
        let mut n = 0u64;
        while let Some(item) = ring.next() {
            n += 1;
            match decode(&item) {
                Ok(ev) => {
                    drop(item);
                    handler.on_event(&ev);
                }
                Err(e) => {
                    drop(item);
                    stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    handler.on_decode_error(e);
                }
            }
        }
        if n > 0 {
            stats.records.fetch_add(n, Ordering::Relaxed);
        }
        handler.on_tick();
        let ring_fd = ring.as_fd();
        let mut fds = [
            PollFd::new(ring_fd, PollFlags::POLLIN),
            PollFd::new(stop.fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let stop_ready = fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        if fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            stats.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        if fds[2]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            let _ = stop.wake.read();
        }
        if stop_ready || stop.is_stopped() {
            // Handle what is already there, then stop.
            while let Some(item) = ring.next() {
                if let Ok(ev) = decode(&item) {
                    drop(item);
                    handler.on_event(&ev);
                }
            }
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scaling handler: event -> decider -> pre-opened fd write -> feedback.

use std::{
    collections::HashMap,
    sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError},
    thread::JoinHandle,
};

use aya::maps::RingBuf as AyaRingBuf;
use scaler_common::EventKind;

use crate::{
    actuator::{CpuActuator, MemoryActuator},
    cgroupfs::{CpuQuota, Limit},
    decider::{
        Action, CgId, CpuDecider, CpuPolicy, CpuSignal, Decision, MemoryDecider, MemoryPolicy,
        MemorySignal, Resource, WriteOutcome,
    },
    ebpf::monotonic_ns,
    events::CpuEvent,
};

/// A completed (or failed) limit change, with its measured reaction latency.
#[derive(Clone, Copy, Debug)]
pub struct ActionRecord {
    pub action: Action,
    /// CLOCK_MONOTONIC ns when the write returned.
    pub done_ns: u64,
    /// `done_ns - action.trigger_ts_ns`: from the kernel's event to the limit in place.
    pub latency_ns: u64,
    pub outcome: WriteOutcome,
    /// errno of a failed write.
    pub errno: Option<i32>,
}

/// What the engine thread reports to the slow side.
#[derive(Clone, Copy, Debug)]
pub enum Record {
    Event(MemEvent),
    Action(ActionRecord),
}

/// A cgroup to manage.
pub struct ManageRequest {
    pub id: CgId,
    /// Path relative to the memory hierarchy root (for logs).
    pub path: Arc<str>,
    /// Nearest managed ancestor.
    pub parent: Option<CgId>,
    pub policy: MemoryPolicy,
    pub actuator: MemoryActuator,
    pub usage: u64,
}

/// A cgroup of the cpu controller to manage (its CFS quota). On cgroup v1 it is a different
/// directory, with a different id, from the memory cgroup of the same workload.
pub struct CpuManageRequest {
    /// Kernfs id of the cpu cgroup (what the kernel's CPU events carry).
    pub id: CgId,
    /// Path relative to the cpu hierarchy root (for logs).
    pub path: Arc<str>,
    /// Nearest managed ancestor (cpu hierarchy).
    pub parent: Option<CgId>,
    pub policy: CpuPolicy,
    /// Pre-opened `cpu.max` / `cpu.cfs_quota_us`; its current quota and period are what the
    /// decider starts from.
    pub actuator: CpuActuator,
}

/// Requests from the slow side to the engine thread.
pub enum Command {
    Manage(Box<ManageRequest>),
    Forget(CgId),
    /// A periodic sample (scale-down and rate estimation).
    Sample(CgId, MemorySignal),
    /// Reply with a snapshot of the decider's view.
    Snapshot(SyncSender<Vec<ManagedSnapshot>>),
    SetBudget(u64),
    /// Manage the CFS quota of a cpu cgroup.
    ManageCpu(Box<CpuManageRequest>),
    /// Stop managing a cpu cgroup.
    ForgetCpu(CgId),
    /// A periodic `cpu.stat` sample ([`CpuSignal::Sample`]; see [`cpu_sample`]).
    CpuSample(CgId, CpuSignal),
    /// Reply with the CPU decider's view.
    CpuSnapshot(SyncSender<Vec<CpuSnapshot>>),
    /// The node's CPU budget for top-level managed quotas (cores).
    SetCpuBudget(f64),
}

/// The CPU decider's view of one managed cpu cgroup.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuSnapshot {
    pub id: CgId,
    pub path: String,
    /// Quota in force or being written (cores; `None`: unlimited).
    pub quota_cores: Option<f64>,
    /// Usage over the last sample interval (cores).
    pub usage_cores: Option<f64>,
    pub utilization: Option<f64>,
}

/// Reads a `cpu.stat` + quota sample of a cpu cgroup for [`Command::CpuSample`] (slow path).
/// `usage_ns` is v2's `usage_usec`, or v1's `cpuacct.usage` when the cpuacct controller is
/// mounted with cpu (as `cpu,cpuacct`), else 0 (then the decider's usage-based scale-down goal
/// is the policy minimum).
pub fn cpu_sample(cg: &crate::cgroupfs::Cgroup) -> Option<CpuSignal> {
    let stat = cg.cpu_stat().ok()?;
    let (quota, period_us) = cg.cpu_max().ok()?;
    let usage_ns = stat.usage_ns.or_else(|| {
        cg.read_optional("cpuacct.usage")
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse().ok())
    });
    Some(CpuSignal::Sample {
        ts_ns: monotonic_ns(),
        usage_ns: usage_ns.unwrap_or(0),
        nr_throttled: stat.nr_throttled,
        throttled_ns: stat.throttled_ns,
        quota_us: match quota {
            CpuQuota::Max => None,
            CpuQuota::Quota { quota_us, .. } => Some(quota_us),
        },
        period_us,
    })
}

/// The decider's view of one managed cgroup.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ManagedSnapshot {
    pub id: CgId,
    pub path: String,
    pub limit: Option<u64>,
    pub usage: Option<u64>,
    pub utilization: Option<f64>,
    pub allocation_rate: Option<f64>,
}

struct Managed {
    path: Arc<str>,
    actuator: MemoryActuator,
}

struct CpuManaged {
    path: Arc<str>,
    actuator: CpuActuator,
    period_us: u64,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Node budget for the sum of top-level managed memory limits (bytes).
    pub memory_budget: u64,
    /// Node budget for the sum of top-level managed CPU quotas (cores).
    pub cpu_budget_cores: f64,
    /// Decide and log, but write nothing.
    pub dry_run: bool,
    /// Capacity of the record channel to the slow side (records beyond it are counted and
    /// dropped; decisions never wait for the slow side).
    pub record_capacity: usize,
    /// Poll timeout: events submitted without a wakeup are read at least this often.
    pub tick: Duration,
    /// Run the engine thread SCHED_FIFO at this priority (best effort; None: normal).
    pub realtime_priority: Option<i32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            memory_budget: u64::MAX,
            cpu_budget_cores: f64::INFINITY,
            dry_run: false,
            record_capacity: 65536,
            tick: Duration::from_millis(100),
            realtime_priority: Some(10),
        }
    }
}

/// Counters of the engine thread, shared with the slow side.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub loop_stats: LoopStats,
    /// Records the slow side was too slow to take.
    pub records_dropped: AtomicU64,
    pub actions: AtomicU64,
    pub failed_writes: AtomicU64,
    /// Pressure on a managed cgroup whose binding limit is an unmanaged ancestor's.
    pub unmanaged_ancestor_binds: AtomicU64,
    /// CPU events (quota-near, run-queue latency) for managed cpu cgroups.
    pub cpu_signals: AtomicU64,
}

struct ScalingHandler {
    decider: MemoryDecider,
    managed: HashMap<CgId, Managed>,
    cpu: CpuDecider,
    cpu_managed: HashMap<CgId, CpuManaged>,
    decision: Decision,
    dry_run: bool,
    records: SyncSender<Record>,
    commands: Receiver<Command>,
    stats: Arc<EngineStats>,
}

impl ScalingHandler {
    fn send(&self, r: Record) {
        if self.records.try_send(r).is_err() {
            self.stats.records_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Performs the decided actions in order; hot path.
    fn execute(&mut self) {
        for i in 0..self.decision.actions().len() {
            let a = self.decision.actions()[i];
            // The actuator stamps its successful writes (`completed_ns`); reuse that rather
            // than reading the clock a second time on the hot path.
            let (outcome, errno, written_ns) = if self.dry_run {
                (WriteOutcome::DryRun, None, None)
            } else {
                let res = match a.resource {
                    Resource::Memory => self.managed.get(&a.cgroup).map(|m| {
                        m.actuator
                            .set_memory_limit(Limit::from_bytes(a.new))
                            .map(|o| o.completed_ns)
                    }),
                    Resource::Cpu => self.cpu_managed.get(&a.cgroup).map(|m| {
                        m.actuator
                            .set_cpu_quota(CpuQuota::Quota {
                                quota_us: a.new,
                                period_us: m.period_us,
                            })
                            .map(|o| o.completed_ns)
                    }),
                };
                match res {
                    Some(Ok(ns)) => (WriteOutcome::Written, None, Some(ns)),
                    Some(Err(e)) => (
                        WriteOutcome::Failed,
                        Some(e.errno().map_or(0, |e| e as i32)),
                        None,
                    ),
                    None => (WriteOutcome::Failed, Some(libc::ENOENT), None),
                }
            };
            let done_ns = written_ns.unwrap_or_else(monotonic_ns);
            match a.resource {
                Resource::Memory => self.decider.applied(&a, done_ns, outcome),
                Resource::Cpu => self.cpu.applied(&a, done_ns, outcome),
            }
            self.stats.actions.fetch_add(1, Ordering::Relaxed);
            if outcome == WriteOutcome::Failed {
                self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
            }
            self.send(Record::Action(ActionRecord {
                action: a,
                done_ns,
                latency_ns: done_ns.saturating_sub(a.trigger_ts_ns),
                outcome,
                errno,
            }));
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Manage(m) => {
                let ManageRequest {
                    id,
                    path,
                    parent,
                    policy,
                    actuator,
                    usage,
                } = *m;
                let limit = match actuator.current_limit() {
                    Limit::Bytes(b) => b,
                    Limit::Max => u64::MAX,
                };
                self.decider
                    .manage(id, parent, policy, limit, usage, monotonic_ns());
                self.managed.insert(id, Managed { path, actuator });
            }
            Command::Forget(id) => {
                self.decider.forget(id);
                self.managed.remove(&id);
            }
            Command::Sample(id, s) => {
                self.decider.on_signal(id, s, &mut self.decision);
                self.execute();
            }
            Command::Snapshot(reply) => {
                let v = self
                    .managed
                    .iter()
                    .map(|(id, m)| ManagedSnapshot {
                        id: *id,
                        path: m.path.to_string(),
                        limit: self.decider.limit(*id),
                        usage: self.decider.usage(*id),
                        utilization: self.decider.utilization(*id),
                        allocation_rate: self.decider.allocation_rate(*id),
                    })
                    .collect();
                let _ = reply.try_send(v);
            }
            Command::SetBudget(b) => self.decider.set_budget(b),
            Command::ManageCpu(m) => {
                let CpuManageRequest {
                    id,
                    path,
                    parent,
                    policy,
                    actuator,
                } = *m;
                let (quota, period_us) = match actuator.current_quota() {
                    CpuQuota::Max => (None, 100_000),
                    CpuQuota::Quota {
                        quota_us,
                        period_us,
                    } => (Some(quota_us), period_us),
                };
                self.cpu
                    .manage(id, parent, policy, quota, period_us, monotonic_ns());
                self.cpu_managed.insert(
                    id,
                    CpuManaged {
                        path,
                        actuator,
                        period_us,
                    },
                );
            }
            Command::ForgetCpu(id) => {
                self.cpu.forget(id);
                self.cpu_managed.remove(&id);
            }
            Command::CpuSample(id, s) => {
                // The period may have been changed by someone else: follow it.
                if let (Some(m), CpuSignal::Sample { period_us, .. }) =
                    (self.cpu_managed.get_mut(&id), s)
                {
                    m.period_us = period_us;
                }
                self.cpu.on_signal(id, s, &mut self.decision);
                self.execute();
            }
            Command::CpuSnapshot(reply) => {
                let v = self
                    .cpu_managed
                    .iter()
                    .map(|(id, m)| CpuSnapshot {
                        id: *id,
                        path: m.path.to_string(),
                        quota_cores: self.cpu.quota_cores(*id).filter(|c| c.is_finite()),
                        usage_cores: self.cpu.usage_cores(*id),
                        utilization: self.cpu.utilization(*id),
                    })
                    .collect();
                let _ = reply.try_send(v);
            }
            Command::SetCpuBudget(b) => self.cpu.set_budget(b),
        }
    }

    /// A CPU event from the kernel: to the CPU decider if the cgroup is managed; hot path.
    fn on_cpu_event(&mut self, ev: &MemEvent, c: CpuEvent) {
        if !self.cpu.is_managed(ev.cgroup_id) {
            return;
        }
        self.stats.cpu_signals.fetch_add(1, Ordering::Relaxed);
        let signal = match c {
            CpuEvent::QuotaNear {
                used_ns,
                quota_ns,
                period_ns,
            } => CpuSignal::QuotaNear {
                ts_ns: ev.ts_ns,
                used_ns_in_period: used_ns,
                quota_ns,
                period_ns,
            },
            // The kernel reports when the period's p99 so far went above the target; the
            // sample that pushed it there stands for the p99.
            CpuEvent::RunqLatency { latency_ns, .. } => CpuSignal::RunqLatency {
                ts_ns: ev.ts_ns,
                p99_us: latency_ns / 1000,
            },
        };
        self.cpu.on_signal(ev.cgroup_id, signal, &mut self.decision);
        self.execute();
    }
}

impl Handler for ScalingHandler {
    fn on_event(&mut self, ev: &MemEvent) {
        if let Some(c) = ev.cpu() {
            self.on_cpu_event(ev, c);
        } else if ev.is_pressure() {
            let signal = match ev.kind {
                EventKind::ReclaimBegin => MemorySignal::Reclaim {
                    ts_ns: ev.ts_ns,
                    usage: ev.usage,
                    limit: ev.limit,
                },
                EventKind::UsageHigh => MemorySignal::UsageHigh {
                    ts_ns: ev.ts_ns,
                    usage: ev.usage,
                    limit: ev.limit,
                },
                _ => MemorySignal::OomKill { ts_ns: ev.ts_ns },
            };
            // Decide for the cgroup whose limit binds (the event's figures are that cgroup's).
            // If an unmanaged ancestor binds, no limit we may change would help: count it.
            if self.decider.is_managed(ev.target_id) {
                self.decider
                    .on_signal(ev.target_id, signal, &mut self.decision);
                self.execute();
            } else if ev.target_id != ev.cgroup_id && self.decider.is_managed(ev.cgroup_id) {
                self.stats
                    .unmanaged_ancestor_binds
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.send(Record::Event(*ev));
    }

    fn on_decode_error(&mut self, err: DecodeError) {
        tracing::warn!("undecodable ring-buffer record: {err}");
    }

    fn on_tick(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(c) => self.command(c),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
    }
}

/// The running engine: a thread that owns the ring buffer, the decider and the actuators.
pub struct Engine {
    thread: Option<JoinHandle<std::io::Result<()>>>,
    control: StopHandle,
    commands: std::sync::mpsc::Sender<Command>,
    records: Option<Receiver<Record>>,
    stats: Arc<EngineStats>,
}

impl Engine {
    /// Starts the engine thread on `ring`.
    pub fn start(mut ring: AyaRingBuf<MapData>, cfg: EngineConfig) -> std::io::Result<Self> {
        let control = StopHandle::new()?;
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
        let (rec_tx, rec_rx) = sync_channel(cfg.record_capacity);
        let stats = Arc::new(EngineStats::default());
        let mut handler = ScalingHandler {
            decider: MemoryDecider::new(cfg.memory_budget),
            managed: HashMap::new(),
            cpu: CpuDecider::new(cfg.cpu_budget_cores),
            cpu_managed: HashMap::new(),
            decision: Decision::new(),
            dry_run: cfg.dry_run,
            records: rec_tx,
            commands: cmd_rx,
            stats: stats.clone(),
        };
        let ctl = control.clone();
        let st = stats.clone();
        let tick = cfg.tick;
        let prio = cfg.realtime_priority;
        let thread = std::thread::Builder::new()
            .name("scaler-engine".into())
            .spawn(move || {
                if let Some(p) = prio {
                    set_realtime(p);
                }
                run_ring_loop(&mut ring, &ctl, tick, &st.loop_stats, &mut handler)
            })?;
        Ok(Self {
            thread: Some(thread),
            control,
            commands: cmd_tx,
            records: Some(rec_rx),
            stats,
        })
    }

    /// Sends a command; the engine handles it before its next poll.
    pub fn send(&self, c: Command) {
        if self.commands.send(c).is_ok() {
            self.control.wake();
        }
    }

    /// A command sender usable from other threads, with the handle that wakes the engine.
    pub fn command_sender(&self) -> (std::sync::mpsc::Sender<Command>, StopHandle) {
        (self.commands.clone(), self.control.clone())
    }

    /// Takes the receiving end of the record channel (once).
    pub fn take_records(&mut self) -> Option<Receiver<Record>> {
        self.records.take()
    }

    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// A snapshot of the managed cgroups (waits up to a second for the engine thread).
    pub fn snapshot(&self) -> Vec<ManagedSnapshot> {
        let (tx, rx) = sync_channel(1);
        self.send(Command::Snapshot(tx));
        rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
    }

    /// A snapshot of the managed cpu cgroups (waits up to a second for the engine thread).
    pub fn cpu_snapshot(&self) -> Vec<CpuSnapshot> {
        let (tx, rx) = sync_channel(1);
        self.send(Command::CpuSnapshot(tx));
        rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
    }

    pub fn control(&self) -> &StopHandle {
        &self.control
    }

    /// Stops the thread after it handled what it already read.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        self.control.stop();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("engine thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Best effort: SCHED_FIFO for the engine thread, so that a busy node does not delay the
/// reaction. Needs CAP_SYS_NICE; without it, logs and continues.
fn set_realtime(priority: i32) {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: valid param for the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::debug!(
            "engine thread stays SCHED_OTHER (SCHED_FIFO {priority}: {})",
            std::io::Error::last_os_error()
        );
    }
}
