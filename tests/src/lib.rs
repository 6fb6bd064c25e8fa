//! Helpers for the root and kernel integration tests (run by `cargo xtask test`, on the host
//! and in VMs on cgroup v2 kernels).
//!
//! Every test creates its cgroups under the test process's own cgroup, with unique names,
//! through [`scaler::cgroupfs::CgroupGuard`], which removes them on drop (also when the test
//! fails); it ends only the processes it started, by pid.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{channel, Receiver},
    time::{Duration, Instant},
};

use scaler::cgroupfs::{CgroupGuard, Controller, Hierarchy};

/// The scaler binary under test: `$SCALER_BIN`, else `target/<profile>/scaler` next to the test
/// executable's `deps/` directory.
pub fn scaler_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SCALER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("scaler")
}

/// What the tests run on, printed by each test so its output says where it ran.
pub struct TestEnv {
    pub memory: Hierarchy,
    pub kernel: String,
}

impl TestEnv {
    pub fn describe(&self) -> String {
        format!("backend: {} (memory at {}), kernel {}", self.memory.version, self.memory.mount.display(), self.kernel)
    }
}

/// The environment, or `None` (with the reason printed) when the tests cannot run here: not
/// root. Anything else missing is a failure, not a skip: these tests exist to prove it works.
pub fn env(test: &str) -> Option<TestEnv> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP {test}: needs root (loads BPF programs, creates cgroups)");
        return None;
    }
    let memory = Hierarchy::discover(Path::new("/"), Controller::Memory).expect("memory controller");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let e = TestEnv { memory, kernel };
    eprintln!("{test}: {}", e.describe());
    let bin = scaler_bin();
    assert!(bin.exists(), "scaler binary {} not found: set SCALER_BIN or run `cargo xtask test`", bin.display());
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
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), nix::sys::signal::Signal::SIGINT);
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

/// Runs `scaler workload ARGS` inside `cgroup_procs` (a cgroup.procs path): the child moves
/// itself in before exec, so no allocation of the workload happens outside the cgroup.
pub fn spawn_in_cgroup(cgroup_dir: &Path, program: &Path, args: &[&str]) -> Proc {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let procs = std::fs::OpenOptions::new().write(true).open(cgroup_dir.join("cgroup.procs")).expect("cgroup.procs");
    let fd = procs.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::inherit());
    // SAFETY: only write(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawning workload");
    drop(procs);
    Proc { child }
}

/// `scaler watch --json ...`, with its stdout lines parsed as they come.
pub struct Watch {
    pub proc: Proc,
    pub lines: Receiver<serde_json::Value>,
}

impl Watch {
    /// Starts `scaler watch --json` with `args` and waits until it has attached.
    pub fn start(args: &[&str]) -> Watch {
        let mut child = Command::new(scaler_bin())
            .arg("watch")
            .arg("--json")
            .args(args)
            .env("SCALER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning scaler watch");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
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
        let (rtx, rrx) = channel();
        std::thread::spawn(move || {
            let mut ready = Some(rtx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  [watch] {line}");
                if line.contains("streaming events") {
                    if let Some(t) = ready.take() {
                        let _ = t.send(());
                    }
                }
            }
        });
        let mut w = Watch { proc: Proc { child }, lines: rx };
        if rrx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = w.proc.wait_timeout(Duration::from_secs(1));
            panic!("scaler watch did not attach within 60 s (exit: {status:?})");
        }
        w
    }

    /// Collects events until `until` returns true or `timeout` passes.
    pub fn collect(&self, timeout: Duration, mut until: impl FnMut(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        while !until(&out) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(100))) {
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
    let text = std::fs::read_to_string(&summary).unwrap_or_else(|e| panic!("no summary at {} ({e}); scaler exec exited {status}", summary.display()));
    let _ = std::fs::remove_dir_all(&dir);
    (status, serde_json::from_str(&text).expect("summary is JSON"))
}

/// A private temporary directory (removed by the caller).
pub fn tempdir() -> PathBuf {
    let base = std::env::temp_dir().join(format!("scaler-test-{}-{}", std::process::id(), monotonic_ns()));
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
    g.set_cpu_quota(scaler::cgroupfs::CpuQuota::from_cores(cores, period)).expect("setting the quota");
    g
}

/// `(nr_throttled, throttled time in µs)` from a cgroup's `cpu.stat`.
pub fn throttling(cg: &scaler::cgroupfs::Cgroup) -> (u64, u64) {
    let s = cg.cpu_stat().expect("reading cpu.stat");
    (s.nr_throttled, s.throttled_ns / 1000)
}

/// True inside the test VMs (`cargo xtask vm-test`): the kernel runs under software emulation,
/// 10-50x slower than the host, so a workload's pace is scaled to keep the race meaningful.
pub fn emulated() -> bool {
    std::env::var_os("SCALER_VM_KERNEL").is_some()
}

/// The step interval of the `steps` workload: 10 ms (800 MiB/s with 8 MiB steps, the race of
/// ../shared/FACTS.md) on real hardware, 100 ms under emulation.
pub fn steps_interval() -> &'static str {
    if emulated() {
        "100ms"
    } else {
        "10ms"
    }
}

/// Like [`env`], but also skips (loudly, with the reason) under software emulation: for tests
/// whose subject is a speed or a rate (CPU throttling within a quota period, event storms of
/// 100k/s), which a VM running 10-50x slower than real time cannot meaningfully reproduce. They
/// run on real hardware (the host stage of `cargo xtask test`).
pub fn env_native(test: &str, what: &str) -> Option<TestEnv> {
    if emulated() {
        eprintln!(
            "SKIP {test}: {what} is not meaningful under software emulation (kernel {}); \
             this test runs on the host stage",
            std::env::var("SCALER_VM_KERNEL").unwrap_or_default()
        );
        return None;
    }
    env(test)
}
