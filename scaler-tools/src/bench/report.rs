//! Output: the terminal table, the JSON document (schema in `docs/bench-json.md`) and the
//! Markdown report with hand-written SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use scaler::cgroupfs::CgroupVersion;
use serde::Serialize;

use super::competitors::{causes, PsiUnavailable, Resource};
use super::observer::Sample;
use super::runner::{RunRecord, WorkloadSpec};
use super::stats::CaseSummary;
use super::BenchError;

/// Version tag of the JSON document.
pub const SCHEMA: &str = "scaler-bench/1";

/// Availability of one competitor, per workload kind.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CompetitorInfo {
    /// Name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// On memory workloads.
    pub memory: super::stats::Availability,
    /// On CPU workloads (`available: false` with a reason where the mechanism has no CPU form).
    pub cpu: super::stats::Availability,
}

/// Facts about the machine the benchmark ran on.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HostInfo {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: u64,
    /// MemTotal, bytes.
    pub memory_bytes: u64,
    /// Memory controller version (`v1`/`v2`), if any.
    #[serde(serialize_with = "serialize_version")]
    #[schemars(with = "Option<String>")]
    pub memory_cgroup: Option<CgroupVersion>,
    /// CPU controller version, if any.
    #[serde(serialize_with = "serialize_version")]
    #[schemars(with = "Option<String>")]
    pub cpu_cgroup: Option<CgroupVersion>,
    /// Whether a unified-hierarchy cgroup (PSI) was available.
    pub unified_psi: bool,
    /// The PSI trigger window accepted (µs), or why none (`{"Ok": µs}` or `{"Err": "why"}`).
    #[serde(serialize_with = "serialize_ok_or_causes")]
    #[schemars(with = "Result<u64, String>")]
    pub psi_window_us: Result<u64, PsiUnavailable>,
}

/// How the figures were measured (copied into the JSON so a file explains itself).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Method {
    /// Definition of pressure onset.
    pub onset: &'static str,
    /// Definition of limit written.
    pub written: &'static str,
    /// Aggregation.
    pub aggregation: &'static str,
    /// The scale-up rule.
    pub rule: String,
}

/// The whole JSON document.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Document<'a> {
    /// [`scaler::schema::SCHEMA_VERSION`]: the same number as in [`SCHEMA`].
    pub schema_version: u32,
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// The command line.
    pub command: String,
    /// Seconds since the epoch at the start.
    pub started_unix_s: u64,
    /// Whole run, s.
    pub duration_s: f64,
    /// The machine.
    pub host: HostInfo,
    /// Measurement definitions.
    pub method: Method,
    /// Options in force.
    pub options: &'a super::BenchOptions,
    /// Competitors and their availability.
    pub competitors: Vec<CompetitorInfo>,
    /// Workloads.
    pub workloads: &'a [WorkloadSpec],
    /// Workloads left out because a program they need is missing (real suite).
    pub skipped: &'a [super::real::Skipped],
    /// Every run, in the order run.
    pub runs: &'a [RunRecord],
    /// Per workload and competitor.
    pub summary: &'a [CaseSummary],
}

/// Text for the onset definition.
pub const ONSET_TEXT: &str = "the kernel timestamp (CLOCK_MONOTONIC) of the first early-warning \
(usage >= limit - headroom) or memcg-reclaim event of the limit in force, reported by the \
project's eBPF programs watching the run's cgroup (onset_method kernel_event; the eBPF scaler's \
own summary uses the same events, from the same programs). Where those programs cannot load: \
cgroup v1 memory, an observer's own memory.usage_in_bytes threshold eventfd on a SCHED_FIFO \
thread (time at its wakeup); otherwise the first 1 ms sample at or above the mark (CPU: the \
first sample showing a new throttled period)";

/// Text for the written definition.
pub const WRITTEN_TEXT: &str = "CLOCK_MONOTONIC right after the write of the new limit to the \
pre-opened limit file returned";

/// Text for aggregation.
pub const AGGREGATION_TEXT: &str = "per workload and competitor: latency percentiles over all \
reactions of all repeats pooled (nearest rank); other figures are medians over repeats; \
competitors are interleaved (rotated each repeat)";

/// Formats microseconds compactly.
pub fn fmt_us(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(v) if v < 1000.0 => format!("{v:.0}us"),
        Some(v) if v < 1_000_000.0 => format!("{:.1}ms", v / 1000.0),
        Some(v) => format!("{:.2}s", v / 1e6),
    }
}

/// A latency cell: `never` when pressure came and the competitor never reacted.
fn lat(c: &CaseSummary, v: Option<f64>) -> String {
    if c.never_reacted {
        "never".into()
    } else {
        fmt_us(v)
    }
}

fn fmt_ms(ms: Option<f64>) -> String {
    fmt_us(ms.map(|m| m * 1000.0))
}

fn fmt_mib(b: Option<f64>) -> String {
    b.map_or("-".into(), |b| format!("{:.0}M", b / (1u64 << 20) as f64))
}

fn fmt_limit(c: &CaseSummary, w: Option<&WorkloadSpec>) -> String {
    match w.map(|w| (w.resource, w.period_us)) {
        Some((Resource::Cpu, period)) => c
            .peak_limit
            .map_or("-".into(), |q| format!("{:.2}cpu", q / period as f64)),
        _ => match (c.peak_limit, c.peak_usage_bytes) {
            (Some(l), Some(u)) => format!("{}/{}", fmt_mib(Some(l)), fmt_mib(Some(u))),
            (Some(l), None) => fmt_mib(Some(l)),
            _ => "-".into(),
        },
    }
}

/// The terminal / Markdown table. `markdown` selects pipes.
pub fn table(summary: &[CaseSummary], workloads: &[WorkloadSpec], markdown: bool) -> String {
    let head = [
        "workload",
        "competitor",
        "OOM runs",
        "OOM kills",
        "react p50",
        "p99",
        "max",
        "stall",
        "completion",
        "peak limit/usage",
        "throttled",
        "agent CPU",
        "eBPF p99 x",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for c in summary {
        let w = workloads.iter().find(|w| w.id == c.workload);
        if !c.available || c.runs == 0 || c.failed_runs == c.runs {
            let reason = c.reason.clone().unwrap_or_else(|| "not run".into());
            let mut r = vec![c.workload.clone(), c.competitor.clone()];
            r.push(format!("n/a: {reason}"));
            rows.push(r);
            continue;
        }
        rows.push(vec![
            c.workload.clone(),
            c.competitor.clone(),
            format!("{}/{}", c.runs_with_oom, c.runs - c.failed_runs),
            c.oom_kills_total.to_string(),
            lat(c, c.latency_p50_us),
            lat(c, c.latency_p99_us),
            lat(c, c.latency_max_us),
            fmt_ms(c.stall_ms),
            fmt_ms(c.work_ms.or(c.completion_ms)),
            fmt_limit(c, w),
            fmt_ms(c.throttled_ms),
            fmt_ms(c.agent_cpu_ms),
            match c.ebpf_p99_speedup {
                Some(x) => format!("{x:.1}x"),
                None if c.never_reacted && c.ebpf_compared => "inf".into(),
                None => "-".into(),
            },
        ]);
    }
    render(&head, &rows, markdown)
}

/// The real suite's columns.
const REAL_HEAD: [&str; 14] = [
    "workload",
    "competitor",
    "survived",
    "OOM kills",
    "raises",
    "react p50",
    "p99",
    "peak",
    "final limit",
    "limit/peak",
    "right-size",
    "MiB*s over",
    "completion",
    "P = W/T",
];

/// A rate with its unit, compactly (`41.2k requests/s`).
pub fn fmt_rate(v: Option<f64>, unit: Option<&str>) -> String {
    let Some(v) = v else {
        return "-".into();
    };
    let unit = unit.unwrap_or("");
    if v >= 1e6 {
        format!("{:.2}M {unit}/s", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k {unit}/s", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0} {unit}/s")
    } else {
        format!("{v:.1} {unit}/s")
    }
}

/// The real suite's table (terminal or Markdown): one row per (workload, competitor).
pub fn real_table(summary: &[CaseSummary], markdown: bool) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for c in summary {
        let r = c.real.clone().unwrap_or_default();
        if !c.available || c.runs == 0 || c.failed_runs == c.runs {
            let reason = c.reason.clone().unwrap_or_else(|| "not run".into());
            rows.push(vec![
                c.workload.clone(),
                c.competitor.clone(),
                format!("n/a: {reason}"),
            ]);
            continue;
        }
        let right_size = match (r.time_to_right_size_ms, &r.right_size_note) {
            (_, Some(n)) if n.starts_with("n/a") => "n/a".to_owned(),
            (Some(ms), None) => fmt_ms(Some(ms)),
            (Some(ms), Some(n)) => format!("{} ({n} in some runs)", fmt_ms(Some(ms))),
            (None, Some(n)) => n.clone(),
            (None, None) => "-".to_owned(),
        };
        let mib_s = match (r.mib_s_above_usage_work, r.mib_s_above_usage_hold) {
            (Some(w), Some(h)) => format!("{w:.0} +{h:.0} hold"),
            (Some(w), None) => format!("{w:.0}"),
            _ => "-".to_owned(),
        };
        rows.push(vec![
            c.workload.clone(),
            c.competitor.clone(),
            format!("{}/{}", r.survived_runs, c.runs - c.failed_runs),
            c.oom_kills_total.to_string(),
            r.raises.map_or("-".into(), |v| format!("{v:.0}")),
            lat(c, c.latency_p50_us),
            lat(c, c.latency_p99_us),
            fmt_mib(c.peak_usage_bytes),
            fmt_mib(r.limit_at_completion),
            r.limit_over_peak.map_or("-".into(), |v| format!("{v:.2}x")),
            right_size,
            mib_s,
            fmt_ms(r.work_ms),
            fmt_rate(r.rate_per_s, r.work_unit.as_deref()),
        ]);
    }
    render(&REAL_HEAD, &rows, markdown)
}

/// A table: `rows` shorter than `head` end in a note spanning the rest.
fn render(head: &[&str], rows: &[Vec<String>], markdown: bool) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows.iter().filter(|r| r.len() == head.len()) {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        if markdown {
            let mut cells = cells.to_vec();
            cells.resize(head.len(), String::new());
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        } else {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() && cells.len() < head.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
                }
            }
            let _ = writeln!(out, "{}", l.trim_end());
        }
    };
    line(
        &head.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        &mut out,
    );
    if markdown {
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    }
    for r in rows {
        line(r, &mut out);
    }
    out
}

/// What the real suite's columns mean (printed under the table).
pub const REAL_NOTES: &str = "`survived`: runs whose work exited 0 with no OOM kill / runs. \
`raises`: limit increases (median). `peak`: peak usage. `final limit`: the limit in force when \
the work completed; `limit/peak` its ratio to the peak usage. `right-size`: from the \
workload's last raise to the first sample, after the work, with limit <= max(1.3 x working \
set, starting limit) (working set: usage minus inactive file pages); only the eBPF scaler \
lowers limits, so only its runs hold the cgroup after the work (until right-sized, or the \
cooldown + 45 s): static never changes its limit and the in-process competitors apply a \
scale-up-only rule (n/a). `MiB*s over`: the integral of limit minus usage, from the start to \
the work's completion (`+N hold`: during the hold). `completion`: the workload's own time T \
(the program's start to exit; numpy: to all memory touched; redis: the load generator's run); \
`P = W/T`: its work per second.";

/// Writes the JSON document.
pub fn write_json(path: &Path, doc: &Document<'_>) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(doc).map_err(BenchError::Json)?;
    std::fs::write(path, text).map_err(|source| BenchError::Io {
        path: path.to_owned(),
        source,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLORS: [&str; 7] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
];

/// Reaction-latency distribution per competitor: one row each, every reaction a dot on a
/// logarithmic axis, p50 and p99 marked.
pub fn latency_svg(title: &str, series: &[(String, Vec<f64>)]) -> String {
    let (left, right, row_h, top) = (150.0, 30.0, 34.0, 40.0);
    let width = 860.0;
    let plot_w = width - left - right;
    let height = top + row_h * series.len().max(1) as f64 + 50.0;
    let (lo, hi) = (0.0f64, 7.0f64); // 1 us .. 10 s
    let x = |us: f64| left + plot_w * ((us.max(1.0).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>"#,
        width / 2.0,
        esc(title)
    );
    let axis_y = top + row_h * series.len().max(1) as f64;
    for (i, label) in ["1us", "10us", "100us", "1ms", "10ms", "100ms", "1s", "10s"]
        .iter()
        .enumerate()
    {
        let xx = x(10f64.powi(i as i32));
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{axis_y}" stroke="#ddd"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            axis_y + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">reaction latency (pressure onset to limit written), log scale</text>"#,
        left + plot_w / 2.0,
        axis_y + 36.0
    );
    for (i, (name, values)) in series.iter().enumerate() {
        let cy = top + row_h * i as f64 + row_h / 2.0;
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{} (n={})</text>"#,
            left - 8.0,
            cy + 4.0,
            esc(name),
            values.len()
        );
        if values.is_empty() {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#888">no reactions</text>"##,
                left + 6.0,
                cy + 4.0
            );
            continue;
        }
        let sorted = scaler::stats::sorted(values.clone());
        for (j, v) in sorted.iter().enumerate() {
            // Deterministic jitter so equal values stay visible.
            let jitter = ((j * 7919) % 17) as f64 - 8.0;
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}" fill-opacity="0.6"/>"#,
                x(*v),
                cy + jitter
            );
        }
        for (p, dash) in [
            (super::stats::P50, ""),
            (super::stats::P99, r#" stroke-dasharray="3,2""#),
        ] {
            if let Some(v) = scaler::stats::percentile(&sorted, p) {
                let xx = x(v);
                let _ = writeln!(
                    s,
                    r#"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="black" stroke-width="2"{dash}/>"#,
                    cy - 12.0,
                    cy + 12.0
                );
            }
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">solid: p50, dashed: p99</text>"#,
        width - right,
        top - 6.0
    );
    s.push_str("</svg>\n");
    s
}

/// Limit and usage over time, one panel per competitor.
pub fn timeline_svg(title: &str, panels: &[(String, Vec<Sample>)], unit_bytes: bool) -> String {
    let marked: Vec<(String, Vec<Sample>, Option<u64>)> = panels
        .iter()
        .map(|(n, s)| (n.clone(), s.clone(), None))
        .collect();
    timeline_svg_marked(title, &marked, unit_bytes)
}

/// [`timeline_svg`] with the working set (green) where samples carry it, and a dashed line
/// at each panel's mark (µs since the run's start: the work's completion).
pub fn timeline_svg_marked(
    title: &str,
    panels: &[(String, Vec<Sample>, Option<u64>)],
    unit_bytes: bool,
) -> String {
    let (left, right, panel_h, gap, top) = (70.0, 20.0, 120.0, 40.0, 40.0);
    let width = 860.0;
    let plot_w = width - left - right;
    let height = top + (panel_h + gap) * panels.len().max(1) as f64 + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>"#,
        width / 2.0,
        esc(title)
    );
    let scale = if unit_bytes { (1u64 << 20) as f64 } else { 1.0 };
    let unit = if unit_bytes { "MiB" } else { "" };
    for (i, (name, samples, mark)) in panels.iter().enumerate() {
        let y0 = top + (panel_h + gap) * i as f64;
        let has_ws = samples.iter().any(|x| x.working_set.is_some());
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#999"/><text x="{left}" y="{:.1}">{} (blue: usage, {}red: limit{})</text>"##,
            y0 - 4.0,
            esc(name),
            if has_ws { "green: working set, " } else { "" },
            if mark.is_some() {
                "; dashed: work completed"
            } else {
                ""
            }
        );
        if samples.is_empty() {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#888">no samples</text>"##,
                left + 8.0,
                y0 + 20.0
            );
            continue;
        }
        // Time from the first sample (the eBPF scaler's run starts after its programs load);
        // "unlimited" limits (at or above 2^60) are not plotted.
        let t_first = samples.first().map_or(0, |x| x.t_us);
        let t_max = (samples.last().map_or(1, |x| x.t_us) - t_first).max(1) as f64;
        let bounded = |v: u64| v < 1 << 60;
        let v_max = samples
            .iter()
            .map(|x| {
                if bounded(x.limit) {
                    x.usage.max(x.limit)
                } else {
                    x.usage
                }
            })
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let px = |t: u64| left + plot_w * (t - t_first) as f64 / t_max;
        let py = |v: u64| y0 + panel_h - panel_h * (v as f64 / v_max);
        for (pick, color) in [(0usize, "#1f77b4"), (2, "#2ca02c"), (1, "#d62728")] {
            if pick == 2 && !has_ws {
                continue;
            }
            let mut pts = String::new();
            for smp in samples {
                let v = match pick {
                    0 => smp.usage,
                    1 => smp.limit,
                    _ => match smp.working_set {
                        Some(w) => w,
                        None => continue,
                    },
                };
                if !bounded(v) {
                    continue;
                }
                let _ = write!(pts, "{:.1},{:.1} ", px(smp.t_us), py(v));
            }
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"#,
                pts.trim_end()
            );
        }
        if let Some(m) = mark.filter(|m| *m >= t_first) {
            let xx = px(m).min(left + plot_w);
            let _ = writeln!(
                s,
                r#"<line x1="{xx:.1}" y1="{y0}" x2="{xx:.1}" y2="{:.1}" stroke="black" stroke-dasharray="4,3"/>"#,
                y0 + panel_h
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}{unit}</text><text x="{:.1}" y="{:.1}" text-anchor="end">0</text><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0} ms</text>"#,
            left - 4.0,
            y0 + 10.0,
            v_max / scale,
            left - 4.0,
            y0 + panel_h,
            width - right,
            y0 + panel_h + 14.0,
            t_max / 1000.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `DIR/report.md`, `DIR/latency-<workload>.svg` and `DIR/timeline.svg`.
pub fn write_report(
    dir: &Path,
    doc: &Document<'_>,
    timeline_workload: &str,
) -> Result<(), BenchError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BenchError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut md = String::new();
    let _ = writeln!(md, "# scaler bench report\n");
    let _ = writeln!(md, "Command: `{}`\n", doc.command);
    let _ = writeln!(
        md,
        "Host: Linux {}, {} CPUs, {:.1} GiB; memory cgroup {}, cpu cgroup {}; PSI trigger \
         window: {}. Duration {:.0} s.\n",
        doc.host.kernel,
        doc.host.cpus,
        doc.host.memory_bytes as f64 / (1u64 << 30) as f64,
        version(doc.host.memory_cgroup),
        version(doc.host.cpu_cgroup),
        match &doc.host.psi_window_us {
            Ok(w) => format!("{} ms", w / 1000),
            Err(e) => format!("none ({})", causes(e)),
        },
        doc.duration_s
    );
    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(md, "- Pressure onset: {}.", doc.method.onset);
    let _ = writeln!(md, "- Limit written: {}.", doc.method.written);
    let _ = writeln!(
        md,
        "- Scale-up rule (all competitors): {}.",
        doc.method.rule
    );
    let _ = writeln!(md, "- Aggregation: {}.\n", doc.method.aggregation);
    let _ = writeln!(md, "## Competitors\n");
    for c in &doc.competitors {
        let av = |a: &super::stats::Availability| match (&a.available, &a.reason) {
            (true, _) => "yes".to_owned(),
            (false, Some(r)) => format!("n/a ({r})"),
            (false, None) => "n/a".to_owned(),
        };
        let _ = writeln!(
            md,
            "- `{}`: {}. Memory: {}. CPU: {}.",
            c.name,
            c.description,
            av(&c.memory),
            av(&c.cpu)
        );
    }
    let _ = writeln!(md, "\n## Workloads\n");
    for w in doc.workloads {
        let command = match &w.real {
            None => format!("`scaler workload {}`", w.args.join(" ")),
            Some(r) => {
                let quote = |a: &String| {
                    if a.contains('\n') {
                        "'<the embedded program in scaler-tools/src/bench/real.rs>'".to_owned()
                    } else if a.is_empty() || a.contains(char::is_whitespace) {
                        format!("'{a}'")
                    } else {
                        a.clone()
                    }
                };
                let line = |v: &[String]| v.iter().map(quote).collect::<Vec<_>>().join(" ");
                match &r.driver {
                    Some(d) => format!(
                        "`{}`, filled by `{}` (outside its cgroup)",
                        line(&r.command),
                        line(d)
                    ),
                    None => format!("`{}`", line(&r.command)),
                }
            }
        };
        let _ = writeln!(
            md,
            "- `{}`: {}; start {}, max {}{}.",
            w.id,
            command,
            show(w, w.start),
            show(w, w.max),
            if w.resource == Resource::Memory {
                format!(", headroom {}", show(w, w.headroom))
            } else {
                String::new()
            }
        );
    }
    for s in doc.skipped {
        let _ = writeln!(md, "- `{}`: skipped: {}.", s.workload, s.reason);
    }
    let _ = writeln!(md, "\n## Results\n");
    if doc.options.suite == super::Suite::Real {
        md.push_str(&real_table(doc.summary, true));
        let _ = writeln!(md, "\n{REAL_NOTES}\n");
        let _ = writeln!(
            md,
            "Reaction latencies (`react`) are measured as in the synthetic suite (see Method).\n"
        );
        let _ = writeln!(md, "## Limit and usage over time\n");
        for w in doc.workloads {
            let panels: Vec<(String, Vec<Sample>, Option<u64>)> = doc
                .runs
                .iter()
                .filter(|r| r.workload == w.id)
                .filter_map(|r| {
                    let t = r.timeline.clone()?;
                    Some((
                        r.competitor.clone(),
                        t,
                        r.real.as_ref().and_then(|x| x.completed_at_us),
                    ))
                })
                .collect();
            if panels.is_empty() {
                continue;
            }
            let name = format!("timeline-{}.svg", w.id);
            let p = dir.join(&name);
            std::fs::write(
                &p,
                timeline_svg_marked(
                    &format!("{}: usage, working set and limit (first run)", w.id),
                    &panels,
                    true,
                ),
            )
            .map_err(io(&p))?;
            let _ = writeln!(md, "![{} usage and limit over time]({name})\n", w.id);
        }
        let p = dir.join("report.md");
        return std::fs::write(&p, md).map_err(io(&p));
    }
    md.push_str(&table(doc.summary, doc.workloads, true));
    let _ = writeln!(
        md,
        "\n`OOM runs`: runs with at least one OOM kill / runs. `react`: reaction latency \
         percentiles over every reaction (`never`: pressure came, no reaction before the \
         workload ended or was killed). `stall`: PSI `some` total of the run's cgroup. \
         `completion`: the workload's own time from first touch to last (spawn to exit when it did \
         not finish). `eBPF p99 x`: this competitor's p99 divided by the eBPF scaler's.\n"
    );
    let _ = writeln!(md, "## Plots\n");
    for w in doc.workloads {
        let series: Vec<(String, Vec<f64>)> = doc
            .summary
            .iter()
            .filter(|c| c.workload == w.id && c.available && c.runs > 0)
            .map(|c| {
                let v = doc
                    .runs
                    .iter()
                    .filter(|r| {
                        r.workload == w.id && r.competitor == c.competitor && r.error.is_none()
                    })
                    .flat_map(|r| r.reaction_latency_us.iter().copied())
                    .collect();
                (c.competitor.clone(), v)
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let name = format!("latency-{}.svg", w.id);
        let p = dir.join(&name);
        std::fs::write(
            &p,
            latency_svg(&format!("{}: reaction latency", w.id), &series),
        )
        .map_err(io(&p))?;
        let _ = writeln!(md, "![{} reaction latency]({name})\n", w.id);
    }
    let panels: Vec<(String, Vec<Sample>)> = doc
        .runs
        .iter()
        .filter(|r| r.workload == timeline_workload)
        .filter_map(|r| r.timeline.clone().map(|t| (r.competitor.clone(), t)))
        .collect();
    if !panels.is_empty() {
        let p = dir.join("timeline.svg");
        std::fs::write(
            &p,
            timeline_svg(
                &format!("{timeline_workload}: usage and limit over one run"),
                &panels,
                true,
            ),
        )
        .map_err(io(&p))?;
        let _ = writeln!(md, "![usage and limit over time](timeline.svg)\n");
    }
    let p = dir.join("report.md");
    std::fs::write(&p, md).map_err(io(&p))
}

fn version(v: Option<CgroupVersion>) -> &'static str {
    match v {
        Some(CgroupVersion::V1) => "v1",
        Some(CgroupVersion::V2) => "v2",
        None => "none",
    }
}

/// `"v1"`, `"v2"` or `null`.
fn serialize_version<S: serde::Serializer>(
    v: &Option<CgroupVersion>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(version(*v)),
        None => s.serialize_none(),
    }
}

/// A `Result` as serde writes one (`{"Ok": value}`), with the error as its line of
/// [`causes`] (`{"Err": "why"}`).
fn serialize_ok_or_causes<S: serde::Serializer, T: Serialize, E: std::error::Error>(
    r: &Result<T, E>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match r {
        Ok(v) => s.serialize_newtype_variant("Result", 0, "Ok", v),
        Err(e) => s.serialize_newtype_variant("Result", 1, "Err", &causes(e)),
    }
}

fn show(w: &WorkloadSpec, v: u64) -> String {
    match w.resource {
        Resource::Memory => scaler::units::format_size(v),
        Resource::Cpu => format!("{:.2} CPU", v as f64 / w.period_us as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svgs_are_well_formed_enough() {
        let s = latency_svg(
            "t <x>",
            &[("a".into(), vec![1.0, 50.0, 2e6]), ("b".into(), vec![])],
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<circle").count(), 3);
        assert!(s.contains("t &lt;x&gt;"));
        assert!(s.contains("no reactions"));
        let t = timeline_svg(
            "tl",
            &[(
                "a".into(),
                vec![
                    Sample {
                        t_us: 0,
                        usage: 0,
                        limit: 64 << 20,
                        working_set: None,
                    },
                    Sample {
                        t_us: 1000,
                        usage: 60 << 20,
                        limit: 128 << 20,
                        working_set: None,
                    },
                ],
            )],
            true,
        );
        assert_eq!(t.matches("<polyline").count(), 2);
        assert!(t.contains("128MiB"));
    }

    #[test]
    fn real_timeline_draws_the_working_set_and_the_completion() {
        let smp = |t_us, ws| Sample {
            t_us,
            usage: 100 << 20,
            limit: 200 << 20,
            working_set: ws,
        };
        let t = timeline_svg_marked(
            "real",
            &[
                (
                    "ebpf".into(),
                    vec![smp(0, Some(90 << 20)), smp(5000, Some(80 << 20))],
                    Some(2000),
                ),
                ("static".into(), vec![smp(0, None), smp(10, None)], None),
            ],
            true,
        );
        // usage + working set + limit, then usage + limit.
        assert_eq!(t.matches("<polyline").count(), 5);
        assert_eq!(t.matches("stroke-dasharray=\"4,3\"").count(), 1);
        assert!(t.contains("green: working set"));
    }

    #[test]
    fn real_table_columns() {
        use super::super::real::RealCase;
        let rows = vec![
            CaseSummary {
                workload: "redis".into(),
                competitor: "ebpf".into(),
                available: true,
                runs: 1,
                latency_p50_us: Some(40.0),
                latency_p99_us: Some(90.0),
                peak_usage_bytes: Some((250u64 << 20) as f64),
                real: Some(RealCase {
                    survived_runs: 1,
                    raises: Some(3.0),
                    limit_at_completion: Some((300u64 << 20) as f64),
                    limit_over_peak: Some(1.2),
                    held_runs: 1,
                    right_sized_runs: 1,
                    time_to_right_size_ms: Some(34_500.0),
                    mib_s_above_usage_work: Some(120.4),
                    mib_s_above_usage_hold: Some(900.0),
                    work_ms: Some(750.0),
                    rate_per_s: Some(160_000.0),
                    work_unit: Some("requests".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            CaseSummary {
                workload: "redis".into(),
                competitor: "static".into(),
                available: true,
                runs: 1,
                oom_kills_total: 1,
                real: Some(RealCase {
                    right_size_note: Some("n/a: a static limit never changes".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            CaseSummary {
                workload: "redis".into(),
                competitor: "v2-memory-events".into(),
                available: false,
                reason: Some("needs cgroup v2".into()),
                ..Default::default()
            },
        ];
        let t = real_table(&rows, false);
        let ebpf = t.lines().nth(1).unwrap();
        for cell in [
            "1/1", "3", "40us", "90us", "250M", "300M", "1.20x", "34.50s",
        ] {
            assert!(ebpf.contains(cell), "{cell} in {ebpf}");
        }
        assert!(ebpf.contains("120 +900 hold"), "{ebpf}");
        assert!(
            ebpf.contains("750.0ms") && ebpf.contains("160.0k requests/s"),
            "{ebpf}"
        );
        let st = t.lines().nth(2).unwrap();
        assert!(st.contains("0/1") && st.contains("n/a"), "{st}");
        assert!(t.contains("n/a: needs cgroup v2"));
        let m = real_table(&rows, true);
        assert!(m.lines().all(|l| l.starts_with('|')));
        assert!(m
            .lines()
            .all(|l| l.matches(" | ").count() == REAL_HEAD.len() - 1 || l.starts_with("|---")));
        assert_eq!(fmt_rate(Some(12.34), Some("MiB")), "12.3 MiB/s");
        assert_eq!(fmt_rate(None, None), "-");
    }

    #[test]
    fn psi_window_serializes_as_a_result() {
        let host = |psi_window_us| HostInfo {
            kernel: "6.1".into(),
            cpus: 2,
            memory_bytes: 1 << 30,
            memory_cgroup: Some(CgroupVersion::V2),
            cpu_cgroup: None,
            unified_psi: true,
            psi_window_us,
        };
        let json = |h: &HostInfo| serde_json::to_value(h).unwrap()["psi_window_us"].clone();
        assert_eq!(
            json(&host(Ok(2_000_000))),
            serde_json::json!({"Ok": 2_000_000})
        );
        assert_eq!(
            json(&host(Err(PsiUnavailable::NoUnifiedHierarchy))),
            serde_json::json!({"Err": "no cgroup v2 (unified) hierarchy mounted"})
        );
        let refused = PsiUnavailable::Rejected {
            path: "/sys/fs/cgroup/x/memory.pressure".into(),
            window_us: 2_000_000,
            source: std::sync::Arc::new(scaler::cgroupfs::CgroupError::Gone {
                path: "/sys/fs/cgroup/x".into(),
            }),
        };
        assert_eq!(
            json(&host(Err(refused))),
            serde_json::json!({"Err": "no PSI trigger accepted on \
                /sys/fs/cgroup/x/memory.pressure: window 2000 ms: cgroup /sys/fs/cgroup/x is gone"})
        );
    }

    #[test]
    fn table_marks_unavailable_cases() {
        let rows = vec![
            CaseSummary {
                workload: "steps".into(),
                competitor: "ebpf".into(),
                available: true,
                runs: 2,
                latency_p50_us: Some(40.0),
                latency_p99_us: Some(80.0),
                latency_max_us: Some(81.0),
                completion_ms: Some(330.0),
                ..Default::default()
            },
            CaseSummary {
                workload: "steps".into(),
                competitor: "v2-memory-events".into(),
                available: false,
                reason: Some("needs cgroup v2".into()),
                ..Default::default()
            },
        ];
        let t = table(&rows, &[], false);
        assert!(t.contains("80us"));
        assert!(t.contains("330.0ms"));
        assert!(t.contains("n/a: needs cgroup v2"));
        let m = table(&rows, &[], true);
        assert!(m.lines().all(|l| l.starts_with('|')));
        assert_eq!(m.lines().nth(1).unwrap().matches("---").count(), 13);
    }
}

/// The bench document's JSON Schema, as committed in `docs/schemas/bench.schema.json`.
pub fn json_schema() -> schemars::Schema {
    schemars::schema_for!(Document<'static>)
}

#[cfg(test)]
mod schema_tests {
    #[test]
    fn committed_bench_schema_matches_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
        scaler::schema::check_committed(&dir, &[("bench", super::json_schema())]).unwrap();
        assert!(super::SCHEMA.ends_with(&format!("/{}", scaler::schema::SCHEMA_VERSION)));
    }
}
