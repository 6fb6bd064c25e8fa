//! What the agent keeps of a pod (names, containers, annotations) and what it makes of it:
//! pure functions, tested without an API server.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};

use crate::decider::{MemoryPolicy, Policy};
use crate::units::format_size;

/// The annotation prefix.
pub const PREFIX: &str = "scaler.io/";
/// `scaler.io/enabled: "false"`: the agent leaves the pod's cgroups alone.
pub const ENABLED: &str = "scaler.io/enabled";
/// `scaler.io/memory-max`: the highest memory limit the agent sets on the pod's cgroups (a
/// Kubernetes quantity, `512Mi`, `1Gi`, `1G`, bytes); never above the policy's `max`.
pub const MEMORY_MAX: &str = "scaler.io/memory-max";
/// `scaler.io/memory-min`: the lowest limit a scale-down leaves; within the policy's
/// `min` and the effective `max`.
pub const MEMORY_MIN: &str = "scaler.io/memory-min";

/// One container of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// `spec.containers[].name` (also init and sidecar containers).
    pub name: String,
    /// The runtime's id, without the `containerd://` (`cri-o://`, `docker://`) scheme: what
    /// the cgroup's name carries. `None` until the container has started.
    pub id: Option<String>,
    /// `resources.limits.memory` (bytes).
    pub memory_limit: Option<u64>,
    /// `resources.requests.memory` (bytes).
    pub memory_request: Option<u64>,
    /// `resizePolicy` for memory is `RestartContainer`: a resize restarts the container.
    pub restart_on_memory_resize: bool,
}

/// The pod's `scaler.io/` annotations, parsed; a malformed one is listed in `invalid`
/// (annotation, value, why) and otherwise ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    /// `scaler.io/enabled` (`None`: absent).
    pub enabled: Option<bool>,
    pub memory_max: Option<u64>,
    pub memory_min: Option<u64>,
    pub invalid: Vec<(String, String, String)>,
}

/// What the agent keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `status.qosClass` (`Guaranteed`, `Burstable`, `BestEffort`).
    pub qos_class: Option<String>,
    pub containers: Vec<ContainerInfo>,
    pub annotations: Annotations,
}

impl PodInfo {
    /// What the agent keeps of `pod` (`None` without a UID).
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let md = &pod.metadata;
        let uid = md.uid.clone()?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let statuses: Vec<&ContainerStatus> = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .collect();
        let specs = spec.into_iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        });
        let containers = specs
            .map(|c| container_info(c, &statuses))
            .collect::<Vec<_>>();
        Some(PodInfo {
            uid,
            namespace: md.namespace.clone().unwrap_or_default(),
            name: md.name.clone().unwrap_or_default(),
            qos_class: status.and_then(|s| s.qos_class.clone()),
            containers,
            annotations: md
                .annotations
                .as_ref()
                .map(Annotations::parse)
                .unwrap_or_default(),
        })
    }

    /// The container whose runtime id is `id`.
    pub fn container(&self, id: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.id.as_deref() == Some(id))
    }

    /// `namespace/name`, for logs.
    pub fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn container_info(c: &Container, statuses: &[&ContainerStatus]) -> ContainerInfo {
    let id = statuses
        .iter()
        .find(|s| s.name == c.name)
        .and_then(|s| s.container_id.as_deref())
        .map(|id| id.split_once("://").map_or(id, |(_, rest)| rest).to_owned())
        .filter(|id| !id.is_empty());
    let res = c.resources.as_ref();
    let mem = |m: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >| {
        m.and_then(|m| m.get("memory"))
            .and_then(|q| parse_quantity(&q.0).ok())
    };
    ContainerInfo {
        name: c.name.clone(),
        id,
        memory_limit: mem(res.and_then(|r| r.limits.as_ref())),
        memory_request: mem(res.and_then(|r| r.requests.as_ref())),
        restart_on_memory_resize: c
            .resize_policy
            .iter()
            .flatten()
            .any(|p| p.resource_name == "memory" && p.restart_policy == "RestartContainer"),
    }
}

impl Annotations {
    /// Parses the `scaler.io/` keys of a pod's annotations.
    pub fn parse<'a, I>(annotations: I) -> Annotations
    where
        I: IntoIterator<Item = (&'a String, &'a String)>,
    {
        let mut out = Annotations::default();
        for (k, v) in annotations {
            if !k.starts_with(PREFIX) {
                continue;
            }
            let mut bad = |why: String| out.invalid.push((k.clone(), v.clone(), why));
            match k.as_str() {
                ENABLED => match v.trim() {
                    "true" => out.enabled = Some(true),
                    "false" => out.enabled = Some(false),
                    _ => bad("give \"true\" or \"false\"".into()),
                },
                MEMORY_MAX | MEMORY_MIN => match parse_quantity(v) {
                    Ok(b) if b > 0 => {
                        if k == MEMORY_MAX {
                            out.memory_max = Some(b);
                        } else {
                            out.memory_min = Some(b);
                        }
                    }
                    Ok(_) => bad("must be above zero".into()),
                    Err(e) => bad(e.into()),
                },
                _ => bad(format!(
                    "unknown scaler.io annotation (known: {ENABLED}, {MEMORY_MAX}, {MEMORY_MIN})"
                )),
            }
        }
        out.invalid.sort();
        out
    }
}

/// Parses a Kubernetes memory quantity into bytes: a decimal number with an optional suffix,
/// binary (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`) or decimal (`k`, `M`, `G`, `T`, `P`, `E`), or an
/// exponent (`1e9`). Fractions of a byte round up, as the API server does for memory.
pub fn parse_quantity(s: &str) -> Result<u64, &'static str> {
    const FORM: &str =
        "not a Kubernetes quantity (e.g. \"512Mi\", \"1Gi\", \"1G\", \"1073741824\")";
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 || num == "." {
        return Err(FORM);
    }
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| FORM)?;
            if !(0..=18).contains(&exp) {
                return Err("exponent out of range");
            }
            10f64.powi(exp)
        }
        _ => return Err(FORM),
    };
    // Exact for whole numbers with a binary suffix (the usual form); f64 otherwise.
    if !num.contains('.') {
        let n: u64 = num.parse().map_err(|_| "too large")?;
        if mult.fract() == 0.0 && mult <= u64::MAX as f64 {
            return n.checked_mul(mult as u64).ok_or("too large");
        }
    }
    let v: f64 = num.parse::<f64>().map_err(|_| FORM)? * mult;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err("too large");
    }
    Ok(v.ceil() as u64)
}

/// A byte count as a Kubernetes quantity: `Ki`/`Mi`/`Gi`/`Ti` when exact, else plain bytes.
pub fn format_quantity(b: u64) -> String {
    for (suffix, unit) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if b >= unit && b.is_multiple_of(unit) {
            return format!("{}{suffix}", b / unit);
        }
    }
    b.to_string()
}

/// How an annotation was bounded by the operator's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clamp {
    /// The annotation.
    pub annotation: &'static str,
    /// What it asked for (bytes).
    pub asked: u64,
    /// What is in force (bytes).
    pub applied: u64,
    /// Which bound of the policy won (`policy max`, `policy min`).
    pub bound: &'static str,
}

impl std::fmt::Display for Clamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = {} is beyond the {} ({}): {} is in force (an annotation only tightens the \
             operator's policy)",
            self.annotation,
            format_size(self.asked),
            self.bound,
            format_size(self.applied),
            format_size(self.applied)
        )
    }
}

/// The policy with the pod's annotations applied: `memory-max` lowers the policy's `max`
/// (never raises it, never below the policy's `min`), `memory-min` raises the floor of
/// scale-downs within the policy's `min` and the effective `max`. CPU policies are as they
/// are. Returns the policy and what was clamped.
pub fn tighten(policy: Policy, a: &Annotations) -> (Policy, Vec<Clamp>) {
    let Policy::Memory(p) = policy else {
        return (policy, Vec::new());
    };
    let mut clamps = Vec::new();
    let mut out: MemoryPolicy = p;
    if let Some(max) = a.memory_max {
        let applied = max.clamp(p.min, p.max);
        if applied != max {
            clamps.push(Clamp {
                annotation: MEMORY_MAX,
                asked: max,
                applied,
                bound: if max > p.max {
                    "policy max"
                } else {
                    "policy min"
                },
            });
        }
        out.max = applied;
    }
    if let Some(min) = a.memory_min {
        let applied = min.clamp(p.min, out.max);
        if applied != min {
            clamps.push(Clamp {
                annotation: MEMORY_MIN,
                asked: min,
                applied,
                bound: if min > out.max {
                    "policy max"
                } else {
                    "policy min"
                },
            });
        }
        out.min = applied;
    }
    (Policy::Memory(out), clamps)
}

/// Why a container's limit change is not patched into its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoResize {
    /// The pod is not known (yet), or has no such container.
    Unknown,
    /// Guaranteed or BestEffort: a limit-only resize would change the pod's QoS class, which
    /// the API refuses.
    QosClass,
    /// The container has no memory limit in its spec (a resize does not add one).
    NoLimit,
    /// Its `resizePolicy` for memory is `RestartContainer`: a resize would restart it.
    RestartPolicy,
    /// Below the container's memory request (a limit below the request is invalid).
    BelowRequest,
}

impl NoResize {
    /// A metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown_container",
            Self::QosClass => "qos_class",
            Self::NoLimit => "no_limit",
            Self::RestartPolicy => "restart_policy",
            Self::BelowRequest => "below_request",
        }
    }

    /// Why, for the log.
    pub const fn why(self) -> &'static str {
        match self {
            Self::Unknown => "the pod or container is not (yet) known from the API",
            Self::QosClass => {
                "the pod is not Burstable: changing the limit alone would change its QoS class, \
                 which the API refuses"
            }
            Self::NoLimit => "the container has no memory limit in its spec",
            Self::RestartPolicy => {
                "its resizePolicy for memory is RestartContainer: a resize would restart it"
            }
            Self::BelowRequest => "the new limit is below the container's memory request",
        }
    }
}

/// The body of a patch of a pod's `resize` subresource that sets the memory limit of each
/// `(container, bytes)` (requests untouched), as a strategic merge patch: `containers` merge
/// by `name`, so the other containers and every other field stay as they are.
pub fn resize_body(limits: &[(String, u64)]) -> serde_json::Value {
    let containers: Vec<_> = limits
        .iter()
        .map(|(name, bytes)| {
            serde_json::json!({
                "name": name,
                "resources": { "limits": { "memory": format_quantity(*bytes) } },
            })
        })
        .collect();
    serde_json::json!({ "spec": { "containers": containers } })
}

/// Whether the container `id` of `pod` can be resized to `bytes`: `Ok(None)` when its spec
/// already says so, `Ok(Some(name))` to patch the container `name`.
pub fn resize_plan(
    pod: Option<&PodInfo>,
    id: &str,
    bytes: u64,
) -> Result<Option<String>, NoResize> {
    let pod = pod.ok_or(NoResize::Unknown)?;
    let c = pod.container(id).ok_or(NoResize::Unknown)?;
    if pod.qos_class.as_deref() != Some("Burstable") {
        return Err(NoResize::QosClass);
    }
    let limit = c.memory_limit.ok_or(NoResize::NoLimit)?;
    if c.restart_on_memory_resize {
        return Err(NoResize::RestartPolicy);
    }
    if c.memory_request.is_some_and(|r| bytes < r) {
        return Err(NoResize::BelowRequest);
    }
    Ok((limit != bytes).then(|| c.name.clone()))
}

/// Pods by UID.
pub type PodMap = HashMap<String, PodInfo>;
