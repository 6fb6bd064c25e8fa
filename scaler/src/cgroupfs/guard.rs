//! RAII cgroups for tests and for workloads the agent launches: created with a unique name,
//! removed on drop, never touching anything they did not create.

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    thread,
    time::Duration,
};

use super::{
    io_is_gone, join_cgroup_path, Cgroup, CgroupError, CgroupVersion, Controller, Hierarchy,
};

/// How long drop keeps retrying `rmdir` while the kernel still reports the cgroup busy (EBUSY
/// right after the last process exited is normal).
const RMDIR_RETRY: Duration = Duration::from_millis(10);
const RMDIR_ATTEMPTS: u32 = 200;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// One created directory: the cgroup, the parent it was created under, and the controllers it
/// serves (two on a cgroup v2 tree shared by memory and cpu).
#[derive(Debug)]
struct Member {
    hierarchy: Hierarchy,
    controllers: Vec<Controller>,
    cgroup: Cgroup,
    parent: Cgroup,
}

/// A cgroup created in one or more hierarchies (e.g. memory and cpu on v1, one directory on
/// v2), removed again on drop: remaining processes are moved back to where
/// [`CgroupGuard::add_pid`] found them (else to the parent), and `rmdir` is retried briefly.
#[derive(Debug)]
pub struct CgroupGuard {
    name: String,
    members: Vec<Member>,
    /// (pid, controller, cgroup path the pid came from).
    origins: Mutex<Vec<(u32, Controller, String)>>,
}

impl CgroupGuard {
    /// Creates `<parent>/<prefix>-<pid>-<n>` in each hierarchy (one directory per distinct
    /// tree). `parent` is a cgroup path in every hierarchy (e.g. the caller's own cgroup).
    ///
    /// On cgroup v2, the needed controllers are enabled in the parent's
    /// `cgroup.subtree_control` if they are not already; when the parent has processes of its
    /// own and is not the root, the kernel refuses (EBUSY) and
    /// [`CgroupError::InternalProcesses`] says how to fix it.
    pub fn create(
        hierarchies: &[&Hierarchy],
        parent: &str,
        prefix: &str,
    ) -> Result<Self, CgroupError> {
        // Group controllers by tree.
        let mut trees: Vec<(&Hierarchy, Vec<Controller>)> = Vec::new();
        for h in hierarchies {
            match trees.iter_mut().find(|(t, _)| t.same_tree(h)) {
                Some((_, cs)) => cs.push(h.controller),
                None => trees.push((h, vec![h.controller])),
            }
        }
        Self::create_trees(trees, parent, prefix)
    }

    /// Like [`CgroupGuard::create`] in one hierarchy, but for no controller: nothing is enabled
    /// in the parent's `cgroup.subtree_control`. For a cgroup of a cgroup v2 hierarchy that
    /// carries no controller (the v2 hierarchy of a hybrid host), whose cgroups still have the
    /// PSI files `memory.pressure` and `cpu.pressure`. [`CgroupGuard::cgroup`] finds it under
    /// no controller: take it from [`CgroupGuard::cgroups`].
    pub fn create_without_controllers(
        hierarchy: &Hierarchy,
        parent: &str,
        prefix: &str,
    ) -> Result<Self, CgroupError> {
        Self::create_trees(vec![(hierarchy, Vec::new())], parent, prefix)
    }

    fn create_trees(
        trees: Vec<(&Hierarchy, Vec<Controller>)>,
        parent: &str,
        prefix: &str,
    ) -> Result<Self, CgroupError> {
        if prefix.is_empty() || prefix.contains('/') || prefix.starts_with('.') {
            return Err(CgroupError::Invalid {
                what: "cgroup name prefix",
                value: prefix.to_string(),
            });
        }
        let mut guard = CgroupGuard {
            name: String::new(),
            members: Vec::new(),
            origins: Mutex::new(Vec::new()),
        };
        let name = unique_name(prefix, |name| {
            trees.iter().all(|(h, _)| {
                h.dir_of(&join_cgroup_path(parent, name))
                    .map(|d| !d.exists())
                    .unwrap_or(true)
            })
        });
        guard.name = name.clone();
        for (h, controllers) in trees {
            let parent_cg = h.cgroup(parent)?;
            if !parent_cg.exists() {
                return Err(CgroupError::Gone {
                    path: parent_cg.dir().to_path_buf(),
                });
            }
            if h.version == CgroupVersion::V2 {
                enable_v2_controllers(&parent_cg, &controllers)?;
            }
            let cgroup = h.cgroup(&join_cgroup_path(parent, &name))?;
            std::fs::create_dir(cgroup.dir()).map_err(|source| CgroupError::Dir {
                op: "creating",
                path: cgroup.dir().to_path_buf(),
                source,
            })?;
            // From here on drop removes it.
            guard.members.push(Member {
                hierarchy: h.clone(),
                controllers,
                cgroup,
                parent: parent_cg,
            });
        }
        Ok(guard)
    }

    /// Like [`CgroupGuard::create`] with the caller's own cgroup as the parent. All
    /// hierarchies must place the caller at the same path (true for v2 and usually for v1;
    /// otherwise create one guard per hierarchy).
    pub fn create_under_own(hierarchies: &[&Hierarchy], prefix: &str) -> Result<Self, CgroupError> {
        let first = hierarchies.first().ok_or(CgroupError::Invalid {
            what: "hierarchy list",
            value: "empty".into(),
        })?;
        let own = first.own_cgroup()?;
        for h in &hierarchies[1..] {
            let other = h.own_cgroup()?;
            if other != own {
                return Err(CgroupError::Invalid {
                    what:
                        "own cgroup (differs between hierarchies; create one guard per hierarchy)",
                    value: format!("{}={own} {}={other}", first.controller, h.controller),
                });
            }
        }
        Self::create(hierarchies, &own, prefix)
    }

    /// The unique name (last path component) of the created cgroup.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The created cgroup serving `controller`.
    pub fn cgroup(&self, controller: Controller) -> Option<&Cgroup> {
        self.members
            .iter()
            .find(|m| m.controllers.contains(&controller))
            .map(|m| &m.cgroup)
    }

    /// The cgroup path of the created cgroup serving `controller`.
    pub fn path(&self, controller: Controller) -> Option<&str> {
        self.cgroup(controller).map(Cgroup::path)
    }

    /// All created cgroups.
    pub fn cgroups(&self) -> impl Iterator<Item = &Cgroup> {
        self.members.iter().map(|m| &m.cgroup)
    }

    /// The created cgroup serving `controller`, or an error naming the controller.
    pub fn require(&self, controller: Controller) -> Result<&Cgroup, CgroupError> {
        self.cgroup(controller).ok_or(CgroupError::Invalid {
            what: "controller (the guard was not created in its hierarchy)",
            value: controller.to_string(),
        })
    }

    /// Moves `pid` into the created cgroup(s), remembering where it came from so that drop can
    /// move it back if it is still alive.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        for m in &self.members {
            for &c in &m.controllers {
                let mut h = m.hierarchy.clone();
                h.controller = c;
                if let Ok(origin) = h.pid_cgroup(pid) {
                    self.origins
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((pid, c, origin));
                }
            }
            m.cgroup.add_pid(pid)?;
        }
        Ok(())
    }

    /// Removes the cgroups now and reports the first failure (drop does the same, logging).
    pub fn remove(mut self) -> Result<(), CgroupError> {
        let r = self.cleanup();
        self.members.clear();
        r
    }

    fn cleanup(&mut self) -> Result<(), CgroupError> {
        let origins = std::mem::take(&mut *self.origins.lock().unwrap_or_else(|p| p.into_inner()));
        let mut first_err = None;
        for m in self.members.drain(..).rev() {
            if let Err(e) = remove_member(&m, &origins) {
                tracing::warn!(error = %e, "removing test cgroup");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}

fn remove_member(m: &Member, origins: &[(u32, Controller, String)]) -> Result<(), CgroupError> {
    let dir = m.cgroup.dir();
    for attempt in 0..RMDIR_ATTEMPTS {
        // Move out whatever is still inside (best effort; processes may exit meanwhile).
        match m.cgroup.procs() {
            Ok(pids) => {
                for pid in pids {
                    let origin = origins
                        .iter()
                        .find(|(p, c, _)| *p == pid && m.controllers.contains(c))
                        .and_then(|(_, _, o)| m.hierarchy.cgroup(o).ok())
                        .filter(|o| o.dir() != dir && o.exists());
                    let moved = origin.map(|o| o.add_pid(pid).is_ok()).unwrap_or(false);
                    if !moved {
                        let _ = m.parent.add_pid(pid);
                    }
                }
            }
            Err(e) if e.is_gone() => return Ok(()),
            Err(_) => {}
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if io_is_gone(&e) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt + 1 < RMDIR_ATTEMPTS => {
                thread::sleep(RMDIR_RETRY);
            }
            Err(source) => {
                return Err(CgroupError::Dir {
                    op: "removing",
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
    Err(CgroupError::Dir {
        op: "removing",
        path: dir.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::EBUSY),
    })
}

/// `<prefix>-<pid>-<n>` where `free` accepts it (n from a process-wide counter).
fn unique_name(prefix: &str, free: impl Fn(&str) -> bool) -> String {
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{pid}-{n}");
        if free(&name) {
            return name;
        }
    }
}

/// Enables `controllers` for the children of `parent` (v2), unless already enabled.
fn enable_v2_controllers(parent: &Cgroup, controllers: &[Controller]) -> Result<(), CgroupError> {
    let enabled = parent.read_required("cgroup.subtree_control", "cgroup v2 delegation")?;
    let missing: Vec<Controller> = controllers
        .iter()
        .copied()
        .filter(|c| !enabled.split_whitespace().any(|e| e == c.name()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let available = parent.read_required("cgroup.controllers", "cgroup v2 controllers")?;
    for c in &missing {
        if !available.split_whitespace().any(|a| a == c.name()) {
            return Err(CgroupError::ControllerUnavailable {
                controller: *c,
                path: parent.file("cgroup.controllers"),
            });
        }
    }
    let value = missing
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    match parent.write("cgroup.subtree_control", &value) {
        Ok(()) => Ok(()),
        Err(CgroupError::Write { path, source, .. })
            if source.raw_os_error() == Some(libc::EBUSY) =>
        {
            Err(CgroupError::InternalProcesses {
                cgroup: parent.path().to_string(),
                path,
                controllers: value,
                source,
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, path::PathBuf};

    fn v1_tree(controller: Controller, dir: &str) -> (tempfile::TempDir, Hierarchy) {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join(dir);
        fs::create_dir_all(mount.join("own")).unwrap();
        fs::write(mount.join("own/cgroup.procs"), "").unwrap();
        let h = Hierarchy {
            controller,
            version: CgroupVersion::V1,
            mount,
            mount_root: "/".into(),
            root: tmp.path().to_path_buf(),
        };
        (tmp, h)
    }

    #[test]
    fn creates_unique_dirs_and_removes_them() {
        let (_t, h) = v1_tree(Controller::Memory, "memory");
        let g1 = CgroupGuard::create(&[&h], "/own", "test").unwrap();
        let g2 = CgroupGuard::create(&[&h], "/own", "test").unwrap();
        assert_ne!(g1.name(), g2.name());
        let d1: PathBuf = g1.cgroup(Controller::Memory).unwrap().dir().to_path_buf();
        assert!(d1.is_dir());
        assert!(d1.starts_with(h.mount.join("own")));
        assert_eq!(
            g1.path(Controller::Memory).unwrap(),
            format!("/own/{}", g1.name())
        );
        assert!(g1.cgroup(Controller::Cpu).is_none());
        drop(g1);
        assert!(!d1.exists());
        // A pre-existing sibling is never touched.
        let sibling = h.mount.join("own/not-ours");
        fs::create_dir(&sibling).unwrap();
        g2.remove().unwrap();
        assert!(sibling.is_dir());
    }

    #[test]
    fn rejects_bad_prefixes_and_missing_parents() {
        let (_t, h) = v1_tree(Controller::Memory, "memory");
        assert!(CgroupGuard::create(&[&h], "/own", "a/b").is_err());
        assert!(CgroupGuard::create(&[&h], "/own", "").is_err());
        assert!(CgroupGuard::create(&[&h], "/nope", "t")
            .unwrap_err()
            .is_gone());
    }

    #[test]
    fn two_v1_hierarchies_get_one_dir_each() {
        let (_t1, m) = v1_tree(Controller::Memory, "memory");
        let (_t2, c) = v1_tree(Controller::Cpu, "cpu");
        let g = CgroupGuard::create(&[&m, &c], "/own", "t").unwrap();
        let md = g.cgroup(Controller::Memory).unwrap().dir().to_path_buf();
        let cd = g.cgroup(Controller::Cpu).unwrap().dir().to_path_buf();
        assert_ne!(md, cd);
        assert!(md.is_dir() && cd.is_dir());
        drop(g);
        assert!(!md.exists() && !cd.exists());
    }

    fn v2_tree(subtree: &str) -> (tempfile::TempDir, Hierarchy, Hierarchy) {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("sys/fs/cgroup");
        fs::create_dir_all(mount.join("own")).unwrap();
        fs::write(mount.join("own/cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(mount.join("own/cgroup.subtree_control"), subtree).unwrap();
        let m = Hierarchy {
            controller: Controller::Memory,
            version: CgroupVersion::V2,
            mount,
            mount_root: "/".into(),
            root: tmp.path().to_path_buf(),
        };
        let c = Hierarchy {
            controller: Controller::Cpu,
            ..m.clone()
        };
        (tmp, m, c)
    }

    #[test]
    fn v2_shares_one_dir_and_enables_controllers() {
        let (_t, m, c) = v2_tree("\n");
        let g = CgroupGuard::create(&[&m, &c], "/own", "t").unwrap();
        assert_eq!(
            g.cgroup(Controller::Memory).unwrap().dir(),
            g.cgroup(Controller::Cpu).unwrap().dir()
        );
        assert_eq!(g.cgroups().count(), 1);
        let written = fs::read_to_string(m.mount.join("own/cgroup.subtree_control")).unwrap();
        assert!(written.starts_with("+memory +cpu"), "{written:?}");
    }

    #[test]
    fn v2_already_enabled_is_not_rewritten() {
        let (_t, m, c) = v2_tree("cpu memory\n");
        let _g = CgroupGuard::create(&[&m, &c], "/own", "t").unwrap();
        let content = fs::read_to_string(m.mount.join("own/cgroup.subtree_control")).unwrap();
        assert_eq!(content, "cpu memory\n");
    }

    #[test]
    fn a_cgroup_for_no_controller_enables_none() {
        let (_t, m, _c) = v2_tree("");
        fs::write(m.mount.join("own/cgroup.controllers"), "").unwrap();
        let g = CgroupGuard::create_without_controllers(&m, "/own", "psi").unwrap();
        let subtree = fs::read_to_string(m.mount.join("own/cgroup.subtree_control")).unwrap();
        assert_eq!(subtree, "", "nothing enabled");
        assert!(g.cgroup(Controller::Memory).is_none());
        let dir = g.cgroups().next().unwrap().dir().to_path_buf();
        assert!(dir.is_dir() && dir.starts_with(m.mount.join("own")));
        drop(g);
        assert!(!dir.exists());
    }

    #[test]
    fn v2_unavailable_controller_is_reported() {
        let (_t, m, _c) = v2_tree("");
        fs::write(m.mount.join("own/cgroup.controllers"), "pids\n").unwrap();
        let err = CgroupGuard::create(&[&m], "/own", "t").unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::ControllerUnavailable {
                    controller: Controller::Memory,
                    ..
                }
            ),
            "{err}"
        );
    }
}
