//! The agent's `/metrics` (OpenMetrics text), parsed into samples, and the names of the
//! metrics the tests read: every test names a metric through [`metric`], so a rename (or a
//! metric folded into a family with a label) touches only that module.

use std::{collections::BTreeMap, fmt};

/// A metric as the tests read it: the sample name, and labels that select it within its
/// family (empty while each metric has a name of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// The sample name (with `_total`, `_count`, `_sum` or `_bucket` where the exposition has
    /// one).
    pub name: &'static str,
    /// Labels every sample of this metric carries (e.g. `resource="memory"`).
    pub labels: &'static [(&'static str, &'static str)],
}

impl Metric {
    const fn named(name: &'static str) -> Metric {
        Metric { name, labels: &[] }
    }

    /// The family name of `# TYPE` lines (the sample name without a `_total` suffix).
    pub fn family(&self) -> &'static str {
        self.name.strip_suffix("_total").unwrap_or(self.name)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)?;
        if !self.labels.is_empty() {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            write!(f, "{{{}}}", l.join(","))?;
        }
        Ok(())
    }
}

/// The metrics the tests read.
pub mod metric {
    use super::Metric;

    /// `{resource, reason, outcome}`.
    pub const ACTIONS: Metric = Metric::named("scaler_actions_total");
    /// `{kind}` of a kernel event.
    pub const EVENTS: Metric = Metric::named("scaler_events_total");
    /// The reaction-latency histogram, `{resource}`.
    pub const REACTION_LATENCY_COUNT: Metric =
        Metric::named("scaler_reaction_latency_seconds_count");
    pub const REACTION_LATENCY_SUM: Metric = Metric::named("scaler_reaction_latency_seconds_sum");
    pub const REACTION_LATENCY_BUCKET: Metric =
        Metric::named("scaler_reaction_latency_seconds_bucket");
    /// Per managed cgroup, `{cgroup, policy, qos, namespace, pod, uid, container,
    /// container_id, resource, unit}`: the memory limit in bytes (no sample while unlimited).
    pub const MEMORY_LIMIT: Metric = Metric {
        name: "scaler_cgroup_limit",
        labels: &[("resource", "memory"), ("unit", "byte")],
    };
    /// 1 while the managed memory cgroup has no limit, else 0.
    pub const MEMORY_LIMIT_UNLIMITED: Metric = Metric {
        name: "scaler_cgroup_limit_unlimited",
        labels: &[("resource", "memory"), ("unit", "byte")],
    };
    pub const MEMORY_ORIGINAL_LIMIT_UNLIMITED: Metric = Metric {
        name: "scaler_cgroup_original_limit_unlimited",
        labels: &[("resource", "memory"), ("unit", "byte")],
    };
    /// U = usage/limit of a managed memory cgroup.
    pub const MEMORY_UTILIZATION: Metric = Metric {
        name: "scaler_cgroup_utilization_ratio",
        labels: &[("resource", "memory")],
    };
    pub const MEMORY_ORIGINAL_LIMIT: Metric = Metric {
        name: "scaler_cgroup_original_limit",
        labels: &[("resource", "memory"), ("unit", "byte")],
    };
    /// 1 while a managed memory cgroup's original limit is unknown (state file lost).
    pub const MEMORY_ORIGINAL_UNKNOWN: Metric = Metric {
        name: "scaler_cgroup_original_unknown",
        labels: &[("resource", "memory"), ("unit", "byte")],
    };
    /// The CPU quota in cores.
    pub const CPU_QUOTA: Metric = Metric {
        name: "scaler_cgroup_limit",
        labels: &[("resource", "cpu"), ("unit", "core")],
    };
    /// 1 while the managed cpu cgroup has no quota, else 0.
    pub const CPU_QUOTA_UNLIMITED: Metric = Metric {
        name: "scaler_cgroup_limit_unlimited",
        labels: &[("resource", "cpu"), ("unit", "core")],
    };
    pub const CPU_ORIGINAL_QUOTA_UNLIMITED: Metric = Metric {
        name: "scaler_cgroup_original_limit_unlimited",
        labels: &[("resource", "cpu"), ("unit", "core")],
    };
    /// `cpu.stat` throttled time of a managed cpu cgroup, in seconds (a counter).
    pub const CPU_THROTTLED: Metric = Metric::named("scaler_cgroup_cpu_throttled_seconds_total");
    pub const CPU_ORIGINAL_QUOTA: Metric = Metric {
        name: "scaler_cgroup_original_limit",
        labels: &[("resource", "cpu"), ("unit", "core")],
    };
    pub const MANAGED_MEMORY_CGROUPS: Metric = Metric {
        name: "scaler_managed_cgroups",
        labels: &[("resource", "memory")],
    };
    /// `{version, kernel, arch}`, always 1.
    pub const BUILD_INFO: Metric = Metric::named("scaler_build_info");
    pub const FAILED_WRITES: Metric = Metric::named("scaler_failed_writes_total");
    pub const RINGBUF_DROPPED: Metric = Metric::named("scaler_ringbuf_dropped_total");
    /// Observe-only events (cgroups the agent does not manage) shed in the kernel.
    pub const OBSERVE_SHED: Metric = Metric::named("scaler_observe_shed_total");
    pub const RECORDS_DROPPED: Metric = Metric::named("scaler_records_dropped_total");
    /// `{resource, reason}`: pressure at a binding limit the agent does not manage.
    pub const UNMANAGED_BINDING: Metric = Metric::named("scaler_unmanaged_binding_total");
    pub const DECODE_ERRORS: Metric = Metric::named("scaler_decode_errors_total");
    /// `{program}`.
    pub const BPF_PROGRAM_RUNS: Metric = Metric::named("scaler_bpf_program_runs_total");
    pub const BPF_PROGRAM_RUN_SECONDS: Metric =
        Metric::named("scaler_bpf_program_run_seconds_total");
    /// `{result}`: `ok` or `rejected`.
    pub const CONFIG_RELOADS: Metric = Metric::named("scaler_config_reloads_total");
    /// `{resource, reason}`: raises refused to a cgroup under pressure.
    pub const RAISES_REFUSED: Metric = Metric::named("scaler_raises_refused_total");
    pub const EXTERNAL_CHANGES: Metric = Metric::named("scaler_external_changes_total");
    pub const PROCESS_RESIDENT_MEMORY: Metric = Metric::named("process_resident_memory_bytes");
    pub const PROCESS_CPU: Metric = Metric::named("process_cpu_seconds_total");
    /// `{resource, reason}`: selected cgroups the agent does not protect now.
    pub const CGROUPS_UNPROTECTED: Metric = Metric::named("scaler_cgroups_unprotected");
    /// `{resource, reason}`: refusals to manage a selected cgroup (`untrusted_opt_in`,
    /// `agent_cgroup`, and the reasons of `CGROUPS_UNPROTECTED`).
    pub const CGROUPS_REFUSED: Metric = Metric::named("scaler_cgroups_refused_total");
    /// `{source}`: `config`, `kubelet_eviction`, `kubelet_reserved`: the parts of the node's
    /// memory reserve.
    pub const NODE_MEMORY_RESERVE: Metric = Metric::named("scaler_node_memory_reserve_bytes");
    /// What raises may add at the last sample.
    pub const NODE_MEMORY_ROOM: Metric = Metric::named("scaler_node_memory_room_bytes");
    pub const NODE_MEMORY_CAPACITY: Metric = Metric::named("scaler_node_memory_capacity_bytes");
    pub const NODE_MEMORY_UNMANAGED: Metric = Metric::named("scaler_node_memory_unmanaged_bytes");
    /// Reads of the kubelet's configuration that could not be used.
    pub const KUBELET_CONFIG_ERRORS: Metric = Metric::named("scaler_kubelet_config_errors_total");
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|x| x == v))
    }
}

/// A parsed `/metrics` response.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// `# TYPE` of each family.
    pub types: BTreeMap<String, String>,
    /// The text as served, for failure messages.
    pub text: String,
}

impl Scrape {
    /// Parses OpenMetrics (or Prometheus) text; panics on a line it cannot read.
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape {
            text: text.to_owned(),
            ..Scrape::default()
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((family, ty)) = rest.split_once(' ') {
                    s.types.insert(family.to_owned(), ty.trim().to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            s.samples.push(
                parse_sample(line)
                    .unwrap_or_else(|| panic!("a metrics line that does not parse: {line:?}")),
            );
        }
        s
    }

    /// The samples of `m` that carry every label in `labels`.
    pub fn samples(&self, m: Metric, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == m.name && s.has(m.labels) && s.has(labels))
            .collect()
    }

    /// The sum of the samples of `m` that carry every label in `labels` (`None`: no such
    /// sample).
    pub fn sum(&self, m: Metric, labels: &[(&str, &str)]) -> Option<f64> {
        let v = self.samples(m, labels);
        (!v.is_empty()).then(|| v.iter().map(|s| s.value).sum())
    }

    /// The one sample of `m` with `labels` (`None`: none); panics if several match.
    pub fn value(&self, m: Metric, labels: &[(&str, &str)]) -> Option<f64> {
        let v = self.samples(m, labels);
        assert!(
            v.len() <= 1,
            "{} samples of {m} with {labels:?}, expected one: {v:?}",
            v.len()
        );
        v.first().map(|s| s.value)
    }

    /// Every sample carrying the label `name="value"`, whatever its metric.
    pub fn with_label(&self, name: &str, value: &str) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.labels.get(name).is_some_and(|v| v == value))
            .collect()
    }

    /// The `# TYPE` of `m`'s family.
    pub fn type_of(&self, m: Metric) -> Option<&str> {
        self.types.get(m.family()).map(String::as_str)
    }
}

/// `name{a="x",b="y"} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let (key, after) = r.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.trim().to_owned(), value);
            r = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_labels_and_types() {
        let text = "# HELP scaler_actions Limit changes.\n# TYPE scaler_actions counter\n\
                    scaler_actions_total{resource=\"memory\",reason=\"pressure\",outcome=\"written\"} 3\n\
                    scaler_actions_total{resource=\"memory\",reason=\"early_warning\",outcome=\"written\"} 2\n\
                    scaler_cgroup_original_limit{cgroup=\"/a \\\"b\\\"\",policy=\"p\",resource=\"memory\",unit=\"byte\"} +Inf\n\
                    scaler_cgroup_original_limit{cgroup=\"/a \\\"b\\\"\",policy=\"p\",resource=\"cpu\",unit=\"core\"} 0.2\n\
                    scaler_managed_cgroups{resource=\"memory\"} 1\n# EOF\n";
        let s = Scrape::parse(text);
        assert_eq!(s.sum(metric::ACTIONS, &[]), Some(5.0));
        assert_eq!(
            s.value(metric::ACTIONS, &[("reason", "pressure")]),
            Some(3.0)
        );
        assert_eq!(s.sum(metric::ACTIONS, &[("outcome", "failed")]), None);
        assert_eq!(
            s.value(metric::MEMORY_ORIGINAL_LIMIT, &[("cgroup", "/a \"b\"")]),
            Some(f64::INFINITY)
        );
        assert_eq!(
            s.value(metric::CPU_ORIGINAL_QUOTA, &[("cgroup", "/a \"b\"")]),
            Some(0.2)
        );
        assert_eq!(s.value(metric::MANAGED_MEMORY_CGROUPS, &[]), Some(1.0));
        assert_eq!(s.value(metric::CPU_QUOTA, &[]), None);
        assert_eq!(s.type_of(metric::ACTIONS), Some("counter"));
        assert_eq!(s.with_label("policy", "p").len(), 2);
    }

    #[test]
    #[should_panic(expected = "expected one")]
    fn value_wants_one_sample() {
        let s = Scrape::parse(
            "scaler_actions_total{reason=\"a\"} 1\nscaler_actions_total{reason=\"b\"} 1\n",
        );
        s.value(metric::ACTIONS, &[]);
    }
}
