//! The actuator: the hot path that rewrites cgroup limits.
//!
//! Limit files are opened once, ahead of time (`O_WRONLY|O_CLOEXEC`), and each change is one
//! `pwrite` per file of a number formatted on the stack: no allocation, no path lookup, no
//! `open`/`close` per write. Measured on the v1 development machine (6.18, 20,000 writes
//! alternating two values on an idle cgroup): 0.32 µs median, 0.35-0.49 µs p99 per
//! `memory.limit_in_bytes` or `cpu.cfs_quota_us` write; 0.56 µs for limit + memsw.
//!
//! Ordering rules the kernel enforces are handled here:
//! - v1: `memory.memsw.limit_in_bytes` (memory+swap) must stay >= `memory.limit_in_bytes`.
//!   When memsw is limited, the actuator keeps its owner's swap allowance (memsw - limit, as
//!   the owner last wrote them): raising writes memsw first, lowering writes the limit first.
//!   An unlimited memsw never binds and is left alone until its owner limits it.
//! - v2: an owner's `memory.high` below `memory.max` follows it at the owner's gap, or
//!   `memory.high` is kept at a fraction of `memory.max` ([`HighPolicy`]); raising writes
//!   `memory.max` first, lowering writes `memory.high` first (gentle reclaim before the hard
//!   limit moves).
//!
//! Owners: the files are opened read-write, and [`LimitWriter::refresh`] re-reads them (one
//! `pread` each) so that the engine never overwrites a value the limit's owner wrote after its
//! decision, and follows memsw / `memory.high` from the owner's latest values.
//!
//! Every writer of limits goes through [`LimitWriter`]: the engine (agent and `scaler exec`),
//! restores, the benchmark's competitors and the tests. Its implementations are
//! [`MemoryActuator`] (v1 `memory.limit_in_bytes` + `memory.memsw.limit_in_bytes`, v2
//! `memory.max` + `memory.high`) and [`CpuActuator`] (v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`,
//! v2 `cpu.max`); the cgroup version's file names, value syntax and ordering rules live behind
//! them ([`memory`], [`cpu`]).
//!
//! Errors say whether the kernel refused the value ([`ErrorKind::Refused`], e.g. v1's EBUSY
//! when lowering below usage), the cgroup is gone ([`ErrorKind::Gone`], ENOENT/ENODEV after
//! rmdir) or its path now holds another cgroup ([`ErrorKind::Replaced`]): callers react
//! differently to each.
//!
//! Identity: a writer never writes a cgroup it did not mean to. Its files are opened through
//! the cgroup's directory fd ([`CgroupDir`]: `O_PATH|O_DIRECTORY`, then `openat`), whose inode
//! (the cgroup's kernfs id, what the kernel's events and the agent's index carry) is checked
//! against the id the caller expects before any file is opened, and again after the current
//! values are read, so a path removed and recreated in between is refused
//! ([`ActuatorError::Replaced`]). From then on every write goes through descriptors bound to
//! that very directory: once the cgroup is removed they fail with ENODEV ([`ErrorKind::Gone`]);
//! they can never reach a cgroup recreated at the same path. Nothing on the hot path opens a
//! file by path. The directory fd itself is closed once the files are open: holding it would
//! cost a descriptor per managed cgroup, and the file descriptors pin the directory as well.

pub mod cpu;
pub mod memory;

use std::{
    fmt,
    fs::{File, OpenOptions},
    io,
    os::{
        fd::OwnedFd,
        unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{errno::Errno, fcntl::OFlag, sys::stat::Mode};

pub use self::{
    cpu::CpuActuator,
    memory::{HighPolicy, MemoryActuator, MemoryOptions, ReclaimOutcome},
};
pub use crate::clock::monotonic_ns;
use crate::{
    cgroupfs::{Cgroup, CgroupError, CgroupGuard, Controller, CpuQuota, Limit},
    decider::Resource,
};

/// A limit as a [`LimitWriter`] reads or writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The memory hard limit.
    Memory(Limit),
    /// The CPU bandwidth limit (quota and period).
    Cpu(CpuQuota),
}

impl Setting {
    /// The resource it limits.
    pub fn resource(&self) -> Resource {
        match self {
            Setting::Memory(_) => Resource::Memory,
            Setting::Cpu(_) => Resource::Cpu,
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Setting::Memory(l) => l.fmt(f),
            Setting::Cpu(q) => q.fmt(f),
        }
    }
}

/// What the agent last wrote to one cgroup's limit, as the kernel keeps it: shared by the
/// engine thread, which writes, and the slow side, which samples the cgroup and must tell the
/// agent's own writes from someone else's.
///
/// A sequence lock over atomics (no lock the hot path could wait on, no allocation): the engine
/// makes the sequence odd before a write and even after it, with the value it wrote stored in
/// between. A sample that reads the cgroup's limit between two reads of the same even sequence
/// knows exactly what the agent had written when it read: a different limit is someone
/// else's (adopted at once, in one step), the same one is the agent's. A write in between makes
/// the comparison inconclusive for that sample (the next one decides). Unlike the engine's
/// records, which are dropped when the slow side lags, the mark never loses a write.
#[derive(Debug)]
pub struct WriteMark {
    seq: std::sync::atomic::AtomicU64,
    /// Memory: bytes (`u64::MAX`: no limit); CPU: quota µs (`u64::MAX`: no quota).
    a: std::sync::atomic::AtomicU64,
    /// CPU: period µs.
    b: std::sync::atomic::AtomicU64,
    resource: Resource,
    /// Owner's writes the engine found when it re-read the limit (before a write, or on an
    /// event that disagreed with its belief) and adopted instead of overwriting.
    adoptions: std::sync::atomic::AtomicU64,
    /// The latest of them: the setting the agent believed (encoded like `a`, `b`) ...
    adopted_old: [std::sync::atomic::AtomicU64; 2],
    /// ... and the owner's value found.
    adopted_new: [std::sync::atomic::AtomicU64; 2],
    /// Memory limits the agent asked another writer to set for it, each `[asked at (ns,
    /// CLOCK_MONOTONIC; 0 while being stored), bytes]`, the latest [`ECHOES`]: a Kubernetes
    /// resize patch, which the kubelet applies by writing the same value into the cgroup,
    /// seconds later and possibly after the agent's own later writes (see [`is_echo`]).
    ///
    /// [`is_echo`]: Self::is_echo
    echoes: [[std::sync::atomic::AtomicU64; 2]; ECHOES],
    /// The next slot of `echoes`.
    echo_next: std::sync::atomic::AtomicU64,
}

/// How many of the agent's asked-for limits a [`WriteMark`] remembers (one resize patch per
/// pod per `kubernetes.resize_interval`: four cover the kubelet's lag by minutes).
pub const ECHOES: usize = 4;

/// How long an asked-for limit is recognised when the kubelet writes it: longer than the
/// kubelet takes to apply a resize it can apply (its sync loop, seconds), shorter than an
/// operator's unrelated resize to the same value is likely to come.
pub const ECHO_TTL_NS: u64 = 10 * 60 * 1_000_000_000;

/// Two memory limits within this many bytes are the same limit (the kernel keeps pages; the
/// decider's granularity).
const ECHO_GRANULARITY: u64 = 64 * 1024;

/// An owner's write the engine adopted (see [`WriteMark::adopted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adoption {
    /// How many the engine adopted so far (the slow side counts the difference).
    pub count: u64,
    /// The setting the agent believed in force.
    pub old: Setting,
    /// The owner's value it found and adopted.
    pub new: Setting,
}

impl WriteMark {
    /// A mark holding `current` (the setting read when the cgroup was opened).
    pub fn new(current: Setting) -> Self {
        let (a, b) = Self::encode(current);
        Self {
            seq: 0.into(),
            a: a.into(),
            b: b.into(),
            resource: current.resource(),
            adoptions: 0.into(),
            adopted_old: [a.into(), b.into()],
            adopted_new: [a.into(), b.into()],
            echoes: Default::default(),
            echo_next: 0.into(),
        }
    }

    /// The slow side: the agent asked another writer (the API, for the kubelet) to set the
    /// memory limit `asked` at `now_ns`; when that writer does, it is the agent's value, not
    /// an owner's change. CPU settings are never asked for (no-op).
    pub fn asked(&self, asked: Setting, now_ns: u64) {
        use std::sync::atomic::Ordering;
        let Setting::Memory(l) = asked else {
            return;
        };
        let slot = &self.echoes[(self.echo_next.fetch_add(1, Ordering::AcqRel) as usize) % ECHOES];
        // Time 0 while the value changes: a reader in between sees no echo (never a torn one).
        slot[0].store(0, Ordering::Release);
        slot[1].store(l.as_u64_saturating(), Ordering::Release);
        slot[0].store(now_ns.max(1), Ordering::Release);
    }

    /// Whether `found`, a limit that is not the agent's last write, is one the agent asked
    /// another writer for (see [`asked`](Self::asked)) less than [`ECHO_TTL_NS`] before
    /// `now_ns`: the kubelet applying one of the agent's resize patches, possibly an older one
    /// than the agent's latest write. No allocation, no lock (engine thread).
    pub fn is_echo(&self, found: Setting, now_ns: u64) -> bool {
        use std::sync::atomic::Ordering;
        let Setting::Memory(l) = found else {
            return false;
        };
        let found = l.as_u64_saturating();
        if found == u64::MAX {
            return false;
        }
        self.echoes.iter().any(|slot| {
            let at = slot[0].load(Ordering::Acquire);
            let bytes = slot[1].load(Ordering::Acquire);
            at != 0
                && slot[0].load(Ordering::Acquire) == at
                && now_ns.saturating_sub(at) < ECHO_TTL_NS
                && bytes.abs_diff(found) < ECHO_GRANULARITY
        })
    }

    /// The engine: the limit files hold `now`, an echo of the agent's (see
    /// [`is_echo`](Self::is_echo)), taken as the agent's own last write: the slow side's next
    /// sample agrees with it instead of adopting it as an owner's change.
    pub fn echoed(&self, now: Setting) {
        self.begin();
        self.end(now);
    }

    /// The engine: it re-read the limit and found `new`, an owner's value, where it believed
    /// `old`, and adopted it (the limit the agent holds is `new` from now on). No allocation.
    pub fn adopted(&self, old: Setting, new: Setting) {
        use std::sync::atomic::Ordering;
        self.begin();
        let (oa, ob) = Self::encode(old);
        let (na, nb) = Self::encode(new);
        self.adopted_old[0].store(oa, Ordering::Release);
        self.adopted_old[1].store(ob, Ordering::Release);
        self.adopted_new[0].store(na, Ordering::Release);
        self.adopted_new[1].store(nb, Ordering::Release);
        self.adoptions.fetch_add(1, Ordering::AcqRel);
        self.end(new);
    }

    /// The slow side: the engine's adoptions so far and the latest one, or `None` while a
    /// write or an adoption is under way (look again later).
    pub fn adoption(&self) -> Option<Adoption> {
        use std::sync::atomic::Ordering;
        let seq = self.seq.load(Ordering::Acquire);
        if seq % 2 == 1 {
            return None;
        }
        let count = self.adoptions.load(Ordering::Acquire);
        let old = self.decode(
            self.adopted_old[0].load(Ordering::Acquire),
            self.adopted_old[1].load(Ordering::Acquire),
        );
        let new = self.decode(
            self.adopted_new[0].load(Ordering::Acquire),
            self.adopted_new[1].load(Ordering::Acquire),
        );
        (self.seq.load(Ordering::Acquire) == seq).then_some(Adoption { count, old, new })
    }

    fn encode(s: Setting) -> (u64, u64) {
        match s {
            Setting::Memory(l) => (l.as_u64_saturating(), 0),
            Setting::Cpu(CpuQuota::Max) => (u64::MAX, 0),
            Setting::Cpu(CpuQuota::Quota {
                quota_us,
                period_us,
            }) => (quota_us, period_us),
        }
    }

    fn decode(&self, a: u64, b: u64) -> Setting {
        match self.resource {
            Resource::Memory => Setting::Memory(Limit::from_bytes(a)),
            Resource::Cpu if a == u64::MAX => Setting::Cpu(CpuQuota::Max),
            Resource::Cpu => Setting::Cpu(CpuQuota::Quota {
                quota_us: a,
                period_us: b,
            }),
        }
    }

    /// The engine: a write begins.
    pub fn begin(&self) {
        use std::sync::atomic::Ordering;
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// The engine: the write ended; `now` is what the writer holds (what the kernel keeps).
    pub fn end(&self, now: Setting) {
        use std::sync::atomic::Ordering;
        let (a, b) = Self::encode(now);
        self.a.store(a, Ordering::Release);
        self.b.store(b, Ordering::Release);
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// The slow side, before reading the cgroup: the sequence and the setting the agent last
    /// wrote, or `None` while a write is under way.
    pub fn read(&self) -> Option<(u64, Setting)> {
        use std::sync::atomic::Ordering;
        let seq = self.seq.load(Ordering::Acquire);
        if seq % 2 == 1 {
            return None;
        }
        let (a, b) = (
            self.a.load(Ordering::Acquire),
            self.b.load(Ordering::Acquire),
        );
        (self.seq.load(Ordering::Acquire) == seq).then(|| (seq, self.decode(a, b)))
    }

    /// The slow side, after reading the cgroup: true if no write began since [`read`]
    /// returned `seq`.
    ///
    /// [`read`]: Self::read
    pub fn unchanged_since(&self, seq: u64) -> bool {
        self.seq.load(std::sync::atomic::Ordering::Acquire) == seq
    }
}

/// Writes one resource's limit of one cgroup through files opened ahead of time: the hot path.
///
/// A write is one `pwrite` per file, of a number formatted on the stack, in the order the
/// kernel accepts; no allocation, no path lookup. Implementations keep what they last wrote
/// (or read when opened) as [`current`](Self::current).
pub trait LimitWriter: Send + fmt::Debug {
    /// The setting last written, or read when the files were opened.
    fn current(&self) -> Setting;
    /// Writes `new`, in the unit of the decider's actions for this resource: bytes for memory;
    /// for CPU the CFS quota in µs per period, at the period in force (which it leaves as it
    /// is). Returns the `CLOCK_MONOTONIC` time (ns) at which the last write returned: the end of
    /// the reaction that the kernel's event timestamp began.
    fn write(&self, new: u64) -> Result<u64, ActuatorError>;

    /// Re-reads the limit files through the open descriptors (one `pread` each: no
    /// allocation, no path lookup) and takes what they hold as what the next write starts
    /// from (v1 memsw and v2 `memory.high` gaps re-derived from their owner's values when they
    /// changed). Returns the setting believed before and the one found.
    fn refresh(&self) -> Result<(Setting, Setting), ActuatorError>;

    /// Whether `found` (from [`refresh`](Self::refresh)) is `believed` (in the unit of
    /// [`write`](Self::write)) as the kernel keeps it: a memory limit in whole pages, a CPU
    /// quota (`u64::MAX`: none) at whatever period.
    fn holds(&self, found: Setting, believed: u64) -> bool;

    /// Whether [`refresh`](Self::refresh) reads the limit file alone (no v1 memsw or v2
    /// `memory.high` managed with it), so that the limit a kernel event just reported says
    /// everything a re-read would.
    fn limit_only(&self) -> bool {
        false
    }

    /// Which limit it writes.
    fn resource(&self) -> Resource {
        self.current().resource()
    }

    /// The early-warning band of the limit's policy (memory: `headroom` bytes, at most
    /// `permille` thousandths of the limit): a lowering below usage reclaims usage to below
    /// the new limit's band, so that it does not warn at once. Others ignore it.
    fn set_warning_band(&self, _headroom: u64, _permille: u32) {}
}

/// Limit setters of the cgroups a [`CgroupGuard`] created (tests, `scaler exec`, the
/// benchmark): the slow path (the files are opened for each call), through the same writers as
/// the engine's.
pub trait GuardLimits {
    /// Sets the memory limit (honours the v1 memsw ordering).
    fn set_memory_limit(&self, limit: Limit) -> Result<(), ActuatorError>;
    /// Sets the CPU bandwidth limit (quota and period).
    fn set_cpu_quota(&self, quota: CpuQuota) -> Result<(), ActuatorError>;
}

impl GuardLimits for CgroupGuard {
    fn set_memory_limit(&self, limit: Limit) -> Result<(), ActuatorError> {
        let cg = self.require(Controller::Memory)?;
        MemoryActuator::open(cg, MemoryOptions::default())?.set_memory_limit(limit)?;
        Ok(())
    }

    fn set_cpu_quota(&self, quota: CpuQuota) -> Result<(), ActuatorError> {
        let cg = self.require(Controller::Cpu)?;
        CpuActuator::open(cg)?.set_cpu_quota(quota)?;
        Ok(())
    }
}

/// Opens `cgroup`'s limit files for `resource` (the writer the engine and restores use).
/// With `expected`, the cgroup at the path must be that one (its kernfs id, as discovered):
/// a cgroup removed and recreated at the same path is refused with
/// [`ActuatorError::Replaced`].
pub fn open(
    resource: Resource,
    cgroup: &Cgroup,
    expected: Option<u64>,
) -> Result<Box<dyn LimitWriter>, ActuatorError> {
    Ok(match resource {
        Resource::Memory => Box::new(MemoryActuator::open_expecting(
            cgroup,
            expected,
            MemoryOptions {
                // v2: a lowering below usage asks memory.reclaim first (5.19+).
                reclaim: true,
                ..MemoryOptions::default()
            },
        )?),
        Resource::Cpu => Box::new(CpuActuator::open_expecting(cgroup, expected)?),
    })
}

/// A cgroup's directory, opened `O_PATH|O_DIRECTORY` and known by its inode (the cgroup's
/// kernfs id): the files of [`ControlFile::open_at`] are this directory's, whatever happens to
/// the path. See the module docs.
#[derive(Debug)]
pub struct CgroupDir {
    fd: OwnedFd,
    dir: PathBuf,
    id: u64,
}

impl CgroupDir {
    /// Opens `cgroup`'s directory; with `expected`, refuses another cgroup found at the path.
    pub fn open(cgroup: &Cgroup, expected: Option<u64>) -> Result<Self, ActuatorError> {
        Self::open_path(cgroup.dir(), expected)
    }

    /// [`open`](Self::open) by the directory's path.
    pub fn open_path(dir: &Path, expected: Option<u64>) -> Result<Self, ActuatorError> {
        let dir = dir.to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&dir)
            .map_err(|source| ActuatorError::Open {
                path: dir.clone(),
                source,
            })?;
        let id = file
            .metadata()
            .map_err(|source| ActuatorError::Open {
                path: dir.clone(),
                source,
            })?
            .ino();
        let d = CgroupDir {
            fd: file.into(),
            dir,
            id,
        };
        if let Some(want) = expected {
            d.expect(want, id)?;
        }
        Ok(d)
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The cgroup's kernfs id (the directory's inode).
    pub fn id(&self) -> u64 {
        self.id
    }

    fn expect(&self, expected: u64, found: u64) -> Result<(), ActuatorError> {
        if expected == found {
            Ok(())
        } else {
            Err(ActuatorError::Replaced {
                path: self.dir.clone(),
                expected,
                found,
            })
        }
    }

    /// Checks that the path still holds this cgroup (after values were read by path): `Gone`
    /// when nothing is there, `Replaced` when another cgroup is. A cgroup id is never reused,
    /// so a cgroup found again after the reads was there throughout them.
    pub fn verify(&self) -> Result<(), ActuatorError> {
        match std::fs::metadata(&self.dir) {
            Ok(m) => self.expect(self.id, m.ino()),
            Err(e) if crate::cgroupfs::io_is_gone(&e) => Err(ActuatorError::Gone {
                path: self.dir.clone(),
                errno: errno_of(&e),
            }),
            Err(source) => Err(ActuatorError::Open {
                path: self.dir.clone(),
                source,
            }),
        }
    }

    /// `openat(dirfd, name, flags|O_CLOEXEC|O_NOFOLLOW)`: a file of this very directory.
    fn open_file(&self, name: &str, flags: OFlag) -> Result<File, ActuatorError> {
        nix::fcntl::openat(
            &self.fd,
            name,
            flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| ActuatorError::Open {
            path: self.dir.join(name),
            source: e.into(),
        })
    }
}

/// What kind of failure an [`ActuatorError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The kernel rejected the value (EBUSY, EINVAL, EAGAIN): the cgroup is still there and
    /// keeps its previous setting.
    Refused,
    /// The cgroup was removed (ENOENT, ENODEV): stop managing it.
    Gone,
    /// The path holds another cgroup (removed and recreated): forget the old entry; the new
    /// one is discovered on its own.
    Replaced,
    /// Anything else (permissions, I/O).
    Other,
}

/// Errors of the actuator. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    /// Opening a control file failed.
    #[error("opening {path} for writing")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a value.
    #[error("the kernel refused {value:?} for {path}: {errno} ({hint})")]
    Refused {
        /// The file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The error number.
        errno: Errno,
        /// What the errno usually means for this file.
        hint: &'static str,
    },
    /// The path holds another cgroup than the one expected (removed and recreated).
    #[error(
        "{path} is no longer the cgroup the agent found there (id {expected}, now {found}): it \
         was removed and recreated; the old entry is forgotten and the new cgroup is managed \
         on its own when discovery finds it"
    )]
    Replaced {
        /// The cgroup directory.
        path: PathBuf,
        /// The id expected.
        expected: u64,
        /// The id found at the path.
        found: u64,
    },
    /// The cgroup is gone.
    #[error("writing {path}: the cgroup is gone ({errno})")]
    Gone {
        /// The file.
        path: PathBuf,
        /// ENOENT or ENODEV.
        errno: Errno,
    },
    /// Any other write failure.
    #[error("writing {value:?} to {path}: {errno}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The error number.
        errno: Errno,
    },
    /// The kernel accepted only part of the value.
    #[error("short write of {value:?} to {path}: {written} bytes")]
    ShortWrite {
        /// The file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// Bytes accepted.
        written: usize,
    },
    /// Reading the current state failed.
    #[error(transparent)]
    Read(#[from] CgroupError),
    /// The requested operation does not exist for this cgroup version or kernel.
    #[error("{what} is not supported by {path}")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// The cgroup directory.
        path: PathBuf,
    },
}

impl ActuatorError {
    /// Classifies the error: refused by the kernel, cgroup gone, or other.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ActuatorError::Refused { .. } => ErrorKind::Refused,
            ActuatorError::Gone { .. } => ErrorKind::Gone,
            ActuatorError::Replaced { .. } => ErrorKind::Replaced,
            ActuatorError::Open { source, .. } if crate::cgroupfs::io_is_gone(source) => {
                ErrorKind::Gone
            }
            ActuatorError::Read(e) if e.is_gone() => ErrorKind::Gone,
            _ => ErrorKind::Other,
        }
    }

    /// The errno of a failed write, if the error is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ActuatorError::Refused { errno, .. }
            | ActuatorError::Gone { errno, .. }
            | ActuatorError::Write { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error()
        .map_or(Errno::UnknownErrno, Errno::from_raw)
}

/// A small stack buffer for the text written to a control file.
#[derive(Clone, Copy)]
pub(crate) struct ValueBuf {
    buf: [u8; 48],
    len: usize,
}

impl ValueBuf {
    pub(crate) const fn new() -> Self {
        ValueBuf {
            buf: [0; 48],
            len: 0,
        }
    }

    pub(crate) fn push_str(&mut self, s: &str) -> &mut Self {
        let end = self.len + s.len();
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        self
    }

    pub(crate) fn push_u64(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let n = digits.len() - i;
        self.buf[self.len..self.len + n].copy_from_slice(&digits[i..]);
        self.len += n;
        self
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn to_lossy_string(self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

/// A pre-opened, write-only cgroup control file.
#[derive(Debug)]
pub struct ControlFile {
    file: File,
    path: PathBuf,
}

impl ControlFile {
    /// Opens `path` with `O_WRONLY|O_CLOEXEC`.
    pub fn open(path: PathBuf) -> Result<Self, ActuatorError> {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(file) => Ok(ControlFile { file, path }),
            Err(source) => Err(ActuatorError::Open { path, source }),
        }
    }

    /// Opens `name` in `dir` (`openat`, `O_WRONLY`): the file of that very cgroup.
    pub fn open_at(dir: &CgroupDir, name: &str) -> Result<Self, ActuatorError> {
        let file = dir.open_file(name, OFlag::O_WRONLY)?;
        Ok(ControlFile {
            file,
            path: dir.path().join(name),
        })
    }

    /// Opens `name` in `dir` for reading and writing (`openat`, `O_RDWR`): the engine re-reads
    /// the file through the same descriptor before it writes ([`read_line`](Self::read_line)),
    /// so that a value its owner wrote is seen, never overwritten.
    pub fn open_rw_at(dir: &CgroupDir, name: &str) -> Result<Self, ActuatorError> {
        let file = dir.open_file(name, OFlag::O_RDWR)?;
        Ok(ControlFile {
            file,
            path: dir.path().join(name),
        })
    }

    /// Opens `name` in `dir` (read-write) if it exists; `Ok(None)` when it does not (the
    /// cgroup must still be there).
    pub(crate) fn open_optional(
        dir: &CgroupDir,
        name: &str,
    ) -> Result<Option<Self>, ActuatorError> {
        match Self::open_rw_at(dir, name) {
            Ok(f) => Ok(Some(f)),
            Err(ActuatorError::Open { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                dir.verify()?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file's first line with one `pread` at offset 0 into `buf` (no
    /// allocation): the value in force now, whoever wrote it. The file must have been opened
    /// for reading ([`open_rw_at`](Self::open_rw_at)).
    pub(crate) fn read_line<'b>(&self, buf: &'b mut [u8; 64]) -> Result<&'b str, ActuatorError> {
        let n = self.file.read_at(buf, 0).map_err(|source| {
            ActuatorError::Read(if crate::cgroupfs::io_is_gone(&source) {
                CgroupError::Gone {
                    path: self.path.clone(),
                }
            } else {
                CgroupError::Read {
                    path: self.path.clone(),
                    source,
                }
            })
        })?;
        let text = &buf[..n];
        // A fake (regular) file keeps an old, longer value's tail after the newline.
        let line = text.split(|b| *b == b'\n').next().unwrap_or(&[]);
        std::str::from_utf8(line).map_err(|_| self.parse_error(text, "not UTF-8"))
    }

    /// A parse error of what [`read_line`](Self::read_line) found.
    pub(crate) fn parse_error(&self, text: &[u8], reason: &'static str) -> ActuatorError {
        ActuatorError::Read(CgroupError::Parse {
            path: self.path.clone(),
            content: String::from_utf8_lossy(text).into_owned(),
            reason,
        })
    }

    /// Re-reads a memory limit file (`max`, `-1` or bytes; see [`Limit::parse`]).
    pub(crate) fn read_limit(&self) -> Result<Limit, ActuatorError> {
        let mut buf = [0u8; 64];
        let line = self.read_line(&mut buf)?;
        match line.trim() {
            "-1" => Ok(Limit::Max),
            t => Limit::parse(t).map_err(|reason| self.parse_error(t.as_bytes(), reason)),
        }
    }

    /// One `pwrite(fd, value + "\n", 0)`, like `echo value > file` (every cgroup file strips
    /// or accepts the trailing newline; it also keeps fake regular files readable in tests).
    /// `hint` explains a refusal for this file.
    pub(crate) fn write(&self, value: &ValueBuf, hint: &'static str) -> Result<(), ActuatorError> {
        let mut line = *value;
        line.push_str("\n");
        let bytes = line.as_bytes();
        match self.file.write_at(bytes, 0) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(written) => Err(ActuatorError::ShortWrite {
                path: self.path.clone(),
                value: value.to_lossy_string(),
                written,
            }),
            Err(e) => Err(self.classify(errno_of(&e), value, hint)),
        }
    }

    fn classify(&self, errno: Errno, value: &ValueBuf, hint: &'static str) -> ActuatorError {
        match errno {
            Errno::ENOENT | Errno::ENODEV => ActuatorError::Gone {
                path: self.path.clone(),
                errno,
            },
            Errno::EBUSY | Errno::EINVAL | Errno::EAGAIN => ActuatorError::Refused {
                path: self.path.clone(),
                value: value.to_lossy_string(),
                errno,
                hint,
            },
            _ => ActuatorError::Write {
                path: self.path.clone(),
                value: value.to_lossy_string(),
                errno,
            },
        }
    }
}

/// A pre-opened, read-only cgroup file holding one number (e.g. `memory.current`).
#[derive(Debug)]
pub struct NumberFile {
    file: File,
    path: PathBuf,
}

impl NumberFile {
    /// Opens `path` read-only with `O_CLOEXEC`.
    pub fn open(path: PathBuf) -> Result<Self, ActuatorError> {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(file) => Ok(NumberFile { file, path }),
            Err(source) => Err(ActuatorError::Open { path, source }),
        }
    }

    /// Reads the number with one `pread` into a stack buffer (no allocation on success).
    pub fn read_u64(&self) -> Result<u64, ActuatorError> {
        let mut buf = [0u8; 32];
        let n = self.file.read_at(&mut buf, 0).map_err(|source| {
            ActuatorError::Read(if crate::cgroupfs::io_is_gone(&source) {
                CgroupError::Gone {
                    path: self.path.clone(),
                }
            } else {
                CgroupError::Read {
                    path: self.path.clone(),
                    source,
                }
            })
        })?;
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                ActuatorError::Read(CgroupError::Parse {
                    path: self.path.clone(),
                    content: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    reason: "expected an unsigned number",
                })
            })
    }
}

/// The result of a successful change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteOutcome<T> {
    /// The setting before the change (as last written or read at open).
    pub previous: T,
    /// The setting now in force.
    pub applied: T,
    /// Number of write syscalls issued.
    pub writes: u8,
    /// Time spent from the first to the end of the last write.
    pub elapsed: Duration,
    /// `CLOCK_MONOTONIC` when the last write completed, in ns: the clock of the kernel
    /// programs' event timestamps (`bpf_ktime_get_ns`), so `completed_ns - event.ts_ns` is the
    /// reaction latency.
    pub completed_ns: u64,
}

impl<T> WriteOutcome<T> {
    /// The outcome of `writes` writes begun at `start`, stamped now.
    pub(crate) fn done(previous: T, applied: T, writes: u8, start: std::time::Instant) -> Self {
        Self {
            previous,
            applied,
            writes,
            elapsed: start.elapsed(),
            completed_ns: monotonic_ns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::{Cgroup, CgroupVersion};
    use std::fs;

    /// The value last written: a write at offset 0 over a longer old value leaves the old
    /// tail after the newline in a regular file (real cgroup files have no such tail).
    pub(crate) fn first_line(p: &Path) -> String {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    pub(crate) fn v1_cgroup(limit: &str, memsw: Option<&str>) -> (tempfile::TempDir, Cgroup) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cg");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("memory.limit_in_bytes"), format!("{limit}\n")).unwrap();
        fs::write(dir.join("memory.usage_in_bytes"), "4096\n").unwrap();
        if let Some(m) = memsw {
            fs::write(dir.join("memory.memsw.limit_in_bytes"), format!("{m}\n")).unwrap();
        }
        (tmp, Cgroup::new(dir, "/cg".into(), CgroupVersion::V1))
    }

    #[test]
    fn value_buf_formats_numbers() {
        for v in [0u64, 7, 10, 4096, 123456789, u64::MAX] {
            let mut b = ValueBuf::new();
            b.push_u64(v);
            assert_eq!(b.as_bytes(), v.to_string().as_bytes());
        }
        let mut b = ValueBuf::new();
        b.push_u64(20000).push_str(" ").push_u64(100000);
        assert_eq!(b.as_bytes(), b"20000 100000");
    }

    #[test]
    fn a_write_mark_tells_the_agents_writes_from_others() {
        let m = WriteMark::new(Setting::Memory(Limit::Bytes(64 << 20)));
        let (seq, ours) = m.read().unwrap();
        assert_eq!(ours, Setting::Memory(Limit::Bytes(64 << 20)));
        assert!(m.unchanged_since(seq));
        m.begin();
        assert_eq!(m.read(), None, "a write under way: inconclusive");
        assert!(!m.unchanged_since(seq));
        m.end(Setting::Memory(Limit::Max));
        let (seq2, ours) = m.read().unwrap();
        assert_ne!(seq, seq2);
        assert_eq!(ours, Setting::Memory(Limit::Max));
        let q = Setting::Cpu(CpuQuota::Quota {
            quota_us: 20_000,
            period_us: 100_000,
        });
        let c = WriteMark::new(q);
        assert_eq!(c.read().unwrap().1, q);
        c.begin();
        c.end(Setting::Cpu(CpuQuota::Max));
        assert_eq!(c.read().unwrap().1, Setting::Cpu(CpuQuota::Max));
    }

    #[test]
    fn a_write_mark_carries_the_engines_adoptions_of_owners_writes() {
        let m = WriteMark::new(Setting::Memory(Limit::Max));
        let a = m.adoption().unwrap();
        assert_eq!(a.count, 0);
        let (seq, _) = m.read().unwrap();
        m.adopted(
            Setting::Memory(Limit::Max),
            Setting::Memory(Limit::Bytes(64 << 20)),
        );
        assert!(
            !m.unchanged_since(seq),
            "a sample around it is inconclusive"
        );
        let a = m.adoption().unwrap();
        assert_eq!(a.count, 1);
        assert_eq!(a.old, Setting::Memory(Limit::Max));
        assert_eq!(a.new, Setting::Memory(Limit::Bytes(64 << 20)));
        // What the agent holds from then on is the owner's value.
        assert_eq!(m.read().unwrap().1, Setting::Memory(Limit::Bytes(64 << 20)));
        m.begin();
        assert_eq!(m.adoption(), None);
        m.end(Setting::Memory(Limit::Bytes(128 << 20)));
        assert_eq!(m.adoption().unwrap().count, 1);
    }

    #[test]
    fn a_control_file_is_reread_through_its_descriptor() {
        let (_t, cg) = v1_cgroup("9223372036854771712", None);
        let d = CgroupDir::open(&cg, None).unwrap();
        let f = ControlFile::open_rw_at(&d, "memory.limit_in_bytes").unwrap();
        assert_eq!(f.read_limit().unwrap(), Limit::Max);
        let mut v = ValueBuf::new();
        v.push_u64(64 << 20);
        f.write(&v, "").unwrap();
        // A regular file keeps the old value's tail after the newline: the first line counts.
        assert_eq!(f.read_limit().unwrap(), Limit::Bytes(64 << 20));
        fs::write(cg.file("memory.limit_in_bytes"), "-1\n").unwrap();
        assert_eq!(f.read_limit().unwrap(), Limit::Max);
        fs::write(cg.file("memory.limit_in_bytes"), "garbage\n").unwrap();
        let e = f.read_limit().unwrap_err().to_string();
        assert!(e.contains("memory.limit_in_bytes"), "{e}");
    }

    #[test]
    fn errors_are_classified() {
        let (_t, cg) = v1_cgroup("100", None);
        let f = ControlFile::open(cg.file("memory.limit_in_bytes")).unwrap();
        let v = ValueBuf::new();
        assert_eq!(f.classify(Errno::EBUSY, &v, "").kind(), ErrorKind::Refused);
        assert_eq!(f.classify(Errno::EINVAL, &v, "").kind(), ErrorKind::Refused);
        assert_eq!(f.classify(Errno::ENODEV, &v, "").kind(), ErrorKind::Gone);
        assert_eq!(f.classify(Errno::ENOENT, &v, "").kind(), ErrorKind::Gone);
        assert_eq!(f.classify(Errno::EACCES, &v, "").kind(), ErrorKind::Other);
        let err = f
            .classify(Errno::EBUSY, &v, memory::LIMIT_HINT_V1)
            .to_string();
        assert!(
            err.contains("memory.limit_in_bytes") && err.contains("EBUSY"),
            "{err}"
        );
        // Opening in a removed cgroup reports Gone.
        fs::remove_dir_all(cg.dir()).unwrap();
        let e = MemoryActuator::open(&cg, MemoryOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Gone, "{e}");
    }
}
