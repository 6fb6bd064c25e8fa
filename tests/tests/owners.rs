//! The owner of every limit (issue 16, items 2-4): a cgroup found before its owner wrote its
//! limit is still protected (the limit files are re-read when an event disagrees with what the
//! agent believes), v1 `memory.memsw.limit_in_bytes` follows the limit at its owner's gap
//! (also when it was unlimited when the agent opened it), and an owner's write while the
//! agent manages the cgroup (`podman update --memory`, a kubelet resize, a person) is adopted
//! as the new original, never overwritten, logged and counted.
//!
//! Each test starts its own agent (ended by pid) with a private config selecting only cgroups
//! the test created under its own cgroup, and the state file in a private temp dir. The
//! "owner" writes the limit files directly, in the order a runtime does.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use scaler::cgroupfs::{Cgroup, CgroupGuard, CgroupVersion, Controller, Limit};
use scaler_tests::*;

const M: u64 = 1 << 20;

/// A policy selecting `glob`, with a 16 MiB early warning and room up to 1 GiB.
fn body(glob: &str) -> String {
    format!(
        "[node]\nmemory_reserve = \"128M\"\n\n[[policy]]\nname = \"owners\"\nmatch = [{glob:?}]\n\n\
         [policy.memory]\nmin = \"16M\"\nmax = \"1G\"\nheadroom = \"16M\"\nsafety_margin = \"4M\"\n"
    )
}

fn agent(glob: &str) -> AgentConfig {
    AgentConfig::new(body(glob))
        .log_filter(AGENT_DEBUG_LOG)
        .metrics(true)
        .agent_key("restore_on_exit", "true")
}

/// The memsw file, when the kernel accounts swap (v1 only).
fn memsw_file(cg: &Cgroup) -> Option<std::path::PathBuf> {
    (cg.version() == CgroupVersion::V1)
        .then(|| cg.file("memory.memsw.limit_in_bytes"))
        .filter(|f| f.exists())
}

fn limit_file(cg: &Cgroup) -> std::path::PathBuf {
    cg.file(match cg.version() {
        CgroupVersion::V1 => "memory.limit_in_bytes",
        CgroupVersion::V2 => "memory.max",
    })
}

/// What the owner (a container runtime) writes: the limit, and on v1 memory+swap at twice
/// it (podman's `--memory` default), in whichever order keeps memsw >= limit.
fn owner_writes(cg: &Cgroup, limit: u64) {
    let w = |f: &Path, v: u64| std::fs::write(f, v.to_string());
    match memsw_file(cg) {
        Some(mf) => {
            if w(&mf, 2 * limit).is_err() || w(&limit_file(cg), limit).is_err() {
                w(&limit_file(cg), limit).expect("the owner's limit");
                w(&mf, 2 * limit).expect("the owner's memsw");
            }
        }
        None => w(&limit_file(cg), limit).expect("the owner's limit"),
    }
}

fn read_limit(f: &Path) -> Limit {
    Limit::parse(&std::fs::read_to_string(f).unwrap()).unwrap()
}

/// A burst in a cgroup: the process, and the cushion's directory under emulation (removed on
/// drop, after the process is killed and reaped).
struct Burst {
    p: Proc,
    dir: Option<std::path::PathBuf>,
}

impl Drop for Burst {
    fn drop(&mut self) {
        let _ = self.p.interrupt(Duration::from_secs(5));
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Touches `total`, then holds it for `hold`. Natively in 8 MiB steps every 10 ms (800 MiB/s:
/// the OOM race of FACTS.md); under emulation, like [`RaceWorkload`], a 32 MiB page-cache
/// cushion first, then 2 MiB steps paced from the engine's measured reaction there.
fn burst(cg: &Cgroup, total: &str, hold: &str) -> Burst {
    let bin = scaler_bin();
    if emulated() {
        let dir = tempdir();
        let interval = emulated_calibration().interval;
        let script = format!(
            "dd if=/dev/zero of='{}' bs=1M count={} conv=fsync status=none && exec \"$0\" \
             workload steps --total {total} --step {}M --interval {}ms --hold {hold}",
            dir.join("cushion").display(),
            EMULATED_CUSHION >> 20,
            EMULATED_STEP >> 20,
            interval.as_millis()
        );
        let p = spawn_in_cgroup(
            cg.dir(),
            Path::new("sh"),
            &["-c", &script, &bin.display().to_string()],
        );
        return Burst { p, dir: Some(dir) };
    }
    let p = spawn_in_cgroup(
        cg.dir(),
        &bin,
        &[
            "workload",
            "steps",
            "--total",
            total,
            "--step",
            "8M",
            "--interval",
            "10ms",
            "--hold",
            hold,
        ],
    );
    Burst { p, dir: None }
}

#[test]
fn a_cgroup_found_before_its_owner_wrote_its_limit_is_rescued_30_of_30() {
    let Some(env) = env_race("owners_start_race", "winning the OOM race at start") else {
        return;
    };
    let own = env.memory.own_cgroup().unwrap();
    let prefix = format!("scaler-test-owners-r{}", std::process::id());
    let glob = format!("{}/{prefix}-*", glob_literal(own.trim_end_matches('/')));
    let mut a = agent(&glob).start();
    let (mut rescued, mut before_owner) = (0, 0);
    let mut failures = Vec::new();
    // Ten of each natively; one under emulation (seconds per burst there; CI runs three VMs).
    let per_delay = if emulated() { 1 } else { 10 };
    for delay_ms in [0u64, 20, 200] {
        for _ in 0..per_delay {
            // The runtime: mkdir, then the limit a few ms later, then the process.
            let g = memory_cgroup(&env, &prefix);
            let cg = g.cgroup(Controller::Memory).unwrap().clone();
            let path = memory_path(&g);
            std::thread::sleep(Duration::from_millis(delay_ms));
            if delay_ms == 200 {
                // Natively the agent has found it long before; under emulation (discovery
                // takes longer there) the owner waits for it, so that this third of the runs
                // always has the agent first.
                a.wait_managed(&path, true, Duration::from_secs(30));
            }
            owner_writes(&cg, 64 * M);
            a.wait_managed(&path, true, Duration::from_secs(30));
            let managing = a.wait_event(
                &LogQuery::message(msg::MANAGING).field("cgroup", &path),
                Duration::from_secs(2),
            );
            if managing.text("limit").as_deref() == Some("max") {
                before_owner += 1;
            }
            let mut b = burst(&cg, "200M", "0s");
            let status = b.p.wait_timeout(Duration::from_secs(120)).expect("ended");
            let kills = cg.oom_kills().unwrap().unwrap_or(0);
            if status.success() && kills == 0 {
                rescued += 1;
            } else {
                failures.push(format!(
                    "{path} ({delay_ms} ms): {status}, {kills} OOM kills"
                ));
            }
            if let Some(mf) = memsw_file(&cg) {
                // memsw followed the owner's 64 MiB gap above every raise.
                let (l, m) = (read_limit(&limit_file(&cg)), read_limit(&mf));
                if let (Limit::Bytes(l), Limit::Bytes(m)) = (l, m) {
                    if m != l + 64 * M {
                        failures.push(format!("{path}: memsw {m}, not the owner's gap over {l}"));
                    }
                }
            }
            drop(g);
        }
    }
    // The first raise of each, from the owner's 64 MiB: kernel event to limit in place (it
    // includes the re-read of the limit files before the write).
    let mut first: Vec<f64> = a
        .audit()
        .iter()
        .filter(|r| r.cgroup.contains(&prefix) && r.is_raise() && r.old == 64 * M)
        .filter_map(|r| r.latency_us)
        .collect();
    first.sort_by(f64::total_cmp);
    let at = |q: f64| first.get(((first.len() as f64 - 1.0) * q).round() as usize);
    note(&format!(
        "start race: {rescued} of {n} rescued; {before_owner} of {n} found before the owner \
         wrote the limit; first raises from 64 MiB: {} (latency p50 {:?} us, max {:?} us)",
        first.len(),
        at(0.5),
        first.last(),
        n = 3 * per_delay,
    ));
    assert!(failures.is_empty(), "not rescued: {failures:#?}");
    assert!(
        before_owner >= per_delay,
        "the 200 ms cases are found before the owner's write ({before_owner})"
    );
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
}

/// Waits until the state file's record of `path` has `original`.
fn wait_original(a: &TestAgent, path: &str, original: u64) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(a.state_file()).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if v["cgroups"][path]["original"] == original {
                return;
            }
        }
        assert!(
            Instant::now() < end,
            "state file: original {original}: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn external_changes(a: &TestAgent) -> f64 {
    a.scrape()
        .value(metric::EXTERNAL_CHANGES, &[("resource", "memory")])
        .unwrap_or(0.0)
}

/// The owner's value in the update test: above the burst's 160 MiB (and an emulated burst's
/// 32 MiB page-cache cushion) by more than the 16 MiB early warning.
const OWNERS: u64 = 240 * M;

#[test]
fn an_owners_update_mid_run_is_adopted_never_overwritten_and_restored_on_sigterm() {
    let Some(env) = env_race("owners_update", "raising a limit under load") else {
        return;
    };
    let g: CgroupGuard = memory_cgroup(&env, "scaler-test-owners-u");
    let cg = g.cgroup(Controller::Memory).unwrap().clone();
    let path = memory_path(&g);
    owner_writes(&cg, 64 * M);
    let mut a = agent(&glob_literal(&path)).start();
    a.wait_managed(&path, true, Duration::from_secs(5));
    assert_eq!(external_changes(&a), 0.0);

    // A burst to 160 MiB, rescued; the memory is held.
    let mut hold = burst(&cg, "160M", "60s");
    let raise = a.wait_audit("a raise from 64M", Duration::from_secs(30), |r| {
        r.cgroup == path && r.is_raise()
    });
    assert_eq!(raise.old, 64 * M, "{raise}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        hold.p.wait_timeout(Duration::ZERO).is_none(),
        "the burst survived"
    );

    // Once the burst holds its 160 MiB (under emulation it grows for a while yet: a raise
    // from the owner's value then would be a fair one, not an overwrite) ...
    let end = Instant::now() + Duration::from_secs(60);
    while cg.memory_usage().unwrap() < 160 * M {
        assert!(Instant::now() < end, "the burst reached 160 MiB");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    // ... the owner lowers the limit to 240M (`podman update --memory 240m`: memsw 480M).
    owner_writes(&cg, OWNERS);
    a.wait_event(
        &LogQuery::message(msg::ADOPTED)
            .field("cgroup", &path)
            .field("resource", "memory")
            .field("new", OWNERS),
        Duration::from_secs(5),
    );
    wait_original(&a, &path, OWNERS);
    let end = Instant::now() + Duration::from_secs(5);
    while external_changes(&a) < 1.0 {
        assert!(
            Instant::now() < end,
            "scaler_external_changes_total counted it"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Not overwritten: samples and the cooldown later, the owner's value stands.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read_limit(&limit_file(&cg)), Limit::Bytes(OWNERS));

    // More growth from the owner's value: raised from 240M, memsw at the owner's 240M gap.
    let mut more = burst(&cg, "80M", "60s");
    let raise = a.wait_audit(
        "a raise from the owner's 240M",
        Duration::from_secs(30),
        |r| r.cgroup == path && r.is_raise() && r.old == OWNERS,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        more.p.wait_timeout(Duration::ZERO).is_none(),
        "the second burst survived"
    );
    assert!(
        hold.p.wait_timeout(Duration::ZERO).is_none(),
        "the first burst survived"
    );
    let Limit::Bytes(raised) = read_limit(&limit_file(&cg)) else {
        panic!("a raised limit, not max");
    };
    assert!(raised >= raise.new, "{raised} after {raise}");
    if let Some(mf) = memsw_file(&cg) {
        assert_eq!(
            read_limit(&mf),
            Limit::Bytes(raised + OWNERS),
            "memsw follows the owner's new gap, not the one seen at open"
        );
    }
    assert_eq!(cg.oom_kills().unwrap().unwrap_or(0), 0, "no OOM kill");
    drop(more);
    drop(hold);
    std::thread::sleep(Duration::from_millis(300));

    // SIGTERM: the owner's value comes back, with its memsw.
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(read_limit(&limit_file(&cg)), Limit::Bytes(OWNERS));
    if let Some(mf) = memsw_file(&cg) {
        assert_eq!(read_limit(&mf), Limit::Bytes(2 * OWNERS));
    }
}

#[test]
fn memsw_unlimited_when_opened_follows_the_limit_once_its_owner_sets_it() {
    let Some(env) = env_race("owners_memsw", "raising a limit under load") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-owners-m");
    let cg = g.cgroup(Controller::Memory).unwrap().clone();
    let Some(mf) = memsw_file(&cg) else {
        note(
            "SKIP owners_memsw: no memory.memsw.limit_in_bytes (cgroup v2, or swap accounting off)",
        );
        return;
    };
    let path = memory_path(&g);
    std::fs::write(limit_file(&cg), (64 * M).to_string()).unwrap();
    let mut a = agent(&glob_literal(&path)).start();
    a.wait_managed(&path, true, Duration::from_secs(5));
    // The owner limits memory+swap after the agent opened the files (as a runtime may).
    std::fs::write(&mf, (128 * M).to_string()).unwrap();
    let mut b = burst(&cg, "200M", "0s");
    let status = b.p.wait_timeout(Duration::from_secs(120)).expect("ended");
    assert!(status.success(), "rescued: {status}");
    assert_eq!(cg.oom_kills().unwrap().unwrap_or(0), 0, "no OOM kill");
    let Limit::Bytes(raised) = read_limit(&limit_file(&cg)) else {
        panic!("a raised limit, not max");
    };
    assert!(raised > 200 * M, "{raised}");
    assert_eq!(read_limit(&mf), Limit::Bytes(raised + 64 * M));
    assert!(
        !a.logged(&LogQuery::message(msg::LIMIT_WRITE_FAILED).field("cgroup", &path)),
        "no write refused (EINVAL above memsw)"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(read_limit(&limit_file(&cg)), Limit::Bytes(64 * M));
    assert_eq!(read_limit(&mf), Limit::Bytes(128 * M));
}
