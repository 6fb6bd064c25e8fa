//! The engine's side of the decision loop, for the tests of both deciders (through
//! [`Decide`]).

use super::{Action, CgId, CpuSignal, Decide, Decision, MemorySignal, WriteOutcome};

/// A signal's kernel timestamp.
pub(crate) trait Timed {
    fn ts_ns(&self) -> u64;
}

impl Timed for MemorySignal {
    fn ts_ns(&self) -> u64 {
        MemorySignal::ts_ns(self)
    }
}

impl Timed for CpuSignal {
    fn ts_ns(&self) -> u64 {
        CpuSignal::ts_ns(self)
    }
}

/// The decider plus the engine's side of the loop: perform every action, report completion
/// `write_ns` after the signal. `S` is whatever else a resource's tests simulate (CPU: the
/// cgroups' `cpu.stat` counters).
pub(crate) struct Loop<D, S = ()> {
    pub d: D,
    pub out: Decision,
    pub actions: Vec<Action>,
    pub stat: S,
    write_ns: u64,
}

impl<D: Decide, S: Default> Loop<D, S>
where
    D::Signal: Timed,
{
    /// `d` in a loop whose writes take `write_ns`.
    pub fn with(d: D, write_ns: u64) -> Self {
        Self {
            d,
            out: Decision::new(),
            actions: Vec::new(),
            stat: S::default(),
            write_ns,
        }
    }

    /// Signal, then apply every action `write_ns` after the signal. Returns the decision.
    pub fn signal(&mut self, id: CgId, s: D::Signal) -> Decision {
        self.d.on_signal(id, s, &mut self.out);
        let done = s.ts_ns() + self.write_ns;
        for a in self.out.actions() {
            self.d.applied(a, done, WriteOutcome::Written);
            self.actions.push(*a);
        }
        self.out.clone()
    }

    /// Signal without applying (a write still in flight).
    pub fn signal_only(&mut self, id: CgId, s: D::Signal) -> Decision {
        self.d.on_signal(id, s, &mut self.out);
        self.out.clone()
    }
}

/// The one action of a decision.
pub(crate) fn only(d: &Decision) -> Action {
    assert_eq!(d.actions().len(), 1, "{d:?}");
    d.actions()[0]
}
