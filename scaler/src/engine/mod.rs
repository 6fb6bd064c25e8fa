//! The hot loop: ring buffer -> decode -> handler, on a dedicated OS thread.
//!
//! A plain thread blocked in `poll(2)` on the ring buffer's fd is woken by the kernel's
//! `BPF_RB_FORCE_WAKEUP` and runs the handler (decide and write) before anything else: no async
//! hop, no allocation, no I/O besides the handler's limit write. A second fd (an eventfd) stops
//! the loop; a timeout lets the handler do periodic work (draining events submitted without a
//! wakeup, slow-path commands).
//!
//! [`Engine`] runs that loop with the scaling handler ([`scaling`]): event -> decider -> limit
//! writer -> feedback, for every resource through one set of [`Command`]s.
//!
//! Where the process may run on several CPUs, the engine runs one such thread per CPU, each
//! pinned to its CPU and sharing one handler and one ring buffer under a lock
//! ([`run_shared_loop`]): the kernel wakes every waiter of the ring buffer, and the one on the
//! CPU where the event happened (the allocating task's, awake) runs first, without the
//! inter-processor interrupt and the wake-up from idle that reaching another CPU costs (about
//! 20-40 µs of the reaction on the VMs measured; see docs/architecture.md, "Reaction latency").

mod scaling;
#[cfg(test)]
use self::scaling::ScalingHandler;
#[cfg(test)]
mod tests;

pub use self::scaling::{
    snapshot_via, ActionRecord, Budget, Command, CommandRefused, CommandSender, Engine,
    EngineConfig, EngineFault, EngineStats, FaultKind, FaultTrigger, ManageRequest, Policy, Record,
    RefusalRecord, Signal, Snapshot, COMMAND_WAIT, DEFAULT_COMMAND_CAPACITY,
    DEFAULT_REALTIME_PRIORITY, MAX_ENGINE_THREADS, REPORTED_LIMIT_FRESH_NS,
};

use std::{
    os::fd::{AsFd, BorrowedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::eventfd::{EfdFlags, EventFd},
};

use crate::{
    clock::monotonic_ns,
    events::{decode, DecodeError, MemEvent},
};

/// Stops a [`run_ring_loop`] from another thread, or wakes it to handle commands.
#[derive(Clone)]
pub struct StopHandle {
    fd: Arc<EventFd>,
    wake: Arc<EventFd>,
}

impl StopHandle {
    pub fn new() -> std::io::Result<Self> {
        let new = || {
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(std::io::Error::from)
        };
        Ok(Self {
            fd: Arc::new(new()?),
            wake: Arc::new(new()?),
        })
    }

    /// Wakes the loop so that it runs [`Handler::on_tick`] now (for commands).
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }

    /// Asks the loop to stop; it returns after the events already read are handled.
    pub fn stop(&self) {
        let _ = self.fd.write(1);
    }
}

/// Where the loop reads kernel records from: the BPF ring buffer, or a fake one in tests.
pub trait RecordSource {
    /// A file descriptor that polls readable when records are waiting.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Hands the next record to `f` and consumes it; false when there is none.
    fn next_record(&mut self, f: impl FnOnce(&[u8])) -> bool;
}

impl RecordSource for RingBuf<MapData> {
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }

    fn next_record(&mut self, f: impl FnOnce(&[u8])) -> bool {
        match self.next() {
            Some(item) => {
                f(&item);
                true
            }
            None => false,
        }
    }
}

/// Reads one record and decodes it; the record is released back to the kernel before the
/// handler runs. `None` when the source is empty.
fn next_event(source: &mut impl RecordSource) -> Option<Result<MemEvent, DecodeError>> {
    let mut out = None;
    source.next_record(|bytes| out = Some(decode(bytes)));
    out
}

/// Counters of the consumer side.
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Records read from the ring buffer.
    pub records: AtomicU64,
    /// Records that did not decode.
    pub decode_errors: AtomicU64,
    /// Times the loop was woken with data.
    pub wakeups: AtomicU64,
    /// CLOCK_MONOTONIC ns of the loop's last sign of life: bumped before each poll (at least
    /// every `tick` when idle) and every [`HEARTBEAT_EVERY`] records of a long drain. The
    /// agent's liveness answer (`/healthz`) and watchdog read it.
    pub heartbeat_ns: AtomicU64,
}

/// A long drain bumps [`LoopStats::heartbeat_ns`] this often (in records), so that a storm of
/// events is not mistaken for a stall.
pub const HEARTBEAT_EVERY: u64 = 4096;

/// What the loop asks of its handler.
pub trait Handler {
    /// One decoded event. Hot path: no allocation, no blocking I/O besides the limit write.
    fn on_event(&mut self, ev: &MemEvent);
    /// A record that did not decode (counted; the default ignores it).
    fn on_decode_error(&mut self, _err: DecodeError) {}
    /// Called after each drain of the ring buffer and at least every `tick`; slow-path work.
    /// Returns true when work is left over (a bounded batch was done): the loop then polls the
    /// ring buffer without waiting and calls it again, so slow-path work never holds back
    /// events for longer than one batch.
    fn on_tick(&mut self) -> bool {
        false
    }
}

/// Hands every event waiting in `source` to `handler` (counting them), then runs its tick;
/// returns what the tick returned (work left over).
fn drain_and_tick(
    source: &mut impl RecordSource,
    stats: &LoopStats,
    handler: &mut impl Handler,
) -> bool {
    // Events submitted without a wakeup are read here too.
    let mut n = 0u64;
    while let Some(ev) = next_event(source) {
        n += 1;
        if n.is_multiple_of(HEARTBEAT_EVERY) {
            stats.heartbeat_ns.store(monotonic_ns(), Ordering::Relaxed);
        }
        match ev {
            Ok(ev) => handler.on_event(&ev),
            Err(e) => {
                stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                handler.on_decode_error(e);
            }
        }
    }
    if n > 0 {
        stats.records.fetch_add(n, Ordering::Relaxed);
    }
    let more = handler.on_tick();
    stats.heartbeat_ns.store(monotonic_ns(), Ordering::Relaxed);
    more
}

/// Handles what is already in `source` before the loop stops.
fn final_drain(source: &mut impl RecordSource, handler: &mut impl Handler) {
    while let Some(ev) = next_event(source) {
        if let Ok(ev) = ev {
            handler.on_event(&ev);
        }
    }
}

/// What one `poll` of the loop found.
struct Woken {
    stop: bool,
}

/// Waits (up to `timeout`) for records, a stop or a wake; one `poll(2)`, whose result says
/// all (no second system call on the way to the handler).
fn wait(
    ring: BorrowedFd<'_>,
    stop: &StopHandle,
    timeout: PollTimeout,
    stats: &LoopStats,
) -> std::io::Result<Woken> {
    let mut fds = [
        PollFd::new(ring, PollFlags::POLLIN),
        PollFd::new(stop.fd.as_fd(), PollFlags::POLLIN),
        PollFd::new(stop.wake.as_fd(), PollFlags::POLLIN),
    ];
    match poll(&mut fds, timeout) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok(Woken { stop: false }),
        Err(e) => return Err(e.into()),
    }
    let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
    if ready(&fds[0]) {
        stats.wakeups.fetch_add(1, Ordering::Relaxed);
    }
    if ready(&fds[2]) {
        let _ = stop.wake.read();
    }
    Ok(Woken {
        stop: ready(&fds[1]),
    })
}

fn poll_timeout(tick: Duration) -> PollTimeout {
    PollTimeout::try_from(tick.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::NONE)
}

/// Reads `source` until `stop`, calling `handler` for each event.
pub fn run_ring_loop(
    source: &mut impl RecordSource,
    stop: &StopHandle,
    tick: Duration,
    stats: &LoopStats,
    handler: &mut impl Handler,
) -> std::io::Result<()> {
    let timeout = poll_timeout(tick);
    loop {
        let more = drain_and_tick(source, stats, handler);
        let woken = wait(
            source.fd(),
            stop,
            if more { PollTimeout::ZERO } else { timeout },
            stats,
        )?;
        if woken.stop {
            // Handle what is already there, then stop.
            final_drain(source, handler);
            return Ok(());
        }
    }
}

/// A record source and its handler, shared by the threads of [`run_shared_loop`].
pub struct Shared<S, H> {
    pub source: S,
    pub handler: H,
}

/// One of several threads reading one source into one handler (see the module's
/// documentation): each waits in `poll(2)` on `ring` (the source's descriptor, which must stay
/// open while `shared` lives) and, woken, takes the lock and drains. A thread woken after
/// another drained finds nothing and waits again. `tick`: the thread that runs the periodic
/// work (`None`: this one waits for records, commands or a stop only, so that idle threads
/// cost no wake-ups). Ends with an error when another thread panicked holding the lock.
pub fn run_shared_loop<S: RecordSource, H: Handler>(
    shared: &Mutex<Shared<S, H>>,
    ring: BorrowedFd<'_>,
    stop: &StopHandle,
    tick: Option<Duration>,
    stats: &LoopStats,
) -> std::io::Result<()> {
    let timeout = tick.map_or(PollTimeout::NONE, poll_timeout);
    let lock = || {
        shared
            .lock()
            .map_err(|_| std::io::Error::other("another engine thread panicked"))
    };
    loop {
        let more = {
            let mut g = lock()?;
            let Shared { source, handler } = &mut *g;
            drain_and_tick(source, stats, handler)
        };
        let woken = wait(
            ring,
            stop,
            if more { PollTimeout::ZERO } else { timeout },
            stats,
        )?;
        if woken.stop {
            let mut g = lock()?;
            let Shared { source, handler } = &mut *g;
            final_drain(source, handler);
            return Ok(());
        }
    }
}
