//! The benchmark's own cgroups, on the project's cgroupfs layer: hierarchies found by
//! [`Hierarchy::discover`], cgroups created and removed by [`CgroupGuard`] under the process's
//! own cgroup in each hierarchy, read through [`Cgroup`].
//!
//! What is the benchmark's own: a run's cgroups span up to three trees at once (v1 memory, v1
//! cpu, and the v2 hierarchy for its PSI files on a hybrid host), each under the process's own
//! cgroup in that tree (they may differ between trees); the `cgroup.procs` fds a child writes
//! itself into between fork and exec; and ending, by pid, any process a run left behind before
//! its cgroups are removed (only processes the benchmark started can be there).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use scaler::cgroupfs::{
    parse_mountinfo, Cgroup, CgroupError, CgroupGuard, CgroupVersion, Controller, Hierarchy,
};

use super::BenchError;

/// A hierarchy the benchmark uses, and the process's own cgroup in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// The hierarchy.
    pub hierarchy: Hierarchy,
    /// The process's own cgroup path in it.
    pub own: String,
}

impl Place {
    fn of(hierarchy: Hierarchy) -> Result<Self, CgroupError> {
        let own = hierarchy.own_cgroup()?;
        Ok(Self { hierarchy, own })
    }

    /// The hierarchy's version.
    pub fn version(&self) -> CgroupVersion {
        self.hierarchy.version
    }
}

/// Where the benchmark can create cgroups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The memory controller's hierarchy.
    pub memory: Option<Place>,
    /// The cpu controller's hierarchy.
    pub cpu: Option<Place>,
    /// The v2 (unified) hierarchy, whatever controllers it has: its cgroups carry
    /// `memory.pressure`/`cpu.pressure` (PSI) even with no controller enabled.
    pub unified: Option<Place>,
}

impl Hierarchies {
    /// Discovers the hierarchies of the running process. A controller that no hierarchy
    /// carries, or that the process's own v2 cgroup does not have, is `None`.
    pub fn discover() -> Result<Self, BenchError> {
        let root = Path::new("/");
        let find = |controller: Controller| -> Result<Option<Place>, BenchError> {
            let h = match Hierarchy::discover(root, controller) {
                Ok(h) => h,
                Err(CgroupError::ControllerNotMounted { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let place = Place::of(h)?;
            if place.version() == CgroupVersion::V2 {
                // On v2 the controller must reach the own cgroup to be delegated from it.
                let own = place.hierarchy.cgroup(&place.own)?;
                let listed = own.read_optional("cgroup.controllers")?.unwrap_or_default();
                if !listed.split_whitespace().any(|c| c == controller.name()) {
                    return Ok(None);
                }
            }
            Ok(Some(place))
        };
        let memory = find(Controller::Memory)?;
        let cpu = find(Controller::Cpu)?;
        let unified = match [&memory, &cpu]
            .into_iter()
            .flatten()
            .find(|p| p.version() == CgroupVersion::V2)
        {
            Some(p) => Some(p.clone()),
            None => unified_without_controllers()?,
        };
        Ok(Self {
            memory,
            cpu,
            unified,
        })
    }

    /// The memory controller's version, if any.
    pub fn memory_version(&self) -> Option<CgroupVersion> {
        self.memory.as_ref().map(Place::version)
    }

    /// The cpu controller's version, if any.
    pub fn cpu_version(&self) -> Option<CgroupVersion> {
        self.cpu.as_ref().map(Place::version)
    }
}

/// The first cgroup2 mount, carrying no controller the benchmark uses (a hybrid host's
/// `/sys/fs/cgroup/unified`), for its PSI files. [`Hierarchy::discover`] finds a v2 hierarchy
/// only by a controller it lists.
fn unified_without_controllers() -> Result<Option<Place>, BenchError> {
    let path = PathBuf::from("/proc/self/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Io { path, source })?;
    let Some(mount) = parse_mountinfo(&text).find(|m| m.fstype == "cgroup2") else {
        return Ok(None);
    };
    let hierarchy = Hierarchy {
        // No controller is used in it (see `CgroupGuard::create_without_controllers`); the
        // runs read its memory.pressure and cpu.pressure.
        controller: Controller::Memory,
        version: CgroupVersion::V2,
        mount: mount.mount_point,
        mount_root: mount.root,
        root: PathBuf::from("/"),
    };
    // Not in the hierarchy (or not visible in it): no unified cgroup, as without the mount.
    Ok(Place::of(hierarchy).ok())
}

/// The hierarchies of one tree: the controllers created in it, and whether it is the unified
/// hierarchy. Memory and cpu share a tree on cgroup v2, and the unified hierarchy is theirs.
#[derive(Clone, Debug)]
struct Tree {
    /// One hierarchy per controller used in the tree (empty: PSI only).
    controllers: Vec<Hierarchy>,
    /// The tree's first hierarchy and the own cgroup in it.
    place: Place,
    unified: bool,
}

fn trees(h: &Hierarchies) -> Vec<Tree> {
    let mut trees: Vec<Tree> = Vec::new();
    let all = [(&h.memory, true), (&h.cpu, true), (&h.unified, false)];
    for (place, is_controller) in all {
        let Some(place) = place else { continue };
        let i = match trees
            .iter()
            .position(|t| t.place.hierarchy.same_tree(&place.hierarchy))
        {
            Some(i) => i,
            None => {
                trees.push(Tree {
                    controllers: Vec::new(),
                    place: place.clone(),
                    unified: false,
                });
                trees.len() - 1
            }
        };
        if is_controller {
            trees[i].controllers.push(place.hierarchy.clone());
        } else {
            trees[i].unified = true;
        }
    }
    trees
}

/// Creates a cgroup named after `prefix` under `parent` in `tree`, for its controllers.
fn create(tree: &Tree, parent: &str, prefix: &str) -> Result<CgroupGuard, CgroupError> {
    if tree.controllers.is_empty() {
        CgroupGuard::create_without_controllers(&tree.place.hierarchy, parent, prefix)
    } else {
        let hs: Vec<&Hierarchy> = tree.controllers.iter().collect();
        CgroupGuard::create(&hs, parent, prefix)
    }
}

/// The cgroup a guard created (one tree per guard here).
fn created(guard: &CgroupGuard) -> &Cgroup {
    guard
        .cgroups()
        .next()
        .expect("a guard holds the cgroup it created")
}

/// SIGKILLs every process in `cgroup` (only the benchmark's own descendants can be there: it
/// created the cgroup and put only its children in it).
fn kill_members(cgroup: &Cgroup) {
    for pid in cgroup.procs().unwrap_or_default() {
        // SAFETY: kill by pid of a process in a cgroup of our own.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// The benchmark's top cgroups (one per tree), holding one cgroup per run.
#[derive(Debug)]
pub struct BenchRoot {
    trees: Vec<(Tree, CgroupGuard)>,
}

impl BenchRoot {
    /// Creates `scaler-bench-<pid>-<n>` under the own cgroup of each tree.
    pub fn create(h: &Hierarchies) -> Result<Self, BenchError> {
        let mut out = Vec::new();
        for tree in trees(h) {
            let guard =
                create(&tree, &tree.place.own, "scaler-bench").map_err(BenchError::CreateCgroup)?;
            out.push((tree, guard));
        }
        Ok(Self { trees: out })
    }

    /// Creates a fresh cgroup for one run (in every tree), named after `label`.
    pub fn run_cgroup(&self, label: &str) -> Result<RunCgroup, BenchError> {
        let mut run = RunCgroup {
            procs: Vec::new(),
            unified_procs: None,
            memory: None,
            cpu: None,
            unified: None,
            guards: Vec::new(),
        };
        for (tree, root) in &self.trees {
            let parent = created(root).path().to_owned();
            let guard =
                create(tree, &parent, &format!("run-{label}")).map_err(BenchError::CreateCgroup)?;
            let cg = created(&guard).clone();
            for h in &tree.controllers {
                match h.controller {
                    Controller::Memory => run.memory = Some(cg.clone()),
                    Controller::Cpu => run.cpu = Some(cg.clone()),
                }
            }
            if tree.unified {
                run.unified = Some(cg.clone());
            }
            // Dropped with the run (killing what is left first).
            run.guards.push(guard);
            let p = cg.file("cgroup.procs");
            let f = OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|source| BenchError::Io { path: p, source })?;
            if tree.unified {
                run.unified_procs = Some(run.procs.len());
            }
            run.procs.push(f);
        }
        Ok(run)
    }
}

/// The cgroups of one run: a memory cgroup, a cpu cgroup and a unified-hierarchy cgroup (one
/// directory on pure v2). Removed on drop, after SIGKILLing whatever is left in them.
#[derive(Debug)]
pub struct RunCgroup {
    procs: Vec<File>,
    unified_procs: Option<usize>,
    /// The memory cgroup.
    pub memory: Option<Cgroup>,
    /// The cpu cgroup.
    pub cpu: Option<Cgroup>,
    /// The unified-hierarchy cgroup (PSI files).
    pub unified: Option<Cgroup>,
    guards: Vec<CgroupGuard>,
}

impl RunCgroup {
    /// Raw fds of the `cgroup.procs` files: writing `0` to each moves the writer into the run's
    /// cgroups (used in a child between fork and exec).
    pub fn procs_fds(&self) -> Vec<i32> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Like [`procs_fds`](Self::procs_fds), only the unified hierarchy's (for `scaler exec`,
    /// which makes its own memory and cpu cgroups).
    pub fn unified_procs_fd(&self) -> Option<i32> {
        self.unified_procs.map(|i| self.procs[i].as_raw_fd())
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.procs.clear();
        for g in &self.guards {
            g.cgroups().for_each(kill_members);
        }
        // The guards then remove the directories (retrying while the kernel is busy).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hierarchy(controller: Controller, version: CgroupVersion, mount: &str) -> Place {
        Place {
            hierarchy: Hierarchy {
                controller,
                version,
                mount: PathBuf::from(mount),
                mount_root: "/".into(),
                root: PathBuf::from("/"),
            },
            own: "/own".into(),
        }
    }

    #[test]
    fn trees_of_a_hybrid_and_a_v2_host() {
        let hybrid = Hierarchies {
            memory: Some(hierarchy(
                Controller::Memory,
                CgroupVersion::V1,
                "/sys/fs/cgroup/memory",
            )),
            cpu: Some(hierarchy(
                Controller::Cpu,
                CgroupVersion::V1,
                "/sys/fs/cgroup/cpu",
            )),
            unified: Some(hierarchy(
                Controller::Memory,
                CgroupVersion::V2,
                "/sys/fs/cgroup/unified",
            )),
        };
        let t = trees(&hybrid);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.iter()
                .map(|t| (t.controllers.len(), t.unified))
                .collect::<Vec<_>>(),
            [(1, false), (1, false), (0, true)]
        );
        let m = hierarchy(Controller::Memory, CgroupVersion::V2, "/sys/fs/cgroup");
        let v2 = Hierarchies {
            unified: Some(m.clone()),
            cpu: Some(hierarchy(
                Controller::Cpu,
                CgroupVersion::V2,
                "/sys/fs/cgroup",
            )),
            memory: Some(m),
        };
        let t = trees(&v2);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].controllers.len(), t[0].unified), (2, true));
    }
}
