//! The id -> path index of one hierarchy: resolves the kernfs ids that the kernel programs
//! report to cgroup paths.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{io_is_gone, join_cgroup_path, CgroupError, CgroupId, Hierarchy};

/// The default minimum time between two full rescans triggered by lookup misses.
pub const DEFAULT_MIN_RESCAN_INTERVAL: Duration = Duration::from_millis(100);

/// What a full scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    /// Cgroups indexed.
    pub cgroups: usize,
    /// Directories that vanished during the walk (skipped).
    pub vanished: usize,
    /// How long the walk took.
    pub elapsed: Duration,
}

/// Maps kernfs ids ([`CgroupId`], the inode numbers of cgroup directories) of one hierarchy to
/// cgroup paths (`"/"` for the root, `"/a/b"` otherwise) and back.
///
/// Lookups do not allocate. A miss can trigger a full rescan ([`CgroupIndex::path_of`]), at
/// most once per `min_rescan_interval`; a cgroup the caller just created can be added with
/// [`CgroupIndex::insert`].
#[derive(Debug)]
pub struct CgroupIndex {
    hierarchy: Hierarchy,
    by_id: HashMap<CgroupId, Arc<str>>,
    by_path: HashMap<Arc<str>, CgroupId>,
    last_scan: Option<Instant>,
    min_rescan_interval: Duration,
}

impl CgroupIndex {
    /// An empty index of `hierarchy` (call [`CgroupIndex::rescan`] to fill it).
    pub fn new(hierarchy: Hierarchy) -> Self {
        CgroupIndex {
            hierarchy,
            by_id: HashMap::new(),
            by_path: HashMap::new(),
            last_scan: None,
            min_rescan_interval: DEFAULT_MIN_RESCAN_INTERVAL,
        }
    }

    /// Builds the index with a full walk of the hierarchy.
    pub fn build(hierarchy: Hierarchy) -> Result<Self, CgroupError> {
        let mut index = CgroupIndex::new(hierarchy);
        index.rescan()?;
        Ok(index)
    }

    /// Sets the minimum interval between miss-triggered rescans.
    pub fn with_min_rescan_interval(mut self, interval: Duration) -> Self {
        self.min_rescan_interval = interval;
        self
    }

    /// The indexed hierarchy.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Number of indexed cgroups.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The cgroup path of `id`, if indexed. Never touches the filesystem, never allocates.
    /// A removed cgroup keeps its entry until the next full rescan (ids are never reused, so
    /// late events of a removed cgroup still resolve to its old path).
    pub fn get(&self, id: impl Into<CgroupId>) -> Option<&str> {
        self.by_id.get(&id.into()).map(|p| &**p)
    }

    /// Like [`CgroupIndex::get`], returning the shared string (cheap to clone and keep).
    pub fn get_shared(&self, id: CgroupId) -> Option<Arc<str>> {
        self.by_id.get(&id).cloned()
    }

    /// The id of a cgroup path, if indexed.
    pub fn id_of(&self, path: &str) -> Option<CgroupId> {
        self.by_path.get(path).copied()
    }

    /// The cgroup path of `id`; on a miss, rescans the hierarchy unless a scan happened less
    /// than `min_rescan_interval` ago. Returns `None` for ids still unknown after that (a
    /// cgroup created and removed in between, or an id of another hierarchy).
    pub fn path_of(&mut self, id: impl Into<CgroupId>) -> Option<&str> {
        let id = id.into();
        if !self.by_id.contains_key(&id) && self.rescan_allowed() {
            if let Err(e) = self.rescan() {
                tracing::warn!(error = %e, "rescanning cgroup hierarchy failed");
            }
        }
        self.get(id)
    }

    fn rescan_allowed(&self) -> bool {
        self.last_scan
            .is_none_or(|t| t.elapsed() >= self.min_rescan_interval)
    }

    /// Indexes the cgroup at `path` (e.g. one the agent just created or was told to watch)
    /// and returns its id.
    pub fn insert(&mut self, path: &str) -> Result<CgroupId, CgroupError> {
        let dir = self.hierarchy.dir_of(path)?;
        let id = match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => CgroupId(m.ino()),
            Ok(_) => {
                return Err(CgroupError::Invalid {
                    what: "cgroup directory",
                    value: dir.display().to_string(),
                })
            }
            Err(e) if io_is_gone(&e) => return Err(CgroupError::Gone { path: dir }),
            Err(source) => return Err(CgroupError::Read { path: dir, source }),
        };
        self.put(id, Arc::from(super::normalize_cgroup_path(path)));
        Ok(id)
    }

    /// Forgets `id` (e.g. after the cgroup was removed).
    pub fn remove(&mut self, id: CgroupId) -> Option<Arc<str>> {
        let path = self.by_id.remove(&id)?;
        if self.by_path.get(&path) == Some(&id) {
            self.by_path.remove(&path);
        }
        Some(path)
    }

    fn put(&mut self, id: CgroupId, path: Arc<str>) {
        // A path recreated under a new id replaces the old entry; the old id is dropped.
        if let Some(old) = self.by_path.insert(path.clone(), id) {
            if old != id {
                self.by_id.remove(&old);
            }
        }
        if let Some(old_path) = self.by_id.insert(id, path.clone()) {
            if old_path != path && self.by_path.get(&old_path) == Some(&id) {
                self.by_path.remove(&old_path);
            }
        }
    }

    /// Walks the whole hierarchy and replaces the index with what it finds. Cgroups that
    /// vanish during the walk are skipped. Fails only when the mount itself cannot be read.
    pub fn rescan(&mut self) -> Result<ScanStats, CgroupError> {
        let start = Instant::now();
        self.last_scan = Some(start);
        let mount = self.hierarchy.mount.clone();
        let root_id = match fs::metadata(&mount) {
            Ok(m) => CgroupId(m.ino()),
            Err(source) => {
                return Err(CgroupError::Read {
                    path: mount,
                    source,
                })
            }
        };
        let mut by_id = HashMap::with_capacity(self.by_id.len().max(16));
        let mut by_path = HashMap::with_capacity(self.by_id.len().max(16));
        let mut vanished = 0;
        let root_path: Arc<str> =
            Arc::from(super::normalize_cgroup_path(&self.hierarchy.mount_root));
        by_id.insert(root_id, root_path.clone());
        by_path.insert(root_path.clone(), root_id);
        let mut stack: Vec<(PathBuf, Arc<str>)> = vec![(mount, root_path)];
        while let Some((dir, cgroup)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if io_is_gone(&e) && dir != self.hierarchy.mount => {
                    vanished += 1;
                    continue;
                }
                Err(source) => return Err(CgroupError::Read { path: dir, source }),
            };
            for entry in entries {
                let Ok(entry) = entry else {
                    // The directory was removed while being listed.
                    vanished += 1;
                    break;
                };
                let is_dir = match entry.file_type() {
                    Ok(t) => t.is_dir(),
                    Err(_) => {
                        vanished += 1;
                        continue;
                    }
                };
                if !is_dir {
                    continue;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    tracing::debug!(dir = %dir.display(), "skipping a non-UTF-8 cgroup name");
                    continue;
                };
                // kernfs reports the node's id as d_ino: no stat needed.
                let id = CgroupId(entry.ino());
                let path: Arc<str> = Arc::from(join_cgroup_path(&cgroup, &name));
                by_id.insert(id, path.clone());
                by_path.insert(path.clone(), id);
                stack.push((entry.path(), path));
            }
        }
        self.by_id = by_id;
        self.by_path = by_path;
        Ok(ScanStats {
            cgroups: self.by_id.len(),
            vanished,
            elapsed: start.elapsed(),
        })
    }

    /// Iterates over all indexed (id, path) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (CgroupId, &str)> {
        self.by_id.iter().map(|(id, p)| (*id, &**p))
    }

    /// The directory of an indexed id.
    pub fn dir_of(&self, id: CgroupId) -> Option<PathBuf> {
        self.get(id).and_then(|p| self.hierarchy.dir_of(p).ok())
    }

    /// The mount point of the indexed hierarchy.
    pub fn mount(&self) -> &Path {
        &self.hierarchy.mount
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::{CgroupVersion, Controller};

    fn tree(dirs: &[&str]) -> (tempfile::TempDir, Hierarchy) {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("sys/fs/cgroup/memory");
        fs::create_dir_all(&mount).unwrap();
        fs::write(mount.join("memory.usage_in_bytes"), "0\n").unwrap();
        for d in dirs {
            let p = mount.join(d);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("memory.usage_in_bytes"), "0\n").unwrap();
        }
        let h = Hierarchy {
            controller: Controller::Memory,
            version: CgroupVersion::V1,
            mount,
            mount_root: "/".into(),
            root: tmp.path().to_path_buf(),
        };
        (tmp, h)
    }

    fn ino(p: &Path) -> CgroupId {
        CgroupId(fs::metadata(p).unwrap().ino())
    }

    #[test]
    fn build_and_lookup() {
        let (_t, h) = tree(&["a", "a/b", "c"]);
        let index = CgroupIndex::build(h.clone()).unwrap();
        assert_eq!(index.len(), 4);
        assert_eq!(index.get(ino(&h.mount)), Some("/"));
        let ab = ino(&h.mount.join("a/b"));
        assert_eq!(index.get(ab), Some("/a/b"));
        assert_eq!(index.id_of("/a/b"), Some(ab));
        assert_eq!(index.id_of("/c"), Some(ino(&h.mount.join("c"))));
        assert_eq!(index.get(CgroupId(u64::MAX)), None);
        assert_eq!(index.dir_of(ab), Some(h.mount.join("a/b")));
        // Files are not cgroups.
        assert!(index.iter().all(|(_, p)| !p.contains("memory.")));
    }

    #[test]
    fn miss_triggers_a_rate_limited_rescan() {
        let (_t, h) = tree(&["a"]);
        let mut index = CgroupIndex::build(h.clone())
            .unwrap()
            .with_min_rescan_interval(Duration::from_secs(3600));
        fs::create_dir(h.mount.join("new")).unwrap();
        let id = ino(&h.mount.join("new"));
        // The build just scanned: the rate limit holds the miss.
        assert_eq!(index.path_of(id), None);
        // insert() is the targeted way in.
        assert_eq!(index.insert("/new").unwrap(), id);
        assert_eq!(index.get(id), Some("/new"));

        let mut index = CgroupIndex::build(h.clone())
            .unwrap()
            .with_min_rescan_interval(Duration::ZERO);
        fs::create_dir(h.mount.join("a/later")).unwrap();
        let later = ino(&h.mount.join("a/later"));
        assert_eq!(index.path_of(later), Some("/a/later"));
    }

    #[test]
    fn removed_and_recreated_cgroups() {
        let (_t, h) = tree(&["a", "a/b"]);
        let mut index = CgroupIndex::build(h.clone()).unwrap();
        let old = index.id_of("/a/b").unwrap();
        fs::remove_dir_all(h.mount.join("a/b")).unwrap();
        assert!(index.insert("/a/b").unwrap_err().is_gone());
        index.rescan().unwrap();
        assert_eq!(index.get(old), None);
        assert_eq!(index.id_of("/a/b"), None);
        // Recreate: a fresh id replaces any stale entry for the path.
        index.put(old, Arc::from("/a/b"));
        fs::create_dir(h.mount.join("a/b")).unwrap();
        let new = index.insert("/a/b").unwrap();
        assert_eq!(index.id_of("/a/b"), Some(new));
        if new != old {
            assert_eq!(index.get(old), None, "stale id dropped");
        }
        assert_eq!(index.remove(new).as_deref(), Some("/a/b"));
        assert_eq!(index.id_of("/a/b"), None);
    }

    #[test]
    fn a_missing_mount_is_an_error_but_vanished_children_are_not() {
        let (tmp, h) = tree(&[]);
        let mut gone = h.clone();
        gone.mount = tmp.path().join("nope");
        assert!(CgroupIndex::build(gone).is_err());
        // Simulate a child that vanishes between listing and descending: a dangling entry
        // that is a directory when listed is hard to race deterministically, so check the
        // descend-into-missing path directly.
        let mut index = CgroupIndex::new(h.clone());
        fs::create_dir(h.mount.join("x")).unwrap();
        let stats = index.rescan().unwrap();
        assert_eq!(stats.cgroups, 2);
        assert_eq!(stats.vanished, 0);
    }

    #[test]
    fn vanishing_during_a_walk_is_skipped() {
        // Many siblings removed by another thread while scans run: no scan may fail.
        let (_t, h) = tree(&[]);
        for i in 0..200 {
            fs::create_dir_all(h.mount.join(format!("d{i}/e/f"))).unwrap();
        }
        let mount = h.mount.clone();
        let remover = std::thread::spawn(move || {
            for i in 0..200 {
                let _ = fs::remove_dir_all(mount.join(format!("d{i}")));
            }
        });
        let mut index = CgroupIndex::new(h);
        let mut scans = 0;
        while !remover.is_finished() || scans == 0 {
            index
                .rescan()
                .expect("a vanished cgroup must not fail the scan");
            scans += 1;
        }
        remover.join().unwrap();
        index.rescan().unwrap();
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn bind_mounted_subtree_paths_are_hierarchy_paths() {
        let (_t, mut h) = tree(&["c"]);
        h.mount_root = "/kubepods/pod1".into();
        let index = CgroupIndex::build(h.clone()).unwrap();
        assert_eq!(index.get(ino(&h.mount)), Some("/kubepods/pod1"));
        assert_eq!(index.get(ino(&h.mount.join("c"))), Some("/kubepods/pod1/c"));
    }
}
