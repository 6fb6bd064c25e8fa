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
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use scaler_common::{
    stat, CgState, CpuOffsets, CpuState, CpuWatch, Event, EventKind, KernelOffsets, Settings,
    TaskCpu, WatchConfig, CPU_WATCH_QUOTA, CPU_WATCH_RUNQ, EVENT_FLAG_ANCESTOR, EVENT_FLAG_WAKEUP,
    MAX_ANCESTOR_LEVELS, MAX_TASKS, MAX_WATCHED, NO_OFFSET, REWAKE_NS, RING_BUF_BYTES,
    RUNQ_BUCKETS, WATCH_USAGE_HIGH,
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
// is reported once per limit, so the limit can rise before reclaim starts. Unwatched cgroups
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
            if st.warned_at_limit == max_b {
                return Ok(0);
            }
            st.warned_at_limit = max_b;
        }
        None => {
            let st = CgState {
                reclaim_woken_at_limit: 0,
                warned_at_limit: max_b,
                reclaim_woken_ns: 0,
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
// Every program pays one `TASKS` lookup per task involved (keyed by the task_struct address, no
// kernel reads); only a task without a valid entry (new, evicted, moved to another cgroup, or
// made under an older watch generation) has its cpu cgroup read (five reads) and looked up in
// `CPU_WATCHED`, and gets an entry (a negative one if unwatched). Nothing is submitted per
// scheduler event: quota-near and run-queue-latency crossings are reported at most once per
// (monotonic-aligned) period and cgroup, so the consumer's own wakeups cannot feed back.
//
// Run time comes from `sched_stat_runtime` (fired by update_curr at every tick and switch, with
// the delta the kernel charges against the cgroup's CFS bandwidth), so a CPU-bound task is
// seen approaching its quota while it runs; if that tracepoint is missing, `sched_switch`
// accounts each slice at switch-out. Run-queue latency is wakeup (or preemption: the task stays
// runnable) to switch-in, including time spent throttled.

/// Scheduler offsets and switches from BTF, set by the loader (read-only data).
#[unsafe(no_mangle)]
static CPU_OFFSETS: CpuOffsets = CpuOffsets::ZERO;

/// Watched cpu cgroups by kernfs id.
#[map]
static CPU_WATCHED: HashMap<u64, CpuWatch> = HashMap::with_max_entries(MAX_WATCHED, 0);

/// Per watched cpu cgroup: period accounting and histogram.
#[map]
static CPU_STATE: HashMap<u64, CpuState> = HashMap::with_max_entries(MAX_WATCHED, 0);

/// Per task (by task_struct address): watched cgroup or not, wakeup and switch-in times.
#[map]
static TASKS: LruHashMap<u64, TaskCpu> = LruHashMap::with_max_entries(MAX_TASKS, 0);

/// Initial value of a `CPU_STATE` entry (inserted from here: too big for the BPF stack twice).
static CPU_STATE_ZERO: CpuState = CpuState::ZERO;

/// Period used when the kernel reports none (should not happen): the CFS default, 100 ms.
const DEFAULT_PERIOD_NS: u64 = 100_000_000;

/// One field of [`CPU_OFFSETS`] (the hot paths read single fields, not the whole struct).
macro_rules! cpu_offset {
    ($field:ident) => {
        // SAFETY: a plain read of a field of a global the loader fills before the programs run.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CPU_OFFSETS.$field)) }
    };
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

/// The task's `TASKS` entry, made (after reading its cpu cgroup) if missing or stale.
#[inline(always)]
fn task_entry(task: u64, gen: u32) -> Result<*mut TaskCpu, i64> {
    if let Some(p) = TASKS.get_ptr_mut(&task) {
        // SAFETY: pointer into the map value.
        if unsafe { (*p).gen } == gen {
            return Ok(p);
        }
    }
    count(stat::TASK_RESOLVES);
    // The offsets are copied only here, off the common (cached) path.
    let o = offsets();
    let css = task_css(task, &o, o.cpu_cgrp_id)?;
    let id = css_id(css, &o)?;
    // SAFETY: copied out at once.
    let watch = unsafe { CPU_WATCHED.get(&id) }.copied();
    let v = TaskCpu {
        cgroup_id: if watch.is_some() { id } else { 0 },
        css,
        wakeup_ns: 0,
        oncpu_ns: 0,
        gen,
        _pad: 0,
        watch: watch.unwrap_or_default(),
    };
    TASKS.insert(&task, &v, 0)?;
    TASKS.get_ptr_mut(&task).ok_or(-1)
}

#[inline(always)]
fn cpu_watch_gen() -> u32 {
    SETTINGS.get(0).map_or(0, |s| s.cpu_watch_gen)
}

/// The cgroup's state, created on first use.
#[inline(always)]
fn cpu_state(id: u64) -> Result<*mut CpuState, i64> {
    if let Some(p) = CPU_STATE.get_ptr_mut(&id) {
        return Ok(p);
    }
    // BPF_NOEXIST: another CPU may have created it meanwhile; either way it exists after.
    let _ = CPU_STATE.insert(&id, &CPU_STATE_ZERO, BPF_NOEXIST as u64);
    CPU_STATE.get_ptr_mut(&id).ok_or(-1)
}

/// `(quota_ns, period_ns)` of the cpu cgroup whose css this is (`task_group.cfs_bandwidth`);
/// quota `u64::MAX` is unlimited.
#[inline(always)]
fn bandwidth(css: u64, want_quota: bool) -> Result<(u64, u64), i64> {
    let (tg_css, tg_cfs_b) = (cpu_offset!(tg_css), cpu_offset!(tg_cfs_bandwidth));
    if tg_css == NO_OFFSET || tg_cfs_b == NO_OFFSET {
        return Err(-1);
    }
    let cfs_b = css - tg_css as u64 + tg_cfs_b as u64;
    let period: u64 = read(cfs_b, cpu_offset!(cfs_b_period))?;
    let quota: u64 = if want_quota {
        read(cfs_b, cpu_offset!(cfs_b_quota))?
    } else {
        u64::MAX
    };
    Ok((
        quota,
        if period == 0 {
            DEFAULT_PERIOD_NS
        } else {
            period
        },
    ))
}

/// Rolls the cgroup's period window forward if `now` is past it; returns the period start.
#[inline(always)]
fn roll_period(st: &mut CpuState, now: u64, period: u64) -> u64 {
    let start = now - now % period;
    if st.period_start_ns != start {
        st.period_start_ns = start;
        st.used_ns = 0;
        st.runq_samples = 0;
        st.runq_over = 0;
    }
    start
}

/// Charges `delta` ns of run time to the task's watched cpu cgroup; reports the quota-near crossing once per
/// period and quota, naming `task` (the task charged).
#[inline(always)]
fn account(t: &TaskCpu, task: u64, delta: u64, now: u64) -> Result<(), i64> {
    count(stat::CPU_ACCOUNTED);
    let (id, w) = (t.cgroup_id, t.watch);
    let (quota, period) = bandwidth(t.css, true)?;
    // SAFETY: pointer into the map value; concurrent updates from other CPUs are atomic adds
    // or idempotent stores.
    let st = unsafe { &mut *cpu_state(id)? };
    let start = roll_period(st, now, period);
    shared_add(&mut st.used_ns, delta);
    shared_add(&mut st.total_ns, delta);
    if w.flags & CPU_WATCH_QUOTA == 0 || quota == u64::MAX || quota == 0 {
        return Ok(());
    }
    // SAFETY: as above; re-read after the atomic add.
    let used = unsafe { core::ptr::read_volatile(&st.used_ns) };
    let mark = quota / 1000 * w.near_permille as u64;
    if used < mark {
        return Ok(());
    }
    if st.near_sent_period_ns == start && st.near_sent_quota_ns == quota {
        count(stat::CPU_SUPPRESSED);
        return Ok(());
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
    // The task charged, which is not always `current`: update_curr() also runs on a remote
    // run queue (wakeups, load balancing).
    fill_task(&mut ev, task);
    submit(&ev, true);
    Ok(())
}

/// The pid, tid and comm of `task` (not necessarily `current`) into `ev`; off the hot path.
#[inline(always)]
fn fill_task(ev: &mut Event, task: u64) {
    let o = offsets();
    let tgid: i32 = read(task, o.task_tgid).unwrap_or(0);
    let pid: i32 = read(task, o.task_pid).unwrap_or(0);
    ev.pid = tgid as u32;
    ev.tid = pid as u32;
    ev.comm = read(task, o.task_comm).unwrap_or([0u8; 16]);
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

/// Records a run-queue latency sample of `task` (being switched in) in cpu cgroup `id`.
#[inline(always)]
fn runq_sample(t: &TaskCpu, lat: u64, now: u64, task: u64) -> Result<(), i64> {
    count(stat::RUNQ_SAMPLES);
    let (id, w) = (t.cgroup_id, t.watch);
    // SAFETY: pointer into the map value.
    let st = unsafe { &mut *cpu_state(id)? };
    let b = runq_bucket(lat);
    shared_add(&mut st.runq_hist[b], 1);
    if w.flags & CPU_WATCH_RUNQ == 0 || w.runq_target_ns == 0 {
        return Ok(());
    }
    let (_, period) = bandwidth(t.css, false)?;
    let start = roll_period(st, now, period);
    shared_add(&mut st.runq_samples, 1);
    if lat <= w.runq_target_ns {
        return Ok(());
    }
    shared_add(&mut st.runq_over, 1);
    // SAFETY: as above.
    let (samples, over) = unsafe {
        (
            core::ptr::read_volatile(&st.runq_samples),
            core::ptr::read_volatile(&st.runq_over),
        )
    };
    // p99 of the period so far above the target: more than 1% of its samples are.
    if over * 100 < samples {
        return Ok(());
    }
    if st.runq_sent_period_ns == start {
        count(stat::CPU_SUPPRESSED);
        return Ok(());
    }
    st.runq_sent_period_ns = start;
    let mut ev = Event {
        ts_ns: now,
        cgroup_id: id,
        target_id: id,
        usage: samples,
        limit: w.runq_target_ns,
        value: lat,
        pid: 0,
        tid: 0,
        kind: EventKind::RunqLatency as u32,
        flags: 0,
        comm: [0; 16],
    };
    fill_task(&mut ev, task);
    submit(&ev, true);
    Ok(())
}

// sched/sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next
// [, unsigned int prev_state (5.18+)]): runs in the context of `prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    try_sched_switch(&ctx).unwrap_or_else(|_| read_error())
}

#[inline(always)]
fn try_sched_switch(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    // Still runnable: preempted, or switched out in TASK_RUNNING (yield, throttling).
    let runnable = preempt as u8 != 0
        || (cpu_offset!(switch_has_prev_state) != 0 && {
            let state: u64 = ctx.arg(3);
            state as u32 == 0
        });
    let runtime_tp = cpu_offset!(runtime_tp);
    let gen = cpu_watch_gen();
    // The clock is read only for watched tasks.
    let mut now = 0;
    // prev: only needed when it stays runnable (its wait starts now) or when run time is
    // accounted here; a task going to sleep costs nothing.
    if runnable || runtime_tp == 0 {
        // SAFETY: pointer into the map value.
        let t = unsafe { &mut *task_entry(prev, gen)? };
        if t.cgroup_id != 0 {
            now = unsafe { bpf_ktime_get_ns() };
            if runtime_tp == 0 && t.oncpu_ns != 0 {
                account(t, prev, now.saturating_sub(t.oncpu_ns), now)?;
            }
            t.wakeup_ns = if runnable { now } else { 0 };
        }
    }
    // SAFETY: pointer into the map value.
    let t = unsafe { &mut *task_entry(next, gen)? };
    if t.cgroup_id != 0 {
        if now == 0 {
            now = unsafe { bpf_ktime_get_ns() };
        }
        t.oncpu_ns = now;
        if t.wakeup_ns != 0 {
            let lat = now.saturating_sub(t.wakeup_ns);
            t.wakeup_ns = 0;
            runq_sample(t, lat, now, next)?;
        }
    }
    Ok(0)
}

#[inline(always)]
fn try_wakeup(ctx: &BtfTracePointContext, new_task: bool) -> Result<u32, i64> {
    let task: u64 = ctx.arg(0);
    if new_task {
        // A new task may reuse the address of one that exited (whose entry a late event after
        // its exit may have made again): never trust an entry for it.
        let _ = TASKS.remove(&task);
    }
    // SAFETY: pointer into the map value.
    let t = unsafe { &mut *task_entry(task, cpu_watch_gen())? };
    if t.cgroup_id != 0 {
        t.wakeup_ns = unsafe { bpf_ktime_get_ns() };
    }
    Ok(0)
}

// sched/sched_wakeup(struct task_struct *p): p became runnable.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    try_wakeup(&ctx, false).unwrap_or_else(|_| read_error())
}

// sched/sched_wakeup_new(struct task_struct *p): a new task became runnable.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    try_wakeup(&ctx, true).unwrap_or_else(|_| read_error())
}

// sched/sched_stat_runtime(struct task_struct *curr, u64 runtime[, u64 vruntime (< 6.8)]): the
// run time update_curr() just charged to `curr` (and to its cgroups' CFS bandwidth).
#[btf_tracepoint(function = "sched_stat_runtime")]
pub fn sched_stat_runtime(ctx: BtfTracePointContext) -> u32 {
    try_stat_runtime(&ctx).unwrap_or_else(|_| read_error())
}

#[inline(always)]
fn try_stat_runtime(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let task: u64 = ctx.arg(0);
    let runtime: u64 = ctx.arg(1);
    // SAFETY: pointer into the map value.
    let t = unsafe { &*task_entry(task, cpu_watch_gen())? };
    if t.cgroup_id != 0 {
        let now = unsafe { bpf_ktime_get_ns() };
        account(t, task, runtime, now)?;
    }
    Ok(0)
}

// sched/sched_process_exit(struct task_struct *p[, bool group_dead]): forget the task.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg(0);
    let _ = TASKS.remove(&task);
    0
}

// cgroup/cgroup_attach_task(struct cgroup *dst, const char *path, struct task_struct *task,
// bool threadgroup): the task changes cgroup; its entry is made again when next seen.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: BtfTracePointContext) -> u32 {
    let task: u64 = ctx.arg(2);
    let _ = TASKS.remove(&task);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
