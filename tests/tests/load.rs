//! Load: the agent manages 1,000 cgroups while an event storm runs, and still rescues the
//! cgroups under real pressure quickly, with bounded memory, reporting what it dropped.
//!
//! ```sh
//! CARGO_TARGET_DIR=target SCALER_BIN=target/release/scaler \
//!     cargo test --release -p scaler-tests --test load -- --nocapture
//! ```
//! Knobs: `SCALER_LOAD_CGROUPS` (managed idle cgroups, default 1000), `SCALER_LOAD_SECS`
//! (storm duration, default 30), `SCALER_LOAD_STORM` (page-cache storm cgroups, default 6).
//!
//! Layout, all under a fresh cgroup of our own (removed at the end, also on failure):
//! - `idle-*`: N managed cgroups with nothing in them (the agent samples every one each
//!   second and keeps a decider entry, an actuator and a watch entry for each);
//! - `storm-*`: managed cgroups held at their maximum (16M) running page-cache workloads in a
//!   loop: continuous memcg reclaim, every round two events through the ring buffer and the
//!   decider (which can only report "at max");
//! - `hot-*`: three managed cgroups starting at 64M whose workload grows to 256M in 8M steps
//!   every 10 ms, again and again: each raise is a reaction-latency sample, and any OOM kill
//!   is a failure.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use scaler::cgroupfs::{CgroupGuard, Controller, Limit};
use scaler_tests::*;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `key=value` of a tracing log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split_whitespace()
        .next()
        .map(|v| v.trim_matches('"'))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A workload in `dir`; its one-line JSON report stays in the pipe (closing the pipe would
/// make the report's write fail).
fn spawn_workload(dir: &Path, args: &[&str]) -> Proc {
    spawn_in_cgroup(dir, &scaler_bin(), args)
}

#[test]
fn a_thousand_managed_cgroups_under_an_event_storm() {
    let Some(env) = env_native("load", "a 100k events/s storm over 1,000 cgroups") else { return };
    let n_idle = knob("SCALER_LOAD_CGROUPS", 1000) as usize;
    let secs = knob("SCALER_LOAD_SECS", 30);
    let n_storm = knob("SCALER_LOAD_STORM", 6) as usize;
    let n_hot = 3usize;

    let parent = memory_cgroup(&env, "scaler-load");
    let ppath = parent.path(Controller::Memory).unwrap().to_string();
    let mk = |prefix: &str, limit: u64| -> CgroupGuard {
        let g =
            CgroupGuard::create(&[&env.memory], &ppath, prefix).expect("creating a load cgroup");
        g.set_memory_limit(Limit::Bytes(limit))
            .expect("setting its limit");
        g
    };
    let t_setup = Instant::now();
    let idle: Vec<CgroupGuard> = (0..n_idle).map(|_| mk("idle", 16 << 20)).collect();
    let storm: Vec<CgroupGuard> = (0..n_storm).map(|_| mk("storm", 16 << 20)).collect();
    eprintln!(
        "created {} cgroups in {:.1}s",
        n_idle + n_storm,
        t_setup.elapsed().as_secs_f64()
    );

    let dir = tempdir();
    let config = format!(
        "[agent]\nmetrics = false\nobserve_all = true\nsample_interval = \"1s\"\n\
         status_socket = \"{d}/status.sock\"\nstate_file = \"{d}/state.json\"\n\n\
         [[policy]]\nname = \"hot\"\nmatch = [\"{p}/hot-*\"]\n[policy.memory]\nmin = \"16M\"\nmax = \"1G\"\nheadroom = \"16M\"\n\n\
         [[policy]]\nname = \"storm\"\nmatch = [\"{p}/storm-*\"]\n[policy.memory]\nmin = \"16M\"\nmax = \"16M\"\nheadroom = \"4M\"\n\n\
         [[policy]]\nname = \"idle\"\nmatch = [\"{p}/idle-*\"]\n[policy.memory]\nmin = \"16M\"\nmax = \"64M\"\nheadroom = \"4M\"\n",
        d = dir.display(),
        p = ppath
    );
    let cfile = dir.join("load.toml");
    std::fs::write(&cfile, config).unwrap();
    let mut child = Command::new(scaler_bin())
        .args(["agent", "--config"])
        .arg(&cfile)
        .env("SCALER_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning scaler agent");
    let stderr = child.stderr.take().unwrap();
    let mut agent = Proc { child };
    let pid = agent.pid();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<String>();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !line.contains("limit changed") && !line.contains("managing") {
                    eprintln!("  [agent] {line}");
                }
                log.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
    }
    let want = n_idle + n_storm;
    let mut managing = 0usize;
    let end = Instant::now() + Duration::from_secs(120);
    while managing < want {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) if l.contains("managing") && l.contains(&ppath) => managing += 1,
            Ok(_) => {}
            Err(_) => {
                assert!(
                    Instant::now() < end,
                    "the agent manages {managing} of {want} cgroups after 120 s"
                );
                assert!(
                    matches!(agent.child.try_wait(), Ok(None)),
                    "the agent exited"
                );
            }
        }
    }
    let t_managed = Instant::now();
    eprintln!(
        "agent manages {want} cgroups; VmRSS {} KiB",
        status_kib(pid, "VmRSS")
    );

    // RSS of the agent, every second, until the end.
    let done = Arc::new(AtomicBool::new(false));
    let rss_thread = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            while !done.load(Ordering::Relaxed) {
                v.push(status_kib(pid, "VmRSS"));
                std::thread::sleep(Duration::from_secs(1));
            }
            v
        })
    };

    // The storm: page-cache workloads re-started as they finish.
    let storm_end = Instant::now() + Duration::from_secs(secs);
    let storm_threads: Vec<_> = storm
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let d = g.cgroup(Controller::Memory).unwrap().dir().to_path_buf();
            let file: PathBuf = dir.join(format!("storm{i}"));
            std::thread::spawn(move || {
                let mut runs = 0u32;
                while Instant::now() < storm_end {
                    let mut p = spawn_workload(
                        &d,
                        &[
                            "workload",
                            "pagecache",
                            "--file",
                            file.to_str().unwrap(),
                            "--size",
                            "128M",
                        ],
                    );
                    let _ = p.wait_timeout(
                        storm_end.saturating_duration_since(Instant::now())
                            + Duration::from_secs(30),
                    );
                    runs += 1;
                }
                runs
            })
        })
        .collect();

    // Real pressure, round after round, in fresh hot cgroups (new workloads arriving on a
    // busy node): each is discovered and managed, then its workload must be rescued.
    let mut rounds = 0u32;
    let mut failures = Vec::new();
    let mut hot_paths: Vec<String> = Vec::new();
    while Instant::now() + Duration::from_secs(5) < storm_end {
        let hot: Vec<CgroupGuard> = (0..n_hot).map(|_| mk("hot", 64 << 20)).collect();
        let paths: Vec<String> = hot
            .iter()
            .map(|g| g.path(Controller::Memory).unwrap().to_string())
            .collect();
        let mut pending: Vec<&String> = paths.iter().collect();
        let until = Instant::now() + Duration::from_secs(20);
        while !pending.is_empty() && Instant::now() < until {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                if l.contains("managing") {
                    pending.retain(|p| !l.contains(p.as_str()));
                }
            }
        }
        assert!(
            pending.is_empty(),
            "new cgroups {pending:?} not managed within 20 s"
        );
        let mut ps: Vec<Proc> = hot
            .iter()
            .map(|g| {
                spawn_workload(
                    g.cgroup(Controller::Memory).unwrap().dir(),
                    &[
                        "workload",
                        "steps",
                        "--total",
                        "256M",
                        "--step",
                        "8M",
                        "--interval",
                        "10ms",
                    ],
                )
            })
            .collect();
        for (i, p) in ps.iter_mut().enumerate() {
            match p.wait_timeout(Duration::from_secs(60)) {
                Some(s) if s.success() => {}
                other => failures.push(format!("round {rounds} hot-{i}: {other:?}")),
            }
        }
        rounds += 1;
        drop(ps);
        drop(hot);
        hot_paths.extend(paths);
    }
    let storm_runs: u32 = storm_threads.into_iter().map(|t| t.join().unwrap()).sum();
    let storm_secs = t_managed.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let rss = rss_thread.join().unwrap();
    let alive = matches!(agent.child.try_wait(), Ok(None));
    let status = agent.interrupt(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let log = log.lock().unwrap().clone();

    let mut lat: Vec<f64> = log
        .iter()
        .filter(|l| l.contains("limit changed"))
        .filter(|l| field(l, "cgroup").is_some_and(|c| hot_paths.iter().any(|h| h == c)))
        .filter(|l| {
            field(l, "new")
                .zip(field(l, "old"))
                .is_some_and(|(n, o)| n.parse::<u64>().unwrap_or(0) > o.parse::<u64>().unwrap_or(0))
        })
        .filter_map(|l| field(l, "latency_us")?.parse().ok())
        .collect();
    lat.sort_by(f64::total_cmp);
    let last = log
        .iter()
        .rev()
        .find(|l| l.contains("exiting") && l.contains("submitted="))
        .cloned()
        .unwrap_or_default();
    let submitted: u64 = field(&last, "submitted")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let dropped: u64 = field(&last, "dropped")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let failed_writes = log
        .iter()
        .filter(|l| l.contains("limit write failed"))
        .count();
    let third = rss.len() / 3;
    let rss_early = rss.iter().take(third.max(1)).copied().max().unwrap_or(0);
    let rss_late = rss
        .iter()
        .skip(rss.len() - third.max(1))
        .copied()
        .max()
        .unwrap_or(0);
    let rss_max = rss.iter().copied().max().unwrap_or(0);

    eprintln!("==== load figures");
    eprintln!("managed cgroups: {want} ({n_idle} idle, {n_storm} storm) + {n_hot} fresh hot ones per round");
    eprintln!(
        "storm: {storm_secs:.1}s, {storm_runs} page-cache runs; hot rounds: {rounds} x {n_hot}"
    );
    eprintln!(
        "kernel events submitted: {submitted} ({:.0}/s over the agent's managed period), ring-buffer drops: {dropped}",
        submitted as f64 / storm_secs
    );
    eprintln!(
        "reaction latency of hot raises (us): n={} p50={:.1} p99={:.1} max={:.1}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    eprintln!("agent VmRSS (KiB): early max {rss_early}, late max {rss_late}, max {rss_max}; samples {rss:?}");
    eprintln!("failed limit writes: {failed_writes}; hot failures: {failures:?}");

    assert!(alive, "the agent survived the storm");
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent exits 0 on SIGINT: {status:?}"
    );
    assert!(!log.iter().any(|l| l.contains("panicked")), "no panic");
    assert!(
        failures.is_empty(),
        "every hot workload was rescued: {failures:?}"
    );
    assert!(rounds >= 1 && !lat.is_empty(), "hot raises were measured");
    assert!(
        percentile(&lat, 0.99) < 10_000.0,
        "p99 reaction latency under 10 ms while managing {want} cgroups in a storm"
    );
    assert!(
        submitted > 0 && !last.is_empty(),
        "the agent reported its kernel counters at exit: {last}"
    );
    assert!(
        rss_late <= rss_early + rss_early / 4 + 8192,
        "agent memory bounded: early {rss_early} KiB, late {rss_late} KiB"
    );

    drop(storm);
    let t_rm = Instant::now();
    drop(idle);
    eprintln!(
        "removed {want} cgroups in {:.1}s",
        t_rm.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
