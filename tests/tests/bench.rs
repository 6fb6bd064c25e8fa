//! `scaler bench --quick` keeps working and produces well-formed output (not a timing test).

use scaler_tests::*;

#[test]
fn bench_quick_writes_wellformed_json_and_report() {
    let Some(env) = env("bench_quick") else {
        return;
    };
    let d = tempdir();
    let j = d.join("out.json");
    let rep = d.join("report");
    let mut cmd = std::process::Command::new(scaler_bin());
    cmd.args(["bench", "--quick", "--no-progress", "--json"])
        .arg(&j)
        .arg("--report")
        .arg(&rep);
    if env.memory.version == scaler::cgroupfs::CgroupVersion::V2 {
        // The test VMs have 1 GiB of memory.
        cmd.args(["--memory-max", "512M"]);
    }
    let o = cmd.output().expect("running scaler bench");
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!("{stdout}");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&j).unwrap()).unwrap();
    assert_eq!(v["schema"], "scaler-bench/1");
    assert_eq!(v["schema_version"], 1);
    scaler_tests::schema::assert_valid("bench", std::slice::from_ref(&v));
    let runs = v["runs"].as_array().expect("runs");
    assert!(!runs.is_empty());
    assert!(
        runs.iter().all(|r| r["error"].is_null()),
        "no run failed: {runs:?}"
    );
    let summary = v["summary"].as_array().expect("summary");
    assert!(
        summary.iter().any(|c| c["competitor"] == "ebpf"),
        "the eBPF scaler took part"
    );
    for c in summary {
        assert!(
            c.get("oom_kills_total").is_some() && c.get("latency_p99_us").is_some(),
            "{c}"
        );
    }
    let md = std::fs::read_to_string(rep.join("report.md")).expect("report.md");
    assert!(md.contains(".svg"), "the report links its plots");
    let _ = std::fs::remove_dir_all(&d);
}

/// `scaler bench --suite real` (short: two workloads, static and the eBPF scaler, a 2 s
/// cooldown and a 3 s hold): the static 64 MiB limit is OOM-killed by a real program that needs
/// more, the eBPF scaler's run survives with its limit above the peak, and the hold phase
/// records a time to right-size or why there is none. In a cgroup v2 VM (emulated, slow) only
/// the numpy workload runs.
#[test]
fn bench_real_suite_smoke() {
    let Some(env) = env("bench_real") else {
        return;
    };
    let v2 = env.memory.version == scaler::cgroupfs::CgroupVersion::V2;
    let d = tempdir();
    let j = d.join("real.json");
    let rep = d.join("report");
    let mut cmd = std::process::Command::new(scaler_bin());
    cmd.args([
        "bench",
        "--suite",
        "real",
        "--quick",
        "--competitors",
        "static,ebpf",
        "--cooldown",
        "2s",
        "--hold",
        "3s",
        "--no-progress",
        "--workloads",
        if v2 {
            "numpy-spike"
        } else {
            "numpy-spike,sort"
        },
        "--json",
    ])
    .arg(&j)
    .arg("--report")
    .arg(&rep);
    if v2 {
        // The test VMs have 1 GiB of memory.
        cmd.args(["--memory-max", "512M"]);
    }
    let o = cmd.output().expect("running scaler bench --suite real");
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("{}\n{stderr}", String::from_utf8_lossy(&o.stdout));
    if !o.status.success() && stderr.contains("every selected workload was skipped") {
        eprintln!("SKIPPED bench_real_suite_smoke: the real suite's programs are missing (above)");
        let _ = std::fs::remove_dir_all(&d);
        return;
    }
    assert!(o.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&j).unwrap()).unwrap();
    scaler_tests::schema::assert_valid("bench", std::slice::from_ref(&v));
    assert_eq!(v["options"]["suite"], "real");
    let runs = v["runs"].as_array().expect("runs");
    assert!(
        runs.iter().all(|r| r["error"].is_null()),
        "no run failed: {runs:#?}"
    );
    let skipped: Vec<&str> = v["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .filter_map(|s| s["workload"].as_str())
        .collect();
    let ran: Vec<&str> = v["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    if !skipped.is_empty() {
        eprintln!("SKIPPED in bench_real_suite_smoke (programs missing): {skipped:?}");
    }
    assert!(!ran.is_empty());
    const MIB: u64 = 1 << 20;
    for w in ran {
        let run = |c: &str| {
            runs.iter()
                .find(|r| r["workload"] == w && r["competitor"] == c)
                .unwrap_or_else(|| panic!("no {c} run of {w}"))
        };
        let (st, eb) = (run("static"), run("ebpf"));
        let peak = eb["peak_usage_bytes"].as_u64().expect("ebpf peak usage");
        assert!(
            peak > 64 * MIB,
            "{w}: a peak above the 64 MiB start: {peak}"
        );
        assert!(
            st["oom_kills"].as_u64().unwrap() >= 1,
            "{w}: the static 64 MiB limit was OOM-killed: {st:#}"
        );
        assert_eq!(st["real"]["survived"], false, "{w}");
        assert_eq!(
            st["real"]["hold"]["held"], false,
            "{w}: static holds nothing"
        );
        let real = &eb["real"];
        assert_eq!(
            real["survived"], true,
            "{w}: the eBPF scaler's run survived: {eb:#}"
        );
        assert_eq!(eb["oom_kills"], 0, "{w}");
        let final_limit = real["limit_at_completion"].as_u64().expect("final limit");
        assert!(
            final_limit >= peak,
            "{w}: final limit {final_limit} above the peak usage {peak}"
        );
        assert!(real["raises"].as_u64().unwrap() >= 1, "{w}");
        let hold = &real["hold"];
        assert_eq!(hold["held"], true, "{w}: the eBPF run held its cgroup");
        assert!(
            hold["time_to_right_size_ms"].is_number() || hold["note"].is_string(),
            "{w}: a time to right-size or a reason: {hold:#}"
        );
        assert!(real["work_us"].as_u64().unwrap() > 0, "{w}");
    }
    let md = std::fs::read_to_string(rep.join("report.md")).expect("report.md");
    assert!(md.contains("timeline-"), "the report plots each workload");
    assert!(md.contains("right-size"));
    let _ = std::fs::remove_dir_all(&d);
}
