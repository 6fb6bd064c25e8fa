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
    pub const CPU_OFFSETS: &str = "CPU_OFFSETS";
    pub const CPU_WATCHED: &str = "CPU_WATCHED";
    pub const CPU_STATE: &str = "CPU_STATE";
    pub const CPU_FILTER: &str = "CPU_FILTER";
    pub const TASK_WAKEUP: &str = "TASK_WAKEUP";

    pub const PROG_MEMCG_RECLAIM_BEGIN: &str = "memcg_reclaim_begin";
    pub const PROG_MEMCG_RECLAIM_END: &str = "memcg_reclaim_end";
    pub const PROG_DIRECT_RECLAIM_BEGIN: &str = "direct_reclaim_begin";
    pub const PROG_DIRECT_RECLAIM_END: &str = "direct_reclaim_end";
    pub const PROG_MARK_VICTIM: &str = "mark_victim";
    pub const PROG_COUNT_MEMCG_EVENTS: &str = "count_memcg_events";

    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    pub const PROG_SCHED_WAKEUP: &str = "sched_wakeup";
    pub const PROG_SCHED_WAKEUP_NEW: &str = "sched_wakeup_new";
    pub const PROG_SCHED_STAT_RUNTIME: &str = "sched_stat_runtime";
    pub const PROG_CPU_TICK: &str = "cpu_tick";
    /// An empty `sched_switch` program, for overhead measurements only.
    pub const PROG_SCHED_SWITCH_FLOOR: &str = "sched_switch_floor";
}

/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const RING_BUF_BYTES: u32 = 1 << 21;
/// Capacity of the watched-cgroup map.
pub const MAX_WATCHED: u32 = 8192;
/// Capacity of the per-task wakeup-time map of the run-queue-latency fallback (LRU; used only
/// on kernels without `task_struct.sched_info.last_queued`, and only for watched tasks).
pub const MAX_TASKS: u32 = 65536;
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
    /// A watched cpu cgroup used `near_permille` of its CFS quota within the current period
    /// (urgent, at most once per period). Fields: `cgroup_id`/`target_id` the cpu cgroup,
    /// `usage` CPU time used in the period so far (ns), `limit` the quota per period (ns),
    /// `value` the period (ns); `pid`/`tid`/`comm` the task whose run time crossed the mark.
    CpuQuotaNear = 6,
    /// Run-queue latency (wakeup or preemption to running) of a watched cpu cgroup's task
    /// pushed the cgroup's p99 for the period so far above its target (urgent, at most once
    /// per period). Fields: `value` that latency (ns), `usage` run-queue samples of the cgroup
    /// in the period so far, `limit` the target (ns); `pid`/`tid`/`comm` the task switched in.
    RunqLatency = 7,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::ReclaimBegin,
            2 => Self::ReclaimEnd,
            3 => Self::DirectReclaim,
            4 => Self::OomKill,
            5 => Self::UsageHigh,
            6 => Self::CpuQuotaNear,
            7 => Self::RunqLatency,
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
            Self::CpuQuotaNear => "cpu_quota_near",
            Self::RunqLatency => "runq_latency",
        }
    }
}

/// `Event::flags`: the event was submitted with a wakeup (it needs action).
pub const EVENT_FLAG_WAKEUP: u32 = 1;
/// `Event::flags`: `target_id` is an ancestor of `cgroup_id` (an ancestor's limit binds).
pub const EVENT_FLAG_ANCESTOR: u32 = 2;
/// `Event::flags`: a synthetic event written by the load-testing injector (`scaler
/// load-test`, [`inject`]), never by the pressure programs. It is decoded and decided on like
/// any other event; the flag lets it be told apart and counted separately.
pub const EVENT_FLAG_INJECTED: u32 = 4;
/// `Event::flags`: an observe-only event: no level of its cgroup up to the binding one is in
/// `WATCHED` (the agent does not manage it); it is reported only because of
/// `Settings::watch_all`. Such events never wake the consumer and are shed in the kernel
/// under load (see [`OBSERVE_MAX_PENDING_BYTES`], [`OBSERVE_BUDGET`]).
pub const EVENT_FLAG_OBSERVED: u32 = 8;

/// Observe-only events (see [`EVENT_FLAG_OBSERVED`]) are submitted only while the ring buffer
/// holds less unread data than this: an eighth of it. The other seven eighths (1.75 MiB, about
/// 20,800 records) stay free for the events of watched (managed) cgroups whatever the
/// cgroups nobody manages do, and a managed cgroup's event waits behind at most about 3,000
/// observe-only records (a fraction of a millisecond to drain).
pub const OBSERVE_MAX_PENDING_BYTES: u64 = RING_BUF_BYTES as u64 / 8;
/// Observe-only events each CPU may submit per [`OBSERVE_WINDOW_NS`] (6,400 a second per CPU:
/// plenty for metrics and `scaler watch`, a small fraction of what one reclaim storm makes).
pub const OBSERVE_BUDGET: u64 = 64;
/// The window of [`OBSERVE_BUDGET`]: 10 ms.
pub const OBSERVE_WINDOW_NS: u64 = 10_000_000;

/// One ring-buffer record. 80 bytes, no padding, the same layout in kernel and user code.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, in ns.
    pub ts_ns: u64,
    /// Kernfs id (the directory's inode number) of the task's memory cgroup (memory kinds) or
    /// cpu cgroup (`CpuQuotaNear`, `RunqLatency`).
    pub cgroup_id: u64,
    /// Kernfs id of the memory cgroup whose limit binds (itself or an ancestor); 0 if unknown.
    /// CPU kinds: the cpu cgroup itself.
    pub target_id: u64,
    /// Usage of `target_id` in bytes when the event fired (0 if unknown). CPU kinds: see
    /// [`EventKind`] (ns used in the period, or run-queue samples).
    pub usage: u64,
    /// Hard limit (v2 memory.max, v1 memory.limit_in_bytes) of `target_id` in bytes. CPU
    /// kinds: the quota per period (ns) or the latency target (ns).
    pub limit: u64,
    /// Kind-specific: stall in ns for `ReclaimEnd`/`DirectReclaim`; `order` for `ReclaimBegin`;
    /// the period (ns) for `CpuQuotaNear`; the latency (ns) for `RunqLatency`.
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
    /// The early-warning distance is at most this many thousandths of the limit (0: always
    /// `headroom_bytes`).
    pub headroom_permille: u32,
    /// Early warning when `usage >= limit - min(headroom_bytes, limit / 1000 *
    /// headroom_permille)`.
    pub headroom_bytes: u64,
}

/// `CpuWatch::flags`: report `CpuQuotaNear` for this cpu cgroup.
pub const CPU_WATCH_QUOTA: u32 = 1;
/// `CpuWatch::flags`: report `RunqLatency` above `runq_target_ns`.
pub const CPU_WATCH_RUNQ: u32 = 2;

/// Value of the `CPU_WATCHED` map, keyed by the kernfs id (u64) of a cgroup of the cpu
/// controller. The quota and period themselves are read by the programs from the kernel's
/// `task_group.cfs_bandwidth`, so a quota userspace raises is in effect for the programs at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuWatch {
    /// `CPU_WATCH_*` bits.
    pub flags: u32,
    /// `CpuQuotaNear` when the CPU time used within a period reaches this many thousandths
    /// of the quota (e.g. 800).
    pub near_permille: u32,
    /// `RunqLatency` when the cgroup's run-queue latency p99 (in the period so far) exceeds
    /// this (ns); 0: never.
    pub runq_target_ns: u64,
}

/// Buckets of the per-cgroup run-queue latency histogram: bucket 0 counts latencies below
/// 1 µs, bucket `k` those in `[2^(k-1), 2^k)` µs, the last one everything above.
pub const RUNQ_BUCKETS: usize = 32;

/// Per-cgroup CPU state the programs keep (`CPU_STATE`, hash keyed by cpu cgroup kernfs id).
/// Created by the programs when a CPU first meets a watched cgroup's task; read by userspace
/// for histograms and CPU time; removed by userspace when the cgroup is unwatched.
///
/// Quota: the programs read the kernel's own bandwidth pool (`cfs_bandwidth.runtime`, what is
/// left of this period's quota, and `runtime_snap`, what the period started with), so a
/// quota-near report follows the kernel's CFS periods (`cfs_bandwidth.nr_periods`). The
/// run-queue figures use periods aligned on CLOCK_MONOTONIC (`now - now % period`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuState {
    /// Start of the current (monotonic-aligned) period, ns.
    pub period_start_ns: u64,
    /// CPU time drawn from the cgroup's quota pool in the kernel's current period at the
    /// last check (`runtime_snap - runtime`), ns: what the cgroup's CPUs used or hold as local
    /// slices (at most one slice, 5 ms by default, per CPU, more than used).
    pub used_ns: u64,
    /// `cfs_bandwidth.nr_periods + 1` of the last `CpuQuotaNear` sent (one per kernel period
    /// and quota; 0: none yet).
    pub near_sent_period: u64,
    /// Quota (ns) at which that `CpuQuotaNear` was sent: a raised quota re-arms the report
    /// within the same period.
    pub near_sent_quota_ns: u64,
    /// Period start of the last `RunqLatency` sent (one per period).
    pub runq_sent_period_ns: u64,
    /// Run-queue samples in the current period.
    pub runq_samples: u64,
    /// Of which above the target.
    pub runq_over: u64,
    /// Total CPU time of the cgroup's tasks since watched, ns: the kernel's own per-CPU figure
    /// (`task_group.se[cpu]->sum_exec_runtime`), added up by the per-CPU tick (at most one
    /// tick, 2 ms, behind on each CPU).
    pub total_ns: u64,
    /// Cumulative run-queue latency histogram (log2 µs buckets, see [`RUNQ_BUCKETS`]).
    pub runq_hist: [u64; RUNQ_BUCKETS],
}

impl CpuState {
    pub const ZERO: Self = Self {
        period_start_ns: 0,
        used_ns: 0,
        near_sent_period: 0,
        near_sent_quota_ns: 0,
        runq_sent_period_ns: 0,
        runq_samples: 0,
        runq_over: 0,
        total_ns: 0,
        runq_hist: [0; RUNQ_BUCKETS],
    };
}

/// Words (`u64`) of the `CPU_FILTER` bitmap: 65,536 bits.
pub const CPU_FILTER_WORDS: u32 = 1024;

/// Index of the `CPU_FILTER` entry after the bitmap: a generation userspace bumps after every
/// change of the bits, so that the programs' per-CPU memo of the last unwatched task group is
/// dropped when the watched set changes.
pub const CPU_FILTER_GEN: u32 = CPU_FILTER_WORDS;

/// Where a cpu cgroup's kernfs id sits in the `CPU_FILTER` bitmap: `(word, bit mask)`. The
/// scheduler programs test this bit for the task being switched in (an inlined array lookup:
/// the one map lookup an unwatched task pays); only when it is set do they look the id up in
/// `CPU_WATCHED`. Userspace sets the bit of every watched cgroup (ids sharing a bit cost a
/// spare lookup, nothing else).
#[inline(always)]
pub const fn cpu_filter_slot(cgroup_id: u64) -> (u32, u64) {
    (
        ((cgroup_id >> 6) as u32) & (CPU_FILTER_WORDS - 1),
        1u64 << (cgroup_id & 63),
    )
}

/// `SETTINGS` map (array of one): runtime switches userspace may change at any time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Non-zero: report every cgroup, watched or not (`scaler watch` with no --cgroup).
    pub watch_all: u32,
    /// Bumped by userspace whenever `CPU_WATCHED` changes (informational: the scheduler
    /// programs keep no per-task cache any more, they read each task's cpu cgroup live).
    pub cpu_watch_gen: u32,
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
    /// When (CLOCK_MONOTONIC ns) userspace was last woken for reclaim of this cgroup: reclaim
    /// at the same limit wakes it again after [`REWAKE_NS`], so a raise that failed (or a limit
    /// set back behind the agent's back) is retried within the race, not on the next tick.
    pub reclaim_woken_ns: u64,
    /// When the last early warning was sent: a cgroup still (or again) above its early-warning
    /// mark at the same limit is warned again after [`REWARN_NS`], so a raise that failed (a
    /// refused write, and the OOM kill it could not prevent) is retried ahead of reclaim rather
    /// than only within the sub-millisecond race from the first reclaim to the next OOM kill.
    pub warned_ns: u64,
}

/// See [`CgState::warned_ns`]: 100 ms (a cgroup that stays above its mark at a limit that
/// cannot rise costs the consumer ten warnings a second, which the decider coalesces).
pub const REWARN_NS: u64 = 100_000_000;

/// See [`CgState::reclaim_woken_ns`]: 200 µs, well inside the 0.76 ms OOM race and long enough
/// that one storm of reclaim rounds costs a handful of wakeups, not dozens.
pub const REWAKE_NS: u64 = 200_000;

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
    /// Switched-in tasks whose cpu cgroup passed the `CPU_FILTER` bitmap and was looked up in
    /// `CPU_WATCHED` (watched tasks, and unwatched ones sharing a bit with a watched cgroup).
    pub const TASK_RESOLVES: u32 = 7;
    /// Run-queue latency samples of watched cgroups.
    pub const RUNQ_SAMPLES: u32 = 8;
    /// CPU-time updates of watched cgroups (per-CPU ticks that added the kernel's run time).
    pub const CPU_ACCOUNTED: u32 = 9;
    /// Quota-near or run-queue crossings not reported because one was already sent this period.
    pub const CPU_SUPPRESSED: u32 = 10;
    /// Observe-only events (cgroups seen only through `watch_all`, see
    /// [`super::EVENT_FLAG_OBSERVED`]) dropped in the kernel, not submitted: the ring buffer
    /// held [`super::OBSERVE_MAX_PENDING_BYTES`] or more, or the CPU's
    /// [`super::OBSERVE_BUDGET`] for the window was spent.
    pub const OBSERVE_SHED: u32 = 11;
    pub const COUNT: u32 = 12;

    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_dropped",
        "submitted",
        "woken",
        "filtered",
        "read_errors",
        "unmatched_end",
        "usage_checks",
        "task_resolves",
        "runq_samples",
        "cpu_accounted",
        "cpu_suppressed",
        "observe_shed",
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

/// `CpuOffsets::runq_source`: run-queue latency from the kernel's own
/// `task_struct.sched_info.last_queued` (CONFIG_SCHED_INFO), read at switch-in against the run
/// queue's clock: no wakeup program needed.
pub const RUNQ_FROM_SCHED_INFO: u32 = 1;
/// `CpuOffsets::runq_source`: run-queue latency from the `sched_wakeup(_new)` programs'
/// timestamps (kernels without CONFIG_SCHED_INFO).
pub const RUNQ_FROM_WAKEUP: u32 = 2;

/// Offsets and switches of the scheduler programs, from the running kernel's BTF (a separate
/// read-only global from [`KernelOffsets`], which gives the cgroup chain: `cgroup_subsys_state
/// .cgroup`, `cgroup.kn`, `kernfs_node.id`). The hot path follows these with direct (BTF-typed)
/// loads, so they must be exact; the verifier checks each against the kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuOffsets {
    /// `task_struct.sched_task_group` (the task's cpu-controller `task_group`).
    pub task_sched_task_group: u32,
    /// `task_group.css` (the cpu controller's css is embedded in its task_group).
    pub tg_css: u32,
    /// `task_group.cfs_bandwidth`.
    pub tg_cfs_bandwidth: u32,
    /// `cfs_bandwidth.period` (ktime_t, ns).
    pub cfs_b_period: u32,
    /// `cfs_bandwidth.quota` (ns; RUNTIME_INF = u64::MAX when unlimited).
    pub cfs_b_quota: u32,
    /// `cfs_bandwidth.runtime` (ns of this period's quota not yet handed out to CPUs).
    pub cfs_b_runtime: u32,
    /// `cfs_bandwidth.runtime_snap` (the pool at the start of the period; 5.14+), else
    /// `NO_OFFSET` (the quota is used instead).
    pub cfs_b_runtime_snap: u32,
    /// `cfs_bandwidth.nr_periods` (int: periods elapsed, the kernel's period count).
    pub cfs_b_nr_periods: u32,
    /// `task_group.se` (`struct sched_entity **`, one group entity per CPU).
    pub tg_se: u32,
    /// `sched_entity.sum_exec_runtime` (ns the entity ran; for a group entity, its tasks).
    pub se_sum_exec_runtime: u32,
    /// `task_struct.sched_info` + `sched_info.last_queued` (rq clock when the task was last
    /// queued: woken or preempted; 0 once it runs); `NO_OFFSET` without CONFIG_SCHED_INFO.
    pub task_last_queued: u32,
    /// `task_struct.se` + `sched_entity.cfs_rq`.
    pub task_se_cfs_rq: u32,
    /// `cfs_rq.rq`.
    pub cfs_rq_rq: u32,
    /// `rq.clock`.
    pub rq_clock: u32,
    /// Non-zero when `sched_switch` passes `prev_state` (5.18+); else `preempt` is used (only
    /// the [`RUNQ_FROM_WAKEUP`] fallback needs it).
    pub switch_has_prev_state: u32,
    /// [`RUNQ_FROM_SCHED_INFO`], [`RUNQ_FROM_WAKEUP`], or 0 (no run-queue latency).
    pub runq_source: u32,
    pub _pad: u32,
}

impl CpuOffsets {
    pub const ZERO: Self = Self {
        task_sched_task_group: NO_OFFSET,
        tg_css: NO_OFFSET,
        tg_cfs_bandwidth: NO_OFFSET,
        cfs_b_period: NO_OFFSET,
        cfs_b_quota: NO_OFFSET,
        cfs_b_runtime: NO_OFFSET,
        cfs_b_runtime_snap: NO_OFFSET,
        cfs_b_nr_periods: NO_OFFSET,
        tg_se: NO_OFFSET,
        se_sum_exec_runtime: NO_OFFSET,
        task_last_queued: NO_OFFSET,
        task_se_cfs_rq: NO_OFFSET,
        cfs_rq_rq: NO_OFFSET,
        rq_clock: NO_OFFSET,
        switch_has_prev_state: 0,
        runq_source: 0,
        _pad: 0,
    };
}

/// The load-testing event injector (`scaler load-test`): a raw-tracepoint program that is
/// never attached, only run on demand through `BPF_PROG_TEST_RUN` by a separate process that
/// shares a running agent's `EVENTS` ring buffer and `STATS` counters. The agent itself never
/// loads it.
///
/// One run writes `args[0]` (at most [`inject::MAX_BATCH`]) [`EventKind::ReclaimBegin`] events
/// flagged [`EVENT_FLAG_INJECTED`], for the targets in slots `INJECT_TARGETS[args[1]..]` in
/// turn (wrapping at [`inject::MAX_TARGETS`]; userspace fills every slot, repeating its
/// targets; empty slots, `cgroup_id == 0`, are skipped). `args[2]` says which wake the
/// consumer: [`inject::WAKE_EVERY`] each (as the reclaim program does for a cgroup reclaiming
/// at the same limit more than [`REWAKE_NS`] later), [`inject::WAKE_BATCH`] the last of the
/// run (and any once 64 KiB are pending, as for the programs' non-urgent events).
pub mod inject {
    /// The program (fn name).
    pub const PROG_INJECT_EVENTS: &str = "inject_events";
    /// Array of [`InjectTarget`], indexed from 0.
    pub const INJECT_TARGETS: &str = "INJECT_TARGETS";
    /// Per-CPU counters of the injector, indexed by [`SUBMITTED`] and [`DROPPED`].
    pub const INJECT_STATS: &str = "INJECT_STATS";
    /// Most events one run writes.
    pub const MAX_BATCH: u64 = 256;
    /// `args[2]`: every injected event wakes the consumer.
    pub const WAKE_EVERY: u64 = 0;
    /// `args[2]`: the last event of each run wakes the consumer (others on volume).
    pub const WAKE_BATCH: u64 = 1;
    /// Slots of `INJECT_TARGETS` (a power of two), hence the most distinct targets.
    pub const MAX_TARGETS: u32 = super::MAX_WATCHED;
    /// `INJECT_STATS` index: injected events that went into the ring buffer.
    pub const SUBMITTED: u32 = 0;
    /// `INJECT_STATS` index: injected events that did not fit (also counted in the shared
    /// `STATS` as `RINGBUF_DROPPED`, with the real ones).
    pub const DROPPED: u32 = 1;
    /// Entries of `INJECT_STATS`.
    pub const STATS_COUNT: u32 = 2;

    /// One target of the injector: a memory cgroup and the figures its events carry.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct InjectTarget {
        /// Kernfs id of the memory cgroup (`cgroup_id` and `target_id` of its events).
        pub cgroup_id: u64,
        /// `usage` of its events (bytes).
        pub usage: u64,
        /// `limit` of its events (bytes).
        pub limit: u64,
    }

    // SAFETY: #[repr(C)], Copy, integers only, no padding.
    #[cfg(feature = "user")]
    unsafe impl aya::Pod for InjectTarget {}
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, made of integers with no padding.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::CgState {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::CpuOffsets {}
    unsafe impl aya::Pod for super::CpuWatch {}
    unsafe impl aya::Pod for super::CpuState {}
}
