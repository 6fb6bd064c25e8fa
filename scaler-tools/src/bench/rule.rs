//! The one scale-up rule every competitor uses, so that what differs between them is only how
//! fast and how well each learns of pressure: the project's decider ([`scaler::decider`]) with
//! the policy `scaler exec` uses (default [`MemoryPolicy`] with the run's maximum and headroom;
//! default [`CpuPolicy`] with the run's maximum), fed the signal each mechanism provides.
//!
//! The rule sits behind [`ScaleRule`] so the competitors do not depend on the decider's API.

use scaler::cgroupfs::Limit;
use scaler::decider::{
    Action, CpuDecider, CpuPolicy, CpuSignal, Decision, MemoryDecider, MemoryPolicy, MemorySignal,
    WriteOutcome,
};

/// What a competitor learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Memory usage is within the headroom of the limit (polling, v1 threshold, v2 `high`).
    EarlyWarning { usage: u64, limit: u64 },
    /// The cgroup is stalling or reclaiming at its limit (PSI, v2 `max`).
    Pressure { usage: u64, limit: u64 },
    /// A `cpu.stat` reading (cumulative values) with the quota in force.
    CpuStat {
        usage_ns: u64,
        nr_throttled: u64,
        throttled_ns: u64,
        quota_us: u64,
        period_us: u64,
    },
}

/// A scale-up rule: given what the competitor just learned, the new limit (or `None`).
pub trait ScaleRule: Send {
    /// A signal at `now_ns` (CLOCK_MONOTONIC). Returns the limit to write, or `None`.
    fn decide(&mut self, now_ns: u64, signal: Signal) -> Option<u64>;
    /// The write of the limit last returned by [`decide`](Self::decide) completed at
    /// `done_ns` (`ok`: the kernel accepted it).
    fn applied(&mut self, done_ns: u64, ok: bool);
}

/// The cgroup id the rule registers its one cgroup under (any value: it is private).
const ID: u64 = 1;

/// The project's decider managing one cgroup.
pub struct DeciderRule {
    kind: Kind,
    decision: Decision,
    pending: Option<Action>,
}

enum Kind {
    Memory(MemoryDecider),
    Cpu(CpuDecider),
}

impl DeciderRule {
    /// A memory rule: `policy` from [`memory_policy`], starting at `limit`, node `budget`.
    pub fn memory(policy: MemoryPolicy, limit: u64, budget: u64, now_ns: u64) -> Self {
        let mut d = MemoryDecider::new(budget);
        d.manage(ID, None, policy, Limit::from_bytes(limit), 0, now_ns);
        Self {
            kind: Kind::Memory(d),
            decision: Decision::new(),
            pending: None,
        }
    }

    /// A CPU rule starting at `quota_us` per `period_us`, node budget `budget_cores`.
    pub fn cpu(
        policy: CpuPolicy,
        quota_us: u64,
        period_us: u64,
        budget_cores: f64,
        now_ns: u64,
    ) -> Self {
        let mut d = CpuDecider::new(budget_cores);
        d.manage(ID, None, policy, Some(quota_us), period_us, now_ns);
        Self {
            kind: Kind::Cpu(d),
            decision: Decision::new(),
            pending: None,
        }
    }
}

/// The memory policy of a benchmark run: what `scaler exec` uses for the same arguments.
pub fn memory_policy(max: u64, headroom: u64) -> MemoryPolicy {
    MemoryPolicy {
        max,
        headroom,
        ..MemoryPolicy::default()
    }
}

/// The CPU policy of a benchmark run.
pub fn cpu_policy(max_cores: f64) -> CpuPolicy {
    CpuPolicy {
        max_cores,
        ..CpuPolicy::default()
    }
}

impl ScaleRule for DeciderRule {
    fn decide(&mut self, now_ns: u64, signal: Signal) -> Option<u64> {
        match (&mut self.kind, signal) {
            (Kind::Memory(d), Signal::EarlyWarning { usage, limit }) => d.on_signal(
                ID,
                MemorySignal::UsageHigh {
                    ts_ns: now_ns,
                    usage,
                    limit,
                },
                &mut self.decision,
            ),
            (Kind::Memory(d), Signal::Pressure { usage, limit }) => d.on_signal(
                ID,
                MemorySignal::Reclaim {
                    ts_ns: now_ns,
                    usage,
                    limit,
                },
                &mut self.decision,
            ),
            (
                Kind::Cpu(d),
                Signal::CpuStat {
                    usage_ns,
                    nr_throttled,
                    throttled_ns,
                    quota_us,
                    period_us,
                },
            ) => d.on_signal(
                ID,
                CpuSignal::Sample {
                    ts_ns: now_ns,
                    usage_ns,
                    nr_throttled,
                    throttled_ns,
                    quota_us: Some(quota_us),
                    period_us,
                },
                &mut self.decision,
            ),
            // A signal of the other resource: nothing to decide.
            _ => return None,
        }
        let a = self
            .decision
            .actions()
            .iter()
            .find(|a| a.cgroup == ID && a.is_raise())
            .copied()?;
        self.pending = Some(a);
        Some(a.new)
    }

    fn applied(&mut self, done_ns: u64, ok: bool) {
        let Some(a) = self.pending.take() else {
            return;
        };
        let outcome = if ok {
            WriteOutcome::Written
        } else {
            WriteOutcome::Failed
        };
        match &mut self.kind {
            Kind::Memory(d) => d.applied(&a, done_ns, outcome),
            Kind::Cpu(d) => d.applied(&a, done_ns, outcome),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const S: u64 = 1_000_000_000;

    #[test]
    fn memory_raises_on_early_warning_and_coalesces_the_storm() {
        let mut r = DeciderRule::memory(memory_policy(2048 * MIB, 16 * MIB), 64 * MIB, 16 << 30, S);
        let new = r
            .decide(
                2 * S,
                Signal::EarlyWarning {
                    usage: 50 * MIB,
                    limit: 64 * MIB,
                },
            )
            .expect("a raise");
        // The default sizing: at least step_min (32 MiB) above the limit.
        assert!(new >= 64 * MIB + 32 * MIB, "{new}");
        // Same storm before the write completed: coalesced.
        assert_eq!(
            r.decide(
                2 * S + 10,
                Signal::Pressure {
                    usage: 63 * MIB,
                    limit: 64 * MIB
                }
            ),
            None
        );
        r.applied(2 * S + 100, true);
        // New pressure at the new limit: raised again, never above the maximum.
        let again = r
            .decide(
                3 * S,
                Signal::Pressure {
                    usage: new - MIB,
                    limit: new,
                },
            )
            .expect("a second raise");
        assert!(again > new && again <= 2048 * MIB);
    }

    #[test]
    fn cpu_raises_when_throttling_grows() {
        let mut r = DeciderRule::cpu(cpu_policy(2.0), 50_000, 100_000, 2.0, S);
        let stat = |n| Signal::CpuStat {
            usage_ns: 0,
            nr_throttled: n,
            throttled_ns: n * 50_000_000,
            quota_us: 50_000,
            period_us: 100_000,
        };
        assert_eq!(r.decide(S + 100_000_000, stat(0)), None);
        let new = r.decide(S + 200_000_000, stat(1)).expect("a raise");
        assert!(new > 50_000 && new <= 200_000, "{new}");
        // A memory signal means nothing to the CPU rule.
        assert_eq!(r.decide(S, Signal::Pressure { usage: 1, limit: 1 }), None);
    }
}
