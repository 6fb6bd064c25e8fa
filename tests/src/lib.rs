//! Helpers for the root and kernel integration tests (run by `cargo xtask test`, on the host
//! and in VMs on cgroup v2 kernels).
//!
//! Every test creates its cgroups under the test process's own cgroup, with unique names,
//! through [`scaler::cgroupfs::CgroupGuard`], which removes them on drop (also when the test
//! fails); it ends only the processes it started, by pid.
//!
//! Tests that run the agent use [`TestAgent`] (see [`agent`]) and assert on what it exposes in
//! structured form: JSON log events ([`LogQuery`]), the audit trail ([`AuditRecord`]), `scaler
//! status --json` ([`Status`]) and `/metrics` ([`Scrape`], metric names in [`metric`]).

pub mod agent;
pub mod log;
pub mod metrics;
pub mod schema;

pub use agent::{
    msg, AgentConfig, AuditOutcome, AuditRecord, Status, TestAgent, AGENT_DEBUG_LOG, AUDIT_TARGET,
};
pub use log::{JsonLog, LogEvent, LogQuery};
pub use metrics::{metric, Metric, Sample, Scrape};

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc::{channel, Receiver},
    time::{Duration, Instant},
};

pub use scaler::actuator::GuardLimits;
use scaler::cgroupfs::{CgroupGuard, Controller, Hierarchy, Limit};

/// The scaler binary under test: `$SCALER_BIN`, else `target/<profile>/scaler` next to the test
/// executable's `deps/` directory (built by `cargo build -p scaler-cli`, package of the binary).
pub fn scaler_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SCALER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("scaler")
}

/// Prints a line on the test process's stderr even when libtest captures the test's output (it
/// captures only the print macros): where a test ran, why it skipped, what emulation measured.
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What the tests run on, printed by each test so its output says where it ran.
pub struct TestEnv {
    pub memory: Hierarchy,
    pub kernel: String,
}

impl TestEnv {
    pub fn describe(&self) -> String {
        format!(
            "backend: {} (memory at {}), kernel {}, {}",
            self.memory.version,
            self.memory.mount.display(),
            self.kernel,
            emulation()
        )
    }
}

/// The environment, or `None` (with the reason printed) when the tests cannot run here: not
/// root. Anything else missing is a failure, not a skip: these tests exist to prove it works.
pub fn env(test: &str) -> Option<TestEnv> {
    if !nix::unistd::Uid::effective().is_root() {
        note(&format!(
            "SKIP {test}: needs root (loads BPF programs, creates cgroups)"
        ));
        return None;
    }
    let memory =
        Hierarchy::discover(Path::new("/"), Controller::Memory).expect("memory controller");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let e = TestEnv { memory, kernel };
    note(&format!("{test}: {}", e.describe()));
    let bin = scaler_bin();
    assert!(
        bin.exists(),
        "scaler binary {} not found: set SCALER_BIN or run `cargo xtask test`",
        bin.display()
    );
    Some(e)
}

/// A fresh memory cgroup under our own, removed on drop.
pub fn memory_cgroup(env: &TestEnv, prefix: &str) -> CgroupGuard {
    CgroupGuard::create_under_own(&[&env.memory], prefix).expect("creating a test cgroup")
}

/// A process we started, killed (by pid) and reaped on drop if still running.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_timeout(&mut self, t: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + t;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGINT, then wait (what Ctrl-C does).
    pub fn interrupt(&mut self, t: Duration) -> Option<ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        self.wait_timeout(t)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Makes `cmd` move itself into the cgroup at `cgroup_dir` before exec (so nothing it does
/// happens outside the cgroup). Keep the returned `cgroup.procs` file open until the spawn.
pub fn enter_cgroup_on_exec(cmd: &mut Command, cgroup_dir: &Path) -> std::fs::File {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup_dir.join("cgroup.procs"))
        .expect("cgroup.procs");
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
    procs
}

/// Runs `scaler workload ARGS` inside `cgroup_procs` (a cgroup.procs path): the child moves
/// itself in before exec, so no allocation of the workload happens outside the cgroup.
pub fn spawn_in_cgroup(cgroup_dir: &Path, program: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let procs = enter_cgroup_on_exec(&mut cmd, cgroup_dir);
    let child = cmd.spawn().expect("spawning workload");
    drop(procs);
    Proc { child }
}

/// The message `scaler watch` logs once it has attached.
pub const WATCH_ATTACHED: &str = "attached; streaming events (Ctrl-C detaches)";
/// The message `scaler watch` logs at exit, with its kernel counters (`submitted`, `dropped`,
/// `observe_shed`).
pub const WATCH_DETACHED: &str = "detached";

/// `scaler --log-json watch --json ...`, with its stdout lines parsed as they come and its JSON
/// log collected.
pub struct Watch {
    pub proc: Proc,
    pub lines: Receiver<serde_json::Value>,
    pub log: JsonLog,
    /// Stdout while nobody reads it (see [`Watch::start_unread`]).
    stdout: Option<ChildStdout>,
}

impl Watch {
    /// Starts `scaler watch --json` with `args` and waits until it has attached.
    pub fn start(args: &[&str]) -> Watch {
        let mut w = Watch::start_unread(args);
        w.read_stdout();
        w
    }

    /// Like [`Watch::start`], but leaves stdout unread (the pipe fills, the printer blocks)
    /// until [`Watch::read_stdout`].
    pub fn start_unread(args: &[&str]) -> Watch {
        let mut child = Command::new(scaler_bin())
            .arg("--log-json")
            .arg("watch")
            .arg("--json")
            .args(args)
            .env("SCALER_LOG", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning scaler watch");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = JsonLog::collect(stderr, "watch", &[]);
        let mut w = Watch {
            proc: Proc { child },
            lines: channel().1,
            log,
            stdout: Some(stdout),
        };
        if let Err(why) = w.log.wait(
            &LogQuery::message(WATCH_ATTACHED),
            1,
            Duration::from_secs(60),
        ) {
            let status = w.proc.wait_timeout(Duration::from_secs(1));
            panic!(
                "scaler watch did not attach: {why} (exit: {status:?})\n{}",
                w.log.tail()
            );
        }
        w
    }

    /// Starts reading stdout into [`Watch::lines`].
    pub fn read_stdout(&mut self) {
        let stdout = self.stdout.take().expect("stdout not read yet");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(e) => panic!("scaler watch printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        self.lines = rx;
    }

    /// Collects events until `until` returns true or `timeout` passes.
    pub fn collect(
        &self,
        timeout: Duration,
        mut until: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        while !until(&out) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(v) => out.push(v),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        out
    }
}

/// CLOCK_MONOTONIC in ns (the clock of the kernel's event timestamps).
pub fn monotonic_ns() -> u64 {
    scaler::ebpf::monotonic_ns()
}

/// Runs `scaler exec ARGS -- CMD...` and returns its exit status and parsed JSON summary.
pub fn scaler_exec(args: &[&str], cmd: &[&str]) -> (ExitStatus, serde_json::Value) {
    let dir = tempdir();
    let summary = dir.join("summary.json");
    let status = Command::new(scaler_bin())
        .arg("exec")
        .args(args)
        .arg("--json-summary")
        .arg(&summary)
        .arg("--")
        .args(cmd)
        .stdout(Stdio::null())
        .status()
        .expect("running scaler exec");
    let text = std::fs::read_to_string(&summary).unwrap_or_else(|e| {
        panic!(
            "no summary at {} ({e}); scaler exec exited {status}",
            summary.display()
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    (
        status,
        serde_json::from_str(&text).expect("summary is JSON"),
    )
}

/// A private temporary directory (removed by the caller).
pub fn tempdir() -> PathBuf {
    let base = std::env::temp_dir().join(format!(
        "scaler-test-{}-{}",
        std::process::id(),
        monotonic_ns()
    ));
    std::fs::create_dir_all(&base).expect("temp dir");
    base
}

/// The `kind` of an event.
pub fn kind(v: &serde_json::Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// CPU helpers (tests/tests/cpu.rs)

/// The cpu controller's hierarchy (v1 `/sys/fs/cgroup/cpu` here, the v2 tree in VMs).
pub fn cpu_hierarchy() -> Hierarchy {
    Hierarchy::discover(Path::new("/"), Controller::Cpu).expect("cpu controller")
}

/// A fresh cgroup of the cpu controller under our own, with a quota of `cores` (at the
/// cgroup's period), removed on drop.
pub fn cpu_cgroup(prefix: &str, cores: f64) -> CgroupGuard {
    let h = cpu_hierarchy();
    let g = CgroupGuard::create_under_own(&[&h], prefix).expect("creating a test cpu cgroup");
    let cg = g.cgroup(Controller::Cpu).expect("cpu cgroup");
    let (_, period) = cg.cpu_max().expect("reading the CFS period");
    g.set_cpu_quota(scaler::cgroupfs::CpuQuota::from_cores(cores, period))
        .expect("setting the quota");
    g
}

/// `(nr_throttled, throttled time in µs)` from a cgroup's `cpu.stat`.
pub fn throttling(cg: &scaler::cgroupfs::Cgroup) -> (u64, u64) {
    let s = cg.cpu_stat().expect("reading cpu.stat");
    (s.nr_throttled, s.throttled_ns / 1000)
}

/// Where the tests run: on the machine itself, or in a test VM under qemu's software
/// emulation (TCG), as `cargo xtask vm-test` tells the guest through `SCALER_VM_KERNEL` and
/// `SCALER_VM_TCG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulation {
    /// Real hardware (or a hardware-virtualized VM): timings are the product's.
    Native,
    /// qemu TCG; `multi_threaded` when each vCPU has its own host thread (`thread=multi`), so
    /// the workload and the scaler's engine can run at the same time.
    Tcg { multi_threaded: bool },
}

impl std::fmt::Display for Emulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Native => f.write_str("native (no emulation)"),
            Self::Tcg {
                multi_threaded: true,
            } => f.write_str("qemu TCG emulation, multi-threaded (one host thread per vCPU)"),
            Self::Tcg {
                multi_threaded: false,
            } => f.write_str(
                "qemu TCG emulation, single-threaded (vCPUs time-sliced on one host thread)",
            ),
        }
    }
}

/// See [`Emulation`].
pub fn emulation() -> Emulation {
    if std::env::var_os("SCALER_VM_KERNEL").is_none() {
        return Emulation::Native;
    }
    Emulation::Tcg {
        multi_threaded: std::env::var("SCALER_VM_TCG").is_ok_and(|v| v == "multi"),
    }
}

/// True inside the test VMs (`cargo xtask vm-test`): the kernel runs under software emulation,
/// 10-50x slower than the host.
pub fn emulated() -> bool {
    emulation() != Emulation::Native
}

/// The step interval of the `steps` workload: 10 ms (800 MiB/s with 8 MiB steps, the race of
/// ../shared/FACTS.md) on real hardware, 100 ms under emulation (for tests that do not race).
pub fn steps_interval() -> &'static str {
    if emulated() {
        "100ms"
    } else {
        "10ms"
    }
}

/// `scaler workload` arguments for 256 MiB in 8 MiB steps every [`steps_interval`] (10 ms, or
/// 100 ms under emulation), for the tests that do not race.
pub fn steps_256m() -> Vec<&'static str> {
    vec![
        "workload",
        "steps",
        "--total",
        "256M",
        "--step",
        "8M",
        "--interval",
        steps_interval(),
    ]
}

/// Like [`env`], but also skips (loudly, with the reason) under software emulation: for tests
/// whose subject is a raw speed or rate (event storms of 100k/s), which a VM running 10-50x
/// slower than real time cannot reproduce. They run on real hardware (the host stage of
/// `cargo xtask test`).
pub fn env_native(test: &str, what: &str) -> Option<TestEnv> {
    if emulated() {
        note(&format!(
            "SKIP {test}: {what} is not meaningful under software emulation (kernel {}); \
             this test runs on the host stage",
            std::env::var("SCALER_VM_KERNEL").unwrap_or_default()
        ));
        return None;
    }
    env(test)
}

/// Like [`env`], for tests that must win the OOM race (a rescue) or react within a CPU quota
/// period: they run natively and under multi-threaded emulation (where the workload and the
/// engine run in parallel, on paced workloads: see [`RaceWorkload`]). Under single-threaded
/// emulation, where one host thread time-slices the workload and the engine so that no reaction
/// can overlap the workload's progress, they skip loudly.
pub fn env_race(test: &str, what: &str) -> Option<TestEnv> {
    if emulation()
        == (Emulation::Tcg {
            multi_threaded: false,
        })
    {
        note(&format!(
            "SKIP {test}: {what} cannot be raced under single-threaded emulation (kernel {}): \
             run the VM with SCALER_VM_TCG_THREAD=multi (the default of `cargo xtask vm-test`)",
            std::env::var("SCALER_VM_KERNEL").unwrap_or_default()
        ));
        return None;
    }
    env(test)
}

// ---------------------------------------------------------------------------------------------
// The OOM race, natively and under emulation

/// Bytes of clean page cache the emulated race workload puts in its cgroup before growing.
pub const EMULATED_CUSHION: u64 = 32 << 20;
/// The emulated race workload's step.
pub const EMULATED_STEP: u64 = 2 << 20;
/// How many reaction latencies the cushion must last under emulation.
pub const EMULATED_MARGIN: f64 = 20.0;

/// The workload that outgrows a 64 MiB limit to 256 MiB of anonymous memory, which a static
/// limit cannot survive (the OOM kill is asserted by the baseline tests with the same workload).
///
/// Natively: 8 MiB steps every 10 ms, the race of ../shared/FACTS.md (the kernel OOM-kills
/// 0.76 ms after the first reclaim; the scaler reacts in about 0.1 ms).
///
/// Under emulation the kernel's reclaim-to-OOM window of a purely anonymous workload is about
/// 10-30 ms, the same order as the engine's wakeup there (ms-scale vCPU wakeups on a loaded
/// host): a coin flip that says nothing about the product. So the emulated workload first writes
/// [`EMULATED_CUSHION`] of a file (clean page cache, charged to its cgroup) and then grows in
/// [`EMULATED_STEP`] steps paced from the engine's reaction latency measured in this guest
/// ([`emulated_calibration`]): at the limit, each charge reclaims cache instead of failing, so
/// the race window is the time the cushion lasts, [`EMULATED_MARGIN`] reaction latencies. The
/// anonymous growth alone is still 4x the limit: without a raise the cushion is used up and the
/// kernel OOM-kills the workload.
pub struct RaceWorkload {
    dir: PathBuf,
    argv: Vec<String>,
    /// One line saying what runs, for the test output.
    pub description: String,
}

impl RaceWorkload {
    /// The 256 MiB workload with `threads` allocating threads.
    pub fn steps(threads: u32) -> RaceWorkload {
        Self::steps_to(threads, "256M")
    }

    /// The same workload touching `total` (a size `scaler workload steps` takes).
    pub fn steps_to(threads: u32, total: &str) -> RaceWorkload {
        let dir = tempdir();
        let bin = scaler_bin().display().to_string();
        let threads = threads.to_string();
        let (argv, description) = if emulated() {
            let interval = emulated_calibration().interval;
            let ms = format!("{}ms", interval.as_millis());
            let cache = dir.join("cushion");
            let script = format!(
                "dd if=/dev/zero of='{}' bs=1M count={} conv=fsync status=none && exec \"$0\" \
                 workload steps --total {total} --step {}M --interval {ms} --threads {threads}",
                cache.display(),
                EMULATED_CUSHION >> 20,
                EMULATED_STEP >> 20,
            );
            let description = format!(
                "emulated race: {} MiB page-cache cushion, then {total} anonymous in {} MiB steps every {ms} ({threads} threads)",
                EMULATED_CUSHION >> 20,
                EMULATED_STEP >> 20
            );
            (vec!["sh".into(), "-c".into(), script, bin], description)
        } else {
            let args = [
                "workload",
                "steps",
                "--total",
                total,
                "--step",
                "8M",
                "--interval",
                "10ms",
                "--threads",
                &threads,
            ];
            let argv = std::iter::once(bin)
                .chain(args.iter().map(|s| s.to_string()))
                .collect();
            (
                argv,
                format!(
                    "native race: {total} anonymous in 8 MiB steps every 10 ms ({threads} threads)"
                ),
            )
        };
        note(&format!("  workload: {description}"));
        RaceWorkload {
            dir,
            argv,
            description,
        }
    }

    /// The command line (program first).
    pub fn argv(&self) -> Vec<&str> {
        self.argv.iter().map(String::as_str).collect()
    }

    /// Starts the workload in a cgroup (see [`spawn_in_cgroup`]).
    pub fn spawn_in(&self, cgroup_dir: &Path) -> Proc {
        let args: Vec<&str> = self.argv[1..].iter().map(String::as_str).collect();
        spawn_in_cgroup(cgroup_dir, Path::new(&self.argv[0]), &args)
    }
}

impl Drop for RaceWorkload {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A workload that fills its cgroup's page cache with a file of `size` bytes, which reclaim can
/// always give back (so a small limit is survived, with many reclaim rounds).
///
/// Natively: `scaler workload pagecache` (write the file, then read it back). Under emulation,
/// dirty pages reach the emulated disk too slowly for reclaim to keep up (a 48 MiB cgroup writing
/// 192 MiB was OOM-killed on 6.18 with 1.4 MiB of anonymous memory), so the test writes and
/// syncs the file beforehand, drops it from the cache, and the workload only reads it (`dd`):
/// clean page cache, charged to the workload's cgroup as it is read.
pub struct PageCacheWorkload {
    dir: PathBuf,
    file: PathBuf,
    size: u64,
}

impl PageCacheWorkload {
    /// Prepares the workload (under emulation: writes the file).
    pub fn new(size: u64) -> PageCacheWorkload {
        let dir = tempdir();
        let file = dir.join("fill");
        if emulated() {
            let mib = size.div_ceil(1 << 20).to_string();
            let of = format!("of={}", file.display());
            let iff = format!("if={}", file.display());
            for args in [
                vec![
                    "if=/dev/zero",
                    of.as_str(),
                    "bs=1M",
                    "count",
                    "conv=fsync",
                    "status=none",
                ],
                vec![iff.as_str(), "iflag=nocache", "count=0", "status=none"],
            ] {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| {
                        if *a == "count" {
                            format!("count={mib}")
                        } else {
                            a.to_string()
                        }
                    })
                    .collect();
                let st = Command::new("dd").args(&args).status().expect("running dd");
                assert!(st.success(), "dd {args:?}: {st}");
            }
            note(&format!("  workload: emulated page cache: {mib} MiB file written and synced beforehand, read (clean) in the cgroup"));
        }
        PageCacheWorkload { dir, file, size }
    }

    /// Starts it in a cgroup (see [`spawn_in_cgroup`]).
    pub fn spawn_in(&self, cgroup_dir: &Path) -> Proc {
        if emulated() {
            let iff = format!("if={}", self.file.display());
            spawn_in_cgroup(
                cgroup_dir,
                Path::new("dd"),
                &[&iff, "of=/dev/null", "bs=1M", "status=none"],
            )
        } else {
            let size = format!("{}M", self.size.div_ceil(1 << 20));
            spawn_in_cgroup(
                cgroup_dir,
                &scaler_bin(),
                &[
                    "workload",
                    "pagecache",
                    "--file",
                    self.file.to_str().unwrap(),
                    "--size",
                    &size,
                ],
            )
        }
    }
}

impl Drop for PageCacheWorkload {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What [`emulated_calibration`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// The largest reaction latency (kernel event to limit written) of the calibration run.
    pub reaction: Duration,
    /// The step interval derived from it.
    pub interval: Duration,
}

/// Measures the engine's reaction latency in this guest once per test binary: `scaler exec
/// --memory 64M` over the cushioned workload at a slow pace (2 MiB every 100 ms, a cushion of
/// 1.6 s), then sets the step interval so that the cushion lasts [`EMULATED_MARGIN`] times the
/// slowest reaction seen (between 10 ms and 250 ms).
pub fn emulated_calibration() -> Calibration {
    static CAL: std::sync::OnceLock<Calibration> = std::sync::OnceLock::new();
    *CAL.get_or_init(|| {
        let dir = tempdir();
        let bin = scaler_bin().display().to_string();
        let script = format!(
            "dd if=/dev/zero of='{}' bs=1M count={} conv=fsync status=none && exec \"$0\" \
             workload steps --total 160M --step {}M --interval 100ms",
            dir.join("cushion").display(),
            EMULATED_CUSHION >> 20,
            EMULATED_STEP >> 20
        );
        let (status, s) = scaler_exec(&["--memory", "64M", "--memory-max", "2G"], &["sh", "-c", &script, &bin]);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(status.success() && s["oom_kills"] == 0, "calibration: even a slow, cushioned workload was not rescued under emulation: {status} {s}");
        let us = s["reaction_latency_us"]["max"].as_f64().unwrap_or_else(|| panic!("calibration: no raise measured: {s}"));
        let reaction = Duration::from_secs_f64(us / 1e6);
        let cushion_steps = (EMULATED_CUSHION / EMULATED_STEP) as f64;
        let interval = reaction.mul_f64(EMULATED_MARGIN / cushion_steps).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let interval = Duration::from_millis(interval.as_millis() as u64 + 1);
        note(&format!(
            "  emulation calibration: slowest reaction {:.1} ms over {} raises (p50 {:.1} ms); steps every {} ms: \
             the cushion lasts {:.0} ms, {:.0}x the slowest reaction",
            us / 1e3,
            s["reaction_latency_us"]["count"],
            s["reaction_latency_us"]["p50"].as_f64().unwrap_or(0.0) / 1e3,
            interval.as_millis(),
            interval.as_secs_f64() * 1e3 * cushion_steps,
            interval.as_secs_f64() * cushion_steps / reaction.as_secs_f64()
        ));
        Calibration { reaction, interval }
    })
}

/// Escapes glob metacharacters of a literal path (for a policy `match` that selects exactly
/// one cgroup).
pub fn glob_literal(p: &str) -> String {
    p.chars()
        .map(|c| {
            if matches!(c, '*' | '?' | '[' | ']') {
                format!("[{c}]")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The memory cgroup's path from the hierarchy root.
pub fn memory_path(g: &CgroupGuard) -> String {
    g.path(Controller::Memory).unwrap().to_string()
}

/// The memory limit of the guard's cgroup, as read now.
pub fn limit_of(g: &CgroupGuard) -> Limit {
    g.cgroup(Controller::Memory)
        .unwrap()
        .memory_limit()
        .unwrap()
}
