//! CPU rules (in progress: the policy type first, the decider follows).

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
    /// Scale-down goal: observed usage times `1 + headroom_fraction`.
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
    /// 0.2 cores or half the quota, doubling per round within 1 s (0.2 -> 0.4 -> 0.8 -> 1.6 in
    /// three periods); quota-near at 80%; 5 ms p99 run-queue latency target; 25% headroom
    /// over observed usage when lowering, after a 20 s cooldown, half the excess every 2 s
    /// (so a quota returns within a minute of a burst); 0.05-core hysteresis; 10 raises/s.
    fn default() -> Self {
        Self {
            min_cores: 0.1,
            max_cores: f64::INFINITY,
            step_cores: 0.2,
            step_fraction: 0.5,
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
