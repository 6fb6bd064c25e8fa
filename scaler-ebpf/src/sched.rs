//! Scheduler programs: quota-near and run-queue latency, and CPU time, per watched cpu cgroup.
//!
//! The hot path is `sched_switch`, and what every task of the node pays there is kept to a few
//! direct (BTF-typed, fault-tolerant) loads and inlined array lookups: the task switched in
//! has its `task_group` read (`next->sched_task_group`) and compared with the two this CPU
//! last met (`CPU_RUNNING`, an inlined per-CPU array lookup): the last unwatched one and the
//! last watched one. Only a task group met for the first time (or after the watched set
//! changed) has its cpu cgroup's kernfs id read (`tg->css.cgroup->kn->id`) and tested
//! against the `CPU_FILTER` bitmap. No clock read, no hash lookup, no counter update and no
//! per-task state on the common path, for watched tasks too.
//!
//! Nothing is charged per switch. CPU time and the quota come from the kernel's own
//! accounting, read by `cpu_tick`, a per-CPU perf-event timer (every 2 ms, userspace's
//! CPU_TICK), for the watched cgroup this CPU last ran:
//!
//! - quota: the kernel's bandwidth pool (`tg->cfs_bandwidth.runtime`: what is left of this
//!   period's quota; the kernel hands it to CPUs in 5 ms slices and throttles a CPU whose
//!   slice runs out with the pool empty). When the pool holds less than `1 - near` of the
//!   quota, `CpuQuotaNear` is reported, once per kernel period (`nr_periods`) and quota.
//!   Switch-ins of watched tasks test the pool too (one load), sampled (below), so a cgroup
//!   whose tasks run between ticks is seen as well;
//! - CPU time: the cgroup's group entity on this CPU (`tg->se[cpu]->sum_exec_runtime`, the
//!   kernel's exact run time of the group there), its increase added to the cgroup's
//!   `total_ns` by every tick and when the CPU turns to another watched cgroup.
//!
//! Run-queue latency (wakeup or preemption to running): at switch-in of a watched task, the
//! run queue's clock minus the kernel's own `next->sched_info.last_queued` (CONFIG_SCHED_INFO;
//! the same figure the kernel adds to run_delay just after the tracepoint). Sampled: every
//! switch-in of a watched cgroup's task while a CPU has seen fewer than SAMPLE_FIRST of them
//! since its last tick, then one in SAMPLE_EVERY, so a workload switching a few hundred times
//! per period is fully sampled and a switch-heavy one pays the sample on a few per cent of its
//! switches. Samples are batched per CPU and flushed into the cgroup's `CPU_STATE` entry by
//! every tick and when the CPU turns to another watched cgroup. Without CONFIG_SCHED_INFO the
//! `sched_wakeup(_new)` programs record wakeup times of watched tasks (every switch-in is
//! then sampled). Where perf events are unavailable, `sched_stat_runtime` does the ticking
//! instead (rate-limited to one tick per TICK_MIN_NS per CPU).
//!
//! Nothing is submitted per scheduler event: quota-near and run-queue-latency crossings are
//! reported at most once per period and cgroup, so the consumer's own wakeups cannot feed
//! back.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, PerfEventContext},
};
use scaler_common::{
    cpu_filter_slot, stat, CpuOffsets, CpuState, CpuWatch, Event, EventKind, CPU_FILTER_GEN,
    CPU_FILTER_WORDS, CPU_WATCH_QUOTA, CPU_WATCH_RUNQ, MAX_TASKS, MAX_WATCHED, NO_OFFSET,
    RUNQ_BUCKETS, RUNQ_FROM_SCHED_INFO, RUNQ_FROM_WAKEUP,
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

/// Reports sent, keyed by (cgroup id, period, what): `[id, kernel period + 1, quota]` for
/// quota-near, `[id, window start, u64::MAX]` for run-queue latency. Inserting with
/// BPF_NOEXIST is atomic under the map's bucket lock, so of two CPUs that see the same crossing
/// at the same instant (the per-cgroup `*_sent_*` fields, plain loads and stores, let both
/// through) only one reports it. Old periods' keys are evicted as new ones come in.
#[map]
static CPU_SENT: LruHashMap<[u64; 3], u8> = LruHashMap::with_max_entries(MAX_WATCHED, 0);

/// Claims the report `key` for this CPU; false if another CPU claimed it first.
#[inline(always)]
fn claim(key: &[u64; 3]) -> bool {
    CPU_SENT.insert(key, &1u8, BPF_NOEXIST as u64).is_ok()
}

/// Initial value of a `CPU_STATE` entry (inserted from here: too big for the BPF stack twice).
static CPU_STATE_ZERO: CpuState = CpuState::ZERO;

/// Period used when the kernel reports none (should not happen): the CFS default, 100 ms.
const DEFAULT_PERIOD_NS: u64 = 100_000_000;

/// Switch-ins of the watched cgroup's tasks a CPU samples (run-queue latency, pool test) after
/// each tick, all of them...
const SAMPLE_FIRST: u64 = 16;
/// ... then one in this many (a power of two).
const SAMPLE_EVERY: u64 = 32;

/// Least time between two ticks from `sched_stat_runtime` (that fallback fires at every
/// update_curr of the CPU).
const TICK_MIN_NS: u64 = 1_000_000;

/// Per CPU: the watched cgroup this CPU last ran, what the programs know of it, its run-queue
/// samples not yet flushed into its `CPU_STATE` entry, and the last unwatched task group met.
#[repr(C)]
struct Running {
    /// Kernfs id of the watched cpu cgroup last run here; 0: none.
    cgroup_id: u64,
    /// Its `task_group *`.
    tg: u64,
    /// The filter generation when the slot took it (a change re-reads its settings).
    gen: u64,
    /// The last of its tasks switched in here (named by a tick's quota-near report when the
    /// running task is not one of them).
    task: u64,
    /// Its settings (refreshed by every tick).
    watch: CpuWatch,
    /// The pool (`cfs_bandwidth.runtime`, ns) below which it is near its quota; 0: never
    /// (unlimited, or quota reports off). Refreshed by every tick.
    near_below: u64,
    /// `tg->se[this cpu]->sum_exec_runtime` up to which its CPU time is in `total_ns`
    /// (`u64::MAX`: unknown; the next reading only sets it).
    se_sum: u64,
    /// Switch-ins of its tasks since the last tick (the sampling gate).
    seen: u64,
    /// When the last tick ran (the `sched_stat_runtime` fallback's rate limit).
    tick_ns: u64,
    /// Run-queue samples not yet flushed, of which above the cgroup's target.
    pend_samples: u64,
    pend_over: u64,
    /// The largest of them, and the task that waited it.
    pend_max_lat: u64,
    pend_max_task: u64,
    /// Their histogram.
    pend_hist: [u64; RUNQ_BUCKETS],
    /// The last task group found unwatched on this CPU, and the filter generation then: a
    /// switch to a task of that group costs two loads and returns.
    unwatched_tg: u64,
    unwatched_gen: u64,
}

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

/// [`kload`] of a 4-byte field (the verifier rejects a load wider than the member).
#[inline(always)]
fn kload32(base: u64, off: u32) -> u32 {
    // SAFETY: as for kload.
    unsafe { core::ptr::read_volatile((base + off as u64) as *const u32) }
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
/// target, so this is a plain load and store: two CPUs adding to the same cgroup at the same
/// instant may lose one of the two deltas (an undercount of at most one tick's run time).
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

/// The kernel's bandwidth state of a task group (`task_group.cfs_bandwidth`).
#[derive(Clone, Copy)]
struct Bandwidth {
    /// ns per period; `u64::MAX` (RUNTIME_INF): unlimited.
    quota: u64,
    period: u64,
    /// What is left in the pool this period, and what it started with.
    runtime: u64,
    snap: u64,
    /// The kernel's period count.
    periods: u64,
    /// Whether `periods` read the same before and after `runtime`: if the period timer
    /// refilled the pool between the loads, `runtime` may be the old period's (low) and
    /// `periods` the new one's; such a reading is not used for a report (the next one is).
    settled: bool,
}

/// [`Bandwidth`] by direct loads from a BTF-typed `task_group *` (in `sched_switch`).
#[inline(always)]
fn bandwidth_direct(tg: u64) -> Bandwidth {
    let b = cpu_offset!(tg_cfs_bandwidth);
    let periods = kload32(tg, b + cpu_offset!(cfs_b_nr_periods));
    let quota = kload(tg, b + cpu_offset!(cfs_b_quota));
    let snap_off = cpu_offset!(cfs_b_runtime_snap);
    let runtime = kload(tg, b + cpu_offset!(cfs_b_runtime));
    let snap = if snap_off == NO_OFFSET {
        quota
    } else {
        kload(tg, b + snap_off)
    };
    Bandwidth {
        quota,
        period: kload(tg, b + cpu_offset!(cfs_b_period)),
        runtime,
        snap,
        periods: periods as u64,
        settled: kload32(tg, b + cpu_offset!(cfs_b_nr_periods)) == periods,
    }
}

/// [`Bandwidth`] of a `task_group *` read with bpf_probe_read_kernel (it came out of a map,
/// so it is no longer BTF-typed).
#[inline(always)]
fn bandwidth_probe(tg: u64) -> Result<Bandwidth, i64> {
    let b = tg + cpu_offset!(tg_cfs_bandwidth) as u64;
    let periods = read::<u32>(b, cpu_offset!(cfs_b_nr_periods))?;
    let quota: u64 = read(b, cpu_offset!(cfs_b_quota))?;
    let snap_off = cpu_offset!(cfs_b_runtime_snap);
    let runtime = read(b, cpu_offset!(cfs_b_runtime))?;
    let snap = if snap_off == NO_OFFSET {
        quota
    } else {
        read(b, snap_off)?
    };
    Ok(Bandwidth {
        quota,
        period: read(b, cpu_offset!(cfs_b_period))?,
        runtime,
        snap,
        periods: periods as u64,
        settled: read::<u32>(b, cpu_offset!(cfs_b_nr_periods))? == periods,
    })
}

/// The pool below which a cgroup with `quota` is near it (`1 - near` of the quota left); 0:
/// never.
#[inline(always)]
fn near_below(quota: u64, w: &CpuWatch) -> u64 {
    if w.flags & CPU_WATCH_QUOTA == 0 || quota == 0 || quota == u64::MAX {
        return 0;
    }
    let left = 1000u64.saturating_sub(w.near_permille as u64);
    quota / 1000 * left + 1
}

/// Run time of the task group `tg` on this CPU: its group entity's `sum_exec_runtime`, kept
/// by the kernel at every update_curr (each switch and scheduler tick).
#[inline(always)]
fn group_runtime(tg: u64) -> Result<u64, i64> {
    // SAFETY: no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let ses: u64 = read(tg, cpu_offset!(tg_se))?;
    if ses == 0 {
        return Err(-1);
    }
    let se: u64 = read(ses + cpu * 8, 0)?;
    read(se, cpu_offset!(se_sum_exec_runtime))
}

/// Rolls the cgroup's run-queue period window forward if `now` is past it; returns the period
/// start.
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
        st.runq_samples = 0;
        st.runq_over = 0;
    }
    start
}

/// Flushes the slot's cgroup: adds the CPU time its group entity ran here since the last
/// flush to `total_ns`, and the pending run-queue samples to its state (reporting a crossing
/// of the target). `period` is the cgroup's.
#[inline(always)]
fn flush(run: &mut Running, period: u64, now: u64) {
    let id = run.cgroup_id;
    // No state: the cgroup was unwatched meanwhile (never created from here).
    let Some(st) = CPU_STATE.get_ptr_mut(&id) else {
        clear_pending_runq(run);
        return;
    };
    // SAFETY: pointer into the map value; concurrent updates from other CPUs are plain adds
    // (see shared_add) or idempotent stores.
    let st = unsafe { &mut *st };
    if let Ok(v) = group_runtime(run.tg) {
        let last = run.se_sum;
        run.se_sum = v;
        if last != u64::MAX && v > last {
            count(stat::CPU_ACCOUNTED);
            shared_add(&mut st.total_ns, v - last);
        }
    }
    if run.pend_samples != 0 {
        run.pend_samples = 0;
        let period = if period == 0 || period > i64::MAX as u64 {
            DEFAULT_PERIOD_NS
        } else {
            period
        };
        let start = roll_period(st, now, period);
        let w = run.watch;
        runq_flush(st, run, id, w, start, now);
    }
}

/// Empties the slot and its pending figures.
#[inline(always)]
fn drop_slot(run: &mut Running) {
    run.cgroup_id = 0;
    run.tg = 0;
    run.near_below = 0;
    run.pend_samples = 0;
    clear_pending_runq(run);
}

#[inline(always)]
fn clear_pending_runq(run: &mut Running) {
    run.pend_samples = 0;
    run.pend_over = 0;
    run.pend_max_lat = 0;
    for b in 0..RUNQ_BUCKETS {
        run.pend_hist[b] = 0;
    }
}

/// The slot takes the watched cgroup `id` (task group `tg`, settings `w`, `quota`), flushing
/// the one it held.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn take(
    run: &mut Running,
    id: u64,
    tg: u64,
    w: CpuWatch,
    gen: u64,
    quota: u64,
    now: u64,
) -> Result<(), i64> {
    if run.cgroup_id != id || run.tg != tg {
        if run.cgroup_id != 0 {
            let period: u64 = read(
                run.tg + cpu_offset!(tg_cfs_bandwidth) as u64,
                cpu_offset!(cfs_b_period),
            )
            .unwrap_or(0);
            flush(run, period, now);
        }
        drop_slot(run);
        cpu_state_or_insert(id)?;
        run.se_sum = group_runtime(tg).unwrap_or(u64::MAX);
        run.cgroup_id = id;
        run.tg = tg;
    }
    run.watch = w;
    run.gen = gen;
    run.near_below = near_below(quota, &w);
    Ok(())
}

/// Reports `CpuQuotaNear` for the slot's cgroup if its pool (`bw`) is below the mark: once
/// per kernel period and quota, naming `task` (one of its tasks that ran on this CPU).
#[inline(always)]
fn quota_near(run: &Running, bw: Bandwidth, task: u64, now: u64) {
    // The mark of the quota in force (the slot's may be a tick old).
    let below = near_below(bw.quota, &run.watch);
    if below == 0 || bw.runtime >= below || !bw.settled {
        return;
    }
    let id = run.cgroup_id;
    let Some(st) = CPU_STATE.get_ptr_mut(&id) else {
        return;
    };
    // SAFETY: pointer into the map value (idempotent stores).
    let st = unsafe { &mut *st };
    let drawn = bw.snap.saturating_sub(bw.runtime);
    st.used_ns = drawn;
    let period_id = bw.periods + 1;
    if st.near_sent_period == period_id && st.near_sent_quota_ns == bw.quota {
        count(stat::CPU_SUPPRESSED);
        return;
    }
    st.near_sent_period = period_id;
    st.near_sent_quota_ns = bw.quota;
    if !claim(&[id, period_id, bw.quota]) {
        count(stat::CPU_SUPPRESSED);
        return;
    }
    let period = if bw.period == 0 || bw.period > i64::MAX as u64 {
        DEFAULT_PERIOD_NS
    } else {
        bw.period
    };
    let mut ev = Event {
        ts_ns: now,
        cgroup_id: id,
        target_id: id,
        usage: drawn,
        limit: bw.quota,
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

/// Adds the slot's run-queue batch to the cgroup's state and reports a crossing of the target.
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
        if !claim(&[id, start, u64::MAX]) {
            count(stat::CPU_SUPPRESSED);
            break;
        }
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
    if cpu_offset!(runq_source) == RUNQ_FROM_WAKEUP && run.cgroup_id != 0 {
        // The wakeup fallback: a task of the slot's cgroup preempted (or yielding) starts
        // waiting now (tasks of other watched cgroups switched out are not seen here).
        let prev: u64 = ctx.arg(1);
        if kload(prev, cpu_offset!(task_sched_task_group)) == run.tg && still_runnable(ctx) {
            let now = unsafe { bpf_ktime_get_ns() };
            let _ = TASK_WAKEUP.insert(&prev, &now, 0);
        }
    }
    if tg == run.unwatched_tg && gen == run.unwatched_gen {
        // The commonest case on a node: a task group last found unwatched here, with the
        // watched set unchanged since.
        return Ok(0);
    }
    if tg == run.tg && gen == run.gen && run.cgroup_id != 0 {
        // A task of the watched cgroup this CPU last ran.
        return Ok(switch_in(run, next, tg));
    }
    // A task group met for the first time here (or since the watched set changed).
    let id = tg_cgroup_id(tg);
    if !maybe_watched(id) {
        run.unwatched_tg = tg;
        run.unwatched_gen = gen;
        return Ok(0);
    }
    count(stat::TASK_RESOLVES);
    // SAFETY: copied out at once.
    let Some(w) = (unsafe { CPU_WATCHED.get(&id) }).copied() else {
        // Its filter bit is another cgroup's.
        run.unwatched_tg = tg;
        run.unwatched_gen = gen;
        return Ok(0);
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let quota = kload(tg, cpu_offset!(tg_cfs_bandwidth) + cpu_offset!(cfs_b_quota));
    take(run, id, tg, w, gen, quota, now)?;
    Ok(switch_in(run, next, tg))
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

/// A task of the slot's watched cgroup (`tg`, BTF-typed) is switched in: remembered, and, on
/// sampled switch-ins (see [`SAMPLE_FIRST`]), its cgroup's pool tested against the quota
/// mark (one load) and its run-queue latency taken.
#[inline(always)]
fn switch_in(run: &mut Running, next: u64, tg: u64) -> u32 {
    run.task = next;
    let seen = run.seen;
    run.seen = seen + 1;
    let src = cpu_offset!(runq_source);
    if seen >= SAMPLE_FIRST && seen & (SAMPLE_EVERY - 1) != 0 && src != RUNQ_FROM_WAKEUP {
        return 0;
    }
    if run.near_below != 0 {
        let left = kload(
            tg,
            cpu_offset!(tg_cfs_bandwidth) + cpu_offset!(cfs_b_runtime),
        );
        if left < run.near_below {
            let now = unsafe { bpf_ktime_get_ns() };
            quota_near(run, bandwidth_direct(tg), next, now);
        }
    }
    let lat = if src == RUNQ_FROM_SCHED_INFO {
        let queued = kload(next, cpu_offset!(task_last_queued));
        if queued == 0 {
            return 0;
        }
        // The run queue's clock, updated by __schedule() just before: the clock of
        // last_queued (sched_clock based, not CLOCK_MONOTONIC).
        let cfs_rq = kload(next, cpu_offset!(task_se_cfs_rq));
        let rq = kload(cfs_rq, cpu_offset!(cfs_rq_rq));
        let clock = kload(rq, cpu_offset!(rq_clock));
        if clock == 0 {
            return 0;
        }
        clock.saturating_sub(queued)
    } else if src == RUNQ_FROM_WAKEUP {
        // SAFETY: copied out at once.
        let Some(woken) = (unsafe { TASK_WAKEUP.get(&next) }).copied() else {
            return 0;
        };
        let _ = TASK_WAKEUP.remove(&next);
        let now = unsafe { bpf_ktime_get_ns() };
        now.saturating_sub(woken)
    } else {
        return 0;
    };
    runq_record(run, lat, next);
    0
}

/// The periodic part: takes the running task's cgroup into the slot if it is watched and the
/// slot does not hold it (programs just attached, a task that has not switched since, the
/// cgroup just watched); then, for the slot's cgroup, refreshes its settings, adds its CPU
/// time on this CPU, flushes its run-queue samples and reads the kernel's bandwidth pool for
/// the quota mark. `task` is `current` (read with bpf_probe_read_kernel: not BTF-typed here).
#[inline(always)]
fn tick(task: u64, rate_limited: bool) -> Result<u32, i64> {
    let Some(run) = CPU_RUNNING.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: this CPU's slot; the scheduler programs run with interrupts off, so they do not
    // interleave with this one on this CPU.
    let run = unsafe { &mut *run };
    let now = unsafe { bpf_ktime_get_ns() };
    if rate_limited && now.wrapping_sub(run.tick_ns) < TICK_MIN_NS {
        return Ok(0);
    }
    run.tick_ns = now;
    run.seen = 0;
    let tg: u64 = read(task, cpu_offset!(task_sched_task_group)).unwrap_or(0);
    let gen = filter_gen();
    let mut current = tg != 0 && tg == run.tg && run.cgroup_id != 0;
    if tg != 0 && !current && !(tg == run.unwatched_tg && gen == run.unwatched_gen) {
        let id = css_id(tg + cpu_offset!(tg_css) as u64, &offsets()).unwrap_or(0);
        // SAFETY: copied out at once.
        let w = if id != 0 && maybe_watched(id) {
            unsafe { CPU_WATCHED.get(&id) }.copied()
        } else {
            None
        };
        match w {
            Some(w) => {
                let quota: u64 = read(
                    tg + cpu_offset!(tg_cfs_bandwidth) as u64,
                    cpu_offset!(cfs_b_quota),
                )?;
                take(run, id, tg, w, gen, quota, now)?;
                current = true;
            }
            None => {
                run.unwatched_tg = tg;
                run.unwatched_gen = gen;
            }
        }
    }
    if run.cgroup_id == 0 {
        return Ok(0);
    }
    // Settings may have changed, or the cgroup been unwatched, since the slot took it.
    // SAFETY: copied out at once.
    match unsafe { CPU_WATCHED.get(&run.cgroup_id) }.copied() {
        Some(w) => run.watch = w,
        None => {
            drop_slot(run);
            return Ok(0);
        }
    }
    if current {
        run.task = task;
    }
    let bw = bandwidth_probe(run.tg)?;
    run.near_below = near_below(bw.quota, &run.watch);
    flush(run, bw.period, now);
    quota_near(run, bw, run.task, now);
    Ok(0)
}

/// Per-CPU timer (perf event, software cpu-clock) every TICK_NS: see [`tick`].
#[perf_event]
pub fn cpu_tick(_ctx: PerfEventContext) -> u32 {
    // SAFETY: the current task pointer; only ever probe-read.
    let task = unsafe { bpf_get_current_task() };
    tick(task, false).unwrap_or_else(|_| read_error())
}

// sched/sched_stat_runtime(struct task_struct *curr, u64 runtime[, u64 vruntime (< 6.8)]):
// update_curr() charged run time to `curr`. Attached only where `cpu_tick` cannot be.
#[btf_tracepoint(function = "sched_stat_runtime")]
pub fn sched_stat_runtime(_ctx: BtfTracePointContext) -> u32 {
    // SAFETY: as in cpu_tick. update_curr() also runs for remote run queues, where `curr` is
    // not `current`; the tick only looks at this CPU's running task.
    let task = unsafe { bpf_get_current_task() };
    tick(task, true).unwrap_or_else(|_| read_error())
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
