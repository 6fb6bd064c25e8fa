//! `scaler status`: what the running agent manages, read over its status socket
//! (`agent.status_socket`, a Unix socket of mode 0600 in a directory created 0700). The agent
//! answers each connection with one JSON document ([`StatusDoc`]) and closes it (served by
//! [`super::endpoints`], concurrently, each connection within a deadline).

use std::{
    collections::{BTreeMap, VecDeque},
    io::Read,
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::state::StoredLimit;
use crate::units::format_size;

/// Format version of [`StatusDoc`].
pub const STATUS_VERSION: u32 = crate::schema::SCHEMA_VERSION;

/// How many recent actions the agent keeps for `scaler status`.
pub const RECENT_ACTIONS: usize = 64;
/// How many recent latencies the percentiles are computed over.
pub const LATENCY_WINDOW: usize = 4096;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the agent's JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The agent's status socket (default: `agent.status_socket` of --config, else
    /// /run/scaler/status.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read the socket path from this configuration file.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// One managed cgroup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ManagedStatus {
    pub cgroup: String,
    pub id: u64,
    pub policy: String,
    /// Kubernetes QoS class, pod UID and container id, when the path is a pod's.
    pub qos: Option<String>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// The limit in force (as the decider sees it).
    pub limit: Option<StoredLimit>,
    /// The limit before the agent first changed it.
    pub original_limit: StoredLimit,
    /// The original is not known: the agent started after its state file and the copy were
    /// lost or damaged, and `original_limit` is only the limit it found (maybe one it had
    /// raised). Restores leave the cgroup as it is.
    #[serde(default)]
    pub original_unknown: bool,
    pub usage_bytes: Option<u64>,
    /// usage / limit.
    pub utilization: Option<f64>,
    /// Bytes per second, as estimated from samples and events.
    pub allocation_rate: Option<f64>,
}

/// A cgroup a policy selects that the agent does not protect (see `capacity`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct UnprotectedStatus {
    pub cgroup: String,
    pub resource: String,
    /// `descriptors`, `watch_map_full`, `watch_failed`, `replaced`, `engine_busy`,
    /// `open_failed`.
    pub reason: String,
    pub error: String,
}

/// One cgroup whose CPU quota the agent manages (a cgroup of the cpu hierarchy: on cgroup v1
/// a different directory, with a different id, from the memory cgroup of the same workload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ManagedCpuStatus {
    pub cgroup: String,
    pub id: u64,
    pub policy: String,
    /// The quota in force in cores (as the decider sees it; `None`: no quota).
    pub quota_cores: Option<f64>,
    /// The quota before the agent first changed it, in cores (`None`: no quota).
    pub original_quota_cores: Option<f64>,
    /// As [`ManagedStatus::original_unknown`].
    #[serde(default)]
    pub original_unknown: bool,
    /// CPU used over the last sample interval, in cores.
    pub usage_cores: Option<f64>,
    /// usage / quota.
    pub utilization: Option<f64>,
}

/// One recent action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ActionStatus {
    /// Wall-clock time the agent logged it (Unix seconds).
    pub time_unix: f64,
    pub cgroup: String,
    pub resource: String,
    pub old: u64,
    pub new: u64,
    pub reason: String,
    /// `written`, `dry_run` or `failed`.
    pub outcome: String,
    /// Kernel event to write completion.
    pub latency_us: f64,
}

/// Reaction-latency percentiles over the last [`LATENCY_WINDOW`] actions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct LatencySummary {
    /// Actions with a latency since the agent started.
    pub count: u64,
    /// How many of them the percentiles cover.
    pub window: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// Counters since start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CounterStatus {
    pub events: BTreeMap<String, u64>,
    pub actions: u64,
    pub failed_actions: u64,
    pub records_dropped: u64,
    pub ringbuf_dropped: u64,
}

/// One part of the node's memory reserve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ReservePart {
    /// `config` (`node.memory_reserve`, out of `MemAvailable`), `kubelet_eviction` (the
    /// kubelet's `memory.available` eviction threshold plus `node.kubelet_eviction_margin`) or
    /// `kubelet_reserved` (`kubeReserved` plus `systemReserved`), the kubelet's two out of its
    /// `memory.available`.
    pub source: String,
    pub bytes: u64,
    /// Where it comes from, in words.
    pub from: String,
}

/// The kubelet's configuration as the agent reads it (`node.kubelet_config`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct KubeletStatus {
    /// The file.
    pub config: String,
    /// `file` (its figures are in force), `last_good` (it cannot be used now; the last good
    /// figures are in force) or `defaults` (none could be used yet; the kubelet's defaults are
    /// in force).
    pub in_force: String,
    /// Why the file cannot be used now.
    pub error: Option<String>,
    /// Reads of the file that could not be used, since start.
    pub errors: u64,
    /// The kubelet's `memory.available` as the agent bounds it (at most `MemFree +
    /// Inactive(file)`).
    pub memory_available_bytes: u64,
    /// The larger of `evictionHard` and `evictionSoft` `memory.available`, in bytes.
    pub eviction_threshold_bytes: u64,
    pub kube_reserved_bytes: u64,
    pub system_reserved_bytes: u64,
    /// Node allocatable: capacity minus the reservations and the hard eviction threshold.
    pub allocatable_bytes: u64,
    pub enforce_node_allocatable: Vec<String>,
}

/// The node's memory at the last sample (see the `node` module of the library).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NodeStatus {
    /// `MemTotal`.
    pub capacity_bytes: u64,
    /// `MemAvailable`.
    pub mem_available_bytes: u64,
    /// The largest reserve in force.
    pub reserve_bytes: u64,
    /// Each part of the reserve and where it comes from.
    pub reserve: Vec<ReservePart>,
    /// What raises may add (less what they granted since the sample).
    pub room_bytes: u64,
    /// The bound that gives the room: `config` or `kubelet`.
    pub room_bound: String,
    /// Usage of the managed memory cgroups that have no managed ancestor.
    pub managed_usage_bytes: Option<u64>,
    /// Memory in use (`MemTotal - MemFree`) outside them: unmanaged processes and cgroups, the
    /// kernel, page cache.
    pub unmanaged_usage_bytes: Option<u64>,
    /// The kubelet's configuration, when one is read.
    pub kubelet: Option<KubeletStatus>,
}

/// The document the agent answers with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct StatusDoc {
    /// [`crate::schema::SCHEMA_VERSION`] (`version` in agents before it was renamed).
    #[serde(alias = "version")]
    pub schema_version: u32,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub dry_run: bool,
    pub restore_on_exit: bool,
    pub memory_hierarchy: String,
    pub state_file: String,
    pub metrics_addr: Option<String>,
    pub managed: Vec<ManagedStatus>,
    /// Cgroups whose CPU quota is managed (absent from agents that predate CPU management).
    #[serde(default)]
    pub managed_cpu: Vec<ManagedCpuStatus>,
    /// Cgroups a policy selects that the agent does not protect, and why (absent from agents
    /// that predate it).
    #[serde(default)]
    pub unprotected: Vec<UnprotectedStatus>,
    pub counters: CounterStatus,
    pub recent_actions: Vec<ActionStatus>,
    pub reaction_latency_us: LatencySummary,
    /// The node's memory figures at the last sample (absent from agents that predate them).
    #[serde(default)]
    pub node: Option<NodeStatus>,
}

/// The agent's record of recent actions and latencies.
#[derive(Debug, Default)]
pub struct Recent {
    actions: VecDeque<ActionStatus>,
    latencies_ns: VecDeque<u64>,
    count: u64,
}

impl Recent {
    /// Adds an action (and its latency unless it failed).
    pub fn push(&mut self, a: ActionStatus, latency_ns: Option<u64>) {
        if self.actions.len() == RECENT_ACTIONS {
            self.actions.pop_front();
        }
        self.actions.push_back(a);
        if let Some(l) = latency_ns {
            if self.latencies_ns.len() == LATENCY_WINDOW {
                self.latencies_ns.pop_front();
            }
            self.latencies_ns.push_back(l);
            self.count += 1;
        }
    }

    /// The recent actions, oldest first.
    pub fn actions(&self) -> Vec<ActionStatus> {
        self.actions.iter().cloned().collect()
    }

    /// Percentiles (nearest rank) over the window, in µs.
    pub fn latency(&self) -> LatencySummary {
        let mut v: Vec<u64> = self.latencies_ns.iter().copied().collect();
        v.sort_unstable();
        let pct = |p: f64| crate::stats::percentile(&v, p).map(|ns| ns as f64 / 1000.0);
        LatencySummary {
            count: self.count,
            window: v.len(),
            p50: pct(0.50),
            p99: pct(0.99),
            max: v.last().map(|m| *m as f64 / 1000.0),
        }
    }
}

/// Binds the status socket: creates its directory (0700) if missing, replaces a stale socket
/// (one nobody answers on), refuses to steal a live agent's, and sets mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the status socket's directory {}", dir.display()))?;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; set agent.status_socket elsewhere",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another agent answers on {}; stop it first or set agent.status_socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding the status socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

/// Reads the agent's status document from `socket`.
pub fn query(socket: &Path) -> anyhow::Result<StatusDoc> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent's status socket {} (is `scaler agent` running? see --socket)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading {}", socket.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "the agent's answer on {} is not a status document",
            socket.display()
        )
    })
}

/// `scaler status`.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let socket = match (&args.socket, &args.config) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => crate::config::Config::load(Some(c))?.agent.status_socket,
        (None, None) => crate::config::AgentConfig::default().status_socket,
    };
    let doc = query(&socket)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(&doc, now_unix()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Wall-clock Unix seconds.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn limit_str(l: Option<StoredLimit>) -> String {
    match l {
        None => "-".into(),
        Some(StoredLimit::Bytes(b)) => format_size(b),
        Some(StoredLimit::Word(_)) => "max".into(),
    }
}

fn us(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}us"))
}

fn duration_str(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{:.1}s", secs.max(0.0)),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Unprotected cgroups listed by the human-readable table (all of them in JSON).
const UNPROTECTED_SHOWN: usize = 20;

/// The human-readable table.
pub fn render(d: &StatusDoc, now: f64) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "scaler agent pid {}, up {}, {} managed cgroup{}{}{}",
        d.pid,
        duration_str(d.uptime_seconds),
        d.managed.len(),
        if d.managed.len() == 1 { "" } else { "s" },
        if d.dry_run { ", DRY RUN" } else { "" },
        if d.restore_on_exit {
            ", restores limits on exit"
        } else {
            ""
        },
    );
    let l = &d.reaction_latency_us;
    let _ = writeln!(
        o,
        "reaction latency: {} action{}, p50 {} p99 {} max {} (last {})",
        l.count,
        if l.count == 1 { "" } else { "s" },
        us(l.p50),
        us(l.p99),
        us(l.max),
        l.window
    );
    let c = &d.counters;
    let events: Vec<String> = c.events.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        o,
        "events: {}; dropped: ring buffer {}, records {}",
        if events.is_empty() {
            "none".into()
        } else {
            events.join(", ")
        },
        c.ringbuf_dropped,
        c.records_dropped
    );
    if let Some(n) = &d.node {
        let parts: Vec<String> = n
            .reserve
            .iter()
            .filter(|p| p.bytes > 0 || p.source == "config")
            .map(|p| format!("{} {}", p.source, format_size(p.bytes)))
            .collect();
        let _ = writeln!(
            o,
            "node memory: capacity {}, available {}, reserve {} ({}), room for raises {} \
             (bound: {}), unmanaged usage {}",
            format_size(n.capacity_bytes),
            format_size(n.mem_available_bytes),
            format_size(n.reserve_bytes),
            parts.join(", "),
            format_size(n.room_bytes),
            n.room_bound,
            n.unmanaged_usage_bytes.map_or("-".into(), format_size),
        );
        if let Some(k) = &n.kubelet {
            let _ = writeln!(
                o,
                "kubelet config {} ({}): allocatable {}, memory.available {}{}",
                k.config,
                k.in_force,
                format_size(k.allocatable_bytes),
                format_size(k.memory_available_bytes),
                k.error
                    .as_ref()
                    .map_or(String::new(), |e| format!("; ERROR: {e}")),
            );
        }
    }
    if !d.unprotected.is_empty() {
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        for u in &d.unprotected {
            *by_reason.entry(u.reason.as_str()).or_default() += 1;
        }
        let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(
            o,
            "NOT PROTECTED: {} selected cgroup{} ({}):",
            d.unprotected.len(),
            if d.unprotected.len() == 1 { "" } else { "s" },
            reasons.join(", ")
        );
        for u in d.unprotected.iter().take(UNPROTECTED_SHOWN) {
            let _ = writeln!(
                o,
                "  {} [{}] {}: {}",
                u.cgroup, u.resource, u.reason, u.error
            );
        }
        if d.unprotected.len() > UNPROTECTED_SHOWN {
            let _ = writeln!(
                o,
                "  ... and {} more (scaler status --json lists them all)",
                d.unprotected.len() - UNPROTECTED_SHOWN
            );
        }
    }
    let _ = writeln!(o);
    let mut rows = vec![[
        "CGROUP".to_string(),
        "POLICY".into(),
        "POD/CONTAINER".into(),
        "LIMIT".into(),
        "ORIGINAL".into(),
        "USAGE".into(),
        "U".into(),
    ]];
    for m in &d.managed {
        let pod = match (&m.pod_uid, &m.container_id) {
            (Some(p), Some(c)) => format!("{p}/{}", crate::k8s::short_id(c)),
            (Some(p), None) => p.clone(),
            _ => "-".into(),
        };
        rows.push([
            m.cgroup.clone(),
            m.policy.clone(),
            pod,
            limit_str(m.limit),
            if m.original_unknown {
                format!("{}?", limit_str(Some(m.original_limit)))
            } else {
                limit_str(Some(m.original_limit))
            },
            m.usage_bytes.map_or("-".into(), format_size),
            m.utilization.map_or("-".into(), |u| format!("{u:.2}")),
        ]);
    }
    table(&mut o, &rows);
    if !d.managed_cpu.is_empty() {
        let cores = |c: Option<f64>| c.map_or("max".into(), crate::units::format_cores);
        let _ = writeln!(o, "\nCPU");
        let mut rows = vec![[
            "CGROUP".to_string(),
            "POLICY".into(),
            "QUOTA".into(),
            "ORIGINAL".into(),
            "USAGE".into(),
            "U".into(),
        ]];
        for m in &d.managed_cpu {
            rows.push([
                m.cgroup.clone(),
                m.policy.clone(),
                cores(m.quota_cores),
                if m.original_unknown {
                    format!("{}?", cores(m.original_quota_cores))
                } else {
                    cores(m.original_quota_cores)
                },
                m.usage_cores.map_or("-".into(), crate::units::format_cores),
                m.utilization.map_or("-".into(), |u| format!("{u:.2}")),
            ]);
        }
        table(&mut o, &rows);
    }
    if !d.recent_actions.is_empty() {
        let _ = writeln!(o, "\nRECENT ACTIONS");
        let mut rows = vec![[
            "AGO".to_string(),
            "CGROUP".into(),
            "RESOURCE".into(),
            "OLD".into(),
            "NEW".into(),
            "REASON".into(),
            "LATENCY".into(),
        ]];
        for a in d.recent_actions.iter().rev().take(20) {
            let (old, new) = if a.resource == "memory" {
                (format_size(a.old), format_size(a.new))
            } else {
                (format!("{}us", a.old), format!("{}us", a.new))
            };
            rows.push([
                duration_str(now - a.time_unix),
                a.cgroup.clone(),
                a.resource.clone(),
                old,
                new,
                if a.outcome == "written" {
                    a.reason.clone()
                } else {
                    format!("{} ({})", a.reason, a.outcome)
                },
                format!("{:.1}us", a.latency_us),
            ]);
        }
        table(&mut o, &rows);
    }
    o
}

fn table<const N: usize>(o: &mut String, rows: &[[String; N]]) {
    use std::fmt::Write as _;
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        let _ = writeln!(o, "{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(i: u64, latency_us: f64) -> ActionStatus {
        ActionStatus {
            time_unix: 1000.0 + i as f64,
            cgroup: "/a".into(),
            resource: "memory".into(),
            old: 64 << 20,
            new: 96 << 20,
            reason: "pressure".into(),
            outcome: "written".into(),
            latency_us,
        }
    }

    #[test]
    fn recent_keeps_a_bounded_ring_and_percentiles() {
        let mut r = Recent::default();
        for i in 1..=100u64 {
            r.push(action(i, i as f64), Some(i * 1000));
        }
        r.push(action(101, 0.0), None);
        let l = r.latency();
        assert_eq!(l.count, 100);
        assert_eq!(l.window, 100);
        assert_eq!(l.p50, Some(50.0));
        assert_eq!(l.p99, Some(99.0));
        assert_eq!(l.max, Some(100.0));
        let acts = r.actions();
        assert_eq!(acts.len(), RECENT_ACTIONS);
        assert_eq!(acts.last().unwrap().time_unix, 1101.0);
        assert_eq!(Recent::default().latency().p50, None);
    }

    fn doc() -> StatusDoc {
        StatusDoc {
            schema_version: STATUS_VERSION,
            pid: 42,
            uptime_seconds: 125.0,
            dry_run: false,
            restore_on_exit: true,
            memory_hierarchy: "/sys/fs/cgroup/memory".into(),
            state_file: "/var/lib/scaler/state.json".into(),
            metrics_addr: Some("127.0.0.1:9477".into()),
            managed: vec![ManagedStatus {
                cgroup:
                    "/kubepods/burstable/pod0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/0123456789abcdef00"
                        .into(),
                id: 7,
                policy: "elastic".into(),
                qos: Some("burstable".into()),
                pod_uid: Some("0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into()),
                container_id: Some("0123456789abcdef00".into()),
                limit: Some(StoredLimit::Bytes(96 << 20)),
                original_limit: StoredLimit::Bytes(64 << 20),
                original_unknown: false,
                usage_bytes: Some(80 << 20),
                utilization: Some(0.8333),
                allocation_rate: None,
            }],
            managed_cpu: vec![ManagedCpuStatus {
                cgroup: "/batch/job".into(),
                id: 9,
                policy: "elastic".into(),
                quota_cores: Some(1.5),
                original_quota_cores: Some(0.2),
                original_unknown: false,
                usage_cores: Some(1.2),
                utilization: Some(0.8),
            }],
            unprotected: vec![UnprotectedStatus {
                cgroup: "/batch/late".into(),
                resource: "memory".into(),
                reason: "watch_map_full".into(),
                error: "the kernel's watched-cgroups map is full".into(),
            }],
            counters: CounterStatus {
                events: [("reclaim_begin".to_string(), 3)].into_iter().collect(),
                actions: 1,
                ..Default::default()
            },
            recent_actions: vec![action(0, 42.5)],
            reaction_latency_us: LatencySummary {
                count: 1,
                window: 1,
                p50: Some(42.5),
                p99: Some(42.5),
                max: Some(42.5),
            },
            node: Some(NodeStatus {
                capacity_bytes: 32 << 30,
                mem_available_bytes: 20 << 30,
                reserve_bytes: 3 << 30,
                reserve: vec![
                    ReservePart {
                        source: "config".into(),
                        bytes: 1 << 30,
                        from: "node.memory_reserve".into(),
                    },
                    ReservePart {
                        source: "kubelet_reserved".into(),
                        bytes: 2 << 30,
                        from: "/var/lib/kubelet/config.yaml".into(),
                    },
                ],
                room_bytes: 9 << 30,
                room_bound: "kubelet".into(),
                managed_usage_bytes: Some(80 << 20),
                unmanaged_usage_bytes: Some(11 << 30),
                kubelet: Some(KubeletStatus {
                    config: "/var/lib/kubelet/config.yaml".into(),
                    in_force: "last_good".into(),
                    error: Some("`evictionHard[memory.available]`: bad".into()),
                    errors: 1,
                    memory_available_bytes: 12 << 30,
                    eviction_threshold_bytes: 100 << 20,
                    kube_reserved_bytes: 1 << 30,
                    system_reserved_bytes: 1 << 30,
                    allocatable_bytes: (30 << 30) - (100 << 20),
                    enforce_node_allocatable: vec!["pods".into()],
                }),
            }),
        }
    }

    #[test]
    fn the_document_round_trips_through_json() {
        let d = doc();
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<StatusDoc>(&text).unwrap(), d);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["managed"][0]["limit"], 96 << 20);
    }

    #[test]
    fn the_table_shows_limits_pods_and_actions() {
        let t = render(&doc(), 1010.0);
        assert!(
            t.contains("pid 42, up 2m05s, 1 managed cgroup, restores limits on exit"),
            "{t}"
        );
        assert!(t.contains("p50 42us"), "{t}");
        assert!(
            t.contains("0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/0123456789ab "),
            "{t}"
        );
        assert!(t.contains("0.83"), "{t}");
        assert!(t.contains("RECENT ACTIONS"), "{t}");
        assert!(
            t.contains("NOT PROTECTED: 1 selected cgroup (watch_map_full 1):")
                && t.contains("  /batch/late [memory] watch_map_full: the kernel's"),
            "{t}"
        );
        assert!(t.contains("10.0s"), "{t}");
        assert!(t.contains("42.5us"), "{t}");
        // The CPU table: quota, original, usage in cores and U.
        let cpu_row = t
            .lines()
            .find(|l| l.starts_with("/batch/job"))
            .unwrap_or_else(|| panic!("{t}"));
        let cols: Vec<&str> = cpu_row.split_whitespace().collect();
        assert_eq!(
            cols,
            ["/batch/job", "elastic", "1.5", "0.2", "1.2", "0.80"],
            "{t}"
        );
    }

    #[test]
    fn the_table_shows_the_node_figures_and_the_kubelet_config() {
        let t = render(&doc(), 1010.0);
        assert!(
            t.contains(
                "node memory: capacity 32GiB, available 20GiB, reserve 3GiB (config 1GiB, \
                 kubelet_reserved 2GiB), room for raises 9GiB (bound: kubelet), unmanaged usage \
                 11GiB"
            ),
            "{t}"
        );
        assert!(
            t.contains("kubelet config /var/lib/kubelet/config.yaml (last_good)")
                && t.contains("ERROR: `evictionHard[memory.available]`: bad"),
            "{t}"
        );
        let mut v = serde_json::to_value(doc()).unwrap();
        v.as_object_mut().unwrap().remove("node");
        let d: StatusDoc = serde_json::from_value(v).unwrap();
        assert!(!render(&d, 1010.0).contains("node memory"));
    }

    #[test]
    fn a_document_without_cpu_from_an_older_agent_still_reads() {
        let mut v = serde_json::to_value(doc()).unwrap();
        v.as_object_mut().unwrap().remove("managed_cpu");
        v.as_object_mut().unwrap().remove("unprotected");
        let d: StatusDoc = serde_json::from_value(v).unwrap();
        assert!(d.managed_cpu.is_empty() && d.unprotected.is_empty());
        assert!(!render(&d, 1010.0).contains("\nCPU\n"));
    }

    #[test]
    fn socket_is_0600_in_a_0700_directory_and_answers_json() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("run/scaler/status.sock");
        let l = bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        super::super::endpoints::start(
            None,
            Some(super::super::endpoints::Status {
                listener: l,
                doc: std::sync::Arc::new(doc),
            }),
        )
        .unwrap();
        assert_eq!(query(&path).unwrap(), doc());
        // A live socket is not stolen.
        assert!(bind(&path)
            .unwrap_err()
            .to_string()
            .contains("another agent"));
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_regular_file_is_not() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.sock");
        drop(UnixListener::bind(&path).unwrap());
        bind(&path).unwrap();
        let file = d.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&file)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
    }
}
