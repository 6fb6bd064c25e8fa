//! The node's memory figures, and the room they leave for raises.
//!
//! Every memory raise is bounded by the *room*: what the node can still back, as last sampled
//! (every `agent.sample_interval`), less what raises granted since (the engine's ledger keeps
//! that part). The room is the least of two bounds:
//!
//! * **The configured reserve**: `MemAvailable` minus `node.memory_reserve` (or `MemTotal`
//!   minus `node.memory_budget`; default reserve 1 GiB).
//! * **The kubelet's reservations** (where its configuration is read, see [`crate::kubelet`]):
//!   the kubelet's own `memory.available` signal minus its eviction threshold (the larger of
//!   `evictionHard` and `evictionSoft`), `node.kubelet_eviction_margin`, `kubeReserved` and
//!   `systemReserved`. So a raise never brings `memory.available` down to the eviction
//!   threshold, and never takes the memory the kubelet promised the system daemons, whatever
//!   they use now: pods, managed or not, then fit in node allocatable (capacity minus the
//!   reservations and the hard threshold), which is what the scheduler placed them against and
//!   what the kubelet evicts on (`allocatableMemory.available`).
//!
//! The kubelet computes `memory.available` as capacity minus the root cgroup's working set
//! (usage less inactive file pages); it counts active page cache as used, which `MemAvailable`
//! does not. The agent takes the lesser of `MemAvailable` and `MemFree + Inactive(file)` (a
//! lower bound of the kubelet's figure: the root cgroup's usage is at most `MemTotal -
//! MemFree`), so it never sees more room than the kubelet does.
//!
//! What the agent does not manage is inside these figures as it is now: the usage of unmanaged
//! containers and pods lowers `MemAvailable` and the kubelet's signal alike. Their growth to
//! come is not predicted; the reserves are what absorbs it (`node.memory_reserve` for anything,
//! the kubelet's reservations for the system daemons, the eviction threshold plus the margin
//! for the last sample interval). [`unmanaged_usage`] gives the figure the status and metrics
//! show: the node's memory in use (`MemTotal - MemFree`) less the usage of the managed cgroups
//! that have no managed ancestor.

use std::io;

use crate::kubelet::KubeletMemory;

/// The `/proc/meminfo` lines the node budget reads (bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`: the node's capacity, as the kubelet reports it.
    pub total: u64,
    /// `MemFree`.
    pub free: u64,
    /// `MemAvailable`.
    pub available: u64,
    /// `Inactive(file)`.
    pub inactive_file: u64,
}

impl MemInfo {
    /// Reads `/proc/meminfo`.
    pub fn read() -> io::Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/meminfo")?)
    }

    /// Parses the text of a `/proc/meminfo`.
    pub fn parse(text: &str) -> io::Result<Self> {
        let get = |key: &str| {
            crate::config::parse_meminfo(text, key).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("/proc/meminfo has no parsable {key} line"),
                )
            })
        };
        Ok(Self {
            total: get("MemTotal:")?,
            free: get("MemFree:")?,
            available: get("MemAvailable:")?,
            inactive_file: get("Inactive(file):")?,
        })
    }

    /// A lower bound of the kubelet's `memory.available`: `MemFree + Inactive(file)`, at most
    /// `MemAvailable`.
    pub fn kubelet_available(&self) -> u64 {
        self.free
            .saturating_add(self.inactive_file)
            .min(self.available)
    }
}

/// Which bound gives the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// `MemAvailable` minus the configured reserve.
    Config,
    /// The kubelet's signal minus its reservations.
    Kubelet,
}

impl Bound {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Kubelet => "kubelet",
        }
    }
}

/// The kubelet's part of the reserve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeletReserve {
    /// The eviction threshold in bytes (the larger of hard and soft) plus the margin.
    pub eviction: u64,
    /// `kubeReserved.memory + systemReserved.memory`.
    pub reserved: u64,
    /// Node allocatable (capacity minus the reservations and the hard threshold).
    pub allocatable: u64,
    /// The kubelet's `memory.available` as the agent bounds it
    /// ([`MemInfo::kubelet_available`]).
    pub available: u64,
}

impl KubeletReserve {
    /// What no raise takes out of the kubelet's signal.
    pub fn total(&self) -> u64 {
        self.eviction.saturating_add(self.reserved)
    }
}

/// The node's memory figures at one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeMemory {
    pub meminfo: MemInfo,
    /// The configured reserve (`node.memory_reserve`, or `MemTotal - node.memory_budget`).
    pub config_reserve: u64,
    /// The kubelet's part, where its configuration is in force.
    pub kubelet: Option<KubeletReserve>,
    /// What raises may add, at this sample.
    pub room: u64,
    /// The bound that gives `room`.
    pub bound: Bound,
}

impl NodeMemory {
    /// The figures for `meminfo`, a configured reserve, the kubelet's configuration (if in
    /// force) and the margin kept above its eviction threshold.
    pub fn compute(
        meminfo: MemInfo,
        config_reserve: u64,
        kubelet: Option<&KubeletMemory>,
        margin: u64,
    ) -> Self {
        let config_room = meminfo.available.saturating_sub(config_reserve);
        let kubelet = kubelet.map(|k| KubeletReserve {
            eviction: k.eviction_threshold(meminfo.total).saturating_add(margin),
            reserved: k.reserved(),
            allocatable: k.allocatable(meminfo.total),
            available: meminfo.kubelet_available(),
        });
        let (room, bound) = match kubelet {
            Some(k) => {
                let kubelet_room = k.available.saturating_sub(k.total());
                if kubelet_room < config_room {
                    (kubelet_room, Bound::Kubelet)
                } else {
                    (config_room, Bound::Config)
                }
            }
            None => (config_room, Bound::Config),
        };
        Self {
            meminfo,
            config_reserve,
            kubelet,
            room,
            bound,
        }
    }

    /// The largest reserve in force (bytes): the configured one, or the kubelet's.
    pub fn reserve(&self) -> u64 {
        self.kubelet
            .map_or(self.config_reserve, |k| k.total().max(self.config_reserve))
    }

    /// What gives the room, in words (for logs of refused raises).
    pub fn explain(&self, kubelet: Option<(&str, &KubeletMemory)>) -> String {
        use crate::units::format_size as s;
        let m = &self.meminfo;
        match (self.bound, self.kubelet, kubelet) {
            (Bound::Kubelet, Some(r), Some((path, k))) => format!(
                "room {}: the kubelet's memory.available (at most MemFree + Inactive(file)) {} \
                 minus the kubelet's reservations in {path}: eviction threshold {} + margin \
                 (node.kubelet_eviction_margin) {} + kubeReserved {} + systemReserved {} = {} \
                 ({})",
                s(self.room),
                s(r.available),
                s(k.eviction_threshold(m.total)),
                s(r.eviction.saturating_sub(k.eviction_threshold(m.total))),
                s(k.kube_reserved),
                s(k.system_reserved),
                s(r.total()),
                k.describe(),
            ),
            _ => format!(
                "room {}: MemAvailable {} minus the configured reserve (node.memory_reserve) {}",
                s(self.room),
                s(m.available),
                s(self.config_reserve)
            ),
        }
    }
}

/// The node's memory in use (`MemTotal - MemFree`) less `managed_top_level`, the usage of the
/// managed cgroups that have no managed ancestor (their usages are disjoint): what processes,
/// cgroups and the kernel outside the managed ones hold, page cache included.
pub fn unmanaged_usage(meminfo: &MemInfo, managed_top_level: u64) -> u64 {
    meminfo
        .total
        .saturating_sub(meminfo.free)
        .saturating_sub(managed_top_level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::parse_config;
    use crate::units::{GIB, MIB};

    const MEMINFO: &str = "MemTotal:       33554432 kB\nMemFree:         8388608 kB\n\
        MemAvailable:   20971520 kB\nBuffers:          102400 kB\nActive(file):   10485760 kB\n\
        Inactive(file):  4194304 kB\n";

    fn meminfo() -> MemInfo {
        MemInfo::parse(MEMINFO).unwrap()
    }

    #[test]
    fn meminfo_is_read() {
        let m = meminfo();
        assert_eq!(m.total, 32 * GIB);
        assert_eq!(m.free, 8 * GIB);
        assert_eq!(m.available, 20 * GIB);
        assert_eq!(m.inactive_file, 4 * GIB);
        // Active page cache counts as used for the kubelet.
        assert_eq!(m.kubelet_available(), 12 * GIB);
        let e = MemInfo::parse("MemTotal: 1 kB\nMemFree: 1 kB\nMemAvailable: 1 kB\n").unwrap_err();
        assert!(e.to_string().contains("Inactive(file)"), "{e}");
        let real = MemInfo::read().unwrap();
        assert!(
            real.total >= real.available && real.available > 0,
            "{real:?}"
        );
    }

    #[test]
    fn without_the_kubelet_the_room_is_mem_available_minus_the_reserve() {
        let n = NodeMemory::compute(meminfo(), GIB, None, 128 * MIB);
        assert_eq!(n.room, 19 * GIB);
        assert_eq!(n.bound, Bound::Config);
        assert_eq!(n.reserve(), GIB);
        assert!(
            n.explain(None).contains("MemAvailable 20"),
            "{}",
            n.explain(None)
        );
        let n = NodeMemory::compute(meminfo(), 21 * GIB, None, 0);
        assert_eq!(n.room, 0);
    }

    #[test]
    fn the_kubelets_reservations_and_threshold_bound_the_room() {
        // The documented 32Gi node: kube 2Gi, system 1Gi, evictionHard 500Mi.
        let k = parse_config(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             kubeReserved: {memory: 2Gi}\nsystemReserved: {memory: 1Gi}\n\
             evictionHard: {memory.available: 500Mi}\n",
        )
        .unwrap();
        let n = NodeMemory::compute(meminfo(), GIB, Some(&k), 100 * MIB);
        let r = n.kubelet.unwrap();
        assert_eq!(r.available, 12 * GIB);
        assert_eq!(r.eviction, 600 * MIB);
        assert_eq!(r.reserved, 3 * GIB);
        assert_eq!(r.allocatable, 29 * GIB - 500 * MIB);
        // 12Gi - (3Gi + 600Mi), below MemAvailable - 1Gi = 19Gi.
        assert_eq!(n.room, 9 * GIB - 600 * MIB);
        assert_eq!(n.bound, Bound::Kubelet);
        assert_eq!(n.reserve(), 3 * GIB + 600 * MIB);
        let why = n.explain(Some(("/var/lib/kubelet/config.yaml", &k)));
        for part in [
            "/var/lib/kubelet/config.yaml",
            "kubeReserved 2",
            "systemReserved 1",
            "eviction threshold 500",
            "margin",
        ] {
            assert!(why.contains(part), "{part}: {why}");
        }
        // A larger configured reserve wins.
        let n = NodeMemory::compute(meminfo(), 16 * GIB, Some(&k), 100 * MIB);
        assert_eq!((n.room, n.bound), (4 * GIB, Bound::Config));
        assert_eq!(n.reserve(), 16 * GIB);
    }

    #[test]
    fn reservations_that_cover_the_node_leave_no_room() {
        let k = parse_config(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             systemReserved: {memory: 16Gi}\nevictionHard: {memory.available: \"50%\"}\n",
        )
        .unwrap();
        let n = NodeMemory::compute(meminfo(), 0, Some(&k), 0);
        assert_eq!(n.room, 0);
        assert_eq!(n.kubelet.unwrap().allocatable, 0);
        assert_eq!(n.bound, Bound::Kubelet);
    }

    #[test]
    fn unmanaged_usage_is_the_rest_of_what_is_in_use() {
        let m = meminfo();
        assert_eq!(unmanaged_usage(&m, 4 * GIB), 20 * GIB);
        assert_eq!(unmanaged_usage(&m, 40 * GIB), 0);
    }
}
