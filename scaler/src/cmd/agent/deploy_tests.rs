//! The packaging under `deploy/` checked against the agent it packages: the DaemonSet and its
//! ConfigMap (YAML, and the TOML inside it through the real configuration loader), the
//! Grafana dashboard (JSON, and every metric its queries use is one the agent exports), and
//! the systemd unit.

use std::{collections::BTreeSet, path::PathBuf};

use serde_yaml::Value;

use super::metrics::{
    CgroupLabels, KindLabels, LimitLabels, Metrics, ProgramLabels, ResourceLabels, ResultLabels,
};
use crate::{
    config::{Config, NodeInfo},
    decider::{Action, Reason, Resource, WriteOutcome},
    engine::ActionRecord,
};

fn deploy(file: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn str_of<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", get(v, path)))
}

#[test]
fn the_daemonset_is_valid_and_consistent_with_its_configmap() {
    let docs = yaml_docs(&deploy("kubernetes/daemonset.yaml"));
    let kinds: Vec<&str> = docs.iter().map(|d| str_of(d, "kind")).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "DaemonSet"]);
    let (cm, ds) = (&docs[1], &docs[2]);

    // The configuration the pods run is valid for the real loader.
    let toml = get(cm, "data")["scaler.toml"]
        .as_str()
        .expect("data.\"scaler.toml\"");
    let config = Config::from_toml_str(toml).expect("ConfigMap TOML parses");
    config
        .validate(&NodeInfo {
            mem_total: 16 << 30,
            nproc: 4,
        })
        .expect("ConfigMap TOML validates");
    // It manages Burstable and BestEffort pods of both drivers and their containers, and not
    // Guaranteed ones.
    let uid = "0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let uid_ = uid.replace('-', "_");
    let cid = "5d41402abc4b2a76b9719d911017c592a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";
    let burstable_slice =
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice");
    for (path, managed) in [
        (format!("/kubepods/burstable/pod{uid}/{cid}"), true),
        (format!("/kubepods/besteffort/pod{uid}/crio-{cid}"), true),
        (
            format!("{burstable_slice}/cri-containerd-{cid}.scope"),
            true,
        ),
        (format!("{burstable_slice}/crio-{cid}.scope"), true),
        (format!("{burstable_slice}/docker-{cid}.scope"), true),
        // The QoS-level and kubelet-level cgroups are not pods.
        ("/kubepods/burstable".to_string(), false),
        ("/kubepods".to_string(), false),
        (
            "/kubepods.slice/kubepods-burstable.slice".to_string(),
            false,
        ),
        // CRI-O's monitor is no container.
        (format!("{burstable_slice}/crio-conmon-{cid}.scope"), false),
        (format!("/kubepods/burstable/pod{uid}"), true),
        (format!("/kubepods/besteffort/pod{uid}"), true),
        (
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"),
            true,
        ),
        (
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"
            ),
            true,
        ),
        (format!("/kubepods/pod{uid}/0123456789abcdef"), false),
        (format!("/kubepods.slice/kubepods-pod{uid_}.slice"), false),
        ("/system.slice/kubelet.service".to_string(), false),
    ] {
        let selected = config
            .policy_for(&path, None)
            .is_some_and(|p| p.memory.is_some());
        assert_eq!(selected, managed, "{path}");
        // Under a kubelet cgroup root the node names (--cgroup-root), the same, and only there.
        let mut nested = config.clone();
        nested.agent.kubelet_cgroup_roots = vec!["/kubelet.slice".into()];
        let under = format!("/kubelet.slice{path}");
        let selected = nested
            .policy_for(&under, None)
            .is_some_and(|p| p.memory.is_some());
        assert_eq!(
            selected,
            managed && path != "/system.slice/kubelet.service",
            "{under}"
        );
        assert!(
            nested.policy_for(&path, None).is_none(),
            "{path}: not below the root"
        );
    }
    // No limit is ever written on a cgroup found unlimited (BestEffort pods, pause
    // containers): no policy asks for it.
    for p in &config.policies {
        assert!(
            p.memory.as_ref().is_none_or(|m| !m.limit_unlimited),
            "{}",
            p.name
        );
    }

    // Metrics: loopback in the ConfigMap, the pod IP from the downward API (never 0.0.0.0),
    // on the annotated, declared port; the probes ask /healthz and /readyz on it.
    let addr = config.agent.metrics_addr;
    assert!(addr.ip().is_loopback(), "{addr}");
    let pod = get(ds, "spec.template");
    let annotations = get(pod, "metadata.annotations");
    let annotation = |k: &str| {
        annotations[k]
            .as_str()
            .unwrap_or_else(|| panic!("annotation {k}"))
    };
    assert_eq!(annotation("prometheus.io/scrape"), "true");
    assert_eq!(annotation("prometheus.io/port"), addr.port().to_string());
    assert_eq!(annotation("prometheus.io/path"), "/metrics");
    let c = get(pod, "spec.containers.0");
    assert_eq!(
        get(c, "ports.0.containerPort").as_u64(),
        Some(u64::from(addr.port()))
    );
    let env = get(c, "env").as_sequence().expect("env");
    let metrics_env = env
        .iter()
        .find(|e| get(e, "name").as_str() == Some("SCALER_METRICS_ADDR"))
        .expect("SCALER_METRICS_ADDR in the container's env");
    assert_eq!(
        str_of(metrics_env, "valueFrom.fieldRef.fieldPath"),
        "status.podIP"
    );
    // The agent's flag reads that variable, and an IP alone takes the configured port.
    let cmd = <super::AgentArgs as clap::Args>::augment_args(clap::Command::new("agent"));
    let flag = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some("metrics-addr"))
        .expect("--metrics-addr");
    assert_eq!(
        flag.get_env(),
        Some(std::ffi::OsStr::new("SCALER_METRICS_ADDR"))
    );
    let bound = super::parse_metrics_addr("10.1.2.3").unwrap().resolve(addr);
    assert_eq!(bound.to_string(), format!("10.1.2.3:{}", addr.port()));
    let v6 = super::parse_metrics_addr("fd00::5").unwrap().resolve(addr);
    assert_eq!(v6.to_string(), format!("[fd00::5]:{}", addr.port()));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(str_of(c, &format!("{probe}.httpGet.path")), path);
        assert_eq!(str_of(c, &format!("{probe}.httpGet.port")), "metrics");
    }
    assert_eq!(get(pod, "spec.hostPID").as_bool(), Some(true));
    assert_eq!(get(c, "securityContext.privileged").as_bool(), Some(true));
    assert!(
        get(c, "resources.requests.memory").is_string()
            && get(c, "resources.limits.memory").is_string()
    );

    // Mounts: the cgroup tree writable, BTF read-only, the state file's and the status
    // socket's directories on the host, the configuration where the args point.
    let mounts: Vec<(String, bool)> = get(c, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                str_of(m, "mountPath").to_owned(),
                get(m, "readOnly").as_bool().unwrap_or(false),
            )
        })
        .collect();
    let mount = |p: &str| mounts.iter().find(|(m, _)| m == p).map(|(_, ro)| *ro);
    assert_eq!(mount("/sys/fs/cgroup"), Some(false));
    assert_eq!(mount("/sys/kernel/btf"), Some(true));
    let dir = |p: &std::path::Path| p.parent().unwrap().display().to_string();
    assert_eq!(
        mount(&dir(&config.agent.state_file)),
        Some(false),
        "state file dir mounted"
    );
    assert_eq!(
        mount(&dir(&config.agent.status_socket)),
        Some(false),
        "status socket dir mounted"
    );
    // Started in the host's cgroup namespace (host paths; see the manifest's header).
    let command: Vec<&str> = get(c, "command")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        command,
        [
            "nsenter",
            "--cgroup=/proc/1/ns/cgroup",
            "--",
            "/usr/local/bin/scaler"
        ]
    );
    let args: Vec<&str> = get(c, "args")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "agent");
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    assert_eq!(mount(&dir(std::path::Path::new(config_path))), Some(true));
    let volumes = get(pod, "spec.volumes").as_sequence().unwrap();
    // The kubelet's configuration: read-only, from the host file of the same path.
    let kubelet = match config.kubelet_source() {
        crate::config::KubeletSource::File(p) => p,
        other => panic!("node.kubelet_config is set in the ConfigMap: {other:?}"),
    };
    let kubelet = kubelet.display().to_string();
    assert_eq!(mount(&kubelet), Some(true), "{kubelet} mounted read-only");
    let kubelet_vol = volumes
        .iter()
        .find(|v| get(v, "hostPath.path").as_str() == Some(kubelet.as_str()))
        .expect("the kubelet's configuration from the host");
    assert_eq!(str_of(kubelet_vol, "hostPath.type"), "File");
    let state_vol = volumes
        .iter()
        .find(|v| get(v, "hostPath.path").as_str() == Some("/var/lib/scaler"));
    assert!(
        state_vol.is_some(),
        "the state file survives pod restarts on a hostPath"
    );
}

#[test]
fn the_daemonset_gives_the_api_client_what_it_needs() {
    use crate::config::KubeApi;
    let docs = yaml_docs(&deploy("kubernetes/daemonset.yaml"));
    let (cm, ds) = (&docs[1], &docs[2]);
    let config = Config::from_toml_str(get(cm, "data")["scaler.toml"].as_str().unwrap()).unwrap();
    let k = &config.kubernetes;
    assert_eq!(
        k.api,
        KubeApi::InCluster,
        "the shipped DaemonSet uses the API"
    );
    let pod = get(ds, "spec.template.spec");
    // The service account's token (kube-rs' in-cluster config reads it) ...
    assert_eq!(
        get(pod, "automountServiceAccountToken").as_bool(),
        Some(true),
        "api = in-cluster needs the token"
    );
    // ... and this node's name, for the field selector.
    assert!(k.node_name.is_none(), "node_name comes from NODE_NAME");
    let env = get(pod, "containers.0.env").as_sequence().unwrap();
    let node = env
        .iter()
        .find(|e| str_of(e, "name") == crate::config::KubernetesConfig::NODE_NAME_ENV)
        .expect("NODE_NAME in the container's env");
    assert_eq!(
        str_of(node, "valueFrom.fieldRef.fieldPath"),
        "spec.nodeName"
    );
    // The RBAC grants what the client does, to the DaemonSet's service account.
    let rbac = yaml_docs(&deploy("kubernetes/rbac.yaml"));
    let role = rbac
        .iter()
        .find(|d| str_of(d, "kind") == "ClusterRole")
        .unwrap();
    let grants = |resource: &str, verb: &str| {
        get(role, "rules").as_sequence().unwrap().iter().any(|r| {
            let has = |key: &str, v: &str| {
                get(r, key)
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|x| x.as_str() == Some(v))
            };
            has("apiGroups", "") && has("resources", resource) && has("verbs", verb)
        })
    };
    for verb in ["list", "watch"] {
        assert!(grants("pods", verb), "pods {verb}");
    }
    assert_eq!(
        grants("pods/resize", "patch"),
        k.resize,
        "pods/resize patch iff resize"
    );
    let sa = rbac
        .iter()
        .find(|d| str_of(d, "kind") == "ServiceAccount")
        .unwrap();
    assert_eq!(
        str_of(pod, "serviceAccountName"),
        str_of(sa, "metadata.name")
    );
}

/// Every metric name (sample names, with the `_total`/`_bucket`/... suffixes) the agent
/// exports once each family has a sample.
fn exported_names() -> BTreeSet<String> {
    populated()
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Metrics with a series in every family.
fn populated() -> Metrics {
    let m = Metrics::new();
    m.record_action(&ActionRecord {
        action: Action {
            cgroup: 1,
            resource: Resource::Memory,
            old: 1,
            new: 2,
            reason: Reason::Pressure,
            trigger_ts_ns: 0,
        },
        done_ns: 1,
        latency_ns: 1,
        outcome: WriteOutcome::Written,
        errno: None,
        written: None,
    });
    m.events
        .get_or_create(&KindLabels {
            kind: "reclaim_begin",
        })
        .inc();
    let l = LimitLabels::new(
        &CgroupLabels::new("/a", "p", None),
        &crate::resource::Memory,
    );
    m.set_limit(&l, 1.0);
    m.set_original_limit(&l, 1.0);
    m.original_unknown.get_or_create(&l).set(0.0);
    Metrics::set_total_f64(&m.cpu_throttled_seconds.get_or_create(&l.cgroup), 1.0);
    m.usage.get_or_create(&l).set(1.0);
    m.utilization.get_or_create(&l.utilization()).set(0.5);
    m.managed
        .get_or_create(&ResourceLabels { resource: "memory" })
        .set(1);
    m.bpf_runs
        .get_or_create(&ProgramLabels { program: "p" })
        .inc();
    m.bpf_run_seconds
        .get_or_create(&ProgramLabels { program: "p" })
        .inc();
    m.reloads
        .get_or_create(&ResultLabels { result: "ok" })
        .inc();
    m.set_limit(
        &LimitLabels::new(&CgroupLabels::new("/b", "p", None), &crate::resource::Cpu),
        f64::INFINITY,
    );
    m
}

#[test]
fn every_family_is_clean_for_promtool() {
    use std::io::Write as _;
    let text = populated().encode_text();
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not run: `apt-get install prometheus` to check the exposition");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric name a text exposition has (families and samples).
fn names_of(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect()
}

/// The metric names a PromQL expression refers to (identifiers with our prefixes).
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        if ident(b[i]) && (i == 0 || !ident(b[i - 1])) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let w = &expr[start..i];
            if w.starts_with("scaler_") || w.starts_with("process_") {
                out.push(w.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_dashboard_is_valid_json_over_exported_metrics() {
    let d: serde_json::Value =
        serde_json::from_str(&deploy("grafana/scaler-dashboard.json")).expect("valid JSON");
    let exported = exported_names();
    let mut used = BTreeSet::new();
    let panels = d["panels"].as_array().unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {} has targets", p["title"]));
        assert!(!targets.is_empty());
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            for n in names_in(expr) {
                assert!(
                    exported.contains(&n),
                    "panel {}: {n} is not exported (exported: {exported:?})",
                    p["title"]
                );
                used.insert(n);
            }
        }
    }
    // The panels the dashboard promises.
    for n in [
        "scaler_reaction_latency_seconds_bucket",
        "scaler_events_total",
        "scaler_actions_total",
        "scaler_cgroup_limit",
        "scaler_cgroup_utilization_ratio",
        "scaler_ringbuf_dropped_total",
        "scaler_bpf_program_run_seconds_total",
        "process_cpu_seconds_total",
    ] {
        assert!(used.contains(n), "no panel uses {n}");
    }
    // Unique panel ids.
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len());
}

#[test]
fn the_example_alerts_are_rules_over_exported_metrics() {
    let text = deploy("prometheus/alerts.yaml");
    let docs = yaml_docs(&text);
    assert_eq!(docs.len(), 1);
    let exported = exported_names();
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for g in docs[0]["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().expect("alerting rules only");
            let expr = r["expr"].as_str().unwrap();
            for n in names_in(expr) {
                assert!(
                    exported.contains(&n),
                    "alert {name}: {n} is not exported (exported: {exported:?})"
                );
                used.insert(n);
            }
            assert!(r["annotations"]["summary"].is_string(), "{name}");
            alerts.insert(name.to_owned());
        }
    }
    // What the issue promises: reaction p99, write failures, ring-buffer drops, agent down.
    for n in [
        "scaler_reaction_latency_seconds_bucket",
        "scaler_failed_writes_total",
        "scaler_ringbuf_dropped_total",
    ] {
        assert!(used.contains(n), "no alert uses {n}");
    }
    assert!(alerts.contains("ScalerAgentDown"), "{alerts:?}");
    // promtool validates it too where it is installed (the root tests require it).
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yaml"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            eprintln!("promtool not run ({e}): `apt-get install prometheus` to check the rules")
        }
    }
}

#[test]
fn every_family_is_exported_in_both_formats() {
    // The same names whether the client asks for OpenMetrics or not.
    let m = Metrics::new();
    let l = LimitLabels::new(
        &CgroupLabels::new("/a", "p", None),
        &crate::resource::Memory,
    );
    m.set_limit(&l, f64::INFINITY);
    let om = names_of(&m.encode());
    let text = names_of(&m.encode_text());
    for n in &text {
        let family = n.strip_suffix("_total").unwrap_or(n);
        assert!(
            om.contains(n) || om.contains(family),
            "{n} only in the text format"
        );
    }
    assert!(text.contains("scaler_cgroup_limit_unlimited"), "{text:?}");
    assert!(!text.contains("scaler_cgroup_limit"), "{text:?}");
}

#[test]
fn names_in_finds_metric_identifiers() {
    assert_eq!(
        names_in("histogram_quantile(0.5, sum by (le) (rate(scaler_x_bucket{a=\"scaler_no\"}[5m]))) / process_y"),
        ["scaler_x_bucket", "scaler_no", "process_y"]
    );
}

#[test]
fn the_systemd_unit_runs_the_agent_with_what_it_needs() {
    let unit = deploy("systemd/scaler.service");
    let kv: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {l}"))
        })
        .collect();
    let get = |k: &str| {
        kv.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.lines().any(|l| l == section), "{section}");
    }
    assert!(get("ExecStart").contains(" agent --config /etc/scaler/scaler.toml"));
    assert!(get("ExecStartPre").contains(" check-config /etc/scaler/scaler.toml"));
    assert_eq!(get("Restart"), "on-failure");
    // The agent speaks sd_notify: READY=1, WATCHDOG=1 while healthy.
    assert_eq!(get("Type"), "notify");
    assert!(get("WatchdogSec").ends_with('s'));
    assert_eq!(
        get("RestartPreventExitStatus"),
        super::EXIT_BAD_CONFIG.to_string()
    );
    let caps: Vec<&str> = get("CapabilityBoundingSet").split_whitespace().collect();
    for c in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_ADMIN",
        "CAP_DAC_OVERRIDE",
    ] {
        assert!(caps.contains(&c), "{c}");
    }
    assert!(!caps.contains(&"CAP_SYS_RESOURCE"));
    // Hardening leaves the cgroup tree writable.
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("ReadWritePaths"), "/sys/fs/cgroup");
    assert_eq!(get("ProtectControlGroups"), "no");
    assert_eq!(get("ProtectKernelTunables"), "no");
    // The directories systemd creates are where the default configuration puts things.
    let d = crate::config::AgentConfig::default();
    assert_eq!(
        d.state_file.parent().unwrap(),
        std::path::Path::new("/var/lib").join(get("StateDirectory"))
    );
    assert_eq!(
        d.status_socket.parent().unwrap(),
        std::path::Path::new("/run").join(get("RuntimeDirectory"))
    );
    assert_eq!(get("StateDirectoryMode"), "0700");
    assert_eq!(get("RuntimeDirectoryMode"), "0700");
}
