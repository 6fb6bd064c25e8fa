//! Loading and attaching the kernel programs, and the maps userspace talks to them through.

use std::{collections::BTreeMap, os::fd::OwnedFd, time::Duration};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        BtfTracePoint, PerfEvent,
    },
    Btf, Ebpf, EbpfLoader,
};
use scaler_common::{
    cpu_filter_slot, names, stat, CpuOffsets, CpuState, CpuWatch, KernelOffsets, Settings,
    WatchConfig, CPU_FILTER_GEN, NO_OFFSET, RUNQ_FROM_SCHED_INFO, RUNQ_FROM_WAKEUP,
};

use crate::btf::{Features, KernelBtf};

/// The eBPF object built by `build.rs` (empty when built without bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scaler"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "this scaler binary was built without its eBPF programs (bpf-linker was missing or \
         SCALER_SKIP_EBPF was set); build it with `cargo xtask build` (which runs \
         `cargo xtask setup` to install the eBPF toolchain)"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] crate::btf::BtfError),
    #[error(
        "loading the eBPF object failed: {0}; scaler needs root (CAP_BPF, CAP_PERFMON, \
         CAP_SYS_ADMIN on older kernels) and a kernel with BPF ring buffers (5.8+)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {what} `{name}` (a build mismatch; rebuild scaler)")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error(
        "loading or attaching program `{program}` (tracepoint {tracepoint}) failed: {source}; \
         the kernel needs BTF-enabled tracepoints (tp_btf, 5.5+)"
    )]
    Program {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A required tracepoint is not in the running kernel (its BTF has no `btf_trace_*` type).
    #[error(
        "the running kernel has no tracepoint `{tracepoint}`, which program `{program}` needs: \
         {what}. scaler cannot work without it; run it on a kernel built with CONFIG_MEMCG, \
         CONFIG_TRACEPOINTS and CONFIG_DEBUG_INFO_BTF (Linux 5.5 or later), and check that \
         /sys/kernel/btf/vmlinux belongs to the running kernel"
    )]
    MissingTracepoint {
        program: &'static str,
        tracepoint: &'static str,
        /// What the tracepoint gives scaler.
        what: &'static str,
    },
    #[error(
        "CPU tracking is not available: the scheduler programs are not attached (load the \
         pipeline with the `cpu` option on a kernel with the cpu controller, CFS bandwidth \
         control and the sched_switch tracepoint; see the warnings logged at load)"
    )]
    CpuUnavailable,
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The embedded eBPF object, for the load-testing injector (`scaler load-test`), which loads
/// its own copy sharing a running agent's maps.
pub(crate) fn object() -> Result<&'static [u8], EbpfError> {
    if EBPF_OBJECT.is_empty() {
        Err(EbpfError::NoObject)
    } else {
        Ok(EBPF_OBJECT)
    }
}

/// What to attach.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Report every cgroup, not only watched ones.
    pub watch_all: bool,
    /// Early-warning headroom for cgroups seen through `watch_all` (0: none).
    pub default_headroom_bytes: u64,
    /// Attach the early-warning program (count_memcg_events) where the kernel has it.
    pub early_warning: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            watch_all: false,
            default_headroom_bytes: 0,
            early_warning: true,
        }
    }
}

/// Counters the kernel programs keep (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    pub ringbuf_dropped: u64,
    pub submitted: u64,
    pub woken: u64,
    pub filtered: u64,
    pub read_errors: u64,
    pub unmatched_end: u64,
    pub usage_checks: u64,
    /// Tasks whose cpu cgroup the scheduler programs had to read (no valid cached entry).
    pub task_resolves: u64,
    /// Run-queue latency samples of watched cpu cgroups.
    pub runq_samples: u64,
    /// Run-time charges to watched cpu cgroups.
    pub cpu_accounted: u64,
    /// CPU crossings not reported again within the same period.
    pub cpu_suppressed: u64,
}

/// A program that was attached, or why it was not.
#[derive(Clone, Debug)]
pub struct ProgramStatus {
    pub program: &'static str,
    pub tracepoint: &'static str,
    pub attached: bool,
    pub note: Option<String>,
}

/// The loaded programs and the maps userspace uses. Dropping it detaches everything.
pub struct Pipeline {
    ebpf: Ebpf,
    watched: HashMap<MapData, u64, WatchConfig>,
    settings: Array<MapData, Settings>,
    stats: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    /// Present when the scheduler programs are loaded.
    cpu_watched: Option<HashMap<MapData, u64, CpuWatch>>,
    cpu_state: Option<HashMap<MapData, u64, CpuState>>,
    cpu_filter: Option<Array<MapData, u64>>,
    current_settings: Settings,
    features: Features,
    cpu_offsets: CpuOffsets,
    offsets: KernelOffsets,
    programs: Vec<ProgramStatus>,
    _logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    _stats_fd: Option<OwnedFd>,
}

/// (program fn name, tracepoint, required?)
const MEMORY_PROGRAMS: &[(&str, &str, bool)] = &[
    (
        names::PROG_MEMCG_RECLAIM_BEGIN,
        "mm_vmscan_memcg_reclaim_begin",
        true,
    ),
    (
        names::PROG_MEMCG_RECLAIM_END,
        "mm_vmscan_memcg_reclaim_end",
        true,
    ),
    (
        names::PROG_DIRECT_RECLAIM_BEGIN,
        "mm_vmscan_direct_reclaim_begin",
        false,
    ),
    (
        names::PROG_DIRECT_RECLAIM_END,
        "mm_vmscan_direct_reclaim_end",
        false,
    ),
    (names::PROG_MARK_VICTIM, "mark_victim", false),
    (names::PROG_COUNT_MEMCG_EVENTS, "count_memcg_events", false),
];

/// Scheduler programs (attached with [`Pipeline::load_with_cpu`]): (program fn name, where it
/// attaches). `sched_switch` does the work; `cpu_tick` (a per-CPU perf-event timer, every
/// [`CPU_TICK`]) charges CPU time of tasks that run without switching; `sched_stat_runtime`
/// replaces `cpu_tick` only where perf events cannot be opened; the wakeup programs only give
/// run-queue latency on kernels without CONFIG_SCHED_INFO.
pub const SCHED_PROGRAMS: &[(&str, &str)] = &[
    (names::PROG_SCHED_SWITCH, "sched_switch"),
    (names::PROG_CPU_TICK, "perf event cpu-clock"),
    (names::PROG_SCHED_STAT_RUNTIME, "sched_stat_runtime"),
    (names::PROG_SCHED_WAKEUP, "sched_wakeup"),
    (names::PROG_SCHED_WAKEUP_NEW, "sched_wakeup_new"),
];

/// Environment variable: `1` makes the pipeline use the scheduler programs' fallbacks (the
/// `sched_stat_runtime` tick, run-queue latency from the wakeup tracepoints) even where the
/// kernel supports the cheaper paths, so that tests can exercise them.
pub const FORCE_CPU_FALLBACKS: &str = "SCALER_FORCE_CPU_FALLBACKS";

/// Period of the `cpu_tick` timer on each CPU: CPU time of a watched task that keeps running
/// is charged at least this often, so a cgroup using `n` CPUs is seen at most `2n` ms of CPU
/// time late against its quota (switches flush sooner). The kernel's own tick, with HZ=250,
/// is every 4 ms; and it hands out quota in 5 ms slices per CPU. Each timer interrupt costs
/// the CPU it fires on a few µs (measured: a 1 ms period cost a switch-heavy benchmark about
/// 1.4% more than none, so 2 ms is the compromise).
pub const CPU_TICK: Duration = Duration::from_millis(2);

/// The scheduler programs' offsets from BTF. `None` (with the reason) when the kernel cannot
/// run them: no cpu controller (CONFIG_CGROUP_SCHED), no CFS bandwidth control
/// (CONFIG_CFS_BANDWIDTH, which implies CONFIG_FAIR_GROUP_SCHED), or no `sched_switch`
/// tracepoint. Run-queue latency comes from `task_struct.sched_info.last_queued` where the
/// kernel has it (CONFIG_SCHED_INFO), else from the wakeup tracepoints, else it is off.
pub fn cpu_offsets(kbtf: &KernelBtf, offsets: &KernelOffsets) -> Result<CpuOffsets, String> {
    if offsets.cpu_cgrp_id == NO_OFFSET {
        return Err("the kernel has no cpu controller (cpu_cgrp_id; CONFIG_CGROUP_SCHED)".into());
    }
    let switch_arity = kbtf
        .tracepoint_arity("sched_switch")
        .ok_or("the kernel has no sched_switch tracepoint")?;
    let off = |ty: &str, m: &str| {
        kbtf.member_offset(ty, m)
            .map_err(|e| format!("{e} (CPU quota tracking needs CONFIG_CFS_BANDWIDTH)"))
    };
    let rq_off = |ty: &str, m: &str| kbtf.member_offset(ty, m).ok();
    let last_queued = rq_off("task_struct", "sched_info")
        .zip(rq_off("sched_info", "last_queued"))
        .map(|(a, b)| a + b);
    let runq_source = if last_queued.is_some() {
        RUNQ_FROM_SCHED_INFO
    } else if kbtf.has_tracepoint("sched_wakeup") && kbtf.has_tracepoint("sched_wakeup_new") {
        RUNQ_FROM_WAKEUP
    } else {
        0
    };
    Ok(CpuOffsets {
        task_sched_task_group: off("task_struct", "sched_task_group")?,
        tg_css: off("task_group", "css")?,
        tg_cfs_bandwidth: off("task_group", "cfs_bandwidth")?,
        cfs_b_period: off("cfs_bandwidth", "period")?,
        cfs_b_quota: off("cfs_bandwidth", "quota")?,
        task_last_queued: last_queued.unwrap_or(NO_OFFSET),
        task_se_cfs_rq: off("task_struct", "se")? + off("sched_entity", "cfs_rq")?,
        cfs_rq_rq: off("cfs_rq", "rq")?,
        rq_clock: off("rq", "clock")?,
        switch_has_prev_state: u32::from(switch_arity >= 4),
        runq_source,
        _pad: 0,
    })
}

/// Loads and attaches one `tp_btf` scheduler program.
fn attach_sched_tp(ebpf: &mut Ebpf, btf: &Btf, prog: &'static str, tp: &str) -> Result<(), String> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("the eBPF object has no program {prog}; rebuild scaler"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load(tp, btf)
        .and_then(|()| p.attach().map(|_| ()))
        .map_err(|e| format!("failed to attach: {e}"))
}

/// Loads `cpu_tick` and attaches it to a cpu-clock timer on every online CPU.
fn attach_cpu_tick(ebpf: &mut Ebpf) -> Result<(), String> {
    let cpus = aya::util::online_cpus().map_err(|(path, e)| format!("reading {path}: {e}"))?;
    let p: &mut PerfEvent = ebpf
        .program_mut(names::PROG_CPU_TICK)
        .ok_or("the eBPF object has no program cpu_tick; rebuild scaler")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load().map_err(|e| format!("loading: {e}"))?;
    for cpu in cpus {
        p.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Period(CPU_TICK.as_nanos() as u64),
            false,
        )
        .map_err(|e| format!("opening a cpu-clock perf event on CPU {cpu}: {e}"))?;
    }
    Ok(())
}

/// `scaler overhead`'s floor: the eBPF object loaded with only an empty program attached to
/// `sched_switch`, so that what the kernel's dispatch of any program there costs can be
/// measured apart from what the scheduler programs do. Dropping it detaches the program.
pub struct SwitchFloor {
    ebpf: Ebpf,
}

impl SwitchFloor {
    /// Loads the object and attaches the empty program.
    pub fn attach() -> Result<Self, EbpfError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EbpfError::NoObject);
        }
        let btf = Btf::from_sys_fs().map_err(|_| {
            EbpfError::Btf(crate::btf::BtfError::MissingType {
                kind: "file",
                name: crate::btf::VMLINUX_BTF.into(),
            })
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .load(EBPF_OBJECT)
            .map_err(EbpfError::Load)?;
        attach_sched_tp(
            &mut ebpf,
            &btf,
            names::PROG_SCHED_SWITCH_FLOOR,
            "sched_switch",
        )
        .map_err(|note| EbpfError::Program {
            program: names::PROG_SCHED_SWITCH_FLOOR,
            tracepoint: "sched_switch",
            source: aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "attach",
                io_error: std::io::Error::other(note),
            }),
        })?;
        Ok(Self { ebpf })
    }

    /// Run time and run count of the empty program (kernel BPF stats, when on).
    pub fn stats(&self) -> (Duration, u64) {
        self.ebpf
            .program(names::PROG_SCHED_SWITCH_FLOOR)
            .and_then(|p| p.info().ok())
            .map_or((Duration::ZERO, 0), |i| (i.run_time(), i.run_count()))
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

impl Pipeline {
    /// Loads the memory programs with offsets from the running kernel's BTF and attaches them
    /// (no scheduler programs: see [`Pipeline::load_with_cpu`]).
    pub fn load(opts: &PipelineOptions) -> Result<Self, EbpfError> {
        Self::load_with_cpu(opts, false)
    }

    /// Like [`Pipeline::load`]; with `cpu`, also attaches the scheduler programs (CPU quota
    /// and run-queue latency of the cpu cgroups given to [`Pipeline::watch_cpu`]). They run on
    /// every context switch of the node, so they are off unless some cgroup's CPU is watched
    /// or managed. They are optional: when the kernel cannot run them a warning says why and
    /// [`Pipeline::cpu_enabled`] is false.
    pub fn load_with_cpu(opts: &PipelineOptions, cpu: bool) -> Result<Self, EbpfError> {
        if EBPF_OBJECT.is_empty() {
            return Err(EbpfError::NoObject);
        }
        let kbtf = KernelBtf::from_sys()?;
        let features = kbtf.features();
        let offsets = kbtf.kernel_offsets(page_size())?;
        let fallbacks = std::env::var_os(FORCE_CPU_FALLBACKS).is_some_and(|v| v == "1");
        let cpu_offsets = if cpu {
            match cpu_offsets(&kbtf, &offsets) {
                Ok(mut o) => {
                    if fallbacks && o.runq_source == RUNQ_FROM_SCHED_INFO {
                        o.runq_source = RUNQ_FROM_WAKEUP;
                    }
                    Some(o)
                }
                Err(why) => {
                    tracing::warn!("CPU tracking unavailable: {why}; continuing without it");
                    None
                }
            }
        } else {
            None
        };
        let btf = Btf::from_sys_fs().ok();
        // Kernel BPF stats (run time and count per program), for overhead figures; best effort.
        let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .override_global(names::OFFSETS, &offsets, true)
            .override_global(
                names::CPU_OFFSETS,
                &cpu_offsets.unwrap_or(CpuOffsets::ZERO),
                true,
            )
            // The load-testing injector's table is only used by `scaler load-test`'s own copy
            // of the object: one slot here instead of 8,192.
            .map_max_entries(scaler_common::inject::INJECT_TARGETS, 1)
            .load(EBPF_OBJECT)
            .map_err(EbpfError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!("no eBPF log records will be forwarded: {e}");
                None
            }
        };
        let btf = btf.ok_or(EbpfError::Btf(crate::btf::BtfError::MissingType {
            kind: "file",
            name: crate::btf::VMLINUX_BTF.into(),
        }))?;
        let mut programs = Vec::new();
        for &(prog, tp, required) in MEMORY_PROGRAMS {
            let available = match tp {
                "count_memcg_events" => features.count_memcg_events && opts.early_warning,
                "mark_victim" => features.mark_victim,
                "mm_vmscan_direct_reclaim_begin" | "mm_vmscan_direct_reclaim_end" => {
                    features.direct_reclaim
                }
                _ => kbtf.has_tracepoint(tp),
            };
            if !available {
                let note = if tp == "count_memcg_events" && !opts.early_warning {
                    "early warnings disabled".to_string()
                } else {
                    format!("the running kernel has no tracepoint {tp}")
                };
                if required {
                    return Err(EbpfError::MissingTracepoint {
                        program: prog,
                        tracepoint: tp,
                        what: "memory-cgroup reclaim (vmscan/mm_vmscan_memcg_reclaim_*), the \
                               signal that a cgroup hit its limit",
                    });
                }
                tracing::warn!(program = prog, "{note}; continuing without it");
                programs.push(ProgramStatus {
                    program: prog,
                    tracepoint: tp,
                    attached: false,
                    note: Some(note),
                });
                continue;
            }
            let p: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .ok_or(EbpfError::Missing {
                    what: "program",
                    name: prog,
                })?
                .try_into()
                .map_err(|source| EbpfError::Program {
                    program: prog,
                    tracepoint: tp,
                    source,
                })?;
            let res = p.load(tp, &btf).and_then(|()| p.attach().map(|_| ()));
            match res {
                Ok(()) => programs.push(ProgramStatus {
                    program: prog,
                    tracepoint: tp,
                    attached: true,
                    note: None,
                }),
                Err(source) if !required => {
                    let note = format!("failed to attach: {source}");
                    tracing::warn!(
                        program = prog,
                        tracepoint = tp,
                        "{note}; continuing without it"
                    );
                    programs.push(ProgramStatus {
                        program: prog,
                        tracepoint: tp,
                        attached: false,
                        note: Some(note),
                    });
                }
                Err(source) => {
                    return Err(EbpfError::Program {
                        program: prog,
                        tracepoint: tp,
                        source,
                    })
                }
            }
        }
        let mut sched_attached = false;
        if let Some(co) = cpu_offsets {
            let mut status = |prog: &'static str, tp: &'static str, res: Result<(), String>| {
                let attached = res.is_ok();
                let note = res.err();
                if let Some(note) = &note {
                    tracing::warn!(
                        program = prog,
                        tracepoint = tp,
                        "{note}; continuing without it"
                    );
                }
                programs.push(ProgramStatus {
                    program: prog,
                    tracepoint: tp,
                    attached,
                    note,
                });
                attached
            };
            let tp_res = |ebpf: &mut Ebpf, prog, tp: &str| {
                if kbtf.has_tracepoint(tp) {
                    attach_sched_tp(ebpf, &btf, prog, tp)
                } else {
                    Err(format!("the running kernel has no tracepoint {tp}"))
                }
            };
            let res = tp_res(&mut ebpf, names::PROG_SCHED_SWITCH, "sched_switch");
            sched_attached = status(names::PROG_SCHED_SWITCH, "sched_switch", res);
            if sched_attached {
                let res = if fallbacks {
                    Err(format!("{FORCE_CPU_FALLBACKS}=1"))
                } else {
                    attach_cpu_tick(&mut ebpf)
                };
                if !status(names::PROG_CPU_TICK, "perf event cpu-clock", res) {
                    let res = tp_res(
                        &mut ebpf,
                        names::PROG_SCHED_STAT_RUNTIME,
                        "sched_stat_runtime",
                    );
                    if !status(names::PROG_SCHED_STAT_RUNTIME, "sched_stat_runtime", res) {
                        tracing::warn!(
                            "CPU time of watched tasks is charged only when they switch out: \
                             a cgroup may be throttled before its quota-near event"
                        );
                    }
                }
                match co.runq_source {
                    RUNQ_FROM_SCHED_INFO => {}
                    RUNQ_FROM_WAKEUP => {
                        tracing::info!(
                            "the kernel has no sched_info.last_queued (CONFIG_SCHED_INFO): \
                             run-queue latency from the wakeup tracepoints"
                        );
                        for (prog, tp) in [
                            (names::PROG_SCHED_WAKEUP, "sched_wakeup"),
                            (names::PROG_SCHED_WAKEUP_NEW, "sched_wakeup_new"),
                        ] {
                            let res = tp_res(&mut ebpf, prog, tp);
                            status(prog, tp, res);
                        }
                    }
                    _ => tracing::warn!(
                        "the kernel has neither sched_info.last_queued nor the wakeup \
                         tracepoints: no run-queue latency"
                    ),
                }
            }
        }
        let (cpu_watched, cpu_state, cpu_filter) = if sched_attached {
            (
                Some(take_map(&mut ebpf, names::CPU_WATCHED)?),
                Some(take_map(&mut ebpf, names::CPU_STATE)?),
                Some(take_map(&mut ebpf, names::CPU_FILTER)?),
            )
        } else {
            (None, None, None)
        };
        let watched = take_map(&mut ebpf, names::WATCHED)?;
        let settings = take_map(&mut ebpf, names::SETTINGS)?;
        let stats = take_map(&mut ebpf, names::STATS)?;
        let events = take_map(&mut ebpf, names::EVENTS)?;
        let mut p = Self {
            ebpf,
            watched,
            settings,
            stats,
            events: Some(events),
            cpu_watched,
            cpu_state,
            cpu_filter,
            current_settings: Settings::default(),
            features,
            cpu_offsets: cpu_offsets.unwrap_or(CpuOffsets::ZERO),
            offsets,
            programs,
            _logger: logger,
            _stats_fd: stats_fd,
        };
        p.set_settings(Settings {
            watch_all: u32::from(opts.watch_all),
            cpu_watch_gen: 0,
            default_headroom_bytes: opts.default_headroom_bytes,
        })?;
        Ok(p)
    }

    pub fn features(&self) -> Features {
        self.features
    }

    pub fn offsets(&self) -> KernelOffsets {
        self.offsets
    }

    pub fn programs(&self) -> &[ProgramStatus] {
        &self.programs
    }

    /// Takes the event ring buffer (once), for the consumer thread.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Replaces the runtime settings (the CPU watch generation is kept: it is the
    /// pipeline's to bump).
    pub fn set_settings(&mut self, mut s: Settings) -> Result<(), EbpfError> {
        s.cpu_watch_gen = self.current_settings.cpu_watch_gen;
        self.settings
            .set(0, s, 0)
            .map_err(|source| EbpfError::Map {
                map: names::SETTINGS,
                source,
            })?;
        self.current_settings = s;
        Ok(())
    }

    /// Whether the scheduler programs are attached (CPU events can be had).
    pub fn cpu_enabled(&self) -> bool {
        self.cpu_watched.is_some()
    }

    /// The scheduler programs' offsets and switches (all `NO_OFFSET`/0 when not loaded).
    pub fn cpu_offsets(&self) -> CpuOffsets {
        self.cpu_offsets
    }

    fn bump_cpu_gen(&mut self) -> Result<(), EbpfError> {
        let mut s = self.current_settings;
        s.cpu_watch_gen = s.cpu_watch_gen.wrapping_add(1);
        self.settings
            .set(0, s, 0)
            .map_err(|source| EbpfError::Map {
                map: names::SETTINGS,
                source,
            })?;
        self.current_settings = s;
        Ok(())
    }

    /// Starts (or updates) watching a cgroup of the cpu controller by kernfs id. The quota
    /// and period are read by the programs from the kernel, so quota changes need no call.
    pub fn watch_cpu(&mut self, cgroup_id: u64, cfg: CpuWatch) -> Result<(), EbpfError> {
        let map = self.cpu_watched.as_mut().ok_or(EbpfError::CpuUnavailable)?;
        map.insert(cgroup_id, cfg, 0)
            .map_err(|source| EbpfError::Map {
                map: names::CPU_WATCHED,
                source,
            })?;
        // Then let the programs see it: its bit in the filter (after the entry exists).
        self.set_cpu_filter_bit(cgroup_id)?;
        self.bump_cpu_gen()
    }

    fn set_cpu_filter_bit(&mut self, cgroup_id: u64) -> Result<(), EbpfError> {
        let Some(filter) = self.cpu_filter.as_mut() else {
            return Ok(());
        };
        let (word, mask) = cpu_filter_slot(cgroup_id);
        let err = |source| EbpfError::Map {
            map: names::CPU_FILTER,
            source,
        };
        let v = filter.get(&word, 0).map_err(err)?;
        if v & mask == 0 {
            filter.set(word, v | mask, 0).map_err(err)?;
        }
        bump_filter_gen(filter)
    }

    /// Stops watching a cpu cgroup and drops its kernel state; unknown ids are fine.
    pub fn unwatch_cpu(&mut self, cgroup_id: u64) -> Result<(), EbpfError> {
        let Some(map) = self.cpu_watched.as_mut() else {
            return Ok(());
        };
        let removed = map.remove(&cgroup_id).is_ok();
        if let Some(st) = self.cpu_state.as_mut() {
            let _ = st.remove(&cgroup_id);
        }
        if !removed {
            return Ok(());
        }
        // Clear the bit unless another watched cgroup shares it.
        let (word, mask) = cpu_filter_slot(cgroup_id);
        let shared = map
            .keys()
            .filter_map(Result::ok)
            .any(|id| cpu_filter_slot(id) == (word, mask));
        if let (false, Some(filter)) = (shared, self.cpu_filter.as_mut()) {
            let err = |source| EbpfError::Map {
                map: names::CPU_FILTER,
                source,
            };
            let v = filter.get(&word, 0).map_err(err)?;
            filter.set(word, v & !mask, 0).map_err(err)?;
            bump_filter_gen(filter)?;
        }
        self.bump_cpu_gen()
    }

    /// The kernel's CPU state of a watched cpu cgroup (period accounting, run-queue latency
    /// histogram); `None` before its first scheduler event or when CPU tracking is off.
    pub fn cpu_state(&self, cgroup_id: u64) -> Option<CpuState> {
        self.cpu_state.as_ref()?.get(&cgroup_id, 0).ok()
    }

    /// Starts (or updates) watching a cgroup by kernfs id.
    pub fn watch(&mut self, cgroup_id: u64, cfg: WatchConfig) -> Result<(), EbpfError> {
        self.watched
            .insert(cgroup_id, cfg, 0)
            .map_err(|source| EbpfError::Map {
                map: names::WATCHED,
                source,
            })
    }

    /// Stops watching a cgroup; unknown ids are fine.
    pub fn unwatch(&mut self, cgroup_id: u64) -> Result<(), EbpfError> {
        match self.watched.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) if matches!(&e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT)) => {
                Ok(())
            }
            Err(source) => Err(EbpfError::Map {
                map: names::WATCHED,
                source,
            }),
        }
    }

    /// The kernel-side counters, summed over CPUs.
    pub fn kernel_stats(&self) -> KernelStats {
        let get = |i: u32| -> u64 {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().copied().sum())
                .unwrap_or(0)
        };
        KernelStats {
            ringbuf_dropped: get(stat::RINGBUF_DROPPED),
            submitted: get(stat::SUBMITTED),
            woken: get(stat::WOKEN),
            filtered: get(stat::FILTERED),
            read_errors: get(stat::READ_ERRORS),
            unmatched_end: get(stat::UNMATCHED_END),
            usage_checks: get(stat::USAGE_CHECKS),
            task_resolves: get(stat::TASK_RESOLVES),
            runq_samples: get(stat::RUNQ_SAMPLES),
            cpu_accounted: get(stat::CPU_ACCOUNTED),
            cpu_suppressed: get(stat::CPU_SUPPRESSED),
        }
    }

    /// Turns the kernel's BPF run-time statistics on or off for this pipeline (they are on
    /// after load). Measuring costs two clock reads per program run, so overhead benchmarks
    /// measure slowdowns with them off. The kernel keeps them on while any process holds them.
    pub fn set_bpf_stats(&mut self, on: bool) {
        if on {
            if self._stats_fd.is_none() {
                self._stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
            }
        } else {
            self._stats_fd = None;
        }
    }

    /// Run time and run count per attached program (kernel BPF stats; zero when the kernel
    /// does not keep them).
    pub fn program_stats(&self) -> BTreeMap<&'static str, (Duration, u64)> {
        let mut out = BTreeMap::new();
        for s in &self.programs {
            if !s.attached {
                continue;
            }
            if let Some(p) = self.ebpf.program(s.program) {
                if let Ok(info) = p.info() {
                    out.insert(s.program, (info.run_time(), info.run_count()));
                }
            }
        }
        out
    }

    /// Forwards the kernel programs' aya-log records into `log` (and from there into
    /// tracing) from a background thread woken by the log ring buffer. Call once.
    pub fn forward_logs(&mut self) {
        let Some(mut logger) = self._logger.take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("ebpf-log".into())
            .spawn(move || {
                // Signals are for the command's own signal thread: a SIGINT delivered here
                // would kill the process with its default action.
                let _ = nix::sys::signal::SigSet::all().thread_block();
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                use std::os::fd::AsFd;
                loop {
                    let ready = {
                        let mut fds = [PollFd::new(logger.as_fd(), PollFlags::POLLIN)];
                        poll(&mut fds, PollTimeout::from(1000u16))
                    };
                    match ready {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => logger.flush(),
                        Err(_) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot forward eBPF logs: {e}");
        }
    }
}

/// Bumps the filter's generation word (after its bits changed): the programs forget which task
/// groups they found unwatched.
fn bump_filter_gen(filter: &mut Array<MapData, u64>) -> Result<(), EbpfError> {
    let err = |source| EbpfError::Map {
        map: names::CPU_FILTER,
        source,
    };
    let g = filter.get(&CPU_FILTER_GEN, 0).map_err(err)?;
    filter
        .set(CPU_FILTER_GEN, g.wrapping_add(1), 0)
        .map_err(err)
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(EbpfError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| EbpfError::Map { map: name, source })
}

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns()`.
#[inline]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod cpu_tests {
    use super::*;
    use crate::btf::tests::BtfBuilder;

    /// A fake kernel with the scheduler structs at made-up offsets; `sched_info` (with
    /// `last_queued`) only `with_sched_info` (CONFIG_SCHED_INFO).
    fn fake_sched_kernel(with_sched_info: bool) -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let void_ptr = b.ptr(0);
        let int = b.int("int", 4);
        let u64t = b.int("long long unsigned int", 8);
        let mut task_members = vec![("se", int, 192), ("sched_task_group", void_ptr, 712)];
        if with_sched_info {
            let si = b.strukt(
                "sched_info",
                48,
                &[
                    ("pcount", u64t, 0),
                    ("run_delay", u64t, 8),
                    ("last_queued", u64t, 40),
                ],
            );
            task_members.push(("sched_info", si, 1008));
        }
        let task = b.strukt("task_struct", 4096, &task_members);
        let task_ptr = b.ptr(task);
        b.strukt(
            "sched_entity",
            256,
            &[("load", u64t, 0), ("cfs_rq", void_ptr, 168)],
        );
        b.strukt("cfs_rq", 512, &[("load", u64t, 0), ("rq", void_ptr, 312)]);
        b.strukt("rq", 3584, &[("nr_running", int, 0), ("clock", u64t, 2776)]);
        b.strukt(
            "task_group",
            640,
            &[("css", int, 0), ("cfs_bandwidth", int, 320)],
        );
        b.strukt(
            "cfs_bandwidth",
            320,
            &[("period", u64t, 8), ("quota", u64t, 16)],
        );
        let fp = b.func_proto(&[void_ptr, int, task_ptr, task_ptr, int]);
        let fpp = b.ptr(fp);
        b.typedef("btf_trace_sched_switch", fpp);
        let fp2 = b.func_proto(&[void_ptr, task_ptr]);
        let fp2p = b.ptr(fp2);
        b.typedef("btf_trace_sched_wakeup", fp2p);
        b.typedef("btf_trace_sched_wakeup_new", fp2p);
        b.build()
    }

    fn kernel_offsets() -> KernelOffsets {
        KernelOffsets {
            cpu_cgrp_id: 1,
            ..KernelOffsets::ZERO
        }
    }

    #[test]
    fn cpu_offsets_from_fake_kernel() {
        let k = KernelBtf::from_bytes(&fake_sched_kernel(true)).unwrap();
        let o = cpu_offsets(&k, &kernel_offsets()).unwrap();
        assert_eq!(o.task_sched_task_group, 712);
        assert_eq!((o.tg_css, o.tg_cfs_bandwidth), (0, 320));
        assert_eq!((o.cfs_b_period, o.cfs_b_quota), (8, 16));
        assert_eq!(
            o.task_last_queued,
            1008 + 40,
            "task_struct.sched_info.last_queued"
        );
        assert_eq!(o.task_se_cfs_rq, 192 + 168, "task_struct.se.cfs_rq");
        assert_eq!((o.cfs_rq_rq, o.rq_clock), (312, 2776));
        assert_eq!(o.switch_has_prev_state, 1);
        assert_eq!(o.runq_source, RUNQ_FROM_SCHED_INFO);
    }

    /// Without CONFIG_SCHED_INFO, run-queue latency falls back to the wakeup tracepoints.
    #[test]
    fn without_sched_info_runq_latency_comes_from_wakeups() {
        let k = KernelBtf::from_bytes(&fake_sched_kernel(false)).unwrap();
        let o = cpu_offsets(&k, &kernel_offsets()).unwrap();
        assert_eq!(o.task_last_queued, NO_OFFSET);
        assert_eq!(o.runq_source, RUNQ_FROM_WAKEUP);
    }

    #[test]
    fn no_cpu_controller_is_named() {
        let k = KernelBtf::from_bytes(&fake_sched_kernel(true)).unwrap();
        let e = cpu_offsets(&k, &KernelOffsets::ZERO).unwrap_err();
        assert!(e.contains("cpu controller"), "{e}");
    }

    #[test]
    fn filter_slots_cover_the_bitmap() {
        use scaler_common::CPU_FILTER_WORDS;
        assert_eq!(cpu_filter_slot(0), (0, 1));
        assert_eq!(cpu_filter_slot(63), (0, 1 << 63));
        assert_eq!(cpu_filter_slot(64), (1, 1));
        // Ids 65,536 apart share a bit (a spare lookup, never a missed cgroup).
        assert_eq!(cpu_filter_slot(14_059), cpu_filter_slot(14_059 + 65_536));
        let (w, _) = cpu_filter_slot(u64::MAX);
        assert_eq!(w, CPU_FILTER_WORDS - 1);
    }

    #[test]
    fn running_kernel_has_the_cpu_offsets_if_available() {
        let Ok(k) = KernelBtf::from_sys() else {
            eprintln!("skipping: no readable BTF");
            return;
        };
        let Ok(ko) = k.kernel_offsets(4096) else {
            return;
        };
        match cpu_offsets(&k, &ko) {
            Ok(o) => {
                assert!(o.task_sched_task_group != NO_OFFSET && o.rq_clock != NO_OFFSET);
                assert_ne!(o.runq_source, 0, "{o:?}");
            }
            Err(why) => eprintln!("no CPU tracking on this kernel: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_required_tracepoint_is_named_with_what_to_do() {
        let e = EbpfError::MissingTracepoint {
            program: names::PROG_MEMCG_RECLAIM_BEGIN,
            tracepoint: "mm_vmscan_memcg_reclaim_begin",
            what: "memory-cgroup reclaim",
        };
        let m = e.to_string();
        assert!(
            m.contains("no tracepoint `mm_vmscan_memcg_reclaim_begin`"),
            "{m}"
        );
        assert!(m.contains("program `memcg_reclaim_begin`"), "{m}");
        assert!(
            m.contains("CONFIG_DEBUG_INFO_BTF") && m.contains("/sys/kernel/btf/vmlinux"),
            "{m}"
        );
        assert!(!m.to_lowercase().contains("unexpected program type"), "{m}");
    }
}
