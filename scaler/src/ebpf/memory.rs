//! The memory programs (reclaim, OOM kills, early warnings) and the map of the cgroups they
//! report.

use aya::{programs::BtfTracePoint, Btf, Ebpf};
use scaler_common::{names, WatchConfig};

use super::{EbpfError, Pipeline, PipelineOptions, ProgramStatus};
use crate::btf::{Features, KernelBtf};

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

/// Loads and attaches the memory programs the kernel has (and `opts` asks for), recording each
/// in `programs`. A required one that is missing or fails to attach is an error; an optional
/// one is a warning and a [`ProgramStatus`] with the reason.
pub(super) fn attach_programs(
    ebpf: &mut Ebpf,
    kbtf: &KernelBtf,
    btf: &Btf,
    features: Features,
    opts: &PipelineOptions,
    programs: &mut Vec<ProgramStatus>,
) -> Result<(), EbpfError> {
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
            ProgramStatus::record(programs, prog, tp, Err(note));
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
        let res = p.load(tp, btf).and_then(|()| p.attach().map(|_| ()));
        match res {
            Ok(()) => {
                ProgramStatus::record(programs, prog, tp, Ok::<(), String>(()));
            }
            Err(source) if !required => {
                let note = format!("failed to attach: {source}");
                ProgramStatus::record(programs, prog, tp, Err(note));
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
    Ok(())
}

impl Pipeline {
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
}
