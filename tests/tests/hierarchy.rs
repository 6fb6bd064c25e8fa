//! Hierarchies: the limit that binds may be an ancestor's. The kernel programs find it by
//! walking the page-counter parents; the agent raises a managed ancestor within its own policy.

use std::{os::unix::fs::MetadataExt, time::Duration};

use nix::sys::signal::Signal;
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
    let mut agent = AgentConfig::new(format!(
        r#"[[policy]]
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
        parent = pcg.path(),
        child = ccg.path()
    ))
    .metrics(false)
    .start();
    let race = RaceWorkload::steps(1);
    let mut w = race.spawn_in(ccg.dir());
    let st = w
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    let parent_limit = pcg.memory_limit().unwrap();
    let child_limit = ccg.memory_limit().unwrap();
    let exit = agent.stop(Signal::SIGINT);
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
    // The audit trail has both raises, each within its policy.
    for (path, from) in [(pcg.path(), 96 << 20), (ccg.path(), 64 << 20)] {
        let raises: Vec<AuditRecord> = agent
            .audit_of(path)
            .into_iter()
            .filter(AuditRecord::is_raise)
            .collect();
        assert!(
            raises.iter().any(|r| r.old == from) && raises.iter().all(|r| r.new <= 1 << 30),
            "{path} raised from {from} within max: {raises:?}"
        );
    }
    assert!(exit.success(), "the agent exits 0 on SIGINT: {exit}");
    agent.assert_only_json_on_stderr();
    drop(child);
}
