//! The hot loop: ring buffer -> decode -> handler, on a dedicated OS thread.
//!
//! A plain thread blocked in `poll(2)` on the ring buffer's fd is woken by the kernel's
//! `BPF_RB_FORCE_WAKEUP` and runs the handler (decide and write) before anything else: no async
//! hop, no allocation, no I/O besides the handler's limit write. A second fd (an eventfd) stops
//! the loop; a timeout lets the handler do periodic work (draining events submitted without a
//! wakeup, slow-path commands).

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::eventfd::{EfdFlags, EventFd},
};

use crate::events::{decode, DecodeError, MemEvent};

/// Stops a [`run_ring_loop`] from another thread.
#[derive(Clone)]
pub struct StopHandle {
    fd: Arc<EventFd>,
}

impl StopHandle {
    pub fn new() -> std::io::Result<Self> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(std::io::Error::from)?;
        Ok(Self { fd: Arc::new(fd) })
    }

    /// Asks the loop to stop; it returns after the events already read are handled.
    pub fn stop(&self) {
        let _ = self.fd.write(1);
    }

    fn is_stopped(&self) -> bool {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }
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
}

/// What the loop asks of its handler.
pub trait Handler {
    /// One decoded event. Hot path: no allocation, no blocking I/O besides the limit write.
    fn on_event(&mut self, ev: &MemEvent);
    /// A record that did not decode (counted; the default ignores it).
    fn on_decode_error(&mut self, _err: DecodeError) {}
    /// Called after each drain of the ring buffer and at least every `tick`; slow-path work.
    fn on_tick(&mut self) {}
}

/// Reads the ring buffer until `stop`, calling `handler` for each event.
pub fn run_ring_loop(
    ring: &mut RingBuf<MapData>,
    stop: &StopHandle,
    tick: Duration,
    stats: &LoopStats,
    handler: &mut impl Handler,
) -> std::io::Result<()> {
    let timeout = PollTimeout::try_from(tick.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::NONE);
    loop {
        // Drain first: events submitted without a wakeup are read here too.
        let mut n = 0u64;
        while let Some(item) = ring.next() {
            n += 1;
            match decode(&item) {
                Ok(ev) => {
                    drop(item);
                    handler.on_event(&ev);
                }
                Err(e) => {
                    drop(item);
                    stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    handler.on_decode_error(e);
                }
            }
        }
        if n > 0 {
            stats.records.fetch_add(n, Ordering::Relaxed);
        }
        handler.on_tick();
        let ring_fd = ring.as_fd();
        let mut fds = [
            PollFd::new(ring_fd, PollFlags::POLLIN),
            PollFd::new(stop.fd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let stop_ready = fds[1].revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        if fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
            stats.wakeups.fetch_add(1, Ordering::Relaxed);
        }
        if stop_ready || stop.is_stopped() {
            // Handle what is already there, then stop.
            while let Some(item) = ring.next() {
                if let Ok(ev) = decode(&item) {
                    drop(item);
                    handler.on_event(&ev);
                }
            }
            return Ok(());
        }
        let _ = ring_fd.as_raw_fd();
    }
}
