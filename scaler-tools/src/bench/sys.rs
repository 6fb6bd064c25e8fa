//! Small system helpers of the benchmark: eventfds, poll over several fds, SCHED_FIFO, thread
//! and process CPU time. (CLOCK_MONOTONIC is [`scaler::clock::monotonic_ns`], the clock of the
//! limit writes and of the kernel programs' events.)

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// CPU time of the calling thread, in nanoseconds (the same figure as `RUSAGE_THREAD`, with
/// nanosecond resolution).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An eventfd (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd with counter 0.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds 1 to the counter (wakes pollers).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Reads and resets the counter; 0 if it was not signalled.
    pub fn take(&self) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a valid u64.
        let n = unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            v
        } else {
            0
        }
    }

    /// The raw fd.
    pub fn fd(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// Polls `fds` (fd, events) for up to `timeout` (`None`: forever); returns the `revents` of
/// each, all zero on timeout. EINTR counts as a timeout.
pub fn poll(fds: &[(i32, i16)], timeout: Option<Duration>) -> std::io::Result<Vec<i16>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    let ms = match timeout {
        None => -1,
        Some(d) => i32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
    };
    // SAFETY: pfds is a valid array of pollfd.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(pfds.iter().map(|p| p.revents).collect())
}

/// Makes the calling thread SCHED_FIFO at `priority`; returns whether that worked (it needs
/// CAP_SYS_NICE or an RLIMIT_RTPRIO allowance).
pub fn set_fifo(priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: valid sched_param; 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// User + system CPU time of process `pid` itself (not its children), from `/proc/<pid>/stat`,
/// in nanoseconds.
pub fn process_cpu_ns(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) and 15 (stime) overall are indices 11 and 12 after the state field.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_signals_and_polls() {
        let e = EventFd::new().unwrap();
        assert_eq!(
            poll(&[(e.fd(), libc::POLLIN)], Some(Duration::ZERO)).unwrap(),
            [0]
        );
        e.signal();
        e.signal();
        let r = poll(&[(e.fd(), libc::POLLIN)], Some(Duration::from_secs(1))).unwrap();
        assert_ne!(r[0] & libc::POLLIN, 0);
        assert_eq!(e.take(), 2);
        assert_eq!(e.take(), 0);
    }

    #[test]
    fn clocks_advance() {
        use scaler::clock::monotonic_ns;
        let a = monotonic_ns();
        let c = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(monotonic_ns() > a);
        assert!(thread_cpu_ns() > c);
        assert!(process_cpu_ns(std::process::id() as i32).is_some());
    }
}
