//! The one clock: `CLOCK_MONOTONIC` in nanoseconds, the clock of the kernel programs' event
//! timestamps (`bpf_ktime_get_ns`), so that `now - event.ts_ns` is a reaction latency.

/// `CLOCK_MONOTONIC` in nanoseconds (a vDSO call; no allocation, no system call).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_ns_moves_forward() {
        let a = super::monotonic_ns();
        let b = super::monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
