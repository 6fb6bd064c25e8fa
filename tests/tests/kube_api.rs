//! The agent with the Kubernetes API (`[kubernetes]`, issue 16 items 4 and 6), against a
//! stand-in API server on loopback: no kube-apiserver can run on these machines. The stand-in
//! answers the documented list (`GET /api/v1/pods?fieldSelector=spec.nodeName=...`, a
//! `PodList`), a quiet watch, and `PATCH /api/v1/namespaces/{ns}/pods/{name}/resize`
//! (strategic merge patch, answered with the Pod); the request-level checks of every verb,
//! path, query, header and body are the `scaler` crate's `kube::tests` (a plain `cargo test`).
//!
//! Each test recreates the kubelet's cgroupfs layout (`kubepods/burstable/pod<uid>/<id>`)
//! below its own cgroup, named as a kubelet cgroup root, and points the agent at the stand-in
//! through a kubeconfig file (`api = "kubeconfig"`).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use scaler::cgroupfs::{CgroupVersion, Controller};
use scaler_tests::*;
use serde_json::{json, Value};

const M: u64 = 1 << 20;
const UID: &str = "7c1e5a2b-3d4f-4a6b-8c7d-9e0f1a2b3c4d";
const CID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const NODE: &str = "node-a";

/// The pod the stand-in lists: `shop/web-0`, Burstable, container `app` (runtime id `CID`,
/// 64Mi limit, 32Mi request), with `annotations`.
fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "uid": UID, "resourceVersion": "5",
                     "annotations": annotations},
        "spec": {"nodeName": NODE, "containers": [{
            "name": "app", "image": "registry.example/app:1",
            "resources": {"requests": {"memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        }]},
        "status": {"qosClass": "Burstable", "containerStatuses": [{
            "name": "app", "containerID": format!("containerd://{CID}"),
            "image": "registry.example/app:1", "imageID": "", "ready": true, "restartCount": 0,
        }]},
    })
}

/// The stand-in API server: the pod list, a watch that stays quiet, resize patches recorded.
struct StandIn {
    port: u16,
    patches: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl StandIn {
    fn start(listed: Value) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let patches = Arc::new(Mutex::new(Vec::new()));
        let p = patches.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (listed, p) = (listed.clone(), p.clone());
                std::thread::spawn(move || serve(conn, &listed, &p));
            }
        });
        StandIn { port, patches }
    }

    fn patches(&self) -> Vec<(String, String, Value)> {
        self.patches.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, listed: &Value, patches: &Mutex<Vec<(String, String, Value)>>) {
    let mut out = conn.try_clone().unwrap();
    let mut rd = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (mut len, mut content_type) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        let path = target.split('?').next().unwrap_or("");
        let reply = |out: &mut TcpStream, code: u16, v: &Value| {
            let b = serde_json::to_vec(v).unwrap();
            let head = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len()
            );
            out.write_all(head.as_bytes()).is_ok() && out.write_all(&b).is_ok()
        };
        let ok = match (method, path) {
            ("GET", "/api/v1/pods") if target.contains("watch=true") => {
                // A watch that stays open with no events.
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                            Transfer-Encoding: chunked\r\n\r\n";
                let _ = out.write_all(head.as_bytes());
                std::thread::sleep(Duration::from_secs(60));
                out.write_all(b"0\r\n\r\n").is_ok()
            }
            ("GET", "/api/v1/pods") => {
                let list = json!({"apiVersion": "v1", "kind": "PodList",
                                  "metadata": {"resourceVersion": "10"}, "items": [listed]});
                reply(&mut out, 200, &list)
            }
            ("PATCH", p) if p.ends_with("/resize") => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                patches
                    .lock()
                    .unwrap()
                    .push((p.to_owned(), content_type.clone(), v.clone()));
                let mut answer = listed.clone();
                answer["spec"]["containers"][0]["resources"]["limits"]["memory"] =
                    v["spec"]["containers"][0]["resources"]["limits"]["memory"].clone();
                reply(&mut out, 200, &answer)
            }
            _ => reply(&mut out, 404, &json!({"kind": "Status", "code": 404})),
        };
        if !ok {
            return;
        }
    }
}

/// A kubeconfig for the API at `server`, with no credentials (the stand-in asks for none).
fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let f = dir.join("kubeconfig");
    std::fs::write(
        &f,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {server}\n\
             users:\n- name: agent\n  user: {{}}\ncontexts:\n- name: standin\n  context:\n    \
             cluster: standin\n    user: agent\ncurrent-context: standin\n"
        ),
    )
    .unwrap();
    f
}

/// Directories made by hand below a guarded cgroup (the kubelet's fixed names), removed deepest
/// first on drop.
struct Dirs(Vec<PathBuf>);

impl Dirs {
    fn make(&mut self, parent: &Path, rel: &str, v2: bool) -> PathBuf {
        let mut d = parent.to_path_buf();
        for c in rel.split('/') {
            if v2 {
                let _ = std::fs::write(d.join("cgroup.subtree_control"), "+memory");
            }
            d = d.join(c);
            if !d.exists() {
                std::fs::create_dir(&d).expect("creating a cgroup");
                self.0.push(d.clone());
            }
        }
        d
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The kubelet's layout below the test's cgroup: `<parent>/node/kubepods/burstable/pod<UID>/
/// <CID>` with a 64 MiB container limit. Returns the guards, the container's directory and
/// its path from the hierarchy root, and the kubelet root (`<parent>/node`).
struct Layout {
    container_dir: PathBuf,
    container: String,
    root: String,
    _dirs: Dirs,
    _parent: scaler::cgroupfs::CgroupGuard,
}

fn layout(env: &TestEnv, prefix: &str) -> Layout {
    let v2 = env.memory.version == CgroupVersion::V2;
    let parent = memory_cgroup(env, prefix);
    let pp = memory_path(&parent);
    let dir = parent
        .cgroup(Controller::Memory)
        .unwrap()
        .dir()
        .to_path_buf();
    let mut dirs = Dirs(Vec::new());
    let container_dir = dirs.make(&dir, &format!("node/kubepods/burstable/pod{UID}/{CID}"), v2);
    let limit = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    std::fs::write(container_dir.join(limit), (64 * M).to_string()).unwrap();
    Layout {
        container_dir,
        container: format!("{pp}/node/kubepods/burstable/pod{UID}/{CID}"),
        root: format!("{pp}/node"),
        _dirs: dirs,
        _parent: parent,
    }
}

/// The agent for `l`: a policy for Burstable containers (max 512M), the kubelet root, and
/// `[kubernetes]` with `kube`.
fn agent(l: &Layout, kube: &str) -> AgentConfig {
    let body = format!(
        "[node]\nmemory_reserve = \"128M\"\n\n[kubernetes]\n{kube}\n\n[[policy]]\nname = \"pods\"\n\
         match = [{:?}]\nqos = [\"burstable\"]\n\n[policy.memory]\nmin = \"16M\"\nmax = \"512M\"\n\
         headroom = \"16M\"\nsafety_margin = \"4M\"\n",
        format!("{}/kubepods/burstable/*/*", glob_literal(&l.root)),
    );
    AgentConfig::new(body)
        .agent_key("kubelet_cgroup_roots", &format!("[\"/\", {:?}]", l.root))
        .agent_key("restore_on_exit", "true")
}

/// Touches `total` in the container (64 MiB limit) in 8 MiB steps every 50 ms (paced from the
/// measured reaction latency under emulation); asserts it was not OOM-killed.
fn burst_to(dir: &Path, total: &str) {
    let bin = scaler_bin();
    let cushion = tempdir();
    let mut p = if emulated() {
        let interval = emulated_calibration().interval;
        let script = format!(
            "dd if=/dev/zero of='{}' bs=1M count=32 conv=fsync status=none && exec \"$0\" \
             workload steps --total {total} --step 2M --interval {}ms",
            cushion.join("cushion").display(),
            interval.as_millis()
        );
        spawn_in_cgroup(
            dir,
            Path::new("sh"),
            &["-c", &script, &bin.display().to_string()],
        )
    } else {
        spawn_in_cgroup(
            dir,
            &bin,
            &[
                "workload",
                "steps",
                "--total",
                total,
                "--step",
                "8M",
                "--interval",
                "50ms",
            ],
        )
    };
    let status = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    let _ = std::fs::remove_dir_all(&cushion);
    assert!(status.success(), "the container's burst survived: {status}");
}

/// [`burst_to`] 150 MiB.
fn burst(dir: &Path) {
    burst_to(dir, "150M");
}

fn kube_metric(name: &'static str) -> Metric {
    Metric { name, labels: &[] }
}

/// Waits until the container's series carry the pod's name (what the API said is in force).
fn wait_names(a: &TestAgent) -> Scrape {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = a.scrape();
        if !s.with_label("pod", "web-0").is_empty() {
            return s;
        }
        assert!(
            Instant::now() < end,
            "no pod names from the API:\n{}",
            s.text
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn names_and_annotations_from_the_api_reach_the_containers_labels_and_a_burst_is_one_resize() {
    let Some(env) = env_race("kube_api_names", "a container's burst") else {
        return;
    };
    let l = layout(&env, "scaler-kube-names");
    // memory-max above the operator's 512M: clamped to it (an annotation only tightens).
    let api = StandIn::start(pod(json!({"scaler.io/memory-max": "8Gi"})));
    let dir = tempdir();
    let kc = kubeconfig(&dir, &format!("http://127.0.0.1:{}", api.port));
    let mut a = agent(
        &l,
        &format!(
            "api = \"kubeconfig\"\nkubeconfig = {:?}\nnode_name = {NODE:?}\nresize = true\n\
             resize_interval = \"60s\"",
            kc.display().to_string()
        ),
    )
    .start();
    a.wait_managed(&l.container, true, Duration::from_secs(5));

    // The API's names on the container's series, beside the UID and id from its path.
    let end = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let s = a.scrape();
        if !s.with_label("pod", "web-0").is_empty() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "no pod names from the API:\n{}",
            s.text
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let series = scrape.with_label("cgroup", &l.container);
    assert!(!series.is_empty(), "{}", scrape.text);
    for s in &series {
        for (k, v) in [
            ("namespace", "shop"),
            ("pod", "web-0"),
            ("container", "app"),
            ("uid", UID),
            ("container_id", CID),
        ] {
            assert_eq!(s.labels.get(k).map(String::as_str), Some(v), "{k}: {s:?}");
        }
    }
    assert_eq!(
        scrape.value(kube_metric("scaler_kubernetes_pods"), &[]),
        Some(1.0),
        "{}",
        scrape.text
    );
    // The annotation above the policy max: clamped, logged, counted.
    let ev = a.wait_event(
        &LogQuery::message("pod annotation clamped to the policy")
            .field("cgroup", &l.container)
            .field("annotation", "scaler.io/memory-max"),
        Duration::from_secs(5),
    );
    assert_eq!(
        ev.field("applied").and_then(Value::as_u64),
        Some(512 * M),
        "{ev:?}"
    );
    let scrape = a.scrape();
    assert_eq!(
        scrape.value(
            kube_metric("scaler_kubernetes_annotations_rejected_total"),
            &[("result", "clamped")]
        ),
        Some(1.0),
        "{}",
        scrape.text
    );

    // A burst: raised (several times), and the pod's spec follows in one resize patch.
    burst(&l.container_dir);
    let raise = a.wait_audit("a raise", Duration::from_secs(10), |r| {
        r.cgroup == l.container && r.is_raise()
    });
    assert!(raise.new <= 512 * M, "{raise}");
    let end = Instant::now() + Duration::from_secs(10);
    while api.patches().is_empty() {
        assert!(Instant::now() < end, "no resize patch");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every raise of the burst came and went: still the one patch (one per pod per 60 s).
    std::thread::sleep(Duration::from_secs(2));
    let patches = api.patches();
    assert_eq!(patches.len(), 1, "one patch for the burst: {patches:?}");
    let (path, content_type, body) = &patches[0];
    assert_eq!(path, "/api/v1/namespaces/shop/pods/web-0/resize");
    assert_eq!(content_type, "application/strategic-merge-patch+json");
    let c = &body["spec"]["containers"][0];
    assert_eq!(c["name"], "app", "{body}");
    assert!(
        c["resources"].get("requests").is_none(),
        "requests untouched: {body}"
    );
    // A limit the agent wrote (one of the burst's raises, as a Kubernetes quantity).
    let raised: Vec<u64> = a
        .audit_of(&l.container)
        .iter()
        .filter(|r| r.is_raise())
        .map(|r| r.new)
        .collect();
    let mem = c["resources"]["limits"]["memory"].as_str().unwrap();
    // A Kubernetes quantity in the binary suffix that divides it (Gi, Mi, Ki) or plain bytes.
    let bytes = [("Gi", 1u64 << 30), ("Mi", M), ("Ki", 1 << 10)]
        .iter()
        .find_map(|(suffix, unit)| {
            mem.strip_suffix(suffix)
                .map(|n| n.parse::<u64>().unwrap() * unit)
        })
        .unwrap_or_else(|| mem.parse::<u64>().unwrap());
    assert!(raised.contains(&bytes), "{mem} is one of {raised:?}");
    note(&format!(
        "  {} raises of the container ({:?} MiB), {} resize patch ({mem})",
        raised.len(),
        raised.iter().map(|b| b / M).collect::<Vec<_>>(),
        patches.len()
    ));
    let scrape = a.scrape();
    assert_eq!(
        scrape.value(
            kube_metric("scaler_kubernetes_resizes_total"),
            &[("result", "patched")]
        ),
        Some(1.0),
        "{}",
        scrape.text
    );

    // The kubelet applies the patch seconds later, by when a second burst has raised the
    // container past it: its write of the older patched limit is the agent's own (an echo),
    // not an owner's change. Nothing is adopted as the original (restored exactly below) or
    // counted as an external change, and the agent still manages it.
    burst_to(&l.container_dir, "300M");
    let latest = a.wait_audit("a raise past the patch", Duration::from_secs(10), |r| {
        r.cgroup == l.container && r.is_raise() && r.new > bytes
    });
    let limit_file = l
        .container_dir
        .join(if env.memory.version == CgroupVersion::V2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        });
    std::fs::write(&limit_file, bytes.to_string()).expect("the kubelet's write");
    // Three samples (1 s apart) and the engine's re-read see it.
    std::thread::sleep(Duration::from_secs(3));
    let adopted = LogQuery::message("limit changed outside the agent: adopted as the original")
        .field("cgroup", &l.container);
    assert!(
        !a.logged(&adopted),
        "the kubelet's write of the agent's patch ({mem}) taken for an owner's: {:?}",
        a.events(&adopted)
    );
    assert_eq!(
        a.scrape()
            .value(metric::EXTERNAL_CHANGES, &[("resource", "memory")])
            .unwrap_or(0.0),
        0.0,
        "no external change"
    );
    note(&format!(
        "  the kubelet's echo of the patch ({mem}) after a raise to {} MiB: the agent's own",
        latest.new / M
    ));
    a.wait_managed(&l.container, true, Duration::from_secs(5));
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
    // restore_on_exit: the cgroup gets its original back (below), and so does the pod's spec,
    // at once (not after the 60 s interval): one more patch, with the original 64Mi.
    let patches = api.patches();
    assert_eq!(
        patches.len(),
        2,
        "the burst's patch, then the original's: {patches:?}"
    );
    assert_eq!(
        patches[1].2["spec"]["containers"][0]["resources"]["limits"]["memory"], "64Mi",
        "the spec patched back to the original: {:?}",
        patches[1]
    );
    assert_eq!(
        std::fs::read_to_string(
            l.container_dir
                .join(if env.memory.version == CgroupVersion::V2 {
                    "memory.max"
                } else {
                    "memory.limit_in_bytes"
                })
        )
        .unwrap()
        .trim(),
        (64 * M).to_string(),
        "the original back"
    );
    a.assert_only_json_on_stderr();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_annotation_within_the_policy_bounds_the_containers_raises() {
    let Some(env) = env_race("kube_api_bound", "a container's burst") else {
        return;
    };
    let l = layout(&env, "scaler-kube-bound");
    // 96Mi, below the policy's 512M: the bound the engine gets for this container.
    let api = StandIn::start(pod(json!({"scaler.io/memory-max": "96Mi"})));
    let dir = tempdir();
    let kc = kubeconfig(&dir, &format!("http://127.0.0.1:{}", api.port));
    let mut a = agent(
        &l,
        &format!(
            "api = \"kubeconfig\"\nkubeconfig = {:?}\nnode_name = {NODE:?}",
            kc.display().to_string()
        ),
    )
    .start();
    a.wait_managed(&l.container, true, Duration::from_secs(5));
    wait_names(&a);
    // The bound the engine was given with the container (its Manage command, logged).
    let ev = a.wait_event(
        &LogQuery::message("managing")
            .field("cgroup", &l.container)
            .field("max", "96MiB"),
        Duration::from_secs(5),
    );
    assert_eq!(
        ev.field("pod")
            .and_then(Value::as_str)
            .map(|p| p.contains(UID)),
        Some(true),
        "{ev:?}"
    );
    // A burst past the early warning (64 MiB less 16 MiB headroom): the raise's step (64 MiB)
    // would take the limit to 128 MiB; the annotation caps it at 96Mi, which the burst fits in.
    burst_to(&l.container_dir, "72M");
    let raise = a.wait_audit("a raise", Duration::from_secs(10), |r| {
        r.cgroup == l.container && r.is_raise()
    });
    assert_eq!(raise.new, 96 * M, "capped at the annotation: {raise}");
    std::thread::sleep(Duration::from_millis(500));
    let over: Vec<_> = a
        .audit_of(&l.container)
        .into_iter()
        .filter(|r| r.new > 96 * M)
        .collect();
    assert!(over.is_empty(), "nothing above the annotation: {over:?}");
    assert!(
        !a.logged(&LogQuery::message("pod annotation clamped to the policy")),
        "within the policy: taken as written"
    );
    assert!(api.patches().is_empty(), "resize is off");
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
    a.assert_only_json_on_stderr();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_the_api_unreachable_the_agent_still_rescues_and_counts_the_errors() {
    let Some(env) = env_race("kube_api_down", "a container's burst") else {
        return;
    };
    let l = layout(&env, "scaler-kube-down");
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempdir();
    let kc = kubeconfig(&dir, &format!("http://127.0.0.1:{port}"));
    let mut a = agent(
        &l,
        &format!(
            "api = \"kubeconfig\"\nkubeconfig = {:?}\nnode_name = {NODE:?}\nresize = true",
            kc.display().to_string()
        ),
    )
    .start();
    a.wait_managed(&l.container, true, Duration::from_secs(5));
    burst(&l.container_dir);
    a.wait_audit("a raise", Duration::from_secs(10), |r| {
        r.cgroup == l.container && r.is_raise()
    });
    let cg = scaler::cgroupfs::Hierarchy::discover(Path::new("/"), Controller::Memory)
        .unwrap()
        .cgroup(&l.container)
        .unwrap();
    assert_eq!(cg.oom_kills().unwrap().unwrap_or(0), 0, "no OOM kill");
    a.wait_event(
        &LogQuery::message(
            "watching this node's pods failed: retried with backoff, pods are known by their \
             cgroup paths until it works (scaler_kubernetes_api_errors_total)",
        ),
        Duration::from_secs(5),
    );
    let scrape = a.scrape();
    let errors = scrape
        .value(
            kube_metric("scaler_kubernetes_api_errors_total"),
            &[("op", "watch")],
        )
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "{}", scrape.text);
    // Known by its path: the UID and container id, no names.
    let series = scrape.with_label("cgroup", &l.container);
    assert!(!series.is_empty());
    for s in &series {
        assert_eq!(s.labels.get("uid").map(String::as_str), Some(UID), "{s:?}");
        assert!(
            s.labels.get("pod").is_none_or(String::is_empty),
            "no name without the API: {s:?}"
        );
    }
    // No patch was possible: skipped as an unknown pod, never tried against the API hot.
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
    a.assert_only_json_on_stderr();
    let _ = std::fs::remove_dir_all(&dir);
}
