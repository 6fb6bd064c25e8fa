//! scaler: an eBPF-backed, low-latency cgroup scaler.
//!
//! The loop is monitor (kernel programs, [`ebpf`]) -> analyze/decide ([`decider`], pure) ->
//! execute ([`actuator`], pre-opened cgroup files) -> feedback (the write's completion time and
//! the next samples go back into the decider). [`engine`] runs that loop on a dedicated thread.

pub mod actuator;
pub mod bench;
pub mod btf;
pub mod cgroupfs;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod decider;
pub mod ebpf;
pub mod engine;
pub mod events;
pub mod inject;
pub mod k8s;
pub mod privilege;
pub mod resource;
pub mod stats;
pub mod units;
pub mod workload;
