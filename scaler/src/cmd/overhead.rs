//! `scaler overhead` (hidden): what the scheduler programs cost.
//!
//! Runs a context-switch-heavy benchmark (`perf bench sched pipe`, or a built-in pipe
//! ping-pong between two threads when perf is not installed) alternately without and with the
//! kernel programs attached (memory and scheduler programs, one cpu cgroup watched), several
//! rounds in one run, and reports the medians side by side with their ratio, plus the kernel's
//! BPF statistics: run time per event of each scheduler program. The kernel's statistics cost
//! two clock reads per program run, so they are off during the timed "with" runs and on during
//! a separate, untimed run per round that yields the per-event figures.
//!
//! Two placements of the benchmark: `unwatched` (in our own cgroup: what every other task on
//! the node pays) and `watched` (inside the watched cpu cgroup, quota unlimited: what a managed
//! workload pays).

use std::{
    collections::BTreeMap,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cgroupfs::{Cgroup, CgroupGuard, Controller, CpuQuota, Hierarchy},
    ebpf::{Pipeline, PipelineOptions, SCHED_PROGRAMS},
};

#[derive(Debug, clap::Args)]
pub struct OverheadArgs {
    /// Rounds; each runs the benchmark once without and once with the programs (alternating
    /// which goes first).
    #[arg(long, default_value = "7")]
    pub rounds: u32,
    /// Round trips per benchmark run.
    #[arg(long, default_value = "200000")]
    pub loops: u64,
    /// Where the benchmark runs: `unwatched`, `watched` or `both`.
    #[arg(long, default_value = "both")]
    pub placement: String,
    /// Use the built-in pipe ping-pong even if `perf` is installed.
    #[arg(long)]
    pub builtin: bool,
    /// Write the figures as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Internal: run the built-in ping-pong for this many round trips and print `<usecs>
    /// usecs/op`.
    #[arg(long, hide = true)]
    pub pingpong: Option<u64>,
}

/// Figures of one placement.
#[derive(Debug, Serialize)]
pub struct PlacementResult {
    pub placement: &'static str,
    /// µs per round trip of each run, without the programs.
    pub without_us: Vec<f64>,
    /// µs per round trip of each run, with the programs.
    pub with_us: Vec<f64>,
    pub median_without_us: f64,
    pub median_with_us: f64,
    /// `median_with / median_without`.
    pub ratio: f64,
    /// `(ratio - 1) * 100`.
    pub slowdown_percent: f64,
    /// Per scheduler program, over the runs with the kernel's BPF statistics on.
    pub programs: BTreeMap<&'static str, ProgramCost>,
}

/// Kernel BPF statistics of one program.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct ProgramCost {
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_event: f64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct OverheadReport {
    pub benchmark: String,
    pub kernel: String,
    pub cpus: usize,
    pub rounds: u32,
    pub loops: u64,
    pub placements: Vec<PlacementResult>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The built-in benchmark: two threads bouncing a byte over two pipes; µs per round trip.
fn pingpong(loops: u64) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let (mut a_r, mut b_w) = std::io::pipe()?;
    let (mut b_r, mut a_w) = std::io::pipe()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 1];
        for _ in 0..loops {
            a_r.read_exact(&mut buf)?;
            a_w.write_all(&buf)?;
        }
        Ok(())
    });
    let start = Instant::now();
    let mut buf = [0u8; 1];
    for _ in 0..loops {
        b_w.write_all(&buf)?;
        b_r.read_exact(&mut buf)?;
    }
    let el = start.elapsed();
    echo.join()
        .map_err(|_| anyhow::anyhow!("ping-pong thread panicked"))??;
    Ok(el.as_secs_f64() * 1e6 / loops as f64)
}

/// The benchmark to run: `perf bench sched pipe` or the built-in one (in a child process, so
/// it can be placed in a cgroup).
#[derive(Clone, Debug)]
enum Bench {
    Perf,
    Builtin(PathBuf),
}

impl Bench {
    fn name(&self) -> String {
        match self {
            Bench::Perf => "perf bench sched pipe".into(),
            Bench::Builtin(_) => "built-in pipe ping-pong (2 threads)".into(),
        }
    }

    /// Runs once inside `cgroup` (its cgroup.procs is written by the child before exec);
    /// returns µs per round trip.
    fn run(&self, loops: u64, cgroup: &Cgroup) -> anyhow::Result<f64> {
        let mut cmd = match self {
            Bench::Perf => {
                let mut c = Command::new("perf");
                c.args(["bench", "sched", "pipe", "-l", &loops.to_string()]);
                c
            }
            Bench::Builtin(exe) => {
                let mut c = Command::new(exe);
                c.args(["overhead", "--pingpong", &loops.to_string()]);
                c
            }
        };
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.file("cgroup.procs"))
            .with_context(|| format!("opening {}", cgroup.file("cgroup.procs").display()))?;
        let fd = procs.as_raw_fd();
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output()?;
        drop(procs);
        anyhow::ensure!(
            out.status.success(),
            "{} failed: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        parse_usecs_per_op(&text)
            .with_context(|| format!("no \"usecs/op\" in the output of {}: {text}", self.name()))
    }
}

/// The `usecs/op` figure of `perf bench sched pipe` (and of the built-in benchmark).
pub fn parse_usecs_per_op(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.contains("usecs/op"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn perf_works() -> bool {
    Command::new("perf")
        .args(["bench", "sched", "pipe", "-l", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn run(args: OverheadArgs) -> anyhow::Result<ExitCode> {
    if let Some(loops) = args.pingpong {
        println!("{:.6} usecs/op", pingpong(loops)?);
        return Ok(ExitCode::SUCCESS);
    }
    let placements: &[&'static str] = match args.placement.as_str() {
        "both" => &["unwatched", "watched"],
        "unwatched" => &["unwatched"],
        "watched" => &["watched"],
        other => anyhow::bail!("--placement must be unwatched, watched or both, not {other:?}"),
    };
    let bench = if !args.builtin && perf_works() {
        Bench::Perf
    } else {
        Bench::Builtin(std::env::current_exe().context("locating the scaler binary")?)
    };
    let cpu_h = Hierarchy::discover(Path::new("/"), Controller::Cpu)
        .context("the overhead benchmark needs the cpu controller")?;
    // The watched cgroup (quota unlimited) and an unwatched sibling, both under our own.
    let watched = CgroupGuard::create_under_own(&[&cpu_h], "scaler-overhead-watched")?;
    let unwatched = CgroupGuard::create_under_own(&[&cpu_h], "scaler-overhead-other")?;
    let wcg = watched
        .cgroup(Controller::Cpu)
        .context("cpu cgroup")?
        .clone();
    let ucg = unwatched
        .cgroup(Controller::Cpu)
        .context("cpu cgroup")?
        .clone();
    watched.set_cpu_quota(CpuQuota::Max)?;
    let wid = wcg.id()?.0;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "scaler overhead: {} x {} round trips, {} rounds, kernel {kernel}, {cpus} CPUs",
        bench.name(),
        args.loops,
        args.rounds
    );
    // Warm up (page cache, CPU frequency).
    bench.run(args.loops / 4 + 1, &ucg)?;

    let mut results = Vec::new();
    for &placement in placements {
        let cg = if placement == "watched" { &wcg } else { &ucg };
        let mut without = Vec::new();
        let mut with = Vec::new();
        let mut totals: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        for round in 0..args.rounds {
            for attached in if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                if !attached {
                    without.push(bench.run(args.loops, cg)?);
                    continue;
                }
                let mut p = Pipeline::load_with_cpu(&PipelineOptions::default(), true)?;
                anyhow::ensure!(
                    p.cpu_enabled(),
                    "the scheduler programs did not attach (see the warnings above)"
                );
                p.watch_cpu(
                    wid,
                    crate::cmd::watch::cpu_watch(0.8, Duration::from_millis(5)),
                )?;
                // Timed run: statistics off.
                p.set_bpf_stats(false);
                with.push(bench.run(args.loops, cg)?);
                // Untimed run: statistics on, for the per-event run time.
                p.set_bpf_stats(true);
                let before = p.program_stats();
                bench.run(args.loops, cg)?;
                let after = p.program_stats();
                for (name, (t1, n1)) in after {
                    let (t0, n0) = before.get(name).copied().unwrap_or_default();
                    let e = totals.entry(name).or_default();
                    e.0 += (t1.saturating_sub(t0)).as_nanos() as u64;
                    e.1 += n1.saturating_sub(n0);
                }
                drop(p);
            }
            eprintln!(
                "  {placement} round {}: without {:.3} us/op, with {:.3} us/op",
                round + 1,
                without[without.len() - 1],
                with[with.len() - 1]
            );
        }
        let (mw, mwith) = (median(&without), median(&with));
        let programs = SCHED_PROGRAMS
            .iter()
            .filter_map(|(name, _)| {
                let (t, n) = totals.get(name).copied()?;
                Some((
                    *name,
                    ProgramCost {
                        run_count: n,
                        run_time_ns: t,
                        ns_per_event: if n > 0 { t as f64 / n as f64 } else { 0.0 },
                    },
                ))
            })
            .collect();
        results.push(PlacementResult {
            placement,
            without_us: without,
            with_us: with,
            median_without_us: mw,
            median_with_us: mwith,
            ratio: mwith / mw,
            slowdown_percent: (mwith / mw - 1.0) * 100.0,
            programs,
        });
    }
    let report = OverheadReport {
        benchmark: bench.name(),
        kernel,
        cpus,
        rounds: args.rounds,
        loops: args.loops,
        placements: results,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(watched);
    drop(unwatched);
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &OverheadReport) {
    println!(
        "{} ({} round trips x {} rounds, alternating), kernel {}, {} CPUs",
        r.benchmark, r.loops, r.rounds, r.kernel, r.cpus
    );
    for p in &r.placements {
        println!(
            "  benchmark {:<9}: median {:.3} us/op without, {:.3} us/op with the programs: ratio {:.4} ({:+.2}%)",
            p.placement, p.median_without_us, p.median_with_us, p.ratio, p.slowdown_percent
        );
        for (name, c) in &p.programs {
            println!(
                "    {:<20} {:>10} runs  {:>7.1} ns/event",
                name, c.run_count, c.ns_per_event
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_bench_output() {
        let text = "# Running 'sched/pipe' benchmark:\n# Executed 200000 pipe operations between two processes\n\n     Total time: 0.444 [sec]\n\n       2.223600 usecs/op\n         449721 ops/sec\n";
        assert_eq!(parse_usecs_per_op(text), Some(2.2236));
        assert_eq!(parse_usecs_per_op("nothing"), None);
        assert_eq!(
            parse_usecs_per_op(&format!("{:.6} usecs/op\n", 1.5)),
            Some(1.5)
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn builtin_pingpong_measures_something() {
        let us = pingpong(2000).unwrap();
        assert!(us > 0.0 && us < 10_000.0, "{us}");
    }
}
