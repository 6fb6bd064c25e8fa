//! Loading and attaching the kernel programs, and the maps userspace talks to them through.
//!
//! [`Pipeline`] loads the object and holds what userspace keeps of it; the memory programs and
//! the map of the cgroups they report are in `memory`, the scheduler programs, their offsets
//! from BTF and their maps in `cpu`.

use std::{collections::BTreeMap, os::fd::OwnedFd, time::Duration};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    Btf, Ebpf, EbpfLoader,
};
use scaler_common::{
    names, stat, CpuOffsets, CpuState, CpuWatch, KernelOffsets, Settings, WatchConfig,
};

use crate::btf::{Features, KernelBtf};

mod cpu;
mod memory;

pub use cpu::{
    cpu_offsets, CpuTrackingError, SwitchFloor, CPU_TICK, FORCE_CPU_FALLBACKS, SCHED_PROGRAMS,
};

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
    #[error("program `{program}`: {source}")]
    Cpu {
        program: &'static str,
        #[source]
        source: cpu::CpuTrackingError,
    },
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The embedded eBPF object, for the load-testing injector (`scaler load-test`, in
/// scaler-tools), which loads its own copy sharing a running agent's maps.
pub fn object() -> Result<&'static [u8], EbpfError> {
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
    /// Entries of the per-cgroup kernel maps (watched memory and cpu cgroups and their
    /// state), set at load: the most cgroups of each resource that can be watched at once.
    pub max_watched: u32,
    /// Turn the kernel's BPF run-time statistics on while the pipeline is loaded
    /// (`kernel.bpf_stats_enabled`, BPF_ENABLE_STATS): per-program run time and count, for
    /// `scaler_bpf_program_*` and overhead figures. They cost two clock reads (about 28 ns
    /// here) on every run of every BPF program of the node, ours or not, so they are off
    /// unless asked for (`[agent] bpf_stats`; `scaler overhead` turns them on for its untimed
    /// runs).
    pub bpf_stats: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            watch_all: false,
            default_headroom_bytes: 0,
            early_warning: true,
            max_watched: scaler_common::MAX_WATCHED,
            bpf_stats: false,
        }
    }
}

/// Counters the kernel programs keep (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
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
    /// Observe-only events (cgroups no watched level covers, seen only through `watch_all`)
    /// shed in the kernel: the ring buffer was an eighth full or the CPU's budget was spent
    /// (see `scaler_common::OBSERVE_MAX_PENDING_BYTES`). Events of watched cgroups are never
    /// shed.
    pub observe_shed: u64,
}

impl KernelStats {
    /// The counters from the `STATS` map, `get(index)` being one counter summed over CPUs.
    pub fn from_counters(get: impl Fn(u32) -> u64) -> Self {
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
            observe_shed: get(stat::OBSERVE_SHED),
        }
    }
}

/// A program that was attached, or why it was not.
#[derive(Clone, Debug)]
pub struct ProgramStatus {
    pub program: &'static str,
    pub tracepoint: &'static str,
    pub attached: bool,
    pub note: Option<String>,
}

impl ProgramStatus {
    /// Records whether an optional `program` (at `tracepoint`) is attached; when it is not,
    /// warns with the reason and goes on without it. Returns whether it is attached.
    pub(crate) fn record(
        programs: &mut Vec<ProgramStatus>,
        program: &'static str,
        tracepoint: &'static str,
        res: Result<(), impl std::fmt::Display>,
    ) -> bool {
        let note = res.err().map(|e| e.to_string());
        if let Some(note) = &note {
            tracing::warn!(program, tracepoint, "{note}; continuing without it");
        }
        let attached = note.is_none();
        programs.push(ProgramStatus {
            program,
            tracepoint,
            attached,
            note,
        });
        attached
    }
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
    max_watched: u32,
    _logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Held while this pipeline keeps the kernel's BPF statistics on.
    stats_fd: Option<OwnedFd>,
}

/// Turns the kernel's BPF run-time statistics on (until the descriptor is closed); `None`,
/// after a warning saying why, where the kernel refuses.
fn enable_bpf_stats() -> Option<OwnedFd> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(
                "cannot turn the kernel's BPF statistics on (BPF_ENABLE_STATS needs                  CAP_SYS_ADMIN and Linux 5.8+): {e}; scaler_bpf_program_* stay absent"
            );
            None
        }
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
        let fallbacks = cpu::fallbacks_forced();
        let cpu_offsets = if cpu {
            cpu::load_offsets(&kbtf, &offsets, fallbacks)
        } else {
            None
        };
        let btf = Btf::from_sys_fs().ok();
        // Kernel BPF stats (run time and count per program): only when asked for, they tax
        // every BPF program of the node.
        let stats_fd = if opts.bpf_stats {
            enable_bpf_stats()
        } else {
            None
        };
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
            // The per-cgroup maps, sized for the node (agent.max_cgroups).
            .map_max_entries(names::WATCHED, opts.max_watched.max(1))
            .map_max_entries(names::CG_STATE, opts.max_watched.max(1))
            .map_max_entries(names::CPU_WATCHED, opts.max_watched.max(1))
            .map_max_entries(names::CPU_STATE, opts.max_watched.max(1))
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
        memory::attach_programs(&mut ebpf, &kbtf, &btf, features, opts, &mut programs)?;
        let sched_attached = match cpu_offsets {
            Some(co) => cpu::attach_programs(&mut ebpf, &kbtf, &btf, co, fallbacks, &mut programs),
            None => false,
        };
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
            max_watched: opts.max_watched.max(1),
            _logger: logger,
            stats_fd,
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

    /// Entries of the per-cgroup kernel maps (see [`PipelineOptions::max_watched`]).
    pub fn max_watched(&self) -> u32 {
        self.max_watched
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
        self.write_settings(s)
    }

    /// Writes `s` to the programs' settings map and remembers it.
    fn write_settings(&mut self, s: Settings) -> Result<(), EbpfError> {
        self.settings
            .set(0, s, 0)
            .map_err(|source| EbpfError::Map {
                map: names::SETTINGS,
                source,
            })?;
        self.current_settings = s;
        Ok(())
    }

    /// The kernel-side counters, summed over CPUs.
    pub fn kernel_stats(&self) -> KernelStats {
        KernelStats::from_counters(|i| {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().copied().sum())
                .unwrap_or(0)
        })
    }

    /// Turns the kernel's BPF run-time statistics on or off for this pipeline (off after
    /// load unless [`PipelineOptions::bpf_stats`]). Measuring costs two clock reads per
    /// program run, on every BPF program of the node, so overhead benchmarks measure
    /// slowdowns with them off. The kernel keeps them on while any process holds them.
    pub fn set_bpf_stats(&mut self, on: bool) {
        if on {
            if self.stats_fd.is_none() {
                self.stats_fd = enable_bpf_stats();
            }
        } else {
            self.stats_fd = None;
        }
    }

    /// Whether this pipeline holds the kernel's BPF statistics on (so that
    /// [`Pipeline::program_stats`] counts every run since then).
    pub fn bpf_stats_on(&self) -> bool {
        self.stats_fd.is_some()
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

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(EbpfError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| EbpfError::Map { map: name, source })
}

pub use crate::clock::monotonic_ns;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_stats_take_each_counter_from_its_index() {
        // Counter i holds 100 + i: each field must come from its own index, the new
        // observe-only shed count included.
        let k = KernelStats::from_counters(|i| 100 + u64::from(i));
        assert_eq!(k.ringbuf_dropped, 100 + u64::from(stat::RINGBUF_DROPPED));
        assert_eq!(k.submitted, 100 + u64::from(stat::SUBMITTED));
        assert_eq!(k.cpu_suppressed, 100 + u64::from(stat::CPU_SUPPRESSED));
        assert_eq!(k.observe_shed, 100 + u64::from(stat::OBSERVE_SHED));
        assert_eq!(stat::NAMES[stat::OBSERVE_SHED as usize], "observe_shed");
        const _: () = assert!(stat::OBSERVE_SHED < stat::COUNT);
        // Every index is a distinct counter, and each named.
        let json = serde_json::to_value(k).unwrap();
        let obj = json.as_object().unwrap();
        for (i, name) in stat::NAMES.iter().enumerate() {
            assert_eq!(obj[*name], 100 + i as u64, "{name}");
        }
        assert_eq!(obj.len(), stat::COUNT as usize);
    }

    #[test]
    fn observe_only_events_leave_most_of_the_ring_to_watched_ones() {
        use scaler_common::{
            OBSERVE_BUDGET, OBSERVE_MAX_PENDING_BYTES, OBSERVE_WINDOW_NS, RING_BUF_BYTES,
        };
        // Records are the event plus the ring buffer's 8-byte header.
        let record = (scaler_common::EVENT_SIZE + 8) as u64;
        let free_for_watched = (u64::from(RING_BUF_BYTES) - OBSERVE_MAX_PENDING_BYTES) / record;
        assert!(free_for_watched > 20_000, "{free_for_watched}");
        assert!(OBSERVE_MAX_PENDING_BYTES / record < 3_000);
        // A small budget: a few thousand a second per CPU.
        let per_sec = OBSERVE_BUDGET * 1_000_000_000 / OBSERVE_WINDOW_NS;
        assert!((1_000..=10_000).contains(&per_sec), "{per_sec}");
    }

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
