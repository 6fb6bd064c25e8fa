//! The real-workload suite (`scaler bench --suite real`): programs nobody here wrote
//! (stress-ng, redis-server filled by redis-benchmark, xz, sort, python with numpy, make with
//! a C compiler), each described by data ([`RealSpec`]: the command, how its work ends, the
//! input it needs generated, the packages that provide it), run by the same competitors as the
//! synthetic workloads from the same starting limit.
//!
//! A run has two phases:
//! - **work**: from spawn until the work completes. How that is known depends on the
//!   [`RealKind`]: a batch program is wrapped by `scaler workload run`, which records the
//!   program's time and exit status in a done file and then sleeps, so the run's cgroup (and
//!   `scaler exec` around it) outlives the program; a holding program (numpy) writes the done
//!   file itself and keeps its memory; a service (redis-server) is driven by a load generator
//!   run outside the run's cgroup, and the work ends when the generator does;
//! - **hold** (only for competitors that lower limits: the eBPF scaler): the cgroup stays
//!   while usage, working set and limit are sampled, until the limit is right-sized
//!   ([`right_sized`]) or the deadline (the policy cooldown + 45 s, or `--hold`).
//!
//! The figures computed from the run's timeline ([`limit_at`], [`first_right_sized`],
//! [`last_raise_before`], [`mib_seconds_above`]) are pure functions, unit-tested on synthetic
//! timelines.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use scaler::clock::monotonic_ns;

use super::competitors::{CompetitorId, Resource};
use super::observer::{Sample, Sampler};
use super::runner::{ExitInfo, RunRecord, Waited, Watch, WorkloadSpec};
use super::stats::median;
use super::{BenchError, BenchOptions};
use crate::workload::DoneRecord;

/// A limit is right-sized when it is at most this many times the working set (or at most the
/// starting limit).
pub const RIGHT_SIZE_FACTOR: f64 = 1.3;

/// The hold deadline beyond the policy cooldown.
pub const HOLD_BEYOND_COOLDOWN: Duration = Duration::from_secs(45);

/// Timeline samples kept at most this often during a real run (and at every limit change).
pub const KEEP_EVERY: Duration = Duration::from_millis(10);

/// Timelines written to the JSON are thinned to about this many samples.
pub const TIMELINE_POINTS: usize = 1500;

/// Which suite `scaler bench` runs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Suite {
    /// The project's own workload shapes (`scaler workload ...`).
    #[default]
    Synthetic,
    /// Real programs (stress-ng, redis, xz, sort, numpy, make).
    Real,
}

/// How a real workload's work ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RealKind {
    /// A program that exits when done: run under `scaler workload run`, which writes the
    /// done file and keeps the cgroup alive.
    Batch,
    /// A program that writes the done file (`{done}`) itself and keeps its memory until killed.
    Holds,
    /// A server, filled by `driver` run outside the run's cgroup once it answers on
    /// `{socket}`; the work ends when the driver does.
    Service,
}

/// Input generated once, before the runs (deterministically: the same bytes every time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Setup {
    /// `{input}`: text of words and phrases from a small vocabulary (compressible, not
    /// trivially), `bytes` long.
    Text { bytes: u64 },
    /// `{input}`: random lines of 31 alphanumeric characters, `bytes` long.
    Lines { bytes: u64 },
    /// `{dir}`: a C project of `files` files, each one function of `statements` statements,
    /// and a Makefile.
    CProject { files: u32, statements: u32 },
}

/// A program a real workload needs, and the Debian package that provides it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Need {
    /// Program name looked up in PATH (`python3+numpy`: a python3 that can import numpy).
    pub program: String,
    /// Package to install.
    pub package: String,
}

/// The work a run does, for P = W/T.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Work {
    /// W.
    pub count: u64,
    /// Its unit (`requests`, `MiB`, ...).
    pub unit: String,
}

/// A real workload, as data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RealSpec {
    /// How its work ends.
    pub kind: RealKind,
    /// The program and its arguments. Placeholders: `{prog:NAME}` (the program found for a
    /// [`Need`]; replaced when the programs are checked), `{input}`, `{dir}` (the generated
    /// input), `{scratch}` (the benchmark's scratch directory), `{done}` (the run's done
    /// file), `{socket}` (the run's unix socket).
    pub command: Vec<String>,
    /// Service workloads: the load generator (same placeholders), run outside the run's cgroup.
    pub driver: Option<Vec<String>>,
    /// Input to generate first.
    pub setup: Option<Setup>,
    /// The work per run.
    pub work: Option<Work>,
    /// The programs it needs.
    pub needs: Vec<Need>,
}

/// The embedded numpy program: `python3 -c NUMPY DONE spike|steps TOTAL_MIB STEP_MIB`.
const NUMPY: &str = r#"import os, signal, sys, time
import numpy as np
done, mode, total, step = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.monotonic_ns()
keep = []
if mode == "spike":
    keep.append(np.ones(total << 17))
else:
    for _ in range(total // step):
        keep.append(np.ones(step << 17))
        time.sleep(0.01)
t1 = time.monotonic_ns()
with open(done + ".tmp", "w") as f:
    f.write('{"elapsed_us": %d, "done_ns": %d, "exit_code": 0}\n' % ((t1 - t0) // 1000, t1))
os.rename(done + ".tmp", done)
while True:
    signal.pause()
"#;

const MIB: u64 = 1 << 20;

/// The real suite's workloads (full or `--quick` sizes), before their programs are checked.
pub fn workloads(o: &BenchOptions) -> Vec<WorkloadSpec> {
    let q = o.quick;
    let need = |program: &str, package: &str| Need {
        program: program.into(),
        package: package.into(),
    };
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let work = |count: u64, unit: &str| {
        Some(Work {
            count,
            unit: unit.into(),
        })
    };
    let real = |id: &str, spec: RealSpec| WorkloadSpec {
        id: id.into(),
        resource: Resource::Memory,
        args: Vec::new(),
        start: o.memory,
        max: o.memory_max,
        headroom: o.headroom,
        period_us: super::CPU_PERIOD_US,
        real: Some(spec),
    };
    let (vm_bytes, vm_ops) = if q { (128, 20_000) } else { (256, 100_000) };
    let redis_n: u64 = if q { 40_000 } else { 120_000 };
    let xz_bytes = if q { 8 * MIB } else { 20 * MIB };
    let (sort_bytes, sort_buf) = if q { (24 * MIB, 100) } else { (80 * MIB, 300) };
    let (np_total, np_step) = if q { (160, 8) } else { (320, 8) };
    let (c_files, c_statements) = if q { (4, 500) } else { (24, 700) };
    let numpy = |mode: &str| RealSpec {
        kind: RealKind::Holds,
        command: vec![
            "{prog:python3+numpy}".into(),
            "-c".into(),
            NUMPY.into(),
            "{done}".into(),
            mode.into(),
            np_total.to_string(),
            np_step.to_string(),
        ],
        driver: None,
        setup: None,
        work: work(np_total, "MiB"),
        needs: vec![need("python3+numpy", "python3-numpy")],
    };
    let all = vec![
        real(
            "stress-vm",
            RealSpec {
                kind: RealKind::Batch,
                command: words(&format!(
                    "{{prog:stress-ng}} --vm 1 --vm-bytes {vm_bytes}M --vm-keep --vm-ops {vm_ops} \
                     --oomable --temp-path {{scratch}}"
                )),
                driver: None,
                setup: None,
                work: work(vm_ops, "bogo ops"),
                needs: vec![need("stress-ng", "stress-ng")],
            },
        ),
        real(
            "redis",
            RealSpec {
                kind: RealKind::Service,
                command: [
                    "{prog:redis-server}",
                    "--port",
                    "0",
                    "--unixsocket",
                    "{socket}",
                    "--unixsocketperm",
                    "700",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ]
                .map(str::to_owned)
                .to_vec(),
                driver: Some(words(&format!(
                    "{{prog:redis-benchmark}} -s {{socket}} -t set -n {redis_n} -r {redis_n} \
                     -d 3000 -P 16 -q"
                ))),
                setup: None,
                work: work(redis_n, "requests"),
                needs: vec![
                    need("redis-server", "redis-server"),
                    need("redis-benchmark", "redis-tools"),
                ],
            },
        ),
        real(
            "xz",
            RealSpec {
                kind: RealKind::Batch,
                command: words("{prog:xz} -9 -T1 -c {input}"),
                driver: None,
                setup: Some(Setup::Text { bytes: xz_bytes }),
                work: work(xz_bytes / MIB, "MiB"),
                needs: vec![need("xz", "xz-utils")],
            },
        ),
        real(
            "sort",
            RealSpec {
                kind: RealKind::Batch,
                command: words(&format!(
                    "{{prog:sort}} -S {sort_buf}M -T {{scratch}} {{input}}"
                )),
                driver: None,
                setup: Some(Setup::Lines { bytes: sort_bytes }),
                work: work(sort_bytes / LINE_BYTES, "lines"),
                needs: vec![need("sort", "coreutils")],
            },
        ),
        real("numpy-steps", numpy("steps")),
        real("numpy-spike", numpy("spike")),
        real(
            "make",
            RealSpec {
                kind: RealKind::Batch,
                command: words("{prog:make} -j2 -B -s -C {dir} CC={prog:cc}"),
                driver: None,
                setup: Some(Setup::CProject {
                    files: c_files,
                    statements: c_statements,
                }),
                work: work(u64::from(c_files) + 1, "files"),
                needs: vec![need("make", "make"), need("cc", "gcc")],
            },
        ),
    ];
    all.into_iter()
        .filter(|w| o.workloads.is_empty() || o.workloads.contains(&w.id))
        .collect()
}

/// The names of the real suite's workloads.
pub const NAMES: &str = "stress-vm, redis, xz, sort, numpy-steps, numpy-spike, make";

/// A real workload left out because a program it needs is missing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Skipped {
    /// Workload name.
    pub workload: String,
    /// What is missing and how to install it.
    pub reason: String,
}

/// The install command for every package the real suite needs.
pub const INSTALL_ALL: &str =
    "apt-get install stress-ng redis-server redis-tools python3-numpy xz-utils coreutils make gcc";

/// `name` in PATH, if it is there and executable.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A python3 that can import numpy: /usr/bin/python3 first, then python3 in PATH.
pub fn python_with_numpy() -> Option<PathBuf> {
    [
        Some(PathBuf::from("/usr/bin/python3")),
        find_in_path("python3"),
    ]
    .into_iter()
    .flatten()
    .find(|p| {
        Command::new(p)
            .args(["-c", "import numpy"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Finds the program of a [`Need`].
fn find_need(program: &str) -> Option<PathBuf> {
    match program {
        "python3+numpy" => python_with_numpy(),
        p => find_in_path(p),
    }
}

/// Checks the programs of `specs` with `find` (a program name to its path); returns the
/// workloads that can run, with `{prog:NAME}` replaced by the path found, and the ones skipped
/// (with what is missing and how to install it).
pub fn check_programs(
    specs: Vec<WorkloadSpec>,
    find: impl Fn(&str) -> Option<PathBuf>,
) -> (Vec<WorkloadSpec>, Vec<Skipped>) {
    let mut found: BTreeMap<String, Option<PathBuf>> = BTreeMap::new();
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for mut w in specs {
        let Some(real) = w.real.as_mut() else {
            ok.push(w);
            continue;
        };
        let missing: Vec<&Need> = real
            .needs
            .iter()
            .filter(|n| {
                found
                    .entry(n.program.clone())
                    .or_insert_with(|| find(&n.program))
                    .is_none()
            })
            .collect();
        if !missing.is_empty() {
            let what = missing
                .iter()
                .map(|n| match n.program.as_str() {
                    "python3+numpy" => "a python3 that can import numpy".to_owned(),
                    p => format!("{p} (not in PATH)"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let packages = missing
                .iter()
                .map(|n| n.package.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            skipped.push(Skipped {
                workload: w.id.clone(),
                reason: format!("missing {what}; install with: apt-get install {packages}"),
            });
            continue;
        }
        let subst = |s: &str| {
            let mut s = s.to_owned();
            for (name, path) in &found {
                if let Some(p) = path {
                    s = s.replace(&format!("{{prog:{name}}}"), &p.display().to_string());
                }
            }
            s
        };
        real.command = real.command.iter().map(|a| subst(a)).collect();
        real.driver = real
            .driver
            .as_ref()
            .map(|d| d.iter().map(|a| subst(a)).collect());
        ok.push(w);
    }
    (ok, skipped)
}

/// [`check_programs`] with the programs of this machine.
pub fn check_installed(specs: Vec<WorkloadSpec>) -> (Vec<WorkloadSpec>, Vec<Skipped>) {
    check_programs(specs, find_need)
}

// ---------------------------------------------------------------------------------------------
// Generated input

/// Bytes per line of [`Setup::Lines`].
pub const LINE_BYTES: u64 = 32;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Where a workload's generated input lives.
pub fn input_path(scratch: &Path, w: &WorkloadSpec) -> PathBuf {
    scratch.join(format!("input-{}", w.id))
}

/// Writes `bytes` of text: lines of two 8-word phrases (from 4,096 phrases over 256 words) and
/// a number.
pub fn write_text(out: &mut impl Write, bytes: u64) -> std::io::Result<()> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    let words: Vec<String> = (0..256)
        .map(|_| {
            let len = 2 + r.next() % 9;
            (0..len)
                .map(|_| letters[(r.next() % 26) as usize] as char)
                .collect()
        })
        .collect();
    let phrases: Vec<String> = (0..4096)
        .map(|_| {
            (0..8)
                .map(|_| words[(r.next() % 256) as usize].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut n = 0u64;
    while n < bytes {
        let line = format!(
            "{} {} {}\n",
            phrases[(r.next() % 4096) as usize],
            phrases[(r.next() % 4096) as usize],
            r.next() % 65536
        );
        let take = (bytes - n).min(line.len() as u64) as usize;
        out.write_all(&line.as_bytes()[..take])?;
        n += take as u64;
    }
    Ok(())
}

/// Writes `bytes / 32` random lines of 31 alphanumeric characters.
pub fn write_lines(out: &mut impl Write, bytes: u64) -> std::io::Result<()> {
    let mut r = Rng(0xD1B5_4A32_D192_ED03);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut line = [b'\n'; LINE_BYTES as usize];
    for _ in 0..bytes / LINE_BYTES {
        for c in &mut line[..LINE_BYTES as usize - 1] {
            *c = alphabet[(r.next() % alphabet.len() as u64) as usize];
        }
        out.write_all(&line)?;
    }
    Ok(())
}

/// Writes a C project into `dir`: `f0.c` .. `f<files-1>.c` (one function of `statements`
/// statements each: enough for cc1 -O2 to use tens of MiB), `main.c` and a Makefile.
pub fn write_c_project(dir: &Path, files: u32, statements: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for f in 0..files {
        let mut s = format!("double f{f}(const double *a) {{\n  double s = 0, t = 1;\n");
        for i in 0..statements {
            let k = u64::from(f) * 1000 + u64::from(i);
            s.push_str(&format!(
                "  s += a[{}] * {k}.5 + t * a[{}]; t = t * 0.999 + s / {}.0; \
                 if (s > {}) s -= a[{}];\n",
                i % 61,
                (i * 7) % 61,
                i + 3,
                k * 10,
                (i * 3) % 61
            ));
        }
        s.push_str("  return s + t;\n}\n");
        std::fs::write(dir.join(format!("f{f}.c")), s)?;
    }
    let mut main = String::from("#include <stdio.h>\n");
    for f in 0..files {
        main.push_str(&format!("double f{f}(const double *a);\n"));
    }
    main.push_str("int main(void) {\n  double a[64] = {1}, s = 0;\n");
    for f in 0..files {
        main.push_str(&format!("  s += f{f}(a);\n"));
    }
    main.push_str("  printf(\"%g\\n\", s);\n  return 0;\n}\n");
    std::fs::write(dir.join("main.c"), main)?;
    let objs: Vec<String> = std::iter::once("main.o".to_owned())
        .chain((0..files).map(|f| format!("f{f}.o")))
        .collect();
    std::fs::write(
        dir.join("Makefile"),
        format!(
            "CC ?= cc\nCFLAGS = -O2\nOBJS = {}\nprog: $(OBJS)\n\t$(CC) -o prog $(OBJS)\n\
             %.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\n",
            objs.join(" ")
        ),
    )
}

/// Generates the input of every workload in `specs` that needs one, into `scratch`.
pub fn prepare(specs: &[WorkloadSpec], scratch: &Path) -> Result<(), BenchError> {
    for w in specs {
        let Some(setup) = w.real.as_ref().and_then(|r| r.setup) else {
            continue;
        };
        let path = input_path(scratch, w);
        let io = |source| BenchError::Io {
            path: path.clone(),
            source,
        };
        match setup {
            Setup::Text { bytes } | Setup::Lines { bytes } => {
                let f = std::fs::File::create(&path).map_err(io)?;
                let mut out = BufWriter::new(f);
                if matches!(setup, Setup::Text { .. }) {
                    write_text(&mut out, bytes).map_err(io)?;
                } else {
                    write_lines(&mut out, bytes).map_err(io)?;
                }
                out.flush().map_err(io)?;
            }
            Setup::CProject { files, statements } => {
                write_c_project(&path, files, statements).map_err(io)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One run

/// The per-run paths of a real workload.
#[derive(Clone, Debug)]
pub struct RunPaths {
    /// `{done}`.
    pub done: PathBuf,
    /// `{socket}`.
    pub socket: PathBuf,
    /// `{input}` / `{dir}`.
    pub input: PathBuf,
    /// `{scratch}`.
    pub scratch: PathBuf,
}

impl RunPaths {
    /// Fresh paths for one run of `w`.
    pub fn new(scratch: &Path, w: &WorkloadSpec, label: &str) -> Self {
        let n = monotonic_ns();
        Self {
            done: scratch.join(format!("{label}-{n}.done")),
            socket: scratch.join(format!("{label}-{n}.sock")),
            input: input_path(scratch, w),
            scratch: scratch.to_owned(),
        }
    }

    fn subst(&self, s: &str) -> String {
        s.replace("{done}", &self.done.display().to_string())
            .replace("{socket}", &self.socket.display().to_string())
            .replace("{input}", &self.input.display().to_string())
            .replace("{dir}", &self.input.display().to_string())
            .replace("{scratch}", &self.scratch.display().to_string())
    }

    /// Removes the run's files.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.done);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The command that runs in the run's cgroup: the program itself, or (batch) the program
/// under `exe workload run --done FILE --`.
pub fn command(exe: &Path, real: &RealSpec, paths: &RunPaths) -> Vec<String> {
    let program = real.command.iter().map(|a| paths.subst(a));
    match real.kind {
        RealKind::Batch => [
            exe.display().to_string(),
            "workload".into(),
            "run".into(),
            "--done".into(),
            paths.done.display().to_string(),
            "--".into(),
        ]
        .into_iter()
        .chain(program)
        .collect(),
        RealKind::Holds | RealKind::Service => program.collect(),
    }
}

/// Whether a competitor lowers limits (and so needs the hold phase).
pub fn lowers_limits(c: CompetitorId) -> bool {
    c == CompetitorId::Ebpf
}

/// Why a competitor has no time to right-size.
pub fn no_hold_reason(c: CompetitorId) -> &'static str {
    match c {
        CompetitorId::Static => "n/a: a static limit never changes",
        CompetitorId::Ebpf => "n/a",
        _ => "n/a: scale-up-only rule (never lowers)",
    }
}

/// Whether `s` is right-sized: limit <= max(1.3 x working set, starting limit).
pub fn right_sized(s: &Sample, start: u64) -> bool {
    s.working_set
        .is_some_and(|ws| s.limit as f64 <= (RIGHT_SIZE_FACTOR * ws as f64).max(start as f64))
}

/// What the work phase of a run came to.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// When the work completed (µs since t0), if it did.
    pub completed_at_us: Option<u64>,
    /// The workload's own time, µs.
    pub work_us: Option<u64>,
    /// The work's exit (the program's, the server's or the driver's).
    pub exit: ExitInfo,
    /// Whether the hold phase ran.
    pub held: bool,
    /// How the hold ended (or why none).
    pub hold_note: Option<String>,
    /// The hold deadline, ms after completion.
    pub hold_deadline_ms: Option<u64>,
    /// When the hold ended (µs since t0), before the process was stopped.
    pub hold_end_us: Option<u64>,
    /// The driver's last stderr lines.
    pub driver_stderr_tail: Option<String>,
}

/// Connects to `socket` and sends PING; true on `+PONG`.
fn redis_ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

fn exit_of(status: std::process::ExitStatus) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    ExitInfo {
        code: status.code(),
        signal: status.signal(),
        timed_out: false,
    }
}

/// Drives one run of a real workload whose process (the workload, or `scaler exec` around it)
/// is `child`, spawned at `t0`: waits for the work, holds until right-sized (if `hold` is
/// given: the longest hold), then stops the process (SIGTERM, SIGKILL 5 s later, by pid).
#[allow(clippy::too_many_arguments)]
pub fn drive(
    real: &RealSpec,
    paths: &RunPaths,
    child: Child,
    cpu_of: Option<i32>,
    sampler: &Sampler,
    start_limit: u64,
    timeout: Duration,
    hold: Option<Duration>,
    t0: u64,
) -> Result<(Waited, Progress), BenchError> {
    let started = Instant::now();
    let mut watch = Watch::new(child, cpu_of);
    let mut p = Progress::default();
    let since_t0 = |ns: u64| ns.saturating_sub(t0) / 1000;
    let mut ended = None;
    // Work.
    match real.kind {
        RealKind::Batch | RealKind::Holds => loop {
            if let Some(d) = DoneRecord::read(&paths.done) {
                p.completed_at_us = Some(since_t0(d.done_ns));
                p.work_us = Some(d.elapsed_us);
                p.exit = ExitInfo {
                    code: d.exit_code,
                    signal: d.signal,
                    timed_out: false,
                };
                break;
            }
            if let Some(s) = watch.poll()? {
                p.exit = exit_of(s);
                ended = Some(s);
                break;
            }
            if started.elapsed() > timeout || super::interrupted() {
                p.exit.timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        },
        RealKind::Service => {
            let ready = loop {
                if redis_ping(&paths.socket) {
                    break true;
                }
                if let Some(s) = watch.poll()? {
                    p.exit = exit_of(s);
                    ended = Some(s);
                    break false;
                }
                if started.elapsed() > timeout || super::interrupted() {
                    p.exit.timed_out = true;
                    break false;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            if ready {
                let argv: Vec<String> = real
                    .driver
                    .iter()
                    .flatten()
                    .map(|a| paths.subst(a))
                    .collect();
                let (exe, args) = argv.split_first().ok_or(BenchError::Parse {
                    path: PathBuf::from("driver"),
                    text: String::new(),
                })?;
                let t_start = monotonic_ns();
                let driver = Command::new(exe)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|source| BenchError::Spawn {
                        exe: PathBuf::from(exe),
                        source,
                    })?;
                // Wait for the driver; if the server dies under it (an OOM kill), that is the
                // outcome, and the driver is ended (it may retry forever).
                let mut dw = Watch::new(driver, None);
                let mut timed_out = false;
                let status = loop {
                    if let Some(s) = dw.poll()? {
                        break s;
                    }
                    if ended.is_none() {
                        if let Some(s) = watch.poll()? {
                            ended = Some(s);
                            dw.kill(libc::SIGKILL);
                        }
                    }
                    if !timed_out && (started.elapsed() > timeout || super::interrupted()) {
                        timed_out = true;
                        dw.kill(libc::SIGKILL);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                };
                let d = dw.finish(status, timed_out);
                let t_end = monotonic_ns();
                p.driver_stderr_tail = super::runner::tail(&d.stderr);
                match ended {
                    Some(s) => p.exit = exit_of(s),
                    None => {
                        p.exit = d.exit.clone();
                        if !d.exit.timed_out {
                            p.completed_at_us = Some(since_t0(t_end));
                            p.work_us = Some((t_end - t_start) / 1000);
                        }
                    }
                }
            }
        }
    }
    // Hold.
    match (hold, p.completed_at_us, ended) {
        (Some(max), Some(done_us), None) => {
            p.held = true;
            p.hold_deadline_ms = Some(max.as_millis() as u64);
            let deadline = Instant::now() + max;
            p.hold_note = loop {
                if sampler
                    .latest()
                    .is_some_and(|s| s.t_us >= done_us && right_sized(&s, start_limit))
                {
                    break None;
                }
                if let Some(s) = watch.poll()? {
                    ended = Some(s);
                    break Some("the workload ended during the hold".to_owned());
                }
                if Instant::now() >= deadline {
                    break Some(format!("not within {} s", max.as_secs()));
                }
                if super::interrupted() {
                    break Some("interrupted".to_owned());
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            p.hold_end_us = Some(since_t0(monotonic_ns()));
        }
        (Some(_), None, _) => p.hold_note = Some("no hold: the work did not complete".into()),
        (Some(_), Some(_), Some(_)) => {
            p.hold_note = Some("no hold: the workload exited with its work".into());
        }
        (None, _, _) => {}
    }
    // Stop.
    let status = match ended {
        Some(s) => s,
        None => {
            watch.kill(libc::SIGTERM);
            let asked = Instant::now();
            let mut killed = false;
            loop {
                if let Some(s) = watch.poll()? {
                    break s;
                }
                if !killed && asked.elapsed() > Duration::from_secs(5) {
                    watch.kill(libc::SIGKILL);
                    killed = true;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    let mut waited = watch.finish(status, false);
    waited.exit = p.exit.clone();
    Ok((waited, p))
}

// ---------------------------------------------------------------------------------------------
// Figures from a timeline

/// The last sample at or before `t_us` (or the first sample, if none is).
pub fn sample_at(tl: &[Sample], t_us: u64) -> Option<&Sample> {
    tl.iter()
        .take_while(|s| s.t_us <= t_us)
        .last()
        .or(tl.first())
}

/// The limit in force at `t_us` (see [`sample_at`]).
pub fn limit_at(tl: &[Sample], t_us: u64) -> Option<u64> {
    sample_at(tl, t_us).map(|s| s.limit)
}

/// The time of the last limit increase at or before `t_us`.
pub fn last_raise_before(tl: &[Sample], t_us: u64) -> Option<u64> {
    tl.windows(2)
        .rev()
        .find(|w| w[1].t_us <= t_us && w[1].limit > w[0].limit)
        .map(|w| w[1].t_us)
}

/// The first sample at or after `from_us` that is right-sized.
pub fn first_right_sized(tl: &[Sample], from_us: u64, start: u64) -> Option<u64> {
    tl.iter()
        .find(|s| s.t_us >= from_us && right_sized(s, start))
        .map(|s| s.t_us)
}

/// MiB-seconds of limit above usage between `from_us` and `to_us`: each sample's
/// `limit - usage` held until the next sample (unlimited limits, at or above 2^60, left out).
pub fn mib_seconds_above(tl: &[Sample], from_us: u64, to_us: u64) -> f64 {
    tl.windows(2)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let lo = a.t_us.max(from_us);
            let hi = b.t_us.min(to_us);
            if hi <= lo || a.limit >= 1 << 60 {
                return 0.0;
            }
            let excess = a.limit.saturating_sub(a.usage) as f64 / MIB as f64;
            excess * (hi - lo) as f64 / 1e6
        })
        .sum()
}

/// At most about `max` samples of `tl`: every n-th, plus every limit change and the last.
pub fn thin(tl: &[Sample], max: usize) -> Vec<Sample> {
    let stride = tl.len().div_ceil(max.max(1)).max(1);
    tl.iter()
        .enumerate()
        .filter(|(i, s)| {
            i % stride == 0 || *i + 1 == tl.len() || (*i > 0 && tl[i - 1].limit != s.limit)
        })
        .map(|(_, s)| *s)
        .collect()
}

/// How the hold phase of a run went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Hold {
    /// Whether the run held its cgroup after the work (competitors that lower limits).
    pub held: bool,
    /// Why there is no time to right-size (or how the hold ended without one).
    pub note: Option<String>,
    /// The longest hold, ms after completion.
    pub deadline_ms: Option<u64>,
    /// First sample at or after completion meeting limit <= max(1.3 x working set, start),
    /// µs since t0.
    pub right_sized_at_us: Option<u64>,
    /// The workload's last limit increase before that (µs since t0).
    pub last_raise_at_us: Option<u64>,
    /// From the last raise (or, with none, from completion) to right-sized, ms.
    pub time_to_right_size_ms: Option<f64>,
    /// From completion to right-sized, ms.
    pub completion_to_right_size_ms: Option<f64>,
    /// The limit when the hold ended (without a hold: when the work completed, or at the
    /// last sample).
    pub limit_at_end: Option<u64>,
    /// The working set then.
    pub working_set_at_end: Option<u64>,
}

/// The real suite's figures of one run (the JSON's `runs[].real`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RealRun {
    /// The work completed at this time, µs since t0 (`None`: it did not).
    pub completed_at_us: Option<u64>,
    /// The workload's completion time T, µs: the program's own start to exit (numpy: start to
    /// all memory touched; redis: the load generator's run).
    pub work_us: Option<u64>,
    /// P = W/T, work units per second.
    pub rate_per_s: Option<f64>,
    /// Exit 0, no OOM kill, not timed out.
    pub survived: bool,
    /// Limit increases (in-process competitors: their writes; eBPF: its summary's actions).
    pub raises: u32,
    /// The limit in force when the work completed.
    pub limit_at_completion: Option<u64>,
    /// `limit_at_completion` / peak usage.
    pub limit_over_peak: Option<f64>,
    /// The hold phase.
    pub hold: Hold,
    /// MiB-seconds of limit above usage from t0 to completion.
    pub mib_s_above_usage_work: Option<f64>,
    /// MiB-seconds of limit above usage during the hold.
    pub mib_s_above_usage_hold: Option<f64>,
    /// The load generator's last stderr lines (service workloads).
    pub driver_stderr_tail: Option<String>,
}

/// Computes a run's figures from its timeline and what the run recorded (`rec.oom_kills` and
/// `rec.peak_usage_bytes` must be set).
pub fn figures(
    real: &RealSpec,
    rec: &RunRecord,
    p: &Progress,
    tl: &[Sample],
    raises: u32,
) -> RealRun {
    let mut r = RealRun {
        completed_at_us: p.completed_at_us,
        work_us: p.work_us,
        raises,
        driver_stderr_tail: p.driver_stderr_tail.clone(),
        ..Default::default()
    };
    r.survived = p.exit.code == Some(0)
        && !p.exit.timed_out
        && rec.oom_kills == 0
        && p.completed_at_us.is_some();
    r.rate_per_s = real
        .work
        .as_ref()
        .zip(p.work_us)
        .filter(|(_, t)| *t > 0 && r.survived)
        .map(|(w, t)| w.count as f64 / (t as f64 / 1e6));
    r.hold.held = p.held;
    r.hold.note.clone_from(&p.hold_note);
    r.hold.deadline_ms = p.hold_deadline_ms;
    let end = p.hold_end_us.or(p.completed_at_us).unwrap_or(u64::MAX);
    r.hold.limit_at_end = sample_at(tl, end).map(|s| s.limit);
    r.hold.working_set_at_end = sample_at(tl, end).and_then(|s| s.working_set);
    let Some(done) = p.completed_at_us else {
        return r;
    };
    r.limit_at_completion = limit_at(tl, done);
    r.limit_over_peak = r
        .limit_at_completion
        .zip(rec.peak_usage_bytes)
        .filter(|(_, u)| *u > 0)
        .map(|(l, u)| l as f64 / u as f64);
    r.mib_s_above_usage_work = (!tl.is_empty()).then(|| mib_seconds_above(tl, 0, done));
    if p.held {
        r.mib_s_above_usage_hold = Some(mib_seconds_above(tl, done, end));
        let in_hold = tl
            .iter()
            .take_while(|s| s.t_us <= end)
            .copied()
            .collect::<Vec<_>>();
        if let Some(at) = first_right_sized(&in_hold, done, rec.start_limit) {
            r.hold.right_sized_at_us = Some(at);
            r.hold.last_raise_at_us = last_raise_before(tl, at);
            let from = r.hold.last_raise_at_us.unwrap_or(done);
            r.hold.time_to_right_size_ms = Some(at.saturating_sub(from) as f64 / 1000.0);
            r.hold.completion_to_right_size_ms = Some(at.saturating_sub(done) as f64 / 1000.0);
            r.hold.note = None;
        } else if r.hold.note.is_none() {
            r.hold.note = Some("never right-sized".into());
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Summary

/// The real suite's figures of one (workload, competitor) case: medians over runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RealCase {
    /// Runs that survived (exit 0, no OOM kill).
    pub survived_runs: u32,
    /// Median limit increases.
    pub raises: Option<f64>,
    /// Median limit when the work completed.
    pub limit_at_completion: Option<f64>,
    /// Median of limit at completion / peak usage.
    pub limit_over_peak: Option<f64>,
    /// Runs that held after the work.
    pub held_runs: u32,
    /// Runs that right-sized within the hold.
    pub right_sized_runs: u32,
    /// Median time to right-size over the runs that did, ms.
    pub time_to_right_size_ms: Option<f64>,
    /// Why there is no time (n/a, or not within the deadline).
    pub right_size_note: Option<String>,
    /// Median MiB-seconds of limit above usage during the work.
    pub mib_s_above_usage_work: Option<f64>,
    /// Median MiB-seconds of limit above usage during the hold.
    pub mib_s_above_usage_hold: Option<f64>,
    /// Median completion time T over the surviving runs, ms.
    pub work_ms: Option<f64>,
    /// Median P = W/T over the surviving runs.
    pub rate_per_s: Option<f64>,
    /// The unit of W.
    pub work_unit: Option<String>,
}

/// Summarizes the real figures of a case's runs (those without errors).
pub fn summarize(w: &WorkloadSpec, c: CompetitorId, runs: &[&&RunRecord]) -> RealCase {
    let rs: Vec<&RealRun> = runs.iter().filter_map(|r| r.real.as_ref()).collect();
    let m = |f: &dyn Fn(&RealRun) -> Option<f64>| median(rs.iter().filter_map(|r| f(r)));
    let survivors: Vec<&&RealRun> = rs.iter().filter(|r| r.survived).collect();
    let mut s = RealCase {
        survived_runs: survivors.len() as u32,
        raises: m(&|r| Some(f64::from(r.raises))),
        limit_at_completion: m(&|r| r.limit_at_completion.map(|v| v as f64)),
        limit_over_peak: m(&|r| r.limit_over_peak),
        held_runs: rs.iter().filter(|r| r.hold.held).count() as u32,
        right_sized_runs: rs
            .iter()
            .filter(|r| r.hold.time_to_right_size_ms.is_some())
            .count() as u32,
        time_to_right_size_ms: m(&|r| r.hold.time_to_right_size_ms),
        mib_s_above_usage_work: m(&|r| r.mib_s_above_usage_work),
        mib_s_above_usage_hold: m(&|r| r.mib_s_above_usage_hold),
        work_ms: median(
            survivors
                .iter()
                .filter_map(|r| r.work_us.map(|v| v as f64 / 1000.0)),
        ),
        rate_per_s: median(survivors.iter().filter_map(|r| r.rate_per_s)),
        work_unit: w
            .real
            .as_ref()
            .and_then(|r| r.work.as_ref())
            .map(|w| w.unit.clone()),
        ..Default::default()
    };
    s.right_size_note = if !lowers_limits(c) {
        Some(no_hold_reason(c).to_owned())
    } else if s.held_runs > s.right_sized_runs {
        rs.iter()
            .filter(|r| r.hold.time_to_right_size_ms.is_none())
            .find_map(|r| r.hold.note.clone())
    } else if s.held_runs == 0 {
        rs.iter().find_map(|r| r.hold.note.clone())
    } else {
        None
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smp(t_ms: u64, usage_mib: u64, limit_mib: u64, ws_mib: u64) -> Sample {
        Sample {
            t_us: t_ms * 1000,
            usage: usage_mib * MIB,
            limit: limit_mib * MIB,
            working_set: Some(ws_mib * MIB),
        }
    }

    /// A numpy-spike-like run: raised twice, work done at 1 s, lowered after a cooldown.
    fn timeline() -> Vec<Sample> {
        vec![
            smp(0, 10, 64, 10),
            smp(500, 60, 64, 60),
            smp(510, 100, 200, 100),
            smp(600, 330, 400, 330),
            smp(1000, 330, 400, 330),
            smp(3000, 330, 400, 320),
            smp(4000, 330, 420, 320), // not right-sized: 420 > 1.3 x 320 = 416
            smp(5000, 330, 410, 320),
            smp(6000, 330, 410, 320),
        ]
    }

    #[test]
    fn right_size_time_and_limits_from_a_timeline() {
        let tl = timeline();
        assert_eq!(limit_at(&tl, 1_000_000), Some(400 * MIB));
        assert_eq!(limit_at(&tl, 999_999), Some(400 * MIB));
        assert_eq!(limit_at(&tl, 0), Some(64 * MIB));
        // Right-sized from completion on: 400 <= 1.3 x 330 at 1 s.
        assert_eq!(first_right_sized(&tl, 1_000_000, 64 * MIB), Some(1_000_000));
        // After 3.5 s: 420 is not, 410 is.
        assert_eq!(first_right_sized(&tl, 3_500_000, 64 * MIB), Some(5_000_000));
        assert_eq!(last_raise_before(&tl, 5_000_000), Some(4_000_000));
        assert_eq!(last_raise_before(&tl, 1_000_000), Some(600_000));
        assert_eq!(last_raise_before(&tl, 400_000), None);
        // The starting limit always counts as right-sized.
        assert!(right_sized(&smp(0, 1, 64, 1), 64 * MIB));
        assert!(!right_sized(&smp(0, 1, 65, 1), 64 * MIB));
        let no_ws = Sample {
            working_set: None,
            ..smp(0, 1, 64, 1)
        };
        assert!(!right_sized(&no_ws, 64 * MIB));
    }

    #[test]
    fn mib_seconds_integrate_limit_above_usage() {
        let tl = vec![
            smp(0, 10, 64, 0),
            smp(1000, 64, 128, 0),
            smp(3000, 128, 128, 0),
        ];
        // 54 MiB for 1 s, then 64 MiB for 2 s.
        assert!((mib_seconds_above(&tl, 0, u64::MAX) - (54.0 + 128.0)).abs() < 1e-9);
        // A window cuts the intervals.
        assert!((mib_seconds_above(&tl, 500_000, 2_000_000) - (27.0 + 64.0)).abs() < 1e-9);
        assert_eq!(mib_seconds_above(&tl[..1], 0, u64::MAX), 0.0);
        // Usage above the limit counts as zero; unlimited is left out.
        let over = vec![
            Sample {
                t_us: 0,
                usage: 100 * MIB,
                limit: 64 * MIB,
                working_set: None,
            },
            smp(1000, 0, 0, 0),
            Sample {
                t_us: 2_000_000,
                usage: 0,
                limit: u64::MAX,
                working_set: None,
            },
            smp(3000, 0, 0, 0),
        ];
        assert_eq!(mib_seconds_above(&over, 0, u64::MAX), 0.0);
    }

    fn rec(oom: u64, peak_mib: u64) -> RunRecord {
        RunRecord {
            oom_kills: oom,
            peak_usage_bytes: Some(peak_mib * MIB),
            start_limit: 64 * MIB,
            ..Default::default()
        }
    }

    fn spec() -> RealSpec {
        RealSpec {
            kind: RealKind::Holds,
            command: vec![],
            driver: None,
            setup: None,
            work: Some(Work {
                count: 320,
                unit: "MiB".into(),
            }),
            needs: vec![],
        }
    }

    #[test]
    fn figures_of_a_held_run() {
        let tl = timeline();
        let p = Progress {
            completed_at_us: Some(3_500_000),
            work_us: Some(800_000),
            exit: ExitInfo {
                code: Some(0),
                ..Default::default()
            },
            held: true,
            hold_deadline_ms: Some(75_000),
            hold_end_us: Some(5_500_000),
            ..Default::default()
        };
        let f = figures(&spec(), &rec(0, 330), &p, &tl, 3);
        assert!(f.survived);
        assert_eq!(f.raises, 3);
        assert_eq!(f.limit_at_completion, Some(400 * MIB));
        assert!((f.limit_over_peak.unwrap() - 400.0 / 330.0).abs() < 1e-9);
        assert_eq!(f.hold.right_sized_at_us, Some(5_000_000));
        assert_eq!(f.hold.last_raise_at_us, Some(4_000_000));
        assert_eq!(f.hold.time_to_right_size_ms, Some(1000.0));
        assert_eq!(f.hold.completion_to_right_size_ms, Some(1500.0));
        assert!((f.rate_per_s.unwrap() - 400.0).abs() < 1e-9);
        assert_eq!(f.hold.note, None);
        assert_eq!(f.hold.limit_at_end, Some(410 * MIB));
        assert_eq!(f.hold.working_set_at_end, Some(320 * MIB));
        // 400-330 MiB from 3.5 s to 4 s, 420-330 to 5 s, 410-330 to 5.5 s.
        let want = 70.0 * 0.5 + 90.0 + 80.0 * 0.5;
        assert!((f.mib_s_above_usage_hold.unwrap() - want).abs() < 1e-9);
        // A hold that ended before the limit came down did not right-size.
        let early = Progress {
            hold_end_us: Some(4_500_000),
            ..p.clone()
        };
        let f1 = figures(&spec(), &rec(0, 330), &early, &tl, 3);
        assert_eq!(f1.hold.time_to_right_size_ms, None);
        // Never right-sized: a reason.
        let mut tl2 = tl.clone();
        for s in &mut tl2[5..] {
            s.limit = 2048 * MIB;
        }
        let f2 = figures(&spec(), &rec(0, 330), &p, &tl2, 3);
        assert_eq!(f2.hold.time_to_right_size_ms, None);
        assert!(f2.hold.note.is_some());
        // OOM-killed: not survived, no rate.
        let killed = Progress {
            completed_at_us: None,
            exit: ExitInfo {
                signal: Some(9),
                ..Default::default()
            },
            ..Default::default()
        };
        let f3 = figures(&spec(), &rec(1, 64), &killed, &tl, 0);
        assert!(!f3.survived);
        assert_eq!(f3.rate_per_s, None);
        assert_eq!(f3.limit_at_completion, None);
    }

    #[test]
    fn thinning_keeps_limit_changes() {
        let tl: Vec<Sample> = (0..10_000u64)
            .map(|i| smp(i, i % 100, 64 + i / 5000, 0))
            .collect();
        let t = thin(&tl, 100);
        assert!(t.len() <= 110, "{}", t.len());
        assert!(t.iter().any(|s| s.t_us == 5_000_000));
        assert_eq!(t.last(), tl.last());
    }

    #[test]
    fn programs_are_checked_and_missing_ones_named() {
        let o = BenchOptions {
            suite: Suite::Real,
            ..BenchOptions::test_default()
        };
        let specs = workloads(&o);
        assert_eq!(
            specs
                .iter()
                .map(|w| w.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            NAMES
        );
        let (ok, skipped) = check_programs(specs, |p| {
            (p != "redis-benchmark" && p != "python3+numpy")
                .then(|| PathBuf::from(format!("/usr/bin/{p}")))
        });
        assert_eq!(
            skipped
                .iter()
                .map(|s| s.workload.as_str())
                .collect::<Vec<_>>(),
            ["redis", "numpy-steps", "numpy-spike"]
        );
        assert!(skipped[0].reason.contains("apt-get install redis-tools"));
        assert!(skipped[1].reason.contains("python3-numpy"));
        let make = ok.iter().find(|w| w.id == "make").unwrap();
        let cmd = &make.real.as_ref().unwrap().command;
        assert!(cmd.contains(&"CC=/usr/bin/cc".to_owned()), "{cmd:?}");
        assert_eq!(cmd[0], "/usr/bin/make");
        // Every package named is in the install line.
        for w in workloads(&o) {
            for n in &w.real.unwrap().needs {
                assert!(INSTALL_ALL.contains(&n.package), "{}", n.package);
            }
        }
    }

    #[test]
    fn batch_commands_are_wrapped() {
        let o = BenchOptions {
            suite: Suite::Real,
            quick: true,
            ..BenchOptions::test_default()
        };
        let (ok, _) = check_programs(workloads(&o), |p| Some(PathBuf::from(format!("/b/{p}"))));
        let paths = RunPaths {
            done: "/s/d".into(),
            socket: "/s/k".into(),
            input: "/s/in".into(),
            scratch: "/s".into(),
        };
        let get = |id: &str| {
            ok.iter()
                .find(|w| w.id == id)
                .unwrap()
                .real
                .clone()
                .unwrap()
        };
        assert_eq!(
            command(Path::new("/x/scaler"), &get("sort"), &paths).join(" "),
            "/x/scaler workload run --done /s/d -- /b/sort -S 100M -T /s /s/in"
        );
        let redis = get("redis");
        let c = command(Path::new("/x/scaler"), &redis, &paths);
        assert_eq!(c[0], "/b/redis-server");
        assert!(
            c.contains(&String::new()),
            "--save \"\" is one empty argument"
        );
        assert!(c.contains(&"/s/k".to_owned()));
        let numpy = command(Path::new("/x/scaler"), &get("numpy-spike"), &paths);
        assert_eq!(numpy[0], "/b/python3+numpy");
        assert_eq!(&numpy[3..], ["/s/d", "spike", "160", "8"]);
    }

    #[test]
    fn generated_inputs_are_deterministic() {
        let gen = |f: fn(&mut Vec<u8>, u64) -> std::io::Result<()>| {
            let mut v = Vec::new();
            f(&mut v, 100_000).unwrap();
            v
        };
        let text = |v: &mut Vec<u8>, n| write_text(v, n);
        let lines = |v: &mut Vec<u8>, n| write_lines(v, n);
        assert_eq!(gen(text), gen(text));
        assert_eq!(gen(text).len(), 100_000);
        let l = gen(lines);
        assert_eq!(l.len() as u64, 100_000 / LINE_BYTES * LINE_BYTES);
        assert!(l.chunks(32).all(|c| c[31] == b'\n'));
        let d = std::env::temp_dir().join(format!("scaler-cproj-{}", std::process::id()));
        write_c_project(&d, 2, 3).unwrap();
        let mk = std::fs::read_to_string(d.join("Makefile")).unwrap();
        assert!(mk.contains("OBJS = main.o f0.o f1.o"));
        assert!(std::fs::read_to_string(d.join("f1.c"))
            .unwrap()
            .contains("double f1(const double *a)"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
