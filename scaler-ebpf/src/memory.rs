//! Memory-pressure programs: memory-cgroup reclaim (begin/end), global direct reclaim, OOM
//! kills (mark_victim) and early warnings (count_memcg_events), with their maps.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap},
    programs::BtfTracePointContext,
};
use scaler_common::{
    stat, CgState, Event, EventKind, KernelOffsets, Settings, WatchConfig, EVENT_FLAG_ANCESTOR,
    MAX_ANCESTOR_LEVELS, MAX_WATCHED, REWAKE_NS, WATCH_USAGE_HIGH,
};

use crate::helpers::{
    count, css_id, fill_current, observe_admit, offsets, read, read_error, submit, submit_observed,
    task_css,
};

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
    /// Non-zero: an observe-only reclaim (its end is admitted and submitted as such).
    observed: u32,
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
    /// Some level up to and including the target is in `WATCHED` (explicitly watched: the
    /// agent manages it). Otherwise the chain's events are observe-only: reported only with
    /// `watch_all`, never with a wakeup, and shed under load (see [`observe_only`]).
    managed: bool,
}

/// Walks from a memory cgroup up its page-counter parents, looking for the level whose limit
/// binds and for a watched level.
#[inline(always)]
fn walk(memcg_css: u64, o: &KernelOffsets) -> Result<Chain, i64> {
    let mut memcg = memcg_css - o.memcg_css as u64;
    let id = css_id(memcg_css, o)?;
    let (usage, max) = memcg_usage_max(memcg, o)?;
    let mut chain = Chain {
        id,
        target_id: id,
        usage_pages: usage,
        max_pages: max,
        target_is_ancestor: false,
        managed: watched(id).is_some(),
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
        chain.managed |= watched(lid).is_some();
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
fn current_chain(o: &KernelOffsets) -> Result<Chain, i64> {
    // SAFETY: the helper returns the current task pointer; it is only ever probe-read.
    let task = unsafe { bpf_get_current_task() };
    let css = task_css(task, o, o.memory_cgrp_id)?;
    walk(css, o)
}

/// What to do with an event of `chain`: `Some(false)` report it as a watched (managed) one,
/// `Some(true)` as an observe-only one (its admission already taken: see
/// [`observe_admit`]), `None` nothing (filtered: unwatched without `watch_all`, counted; or
/// shed: counted by `observe_admit`).
#[inline(always)]
fn observe_only(chain: &Chain, s: &Settings) -> Option<bool> {
    if chain.managed {
        return Some(false);
    }
    if s.watch_all == 0 {
        count(stat::FILTERED);
        return None;
    }
    if observe_admit() {
        Some(true)
    } else {
        None
    }
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
    let chain = current_chain(&o)?;
    // An observe-only global direct reclaim is admitted at its end, where it is reported; a
    // memory-cgroup one here (a shed begin takes its end with it: counted once).
    let observed = if kind == EventKind::ReclaimBegin {
        match observe_only(&chain, &s) {
            Some(obs) => obs,
            None => return Ok(0),
        }
    } else if chain.managed {
        false
    } else if s.watch_all != 0 {
        true
    } else {
        count(stat::FILTERED);
        return Ok(0);
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let tid = bpf_get_current_pid_tgid() as u32;
    let start = ReclaimStart {
        ts_ns: now,
        cgroup_id: chain.id,
        target_id: chain.target_id,
        kind: kind as u32,
        observed: observed as u32,
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
    if observed {
        // Never a wakeup, no coalescing state: nobody acts on it.
        submit_observed(&mut ev);
        return Ok(0);
    }
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
    if start.observed != 0 && !observe_admit() {
        return Ok(0);
    }
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
    if start.observed != 0 {
        submit_observed(&mut ev);
    } else {
        submit(&ev, false);
    }
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
    let observed;
    if o.mark_victim_has_task != 0 {
        let task: u64 = ctx.arg(0);
        let css = task_css(task, &o, o.memory_cgrp_id)?;
        let chain = walk(css, &o)?;
        observed = match observe_only(&chain, &s) {
            Some(obs) => obs,
            None => return Ok(0),
        };
        ev = new_event(EventKind::OomKill, &chain, o.page_shift);
        let tgid: i32 = read(task, o.task_tgid)?;
        let pid: i32 = read(task, o.task_pid)?;
        ev.pid = tgid as u32;
        ev.tid = pid as u32;
        ev.comm = read(task, o.task_comm).unwrap_or([0u8; 16]);
    } else {
        let pid: u64 = ctx.arg(0);
        let chain = current_chain(&o)?;
        observed = match observe_only(&chain, &s) {
            Some(obs) => obs,
            None => return Ok(0),
        };
        ev = new_event(EventKind::OomKill, &chain, o.page_shift);
        ev.pid = pid as u32;
        ev.tid = pid as u32;
    }
    if observed {
        submit_observed(&mut ev);
    } else {
        submit(&ev, true);
    }
    // Rare and off the hot path: also reported through aya-log (forwarded into tracing), with
    // the crate's name as its target (the default would be this module's path).
    aya_log_ebpf::info!(
        ctx,
        target: "scaler",
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
    let (headroom, permille, observed) = match watched(id) {
        Some(w) if w.flags & WATCH_USAGE_HIGH != 0 => {
            (w.headroom_bytes, w.headroom_permille, false)
        }
        Some(_) => return Ok(0),
        None => {
            let s = settings();
            if s.watch_all == 0 || s.default_headroom_bytes == 0 {
                return Ok(0);
            }
            (s.default_headroom_bytes, 0, true)
        }
    };
    count(stat::USAGE_CHECKS);
    let (usage, max) = memcg_usage_max(memcg, &o)?;
    let usage_b = usage << o.page_shift;
    let max_b = pages_to_bytes(max, o.page_shift);
    // At most `permille` thousandths of the limit: a small or right-sized limit is not all
    // warning band (the decider sizes its floors with the same rule).
    let headroom = if permille > 0 {
        // permille <= 1000: no overflow (and no 128-bit multiply, which BPF lacks).
        let scaled = (max_b / 1000).wrapping_mul(permille as u64);
        if scaled < headroom {
            scaled
        } else {
            headroom
        }
    } else {
        headroom
    };
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
        managed: !observed,
    };
    // An observe-only warning is admitted here, after the once-per-limit filter: a shed one is
    // counted, and warned again at the same limit after REWARN_NS.
    if observed && !observe_admit() {
        return Ok(0);
    }
    let mut ev = new_event(EventKind::UsageHigh, &chain, o.page_shift);
    ev.value = headroom;
    fill_current(&mut ev);
    if observed {
        submit_observed(&mut ev);
    } else {
        submit(&ev, true);
    }
    Ok(0)
}
