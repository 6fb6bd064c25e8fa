//! The client against a stand-in for the Kubernetes API server (no kube-apiserver can run on
//! the machines this project is built and tested on): a plain HTTP/1.1 server on loopback that
//! checks each request's verb, path, query, headers and body against the documented API and
//! answers with documented responses.
//!
//! The API reference these follow (Kubernetes v1.33+ API reference, "Pod v1 core"):
//! - list: `GET /api/v1/pods` with `fieldSelector` (and `limit`/`continue` for paging),
//!   answered by a `PodList` whose `metadata.resourceVersion` the watch resumes from;
//! - watch: `GET /api/v1/pods?watch=true&resourceVersion=RV`, answered by a stream of
//!   `WatchEvent`s (`{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": ...}`,
//!   one JSON object per line, chunked); an `ERROR` event carrying a `Status` with code 410
//!   (`Expired`/`Gone`) means the resourceVersion is too old and the client must relist
//!   ("Efficient detection of changes" in "API Concepts");
//! - resize: `PATCH /api/v1/namespaces/{namespace}/pods/{name}/resize` ("partially update
//!   resize of the specified Pod"), body a patch of the Pod; a strategic merge patch
//!   (`Content-Type: application/strategic-merge-patch+json`) merges `spec.containers` by
//!   `name` ("Update API Objects in Place Using kubectl patch"; "Resize CPU and Memory
//!   Resources assigned to Containers" uses `kubectl patch --subresource resize` with the same
//!   body), answered with the Pod; `fieldManager` names the writer in `managedFields`.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use super::{meta::*, *};
use crate::decider::{MemoryPolicy, Policy};
use crate::units::MIB;

const UID_A: &str = "0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UID_B: &str = "1f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UID_C: &str = "2f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const CID: &str = "5d41402abc4b2a76b9719d911017c592a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";
const NODE: &str = "node-a";

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    /// Lower-case names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// What the stand-in answers.
enum Response {
    Json(u16, Value),
    /// A watch: these events (one JSON line each, a chunk each, `pause` apart), then the
    /// stream ends after `hold`.
    Watch {
        events: Vec<Value>,
        hold: Duration,
    },
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// The stand-in API server: records every request, answers with `handler`.
struct StandIn {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<(Instant, Request)>>>,
}

impl StandIn {
    fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (h, r) = (handler.clone(), reqs.clone());
                std::thread::spawn(move || serve(conn, &*h, &r));
            }
        });
        StandIn { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<(Instant, Request)> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<(Instant, Request)>>) {
    let mut out = conn.try_clone().unwrap();
    let mut rd = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            rd.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let len: usize = headers
            .get("content-length")
            .map_or(0, |l| l.parse().unwrap());
        let mut body = vec![0; len];
        rd.read_exact(&mut body).unwrap();
        let (path, q) = target.split_once('?').unwrap_or((target, ""));
        let query = form_urlencoded_pairs(q);
        let req = Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query,
            headers,
            body,
        };
        log.lock().unwrap().push((Instant::now(), req.clone()));
        match handler(&req) {
            Response::Json(code, v) => {
                let b = serde_json::to_vec(&v).unwrap();
                let head = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                );
                if out.write_all(head.as_bytes()).is_err() || out.write_all(&b).is_err() {
                    return;
                }
            }
            Response::Watch { events, hold } => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for e in events {
                    let mut line = serde_json::to_vec(&e).unwrap();
                    line.push(b'\n');
                    let chunk = format!("{:x}\r\n", line.len());
                    let ok = out.write_all(chunk.as_bytes()).is_ok()
                        && out.write_all(&line).is_ok()
                        && out.write_all(b"\r\n").is_ok();
                    if !ok {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::thread::sleep(hold);
                if out.write_all(b"0\r\n\r\n").is_err() {
                    return;
                }
            }
        }
    }
}

fn form_urlencoded_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// A Pod as the API serves it: one container `app` (runtime id `CID` for pod A), Burstable.
fn pod(uid: &str, name: &str, rv: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": uid,
            "resourceVersion": rv,
            "annotations": annotations,
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "resources": {
                    "requests": {"memory": "32Mi"},
                    "limits": {"memory": "64Mi"},
                },
                "resizePolicy": [{"resourceName": "memory", "restartPolicy": "NotRequired"}],
            }],
        },
        "status": {
            "qosClass": "Burstable",
            "containerStatuses": [{
                "name": "app",
                "containerID": format!("containerd://{}", if uid == UID_A { CID } else { "abc" }),
                "image": "registry.example/app:1",
                "imageID": "",
                "ready": true,
                "restartCount": 0,
            }],
        },
    })
}

fn pod_list(rv: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": rv}, "items": items})
}

/// Checks what every request to the API must carry: JSON, asked for or by default (the API
/// server answers JSON when a request names no `Accept`; kube-rs names none but for discovery).
fn check_common(r: &Request) {
    let accept = r.headers.get("accept").map(String::as_str);
    assert!(
        accept.is_none_or(|a| a.contains("application/json") || a == "*/*"),
        "{r:?}"
    );
}

/// Waits up to 10 s for `f`.
fn wait_for(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the client's tasks against the API at `url` on a thread of their own, as
/// [`start`] does.
fn run_in_thread(kube: Arc<Kube>, url: String, node: &str, changes: Arc<AtomicU64>) {
    let node = node.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // A client needs the runtime (its request buffer is a task).
            let client = Client::try_from(::kube::Config::new(url.parse().unwrap())).unwrap();
            run(kube, client, node, move || {
                changes.fetch_add(1, Ordering::Relaxed);
            })
            .await
        });
    });
}

#[test]
fn the_watch_lists_this_nodes_pods_follows_events_and_relists_after_410_gone() {
    let lists = Arc::new(AtomicU64::new(0));
    let watches = Arc::new(AtomicU64::new(0));
    let (l, w) = (lists.clone(), watches.clone());
    let api = StandIn::start(move |r| {
        check_common(r);
        assert_eq!(r.method, "GET", "{r:?}");
        assert_eq!(r.path, "/api/v1/pods", "all namespaces, one node: {r:?}");
        assert_eq!(
            r.query.get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node-a"),
            "only this node's pods: {r:?}"
        );
        if r.query.get("watch").map(String::as_str) == Some("true") {
            let n = w.fetch_add(1, Ordering::SeqCst);
            let rv = r.query.get("resourceVersion").cloned().unwrap_or_default();
            match n {
                0 => {
                    assert_eq!(rv, "10", "the watch resumes from the list's version");
                    Response::Watch {
                        events: vec![
                            json!({"type": "MODIFIED", "object": pod(UID_A, "web-0", "11",
                                json!({"scaler.io/memory-max": "512Mi"}))}),
                            json!({"type": "DELETED", "object": pod(UID_B, "web-1", "12", json!({}))}),
                            json!({"type": "ERROR", "object": {
                                "kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": "too old resource version: 10 (12)",
                                "reason": "Expired", "code": 410}}),
                        ],
                        hold: Duration::from_millis(50),
                    }
                }
                _ => {
                    assert_eq!(rv, "20", "after 410 Gone the watch resumes from the relist");
                    Response::Watch {
                        events: vec![],
                        hold: Duration::from_secs(30),
                    }
                }
            }
        } else {
            assert!(!r.query.contains_key("watch"), "{r:?}");
            match l.fetch_add(1, Ordering::SeqCst) {
                0 => Response::Json(
                    200,
                    pod_list(
                        "10",
                        vec![
                            pod(UID_A, "web-0", "5", json!({"scaler.io/memory-max": "1Gi"})),
                            pod(UID_B, "web-1", "6", json!({"scaler.io/enabled": "false"})),
                        ],
                    ),
                ),
                _ => Response::Json(
                    200,
                    pod_list(
                        "20",
                        vec![
                            pod(
                                UID_A,
                                "web-0",
                                "11",
                                json!({"scaler.io/memory-max": "512Mi"}),
                            ),
                            pod(UID_C, "web-2", "19", json!({})),
                        ],
                    ),
                ),
            }
        }
    });
    let kube = Arc::new(Kube::new(false, Duration::from_secs(10)));
    let changes = Arc::new(AtomicU64::new(0));
    run_in_thread(kube.clone(), api.url(), NODE, changes.clone());

    wait_for("the relist after 410 Gone", || {
        watches.load(Ordering::SeqCst) >= 2 && kube.pod(UID_C).is_some()
    });
    assert!(kube.synced());
    let a = kube.pod(UID_A).expect("pod A");
    assert_eq!((a.namespace.as_str(), a.name.as_str()), ("shop", "web-0"));
    assert_eq!(
        a.annotations.memory_max,
        Some(512 * MIB),
        "the MODIFIED event"
    );
    assert_eq!(a.qos_class.as_deref(), Some("Burstable"));
    let c = a.container(CID).expect("container by its runtime id");
    assert_eq!(c.name, "app");
    assert_eq!(
        (c.memory_limit, c.memory_request),
        (Some(64 * MIB), Some(32 * MIB))
    );
    assert!(kube.pod(UID_B).is_none(), "deleted");
    assert_eq!(
        lists.load(Ordering::SeqCst),
        2,
        "listed once, again after 410"
    );
    assert!(changes.load(Ordering::Relaxed) >= 2, "the agent was told");
    // 410 is the ordinary end of a watch, not an API error.
    assert_eq!(kube.counters.watch_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn an_unreachable_api_is_counted_and_retried_and_nothing_is_known() {
    // A port nothing listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let kube = Arc::new(Kube::new(true, Duration::from_secs(1)));
    run_in_thread(
        kube.clone(),
        format!("http://127.0.0.1:{port}"),
        NODE,
        Arc::default(),
    );
    wait_for("two failed attempts (retried with backoff)", || {
        kube.counters.watch_errors.load(Ordering::Relaxed) >= 2
    });
    assert!(!kube.synced());
    assert_eq!(kube.pod_count(), 0);
    // A limit change meanwhile is dropped as unknown, not retried hot.
    kube.limit_changed(UID_A, CID, 128 * MIB, None);
    wait_for("the skip", || {
        kube.counters.resize_skipped[no_resize_index(NoResize::Unknown)].load(Ordering::Relaxed)
            == 1
    });
}

/// A stand-in that answers resize patches (checking each) with `code`, a list of `listed` and
/// a quiet watch.
fn resize_api(code: u16, listed: Value) -> StandIn {
    StandIn::start(move |r| {
        check_common(r);
        if r.method == "GET" {
            return if r.query.contains_key("watch") {
                Response::Watch {
                    events: vec![],
                    hold: Duration::from_secs(30),
                }
            } else {
                Response::Json(200, pod_list("1", vec![listed.clone()]))
            };
        }
        assert_eq!(r.method, "PATCH", "{r:?}");
        assert_eq!(r.path, "/api/v1/namespaces/shop/pods/web-0/resize", "{r:?}");
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/strategic-merge-patch+json"),
            "containers merge by name: {r:?}"
        );
        assert_eq!(
            r.query.get("fieldManager").map(String::as_str),
            Some(FIELD_MANAGER)
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let mem = body["spec"]["containers"][0]["resources"]["limits"]["memory"].clone();
        if code != 200 {
            return Response::Json(
                code,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "pods \"web-0\" is forbidden: User cannot patch resource \"pods/resize\"",
                       "reason": "Forbidden", "code": code}),
            );
        }
        let mut p = pod(UID_A, "web-0", "30", json!({}));
        p["spec"]["containers"][0]["resources"]["limits"]["memory"] = mem;
        Response::Json(200, p)
    })
}

fn seeded(resize_interval: Duration, pod: Value) -> Arc<Kube> {
    let kube = Arc::new(Kube::new(true, resize_interval));
    let p: Pod = serde_json::from_value(pod).unwrap();
    let info = PodInfo::from_pod(&p).unwrap();
    write(&kube.pods).insert(info.uid.clone(), info);
    kube
}

fn patches(api: &StandIn) -> Vec<(Instant, Value)> {
    api.requests()
        .into_iter()
        .filter(|(_, r)| r.method == "PATCH")
        .map(|(t, r)| (t, serde_json::from_slice(&r.body).unwrap()))
        .collect()
}

#[test]
fn a_burst_of_raises_is_one_resize_patch_with_the_last_limit_then_one_per_interval() {
    let api = resize_api(200, pod(UID_A, "web-0", "5", json!({})));
    let interval = Duration::from_secs(2);
    let kube = seeded(interval, pod(UID_A, "web-0", "5", json!({})));
    run_in_thread(kube.clone(), api.url(), NODE, Arc::default());
    let mark = Arc::new(WriteMark::new(Setting::Memory(Limit::from_bytes(64 * MIB))));
    for mib in [96, 128, 192, 256] {
        kube.limit_changed(UID_A, CID, mib * MIB, Some(mark.clone()));
    }
    wait_for("the patch", || {
        kube.counters.resized.load(Ordering::Relaxed) == 1
    });
    std::thread::sleep(RESIZE_SETTLE * 2);
    let p = patches(&api);
    assert_eq!(p.len(), 1, "one patch for the burst: {p:?}");
    assert_eq!(
        p[0].1,
        json!({"spec": {"containers": [
            {"name": "app", "resources": {"limits": {"memory": "256Mi"}}}
        ]}}),
        "the last limit, requests untouched"
    );
    assert_eq!(
        kube.patched(UID_A, CID),
        Some(256 * MIB),
        "the echo the kubelet will write"
    );
    // The container's mark knows the patched limit as the agent's, and only that one (the
    // burst's earlier raises were never asked of the kubelet).
    let now = crate::clock::monotonic_ns();
    assert!(mark.is_echo(Setting::Memory(Limit::from_bytes(256 * MIB)), now));
    assert!(!mark.is_echo(Setting::Memory(Limit::from_bytes(192 * MIB)), now));
    assert!(!mark.is_echo(
        Setting::Memory(Limit::from_bytes(256 * MIB)),
        now + crate::actuator::ECHO_TTL_NS
    ));
    assert_eq!(
        kube.pod(UID_A)
            .unwrap()
            .container(CID)
            .unwrap()
            .memory_limit,
        Some(256 * MIB),
        "the answer updates what is known"
    );
    // The next change waits for the pod's interval.
    kube.limit_changed(UID_A, CID, 320 * MIB, None);
    wait_for("the second patch", || {
        kube.counters.resized.load(Ordering::Relaxed) == 2
    });
    let p = patches(&api);
    assert_eq!(p.len(), 2);
    // Sent no sooner than the interval after the first was sent (its arrival here may lag
    // under load; the settle time alone would send it half a second after the change).
    assert!(p[1].0 - p[0].0 >= interval / 2, "rate-limited per pod");
    assert_eq!(
        p[1].1["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "320Mi"
    );
    // The same value again: the spec already says so, nothing is sent.
    kube.limit_changed(UID_A, CID, 320 * MIB, None);
    std::thread::sleep(interval + RESIZE_SETTLE);
    assert_eq!(patches(&api).len(), 2);
}

#[test]
fn a_refused_resize_is_counted_and_not_retried() {
    let api = resize_api(403, pod(UID_A, "web-0", "5", json!({})));
    let kube = seeded(Duration::from_secs(1), pod(UID_A, "web-0", "5", json!({})));
    run_in_thread(kube.clone(), api.url(), NODE, Arc::default());
    kube.limit_changed(UID_A, CID, 128 * MIB, None);
    wait_for("the refusal", || {
        kube.counters.resize_refused.load(Ordering::Relaxed) == 1
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(patches(&api).len(), 1, "not retried");
    assert_eq!(kube.patched(UID_A, CID), None);
}

/// At shutdown the queued changes go out at once, whatever the interval, and `flush` waits
/// for them; a failing API is waited for at most the given time and its changes reported.
#[test]
fn a_flush_sends_what_is_queued_at_once_and_reports_what_the_api_did_not_take() {
    let api = resize_api(200, pod(UID_A, "web-0", "5", json!({})));
    let kube = seeded(Duration::from_secs(60), pod(UID_A, "web-0", "5", json!({})));
    run_in_thread(kube.clone(), api.url(), NODE, Arc::default());
    kube.limit_changed(UID_A, CID, 128 * MIB, None);
    wait_for("the first patch", || {
        kube.counters.resized.load(Ordering::Relaxed) == 1
    });
    // Within the pod's 60 s interval: would wait a minute; the flush sends it now.
    kube.limit_changed(UID_A, CID, 64 * MIB, None);
    assert!(kube.is_pending(UID_A, CID));
    let start = Instant::now();
    let left = kube.flush(Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let p = patches(&api);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(
        p[1].1["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "64Mi"
    );
    assert_eq!(kube.patched(UID_A, CID), Some(64 * MIB));

    // An API that fails (503; the client retries it for a while): reported when the time is up.
    let api = resize_api(503, pod(UID_A, "web-0", "5", json!({})));
    let kube = seeded(Duration::from_secs(60), pod(UID_A, "web-0", "5", json!({})));
    run_in_thread(kube.clone(), api.url(), NODE, Arc::default());
    wait_for("the first list", || kube.synced());
    // (Not the listed 64Mi: a change to the limit the spec has is no patch at all.)
    kube.limit_changed(UID_A, CID, 128 * MIB, None);
    let left = kube.flush(Duration::from_secs(2));
    assert_eq!(left, vec![(UID_A.to_owned(), CID.to_owned())]);
    assert_eq!(kube.counters.resized.load(Ordering::Relaxed), 0);
}

#[test]
fn containers_that_a_resize_would_harm_are_skipped_without_a_request() {
    let mut guaranteed = pod(UID_A, "web-0", "5", json!({}));
    guaranteed["status"]["qosClass"] = json!("Guaranteed");
    let api = resize_api(200, guaranteed.clone());
    let kube = seeded(Duration::from_secs(1), guaranteed);
    run_in_thread(kube.clone(), api.url(), NODE, Arc::default());
    kube.limit_changed(UID_A, CID, 128 * MIB, None);
    wait_for("the skip", || {
        kube.counters.resize_skipped[no_resize_index(NoResize::QosClass)].load(Ordering::Relaxed)
            == 1
    });
    assert!(patches(&api).is_empty());
}

// ---- pure parts ----

fn info(v: Value) -> PodInfo {
    PodInfo::from_pod(&serde_json::from_value(v).unwrap()).unwrap()
}

#[test]
fn quantities_parse_as_the_api_writes_them() {
    for (s, b) in [
        ("512Mi", 512 * MIB),
        ("1Gi", 1 << 30),
        ("1G", 1_000_000_000),
        ("128974848", 128974848),
        ("129e6", 129_000_000),
        ("1.5Gi", 3 << 29),
        ("100k", 100_000),
        ("0.5Ki", 512),
    ] {
        assert_eq!(parse_quantity(s), Ok(b), "{s}");
    }
    for s in [
        "",
        "Mi",
        "1.2.3",
        "12 Mi",
        "-1Gi",
        "1mi",
        "1Z",
        "99999999999999999999",
    ] {
        assert!(parse_quantity(s).is_err(), "{s}");
    }
    assert_eq!(format_quantity(256 * MIB), "256Mi");
    assert_eq!(format_quantity(3 << 30), "3Gi");
    assert_eq!(format_quantity(4096 * 3 + 1), "12289");
}

#[test]
fn annotations_only_tighten_the_policy() {
    let p = MemoryPolicy {
        min: 32 * MIB,
        max: 1 << 30,
        ..MemoryPolicy::default()
    };
    let a = |pairs: &[(&str, &str)]| {
        let m: std::collections::BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Annotations::parse(&m)
    };
    let mem = |pol: Policy| match pol {
        Policy::Memory(m) => (m.min, m.max),
        Policy::Cpu(_) => unreachable!(),
    };
    // Within the policy: taken as written.
    let (q, c) = tighten(
        Policy::Memory(p),
        &a(&[(MEMORY_MAX, "512Mi"), (MEMORY_MIN, "64Mi")]),
    );
    assert_eq!(mem(q), (64 * MIB, 512 * MIB));
    assert!(c.is_empty());
    // Above the policy max: clamped to it, and said.
    let (q, c) = tighten(Policy::Memory(p), &a(&[(MEMORY_MAX, "8Gi")]));
    assert_eq!(mem(q), (32 * MIB, 1 << 30));
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].annotation, c[0].bound), (MEMORY_MAX, "policy max"));
    assert!(c[0].to_string().contains("only tightens"), "{}", c[0]);
    // Below the policy min; a min above the max.
    let (q, c) = tighten(
        Policy::Memory(p),
        &a(&[(MEMORY_MAX, "1Mi"), (MEMORY_MIN, "4Gi")]),
    );
    assert_eq!(mem(q), (32 * MIB, 32 * MIB));
    assert_eq!(c.len(), 2);
    // Malformed and unknown ones are listed and ignored.
    let bad = a(&[
        (MEMORY_MAX, "lots"),
        (ENABLED, "no"),
        ("scaler.io/memroy-max", "1Gi"),
        ("other.io/x", "y"),
    ]);
    assert_eq!(bad.invalid.len(), 3, "{bad:?}");
    assert_eq!((bad.memory_max, bad.enabled), (None, None));
    let (q, _) = tighten(Policy::Memory(p), &bad);
    assert_eq!(q, Policy::Memory(p));
    assert_eq!(a(&[(ENABLED, "false")]).enabled, Some(false));
}

#[test]
fn resize_plans_refuse_what_would_change_the_qos_class_or_restart_a_container() {
    let base = pod(UID_A, "web-0", "5", json!({}));
    let ok = info(base.clone());
    assert_eq!(
        resize_plan(Some(&ok), CID, 128 * MIB),
        Ok(Some("app".into()))
    );
    assert_eq!(resize_plan(Some(&ok), CID, 64 * MIB), Ok(None), "in step");
    assert_eq!(
        resize_plan(Some(&ok), CID, 16 * MIB),
        Err(NoResize::BelowRequest)
    );
    assert_eq!(
        resize_plan(Some(&ok), "ffff", 128 * MIB),
        Err(NoResize::Unknown)
    );
    assert_eq!(resize_plan(None, CID, 128 * MIB), Err(NoResize::Unknown));
    let mut g = base.clone();
    g["status"]["qosClass"] = json!("Guaranteed");
    assert_eq!(
        resize_plan(Some(&info(g)), CID, 128 * MIB),
        Err(NoResize::QosClass)
    );
    let mut r = base.clone();
    r["spec"]["containers"][0]["resizePolicy"][0]["restartPolicy"] = json!("RestartContainer");
    assert_eq!(
        resize_plan(Some(&info(r)), CID, 128 * MIB),
        Err(NoResize::RestartPolicy)
    );
    let mut n = base;
    n["spec"]["containers"][0]["resources"] = json!({"requests": {"memory": "32Mi"}});
    assert_eq!(
        resize_plan(Some(&info(n)), CID, 128 * MIB),
        Err(NoResize::NoLimit)
    );
}
