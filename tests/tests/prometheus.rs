//! The agent's `/metrics` as Prometheus' own tools read it: `promtool check metrics` finds
//! nothing to report on a live scrape of an idle agent and of one that has acted (HELP text on
//! every family, `_total` counters, no infinite sample), the families dashboards and alerts
//! need exist from start-up, an unlimited limit is a 0/1 gauge rather than `+Inf`, and every
//! metric the shipped Grafana dashboard and example alerts name is in the live scrape.
//!
//! Needs `promtool` (Debian's `prometheus` package; `cargo xtask setup` installs it).

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::signal::Signal;
use scaler::cgroupfs::{Controller, Limit};
use scaler_tests::*;

const M: u64 = 1 << 20;

fn body(matches: &[String]) -> String {
    let matches: Vec<String> = matches.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "[node]\nmemory_reserve = \"128M\"\n\n[[policy]]\nname = \"prom\"\nmatch = [{}]\n\n\
         [policy.memory]\nmin = \"16M\"\nmax = \"512M\"\n",
        matches.join(", ")
    )
}

/// `promtool check metrics` on `text`: its complaints (empty: clean). Panics, saying how to
/// install it, when promtool is missing.
fn promtool_check_metrics(text: &str) -> String {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "running promtool: {e}. Install it: `apt-get install prometheus` (Debian's package \
             ships /usr/bin/promtool), or `cargo xtask setup`"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("writing the scrape to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said.trim().to_owned()
    } else {
        format!("promtool exited with {}: {said}", out.status)
    }
}

/// Asserts promtool has nothing to say about the text scrape and that no sample is infinite
/// (the histogram's `le="+Inf"` bucket bound is a label, not a sample).
fn assert_clean((content_type, text): &(String, String), when: &str) {
    let complaints = promtool_check_metrics(text);
    assert!(
        complaints.is_empty(),
        "promtool check metrics on the {when} scrape: {complaints}\n{text}"
    );
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "a client that does not ask for OpenMetrics gets the text format: {content_type:?}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            !value.to_ascii_lowercase().contains("inf") && value != "NaN",
            "{when}: a sample that is not a finite number: {line}"
        );
    }
}

/// The metric names a PromQL expression refers to (identifiers with our prefixes).
fn names_in(expr: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    expr.split(|c: char| !ident(c))
        .filter(|w| w.starts_with("scaler_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

fn deploy(file: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every metric name the dashboard's and the alerts' expressions use.
fn names_used_by_dashboard_and_alerts() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let d: serde_json::Value =
        serde_json::from_str(&deploy("grafana/scaler-dashboard.json")).unwrap();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            used.extend(names_in(t["expr"].as_str().unwrap_or_default()));
        }
    }
    for line in deploy("prometheus/alerts.yaml").lines() {
        used.extend(names_in(line.split('#').next().unwrap()));
    }
    used
}

#[test]
fn promtool_finds_the_metrics_clean_idle_and_after_an_action() {
    let Some(env) = env_race(
        "prometheus",
        "winning the OOM race (an action to scrape after)",
    ) else {
        return;
    };

    // Idle: nothing managed. Every family dashboards and alerts need has its series.
    let mut agent = AgentConfig::new(body(&["/scaler-test-prom-nothing-*".into()])).start();
    let scraped = agent.scrape_text();
    assert_clean(&scraped, "idle");
    let text = scraped.1;
    let idle = agent.scrape();
    for (m, labels) in [
        (metric::REACTION_LATENCY_COUNT, [("resource", "memory")]),
        (metric::REACTION_LATENCY_COUNT, [("resource", "cpu")]),
        (metric::MANAGED_MEMORY_CGROUPS, [("resource", "memory")]),
        (metric::ACTIONS, [("outcome", "failed")]),
        (metric::EVENTS, [("kind", "reclaim_begin")]),
        (metric::RAISES_REFUSED, [("reason", "budget")]),
        (metric::CONFIG_RELOADS, [("result", "rejected")]),
        (
            metric::NODE_MEMORY_RESERVE,
            [("source", "kubelet_reserved")],
        ),
    ] {
        assert_eq!(idle.sum(m, &labels), Some(0.0), "{m} {labels:?}:\n{text}");
    }
    for m in [
        metric::RINGBUF_DROPPED,
        metric::FAILED_WRITES,
        metric::DECODE_ERRORS,
        metric::KUBELET_CONFIG_ERRORS,
    ] {
        assert_eq!(idle.value(m, &[]), Some(0.0), "{m}");
    }
    for m in [metric::NODE_MEMORY_CAPACITY, metric::NODE_MEMORY_ROOM] {
        assert!(idle.value(m, &[]).is_some_and(|v| v > 0.0), "{m}:\n{text}");
    }
    let build = idle.samples(metric::BUILD_INFO, &[]);
    assert_eq!(build.len(), 1, "{text}");
    assert_eq!(build[0].value, 1.0);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build[0].labels["kernel"].is_empty(), "{:?}", build[0]);
    // The kernel's BPF statistics are off by default (they tax every BPF program of the
    // node): the BPF program families are absent, even where someone else keeps the
    // statistics on (the VMs do).
    for m in [metric::BPF_PROGRAM_RUNS, metric::BPF_PROGRAM_RUN_SECONDS] {
        assert!(idle.type_of(m).is_none(), "{m} without bpf_stats:\n{text}");
        assert!(
            idle.samples(m, &[]).is_empty(),
            "{m} without bpf_stats:\n{text}"
        );
    }
    assert_eq!(agent.stop(Signal::SIGTERM).code(), Some(0));

    // After an action: one cgroup raised from 64M, one found with no limit at all.
    let raised = memory_cgroup(&env, "scaler-test-prom-r");
    raised.set_memory_limit(Limit::Bytes(64 * M)).unwrap();
    let unlimited = memory_cgroup(&env, "scaler-test-prom-u");
    unlimited.set_memory_limit(Limit::Max).unwrap();
    let rpath = raised.path(Controller::Memory).unwrap().to_string();
    let upath = unlimited.path(Controller::Memory).unwrap().to_string();
    // With `[agent] bpf_stats = true`, the BPF program series the dashboard plots.
    let mut agent = AgentConfig::new(body(&[glob_literal(&rpath), glob_literal(&upath)]))
        .agent_key("bpf_stats", "true")
        .start();
    agent.wait_managed(&rpath, true, Duration::from_secs(5));
    agent.wait_managed(&upath, true, Duration::from_secs(5));
    let cg = raised.cgroup(Controller::Memory).unwrap();
    // Kept until the workload ends: it owns the workload's temp dir (the emulated race's
    // cushion file).
    let w = RaceWorkload::steps(1);
    let mut p = w.spawn_in(cg.dir());
    let st = p
        .wait_timeout(Duration::from_secs(120))
        .expect("workload ended");
    assert!(st.success(), "the workload survived under the agent: {st}");
    // The per-cgroup series are refreshed every sample interval (200 ms).
    std::thread::sleep(Duration::from_millis(600));
    assert_clean(&agent.scrape_text(), "after an action");
    let s = agent.scrape();
    // bpf_stats = true: the kernel's per-program figures, and the HELP names the switch.
    assert!(
        !s.samples(metric::BPF_PROGRAM_RUNS, &[]).is_empty(),
        "{}",
        s.text
    );
    assert!(
        s.text
            .lines()
            .any(|l| l.starts_with("# HELP scaler_bpf_program_runs") && l.contains("bpf_stats")),
        "{}",
        s.text
    );
    assert!(
        s.sum(metric::ACTIONS, &[("outcome", "written")]).unwrap() >= 1.0,
        "{}",
        s.text
    );
    assert!(
        s.value(metric::REACTION_LATENCY_COUNT, &[("resource", "memory")])
            .unwrap()
            >= 1.0
    );
    // The cgroup found unlimited: the agent bounds it by the policy's max, and its original
    // (no limit) has no sample: the gauge says unlimited.
    let u = [("cgroup", upath.as_str())];
    assert_eq!(
        s.value(metric::MEMORY_ORIGINAL_LIMIT, &u),
        None,
        "{}",
        s.text
    );
    assert_eq!(
        s.value(metric::MEMORY_ORIGINAL_LIMIT_UNLIMITED, &u),
        Some(1.0)
    );
    let bounded = s.value(metric::MEMORY_LIMIT, &u);
    assert_eq!(
        s.value(metric::MEMORY_LIMIT_UNLIMITED, &u),
        Some(if bounded.is_some() { 0.0 } else { 1.0 }),
        "{}",
        s.text
    );
    // The raised one: limits with samples, not unlimited, a utilization ratio.
    let r = [("cgroup", rpath.as_str())];
    assert!(s.value(metric::MEMORY_LIMIT, &r).unwrap() > (64 * M) as f64);
    assert_eq!(
        s.value(metric::MEMORY_ORIGINAL_LIMIT, &r),
        Some((64 * M) as f64)
    );
    assert_eq!(s.value(metric::MEMORY_LIMIT_UNLIMITED, &r), Some(0.0));
    let ratio = s.value(metric::MEMORY_UTILIZATION, &r).expect("a ratio");
    assert!((0.0..=1.5).contains(&ratio), "{ratio}");
    // Kubernetes labels are present (empty outside Kubernetes) on every per-cgroup series.
    for sample in s.with_label("cgroup", &rpath) {
        for l in [
            "qos",
            "namespace",
            "pod",
            "uid",
            "container",
            "container_id",
        ] {
            assert!(sample.labels.contains_key(l), "{l} on {sample:?}");
        }
    }

    // Every metric the dashboard and the alerts name is in the live scrape.
    let mut live: BTreeSet<String> = s.samples.iter().map(|x| x.name.clone()).collect();
    live.extend(s.types.keys().cloned());
    let used = names_used_by_dashboard_and_alerts();
    assert!(used.len() >= 10, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !live.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named by deploy/grafana or deploy/prometheus but not exported: {missing:?}\n{}",
        s.text
    );

    assert_eq!(agent.stop(Signal::SIGTERM).code(), Some(0));
    agent.assert_only_json_on_stderr();
}
