//! A handle on one cgroup directory and typed readers of its files.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{
    io_is_gone,
    values::{flat_keyed, CpuQuota, CpuStat, Limit, MemoryStat, Pressure},
    xattr, CgroupError, CgroupId, CgroupVersion,
};

/// One cgroup: its directory, its cgroup path and the hierarchy's version. Cheap to clone;
/// holds no file descriptors (the actuator module keeps pre-opened writers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    dir: PathBuf,
    path: String,
    version: CgroupVersion,
}

impl Cgroup {
    /// A handle on the cgroup at directory `dir`, known as `path` in its hierarchy.
    pub fn new(dir: PathBuf, path: String, version: CgroupVersion) -> Self {
        Cgroup { dir, path, version }
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup path relative to the hierarchy root (`"/"` or `"/a/b"`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The hierarchy's version.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The path of one of the cgroup's files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// True while the directory exists.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// The cgroup's kernfs id (inode number of its directory).
    pub fn id(&self) -> Result<CgroupId, CgroupError> {
        match std::fs::metadata(&self.dir) {
            Ok(m) => Ok(CgroupId(m.ino())),
            Err(e) if io_is_gone(&e) => Err(CgroupError::Gone {
                path: self.dir.clone(),
            }),
            Err(source) => Err(CgroupError::Read {
                path: self.dir.clone(),
                source,
            }),
        }
    }

    /// Reads a file; `Ok(None)` when the file is absent but the cgroup exists, `Gone` when the
    /// cgroup itself is absent.
    pub fn read_optional(&self, name: &str) -> Result<Option<String>, CgroupError> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if io_is_gone(&e) => {
                if self.dir.is_dir() {
                    Ok(None)
                } else {
                    Err(CgroupError::Gone {
                        path: self.dir.clone(),
                    })
                }
            }
            Err(source) => Err(CgroupError::Read { path, source }),
        }
    }

    /// Reads a file that must exist; `what` names the feature for the error message.
    pub fn read_required(&self, name: &str, what: &'static str) -> Result<String, CgroupError> {
        self.read_optional(name)?
            .ok_or_else(|| CgroupError::MissingFile {
                path: self.dir.join(name),
                what,
            })
    }

    /// Writes `value` to one of the cgroup's files (one write; slow path, allocates).
    pub fn write(&self, name: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()))
            .map_err(|source| {
                if io_is_gone(&source) && !self.dir.is_dir() {
                    CgroupError::Gone {
                        path: self.dir.clone(),
                    }
                } else {
                    CgroupError::Write {
                        path,
                        value: value.to_string(),
                        source,
                    }
                }
            })
    }

    fn parse<T>(
        &self,
        name: &str,
        text: &str,
        f: impl FnOnce(&str) -> Result<T, &'static str>,
    ) -> Result<T, CgroupError> {
        f(text).map_err(|reason| CgroupError::Parse {
            path: self.dir.join(name),
            content: text.chars().take(200).collect(),
            reason,
        })
    }

    fn by_version(&self, v1: &'static str, v2: &'static str) -> &'static str {
        match self.version {
            CgroupVersion::V1 => v1,
            CgroupVersion::V2 => v2,
        }
    }

    fn read_u64(&self, name: &str, what: &'static str) -> Result<u64, CgroupError> {
        let text = self.read_required(name, what)?;
        self.parse(name, &text, |s| {
            s.trim().parse().map_err(|_| "expected an unsigned number")
        })
    }

    /// Current memory usage in bytes (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub fn memory_usage(&self) -> Result<u64, CgroupError> {
        let name = self.by_version("memory.usage_in_bytes", "memory.current");
        self.read_u64(name, "memory usage (memory controller)")
    }

    /// The hard memory limit (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub fn memory_limit(&self) -> Result<Limit, CgroupError> {
        let name = self.by_version("memory.limit_in_bytes", "memory.max");
        let text = self.read_required(name, "the memory limit (memory controller)")?;
        self.parse(name, &text, Limit::parse)
    }

    /// v2 `memory.high`; `None` on v1 (no such file).
    pub fn memory_high(&self) -> Result<Option<Limit>, CgroupError> {
        if self.version == CgroupVersion::V1 {
            return Ok(None);
        }
        self.read_optional("memory.high")?
            .map(|t| self.parse("memory.high", &t, Limit::parse))
            .transpose()
    }

    /// v1 `memory.memsw.limit_in_bytes` (memory+swap); `None` on v2 or when swap accounting is
    /// off (the file is absent).
    pub fn memsw_limit(&self) -> Result<Option<Limit>, CgroupError> {
        if self.version == CgroupVersion::V2 {
            return Ok(None);
        }
        self.read_optional("memory.memsw.limit_in_bytes")?
            .map(|t| self.parse("memory.memsw.limit_in_bytes", &t, Limit::parse))
            .transpose()
    }

    /// v2 `memory.swap.max`; `None` on v1 or when absent.
    pub fn swap_max(&self) -> Result<Option<Limit>, CgroupError> {
        if self.version == CgroupVersion::V1 {
            return Ok(None);
        }
        self.read_optional("memory.swap.max")?
            .map(|t| self.parse("memory.swap.max", &t, Limit::parse))
            .transpose()
    }

    /// `memory.stat`, normalised (see [`MemoryStat`]).
    pub fn memory_stat(&self) -> Result<MemoryStat, CgroupError> {
        let text = self.read_required("memory.stat", "memory statistics (memory controller)")?;
        self.parse("memory.stat", &text, |t| MemoryStat::parse(t, self.version))
    }

    /// OOM kills in this cgroup (v2 `memory.events` `oom_kill`, v1 `memory.oom_control`
    /// `oom_kill`). `None` where the kernel does not count them (v1 before 4.13).
    pub fn oom_kills(&self) -> Result<Option<u64>, CgroupError> {
        let name = self.by_version("memory.oom_control", "memory.events");
        let text = self.read_required(name, "OOM statistics (memory controller)")?;
        Ok(flat_keyed(&text, "oom_kill"))
    }

    /// How many times usage hit the hard limit (v2 `memory.events` `max`, v1
    /// `memory.failcnt`): every charge that found the cgroup at its limit and had to reclaim
    /// or fail. `None` where the file has no such count.
    pub fn memory_limit_hits(&self) -> Result<Option<u64>, CgroupError> {
        match self.version {
            CgroupVersion::V2 => {
                let text =
                    self.read_required("memory.events", "memory events (memory controller)")?;
                Ok(flat_keyed(&text, "max"))
            }
            CgroupVersion::V1 => self
                .read_optional("memory.failcnt")?
                .map(|t| {
                    self.parse("memory.failcnt", &t, |s| {
                        s.trim().parse().map_err(|_| "expected an unsigned number")
                    })
                })
                .transpose(),
        }
    }

    /// Peak memory usage (v1 `memory.max_usage_in_bytes`, v2 `memory.peak` since 5.19);
    /// `None` where absent.
    pub fn memory_peak(&self) -> Result<Option<u64>, CgroupError> {
        let name = self.by_version("memory.max_usage_in_bytes", "memory.peak");
        self.read_optional(name)?
            .map(|t| {
                self.parse(name, &t, |s| {
                    s.trim().parse().map_err(|_| "expected an unsigned number")
                })
            })
            .transpose()
    }

    /// The CPU bandwidth limit (v1 `cpu.cfs_quota_us` + `cpu.cfs_period_us`, v2 `cpu.max`).
    pub fn cpu_quota(&self) -> Result<CpuQuota, CgroupError> {
        self.cpu_max().map(|(q, _)| q)
    }

    /// The CPU bandwidth period in microseconds (kept even when the quota is `Max`).
    pub fn cpu_period_us(&self) -> Result<u64, CgroupError> {
        self.cpu_max().map(|(_, p)| p)
    }

    /// The quota and the period.
    pub fn cpu_max(&self) -> Result<(CpuQuota, u64), CgroupError> {
        const WHAT: &str = "CPU bandwidth control (cpu controller, CONFIG_CFS_BANDWIDTH)";
        match self.version {
            CgroupVersion::V2 => {
                let text = self.read_required("cpu.max", WHAT)?;
                self.parse("cpu.max", &text, CpuQuota::parse_v2)
            }
            CgroupVersion::V1 => {
                let q = self.read_required("cpu.cfs_quota_us", WHAT)?;
                let quota: i64 = self.parse("cpu.cfs_quota_us", &q, |s| {
                    s.trim().parse().map_err(|_| "expected a signed number")
                })?;
                let period = self.read_u64("cpu.cfs_period_us", WHAT)?;
                Ok((CpuQuota::from_v1(quota, period), period))
            }
        }
    }

    /// `cpu.stat`, normalised (see [`CpuStat`]).
    pub fn cpu_stat(&self) -> Result<CpuStat, CgroupError> {
        let text = self.read_required("cpu.stat", "CPU statistics (cpu controller)")?;
        self.parse("cpu.stat", &text, |t| CpuStat::parse(t, self.version))
    }

    /// `memory.pressure` (v2 PSI); `None` when absent (v1 cgroups, PSI disabled).
    pub fn memory_pressure(&self) -> Result<Option<Pressure>, CgroupError> {
        self.pressure("memory.pressure")
    }

    /// `cpu.pressure` (v2 PSI); `None` when absent.
    pub fn cpu_pressure(&self) -> Result<Option<Pressure>, CgroupError> {
        self.pressure("cpu.pressure")
    }

    fn pressure(&self, name: &str) -> Result<Option<Pressure>, CgroupError> {
        match self.read_optional(name) {
            Ok(Some(t)) => self.parse(name, &t, Pressure::parse).map(Some),
            Ok(None) => Ok(None),
            // PSI compiled in but disabled (psi=0) makes the read fail with EOPNOTSUPP.
            Err(CgroupError::Read { source, .. })
                if source.raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The pids in `cgroup.procs`.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        let text = self.read_required("cgroup.procs", "the process list")?;
        self.parse("cgroup.procs", &text, |t| {
            t.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().parse().map_err(|_| "expected one pid per line"))
                .collect()
        })
    }

    /// Moves process `pid` into this cgroup (writes `cgroup.procs`).
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The value of extended attribute `name` on the cgroup directory with the directory's
    /// owner and mode (read through one descriptor); `None` when unset or unsupported.
    pub fn xattr_with_owner(
        &self,
        name: &str,
    ) -> Result<Option<(Vec<u8>, xattr::Owner)>, CgroupError> {
        match xattr::get_with_owner(&self.dir, name) {
            Ok(v) => Ok(v),
            Err(e) if io_is_gone(&e) => Err(CgroupError::Gone {
                path: self.dir.clone(),
            }),
            Err(source) => Err(CgroupError::Xattr {
                path: self.dir.clone(),
                name: name.to_string(),
                source,
            }),
        }
    }

    /// The value of extended attribute `name` (e.g. `user.scaler`, `trusted.scaler`) on the
    /// cgroup directory; `None` when unset or when the filesystem does not support it.
    pub fn xattr(&self, name: &str) -> Result<Option<Vec<u8>>, CgroupError> {
        match xattr::get(&self.dir, name) {
            Ok(v) => Ok(v),
            Err(e) if io_is_gone(&e) => Err(CgroupError::Gone {
                path: self.dir.clone(),
            }),
            Err(source) => Err(CgroupError::Xattr {
                path: self.dir.clone(),
                name: name.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake(version: CgroupVersion, files: &[(&str, &str)]) -> (tempfile::TempDir, Cgroup) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        fs::create_dir(&dir).unwrap();
        for (name, content) in files {
            fs::write(dir.join(name), content).unwrap();
        }
        (tmp, Cgroup::new(dir, "/a".into(), version))
    }

    #[test]
    fn v1_memory_files_from_the_development_machine() {
        let (_t, cg) = fake(
            CgroupVersion::V1,
            &[
                ("memory.usage_in_bytes", "2842624\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
                ("memory.max_usage_in_bytes", "8818688\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                ),
                ("memory.stat", super::super::values::tests::V1_MEMORY_STAT),
            ],
        );
        assert_eq!(cg.memory_usage().unwrap(), 2842624);
        assert_eq!(cg.memory_limit().unwrap(), Limit::Max);
        assert_eq!(cg.memsw_limit().unwrap(), Some(Limit::Max));
        assert_eq!(cg.memory_high().unwrap(), None);
        assert_eq!(cg.memory_peak().unwrap(), Some(8818688));
        assert_eq!(cg.oom_kills().unwrap(), Some(0));
        let stat = cg.memory_stat().unwrap();
        assert_eq!(
            stat.working_set(cg.memory_usage().unwrap()),
            2842624 - 16384
        );
        // No PSI files on a v1 memory cgroup.
        assert_eq!(cg.memory_pressure().unwrap(), None);
        assert!(cg
            .cpu_stat()
            .unwrap_err()
            .to_string()
            .contains("cpu.stat does not exist"));
    }

    #[test]
    fn v1_cpu_files() {
        let (_t, cg) = fake(
            CgroupVersion::V1,
            &[
                ("cpu.cfs_quota_us", "-1\n"),
                ("cpu.cfs_period_us", "100000\n"),
                (
                    "cpu.stat",
                    "nr_periods 0\nnr_throttled 0\nthrottled_time 0\nnr_bursts 0\nburst_time 0\n",
                ),
            ],
        );
        assert_eq!(cg.cpu_quota().unwrap(), CpuQuota::Max);
        assert_eq!(cg.cpu_period_us().unwrap(), 100000);
        assert_eq!(cg.cpu_stat().unwrap(), CpuStat::default());
        fs::write(cg.file("cpu.cfs_quota_us"), "25000\n").unwrap();
        assert_eq!(cg.cpu_quota().unwrap().cores(), Some(0.25));
    }

    #[test]
    fn v2_files() {
        let (_t, cg) = fake(
            CgroupVersion::V2,
            &[
                ("memory.current", "1048576\n"),
                ("memory.max", "max\n"),
                ("memory.high", "524288\n"),
                ("memory.events", "low 0\nhigh 3\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n"),
                ("cpu.max", "50000 100000\n"),
                ("memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"),
            ],
        );
        assert_eq!(cg.memory_usage().unwrap(), 1 << 20);
        assert_eq!(cg.memory_limit().unwrap(), Limit::Max);
        assert_eq!(cg.memory_high().unwrap(), Some(Limit::Bytes(524288)));
        assert_eq!(cg.memsw_limit().unwrap(), None);
        assert_eq!(cg.memory_peak().unwrap(), None, "memory.peak absent");
        assert_eq!(cg.oom_kills().unwrap(), Some(1));
        assert_eq!(cg.memory_limit_hits().unwrap(), Some(1));
        assert_eq!(cg.cpu_quota().unwrap().cores(), Some(0.5));
        let p = cg.memory_pressure().unwrap().unwrap();
        assert_eq!((p.some.total_us, p.full.unwrap().total_us), (42, 7));
        assert_eq!(cg.cpu_pressure().unwrap(), None);
    }

    #[test]
    fn parse_errors_name_the_file() {
        let (_t, cg) = fake(CgroupVersion::V2, &[("memory.max", "lots\n")]);
        let err = cg.memory_limit().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("memory.max") && msg.contains("lots"), "{msg}");
    }

    #[test]
    fn a_vanished_cgroup_is_gone_not_missing() {
        let (_t, cg) = fake(CgroupVersion::V1, &[("memory.usage_in_bytes", "1\n")]);
        assert_eq!(cg.memory_usage().unwrap(), 1);
        let id = cg.id().unwrap();
        assert_eq!(id.0, fs::metadata(cg.dir()).unwrap().ino());
        fs::remove_dir_all(cg.dir()).unwrap();
        let err = cg.memory_usage().unwrap_err();
        assert!(err.is_gone(), "{err}");
        assert!(cg.memory_pressure().unwrap_err().is_gone());
        assert!(cg.id().unwrap_err().is_gone());
    }

    #[test]
    fn procs_and_write() {
        let (_t, cg) = fake(CgroupVersion::V1, &[("cgroup.procs", "1\n22\n")]);
        assert_eq!(cg.procs().unwrap(), vec![1, 22]);
        // Regular files are not truncated (cgroupfs files need no truncation): "7" overwrites "1".
        cg.write("cgroup.procs", "7").unwrap();
        assert_eq!(cg.procs().unwrap(), vec![7, 22]);
        let (_t, cg) = fake(CgroupVersion::V1, &[("cgroup.procs", "1\nx\n")]);
        assert!(matches!(cg.procs(), Err(CgroupError::Parse { .. })));
    }
}
