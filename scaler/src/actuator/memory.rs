//! The memory limit writer: v1 `memory.limit_in_bytes` (with `memory.memsw.limit_in_bytes`
//! kept above it at its owner's gap), v2 `memory.max` (with an owner's `memory.high` kept at
//! its gap below it, or at a fraction of it, and `memory.reclaim`).
//!
//! Every file the kernel enforces together with the limit is managed with it, from what its
//! owner last wrote: the files are opened read-write, and [`MemoryActuator::refresh`] re-reads
//! them (one `pread` each on the open descriptors) so that a memsw limit or a `memory.high` the
//! owner sets or changes later is followed from the owner's new values, never from the ones
//! seen at open. v1 memsw is held only while it can bind: an unlimited one is opened when the
//! owner changes the limit, or when a raise meets EINVAL (then the raise is planned again).

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, OnceLock},
    time::Instant,
};

use nix::errno::Errno;

use super::{
    ActuatorError, CgroupDir, ControlFile, ErrorKind, LimitWriter, Setting, ValueBuf, WriteOutcome,
};
use crate::cgroupfs::{Cgroup, CgroupVersion, Limit};

/// How `memory.high` is managed on cgroup v2.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum HighPolicy {
    /// An owner's `memory.high` below `memory.max` follows the limit at the owner's gap: a
    /// raise of `memory.max` by `d` raises `memory.high` by `d` (so the owner's throttle never
    /// binds below a raised limit), a lowering lowers it by as much but never below the
    /// owner's own value (capped at the new limit). An unlimited `memory.high` is left alone;
    /// a new value the owner writes is followed from then on (its gap re-derived).
    #[default]
    FollowOwner,
    /// Never written.
    Unmanaged,
    /// Kept at `max` (no throttling below the hard limit).
    Max,
    /// Kept at this fraction (0 < f <= 1) of `memory.max`; `max` when the limit is `max`.
    Fraction(f64),
}

impl HighPolicy {
    fn target(self, limit: Limit) -> Option<Limit> {
        match self {
            HighPolicy::Unmanaged | HighPolicy::FollowOwner => None,
            HighPolicy::Max => Some(Limit::Max),
            HighPolicy::Fraction(f) => Some(match limit {
                Limit::Max => Limit::Max,
                Limit::Bytes(b) => Limit::Bytes((b as f64 * f.clamp(0.0, 1.0)) as u64),
            }),
        }
    }
}

/// Options for [`MemoryActuator::open`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MemoryOptions {
    /// v2 `memory.high` management (ignored on v1, which has no `memory.high`).
    pub high: HighPolicy,
    /// Open v2 `memory.reclaim` too (for [`MemoryActuator::reclaim`]; one more descriptor).
    pub reclaim: bool,
}

/// Which file a planned write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemFile {
    /// v1 `memory.limit_in_bytes` / v2 `memory.max`.
    Limit,
    /// v1 `memory.memsw.limit_in_bytes`.
    Memsw,
    /// v2 `memory.high`.
    High,
}

/// What the actuator believes the kernel has (last written or read at open).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MemState {
    pub(crate) limit: Limit,
    /// The managed memsw limit and the swap allowance kept above the memory limit; `None`
    /// when memsw is absent or unlimited (it never binds then).
    pub(crate) memsw: Option<(Limit, u64)>,
    /// The managed `memory.high`, `None` when unmanaged.
    pub(crate) high: Option<Limit>,
    /// [`HighPolicy::FollowOwner`]: the owner's gap between `memory.max` and `memory.high`,
    /// and the owner's `memory.high` itself (the floor of a lowering).
    pub(crate) high_gap: Option<(u64, u64)>,
    /// The limit its owner last set (found at open, or changed behind our back since): an
    /// owner's memsw limit found later (a raise met EINVAL) keeps its gap above this, not
    /// above the limit our raises reached meanwhile.
    pub(crate) owner: Limit,
}

impl MemState {
    /// The memsw limit believed in force (unlimited when unmanaged).
    fn memsw_limit(&self) -> Limit {
        self.memsw.map_or(Limit::Max, |m| m.0)
    }

    /// Takes what the files hold now (`limit`, and the memsw / high values when those files
    /// are open) as the cgroup's state. A memsw or high value that differs from what is
    /// believed, or a limit that does, means their owner wrote them: the gaps are re-derived
    /// from the values found. Returns whether anything differed.
    pub(crate) fn take(
        &mut self,
        limit: Limit,
        memsw: Option<Limit>,
        high: Option<Limit>,
        follow_high: bool,
    ) -> bool {
        let limit_changed = limit != self.limit;
        if limit_changed {
            self.owner = limit;
        }
        let mut changed = limit_changed;
        if let Some(m) = memsw {
            if limit_changed || m != self.memsw_limit() {
                changed |= m != self.memsw_limit();
                // The owner's gap above the owner's limit (memsw >= limit always holds in the
                // kernel; guard anyway).
                let base = match (self.owner, limit) {
                    (Limit::Bytes(o), _) if o <= m.bytes().unwrap_or(u64::MAX) => o,
                    (_, l) => l.bytes().unwrap_or(u64::MAX),
                };
                self.memsw = match m {
                    Limit::Max => None,
                    Limit::Bytes(b) => Some((m, b.saturating_sub(base.min(b)))),
                };
            }
        }
        if let Some(h) = high {
            let believed = self.high.unwrap_or(Limit::Max);
            if follow_high && (limit_changed || h != believed) {
                changed |= h != believed;
                (self.high, self.high_gap) = match (h, limit) {
                    (Limit::Bytes(hb), Limit::Bytes(lb)) if hb < lb => {
                        (Some(h), Some((lb - hb, hb)))
                    }
                    // Unlimited, or at or above the limit: it does not bind first.
                    _ => (None, None),
                };
            } else if !follow_high && self.high.is_some() && h != believed {
                changed = true;
                self.high = Some(h);
            }
        }
        self.limit = limit;
        changed
    }
}

/// Up to three ordered writes.
pub(crate) type MemPlan = [Option<(MemFile, Limit)>; 3];

/// Plans the writes that move `state` to limit `new` (pure; the ordering rules live here).
pub(crate) fn plan_memory(
    state: &MemState,
    new: Limit,
    high_policy: HighPolicy,
) -> (MemPlan, MemState) {
    let raising = new > state.limit;
    let mut next = *state;
    next.limit = new;
    let mut plan: MemPlan = [None; 3];
    let mut n = 0;
    let mut push = |plan: &mut MemPlan, step| {
        plan[n] = Some(step);
        n += 1;
    };
    // v1 memsw: keep memsw - limit constant; only write when it changes.
    let memsw_step = state.memsw.and_then(|(cur, gap)| {
        let target = match new {
            Limit::Max => Limit::Max,
            Limit::Bytes(b) => Limit::from_bytes(b.saturating_add(gap)),
        };
        next.memsw = Some((target, gap));
        (target != cur).then_some((MemFile::Memsw, target))
    });
    // v2 high: only when managed and changing.
    let high_step = state.high.and_then(|cur| {
        let target = match (high_policy, state.high_gap) {
            (HighPolicy::FollowOwner, Some((gap, owners))) => match new {
                Limit::Max => Limit::Max,
                // The owner's gap below the new limit, never below the owner's own value
                // (unless the limit itself goes below it).
                Limit::Bytes(b) => Limit::Bytes(b.saturating_sub(gap).max(owners.min(b))),
            },
            (HighPolicy::FollowOwner, None) => return None,
            (p, _) => p.target(new)?,
        };
        next.high = Some(target);
        (target != cur).then_some((MemFile::High, target))
    });
    let limit_step = (MemFile::Limit, new);
    if raising {
        if let Some(s) = memsw_step {
            push(&mut plan, s);
        }
        push(&mut plan, limit_step);
        if let Some(s) = high_step {
            push(&mut plan, s);
        }
    } else {
        if let Some(s) = high_step {
            push(&mut plan, s);
        }
        push(&mut plan, limit_step);
        if let Some(s) = memsw_step {
            push(&mut plan, s);
        }
    }
    (plan, next)
}

/// Pre-opened memory limit files of one cgroup: one descriptor (the limit) unless v1 memsw is
/// limited (or was limited by its owner since), or v2 `memory.high`/`memory.reclaim` are
/// managed.
#[derive(Debug)]
pub struct MemoryActuator {
    dir: PathBuf,
    id: u64,
    version: CgroupVersion,
    high_policy: HighPolicy,
    limit: ControlFile,
    /// v1 memsw: held from open when it is limited then; otherwise opened the first time it
    /// may bind (a limit its owner changed, or a raise the kernel refused with EINVAL), so
    /// that a cgroup whose memsw never binds costs one descriptor, not two.
    memsw: OnceLock<ControlFile>,
    /// v2 `memory.high`: under [`HighPolicy::FollowOwner`] held like memsw (when the owner's
    /// value is limited at open, or from the owner's next change of the limit); from open
    /// under an explicit policy.
    high: OnceLock<ControlFile>,
    reclaim: Option<ControlFile>,
    /// The warning band of the policy ([`LimitWriter::set_warning_band`]): `(headroom bytes,
    /// permille of the limit)`; `(0, 0)` until set.
    band: Mutex<(u64, u32)>,
    state: Mutex<MemState>,
    /// The kernel's page size: limits are kept in whole pages.
    page: u64,
}

/// The running kernel's page size (bytes).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// `limit` as the kernel keeps it: rounded down to whole pages of `page` bytes (v1
/// `memory.limit_in_bytes` and v2 `memory.max` both truncate what is written).
pub fn page_aligned(limit: Limit, page: u64) -> Limit {
    match limit {
        Limit::Max => Limit::Max,
        Limit::Bytes(b) => Limit::Bytes(b & !(page - 1)),
    }
}

pub(crate) const LIMIT_HINT_V1: &str =
    "v1 refuses a limit below current usage with EBUSY when it cannot \
                             reclaim enough, and a limit above memory.memsw.limit_in_bytes with \
                             EINVAL";
const LIMIT_HINT_V2: &str = "memory.max rejects malformed values with EINVAL";
const MEMSW: &str = "memory.memsw.limit_in_bytes";
const HIGH: &str = "memory.high";
const MEMSW_HINT: &str = "memory.memsw.limit_in_bytes must be >= memory.limit_in_bytes (EINVAL) \
                          and >= memory+swap usage (EBUSY)";
const HIGH_HINT: &str = "memory.high rejects malformed values with EINVAL";

impl MemoryActuator {
    /// Opens the memory limit files of `cgroup` and reads their current values.
    pub fn open(cgroup: &Cgroup, options: MemoryOptions) -> Result<Self, ActuatorError> {
        Self::open_expecting(cgroup, None, options)
    }

    /// Like [`open`](Self::open), through the cgroup's directory fd; with `expected`, the
    /// cgroup at the path must have that id ([`ActuatorError::Replaced`] otherwise).
    pub fn open_expecting(
        cgroup: &Cgroup,
        expected: Option<u64>,
        options: MemoryOptions,
    ) -> Result<Self, ActuatorError> {
        let d = CgroupDir::open(cgroup, expected)?;
        let dir = cgroup.dir().to_path_buf();
        let version = cgroup.version();
        let limit_name = match version {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        };
        let limit = ControlFile::open_rw_at(&d, limit_name)?;
        let memsw = OnceLock::new();
        let high = OnceLock::new();
        let mut reclaim = None;
        match version {
            CgroupVersion::V1 => {
                // Held when it is limited now; an owner that limits it later (a runtime
                // writes it a few ms after the limit) is followed from then on (`follow`).
                if let Some(f) = ControlFile::open_optional(&d, MEMSW)? {
                    if f.read_limit()? != Limit::Max {
                        let _ = memsw.set(f);
                    }
                }
                if !matches!(
                    options.high,
                    HighPolicy::Unmanaged | HighPolicy::FollowOwner
                ) {
                    tracing::warn!(
                        cgroup = %dir.display(),
                        "memory.high management requested on cgroup v1, which has no \
                         memory.high: ignored"
                    );
                }
            }
            CgroupVersion::V2 => {
                match options.high {
                    HighPolicy::Unmanaged => {}
                    HighPolicy::FollowOwner => {
                        if let Some(f) = ControlFile::open_optional(&d, HIGH)? {
                            if f.read_limit()? != Limit::Max {
                                let _ = high.set(f);
                            }
                        }
                    }
                    _ => {
                        let _ = high.set(ControlFile::open_rw_at(&d, HIGH)?);
                    }
                }
                if options.reclaim {
                    reclaim = ControlFile::open_optional(&d, "memory.reclaim")?;
                }
            }
        }
        let act = MemoryActuator {
            dir,
            id: d.id(),
            version,
            high_policy: options.high,
            limit,
            memsw,
            high,
            reclaim,
            band: Mutex::new((0, 0)),
            state: Mutex::new(MemState {
                limit: Limit::Max,
                memsw: None,
                high: None,
                high_gap: None,
                owner: Limit::Max,
            }),
            page: page_size(),
        };
        // The values are read through the descriptors of this very directory.
        {
            let mut st = act.lock();
            let (limit, memsw, high) = act.read_files()?;
            if !matches!(options.high, HighPolicy::FollowOwner) {
                // An explicit policy manages memory.high whatever its value.
                st.high = high;
            }
            // Forces the gaps to be derived: the belief differs from anything but max.
            st.limit = Limit::Bytes(0);
            st.take(limit, memsw, high, options.high == HighPolicy::FollowOwner);
        }
        Ok(act)
    }

    /// One `pread` of each file the limit is managed with: the limit, v1 memsw (when the
    /// file exists), v2 `memory.high` (when managed).
    fn read_files(&self) -> Result<(Limit, Option<Limit>, Option<Limit>), ActuatorError> {
        let limit = self.limit.read_limit()?;
        let memsw = self.memsw.get().map(|f| f.read_limit()).transpose()?;
        let high = self.high.get().map(|f| f.read_limit()).transpose()?;
        Ok((limit, memsw, high))
    }

    /// Re-reads the limit and the files managed with it (one `pread` each on the open
    /// descriptors; no allocation, no path lookup) and takes what they hold as the state the
    /// next write starts from: a value its owner wrote is never overwritten by a plan made
    /// from an older belief, and the memsw and `memory.high` gaps follow the owner's latest
    /// values. Returns the limit before and the limit now.
    pub fn refresh(&self) -> Result<(Limit, Limit), ActuatorError> {
        let mut st = self.lock();
        let before = st.limit;
        let (limit, mut memsw, mut high) = self.read_files()?;
        if limit != st.limit {
            // The owner changed the limit: it may have limited memsw or memory.high with it.
            if memsw.is_none() && self.follow_memsw() {
                memsw = self.memsw.get().map(|f| f.read_limit()).transpose()?;
            }
            if high.is_none() && self.follow_high() {
                high = self.high.get().map(|f| f.read_limit()).transpose()?;
            }
        }
        st.take(
            limit,
            memsw,
            high,
            self.high_policy == HighPolicy::FollowOwner,
        );
        Ok((before, limit))
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The limit last written (or read at open).
    pub fn current_limit(&self) -> Limit {
        self.lock().limit
    }

    /// True when v1 memsw is managed alongside the limit (limited now; an unlimited one
    /// never binds and is left alone until its owner limits it).
    pub fn manages_memsw(&self) -> bool {
        self.memsw.get().is_some() && self.lock().memsw.is_some()
    }

    /// Opens v1 memsw when it is not held yet (the owner may have limited it since the files
    /// were opened): through the cgroup's directory, only if it is still this cgroup. Returns
    /// whether it is held now. Rare (an owner's change of the limit, a refused raise): it may
    /// allocate.
    fn follow_memsw(&self) -> bool {
        self.version == CgroupVersion::V1 && self.follow(&self.memsw, MEMSW)
    }

    /// Like [`follow_memsw`](Self::follow_memsw), for an owner's v2 `memory.high`.
    fn follow_high(&self) -> bool {
        self.version == CgroupVersion::V2
            && self.high_policy == HighPolicy::FollowOwner
            && self.follow(&self.high, HIGH)
    }

    /// Opens `name` into `cell` unless it is held already; whether it is held now.
    fn follow(&self, cell: &OnceLock<ControlFile>, name: &str) -> bool {
        if cell.get().is_some() {
            return true;
        }
        let opened = CgroupDir::open_path(&self.dir, Some(self.id))
            .and_then(|d| ControlFile::open_optional(&d, name));
        match opened {
            Ok(Some(f)) => {
                let _ = cell.set(f);
                true
            }
            // No such file (no swap accounting, an old kernel), or the cgroup is gone.
            Ok(None) | Err(_) => false,
        }
    }

    /// The v1 memsw limit and the gap kept above the limit, when managed.
    pub fn memsw(&self) -> Option<(Limit, u64)> {
        self.lock().memsw
    }

    /// The v2 `memory.high` the writer manages (`None`: left alone).
    pub fn managed_high(&self) -> Option<Limit> {
        self.lock().high
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters more than losing the actuator: keep going with what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn format(&self, limit: Limit, buf: &mut ValueBuf) {
        match (limit, self.version) {
            (Limit::Max, CgroupVersion::V1) => buf.push_str("-1"),
            (Limit::Max, CgroupVersion::V2) => buf.push_str("max"),
            (Limit::Bytes(b), _) => buf.push_u64(b),
        };
    }

    /// Sets the hard memory limit (and the managed memsw / high files) with one `pwrite` per
    /// file, in an order the kernel accepts. On error, the state reflects the writes that
    /// succeeded.
    ///
    /// `new` is rounded down to whole pages first, as the kernel would keep it: what is written
    /// and recorded ([`current`](LimitWriter::current), the outcome's `applied`) is exactly what
    /// the kernel reports back, so the agent's own write is never mistaken for someone else's.
    /// (The decider already decides whole 4 KiB pages, bounds rounded down; this matters on
    /// kernels with larger pages and for limits from elsewhere.)
    pub fn set_memory_limit(&self, new: Limit) -> Result<WriteOutcome<Limit>, ActuatorError> {
        let new = page_aligned(new, self.page);
        let mut state = self.lock();
        let previous = state.limit;
        let start = Instant::now();
        if new < previous {
            if let Limit::Bytes(b) = new {
                self.reclaim_for(&mut state, b)?;
            }
        }
        match self.write_plan(&mut state, new) {
            Ok(writes) => Ok(WriteOutcome::done(previous, new, writes, start)),
            // v1: a raise above a memsw limit its owner set after the files were opened (and
            // the limit unchanged since, so no re-read found it): the kernel says EINVAL.
            // memsw is opened, re-read, and the raise planned again with it, once.
            Err(ActuatorError::Refused {
                errno: Errno::EINVAL,
                ..
            }) if new > state.limit && self.memsw.get().is_none() && self.follow_memsw() => {
                let (limit, memsw, high) = self.read_files()?;
                state.take(
                    limit,
                    memsw,
                    high,
                    self.high_policy == HighPolicy::FollowOwner,
                );
                let writes = self.write_plan(&mut state, new)?;
                Ok(WriteOutcome::done(previous, new, writes, start))
            }
            Err(e) => Err(e),
        }
    }

    /// Before a lowering to `new` bytes: when usage is above where the new limit's warning
    /// band begins (`new - band`), usage is brought below it first, so that the lowered limit
    /// neither warns at once (a raise straight back) nor leaves the kernel nothing to reclaim
    /// but the working set. The decider lowers to no less than the working set plus its
    /// safety margin above the band, so what is reclaimed here is inactive page cache.
    ///
    /// v2: `memory.reclaim` (which never OOM-kills; EAGAIN when it got less); then, with usage
    /// still above `new`, the lowering is refused (EBUSY, nothing written): writing
    /// `memory.max` below usage makes the kernel reclaim and, failing that, OOM-kill.
    /// v1: the limit itself is first written at `new - band` (the kernel reclaims down to
    /// it, or refuses with EBUSY and keeps the old limit: never an OOM kill), then at `new`.
    /// Slow path (lowerings come from samples): usage is read by path.
    fn reclaim_for(&self, state: &mut MemState, new: u64) -> Result<(), ActuatorError> {
        let (headroom, permille) = *self.band.lock().unwrap_or_else(|e| e.into_inner());
        let mut band = headroom;
        if permille > 0 {
            band = band.min(new / 1000 * u64::from(permille));
        }
        let below = page_aligned(Limit::Bytes(new.saturating_sub(band)), self.page)
            .bytes()
            .unwrap_or(0);
        let usage_file = match self.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        };
        let usage = || -> Option<u64> {
            std::fs::read_to_string(self.dir.join(usage_file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let Some(now) = usage() else {
            return Ok(());
        };
        if now <= below || below == 0 {
            return Ok(());
        }
        match self.version {
            CgroupVersion::V2 => {
                if let Some(file) = &self.reclaim {
                    let mut buf = ValueBuf::new();
                    buf.push_u64(now - below);
                    // EAGAIN: it reclaimed less than asked; usage says how much.
                    let _ = file.write(&buf, "memory.reclaim");
                }
                if usage().is_some_and(|u| u > new) {
                    return Err(ActuatorError::Refused {
                        path: self.dir.join("memory.max"),
                        errno: Errno::EBUSY,
                        value: new.to_string(),
                        hint: "not lowered: usage stays above the new limit after \
                               memory.reclaim (writing memory.max below usage would OOM-kill)",
                    });
                }
            }
            CgroupVersion::V1 => {
                // Reclaim by the limit; a refusal keeps the old limit, and the lowering to
                // `new` below still goes ahead (the kernel reclaims as far as it can).
                if let Err(e) = self.write_plan(state, Limit::Bytes(below)) {
                    if e.kind() != ErrorKind::Refused {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The writes of [`set_memory_limit`](Self::set_memory_limit), from `state`; returns how
    /// many were made.
    fn write_plan(&self, state: &mut MemState, new: Limit) -> Result<u8, ActuatorError> {
        let previous = state.limit;
        let raising = new > previous;
        let (plan, mut next) = plan_memory(state, new, self.high_policy);
        let mut writes = 0u8;
        for (file, value) in plan.into_iter().flatten() {
            let mut buf = ValueBuf::new();
            self.format(value, &mut buf);
            let (cf, hint) = match file {
                MemFile::Limit => (
                    &self.limit,
                    match self.version {
                        CgroupVersion::V1 => LIMIT_HINT_V1,
                        CgroupVersion::V2 => LIMIT_HINT_V2,
                    },
                ),
                MemFile::Memsw => match self.memsw.get() {
                    Some(f) => (f, MEMSW_HINT),
                    None => continue,
                },
                MemFile::High => match self.high.get() {
                    Some(f) => (f, HIGH_HINT),
                    None => continue,
                },
            };
            match cf.write(&buf, hint) {
                Ok(()) => {}
                // Lowering memsw after the limit went down keeps memsw >= limit even when the
                // kernel refuses (memory+swap usage above the new value): the memory limit,
                // which is what was asked for, is in force. Keep the old memsw and go on.
                Err(e) if file == MemFile::Memsw && !raising && e.kind() == ErrorKind::Refused => {
                    tracing::debug!(error = %e, "memsw not lowered with the limit");
                    next.memsw = state.memsw;
                    writes += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            writes += 1;
            match file {
                MemFile::Limit => state.limit = value,
                MemFile::Memsw => state.memsw = next.memsw,
                MemFile::High => state.high = Some(value),
            }
        }
        *state = next;
        Ok(writes)
    }

    /// The cgroup's kernfs id, as checked when the files were opened.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True when the kernel has v2 `memory.reclaim` (5.19+).
    pub fn supports_reclaim(&self) -> bool {
        self.reclaim.is_some()
    }

    /// Asks the kernel to reclaim `bytes` from the cgroup (v2 `memory.reclaim`) without
    /// changing the limit: a gentle scale-down step.
    pub fn reclaim(&self, bytes: u64) -> Result<ReclaimOutcome, ActuatorError> {
        let Some(file) = &self.reclaim else {
            return Ok(ReclaimOutcome::Unsupported);
        };
        let mut buf = ValueBuf::new();
        buf.push_u64(bytes);
        match file.write(
            &buf,
            "memory.reclaim returns EAGAIN when it reclaimed less than asked",
        ) {
            Ok(()) => Ok(ReclaimOutcome::Reclaimed),
            Err(ActuatorError::Refused {
                errno: Errno::EAGAIN,
                ..
            }) => Ok(ReclaimOutcome::Incomplete),
            Err(e) => Err(e),
        }
    }
}

/// The result of [`MemoryActuator::reclaim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReclaimOutcome {
    /// The kernel reclaimed the amount asked for.
    Reclaimed,
    /// The kernel could not reclaim it all (EAGAIN).
    Incomplete,
    /// No `memory.reclaim` (cgroup v1, or a kernel older than 5.19).
    Unsupported,
}

impl LimitWriter for MemoryActuator {
    fn current(&self) -> Setting {
        Setting::Memory(self.current_limit())
    }

    fn refresh(&self) -> Result<(Setting, Setting), ActuatorError> {
        let (before, now) = MemoryActuator::refresh(self)?;
        Ok((Setting::Memory(before), Setting::Memory(now)))
    }

    fn holds(&self, found: Setting, believed: u64) -> bool {
        let believed = page_aligned(Limit::from_bytes(believed), self.page);
        found == Setting::Memory(believed)
    }

    fn set_warning_band(&self, headroom: u64, permille: u32) {
        *self.band.lock().unwrap_or_else(|e| e.into_inner()) = (headroom, permille);
    }

    fn write(&self, new: u64) -> Result<u64, ActuatorError> {
        self.set_memory_limit(Limit::from_bytes(new))
            .map(|o| o.completed_ns)
    }

    fn limit_only(&self) -> bool {
        // Without a held memsw or memory.high file, `refresh` reads the limit alone (and
        // looks for the others only when the limit changed).
        self.memsw.get().is_none() && self.high.get().is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::actuator::tests::{first_line, v1_cgroup};
    use crate::clock::monotonic_ns;

    fn steps(plan: &MemPlan) -> Vec<(MemFile, Limit)> {
        plan.iter().flatten().copied().collect()
    }

    #[test]
    fn v1_memsw_is_raised_first_and_lowered_last() {
        let state = MemState {
            limit: Limit::Bytes(100),
            memsw: Some((Limit::Bytes(150), 50)),
            high: None,
            high_gap: None,
            owner: Limit::Max,
        };
        let (plan, next) = plan_memory(&state, Limit::Bytes(200), HighPolicy::Unmanaged);
        assert_eq!(
            steps(&plan),
            vec![
                (MemFile::Memsw, Limit::Bytes(250)),
                (MemFile::Limit, Limit::Bytes(200))
            ]
        );
        assert_eq!(next.memsw, Some((Limit::Bytes(250), 50)));
        let (plan, _) = plan_memory(&next, Limit::Bytes(80), HighPolicy::Unmanaged);
        assert_eq!(
            steps(&plan),
            vec![
                (MemFile::Limit, Limit::Bytes(80)),
                (MemFile::Memsw, Limit::Bytes(130))
            ]
        );
        // To and from unlimited.
        let (plan, next) = plan_memory(&state, Limit::Max, HighPolicy::Unmanaged);
        assert_eq!(
            steps(&plan),
            vec![(MemFile::Memsw, Limit::Max), (MemFile::Limit, Limit::Max)]
        );
        let (plan, _) = plan_memory(&next, Limit::Bytes(10), HighPolicy::Unmanaged);
        assert_eq!(
            steps(&plan),
            vec![
                (MemFile::Limit, Limit::Bytes(10)),
                (MemFile::Memsw, Limit::Bytes(60))
            ]
        );
    }

    fn limit_strategy() -> impl proptest::strategy::Strategy<Value = Limit> {
        use proptest::prelude::*;
        prop_oneof![1 => Just(Limit::Max), 9 => (0u64..1 << 40).prop_map(Limit::Bytes)]
    }

    proptest::proptest! {
        /// Whatever the state and the target, every intermediate state of the v1 plan keeps
        /// memsw >= limit (the kernel's rule), and the end state is the target.
        #[test]
        fn v1_plan_never_breaks_memsw_over_limit(
            cur in limit_strategy(),
            gap in 0u64..1 << 36,
            new in limit_strategy(),
        ) {
            let memsw = match cur {
                Limit::Max => Limit::Max,
                Limit::Bytes(b) => Limit::from_bytes(b + gap),
            };
            let state = MemState { limit: cur, memsw: Some((memsw, gap)), high: None, high_gap: None, owner: cur };
            let (plan, next) = plan_memory(&state, new, HighPolicy::Unmanaged);
            let (mut limit, mut sw) = (cur, memsw);
            for (file, value) in plan.iter().flatten() {
                match file {
                    MemFile::Limit => limit = *value,
                    MemFile::Memsw => sw = *value,
                    MemFile::High => unreachable!(),
                }
                proptest::prop_assert!(sw >= limit, "{limit:?} > memsw {sw:?} in {plan:?}");
            }
            proptest::prop_assert_eq!(limit, new);
            proptest::prop_assert_eq!(next.limit, new);
            proptest::prop_assert_eq!(next.memsw.map(|m| m.0), Some(sw));
        }
    }

    #[test]
    fn unmanaged_memsw_and_same_value_writes_only_the_limit() {
        let state = MemState {
            limit: Limit::Bytes(100),
            memsw: None,
            high: None,
            high_gap: None,
            owner: Limit::Max,
        };
        for new in [
            Limit::Bytes(50),
            Limit::Bytes(100),
            Limit::Bytes(500),
            Limit::Max,
        ] {
            let (plan, _) = plan_memory(&state, new, HighPolicy::Unmanaged);
            assert_eq!(steps(&plan), vec![(MemFile::Limit, new)]);
        }
    }

    #[test]
    fn v2_high_follows_max_in_a_safe_order() {
        let state = MemState {
            limit: Limit::Bytes(1000),
            memsw: None,
            high: Some(Limit::Bytes(900)),
            high_gap: None,
            owner: Limit::Max,
        };
        let policy = HighPolicy::Fraction(0.9);
        let (plan, next) = plan_memory(&state, Limit::Bytes(2000), policy);
        assert_eq!(
            steps(&plan),
            vec![
                (MemFile::Limit, Limit::Bytes(2000)),
                (MemFile::High, Limit::Bytes(1800))
            ]
        );
        let (plan, _) = plan_memory(&next, Limit::Bytes(500), policy);
        assert_eq!(
            steps(&plan),
            vec![
                (MemFile::High, Limit::Bytes(450)),
                (MemFile::Limit, Limit::Bytes(500))
            ]
        );
        // Unchanged high is not rewritten.
        let (plan, _) = plan_memory(&state, Limit::Bytes(1000), policy);
        assert_eq!(steps(&plan), vec![(MemFile::Limit, Limit::Bytes(1000))]);
        let (plan, _) = plan_memory(&state, Limit::Max, HighPolicy::Max);
        assert_eq!(
            steps(&plan),
            vec![(MemFile::Limit, Limit::Max), (MemFile::High, Limit::Max)]
        );
    }

    #[test]
    fn v1_actuator_writes_files_and_tracks_state() {
        let (_t, cg) = v1_cgroup("104857600", Some("157286400"));
        let act = MemoryActuator::open(&cg, MemoryOptions::default()).unwrap();
        assert!(act.manages_memsw());
        assert_eq!(act.current_limit(), Limit::Bytes(100 << 20));
        let before = monotonic_ns();
        let out = act.set_memory_limit(Limit::Bytes(200 << 20)).unwrap();
        assert!(out.completed_ns >= before && out.completed_ns <= monotonic_ns());
        assert_eq!(out.previous, Limit::Bytes(100 << 20));
        assert_eq!(out.writes, 2);
        assert_eq!(first_line(&cg.file("memory.limit_in_bytes")), "209715200");
        assert_eq!(
            first_line(&cg.file("memory.memsw.limit_in_bytes")),
            (250u64 << 20).to_string()
        );
        act.set_memory_limit(Limit::Max).unwrap();
        assert_eq!(first_line(&cg.file("memory.limit_in_bytes")), "-1");
        assert_eq!(first_line(&cg.file("memory.memsw.limit_in_bytes")), "-1");
        assert_eq!(act.current_limit(), Limit::Max);
        assert!(matches!(
            act.reclaim(4096).unwrap(),
            ReclaimOutcome::Unsupported
        ));
    }

    #[test]
    fn v1_unlimited_memsw_is_left_alone() {
        let (_t, cg) = v1_cgroup("9223372036854771712", Some("9223372036854771712"));
        let act = MemoryActuator::open(&cg, MemoryOptions::default()).unwrap();
        assert!(!act.manages_memsw());
        let out = act.set_memory_limit(Limit::Bytes(64 << 20)).unwrap();
        assert_eq!(out.writes, 1);
        assert_eq!(
            fs::read_to_string(cg.file("memory.memsw.limit_in_bytes")).unwrap(),
            "9223372036854771712\n"
        );
        assert_eq!(first_line(&cg.file("memory.limit_in_bytes")), "67108864");
    }

    #[test]
    fn v2_actuator_with_high_and_reclaim() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cg");
        fs::create_dir(&dir).unwrap();
        for (f, c) in [
            ("memory.max", "max\n"),
            ("memory.high", "max\n"),
            ("memory.current", "12345\n"),
            ("memory.reclaim", ""),
        ] {
            fs::write(dir.join(f), c).unwrap();
        }
        let cg = Cgroup::new(dir, "/cg".into(), CgroupVersion::V2);
        let act = MemoryActuator::open(
            &cg,
            MemoryOptions {
                high: HighPolicy::Fraction(0.5),
                reclaim: true,
            },
        )
        .unwrap();
        let out = act.set_memory_limit(Limit::Bytes(1 << 20)).unwrap();
        assert_eq!(out.writes, 2);
        assert_eq!(first_line(&cg.file("memory.max")), "1048576");
        assert_eq!(first_line(&cg.file("memory.high")), "524288");
        assert_eq!(act.reclaim(1 << 20).unwrap(), ReclaimOutcome::Reclaimed);
        assert_eq!(first_line(&cg.file("memory.reclaim")), "1048576");
    }

    #[test]
    fn a_lowering_below_usage_reclaims_below_the_new_band_first_or_is_refused() {
        const M: u64 = 1 << 20;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cg");
        fs::create_dir(&dir).unwrap();
        for (f, c) in [
            ("memory.max", "1073741824\n".to_string()),
            ("memory.current", format!("{}\n", 300 * M)),
            ("memory.reclaim", String::new()),
        ] {
            fs::write(dir.join(f), c).unwrap();
        }
        let cg = Cgroup::new(dir, "/cg".into(), CgroupVersion::V2);
        let act = MemoryActuator::open(
            &cg,
            MemoryOptions {
                reclaim: true,
                ..MemoryOptions::default()
            },
        )
        .unwrap();
        act.set_warning_band(64 * M, 125);
        // 1 GiB -> 256 MiB (band 32 MiB): memory.reclaim is asked for 300 - 224 MiB; the fake
        // usage stays at 300 MiB, above the new limit: refused, memory.max never written below
        // usage (the kernel would OOM-kill what it cannot reclaim).
        let e = act.set_memory_limit(Limit::Bytes(256 * M)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        assert_eq!(first_line(&cg.file("memory.reclaim")), (76 * M).to_string());
        assert_eq!(first_line(&cg.file("memory.max")), "1073741824");
        assert_eq!(act.current_limit(), Limit::Bytes(1 << 30));
        // Reclaimed (usage now 240 MiB: under the limit, if not under the band): written.
        fs::write(cg.file("memory.current"), format!("{}\n", 240 * M)).unwrap();
        act.set_memory_limit(Limit::Bytes(256 * M)).unwrap();
        assert_eq!(first_line(&cg.file("memory.max")), (256 * M).to_string());
        // Usage below the band: no reclaim at all.
        fs::write(cg.file("memory.reclaim"), "").unwrap();
        fs::write(cg.file("memory.current"), format!("{}\n", 100 * M)).unwrap();
        act.set_memory_limit(Limit::Bytes(200 * M)).unwrap();
        assert_eq!(fs::read_to_string(cg.file("memory.reclaim")).unwrap(), "");

        // v1: the limit itself reclaims (the kernel refuses with EBUSY rather than OOM-kill);
        // the lowering ends at the decided value.
        let (_tmp, cg) = v1_cgroup("1073741824", None);
        fs::write(cg.file("memory.usage_in_bytes"), format!("{}\n", 300 * M)).unwrap();
        let act = MemoryActuator::open(&cg, MemoryOptions::default()).unwrap();
        act.set_warning_band(64 * M, 125);
        act.set_memory_limit(Limit::Bytes(256 * M)).unwrap();
        assert_eq!(
            first_line(&cg.file("memory.limit_in_bytes")),
            (256 * M).to_string()
        );
    }

    #[test]
    fn limits_are_written_in_whole_pages_as_the_kernel_keeps_them() {
        assert_eq!(
            page_aligned(Limit::Bytes(100_000_001), 4096),
            Limit::Bytes(99_999_744)
        );
        assert_eq!(page_aligned(Limit::Bytes(8192), 4096), Limit::Bytes(8192));
        assert_eq!(
            page_aligned(Limit::Bytes(100_000_001), 65536),
            Limit::Bytes(99_942_400)
        );
        assert_eq!(page_aligned(Limit::Max, 4096), Limit::Max);
        let page = page_size();
        assert!(page.is_power_of_two() && page >= 4096);
        // `max = "100000001"`: written (and recorded) as the kernel keeps it.
        let (_t, cg) = v1_cgroup("67108864", None);
        let act = MemoryActuator::open(&cg, MemoryOptions::default()).unwrap();
        let out = act.set_memory_limit(Limit::Bytes(100_000_001)).unwrap();
        let kept = 100_000_001 / page * page;
        assert_eq!(out.applied, Limit::Bytes(kept));
        assert_eq!(act.current(), Setting::Memory(Limit::Bytes(kept)));
        assert_eq!(
            first_line(&cg.file("memory.limit_in_bytes")),
            kept.to_string()
        );
        assert_eq!(act.write(100_000_001).map(|_| ()).ok(), Some(()));
        assert_eq!(act.current_limit(), Limit::Bytes(kept));
    }

    #[test]
    fn one_descriptor_per_cgroup_and_never_a_recreated_one() {
        let (_t, cg) = v1_cgroup("104857600", None);
        let id = cg.id().unwrap().0;
        let act = MemoryActuator::open_expecting(&cg, Some(id), MemoryOptions::default()).unwrap();
        assert_eq!(act.id(), id);
        // Only the limit file is held.
        assert!(act.memsw.get().is_none() && act.high.get().is_none() && act.reclaim.is_none());
        drop(act);
        // Removed and recreated at the same path: the old id is refused, nothing written.
        let keep = cg.dir().with_extension("old");
        fs::rename(cg.dir(), &keep).unwrap();
        fs::create_dir(cg.dir()).unwrap();
        fs::write(cg.file("memory.limit_in_bytes"), "33554432\n").unwrap();
        let e =
            MemoryActuator::open_expecting(&cg, Some(id), MemoryOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Replaced, "{e}");
        assert!(
            e.to_string().contains(&cg.dir().display().to_string()),
            "{e}"
        );
        assert_eq!(first_line(&cg.file("memory.limit_in_bytes")), "33554432");
        // The new cgroup opens under its own id.
        let new_id = cg.id().unwrap().0;
        assert_ne!(new_id, id);
        let act =
            MemoryActuator::open_expecting(&cg, Some(new_id), MemoryOptions::default()).unwrap();
        assert_eq!(act.current_limit(), Limit::Bytes(32 << 20));
    }

    #[test]
    fn a_writer_keeps_writing_its_own_directory_after_the_path_is_reused() {
        let (_t, cg) = v1_cgroup("104857600", None);
        let act = MemoryActuator::open(&cg, MemoryOptions::default()).unwrap();
        let keep = cg.dir().with_extension("old");
        fs::rename(cg.dir(), &keep).unwrap();
        fs::create_dir(cg.dir()).unwrap();
        fs::write(cg.file("memory.limit_in_bytes"), "33554432\n").unwrap();
        act.set_memory_limit(Limit::Bytes(200 << 20)).unwrap();
        // The descriptor is the old directory's file: the new cgroup is untouched.
        assert_eq!(first_line(&cg.file("memory.limit_in_bytes")), "33554432");
        assert_eq!(
            first_line(&keep.join("memory.limit_in_bytes")),
            (200u64 << 20).to_string()
        );
    }

    /// Issue 16, item 3: memsw unlimited when the files were opened, then set by its owner
    /// (a runtime writes it a few ms after the limit): followed at the owner's gap from the
    /// next write on; and when the owner changes both again, the gap is re-derived from its
    /// new values, not the ones seen at open.
    #[test]
    fn v1_memsw_set_by_its_owner_after_open_follows_the_limit_at_the_owners_gap() {
        let (_t, cg) = v1_cgroup("9223372036854771712", Some("9223372036854771712"));
        let act = MemoryActuator::open(&cg, MemoryOptions::default()).unwrap();
        assert!(!act.manages_memsw(), "an unlimited memsw never binds");
        assert!(act.memsw.get().is_none(), "and costs no descriptor");
        // The runtime writes the limit, then memsw.
        fs::write(cg.file("memory.limit_in_bytes"), "67108864\n").unwrap();
        fs::write(cg.file("memory.memsw.limit_in_bytes"), "134217728\n").unwrap();
        assert_eq!(act.refresh().unwrap(), (Limit::Max, Limit::Bytes(64 << 20)));
        assert_eq!(act.memsw(), Some((Limit::Bytes(128 << 20), 64 << 20)));
        let out = act.set_memory_limit(Limit::Bytes(200 << 20)).unwrap();
        assert_eq!(out.writes, 2);
        assert_eq!(
            first_line(&cg.file("memory.memsw.limit_in_bytes")),
            (264u64 << 20).to_string()
        );
        assert_eq!(
            first_line(&cg.file("memory.limit_in_bytes")),
            (200u64 << 20).to_string()
        );
        // `podman update --memory 100m`: limit 100M, memsw 200M.
        fs::write(cg.file("memory.limit_in_bytes"), "104857600\n").unwrap();
        fs::write(cg.file("memory.memsw.limit_in_bytes"), "209715200\n").unwrap();
        assert_eq!(
            act.refresh().unwrap(),
            (Limit::Bytes(200 << 20), Limit::Bytes(100 << 20))
        );
        assert_eq!(act.memsw(), Some((Limit::Bytes(200 << 20), 100 << 20)));
        act.set_memory_limit(Limit::Bytes(150 << 20)).unwrap();
        assert_eq!(
            first_line(&cg.file("memory.memsw.limit_in_bytes")),
            (250u64 << 20).to_string()
        );
        // The owner lifts memsw again: left alone from then on.
        fs::write(cg.file("memory.memsw.limit_in_bytes"), "-1\n").unwrap();
        act.refresh().unwrap();
        assert!(!act.manages_memsw());
        let out = act.set_memory_limit(Limit::Bytes(300 << 20)).unwrap();
        assert_eq!(out.writes, 1);
    }

    /// A refresh that finds what the writer believes changes nothing (the memsw gap the
    /// writer keeps survives its own writes).
    #[test]
    fn a_refresh_after_the_writers_own_write_finds_nothing_new() {
        let (_t, cg) = v1_cgroup("67108864", Some("134217728"));
        let act = MemoryActuator::open(&cg, MemoryOptions::default()).unwrap();
        act.set_memory_limit(Limit::Bytes(200 << 20)).unwrap();
        assert_eq!(
            act.refresh().unwrap(),
            (Limit::Bytes(200 << 20), Limit::Bytes(200 << 20))
        );
        assert_eq!(act.memsw(), Some((Limit::Bytes(264 << 20), 64 << 20)));
        assert!(act.holds(Setting::Memory(Limit::Bytes(200 << 20)), 200 << 20));
        assert!(!act.holds(Setting::Memory(Limit::Bytes(100 << 20)), 200 << 20));
        assert!(act.holds(Setting::Memory(Limit::Max), u64::MAX));
    }

    /// v2: an owner's memory.high below memory.max follows it at the owner's gap (a raise
    /// never leaves the old throttle below the new limit), never below the owner's own value
    /// when lowered; an unlimited memory.high is left alone.
    #[test]
    fn v2_an_owners_memory_high_follows_max_at_its_gap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cg");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("memory.max"), "67108864\n").unwrap();
        fs::write(dir.join("memory.high"), "50331648\n").unwrap();
        let cg = Cgroup::new(dir, "/cg".into(), CgroupVersion::V2);
        let act = MemoryActuator::open(&cg, MemoryOptions::default()).unwrap();
        assert_eq!(act.managed_high(), Some(Limit::Bytes(48 << 20)));
        let out = act.set_memory_limit(Limit::Bytes(128 << 20)).unwrap();
        assert_eq!(out.writes, 2);
        assert_eq!(
            first_line(&cg.file("memory.max")),
            (128u64 << 20).to_string()
        );
        assert_eq!(
            first_line(&cg.file("memory.high")),
            (112u64 << 20).to_string()
        );
        // Lowered below the owner's 64M: high stays at the owner's 48M, capped at the limit.
        act.set_memory_limit(Limit::Bytes(56 << 20)).unwrap();
        assert_eq!(
            first_line(&cg.file("memory.high")),
            (48u64 << 20).to_string()
        );
        act.set_memory_limit(Limit::Bytes(40 << 20)).unwrap();
        assert_eq!(
            first_line(&cg.file("memory.high")),
            (40u64 << 20).to_string()
        );
        // The owner lifts memory.high: left alone.
        fs::write(cg.file("memory.high"), "max\n").unwrap();
        act.refresh().unwrap();
        assert_eq!(act.managed_high(), None);
        let out = act.set_memory_limit(Limit::Bytes(256 << 20)).unwrap();
        assert_eq!(out.writes, 1);
        assert_eq!(first_line(&cg.file("memory.high")), "max");
        // Unlimited at open: no descriptor held; the owner's next change of the limit (a
        // runtime writing memory.max and memory.high a few ms after mkdir) brings it in.
        let dir2 = tmp.path().join("cg2");
        fs::create_dir(&dir2).unwrap();
        fs::write(dir2.join("memory.max"), "max\n").unwrap();
        fs::write(dir2.join("memory.high"), "max\n").unwrap();
        let cg2 = Cgroup::new(dir2, "/cg2".into(), CgroupVersion::V2);
        let act = MemoryActuator::open(&cg2, MemoryOptions::default()).unwrap();
        assert!(act.high.get().is_none());
        fs::write(cg2.file("memory.max"), "67108864\n").unwrap();
        fs::write(cg2.file("memory.high"), "50331648\n").unwrap();
        act.refresh().unwrap();
        assert_eq!(act.managed_high(), Some(Limit::Bytes(48 << 20)));
        act.set_memory_limit(Limit::Bytes(128 << 20)).unwrap();
        assert_eq!(
            first_line(&cg2.file("memory.high")),
            (112u64 << 20).to_string()
        );
        // No memory.high at all (an old kernel, a fake tree): only memory.max.
        let (_t2, v1) = v1_cgroup("67108864", None);
        assert_eq!(
            MemoryActuator::open(&v1, MemoryOptions::default())
                .unwrap()
                .managed_high(),
            None
        );
    }

    #[test]
    fn follow_owner_plans_high_on_the_safe_side_of_max() {
        let state = MemState {
            limit: Limit::Bytes(1000),
            memsw: None,
            high: Some(Limit::Bytes(800)),
            high_gap: Some((200, 800)),
            owner: Limit::Max,
        };
        let (plan, next) = plan_memory(&state, Limit::Bytes(3000), HighPolicy::FollowOwner);
        assert_eq!(
            steps(&plan),
            vec![
                (MemFile::Limit, Limit::Bytes(3000)),
                (MemFile::High, Limit::Bytes(2800))
            ]
        );
        let (plan, _) = plan_memory(&next, Limit::Bytes(900), HighPolicy::FollowOwner);
        assert_eq!(
            steps(&plan),
            vec![
                (MemFile::High, Limit::Bytes(800)),
                (MemFile::Limit, Limit::Bytes(900))
            ]
        );
        let (plan, _) = plan_memory(&state, Limit::Max, HighPolicy::FollowOwner);
        assert_eq!(
            steps(&plan),
            vec![(MemFile::Limit, Limit::Max), (MemFile::High, Limit::Max)]
        );
    }
}
