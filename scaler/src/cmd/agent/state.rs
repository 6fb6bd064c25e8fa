//! The agent's state file: for each managed cgroup and resource (memory limit, CPU quota), the
//! limit it had before the agent first changed it (its *original*) and the value the agent
//! last set.
//!
//! The file is JSON, written atomically (a temporary file in the same directory, fsync, rename)
//! with mode 0600 in a directory created 0700. A restart, also after SIGKILL, reads it back so
//! that a cgroup the agent already raised keeps its recorded original instead of taking the
//! raised limit for its original. A cgroup is identified by path *and* id (its inode): a cgroup
//! removed and recreated under the same path is a new cgroup whose original is read afresh.

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
    #[error("the state file {path} is not valid JSON of format version {STATE_VERSION} ({source}); move it aside to start without history")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the state file {path} has format version {found}, this agent writes {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing the state file {path}: {source} (check that its directory is writable by the agent)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    /// A limit seen in the cgroup that the agent did not set (awaiting confirmation by the
    /// next sample; see [`Table::observe`]). Not persisted.
    #[serde(skip)]
    pub foreign: Option<L>,
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
    /// A foreign value, seen once.
    Pending,
    /// A foreign value seen twice: adopted as the new original (and current).
    Adopted { previous: L },
}

impl<L> Observed<L> {
    /// The same outcome with the value converted.
    pub fn map<M>(self, f: impl FnOnce(L) -> M) -> Observed<M> {
        match self {
            Observed::Unknown => Observed::Unknown,
            Observed::AsSet => Observed::AsSet,
            Observed::Pending => Observed::Pending,
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

    /// Starts managing `path`: returns its original limit. A record of the same cgroup keeps
    /// its original (the agent may have set `current` itself, before a restart); otherwise
    /// `current` is the original.
    pub fn manage(&mut self, path: &str, id: u64, policy: &str, current: L) -> L {
        if let Some(r) = self.records.get_mut(path).filter(|r| r.id == id) {
            if r.policy != policy || r.current != current {
                r.policy = policy.to_owned();
                r.current = current;
                self.dirty = true;
            }
            return r.original;
        }
        self.records.insert(
            path.to_owned(),
            Record {
                id,
                policy: policy.to_owned(),
                original: current,
                current,
                changes: 0,
                foreign: None,
            },
        );
        self.dirty = true;
        current
    }

    /// Records that the agent set `path`'s limit to `new`.
    pub fn changed(&mut self, path: &str, new: L) {
        if let Some(r) = self.records.get_mut(path) {
            r.current = new;
            r.changes += 1;
            self.dirty = true;
        }
    }

    /// Compares the limit observed in the cgroup with the one the agent last set. A limit
    /// changed by someone else (the runtime setting a new cgroup's limit just after creating
    /// it, an operator, an in-place pod resize) is that owner's intent: once the same foreign
    /// value is seen twice in a row (the agent's own writes reach the state within
    /// milliseconds, samples are `sample_interval` apart), it becomes the new original.
    pub fn observe(&mut self, path: &str, observed: L) -> Observed<L> {
        let Some(r) = self.records.get_mut(path) else {
            return Observed::Unknown;
        };
        if r.current == observed {
            r.foreign = None;
            return Observed::AsSet;
        }
        if r.foreign != Some(observed) {
            r.foreign = Some(observed);
            return Observed::Pending;
        }
        let previous = r.original;
        r.original = observed;
        r.current = observed;
        r.foreign = None;
        self.dirty = true;
        Observed::Adopted { previous }
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

/// The state file and its in-memory copy.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    doc: StateDoc,
    dirty: bool,
}

impl StateFile {
    /// Opens the state at `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let doc = match fs::read(path) {
            Ok(bytes) => {
                let doc: StateDoc =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                        path: path.to_owned(),
                        source,
                    })?;
                if doc.version != STATE_VERSION {
                    return Err(StateError::Version {
                        path: path.to_owned(),
                        found: doc.version,
                    });
                }
                doc
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateDoc {
                version: STATE_VERSION,
                ..StateDoc::default()
            },
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Ok(Self {
            path: path.to_owned(),
            doc,
            dirty: false,
        })
    }

    /// An empty state that will be written to `path` (used when the old file is unreadable).
    pub fn empty(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            doc: StateDoc {
                version: STATE_VERSION,
                ..StateDoc::default()
            },
            dirty: true,
        }
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

    /// [`Table::manage`] of the memory records.
    pub fn manage(&mut self, path: &str, id: u64, policy: &str, current: Limit) -> Limit {
        self.doc
            .cgroups
            .manage(path, id, policy, current.into())
            .into()
    }

    /// [`Table::changed`] of the memory records.
    pub fn changed(&mut self, path: &str, new: Limit) {
        self.doc.cgroups.changed(path, new.into());
    }

    /// [`Table::observe`] of the memory records.
    pub fn observe(&mut self, path: &str, observed: Limit) -> Observed<Limit> {
        self.doc
            .cgroups
            .observe(path, observed.into())
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

    /// One record of any resource, as [`Setting`]s: `(path, id, original, current)`.
    fn settings_of<L: Copy + PartialEq>(
        t: &Table<L>,
        to: impl Fn(L) -> Setting,
    ) -> Vec<(String, u64, Setting, Setting)> {
        t.records()
            .iter()
            .map(|(p, r)| (p.clone(), r.id, to(r.original), to(r.current)))
            .collect()
    }

    /// The records of `resource`: `(path, id, original, current)`.
    pub fn settings(&self, resource: Resource) -> Vec<(String, u64, Setting, Setting)> {
        match resource {
            Resource::Memory => Self::settings_of(&self.doc.cgroups, |l| Setting::Memory(l.into())),
            Resource::Cpu => Self::settings_of(&self.doc.cpu, |q| Setting::Cpu(q.into())),
        }
    }

    /// [`Table::manage`] of the setting's resource: returns the original.
    pub fn manage_setting(
        &mut self,
        path: &str,
        id: u64,
        policy: &str,
        current: Setting,
    ) -> Setting {
        match current {
            Setting::Memory(l) => Setting::Memory(self.manage(path, id, policy, l)),
            Setting::Cpu(q) => Setting::Cpu(self.doc.cpu.manage(path, id, policy, q.into()).into()),
        }
    }

    /// [`Table::changed`] of the setting's resource.
    pub fn changed_setting(&mut self, path: &str, new: Setting) {
        match new {
            Setting::Memory(l) => self.changed(path, l),
            Setting::Cpu(q) => self.doc.cpu.changed(path, q.into()),
        }
    }

    /// [`Table::observe`] of the setting's resource.
    pub fn observe_setting(&mut self, path: &str, observed: Setting) -> Observed<Setting> {
        match observed {
            Setting::Memory(l) => self.observe(path, l).map(Setting::Memory),
            Setting::Cpu(q) => self
                .doc
                .cpu
                .observe(path, q.into())
                .map(|q| Setting::Cpu(q.into())),
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

    /// Writes the state atomically: temp file (0600) + fsync + rename + directory fsync. The
    /// directory is created (0700) if missing.
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
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(&self.doc).expect("state serializes");
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            fs::File::open(&dir)?.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(err(e));
        }
        self.dirty = false;
        self.doc.cgroups.dirty = false;
        self.doc.cpu.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const M: u64 = 1 << 20;

    #[test]
    fn a_missing_file_is_an_empty_state() {
        let d = tempfile::tempdir().unwrap();
        let s = StateFile::load(&d.path().join("nope.json")).unwrap();
        assert!(s.records().is_empty());
        assert!(!s.is_dirty());
    }

    #[test]
    fn originals_survive_a_restart_and_are_not_re_read() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/dir/state.json");
        let mut s = StateFile::load(&path).unwrap();
        assert_eq!(
            s.manage("/a", 7, "p", Limit::Bytes(64 * M)),
            Limit::Bytes(64 * M)
        );
        assert_eq!(s.manage("/b", 8, "p", Limit::Max), Limit::Max);
        s.changed("/a", Limit::Bytes(200 * M));
        s.save().unwrap();
        assert!(!s.is_dirty());

        // Restart (as after SIGKILL): /a is now at the limit the agent set.
        let mut s = StateFile::load(&path).unwrap();
        assert_eq!(s.records()["/a"].changes, 1);
        assert_eq!(
            s.manage("/a", 7, "p", Limit::Bytes(200 * M)),
            Limit::Bytes(64 * M),
            "original kept"
        );
        assert_eq!(s.manage("/b", 8, "p", Limit::Max), Limit::Max);
        // Recreated under the same path (a new id): a new cgroup, original read afresh.
        assert_eq!(
            s.manage("/a", 9, "p", Limit::Bytes(300 * M)),
            Limit::Bytes(300 * M)
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
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["cgroups"]["/a"]["original"], "max");
        // No temp files left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_and_future_files_are_reported_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.json");
        fs::write(&path, "{not json").unwrap();
        let e = StateFile::load(&path).unwrap_err();
        assert!(matches!(e, StateError::Parse { .. }));
        assert!(e.to_string().contains("state.json"), "{e}");
        fs::write(&path, r#"{"version": 99, "cgroups": {}}"#).unwrap();
        assert!(matches!(
            StateFile::load(&path).unwrap_err(),
            StateError::Version { found: 99, .. }
        ));
        fs::write(&path, r#"{"version": 1, "cgroups": {"/x": {"id": 1, "policy": "p", "original": "min", "current": 1, "changes": 0}}}"#).unwrap();
        assert!(matches!(
            StateFile::load(&path).unwrap_err(),
            StateError::Parse { .. }
        ));
    }

    #[test]
    fn a_limit_changed_behind_the_agents_back_becomes_the_original() {
        let d = tempfile::tempdir().unwrap();
        let mut s = StateFile::load(&d.path().join("s.json")).unwrap();
        // Managed the instant it was created: no limit yet.
        assert_eq!(s.manage("/pod", 1, "p", Limit::Max), Limit::Max);
        assert_eq!(s.observe("/pod", Limit::Max), Observed::AsSet);
        // The runtime sets 64M: seen once, pending; seen again, adopted.
        assert_eq!(s.observe("/pod", Limit::Bytes(64 * M)), Observed::Pending);
        assert_eq!(
            s.observe("/pod", Limit::Bytes(64 * M)),
            Observed::Adopted {
                previous: Limit::Max
            }
        );
        assert_eq!(s.records()["/pod"].original, StoredLimit::Bytes(64 * M));
        // The agent's own change is not foreign.
        s.changed("/pod", Limit::Bytes(128 * M));
        assert_eq!(s.observe("/pod", Limit::Bytes(128 * M)), Observed::AsSet);
        // A foreign value that does not persist (seen once, then the agent's value again) is
        // not adopted: the race of a sample with the agent's own write.
        assert_eq!(s.observe("/pod", Limit::Bytes(96 * M)), Observed::Pending);
        assert_eq!(s.observe("/pod", Limit::Bytes(128 * M)), Observed::AsSet);
        assert_eq!(s.observe("/pod", Limit::Bytes(96 * M)), Observed::Pending);
        assert_eq!(s.records()["/pod"].original, StoredLimit::Bytes(64 * M));
        assert_eq!(s.observe("/nope", Limit::Max), Observed::Unknown);
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
        let mut s = StateFile::load(&path).unwrap();
        assert!(s.cpu().is_empty());
        let q = |quota_us| CpuQuota::Quota {
            quota_us,
            period_us: 100_000,
        };
        assert_eq!(
            s.cpu_mut().manage("/c", 5, "p", q(20_000).into()),
            StoredQuota::from(q(20_000))
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
            CpuQuota::from(s.cpu_mut().manage("/c", 5, "p", q(150_000).into())),
            q(20_000)
        );
        assert_eq!(
            s.cpu_mut().observe("/c", CpuQuota::Max.into()),
            Observed::Pending
        );
        assert_eq!(
            s.cpu_mut().observe("/c", CpuQuota::Max.into()),
            Observed::Adopted {
                previous: q(20_000).into()
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
