//! The competitors: each a real implementation of one way to learn of pressure, all acting
//! through the same [`ScaleRule`] and the same pre-opened limit files ([`Actuator`], on the
//! project's [`LimitWriter`]s: [`MemoryActuator`], [`CpuActuator`]). The kernel's notification
//! mechanisms they wait on are the project's too ([`scaler::cgroupfs::notify`]).

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use scaler::actuator::{CpuActuator, LimitWriter, MemoryActuator, MemoryOptions, NumberFile};
use scaler::cgroupfs::notify::{FileWatch, PsiKind, PsiResource, PsiTrigger, V1Event, V1EventKind};
use scaler::cgroupfs::{flat_keyed, Cgroup, CgroupError, CgroupVersion, CpuQuota, CpuStat, Limit};
use scaler::clock::monotonic_ns;
use serde::Serialize;

use super::rule::{ScaleRule, Signal};
use super::sys::{poll, thread_cpu_ns, EventFd};
use super::BenchError;

/// Which competitor.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum CompetitorId {
    /// A static limit: no scaler.
    Static,
    /// Polling usage (memory) or `cpu.stat` (CPU) every second.
    #[serde(rename = "poll-1s")]
    Poll1s,
    /// Polling every 100 ms.
    #[serde(rename = "poll-100ms")]
    Poll100ms,
    /// PSI triggers on the cgroup's `memory.pressure` / `cpu.pressure`.
    Psi,
    /// cgroup v1 `memory.usage_in_bytes` threshold eventfd (`cgroup.event_control`).
    #[serde(rename = "v1-threshold")]
    V1Threshold,
    /// cgroup v2 `memory.events` change notification (`high` / `max` counters).
    #[serde(rename = "v2-memory-events")]
    V2MemoryEvents,
    /// The eBPF scaler (`scaler exec`, or the engine in-process).
    Ebpf,
}

impl CompetitorId {
    /// Every competitor, in table order.
    pub const ALL: [CompetitorId; 7] = [
        Self::Static,
        Self::Poll1s,
        Self::Poll100ms,
        Self::Psi,
        Self::V1Threshold,
        Self::V2MemoryEvents,
        Self::Ebpf,
    ];

    /// Short name (CLI, JSON, tables).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Poll1s => "poll-1s",
            Self::Poll100ms => "poll-100ms",
            Self::Psi => "psi",
            Self::V1Threshold => "v1-threshold",
            Self::V2MemoryEvents => "v2-memory-events",
            Self::Ebpf => "ebpf",
        }
    }

    /// One-line description for the report.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Static => "static limit, no scaler",
            Self::Poll1s => "polls usage (memory) or cpu.stat nr_throttled (CPU) every 1 s",
            Self::Poll100ms => "polls usage (memory) or cpu.stat nr_throttled (CPU) every 100 ms",
            Self::Psi => "PSI trigger on the cgroup's memory.pressure / cpu.pressure, smallest window accepted",
            Self::V1Threshold => "cgroup v1 memory.usage_in_bytes threshold eventfd, armed headroom below the limit",
            Self::V2MemoryEvents => "cgroup v2 memory.events notification (memory.high set headroom below memory.max)",
            Self::Ebpf => "the eBPF scaler (scaler exec: kernel events -> decider -> pre-opened write)",
        }
    }

    /// Parses a name as printed by [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Whether the mechanism applies to CPU workloads at all.
    pub const fn does_cpu(self) -> bool {
        !matches!(self, Self::V1Threshold | Self::V2MemoryEvents)
    }
}

/// Which limit an [`Actuator`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// Memory hard limit, bytes.
    Memory,
    /// CFS quota, microseconds per period.
    Cpu,
}

/// One limit write performed during a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ActionRecord {
    /// CLOCK_MONOTONIC right after the write returned.
    pub written_ns: u64,
    /// Limit before.
    pub old: u64,
    /// Limit written.
    pub new: u64,
    /// What the competitor reacted to.
    pub trigger: &'static str,
}

/// The limit files of a run, pre-opened by the project's actuator, with the log of every
/// write. Every in-process competitor writes through it, so the write path and its timestamp
/// are identical for all (and the eBPF scaler's engine writes through the same
/// [`LimitWriter`]s).
#[derive(Debug)]
pub struct Actuator {
    /// Memory: bytes (v1 `memory.limit_in_bytes`, v2 `memory.max`); CPU: the CFS quota in µs
    /// per period (v1 `cpu.cfs_quota_us`, v2 `cpu.max`).
    writer: Box<dyn LimitWriter + Sync>,
    /// v2 `memory.high`, also written (to `new - headroom`) by the memory.events competitor.
    high: Option<(Cgroup, u64)>,
    /// CPU period (µs) of the quota.
    period_us: u64,
    current: AtomicU64,
    log: Mutex<Vec<ActionRecord>>,
    changed: EventFd,
}

impl Actuator {
    /// Opens the limit files of `cgroup` for `resource` and sets the starting limit `start`
    /// (CPU: a quota of `start` µs per `period_us`) through them; that write is not logged.
    pub fn open(
        cgroup: &Cgroup,
        resource: Resource,
        start: u64,
        period_us: u64,
    ) -> Result<Self, BenchError> {
        let writer: Box<dyn LimitWriter + Sync> = match resource {
            Resource::Memory => {
                let m = MemoryActuator::open(cgroup, MemoryOptions::default())?;
                m.set_memory_limit(Limit::Bytes(start))?;
                Box::new(m)
            }
            Resource::Cpu => {
                // The period too: every later write sets the quota at the period in force.
                let c = CpuActuator::open(cgroup)?;
                c.set_cpu_quota(CpuQuota::Quota {
                    quota_us: start,
                    period_us,
                })?;
                Box::new(c)
            }
        };
        Ok(Self {
            writer,
            high: None,
            period_us,
            current: AtomicU64::new(start),
            log: Mutex::new(Vec::new()),
            changed: EventFd::new().map_err(|source| BenchError::Os {
                call: "eventfd",
                source,
            })?,
        })
    }

    /// Also keeps v2 `memory.high` of `cgroup` at `limit - headroom` on every write.
    pub fn with_high(mut self, cgroup: &Cgroup, headroom: u64) -> Result<Self, BenchError> {
        let cur = self.current();
        cgroup.write("memory.high", &cur.saturating_sub(headroom).to_string())?;
        self.high = Some((cgroup.clone(), headroom));
        Ok(self)
    }

    /// The limit last written (or the starting one).
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// The CPU period (µs) the quota is relative to.
    pub fn period_us(&self) -> u64 {
        self.period_us
    }

    /// Writes `new`; logs it with the completion time (returned); signals
    /// [`changed_fd`](Self::changed_fd).
    pub fn set(&self, new: u64, trigger: &'static str) -> Result<u64, BenchError> {
        let old = self.current();
        let written_ns = self.writer.write(new)?;
        // memory.max is raised before memory.high, so high never exceeds max; the write's
        // time is memory.max's.
        if let Some((cg, headroom)) = &self.high {
            cg.write("memory.high", &new.saturating_sub(*headroom).to_string())?;
        }
        self.current.store(new, Ordering::Release);
        self.changed.signal();
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ActionRecord {
                written_ns,
                old,
                new,
                trigger,
            });
        Ok(written_ns)
    }

    /// An eventfd signalled after every write (for the onset observer).
    pub fn changed_fd(&self) -> &EventFd {
        &self.changed
    }

    /// The writes so far.
    pub fn actions(&self) -> Vec<ActionRecord> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Everything a running competitor needs.
pub struct CompetitorCtx {
    /// The limit it raises.
    pub actuator: Arc<Actuator>,
    /// The rule.
    pub rule: Box<dyn ScaleRule>,
    /// The run's memory or cpu cgroup.
    pub cgroup: Cgroup,
    /// The unified-hierarchy cgroup (PSI), if any.
    pub unified: Option<Cgroup>,
    /// Early-warning headroom below the limit (memory).
    pub headroom: u64,
    /// PSI trigger window (µs) that the kernel accepted in the probe.
    pub psi_window_us: Option<u64>,
    /// Signalled to stop.
    pub stop: Arc<EventFd>,
}

/// What a competitor thread reports when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CompetitorStats {
    /// CPU time of the competitor's own thread.
    pub cpu_ns: u64,
    /// Signals it received (ticks, eventfd wakeups, PSI events).
    pub wakeups: u64,
    /// First error it hit, if any (it stops acting then).
    pub error: Option<String>,
}

/// A competitor thread.
pub struct Running {
    handle: JoinHandle<CompetitorStats>,
    stop: Arc<EventFd>,
}

impl Running {
    /// Stops the thread and returns its stats.
    pub fn stop(self) -> CompetitorStats {
        self.stop.signal();
        self.handle.join().unwrap_or_else(|_| CompetitorStats {
            error: Some("competitor thread panicked".into()),
            ..Default::default()
        })
    }
}

/// Starts competitor `id` for a run on `resource`; `None` for [`CompetitorId::Static`] (and for
/// [`CompetitorId::Ebpf`], which runs as its own process). Returns once the competitor is armed.
pub fn start(
    id: CompetitorId,
    resource: Resource,
    ctx: CompetitorCtx,
) -> Result<Option<Running>, BenchError> {
    let stop = Arc::clone(&ctx.stop);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), BenchError>>();
    let body: Box<dyn FnOnce(CompetitorCtx, Ready) -> CompetitorStats + Send> = match (id, resource)
    {
        (CompetitorId::Static | CompetitorId::Ebpf, _) => return Ok(None),
        (CompetitorId::Poll1s, r) => {
            Box::new(move |c, rd| poll_loop(c, rd, r, Duration::from_secs(1)))
        }
        (CompetitorId::Poll100ms, r) => {
            Box::new(move |c, rd| poll_loop(c, rd, r, Duration::from_millis(100)))
        }
        (CompetitorId::Psi, r) => Box::new(move |c, rd| psi_loop(c, rd, r)),
        (CompetitorId::V1Threshold, Resource::Memory) => Box::new(threshold_loop),
        (CompetitorId::V2MemoryEvents, Resource::Memory) => Box::new(memory_events_loop),
        (id, Resource::Cpu) => {
            return Err(BenchError::NotApplicable {
                competitor: id.name(),
                what: "CPU workloads",
            })
        }
    };
    let handle = std::thread::Builder::new()
        .name(format!("bench-{}", id.name()))
        .spawn(move || body(ctx, Ready { tx: Some(ready_tx) }))
        .map_err(|source| BenchError::Os {
            call: "thread spawn",
            source,
        })?;
    const READY_TIMEOUT: Duration = Duration::from_secs(10);
    let why = match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(())) => return Ok(Some(Running { handle, stop })),
        Ok(Err(e)) => e,
        Err(_) => BenchError::NotReady(READY_TIMEOUT),
    };
    stop.signal();
    let _ = handle.join();
    Err(BenchError::CompetitorFailed {
        competitor: id.name(),
        source: Box::new(why),
    })
}

/// Tells the starter the competitor is armed (or why it could not be).
struct Ready {
    tx: Option<std::sync::mpsc::Sender<Result<(), BenchError>>>,
}

impl Ready {
    fn ok(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(()));
        }
    }

    fn fail(&mut self, e: impl Into<BenchError>) -> CompetitorStats {
        let e = e.into();
        let msg = causes(&e);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(e));
        }
        CompetitorStats {
            error: Some(msg),
            ..Default::default()
        }
    }
}

/// Opens the memory usage of `cgroup` for reading with one `pread` each time (v1
/// `memory.usage_in_bytes`, v2 `memory.current`). Every thread opens its own: reads of one
/// open kernfs file are serialized.
pub fn open_usage(cgroup: &Cgroup) -> Result<NumberFile, BenchError> {
    let name = match cgroup.version() {
        CgroupVersion::V1 => "memory.usage_in_bytes",
        CgroupVersion::V2 => "memory.current",
    };
    Ok(NumberFile::open(cgroup.file(name))?)
}

/// Opens `cpu.stat` of `cgroup` for reading with one `pread` each time.
pub fn open_cpu_stat(cgroup: &Cgroup) -> Result<FileWatch, BenchError> {
    Ok(FileWatch::open(cgroup, "cpu.stat")?)
}

/// Reads a pre-opened `cpu.stat`.
pub fn read_cpu_stat(f: &FileWatch, version: CgroupVersion) -> Result<CpuStat, BenchError> {
    let mut buf = [0u8; 1024];
    let n = f.read_into(&mut buf)?;
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    CpuStat::parse(text, version).map_err(|_| BenchError::Parse {
        path: f.path().to_owned(),
        text: text.to_owned(),
    })
}

/// Reads a `cpu.stat` into a [`Signal::CpuStat`] for the quota in force.
pub fn cpu_signal(
    stat: &FileWatch,
    version: CgroupVersion,
    quota_us: u64,
    period_us: u64,
) -> Result<Signal, BenchError> {
    let s = read_cpu_stat(stat, version)?;
    Ok(Signal::CpuStat {
        // v1 cpu.stat has no usage (that is cpuacct's): 0, which only matters for scale-down.
        usage_ns: s.usage_ns.unwrap_or(0),
        nr_throttled: s.nr_throttled,
        throttled_ns: s.throttled_ns,
        quota_us,
        period_us,
    })
}

/// What a competitor reads to turn a wakeup into a [`Signal`].
enum Reader {
    /// Memory usage.
    Memory(NumberFile),
    /// `cpu.stat`.
    Cpu(FileWatch),
}

impl Reader {
    fn open(ctx: &CompetitorCtx, resource: Resource) -> Result<Self, BenchError> {
        Ok(match resource {
            Resource::Memory => Self::Memory(open_usage(&ctx.cgroup)?),
            Resource::Cpu => Self::Cpu(open_cpu_stat(&ctx.cgroup)?),
        })
    }

    /// CPU: gives the decider a first `cpu.stat` sample before the workload starts, so the
    /// first throttled period seen is a change from it (as a real agent would have).
    fn baseline(&self, ctx: &mut CompetitorCtx) -> Result<(), BenchError> {
        if let Self::Cpu(_) = self {
            let signal = self.signal(ctx, false)?;
            if ctx.rule.decide(monotonic_ns(), signal).is_some() {
                // A raise before any work would be a decider bug; do not write it.
                ctx.rule.applied(monotonic_ns(), false);
            }
        }
        Ok(())
    }

    /// The signal now; `pressure` selects [`Signal::Pressure`] over
    /// [`Signal::EarlyWarning`] for memory.
    fn signal(&self, ctx: &CompetitorCtx, pressure: bool) -> Result<Signal, BenchError> {
        let limit = ctx.actuator.current();
        match self {
            Self::Memory(u) => {
                let usage = u.read_u64()?;
                Ok(if pressure {
                    Signal::Pressure { usage, limit }
                } else {
                    Signal::EarlyWarning { usage, limit }
                })
            }
            Self::Cpu(stat) => {
                cpu_signal(stat, ctx.cgroup.version(), limit, ctx.actuator.period_us())
            }
        }
    }
}

/// Applies the rule to a signal; writes if it says so, and reports the write back to it.
fn react(ctx: &mut CompetitorCtx, signal: Signal, trigger: &'static str) -> Result<(), BenchError> {
    if let Some(new) = ctx.rule.decide(monotonic_ns(), signal) {
        match ctx.actuator.set(new, trigger) {
            Ok(done_ns) => ctx.rule.applied(done_ns, true),
            Err(e) => {
                ctx.rule.applied(monotonic_ns(), false);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The stats of a competitor thread that stops (with the error that stopped it, if any).
fn finish(start_cpu: u64, wakeups: u64, error: Option<BenchError>) -> CompetitorStats {
    CompetitorStats {
        cpu_ns: thread_cpu_ns().saturating_sub(start_cpu),
        wakeups,
        error: error.as_ref().map(|e| causes(e)),
    }
}

/// A failed `poll(2)` of a competitor thread.
fn poll_failed(source: std::io::Error) -> BenchError {
    BenchError::Os {
        call: "poll",
        source,
    }
}

/// Polling: every `interval`, memory: act if usage > limit - headroom; CPU: act if
/// `nr_throttled` grew since the last tick.
fn poll_loop(
    mut ctx: CompetitorCtx,
    mut ready: Ready,
    resource: Resource,
    interval: Duration,
) -> CompetitorStats {
    let cpu0 = thread_cpu_ns();
    let reader = match Reader::open(&ctx, resource).and_then(|r| r.baseline(&mut ctx).map(|()| r)) {
        Ok(r) => r,
        Err(e) => return ready.fail(e),
    };
    ready.ok();
    let mut wakeups = 0;
    let mut next = Instant::now() + interval;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match poll(&[(ctx.stop.fd(), libc::POLLIN)], Some(wait)) {
            Ok(r) if r[0] != 0 => break,
            Ok(_) => {}
            Err(e) => return finish(cpu0, wakeups, Some(poll_failed(e))),
        }
        if Instant::now() < next {
            continue;
        }
        next += interval;
        wakeups += 1;
        let result = reader.signal(&ctx, false).and_then(|signal| match signal {
            // Memory: act when usage is within the headroom of the limit.
            Signal::EarlyWarning { usage, limit }
                if usage.saturating_add(ctx.headroom) <= limit =>
            {
                Ok(())
            }
            // CPU: every sample goes to the decider, which acts on throttling.
            signal => react(&mut ctx, signal, "poll"),
        });
        if let Err(e) = result {
            return finish(cpu0, wakeups, Some(e));
        }
    }
    finish(cpu0, wakeups, None)
}

/// Arms a `some` PSI trigger on `cgroup`'s pressure file for `resource`: POLLPRI on it reports
/// `threshold_us` of stall within `window_us`.
pub fn psi_trigger(
    cgroup: &Cgroup,
    resource: Resource,
    threshold_us: u64,
    window_us: u64,
) -> Result<PsiTrigger, CgroupError> {
    PsiTrigger::arm(
        cgroup,
        match resource {
            Resource::Memory => PsiResource::Memory,
            Resource::Cpu => PsiResource::Cpu,
        },
        PsiKind::Some,
        Duration::from_micros(threshold_us),
        Duration::from_micros(window_us),
    )
}

/// The most sensitive stall threshold a trigger asks for: 1% of the window (the kernel allows
/// any threshold below the window; smaller ones would fire on noise).
pub fn psi_threshold_us(window_us: u64) -> u64 {
    (window_us / 100).max(1000)
}

/// Probes the smallest PSI trigger window this process may use on `cgroup`'s
/// `memory.pressure` (500 ms needs CAP_SYS_RESOURCE; unprivileged triggers need multiples of
/// 2 s).
pub fn probe_psi_window(cgroup: &Cgroup) -> Result<u64, PsiUnavailable> {
    let probe = |window_us: u64| {
        psi_trigger(
            cgroup,
            Resource::Memory,
            psi_threshold_us(window_us),
            window_us,
        )
        .map(|_| window_us)
        .map_err(|e| PsiUnavailable::Rejected {
            path: cgroup.file("memory.pressure"),
            window_us,
            source: Arc::new(e),
        })
    };
    // The privileged window first; the unprivileged one's refusal is the one reported.
    probe(500_000).or_else(|_| probe(2_000_000))
}

/// Why PSI triggers cannot be used in this benchmark (kept for every run, and in the JSON).
#[derive(Clone, Debug, thiserror::Error)]
pub enum PsiUnavailable {
    #[error("no cgroup v2 (unified) hierarchy mounted")]
    NoUnifiedHierarchy,
    #[error("no unified cgroup")]
    NoUnifiedCgroup,
    #[error("{path} does not exist (kernel without PSI?)")]
    NoPressureFile { path: PathBuf },
    /// The kernel refused every window probed; the last refusal.
    #[error("no PSI trigger accepted on {path}: window {} ms", .window_us / 1000)]
    Rejected {
        path: PathBuf,
        window_us: u64,
        #[source]
        source: Arc<CgroupError>,
    },
}

/// An error and its causes, on one line. A cause whose text the line already holds (a
/// message that quotes its source) is not repeated.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = c.source();
    }
    s
}

/// PSI: a trigger on the unified cgroup's pressure file; on each event, apply the rule.
fn psi_loop(mut ctx: CompetitorCtx, mut ready: Ready, resource: Resource) -> CompetitorStats {
    let cpu0 = thread_cpu_ns();
    let (Some(unified), Some(window)) = (ctx.unified.clone(), ctx.psi_window_us) else {
        return ready.fail(BenchError::NoUnifiedCgroup);
    };
    let trig = match psi_trigger(&unified, resource, psi_threshold_us(window), window) {
        Ok(f) => f,
        Err(e) => return ready.fail(BenchError::PsiTrigger(e)),
    };
    let reader = match Reader::open(&ctx, resource).and_then(|r| r.baseline(&mut ctx).map(|()| r)) {
        Ok(r) => r,
        Err(e) => return ready.fail(e),
    };
    ready.ok();
    let mut wakeups = 0;
    loop {
        let r = match poll(
            &[
                (ctx.stop.fd(), libc::POLLIN),
                (trig.as_fd().as_raw_fd(), libc::POLLPRI),
            ],
            None,
        ) {
            Ok(r) => r,
            Err(e) => return finish(cpu0, wakeups, Some(poll_failed(e))),
        };
        if r[0] != 0 {
            break;
        }
        if r[1] & libc::POLLERR != 0 {
            return finish(cpu0, wakeups, Some(BenchError::PsiPollErr));
        }
        if r[1] & libc::POLLPRI != 0 {
            wakeups += 1;
            let result = reader
                .signal(&ctx, true)
                .and_then(|signal| react(&mut ctx, signal, "psi"));
            if let Err(e) = result {
                return finish(cpu0, wakeups, Some(e));
            }
        }
    }
    finish(cpu0, wakeups, None)
}

/// A v1 usage threshold registration ([`V1Event`]): an eventfd signalled when
/// `memory.usage_in_bytes` crosses the threshold (either way). Unregistered when dropped.
pub struct ThresholdArm {
    event: V1Event,
    /// The threshold armed, bytes.
    pub threshold: u64,
}

impl ThresholdArm {
    /// Registers a threshold on the v1 memory cgroup `cgroup`.
    pub fn arm(cgroup: &Cgroup, threshold: u64) -> Result<Self, BenchError> {
        Ok(Self {
            event: V1Event::arm(cgroup, V1EventKind::UsageThreshold(threshold))?,
            threshold,
        })
    }

    /// The eventfd to poll.
    pub fn fd(&self) -> i32 {
        self.event.as_fd().as_raw_fd()
    }

    /// Consumes pending notifications.
    pub fn take(&self) -> u64 {
        self.event.take().unwrap_or(0)
    }
}

/// The threshold armed `headroom` below `limit` (half the limit if the headroom is larger).
pub fn threshold_for(limit: u64, headroom: u64) -> u64 {
    if limit > headroom.saturating_mul(2) {
        limit - headroom
    } else {
        limit / 2
    }
}

/// v1 threshold eventfd: armed `headroom` below the limit, re-armed after each raise.
fn threshold_loop(mut ctx: CompetitorCtx, mut ready: Ready) -> CompetitorStats {
    let cpu0 = thread_cpu_ns();
    if ctx.cgroup.version() != CgroupVersion::V1 {
        return ready.fail(BenchError::WrongVersion {
            mechanism: "threshold eventfds",
            version: CgroupVersion::V1,
        });
    }
    let usage = match open_usage(&ctx.cgroup) {
        Ok(u) => Some(u),
        Err(e) => return ready.fail(e),
    };
    let mut arm = match ThresholdArm::arm(
        &ctx.cgroup,
        threshold_for(ctx.actuator.current(), ctx.headroom),
    ) {
        Ok(a) => a,
        Err(e) => return ready.fail(e),
    };
    ready.ok();
    let mut wakeups = 0;
    // A crossing that happened before the mark was armed: handled without waiting.
    let mut pending = false;
    loop {
        let r = match poll(
            &[(ctx.stop.fd(), libc::POLLIN), (arm.fd(), libc::POLLIN)],
            pending.then_some(Duration::ZERO),
        ) {
            Ok(r) => r,
            Err(e) => return finish(cpu0, wakeups, Some(poll_failed(e))),
        };
        if r[0] != 0 {
            break;
        }
        if r[1] == 0 && !pending {
            continue;
        }
        pending = false;
        arm.take();
        wakeups += 1;
        let mut step = || -> Result<Option<ThresholdArm>, BenchError> {
            let before = ctx.actuator.current();
            let used = usage.as_ref().map_or(Ok(0), NumberFile::read_u64)?;
            if used < arm.threshold {
                // A downward crossing.
                return Ok(None);
            }
            let limit = ctx.actuator.current();
            react(
                &mut ctx,
                Signal::EarlyWarning { usage: used, limit },
                "v1_threshold",
            )?;
            let now = ctx.actuator.current();
            if now == before {
                return Ok(None);
            }
            Ok(Some(ThresholdArm::arm(
                &ctx.cgroup,
                threshold_for(now, ctx.headroom),
            )?))
        };
        match step() {
            Ok(Some(new_arm)) => {
                arm = new_arm;
                // Already above the new mark: the crossing happened before it was armed.
                let used = usage.as_ref().map_or(Ok(0), NumberFile::read_u64);
                if matches!(used, Ok(u) if u >= arm.threshold) {
                    pending = true;
                }
            }
            Ok(None) => {}
            Err(e) => return finish(cpu0, wakeups, Some(e)),
        }
    }
    finish(cpu0, wakeups, None)
}

/// v2 memory.events: poll for a change, act when `high` or `max` grew.
fn memory_events_loop(mut ctx: CompetitorCtx, mut ready: Ready) -> CompetitorStats {
    let cpu0 = thread_cpu_ns();
    if ctx.cgroup.version() != CgroupVersion::V2 {
        return ready.fail(BenchError::WrongVersion {
            mechanism: "memory.events notifications",
            version: CgroupVersion::V2,
        });
    }
    let usage = match open_usage(&ctx.cgroup) {
        Ok(u) => Some(u),
        Err(e) => return ready.fail(e),
    };
    let events = match FileWatch::open(&ctx.cgroup, "memory.events") {
        Ok(f) => f,
        Err(e) => return ready.fail(e),
    };
    let mut buf = [0u8; 512];
    let counters = |buf: &mut [u8]| -> Result<(u64, u64), BenchError> {
        let n = events.read_into(buf)?;
        let t = std::str::from_utf8(&buf[..n]).unwrap_or("");
        Ok((
            flat_keyed(t, "high").unwrap_or(0),
            flat_keyed(t, "max").unwrap_or(0),
        ))
    };
    let mut last = match counters(&mut buf) {
        Ok(c) => c,
        Err(e) => return ready.fail(e),
    };
    ready.ok();
    let mut wakeups = 0;
    loop {
        let r = match poll(
            &[
                (ctx.stop.fd(), libc::POLLIN),
                (events.as_fd().as_raw_fd(), libc::POLLPRI),
            ],
            None,
        ) {
            Ok(r) => r,
            Err(e) => return finish(cpu0, wakeups, Some(poll_failed(e))),
        };
        if r[0] != 0 {
            break;
        }
        if r[1] == 0 {
            continue;
        }
        wakeups += 1;
        let now = match counters(&mut buf) {
            Ok(c) => c,
            Err(e) => return finish(cpu0, wakeups, Some(e)),
        };
        if now.0 > last.0 || now.1 > last.1 {
            let trigger = if now.1 > last.1 {
                "memory_events_max"
            } else {
                "memory_events_high"
            };
            let result = usage
                .as_ref()
                .map_or(Ok(0), NumberFile::read_u64)
                .map_err(BenchError::from)
                .and_then(|used| {
                    let limit = ctx.actuator.current();
                    let signal = if now.1 > last.1 {
                        Signal::Pressure { usage: used, limit }
                    } else {
                        Signal::EarlyWarning { usage: used, limit }
                    };
                    react(&mut ctx, signal, trigger)
                });
            if let Err(e) = result {
                return finish(cpu0, wakeups, Some(e));
            }
        }
        last = now;
    }
    finish(cpu0, wakeups, None)
}
