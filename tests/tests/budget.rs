//! The node budget (issue 15, item 1): raises are bounded by what the node can really back
//! (`MemAvailable` minus `node.memory_reserve`, less what raises granted since the last sample),
//! not by the sum of the configured limits.
//!
//! * An unlimited managed neighbour (a policy without max) no longer locks every other raise
//!   out: a burst beside it is rescued.
//! * Overcommitted limits (hundreds of managed cgroups whose limits add up to more than the node
//!   has, the Kubernetes norm) do not either: a burst in one of them is rescued, and `scaler
//!   status` shows the action.
//! * A raise the node cannot back (a reserve that leaves nothing) is refused, logged with its
//!   reason and counted in `scaler_raises_refused_total{resource,reason}`, and the workload's
//!   limit is left as it was.
//!
//! Each test starts its own agent (ended by pid) with a private config selecting only the
//! cgroups it created under its own cgroup.

use std::{os::unix::process::ExitStatusExt, time::Duration};

use scaler::cgroupfs::{CgroupGuard, Controller, Limit};
use scaler_tests::*;

const M: u64 = 1 << 20;

/// A `[[policy]]` managing the memory of the cgroups matching `glob`, up to `max` (`None`: no
/// max, an unbounded limit).
fn policy(name: &str, glob: &str, max: Option<&str>) -> String {
    let max = max.map_or(String::new(), |m| format!("max = {m:?}\n"));
    format!("[[policy]]\nname = {name:?}\nmatch = [{glob:?}]\n\n[policy.memory]\nmin = \"16M\"\n{max}\n")
}

/// `MemTotal` of this machine (bytes).
fn mem_total() -> u64 {
    scaler::config::NodeInfo::detect().unwrap().mem_total
}

/// A child cgroup `name` of `parent`, at `limit` (`None`: left unlimited).
fn child(env: &TestEnv, parent: &CgroupGuard, name: &str, limit: Option<u64>) -> CgroupGuard {
    let g = CgroupGuard::create(&[&env.memory], &memory_path(parent), name)
        .expect("creating a test cgroup");
    if let Some(l) = limit {
        g.set_memory_limit(Limit::Bytes(l)).unwrap();
    }
    g
}

/// Runs the race workload (256 MiB; natively 8 MiB steps every 10 ms, under emulation
/// cushioned and paced: see [`RaceWorkload`]) in `g` and asserts it completed without an OOM
/// kill.
fn rescued(g: &CgroupGuard) {
    let cg = g.cgroup(Controller::Memory).unwrap();
    let w = RaceWorkload::steps(1);
    let mut p = w.spawn_in(cg.dir());
    let status = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    assert!(
        status.success(),
        "the workload was rescued: {status} (signal {:?}); oom kills {:?}",
        status.signal(),
        cg.oom_kills()
    );
    assert_eq!(cg.oom_kills().unwrap().unwrap_or(0), 0, "no OOM kill");
    assert!(
        limit_of(g).as_u64_saturating() > 64 * M,
        "the agent raised the limit"
    );
}

#[test]
fn an_unlimited_neighbour_does_not_lock_raises_out() {
    let Some(env) = env_race(
        "budget_unlimited_neighbour",
        "winning the OOM race beside an unlimited managed cgroup",
    ) else {
        return;
    };
    let parent = memory_cgroup(&env, "scaler-test-budget-u");
    let open = child(&env, &parent, "open", None);
    let burst = child(&env, &parent, "burst", Some(64 * M));
    assert_eq!(limit_of(&open), Limit::Max, "the neighbour has no limit");
    let (open_path, burst_path) = (memory_path(&open), memory_path(&burst));
    let body = format!(
        "[node]\nmemory_reserve = \"128M\"\n\n{}{}",
        policy("open", &glob_literal(&open_path), None),
        policy("burst", &glob_literal(&burst_path), Some("1G"))
    );
    let agent = AgentConfig::new(body).start();
    agent.wait_managed(&open_path, true, Duration::from_secs(5));
    agent.wait_managed(&burst_path, true, Duration::from_secs(5));
    rescued(&burst);
    assert_eq!(
        limit_of(&open),
        Limit::Max,
        "the neighbour is left unlimited"
    );
    assert!(
        !agent.logged(&LogQuery::message(msg::RAISE_REFUSED).field("cgroup", &burst_path)),
        "no raise of the burst was refused"
    );
}

#[test]
fn overcommitted_limits_do_not_lock_raises_out() {
    let Some(env) = env_race(
        "budget_overcommit",
        "winning the OOM race among overcommitted managed cgroups",
    ) else {
        return;
    };
    // 64 MiB limits adding up to 1.5 times the node's memory (at least 64 cgroups).
    let total = mem_total();
    let n = ((total * 3 / 2) / (64 * M) + 1).clamp(64, 1000);
    note(&format!(
        "  {n} managed cgroups at 64 MiB: {} MiB of limits on a node of {} MiB",
        n * 64,
        total / M
    ));
    let parent = memory_cgroup(&env, "scaler-test-budget-o");
    let mut idle = Vec::new();
    for i in 0..n - 1 {
        idle.push(child(&env, &parent, &format!("idle{i}"), Some(64 * M)));
    }
    let burst = child(&env, &parent, "burst", Some(64 * M));
    let burst_path = memory_path(&burst);
    let body = format!(
        "[node]\nmemory_reserve = \"128M\"\n\n{}",
        policy(
            "pods",
            &format!("{}/*", glob_literal(&memory_path(&parent))),
            Some("1G")
        )
    );
    let agent = AgentConfig::new(body).quiet(&[msg::MANAGING]).start();
    agent.wait_status(
        &format!("{n} managed cgroups"),
        Duration::from_secs(60),
        |s| s["managed"].as_array().is_some_and(|m| m.len() as u64 == n),
    );
    rescued(&burst);
    let status = agent.wait_status(
        "the rescue in recent_actions",
        Duration::from_secs(5),
        |s| {
            s.recent_actions()
                .iter()
                .any(|a| a["cgroup"] == burst_path.as_str() && a["new"].as_u64() > Some(64 * M))
        },
    );
    assert!(status.actions() >= 1, "{status}");
    for g in &idle[..3] {
        assert_eq!(limit_of(g), Limit::Bytes(64 * M), "idle cgroups untouched");
    }
    drop(agent);
    drop(burst);
    drop(idle);
}

#[test]
fn a_raise_the_node_cannot_back_is_refused_logged_and_counted() {
    let Some(env) = env("budget_refused") else {
        return;
    };
    let parent = memory_cgroup(&env, "scaler-test-budget-r");
    let g = child(&env, &parent, "burst", Some(64 * M));
    let path = memory_path(&g);
    // A reserve of all but 1 MiB of the node: MemAvailable minus it is nothing.
    let reserve = mem_total() - M;
    let body = format!(
        "[node]\nmemory_reserve = {reserve}\n\n{}",
        policy("burst", &glob_literal(&path), Some("1G"))
    );
    let agent = AgentConfig::new(body).start();
    agent.wait_managed(&path, true, Duration::from_secs(5));
    // Outgrows its limit: without a raise, the kernel OOM-kills it.
    let cg = g.cgroup(Controller::Memory).unwrap();
    let mut p = spawn_in_cgroup(cg.dir(), &scaler_bin(), &steps_256m());
    let status = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    assert!(!status.success(), "no raise: the workload cannot finish");
    let e = agent.wait_event(
        &LogQuery::message(msg::RAISE_REFUSED)
            .level("WARN")
            .field("cgroup", &path)
            .field("resource", "memory")
            .field("reason", "budget"),
        Duration::from_secs(5),
    );
    note(&format!("  {e}"));
    assert_eq!(e.u64("limit"), Some(64 * M), "{e}");
    assert_eq!(e.u64("room"), Some(0), "{e}");
    assert!(e.u64("wanted").is_some_and(|w| w > 64 * M), "{e}");
    assert_eq!(limit_of(&g), Limit::Bytes(64 * M), "the limit is untouched");
    assert_eq!(agent.audit_of(&path).len(), 0, "no limit change");
    // Counted: the metric is refreshed every sample interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = agent.scrape();
        let n = scrape
            .value(
                metric::RAISES_REFUSED,
                &[("resource", "memory"), ("reason", "budget")],
            )
            .unwrap_or(0.0);
        if n >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scaler_raises_refused_total{{resource=\"memory\",reason=\"budget\"}} stays {n}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn check_config_warns_about_a_policy_that_gives_an_unbounded_limit() {
    let dir = tempdir();
    let check = |name: &str, body: &str| {
        let file = dir.join(name);
        std::fs::write(&file, body).unwrap();
        let out = std::process::Command::new(scaler_bin())
            .arg("check-config")
            .arg(&file)
            .output()
            .expect("running scaler check-config");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let open = check("open.toml", &policy("open", "/open/*", None));
    assert!(
        open.contains("warning: `policy[0].memory.max`") && open.contains("unbounded"),
        "{open}"
    );
    let capped = check("capped.toml", &policy("capped", "/capped/*", Some("1G")));
    assert!(!capped.contains("warning"), "{capped}");
    let _ = std::fs::remove_dir_all(&dir);
}
