//! Memory rules: raise a limit within the OOM race, coalesce storms, give memory back.
//!
//! # Scale up
//! A pressure signal ([`MemorySignal::Reclaim`], [`MemorySignal::UsageHigh`],
//! [`MemorySignal::OomKill`]) that is not part of an already answered storm starts a *pressure
//! round*. The new limit is `max(usage, limit) + step`, where
//!
//! ```text
//! step = max(step_min, step_fraction * limit, allocation_rate * lookahead) * 2^escalation
//! ```
//!
//! `allocation_rate` (bytes/s) is estimated from the successive usage values of events and
//! samples; `escalation` counts consecutive rounds less than `escalation_window` apart (capped
//! at `max_escalation`) and resets after a quiet window; an OOM kill doubles the step once more.
//! The result is clamped to the policy's `max` and, for a top-level managed cgroup, to what is
//! left of the node budget.
//!
//! The defaults ([`MemoryPolicy::default`]) are sized for the workload of the issue: 8 MiB
//! touched every 10 ms (800 MiB/s) from a 64 MiB limit, where the OOM kill comes 0.76 ms after
//! the first reclaim. The first raise is at least 64 MiB (80 ms of growth at that rate: a
//! decision costs ~100 us), the rate estimate then makes later steps 160 MiB (200 ms of growth)
//! and escalation doubles them; the 64 MiB early-warning headroom means a raise usually comes
//! before reclaim starts at all.
//!
//! # Coalescing (one storm, one decision)
//! A pressure signal belongs to the storm that was already answered, and is counted as
//! [`Skip::Coalesced`], when
//! * its kernel timestamp is earlier than the completion of the last raise (reported by
//!   [`MemoryDecider::applied`]): it was queued before the new limit existed;
//! * its `limit` is below the limit already decided for the cgroup (it saw the old limit); or
//! * a write for the cgroup is still in flight (decided but not yet `applied`).
//!
//! Pressure after the raise completed is new pressure, and escalates the step. When a raise
//! is bounded to nothing (at `max`, or by the budget), [`Skip::Capped`] is reported for the
//! first signal of the storm and `Coalesced` for the rest, so the engine logs it once.
//!
//! # Scale down
//! After `cooldown` without any sign of pressure (pressure signals, coalesced or not, and PSI
//! `some` stall above `psi_threshold` of the sample interval all count, and each restarts the
//! cooldown), each [`MemorySignal::Sample`] may lower the limit by `down_fraction` of the
//! distance to the goal `max(min, usage + headroom + safety_margin)` (at least `min_change`,
//! at most once per `down_interval`). Not lower: with the limit closer than `headroom` to the
//! current usage, the kernel would send an early warning at once and the limit would bounce
//! straight back up, restarting the cooldown (a slow oscillation). So the limit follows
//! *usage* down, not the working set directly; to bring it toward the working set on v2, the
//! engine can write `memory.reclaim` (usage minus working set) first, and the next sample's
//! lower usage lets the limit follow. A limit above the policy `max`
//! (for example an unlimited cgroup that was just opted in) is brought down to `max` by the
//! first sample, cooldown or not (never below `usage + safety_margin`: with usage that high,
//! it waits).
//!
//! # Bounds
//! * Per cgroup: `min`, `max`, a rate limit on raises (`max_raises_per_sec`, burst of the
//!   same size) and hysteresis (`min_change`: smaller changes are not made).
//! * Node budget: the sum of the limits of managed cgroups **without a managed ancestor**
//!   never exceeds the budget through a raise. A descendant's limit nests inside its
//!   ancestor's (the ancestor's limit bounds the whole subtree), so counting descendants too
//!   would double-count the same memory. Lowering is always allowed, so a node registered
//!   over budget only moves back toward it.
//!
//! # Hierarchy
//! Cgroups are registered with their nearest *managed* ancestor (register ancestors first).
//! When a raise of `d` bytes would not fit under a managed ancestor's limit (its limit minus
//! its known usage is less than `d` plus its own `headroom`), the ancestor is raised too,
//! within its own policy (max, budget if top-level, rate limit, hysteresis), and so on up.
//! The actions are emitted ancestor first. When the kernel reports that an ancestor's limit is
//! what binds, the engine passes that ancestor's id and the decision is made for it.

use std::collections::HashMap;

use super::{
    mul_frac, Action, Cap, CgId, Decision, RateEstimator, RateLimiter, Reason, Resource, Skip,
    WriteOutcome, MAX_ACTIONS,
};
use crate::units::MIB;

/// Granularity of kernel memory limits: the largest page size (64 KiB on some arm64 and
/// ppc64 kernels). The kernel truncates a written limit to whole pages, so a limit it reports
/// back may be up to one page below what was written.
pub const LIMIT_GRANULARITY: u64 = 64 * 1024;
/// Limits are written in whole 4 KiB pages, so that the kernel keeps exactly what was decided
/// on the usual page size.
const PAGE: u64 = 4096;

fn page_floor(v: u64) -> u64 {
    v & !(PAGE - 1)
}

fn page_ceil(v: u64) -> u64 {
    v.checked_add(PAGE - 1).map_or(v, page_floor)
}

/// Per-cgroup memory policy, in bytes and nanoseconds (see the module docs for the rules).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryPolicy {
    /// Lowest limit the decider sets (bytes).
    pub min: u64,
    /// Highest limit the decider sets (bytes).
    pub max: u64,
    /// Smallest raise (bytes).
    pub step_min: u64,
    /// Smallest raise as a fraction of the current limit.
    pub step_fraction: f64,
    /// How far ahead the allocation rate is extrapolated when sizing a raise (ns).
    pub lookahead_ns: u64,
    /// Early-warning distance below the limit (the engine programs it into the kernel side);
    /// scale-down keeps at least this much above usage (bytes).
    pub headroom: u64,
    /// Scale-down keeps usage + headroom + this below the limit (bytes); a limit above `max`
    /// is cut to `max` but never below usage + this.
    pub safety_margin: u64,
    /// Pressure rounds closer together than this escalate the step (ns).
    pub escalation_window_ns: u64,
    /// Most doublings of the step (the step grows to at most `2^max_escalation` times).
    pub max_escalation: u32,
    /// Quiet time before the limit is lowered (ns).
    pub cooldown_ns: u64,
    /// Least time between two lowering steps (ns).
    pub down_interval_ns: u64,
    /// Fraction of the distance to the goal removed per lowering step.
    pub down_fraction: f64,
    /// Hysteresis: changes smaller than this are not made (bytes).
    pub min_change: u64,
    /// Raises per second allowed on average (bursts of the same number).
    pub max_raises_per_sec: u32,
    /// PSI `some` stall, as a fraction of the sample interval, that counts as pressure.
    pub psi_threshold: f64,
}

impl Default for MemoryPolicy {
    /// Defaults that win the 0.76 ms race of an 800 MiB/s workload (see the module docs) and
    /// give memory back slowly: no bounds beyond the node budget (`min` 16 MiB, `max`
    /// unlimited), steps of at least 64 MiB or 25% of the limit, 200 ms lookahead, 64 MiB
    /// headroom, 16 MiB safety margin, escalation within 2 s up to 16x, 30 s cooldown, then a
    /// quarter of the excess every 5 s, 4 MiB hysteresis, 20 raises/s, PSI 1%.
    fn default() -> Self {
        Self {
            min: 16 * MIB,
            max: u64::MAX,
            step_min: 64 * MIB,
            step_fraction: 0.25,
            lookahead_ns: 200_000_000,
            headroom: 64 * MIB,
            safety_margin: 16 * MIB,
            escalation_window_ns: 2_000_000_000,
            max_escalation: 4,
            cooldown_ns: 30_000_000_000,
            down_interval_ns: 5_000_000_000,
            down_fraction: 0.25,
            min_change: 4 * MIB,
            max_raises_per_sec: 20,
            psi_threshold: 0.01,
        }
    }
}

/// What the engine tells the memory decider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemorySignal {
    /// The kernel began memcg reclaim at this cgroup's limit (the last-chance signal).
    Reclaim { ts_ns: u64, usage: u64, limit: u64 },
    /// Usage crossed `limit - headroom` (early warning).
    UsageHigh { ts_ns: u64, usage: u64, limit: u64 },
    /// The OOM killer chose a victim in this cgroup.
    OomKill { ts_ns: u64 },
    /// Periodic sample from the slow path (about every second). `limit` is `u64::MAX` for an
    /// unlimited cgroup; `working_set` is usage minus inactive file pages; `psi_some_total_us`
    /// is the cgroup's cumulative PSI `some` stall (v2 `memory.pressure`), when available.
    Sample {
        ts_ns: u64,
        usage: u64,
        limit: u64,
        working_set: u64,
        psi_some_total_us: Option<u64>,
    },
}

impl MemorySignal {
    /// The signal's timestamp.
    pub const fn ts_ns(&self) -> u64 {
        match *self {
            Self::Reclaim { ts_ns, .. }
            | Self::UsageHigh { ts_ns, .. }
            | Self::OomKill { ts_ns }
            | Self::Sample { ts_ns, .. } => ts_ns,
        }
    }
}

/// Counters, per cgroup and for the whole decider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Signals received.
    pub signals: u64,
    /// Raises decided (including ancestors').
    pub raises: u64,
    /// Lowerings decided.
    pub scale_downs: u64,
    /// Pressure signals folded into an answered storm.
    pub coalesced: u64,
    /// Raises refused by the rate limit.
    pub rate_limited: u64,
    /// Raises bounded to nothing (reported once per storm).
    pub capped: u64,
    /// Signals for cgroups that are not managed.
    pub unmanaged: u64,
    /// OOM kills seen.
    pub oom_kills: u64,
    /// Writes the engine reported as failed.
    pub failed_writes: u64,
}

#[derive(Clone, Debug)]
struct MemState {
    policy: MemoryPolicy,
    parent: Option<CgId>,
    /// The limit in force, or being written (the decided value).
    limit: u64,
    /// A decided write that `applied` has not confirmed yet: `(old, new)`.
    inflight: Option<(u64, u64)>,
    usage: u64,
    working_set: u64,
    rate: RateEstimator,
    limiter: RateLimiter,
    escalation: u32,
    /// Timestamp of the last pressure round that led to a raise.
    last_round_ns: Option<u64>,
    /// Last sign of pressure of any kind (restarts the cooldown).
    last_pressure_ns: u64,
    /// Completion of the last raise.
    last_raise_done_ns: Option<u64>,
    /// Completion of the last write of any kind.
    last_write_done_ns: u64,
    /// Time of the last decided change (spaces lowering steps).
    last_change_ns: u64,
    /// The limit at which `Capped` was last reported (once per storm).
    capped_reported_at: Option<u64>,
    psi_prev: Option<(u64, u64)>,
    stats: MemoryStats,
}

impl MemState {
    /// What the cgroup's limit counts for in the budget: the decided limit, or the old one
    /// while a lowering is in flight.
    fn counted(&self) -> u64 {
        match self.inflight {
            Some((old, _)) => old.max(self.limit),
            None => self.limit,
        }
    }
}

/// Applies `f` to `st`, keeping the top-level sum in step with `st`'s counted limit.
fn update(sum: &mut u128, st: &mut MemState, f: impl FnOnce(&mut MemState)) {
    let before = st.counted();
    f(st);
    if st.parent.is_none() {
        *sum = *sum - u128::from(before) + u128::from(st.counted());
    }
}

/// The memory decider: registered cgroups and the node budget. See the module docs.
#[derive(Clone, Debug)]
pub struct MemoryDecider {
    cgroups: HashMap<CgId, MemState>,
    budget: u64,
    /// Sum of [`MemState::counted`] over top-level managed cgroups (u128: unlimited cgroups
    /// count as `u64::MAX` without overflow).
    top_level_sum: u128,
    stats: MemoryStats,
}

/// A raise being assembled: `(cgroup, old, new)`.
type Step = (CgId, u64, u64);

impl MemoryDecider {
    /// A decider whose top-level managed limits may add up to `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            cgroups: HashMap::new(),
            budget,
            top_level_sum: 0,
            stats: MemoryStats::default(),
        }
    }

    /// The node budget (bytes).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Changes the node budget (configuration reload). Lowering it below the current sum
    /// takes nothing away; it only blocks raises until scale-downs bring the sum under it.
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    /// Sum of the limits of managed cgroups without a managed ancestor (what the budget
    /// bounds). A lowering still in flight counts at its old value: the memory it frees is not
    /// handed to anyone else until the kernel has accepted the lower limit.
    pub fn committed(&self) -> u128 {
        self.top_level_sum
    }

    /// Registers (or re-registers, keeping its history) a cgroup. `parent` is the nearest
    /// managed ancestor, which must already be managed (otherwise the cgroup counts as
    /// top-level). Cooldown starts at `now_ns`. May allocate.
    pub fn manage(
        &mut self,
        id: CgId,
        parent: Option<CgId>,
        policy: MemoryPolicy,
        current_limit: u64,
        usage: u64,
        now_ns: u64,
    ) {
        let parent = parent.filter(|p| *p != id && self.cgroups.contains_key(p));
        if let Some(old) = self.cgroups.get(&id) {
            if old.parent.is_none() {
                self.top_level_sum -= u128::from(old.counted());
            }
        }
        let st = self.cgroups.entry(id).or_insert_with(|| MemState {
            policy,
            parent,
            limit: current_limit,
            inflight: None,
            usage,
            working_set: usage,
            rate: RateEstimator::default(),
            limiter: RateLimiter::new(policy.max_raises_per_sec),
            escalation: 0,
            last_round_ns: None,
            last_pressure_ns: now_ns,
            last_raise_done_ns: None,
            last_write_done_ns: 0,
            last_change_ns: 0,
            capped_reported_at: None,
            psi_prev: None,
            stats: MemoryStats::default(),
        });
        if st.policy.max_raises_per_sec != policy.max_raises_per_sec {
            st.limiter = RateLimiter::new(policy.max_raises_per_sec);
        }
        st.policy = policy;
        st.parent = parent;
        st.limit = current_limit;
        st.inflight = None;
        st.usage = usage;
        st.rate.observe(now_ns, usage);
        if parent.is_none() {
            self.top_level_sum += u128::from(current_limit);
        }
    }

    /// Stops managing a cgroup (removed, or no longer selected). Its managed children are
    /// re-parented to its own managed parent (or become top-level). Returns whether it was
    /// managed.
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

    /// The limit in force or being written (bytes).
    pub fn limit(&self, id: CgId) -> Option<u64> {
        self.cgroups.get(&id).map(|s| s.limit)
    }

    /// The latest known usage (bytes).
    pub fn usage(&self, id: CgId) -> Option<u64> {
        self.cgroups.get(&id).map(|s| s.usage)
    }

    /// U = R / C: latest known usage over the limit.
    pub fn utilization(&self, id: CgId) -> Option<f64> {
        self.cgroups
            .get(&id)
            .map(|s| s.usage as f64 / s.limit.max(1) as f64)
    }

    /// The latest working set (bytes): with [`usage`](Self::usage), how much the engine may
    /// ask v2 `memory.reclaim` to reclaim before a scale-down step.
    pub fn working_set(&self, id: CgId) -> Option<u64> {
        self.cgroups.get(&id).map(|s| s.working_set)
    }

    /// Estimated allocation rate (bytes/s).
    pub fn allocation_rate(&self, id: CgId) -> Option<f64> {
        self.cgroups.get(&id).map(|s| s.rate.rate())
    }

    /// The cgroup's policy.
    pub fn policy(&self, id: CgId) -> Option<&MemoryPolicy> {
        self.cgroups.get(&id).map(|s| &s.policy)
    }

    /// Counters of one cgroup.
    pub fn cgroup_stats(&self, id: CgId) -> Option<&MemoryStats> {
        self.cgroups.get(&id).map(|s| &s.stats)
    }

    /// Counters of the whole decider.
    pub fn stats(&self) -> &MemoryStats {
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

    /// Decides what to do about `signal` for cgroup `id` (the cgroup whose limit binds).
    /// Writes the outcome into `out` (cleared first). Does not allocate.
    pub fn on_signal(&mut self, id: CgId, signal: MemorySignal, out: &mut Decision) {
        out.clear();
        self.stats.signals += 1;
        let Some(st) = self.cgroups.get_mut(&id) else {
            self.stats.unmanaged += 1;
            out.skip(Skip::Unmanaged);
            return;
        };
        st.stats.signals += 1;
        match signal {
            MemorySignal::Reclaim {
                ts_ns,
                usage,
                limit,
            } => self.pressure(id, Reason::Pressure, ts_ns, Some((usage, limit)), out),
            MemorySignal::UsageHigh {
                ts_ns,
                usage,
                limit,
            } => self.pressure(id, Reason::EarlyWarning, ts_ns, Some((usage, limit)), out),
            MemorySignal::OomKill { ts_ns } => {
                st.stats.oom_kills += 1;
                self.stats.oom_kills += 1;
                self.pressure(id, Reason::OomRecovery, ts_ns, None, out)
            }
            MemorySignal::Sample {
                ts_ns,
                usage,
                limit,
                working_set,
                psi_some_total_us,
            } => self.sample(id, ts_ns, usage, limit, working_set, psi_some_total_us, out),
        }
    }

    /// Feedback: the engine performed (or failed to perform) `action` and the write completed
    /// at `write_done_ns` (same clock as the signals). Must be called for every action.
    pub fn applied(&mut self, action: &Action, write_done_ns: u64, outcome: WriteOutcome) {
        if action.resource != Resource::Memory {
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
                        if st.limit == action.new {
                            st.limit = action.old;
                        }
                    }
                });
            }
        }
    }

    /// Room left in the budget for `st`'s limit if it is top-level (`u64::MAX` otherwise).
    fn budget_allows(&self, st: &MemState) -> u64 {
        if st.parent.is_some() {
            return u64::MAX;
        }
        let others = self.top_level_sum - u128::from(st.counted());
        let room = u128::from(self.budget).saturating_sub(others);
        u64::try_from(room).unwrap_or(u64::MAX)
    }

    fn pressure(
        &mut self,
        id: CgId,
        reason: Reason,
        ts: u64,
        seen: Option<(u64, u64)>,
        out: &mut Decision,
    ) {
        let Some(st) = self.cgroups.get_mut(&id) else {
            return;
        };
        // Monitor: what the signal tells about usage, whatever is decided.
        let prev_pressure_ns = st.last_pressure_ns;
        st.last_pressure_ns = st.last_pressure_ns.max(ts);
        if let Some((usage, _)) = seen {
            st.usage = usage;
            st.rate.observe(ts, usage);
        }
        // Coalescing.
        let stale_ts = st.last_raise_done_ns.is_some_and(|done| ts < done);
        let stale_limit = match seen {
            // The kernel keeps limits in pages (it truncates what is written): a reported
            // limit within one page of ours is ours.
            Some((_, limit)) if limit.saturating_add(LIMIT_GRANULARITY) <= st.limit => true,
            Some((_, limit)) if limit > st.limit.saturating_add(LIMIT_GRANULARITY) => {
                if st.inflight.is_none() && ts >= st.last_write_done_ns {
                    // Raised behind our back (or our write raced): adopt what the kernel saw.
                    update(&mut self.top_level_sum, st, |st| st.limit = limit);
                    false
                } else {
                    // Saw a limit from before one of our writes.
                    true
                }
            }
            _ => false,
        };
        if stale_ts || stale_limit || st.inflight.is_some() {
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
        // A new storm if the previous sign of pressure is older than the escalation window.
        let new_storm = ts.saturating_sub(prev_pressure_ns) > st.policy.escalation_window_ns;
        if new_storm {
            st.capped_reported_at = None;
        }
        let escalation = match st.last_round_ns {
            Some(last) if ts.saturating_sub(last) <= st.policy.escalation_window_ns => {
                (st.escalation + 1).min(st.policy.max_escalation)
            }
            _ => 0,
        };

        // Decide the target's new limit.
        let p = st.policy;
        let base = st.usage.max(st.limit);
        let mut step = p
            .step_min
            .max(mul_frac(st.limit, p.step_fraction))
            .max(mul_frac(p.lookahead_ns, st.rate.rate() / 1e9));
        step = step.saturating_mul(1u64 << escalation.min(32));
        if reason == Reason::OomRecovery {
            step = step.saturating_mul(2);
        }
        let mut new = page_floor(base.saturating_add(step));
        let mut cap = None;
        if new > p.max {
            new = p.max;
            cap = Some(Cap::AtMax);
        }
        let room = self.budget_allows(&self.cgroups[&id]);
        if new > room {
            new = room;
            cap = Some(Cap::Budget);
        }
        let st = self.cgroups.get_mut(&id).expect("looked up above");
        if new <= st.limit || new < st.usage || new - st.limit < p.min_change {
            let skip = match cap {
                Some(c) => Skip::Capped(c),
                None => Skip::BelowHysteresis,
            };
            if st.capped_reported_at == Some(st.limit) {
                st.stats.coalesced += 1;
                self.stats.coalesced += 1;
                out.skip(Skip::Coalesced);
            } else {
                st.capped_reported_at = Some(st.limit);
                st.stats.capped += 1;
                self.stats.capped += 1;
                out.skip(skip);
            }
            return;
        }

        // Hierarchy: raise managed ancestors whose limit would bind.
        let mut chain: [Step; MAX_ACTIONS - 1] = [(0, 0, 0); MAX_ACTIONS - 1];
        let mut n = 0;
        let mut delta = new - st.limit;
        let mut up = st.parent;
        while let Some(pid) = up {
            if n == chain.len() {
                break;
            }
            let Some(ps) = self.cgroups.get(&pid) else {
                break;
            };
            let need = ps
                .usage
                .saturating_add(delta)
                .saturating_add(ps.policy.headroom);
            if ps.limit >= need {
                break;
            }
            if ps.inflight.is_some() || !ps.limiter.allows(ts) {
                break;
            }
            let pnew = page_floor(
                need.max(ps.limit.saturating_add(ps.policy.step_min))
                    .min(ps.policy.max)
                    .min(self.budget_allows(ps)),
            );
            if pnew <= ps.limit || pnew < ps.usage || pnew - ps.limit < ps.policy.min_change {
                break;
            }
            chain[n] = (pid, ps.limit, pnew);
            n += 1;
            delta = pnew - ps.limit;
            up = ps.parent;
        }

        // Execute (in the decision) and remember.
        for &(pid, old, pnew) in chain[..n].iter().rev() {
            let ps = self.cgroups.get_mut(&pid).expect("walked above");
            Self::commit_raise(&mut self.top_level_sum, ps, pnew, ts);
            self.stats.raises += 1;
            out.push(Action {
                cgroup: pid,
                resource: Resource::Memory,
                old,
                new: pnew,
                reason: Reason::Ancestor,
                trigger_ts_ns: ts,
            });
        }
        let st = self.cgroups.get_mut(&id).expect("looked up above");
        let old = st.limit;
        Self::commit_raise(&mut self.top_level_sum, st, new, ts);
        st.escalation = escalation;
        st.last_round_ns = Some(ts);
        self.stats.raises += 1;
        out.push(Action {
            cgroup: id,
            resource: Resource::Memory,
            old,
            new,
            reason,
            trigger_ts_ns: ts,
        });
    }

    fn commit_raise(sum: &mut u128, st: &mut MemState, new: u64, ts: u64) {
        update(sum, st, |st| {
            st.inflight = Some((st.limit, new));
            st.limit = new;
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
        usage: u64,
        limit: u64,
        working_set: u64,
        psi_total_us: Option<u64>,
        out: &mut Decision,
    ) {
        let Some(st) = self.cgroups.get_mut(&id) else {
            return;
        };
        st.usage = usage;
        st.working_set = working_set.min(usage);
        st.rate.observe(ts, usage);
        if let Some(total) = psi_total_us {
            if let Some((pts, ptotal)) = st.psi_prev {
                if ts > pts {
                    let stalled_ns = total.saturating_sub(ptotal) as f64 * 1e3;
                    if stalled_ns / (ts - pts) as f64 > st.policy.psi_threshold {
                        st.last_pressure_ns = st.last_pressure_ns.max(ts);
                    }
                }
            }
            st.psi_prev = Some((ts, total));
        }
        if st.inflight.is_some() {
            return;
        }
        if limit != st.limit && ts >= st.last_write_done_ns {
            // The kernel's value is authoritative (an external change, or a dry run).
            update(&mut self.top_level_sum, st, |st| st.limit = limit);
        }

        let p = st.policy;
        let hard_floor = p.min.max(usage.saturating_add(p.safety_margin));
        // A lower limit would put today's usage inside the early-warning band (`limit -
        // headroom`): the kernel would warn at once, the limit would go up again and the
        // cooldown start over, a slow oscillation. So a gradual step stays above it.
        let floor = hard_floor.max(
            usage
                .saturating_add(p.headroom)
                .saturating_add(p.safety_margin),
        );
        let new = if st.limit > p.max {
            // Enforce the bound at once (an unlimited cgroup that was just opted in), unless
            // usage is above the maximum: then wait for it to drop rather than cut below it.
            if hard_floor > p.max {
                return;
            }
            p.max
        } else {
            if ts < st.last_pressure_ns.saturating_add(p.cooldown_ns)
                || ts < st.last_change_ns.saturating_add(p.down_interval_ns)
            {
                return;
            }
            // The working set (<= usage) cannot bind below that floor: it reaches the limit
            // through usage, once the engine has reclaimed the rest (v2 memory.reclaim).
            let goal = floor;
            if goal >= st.limit {
                return;
            }
            let gap = st.limit - goal;
            let dec = mul_frac(gap, p.down_fraction).max(p.min_change).min(gap);
            if dec < p.min_change {
                return;
            }
            // Page aligned, rounded up so the floor holds.
            page_ceil(st.limit - dec)
        };
        if new >= st.limit {
            return;
        }
        let old = st.limit;
        update(&mut self.top_level_sum, st, |st| {
            st.inflight = Some((old, new));
            st.limit = new;
        });
        st.last_change_ns = ts;
        st.stats.scale_downs += 1;
        self.stats.scale_downs += 1;
        out.push(Action {
            cgroup: id,
            resource: Resource::Memory,
            old,
            new,
            reason: Reason::ScaleDown,
            trigger_ts_ns: ts,
        });
    }
}

#[cfg(test)]
mod tests;
