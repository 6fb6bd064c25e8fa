//! `scaler agent`: the node agent, and `scaler check-config`.
//!
//! The built-in default configuration observes every cgroup (reclaim and OOM events of all of
//! them are counted and logged) and manages none: only cgroups that a `[[policy]]` selects
//! (by path glob, optionally requiring an opt-in xattr) have their limits changed. So running
//! it with no flags is safe on any host.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{channel, Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use scaler_common::{EventKind, WatchConfig, WATCH_MEMORY, WATCH_USAGE_HIGH};

use crate::{
    actuator::{MemoryActuator, MemoryOptions},
    cgroupfs::{CgroupIndex, Controller, Hierarchy},
    config::{Config, ConfigError, NodeInfo},
    decider::{CgId, MemoryPolicy},
    ebpf::{Pipeline, PipelineOptions},
    engine::{Command, Engine, EngineConfig, ManageRequest, Record},
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
                if c.policies.len() == 1 { "policy" } else { "policies" },
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
}

/// Counters the agent keeps from the engine's records.
#[derive(Debug, Default)]
pub struct AgentCounters {
    pub events_by_kind: [AtomicU64; 8],
    pub actions: AtomicU64,
    pub failed_actions: AtomicU64,
}

/// Agent state shared between its threads.
pub struct AgentState {
    pub managed: Mutex<HashMap<CgId, ManagedCgroup>>,
    pub counters: AgentCounters,
}

enum AgentSignal {
    Stop(&'static str),
    Reload,
}

fn signal_thread() -> anyhow::Result<Receiver<AgentSignal>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block()?;
    let (tx, rx) = channel();
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let msg = match set.wait() {
            Ok(Signal::SIGHUP) => AgentSignal::Reload,
            Ok(Signal::SIGINT) => AgentSignal::Stop("SIGINT"),
            Ok(_) => AgentSignal::Stop("SIGTERM"),
            Err(_) => return,
        };
        if tx.send(msg).is_err() {
            return;
        }
    })?;
    Ok(rx)
}

struct Agent {
    config: Config,
    node: NodeInfo,
    hierarchy: Hierarchy,
    index: CgroupIndex,
    pipeline: Pipeline,
    engine: Engine,
    state: Arc<AgentState>,
}

impl Agent {
    /// Brings the managed set in line with the configuration and the cgroups that exist:
    /// new matching cgroups are managed, vanished or no-longer-selected ones forgotten.
    fn reconcile(&mut self) {
        if let Err(e) = self.index.rescan() {
            tracing::warn!("rescanning {}: {e}", self.hierarchy.mount.display());
            return;
        }
        let needs_xattr = self.config.policies.iter().any(|p| p.require_xattr);
        let xattr_name = self.config.agent.opt_in_xattr.clone();
        let mut wanted: Vec<(CgId, String, String, MemoryPolicy)> = Vec::new();
        for (id, path) in self.index.iter() {
            let xattr = if needs_xattr {
                self.hierarchy
                    .cgroup(path)
                    .ok()
                    .and_then(|c| c.xattr(&xattr_name).ok().flatten())
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
            } else {
                None
            };
            if let Some(p) = self.config.policy_for(path, xattr.as_deref()) {
                if let Some(mp) = p.memory_policy() {
                    wanted.push((id.0, path.to_string(), p.name.clone(), mp));
                }
            }
        }
        // Parents before children, so each finds its managed ancestor.
        wanted.sort_by_key(|(_, path, _, _)| path.matches('/').count());
        let wanted_ids: HashSet<CgId> = wanted.iter().map(|w| w.0).collect();
        let mut managed = self.state.managed.lock().expect("agent state");
        let gone: Vec<CgId> = managed.keys().filter(|id| !wanted_ids.contains(id)).copied().collect();
        for id in gone {
            let m = managed.remove(&id).expect("listed");
            tracing::info!(cgroup = %m.path, "no longer managed (removed or deselected)");
            self.engine.send(Command::Forget(id));
            let _ = self.pipeline.unwatch(id);
        }
        let mut path_to_id: HashMap<String, CgId> =
            managed.iter().map(|(id, m)| (m.path.clone(), *id)).collect();
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
            tracing::info!(cgroup = %path, policy = %policy_name, min = policy.min, max = policy.max, "managing");
            path_to_id.insert(path.clone(), id);
            managed.insert(id, ManagedCgroup { path, policy: policy_name, memory: policy });
        }
    }

    /// The slow path: a sample of each managed cgroup for scale-down and rate estimation.
    fn sample(&self) {
        let managed = self.state.managed.lock().expect("agent state");
        for (id, m) in managed.iter() {
            let Ok(cg) = self.hierarchy.cgroup(&m.path) else { continue };
            if let Some(s) = crate::cmd::exec::sample(&cg) {
                self.engine.send(Command::Sample(*id, s));
            }
        }
    }

    fn reload(&mut self, path: Option<&Path>) {
        match load_config(path, &self.node) {
            Ok(mut c) => {
                c.agent.dry_run = self.config.agent.dry_run;
                self.engine.send(Command::SetBudget(c.memory_budget(&self.node)));
                self.config = c;
                tracing::info!("configuration reloaded");
                self.reconcile();
            }
            Err(e) => tracing::error!("configuration reload rejected, the old one keeps running: {e}"),
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
    // Block the signals before any thread starts, so that only the signal thread takes them.
    let signals = signal_thread()?;
    let hierarchy = Hierarchy::discover(Path::new("/"), Controller::Memory)?;
    let mut pipeline = Pipeline::load(&PipelineOptions {
        watch_all: config.agent.observe_all,
        default_headroom_bytes: 0,
        early_warning: true,
    })?;
    for p in pipeline.programs() {
        if !p.attached {
            tracing::warn!(program = p.program, "not attached: {}", p.note.as_deref().unwrap_or("?"));
        }
    }
    let ring = pipeline.take_events().context("event ring buffer")?;
    let mut engine = Engine::start(
        ring,
        EngineConfig {
            memory_budget: config.memory_budget(&node),
            dry_run: config.agent.dry_run,
            ..EngineConfig::default()
        },
    )?;
    let records = engine.take_records().context("records")?;
    let state = Arc::new(AgentState { managed: Mutex::new(HashMap::new()), counters: AgentCounters::default() });
    let index = CgroupIndex::new(hierarchy.clone());
    let recorder = {
        let state = state.clone();
        let index_h = hierarchy.clone();
        std::thread::Builder::new().name("records".into()).spawn(move || consume(records, &state, index_h))?
    };
    let mut agent = Agent { config, node, hierarchy, index, pipeline, engine, state };
    agent.reconcile();
    tracing::info!(
        memory = %format!("{} at {}", agent.hierarchy.version, agent.hierarchy.mount.display()),
        managed = agent.state.managed.lock().map(|m| m.len()).unwrap_or(0),
        observe_all = agent.config.agent.observe_all,
        dry_run = agent.config.agent.dry_run,
        budget = %crate::units::format_size(agent.config.memory_budget(&agent.node)),
        "agent running"
    );
    let mut next_discovery = Instant::now() + DISCOVERY_INTERVAL;
    loop {
        let tick = agent.config.agent.sample_interval.0;
        match signals.recv_timeout(tick) {
            Ok(AgentSignal::Stop(sig)) => {
                tracing::info!("{sig}: detaching");
                break;
            }
            Ok(AgentSignal::Reload) => agent.reload(args.config.as_deref()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        agent.sample();
        if Instant::now() >= next_discovery {
            agent.reconcile();
            next_discovery = Instant::now() + DISCOVERY_INTERVAL;
        }
    }
    let Agent { engine, pipeline, .. } = agent;
    engine.stop()?;
    let k = pipeline.kernel_stats();
    drop(pipeline);
    let _ = recorder.join();
    tracing::info!(submitted = k.submitted, dropped = k.ringbuf_dropped, "programs detached; exiting");
    Ok(ExitCode::SUCCESS)
}

/// How often the cgroup tree is rescanned for new and removed cgroups.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

fn consume(records: Receiver<Record>, state: &AgentState, h: Hierarchy) {
    let mut index = CgroupIndex::new(h);
    for r in records {
        match r {
            Record::Action(a) => {
                state.counters.actions.fetch_add(1, Ordering::Relaxed);
                if a.outcome == crate::decider::WriteOutcome::Failed {
                    state.counters.failed_actions.fetch_add(1, Ordering::Relaxed);
                }
                let path = index.path_of(a.action.cgroup).map(str::to_owned);
                crate::cmd::audit(&a, path.as_deref());
            }
            Record::Event(ev) => {
                let k = ev.kind as usize;
                if let Some(c) = state.counters.events_by_kind.get(k) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(ev.kind, EventKind::OomKill) {
                    let path = index.path_of(ev.target_id).unwrap_or("?").to_string();
                    tracing::warn!(cgroup = %path, pid = ev.pid, comm = ev.comm(), "OOM kill");
                } else if ev.woke {
                    let path = index.path_of(ev.target_id).unwrap_or("?").to_string();
                    tracing::debug!(cgroup = %path, kind = ev.kind.as_str(), usage = ev.usage, limit = ev.limit, "pressure");
                }
            }
        }
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
