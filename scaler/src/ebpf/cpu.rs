//! The scheduler programs (CPU time per quota period, run-queue latency): the offsets they
//! need from BTF, attaching them, the cpu cgroups they watch, and `scaler overhead`'s
//! empty-program floor.

use std::time::Duration;

use aya::{
    maps::{Array, MapData},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        BtfTracePoint, PerfEvent,
    },
    Btf, Ebpf, EbpfLoader,
};
use scaler_common::{
    cpu_filter_slot, names, CpuOffsets, CpuState, CpuWatch, KernelOffsets, CPU_FILTER_GEN,
    NO_OFFSET, RUNQ_FROM_SCHED_INFO, RUNQ_FROM_WAKEUP,
};

use super::{EbpfError, Pipeline, ProgramStatus, EBPF_OBJECT};
use crate::btf::{BtfError, KernelBtf};

/// Why the scheduler programs, or one of them, cannot run here. Each is a warning (CPU quotas
/// are then managed from `cpu.stat` samples alone), except where `scaler overhead` needs one.
#[derive(Debug, thiserror::Error)]
pub enum CpuTrackingError {
    #[error("the kernel has no cpu controller (cpu_cgrp_id; CONFIG_CGROUP_SCHED)")]
    NoCpuController,
    #[error("the kernel has no sched_switch tracepoint")]
    NoSchedSwitch,
    #[error("{source} (CPU quota tracking needs CONFIG_CFS_BANDWIDTH)")]
    NoBandwidthControl {
        #[source]
        source: BtfError,
    },
    #[error("the running kernel has no tracepoint {0}")]
    NoTracepoint(String),
    #[error("the eBPF object has no program {0}; rebuild scaler")]
    NoProgram(&'static str),
    #[error("program {program}: {source}")]
    ProgramType {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("failed to attach: {0}")]
    Attach(#[source] aya::programs::ProgramError),
    #[error("reading {path}: {source}")]
    OnlineCpus {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("loading: {0}")]
    Load(#[source] aya::programs::ProgramError),
    #[error("opening a cpu-clock perf event on CPU {cpu}: {source}")]
    PerfEvent {
        cpu: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{FORCE_CPU_FALLBACKS}=1")]
    FallbacksForced,
}

/// Scheduler programs (attached with [`Pipeline::load_with_cpu`]): (program fn name, where it
/// attaches). `sched_switch` finds the watched cgroup each CPU runs and samples run-queue
/// latency; `cpu_tick` (a per-CPU perf-event timer, every [`CPU_TICK`]) reads the kernel's
/// own bandwidth pool and run time of that cgroup (quota-near, CPU time); `sched_stat_runtime`
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

/// Period of the `cpu_tick` timer on each CPU: the kernel's bandwidth pool of the watched
/// cgroup a CPU runs is read at least this often (switch-ins of its tasks test it too), so a
/// cgroup is seen near its quota within 2 ms of CPU time per CPU. The kernel's own tick, with
/// HZ=250, is every 4 ms; and it hands out quota in 5 ms slices per CPU. Each timer interrupt
/// costs the CPU it fires on a few µs (measured: a 1 ms period cost a switch-heavy benchmark
/// about 1.4% more than none, so 2 ms is the compromise).
pub const CPU_TICK: Duration = Duration::from_millis(2);

/// The scheduler programs' offsets from BTF. `None` (with the reason) when the kernel cannot
/// run them: no cpu controller (CONFIG_CGROUP_SCHED), no CFS bandwidth control
/// (CONFIG_CFS_BANDWIDTH, which implies CONFIG_FAIR_GROUP_SCHED), or no `sched_switch`
/// tracepoint. Run-queue latency comes from `task_struct.sched_info.last_queued` where the
/// kernel has it (CONFIG_SCHED_INFO), else from the wakeup tracepoints, else it is off.
pub fn cpu_offsets(
    kbtf: &KernelBtf,
    offsets: &KernelOffsets,
) -> Result<CpuOffsets, CpuTrackingError> {
    if offsets.cpu_cgrp_id == NO_OFFSET {
        return Err(CpuTrackingError::NoCpuController);
    }
    let switch_arity = kbtf
        .tracepoint_arity("sched_switch")
        .ok_or(CpuTrackingError::NoSchedSwitch)?;
    let off = |ty: &str, m: &str| {
        kbtf.member_offset(ty, m)
            .map_err(|source| CpuTrackingError::NoBandwidthControl { source })
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
        cfs_b_runtime: off("cfs_bandwidth", "runtime")?,
        // 5.14+ (cpu.cfs_burst_us); without it the pool starts each period at the quota.
        cfs_b_runtime_snap: rq_off("cfs_bandwidth", "runtime_snap").unwrap_or(NO_OFFSET),
        cfs_b_nr_periods: off("cfs_bandwidth", "nr_periods")?,
        tg_se: off("task_group", "se")?,
        se_sum_exec_runtime: off("sched_entity", "sum_exec_runtime")?,
        task_last_queued: last_queued.unwrap_or(NO_OFFSET),
        task_se_cfs_rq: off("task_struct", "se")? + off("sched_entity", "cfs_rq")?,
        cfs_rq_rq: off("cfs_rq", "rq")?,
        rq_clock: off("rq", "clock")?,
        switch_has_prev_state: u32::from(switch_arity >= 4),
        runq_source,
        _pad: 0,
    })
}

/// Whether [`FORCE_CPU_FALLBACKS`] is set.
pub(super) fn fallbacks_forced() -> bool {
    std::env::var_os(FORCE_CPU_FALLBACKS).is_some_and(|v| v == "1")
}

/// The offsets to load the scheduler programs with; `None`, after a warning saying why, when
/// the kernel cannot run them. With `fallbacks`, run-queue latency comes from the wakeup
/// tracepoints even where `sched_info.last_queued` exists.
pub(super) fn load_offsets(
    kbtf: &KernelBtf,
    offsets: &KernelOffsets,
    fallbacks: bool,
) -> Option<CpuOffsets> {
    match cpu_offsets(kbtf, offsets) {
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
}

/// Loads and attaches one `tp_btf` scheduler program.
fn attach_sched_tp(
    ebpf: &mut Ebpf,
    btf: &Btf,
    prog: &'static str,
    tp: &str,
) -> Result<(), CpuTrackingError> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or(CpuTrackingError::NoProgram(prog))?
        .try_into()
        .map_err(|source| CpuTrackingError::ProgramType {
            program: prog,
            source,
        })?;
    p.load(tp, btf)
        .and_then(|()| p.attach().map(|_| ()))
        .map_err(CpuTrackingError::Attach)
}

/// Loads `cpu_tick` and attaches it to a cpu-clock timer on every online CPU.
fn attach_cpu_tick(ebpf: &mut Ebpf) -> Result<(), CpuTrackingError> {
    let cpus = aya::util::online_cpus()
        .map_err(|(path, source)| CpuTrackingError::OnlineCpus { path, source })?;
    let p: &mut PerfEvent = ebpf
        .program_mut(names::PROG_CPU_TICK)
        .ok_or(CpuTrackingError::NoProgram(names::PROG_CPU_TICK))?
        .try_into()
        .map_err(|source| CpuTrackingError::ProgramType {
            program: names::PROG_CPU_TICK,
            source,
        })?;
    p.load().map_err(CpuTrackingError::Load)?;
    for cpu in cpus {
        p.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Period(CPU_TICK.as_nanos() as u64),
            false,
        )
        .map_err(|source| CpuTrackingError::PerfEvent { cpu, source })?;
    }
    Ok(())
}

/// Loads and attaches the scheduler programs the kernel can run, with offsets `co`, recording
/// each in `programs` (all optional: a failure is a warning). Returns whether `sched_switch`,
/// which does the work, is attached.
pub(super) fn attach_programs(
    ebpf: &mut Ebpf,
    kbtf: &KernelBtf,
    btf: &Btf,
    co: CpuOffsets,
    fallbacks: bool,
    programs: &mut Vec<ProgramStatus>,
) -> bool {
    let mut status = |prog: &'static str, tp: &'static str, res: Result<(), CpuTrackingError>| {
        ProgramStatus::record(programs, prog, tp, res)
    };
    let tp_res = |ebpf: &mut Ebpf, prog, tp: &str| {
        if kbtf.has_tracepoint(tp) {
            attach_sched_tp(ebpf, btf, prog, tp)
        } else {
            Err(CpuTrackingError::NoTracepoint(tp.to_owned()))
        }
    };
    let res = tp_res(ebpf, names::PROG_SCHED_SWITCH, "sched_switch");
    let sched_attached = status(names::PROG_SCHED_SWITCH, "sched_switch", res);
    if sched_attached {
        let res = if fallbacks {
            Err(CpuTrackingError::FallbacksForced)
        } else {
            attach_cpu_tick(ebpf)
        };
        if !status(names::PROG_CPU_TICK, "perf event cpu-clock", res) {
            let res = tp_res(ebpf, names::PROG_SCHED_STAT_RUNTIME, "sched_stat_runtime");
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
                    let res = tp_res(ebpf, prog, tp);
                    status(prog, tp, res);
                }
            }
            _ => tracing::warn!(
                "the kernel has neither sched_info.last_queued nor the wakeup \
                 tracepoints: no run-queue latency"
            ),
        }
    }
    sched_attached
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
        .map_err(|source| EbpfError::Cpu {
            program: names::PROG_SCHED_SWITCH_FLOOR,
            source,
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

impl Pipeline {
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
        self.write_settings(s)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::BtfBuilder;

    /// A fake kernel with the scheduler structs at made-up offsets; `sched_info` (with
    /// `last_queued`) only `with_sched_info` (CONFIG_SCHED_INFO).
    fn fake_sched_kernel(with_sched_info: bool) -> Vec<u8> {
        fake_sched_kernel_with(with_sched_info, true)
    }

    /// Likewise; `cfs_bandwidth.runtime_snap` (5.14+) only `with_snap`.
    fn fake_sched_kernel_with(with_sched_info: bool, with_snap: bool) -> Vec<u8> {
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
            &[
                ("load", u64t, 0),
                ("sum_exec_runtime", u64t, 72),
                ("cfs_rq", void_ptr, 168),
            ],
        );
        b.strukt("cfs_rq", 512, &[("load", u64t, 0), ("rq", void_ptr, 312)]);
        b.strukt("rq", 3584, &[("nr_running", int, 0), ("clock", u64t, 2776)]);
        b.strukt(
            "task_group",
            640,
            &[
                ("css", int, 0),
                ("se", void_ptr, 200),
                ("cfs_bandwidth", int, 320),
            ],
        );
        let mut cfs_b = vec![
            ("period", u64t, 8),
            ("quota", u64t, 16),
            ("runtime", u64t, 24),
            ("nr_periods", int, 200),
        ];
        if with_snap {
            cfs_b.push(("runtime_snap", u64t, 40));
        }
        b.strukt("cfs_bandwidth", 320, &cfs_b);
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
            (o.cfs_b_runtime, o.cfs_b_runtime_snap, o.cfs_b_nr_periods),
            (24, 40, 200),
            "the kernel's bandwidth pool and period count"
        );
        assert_eq!((o.tg_se, o.se_sum_exec_runtime), (200, 72));
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

    /// Before 5.14 `cfs_bandwidth` has no `runtime_snap`: the pool is measured against the
    /// quota (what a period starts with when no burst is configured).
    #[test]
    fn without_runtime_snap_the_pool_is_measured_against_the_quota() {
        let k = KernelBtf::from_bytes(&fake_sched_kernel_with(true, false)).unwrap();
        let o = cpu_offsets(&k, &kernel_offsets()).unwrap();
        assert_eq!(o.cfs_b_runtime_snap, NO_OFFSET);
        assert_eq!((o.cfs_b_runtime, o.cfs_b_nr_periods), (24, 200));
    }

    #[test]
    fn no_cpu_controller_is_named() {
        let k = KernelBtf::from_bytes(&fake_sched_kernel(true)).unwrap();
        let e = cpu_offsets(&k, &KernelOffsets::ZERO).unwrap_err();
        assert!(matches!(e, CpuTrackingError::NoCpuController), "{e}");
        assert!(e.to_string().contains("cpu controller"), "{e}");
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
