//! Cgroup filesystem access for cgroup v1 and v2: hierarchy discovery, cgroup identity (kernfs
//! ids), typed readers of the memory, cpu and pressure files, xattrs, and RAII test cgroups.
//!
//! Everything takes a root path prefix (normally `/`) so that unit tests run against temp-dir
//! fake trees. Nothing here is async; nothing allocates on the hot path (see [`crate::actuator`]
//! for the pre-opened writers).
//!
//! Paths come in two kinds:
//! - a *cgroup path* (`&str`, e.g. `"/"` or `"/a/b"`): the cgroup's path relative to its
//!   hierarchy's root, as `/proc/<pid>/cgroup` shows it and as [`CgroupIndex`] returns it;
//! - a *directory* (`PathBuf`): where that cgroup lives in the filesystem, from
//!   [`Hierarchy::dir_of`].
//!
//! [`notify`] wraps the kernel's own notifications (v1 eventfds, PSI triggers, kernfs file
//! change polling): the non-eBPF baselines.
//!
//! A cgroup that vanishes while it is read is reported as [`CgroupError::Gone`] (check with
//! [`CgroupError::is_gone`]); callers treat it as "no data", not as a failure.

mod cgroup;
mod guard;
mod index;
mod mount;
pub mod notify;
mod values;
mod xattr;

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

pub use cgroup::Cgroup;
pub use xattr::Owner;
pub use guard::CgroupGuard;
pub use index::{CgroupIndex, ScanStats, DEFAULT_MIN_RESCAN_INTERVAL};
pub use mount::{parse_mountinfo, parse_proc_cgroup, MountEntry, ProcCgroupLine};
pub use values::{
    flat_keyed, CpuQuota, CpuStat, Limit, MemoryStat, Pressure, PressureLine, CPU_MAX_PERIOD_US,
    CPU_MIN_US, LIMIT_MAX_THRESHOLD,
};

/// A cgroup controller the scaler manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Controller {
    /// The memory controller (`memory.*` files).
    Memory,
    /// The CPU bandwidth controller (`cpu.*` files; on v1 often co-mounted as `cpu,cpuacct`).
    Cpu,
}

impl Controller {
    /// The controller's name as the kernel spells it in mount options, `/proc/<pid>/cgroup`
    /// and `cgroup.controllers`.
    pub const fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which cgroup interface a hierarchy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    /// A legacy per-controller hierarchy (filesystem type `cgroup`).
    V1,
    /// The unified hierarchy (filesystem type `cgroup2`).
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "cgroup v1",
            CgroupVersion::V2 => "cgroup v2",
        })
    }
}

/// A cgroup's kernfs id: on 64-bit kernels the inode number of its directory, and what
/// `bpf_get_current_cgroup_id()` / `cgroup->kn->id` report. Unique for the boot (ids are not
/// reused), but only within one hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupId(pub u64);

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for CgroupId {
    fn from(id: u64) -> Self {
        CgroupId(id)
    }
}

/// Errors of the cgroupfs layer. Every variant names the path or feature at fault.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy carries the controller.
    #[error(
        "no {controller} controller: neither a cgroup v1 mount with '{controller}' in its options \
         nor a cgroup2 mount listing it in cgroup.controllers (checked {mountinfo}); mount one \
         (e.g. `mount -t cgroup -o {controller} cgroup /sys/fs/cgroup/{controller}`) or boot with \
         the controller enabled on cgroup v2"
    )]
    ControllerNotMounted {
        /// The missing controller.
        controller: Controller,
        /// The mountinfo file that was searched.
        mountinfo: PathBuf,
    },
    /// A process's cgroup file has no line for the hierarchy.
    #[error("{path} has no line for the {version} {controller} hierarchy")]
    NotInHierarchy {
        /// The `/proc/<pid>/cgroup` file read.
        path: PathBuf,
        /// The controller looked for.
        controller: Controller,
        /// The hierarchy's version.
        version: CgroupVersion,
    },
    /// A cgroup path lies outside the part of the hierarchy that is mounted (bind mount of a
    /// subtree, or a cgroup namespace).
    #[error(
        "cgroup {cgroup} is not visible under the {controller} mount {mount} (which shows the \
         subtree {mount_root})"
    )]
    NotVisible {
        /// The cgroup path.
        cgroup: String,
        /// The controller of the hierarchy.
        controller: Controller,
        /// The mount point.
        mount: PathBuf,
        /// The hierarchy path the mount shows.
        mount_root: String,
    },
    /// The cgroup directory no longer exists (removed, or never existed).
    #[error("cgroup {path} is gone")]
    Gone {
        /// The cgroup's directory.
        path: PathBuf,
    },
    /// The cgroup exists but a file the operation needs does not (controller not enabled in
    /// this cgroup, or a kernel too old for the feature).
    #[error("{path} does not exist: {what} is not available in this cgroup or on this kernel")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// What the file provides.
        what: &'static str,
    },
    /// Reading a file failed.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing a file failed.
    #[error("writing {value:?} to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Creating or removing a cgroup directory failed.
    #[error("{op} cgroup {path}")]
    Dir {
        /// `"creating"` or `"removing"`.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file's content did not have the expected format.
    #[error("{path}: cannot parse {content:?}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending content (possibly shortened).
        content: String,
        /// What was expected.
        reason: &'static str,
    },
    /// On cgroup v2, controllers could not be enabled for children of a cgroup that has
    /// processes of its own ("no internal processes" rule).
    #[error(
        "cannot enable {controllers} for children of {cgroup} ({path}): {source}. A cgroup v2 \
         cgroup other than the root that has processes cannot delegate controllers to children. \
         Run from a delegated cgroup without processes of its own (e.g. `systemd-run --scope -p \
         Delegate=yes ...`) or configure a base cgroup that has none"
    )]
    InternalProcesses {
        /// The cgroup path.
        cgroup: String,
        /// Its `cgroup.subtree_control`.
        path: PathBuf,
        /// The controllers requested, as written.
        controllers: String,
        /// The kernel's error (usually EBUSY).
        #[source]
        source: io::Error,
    },
    /// A controller needed for children is not available in the parent cgroup at all.
    #[error(
        "the {controller} controller is not available in {path} (not listed in \
         cgroup.controllers): enable it in the parent's cgroup.subtree_control first"
    )]
    ControllerUnavailable {
        /// The controller.
        controller: Controller,
        /// The parent's `cgroup.controllers`.
        path: PathBuf,
    },
    /// Reading an extended attribute failed for a reason other than "absent".
    #[error("reading xattr {name} of {path}")]
    Xattr {
        /// The directory.
        path: PathBuf,
        /// The attribute name.
        name: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a PSI trigger.
    #[error(
        "arming PSI trigger {value:?} on {path}: {source}. The window must be 500 ms..10 s; \
         without CAP_SYS_RESOURCE the kernel accepts only windows that are multiples of 2 s \
         (EINVAL), and the stall must not exceed the window"
    )]
    PsiTrigger {
        /// The pressure file.
        path: PathBuf,
        /// The trigger written (`some <stall_us> <window_us>`).
        value: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// An argument was invalid (e.g. a cgroup name containing '/').
    #[error("invalid {what}: {value:?}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// The value.
        value: String,
    },
}

impl CgroupError {
    /// True when the error means the cgroup no longer exists: treat as "no data".
    pub fn is_gone(&self) -> bool {
        match self {
            CgroupError::Gone { .. } => true,
            CgroupError::Read { source, .. }
            | CgroupError::Write { source, .. }
            | CgroupError::Dir { source, .. } => io_is_gone(source),
            _ => false,
        }
    }
}

/// ENOENT or ENODEV: what kernfs returns for a removed cgroup (ENODEV on a still-open fd).
pub(crate) fn io_is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV))
}

/// One cgroup hierarchy carrying a controller: where it is mounted and which version it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The controller this hierarchy was discovered for.
    pub controller: Controller,
    /// v1 or v2.
    pub version: CgroupVersion,
    /// The mount point, with the root prefix applied (e.g. `/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// The hierarchy path the mount shows (mountinfo's 4th field, `/` unless a subtree is
    /// bind-mounted).
    pub mount_root: String,
    /// The root prefix everything was resolved against (normally `/`).
    pub root: PathBuf,
}

impl Hierarchy {
    /// Finds the hierarchy of `controller` from `<root>/proc/self/mountinfo`.
    ///
    /// A v1 mount whose super options include the controller wins; otherwise the first cgroup2
    /// mount whose `cgroup.controllers` lists it.
    pub fn discover(root: &Path, controller: Controller) -> Result<Self, CgroupError> {
        let path = root.join("proc/self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Read {
            path: path.clone(),
            source,
        })?;
        mount::find_hierarchy(&text, root, controller, &path)
    }

    /// Like [`Hierarchy::discover`] on mountinfo text supplied by the caller (tests, or a
    /// mountinfo of another process).
    pub fn from_mountinfo(
        mountinfo: &str,
        root: &Path,
        controller: Controller,
    ) -> Result<Self, CgroupError> {
        mount::find_hierarchy(mountinfo, root, controller, Path::new("<mountinfo text>"))
    }

    /// True when `other` is the same mounted tree (e.g. memory and cpu on one cgroup2 mount):
    /// then ids and paths are shared and one [`CgroupIndex`] serves both.
    pub fn same_tree(&self, other: &Hierarchy) -> bool {
        self.mount == other.mount
    }

    /// The directory of a cgroup path (`"/"` or `"/a/b"`).
    pub fn dir_of(&self, cgroup: &str) -> Result<PathBuf, CgroupError> {
        let rest = strip_cgroup_prefix(cgroup, &self.mount_root).ok_or_else(|| {
            CgroupError::NotVisible {
                cgroup: cgroup.to_string(),
                controller: self.controller,
                mount: self.mount.clone(),
                mount_root: self.mount_root.clone(),
            }
        })?;
        Ok(if rest.is_empty() {
            self.mount.clone()
        } else {
            self.mount.join(rest)
        })
    }

    /// A handle on the cgroup at `cgroup` (a path relative to the hierarchy root).
    pub fn cgroup(&self, cgroup: &str) -> Result<Cgroup, CgroupError> {
        Ok(Cgroup::new(
            self.dir_of(cgroup)?,
            normalize_cgroup_path(cgroup),
            self.version,
        ))
    }

    /// The calling process's cgroup in this hierarchy, from `<root>/proc/self/cgroup`.
    pub fn own_cgroup(&self) -> Result<String, CgroupError> {
        self.process_cgroup_file(&self.root.join("proc/self/cgroup"))
    }

    /// The cgroup of process `pid` in this hierarchy, from `<root>/proc/<pid>/cgroup`.
    pub fn pid_cgroup(&self, pid: u32) -> Result<String, CgroupError> {
        self.process_cgroup_file(&self.root.join(format!("proc/{pid}/cgroup")))
    }

    fn process_cgroup_file(&self, path: &Path) -> Result<String, CgroupError> {
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.cgroup_from_proc_text(&text)
            .ok_or_else(|| CgroupError::NotInHierarchy {
                path: path.to_path_buf(),
                controller: self.controller,
                version: self.version,
            })
    }

    /// This hierarchy's cgroup path in the text of a `/proc/<pid>/cgroup` file, if present.
    pub fn cgroup_from_proc_text(&self, text: &str) -> Option<String> {
        parse_proc_cgroup(text)
            .find(|line| match self.version {
                CgroupVersion::V2 => line.hierarchy_id == 0 && line.controllers.is_empty(),
                CgroupVersion::V1 => {
                    line.hierarchy_id != 0
                        && line
                            .controllers
                            .split(',')
                            .any(|c| c == self.controller.name())
                }
            })
            .map(|line| normalize_cgroup_path(line.path))
    }

    /// Converts a directory under this hierarchy's mount back to a cgroup path.
    pub fn cgroup_path_of_dir(&self, dir: &Path) -> Option<String> {
        let rest = dir.strip_prefix(&self.mount).ok()?;
        let rest = rest.to_str()?;
        Some(join_cgroup_path(&self.mount_root, rest))
    }
}

/// `"/"` for the root, `"/a/b"` otherwise (no trailing slash, single leading slash).
pub(crate) fn normalize_cgroup_path(p: &str) -> String {
    let trimmed = p.trim_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// Joins a cgroup path and a relative directory suffix.
pub(crate) fn join_cgroup_path(base: &str, rest: &str) -> String {
    let base = base.trim_end_matches('/');
    let rest = rest.trim_matches('/');
    match (base.is_empty(), rest.is_empty()) {
        (true, true) => "/".to_string(),
        (true, false) => format!("/{rest}"),
        (false, true) => normalize_cgroup_path(base),
        (false, false) => normalize_cgroup_path(&format!("{base}/{rest}")),
    }
}

/// The part of `cgroup` below `prefix` (without leading slash), or None when it is not below.
fn strip_cgroup_prefix<'a>(cgroup: &'a str, prefix: &str) -> Option<&'a str> {
    let c = cgroup.trim_matches('/');
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        return Some(c);
    }
    let rest = c.strip_prefix(p)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hierarchy(mount_root: &str) -> Hierarchy {
        Hierarchy {
            controller: Controller::Memory,
            version: CgroupVersion::V1,
            mount: PathBuf::from("/sys/fs/cgroup/memory"),
            mount_root: mount_root.to_string(),
            root: PathBuf::from("/"),
        }
    }

    #[test]
    fn dir_of_maps_cgroup_paths_under_the_mount() {
        let h = hierarchy("/");
        assert_eq!(
            h.dir_of("/").unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            h.dir_of("/a/b").unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
        assert_eq!(
            h.cgroup_path_of_dir(Path::new("/sys/fs/cgroup/memory/a/b")),
            Some("/a/b".to_string())
        );
        assert_eq!(
            h.cgroup_path_of_dir(Path::new("/sys/fs/cgroup/memory")),
            Some("/".to_string())
        );
    }

    #[test]
    fn dir_of_respects_a_bind_mounted_subtree() {
        let h = hierarchy("/kubepods/pod1");
        assert_eq!(
            h.dir_of("/kubepods/pod1/c").unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory/c")
        );
        assert_eq!(
            h.dir_of("/kubepods/pod1").unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert!(matches!(
            h.dir_of("/kubepods/pod10"),
            Err(CgroupError::NotVisible { .. })
        ));
        assert!(matches!(
            h.dir_of("/other"),
            Err(CgroupError::NotVisible { .. })
        ));
        assert_eq!(
            h.cgroup_path_of_dir(Path::new("/sys/fs/cgroup/memory/c")),
            Some("/kubepods/pod1/c".to_string())
        );
    }

    #[test]
    fn cgroup_paths_are_normalized() {
        assert_eq!(normalize_cgroup_path(""), "/");
        assert_eq!(normalize_cgroup_path("/"), "/");
        assert_eq!(normalize_cgroup_path("a/b/"), "/a/b");
        assert_eq!(join_cgroup_path("/", "a"), "/a");
        assert_eq!(join_cgroup_path("/x", ""), "/x");
        assert_eq!(join_cgroup_path("/x/", "/y/z"), "/x/y/z");
    }

    #[test]
    fn cgroup_from_proc_text_picks_the_right_line() {
        let text =
            "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/x\n0::/v2path\n";
        let mem = hierarchy("/");
        assert_eq!(mem.cgroup_from_proc_text(text).unwrap(), "/process_api/abc");
        let cpu = Hierarchy {
            controller: Controller::Cpu,
            ..hierarchy("/")
        };
        assert_eq!(cpu.cgroup_from_proc_text(text).unwrap(), "/x");
        let v2 = Hierarchy {
            version: CgroupVersion::V2,
            ..hierarchy("/")
        };
        assert_eq!(v2.cgroup_from_proc_text(text).unwrap(), "/v2path");
        // A co-mounted cpu,cpuacct hierarchy is found for Cpu, but cpuacct/cpuset are not cpu.
        let comounted = "3:cpuset:/s\n2:cpu,cpuacct:/c\n";
        assert_eq!(cpu.cgroup_from_proc_text(comounted).unwrap(), "/c");
        assert_eq!(
            cpu.cgroup_from_proc_text("3:cpuset:/s\n2:cpuacct:/a\n"),
            None
        );
    }

    #[test]
    fn is_gone_recognizes_enoent_and_enodev() {
        let e = CgroupError::Read {
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENODEV),
        };
        assert!(e.is_gone());
        let e = CgroupError::Read {
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(!e.is_gone());
    }
}
