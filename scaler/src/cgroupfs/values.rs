//! Typed values of cgroup files and their pure parsers (no I/O; tested on real file contents).

use super::CgroupVersion;

/// Values at or above this (2^62) read from a v1 limit file mean "unlimited". v1 prints
/// `PAGE_COUNTER_MAX * PAGE_SIZE`, e.g. 9223372036854771712 on x86_64, rather than a word.
pub const LIMIT_MAX_THRESHOLD: u64 = 1 << 62;

/// A memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// No limit (v2 `max`, v1 `-1` / a huge value).
    Max,
    /// A limit in bytes.
    Bytes(u64),
}

impl Limit {
    /// Parses a limit file's content: `max`, or a byte count (values >= 2^62 are `Max`).
    pub fn parse(s: &str) -> Result<Limit, &'static str> {
        let s = s.trim();
        if s == "max" {
            return Ok(Limit::Max);
        }
        let v: u64 = s
            .parse()
            .map_err(|_| "expected \"max\" or a number of bytes")?;
        Ok(Limit::from_bytes(v))
    }

    /// A byte count, with values >= 2^62 meaning "unlimited".
    pub fn from_bytes(v: u64) -> Limit {
        if v >= LIMIT_MAX_THRESHOLD {
            Limit::Max
        } else {
            Limit::Bytes(v)
        }
    }

    /// The limit in bytes, `None` for [`Limit::Max`].
    pub fn bytes(self) -> Option<u64> {
        match self {
            Limit::Max => None,
            Limit::Bytes(b) => Some(b),
        }
    }

    /// The limit as a number where `Max` is `u64::MAX`, for comparisons.
    pub fn as_u64_saturating(self) -> u64 {
        self.bytes().unwrap_or(u64::MAX)
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Max => f.write_str("max"),
            Limit::Bytes(b) => write!(f, "{b}"),
        }
    }
}

impl PartialOrd for Limit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Limit {
    /// `Bytes(_) < Max`; bytes compare numerically.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (Limit::Max, Limit::Max) => std::cmp::Ordering::Equal,
            (Limit::Max, Limit::Bytes(_)) => std::cmp::Ordering::Greater,
            (Limit::Bytes(_), Limit::Max) => std::cmp::Ordering::Less,
            (Limit::Bytes(a), Limit::Bytes(b)) => a.cmp(b),
        }
    }
}

/// The kernel's smallest accepted CFS quota and period (1 ms).
pub const CPU_MIN_US: u64 = 1_000;
/// The kernel's largest accepted CFS period (1 s).
pub const CPU_MAX_PERIOD_US: u64 = 1_000_000;

/// A CPU bandwidth limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuQuota {
    /// No limit (v2 `max`, v1 `cfs_quota_us = -1`).
    Max,
    /// At most `quota_us` of CPU time per `period_us`.
    Quota {
        /// CPU time allowed per period, in microseconds.
        quota_us: u64,
        /// The enforcement period, in microseconds.
        period_us: u64,
    },
}

/// `max`, or `<quota_us> <period_us>` as v2 `cpu.max` writes it.
impl std::fmt::Display for CpuQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuQuota::Max => f.write_str("max"),
            CpuQuota::Quota {
                quota_us,
                period_us,
            } => write!(f, "{quota_us} {period_us}"),
        }
    }
}

impl CpuQuota {
    /// Parses v2 `cpu.max` (`"max 100000"`, `"20000 100000"`). Returns the quota and the
    /// period (which is meaningful, and kept, even when the quota is `max`).
    pub fn parse_v2(s: &str) -> Result<(CpuQuota, u64), &'static str> {
        let mut it = s.split_whitespace();
        let quota = it.next().ok_or("empty cpu.max")?;
        let period: u64 = it
            .next()
            .ok_or("expected \"<quota|max> <period>\"")?
            .parse()
            .map_err(|_| "period is not a number")?;
        if it.next().is_some() {
            return Err("expected exactly two fields");
        }
        if quota == "max" {
            return Ok((CpuQuota::Max, period));
        }
        let quota_us = quota
            .parse()
            .map_err(|_| "quota is not a number or \"max\"")?;
        Ok((
            CpuQuota::Quota {
                quota_us,
                period_us: period,
            },
            period,
        ))
    }

    /// Builds from v1 `cpu.cfs_quota_us` (negative = unlimited) and `cpu.cfs_period_us`.
    pub fn from_v1(quota_us: i64, period_us: u64) -> CpuQuota {
        match u64::try_from(quota_us) {
            Ok(quota_us) => CpuQuota::Quota {
                quota_us,
                period_us,
            },
            Err(_) => CpuQuota::Max,
        }
    }

    /// The limit in cores (quota / period); `None` for `Max`.
    pub fn cores(self) -> Option<f64> {
        match self {
            CpuQuota::Max => None,
            CpuQuota::Quota {
                quota_us,
                period_us,
            } => Some(quota_us as f64 / period_us.max(1) as f64),
        }
    }

    /// A quota of `cores` CPUs per `period_us`. The quota is rounded to whole microseconds and
    /// raised to the kernel minimum of 1 ms; non-finite or non-positive `cores` give that
    /// minimum too.
    pub fn from_cores(cores: f64, period_us: u64) -> CpuQuota {
        let raw = cores * period_us as f64;
        let quota_us = if raw.is_finite() && raw > 0.0 {
            (raw.round() as u64).max(CPU_MIN_US)
        } else {
            CPU_MIN_US
        };
        CpuQuota::Quota {
            quota_us,
            period_us,
        }
    }
}

/// The subset of `memory.stat` the scaler uses, normalised across versions. v1 values are the
/// hierarchical `total_*` counters when present (they are in hierarchical mode), so both
/// versions describe the cgroup including its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStat {
    /// Anonymous memory (v2 `anon`, v1 `total_rss`).
    pub anon: u64,
    /// Page cache including shmem (v2 `file`, v1 `total_cache`).
    pub file: u64,
    /// Shared memory (v2 `shmem`, v1 `total_shmem`).
    pub shmem: u64,
    /// Inactive anonymous LRU.
    pub inactive_anon: u64,
    /// Active anonymous LRU.
    pub active_anon: u64,
    /// Inactive file LRU: reclaimable first; excluded from the working set.
    pub inactive_file: u64,
    /// Active file LRU.
    pub active_file: u64,
    /// Major page faults (a count, not bytes).
    pub pgmajfault: u64,
    /// Refaults: evicted pages faulted back in (a count of pages; v2 `workingset_refault_anon`
    /// plus `workingset_refault_file`, or `workingset_refault` before 5.9). `None` where the
    /// file has no such key (cgroup v1).
    pub refaults: Option<u64>,
}

impl MemoryStat {
    /// Parses `memory.stat` of the given version. `anon`, `file`, `inactive_file` and
    /// `active_file` (or their v1 equivalents) are required; the rest default to 0.
    pub fn parse(text: &str, version: CgroupVersion) -> Result<MemoryStat, &'static str> {
        // Slots: anon, file, inactive_file, active_file (required), shmem, inactive_anon,
        // active_anon, pgmajfault. For v1 a `total_` key wins over the local one.
        let mut local = [None::<u64>; 11];
        let mut total = [None::<u64>; 11];
        for line in text.lines() {
            let Some((key, value)) = line.split_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            let (key, table) = match version {
                CgroupVersion::V1 => match key.strip_prefix("total_") {
                    Some(k) => (k, &mut total),
                    None => (key, &mut local),
                },
                CgroupVersion::V2 => (key, &mut local),
            };
            let slot = match (version, key) {
                (CgroupVersion::V1, "rss") | (CgroupVersion::V2, "anon") => 0,
                (CgroupVersion::V1, "cache") | (CgroupVersion::V2, "file") => 1,
                (_, "inactive_file") => 2,
                (_, "active_file") => 3,
                (_, "shmem") => 4,
                (_, "inactive_anon") => 5,
                (_, "active_anon") => 6,
                (_, "pgmajfault") => 7,
                (CgroupVersion::V2, "workingset_refault_anon") => 8,
                (CgroupVersion::V2, "workingset_refault_file") => 9,
                (CgroupVersion::V2, "workingset_refault") => 10,
                _ => continue,
            };
            table[slot] = Some(value);
        }
        let v: [Option<u64>; 11] = std::array::from_fn(|i| total[i].or(local[i]));
        if v[..4].iter().any(Option::is_none) {
            return Err(match version {
                CgroupVersion::V1 => "missing one of rss, cache, inactive_file, active_file",
                CgroupVersion::V2 => "missing one of anon, file, inactive_file, active_file",
            });
        }
        let get = |i: usize| v[i].unwrap_or(0);
        Ok(MemoryStat {
            anon: get(0),
            file: get(1),
            inactive_file: get(2),
            active_file: get(3),
            shmem: get(4),
            inactive_anon: get(5),
            active_anon: get(6),
            pgmajfault: get(7),
            refaults: match (v[8], v[9], v[10]) {
                (None, None, old) => old,
                (a, f, _) => Some(a.unwrap_or(0).saturating_add(f.unwrap_or(0))),
            },
        })
    }

    /// The working set as the container runtimes define it: usage minus inactive file pages.
    pub fn working_set(&self, usage: u64) -> u64 {
        usage.saturating_sub(self.inactive_file)
    }
}

/// `cpu.stat` normalised across versions; times in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// Total CPU time used (v2 `usage_usec`; v1 `cpu.stat` has none: see `cpuacct.usage`).
    pub usage_ns: Option<u64>,
    /// Enforcement periods that elapsed with the cgroup runnable.
    pub nr_periods: u64,
    /// Periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Total time throttled (v1 `throttled_time`, v2 `throttled_usec` x 1000).
    pub throttled_ns: u64,
}

impl CpuStat {
    /// Parses `cpu.stat`. Bandwidth counters absent from the file (a v2 cgroup without the cpu
    /// controller, e.g. the root) mean no throttling ever happened there and read as 0.
    pub fn parse(text: &str, version: CgroupVersion) -> Result<CpuStat, &'static str> {
        let mut s = CpuStat::default();
        let mut any = false;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            any = true;
            match (version, key) {
                (_, "nr_periods") => s.nr_periods = value,
                (_, "nr_throttled") => s.nr_throttled = value,
                (CgroupVersion::V1, "throttled_time") => s.throttled_ns = value,
                (CgroupVersion::V2, "throttled_usec") => {
                    s.throttled_ns = value.saturating_mul(1000)
                }
                (CgroupVersion::V2, "usage_usec") => s.usage_ns = Some(value.saturating_mul(1000)),
                _ => {}
            }
        }
        if any {
            Ok(s)
        } else {
            Err("no \"key value\" lines")
        }
    }
}

/// One line of a PSI file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureLine {
    /// Percentage of time stalled over the last 10 s.
    pub avg10: f32,
    /// ... over the last 60 s.
    pub avg60: f32,
    /// ... over the last 300 s.
    pub avg300: f32,
    /// Total stall time in microseconds (monotonic).
    pub total_us: u64,
}

/// A `*.pressure` file: `some` and (where the kernel reports it) `full` stall times.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// Time at least one task was stalled.
    pub some: PressureLine,
    /// Time all non-idle tasks were stalled at once (absent for cpu on old kernels).
    pub full: Option<PressureLine>,
}

impl Pressure {
    /// Parses `some avg10=.. avg60=.. avg300=.. total=..` / `full ...` lines.
    pub fn parse(text: &str) -> Result<Pressure, &'static str> {
        let mut some = None;
        let mut full = None;
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let target = match it.next() {
                Some("some") => &mut some,
                Some("full") => &mut full,
                _ => continue,
            };
            let mut p = PressureLine::default();
            let mut have_total = false;
            for kv in it {
                let Some((k, v)) = kv.split_once('=') else {
                    return Err("expected key=value fields");
                };
                match k {
                    "avg10" => p.avg10 = v.parse().map_err(|_| "bad avg10")?,
                    "avg60" => p.avg60 = v.parse().map_err(|_| "bad avg60")?,
                    "avg300" => p.avg300 = v.parse().map_err(|_| "bad avg300")?,
                    "total" => {
                        p.total_us = v.parse().map_err(|_| "bad total")?;
                        have_total = true;
                    }
                    _ => {}
                }
            }
            if !have_total {
                return Err("missing total=");
            }
            *target = Some(p);
        }
        Ok(Pressure {
            some: some.ok_or("missing the \"some\" line")?,
            full,
        })
    }
}

/// The value of `key` in a flat keyed file (`key value` per line: memory.events,
/// memory.oom_control, cpu.stat, ...).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// memory.stat of a v1 cgroup on the development machine (verbatim).
    pub(crate) const V1_MEMORY_STAT: &str = "cache 65536
rss 1695744
rss_huge 0
shmem 0
mapped_file 0
dirty 28672
writeback 0
workingset_refault_anon 0
workingset_refault_file 11
swap 0
swapcached 0
pgpgin 18779
pgpgout 18349
pgfault 43683
pgmajfault 0
inactive_anon 1576960
active_anon 12288
inactive_file 16384
active_file 49152
unevictable 0
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 65536
total_rss 1695744
total_rss_huge 0
total_shmem 0
total_mapped_file 0
total_dirty 28672
total_writeback 0
total_workingset_refault_anon 0
total_workingset_refault_file 11
total_swap 0
total_swapcached 0
total_pgpgin 18779
total_pgpgout 18349
total_pgfault 43683
total_pgmajfault 0
total_inactive_anon 1576960
total_active_anon 12288
total_inactive_file 16384
total_active_file 49152
total_unevictable 0
";

    /// A v2 memory.stat (6.x kernel, abridged to keep real key order).
    const V2_MEMORY_STAT: &str = "anon 4206592
file 12288000
kernel 1179648
kernel_stack 65536
pagetables 126976
sec_pagetables 0
percpu 0
sock 0
vmalloc 0
shmem 8192
zswap 0
file_mapped 2457600
file_dirty 0
file_writeback 0
anon_thp 0
inactive_anon 4190208
active_anon 24576
inactive_file 9961472
active_file 2326528
unevictable 0
slab_reclaimable 393216
slab_unreclaimable 339968
pgfault 5234
pgmajfault 17
workingset_refault_anon 0
";

    #[test]
    fn limits() {
        assert_eq!(Limit::parse("max\n"), Ok(Limit::Max));
        assert_eq!(Limit::parse("9223372036854771712\n"), Ok(Limit::Max));
        assert_eq!(Limit::parse("4611686018427387904"), Ok(Limit::Max)); // 2^62
        assert_eq!(
            Limit::parse("4611686018427387903"),
            Ok(Limit::Bytes(4611686018427387903))
        );
        assert_eq!(Limit::parse("67108864\n"), Ok(Limit::Bytes(64 << 20)));
        assert!(Limit::parse("-1").is_err());
        assert!(Limit::parse("").is_err());
        assert!(Limit::Bytes(LIMIT_MAX_THRESHOLD - 1) < Limit::Max);
        assert!(Limit::Bytes(1) < Limit::Bytes(2));
        assert_eq!(Limit::Max.to_string(), "max");
    }

    #[test]
    fn cpu_max_v2() {
        assert_eq!(
            CpuQuota::parse_v2("max 100000\n"),
            Ok((CpuQuota::Max, 100000))
        );
        assert_eq!(
            CpuQuota::parse_v2("20000 100000\n"),
            Ok((
                CpuQuota::Quota {
                    quota_us: 20000,
                    period_us: 100000
                },
                100000
            ))
        );
        assert!(CpuQuota::parse_v2("max").is_err());
        assert!(CpuQuota::parse_v2("1 2 3").is_err());
        assert!(CpuQuota::parse_v2("x 100000").is_err());
    }

    #[test]
    fn cpu_quota_v1_and_cores() {
        assert_eq!(CpuQuota::from_v1(-1, 100000), CpuQuota::Max);
        let q = CpuQuota::from_v1(50000, 100000);
        assert_eq!(q.cores(), Some(0.5));
        assert_eq!(CpuQuota::Max.cores(), None);
        assert_eq!(
            CpuQuota::from_cores(1.5, 100000),
            CpuQuota::Quota {
                quota_us: 150000,
                period_us: 100000
            }
        );
        assert_eq!(
            CpuQuota::from_cores(0.0001, 100000),
            CpuQuota::Quota {
                quota_us: CPU_MIN_US,
                period_us: 100000
            }
        );
        assert_eq!(
            CpuQuota::from_cores(f64::NAN, 100000),
            CpuQuota::Quota {
                quota_us: CPU_MIN_US,
                period_us: 100000
            }
        );
    }

    #[test]
    fn memory_stat_v1_uses_total_keys() {
        let s = MemoryStat::parse(V1_MEMORY_STAT, CgroupVersion::V1).unwrap();
        assert_eq!(s.anon, 1695744);
        assert_eq!(s.file, 65536);
        assert_eq!(s.inactive_file, 16384);
        assert_eq!(s.active_file, 49152);
        assert_eq!(s.inactive_anon, 1576960);
        assert_eq!(s.working_set(2842624), 2842624 - 16384);
        assert_eq!(s.working_set(100), 0);
    }

    #[test]
    fn memory_stat_v1_total_wins_over_local() {
        // A parent: local counters small, hierarchical totals larger (and listed later).
        let text = "cache 1\nrss 2\ninactive_file 3\nactive_file 4\ntotal_cache 10\ntotal_rss 20\ntotal_inactive_file 30\ntotal_active_file 40\n";
        let s = MemoryStat::parse(text, CgroupVersion::V1).unwrap();
        assert_eq!(
            (s.file, s.anon, s.inactive_file, s.active_file),
            (10, 20, 30, 40)
        );
        // Totals listed first still win.
        let text = "total_cache 10\ntotal_rss 20\ntotal_inactive_file 30\ntotal_active_file 40\ncache 1\nrss 2\ninactive_file 3\nactive_file 4\n";
        let s = MemoryStat::parse(text, CgroupVersion::V1).unwrap();
        assert_eq!(
            (s.file, s.anon, s.inactive_file, s.active_file),
            (10, 20, 30, 40)
        );
        // No totals (non-hierarchical): local keys.
        let text = "cache 1\nrss 2\ninactive_file 3\nactive_file 4\n";
        let s = MemoryStat::parse(text, CgroupVersion::V1).unwrap();
        assert_eq!(
            (s.file, s.anon, s.inactive_file, s.active_file),
            (1, 2, 3, 4)
        );
    }

    #[test]
    fn memory_stat_v2() {
        let s = MemoryStat::parse(V2_MEMORY_STAT, CgroupVersion::V2).unwrap();
        assert_eq!(s.anon, 4206592);
        assert_eq!(s.file, 12288000);
        assert_eq!(s.shmem, 8192);
        assert_eq!(s.inactive_file, 9961472);
        assert_eq!(s.active_file, 2326528);
        assert_eq!(s.pgmajfault, 17);
        // The v1 text parsed as v2 lacks `anon`/`file`: an error, not zeros.
        assert!(MemoryStat::parse(V1_MEMORY_STAT, CgroupVersion::V2).is_err());
        assert!(MemoryStat::parse("", CgroupVersion::V1).is_err());
    }

    #[test]
    fn cpu_stat_v1_real_sample() {
        let text =
            "nr_periods 12\nnr_throttled 3\nthrottled_time 4567\nnr_bursts 0\nburst_time 0\n";
        let s = CpuStat::parse(text, CgroupVersion::V1).unwrap();
        assert_eq!(
            s,
            CpuStat {
                usage_ns: None,
                nr_periods: 12,
                nr_throttled: 3,
                throttled_ns: 4567
            }
        );
    }

    #[test]
    fn cpu_stat_v2() {
        // The v2 root of the development machine: no bandwidth counters.
        let root = "usage_usec 165285469\nuser_usec 127814285\nsystem_usec 37471183\nnice_usec 0\n";
        let s = CpuStat::parse(root, CgroupVersion::V2).unwrap();
        assert_eq!(s.usage_ns, Some(165285469000));
        assert_eq!((s.nr_periods, s.nr_throttled, s.throttled_ns), (0, 0, 0));
        let child = "usage_usec 1000\nuser_usec 900\nsystem_usec 100\nnr_periods 50\nnr_throttled 7\nthrottled_usec 2500\nnr_bursts 0\nburst_usec 0\n";
        let s = CpuStat::parse(child, CgroupVersion::V2).unwrap();
        assert_eq!(
            s,
            CpuStat {
                usage_ns: Some(1_000_000),
                nr_periods: 50,
                nr_throttled: 7,
                throttled_ns: 2_500_000
            }
        );
        assert!(CpuStat::parse("", CgroupVersion::V2).is_err());
    }

    #[test]
    fn pressure_real_sample() {
        let text = "some avg10=6.37 avg60=1.81 avg300=1.02 total=11591668\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        let p = Pressure::parse(text).unwrap();
        assert_eq!(p.some.total_us, 11591668);
        assert!((p.some.avg10 - 6.37).abs() < 1e-4);
        assert_eq!(p.full.unwrap().total_us, 0);
        let only_some =
            Pressure::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!(only_some.full, None);
        assert!(Pressure::parse("").is_err());
        assert!(Pressure::parse("some avg10=0.00\n").is_err());
    }

    #[test]
    fn flat_keyed_files() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(flat_keyed(oom_control, "oom_kill"), Some(3));
        assert_eq!(
            flat_keyed("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
        let events = "low 0\nhigh 12\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(flat_keyed(events, "oom_kill"), Some(1));
        assert_eq!(flat_keyed(events, "oom"), Some(1));
        assert_eq!(flat_keyed(events, "high"), Some(12));
    }
}
