//! The scaling handler: kernel event -> decider -> limit writer -> feedback, on the engine
//! thread, for every managed resource alike.
//!
//! Each resource (memory, CPU) is a [`Slot`]: its decider and the pre-opened
//! [`LimitWriter`]s of the cgroups it manages. The slow side talks to the slots through one set
//! of [`Command`]s (manage, forget, signal, snapshot, budget) tagged with the resource; the
//! engine answers with [`Record`]s (events and performed actions) on a bounded channel that
//! never makes a decision wait.
//!
//! The command channel is bounded too ([`EngineConfig::command_capacity`]): the engine thread
//! only ever takes from it (between drains of the ring buffer, never blocking), and a sender
//! that finds it full wakes the engine and waits for room up to [`COMMAND_WAIT`]; after that
//! the command is refused ([`CommandRefused`]) and counted (`commands_refused`), and the slow
//! side tries again later (discovery manages the cgroup at its next pass, the next sample
//! comes an interval later).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use scaler_common::EventKind;

use super::{run_shared_loop, Handler, LoopStats, RecordSource, Shared, StopHandle};
pub use crate::decider::{Policy, Signal};
use crate::{
    actuator::{LimitWriter, Setting, WriteMark},
    cgroupfs::{CpuQuota, Limit},
    clock::monotonic_ns,
    decider::{
        Action, CgId, CpuDecider, CpuSignal, Decide, Decision, MemoryDecider, MemorySignal,
        Refusal, Resource, Skip, WriteOutcome, REFUSAL_REASONS,
    },
    events::{CpuEvent, DecodeError, MemEvent},
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
    /// What the writer holds after a successful write (the CPU quota with its period).
    pub written: Option<Setting>,
}

/// A raise the decider refused (bounded to nothing, or rate-limited): why, and what it asked
/// for (see [`Refusal`]).
#[derive(Clone, Copy, Debug)]
pub struct RefusalRecord {
    pub resource: Resource,
    /// Why ([`Skip::refusal`] names it).
    pub skip: Skip,
    pub refusal: Refusal,
}

/// What the engine thread reports to the slow side.
#[derive(Clone, Copy, Debug)]
pub enum Record {
    Event(MemEvent),
    Action(ActionRecord),
    Refused(RefusalRecord),
}

/// A node budget, per resource.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Memory: what the node can still back beyond its reserve (bytes), sampled at
    /// `measured_ns` (CLOCK_MONOTONIC): `MemAvailable` minus `node.memory_reserve`.
    MemoryAvailable { bytes: u64, measured_ns: u64 },
    /// CPU: the bound on the sum of top-level quotas (cores).
    Cpu(f64),
}

impl Budget {
    /// The resource it bounds.
    pub fn resource(&self) -> Resource {
        match self {
            Budget::MemoryAvailable { .. } => Resource::Memory,
            Budget::Cpu(_) => Resource::Cpu,
        }
    }
}

/// A cgroup to manage for one resource. On cgroup v1 the memory and cpu cgroups of a workload
/// are different directories with different ids; each is managed by its own request.
pub struct ManageRequest {
    /// Kernfs id of the cgroup in the resource's hierarchy (what the kernel's events carry).
    pub id: CgId,
    /// Path relative to the hierarchy root (for logs).
    pub path: Arc<str>,
    /// Nearest managed ancestor (same resource).
    pub parent: Option<CgId>,
    pub policy: Policy,
    /// The pre-opened limit files; their current setting is what the decider starts from.
    pub writer: Box<dyn LimitWriter>,
    /// Current usage (bytes for memory; ignored for CPU, whose usage comes from samples).
    pub usage: u64,
    /// Where the engine marks each write (see [`WriteMark`]), for a slow side that samples
    /// the cgroup and must tell the agent's writes from others'.
    pub mark: Option<Arc<WriteMark>>,
    /// CLOCK_MONOTONIC ns taken before `usage` was read: the decider's first rate sample is
    /// stamped with it, so that it is never newer than the data.
    pub sampled_ns: u64,
}

/// Requests from the slow side to the engine thread.
pub enum Command {
    Manage(Box<ManageRequest>),
    Forget(Resource, CgId),
    /// A periodic sample (scale-down, rate estimation, throttling, external changes).
    Signal(CgId, Signal),
    /// Reply with a snapshot of the resource's decider.
    Snapshot(Resource, SyncSender<Vec<Snapshot>>),
    SetBudget(Budget),
    /// Memory: how much the managed cgroup's subtree may still grow under the limits of its
    /// unmanaged ancestors (the least of their limit minus working set, bytes; `u64::MAX`:
    /// none is limited), sampled at `measured_ns` (CLOCK_MONOTONIC) when the cgroup itself
    /// used `usage` bytes. Bounds its raises (see the
    /// [ledger](crate::decider::ledger#hierarchy)).
    AncestorRoom {
        id: CgId,
        bytes: u64,
        usage: u64,
        measured_ns: u64,
    },
}

/// The decider's view of one managed cgroup, for one resource.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub resource: Resource,
    pub id: CgId,
    pub path: String,
    /// The limit in force or being written.
    pub limit: Setting,
    /// Latest usage, in the resource's unit (bytes; cores over the last sample interval).
    pub usage: Option<f64>,
    /// U = R / C.
    pub utilization: Option<f64>,
    /// How fast usage grows (bytes/s; memory only).
    pub growth_rate: Option<f64>,
}

impl Snapshot {
    /// The memory limit, if this is a memory snapshot.
    pub fn memory_limit(&self) -> Option<Limit> {
        match self.limit {
            Setting::Memory(l) => Some(l),
            Setting::Cpu(_) => None,
        }
    }

    /// The CPU quota in cores (`None`: unlimited, or not a CPU snapshot).
    pub fn quota_cores(&self) -> Option<f64> {
        match self.limit {
            Setting::Cpu(q) => q.cores(),
            Setting::Memory(_) => None,
        }
    }
}

/// What the engine needs of a resource's decider beyond [`Decide`]: taking its signals out of
/// [`Signal`], registering from a [`ManageRequest`], its budget, and its view for snapshots.
/// Memory and CPU are its two implementations (below).
trait ResourceDecider: Decide + Send + 'static {
    const RESOURCE: Resource;
    fn signal_of(s: Signal) -> Option<Self::Signal>;
    fn register(&mut self, req: &ManageRequest, now_ns: u64);
    fn set_budget(&mut self, b: Budget);
    /// The room under the cgroup's unmanaged ancestors (memory only).
    fn set_ancestor_room(&mut self, _id: CgId, _bytes: u64, _usage: u64, _measured_ns: u64) {}
    /// What the decider holds about `id`.
    fn view(&self, id: CgId) -> Option<View>;
    /// The limit the decider believes in force, in action units.
    fn believed(&self, id: CgId) -> Option<u64>;
    /// Whether the signal reports a limit the decider does not believe (and no write of ours
    /// explains): the files are re-read before deciding.
    fn disagrees(&self, id: CgId, s: &Self::Signal) -> bool;
    /// The owner's value, re-read from the files at `now`, adopted.
    fn owner_set(&mut self, id: CgId, now: u64, found: Setting);
    /// The files hold `found`, which another writer wrote on the agent's behalf (an echo,
    /// [`WriteMark::is_echo`]): the limit in force, not an owner's. Only memory limits are
    /// ever asked of another writer; the CPU decider has none.
    fn echoed(&mut self, _id: CgId, _now: u64, _found: Setting) {}
    /// `action` not performed: the file held the owner's `found`, adopted instead.
    fn yielded(&mut self, action: &Action, now: u64, found: Setting);
}

/// `units` (an action's `old`) as a setting like `like` (a CPU quota keeps `like`'s period).
fn setting_of(units: u64, like: Setting) -> Setting {
    match like {
        Setting::Memory(_) => Setting::Memory(Limit::from_bytes(units)),
        Setting::Cpu(_) if units == u64::MAX => Setting::Cpu(CpuQuota::Max),
        Setting::Cpu(q) => Setting::Cpu(CpuQuota::Quota {
            quota_us: units,
            period_us: match q {
                CpuQuota::Quota { period_us, .. } => period_us,
                CpuQuota::Max => DEFAULT_CFS_PERIOD_US,
            },
        }),
    }
}

/// A CPU setting as the decider holds it: the quota (`None`: unlimited) and the period.
fn quota_period(q: CpuQuota) -> (Option<u64>, u64) {
    match q {
        CpuQuota::Max => (None, DEFAULT_CFS_PERIOD_US),
        CpuQuota::Quota {
            quota_us,
            period_us,
        } => (Some(quota_us), period_us),
    }
}

/// A decider's view of one cgroup (see [`Snapshot`]).
struct View {
    limit: Setting,
    usage: Option<f64>,
    utilization: Option<f64>,
    growth_rate: Option<f64>,
}

impl ResourceDecider for MemoryDecider {
    const RESOURCE: Resource = Resource::Memory;

    fn signal_of(s: Signal) -> Option<MemorySignal> {
        match s {
            Signal::Memory(m) => Some(m),
            Signal::Cpu(_) => None,
        }
    }

    fn register(&mut self, req: &ManageRequest, now_ns: u64) {
        let (Policy::Memory(policy), Setting::Memory(limit)) = (req.policy, req.writer.current())
        else {
            return;
        };
        self.manage(req.id, req.parent, policy, limit, req.usage, now_ns);
    }

    fn set_budget(&mut self, b: Budget) {
        if let Budget::MemoryAvailable { bytes, measured_ns } = b {
            MemoryDecider::set_available(self, bytes, measured_ns);
        }
    }

    fn set_ancestor_room(&mut self, id: CgId, bytes: u64, usage: u64, measured_ns: u64) {
        MemoryDecider::set_outer_room(self, id, bytes, usage, measured_ns);
    }

    fn believed(&self, id: CgId) -> Option<u64> {
        self.limit(id)
    }

    fn disagrees(&self, id: CgId, s: &MemorySignal) -> bool {
        MemoryDecider::disagrees(self, id, s)
    }

    fn owner_set(&mut self, id: CgId, now: u64, found: Setting) {
        if let Setting::Memory(l) = found {
            MemoryDecider::owner_set(self, id, now, l);
        }
    }

    fn echoed(&mut self, id: CgId, now: u64, found: Setting) {
        if let Setting::Memory(l) = found {
            MemoryDecider::echoed(self, id, now, l);
        }
    }

    fn yielded(&mut self, action: &Action, now: u64, found: Setting) {
        if let Setting::Memory(l) = found {
            MemoryDecider::yielded(self, action, now, l);
        }
    }

    fn view(&self, id: CgId) -> Option<View> {
        Some(View {
            limit: Setting::Memory(Limit::from_bytes(self.limit(id)?)),
            usage: self.usage(id).map(|u| u as f64),
            utilization: self.utilization(id),
            growth_rate: self.allocation_rate(id),
        })
    }
}

/// The CFS period assumed for an unlimited quota (the kernel's default, 100 ms).
const DEFAULT_CFS_PERIOD_US: u64 = 100_000;

impl ResourceDecider for CpuDecider {
    const RESOURCE: Resource = Resource::Cpu;

    fn signal_of(s: Signal) -> Option<CpuSignal> {
        match s {
            Signal::Cpu(c) => Some(c),
            Signal::Memory(_) => None,
        }
    }

    fn register(&mut self, req: &ManageRequest, now_ns: u64) {
        let (Policy::Cpu(policy), Setting::Cpu(quota)) = (req.policy, req.writer.current()) else {
            return;
        };
        let (quota, period_us) = match quota {
            CpuQuota::Max => (None, DEFAULT_CFS_PERIOD_US),
            CpuQuota::Quota {
                quota_us,
                period_us,
            } => (Some(quota_us), period_us),
        };
        self.manage(req.id, req.parent, policy, quota, period_us, now_ns);
    }

    fn set_budget(&mut self, b: Budget) {
        if let Budget::Cpu(c) = b {
            CpuDecider::set_budget(self, c);
        }
    }

    fn believed(&self, id: CgId) -> Option<u64> {
        self.quota_us(id).map(|q| q.unwrap_or(u64::MAX))
    }

    fn disagrees(&self, id: CgId, s: &CpuSignal) -> bool {
        CpuDecider::disagrees(self, id, s)
    }

    fn owner_set(&mut self, id: CgId, now: u64, found: Setting) {
        if let Setting::Cpu(q) = found {
            let (quota, period_us) = quota_period(q);
            CpuDecider::owner_set(self, id, now, quota, period_us);
        }
    }

    fn yielded(&mut self, action: &Action, now: u64, found: Setting) {
        if let Setting::Cpu(q) = found {
            let (quota, period_us) = quota_period(q);
            CpuDecider::yielded(self, action, now, quota, period_us);
        }
    }

    fn view(&self, id: CgId) -> Option<View> {
        let quota = match self.quota_us(id)? {
            None => CpuQuota::Max,
            Some(quota_us) => CpuQuota::Quota {
                quota_us,
                period_us: self.period_us(id).unwrap_or(DEFAULT_CFS_PERIOD_US),
            },
        };
        Some(View {
            limit: Setting::Cpu(quota),
            usage: self.usage_cores(id),
            utilization: self.utilization(id),
            growth_rate: None,
        })
    }
}

/// A managed cgroup's limit files.
struct Writer {
    path: Arc<str>,
    writer: Box<dyn LimitWriter>,
    mark: Option<Arc<WriteMark>>,
}

/// One resource on the engine thread: its decider and the writers of the cgroups it manages.
struct Slot<D> {
    decider: D,
    writers: HashMap<CgId, Writer>,
}

/// A [`Slot`] of any resource, as the handler drives it.
trait SlotOps: Send {
    fn manage(&mut self, req: ManageRequest);
    fn forget(&mut self, id: CgId);
    fn is_managed(&self, id: CgId) -> bool;
    fn signal(&mut self, id: CgId, s: Signal, out: &mut Decision);
    fn applied(&mut self, a: &Action, done_ns: u64, outcome: WriteOutcome);
    /// Re-reads `id`'s limit files when `s` reports a limit the decider does not believe, and
    /// adopts an owner's value found there (marked for the slow side). Hot path: one `pread`
    /// per file, only on disagreement; no allocation.
    fn reread(&mut self, id: CgId, s: &Signal);
    /// `a` was not written: the file held the owner's `found`, adopted instead.
    fn yielded(&mut self, a: &Action, now: u64, found: Setting);
    fn writer(&self, id: CgId) -> Option<(&dyn LimitWriter, Option<&WriteMark>)>;
    fn set_budget(&mut self, b: Budget);
    fn set_ancestor_room(&mut self, id: CgId, bytes: u64, usage: u64, measured_ns: u64);
    fn snapshot(&self) -> Vec<Snapshot>;
}

impl<D: ResourceDecider> SlotOps for Slot<D> {
    fn manage(&mut self, req: ManageRequest) {
        if req.policy.resource() != D::RESOURCE {
            return;
        }
        self.decider.register(&req, req.sampled_ns);
        if let Policy::Memory(p) = &req.policy {
            req.writer
                .set_warning_band(p.headroom, p.headroom_permille());
        }
        self.writers.insert(
            req.id,
            Writer {
                path: req.path,
                writer: req.writer,
                mark: req.mark,
            },
        );
    }

    fn forget(&mut self, id: CgId) {
        self.decider.forget(id);
        self.writers.remove(&id);
    }

    fn is_managed(&self, id: CgId) -> bool {
        self.decider.is_managed(id)
    }

    fn signal(&mut self, id: CgId, s: Signal, out: &mut Decision) {
        match D::signal_of(s) {
            Some(s) => self.decider.on_signal(id, s, out),
            None => out.clear(),
        }
    }

    fn applied(&mut self, a: &Action, done_ns: u64, outcome: WriteOutcome) {
        self.decider.applied(a, done_ns, outcome);
    }

    fn reread(&mut self, id: CgId, s: &Signal) {
        let Some(sig) = D::signal_of(*s) else {
            return;
        };
        if !self.decider.disagrees(id, &sig) {
            return;
        }
        let (Some(w), Some(believed)) = (self.writers.get(&id), self.decider.believed(id)) else {
            return;
        };
        // A cgroup that vanished is noticed by the write or by discovery.
        let Ok((before, found)) = w.writer.refresh() else {
            return;
        };
        if w.writer.holds(found, believed) {
            if before != found {
                // The limit the decider believes, at settings it does not (a CFS period its
                // owner changed): the decider follows, so the disagreement ends here.
                self.decider.owner_set(id, monotonic_ns(), found);
            }
            return;
        }
        let now = monotonic_ns();
        if let Some(m) = w.mark.as_ref().filter(|m| m.is_echo(found, now)) {
            // The kubelet applied one of the agent's resize patches (an older one than its
            // latest write, or the cgroup would hold the same): in force, the agent's own.
            self.decider.echoed(id, now, found);
            m.echoed(found);
            return;
        }
        self.decider.owner_set(id, now, found);
        if let Some(m) = &w.mark {
            m.adopted(setting_of(believed, found), found);
        }
    }

    fn yielded(&mut self, a: &Action, now: u64, found: Setting) {
        self.decider.yielded(a, now, found);
    }

    fn writer(&self, id: CgId) -> Option<(&dyn LimitWriter, Option<&WriteMark>)> {
        self.writers
            .get(&id)
            .map(|w| (&*w.writer, w.mark.as_deref()))
    }

    fn set_budget(&mut self, b: Budget) {
        self.decider.set_budget(b);
    }

    fn set_ancestor_room(&mut self, id: CgId, bytes: u64, usage: u64, measured_ns: u64) {
        self.decider
            .set_ancestor_room(id, bytes, usage, measured_ns);
    }

    fn snapshot(&self) -> Vec<Snapshot> {
        self.writers
            .iter()
            .filter_map(|(id, w)| {
                let v = self.decider.view(*id)?;
                Some(Snapshot {
                    resource: D::RESOURCE,
                    id: *id,
                    path: w.path.to_string(),
                    limit: v.limit,
                    usage: v.usage,
                    utilization: v.utilization,
                    growth_rate: v.growth_rate,
                })
            })
            .collect()
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// What the node can back beyond its reserve (bytes) until the first
    /// [`Budget::MemoryAvailable`] (`u64::MAX`: unbounded).
    pub memory_available: u64,
    /// Node budget for the sum of top-level managed CPU quotas (cores).
    pub cpu_budget_cores: f64,
    /// Decide and log, but write nothing.
    pub dry_run: bool,
    /// Capacity of the record channel to the slow side (records beyond it are counted and
    /// dropped; decisions never wait for the slow side).
    pub record_capacity: usize,
    /// Capacity of the command channel from the slow side (a sender that finds it full waits
    /// up to [`COMMAND_WAIT`] for room, then the command is refused and counted).
    pub command_capacity: usize,
    /// Poll timeout: events submitted without a wakeup are read at least this often.
    pub tick: Duration,
    /// Run the engine thread SCHED_FIFO at this priority (best effort; None: normal).
    pub realtime_priority: Option<i32>,
    /// One engine thread per CPU the process may run on, each pinned to its CPU, sharing the
    /// handler under a lock: the one on the CPU of the event handles it (see
    /// [`run_shared_loop`]). False, a single CPU or more than [`MAX_ENGINE_THREADS`]: one
    /// unpinned thread.
    pub wake_on_event_cpu: bool,
    /// How old a kernel event's report of the limit may be and still stand for the re-read
    /// before a write (ns; see [`REPORTED_LIMIT_FRESH_NS`]). 0, the default: every write is
    /// preceded by its re-read, so that an owner's write is overwritten only if it lands in the
    /// microseconds between the `pread` and the `pwrite`, never in the age of an event.
    pub reported_limit_fresh_ns: u64,
    /// A fault to inject, for tests only (`SCALER_TEST_FAULT`; see [`EngineFault`]).
    pub fault: Option<EngineFault>,
}

/// A fault the engine thread injects into itself, for the tests of the agent's health
/// checks and of refused writes: the agent reads it once at start from the hidden, test-only
/// environment variable `SCALER_TEST_FAULT` (`engine-panic:WHEN`, `engine-stall:WHEN` or
/// `refuse-writes:WHEN`, WHEN being milliseconds after the engine starts, or an absolute path:
/// when (for `refuse-writes`: while) that file exists). Never set it in production.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineFault {
    pub kind: FaultKind,
    pub when: FaultTrigger,
}

/// What an [`EngineFault`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The engine thread panics.
    Panic,
    /// The engine thread stops looping (sleeps for ever).
    Stall,
    /// Every limit write fails as the kernel's EINVAL would, and nothing is written (the
    /// refusal a v1 memory limit above an unmanaged memsw limit met before the agent managed
    /// memsw with the limit; tests of how refusals are handled).
    RefuseWrites,
}

/// When an [`EngineFault`] strikes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultTrigger {
    /// This long after the engine starts.
    After(Duration),
    /// Once this file exists (looked at every tick).
    FileExists(std::path::PathBuf),
}

impl EngineFault {
    /// The environment variable the agent reads it from.
    pub const ENV: &'static str = "SCALER_TEST_FAULT";

    /// Parses `engine-panic:WHEN` or `engine-stall:WHEN` (WHEN: milliseconds, or a path).
    pub fn parse(s: &str) -> Option<EngineFault> {
        let (kind, when) = s.trim().split_once(':')?;
        let kind = match kind.trim() {
            "engine-panic" => FaultKind::Panic,
            "engine-stall" => FaultKind::Stall,
            "refuse-writes" => FaultKind::RefuseWrites,
            _ => return None,
        };
        let when = when.trim();
        let when = if when.starts_with('/') {
            FaultTrigger::FileExists(when.into())
        } else {
            FaultTrigger::After(Duration::from_millis(when.parse().ok()?))
        };
        Some(EngineFault { kind, when })
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            memory_available: u64::MAX,
            cpu_budget_cores: f64::INFINITY,
            dry_run: false,
            record_capacity: 65536,
            command_capacity: DEFAULT_COMMAND_CAPACITY,
            tick: Duration::from_millis(100),
            realtime_priority: Some(DEFAULT_REALTIME_PRIORITY),
            wake_on_event_cpu: true,
            reported_limit_fresh_ns: 0,
            fault: None,
        }
    }
}

/// Default [`EngineConfig::realtime_priority`] (`agent.realtime_priority`): SCHED_FIFO 10, above
/// every SCHED_OTHER task and below the kernel's own realtime threads (priority 50 and up).
pub const DEFAULT_REALTIME_PRIORITY: i32 = 10;

/// [`EngineConfig::wake_on_event_cpu`] starts one thread per CPU only where the process may run
/// on at most this many CPUs; beyond, one thread. The ring buffer's wakeup wakes every waiting
/// thread inside the same interrupt, before the local one can run: each remote one costs that
/// interrupt 1-2 µs on bare metal and 2-13 µs in the VMs measured, so on a larger node the
/// wakeups of the other threads would cost more than the local one saves (20-40 µs), and an
/// event has less chance to be on a CPU whose thread is pinned there.
pub const MAX_ENGINE_THREADS: usize = 8;

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
    /// Set when the engine thread has ended, returned or panicked (a guard on its stack).
    pub exited: AtomicBool,
    /// Refused raises, by resource (memory, cpu) and reason (the index of
    /// [`Skip::refusal`] in [`REFUSAL_REASONS`]).
    pub refused: [[AtomicU64; REFUSAL_REASONS.len()]; 2],
    /// Commands refused because the command channel stayed full for [`COMMAND_WAIT`].
    pub commands_refused: AtomicU64,
    /// Writes made without the re-read before them: the kernel's event had just reported the
    /// limit (see [`REPORTED_LIMIT_FRESH_NS`]).
    pub rereads_skipped: AtomicU64,
}

impl EngineStats {
    /// Refused raises of `resource` for `reason` (one of [`REFUSAL_REASONS`]).
    pub fn refused(&self, resource: Resource, reason: &str) -> u64 {
        REFUSAL_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| {
                self.refused[slot_index(resource)][i].load(Ordering::Relaxed)
            })
    }
}

/// Marks [`EngineStats::exited`] when the engine thread ends, by return or by unwinding.
struct ExitGuard(Arc<EngineStats>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.exited.store(true, Ordering::SeqCst);
    }
}

/// Default [`EngineConfig::command_capacity`]: a sample of 16,384 cgroups fits without a wait.
pub const DEFAULT_COMMAND_CAPACITY: usize = 16384;

/// How long a sender waits for room in a full command channel before the command is refused.
pub const COMMAND_WAIT: Duration = Duration::from_millis(500);

/// A command the engine did not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefused {
    /// The channel stayed full for [`COMMAND_WAIT`] (the engine is behind): counted in
    /// `commands_refused`; try again later.
    #[error(
        "the engine's command channel stayed full for {} ms (the engine thread is behind); \
         refused, tried again later",
        COMMAND_WAIT.as_millis()
    )]
    Full,
    /// The engine thread is gone.
    #[error("the engine thread has stopped")]
    Stopped,
}

/// Sends commands to the engine thread from any slow-side thread: bounded, never blocking for
/// longer than [`COMMAND_WAIT`].
#[derive(Clone)]
pub struct CommandSender {
    tx: SyncSender<Command>,
    wake: StopHandle,
    stats: Arc<EngineStats>,
}

impl CommandSender {
    /// Sends `c` and wakes the engine; when the channel is full, waits up to [`COMMAND_WAIT`]
    /// for room, then refuses (and counts) the command.
    pub fn send(&self, c: Command) -> Result<(), CommandRefused> {
        self.send_within(c, COMMAND_WAIT)
    }

    fn send_within(&self, mut c: Command, wait: Duration) -> Result<(), CommandRefused> {
        let deadline = Instant::now() + wait;
        loop {
            match self.tx.try_send(c) {
                Ok(()) => {
                    self.wake.wake();
                    return Ok(());
                }
                Err(TrySendError::Disconnected(_)) => return Err(CommandRefused::Stopped),
                Err(TrySendError::Full(back)) => {
                    c = back;
                    self.wake.wake();
                    if Instant::now() >= deadline {
                        self.stats.commands_refused.fetch_add(1, Ordering::Relaxed);
                        return Err(CommandRefused::Full);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

/// The handler of the engine thread's loop.
pub(super) struct ScalingHandler {
    /// Indexed by [`slot_index`].
    slots: [Box<dyn SlotOps>; 2],
    decision: Decision,
    dry_run: bool,
    records: SyncSender<Record>,
    commands: Receiver<Command>,
    stats: Arc<EngineStats>,
    /// An injected fault and when it was armed (CLOCK_MONOTONIC ns), for tests.
    fault: Option<(EngineFault, u64)>,
    /// The limit the kernel reported in force with the event being handled (see
    /// [`ReportedLimit`]); `None` outside the handling of a kernel memory event.
    reported: Option<ReportedLimit>,
    /// [`EngineConfig::reported_limit_fresh_ns`].
    reported_fresh_ns: u64,
}

/// A memory limit the kernel read from its page counter when it emitted an event (the
/// event's `limit`): the value a `pread` of the limit file would return, read microseconds
/// earlier. When it is the limit an action starts from, and the writer manages no other file
/// with the limit ([`LimitWriter::limit_only`]), the re-read before the write is skipped: it
/// could tell nothing the event did not, and it costs a system call on the reaction (2-17 µs
/// measured here: the first after the engine slept is slow). No check can close the window in
/// which an owner's write lands just before the agent's: with the re-read it is the microseconds
/// between the `pread` and the `pwrite`; without, the age of the event, at most
/// [`REPORTED_LIMIT_FRESH_NS`] (an older event, from a backlog or a slow wake-up, is re-read).
/// An owner's write older than the event is in the event's figure, and adopted as before.
#[derive(Clone, Copy, Debug)]
struct ReportedLimit {
    cgroup: CgId,
    limit: u64,
    ts_ns: u64,
}

/// How old (from its kernel timestamp) an event's report of the limit may be and still stand
/// for a re-read where [`EngineConfig::reported_limit_fresh_ns`] opts in: 250 µs, above a
/// prompt reaction (about 30-100 µs) and at most the reaction goal of a busy node; an event
/// read from a backlog, or after a slow wake-up, is re-read. Not the default: the owner of a
/// limit comes first (an owner's write within an event's age would be overwritten), and the
/// re-read costs 2-17 µs.
pub const REPORTED_LIMIT_FRESH_NS: u64 = 250_000;

const fn slot_index(r: Resource) -> usize {
    match r {
        Resource::Memory => 0,
        Resource::Cpu => 1,
    }
}

impl ScalingHandler {
    pub(super) fn new(
        cfg: &EngineConfig,
        records: SyncSender<Record>,
        commands: Receiver<Command>,
        stats: Arc<EngineStats>,
    ) -> Self {
        Self {
            slots: [
                Box::new(Slot {
                    decider: MemoryDecider::new(cfg.memory_available),
                    writers: HashMap::new(),
                }),
                Box::new(Slot {
                    decider: CpuDecider::new(cfg.cpu_budget_cores),
                    writers: HashMap::new(),
                }),
            ],
            decision: Decision::new(),
            dry_run: cfg.dry_run,
            records,
            commands,
            stats,
            fault: cfg.fault.clone().map(|f| (f, monotonic_ns())),
            reported: None,
            reported_fresh_ns: cfg.reported_limit_fresh_ns,
        }
    }

    /// Whether the injected fault's time has come (tests only; see [`EngineFault`]).
    fn fault_due(&self) -> bool {
        let Some((f, armed_ns)) = &self.fault else {
            return false;
        };
        match &f.when {
            FaultTrigger::After(d) => monotonic_ns() >= armed_ns + d.as_nanos() as u64,
            FaultTrigger::FileExists(p) => p.exists(),
        }
    }

    /// True while writes are to be refused (an injected `refuse-writes`; tests only).
    fn refusing_writes(&self) -> bool {
        self.fault
            .as_ref()
            .is_some_and(|(f, _)| f.kind == FaultKind::RefuseWrites)
            && self.fault_due()
    }

    /// Strikes the injected fault when its time has come (tests only; see [`EngineFault`]).
    fn inject_fault(&self) {
        let Some((f, _)) = &self.fault else {
            return;
        };
        if !self.fault_due() {
            return;
        }
        match f.kind {
            FaultKind::RefuseWrites => {}
            FaultKind::Panic => {
                panic!(
                    "injected fault ({}): engine thread panics",
                    EngineFault::ENV
                )
            }
            FaultKind::Stall => {
                tracing::warn!(
                    "injected fault ({}): engine thread stalls",
                    EngineFault::ENV
                );
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
    }

    fn slot(&mut self, r: Resource) -> &mut dyn SlotOps {
        &mut *self.slots[slot_index(r)]
    }

    fn send(&self, r: Record) {
        if self.records.try_send(r).is_err() {
            self.stats.records_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Decides about `signal` for `id` and performs the decision; hot path.
    fn decide(&mut self, id: CgId, signal: Signal) {
        let resource = signal.resource();
        let slot = &mut *self.slots[slot_index(resource)];
        // A limit the decider does not believe (a cgroup found before its owner wrote its
        // limit; an owner's change since): the files are re-read and the owner's value
        // adopted before deciding.
        // (Not in a dry run: there the decider's limit is the one it would have written.)
        if !self.dry_run {
            slot.reread(id, &signal);
        }
        slot.signal(id, signal, &mut self.decision);
        self.refused(resource);
        self.execute();
    }

    /// Counts and reports a refused raise of the decision, if any; hot path (no allocation).
    fn refused(&self, resource: Resource) {
        let (Some(skip), Some(refusal)) = (self.decision.skip, self.decision.refusal) else {
            return;
        };
        let Some(reason) = skip.refusal() else {
            return;
        };
        if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == reason) {
            self.stats.refused[slot_index(resource)][i].fetch_add(1, Ordering::Relaxed);
        }
        self.send(Record::Refused(RefusalRecord {
            resource,
            skip,
            refusal,
        }));
    }

    /// Performs the decided actions in order (ancestors first); hot path.
    fn execute(&mut self) {
        for i in 0..self.decision.actions().len() {
            let a = self.decision.actions()[i];
            let refusing = self.fault.is_some() && self.refusing_writes();
            let slot = &mut *self.slots[slot_index(a.resource)];
            let mut written = None;
            let (outcome, errno, done_ns) = if self.dry_run {
                (WriteOutcome::DryRun, None, monotonic_ns())
            } else if refusing {
                (WriteOutcome::Failed, Some(libc::EINVAL), monotonic_ns())
            } else {
                // The writer stamps its completion; the clock is not read a second time.
                // The mark brackets the write, so the slow side never takes this write for
                // someone else's (whether or not this action's record reaches it).
                //
                // Before every write the file is re-read (one `pread` per file on the open
                // descriptors): a value other than the one the decision started from was
                // written by the limit's owner since, and is adopted, not overwritten.
                let reported = self.reported.filter(|r| {
                    r.cgroup == a.cgroup
                        && r.ts_ns == a.trigger_ts_ns
                        && monotonic_ns().saturating_sub(r.ts_ns) < self.reported_fresh_ns
                });
                let result = slot.writer(a.cgroup).map(|(w, mark)| {
                    // The kernel's report stands for the re-read (see `ReportedLimit`).
                    // (The kernel, the decider and the writer all hold the same limit.)
                    let known = reported.is_some_and(|r| {
                        w.limit_only()
                            && w.holds(Setting::Memory(Limit::from_bytes(r.limit)), a.old)
                            && w.holds(w.current(), a.old)
                    });
                    if known {
                        self.stats.rereads_skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    match if known {
                        Ok((w.current(), w.current()))
                    } else {
                        w.refresh()
                    } {
                        // An echo of one of the agent's resize patches (the kubelet wrote
                        // it) is the agent's: the decision stands and is written.
                        Ok((_, found))
                            if !w.holds(found, a.old)
                                && !mark.is_some_and(|m| m.is_echo(found, monotonic_ns())) =>
                        {
                            if let Some(m) = mark {
                                m.adopted(setting_of(a.old, found), found);
                            }
                            return Done::Yielded(found);
                        }
                        Ok(_) => {}
                        Err(e) => return Done::Failed(errno_of(&e)),
                    }
                    if let Some(m) = mark {
                        m.begin();
                    }
                    let r = w.write(a.new);
                    if let Some(m) = mark {
                        m.end(w.current());
                    }
                    match r {
                        Ok(ns) => Done::Written(ns, w.current()),
                        Err(e) => Done::Failed(errno_of(&e)),
                    }
                });
                match result {
                    Some(Done::Written(ns, now)) => {
                        written = Some(now);
                        (WriteOutcome::Written, None, ns)
                    }
                    Some(Done::Yielded(found)) => {
                        // Not an action: the owner's write stands (the slow side learns it
                        // from the mark, logs and counts it).
                        slot.yielded(&a, monotonic_ns(), found);
                        continue;
                    }
                    Some(Done::Failed(errno)) => {
                        (WriteOutcome::Failed, Some(errno), monotonic_ns())
                    }
                    None => (WriteOutcome::Failed, Some(libc::ENOENT), monotonic_ns()),
                }
            };
            slot.applied(&a, done_ns, outcome);
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
                written,
            }));
        }
    }

    pub(super) fn command(&mut self, c: Command) {
        match c {
            Command::Manage(req) => {
                let r = req.policy.resource();
                self.slot(r).manage(*req);
            }
            Command::Forget(r, id) => self.slot(r).forget(id),
            Command::Signal(id, s) => self.decide(id, s),
            Command::Snapshot(r, reply) => {
                let _ = reply.try_send(self.slot(r).snapshot());
            }
            Command::SetBudget(b) => self.slot(b.resource()).set_budget(b),
            Command::AncestorRoom {
                id,
                bytes,
                usage,
                measured_ns,
            } => self
                .slot(Resource::Memory)
                .set_ancestor_room(id, bytes, usage, measured_ns),
        }
    }

    /// The kernel's event as a decider signal, with the cgroup it is for.
    fn signal_of(&self, ev: &MemEvent) -> Option<(CgId, Signal)> {
        if let Some(c) = ev.cpu() {
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
            return Some((ev.cgroup_id, Signal::Cpu(signal)));
        }
        if !ev.is_pressure() {
            return None;
        }
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
        Some((ev.target_id, Signal::Memory(signal)))
    }
}

/// How a write of [`ScalingHandler::execute`] ended.
enum Done {
    /// Written, at this time (ns), leaving this setting.
    Written(u64, Setting),
    /// Not written: the file held this owner's value, adopted instead.
    Yielded(Setting),
    /// The write (or the re-read before it) failed with this errno (0: not a write error).
    Failed(i32),
}

fn errno_of(e: &crate::actuator::ActuatorError) -> i32 {
    match e.errno() {
        Some(n) => n as i32,
        None if e.kind() == crate::actuator::ErrorKind::Gone => libc::ENODEV,
        None => 0,
    }
}

/// Commands handled between two drains of the ring buffer. Each costs O(1) (a forget touches
/// the cgroup's managed children only), a snapshot O(managed cgroups).
pub(super) const COMMANDS_PER_TICK: usize = 64;

impl Handler for ScalingHandler {
    fn on_event(&mut self, ev: &MemEvent) {
        if let Some((id, signal)) = self.signal_of(ev) {
            let r = signal.resource();
            if self.slot(r).is_managed(id) {
                if r == Resource::Cpu {
                    self.stats.cpu_signals.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(ev.kind, EventKind::ReclaimBegin | EventKind::UsageHigh) {
                    self.reported = Some(ReportedLimit {
                        cgroup: id,
                        limit: ev.limit,
                        ts_ns: ev.ts_ns,
                    });
                }
                self.decide(id, signal);
                self.reported = None;
            } else if r == Resource::Memory
                && ev.target_id != ev.cgroup_id
                && self.slot(r).is_managed(ev.cgroup_id)
            {
                // An unmanaged ancestor's limit binds: no limit we may change would help.
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

    fn on_tick(&mut self) -> bool {
        if self.fault.is_some() {
            self.inject_fault();
        }
        // A bounded batch: a burst of commands (discovery managing or forgetting many cgroups
        // at once) is interleaved with ring-buffer drains instead of holding events back.
        for _ in 0..COMMANDS_PER_TICK {
            match self.commands.try_recv() {
                Ok(c) => self.command(c),
                Err(_) => return false,
            }
        }
        true
    }
}

/// The running engine: its threads (one, or one per CPU: [`EngineConfig::wake_on_event_cpu`])
/// own the record source, the deciders and the writers.
pub struct Engine {
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    control: StopHandle,
    commands: CommandSender,
    records: Option<Receiver<Record>>,
    stats: Arc<EngineStats>,
}

impl Engine {
    /// Starts the engine thread(s) on `source` (the BPF ring buffer).
    pub fn start(
        source: impl RecordSource + Send + 'static,
        cfg: EngineConfig,
    ) -> std::io::Result<Self> {
        let control = StopHandle::new()?;
        let (cmd_tx, cmd_rx) = sync_channel(cfg.command_capacity.max(1));
        let (rec_tx, rec_rx) = sync_channel(cfg.record_capacity);
        let stats = Arc::new(EngineStats::default());
        let handler = ScalingHandler::new(&cfg, rec_tx, cmd_rx, stats.clone());
        let ring = std::os::fd::AsRawFd::as_raw_fd(&source.fd());
        let shared = Arc::new(Mutex::new(Shared { source, handler }));
        let cpus = if cfg.wake_on_event_cpu {
            allowed_cpus()
        } else {
            Vec::new()
        };
        // One unpinned thread, or one pinned to each CPU (the first runs the ticks).
        let pins: Vec<Option<usize>> = if (2..=MAX_ENGINE_THREADS).contains(&cpus.len()) {
            cpus.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let mut threads = Vec::with_capacity(pins.len());
        for (i, pin) in pins.into_iter().enumerate() {
            let ctl = control.clone();
            let st = stats.clone();
            let shared = shared.clone();
            let tick = (i == 0).then_some(cfg.tick);
            let prio = cfg.realtime_priority;
            let name = match pin {
                Some(cpu) if i > 0 => format!("scaler-engine{cpu}"),
                _ => "scaler-engine".to_owned(),
            };
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let _exited = ExitGuard(st.clone());
                if let Some(cpu) = pin {
                    pin_to(cpu);
                }
                if let Some(p) = prio {
                    set_realtime(p);
                }
                // SAFETY: the descriptor belongs to the source in `shared`, which this thread
                // holds (and so keeps open) until it returns.
                let ring = unsafe { std::os::fd::BorrowedFd::borrow_raw(ring) };
                run_shared_loop(&shared, ring, &ctl, tick, &st.loop_stats)
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Stop the threads already started before reporting.
                    control.stop();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self {
            threads,
            commands: CommandSender {
                tx: cmd_tx,
                wake: control.clone(),
                stats: stats.clone(),
            },
            control,
            records: Some(rec_rx),
            stats,
        })
    }

    /// How many engine threads run (one, or one per CPU).
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Sends a command; the engine handles it before its next poll. See [`CommandSender::send`].
    pub fn send(&self, c: Command) -> Result<(), CommandRefused> {
        self.commands.send(c)
    }

    /// A command sender usable from other threads, with the handle that wakes the engine.
    pub fn command_sender(&self) -> (CommandSender, StopHandle) {
        (self.commands.clone(), self.control.clone())
    }

    /// Takes the receiving end of the record channel (once).
    pub fn take_records(&mut self) -> Option<Receiver<Record>> {
        self.records.take()
    }

    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// A snapshot of one resource's managed cgroups (waits up to a second for the engine).
    pub fn snapshot(&self, resource: Resource) -> Vec<Snapshot> {
        snapshot_via(&self.commands, &self.control, resource)
    }

    pub fn control(&self) -> &StopHandle {
        &self.control
    }

    /// Whether the engine threads are still running (false once one returned or panicked).
    pub fn is_running(&self) -> bool {
        !self.threads.is_empty() && self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops the thread after it handled what it already read.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    /// Like [`Engine::stop`], but waits at most `timeout` for the thread to end: a stalled
    /// thread is left behind (it ends with the process) and `Err(TimedOut)` returned.
    pub fn stop_within(mut self, timeout: Duration) -> std::io::Result<()> {
        self.control.stop();
        let deadline = std::time::Instant::now() + timeout;
        while self.threads.iter().any(|t| !t.is_finished()) {
            if std::time::Instant::now() >= deadline {
                // Dropping the handles detaches the threads; Drop finds nothing to join.
                self.threads.clear();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the engine thread did not stop within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        self.control.stop();
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("engine thread panicked")));
            // The first failure is the cause (the others end because a thread panicked).
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Asks the engine (through a command sender from [`Engine::command_sender`]) for a snapshot
/// of one resource; waits up to a second, and returns nothing if the engine does not answer.
pub fn snapshot_via(
    commands: &CommandSender,
    _wake: &StopHandle,
    resource: Resource,
) -> Vec<Snapshot> {
    let (tx, rx) = sync_channel(1);
    if commands.send(Command::Snapshot(resource, tx)).is_err() {
        return Vec::new();
    }
    rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The CPUs this process may run on (its affinity mask), in order; empty if unknown.
pub(super) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size for the calling thread's mask.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Best effort: pins the calling thread to `cpu` (a CPU taken away later, by hotplug or a
/// cpuset change, makes the kernel move it; it then works as an unpinned thread).
fn pin_to(cpu: usize) {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from the process's mask, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid pointer and size, for the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        tracing::debug!(
            "engine thread not pinned to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
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

#[cfg(test)]
mod channel_tests {
    use super::*;

    #[test]
    fn a_full_command_channel_refuses_after_a_short_wait_and_counts() {
        let (tx, rx) = sync_channel(1);
        let stats = Arc::new(EngineStats::default());
        let s = CommandSender {
            tx,
            wake: StopHandle::new().unwrap(),
            stats: stats.clone(),
        };
        let budget = || Command::SetBudget(Budget::Cpu(1.0));
        s.send_within(budget(), Duration::ZERO).unwrap();
        // Full: refused after the wait, and counted.
        let t = Instant::now();
        assert_eq!(
            s.send_within(budget(), Duration::from_millis(20)),
            Err(CommandRefused::Full)
        );
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert_eq!(stats.commands_refused.load(Ordering::Relaxed), 1);
        // Room again once the engine takes one.
        assert!(rx.try_recv().is_ok());
        s.send_within(budget(), Duration::ZERO).unwrap();
        // A stopped engine refuses at once, without counting.
        drop(rx);
        assert_eq!(s.send(budget()), Err(CommandRefused::Stopped));
        assert_eq!(stats.commands_refused.load(Ordering::Relaxed), 1);
    }
}
