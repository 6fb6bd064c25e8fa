//! The memory-pressure event pipeline, end to end: a real workload drives a memory cgroup into
//! reclaim and OOM; `scaler watch --json` must report it, attributed to exactly that cgroup.

use std::{os::unix::fs::MetadataExt, time::Duration};

use scaler::cgroupfs::{Controller, Limit};
use scaler_tests::*;

#[test]
fn reclaim_is_attributed_to_the_cgroup_under_pressure_and_not_to_its_neighbour() {
    let Some(env) = env("reclaim_attribution") else {
        return;
    };
    let hot = memory_cgroup(&env, "scaler-test-hot");
    let cold = memory_cgroup(&env, "scaler-test-cold");
    let hot_cg = hot.cgroup(Controller::Memory).unwrap();
    let cold_cg = cold.cgroup(Controller::Memory).unwrap();
    hot.set_memory_limit(Limit::Bytes(48 << 20)).unwrap();
    cold.set_memory_limit(Limit::Bytes(512 << 20)).unwrap();
    let hot_id = std::fs::metadata(hot_cg.dir()).unwrap().ino();
    let cold_id = std::fs::metadata(cold_cg.dir()).unwrap().ino();

    let fill = PageCacheWorkload::new(192 << 20);
    let watch = Watch::start(&["--cgroup", hot_cg.path(), "--cgroup", cold_cg.path()]);
    let t0 = monotonic_ns();
    // The neighbour does some work of its own, well within its limit.
    let mut quiet = spawn_in_cgroup(
        cold_cg.dir(),
        &scaler_bin(),
        &[
            "workload",
            "steps",
            "--total",
            "32M",
            "--step",
            "8M",
            "--interval",
            "10ms",
        ],
    );
    // Page cache is reclaimable: the hot cgroup reclaims over and over and survives.
    let mut hot_proc = fill.spawn_in(hot_cg.dir());
    let hot_status = hot_proc
        .wait_timeout(Duration::from_secs(120))
        .expect("pagecache workload finished");
    let quiet_status = quiet
        .wait_timeout(Duration::from_secs(60))
        .expect("neighbour finished");
    drop(fill);
    assert!(
        hot_status.success(),
        "page-cache workload in a 48M cgroup should survive reclaim: {hot_status}"
    );
    assert!(quiet_status.success());

    let events = watch.collect(Duration::from_secs(5), |ev| {
        ev.iter().any(|e| kind(e) == "reclaim_end")
            && ev.iter().filter(|e| kind(e) == "reclaim_begin").count() >= 3
    });
    let t1 = monotonic_ns();
    let begins: Vec<_> = events
        .iter()
        .filter(|e| kind(e) == "reclaim_begin")
        .collect();
    assert!(
        !begins.is_empty(),
        "no reclaim_begin events for the cgroup under pressure; got {events:?}"
    );
    for e in &events {
        assert_eq!(
            e["cgroup_id"].as_u64(),
            Some(hot_id),
            "event attributed to another cgroup: {e}"
        );
        assert_eq!(e["cgroup"].as_str(), Some(hot_cg.path()), "event path: {e}");
        assert_ne!(e["cgroup_id"].as_u64(), Some(cold_id));
        let ts = e["ts_ns"].as_u64().expect("ts_ns");
        assert!(
            ts >= t0 && ts <= t1,
            "ts_ns {ts} is not CLOCK_MONOTONIC within the test ({t0}..{t1})"
        );
        assert!(e["pid"].as_u64().unwrap() > 0 && e["comm"].is_string());
    }
    for b in &begins {
        assert_eq!(
            b["pid"].as_u64(),
            Some(u64::from(hot_proc.pid())),
            "reclaim in the workload's context: {b}"
        );
        assert_eq!(b["limit_bytes"].as_u64(), Some(48 << 20), "{b}");
    }
    let ends: Vec<_> = events.iter().filter(|e| kind(e) == "reclaim_end").collect();
    assert!(!ends.is_empty(), "reclaim_end with the stall is reported");
    assert!(
        ends.iter().all(|e| e["stall_ns"].as_u64().is_some()),
        "{ends:?}"
    );
    drop(watch);
}

#[test]
fn oom_kill_is_reported_with_the_victim_pid_and_its_cgroup() {
    let Some(env) = env("oom_kill_report") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-oom");
    let cg = g.cgroup(Controller::Memory).unwrap();
    g.set_memory_limit(Limit::Bytes(32 << 20)).unwrap();
    let id = std::fs::metadata(cg.dir()).unwrap().ino();
    let watch = Watch::start(&["--cgroup", cg.path()]);
    let mut victim = spawn_in_cgroup(
        cg.dir(),
        &scaler_bin(),
        &[
            "workload",
            "steps",
            "--total",
            "128M",
            "--step",
            "8M",
            "--interval",
            "10ms",
        ],
    );
    let status = victim
        .wait_timeout(Duration::from_secs(60))
        .expect("workload ended");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "a 128M workload in a 32M cgroup is OOM-killed: {status}"
    );
    let events = watch.collect(Duration::from_secs(5), |ev| {
        ev.iter().any(|e| kind(e) == "oom_kill")
    });
    let oom: Vec<_> = events.iter().filter(|e| kind(e) == "oom_kill").collect();
    assert_eq!(oom.len(), 1, "exactly one OOM kill: {events:?}");
    // Every line, of every kind, is what docs/schemas/watch-event.schema.json says.
    schema::assert_valid("watch-event", &events);
    assert_eq!(
        oom[0]["pid"].as_u64(),
        Some(u64::from(victim.pid())),
        "victim pid: {}",
        oom[0]
    );
    assert_eq!(oom[0]["cgroup_id"].as_u64(), Some(id));
    assert_eq!(oom[0]["cgroup"].as_str(), Some(cg.path()));
    // Reclaim came first, in the same cgroup.
    let first_reclaim = events
        .iter()
        .position(|e| kind(e) == "reclaim_begin")
        .expect("reclaim before the OOM kill");
    let oom_at = events.iter().position(|e| kind(e) == "oom_kill").unwrap();
    assert!(first_reclaim < oom_at);
    assert!(
        g.cgroup(Controller::Memory)
            .unwrap()
            .oom_kills()
            .unwrap()
            .unwrap_or(1)
            >= 1
    );
}

#[test]
fn ctrl_c_detaches_cleanly() {
    let Some(env) = env("watch_ctrl_c") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-int");
    let cg = g.cgroup(Controller::Memory).unwrap();
    let mut watch = Watch::start(&["--cgroup", cg.path()]);
    let status = watch
        .proc
        .interrupt(Duration::from_secs(10))
        .expect("watch exits on SIGINT");
    assert!(status.success(), "scaler watch exits 0 on Ctrl-C: {status}");
}

/// The sampler's limit-hit count (v2 `memory.events` `max`, v1 `memory.failcnt`) is the
/// kernel's: zero in a fresh cgroup, grown after a workload ran into the limit. It is the
/// backstop for pressure whose events were lost (docs/architecture.md).
#[test]
fn memory_limit_hits_count_what_the_kernel_counts() {
    let Some(env) = env("memory_limit_hits") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-hits");
    let cg = g.cgroup(Controller::Memory).unwrap();
    g.set_memory_limit(Limit::Bytes(32 << 20)).unwrap();
    assert_eq!(cg.memory_limit_hits().unwrap(), Some(0), "a fresh cgroup");
    let mut w = spawn_in_cgroup(
        cg.dir(),
        &scaler_bin(),
        &[
            "workload",
            "steps",
            "--total",
            "64M",
            "--step",
            "8M",
            "--interval",
            "10ms",
        ],
    );
    w.wait_timeout(Duration::from_secs(60))
        .expect("workload ended");
    let hits = cg.memory_limit_hits().unwrap().expect("a limit-hit count");
    assert!(hits > 0, "64M in a 32M cgroup hits the limit: {hits}");
    let Some(scaler::decider::MemorySignal::Sample { limit_hits, .. }) =
        scaler::resource::memory::sample(cg)
    else {
        panic!("a memory sample of {}", cg.dir().display());
    };
    assert!(limit_hits >= Some(hits), "{limit_hits:?} vs {hits}");
}
