//! Right-sizing: a raise follows the allocation under way (a spike gets a limit just above it,
//! not the maximum), and after the burst the limit comes down to the working set, the kernel
//! reclaiming the page cache above it first, never the working set.

use std::{
    io::Write as _,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use scaler::cgroupfs::{Cgroup, Limit};
use scaler_tests::*;

const MIB: u64 = 1 << 20;

/// Whether the running kernel gives the early warning these bounds rest on (the
/// `memcg/count_memcg_events` tracepoint). Without it (6.1 and 6.12 in the VMs) every raise
/// answers reclaim and doubles, by design, and a burst leaves 2-3x its peak until the
/// scale-down (measured and said in the README's architecture section): the test is skipped,
/// loudly, rather than asserting bounds the design does not claim there.
fn has_early_warnings(what: &str) -> bool {
    let has = scaler::btf::KernelBtf::from_sys()
        .map(|b| b.has_tracepoint("count_memcg_events"))
        .unwrap_or(false);
    if !has {
        note(&format!(
            "SKIP {what}: the running kernel has no memcg/count_memcg_events tracepoint (no \
             early warning): raises answer reclaim and double, by design, so issue 17's 1.5x and \
             1.3x bounds are not claimed here (README, Architecture)"
        ));
    }
    has
}

/// `scaler exec` with the default policy from 64 MiB (max 2 GiB) around `workload`.
fn exec_from_64m(workload: &[&str]) -> (std::process::ExitStatus, serde_json::Value) {
    let bin = scaler_bin().display().to_string();
    let cmd: Vec<&str> = std::iter::once(bin.as_str())
        .chain(workload.iter().copied())
        .collect();
    scaler_exec(&["--memory", "64M", "--memory-max", "2G"], &cmd)
}

/// A 320 MiB allocation touched at once, from a 64 MiB limit: rescued, and the limit it leaves
/// is within 1.5x of its peak (the sizing before this gave it up to 2.3x: doubling steps).
#[test]
fn a_spike_is_given_a_limit_just_above_it_not_the_maximum() {
    let Some(_env) = env_race("rightsize_spike", "a rescue") else {
        return;
    };
    if !has_early_warnings("rightsize_spike") {
        return;
    }
    let size = if emulated() { "160M" } else { "320M" };
    for (what, workload) in [
        ("spike", vec!["workload", "spike", "--size", size]),
        ("steps", steps_256m()),
    ] {
        let (status, s) = exec_from_64m(&workload);
        assert!(status.success(), "{what}: {status} {s}");
        assert_eq!(s["oom_kills"], 0, "{what}: {s}");
        let peak = s["peak_usage_bytes"].as_u64().unwrap();
        let last = s["final_limit_bytes"].as_u64().unwrap();
        let ratio = last as f64 / peak as f64;
        note(&format!(
            "{what}: peak {} MiB, final limit {} MiB ({ratio:.2}x), {} raises",
            peak / MIB,
            last / MIB,
            s["actions"].as_array().map_or(0, Vec::len)
        ));
        assert!(last >= peak, "{what}: never below usage: {s}");
        assert!(
            ratio <= 1.5,
            "{what}: final limit {ratio:.2}x its peak: {s}"
        );
    }
}

/// Writes `bytes` of a file in `dir`, on disk, and drops it from the page cache (clean pages:
/// `POSIX_FADV_DONTNEED` evicts them), so that whoever reads it next is charged for it.
fn cold_file(dir: &std::path::Path, bytes: u64) -> std::path::PathBuf {
    let path = dir.join("cache.bin");
    let mut f = std::fs::File::create(&path).expect("creating the cache file");
    let block = vec![0x5au8; MIB as usize];
    for _ in 0..bytes / MIB {
        f.write_all(&block).expect("writing the cache file");
    }
    f.sync_all().expect("syncing the cache file");
    // SAFETY: a valid descriptor; advice only.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
    path
}

/// A workload that reads 160 MiB of a file (page cache charged to it) and then holds 128 MiB of
/// anonymous memory: its limit rises above 300 MiB while it reads and touches. After a 2 s
/// cooldown the limit comes down to at most 1.3x the working set within 15 s, never below the
/// working set, with no OOM kill: the cache was reclaimed first (v1: by the limit writes, v2:
/// by `memory.reclaim`). The goal before this followed usage, cache included: it stayed above
/// usage + 80 MiB.
#[test]
fn after_a_burst_the_limit_comes_down_to_the_working_set_and_the_cache_goes_first() {
    let Some(env) = env("rightsize_scale_down") else {
        return;
    };
    if !has_early_warnings("rightsize_scale_down") {
        return;
    }
    let dir = tempdir();
    let file = cold_file(&dir, 160 * MIB);
    let pidfile = dir.join("pid");
    let hold_s = if emulated() { 40 } else { 20 };
    let script = format!(
        "echo $$ > '{}' && cat '{}' > /dev/null && exec '{}' workload idle --size 128M --hold {hold_s}s",
        pidfile.display(),
        file.display(),
        scaler_bin().display()
    );
    let summary = dir.join("summary.json");
    let child = Command::new(scaler_bin())
        .args([
            "exec",
            "--memory",
            "64M",
            "--memory-max",
            "2G",
            "--cooldown",
            "2s",
            "--down-interval",
            "1s",
            "--sample-interval",
            "200ms",
            "--json-summary",
        ])
        .arg(&summary)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .expect("running scaler exec");
    let mut exec = Proc { child };
    // The workload's cgroup, from its pid.
    let start = Instant::now();
    let pid = loop {
        if let Some(p) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no workload pid");
        std::thread::sleep(Duration::from_millis(20));
    };
    let path = env.memory.pid_cgroup(pid).expect("the workload's cgroup");
    let cg: Cgroup = env.memory.cgroup(&path).expect("the workload's cgroup");
    let (mut peak_limit, mut right_sized, mut seen) = (0u64, None, 0);
    while exec.child.try_wait().ok().flatten().is_none() {
        let (Ok(Limit::Bytes(limit)), Ok(usage), Ok(stat)) =
            (cg.memory_limit(), cg.memory_usage(), cg.memory_stat())
        else {
            break;
        };
        let ws = stat.working_set(usage);
        seen += 1;
        peak_limit = peak_limit.max(limit);
        assert!(
            limit >= ws,
            "limit {limit} below the working set {ws} (usage {usage})"
        );
        // Right-sized once the workload holds its 128 MiB and the limit is within 1.3x of it.
        if right_sized.is_none() && ws >= 128 * MIB && (limit as f64) <= 1.3 * ws as f64 {
            right_sized = Some((start.elapsed(), limit, ws, usage));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = exec
        .wait_timeout(Duration::from_secs(hold_s + 60))
        .expect("scaler exec ended");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "{status} {s}");
    assert_eq!(s["oom_kills"], 0, "{s}");
    assert!(seen > 10, "sampled the cgroup {seen} times");
    assert!(
        peak_limit >= 256 * MIB,
        "the burst raised the limit above 256 MiB: peak {peak_limit}"
    );
    let (at, limit, ws, usage) = right_sized.unwrap_or_else(|| {
        panic!("never within 1.3x of the working set (limit peaked at {peak_limit}): {s}")
    });
    note(&format!(
        "right-sized after {:.1} s: limit {} MiB, working set {} MiB, usage {} MiB (peak limit {} MiB)",
        at.as_secs_f64(),
        limit / MIB,
        ws / MIB,
        usage / MIB,
        peak_limit / MIB
    ));
    let downs = s["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reason"] == "scale_down")
        .count();
    assert!(downs >= 2, "gradual: {downs} lowerings: {s}");
}
