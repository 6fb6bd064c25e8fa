//! Real workloads for tests and benchmarks: `scaler workload <shape> ...`.
//!
//! Every shape does exactly what its arguments ask and nothing more: memory shapes map fresh
//! anonymous memory (`MAP_PRIVATE | MAP_ANONYMOUS`, never `MAP_POPULATE`) of exactly the requested
//! size, rounded up to whole pages, and write one byte of every page so each page is faulted in
//! (and charged to the memory cgroup) at the moment the shape says. When a shape finishes it
//! prints one line of JSON on stdout ([`WorkloadReport`]) so a benchmark can compute a rate
//! (`touched_bytes / elapsed_us`) and check the work was done, then exits 0.
//!
//! Shapes:
//! - `steps`: `--total` bytes touched in `--step` chunks every `--interval`, split over
//!   `--threads` threads (each thread touches its share of the total and of each step, so the
//!   aggregate rate does not depend on the thread count), then an optional `--hold`.
//! - `spike`: `--size` bytes touched at once, as fast as possible.
//! - `ramp`: `--total` bytes touched at `--rate` bytes per second (in 10 ms ticks).
//! - `procs`: `--procs` processes, each running `steps` on its share of `--total` and `--step`;
//!   exits non-zero (128 + signal) if any child died of a signal.
//! - `pagecache`: writes then reads back a `--size` file to fill the page cache; removes it.
//! - `cpu`: `--busy-threads` threads spinning for `--burst`, sleeping `--idle`, `--cycles` times.
//! - `idle`: touches `--size` bytes, then sleeps for `--hold` (for scale-down tests).
//! - `run`: not a shape of its own: runs a program (stdout to /dev/null), then writes its
//!   [`DoneRecord`] to `--done` and sleeps until it is killed, so the cgroup (and `scaler exec`
//!   around it) outlives a batch program: the benchmark's hold phase watches the limit come down.
//!
//! Durations and sizes are parsed by [`scaler::units`] (`10ms`, `1.5s`; `8M`, `256MiB`, `1G`, plain
//! bytes); rates are a size per second (`20M/s`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use scaler::units::{parse_duration, parse_size, UnitError};
use serde::{Deserialize, Serialize};

/// Arguments of the hidden `scaler workload` subcommand.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct WorkloadArgs {
    /// The shape of the workload to run.
    #[command(subcommand)]
    pub shape: Shape,
}

/// One workload shape and its parameters.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Touch `--total` bytes of fresh memory in `--step` chunks every `--interval`.
    Steps(StepsArgs),
    /// Touch `--size` bytes of fresh memory at once, as fast as possible.
    Spike(SpikeArgs),
    /// Touch `--total` bytes of fresh memory at a steady `--rate`.
    Ramp(RampArgs),
    /// Run `steps` in several processes at once, each on its share of the total.
    Procs(ProcsArgs),
    /// Write then read back a file to fill the page cache; the file is removed afterwards.
    Pagecache(PagecacheArgs),
    /// CPU bursts: spin for `--burst`, sleep for `--idle`, `--cycles` times.
    Cpu(CpuArgs),
    /// Touch `--size` bytes, then sleep for `--hold` (for scale-down tests).
    Idle(IdleArgs),
    /// Run a program, write its completion record to `--done`, then sleep until killed.
    Run(RunArgs),
}

/// Parameters of `run` (the benchmark's wrapper of a batch program).
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// Where to write the [`DoneRecord`] (JSON, written to a temporary name and renamed).
    #[arg(long)]
    pub done: PathBuf,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What `workload run` (or a workload of the benchmark's real suite) writes when its work is
/// done: one JSON object.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[schemars(deny_unknown_fields)]
pub struct DoneRecord {
    /// The program's own time, start to exit (or to the end of its work), µs.
    pub elapsed_us: u64,
    /// CLOCK_MONOTONIC when the work ended, ns.
    pub done_ns: u64,
    /// Exit code, if it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Signal, if it was killed.
    #[serde(default)]
    pub signal: Option<i32>,
}

impl DoneRecord {
    /// Reads a done file; `None` while it does not exist (or is not complete JSON).
    pub fn read(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(text.trim()).ok()
    }

    /// Writes `self` to `path` atomically (a temporary name, then a rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, serde_json::to_string(self).unwrap_or_default() + "\n")?;
        std::fs::rename(&tmp, path)
    }
}

/// `run`: runs `a.command` (stdout to /dev/null, stderr inherited), writes its [`DoneRecord`],
/// then sleeps until a signal ends the process. Returns only on error.
pub fn run_and_hold(a: &RunArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    let status = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", a.command[0]))?;
    let rec = DoneRecord {
        elapsed_us: elapsed_us(start),
        done_ns: scaler::clock::monotonic_ns(),
        exit_code: status.code(),
        signal: status.signal(),
    };
    rec.write(&a.done)
        .with_context(|| format!("cannot write {}", a.done.display()))?;
    loop {
        // SAFETY: pause has no preconditions; a signal's default action ends the process.
        unsafe { libc::pause() };
    }
}

/// Parameters of the `steps` shape.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct StepsArgs {
    /// Total bytes to touch (e.g. `256M`).
    #[arg(long, value_parser = parse_size)]
    pub total: u64,
    /// Bytes touched per step, across all threads (e.g. `8M`).
    #[arg(long, value_parser = parse_size)]
    pub step: u64,
    /// Time between the starts of two steps (e.g. `10ms`).
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    pub interval: Duration,
    /// Threads touching memory at once; each takes its share of the total and of each step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// How long to keep the memory once everything is touched.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub hold: Duration,
}

/// Parameters of the `spike` shape.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct SpikeArgs {
    /// Bytes to touch at once (e.g. `200M`).
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// How long to keep the memory once everything is touched.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub hold: Duration,
}

/// Parameters of the `ramp` shape.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct RampArgs {
    /// Total bytes to touch.
    #[arg(long, value_parser = parse_size)]
    pub total: u64,
    /// Bytes per second (e.g. `20M/s`).
    #[arg(long, value_parser = parse_rate)]
    pub rate: u64,
    /// How long to keep the memory once everything is touched.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub hold: Duration,
}

/// Parameters of the `procs` shape.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ProcsArgs {
    /// Number of processes, each touching `total / procs` bytes in `step / procs` steps.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub procs: u32,
    /// Total bytes to touch, across all processes.
    #[arg(long, value_parser = parse_size)]
    pub total: u64,
    /// Bytes touched per step, across all processes.
    #[arg(long, value_parser = parse_size)]
    pub step: u64,
    /// Time between the starts of two steps.
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    pub interval: Duration,
    /// How long each process keeps its memory once everything is touched.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub hold: Duration,
}

/// Parameters of the `pagecache` shape.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct PagecacheArgs {
    /// File to create (it must not exist; it is removed at the end, even on error).
    #[arg(long)]
    pub file: PathBuf,
    /// Bytes to write and read back.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Flush written data to disk (fdatasync) after every this many bytes, so dirty pages never
    /// pile up: a small cgroup v1 memory limit cannot write dirty pages back in its own reclaim
    /// and may OOM-kill a writer that never syncs. Unset: never sync before the end.
    #[arg(long, value_parser = parse_size)]
    pub sync_every: Option<u64>,
}

/// Parameters of the `cpu` shape.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CpuArgs {
    /// Threads spinning during a burst.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub busy_threads: u32,
    /// Length of one burst.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub burst: Duration,
    /// Sleep between bursts.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub idle: Duration,
    /// Number of burst + idle cycles.
    #[arg(long, default_value_t = 3)]
    pub cycles: u32,
}

/// Parameters of the `idle` shape.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct IdleArgs {
    /// Bytes to touch first.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// How long to sleep holding the memory.
    #[arg(long, value_parser = parse_duration)]
    pub hold: Duration,
}

/// The one-line JSON result a workload prints on stdout when it finishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkloadReport {
    /// The shape's name (`steps`, `spike`, ...).
    pub shape: String,
    /// Bytes of anonymous memory touched, or of file data written (pagecache); 0 for `cpu`.
    pub touched_bytes: u64,
    /// Time spent doing the work, from the first touch to the last (holds excluded).
    pub elapsed_us: u64,
    /// Busy-loop iterations done (`cpu` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u64>,
    /// Bytes read back from the file (`pagecache` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bytes: Option<u64>,
}

/// Errors of the workloads. A message leaves its `#[source]` out: the command prints the
/// causes after it.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("mmap of {bytes} bytes of anonymous memory failed")]
    Mmap {
        bytes: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} of {bytes} bytes does not fit in this process's address space")]
    TooLarge { what: &'static str, bytes: u64 },
    #[error("`--step` must be at least one byte per {unit}, and `--total` at least one step")]
    BadStep { unit: &'static str },
    #[error("`--rate` must be positive")]
    ZeroRate,
    #[error("invalid rate `{input}`: expected a size per second such as 20M/s")]
    BadRate { input: String },
    /// A size or duration that [`scaler::units`] does not accept.
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error("cannot spawn workload thread")]
    Thread(#[source] std::io::Error),
    #[error("a workload thread panicked")]
    ThreadPanicked,
    #[error("cannot create the page-cache file {path} (it must not exist already)")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O on the page-cache file {path}")]
    FileIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fork of workload child {index} failed")]
    Fork {
        index: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for workload child pid {pid} failed")]
    Wait {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// Runs one workload; prints its [`WorkloadReport`] on stdout.
///
/// Returns success when the work was done; for `procs`, `128 + signal` of the first child that
/// died of a signal (and 1 for a child that exited non-zero), with the reason on stderr.
pub fn run(args: WorkloadArgs) -> anyhow::Result<ExitCode> {
    let (report, code) = match args.shape {
        Shape::Run(a) => return run_and_hold(&a),
        Shape::Steps(a) => (steps(&a)?, ExitCode::SUCCESS),
        Shape::Spike(a) => (spike(&a)?, ExitCode::SUCCESS),
        Shape::Ramp(a) => (ramp(&a)?, ExitCode::SUCCESS),
        Shape::Procs(a) => {
            let outcome = procs(&a)?;
            let code = match outcome.failure {
                None => ExitCode::SUCCESS,
                Some(ChildFailure::Signaled { pid, signal }) => {
                    eprintln!("workload procs: child pid {pid} died of signal {signal}");
                    ExitCode::from(128u8.wrapping_add(signal as u8))
                }
                Some(ChildFailure::Exited { pid, code }) => {
                    eprintln!("workload procs: child pid {pid} exited with status {code}");
                    ExitCode::from(1)
                }
            };
            (outcome.report, code)
        }
        Shape::Pagecache(a) => (pagecache(&a)?, ExitCode::SUCCESS),
        Shape::Cpu(a) => (cpu(&a)?, ExitCode::SUCCESS),
        Shape::Idle(a) => (idle(&a)?, ExitCode::SUCCESS),
    };
    let line = serde_json::to_string(&report)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(code)
}

// ---------------------------------------------------------------------------------------------
// Argument parsing

// Sizes and durations are parsed by the project's units ([`scaler::units::parse_size`],
// [`scaler::units::parse_duration`]), whose errors clap prints.

/// Parses a rate in bytes per second: a size followed by `/s` (e.g. `20M/s`).
pub fn parse_rate(s: &str) -> Result<u64, WorkloadError> {
    let size = s
        .trim()
        .strip_suffix("/s")
        .ok_or_else(|| WorkloadError::BadRate {
            input: s.to_owned(),
        })?;
    Ok(parse_size(size)?)
}

// ---------------------------------------------------------------------------------------------
// Anonymous memory

/// The system page size.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// A private anonymous mapping, unmapped on drop. Pages are only faulted in by [`touch`].
///
/// [`touch`]: AnonRegion::touch
struct AnonRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; threads only touch disjoint ranges
// through `&mut` access.
unsafe impl Send for AnonRegion {}

impl AnonRegion {
    /// Maps `bytes` (rounded up to whole pages) without populating them.
    fn new(bytes: u64) -> Result<Self, WorkloadError> {
        let page = page_size();
        let len = usize::try_from(bytes)
            .ok()
            .and_then(|b| b.checked_next_multiple_of(page))
            .ok_or(WorkloadError::TooLarge {
                what: "a mapping",
                bytes,
            })?;
        if len == 0 {
            return Ok(Self {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(WorkloadError::Mmap {
                bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            // SAFETY: mmap succeeded, so p is non-null.
            ptr: unsafe { NonNull::new_unchecked(p.cast()) },
            len,
        })
    }

    /// Writes one byte in every page of `[from, to)` (clamped to the region).
    fn touch(&mut self, from: usize, to: usize) {
        // SAFETY: the range is clamped to the mapping, which is readable and writable.
        unsafe { touch_raw(self.ptr.as_ptr(), self.len, from, to) }
    }
}

impl Drop for AnonRegion {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: ptr/len are exactly what mmap returned.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// Writes one (non-zero) byte in every page of `[from, to)` of the mapping `base..base+len`.
///
/// Async-signal-safe (no allocation), so forked children can use it.
///
/// # Safety
/// `base..base+len` must be a readable and writable mapping.
unsafe fn touch_raw(base: *mut u8, len: usize, from: usize, to: usize) {
    let page = page_size();
    let to = to.min(len);
    let mut off = from - from % page;
    while off < to {
        // SAFETY: off < len, inside the mapping; volatile so the write is not elided.
        unsafe { std::ptr::write_volatile(base.add(off), 1) };
        off += page;
    }
}

/// A fixed-cadence pacer: tick `k` is due at `start + k * interval`. A tick that is late does not
/// make later ticks come faster (no catch-up bursts after a stall).
struct Pacer {
    next: Instant,
    interval: Duration,
}

impl Pacer {
    fn new(interval: Duration) -> Self {
        Self {
            next: Instant::now(),
            interval,
        }
    }

    /// Sleeps until the next tick is due.
    fn wait(&mut self) {
        self.next += self.interval;
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else {
            self.next = now;
        }
    }
}

/// Touches `total` bytes of one fresh region in `step` chunks, one chunk per `interval`.
/// Returns the region so the caller decides how long the memory lives.
fn touch_in_steps(total: u64, step: u64, interval: Duration) -> Result<AnonRegion, WorkloadError> {
    let mut region = AnonRegion::new(total)?;
    let total = region.len.min(total as usize);
    let step = usize::try_from(step).unwrap_or(usize::MAX).max(1);
    let mut pacer = Pacer::new(interval);
    let mut done = 0usize;
    while done < total {
        let end = done.saturating_add(step).min(total);
        region.touch(done, end);
        done = end;
        if done < total {
            pacer.wait();
        }
    }
    Ok(region)
}

fn elapsed_us(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Splits `total` into `parts` shares that add up to `total` (the first ones get the remainder).
fn share(total: u64, parts: u32, index: u32) -> u64 {
    let parts = u64::from(parts.max(1));
    let base = total / parts;
    base + u64::from(u64::from(index) < total % parts)
}

/// `steps`: each thread touches its share in its share of each step.
pub fn steps(a: &StepsArgs) -> Result<WorkloadReport, WorkloadError> {
    if a.step == 0 || a.step < u64::from(a.threads) {
        return Err(WorkloadError::BadStep { unit: "thread" });
    }
    let start = Instant::now();
    let mut regions = Vec::with_capacity(a.threads as usize);
    if a.threads == 1 {
        regions.push(touch_in_steps(a.total, a.step, a.interval)?);
    } else {
        let handles = (0..a.threads)
            .map(|i| {
                let total = share(a.total, a.threads, i);
                let step = share(a.step, a.threads, i);
                let interval = a.interval;
                std::thread::Builder::new()
                    .name(format!("steps-{i}"))
                    .spawn(move || touch_in_steps(total, step, interval))
                    .map_err(WorkloadError::Thread)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for h in handles {
            regions.push(h.join().map_err(|_| WorkloadError::ThreadPanicked)??);
        }
    }
    let elapsed = elapsed_us(start);
    std::thread::sleep(a.hold);
    drop(regions);
    Ok(WorkloadReport {
        shape: "steps".into(),
        touched_bytes: a.total,
        elapsed_us: elapsed,
        iterations: None,
        read_bytes: None,
    })
}

/// `spike`: everything at once.
pub fn spike(a: &SpikeArgs) -> Result<WorkloadReport, WorkloadError> {
    let start = Instant::now();
    let mut region = AnonRegion::new(a.size)?;
    region.touch(0, a.size as usize);
    let elapsed = elapsed_us(start);
    std::thread::sleep(a.hold);
    drop(region);
    Ok(WorkloadReport {
        shape: "spike".into(),
        touched_bytes: a.size,
        elapsed_us: elapsed,
        iterations: None,
        read_bytes: None,
    })
}

/// The tick of the `ramp` shape.
const RAMP_TICK: Duration = Duration::from_millis(10);

/// `ramp`: a steady rate, in 10 ms ticks (at least one page per tick).
pub fn ramp(a: &RampArgs) -> Result<WorkloadReport, WorkloadError> {
    if a.rate == 0 {
        return Err(WorkloadError::ZeroRate);
    }
    let per_tick = ((a.rate as f64) * RAMP_TICK.as_secs_f64()).ceil() as u64;
    let per_tick = per_tick.max(page_size() as u64);
    let start = Instant::now();
    let region = touch_in_steps(a.total, per_tick, RAMP_TICK)?;
    let elapsed = elapsed_us(start);
    std::thread::sleep(a.hold);
    drop(region);
    Ok(WorkloadReport {
        shape: "ramp".into(),
        touched_bytes: a.total,
        elapsed_us: elapsed,
        iterations: None,
        read_bytes: None,
    })
}

/// `idle`: touch, then hold.
pub fn idle(a: &IdleArgs) -> Result<WorkloadReport, WorkloadError> {
    let start = Instant::now();
    let mut region = AnonRegion::new(a.size)?;
    region.touch(0, a.size as usize);
    let elapsed = elapsed_us(start);
    std::thread::sleep(a.hold);
    drop(region);
    Ok(WorkloadReport {
        shape: "idle".into(),
        touched_bytes: a.size,
        elapsed_us: elapsed,
        iterations: None,
        read_bytes: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes

/// How a `procs` child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildFailure {
    /// The child was killed by a signal (an OOM kill is SIGKILL).
    Signaled { pid: i32, signal: i32 },
    /// The child exited with a non-zero status (it could not map its memory).
    Exited { pid: i32, code: i32 },
}

/// The result of the `procs` shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcsOutcome {
    /// Aggregate report (touched bytes counts successful children only).
    pub report: WorkloadReport,
    /// The first failure, if any child did not finish.
    pub failure: Option<ChildFailure>,
}

/// Ends the children it holds (by pid) if dropped before they were reaped.
struct Children(Vec<i32>);

impl Drop for Children {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: these are our own unreaped children; kill + waitpid by pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Sleeps with `clock_nanosleep` (async-signal-safe, restarted on EINTR).
fn raw_sleep(d: Duration) {
    let mut ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    loop {
        let mut rem = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid timespec pointers.
        let r = unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, &mut rem) };
        if r == libc::EINTR {
            ts = rem;
            continue;
        }
        break;
    }
}

/// CLOCK_MONOTONIC in nanoseconds (async-signal-safe).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The body of a forked `procs` child. Uses only async-signal-safe calls (mmap, memory writes,
/// clock_nanosleep, _exit) because the parent may have had other threads when it forked.
fn child_steps(total: u64, step: u64, interval: Duration, hold: Duration) -> ! {
    let len = match usize::try_from(total)
        .ok()
        .and_then(|t| t.checked_next_multiple_of(page_size()))
    {
        Some(l) => l,
        // SAFETY: _exit is always safe.
        None => unsafe { libc::_exit(2) },
    };
    let base = if len == 0 {
        std::ptr::null_mut()
    } else {
        // SAFETY: fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            // SAFETY: _exit is always safe.
            unsafe { libc::_exit(3) }
        }
        p.cast::<u8>()
    };
    let total = total as usize;
    let step = (step as usize).max(1);
    let mut done = 0usize;
    let mut next = monotonic_ns();
    let interval_ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    while done < total {
        let end = done.saturating_add(step).min(total);
        // SAFETY: base..base+len is our mapping.
        unsafe { touch_raw(base, len, done, end) };
        done = end;
        if done < total {
            // Same cadence as `Pacer`: fixed deadlines, no catch-up after a late tick.
            next = next.saturating_add(interval_ns);
            let now = monotonic_ns();
            if next > now {
                raw_sleep(Duration::from_nanos(next - now));
            } else {
                next = now;
            }
        }
    }
    raw_sleep(hold);
    // SAFETY: _exit is always safe; skips the parent's atexit handlers and stdio buffers.
    unsafe { libc::_exit(0) }
}

/// `procs`: fork `procs` children that each run `steps` on their share; wait for all of them.
pub fn procs(a: &ProcsArgs) -> Result<ProcsOutcome, WorkloadError> {
    let start = Instant::now();
    let children = spawn_children(a)?;
    wait_children(a, children, start)
}

/// Forks the `procs` children; they start touching at once.
fn spawn_children(a: &ProcsArgs) -> Result<Children, WorkloadError> {
    if a.step == 0 || a.step < u64::from(a.procs) {
        return Err(WorkloadError::BadStep { unit: "process" });
    }
    // Flush so buffered output is not duplicated into the children.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let mut children = Children(Vec::with_capacity(a.procs as usize));
    for i in 0..a.procs {
        let total = share(a.total, a.procs, i);
        let step = share(a.step, a.procs, i);
        // SAFETY: the child runs only async-signal-safe code (child_steps) and never returns.
        match unsafe { libc::fork() } {
            -1 => {
                return Err(WorkloadError::Fork {
                    index: i,
                    source: std::io::Error::last_os_error(),
                })
            }
            0 => child_steps(total, step, a.interval, a.hold),
            pid => children.0.push(pid),
        }
    }
    Ok(children)
}

/// Reaps every child (in fork order) and aggregates their results.
fn wait_children(
    a: &ProcsArgs,
    mut children: Children,
    start: Instant,
) -> Result<ProcsOutcome, WorkloadError> {
    let mut failure = None;
    let mut touched = 0u64;
    let pids = children.0.clone();
    for (i, &pid) in pids.iter().enumerate() {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child by pid.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(WorkloadError::Wait { pid, source: err });
            }
        }
        // Reaped: the guard must no longer signal this pid (it could be reused).
        children.0.retain(|&p| p != pid);
        if libc::WIFSIGNALED(status) {
            failure.get_or_insert(ChildFailure::Signaled {
                pid,
                signal: libc::WTERMSIG(status),
            });
        } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
            failure.get_or_insert(ChildFailure::Exited {
                pid,
                code: libc::WEXITSTATUS(status),
            });
        } else {
            touched += share(a.total, a.procs, i as u32);
        }
    }
    // Elapsed includes the children's hold, since the parent cannot see when they finished
    // touching; subtract it so the figure means the same as for `steps`.
    let elapsed = elapsed_us(start).saturating_sub(a.hold.as_micros() as u64);
    Ok(ProcsOutcome {
        report: WorkloadReport {
            shape: "procs".into(),
            touched_bytes: touched,
            elapsed_us: elapsed,
            iterations: None,
            read_bytes: None,
        },
        failure,
    })
}

// ---------------------------------------------------------------------------------------------
// Page cache

/// Removes the file on drop.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Chunk size of page-cache I/O.
const IO_CHUNK: usize = 1 << 20;

/// `pagecache`: write `size` bytes to a new file, read them back, remove the file.
pub fn pagecache(a: &PagecacheArgs) -> Result<WorkloadReport, WorkloadError> {
    let io_err = |source| WorkloadError::FileIo {
        path: a.file.clone(),
        source,
    };
    let start = Instant::now();
    let mut file: File = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .open(&a.file)
        .map_err(|source| WorkloadError::CreateFile {
            path: a.file.clone(),
            source,
        })?;
    let _guard = RemoveOnDrop(&a.file);
    let chunk_len = usize::try_from(a.size).unwrap_or(usize::MAX).min(IO_CHUNK);
    let mut buf = vec![0xa5u8; chunk_len];
    let mut written = 0u64;
    let mut unsynced = 0u64;
    while written < a.size {
        let n = (a.size - written).min(buf.len() as u64) as usize;
        file.write_all(&buf[..n]).map_err(io_err)?;
        written += n as u64;
        unsynced += n as u64;
        if a.sync_every.is_some_and(|every| unsynced >= every) {
            file.sync_data().map_err(io_err)?;
            unsynced = 0;
        }
    }
    file.flush().map_err(io_err)?;
    let mut file = File::open(&a.file).map_err(io_err)?;
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    Ok(WorkloadReport {
        shape: "pagecache".into(),
        touched_bytes: written,
        elapsed_us: elapsed_us(start),
        iterations: None,
        read_bytes: Some(read),
    })
}

// ---------------------------------------------------------------------------------------------
// CPU

/// `cpu`: bursts of spinning threads separated by sleeps; reports the iterations done.
pub fn cpu(a: &CpuArgs) -> Result<WorkloadReport, WorkloadError> {
    let start = Instant::now();
    let mut iterations = 0u64;
    for cycle in 0..a.cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..a.busy_threads)
            .map(|i| {
                let stop = Arc::clone(&stop);
                std::thread::Builder::new()
                    .name(format!("cpu-{i}"))
                    .spawn(move || spin(&stop))
                    .map_err(WorkloadError::Thread)
            })
            .collect::<Result<Vec<_>, _>>();
        let handles = match handles {
            Ok(h) => h,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        std::thread::sleep(a.burst);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            iterations += h.join().map_err(|_| WorkloadError::ThreadPanicked)?;
        }
        if cycle + 1 < a.cycles {
            std::thread::sleep(a.idle);
        }
    }
    Ok(WorkloadReport {
        shape: "cpu".into(),
        touched_bytes: 0,
        elapsed_us: elapsed_us(start),
        iterations: Some(iterations),
        read_bytes: None,
    })
}

/// Spins until `stop`; returns the loop iterations done. Each iteration is a little arithmetic
/// kept opaque to the optimizer, so the count measures CPU time actually granted.
fn spin(stop: &AtomicBool) -> u64 {
    let mut n = 0u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        w: WorkloadArgs,
    }

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10y").is_err());
        assert_eq!(parse_rate("20M/s").ok(), Some(20 << 20));
        assert_eq!(
            parse_rate("20M").unwrap_err().to_string(),
            "invalid rate `20M`: expected a size per second such as 20M/s"
        );
        // A bad size in a rate reads as the size's own error.
        assert_eq!(
            parse_rate("20Q/s").unwrap_err().to_string(),
            parse_size("20Q").unwrap_err().to_string()
        );
    }

    #[test]
    fn cli_parses_every_shape() {
        let c = Cli::try_parse_from([
            "w",
            "steps",
            "--total",
            "256M",
            "--step",
            "8M",
            "--interval",
            "10ms",
            "--threads",
            "4",
        ])
        .unwrap();
        assert_eq!(
            c.w.shape,
            Shape::Steps(StepsArgs {
                total: 256 << 20,
                step: 8 << 20,
                interval: Duration::from_millis(10),
                threads: 4,
                hold: Duration::ZERO,
            })
        );
        for argv in [
            &["w", "spike", "--size", "200M"][..],
            &["w", "ramp", "--total", "256M", "--rate", "20M/s"],
            &[
                "w", "procs", "--procs", "4", "--total", "256M", "--step", "8M",
            ],
            &["w", "pagecache", "--file", "/tmp/x", "--size", "256M"],
            &[
                "w",
                "cpu",
                "--busy-threads",
                "2",
                "--burst",
                "2s",
                "--idle",
                "1s",
            ],
            &["w", "idle", "--size", "100M", "--hold", "30s"],
        ] {
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["w", "steps", "--total", "1G"]).is_err());
        assert!(Cli::try_parse_from(["w", "steps", "--total", "x", "--step", "1M"]).is_err());
    }

    #[test]
    fn shares_add_up() {
        for (total, parts) in [(256u64 << 20, 3u32), (7, 4), (0, 2), (5, 1)] {
            let sum: u64 = (0..parts).map(|i| share(total, parts, i)).sum();
            assert_eq!(sum, total);
        }
    }

    /// Resident set size of this process, from /proc/self/statm.
    fn rss_bytes() -> u64 {
        let s = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * page_size() as u64
    }

    #[test]
    fn region_is_not_populated_until_touched() {
        let before = rss_bytes();
        let mut r = AnonRegion::new(64 << 20).unwrap();
        // Other test threads may allocate, so allow slack well below 64 MiB.
        assert!(
            rss_bytes() < before + (16 << 20),
            "mapping was populated eagerly"
        );
        r.touch(0, 64 << 20);
        assert!(
            rss_bytes() >= before + (60 << 20),
            "touch did not fault pages in"
        );
    }

    #[test]
    fn steps_touches_total_at_the_cadence() {
        let a = StepsArgs {
            total: 8 << 20,
            step: 2 << 20,
            interval: Duration::from_millis(20),
            threads: 2,
            hold: Duration::ZERO,
        };
        let r = steps(&a).unwrap();
        assert_eq!(r.touched_bytes, 8 << 20);
        // 4 steps => 3 waits of 20 ms.
        assert!(r.elapsed_us >= 60_000, "elapsed {} us", r.elapsed_us);
        assert!(steps(&StepsArgs { step: 1, ..a }).is_err());
    }

    #[test]
    fn ramp_follows_the_rate() {
        let r = ramp(&RampArgs {
            total: 4 << 20,
            rate: 40 << 20,
            hold: Duration::ZERO,
        })
        .unwrap();
        // 4 MiB at 40 MiB/s = 100 ms (the last tick touches without waiting).
        assert!(
            (80_000..1_000_000).contains(&r.elapsed_us),
            "elapsed {} us",
            r.elapsed_us
        );
    }

    #[test]
    fn procs_reports_success_and_shares() {
        let o = procs(&ProcsArgs {
            procs: 3,
            total: 3 << 20,
            step: 3 << 20,
            interval: Duration::from_millis(1),
            hold: Duration::ZERO,
        })
        .unwrap();
        assert_eq!(o.failure, None);
        assert_eq!(o.report.touched_bytes, 3 << 20);
    }

    #[test]
    fn procs_reports_a_killed_child() {
        // Children holding for a long time are killed (by their pids) from outside; the
        // failure names the signal and the killed children do not count as touched.
        let args = ProcsArgs {
            procs: 2,
            total: 2 << 20,
            step: 2 << 20,
            interval: Duration::from_millis(1),
            hold: Duration::from_secs(30),
        };
        let start = Instant::now();
        let children = spawn_children(&args).unwrap();
        for &pid in &children.0 {
            // SAFETY: our own unreaped children.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let o = wait_children(&args, children, start).unwrap();
        assert!(
            matches!(o.failure, Some(ChildFailure::Signaled { signal, .. }) if signal == libc::SIGTERM),
            "{:?}",
            o.failure
        );
        assert_eq!(o.report.touched_bytes, 0);
    }

    #[test]
    fn pagecache_writes_reads_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache");
        let r = pagecache(&PagecacheArgs {
            file: file.clone(),
            size: (3 << 20) + 17,
            sync_every: Some(1 << 20),
        })
        .unwrap();
        assert_eq!(r.touched_bytes, (3 << 20) + 17);
        assert_eq!(r.read_bytes, Some((3 << 20) + 17));
        assert!(!file.exists());
        // An existing file is refused, not overwritten, and left alone.
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            pagecache(&PagecacheArgs {
                file: file.clone(),
                size: 10,
                sync_every: None,
            }),
            Err(WorkloadError::CreateFile { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    #[test]
    fn cpu_counts_work() {
        let r = cpu(&CpuArgs {
            busy_threads: 2,
            burst: Duration::from_millis(50),
            idle: Duration::from_millis(10),
            cycles: 2,
        })
        .unwrap();
        assert!(r.iterations.unwrap() > 0);
        assert!(r.elapsed_us >= 110_000);
    }

    #[test]
    fn report_json_shape() {
        let r = WorkloadReport {
            shape: "steps".into(),
            touched_bytes: 5,
            elapsed_us: 7,
            iterations: None,
            read_bytes: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"shape":"steps","touched_bytes":5,"elapsed_us":7}"#
        );
    }
}
