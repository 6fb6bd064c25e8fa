//! Kubernetes pod and container cgroups, recognised from their paths.
//!
//! The kubelet lays out one cgroup per pod under a QoS-class parent and one per container
//! under its pod. Both cgroup drivers are understood:
//!
//! - **cgroupfs** driver: `/kubepods/burstable/pod<uid>/<container-id>`,
//!   `/kubepods/besteffort/pod<uid>/...`, and `/kubepods/pod<uid>/...` for Guaranteed pods.
//!   CRI-O names the container cgroup `crio-<id>`, containerd and Docker use the bare id.
//! - **systemd** driver: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
//!   (also `docker-<id>.scope`, `crio-<id>.scope`); Guaranteed pods sit directly under
//!   `kubepods.slice` as `kubepods-pod<uid>.slice`. The systemd driver replaces the dashes of
//!   the pod UID with underscores; [`parse`] restores them.
//!
//! Only the kubelet's layouts count, from the kubelet's cgroup root: `kubepods` or
//! `kubepods.slice` directly below the hierarchy root ([`parse`]), or directly below a root
//! the configuration names (`agent.kubelet_cgroup_roots`, for a kubelet run with
//! `--cgroup-root`; [`parse_under`]). A `kubepods` directory anywhere else (a user can create
//! one in a delegated subtree, `/user.slice/.../kubepods/burstable/pod<uid>`) is an ordinary
//! cgroup: it gets no pod labels and no `qos` policy selects it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A pod's quality-of-service class, as the kubelet derives it from requests and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    /// Requests equal limits for every container (the pod cgroup sits directly under
    /// `kubepods`).
    Guaranteed,
    /// Some requests or limits, not Guaranteed.
    Burstable,
    /// No requests and no limits.
    #[serde(rename = "besteffort")]
    BestEffort,
}

impl QosClass {
    /// The lowercase name used by the kubelet's cgroup names and in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a Kubernetes cgroup is, for policies that select by role (`kubernetes = [...]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A pod cgroup (`pod<uid>`, `kubepods-...-pod<uid>.slice`): the kubelet sets the pod's
    /// limit there, the sum of its containers' limits.
    Pods,
    /// A container cgroup below a pod (the runtime sets the container's limit there). The pod
    /// sandbox (pause) container is never selected ([`is_sandbox`]).
    Containers,
}

/// Whether a container cgroup is a pod's sandbox (its "pause" container), from the names
/// (`/proc/<pid>/comm`) of the processes in it: it has some, and every one is `pause` (the
/// binary of the `registry.k8s.io/pause` image that containerd, CRI-O and Docker run as the
/// sandbox; its only process). A cgroup with no process yet is not known to be one.
///
/// A process may rename itself (`prctl(PR_SET_NAME)`), so a workload can make its own
/// container look like a sandbox: that only takes the agent's protection away from it (it is
/// then never written), never makes the agent write a cgroup it should not.
pub fn is_sandbox<'a>(comms: impl IntoIterator<Item = &'a str>) -> bool {
    let mut any = false;
    for c in comms {
        if c.trim_end() != SANDBOX_COMM {
            return false;
        }
        any = true;
    }
    any
}

/// The process name of the pod sandbox (pause) container.
pub const SANDBOX_COMM: &str = "pause";

/// Which cgroup driver laid out the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Plain directories (`kubepods/burstable/pod<uid>`).
    Cgroupfs,
    /// systemd slices and scopes (`kubepods.slice/...`).
    Systemd,
}

/// The container runtime, when the container cgroup's name says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `cri-containerd-<id>.scope`.
    Containerd,
    /// `docker-<id>.scope`.
    Docker,
    /// `crio-<id>` / `crio-<id>.scope`.
    Crio,
    /// A bare id (cgroupfs driver with containerd or Docker).
    Unknown,
}

/// What a kubepods cgroup path says about the pod and container it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodCgroup {
    /// The pod's QoS class.
    pub qos: QosClass,
    /// The pod UID with its dashes (`0f1e...-...`), `None` for the QoS-level cgroups
    /// (`/kubepods`, `/kubepods/burstable`) themselves.
    pub pod_uid: Option<String>,
    /// The container id, `None` for pod-level (and QoS-level) cgroups.
    pub container_id: Option<String>,
    /// The runtime that named the container cgroup.
    pub runtime: Option<Runtime>,
    /// The cgroup driver.
    pub driver: Driver,
}

impl PodCgroup {
    /// Pod or container (QoS-level cgroups, which have no pod, read as pods; policies only
    /// ask for the role of cgroups with a pod UID).
    pub fn role(&self) -> Role {
        if self.container_id.is_some() {
            Role::Containers
        } else {
            Role::Pods
        }
    }

    /// `pod/<uid>` or `pod/<uid>/container/<short id>` for logs.
    pub fn display_name(&self) -> String {
        match (&self.pod_uid, &self.container_id) {
            (Some(p), Some(c)) => format!("pod {p} container {}", short_id(c)),
            (Some(p), None) => format!("pod {p}"),
            _ => format!("kubepods {}", self.qos),
        }
    }
}

/// The first 12 characters of a container id (what `crictl ps` and `docker ps` show).
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Parses a cgroup path (relative to the hierarchy root, e.g. `/kubepods/burstable/pod.../...`)
/// into the pod and container it belongs to. `None` for paths whose first component is not
/// `kubepods` or `kubepods.slice` and for names that do not follow the kubelet's layout (a
/// malformed pod directory is not guessed at).
pub fn parse(path: &str) -> Option<PodCgroup> {
    let mut comps = path.split('/').filter(|c| !c.is_empty());
    match comps.next()? {
        "kubepods" => parse_cgroupfs(comps),
        "kubepods.slice" => parse_systemd(comps),
        _ => None,
    }
}

/// [`parse`] of the part of `path` below the first of `roots` (the kubelet's `--cgroup-root`s,
/// paths from the hierarchy root; `/` is the hierarchy root itself) that it lies under.
pub fn parse_under(path: &str, roots: &[String]) -> Option<PodCgroup> {
    roots.iter().find_map(|root| {
        let root = root.trim_end_matches('/');
        if root.is_empty() {
            return parse(path);
        }
        let rest = path.strip_prefix(root)?;
        if !rest.starts_with('/') {
            return None;
        }
        parse(rest)
    })
}

fn parse_cgroupfs<'a>(mut comps: impl Iterator<Item = &'a str>) -> Option<PodCgroup> {
    let mut out = PodCgroup {
        qos: QosClass::Guaranteed,
        pod_uid: None,
        container_id: None,
        runtime: None,
        driver: Driver::Cgroupfs,
    };
    let Some(mut c) = comps.next() else {
        return Some(out);
    };
    match c {
        "burstable" | "besteffort" => {
            out.qos = if c == "burstable" {
                QosClass::Burstable
            } else {
                QosClass::BestEffort
            };
            match comps.next() {
                Some(n) => c = n,
                None => return Some(out),
            }
        }
        _ => {}
    }
    let uid = c.strip_prefix("pod")?;
    if !is_uid(uid, '-') {
        return None;
    }
    out.pod_uid = Some(uid.to_owned());
    if let Some(cont) = comps.next() {
        let (runtime, id) = container_name(cont.strip_suffix(".scope").unwrap_or(cont))?;
        out.runtime = Some(runtime);
        out.container_id = Some(id.to_owned());
    }
    Some(out)
}

fn parse_systemd<'a>(mut comps: impl Iterator<Item = &'a str>) -> Option<PodCgroup> {
    let mut out = PodCgroup {
        qos: QosClass::Guaranteed,
        pod_uid: None,
        container_id: None,
        runtime: None,
        driver: Driver::Systemd,
    };
    let Some(mut c) = comps.next() else {
        return Some(out);
    };
    let mut prefix = "kubepods-";
    match c {
        "kubepods-burstable.slice" | "kubepods-besteffort.slice" => {
            let (qos, p) = if c == "kubepods-burstable.slice" {
                (QosClass::Burstable, "kubepods-burstable-")
            } else {
                (QosClass::BestEffort, "kubepods-besteffort-")
            };
            out.qos = qos;
            prefix = p;
            match comps.next() {
                Some(n) => c = n,
                None => return Some(out),
            }
        }
        _ => {}
    }
    let uid = c
        .strip_prefix(prefix)?
        .strip_prefix("pod")?
        .strip_suffix(".slice")?;
    if !is_uid(uid, '_') {
        return None;
    }
    out.pod_uid = Some(uid.replace('_', "-"));
    if let Some(cont) = comps.next() {
        let (runtime, id) = container_name(cont.strip_suffix(".scope")?)?;
        out.runtime = Some(runtime);
        out.container_id = Some(id.to_owned());
    }
    Some(out)
}

/// `cri-containerd-<id>`, `docker-<id>`, `crio-<id>` or a bare id. `crio-conmon-<id>` (CRI-O's
/// monitor process, not a container) and anything that is not a hex id are rejected.
fn container_name(name: &str) -> Option<(Runtime, &str)> {
    let (runtime, id) = if let Some(id) = name.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, id)
    } else if let Some(id) = name.strip_prefix("docker-") {
        (Runtime::Docker, id)
    } else if let Some(id) = name.strip_prefix("crio-") {
        (Runtime::Crio, id)
    } else {
        (Runtime::Unknown, name)
    };
    let hex = id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some((runtime, id))
}

/// A pod UID: 36 characters, hex digits and four `sep`s at the UUID positions.
fn is_uid(s: &str, sep: char) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == sep,
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const UID_: &str = "0f3b1c2d_4e5f_4a6b_8c7d_9e0f1a2b3c4d";
    const CID: &str = "5d41402abc4b2a76b9719d911017c592a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";

    fn pc(
        qos: QosClass,
        pod: Option<&str>,
        cid: Option<&str>,
        rt: Option<Runtime>,
        d: Driver,
    ) -> PodCgroup {
        PodCgroup {
            qos,
            pod_uid: pod.map(str::to_owned),
            container_id: cid.map(str::to_owned),
            runtime: rt,
            driver: d,
        }
    }

    #[test]
    fn cgroupfs_driver_all_qos_classes() {
        use QosClass::*;
        let d = Driver::Cgroupfs;
        assert_eq!(
            parse(&format!("/kubepods/burstable/pod{UID}/{CID}")),
            Some(pc(
                Burstable,
                Some(UID),
                Some(CID),
                Some(Runtime::Unknown),
                d
            ))
        );
        assert_eq!(
            parse(&format!("/kubepods/besteffort/pod{UID}/{CID}")),
            Some(pc(
                BestEffort,
                Some(UID),
                Some(CID),
                Some(Runtime::Unknown),
                d
            ))
        );
        assert_eq!(
            parse(&format!("/kubepods/pod{UID}/{CID}")),
            Some(pc(
                Guaranteed,
                Some(UID),
                Some(CID),
                Some(Runtime::Unknown),
                d
            ))
        );
        assert_eq!(
            parse(&format!("/kubepods/besteffort/pod{UID}/crio-{CID}")),
            Some(pc(BestEffort, Some(UID), Some(CID), Some(Runtime::Crio), d))
        );
    }

    #[test]
    fn cgroupfs_driver_pod_and_qos_levels() {
        use QosClass::*;
        let d = Driver::Cgroupfs;
        assert_eq!(
            parse(&format!("/kubepods/burstable/pod{UID}")),
            Some(pc(Burstable, Some(UID), None, None, d))
        );
        assert_eq!(
            parse(&format!("/kubepods/pod{UID}/")),
            Some(pc(Guaranteed, Some(UID), None, None, d))
        );
        assert_eq!(
            parse("/kubepods/burstable"),
            Some(pc(Burstable, None, None, None, d))
        );
        assert_eq!(
            parse("/kubepods"),
            Some(pc(Guaranteed, None, None, None, d))
        );
    }

    #[test]
    fn systemd_driver_all_qos_classes_and_runtimes() {
        use QosClass::*;
        let d = Driver::Systemd;
        assert_eq!(
            parse(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
            )),
            Some(pc(Burstable, Some(UID), Some(CID), Some(Runtime::Containerd), d))
        );
        assert_eq!(
            parse(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope"
            )),
            Some(pc(BestEffort, Some(UID), Some(CID), Some(Runtime::Docker), d))
        );
        assert_eq!(
            parse(&format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope"
            )),
            Some(pc(Guaranteed, Some(UID), Some(CID), Some(Runtime::Crio), d))
        );
        assert_eq!(
            parse(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
            )),
            Some(pc(Burstable, Some(UID), None, None, d))
        );
        assert_eq!(
            parse("/kubepods.slice/kubepods-besteffort.slice"),
            Some(pc(BestEffort, None, None, None, d))
        );
    }

    #[test]
    fn nested_kubepods_trees_count_only_below_a_configured_root() {
        let nested = format!("/kubelet.slice/x/kubepods/burstable/pod{UID}/{CID}");
        let slice = format!("/docker/abc/kubepods.slice/kubepods-pod{UID_}.slice");
        let user = format!("/user.slice/user-1000.slice/kubepods/burstable/pod{UID}");
        for p in [&nested, &slice, &user] {
            assert_eq!(parse(p), None, "{p}: not from the hierarchy root");
            assert_eq!(parse_under(p, &["/".into()]), None, "{p}");
        }
        let roots = [
            "/".to_owned(),
            "/kubelet.slice/x".into(),
            "/docker/abc/".into(),
        ];
        let p = parse_under(&nested, &roots).unwrap();
        assert_eq!(p.container_id.as_deref(), Some(CID));
        let p = parse_under(&slice, &roots).unwrap();
        assert_eq!(p.qos, QosClass::Guaranteed);
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
        assert_eq!(parse_under(&user, &roots), None);
        // A root matches whole components only, and the kubepods tree must start right below.
        assert_eq!(
            parse_under(&format!("/kubelet.slice/xy/kubepods/pod{UID}"), &roots),
            None
        );
        assert_eq!(
            parse_under(
                &format!("/kubelet.slice/x/deeper/kubepods/pod{UID}"),
                &roots
            ),
            None
        );
        // The hierarchy root works without a configured root too (`/` or the empty list).
        assert!(parse_under(&format!("/kubepods/pod{UID}"), &roots).is_some());
        assert_eq!(parse_under(&format!("/kubepods/pod{UID}"), &[]), None);
    }

    #[test]
    fn non_kubernetes_and_malformed_paths_are_rejected() {
        for p in [
            "/",
            "",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice",
            "/batch/job1",
            // UID with the wrong separator for the driver.
            &format!("/kubepods/burstable/pod{UID_}/{CID}"),
            &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice"),
            // The QoS slice and the pod slice disagree.
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_}.slice"
            ),
            // Truncated UID, non-hex.
            "/kubepods/burstable/pod0f3b1c2d-4e5f",
            "/kubepods/burstable/podzzzzzzzz-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            // Not a container id; CRI-O's conmon scope.
            &format!("/kubepods/burstable/pod{UID}/not-a-container"),
            &format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope"),
            // systemd container cgroups are scopes.
            &format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}"),
            // A different root that merely starts with "kubepods".
            "/kubepods-extra/burstable",
        ] {
            assert_eq!(parse(p), None, "{p}");
        }
    }

    #[test]
    fn qos_class_names_round_trip_through_serde() {
        for q in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            let s = serde_json::to_string(&q).unwrap();
            assert_eq!(s, format!("\"{}\"", q.as_str()));
            assert_eq!(serde_json::from_str::<QosClass>(&s).unwrap(), q);
        }
        assert!(serde_json::from_str::<QosClass>("\"best-effort\"").is_err());
    }

    #[test]
    fn display_names() {
        let p = parse(&format!("/kubepods/pod{UID}/{CID}")).unwrap();
        assert_eq!(
            p.display_name(),
            format!("pod {UID} container 5d41402abc4b")
        );
        assert_eq!(
            parse("/kubepods/besteffort").unwrap().display_name(),
            "kubepods besteffort"
        );
    }
}

#[cfg(test)]
mod policy_tests {
    use crate::config::Config;

    const UID: &str = "0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const UID_: &str = "0f3b1c2d_4e5f_4a6b_8c7d_9e0f1a2b3c4d";

    #[test]
    fn policies_select_by_qos_class_with_either_driver() {
        let c = Config::from_toml_str(
            r#"
            [[policy]]
            name = "elastic"
            match = ["/kubepods/**", "/kubepods.slice/**"]
            qos = ["burstable", "besteffort"]
            [policy.memory]
            [[policy]]
            name = "fallback"
            match = ["/**"]
            [policy.cpu]
            "#,
        )
        .unwrap();
        let name = |p: &str| c.policy_for(p, None).map(|p| p.name.as_str());
        assert_eq!(
            name(&format!("/kubepods/burstable/pod{UID}")),
            Some("elastic")
        );
        // A look-alike tree a user made in a delegated subtree is no pod.
        assert_eq!(
            name(&format!("/user.slice/u/kubepods/burstable/pod{UID}")),
            Some("fallback")
        );
        assert_eq!(
            name(&format!("/kubepods/besteffort/pod{UID}/0123456789abcdef")),
            Some("elastic")
        );
        assert_eq!(
            name(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
            )),
            Some("elastic")
        );
        // Guaranteed pods, the QoS-level cgroups themselves and non-pod cgroups fall through.
        assert_eq!(name(&format!("/kubepods/pod{UID}")), Some("fallback"));
        assert_eq!(name("/kubepods/burstable"), Some("fallback"));
        assert_eq!(name("/system.slice/x.service"), Some("fallback"));
    }

    #[test]
    fn an_unknown_qos_class_is_rejected() {
        let e = Config::from_toml_str("[[policy]]\nname = \"a\"\nmatch = [\"/a\"]\nqos = [\"best-effort\"]\n[policy.memory]\n")
            .unwrap_err();
        assert!(e.to_string().contains("best-effort"), "{e}");
    }
}

#[cfg(test)]
mod role_tests {
    use super::*;
    use crate::config::Config;

    const UID: &str = "0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const UID_: &str = "0f3b1c2d_4e5f_4a6b_8c7d_9e0f1a2b3c4d";
    const CID: &str = "5d41402abc4b2a76b9719d911017c592a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";

    fn config(extra_agent: &str, policy: &str) -> Config {
        Config::from_toml_str(&format!(
            "[agent]\n{extra_agent}\n[[policy]]\nname = \"k8s\"\n{policy}\n[policy.memory]\n"
        ))
        .unwrap()
    }

    #[test]
    fn policies_select_containers_and_pods_by_role_under_any_kubelet_root() {
        let c = config(
            "kubelet_cgroup_roots = [\"/\", \"/test/k8s\"]",
            "kubernetes = [\"containers\"]",
        );
        let sel = |p: &str| c.policy_for(p, None).is_some();
        for root in ["", "/test/k8s"] {
            assert!(sel(&format!("{root}/kubepods/burstable/pod{UID}/{CID}")));
            assert!(sel(&format!("{root}/kubepods/pod{UID}/{CID}")));
            assert!(sel(&format!(
                "{root}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
            )));
            assert!(sel(&format!(
                "{root}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope"
            )));
            // Pods, QoS levels and the kubelet's root are not containers.
            assert!(!sel(&format!("{root}/kubepods/burstable/pod{UID}")));
            assert!(!sel(&format!("{root}/kubepods/burstable")));
            assert!(!sel(&format!("{root}/kubepods")));
        }
        // A look-alike outside the configured roots is an ordinary cgroup.
        assert!(!sel(&format!(
            "/user.slice/kubepods/burstable/pod{UID}/{CID}"
        )));
        let both = config(
            "",
            "kubernetes = [\"pods\", \"containers\"]\nqos = [\"burstable\"]",
        );
        let sel = |p: &str| both.policy_for(p, None).is_some();
        assert!(sel(&format!("/kubepods/burstable/pod{UID}")));
        assert!(sel(&format!("/kubepods/burstable/pod{UID}/{CID}")));
        assert!(
            !sel(&format!("/kubepods/besteffort/pod{UID}/{CID}")),
            "qos too"
        );
        // With a match as well, a cgroup must satisfy both.
        let narrowed = config(
            "",
            "kubernetes = [\"pods\"]\nmatch = [\"/kubepods/burstable/*\"]",
        );
        assert!(narrowed
            .policy_for(&format!("/kubepods/burstable/pod{UID}"), None)
            .is_some());
        assert!(narrowed
            .policy_for(&format!("/kubepods/besteffort/pod{UID}"), None)
            .is_none());
    }

    #[test]
    fn an_unknown_role_and_a_policy_that_selects_nothing_are_rejected() {
        let e = Config::from_toml_str(
            "[[policy]]\nname = \"a\"\nkubernetes = [\"pod\"]\n[policy.memory]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("pod"), "{e}");
        let e = Config::from_toml_str("[[policy]]\nname = \"a\"\n[policy.memory]\n").unwrap_err();
        assert!(e.to_string().contains("kubernetes"), "{e}");
        let e = Config::from_toml_str(
            "[[policy]]\nname = \"a\"\nkubernetes = [\"pods\"]\n[policy.memory]\nlimit_unlimited = true\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("policy[0].memory.limit_unlimited"),
            "{e}"
        );
    }

    #[test]
    fn a_sandbox_is_a_cgroup_of_pause_processes_only() {
        assert!(is_sandbox(["pause\n"]));
        assert!(is_sandbox(["pause", "pause"]));
        assert!(!is_sandbox(Vec::<&str>::new()), "no process yet: not known");
        assert!(!is_sandbox(["pause", "nginx"]));
        assert!(!is_sandbox(["pause-helper"]));
    }
}
