//! `scaler agent`: the node agent, and `scaler check-config`.
//!
//! The built-in default configuration observes every cgroup (reclaim and OOM events of all of
//! them are counted and logged) and manages none: only cgroups that a `[[policy]]` selects
//! (by path glob, optionally requiring an opt-in xattr) have their limits changed. So running
//! it with no flags is safe on any host.
//!
//! Operating it:
//! - metrics ([`metrics`]): Prometheus/OpenMetrics on `agent.metrics_addr` (`GET /metrics`),
//!   beside `/healthz` and `/readyz` ([`health`]), served by [`endpoints`];
//! - health ([`health`]): the engine thread's heartbeat, systemd notifications (`READY=1`,
//!   `WATCHDOG=1`, `STOPPING=1`), and exit status [`EXIT_ENGINE_FAILED`] when the engine dies;
//! - state ([`state`]): each managed cgroup's original limit and the agent's changes, in
//!   `agent.state_file`, so that a restart (also after SIGKILL) reconciles instead of starting
//!   blind; `agent.restore_on_exit` puts the originals back on SIGTERM/SIGINT;
//! - discovery ([`discovery`]): inotify on the cgroupfs tree, plus a periodic rescan;
//! - status ([`status`]): `scaler status` reads the agent over `agent.status_socket`.

pub mod capacity;
#[cfg(test)]
mod deploy_tests;
pub mod discovery;
pub mod endpoints;
pub mod health;
pub mod managed;
pub mod metrics;
pub mod node_budget;
pub mod state;
pub mod status;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use scaler_common::EventKind;

use self::{
    discovery::{TreeChange, TreeWatcher},
    managed::{restore_originals, status_doc, take_adoptions, Agent},
    metrics::{LimitLabels, Metrics},
    state::StateFile,
    status::{ActionStatus, Recent},
};
use crate::{
    actuator::{Setting, WriteMark},
    cgroupfs::{CgroupIndex, Controller, Hierarchy},
    config::{Config, ConfigError, NodeInfo},
    decider::{CgId, Resource, WriteOutcome},
    ebpf::{Pipeline, PipelineOptions},
    engine::{snapshot_via, Engine, EngineConfig, Record},
    events::MemEvent,
    k8s::PodCgroup,
    resource,
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
    /// Serve metrics and health here instead of `agent.metrics_addr`: `IP:PORT`, or an IP
    /// alone (the port from the configuration), such as the pod IP from Kubernetes' downward
    /// API.
    #[arg(long, env = "SCALER_METRICS_ADDR", value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<MetricsAddr>,
}

/// `--metrics-addr`: a full socket address, or an IP that takes the configured port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Socket(std::net::SocketAddr),
    Ip(std::net::IpAddr),
}

impl MetricsAddr {
    /// The address to bind, given the configured one.
    pub fn resolve(self, configured: std::net::SocketAddr) -> std::net::SocketAddr {
        match self {
            MetricsAddr::Socket(a) => a,
            MetricsAddr::Ip(ip) => std::net::SocketAddr::new(ip, configured.port()),
        }
    }
}

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse() {
        return Ok(MetricsAddr::Socket(a));
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map(MetricsAddr::Ip)
        .map_err(|_| format!("{s:?} is neither IP:PORT nor an IP address"))
}

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The configuration file to validate.
    pub file: PathBuf,
}

/// Exit status for an invalid configuration (EX_CONFIG, see [`crate::cli::exit`]).
pub const EXIT_BAD_CONFIG: u8 = crate::cli::exit::CONFIG;
/// Exit status when the engine thread died (panicked) or stalled: the limits were restored as
/// configured (`restore_on_exit`) and a supervisor should restart the agent (EX_SOFTWARE).
pub const EXIT_ENGINE_FAILED: u8 = crate::cli::exit::SOFTWARE;

fn load_config(path: Option<&Path>, node: &NodeInfo) -> Result<Config, ConfigError> {
    let c = Config::load(path)?;
    c.validate(node)?;
    Ok(c)
}

pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let node = NodeInfo::detect().context("reading /proc/meminfo")?;
    match load_config(Some(&args.file), &node) {
        Ok(c) => {
            for w in c.warnings() {
                eprintln!("scaler: warning: {w}");
            }
            println!(
                "{}: OK ({} {}, memory reserve {} (raises bounded by MemAvailable minus it), \
                 cpu budget {:.2} cores)",
                args.file.display(),
                c.policies.len(),
                if c.policies.len() == 1 {
                    "policy"
                } else {
                    "policies"
                },
                crate::units::format_size(c.memory_reserve(&node)),
                c.cpu_budget(&node)
            );
            // The kubelet's file as the agent would read it now.
            let source = c.kubelet_source();
            let path = source
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            match node_budget::load_once(&source) {
                Ok(None) => {}
                Ok(Some(k)) => println!(
                    "{}: kubelet configuration {path}: {}",
                    args.file.display(),
                    k.describe()
                ),
                Err(e) => eprintln!(
                    "scaler: warning: the kubelet's configuration {path}: `{}`: {}; the agent \
                     would run with the kubelet's defaults (evictionHard 100Mi, no reservations) \
                     until it is fixed",
                    e.key, e.message
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("scaler: {e}");
            Ok(ExitCode::from(EXIT_BAD_CONFIG))
        }
    }
}

/// What the agent knows about one cgroup it manages, for one resource. On cgroup v1 the memory
/// and cpu cgroups of a workload are different directories with different ids (the path
/// relative to the hierarchy root is usually the same).
#[derive(Clone, Debug)]
pub struct Managed {
    /// Path relative to the resource's hierarchy root.
    pub path: String,
    /// The name of the `[[policy]]` that selects it.
    pub policy_name: String,
    pub policy: crate::engine::Policy,
    /// The limit before the agent first changed it (from the state file if the agent managed
    /// this cgroup before a restart).
    pub original: Setting,
    /// The original is not known (the state file and its copy were lost or damaged when the
    /// agent started, with this cgroup already there).
    pub original_unknown: bool,
    /// Where the engine marks its writes to this cgroup's limit (see [`WriteMark`]).
    pub mark: Arc<WriteMark>,
    /// The limit adopted from its owner at the mark's sequence number: what the cgroup holds
    /// until the engine writes again.
    pub adopted: Option<(u64, Setting)>,
    /// The engine's adoptions of owner's writes already taken ([`WriteMark::adoption`]).
    pub adoptions_seen: u64,
    /// The owner's value the last sample adopted, so that one owner's write seen by the
    /// sample and by the engine is logged and counted once.
    pub owner_value: Option<Setting>,
    /// The pod and container, for Kubernetes cgroups.
    pub pod: Option<PodCgroup>,
    /// Its metric labels.
    pub labels: LimitLabels,
    /// Memory: the engine holds a bounded room under the cgroup's unmanaged ancestors (sent
    /// with every sample while one of them is limited; once more, unbounded, when none is).
    pub ancestor_room_bounded: bool,
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
    /// Managed cgroups by resource (index: [`resource_index`]), by their id in that resource's
    /// hierarchy.
    pub managed: [Mutex<HashMap<CgId, Managed>>; 2],
    pub counters: AgentCounters,
    pub metrics: Arc<Metrics>,
    pub recent: Mutex<Recent>,
    pub state: Mutex<StateFile>,
    pub info: Mutex<AgentInfo>,
    pub started: Instant,
    /// Cgroups a policy selects that the agent does not protect, by path, per resource
    /// (indexed like `managed`).
    pub unprotected: Mutex<[HashMap<String, capacity::Unprotected>; 2]>,
    /// The node budget's inputs and last figures (see [`node_budget`]).
    pub node: Mutex<node_budget::NodeState>,
    /// The Kubernetes API's view of this node's pods (`[kubernetes] api`; `None`: off, or it
    /// did not start).
    pub kube: Option<Arc<crate::kube::Kube>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking thread cannot leave these in a state worse than losing them: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The index of `r` in [`AgentState::managed`].
pub const fn resource_index(r: Resource) -> usize {
    match r {
        Resource::Memory => 0,
        Resource::Cpu => 1,
    }
}

impl AgentState {
    /// The managed set of resource `r`.
    pub fn managed(&self, r: Resource) -> &Mutex<HashMap<CgId, Managed>> {
        &self.managed[resource_index(r)]
    }

    /// Writes the state file if it changed; a failure is logged (the agent keeps running).
    fn save_state(&self) {
        let mut st = lock(&self.state);
        if let Err(e) = st.save_if_dirty() {
            tracing::error!("{e}");
        }
    }
}

/// Says (an error) when a policy requires a `trusted.` opt-in attribute the agent cannot read
/// (without CAP_SYS_ADMIN it reads as absent, and no cgroup would ever opt in).
fn check_opt_in_readable(config: &Config) {
    if !(config.uses_opt_in() && config.agent.opt_in_is_trusted_name()) {
        return;
    }
    let has = crate::privilege::ProcessCaps::current()
        .map(|c| c.effective.has(crate::privilege::Capability::SysAdmin))
        .unwrap_or(false);
    if !has {
        tracing::error!(
            xattr = %config.agent.opt_in_xattr,
            "a policy requires the opt-in attribute {}, which only CAP_SYS_ADMIN can read: \
             without it no cgroup opts in (grant CAP_SYS_ADMIN at start, or use a user. \
             attribute, which counts on directories owned by root or agent.opt_in_owners)",
            config.agent.opt_in_xattr
        );
    }
}

/// What the main loop reacts to.
enum AgentMsg {
    Stop(&'static str),
    Reload,
    Tree(Vec<TreeChange>),
    /// The health monitor found the engine thread dead or stalled (why).
    EngineFailed(String),
    /// What the Kubernetes API says of this node's pods changed (names, annotations).
    Pods,
}

/// Why the main loop ended.
enum Exit {
    Signal(&'static str),
    EngineFailed(String),
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
    if let Some(a) = args.metrics_addr {
        config.agent.metrics_addr = a.resolve(config.agent.metrics_addr);
    }
    // A panic in any thread is logged as an event (the health monitor acts on the engine's).
    std::panic::set_hook(Box::new(|info| {
        let t = std::thread::current();
        tracing::error!(thread = t.name().unwrap_or("?"), "panic: {info}");
    }));
    // Hidden, for tests only: a fault the engine thread injects into itself.
    let fault = std::env::var(crate::engine::EngineFault::ENV)
        .ok()
        .and_then(|v| crate::engine::EngineFault::parse(&v));
    if let Some(f) = &fault {
        tracing::warn!(
            "{}: injecting {f:?} (a test-only fault; never set it in production)",
            crate::engine::EngineFault::ENV
        );
    }
    for w in config.warnings() {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    crate::privilege::check_startup(crate::privilege::Role::Agent, None)?;
    // Block the signals first: every thread inherits the mask, so only the signal thread
    // (started once the programs are loaded) takes them, and one sent meanwhile waits for it.
    {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGHUP);
        set.thread_block()?;
    }
    let hierarchy = Hierarchy::discover(Path::new("/"), Controller::Memory)?;
    let state_file = open_state(&config.agent.state_file)?;
    let known = state_file.records().len();
    let metrics = Arc::new(Metrics::new());
    let metrics_context = || {
        format!(
            "serving metrics on {} (agent.metrics_addr; set agent.metrics = false to disable)",
            config.agent.metrics_addr
        )
    };
    // Sockets are bound before the capabilities are dropped, served after.
    let metrics_listener = if config.agent.metrics {
        Some(std::net::TcpListener::bind(config.agent.metrics_addr).with_context(metrics_context)?)
    } else {
        None
    };
    let status_listener = status::bind(&config.agent.status_socket)
        .context("the status socket (agent.status_socket)")?;
    // The scheduler programs cost every context switch something: attach them only when a
    // policy manages CPU.
    let wants_cpu = config.manages_cpu();
    // Room for agent.max_cgroups cgroups: descriptors now, kernel map entries at load.
    capacity::raise_nofile(config.agent.max_cgroups, if wants_cpu { 2 } else { 1 });
    let mut pipeline = Pipeline::load_with_cpu(
        &PipelineOptions {
            watch_all: config.agent.observe_all,
            default_headroom_bytes: 0,
            early_warning: true,
            max_watched: config.agent.max_cgroups,
            bpf_stats: config.agent.bpf_stats,
        },
        wants_cpu,
    )?;
    // In the only thread so far: every thread started from here on inherits the reduced sets.
    // A `trusted.` opt-in attribute reads as absent without CAP_SYS_ADMIN: keep it while a
    // policy requires the opt-in.
    let opt_in_caps = if config.uses_opt_in() && config.agent.opt_in_is_trusted_name() {
        crate::privilege::CapSet::of(&[crate::privilege::Capability::SysAdmin])
    } else {
        crate::privilege::CapSet::EMPTY
    };
    crate::privilege::after_load_keeping(crate::privilege::Role::Agent, opt_in_caps);
    check_opt_in_readable(&config);
    let (tx, rx) = channel();
    signal_thread(tx.clone())?;
    let kube = start_kube(&config, tx.clone());
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr().with_context(metrics_context)?),
        None => None,
    };
    if wants_cpu && !pipeline.cpu_enabled() {
        tracing::warn!(
            "the scheduler programs are not attached: CPU quotas are managed from cpu.stat \
             samples alone (every agent.sample_interval), without quota-near or run-queue events"
        );
    }
    let mut not_attached = Vec::new();
    for p in pipeline.programs() {
        if !p.attached {
            let note = p.note.as_deref().unwrap_or("?");
            tracing::warn!(program = p.program, "not attached: {note}");
            not_attached.push(format!("{} not attached: {note}", p.program));
        }
    }
    let ring = pipeline.take_events().context("event ring buffer")?;
    // What raises may spend until the first sample (the sampler refreshes it).
    let mut node_state = node_budget::NodeState::new(config.kubelet_source());
    let memory_available = match node_state.sample(&config, &node) {
        Ok(f) => f.room,
        Err(e) => {
            tracing::warn!(
                "reading /proc/meminfo: {e}; raises are bounded by MemTotal minus \
                 node.memory_reserve until a sample succeeds"
            );
            config.memory_budget(&node)
        }
    };
    let mut engine = Engine::start(
        ring,
        EngineConfig {
            memory_available,
            cpu_budget_cores: config.cpu_budget(&node),
            dry_run: config.agent.dry_run,
            fault,
            realtime_priority: (config.agent.realtime_priority > 0)
                .then_some(i32::from(config.agent.realtime_priority)),
            wake_on_event_cpu: config.agent.engine_per_cpu,
            ..EngineConfig::default()
        },
    )?;
    let records = engine.take_records().context("records")?;
    let health = Arc::new(health::Health::new(engine.stats().clone()));
    for n in not_attached {
        health.note(n);
    }
    let state = Arc::new(AgentState {
        managed: Default::default(),
        counters: AgentCounters::default(),
        metrics,
        recent: Mutex::new(Recent::default()),
        state: Mutex::new(state_file),
        info: Mutex::new(AgentInfo {
            dry_run: config.agent.dry_run,
            restore_on_exit: config.agent.restore_on_exit,
            memory_hierarchy: format!("{} at {}", hierarchy.version, hierarchy.mount.display()),
            state_file: config.agent.state_file.display().to_string(),
            metrics_addr: metrics_addr.map(|a| a.to_string()),
        }),
        started: Instant::now(),
        unprotected: Default::default(),
        node: Mutex::new(node_state),
        kube,
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
        let st = state.clone();
        let (commands, wake) = engine.command_sender();
        let stats = engine.stats().clone();
        let doc: endpoints::StatusFn = Arc::new(move || {
            let snapshots = resource::ALL
                .iter()
                .map(|r| {
                    let res = r.resource();
                    (res, snapshot_via(&commands, &wake, res))
                })
                .collect();
            status_doc(&st, &snapshots, &stats)
        });
        let http = metrics_listener.map(|listener| endpoints::Http {
            listener,
            metrics: state.metrics.clone(),
            health: health.clone(),
        });
        endpoints::start(
            http,
            Some(endpoints::Status {
                listener: status_listener,
                doc,
            }),
        )
        .with_context(metrics_context)?;
        if let Some(a) = metrics_addr {
            tracing::info!(addr = %a, "serving Prometheus metrics at http://{a}/metrics (health: /healthz, /readyz)");
        }
    }
    let mut agent = Agent {
        config,
        node,
        hierarchy,
        index,
        sides: HashMap::new(),
        unavailable: Default::default(),
        pipeline,
        engine,
        state,
        kept: Default::default(),
        refused: Default::default(),
    };
    agent.reconcile();
    agent.drop_stale_state();
    discovery_thread(agent.hierarchy.mount.clone(), tx.clone());
    let notifier = health::Notifier::from_env().map(Arc::new);
    {
        let tx = tx.clone();
        health::monitor(
            health.clone(),
            notifier.clone(),
            health::watchdog_from_env(),
            move |why| {
                let _ = tx.send(AgentMsg::EngineFailed(why));
            },
        )?;
    }
    drop(tx);
    health.set_ready();
    if let Some(n) = &notifier {
        n.send("READY=1\nSTATUS=managing cgroups");
    }
    tracing::info!(
        memory = %format!("{} at {}", agent.hierarchy.version, agent.hierarchy.mount.display()),
        managed = lock(agent.state.managed(Resource::Memory)).len(),
        cpu_managed = lock(agent.state.managed(Resource::Cpu)).len(),
        cpu_kernel_events = agent.pipeline.cpu_enabled(),
        state_file = %agent.config.agent.state_file.display(),
        known_from_state = known,
        observe_all = agent.config.agent.observe_all,
        dry_run = agent.config.agent.dry_run,
        memory_reserve = %crate::units::format_size(agent.config.memory_reserve(&agent.node)),
        memory_room = %crate::units::format_size(memory_available),
        "agent running"
    );
    let mut next_discovery = Instant::now() + DISCOVERY_INTERVAL;
    let mut next_sample = Instant::now();
    // Tree changes are coalesced: a reconcile (a walk of the whole hierarchy) at most every
    // RECONCILE_MIN_INTERVAL however fast cgroups come and go (an unprivileged mkdir/rmdir
    // storm in a delegated subtree), the first after a quiet spell at once.
    let mut last_reconcile = Instant::now();
    let mut tree = TreeBacklog::default();
    let exit = loop {
        let tick = agent.config.agent.sample_interval.0;
        let mut until = next_sample;
        if tree.pending() {
            until = until.min(last_reconcile + RECONCILE_MIN_INTERVAL);
        }
        let wait = until.saturating_duration_since(Instant::now());
        let mut pending = None;
        match rx.recv_timeout(wait) {
            Ok(AgentMsg::Tree(changes)) => {
                tree.add(&changes);
                loop {
                    match rx.try_recv() {
                        Ok(AgentMsg::Tree(c)) => tree.add(&c),
                        Ok(AgentMsg::Pods) => tree.add(&[]),
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
            }
            // New pod names or annotations: a reconcile, paced like tree changes.
            Ok(AgentMsg::Pods) => tree.add(&[]),
            Ok(other) => pending = Some(other),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Exit::Signal("signal thread gone"),
        }
        match pending {
            Some(AgentMsg::Stop(sig)) => break Exit::Signal(sig),
            Some(AgentMsg::EngineFailed(why)) => break Exit::EngineFailed(why),
            Some(AgentMsg::Reload) => {
                agent.reload(args.config.as_deref());
                last_reconcile = Instant::now();
            }
            _ => {}
        }
        let now = Instant::now();
        if tree.pending() && now >= last_reconcile + RECONCILE_MIN_INTERVAL {
            tracing::debug!(
                changes = tree.changes,
                overflow = tree.overflow,
                batches = tree.batches,
                "cgroup tree changed"
            );
            tree = TreeBacklog::default();
            agent.reconcile();
            last_reconcile = Instant::now();
            next_discovery = last_reconcile + DISCOVERY_INTERVAL;
        }
        if Instant::now() >= next_sample {
            agent.sample();
            agent.refresh_metrics();
            next_sample = Instant::now() + tick;
        }
        if Instant::now() >= next_discovery {
            tree = TreeBacklog::default();
            agent.reconcile();
            last_reconcile = Instant::now();
            next_discovery = last_reconcile + DISCOVERY_INTERVAL;
        }
    };
    if let Some(n) = &notifier {
        n.send("STOPPING=1");
    }
    let mut failed = match &exit {
        Exit::Signal(sig) => {
            tracing::info!("{sig}: detaching");
            health.set_not_ready(format!("stopping ({sig})"));
            false
        }
        Exit::EngineFailed(why) => {
            tracing::error!(
                "{why}: nothing protects the managed cgroups any more; restoring as configured \
                 and exiting with status {EXIT_ENGINE_FAILED} (a supervisor restarts the agent)"
            );
            health.set_not_ready(why.clone());
            true
        }
    };
    let hierarchies = agent.hierarchies();
    let Agent {
        engine,
        pipeline,
        state,
        config,
        ..
    } = agent;
    // Every path from here restores: no early return.
    let stopped = engine.stop_within(ENGINE_STOP_TIMEOUT);
    if let Err(e) = &stopped {
        tracing::error!("engine: {e}");
        failed = true;
    }
    let k = pipeline.kernel_stats();
    drop(pipeline);
    // The records thread ends when the engine's sender is gone; a stalled engine keeps it.
    if stopped
        .as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
    {
        tracing::warn!("the engine thread is stalled: not waiting for its last records");
    } else {
        let _ = recorder.join();
    }
    take_adoptions(&state);
    let restore = lock(&state.info).restore_on_exit;
    if restore && !config.agent.dry_run {
        // The engine is stopped (or stalled, and the process exits right after).
        restore_originals(&hierarchies, &state);
    }
    let _ = std::fs::remove_file(&config.agent.status_socket);
    tracing::info!(
        submitted = k.submitted,
        dropped = k.ringbuf_dropped,
        observe_shed = k.observe_shed,
        "programs detached; exiting"
    );
    Ok(if failed {
        ExitCode::from(EXIT_ENGINE_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Starts the Kubernetes API client when `[kubernetes] api` says so; a failure is logged with
/// what is missing and the agent runs on what cgroup paths say.
fn start_kube(config: &Config, tx: Sender<AgentMsg>) -> Option<Arc<crate::kube::Kube>> {
    let tx = Mutex::new(tx);
    match crate::kube::start(&config.kubernetes, move || {
        let _ = lock(&tx).send(AgentMsg::Pods);
    }) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(
                error = %e,
                "running without the Kubernetes API: pods and containers are known by the UID \
                 and id in their cgroup paths, no scaler.io/ annotation applies and no resize \
                 is patched"
            );
            None
        }
    }
}

/// How long the shutdown waits for the engine thread to end.
const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens the state file (`agent.state_file`), recovering from a damaged or missing one (see
/// [`StateFile::open`]) with a loud log of what was wrong and what the agent does about it.
fn open_state(path: &Path) -> anyhow::Result<StateFile> {
    use state::Recovery;
    let (s, recovery) = StateFile::open(path).context("the state file (agent.state_file)")?;
    let copy = StateFile::copy_path(path);
    let bad = |e: &Option<state::StateError>| match e {
        Some(e) => format!("{e} (set aside as {}.bad)", e_path(e)),
        None => "missing".into(),
    };
    fn e_path(e: &state::StateError) -> String {
        use state::StateError::*;
        match e {
            Read { path, .. }
            | Parse { path, .. }
            | Version { path, .. }
            | Untrusted { path, .. }
            | Write { path, .. } => path.display().to_string(),
        }
    }
    match recovery {
        Recovery::Clean => {}
        Recovery::FromCopy { problem } => tracing::error!(
            state_file = %path.display(),
            copy = %copy.display(),
            "the state file: {}; the originals are recovered from its last-known-good copy",
            bad(&problem)
        ),
        Recovery::Unknown { problem, copy: c } => tracing::error!(
            state_file = %path.display(),
            copy = %copy.display(),
            "the state file: {}; its last-known-good copy: {}. Starting from the cgroups as \
             they are: the original limits of the cgroups found now are UNKNOWN (a limit the \
             agent had raised cannot be told from an original), restores leave them as they \
             are, and `scaler status` and the metric scaler_cgroup_original_unknown list them",
            bad(&problem),
            bad(&c)
        ),
    }
    Ok(s)
}

/// How often the cgroup tree is rescanned for new and removed cgroups (inotify reports them
/// sooner; this is the safety net).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// The shortest time between two reconciles driven by tree changes (at most 50 a second): a
/// burst of changes waits at most this long, and a storm costs at most 50 walks a second.
/// 200 ms was too long: of five podman containers started together after the agent, the ones
/// in the second batch were found after their burst had reached the limit and one was
/// OOM-killed in about half the runs (runtimes.rs); a container bursting at once needs to be
/// watched within tens of milliseconds of its mkdir.
const RECONCILE_MIN_INTERVAL: Duration = Duration::from_millis(20);

/// Tree changes not reconciled yet.
#[derive(Debug, Default)]
struct TreeBacklog {
    changes: usize,
    batches: usize,
    overflow: bool,
}

impl TreeBacklog {
    fn add(&mut self, c: &[TreeChange]) {
        self.overflow |= c.contains(&TreeChange::Overflow);
        self.changes += c.len();
        self.batches += 1;
    }

    fn pending(&self) -> bool {
        self.batches > 0
    }
}

/// Why a pressure signal's binding cgroup, which the agent does not manage, matters: it lies
/// above a managed cgroup (`ancestor`: the kernel's walk passed a watched level on its way up,
/// so the event was not observe-only) or below one (`descendant`: a container of a managed
/// pod; seen only with `agent.observe_all`). `None`: no managed cgroup is involved, or the
/// binding cgroup is managed.
fn binding_reason(
    ev: &MemEvent,
    managed: impl Fn(CgId) -> bool,
    index: &mut CgroupIndex,
) -> Option<&'static str> {
    if !ev.is_pressure() || ev.cpu().is_some() || managed(ev.target_id) {
        return None;
    }
    if !ev.observed {
        return Some("ancestor");
    }
    let path = index.path_of(ev.target_id)?.to_owned();
    let below_managed =
        managed::ancestors(&path).any(|a| index.id_of(a).is_some_and(|id| managed(id.0)));
    below_managed.then_some("descendant")
}

/// How often a pressure signal at an unmanaged binding limit is logged, per cgroup.
const BINDING_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counts (`scaler_unmanaged_binding_total{resource,reason}`) and logs, at most once per
/// cgroup every [`BINDING_LOG_INTERVAL`] (with how many were not logged), a pressure signal
/// whose binding limit is one the agent does not manage, next to one it does.
fn unmanaged_binding(
    ev: &MemEvent,
    state: &AgentState,
    index: &mut CgroupIndex,
    logged: &mut HashMap<CgId, (std::time::Instant, u64)>,
) {
    let reason = {
        let managed = lock(state.managed(Resource::Memory));
        binding_reason(ev, |id| managed.contains_key(&id), index)
    };
    let Some(reason) = reason else {
        return;
    };
    state
        .metrics
        .unmanaged_binding
        .get_or_create(&metrics::RefusedLabels {
            resource: Resource::Memory.as_str(),
            reason,
        })
        .inc();
    let now = std::time::Instant::now();
    let suppressed = match logged.get_mut(&ev.target_id) {
        Some((at, n)) if now.duration_since(*at) < BINDING_LOG_INTERVAL => {
            *n += 1;
            return;
        }
        Some((at, n)) => {
            *at = now;
            std::mem::take(n)
        }
        None => {
            if logged.len() >= 65536 {
                logged.retain(|_, (at, _)| now.duration_since(*at) < BINDING_LOG_INTERVAL);
            }
            logged.insert(ev.target_id, (now, 0));
            0
        }
    };
    let path = index.path_of(ev.target_id).unwrap_or("?").to_owned();
    let task = index.path_of(ev.cgroup_id).unwrap_or("?").to_owned();
    tracing::warn!(
        cgroup = %path,
        task_cgroup = %task,
        resource = Resource::Memory.as_str(),
        reason,
        kind = ev.kind.as_str(),
        usage = ev.usage,
        limit = ev.limit,
        suppressed,
        "{}",
        msg_unmanaged_binding(reason)
    );
}

/// The log message of [`unmanaged_binding`].
fn msg_unmanaged_binding(reason: &str) -> &'static str {
    if reason == "ancestor" {
        "pressure at the limit of an unmanaged ancestor of a managed cgroup: no limit the agent \
         may change can help (manage the ancestor, or raise its limit)"
    } else {
        "pressure at the limit of an unmanaged cgroup below a managed one: select it (for \
         Kubernetes containers: kubernetes = [\"pods\", \"containers\"])"
    }
}

fn consume(records: Receiver<Record>, state: &AgentState, h: Hierarchy) {
    let mut index = CgroupIndex::new(h);
    let mut refusals = HashMap::new();
    let mut binding_logged = HashMap::new();
    let mut handle = |r: Record| match r {
        Record::Refused(rr) => {
            let path = lock(state.managed(rr.resource))
                .get(&rr.refusal.cgroup)
                .map(|m| m.path.clone());
            let note = (rr.resource == Resource::Memory
                && rr.skip == crate::decider::Skip::Capped(crate::decider::Cap::Budget))
            .then(|| lock(&state.node).note.clone());
            crate::cmd::log_refusal(&rr, path.as_deref(), note.as_deref(), &mut refusals);
        }
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
            let res = a.action.resource;
            let managed = lock(state.managed(res))
                .get(&a.action.cgroup)
                .map(|m| (m.path.clone(), m.labels.clone(), m.mark.clone()));
            if let (Some(new), Some((p, labels, mark))) = (a.written, &managed) {
                lock(&state.state).changed_setting(p, new);
                state
                    .metrics
                    .set_limit(labels, resource::of(res).gauge(new));
                // The pod's spec follows (a resize patch, queued for the kubernetes thread).
                if let (Some(k), Setting::Memory(crate::cgroupfs::Limit::Bytes(b))) =
                    (&state.kube, new)
                {
                    let c = &labels.cgroup;
                    if !c.uid.is_empty() && !c.container_id.is_empty() {
                        k.limit_changed(&c.uid, &c.container_id, b, Some(mark.clone()));
                    }
                }
            }
            let path = managed.map(|(p, ..)| p);
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
            unmanaged_binding(&ev, state, &mut index, &mut binding_logged);
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
mod binding_tests {
    use std::{collections::HashSet, fs, os::unix::fs::MetadataExt};

    use super::*;
    use crate::cgroupfs::CgroupVersion;

    fn event(kind: EventKind, cgroup_id: u64, target_id: u64, observed: bool) -> MemEvent {
        MemEvent {
            kind,
            ts_ns: 1,
            cgroup_id,
            target_id,
            usage: 64 << 20,
            limit: 64 << 20,
            value: 0,
            pid: 1,
            tid: 1,
            comm: [0; 16],
            woke: !observed,
            ancestor: cgroup_id != target_id,
            observed,
        }
    }

    #[test]
    fn pressure_at_an_unmanaged_binding_limit_beside_a_managed_cgroup_has_a_reason() {
        // kubepods / pod / ctr, plus an unrelated cgroup.
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("memory");
        for d in ["kubepods/pod/ctr", "other"] {
            fs::create_dir_all(mount.join(d)).unwrap();
        }
        let ino = |d: &str| fs::metadata(mount.join(d)).unwrap().ino();
        let (kubepods, pod, ctr, other) = (
            ino("kubepods"),
            ino("kubepods/pod"),
            ino("kubepods/pod/ctr"),
            ino("other"),
        );
        let h = Hierarchy {
            controller: Controller::Memory,
            version: CgroupVersion::V1,
            mount: mount.clone(),
            mount_root: "/".into(),
            root: tmp.path().to_path_buf(),
        };
        let mut index = CgroupIndex::build(h).unwrap();
        let managed: HashSet<u64> = [pod].into();
        let is = |id: CgId| managed.contains(&id);
        let reason = |ev: MemEvent, index: &mut CgroupIndex| binding_reason(&ev, is, index);
        // kubepods binds above the managed pod: the kernel reported it as watched.
        let e = event(EventKind::ReclaimBegin, ctr, kubepods, false);
        assert_eq!(reason(e, &mut index), Some("ancestor"));
        // The container binds below the managed pod (pods-only policy): observe-only.
        let e = event(EventKind::ReclaimBegin, ctr, ctr, true);
        assert_eq!(reason(e, &mut index), Some("descendant"));
        let e = event(EventKind::OomKill, ctr, ctr, true);
        assert_eq!(reason(e, &mut index), Some("descendant"));
        // The managed cgroup itself binds: the engine answers it.
        let e = event(EventKind::UsageHigh, pod, pod, false);
        assert_eq!(reason(e, &mut index), None);
        // Nothing managed near it, or no pressure.
        let e = event(EventKind::ReclaimBegin, other, other, true);
        assert_eq!(reason(e, &mut index), None);
        let e = event(EventKind::ReclaimEnd, ctr, kubepods, false);
        assert_eq!(reason(e, &mut index), None);
    }
}
