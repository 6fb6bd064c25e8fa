//! What scaler does to its own process: lock its memory, drop capabilities (`capset`,
//! `prctl`), list its threads.

use super::{kernel_last_cap, CapSet, Capability, PrivilegeError, ProcessCaps};

/// Locks the process's memory, current and future (`mlockall(MCL_CURRENT | MCL_FUTURE)`), so
/// that memory pressure in the agent's own cgroup cannot page out the code and data of the
/// hot path. Needs CAP_IPC_LOCK unless RLIMIT_MEMLOCK covers the whole process. Not inherited
/// by children (fork drops memory locks), so `scaler exec`'s command is unaffected.
pub fn lock_memory() -> Result<(), PrivilegeError> {
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Sys {
            call: "mlockall(MCL_CURRENT|MCL_FUTURE)",
            source: std::io::Error::last_os_error(),
        })
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> Result<[CapData; 2], PrivilegeError> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: header and a 2-element data array, as the v3 ABI requires.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) };
    if r != 0 {
        return Err(PrivilegeError::Sys {
            call: "capget",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(d)
}

fn capset(d: &[CapData; 2]) -> Result<(), PrivilegeError> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and a 2-element data array, as the v3 ABI requires.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
    if r != 0 {
        return Err(PrivilegeError::Sys {
            call: "capset",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Splits a 64-bit mask into the v3 ABI's two 32-bit words.
fn words(m: u64) -> [u32; 2] {
    [m as u32, (m >> 32) as u32]
}

/// What [`drop_after_load`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The effective set before.
    pub before: CapSet,
    /// The effective (= permitted) set after.
    pub after: CapSet,
    /// Whether the bounding set was reduced too (so no later exec can regain the rest).
    pub bounding: bool,
}

/// Drops every capability of the calling thread that is not in `keep`: effective, permitted,
/// inheritable and ambient sets, and, with `bounding`, the bounding set too (needs
/// CAP_SETPCAP; without it the bounding set is left as it is and `Dropped::bounding` is
/// false). Threads started afterwards inherit the reduced sets. Do not pass `bounding` when
/// the process will exec a command that should run with the caller's privileges
/// (`scaler exec`): a root execve gets its capabilities from the bounding set.
pub fn drop_after_load(keep: CapSet, bounding: bool) -> Result<Dropped, PrivilegeError> {
    let before = ProcessCaps::current()?;
    let keep = keep.and(before.permitted);
    let mut bounding_done = false;
    if bounding && before.effective.has(Capability::SetPcap) {
        let last = kernel_last_cap().unwrap_or(40).min(63);
        for n in 0..=last {
            if keep.has_number(n) || !before.bounding.has_number(n) {
                continue;
            }
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(n), 0, 0, 0) } != 0 {
                return Err(PrivilegeError::Sys {
                    call: "prctl(PR_CAPBSET_DROP)",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        bounding_done = true;
    }
    // Ambient capabilities would survive an exec: clear them (EINVAL on kernels without them).
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let _ = capget()?;
    let w = words(keep.0);
    let data = [
        CapData {
            effective: w[0],
            permitted: w[0],
            inheritable: 0,
        },
        CapData {
            effective: w[1],
            permitted: w[1],
            inheritable: 0,
        },
    ];
    capset(&data)?;
    let after = ProcessCaps::current()?;
    Ok(Dropped {
        before: before.effective,
        after: after.effective,
        bounding: bounding_done,
    })
}

/// Threads of this process other than the calling one, by tid and name: none when the caller
/// is the only thread, as [`after_load`](super::after_load) expects.
pub fn other_threads() -> Vec<(u32, String)> {
    // SAFETY: no preconditions.
    let me = unsafe { libc::gettid() } as u32;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            (tid != me).then(|| (tid, name.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_the_mask() {
        assert_eq!(words(0x1ff_feff_ffff), [0xfeff_ffff, 0x1ff]);
        assert_eq!(words(CapSet::of(&[Capability::Bpf]).0), [0, 1 << 7]);
    }

    #[test]
    fn other_threads_are_every_thread_but_the_caller() {
        // SAFETY: no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        let (tid, others) = std::thread::spawn(|| {
            // SAFETY: as above.
            (unsafe { libc::gettid() } as u32, other_threads())
        })
        .join()
        .unwrap();
        assert!(others.iter().any(|(t, _)| *t == me), "{others:?}");
        assert!(!others.iter().any(|(t, _)| *t == tid), "{others:?}");
    }

    /// The drop is made in one thread, before the threads it starts: those (one blocked in a
    /// read, one in sigwait, like the agent's signal thread) have the kept set only, and the
    /// reduced bounding set, read from inside and from `/proc` as an outside observer would.
    /// It runs in a thread of its own so that the rest of the test process keeps its
    /// capabilities (they are per thread). Needs CAP_BPF to begin with (root); skipped
    /// otherwise.
    #[test]
    fn threads_started_after_the_drop_inherit_the_kept_set() {
        let start = ProcessCaps::current().unwrap();
        if !start.effective.has(Capability::Bpf) {
            eprintln!("skipping: no CAP_BPF to drop");
            return;
        }
        let keep = CapSet::of(&[Capability::SysNice, Capability::DacOverride]);
        let bounding = start.effective.has(Capability::SetPcap);
        let (d, seen) = std::thread::spawn(move || {
            // SIGUSR1 is for the waiter's sigwait: blocked before it starts (inherited).
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGUSR1);
            set.thread_block().unwrap();
            let d = drop_after_load(keep, bounding).unwrap();
            let (r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
            let (tids, started) = std::sync::mpsc::channel();
            let tx = tids.clone();
            let reader = std::thread::spawn(move || {
                use std::io::Read;
                // SAFETY: no preconditions.
                tx.send(unsafe { libc::gettid() }).unwrap();
                let _ = (&r).read(&mut [0u8; 1]);
                ProcessCaps::current().unwrap()
            });
            let waiter = std::thread::spawn(move || {
                // SAFETY: no preconditions.
                tids.send(unsafe { libc::gettid() }).unwrap();
                let _ = set.wait();
                ProcessCaps::current().unwrap()
            });
            // While they block (or are about to): their sets as /proc shows them.
            let mut seen = Vec::new();
            for tid in [started.recv().unwrap(), started.recv().unwrap()] {
                let text =
                    std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
                seen.push((
                    format!("thread {tid}"),
                    ProcessCaps::parse_status(&text).unwrap(),
                ));
            }
            use std::io::Write;
            w.write_all(b"x").unwrap();
            {
                use std::os::unix::thread::JoinHandleExt;
                // SAFETY: the thread is alive (joined below).
                let r = unsafe { libc::pthread_kill(waiter.as_pthread_t(), libc::SIGUSR1) };
                assert_eq!(r, 0);
            }
            seen.push(("reader".into(), reader.join().unwrap()));
            seen.push(("waiter".into(), waiter.join().unwrap()));
            seen.push(("dropping thread".into(), ProcessCaps::current().unwrap()));
            (d, seen)
        })
        .join()
        .unwrap();
        assert_eq!(d.after, keep.and(start.permitted));
        assert_eq!(d.bounding, bounding);
        assert_eq!(seen.len(), 5);
        for (who, c) in &seen {
            assert!(keep.contains(c.effective), "{who}: {c:?}");
            assert!(keep.contains(c.permitted), "{who}: {c:?}");
            assert!(!c.effective.has(Capability::Bpf), "{who}: {c:?}");
            if bounding {
                assert!(!c.bounding.has(Capability::Bpf), "{who}: {c:?}");
            }
        }
        // This thread, not started from the dropping one, keeps its sets.
        assert_eq!(ProcessCaps::current().unwrap(), start);
    }
}
