//! The CPU bandwidth writer: v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`, v2 `cpu.max`.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use super::{ActuatorError, CgroupDir, ControlFile, LimitWriter, Setting, ValueBuf, WriteOutcome};
use crate::cgroupfs::{Cgroup, CgroupVersion, CpuQuota};

/// Pre-opened CPU bandwidth files of one cgroup.
#[derive(Debug)]
pub struct CpuActuator {
    dir: PathBuf,
    version: CgroupVersion,
    /// v1 `cpu.cfs_quota_us`, v2 `cpu.max`.
    quota: ControlFile,
    /// v1 `cpu.cfs_period_us`.
    period: Option<ControlFile>,
    /// (quota, period in µs).
    state: Mutex<(CpuQuota, u64)>,
}

const CPU_HINT: &str = "the quota must be >= 1000 µs, the period within 1000..=1000000 µs, and \
                        a child's quota/period may not exceed its parent's (EINVAL)";

impl CpuActuator {
    /// Opens the CPU bandwidth files of `cgroup` and reads their current values.
    pub fn open(cgroup: &Cgroup) -> Result<Self, ActuatorError> {
        Self::open_expecting(cgroup, None)
    }

    /// Like [`open`](Self::open), through the cgroup's directory fd; with `expected`, the
    /// cgroup at the path must have that id ([`ActuatorError::Replaced`] otherwise).
    pub fn open_expecting(cgroup: &Cgroup, expected: Option<u64>) -> Result<Self, ActuatorError> {
        let d = CgroupDir::open(cgroup, expected)?;
        let dir = cgroup.dir().to_path_buf();
        let (quota, period) = match cgroup.version() {
            CgroupVersion::V1 => (
                ControlFile::open_rw_at(&d, "cpu.cfs_quota_us")?,
                Some(ControlFile::open_rw_at(&d, "cpu.cfs_period_us")?),
            ),
            CgroupVersion::V2 => (ControlFile::open_rw_at(&d, "cpu.max")?, None),
        };
        let act = CpuActuator {
            dir,
            version: cgroup.version(),
            quota,
            period,
            state: Mutex::new((CpuQuota::Max, 0)),
        };
        // Read through the descriptors of this very directory.
        let now = act.read_files()?;
        *act.lock() = now;
        Ok(act)
    }

    /// One `pread` of the bandwidth files: (quota, period µs).
    fn read_files(&self) -> Result<(CpuQuota, u64), ActuatorError> {
        let mut buf = [0u8; 64];
        let line = self.quota.read_line(&mut buf)?;
        match &self.period {
            None => {
                CpuQuota::parse_v2(line).map_err(|r| self.quota.parse_error(line.as_bytes(), r))
            }
            Some(pf) => {
                let quota: i64 = line.trim().parse().map_err(|_| {
                    self.quota
                        .parse_error(line.as_bytes(), "expected a signed number")
                })?;
                let mut pbuf = [0u8; 64];
                let pline = pf.read_line(&mut pbuf)?;
                let period: u64 = pline
                    .trim()
                    .parse()
                    .map_err(|_| pf.parse_error(pline.as_bytes(), "expected an unsigned number"))?;
                Ok((CpuQuota::from_v1(quota, period), period))
            }
        }
    }

    /// Re-reads the bandwidth files (one `pread` each on the open descriptors; no
    /// allocation) and takes what they hold as what the next write starts from (a period its
    /// owner changed is kept). Returns the quota before and now.
    pub fn refresh(&self) -> Result<(CpuQuota, CpuQuota), ActuatorError> {
        let now = self.read_files()?;
        let mut st = self.lock();
        let before = st.0;
        *st = now;
        Ok((before, now.0))
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The quota last written (or read at open).
    pub fn current_quota(&self) -> CpuQuota {
        self.lock().0
    }

    /// Sets the CPU bandwidth limit. v2: one write of `cpu.max`. v1: one write of
    /// `cpu.cfs_quota_us`; when the period changes as well, the quota is lifted first
    /// (`-1`), then the period and the quota are written, so no intermediate state can be
    /// rejected by the hierarchy's bandwidth constraints.
    pub fn set_cpu_quota(&self, new: CpuQuota) -> Result<WriteOutcome<CpuQuota>, ActuatorError> {
        let mut state = self.lock();
        let previous = state.0;
        let start = Instant::now();
        let mut writes = 0u8;
        match self.version {
            CgroupVersion::V2 => {
                let mut buf = ValueBuf::new();
                match new {
                    CpuQuota::Max => buf.push_str("max"),
                    CpuQuota::Quota {
                        quota_us,
                        period_us,
                    } => buf.push_u64(quota_us).push_str(" ").push_u64(period_us),
                };
                self.quota.write(&buf, CPU_HINT)?;
                writes += 1;
                *state = match new {
                    CpuQuota::Max => (new, state.1),
                    CpuQuota::Quota { period_us, .. } => (new, period_us),
                };
            }
            CgroupVersion::V1 => {
                let mut unlimited = ValueBuf::new();
                unlimited.push_str("-1");
                match new {
                    CpuQuota::Max => {
                        self.quota.write(&unlimited, CPU_HINT)?;
                        writes += 1;
                        state.0 = CpuQuota::Max;
                    }
                    CpuQuota::Quota {
                        quota_us,
                        period_us,
                    } => {
                        if period_us != state.1 {
                            if state.0 != CpuQuota::Max {
                                self.quota.write(&unlimited, CPU_HINT)?;
                                writes += 1;
                                state.0 = CpuQuota::Max;
                            }
                            let mut buf = ValueBuf::new();
                            buf.push_u64(period_us);
                            let period_file =
                                self.period
                                    .as_ref()
                                    .ok_or_else(|| ActuatorError::Unsupported {
                                        what: "changing the CFS period",
                                        path: self.dir.clone(),
                                    })?;
                            period_file.write(&buf, CPU_HINT)?;
                            writes += 1;
                            state.1 = period_us;
                        }
                        let mut buf = ValueBuf::new();
                        buf.push_u64(quota_us);
                        self.quota.write(&buf, CPU_HINT)?;
                        writes += 1;
                        state.0 = new;
                    }
                }
            }
        }
        Ok(WriteOutcome::done(previous, new, writes, start))
    }

    /// Sets the quota alone, leaving the period in force as it is (the period belongs to
    /// whoever set it): v1 writes `cpu.cfs_quota_us`, v2 writes one number to `cpu.max`,
    /// which changes only its `$MAX` field. One `pwrite`; the engine's hot path.
    pub fn set_quota_us(&self, quota_us: u64) -> Result<WriteOutcome<CpuQuota>, ActuatorError> {
        let mut state = self.lock();
        let previous = state.0;
        let start = Instant::now();
        let mut buf = ValueBuf::new();
        buf.push_u64(quota_us);
        self.quota.write(&buf, CPU_HINT)?;
        let applied = CpuQuota::Quota {
            quota_us,
            period_us: state.1,
        };
        state.0 = applied;
        Ok(WriteOutcome::done(previous, applied, 1, start))
    }

    fn lock(&self) -> MutexGuard<'_, (CpuQuota, u64)> {
        // A panic while holding the lock leaves at worst a stale belief: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LimitWriter for CpuActuator {
    fn current(&self) -> Setting {
        Setting::Cpu(self.current_quota())
    }

    fn write(&self, new: u64) -> Result<u64, ActuatorError> {
        self.set_quota_us(new).map(|o| o.completed_ns)
    }

    fn refresh(&self) -> Result<(Setting, Setting), ActuatorError> {
        let (before, now) = CpuActuator::refresh(self)?;
        Ok((Setting::Cpu(before), Setting::Cpu(now)))
    }

    fn holds(&self, found: Setting, believed: u64) -> bool {
        match found {
            Setting::Cpu(CpuQuota::Max) => believed == u64::MAX,
            Setting::Cpu(CpuQuota::Quota { quota_us, .. }) => quota_us == believed,
            Setting::Memory(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::actuator::tests::first_line;
    use crate::decider::Resource;

    #[test]
    fn cpu_v1_and_v2() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v1");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        fs::write(dir.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let cg = Cgroup::new(dir, "/v1".into(), CgroupVersion::V1);
        let act = CpuActuator::open(&cg).unwrap();
        assert_eq!(act.current_quota(), CpuQuota::Max);
        let q = CpuQuota::from_cores(0.5, 100000);
        let out = act.set_cpu_quota(q).unwrap();
        assert_eq!(out.writes, 1);
        assert_eq!(first_line(&cg.file("cpu.cfs_quota_us")), "50000");
        // Period change while limited: lift, period, quota.
        let q2 = CpuQuota::Quota {
            quota_us: 25000,
            period_us: 50000,
        };
        let out = act.set_cpu_quota(q2).unwrap();
        assert_eq!(out.writes, 3);
        assert_eq!(first_line(&cg.file("cpu.cfs_period_us")), "50000");
        assert_eq!(first_line(&cg.file("cpu.cfs_quota_us")), "25000");
        assert_eq!(act.current_quota(), q2);

        let dir = tmp.path().join("v2");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("cpu.max"), "max 100000\n").unwrap();
        let cg = Cgroup::new(dir, "/v2".into(), CgroupVersion::V2);
        let act = CpuActuator::open(&cg).unwrap();
        act.set_cpu_quota(CpuQuota::from_cores(2.0, 100000))
            .unwrap();
        assert_eq!(first_line(&cg.file("cpu.max")), "200000 100000");
    }

    #[test]
    fn the_limit_writer_sets_the_quota_and_keeps_the_period() {
        let tmp = tempfile::tempdir().unwrap();
        for (version, file, start) in [
            (CgroupVersion::V1, "cpu.cfs_quota_us", "20000\n"),
            (CgroupVersion::V2, "cpu.max", "20000 50000\n"),
        ] {
            let dir = tmp.path().join(format!("{version}"));
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join(file), start).unwrap();
            fs::write(dir.join("cpu.cfs_period_us"), "50000\n").unwrap();
            let cg = Cgroup::new(dir, "/q".into(), version);
            let w: Box<dyn LimitWriter> = Box::new(CpuActuator::open(&cg).unwrap());
            assert_eq!(w.resource(), Resource::Cpu);
            let done = w.write(30000).unwrap();
            assert!(done > 0);
            // One number: v2 takes it as $MAX and keeps the period.
            assert_eq!(first_line(&cg.file(file)), "30000", "{version}");
            assert_eq!(
                w.current(),
                Setting::Cpu(CpuQuota::Quota {
                    quota_us: 30000,
                    period_us: 50000
                })
            );
        }
    }

    /// An owner's quota (and period) written after open is what a re-read finds: the writer
    /// starts from it, and `holds` tells it from the quota a decision started from.
    #[test]
    fn a_refresh_finds_the_owners_quota_and_period() {
        let tmp = tempfile::tempdir().unwrap();
        for (version, file) in [
            (CgroupVersion::V1, "cpu.cfs_quota_us"),
            (CgroupVersion::V2, "cpu.max"),
        ] {
            let dir = tmp.path().join(format!("r{version}"));
            fs::create_dir(&dir).unwrap();
            let (unlimited, owners) = match version {
                CgroupVersion::V1 => ("-1\n", "50000\n"),
                CgroupVersion::V2 => ("max 100000\n", "50000 200000\n"),
            };
            fs::write(dir.join(file), unlimited).unwrap();
            fs::write(dir.join("cpu.cfs_period_us"), "100000\n").unwrap();
            let cg = Cgroup::new(dir, "/r".into(), version);
            let w = CpuActuator::open(&cg).unwrap();
            assert_eq!(w.current_quota(), CpuQuota::Max);
            assert!(LimitWriter::holds(&w, w.current(), u64::MAX));
            fs::write(cg.file(file), owners).unwrap();
            if version == CgroupVersion::V1 {
                fs::write(cg.file("cpu.cfs_period_us"), "200000\n").unwrap();
            }
            let (before, now) = LimitWriter::refresh(&w).unwrap();
            assert_eq!(before, Setting::Cpu(CpuQuota::Max));
            let owner = CpuQuota::Quota {
                quota_us: 50000,
                period_us: 200000,
            };
            assert_eq!(now, Setting::Cpu(owner), "{version}");
            assert!(!LimitWriter::holds(&w, now, u64::MAX));
            assert!(LimitWriter::holds(&w, now, 50000));
            // The next write keeps the owner's period.
            w.set_quota_us(80000).unwrap();
            assert_eq!(
                w.current_quota(),
                CpuQuota::Quota {
                    quota_us: 80000,
                    period_us: 200000
                }
            );
        }
    }
}
