//! CPU rules: raise a CFS quota before throttling hurts, give it back after a burst.
//!
//! Same shape as the [memory rules](super::memory), in CPU terms. Quotas are handled as
//! **microcores** (millionths of a core: `quota_us * 1e6 / period_us`) so that budgets and
//! bounds are exact integer sums; [`Action`]s carry the quota in **microseconds per period**
//! at the period the cgroup was registered with (a quota that was unlimited, v2 `max` or v1
//! `-1`, appears as `old == u64::MAX`; `new` is never unlimited).
//!
//! # Scale up
//! Pressure is [`CpuSignal::QuotaNear`] (the kernel saw the cgroup use `quota_near` of its
//! quota within one period, before it is throttled), throttling seen in a
//! [`CpuSignal::Sample`] of `cpu.stat` (`nr_throttled` grew over an interval that began after
//! the last raise completed), and [`CpuSignal::RunqLatency`] above `runq_latency_target`
//! *while the cgroup is quota-bound* (it was throttled in the last sample interval, used at
//! least `quota_near` of its quota then, or had a quota-near signal within
//! `escalation_window`); high latency on a cgroup that is not quota-bound is the node being
//! busy, which more quota does not fix ([`Skip::NotQuotaBound`]). A raise adds
//!
//! ```text
//! step = max(step, step_fraction * quota) * 2^escalation
//! ```
//!
//! with escalation as for memory (consecutive rounds within `escalation_window`, up to
//! `max_escalation`), clamped to `max` and, for a cgroup without a managed ancestor, to the
//! node's CPU budget. From a 0.2-core quota under a 1.5-core burst, the defaults go
//! 0.2 -> 0.4 -> 0.8 -> 1.6 in three rounds (three 100 ms periods).
//!
//! # Coalescing
//! A pressure signal is part of an answered round when its timestamp is before the last
//! raise's completion, when it reports a quota below the one already decided, or while a
//! write is in flight.
//!
//! # Scale down
//! After `cooldown` without pressure (any of the signals above, including latency above the
//! target that did not lead to a raise), each sample may lower the quota by `down_fraction`
//! of its distance to the goal `max(min, usage * (1 + headroom) / quota_near, usage +
//! min_change)` (so usage ends up below the quota-near mark, with headroom: with the defaults
//! at 64% of the quota), at most once per `down_interval`, never below the usage observed over
//! the last sample interval. A quota above `max` (for example unlimited) is brought to `max` by the first
//! sample.
//!
//! # Hierarchy and budget
//! As for memory: the budget bounds the sum of the quotas of managed cgroups without a
//! managed ancestor; a raise of `d` cores that does not fit in a managed ancestor's quota
//! (its quota minus its observed usage) raises the ancestor first, within its own policy.

use std::collections::HashMap;

use super::{
    mul_frac, Action, Cap, CgId, Decision, RateLimiter, Reason, Resource, Skip, WriteOutcome,
    MAX_ACTIONS,
};

/// Per-cgroup CPU policy, in cores, fractions, microseconds and nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuPolicy {
    /// Lowest quota the decider sets (cores).
    pub min_cores: f64,
    /// Highest quota the decider sets (cores).
    pub max_cores: f64,
    /// Smallest raise (cores).
    pub step_cores: f64,
    /// Smallest raise as a fraction of the current quota.
    pub step_fraction: f64,
    /// Fraction of the quota used within one period that the kernel reports as "near"
    /// (programmed into the kernel side; a `QuotaNear` signal means it was crossed).
    pub quota_near_fraction: f64,
    /// Run-queue latency (p99) above which a quota-bound cgroup is raised (µs).
    pub runq_latency_target_us: u64,
    /// Scale-down goal: observed usage times `(1 + headroom_fraction) / quota_near_fraction`.
    pub headroom_fraction: f64,
    /// Pressure rounds closer together than this escalate the step (ns).
    pub escalation_window_ns: u64,
    /// Most doublings of the step.
    pub max_escalation: u32,
    /// Quiet time (no quota-near, throttling or latency signal) before lowering (ns).
    pub cooldown_ns: u64,
    /// Least time between two lowering steps (ns).
    pub down_interval_ns: u64,
    /// Fraction of the distance to the goal removed per lowering step.
    pub down_fraction: f64,
    /// Hysteresis: changes smaller than this are not made (cores).
    pub min_change_cores: f64,
    /// Raises per second allowed on average (bursts of the same number).
    pub max_raises_per_sec: u32,
}

impl Default for CpuPolicy {
    /// Sized for issue 4's workload (1.5-core bursts from a 0.2-core quota): steps of at least
    /// 0.2 cores or a quarter of the quota, doubling per round within 1 s (0.2 -> 0.4 -> 0.8 ->
    /// 1.6 in three periods); quota-near at 80%; 5 ms p99 run-queue latency target; 25% headroom
    /// over observed usage when lowering, after a 20 s cooldown, half the excess every 2 s
    /// (so a quota returns within a minute of a burst); 0.05-core hysteresis; 10 raises/s.
    fn default() -> Self {
        Self {
            min_cores: 0.1,
            max_cores: f64::INFINITY,
            step_cores: 0.2,
            step_fraction: 0.25,
            quota_near_fraction: 0.8,
            runq_latency_target_us: 5_000,
            headroom_fraction: 0.25,
            escalation_window_ns: 1_000_000_000,
            max_escalation: 3,
            cooldown_ns: 20_000_000_000,
            down_interval_ns: 2_000_000_000,
            down_fraction: 0.5,
            min_change_cores: 0.05,
            max_raises_per_sec: 10,
        }
    }
}

/// Microcores per core.
pub const MICROCORES: u64 = 1_000_000;

/// Largest quota the decider writes, in microcores (a million cores: far above any machine,
/// far below the kernel's limit on `cpu.max`/`cfs_quota_us`), whatever the policy says.
pub const MAX_MICROCORES: u64 = 1_000_000 * MICROCORES;

/// Cores (f64) to microcores, saturating; infinity (no maximum) maps to `u64::MAX`.
pub fn cores_to_microcores(cores: f64) -> u64 {
    let v = cores * MICROCORES as f64;
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v.round() as u64
    }
}

/// A quota (µs per period) in microcores, rounded down; unlimited (`u64::MAX`) stays
/// `u64::MAX`.
pub fn quota_to_microcores(quota_us: u64, period_us: u64) -> u64 {
    if quota_us == u64::MAX {
        return u64::MAX;
    }
    let v = u128::from(quota_us) * u128::from(MICROCORES) / u128::from(period_us.max(1));
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Microcores to a quota (µs per period), rounded down (`up`: rounded up).
fn microcores_to_quota(uc: u64, period_us: u64, up: bool) -> u64 {
    let num = u128::from(uc) * u128::from(period_us);
    let d = u128::from(MICROCORES);
    let v = if up { num.div_ceil(d) } else { num / d };
    u64::try_from(v).unwrap_or(u64::MAX - 1)
}

/// What the engine tells the CPU decider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuSignal {
    /// The kernel saw the cgroup use `used_ns_in_period` of its `quota_ns` within the current
    /// period of `period_ns` (crossing the policy's quota-near fraction).
    QuotaNear {
        ts_ns: u64,
        used_ns_in_period: u64,
        quota_ns: u64,
        period_ns: u64,
    },
    /// The p99 run-queue latency (wakeup to running) of the cgroup's tasks, in µs, over the
    /// kernel's aggregation window, reported when it crosses the target.
    RunqLatency { ts_ns: u64, p99_us: u64 },
    /// Periodic `cpu.stat`/`cpu.max` sample: cumulative `usage_ns` and `throttled_ns`,
    /// cumulative `nr_throttled`, and the quota in force (`None`: unlimited) at `period_us`.
    Sample {
        ts_ns: u64,
        usage_ns: u64,
        nr_throttled: u64,
        throttled_ns: u64,
        quota_us: Option<u64>,
        period_us: u64,
    },
}

impl CpuSignal {
    /// The signal's timestamp.
    pub const fn ts_ns(&self) -> u64 {
        match *self {
            Self::QuotaNear { ts_ns, .. }
            | Self::RunqLatency { ts_ns, .. }
            | Self::Sample { ts_ns, .. } => ts_ns,
        }
    }
}

/// Counters, per cgroup and for the whole CPU decider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Signals received.
    pub signals: u64,
    /// Raises decided (including ancestors').
    pub raises: u64,
    /// Lowerings decided.
    pub scale_downs: u64,
    /// Pressure signals folded into an answered round.
    pub coalesced: u64,
    /// Raises refused by the rate limit.
    pub rate_limited: u64,
    /// Raises bounded to nothing (reported once per storm).
    pub capped: u64,
    /// Latency signals ignored because the cgroup was not quota-bound.
    pub not_quota_bound: u64,
    /// Signals for cgroups that are not managed.
    pub unmanaged: u64,
    /// Sample intervals in which the cgroup was throttled.
    pub throttled_intervals: u64,
    /// Writes the engine reported as failed.
    pub failed_writes: u64,
}

#[derive(Clone, Copy, Debug)]
struct PrevSample {
    ts_ns: u64,
    usage_ns: u64,
    nr_throttled: u64,
}

#[derive(Clone, Debug)]
struct CpuState {
    policy: CpuPolicy,
    parent: Option<CgId>,
    period_us: u64,
    /// Quota in force or being written, µs per period (`u64::MAX`: unlimited).
    quota_us: u64,
    /// A decided write not yet confirmed: `(old, new)` quota.
    inflight: Option<(u64, u64)>,
    /// Usage over the last sample interval (microcores).
    usage_uc: u64,
    /// The last sample interval saw throttling.
    throttled_recently: bool,
    prev: Option<PrevSample>,
    last_quota_near_ns: Option<u64>,
    limiter: RateLimiter,
    escalation: u32,
    last_round_ns: Option<u64>,
    last_pressure_ns: u64,
    last_raise_done_ns: Option<u64>,
    last_write_done_ns: u64,
    last_change_ns: u64,
    capped_reported_at: Option<u64>,
    stats: CpuStats,
}

impl CpuState {
    fn quota_uc(&self) -> u64 {
        quota_to_microcores(self.quota_us, self.period_us)
    }

    /// What the quota counts for in the budget: a lowering in flight counts at its old value.
    fn counted(&self) -> u64 {
        let q = match self.inflight {
            Some((old, _)) => old.max(self.quota_us),
            None => self.quota_us,
        };
        quota_to_microcores(q, self.period_us)
    }
}

fn update(sum: &mut u128, st: &mut CpuState, f: impl FnOnce(&mut CpuState)) {
    let before = st.counted();
    f(st);
    if st.parent.is_none() {
        *sum = *sum - u128::from(before) + u128::from(st.counted());
    }
}

/// The CPU decider: registered cgroups and the node's CPU budget. See the module docs.
#[derive(Clone, Debug)]
pub struct CpuDecider {
    cgroups: HashMap<CgId, CpuState>,
    /// Budget in microcores.
    budget_uc: u64,
    top_level_sum: u128,
    stats: CpuStats,
}

/// An ancestor raise being assembled: `(cgroup, old quota, new quota)`.
type Step = (CgId, u64, u64);

impl CpuDecider {
    /// A decider whose top-level managed quotas may add up to `budget_cores`.
    pub fn new(budget_cores: f64) -> Self {
        Self {
            cgroups: HashMap::new(),
            budget_uc: cores_to_microcores(budget_cores),
            top_level_sum: 0,
            stats: CpuStats::default(),
        }
    }

    /// The node budget (cores).
    pub fn budget_cores(&self) -> f64 {
        self.budget_uc as f64 / MICROCORES as f64
    }

    /// Changes the node budget (configuration reload); see [`MemoryDecider::set_budget`](super::MemoryDecider::set_budget).
    pub fn set_budget(&mut self, budget_cores: f64) {
        self.budget_uc = cores_to_microcores(budget_cores);
    }

    /// Sum of the top-level managed quotas, in microcores (lowerings in flight at their old
    /// value).
    pub fn committed_microcores(&self) -> u128 {
        self.top_level_sum
    }

    /// Registers (or re-registers) a cgroup with its quota (`None`: unlimited) at `period_us`.
    /// `parent` is the nearest managed ancestor (register ancestors first). May allocate.
    pub fn manage(
        &mut self,
        id: CgId,
        parent: Option<CgId>,
        policy: CpuPolicy,
        quota_us: Option<u64>,
        period_us: u64,
        now_ns: u64,
    ) {
        let parent = parent.filter(|p| *p != id && self.cgroups.contains_key(p));
        if let Some(old) = self.cgroups.get(&id) {
            if old.parent.is_none() {
                self.top_level_sum -= u128::from(old.counted());
            }
        }
        let st = self.cgroups.entry(id).or_insert_with(|| CpuState {
            policy,
            parent,
            period_us,
            quota_us: u64::MAX,
            inflight: None,
            usage_uc: 0,
            throttled_recently: false,
            prev: None,
            last_quota_near_ns: None,
            limiter: RateLimiter::new(policy.max_raises_per_sec),
            escalation: 0,
            last_round_ns: None,
            last_pressure_ns: now_ns,
            last_raise_done_ns: None,
            last_write_done_ns: 0,
            last_change_ns: 0,
            capped_reported_at: None,
            stats: CpuStats::default(),
        });
        if st.policy.max_raises_per_sec != policy.max_raises_per_sec {
            st.limiter = RateLimiter::new(policy.max_raises_per_sec);
        }
        st.policy = policy;
        st.parent = parent;
        st.period_us = period_us.max(1);
        st.quota_us = quota_us.unwrap_or(u64::MAX);
        st.inflight = None;
        if parent.is_none() {
            self.top_level_sum += u128::from(st.counted());
        }
    }

    /// Stops managing a cgroup; its managed children are re-parented to its parent.
    pub fn forget(&mut self, id: CgId) -> bool {
        let Some(gone) = self.cgroups.remove(&id) else {
            return false;
        };
        if gone.parent.is_none() {
            self.top_level_sum -= u128::from(gone.counted());
        }
        for st in self.cgroups.values_mut() {
            if st.parent == Some(id) {
                st.parent = gone.parent;
                if gone.parent.is_none() {
                    self.top_level_sum += u128::from(st.counted());
                }
            }
        }
        true
    }

    /// Whether the cgroup is managed.
    pub fn is_managed(&self, id: CgId) -> bool {
        self.cgroups.contains_key(&id)
    }

    /// The quota in force or being written, µs per period (`None`: unlimited).
    pub fn quota_us(&self, id: CgId) -> Option<Option<u64>> {
        self.cgroups
            .get(&id)
            .map(|s| (s.quota_us != u64::MAX).then_some(s.quota_us))
    }

    /// The quota in cores (`f64::INFINITY`: unlimited).
    pub fn quota_cores(&self, id: CgId) -> Option<f64> {
        self.cgroups.get(&id).map(|s| {
            if s.quota_us == u64::MAX {
                f64::INFINITY
            } else {
                s.quota_us as f64 / s.period_us as f64
            }
        })
    }

    /// The period the cgroup was registered with (µs).
    pub fn period_us(&self, id: CgId) -> Option<u64> {
        self.cgroups.get(&id).map(|s| s.period_us)
    }

    /// Usage over the last sample interval, in cores.
    pub fn usage_cores(&self, id: CgId) -> Option<f64> {
        self.cgroups
            .get(&id)
            .map(|s| s.usage_uc as f64 / MICROCORES as f64)
    }

    /// U = R / C: usage over the last sample interval divided by the quota (0 if unlimited).
    pub fn utilization(&self, id: CgId) -> Option<f64> {
        self.cgroups
            .get(&id)
            .map(|s| s.usage_uc as f64 / s.quota_uc().max(1) as f64)
    }

    /// The cgroup's policy.
    pub fn policy(&self, id: CgId) -> Option<&CpuPolicy> {
        self.cgroups.get(&id).map(|s| &s.policy)
    }

    /// Counters of one cgroup.
    pub fn cgroup_stats(&self, id: CgId) -> Option<&CpuStats> {
        self.cgroups.get(&id).map(|s| &s.stats)
    }

    /// Counters of the whole decider.
    pub fn stats(&self) -> &CpuStats {
        &self.stats
    }

    /// Number of managed cgroups.
    pub fn len(&self) -> usize {
        self.cgroups.len()
    }

    /// True if no cgroup is managed.
    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty()
    }

    /// Decides what to do about `signal` for cgroup `id`; writes into `out` (cleared first).
    /// Does not allocate.
    pub fn on_signal(&mut self, id: CgId, signal: CpuSignal, out: &mut Decision) {
        out.clear();
        self.stats.signals += 1;
        let Some(st) = self.cgroups.get_mut(&id) else {
            self.stats.unmanaged += 1;
            out.skip(Skip::Unmanaged);
            return;
        };
        st.stats.signals += 1;
        match signal {
            CpuSignal::QuotaNear {
                ts_ns,
                quota_ns,
                period_ns,
                ..
            } => {
                st.last_quota_near_ns = Some(ts_ns);
                let seen_uc = quota_to_microcores(quota_ns, period_ns);
                let cur_uc = st.quota_uc();
                let stale = seen_uc < cur_uc
                    || (seen_uc > cur_uc
                        && (st.inflight.is_some() || ts_ns < st.last_write_done_ns));
                self.raise(id, Reason::CpuQuotaNear, ts_ns, stale, out);
            }
            CpuSignal::RunqLatency { ts_ns, p99_us } => {
                if p99_us <= st.policy.runq_latency_target_us {
                    return;
                }
                let p = st.policy;
                let near = st
                    .last_quota_near_ns
                    .is_some_and(|t| ts_ns >= t && ts_ns - t <= p.escalation_window_ns);
                let busy = st.usage_uc as f64 >= p.quota_near_fraction * st.quota_uc() as f64;
                if !(st.throttled_recently || near || busy) {
                    st.last_pressure_ns = st.last_pressure_ns.max(ts_ns);
                    st.stats.not_quota_bound += 1;
                    self.stats.not_quota_bound += 1;
                    out.skip(Skip::NotQuotaBound);
                    return;
                }
                self.raise(id, Reason::CpuRunqLatency, ts_ns, false, out);
            }
            CpuSignal::Sample {
                ts_ns,
                usage_ns,
                nr_throttled,
                throttled_ns: _,
                quota_us,
                period_us,
            } => self.sample(id, ts_ns, usage_ns, nr_throttled, quota_us, period_us, out),
        }
    }

    /// Feedback: the engine performed (or failed) `action`, completing at `write_done_ns`.
    /// Must be called for every action.
    pub fn applied(&mut self, action: &Action, write_done_ns: u64, outcome: WriteOutcome) {
        if action.resource != Resource::Cpu {
            return;
        }
        let Some(st) = self.cgroups.get_mut(&action.cgroup) else {
            return;
        };
        let this_write = st.inflight == Some((action.old, action.new));
        match outcome {
            WriteOutcome::Written | WriteOutcome::DryRun => {
                update(&mut self.top_level_sum, st, |st| {
                    if this_write {
                        st.inflight = None;
                    }
                });
                st.last_write_done_ns = st.last_write_done_ns.max(write_done_ns);
                if action.is_raise() {
                    st.last_raise_done_ns =
                        Some(st.last_raise_done_ns.unwrap_or(0).max(write_done_ns));
                }
            }
            WriteOutcome::Failed => {
                st.stats.failed_writes += 1;
                self.stats.failed_writes += 1;
                update(&mut self.top_level_sum, st, |st| {
                    if this_write {
                        st.inflight = None;
                        if st.quota_us == action.new {
                            st.quota_us = action.old;
                        }
                    }
                });
            }
        }
    }

    /// Room left in the budget for `st`'s quota, in microcores, if it is top-level.
    fn budget_allows_uc(&self, st: &CpuState) -> u64 {
        if st.parent.is_some() {
            return u64::MAX;
        }
        let others = self.top_level_sum - u128::from(st.counted());
        u64::try_from(u128::from(self.budget_uc).saturating_sub(others)).unwrap_or(u64::MAX)
    }

    fn raise(&mut self, id: CgId, reason: Reason, ts: u64, stale: bool, out: &mut Decision) {
        let Some(st) = self.cgroups.get_mut(&id) else {
            return;
        };
        let prev_pressure_ns = st.last_pressure_ns;
        st.last_pressure_ns = st.last_pressure_ns.max(ts);
        let stale_ts = st.last_raise_done_ns.is_some_and(|done| ts < done);
        if stale || stale_ts || st.inflight.is_some() {
            st.stats.coalesced += 1;
            self.stats.coalesced += 1;
            out.skip(Skip::Coalesced);
            return;
        }
        if !st.limiter.allows(ts) {
            st.stats.rate_limited += 1;
            self.stats.rate_limited += 1;
            out.skip(Skip::RateLimited);
            return;
        }
        if ts.saturating_sub(prev_pressure_ns) > st.policy.escalation_window_ns {
            st.capped_reported_at = None;
        }
        let escalation = match st.last_round_ns {
            Some(last) if ts.saturating_sub(last) <= st.policy.escalation_window_ns => {
                (st.escalation + 1).min(st.policy.max_escalation)
            }
            _ => 0,
        };
        let p = st.policy;
        let cur_uc = st.quota_uc();
        let max_uc = cores_to_microcores(p.max_cores).min(MAX_MICROCORES);
        let step_uc = cores_to_microcores(p.step_cores)
            .max(mul_frac(cur_uc, p.step_fraction))
            .saturating_mul(1u64 << escalation.min(32));
        let mut new_uc = cur_uc.saturating_add(step_uc);
        let mut cap = None;
        if new_uc > max_uc {
            new_uc = max_uc;
            cap = Some(Cap::AtMax);
        }
        let room = self.budget_allows_uc(&self.cgroups[&id]);
        if new_uc > room {
            new_uc = room;
            cap = Some(Cap::Budget);
        }
        let st = self.cgroups.get_mut(&id).expect("looked up above");
        let new_q = microcores_to_quota(new_uc, st.period_us, false);
        let new_uc = quota_to_microcores(new_q, st.period_us);
        let min_change_uc = cores_to_microcores(p.min_change_cores);
        if st.quota_us == u64::MAX
            || new_q <= st.quota_us
            || new_uc.saturating_sub(cur_uc) < min_change_uc
        {
            let skip = match (st.quota_us == u64::MAX, cap) {
                (true, _) => Skip::Capped(Cap::AtMax),
                (false, Some(c)) => Skip::Capped(c),
                (false, None) => Skip::BelowHysteresis,
            };
            if st.capped_reported_at == Some(st.quota_us) {
                st.stats.coalesced += 1;
                self.stats.coalesced += 1;
                out.skip(Skip::Coalesced);
            } else {
                st.capped_reported_at = Some(st.quota_us);
                st.stats.capped += 1;
                self.stats.capped += 1;
                out.skip(skip);
            }
            return;
        }

        // Managed ancestors whose quota has no room for this raise go first.
        let mut chain: [Step; MAX_ACTIONS - 1] = [(0, 0, 0); MAX_ACTIONS - 1];
        let mut n = 0;
        let mut delta_uc = new_uc - cur_uc;
        let mut up = st.parent;
        while let Some(pid) = up {
            if n == chain.len() {
                break;
            }
            let Some(ps) = self.cgroups.get(&pid) else {
                break;
            };
            let p_uc = ps.quota_uc();
            let need = ps.usage_uc.saturating_add(delta_uc);
            if ps.quota_us == u64::MAX || p_uc >= need {
                break;
            }
            if ps.inflight.is_some() || !ps.limiter.allows(ts) {
                break;
            }
            let pnew_uc = need
                .max(p_uc.saturating_add(cores_to_microcores(ps.policy.step_cores)))
                .min(cores_to_microcores(ps.policy.max_cores).min(MAX_MICROCORES))
                .min(self.budget_allows_uc(ps));
            let pnew = microcores_to_quota(pnew_uc, ps.period_us, false);
            let pnew_uc = quota_to_microcores(pnew, ps.period_us);
            if pnew <= ps.quota_us
                || pnew_uc - p_uc < cores_to_microcores(ps.policy.min_change_cores)
            {
                break;
            }
            chain[n] = (pid, ps.quota_us, pnew);
            n += 1;
            delta_uc = pnew_uc - p_uc;
            up = ps.parent;
        }
        for &(pid, old, pnew) in chain[..n].iter().rev() {
            let ps = self.cgroups.get_mut(&pid).expect("walked above");
            Self::commit_raise(&mut self.top_level_sum, ps, pnew, ts);
            self.stats.raises += 1;
            out.push(Action {
                cgroup: pid,
                resource: Resource::Cpu,
                old,
                new: pnew,
                reason: Reason::Ancestor,
                trigger_ts_ns: ts,
            });
        }
        let st = self.cgroups.get_mut(&id).expect("looked up above");
        let old = st.quota_us;
        Self::commit_raise(&mut self.top_level_sum, st, new_q, ts);
        st.escalation = escalation;
        st.last_round_ns = Some(ts);
        self.stats.raises += 1;
        out.push(Action {
            cgroup: id,
            resource: Resource::Cpu,
            old,
            new: new_q,
            reason,
            trigger_ts_ns: ts,
        });
    }

    fn commit_raise(sum: &mut u128, st: &mut CpuState, new: u64, ts: u64) {
        update(sum, st, |st| {
            st.inflight = Some((st.quota_us, new));
            st.quota_us = new;
        });
        st.limiter.commit(ts);
        st.last_change_ns = ts;
        st.capped_reported_at = None;
        st.stats.raises += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn sample(
        &mut self,
        id: CgId,
        ts: u64,
        usage_ns: u64,
        nr_throttled: u64,
        quota_us: Option<u64>,
        period_us: u64,
        out: &mut Decision,
    ) {
        let Some(st) = self.cgroups.get_mut(&id) else {
            return;
        };
        // Usage and throttling over the interval since the previous sample (counters that
        // went backwards belong to a recreated cgroup: start over).
        let mut throttled_after_raise = false;
        st.throttled_recently = false;
        match st.prev {
            Some(prev)
                if ts > prev.ts_ns
                    && usage_ns >= prev.usage_ns
                    && nr_throttled >= prev.nr_throttled =>
            {
                let uc = u128::from(usage_ns - prev.usage_ns) * u128::from(MICROCORES)
                    / u128::from(ts - prev.ts_ns);
                st.usage_uc = u64::try_from(uc).unwrap_or(u64::MAX);
                if nr_throttled > prev.nr_throttled {
                    st.throttled_recently = true;
                    st.stats.throttled_intervals += 1;
                    self.stats.throttled_intervals += 1;
                    throttled_after_raise =
                        st.last_raise_done_ns.is_none_or(|done| prev.ts_ns >= done);
                    st.last_pressure_ns = st.last_pressure_ns.max(ts);
                }
            }
            _ => {}
        }
        st.prev = Some(PrevSample {
            ts_ns: ts,
            usage_ns,
            nr_throttled,
        });
        if st.inflight.is_some() {
            return;
        }
        let seen = quota_us.unwrap_or(u64::MAX);
        if (seen != st.quota_us || period_us != st.period_us) && ts >= st.last_write_done_ns {
            // The kernel's value is authoritative (an external change, or a dry run).
            update(&mut self.top_level_sum, st, |st| {
                st.quota_us = seen;
                st.period_us = period_us.max(1);
            });
        }
        if throttled_after_raise {
            self.raise(id, Reason::CpuThrottled, ts, false, out);
            return;
        }

        let p = st.policy;
        let cur_uc = st.quota_uc();
        let min_uc = cores_to_microcores(p.min_cores);
        let max_uc = cores_to_microcores(p.max_cores).min(MAX_MICROCORES);
        let min_change_uc = cores_to_microcores(p.min_change_cores);
        let floor = min_uc.max(st.usage_uc);
        let new_uc = if cur_uc > max_uc {
            if floor > max_uc {
                // Usage above the maximum: wait for it to drop rather than cut below it.
                return;
            }
            max_uc
        } else {
            if ts < st.last_pressure_ns.saturating_add(p.cooldown_ns)
                || ts < st.last_change_ns.saturating_add(p.down_interval_ns)
            {
                return;
            }
            // Usage should sit below the quota-near mark, with headroom: lower, the kernel would
            // report quota-near right away and the quota would bounce back up.
            let factor = (1.0 + p.headroom_fraction) / p.quota_near_fraction.clamp(0.05, 1.0);
            let goal = mul_frac(st.usage_uc, factor)
                .max(st.usage_uc.saturating_add(min_change_uc))
                .min(max_uc)
                .max(floor);
            if goal >= cur_uc {
                return;
            }
            let gap = cur_uc - goal;
            let dec = mul_frac(gap, p.down_fraction).max(min_change_uc).min(gap);
            if dec < min_change_uc {
                return;
            }
            cur_uc - dec
        };
        // Round up: the quota written is never below the goal (nor the usage under it)...
        let mut new_q = microcores_to_quota(new_uc, st.period_us, true);
        if quota_to_microcores(new_q, st.period_us) > max_uc {
            // ...unless that would cross the maximum (new_uc >= floor still holds).
            new_q = microcores_to_quota(max_uc, st.period_us, false);
        }
        if new_q >= st.quota_us {
            return;
        }
        let old = st.quota_us;
        update(&mut self.top_level_sum, st, |st| {
            st.inflight = Some((old, new_q));
            st.quota_us = new_q;
        });
        st.last_change_ns = ts;
        st.stats.scale_downs += 1;
        self.stats.scale_downs += 1;
        out.push(Action {
            cgroup: id,
            resource: Resource::Cpu,
            old,
            new: new_q,
            reason: Reason::CpuScaleDown,
            trigger_ts_ns: ts,
        });
    }
}

#[cfg(test)]
mod tests;
