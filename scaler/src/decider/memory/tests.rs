//! Sequences of signals in, decisions out.

use super::*;
use crate::cgroupfs::Limit;
use crate::decider::testing::{self, only};
use crate::decider::Decision;

const MS: u64 = 1_000_000;
const US: u64 = 1_000;
const S: u64 = 1_000_000_000;
const GIB: u64 = 1 << 30;
const T0: u64 = 100 * S;
/// What a limit write costs the engine in these tests.
const WRITE_NS: u64 = 100 * US;

/// The sizing these tests were written for (the defaults before right-sizing): steps of at
/// least 64 MiB or a quarter of the limit, 200 ms lookahead, no cap on a raise, a fixed 64 MiB
/// warning band, a quarter of the excess every 5 s. The mechanics they check (coalescing,
/// hierarchy, budget, escalation, floors) do not depend on it; the defaults' own sizing is
/// tested with [`MemoryPolicy::default`] below.
fn policy() -> MemoryPolicy {
    MemoryPolicy {
        max: 2 * GIB,
        step_min: 64 * MIB,
        step_fraction: 0.25,
        lookahead_ns: 200 * MS,
        step_max_fraction: 0.0,
        headroom_fraction: 0.0,
        down_interval_ns: 5 * S,
        down_fraction: 0.25,
        ..MemoryPolicy::default()
    }
}

/// The decider plus the engine's side of the loop.
type Loop = testing::Loop<MemoryDecider>;

impl Loop {
    fn new(budget: u64) -> Self {
        Self::with(MemoryDecider::new(budget), WRITE_NS)
    }

    fn reclaim(&mut self, id: CgId, ts_ns: u64, usage: u64, limit: u64) -> Decision {
        self.signal(
            id,
            MemorySignal::Reclaim {
                ts_ns,
                usage,
                limit,
            },
        )
    }

    fn sample(&mut self, id: CgId, ts_ns: u64, usage: u64, working_set: u64) -> Decision {
        self.sample_with(id, ts_ns, usage, working_set, None)
    }

    /// A sample at the decided limit, with the kernel's count of limit hits if any.
    fn sample_with(
        &mut self,
        id: CgId,
        ts_ns: u64,
        usage: u64,
        working_set: u64,
        limit_hits: Option<u64>,
    ) -> Decision {
        let limit = self.d.limit(id).unwrap();
        self.signal(
            id,
            MemorySignal::Sample {
                ts_ns,
                usage,
                limit: Limit::from_bytes(limit),
                working_set,
                psi_some_total_us: None,
                limit_hits,
                refaulted: None,
            },
        )
    }
}

#[test]
fn a_35_event_reclaim_storm_is_one_decision() {
    let mut l = Loop::new(16 * GIB);
    l.d.manage(1, None, policy(), Limit::from_bytes(64 * MIB), 60 * MIB, T0);
    // The kernel's 35 reclaim rounds over 0.76 ms, all at the old limit. The first is
    // answered; the write completes 100 us later.
    let first = l.reclaim(1, T0 + S, 64 * MIB, 64 * MIB);
    let a = only(&first);
    assert_eq!(
        (a.old, a.reason, a.trigger_ts_ns),
        (64 * MIB, Reason::Pressure, T0 + S)
    );
    assert!(a.new >= 128 * MIB);
    for i in 1..35 {
        let d = l.reclaim(1, T0 + S + i * 21 * US, 64 * MIB, 64 * MIB);
        assert!(d.is_empty());
        assert_eq!(d.skip, Some(Skip::Coalesced), "event {i}");
    }
    assert_eq!(l.actions.len(), 1);
    assert_eq!(l.d.cgroup_stats(1).unwrap().coalesced, 34);
    assert_eq!(l.d.stats().raises, 1);
}

#[test]
fn storm_events_are_coalesced_while_the_write_is_in_flight() {
    let mut l = Loop::new(16 * GIB);
    l.d.manage(1, None, policy(), Limit::from_bytes(64 * MIB), 60 * MIB, T0);
    let d = l.signal_only(
        1,
        MemorySignal::Reclaim {
            ts_ns: T0 + S,
            usage: 64 * MIB,
            limit: 64 * MIB,
        },
    );
    let a = only(&d);
    // Before `applied`: even an event carrying the new limit is part of this storm.
    for ts in [T0 + S + 10 * US, T0 + S + 20 * US] {
        let d = l.signal_only(
            1,
            MemorySignal::UsageHigh {
                ts_ns: ts,
                usage: 64 * MIB,
                limit: a.new,
            },
        );
        assert_eq!(d.skip, Some(Skip::Coalesced));
    }
    l.d.applied(&a, T0 + S + 50 * US, WriteOutcome::Written);
    // Queued before the completion: same storm. After it, at the new limit: new pressure.
    let d = l.reclaim(1, T0 + S + 40 * US, a.new, a.new);
    assert_eq!(d.skip, Some(Skip::Coalesced));
    let d = l.reclaim(1, T0 + S + 60 * US, a.new, a.new);
    assert_eq!(only(&d).old, a.new);
}

#[test]
fn repeated_pressure_escalates_the_step_and_a_quiet_window_resets_it() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 32 * GIB,
        step_fraction: 0.0,
        lookahead_ns: 0, // isolate escalation from the rate estimate
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(64 * MIB), 64 * MIB, T0);
    let mut limit = 64 * MIB;
    let mut steps = Vec::new();
    for i in 0..6 {
        let a = only(&l.reclaim(1, T0 + S + i * 500 * MS, limit, limit));
        steps.push((a.new - a.old) / MIB);
        limit = a.new;
    }
    // Doubling per consecutive round, up to 2^max_escalation (16x).
    assert_eq!(steps, [64, 128, 256, 512, 1024, 1024]);
    // After more than the escalation window without pressure, back to the base step.
    let a = only(&l.reclaim(1, T0 + 10 * S, limit, limit));
    assert_eq!(a.new - a.old, 64 * MIB);
}

#[test]
fn the_step_grows_with_the_allocation_rate() {
    let mut l = Loop::new(64 * GIB);
    l.d.manage(1, None, policy(), Limit::from_bytes(64 * MIB), 0, T0);
    l.d.manage(2, None, policy(), Limit::from_bytes(64 * MIB), 0, T0);
    // Cgroup 1 filled 64 MiB in 80 ms (800 MiB/s); cgroup 2 in 8 s (8 MiB/s).
    let fast = only(&l.reclaim(1, T0 + 80 * MS, 64 * MIB, 64 * MIB));
    let slow = only(&l.reclaim(2, T0 + 8 * S, 64 * MIB, 64 * MIB));
    assert_eq!(slow.new - slow.old, 64 * MIB, "step_min");
    // 800 MiB/s * 200 ms lookahead = 160 MiB.
    let step = fast.new - fast.old;
    assert!((159 * MIB..=161 * MIB).contains(&step), "{}", step / MIB);
    assert!(l.d.allocation_rate(1).unwrap() > 700.0 * MIB as f64);
}

#[test]
fn the_step_is_at_least_a_fraction_of_the_limit() {
    let mut l = Loop::new(64 * GIB);
    l.d.manage(1, None, policy(), Limit::from_bytes(GIB), GIB, T0);
    let a = only(&l.reclaim(1, T0 + 10 * S, GIB, GIB));
    assert_eq!(a.new - a.old, GIB / 4);
}

/// The workload: 8 MiB touched every 10 ms from a 64 MiB limit, 256 MiB in all.
/// The kernel OOM-kills 0.76 ms after reclaim starts unless the limit has been raised.
fn run_race(early_warning: bool) -> (bool, Vec<Action>) {
    let mut l = Loop::new(16 * GIB);
    let p = policy();
    l.d.manage(1, None, p, Limit::from_bytes(64 * MIB), 0, T0);
    let mut kernel_limit = 64 * MIB;
    let mut warned_at = 0;
    let mut pending: Option<(u64, u64)> = None; // (done_ns, new limit)
    let mut usage = 0;
    for i in 1..=32u64 {
        let t = T0 + i * 10 * MS;
        if let Some((done, new)) = pending.take() {
            assert!(done <= t);
            kernel_limit = new;
        }
        let want = usage + 8 * MIB;
        if early_warning && want + p.headroom >= kernel_limit && warned_at != kernel_limit {
            warned_at = kernel_limit;
            let d = l.signal(
                1,
                MemorySignal::UsageHigh {
                    ts_ns: t,
                    usage: kernel_limit.saturating_sub(p.headroom),
                    limit: kernel_limit,
                },
            );
            if let Some(a) = d.actions().first() {
                pending = Some((t + WRITE_NS, a.new));
            }
        }
        if want > kernel_limit {
            // Reclaim: 35 rounds over 0.76 ms, then OOM unless a raise landed.
            let mut rescued = false;
            for r in 0..35u64 {
                let ts = t + r * 21 * US;
                if let Some((done, new)) = pending {
                    if done <= ts {
                        kernel_limit = new;
                        pending = None;
                    }
                }
                if want <= kernel_limit {
                    rescued = true;
                    break;
                }
                let d = l.reclaim(1, ts, kernel_limit, kernel_limit);
                if let Some(a) = d.actions().first() {
                    pending = Some((ts + WRITE_NS, a.new));
                }
            }
            if !rescued {
                return (false, l.actions);
            }
        }
        usage = want;
    }
    (true, l.actions)
}

#[test]
fn the_800_mib_per_s_workload_wins_the_race_with_reclaim_alone() {
    let (survived, actions) = run_race(false);
    assert!(survived, "{actions:?}");
    assert!(actions.len() <= 4, "few, growing steps: {actions:?}");
}

#[test]
fn the_800_mib_per_s_workload_wins_the_race_with_early_warnings() {
    let (survived, actions) = run_race(true);
    assert!(survived, "{actions:?}");
    assert!(actions.iter().all(|a| a.reason == Reason::EarlyWarning));
}

#[test]
fn a_workload_beyond_max_gets_nothing_past_max_and_is_reported_once() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 256 * MIB,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(64 * MIB), 64 * MIB, T0);
    let mut limit = 64 * MIB;
    let mut t = T0 + S;
    let mut skips = Vec::new();
    for _ in 0..20 {
        let d = l.reclaim(1, t, limit, limit);
        if let Some(a) = d.actions().first() {
            assert!(a.new <= 256 * MIB);
            limit = a.new;
        } else {
            skips.push(d.skip.unwrap());
        }
        t += 100 * MS;
    }
    assert_eq!(limit, 256 * MIB);
    assert_eq!(skips[0], Skip::Capped(Cap::AtMax));
    assert!(
        skips[1..].iter().all(|s| *s == Skip::Coalesced),
        "{skips:?}"
    );
    // A new storm (after a quiet window) is reported again.
    let d = l.reclaim(1, t + 10 * S, limit, limit);
    assert_eq!(d.skip, Some(Skip::Capped(Cap::AtMax)));
}

#[test]
fn usage_above_max_gets_no_raise() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 256 * MIB,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(200 * MIB), 200 * MIB, T0);
    let d = l.reclaim(1, T0 + S, 300 * MIB, 200 * MIB);
    assert_eq!(d.skip, Some(Skip::Capped(Cap::AtMax)));
}

#[test]
fn the_node_budget_bounds_raises_not_the_sum_of_limits() {
    // The node can back 136 MiB beyond its reserve; the managed limits add up to far more.
    let mut l = Loop::new(136 * MIB);
    for id in 1..=3 {
        l.d.manage(
            id,
            None,
            policy(),
            Limit::from_bytes(256 * MIB),
            256 * MIB,
            T0,
        );
    }
    // An unlimited neighbour (a policy without max) takes what it uses, which the node's
    // figure already shows: it locks nothing out.
    let open = MemoryPolicy {
        max: u64::MAX,
        ..policy()
    };
    l.d.manage(4, None, open, Limit::Max, 8 * GIB, T0);
    assert_eq!(l.d.committed(), (768 * MIB + 8 * GIB) as u128);
    l.d.manage(10, Some(1), policy(), Limit::from_bytes(128 * MIB), 0, T0);
    let a = only(&l.reclaim(1, T0 + S, 256 * MIB, 256 * MIB));
    assert_eq!(a.new, 256 * MIB + 64 * MIB);
    let a = only(&l.reclaim(2, T0 + S, 256 * MIB, 256 * MIB));
    assert_eq!(a.new, 256 * MIB + 64 * MIB);
    // Two raises between samples do not spend the same memory: 8 MiB left for cgroup 3.
    assert_eq!((l.d.granted(), l.d.spare()), (128 * MIB, 8 * MIB));
    let a = only(&l.reclaim(3, T0 + S, 256 * MIB, 256 * MIB));
    assert_eq!(a.new, 264 * MIB);
    assert_eq!(l.d.spare(), 0);
    // Nothing left: refused, with what was asked and what the node allowed.
    let d = l.reclaim(1, T0 + 2 * S, 320 * MIB, 320 * MIB);
    assert_eq!(d.skip, Some(Skip::Capped(Cap::Budget)));
    let r = d.refusal.unwrap();
    assert_eq!(
        (r.cgroup, r.limit, r.allowed),
        (1, 320 * MIB, Some(320 * MIB))
    );
    assert!(r.wanted.unwrap() > 320 * MIB);
    // Nested cgroups are bounded by the node as well.
    let d = l.reclaim(10, T0 + 2 * S, 128 * MIB, 128 * MIB);
    assert_eq!(d.skip, Some(Skip::Capped(Cap::Budget)));
    // A sample taken after those raises: the node's figure again, the charges dropped.
    l.d.set_available(GIB, T0 + 3 * S);
    assert_eq!((l.d.available(), l.d.granted()), (GIB, 0));
    let a = only(&l.reclaim(1, T0 + 4 * S, 320 * MIB, 320 * MIB));
    assert!(a.new > 320 * MIB);
}

#[test]
fn a_binding_parent_is_raised_first_within_its_own_max() {
    let mut l = Loop::new(64 * GIB);
    let parent = MemoryPolicy {
        max: 700 * MIB,
        ..policy()
    };
    l.d.manage(1, None, parent, Limit::from_bytes(512 * MIB), 480 * MIB, T0);
    l.d.manage(
        2,
        Some(1),
        policy(),
        Limit::from_bytes(256 * MIB),
        256 * MIB,
        T0,
    );
    let d = l.reclaim(2, T0 + S, 256 * MIB, 256 * MIB);
    let [p, c] = d.actions() else { panic!("{d:?}") };
    assert_eq!(
        (p.cgroup, p.reason, p.old),
        (1, Reason::Ancestor, 512 * MIB)
    );
    assert_eq!(
        (c.cgroup, c.reason, c.old),
        (2, Reason::Pressure, 256 * MIB)
    );
    // Parent: usage 480 + child's 64 MiB raise + 64 MiB headroom = 608 MiB.
    assert_eq!(p.new, 608 * MIB);
    assert_eq!(c.new, 320 * MIB);
    // Next round: the parent would need 480+128+64 = 672... its known usage grew, too.
    l.sample(1, T0 + S + 500 * MS, 600 * MIB, 600 * MIB);
    let d = l.reclaim(2, T0 + 2 * S, 320 * MIB, 320 * MIB);
    let [p, c] = d.actions() else { panic!("{d:?}") };
    assert_eq!(p.new, 700 * MIB, "clamped to the parent's max");
    assert_eq!(c.cgroup, 2);
    // The parent is at its max: the child is raised alone, by what the parent can still back
    // (its max less its usage), not by a step it could never use.
    l.sample(1, T0 + 2 * S + 500 * MS, 690 * MIB, 690 * MIB);
    let d = l.reclaim(2, T0 + 3 * S, c.new, c.new);
    let a = only(&d);
    assert_eq!((a.cgroup, a.new), (2, c.new + 10 * MIB));
    // Full: refused as capped by the ancestor, the child's limit untouched.
    l.sample(1, T0 + 4 * S, 700 * MIB, 700 * MIB);
    let d = l.reclaim(2, T0 + 5 * S, a.new, a.new);
    assert!(d.is_empty());
    assert_eq!(d.skip, Some(Skip::Capped(Cap::Ancestor)));
    assert_eq!(l.d.limit(2), Some(a.new));
}

#[test]
fn a_parent_with_room_is_left_alone() {
    let mut l = Loop::new(64 * GIB);
    l.d.manage(1, None, policy(), Limit::from_bytes(2 * GIB), 300 * MIB, T0);
    l.d.manage(
        2,
        Some(1),
        policy(),
        Limit::from_bytes(256 * MIB),
        256 * MIB,
        T0,
    );
    let d = l.reclaim(2, T0 + S, 256 * MIB, 256 * MIB);
    assert_eq!(only(&d).cgroup, 2);
}

#[test]
fn grandparents_are_raised_top_down_and_the_top_within_budget() {
    // The node can back 76 MiB more.
    let mut l = Loop::new(76 * MIB);
    l.d.manage(
        1,
        None,
        policy(),
        Limit::from_bytes(GIB),
        GIB - 10 * MIB,
        T0,
    );
    l.d.manage(
        2,
        Some(1),
        policy(),
        Limit::from_bytes(512 * MIB),
        500 * MIB,
        T0,
    );
    l.d.manage(
        3,
        Some(2),
        policy(),
        Limit::from_bytes(256 * MIB),
        256 * MIB,
        T0,
    );
    let d = l.reclaim(3, T0 + S, 256 * MIB, 256 * MIB);
    let ids: Vec<_> = d.actions().iter().map(|a| a.cgroup).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(
        d.actions()[0].new,
        GIB + 76 * MIB,
        "top-level capped by what the node can back"
    );
    // The grandparent backs 86 MiB (its new limit less its usage): the 64 MiB raise fits.
    assert_eq!(d.actions()[2].new, 256 * MIB + 64 * MIB);
}

#[test]
fn pressure_on_an_ancestor_is_decided_for_the_ancestor() {
    let mut l = Loop::new(64 * GIB);
    l.d.manage(
        1,
        None,
        policy(),
        Limit::from_bytes(512 * MIB),
        512 * MIB,
        T0,
    );
    l.d.manage(2, Some(1), policy(), Limit::from_bytes(GIB), 300 * MIB, T0);
    let a = only(&l.reclaim(1, T0 + S, 512 * MIB, 512 * MIB));
    assert_eq!((a.cgroup, a.reason), (1, Reason::Pressure));
}

#[test]
fn scale_down_waits_for_the_cooldown_then_goes_gradually_and_never_below_the_working_set() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        cooldown_ns: 10 * S,
        down_interval_ns: S,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(GIB), 100 * MIB, T0);
    // Inside the cooldown: nothing.
    for i in 1..10 {
        assert!(l.sample(1, T0 + i * S, 100 * MIB, 80 * MIB).is_empty());
    }
    // Goal = working set 80 + headroom 64 + safety margin (16, at most an eighth of the working
    // set: 10) = 154 MiB: the 20 MiB of usage
    // above the working set is inactive cache, which the actuator has the kernel reclaim
    // before the limit comes down past usage.
    let mut limits = vec![GIB];
    for i in 10..40 {
        let d = l.sample(1, T0 + i * S, 100 * MIB, 80 * MIB);
        if let Some(a) = d.actions().first() {
            assert_eq!(a.reason, Reason::ScaleDown);
            assert!(a.new >= 154 * MIB && a.new < a.old);
            limits.push(a.new);
        }
    }
    // A quarter of the gap per step: 1024 -> 806 -> 643 -> ...
    assert_eq!(limits[1], GIB - (GIB - 154 * MIB) / 4);
    assert!(limits.len() > 5, "gradual: {limits:?}");
    // Converges to the goal, to within the hysteresis (min_change, 4 MiB).
    let last = *limits.last().unwrap();
    assert!(last >= 154 * MIB && last - 154 * MIB < 4 * MIB, "{last}");
}

#[test]
fn scale_down_respects_the_interval_and_usage_floor_and_min() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        cooldown_ns: S,
        down_interval_ns: 5 * S,
        min: 300 * MIB,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(GIB), 100 * MIB, T0);
    assert!(!l.sample(1, T0 + 2 * S, 100 * MIB, 10 * MIB).is_empty());
    assert!(l.sample(1, T0 + 3 * S, 100 * MIB, 10 * MIB).is_empty());
    assert!(l.sample(1, T0 + 6 * S, 100 * MIB, 10 * MIB).is_empty());
    assert!(!l.sample(1, T0 + 7 * S, 100 * MIB, 10 * MIB).is_empty());
    for i in 3..30 {
        l.sample(1, T0 + i * 5 * S, 100 * MIB, 10 * MIB);
    }
    let last = l.d.limit(1).unwrap();
    assert!(
        (300 * MIB..304 * MIB).contains(&last),
        "stops at min: {last}"
    );
    // The working set grew near the limit: the floor is the working set + headroom + safety
    // margin.
    let mut l = Loop::new(64 * GIB);
    l.d.manage(
        2,
        None,
        MemoryPolicy {
            cooldown_ns: S,
            down_interval_ns: S,
            ..policy()
        },
        Limit::from_bytes(GIB),
        0,
        T0,
    );
    for i in 2..40 {
        l.sample(2, T0 + i * S, 920 * MIB, 900 * MIB);
    }
    let last = l.d.limit(2).unwrap();
    assert!(
        (980 * MIB..984 * MIB).contains(&last),
        "working set + 64 + 16: {last}"
    );
}

#[test]
fn scale_down_stops_at_the_first_sign_of_pressure_and_the_cooldown_restarts() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        cooldown_ns: 10 * S,
        down_interval_ns: S,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(GIB), 100 * MIB, T0);
    let a = only(&l.sample(1, T0 + 11 * S, 100 * MIB, 80 * MIB));
    // Early warning at the lowered limit: a raise, and the cooldown starts over.
    let w = l.signal(
        1,
        MemorySignal::UsageHigh {
            ts_ns: T0 + 11 * S + 500 * MS,
            usage: a.new - 64 * MIB,
            limit: a.new,
        },
    );
    assert_eq!(only(&w).reason, Reason::EarlyWarning);
    for i in 12..21 {
        assert!(
            l.sample(1, T0 + i * S, 100 * MIB, 80 * MIB).is_empty(),
            "{i}"
        );
    }
    assert!(!l.sample(1, T0 + 22 * S, 100 * MIB, 80 * MIB).is_empty());
}

#[test]
fn psi_stall_counts_as_pressure_for_the_cooldown() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        cooldown_ns: 5 * S,
        down_interval_ns: S,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(GIB), 100 * MIB, T0);
    let mut psi = 0;
    for i in 1..20 {
        psi += 50_000; // 5% of each second stalled
        let d = l.signal(
            1,
            MemorySignal::Sample {
                ts_ns: T0 + i * S,
                usage: 100 * MIB,
                limit: Limit::from_bytes(GIB),
                working_set: 80 * MIB,
                psi_some_total_us: Some(psi),
                limit_hits: None,
                refaulted: None,
            },
        );
        assert!(d.is_empty(), "stalling: no scale-down at {i}s");
    }
    let d = l.signal(
        1,
        MemorySignal::Sample {
            ts_ns: T0 + 30 * S,
            usage: 100 * MIB,
            limit: Limit::from_bytes(GIB),
            working_set: 80 * MIB,
            psi_some_total_us: Some(psi),
            limit_hits: None,
            refaulted: None,
        },
    );
    assert_eq!(only(&d).reason, Reason::ScaleDown);
}

#[test]
fn raises_are_rate_limited() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max_raises_per_sec: 2,
        max: 32 * GIB,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(64 * MIB), 64 * MIB, T0);
    let mut limit = 64 * MIB;
    let mut results = Vec::new();
    for i in 0..4 {
        let d = l.reclaim(1, T0 + S + i * 10 * MS, limit, limit);
        match d.actions().first() {
            Some(a) => {
                limit = a.new;
                results.push("raise");
            }
            None => results.push(d.skip.unwrap().as_str()),
        }
    }
    assert_eq!(results, ["raise", "raise", "rate_limited", "rate_limited"]);
    assert_eq!(l.d.cgroup_stats(1).unwrap().rate_limited, 2);
    // Half a second later a token is back.
    assert!(!l.reclaim(1, T0 + S + 520 * MS, limit, limit).is_empty());
}

#[test]
fn hysteresis_suppresses_tiny_changes() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        cooldown_ns: S,
        down_interval_ns: S,
        min_change: 32 * MIB,
        ..policy()
    };
    // Goal 80 + 64 = 144 MiB, 20 MiB below the limit: not worth a write.
    l.d.manage(1, None, p, Limit::from_bytes(164 * MIB), 80 * MIB, T0);
    for i in 2..10 {
        assert!(l.sample(1, T0 + i * S, 80 * MIB, 80 * MIB).is_empty());
    }
    // A raise that the max bounds to less than min_change is reported as capped.
    let p = MemoryPolicy {
        max: 64 * MIB + 8 * MIB,
        min_change: 16 * MIB,
        ..policy()
    };
    l.d.manage(2, None, p, Limit::from_bytes(64 * MIB), 64 * MIB, T0);
    let d = l.reclaim(2, T0 + S, 64 * MIB, 64 * MIB);
    assert_eq!(d.skip, Some(Skip::Capped(Cap::AtMax)));
}

#[test]
fn oom_kill_raises_with_a_doubled_step() {
    let mut l = Loop::new(64 * GIB);
    l.d.manage(1, None, policy(), Limit::from_bytes(64 * MIB), 64 * MIB, T0);
    let d = l.signal(1, MemorySignal::OomKill { ts_ns: T0 + 10 * S });
    let a = only(&d);
    assert_eq!(
        (a.reason, a.new),
        (Reason::OomRecovery, 64 * MIB + 128 * MIB)
    );
    assert_eq!(l.d.cgroup_stats(1).unwrap().oom_kills, 1);
    // An OOM kill queued before that raise completed is part of the same storm.
    let d = l.signal(
        1,
        MemorySignal::OomKill {
            ts_ns: T0 + 10 * S + 50 * US,
        },
    );
    assert_eq!(d.skip, Some(Skip::Coalesced));
}

#[test]
fn a_failed_write_is_reverted_and_the_next_pressure_retries() {
    let mut l = Loop::new(GIB);
    l.d.manage(
        1,
        None,
        policy(),
        Limit::from_bytes(256 * MIB),
        256 * MIB,
        T0,
    );
    let mut out = Decision::new();
    l.d.on_signal(
        1,
        MemorySignal::Reclaim {
            ts_ns: T0 + S,
            usage: 256 * MIB,
            limit: 256 * MIB,
        },
        &mut out,
    );
    let a = out.actions()[0];
    l.d.applied(&a, T0 + S + WRITE_NS, WriteOutcome::Failed);
    assert_eq!(l.d.limit(1), Some(256 * MIB));
    assert_eq!(l.d.committed(), 256 * MIB as u128);
    assert_eq!(l.d.stats().failed_writes, 1);
    let d = l.reclaim(1, T0 + S + 200 * US, 256 * MIB, 256 * MIB);
    assert_eq!(only(&d).old, 256 * MIB);
}

#[test]
fn samples_adopt_a_limit_changed_behind_the_deciders_back() {
    let mut l = Loop::new(64 * GIB);
    l.d.manage(
        1,
        None,
        policy(),
        Limit::from_bytes(256 * MIB),
        100 * MIB,
        T0,
    );
    l.signal(
        1,
        MemorySignal::Sample {
            ts_ns: T0 + S,
            usage: 100 * MIB,
            limit: Limit::from_bytes(512 * MIB),
            working_set: 100 * MIB,
            psi_some_total_us: None,
            limit_hits: None,
            refaulted: None,
        },
    );
    assert_eq!(l.d.limit(1), Some(512 * MIB));
    assert_eq!(l.d.committed(), 512 * MIB as u128);
    assert!((l.d.utilization(1).unwrap() - 100.0 / 512.0).abs() < 1e-9);
}

#[test]
fn an_unlimited_cgroup_is_left_unlimited_unless_the_policy_says_so() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 4 * GIB,
        cooldown_ns: 0,
        down_interval_ns: 0,
        ..policy()
    };
    assert!(!p.limit_unlimited, "the default");
    l.d.manage(1, None, p, Limit::from_bytes(u64::MAX), 100 * MIB, T0);
    for i in 1..5 {
        let d = l.sample(1, T0 + i * S, 100 * MIB, 100 * MIB);
        assert!(d.actions().is_empty(), "nothing written: {:?}", d.actions());
    }
    // Pressure cannot bind an unlimited cgroup, and is not answered with a limit either.
    let d = l.reclaim(1, T0 + 6 * S, 100 * MIB, u64::MAX);
    assert!(d.actions().is_empty(), "{:?}", d.actions());
    assert_eq!(l.d.limit(1), Some(u64::MAX));
}

#[test]
fn an_unlimited_cgroup_is_brought_to_max_by_the_first_sample_when_asked() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 4 * GIB,
        limit_unlimited: true,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(u64::MAX), 100 * MIB, T0);
    let a = only(&l.sample(1, T0 + S, 100 * MIB, 100 * MIB));
    assert_eq!((a.old, a.new), (u64::MAX, 4 * GIB));
    assert_eq!(l.d.committed(), 4 * GIB as u128);
}

#[test]
fn a_max_below_the_limit_is_reached_step_by_step_never_below_usage() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 128 * MIB,
        lower_to_max: true,
        down_interval_ns: S,
        down_fraction: 0.5,
        min_change: 4 * MIB,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(256 * MIB), 32 * MIB, T0);
    let mut t = T0;
    let mut seen = vec![];
    for _ in 0..20 {
        t += S / 2;
        for a in l.sample(1, t, 32 * MIB, 32 * MIB).actions() {
            assert!(a.new < a.old && a.new >= 128 * MIB, "{a:?}");
            assert_eq!(a.new % 4096, 0, "{a:?}");
            seen.push(a.new);
        }
    }
    assert_eq!(
        seen.first(),
        Some(&(192 * MIB)),
        "half the way first: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&(128 * MIB)), "{seen:?}");
    assert!(seen.len() >= 3, "{seen:?}");
    // Usage above the max: the limit stops at usage + safety margin.
    let mut l = Loop::new(64 * GIB);
    l.d.manage(1, None, p, Limit::from_bytes(256 * MIB), 200 * MIB, T0);
    let mut t = T0;
    for _ in 0..20 {
        t += S;
        l.sample(1, t, 200 * MIB, 200 * MIB);
    }
    assert_eq!(l.d.limit(1), Some(216 * MIB));
}

#[test]
fn a_max_that_is_not_page_aligned_caps_raises_at_a_whole_page_below_it() {
    // `max = "100000001"` or `"0.1G"`: the kernel would keep the value rounded down to whole
    // pages; the decider asks for exactly that, so its limit is what the kernel keeps.
    for max in [100_000_001u64, (0.1 * GIB as f64) as u64] {
        let mut l = Loop::new(64 * GIB);
        let p = MemoryPolicy { max, ..policy() };
        l.d.manage(1, None, p, Limit::from_bytes(64 * MIB), 60 * MIB, T0);
        let a = only(&l.reclaim(1, T0 + S, 63 * MIB, 64 * MIB));
        assert_eq!(a.new, max / 4096 * 4096, "{a:?}");
        assert!(a.new <= max);
    }
    // The node's room too (a raise may add what the node can back: 36 MiB and a bit).
    let mut l = Loop::new(36 * MIB + 1234);
    l.d.manage(1, None, policy(), Limit::from_bytes(64 * MIB), 60 * MIB, T0);
    let a = only(&l.reclaim(1, T0 + S, 63 * MIB, 64 * MIB));
    assert_eq!(a.new, 100 * MIB);
}

#[test]
fn unmanaged_and_forgotten_cgroups() {
    let mut l = Loop::new(64 * GIB);
    let d = l.reclaim(9, T0, 1, 1);
    assert_eq!(d.skip, Some(Skip::Unmanaged));
    l.d.manage(1, None, policy(), Limit::from_bytes(GIB), 0, T0);
    l.d.manage(2, Some(1), policy(), Limit::from_bytes(256 * MIB), 0, T0);
    assert_eq!(l.d.committed(), GIB as u128);
    assert!(l.d.forget(1));
    assert!(!l.d.forget(1));
    // The child is now top-level and counts against the budget.
    assert_eq!(l.d.committed(), 256 * MIB as u128);
    assert_eq!(l.reclaim(1, T0 + S, 1, 1).skip, Some(Skip::Unmanaged));
    assert_eq!(l.d.len(), 1);
}

mod invariants {
    //! Property tests: whatever the signals, no emitted limit is below the latest known usage
    //! of its cgroup or above its max, the raises charged between two node samples never add
    //! up to more than the node could back, and no raise exceeds what the cgroup's managed
    //! ancestors can back.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Workload on cgroup `i` changes its usage by this many MiB (clamped to the limit).
        Grow(usize, i64),
        Reclaim(usize),
        UsageHigh(usize),
        Oom(usize),
        Sample(usize, u64 /* working set % */, u64 /* psi µs */),
        /// An event that saw an old limit (drained late).
        Stale(usize),
        Advance(u64 /* ms */),
        /// Apply the oldest pending write, with this outcome.
        Apply(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..5usize, -300i64..300).prop_map(|(i, d)| Op::Grow(i, d)),
            (0..5usize).prop_map(Op::Reclaim),
            (0..5usize).prop_map(Op::UsageHigh),
            (0..5usize).prop_map(Op::Oom),
            (0..5usize, 0..100u64, 0..200_000u64).prop_map(|(i, w, p)| Op::Sample(i, w, p)),
            (0..5usize).prop_map(Op::Stale),
            (0..3000u64).prop_map(Op::Advance),
            (0..3u8).prop_map(Op::Apply),
        ]
    }

    struct Cg {
        id: CgId,
        max: u64,
        parent: Option<usize>,
        kernel_limit: u64,
        old_limit: u64,
        usage: u64,
        /// The latest usage the decider was told about.
        known_usage: u64,
        /// The working set the last sample reported (a lowering may reclaim down to it).
        known_ws: u64,
        /// When the last write to it completed.
        applied_ts: u64,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn limits_stay_within_usage_max_and_budget(
            budget_mib in 256u64..4096,
            maxes in proptest::collection::vec(64u64..3000, 5),
            step_min in 1u64..256,
            fraction in 0.0f64..1.0,
            cooldown_s in 0u64..5,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let budget = budget_mib * MIB;
            let mut d = MemoryDecider::new(budget);
            // What the raises charged add up to (the ancestors' raises are not charged).
            let mut granted: u64 = 0;
            // Cgroups 0..3 top-level; 3 is a child of 0 and 4 a child of 3.
            let parents = [None, None, None, Some(0usize), Some(3usize)];
            let mut cgs: Vec<Cg> = Vec::new();
            let mut t = T0;
            let start = 32 * MIB;
            for (i, parent) in parents.iter().enumerate() {
                // Some maxes not page aligned (`max = "0.1G"`).
                let max = maxes[i] * MIB + i as u64 * 1001;
                let p = MemoryPolicy {
                    min: 16 * MIB,
                    max,
                    step_min: step_min * MIB,
                    step_fraction: fraction,
                    min_change: MIB,
                    cooldown_ns: cooldown_s * S,
                    down_interval_ns: S / 2,
                    ..MemoryPolicy::default()
                };
                let limit = start.min(max);
                d.manage(i as u64 + 1, parent.map(|p| p as u64 + 1), p, Limit::from_bytes(limit), 0, t);
                cgs.push(Cg { id: i as u64 + 1, max, parent: *parent, kernel_limit: limit,
                              old_limit: limit, usage: 0, known_usage: 0, known_ws: 0, applied_ts: t });
            }

            let mut out = Decision::new();
            let mut pending: std::collections::VecDeque<Action> = Default::default();
            for op in ops {
                t += 10 * US;
                let (i, sig) = match op {
                    Op::Grow(i, delta) => {
                        let c = &mut cgs[i];
                        let u = (c.usage as i64 + delta * MIB as i64).max(0) as u64;
                        c.usage = u.min(c.kernel_limit);
                        continue;
                    }
                    Op::Reclaim(i) => (i, MemorySignal::Reclaim { ts_ns: t, usage: cgs[i].usage, limit: cgs[i].kernel_limit }),
                    Op::UsageHigh(i) => (i, MemorySignal::UsageHigh { ts_ns: t, usage: cgs[i].usage, limit: cgs[i].kernel_limit }),
                    Op::Oom(i) => (i, MemorySignal::OomKill { ts_ns: t }),
                    Op::Sample(i, ws, psi) => (i, MemorySignal::Sample {
                        ts_ns: t, usage: cgs[i].usage, limit: Limit::from_bytes(cgs[i].kernel_limit),
                        working_set: cgs[i].usage * ws / 100, psi_some_total_us: Some(psi * (t / S)),
                        limit_hits: None,
                        refaulted: None,
                    }),
                    // Kernel timestamps before the last write completed: it saw the old limit.
                    Op::Stale(i) => (i, MemorySignal::Reclaim {
                        ts_ns: cgs[i].applied_ts.saturating_sub(1),
                        usage: cgs[i].usage.min(cgs[i].old_limit),
                        limit: cgs[i].old_limit,
                    }),
                    Op::Advance(ms) => { t += ms * MS; continue; }
                    Op::Apply(o) => {
                        if let Some(a) = pending.pop_front() {
                            let c = cgs.iter_mut().find(|c| c.id == a.cgroup).unwrap();
                            // (DryRun is a whole-agent mode, not mixed with real writes.)
                            let outcome = if o == 0 { WriteOutcome::Failed } else { WriteOutcome::Written };
                            if outcome == WriteOutcome::Written {
                                c.old_limit = c.kernel_limit;
                                c.kernel_limit = a.new;
                                // The kernel reclaimed down to a lowered limit.
                                c.usage = c.usage.min(a.new);
                                c.applied_ts = t;
                            }
                            if outcome == WriteOutcome::Failed && a.is_raise() && a.reason != Reason::Ancestor {
                                granted -= a.new - a.old;
                            }
                            d.applied(&a, t, outcome);
                            prop_assert_eq!(granted, d.granted());
                        }
                        continue;
                    }
                };
                if let MemorySignal::Reclaim { usage, .. } | MemorySignal::UsageHigh { usage, .. }
                    | MemorySignal::Sample { usage, .. } = sig {
                    cgs[i].known_usage = usage;
                    cgs[i].known_ws = match sig {
                        MemorySignal::Sample { working_set, .. } => working_set.min(usage),
                        _ => usage,
                    };
                }
                d.on_signal(cgs[i].id, sig, &mut out);
                for a in out.actions() {
                    let c = cgs.iter().find(|c| c.id == a.cgroup).unwrap();
                    prop_assert!(a.new <= c.max, "{a:?} above max {}", c.max);
                    prop_assert!(a.new % 4096 == 0, "{a:?} not page aligned");
                    if a.reason == Reason::ScaleDown {
                        // A lowering may take usage down to the working set (the actuator
                        // reclaims the cache first), never into it.
                        prop_assert!(a.new >= c.known_ws + (16 * MIB).min(c.known_ws / 8), "{a:?} below the working set {} + margin", c.known_ws);
                    } else {
                        prop_assert!(a.new >= c.known_usage, "{a:?} below usage {}", c.known_usage);
                    }
                    if a.is_raise() && a.reason != Reason::Ancestor {
                        granted += a.new - a.old;
                        // Within what every managed ancestor backs after its own raise.
                        let mut up = c.parent;
                        while let Some(p) = up {
                            let slack = d.limit(cgs[p].id).unwrap().saturating_sub(cgs[p].known_usage);
                            prop_assert!(a.new - a.old <= slack, "{a:?} beyond ancestor {}'s {slack}", cgs[p].id);
                            up = cgs[p].parent;
                        }
                    }
                    pending.push_back(*a);
                }
                prop_assert_eq!(granted, d.granted());
                prop_assert!(granted <= budget, "granted {granted} beyond what the node backs, {budget}");
            }
        }
    }
}

#[test]
fn scale_down_never_puts_the_working_set_in_the_early_warning_band() {
    // If it did, the kernel would warn at once and the limit would bounce back up (usage
    // above the working set is cache, reclaimed by the actuator below the band first).
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        cooldown_ns: S,
        down_interval_ns: S,
        ..policy()
    };
    l.d.manage(1, None, p, Limit::from_bytes(2 * GIB), 0, T0);
    for (i, usage) in (2..60).zip([300u64, 280, 500, 90, 90, 90, 700].iter().cycle()) {
        let usage = usage * MIB;
        let d = l.sample(1, T0 + i * S, usage, usage / 2);
        for a in d.actions() {
            let ws = usage / 2;
            assert!(
                a.new >= ws + p.headroom_at(a.new) + p.margin_above(ws),
                "{a:?} working set {ws}"
            );
        }
    }
    assert!(l.d.stats().scale_downs > 5);
    assert_eq!(l.d.stats().raises, 0);
}

impl Loop {
    /// A sample with the kernel's count of limit hits.
    fn sample_hits(&mut self, id: CgId, ts_ns: u64, usage: u64, hits: u64) -> Decision {
        self.sample_with(id, ts_ns, usage, usage, Some(hits))
    }
}

#[test]
fn limit_hits_in_a_sample_raise_when_events_were_missed() {
    let mut l = Loop::new(16 * GIB);
    l.d.manage(1, None, policy(), Limit::from_bytes(64 * MIB), 60 * MIB, T0);
    // The first sample only sets the baseline.
    assert!(l.sample_hits(1, T0 + S, 60 * MIB, 100).is_empty());
    // No event arrived (its records were dropped), but the kernel counted 12 more hits.
    let d = l.sample_hits(1, T0 + 2 * S, 64 * MIB, 112);
    let a = only(&d);
    assert_eq!((a.reason, a.old), (Reason::LimitHits, 64 * MIB));
    assert!(a.new >= 128 * MIB, "{a:?}");
    assert_eq!(Reason::LimitHits.as_str(), "limit_hits");
    // An unchanged count is no pressure.
    assert!(l.sample_hits(1, T0 + 3 * S, 64 * MIB, 112).is_empty());
}

#[test]
fn limit_hits_that_a_raise_answered_are_not_answered_twice() {
    let mut l = Loop::new(16 * GIB);
    l.d.manage(1, None, policy(), Limit::from_bytes(64 * MIB), 60 * MIB, T0);
    assert!(l.sample_hits(1, T0 + S, 60 * MIB, 0).is_empty());
    // The event path saw the reclaim and raised within the interval...
    only(&l.reclaim(1, T0 + S + 500 * MS, 64 * MIB, 64 * MIB));
    // ...so the hits it counted meanwhile were answered: no second raise from the sample.
    let d = l.sample_hits(1, T0 + 2 * S, 70 * MIB, 35);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(l.actions.len(), 1);
    // A count that went backwards (a recreated cgroup) is a new baseline, not pressure.
    assert!(l.sample_hits(1, T0 + 3 * S, 70 * MIB, 3).is_empty());
}

#[test]
fn an_owners_limit_above_max_is_left_alone_and_only_the_agents_raises_come_down() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 128 * MIB,
        down_interval_ns: S,
        cooldown_ns: 0,
        down_fraction: 0.5,
        ..policy()
    };
    assert!(!p.lower_to_max, "the default");
    // Found at 256 MiB, its owner's: the max bounds raises, it does not lower the owner's limit.
    l.d.manage(1, None, p, Limit::from_bytes(256 * MIB), 32 * MIB, T0);
    for i in 1..6 {
        let d = l.sample(1, T0 + i * S, 32 * MIB, 32 * MIB);
        assert!(
            d.actions().is_empty(),
            "the owner's limit stays: {:?}",
            d.actions()
        );
    }
    assert_eq!(l.d.limit(1), Some(256 * MIB));
    // The owner writes 512 MiB: adopted, and left alone too.
    let at = |ts_ns, limit| MemorySignal::Sample {
        ts_ns,
        usage: 32 * MIB,
        limit: Limit::from_bytes(limit),
        working_set: 32 * MIB,
        psi_some_total_us: None,
        limit_hits: None,
        refaulted: None,
    };
    let d = l.signal(1, at(T0 + 7 * S, 512 * MIB));
    assert!(d.actions().is_empty(), "{:?}", d.actions());
    assert_eq!(l.d.limit(1), Some(512 * MIB));
    // The owner lowers it to 96 MiB, below the max: the agent's raises stop at the max...
    l.signal(1, at(T0 + 8 * S, 96 * MIB));
    assert_eq!(l.d.limit(1), Some(96 * MIB));
    let a = only(&l.reclaim(1, T0 + 9 * S, 96 * MIB, 96 * MIB));
    assert_eq!(a.new, 128 * MIB, "raised to the max, not beyond: {a:?}");
}

/// The kubelet applying an older resize patch of the agent's (an echo) puts that limit in
/// force, but it is not the owner's: the owner's limit (what a lowered max never goes below)
/// stays the original. The same value written by its owner replaces it.
#[test]
fn the_kubelets_echo_of_an_older_patch_is_in_force_but_not_the_owners_limit() {
    for echo in [true, false] {
        let mut l = Loop::new(64 * GIB);
        l.d.manage(1, None, policy(), Limit::from_bytes(64 * MIB), 32 * MIB, T0);
        let a = only(&l.reclaim(1, T0 + S, 64 * MIB, 64 * MIB));
        assert!(a.new >= 128 * MIB, "{a:?}");
        let written = Limit::from_bytes(96 * MIB);
        if echo {
            l.d.echoed(1, T0 + 2 * S, written);
        } else {
            l.d.owner_set(1, T0 + 2 * S, written);
        }
        assert_eq!(l.d.limit(1), Some(96 * MIB), "in force (echo: {echo})");
        // Under pressure at it, raised from it at once (both).
        let a = only(&l.reclaim(1, T0 + 3 * S, 96 * MIB, 96 * MIB));
        assert_eq!(a.old, 96 * MIB, "{a:?}");
        let owners = l.d.ledger.get(1).unwrap().owner_limit();
        if echo {
            assert_eq!(owners, 64 * MIB, "the original stays the owner's");
        } else {
            assert_eq!(owners, 96 * MIB, "the owner's write is the owner's");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Right-sizing with the default policy: raises that follow the allocation, and a scale-down to
// the working set.

/// Grows a cgroup's usage along `usage_at(t_ns since start)` for `dur_ns` from a 64 MiB limit
/// under `p`, with the kernel's early warnings (once per limit, at `limit - headroom_at(limit)`)
/// answered `WRITE_NS` later. Returns `(usage never passed the limit, raises, final limit,
/// peak usage)`.
fn grow(p: MemoryPolicy, usage_at: impl Fn(u64) -> u64, dur_ns: u64) -> (bool, usize, u64, u64) {
    let mut l = Loop::new(64 * GIB);
    l.d.manage(1, None, p, Limit::from_bytes(64 * MIB), 0, T0);
    let (mut limit, mut warned_at, mut pending) = (64 * MIB, 0, None::<(u64, u64)>);
    let (mut ok, mut peak) = (true, 0);
    let mut t = 0;
    while t <= dur_ns {
        let ts = T0 + t;
        if let Some((done, new)) = pending {
            if done <= ts {
                limit = new;
                pending = None;
            }
        }
        let usage = usage_at(t);
        peak = peak.max(usage);
        ok &= usage <= limit;
        if usage + p.headroom_at(limit) >= limit && warned_at != limit && pending.is_none() {
            warned_at = limit;
            let d = l.signal(
                1,
                MemorySignal::UsageHigh {
                    ts_ns: ts,
                    usage,
                    limit,
                },
            );
            if let Some(a) = d.actions().first() {
                pending = Some((ts + WRITE_NS, a.new));
            }
        }
        t += 20 * US;
    }
    let raises = l.actions.iter().filter(|a| a.is_raise()).count();
    (ok, raises, pending.map_or(limit, |p| p.1), peak)
}

/// `rate` bytes/s up to `total`, then flat.
fn ramp(rate: u64, total: u64) -> impl Fn(u64) -> u64 {
    move |t| ((t as u128 * rate as u128 / S as u128) as u64).min(total)
}

#[test]
fn raises_follow_the_allocation_and_leave_at_most_one_and_a_half_times_the_peak() {
    let p = MemoryPolicy {
        max: 4 * GIB,
        ..MemoryPolicy::default()
    };
    // (what, rate, peak): the steps (800 MiB/s), a numpy-like spike, a stress-ng-like
    // toucher, a slow ramp.
    for (what, rate, total) in [
        ("steps 800 MiB/s", 800 * MIB, 256 * MIB),
        ("spike 3 GiB/s", 3 * GIB, 336 * MIB),
        ("toucher 8 GiB/s", 8 * GIB, 283 * MIB),
        ("ramp 20 MiB/s", 20 * MIB, 256 * MIB),
        ("sort-like 1 GiB/s", GIB, 507 * MIB),
    ] {
        let (ok, raises, last, peak) = grow(p, ramp(rate, total), 20 * S);
        assert!(ok, "{what}: usage passed the limit");
        let ratio = last as f64 / peak as f64;
        assert!(
            ratio <= 1.5,
            "{what}: final {last} / peak {peak} = {ratio:.2}"
        );
        assert!(raises <= 10, "{what}: {raises} raises");
    }
    // The sizing before (no cap, a 25% step, escalation on early warnings) overshoots the spike.
    let (_, _, last, peak) = grow(policy(), ramp(3 * GIB, 336 * MIB), 20 * S);
    assert!(last as f64 / peak as f64 > 1.5, "{last} / {peak}");
}

#[test]
fn a_raise_adds_at_most_half_the_usage_however_fast_the_allocation() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 4 * GIB,
        ..MemoryPolicy::default()
    };
    l.d.manage(1, None, p, Limit::from_bytes(256 * MIB), 0, T0);
    // 224 MiB in 20 ms: 11 GiB/s, 11 GiB of lookahead; capped at 1.5x the usage.
    let a = only(&l.signal(
        1,
        MemorySignal::UsageHigh {
            ts_ns: T0 + 20 * MS,
            usage: 224 * MIB,
            limit: 256 * MIB,
        },
    ));
    assert_eq!(a.new, 224 * MIB + 112 * MIB);
    // Early warnings in a row do not escalate: the next is sized the same way.
    let a = only(&l.signal(
        1,
        MemorySignal::UsageHigh {
            ts_ns: T0 + 30 * MS,
            usage: 300 * MIB,
            limit: 336 * MIB,
        },
    ));
    assert_eq!(a.new, 450 * MIB);
    // Reclaim means the raise was outrun: that round escalates (third round: 2^2).
    let a = only(&l.reclaim(1, T0 + 40 * MS, 450 * MIB, 450 * MIB));
    assert_eq!(a.reason, Reason::Pressure);
    assert!(a.new - a.old > 2 * (450 * MIB / 2), "{a:?}");
}

#[test]
fn the_warning_band_is_at_most_an_eighth_of_the_limit_and_floors_clear_it() {
    let p = MemoryPolicy::default();
    assert_eq!(p.headroom_at(GIB), 64 * MIB);
    assert_eq!(p.headroom_at(256 * MIB), 32 * MIB);
    assert_eq!(p.headroom_permille(), 125);
    for ws in [0, 10 * MIB, 100 * MIB, 150 * MIB, 300 * MIB, 2 * GIB] {
        let f = p.floor_above(ws);
        // Out of the band with the margin to spare, and not more than needed.
        assert!(ws + p.margin_above(ws) + p.headroom_at(f) <= f, "{ws}: {f}");
        assert!(f <= ws + p.safety_margin + p.headroom, "{ws}: {f}");
    }
    // Right-sized: within 1.3x of a working set of 48 MiB or more.
    for ws in [48 * MIB, 64 * MIB, 100 * MIB, 150 * MIB, 300 * MIB, 2 * GIB] {
        assert!(p.floor_above(ws) as f64 <= 1.3 * ws as f64, "{ws}");
    }
    // Without the fraction: the fixed band.
    let fixed = MemoryPolicy {
        headroom_fraction: 0.0,
        ..p
    };
    assert_eq!(fixed.headroom_at(64 * MIB), 64 * MIB);
    assert_eq!(
        fixed.floor_above(100 * MIB),
        100 * MIB + 100 * MIB / 8 + 64 * MIB
    );
    assert_eq!(fixed.headroom_permille(), 0);
}

#[test]
fn after_a_burst_the_limit_is_within_1_3x_of_the_working_set_30s_after_the_cooldown() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 4 * GIB,
        ..MemoryPolicy::default()
    };
    // A burst left 1.5 GiB; the working set is 200 MiB, usage 450 MiB (the rest cache).
    l.d.manage(1, None, p, Limit::from_bytes(1536 * MIB), 450 * MIB, T0);
    let cooldown_end = T0 + p.cooldown_ns;
    let mut t = T0 + S;
    let mut at = None;
    while t <= cooldown_end + 60 * S {
        let d = l.sample(1, t, 450 * MIB, 200 * MIB);
        for a in d.actions() {
            assert_eq!(a.reason, Reason::ScaleDown);
            assert!(t >= cooldown_end, "lowered inside the cooldown");
            assert!(a.new >= 200 * MIB + p.safety_margin + p.headroom_at(a.new));
        }
        if at.is_none() && (l.d.limit(1).unwrap() as f64) <= 1.3 * (200 * MIB) as f64 {
            at = Some(t);
        }
        t += S;
    }
    let at = at.expect("never right-sized");
    assert!(
        at - cooldown_end <= 30 * S,
        "{} s after the cooldown",
        (at - cooldown_end) / S
    );
}

#[test]
fn refaults_while_lowering_stop_the_scale_down_and_restart_the_cooldown() {
    let mut l = Loop::new(64 * GIB);
    let p = MemoryPolicy {
        max: 4 * GIB,
        cooldown_ns: 5 * S,
        ..MemoryPolicy::default()
    };
    l.d.manage(1, None, p, Limit::from_bytes(GIB), 300 * MIB, T0);
    let sample = |l: &mut Loop, t, refaulted| {
        let limit = l.d.limit(1).unwrap();
        l.signal(
            1,
            MemorySignal::Sample {
                ts_ns: t,
                usage: 300 * MIB,
                limit: Limit::from_bytes(limit),
                working_set: 200 * MIB,
                psi_some_total_us: None,
                limit_hits: None,
                refaulted: Some(refaulted),
            },
        )
    };
    assert!(sample(&mut l, T0 + S, 0).is_empty());
    assert!(
        !sample(&mut l, T0 + 6 * S, 0).is_empty(),
        "lowers after the cooldown"
    );
    // 1 MiB of refaults is noise; 50 MiB (a quarter of the working set) is pressure.
    assert!(!sample(&mut l, T0 + 8 * S, MIB).is_empty());
    let before = l.d.limit(1).unwrap();
    assert!(sample(&mut l, T0 + 10 * S, 51 * MIB).is_empty());
    for i in 11..15 {
        assert!(
            sample(&mut l, T0 + i * S, 51 * MIB).is_empty(),
            "cooldown restarted"
        );
    }
    assert_eq!(l.d.limit(1).unwrap(), before);
    assert!(
        !sample(&mut l, T0 + 16 * S, 51 * MIB).is_empty(),
        "and goes on after it"
    );
}
