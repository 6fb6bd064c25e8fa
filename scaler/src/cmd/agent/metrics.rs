//! The agent's Prometheus metrics (through `prometheus-client`), served on
//! `agent.metrics_addr` (`GET /metrics`) by [`super::endpoints`]: OpenMetrics text to a
//! client that asks for it (Prometheus does), the Prometheus text format 0.0.4 otherwise
//! (`curl`, `promtool check metrics`).
//!
//! The families follow the exposition conventions `promtool check metrics` checks: every one
//! has HELP text, counters end in `_total`, times are seconds, ratios end in `_ratio`, and no
//! sample is infinite (an unlimited limit has no `scaler_cgroup_limit` sample and a
//! `scaler_cgroup_limit_unlimited` of 1). Every family without a per-cgroup label has its
//! series from start-up (zeros for each known label value), so dashboards and alerts see them
//! on an idle node.
//!
//! Counters fed by the engine's records (events, actions, latencies) move as the records
//! arrive; totals owned by the kernel or the engine thread (ring-buffer drops, BPF run time)
//! and per-cgroup limits are refreshed by the agent's main loop every `sample_interval`; the
//! agent's own CPU time and memory are read at each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{prometheus_text, text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{decider::WriteOutcome, engine::ActionRecord};

/// Reaction-latency bucket bounds in seconds: 10 µs .. 100 ms.
pub const LATENCY_BUCKETS: [f64; 14] = [
    10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 1.0,
];

/// `{resource}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

/// `{kind}` of a kernel event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// `{resource, reason, outcome}` of an action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub resource: &'static str,
    pub reason: &'static str,
    pub outcome: &'static str,
}

/// `{resource, reason}` of a refused raise, or of a cgroup the agent does not protect.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub resource: &'static str,
    pub reason: &'static str,
}

/// `{program}` of a BPF program.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: &'static str,
}

/// Labels of a managed cgroup: its path, the policy managing it, and for Kubernetes cgroups
/// the pod's QoS class, `namespace`, `pod` (name), `uid` (pod UID), `container` (name) and
/// `container_id`, named as kube-state-metrics names them (`kube_pod_info{namespace,pod,uid}`,
/// `kube_pod_container_info{container,container_id}`), so `on(uid)` joins work.
///
/// Every series carries every label; one not known is empty, as kube-state-metrics leaves an
/// unknown value empty rather than dropping the label (PromQL treats `x=""` as absent). The
/// pod UID and container id come from the cgroup path and are set for every pod/container
/// cgroup; the namespace, pod and container names are not in the path and stay empty until
/// the agent reads them from the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CgroupLabels {
    pub cgroup: String,
    pub policy: String,
    pub qos: String,
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub container_id: String,
}

impl CgroupLabels {
    /// Labels for `path` managed by `policy`, with the Kubernetes names of `pod` (see
    /// [`crate::config::Config::pod_of`]).
    pub fn new(path: &str, policy: &str, pod: Option<&crate::k8s::PodCgroup>) -> Self {
        Self {
            cgroup: path.to_owned(),
            policy: policy.to_owned(),
            qos: pod.map(|p| p.qos.as_str().to_owned()).unwrap_or_default(),
            namespace: String::new(),
            pod: String::new(),
            uid: pod.and_then(|p| p.pod_uid.clone()).unwrap_or_default(),
            container: String::new(),
            container_id: pod.and_then(|p| p.container_id.clone()).unwrap_or_default(),
        }
    }
}

impl CgroupLabels {
    /// The same labels with the namespace, pod and container names the API gave for this
    /// cgroup's pod (see [`crate::kube`]); unchanged without them.
    pub fn with_names(mut self, pod: Option<&crate::kube::PodInfo>) -> Self {
        if let Some(p) = pod {
            self.namespace = p.namespace.clone();
            self.pod = p.name.clone();
            if let Some(c) = p.container(&self.container_id) {
                self.container = c.name.clone();
            }
        }
        self
    }
}

/// `{op}` of a Kubernetes API error: `watch` (the list and watch of this node's pods) or
/// `resize` (a resize patch).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeOpLabels {
    pub op: &'static str,
}

/// `{result, reason}` of a resize: `patched`, `refused` (by the API), `failed` (transport or
/// 5xx, retried), or `skipped` with the reason (see [`crate::kube::NoResize`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResizeLabels {
    pub result: &'static str,
    pub reason: &'static str,
}

/// `{version, kernel, revision}` of `scaler_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version (`scaler --version`).
    pub version: &'static str,
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// The Rust target the agent was built for.
    pub arch: &'static str,
}

type LatencyFamily = Family<ResourceLabels, Histogram, fn() -> Histogram>;
type F64Counter = Counter<f64, AtomicU64>;
type F64Gauge = Gauge<f64, AtomicU64>;

/// A managed cgroup's labels plus the resource and the unit of the value (`byte`, `core`), as
/// kube-state-metrics labels its resource families
/// (`kube_pod_container_resource_limits{resource, unit}`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    #[prometheus(flatten)]
    pub cgroup: CgroupLabels,
    pub resource: &'static str,
    pub unit: &'static str,
}

impl LimitLabels {
    /// The labels of `cgroup`'s series for `resource`.
    pub fn new(cgroup: &CgroupLabels, resource: &dyn crate::resource::ManagedResource) -> Self {
        Self {
            cgroup: cgroup.clone(),
            resource: resource.resource().as_str(),
            unit: resource.unit(),
        }
    }

    /// The utilization series' labels (no unit: a ratio).
    pub fn utilization(&self) -> CgroupResourceLabels {
        CgroupResourceLabels {
            cgroup: self.cgroup.clone(),
            resource: self.resource,
        }
    }
}

/// Every metric the agent exports. Cheap to share (`Arc`); all updates are lock-free except
/// the creation of a new label set.
pub struct Metrics {
    registry: Registry,
    /// `scaler_reaction_latency_seconds{resource}`: kernel event to limit in place.
    pub reaction_latency: LatencyFamily,
    /// `scaler_events_total{kind}`.
    pub events: Family<KindLabels, Counter>,
    /// `scaler_actions_total{resource,reason,outcome}`.
    pub actions: Family<ActionLabels, Counter>,
    /// `scaler_managed_cgroups{resource}`.
    pub managed: Family<ResourceLabels, Gauge>,
    /// `scaler_cgroup_limit{cgroup,policy,qos,namespace,pod,uid,container,container_id,
    /// resource,unit}`: bytes of memory, cores of CPU quota; no sample while unlimited (see
    /// [`Metrics::set_limit`]).
    pub limit: Family<LimitLabels, F64Gauge>,
    /// `scaler_cgroup_limit_unlimited{...}`: 1 while the cgroup has no limit, else 0.
    pub limit_unlimited: Family<LimitLabels, Gauge>,
    /// `scaler_cgroup_original_limit{...}`: before the agent first changed it (no sample:
    /// unlimited).
    pub original_limit: Family<LimitLabels, F64Gauge>,
    /// `scaler_cgroup_original_limit_unlimited{...}`: 1 while the original is no limit.
    pub original_limit_unlimited: Family<LimitLabels, Gauge>,
    /// `scaler_cgroup_original_unknown{...}`: 1 while the original is unknown (the state
    /// file and its copy were lost; restores leave the cgroup as it is).
    pub original_unknown: Family<LimitLabels, F64Gauge>,
    /// `scaler_cgroup_usage{...}`: memory in use; CPU used over the last sample interval.
    pub usage: Family<LimitLabels, F64Gauge>,
    /// `scaler_ringbuf_dropped_total`: events the kernel could not submit (ring buffer full).
    pub ringbuf_dropped: Counter,
    /// `scaler_observe_shed_total`: observe-only events (cgroups the agent does not manage,
    /// seen through `agent.observe_all`) the kernel shed to keep the ring buffer for managed
    /// ones.
    pub observe_shed: Counter,
    /// `scaler_ringbuf_records_total`: records the engine read.
    pub ringbuf_records: Counter,
    /// `scaler_records_dropped_total`: engine records the agent's slow side missed.
    pub records_dropped: Counter,
    /// `scaler_decode_errors_total`.
    pub decode_errors: Counter,
    /// `scaler_failed_writes_total`.
    pub failed_writes: Counter,
    /// `scaler_unmanaged_ancestor_binds_total`.
    pub unmanaged_ancestor_binds: Counter,
    /// `scaler_unmanaged_binding_total{resource,reason}`: pressure signals whose binding limit
    /// is one the agent does not manage, next to one it does (`ancestor`: above a managed
    /// cgroup; `descendant`: below one, such as a container of a managed pod).
    pub unmanaged_binding: Family<RefusedLabels, Counter>,
    /// `scaler_external_changes_total{resource}`: limits their owner (a runtime, the kubelet,
    /// systemd, a person) wrote while the agent managed them, adopted as the new original.
    pub external_changes: Family<ResourceLabels, Counter>,
    /// `scaler_raises_refused_total{resource,reason}`: raises a cgroup under pressure did not
    /// get (`at_max`, `budget`, `ancestor`, `rate_limited`, `below_hysteresis`).
    pub raises_refused: Family<RefusedLabels, Counter>,
    /// `scaler_node_memory_room_bytes`: what raises may add at the last sample (see
    /// [`crate::node`]).
    pub node_memory_room: Gauge,
    /// `scaler_node_memory_capacity_bytes`: `MemTotal`.
    pub node_memory_capacity: Gauge,
    /// `scaler_node_memory_available_bytes`: `MemAvailable` at the last sample.
    pub node_memory_available: Gauge,
    /// `scaler_node_memory_reserve_bytes{source}`: each part of the reserve (see
    /// [`RESERVE_SOURCES`]; the kubelet's are 0 while no kubelet configuration is read).
    pub node_memory_reserve: Family<SourceLabels, Gauge>,
    /// `scaler_node_memory_unmanaged_bytes`: memory in use outside the managed cgroups.
    pub node_memory_unmanaged: Gauge,
    /// `scaler_kubelet_config_errors_total`: reads of the kubelet's configuration that could
    /// not be used.
    pub kubelet_config_errors: Counter,
    /// `scaler_bpf_program_run_seconds_total{program}` (only with `agent.bpf_stats`).
    pub bpf_run_seconds: Family<ProgramLabels, F64Counter>,
    /// `scaler_bpf_program_runs_total{program}`.
    pub bpf_runs: Family<ProgramLabels, Counter>,
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: F64Counter,
    /// `process_resident_memory_bytes`.
    pub resident_bytes: Gauge,
    /// `scaler_config_reloads_total{result}`.
    pub reloads: Family<ResultLabels, Counter>,
    /// `scaler_cgroup_cpu_throttled_seconds_total{...}`: `cpu.stat` throttled time.
    pub cpu_throttled_seconds: Family<CgroupLabels, F64Counter>,
    /// `scaler_cgroup_utilization_ratio{...,resource}`: U = R/C, usage over limit (memory) or
    /// CPU used over quota (cpu), as the decider sees it.
    pub utilization: Family<CgroupResourceLabels, F64Gauge>,
    /// `scaler_cgroups_unprotected{resource,reason}`: cgroups a policy selects that the agent
    /// does not protect now (see `capacity::reason`).
    pub cgroups_unprotected: Family<RefusedLabels, Gauge>,
    /// `scaler_cgroups_refused_total{resource,reason}`: refusals to manage a selected cgroup.
    pub cgroups_refused: Family<RefusedLabels, Counter>,
    /// `scaler_engine_commands_refused_total`: commands the engine's full channel refused.
    pub commands_refused: Counter,
    /// `scaler_build_info{version,kernel,arch}`: always 1.
    pub build_info: Family<BuildLabels, Gauge>,
    /// `scaler_kubernetes_api_errors_total{op}`: failed Kubernetes API requests (`watch`,
    /// `resize`).
    pub kubernetes_api_errors: Family<KubeOpLabels, Counter>,
    /// `scaler_kubernetes_pods`: this node's pods known from the API.
    pub kubernetes_pods: Gauge,
    /// `scaler_kubernetes_resizes_total{result,reason}`.
    pub kubernetes_resizes: Family<ResizeLabels, Counter>,
    /// `scaler_kubernetes_annotations_rejected_total{reason}`: `scaler.io/` annotations not
    /// taken as written: `invalid` (ignored), `clamped` (bounded by the policy).
    pub kubernetes_annotations_rejected: Family<ResultLabels, Counter>,
}

/// A managed cgroup's labels plus the resource (`memory`, `cpu`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CgroupResourceLabels {
    #[prometheus(flatten)]
    pub cgroup: CgroupLabels,
    pub resource: &'static str,
}

/// `{source}` of a part of the node's memory reserve: `config`, `kubelet_eviction`,
/// `kubelet_reserved`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

/// The sources of [`Metrics::node_memory_reserve`].
pub const RESERVE_SOURCES: [&str; 3] = ["config", "kubelet_eviction", "kubelet_reserved"];

/// `{result}` of a reload: `ok` or `rejected`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under the `scaler_` prefix (process metrics
    /// under the standard `process_` names).
    pub fn new() -> Self {
        let mut root = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            reaction_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            events: Family::default(),
            actions: Family::default(),
            managed: Family::default(),
            limit: Family::default(),
            limit_unlimited: Family::default(),
            original_limit: Family::default(),
            original_limit_unlimited: Family::default(),
            original_unknown: Family::default(),
            usage: Family::default(),
            ringbuf_dropped: Counter::default(),
            observe_shed: Counter::default(),
            ringbuf_records: Counter::default(),
            records_dropped: Counter::default(),
            decode_errors: Counter::default(),
            failed_writes: Counter::default(),
            unmanaged_ancestor_binds: Counter::default(),
            unmanaged_binding: Family::default(),
            raises_refused: Family::default(),
            external_changes: Family::default(),
            node_memory_room: Gauge::default(),
            node_memory_capacity: Gauge::default(),
            node_memory_available: Gauge::default(),
            node_memory_reserve: Family::default(),
            node_memory_unmanaged: Gauge::default(),
            kubelet_config_errors: Counter::default(),
            bpf_run_seconds: Family::default(),
            bpf_runs: Family::default(),
            cpu_seconds: F64Counter::default(),
            resident_bytes: Gauge::default(),
            reloads: Family::default(),
            cpu_throttled_seconds: Family::default(),
            utilization: Family::default(),
            cgroups_unprotected: Family::default(),
            cgroups_refused: Family::default(),
            commands_refused: Counter::default(),
            build_info: Family::default(),
            kubernetes_api_errors: Family::default(),
            kubernetes_pods: Gauge::default(),
            kubernetes_resizes: Family::default(),
            kubernetes_annotations_rejected: Family::default(),
        };
        {
            let r = root.sub_registry_with_prefix("scaler");
            r.register_with_unit(
                "reaction_latency",
                "Time from the kernel event to the new limit in place, per resource",
                Unit::Seconds,
                m.reaction_latency.clone(),
            );
            r.register(
                "events",
                "Kernel events read from the ring buffer, by kind",
                m.events.clone(),
            );
            r.register(
                "actions",
                "Limit changes decided, by resource, reason and outcome (written, dry_run, failed)",
                m.actions.clone(),
            );
            r.register(
                "managed_cgroups",
                "Cgroups the agent manages, by resource",
                m.managed.clone(),
            );
            r.register(
                "build_info",
                "Always 1; the labels name the agent's version, the running kernel and the \
                 architecture",
                m.build_info.clone(),
            );
            r.register(
                "cgroup_limit",
                "Current limit of a managed cgroup as the decider sees it, in the unit label's \
                 unit: memory in bytes, CPU quota in cores (no sample while unlimited: see \
                 scaler_cgroup_limit_unlimited)",
                m.limit.clone(),
            );
            r.register(
                "cgroup_limit_unlimited",
                "1 while a managed cgroup has no limit of this resource (memory max, CPU quota \
                 max), else 0",
                m.limit_unlimited.clone(),
            );
            r.register(
                "cgroup_original_limit",
                "Limit of a managed cgroup before the agent first changed it, in the unit \
                 label's unit (no sample while it was unlimited: see \
                 scaler_cgroup_original_limit_unlimited)",
                m.original_limit.clone(),
            );
            r.register(
                "cgroup_original_limit_unlimited",
                "1 while a managed cgroup's original limit is no limit, else 0",
                m.original_limit_unlimited.clone(),
            );
            r.register(
                "cgroup_original_unknown",
                "1 while a managed cgroup's original limit is unknown (the state file and its \
                 last-known-good copy were lost or damaged): restores leave it as it is",
                m.original_unknown.clone(),
            );
            r.register(
                "cgroup_usage",
                "Usage of a managed cgroup at the last sample, in the unit label's unit: memory \
                 in bytes, CPU in cores over the last sample interval",
                m.usage.clone(),
            );
            r.register(
                "ringbuf_dropped",
                "Events the kernel programs could not submit because the ring buffer was full",
                m.ringbuf_dropped.clone(),
            );
            r.register(
                "observe_shed",
                "Events of cgroups the agent does not manage (reported only because of \
                 agent.observe_all) that the kernel programs dropped without submitting, to keep \
                 the ring buffer for managed cgroups: the ring buffer was an eighth full or the \
                 CPU's budget (64 per 10 ms) was spent. Events of managed cgroups are never shed",
                m.observe_shed.clone(),
            );
            r.register(
                "ringbuf_records",
                "Records the engine read from the ring buffer",
                m.ringbuf_records.clone(),
            );
            r.register(
                "records_dropped",
                "Engine records (events, actions) the agent's slow side was too slow to take",
                m.records_dropped.clone(),
            );
            r.register(
                "decode_errors",
                "Ring-buffer records that did not decode",
                m.decode_errors.clone(),
            );
            r.register(
                "failed_writes",
                "Limit writes the kernel refused",
                m.failed_writes.clone(),
            );
            r.register(
                "unmanaged_ancestor_binds",
                "Pressure on a managed cgroup whose binding limit belongs to an unmanaged ancestor",
                m.unmanaged_ancestor_binds.clone(),
            );
            r.register(
                "unmanaged_binding",
                "Pressure signals whose binding limit is one the agent does not manage, next to \
                 one it does, by resource and reason (ancestor: the limit of an unmanaged \
                 ancestor of a managed cgroup; descendant: the limit of an unmanaged cgroup \
                 below a managed one, such as a container of a managed pod)",
                m.unmanaged_binding.clone(),
            );
            r.register(
                "external_changes",
                "Limits their owner (a container runtime, the kubelet, systemd, a person) wrote \
                 while the agent managed them, by resource: adopted as the new original, never \
                 overwritten",
                m.external_changes.clone(),
            );
            r.register(
                "raises_refused",
                "Raises refused to a cgroup under pressure, by resource and reason (at_max, \
                 budget: the node cannot back it, ancestor: a managed ancestor cannot back it, \
                 rate_limited, below_hysteresis)",
                m.raises_refused.clone(),
            );
            r.register_with_unit(
                "node_memory_room",
                "Memory the node can back beyond its reserves at the last sample (MemAvailable \
                 minus node.memory_reserve, and the kubelet's memory.available minus its \
                 reservations where its configuration is read): the most a raise may add",
                Unit::Bytes,
                m.node_memory_room.clone(),
            );
            r.register_with_unit(
                "node_memory_capacity",
                "The node's memory (MemTotal), the capacity the kubelet's percentages are of",
                Unit::Bytes,
                m.node_memory_capacity.clone(),
            );
            r.register_with_unit(
                "node_memory_available",
                "MemAvailable of /proc/meminfo at the last sample",
                Unit::Bytes,
                m.node_memory_available.clone(),
            );
            r.register_with_unit(
                "node_memory_reserve",
                "The parts of the memory no raise takes, by source: config (node.memory_reserve, \
                 out of MemAvailable), kubelet_eviction (the kubelet's memory.available eviction \
                 threshold plus node.kubelet_eviction_margin) and kubelet_reserved \
                 (kubeReserved plus systemReserved), the kubelet's two out of its \
                 memory.available; 0 while no kubelet configuration is read",
                Unit::Bytes,
                m.node_memory_reserve.clone(),
            );
            r.register_with_unit(
                "node_memory_unmanaged",
                "Memory in use (MemTotal minus MemFree) outside the managed cgroups that have \
                 no managed ancestor: unmanaged processes and cgroups, the kernel, page cache",
                Unit::Bytes,
                m.node_memory_unmanaged.clone(),
            );
            r.register(
                "kubelet_config_errors",
                "Reads of the kubelet's configuration (node.kubelet_config) that could not be \
                 used: the last good figures, or the kubelet's defaults, stay in force",
                m.kubelet_config_errors.clone(),
            );
            r.register_with_unit(
                "bpf_program_run",
                "Time the kernel spent in each BPF program; present only with [agent] \
                 bpf_stats = true (the statistics tax every BPF program of the node)",
                Unit::Seconds,
                m.bpf_run_seconds.clone(),
            );
            r.register(
                "bpf_program_runs",
                "Runs of each BPF program; present only with [agent] bpf_stats = true",
                m.bpf_runs.clone(),
            );
            r.register_with_unit(
                "cgroup_cpu_throttled",
                "Time a managed cpu cgroup spent throttled (cpu.stat), as of the last sample",
                Unit::Seconds,
                m.cpu_throttled_seconds.clone(),
            );
            r.register_with_unit(
                "cgroup_utilization",
                "Utilization U = R/C of a managed cgroup: memory usage over limit, CPU used over quota",
                Unit::Other("ratio".into()),
                m.utilization.clone(),
            );
            r.register(
                "config_reloads",
                "SIGHUP reloads, by result (ok, rejected)",
                m.reloads.clone(),
            );
            r.register(
                "cgroups_unprotected",
                "Cgroups a policy selects that the agent does not protect, by resource and \
                 reason (descriptors, watch_map_full, watch_failed, replaced, engine_busy, \
                 open_failed): each is also an error log and a line in `scaler status`",
                m.cgroups_unprotected.clone(),
            );
            r.register(
                "cgroups_refused",
                "Refusals to manage a selected cgroup, by resource and reason: the reasons of \
                 scaler_cgroups_unprotected (tried again at each discovery pass), and \
                 untrusted_opt_in (an opt-in attribute that could have been forged) and \
                 agent_cgroup (it holds the agent itself), counted once while refused",
                m.cgroups_refused.clone(),
            );
            r.register(
                "engine_commands_refused",
                "Commands to the engine refused because its bounded channel stayed full",
                m.commands_refused.clone(),
            );
            r.register(
                "kubernetes_api_errors",
                "Failed Kubernetes API requests, by op: watch (the list and watch of this \
                 node's pods, retried with backoff) and resize (resize patches)",
                m.kubernetes_api_errors.clone(),
            );
            r.register(
                "kubernetes_pods",
                "This node's pods known from the Kubernetes API",
                m.kubernetes_pods.clone(),
            );
            r.register(
                "kubernetes_resizes",
                "Resize patches of pods after a limit change, by result (patched, refused, \
                 failed, skipped) and the reason of a skip",
                m.kubernetes_resizes.clone(),
            );
            r.register(
                "kubernetes_annotations_rejected",
                "scaler.io/ pod annotations not taken as written, by result: invalid (ignored) \
                 or clamped (bounded by the operator's policy)",
                m.kubernetes_annotations_rejected.clone(),
            );
        }
        {
            let p = root.sub_registry_with_prefix("process");
            p.register_with_unit(
                "cpu",
                "User and system CPU time of the agent",
                Unit::Seconds,
                m.cpu_seconds.clone(),
            );
            p.register_with_unit(
                "resident_memory",
                "Resident memory of the agent",
                Unit::Bytes,
                m.resident_bytes.clone(),
            );
        }
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                kernel: nix::sys::utsname::uname()
                    .map(|u| u.release().to_string_lossy().into_owned())
                    .unwrap_or_default(),
                arch: std::env::consts::ARCH,
            })
            .set(1);
        m.init_label_values();
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Creates the series of every known label value of the families without a per-cgroup
    /// label, at zero, so that they exist from start-up (`rate()`, `histogram_quantile()` and
    /// alerts see them on an idle node). BPF programs are added at the first sample.
    fn init_label_values(&self) {
        use crate::decider::{Resource, REFUSAL_REASONS};
        for source in RESERVE_SOURCES {
            let _ = self
                .node_memory_reserve
                .get_or_create(&SourceLabels { source });
        }
        for resource in [Resource::Memory, Resource::Cpu] {
            let r = resource.as_str();
            let _ = self
                .reaction_latency
                .get_or_create(&ResourceLabels { resource: r });
            let _ = self.managed.get_or_create(&ResourceLabels { resource: r });
            let _ = self
                .external_changes
                .get_or_create(&ResourceLabels { resource: r });
            for reason in ACTION_REASONS
                .iter()
                .filter(|x| Self::reason_resource(**x) == resource)
            {
                for outcome in [
                    WriteOutcome::Written,
                    WriteOutcome::DryRun,
                    WriteOutcome::Failed,
                ] {
                    let _ = self.actions.get_or_create(&ActionLabels {
                        resource: r,
                        reason: reason.as_str(),
                        outcome: outcome_str(outcome),
                    });
                }
            }
            for reason in REFUSAL_REASONS {
                let _ = self.raises_refused.get_or_create(&RefusedLabels {
                    resource: r,
                    reason,
                });
            }
            for reason in super::capacity::reason::ALL {
                let _ = self.cgroups_unprotected.get_or_create(&RefusedLabels {
                    resource: r,
                    reason,
                });
            }
            for reason in super::capacity::reason::ALL
                .into_iter()
                .chain(REFUSED_ONLY_REASONS)
            {
                let _ = self.cgroups_refused.get_or_create(&RefusedLabels {
                    resource: r,
                    reason,
                });
            }
        }
        for kind in (1..=u32::MAX).map_while(scaler_common::EventKind::from_u32) {
            let _ = self.events.get_or_create(&KindLabels {
                kind: kind.as_str(),
            });
        }
        for result in ["ok", "rejected"] {
            let _ = self.reloads.get_or_create(&ResultLabels { result });
        }
    }

    /// The resource whose decider takes actions for `reason`.
    fn reason_resource(reason: crate::decider::Reason) -> crate::decider::Resource {
        use crate::decider::{Reason::*, Resource};
        match reason {
            Pressure | EarlyWarning | OomRecovery | LimitHits | ScaleDown | Ancestor => {
                Resource::Memory
            }
            CpuQuotaNear | CpuThrottled | CpuRunqLatency | CpuScaleDown => Resource::Cpu,
        }
    }

    /// Sets `labels`' current limit: `value` (in the resource's unit) when finite; none (and
    /// `scaler_cgroup_limit_unlimited` 1) when unlimited.
    pub fn set_limit(&self, labels: &LimitLabels, value: f64) {
        Self::set_limit_in(&self.limit, &self.limit_unlimited, labels, value);
    }

    /// The same for the original limit.
    pub fn set_original_limit(&self, labels: &LimitLabels, value: f64) {
        Self::set_limit_in(
            &self.original_limit,
            &self.original_limit_unlimited,
            labels,
            value,
        );
    }

    fn set_limit_in(
        values: &Family<LimitLabels, F64Gauge>,
        unlimited: &Family<LimitLabels, Gauge>,
        labels: &LimitLabels,
        value: f64,
    ) {
        if value.is_finite() {
            values.get_or_create(labels).set(value);
            unlimited.get_or_create(labels).set(0);
        } else {
            values.remove(labels);
            unlimited.get_or_create(labels).set(1);
        }
    }

    /// Drops a cgroup's series of one resource when the agent no longer manages it.
    pub fn forget(&self, labels: &LimitLabels) {
        for f in [
            &self.limit,
            &self.original_limit,
            &self.original_unknown,
            &self.usage,
        ] {
            f.remove(labels);
        }
        for f in [&self.limit_unlimited, &self.original_limit_unlimited] {
            f.remove(labels);
        }
        if labels.resource == crate::decider::Resource::Cpu.as_str() {
            self.cpu_throttled_seconds.remove(&labels.cgroup);
        }
        self.utilization.remove(&labels.utilization());
    }

    /// Counts one action and, unless it failed, observes its latency.
    pub fn record_action(&self, a: &ActionRecord) {
        let outcome = outcome_str(a.outcome);
        self.actions
            .get_or_create(&ActionLabels {
                resource: a.action.resource.as_str(),
                reason: a.action.reason.as_str(),
                outcome,
            })
            .inc();
        if a.outcome != WriteOutcome::Failed {
            self.reaction_latency
                .get_or_create(&ResourceLabels {
                    resource: a.action.resource.as_str(),
                })
                .observe(a.latency_ns as f64 / 1e9);
        }
    }

    /// Sets a counter that mirrors a total kept elsewhere (never moves it backwards).
    pub fn set_total(counter: &Counter, total: u64) {
        let cur = counter.get();
        if total > cur {
            counter.inc_by(total - cur);
        }
    }

    /// Copies the Kubernetes client's counters.
    pub fn set_kube(&self, k: &crate::kube::Kube) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &k.counters;
        let errors = |op| {
            self.kubernetes_api_errors
                .get_or_create(&KubeOpLabels { op })
        };
        Self::set_total(&errors("watch"), c.watch_errors.load(Relaxed));
        Self::set_total(&errors("resize"), c.resize_errors.load(Relaxed));
        let resizes = |result, reason| {
            self.kubernetes_resizes
                .get_or_create(&ResizeLabels { result, reason })
        };
        Self::set_total(&resizes("patched", ""), c.resized.load(Relaxed));
        Self::set_total(&resizes("refused", ""), c.resize_refused.load(Relaxed));
        Self::set_total(
            &resizes("failed", ""),
            c.resize_errors
                .load(Relaxed)
                .saturating_sub(c.resize_refused.load(Relaxed)),
        );
        for (i, why) in crate::kube::NO_RESIZE.iter().enumerate() {
            let n = c.resize_skipped[i].load(Relaxed);
            if n > 0 {
                Self::set_total(&resizes("skipped", why.as_str()), n);
            }
        }
        self.kubernetes_pods
            .set(i64::try_from(k.pod_count()).unwrap_or(i64::MAX));
    }

    /// Same, for a float counter.
    pub fn set_total_f64(counter: &F64Counter, total: f64) {
        let cur = counter.get();
        if total > cur {
            counter.inc_by(total - cur);
        }
    }

    /// Reads the agent's own CPU time and resident memory.
    pub fn refresh_process(&self) {
        if let Some(p) = ProcessStats::read_self() {
            Self::set_total_f64(&self.cpu_seconds, p.cpu_seconds);
            self.resident_bytes.set(p.resident_bytes as i64);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        self.refresh_process();
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text exposition (format 0.0.4), for clients that do not ask for
    /// OpenMetrics: `curl`, `promtool check metrics`.
    pub fn encode_text(&self) -> String {
        self.refresh_process();
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Every reason of an action, for the series created at start.
const ACTION_REASONS: [crate::decider::Reason; 10] = {
    use crate::decider::Reason::*;
    [
        Pressure,
        EarlyWarning,
        OomRecovery,
        LimitHits,
        ScaleDown,
        Ancestor,
        CpuQuotaNear,
        CpuThrottled,
        CpuRunqLatency,
        CpuScaleDown,
    ]
};

/// Reasons of `scaler_cgroups_refused_total` beyond those of `scaler_cgroups_unprotected`.
pub const REFUSED_ONLY_REASONS: [&str; 2] = ["untrusted_opt_in", "agent_cgroup"];

/// `written`, `dry_run` or `failed`.
pub fn outcome_str(o: WriteOutcome) -> &'static str {
    match o {
        WriteOutcome::Written => "written",
        WriteOutcome::DryRun => "dry_run",
        WriteOutcome::Failed => "failed",
    }
}

/// The agent's own resource use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

impl ProcessStats {
    /// From `/proc/self/stat` (utime + stime) and `/proc/self/statm` (resident pages).
    pub fn read_self() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Self::parse(&stat, &statm, ticks, page)
    }

    /// Parses the two files; `ticks` is `sysconf(_SC_CLK_TCK)`, `page` the page size.
    pub fn parse(stat: &str, statm: &str, ticks: f64, page: u64) -> Option<Self> {
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state(3) ... utime(14) stime(15), i.e. indexes 11 and 12 here.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(Self {
            cpu_seconds: (utime + stime) as f64 / ticks,
            resident_bytes: resident * page,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::{Action, Reason, Resource};
    use crate::resource::ManagedResource as _;

    fn action(latency_ns: u64, outcome: WriteOutcome, reason: Reason) -> ActionRecord {
        ActionRecord {
            action: Action {
                cgroup: 1,
                resource: Resource::Memory,
                old: 1,
                new: 2,
                reason,
                trigger_ts_ns: 0,
            },
            done_ns: latency_ns,
            latency_ns,
            outcome,
            errno: None,
            written: None,
        }
    }

    /// The value of the sample `name{labels}` in an exposition.
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn actions_and_latencies_are_exported() {
        let m = Metrics::new();
        m.record_action(&action(15_000, WriteOutcome::Written, Reason::Pressure));
        m.record_action(&action(150_000, WriteOutcome::Written, Reason::Pressure));
        m.record_action(&action(
            3_000_000,
            WriteOutcome::Written,
            Reason::EarlyWarning,
        ));
        m.record_action(&action(1, WriteOutcome::Failed, Reason::Pressure));
        let t = m.encode();
        assert_eq!(
            sample(
                &t,
                r#"scaler_actions_total{resource="memory",reason="pressure",outcome="written"}"#
            ),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"scaler_actions_total{resource="memory",reason="pressure",outcome="failed"}"#
            ),
            Some(1.0)
        );
        // Failed writes have no latency: three observations.
        assert_eq!(
            sample(
                &t,
                r#"scaler_reaction_latency_seconds_count{resource="memory"}"#
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"scaler_reaction_latency_seconds_bucket{le="0.00002",resource="memory"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"scaler_reaction_latency_seconds_bucket{le="0.0002",resource="memory"}"#
            ),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"scaler_reaction_latency_seconds_bucket{le="0.005",resource="memory"}"#
            ),
            Some(3.0),
            "{t}"
        );
        let sum = sample(
            &t,
            r#"scaler_reaction_latency_seconds_sum{resource="memory"}"#,
        )
        .unwrap();
        assert!((sum - 0.003165).abs() < 1e-9, "{sum}");
        assert!(t.ends_with("# EOF\n"));
        assert!(t.contains("# TYPE process_cpu_seconds counter"), "{t}");
    }

    #[test]
    fn cgroup_gauges_carry_kubernetes_labels() {
        let m = Metrics::new();
        let path = "/kubepods/burstable/pod0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/0123456789abcdef";
        let l = CgroupLabels::new(path, "elastic", crate::k8s::parse(path).as_ref());
        assert_eq!(l.qos, "burstable");
        let l = LimitLabels::new(&l, &crate::resource::Memory);
        m.limit.get_or_create(&l).set((64 << 20) as f64);
        let t = m.encode();
        assert!(
            t.contains(
                "scaler_cgroup_limit{cgroup=\"/kubepods/burstable/pod0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/0123456789abcdef\",policy=\"elastic\",qos=\"burstable\",namespace=\"\",pod=\"\",uid=\"0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\",container=\"\",container_id=\"0123456789abcdef\",resource=\"memory\",unit=\"byte\"} 67108864.0"
            ),
            "{t}"
        );
        assert!(m.limit.remove(&l));
        assert!(!m.encode().contains("scaler_cgroup_limit{"));
    }

    #[test]
    fn every_resource_shares_the_families_and_is_forgotten_alone() {
        let m = Metrics::new();
        let c = CgroupLabels::new("/batch/job", "elastic", None);
        let cpu = LimitLabels::new(&c, &crate::resource::Cpu);
        let mem = LimitLabels::new(&c, &crate::resource::Memory);
        m.limit.get_or_create(&cpu).set(0.2);
        m.set_original_limit(
            &cpu,
            crate::resource::Cpu.gauge(crate::actuator::Setting::Cpu(
                crate::cgroupfs::CpuQuota::Max,
            )),
        );
        m.utilization.get_or_create(&cpu.utilization()).set(0.75);
        Metrics::set_total_f64(&m.cpu_throttled_seconds.get_or_create(&c), 1.5);
        m.set_limit(&mem, 1024.0);
        let t = m.encode();
        let labels = r#"cgroup="/batch/job",policy="elastic",qos="",namespace="",pod="",uid="",container="",container_id="""#;
        assert_eq!(
            sample(
                &t,
                &format!("scaler_cgroup_limit{{{labels},resource=\"cpu\",unit=\"core\"}}")
            ),
            Some(0.2),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                &format!("scaler_cgroup_limit{{{labels},resource=\"memory\",unit=\"byte\"}}")
            ),
            Some(1024.0),
            "{t}"
        );
        // An unlimited original has no sample: a separate gauge says so.
        assert!(!t.contains("scaler_cgroup_original_limit{"), "{t}");
        assert_eq!(
            sample(
                &t,
                &format!("scaler_cgroup_original_limit_unlimited{{{labels},resource=\"cpu\",unit=\"core\"}}")
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                &format!(
                    "scaler_cgroup_limit_unlimited{{{labels},resource=\"memory\",unit=\"byte\"}}"
                )
            ),
            Some(0.0),
            "{t}"
        );
        assert!(!t.contains(" inf") && !t.contains("Inf\n"), "{t}");
        assert_eq!(
            sample(
                &t,
                &format!("scaler_cgroup_utilization_ratio{{{labels},resource=\"cpu\"}}")
            ),
            Some(0.75),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                &format!("scaler_cgroup_cpu_throttled_seconds_total{{{labels}}}")
            ),
            Some(1.5),
            "{t}"
        );
        // A limit that becomes unlimited loses its sample.
        m.set_limit(&mem, f64::INFINITY);
        assert!(!m
            .encode()
            .contains("scaler_cgroup_limit{cgroup=\"/batch/job\",policy=\"elastic\",qos=\"\",namespace=\"\",pod=\"\",uid=\"\",container=\"\",container_id=\"\",resource=\"memory\""));
        m.set_limit(&mem, 1024.0);
        m.forget(&cpu);
        let t = m.encode();
        assert!(!t.contains("resource=\"cpu\",unit"), "{t}");
        assert!(!t.contains("scaler_cgroup_utilization_ratio{"), "{t}");
        assert!(
            !t.contains("scaler_cgroup_cpu_throttled_seconds_total{"),
            "{t}"
        );
        assert!(t.contains("resource=\"memory\",unit=\"byte\"} 1024"), "{t}");
    }

    #[test]
    fn the_observe_only_shed_count_is_a_counter_with_help_next_to_the_ring_drops() {
        let m = Metrics::new();
        Metrics::set_total(&m.observe_shed, 1234);
        let t = m.encode();
        assert!(t.contains("# TYPE scaler_observe_shed counter"), "{t}");
        assert!(
            t.contains("# HELP scaler_observe_shed Events of cgroups the agent does not manage"),
            "{t}"
        );
        assert!(t.contains("scaler_observe_shed_total 1234\n"), "{t}");
        let drops = t.find("scaler_ringbuf_dropped_total").unwrap();
        let shed = t.find("scaler_observe_shed_total").unwrap();
        assert!(
            drops < shed,
            "registered next to the ring-buffer drops:\n{t}"
        );
        // A total from the kernel never goes backwards.
        Metrics::set_total(&m.observe_shed, 1000);
        assert_eq!(m.observe_shed.get(), 1234);
    }

    #[test]
    fn totals_never_go_backwards() {
        let m = Metrics::new();
        Metrics::set_total(&m.ringbuf_dropped, 5);
        Metrics::set_total(&m.ringbuf_dropped, 3);
        assert_eq!(m.ringbuf_dropped.get(), 5);
        Metrics::set_total(&m.ringbuf_dropped, 9);
        assert_eq!(m.ringbuf_dropped.get(), 9);
    }

    /// Family names (`# TYPE` lines) and sample names of a text exposition.
    fn families(text: &str) -> (Vec<(String, String)>, Vec<String>) {
        let types = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (n, t) = l.split_once(' ').unwrap();
                (n.to_owned(), t.to_owned())
            })
            .collect();
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
            .collect();
        (types, samples)
    }

    #[test]
    fn the_text_format_follows_the_exposition_conventions() {
        let m = Metrics::new();
        let t = m.encode_text();
        let (types, samples) = families(&t);
        for (name, ty) in &types {
            assert!(
                t.contains(&format!("# HELP {name} ")),
                "{name} has HELP text:\n{t}"
            );
            assert_eq!(
                ty == "counter",
                name.ends_with("_total"),
                "{name} ({ty}): counters and only counters end in _total"
            );
            assert!(samples.iter().any(|s| s.starts_with(name.as_str())));
        }
        assert!(!t.contains("# EOF"));
        // Zeros for each known label value.
        for s in [
            r#"scaler_reaction_latency_seconds_count{resource="memory"} 0"#,
            r#"scaler_reaction_latency_seconds_count{resource="cpu"} 0"#,
            r#"scaler_actions_total{resource="memory",reason="pressure",outcome="written"} 0"#,
            r#"scaler_actions_total{resource="cpu",reason="cpu_throttled",outcome="failed"} 0"#,
            r#"scaler_events_total{kind="reclaim_begin"} 0"#,
            r#"scaler_events_total{kind="runq_latency"} 0"#,
            r#"scaler_managed_cgroups{resource="cpu"} 0"#,
            r#"scaler_raises_refused_total{resource="memory",reason="budget"} 0"#,
            r#"scaler_cgroups_refused_total{resource="memory",reason="untrusted_opt_in"} 0"#,
            r#"scaler_config_reloads_total{result="rejected"} 0"#,
        ] {
            assert!(t.contains(&format!("{s}\n")), "{s}:\n{t}");
        }
        assert!(
            !t.contains("resource=\"memory\",reason=\"cpu_"),
            "no CPU reasons under memory"
        );
        let build = t
            .lines()
            .find(|l| l.starts_with("scaler_build_info{"))
            .unwrap();
        assert!(
            build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                && build.contains("kernel=\"")
                && !build.contains("kernel=\"\"")
                && build.ends_with("} 1"),
            "{build}"
        );
        // The OpenMetrics form has HELP text for each family too; all but the per-cgroup and
        // per-program families have series at start.
        let om = m.encode();
        let (om_types, om_samples) = families(&om);
        for (name, _) in &om_types {
            assert!(om.contains(&format!("# HELP {name} ")), "{name}");
            let later = name.starts_with("scaler_cgroup_") || name.starts_with("scaler_bpf_");
            assert!(
                later || om_samples.iter().any(|s| s.starts_with(name.as_str())),
                "{name} has series from start-up:\n{om}"
            );
        }
    }

    #[test]
    fn process_stats_parse_names_with_spaces_and_parens() {
        let stat = "1234 (scaler (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0 100 1000 300 18446744073709551615";
        let p = ProcessStats::parse(stat, "2500 300 100 1 0 200 0\n", 100.0, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert_eq!(ProcessStats::parse("garbage", "1 2", 100.0, 4096), None);
        assert!(ProcessStats::read_self().is_some());
    }
}
