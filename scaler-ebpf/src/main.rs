//! Kernel programs of scaler: memory-pressure events, filtered and coalesced in the kernel.
//!
//! Every program identifies the task's *memory* cgroup by following
//! `task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id` with offsets taken from the running
//! kernel's BTF at load time ([`helpers::OFFSETS`]); `bpf_get_current_cgroup_id()` would give the
//! v2 cgroup, which is not the memory cgroup on a v1 or hybrid host. The same chain is right on
//! cgroup v2.
//!
//! The scheduler programs ([`sched`]) do the same for the *cpu* controller
//! (`subsys[cpu_cgrp_id]`), keep run-queue latency histograms and CPU time per quota period in
//! the kernel, and report only threshold crossings, at most one per period and cgroup.
//!
//! Wakeups: urgent events (reclaim begin at a limit userspace has not yet been told about, early
//! warnings, OOM kills) wake the consumer at once; everything else is submitted without a wakeup
//! and read on the next wakeup or poll, unless a lot has piled up.
//!
//! Modules: [`helpers`] (the kernel-offset globals, the ring buffer and counters every program
//! shares, kernel-struct reads, submitting events), [`memory`] (the memory-pressure programs
//! and their maps), [`sched`] (the scheduler programs and their maps), `inject` (load testing).
//! Program and map names are the ELF symbols userspace looks up (`scaler_common::names`): they
//! do not depend on the module an item lives in.
#![no_std]
#![no_main]

mod helpers;
/// Load testing only (`scaler load-test`): never loaded by the agent.
mod inject;
mod memory;
mod sched;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
