//! The decider in action: `scaler exec` rescues workloads that outgrow their starting limit,
//! holds its maximum, and gives memory back.

use std::{os::unix::process::ExitStatusExt, time::Duration};

use scaler::cgroupfs::{Controller, Limit};
use scaler_tests::*;

/// The race workload (natively the plain 8M/10ms steps; under emulation cushioned and paced
/// from the measured reaction latency, see [`RaceWorkload`]).
fn run_exec_race(args: &[&str], w: &RaceWorkload) -> (std::process::ExitStatus, serde_json::Value) {
    scaler_exec(args, &w.argv())
}

fn with_bin(args: &[&str]) -> Vec<String> {
    std::iter::once(scaler_bin().display().to_string())
        .chain(args.iter().map(|s| s.to_string()))
        .collect()
}

fn run_exec(args: &[&str], workload: &[&str]) -> (std::process::ExitStatus, serde_json::Value) {
    let cmd = with_bin(workload);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    scaler_exec(args, &cmd)
}

#[test]
fn a_plain_64m_limit_oom_kills_the_steps_workload() {
    let Some(env) = env("plain_limit_baseline") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-plain");
    let cg = g.cgroup(Controller::Memory).unwrap();
    g.set_memory_limit(Limit::Bytes(64 << 20)).unwrap();
    // The very workload the rescue tests race (cushioned and paced under emulation).
    let w = RaceWorkload::steps(1);
    let mut p = w.spawn_in(cg.dir());
    let status = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    assert_eq!(
        status.signal(),
        Some(9),
        "without the scaler the workload is OOM-killed: {status}"
    );
    assert!(cg.oom_kills().unwrap().unwrap_or(0) >= 1);
}

#[test]
fn exec_rescues_the_steps_workload() {
    let Some(_env) = env_race(
        "exec_rescue",
        "winning the OOM race (rescuing a workload that outgrows its limit)",
    ) else {
        return;
    };
    let w = RaceWorkload::steps(1);
    let (status, s) = run_exec_race(&["--memory", "64M", "--memory-max", "2G"], &w);
    assert!(
        status.success(),
        "scaler exec exits with the workload's status 0: {status} {s}"
    );
    assert_eq!(s["oom_kills"], 0, "{s}");
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["schema_version"], 1);
    schema::assert_valid("exec-summary", std::slice::from_ref(&s));
    let peak = s["peak_usage_bytes"].as_u64().unwrap();
    let fin = s["final_limit_bytes"].as_u64().unwrap();
    assert!(
        peak >= 256 << 20,
        "the workload touched its 256M: peak {peak}"
    );
    assert!(
        fin >= peak && fin <= 2 << 30,
        "final limit {fin} within [peak, max]"
    );
    let actions = s["actions"].as_array().unwrap();
    assert!(!actions.is_empty());
    for a in actions {
        assert_eq!(a["resource"], "memory");
        assert!(a["latency_us"].as_f64().unwrap() > 0.0);
    }
    eprintln!("reaction latency (us): {}", s["reaction_latency_us"]);
    assert!(s["reaction_latency_us"]["count"].as_u64().unwrap() >= 1);
}

#[test]
fn exec_rescues_on_reclaim_alone() {
    let Some(_env) = env_race(
        "exec_rescue_reclaim_only",
        "winning the OOM race (rescuing a workload that outgrows its limit)",
    ) else {
        return;
    };
    let w = RaceWorkload::steps(1);
    let (status, s) = run_exec_race(
        &[
            "--memory",
            "64M",
            "--memory-max",
            "2G",
            "--no-early-warning",
        ],
        &w,
    );
    assert!(status.success(), "{status} {s}");
    assert_eq!(s["oom_kills"], 0, "{s}");
    let reasons: Vec<_> = s["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().all(|r| r == "pressure"),
        "only reclaim-driven raises: {reasons:?}"
    );
    assert!(s["reclaim_events"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn exec_rescues_a_multithreaded_allocator() {
    let Some(_env) = env_race("exec_rescue_threads", "four threads racing the OOM killer") else {
        return;
    };
    let w = RaceWorkload::steps(4);
    let (status, s) = run_exec_race(&["--memory", "64M", "--memory-max", "2G"], &w);
    assert!(status.success(), "{status} {s}");
    assert_eq!(s["oom_kills"], 0, "{s}");
}

#[test]
fn memory_max_bounds_the_rescue() {
    let Some(_env) = env("exec_memory_max") else {
        return;
    };
    let (status, s) = run_exec(&["--memory", "64M", "--memory-max", "128M"], &steps_256m());
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "exit status 128+SIGKILL when the workload is OOM-killed: {status}"
    );
    assert_eq!(s["signal"], 9);
    assert!(s["oom_kills"].as_u64().unwrap() >= 1, "{s}");
    let max = 128u64 << 20;
    assert!(s["final_limit_bytes"].as_u64().unwrap() <= max, "{s}");
    for a in s["actions"].as_array().unwrap() {
        assert!(
            a["new"].as_u64().unwrap() <= max,
            "no action above --memory-max: {a}"
        );
    }
}

#[test]
fn an_idle_cgroup_gives_memory_back() {
    let Some(_env) = env("exec_scale_down") else {
        return;
    };
    let (status, s) = run_exec(
        &[
            "--memory",
            "512M",
            "--memory-min",
            "32M",
            "--headroom",
            "16M",
            "--cooldown",
            "1s",
            "--down-interval",
            "500ms",
            "--sample-interval",
            "200ms",
        ],
        &["workload", "idle", "--size", "64M", "--hold", "6s"],
    );
    assert!(status.success(), "{status} {s}");
    assert_eq!(s["oom_kills"], 0);
    let downs: Vec<_> = s["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reason"] == "scale_down")
        .collect();
    assert!(!downs.is_empty(), "the limit was lowered: {s}");
    let peak = s["peak_usage_bytes"].as_u64().unwrap();
    let fin = s["final_limit_bytes"].as_u64().unwrap();
    assert!(fin < 512 << 20, "final limit {fin} below the start");
    assert!(fin >= peak, "never below usage: final {fin} peak {peak}");
    for a in &downs {
        assert!(a["new"].as_u64().unwrap() < a["old"].as_u64().unwrap());
        assert!(
            a["new"].as_u64().unwrap() >= 64 << 20,
            "never below the 64M in use: {a}"
        );
    }
}

#[test]
fn exec_passes_the_exit_status_through() {
    let Some(_env) = env("exec_status") else {
        return;
    };
    let (status, s) = scaler_exec(&["--memory", "64M"], &["sh", "-c", "exit 7"]);
    assert_eq!(status.code(), Some(7));
    assert_eq!(s["exit_code"], 7);
}

/// `scaler exec`'s own failures, like env(1): 127 for a command not found, 126 for one found but
/// not runnable, 125 for a failure of scaler itself (here: no capabilities to load its
/// programs); and nothing left behind in either case.
#[test]
fn exec_fails_like_env_when_it_cannot_run_the_command() {
    let Some(_env) = env("exec_own_failures") else {
        return;
    };
    let dir = tempdir();
    let not_runnable = dir.join("not-executable");
    std::fs::write(&not_runnable, "#!/bin/sh\nexit 0\n").unwrap();
    let run = |cmd: &str| {
        let out = std::process::Command::new(scaler_bin())
            .args(["exec", "--memory", "64M", "--", cmd])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running scaler exec");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, stderr) = run("/nonexistent/scaler-no-such-command");
    assert_eq!(status.code(), Some(127), "not found: {stderr}");
    assert!(stderr.contains("scaler-no-such-command"), "{stderr}");
    let (status, stderr) = run(not_runnable.to_str().unwrap());
    assert_eq!(status.code(), Some(126), "not runnable: {stderr}");
    if std::process::Command::new("capsh")
        .arg("--help")
        .output()
        .is_ok()
    {
        let out = std::process::Command::new("capsh")
            .arg("--drop=cap_bpf,cap_perfmon,cap_sys_admin")
            .arg("--")
            .arg("-c")
            .arg(format!(
                "exec {} exec --memory 64M -- true",
                scaler_bin().display()
            ))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(125),
            "scaler's own failure: {stderr}"
        );
    } else {
        panic!("capsh (libcap2-bin) is needed for this test: apt-get install libcap2-bin");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
