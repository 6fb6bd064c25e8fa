//! The node agent's configuration: TOML, documented key by key in
//! `config/scaler.example.toml`.
//!
//! The built-in default ([`Config::default`], also what `scaler agent` runs with when given no
//! file) observes every cgroup and **acts on none**: only a `[[policy]]` selects cgroups to
//! manage, so running the agent with no configuration is safe on any host.
//!
//! Every section and key is optional (`#[serde(default)]`, with explicit `Default` impls);
//! unknown keys are rejected (`deny_unknown_fields`). Sizes are `"64M"`-style strings or
//! plain byte counts, CPU amounts `1.5`, `"0.2"` or `"200m"`, durations `"500ms"`, `"30s"`,
//! `"2m"` (see [`crate::units`]).
//!
//! Policies: the first `[[policy]]` whose `match` globs select a cgroup's path (relative to
//! the hierarchy root, with a leading `/`) wins. `*` matches within one path component, `**`
//! any number of components. With `require_xattr = true`, the cgroup must also carry the
//! extended attribute named by `agent.opt_in_xattr` with the value `1` or the policy's name,
//! set where it cannot be forged (see [`AgentConfig::opt_in_trust`]): a `trusted.` attribute
//! (the default, `trusted.scaler`: only CAP_SYS_ADMIN sets those), or any other on a cgroup
//! directory owned by root or by a uid of `agent.opt_in_owners` and writable by its owner only.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern};
use serde::{Deserialize, Serialize};

use crate::decider::{CpuPolicy, MemoryPolicy, Policy, Resource};
use crate::units::{ByteSize, Cores, HumanDuration, GIB, MIB};

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[agent]`: how the agent runs.
    pub agent: AgentConfig,
    /// `[node]`: node-wide budgets.
    pub node: NodeConfig,
    /// `[kubernetes]`: pod metadata and resize patches from the Kubernetes API.
    pub kubernetes: KubernetesConfig,
    /// `[[policy]]`: which cgroups are managed, and how. First match wins.
    #[serde(rename = "policy")]
    pub policies: Vec<PolicyConfig>,
}

/// `[agent]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Serve Prometheus metrics.
    pub metrics: bool,
    /// Where metrics are served (loopback unless configured).
    pub metrics_addr: SocketAddr,
    /// Unix socket for `scaler status`.
    pub status_socket: PathBuf,
    /// Where the agent records the limits it changed (to restore them).
    pub state_file: PathBuf,
    /// On exit, put back the limits managed cgroups had before the agent changed them (and,
    /// with `kubernetes.resize`, patch the pod specs it resized back to them).
    pub restore_on_exit: bool,
    /// Log each decision without writing anything.
    pub dry_run: bool,
    /// Period of the slow path (samples of usage, working set, PSI, cpu.stat).
    pub sample_interval: HumanDuration,
    /// Report events of every cgroup (observe-all); only policy-selected ones are managed.
    /// Events of cgroups the agent does not manage are observe-only: they never wake the
    /// engine and the kernel sheds them under load (`scaler_observe_shed_total`).
    pub observe_all: bool,
    /// Name of the cgroup extended attribute that opts a cgroup in (see `require_xattr`).
    /// A `trusted.` name counts wherever it is set; any other (`user.`, `security.`) only on
    /// a directory owned by root or by a uid of `opt_in_owners` (see
    /// [`AgentConfig::opt_in_trust`]).
    pub opt_in_xattr: String,
    /// The most cgroups of each resource the agent manages and watches: the kernel's
    /// per-cgroup maps are sized for it at load, and RLIMIT_NOFILE is raised for it (one or
    /// two descriptors per cgroup). A cgroup beyond it is refused loudly (an error, the
    /// `scaler_cgroups_unprotected` metric and `scaler status`).
    pub max_cgroups: u32,
    /// Uids besides root whose cgroup directories may opt in with a non-`trusted.` attribute.
    pub opt_in_owners: Vec<u32>,
    /// The kubelet's `--cgroup-root`s: a `kubepods` (cgroupfs driver) or `kubepods.slice`
    /// (systemd driver) cgroup is read as Kubernetes' only directly below one of these (see
    /// [`crate::k8s::parse_under`]). A `kubepods` directory anywhere else (in a user's
    /// delegated subtree) is an ordinary cgroup.
    pub kubelet_cgroup_roots: Vec<String>,
    /// Keep the kernel's BPF run-time statistics on while the agent runs
    /// (`scaler_bpf_program_*` metrics). Off by default: they cost two clock reads on every
    /// run of every BPF program of the node. Takes effect at start.
    pub bpf_stats: bool,
    /// SCHED_FIFO priority of the engine threads (1-99; 0: normal scheduling). They block in
    /// `poll(2)` and do bounded work per event (decide, one write per limit file), so a
    /// realtime priority costs the node nothing while idle and lets a reaction preempt whatever
    /// runs; the kernel's realtime throttling (`kernel.sched_rt_runtime_us`) bounds a runaway.
    pub realtime_priority: u8,
    /// One engine thread per CPU the agent may run on (where it may run on 2-8 CPUs; on more,
    /// one thread: see [`crate::engine::MAX_ENGINE_THREADS`]), each pinned to its CPU:
    /// the one on the CPU where the kernel event happened handles it, without waking another
    /// CPU (about 20-40 µs less per reaction where measured). `false`: one thread. Each
    /// wake-up of the ring buffer (at most one per cgroup's pressure episode) wakes every one.
    pub engine_per_cpu: bool,
}

/// Default `agent.max_cgroups`.
pub const DEFAULT_MAX_CGROUPS: u32 = 16384;
/// Largest `agent.max_cgroups` accepted.
pub const MAX_MAX_CGROUPS: u32 = 1 << 20;

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            metrics_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9477)),
            status_socket: PathBuf::from("/run/scaler/status.sock"),
            state_file: PathBuf::from("/var/lib/scaler/state.json"),
            restore_on_exit: false,
            dry_run: false,
            sample_interval: HumanDuration::secs(1),
            observe_all: true,
            opt_in_xattr: DEFAULT_OPT_IN_XATTR.to_owned(),
            opt_in_owners: Vec::new(),
            kubelet_cgroup_roots: vec!["/".to_owned()],
            max_cgroups: DEFAULT_MAX_CGROUPS,
            bpf_stats: false,
            realtime_priority: crate::engine::DEFAULT_REALTIME_PRIORITY as u8,
            engine_per_cpu: true,
        }
    }
}

/// Default `agent.opt_in_xattr`: a `trusted.` attribute, which only CAP_SYS_ADMIN can set (and
/// read: the agent keeps that capability while a policy requires the opt-in).
pub const DEFAULT_OPT_IN_XATTR: &str = "trusted.scaler";

/// Why an opt-in attribute that is present does not count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Untrusted {
    /// The directory's owner is neither root nor in `agent.opt_in_owners`.
    Owner { uid: u32 },
    /// The directory is writable by its group or others (who could then set the attribute).
    Writable { mode: u32 },
}

impl Untrusted {
    /// A short reason (a metric label).
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Owner { .. } => "owner",
            Self::Writable { .. } => "writable",
        }
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Owner { uid } => write!(
                f,
                "the directory is owned by uid {uid}, who may set a user attribute: only root and \
                 agent.opt_in_owners may opt in with it (or use a trusted. attribute)"
            ),
            Self::Writable { mode } => write!(
                f,
                "the directory is writable by its group or others (mode {:o}), who may set the \
                 attribute",
                mode & 0o7777
            ),
        }
    }
}

impl AgentConfig {
    /// Whether the opt-in attribute is a `trusted.` one (settable, and readable, only with
    /// CAP_SYS_ADMIN: it counts wherever it is found).
    pub fn opt_in_is_trusted_name(&self) -> bool {
        self.opt_in_xattr.starts_with("trusted.")
    }

    /// Whether an opt-in attribute found on a cgroup directory owned by `uid`, with file mode
    /// `mode`, counts. A `trusted.` attribute always does. Any other counts only where nobody
    /// but root (or a uid of `opt_in_owners`) could have set it: the directory is owned by one
    /// of those and not writable by group or others (a user owning a delegated cgroup can set
    /// `user.` attributes on it, and would otherwise opt itself in).
    pub fn opt_in_trust(&self, uid: u32, mode: u32) -> Result<(), Untrusted> {
        if self.opt_in_is_trusted_name() {
            return Ok(());
        }
        if uid != 0 && !self.opt_in_owners.contains(&uid) {
            return Err(Untrusted::Owner { uid });
        }
        if mode & 0o022 != 0 {
            return Err(Untrusted::Writable { mode });
        }
        Ok(())
    }
}

/// `[node]`: the node budgets. Give either a reserve or an absolute budget, not both.
///
/// Memory: a raise is never bigger than what the node can still back beyond the reserve: its
/// available memory (`MemAvailable` of /proc/meminfo, sampled every `agent.sample_interval`)
/// minus `memory_reserve`, less what raises granted since that sample. `memory_budget = B` is
/// the same as `memory_reserve = MemTotal - B` (the node's memory in use stays below `B`).
/// Limits are not summed: overcommitted limits (the Kubernetes norm) and unlimited cgroups do
/// not lock raises out. CPU: the quotas of top-level managed cgroups add up to at most the CPU
/// count minus `cpu_reserve` (or `cpu_budget`), an unlimited quota counting for its usage.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Memory a raise never takes: raises are bounded by `MemAvailable` minus this
    /// (default 1 GiB).
    pub memory_reserve: Option<ByteSize>,
    /// Memory the node may have in use through raises (instead of a reserve: the reserve is
    /// `MemTotal` minus this).
    pub memory_budget: Option<ByteSize>,
    /// CPU kept out of the budget, in cores (default 0.5).
    pub cpu_reserve: Option<Cores>,
    /// Absolute CPU budget in cores (instead of a reserve).
    pub cpu_budget: Option<Cores>,
    /// The kubelet's configuration file (a `KubeletConfiguration`, YAML or JSON), whose
    /// `kubeReserved`, `systemReserved` and `memory.available` eviction thresholds bound raises
    /// too (see [`crate::node`]); re-read at every sample. Default: `/var/lib/kubelet/config.yaml`
    /// while that file exists; `""`: none is read.
    pub kubelet_config: Option<PathBuf>,
    /// Memory kept above the kubelet's eviction threshold (default 128 MiB): what unmanaged
    /// processes may take within a sample interval.
    pub kubelet_eviction_margin: Option<ByteSize>,
}

/// Where the kubelet's configuration is read from (`node.kubelet_config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeletSource {
    /// `node.kubelet_config = ""`.
    Off,
    /// Not configured: [`crate::kubelet::DEFAULT_KUBELET_CONFIG`], used while it exists.
    Auto(PathBuf),
    /// A configured file: one that cannot be read or used is an error (logged and counted).
    File(PathBuf),
}

impl KubeletSource {
    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Off => None,
            Self::Auto(p) | Self::File(p) => Some(p),
        }
    }
}

/// `[kubernetes]`: whether and how the agent talks to the Kubernetes API (see
/// [`crate::kube`]). Everything the agent needs to protect a container comes from its cgroup
/// path; the API adds names (namespace, pod, container), the pods' `scaler.io/` annotations
/// (which only tighten a policy) and, with `resize`, keeps the pod's spec in step with raises.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// `"off"` (the default), `"in-cluster"` (the pod's service account token, CA and
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`), or `"kubeconfig"` (the file `kubeconfig`, else
    /// `$KUBECONFIG` or `~/.kube/config`).
    pub api: KubeApi,
    /// The kubeconfig file for `api = "kubeconfig"` (default: `$KUBECONFIG`, `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: only its pods are watched (`fieldSelector=spec.nodeName=...`). Default:
    /// the `NODE_NAME` environment variable (the DaemonSet sets it from `spec.nodeName`).
    pub node_name: Option<String>,
    /// After the agent changes a container's memory limit, patch the pod's `resize`
    /// subresource (Kubernetes 1.33+) with the new limit, so that the pod's spec says what the
    /// cgroup holds.
    pub resize: bool,
    /// The least time between two resize patches of one pod (the latest limit wins).
    pub resize_interval: HumanDuration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            api: KubeApi::Off,
            kubeconfig: None,
            node_name: None,
            resize: false,
            resize_interval: HumanDuration::secs(10),
        }
    }
}

/// Default `node.kubelet_eviction_margin`.
pub const DEFAULT_KUBELET_EVICTION_MARGIN: u64 = 128 * MIB;

impl KubernetesConfig {
    /// The environment variable the node name is read from by default.
    pub const NODE_NAME_ENV: &'static str = "NODE_NAME";

    /// `node_name`, or the `NODE_NAME` environment variable (`None`: neither is set).
    pub fn node_name(&self) -> Option<String> {
        self.node_name.clone().or_else(|| {
            std::env::var(Self::NODE_NAME_ENV)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        })
    }
}

/// `kubernetes.api`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeApi {
    /// No API calls: names and ids come from cgroup paths only.
    #[default]
    Off,
    /// The pod's service account (a DaemonSet).
    InCluster,
    /// A kubeconfig file (an agent run outside the cluster, or a test).
    Kubeconfig,
}

/// Default `node.memory_reserve`.
pub const DEFAULT_MEMORY_RESERVE: u64 = GIB;
/// Default `node.cpu_reserve` (cores).
pub const DEFAULT_CPU_RESERVE: f64 = 0.5;

/// One `[[policy]]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name (also the xattr value that selects this policy).
    pub name: String,
    /// Globs on the cgroup path relative to the hierarchy root (`/batch/*`, `/jobs/**`).
    /// May be left out when `kubernetes` names the roles the policy selects (then, if given,
    /// a cgroup must match both).
    #[serde(rename = "match")]
    pub matches: Vec<String>,
    /// Select only cgroups carrying `agent.opt_in_xattr` = `1` or this policy's name.
    pub require_xattr: bool,
    /// Select only Kubernetes pod and container cgroups of these QoS classes
    /// (`"guaranteed"`, `"burstable"`, `"besteffort"`; see [`crate::k8s`]). Empty: any cgroup.
    pub qos: Vec<crate::k8s::QosClass>,
    /// Select Kubernetes cgroups by role (`"pods"`, `"containers"`), wherever the kubelet's
    /// cgroup root is (`agent.kubelet_cgroup_roots`, either cgroup driver), rather than by
    /// path globs. A pod sandbox (pause) container is never selected (see
    /// [`crate::k8s::is_sandbox`]). Empty: roles play no part.
    pub kubernetes: Vec<crate::k8s::Role>,
    /// `[policy.memory]`: manage the memory limit (absent: memory is only observed).
    pub memory: Option<MemoryPolicyConfig>,
    /// `[policy.cpu]`: manage the CPU quota (absent: CPU is only observed).
    pub cpu: Option<CpuPolicyConfig>,
    /// `matches`, compiled when the configuration is parsed.
    #[serde(skip)]
    patterns: Vec<Pattern>,
}

/// `[policy.memory]`: see [`MemoryPolicy`] for the rules each key feeds.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryPolicyConfig {
    pub min: ByteSize,
    /// None: no per-cgroup maximum (the node budget still bounds top-level cgroups).
    pub max: Option<ByteSize>,
    pub step_min: ByteSize,
    pub step_fraction: f64,
    pub lookahead: HumanDuration,
    pub step_max_fraction: f64,
    pub headroom: ByteSize,
    pub headroom_fraction: f64,
    pub safety_margin: ByteSize,
    pub escalation_window: HumanDuration,
    pub max_escalation: u32,
    pub cooldown: HumanDuration,
    pub down_interval: HumanDuration,
    pub down_fraction: f64,
    pub min_change: ByteSize,
    pub max_raises_per_sec: u32,
    pub psi_threshold: f64,
    /// Write a limit on a selected cgroup that has none (bring it to `max`). Off by default:
    /// a cgroup found unlimited (a BestEffort pod, a pause container) is left unlimited.
    pub limit_unlimited: bool,
    /// Bring a limit its owner set above `max` down to `max` (step by step, never below
    /// usage). Off by default: `max` bounds the agent's raises only, and an owner's higher
    /// limit is left as it is.
    pub lower_to_max: bool,
}

impl Default for MemoryPolicyConfig {
    /// The decider's defaults ([`MemoryPolicy::default`]).
    fn default() -> Self {
        let d = MemoryPolicy::default();
        Self {
            min: ByteSize(d.min),
            max: None,
            step_min: ByteSize(d.step_min),
            step_fraction: d.step_fraction,
            lookahead: HumanDuration(std::time::Duration::from_nanos(d.lookahead_ns)),
            step_max_fraction: d.step_max_fraction,
            headroom: ByteSize(d.headroom),
            headroom_fraction: d.headroom_fraction,
            safety_margin: ByteSize(d.safety_margin),
            escalation_window: HumanDuration(std::time::Duration::from_nanos(
                d.escalation_window_ns,
            )),
            max_escalation: d.max_escalation,
            cooldown: HumanDuration(std::time::Duration::from_nanos(d.cooldown_ns)),
            down_interval: HumanDuration(std::time::Duration::from_nanos(d.down_interval_ns)),
            down_fraction: d.down_fraction,
            min_change: ByteSize(d.min_change),
            max_raises_per_sec: d.max_raises_per_sec,
            psi_threshold: d.psi_threshold,
            limit_unlimited: d.limit_unlimited,
            lower_to_max: d.lower_to_max,
        }
    }
}

impl MemoryPolicyConfig {
    /// The decider's policy.
    pub fn to_policy(&self) -> MemoryPolicy {
        MemoryPolicy {
            min: self.min.0,
            max: self.max.map_or(u64::MAX, |m| m.0),
            step_min: self.step_min.0,
            step_fraction: self.step_fraction,
            lookahead_ns: self.lookahead.as_nanos_u64(),
            step_max_fraction: self.step_max_fraction,
            headroom: self.headroom.0,
            headroom_fraction: self.headroom_fraction,
            safety_margin: self.safety_margin.0,
            escalation_window_ns: self.escalation_window.as_nanos_u64(),
            max_escalation: self.max_escalation,
            cooldown_ns: self.cooldown.as_nanos_u64(),
            down_interval_ns: self.down_interval.as_nanos_u64(),
            down_fraction: self.down_fraction,
            min_change: self.min_change.0,
            max_raises_per_sec: self.max_raises_per_sec,
            psi_threshold: self.psi_threshold,
            limit_unlimited: self.limit_unlimited,
            lower_to_max: self.lower_to_max,
        }
    }
}

/// `[policy.cpu]`: see [`CpuPolicy`] for the rules each key feeds.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpuPolicyConfig {
    pub min: Cores,
    /// None: no per-cgroup maximum (the node's CPU count and budget still bound it).
    pub max: Option<Cores>,
    pub step: Cores,
    pub step_fraction: f64,
    pub quota_near: f64,
    pub runq_latency_target: HumanDuration,
    pub headroom: f64,
    pub escalation_window: HumanDuration,
    pub max_escalation: u32,
    pub cooldown: HumanDuration,
    pub down_interval: HumanDuration,
    pub down_fraction: f64,
    pub min_change: Cores,
    pub max_raises_per_sec: u32,
}

impl Default for CpuPolicyConfig {
    /// The decider's defaults ([`CpuPolicy::default`]).
    fn default() -> Self {
        let d = CpuPolicy::default();
        let dur = |ns| HumanDuration(std::time::Duration::from_nanos(ns));
        Self {
            min: Cores(d.min_cores),
            max: None,
            step: Cores(d.step_cores),
            step_fraction: d.step_fraction,
            quota_near: d.quota_near_fraction,
            runq_latency_target: dur(d.runq_latency_target_us * 1_000),
            headroom: d.headroom_fraction,
            escalation_window: dur(d.escalation_window_ns),
            max_escalation: d.max_escalation,
            cooldown: dur(d.cooldown_ns),
            down_interval: dur(d.down_interval_ns),
            down_fraction: d.down_fraction,
            min_change: Cores(d.min_change_cores),
            max_raises_per_sec: d.max_raises_per_sec,
        }
    }
}

impl CpuPolicyConfig {
    /// The decider's policy; without a `max`, the node's CPU count is the maximum.
    pub fn to_policy(&self, node: &NodeInfo) -> CpuPolicy {
        CpuPolicy {
            min_cores: self.min.0,
            max_cores: self.max.map_or(f64::from(node.nproc), |m| m.0),
            step_cores: self.step.0,
            step_fraction: self.step_fraction,
            quota_near_fraction: self.quota_near,
            runq_latency_target_us: u64::try_from(self.runq_latency_target.0.as_micros())
                .unwrap_or(u64::MAX),
            headroom_fraction: self.headroom,
            escalation_window_ns: self.escalation_window.as_nanos_u64(),
            max_escalation: self.max_escalation,
            cooldown_ns: self.cooldown.as_nanos_u64(),
            down_interval_ns: self.down_interval.as_nanos_u64(),
            down_fraction: self.down_fraction,
            min_change_cores: self.min_change.0,
            max_raises_per_sec: self.max_raises_per_sec,
        }
    }
}

/// What validation needs to know about the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Physical memory (`MemTotal` of /proc/meminfo), bytes.
    pub mem_total: u64,
    /// Online CPUs.
    pub nproc: u32,
}

impl NodeInfo {
    /// Reads `/proc/meminfo` and the CPU count of this machine.
    pub fn detect() -> std::io::Result<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let mem_total = parse_meminfo_total(&meminfo).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "/proc/meminfo has no parsable MemTotal line",
            )
        })?;
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Ok(Self { mem_total, nproc })
    }
}

/// `MemTotal:       24608332 kB` -> bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    parse_meminfo(meminfo, "MemTotal:")
}

/// The value of a `/proc/meminfo` line (`key` with its colon), in bytes.
pub(crate) fn parse_meminfo(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(key))?;
    let mut it = line[key.len()..].split_whitespace();
    let kib: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => kib.checked_mul(1024),
        Some(_) => None,
    }
}

/// The memory the node still has for new work: `MemAvailable` of /proc/meminfo (bytes).
///
/// The kernel's own estimate of what can be allocated without swapping: free memory plus the
/// page cache and slab it can reclaim, less the watermarks. It is the node-level counterpart of
/// the kubelet's `memory.available` eviction signal (capacity minus the root cgroup's working
/// set, i.e. usage less inactive file pages) and reads the same on cgroup v1 and v2, in a VM and
/// in a container that sees the host's /proc (the DaemonSet). The agent's sampler reads it every
/// `agent.sample_interval`; the hot path never does.
pub fn mem_available() -> std::io::Result<u64> {
    mem_available_in(&std::fs::read_to_string("/proc/meminfo")?)
}

/// [`mem_available`] from the text of a `/proc/meminfo`.
pub fn mem_available_in(meminfo: &str) -> std::io::Result<u64> {
    parse_meminfo(meminfo, "MemAvailable:").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/meminfo has no parsable MemAvailable line (Linux 3.14 or later has one)",
        )
    })
}

/// One validation failure: the key at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `policy[0].memory.min`.
    pub key: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong form (the message names the
    /// line, the key and the problem).
    #[error("invalid configuration {origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    /// Well-formed but contradictory or out of range; every problem found is listed.
    #[error("invalid configuration {origin}:{}", list(problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

impl ConfigError {
    /// The validation problems (empty for read and parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

const INLINE: &str = "(inline)";

impl Config {
    /// Parses and checks a configuration (everything that does not depend on the machine;
    /// see [`Config::validate`] for the rest).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, INLINE)
    }

    fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        let mut problems = Vec::new();
        config.compile(&mut problems);
        config.check(None, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Loads `path`, or gives the built-in defaults when `path` is `None`. A path that was
    /// given but does not exist is an error.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &format!("in {}", path.display()))
    }

    /// Checks the configuration against the machine: budgets and maxima within physical
    /// memory and CPUs, reserves below them.
    pub fn validate(&self, node: &NodeInfo) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.check(Some(node), &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: "for this node".to_owned(),
                problems,
            })
        }
    }

    /// The memory budget (bytes): what the node may have in use through raises,
    /// `node.memory_budget`, or physical memory minus the reserve.
    pub fn memory_budget(&self, node: &NodeInfo) -> u64 {
        node.mem_total.saturating_sub(self.memory_reserve(node))
    }

    /// The memory no raise takes (bytes): `node.memory_reserve`, or physical memory minus
    /// `node.memory_budget`, or 1 GiB.
    pub fn memory_reserve(&self, node: &NodeInfo) -> u64 {
        match (self.node.memory_budget, self.node.memory_reserve) {
            (Some(b), _) => node.mem_total.saturating_sub(b.0),
            (None, r) => r.map_or(DEFAULT_MEMORY_RESERVE, |r| r.0),
        }
    }

    /// What the node can back beyond the reserve when it has `mem_available` bytes available
    /// ([`mem_available`]): the memory raises may spend.
    pub fn memory_room(&self, node: &NodeInfo, mem_available: u64) -> u64 {
        mem_available.saturating_sub(self.memory_reserve(node))
    }

    /// Where the kubelet's configuration is read from (`node.kubelet_config`).
    pub fn kubelet_source(&self) -> KubeletSource {
        match &self.node.kubelet_config {
            None => KubeletSource::Auto(PathBuf::from(crate::kubelet::DEFAULT_KUBELET_CONFIG)),
            Some(p) if p.as_os_str().is_empty() => KubeletSource::Off,
            Some(p) => KubeletSource::File(p.clone()),
        }
    }

    /// The margin kept above the kubelet's eviction threshold (bytes).
    pub fn kubelet_eviction_margin(&self) -> u64 {
        self.node
            .kubelet_eviction_margin
            .map_or(DEFAULT_KUBELET_EVICTION_MARGIN, |m| m.0)
    }

    /// Things that are valid but probably not meant, each with its key: a `[policy.memory]`
    /// without a `max` gives unbounded limits (a cgroup it selects that has no limit stays
    /// unlimited, and raises go as far as the node can back).
    pub fn warnings(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (i, p) in self.policies.iter().enumerate() {
            if let Some(m) = &p.memory {
                if m.max.is_none() {
                    out.push(Problem {
                        key: format!("policy[{i}].memory.max"),
                        message: format!(
                            "policy {:?} gives an unbounded memory limit: without a max, a \
                             cgroup it selects that has no limit stays unlimited, and raises go \
                             as far as the node can back (MemAvailable minus \
                             node.memory_reserve); set max (e.g. \"2G\") to bound them",
                            p.name
                        ),
                    });
                }
            }
        }
        out
    }

    /// The CPU budget (cores): `node.cpu_budget`, or the CPU count minus the reserve.
    pub fn cpu_budget(&self, node: &NodeInfo) -> f64 {
        match (self.node.cpu_budget, self.node.cpu_reserve) {
            (Some(b), _) => b.0,
            (None, r) => (f64::from(node.nproc) - r.map_or(DEFAULT_CPU_RESERVE, |r| r.0)).max(0.0),
        }
    }

    /// True if some policy manages CPU (has a `[policy.cpu]`).
    pub fn manages_cpu(&self) -> bool {
        self.policies.iter().any(|p| p.cpu.is_some())
    }

    /// The policy that manages the cgroup at `path` (relative to the hierarchy root, e.g.
    /// `/batch/job1`), given the value of its `agent.opt_in_xattr` attribute if it has one.
    /// `None`: observe only.
    pub fn policy_for(&self, path: &str, xattr: Option<&str>) -> Option<&PolicyConfig> {
        let trimmed = path.trim_end_matches('/');
        let normalized;
        let path = if trimmed.starts_with('/') {
            if trimmed.is_empty() {
                "/"
            } else {
                trimmed
            }
        } else {
            normalized = format!("/{trimmed}");
            &normalized
        };
        let roots = &self.agent.kubelet_cgroup_roots;
        self.policies.iter().find(|p| p.selects(path, xattr, roots))
    }

    /// The pod and container of the cgroup at `path`, when it lies in a `kubepods` tree
    /// directly below one of `agent.kubelet_cgroup_roots`.
    pub fn pod_of(&self, path: &str) -> Option<crate::k8s::PodCgroup> {
        crate::k8s::parse_under(path, &self.agent.kubelet_cgroup_roots)
    }

    /// Whether some policy requires the opt-in attribute.
    pub fn uses_opt_in(&self) -> bool {
        self.policies.iter().any(|p| p.require_xattr)
    }

    fn compile(&mut self, problems: &mut Vec<Problem>) {
        for (i, p) in self.policies.iter_mut().enumerate() {
            p.patterns.clear();
            for (j, m) in p.matches.iter().enumerate() {
                let key = format!("policy[{i}].match[{j}]");
                if !m.starts_with('/') {
                    problems.push(Problem {
                        key,
                        message: format!(
                            "{m:?} must start with '/' (paths are relative to the cgroup \
                             hierarchy root, e.g. \"/batch/*\")"
                        ),
                    });
                    continue;
                }
                match Pattern::new(m) {
                    Ok(pat) => p.patterns.push(pat),
                    Err(e) => problems.push(Problem {
                        key,
                        message: format!("{m:?} is not a valid glob: {}", e.msg),
                    }),
                }
            }
        }
    }

    fn check(&self, node: Option<&NodeInfo>, problems: &mut Vec<Problem>) {
        let mut bad = |key: String, message: String| problems.push(Problem { key, message });
        let a = &self.agent;
        if a.sample_interval.0.is_zero() {
            bad("agent.sample_interval".into(), "must be above zero".into());
        }
        if !["user.", "trusted.", "security."]
            .iter()
            .any(|ns| a.opt_in_xattr.starts_with(ns) && a.opt_in_xattr.len() > ns.len())
        {
            bad(
                "agent.opt_in_xattr".into(),
                format!(
                    "{:?} is not an extended attribute name; use e.g. \"{DEFAULT_OPT_IN_XATTR}\"",
                    a.opt_in_xattr
                ),
            );
        }
        for (i, r) in a.kubelet_cgroup_roots.iter().enumerate() {
            let ok = r == "/"
                || (r.starts_with('/')
                    && !r.ends_with('/')
                    && !r.contains("//")
                    && !r.split('/').any(|c| c == "." || c == "..")
                    && !r.contains(['*', '?', '[', ']']));
            if !ok {
                bad(
                    format!("agent.kubelet_cgroup_roots[{i}]"),
                    format!(
                        "{r:?} is not a cgroup path: give the kubelet's --cgroup-root as a path \
                         from the hierarchy root, e.g. \"/\" or \"/kubelet.slice\" (no globs)"
                    ),
                );
            }
        }

        if a.realtime_priority > 99 {
            bad(
                "agent.realtime_priority".into(),
                format!(
                    "{} is not a SCHED_FIFO priority: use 1-99, or 0 for normal scheduling",
                    a.realtime_priority
                ),
            );
        }
        if a.max_cgroups == 0 || a.max_cgroups > MAX_MAX_CGROUPS {
            bad(
                "agent.max_cgroups".into(),
                format!(
                    "{} is out of range: give 1 to {MAX_MAX_CGROUPS} (default {DEFAULT_MAX_CGROUPS})",
                    a.max_cgroups
                ),
            );
        }

        let k = &self.kubernetes;
        if k.resize_interval.0 < std::time::Duration::from_secs(1) {
            bad(
                "kubernetes.resize_interval".into(),
                format!(
                    "{} is too short: give at least 1s (default 10s), one patch per pod per \
                     interval",
                    k.resize_interval
                ),
            );
        }
        if k.resize && k.api == KubeApi::Off {
            bad(
                "kubernetes.resize".into(),
                "resize patches need the API: set kubernetes.api = \"in-cluster\" (or \
                 \"kubeconfig\")"
                    .into(),
            );
        }
        if k.kubeconfig.is_some() && k.api != KubeApi::Kubeconfig {
            bad(
                "kubernetes.kubeconfig".into(),
                "only used with kubernetes.api = \"kubeconfig\"".into(),
            );
        }
        if let Some(name) = &k.node_name {
            if name.is_empty()
                || name.len() > 253
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            {
                bad(
                    "kubernetes.node_name".into(),
                    format!("{name:?} is not a node name (a DNS subdomain: lowercase letters, digits, '-' and '.')"),
                );
            }
        }

        let n = &self.node;
        if n.memory_budget.is_some() && n.memory_reserve.is_some() {
            bad(
                "node.memory_budget".into(),
                "give either memory_budget or memory_reserve, not both".into(),
            );
        }
        if let Some(p) = &n.kubelet_config {
            if !p.as_os_str().is_empty() && !p.is_absolute() {
                bad(
                    "node.kubelet_config".into(),
                    format!(
                        "{:?} is not an absolute path: give the kubelet's configuration file \
                         (e.g. \"{}\"), or \"\" to read none",
                        p.display().to_string(),
                        crate::kubelet::DEFAULT_KUBELET_CONFIG
                    ),
                );
            }
        }
        if n.cpu_budget.is_some() && n.cpu_reserve.is_some() {
            bad(
                "node.cpu_budget".into(),
                "give either cpu_budget or cpu_reserve, not both".into(),
            );
        }
        if let Some(node) = node {
            if let Some(b) = n.memory_budget {
                if b.0 > node.mem_total {
                    bad(
                        "node.memory_budget".into(),
                        format!(
                            "{b} is above this node's physical memory ({})",
                            ByteSize(node.mem_total)
                        ),
                    );
                }
            }
            if let Some(r) = n.memory_reserve {
                if r.0 >= node.mem_total {
                    bad(
                        "node.memory_reserve".into(),
                        format!(
                            "{r} leaves no budget: this node has {} of memory",
                            ByteSize(node.mem_total)
                        ),
                    );
                }
            }
            let cpus = f64::from(node.nproc);
            if let Some(b) = n.cpu_budget {
                if b.0 > cpus {
                    bad(
                        "node.cpu_budget".into(),
                        format!("{b} cores is above this node's {} CPUs", node.nproc),
                    );
                }
            }
            if let Some(r) = n.cpu_reserve {
                if r.0 >= cpus {
                    bad(
                        "node.cpu_reserve".into(),
                        format!(
                            "{r} cores leaves no budget: this node has {} CPUs",
                            node.nproc
                        ),
                    );
                }
            }
        }

        let mut names = std::collections::HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            let key = |k: &str| format!("policy[{i}].{k}");
            if p.name.is_empty() {
                bad(key("name"), "every policy needs a name".into());
            } else if !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bad(
                    key("name"),
                    format!("{:?}: use letters, digits, '-', '_' and '.'", p.name),
                );
            } else if !names.insert(p.name.as_str()) {
                bad(
                    key("name"),
                    format!("{:?} is used by an earlier policy", p.name),
                );
            }
            if p.matches.is_empty() && p.kubernetes.is_empty() {
                bad(
                    key("match"),
                    "empty: list the cgroup paths (globs) this policy selects, e.g. \
                     [\"/batch/*\"], or the Kubernetes roles it selects (kubernetes = \
                     [\"containers\"])"
                        .into(),
                );
            }
            if p.limit_unlimited_requested() && p.memory.as_ref().is_some_and(|m| m.max.is_none()) {
                bad(
                    key("memory.limit_unlimited"),
                    "needs a max: the limit written on an unlimited cgroup is the policy's max"
                        .into(),
                );
            }
            if p.memory.is_none() && p.cpu.is_none() {
                bad(
                    key("memory"),
                    "the policy manages nothing: add [policy.memory] and/or [policy.cpu]".into(),
                );
            }
            if let Some(m) = &p.memory {
                check_memory(m, &|k| key(&format!("memory.{k}")), node, &mut bad);
            }
            if let Some(c) = &p.cpu {
                check_cpu(c, &|k| key(&format!("cpu.{k}")), node, &mut bad);
            }
        }
    }
}

fn fraction_in(v: f64, lo: f64, hi: f64) -> bool {
    v.is_finite() && v >= lo && v <= hi
}

fn check_memory(
    m: &MemoryPolicyConfig,
    key: &dyn Fn(&str) -> String,
    node: Option<&NodeInfo>,
    bad: &mut dyn FnMut(String, String),
) {
    if m.min.0 == 0 {
        bad(key("min"), "must be above zero (e.g. \"16M\")".into());
    }
    if let Some(max) = m.max {
        if max < m.min {
            bad(key("max"), format!("{max} is below min {}", m.min));
        }
        if let Some(node) = node {
            if max.0 > node.mem_total {
                bad(
                    key("max"),
                    format!(
                        "{max} is above this node's physical memory ({})",
                        ByteSize(node.mem_total)
                    ),
                );
            }
        }
    }
    if m.step_min.0 == 0 {
        bad(key("step_min"), "must be above zero (e.g. \"64M\")".into());
    } else if m.step_min < m.min_change {
        bad(
            key("step_min"),
            format!(
                "{} is below min_change {}: no raise could ever be made",
                m.step_min, m.min_change
            ),
        );
    }
    if m.min_change.0 > 0 && m.min_change.0 < MIB / 16 {
        bad(
            key("min_change"),
            format!(
                "{} is below 64KiB: limits are page-granular and tiny changes only add writes",
                m.min_change
            ),
        );
    }
    if !fraction_in(m.step_fraction, 0.0, 4.0) {
        bad(
            key("step_fraction"),
            format!("{} is outside 0..=4", m.step_fraction),
        );
    }
    if !fraction_in(m.step_max_fraction, 0.0, 16.0) {
        bad(
            key("step_max_fraction"),
            format!("{} is outside 0..=16 (0: no cap)", m.step_max_fraction),
        );
    }
    if !fraction_in(m.headroom_fraction, 0.0, 0.5) {
        bad(
            key("headroom_fraction"),
            format!(
                "{} is outside 0..=0.5 (0: always `headroom`; above half the limit, a lowered \
                 limit would warn at once)",
                m.headroom_fraction
            ),
        );
    }
    if !fraction_in(m.down_fraction, f64::MIN_POSITIVE, 1.0) {
        bad(
            key("down_fraction"),
            format!("{} is outside (0, 1]", m.down_fraction),
        );
    }
    if !fraction_in(m.psi_threshold, 0.0, 1.0) {
        bad(
            key("psi_threshold"),
            format!("{} is outside 0..=1", m.psi_threshold),
        );
    }
    if m.max_raises_per_sec == 0 {
        bad(key("max_raises_per_sec"), "must be at least 1".into());
    }
    if m.max_escalation > 16 {
        bad(
            key("max_escalation"),
            format!("{} doublings is absurd; use at most 16", m.max_escalation),
        );
    }
    if m.down_interval.0.is_zero() {
        bad(key("down_interval"), "must be above zero".into());
    }
}

fn check_cpu(
    c: &CpuPolicyConfig,
    key: &dyn Fn(&str) -> String,
    node: Option<&NodeInfo>,
    bad: &mut dyn FnMut(String, String),
) {
    // The kernel's smallest quota is 1 ms per period: 0.01 cores at the default 100 ms period.
    if c.min.0 < 0.01 {
        bad(
            key("min"),
            format!("{} cores is below the smallest quota, 0.01", c.min),
        );
    }
    if let Some(max) = c.max {
        if max.0 < c.min.0 {
            bad(key("max"), format!("{max} cores is below min {}", c.min));
        }
        if let Some(node) = node {
            if max.0 > f64::from(node.nproc) {
                bad(
                    key("max"),
                    format!("{max} cores is above this node's {} CPUs", node.nproc),
                );
            }
        }
    }
    if c.step.0 <= 0.0 {
        bad(key("step"), "must be above zero (e.g. 0.2)".into());
    } else if c.step.0 < c.min_change.0 {
        bad(
            key("step"),
            format!(
                "{} is below min_change {}: no raise could ever be made",
                c.step, c.min_change
            ),
        );
    }
    if !fraction_in(c.step_fraction, 0.0, 4.0) {
        bad(
            key("step_fraction"),
            format!("{} is outside 0..=4", c.step_fraction),
        );
    }
    if !(c.quota_near.is_finite() && c.quota_near > 0.0 && c.quota_near < 1.0) {
        bad(
            key("quota_near"),
            format!(
                "{} is outside (0, 1): it is the fraction of the quota used within a period",
                c.quota_near
            ),
        );
    }
    if c.runq_latency_target.0.is_zero() {
        bad(
            key("runq_latency_target"),
            "must be above zero (e.g. \"5ms\")".into(),
        );
    }
    if !fraction_in(c.headroom, 0.0, 10.0) {
        bad(
            key("headroom"),
            format!(
                "{} is outside 0..=10 (a fraction of observed usage)",
                c.headroom
            ),
        );
    }
    if !fraction_in(c.down_fraction, f64::MIN_POSITIVE, 1.0) {
        bad(
            key("down_fraction"),
            format!("{} is outside (0, 1]", c.down_fraction),
        );
    }
    if c.max_raises_per_sec == 0 {
        bad(key("max_raises_per_sec"), "must be at least 1".into());
    }
    if c.max_escalation > 16 {
        bad(
            key("max_escalation"),
            format!("{} doublings is absurd; use at most 16", c.max_escalation),
        );
    }
    if c.down_interval.0.is_zero() {
        bad(key("down_interval"), "must be above zero".into());
    }
}

impl PolicyConfig {
    /// Whether this policy selects the cgroup at `path` (normalized, leading `/`).
    fn selects(&self, path: &str, xattr: Option<&str>, kubelet_roots: &[String]) -> bool {
        const OPTS: MatchOptions = MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        if !self.qos.is_empty() || !self.kubernetes.is_empty() {
            let Some(pod) = crate::k8s::parse_under(path, kubelet_roots) else {
                return false;
            };
            if pod.pod_uid.is_none() || (!self.qos.is_empty() && !self.qos.contains(&pod.qos)) {
                return false;
            }
            if !self.kubernetes.is_empty() && !self.kubernetes.contains(&pod.role()) {
                return false;
            }
        }
        if self.require_xattr {
            match xattr.map(str::trim) {
                Some(v) if v == "1" || v == self.name => {}
                _ => return false,
            }
        }
        (self.patterns.is_empty() && !self.kubernetes.is_empty())
            || self.patterns.iter().any(|p| p.matches_with(path, OPTS))
    }

    /// Whether the policy asks for limits on unlimited cgroups (`memory.limit_unlimited`).
    fn limit_unlimited_requested(&self) -> bool {
        self.memory.as_ref().is_some_and(|m| m.limit_unlimited)
    }

    /// Whether this policy selects by Kubernetes role (then pod sandboxes are never selected).
    pub fn selects_kubernetes_roles(&self) -> bool {
        !self.kubernetes.is_empty()
    }

    /// The memory policy, if this policy manages memory.
    pub fn memory_policy(&self) -> Option<MemoryPolicy> {
        self.memory.as_ref().map(MemoryPolicyConfig::to_policy)
    }

    /// The CPU policy, if this policy manages CPU.
    pub fn cpu_policy(&self, node: &NodeInfo) -> Option<CpuPolicy> {
        self.cpu.as_ref().map(|c| c.to_policy(node))
    }

    /// What this policy says about `resource`, if it manages it.
    pub fn policy(&self, resource: Resource, node: &NodeInfo) -> Option<Policy> {
        match resource {
            Resource::Memory => self.memory_policy().map(Policy::Memory),
            Resource::Cpu => self.cpu_policy(node).map(Policy::Cpu),
        }
    }
}

#[cfg(test)]
mod tests;
