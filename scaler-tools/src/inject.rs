//! `scaler load-test`: a synthetic event storm through a running agent's real event path.
//! **For load testing only**; the agent never loads any of this.
//!
//! The memory-pressure programs filter and coalesce in the kernel (one wakeup per storm), so
//! real reclaim on a small machine cannot produce more than a few thousand events per second.
//! To load the agent with a storm of 100,000 events per second, this command, in its own
//! process:
//!
//! 1. finds the agent's `EVENTS` ring buffer and `STATS` counters among the BPF maps the agent
//!    process holds (`/proc/PID/fdinfo`), and opens them by id;
//! 2. loads its own copy of the kernel object with those two maps in place of its own (aya's
//!    `map_pin_path`, through a bpffs mounted in a private mount namespace that disappears with
//!    the process, so nothing stays pinned);
//! 3. runs the never-attached `inject_events` raw-tracepoint program (`scaler-ebpf/src/inject.rs`)
//!    through `BPF_PROG_TEST_RUN` at a controlled rate; each run writes a batch of well-formed
//!    `ReclaimBegin` events for real cgroups (their kernfs ids, current usage and limit), with a
//!    wakeup, flagged [`EVENT_FLAG_INJECTED`](scaler_common::EVENT_FLAG_INJECTED).
//!
//! From the ring buffer on, everything is the agent's real path: the engine thread is woken,
//! reads, decodes, asks the decider (which raises, coalesces or reports the cgroup capped, as
//! for any event) and writes limits. Injected events that do not fit into the ring buffer are
//! counted in the agent's own `ringbuf_dropped` counter (so the agent reports them), and in the
//! injector's `INJECT_STATS`, so the injector can say which part was its own.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, MapData, MapError, MapInfo, MapType, PerCpuArray},
    programs::{ProgramError, RawTracePoint, RawTracePointRunOptions, TestRun},
    Btf, Ebpf, EbpfLoader,
};
use scaler_common::{
    inject::{self, InjectTarget},
    names, stat,
};

use scaler::{
    cgroupfs::{CgroupError, Controller, Hierarchy, Limit},
    units::parse_duration,
};

/// Errors of the injector.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("reading the BPF maps of process {pid} ({path}); is it running, and are we root?")]
    Fdinfo {
        pid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "process {pid} holds no BPF map `{name}` of type {kind}: it is not a running scaler \
         agent (or `scaler watch`/`scaler exec`) with its programs loaded"
    )]
    NoAgentMap {
        pid: u32,
        name: &'static str,
        kind: &'static str,
    },
    #[error("opening BPF map id {id} (`{name}`) of the agent (this needs CAP_SYS_ADMIN)")]
    OpenMap {
        id: u32,
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{what} (the injector needs root, CAP_SYS_ADMIN, to share the agent's maps)")]
    Namespace {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning the agent's map `{name}` in the private bpffs at {path}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error(transparent)]
    Object(#[from] scaler::ebpf::EbpfError),
    #[error("loading the injector's copy of the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {what} `{name}` (a build mismatch; rebuild scaler)")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("map `{map}`")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "program `{}` (BPF_PROG_TEST_RUN of raw tracepoints needs Linux 5.10 or later)",
        inject::PROG_INJECT_EVENTS
    )]
    Program {
        #[source]
        source: ProgramError,
    },
    #[error("target cgroups under {under}")]
    Targets {
        under: String,
        #[source]
        source: CgroupError,
    },
    #[error("listing {dir}")]
    ListTargets {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no target cgroups: {under} has no child cgroup whose name starts with {prefix:?}")]
    NoTargets { under: String, prefix: String },
    #[error("{n} target cgroups, at most {} are supported", inject::MAX_TARGETS)]
    TooManyTargets { n: usize },
}

/// `map_id` of a BPF map fd, from its `/proc/PID/fdinfo/FD` text; `None` for other fds.
pub fn fdinfo_map_id(text: &str) -> Option<u32> {
    let mut is_map = false;
    let mut id = None;
    for line in text.lines() {
        let mut kv = line.splitn(2, ':');
        let (k, v) = (kv.next()?.trim(), kv.next().unwrap_or("").trim());
        match k {
            "map_type" => is_map = true,
            "map_id" => id = v.parse().ok(),
            _ => {}
        }
    }
    id.filter(|_| is_map)
}

/// Ids of the BPF maps process `pid` holds open.
pub fn map_ids_of(pid: u32) -> Result<Vec<u32>, InjectError> {
    let dir = PathBuf::from(format!("/proc/{pid}/fdinfo"));
    let err = |path: &Path, source| InjectError::Fdinfo {
        pid,
        path: path.to_path_buf(),
        source,
    };
    let mut ids = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| err(&dir, e))? {
        let e = e.map_err(|e| err(&dir, e))?;
        // An fd closed meanwhile is not an error.
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            ids.extend(fdinfo_map_id(&text));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The agent's map called `name` of type `kind`, opened by id.
fn agent_map(
    pid: u32,
    ids: &[u32],
    name: &'static str,
    kind: MapType,
) -> Result<MapData, InjectError> {
    let id = ids
        .iter()
        .copied()
        .find(|&id| {
            MapInfo::from_id(id).is_ok_and(|i| {
                i.name_as_str() == Some(name) && i.map_type().is_ok_and(|t| t == kind)
            })
        })
        .ok_or(InjectError::NoAgentMap {
            pid,
            name,
            kind: match kind {
                MapType::RingBuf => "ringbuf",
                _ => "percpu_array",
            },
        })?;
    MapData::from_id(id).map_err(|source| InjectError::OpenMap { id, name, source })
}

/// A bpffs mounted on a fresh directory in a private mount namespace of this process: pins
/// made there are seen by nobody else and vanish with the process (or on drop).
struct PrivateBpffs {
    dir: PathBuf,
}

impl PrivateBpffs {
    /// Moves this process (which must not have started threads yet) into a new mount
    /// namespace and mounts a bpffs there.
    fn new() -> Result<Self, InjectError> {
        let ns = |what: &str, source: std::io::Error| InjectError::Namespace {
            what: what.to_string(),
            source,
        };
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| ns("unshare(CLONE_NEWNS)", e.into()))?;
        let root = CString::new("/").expect("no NUL");
        // SAFETY: valid C strings; NULL source, type and data are allowed for a propagation change.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(ns(
                "making mounts private (mount --make-rprivate /)",
                std::io::Error::last_os_error(),
            ));
        }
        let dir = std::env::temp_dir().join(format!(
            "scaler-load-test-{}-{}",
            std::process::id(),
            scaler::ebpf::monotonic_ns()
        ));
        std::fs::create_dir(&dir).map_err(|e| ns(&format!("creating {}", dir.display()), e))?;
        let c_dir = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
            ns(
                "temporary directory",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        })?;
        let (src, fstype, data) = (
            CString::new("bpf").expect("no NUL"),
            CString::new("bpf").expect("no NUL"),
            CString::new("mode=0700").expect("no NUL"),
        );
        // SAFETY: valid C strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                c_dir.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(ns(&format!("mounting a bpffs on {}", dir.display()), e));
        }
        Ok(Self { dir })
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.dir.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Which injected events wake the agent's engine thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wakeup {
    /// Every event (what the reclaim program does for cgroups that keep reclaiming at the same
    /// limit: one wakeup per event once the re-wake interval passed). The worst case.
    #[default]
    Every,
    /// The last event of each run, the others only once 64 KiB are pending (what the programs
    /// do for non-urgent events).
    Batch,
}

impl Wakeup {
    fn arg(self) -> u64 {
        match self {
            Self::Every => inject::WAKE_EVERY,
            Self::Batch => inject::WAKE_BATCH,
        }
    }
}

/// Counters of one storm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InjectCounts {
    /// Injected events that went into the ring buffer.
    pub submitted: u64,
    /// Injected events that did not fit (ring buffer full).
    pub dropped: u64,
}

/// What one storm did (`scaler load-test --json` prints it).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StormReport {
    /// Agent pid.
    pub agent_pid: u32,
    /// Number of target cgroups.
    pub targets: usize,
    /// Requested events per second.
    pub rate_requested: u64,
    /// Events per run.
    pub batch: u64,
    /// Which events woke the agent.
    pub wakeup: Wakeup,
    /// Seconds the storm ran.
    pub seconds: f64,
    /// Program runs (`BPF_PROG_TEST_RUN` calls).
    pub runs: u64,
    /// Events the runs wrote or tried to write.
    pub events: u64,
    /// `events / seconds`.
    pub events_per_sec: f64,
    /// Events the pacing skipped because the injector fell behind by more than 100 ms.
    pub behind: u64,
    /// The injector's own kernel counters.
    pub injected: InjectCounts,
    /// `injected.submitted / seconds`: what reached the agent's ring buffer per second.
    pub submitted_per_sec: f64,
    /// The agent's `STATS` (all events, real and injected) over the storm: submitted.
    pub agent_submitted: u64,
    /// The agent's `STATS` over the storm: dropped (ring buffer full), real and injected.
    pub agent_dropped: u64,
    /// CPU time of the injector process (user + system), seconds.
    pub injector_cpu_s: f64,
    /// The agent exited during the storm.
    pub agent_exited: bool,
}

/// The injector: its copy of the kernel object, sharing the agent's ring buffer and counters.
pub struct Injector {
    ebpf: Ebpf,
    targets: Array<MapData, InjectTarget>,
    stats: PerCpuArray<MapData, u64>,
    agent_stats: PerCpuArray<MapData, u64>,
    /// What each slot of `INJECT_TARGETS` holds.
    slots: Vec<InjectTarget>,
    n_targets: u64,
    next: u64,
    _bpffs: PrivateBpffs,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, InjectError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(InjectError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| InjectError::Map { map: name, source })
}

fn per_cpu_sum(m: &PerCpuArray<MapData, u64>, idx: u32) -> u64 {
    m.get(&idx, 0).map_or(0, |v| v.iter().sum())
}

impl Injector {
    /// Shares the ring buffer and counters of the scaler process `agent_pid` and loads the
    /// injector program. Must run before this process starts any thread (it enters a private
    /// mount namespace).
    pub fn attach(agent_pid: u32) -> Result<Self, InjectError> {
        let object = scaler::ebpf::object()?;
        let ids = map_ids_of(agent_pid)?;
        let events = agent_map(agent_pid, &ids, names::EVENTS, MapType::RingBuf)?;
        let stats = agent_map(agent_pid, &ids, names::STATS, MapType::PerCpuArray)?;
        let bpffs = PrivateBpffs::new()?;
        let (events_pin, stats_pin) = (bpffs.dir.join(names::EVENTS), bpffs.dir.join(names::STATS));
        for (name, map, pin) in [
            (names::EVENTS, &events, &events_pin),
            (names::STATS, &stats, &stats_pin),
        ] {
            map.pin(pin).map_err(|source| InjectError::Pin {
                name,
                path: pin.clone(),
                source,
            })?;
        }
        let btf = Btf::from_sys_fs().ok();
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .map_pin_path(names::EVENTS, events_pin.as_path())
            .map_pin_path(names::STATS, stats_pin.as_path())
            .load(object)
            .map_err(InjectError::Load)?;
        let prog: &mut RawTracePoint = ebpf
            .program_mut(inject::PROG_INJECT_EVENTS)
            .ok_or(InjectError::Missing {
                what: "program",
                name: inject::PROG_INJECT_EVENTS,
            })?
            .try_into()
            .map_err(|source| InjectError::Program { source })?;
        prog.load()
            .map_err(|source| InjectError::Program { source })?;
        let targets = take(&mut ebpf, inject::INJECT_TARGETS)?;
        let own_stats = take(&mut ebpf, inject::INJECT_STATS)?;
        let agent_stats = take(&mut ebpf, names::STATS)?;
        Ok(Self {
            ebpf,
            targets,
            stats: own_stats,
            agent_stats,
            slots: Vec::new(),
            n_targets: 0,
            next: 0,
            _bpffs: bpffs,
        })
    }

    /// Sets the targets (events go to them in turn). Every slot of `INJECT_TARGETS` is
    /// filled, repeating the targets; only slots whose content changes are written.
    pub fn set_targets(&mut self, targets: &[InjectTarget]) -> Result<(), InjectError> {
        if targets.len() > inject::MAX_TARGETS as usize {
            return Err(InjectError::TooManyTargets { n: targets.len() });
        }
        if targets.is_empty() {
            return Ok(());
        }
        self.slots
            .resize(inject::MAX_TARGETS as usize, InjectTarget::default());
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let t = targets[i % targets.len()];
            if *slot == t {
                continue;
            }
            self.targets
                .set(i as u32, t, 0)
                .map_err(|source| InjectError::Map {
                    map: inject::INJECT_TARGETS,
                    source,
                })?;
            *slot = t;
        }
        self.n_targets = targets.len() as u64;
        Ok(())
    }

    /// One run: `n` events (at most `MAX_BATCH`) for the next slots in turn.
    pub fn inject(&mut self, n: u64, wakeup: Wakeup) -> Result<(), InjectError> {
        let n = n.min(inject::MAX_BATCH);
        let prog: &RawTracePoint = self
            .ebpf
            .program(inject::PROG_INJECT_EVENTS)
            .ok_or(InjectError::Missing {
                what: "program",
                name: inject::PROG_INJECT_EVENTS,
            })?
            .try_into()
            .map_err(|source| InjectError::Program { source })?;
        let mut opts = RawTracePointRunOptions::new();
        opts.args[0] = n;
        opts.args[1] = self.next;
        opts.args[2] = wakeup.arg();
        prog.test_run(opts)
            .map_err(|source| InjectError::Program { source })?;
        self.next = (self.next + n) % u64::from(inject::MAX_TARGETS);
        Ok(())
    }

    /// The injector's own counters so far.
    pub fn counts(&self) -> InjectCounts {
        InjectCounts {
            submitted: per_cpu_sum(&self.stats, inject::SUBMITTED),
            dropped: per_cpu_sum(&self.stats, inject::DROPPED),
        }
    }

    /// The agent's kernel counters `(submitted, ringbuf_dropped)`, real and injected events.
    pub fn agent_counts(&self) -> (u64, u64) {
        (
            per_cpu_sum(&self.agent_stats, stat::SUBMITTED),
            per_cpu_sum(&self.agent_stats, stat::RINGBUF_DROPPED),
        )
    }
}

/// Memory cgroups directly under `under` (a path in the memory hierarchy) whose names start
/// with `prefix`, as targets with their current usage and limit.
pub fn targets_under(
    h: &Hierarchy,
    under: &str,
    prefix: &str,
) -> Result<Vec<InjectTarget>, InjectError> {
    let terr = |source| InjectError::Targets {
        under: under.to_string(),
        source,
    };
    let parent = h.cgroup(under).map_err(terr)?;
    let mut out = Vec::new();
    let rd = std::fs::read_dir(parent.dir()).map_err(|source| InjectError::ListTargets {
        dir: parent.dir().to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    for name in names {
        let path = format!("{}/{name}", under.trim_end_matches('/'));
        let Ok(cg) = h.cgroup(&path) else { continue };
        // A cgroup removed meanwhile is no target.
        let (Ok(id), Ok(usage), Ok(limit)) = (cg.id(), cg.memory_usage(), cg.memory_limit()) else {
            continue;
        };
        out.push(InjectTarget {
            cgroup_id: id.0,
            usage,
            limit: match limit {
                Limit::Bytes(b) => b,
                Limit::Max => u64::MAX,
            },
        });
    }
    if out.is_empty() {
        return Err(InjectError::NoTargets {
            under: under.to_string(),
            prefix: prefix.to_string(),
        });
    }
    if out.len() > inject::MAX_TARGETS as usize {
        return Err(InjectError::TooManyTargets { n: out.len() });
    }
    Ok(out)
}

/// The pacing of a storm: how many events are due after `elapsed`, given what was sent.
#[derive(Clone, Copy, Debug)]
struct Pacer {
    rate: u64,
    batch: u64,
    /// Most events sent at once to catch up; further backlog is skipped (and counted).
    max_backlog: u64,
}

impl Pacer {
    fn new(rate: u64, batch: u64) -> Self {
        Self {
            rate,
            batch,
            // 100 ms of events.
            max_backlog: (rate / 10).max(batch),
        }
    }

    /// `(batches to run now, events to skip)` for `sent` events so far, after `elapsed`.
    fn due(&self, elapsed: Duration, sent: u64) -> (u64, u64) {
        let due = (self.rate as u128 * elapsed.as_nanos() / 1_000_000_000) as u64;
        let owed = due.saturating_sub(sent);
        let skip = owed.saturating_sub(self.max_backlog);
        ((owed - skip) / self.batch, skip)
    }

    /// When the next batch is due, counted from the start.
    fn next_at(&self, sent: u64) -> Duration {
        let ns = (sent + self.batch) as u128 * 1_000_000_000 / self.rate.max(1) as u128;
        Duration::from_nanos(ns as u64)
    }
}

fn cpu_seconds() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// Runs a storm of `rate` events per second for `duration`, in runs of `batch` events.
/// `refresh` is polled between runs and may hand over new targets (their current usage and
/// limits). Stops early if process `agent_pid` exits.
#[allow(clippy::too_many_arguments)]
pub fn storm(
    inj: &mut Injector,
    agent_pid: u32,
    rate: u64,
    batch: u64,
    wakeup: Wakeup,
    duration: Duration,
    refresh: &mpsc::Receiver<Vec<InjectTarget>>,
) -> Result<StormReport, InjectError> {
    let batch = batch.clamp(1, inject::MAX_BATCH);
    let pacer = Pacer::new(rate.max(1), batch);
    let (agent_sub0, agent_drop0) = inj.agent_counts();
    let counts0 = inj.counts();
    let cpu0 = cpu_seconds();
    let alive = Path::new("/proc").join(agent_pid.to_string());
    let mut report = StormReport {
        agent_pid,
        targets: inj.n_targets as usize,
        rate_requested: rate,
        batch,
        wakeup,
        ..StormReport::default()
    };
    let start = Instant::now();
    let mut next_check = Duration::from_secs(1);
    let mut sent = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        if elapsed >= next_check {
            next_check += Duration::from_secs(1);
            if !alive.exists() {
                report.agent_exited = true;
                break;
            }
        }
        if let Ok(t) = refresh.try_recv() {
            inj.set_targets(&t)?;
        }
        let (runs, skip) = pacer.due(elapsed, sent);
        sent += skip;
        report.behind += skip;
        if runs == 0 {
            let wait = pacer.next_at(sent).saturating_sub(start.elapsed());
            std::thread::sleep(wait.min(duration.saturating_sub(start.elapsed())));
            continue;
        }
        for _ in 0..runs {
            inj.inject(batch, wakeup)?;
            report.runs += 1;
            report.events += batch;
            sent += batch;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    let c = inj.counts();
    report.injected = InjectCounts {
        submitted: c.submitted - counts0.submitted,
        dropped: c.dropped - counts0.dropped,
    };
    let (agent_sub, agent_drop) = inj.agent_counts();
    report.agent_submitted = agent_sub.saturating_sub(agent_sub0);
    report.agent_dropped = agent_drop.saturating_sub(agent_drop0);
    report.events_per_sec = report.events as f64 / report.seconds.max(1e-9);
    report.submitted_per_sec = report.injected.submitted as f64 / report.seconds.max(1e-9);
    report.injector_cpu_s = cpu_seconds() - cpu0;
    Ok(report)
}

/// `scaler load-test`.
#[derive(Debug, clap::Args)]
pub struct LoadTestArgs {
    /// Pid of the running scaler agent whose ring buffer receives the events.
    #[arg(long, value_name = "PID")]
    pub agent_pid: u32,
    /// Memory-cgroup path (relative to the memory hierarchy root) whose child cgroups are the
    /// targets, e.g. `/load`.
    #[arg(long, value_name = "CGROUP")]
    pub under: String,
    /// Only the children whose name starts with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Events per second.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// How long the storm lasts (e.g. `15s`).
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub duration: Duration,
    /// Events per program run (at most 256).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub batch: u64,
    /// Which injected events wake the agent.
    #[arg(long, value_enum, default_value_t = Wakeup::Every)]
    pub wakeup: Wakeup,
    /// Print the report as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Re-reads the targets' usage and limits every second (a raise by the agent shows in the
/// next events, as it would in the kernel's), until the receiver goes away.
fn refresher(h: Hierarchy, under: String, prefix: String, tx: mpsc::Sender<Vec<InjectTarget>>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Ok(t) = targets_under(&h, &under, &prefix) else {
            continue;
        };
        if tx.send(t).is_err() {
            return;
        }
    }
}

/// `scaler load-test`: see the module documentation.
pub fn run(args: LoadTestArgs) -> anyhow::Result<ExitCode> {
    let h = Hierarchy::discover(Path::new("/"), Controller::Memory)?;
    let targets = targets_under(&h, &args.under, &args.prefix)?;
    // Before any thread starts: this enters a private mount namespace.
    let mut inj = Injector::attach(args.agent_pid).context("attaching to the agent")?;
    inj.set_targets(&targets)?;
    tracing::warn!(
        agent_pid = args.agent_pid,
        targets = targets.len(),
        rate = args.rate,
        duration = %scaler::units::format_duration(args.duration),
        "LOAD TEST: injecting synthetic events into the agent's ring buffer"
    );
    let (tx, rx) = mpsc::channel();
    {
        let (h, under, prefix) = (h.clone(), args.under.clone(), args.prefix.clone());
        std::thread::Builder::new()
            .name("targets".into())
            .spawn(move || refresher(h, under, prefix, tx))?;
    }
    let r = storm(
        &mut inj,
        args.agent_pid,
        args.rate,
        args.batch,
        args.wakeup,
        args.duration,
        &rx,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    tracing::info!(
        seconds = format!("{:.1}", r.seconds),
        events = r.events,
        events_per_sec = format!("{:.0}", r.events_per_sec),
        submitted = r.injected.submitted,
        dropped = r.injected.dropped,
        behind = r.behind,
        agent_submitted = r.agent_submitted,
        agent_dropped = r.agent_dropped,
        injector_cpu_s = format!("{:.2}", r.injector_cpu_s),
        "load test done"
    );
    if r.agent_exited {
        anyhow::bail!("the agent (pid {}) exited during the storm", args.agent_pid);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_map_gives_its_id_and_other_fds_none() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t27\n\
                   key_size:\t0\nvalue_size:\t0\nmax_entries:\t2097152\nmap_flags:\t0x0\n\
                   map_extra:\t0x0\nmemlock:\t2105600\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(fdinfo_map_id(map), Some(42));
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_jited:\t1\nprog_id:\t7\n";
        assert_eq!(fdinfo_map_id(prog), None);
        let file = "pos:\t0\nflags:\t0100000\nmnt_id:\t25\nino:\t3\n";
        assert_eq!(fdinfo_map_id(file), None);
    }

    #[test]
    fn the_pacer_keeps_the_rate_and_skips_backlog_beyond_100ms() {
        let p = Pacer::new(100_000, 64);
        // Nothing due at the start; one batch after 640 us.
        assert_eq!(p.due(Duration::ZERO, 0), (0, 0));
        assert_eq!(p.due(Duration::from_micros(640), 0), (1, 0));
        assert_eq!(p.next_at(0), Duration::from_micros(640));
        // 10 ms late: 1,000 events owed, 15 batches now (the rest with the next call).
        assert_eq!(p.due(Duration::from_millis(10), 0), (15, 0));
        // A 1 s stall: only 100 ms are caught up, the rest is skipped and counted.
        let (runs, skip) = p.due(Duration::from_secs(1), 0);
        assert_eq!(skip, 90_000);
        assert_eq!(runs, 10_000 / 64);
        // Over a second of steady pacing, the events sent are the rate.
        let mut sent = 0;
        for us in (0..=1_000_000u64).step_by(100) {
            let (runs, skip) = p.due(Duration::from_micros(us), sent);
            sent += skip + runs * 64;
        }
        assert!((99_900..=100_000).contains(&sent), "{sent}");
    }
}
