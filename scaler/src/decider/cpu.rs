//! CPU rules: raise a CFS quota before throttling hurts, give it back after a burst.
//!
//! Same shape as the [memory rules](super::memory), in CPU terms, on the same
//! [ledger](super::ledger) (coalescing, escalation and storms, rate limit, node budget,
//! hierarchy walk, scale-down gating, external changes). Quotas are handled as
//! **microcores** (millionths of a core: `quota_us * 1e6 / period_us`) so that budgets and
//! bounds are exact integer sums; [`Action`](super::Action)s carry the quota in
//! **microseconds per period** at the period the cgroup was registered with (a quota that was
//! unlimited, v2 `max` or v1 `-1`, appears as `old == u64::MAX`; `new` is never unlimited).
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
//! with [escalation](super::ledger#escalation-storms-and-capping) as for memory (consecutive
//! rounds within `escalation_window`, up to `max_escalation`), clamped to `max` and, for a
//! cgroup without a managed ancestor, to the node's CPU budget. An unlimited quota is never
//! raised (reported as capped at max). From a 0.2-core quota under a 1.5-core burst, the
//! defaults go 0.2 -> 0.4 -> 0.8 -> 1.6 in three rounds (three 100 ms periods).
//!
//! # Coalescing
//! A pressure signal is part of an answered round as in the
//! [ledger](super::ledger#coalescing-one-storm-one-decision) (its timestamp is before the last
//! raise's completion, or a write is in flight), and when it reports a quota below the one
//! already decided, or above it while a write of ours can explain that. A quota-near signal
//! that reports a quota raised behind our back is answered from our quota; the next sample
//! adopts the kernel's quota and period.
//!
//! # Scale down
//! After `cooldown` without pressure (any of the signals above, including latency above the
//! target that did not lead to a raise), each sample may lower the quota by `down_fraction`
//! of its distance to the goal `max(min, usage * (1 + headroom) / quota_near, usage +
//! min_change)` (so usage ends up below the quota-near mark, with headroom: with the defaults
//! at 64% of the quota), at most once per `down_interval` (the
//! [ledger's gating](super::ledger#scale-down)), never below the usage observed over the last
//! sample interval. A quota above `max` (for example unlimited) is brought to `max` by the
//! first sample.
//!
//! # Hierarchy and budget
//! The [budget](super::ledger#node-budget), in microcores (`node.cpu_reserve`), bounds the sum
//! of the quotas of managed cgroups without a managed ancestor, an unlimited quota counting for
//! the usage of its last sample interval (not for infinity, which would lock every other raise
//! out). As for memory, a raise of `d` cores that does not
//! fit in a managed ancestor's quota (its quota minus its observed usage) raises the ancestor
//! first to its usage plus `d` (at least `step` more), within its own policy (the
//! [ledger's walk](super::ledger#hierarchy)); an unlimited ancestor is left alone. The raise
//! never exceeds what every managed ancestor can back (its quota minus its usage), or is
//! refused as [`Cap::Ancestor`].

use super::ledger::{decider_api, Backing, Entry, Ext, Ledger, UNLIMITED};
use super::{mul_frac, Cap, CgId, Decision, Reason, Resource, Skip};
#[cfg(test)]
use super::{Action, WriteOutcome};

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

#[derive(Clone, Copy, Debug)]
struct PrevSample {
    ts_ns: u64,
    usage_ns: u64,
    nr_throttled: u64,
}

/// A CPU cgroup's own decision state: the extension of its ledger entry.
#[derive(Clone, Debug)]
struct Cpu {
    /// The period the quota is per (µs).
    period_us: u64,
    /// Usage over the last sample interval (microcores).
    usage_uc: u64,
    /// The last sample interval saw throttling.
    throttled_recently: bool,
    prev: Option<PrevSample>,
    last_quota_near_ns: Option<u64>,
}

impl Ext for Cpu {
    const RESOURCE: Resource = Resource::Cpu;
    type Policy = CpuPolicy;

    /// A quota counts for its microcores at the cgroup's period.
    fn weight(&self, quota_us: u64) -> u64 {
        quota_to_microcores(quota_us, self.period_us)
    }

    /// No quota: the usage of the last sample interval.
    fn usage_weight(&self) -> u64 {
        self.usage_uc
    }
}

/// The CPU decider: registered cgroups and the node's CPU budget. See the module docs.
#[derive(Clone, Debug)]
pub struct CpuDecider {
    /// Quotas in µs per period, weighed in microcores.
    ledger: Ledger<Cpu>,
}

decider_api!(CpuDecider, CpuSignal, CpuPolicy);

impl CpuDecider {
    /// A decider whose top-level managed quotas may add up to `budget_cores`.
    pub fn new(budget_cores: f64) -> Self {
        Self {
            ledger: Ledger::new(cores_to_microcores(budget_cores), u64::MAX),
        }
    }

    /// The node budget (cores).
    pub fn budget_cores(&self) -> f64 {
        self.ledger.budget() as f64 / MICROCORES as f64
    }

    /// Changes the node budget (configuration reload); see [`MemoryDecider::set_budget`](super::MemoryDecider::set_budget).
    pub fn set_budget(&mut self, budget_cores: f64) {
        self.ledger.set_budget(cores_to_microcores(budget_cores));
    }

    /// Sum of the top-level managed quotas, in microcores (lowerings in flight at their old
    /// value, unlimited quotas at their usage).
    pub fn committed_microcores(&self) -> u128 {
        self.ledger.committed()
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
        let fresh = Cpu {
            period_us,
            usage_uc: 0,
            throttled_recently: false,
            prev: None,
            last_quota_near_ns: None,
        };
        let quota_us = quota_us.unwrap_or(u64::MAX);
        self.ledger
            .manage(id, parent, policy, quota_us, now_ns, fresh, |c| {
                c.period_us = period_us.max(1);
            });
    }

    /// The quota in force or being written, µs per period (`None`: unlimited).
    pub fn quota_us(&self, id: CgId) -> Option<Option<u64>> {
        self.ledger
            .get(id)
            .map(|s| (s.limit() != u64::MAX).then_some(s.limit()))
    }

    /// The quota in cores (`f64::INFINITY`: unlimited).
    pub fn quota_cores(&self, id: CgId) -> Option<f64> {
        self.ledger.get(id).map(|s| {
            if s.limit() == u64::MAX {
                f64::INFINITY
            } else {
                s.limit() as f64 / s.ext.period_us as f64
            }
        })
    }

    /// The period the cgroup was registered with (µs).
    pub fn period_us(&self, id: CgId) -> Option<u64> {
        self.ledger.get(id).map(|s| s.ext.period_us)
    }

    /// Usage over the last sample interval, in cores.
    pub fn usage_cores(&self, id: CgId) -> Option<f64> {
        self.ledger
            .get(id)
            .map(|s| s.ext.usage_uc as f64 / MICROCORES as f64)
    }

    /// U = R / C: usage over the last sample interval divided by the quota (0 if unlimited).
    pub fn utilization(&self, id: CgId) -> Option<f64> {
        self.ledger
            .get(id)
            .map(|s| s.ext.usage_uc as f64 / s.weight().max(1) as f64)
    }

    /// Decides what to do about `signal` for cgroup `id`; writes into `out` (cleared first).
    /// True when a quota-near signal reports a quota other than the one the decider believes,
    /// and no write of ours can explain it: the bandwidth files are to be re-read.
    pub fn disagrees(&self, id: CgId, signal: &CpuSignal) -> bool {
        let CpuSignal::QuotaNear {
            ts_ns,
            quota_ns,
            period_ns,
            ..
        } = *signal
        else {
            return false;
        };
        let Some(st) = self.ledger.get(id) else {
            return false;
        };
        st.settled(ts_ns) && quota_to_microcores(quota_ns, period_ns) != st.weight()
    }

    /// The owner wrote `quota` at `period_us` (re-read from the files at `now`): adopted at
    /// once.
    pub fn owner_set(&mut self, id: CgId, now: u64, quota: Option<u64>, period_us: u64) {
        self.ledger
            .owner_set(id, now, quota.unwrap_or(UNLIMITED), |c| {
                c.period_us = period_us.max(1)
            });
    }

    /// The engine found `quota` in the files just before performing `action` and did not
    /// write: the owner's value is adopted instead.
    pub fn yielded(
        &mut self,
        action: &super::Action,
        now: u64,
        quota: Option<u64>,
        period_us: u64,
    ) {
        self.ledger
            .yielded(action, now, quota.unwrap_or(UNLIMITED), |c| {
                c.period_us = period_us.max(1)
            });
    }

    /// Does not allocate.
    pub fn on_signal(&mut self, id: CgId, signal: CpuSignal, out: &mut Decision) {
        let Some(st) = self.ledger.receive(id, out) else {
            return;
        };
        match signal {
            CpuSignal::QuotaNear {
                ts_ns,
                quota_ns,
                period_ns,
                ..
            } => {
                st.ext.last_quota_near_ns = Some(ts_ns);
                // Stale if it saw a lower quota than ours, or a higher one that a write of ours
                // can explain (a quota raised behind our back is not adopted here: the next
                // sample does that).
                let seen_uc = quota_to_microcores(quota_ns, period_ns);
                let cur_uc = st.weight();
                let stale = seen_uc < cur_uc || (seen_uc > cur_uc && !st.settled(ts_ns));
                self.raise(id, Reason::CpuQuotaNear, ts_ns, stale, out);
            }
            CpuSignal::RunqLatency { ts_ns, p99_us } => {
                if p99_us <= st.policy.runq_latency_target_us {
                    return;
                }
                let (p, c) = (st.policy, &st.ext);
                let near = c
                    .last_quota_near_ns
                    .is_some_and(|t| ts_ns >= t && ts_ns - t <= p.escalation_window_ns);
                let busy = c.usage_uc as f64 >= p.quota_near_fraction * st.weight() as f64;
                if !(c.throttled_recently || near || busy) {
                    st.note_pressure(ts_ns);
                    self.ledger.count(id, |s| &mut s.not_quota_bound);
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

    fn raise(&mut self, id: CgId, reason: Reason, ts: u64, stale: bool, out: &mut Decision) {
        let Some(escalation) = self.ledger.open_round(id, ts, stale, out) else {
            return;
        };
        let Some(st) = self.ledger.get(id) else {
            return;
        };
        let (p, quota, period) = (st.policy, st.limit(), st.ext.period_us);
        let cur_uc = st.weight();
        let max_uc = max_microcores(&p);
        let step_uc = cores_to_microcores(p.step_cores)
            .max(mul_frac(cur_uc, p.step_fraction))
            .saturating_mul(1u64 << escalation.min(32));
        let wanted_uc = cur_uc.saturating_add(step_uc);
        let mut new_uc = wanted_uc;
        let mut cap = None;
        if new_uc > max_uc {
            new_uc = max_uc;
            cap = Some(Cap::AtMax);
        }
        let room = self.ledger.room(st);
        if new_uc > room {
            new_uc = room;
            cap = Some(Cap::Budget);
        }
        let new_q = microcores_to_quota(new_uc, period, false);
        let new_uc = quota_to_microcores(new_q, period);
        let min_change_uc = cores_to_microcores(p.min_change_cores);
        if quota == u64::MAX || new_q <= quota || new_uc.saturating_sub(cur_uc) < min_change_uc {
            // An unlimited quota cannot be raised: it is as good as at max.
            let skip = match (quota == u64::MAX, cap) {
                (true, _) => Skip::Capped(Cap::AtMax),
                (false, Some(c)) => Skip::Capped(c),
                (false, None) => Skip::BelowHysteresis,
            };
            let wanted = (quota != u64::MAX).then(|| microcores_to_quota(wanted_uc, period, false));
            let allowed = cap.map(|_| new_q.max(quota));
            self.ledger.bounded(id, skip, wanted, allowed, ts, out);
            return;
        }

        // A managed ancestor binds when its quota is below its observed usage plus the raise;
        // it is raised to that (at least its step more), within its own policy.
        let ancestor = |ps: &Entry<Cpu>, delta_uc: u64, room: u64| {
            let (p, quota, period) = (ps.policy, ps.limit(), ps.ext.period_us);
            if quota == u64::MAX {
                return Backing {
                    raise: None,
                    slack: u64::MAX,
                };
            }
            let p_uc = ps.weight();
            let slack = p_uc.saturating_sub(ps.ext.usage_uc);
            let need = ps.ext.usage_uc.saturating_add(delta_uc);
            if p_uc >= need {
                return Backing { raise: None, slack };
            }
            let pnew_uc = need
                .max(p_uc.saturating_add(cores_to_microcores(p.step_cores)))
                .min(max_microcores(&p))
                .min(room);
            let pnew = microcores_to_quota(pnew_uc, period, false);
            let pnew_uc = quota_to_microcores(pnew, period);
            if pnew <= quota || pnew_uc - p_uc < cores_to_microcores(p.min_change_cores) {
                return Backing { raise: None, slack };
            }
            Backing {
                raise: Some((pnew, pnew_uc - p_uc)),
                slack: pnew_uc.saturating_sub(ps.ext.usage_uc),
            }
        };
        // What the ancestors back, if less than the raise: a smaller raise, if worth making.
        let shrink = |st: &Entry<Cpu>, backed_uc: u64| {
            let (p, quota, period) = (st.policy, st.limit(), st.ext.period_us);
            let cur_uc = st.weight();
            let q = microcores_to_quota(cur_uc.saturating_add(backed_uc), period, false);
            let q_uc = quota_to_microcores(q, period);
            if q <= quota || q_uc.saturating_sub(cur_uc) < cores_to_microcores(p.min_change_cores) {
                Err(q.max(quota))
            } else {
                Ok(q)
            }
        };
        self.ledger.raise(
            id,
            new_q,
            new_uc - cur_uc,
            escalation,
            reason,
            ts,
            out,
            ancestor,
            shrink,
        );
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
        let Some(st) = self.ledger.get_mut(id) else {
            return;
        };
        // Usage and throttling over the interval since the previous sample (counters that
        // went backwards belong to a recreated cgroup: start over).
        let mut throttled = false;
        let mut throttled_after_raise = false;
        st.ext.throttled_recently = false;
        match st.ext.prev {
            Some(prev)
                if ts > prev.ts_ns
                    && usage_ns >= prev.usage_ns
                    && nr_throttled >= prev.nr_throttled =>
            {
                let uc = u128::from(usage_ns - prev.usage_ns) * u128::from(MICROCORES)
                    / u128::from(ts - prev.ts_ns);
                st.ext.usage_uc = u64::try_from(uc).unwrap_or(u64::MAX);
                if nr_throttled > prev.nr_throttled {
                    throttled = true;
                    st.ext.throttled_recently = true;
                    throttled_after_raise = st.no_raise_completed_after(prev.ts_ns);
                    st.note_pressure(ts);
                }
            }
            _ => {}
        }
        st.ext.prev = Some(PrevSample {
            ts_ns: ts,
            usage_ns,
            nr_throttled,
        });
        let in_flight = st.in_flight();
        let seen = quota_us.unwrap_or(u64::MAX);
        let changed = seen != st.limit() || period_us != st.ext.period_us;
        // An unlimited quota counts by its usage.
        self.ledger.recount(id);
        if throttled {
            self.ledger.count(id, |s| &mut s.throttled_intervals);
        }
        if in_flight {
            return;
        }
        if changed {
            // The kernel's value is authoritative (an external change, or a dry run).
            self.ledger
                .adopt(id, ts, seen, |c| c.period_us = period_us.max(1));
        }
        if throttled_after_raise {
            self.raise(id, Reason::CpuThrottled, ts, false, out);
            return;
        }
        let Some(st) = self.ledger.get(id) else {
            return;
        };

        let (p, period) = (st.policy, st.ext.period_us);
        let cur_uc = st.weight();
        let min_uc = cores_to_microcores(p.min_cores);
        let max_uc = max_microcores(&p);
        let min_change_uc = cores_to_microcores(p.min_change_cores);
        let floor = min_uc.max(st.ext.usage_uc);
        let new_uc = if cur_uc > max_uc {
            if floor > max_uc {
                // Usage above the maximum: wait for it to drop rather than cut below it.
                return;
            }
            max_uc
        } else {
            if !st.may_lower(ts) {
                return;
            }
            // Usage should sit below the quota-near mark, with headroom: lower, the kernel would
            // report quota-near right away and the quota would bounce back up.
            let factor = (1.0 + p.headroom_fraction) / p.quota_near_fraction.clamp(0.05, 1.0);
            let usage_uc = st.ext.usage_uc;
            let goal = mul_frac(usage_uc, factor)
                .max(usage_uc.saturating_add(min_change_uc))
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
        let mut new_q = microcores_to_quota(new_uc, period, true);
        if quota_to_microcores(new_q, period) > max_uc {
            // ...unless that would cross the maximum (new_uc >= floor still holds).
            new_q = microcores_to_quota(max_uc, period, false);
        }
        self.ledger.lower(id, new_q, Reason::CpuScaleDown, ts, out);
    }
}

/// The policy's maximum in microcores, at most [`MAX_MICROCORES`].
fn max_microcores(p: &CpuPolicy) -> u64 {
    cores_to_microcores(p.max_cores).min(MAX_MICROCORES)
}

#[cfg(test)]
mod tests;
