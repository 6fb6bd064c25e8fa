use super::*;
use std::time::Duration;

const EXAMPLE: &str = include_str!("../../../config/scaler.example.toml");

const NODE: NodeInfo = NodeInfo {
    mem_total: 24 * GIB,
    nproc: 2,
};

fn invalid(text: &str) -> Vec<Problem> {
    match Config::from_toml_str(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

fn parse_error(text: &str) -> String {
    match Config::from_toml_str(text) {
        Err(e @ ConfigError::Parse { .. }) => e.to_string(),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

/// Asserts that exactly one problem is reported, at `key`, mentioning `what`.
fn one_problem(text: &str, key: &str, what: &str) {
    let problems = invalid(text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, key, "{problems:?}");
    assert!(problems[0].message.contains(what), "{problems:?}");
}

const MINIMAL: &str = r#"
[[policy]]
name = "batch"
match = ["/batch/*"]
[policy.memory]
"#;

#[test]
fn the_built_in_default_observes_everything_and_manages_nothing() {
    let c = Config::load(None).unwrap();
    assert_eq!(c, Config::default());
    assert!(c.policies.is_empty());
    assert!(c.agent.observe_all);
    assert_eq!(c.policy_for("/anything", Some("1")), None);
    assert_eq!(c.agent.metrics_addr.to_string(), "127.0.0.1:9477");
    assert!(c.agent.metrics_addr.ip().is_loopback());
    assert_eq!(c.agent.sample_interval, HumanDuration::secs(1));
    assert!(!c.agent.dry_run && !c.agent.restore_on_exit);
    // Sized for 10,000 managed cgroups at least.
    assert!(c.agent.max_cgroups >= 10_000);
    c.validate(&NODE).unwrap();
    // Budgets: MemTotal - 1 GiB, CPUs - 0.5.
    assert_eq!(c.memory_budget(&NODE), 23 * GIB);
    assert_eq!(c.cpu_budget(&NODE), 1.5);
    // An empty file is the same as no file.
    assert_eq!(Config::from_toml_str("").unwrap(), c);
}

#[test]
fn the_example_file_parses_validates_and_means_what_it_says() {
    let c = Config::from_toml_str(EXAMPLE).unwrap();
    c.validate(&NODE).unwrap();
    assert_eq!(c.policies.len(), 2);
    let batch = &c.policies[0];
    assert_eq!(batch.name, "batch");
    let m = batch.memory_policy().unwrap();
    assert_eq!((m.min, m.max), (64 * MIB, 4 * GIB));
    // The example documents the defaults: apart from min/max they are MemoryPolicy's.
    assert_eq!(
        m,
        MemoryPolicy {
            min: 64 * MIB,
            max: 4 * GIB,
            ..MemoryPolicy::default()
        }
    );
    let cpu = batch.cpu_policy(&NODE).unwrap();
    assert_eq!(
        cpu,
        CpuPolicy {
            min_cores: 0.2,
            max_cores: 2.0,
            ..CpuPolicy::default()
        }
    );
    assert_eq!(c.agent, AgentConfig::default());
    assert_eq!(c.node.memory_reserve, Some(ByteSize::gib(1)));
    let opt_in = &c.policies[1];
    assert_eq!(opt_in.memory_policy().unwrap().max, 2 * GIB);
    assert_eq!(opt_in.cpu_policy(&NODE), None);
}

#[test]
fn the_example_documents_every_key() {
    // Every field of every section appears in the example (commented or not).
    let full = Config {
        policies: vec![PolicyConfig {
            memory: Some(MemoryPolicyConfig {
                max: Some(ByteSize::gib(1)),
                ..Default::default()
            }),
            cpu: Some(CpuPolicyConfig {
                max: Some(Cores(1.0)),
                ..Default::default()
            }),
            ..Default::default()
        }],
        node: NodeConfig {
            memory_reserve: Some(ByteSize::gib(1)),
            memory_budget: Some(ByteSize::gib(1)),
            cpu_reserve: Some(Cores(1.0)),
            cpu_budget: Some(Cores(1.0)),
            kubelet_config: Some("/var/lib/kubelet/config.yaml".into()),
            kubelet_eviction_margin: Some(ByteSize::mib(128)),
        },
        ..Default::default()
    };
    let value = toml::Value::try_from(&full).unwrap();
    let mut missing = Vec::new();
    fn walk(v: &toml::Value, example: &str, missing: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let documented = example.lines().any(|l| {
                        l.trim_start_matches(['#', ' '])
                            .starts_with(&format!("{k} ="))
                    });
                    if !documented && !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)) {
                        missing.push(k.clone());
                    }
                    walk(v, example, missing);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, example, missing)),
            _ => {}
        }
    }
    walk(&value, EXAMPLE, &mut missing);
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
}

#[test]
fn sizes_durations_and_cores_in_every_form() {
    let c = Config::from_toml_str(
        r#"
        [agent]
        sample_interval = "500ms"
        [node]
        memory_budget = 17179869184
        cpu_budget = "1500m"
        [[policy]]
        name = "a"
        match = ["/a"]
        [policy.memory]
        min = 67108864
        max = "1.5G"
        cooldown = "2m"
        [policy.cpu]
        min = "200m"
        max = 1
        runq_latency_target = "250us"
        "#,
    )
    .unwrap();
    assert_eq!(c.agent.sample_interval.0, Duration::from_millis(500));
    assert_eq!(c.memory_budget(&NODE), 16 * GIB);
    assert_eq!(c.cpu_budget(&NODE), 1.5);
    let m = c.policies[0].memory_policy().unwrap();
    assert_eq!(
        (m.min, m.max, m.cooldown_ns),
        (64 * MIB, 3 * GIB / 2, 120_000_000_000)
    );
    let p = c.policies[0].cpu_policy(&NODE).unwrap();
    assert_eq!(
        (p.min_cores, p.max_cores, p.runq_latency_target_us),
        (0.2, 1.0, 250)
    );
}

#[test]
fn without_max_memory_is_bounded_by_the_budget_only_and_cpu_by_the_cpus() {
    let c = Config::from_toml_str(
        r#"
        [[policy]]
        name = "a"
        match = ["/a"]
        [policy.memory]
        [policy.cpu]
        "#,
    )
    .unwrap();
    assert_eq!(c.policies[0].memory_policy().unwrap().max, u64::MAX);
    assert_eq!(c.policies[0].cpu_policy(&NODE).unwrap().max_cores, 2.0);
}

#[test]
fn first_matching_policy_wins_and_globs_respect_path_components() {
    let c = Config::from_toml_str(
        r#"
        [[policy]]
        name = "one"
        match = ["/batch/*"]
        [policy.memory]
        [[policy]]
        name = "deep"
        match = ["/kubepods/besteffort/**", "/batch/**"]
        [policy.memory]
        "#,
    )
    .unwrap();
    let name = |path: &str| c.policy_for(path, None).map(|p| p.name.as_str());
    assert_eq!(name("/batch/job1"), Some("one"));
    assert_eq!(name("batch/job1/"), Some("one"), "normalized");
    assert_eq!(
        name("/batch/job1/step"),
        Some("deep"),
        "`*` stays in one component"
    );
    assert_eq!(name("/kubepods/besteffort/pod1/ctr"), Some("deep"));
    assert_eq!(name("/kubepods/burstable/pod1"), None);
    assert_eq!(name("/batchy/job1"), None);
    assert_eq!(name("/"), None);
}

#[test]
fn xattr_opt_in_selects_by_value() {
    let c = Config::from_toml_str(
        r#"
        [[policy]]
        name = "batch"
        match = ["/**"]
        require_xattr = true
        [policy.memory]
        [[policy]]
        name = "web"
        match = ["/**"]
        require_xattr = true
        [policy.cpu]
        "#,
    )
    .unwrap();
    let name = |x: Option<&str>| c.policy_for("/svc/a", x).map(|p| p.name.as_str());
    assert_eq!(name(None), None, "no xattr: observed only");
    assert_eq!(name(Some("1")), Some("batch"));
    assert_eq!(name(Some("web")), Some("web"));
    assert_eq!(name(Some("web\n")), Some("web"));
    assert_eq!(name(Some("0")), None);
    assert_eq!(name(Some("other")), None);
}

#[test]
fn unknown_keys_are_rejected_naming_the_key() {
    for (text, key) in [
        ("[agent]\nmetric_addr = \"127.0.0.1:1\"", "metric_addr"),
        ("[nodes]\n", "nodes"),
        ("[node]\nmemory_reservation = \"1G\"", "memory_reservation"),
        (
            "[[policy]]\nname = \"a\"\nmatch = [\"/a\"]\n[policy.memory]\nmaxx = \"1G\"",
            "maxx",
        ),
        (
            "[[policy]]\nname = \"a\"\nmatch = [\"/a\"]\n[policy.cpu]\nquota = 1",
            "quota",
        ),
    ] {
        let msg = parse_error(text);
        assert!(msg.contains(&format!("unknown field `{key}`")), "{msg}");
    }
}

#[test]
fn malformed_values_are_rejected_naming_the_value() {
    for (text, what) in [
        ("[node]\nmemory_reserve = \"1Q\"", "invalid size \"1Q\""),
        ("[node]\nmemory_reserve = -5", "cannot be negative"),
        (
            "[node]\ncpu_reserve = \"half\"",
            "invalid CPU amount \"half\"",
        ),
        ("[agent]\nsample_interval = 5", "missing unit"),
        (
            "[agent]\nsample_interval = \"5 fortnights\"",
            "unknown unit",
        ),
        (
            "[agent]\nmetrics_addr = \"localhost\"",
            "invalid socket address",
        ),
        ("[agent]\ndry_run = \"yes\"", "invalid type"),
        ("[[policy]]\nname = \"a\"\nmatch = \"/a\"", "invalid type"),
        ("not toml at all", "expected"),
    ] {
        let msg = parse_error(text);
        assert!(msg.contains(what), "{text:?}: {msg}");
    }
}

#[test]
fn contradictions_and_out_of_range_values_are_rejected_naming_the_key() {
    let policy = |section: &str, body: &str| {
        format!("[[policy]]\nname = \"p\"\nmatch = [\"/p\"]\n[policy.{section}]\n{body}\n")
    };
    for (text, key, what) in [
        (
            "[agent]\nmax_cgroups = 0".to_string(),
            "agent.max_cgroups",
            "out of range",
        ),
        (
            "[agent]\nrealtime_priority = 100".to_string(),
            "agent.realtime_priority",
            "SCHED_FIFO priority",
        ),
        (
            policy("memory", "min = \"2G\"\nmax = \"1G\""),
            "policy[0].memory.max",
            "below min",
        ),
        (
            policy("memory", "min = 0"),
            "policy[0].memory.min",
            "above zero",
        ),
        (
            policy("memory", "step_min = 0"),
            "policy[0].memory.step_min",
            "above zero",
        ),
        (
            policy("memory", "step_min = \"1M\"\nmin_change = \"2M\""),
            "policy[0].memory.step_min",
            "below min_change",
        ),
        (
            policy("memory", "min_change = 100"),
            "policy[0].memory.min_change",
            "64KiB",
        ),
        (
            policy("memory", "down_fraction = 0.0"),
            "policy[0].memory.down_fraction",
            "(0, 1]",
        ),
        (
            policy("memory", "down_fraction = 1.5"),
            "policy[0].memory.down_fraction",
            "(0, 1]",
        ),
        (
            policy("memory", "step_fraction = -1.0"),
            "policy[0].memory.step_fraction",
            "0..=4",
        ),
        (
            policy("memory", "psi_threshold = 2.0"),
            "policy[0].memory.psi_threshold",
            "0..=1",
        ),
        (
            policy("memory", "max_raises_per_sec = 0"),
            "policy[0].memory.max_raises_per_sec",
            "at least 1",
        ),
        (
            policy("memory", "max_escalation = 40"),
            "policy[0].memory.max_escalation",
            "at most 16",
        ),
        (
            policy("memory", "down_interval = \"0s\""),
            "policy[0].memory.down_interval",
            "above zero",
        ),
        (
            policy("cpu", "min = 2.0\nmax = 1.0"),
            "policy[0].cpu.max",
            "below min",
        ),
        (
            policy("cpu", "min = 0.001"),
            "policy[0].cpu.min",
            "smallest quota",
        ),
        (
            policy("cpu", "quota_near = 1.0"),
            "policy[0].cpu.quota_near",
            "(0, 1)",
        ),
        (
            policy("cpu", "quota_near = 0"),
            "policy[0].cpu.quota_near",
            "(0, 1)",
        ),
        (
            policy("cpu", "step = 0"),
            "policy[0].cpu.step",
            "above zero",
        ),
        (
            policy("cpu", "step = 0.01"),
            "policy[0].cpu.step",
            "below min_change",
        ),
        (
            policy("cpu", "runq_latency_target = \"0ms\""),
            "policy[0].cpu.runq_latency_target",
            "above zero",
        ),
        (
            policy("cpu", "headroom = -0.5"),
            "policy[0].cpu.headroom",
            "0..=10",
        ),
        (
            policy("cpu", "down_fraction = 0"),
            "policy[0].cpu.down_fraction",
            "(0, 1]",
        ),
        (
            policy("cpu", "max_raises_per_sec = 0"),
            "policy[0].cpu.max_raises_per_sec",
            "at least 1",
        ),
        (
            policy("cpu", "max_escalation = 17"),
            "policy[0].cpu.max_escalation",
            "at most 16",
        ),
        (
            policy("cpu", "down_interval = \"0s\""),
            "policy[0].cpu.down_interval",
            "above zero",
        ),
        (
            "[agent]\nsample_interval = \"0s\"".into(),
            "agent.sample_interval",
            "above zero",
        ),
        (
            "[agent]\nopt_in_xattr = \"scaler\"".into(),
            "agent.opt_in_xattr",
            "extended attribute",
        ),
        (
            "[agent]\nopt_in_xattr = \"user.\"".into(),
            "agent.opt_in_xattr",
            "extended attribute",
        ),
        (
            "[node]\nmemory_reserve = \"1G\"\nmemory_budget = \"8G\"".into(),
            "node.memory_budget",
            "not both",
        ),
        (
            "[node]\ncpu_reserve = 1\ncpu_budget = 1".into(),
            "node.cpu_budget",
            "not both",
        ),
        (
            "[[policy]]\nname = \"p\"\nmatch = []\n[policy.memory]".into(),
            "policy[0].match",
            "empty",
        ),
        (
            "[[policy]]\nname = \"p\"\n[policy.memory]".into(),
            "policy[0].match",
            "empty",
        ),
        (
            "[[policy]]\nname = \"p\"\nmatch = [\"batch/*\"]\n[policy.memory]".into(),
            "policy[0].match[0]",
            "start with '/'",
        ),
        (
            "[[policy]]\nname = \"p\"\nmatch = [\"/a/***\"]\n[policy.memory]".into(),
            "policy[0].match[0]",
            "not a valid glob",
        ),
        (
            "[[policy]]\nmatch = [\"/a\"]\n[policy.memory]".into(),
            "policy[0].name",
            "needs a name",
        ),
        (
            "[[policy]]\nname = \"a b\"\nmatch = [\"/a\"]\n[policy.memory]".into(),
            "policy[0].name",
            "letters, digits",
        ),
        (
            "[[policy]]\nname = \"p\"\nmatch = [\"/a\"]".into(),
            "policy[0].memory",
            "manages nothing",
        ),
    ] {
        one_problem(&text, key, what);
    }
    // Duplicate names: the later policy is at fault.
    let dup = format!("{MINIMAL}\n{MINIMAL}");
    one_problem(&dup, "policy[1].name", "earlier policy");
}

#[test]
fn all_problems_are_reported_at_once() {
    let problems = invalid(
        r#"
        [agent]
        sample_interval = "0s"
        [[policy]]
        name = ""
        match = []
        [policy.memory]
        min = "2G"
        max = "1G"
        "#,
    );
    let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "agent.sample_interval",
            "policy[0].name",
            "policy[0].match",
            "policy[0].memory.max"
        ]
    );
    let msg = ConfigError::Invalid {
        origin: "(inline)".into(),
        problems,
    }
    .to_string();
    assert!(
        msg.contains("`policy[0].memory.max`: 1GiB is below min 2GiB"),
        "{msg}"
    );
}

#[test]
fn node_checks_budgets_and_maxima_against_the_machine() {
    let small = NodeInfo {
        mem_total: 4 * GIB,
        nproc: 2,
    };
    let check = |text: &str| match Config::from_toml_str(text).unwrap().validate(&small) {
        Err(e) => e.problems().to_vec(),
        Ok(()) => Vec::new(),
    };
    for (text, key, what) in [
        (
            "[node]\nmemory_budget = \"8G\"",
            "node.memory_budget",
            "above this node's physical memory",
        ),
        (
            "[node]\nmemory_reserve = \"4G\"",
            "node.memory_reserve",
            "leaves no budget",
        ),
        (
            "[node]\ncpu_budget = 3",
            "node.cpu_budget",
            "above this node's 2 CPUs",
        ),
        (
            "[node]\ncpu_reserve = 2",
            "node.cpu_reserve",
            "leaves no budget",
        ),
        (
            "[[policy]]\nname = \"p\"\nmatch = [\"/p\"]\n[policy.memory]\nmax = \"5G\"",
            "policy[0].memory.max",
            "physical memory",
        ),
        (
            "[[policy]]\nname = \"p\"\nmatch = [\"/p\"]\n[policy.cpu]\nmax = 4",
            "policy[0].cpu.max",
            "2 CPUs",
        ),
    ] {
        let problems = check(text);
        assert_eq!(problems.len(), 1, "{text}: {problems:?}");
        assert_eq!(problems[0].key, key);
        assert!(problems[0].message.contains(what), "{problems:?}");
    }
    assert!(check("[node]\nmemory_budget = \"3G\"\n").is_empty());
}

#[test]
fn load_reads_files_and_an_explicit_missing_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scaler.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let c = Config::load(Some(&path)).unwrap();
    assert_eq!(c.policies[0].name, "batch");

    let missing = dir.path().join("nope.toml");
    let err = Config::load(Some(&missing)).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("nope.toml"), "{err}");

    std::fs::write(&path, "[agent]\nbogus = 1\n").unwrap();
    let err = Config::load(Some(&path)).unwrap_err().to_string();
    assert!(
        err.contains("scaler.toml") && err.contains("bogus"),
        "{err}"
    );
}

#[test]
fn meminfo_parsing() {
    let meminfo = "MemTotal:       24608332 kB\nMemFree:        1 kB\n";
    assert_eq!(parse_meminfo_total(meminfo), Some(24_608_332 * 1024));
    assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
    assert_eq!(parse_meminfo_total("MemTotal: lots\n"), None);
    let node = NodeInfo::detect().unwrap();
    assert!(node.mem_total > 0 && node.nproc > 0);
}

mod no_panic {
    //! Whatever the input, parsing and validation return a value or an error: never a panic.

    use super::*;
    use proptest::prelude::*;

    /// Values of every kind that TOML allows, including hostile ones.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_owned()),
            Just("-1".to_owned()),
            Just("1e308".to_owned()),
            Just("nan".to_owned()),
            Just("-inf".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("\"\"".to_owned()),
            Just("\"99999999999T\"".to_owned()),
            Just("\"0.0000000001G\"".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            Just("true".to_owned()),
            (any::<i64>()).prop_map(|v| v.to_string()),
            (any::<f64>()).prop_map(|v| format!("{v:?}")),
            "\"[0-9.]{0,6}[a-zA-Zµ]{0,3}\"",
            "\"[/*a-z\\[\\]{}!]{0,8}\"",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = Config::from_toml_str(&text);
        }

        /// The example with one key's value replaced: must parse or fail with an error, and a
        /// configuration that parses must validate without panicking either.
        #[test]
        fn mutated_example_never_panics(line in 0usize..200, v in value()) {
            let lines: Vec<&str> = EXAMPLE.lines().collect();
            let i = line % lines.len();
            let mutated: String = lines
                .iter()
                .enumerate()
                .map(|(j, l)| match (j == i, l.split_once(" = ")) {
                    (true, Some((k, _))) => format!("{k} = {v}\n"),
                    _ => format!("{l}\n"),
                })
                .collect();
            if let Ok(c) = Config::from_toml_str(&mutated) {
                let _ = c.validate(&NODE);
                let _ = c.validate(&NodeInfo { mem_total: 0, nproc: 0 });
                for p in &c.policies {
                    let _ = p.memory_policy();
                    let _ = p.cpu_policy(&NODE);
                }
                let _ = c.memory_budget(&NODE);
                let _ = c.cpu_budget(&NODE);
                let _ = c.policy_for("/batch/x", Some("1"));
            }
        }
    }
}

#[test]
fn the_memory_reserve_bounds_raises_by_what_is_available() {
    let c = Config::from_toml_str("[node]\nmemory_reserve = \"2G\"").unwrap();
    assert_eq!(c.memory_reserve(&NODE), 2 * GIB);
    assert_eq!(c.memory_room(&NODE, 10 * GIB), 8 * GIB);
    assert_eq!(c.memory_room(&NODE, GIB), 0);
    // An absolute budget is the same bound: MemTotal minus it is the reserve.
    let c = Config::from_toml_str("[node]\nmemory_budget = \"16G\"").unwrap();
    assert_eq!(c.memory_reserve(&NODE), NODE.mem_total - 16 * GIB);
    assert_eq!(c.memory_budget(&NODE), 16 * GIB);
    // The default: 1 GiB.
    assert_eq!(Config::default().memory_reserve(&NODE), GIB);
}

#[test]
fn mem_available_is_read_from_meminfo() {
    let meminfo =
        "MemTotal:       24608332 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n";
    assert_eq!(
        crate::config::mem_available_in(meminfo).unwrap(),
        20_000_000 * 1024
    );
    let e = crate::config::mem_available_in("MemTotal: 1 kB\n").unwrap_err();
    assert!(e.to_string().contains("MemAvailable"), "{e}");
    // This machine's.
    assert!(crate::config::mem_available().unwrap() > 0);
}

#[test]
fn a_memory_policy_without_max_is_warned_about() {
    let c = Config::from_toml_str(
        "[[policy]]\nname = \"open\"\nmatch = [\"/a/*\"]\n[policy.memory]\n\n\
         [[policy]]\nname = \"capped\"\nmatch = [\"/b/*\"]\n[policy.memory]\nmax = \"1G\"\n",
    )
    .unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key, "policy[0].memory.max");
    assert!(w[0].message.contains("unbounded"), "{}", w[0]);
    assert!(Config::default().warnings().is_empty());
}

#[test]
fn an_opt_in_counts_only_where_it_cannot_be_forged() {
    let d = AgentConfig::default();
    assert_eq!(
        d.opt_in_xattr, "trusted.scaler",
        "the default is a trusted attribute"
    );
    assert!(d.opt_in_is_trusted_name());
    // A trusted attribute counts on any directory: only CAP_SYS_ADMIN sets it.
    assert_eq!(d.opt_in_trust(65534, 0o40777), Ok(()));
    let user =
        Config::from_toml_str("[agent]\nopt_in_xattr = \"user.scaler\"\nopt_in_owners = [1000]")
            .unwrap()
            .agent;
    assert!(!user.opt_in_is_trusted_name());
    assert_eq!(user.opt_in_trust(0, 0o40755), Ok(()), "root-owned");
    assert_eq!(user.opt_in_trust(1000, 0o40755), Ok(()), "a listed owner");
    assert_eq!(
        user.opt_in_trust(65534, 0o40755),
        Err(Untrusted::Owner { uid: 65534 }),
        "a delegated cgroup's owner could have set it"
    );
    assert_eq!(
        user.opt_in_trust(0, 0o40775),
        Err(Untrusted::Writable { mode: 0o40775 }),
        "a group-writable directory"
    );
    assert_eq!(
        user.opt_in_trust(0, 0o40757),
        Err(Untrusted::Writable { mode: 0o40757 })
    );
    let why = user.opt_in_trust(65534, 0o40755).unwrap_err().to_string();
    assert!(
        why.contains("uid 65534") && why.contains("opt_in_owners"),
        "{why}"
    );
    // security. names are not trusted either (a user namespace's root may set them on its own
    // mount of the hierarchy).
    let sec = Config::from_toml_str("[agent]\nopt_in_xattr = \"security.scaler\"")
        .unwrap()
        .agent;
    assert!(sec.opt_in_trust(65534, 0o40755).is_err());
}

#[test]
fn kubelet_cgroup_roots_are_plain_paths_and_select_qos_policies() {
    for bad in [
        "\"kubelet\"",
        "\"/kubelet/\"",
        "\"/a/*\"",
        "\"/a/../b\"",
        "\"//a\"",
    ] {
        let e =
            Config::from_toml_str(&format!("[agent]\nkubelet_cgroup_roots = [{bad}]")).unwrap_err();
        assert!(
            e.to_string().contains("agent.kubelet_cgroup_roots[0]"),
            "{bad}: {e}"
        );
    }
    let uid = "0f3b1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let c = Config::from_toml_str(
        r#"
        [agent]
        kubelet_cgroup_roots = ["/", "/kubelet.slice"]
        [[policy]]
        name = "elastic"
        match = ["/**"]
        qos = ["burstable"]
        [policy.memory]
        "#,
    )
    .unwrap();
    let name = |p: &str| c.policy_for(p, None).map(|p| p.name.as_str());
    assert_eq!(
        name(&format!("/kubepods/burstable/pod{uid}")),
        Some("elastic")
    );
    assert_eq!(
        name(&format!("/kubelet.slice/kubepods/burstable/pod{uid}")),
        Some("elastic")
    );
    assert_eq!(
        name(&format!("/user.slice/kubepods/burstable/pod{uid}")),
        None
    );
    assert_eq!(
        c.pod_of(&format!("/kubelet.slice/kubepods/burstable/pod{uid}"))
            .and_then(|p| p.pod_uid)
            .as_deref(),
        Some(uid)
    );
    assert_eq!(
        c.pod_of(&format!("/user.slice/kubepods/burstable/pod{uid}")),
        None
    );
}

#[test]
fn the_kubelet_config_is_auto_detected_off_or_a_file() {
    use crate::config::KubeletSource;
    let c = Config::default();
    assert_eq!(
        c.kubelet_source(),
        KubeletSource::Auto("/var/lib/kubelet/config.yaml".into())
    );
    assert_eq!(c.kubelet_eviction_margin(), 128 * MIB);
    let c = Config::from_toml_str("[node]\nkubelet_config = \"\"").unwrap();
    assert_eq!(c.kubelet_source(), KubeletSource::Off);
    assert_eq!(c.kubelet_source().path(), None);
    let c = Config::from_toml_str(
        "[node]\nkubelet_config = \"/etc/kubernetes/kubelet.conf.yaml\"\nkubelet_eviction_margin = \"256M\"",
    )
    .unwrap();
    assert_eq!(
        c.kubelet_source(),
        KubeletSource::File("/etc/kubernetes/kubelet.conf.yaml".into())
    );
    assert_eq!(c.kubelet_eviction_margin(), 256 * MIB);
    let e = Config::from_toml_str("[node]\nkubelet_config = \"config.yaml\"").unwrap_err();
    assert_eq!(e.problems()[0].key, "node.kubelet_config", "{e}");
    assert!(e.to_string().contains("absolute"), "{e}");
}
