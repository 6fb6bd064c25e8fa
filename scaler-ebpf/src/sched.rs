//! Scheduler programs: CPU time per quota period and run-queue latency, per watched cpu cgroup.
//!
//! The hot path is `sched_switch`, and what every task of the node pays there is kept to a few
//! direct (BTF-typed, fault-tolerant) loads and one inlined array lookup: the task switched in
//! has its cpu cgroup's kernfs id read live (`next->sched_task_group->css.cgroup->kn->id`, so a
//! task that changes cgroup needs no invalidation) and tested against the `CPU_FILTER` bitmap;
//! a per-CPU slot (`CPU_RUNNING`, an inlined per-CPU array lookup) says whether the task being
//! switched out is a watched one. No clock read, no hash lookup, no counter update, no
//! per-task state for unwatched tasks.
//!
//! CPU time: the per-CPU slot holds the watched task running on the CPU and since when; its
//! run time is charged at switch-out and by `cpu_tick`, a per-CPU perf-event timer program
//! (every 2 ms, userspace's CPU_TICK, independent of the switch rate), so a CPU-bound task that
//! never switches out is still seen nearing its quota before the kernel throttles it. Charges
//! and run-queue samples are batched in the slot and flushed into the cgroup's `CPU_STATE`
//! entry by every tick, when the CPU turns to another cgroup, and every FLUSH_NS of run time,
//! so switches between tasks of one watched cgroup need no hash lookup either. Where perf
//! events are unavailable, `sched_stat_runtime` does the ticking instead (it fires at every
//! update_curr, which costs the whole node one more program run per switch and tick).
//!
//! Run-queue latency (wakeup or preemption to running): at switch-in of a watched task, the
//! run queue's clock minus the kernel's own `next->sched_info.last_queued` (CONFIG_SCHED_INFO;
//! the same figure the kernel adds to run_delay just after the tracepoint). Without
//! CONFIG_SCHED_INFO the `sched_wakeup(_new)` programs record wakeup times of watched tasks.
//!
//! Nothing is submitted per scheduler event: quota-near and run-queue-latency crossings are
//! reported at most once per (monotonic-aligned) period and cgroup, so the consumer's own
//! wakeups cannot feed back.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_task, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, PerfEventContext},
};
use scaler_common::{
    cpu_filter_slot, stat, CpuOffsets, CpuState, CpuWatch, Event, EventKind, CPU_FILTER_GEN,
    CPU_FILTER_WORDS, CPU_WATCH_QUOTA, CPU_WATCH_RUNQ, MAX_TASKS, MAX_WATCHED, RUNQ_BUCKETS,
    RUNQ_FROM_SCHED_INFO, RUNQ_FROM_WAKEUP,
};

use crate::helpers::{count, css_id, offsets, read, read_error, submit, OFFSETS};

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
