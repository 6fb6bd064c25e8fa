//! Memory rules: raise a limit within the OOM race, coalesce storms, give memory back.
//!
//! # Scale up
//! A pressure signal ([`MemorySignal::Reclaim`], [`MemorySignal::UsageHigh`],
//! [`MemorySignal::OomKill`]) that is not part of an already answered storm starts a *pressure
//! round*. The new limit is `max(usage, limit) + step`, where
//!
//! ```text
//! step = max(step_min, step_fraction * limit, allocation_rate * lookahead)
//! new  = min(max(usage, limit) + step, max(limit + step_min, (1 + step_max_fraction) * usage))
//! ```
//!
//! and, when the round shows that the previous raise was outrun (reclaim, limit hits, an OOM
//! kill: not an early warning, the designed path), the step is multiplied by `2^escalation`.
//! `allocation_rate` (bytes/s) is estimated from the successive usage values of events and
//! samples; `escalation` counts consecutive rounds less than `escalation_window` apart (capped
//! at `max_escalation`) and resets after a quiet window (see the
//! [ledger](super::ledger#escalation-storms-and-capping)); an OOM kill doubles the step once
//! more.
//! The result is clamped to the policy's `max`, to what the node can back (the
//! [node budget](super::ledger#node-budget)) and to what the managed ancestors can back.
//!
//! Right-sizing: the rate sizes a raise for what the allocation under way needs next, and the
//! cap keeps the new limit within `1 + step_max_fraction` (1.5x by default) of the usage that
//! asked for it. However the burst ends, the limit it leaves is at most 1.5x its peak: a
//! single large allocation gets a limit just above it, not the maximum. The price is raises
//! in geometric steps (about 1.3x per raise with the default warning band): from 64 MiB to a
//! 600 MiB peak, eight raises of ~100 µs each, instead of the two oversized ones a doubling
//! step made.
//!
//! The defaults ([`MemoryPolicy::default`]) still win the race of the issue that set them: 8
//! MiB touched every 10 ms (800 MiB/s) from a 64 MiB limit, where the OOM kill comes 0.76 ms
//! after the first reclaim. The early warning comes an eighth of the limit below it (8 MiB at
//! 64 MiB: 10 ms of growth at that rate, against a decision of ~100 µs), and each raise comes
//! before reclaim starts.
//!
//! # Coalescing (one storm, one decision)
//! The [ledger's rules](super::ledger#coalescing-one-storm-one-decision) (a signal older than
//! the completion of the last raise, reported by [`MemoryDecider::applied`], or one while a
//! write is in flight, is part of the answered storm), plus the `limit` the signal reports:
//! below the limit already decided for the cgroup, it saw the old limit. The kernel keeps
//! limits in pages (it truncates what is written), so a reported limit within
//! [`LIMIT_GRANULARITY`] of ours is ours. One above ours was raised behind our back (or our
//! write raced) and is adopted, unless a write of ours can explain it: then it too is from
//! before one of our writes. A raise bounded to nothing (at `max`, or by the budget) is
//! [reported once per storm](super::ledger#escalation-storms-and-capping) as [`Skip::Capped`].
//!
//! # Scale down
//! After `cooldown` without any sign of pressure (pressure signals, coalesced or not, a PSI
//! `some` stall above `psi_threshold` of the sample interval, and refaults of more than
//! [`REFAULT_PRESSURE`] of the working set since the previous sample all count, and each
//! restarts the cooldown), each [`MemorySignal::Sample`] may lower the limit by
//! `down_fraction` of the distance to the goal (at least `min_change`, at most once per
//! `down_interval`: the [ledger's gating](super::ledger#scale-down)). The goal follows the
//! *working set* (usage less inactive file cache): the lowest limit that keeps the working set
//! plus a margin (`safety_margin`, at most an eighth of the working set) out of the
//! early-warning band ([`MemoryPolicy::floor_above`]), and never below `min`. Not lower: with
//! the working set inside the band, the kernel would warn at once and the limit would bounce
//! straight back up, restarting the cooldown (a slow oscillation). With the defaults the goal
//! is about 1.15x the working set plus 18 MiB, and a limit is within 1.3x of a working set of
//! 48 MiB or more 30 s after the cooldown (30% of the excess every 2 s).
//!
//! The goal may be below usage: the difference is inactive page cache, and the actuator has
//! the kernel reclaim it below the new limit's band before the limit comes down (v2
//! `memory.reclaim`, then `memory.max` only if usage is under it: the lowering is refused
//! otherwise, since the kernel OOM-kills what a `memory.max` write cannot reclaim; v1 the
//! limit write itself, which the kernel refuses with EBUSY rather than OOM-kill). Each step
//! reclaims at most `down_fraction` of the excess, so a scale-down is never a reclaim storm;
//! refaults (v2) or a stall stop it at once.
//!
//! A limit above the policy `max` (a max lowered by a reload, a cgroup opted in with a higher
//! limit) is brought down to `max` step by step like a scale-down, without the cooldown (at most
//! once per `down_interval`, never below `usage + safety_margin`). An unlimited one is left
//! unlimited (nothing is written on a cgroup that had no limit) unless the policy says
//! `limit_unlimited`: then it goes to `max` at the first sample. Every limit decided is a whole number of 4 KiB pages, bounds
//! (`max`, the budget) rounded down. A sample's limit that differs from ours is
//! [adopted](super::ledger#external-changes-and-failed-writes) when no write of ours explains
//! it.
//!
//! # Bounds
//! * Per cgroup: `min`, `max`, a [rate limit](super::ledger#rate-limit) on raises
//!   (`max_raises_per_sec`) and hysteresis (`min_change`: smaller changes are not made).
//! * The [node budget](super::ledger#node-budget), in bytes: what the node can still back
//!   beyond its reserve (the agent samples `MemAvailable` and subtracts `node.memory_reserve`),
//!   less what raises granted since that sample. A raise adds at most that much, whatever the
//!   other cgroups' limits add up to (they are routinely overcommitted, and an unlimited one
//!   takes only what it uses, which the sampled figure already shows). Lowering is always
//!   allowed.
//!
//! # Hierarchy
//! Cgroups are registered with their nearest *managed* ancestor (register ancestors first).
//! When a raise of `d` bytes would not fit under a managed ancestor's limit (its limit minus
//! its known usage is less than `d` plus its own `headroom`), the ancestor is raised to its
//! usage plus `d` plus its headroom (at least `step_min` more, page aligned), within its own
//! policy (max, node budget, rate limit, hysteresis), and so on up: the
//! [ledger's walk](super::ledger#hierarchy). The raise itself never exceeds what every managed
//! ancestor can back after that (its limit minus its usage); when that is less than the
//! hysteresis, it is refused as [`Cap::Ancestor`]. The actions are emitted ancestor first. When the
//! kernel reports that an ancestor's limit is what binds, the engine passes that ancestor's id
//! and the decision is made for it.

use super::ledger::{decider_api, Backing, Entry, Ext, Ledger};
use super::{mul_frac, Cap, CgId, Decision, RateEstimator, Reason, Resource, Skip};
#[cfg(test)]
use super::{Action, WriteOutcome};
use crate::{cgroupfs::Limit, units::MIB};

/// Granularity of kernel memory limits: the largest page size (64 KiB on some arm64 and
/// ppc64 kernels). The kernel truncates a written limit to whole pages, so a limit it reports
/// back may be up to one page below what was written.
pub const LIMIT_GRANULARITY: u64 = 64 * 1024;
/// Refaults since the previous sample above this fraction of the working set (and above 1
/// MiB) count as pressure: see [`MemorySignal::Sample`].
pub const REFAULT_PRESSURE: f64 = 0.01;
/// Limits are decided in whole 4 KiB pages, so that the kernel keeps exactly what was decided
/// on the usual page size (the actuator rounds down to the running kernel's page size, which
/// is what the kernel would keep, so a larger page costs less than a page).
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
    /// Before escalation, a raise sets the limit to at most `1 + step_max_fraction` times the
    /// usage the signal reports (or `step_min` above the limit, whichever is more), so the
    /// limit a burst leaves behind is at most that many times its peak. 0: no cap.
    pub step_max_fraction: f64,
    /// Early-warning distance below the limit (the engine programs it into the kernel side);
    /// scale-down keeps at least this much above usage (bytes). At most `headroom_fraction`
    /// of the limit (see [`MemoryPolicy::headroom_at`]).
    pub headroom: u64,
    /// The early-warning distance is at most this fraction of the limit (the kernel side takes
    /// the smaller of the two), so that a small or right-sized limit is not all warning band.
    /// 0: always `headroom`.
    pub headroom_fraction: f64,
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
    /// Bring a cgroup found without a limit to `max` (otherwise an unlimited cgroup is never
    /// given a limit: nothing is written on it).
    pub limit_unlimited: bool,
    /// Bring a limit its owner set above `max` down to `max`. Off by default: `max` bounds the
    /// agent's raises, and a limit its owner set above it (at discovery, or written later) is
    /// left as the owner set it (never fought); a raise of the agent's above a `max` lowered by
    /// a reload still comes down, to the owner's limit at the lowest.
    pub lower_to_max: bool,
}

impl Default for MemoryPolicy {
    /// Defaults that win the 0.76 ms race of an 800 MiB/s workload (see the module docs) and
    /// leave a right-sized limit behind: no bounds beyond the node budget (`min` 16 MiB, `max`
    /// unlimited), steps of at least 32 MiB, sized by 1 s of the allocation rate and at most
    /// half the usage, 64 MiB headroom but at most an eighth of the limit, 16 MiB safety
    /// margin, escalation (outrun raises only) within 2 s up to 16x, 30 s cooldown, then 30% of
    /// the excess every 2 s, 4 MiB hysteresis, 20 raises/s, PSI 1%; an unlimited cgroup stays
    /// unlimited.
    fn default() -> Self {
        Self {
            min: 16 * MIB,
            max: u64::MAX,
            step_min: 32 * MIB,
            step_fraction: 0.0,
            lookahead_ns: 1_000_000_000,
            step_max_fraction: 0.5,
            headroom: 64 * MIB,
            headroom_fraction: 0.125,
            safety_margin: 16 * MIB,
            escalation_window_ns: 2_000_000_000,
            max_escalation: 4,
            cooldown_ns: 30_000_000_000,
            down_interval_ns: 2_000_000_000,
            down_fraction: 0.3,
            min_change: 4 * MIB,
            max_raises_per_sec: 20,
            psi_threshold: 0.01,
            limit_unlimited: false,
            lower_to_max: false,
        }
    }
}

impl MemoryPolicy {
    /// The early-warning distance below `limit`: `headroom`, at most `headroom_fraction` of
    /// the limit (what the kernel side computes from the watch's two values).
    pub fn headroom_at(&self, limit: u64) -> u64 {
        if self.headroom_fraction > 0.0 {
            self.headroom.min(mul_frac(limit, self.headroom_fraction))
        } else {
            self.headroom
        }
    }

    /// The safety margin kept above `bytes` of usage: `safety_margin`, at most an eighth of
    /// `bytes` (a small working set is not given a margin larger than itself).
    pub fn margin_above(&self, bytes: u64) -> u64 {
        self.safety_margin.min(bytes / 8)
    }

    /// The lowest limit that keeps `bytes` of usage out of the early-warning band with the
    /// margin to spare: `bytes + margin_above(bytes) <= limit - headroom_at(limit)`, so a
    /// limit lowered to it does not warn at once (which would raise it straight back).
    pub fn floor_above(&self, bytes: u64) -> u64 {
        let need = bytes.saturating_add(self.margin_above(bytes));
        let fixed = need.saturating_add(self.headroom);
        let f = self.headroom_fraction;
        if f > 0.0 && f < 1.0 {
            let scaled = (need as f64 / (1.0 - f)).ceil();
            if scaled < fixed as f64 {
                // `+ 1`: the kernel side rounds the fraction down.
                return (scaled as u64).saturating_add(1);
            }
        }
        fixed
    }

    /// The kernel-side form of `headroom_fraction`: thousandths (0: no fraction).
    pub fn headroom_permille(&self) -> u32 {
        if self.headroom_fraction > 0.0 {
            ((self.headroom_fraction * 1000.0).round() as u32).clamp(1, 1000)
        } else {
            0
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
    /// Periodic sample from the slow path (about every second). `limit` is what the cgroup
    /// has (`Limit::Max`: none); `working_set` is usage minus inactive file pages; `psi_some_total_us`
    /// is the cgroup's cumulative PSI `some` stall (v2 `memory.pressure`), when available;
    /// `limit_hits` the kernel's cumulative count of charges that found usage at the limit
    /// (v2 `memory.events` `max`, v1 `memory.failcnt`), when available; `refaulted` the
    /// cumulative bytes of evicted pages faulted back in (v2 `memory.stat` workingset
    /// refaults), when available.
    Sample {
        ts_ns: u64,
        usage: u64,
        limit: Limit,
        working_set: u64,
        psi_some_total_us: Option<u64>,
        limit_hits: Option<u64>,
        refaulted: Option<u64>,
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

/// A memory cgroup's own decision state: the extension of its ledger entry.
#[derive(Clone, Debug)]
struct Mem {
    usage: u64,
    working_set: u64,
    rate: RateEstimator,
    /// The previous PSI sample: `(ts_ns, some_total_us)`.
    psi_prev: Option<(u64, u64)>,
    /// The previous limit-hit count: `(ts_ns, hits)`.
    hits_prev: Option<(u64, u64)>,
    /// The previous refault total (bytes).
    refaults_prev: Option<u64>,
}

impl Ext for Mem {
    const RESOURCE: Resource = Resource::Memory;
    type Policy = MemoryPolicy;

    /// A limit counts for its bytes.
    fn weight(&self, limit: u64) -> u64 {
        limit
    }

    /// No limit: what it uses.
    fn usage_weight(&self) -> u64 {
        self.usage
    }
}

/// A [`MemorySignal::Sample`]'s figures.
#[derive(Clone, Copy, Debug)]
struct Sampled {
    ts: u64,
    usage: u64,
    limit: u64,
    working_set: u64,
    psi_total_us: Option<u64>,
    limit_hits: Option<u64>,
    refaulted: Option<u64>,
}

/// The memory decider: registered cgroups and the node budget. See the module docs.
#[derive(Clone, Debug)]
pub struct MemoryDecider {
    ledger: Ledger<Mem>,
}

decider_api!(MemoryDecider, MemorySignal, MemoryPolicy);

impl MemoryDecider {
    /// A decider on a node that can back `available` more bytes beyond its reserve
    /// (`u64::MAX`: unbounded) until [`set_available`](Self::set_available) says otherwise.
    pub fn new(available: u64) -> Self {
        Self {
            ledger: Ledger::new(u64::MAX, available),
        }
    }

    /// What the node can back beyond its reserve, as last sampled (bytes; `u64::MAX`: not
    /// bounded).
    pub fn available(&self) -> u64 {
        self.ledger.available()
    }

    /// What the node can still back now: the sampled figure less the raises granted since.
    pub fn spare(&self) -> u64 {
        self.ledger.spare()
    }

    /// What raises granted since the figure was sampled (bytes).
    pub fn granted(&self) -> u64 {
        self.ledger.granted()
    }

    /// A new sample of what the node can back beyond its reserve (bytes), taken at
    /// `measured_ns` (see the [ledger](super::ledger#node-budget)).
    pub fn set_available(&mut self, available: u64, measured_ns: u64) {
        self.ledger.set_available(available, measured_ns);
    }

    /// A new sample of how much the cgroup's subtree may grow under its unmanaged ancestors
    /// limits (bytes; `u64::MAX`: none is limited), taken at `measured_ns` when the cgroup
    /// used `usage` bytes (see the
    /// [ledger](super::ledger#hierarchy)).
    pub fn set_outer_room(&mut self, id: CgId, room: u64, usage: u64, measured_ns: u64) {
        self.ledger.set_outer_room(id, room, usage, measured_ns);
    }

    /// Sum of the limits of managed cgroups without a managed ancestor, unlimited ones at their
    /// usage (reported; no bound applies to it). A lowering still in flight counts at its old
    /// value.
    pub fn committed(&self) -> u128 {
        self.ledger.committed()
    }

    /// Registers (or re-registers, keeping its history) a cgroup. `parent` is the nearest
    /// managed ancestor, which must already be managed (otherwise the cgroup counts as
    /// top-level). Cooldown starts at `now_ns`. May allocate.
    pub fn manage(
        &mut self,
        id: CgId,
        parent: Option<CgId>,
        policy: MemoryPolicy,
        current_limit: Limit,
        usage: u64,
        now_ns: u64,
    ) {
        // The decider's arithmetic is on integers: no limit is the largest.
        let current_limit = current_limit.as_u64_saturating();
        let fresh = Mem {
            usage,
            working_set: usage,
            rate: RateEstimator::default(),
            psi_prev: None,
            hits_prev: None,
            refaults_prev: None,
        };
        self.ledger
            .manage(id, parent, policy, current_limit, now_ns, fresh, |m| {
                m.usage = usage;
                m.rate.observe(now_ns, usage);
            });
    }

    /// The limit in force or being written (bytes).
    pub fn limit(&self, id: CgId) -> Option<u64> {
        self.ledger.get(id).map(Entry::limit)
    }

    /// The latest known usage (bytes).
    pub fn usage(&self, id: CgId) -> Option<u64> {
        self.ledger.get(id).map(|s| s.ext.usage)
    }

    /// U = R / C: latest known usage over the limit.
    pub fn utilization(&self, id: CgId) -> Option<f64> {
        self.ledger
            .get(id)
            .map(|s| s.ext.usage as f64 / s.limit().max(1) as f64)
    }

    /// The latest working set (bytes): with [`usage`](Self::usage), how much the engine may
    /// ask v2 `memory.reclaim` to reclaim before a scale-down step.
    pub fn working_set(&self, id: CgId) -> Option<u64> {
        self.ledger.get(id).map(|s| s.ext.working_set)
    }

    /// Estimated allocation rate (bytes/s).
    pub fn allocation_rate(&self, id: CgId) -> Option<f64> {
        self.ledger.get(id).map(|s| s.ext.rate.rate())
    }

    /// Decides what to do about `signal` for cgroup `id` (the cgroup whose limit binds).
    /// Writes the outcome into `out` (cleared first). Does not allocate.
    pub fn on_signal(&mut self, id: CgId, signal: MemorySignal, out: &mut Decision) {
        if self.ledger.receive(id, out).is_none() {
            return;
        }
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
                self.ledger.count(id, |s| &mut s.oom_kills);
                self.pressure(id, Reason::OomRecovery, ts_ns, None, out)
            }
            MemorySignal::Sample {
                ts_ns,
                usage,
                limit,
                working_set,
                psi_some_total_us,
                limit_hits,
                refaulted,
            } => {
                let s = Sampled {
                    ts: ts_ns,
                    usage,
                    limit: limit.as_u64_saturating(),
                    working_set,
                    psi_total_us: psi_some_total_us,
                    limit_hits,
                    refaulted,
                };
                self.sample(id, s, out)
            }
        }
    }

    /// True when a pressure signal at `ts` reports a `limit` other than the one the decider
    /// believes, and no write of ours can explain it: the limit files are to be re-read (a
    /// cgroup found before its owner wrote its limit, an owner's change since). Signals from
    /// before our last write report the limit it replaced and are not re-read for.
    pub fn disagrees(&self, id: CgId, signal: &MemorySignal) -> bool {
        let (MemorySignal::Reclaim { ts_ns, limit, .. }
        | MemorySignal::UsageHigh { ts_ns, limit, .. }) = *signal
        else {
            return false;
        };
        let Some(st) = self.ledger.get(id) else {
            return false;
        };
        // The kernel reports an unlimited counter as a huge byte count: the same as ours.
        let limit = Limit::from_bytes(limit).as_u64_saturating();
        st.settled(ts_ns) && limit.abs_diff(st.limit()) >= LIMIT_GRANULARITY
    }

    /// The owner wrote `limit` (re-read from the file at `now`): adopted at once (see the
    /// [ledger](super::ledger#external-changes-and-failed-writes)).
    pub fn owner_set(&mut self, id: CgId, now: u64, limit: Limit) {
        self.ledger
            .owner_set(id, now, limit.as_u64_saturating(), |_| {});
    }

    /// The file holds `limit`, the kubelet's echo of one of the agent's resize patches: the
    /// limit in force, not an owner's (see [`Ledger::echoed`](super::ledger::Ledger::echoed)).
    pub fn echoed(&mut self, id: CgId, now: u64, limit: Limit) {
        self.ledger.echoed(id, now, limit.as_u64_saturating());
    }

    /// The engine found `found` in the file just before performing `action` and did not
    /// write: the owner's value is adopted instead.
    pub fn yielded(&mut self, action: &super::Action, now: u64, found: Limit) {
        self.ledger
            .yielded(action, now, found.as_u64_saturating(), |_| {});
    }

    fn pressure(
        &mut self,
        id: CgId,
        reason: Reason,
        ts: u64,
        seen: Option<(u64, u64)>,
        out: &mut Decision,
    ) {
        let Some(st) = self.ledger.get_mut(id) else {
            return;
        };
        // Monitor: what the signal tells about usage, whatever is decided.
        if let Some((usage, _)) = seen {
            st.ext.usage = usage;
            st.ext.rate.observe(ts, usage);
        }
        // The reported limit: stale if it is from before one of our writes.
        let ours = st.limit();
        let stale = match seen {
            // The kernel keeps limits in pages (it truncates what is written): a reported
            // limit within one page of ours is ours.
            Some((_, limit)) if limit.saturating_add(LIMIT_GRANULARITY) <= ours => true,
            // Raised behind our back (or our write raced): adopt what the kernel saw, unless
            // it saw a limit from before one of our writes.
            Some((_, limit)) if limit > ours.saturating_add(LIMIT_GRANULARITY) => {
                !self.ledger.adopt(id, ts, limit, |_| {})
            }
            _ => false,
        };
        let Some(escalation) = self.ledger.open_round(id, ts, stale, out) else {
            return;
        };
        let Some(st) = self.ledger.get(id) else {
            return;
        };

        // Decide the target's new limit.
        let p = st.policy;
        let (limit, usage) = (st.limit(), st.ext.usage);
        let mut step = p
            .step_min
            .max(mul_frac(limit, p.step_fraction))
            .max(mul_frac(p.lookahead_ns, st.ext.rate.rate() / 1e9));
        if p.step_max_fraction > 0.0 {
            // What the allocation rate says the next moments need, but the new limit never
            // more than `1 + step_max_fraction` times what is used (or `step_min` above the
            // limit): the limit a burst leaves behind stays within that of its peak, whenever
            // the burst stops.
            let base = usage.max(limit);
            let cap = limit
                .saturating_add(p.step_min)
                .max(usage.saturating_add(mul_frac(usage, p.step_max_fraction)));
            step = step.min(cap.saturating_sub(base)).max(p.min_change);
        }
        // An early warning is the designed path: the raise before it kept ahead, and the rate
        // estimate sizes this one. Reclaim, limit hits and OOM kills mean a raise was outrun
        // (or no warning came): those rounds escalate.
        if reason != Reason::EarlyWarning {
            step = step.saturating_mul(1u64 << escalation.min(32));
        }
        if reason == Reason::OomRecovery {
            step = step.saturating_mul(2);
        }
        let wanted = page_floor(usage.max(limit).saturating_add(step));
        let mut new = wanted;
        let mut cap = None;
        // Bounds are rounded down to whole pages: the kernel keeps whole pages (it would
        // truncate the rest), and a bound is never exceeded.
        if new > p.max {
            new = page_floor(p.max);
            cap = Some(Cap::AtMax);
        }
        let room = self.ledger.room(st);
        if new > room {
            new = page_floor(room);
            cap = Some(Cap::Budget);
        }
        if new <= limit || new < usage || new - limit < p.min_change {
            let skip = cap.map_or(Skip::BelowHysteresis, Skip::Capped);
            let allowed = cap.map(|_| new);
            self.ledger
                .bounded(id, skip, Some(wanted), allowed, ts, out);
            return;
        }

        // Hierarchy: a managed ancestor binds when its limit is below its known usage plus the
        // raise plus its own headroom; it is raised to that (at least its step_min more),
        // within its own policy. It backs what its subtree may still grow under its limit.
        let ancestor = |ps: &Entry<Mem>, delta: u64, room: u64| {
            let (p, limit, usage) = (ps.policy, ps.limit(), ps.ext.usage);
            let slack = limit.saturating_sub(usage);
            let need = usage.saturating_add(delta).saturating_add(p.headroom);
            if limit >= need {
                return Backing { raise: None, slack };
            }
            let pnew = page_floor(
                need.max(limit.saturating_add(p.step_min))
                    .min(p.max)
                    .min(room),
            );
            if pnew <= limit || pnew < usage || pnew - limit < p.min_change {
                return Backing { raise: None, slack };
            }
            Backing {
                raise: Some((pnew, pnew - limit)),
                slack: pnew - usage,
            }
        };
        // What the ancestors back, if less than the raise: a smaller raise, if worth making.
        let shrink = |st: &Entry<Mem>, backed: u64| {
            let (p, limit, usage) = (st.policy, st.limit(), st.ext.usage);
            let smaller = page_floor(limit.saturating_add(backed));
            if smaller <= limit || smaller < usage || smaller - limit < p.min_change {
                Err(smaller.max(limit))
            } else {
                Ok(smaller)
            }
        };
        self.ledger.raise(
            id,
            new,
            new - limit,
            escalation,
            reason,
            ts,
            out,
            ancestor,
            shrink,
        );
    }

    fn sample(&mut self, id: CgId, s: Sampled, out: &mut Decision) {
        let Sampled {
            ts,
            usage,
            limit,
            working_set,
            psi_total_us,
            limit_hits,
            refaulted,
        } = s;
        let Some(st) = self.ledger.get_mut(id) else {
            return;
        };
        let m = &mut st.ext;
        // Charges that found usage at the limit since the previous sample: pressure, which the
        // event path answers unless its records were lost (a full ring buffer). Then no raise
        // completed during the interval, and this sample answers it.
        let hit_since = match (limit_hits, m.hits_prev) {
            (Some(h), Some((pts, ph))) if h > ph && ts > pts => Some(pts),
            _ => None,
        };
        if limit_hits.is_some() {
            m.hits_prev = limit_hits.map(|h| (ts, h));
        }
        m.usage = usage;
        m.working_set = working_set.min(usage);
        m.rate.observe(ts, usage);
        let mut stalled = false;
        if let Some(total) = psi_total_us {
            if let Some((pts, ptotal)) = m.psi_prev {
                if ts > pts {
                    let stalled_ns = total.saturating_sub(ptotal) as f64 * 1e3;
                    stalled = stalled_ns / (ts - pts) as f64 > st.policy.psi_threshold;
                }
            }
            m.psi_prev = Some((ts, total));
        }
        // Refaults: pages the cgroup needed back after they were reclaimed. More than
        // REFAULT_PRESSURE of the working set since the previous sample means reclaim (ours,
        // after a lowering, or the kernel's at the limit) is cutting into what is used: as
        // much a sign of pressure as a stall, and it stops a scale-down at once.
        if let Some(total) = refaulted {
            if let Some(prev) = m.refaults_prev {
                let since = total.saturating_sub(prev);
                stalled |= since > MIB.max(mul_frac(m.working_set, REFAULT_PRESSURE));
            }
            m.refaults_prev = Some(total);
        }
        if stalled {
            st.note_pressure(ts);
        }
        let (in_flight, ours) = (st.in_flight(), st.limit());
        // An unlimited cgroup counts by its usage.
        self.ledger.recount(id);
        if in_flight {
            return;
        }
        if limit != ours {
            // The kernel's value is authoritative (an external change, or a dry run).
            self.ledger.adopt(id, ts, limit, |_| {});
        }
        let Some(st) = self.ledger.get(id) else {
            return;
        };
        if let Some(since) = hit_since {
            if st.no_raise_completed_after(since) {
                self.pressure(id, Reason::LimitHits, ts, Some((usage, limit)), out);
                return;
            }
        }

        let (p, limit) = (st.policy, st.limit());
        if limit == u64::MAX && !p.limit_unlimited {
            // No limit was set by its owner, and the policy does not ask for one: nothing is
            // ever written on it (it cannot bind, so it never needs a raise either).
            return;
        }
        let hard_floor = p.min.max(usage.saturating_add(p.safety_margin));
        let new = if limit > p.max {
            // A limit above the policy's max (a max lowered by a reload, a cgroup opted in
            // with a higher limit) is brought down to it step by step, like a scale-down
            // (`down_fraction` of the distance, at least `min_change`, at most once per
            // `down_interval`) but without waiting for the cooldown, and never below usage +
            // safety margin. An unlimited cgroup has no distance to take a fraction of: it
            // goes to the goal at once.
            let mut goal = page_floor(p.max).max(page_ceil(hard_floor));
            let max_asked = p.lower_to_max || (limit == u64::MAX && p.limit_unlimited);
            if !max_asked {
                // The owner's limit is never lowered to the max, only the agent's raises (an
                // unlimited one is given the max only where `limit_unlimited` asks for it).
                goal = goal.max(st.owner_limit());
            }
            if goal >= limit {
                return;
            }
            if limit == u64::MAX {
                goal
            } else {
                if !st.may_step(ts) {
                    return;
                }
                let gap = limit - goal;
                let dec = mul_frac(gap, p.down_fraction).max(p.min_change).min(gap);
                page_ceil(limit - dec).max(goal)
            }
        } else {
            if !st.may_lower(ts) {
                return;
            }
            // The goal follows the working set, not usage: what usage holds beyond it is
            // inactive file cache, which the kernel reclaims when the limit comes down (v1: the
            // write reclaims, and refuses with EBUSY rather than OOM-kill; v2: the actuator
            // asks memory.reclaim first and does not lower memory.max below what is left).
            // Never below the working set plus the margin, and clear of the warning band.
            let goal = p.min.max(page_ceil(p.floor_above(working_set.min(usage))));
            if goal >= limit {
                return;
            }
            let gap = limit - goal;
            let dec = mul_frac(gap, p.down_fraction).max(p.min_change).min(gap);
            if dec < p.min_change {
                return;
            }
            // Page aligned, rounded up so the floor holds.
            page_ceil(limit - dec)
        };
        self.ledger.lower(id, new, Reason::ScaleDown, ts, out);
    }
}

#[cfg(test)]
mod tests;
