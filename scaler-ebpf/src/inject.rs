//! Load testing only: a synthetic event source (see `scaler_common::inject`).
//!
//! `inject_events` is a raw-tracepoint program that is never attached: `scaler load-test`
//! loads it in its own process, with this object's `EVENTS` and `STATS` maps replaced by a
//! running agent's, and runs it through `BPF_PROG_TEST_RUN` at a controlled rate. Each run
//! writes a batch of well-formed `ReclaimBegin` events for real (idle) cgroups into the agent's
//! ring buffer, where the agent's engine thread reads, decodes and decides on them exactly as
//! on events of the pressure programs. The events carry `EVENT_FLAG_INJECTED` and are counted
//! in `INJECT_STATS` as well as in the shared `STATS`, so the agent's own counters (submitted,
//! dropped) include them and the injector can tell its part.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{Array, PerCpuArray},
    programs::RawTracePointContext,
};
use scaler_common::{
    inject::{self, InjectTarget},
    stat, Event, EventKind, EVENT_FLAG_INJECTED, EVENT_FLAG_WAKEUP,
};

use crate::helpers::{count, EVENTS, WAKE_BYTES};

/// The cgroups to write events for, filled by the injector.
#[map]
static INJECT_TARGETS: Array<InjectTarget> = Array::with_max_entries(inject::MAX_TARGETS, 0);

/// The injector's own counters (see `scaler_common::inject::SUBMITTED`).
#[map]
static INJECT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(inject::STATS_COUNT, 0);

#[inline(always)]
fn inject_count(idx: u32) {
    if let Some(p) = INJECT_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

/// args: `[0]` events to write (clamped to `MAX_BATCH`), `[1]` first slot of `INJECT_TARGETS`,
/// `[2]` wakeups: `WAKE_EVERY` (each event wakes the consumer, like reclaim under the re-wake
/// rule) or `WAKE_BATCH` (the last event of the run wakes it, the others only once 64 KiB are
/// pending, like the programs' non-urgent events).
/// Slots are taken in turn, modulo `MAX_TARGETS` (userspace fills every slot, repeating its
/// targets): a mask rather than a comparison with a target count keeps the verifier from
/// exploring every (iteration, count) pair.
#[raw_tracepoint]
pub fn inject_events(ctx: RawTracePointContext) -> u32 {
    const MASK: u64 = inject::MAX_TARGETS as u64 - 1;
    const _: () = assert!(inject::MAX_TARGETS.is_power_of_two());
    let n: u64 = ctx.arg(0);
    let start: u64 = ctx.arg(1);
    let wake_every: u64 = ctx.arg(2);
    let wake_every = wake_every == inject::WAKE_EVERY;
    let n = if n > inject::MAX_BATCH {
        inject::MAX_BATCH
    } else {
        n
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    for i in 0..n {
        let Some(t) = INJECT_TARGETS.get(((start + i) & MASK) as u32) else {
            continue;
        };
        if t.cgroup_id == 0 {
            continue;
        }
        let urgent =
            wake_every || i + 1 == n || EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKE_BYTES;
        let ev = Event {
            // SAFETY: no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            cgroup_id: t.cgroup_id,
            target_id: t.cgroup_id,
            usage: t.usage,
            limit: t.limit,
            value: 0,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            kind: EventKind::ReclaimBegin as u32,
            flags: EVENT_FLAG_INJECTED | if urgent { EVENT_FLAG_WAKEUP } else { 0 },
            comm,
        };
        // What `submit(&ev, urgent)` does, plus the injector's own counts.
        let flags = if urgent {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
        match EVENTS.output::<Event>(&ev, flags as u64) {
            Ok(()) => {
                count(stat::SUBMITTED);
                if urgent {
                    count(stat::WOKEN);
                }
                inject_count(inject::SUBMITTED);
            }
            Err(_) => {
                count(stat::RINGBUF_DROPPED);
                inject_count(inject::DROPPED);
            }
        }
    }
    0
}
