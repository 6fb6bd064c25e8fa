//! Privileges: which capabilities scaler needs, a check at start that refuses with a clear
//! message when they are missing, and hardening once the kernel programs are loaded (memory
//! locked, every capability no longer needed dropped).
//!
//! What each capability is for (see `docs/security.md` for the experiments behind this list):
//!
//! | capability          | needed for                                                          | after load |
//! |---------------------|---------------------------------------------------------------------|------------|
//! | `CAP_BPF`           | creating the maps, loading BTF and the programs (5.8+)              | dropped    |
//! | `CAP_PERFMON`       | tracing programs (`tp_btf`) and their kernel-memory reads (5.8+)    | dropped    |
//! | `CAP_SYS_ADMIN`     | both of the above on kernels older than 5.8 (no CAP_BPF there);     | dropped*   |
//! |                     | reading a `trusted.` opt-in attribute (`agent.opt_in_xattr`)        |            |
//! | `CAP_DAC_OVERRIDE`  | writing limits of cgroups not owned by scaler's uid (delegated ones) | kept       |
//! | `CAP_SYS_NICE`      | SCHED_FIFO for the engine thread (optional)                         | kept       |
//! | `CAP_IPC_LOCK`      | `mlockall` beyond RLIMIT_MEMLOCK (optional; needed for every later   | kept       |
//! |                     | mapping once `MCL_FUTURE` is set)                                    |            |
//!
//! \* The agent keeps `CAP_SYS_ADMIN` while a policy requires a `trusted.` opt-in attribute:
//! without it such an attribute reads as absent ([`after_load_keeping`]).
//!
//! Maps, the ring buffer and attached programs are used through file descriptors opened at
//! load: map updates (watch/unwatch), ring-buffer reads and program info need no capability
//! once the fds exist, so dropping `CAP_BPF` and `CAP_PERFMON` after loading is safe.
//!
//! Capabilities are per thread on Linux, and a thread starts with the sets of the thread that
//! creates it. The commands block their signals, load the programs and call [`after_load`] in
//! their main thread before they start any other (signal waiter, metrics and status servers,
//! engine, discovery), so the one drop in that thread ([`drop_after_load`]) holds for every
//! thread of the process.
//!
//! `caps` parses capability sets (`/proc/<pid>/status`); `process` acts on this process
//! (memory lock, capset, its threads).

use std::{fmt, path::Path};

mod caps;
mod process;

pub use caps::{kernel_last_cap, CapSet, Capability, ProcessCaps};
pub use process::{drop_after_load, lock_memory, other_threads, Dropped};

/// What scaler is about to do, which decides what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `scaler watch`: load and read events; writes nothing.
    Watch,
    /// `scaler exec`: load, create a cgroup under its own, write its limits.
    Exec,
    /// `scaler agent`: load, write the limits of the cgroups its policies select.
    Agent,
}

impl Role {
    fn command(self) -> &'static str {
        match self {
            Role::Watch => "scaler watch",
            Role::Exec => "scaler exec",
            Role::Agent => "scaler agent",
        }
    }

    /// Whether this role writes cgroup files after loading.
    pub fn writes_cgroups(self) -> bool {
        !matches!(self, Role::Watch)
    }
}

/// A missing privilege or a failed privilege operation.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Capabilities required to load the kernel programs are missing.
    #[error("{0}")]
    Missing(Box<MissingCapabilities>),
    /// No write access to the cgroup directory the command works in.
    #[error(
        "{command} needs write access to {}: {source}; run it as root (or as the owner of a \
         delegated cgroup subtree, or with CAP_DAC_OVERRIDE)",
        path.display()
    )]
    CgroupAccess {
        command: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `/proc/.../status` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A status line without the expected capability field.
    #[error("/proc status has no {field} line")]
    MissingField { field: &'static str },
    /// A capability mask that is not 1-16 hex digits.
    #[error("capability mask `{what}` is not a 64-bit hex number")]
    Parse { what: String },
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What is missing to load the programs, and how to grant it (the message of
/// [`PrivilegeError::Missing`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingCapabilities {
    /// The command that refused (`scaler agent`).
    pub command: &'static str,
    /// What loading needs, in words (`CAP_BPF and CAP_PERFMON`).
    pub needed: String,
    /// What the effective set lacks.
    pub missing: Vec<Capability>,
    /// The `setcap` list that grants everything scaler uses (`cap_bpf,cap_perfmon,...`).
    pub setcap: String,
    /// The same for systemd's `AmbientCapabilities=`.
    pub systemd: String,
    /// This executable's path.
    pub exe: String,
}

impl fmt::Display for MissingCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let missing: Vec<&str> = self.missing.iter().map(|c| c.name()).collect();
        write!(
            f,
            "{} needs {} to load its eBPF programs, and this process lacks {}; run it as root, \
             or grant the capabilities: `setcap {}+ep {}` (or systemd \
             `AmbientCapabilities={}`). See docs/security.md.",
            self.command,
            self.needed,
            missing.join(", "),
            self.setcap,
            self.exe,
            self.systemd
        )
    }
}

/// The capabilities needed to load the programs, given the kernel's highest capability number
/// (`None`: unknown, assume a 5.8+ kernel). Kernels before 5.8 have neither CAP_BPF nor
/// CAP_PERFMON and require CAP_SYS_ADMIN.
pub fn load_requirement(last_cap: Option<u8>) -> Vec<Capability> {
    match last_cap {
        Some(n) if n < Capability::Bpf.number() => vec![Capability::SysAdmin],
        _ => vec![Capability::Bpf, Capability::Perfmon],
    }
}

/// Which of `needed` the effective set lacks. CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON (the kernel's `bpf_capable()` and `perfmon_capable()` accept it).
pub fn missing_for_load(eff: CapSet, needed: &[Capability]) -> Vec<Capability> {
    if eff.has(Capability::SysAdmin) {
        return Vec::new();
    }
    needed.iter().copied().filter(|c| !eff.has(*c)).collect()
}

/// The capabilities kept after loading, for `role`: what later cgroup writes, SCHED_FIFO and
/// locked memory need. Only those the process has are kept, of course.
pub fn keep_after_load(role: Role, memory_locked: bool) -> CapSet {
    let mut keep = vec![Capability::SysNice];
    if role.writes_cgroups() {
        keep.push(Capability::DacOverride);
    }
    if memory_locked {
        keep.push(Capability::IpcLock);
    }
    CapSet::of(&keep)
}

/// Checks, before anything is loaded, that this process may do what `role` needs; the error
/// names what is missing and how to grant it. `cgroup_dir` is the directory `role` writes in
/// (the memory hierarchy root for the agent, the own cgroup for exec), if any.
pub fn check_startup(role: Role, cgroup_dir: Option<&Path>) -> Result<(), PrivilegeError> {
    let caps = ProcessCaps::current()?;
    let needed = load_requirement(kernel_last_cap());
    let missing = missing_for_load(caps.effective, &needed);
    if !missing.is_empty() {
        let lower = |c: &Capability| c.name().to_ascii_lowercase();
        let all: Vec<Capability> = needed
            .iter()
            .copied()
            .chain(role.writes_cgroups().then_some(Capability::DacOverride))
            .chain([Capability::SysNice, Capability::IpcLock])
            .collect();
        return Err(PrivilegeError::Missing(Box::new(MissingCapabilities {
            command: role.command(),
            needed: needed
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(" and "),
            missing,
            setcap: all.iter().map(lower).collect::<Vec<_>>().join(","),
            systemd: all.iter().map(|c| c.name()).collect::<Vec<_>>().join(" "),
            exe: std::env::current_exe()
                .map_or_else(|_| "scaler".into(), |p| p.display().to_string()),
        })));
    }
    if let Some(dir) = cgroup_dir.filter(|_| role.writes_cgroups()) {
        writable(dir).map_err(|source| PrivilegeError::CgroupAccess {
            command: role.command(),
            path: dir.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// `faccessat(dir, W_OK, AT_EACCESS)`: with the effective ids and capabilities.
fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The hardening step after the programs are loaded and attached: locks memory, then drops
/// every capability `role` no longer needs (with the bounding set for the agent and watch,
/// not for exec, whose command should run with the caller's privileges). Failures are logged,
/// not fatal: the agent works without them, only less hardened.
///
/// Capabilities are per thread, and a thread starts with the sets of the thread that creates
/// it: call this in the main thread before any other thread starts (signal waiter, servers,
/// engine), and the drop is process-wide. A thread already running would keep its sets: it is
/// named in a warning.
pub fn after_load(role: Role) {
    after_load_keeping(role, CapSet::EMPTY);
}

/// [`after_load`], also keeping `extra` (when the process has them): the agent keeps
/// `CAP_SYS_ADMIN` while a policy requires a `trusted.` opt-in attribute, which only that
/// capability can read.
pub fn after_load_keeping(role: Role, extra: CapSet) {
    let locked = match lock_memory() {
        Ok(()) => {
            tracing::debug!("memory locked (mlockall MCL_CURRENT|MCL_FUTURE)");
            true
        }
        Err(e) => {
            tracing::warn!(
                "{e}: the agent's memory can be reclaimed under pressure in its own cgroup \
                 (grant CAP_IPC_LOCK or raise RLIMIT_MEMLOCK)"
            );
            false
        }
    };
    let keep = CapSet(keep_after_load(role, locked).0 | extra.0);
    let running = other_threads();
    match drop_after_load(keep, role != Role::Exec) {
        Ok(d) => {
            tracing::debug!(
                before = ?d.before,
                after = ?d.after,
                bounding = d.bounding,
                "capabilities dropped before any other thread started"
            );
            if !running.is_empty() {
                tracing::warn!(
                    threads = ?running,
                    "some threads keep capabilities the agent no longer needs (started before \
                     the drop)"
                );
            }
        }
        Err(e) => tracing::warn!("dropping capabilities after load: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_depends_on_the_kernel() {
        assert_eq!(
            load_requirement(Some(40)),
            [Capability::Bpf, Capability::Perfmon]
        );
        assert_eq!(
            load_requirement(None),
            [Capability::Bpf, Capability::Perfmon]
        );
        assert_eq!(
            load_requirement(Some(37)),
            [Capability::SysAdmin],
            "before 5.8"
        );
    }

    #[test]
    fn missing_capabilities() {
        let need = load_requirement(Some(40));
        assert!(
            missing_for_load(CapSet::of(&[Capability::Bpf, Capability::Perfmon]), &need).is_empty()
        );
        assert_eq!(
            missing_for_load(CapSet::of(&[Capability::Bpf]), &need),
            [Capability::Perfmon]
        );
        assert_eq!(
            missing_for_load(CapSet::EMPTY, &need),
            [Capability::Bpf, Capability::Perfmon]
        );
        assert!(
            missing_for_load(CapSet::of(&[Capability::SysAdmin]), &need).is_empty(),
            "CAP_SYS_ADMIN implies both"
        );
        let old = load_requirement(Some(37));
        assert_eq!(
            missing_for_load(CapSet::of(&[Capability::Bpf]), &old),
            [Capability::SysAdmin]
        );
    }

    #[test]
    fn kept_sets() {
        let agent = keep_after_load(Role::Agent, true);
        assert_eq!(
            agent,
            CapSet::of(&[
                Capability::DacOverride,
                Capability::SysNice,
                Capability::IpcLock
            ])
        );
        assert!(
            !agent.has(Capability::Bpf)
                && !agent.has(Capability::Perfmon)
                && !agent.has(Capability::SysAdmin)
        );
        assert!(!keep_after_load(Role::Agent, false).has(Capability::IpcLock));
        assert!(
            !keep_after_load(Role::Watch, true).has(Capability::DacOverride),
            "watch writes no cgroup"
        );
    }

    #[test]
    fn missing_message_names_the_capability_and_the_fix() {
        let e = PrivilegeError::Missing(Box::new(MissingCapabilities {
            command: "scaler agent",
            needed: "CAP_BPF and CAP_PERFMON".into(),
            missing: vec![Capability::Perfmon],
            setcap: "cap_bpf,cap_perfmon".into(),
            systemd: "CAP_BPF CAP_PERFMON".into(),
            exe: "/usr/bin/scaler".into(),
        }));
        let m = e.to_string();
        assert!(m.contains("lacks CAP_PERFMON"), "{m}");
        assert!(
            m.contains("setcap cap_bpf,cap_perfmon+ep /usr/bin/scaler"),
            "{m}"
        );
        assert!(m.contains("AmbientCapabilities=CAP_BPF CAP_PERFMON"), "{m}");
    }
}
