//! The one scale-up rule every competitor uses, so that what differs between them is only how
//! fast and how well each learns of pressure.
//!
//! The rule is behind [`ScaleRule`] so the project's decider can be swapped in without touching
//! the competitors: on a pressure signal, `new = usage + step` (memory) or `new = quota + step`
//! (CPU), bounded by the maximum; nothing is written when that would not raise the limit.

/// A scale-up rule: given what the competitor just learned, the new limit (or `None`).
pub trait ScaleRule: Send {
    /// A pressure signal at `now_ns` (CLOCK_MONOTONIC) with the cgroup at `usage` under
    /// `limit`. Returns the limit to write, or `None` to leave it.
    fn on_pressure(&mut self, now_ns: u64, usage: u64, limit: u64) -> Option<u64>;
}

/// `new = min(max, base + step)` where `base` is the usage (memory) or the current limit (CPU
/// quota, whose "usage" at pressure is the quota itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepRule {
    /// Added on each raise (bytes, or quota microseconds per period).
    pub step: u64,
    /// Never raised above this.
    pub max: u64,
    /// Which base the step is added to.
    pub base: StepBase,
}

/// What a [`StepRule`] adds its step to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepBase {
    /// The usage at the signal (memory): `new = usage + step`.
    Usage,
    /// The current limit (CPU quota): `new = limit + step`.
    Limit,
}

impl ScaleRule for StepRule {
    fn on_pressure(&mut self, _now_ns: u64, usage: u64, limit: u64) -> Option<u64> {
        let base = match self.base {
            StepBase::Usage => usage,
            StepBase::Limit => limit,
        };
        let new = base.saturating_add(self.step).min(self.max);
        (new > limit).then_some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn memory_rule_is_usage_plus_step_within_max() {
        let mut r = StepRule {
            step: 64 * MIB,
            max: 2048 * MIB,
            base: StepBase::Usage,
        };
        assert_eq!(r.on_pressure(0, 50 * MIB, 64 * MIB), Some(114 * MIB));
        // A signal with usage far below the limit never lowers it.
        assert_eq!(r.on_pressure(0, 10 * MIB, 100 * MIB), None);
        assert_eq!(r.on_pressure(0, 2040 * MIB, 2047 * MIB), Some(2048 * MIB));
        assert_eq!(r.on_pressure(0, 2048 * MIB, 2048 * MIB), None);
    }

    #[test]
    fn cpu_rule_adds_to_the_quota() {
        let mut r = StepRule {
            step: 50_000,
            max: 200_000,
            base: StepBase::Limit,
        };
        assert_eq!(r.on_pressure(0, 0, 50_000), Some(100_000));
        assert_eq!(r.on_pressure(0, 0, 180_000), Some(200_000));
        assert_eq!(r.on_pressure(0, 0, 200_000), None);
    }
}
