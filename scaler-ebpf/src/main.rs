//! Kernel programs of scaler: memory-pressure events, filtered and coalesced in the kernel.
//!
//! Every program identifies the task's *memory* cgroup by following
//! `task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id` with offsets taken from the running
//! kernel's BTF at load time ([`OFFSETS`]); `bpf_get_current_cgroup_id()` would give the v2 cgroup,
//! which is not the memory cgroup on a v1 or hybrid host. The same chain is right on cgroup v2.
//!
//! The scheduler programs (second half of this file) do the same for the *cpu* controller
//! (`subsys[cpu_cgrp_id]`), keep run-queue latency histograms and CPU time per quota period in
//! the kernel, and report only threshold crossings, at most one per period and cgroup.
//!
//! Wakeups: urgent events (reclaim begin at a limit userspace has not yet been told about, early
//! warnings, OOM kills) wake the consumer at once; everything else is submitted without a wakeup
//! and read on the next wakeup or poll, unless a lot has piled up.
#![no_std]
#![no_main]

/// Load testing only (`scaler load-test`): never loaded by the agent.
mod inject;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, PerfEventContext},
};
use scaler_common::{
    cpu_filter_slot, stat, CgState, CpuOffsets, CpuState, CpuWatch, Event, EventKind,
    KernelOffsets, Settings, WatchConfig, CPU_FILTER_GEN, CPU_FILTER_WORDS, CPU_WATCH_QUOTA,
    CPU_WATCH_RUNQ, EVENT_FLAG_ANCESTOR, EVENT_FLAG_WAKEUP, MAX_ANCESTOR_LEVELS, MAX_TASKS,
    MAX_WATCHED, NO_OFFSET, REWAKE_NS, RING_BUF_BYTES, RUNQ_BUCKETS, RUNQ_FROM_SCHED_INFO,
    RUNQ_FROM_WAKEUP, WATCH_USAGE_HIGH,
};

/// Field offsets from the running kernel's BTF, set by the loader (read-only data).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::ZERO;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

/// Watched cgroups by kernfs id. Unwatched cgroups cost one lookup here.
#[map]
static WATCHED: HashMap<u64, WatchConfig> = HashMap::with_max_entries(MAX_WATCHED, 0);

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Per-cgroup coalescing state (see [`CgState`]).
#[map]
static CG_STATE: LruHashMap<u64, CgState> = LruHashMap::with_max_entries(MAX_WATCHED, 0);

/// Start of a watched reclaim, by thread id, to measure the stall at its end.
#[map]
static RECLAIM_START: LruHashMap<u32, ReclaimStart> = LruHashMap::with_max_entries(16384, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Wake the consumer anyway once this much unread data has piled up.
const WAKE_BYTES: u64 = 64 * 1024;
/// A charge reclaims when `usage + batch > max`; a level within this many pages of its limit is
/// the one that binds (MEMCG_CHARGE_BATCH is 64 pages, plus the allocation's own order).
const BINDING_SLACK_PAGES: u64 = 128;
/// Page counters at or above this many pages are unlimited (PAGE_COUNTER_MAX is ~2^51).
const UNLIMITED_PAGES: u64 = 1 << 50;

#[derive(Clone, Copy)]
#[repr(C)]
struct ReclaimStart {
    ts_ns: u64,
    cgroup_id: u64,
    target_id: u64,
    kind: u32,
    _pad: u32,
}

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a plain read of a global the loader fills before the programs run; volatile so
    // the compiler does not fold the all-NO_OFFSET initial value.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn read<T: Copy>(base: u64, off: u32) -> Result<T, i64> {
    if base == 0 || off == NO_OFFSET {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|e| e as i64)
}

/// `task->cgroups->subsys[subsys_id]`: the task's css of that controller.
#[inline(always)]
fn task_css(task: u64, o: &KernelOffsets, subsys_id: u32) -> Result<u64, i64> {
    let cgroups: u64 = read(task, o.task_cgroups)?;
    if subsys_id == NO_OFFSET {
        return Err(-1);
    }
    read(cgroups, o.css_set_subsys + subsys_id * 8)
}

/// `css->cgroup->kn->id`: the cgroup's kernfs id (its directory's inode number).
#[inline(always)]
fn css_id(css: u64, o: &KernelOffsets) -> Result<u64, i64> {
    let cgrp: u64 = read(css, o.css_cgroup)?;
    let kn: u64 = read(cgrp, o.cgroup_kn)?;
    read(kn, o.kn_id)
}

/// Usage and limit, in pages, of a memory cgroup's `memory` page counter.
#[inline(always)]
fn memcg_usage_max(memcg: u64, o: &KernelOffsets) -> Result<(u64, u64), i64> {
    let pc = memcg + o.memcg_memory as u64;
    let usage: u64 = read(pc, o.pc_usage)?;
    let max: u64 = read(pc, o.pc_max)?;
    Ok((usage, max))
}

#[inline(always)]
fn watched(id: u64) -> Option<WatchConfig> {
    // SAFETY: the value is copied out at once.
    unsafe { WATCHED.get(&id) }.copied()
}

#[inline(always)]
fn settings() -> Settings {
    SETTINGS.get(0).copied().unwrap_or_default()
}

/// What a walk up the memory-cgroup tree found.
#[derive(Clone, Copy, Default)]
struct Chain {
    /// The starting memory cgroup.
    id: u64,
    /// The first level (itself or an ancestor) at its limit; the starting one if none is.
    target_id: u64,
    usage_pages: u64,
    max_pages: u64,
    target_is_ancestor: bool,
    /// Some level up to and including the target is watched.
    watched: bool,
}

/// Walks from a memory cgroup up its page-counter parents, looking for the level whose limit
/// binds and for a watched level.
#[inline(always)]
fn walk(memcg_css: u64, o: &KernelOffsets, watch_all: bool) -> Result<Chain, i64> {
    let mut memcg = memcg_css - o.memcg_css as u64;
    let id = css_id(memcg_css, o)?;
    let (usage, max) = memcg_usage_max(memcg, o)?;
    let mut chain = Chain {
        id,
        target_id: id,
        usage_pages: usage,
        max_pages: max,
        target_is_ancestor: false,
        watched: watch_all || watched(id).is_some(),
    };
    if usage + BINDING_SLACK_PAGES >= max {
        return Ok(chain);
    }
    // If no level is within the slack when we look (other CPUs may have uncharged since the
    // charge failed), the limited level closest to its limit is the one that bound.
    let (mut best_gap, mut best_id, mut best_u, mut best_m, mut best_anc) =
        (u64::MAX, id, usage, max, false);
    if max < UNLIMITED_PAGES && max - usage <= max / 16 {
        best_gap = max - usage;
    }
    for _ in 1..MAX_ANCESTOR_LEVELS {
        let parent_pc: u64 = read(memcg + o.memcg_memory as u64, o.pc_parent)?;
        if parent_pc == 0 {
            break;
        }
        memcg = parent_pc - o.memcg_memory as u64;
        let lid = css_id(memcg + o.memcg_css as u64, o)?;
        let (u, m) = memcg_usage_max(memcg, o)?;
        let w = watched(lid).is_some();
        chain.watched |= w;
        if u + BINDING_SLACK_PAGES >= m {
            chain.target_id = lid;
            chain.usage_pages = u;
            chain.max_pages = m;
            chain.target_is_ancestor = true;
            return Ok(chain);
        }
        if m < UNLIMITED_PAGES && m - u <= m / 16 && m - u < best_gap {
            (best_gap, best_id, best_u, best_m, best_anc) = (m - u, lid, u, m, true);
        }
    }
    if best_gap != u64::MAX {
        chain.target_id = best_id;
        chain.usage_pages = best_u;
        chain.max_pages = best_m;
        chain.target_is_ancestor = best_anc;
    }
    Ok(chain)
}

#[inline(always)]
fn fill_current(ev: &mut Event) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Submits an event; `urgent` ones wake the consumer at once.
#[inline(always)]
fn submit(ev: &Event, urgent: bool) {
    let flags = if urgent || EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let mut ev = *ev;
    if flags == BPF_RB_FORCE_WAKEUP {
        ev.flags |= EVENT_FLAG_WAKEUP;
    }
    match EVENTS.output::<Event>(&ev, flags as u64) {
        Ok(()) => {
            count(stat::SUBMITTED);
            if flags == BPF_RB_FORCE_WAKEUP {
                count(stat::WOKEN);
            }
        }
        Err(_) => count(stat::RINGBUF_DROPPED),
    }
}

/// Pages to bytes, saturating (an unlimited counter holds PAGE_COUNTER_MAX pages). No 128-bit
/// multiply: BPF has none.
#[inline(always)]
fn pages_to_bytes(pages: u64, page_shift: u32) -> u64 {
    if pages > (u64::MAX >> page_shift) {
        u64::MAX
    } else {
        pages << page_shift
    }
}

#[inline(always)]
fn new_event(kind: EventKind, chain: &Chain, page_shift: u32) -> Event {
    Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: chain.id,
        target_id: chain.target_id,
        usage: chain.usage_pages << page_shift,
        limit: pages_to_bytes(chain.max_pages, page_shift),
        value: 0,
        pid: 0,
        tid: 0,
        kind: kind as u32,
        flags: if chain.target_is_ancestor {
            EVENT_FLAG_ANCESTOR
        } else {
            0
        },
        comm: [0; 16],
    }
}

/// The current task's memory-cgroup chain.
#[inline(always)]
fn current_chain(o: &KernelOffsets, watch_all: bool) -> Result<Chain, i64> {
    // SAFETY: the helper returns the current task pointer; it is only ever probe-read.
    let task = unsafe { bpf_get_current_task() };
    let css = task_css(task, o, o.memory_cgrp_id)?;
    walk(css, o, watch_all)
}

#[inline(always)]
fn read_error() -> u32 {
    count(stat::READ_ERRORS);
    0
}

// ---------------------------------------------------------------------------------------------
// vmscan/mm_vmscan_memcg_reclaim_begin: a charge hit a memory cgroup's limit. Fires in the
// context of the charging task.

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_begin")]
pub fn memcg_reclaim_begin(ctx: BtfTracePointContext) -> u32 {
    try_reclaim_begin(&ctx, EventKind::ReclaimBegin).unwrap_or_else(|_| read_error())
}

#[inline(always)]
fn try_reclaim_begin(ctx: &BtfTracePointContext, kind: EventKind) -> Result<u32, i64> {
    let o = offsets();
    let s = settings();
    let chain = current_chain(&o, s.watch_all != 0)?;
    if !chain.watched {
        count(stat::FILTERED);
        return Ok(0);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let tid = bpf_get_current_pid_tgid() as u32;
    let start = ReclaimStart {
        ts_ns: now,
        cgroup_id: chain.id,
        target_id: chain.target_id,
        kind: kind as u32,
        _pad: 0,
    };
    let _ = RECLAIM_START.insert(&tid, &start, 0);
    if kind != EventKind::ReclaimBegin {
        // Global direct reclaim: reported once, at its end, with the stall.
        return Ok(0);
    }
    let mut ev = new_event(kind, &chain, o.page_shift);
    ev.ts_ns = now;
    let order: u32 = ctx.arg(0);
    ev.value = order as u64;
    fill_current(&mut ev);
    // One storm, one wakeup: wake for the first reclaim at this limit, and again only if the
    // limit has not changed REWAKE_NS later (a raise that failed or was undone).
    let limit = ev.limit;
    let urgent = match CG_STATE.get_ptr_mut(&chain.target_id) {
        Some(st) => {
            // SAFETY: a pointer into the map value; racing updates only cost a spare wakeup.
            let st = unsafe { &mut *st };
            let wake = st.reclaim_woken_at_limit != limit
                || now.saturating_sub(st.reclaim_woken_ns) > REWAKE_NS;
            if wake {
                st.reclaim_woken_at_limit = limit;
                st.reclaim_woken_ns = now;
            }
            wake
        }
        None => {
            let st = CgState {
                reclaim_woken_at_limit: limit,
                warned_at_limit: 0,
                reclaim_woken_ns: now,
                warned_ns: 0,
            };
            let _ = CG_STATE.insert(&chain.target_id, &st, 0);
            true
        }
    };
    submit(&ev, urgent);
    Ok(0)
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn memcg_reclaim_end(_ctx: BtfTracePointContext) -> u32 {
    try_reclaim_end().unwrap_or_else(|_| read_error())
}

#[inline(always)]
fn try_reclaim_end() -> Result<u32, i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out at once.
    let Some(start) = (unsafe { RECLAIM_START.get(&tid) }).copied() else {
        // Not a watched reclaim (or its begin was evicted): nothing to report.
        return Ok(0);
    };
    let _ = RECLAIM_START.remove(&tid);
    let now = unsafe { bpf_ktime_get_ns() };
    let o = offsets();
    let kind = if start.kind == EventKind::DirectReclaim as u32 {
        EventKind::DirectReclaim
    } else {
        EventKind::ReclaimEnd
    };
    let chain = Chain {
        id: start.cgroup_id,
        target_id: start.target_id,
        ..Chain::default()
    };
    let mut ev = new_event(kind, &chain, o.page_shift);
    ev.ts_ns = now;
    ev.value = now.saturating_sub(start.ts_ns);
    // The target's usage and limit after the reclaim are not needed by the consumer; the
    // begin event carried them.
    fill_current(&mut ev);
    submit(&ev, false);
    Ok(0)
}

// vmscan/mm_vmscan_direct_reclaim_begin|end: global (node-wide) direct reclaim.
#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_begin")]
pub fn direct_reclaim_begin(ctx: BtfTracePointContext) -> u32 {
    try_reclaim_begin(&ctx, EventKind::DirectReclaim).unwrap_or_else(|_| read_error())
}

#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_end")]
pub fn direct_reclaim_end(_ctx: BtfTracePointContext) -> u32 {
    try_reclaim_end().unwrap_or_else(|_| read_error())
}

// ---------------------------------------------------------------------------------------------
// oom/mark_victim: the OOM killer chose a victim. 6.2+ passes the victim's task_struct; older
// kernels pass its pid (then the victim's memcg is taken to be the invoking task's, which for a
// memcg OOM is the cgroup under OOM or its ancestor).

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> u32 {
    try_mark_victim(&ctx).unwrap_or_else(|_| read_error())
}

#[inline(always)]
fn try_mark_victim(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let o = offsets();
    let s = settings();
    let mut ev;
    if o.mark_victim_has_task != 0 {
        let task: u64 = ctx.arg(0);
        let css = task_css(task, &o, o.memory_cgrp_id)?;
        let chain = walk(css, &o, s.watch_all != 0)?;
        if !chain.watched {
            count(stat::FILTERED);
            return Ok(0);
        }
        ev = new_event(EventKind::OomKill, &chain, o.page_shift);
        let tgid: i32 = read(task, o.task_tgid)?;
        let pid: i32 = read(task, o.task_pid)?;
        ev.pid = tgid as u32;
        ev.tid = pid as u32;
        ev.comm = read(task, o.task_comm).unwrap_or([0u8; 16]);
    } else {
        let pid: u64 = ctx.arg(0);
        let chain = current_chain(&o, s.watch_all != 0)?;
        if !chain.watched {
            count(stat::FILTERED);
            return Ok(0);
        }
        ev = new_event(EventKind::OomKill, &chain, o.page_shift);
        ev.pid = pid as u32;
        ev.tid = pid as u32;
    }
    submit(&ev, true);
    // Rare and off the hot path: also reported through aya-log (forwarded into tracing).
    aya_log_ebpf::info!(
        ctx,
        "oom kill: pid {} in memory cgroup {}",
        ev.pid,
        ev.target_id
    );
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// memcg/count_memcg_events: fires on memcg event accounting, including every page fault
// (PGFAULT). Used for early warnings: a watched cgroup whose usage crossed `limit - headroom`
// is reported once per limit (and again after REWARN_NS if it still is, or is again, at the
// same limit: a raise that failed), so the limit can rise before reclaim starts. Unwatched cgroups
// cost three reads and one lookup.

#[btf_tracepoint(function = "count_memcg_events")]
pub fn count_memcg_events(ctx: BtfTracePointContext) -> u32 {
    try_count_memcg_events(&ctx).unwrap_or_else(|_| read_error())
}

#[inline(always)]
fn try_count_memcg_events(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let memcg: u64 = ctx.arg(0);
    let o = offsets();
    let id = css_id(memcg + o.memcg_css as u64, &o)?;
    let headroom = match watched(id) {
        Some(w) if w.flags & WATCH_USAGE_HIGH != 0 => w.headroom_bytes,
        Some(_) => return Ok(0),
        None => {
            let s = settings();
            if s.watch_all == 0 || s.default_headroom_bytes == 0 {
                return Ok(0);
            }
            s.default_headroom_bytes
        }
    };
    count(stat::USAGE_CHECKS);
    let (usage, max) = memcg_usage_max(memcg, &o)?;
    let usage_b = usage << o.page_shift;
    let max_b = pages_to_bytes(max, o.page_shift);
    if usage_b.saturating_add(headroom) < max_b {
        return Ok(0);
    }
    match CG_STATE.get_ptr_mut(&id) {
        Some(st) => {
            // SAFETY: pointer into the map value.
            let st = unsafe { &mut *st };
            // Once per limit; again at the same limit after REWARN_NS (a raise that failed).
            let now = unsafe { bpf_ktime_get_ns() };
            if st.warned_at_limit == max_b
                && now.saturating_sub(st.warned_ns) <= scaler_common::REWARN_NS
            {
                return Ok(0);
            }
            st.warned_at_limit = max_b;
            st.warned_ns = now;
        }
        None => {
            let st = CgState {
                reclaim_woken_at_limit: 0,
                warned_at_limit: max_b,
                reclaim_woken_ns: 0,
                warned_ns: unsafe { bpf_ktime_get_ns() },
            };
            let _ = CG_STATE.insert(&id, &st, 0);
        }
    }
    let chain = Chain {
        id,
        target_id: id,
        usage_pages: usage,
        max_pages: max,
        target_is_ancestor: false,
        watched: true,
    };
    let mut ev = new_event(EventKind::UsageHigh, &chain, o.page_shift);
    ev.value = headroom;
    fill_current(&mut ev);
    submit(&ev, true);
    Ok(0)
}

// =============================================================================================
// Scheduler programs: CPU time per quota period and run-queue latency, per watched cpu cgroup.
//
// The hot path is `sched_switch`, and what every task of the node pays there is kept to a few
// direct (BTF-typed, fault-tolerant) loads and one inlined array lookup: the task switched in
// has its cpu cgroup's kernfs id read live (`next->sched_task_group->css.cgroup->kn->id`, so a
// task that changes cgroup needs no invalidation) and tested against the `CPU_FILTER` bitmap;
// a per-CPU slot (`CPU_RUNNING`, an inlined per-CPU array lookup) says whether the task being
// switched out is a watched one. No clock read, no hash lookup, no counter update, no
// per-task state for unwatched tasks.
//
// CPU time: the per-CPU slot holds the watched task running on the CPU and since when; its
// run time is charged at switch-out and by `cpu_tick`, a per-CPU perf-event timer program
// (every 2 ms, userspace's CPU_TICK, independent of the switch rate), so a CPU-bound task that
// never switches out is still seen nearing its quota before the kernel throttles it. Charges
// and run-queue samples are batched in the slot and flushed into the cgroup's `CPU_STATE`
// entry by every tick, when the CPU turns to another cgroup, and every FLUSH_NS of run time,
// so switches between tasks of one watched cgroup need no hash lookup either. Where perf
// events are unavailable, `sched_stat_runtime` does the ticking instead (it fires at every
// update_curr, which costs the whole node one more program run per switch and tick).
//
// Run-queue latency (wakeup or preemption to running): at switch-in of a watched task, the
// run queue's clock minus the kernel's own `next->sched_info.last_queued` (CONFIG_SCHED_INFO;
// the same figure the kernel adds to run_delay just after the tracepoint). Without
// CONFIG_SCHED_INFO the `sched_wakeup(_new)` programs record wakeup times of watched tasks.
//
// Nothing is submitted per scheduler event: quota-near and run-queue-latency crossings are
// reported at most once per (monotonic-aligned) period and cgroup, so the consumer's own
// wakeups cannot feed back.

/// Scheduler offsets and switches from BTF, set by the loader (read-only data).
#[unsafe(no_mangle)]
static CPU_OFFSETS: CpuOffsets = CpuOffsets::ZERO;

/// Watched cpu cgroups by kernfs id.
#[map]
static CPU_WATCHED: HashMap<u64, CpuWatch> = HashMap::with_max_entries(MAX_WATCHED, 0);

/// Bitmap of watched cpu cgroup ids (see [`cpu_filter_slot`]), kept by userspace.
#[map]
static CPU_FILTER: Array<u64> = Array::with_max_entries(CPU_FILTER_WORDS + 1, 0);

/// Per watched cpu cgroup: period accounting and histogram.
#[map]
static CPU_STATE: HashMap<u64, CpuState> = HashMap::with_max_entries(MAX_WATCHED, 0);

/// Per CPU: the watched task running there, if any.
#[map]
static CPU_RUNNING: PerCpuArray<Running> = PerCpuArray::with_max_entries(1, 0);

/// Wakeup times of watched tasks by task_struct address (only for [`RUNQ_FROM_WAKEUP`]).
#[map]
static TASK_WAKEUP: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_TASKS, 0);

/// Initial value of a `CPU_STATE` entry (inserted from here: too big for the BPF stack twice).
static CPU_STATE_ZERO: CpuState = CpuState::ZERO;

/// Period used when the kernel reports none (should not happen): the CFS default, 100 ms.
const DEFAULT_PERIOD_NS: u64 = 100_000_000;

/// The watched task running on a CPU (`cgroup_id == 0`: none), charged up to `since_ns`, and
/// what it has used and waited since the last flush into its cgroup's `CPU_STATE` entry:
/// charges and run-queue samples are batched per CPU and flushed by every tick, when the CPU
/// turns to another cgroup's (or an unwatched) task, and when `FLUSH_NS` of run time are
/// pending, so that a switch between two tasks of one watched cgroup needs no hash lookup.
#[repr(C)]
struct Running {
    /// `task_struct *` of the task.
    task: u64,
    /// Kernfs id of its (watched) cpu cgroup; 0 if the running task is not watched.
    cgroup_id: u64,
    /// Its `task_group *` (for the quota and period).
    tg: u64,
    /// Run time up to here is charged.
    since_ns: u64,
    /// The cgroup's settings when the slot was filled (refreshed by every tick).
    watch: CpuWatch,
    /// Run time charged, not yet flushed.
    pend_ns: u64,
    /// Run-queue samples not yet flushed, of which above the cgroup's target.
    pend_samples: u64,
    pend_over: u64,
    /// The largest of them, and the task that waited it.
    pend_max_lat: u64,
    pend_max_task: u64,
    /// Their histogram.
    pend_hist: [u64; RUNQ_BUCKETS],
    /// The last task group found unwatched on this CPU, and the filter generation then: a
    /// switch to a task of that group, from an unwatched one, costs two loads and returns.
    unwatched_tg: u64,
    unwatched_gen: u64,
}

/// Pending run time that forces a flush at switch time (between ticks).
const FLUSH_NS: u64 = 500_000;

/// One field of [`CPU_OFFSETS`] (the hot paths read single fields, not the whole struct;
/// from a frozen read-only map, the verifier knows each value as a constant).
macro_rules! cpu_offset {
    ($field:ident) => {
        // SAFETY: a plain read of a field of a global the loader fills before the programs run.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CPU_OFFSETS.$field)) }
    };
}

/// One field of [`OFFSETS`], likewise.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: as for cpu_offset!.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(OFFSETS.$field)) }
    };
}

/// A direct load of `*(base + off)` where `base` is a BTF-typed kernel pointer (a `tp_btf`
/// argument, or a pointer loaded this way) and `off` a constant from the read-only offsets:
/// the verifier checks the access against the kernel's BTF and the JIT makes it a plain load
/// that reads 0 instead of faulting on a bad address. Far cheaper than bpf_probe_read_kernel.
#[inline(always)]
fn kload(base: u64, off: u32) -> u64 {
    // SAFETY: see above; the kernel guards the access.
    unsafe { core::ptr::read_volatile((base + off as u64) as *const u64) }
}

/// Kernfs id of the cpu cgroup of `task` (a BTF-typed `task_struct *`), by direct loads;
/// 0 if unreadable (e.g. an autogroup's task group, which has no cgroup).
#[inline(always)]
fn task_cpu_cgroup(task: u64) -> (u64, u64) {
    let tg = kload(task, cpu_offset!(task_sched_task_group));
    (tg_cgroup_id(tg), tg)
}

/// Kernfs id of a BTF-typed `task_group *`'s cgroup (`tg->css.cgroup->kn->id`), 0 if none.
#[inline(always)]
fn tg_cgroup_id(tg: u64) -> u64 {
    let cgrp = kload(tg, cpu_offset!(tg_css) + offset!(css_cgroup));
    let kn = kload(cgrp, offset!(cgroup_kn));
    kload(kn, offset!(kn_id))
}

/// The filter's generation (bumped by userspace after every change of its bits).
#[inline(always)]
fn filter_gen() -> u64 {
    CPU_FILTER.get(CPU_FILTER_GEN).map_or(0, |v| *v)
}

/// Whether `id` may be watched: its bit in `CPU_FILTER` (an inlined array lookup).
#[inline(always)]
fn maybe_watched(id: u64) -> bool {
    let (word, mask) = cpu_filter_slot(id);
    CPU_FILTER.get(word).is_some_and(|w| *w & mask != 0)
}

/// Adds to a counter shared by CPUs. Rust's core has no atomic read-modify-write for the BPF
/// target, so this is a plain load and store: two CPUs charging the same cgroup at the same
/// instant may lose one of the two deltas (an undercount of at most one tick's run time, which
/// delays a quota-near report by at most one tick).
#[inline(always)]
fn shared_add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value, 8-byte aligned.
    unsafe { core::ptr::write_volatile(p, core::ptr::read_volatile(p).wrapping_add(v)) };
}

/// The cgroup's state, created on first use (only after `CPU_WATCHED` said it is watched).
#[inline(always)]
fn cpu_state_or_insert(id: u64) -> Result<*mut CpuState, i64> {
    if let Some(p) = CPU_STATE.get_ptr_mut(&id) {
        return Ok(p);
    }
    // BPF_NOEXIST: another CPU may have created it meanwhile; either way it exists after.
    let _ = CPU_STATE.insert(&id, &CPU_STATE_ZERO, BPF_NOEXIST as u64);
    CPU_STATE.get_ptr_mut(&id).ok_or(-1)
}

/// `(quota_ns, period_ns)` from a `task_group *` read with bpf_probe_read_kernel (it came out
/// of a map, so it is no longer BTF-typed); quota `u64::MAX` is unlimited.
#[inline(always)]
fn bandwidth_probe(tg: u64) -> Result<(u64, u64), i64> {
    let cfs_b = tg + cpu_offset!(tg_cfs_bandwidth) as u64;
    let period: u64 = read(cfs_b, cpu_offset!(cfs_b_period))?;
    let quota: u64 = read(cfs_b, cpu_offset!(cfs_b_quota))?;
    Ok((quota, period))
}

/// `(quota_ns, period_ns)` of a BTF-typed `task_struct *`'s task group, by direct loads.
#[inline(always)]
fn bandwidth_direct(task: u64) -> (u64, u64) {
    let tg = kload(task, cpu_offset!(task_sched_task_group));
    let q = kload(tg, cpu_offset!(tg_cfs_bandwidth) + cpu_offset!(cfs_b_quota));
    let p = kload(
        tg,
        cpu_offset!(tg_cfs_bandwidth) + cpu_offset!(cfs_b_period),
    );
    (q, p)
}

/// Rolls the cgroup's period window forward if `now` is past it; returns the period start.
#[inline(always)]
fn roll_period(st: &mut CpuState, now: u64, period: u64) -> u64 {
    // Still in the window (the common case): no division.
    let cur = st.period_start_ns;
    if now >= cur && now - cur < period {
        return cur;
    }
    // checked: LLVM does not always carry the callers' non-zero guard here.
    let start = now - now.checked_rem(period).unwrap_or(0);
    if st.period_start_ns != start {
        st.period_start_ns = start;
        st.used_ns = 0;
        st.runq_samples = 0;
        st.runq_over = 0;
    }
    start
}

/// Charges the run time of the slot's task up to `now` (batched in the slot).
#[inline(always)]
fn charge(run: &mut Running, now: u64) {
    run.pend_ns += now.saturating_sub(run.since_ns);
    run.since_ns = now;
}

/// Flushes the slot's pending figures into its cgroup's state and reports the crossings:
/// quota-near once per period and quota, naming the task charged (not always `current`);
/// run-queue latency once per period when more than 1% of the period's samples exceeded the
/// target, naming the task that waited longest in the batch. `quota`/`period` are the
/// cgroup's. The slot's cgroup must be the one the figures belong to.
#[inline(always)]
fn flush(run: &mut Running, quota: u64, period: u64, now: u64) {
    let id = run.cgroup_id;
    let (pend_ns, samples_new) = (run.pend_ns, run.pend_samples);
    if pend_ns == 0 && samples_new == 0 {
        return;
    }
    run.pend_ns = 0;
    run.pend_samples = 0;
    // No state: the cgroup was unwatched meanwhile (never created from here).
    let Some(st) = CPU_STATE.get_ptr_mut(&id) else {
        clear_pending_runq(run);
        return;
    };
    // SAFETY: pointer into the map value; concurrent updates from other CPUs are plain adds
    // (see shared_add) or idempotent stores.
    let st = unsafe { &mut *st };
    let w = run.watch;
    let period = if period == 0 || period > i64::MAX as u64 {
        DEFAULT_PERIOD_NS
    } else {
        period
    };
    let start = roll_period(st, now, period);
    if pend_ns != 0 {
        count(stat::CPU_ACCOUNTED);
        shared_add(&mut st.used_ns, pend_ns);
        shared_add(&mut st.total_ns, pend_ns);
        quota_check(st, run.task, id, w, quota, period, start, now);
    }
    if samples_new != 0 {
        runq_flush(st, run, id, w, start, now);
    }
}

/// Empties the slot and its pending figures (invariant: an empty slot has none pending).
#[inline(always)]
fn drop_slot(run: &mut Running) {
    run.cgroup_id = 0;
    run.pend_ns = 0;
    run.pend_samples = 0;
    clear_pending_runq(run);
}

#[inline(always)]
fn clear_pending_runq(run: &mut Running) {
    run.pend_over = 0;
    run.pend_max_lat = 0;
    for b in 0..RUNQ_BUCKETS {
        run.pend_hist[b] = 0;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn quota_check(
    st: &mut CpuState,
    task: u64,
    id: u64,
    w: CpuWatch,
    quota: u64,
    period: u64,
    start: u64,
    now: u64,
) {
    if w.flags & CPU_WATCH_QUOTA == 0 || quota == u64::MAX || quota == 0 {
        return;
    }
    // SAFETY: pointer into the map value; re-read after the add.
    let used = unsafe { core::ptr::read_volatile(&st.used_ns) };
    let mark = quota / 1000 * w.near_permille as u64;
    if used < mark {
        return;
    }
    if st.near_sent_period_ns == start && st.near_sent_quota_ns == quota {
        count(stat::CPU_SUPPRESSED);
        return;
    }
    st.near_sent_period_ns = start;
    st.near_sent_quota_ns = quota;
    let mut ev = Event {
        ts_ns: now,
        cgroup_id: id,
        target_id: id,
        usage: used,
        limit: quota,
        value: period,
        pid: 0,
        tid: 0,
        kind: EventKind::CpuQuotaNear as u32,
        flags: 0,
        comm: [0; 16],
    };
    fill_task(&mut ev, task);
    submit(&ev, true);
}

/// The pid, tid and comm of `task` (not necessarily `current`) into `ev`; off the hot path.
#[inline(always)]
fn fill_task(ev: &mut Event, task: u64) {
    let tgid: i32 = read(task, offset!(task_tgid)).unwrap_or(0);
    let pid: i32 = read(task, offset!(task_pid)).unwrap_or(0);
    ev.pid = tgid as u32;
    ev.tid = pid as u32;
    ev.comm = read(task, offset!(task_comm)).unwrap_or([0u8; 16]);
}

/// log2 bucket of a latency (see `RUNQ_BUCKETS`).
#[inline(always)]
fn runq_bucket(lat_ns: u64) -> usize {
    let us = lat_ns / 1000;
    let b = (64 - us.leading_zeros()) as usize;
    if b >= RUNQ_BUCKETS {
        RUNQ_BUCKETS - 1
    } else {
        b
    }
}

/// Records a run-queue latency sample of `task` (being switched in) in the slot's batch.
#[inline(always)]
fn runq_record(run: &mut Running, lat: u64, task: u64) {
    let b = runq_bucket(lat);
    run.pend_hist[b] += 1;
    run.pend_samples += 1;
    if run.watch.runq_target_ns != 0 && lat > run.watch.runq_target_ns {
        run.pend_over += 1;
    }
    if lat > run.pend_max_lat {
        run.pend_max_lat = lat;
        run.pend_max_task = task;
    }
}

/// Adds the slot's run-queue batch to the cgroup's state (`samples` of them) and reports a
/// crossing of the target.
#[inline(always)]
fn runq_flush(st: &mut CpuState, run: &mut Running, id: u64, w: CpuWatch, start: u64, now: u64) {
    // The caller zeroed pend_samples; the histogram holds the same count.
    let mut samples_new = 0;
    for b in 0..RUNQ_BUCKETS {
        let v = run.pend_hist[b];
        if v != 0 {
            shared_add(&mut st.runq_hist[b], v);
            samples_new += v;
            run.pend_hist[b] = 0;
        }
    }
    let (over_new, max_lat, max_task) = (run.pend_over, run.pend_max_lat, run.pend_max_task);
    run.pend_over = 0;
    run.pend_max_lat = 0;
    for _ in 0..1 {
        // (a block to leave early from)
        if samples_new == 0 {
            break;
        }
        count(stat::RUNQ_SAMPLES);
        if w.flags & CPU_WATCH_RUNQ == 0 || w.runq_target_ns == 0 {
            break;
        }
        shared_add(&mut st.runq_samples, samples_new);
        if over_new == 0 {
            break;
        }
        shared_add(&mut st.runq_over, over_new);
        // SAFETY: pointers into the map value.
        let (samples, over) = unsafe {
            (
                core::ptr::read_volatile(&st.runq_samples),
                core::ptr::read_volatile(&st.runq_over),
            )
        };
        // p99 of the period so far above the target: more than 1% of its samples are.
        if over * 100 < samples {
            break;
        }
        if st.runq_sent_period_ns == start {
            count(stat::CPU_SUPPRESSED);
            break;
        }
        st.runq_sent_period_ns = start;
        let mut ev = Event {
            ts_ns: now,
            cgroup_id: id,
            target_id: id,
            usage: samples,
            limit: w.runq_target_ns,
            value: max_lat,
            pid: 0,
            tid: 0,
            kind: EventKind::RunqLatency as u32,
            flags: 0,
            comm: [0; 16],
        };
        fill_task(&mut ev, max_task);
        submit(&ev, true);
    }
}

// sched/sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next
// [, unsigned int prev_state (5.18+)]): runs in the context of `prev`, with interrupts off.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    try_sched_switch(&ctx).unwrap_or_else(|_| read_error())
}

#[inline(always)]
fn try_sched_switch(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let Some(run) = CPU_RUNNING.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile (interrupts are off).
    let run = unsafe { &mut *run };
    let next: u64 = ctx.arg(2);
    let tg = kload(next, cpu_offset!(task_sched_task_group));
    let gen = filter_gen();
    if run.cgroup_id == 0 && tg == run.unwatched_tg && gen == run.unwatched_gen {
        // The commonest case on a node: from an unwatched task to one of a task group last
        // found unwatched here, with the watched set unchanged since.
        return Ok(0);
    }
    // Next is in the slot's (watched) cgroup: no need to read its id.
    let same = run.cgroup_id != 0 && tg == run.tg;
    let id = if same {
        run.cgroup_id
    } else {
        tg_cgroup_id(tg)
    };
    let mut now = 0;
    if run.cgroup_id != 0 {
        let prev: u64 = ctx.arg(1);
        now = unsafe { bpf_ktime_get_ns() };
        if run.task == prev {
            charge(run, now);
            if cpu_offset!(runq_source) == RUNQ_FROM_WAKEUP && still_runnable(ctx) {
                // Preempted (or yielded): its wait starts now.
                let _ = TASK_WAKEUP.insert(&prev, &now, 0);
            }
            // Flush when the CPU turns to another cgroup, or enough is pending.
            if id != run.cgroup_id || run.pend_ns >= FLUSH_NS {
                let (quota, period) = bandwidth_direct(prev);
                flush(run, quota, period, now);
            }
        } else {
            // A stale slot (should not happen: every switch passes here): drop it.
            drop_slot(run);
        }
        if id != run.cgroup_id {
            run.cgroup_id = 0;
        }
    }
    if !same && !maybe_watched(id) {
        if run.cgroup_id != 0 {
            // (Only if the cgroup was unwatched meanwhile: its pending figures are dropped.)
            drop_slot(run);
        }
        run.unwatched_tg = tg;
        run.unwatched_gen = gen;
        return Ok(0);
    }
    switch_in(run, next, id, tg, now, gen)
}

/// Whether `prev` stays runnable (preempted, or switched out in TASK_RUNNING).
#[inline(always)]
fn still_runnable(ctx: &BtfTracePointContext) -> bool {
    let preempt: u64 = ctx.arg(0);
    preempt as u8 != 0
        || (cpu_offset!(switch_has_prev_state) != 0 && {
            let state: u64 = ctx.arg(3);
            state as u32 == 0
        })
}

/// A task whose cgroup passed the filter is switched in: fill the slot if it is watched, and
/// take its run-queue latency. If the slot still holds `id` (the task switched out was of the
/// same cgroup), the cgroup is watched with the slot's settings and nothing is looked up.
#[inline(always)]
fn switch_in(
    run: &mut Running,
    next: u64,
    id: u64,
    tg: u64,
    now: u64,
    gen: u64,
) -> Result<u32, i64> {
    if run.cgroup_id != id {
        count(stat::TASK_RESOLVES);
        // SAFETY: copied out at once.
        let Some(w) = (unsafe { CPU_WATCHED.get(&id) }).copied() else {
            // Its filter bit is another cgroup's.
            run.cgroup_id = 0;
            run.unwatched_tg = tg;
            run.unwatched_gen = gen;
            return Ok(0);
        };
        cpu_state_or_insert(id)?;
        run.watch = w;
        run.tg = tg;
        run.cgroup_id = id;
    }
    let now = if now == 0 {
        unsafe { bpf_ktime_get_ns() }
    } else {
        now
    };
    run.task = next;
    run.since_ns = now;
    let src = cpu_offset!(runq_source);
    let lat = if src == RUNQ_FROM_SCHED_INFO {
        let queued = kload(next, cpu_offset!(task_last_queued));
        if queued == 0 {
            return Ok(0);
        }
        // The run queue's clock, updated by __schedule() just before: the clock of
        // last_queued (sched_clock based, not CLOCK_MONOTONIC).
        let cfs_rq = kload(next, cpu_offset!(task_se_cfs_rq));
        let rq = kload(cfs_rq, cpu_offset!(cfs_rq_rq));
        let clock = kload(rq, cpu_offset!(rq_clock));
        if clock == 0 {
            return Ok(0);
        }
        clock.saturating_sub(queued)
    } else if src == RUNQ_FROM_WAKEUP {
        // SAFETY: copied out at once.
        let Some(woken) = (unsafe { TASK_WAKEUP.get(&next) }).copied() else {
            return Ok(0);
        };
        let _ = TASK_WAKEUP.remove(&next);
        now.saturating_sub(woken)
    } else {
        return Ok(0);
    };
    runq_record(run, lat, next);
    Ok(0)
}

/// Charges and flushes the running watched task (if any), and rediscovers the running task
/// when the slot does not hold it (programs just attached, or the cgroup just watched): the
/// periodic part of CPU-time accounting. `task` is `current` (read with
/// bpf_probe_read_kernel: not BTF-typed here).
#[inline(always)]
fn tick(task: u64) -> Result<u32, i64> {
    let Some(run) = CPU_RUNNING.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: this CPU's slot; the scheduler programs run with interrupts off, so they do not
    // interleave with this one on this CPU.
    let run = unsafe { &mut *run };
    let now = unsafe { bpf_ktime_get_ns() };
    if run.cgroup_id != 0 && run.task == task {
        // Settings may have changed, or the cgroup been unwatched, since the slot was filled.
        // SAFETY: copied out at once.
        match unsafe { CPU_WATCHED.get(&run.cgroup_id) }.copied() {
            Some(w) => run.watch = w,
            None => {
                drop_slot(run);
                return Ok(0);
            }
        }
        charge(run, now);
        let (quota, period) = bandwidth_probe(run.tg)?;
        flush(run, quota, period, now);
        return Ok(0);
    }
    drop_slot(run);
    let tg: u64 = read(task, cpu_offset!(task_sched_task_group))?;
    let css = tg + cpu_offset!(tg_css) as u64;
    let Ok(id) = css_id(css, &offsets()) else {
        return Ok(0);
    };
    if !maybe_watched(id) {
        return Ok(0);
    }
    // SAFETY: copied out at once.
    let Some(w) = (unsafe { CPU_WATCHED.get(&id) }).copied() else {
        return Ok(0);
    };
    cpu_state_or_insert(id)?;
    run.task = task;
    run.tg = tg;
    run.since_ns = now;
    run.watch = w;
    run.cgroup_id = id;
    Ok(0)
}

/// Per-CPU timer (perf event, software cpu-clock) every TICK_NS: see [`tick`].
#[perf_event]
pub fn cpu_tick(_ctx: PerfEventContext) -> u32 {
    // SAFETY: the current task pointer; only ever probe-read.
    let task = unsafe { bpf_get_current_task() };
    tick(task).unwrap_or_else(|_| read_error())
}

// sched/sched_stat_runtime(struct task_struct *curr, u64 runtime[, u64 vruntime (< 6.8)]):
// update_curr() charged run time to `curr`. Attached only where `cpu_tick` cannot be.
#[btf_tracepoint(function = "sched_stat_runtime")]
pub fn sched_stat_runtime(_ctx: BtfTracePointContext) -> u32 {
    // SAFETY: as in cpu_tick. update_curr() also runs for remote run queues, where `curr` is
    // not `current`; the tick only charges the slot of this CPU's running task.
    let task = unsafe { bpf_get_current_task() };
    tick(task).unwrap_or_else(|_| read_error())
}

// sched/sched_switch, doing nothing: never attached by the agent, only by `scaler overhead`
// to measure what any program on this tracepoint costs (the kernel's dispatch), the floor
// under `sched_switch`'s own figures.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_floor(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// The wakeup fallback ([`RUNQ_FROM_WAKEUP`]): records when a watched task became runnable.
#[inline(always)]
fn try_wakeup(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    if cpu_offset!(runq_source) != RUNQ_FROM_WAKEUP {
        return Ok(0);
    }
    let task: u64 = ctx.arg(0);
    let (id, _) = task_cpu_cgroup(task);
    if !maybe_watched(id) {
        return Ok(0);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = TASK_WAKEUP.insert(&task, &now, 0);
    Ok(0)
}

// sched/sched_wakeup(struct task_struct *p): p became runnable. Only attached without
// CONFIG_SCHED_INFO.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    try_wakeup(&ctx).unwrap_or_else(|_| read_error())
}

// sched/sched_wakeup_new(struct task_struct *p): a new task became runnable (its address may
// be an exited task's: the insert overwrites any stale entry).
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    try_wakeup(&ctx).unwrap_or_else(|_| read_error())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
