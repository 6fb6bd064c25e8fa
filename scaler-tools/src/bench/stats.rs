//! Aggregation: per competitor and workload, medians over repeats of each run's figures, and
//! latency percentiles over every reaction of every repeat (pooled: a run has only a handful
//! of reactions).

use scaler::stats::{percentile, sorted};
use serde::Serialize;

use super::competitors::{CompetitorId, Resource};
use super::runner::{RunRecord, WorkloadSpec};

/// The latency percentiles reported (fractions, for [`scaler::stats::percentile`]): p50.
pub const P50: f64 = 0.50;
/// p99.
pub const P99: f64 = 0.99;

/// Median (mean of the middle two for an even count) of the finite values; `None` if there
/// are none. The tools' one median (the benchmark's and the overhead measurement's figures).
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Whether a competitor could run a workload kind, and why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Availability {
    /// It ran.
    pub available: bool,
    /// Why it did not.
    pub reason: Option<String>,
}

/// The figures of one competitor on one workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CaseSummary {
    /// Workload name.
    pub workload: String,
    /// Competitor name.
    pub competitor: String,
    /// Whether the competitor could run this workload.
    pub available: bool,
    /// Why not (`n/a` in the table).
    pub reason: Option<String>,
    /// Runs carried out.
    pub runs: u32,
    /// Runs that failed (error recorded in the run).
    pub failed_runs: u32,
    /// Runs in which the workload was OOM-killed at least once.
    pub runs_with_oom: u32,
    /// OOM kills over all runs.
    pub oom_kills_total: u64,
    /// Runs whose workload did not finish (non-zero exit, signal, timeout).
    pub runs_not_completed: u32,
    /// Reaction latencies pooled over runs.
    pub latency_samples: usize,
    /// Pooled p50, µs.
    pub latency_p50_us: Option<f64>,
    /// Pooled p99, µs.
    pub latency_p99_us: Option<f64>,
    /// Pooled max, µs.
    pub latency_max_us: Option<f64>,
    /// Onsets never answered (over all runs).
    pub unanswered_onsets: u32,
    /// Pressure came but the competitor never reacted to it in any run.
    pub never_reacted: bool,
    /// Median completion time (spawn to exit), ms.
    pub completion_ms: Option<f64>,
    /// Median of the workload's own elapsed time (first touch to last) over the runs whose
    /// workload finished, ms; `None` if none finished.
    pub work_ms: Option<f64>,
    /// Median PSI `some` stall total, ms.
    pub stall_ms: Option<f64>,
    /// Median peak limit.
    pub peak_limit: Option<f64>,
    /// Median peak usage (bytes).
    pub peak_usage_bytes: Option<f64>,
    /// Median of peak limit / peak usage.
    pub peak_limit_over_usage: Option<f64>,
    /// Median throttled time, ms (CPU).
    pub throttled_ms: Option<f64>,
    /// Median work done, loop iterations (CPU).
    pub cpu_iterations: Option<f64>,
    /// Median agent CPU time, ms.
    pub agent_cpu_ms: Option<f64>,
    /// This competitor's pooled p99 divided by the eBPF scaler's (how many times faster eBPF
    /// reacts); `None` without latencies on both sides.
    pub ebpf_p99_speedup: Option<f64>,
    /// Whether the eBPF scaler ran this workload with reactions to compare against.
    pub ebpf_compared: bool,
    /// This competitor's median workload time divided by the eBPF scaler's.
    pub ebpf_completion_ratio: Option<f64>,
    /// This competitor's OOM kills minus the eBPF scaler's.
    pub ebpf_oom_kills_saved: Option<i64>,
    /// The real suite's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<super::real::RealCase>,
}

/// Summarizes the runs of every (workload, competitor) pair.
pub fn summarize(
    workloads: &[WorkloadSpec],
    competitors: &[CompetitorId],
    availability: impl Fn(CompetitorId, Resource) -> Availability,
    runs: &[RunRecord],
) -> Vec<CaseSummary> {
    let mut out = Vec::new();
    for w in workloads {
        let mut cases: Vec<CaseSummary> = competitors
            .iter()
            .filter(|c| w.resource == Resource::Memory || c.does_cpu())
            .map(|&c| {
                let a = availability(c, w.resource);
                let rs: Vec<&RunRecord> = runs
                    .iter()
                    .filter(|r| r.workload == w.id && r.competitor == c.name())
                    .collect();
                case(w, c, a, &rs)
            })
            .collect();
        let ebpf = cases
            .iter()
            .find(|c| c.competitor == CompetitorId::Ebpf.name() && c.available && c.runs > 0)
            .cloned();
        if let Some(e) = ebpf {
            for c in &mut cases {
                if !c.available || c.runs == 0 {
                    continue;
                }
                c.ebpf_compared = e.latency_samples > 0;
                c.ebpf_p99_speedup = c
                    .latency_p99_us
                    .zip(e.latency_p99_us)
                    .filter(|(_, b)| *b > 0.0)
                    .map(|(a, b)| a / b);
                c.ebpf_completion_ratio = c
                    .work_ms
                    .zip(e.work_ms)
                    .filter(|(_, b)| *b > 0.0)
                    .map(|(a, b)| a / b);
                c.ebpf_oom_kills_saved = Some(c.oom_kills_total as i64 - e.oom_kills_total as i64);
            }
        }
        out.extend(cases);
    }
    out
}

fn case(w: &WorkloadSpec, c: CompetitorId, a: Availability, rs: &[&RunRecord]) -> CaseSummary {
    let mut s = CaseSummary {
        workload: w.id.clone(),
        competitor: c.name().to_owned(),
        available: a.available,
        reason: a.reason,
        ..Default::default()
    };
    if !s.available {
        return s;
    }
    let ok: Vec<&&RunRecord> = rs.iter().filter(|r| r.error.is_none()).collect();
    s.runs = rs.len() as u32;
    s.failed_runs = (rs.len() - ok.len()) as u32;
    if ok.is_empty() {
        if let Some(e) = rs.iter().find_map(|r| r.error.clone()) {
            s.reason = Some(e);
        }
        return s;
    }
    s.runs_with_oom = ok.iter().filter(|r| r.oom_kills > 0).count() as u32;
    s.oom_kills_total = ok.iter().map(|r| r.oom_kills).sum();
    s.runs_not_completed = ok
        .iter()
        .filter(|r| r.exit.code != Some(0) || r.exit.timed_out)
        .count() as u32;
    let lat = sorted(
        ok.iter()
            .flat_map(|r| r.reaction_latency_us.iter().copied())
            .collect(),
    );
    s.latency_samples = lat.len();
    s.latency_p50_us = percentile(&lat, P50);
    s.latency_p99_us = percentile(&lat, P99);
    s.latency_max_us = lat.last().copied();
    s.unanswered_onsets = ok.iter().map(|r| r.matching.unanswered).sum();
    s.never_reacted = lat.is_empty() && s.unanswered_onsets > 0;
    s.completion_ms = median(ok.iter().map(|r| r.completion_us as f64 / 1000.0));
    s.work_ms = median(
        ok.iter()
            .filter(|r| r.exit.code == Some(0))
            .filter_map(|r| r.workload_report.as_ref())
            .map(|w| w.elapsed_us as f64 / 1000.0),
    );
    s.stall_ms = median(
        ok.iter()
            .filter_map(|r| r.stall_some_us.map(|v| v as f64 / 1000.0)),
    );
    s.peak_limit = median(ok.iter().map(|r| r.peak_limit as f64));
    s.peak_usage_bytes = median(
        ok.iter()
            .filter_map(|r| r.peak_usage_bytes.map(|v| v as f64)),
    );
    s.peak_limit_over_usage = median(ok.iter().filter_map(|r| {
        r.peak_usage_bytes
            .filter(|u| *u > 0 && w.resource == Resource::Memory)
            .map(|u| r.peak_limit as f64 / u as f64)
    }));
    s.throttled_ms = median(
        ok.iter()
            .filter_map(|r| r.throttled_us.map(|v| v as f64 / 1000.0)),
    );
    s.cpu_iterations = median(
        ok.iter()
            .filter_map(|r| r.workload_report.as_ref().and_then(|w| w.iterations))
            .map(|v| v as f64),
    );
    s.agent_cpu_ms = median(ok.iter().filter_map(|r| r.agent_cpu_us.map(|v| v / 1000.0)));
    if w.real.is_some() {
        s.real = Some(super::real::summarize(w, c, &ok));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's own percentile before it used `scaler::stats::percentile`: nearest
    /// rank, `p` in 0..=100.
    fn former_percentile(sorted: &[f64], p: f64) -> Option<f64> {
        if sorted.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, P50), Some(50.0));
        assert_eq!(percentile(&v, P99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&[7.0], P99), Some(7.0));
        assert_eq!(percentile::<f64>(&[], P50), None);
        // The same figures as the former 0..=100 helper, at every sample count.
        for n in 0..=2000u32 {
            let v = sorted((0..n).map(|i| f64::from(i * 7919 % 1009)).collect());
            for (fraction, p) in [(P50, 50.0), (P99, 99.0)] {
                assert_eq!(
                    percentile(&v, fraction),
                    former_percentile(&v, p),
                    "n={n} p={p}"
                );
            }
        }
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([]), None);
    }

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            id: "steps".into(),
            resource: Resource::Memory,
            args: vec![],
            start: 64,
            max: 1024,
            headroom: 16,
            period_us: 100_000,
            real: None,
        }
    }

    fn run(c: CompetitorId, oom: u64, lat: &[f64], completion_us: u64) -> RunRecord {
        RunRecord {
            competitor: c.name().into(),
            workload: "steps".into(),
            oom_kills: oom,
            reaction_latency_us: lat.to_vec(),
            completion_us,
            peak_limit: 256,
            peak_usage_bytes: Some(200),
            ..Default::default()
        }
    }

    #[test]
    fn summary_pools_latencies_and_compares_with_ebpf() {
        let runs = vec![
            run(CompetitorId::Ebpf, 0, &[10.0, 20.0], 300_000),
            run(CompetitorId::Ebpf, 0, &[30.0], 310_000),
            run(CompetitorId::Poll1s, 1, &[], 50_000),
            run(CompetitorId::Poll100ms, 0, &[40_000.0, 60_000.0], 320_000),
        ];
        let comps = [
            CompetitorId::Static,
            CompetitorId::Poll1s,
            CompetitorId::Poll100ms,
            CompetitorId::V2MemoryEvents,
            CompetitorId::Ebpf,
        ];
        let avail = |c: CompetitorId, _| Availability {
            available: c != CompetitorId::V2MemoryEvents,
            reason: (c == CompetitorId::V2MemoryEvents).then(|| "needs cgroup v2".into()),
        };
        let s = summarize(&[spec()], &comps, avail, &runs);
        assert_eq!(s.len(), 5);
        let e = &s[4];
        assert_eq!(e.latency_samples, 3);
        assert_eq!(e.latency_p99_us, Some(30.0));
        assert_eq!(e.completion_ms, Some(305.0));
        let p = &s[2];
        assert_eq!(p.ebpf_p99_speedup, Some(2000.0));
        assert_eq!(s[1].runs_with_oom, 1);
        assert_eq!(s[1].ebpf_oom_kills_saved, Some(1));
        assert_eq!(s[1].latency_p99_us, None);
        assert_eq!(s[1].ebpf_p99_speedup, None);
        assert!(!s[3].available);
        assert_eq!(s[3].reason.as_deref(), Some("needs cgroup v2"));
        // Static never ran: available but no runs, no figures.
        assert_eq!(s[0].runs, 0);
        assert_eq!(s[0].completion_ms, None);
        assert_eq!(e.peak_limit_over_usage, Some(1.28));
    }
}
