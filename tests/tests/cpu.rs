//! CPU: the scheduler programs see a cgroup nearing its quota, and `scaler exec --cpu` raises
//! the quota before the kernel throttles a bursty workload, then lowers it again.
//!
//! The workload needs about 2 cores in bursts (`scaler workload cpu --busy-threads 2`), under a
//! 0.2-core starting quota (issue 4's "done when").

use std::time::{Duration, Instant};

use scaler::cgroupfs::Controller;
use scaler_tests::*;

const BURSTS: &[&str] = &[
    "workload",
    "cpu",
    "--busy-threads",
    "2",
    "--burst",
    "2s",
    "--idle",
    "1s",
    "--cycles",
    "3",
];

fn with_bin(args: &[&str]) -> Vec<String> {
    std::iter::once(scaler_bin().display().to_string())
        .chain(args.iter().map(|s| s.to_string()))
        .collect()
}

/// The same workload under a static 0.2-core quota and under `scaler exec --cpu 0.2
/// --cpu-max 2`, in one run: the scaler must cut the throttled time by at least 90%.
#[test]
fn exec_cuts_throttling_of_a_bursty_workload_by_90_percent() {
    let Some(_env) = env_race(
        "cpu_throttling_static_vs_exec",
        "reacting within a CPU quota period",
    ) else {
        return;
    };

    // Static quota: the kernel throttles every burst.
    let g = cpu_cgroup("scaler-test-cpu-static", 0.2);
    let cg = g.cgroup(Controller::Cpu).unwrap().clone();
    let mut p = spawn_in_cgroup(cg.dir(), &scaler_bin(), BURSTS);
    let status = p
        .wait_timeout(Duration::from_secs(120))
        .expect("static workload ended");
    assert!(status.success(), "{status}");
    let (static_nr, static_us) = throttling(&cg);
    drop(g);
    eprintln!("static 0.2-core quota: nr_throttled={static_nr} throttled_usec={static_us}");
    assert!(
        static_nr >= 10 && static_us >= 1_000_000,
        "a 0.2-core quota throttles 2-core bursts: {static_nr} periods, {static_us} us"
    );

    // The same workload under the scaler.
    let cmd = with_bin(BURSTS);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (status, s) = scaler_exec(&["--cpu", "0.2", "--cpu-max", "2"], &cmd);
    assert!(status.success(), "{status} {s}");
    let cpu = &s["cpu"];
    assert_eq!(
        cpu["kernel_events"], true,
        "the scheduler programs are attached: {s}"
    );
    let exec_us = s["throttled_usec"]
        .as_u64()
        .expect("throttled_usec in the summary");
    let exec_nr = s["nr_throttled"]
        .as_u64()
        .expect("nr_throttled in the summary");
    eprintln!(
        "scaler exec --cpu 0.2 --cpu-max 2: nr_throttled={exec_nr} throttled_usec={exec_us} (static: {static_nr}, {static_us}); \
         quota peak {} cores, quota_near events {}, runq p99<={}us",
        cpu["peak_quota_cores"], cpu["quota_near_events"], cpu["runq_p99_us"]
    );
    let reduction = 1.0 - exec_us as f64 / static_us as f64;
    eprintln!("throttled time reduced by {:.1}%", reduction * 100.0);
    assert!(
        reduction >= 0.9,
        "at least 90% less throttled time: {exec_us} us vs {static_us} us static"
    );

    // The raises were CPU actions, caused by the kernel's signals, with measured latency.
    let actions = s["actions"].as_array().unwrap();
    let raises: Vec<_> = actions
        .iter()
        .filter(|a| a["new"].as_u64() > a["old"].as_u64())
        .collect();
    assert!(!raises.is_empty(), "{s}");
    for a in &raises {
        assert_eq!(a["resource"], "cpu", "{a}");
        assert!(a["ok"].as_bool().unwrap(), "{a}");
        let r = a["reason"].as_str().unwrap();
        assert!(
            ["cpu_quota_near", "cpu_runq_latency", "cpu_throttled"].contains(&r),
            "{a}"
        );
        assert!(a["latency_us"].as_f64().unwrap() > 0.0, "{a}");
    }
    assert!(
        raises.iter().any(|a| a["reason"] == "cpu_quota_near"),
        "the first raise answers the kernel's quota-near event: {s}"
    );
    assert!(cpu["peak_quota_cores"].as_f64().unwrap() >= 1.0, "{s}");
    assert!(
        cpu["peak_quota_cores"].as_f64().unwrap() <= 2.0 + 1e-9,
        "--cpu-max holds: {s}"
    );
}

/// After the burst, the quota comes back down toward its starting value (short cooldown).
#[test]
fn exec_lowers_the_quota_after_the_burst() {
    let Some(_env) = env_race("cpu_scale_down", "reacting within a CPU quota period") else {
        return;
    };
    let workload = format!(
        "{} workload cpu --busy-threads 2 --burst 2s --idle 0s --cycles 1 && sleep 12",
        scaler_bin().display()
    );
    let started = monotonic_ns();
    let (status, s) = scaler_exec(
        &[
            "--cpu",
            "0.2",
            "--cpu-max",
            "2",
            "--cpu-cooldown",
            "2s",
            "--cpu-down-interval",
            "1s",
        ],
        &["sh", "-c", &workload],
    );
    assert!(status.success(), "{status} {s}");
    let cpu = &s["cpu"];
    let peak = cpu["peak_quota_cores"].as_f64().unwrap();
    let fin = cpu["final_quota_cores"].as_f64().expect("a final quota");
    eprintln!("quota: start 0.2, peak {peak}, final {fin} cores");
    assert!(peak >= 0.8, "the burst raised the quota: {s}");
    // The lowest quota the scale-down reached (the final one may be raised again by the
    // shell's own exit, which under emulation can use most of a 0.2-core period).
    let period_us = cpu["period_us"].as_f64().expect("period_us");
    let actions = s["actions"].as_array().unwrap();
    let lowest = actions
        .iter()
        .filter(|a| a["reason"] == "cpu_scale_down")
        .filter_map(|a| a["new"].as_f64())
        .fold(f64::INFINITY, f64::min)
        / period_us;
    eprintln!("lowest quota after the burst: {lowest} cores");
    assert!(
        lowest < peak / 2.0,
        "the quota came back down: {lowest} of peak {peak} (final {fin})"
    );
    assert!(
        lowest >= 0.2 - 1e-3 && fin >= 0.2 - 1e-3,
        "never below the starting quota (the default --cpu-min): lowest {lowest}, final {fin}"
    );
    let last_raise = actions
        .iter()
        .filter(|a| a["new"].as_u64() > a["old"].as_u64())
        .filter_map(|a| a["trigger_ts_ns"].as_u64())
        .max()
        .expect("a raise");
    let first_down = actions
        .iter()
        .find(|a| a["reason"] == "cpu_scale_down")
        .unwrap_or_else(|| panic!("a scale-down action: {s}"));
    assert_eq!(first_down["resource"], "cpu");
    let after = Duration::from_nanos(
        first_down["trigger_ts_ns"]
            .as_u64()
            .unwrap()
            .saturating_sub(last_raise),
    );
    eprintln!("first scale-down {after:?} after the last raise (run began {started})");
    assert!(
        after < Duration::from_secs(60),
        "lowered within a minute of the burst: {after:?}"
    );
}

/// `scaler watch --cpu-cgroup` reports a watched cgroup nearing its quota, attributed to the
/// right cgroup and task, at most once per period, and nothing for an unwatched sibling under
/// the same load.
#[test]
fn watch_reports_quota_near_only_for_the_watched_cgroup() {
    let Some(_env) = env_race("cpu_watch_quota_near", "CPU time per quota period") else {
        return;
    };
    let watched = cpu_cgroup("scaler-test-cpu-watched", 0.2);
    let other = cpu_cgroup("scaler-test-cpu-other", 0.2);
    let wcg = watched.cgroup(Controller::Cpu).unwrap();
    let ocg = other.cgroup(Controller::Cpu).unwrap();
    let wid = wcg.id().unwrap().0;
    let w = Watch::start(&[
        "--cpu-cgroup",
        wcg.path(),
        "--cpu-near",
        "0.8",
        "--runq-target",
        "0",
    ]);
    // Under emulation the workload's start (exec of the agent binary over 9p) takes a second
    // or more at 0.2 cores: a longer burst, watched longer.
    let (burst, window) = if emulated() {
        ("6s", Duration::from_secs(8))
    } else {
        ("1500ms", Duration::from_millis(1700))
    };
    let args = [
        "workload",
        "cpu",
        "--busy-threads",
        "2",
        "--burst",
        burst,
        "--idle",
        "0s",
        "--cycles",
        "1",
    ];
    let t0 = Instant::now();
    let mut a = spawn_in_cgroup(wcg.dir(), &scaler_bin(), &args);
    let mut b = spawn_in_cgroup(ocg.dir(), &scaler_bin(), &args);
    let events = w.collect(window + Duration::from_secs(5), |_| t0.elapsed() > window);
    assert!(a
        .wait_timeout(Duration::from_secs(30))
        .expect("workload a")
        .success());
    assert!(b
        .wait_timeout(Duration::from_secs(30))
        .expect("workload b")
        .success());
    let near: Vec<_> = events
        .iter()
        .filter(|e| kind(e) == "cpu_quota_near")
        .collect();
    if !near.is_empty() {
        schema::assert_valid("watch-event", &events);
    }
    eprintln!(
        "{} cpu_quota_near events, e.g. {:?}",
        near.len(),
        near.first()
    );
    assert!(
        near.len() >= 5,
        "a 0.2-core quota under 2 busy threads nears its quota in most periods: {events:?}"
    );
    let (_, period_us) = wcg.cpu_max().unwrap();
    for e in &near {
        assert_eq!(
            e["cgroup_id"].as_u64(),
            Some(wid),
            "only the watched cgroup is reported: {e}"
        );
        assert_eq!(e["cgroup"].as_str(), Some(wcg.path()), "{e}");
        assert_eq!(
            e["pid"].as_u64(),
            Some(u64::from(a.pid())),
            "attributed to the task that ran: {e}"
        );
        // Under emulation the workload's own start (fork, exec, loader) can use most of a
        // 20 ms quota: the first events may name that task (same pid) before its busy threads
        // exist; checked below.
        assert!(
            e["comm"].as_str().unwrap().starts_with("cpu-") || emulated(),
            "a busy thread: {e}"
        );
        assert_eq!(e["quota_us"].as_u64(), Some(20_000), "{e}");
        assert_eq!(e["period_us"].as_u64(), Some(period_us), "{e}");
        let used = e["used_us"].as_u64().unwrap();
        assert!(used >= 16_000, "crossed 80% of the 20 ms quota: {e}");
    }
    let busy = |e: &&serde_json::Value| e["comm"].as_str().unwrap().starts_with("cpu-");
    let first_busy = near.iter().position(busy).expect("a busy thread crossed");
    // Under emulation the workload's own main thread (same pid, same cgroup: a correct
    // attribution) also runs for whole milliseconds at burst boundaries and can be the task on
    // the CPU when a flush crosses the mark; the busy threads must still be most of them.
    let after = &near[first_busy..];
    let named_busy = after.iter().filter(|e| busy(e)).count();
    assert!(
        if emulated() {
            named_busy * 10 >= after.len() * 8
        } else {
            named_busy == after.len()
        },
        "once the busy threads run, they are the ones named ({named_busy} of {}): {near:?}",
        after.len()
    );
    // At most one per period (periods are aligned on the monotonic clock).
    let ts: Vec<u64> = near.iter().map(|e| e["ts_ns"].as_u64().unwrap()).collect();
    let span_periods = (ts[ts.len() - 1] - ts[0]) / (period_us * 1000) + 1;
    assert!(
        ts.len() as u64 <= span_periods + 1,
        "{} events over {span_periods} periods",
        ts.len()
    );
    assert!(
        !events.iter().any(|e| kind(e) == "runq_latency"),
        "--runq-target 0 disables latency reports"
    );
    let (nr, _) = throttling(wcg);
    assert!(nr > 0, "the kernel still throttles (watch only observes)");
}

/// `scaler watch --cpu-cgroup --runq-target` reports run-queue latency (taken at switch-in from
/// the kernel's own `sched_info.last_queued`) for the watched cgroup only, attributed to the
/// task that waited, at most once per period; an unwatched sibling competing for the same
/// CPUs is not reported.
#[test]
fn watch_reports_runq_latency_only_for_the_watched_cgroup() {
    let Some(_env) = env_race("cpu_watch_runq_latency", "run-queue waits of a few ms") else {
        return;
    };
    // Quotas far above the machine: nothing is throttled, the waits are the run queue's.
    let watched = cpu_cgroup("scaler-test-runq-watched", 64.0);
    let other = cpu_cgroup("scaler-test-runq-other", 64.0);
    let wcg = watched.cgroup(Controller::Cpu).unwrap();
    let ocg = other.cgroup(Controller::Cpu).unwrap();
    let wid = wcg.id().unwrap().0;
    let w = Watch::start(&[
        "--cpu-cgroup",
        wcg.path(),
        "--cpu-near",
        "0.8",
        "--runq-target",
        "500us",
    ]);
    // Three busy threads in each cgroup: six on this machine's CPUs, so every one waits.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = (cpus + 1).to_string();
    let args = [
        "workload",
        "cpu",
        "--busy-threads",
        &threads,
        "--burst",
        "1500ms",
        "--idle",
        "0s",
        "--cycles",
        "1",
    ];
    let t0 = Instant::now();
    let mut a = spawn_in_cgroup(wcg.dir(), &scaler_bin(), &args);
    let mut b = spawn_in_cgroup(ocg.dir(), &scaler_bin(), &args);
    let events = w.collect(Duration::from_secs(5), |_| {
        t0.elapsed() > Duration::from_millis(1700)
    });
    assert!(a
        .wait_timeout(Duration::from_secs(30))
        .expect("workload a")
        .success());
    assert!(b
        .wait_timeout(Duration::from_secs(30))
        .expect("workload b")
        .success());
    let runq: Vec<_> = events
        .iter()
        .filter(|e| kind(e) == "runq_latency")
        .collect();
    eprintln!(
        "{} runq_latency events, e.g. {:?}",
        runq.len(),
        runq.first()
    );
    assert!(
        runq.len() >= 3,
        "{threads} busy threads per cgroup on {cpus} CPUs wait over 500 us: {events:?}"
    );
    for e in &runq {
        assert_eq!(
            e["cgroup_id"].as_u64(),
            Some(wid),
            "only the watched cgroup is reported: {e}"
        );
        assert_eq!(
            e["pid"].as_u64(),
            Some(u64::from(a.pid())),
            "attributed to the watched workload's task that waited: {e}"
        );
        let lat = e["latency_us"].as_f64().unwrap();
        assert!(lat > 500.0 && lat < 5_000_000.0, "a plausible wait: {e}");
        assert_eq!(e["target_us"].as_f64(), Some(500.0), "{e}");
    }
    assert!(
        !events.iter().any(|e| kind(e) == "cpu_quota_near"),
        "a 64-core quota is never near: {events:?}"
    );
    let (_, period_us) = wcg.cpu_max().unwrap();
    let ts: Vec<u64> = runq.iter().map(|e| e["ts_ns"].as_u64().unwrap()).collect();
    let span_periods = (ts[ts.len() - 1] - ts[0]) / (period_us * 1000) + 1;
    assert!(
        ts.len() as u64 <= span_periods + 1,
        "at most one per period: {} events over {span_periods} periods",
        ts.len()
    );
}
