//! Memory: the hard limit (v1 `memory.limit_in_bytes`, v2 `memory.max`), raised on reclaim,
//! early warnings and OOM kills, lowered from samples of usage, working set and PSI.

use scaler_common::{WatchConfig, WATCH_MEMORY, WATCH_USAGE_HIGH};

use super::{ManagedResource, Restored, Sample};
use crate::{
    actuator::{ActuatorError, MemoryActuator, MemoryOptions, Setting},
    cgroupfs::{Cgroup, Limit},
    clock::monotonic_ns,
    decider::{CgId, MemorySignal, Resource},
    ebpf::{EbpfError, Pipeline},
    engine::{Policy, Signal},
    units::format_size,
};

/// The memory resource.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory;

/// Reads a sample of a memory cgroup for the decider (slow path). The timestamp is taken
/// before the files are read, so that the values are never older than it says.
pub fn sample(cg: &Cgroup) -> Option<MemorySignal> {
    let ts_ns = monotonic_ns();
    let usage = cg.memory_usage().ok()?;
    let limit = cg.memory_limit().ok()?;
    let stat = cg.memory_stat().ok();
    let working_set = stat
        .as_ref()
        .map_or(usage, |s| usage.saturating_sub(s.inactive_file));
    let refaulted = stat
        .and_then(|s| s.refaults)
        .map(|pages| pages.saturating_mul(crate::actuator::memory::page_size()));
    let psi = cg.memory_pressure().ok().flatten().map(|p| p.some.total_us);
    let limit_hits = cg.memory_limit_hits().ok().flatten();
    Some(MemorySignal::Sample {
        ts_ns,
        usage,
        limit,
        working_set,
        psi_some_total_us: psi,
        limit_hits,
        refaulted,
    })
}

/// What the kernel programs are told about a managed memory cgroup: report its pressure, and
/// warn when usage comes within `headroom` of its limit, or `permille` thousandths of it when
/// that is less (0: always `headroom`; see [`MemoryPolicy::headroom_at`]).
///
/// [`MemoryPolicy::headroom_at`]: crate::decider::MemoryPolicy::headroom_at
pub fn watch_config(headroom: u64, permille: u32, early_warning: bool) -> WatchConfig {
    WatchConfig {
        flags: WATCH_MEMORY | if early_warning { WATCH_USAGE_HIGH } else { 0 },
        headroom_permille: permille,
        headroom_bytes: headroom,
    }
}

/// What to do with one cgroup's limit at shutdown, given `restore_on_exit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restore {
    /// The agent never changed it (current == original): nothing to do.
    Unchanged,
    /// Write the original back.
    Write(Limit),
    /// The original is below current usage: leave the current limit (writing it would force
    /// reclaim or an OOM kill).
    BelowUsage { original: u64, usage: u64 },
}

/// Decides a restore: never below usage.
pub fn plan_restore(original: Limit, current: Limit, usage: u64) -> Restore {
    if original == current {
        return Restore::Unchanged;
    }
    match original {
        Limit::Bytes(b) if b < usage => Restore::BelowUsage { original: b, usage },
        o => Restore::Write(o),
    }
}

impl ManagedResource for Memory {
    fn resource(&self) -> Resource {
        Resource::Memory
    }

    fn usage(&self, cg: &Cgroup) -> u64 {
        cg.memory_usage().unwrap_or(0)
    }

    fn watch(&self, pipeline: &mut Pipeline, id: CgId, policy: &Policy) -> Result<bool, EbpfError> {
        let Policy::Memory(p) = policy else {
            return Ok(false);
        };
        pipeline.watch(id, watch_config(p.headroom, p.headroom_permille(), true))?;
        Ok(true)
    }

    fn unwatch(&self, pipeline: &mut Pipeline, id: CgId) {
        let _ = pipeline.unwatch(id);
    }

    fn sample(&self, cg: &Cgroup, _kernel: Option<(&Pipeline, CgId)>) -> Option<Sample> {
        let signal = sample(cg)?;
        let MemorySignal::Sample { limit, .. } = signal else {
            return None;
        };
        Some(Sample {
            signal: Signal::Memory(signal),
            observed: Setting::Memory(limit),
            throttled_seconds: None,
        })
    }

    fn restore(&self, cg: &Cgroup, id: CgId, original: Setting) -> Result<Restored, ActuatorError> {
        let Setting::Memory(original) = original else {
            return Ok(Restored::Unchanged);
        };
        let act = MemoryActuator::open_expecting(cg, Some(id), MemoryOptions::default())?;
        let current = act.current_limit();
        let usage = cg.memory_usage()?;
        // The usage was read by path: it is this cgroup's if the cgroup is still there.
        if let Ok(now) = cg.id() {
            if now.0 != id {
                return Err(ActuatorError::Replaced {
                    path: cg.dir().to_path_buf(),
                    expected: id,
                    found: now.0,
                });
            }
        }
        match plan_restore(original, current, usage) {
            Restore::Unchanged => Ok(Restored::Unchanged),
            Restore::BelowUsage { .. } => Ok(Restored::Kept {
                why: "the original limit is below current usage; the current limit stays",
                current: Setting::Memory(current),
            }),
            Restore::Write(l) => {
                act.set_memory_limit(l)?;
                Ok(Restored::Written {
                    replaced: Setting::Memory(current),
                })
            }
        }
    }

    fn bounds(&self, policy: &Policy) -> (String, String) {
        match policy {
            Policy::Memory(p) => (
                format_size(p.min),
                if p.max == u64::MAX {
                    "none".into()
                } else {
                    format_size(p.max)
                },
            ),
            Policy::Cpu(_) => Default::default(),
        }
    }

    fn gauge(&self, setting: Setting) -> f64 {
        match setting {
            Setting::Memory(l) => l.bytes().map_or(f64::INFINITY, |b| b as f64),
            Setting::Cpu(_) => f64::NAN,
        }
    }

    fn unit(&self) -> &'static str {
        "byte"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn restore_never_goes_below_usage() {
        assert_eq!(
            plan_restore(Limit::Bytes(64 * M), Limit::Bytes(64 * M), 100 * M),
            Restore::Unchanged
        );
        assert_eq!(
            plan_restore(Limit::Bytes(64 * M), Limit::Bytes(256 * M), 10 * M),
            Restore::Write(Limit::Bytes(64 * M))
        );
        assert_eq!(
            plan_restore(Limit::Bytes(64 * M), Limit::Bytes(256 * M), 100 * M),
            Restore::BelowUsage {
                original: 64 * M,
                usage: 100 * M
            }
        );
        assert_eq!(
            plan_restore(Limit::Max, Limit::Bytes(256 * M), 1 << 40),
            Restore::Write(Limit::Max)
        );
    }
}
