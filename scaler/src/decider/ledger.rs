//! The ledger of managed cgroups: the rules memory and CPU share.
//!
//! Both deciders keep one ledger of the cgroups they manage, generic over the resource. The
//! ledger holds, per cgroup, what the decision loop needs whatever the resource (the nearest
//! managed ancestor, the limit in force or being written, the write in flight, the storm and
//! rate-limit bookkeeping, the counters) plus the resource's own decision state as an
//! extension (`Entry::ext`: memory's usage and allocation rate, CPU's period and throttling
//! samples). The resource (`Ext`) says what a limit counts for in the node budget (bytes,
//! microcores) and sizes every step; the ledger applies the rules below. The resource rules are
//! in [`memory`](super::memory) and [`cpu`](super::cpu).
//!
//! Limits are kept in the unit of an [`Action`] (bytes; quota µs per period, `u64::MAX` for
//! unlimited); budgets and the room left in them in the resource's *weight* (`Ext::weight`).
//!
//! # Coalescing (one storm, one decision)
//! A pressure signal belongs to the storm that was already answered, and is counted as
//! [`Skip::Coalesced`], when
//! * its kernel timestamp is earlier than the completion of the last raise (reported by
//!   `applied`): it was queued before the new limit existed;
//! * the limit it reports shows it saw a limit from before one of our writes (the resource
//!   says when); or
//! * a write for the cgroup is still in flight (decided but not yet `applied`).
//!
//! Pressure after the raise completed is new pressure, and escalates the step.
//!
//! # Escalation, storms and capping
//! Every sign of pressure, coalesced or not, is remembered (it restarts the cooldown). A round
//! of pressure less than `escalation_window` after the previous raise round escalates the step
//! (one more doubling, at most `max_escalation`); a quiet window resets it. A signal more than
//! `escalation_window` after the previous sign of pressure starts a new *storm*. When a raise
//! is bounded to nothing (at `max`, by the budget, or below the hysteresis), [`Skip::Capped`]
//! (or [`Skip::BelowHysteresis`]) is reported for the first signal of the storm at that limit
//! and `Coalesced` for the rest, so the engine logs it once.
//!
//! # Rate limit
//! Each cgroup's raises (its own and those as an ancestor) go through a token bucket of
//! `max_raises_per_sec` with bursts of the same size; a refused raise is
//! [`Skip::RateLimited`]. The bucket bounds how often a limit *changes*: a raise whose write
//! failed (the kernel refused it: nothing was written) or was not made (its owner's value was
//! found instead, [`Ledger::yielded`]) gives its token back, so a retry once the obstacle is
//! gone is not refused for the attempts that changed nothing. Failed attempts stay bounded by
//! the signals that prompt them (each one a kernel event, which the kernel programs send once
//! per limit, again only after a pause).
//!
//! # Node budget
//! Two bounds, each optional (`u64::MAX`: none); a resource uses one or both.
//!
//! * **What the node can back** ([`Ledger::set_available`]): what the node still has beyond its
//!   reserve, as last sampled (memory: `MemAvailable` minus `node.memory_reserve`, fed by the
//!   agent's sampler), less the headroom already granted by raises since that sample (so two
//!   raises between samples cannot both spend the same memory). Every raise, nested or not,
//!   adds at most that much to its cgroup's limit (an ancestor raised with it too). Limits
//!   themselves are not summed: a node whose limits add up to more than its memory (the usual
//!   overcommit) still gets every raise it can back. A raise is charged for what it adds to the
//!   cgroup that wanted it (`new - old`; the ancestors raised with it only make room for that
//!   growth); a failed write gives its charge back. A new sample replaces the figure and drops
//!   the charges, unless a raise completed after the sample was taken (then they are kept until
//!   the next one).
//! * **A sum of limits** (CPU: `node.cpu_reserve`): the limits of managed cgroups **without a
//!   managed ancestor** never add up to more than the budget through a raise: a descendant's
//!   limit nests inside its ancestor's (the ancestor's limit bounds the whole subtree), so
//!   counting descendants too would double-count. An **unlimited** cgroup counts for what it
//!   really takes, its usage ([`Ext::usage_weight`], refreshed by its samples), not for
//!   infinity (which would lock every other raise out). A lowering still in flight counts at its
//!   old value: what it frees is not handed to anyone else until the kernel has accepted the
//!   lower limit. Lowering is always allowed, so a node registered (or a budget reloaded) over
//!   budget only moves back toward it. When a cgroup is forgotten, its managed children are
//!   re-parented to its own managed parent, or become top-level and count from then on.
//!
//! Every raise bounded to nothing is reported with its reason and what it asked for
//! ([`Decision::refusal`]), for the engine to log and count.
//!
//! # Hierarchy
//! Cgroups are registered with their nearest *managed* ancestor (register ancestors first).
//! When a raise would not fit under a managed ancestor's limit (the resource decides what the
//! ancestor needs for it, and what it may be raised to within its own policy: max, budget,
//! hysteresis), the ancestor is raised too, if it has no write in flight and its rate limit
//! allows (at most [`MAX_ACTIONS`] - 1 ancestors), and the walk goes on up, through ancestors
//! that need no raise as well. The actions are emitted ancestor first. Each ancestor also says
//! how much growth it can back after its raise (its limit minus its usage, [`Backing::slack`]);
//! the raise of the cgroup that wanted it never exceeds the least of these (a raise no ancestor
//! can hold only moves the OOM kill up a level): a smaller raise is made when worth it, or the
//! raise is refused as [`Cap::Ancestor`]. When the kernel reports that an ancestor's limit is
//! what binds, the engine passes that ancestor's id and the decision is made for it.
//!
//! Ancestors the agent does not manage bound a raise as well (their limit is one it may not
//! raise: the kubelet's `kubepods` holds node allocatable): the slow side samples, for each
//! managed cgroup, the least room (limit minus working set) among the unmanaged ancestors
//! between it and its nearest managed ancestor ([`Ledger::set_outer_room`]), and the raise
//! never takes the raised cgroup's limit above its usage at that sample plus the room of any of
//! them along the walk, less what raises granted below them since (conservative between
//! samples: the cgroup's own earlier raises count too).
//!
//! # Scale down
//! A cgroup's limit is lowered only after `cooldown` without any sign of pressure, and at most
//! once per `down_interval` (counted from its last change, raise or lowering); the resource
//! decides by how much, and may bring a limit above its policy `max` down at once.
//!
//! # External changes and failed writes
//! A limit the kernel reports that differs from ours, with no write of ours in flight and
//! reported after our last write completed, was changed behind our back (or is the real one
//! after a dry run): the ledger adopts it. A failed write is reverted: the limit goes back to
//! the action's `old` value, unless a later decision has replaced it. The engine re-reads the
//! limit files when a signal reports a limit the ledger does not believe (the resource's
//! `disagrees`) and before every write: what its owner wrote is adopted at once
//! ([`Ledger::owner_set`]), and a write decided from an older limit is not made
//! ([`Ledger::yielded`]).

use std::collections::{HashMap, HashSet};

use super::{
    Action, Cap, CgId, CpuPolicy, Decision, MemoryPolicy, RateLimiter, Reason, Refusal, Resource,
    Skip, WriteOutcome, MAX_ACTIONS,
};

/// A limit that is not set (v2 `max`, v1 `-1` or the largest value), in [`Action`] units.
pub const UNLIMITED: u64 = u64::MAX;

/// How deep the ancestor walk of a raise goes at most.
const MAX_DEPTH: usize = 64;

/// Counters, per cgroup and for a whole decider. The same for both resources; a counter that
/// does not apply to a resource stays 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
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
    /// Memory: OOM kills seen.
    pub oom_kills: u64,
    /// CPU: latency signals ignored because the cgroup was not quota-bound.
    pub not_quota_bound: u64,
    /// CPU: sample intervals in which the cgroup was throttled.
    pub throttled_intervals: u64,
    /// Writes the engine reported as failed.
    pub failed_writes: u64,
}

/// One of the [`Stats`] counters.
pub(super) type Counter = fn(&mut Stats) -> &mut u64;

/// The timing fields of a policy the ledger applies (both policies have them, by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pacing {
    pub max_raises_per_sec: u32,
    pub escalation_window_ns: u64,
    pub max_escalation: u32,
    pub cooldown_ns: u64,
    pub down_interval_ns: u64,
}

/// A per-cgroup policy, as far as the ledger is concerned.
pub(super) trait Policy: Copy + std::fmt::Debug {
    fn pacing(&self) -> Pacing;
}

macro_rules! paced {
    ($($policy:ty),+) => {$(
        impl Policy for $policy {
            fn pacing(&self) -> Pacing {
                Pacing {
                    max_raises_per_sec: self.max_raises_per_sec,
                    escalation_window_ns: self.escalation_window_ns,
                    max_escalation: self.max_escalation,
                    cooldown_ns: self.cooldown_ns,
                    down_interval_ns: self.down_interval_ns,
                }
            }
        }
    )+};
}
paced!(MemoryPolicy, CpuPolicy);

/// A resource's side of a ledger entry: its own decision state (the entry's extension), and
/// what the ledger needs to know about its limits.
pub(super) trait Ext: Clone + std::fmt::Debug {
    /// The controller the actions change.
    const RESOURCE: Resource;
    /// The per-cgroup policy.
    type Policy: Policy;
    /// What `limit` (in [`Action`] units) counts for in the node budget (bytes for memory,
    /// microcores for CPU). Must not decrease as `limit` grows.
    fn weight(&self, limit: u64) -> u64;
    /// What an [`UNLIMITED`] cgroup counts for in a sum of limits: what it really takes, its
    /// latest usage (weight units).
    fn usage_weight(&self) -> u64;
}

/// What a managed ancestor says about a raise below it (see [`Ledger::raise`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Backing {
    /// Its own raise, `(new limit, what that adds)`, if it needs and may have one.
    pub raise: Option<(u64, u64)>,
    /// How much its subtree may grow under its limit (after that raise), in the terms of the
    /// raise's `delta`: its limit minus its usage.
    pub slack: u64,
}

/// One managed cgroup: the shared bookkeeping, and the resource's extension `ext`.
#[derive(Clone, Debug)]
pub(super) struct Entry<X: Ext> {
    /// The cgroup's policy.
    pub policy: X::Policy,
    /// The resource's own decision state.
    pub ext: X,
    /// Counters of this cgroup.
    pub stats: Stats,
    /// Nearest managed ancestor.
    parent: Option<CgId>,
    /// The limit in force, or being written (the decided value).
    limit: u64,
    /// A decided write that `applied` has not confirmed yet: `(old, new)`.
    inflight: Option<(u64, u64)>,
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
    /// What the entry counts for in the sum of top-level limits, as last accounted.
    counted_w: u64,
    /// Time of the last decided change (spaces lowering steps).
    last_change_ns: u64,
    /// The limit at which `Capped` was last reported (once per storm).
    capped_reported_at: Option<u64>,
    /// How much the cgroup's subtree may grow under the limits of its *unmanaged* ancestors
    /// (those between it and its nearest managed ancestor, or the root), as last sampled by
    /// the slow side (`u64::MAX`: none of them is limited). See [`Ledger::set_outer_room`].
    outer_room: u64,
    /// The cgroup's own usage when `outer_room` was sampled ([`Action`] units: memory bytes;
    /// at registration until the first sample).
    outer_base: u64,
    /// What raises at or below the cgroup granted since `outer_room` was sampled.
    outer_granted: u64,
    /// Latest decision time of such a grant.
    outer_grant_ns: u64,
    /// The limit its owner set: the limit found when the cgroup was first registered, or the
    /// last one adopted from its owner since ([`Ledger::adopt`], [`Ledger::owner_set`]).
    owner_limit: u64,
}

impl<X: Ext> Entry<X> {
    /// The limit in force or being written.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The limit its owner set (see the field).
    pub fn owner_limit(&self) -> u64 {
        self.owner_limit
    }

    /// The limit's weight ([`Ext::weight`]).
    pub fn weight(&self) -> u64 {
        self.ext.weight(self.limit)
    }

    /// Whether a decided write has not been confirmed yet.
    pub fn in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// What the cgroup counts for in a sum of limits: the decided limit, or the old one while
    /// a lowering is in flight; unlimited, its usage.
    fn counted_now(&self) -> u64 {
        let limit = match self.inflight {
            Some((old, _)) => old.max(self.limit),
            None => self.limit,
        };
        if limit == UNLIMITED {
            self.ext.usage_weight()
        } else {
            self.ext.weight(limit)
        }
    }

    /// The weight of the limit, `u64::MAX` if unlimited.
    fn limit_weight(&self) -> u64 {
        if self.limit == UNLIMITED {
            u64::MAX
        } else {
            self.ext.weight(self.limit)
        }
    }

    /// How much a raise of `leaf` (this entry or one below it) may add to its limit under this
    /// entry's unmanaged ancestors (`u64::MAX`: unbounded). At the sample, the leaf used
    /// `outer_base` and those ancestors had `outer_room` left, so the leaf's usage may reach
    /// `outer_base + outer_room` before one of them binds, less what raises granted below
    /// this entry since (a sibling's growth; the leaf's own earlier raises count too, which
    /// keeps it conservative until the next sample). In [`Action`] units (memory: bytes).
    fn outer_allows<Y: Ext>(&self, leaf: &Entry<Y>) -> u64 {
        if self.outer_room == u64::MAX {
            return u64::MAX;
        }
        leaf.outer_base
            .saturating_add(self.outer_room)
            .saturating_sub(self.outer_granted)
            .saturating_sub(leaf.limit)
    }

    /// A sign of pressure at `ts` that leads to no raise (it restarts the cooldown).
    pub fn note_pressure(&mut self, ts: u64) {
        self.last_pressure_ns = self.last_pressure_ns.max(ts);
    }

    /// True unless a raise completed after `ts`.
    pub fn no_raise_completed_after(&self, ts: u64) -> bool {
        self.last_raise_done_ns.is_none_or(|done| ts >= done)
    }

    /// True if no write of ours can explain a limit the kernel reported at `ts`: none is in
    /// flight and the last one completed by then.
    pub fn settled(&self, ts: u64) -> bool {
        self.inflight.is_none() && ts >= self.last_write_done_ns
    }

    /// True if a lowering step toward the policy's max may be taken at `ts`: the down interval
    /// since the last change has passed (no cooldown: the limit is above what the policy
    /// allows).
    pub fn may_step(&self, ts: u64) -> bool {
        ts >= self
            .last_change_ns
            .saturating_add(self.policy.pacing().down_interval_ns)
    }

    /// True if the limit may be lowered at `ts`: the cooldown since the last sign of pressure
    /// and the down interval since the last change have passed.
    pub fn may_lower(&self, ts: u64) -> bool {
        let p = self.policy.pacing();
        ts >= self.last_pressure_ns.saturating_add(p.cooldown_ns)
            && ts >= self.last_change_ns.saturating_add(p.down_interval_ns)
    }
}

/// Applies `f` to `st`, keeping the top-level sum in step with `st`'s counted limit.
fn update<X: Ext>(sum: &mut u128, st: &mut Entry<X>, f: impl FnOnce(&mut Entry<X>)) {
    f(st);
    let now = st.counted_now();
    if st.parent.is_none() {
        *sum = *sum - u128::from(st.counted_w) + u128::from(now);
    }
    st.counted_w = now;
}

/// What raising a limit from `old` to `new` adds (weight units; nothing from unlimited).
fn grant<X: Ext>(ext: &X, old: u64, new: u64) -> u64 {
    if old == UNLIMITED || new == UNLIMITED {
        return 0;
    }
    ext.weight(new).saturating_sub(ext.weight(old))
}

/// Counts on both the cgroup's counters and the decider's.
fn tally(total: &mut Stats, one: &mut Stats, counter: Counter) {
    *counter(total) += 1;
    *counter(one) += 1;
}

/// The managed cgroups of one resource and the node budget. See the module docs.
#[derive(Clone, Debug)]
pub(super) struct Ledger<X: Ext> {
    entries: HashMap<CgId, Entry<X>>,
    /// The managed children of each managed cgroup that has some (the inverse of
    /// [`Entry::parent`]), so that forgetting a cgroup touches its children only, never the
    /// whole table: discovery may forget many cgroups a second on the engine thread.
    children: HashMap<CgId, HashSet<CgId>>,
    /// The bound on the sum of top-level limits, in weight units (`u64::MAX`: none).
    budget: u64,
    /// Sum of the counted weights over top-level managed cgroups (u128: no overflow).
    top_level_sum: u128,
    /// What the node can still back beyond its reserve, as last sampled, in weight units
    /// (`u64::MAX`: not bounded).
    available: u64,
    /// Weight granted by raises since `available` was sampled.
    granted: u64,
    /// Latest decision or completion time of a charged raise.
    last_grant_ns: u64,
    stats: Stats,
}

impl<X: Ext> Ledger<X> {
    /// A ledger whose top-level limits may weigh `budget` in all, on a node that can back
    /// `available` more (weight units; `u64::MAX` for either: no such bound).
    pub fn new(budget: u64, available: u64) -> Self {
        Self {
            entries: HashMap::new(),
            children: HashMap::new(),
            budget,
            top_level_sum: 0,
            available,
            granted: 0,
            last_grant_ns: 0,
            stats: Stats::default(),
        }
    }

    /// What the node can still back beyond its reserve (weight units), sampled at
    /// `measured_ns`: replaces the figure, and drops the charges of the raises granted before
    /// (a raise that completed at or after `measured_ns` may not be in the figure yet: then the
    /// charges are kept until the next sample).
    pub fn set_available(&mut self, available: u64, measured_ns: u64) {
        self.available = available;
        if self.last_grant_ns < measured_ns {
            self.granted = 0;
        }
    }

    /// The last sampled figure of what the node can back (weight units; `u64::MAX`: none).
    pub fn available(&self) -> u64 {
        self.available
    }

    /// What raises have been granted since the figure was sampled (weight units).
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// What the node can still back now: the sampled figure less the granted raises.
    pub fn spare(&self) -> u64 {
        if self.available == u64::MAX {
            u64::MAX
        } else {
            self.available.saturating_sub(self.granted)
        }
    }

    /// The resource whose limits the ledger holds.
    pub fn resource(&self) -> Resource {
        X::RESOURCE
    }

    /// The node budget (weight units).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Changes the bound on the sum of top-level limits. Lowering it below the current sum takes
    /// nothing away; it only blocks raises until scale-downs bring the sum under it.
    pub fn set_budget(&mut self, budget: u64) {
        self.budget = budget;
    }

    /// The weight of the top-level limits (lowerings in flight at their old value, unlimited
    /// cgroups at their usage).
    pub fn committed(&self) -> u128 {
        self.top_level_sum
    }

    /// Registers (or re-registers, keeping its history) a cgroup at `limit`. `parent` is the
    /// nearest managed ancestor, which must already be managed (otherwise the cgroup counts as
    /// top-level). A new cgroup gets the extension `fresh`; new or not, `renew` then brings
    /// the extension up to date (before the limit is counted). Cooldown starts at `now_ns`.
    /// May allocate.
    #[allow(clippy::too_many_arguments)]
    pub fn manage(
        &mut self,
        id: CgId,
        parent: Option<CgId>,
        policy: X::Policy,
        limit: u64,
        now_ns: u64,
        fresh: X,
        renew: impl FnOnce(&mut X),
    ) {
        let parent = parent.filter(|p| *p != id && self.entries.contains_key(p));
        if let Some(old) = self.entries.get(&id) {
            if old.parent.is_none() {
                self.top_level_sum -= u128::from(old.counted_w);
            }
            if let Some(p) = old.parent {
                self.unlink(p, id);
            }
        }
        if let Some(p) = parent {
            self.children.entry(p).or_default().insert(id);
        }
        let rate = policy.pacing().max_raises_per_sec;
        let st = self.entries.entry(id).or_insert_with(|| Entry {
            policy,
            ext: fresh,
            stats: Stats::default(),
            parent,
            limit,
            inflight: None,
            limiter: RateLimiter::new(rate),
            escalation: 0,
            last_round_ns: None,
            last_pressure_ns: now_ns,
            last_raise_done_ns: None,
            last_write_done_ns: 0,
            last_change_ns: 0,
            capped_reported_at: None,
            counted_w: 0,
            outer_room: u64::MAX,
            outer_base: 0,
            outer_granted: 0,
            outer_grant_ns: 0,
            owner_limit: limit,
        });
        if st.policy.pacing().max_raises_per_sec != rate {
            st.limiter = RateLimiter::new(rate);
        }
        st.policy = policy;
        st.parent = parent;
        st.limit = limit;
        st.inflight = None;
        renew(&mut st.ext);
        // A (re-)registered cgroup starts unbounded by unmanaged ancestors: the slow side sends
        // their room again at its next sample, with the usage it counts from (memory's usage
        // weight is its usage in bytes, the unit of these rooms).
        st.outer_room = u64::MAX;
        st.outer_granted = 0;
        st.outer_base = st.ext.usage_weight();
        st.counted_w = st.counted_now();
        if parent.is_none() {
            self.top_level_sum += u128::from(st.counted_w);
        }
    }

    /// How much the cgroup's subtree may grow under the limits of its unmanaged ancestors
    /// (between it and its nearest managed ancestor, or the root): the least of their limit
    /// minus their working set, sampled at `measured_ns` by the slow side (`u64::MAX`: none is
    /// limited). Replaces the figure, and drops the charges of the raises granted before (a
    /// raise decided at or after `measured_ns` may not be in the figure yet: then its charge
    /// is kept until the next sample). Allocates nothing.
    pub fn set_outer_room(&mut self, id: CgId, room: u64, usage: u64, measured_ns: u64) {
        if let Some(st) = self.entries.get_mut(&id) {
            st.outer_room = room;
            st.outer_base = usage;
            if st.outer_grant_ns < measured_ns {
                st.outer_granted = 0;
            }
        }
    }

    /// Accounts the cgroup again after its extension changed (an unlimited cgroup counts by
    /// its usage).
    pub fn recount(&mut self, id: CgId) {
        if let Some(st) = self.entries.get_mut(&id) {
            update(&mut self.top_level_sum, st, |_| {});
        }
    }

    /// Stops managing a cgroup. Its managed children are re-parented to its own managed parent
    /// (or become top-level, and count against the budget). Returns whether it was managed.
    pub fn forget(&mut self, id: CgId) -> bool {
        let Some(gone) = self.entries.remove(&id) else {
            return false;
        };
        if gone.parent.is_none() {
            self.top_level_sum -= u128::from(gone.counted_w);
        }
        if let Some(p) = gone.parent {
            self.unlink(p, id);
        }
        for c in self.children.remove(&id).unwrap_or_default() {
            let Some(st) = self.entries.get_mut(&c) else {
                continue;
            };
            st.parent = gone.parent;
            match gone.parent {
                None => self.top_level_sum += u128::from(st.counted_w),
                Some(p) => {
                    self.children.entry(p).or_default().insert(c);
                }
            }
        }
        true
    }

    /// Removes `child` from `parent`'s children.
    fn unlink(&mut self, parent: CgId, child: CgId) {
        if let Some(set) = self.children.get_mut(&parent) {
            set.remove(&child);
            if set.is_empty() {
                self.children.remove(&parent);
            }
        }
    }

    /// The cgroup's entry.
    pub fn get(&self, id: CgId) -> Option<&Entry<X>> {
        self.entries.get(&id)
    }

    /// The cgroup's entry, to update its extension.
    pub fn get_mut(&mut self, id: CgId) -> Option<&mut Entry<X>> {
        self.entries.get_mut(&id)
    }

    /// Number of managed cgroups.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Counters of the whole ledger.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Starts a signal: clears `out` and counts the signal. Returns the cgroup's entry, or
    /// `None` (with [`Skip::Unmanaged`] in `out`) if it is not managed.
    pub fn receive(&mut self, id: CgId, out: &mut Decision) -> Option<&mut Entry<X>> {
        out.clear();
        self.stats.signals += 1;
        let Some(st) = self.entries.get_mut(&id) else {
            self.stats.unmanaged += 1;
            out.skip(Skip::Unmanaged);
            return None;
        };
        st.stats.signals += 1;
        Some(st)
    }

    /// Counts on the cgroup's counters and the ledger's.
    pub fn count(&mut self, id: CgId, counter: Counter) {
        if let Some(st) = self.entries.get_mut(&id) {
            tally(&mut self.stats, &mut st.stats, counter);
        }
    }

    /// Feedback: the engine performed (or failed to perform) `action`, completing at
    /// `write_done_ns`. A completed raise ends the storm it answered (signals timestamped
    /// earlier are coalesced); a failed write is reverted.
    pub fn applied(&mut self, action: &Action, write_done_ns: u64, outcome: WriteOutcome) {
        if action.resource != X::RESOURCE {
            return;
        }
        let Some(st) = self.entries.get_mut(&action.cgroup) else {
            return;
        };
        let this_write = st.inflight == Some((action.old, action.new));
        // The raise of the cgroup that wanted it carries the charge (see the module docs).
        let charged = action.is_raise() && action.reason != Reason::Ancestor;
        match outcome {
            WriteOutcome::Written | WriteOutcome::DryRun => {
                if charged {
                    self.last_grant_ns = self.last_grant_ns.max(write_done_ns);
                }
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
                if action.is_raise() {
                    // Nothing was written: the raise's token is given back.
                    st.limiter.refund();
                }
                if charged && this_write {
                    let added = grant(&st.ext, action.old, action.new);
                    self.granted = self.granted.saturating_sub(added);
                }
                tally(&mut self.stats, &mut st.stats, |s| &mut s.failed_writes);
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

    /// The highest weight `st`'s limit may reach under the node budget: its limit plus what the
    /// node can still back ([`spare`](Self::spare)), and, for a cgroup without a managed
    /// ancestor, the sum bound less the other top-level limits. `u64::MAX`: no bound.
    pub fn room(&self, st: &Entry<X>) -> u64 {
        let node = match self.spare() {
            u64::MAX => u64::MAX,
            spare => st.limit_weight().saturating_add(spare),
        };
        if st.parent.is_some() || self.budget == u64::MAX {
            return node;
        }
        let others = self.top_level_sum - u128::from(st.counted_w);
        let sum = u64::try_from(u128::from(self.budget).saturating_sub(others)).unwrap_or(u64::MAX);
        node.min(sum)
    }

    /// Adopts `limit`, as reported by the kernel at `ts`, if no write of ours can explain it
    /// ([`Entry::settled`]), with `ext` updating the extension at the same time (before the
    /// limit is counted again). Returns whether it did.
    pub fn adopt(&mut self, id: CgId, ts: u64, limit: u64, ext: impl FnOnce(&mut X)) -> bool {
        let Some(st) = self.entries.get_mut(&id) else {
            return false;
        };
        if !st.settled(ts) {
            return false;
        }
        update(&mut self.top_level_sum, st, |st| {
            st.limit = limit;
            ext(&mut st.ext);
        });
        st.owner_limit = limit;
        true
    }

    /// The limit's owner (a runtime, the kubelet, a person) wrote `limit`, re-read from the
    /// file at `now` by the engine (no write of ours in flight: the engine thread writes
    /// synchronously): adopted at once, with `ext` updating the extension. Signals from before
    /// `now` that report the older limit are explained by this change (they are not adopted
    /// again). Returns whether the cgroup is managed.
    pub fn owner_set(&mut self, id: CgId, now: u64, limit: u64, ext: impl FnOnce(&mut X)) -> bool {
        let Some(st) = self.entries.get_mut(&id) else {
            return false;
        };
        update(&mut self.top_level_sum, st, |st| {
            st.limit = limit;
            ext(&mut st.ext);
        });
        st.owner_limit = limit;
        st.last_write_done_ns = st.last_write_done_ns.max(now);
        true
    }

    /// The limit files hold `limit`, written by another writer on the agent's behalf (the
    /// kubelet applying one of the agent's resize patches, possibly older than its latest
    /// write; see [`WriteMark::is_echo`](crate::actuator::WriteMark::is_echo)): the limit in
    /// force from `now`, but not an owner's: the owner's limit (the floor of a scale-down, the
    /// original) stays. Returns whether the cgroup is managed.
    pub fn echoed(&mut self, id: CgId, now: u64, limit: u64) -> bool {
        let Some(st) = self.entries.get_mut(&id) else {
            return false;
        };
        update(&mut self.top_level_sum, st, |st| st.limit = limit);
        st.last_write_done_ns = st.last_write_done_ns.max(now);
        true
    }

    /// The engine did not perform `action`: re-read just before the write, the file held
    /// `found`, a value its owner wrote after the decision was made. The action is undone
    /// (like a failed write, without counting one) and `found` adopted ([`owner_set`]): the
    /// owner's write is never overwritten by a decision made from an older limit.
    ///
    /// [`owner_set`]: Self::owner_set
    pub fn yielded(&mut self, action: &Action, now: u64, found: u64, ext: impl FnOnce(&mut X)) {
        if action.resource != X::RESOURCE {
            return;
        }
        let Some(st) = self.entries.get_mut(&action.cgroup) else {
            return;
        };
        let this_write = st.inflight == Some((action.old, action.new));
        let charged = action.is_raise() && action.reason != Reason::Ancestor;
        if action.is_raise() {
            st.limiter.refund();
        }
        if charged && this_write {
            let added = grant(&st.ext, action.old, action.new);
            self.granted = self.granted.saturating_sub(added);
        }
        update(&mut self.top_level_sum, st, |st| {
            if this_write {
                st.inflight = None;
            }
        });
        self.owner_set(action.cgroup, now, found, ext);
    }

    /// Opens a pressure round for the cgroup at `ts`: notes the pressure, then coalesces the
    /// signal (when `stale`, the resource's verdict on the limit it reported, or when it is
    /// older than the last raise's completion, or a write is in flight) or refuses it by the
    /// rate limit, with the skip in `out`. Otherwise returns the round's escalation (doublings
    /// of the step), and forgets the capped report if a new storm began.
    pub fn open_round(
        &mut self,
        id: CgId,
        ts: u64,
        stale: bool,
        out: &mut Decision,
    ) -> Option<u32> {
        let st = self.entries.get_mut(&id)?;
        let prev_pressure_ns = st.last_pressure_ns;
        st.note_pressure(ts);
        let stale_ts = st.last_raise_done_ns.is_some_and(|done| ts < done);
        if stale || stale_ts || st.inflight.is_some() {
            tally(&mut self.stats, &mut st.stats, |s| &mut s.coalesced);
            out.skip(Skip::Coalesced);
            return None;
        }
        if !st.limiter.allows(ts) {
            tally(&mut self.stats, &mut st.stats, |s| &mut s.rate_limited);
            out.refuse(
                Skip::RateLimited,
                Refusal {
                    cgroup: id,
                    limit: st.limit,
                    wanted: None,
                    allowed: None,
                    ts_ns: ts,
                },
            );
            return None;
        }
        let p = st.policy.pacing();
        // A new storm if the previous sign of pressure is older than the escalation window.
        if ts.saturating_sub(prev_pressure_ns) > p.escalation_window_ns {
            st.capped_reported_at = None;
        }
        Some(match st.last_round_ns {
            Some(last) if ts.saturating_sub(last) <= p.escalation_window_ns => {
                (st.escalation + 1).min(p.max_escalation)
            }
            _ => 0,
        })
    }

    /// The round's raise (to `wanted`, before the bounds) is bounded to nothing, at most
    /// `allowed` by the bound that binds: reports the refusal `skip` for the first signal of
    /// the storm at this limit, `Coalesced` for the rest.
    pub fn bounded(
        &mut self,
        id: CgId,
        skip: Skip,
        wanted: Option<u64>,
        allowed: Option<u64>,
        ts: u64,
        out: &mut Decision,
    ) {
        let Some(st) = self.entries.get_mut(&id) else {
            return;
        };
        if st.capped_reported_at == Some(st.limit) {
            tally(&mut self.stats, &mut st.stats, |s| &mut s.coalesced);
            out.skip(Skip::Coalesced);
        } else {
            st.capped_reported_at = Some(st.limit);
            tally(&mut self.stats, &mut st.stats, |s| &mut s.capped);
            out.refuse(
                skip,
                Refusal {
                    cgroup: id,
                    limit: st.limit,
                    wanted,
                    allowed,
                    ts_ns: ts,
                },
            );
        }
    }

    /// Raises the cgroup to `new` for `reason` (a round opened by [`open_round`] with this
    /// `escalation`; `new` already within the cgroup's own max and [`room`](Self::room)), and
    /// first the managed ancestors whose limit would bind. `delta` is what the raise adds, in
    /// the resource's terms. For each ancestor in turn, `ancestor(entry, delta, room)` gives its
    /// [`Backing`]: its own raise (taken if it has no write in flight and its rate limit allows;
    /// `room` is the highest weight its limit may reach), and how much growth it can back. When
    /// the least of those is below `delta`, `shrink(entry, backed)` gives the smaller new limit
    /// that fits (`Ok`), or the highest limit the ancestors allow (`Err`: not worth a raise; the
    /// raise is refused as [`Cap::Ancestor`] and nothing is raised). The actions go into `out`,
    /// ancestors first.
    ///
    /// [`open_round`]: Self::open_round
    #[allow(clippy::too_many_arguments)]
    pub fn raise(
        &mut self,
        id: CgId,
        new: u64,
        delta: u64,
        escalation: u32,
        reason: Reason,
        ts: u64,
        out: &mut Decision,
        mut ancestor: impl FnMut(&Entry<X>, u64, u64) -> Backing,
        shrink: impl FnOnce(&Entry<X>, u64) -> Result<u64, u64>,
    ) {
        let Some(st) = self.entries.get(&id) else {
            return;
        };
        // Walk up: the ancestors to raise, `(cgroup, old, new)`, and the least slack.
        let mut chain = [(0, 0, 0); MAX_ACTIONS - 1];
        let mut n = 0;
        // The unmanaged ancestors of the cgroup and of each managed ancestor bound the growth
        // of the whole subtree too (a limit we may not raise: kubelet's `kubepods`).
        let mut backed = st.outer_allows(st);
        let mut need = delta;
        let mut up = st.parent;
        for _ in 0..MAX_DEPTH {
            let Some(pid) = up else {
                break;
            };
            let Some(ps) = self.entries.get(&pid) else {
                break;
            };
            let may_raise = n < chain.len() && ps.inflight.is_none() && ps.limiter.allows(ts);
            // An ancestor that may not be raised now cannot go above its limit.
            let room = if may_raise {
                self.room(ps)
            } else {
                ps.limit_weight()
            };
            let b = ancestor(ps, need, room);
            if let Some((pnew, padded)) = b.raise.filter(|&(pnew, _)| may_raise && pnew > ps.limit)
            {
                chain[n] = (pid, ps.limit, pnew);
                n += 1;
                need = padded;
            }
            backed = backed.min(b.slack).min(ps.outer_allows(st));
            up = ps.parent;
        }
        let mut new = new;
        if backed < delta {
            match shrink(st, backed) {
                Ok(smaller) if smaller > st.limit && smaller <= new => new = smaller,
                Ok(allowed) | Err(allowed) => {
                    let skip = Skip::Capped(Cap::Ancestor);
                    self.bounded(id, skip, Some(new), Some(allowed), ts, out);
                    return;
                }
            }
        }

        // Execute (in the decision) and remember.
        let Self {
            entries,
            top_level_sum: sum,
            stats,
            granted,
            last_grant_ns,
            ..
        } = self;
        for &(pid, old, pnew) in chain[..n].iter().rev() {
            if let Some(ps) = entries.get_mut(&pid) {
                Self::commit_raise(sum, stats, ps, pnew, ts);
                out.push(Self::action(pid, old, pnew, Reason::Ancestor, ts));
            }
        }
        let Some(st) = entries.get_mut(&id) else {
            return;
        };
        let old = Self::commit_raise(sum, stats, st, new, ts);
        *granted = granted.saturating_add(grant(&st.ext, old, new));
        *last_grant_ns = (*last_grant_ns).max(ts);
        st.escalation = escalation;
        st.last_round_ns = Some(ts);
        out.push(Self::action(id, old, new, reason, ts));
        // The growth it allows (in the raise's terms, like `delta`) is charged to the room of
        // every unmanaged ancestor above it.
        let added = if old == UNLIMITED {
            0
        } else {
            new.saturating_sub(old)
        };
        let mut up = Some(id);
        for _ in 0..MAX_DEPTH {
            let Some(e) = up.and_then(|c| entries.get_mut(&c)) else {
                break;
            };
            if e.outer_room != u64::MAX {
                e.outer_granted = e.outer_granted.saturating_add(added);
                e.outer_grant_ns = e.outer_grant_ns.max(ts);
            }
            up = e.parent;
        }
    }

    /// Decides a raise of `st` to `new`: the limit changes now, the write is in flight.
    /// Returns the old limit.
    fn commit_raise(
        sum: &mut u128,
        stats: &mut Stats,
        st: &mut Entry<X>,
        new: u64,
        ts: u64,
    ) -> u64 {
        let old = st.limit;
        update(sum, st, |st| {
            st.inflight = Some((old, new));
            st.limit = new;
        });
        st.limiter.commit(ts);
        st.last_change_ns = ts;
        st.capped_reported_at = None;
        tally(stats, &mut st.stats, |s| &mut s.raises);
        old
    }

    /// Lowers the cgroup to `new` for `reason` (if that is lower), once the resource has
    /// checked [`Entry::may_lower`] or its own reasons to lower at once.
    pub fn lower(&mut self, id: CgId, new: u64, reason: Reason, ts: u64, out: &mut Decision) {
        let Some(st) = self.entries.get_mut(&id) else {
            return;
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
        tally(&mut self.stats, &mut st.stats, |s| &mut s.scale_downs);
        out.push(Self::action(id, old, new, reason, ts));
    }

    /// The action changing `cgroup`'s limit from `old` to `new`.
    fn action(cgroup: CgId, old: u64, new: u64, reason: Reason, ts: u64) -> Action {
        Action {
            cgroup,
            resource: X::RESOURCE,
            old,
            new,
            reason,
            trigger_ts_ns: ts,
        }
    }
}

/// The part of a decider's API that is the ledger's, for a decider `$decider` with a field
/// `ledger: Ledger<_>`, signals `$signal` and policy `$policy`: the inherent methods callers
/// use, and the [`Decide`](super::Decide) implementation (which calls the inherent
/// `on_signal` and `utilization` too).
macro_rules! decider_api {
    ($decider:ident, $signal:ty, $policy:ty) => {
        impl $decider {
            /// Stops managing a cgroup (removed, or no longer selected). Its managed children
            /// are re-parented to its own managed parent (or become top-level). Returns whether
            /// it was managed.
            pub fn forget(&mut self, id: $crate::decider::CgId) -> bool {
                self.ledger.forget(id)
            }

            /// Whether the cgroup is managed.
            pub fn is_managed(&self, id: $crate::decider::CgId) -> bool {
                self.ledger.get(id).is_some()
            }

            /// The cgroup's policy.
            pub fn policy(&self, id: $crate::decider::CgId) -> Option<&$policy> {
                self.ledger.get(id).map(|s| &s.policy)
            }

            /// Counters of one cgroup.
            pub fn cgroup_stats(
                &self,
                id: $crate::decider::CgId,
            ) -> Option<&$crate::decider::Stats> {
                self.ledger.get(id).map(|s| &s.stats)
            }

            /// Counters of the whole decider.
            pub fn stats(&self) -> &$crate::decider::Stats {
                self.ledger.stats()
            }

            /// Number of managed cgroups.
            pub fn len(&self) -> usize {
                self.ledger.len()
            }

            /// True if no cgroup is managed.
            pub fn is_empty(&self) -> bool {
                self.ledger.len() == 0
            }

            /// Feedback: the engine performed (or failed to perform) `action` and the write
            /// completed at `write_done_ns` (same clock as the signals). Must be called for
            /// every action (those of the other resource are ignored).
            pub fn applied(
                &mut self,
                action: &$crate::decider::Action,
                write_done_ns: u64,
                outcome: $crate::decider::WriteOutcome,
            ) {
                self.ledger.applied(action, write_done_ns, outcome)
            }
        }

        impl $crate::decider::Decide for $decider {
            type Signal = $signal;

            fn resource(&self) -> $crate::decider::Resource {
                self.ledger.resource()
            }

            fn on_signal(
                &mut self,
                id: $crate::decider::CgId,
                signal: $signal,
                out: &mut $crate::decider::Decision,
            ) {
                <$decider>::on_signal(self, id, signal, out)
            }

            fn applied(
                &mut self,
                action: &$crate::decider::Action,
                write_done_ns: u64,
                outcome: $crate::decider::WriteOutcome,
            ) {
                <$decider>::applied(self, action, write_done_ns, outcome)
            }

            fn forget(&mut self, id: $crate::decider::CgId) -> bool {
                <$decider>::forget(self, id)
            }

            fn is_managed(&self, id: $crate::decider::CgId) -> bool {
                <$decider>::is_managed(self, id)
            }

            fn utilization(&self, id: $crate::decider::CgId) -> Option<f64> {
                <$decider>::utilization(self, id)
            }

            fn stats(&self) -> &$crate::decider::Stats {
                <$decider>::stats(self)
            }

            fn cgroup_stats(&self, id: $crate::decider::CgId) -> Option<&$crate::decider::Stats> {
                <$decider>::cgroup_stats(self, id)
            }

            fn len(&self) -> usize {
                <$decider>::len(self)
            }
        }
    };
}
pub(super) use decider_api;

#[cfg(test)]
mod tests;
