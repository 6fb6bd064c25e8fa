//! The resources scaler manages — memory and CPU — behind one interface.
//!
//! A [`ManagedResource`] says, for one resource, everything the agent and `scaler exec` do
//! differently for it: which controller's hierarchy its cgroups live in, which part of a
//! `[[policy]]` configures it, how its limit files are opened (a
//! [`LimitWriter`](crate::actuator::LimitWriter)), how the kernel programs are told to watch a
//! cgroup, how a periodic sample is read, how an original limit is put back, and how its values
//! read in metrics. Everything else — reconciling the managed set with the configuration,
//! the state file, samples, restores, metrics and status — is written once, over this trait,
//! and so is the engine's hot path (one decider per resource behind one set of commands).
//!
//! Adding a resource means one implementation here, one decider in [`crate::decider`] and one
//! slot in the engine; adding a signal to an existing resource touches its sampler (or kernel
//! program), its signal type and its decider rules (see docs/architecture.md).

pub mod cpu;
pub mod memory;

use std::fmt;

use crate::{
    actuator::{ActuatorError, LimitWriter, Setting},
    cgroupfs::{Cgroup, Controller},
    config::{NodeInfo, PolicyConfig},
    decider::{CgId, Resource},
    ebpf::{EbpfError, Pipeline},
    engine::{Policy, Signal},
};

pub use self::{cpu::Cpu, memory::Memory};

/// Every resource, memory first (the order of reconciles, samples and restores).
pub const ALL: [&dyn ManagedResource; 2] = [&Memory, &Cpu];

/// The implementation for `resource`.
pub fn of(resource: Resource) -> &'static dyn ManagedResource {
    match resource {
        Resource::Memory => &Memory,
        Resource::Cpu => &Cpu,
    }
}

/// One periodic sample of a managed cgroup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// For the decider (scale-down, rate estimation, throttling).
    pub signal: Signal,
    /// The limit found in the cgroup (someone else may have changed it).
    pub observed: Setting,
    /// Cumulative throttled time (CPU), for metrics.
    pub throttled_seconds: Option<f64>,
}

/// The outcome of putting an original limit back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Restored {
    /// Written; the setting it replaced.
    Written { replaced: Setting },
    /// The cgroup already has it.
    Unchanged,
    /// Not written, with the reason (for example: below current usage).
    Kept { why: &'static str, current: Setting },
}

/// What the agent does differently for one resource. See the module docs.
pub trait ManagedResource: Send + Sync + fmt::Debug {
    /// Which resource.
    fn resource(&self) -> Resource;
    /// The controller whose hierarchy holds its cgroups (on v1, a tree of its own).
    fn controller(&self) -> Controller {
        match self.resource() {
            Resource::Memory => Controller::Memory,
            Resource::Cpu => Controller::Cpu,
        }
    }
    /// The part of `policy` that manages this resource, if any.
    fn policy(&self, policy: &PolicyConfig, node: &NodeInfo) -> Option<Policy> {
        policy.policy(self.resource(), node)
    }
    /// Opens the cgroup's limit files (read now; written on the hot path) through its
    /// directory fd; with `id`, the cgroup at the path must be that one (a cgroup removed and
    /// recreated at the same path is refused with `ActuatorError::Replaced`).
    fn open(&self, cg: &Cgroup, id: Option<CgId>) -> Result<Box<dyn LimitWriter>, ActuatorError> {
        crate::actuator::open(self.resource(), cg, id)
    }
    /// Usage to start the decider from (bytes for memory; 0 where samples bring it).
    fn usage(&self, cg: &Cgroup) -> u64;
    /// Tells the kernel programs to report this cgroup's events. `Ok(false)` when the programs
    /// this needs are not attached (the resource is then managed from samples alone).
    fn watch(&self, pipeline: &mut Pipeline, id: CgId, policy: &Policy) -> Result<bool, EbpfError>;
    /// Stops the kernel programs reporting this cgroup.
    fn unwatch(&self, pipeline: &mut Pipeline, id: CgId);
    /// Reads a sample for the decider; `kernel` supplies what the cgroup files lack (v1 CPU
    /// time where cpuacct is not mounted with cpu).
    fn sample(&self, cg: &Cgroup, kernel: Option<(&Pipeline, CgId)>) -> Option<Sample>;
    /// Writes `original` back (never below usage, where that matters) to the cgroup `id`
    /// only: another cgroup found at the path is refused (`ActuatorError::Replaced`).
    fn restore(&self, cg: &Cgroup, id: CgId, original: Setting) -> Result<Restored, ActuatorError>;
    /// The policy's bounds, for logs: `(min, max)`.
    fn bounds(&self, policy: &Policy) -> (String, String);
    /// A setting as a metric value in [`unit`](Self::unit) (`+Inf`: no limit; the metrics export no sample then, see `Metrics::set_limit`).
    fn gauge(&self, setting: Setting) -> f64;
    /// The unit of its metric values (the `unit` label, as kube-state-metrics names them).
    fn unit(&self) -> &'static str;
}
