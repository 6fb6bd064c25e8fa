//! What every program shares: the kernel offsets from BTF, the event ring buffer and the
//! counters, kernel-struct reads, and submitting an event.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use scaler_common::{
    stat, Event, KernelOffsets, EVENT_FLAG_OBSERVED, EVENT_FLAG_WAKEUP, NO_OFFSET, OBSERVE_BUDGET,
    OBSERVE_MAX_PENDING_BYTES, OBSERVE_WINDOW_NS, RING_BUF_BYTES,
};

/// Field offsets from the running kernel's BTF, set by the loader (read-only data).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets::ZERO;

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUF_BYTES, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// This CPU's budget of observe-only events (see [`observe_admit`]).
#[derive(Clone, Copy)]
#[repr(C)]
struct ObserveBudget {
    window_start_ns: u64,
    used: u64,
}

#[map]
static OBSERVE_BUDGETS: PerCpuArray<ObserveBudget> = PerCpuArray::with_max_entries(1, 0);

/// Wake the consumer anyway once this much unread data has piled up.
pub(crate) const WAKE_BYTES: u64 = 64 * 1024;

#[inline(always)]
pub(crate) fn offsets() -> KernelOffsets {
    // SAFETY: a plain read of a global the loader fills before the programs run; volatile so
    // the compiler does not fold the all-NO_OFFSET initial value.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub(crate) fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub(crate) fn read<T: Copy>(base: u64, off: u32) -> Result<T, i64> {
    if base == 0 || off == NO_OFFSET {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|e| e as i64)
}

/// `task->cgroups->subsys[subsys_id]`: the task's css of that controller.
#[inline(always)]
pub(crate) fn task_css(task: u64, o: &KernelOffsets, subsys_id: u32) -> Result<u64, i64> {
    let cgroups: u64 = read(task, o.task_cgroups)?;
    if subsys_id == NO_OFFSET {
        return Err(-1);
    }
    read(cgroups, o.css_set_subsys + subsys_id * 8)
}

/// `css->cgroup->kn->id`: the cgroup's kernfs id (its directory's inode number).
#[inline(always)]
pub(crate) fn css_id(css: u64, o: &KernelOffsets) -> Result<u64, i64> {
    let cgrp: u64 = read(css, o.css_cgroup)?;
    let kn: u64 = read(cgrp, o.cgroup_kn)?;
    read(kn, o.kn_id)
}

#[inline(always)]
pub(crate) fn fill_current(ev: &mut Event) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Submits an event; `urgent` ones wake the consumer at once.
#[inline(always)]
pub(crate) fn submit(ev: &Event, urgent: bool) {
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

/// Whether an observe-only event (a cgroup no watched level covers, reported only because of
/// `watch_all`) may go into the ring buffer now: only while the ring holds less than
/// [`OBSERVE_MAX_PENDING_BYTES`] of unread data and this CPU has not spent its
/// [`OBSERVE_BUDGET`] of the current [`OBSERVE_WINDOW_NS`]. Otherwise the event is shed here,
/// counted in `OBSERVE_SHED`, so that a reclaim storm in cgroups nobody manages can neither
/// fill the ring buffer under a managed cgroup's events nor queue thousands of records ahead
/// of them. Call it before any other work for the event.
#[inline(always)]
pub(crate) fn observe_admit() -> bool {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= OBSERVE_MAX_PENDING_BYTES {
        count(stat::OBSERVE_SHED);
        return false;
    }
    let Some(b) = OBSERVE_BUDGETS.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
    let b = unsafe { &mut *b };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(b.window_start_ns) >= OBSERVE_WINDOW_NS {
        b.window_start_ns = now;
        b.used = 0;
    }
    if b.used >= OBSERVE_BUDGET {
        count(stat::OBSERVE_SHED);
        return false;
    }
    b.used += 1;
    true
}

/// Submits an observe-only event [`observe_admit`] let through: flagged
/// [`EVENT_FLAG_OBSERVED`], never with a wakeup (the consumer reads it on its next drain: the
/// next watched event's wakeup or its tick).
#[inline(always)]
pub(crate) fn submit_observed(ev: &mut Event) {
    ev.flags |= EVENT_FLAG_OBSERVED;
    match EVENTS.output::<Event>(ev, BPF_RB_NO_WAKEUP as u64) {
        Ok(()) => count(stat::SUBMITTED),
        Err(_) => count(stat::RINGBUF_DROPPED),
    }
}

#[inline(always)]
pub(crate) fn read_error() -> u32 {
    count(stat::READ_ERRORS);
    0
}
