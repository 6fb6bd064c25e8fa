//! The eBPF competitor adapter: runs the workload under the eBPF scaler and collects what the
//! scaler measured itself.
//!
//! Today that is `scaler exec --memory START --memory-max MAX --json-summary FILE -- <workload>`
//! (a separate process with its own managed cgroup). The reaction latencies come from its
//! summary: the engine measures each one from the kernel timestamp of the triggering event
//! (early-warning crossing or first memcg reclaim) to CLOCK_MONOTONIC after its write returned.
//! This is the one place to change when the engine is driven in-process.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;

use serde::Deserialize;

use super::BenchError;

/// Percentiles as the exec summary reports them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SummaryPercentiles {
    /// Median, µs.
    #[serde(default)]
    pub p50: Option<f64>,
    /// 99th percentile, µs.
    #[serde(default)]
    pub p99: Option<f64>,
    /// Maximum, µs.
    #[serde(default)]
    pub max: Option<f64>,
}

/// One action in the exec summary.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct SummaryAction {
    /// `memory` or `cpu`.
    #[serde(default)]
    pub resource: Option<String>,
    /// Limit before.
    #[serde(default)]
    pub old: Option<u64>,
    /// Limit written.
    #[serde(default)]
    pub new: Option<u64>,
    /// The decider's reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Kernel event to write completion, µs.
    #[serde(default)]
    pub latency_us: Option<f64>,
}

/// The `--json-summary` of `scaler exec` (fields read leniently: unknown ones are ignored and
/// missing ones are `None`, so the benchmark keeps working while the summary grows).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ExecSummary {
    /// OOM kills in the managed cgroup.
    #[serde(default)]
    pub oom_kills: Option<u64>,
    /// Highest usage seen.
    #[serde(default)]
    pub peak_usage_bytes: Option<u64>,
    /// The limit at exit.
    #[serde(default)]
    pub final_limit_bytes: Option<u64>,
    /// Every limit change.
    #[serde(default)]
    pub actions: Vec<SummaryAction>,
    /// Percentiles over `actions[].latency_us`.
    #[serde(default)]
    pub reaction_latency_us: Option<SummaryPercentiles>,
    /// The agent's own CPU time, if the summary reports it.
    #[serde(default)]
    pub agent_cpu_us: Option<f64>,
}

impl ExecSummary {
    /// Reads and parses a summary file.
    pub fn read(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::ReadSummary {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| BenchError::ParseSummary {
            path: path.to_owned(),
            source,
        })
    }

    /// Highest limit written (or the final one).
    pub fn peak_limit(&self) -> Option<u64> {
        self.actions
            .iter()
            .filter(|a| a.resource.as_deref().is_none_or(|r| r == "memory"))
            .filter_map(|a| a.new)
            .chain(self.final_limit_bytes)
            .max()
    }
}

/// Whether `scaler exec` exists in `exe` and can run a memory workload (and a CPU one).
#[derive(Clone, Debug)]
pub struct ExecSupport {
    /// `Ok` if memory workloads can run, else why not.
    pub memory: Result<(), ExecUnsupported>,
    /// `Ok` if CPU workloads can run, else why not.
    pub cpu: Result<(), ExecUnsupported>,
}

/// Why `scaler exec` cannot run the eBPF scaler's cases (kept for every run).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ExecUnsupported {
    #[error("`{exe} exec --help` failed ({status}): {stderr}")]
    HelpFailed {
        exe: PathBuf,
        status: ExitStatus,
        /// The first line it wrote on stderr.
        stderr: String,
    },
    #[error("cannot run {exe}")]
    Run {
        exe: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("`scaler exec` lacks --memory, --headroom or --json-summary")]
    NoMemoryOptions,
    #[error(
        "`scaler exec` has no CPU option (--cpu) yet: the eBPF scaler cannot be given a CPU \
         quota to manage"
    )]
    NoCpuOption,
}

/// Probes `exe exec --help`.
pub fn probe(exe: &Path) -> ExecSupport {
    let out = Command::new(exe).args(["exec", "--help"]).output();
    let help = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            let why = ExecUnsupported::HelpFailed {
                exe: exe.to_owned(),
                status: o.status,
                stderr: String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            };
            return ExecSupport {
                memory: Err(why.clone()),
                cpu: Err(why),
            };
        }
        Err(e) => {
            let why = ExecUnsupported::Run {
                exe: exe.to_owned(),
                source: Arc::new(e),
            };
            return ExecSupport {
                memory: Err(why.clone()),
                cpu: Err(why),
            };
        }
    };
    let has = |flag: &str| help.contains(flag);
    let memory = if has("--json-summary") && has("--memory") && has("--headroom") {
        Ok(())
    } else {
        Err(ExecUnsupported::NoMemoryOptions)
    };
    let cpu = if has("--cpu") {
        memory.clone()
    } else {
        Err(ExecUnsupported::NoCpuOption)
    };
    ExecSupport { memory, cpu }
}

/// The arguments of `scaler exec` for one run of `command` (the program and its arguments).
pub fn exec_args(
    start: &str,
    max: &str,
    headroom: &str,
    cpu: Option<(&str, &str)>,
    cooldown: Option<&str>,
    summary: &Path,
    command: &[String],
) -> Vec<String> {
    let mut v = vec!["exec".to_owned()];
    match cpu {
        None => {
            v.extend([
                "--memory".into(),
                start.into(),
                "--memory-max".into(),
                max.into(),
                "--headroom".into(),
                headroom.into(),
            ]);
        }
        Some((cpu_start, cpu_max)) => {
            v.extend([
                "--cpu".into(),
                cpu_start.into(),
                "--cpu-max".into(),
                cpu_max.into(),
            ]);
        }
    }
    if let Some(c) = cooldown {
        v.extend(["--cooldown".into(), c.into()]);
    }
    v.extend([
        "--json-summary".into(),
        summary.display().to_string(),
        "--".into(),
    ]);
    v.extend(command.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_summary_and_tolerates_more() {
        let s: ExecSummary = serde_json::from_str(
            r#"{"oom_kills":0,"peak_usage_bytes":270000000,"final_limit_bytes":335544320,
                "actions":[{"resource":"memory","old":67108864,"new":134217728,
                            "reason":"early_warning","latency_us":41.5},
                           {"resource":"memory","old":134217728,"new":335544320,
                            "reason":"pressure","latency_us":60}],
                "reaction_latency_us":{"p50":41.5,"p99":60,"max":60},
                "exit_code":0,"something_new":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(s.oom_kills, Some(0));
        assert_eq!(s.actions.len(), 2);
        assert_eq!(s.actions[0].latency_us, Some(41.5));
        assert_eq!(s.peak_limit(), Some(335544320));
        assert_eq!(s.reaction_latency_us.unwrap().p99, Some(60.0));
        let empty: ExecSummary = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.peak_limit(), None);
    }

    #[test]
    fn exec_command_line() {
        let a = exec_args(
            "64M",
            "2G",
            "16777216",
            None,
            None,
            Path::new("/tmp/s.json"),
            &[
                "/bin/scaler".into(),
                "workload".into(),
                "steps".into(),
                "--total".into(),
                "256M".into(),
            ],
        );
        assert_eq!(
            a.join(" "),
            "exec --memory 64M --memory-max 2G --headroom 16777216 --json-summary /tmp/s.json -- /bin/scaler \
             workload steps --total 256M"
        );
        let b = exec_args(
            "64M",
            "2G",
            "16777216",
            None,
            Some("2000ms"),
            Path::new("/tmp/s.json"),
            &["/usr/bin/xz".into()],
        );
        assert_eq!(
            b.join(" "),
            "exec --memory 64M --memory-max 2G --headroom 16777216 --cooldown 2000ms --json-summary \
             /tmp/s.json -- /usr/bin/xz"
        );
    }
}
