//! The agent's managed sets, one per resource, kept in line with the configuration and the
//! cgroups that exist; their periodic samples, metrics, status and restore — written once for
//! every resource over [`ManagedResource`].

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
};

use super::{
    capacity::{self, Unprotected},
    lock,
    metrics::{CgroupLabels, LimitLabels, Metrics, ProgramLabels, RefusedLabels, ResultLabels},
    resource_index,
    state::{Observed, SettingRecord},
    status::{ManagedCpuStatus, ManagedStatus, StatusDoc},
    AgentState, Managed,
};
use crate::{
    actuator::{Setting, WriteMark},
    cgroupfs::{CgroupIndex, Hierarchy, Limit},
    config::{Config, NodeInfo, PolicyConfig, Untrusted},
    decider::{CgId, Policy, Resource},
    ebpf::Pipeline,
    engine::{Budget, Command, Engine, EngineStats, ManageRequest, Snapshot},
    resource::{self, ManagedResource, Restored},
};

/// Where one resource's cgroups live.
pub struct Side {
    pub hierarchy: Hierarchy,
    /// Its own index when the resource's hierarchy is a different tree from the memory one
    /// (cgroup v1 cpu); `None` on a unified (v2) tree, where the memory index serves both.
    pub index: Option<CgroupIndex>,
}

/// The agent: configuration, hierarchies, programs, engine, and what it manages.
pub struct Agent {
    pub config: Config,
    pub node: NodeInfo,
    /// The memory hierarchy (always present: the agent does not start without it).
    pub hierarchy: Hierarchy,
    pub index: CgroupIndex,
    /// The other resources' hierarchies, found the first time a policy manages them.
    pub sides: HashMap<Resource, Side>,
    /// Resources whose controller was looked for and not found (said once).
    pub unavailable: HashSet<Resource>,
    pub pipeline: Pipeline,
    pub engine: Engine,
    pub state: Arc<AgentState>,
    /// State records of unmanaged cgroups whose original could not be put back yet (said
    /// once; retried at each reconcile).
    pub kept: HashSet<(Resource, String)>,
    /// Cgroups refused and said so: each is logged and counted once while it stays refused.
    pub refused: HashSet<Refusal>,
}

/// A refused cgroup, as remembered so that it is said once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refusal {
    /// The resource whose policy selected it (`None`: its opt-in, for every resource).
    resource: Option<Resource>,
    /// The mount point of its hierarchy.
    mount: PathBuf,
    /// Its path from the hierarchy root.
    path: String,
}

/// Refused cgroups logged by name in one pass (the rest are counted, and summed up in one
/// line).
const REFUSALS_LOGGED_PER_PASS: usize = 10;

/// What one pass over a hierarchy's cgroups found.
struct Selection<P> {
    /// Cgroups a policy selects, with what `pick` takes from the policy, parents before
    /// children (so that each finds its managed ancestor): (id, path, policy name, pick).
    wanted: Vec<(CgId, String, String, P)>,
    /// Cgroups whose opt-in attribute does not count (it could have been forged), with why.
    untrusted: Vec<(String, Untrusted)>,
    /// Cgroups a policy selects that hold the agent itself (its own cgroup, or an ancestor of
    /// it), with the policy's name: never managed.
    own: Vec<(String, String)>,
    /// Kubernetes pod sandbox (pause) containers a policy selects, with the policy's name:
    /// never managed.
    sandbox: Vec<(String, String)>,
}

/// Whether the cgroup at `path` is a Kubernetes pod sandbox (pause) container: a container
/// cgroup of a pod below one of the kubelet's roots whose processes are all `pause`
/// ([`crate::k8s::is_sandbox`]). Read from `/proc/<pid>/comm` (the agent runs with the host's
/// PID namespace); a process that exits meanwhile is skipped.
fn is_pod_sandbox(config: &Config, hierarchy: &Hierarchy, path: &str) -> bool {
    if config.pod_of(path).is_none_or(|p| p.container_id.is_none()) {
        return false;
    }
    let Ok(pids) = hierarchy.cgroup(path).and_then(|c| c.procs()) else {
        return false;
    };
    let comms: Vec<String> = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .collect();
    crate::k8s::is_sandbox(comms.iter().map(String::as_str))
}

/// True if `path` is `own` or one of its ancestors (both paths from the hierarchy root).
fn holds(path: &str, own: &str) -> bool {
    path == "/"
        || own
            .strip_prefix(path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Cgroups of `index` that a policy selects (see [`Selection`]). An opt-in attribute counts
/// only where it cannot be forged ([`crate::config::AgentConfig::opt_in_trust`]); `own` is the
/// agent's own cgroup in this hierarchy, which is never selected, nor are its ancestors.
fn selected<P>(
    config: &Config,
    hierarchy: &Hierarchy,
    index: &CgroupIndex,
    own: Option<&str>,
    pick: impl Fn(&PolicyConfig) -> Option<P>,
) -> Selection<P> {
    let needs_xattr = config.uses_opt_in();
    let xattr_name = &config.agent.opt_in_xattr;
    let mut out = Selection {
        wanted: Vec::new(),
        untrusted: Vec::new(),
        own: Vec::new(),
        sandbox: Vec::new(),
    };
    for (id, path) in index.iter() {
        let xattr = if needs_xattr {
            // Most cgroups carry no attribute: one getxattr by path says so; only a present
            // one is read again with its directory's owner, through one descriptor.
            let cg = hierarchy.cgroup(path).ok();
            let present = cg
                .as_ref()
                .is_some_and(|c| c.xattr(xattr_name).is_ok_and(|v| v.is_some()));
            match cg
                .filter(|_| present)
                .and_then(|c| c.xattr_with_owner(xattr_name).ok().flatten())
            {
                Some((v, owner)) => match config.agent.opt_in_trust(owner.uid, owner.mode) {
                    Ok(()) => Some(String::from_utf8_lossy(&v).into_owned()),
                    Err(why) => {
                        out.untrusted.push((path.to_string(), why));
                        None
                    }
                },
                None => None,
            }
        } else {
            None
        };
        if let Some(p) = config.policy_for(path, xattr.as_deref()) {
            if let Some(v) = pick(p) {
                if own.is_some_and(|o| holds(path, o)) {
                    out.own.push((path.to_string(), p.name.clone()));
                    continue;
                }
                if is_pod_sandbox(config, hierarchy, path) {
                    out.sandbox.push((path.to_string(), p.name.clone()));
                    continue;
                }
                out.wanted.push((id.0, path.to_string(), p.name.clone(), v));
            }
        }
    }
    out.wanted
        .sort_by_key(|(_, path, _, _)| path.matches('/').count());
    out
}

/// How much the cgroup at `path` may grow under the limits of its unmanaged ancestors: the
/// least of their limit minus working set (usage less inactive file pages, the kubelet's
/// measure) over the ancestors between it and its nearest ancestor in `managed` (exclusive),
/// not counting the hierarchy root; `u64::MAX` when none is limited. `cache` keeps each
/// ancestor's figure (`None`: unlimited or unreadable) for one sample pass.
fn outer_room(
    h: &Hierarchy,
    path: &str,
    managed: &HashSet<String>,
    cache: &mut HashMap<String, Option<u64>>,
) -> u64 {
    let mut room = u64::MAX;
    for a in ancestors(path) {
        if a == "/" || managed.contains(a) {
            break;
        }
        let r = *cache.entry(a.to_owned()).or_insert_with(|| {
            let cg = h.cgroup(a).ok()?;
            let limit = cg.memory_limit().ok()?.as_u64_saturating();
            if limit == u64::MAX {
                return None;
            }
            let usage = cg.memory_usage().ok()?;
            let inactive = cg.memory_stat().map_or(0, |s| s.inactive_file);
            Some(limit.saturating_sub(usage.saturating_sub(inactive)))
        });
        if let Some(r) = r {
            room = room.min(r);
        }
    }
    room
}

/// `/a/b/c` -> `/a/b`, `/a`, `/`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
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

impl Agent {
    /// Whether a policy manages `r`.
    fn wants(&self, r: &dyn ManagedResource) -> bool {
        self.config
            .policies
            .iter()
            .any(|p| r.policy(p, &self.node).is_some())
    }

    /// The hierarchy of `res` as known now: memory's own, or the one found for another
    /// resource (`None` until a policy manages it, or when its controller is not available).
    fn known_hierarchy(&self, res: Resource) -> Option<&Hierarchy> {
        match res {
            Resource::Memory => Some(&self.hierarchy),
            _ => self.sides.get(&res).map(|s| &s.hierarchy),
        }
    }

    /// The hierarchy of resource `r`, looked for the first time a policy manages it (`None`
    /// when its controller is not available).
    fn hierarchy_of(&mut self, r: &dyn ManagedResource) -> Option<&Hierarchy> {
        let res = r.resource();
        if self.known_hierarchy(res).is_none() && !self.unavailable.contains(&res) {
            match Hierarchy::discover(Path::new("/"), r.controller()) {
                Ok(h) => {
                    let index =
                        (!h.same_tree(&self.hierarchy)).then(|| CgroupIndex::new(h.clone()));
                    tracing::info!(
                        resource = res.as_str(),
                        hierarchy = %format!("{} at {}", h.version, h.mount.display()),
                        "managing {}", res.as_str()
                    );
                    self.sides.insert(
                        res,
                        Side {
                            hierarchy: h,
                            index,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(
                        resource = res.as_str(),
                        "a policy manages {} but the {} controller is not available ({e}); it \
                         is not managed (mount the controller: cgroup v2 with +{} in \
                         cgroup.subtree_control, or its v1 hierarchy)",
                        res.as_str(),
                        r.controller(),
                        r.controller(),
                    );
                    self.unavailable.insert(res);
                }
            }
        }
        self.known_hierarchy(res)
    }

    /// Brings every resource's managed set in line with the configuration and the cgroups that
    /// exist: new matching cgroups are managed, vanished or no-longer-selected ones forgotten.
    pub fn reconcile(&mut self) {
        if let Err(e) = self.index.rescan() {
            tracing::warn!("rescanning {}: {e}", self.hierarchy.mount.display());
            return;
        }
        for r in resource::ALL {
            self.reconcile_resource(r);
        }
        self.state.save_state();
    }

    /// Logs and counts, once per cgroup while it stays refused, the cgroups of `h` whose
    /// opt-in does not count and those a policy selects that hold the agent itself.
    fn report_refused(
        &mut self,
        h: &Hierarchy,
        res: Resource,
        untrusted: &[(String, Untrusted)],
        own: &[(String, String)],
        sandbox: &[(String, String)],
    ) {
        let metrics = &self.state.metrics;
        let count = |reason| {
            metrics
                .cgroups_refused
                .get_or_create(&RefusedLabels {
                    resource: res.as_str(),
                    reason,
                })
                .inc();
        };
        // The opt-in is the cgroup's, whatever the resource (on a unified tree every resource
        // finds the same ones); holding the agent is a refusal of one resource's policy.
        let opt_in = |path: &str| Refusal {
            resource: None,
            mount: h.mount.clone(),
            path: path.to_owned(),
        };
        let holder = |path: &str| Refusal {
            resource: Some(res),
            mount: h.mount.clone(),
            path: path.to_owned(),
        };
        let mut now = HashSet::new();
        // A storm of forged opt-ins (a user making thousands of cgroups) is counted in full
        // but logged a few lines a pass.
        let mut unsaid = 0usize;
        let mut said = 0usize;
        for (path, why) in untrusted {
            let key = opt_in(path);
            if !self.refused.contains(&key) {
                count("untrusted_opt_in");
                if said < REFUSALS_LOGGED_PER_PASS {
                    said += 1;
                    tracing::warn!(
                        cgroup = %path,
                        resource = res.as_str(),
                        xattr = %self.config.agent.opt_in_xattr,
                        reason = why.as_str(),
                        why = %why,
                        "opt-in ignored: an unprivileged user could have set the attribute"
                    );
                } else {
                    unsaid += 1;
                }
            }
            now.insert(key);
        }
        if unsaid > 0 {
            tracing::warn!(
                resource = res.as_str(),
                count = unsaid,
                "opt-in ignored on {unsaid} more cgroups (see \
                 scaler_cgroups_refused_total{{reason=\"untrusted_opt_in\"}})"
            );
        }
        for (path, policy) in own {
            let key = holder(path);
            if !self.refused.contains(&key) {
                count("agent_cgroup");
                tracing::warn!(
                    cgroup = %path,
                    resource = res.as_str(),
                    policy = %policy,
                    "refused: the agent runs in this cgroup (or below it) and never manages \
                     its own limits; narrow the policy's match"
                );
            }
            now.insert(key);
        }
        for (path, policy) in sandbox {
            let key = holder(path);
            if !self.refused.contains(&key) {
                count("pod_sandbox");
                tracing::info!(
                    cgroup = %path,
                    resource = res.as_str(),
                    policy = %policy,
                    "not managed: a Kubernetes pod sandbox (pause) container; its limits are \
                     never written"
                );
            }
            now.insert(key);
        }
        // Forget what this pass no longer refuses (so that it is said again if it comes back).
        self.refused.retain(|r| {
            r.mount != h.mount || r.resource.is_some_and(|x| x != res) || now.contains(r)
        });
        self.refused.extend(now);
    }

    fn reconcile_resource(&mut self, r: &dyn ManagedResource) {
        let res = r.resource();
        let wants = self.wants(r);
        let recorded = lock(&self.state.state).has_records(res);
        if !wants && !recorded && lock(self.state.managed(res)).is_empty() {
            lock(&self.state.unprotected)[resource_index(res)].clear();
            return;
        }
        if (wants || recorded) && self.hierarchy_of(r).is_none() {
            return;
        }
        let Some(h) = self.known_hierarchy(res).cloned() else {
            return;
        };
        let mut wanted = Vec::new();
        if wants {
            let node = self.node;
            let index = match self.sides.get_mut(&res).and_then(|s| s.index.as_mut()) {
                Some(i) => {
                    if let Err(e) = i.rescan() {
                        tracing::warn!("rescanning {}: {e}", h.mount.display());
                        return;
                    }
                    &*i
                }
                None => &self.index,
            };
            let own = match h.own_cgroup() {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::warn!(
                        resource = res.as_str(),
                        "cannot tell the agent's own cgroup ({e}): no cgroup is refused as \
                         holding the agent"
                    );
                    None
                }
            };
            let sel = selected(&self.config, &h, index, own.as_deref(), |p| {
                r.policy(p, &node)
            });
            self.report_refused(&h, res, &sel.untrusted, &sel.own, &sel.sandbox);
            wanted = sel.wanted;
            self.leave_opted_out(res, &mut wanted);
        }
        let wanted_ids: HashSet<CgId> = wanted.iter().map(|w| w.0).collect();
        let wanted_paths: Vec<String> = wanted.iter().map(|w| w.1.clone()).collect();
        let mut managed = lock(self.state.managed(res));
        let metrics = &self.state.metrics;
        let gone: Vec<CgId> = managed
            .keys()
            .filter(|id| !wanted_ids.contains(id))
            .copied()
            .collect();
        let forgot = !gone.is_empty();
        for id in gone {
            // Forget in the engine first: a refused Forget keeps the entry, tried again at the
            // next pass (the engine must never keep writing a cgroup the agent let go).
            if let Err(e) = self.engine.send(Command::Forget(res, id)) {
                tracing::error!(
                    cgroup = %managed[&id].path,
                    resource = res.as_str(),
                    "cannot stop managing it yet: {e}"
                );
                continue;
            }
            let m = managed.remove(&id).expect("listed");
            tracing::info!(
                cgroup = %m.path,
                resource = res.as_str(),
                "no longer managed (removed or deselected)"
            );
            r.unwatch(&mut self.pipeline, id);
            // Its state record stays until its original is back (below).
            metrics.forget(&m.labels);
        }
        let mut path_to_id: HashMap<String, CgId> = managed
            .iter()
            .map(|(id, m)| (m.path.clone(), *id))
            .collect();
        let previous = std::mem::take(&mut lock(&self.state.unprotected)[resource_index(res)]);
        let mut unprotected: HashMap<String, Unprotected> = HashMap::new();
        let mut refuse = |path: &str, u: Unprotected| {
            metrics
                .cgroups_refused
                .get_or_create(&RefusedLabels {
                    resource: res.as_str(),
                    reason: u.reason,
                })
                .inc();
            // Loud the first time; the same refusal at later passes is a debug line.
            if previous.get(path).map(|p| p.reason) == Some(u.reason) {
                tracing::debug!(
                    cgroup = %path,
                    resource = res.as_str(),
                    reason = u.reason,
                    "still not protected: {}",
                    u.error
                );
            } else {
                tracing::error!(
                    cgroup = %path,
                    resource = res.as_str(),
                    reason = u.reason,
                    "NOT PROTECTED: {}",
                    u.error
                );
            }
            unprotected.insert(path.to_owned(), u);
        };
        for (id, path, policy_name, policy) in wanted {
            // The API's names and the pod's scaler.io/ annotations (which only tighten the
            // policy); path data alone without the API.
            let pod = self.config.pod_of(&path);
            let info = self.pod_info(pod.as_ref());
            let (policy, clamps) = match &info {
                Some(i) => crate::kube::meta::tighten(policy, &i.annotations),
                None => (policy, Vec::new()),
            };
            let cgroup_labels =
                CgroupLabels::new(&path, &policy_name, pod.as_ref()).with_names(info.as_ref());
            if let Some(m) = managed.get(&id) {
                if m.policy == policy
                    && m.policy_name == policy_name
                    && m.labels.cgroup == cgroup_labels
                {
                    continue;
                }
            }
            let cg = match h.cgroup(&path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(cgroup = %path, resource = res.as_str(), "{e}");
                    continue;
                }
            };
            // Opened through the cgroup's directory fd, and only if it is still the cgroup
            // the index found (id): a path removed and recreated since is refused here, and
            // the new cgroup is managed on its own at the next pass.
            let writer = match r.open(&cg, Some(id)) {
                Ok(w) => w,
                Err(e) if e.kind() == crate::actuator::ErrorKind::Gone => {
                    tracing::debug!(
                        cgroup = %path,
                        resource = res.as_str(),
                        "gone before it was managed: {e}"
                    );
                    continue;
                }
                Err(e) => {
                    refuse(&path, capacity::open_refusal(&e));
                    continue;
                }
            };
            let current = writer.current();
            // The time of the usage figure is taken before it is read.
            let sampled_ns = crate::clock::monotonic_ns();
            let usage = r.usage(&cg);
            let kernel_events = match r.watch(&mut self.pipeline, id, &policy) {
                Ok(w) => w,
                Err(e) => {
                    refuse(
                        &path,
                        capacity::watch_refusal(&e, self.pipeline.max_watched()),
                    );
                    continue;
                }
            };
            let parent = ancestors(&path).find_map(|a| path_to_id.get(a).copied());
            let mark = Arc::new(WriteMark::new(current));
            if let Err(e) = self.engine.send(Command::Manage(Box::new(ManageRequest {
                id,
                path: Arc::from(path.as_str()),
                parent,
                policy,
                writer,
                usage,
                sampled_ns,
                mark: Some(mark.clone()),
            }))) {
                if !managed.contains_key(&id) {
                    r.unwatch(&mut self.pipeline, id);
                }
                refuse(&path, capacity::engine_refusal(e));
                continue;
            }
            let (original, original_unknown) =
                lock(&self.state.state).manage_setting(&path, id, &policy_name, current);
            let labels = LimitLabels::new(&cgroup_labels, r);
            if let Some(i) = &info {
                report_annotations(&path, res, i, &clamps, metrics);
            }
            if let Some(old) = managed.get(&id).map(|m| m.labels.clone()) {
                metrics.forget(&old);
            }
            metrics.set_original_limit(&labels, r.gauge(original));
            metrics.set_limit(&labels, r.gauge(current));
            metrics
                .original_unknown
                .get_or_create(&labels)
                .set(if original_unknown { 1.0 } else { 0.0 });
            let (min, max) = r.bounds(&policy);
            if original_unknown {
                tracing::error!(
                    cgroup = %path,
                    resource = res.as_str(),
                    limit = %current,
                    "original limit UNKNOWN (the state file and its copy were lost or damaged): \
                     the limit found now may be one the agent had raised; restores leave this \
                     cgroup as it is, and a limit its owner writes becomes its original"
                );
            }
            tracing::info!(
                cgroup = %path,
                resource = res.as_str(),
                policy = %policy_name,
                pod = pod.as_ref().map(|p| tracing::field::display(p.display_name())),
                min = %min,
                max = %max,
                limit = %current,
                original = %original,
                original_unknown,
                kernel_events,
                "managing"
            );
            path_to_id.insert(path.clone(), id);
            managed.insert(
                id,
                Managed {
                    path,
                    policy_name,
                    policy,
                    original,
                    original_unknown,
                    mark,
                    adopted: None,
                    ancestor_room_bounded: false,
                    adoptions_seen: 0,
                    owner_value: None,
                    pod,
                    labels,
                },
            );
        }
        metrics
            .managed
            .get_or_create(&super::metrics::ResourceLabels {
                resource: res.as_str(),
            })
            .set(managed.len() as i64);
        for reason in capacity::reason::ALL {
            let n = unprotected.values().filter(|u| u.reason == reason).count();
            metrics
                .cgroups_unprotected
                .get_or_create(&RefusedLabels {
                    resource: res.as_str(),
                    reason,
                })
                .set(n as i64);
        }
        lock(&self.state.unprotected)[resource_index(res)] = unprotected;
        // Records of cgroups not managed any more (removed, deselected by a reload or by a
        // changed path or opt-in, or while the agent was down): the original goes back.
        let keep: HashSet<String> = managed
            .values()
            .map(|m| m.path.clone())
            .chain(wanted_paths)
            .collect();
        drop(managed);
        let unmanaged: Vec<SettingRecord> =
            lock(&self.state.state).settings_where(res, |p| !keep.contains(p));
        if unmanaged.is_empty() {
            return;
        }
        if forgot {
            // The engine handles commands in order: once it answers this, it has forgotten
            // them, and nothing races the restores.
            let _ = self.engine.snapshot(res);
        }
        let dry_run = self.config.agent.dry_run;
        for rec in unmanaged {
            let key = (res, rec.path.clone());
            let quiet = self.kept.contains(&key);
            let settled = if dry_run {
                true
            } else {
                put_back(r, &h, &rec, "deselected", quiet)
            };
            if settled {
                lock(&self.state.state).forget_setting(res, &rec.path);
                self.kept.remove(&key);
            } else {
                self.kept.insert(key);
            }
        }
    }

    /// What the Kubernetes API says of the pod of a cgroup (`None`: not a pod's cgroup, the
    /// API is off, or the pod is not known yet).
    fn pod_info(&self, pod: Option<&crate::k8s::PodCgroup>) -> Option<crate::kube::PodInfo> {
        let k = self.state.kube.as_ref()?;
        k.pod(pod?.pod_uid.as_deref()?)
    }

    /// Drops from `wanted` the cgroups of pods annotated `scaler.io/enabled: "false"` (their
    /// limits go back to the originals, as for a deselected cgroup).
    fn leave_opted_out(&self, res: Resource, wanted: &mut Vec<(CgId, String, String, Policy)>) {
        if self.state.kube.is_none() {
            return;
        }
        let managed = lock(self.state.managed(res));
        wanted.retain(|(id, path, policy, _)| {
            let out = self
                .pod_info(self.config.pod_of(path).as_ref())
                .is_some_and(|i| i.annotations.enabled == Some(false));
            if out && managed.contains_key(id) {
                tracing::info!(
                    cgroup = %path,
                    resource = res.as_str(),
                    policy = %policy,
                    annotation = crate::kube::meta::ENABLED,
                    "the pod opted out (scaler.io/enabled: \"false\"): no longer managed"
                );
            }
            !out
        });
    }

    /// After the first reconcile: the cgroups that existed at start are managed, and those
    /// found from now on are new (their limit is their original, also after a lost state).
    pub fn drop_stale_state(&self) {
        lock(&self.state.state).end_recovery();
        self.state.save_state();
    }

    /// Samples what the node can back beyond its reserves (see [`crate::node`]: `MemAvailable`
    /// minus `node.memory_reserve`, and the kubelet's `memory.available` minus its reservations
    /// where its configuration is read, re-read here when it changed) and hands it to the
    /// engine, which bounds every memory raise by it (less what raises granted since).
    pub fn sample_node(&self) {
        let measured_ns = crate::clock::monotonic_ns();
        let mut node = lock(&self.state.node);
        let sampled = node.sample(&self.config, &self.node);
        let m = &self.state.metrics;
        Metrics::set_total(&m.kubelet_config_errors, node.watch.errors());
        drop(node);
        let f = match sampled {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("reading /proc/meminfo: {e}; raises keep the last figure");
                return;
            }
        };
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.node_memory_room.set(g(f.room));
        m.node_memory_capacity.set(g(f.meminfo.total));
        m.node_memory_available.set(g(f.meminfo.available));
        let k = f.kubelet.unwrap_or(crate::node::KubeletReserve {
            eviction: 0,
            reserved: 0,
            allocatable: 0,
            available: 0,
        });
        for (source, v) in [
            ("config", f.config_reserve),
            ("kubelet_eviction", k.eviction),
            ("kubelet_reserved", k.reserved),
        ] {
            m.node_memory_reserve
                .get_or_create(&super::metrics::SourceLabels { source })
                .set(g(v));
        }
        if let Err(e) = self
            .engine
            .send(Command::SetBudget(Budget::MemoryAvailable {
                bytes: f.room,
                measured_ns,
            }))
        {
            tracing::warn!("the node's memory figure is not in force yet: {e}");
        }
    }

    /// The slow path: a sample of each managed cgroup of each resource (scale-down, rate
    /// estimation, throttling), which also notices limits changed outside the agent (see
    /// [`super::state::Table::observe`]): such a limit becomes the cgroup's original.
    pub fn sample(&self) {
        self.sample_node();
        for r in resource::ALL {
            let res = r.resource();
            let Some(h) = self.known_hierarchy(res) else {
                continue;
            };
            let mut managed = lock(self.state.managed(res));
            // Memory: the room under each managed cgroup's unmanaged ancestors (kubelet's
            // `kubepods`), each ancestor read once per sample.
            let managed_paths: HashSet<String> = if res == Resource::Memory {
                managed.values().map(|m| m.path.clone()).collect()
            } else {
                HashSet::new()
            };
            let mut rooms: HashMap<String, Option<u64>> = HashMap::new();
            for (id, m) in managed.iter_mut() {
                let Ok(cg) = h.cgroup(&m.path) else {
                    continue;
                };
                if res == Resource::Memory {
                    let measured_ns = crate::clock::monotonic_ns();
                    let bytes = outer_room(h, &m.path, &managed_paths, &mut rooms);
                    // No command while nothing above it is limited (the usual case outside
                    // Kubernetes): the engine's entry starts unbounded.
                    if bytes != u64::MAX || m.ancestor_room_bounded {
                        let usage = cg.memory_usage().unwrap_or(0);
                        let sent = self.engine.send(Command::AncestorRoom {
                            id: *id,
                            bytes,
                            usage,
                            measured_ns,
                        });
                        if sent.is_ok() {
                            m.ancestor_room_bounded = bytes != u64::MAX;
                        }
                    }
                }
                // Owner's writes the engine found since (re-read before a write, or on an
                // event that disagreed with what it believed).
                take_adoption(&self.state, r, m);
                // What the agent had written, read around the sample (see WriteMark).
                let before = m.mark.read();
                let Some(s) = r.sample(&cg, Some((&self.pipeline, *id))) else {
                    continue;
                };
                // Read by path: the figures are this cgroup's only if the path still holds it
                // (ids are never reused); a recreated one is not fed to the old entry.
                if !cg.id().is_ok_and(|now| now.0 == *id) {
                    continue;
                }
                let ours =
                    before
                        .filter(|(seq, _)| m.mark.unchanged_since(*seq))
                        .map(|(seq, written)| match m.adopted {
                            Some((at, adopted)) if at == seq => (seq, adopted),
                            // The kubelet applied one of the agent's resize patches, older
                            // than its latest write: the agent's value, not an owner's (the
                            // engine takes it as the limit in force at this sample's signal).
                            _ if written != s.observed
                                && m.mark.is_echo(s.observed, crate::clock::monotonic_ns()) =>
                            {
                                (seq, s.observed)
                            }
                            _ => (seq, written),
                        });
                if let Observed::Adopted { previous } =
                    lock(&self.state.state).observe_setting(&m.path, s.observed, ours.map(|o| o.1))
                {
                    let old = ours.map_or(previous, |o| o.1);
                    owner_wrote(&self.state, r, m, previous, old, s.observed, "sample", 1);
                    m.owner_value = Some(s.observed);
                    m.adopted = ours.map(|(seq, _)| (seq, s.observed));
                }
                if let Some(t) = s.throttled_seconds {
                    Metrics::set_total_f64(
                        &self
                            .state
                            .metrics
                            .cpu_throttled_seconds
                            .get_or_create(&m.labels.cgroup),
                        t,
                    );
                }
                // A refused sample is counted by the engine; the next comes an interval later.
                let _ = self.engine.send(Command::Signal(*id, s.signal));
            }
        }
        self.state.save_state();
    }

    /// Refreshes the metrics kept by others: per-cgroup limits and usage (engine snapshots),
    /// kernel and engine counters, BPF program statistics.
    pub fn refresh_metrics(&self) {
        let m = &self.state.metrics;
        for r in resource::ALL {
            let res = r.resource();
            if self.known_hierarchy(res).is_none() {
                continue;
            }
            let snapshot = self.engine.snapshot(res);
            let managed = lock(self.state.managed(res));
            for s in &snapshot {
                let Some(c) = managed.get(&s.id) else {
                    continue;
                };
                m.set_limit(&c.labels, r.gauge(s.limit));
                if let Some(u) = s.usage {
                    m.usage.get_or_create(&c.labels).set(u);
                }
                if let Some(u) = s.utilization {
                    m.utilization.get_or_create(&c.labels.utilization()).set(u);
                }
            }
            drop(managed);
            if res == Resource::Memory {
                if let Some((_, u)) = unmanaged_of(&self.state, &snapshot) {
                    m.node_memory_unmanaged
                        .set(i64::try_from(u).unwrap_or(i64::MAX));
                }
            }
        }
        if let Some(k) = &self.state.kube {
            m.set_kube(k);
        }
        let k = self.pipeline.kernel_stats();
        Metrics::set_total(&m.ringbuf_dropped, k.ringbuf_dropped);
        Metrics::set_total(&m.observe_shed, k.observe_shed);
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
            &m.commands_refused,
            e.commands_refused.load(Ordering::Relaxed),
        );
        Metrics::set_total(
            &m.unmanaged_ancestor_binds,
            e.unmanaged_ancestor_binds.load(Ordering::Relaxed),
        );
        for r in resource::ALL {
            let resource = r.resource();
            for reason in crate::decider::REFUSAL_REASONS {
                let n = e.refused(resource, reason);
                if n > 0 {
                    let l = super::metrics::RefusedLabels {
                        resource: resource.as_str(),
                        reason,
                    };
                    Metrics::set_total(&m.raises_refused.get_or_create(&l), n);
                }
            }
        }
        // Only while the agent holds the kernel's statistics on (`agent.bpf_stats`): otherwise
        // the kernel's figures cover only the times someone else had them on.
        let programs = if self.pipeline.bpf_stats_on() {
            self.pipeline.program_stats()
        } else {
            Default::default()
        };
        for (program, (run_time, runs)) in programs {
            let l = ProgramLabels { program };
            Metrics::set_total_f64(&m.bpf_run_seconds.get_or_create(&l), run_time.as_secs_f64());
            Metrics::set_total(&m.bpf_runs.get_or_create(&l), runs);
        }
    }

    /// SIGHUP: loads the configuration again; a valid one replaces the old one (budgets and
    /// policies at once; addresses and files at the next start), an invalid one is rejected.
    pub fn reload(&mut self, path: Option<&Path>) {
        let reloads = &self.state.metrics.reloads;
        match super::load_config(path, &self.node) {
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
                    (
                        "bpf_stats",
                        self.config.agent.bpf_stats.to_string(),
                        c.agent.bpf_stats.to_string(),
                    ),
                ] {
                    if old != new {
                        tracing::warn!("agent.{key} changed from {old} to {new}: takes effect at the next start");
                    }
                }
                for w in c.warnings() {
                    tracing::warn!(key = %w.key, "{}", w.message);
                }
                if let Err(e) = self
                    .engine
                    .send(Command::SetBudget(Budget::Cpu(c.cpu_budget(&self.node))))
                {
                    tracing::error!("the new cpu budget is not in force: {e}");
                }
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
                super::check_opt_in_readable(&self.config);
                // The new reserve, at once.
                self.sample_node();
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
                tracing::error!(
                    config = path.map(|p| tracing::field::display(p.display())),
                    error = %e,
                    "configuration reload rejected, the old one keeps running: {e}"
                );
            }
        }
    }

    /// The hierarchies the restore needs, by resource.
    pub fn hierarchies(&self) -> HashMap<Resource, Hierarchy> {
        resource::ALL
            .iter()
            .filter_map(|r| {
                let res = r.resource();
                self.known_hierarchy(res).map(|h| (res, h.clone()))
            })
            .collect()
    }
}

/// Takes the owner's writes the engine adopted since the last look ([`WriteMark::adoption`]):
/// the latest becomes the original (state file, metrics), logged and counted like one a
/// sample found, unless a sample already adopted that very value.
pub fn take_adoption(state: &AgentState, r: &dyn resource::ManagedResource, m: &mut Managed) {
    let Some(ad) = m.mark.adoption() else {
        return;
    };
    // A value a sample adopted is the engine's to find too, at most until the next look
    // (the engine learns it from that sample): the same write, logged and counted once.
    let sampled = m.owner_value.take();
    if ad.count <= m.adoptions_seen {
        return;
    }
    // Several owner's writes between two looks: the latest is the original, each is counted.
    let n = ad.count - m.adoptions_seen - u64::from(sampled == Some(ad.new));
    m.adoptions_seen = ad.count;
    if n == 0 {
        return;
    }
    let Some(previous) = lock(&state.state).owner_wrote_setting(&m.path, ad.new) else {
        return;
    };
    owner_wrote(state, r, m, previous, ad.old, ad.new, "re-read", n);
}

/// An owner's write adopted as `m`'s original: logged (the cgroup, the limit the agent held
/// and the owner's), counted in `scaler_external_changes_total{resource}`, and the original's
/// metrics updated. `writes`: how many owner's writes it stands for (counted).
#[allow(clippy::too_many_arguments)]
fn owner_wrote(
    state: &AgentState,
    r: &dyn resource::ManagedResource,
    m: &mut Managed,
    previous: Setting,
    old: Setting,
    new: Setting,
    seen_by: &'static str,
    writes: u64,
) {
    let res = r.resource();
    tracing::info!(
        cgroup = %m.path,
        resource = res.as_str(),
        previous = %previous,
        original = %new,
        old = %old,
        new = %new,
        seen_by,
        "limit changed outside the agent: adopted as the original"
    );
    m.original = new;
    m.original_unknown = false;
    let metrics = &state.metrics;
    metrics.set_original_limit(&m.labels, r.gauge(new));
    metrics.original_unknown.get_or_create(&m.labels).set(0.0);
    metrics
        .external_changes
        .get_or_create(&super::metrics::ResourceLabels {
            resource: res.as_str(),
        })
        .inc_by(writes);
}

/// At shutdown, once the engine has stopped: the owner's writes it adopted since the last
/// sample become originals before anything is restored.
pub fn take_adoptions(state: &AgentState) {
    for r in resource::ALL {
        let mut managed = lock(state.managed(r.resource()));
        for m in managed.values_mut() {
            take_adoption(state, r, m);
        }
    }
    state.save_state();
}

/// Says (and counts) the pod's `scaler.io/` annotations that were malformed or bounded by the
/// policy, when a cgroup of the pod is (re)managed.
fn report_annotations(
    path: &str,
    res: Resource,
    pod: &crate::kube::PodInfo,
    clamps: &[crate::kube::meta::Clamp],
    metrics: &Metrics,
) {
    for (key, value, why) in &pod.annotations.invalid {
        metrics
            .kubernetes_annotations_rejected
            .get_or_create(&ResultLabels { result: "invalid" })
            .inc();
        tracing::warn!(
            cgroup = %path,
            pod = %pod.display(),
            annotation = %key,
            value = %value,
            why = %why,
            "pod annotation ignored"
        );
    }
    for c in clamps {
        metrics
            .kubernetes_annotations_rejected
            .get_or_create(&ResultLabels { result: "clamped" })
            .inc();
        tracing::warn!(
            cgroup = %path,
            resource = res.as_str(),
            pod = %pod.display(),
            annotation = c.annotation,
            asked = c.asked,
            applied = c.applied,
            bound = c.bound,
            why = %c,
            "pod annotation clamped to the policy"
        );
    }
}

/// At shutdown with `restore_on_exit`: writes each changed cgroup's original limit back, for
/// every resource (memory never below its current usage). Restored cgroups leave the state
/// file; the others stay (so the next start still knows their original). With Kubernetes
/// resize patches on, the pod specs the agent patched follow ([`patch_back`]).
pub fn restore_originals(hierarchies: &HashMap<Resource, Hierarchy>, state: &AgentState) {
    let mut restored = Vec::new();
    for r in resource::ALL {
        let res = r.resource();
        let Some(h) = hierarchies.get(&res) else {
            continue;
        };
        let records = lock(&state.state).settings(res);
        for rec in records {
            if put_back(r, h, &rec, "restore_on_exit", false) {
                lock(&state.state).forget_setting(res, &rec.path);
                restored.push(rec);
            }
        }
    }
    state.save_state();
    if let Some(k) = &state.kube {
        patch_back(k, state, &restored);
    }
}

/// How long the agent waits at exit for the resize patches that put pod specs back.
const PATCH_BACK_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// At shutdown, after the cgroups got their originals back: a container whose pod spec the
/// agent resized (or was about to) is patched back to its original memory limit, so that
/// the spec, the scheduler's view and the container's next start agree with the cgroup again
/// (without it the spec keeps the agent's last limit, and a restarted container gets it).
/// Sent at once, waited for at most [`PATCH_BACK_WITHIN`]; what the API did not take is
/// logged with the pods, left as it is.
fn patch_back(k: &crate::kube::Kube, state: &AgentState, restored: &[SettingRecord]) {
    if !k.resizes() {
        return;
    }
    let managed = lock(state.managed(Resource::Memory));
    let by_path: HashMap<&str, &Managed> = managed.values().map(|m| (&*m.path, m)).collect();
    let mut queued = 0;
    for rec in restored {
        let Setting::Memory(Limit::Bytes(original)) = rec.original else {
            continue;
        };
        let Some(m) = by_path.get(rec.path.as_str()) else {
            continue;
        };
        let c = &m.labels.cgroup;
        if c.uid.is_empty() || c.container_id.is_empty() {
            continue;
        }
        if k.patched(&c.uid, &c.container_id)
            .is_none_or(|p| p == original)
            && !k.is_pending(&c.uid, &c.container_id)
        {
            continue;
        }
        k.limit_changed(&c.uid, &c.container_id, original, None);
        queued += 1;
    }
    drop(by_path);
    drop(managed);
    if queued == 0 {
        return;
    }
    let left = k.flush(PATCH_BACK_WITHIN);
    if left.is_empty() {
        tracing::info!(
            containers = queued,
            "pod specs patched back to the original memory limits"
        );
    } else {
        tracing::warn!(
            containers = queued,
            not_patched = left.len(),
            pods = ?left.iter().map(|(uid, _)| uid.as_str()).collect::<Vec<_>>(),
            within = ?PATCH_BACK_WITHIN,
            "pod specs not all patched back to the original memory limits (the API did not \
             answer in time or failed): their spec keeps the agent's last limit; set it with \
             kubectl patch --subresource resize"
        );
    }
}

/// Writes a state record's original back into its cgroup (never below usage). Returns true
/// when the record is settled and may be forgotten: restored, already at its original, or the
/// cgroup is gone (or is another cgroup now); false when it stays (an unknown original is
/// never written; an original below usage waits). `quiet` skips the log of a record that
/// stays, said before.
pub fn put_back(
    r: &dyn resource::ManagedResource,
    h: &Hierarchy,
    rec: &SettingRecord,
    reason: &'static str,
    quiet: bool,
) -> bool {
    let res = r.resource();
    let path = &rec.path;
    let cg = match h.cgroup(path) {
        Ok(c) if c.exists() && c.id().is_ok_and(|i| i.0 == rec.id) => c,
        _ => return true,
    };
    if rec.unknown_original {
        if !quiet {
            tracing::error!(
                cgroup = %path,
                resource = res.as_str(),
                current = %rec.current,
                reason,
                "not restored: its original limit is UNKNOWN (the state file and its copy were \
                 lost or damaged); it stays as it is: check it and set it by hand"
            );
        }
        return false;
    }
    let original = rec.original;
    match r.restore(&cg, rec.id, original) {
        Ok(Restored::Written { replaced }) => {
            tracing::info!(
                target: "scaler::audit",
                cgroup = %path,
                resource = res.as_str(),
                old = %replaced,
                new = %original,
                reason,
                "limit restored"
            );
            true
        }
        Ok(Restored::Unchanged) => true,
        Ok(Restored::Kept { why, current }) => {
            if !quiet {
                tracing::warn!(
                    cgroup = %path,
                    resource = res.as_str(),
                    original = %original,
                    current = %current,
                    reason,
                    "not restored: {why}"
                );
            }
            false
        }
        Err(e) => {
            if !quiet {
                tracing::warn!(
                    cgroup = %path,
                    resource = res.as_str(),
                    reason,
                    "restoring {original}: {e}"
                );
            }
            false
        }
    }
}

/// The usage of the managed memory cgroups that have no managed ancestor, and the memory in
/// use outside them (see [`crate::node::unmanaged_usage`]), from the engine's memory snapshots
/// and the last node sample (`None` before one).
fn unmanaged_of(state: &AgentState, snapshot: &[Snapshot]) -> Option<(u64, u64)> {
    let f = lock(&state.node).figures?;
    let usage: HashMap<CgId, u64> = snapshot
        .iter()
        .filter_map(|s| s.usage.map(|u| (s.id, u as u64)))
        .collect();
    let managed = lock(state.managed(Resource::Memory));
    let top = super::node_budget::top_level_usage(
        managed.iter().map(|(id, m)| (*id, m.path.as_str())),
        &usage,
    );
    Some((top, crate::node::unmanaged_usage(&f.meminfo, top)))
}

/// Builds the status document from the shared state and the engine's snapshots.
pub fn status_doc(
    state: &AgentState,
    snapshots: &HashMap<Resource, Vec<Snapshot>>,
    engine: &EngineStats,
) -> StatusDoc {
    use super::status::{self, CounterStatus};
    let info = lock(&state.info).clone();
    let mut memory = Vec::new();
    let mut cpu = Vec::new();
    for r in resource::ALL {
        let res = r.resource();
        let snaps: HashMap<CgId, &Snapshot> = snapshots
            .get(&res)
            .into_iter()
            .flatten()
            .map(|s| (s.id, s))
            .collect();
        for (id, m) in lock(state.managed(res)).iter() {
            let s = snaps.get(id);
            match m.original {
                Setting::Memory(original) => memory.push(ManagedStatus {
                    cgroup: m.path.clone(),
                    id: *id,
                    policy: m.policy_name.clone(),
                    qos: m.pod.as_ref().map(|p| p.qos.as_str().to_owned()),
                    pod_uid: m.pod.as_ref().and_then(|p| p.pod_uid.clone()),
                    container_id: m.pod.as_ref().and_then(|p| p.container_id.clone()),
                    limit: s.and_then(|s| s.memory_limit()).map(Into::into),
                    original_limit: original.into(),
                    original_unknown: m.original_unknown,
                    usage_bytes: s.and_then(|s| s.usage).map(|u| u as u64),
                    utilization: s.and_then(|s| s.utilization),
                    allocation_rate: s.and_then(|s| s.growth_rate),
                }),
                Setting::Cpu(original) => cpu.push(ManagedCpuStatus {
                    cgroup: m.path.clone(),
                    id: *id,
                    policy: m.policy_name.clone(),
                    quota_cores: s.and_then(|s| s.quota_cores()),
                    original_quota_cores: original.cores(),
                    original_unknown: m.original_unknown,
                    usage_cores: s.and_then(|s| s.usage),
                    utilization: s.and_then(|s| s.utilization),
                }),
            }
        }
    }
    memory.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    cpu.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    let mut unprotected: Vec<status::UnprotectedStatus> = resource::ALL
        .iter()
        .flat_map(|r| {
            let res = r.resource();
            lock(&state.unprotected)[resource_index(res)]
                .iter()
                .map(|(path, u)| status::UnprotectedStatus {
                    cgroup: path.clone(),
                    resource: res.as_str().to_owned(),
                    reason: u.reason.to_owned(),
                    error: u.error.clone(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    unprotected.sort_by(|a, b| (&a.cgroup, &a.resource).cmp(&(&b.cgroup, &b.resource)));
    let recent = lock(&state.recent);
    let c = &state.counters;
    let events = c
        .events_by_kind
        .iter()
        .enumerate()
        .filter_map(|(k, n)| {
            let n = n.load(Ordering::Relaxed);
            let kind = scaler_common::EventKind::from_u32(k as u32)?;
            (n > 0).then(|| (kind.as_str().to_owned(), n))
        })
        .collect();
    let node = node_status(
        state,
        snapshots
            .get(&Resource::Memory)
            .map_or(&[][..], Vec::as_slice),
    );
    StatusDoc {
        schema_version: status::STATUS_VERSION,
        pid: std::process::id(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        dry_run: info.dry_run,
        restore_on_exit: info.restore_on_exit,
        memory_hierarchy: info.memory_hierarchy,
        state_file: info.state_file,
        metrics_addr: info.metrics_addr,
        managed: memory,
        managed_cpu: cpu,
        unprotected,
        counters: CounterStatus {
            events,
            actions: c.actions.load(Ordering::Relaxed),
            failed_actions: c.failed_actions.load(Ordering::Relaxed),
            records_dropped: engine.records_dropped.load(Ordering::Relaxed),
            ringbuf_dropped: state.metrics.ringbuf_dropped.get(),
        },
        recent_actions: recent.actions(),
        reaction_latency_us: recent.latency(),
        node,
    }
}

/// The node's figures for `scaler status` (`None` before the first sample).
fn node_status(state: &AgentState, memory: &[Snapshot]) -> Option<super::status::NodeStatus> {
    use super::status::{KubeletStatus, NodeStatus, ReservePart};
    let usage = unmanaged_of(state, memory);
    let node = lock(&state.node);
    let f = node.figures?;
    let w = &node.watch;
    let path = w
        .source()
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut reserve = vec![ReservePart {
        source: "config".into(),
        bytes: f.config_reserve,
        from: "node.memory_reserve (or MemTotal minus node.memory_budget), out of MemAvailable"
            .into(),
    }];
    let kubelet = match (w.current(), f.kubelet) {
        (Some(k), Some(r)) => {
            let whence = if w.from_file() {
                path.clone()
            } else {
                "the kubelet's defaults".to_owned()
            };
            reserve.push(ReservePart {
                source: "kubelet_eviction".into(),
                bytes: r.eviction,
                from: format!(
                    "{whence}: evictionHard {} / evictionSoft {} memory.available, plus \
                     node.kubelet_eviction_margin, out of the kubelet's memory.available",
                    k.eviction_hard,
                    k.eviction_soft
                        .map_or_else(|| "unset".to_owned(), |s| s.to_string())
                ),
            });
            reserve.push(ReservePart {
                source: "kubelet_reserved".into(),
                bytes: r.reserved,
                from: format!(
                    "{whence}: kubeReserved.memory plus systemReserved.memory, out of the \
                     kubelet's memory.available"
                ),
            });
            Some(KubeletStatus {
                config: path,
                in_force: match (w.from_file(), w.error()) {
                    (true, None) => "file",
                    (true, Some(_)) => "last_good",
                    (false, _) => "defaults",
                }
                .into(),
                error: w.error().map(|e| format!("`{}`: {}", e.key, e.message)),
                errors: w.errors(),
                memory_available_bytes: r.available,
                eviction_threshold_bytes: k.eviction_threshold(f.meminfo.total),
                kube_reserved_bytes: k.kube_reserved,
                system_reserved_bytes: k.system_reserved,
                allocatable_bytes: r.allocatable,
                enforce_node_allocatable: k.enforce_node_allocatable.clone(),
            })
        }
        _ => None,
    };
    Some(NodeStatus {
        capacity_bytes: f.meminfo.total,
        mem_available_bytes: f.meminfo.available,
        reserve_bytes: f.reserve(),
        reserve,
        room_bytes: f.room,
        room_bound: f.bound.as_str().into(),
        managed_usage_bytes: usage.map(|u| u.0),
        unmanaged_usage_bytes: usage.map(|u| u.1),
        kubelet,
    })
}

#[cfg(test)]
mod tests {
    use super::{ancestors, holds};

    #[test]
    fn the_agents_cgroup_is_held_by_itself_and_its_ancestors_only() {
        let own = "/system.slice/scaler.service";
        for p in ["/", "/system.slice", own] {
            assert!(holds(p, own), "{p}");
        }
        for p in [
            "/system.slice/scaler.service/child",
            "/system.slice/scaler",
            "/system.slice/scaler.service2",
            "/user.slice",
        ] {
            assert!(!holds(p, own), "{p}");
        }
    }

    #[test]
    fn ancestors_walk_to_the_root() {
        assert_eq!(ancestors("/a/b/c").collect::<Vec<_>>(), ["/a/b", "/a", "/"]);
        assert_eq!(ancestors("/a").collect::<Vec<_>>(), ["/"]);
        assert_eq!(ancestors("/").count(), 0);
    }
}
