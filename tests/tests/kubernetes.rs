//! Kubernetes: the kubelet's cgroup layouts of both drivers, recreated under the test's own
//! cgroup, and the agent on the shipped DaemonSet ConfigMap (deploy/kubernetes/daemonset.yaml)
//! with only `agent.kubelet_cgroup_roots` added (pointing at the test's cgroup).
//!
//! The kubelet's pod = sum rule: a Burstable pod at 96 MiB holds its sandbox (a "pause"
//! process, no limit, as containerd and CRI-O create it) and a container at 64 MiB. A process
//! in the container bursting to 150 MiB survives: the container, whose limit binds first, is
//! raised and its pod with it; the pause cgroup is never touched; the originals are restored
//! exactly on SIGTERM (the ConfigMap's `restore_on_exit`). A BestEffort pod (no limits) is
//! never given one, and pressure at the limit of `kubepods` (node allocatable, which the agent
//! does not manage) is counted and logged.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::signal::Signal;
use scaler::{
    actuator::{MemoryActuator, MemoryOptions},
    cgroupfs::{Cgroup, CgroupVersion, Hierarchy, Limit},
};
use scaler_tests::*;

const M: u64 = 1 << 20;
const UID: &str = "0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const PAUSE_ID: &str = "9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";
const CTR_ID: &str = "5d41402abc4b2a76b9719d911017c592a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";

/// The shipped ConfigMap's `scaler.toml` (`SCALER_TEST_DAEMONSET` may name another
/// daemonset.yaml, to compare with an older release's).
fn shipped_config() -> String {
    let path = std::env::var_os("SCALER_TEST_DAEMONSET").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml"),
        PathBuf::from,
    );
    let text = std::fs::read_to_string(&path).expect("daemonset.yaml");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        use serde::Deserialize;
        let v = serde_yaml::Value::deserialize(doc).expect("YAML");
        if v["kind"].as_str() == Some("ConfigMap") {
            return v["data"]["scaler.toml"]
                .as_str()
                .expect("scaler.toml")
                .to_owned();
        }
    }
    panic!("no ConfigMap in {}", path.display())
}

/// The agent on the shipped configuration, with the kubelet's cgroup root at `root`. In a
/// small VM (under 4 GiB) the ConfigMap's node-sized figures do not fit (its 2G
/// `node.memory_reserve` would leave no budget, and an 8G `max` above physical memory is
/// refused): there, and only there, they are lowered to 256M and 1G (said on the test's output).
fn shipped_agent(root: &str) -> TestAgent {
    let mut text = shipped_config();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    if total_kib < 4 << 20 {
        note(&format!(
            "  node of {} MiB: the ConfigMap's memory_reserve = \"2G\" and max = \"8G\" lowered \
             to \"256M\" and \"1G\"",
            total_kib >> 10
        ));
        for (from, to) in [
            ("memory_reserve = \"2G\"", "memory_reserve = \"256M\""),
            ("max = \"8G\"", "max = \"1G\""),
        ] {
            assert!(text.contains(from), "the ConfigMap has {from}");
            text = text.replace(from, to);
        }
    }
    AgentConfig::file(&text)
        .agent_key("kubelet_cgroup_roots", &format!("[\"{root}\"]"))
        .start()
}

/// A cgroup with the exact name the kubelet or the runtime gives it (the test's own cgroup
/// below it is unique), removed on drop (after its processes are gone).
struct Dir {
    cg: Cgroup,
}

impl Dir {
    fn create(h: &Hierarchy, parent: &str, name: &str, limit: Option<u64>) -> Dir {
        let parent_cg = h.cgroup(parent).unwrap();
        if h.version == CgroupVersion::V2 {
            let enabled = parent_cg
                .read_required("cgroup.subtree_control", "delegation")
                .unwrap();
            if !enabled.split_whitespace().any(|c| c == "memory") {
                parent_cg
                    .write("cgroup.subtree_control", "+memory")
                    .unwrap();
            }
        }
        let cg = h.cgroup(&format!("{parent}/{name}")).unwrap();
        std::fs::create_dir(cg.dir())
            .unwrap_or_else(|e| panic!("creating {}: {e}", cg.dir().display()));
        let d = Dir { cg };
        if let Some(l) = limit {
            MemoryActuator::open(&d.cg, MemoryOptions::default())
                .unwrap()
                .set_memory_limit(Limit::Bytes(l))
                .unwrap();
        }
        d
    }

    fn path(&self) -> &str {
        self.cg.path()
    }

    fn limit(&self) -> Limit {
        self.cg.memory_limit().unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        for _ in 0..100 {
            match std::fs::remove_dir(self.cg.dir()) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("could not remove {}", self.cg.dir().display());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    Cgroupfs,
    Systemd,
}

/// The names the kubelet (and containerd) give a pod of QoS class `qos` (`burstable`,
/// `besteffort`), its sandbox and a container: kubepods, QoS level, pod, pause, container.
fn names(d: Driver, qos: &str) -> [String; 5] {
    match d {
        Driver::Cgroupfs => [
            "kubepods".into(),
            qos.into(),
            format!("pod{UID}"),
            PAUSE_ID.into(),
            CTR_ID.into(),
        ],
        Driver::Systemd => [
            "kubepods.slice".into(),
            format!("kubepods-{qos}.slice"),
            format!("kubepods-{qos}-pod{}.slice", UID.replace('-', "_")),
            format!("cri-containerd-{PAUSE_ID}.scope"),
            format!("cri-containerd-{CTR_ID}.scope"),
        ],
    }
}

/// A pod recreated in the kubelet's layout under a cgroup of the test's own. Fields drop in
/// order: processes, then cgroups from the leaves up.
struct Pod {
    _pause_proc: Proc,
    _pause_link: TempLink,
    ctr: Dir,
    pause: Dir,
    pod: Dir,
    qos: Dir,
    kubepods: Dir,
    /// The kubelet's cgroup root (`agent.kubelet_cgroup_roots`).
    root: scaler::cgroupfs::CgroupGuard,
}

/// A symlink named `pause` to the scaler binary (so that its process is named `pause`, like
/// the sandbox's), removed on drop.
struct TempLink(PathBuf);

impl Drop for TempLink {
    fn drop(&mut self) {
        if let Some(d) = self.0.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Pod {
    /// `kubepods` at `allocatable`, the QoS level unlimited, the pod at `pod_limit`, the
    /// sandbox unlimited with a `pause` process in it, the container at `ctr_limit`.
    fn create(
        env: &TestEnv,
        d: Driver,
        qos: &str,
        allocatable: Option<u64>,
        pod_limit: Option<u64>,
        ctr_limit: Option<u64>,
    ) -> Pod {
        let h = &env.memory;
        let root = memory_cgroup(env, "scaler-test-k8s");
        let root_path = memory_path(&root);
        let [kp, q, p, pause, ctr] = names(d, qos);
        let kubepods = Dir::create(h, &root_path, &kp, allocatable);
        let qos = Dir::create(h, kubepods.path(), &q, None);
        let pod = Dir::create(h, qos.path(), &p, pod_limit);
        let pause = Dir::create(h, pod.path(), &pause, None);
        let ctr = Dir::create(h, pod.path(), &ctr, ctr_limit);
        let dir = tempdir();
        let link = dir.join("pause");
        std::os::unix::fs::symlink(scaler_bin(), &link).unwrap();
        let pause_proc = spawn_in_cgroup(
            pause.cg.dir(),
            &link,
            &["workload", "idle", "--size", "1M", "--hold", "600s"],
        );
        // The sandbox's process is in place (named `pause`) before the agent looks.
        for _ in 0..200 {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", pause_proc.pid()))
                .unwrap_or_default();
            let here = pause.cg.procs().unwrap_or_default();
            if comm.trim() == "pause" && here.contains(&pause_proc.pid()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Pod {
            _pause_proc: pause_proc,
            _pause_link: TempLink(link),
            ctr,
            pause,
            pod,
            qos,
            kubepods,
            root,
        }
    }

    fn root_path(&self) -> String {
        memory_path(&self.root)
    }
}

/// `scaler workload steps` to `total` (the race workload of the other tests, natively 8 MiB
/// every 10 ms; paced under emulation), in `dir`.
fn burst(total: &str, dir: &Path) -> (RaceWorkload, Proc) {
    let w = RaceWorkload::steps_to(1, total);
    note(&format!("  the container bursts to {total}"));
    let p = w.spawn_in(dir);
    (w, p)
}

fn rescue(driver: Driver, test: &str) {
    let Some(env) = env_race(
        test,
        "winning the OOM race (rescuing a container that outgrows its limit)",
    ) else {
        return;
    };
    // kubepods holds node allocatable (1 GiB here), the Burstable pod 96 MiB: its sandbox
    // (no limit) and a 64 MiB container (pod = sum of containers, plus the sandbox's share).
    let pod = Pod::create(
        &env,
        driver,
        "burstable",
        Some(1 << 30),
        Some(96 * M),
        Some(64 * M),
    );
    let root = pod.root_path();
    let mut agent = shipped_agent(&root);
    agent.wait_managed(pod.ctr.path(), true, Duration::from_secs(10));
    agent.wait_managed(pod.pod.path(), true, Duration::from_secs(10));
    // The sandbox is selected by nothing that writes it: said once, never managed.
    agent.wait_event(
        &LogQuery::message(msg::POD_SANDBOX).field("cgroup", pod.pause.path()),
        Duration::from_secs(10),
    );
    let status = agent.status();
    assert!(status.managed(pod.pause.path()).is_none(), "{status}");
    for unmanaged in [pod.kubepods.path(), pod.qos.path(), root.as_str()] {
        assert!(status.managed(unmanaged).is_none(), "{unmanaged}: {status}");
    }

    let (_w, mut p) = burst("150M", pod.ctr.cg.dir());
    let st = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    let (ctr_raised, pod_raised) = (pod.ctr.limit(), pod.pod.limit());
    let oom = pod.ctr.cg.oom_kills().ok().flatten().unwrap_or(0);
    assert!(
        st.success(),
        "the container's 150 MiB burst survived: {st} (container {ctr_raised}, pod \
         {pod_raised}, OOM kills {oom})"
    );
    assert!(
        ctr_raised > Limit::Bytes(64 * M),
        "container raised: {ctr_raised}"
    );
    assert!(
        pod_raised > Limit::Bytes(96 * M),
        "pod raised along: {pod_raised}"
    );
    assert!(
        ctr_raised <= Limit::Bytes(8 << 30) && pod_raised <= Limit::Bytes(8 << 30),
        "within the ConfigMap's max"
    );
    assert_eq!(pod.pause.limit(), Limit::Max, "the sandbox is untouched");
    assert_eq!(
        pod.kubepods.limit(),
        Limit::Bytes(1 << 30),
        "kubepods untouched"
    );
    assert_eq!(pod.qos.limit(), Limit::Max, "the QoS level untouched");
    // Raises are audited for the container (from 64 MiB) and the pod (as its ancestor), for
    // nothing else.
    let ctr_raises = agent.audit_of(pod.ctr.path());
    assert!(
        ctr_raises.iter().any(|r| r.is_raise() && r.old == 64 * M),
        "{ctr_raises:?}"
    );
    let pod_raises = agent.audit_of(pod.pod.path());
    assert!(
        pod_raises.iter().any(|r| r.is_raise() && r.old == 96 * M),
        "{pod_raises:?}"
    );
    for other in [pod.pause.path(), pod.kubepods.path(), pod.qos.path()] {
        assert!(agent.audit_of(other).is_empty(), "{other} never written");
    }
    let latencies: Vec<f64> = ctr_raises.iter().filter_map(|r| r.latency_us).collect();
    note(&format!(
        "  {driver:?} driver: container 64 MiB -> {} MiB, pod 96 MiB -> {} MiB; {} container \
         raise(s) (event to limit written, us: {latencies:?}), {} pod raise(s)",
        ctr_raised.as_u64_saturating() >> 20,
        pod_raised.as_u64_saturating() >> 20,
        ctr_raises.iter().filter(|r| r.is_raise()).count(),
        pod_raises.iter().filter(|r| r.is_raise()).count()
    ));

    // SIGTERM: the kubelet's and the runtime's limits come back exactly.
    assert_eq!(agent.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(pod.ctr.limit(), Limit::Bytes(64 * M), "container restored");
    assert_eq!(pod.pod.limit(), Limit::Bytes(96 * M), "pod restored");
    assert_eq!(pod.pause.limit(), Limit::Max);
    assert_eq!(pod.kubepods.limit(), Limit::Bytes(1 << 30));
    drop(pod);
}

#[test]
fn shipped_configmap_rescues_a_container_and_raises_its_pod_cgroupfs_driver() {
    rescue(Driver::Cgroupfs, "k8s_rescue_cgroupfs");
}

#[test]
fn shipped_configmap_rescues_a_container_and_raises_its_pod_systemd_driver() {
    rescue(Driver::Systemd, "k8s_rescue_systemd");
}

#[test]
fn a_raise_never_exceeds_what_kubepods_can_back() {
    let Some(env) = env_race(
        "k8s_kubepods_room",
        "a raise bounded by an unmanaged ancestor during a burst",
    ) else {
        return;
    };
    // Node allocatable (kubepods) at 160 MiB, which the agent never manages: the container of
    // the 96 MiB pod bursting to 256 MiB cannot be backed beyond it, whatever its policy's max
    // (8G) allows. Without the bound its raises went to 64 MiB + 160 MiB and beyond.
    let pod = Pod::create(
        &env,
        Driver::Cgroupfs,
        "burstable",
        Some(160 * M),
        Some(96 * M),
        Some(64 * M),
    );
    let mut agent = shipped_agent(&pod.root_path());
    agent.wait_managed(pod.ctr.path(), true, Duration::from_secs(10));
    agent.wait_managed(pod.pod.path(), true, Duration::from_secs(10));
    // The room under kubepods is sampled with every sample (1 s in the ConfigMap): let two
    // pass.
    std::thread::sleep(Duration::from_millis(2500));
    // What kubepods can back is its limit less its working set: page cache it holds
    // (inactive file) is reclaimable and counts as room.
    let inactive = pod.kubepods.cg.memory_stat().unwrap().inactive_file;
    let (_w, mut p) = burst("256M", pod.ctr.cg.dir());
    // The burst does not fit in kubepods: the kernel ends it there, not the agent's limits.
    let st = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    let raises: Vec<AuditRecord> = agent
        .audit_of(pod.ctr.path())
        .into_iter()
        .filter(AuditRecord::is_raise)
        .collect();
    assert!(!raises.is_empty(), "the container was raised ({st})");
    // Under emulation the workload first writes a page-cache cushion (clean, inactive,
    // reclaimable): not working set either, so the container's limit may go that much higher
    // while its working set stays within kubepods.
    let cushion = if emulated() { EMULATED_CUSHION } else { 0 };
    let bound = 160 * M + inactive + cushion;
    for r in &raises {
        assert!(
            r.new <= bound,
            "a container raise beyond what kubepods (160 MiB, {} MiB of it inactive page cache) \
             can back: {r} (all: {raises:?})",
            inactive >> 20
        );
    }
    assert_eq!(
        pod.kubepods.limit(),
        Limit::Bytes(160 * M),
        "kubepods untouched"
    );
    assert!(agent.audit_of(pod.kubepods.path()).is_empty());
    note(&format!(
        "  kubepods at 160 MiB: container raises {:?} (workload {st})",
        raises.iter().map(|r| r.new >> 20).collect::<Vec<_>>()
    ));
    assert_eq!(agent.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(pod.ctr.limit(), Limit::Bytes(64 * M), "container restored");
    assert_eq!(pod.pod.limit(), Limit::Bytes(96 * M), "pod restored");
    drop(pod);
}

#[test]
fn an_unlimited_besteffort_pod_gets_no_limit_and_kubepods_pressure_is_counted() {
    let Some(env) = env("k8s_besteffort") else {
        return;
    };
    // A BestEffort pod: nothing limited below kubepods, whose (small) allocatable binds.
    let pod = Pod::create(
        &env,
        Driver::Systemd,
        "besteffort",
        Some(96 * M),
        None,
        None,
    );
    let mut agent = shipped_agent(&pod.root_path());
    agent.wait_managed(pod.ctr.path(), true, Duration::from_secs(10));
    agent.wait_managed(pod.pod.path(), true, Duration::from_secs(10));
    // Several samples (the ConfigMap samples every second): no limit is written.
    std::thread::sleep(Duration::from_millis(2500));
    for d in [&pod.ctr, &pod.pod, &pod.pause, &pod.qos] {
        assert_eq!(d.limit(), Limit::Max, "{} stays unlimited", d.path());
        assert!(
            agent.audit_of(d.path()).is_empty(),
            "{} never written",
            d.path()
        );
    }

    // The container fills page cache past kubepods' 96 MiB: reclaim at a limit the agent does
    // not manage, above cgroups it does. Counted and logged, with the cgroup.
    let fill = PageCacheWorkload::new(160 * M);
    let mut p = fill.spawn_in(pod.ctr.cg.dir());
    let st = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    assert!(st.success(), "{st}");
    let e = agent.wait_event(
        &LogQuery::message(msg::UNMANAGED_ANCESTOR_BINDS).field("cgroup", pod.kubepods.path()),
        Duration::from_secs(10),
    );
    assert_eq!(e.text("reason").as_deref(), Some("ancestor"));
    assert_eq!(e.text("resource").as_deref(), Some("memory"));
    assert_eq!(e.text("task_cgroup").as_deref(), Some(pod.ctr.path()));
    let s = agent.scrape();
    let n = s
        .value(
            metric::UNMANAGED_BINDING,
            &[("resource", "memory"), ("reason", "ancestor")],
        )
        .unwrap_or(0.0);
    assert!(n >= 1.0, "counted: {n}\n{}", s.text);
    // Logged at most once per cgroup every 10 s, however many signals came.
    assert_eq!(
        agent.count(
            &LogQuery::message(msg::UNMANAGED_ANCESTOR_BINDS).field("cgroup", pod.kubepods.path())
        ),
        1
    );
    // Still nothing written, and kubepods untouched.
    for d in [&pod.ctr, &pod.pod, &pod.pause] {
        assert_eq!(d.limit(), Limit::Max, "{}", d.path());
    }
    assert_eq!(pod.kubepods.limit(), Limit::Bytes(96 * M));
    assert_eq!(agent.stop(Signal::SIGTERM).code(), Some(0));
    drop(fill);
    drop(pod);
}
