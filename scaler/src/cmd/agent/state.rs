//! The agent's state file: for each managed cgroup and resource (memory limit, CPU quota), the
//! limit it had before the agent first changed it (its *original*) and the value the agent
//! last set.
//!
//! The file is JSON with a format version, written atomically (a temporary file created
//! `O_EXCL|O_NOFOLLOW` in the same directory, fsync, rename, directory fsync) with mode 0600 in
//! a directory created 0700, followed by a last-known-good copy (`<name>.prev`) written the same
//! way. A restart, also after SIGKILL, reads it back so that a cgroup the agent already raised
//! keeps its recorded original instead of taking the raised limit for its original. A cgroup
//! is identified by path *and* id (its inode): a cgroup removed and recreated under the same
//! path is a new cgroup whose original is read afresh.
//!
//! A damaged, foreign or planted file is never trusted ([`StateFile::open`]): it is set aside,
//! the copy is read instead, and where neither can be read the cgroups found at start get
//! *unknown* originals, which restores leave alone, rather than a raised limit taken for an
//! original.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    actuator::Setting,
    cgroupfs::{CpuQuota, Limit},
    decider::Resource,
};

/// Version of the file format.
pub const STATE_VERSION: u32 = 1;

/// Errors of the state file. Reading errors other than "not found" are reported so the agent
/// can say that it starts without history; writing errors so it can say what it cannot record.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state file {path} is damaged: not valid JSON of format version {STATE_VERSION} ({source})")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the state file {path} has format version {found}, which this agent (format {STATE_VERSION}) cannot read")]
    Version { path: PathBuf, found: u32 },
    #[error("the state file {path} is not trusted: {why}")]
    Untrusted { path: PathBuf, why: String },
    #[error("writing the state file {path}: {source} (check that its directory is writable by the agent)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    /// A damaged, foreign or unreadable-format file (set aside at start), as opposed to an I/O
    /// error.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StateError::Parse { .. } | StateError::Version { .. } | StateError::Untrusted { .. }
        )
    }
}

/// A limit as stored: a byte count or the word `"max"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum StoredLimit {
    Bytes(u64),
    Word(MaxWord),
}

/// The word `"max"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum MaxWord {
    #[serde(rename = "max")]
    Max,
}

impl From<Limit> for StoredLimit {
    fn from(l: Limit) -> Self {
        match l {
            Limit::Max => StoredLimit::Word(MaxWord::Max),
            Limit::Bytes(b) => StoredLimit::Bytes(b),
        }
    }
}

impl From<StoredLimit> for Limit {
    fn from(s: StoredLimit) -> Self {
        match s {
            StoredLimit::Word(MaxWord::Max) => Limit::Max,
            StoredLimit::Bytes(b) => Limit::from_bytes(b),
        }
    }
}

/// A CPU quota as stored: `{"quota_us": .., "period_us": ..}` or the word `"max"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredQuota {
    Quota { quota_us: u64, period_us: u64 },
    Word(MaxWord),
}

impl From<CpuQuota> for StoredQuota {
    fn from(q: CpuQuota) -> Self {
        match q {
            CpuQuota::Max => StoredQuota::Word(MaxWord::Max),
            CpuQuota::Quota {
                quota_us,
                period_us,
            } => StoredQuota::Quota {
                quota_us,
                period_us,
            },
        }
    }
}

impl From<StoredQuota> for CpuQuota {
    fn from(s: StoredQuota) -> Self {
        match s {
            StoredQuota::Word(MaxWord::Max) => CpuQuota::Max,
            StoredQuota::Quota {
                quota_us,
                period_us,
            } => CpuQuota::Quota {
                quota_us,
                period_us,
            },
        }
    }
}

/// What is recorded about one managed cgroup, for one resource: `L` is [`StoredLimit`] for
/// memory, [`StoredQuota`] for CPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(serialize = "L: Serialize", deserialize = "L: Deserialize<'de>"))]
pub struct Record<L> {
    /// The cgroup's id (inode) when it was first managed.
    pub id: u64,
    /// The policy that manages it.
    pub policy: String,
    /// The limit before the agent first changed it.
    pub original: L,
    /// The limit the agent last set (equal to `original` until it changes it).
    pub current: L,
    /// Limit changes the agent made (written).
    pub changes: u64,
    /// The agent started after its state file (and the last-known-good copy) was lost or
    /// damaged, with this cgroup already there: `original` is only the limit it had then,
    /// which may be one the agent had raised. Restores leave such a cgroup as it is; a limit
    /// its owner writes makes the original known again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unknown_original: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A memory record.
pub type CgroupRecord = Record<StoredLimit>;
/// A CPU (CFS quota) record.
pub type CpuRecord = Record<StoredQuota>;

/// What [`Table::observe`] concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed<L> {
    /// Not a recorded cgroup.
    Unknown,
    /// The limit is the one the agent last set (or the original it never changed).
    AsSet,
    /// A write of the agent's raced the sample: nothing concluded.
    Unsure,
    /// Someone else's value: adopted as the new original (and current), at once.
    Adopted { previous: L },
}

impl<L> Observed<L> {
    /// The same outcome with the value converted.
    pub fn map<M>(self, f: impl FnOnce(L) -> M) -> Observed<M> {
        match self {
            Observed::Unknown => Observed::Unknown,
            Observed::AsSet => Observed::AsSet,
            Observed::Unsure => Observed::Unsure,
            Observed::Adopted { previous } => Observed::Adopted {
                previous: f(previous),
            },
        }
    }
}

/// The records of one resource, by cgroup path (relative to that resource's hierarchy root;
/// on cgroup v1 the memory and cpu hierarchies are different trees with different ids).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    transparent,
    bound(serialize = "L: Serialize", deserialize = "L: Deserialize<'de>")
)]
pub struct Table<L> {
    records: BTreeMap<String, Record<L>>,
    /// Changes not yet written.
    #[serde(skip)]
    dirty: bool,
}

impl<L> Default for Table<L> {
    fn default() -> Self {
        Self {
            records: BTreeMap::new(),
            dirty: false,
        }
    }
}

impl<L: PartialEq> PartialEq for Table<L> {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
    }
}

impl<L: Eq> Eq for Table<L> {}

impl<L: Copy + PartialEq> Table<L> {
    /// The records.
    pub fn records(&self) -> &BTreeMap<String, Record<L>> {
        &self.records
    }

    /// True if nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record of `path` if it is the same cgroup (`id`).
    pub fn get(&self, path: &str, id: u64) -> Option<&Record<L>> {
        self.records.get(path).filter(|r| r.id == id)
    }

    /// Starts managing `path`: returns its original limit and whether that original is
    /// unknown. A record of the same cgroup keeps its original (the agent may have set
    /// `current` itself, before a restart); otherwise `current` is the original, marked
    /// unknown when `unknown_if_new` (the state was lost: `current` may be a raised limit).
    pub fn manage(
        &mut self,
        path: &str,
        id: u64,
        policy: &str,
        current: L,
        unknown_if_new: bool,
    ) -> (L, bool) {
        if let Some(r) = self.records.get_mut(path).filter(|r| r.id == id) {
            if r.policy != policy || r.current != current {
                r.policy = policy.to_owned();
                r.current = current;
                self.dirty = true;
            }
            return (r.original, r.unknown_original);
        }
        self.records.insert(
            path.to_owned(),
            Record {
                id,
                policy: policy.to_owned(),
                original: current,
                current,
                changes: 0,
                unknown_original: unknown_if_new,
            },
        );
        self.dirty = true;
        (current, unknown_if_new)
    }

    /// Records that the agent set `path`'s limit to `new`.
    pub fn changed(&mut self, path: &str, new: L) {
        if let Some(r) = self.records.get_mut(path) {
            r.current = new;
            r.changes += 1;
            self.dirty = true;
        }
    }

    /// Compares the limit `observed` in the cgroup with `ours`, what the agent had written
    /// when it read it (from the engine's [`WriteMark`](crate::actuator::WriteMark); `None`
    /// when one of its writes raced the read). The same: the record's `current` follows it
    /// (so a lost action record loses nothing). Different: someone else (the runtime setting
    /// a new cgroup's limit just after creating it, an operator, an in-place pod resize)
    /// changed it, and that owner's value becomes the original at once, in the same sample
    /// in which the decider adopts it, so that no raise in between can override it.
    pub fn observe(&mut self, path: &str, observed: L, ours: Option<L>) -> Observed<L> {
        let Some(r) = self.records.get_mut(path) else {
            return Observed::Unknown;
        };
        let Some(ours) = ours else {
            return Observed::Unsure;
        };
        if observed == ours {
            if r.current != ours {
                r.current = ours;
                self.dirty = true;
            }
            return Observed::AsSet;
        }
        let previous = r.original;
        r.original = observed;
        r.current = observed;
        r.unknown_original = false;
        self.dirty = true;
        Observed::Adopted { previous }
    }

    /// The limit's owner wrote `value` (found by the engine when it re-read the limit before
    /// a write, or on an event that disagreed with it): the new original and current. Returns
    /// the previous original, `None` when `path` is not recorded.
    pub fn owner_wrote(&mut self, path: &str, value: L) -> Option<L> {
        let r = self.records.get_mut(path)?;
        let previous = r.original;
        r.original = value;
        r.current = value;
        r.unknown_original = false;
        self.dirty = true;
        Some(previous)
    }

    /// Forgets `path` (removed, deselected or restored).
    pub fn forget(&mut self, path: &str) -> Option<Record<L>> {
        let r = self.records.remove(path);
        self.dirty |= r.is_some();
        r
    }

    /// Keeps only the records for which `keep(path, record)` is true; returns the dropped ones.
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(&str, &Record<L>) -> bool,
    ) -> Vec<(String, Record<L>)> {
        let drop: Vec<String> = self
            .records
            .iter()
            .filter(|(p, r)| !keep(p, r))
            .map(|(p, _)| p.clone())
            .collect();
        let dropped: Vec<(String, Record<L>)> = drop
            .into_iter()
            .filter_map(|p| self.records.remove(&p).map(|r| (p, r)))
            .collect();
        self.dirty |= !dropped.is_empty();
        dropped
    }
}

/// One record of any resource, as [`Setting`]s.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingRecord {
    pub path: String,
    pub id: u64,
    pub original: Setting,
    pub current: Setting,
    pub unknown_original: bool,
}

/// The file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDoc {
    pub version: u32,
    /// Memory records by cgroup path (relative to the memory hierarchy root).
    pub cgroups: Table<StoredLimit>,
    /// CPU quota records by cgroup path (relative to the cpu hierarchy root). Absent in files
    /// written before the agent managed CPU.
    #[serde(default, skip_serializing_if = "Table::is_empty")]
    pub cpu: Table<StoredQuota>,
}

/// Just the version, read before the rest (a future format may differ in anything else).
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// The largest state file read (about 150 bytes per cgroup: far more than any node needs).
const MAX_STATE_BYTES: u64 = 64 << 20;

/// How the state was found at start.
#[derive(Debug)]
pub enum Recovery {
    /// Read from the state file, or none was there and no copy either (a first start).
    Clean,
    /// The state file was damaged (set aside as `*.bad`) or missing; its last-known-good
    /// copy was read instead.
    FromCopy {
        /// What was wrong with the state file (`None`: it was missing).
        problem: Option<StateError>,
    },
    /// Neither the state file nor its copy could be read: the cgroups found at start get
    /// unknown originals (restores leave them as they are).
    Unknown {
        /// What was wrong with the state file (`None`: it was missing).
        problem: Option<StateError>,
        /// What was wrong with the copy (`None`: it was missing).
        copy: Option<StateError>,
    },
}

/// The state file and its in-memory copy.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    doc: StateDoc,
    dirty: bool,
    /// Cgroups managed from now on get unknown originals (see [`Recovery::Unknown`]), until
    /// [`end_recovery`](Self::end_recovery).
    unknown_new: bool,
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Reads and checks one state document; `Ok(None)` when there is no file. The file is opened
/// without following a symbolic link, must be a regular file of the agent's own user that
/// nobody else may write, at most [`MAX_STATE_BYTES`], and of this format version.
fn read_doc(path: &Path) -> Result<Option<StateDoc>, StateError> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StateError::Untrusted {
                path: path.to_owned(),
                why: "it is a symbolic link (not followed)".into(),
            })
        }
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let read_err = |source| StateError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = f.metadata().map_err(read_err)?;
    let untrusted = |why: String| StateError::Untrusted {
        path: path.to_owned(),
        why,
    };
    if !meta.file_type().is_file() {
        return Err(untrusted("it is not a regular file".into()));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(untrusted(format!(
            "it is owned by uid {}, not the agent's uid {euid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "others may write it (mode {:o})",
            meta.mode() & 0o777
        )));
    }
    if meta.len() > MAX_STATE_BYTES {
        return Err(untrusted(format!(
            "it is {} bytes, more than the {MAX_STATE_BYTES} a state file can be",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    f.take(MAX_STATE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    let parse = |source| StateError::Parse {
        path: path.to_owned(),
        source,
    };
    let v: VersionOnly = serde_json::from_slice(&bytes).map_err(parse)?;
    if v.version != STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_owned(),
            found: v.version,
        });
    }
    serde_json::from_slice(&bytes).map(Some).map_err(parse)
}

/// Moves a damaged file aside (to `*.bad`, replacing an older one), so that it can be looked
/// at and is not read again; returns where it went.
fn set_aside(path: &Path) -> Option<PathBuf> {
    let aside = with_suffix(path, ".bad");
    fs::rename(path, &aside).ok().map(|_| aside)
}

impl StateFile {
    /// Opens the state at `path`; a missing file is an empty state. Any problem with the file
    /// is an error (see [`open`](Self::open) for the agent's recovery).
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let doc = read_doc(path)?.unwrap_or_else(|| StateDoc {
            version: STATE_VERSION,
            ..StateDoc::default()
        });
        Ok(Self {
            path: path.to_owned(),
            doc,
            dirty: false,
            unknown_new: false,
        })
    }

    /// The path of the last-known-good copy of the state file at `path` (`<name>.prev`).
    pub fn copy_path(path: &Path) -> PathBuf {
        with_suffix(path, ".prev")
    }

    /// Opens the state at `path` as the agent does at start: a state file that is damaged
    /// (truncated, not JSON, of an unknown version, a symbolic link, not the agent's own) is
    /// set aside as `<name>.bad` and its last-known-good copy (`<name>.prev`) read instead;
    /// where neither can be read, the state starts empty with the cgroups found at start
    /// marked as having unknown originals. Only an I/O error (permissions, disk) is an error.
    pub fn open(path: &Path) -> Result<(Self, Recovery), StateError> {
        let problem = match read_doc(path) {
            Ok(Some(doc)) => return Ok((Self::with_doc(path, doc, false), Recovery::Clean)),
            Ok(None) => None,
            Err(e) if e.is_damage() => {
                set_aside(path);
                Some(e)
            }
            Err(e) => return Err(e),
        };
        let copy_path = Self::copy_path(path);
        let copy = match read_doc(&copy_path) {
            Ok(Some(doc)) => {
                let mut s = Self::with_doc(path, doc, false);
                // Write the recovered state back as the state file.
                s.dirty = true;
                return Ok((s, Recovery::FromCopy { problem }));
            }
            Ok(None) if problem.is_none() => {
                return Ok((Self::load(path)?, Recovery::Clean));
            }
            Ok(None) => None,
            Err(e) if e.is_damage() => {
                set_aside(&copy_path);
                Some(e)
            }
            Err(e) => return Err(e),
        };
        let doc = StateDoc {
            version: STATE_VERSION,
            ..StateDoc::default()
        };
        Ok((
            Self::with_doc(path, doc, true),
            Recovery::Unknown { problem, copy },
        ))
    }

    fn with_doc(path: &Path, doc: StateDoc, unknown_new: bool) -> Self {
        Self {
            path: path.to_owned(),
            doc,
            dirty: unknown_new,
            unknown_new,
        }
    }

    /// An empty state that will be written to `path`.
    pub fn empty(path: &Path) -> Self {
        let doc = StateDoc {
            version: STATE_VERSION,
            ..StateDoc::default()
        };
        let mut s = Self::with_doc(path, doc, false);
        s.dirty = true;
        s
    }

    /// Whether cgroups managed now get unknown originals (see [`Recovery::Unknown`]).
    pub fn recovering(&self) -> bool {
        self.unknown_new
    }

    /// The cgroups that existed at start are managed: cgroups found from now on are new, and
    /// their limit is their original.
    pub fn end_recovery(&mut self) {
        self.unknown_new = false;
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The memory records.
    pub fn memory(&self) -> &Table<StoredLimit> {
        &self.doc.cgroups
    }

    /// The memory records, to change.
    pub fn memory_mut(&mut self) -> &mut Table<StoredLimit> {
        &mut self.doc.cgroups
    }

    /// The CPU quota records.
    pub fn cpu(&self) -> &Table<StoredQuota> {
        &self.doc.cpu
    }

    /// The CPU quota records, to change.
    pub fn cpu_mut(&mut self) -> &mut Table<StoredQuota> {
        &mut self.doc.cpu
    }

    /// The memory records.
    pub fn records(&self) -> &BTreeMap<String, CgroupRecord> {
        self.doc.cgroups.records()
    }

    /// The memory record of `path` if it is the same cgroup (`id`).
    pub fn get(&self, path: &str, id: u64) -> Option<&CgroupRecord> {
        self.doc.cgroups.get(path, id)
    }

    /// [`Table::manage`] of the memory records (new ones with unknown originals while
    /// [`recovering`](Self::recovering)): the original and whether it is unknown.
    pub fn manage(&mut self, path: &str, id: u64, policy: &str, current: Limit) -> (Limit, bool) {
        let (o, unknown) =
            self.doc
                .cgroups
                .manage(path, id, policy, current.into(), self.unknown_new);
        (o.into(), unknown)
    }

    /// [`Table::changed`] of the memory records.
    pub fn changed(&mut self, path: &str, new: Limit) {
        self.doc.cgroups.changed(path, new.into());
    }

    /// [`Table::observe`] of the memory records.
    pub fn observe(&mut self, path: &str, observed: Limit, ours: Option<Limit>) -> Observed<Limit> {
        self.doc
            .cgroups
            .observe(path, observed.into(), ours.map(Into::into))
            .map(Into::into)
    }

    /// [`Table::forget`] of the memory records.
    pub fn forget(&mut self, path: &str) -> Option<CgroupRecord> {
        self.doc.cgroups.forget(path)
    }

    /// [`Table::retain`] of the memory records.
    pub fn retain(
        &mut self,
        keep: impl FnMut(&str, &CgroupRecord) -> bool,
    ) -> Vec<(String, CgroupRecord)> {
        self.doc.cgroups.retain(keep)
    }

    /// The records of any resource for which `keep(path)` holds, as [`Setting`]s.
    fn settings_of<L: Copy + PartialEq>(
        t: &Table<L>,
        keep: impl Fn(&str) -> bool,
        to: impl Fn(L) -> Setting,
    ) -> Vec<SettingRecord> {
        t.records()
            .iter()
            .filter(|(p, _)| keep(p))
            .map(|(p, r)| SettingRecord {
                path: p.clone(),
                id: r.id,
                original: to(r.original),
                current: to(r.current),
                unknown_original: r.unknown_original,
            })
            .collect()
    }

    /// Whether any record of `resource` is kept.
    pub fn has_records(&self, resource: Resource) -> bool {
        match resource {
            Resource::Memory => !self.doc.cgroups.is_empty(),
            Resource::Cpu => !self.doc.cpu.is_empty(),
        }
    }

    /// The records of `resource`.
    pub fn settings(&self, resource: Resource) -> Vec<SettingRecord> {
        self.settings_where(resource, |_| true)
    }

    /// The records of `resource` whose path `keep` accepts.
    pub fn settings_where(
        &self,
        resource: Resource,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<SettingRecord> {
        match resource {
            Resource::Memory => {
                Self::settings_of(&self.doc.cgroups, keep, |l| Setting::Memory(l.into()))
            }
            Resource::Cpu => Self::settings_of(&self.doc.cpu, keep, |q| Setting::Cpu(q.into())),
        }
    }

    /// [`Table::manage`] of the setting's resource: returns the original and whether it is
    /// unknown.
    pub fn manage_setting(
        &mut self,
        path: &str,
        id: u64,
        policy: &str,
        current: Setting,
    ) -> (Setting, bool) {
        match current {
            Setting::Memory(l) => {
                let (o, unknown) = self.manage(path, id, policy, l);
                (Setting::Memory(o), unknown)
            }
            Setting::Cpu(q) => {
                let (o, unknown) =
                    self.doc
                        .cpu
                        .manage(path, id, policy, q.into(), self.unknown_new);
                (Setting::Cpu(o.into()), unknown)
            }
        }
    }

    /// [`Table::changed`] of the setting's resource.
    pub fn changed_setting(&mut self, path: &str, new: Setting) {
        match new {
            Setting::Memory(l) => self.changed(path, l),
            Setting::Cpu(q) => self.doc.cpu.changed(path, q.into()),
        }
    }

    /// [`Table::observe`] of the setting's resource (`ours` of another resource counts as
    /// inconclusive).
    pub fn observe_setting(
        &mut self,
        path: &str,
        observed: Setting,
        ours: Option<Setting>,
    ) -> Observed<Setting> {
        match observed {
            Setting::Memory(l) => {
                let ours = ours.and_then(|o| match o {
                    Setting::Memory(o) => Some(o),
                    Setting::Cpu(_) => None,
                });
                self.observe(path, l, ours).map(Setting::Memory)
            }
            Setting::Cpu(q) => {
                let ours = ours.and_then(|o| match o {
                    Setting::Cpu(o) => Some(StoredQuota::from(o)),
                    Setting::Memory(_) => None,
                });
                self.doc
                    .cpu
                    .observe(path, q.into(), ours)
                    .map(|q| Setting::Cpu(q.into()))
            }
        }
    }

    /// [`Table::owner_wrote`] of the resource of `value`.
    pub fn owner_wrote_setting(&mut self, path: &str, value: Setting) -> Option<Setting> {
        match value {
            Setting::Memory(l) => self
                .doc
                .cgroups
                .owner_wrote(path, l.into())
                .map(|p| Setting::Memory(p.into())),
            Setting::Cpu(q) => self
                .doc
                .cpu
                .owner_wrote(path, q.into())
                .map(|p| Setting::Cpu(p.into())),
        }
    }

    /// [`Table::forget`] of `resource`'s records.
    pub fn forget_setting(&mut self, resource: Resource, path: &str) {
        match resource {
            Resource::Memory => {
                self.doc.cgroups.forget(path);
            }
            Resource::Cpu => {
                self.doc.cpu.forget(path);
            }
        }
    }

    /// [`Table::retain`] of `resource`'s records, by path: returns the dropped ones as
    /// `(path, original, current)`.
    pub fn retain_settings(
        &mut self,
        resource: Resource,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Vec<(String, Setting, Setting)> {
        fn dropped<L: Copy + PartialEq>(
            t: &mut Table<L>,
            keep: &mut impl FnMut(&str) -> bool,
            to: impl Fn(L) -> Setting,
        ) -> Vec<(String, Setting, Setting)> {
            t.retain(|p, _| keep(p))
                .into_iter()
                .map(|(p, r)| (p, to(r.original), to(r.current)))
                .collect()
        }
        match resource {
            Resource::Memory => dropped(&mut self.doc.cgroups, &mut keep, |l| {
                Setting::Memory(l.into())
            }),
            Resource::Cpu => dropped(&mut self.doc.cpu, &mut keep, |q| Setting::Cpu(q.into())),
        }
    }

    /// True if there are changes not yet written.
    pub fn is_dirty(&self) -> bool {
        self.dirty || self.doc.cgroups.dirty || self.doc.cpu.dirty
    }

    /// Writes the state if it changed since the last write.
    pub fn save_if_dirty(&mut self) -> Result<(), StateError> {
        if self.is_dirty() {
            self.save()?;
        }
        Ok(())
    }

    /// Writes the state, then its last-known-good copy (`<name>.prev`), each atomically: a
    /// temporary file created with `O_EXCL|O_NOFOLLOW` (mode 0600) in the same directory,
    /// fsync, rename over the file, fsync of the directory. The directory is created (0700)
    /// if missing. Either file alone recovers everything the other held.
    pub fn save(&mut self) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err)?;
        let mut json = serde_json::to_vec_pretty(&self.doc).expect("state serializes");
        json.push(b'\n');
        write_atomic(&dir, &self.path, &json).map_err(err)?;
        let copy = Self::copy_path(&self.path);
        write_atomic(&dir, &copy, &json).map_err(|source| StateError::Write {
            path: copy.clone(),
            source,
        })?;
        self.dirty = false;
        self.doc.cgroups.dirty = false;
        self.doc.cpu.dirty = false;
        Ok(())
    }
}

/// Writes `bytes` to `path` in `dir` atomically: see [`StateFile::save`].
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let create = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
    };
    let mut f = match create() {
        // Left by an earlier run with the same pid (or planted): never written through.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp)?;
            create()?
        }
        r => r?,
    };
    let mut write = || -> std::io::Result<()> {
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    let r = write();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const M: u64 = 1 << 20;

    fn known(l: Limit) -> (Limit, bool) {
        (l, false)
    }

    #[test]
    fn a_missing_file_is_an_empty_state() {
        let d = tempfile::tempdir().unwrap();
        let s = StateFile::load(&d.path().join("nope.json")).unwrap();
        assert!(s.records().is_empty());
        assert!(!s.is_dirty());
        let (s, r) = StateFile::open(&d.path().join("nope.json")).unwrap();
        assert!(matches!(r, Recovery::Clean), "{r:?}");
        assert!(!s.recovering());
    }

    #[test]
    fn originals_survive_a_restart_and_are_not_re_read() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/dir/state.json");
        let mut s = StateFile::load(&path).unwrap();
        assert_eq!(
            s.manage("/a", 7, "p", Limit::Bytes(64 * M)),
            known(Limit::Bytes(64 * M))
        );
        assert_eq!(s.manage("/b", 8, "p", Limit::Max), known(Limit::Max));
        s.changed("/a", Limit::Bytes(200 * M));
        s.save().unwrap();
        assert!(!s.is_dirty());

        // Restart (as after SIGKILL): /a is now at the limit the agent set.
        let mut s = StateFile::load(&path).unwrap();
        assert_eq!(s.records()["/a"].changes, 1);
        assert_eq!(
            s.manage("/a", 7, "p", Limit::Bytes(200 * M)),
            known(Limit::Bytes(64 * M)),
            "original kept"
        );
        assert_eq!(s.manage("/b", 8, "p", Limit::Max), known(Limit::Max));
        // Recreated under the same path (a new id): a new cgroup, original read afresh.
        assert_eq!(
            s.manage("/a", 9, "p", Limit::Bytes(300 * M)),
            known(Limit::Bytes(300 * M))
        );
        assert_eq!(s.get("/a", 7), None);
        assert_eq!(
            s.get("/a", 9).unwrap().original,
            StoredLimit::Bytes(300 * M)
        );
    }

    #[test]
    fn file_and_directory_modes_and_format() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state/state.json");
        let mut s = StateFile::load(&path).unwrap();
        s.manage("/a", 1, "p", Limit::Max);
        s.save().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&StateFile::copy_path(&path)), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["cgroups"]["/a"]["original"], "max");
        assert!(v["cgroups"]["/a"].get("unknown_original").is_none());
        // The last-known-good copy holds the same, and no temp files are left behind.
        assert_eq!(
            fs::read(&path).unwrap(),
            fs::read(StateFile::copy_path(&path)).unwrap()
        );
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 2);
    }

    #[test]
    fn corrupt_and_future_files_are_reported_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.json");
        fs::write(&path, "{not json").unwrap();
        let e = StateFile::load(&path).unwrap_err();
        assert!(matches!(e, StateError::Parse { .. }));
        assert!(e.is_damage());
        assert!(e.to_string().contains("state.json"), "{e}");
        fs::write(&path, r#"{"version": 99, "cgroups": {}}"#).unwrap();
        assert!(matches!(
            StateFile::load(&path).unwrap_err(),
            StateError::Version { found: 99, .. }
        ));
        // A future version is refused by its number, whatever else it holds.
        fs::write(&path, r#"{"version": 2, "cgroups": [1, 2], "new": {}}"#).unwrap();
        assert!(matches!(
            StateFile::load(&path).unwrap_err(),
            StateError::Version { found: 2, .. }
        ));
        fs::write(&path, r#"{"version": 1, "cgroups": {"/x": {"id": 1, "policy": "p", "original": "min", "current": 1, "changes": 0}}}"#).unwrap();
        assert!(matches!(
            StateFile::load(&path).unwrap_err(),
            StateError::Parse { .. }
        ));
        // Truncated.
        let mut good = StateFile::load(&d.path().join("g.json")).unwrap();
        good.manage("/a", 1, "p", Limit::Bytes(64 * M));
        good.save().unwrap();
        let bytes = fs::read(d.path().join("g.json")).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            StateFile::load(&path).unwrap_err(),
            StateError::Parse { .. }
        ));
        fs::write(&path, "").unwrap();
        assert!(StateFile::load(&path).unwrap_err().is_damage());
    }

    #[test]
    fn symlinks_foreign_and_odd_files_are_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.json");
        let target = d.path().join("elsewhere.json");
        fs::write(&target, r#"{"version": 1, "cgroups": {}}"#).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = StateFile::load(&path).unwrap_err();
        assert!(
            matches!(e, StateError::Untrusted { .. }) && e.to_string().contains("symbolic link"),
            "{e}"
        );
        fs::remove_file(&path).unwrap();
        fs::write(&path, r#"{"version": 1, "cgroups": {}}"#).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let e = StateFile::load(&path).unwrap_err();
        assert!(e.to_string().contains("others may write it"), "{e}");
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(StateFile::load(&path).unwrap_err().is_damage());
        fs::remove_dir(&path).unwrap();

        // Saving never writes through a symbolic link planted at the path (or at a temp
        // name): the link is replaced, its target untouched.
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let mut s = StateFile::empty(&path);
        s.manage("/a", 1, "p", Limit::Max);
        s.save().unwrap();
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            r#"{"version": 1, "cgroups": {}}"#
        );
        assert_eq!(StateFile::load(&path).unwrap().records().len(), 1);
    }

    #[test]
    fn a_damaged_state_file_is_recovered_from_its_copy_or_marks_originals_unknown() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.json");
        let copy = StateFile::copy_path(&path);
        let mut s = StateFile::load(&path).unwrap();
        s.manage("/a", 1, "p", Limit::Bytes(64 * M));
        s.changed("/a", Limit::Bytes(200 * M));
        s.save().unwrap();

        // Garbage in the state file: set aside, the copy read.
        fs::write(&path, "\0\0garbage").unwrap();
        let (mut s, r) = StateFile::open(&path).unwrap();
        assert!(
            matches!(
                r,
                Recovery::FromCopy {
                    problem: Some(StateError::Parse { .. })
                }
            ),
            "{r:?}"
        );
        assert!(path.with_file_name("state.json.bad").exists());
        assert!(!s.recovering());
        assert_eq!(
            s.manage("/a", 1, "p", Limit::Bytes(200 * M)),
            known(Limit::Bytes(64 * M)),
            "the true original, not the raised limit"
        );
        assert!(s.is_dirty(), "the recovered state is written back");
        s.save().unwrap();

        // The state file missing: the copy read.
        fs::remove_file(&path).unwrap();
        let (s, r) = StateFile::open(&path).unwrap();
        assert!(matches!(r, Recovery::FromCopy { problem: None }), "{r:?}");
        assert_eq!(s.records()["/a"].original, StoredLimit::Bytes(64 * M));

        // Both damaged: the cgroups found now get unknown originals, until the first
        // reconcile is over.
        fs::write(&path, "{\"version\": 1, \"cgr").unwrap();
        fs::write(&copy, "").unwrap();
        let (mut s, r) = StateFile::open(&path).unwrap();
        assert!(
            matches!(
                r,
                Recovery::Unknown {
                    problem: Some(_),
                    copy: Some(_)
                }
            ),
            "{r:?}"
        );
        assert!(s.recovering());
        assert_eq!(
            s.manage("/a", 1, "p", Limit::Bytes(200 * M)),
            (Limit::Bytes(200 * M), true)
        );
        s.end_recovery();
        assert_eq!(
            s.manage("/new", 2, "p", Limit::Bytes(32 * M)),
            known(Limit::Bytes(32 * M))
        );
        let rec = s
            .settings(Resource::Memory)
            .into_iter()
            .find(|r| r.path == "/a")
            .unwrap();
        assert!(rec.unknown_original);
        s.save().unwrap();
        // It stays unknown across a restart, until its owner writes a limit.
        let mut s = StateFile::load(&path).unwrap();
        assert!(s.records()["/a"].unknown_original);
        assert_eq!(
            s.manage("/a", 1, "p", Limit::Bytes(200 * M)),
            (Limit::Bytes(200 * M), true)
        );
        assert_eq!(
            s.observe("/a", Limit::Bytes(96 * M), Some(Limit::Bytes(200 * M))),
            Observed::Adopted {
                previous: Limit::Bytes(200 * M)
            }
        );
        assert!(!s.records()["/a"].unknown_original);

        // A state file missing with a damaged copy: unknown too.
        fs::remove_file(&path).unwrap();
        fs::write(&copy, "[]").unwrap();
        let (_, r) = StateFile::open(&path).unwrap();
        assert!(
            matches!(
                r,
                Recovery::Unknown {
                    problem: None,
                    copy: Some(_)
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_limit_changed_behind_the_agents_back_becomes_the_original_at_once() {
        let d = tempfile::tempdir().unwrap();
        let mut s = StateFile::load(&d.path().join("s.json")).unwrap();
        // Managed the instant it was created: no limit yet.
        assert_eq!(s.manage("/pod", 1, "p", Limit::Max), known(Limit::Max));
        assert_eq!(
            s.observe("/pod", Limit::Max, Some(Limit::Max)),
            Observed::AsSet
        );
        // The runtime sets 64M: adopted by the first sample that sees it.
        assert_eq!(
            s.observe("/pod", Limit::Bytes(64 * M), Some(Limit::Max)),
            Observed::Adopted {
                previous: Limit::Max
            }
        );
        assert_eq!(s.records()["/pod"].original, StoredLimit::Bytes(64 * M));
        // The agent's own change is not foreign, even when its record never arrived: the
        // write mark says what the agent wrote, and `current` follows it.
        assert_eq!(
            s.observe("/pod", Limit::Bytes(128 * M), Some(Limit::Bytes(128 * M))),
            Observed::AsSet
        );
        assert_eq!(s.records()["/pod"].current, StoredLimit::Bytes(128 * M));
        assert_eq!(s.records()["/pod"].original, StoredLimit::Bytes(64 * M));
        // A sample that raced a write of the agent's concludes nothing.
        assert_eq!(
            s.observe("/pod", Limit::Bytes(96 * M), None),
            Observed::Unsure
        );
        assert_eq!(s.records()["/pod"].original, StoredLimit::Bytes(64 * M));
        assert_eq!(
            s.observe("/nope", Limit::Max, Some(Limit::Max)),
            Observed::Unknown
        );
    }

    #[test]
    fn an_owners_write_the_engine_adopted_becomes_the_original() {
        let d = tempfile::tempdir().unwrap();
        let mut s = StateFile::load(&d.path().join("s.json")).unwrap();
        assert_eq!(s.manage("/ctr", 1, "p", Limit::Max), known(Limit::Max));
        s.changed("/ctr", Limit::Bytes(256 * M));
        assert_eq!(
            s.owner_wrote_setting("/ctr", Setting::Memory(Limit::Bytes(64 * M))),
            Some(Setting::Memory(Limit::Max))
        );
        assert_eq!(s.records()["/ctr"].original, StoredLimit::Bytes(64 * M));
        assert_eq!(s.records()["/ctr"].current, StoredLimit::Bytes(64 * M));
        assert_eq!(
            s.owner_wrote_setting("/nope", Setting::Memory(Limit::Max)),
            None
        );
    }

    #[test]
    fn cpu_quotas_are_recorded_beside_memory_and_old_files_still_load() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.json");
        // A file written before the agent managed CPU has no "cpu" table.
        fs::write(
            &path,
            r#"{"version": 1, "cgroups": {"/m": {"id": 1, "policy": "p", "original": 1048576, "current": 2097152, "changes": 1}}}"#,
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let mut s = StateFile::load(&path).unwrap();
        assert!(s.cpu().is_empty());
        let q = |quota_us| CpuQuota::Quota {
            quota_us,
            period_us: 100_000,
        };
        assert_eq!(
            s.cpu_mut().manage("/c", 5, "p", q(20_000).into(), false),
            (StoredQuota::from(q(20_000)), false)
        );
        s.cpu_mut().changed("/c", q(150_000).into());
        assert!(s.is_dirty());
        s.save().unwrap();
        assert!(!s.is_dirty());
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["cpu"]["/c"]["original"]["quota_us"], 20_000);
        assert_eq!(v["cpu"]["/c"]["current"]["quota_us"], 150_000);
        assert_eq!(v["cgroups"]["/m"]["original"], 1_048_576);

        // Restart: the CPU original survives the raise, like memory's.
        let mut s = StateFile::load(&path).unwrap();
        assert_eq!(
            s.manage_setting("/c", 5, "p", Setting::Cpu(q(150_000))),
            (Setting::Cpu(q(20_000)), false)
        );
        assert_eq!(
            s.observe_setting(
                "/c",
                Setting::Cpu(CpuQuota::Max),
                Some(Setting::Cpu(q(150_000)))
            ),
            Observed::Adopted {
                previous: Setting::Cpu(q(20_000))
            }
        );
        assert_eq!(s.records()["/m"].changes, 1);
    }

    #[test]
    fn retain_drops_vanished_cgroups() {
        let d = tempfile::tempdir().unwrap();
        let mut s = StateFile::load(&d.path().join("s.json")).unwrap();
        s.manage("/keep", 1, "p", Limit::Max);
        s.manage("/gone", 2, "p", Limit::Max);
        s.save().unwrap();
        let dropped = s.retain(|p, _| p == "/keep");
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].0, "/gone");
        assert!(s.is_dirty());
        assert_eq!(s.records().keys().collect::<Vec<_>>(), ["/keep"]);
    }
}
