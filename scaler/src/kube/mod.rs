//! The Kubernetes API, where it is reachable: names and annotations of this node's pods, and
//! resize patches that keep a pod's spec in step with the limits the agent writes.
//!
//! Nothing here is needed to protect a container: the pod UID, container id and QoS class come
//! from the cgroup's path ([`crate::k8s`]), and the engine never waits on the API. With
//! `[kubernetes] api = "in-cluster"` (or `"kubeconfig"`), a thread of its own (`kubernetes`,
//! with its own single-threaded tokio runtime) runs two tasks with kube-rs:
//!
//! - **watch**: a list and watch of this node's pods only
//!   (`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`, then `...&watch=true`), kube-rs'
//!   [`watcher`](::kube::runtime::watcher), which relists when the API says the
//!   resourceVersion expired (410 Gone) and backs off when the API is down. Each pod's
//!   namespace, name, containers (name, runtime id, memory request and limit, resize policy),
//!   QoS class and `scaler.io/` annotations are kept ([`meta::PodInfo`]); the agent reads them
//!   at each reconcile: names become metric labels, annotations bound the policy
//!   ([`meta::tighten`]: an annotation only tightens the operator's policy, never loosens
//!   it), and `scaler.io/enabled: "false"` leaves the pod's cgroups alone. A change wakes the
//!   agent's main loop (`on_change`), which hands new bounds to the engine through its command
//!   channel (a `Manage` with the tightened policy), never on the hot path.
//! - **resize** (`kubernetes.resize = true`): after the agent changed a container's memory
//!   limit, [`Kube::limit_changed`] queues it (no I/O on the caller's thread); the task sends
//!   `PATCH /api/v1/namespaces/{ns}/pods/{name}/resize` with a strategic merge patch of the
//!   container's `resources.limits.memory` (requests untouched), at most one per pod per
//!   `kubernetes.resize_interval`, the latest limit winning, after a short settle time that
//!   folds a burst of raises into one patch. A container that cannot be resized without harm
//!   is skipped and said ([`meta::NoResize`]). The API's refusal (4xx) is logged and
//!   counted, not retried; a transport error or 5xx is tried again at the next interval.
//!
//! What the kubelet does next: it applies the resize by writing the same value into the
//! container's cgroup (and the pod's, as the sum of its containers), seconds later. By then
//! the agent may have written the cgroup again (a later raise of the same burst, or a
//! scale-down): the kubelet's write is then an older value of the agent's, not an owner's
//! change. Every patched limit is recorded in the container cgroup's write mark
//! ([`WriteMark::asked`]; the latest four, for ten minutes) before the patch is sent, and the
//! engine and the slow side take a write of one of them ([`WriteMark::is_echo`]) as the
//! limit in force but the agent's own: the original, the owner's floor and the external
//! change count stay as they were, and the next pressure raises from it at once (the
//! kubelet's write of an older, lower patch lowers the container until then; the kubelet
//! itself defers a lowering below usage). [`Kube::patched`] says the last limit patched.
//! A limit the agent never asked for (an operator's resize) is an owner's change as before.
//!
//! Failures never stop the agent: without a node name, a token or a reachable API it logs what
//! is missing, counts `scaler_kubernetes_api_errors_total`, retries with backoff, and runs on
//! path data. Readiness does not depend on the API.

pub mod meta;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use ::kube::{
    api::{Api, Patch, PatchParams},
    runtime::{watcher, WatchStreamExt as _},
    Client,
};
use futures::StreamExt as _;

use crate::{
    actuator::{Setting, WriteMark},
    cgroupfs::Limit,
};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::Notify;

pub use self::meta::{Annotations, NoResize, PodInfo};
use crate::config::{KubeApi, KubernetesConfig};

/// The field manager the agent's patches carry (`managedFields`).
pub const FIELD_MANAGER: &str = "scaler";

/// How long a queued limit change waits for more of the same burst before it is patched.
pub const RESIZE_SETTLE: Duration = Duration::from_millis(500);

/// Why the API client did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "kubernetes.api is {api:?} but this node's name is unknown: set the NODE_NAME \
         environment variable from the downward API (fieldRef spec.nodeName) or \
         kubernetes.node_name; only this node's pods are watched"
    )]
    NoNodeName { api: &'static str },
    #[error(
        "kubernetes.api = \"in-cluster\": {source} (is the service account token mounted \
         (automountServiceAccountToken: true) and are KUBERNETES_SERVICE_HOST/PORT set?)"
    )]
    InCluster {
        #[source]
        source: ::kube::config::InClusterError,
    },
    #[error("kubernetes.api = \"kubeconfig\": {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    #[error("the Kubernetes API client: {0}")]
    Client(#[source] ::kube::Error),
    #[error("the kubernetes thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Counters, read into the agent's metrics.
#[derive(Debug, Default)]
pub struct KubeCounters {
    /// Failed watch or list requests.
    pub watch_errors: AtomicU64,
    /// Failed resize patches (transport errors and API refusals).
    pub resize_errors: AtomicU64,
    /// Resize patches the API accepted.
    pub resized: AtomicU64,
    /// Patches the API refused (4xx): not retried.
    pub resize_refused: AtomicU64,
    /// Limit changes not patched, by [`NoResize`] (index in [`NO_RESIZE`]).
    pub resize_skipped: [AtomicU64; NO_RESIZE.len()],
    /// Pod events applied (list items and watch events).
    pub pod_events: AtomicU64,
}

/// Every [`NoResize`], in the order of [`KubeCounters::resize_skipped`].
pub const NO_RESIZE: [NoResize; 5] = [
    NoResize::Unknown,
    NoResize::QosClass,
    NoResize::NoLimit,
    NoResize::RestartPolicy,
    NoResize::BelowRequest,
];

fn no_resize_index(n: NoResize) -> usize {
    NO_RESIZE.iter().position(|x| *x == n).unwrap_or(0)
}

/// A container's limit change waiting for its patch.
#[derive(Clone, Debug)]
struct Pending {
    bytes: u64,
    since: tokio::time::Instant,
    /// The container cgroup's write mark: a patched limit is recorded there as asked for
    /// ([`WriteMark::asked`]), so that the kubelet's write of it is known as the agent's.
    mark: Option<Arc<WriteMark>>,
    /// A change whose patch failed (transport error, 5xx) and waits for the next interval.
    retry: bool,
}

/// The API's view of this node's pods, shared with the agent.
pub struct Kube {
    pods: RwLock<meta::PodMap>,
    /// Bumped at every change of `pods`.
    generation: AtomicU64,
    /// The first full list arrived.
    synced: AtomicBool,
    /// Limit changes to patch, by (pod UID, container id).
    pending: Mutex<HashMap<(String, String), Pending>>,
    wake: Notify,
    /// The last memory limit patched, by (pod UID, container id).
    patched: Mutex<HashMap<(String, String), u64>>,
    /// Set by [`Kube::flush`]: every queued change is due at once (no settle, no interval).
    flushing: AtomicBool,
    /// The changes (pod UID, container id) whose patch is being sent.
    in_flight: Mutex<Vec<(String, String)>>,
    resize: bool,
    resize_interval: Duration,
    pub counters: KubeCounters,
}

impl Kube {
    fn new(resize: bool, resize_interval: Duration) -> Self {
        Kube {
            pods: RwLock::default(),
            generation: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            pending: Mutex::default(),
            wake: Notify::new(),
            patched: Mutex::default(),
            flushing: AtomicBool::new(false),
            in_flight: Mutex::default(),
            resize,
            resize_interval,
            counters: KubeCounters::default(),
        }
    }

    /// At shutdown: sends every queued change now (no settle time, no per-pod interval) and
    /// waits for the patches, at most `within`. Returns the (pod UID, container id) of the
    /// changes still not patched then, queued or being sent (the API slow, or failing: the
    /// client retries a 5xx for a while, and a failed patch is not tried again here).
    /// Blocking: not on the kubernetes thread.
    pub fn flush(&self, within: Duration) -> Vec<(String, String)> {
        if !self.resize {
            return Vec::new();
        }
        self.flushing.store(true, Ordering::Release);
        self.wake.notify_one();
        let end = std::time::Instant::now() + within;
        loop {
            let left: Vec<(String, String)> = {
                // The loop moves a change from pending to in flight under the pending lock.
                let pending = lock(&self.pending);
                let mut left: Vec<_> = pending.keys().cloned().collect();
                left.extend(lock(&self.in_flight).iter().cloned());
                left
            };
            if left.is_empty() || std::time::Instant::now() >= end {
                return left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the API says of the pod `uid` (`None`: not known, or the API not reached yet).
    pub fn pod(&self, uid: &str) -> Option<PodInfo> {
        read(&self.pods).get(uid).cloned()
    }

    /// The number of pods known.
    pub fn pod_count(&self) -> usize {
        read(&self.pods).len()
    }

    /// Bumped at every change of what is known.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the first full list of this node's pods arrived.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether resize patches are on.
    pub fn resizes(&self) -> bool {
        self.resize
    }

    /// The agent changed the memory limit of container `container_id` of pod `pod_uid` to
    /// `bytes` (a raise, or a scale-down): queue a resize patch. Cheap, never blocks on I/O;
    /// a later change before the patch replaces this one. Once patched, `bytes` is recorded
    /// in `mark` (the container cgroup's) as asked of the kubelet.
    pub fn limit_changed(
        &self,
        pod_uid: &str,
        container_id: &str,
        bytes: u64,
        mark: Option<Arc<WriteMark>>,
    ) {
        if !self.resize {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut p = lock(&self.pending);
        let e = p
            .entry((pod_uid.to_owned(), container_id.to_owned()))
            .or_insert(Pending {
                bytes,
                since: now,
                mark: None,
                retry: false,
            });
        e.bytes = bytes;
        e.mark = mark;
        e.retry = false;
        drop(p);
        self.wake.notify_one();
    }

    /// Whether a limit change of container `container_id` of pod `pod_uid` waits for its
    /// patch.
    pub fn is_pending(&self, pod_uid: &str, container_id: &str) -> bool {
        lock(&self.pending).contains_key(&(pod_uid.to_owned(), container_id.to_owned()))
    }

    /// The last memory limit the API accepted for container `container_id` of pod `pod_uid`.
    /// (The kubelet's writes of patched limits are told from owners' by the container cgroup's
    /// write mark, which holds the latest few: [`WriteMark::is_echo`].)
    pub fn patched(&self, pod_uid: &str, container_id: &str) -> Option<u64> {
        lock(&self.patched)
            .get(&(pod_uid.to_owned(), container_id.to_owned()))
            .copied()
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the API is, as configured.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// The pod's service account.
    InCluster,
    /// A kubeconfig file (`None`: `$KUBECONFIG` or `~/.kube/config`).
    Kubeconfig(Option<PathBuf>),
}

/// Starts the `kubernetes` thread for `config` (`Ok(None)` when `api = "off"`). `on_change` is
/// called (from that thread) after each change of what is known about the pods.
pub fn start(
    config: &KubernetesConfig,
    on_change: impl Fn() + Send + 'static,
) -> Result<Option<Arc<Kube>>, StartError> {
    let (endpoint, api) = match config.api {
        KubeApi::Off => return Ok(None),
        KubeApi::InCluster => (Endpoint::InCluster, "in-cluster"),
        KubeApi::Kubeconfig => (
            Endpoint::Kubeconfig(config.kubeconfig.clone()),
            "kubeconfig",
        ),
    };
    let node = config.node_name().ok_or(StartError::NoNodeName { api })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;
    let client = rt.block_on(client_for(&endpoint))?;
    let kube = Arc::new(Kube::new(config.resize, config.resize_interval.0));
    let k = kube.clone();
    std::thread::Builder::new()
        .name("kubernetes".into())
        .spawn(move || {
            rt.block_on(run(k, client, node, on_change));
        })
        .map_err(StartError::Thread)?;
    Ok(Some(kube))
}

/// A client for `endpoint` (reads the token, CA and address; connects nothing yet).
pub async fn client_for(endpoint: &Endpoint) -> Result<Client, StartError> {
    let config = match endpoint {
        Endpoint::InCluster => {
            ::kube::Config::incluster().map_err(|source| StartError::InCluster { source })?
        }
        Endpoint::Kubeconfig(path) => {
            let shown = path.as_ref().map_or_else(
                || "$KUBECONFIG or ~/.kube/config".to_owned(),
                |p| p.display().to_string(),
            );
            let err = |source| StartError::Kubeconfig {
                path: shown.clone(),
                source,
            };
            let options = ::kube::config::KubeConfigOptions::default();
            match path {
                Some(p) => {
                    let kc = ::kube::config::Kubeconfig::read_from(p).map_err(err)?;
                    ::kube::Config::from_custom_kubeconfig(kc, &options)
                        .await
                        .map_err(err)?
                }
                None => ::kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(err)?,
            }
        }
    };
    Client::try_from(config).map_err(StartError::Client)
}

/// The thread's work: the watch and the resize tasks, for ever.
pub async fn run(kube: Arc<Kube>, client: Client, node: String, on_change: impl Fn()) {
    tracing::info!(
        node = %node,
        resize = kube.resize,
        "watching this node's pods in the Kubernetes API"
    );
    let watch = watch_pods(&kube, client.clone(), &node, &on_change);
    let resize = resize_loop(&kube, client);
    futures::future::join(watch, resize).await;
}

async fn watch_pods(kube: &Kube, client: Client, node: &str, on_change: &impl Fn()) {
    let api: Api<Pod> = Api::all(client);
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = std::pin::pin!(watcher(api, wc).default_backoff());
    let mut relist: Option<meta::PodMap> = None;
    // Said once per outage: the first error loudly, the rest at debug level.
    let mut failing = false;
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => {
                if failing {
                    failing = false;
                    tracing::info!("the Kubernetes API answers again");
                }
                ev
            }
            // The API's word that the resourceVersion the watch resumed from is too old (410
            // Gone): the ordinary end of a long watch; the watcher relists.
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                tracing::debug!("pod watch expired ({}): relisting", s.message);
                continue;
            }
            Err(e) => {
                kube.counters.watch_errors.fetch_add(1, Ordering::Relaxed);
                if failing {
                    tracing::debug!("watching pods: {e}");
                } else {
                    failing = true;
                    tracing::warn!(
                        error = %e,
                        "watching this node's pods failed: retried with backoff, pods are known \
                         by their cgroup paths until it works (scaler_kubernetes_api_errors_total)"
                    );
                }
                continue;
            }
        };
        kube.counters.pod_events.fetch_add(1, Ordering::Relaxed);
        let changed = match ev {
            watcher::Event::Init => {
                relist = Some(meta::PodMap::new());
                false
            }
            watcher::Event::InitApply(p) => {
                if let (Some(m), Some(info)) = (relist.as_mut(), PodInfo::from_pod(&p)) {
                    m.insert(info.uid.clone(), info);
                }
                false
            }
            watcher::Event::InitDone => {
                let fresh = relist.take().unwrap_or_default();
                let n = fresh.len();
                let mut pods = write(&kube.pods);
                let changed = *pods != fresh;
                *pods = fresh;
                drop(pods);
                if !kube.synced.swap(true, Ordering::AcqRel) {
                    tracing::info!(node = %node, pods = n, "listed this node's pods");
                }
                changed
            }
            watcher::Event::Apply(p) => match PodInfo::from_pod(&p) {
                Some(info) => {
                    let mut pods = write(&kube.pods);
                    let old = pods.insert(info.uid.clone(), info.clone());
                    old.as_ref() != Some(&info)
                }
                None => false,
            },
            watcher::Event::Delete(p) => match p.metadata.uid.as_deref() {
                Some(uid) => write(&kube.pods).remove(uid).is_some(),
                None => false,
            },
        };
        if changed {
            kube.changed();
            on_change();
        }
    }
}

/// Sends the queued limit changes as resize patches, one per pod at a time, each pod at most
/// once per interval.
async fn resize_loop(kube: &Kube, client: Client) {
    if !kube.resize {
        return;
    }
    let mut last_sent: HashMap<String, tokio::time::Instant> = HashMap::new();
    // Skips said at warn level once per (pod, container, reason).
    let mut said: std::collections::HashSet<(String, String, &'static str)> = Default::default();
    loop {
        let now = tokio::time::Instant::now();
        // What is due: per pod, its changes once the settle time and the pod's interval passed.
        let mut due: HashMap<String, Vec<Change>> = HashMap::new();
        let mut next: Option<tokio::time::Instant> = None;
        {
            let mut pending = lock(&kube.pending);
            let mut ready_pods = HashMap::new();
            // At shutdown (flush) everything not failed before is due now.
            let flushing = kube.flushing.load(Ordering::Acquire);
            for ((uid, _), p) in pending.iter() {
                let at = if flushing && !p.retry {
                    now
                } else {
                    (p.since + RESIZE_SETTLE).max(
                        last_sent
                            .get(uid)
                            .map_or(now, |t| *t + kube.resize_interval),
                    )
                };
                let e = ready_pods.entry(uid.clone()).or_insert(at);
                *e = (*e).max(at);
            }
            for (uid, at) in &ready_pods {
                if *at <= now {
                    due.insert(uid.clone(), Vec::new());
                } else {
                    next = Some(next.map_or(*at, |n: tokio::time::Instant| n.min(*at)));
                }
            }
            pending.retain(|(uid, cid), p| match due.get_mut(uid) {
                Some(v) => {
                    v.push((cid.clone(), p.bytes, p.mark.clone()));
                    false
                }
                None => true,
            });
            lock(&kube.in_flight).extend(
                due.iter()
                    .flat_map(|(uid, v)| v.iter().map(|c| (uid.clone(), c.0.clone()))),
            );
        }
        for (uid, changes) in due {
            last_sent.insert(uid.clone(), now);
            let retry = resize_pod(kube, &client, &uid, &changes, &mut said).await;
            if let Some(retry) = retry {
                // A transport error or 5xx: the same changes (unless newer ones came) at the
                // next interval.
                let mut pending = lock(&kube.pending);
                for (cid, bytes, mark) in retry {
                    pending.entry((uid.clone(), cid)).or_insert(Pending {
                        bytes,
                        since: now,
                        mark,
                        retry: true,
                    });
                }
                let at = now + kube.resize_interval;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            lock(&kube.in_flight).retain(|(u, _)| *u != uid);
        }
        last_sent.retain(|_, t| now.duration_since(*t) < kube.resize_interval);
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(at, kube.wake.notified()).await;
            }
            None => kube.wake.notified().await,
        }
    }
}

/// A queued limit change of one container: its runtime id, the limit, its cgroup's mark.
type Change = (String, u64, Option<Arc<WriteMark>>);

/// Patches the pod `uid` for `changes` ((container id, bytes, mark)). Returns the changes to try
/// again (a transport error or a 5xx), `None` when done (patched, refused or nothing to do).
async fn resize_pod(
    kube: &Kube,
    client: &Client,
    uid: &str,
    changes: &[Change],
    said: &mut std::collections::HashSet<(String, String, &'static str)>,
) -> Option<Vec<Change>> {
    let pod = kube.pod(uid);
    let mut limits = Vec::new();
    let mut ids = Vec::new();
    for (cid, bytes, mark) in changes {
        match meta::resize_plan(pod.as_ref(), cid, *bytes) {
            Ok(Some(name)) => {
                limits.push((name, *bytes));
                ids.push((cid.clone(), *bytes, mark.clone()));
            }
            Ok(None) => {}
            Err(why) => {
                kube.counters.resize_skipped[no_resize_index(why)].fetch_add(1, Ordering::Relaxed);
                let key = (uid.to_owned(), cid.clone(), why.as_str());
                let first = said.insert(key);
                let pod_name = pod.as_ref().map(PodInfo::display).unwrap_or_default();
                if first {
                    tracing::warn!(
                        pod = %pod_name,
                        uid = %uid,
                        container_id = %crate::k8s::short_id(cid),
                        limit = %crate::units::format_size(*bytes),
                        reason = why.as_str(),
                        why = why.why(),
                        "resize patch skipped"
                    );
                } else {
                    tracing::debug!(pod = %pod_name, reason = why.as_str(), "resize skipped");
                }
            }
        }
    }
    let pod = pod?;
    if limits.is_empty() {
        return None;
    }
    let body = meta::resize_body(&limits);
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    // Recorded as asked before the patch is sent: the kubelet may apply it before the API's
    // answer is read here. (A refused patch leaves a value the agent wrote itself anyway.)
    let now = crate::clock::monotonic_ns();
    for (_, bytes, mark) in &ids {
        if let Some(m) = mark {
            m.asked(Setting::Memory(Limit::from_bytes(*bytes)), now);
        }
    }
    match api
        .patch_resize(&pod.name, &pp, &Patch::Strategic(&body))
        .await
    {
        Ok(p) => {
            kube.counters.resized.fetch_add(1, Ordering::Relaxed);
            {
                let mut patched = lock(&kube.patched);
                for (cid, bytes, _) in &ids {
                    patched.insert((uid.to_owned(), cid.clone()), *bytes);
                }
            }
            if let Some(info) = PodInfo::from_pod(&p) {
                write(&kube.pods).insert(info.uid.clone(), info);
                kube.changed();
            }
            for (name, bytes) in &limits {
                tracing::info!(
                    target: "scaler::audit",
                    pod = %pod.display(),
                    uid = %uid,
                    container = %name,
                    memory_limit = %meta::format_quantity(*bytes),
                    "pod resized (resize subresource patched)"
                );
            }
            None
        }
        Err(::kube::Error::Api(s)) if (400..500).contains(&s.code) => {
            kube.counters.resize_refused.fetch_add(1, Ordering::Relaxed);
            kube.counters.resize_errors.fetch_add(1, Ordering::Relaxed);
            let hint = match s.code {
                403 => " (grant the agent's ClusterRole `patch` on `pods/resize`, see deploy/kubernetes/rbac.yaml)",
                404 => " (the pod is gone, or the API is older than 1.33: no resize subresource)",
                _ => "",
            };
            tracing::warn!(
                pod = %pod.display(),
                uid = %uid,
                code = s.code,
                reason = %s.reason,
                error = %format!("{}{hint}", s.message),
                "resize patch refused by the API: not retried (the cgroup keeps the agent's \
                 limit, the pod's spec the old one)"
            );
            None
        }
        Err(e) => {
            kube.counters.resize_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pod = %pod.display(),
                uid = %uid,
                error = %e,
                retry_in = ?kube.resize_interval,
                "resize patch failed: tried again after the interval"
            );
            Some(changes.to_vec())
        }
    }
}
