//! Types shared by the kernel programs (scaler-ebpf) and the agent (scaler).
//!
//! Everything that crosses the kernel/user boundary is defined exactly once, here: ring-buffer
//! records, map keys and values, the BTF-derived offsets the programs are loaded with, and the
//! names userspace uses to find maps, globals and programs.
#![no_std]

/// Names of maps, globals and programs, as userspace looks them up.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const WATCHED: &str = "WATCHED";
    pub const SETTINGS: &str = "SETTINGS";
    pub const STATS: &str = "STATS";
    pub const RECLAIM_START: &str = "RECLAIM_START";
    pub const CG_STATE: &str = "CG_STATE";
    pub const OFFSETS: &str = "OFFSETS";

    pub const PROG_MEMCG_RECLAIM_BEGIN: &str = "memcg_reclaim_begin";
    pub const PROG_MEMCG_RECLAIM_END: &str = "memcg_reclaim_end";
    pub const PROG_DIRECT_RECLAIM_BEGIN: &str = "direct_reclaim_begin";
    pub const PROG_DIRECT_RECLAIM_END: &str = "direct_reclaim_end";
    pub const PROG_MARK_VICTIM: &str = "mark_victim";
    pub const PROG_COUNT_MEMCG_EVENTS: &str = "count_memcg_events";
}

/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const RING_BUF_BYTES: u32 = 1 << 21;
/// Capacity of the watched-cgroup map.
pub const MAX_WATCHED: u32 = 8192;
/// How many levels up the memory-cgroup tree the programs look for the limit that binds.
pub const MAX_ANCESTOR_LEVELS: usize = 8;

/// What a ring-buffer [`Event`] reports. Stored as `u32` in the record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A memory cgroup started reclaiming because a charge hit its limit (urgent).
    ReclaimBegin = 1,
    /// That reclaim ended; `value` is how long the task stalled in it (ns).
    ReclaimEnd = 2,
    /// Global direct reclaim (node-wide pressure) ended; `value` is the stall (ns).
    DirectReclaim = 3,
    /// The OOM killer chose a victim; `pid`/`comm` are the victim's.
    OomKill = 4,
    /// Early warning: a watched cgroup's usage crossed `limit - headroom` (urgent).
    UsageHigh = 5,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::ReclaimBegin,
            2 => Self::ReclaimEnd,
            3 => Self::DirectReclaim,
            4 => Self::OomKill,
            5 => Self::UsageHigh,
            _ => return None,
        })
    }

    /// The name used in `scaler watch --json` (`kind`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReclaimBegin => "reclaim_begin",
            Self::ReclaimEnd => "reclaim_end",
            Self::DirectReclaim => "direct_reclaim",
            Self::OomKill => "oom_kill",
            Self::UsageHigh => "usage_high",
        }
    }
}

/// `Event::flags`: the event was submitted with a wakeup (it needs action).
pub const EVENT_FLAG_WAKEUP: u32 = 1;
/// `Event::flags`: `target_id` is an ancestor of `cgroup_id` (an ancestor's limit binds).
pub const EVENT_FLAG_ANCESTOR: u32 = 2;

/// One ring-buffer record. 80 bytes, no padding, the same layout in kernel and user code.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, in ns.
    pub ts_ns: u64,
    /// Kernfs id (the directory's inode number) of the task's memory cgroup.
    pub cgroup_id: u64,
    /// Kernfs id of the memory cgroup whose limit binds (itself or an ancestor); 0 if unknown.
    pub target_id: u64,
    /// Usage of `target_id` in bytes when the event fired (0 if unknown).
    pub usage: u64,
    /// Hard limit (v2 memory.max, v1 memory.limit_in_bytes) of `target_id` in bytes.
    pub limit: u64,
    /// Kind-specific: stall in ns for `ReclaimEnd`/`DirectReclaim`; `order` for `ReclaimBegin`.
    pub value: u64,
    /// Thread-group id (the process id) of the task.
    pub pid: u32,
    /// Thread id of the task.
    pub tid: u32,
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// `EVENT_FLAG_*` bits.
    pub flags: u32,
    /// The task's comm, NUL padded.
    pub comm: [u8; 16],
}

pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();
const _: () = assert!(EVENT_SIZE == 80);

/// `WatchConfig::flags`: report memory events of this cgroup.
pub const WATCH_MEMORY: u32 = 1;
/// `WatchConfig::flags`: report early warnings (usage within `headroom` of the limit).
pub const WATCH_USAGE_HIGH: u32 = 2;

/// Value of the `WATCHED` map, keyed by the cgroup's kernfs id (u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// `WATCH_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// Early warning when `usage >= limit - headroom_bytes`.
    pub headroom_bytes: u64,
}

/// `SETTINGS` map (array of one): runtime switches userspace may change at any time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Non-zero: report every cgroup, watched or not (`scaler watch` with no --cgroup).
    pub watch_all: u32,
    pub _pad: u32,
    /// Headroom for early warnings of cgroups seen through `watch_all` (0: none).
    pub default_headroom_bytes: u64,
}

/// Per-cgroup kernel state (`CG_STATE`, LRU hash keyed by kernfs id): in-kernel coalescing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgState {
    /// The limit (bytes) at which userspace was last woken for reclaim of this cgroup: further
    /// reclaim at the same limit is reported without a wakeup (one storm, one wakeup).
    pub reclaim_woken_at_limit: u64,
    /// The limit (bytes) at which the last early warning was sent (re-armed when it changes).
    pub warned_at_limit: u64,
}

/// Indexes of the per-CPU `STATS` counters.
pub mod stat {
    /// Events that did not fit into the ring buffer (lost).
    pub const RINGBUF_DROPPED: u32 = 0;
    /// Events submitted.
    pub const SUBMITTED: u32 = 1;
    /// Events submitted with a wakeup.
    pub const WOKEN: u32 = 2;
    /// Events of unwatched cgroups filtered out in the kernel.
    pub const FILTERED: u32 = 3;
    /// Kernel struct reads that failed (bad offsets or a racing exit).
    pub const READ_ERRORS: u32 = 4;
    /// Reclaim-end events with no matching begin (stall unknown).
    pub const UNMATCHED_END: u32 = 5;
    /// Page-fault accounting events seen by the early-warning program.
    pub const USAGE_CHECKS: u32 = 6;
    pub const COUNT: u32 = 8;

    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_dropped",
        "submitted",
        "woken",
        "filtered",
        "read_errors",
        "unmatched_end",
        "usage_checks",
        "reserved",
    ];
}

/// Marks an offset as absent in [`KernelOffsets`].
pub const NO_OFFSET: u32 = u32::MAX;

/// Byte offsets of the kernel struct fields the programs follow, taken from the running
/// kernel's BTF at load time (Rust eBPF has no CO-RE relocations). Loaded as a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.cgroups` (struct css_set *).
    pub task_cgroups: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.pid`.
    pub task_pid: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `css_set.subsys` (array of struct cgroup_subsys_state *).
    pub css_set_subsys: u32,
    /// `enum cgroup_subsys_id::memory_cgrp_id`.
    pub memory_cgrp_id: u32,
    /// `enum cgroup_subsys_id::cpu_cgrp_id`.
    pub cpu_cgrp_id: u32,
    /// `cgroup_subsys_state.cgroup`.
    pub css_cgroup: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node.id`.
    pub kn_id: u32,
    /// `mem_cgroup.css`.
    pub memcg_css: u32,
    /// `mem_cgroup.memory` (struct page_counter).
    pub memcg_memory: u32,
    /// `page_counter.usage`.
    pub pc_usage: u32,
    /// `page_counter.max`.
    pub pc_max: u32,
    /// `page_counter.parent`.
    pub pc_parent: u32,
    /// log2 of the page size.
    pub page_shift: u32,
    /// Non-zero when `oom/mark_victim` passes a `struct task_struct *` (6.2+); else a pid.
    pub mark_victim_has_task: u32,
    pub _pad: u32,
}

impl KernelOffsets {
    pub const ZERO: Self = Self {
        task_cgroups: NO_OFFSET,
        task_tgid: NO_OFFSET,
        task_pid: NO_OFFSET,
        task_comm: NO_OFFSET,
        css_set_subsys: NO_OFFSET,
        memory_cgrp_id: NO_OFFSET,
        cpu_cgrp_id: NO_OFFSET,
        css_cgroup: NO_OFFSET,
        cgroup_kn: NO_OFFSET,
        kn_id: NO_OFFSET,
        memcg_css: NO_OFFSET,
        memcg_memory: NO_OFFSET,
        pc_usage: NO_OFFSET,
        pc_max: NO_OFFSET,
        pc_parent: NO_OFFSET,
        page_shift: 12,
        mark_victim_has_task: 0,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, made of integers with no padding.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::CgState {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
