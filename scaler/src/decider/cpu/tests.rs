//! Sequences of CPU signals in, decisions out.

use super::*;
use crate::decider::testing::{self, only};
use crate::decider::Decision;

const MS: u64 = 1_000_000;
const US: u64 = 1_000;
const S: u64 = 1_000_000_000;
const T0: u64 = 100 * S;
const PERIOD: u64 = 100_000; // µs
const WRITE_NS: u64 = 10 * US;

fn q(cores: f64) -> u64 {
    (cores * PERIOD as f64).round() as u64
}

fn policy() -> CpuPolicy {
    CpuPolicy {
        min_cores: 0.2,
        max_cores: 2.0,
        ..CpuPolicy::default()
    }
}

/// The decider and the engine's side of the loop, with each cgroup's fake `cpu.stat`
/// counters: (usage_ns, nr_throttled).
type Loop = testing::Loop<CpuDecider, std::collections::HashMap<CgId, (u64, u64)>>;

impl Loop {
    fn new(budget: f64) -> Self {
        Self::with(CpuDecider::new(budget), WRITE_NS)
    }

    fn quota_near(&mut self, id: CgId, ts_ns: u64) -> Decision {
        let quota_ns = self.d.quota_us(id).unwrap().unwrap() * 1000;
        self.signal(
            id,
            CpuSignal::QuotaNear {
                ts_ns,
                used_ns_in_period: quota_ns * 8 / 10,
                quota_ns,
                period_ns: PERIOD * 1000,
            },
        )
    }

    /// A sample after the cgroup used `cores` over `interval_ns` and was throttled `n` times.
    fn sample(&mut self, id: CgId, ts_ns: u64, cores: f64, interval_ns: u64, n: u64) -> Decision {
        let e = self.stat.entry(id).or_insert((0, 0));
        e.0 += (cores * interval_ns as f64) as u64;
        e.1 += n;
        let (usage_ns, nr_throttled) = *e;
        let quota_us = self.d.quota_us(id).unwrap();
        self.signal(
            id,
            CpuSignal::Sample {
                ts_ns,
                usage_ns,
                nr_throttled,
                throttled_ns: 0,
                quota_us,
                period_us: PERIOD,
            },
        )
    }
}

#[test]
fn unit_conversions() {
    assert_eq!(cores_to_microcores(1.5), 1_500_000);
    assert_eq!(cores_to_microcores(f64::INFINITY), u64::MAX);
    assert_eq!(cores_to_microcores(-1.0), 0);
    assert_eq!(quota_to_microcores(20_000, 100_000), 200_000);
    assert_eq!(quota_to_microcores(u64::MAX, 100_000), u64::MAX);
    assert_eq!(microcores_to_quota(333_333, 100_000, false), 33_333);
    assert_eq!(microcores_to_quota(333_333, 100_000, true), 33_334);
}

#[test]
fn quota_near_raises_and_consecutive_rounds_escalate() {
    let mut l = Loop::new(16.0);
    l.d.manage(1, None, policy(), Some(q(0.2)), PERIOD, T0);
    let mut quotas = vec![q(0.2)];
    for i in 0..4 {
        let d = l.quota_near(1, T0 + S + i * 100 * MS);
        if let Some(a) = d.actions().first() {
            assert_eq!(
                (a.resource, a.reason),
                (Resource::Cpu, Reason::CpuQuotaNear)
            );
            quotas.push(a.new);
        }
    }
    // 0.2 -> 0.4 (step 0.2) -> 0.8 (2 x 0.2) -> 1.6 (4 x 0.4) -> 2.0 (max).
    assert_eq!(quotas, [q(0.2), q(0.4), q(0.8), q(1.6), q(2.0)]);
    assert_eq!(l.d.quota_cores(1), Some(2.0));
}

#[test]
fn stale_quota_near_signals_are_coalesced() {
    let mut l = Loop::new(16.0);
    l.d.manage(1, None, policy(), Some(q(0.2)), PERIOD, T0);
    let a = only(&l.quota_near(1, T0 + S));
    // Same period, seen at the old quota, or timestamped before the write completed.
    let old = CpuSignal::QuotaNear {
        ts_ns: T0 + S + 50 * US,
        used_ns_in_period: 16_000_000,
        quota_ns: q(0.2) * 1000,
        period_ns: PERIOD * 1000,
    };
    assert_eq!(l.signal(1, old).skip, Some(Skip::Coalesced));
    let early = CpuSignal::QuotaNear {
        ts_ns: T0 + S + 5 * US,
        used_ns_in_period: a.new * 800,
        quota_ns: a.new * 1000,
        period_ns: PERIOD * 1000,
    };
    assert_eq!(l.signal(1, early).skip, Some(Skip::Coalesced));
    assert_eq!(l.d.stats().coalesced, 2);
    assert_eq!(l.actions.len(), 1);
}

#[test]
fn max_holds_and_capping_is_reported_once() {
    let mut l = Loop::new(16.0);
    l.d.manage(1, None, policy(), Some(q(1.9)), PERIOD, T0);
    let a = only(&l.quota_near(1, T0 + S));
    assert_eq!(a.new, q(2.0));
    let skips: Vec<_> = (1..6)
        .map(|i| l.quota_near(1, T0 + S + i * 100 * MS).skip.unwrap())
        .collect();
    assert_eq!(skips[0], Skip::Capped(Cap::AtMax));
    assert!(
        skips[1..].iter().all(|s| *s == Skip::Coalesced),
        "{skips:?}"
    );
}

#[test]
fn an_unlimited_quota_counts_by_its_usage_not_infinity() {
    // Before: a new unlimited top-level quota counted as u64::MAX microcores until its first
    // sample brought it to its max, and every other raise was refused for the budget meanwhile.
    let mut l = Loop::new(1.5);
    l.d.manage(1, None, policy(), None, PERIOD, T0);
    l.d.manage(2, None, policy(), Some(q(0.5)), PERIOD, T0);
    assert_eq!(
        l.d.committed_microcores(),
        500_000,
        "unlimited, not sampled: nothing"
    );
    assert_eq!(only(&l.quota_near(2, T0 + S)).new, q(0.7));
    // Its first sample brings it to its max (2 cores); until the kernel has that, it counts at
    // its old value: unlimited, so its usage, which the next sample says is 0.3 cores.
    l.d.on_signal(
        1,
        CpuSignal::Sample {
            ts_ns: T0 + S,
            usage_ns: 0,
            nr_throttled: 0,
            throttled_ns: 0,
            quota_us: None,
            period_us: PERIOD,
        },
        &mut l.out,
    );
    assert_eq!(only(&l.out).new, q(2.0));
    l.d.on_signal(
        1,
        CpuSignal::Sample {
            ts_ns: T0 + 2 * S,
            usage_ns: 300_000_000,
            nr_throttled: 0,
            throttled_ns: 0,
            quota_us: None,
            period_us: PERIOD,
        },
        &mut l.out,
    );
    assert_eq!(l.d.committed_microcores(), 300_000 + 700_000);
}

#[test]
fn the_budget_holds_across_cgroups() {
    let mut l = Loop::new(1.3);
    l.d.manage(1, None, policy(), Some(q(0.5)), PERIOD, T0);
    l.d.manage(2, None, policy(), Some(q(0.5)), PERIOD, T0);
    l.d.manage(3, Some(2), policy(), Some(q(0.2)), PERIOD, T0);
    assert_eq!(l.d.committed_microcores(), 1_000_000);
    assert_eq!(only(&l.quota_near(1, T0 + S)).new, q(0.7));
    // 0.1 cores left for cgroup 2.
    assert_eq!(only(&l.quota_near(2, T0 + S)).new, q(0.6));
    assert_eq!(l.d.committed_microcores(), 1_300_000);
    assert_eq!(
        l.quota_near(1, T0 + 2 * S).skip,
        Some(Skip::Capped(Cap::Budget))
    );
    // The nested cgroup fits in its parent and does not touch the budget.
    assert_eq!(only(&l.quota_near(3, T0 + 2 * S)).cgroup, 3);
    assert_eq!(l.d.committed_microcores(), 1_300_000);
}

#[test]
fn a_parent_without_room_is_raised_first_within_its_max() {
    let mut l = Loop::new(16.0);
    let parent = CpuPolicy {
        max_cores: 0.8,
        ..policy()
    };
    l.d.manage(1, None, parent, Some(q(0.5)), PERIOD, T0);
    l.d.manage(2, Some(1), policy(), Some(q(0.4)), PERIOD, T0);
    // The parent is using 0.45 of its 0.5 cores.
    l.sample(1, T0 + S, 0.45, S, 0);
    l.sample(1, T0 + 2 * S, 0.45, S, 0);
    let d = l.quota_near(2, T0 + 2 * S + MS);
    let [p, c] = d.actions() else { panic!("{d:?}") };
    assert_eq!((p.cgroup, p.reason), (1, Reason::Ancestor));
    assert_eq!((c.cgroup, c.old, c.new), (2, q(0.4), q(0.6)));
    // 0.45 used + the child's 0.2 = 0.65 cores, at least the parent's step: 0.7.
    assert_eq!(p.new, q(0.7));
    let d = l.quota_near(2, T0 + 2 * S + 200 * MS);
    let [p, _] = d.actions() else { panic!("{d:?}") };
    // Needs 0.45 + 0.4 = 0.85 cores: bounded by its own max.
    assert_eq!(p.new, q(0.8), "the parent's own max");
}

#[test]
fn throttling_in_samples_raises_but_not_for_an_interval_before_the_last_raise() {
    let mut l = Loop::new(16.0);
    l.d.manage(1, None, policy(), Some(q(0.2)), PERIOD, T0);
    assert!(l.sample(1, T0 + S, 0.2, S, 0).is_empty());
    let a = only(&l.sample(1, T0 + 2 * S, 0.2, S, 7));
    assert_eq!((a.reason, a.new), (Reason::CpuThrottled, q(0.4)));
    // That interval (T0+2s..T0+3s) began before the raise completed: not new pressure.
    assert!(l.sample(1, T0 + 3 * S, 0.3, S, 3).is_empty());
    // Throttled again over an interval wholly after the raise: raise.
    let a = only(&l.sample(1, T0 + 4 * S, 0.4, S, 2));
    assert_eq!(a.old, q(0.4));
    assert_eq!(l.d.cgroup_stats(1).unwrap().throttled_intervals, 3);
}

#[test]
fn runq_latency_raises_only_a_quota_bound_cgroup_above_target() {
    let mut l = Loop::new(16.0);
    l.d.manage(1, None, policy(), Some(q(1.0)), PERIOD, T0);
    let lat = |ts_ns, p99_us| CpuSignal::RunqLatency { ts_ns, p99_us };
    // Idle-ish cgroup (0.3 of 1 core), no throttling: high latency is the node's, not ours.
    l.sample(1, T0 + S, 0.3, S, 0);
    l.sample(1, T0 + 2 * S, 0.3, S, 0);
    let d = l.signal(1, lat(T0 + 2 * S + MS, 20_000));
    assert_eq!(d.skip, Some(Skip::NotQuotaBound));
    // Below target: nothing at all.
    let d = l.signal(1, lat(T0 + 2 * S + 2 * MS, 1_000));
    assert!(d.is_empty() && d.skip.is_none());
    // Using 0.9 of the quota: quota-bound.
    l.sample(1, T0 + 3 * S, 0.9, S, 0);
    let a = only(&l.signal(1, lat(T0 + 3 * S + MS, 20_000)));
    assert_eq!((a.reason, a.new), (Reason::CpuRunqLatency, q(1.25)));
    // Throttled in the last interval: quota-bound whatever the average usage.
    let mut l = Loop::new(16.0);
    l.d.manage(1, None, policy(), Some(q(1.0)), PERIOD, T0);
    l.sample(1, T0 + S, 0.1, S, 0);
    l.d.applied(&Action::default(), 0, WriteOutcome::Written); // unrelated: ignored
    l.sample(1, T0 + 2 * S, 0.1, S, 0);
    let mut out = Decision::new();
    l.d.on_signal(
        1,
        CpuSignal::Sample {
            ts_ns: T0 + 3 * S,
            usage_ns: 300_000_000,
            nr_throttled: 1,
            throttled_ns: 1_000,
            quota_us: Some(q(1.0)),
            period_us: PERIOD,
        },
        &mut out,
    );
    let throttle_raise = only(&out);
    l.d.applied(
        &throttle_raise,
        T0 + 3 * S + WRITE_NS,
        WriteOutcome::Written,
    );
    let a = only(&l.signal(1, lat(T0 + 3 * S + 2 * MS, 9_000)));
    assert_eq!(a.reason, Reason::CpuRunqLatency);
}

#[test]
fn the_quota_returns_within_a_minute_after_a_burst_never_below_usage() {
    let mut l = Loop::new(16.0);
    l.d.manage(1, None, policy(), Some(q(0.2)), PERIOD, T0);
    // A burst: three quota-near rounds take it to 1.6 cores.
    for i in 0..3 {
        only(&l.quota_near(1, T0 + S + i * 100 * MS));
    }
    assert_eq!(l.d.quota_cores(1), Some(1.6));
    // The burst ends at T0+2s; the workload idles at 0.05 cores.
    let mut downs = Vec::new();
    for i in 2..=62 {
        let d = l.sample(1, T0 + i * S, 0.05, S, 0);
        if let Some(a) = d.actions().first() {
            assert_eq!(a.reason, Reason::CpuScaleDown);
            assert!(i >= 21, "not before the 20 s cooldown ({i})");
            assert!(
                quota_to_microcores(a.new, PERIOD) >= 50_000,
                "never below usage"
            );
            downs.push((i, a.new));
        }
    }
    assert!(downs.len() >= 4, "gradual: {downs:?}");
    let (_, last) = *downs.last().unwrap();
    // Goal: max(min 0.2, 0.05 * 1.25, 0.05 + 0.05) = 0.2, within the 0.05 hysteresis.
    assert!(last <= q(0.25), "{downs:?}");
    assert!(downs.iter().all(|(i, _)| *i <= 60), "{downs:?}");
}

#[test]
fn scale_down_stops_on_pressure_and_the_cooldown_restarts() {
    let mut l = Loop::new(16.0);
    let p = CpuPolicy {
        cooldown_ns: 5 * S,
        down_interval_ns: S,
        ..policy()
    };
    l.d.manage(1, None, p, Some(q(2.0)), PERIOD, T0);
    l.sample(1, T0, 0.1, S, 0);
    assert!(l.sample(1, T0 + 4 * S, 0.1, 4 * S, 0).is_empty());
    let a = only(&l.sample(1, T0 + 6 * S, 0.1, 2 * S, 0));
    assert_eq!(a.reason, Reason::CpuScaleDown);
    // Latency above target on a cgroup that is not quota-bound: no raise, but it is a sign
    // of pressure and stops the scale-down.
    let d = l.signal(
        1,
        CpuSignal::RunqLatency {
            ts_ns: T0 + 6 * S + MS,
            p99_us: 50_000,
        },
    );
    assert_eq!(d.skip, Some(Skip::NotQuotaBound));
    for i in 7..11 {
        assert!(l.sample(1, T0 + i * S, 0.1, S, 0).is_empty(), "{i}");
    }
    assert!(!l.sample(1, T0 + 12 * S, 0.1, S, 0).is_empty());
}

#[test]
fn scale_down_never_goes_below_observed_usage_or_min() {
    let mut l = Loop::new(16.0);
    let p = CpuPolicy {
        cooldown_ns: S,
        down_interval_ns: S,
        min_cores: 0.5,
        ..policy()
    };
    l.d.manage(1, None, p, Some(q(2.0)), PERIOD, T0);
    l.d.manage(2, None, p, Some(q(2.0)), PERIOD, T0);
    l.sample(1, T0, 0.0, S, 0);
    l.sample(2, T0, 0.0, S, 0);
    for i in 1..60 {
        l.sample(1, T0 + i * S, 0.01, S, 0);
        l.sample(2, T0 + i * S, 1.2, S, 0);
    }
    let q1 = l.d.quota_cores(1).unwrap();
    assert!((0.5..0.55).contains(&q1), "min: {q1}");
    let q2 = l.d.quota_cores(2).unwrap();
    // Goal 1.2 * 1.25 / 0.8 = 1.875: usage at 64% of the quota, below the quota-near mark.
    assert!((1.875..1.925).contains(&q2), "usage + headroom: {q2}");
    assert!((l.d.utilization(2).unwrap() - 1.2 / q2).abs() < 1e-3);
}

#[test]
fn raises_are_rate_limited() {
    let mut l = Loop::new(64.0);
    let p = CpuPolicy {
        max_raises_per_sec: 2,
        max_cores: 64.0,
        ..policy()
    };
    l.d.manage(1, None, p, Some(q(0.2)), PERIOD, T0);
    let r: Vec<_> = (0..4)
        .map(|i| {
            let d = l.quota_near(1, T0 + S + i * 100 * MS);
            d.skip.map_or("raise", Skip::as_str)
        })
        .collect();
    assert_eq!(r, ["raise", "raise", "rate_limited", "rate_limited"]);
}

#[test]
fn unlimited_quota_is_brought_to_max_and_never_raised() {
    let mut l = Loop::new(16.0);
    l.d.manage(1, None, policy(), None, PERIOD, T0);
    assert_eq!(l.d.quota_us(1), Some(None));
    assert_eq!(l.d.quota_cores(1), Some(f64::INFINITY));
    let d = l.signal(
        1,
        CpuSignal::RunqLatency {
            ts_ns: T0 + MS,
            p99_us: 50_000,
        },
    );
    // Unlimited and busy-looking: nothing to raise.
    assert!(d.is_empty());
    let a = only(&l.sample(1, T0 + S, 0.5, S, 0));
    assert_eq!((a.old, a.new), (u64::MAX, q(2.0)));
}

#[test]
fn failed_writes_revert_and_unmanaged_cgroups_are_skipped() {
    let mut l = Loop::new(1.0);
    l.d.manage(1, None, policy(), Some(q(0.5)), PERIOD, T0);
    let mut out = Decision::new();
    l.d.on_signal(
        1,
        CpuSignal::QuotaNear {
            ts_ns: T0 + S,
            used_ns_in_period: 40_000_000,
            quota_ns: 50_000_000,
            period_ns: 100_000_000,
        },
        &mut out,
    );
    let a = only(&out);
    l.d.applied(&a, T0 + S + WRITE_NS, WriteOutcome::Failed);
    assert_eq!(l.d.quota_us(1), Some(Some(q(0.5))));
    assert_eq!(l.d.committed_microcores(), 500_000);
    assert_eq!(
        l.signal(
            9,
            CpuSignal::RunqLatency {
                ts_ns: T0,
                p99_us: 1
            }
        )
        .skip,
        Some(Skip::Unmanaged)
    );
    assert!(l.d.forget(1));
    assert_eq!(l.d.committed_microcores(), 0);
}

mod invariants {
    //! No sequence of signals makes the CPU decider emit a quota above max, lower a quota
    //! below the usage it observed, or raise past the node budget.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Use(usize, u64 /* millicores */, bool /* throttled */),
        QuotaNear(usize),
        Latency(usize, u64),
        Advance(u64),
        Apply(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, 0..3000u64, any::<bool>()).prop_map(|(i, m, t)| Op::Use(i, m, t)),
            (0..4usize).prop_map(Op::QuotaNear),
            (0..4usize, 0..20_000u64).prop_map(|(i, p)| Op::Latency(i, p)),
            (0..5000u64).prop_map(Op::Advance),
            any::<bool>().prop_map(Op::Apply),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn quotas_stay_within_usage_max_and_budget(
            budget_mc in 500u64..4000,
            maxes in proptest::collection::vec(100u64..3000, 4),
            periods in proptest::collection::vec(prop_oneof![Just(100_000u64), Just(50_000), Just(33_333), Just(1_000_000)], 4),
            step_mc in 10u64..500,
            cooldown_s in 0u64..3,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let budget_uc = budget_mc * 1000;
            let mut d = CpuDecider::new(budget_mc as f64 / 1000.0);
            let parents = [None, None, Some(0u64), Some(2u64)];
            let mut t = T0;
            let start_mc = 100u64;
            prop_assume!(2 * start_mc * 1000 <= budget_uc);
            let mut kernel = [0u64; 4];
            let mut usage_ns = [0u64; 4];
            let mut nr = [0u64; 4];
            let mut known_usage_uc = [0u64; 4];
            for i in 0..4 {
                let p = CpuPolicy {
                    min_cores: 0.05,
                    max_cores: maxes[i] as f64 / 1000.0,
                    step_cores: step_mc as f64 / 1000.0,
                    min_change_cores: 0.01,
                    cooldown_ns: cooldown_s * S,
                    down_interval_ns: S / 2,
                    ..CpuPolicy::default()
                };
                let quota = microcores_to_quota(start_mc.min(maxes[i]) * 1000, periods[i], false);
                kernel[i] = quota;
                d.manage(i as u64 + 1, parents[i].map(|p| p + 1), p, Some(quota), periods[i], t);
                d.on_signal(i as u64 + 1, CpuSignal::Sample { ts_ns: t, usage_ns: 0, nr_throttled: 0,
                    throttled_ns: 0, quota_us: Some(quota), period_us: periods[i] }, &mut Decision::new());
            }
            let mut last_sample = [t; 4];
            let mut out = Decision::new();
            let mut pending: std::collections::VecDeque<Action> = Default::default();
            for op in ops {
                t += 10 * US;
                let (i, sig) = match op {
                    Op::Use(i, mc, throttled) => {
                        let dt = (t - last_sample[i]).max(1);
                        // Usage cannot exceed the quota in force.
                        let cap_uc = quota_to_microcores(kernel[i], periods[i]);
                        let uc = (mc * 1000).min(cap_uc);
                        usage_ns[i] += (u128::from(uc) * u128::from(dt) / 1_000_000) as u64;
                        nr[i] += u64::from(throttled);
                        (i, CpuSignal::Sample { ts_ns: t, usage_ns: usage_ns[i], nr_throttled: nr[i],
                            throttled_ns: 0, quota_us: Some(kernel[i]), period_us: periods[i] })
                    }
                    Op::QuotaNear(i) => (i, CpuSignal::QuotaNear { ts_ns: t, used_ns_in_period: 0,
                        quota_ns: kernel[i] * 1000, period_ns: periods[i] * 1000 }),
                    Op::Latency(i, p99) => (i, CpuSignal::RunqLatency { ts_ns: t, p99_us: p99 }),
                    Op::Advance(ms) => { t += ms * MS; continue; }
                    Op::Apply(ok) => {
                        if let Some(a) = pending.pop_front() {
                            let i = (a.cgroup - 1) as usize;
                            if ok { kernel[i] = a.new; }
                            d.applied(&a, t, if ok { WriteOutcome::Written } else { WriteOutcome::Failed });
                            let sum: u64 = (0..4).filter(|&i| parents[i].is_none())
                                .map(|i| quota_to_microcores(kernel[i], periods[i])).sum();
                            prop_assert!(sum <= budget_uc, "quotas in force {sum} over budget {budget_uc}");
                        }
                        continue;
                    }
                };
                d.on_signal(i as u64 + 1, sig, &mut out);
                if let CpuSignal::Sample { .. } = sig {
                    known_usage_uc[i] = (d.usage_cores(i as u64 + 1).unwrap() * 1e6).round() as u64;
                    last_sample[i] = t;
                }
                for a in out.actions() {
                    let j = (a.cgroup - 1) as usize;
                    let uc = quota_to_microcores(a.new, periods[j]);
                    prop_assert!(uc <= maxes[j] * 1000, "{a:?} above max {}", maxes[j]);
                    prop_assert!(a.new != u64::MAX);
                    if !a.is_raise() {
                        prop_assert!(uc + 1 >= known_usage_uc[j], "{a:?} below usage {}", known_usage_uc[j]);
                    }
                    pending.push_back(*a);
                }
                if out.actions().iter().any(|a| a.is_raise()) {
                    prop_assert!(d.committed_microcores() <= u128::from(budget_uc));
                }
            }
        }
    }
}

#[test]
fn scale_down_leaves_usage_below_the_quota_near_mark() {
    let mut l = Loop::new(16.0);
    let p = CpuPolicy {
        cooldown_ns: S,
        down_interval_ns: S,
        max_cores: 4.0,
        ..policy()
    };
    l.d.manage(1, None, p, Some(q(4.0)), PERIOD, T0);
    l.sample(1, T0, 0.0, S, 0);
    for (i, cores) in (1..60).zip([0.3, 0.9, 1.4, 0.2].iter().cycle()) {
        let d = l.sample(1, T0 + i * S, *cores, S, 0);
        for a in d.actions() {
            let quota_cores = a.new as f64 / PERIOD as f64;
            assert!(*cores <= 0.8 * quota_cores + 1e-9, "{a:?} usage {cores}");
        }
    }
    assert!(l.d.stats().scale_downs > 3);
}
