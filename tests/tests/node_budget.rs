//! The node budget accounts for the kubelet's reservations (issue 16, item 7): with
//! `node.kubelet_config` naming a `KubeletConfiguration`, raises also leave the kubelet's
//! `memory.available` above its eviction threshold plus the margin, `kubeReserved` and
//! `systemReserved`, and the file is read again when it changes.
//!
//! No test pushes the host toward an OOM: the kubelet figures are chosen relative to this
//! node's capacity (`systemReserved` of half of `MemTotal` and an `evictionHard` of 50%: no
//! room at all, whatever the host's load), and a refused raise only lets a 256 MiB workload in
//! a 64 MiB test cgroup be OOM-killed there.
//!
//! * A reservation that leaves no room: the raise is refused, logged naming the kubelet's
//!   reservation and the file, counted in `scaler_raises_refused_total{reason="budget"}`, and
//!   the figures are in `scaler status` and the metrics.
//! * The file rewritten with a bad value: an error naming the file and the key, counted, and
//!   the last good figures stay; rewritten with a small reservation: picked up at the next
//!   sample, and a burst is rescued.
//!
//! Each test starts its own agent (ended by pid) with a private config selecting only the
//! cgroups it created under its own cgroup, and its own kubelet file in a temp dir.

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use scaler::cgroupfs::{CgroupGuard, Controller, Limit};
use scaler_tests::*;

const M: u64 = 1 << 20;

/// The agent's log messages these tests read.
const KUBELET_READ: &str = "kubelet configuration read";
const KUBELET_UNUSABLE: &str = "kubelet configuration unusable";

/// `MemTotal` of this machine (bytes): the kubelet's capacity.
fn mem_total() -> u64 {
    scaler::config::NodeInfo::detect().unwrap().mem_total
}

/// A kubelet configuration file (mode 0644, owned by root as the test runs) in `dir`.
fn write_kubelet(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("kubelet-config.yaml");
    // Written aside and renamed, as configuration managers do: the agent never reads half.
    let tmp = dir.join(".kubelet-config.yaml.tmp");
    std::fs::write(
        &tmp,
        format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n{body}"),
    )
    .unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

/// `systemReserved` of half the node and `evictionHard` of 50%: no room for any raise.
fn no_room(dir: &Path) -> (PathBuf, u64) {
    let half_mi = mem_total() / M / 2;
    let p = write_kubelet(
        dir,
        &format!(
            "systemReserved:\n  cpu: 500m\n  memory: {half_mi}Mi\nevictionHard:\n  \
             memory.available: \"50%\"\n  nodefs.available: \"10%\"\n"
        ),
    );
    (p, half_mi * M)
}

fn config(kubelet: &Path, cgroup: &str) -> String {
    format!(
        "[node]\nmemory_reserve = \"128M\"\nkubelet_config = {:?}\n\n\
         [[policy]]\nname = \"burst\"\nmatch = [{:?}]\n\n[policy.memory]\nmin = \"16M\"\n\
         max = \"1G\"\n",
        kubelet.display().to_string(),
        glob_literal(cgroup)
    )
}

fn child(env: &TestEnv, parent: &CgroupGuard, name: &str) -> CgroupGuard {
    let g = CgroupGuard::create(&[&env.memory], &memory_path(parent), name)
        .expect("creating a test cgroup");
    g.set_memory_limit(Limit::Bytes(64 * M)).unwrap();
    g
}

/// Waits until the scrape satisfies `pred` (metrics are refreshed every sample interval).
fn wait_scrape(agent: &TestAgent, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = agent.scrape();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}:\n{}", s.text);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn reserve(s: &Scrape, source: &str) -> Option<u64> {
    s.value(metric::NODE_MEMORY_RESERVE, &[("source", source)])
        .map(|v| v as u64)
}

#[test]
fn a_kubelet_reservation_that_leaves_no_room_refuses_the_raise() {
    let Some(env) = env("node_budget_kubelet_refused") else {
        return;
    };
    let dir = tempdir();
    let (kubelet, reserved) = no_room(&dir);
    let parent = memory_cgroup(&env, "scaler-test-nodebudget-r");
    let g = child(&env, &parent, "burst");
    let path = memory_path(&g);
    let agent = AgentConfig::new(config(&kubelet, &path)).start();
    agent.wait_managed(&path, true, Duration::from_secs(5));
    let read = agent.wait_event(
        &LogQuery::message(KUBELET_READ).field("kubelet_config", kubelet.display()),
        Duration::from_secs(5),
    );
    assert_eq!(read.u64("system_reserved"), Some(reserved), "{read}");
    // The figures: no room, the kubelet's parts of the reserve as configured.
    let s = wait_scrape(&agent, "the node figures", |s| {
        s.value(metric::NODE_MEMORY_ROOM, &[]) == Some(0.0)
    });
    let total = mem_total();
    assert_eq!(
        reserve(&s, "kubelet_reserved"),
        Some(reserved),
        "{}",
        s.text
    );
    // 50% of capacity, rounded up, plus the default margin (128 MiB).
    assert_eq!(
        reserve(&s, "kubelet_eviction"),
        Some(total.div_ceil(2) + 128 * M),
        "{}",
        s.text
    );
    assert_eq!(reserve(&s, "config"), Some(128 * M), "{}", s.text);
    assert_eq!(
        s.value(metric::NODE_MEMORY_CAPACITY, &[]),
        Some(total as f64)
    );
    assert!(s
        .value(metric::NODE_MEMORY_UNMANAGED, &[])
        .is_some_and(|u| u > 0.0));
    let status = agent.status();
    let node = &status.0["node"];
    assert_eq!(node["room_bytes"], 0, "{status}");
    assert_eq!(node["room_bound"], "kubelet", "{status}");
    assert_eq!(node["capacity_bytes"], total, "{status}");
    assert!(node["unmanaged_usage_bytes"].as_u64().is_some(), "{status}");
    let k = &node["kubelet"];
    assert_eq!(k["config"], kubelet.display().to_string(), "{status}");
    assert_eq!(k["in_force"], "file", "{status}");
    assert_eq!(k["system_reserved_bytes"], reserved, "{status}");
    assert_eq!(k["eviction_threshold_bytes"], total.div_ceil(2), "{status}");
    // Outgrows its limit: without a raise, the kernel OOM-kills it in its own cgroup.
    let cg = g.cgroup(Controller::Memory).unwrap();
    let mut p = spawn_in_cgroup(cg.dir(), &scaler_bin(), &steps_256m());
    let st = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    assert!(!st.success(), "no raise: the workload cannot finish");
    let e = agent.wait_event(
        &LogQuery::message(msg::RAISE_REFUSED)
            .level("WARN")
            .field("cgroup", &path)
            .field("resource", "memory")
            .field("reason", "budget"),
        Duration::from_secs(5),
    );
    note(&format!("  {e}"));
    assert_eq!(e.u64("room"), Some(0), "{e}");
    let why = e.text("node_budget").unwrap_or_default();
    assert!(
        why.contains("the kubelet's reservations in")
            && why.contains(&kubelet.display().to_string())
            && why.contains("systemReserved"),
        "the refusal names the kubelet's reservation and its file: {e}"
    );
    assert_eq!(limit_of(&g), Limit::Bytes(64 * M), "the limit is untouched");
    assert_eq!(agent.audit_of(&path).len(), 0, "no limit change");
    wait_scrape(&agent, "the refusal counted", |s| {
        s.value(
            metric::RAISES_REFUSED,
            &[("resource", "memory"), ("reason", "budget")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rewritten_kubelet_config_is_picked_up_and_a_bad_one_keeps_the_last_good() {
    let Some(env) = env_race(
        "node_budget_kubelet_rewritten",
        "winning the OOM race once the kubelet's reservation is lowered",
    ) else {
        return;
    };
    let dir = tempdir();
    let (kubelet, reserved) = no_room(&dir);
    let parent = memory_cgroup(&env, "scaler-test-nodebudget-w");
    let g = child(&env, &parent, "burst");
    let path = memory_path(&g);
    let agent = AgentConfig::new(config(&kubelet, &path)).start();
    agent.wait_managed(&path, true, Duration::from_secs(5));
    wait_scrape(&agent, "no room under the kubelet's reservation", |s| {
        s.value(metric::NODE_MEMORY_ROOM, &[]) == Some(0.0)
            && reserve(s, "kubelet_reserved") == Some(reserved)
    });

    // A bad value: an error naming the file and the key; the last good figures stay.
    write_kubelet(&dir, "systemReserved:\n  memory: lots\n");
    let e = agent.wait_event(
        &LogQuery::message(KUBELET_UNUSABLE)
            .level("ERROR")
            .field("kubelet_config", kubelet.display())
            .field("key", "systemReserved.memory"),
        Duration::from_secs(5),
    );
    note(&format!("  {e}"));
    assert!(
        e.text("error").unwrap_or_default().contains("\"lots\""),
        "{e}"
    );
    let s = wait_scrape(&agent, "the error counted", |s| {
        s.value(metric::KUBELET_CONFIG_ERRORS, &[]) == Some(1.0)
    });
    assert_eq!(
        reserve(&s, "kubelet_reserved"),
        Some(reserved),
        "{}",
        s.text
    );
    assert_eq!(s.value(metric::NODE_MEMORY_ROOM, &[]), Some(0.0));
    let status = agent.status();
    assert_eq!(
        status.0["node"]["kubelet"]["in_force"], "last_good",
        "{status}"
    );
    assert!(
        status.0["node"]["kubelet"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("systemReserved.memory")),
        "{status}"
    );

    // A small reservation: picked up at the next sample, and a burst is rescued.
    write_kubelet(
        &dir,
        "systemReserved:\n  memory: 64Mi\nevictionHard:\n  memory.available: 100Mi\n",
    );
    let s = wait_scrape(&agent, "the rewritten file in force", |s| {
        reserve(s, "kubelet_reserved") == Some(64 * M)
            && s.value(metric::NODE_MEMORY_ROOM, &[])
                .is_some_and(|r| r > 0.0)
    });
    assert_eq!(
        reserve(&s, "kubelet_eviction"),
        Some(100 * M + 128 * M),
        "{}",
        s.text
    );
    assert_eq!(s.value(metric::KUBELET_CONFIG_ERRORS, &[]), Some(1.0));
    agent.wait_event(
        &LogQuery::message(KUBELET_READ)
            .field("kubelet_config", kubelet.display())
            .field("system_reserved", 64 * M),
        Duration::from_secs(5),
    );
    let cg = g.cgroup(Controller::Memory).unwrap();
    let w = RaceWorkload::steps(1);
    let mut p = w.spawn_in(cg.dir());
    let st = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    assert!(
        st.success(),
        "rescued once the reservation leaves room: {st} (signal {:?}); oom kills {:?}",
        st.signal(),
        cg.oom_kills()
    );
    assert!(limit_of(&g).as_u64_saturating() > 64 * M, "raised");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_shows_the_kubelets_figures_and_names_a_bad_key() {
    let dir = tempdir();
    let kubelet = write_kubelet(&dir, "systemReserved:\n  memory: 1Gi\n");
    let conf = dir.join("scaler.toml");
    std::fs::write(&conf, config(&kubelet, "/nothing")).unwrap();
    let check = || {
        let out = std::process::Command::new(scaler_bin())
            .arg("check-config")
            .arg(&conf)
            .output()
            .expect("running scaler check-config");
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, _) = check();
    assert!(
        out.contains(&format!("kubelet configuration {}", kubelet.display()))
            && out.contains("systemReserved.memory 1GiB"),
        "{out}"
    );
    write_kubelet(&dir, "systemReserved:\n  memory: 1GB\n");
    let (_, err) = check();
    assert!(
        err.contains("warning: the kubelet's configuration")
            && err.contains("`systemReserved.memory`")
            && err.contains("\"1GB\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
