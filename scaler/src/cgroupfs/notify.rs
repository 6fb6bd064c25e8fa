//! The kernel's own cgroup notification mechanisms (the non-eBPF ways to learn of pressure;
//! the benchmark's competitors and fallbacks):
//!
//! - [`V1Event`]: cgroup v1 `cgroup.event_control` + eventfd: memory usage (or memsw usage)
//!   threshold crossings, OOM, and `memory.pressure_level`.
//! - [`PsiTrigger`]: PSI triggers on a `*.pressure` file (v2 cgroups, the v2 hierarchy of a
//!   hybrid host, or `/proc/pressure/*`), signalled with `POLLPRI`.
//! - [`FileWatch`]: change notification of a kernfs file such as v2 `memory.events` or
//!   `cgroup.events` (`POLLPRI`, re-armed by reading the file).
//!
//! Everything is a plain file descriptor ([`AsFd`]): wait with the blocking helpers here, or
//! register the fd with epoll / tokio's `AsyncFd` (eventfds are readable; PSI triggers and
//! kernfs files report `EPOLLPRI`).

use std::{
    fs::{File, OpenOptions},
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd},
        unix::fs::{FileExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout},
    sys::eventfd::{EfdFlags, EventFd},
};

use super::{io_is_gone, Cgroup, CgroupError, CgroupVersion};

/// Waits until `fd` reports one of `events` (or an error/hangup), or until `timeout`.
/// Returns the reported events, or `None` on timeout. Retries on EINTR.
pub fn wait_fd(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    timeout: Option<Duration>,
) -> io::Result<Option<PollFlags>> {
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
    };
    loop {
        let mut fds = [PollFd::new(fd, events)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(fds[0].revents()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// `memory.pressure_level` levels (v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressureLevel {
    /// The kernel is reclaiming memory for new allocations.
    Low,
    /// Reclaim is under way and swapping/evicting working set.
    Medium,
    /// Thrashing, about to OOM.
    Critical,
}

impl PressureLevel {
    fn as_str(self) -> &'static str {
        match self {
            PressureLevel::Low => "low",
            PressureLevel::Medium => "medium",
            PressureLevel::Critical => "critical",
        }
    }
}

/// What a [`V1Event`] listens for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1EventKind {
    /// `memory.usage_in_bytes` crossing the threshold (either direction).
    UsageThreshold(u64),
    /// `memory.memsw.usage_in_bytes` crossing the threshold.
    MemswThreshold(u64),
    /// An OOM in the cgroup (`memory.oom_control`).
    Oom,
    /// `memory.pressure_level` at this level or above (`default` mode: also events propagated
    /// from descendants unless a lower listener consumed them).
    Pressure(PressureLevel),
}

/// A cgroup v1 memory event delivered through an eventfd (`cgroup.event_control`). The kernel
/// also signals the eventfd once when the cgroup is removed; check [`Cgroup::exists`].
#[derive(Debug)]
pub struct V1Event {
    eventfd: EventFd,
    /// The watched file; the kernel only needs it at registration, kept for its path.
    _target: File,
    path: PathBuf,
    kind: V1EventKind,
}

impl V1Event {
    /// Registers `kind` on `cgroup` (must be a v1 memory cgroup).
    pub fn arm(cgroup: &Cgroup, kind: V1EventKind) -> Result<Self, CgroupError> {
        if cgroup.version() != CgroupVersion::V1 {
            return Err(CgroupError::MissingFile {
                path: cgroup.file("cgroup.event_control"),
                what: "cgroup v1 event notification (cgroup v2 has no cgroup.event_control)",
            });
        }
        let (file, args) = match kind {
            V1EventKind::UsageThreshold(t) => ("memory.usage_in_bytes", t.to_string()),
            V1EventKind::MemswThreshold(t) => ("memory.memsw.usage_in_bytes", t.to_string()),
            V1EventKind::Oom => ("memory.oom_control", String::new()),
            V1EventKind::Pressure(level) => ("memory.pressure_level", level.as_str().to_string()),
        };
        let path = cgroup.file(file);
        let target = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| read_error(cgroup, path.clone(), source))?;
        let eventfd =
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(|e| {
                CgroupError::Read {
                    path: PathBuf::from("eventfd"),
                    source: e.into(),
                }
            })?;
        let mut line = format!("{} {}", eventfd.as_raw_fd(), target.as_raw_fd());
        if !args.is_empty() {
            line.push(' ');
            line.push_str(&args);
        }
        cgroup.write("cgroup.event_control", &line)?;
        Ok(V1Event {
            eventfd,
            _target: target,
            path,
            kind,
        })
    }

    /// What this event listens for.
    pub fn kind(&self) -> V1EventKind {
        self.kind
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of notifications since the last call (0 when none; never blocks).
    pub fn take(&self) -> io::Result<u64> {
        match self.eventfd.read() {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits up to `timeout` (forever with `None`) and returns the number of notifications
    /// (0 on timeout).
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<u64> {
        match wait_fd(self.eventfd.as_fd(), PollFlags::POLLIN, timeout)? {
            None => Ok(0),
            Some(_) => self.take(),
        }
    }
}

impl AsFd for V1Event {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.eventfd.as_fd()
    }
}

/// The resource of a PSI file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsiResource {
    /// `memory.pressure`.
    Memory,
    /// `cpu.pressure`.
    Cpu,
    /// `io.pressure`.
    Io,
}

impl PsiResource {
    /// The cgroup file name.
    pub fn file_name(self) -> &'static str {
        match self {
            PsiResource::Memory => "memory.pressure",
            PsiResource::Cpu => "cpu.pressure",
            PsiResource::Io => "io.pressure",
        }
    }
}

/// Which PSI line a trigger watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsiKind {
    /// At least one task stalled.
    Some,
    /// All non-idle tasks stalled at once.
    Full,
}

/// A PSI trigger: the kernel signals `POLLPRI` when the stall time within `window` exceeds
/// `stall`. The trigger lives as long as this value (the file descriptor).
#[derive(Debug)]
pub struct PsiTrigger {
    file: File,
    path: PathBuf,
}

impl PsiTrigger {
    /// Arms a trigger on `cgroup`'s pressure file for `resource`.
    pub fn arm(
        cgroup: &Cgroup,
        resource: PsiResource,
        kind: PsiKind,
        stall: Duration,
        window: Duration,
    ) -> Result<Self, CgroupError> {
        let path = cgroup.file(resource.file_name());
        if !path.exists() {
            if !cgroup.exists() {
                return Err(CgroupError::Gone {
                    path: cgroup.dir().to_path_buf(),
                });
            }
            return Err(CgroupError::MissingFile {
                path,
                what: "PSI (pressure stall information; cgroup v2 with CONFIG_PSI)",
            });
        }
        Self::arm_path(&path, kind, stall, window)
    }

    /// Arms a trigger on any PSI file (e.g. `/proc/pressure/memory`).
    pub fn arm_path(
        path: &Path,
        kind: PsiKind,
        stall: Duration,
        window: Duration,
    ) -> Result<Self, CgroupError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| CgroupError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let value = format!(
            "{} {} {}\0",
            match kind {
                PsiKind::Some => "some",
                PsiKind::Full => "full",
            },
            stall.as_micros(),
            window.as_micros()
        );
        // The kernel wants the trailing NUL counted in the write; a plain write, since
        // /proc/pressure/* files cannot seek (pwrite fails there with ESPIPE).
        io::Write::write(&mut &file, value.as_bytes()).map_err(|source| {
            CgroupError::PsiTrigger {
                path: path.to_path_buf(),
                value: value.trim_end_matches('\0').to_string(),
                source,
            }
        })?;
        Ok(PsiTrigger {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The pressure file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for the trigger. `Ok(true)` when it fired, `Ok(false)` on
    /// timeout; an error when the file reports `POLLERR` (the cgroup was removed).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, CgroupError> {
        let r = wait_fd(self.file.as_fd(), PollFlags::POLLPRI, timeout).map_err(|source| {
            CgroupError::Read {
                path: self.path.clone(),
                source,
            }
        })?;
        match r {
            None => Ok(false),
            Some(ev) if ev.contains(PollFlags::POLLERR) => Err(CgroupError::Gone {
                path: self.path.clone(),
            }),
            Some(ev) => Ok(ev.contains(PollFlags::POLLPRI)),
        }
    }
}

impl AsFd for PsiTrigger {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Change notification of one kernfs file (e.g. v2 `memory.events`, `cgroup.events`): the
/// kernel marks the file `POLLPRI` when it changes; reading it re-arms the notification.
#[derive(Debug)]
pub struct FileWatch {
    file: File,
    path: PathBuf,
}

impl FileWatch {
    /// Opens `cgroup`'s file `name` and reads it once to arm the notification.
    pub fn open(cgroup: &Cgroup, name: &str) -> Result<Self, CgroupError> {
        let path = cgroup.file(name);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| read_error(cgroup, path.clone(), source))?;
        let w = FileWatch { file, path };
        let mut buf = [0u8; 512];
        w.read_into(&mut buf)?;
        Ok(w)
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the current content into `buf` (one `pread` at offset 0; re-arms the
    /// notification) and returns the number of bytes read.
    pub fn read_into(&self, buf: &mut [u8]) -> Result<usize, CgroupError> {
        self.file.read_at(buf, 0).map_err(|source| {
            if io_is_gone(&source) {
                CgroupError::Gone {
                    path: self.path.clone(),
                }
            } else {
                CgroupError::Read {
                    path: self.path.clone(),
                    source,
                }
            }
        })
    }

    /// Waits up to `timeout` for a change. `Ok(true)` when the file changed (read it to
    /// re-arm), `Ok(false)` on timeout. Removal of the cgroup also wakes the wait; the read
    /// that follows then fails with [`CgroupError::Gone`].
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, CgroupError> {
        let r = wait_fd(self.file.as_fd(), PollFlags::POLLPRI, timeout).map_err(|source| {
            CgroupError::Read {
                path: self.path.clone(),
                source,
            }
        })?;
        Ok(r.is_some_and(|ev| ev.intersects(PollFlags::POLLPRI | PollFlags::POLLERR)))
    }
}

impl AsFd for FileWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn read_error(cgroup: &Cgroup, path: PathBuf, source: io::Error) -> CgroupError {
    if io_is_gone(&source) && !cgroup.exists() {
        CgroupError::Gone {
            path: cgroup.dir().to_path_buf(),
        }
    } else if source.raw_os_error() == Some(libc::ENOENT) {
        CgroupError::MissingFile {
            path,
            what: "this notification (file absent in this cgroup or on this kernel)",
        }
    } else {
        CgroupError::Read { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake(version: CgroupVersion, files: &[(&str, &str)]) -> (tempfile::TempDir, Cgroup) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cg");
        fs::create_dir(&dir).unwrap();
        for (n, c) in files {
            fs::write(dir.join(n), c).unwrap();
        }
        (tmp, Cgroup::new(dir, "/cg".into(), version))
    }

    #[test]
    fn v1_event_registration_line() {
        let (_t, cg) = fake(
            CgroupVersion::V1,
            &[
                ("memory.usage_in_bytes", "0\n"),
                ("memory.oom_control", "oom_kill_disable 0\n"),
                ("cgroup.event_control", ""),
            ],
        );
        let ev = V1Event::arm(&cg, V1EventKind::UsageThreshold(64 << 20)).unwrap();
        let line = fs::read_to_string(cg.file("cgroup.event_control")).unwrap();
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.len(), 3, "{line:?}");
        assert_eq!(parts[0], ev.as_fd().as_raw_fd().to_string());
        assert_eq!(parts[2], (64u64 << 20).to_string());
        // Nothing signalled: take() does not block and reports 0; wait() times out.
        assert_eq!(ev.take().unwrap(), 0);
        assert_eq!(ev.wait(Some(Duration::from_millis(1))).unwrap(), 0);
        // A signal on the eventfd is counted.
        ev.eventfd.write(2).unwrap();
        assert_eq!(ev.wait(Some(Duration::from_secs(1))).unwrap(), 2);

        fs::write(cg.file("cgroup.event_control"), "").unwrap();
        let _oom = V1Event::arm(&cg, V1EventKind::Oom).unwrap();
        let line = fs::read_to_string(cg.file("cgroup.event_control")).unwrap();
        assert_eq!(line.lines().next().unwrap().split_whitespace().count(), 2);
    }

    #[test]
    fn v1_event_errors() {
        let (_t, cg) = fake(CgroupVersion::V2, &[]);
        assert!(matches!(
            V1Event::arm(&cg, V1EventKind::Oom),
            Err(CgroupError::MissingFile { .. })
        ));
        let (_t, cg) = fake(CgroupVersion::V1, &[("cgroup.event_control", "")]);
        let err = V1Event::arm(&cg, V1EventKind::MemswThreshold(1)).unwrap_err();
        assert!(matches!(err, CgroupError::MissingFile { .. }), "{err}");
        fs::remove_dir_all(cg.dir()).unwrap();
        assert!(V1Event::arm(&cg, V1EventKind::Oom).unwrap_err().is_gone());
    }

    #[test]
    fn psi_trigger_on_a_missing_file() {
        let (_t, cg) = fake(CgroupVersion::V1, &[]);
        let err = PsiTrigger::arm(
            &cg,
            PsiResource::Memory,
            PsiKind::Some,
            Duration::from_millis(100),
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(matches!(err, CgroupError::MissingFile { .. }), "{err}");
    }

    #[test]
    fn file_watch_reads_and_times_out() {
        let (_t, cg) = fake(CgroupVersion::V2, &[("memory.events", "oom_kill 0\n")]);
        let w = FileWatch::open(&cg, "memory.events").unwrap();
        let mut buf = [0u8; 64];
        let n = w.read_into(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"oom_kill 0\n");
        // Regular files never report POLLPRI.
        assert!(!w.wait(Some(Duration::from_millis(1))).unwrap());
    }
}
