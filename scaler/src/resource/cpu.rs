//! CPU: the CFS bandwidth limit (v1 `cpu.cfs_quota_us`, v2 `cpu.max`), raised when the kernel
//! sees a cgroup near its quota within a period, throttled, or waiting in the run queue while
//! quota-bound; lowered from `cpu.stat` samples.

use std::time::Duration;

use scaler_common::{CpuWatch, CPU_WATCH_QUOTA, CPU_WATCH_RUNQ};

use super::{ManagedResource, Restored, Sample};
use crate::{
    actuator::{ActuatorError, CpuActuator, Setting},
    cgroupfs::{Cgroup, CpuQuota},
    clock::monotonic_ns,
    decider::{CgId, CpuSignal, Resource},
    ebpf::{EbpfError, Pipeline},
    engine::{Policy, Signal},
};

/// The CPU resource.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// Reads a `cpu.stat` + quota sample of a cpu cgroup for the decider (slow path).
/// `usage_ns` is v2's `usage_usec`, or v1's `cpuacct.usage` when the cpuacct controller is
/// mounted with cpu (as `cpu,cpuacct`), else 0 (then the decider's usage-based scale-down goal
/// is the policy minimum, unless the caller fills in the kernel programs' figure).
pub fn sample(cg: &Cgroup) -> Option<CpuSignal> {
    let ts_ns = monotonic_ns();
    let stat = cg.cpu_stat().ok()?;
    let (quota, period_us) = cg.cpu_max().ok()?;
    let usage_ns = stat.usage_ns.or_else(|| {
        cg.read_optional("cpuacct.usage")
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse().ok())
    });
    Some(CpuSignal::Sample {
        ts_ns,
        usage_ns: usage_ns.unwrap_or(0),
        nr_throttled: stat.nr_throttled,
        throttled_ns: stat.throttled_ns,
        quota_us: match quota {
            CpuQuota::Max => None,
            CpuQuota::Quota { quota_us, .. } => Some(quota_us),
        },
        period_us,
    })
}

/// What the scheduler programs are told about a watched cpu cgroup: report when it uses
/// `near` of its quota within a period, and run-queue latency above `runq_target`.
pub fn watch_config(near: f64, runq_target: Duration) -> CpuWatch {
    let permille = (near.clamp(0.0, 1.0) * 1000.0).round() as u32;
    let target = u64::try_from(runq_target.as_nanos()).unwrap_or(u64::MAX);
    CpuWatch {
        flags: CPU_WATCH_QUOTA | if target > 0 { CPU_WATCH_RUNQ } else { 0 },
        near_permille: permille,
        runq_target_ns: target,
    }
}

impl ManagedResource for Cpu {
    fn resource(&self) -> Resource {
        Resource::Cpu
    }

    fn usage(&self, _cg: &Cgroup) -> u64 {
        0
    }

    fn watch(&self, pipeline: &mut Pipeline, id: CgId, policy: &Policy) -> Result<bool, EbpfError> {
        let Policy::Cpu(p) = policy else {
            return Ok(false);
        };
        if !pipeline.cpu_enabled() {
            return Ok(false);
        }
        let cfg = watch_config(
            p.quota_near_fraction,
            Duration::from_micros(p.runq_latency_target_us),
        );
        pipeline.watch_cpu(id, cfg)?;
        Ok(true)
    }

    fn unwatch(&self, pipeline: &mut Pipeline, id: CgId) {
        if pipeline.cpu_enabled() {
            let _ = pipeline.unwatch_cpu(id);
        }
    }

    fn sample(&self, cg: &Cgroup, kernel: Option<(&Pipeline, CgId)>) -> Option<Sample> {
        let mut s = sample(cg)?;
        let CpuSignal::Sample {
            usage_ns,
            quota_us,
            period_us,
            throttled_ns,
            ..
        } = &mut s
        else {
            return None;
        };
        if *usage_ns == 0 {
            // v1 keeps CPU time in cpuacct, often not mounted with cpu: use what the kernel
            // programs accounted instead.
            if let Some(st) = kernel.and_then(|(p, id)| p.cpu_state(id)) {
                *usage_ns = st.total_ns;
            }
        }
        let observed = quota_us.map_or(CpuQuota::Max, |quota_us| CpuQuota::Quota {
            quota_us,
            period_us: *period_us,
        });
        let throttled_seconds = Some(*throttled_ns as f64 / 1e9);
        Some(Sample {
            signal: Signal::Cpu(s),
            observed: Setting::Cpu(observed),
            throttled_seconds,
        })
    }

    fn restore(&self, cg: &Cgroup, id: CgId, original: Setting) -> Result<Restored, ActuatorError> {
        let Setting::Cpu(original) = original else {
            return Ok(Restored::Unchanged);
        };
        // A quota can always be lowered: the cost is throttling, not a kill.
        let a = CpuActuator::open_expecting(cg, Some(id))?;
        let current = a.current_quota();
        if current == original {
            return Ok(Restored::Unchanged);
        }
        a.set_cpu_quota(original)?;
        Ok(Restored::Written {
            replaced: Setting::Cpu(current),
        })
    }

    fn bounds(&self, policy: &Policy) -> (String, String) {
        match policy {
            Policy::Cpu(p) => (
                format!("{} cores", p.min_cores),
                if p.max_cores.is_finite() {
                    format!("{} cores", p.max_cores)
                } else {
                    "none".into()
                },
            ),
            Policy::Memory(_) => Default::default(),
        }
    }

    fn gauge(&self, setting: Setting) -> f64 {
        match setting {
            Setting::Cpu(q) => q.cores().unwrap_or(f64::INFINITY),
            Setting::Memory(_) => f64::NAN,
        }
    }

    fn unit(&self) -> &'static str {
        "core"
    }
}
