//! The subcommands.

pub mod watch;

use crate::engine::StopHandle;

/// Stops `stop` on SIGINT or SIGTERM (a background thread waits for them).
pub fn stop_on_signals(stop: StopHandle) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    // Block them in this thread (and the threads it starts later); the waiter takes them.
    set.thread_block()?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::info!("{sig}: detaching");
        }
        stop.stop();
    })?;
    Ok(())
}

pub mod agent;
pub mod exec;

/// Forwards SIGINT and SIGTERM to `pid` (the command we started), from a background thread.
pub fn forward_signals(pid: i32) -> anyhow::Result<()> {
    use nix::sys::signal::{kill, SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        match set.wait() {
            Ok(sig) => {
                let _ = kill(nix::unistd::Pid::from_raw(pid), sig);
            }
            Err(_) => return,
        }
    })?;
    Ok(())
}

/// The audit trail: one log line per limit change, with its measured latency.
pub fn audit(a: &crate::engine::ActionRecord, path: Option<&str>) {
    use crate::decider::WriteOutcome;
    let act = &a.action;
    let latency_us = a.latency_ns as f64 / 1000.0;
    match a.outcome {
        WriteOutcome::Failed => tracing::warn!(
            target: "scaler::audit",
            cgroup = path.unwrap_or("?"),
            cgroup_id = act.cgroup,
            resource = act.resource.as_str(),
            old = act.old,
            new = act.new,
            reason = act.reason.as_str(),
            errno = a.errno.unwrap_or(0),
            "limit write failed"
        ),
        outcome => tracing::info!(
            target: "scaler::audit",
            cgroup = path.unwrap_or("?"),
            cgroup_id = act.cgroup,
            resource = act.resource.as_str(),
            old = act.old,
            new = act.new,
            reason = act.reason.as_str(),
            latency_us,
            dry_run = outcome == WriteOutcome::DryRun,
            "limit changed"
        ),
    }
}
