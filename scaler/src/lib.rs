//! scaler: an eBPF-backed, low-latency cgroup scaler.
//!
//! The loop is monitor (kernel programs, [`ebpf`]) -> analyze/decide ([`decider`], pure) ->
//! execute ([`actuator`], pre-opened cgroup files) -> feedback (the write's completion time and
//! the next samples go back into the decider). [`engine`] runs that loop on a dedicated thread.
//!
//! [`cmd`] holds the agent's subcommands (watch, agent, status, check-config, exec) and [`cli`]
//! their command line. The `scaler` binary is the `scaler-cli` package; the benchmark, the
//! synthetic workloads, event injection and the overhead measurement are the `scaler-tools`
//! package, built on this library's public API and linked into the binary only by
//! `scaler-cli`'s default `tools` feature.

pub mod actuator;
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
pub mod k8s;
pub mod kubelet;
pub mod node;
pub mod kube;
pub mod privilege;
pub mod resource;
pub mod schema;
pub mod stats;
pub mod units;
