//! `scaler agent`: the node agent, and `scaler check-config`.
//!
//! The built-in default configuration observes every cgroup (reclaim and OOM events of all of
//! them are counted and logged) and manages none: only cgroups that a `[[policy]]` selects
//! (by path glob, optionally requiring an opt-in xattr) have their limits changed. So running
//! it with no flags is safe on any host.
//!
//! Operating it:
//! - metrics ([`metrics`]): Prometheus/OpenMetrics on `agent.metrics_addr` (`GET /metrics`);
//! - state ([`state`]): each managed cgroup's original limit and the agent's changes, in
//!   `agent.state_file`, so that a restart (also after SIGKILL) reconciles instead of starting
//!   blind; `agent.restore_on_exit` puts the originals back on SIGTERM/SIGINT;
//! - discovery ([`discovery`]): inotify on the cgroupfs tree, plus a periodic rescan;
//! - status ([`status`]): `scaler status` reads the agent over `agent.status_socket`.

#[cfg(test)]
mod deploy_tests;
pub mod discovery;
pub mod metrics;
pub mod state;
pub mod status;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, TryRecvError},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use scaler_common::{EventKind, WatchConfig, WATCH_MEMORY, WATCH_USAGE_HIGH};

use self::{
    discovery::{TreeChange, TreeWatcher},
    metrics::{
        limit_value, quota_value, CgroupLabels, CgroupResourceLabels, Metrics, ProgramLabels,
        ResultLabels,
    },
    state::{plan_restore, Observed, Restore, StateFile, StoredLimit},
    status::{ActionStatus, CounterStatus, ManagedCpuStatus, ManagedStatus, Recent, StatusDoc},
};
use crate::{
    actuator::{CpuActuator, MemoryActuator, MemoryOptions},
    cgroupfs::{CgroupIndex, Controller, CpuQuota, Hierarchy, Limit},
    config::{Config, ConfigError, NodeInfo, PolicyConfig},
    decider::{CgId, CpuPolicy, CpuSignal, MemoryPolicy, MemorySignal, Resource, WriteOutcome},
    ebpf::{Pipeline, PipelineOptions},
    engine::{
        cpu_sample, Command, CpuManageRequest, CpuSnapshot, Engine, EngineConfig, EngineStats,
        ManageRequest, ManagedSnapshot, Record,
    },
    k8s::PodCgroup,
};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Configuration file (TOML; see config/scaler.example.toml). Without it the built-in
    /// default is used: observe every cgroup, manage none.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log every decision, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The configuration file to validate.
    pub file: PathBuf,
}

/// Exit status for an invalid configuration.
pub const EXIT_BAD_CONFIG: u8 = 2;

fn load_config(path: Option<&Path>, node: &NodeInfo) -> Result<Config, ConfigError> {
    let c = Config::load(path)?;
    c.validate(node)?;
    Ok(c)
}

pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let node = NodeInfo::detect().context("reading /proc/meminfo")?;
    match load_config(Some(&args.file), &node) {
        Ok(c) => {
            println!(
                "{}: OK ({} {}, memory budget {}, cpu budget {:.2} cores)",
                args.file.display(),
                c.policies.len(),
                if c.policies.len() == 1 {
                    "policy"
                } else {
                    "policies"
                },
                crate::units::format_size(c.memory_budget(&node)),
                c.cpu_budget(&node)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("scaler: {e}");
            Ok(ExitCode::from(EXIT_BAD_CONFIG))
        }
    }
}

/// What the agent knows about one managed cgroup.
#[derive(Clone, Debug)]
pub struct ManagedCgroup {
    pub path: String,
    pub policy: String,
    pub memory: MemoryPolicy,
    /// The memory limit before the agent first changed it (from the state file if the agent
    /// managed this cgroup before a restart).
    pub original: Limit,
    /// The pod and container, for Kubernetes cgroups.
    pub pod: Option<PodCgroup>,
    /// Its metric labels.
    pub labels: CgroupLabels,
}

/// What the agent knows about one cgroup whose CPU quota it manages. On cgroup v1 this is a
/// cgroup of the cpu hierarchy: a different directory, with a different id, from the memory
/// cgroup of the same workload (the path relative to the hierarchy root is usually the same).
#[derive(Clone, Debug)]
pub struct ManagedCpu {
    /// Path relative to the cpu hierarchy root.
    pub path: String,
    pub policy: String,
    pub cpu: CpuPolicy,
    /// The quota before the agent first changed it (from the state file after a restart).
    pub original: CpuQuota,
    /// The CFS period in force (µs), which the decider's quotas are expressed in.
    pub period_us: u64,
    /// Its metric labels.
    pub labels: CgroupLabels,
}

/// Counters the agent keeps from the engine's records.
#[derive(Debug, Default)]
pub struct AgentCounters {
    pub events_by_kind: [AtomicU64; 8],
    pub actions: AtomicU64,
    pub failed_actions: AtomicU64,
}

/// Settings the status document reports (they may change on reload).
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub dry_run: bool,
    pub restore_on_exit: bool,
    pub memory_hierarchy: String,
    pub state_file: String,
    pub metrics_addr: Option<String>,
}

/// Agent state shared between its threads.
pub struct AgentState {
    pub managed: Mutex<HashMap<CgId, ManagedCgroup>>,
    /// Cgroups whose CPU quota is managed, by their id in the cpu hierarchy.
    pub cpu_managed: Mutex<HashMap<CgId, ManagedCpu>>,
    pub counters: AgentCounters,
    pub metrics: Arc<Metrics>,
    pub recent: Mutex<Recent>,
    pub state: Mutex<StateFile>,
    pub info: Mutex<AgentInfo>,
    pub started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking thread cannot leave these in a state worse than losing them: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentState {
    /// Writes the state file if it changed; a failure is logged (the agent keeps running).
    fn save_state(&self) {
        let mut st = lock(&self.state);
        if let Err(e) = st.save_if_dirty() {
            tracing::error!("{e}");
        }
    }
}

/// What the main loop reacts to.
enum AgentMsg {
    Stop(&'static str),
    Reload,
    Tree(Vec<TreeChange>),
}

fn signal_thread(tx: Sender<AgentMsg>) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let msg = match set.wait() {
                Ok(Signal::SIGHUP) => AgentMsg::Reload,
                Ok(Signal::SIGINT) => AgentMsg::Stop("SIGINT"),
                Ok(_) => AgentMsg::Stop("SIGTERM"),
                Err(_) => return,
            };
            if tx.send(msg).is_err() {
                return;
            }
        })?;
    Ok(())
}

/// Watches the cgroup tree with inotify from a background thread (best effort: without it,
/// the periodic rescan still finds new cgroups).
fn discovery_thread(mount: PathBuf, tx: Sender<AgentMsg>) {
    let mut w = match TreeWatcher::new(&mount) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(mount = %mount.display(), "inotify unavailable ({e}); new cgroups are found by the periodic rescan only");
            return;
        }
    };
    tracing::debug!(dirs = w.len(), "watching the cgroup tree");
    let spawned = std::thread::Builder::new()
        .name("discovery".into())
        .spawn(move || loop {
            match w.wait() {
                Ok(ch) if ch.is_empty() => {}
                Ok(ch) => {
                    if tx.send(AgentMsg::Tree(ch)).is_err() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(
                        "inotify read failed ({e}); falling back to the periodic rescan"
                    );
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("discovery thread: {e}");
    }
}

/// The cpu controller's side of the agent, once a policy manages CPU.
struct CpuSide {
    hierarchy: Hierarchy,
    /// Its own index when the cpu hierarchy is a different tree from the memory one (cgroup
    /// v1); `None` on a unified (v2) tree, where the memory index serves both.
    index: Option<CgroupIndex>,
}

struct Agent {
    config: Config,
    node: NodeInfo,
    hierarchy: Hierarchy,
    index: CgroupIndex,
    /// `None` until a policy manages CPU (or when the cpu controller is not available).
    cpu: Option<CpuSide>,
    /// The cpu hierarchy was looked for and not found (warned once).
    cpu_unavailable: bool,
    pipeline: Pipeline,
    engine: Engine,
    state: Arc<AgentState>,
}

/// Cgroups of `index` that a policy selects, with what `pick` takes from the policy, parents
/// before children (so that each finds its managed ancestor).
fn selected<P>(
    config: &Config,
    hierarchy: &Hierarchy,
    index: &CgroupIndex,
    pick: impl Fn(&PolicyConfig) -> Option<P>,
) -> Vec<(CgId, String, String, P)> {
    let needs_xattr = config.policies.iter().any(|p| p.require_xattr);
    let xattr_name = &config.agent.opt_in_xattr;
    let mut wanted = Vec::new();
    for (id, path) in index.iter() {
        let xattr = if needs_xattr {
            hierarchy
                .cgroup(path)
                .ok()
                .and_then(|c| c.xattr(xattr_name).ok().flatten())
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        } else {
            None
        };
        if let Some(p) = config.policy_for(path, xattr.as_deref()) {
            if let Some(v) = pick(p) {
                wanted.push((id.0, path.to_string(), p.name.clone(), v));
            }
        }
    }
    wanted.sort_by_key(|(_, path, _, _)| path.matches('/').count());
    wanted
}

impl Agent {
    /// Brings the managed sets (memory, then CPU) in line with the configuration and the
    /// cgroups that exist: new matching cgroups are managed, vanished or no-longer-selected
    /// ones forgotten.
    fn reconcile(&mut self) {
        self.reconcile_memory();
        self.reconcile_cpu();
        self.state.save_state();
    }

    fn reconcile_memory(&mut self) {
        if let Err(e) = self.index.rescan() {
            tracing::warn!("rescanning {}: {e}", self.hierarchy.mount.display());
            return;
        }
        let wanted = selected(&self.config, &self.hierarchy, &self.index, |p| {
            p.memory_policy()
        });
        let wanted_ids: HashSet<CgId> = wanted.iter().map(|w| w.0).collect();
        let mut managed = lock(&self.state.managed);
        let metrics = &self.state.metrics;
        let gone: Vec<CgId> = managed
            .keys()
            .filter(|id| !wanted_ids.contains(id))
            .copied()
            .collect();
        for id in gone {
            let m = managed.remove(&id).expect("listed");
            tracing::info!(cgroup = %m.path, "no longer managed (removed or deselected)");
            self.engine.send(Command::Forget(id));
            let _ = self.pipeline.unwatch(id);
            lock(&self.state.state).forget(&m.path);
            metrics.forget_memory(&m.labels);
        }
        let mut path_to_id: HashMap<String, CgId> = managed
            .iter()
            .map(|(id, m)| (m.path.clone(), *id))
            .collect();
        for (id, path, policy_name, policy) in wanted {
            if let Some(m) = managed.get(&id) {
                if m.memory == policy && m.policy == policy_name {
                    continue;
                }
            }
            let cg = match self.hierarchy.cgroup(&path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(cgroup = %path, "{e}");
                    continue;
                }
            };
            let actuator = match MemoryActuator::open(&cg, MemoryOptions::default()) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cgroup = %path, "cannot manage: {e}");
                    continue;
                }
            };
            let current = actuator.current_limit();
            let original = lock(&self.state.state).manage(&path, id, &policy_name, current);
            let parent = ancestors(&path).find_map(|a| path_to_id.get(a).copied());
            let usage = cg.memory_usage().unwrap_or(0);
            self.engine.send(Command::Manage(Box::new(ManageRequest {
                id,
                path: Arc::from(path.as_str()),
                parent,
                policy,
                actuator,
                usage,
            })));
            let watch = WatchConfig {
                flags: WATCH_MEMORY | WATCH_USAGE_HIGH,
                _pad: 0,
                headroom_bytes: policy.headroom,
            };
            if let Err(e) = self.pipeline.watch(id, watch) {
                tracing::warn!(cgroup = %path, "cannot watch: {e}");
            }
            let pod = crate::k8s::parse(&path);
            let labels = CgroupLabels::new(&path, &policy_name);
            if let Some(old) = managed.get(&id).map(|m| m.labels.clone()) {
                metrics.forget_memory(&old);
            }
            metrics
                .original_limit_bytes
                .get_or_create(&labels)
                .set(limit_value(original));
            metrics
                .limit_bytes
                .get_or_create(&labels)
                .set(limit_value(current));
            tracing::info!(
                cgroup = %path,
                policy = %policy_name,
                pod = pod.as_ref().map(|p| tracing::field::display(p.display_name())),
                min = policy.min,
                max = policy.max,
                limit = %current,
                original = %original,
                "managing"
            );
            path_to_id.insert(path.clone(), id);
            managed.insert(
                id,
                ManagedCgroup {
                    path,
                    policy: policy_name,
                    memory: policy,
                    original,
                    pod,
                    labels,
                },
            );
        }
        metrics.managed.set(managed.len() as i64);
    }

    /// Finds the cpu hierarchy the first time a policy manages CPU.
    fn cpu_side(&mut self) -> Option<&mut CpuSide> {
        if self.cpu.is_none() && !self.cpu_unavailable {
            match Hierarchy::discover(Path::new("/"), Controller::Cpu) {
                Ok(h) => {
                    let index =
                        (!h.same_tree(&self.hierarchy)).then(|| CgroupIndex::new(h.clone()));
                    tracing::info!(cpu = %format!("{} at {}", h.version, h.mount.display()), "managing CPU quotas");
                    self.cpu = Some(CpuSide {
                        hierarchy: h,
                        index,
                    });
                }
                Err(e) => {
                    tracing::error!(
                        "a [policy.cpu] is configured but the cpu controller is not available \
                         ({e}); CPU quotas are not managed (mount the cpu controller: cgroup v2 \
                         with +cpu in cgroup.subtree_control, or the v1 cpu hierarchy)"
                    );
                    self.cpu_unavailable = true;
                }
            }
        }
        self.cpu.as_mut()
    }

    fn reconcile_cpu(&mut self) {
        let wants = self.config.manages_cpu();
        if !wants && lock(&self.state.cpu_managed).is_empty() {
            return;
        }
        if wants && self.cpu_side().is_none() {
            return;
        }
        let node = self.node;
        let mut wanted = Vec::new();
        if wants {
            let (config, memory_h, memory_index) = (&self.config, &self.hierarchy, &self.index);
            let side = self.cpu.as_mut().expect("found above");
            let (h, index) = match &mut side.index {
                Some(i) => {
                    if let Err(e) = i.rescan() {
                        tracing::warn!("rescanning {}: {e}", side.hierarchy.mount.display());
                        return;
                    }
                    (&side.hierarchy, &*i)
                }
                None => (memory_h, memory_index),
            };
            wanted = selected(config, h, index, |p| p.cpu_policy(&node));
        }
        let Some(h) = self.cpu.as_ref().map(|c| c.hierarchy.clone()) else {
            return;
        };
        let wanted_ids: HashSet<CgId> = wanted.iter().map(|w| w.0).collect();
        let mut managed = lock(&self.state.cpu_managed);
        let metrics = &self.state.metrics;
        let gone: Vec<CgId> = managed
            .keys()
            .filter(|id| !wanted_ids.contains(id))
            .copied()
            .collect();
        for id in gone {
            let m = managed.remove(&id).expect("listed");
            tracing::info!(cgroup = %m.path, "CPU quota no longer managed (removed or deselected)");
            self.engine.send(Command::ForgetCpu(id));
            if self.pipeline.cpu_enabled() {
                let _ = self.pipeline.unwatch_cpu(id);
            }
            lock(&self.state.state).cpu_mut().forget(&m.path);
            metrics.forget_cpu(&m.labels);
        }
        let mut path_to_id: HashMap<String, CgId> = managed
            .iter()
            .map(|(id, m)| (m.path.clone(), *id))
            .collect();
        for (id, path, policy_name, policy) in wanted {
            if let Some(m) = managed.get(&id) {
                if m.cpu == policy && m.policy == policy_name {
                    continue;
                }
            }
            let cg = match h.cgroup(&path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(cgroup = %path, "{e}");
                    continue;
                }
            };
            let actuator = match CpuActuator::open(&cg) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cgroup = %path, "cannot manage the CPU quota: {e}");
                    continue;
                }
            };
            let current = actuator.current_quota();
            let period_us = cg.cpu_max().map_or(DEFAULT_CFS_PERIOD_US, |(_, p)| p);
            let original: CpuQuota = lock(&self.state.state)
                .cpu_mut()
                .manage(&path, id, &policy_name, current.into())
                .into();
            let parent = ancestors(&path).find_map(|a| path_to_id.get(a).copied());
            self.engine
                .send(Command::ManageCpu(Box::new(CpuManageRequest {
                    id,
                    path: Arc::from(path.as_str()),
                    parent,
                    policy,
                    actuator,
                })));
            if self.pipeline.cpu_enabled() {
                let watch = crate::cmd::watch::cpu_watch(
                    policy.quota_near_fraction,
                    Duration::from_micros(policy.runq_latency_target_us),
                );
                if let Err(e) = self.pipeline.watch_cpu(id, watch) {
                    tracing::warn!(cgroup = %path, "cannot watch CPU: {e}");
                }
            }
            let labels = CgroupLabels::new(&path, &policy_name);
            if let Some(old) = managed.get(&id).map(|m| m.labels.clone()) {
                metrics.forget_cpu(&old);
            }
            metrics
                .cpu_original_quota_cores
                .get_or_create(&labels)
                .set(quota_value(original));
            metrics
                .cpu_quota_cores
                .get_or_create(&labels)
                .set(quota_value(current));
            tracing::info!(
                cgroup = %path,
                policy = %policy_name,
                min_cores = policy.min_cores,
                max_cores = policy.max_cores,
                quota = %current,
                original = %original,
                kernel_events = self.pipeline.cpu_enabled(),
                "managing the CPU quota"
            );
            path_to_id.insert(path.clone(), id);
            managed.insert(
                id,
                ManagedCpu {
                    path,
                    policy: policy_name,
                    cpu: policy,
                    original,
                    period_us,
                    labels,
                },
            );
        }
        metrics.managed_cpu.set(managed.len() as i64);
    }

    /// Drops state records of cgroups that are not managed after the first reconcile: those
    /// that vanished while the agent was down, or that the configuration no longer selects.
    fn drop_stale_state(&self) {
        let managed: HashSet<String> = lock(&self.state.managed)
            .values()
            .map(|m| m.path.clone())
            .collect();
        let cpu_managed: HashSet<String> = lock(&self.state.cpu_managed)
            .values()
            .map(|m| m.path.clone())
            .collect();
        let cpu_dropped = lock(&self.state.state)
            .cpu_mut()
            .retain(|p, _| cpu_managed.contains(p));
        for (path, r) in cpu_dropped {
            tracing::info!(
                cgroup = %path,
                original = %CpuQuota::from(r.original),
                current = %CpuQuota::from(r.current),
                "state file: CPU quota no longer managed (cgroup gone or deselected); it stays as the agent left it"
            );
        }
        let dropped = lock(&self.state.state).retain(|p, _| managed.contains(p));
        for (path, r) in dropped {
            let exists = self.hierarchy.cgroup(&path).is_ok_and(|c| c.exists());
            if exists {
                tracing::warn!(
                    cgroup = %path,
                    original = %Limit::from(r.original),
                    current = %Limit::from(r.current),
                    "state file: no longer selected by the configuration; its limit stays as the agent left it"
                );
            } else {
                tracing::info!(cgroup = %path, "state file: cgroup vanished while the agent was down; forgotten");
            }
        }
        self.state.save_state();
    }

    /// The slow path: a sample of each managed cgroup for scale-down and rate estimation.
    ///
    /// Also notices limits changed outside the agent (see [`StateFile::observe`]): such a
    /// limit becomes the cgroup's original.
    fn sample(&self) {
        let mut managed = lock(&self.state.managed);
        for (id, m) in managed.iter_mut() {
            let Ok(cg) = self.hierarchy.cgroup(&m.path) else {
                continue;
            };
            let Some(s) = crate::cmd::exec::sample(&cg) else {
                continue;
            };
            if let MemorySignal::Sample { limit, .. } = s {
                let observed = Limit::from_bytes(limit);
                if let Observed::Adopted { previous } =
                    lock(&self.state.state).observe(&m.path, observed)
                {
                    tracing::info!(
                        cgroup = %m.path,
                        previous = %previous,
                        original = %observed,
                        "limit changed outside the agent: adopted as the original"
                    );
                    m.original = observed;
                    self.state
                        .metrics
                        .original_limit_bytes
                        .get_or_create(&m.labels)
                        .set(limit_value(observed));
                }
            }
            self.engine.send(Command::Sample(*id, s));
        }
        drop(managed);
        self.sample_cpu();
        self.state.save_state();
    }

    /// The CPU slow path: a `cpu.stat` + quota sample of each managed cpu cgroup (usage for
    /// scale-down, throttling as a pressure signal), and quotas changed outside the agent.
    fn sample_cpu(&self) {
        let Some(side) = &self.cpu else {
            return;
        };
        let mut managed = lock(&self.state.cpu_managed);
        for (id, m) in managed.iter_mut() {
            let Ok(cg) = side.hierarchy.cgroup(&m.path) else {
                continue;
            };
            let Some(mut s) = cpu_sample(&cg) else {
                continue;
            };
            if let CpuSignal::Sample {
                usage_ns: u @ 0, ..
            } = &mut s
            {
                // v1 keeps CPU time in cpuacct, often not mounted with cpu: use what the
                // kernel programs accounted instead.
                if let Some(st) = self.pipeline.cpu_state(*id) {
                    *u = st.total_ns;
                }
            }
            if let CpuSignal::Sample {
                quota_us,
                period_us,
                throttled_ns,
                ..
            } = s
            {
                m.period_us = period_us;
                let observed = quota_us.map_or(CpuQuota::Max, |quota_us| CpuQuota::Quota {
                    quota_us,
                    period_us,
                });
                if let Observed::Adopted { previous } = lock(&self.state.state)
                    .cpu_mut()
                    .observe(&m.path, observed.into())
                {
                    tracing::info!(
                        cgroup = %m.path,
                        previous = %CpuQuota::from(previous),
                        original = %observed,
                        "CPU quota changed outside the agent: adopted as the original"
                    );
                    m.original = observed;
                    self.state
                        .metrics
                        .cpu_original_quota_cores
                        .get_or_create(&m.labels)
                        .set(quota_value(observed));
                }
                self.state
                    .metrics
                    .cpu_throttled_seconds
                    .get_or_create(&m.labels)
                    .set(throttled_ns as f64 / 1e9);
            }
            self.engine.send(Command::CpuSample(*id, s));
        }
    }

    /// Refreshes the metrics kept by others: per-cgroup limits and usage (engine snapshot),
    /// kernel and engine counters, BPF program statistics.
    fn refresh_metrics(&self) {
        let m = &self.state.metrics;
        let snapshot = self.engine.snapshot();
        {
            let managed = lock(&self.state.managed);
            for s in &snapshot {
                let Some(c) = managed.get(&s.id) else {
                    continue;
                };
                if let Some(l) = s.limit {
                    m.limit_bytes
                        .get_or_create(&c.labels)
                        .set(limit_value(Limit::from_bytes(l)));
                }
                if let Some(u) = s.usage {
                    m.usage_bytes.get_or_create(&c.labels).set(u as i64);
                }
                if let Some(u) = s.utilization {
                    m.utilization
                        .get_or_create(&CgroupResourceLabels {
                            cgroup: c.labels.clone(),
                            resource: "memory",
                        })
                        .set(u);
                }
            }
        }
        if self.cpu.is_some() {
            let snapshot = self.engine.cpu_snapshot();
            let managed = lock(&self.state.cpu_managed);
            for s in &snapshot {
                let Some(c) = managed.get(&s.id) else {
                    continue;
                };
                m.cpu_quota_cores
                    .get_or_create(&c.labels)
                    .set(s.quota_cores.unwrap_or(f64::INFINITY));
                if let Some(u) = s.usage_cores {
                    m.cpu_usage_cores.get_or_create(&c.labels).set(u);
                }
                if let Some(u) = s.utilization {
                    m.utilization
                        .get_or_create(&CgroupResourceLabels {
                            cgroup: c.labels.clone(),
                            resource: "cpu",
                        })
                        .set(u);
                }
            }
        }
        let k = self.pipeline.kernel_stats();
        Metrics::set_total(&m.ringbuf_dropped, k.ringbuf_dropped);
        let e: &EngineStats = self.engine.stats();
        Metrics::set_total(
            &m.ringbuf_records,
            e.loop_stats.records.load(Ordering::Relaxed),
        );
        Metrics::set_total(
            &m.decode_errors,
            e.loop_stats.decode_errors.load(Ordering::Relaxed),
        );
        Metrics::set_total(
            &m.records_dropped,
            e.records_dropped.load(Ordering::Relaxed),
        );
        Metrics::set_total(&m.failed_writes, e.failed_writes.load(Ordering::Relaxed));
        Metrics::set_total(
            &m.unmanaged_ancestor_binds,
            e.unmanaged_ancestor_binds.load(Ordering::Relaxed),
        );
        for (program, (run_time, runs)) in self.pipeline.program_stats() {
            let l = ProgramLabels { program };
            Metrics::set_total_f64(&m.bpf_run_seconds.get_or_create(&l), run_time.as_secs_f64());
            Metrics::set_total(&m.bpf_runs.get_or_create(&l), runs);
        }
    }

    fn reload(&mut self, path: Option<&Path>) {
        let reloads = &self.state.metrics.reloads;
        match load_config(path, &self.node) {
            Ok(mut c) => {
                c.agent.dry_run = self.config.agent.dry_run;
                for (key, old, new) in [
                    (
                        "metrics_addr",
                        self.config.agent.metrics_addr.to_string(),
                        c.agent.metrics_addr.to_string(),
                    ),
                    (
                        "metrics",
                        self.config.agent.metrics.to_string(),
                        c.agent.metrics.to_string(),
                    ),
                    (
                        "status_socket",
                        self.config.agent.status_socket.display().to_string(),
                        c.agent.status_socket.display().to_string(),
                    ),
                    (
                        "state_file",
                        self.config.agent.state_file.display().to_string(),
                        c.agent.state_file.display().to_string(),
                    ),
                ] {
                    if old != new {
                        tracing::warn!("agent.{key} changed from {old} to {new}: takes effect at the next start");
                    }
                }
                self.engine
                    .send(Command::SetBudget(c.memory_budget(&self.node)));
                self.engine
                    .send(Command::SetCpuBudget(c.cpu_budget(&self.node)));
                if c.manages_cpu() && !self.pipeline.cpu_enabled() {
                    tracing::warn!(
                        "a [policy.cpu] is configured but the scheduler programs were not \
                         attached at start: CPU quotas are managed from cpu.stat samples \
                         (every agent.sample_interval) until the agent is restarted"
                    );
                }
                lock(&self.state.info).restore_on_exit = c.agent.restore_on_exit;
                // Keep the addresses the agent actually uses.
                c.agent.metrics = self.config.agent.metrics;
                c.agent.metrics_addr = self.config.agent.metrics_addr;
                c.agent.status_socket = self.config.agent.status_socket.clone();
                c.agent.state_file = self.config.agent.state_file.clone();
                self.config = c;
                reloads.get_or_create(&ResultLabels { result: "ok" }).inc();
                tracing::info!(
                    policies = self.config.policies.len(),
                    "configuration reloaded"
                );
                self.reconcile();
            }
            Err(e) => {
                reloads
                    .get_or_create(&ResultLabels { result: "rejected" })
                    .inc();
                tracing::error!("configuration reload rejected, the old one keeps running: {e}");
            }
        }
    }
}

/// `/a/b/c` -> `/a/b`, `/a`, `/`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut cur = Some(path);
    std::iter::from_fn(move || {
        let p = cur?;
        let parent = match p.rfind('/') {
            Some(0) if p.len() > 1 => "/",
            Some(0) | None => {
                cur = None;
                return None;
            }
            Some(i) => &p[..i],
        };
        cur = Some(parent);
        Some(parent)
    })
}

/// At shutdown with `restore_on_exit`: writes each changed cgroup's original CPU quota back
/// (a quota can always be lowered: the cost is throttling, not a kill). Restored cgroups leave
/// the state file; the others stay.
fn restore_cpu_originals(hierarchy: &Hierarchy, agent_state: &AgentState) {
    let records: Vec<(String, state::CpuRecord)> = lock(&agent_state.state)
        .cpu()
        .records()
        .iter()
        .map(|(p, r)| (p.clone(), r.clone()))
        .collect();
    for (path, r) in records {
        let cg = match hierarchy.cgroup(&path) {
            Ok(c) if c.exists() && c.id().is_ok_and(|id| id.0 == r.id) => c,
            _ => {
                lock(&agent_state.state).cpu_mut().forget(&path);
                continue;
            }
        };
        let original = CpuQuota::from(r.original);
        let res = CpuActuator::open(&cg).and_then(|a| {
            let current = a.current_quota();
            if current == original {
                return Ok(None);
            }
            a.set_cpu_quota(original).map(|_| Some(current))
        });
        match res {
            Ok(Some(current)) => {
                tracing::info!(target: "scaler::audit", cgroup = %path, resource = "cpu", old = %current, new = %original, reason = "restore_on_exit", "CPU quota restored");
                lock(&agent_state.state).cpu_mut().forget(&path);
            }
            Ok(None) => {
                lock(&agent_state.state).cpu_mut().forget(&path);
            }
            Err(e) => tracing::warn!(cgroup = %path, "restoring the CPU quota {original}: {e}"),
        }
    }
    agent_state.save_state();
}

/// At shutdown with `restore_on_exit`: writes each changed cgroup's original limit back,
/// never below its current usage. Restored cgroups leave the state file; the others stay
/// (so the next start still knows their original).
fn restore_originals(hierarchy: &Hierarchy, agent_state: &AgentState) {
    let records: Vec<(String, state::CgroupRecord)> = lock(&agent_state.state)
        .records()
        .iter()
        .map(|(p, r)| (p.clone(), r.clone()))
        .collect();
    for (path, r) in records {
        let cg = match hierarchy.cgroup(&path) {
            Ok(c) if c.exists() && c.id().is_ok_and(|id| id.0 == r.id) => c,
            _ => {
                lock(&agent_state.state).forget(&path);
                continue;
            }
        };
        let (Ok(current), Ok(usage)) = (cg.memory_limit(), cg.memory_usage()) else {
            continue;
        };
        let original = Limit::from(r.original);
        match plan_restore(original, current, usage) {
            Restore::Unchanged => {
                lock(&agent_state.state).forget(&path);
            }
            Restore::BelowUsage { original, usage } => tracing::warn!(
                cgroup = %path,
                original,
                usage,
                current = %current,
                "not restored: the original limit is below current usage; the current limit stays"
            ),
            Restore::Write(l) => {
                let res = MemoryActuator::open(&cg, MemoryOptions::default())
                    .and_then(|a| a.set_memory_limit(l));
                match res {
                    Ok(_) => {
                        tracing::info!(target: "scaler::audit", cgroup = %path, old = %current, new = %l, reason = "restore_on_exit", "limit restored");
                        lock(&agent_state.state).forget(&path);
                    }
                    Err(e) => tracing::warn!(cgroup = %path, "restoring {l}: {e}"),
                }
            }
        }
    }
    agent_state.save_state();
}

/// Builds the status document from the shared state and an engine snapshot.
fn status_doc(
    state: &AgentState,
    snapshot: Vec<ManagedSnapshot>,
    cpu_snapshot: Vec<CpuSnapshot>,
    engine: &EngineStats,
) -> StatusDoc {
    let info = lock(&state.info).clone();
    let managed = lock(&state.managed);
    let snaps: HashMap<CgId, ManagedSnapshot> = snapshot.into_iter().map(|s| (s.id, s)).collect();
    let mut list: Vec<ManagedStatus> = managed
        .iter()
        .map(|(id, m)| {
            let s = snaps.get(id);
            ManagedStatus {
                cgroup: m.path.clone(),
                id: *id,
                policy: m.policy.clone(),
                qos: m.pod.as_ref().map(|p| p.qos.as_str().to_owned()),
                pod_uid: m.pod.as_ref().and_then(|p| p.pod_uid.clone()),
                container_id: m.pod.as_ref().and_then(|p| p.container_id.clone()),
                limit: s
                    .and_then(|s| s.limit)
                    .map(|l| StoredLimit::from(Limit::from_bytes(l))),
                original_limit: m.original.into(),
                usage_bytes: s.and_then(|s| s.usage),
                utilization: s.and_then(|s| s.utilization),
                allocation_rate: s.and_then(|s| s.allocation_rate),
            }
        })
        .collect();
    drop(managed);
    list.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    let cpu_snaps: HashMap<CgId, CpuSnapshot> =
        cpu_snapshot.into_iter().map(|s| (s.id, s)).collect();
    let mut cpu_list: Vec<ManagedCpuStatus> = lock(&state.cpu_managed)
        .iter()
        .map(|(id, m)| {
            let s = cpu_snaps.get(id);
            ManagedCpuStatus {
                cgroup: m.path.clone(),
                id: *id,
                policy: m.policy.clone(),
                quota_cores: s.and_then(|s| s.quota_cores),
                original_quota_cores: m.original.cores(),
                usage_cores: s.and_then(|s| s.usage_cores),
                utilization: s.and_then(|s| s.utilization),
            }
        })
        .collect();
    cpu_list.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    let recent = lock(&state.recent);
    let c = &state.counters;
    let events = c
        .events_by_kind
        .iter()
        .enumerate()
        .filter_map(|(k, n)| {
            let n = n.load(Ordering::Relaxed);
            let kind = EventKind::from_u32(k as u32)?;
            (n > 0).then(|| (kind.as_str().to_owned(), n))
        })
        .collect();
    StatusDoc {
        version: status::STATUS_VERSION,
        pid: std::process::id(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        dry_run: info.dry_run,
        restore_on_exit: info.restore_on_exit,
        memory_hierarchy: info.memory_hierarchy,
        state_file: info.state_file,
        metrics_addr: info.metrics_addr,
        managed: list,
        managed_cpu: cpu_list,
        counters: CounterStatus {
            events,
            actions: c.actions.load(Ordering::Relaxed),
            failed_actions: c.failed_actions.load(Ordering::Relaxed),
            records_dropped: engine.records_dropped.load(Ordering::Relaxed),
            ringbuf_dropped: state.metrics.ringbuf_dropped.get(),
        },
        recent_actions: recent.actions(),
        reaction_latency_us: recent.latency(),
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let node = NodeInfo::detect().context("reading /proc/meminfo")?;
    let mut config = match load_config(args.config.as_deref(), &node) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scaler: {e}");
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    if args.dry_run {
        config.agent.dry_run = true;
    }
    crate::privilege::check_startup(crate::privilege::Role::Agent, None)?;
    // Block the signals before any thread starts, so that only the signal thread takes them.
    let (tx, rx) = channel();
    signal_thread(tx.clone())?;
    let hierarchy = Hierarchy::discover(Path::new("/"), Controller::Memory)?;
    let state_file = match StateFile::load(&config.agent.state_file) {
        Ok(s) => s,
        Err(e @ (state::StateError::Parse { .. } | state::StateError::Version { .. })) => {
            let aside = config.agent.state_file.with_extension("json.bad");
            tracing::error!(
                "{e}; moved to {} and starting without history",
                aside.display()
            );
            let _ = std::fs::rename(&config.agent.state_file, &aside);
            StateFile::empty(&config.agent.state_file)
        }
        Err(e) => return Err(e).context("the state file (agent.state_file)"),
    };
    let known = state_file.records().len();
    let metrics = Arc::new(Metrics::new());
    let metrics_addr = if config.agent.metrics {
        let a = metrics::serve(config.agent.metrics_addr, metrics.clone()).with_context(|| {
            format!(
                "serving metrics on {} (agent.metrics_addr; set agent.metrics = false to disable)",
                config.agent.metrics_addr
            )
        })?;
        tracing::info!(addr = %a, "serving Prometheus metrics at http://{a}/metrics");
        Some(a.to_string())
    } else {
        None
    };
    let status_listener = status::bind(&config.agent.status_socket)
        .context("the status socket (agent.status_socket)")?;
    // The scheduler programs cost every context switch something: attach them only when a
    // policy manages CPU.
    let wants_cpu = config.manages_cpu();
    let mut pipeline = Pipeline::load_with_cpu(
        &PipelineOptions {
            watch_all: config.agent.observe_all,
            default_headroom_bytes: 0,
            early_warning: true,
        },
        wants_cpu,
    )?;
    crate::privilege::after_load(crate::privilege::Role::Agent);
    if wants_cpu && !pipeline.cpu_enabled() {
        tracing::warn!(
            "the scheduler programs are not attached: CPU quotas are managed from cpu.stat \
             samples alone (every agent.sample_interval), without quota-near or run-queue events"
        );
    }
    for p in pipeline.programs() {
        if !p.attached {
            tracing::warn!(
                program = p.program,
                "not attached: {}",
                p.note.as_deref().unwrap_or("?")
            );
        }
    }
    let ring = pipeline.take_events().context("event ring buffer")?;
    let mut engine = Engine::start(
        ring,
        EngineConfig {
            memory_budget: config.memory_budget(&node),
            cpu_budget_cores: config.cpu_budget(&node),
            dry_run: config.agent.dry_run,
            ..EngineConfig::default()
        },
    )?;
    let records = engine.take_records().context("records")?;
    let state = Arc::new(AgentState {
        managed: Mutex::new(HashMap::new()),
        cpu_managed: Mutex::new(HashMap::new()),
        counters: AgentCounters::default(),
        metrics,
        recent: Mutex::new(Recent::default()),
        state: Mutex::new(state_file),
        info: Mutex::new(AgentInfo {
            dry_run: config.agent.dry_run,
            restore_on_exit: config.agent.restore_on_exit,
            memory_hierarchy: format!("{} at {}", hierarchy.version, hierarchy.mount.display()),
            state_file: config.agent.state_file.display().to_string(),
            metrics_addr,
        }),
        started: Instant::now(),
    });
    let index = CgroupIndex::new(hierarchy.clone());
    let recorder = {
        let state = state.clone();
        let index_h = hierarchy.clone();
        std::thread::Builder::new()
            .name("records".into())
            .spawn(move || consume(records, &state, index_h))?
    };
    {
        let state = state.clone();
        let (commands, wake) = engine.command_sender();
        let stats = engine.stats().clone();
        status::serve(status_listener, move || {
            // Asks the engine thread for a snapshot (waits up to a second for it).
            fn ask<T>(
                commands: &std::sync::mpsc::Sender<Command>,
                wake: &impl Fn(),
                request: impl FnOnce(std::sync::mpsc::SyncSender<Vec<T>>) -> Command,
            ) -> Vec<T> {
                let (tx, rx) = sync_channel(1);
                if commands.send(request(tx)).is_err() {
                    return Vec::new();
                }
                wake();
                rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default()
            }
            let wake = || wake.wake();
            let snapshot = ask(&commands, &wake, Command::Snapshot);
            let cpu_snapshot = ask(&commands, &wake, Command::CpuSnapshot);
            status_doc(&state, snapshot, cpu_snapshot, &stats)
        })?;
    }
    let mut agent = Agent {
        config,
        node,
        hierarchy,
        index,
        cpu: None,
        cpu_unavailable: false,
        pipeline,
        engine,
        state,
    };
    agent.reconcile();
    agent.drop_stale_state();
    discovery_thread(agent.hierarchy.mount.clone(), tx.clone());
    drop(tx);
    tracing::info!(
        memory = %format!("{} at {}", agent.hierarchy.version, agent.hierarchy.mount.display()),
        managed = lock(&agent.state.managed).len(),
        cpu_managed = lock(&agent.state.cpu_managed).len(),
        cpu_kernel_events = agent.pipeline.cpu_enabled(),
        state_file = %agent.config.agent.state_file.display(),
        known_from_state = known,
        observe_all = agent.config.agent.observe_all,
        dry_run = agent.config.agent.dry_run,
        budget = %crate::units::format_size(agent.config.memory_budget(&agent.node)),
        "agent running"
    );
    let mut next_discovery = Instant::now() + DISCOVERY_INTERVAL;
    let mut next_sample = Instant::now();
    let stop_reason = loop {
        let tick = agent.config.agent.sample_interval.0;
        let wait = next_sample.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(AgentMsg::Stop(sig)) => break sig,
            Ok(AgentMsg::Reload) => agent.reload(args.config.as_deref()),
            Ok(AgentMsg::Tree(changes)) => {
                // Coalesce a burst (a pod start creates several cgroups at once).
                let mut overflow = false;
                let mut n = 0;
                let mut pending = None;
                let mut handle = |c: Vec<TreeChange>| {
                    overflow |= c.contains(&TreeChange::Overflow);
                    n += c.len();
                };
                handle(changes);
                loop {
                    match rx.try_recv() {
                        Ok(AgentMsg::Tree(c)) => handle(c),
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                tracing::debug!(changes = n, overflow, "cgroup tree changed");
                agent.reconcile();
                next_discovery = Instant::now() + DISCOVERY_INTERVAL;
                match pending {
                    Some(AgentMsg::Stop(sig)) => break sig,
                    Some(AgentMsg::Reload) => agent.reload(args.config.as_deref()),
                    _ => {}
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break "signal thread gone",
        }
        if Instant::now() >= next_sample {
            agent.sample();
            agent.refresh_metrics();
            next_sample = Instant::now() + tick;
        }
        if Instant::now() >= next_discovery {
            agent.reconcile();
            next_discovery = Instant::now() + DISCOVERY_INTERVAL;
        }
    };
    tracing::info!("{stop_reason}: detaching");
    let Agent {
        engine,
        pipeline,
        state,
        config,
        hierarchy,
        cpu,
        ..
    } = agent;
    engine.stop()?;
    let k = pipeline.kernel_stats();
    drop(pipeline);
    let _ = recorder.join();
    state.save_state();
    let restore = lock(&state.info).restore_on_exit;
    if restore && !config.agent.dry_run {
        // The engine is stopped: nothing races the restore.
        restore_originals(&hierarchy, &state);
        if let Some(c) = &cpu {
            restore_cpu_originals(&c.hierarchy, &state);
        }
    }
    let _ = std::fs::remove_file(&config.agent.status_socket);
    tracing::info!(
        submitted = k.submitted,
        dropped = k.ringbuf_dropped,
        "programs detached; exiting"
    );
    Ok(ExitCode::SUCCESS)
}

/// The CFS period assumed when a cgroup's cannot be read (the kernel's default, 100 ms).
const DEFAULT_CFS_PERIOD_US: u64 = 100_000;

/// How often the cgroup tree is rescanned for new and removed cgroups (inotify reports them
/// sooner; this is the safety net).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

fn consume(records: Receiver<Record>, state: &AgentState, h: Hierarchy) {
    let mut index = CgroupIndex::new(h);
    let mut handle = |r: Record| match r {
        Record::Action(a) => {
            state.counters.actions.fetch_add(1, Ordering::Relaxed);
            if a.outcome == WriteOutcome::Failed {
                state
                    .counters
                    .failed_actions
                    .fetch_add(1, Ordering::Relaxed);
            }
            state.metrics.record_action(&a);
            // On cgroup v1 the memory and cpu cgroups of a workload have different ids.
            let path = match a.action.resource {
                Resource::Memory => {
                    let managed = lock(&state.managed)
                        .get(&a.action.cgroup)
                        .map(|m| (m.path.clone(), m.labels.clone()));
                    if let (WriteOutcome::Written, Some((p, labels))) = (a.outcome, &managed) {
                        let new = Limit::from_bytes(a.action.new);
                        lock(&state.state).changed(p, new);
                        state
                            .metrics
                            .limit_bytes
                            .get_or_create(labels)
                            .set(limit_value(new));
                    }
                    managed.map(|(p, _)| p)
                }
                Resource::Cpu => {
                    let managed = lock(&state.cpu_managed)
                        .get(&a.action.cgroup)
                        .map(|m| (m.path.clone(), m.labels.clone(), m.period_us));
                    if let (WriteOutcome::Written, Some((p, labels, period_us))) =
                        (a.outcome, &managed)
                    {
                        let new = CpuQuota::Quota {
                            quota_us: a.action.new,
                            period_us: *period_us,
                        };
                        lock(&state.state).cpu_mut().changed(p, new.into());
                        state
                            .metrics
                            .cpu_quota_cores
                            .get_or_create(labels)
                            .set(quota_value(new));
                    }
                    managed.map(|(p, _, _)| p)
                }
            };
            let path = path.or_else(|| index.path_of(a.action.cgroup).map(str::to_owned));
            crate::cmd::audit(&a, path.as_deref());
            lock(&state.recent).push(
                ActionStatus {
                    time_unix: status::now_unix(),
                    cgroup: path.unwrap_or_else(|| format!("id:{}", a.action.cgroup)),
                    resource: a.action.resource.as_str().to_owned(),
                    old: a.action.old,
                    new: a.action.new,
                    reason: a.action.reason.as_str().to_owned(),
                    outcome: metrics::outcome_str(a.outcome).to_owned(),
                    latency_us: a.latency_ns as f64 / 1000.0,
                },
                (a.outcome != WriteOutcome::Failed).then_some(a.latency_ns),
            );
        }
        Record::Event(ev) => {
            let k = ev.kind as usize;
            if let Some(c) = state.counters.events_by_kind.get(k) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            state
                .metrics
                .events
                .get_or_create(&metrics::KindLabels {
                    kind: ev.kind.as_str(),
                })
                .inc();
            if matches!(ev.kind, EventKind::OomKill) {
                let path = index.path_of(ev.target_id).unwrap_or("?").to_string();
                tracing::warn!(cgroup = %path, pid = ev.pid, comm = ev.comm(), "OOM kill");
            } else if ev.woke {
                let path = index.path_of(ev.target_id).unwrap_or("?").to_string();
                tracing::debug!(cgroup = %path, kind = ev.kind.as_str(), usage = ev.usage, limit = ev.limit, "pressure");
            }
        }
    };
    while let Ok(r) = records.recv() {
        handle(r);
        // Drain a burst, then write the state file once for it.
        while let Ok(r) = records.try_recv() {
            handle(r);
        }
        state.save_state();
    }
}
#[cfg(test)]
mod tests {
    use super::ancestors;

    #[test]
    fn ancestors_walk_to_the_root() {
        assert_eq!(ancestors("/a/b/c").collect::<Vec<_>>(), ["/a/b", "/a", "/"]);
        assert_eq!(ancestors("/a").collect::<Vec<_>>(), ["/"]);
        assert_eq!(ancestors("/").count(), 0);
    }
}
