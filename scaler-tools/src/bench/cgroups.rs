//! The benchmark's own cgroups: discovered from `/proc/self`, created under the process's own
//! cgroup with unique names, and removed on drop (after ending, by pid, any process left in
//! them: only processes the benchmark started can be there).
//!
//! A private minimal guard; `scaler::cgroupfs::CgroupGuard` can replace it once the benchmark
//! needs nothing it lacks (per-hierarchy directories for v1 memory, v1 cpu and the unified
//! hierarchy used for PSI at once).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::BenchError;

/// Which cgroup version a controller is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// Where the benchmark can create cgroups: one directory per hierarchy it uses, each the
/// process's own cgroup in that hierarchy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The memory controller: version and own cgroup directory.
    pub memory: Option<(Version, PathBuf)>,
    /// The cpu controller: version and own cgroup directory.
    pub cpu: Option<(Version, PathBuf)>,
    /// The own cgroup in the v2 (unified) hierarchy, whatever controllers it has: its cgroups
    /// carry `memory.pressure`/`cpu.pressure` (PSI) even with no controller enabled.
    pub unified: Option<PathBuf>,
}

/// One mount of a cgroup filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CgMount {
    /// Path inside the hierarchy that the mount shows at its mount point.
    root: String,
    mount_point: PathBuf,
    v2: bool,
    super_options: Vec<String>,
}

fn parse_mounts(mountinfo: &str) -> Vec<CgMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let _source = post.next()?;
            let super_options = post.next().unwrap_or("");
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgMount {
                root: unescape(pre.get(3)?),
                mount_point: PathBuf::from(unescape(pre.get(4)?)),
                v2: fstype == "cgroup2",
                super_options: super_options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(controllers, path)` of each line of `/proc/self/cgroup`; `controllers` is empty for v2.
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            let ctrls = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(str::to_owned).collect()
            };
            Some((ctrls, path.to_owned()))
        })
        .collect()
}

/// The directory of cgroup `path` under `mount`, if the mount shows it.
fn dir_in(mount: &CgMount, path: &str) -> Option<PathBuf> {
    let rel = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root.as_str())?
    };
    Some(mount.mount_point.join(rel.trim_start_matches('/')))
}

impl Hierarchies {
    /// Discovers the hierarchies of the running process.
    pub fn discover() -> Result<Self, BenchError> {
        Self::of_pid_path("/proc/self/cgroup")
    }

    /// The cgroups of process `pid` (seen through this process's mounts).
    pub fn of_pid(pid: i32) -> Result<Self, BenchError> {
        Self::of_pid_path(&format!("/proc/{pid}/cgroup"))
    }

    fn of_pid_path(proc_cgroup: &str) -> Result<Self, BenchError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| BenchError::Io {
                path: PathBuf::from(p),
                source,
            })
        };
        Ok(Self::from_texts(
            &read("/proc/self/mountinfo")?,
            &read(proc_cgroup)?,
        ))
    }

    /// Discovery from the texts of `/proc/self/mountinfo` and `/proc/self/cgroup`.
    fn from_texts(mountinfo: &str, proc_cgroup: &str) -> Self {
        let mounts = parse_mounts(mountinfo);
        let lines = parse_proc_cgroup(proc_cgroup);
        let v2_path = lines
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.clone());
        let v2_mount = mounts.iter().find(|m| m.v2);
        let unified = v2_mount
            .zip(v2_path.as_deref())
            .and_then(|(m, p)| dir_in(m, p));
        let v2_controllers: Vec<String> = unified
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.controllers")).ok())
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let find = |ctrl: &str| -> Option<(Version, PathBuf)> {
            for (ctrls, path) in &lines {
                if ctrls.iter().any(|c| c == ctrl) {
                    let m = mounts
                        .iter()
                        .find(|m| !m.v2 && m.super_options.iter().any(|o| o == ctrl))?;
                    return dir_in(m, path).map(|d| (Version::V1, d));
                }
            }
            if v2_controllers.iter().any(|c| c == ctrl) {
                return unified.clone().map(|d| (Version::V2, d));
            }
            None
        };
        Self {
            memory: find("memory"),
            cpu: find("cpu"),
            unified,
        }
    }
}

/// A directory the benchmark created, removed on drop.
#[derive(Debug)]
struct OwnedDir {
    path: PathBuf,
}

impl OwnedDir {
    fn create(parent: &Path, name: &str) -> Result<Self, BenchError> {
        let path = parent.join(name);
        std::fs::create_dir(&path).map_err(|source| BenchError::CreateCgroup {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        kill_members(&self.path);
        // A v1 memcg can refuse rmdir for a moment after its last task exits.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!(
                        "scaler bench: could not remove cgroup {}: {e}; remove it by hand \
                         with rmdir once its processes are gone",
                        self.path.display()
                    );
                    return;
                }
                Err(_) => {
                    kill_members(&self.path);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// SIGKILLs every process in the cgroup at `dir` (only the benchmark's own descendants can be
/// there: it created the cgroup and put only its children in it).
pub(crate) fn kill_members(dir: &Path) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill by pid of a process in our own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The benchmark's top cgroups (one per hierarchy), holding one cgroup per run.
#[derive(Debug)]
pub struct BenchRoot {
    name: String,
    memory: Option<(Version, OwnedDir)>,
    cpu: Option<(Version, OwnedDir)>,
    unified: Option<OwnedDir>,
    /// When memory and cpu are both v2 they share one directory (and unified is that too).
    next_run: std::sync::atomic::AtomicU64,
}

/// A unique name: prefix, pid and a time-based suffix.
fn unique_name(prefix: &str) -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{ns:08x}", std::process::id())
}

fn enable_controllers(dir: &Path, ctrls: &[&str]) -> Result<(), BenchError> {
    let path = dir.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    for c in ctrls {
        if current.split_whitespace().any(|x| x == *c) {
            continue;
        }
        std::fs::write(&path, format!("+{c}")).map_err(|source| BenchError::EnableController {
            path: path.clone(),
            controller: (*c).to_owned(),
            source,
        })?;
    }
    Ok(())
}

impl BenchRoot {
    /// Creates `scaler-bench-<pid>-<n>` under the own cgroup of each hierarchy.
    pub fn create(h: &Hierarchies) -> Result<Self, BenchError> {
        let name = unique_name("scaler-bench");
        let mut v2_ctrls = Vec::new();
        if matches!(h.memory, Some((Version::V2, _))) {
            v2_ctrls.push("memory");
        }
        if matches!(h.cpu, Some((Version::V2, _))) {
            v2_ctrls.push("cpu");
        }
        let unified = match &h.unified {
            Some(parent) => {
                if !v2_ctrls.is_empty() {
                    enable_controllers(parent, &v2_ctrls)?;
                }
                let d = OwnedDir::create(parent, &name)?;
                if !v2_ctrls.is_empty() {
                    enable_controllers(&d.path, &v2_ctrls)?;
                }
                Some(d)
            }
            None => None,
        };
        let v1 = |c: &Option<(Version, PathBuf)>| -> Result<_, BenchError> {
            match c {
                Some((Version::V1, parent)) => {
                    Ok(Some((Version::V1, OwnedDir::create(parent, &name)?)))
                }
                _ => Ok(None),
            }
        };
        let memory = v1(&h.memory)?;
        let cpu = v1(&h.cpu)?;
        Ok(Self {
            name,
            memory,
            cpu,
            unified,
            next_run: Default::default(),
        })
    }

    /// The unique name of the benchmark's cgroups.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The memory controller's version, if the benchmark has one.
    pub fn memory_version(&self, h: &Hierarchies) -> Option<Version> {
        h.memory.as_ref().map(|(v, _)| *v)
    }

    /// Creates a fresh cgroup for one run.
    pub fn run_cgroup(&self, h: &Hierarchies, label: &str) -> Result<RunCgroup, BenchError> {
        let n = self
            .next_run
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("run{n}-{label}");
        let unified = match &self.unified {
            Some(d) => Some(OwnedDir::create(&d.path, &name)?),
            None => None,
        };
        let mk = |ours: &Option<(Version, OwnedDir)>, theirs: &Option<(Version, PathBuf)>| match (
            ours, theirs,
        ) {
            (Some((_, d)), _) => OwnedDir::create(&d.path, &name).map(|d| Some((Version::V1, d))),
            (None, Some((Version::V2, _))) => Ok(None),
            _ => Ok(None),
        };
        let memory_v1 = mk(&self.memory, &h.memory)?;
        let cpu_v1 = mk(&self.cpu, &h.cpu)?;
        let memory = match (&memory_v1, &h.memory, &unified) {
            (Some((_, d)), _, _) => Some((Version::V1, d.path.clone())),
            (None, Some((Version::V2, _)), Some(u)) => Some((Version::V2, u.path.clone())),
            _ => None,
        };
        let cpu = match (&cpu_v1, &h.cpu, &unified) {
            (Some((_, d)), _, _) => Some((Version::V1, d.path.clone())),
            (None, Some((Version::V2, _)), Some(u)) => Some((Version::V2, u.path.clone())),
            _ => None,
        };
        let mut procs = Vec::new();
        for dir in [
            memory_v1.as_ref().map(|(_, d)| &d.path),
            cpu_v1.as_ref().map(|(_, d)| &d.path),
            unified.as_ref().map(|d| &d.path),
        ]
        .into_iter()
        .flatten()
        {
            let p = dir.join("cgroup.procs");
            let f = OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|source| BenchError::Io { path: p, source })?;
            procs.push(f);
        }
        // Drop order: files first, then unified, then v1 dirs (fields are dropped in order).
        Ok(RunCgroup {
            procs,
            memory,
            cpu,
            unified_dir: unified.as_ref().map(|d| d.path.clone()),
            _dirs: [memory_v1.map(|(_, d)| d), cpu_v1.map(|(_, d)| d), unified]
                .into_iter()
                .flatten()
                .collect(),
        })
    }
}

/// The cgroups of one run: a memory cgroup, a cpu cgroup and a unified-hierarchy cgroup (one
/// directory on pure v2). Removed on drop, after SIGKILLing whatever is left in them.
#[derive(Debug)]
pub struct RunCgroup {
    procs: Vec<File>,
    /// The memory cgroup (version, directory).
    pub memory: Option<(Version, PathBuf)>,
    /// The cpu cgroup (version, directory).
    pub cpu: Option<(Version, PathBuf)>,
    /// The unified-hierarchy cgroup (PSI files).
    pub unified_dir: Option<PathBuf>,
    _dirs: Vec<OwnedDir>,
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
        // The unified file is opened last, and only when there is a unified cgroup.
        self.unified_dir.as_ref()?;
        self.procs.last().map(|f| f.as_raw_fd())
    }

    /// A file of the memory cgroup.
    pub fn memory_file(&self, name: &str) -> Option<PathBuf> {
        self.memory.as_ref().map(|(_, d)| d.join(name))
    }

    /// A file of the cpu cgroup.
    pub fn cpu_file(&self, name: &str) -> Option<PathBuf> {
        self.cpu.as_ref().map(|(_, d)| d.join(name))
    }

    /// A file of the unified cgroup.
    pub fn unified_file(&self, name: &str) -> Option<PathBuf> {
        self.unified_dir.as_ref().map(|d| d.join(name))
    }
}

/// Writes `value` to a cgroup file (whole-file write).
pub fn write_file(path: &Path, value: &str) -> Result<(), BenchError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| BenchError::Io {
            path: path.to_owned(),
            source,
        })?;
    f.write_all(value.as_bytes())
        .map_err(|source| BenchError::Io {
            path: path.to_owned(),
            source,
        })
}

/// A pre-opened cgroup file read with `pread` at offset 0 (no reopen on each read).
#[derive(Debug)]
pub struct PreOpened {
    file: File,
    path: PathBuf,
}

impl PreOpened {
    /// Opens `path` for reading, and for writing too if `write`.
    pub fn open(path: &Path, write: bool) -> Result<Self, BenchError> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|source| BenchError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw fd.
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Reads the whole file (small cgroup files) into `buf`; returns the text.
    pub fn read<'a>(&self, buf: &'a mut [u8]) -> Result<&'a str, BenchError> {
        let n = self.file.read_at(buf, 0).map_err(|source| BenchError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(std::str::from_utf8(&buf[..n]).unwrap_or("").trim_end())
    }

    /// Reads a single number (`max` reads as `u64::MAX`).
    pub fn read_u64(&self) -> Result<u64, BenchError> {
        let mut buf = [0u8; 64];
        let s = self.read(&mut buf)?;
        let first = s.split_whitespace().next().unwrap_or("");
        if first == "max" {
            return Ok(u64::MAX);
        }
        first.parse().map_err(|_| BenchError::Parse {
            path: self.path.clone(),
            text: s.to_owned(),
        })
    }

    /// Writes `value` at offset 0 in one `pwrite` (what the kernel needs for a cgroup file).
    pub fn write_str(&self, value: &str) -> Result<(), BenchError> {
        self.file
            .write_at(value.as_bytes(), 0)
            .map(|_| ())
            .map_err(|source| BenchError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// Looks up `key` in a flat-keyed file (`memory.events`, `cpu.stat`, `memory.oom_control`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then_some(())?;
        it.next()?.parse().ok()
    })
}

/// The `total=` of the `some` line of a PSI file, in microseconds.
pub fn psi_some_total_us(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Reads a keyed value from a file, `None` if the file or key is missing.
pub fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    keyed(&std::fs::read_to_string(path).ok()?, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PROC_CGROUP: &str = "\
4:memory:/process_api/abc
1:cpu:/
2:cpuacct:/
0::/
";

    #[test]
    fn discovers_v1_with_unified() {
        let h = Hierarchies::from_texts(MOUNTINFO, PROC_CGROUP);
        assert_eq!(
            h.memory,
            Some((
                Version::V1,
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
            ))
        );
        assert_eq!(
            h.cpu,
            Some((Version::V1, PathBuf::from("/sys/fs/cgroup/cpu/")))
        );
        assert_eq!(h.unified, Some(PathBuf::from("/sys/fs/cgroup/unified/")));
    }

    #[test]
    fn combined_v1_mount_and_escapes() {
        let mi = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                  35 31 0:32 /nested /mnt/my\\040mem rw - cgroup cgroup rw,memory\n";
        let pc = "1:cpu,cpuacct:/a\n4:memory:/nested/b\n";
        let h = Hierarchies::from_texts(mi, pc);
        assert_eq!(
            h.cpu,
            Some((Version::V1, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a")))
        );
        assert_eq!(
            h.memory,
            Some((Version::V1, PathBuf::from("/mnt/my mem/b")))
        );
        assert_eq!(h.unified, None);
    }

    #[test]
    fn keyed_files() {
        let ev = "low 0\nhigh 3\nmax 17\noom 1\noom_kill 1\n";
        assert_eq!(keyed(ev, "max"), Some(17));
        assert_eq!(keyed(ev, "oom_kill"), Some(1));
        assert_eq!(keyed(ev, "oom_group_kill"), None);
        let oc = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(oc, "oom_kill"), Some(2));
        let psi = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1234\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=99\n";
        assert_eq!(psi_some_total_us(psi), Some(1234));
        assert_eq!(psi_some_total_us("full total=3\n"), None);
    }
}
