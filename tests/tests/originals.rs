//! Originals are sacred (issue 15, items 2 and 7): the limit a managed cgroup had before the
//! agent changed it comes back exactly, whatever happens in between — a max that is not
//! page-aligned, an owner's write between two samples, a damaged or planted state file, a
//! cgroup that stops matching its policy, a max lowered below the limit.
//!
//! Each test starts its own agent (ended by pid) with a private config selecting only the
//! cgroup the test created under its own cgroup, and the state file in a private temp dir.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use scaler::cgroupfs::{CgroupGuard, Controller, Limit};
use scaler_tests::*;

const M: u64 = 1 << 20;

/// A policy selecting `path` with the given `[policy.memory]` keys (a 16 MiB early warning, so
/// a gentle workload is raised before reclaim).
fn body(path: &str, memory: &str) -> String {
    format!(
        "[node]\nmemory_reserve = \"128M\"\n\n[[policy]]\nname = \"originals\"\nmatch = [{:?}]\n\n\
         [policy.memory]\nmin = \"16M\"\nheadroom = \"16M\"\nsafety_margin = \"4M\"\n{memory}\n",
        glob_literal(path)
    )
}

fn agent(path: &str, memory: &str) -> AgentConfig {
    AgentConfig::new(body(path, memory))
        .log_filter(AGENT_DEBUG_LOG)
        .agent_key("restore_on_exit", "true")
}

/// Touches `total` bytes in 8 MiB steps every 50 ms (160 MiB/s: raised by the early warning
/// long before reclaim), then exits; asserts it was not OOM-killed.
fn grow(g: &CgroupGuard, total: &str) {
    let cg = g.cgroup(Controller::Memory).unwrap();
    let bin = scaler_bin();
    // Natively the bare 8 MiB steps race the OOM killer; under emulation (where the engine's
    // wakeup takes milliseconds) a page-cache cushion first and smaller steps paced from the
    // measured reaction latency, as RaceWorkload does.
    let cushion = tempdir();
    let mut p = if emulated() {
        let interval = emulated_calibration().interval;
        let script = format!(
            "dd if=/dev/zero of='{}' bs=1M count=32 conv=fsync status=none && exec \"$0\" \
             workload steps --total {total} --step 2M --interval {}ms",
            cushion.join("cushion").display(),
            interval.as_millis()
        );
        spawn_in_cgroup(
            cg.dir(),
            Path::new("sh"),
            &["-c", &script, &bin.display().to_string()],
        )
    } else {
        spawn_in_cgroup(
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
                "50ms",
            ],
        )
    };
    let status = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    let _ = std::fs::remove_dir_all(&cushion);
    assert!(status.success(), "the workload survived: {status}");
    assert_eq!(cg.oom_kills().unwrap().unwrap_or(0), 0, "no OOM kill");
}

/// The state file's record of `path`, once `pred` holds for it.
fn wait_state(
    a: &TestAgent,
    path: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(a.state_file()).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if pred(&v["cgroups"][path]) {
                return v["cgroups"][path].clone();
            }
        }
        assert!(Instant::now() < end, "state file: {what}: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a written raise of `path`; returns its new limit.
fn wait_raise(a: &TestAgent, path: &str) -> u64 {
    a.wait_audit("a raise", Duration::from_secs(10), |r| {
        r.cgroup == path && r.is_raise()
    })
    .new
}

#[test]
fn a_max_that_is_not_page_aligned_never_becomes_the_original_and_sigterm_restores_64m() {
    let Some(env) = env_race("originals_page", "raising a limit under load") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-orig-page");
    g.set_memory_limit(Limit::Bytes(64 * M)).unwrap();
    let path = memory_path(&g);
    let mut a = agent(&path, "max = \"100000001\"").start();
    a.wait_managed(&path, true, Duration::from_secs(5));
    grow(&g, "80M");
    let raised = wait_raise(&a, &path);
    // Capped at the max rounded down to whole pages: what the kernel keeps.
    assert_eq!(raised, 100_000_001 / 4096 * 4096);
    assert_eq!(limit_of(&g), Limit::Bytes(raised));
    // Several samples later, the agent's own write is still not taken for someone else's.
    std::thread::sleep(Duration::from_secs(1));
    let rec = wait_state(&a, &path, "the raise recorded", |r| r["current"] == raised);
    assert_eq!(rec["original"], 64 * M, "{rec}");
    assert!(
        !a.logged(&LogQuery::message(msg::ADOPTED).field("cgroup", &path)),
        "the agent's own write adopted as the original"
    );
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(limit_of(&g), Limit::Bytes(64 * M), "exactly the original");
}

#[test]
fn an_owners_write_between_samples_is_adopted_at_once_and_not_overridden_by_a_raise() {
    let Some(env) = env_race("originals_owner", "raising a limit under load") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-orig-owner");
    g.set_memory_limit(Limit::Bytes(64 * M)).unwrap();
    let path = memory_path(&g);
    // Samples 3 s apart: the raise below comes between two of them.
    let mut a = agent(&path, "max = \"512M\"").sample_interval("3s").start();
    a.wait_managed(&path, true, Duration::from_secs(5));
    // The owner (an operator, a runtime's in-place resize) sets 96M.
    g.set_memory_limit(Limit::Bytes(96 * M)).unwrap();
    let status = a.wait_status("the owner's 96M seen", Duration::from_secs(10), |s| {
        s.managed(&path).is_some_and(|m| m["limit"] == 96 * M)
    });
    // Seen by one sample: adopted in the state file by that same sample.
    assert_eq!(status.managed(&path).unwrap()["original_limit"], 96 * M);
    let rec = wait_state(&a, &path, "the owner's original", |r| {
        r["original"] == 96 * M
    });
    assert_eq!(rec["original"], 96 * M, "{rec}");
    // A raise right away, before the next sample.
    grow(&g, "112M");
    let raise = a.wait_audit(
        "a raise from the owner's 96M",
        Duration::from_secs(10),
        |r| r.cgroup == path && r.is_raise(),
    );
    assert_eq!(raise.old, 96 * M, "{raise}");
    // The next sample sees the raise as the agent's; the owner's value stays the original.
    std::thread::sleep(Duration::from_secs(4));
    // (The limit the raises left: under emulation the cushion may take more than one.)
    let Limit::Bytes(raised) = limit_of(&g) else {
        panic!("a raised limit, not max");
    };
    assert!(raised >= raise.new, "{raised} after {raise}");
    let rec = wait_state(&a, &path, "the raise recorded", |r| r["current"] == raised);
    assert_eq!(rec["original"], 96 * M, "{rec}");
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(limit_of(&g), Limit::Bytes(96 * M), "the owner's value back");
}

/// Raises `g` under `a` and waits until the state file has the raise; returns the raised
/// limit.
fn raise_and_record(a: &TestAgent, g: &CgroupGuard, path: &str) -> u64 {
    grow(g, "96M");
    wait_raise(a, path);
    // The limit the raises left (under emulation the cushion may take more than one).
    let Limit::Bytes(raised) = limit_of(g) else {
        panic!("a raised limit, not max");
    };
    wait_state(a, path, "the raise recorded", |r| r["current"] == raised);
    raised
}

#[test]
fn a_damaged_state_file_after_raises_never_turns_the_raised_limit_into_the_original() {
    let Some(env) = env_race("originals_damaged", "raising a limit under load") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-orig-damaged");
    g.set_memory_limit(Limit::Bytes(64 * M)).unwrap();
    let path = memory_path(&g);
    let mut a = agent(&path, "max = \"512M\"").start();
    a.wait_managed(&path, true, Duration::from_secs(5));
    let raised = raise_and_record(&a, &g, &path);
    assert!(raised > 64 * M);

    // Crash, and the state file is damaged (truncated to garbage) meanwhile.
    a.stop(Signal::SIGKILL);
    let state = a.state_file();
    std::fs::write(&state, "{\"version\": 1, \"cgroups\": {\"").unwrap();
    a.restart();
    // The true original from the last-known-good copy, not the raised limit.
    let managing = a.wait_event(
        &LogQuery::message(msg::MANAGING).field("cgroup", &path),
        Duration::ZERO,
    );
    assert_eq!(managing.u64("original"), Some(64 * M), "{managing}");
    // A clear error naming the file, which is set aside.
    let e = a.wait_event(
        &LogQuery::any()
            .level("ERROR")
            .field("state_file", state.display()),
        Duration::ZERO,
    );
    assert!(e.message.contains("last-known-good copy"), "{e}");
    assert!(Path::new(&format!("{}.bad", state.display())).exists());
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
    assert_eq!(limit_of(&g), Limit::Bytes(64 * M), "the true original");

    // Raised again, crash, and both the state file and its copy are lost: the original cannot
    // be told, and the agent says so instead of taking the raised limit for it.
    a.restart();
    a.wait_managed(&path, true, Duration::from_secs(5));
    let raised = raise_and_record(&a, &g, &path);
    a.stop(Signal::SIGKILL);
    std::fs::write(&state, "").unwrap();
    std::fs::write(format!("{}.prev", state.display()), "garbage").unwrap();
    a.restart();
    let status = a.status();
    let m = status.managed(&path).expect("managed");
    assert_eq!(m["original_unknown"], true, "{m}");
    assert_eq!(
        a.scrape().value(
            metric::MEMORY_ORIGINAL_UNKNOWN,
            &[("cgroup", path.as_str())]
        ),
        Some(1.0)
    );
    assert_eq!(a.stop(Signal::SIGTERM).code(), Some(0));
    assert!(a.logged(
        &LogQuery::any()
            .level("ERROR")
            .field("cgroup", &path)
            .field("reason", "restore_on_exit")
    ));
    assert_eq!(
        limit_of(&g),
        Limit::Bytes(raised),
        "an unknown original: left as it is"
    );
}

#[test]
fn a_garbage_truncated_or_symlinked_state_file_gives_a_clear_error_and_a_safe_start() {
    let Some(env) = env("originals_hostile") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-orig-hostile");
    g.set_memory_limit(Limit::Bytes(64 * M)).unwrap();
    let path = memory_path(&g);
    let mut a = agent(&path, "max = \"512M\"").start();
    a.wait_managed(&path, true, Duration::from_secs(5));
    a.stop(Signal::SIGKILL);
    let state = a.state_file();
    let copy = format!("{}.prev", state.display());
    let bait = a.dir().join("bait.json");
    for (what, damage) in [
        ("garbage", b"\x00\xffnot json at all".as_slice()),
        ("truncated", b"{\"version\": 1, \"cgro".as_slice()),
        (
            "future version",
            b"{\"version\": 7, \"cgroups\": []}".as_slice(),
        ),
        ("symlink", b"".as_slice()),
    ] {
        let _ = std::fs::remove_file(&state);
        if what == "symlink" {
            std::fs::write(&bait, "{\"version\": 1, \"cgroups\": {}}").unwrap();
            std::os::unix::fs::symlink(&bait, &state).unwrap();
        } else {
            std::fs::write(&state, damage).unwrap();
        }
        std::fs::write(&copy, damage).unwrap();
        a.restart();
        let e = a.wait_event(
            &LogQuery::any()
                .level("ERROR")
                .field("state_file", state.display()),
            Duration::ZERO,
        );
        assert!(
            e.message.contains(&state.display().to_string()) && e.message.contains("UNKNOWN"),
            "{what}: {e}"
        );
        // A safe start from the cgroup as it is.
        let m = a.status();
        let m = m.managed(&path).expect("managed").clone();
        assert_eq!(m["limit"], 64 * M, "{what}: {m}");
        assert!(a.alive(), "{what}");
        a.stop(Signal::SIGKILL);
        let st = std::fs::symlink_metadata(&state).unwrap();
        assert!(st.file_type().is_file(), "{what}: a fresh state file");
        if what == "symlink" {
            assert_eq!(
                std::fs::read_to_string(&bait).unwrap(),
                "{\"version\": 1, \"cgroups\": {}}",
                "never written through a planted symlink"
            );
        }
    }
}

#[test]
fn a_cgroup_that_stops_matching_on_reload_gets_its_original_back() {
    let Some(env) = env_race("originals_deselect", "raising a limit under load") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-orig-deselect");
    g.set_memory_limit(Limit::Bytes(64 * M)).unwrap();
    let path = memory_path(&g);
    let mut a = agent(&path, "max = \"512M\"").start();
    a.wait_managed(&path, true, Duration::from_secs(5));
    let raised = raise_and_record(&a, &g, &path);
    assert!(raised > 64 * M);
    // The policy now selects something else.
    a.set_body(body(&format!("{path}-other"), "max = \"512M\""));
    a.signal(Signal::SIGHUP);
    a.wait_event(
        &LogQuery::message(msg::NO_LONGER_MANAGED).field("cgroup", &path),
        Duration::from_secs(10),
    );
    let restored = a.wait_event(
        &LogQuery::message("limit restored")
            .field("cgroup", &path)
            .field("reason", "deselected"),
        Duration::from_secs(10),
    );
    assert_eq!(restored.u64("new"), Some(64 * M), "{restored}");
    assert_eq!(limit_of(&g), Limit::Bytes(64 * M), "the original back");
    a.stop_cleanly(Signal::SIGTERM);
}

#[test]
fn a_max_below_the_limit_is_reached_step_by_step_never_below_usage() {
    let Some(env) = env("originals_max_down") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-orig-maxdown");
    g.set_memory_limit(Limit::Bytes(256 * M)).unwrap();
    let path = memory_path(&g);
    let cg = g.cgroup(Controller::Memory).unwrap();
    let _hold = spawn_in_cgroup(
        cg.dir(),
        &scaler_bin(),
        &["workload", "idle", "--size", "32M", "--hold", "60s"],
    );
    let end = Instant::now() + Duration::from_secs(10);
    while cg.memory_usage().unwrap() < 32 * M {
        assert!(Instant::now() < end, "the workload holds 32M");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut a = agent(
        &path,
        "max = \"128M\"\nlower_to_max = true\ndown_interval = \"300ms\"\ndown_fraction = 0.5\nmin_change = \"4M\"",
    )
    .sample_interval("100ms")
    .start();
    a.wait_managed(&path, true, Duration::from_secs(5));
    a.wait_audit("down to the max", Duration::from_secs(15), |r| {
        r.cgroup == path && r.new == 128 * M
    });
    let steps: Vec<_> = a
        .audit_of(&path)
        .into_iter()
        .filter(|r| r.reason == "scale_down")
        .collect();
    let usage = cg.memory_usage().unwrap();
    eprintln!("steps: {steps:?}");
    assert!(steps.len() >= 3, "stepwise: {steps:?}");
    assert_eq!(steps[0].old, 256 * M);
    assert!(
        steps[0].new > 128 * M && steps[0].new < 256 * M,
        "a first step, not a cut: {steps:?}"
    );
    assert!(steps.iter().all(|s| s.new >= 128 * M && s.new > usage));
    assert_eq!(limit_of(&g), Limit::Bytes(128 * M));
    a.stop_cleanly(Signal::SIGTERM);
}

#[test]
fn an_owners_limit_above_the_max_is_never_lowered_to_it_by_default() {
    let Some(env) = env("originals_owner_above_max") else {
        return;
    };
    let g = memory_cgroup(&env, "scaler-test-orig-abovemax");
    g.set_memory_limit(Limit::Bytes(256 * M)).unwrap();
    let path = memory_path(&g);
    let mut a = agent(
        &path,
        "max = \"128M\"\ndown_interval = \"100ms\"\ndown_fraction = 0.5\nmin_change = \"4M\"",
    )
    .sample_interval("100ms")
    .start();
    a.wait_managed(&path, true, Duration::from_secs(5));
    // Ten samples, each of which would have taken a step toward the max (see the test above).
    std::thread::sleep(Duration::from_millis(1000));
    // The owner (a runtime, the kubelet) writes a higher limit still: adopted, left alone too.
    g.set_memory_limit(Limit::Bytes(320 * M)).unwrap();
    a.wait_event(
        &LogQuery::message("limit changed outside the agent: adopted as the original")
            .field("cgroup", &path),
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(600));
    let writes = a.audit_of(&path);
    assert!(
        writes.is_empty(),
        "nothing written on the owner's limit: {writes:?}"
    );
    assert_eq!(
        limit_of(&g),
        Limit::Bytes(320 * M),
        "the owner's limit stays"
    );
    a.stop_cleanly(Signal::SIGTERM);
    assert_eq!(
        limit_of(&g),
        Limit::Bytes(320 * M),
        "and is what SIGTERM leaves"
    );
}
