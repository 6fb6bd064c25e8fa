//! How many cgroups the agent can protect, and the loud refusal of those it cannot.
//!
//! Each managed cgroup costs a kernel map entry (sized at load by `agent.max_cgroups`) and one
//! or two descriptors (its limit file; v1 memsw, v2 `memory.high` or the v1 CPU period is the
//! second). At start RLIMIT_NOFILE's soft limit is raised to the hard limit, and when even the hard limit cannot
//! hold two descriptors per cgroup the agent says so, with the numbers. A cgroup a policy
//! selects that cannot be protected (no descriptor left, the kernel map full, its path
//! recreated under it, the engine too busy to take it) is refused: an error log the first
//! time, `scaler_cgroups_refused_total{resource,reason}`, the
//! `scaler_cgroups_unprotected{resource,reason}` gauge and a line in `scaler status`; it is
//! tried again at every discovery pass.

use nix::sys::resource::{getrlimit, setrlimit, Resource as Rlimit};

use crate::{actuator::ActuatorError, ebpf::EbpfError, engine::CommandRefused};

/// Descriptors kept for everything but limit files (sockets, maps, programs, logs).
pub const RESERVED_FDS: u64 = 512;
/// Descriptors a managed cgroup may need (the limit file, and v1 memsw or CPU period).
pub const FDS_PER_CGROUP: u64 = 2;

/// Why a selected cgroup is not protected (the `reason` label).
pub mod reason {
    /// No file descriptor left (EMFILE/ENFILE) to open its limit files.
    pub const DESCRIPTORS: &str = "descriptors";
    /// The kernel's watched-cgroups map is full (`agent.max_cgroups`).
    pub const WATCH_MAP_FULL: &str = "watch_map_full";
    /// The kernel programs could not be told to watch it (another map error).
    pub const WATCH_FAILED: &str = "watch_failed";
    /// Its path now holds another cgroup (removed and recreated).
    pub const REPLACED: &str = "replaced";
    /// The engine's command channel stayed full.
    pub const ENGINE_BUSY: &str = "engine_busy";
    /// Its limit files could not be opened or read (permissions, I/O).
    pub const OPEN_FAILED: &str = "open_failed";
    /// Every reason, for resetting the gauge.
    pub const ALL: [&str; 6] = [
        DESCRIPTORS,
        WATCH_MAP_FULL,
        WATCH_FAILED,
        REPLACED,
        ENGINE_BUSY,
        OPEN_FAILED,
    ];
}

/// A cgroup a policy selects that the agent does not protect, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Unprotected {
    /// One of [`reason`].
    pub reason: &'static str,
    /// What went wrong and what to do.
    pub error: String,
}

/// RLIMIT_NOFILE as the agent left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nofile {
    pub soft: u64,
    pub hard: u64,
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit, and says (with the numbers) when the
/// hard limit cannot hold [`FDS_PER_CGROUP`] descriptors for each of `max_cgroups` cgroups of
/// each of `resources` resources.
pub fn raise_nofile(max_cgroups: u32, resources: u64) -> Nofile {
    let (soft, hard) = match getrlimit(Rlimit::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("reading RLIMIT_NOFILE: {e}");
            return Nofile { soft: 0, hard: 0 };
        }
    };
    let soft = if soft < hard {
        match setrlimit(Rlimit::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("raising RLIMIT_NOFILE from {soft} to its hard limit {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    let need = needed_fds(max_cgroups, resources);
    if soft < need {
        let fits = soft.saturating_sub(RESERVED_FDS) / FDS_PER_CGROUP;
        tracing::warn!(
            soft,
            hard,
            need,
            max_cgroups,
            "RLIMIT_NOFILE (hard limit {hard}) cannot hold {FDS_PER_CGROUP} descriptors for each \
             of agent.max_cgroups = {max_cgroups} cgroups ({need} with {RESERVED_FDS} spare): \
             about {fits} cgroups are sure to fit (more where a cgroup needs one descriptor); \
             any cgroup that cannot be protected is refused with an error, counted in \
             scaler_cgroups_unprotected and listed by `scaler status`. Raise the hard limit \
             (LimitNOFILE= in the systemd unit, the container runtime's nofile ulimit) to \
             {need} or more"
        );
    } else {
        tracing::debug!(soft, hard, need, "RLIMIT_NOFILE");
    }
    Nofile { soft, hard }
}

/// Descriptors that `max_cgroups` cgroups of `resources` resources may need.
pub fn needed_fds(max_cgroups: u32, resources: u64) -> u64 {
    u64::from(max_cgroups) * FDS_PER_CGROUP * resources.max(1) + RESERVED_FDS
}

/// The reason and message of a limit writer that could not be opened.
pub fn open_refusal(e: &ActuatorError) -> Unprotected {
    use crate::actuator::ErrorKind;
    if let ActuatorError::Open { source, .. } = e {
        if matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            let l = getrlimit(Rlimit::RLIMIT_NOFILE).unwrap_or((0, 0));
            return Unprotected {
                reason: reason::DESCRIPTORS,
                error: format!(
                    "{e}: out of file descriptors (RLIMIT_NOFILE soft {}, hard {}); raise the \
                     hard limit (LimitNOFILE= in the systemd unit, the container runtime's \
                     nofile ulimit)",
                    l.0, l.1
                ),
            };
        }
    }
    Unprotected {
        reason: if e.kind() == ErrorKind::Replaced {
            reason::REPLACED
        } else {
            reason::OPEN_FAILED
        },
        error: e.to_string(),
    }
}

/// The reason and message of a cgroup the kernel programs could not be told to watch.
pub fn watch_refusal(e: &EbpfError, max_watched: u32) -> Unprotected {
    let full = matches!(e, EbpfError::Map { source: aya::maps::MapError::SyscallError(s), .. }
        if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)));
    if full {
        Unprotected {
            reason: reason::WATCH_MAP_FULL,
            error: format!(
                "{e}: the kernel's watched-cgroups map is full ({max_watched} entries, \
                 agent.max_cgroups); raise agent.max_cgroups and restart the agent"
            ),
        }
    } else {
        Unprotected {
            reason: reason::WATCH_FAILED,
            error: e.to_string(),
        }
    }
}

/// The reason and message of a cgroup the engine did not take.
pub fn engine_refusal(e: CommandRefused) -> Unprotected {
    Unprotected {
        reason: reason::ENGINE_BUSY,
        error: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_cgroups_need_twenty_thousand_descriptors_and_some() {
        assert_eq!(needed_fds(10_000, 1), 20_000 + RESERVED_FDS);
        assert_eq!(needed_fds(10_000, 2), 40_000 + RESERVED_FDS);
    }

    #[test]
    fn out_of_descriptors_is_its_own_reason_with_the_numbers() {
        let e = ActuatorError::Open {
            path: "/sys/fs/cgroup/memory/a/memory.limit_in_bytes".into(),
            source: std::io::Error::from_raw_os_error(libc::EMFILE),
        };
        let u = open_refusal(&e);
        assert_eq!(u.reason, reason::DESCRIPTORS);
        assert!(
            u.error.contains("RLIMIT_NOFILE") && u.error.contains("/a/memory.limit_in_bytes"),
            "{}",
            u.error
        );
        let e = ActuatorError::Replaced {
            path: "/sys/fs/cgroup/memory/a".into(),
            expected: 1,
            found: 2,
        };
        assert_eq!(open_refusal(&e).reason, reason::REPLACED);
    }

    #[test]
    fn a_full_map_names_the_setting_to_raise() {
        let e = EbpfError::Map {
            map: "WATCHED",
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(libc::E2BIG),
            }),
        };
        let u = watch_refusal(&e, 8192);
        assert_eq!(u.reason, reason::WATCH_MAP_FULL);
        assert!(
            u.error.contains("agent.max_cgroups") && u.error.contains("8192"),
            "{}",
            u.error
        );
    }
}
