//! `scaler overhead` (hidden): what the scheduler programs cost.
//!
//! Runs a context-switch-heavy benchmark (`perf bench sched pipe`, or a built-in pipe
//! ping-pong between two threads when perf is not installed) in four arms, interleaved within
//! each round (the order rotates from round to round), several rounds in one run:
//!
//! - `without`: no programs of ours;
//! - `floor`: only an empty program on `sched_switch`, i.e. what the kernel's dispatch of any
//!   BPF program on that tracepoint costs (the part no program code can remove);
//! - `memory`: the agent's memory programs only (no CPU watched);
//! - `agent`: the agent's memory and scheduler programs, one cpu cgroup watched (its quota
//!   set to all CPUs, so the quota checks run but never throttle).
//!
//! It reports the medians with their ratio to `without`, plus the kernel's BPF statistics:
//! run time per event of each program. The statistics cost two clock reads per program run,
//! so they are off during the timed runs and on during separate, untimed runs per round that
//! yield the per-event figures (the empty program's figure is that measuring cost).
//!
//! Two placements of the benchmark: `unwatched` (in a sibling cgroup: what every other task
//! on the node pays) and `watched` (inside the watched cpu cgroup: what a managed workload
//! pays).

use scaler::actuator::GuardLimits as _;
use std::{
    collections::BTreeMap,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use crate::bench::stats;

use scaler::{
    cgroupfs::{Cgroup, CgroupGuard, Controller, CpuQuota, Hierarchy},
    ebpf::{Pipeline, PipelineOptions, SwitchFloor},
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
    /// The CPU the benchmark's processes are pinned to (default: the last one), so that each
    /// run measures the same thing: two tasks switching on one CPU. Without pinning, other
    /// work on the machine moves them apart at times, and cross-CPU wakeups cost ten times
    /// as much, which swamps the figures.
    #[arg(long, value_name = "CPU")]
    pub pin: Option<usize>,
    /// Do not pin the benchmark.
    #[arg(long, conflicts_with = "pin")]
    pub no_pin: bool,
    /// Write the figures as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Internal: run the built-in ping-pong for this many round trips and print `<usecs>
    /// usecs/op`.
    #[arg(long, hide = true)]
    pub pingpong: Option<u64>,
}

/// The arms of each round, in the order of the first round.
const ARMS: [Arm; 4] = [Arm::Without, Arm::Floor, Arm::Memory, Arm::Agent];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    Without,
    Floor,
    Memory,
    Agent,
}

/// Figures of one arm in one placement.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ArmResult {
    /// µs per round trip of each run.
    pub runs_us: Vec<f64>,
    pub median_us: f64,
    /// Smallest and largest run.
    pub min_us: f64,
    pub max_us: f64,
    /// Median of the per-round ratios to the same round's `without` run, minus 1, in percent
    /// (pairing within a round cancels slow drifts of the machine).
    pub slowdown_percent: f64,
    /// Smallest and largest per-round slowdown, in percent.
    pub slowdown_min_percent: f64,
    pub slowdown_max_percent: f64,
}

/// The four arms in one measure (wall-clock or CPU time per round trip).
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Arms {
    pub without: ArmResult,
    /// Only an empty program on sched_switch.
    pub floor: ArmResult,
    /// The memory programs only.
    pub memory: ArmResult,
    /// Memory and scheduler programs (the agent managing CPU).
    pub agent: ArmResult,
}

/// Figures of one placement.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PlacementResult {
    pub placement: &'static str,
    /// µs per round trip as the benchmark reports it (wall-clock).
    pub wall: Arms,
    /// CPU time (user + system) of the benchmark's processes per round trip, µs.
    pub cpu: Arms,
    /// Per program of the agent (and `sched_switch_floor`), over the runs with the kernel's
    /// BPF statistics on.
    pub programs: BTreeMap<&'static str, ProgramCost>,
    /// Program runs per benchmark round trip, over the same runs.
    pub runs_per_round_trip: BTreeMap<&'static str, f64>,
}

fn arm_result(runs: Vec<f64>, without: &[f64]) -> ArmResult {
    let ratios: Vec<f64> = runs
        .iter()
        .zip(without)
        .map(|(w, base)| (w / base - 1.0) * 100.0)
        .collect();
    let fold = |v: &[f64], f: fn(f64, f64) -> f64, init: f64| v.iter().copied().fold(init, f);
    // The tools' one median; NaN for no runs.
    let median = |v: &[f64]| stats::median(v.iter().copied()).unwrap_or(f64::NAN);
    ArmResult {
        median_us: median(&runs),
        min_us: fold(&runs, f64::min, f64::INFINITY),
        max_us: fold(&runs, f64::max, f64::NEG_INFINITY),
        slowdown_percent: median(&ratios),
        slowdown_min_percent: fold(&ratios, f64::min, f64::INFINITY),
        slowdown_max_percent: fold(&ratios, f64::max, f64::NEG_INFINITY),
        runs_us: runs,
    }
}

/// Kernel BPF statistics of one program.
#[derive(Debug, Serialize, Clone, Copy, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProgramCost {
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_event: f64,
}

/// The JSON document's schema name and version (`docs/schemas/overhead.schema.json`).
pub const SCHEMA: &str = "scaler-overhead/1";

/// The whole report (`--json`).
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct OverheadReport {
    /// [`scaler::schema::SCHEMA_VERSION`]: the same number as in [`SCHEMA`].
    pub schema_version: u32,
    /// [`SCHEMA`].
    pub schema: &'static str,
    pub benchmark: String,
    pub kernel: String,
    pub cpus: usize,
    /// The CPU the benchmark was pinned to.
    pub pinned_cpu: Option<usize>,
    pub rounds: u32,
    pub loops: u64,
    /// `/proc/loadavg` (1, 5 and 15 minutes) before the first and after the last run: how
    /// busy the machine was (the figures are noisy on a loaded one).
    pub load_average_start: [f64; 3],
    pub load_average_end: [f64; 3],
    pub placements: Vec<PlacementResult>,
}

/// The 1, 5 and 15-minute load averages (zeros if unreadable).
fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [(); 3].map(|()| v.next().unwrap_or(0.0))
}

/// The overhead document's JSON Schema, as committed in `docs/schemas/overhead.schema.json`.
pub fn json_schema() -> schemars::Schema {
    schemars::schema_for!(OverheadReport)
}

/// Errors of a benchmark run. A message leaves its `#[source]` out (the command prints the
/// causes after it).
#[derive(Debug, thiserror::Error)]
pub enum OverheadError {
    #[error("the built-in ping-pong")]
    PingPong(#[source] std::io::Error),
    #[error("ping-pong thread panicked")]
    PingPongPanicked,
    #[error("opening {path}")]
    OpenProcs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {bench}")]
    Spawn {
        bench: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bench} failed: {stderr}")]
    Failed { bench: String, stderr: String },
    #[error("no \"usecs/op\" in the output of {bench}: {output}")]
    NoFigure { bench: String, output: String },
}

/// The built-in benchmark: two threads bouncing a byte over two pipes; µs per round trip.
fn pingpong(loops: u64) -> Result<f64, OverheadError> {
    use std::io::{Read, Write};
    let (mut a_r, mut b_w) = std::io::pipe().map_err(OverheadError::PingPong)?;
    let (mut b_r, mut a_w) = std::io::pipe().map_err(OverheadError::PingPong)?;
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
        b_w.write_all(&buf).map_err(OverheadError::PingPong)?;
        b_r.read_exact(&mut buf).map_err(OverheadError::PingPong)?;
    }
    let el = start.elapsed();
    echo.join()
        .map_err(|_| OverheadError::PingPongPanicked)?
        .map_err(OverheadError::PingPong)?;
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
    /// returns µs per round trip, wall-clock (as the benchmark reports it) and in CPU time of
    /// the benchmark's processes (user + system, from the kernel's exact run-time accounting;
    /// unlike wall time, this does not grow when other work on the machine delays the
    /// benchmark, but it does include what the kernel programs cost in its context).
    fn run(&self, loops: u64, cgroup: &Cgroup, pin: Option<usize>) -> Result<Us, OverheadError> {
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
        let path = cgroup.file("cgroup.procs");
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| OverheadError::OpenProcs { path, source })?;
        let fd = procs.as_raw_fd();
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(cpu) = pin {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let cpu0 = children_cpu_us();
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| OverheadError::Spawn {
                bench: self.name(),
                source,
            })?;
        let cpu_us = (children_cpu_us() - cpu0) / loops as f64;
        drop(procs);
        if !out.status.success() {
            return Err(OverheadError::Failed {
                bench: self.name(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let wall = parse_usecs_per_op(&text).ok_or_else(|| OverheadError::NoFigure {
            bench: self.name(),
            output: text.to_string(),
        })?;
        Ok(Us { wall, cpu: cpu_us })
    }
}

/// µs per round trip of one run.
#[derive(Clone, Copy, Debug)]
struct Us {
    wall: f64,
    cpu: f64,
}

/// User + system CPU time of this process's waited-for children so far, µs.
fn children_cpu_us() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
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
    // A quota of all CPUs: the programs' quota checks run, the benchmark is never throttled.
    watched.set_cpu_quota(CpuQuota::Quota {
        quota_us: 100_000 * std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        period_us: 100_000,
    })?;
    let wid = wcg.id()?.0;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = if args.no_pin {
        None
    } else {
        Some(args.pin.unwrap_or(cpus - 1))
    };
    eprintln!(
        "scaler overhead: {} x {} round trips, {} rounds, kernel {kernel}, {cpus} CPUs",
        bench.name(),
        args.loops,
        args.rounds
    );
    let load_average_start = load_average();
    // Warm up (page cache, CPU frequency).
    bench.run(args.loops / 4 + 1, &ucg, pin)?;

    let mut results = Vec::new();
    for &placement in placements {
        let cg = if placement == "watched" { &wcg } else { &ucg };
        let mut runs: BTreeMap<&'static str, Vec<Us>> = BTreeMap::new();
        let mut totals: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        let mut stats_round_trips = 0u64;
        let add = |totals: &mut BTreeMap<&'static str, (u64, u64)>,
                   before: &BTreeMap<&'static str, (Duration, u64)>,
                   after: BTreeMap<&'static str, (Duration, u64)>| {
            for (name, (t1, n1)) in after {
                let (t0, n0) = before.get(name).copied().unwrap_or_default();
                let e = totals.entry(name).or_default();
                e.0 += (t1.saturating_sub(t0)).as_nanos() as u64;
                e.1 += n1.saturating_sub(n0);
            }
        };
        for round in 0..args.rounds {
            let mut line = Vec::new();
            for i in 0..ARMS.len() {
                let arm = ARMS[(i + round as usize) % ARMS.len()];
                let us = match arm {
                    Arm::Without => bench.run(args.loops, cg, pin)?,
                    Arm::Floor => {
                        let f = SwitchFloor::attach()?;
                        let us = bench.run(args.loops, cg, pin)?;
                        drop(f);
                        us
                    }
                    Arm::Memory => {
                        let mut p = Pipeline::load_with_cpu(&PipelineOptions::default(), false)?;
                        p.set_bpf_stats(false);
                        let us = bench.run(args.loops, cg, pin)?;
                        drop(p);
                        us
                    }
                    Arm::Agent => {
                        let mut p = Pipeline::load_with_cpu(&PipelineOptions::default(), true)?;
                        anyhow::ensure!(
                            p.cpu_enabled(),
                            "the scheduler programs did not attach (see the warnings above)"
                        );
                        p.watch_cpu(
                            wid,
                            scaler::cmd::watch::cpu_watch(0.8, Duration::from_millis(5)),
                        )?;
                        // Timed run: statistics off.
                        p.set_bpf_stats(false);
                        let us = bench.run(args.loops, cg, pin)?;
                        // Untimed run: statistics on, for the per-event run time.
                        p.set_bpf_stats(true);
                        let before = p.program_stats();
                        bench.run(args.loops, cg, pin)?;
                        add(&mut totals, &before, p.program_stats());
                        stats_round_trips += args.loops;
                        drop(p);
                        // And the empty program's, the same way.
                        let f = SwitchFloor::attach()?;
                        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
                        let before = BTreeMap::from([(PROG_FLOOR, f.stats())]);
                        bench.run(args.loops, cg, pin)?;
                        add(
                            &mut totals,
                            &before,
                            BTreeMap::from([(PROG_FLOOR, f.stats())]),
                        );
                        drop(stats);
                        drop(f);
                        us
                    }
                };
                runs.entry(arm_name(arm)).or_default().push(us);
                line.push(format!(
                    "{} {:.3} ({:.3} cpu)",
                    arm_name(arm),
                    us.wall,
                    us.cpu
                ));
            }
            eprintln!(
                "  {placement} round {}: {} us/op",
                round + 1,
                line.join(", ")
            );
        }
        let arms = |f: fn(&Us) -> f64| {
            let get = |name| {
                runs.get(name)
                    .map_or(Vec::new(), |v| v.iter().map(f).collect())
            };
            let without: Vec<f64> = get("without");
            Arms {
                floor: arm_result(get("floor"), &without),
                memory: arm_result(get("memory"), &without),
                agent: arm_result(get("agent"), &without),
                without: arm_result(without.clone(), &without),
            }
        };
        let (wall, cpu) = (arms(|u| u.wall), arms(|u| u.cpu));
        let programs: BTreeMap<_, _> = totals
            .iter()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(name, &(t, n))| {
                (
                    *name,
                    ProgramCost {
                        run_count: n,
                        run_time_ns: t,
                        ns_per_event: t as f64 / n as f64,
                    },
                )
            })
            .collect();
        let runs_per_round_trip = programs
            .iter()
            .map(|(name, c)| {
                // The floor program ran in as many stats runs as the agent's.
                (*name, c.run_count as f64 / stats_round_trips.max(1) as f64)
            })
            .collect();
        results.push(PlacementResult {
            placement,
            wall,
            cpu,
            programs,
            runs_per_round_trip,
        });
    }
    let report = OverheadReport {
        schema_version: scaler::schema::SCHEMA_VERSION,
        schema: SCHEMA,
        load_average_start,
        load_average_end: load_average(),
        benchmark: bench.name(),
        kernel,
        cpus,
        pinned_cpu: pin,
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

const PROG_FLOOR: &str = scaler_common::names::PROG_SCHED_SWITCH_FLOOR;

fn arm_name(arm: Arm) -> &'static str {
    match arm {
        Arm::Without => "without",
        Arm::Floor => "floor",
        Arm::Memory => "memory",
        Arm::Agent => "agent",
    }
}

fn print_report(r: &OverheadReport) {
    let la = |l: [f64; 3]| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]);
    println!(
        "{} ({} round trips x {} rounds, arms interleaved), kernel {}, {} CPUs, {}; load \
         average {} before, {} after",
        r.benchmark,
        r.loops,
        r.rounds,
        r.kernel,
        r.cpus,
        r.pinned_cpu
            .map_or("not pinned".to_string(), |c| format!("pinned to CPU {c}")),
        la(r.load_average_start),
        la(r.load_average_end),
    );
    for p in &r.placements {
        println!(
            "  benchmark {} (median us/op; slowdown: median of per-round ratios [min, max]):",
            p.placement
        );
        for (measure, arms) in [("wall", &p.wall), ("cpu", &p.cpu)] {
            println!(
                "    {measure:<4} without {:.3} [{:.3}, {:.3}]",
                arms.without.median_us, arms.without.min_us, arms.without.max_us
            );
            for (name, a) in [
                ("floor", &arms.floor),
                ("memory", &arms.memory),
                ("agent", &arms.agent),
            ] {
                println!(
                    "    {measure:<4} {name:<7} {:.3}: {:+.2}% [{:+.2}%, {:+.2}%]",
                    a.median_us, a.slowdown_percent, a.slowdown_min_percent, a.slowdown_max_percent
                );
            }
        }
        for (name, c) in &p.programs {
            println!(
                "    {:<22} {:>10} runs ({:.2}/round trip) {:>7.1} ns/event",
                name,
                c.run_count,
                p.runs_per_round_trip.get(name).copied().unwrap_or(0.0),
                c.ns_per_event
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
    fn slowdowns_are_paired_within_rounds() {
        // Round 2 ran on a slow machine for both arms: paired, it is +10% like the others.
        let without = [2.0, 4.0, 2.0];
        let with = [2.2, 4.4, 2.3];
        let a = arm_result(with.to_vec(), &without);
        assert!((a.slowdown_percent - 10.0).abs() < 1e-9, "{a:?}");
        assert!((a.slowdown_min_percent - 10.0).abs() < 1e-9);
        assert!((a.slowdown_max_percent - 15.0).abs() < 1e-9);
        assert_eq!((a.min_us, a.max_us, a.median_us), (2.2, 4.4, 2.3));
        let same = arm_result(without.to_vec(), &without);
        assert_eq!(same.slowdown_percent, 0.0);
    }

    #[test]
    fn medians() {
        let m = |runs: &[f64]| arm_result(runs.to_vec(), &[1.0; 4]).median_us;
        assert_eq!(m(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(m(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(m(&[]).is_nan());
    }

    #[test]
    fn committed_overhead_schema_matches_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
        scaler::schema::check_committed(&dir, &[("overhead", json_schema())]).unwrap();
        assert!(SCHEMA.ends_with(&format!("/{}", scaler::schema::SCHEMA_VERSION)));
    }

    #[test]
    fn load_average_reads_three_figures() {
        let l = load_average();
        assert!(l.iter().all(|v| *v >= 0.0), "{l:?}");
    }

    #[test]
    fn builtin_pingpong_measures_something() {
        let us = pingpong(2000).unwrap();
        assert!(us > 0.0 && us < 10_000.0, "{us}");
    }
}
