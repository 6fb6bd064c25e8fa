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
