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
