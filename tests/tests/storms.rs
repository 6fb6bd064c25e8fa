//! Reclaim storms from others (issue 15, item 8): cgroups the agent does not manage reclaiming
//! without end must never crowd a managed cgroup's events out of the BPF ring buffer.
//!
//! With `agent.observe_all = true` (the default) the kernel programs report every cgroup's
//! events, but only those of cgroups covered by the watched map (the managed ones) are
//! *watched*; the others are observe-only: never a wakeup, and shed in the kernel (counted in
//! `scaler_observe_shed_total`) once the ring buffer is an eighth full or the CPU's budget is
//! spent. The test runs a page-cache reclaim storm in four unmanaged 16 MiB cgroups beside a
//! managed 64 MiB one that the race workload outgrows, and asserts the rescue, its raise in the
//! audit trail, observe-only events shed while no event at all was lost to a full ring buffer
//! (so none of the managed cgroup's), and that none of the storm's cgroups was managed. The
//! reaction latency (p50/p99 from `scaler status`) and the shed count are printed, not asserted.
//! With `SCALER_COMPARE_BIN` set to another agent binary (e.g. an older build), the same storm
//! is run under it too (the workloads still from `SCALER_BIN`) and its figures are printed.
//!
//! It creates its cgroups under the test's own cgroup and removes them; the agent and the
//! workloads are ended by pid.

use std::{
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use scaler::cgroupfs::{CgroupGuard, Controller, Limit};
use scaler_tests::*;

const M: u64 = 1 << 20;
/// Cgroups of the storm, their limit and what each writer writes.
const STORM_CGROUPS: usize = 4;
const STORM_LIMIT: u64 = 16 * M;
const STORM_FILE: &str = "384M";
/// Limit hits of the storm's cgroups after which the managed race starts.
const STORM_HITS: u64 = 20_000;

fn path_of(g: &CgroupGuard) -> String {
    g.path(Controller::Memory).unwrap().to_string()
}

fn dir_of(g: &CgroupGuard) -> PathBuf {
    g.cgroup(Controller::Memory).unwrap().dir().to_path_buf()
}

fn child(env: &TestEnv, parent: &CgroupGuard, prefix: &str) -> CgroupGuard {
    CgroupGuard::create(&[&env.memory], &path_of(parent), prefix).expect("a child cgroup")
}

/// Limit hits (v1 `memory.failcnt`, v2 `memory.events` `max`) summed over `cgroups`.
fn limit_hits(cgroups: &[CgroupGuard]) -> u64 {
    cgroups
        .iter()
        .map(|g| {
            g.cgroup(Controller::Memory)
                .unwrap()
                .memory_limit_hits()
                .ok()
                .flatten()
                .unwrap_or(0)
        })
        .sum()
}

/// What one run of the storm scenario saw.
struct StormRun {
    /// The managed race workload's exit, and the OOM kills in its cgroup.
    status: ExitStatus,
    oom: u64,
    /// The managed cgroup's limit after the race.
    limit: Option<Limit>,
    /// Limit hits of the storm's cgroups during the race, and over the whole storm.
    hits_during: u64,
    hits_all: u64,
    race_secs: f64,
    /// Events the agent read during the race (`scaler_events_total`).
    events_during: f64,
    /// Storm writers still running when the race ended, and those that completed.
    storm_alive: usize,
    storm_ok: usize,
    /// `scaler_observe_shed_total` (absent from an agent without it) and
    /// `scaler_ringbuf_dropped_total`, after the storm.
    shed: Option<f64>,
    dropped: Option<f64>,
    scrape: Scrape,
    /// `reaction_latency_us` of `scaler status`.
    latency: serde_json::Value,
    /// The managed cgroup's raises in the audit trail.
    raises: Vec<AuditRecord>,
    /// Of the storm's cgroups: those `scaler status` lists as managed, those with an audit
    /// record or a `managing` line, and those whose limit is no longer the one set.
    storm_managed: Vec<String>,
    storm_limits_changed: usize,
}

impl StormRun {
    fn report(&self, label: &str) {
        let l = &self.latency;
        note(&format!(
            "reclaim storm [{label}]: {STORM_CGROUPS} unmanaged cgroups at {} MiB writing \
             {STORM_FILE} each ({} limit hits during the race's {:.2} s, {} writers still \
             running at its end, {} events read by the agent meanwhile; {} limit hits in all, \
             {} writers completed); managed race: {} (signal {:?}), oom kills {}, limit now \
             {:?}, {} raises; reaction latency over {} actions: p50 {} us, p99 {} us, max {} us; \
             observe-only events shed in the kernel: {:?}; ring-buffer drops: {:?}; storm \
             cgroups managed: {:?}",
            STORM_LIMIT / M,
            self.hits_during,
            self.race_secs,
            self.storm_alive,
            self.events_during,
            self.hits_all,
            self.storm_ok,
            self.status,
            self.status.signal(),
            self.oom,
            self.limit,
            self.raises.len(),
            l["count"],
            l["p50"],
            l["p99"],
            l["max"],
            self.shed,
            self.dropped,
            self.storm_managed,
        ));
    }
}

/// The managed 64 MiB cgroup's race in the middle of the reclaim storm of [`STORM_CGROUPS`]
/// unmanaged cgroups, under the agent binary `bin` (the one under test when `None`; the
/// workloads are always `SCALER_BIN`'s).
fn storm_run(env: &TestEnv, bin: Option<&Path>) -> StormRun {
    let parent = memory_cgroup(env, "scaler-storms");
    let work = child(env, &parent, "work");
    work.set_memory_limit(Limit::Bytes(64 * M)).unwrap();
    let wpath = path_of(&work);
    let storm: Vec<CgroupGuard> = (0..STORM_CGROUPS)
        .map(|_| child(env, &parent, "storm"))
        .collect();
    for g in &storm {
        g.set_memory_limit(Limit::Bytes(STORM_LIMIT)).unwrap();
    }
    let body = format!(
        "[node]\nmemory_reserve = \"128M\"\n\n[[policy]]\nname = \"work\"\nmatch = [{:?}]\n\n\
         [policy.memory]\nmin = \"16M\"\nmax = \"512M\"\n",
        glob_literal(&wpath)
    );
    let mut conf = AgentConfig::new(body)
        .observe_all(true)
        .log_filter(AGENT_DEBUG_LOG);
    if let Some(b) = bin {
        conf = conf.binary(b);
    }
    let mut agent = conf.start();
    agent.wait_managed(&wpath, true, Duration::from_secs(5));

    // The storm: page-cache writers in tight limits reclaim continuously (synced as they go,
    // so that the storm is reclaim of clean cache, not an OOM kill of the writer).
    let tmp = tempdir();
    let mut writers: Vec<Proc> = storm
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let file = tmp.join(format!("cache{i}"));
            spawn_in_cgroup(
                &dir_of(g),
                &scaler_bin(),
                &[
                    "workload",
                    "pagecache",
                    "--file",
                    file.to_str().unwrap(),
                    "--size",
                    STORM_FILE,
                    "--sync-every",
                    "4M",
                ],
            )
        })
        .collect();
    // Under way: the storm's cgroups hit their limits over and over. The writers' syncs pace
    // the first half (about a thousand limit hits a second here); reading the files back is
    // the storm (over a hundred thousand limit hits a second, some ten thousand reclaim rounds):
    // the race starts in it.
    let hits_start = limit_hits(&storm);
    let end = Instant::now() + Duration::from_secs(60);
    while limit_hits(&storm) < hits_start + STORM_HITS && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let hits_before = limit_hits(&storm);
    assert!(
        hits_before >= hits_start + STORM_HITS,
        "the storm is under way: {} limit hits in the storm's cgroups",
        hits_before - hits_start
    );
    let race_start = Instant::now();
    let events_before = agent.scrape().sum(metric::EVENTS, &[]).unwrap_or(0.0);

    // The managed cgroup's race, in the middle of the storm.
    let cg = work.cgroup(Controller::Memory).unwrap();
    // Kept until the workload ends: under emulation it owns the cushion's directory.
    let workload = RaceWorkload::steps(1);
    let mut p = workload.spawn_in(cg.dir());
    let status = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    let race_secs = race_start.elapsed().as_secs_f64();
    let oom = cg.oom_kills().unwrap().unwrap_or(0);
    let hits_during = limit_hits(&storm) - hits_before;
    let storm_alive = writers
        .iter_mut()
        .map(|w| matches!(w.child.try_wait(), Ok(None)))
        .filter(|alive| *alive)
        .count();
    let events_during = agent.scrape().sum(metric::EVENTS, &[]).unwrap_or(0.0) - events_before;

    // The rest of the storm, then the counters over all of it.
    let storm_ok = writers
        .iter_mut()
        .map(|w| w.wait_timeout(Duration::from_secs(120)))
        .filter(|s| s.is_some_and(|s| s.success()))
        .count();
    drop(writers);
    let hits_all = limit_hits(&storm) - hits_start;
    let scrape = agent.scrape();
    let s = agent.status();
    let raises: Vec<AuditRecord> = if status.success() {
        agent.wait_audit(
            "a raise of the managed cgroup",
            Duration::from_secs(5),
            |r| r.cgroup == wpath && r.resource == "memory" && r.is_raise(),
        );
        agent
            .audit_of(&wpath)
            .into_iter()
            .filter(|r| r.resource == "memory" && r.is_raise())
            .collect()
    } else {
        Vec::new()
    };
    let storm_managed = storm
        .iter()
        .map(path_of)
        .filter(|sp| {
            s.managed(sp).is_some()
                || !agent.audit_of(sp).is_empty()
                || agent.count(&LogQuery::message(msg::MANAGING).field("cgroup", sp)) > 0
        })
        .collect();
    let storm_limits_changed = storm
        .iter()
        .filter(|g| {
            g.cgroup(Controller::Memory).unwrap().memory_limit().ok()
                != Some(Limit::Bytes(STORM_LIMIT))
        })
        .count();
    let run = StormRun {
        status,
        oom,
        limit: cg.memory_limit().ok(),
        hits_during,
        hits_all,
        race_secs,
        events_during,
        storm_alive,
        storm_ok,
        shed: scrape.value(metric::OBSERVE_SHED, &[]),
        dropped: scrape.value(metric::RINGBUF_DROPPED, &[]),
        scrape,
        latency: s["reaction_latency_us"].clone(),
        raises,
        storm_managed,
        storm_limits_changed,
    };
    assert_eq!(agent.stop(Signal::SIGTERM).code(), Some(0));
    drop(storm);
    let _ = std::fs::remove_dir_all(&tmp);
    run
}

#[test]
fn a_reclaim_storm_in_unmanaged_cgroups_is_shed_in_the_kernel_and_the_managed_rescue_loses_no_event(
) {
    // A storm of tens of thousands of reclaim rounds a second is a native rate: under software
    // emulation the writers crawl and produce no storm (the v2 paths of the programs are
    // loaded and run by every other test in the VMs).
    let Some(env) = env_native(
        "storms_reclaim",
        "a page-cache reclaim storm of tens of thousands of rounds a second",
    ) else {
        return;
    };
    let r = storm_run(&env, None);
    r.report("agent under test");
    if let Some(other) = std::env::var_os("SCALER_COMPARE_BIN") {
        let other = Path::new(&other);
        storm_run(&env, Some(other)).report(&other.display().to_string());
    }

    assert!(
        r.status.success() && r.oom == 0,
        "the managed workload was rescued during the storm: {}, {} OOM kills",
        r.status,
        r.oom
    );
    assert!(
        r.hits_during > 0,
        "the storm was still reclaiming during the race"
    );
    assert!(
        r.raises.iter().any(|a| a.new > 64 * M),
        "the managed cgroup's raise is in the audit trail: {:?}",
        r.raises
    );
    // Observe-only events were shed in the kernel, and not one event was lost to a full ring
    // buffer: the managed cgroup's all reached the agent.
    assert!(
        r.shed.is_some_and(|n| n > 0.0),
        "the storm's observe-only events were shed in the kernel ({} = {:?}):\n{}",
        metric::OBSERVE_SHED,
        r.shed,
        r.scrape.text
    );
    assert_eq!(
        r.dropped,
        Some(0.0),
        "no event was dropped for want of room in the ring buffer, so none of the managed \
         cgroup's:\n{}",
        r.scrape.text
    );
    // The storm's cgroups were never managed, never written.
    assert!(
        r.storm_managed.is_empty(),
        "no cgroup of the storm was managed: {:?}",
        r.storm_managed
    );
    assert_eq!(
        r.storm_limits_changed, 0,
        "the storm's limits are untouched"
    );
}
