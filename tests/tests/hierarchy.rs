//! Hierarchies: the limit that binds may be an ancestor's. The kernel programs find it by
//! walking the page-counter parents; the agent raises a managed ancestor within its own policy.

use std::{
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
    time::Duration,
};

use scaler::cgroupfs::{CgroupGuard, Controller, Limit};
use scaler_tests::*;

#[test]
fn reclaim_at_an_ancestor_limit_names_the_ancestor_as_target() {
    let Some(env) = env("ancestor_attribution") else {
        return;
    };
    let parent = memory_cgroup(&env, "scaler-test-parent");
    let pcg = parent.cgroup(Controller::Memory).unwrap().clone();
    parent.set_memory_limit(Limit::Bytes(48 << 20)).unwrap();
    let child = CgroupGuard::create(&[&env.memory], pcg.path(), "child").expect("child cgroup");
    let ccg = child.cgroup(Controller::Memory).unwrap().clone();
    // The child has no limit of its own: the parent's binds.
    let pid = std::fs::metadata(pcg.dir()).unwrap().ino();
    let cid = std::fs::metadata(ccg.dir()).unwrap().ino();
    let fill = PageCacheWorkload::new(160 << 20);
    let watch = Watch::start(&["--cgroup", pcg.path()]);
    let mut p = fill.spawn_in(ccg.dir());
    let st = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    drop(fill);
    assert!(st.success(), "{st}");
    let events = watch.collect(Duration::from_secs(5), |ev| {
        ev.iter().filter(|e| kind(e) == "reclaim_begin").count() >= 2
    });
    let begins: Vec<_> = events
        .iter()
        .filter(|e| kind(e) == "reclaim_begin")
        .collect();
    assert!(
        !begins.is_empty(),
        "reclaim in the child reported through the watched parent: {events:?}"
    );
    for b in begins {
        assert_eq!(
            b["cgroup_id"].as_u64(),
            Some(cid),
            "the task's own memory cgroup: {b}"
        );
        assert_eq!(b["cgroup"].as_str(), Some(ccg.path()));
        assert_eq!(
            b["target_id"].as_u64(),
            Some(pid),
            "the binding limit is the parent's: {b}"
        );
        assert_eq!(b["target"].as_str(), Some(pcg.path()));
        assert_eq!(b["limit_bytes"].as_u64(), Some(48 << 20));
    }
    drop(watch);
    drop(child);
}

#[test]
fn agent_raises_a_managed_parent_whose_limit_binds() {
    let Some(env) = env_race(
        "agent_hierarchy",
        "winning the OOM race (rescuing a workload that outgrows its limit)",
    ) else {
        return;
    };
    let parent = memory_cgroup(&env, "scaler-test-hp");
    let pcg = parent.cgroup(Controller::Memory).unwrap().clone();
    parent.set_memory_limit(Limit::Bytes(96 << 20)).unwrap();
    let child = CgroupGuard::create(&[&env.memory], pcg.path(), "job").expect("child cgroup");
    let ccg = child.cgroup(Controller::Memory).unwrap().clone();
    child.set_memory_limit(Limit::Bytes(64 << 20)).unwrap();
    let dir = tempdir();
    let config = dir.join("scaler.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
metrics = false
observe_all = false
sample_interval = "200ms"
state_file = "{state}"
status_socket = "{sock}"

[[policy]]
name = "parent"
match = ["{parent}"]
[policy.memory]
max = "1G"
headroom = "16M"

[[policy]]
name = "job"
match = ["{child}"]
[policy.memory]
max = "1G"
headroom = "16M"
"#,
            state = dir.join("state.json").display(),
            sock = dir.join("status.sock").display(),
            parent = pcg.path(),
            child = ccg.path()
        ),
    )
    .unwrap();
    let agent = Command::new(scaler_bin())
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    let mut agent = Proc { child: agent };
    let stderr = agent.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("  [agent] {line}");
            if line.contains("agent running") {
                if let Some(t) = tx.take() {
                    let _ = t.send(());
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("agent started");
    let race = RaceWorkload::steps(1);
    let mut w = race.spawn_in(ccg.dir());
    let st = w
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    let parent_limit = pcg.memory_limit().unwrap();
    let child_limit = ccg.memory_limit().unwrap();
    let _ = agent.interrupt(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(st.success(), "the workload in the child survived: {st}");
    assert!(
        parent_limit > Limit::Bytes(96 << 20),
        "the parent was raised: {parent_limit:?}"
    );
    assert!(
        child_limit > Limit::Bytes(64 << 20),
        "the child was raised: {child_limit:?}"
    );
    assert!(
        parent_limit <= Limit::Bytes(1 << 30) && child_limit <= Limit::Bytes(1 << 30),
        "within max"
    );
    drop(child);
}
