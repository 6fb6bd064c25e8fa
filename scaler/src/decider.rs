//! The decider: pure state + signal -> decision.
//!
//! No I/O, no clocks (every time is a `CLOCK_MONOTONIC` nanosecond argument, the clock of
//! `bpf_ktime_get_ns()`), and no allocation on the event path: cgroups are registered ahead of
//! time ([`MemoryDecider::manage`], [`CpuDecider::manage`], which may allocate), and each signal
//! writes its outcome into a caller-provided, fixed-capacity [`Decision`].
//!
//! The loop it is one step of: the engine turns a kernel event or a periodic sample into a
//! signal ([`MemorySignal`], [`CpuSignal`]), asks the decider, performs the [`Action`]s in order
//! (ancestors first), and reports each completed write back through `applied(...)`. That
//! completion time is what separates one reclaim storm from the next (see [`ledger`] for the
//! rules both resources share, [`memory`] and [`cpu`] for each one's own).
//!
//! Both deciders keep their cgroups in one [`ledger`], generic over the resource, and can be
//! driven alike through [`Decide`].
//!
//! Values in an [`Action`]: for [`Resource::Memory`], `old`/`new` are hard limits in **bytes**
//! (v2 `memory.max`, v1 `memory.limit_in_bytes`); for [`Resource::Cpu`], they are the CFS quota in
//! **microseconds per period** (v2 the first field of `cpu.max`, v1 `cpu.cfs_quota_us`), the
//! period being the one the cgroup was registered with, which the decider never changes.
//! The decision is always a new limit; the engine picks the mechanism per backend (on v2 it may
//! precede a lowered `memory.max` with `memory.reclaim`, on v1 it writes the limit itself).

pub mod cpu;
pub mod ledger;
pub mod memory;
#[cfg(test)]
mod testing;

pub use cpu::{CpuDecider, CpuPolicy, CpuSignal};
pub use ledger::Stats;
pub use memory::{MemoryDecider, MemoryPolicy, MemorySignal};

/// A cgroup, by its kernfs id (the inode number of its directory; what the kernel programs
/// report as `cgroup_id`/`target_id`).
pub type CgId = u64;

/// Most actions one decision can hold: the target and up to 7 managed ancestors.
pub const MAX_ACTIONS: usize = 8;

/// Which controller an [`Action`] changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Resource {
    /// The memory hard limit, in bytes.
    #[default]
    Memory,
    /// The CFS quota, in microseconds per period.
    Cpu,
}

impl Resource {
    /// Name used in logs and JSON (`"memory"`, `"cpu"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cpu => "cpu",
        }
    }
}

/// A resource's policy for one cgroup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    Memory(MemoryPolicy),
    Cpu(CpuPolicy),
}

impl Policy {
    /// The resource it governs.
    pub fn resource(&self) -> Resource {
        match self {
            Policy::Memory(_) => Resource::Memory,
            Policy::Cpu(_) => Resource::Cpu,
        }
    }
}

/// A signal from the slow path (periodic samples) for one resource's decider.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Signal {
    Memory(MemorySignal),
    Cpu(CpuSignal),
}

impl Signal {
    /// The resource it is about.
    pub fn resource(&self) -> Resource {
        match self {
            Signal::Memory(_) => Resource::Memory,
            Signal::Cpu(_) => Resource::Cpu,
        }
    }
}

/// Why an [`Action`] was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Memory reclaim began at the cgroup's limit (the last-chance signal).
    #[default]
    Pressure,
    /// Memory usage crossed the early-warning mark (limit minus headroom).
    EarlyWarning,
    /// The OOM killer fired in the cgroup anyway.
    OomRecovery,
    /// A sample found that usage hit the limit since the previous sample (v2 `memory.events`
    /// `max`, v1 `memory.failcnt`) and no raise answered it: pressure the event path missed.
    LimitHits,
    /// Pressure has been gone for the cooldown: memory is given back.
    ScaleDown,
    /// A managed ancestor is raised so that its descendant's raise can take effect.
    Ancestor,
    /// The cgroup used most of its CPU quota within a period.
    CpuQuotaNear,
    /// The cgroup was throttled (seen in `cpu.stat` samples).
    CpuThrottled,
    /// Run-queue latency above the target while the cgroup was quota-bound.
    CpuRunqLatency,
    /// CPU quota given back after the cooldown.
    CpuScaleDown,
}

impl Reason {
    /// Name used in logs and JSON summaries.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pressure => "pressure",
            Self::EarlyWarning => "early_warning",
            Self::OomRecovery => "oom_recovery",
            Self::LimitHits => "limit_hits",
            Self::ScaleDown => "scale_down",
            Self::Ancestor => "ancestor",
            Self::CpuQuotaNear => "cpu_quota_near",
            Self::CpuThrottled => "cpu_throttled",
            Self::CpuRunqLatency => "cpu_runq_latency",
            Self::CpuScaleDown => "cpu_scale_down",
        }
    }
}

/// One limit change for the engine to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Action {
    /// The cgroup whose limit changes.
    pub cgroup: CgId,
    /// Which limit.
    pub resource: Resource,
    /// The limit the decider believed was in force (bytes, or quota µs per period).
    pub old: u64,
    /// The limit to write (same unit as `old`).
    pub new: u64,
    /// Why.
    pub reason: Reason,
    /// Kernel timestamp (ns) of the signal that triggered it: reaction latency is measured
    /// from here to the completion of the write.
    pub trigger_ts_ns: u64,
}

impl Action {
    /// True if the action raises the limit.
    pub const fn is_raise(&self) -> bool {
        self.new > self.old
    }
}

/// Which bound stopped a raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cap {
    /// The cgroup's policy maximum.
    AtMax,
    /// The node budget: for memory what the node can still back beyond its reserve (less what
    /// raises granted since it was sampled); for CPU the sum of top-level quotas.
    Budget,
    /// A managed ancestor whose limit cannot be raised to back the raise (at its own max, the
    /// node budget, its rate limit, or a write of its own in flight).
    Ancestor,
}

impl Cap {
    /// Name used in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AtMax => "at_max",
            Self::Budget => "budget",
            Self::Ancestor => "ancestor",
        }
    }
}

/// Why a signal produced no action. Each is worth a counter; [`Skip::Capped`] is worth a log
/// line, and is reported once per storm (later signals of the same storm say `Coalesced`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// The cgroup is not managed (observed only, or unknown).
    Unmanaged,
    /// Part of a storm that was already answered (or is being answered) by a raise.
    Coalesced,
    /// The per-cgroup rate limit refused another raise.
    RateLimited,
    /// The raise is bounded to (almost) nothing by the policy maximum or the node budget.
    Capped(Cap),
    /// The change would be smaller than the policy's hysteresis (`min_change`).
    BelowHysteresis,
    /// CPU: run-queue latency is high, but the cgroup is not quota-bound (raising its quota
    /// would not help: the node is busy).
    NotQuotaBound,
}

impl Skip {
    /// Name used in logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unmanaged => "unmanaged",
            Self::Coalesced => "coalesced",
            Self::RateLimited => "rate_limited",
            Self::Capped(Cap::AtMax) => "capped_at_max",
            Self::Capped(Cap::Budget) => "capped_budget",
            Self::Capped(Cap::Ancestor) => "capped_ancestor",
            Self::BelowHysteresis => "below_hysteresis",
            Self::NotQuotaBound => "not_quota_bound",
        }
    }
}

impl Skip {
    /// For a skip that refused a raise (the cgroup was under pressure and got no more room),
    /// the reason as logged and counted (`scaler_raises_refused_total{reason}`): `at_max`,
    /// `budget`, `ancestor`, `rate_limited`, `below_hysteresis`. `None` for the others (not
    /// managed, part of an answered storm, not quota-bound).
    pub const fn refusal(self) -> Option<&'static str> {
        match self {
            Self::Capped(c) => Some(c.as_str()),
            Self::RateLimited => Some("rate_limited"),
            Self::BelowHysteresis => Some("below_hysteresis"),
            Self::Unmanaged | Self::Coalesced | Self::NotQuotaBound => None,
        }
    }
}

/// The reasons of [`Skip::refusal`], in a fixed order (for counters indexed by reason).
pub const REFUSAL_REASONS: [&str; 5] = [
    "at_max",
    "budget",
    "ancestor",
    "rate_limited",
    "below_hysteresis",
];

/// What a refused raise asked for and what bound it (in [`Action`] units: bytes, or quota µs
/// per period), carried by the [`Decision`] with the [`Skip`] that says why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    /// The cgroup that wanted the raise.
    pub cgroup: CgId,
    /// Its limit in force (`u64::MAX`: unlimited).
    pub limit: u64,
    /// The limit the raise wanted before the bounds (`None`: not computed, e.g. rate-limited).
    pub wanted: Option<u64>,
    /// The highest limit the binding bound allowed (`None`: not computed).
    pub allowed: Option<u64>,
    /// Kernel timestamp of the signal.
    pub ts_ns: u64,
}

/// The outcome of one signal: up to [`MAX_ACTIONS`] actions, in the order they must be
/// written (ancestors first), or the reason there are none. Reused by the caller across
/// signals: the decider clears it first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    actions: [Action; MAX_ACTIONS],
    len: usize,
    /// Set when the signal produced no action for a reason worth counting; `None` with no
    /// actions means there was simply nothing to do (for example a sample in the cooldown).
    pub skip: Option<Skip>,
    /// With a `skip` that refused a raise ([`Skip::refusal`]): what it asked for and what
    /// bound it, for the engine to report.
    pub refusal: Option<Refusal>,
}

impl Decision {
    /// An empty decision buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The actions to perform, in order.
    pub fn actions(&self) -> &[Action] {
        &self.actions[..self.len]
    }

    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the buffer (the decider calls this at the start of every signal).
    pub fn clear(&mut self) {
        self.len = 0;
        self.skip = None;
        self.refusal = None;
    }

    /// Appends an action; returns false (and drops it) when the buffer is full.
    fn push(&mut self, a: Action) -> bool {
        if self.len == MAX_ACTIONS {
            return false;
        }
        self.actions[self.len] = a;
        self.len += 1;
        true
    }

    fn skip(&mut self, s: Skip) {
        self.skip = Some(s);
    }

    /// Refuses a raise: `s` (a [`Skip::refusal`]) with what was asked for.
    fn refuse(&mut self, s: Skip, r: Refusal) {
        self.skip = Some(s);
        self.refusal = Some(r);
    }
}

/// What happened to an action the engine tried to perform (`applied(...)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The kernel accepted the new value.
    Written,
    /// `--dry-run`: nothing was written. Treated like `Written` for storm bookkeeping (so a
    /// dry run does not re-decide every event of a storm); the next sample brings the decider
    /// back to the real limit.
    DryRun,
    /// The write failed (EBUSY, EINVAL, cgroup gone...): the decider reverts to the old value.
    Failed,
}

/// What callers can do with either decider without knowing its resource ([`MemoryDecider`],
/// [`CpuDecider`]; each has the same methods as inherent ones, so callers need not import
/// this). Object safe: `&mut dyn Decide<Signal = MemorySignal>` works.
pub trait Decide {
    /// What the engine tells the decider ([`MemorySignal`], [`CpuSignal`]).
    type Signal: Copy;

    /// The resource whose limits it decides (the `resource` of its actions).
    fn resource(&self) -> Resource;

    /// Decides what to do about `signal` for cgroup `id`; writes the outcome into `out`
    /// (cleared first). Does not allocate.
    fn on_signal(&mut self, id: CgId, signal: Self::Signal, out: &mut Decision);

    /// Feedback: the engine performed (or failed to perform) `action`, completing at
    /// `write_done_ns`. Must be called for every action (those of the other resource are
    /// ignored).
    fn applied(&mut self, action: &Action, write_done_ns: u64, outcome: WriteOutcome);

    /// Stops managing a cgroup (its managed children are re-parented); returns whether it was
    /// managed.
    fn forget(&mut self, id: CgId) -> bool;

    /// Whether the cgroup is managed.
    fn is_managed(&self, id: CgId) -> bool;

    /// U = R / C: the latest known usage over the limit.
    fn utilization(&self, id: CgId) -> Option<f64>;

    /// Counters of the whole decider.
    fn stats(&self) -> &Stats;

    /// Counters of one cgroup.
    fn cgroup_stats(&self, id: CgId) -> Option<&Stats>;

    /// Number of managed cgroups.
    fn len(&self) -> usize;

    /// True if no cgroup is managed.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-cgroup rate limit on raises, as a generic cell rate algorithm (a token bucket in
/// integer nanoseconds, no allocation): `rate` raises per second on average, with bursts of
/// up to `rate` raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RateLimiter {
    /// Nanoseconds per raise (1e9 / rate).
    interval_ns: u64,
    /// Burst tolerance: (burst - 1) * interval.
    tolerance_ns: u64,
    /// Theoretical arrival time of the next raise.
    tat_ns: u64,
}

impl RateLimiter {
    fn new(per_sec: u32) -> Self {
        let per_sec = u64::from(per_sec.max(1));
        let interval_ns = 1_000_000_000 / per_sec;
        Self {
            interval_ns,
            tolerance_ns: interval_ns * (per_sec - 1),
            tat_ns: 0,
        }
    }

    fn allows(&self, now_ns: u64) -> bool {
        now_ns.saturating_add(self.tolerance_ns) >= self.tat_ns
    }

    fn commit(&mut self, now_ns: u64) {
        self.tat_ns = self.tat_ns.max(now_ns) + self.interval_ns;
    }

    /// Gives back the token of a committed raise that changed nothing (the kernel refused the
    /// write, or it was not made): the limit guards against changing limits too often, and a
    /// write that changed nothing does not count. Never more generous than a full bucket.
    fn refund(&mut self) {
        self.tat_ns = self.tat_ns.saturating_sub(self.interval_ns);
    }
}

/// Allocation-rate / usage-rate estimator over successive (time, value) observations:
/// jumps up at once to a higher instantaneous rate (a scaler should over- rather than
/// under-estimate how fast a workload grows) and decays by halves toward lower ones.
/// Observations closer than `MIN_INTERVAL_NS` to the anchor are folded into the next interval,
/// so a burst of events microseconds apart does not produce absurd rates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct RateEstimator {
    anchor_ts_ns: u64,
    anchor_value: u64,
    has_anchor: bool,
    /// Units per second.
    rate: f64,
}

impl RateEstimator {
    const MIN_INTERVAL_NS: u64 = 1_000_000;

    fn observe(&mut self, ts_ns: u64, value: u64) {
        if !self.has_anchor || ts_ns < self.anchor_ts_ns {
            // First observation, or out of order (an older event drained late): re-anchor
            // only if it is newer.
            if !self.has_anchor {
                self.anchor_ts_ns = ts_ns;
                self.anchor_value = value;
                self.has_anchor = true;
            }
            return;
        }
        let dt = ts_ns - self.anchor_ts_ns;
        if dt < Self::MIN_INTERVAL_NS {
            return;
        }
        let inst = value.saturating_sub(self.anchor_value) as f64 * 1e9 / dt as f64;
        self.rate = if inst >= self.rate {
            inst
        } else {
            0.5 * (self.rate + inst)
        };
        self.anchor_ts_ns = ts_ns;
        self.anchor_value = value;
    }

    fn rate(&self) -> f64 {
        self.rate
    }
}

/// `f * x` for a non-negative fraction, saturating, rounded down.
fn mul_frac(x: u64, f: f64) -> u64 {
    let v = x as f64 * f;
    if v >= u64::MAX as f64 {
        u64::MAX
    } else if v > 0.0 {
        v as u64
    } else {
        0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cgroupfs::Limit;

    #[test]
    fn rate_limiter_allows_bursts_then_the_rate() {
        let mut rl = RateLimiter::new(4);
        let t0 = 10_000_000_000;
        for i in 0..4 {
            assert!(rl.allows(t0), "burst raise {i}");
            rl.commit(t0);
        }
        assert!(!rl.allows(t0), "fifth raise in the same instant is refused");
        assert!(!rl.allows(t0 + 200_000_000));
        assert!(rl.allows(t0 + 250_000_000), "one more after 1/rate");
        // A refunded raise gives its token back: one more at once.
        rl.commit(t0 + 250_000_000);
        assert!(!rl.allows(t0 + 250_000_000));
        rl.refund();
        assert!(rl.allows(t0 + 250_000_000), "a refunded token is back");
        // Refunds never fill more than the burst.
        let mut rl = RateLimiter::new(4);
        rl.refund();
        rl.refund();
        for i in 0..4 {
            assert!(rl.allows(t0), "burst raise {i}");
            rl.commit(t0);
        }
        assert!(!rl.allows(t0), "still at most the burst");
    }

    #[test]
    fn rate_estimator_tracks_growth_and_ignores_microsecond_jitter() {
        let mut r = RateEstimator::default();
        r.observe(1_000_000_000, 0);
        r.observe(1_000_000_500, 4096); // 0.5 us later: folded
        assert_eq!(r.rate(), 0.0);
        r.observe(1_010_000_000, 8 << 20); // 8 MiB in 10 ms
        assert!((r.rate() - 800.0 * (1 << 20) as f64).abs() < 1.0);
        r.observe(1_020_000_000, 8 << 20); // flat: decays by half
        assert!((r.rate() - 400.0 * (1 << 20) as f64).abs() < 1.0);
        r.observe(1_000_000_000, 0); // out of order: ignored
        assert!((r.rate() - 400.0 * (1 << 20) as f64).abs() < 1.0);
    }

    #[test]
    fn decision_buffer_is_bounded_and_ordered() {
        let mut d = Decision::new();
        for i in 0..MAX_ACTIONS as u64 {
            assert!(d.push(Action {
                cgroup: i,
                ..Action::default()
            }));
        }
        assert!(!d.push(Action::default()));
        assert_eq!(d.actions().len(), MAX_ACTIONS);
        assert_eq!(d.actions()[3].cgroup, 3);
        d.clear();
        assert!(d.is_empty());
        assert_eq!(d.skip, None);
    }

    /// Counts heap allocations made by the current thread (the event path must make none).
    pub(crate) mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        pub struct Counting;

        thread_local! {
            static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
        }

        // SAFETY: forwards to the system allocator; only counts.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
                // SAFETY: same contract as ours.
                unsafe { System.alloc(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: same contract as ours.
                unsafe { System.dealloc(ptr, layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
                // SAFETY: same contract as ours.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        pub fn allocations() -> u64 {
            ALLOCATIONS.with(Cell::get)
        }
    }

    #[global_allocator]
    static ALLOCATOR: counting::Counting = counting::Counting;

    #[test]
    fn the_event_path_does_not_allocate() {
        const S: u64 = 1_000_000_000;
        let mut mem = MemoryDecider::new(64 << 30);
        let mut cpu = CpuDecider::new(16.0);
        for id in 1..=100u64 {
            let parent = id.checked_sub(50).filter(|p| *p > 0);
            mem.manage(
                id,
                parent,
                MemoryPolicy::default(),
                Limit::Bytes(64 << 20),
                0,
                0,
            );
            cpu.manage(id, parent, CpuPolicy::default(), Some(20_000), 100_000, 0);
        }
        let mut out = Decision::new();
        let before = counting::allocations();
        for round in 0..200u64 {
            let ts = S + round * 50_000_000;
            for id in 1..=100u64 {
                let limit = mem.limit(id).unwrap();
                mem.on_signal(
                    id,
                    MemorySignal::Reclaim {
                        ts_ns: ts,
                        usage: limit,
                        limit,
                    },
                    &mut out,
                );
                for a in out.actions() {
                    mem.applied(a, ts + 100_000, WriteOutcome::Written);
                }
                mem.on_signal(
                    id,
                    MemorySignal::Sample {
                        ts_ns: ts + 1,
                        usage: 1 << 20,
                        limit: Limit::from_bytes(mem.limit(id).unwrap()),
                        working_set: 1 << 20,
                        psi_some_total_us: Some(round),
                        limit_hits: None,
                        refaulted: None,
                    },
                    &mut out,
                );
                let quota = cpu.quota_us(id).unwrap();
                cpu.on_signal(
                    id,
                    CpuSignal::QuotaNear {
                        ts_ns: ts,
                        used_ns_in_period: 1,
                        quota_ns: quota.unwrap_or(0).saturating_mul(1000),
                        period_ns: 100_000_000,
                    },
                    &mut out,
                );
                for a in out.actions() {
                    cpu.applied(a, ts + 10_000, WriteOutcome::Written);
                }
                cpu.on_signal(
                    id,
                    CpuSignal::RunqLatency {
                        ts_ns: ts,
                        p99_us: 10_000,
                    },
                    &mut out,
                );
                cpu.on_signal(
                    id,
                    CpuSignal::Sample {
                        ts_ns: ts + 2,
                        usage_ns: round * 1_000_000,
                        nr_throttled: round / 3,
                        throttled_ns: 0,
                        quota_us: quota,
                        period_us: 100_000,
                    },
                    &mut out,
                );
            }
        }
        assert_eq!(counting::allocations() - before, 0);
        assert!(mem.stats().raises > 100 && cpu.stats().raises > 100);
    }

    /// One signal through the trait, every action applied at `done_ns`.
    fn drive<D: Decide + ?Sized>(d: &mut D, s: D::Signal, done_ns: u64) -> Decision {
        let mut out = Decision::new();
        d.on_signal(1, s, &mut out);
        for a in out.actions() {
            assert_eq!(a.resource, d.resource());
            d.applied(a, done_ns, WriteOutcome::Written);
        }
        out
    }

    /// What callers see of any decider.
    fn summary<D: Decide + ?Sized>(d: &D) -> (usize, bool, u64, u64, u64) {
        let s = d.stats();
        let one = d.cgroup_stats(1).map_or(0, |c| c.raises);
        (d.len(), d.is_managed(1), s.signals, s.raises, one)
    }

    #[test]
    fn both_deciders_can_be_driven_alike_through_decide() {
        const S: u64 = 1_000_000_000;
        let mut mem = MemoryDecider::new(64 << 30);
        let mut cpu = CpuDecider::new(16.0);
        mem.manage(
            1,
            None,
            MemoryPolicy::default(),
            Limit::Bytes(64 << 20),
            64 << 20,
            0,
        );
        cpu.manage(1, None, CpuPolicy::default(), Some(20_000), 100_000, 0);

        let m: &mut dyn Decide<Signal = MemorySignal> = &mut mem;
        assert_eq!(m.resource(), Resource::Memory);
        let reclaim = MemorySignal::Reclaim {
            ts_ns: S,
            usage: 64 << 20,
            limit: 64 << 20,
        };
        assert_eq!(drive(m, reclaim, S + 100_000).actions().len(), 1);
        assert_eq!(summary(m), (1, true, 1, 1, 1));
        assert!(m.utilization(1).unwrap() < 1.0);

        let c: &mut dyn Decide<Signal = CpuSignal> = &mut cpu;
        assert_eq!(c.resource(), Resource::Cpu);
        let near = CpuSignal::QuotaNear {
            ts_ns: S,
            used_ns_in_period: 16_000_000,
            quota_ns: 20_000_000,
            period_ns: 100_000_000,
        };
        assert_eq!(drive(c, near, S + 10_000).actions().len(), 1);
        assert_eq!(summary(c), (1, true, 1, 1, 1));

        // The same Stats for both, and each ignores the other's actions.
        assert_eq!(mem.stats(), cpu.stats());
        let mut out = Decision::new();
        mem.on_signal(1, reclaim, &mut out);
        assert_eq!(out.skip, Some(Skip::Coalesced));
        let other = Action {
            cgroup: 1,
            resource: Resource::Cpu,
            ..Action::default()
        };
        Decide::applied(&mut mem, &other, S, WriteOutcome::Failed);
        assert_eq!(mem.stats().failed_writes, 0);

        let m: &mut dyn Decide<Signal = MemorySignal> = &mut mem;
        assert!(m.forget(1) && !m.forget(1));
        assert!(m.is_empty() && !m.is_managed(1));
        assert!(Decide::forget(&mut cpu, 1));
        assert!(Decide::is_empty(&cpu));
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(Reason::Pressure.as_str(), "pressure");
        assert_eq!(Reason::CpuRunqLatency.as_str(), "cpu_runq_latency");
        assert_eq!(Skip::Capped(Cap::Budget).as_str(), "capped_budget");
        assert_eq!(Resource::Cpu.as_str(), "cpu");
    }
}
