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
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
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
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(sig) => {
                    let _ = kill(nix::unistd::Pid::from_raw(pid), sig);
                }
                Err(_) => return,
            }
        })?;
    Ok(())
}

/// How often a cgroup's refused raises are logged at most (each is counted).
pub const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs a refused raise, at most once per [`REFUSAL_LOG_INTERVAL`] per cgroup and resource (the
/// ones in between are counted in `suppressed` of the next line, and all in
/// `scaler_raises_refused_total`). `node_budget`, for a memory raise refused for the budget,
/// says what gave the room (the agent's [`crate::node::NodeMemory::explain`]).
pub fn log_refusal(
    r: &crate::engine::RefusalRecord,
    path: Option<&str>,
    node_budget: Option<&str>,
    last: &mut std::collections::HashMap<
        (crate::decider::Resource, crate::decider::CgId),
        (std::time::Instant, u64),
    >,
) {
    let now = std::time::Instant::now();
    let key = (r.resource, r.refusal.cgroup);
    let suppressed = match last.get_mut(&key) {
        Some((at, n)) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => {
            *n += 1;
            return;
        }
        Some((at, n)) => {
            *at = now;
            std::mem::take(n)
        }
        None => {
            if last.len() >= 65536 {
                last.retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
            }
            last.insert(key, (now, 0));
            0
        }
    };
    let fmt = |v: u64| -> String {
        match (r.resource, v) {
            (_, u64::MAX) => "max".to_owned(),
            (crate::decider::Resource::Memory, v) => crate::units::format_size(v),
            (crate::decider::Resource::Cpu, v) => format!("{v}us"),
        }
    };
    let reason = r.skip.refusal().unwrap_or("?");
    let f = r.refusal;
    let cgroup = path.map_or_else(|| format!("id:{}", f.cgroup), str::to_owned);
    // What the bound left: the room above the limit in force.
    let room = f.allowed.map(|a| a.saturating_sub(f.limit));
    let why = match reason {
        "at_max" => "at the policy's max",
        "budget" if node_budget.is_some() => {
            "the node cannot back it (node_budget: what gives the room, less raises granted \
             since the sample)"
        }
        "budget" => {
            "the node cannot back it (memory: MemAvailable minus node.memory_reserve, less \
             raises granted since the sample; cpu: the CPU budget)"
        }
        "ancestor" => "a managed ancestor cannot back it (its limit minus its usage)",
        "rate_limited" => "over the policy's max_raises_per_sec",
        _ => "smaller than the policy's min_change",
    };
    tracing::warn!(
        cgroup = %cgroup,
        resource = r.resource.as_str(),
        reason,
        limit = f.limit,
        wanted = f.wanted,
        allowed = f.allowed,
        room,
        suppressed,
        node_budget,
        detail = %format!(
            "limit {}, wanted {}, allowed {}: {why}",
            fmt(f.limit),
            f.wanted.map_or_else(|| "?".to_owned(), fmt),
            f.allowed.map_or_else(|| "?".to_owned(), fmt),
        ),
        "raise refused"
    );
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
