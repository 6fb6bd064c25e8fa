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
//! | `CAP_SYS_ADMIN`     | both of the above on kernels older than 5.8 (no CAP_BPF there)      | dropped    |
//! | `CAP_DAC_OVERRIDE`  | writing limits of cgroups not owned by scaler's uid (delegated ones) | kept       |
//! | `CAP_SYS_NICE`      | SCHED_FIFO for the engine thread (optional)                         | kept       |
//! | `CAP_IPC_LOCK`      | `mlockall` beyond RLIMIT_MEMLOCK (optional; needed for every later   | kept       |
//! |                     | mapping once `MCL_FUTURE` is set)                                    |            |
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

use std::{fmt, path::Path};

/// A Linux capability (the ones scaler cares about, by their kernel numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Capability {
    /// `CAP_DAC_OVERRIDE` (1).
    DacOverride = 1,
    /// `CAP_SETPCAP` (8): needed to drop capabilities from the bounding set.
    SetPcap = 8,
    /// `CAP_IPC_LOCK` (14).
    IpcLock = 14,
    /// `CAP_SYS_ADMIN` (21).
    SysAdmin = 21,
    /// `CAP_SYS_NICE` (23).
    SysNice = 23,
    /// `CAP_SYS_RESOURCE` (24).
    SysResource = 24,
    /// `CAP_PERFMON` (38, Linux 5.8+).
    Perfmon = 38,
    /// `CAP_BPF` (39, Linux 5.8+).
    Bpf = 39,
}

impl Capability {
    /// The kernel's capability number.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The name as `capsh`, `setcap` and systemd write it, upper case (`CAP_BPF`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::DacOverride => "CAP_DAC_OVERRIDE",
            Self::SetPcap => "CAP_SETPCAP",
            Self::IpcLock => "CAP_IPC_LOCK",
            Self::SysAdmin => "CAP_SYS_ADMIN",
            Self::SysNice => "CAP_SYS_NICE",
            Self::SysResource => "CAP_SYS_RESOURCE",
            Self::Perfmon => "CAP_PERFMON",
            Self::Bpf => "CAP_BPF",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of capabilities, as the kernel's 64-bit mask (`CapEff` and friends).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// The empty set.
    pub const EMPTY: CapSet = CapSet(0);

    /// A set of the given capabilities.
    pub fn of(caps: &[Capability]) -> Self {
        CapSet(caps.iter().fold(0, |m, c| m | (1u64 << c.number())))
    }

    /// Parses the hex mask of a `/proc/<pid>/status` line (`000001fffeffffff`).
    pub fn parse_hex(s: &str) -> Result<Self, PrivilegeError> {
        let s = s.trim();
        if s.is_empty() || s.len() > 16 {
            return Err(PrivilegeError::Parse { what: s.to_owned() });
        }
        u64::from_str_radix(s, 16)
            .map(CapSet)
            .map_err(|_| PrivilegeError::Parse { what: s.to_owned() })
    }

    /// Whether `cap` is in the set.
    pub fn has(self, cap: Capability) -> bool {
        self.0 & (1u64 << cap.number()) != 0
    }

    /// Whether the raw capability number `n` is in the set.
    pub fn has_number(self, n: u8) -> bool {
        n < 64 && self.0 & (1u64 << n) != 0
    }

    /// The intersection.
    pub fn and(self, o: CapSet) -> CapSet {
        CapSet(self.0 & o.0)
    }

    /// Whether every capability of `o` is in `self`.
    pub fn contains(self, o: CapSet) -> bool {
        self.0 & o.0 == o.0
    }
}

impl fmt::Debug for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapSet({:#018x})", self.0)
    }
}

/// The capability sets of a thread, from its `/proc/.../status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCaps {
    /// `CapEff`.
    pub effective: CapSet,
    /// `CapPrm`.
    pub permitted: CapSet,
    /// `CapBnd`.
    pub bounding: CapSet,
    /// `CapAmb` (0 on kernels without ambient capabilities).
    pub ambient: CapSet,
}

impl ProcessCaps {
    /// Parses the `Cap*` lines of a `/proc/<pid>/status` text. `CapEff`, `CapPrm` and `CapBnd`
    /// are required; `CapAmb` is optional (kernels before 4.3 have none).
    pub fn parse_status(status: &str) -> Result<Self, PrivilegeError> {
        let field = |name: &str| -> Option<&str> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
        };
        let required = |name: &'static str| -> Result<CapSet, PrivilegeError> {
            CapSet::parse_hex(field(name).ok_or(PrivilegeError::MissingField { field: name })?)
        };
        Ok(Self {
            effective: required("CapEff")?,
            permitted: required("CapPrm")?,
            bounding: required("CapBnd")?,
            ambient: field("CapAmb")
                .map(CapSet::parse_hex)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// The calling thread's sets (`/proc/thread-self/status`).
    pub fn current() -> Result<Self, PrivilegeError> {
        let path = "/proc/thread-self/status";
        let text = std::fs::read_to_string(path).map_err(|source| PrivilegeError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse_status(&text)
    }
}

/// The highest capability number the running kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn kernel_last_cap() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()?
        .trim()
        .parse()
        .ok()
}

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

/// Locks the process's memory, current and future (`mlockall(MCL_CURRENT | MCL_FUTURE)`), so
/// that memory pressure in the agent's own cgroup cannot page out the code and data of the
/// hot path. Needs CAP_IPC_LOCK unless RLIMIT_MEMLOCK covers the whole process. Not inherited
/// by children (fork drops memory locks), so `scaler exec`'s command is unaffected.
pub fn lock_memory() -> Result<(), PrivilegeError> {
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Sys {
            call: "mlockall(MCL_CURRENT|MCL_FUTURE)",
            source: std::io::Error::last_os_error(),
        })
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> Result<[CapData; 2], PrivilegeError> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: header and a 2-element data array, as the v3 ABI requires.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut CapHeader, d.as_mut_ptr()) };
    if r != 0 {
        return Err(PrivilegeError::Sys {
            call: "capget",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(d)
}

fn capset(d: &[CapData; 2]) -> Result<(), PrivilegeError> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: header and a 2-element data array, as the v3 ABI requires.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
    if r != 0 {
        return Err(PrivilegeError::Sys {
            call: "capset",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Splits a 64-bit mask into the v3 ABI's two 32-bit words.
fn words(m: u64) -> [u32; 2] {
    [m as u32, (m >> 32) as u32]
}

/// What [`drop_after_load`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The effective set before.
    pub before: CapSet,
    /// The effective (= permitted) set after.
    pub after: CapSet,
    /// Whether the bounding set was reduced too (so no later exec can regain the rest).
    pub bounding: bool,
}

/// Drops every capability of the calling thread that is not in `keep`: effective, permitted,
/// inheritable and ambient sets, and, with `bounding`, the bounding set too (needs
/// CAP_SETPCAP; without it the bounding set is left as it is and `Dropped::bounding` is
/// false). Threads started afterwards inherit the reduced sets. Do not pass `bounding` when
/// the process will exec a command that should run with the caller's privileges
/// (`scaler exec`): a root execve gets its capabilities from the bounding set.
pub fn drop_after_load(keep: CapSet, bounding: bool) -> Result<Dropped, PrivilegeError> {
    let before = ProcessCaps::current()?;
    let keep = keep.and(before.permitted);
    let mut bounding_done = false;
    if bounding && before.effective.has(Capability::SetPcap) {
        let last = kernel_last_cap().unwrap_or(40).min(63);
        for n in 0..=last {
            if keep.has_number(n) || !before.bounding.has_number(n) {
                continue;
            }
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(n), 0, 0, 0) } != 0 {
                return Err(PrivilegeError::Sys {
                    call: "prctl(PR_CAPBSET_DROP)",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        bounding_done = true;
    }
    // Ambient capabilities would survive an exec: clear them (EINVAL on kernels without them).
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let _ = capget()?;
    let w = words(keep.0);
    let data = [
        CapData {
            effective: w[0],
            permitted: w[0],
            inheritable: 0,
        },
        CapData {
            effective: w[1],
            permitted: w[1],
            inheritable: 0,
        },
    ];
    capset(&data)?;
    let after = ProcessCaps::current()?;
    Ok(Dropped {
        before: before.effective,
        after: after.effective,
        bounding: bounding_done,
    })
}

/// Threads of this process other than the calling one, by tid and name: none when the caller
/// is the only thread, as [`after_load`] expects.
pub fn other_threads() -> Vec<(u32, String)> {
    // SAFETY: no preconditions.
    let me = unsafe { libc::gettid() } as u32;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            (tid != me).then(|| (tid, name.trim().to_owned()))
        })
        .collect()
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
    let keep = keep_after_load(role, locked);
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

    const ROOT_STATUS: &str = "Name:\tscaler\nUmask:\t0022\nState:\tR (running)\n\
        CapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n\
        CapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n";

    #[test]
    fn parses_root_status_without_cap_sys_resource() {
        let c = ProcessCaps::parse_status(ROOT_STATUS).unwrap();
        assert_eq!(c.effective, CapSet(0x1ff_feff_ffff));
        assert_eq!(c.permitted, c.effective);
        assert_eq!(c.ambient, CapSet::EMPTY);
        for cap in [
            Capability::Bpf,
            Capability::Perfmon,
            Capability::SysAdmin,
            Capability::IpcLock,
        ] {
            assert!(c.effective.has(cap), "{cap}");
        }
        assert!(
            !c.effective.has(Capability::SysResource),
            "bit 24 is clear in fffeffffff"
        );
    }

    #[test]
    fn hex_masks() {
        assert_eq!(
            CapSet::parse_hex("0000000000000000").unwrap(),
            CapSet::EMPTY
        );
        assert_eq!(
            CapSet::parse_hex("  c000000000\n").unwrap(),
            CapSet::of(&[Capability::Bpf, Capability::Perfmon])
        );
        assert_eq!(
            CapSet::parse_hex("ffffffffffffffff").unwrap(),
            CapSet(u64::MAX)
        );
        for bad in ["", "xyz", "0x10", "1ffffffffffffffff", "-1"] {
            let err = CapSet::parse_hex(bad).unwrap_err();
            assert!(
                matches!(err, PrivilegeError::Parse { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn missing_lines_are_named_and_ambient_is_optional() {
        let err = ProcessCaps::parse_status("CapPrm:\t0\nCapBnd:\t0\n").unwrap_err();
        assert_eq!(err.to_string(), "/proc status has no CapEff line");
        let old = ProcessCaps::parse_status("CapEff:\t1\nCapPrm:\t1\nCapBnd:\t3\n").unwrap();
        assert_eq!(old.ambient, CapSet::EMPTY);
        assert_eq!(old.bounding, CapSet(3));
        let err = ProcessCaps::parse_status("CapEff:\tzz\nCapPrm:\t0\nCapBnd:\t0\n").unwrap_err();
        assert!(err.to_string().contains("`zz`"), "{err}");
    }

    #[test]
    fn field_names_must_match_exactly() {
        // "CapEffX:" is not "CapEff:".
        let err = ProcessCaps::parse_status("CapEffX:\t1\nCapPrm:\t0\nCapBnd:\t0\n").unwrap_err();
        assert!(matches!(
            err,
            PrivilegeError::MissingField { field: "CapEff" }
        ));
    }

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

    #[test]
    fn words_split_the_mask() {
        assert_eq!(words(0x1ff_feff_ffff), [0xfeff_ffff, 0x1ff]);
        assert_eq!(words(CapSet::of(&[Capability::Bpf]).0), [0, 1 << 7]);
    }

    #[test]
    fn current_thread_status_parses() {
        // Whatever we run as, our own status has the three required lines.
        let c = ProcessCaps::current().unwrap();
        assert!(c.permitted.contains(c.effective));
    }

    #[test]
    fn other_threads_are_every_thread_but_the_caller() {
        // SAFETY: no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        let (tid, others) = std::thread::spawn(|| {
            // SAFETY: as above.
            (unsafe { libc::gettid() } as u32, other_threads())
        })
        .join()
        .unwrap();
        assert!(others.iter().any(|(t, _)| *t == me), "{others:?}");
        assert!(!others.iter().any(|(t, _)| *t == tid), "{others:?}");
    }

    /// The drop is made in one thread, before the threads it starts: those (one blocked in a
    /// read, one in sigwait, like the agent's signal thread) have the kept set only, and the
    /// reduced bounding set, read from inside and from `/proc` as an outside observer would.
    /// It runs in a thread of its own so that the rest of the test process keeps its
    /// capabilities (they are per thread). Needs CAP_BPF to begin with (root); skipped
    /// otherwise.
    #[test]
    fn threads_started_after_the_drop_inherit_the_kept_set() {
        let start = ProcessCaps::current().unwrap();
        if !start.effective.has(Capability::Bpf) {
            eprintln!("skipping: no CAP_BPF to drop");
            return;
        }
        let keep = CapSet::of(&[Capability::SysNice, Capability::DacOverride]);
        let bounding = start.effective.has(Capability::SetPcap);
        let (d, seen) = std::thread::spawn(move || {
            // SIGUSR1 is for the waiter's sigwait: blocked before it starts (inherited).
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(nix::sys::signal::Signal::SIGUSR1);
            set.thread_block().unwrap();
            let d = drop_after_load(keep, bounding).unwrap();
            let (r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
            let (tids, started) = std::sync::mpsc::channel();
            let tx = tids.clone();
            let reader = std::thread::spawn(move || {
                use std::io::Read;
                // SAFETY: no preconditions.
                tx.send(unsafe { libc::gettid() }).unwrap();
                let _ = (&r).read(&mut [0u8; 1]);
                ProcessCaps::current().unwrap()
            });
            let waiter = std::thread::spawn(move || {
                // SAFETY: no preconditions.
                tids.send(unsafe { libc::gettid() }).unwrap();
                let _ = set.wait();
                ProcessCaps::current().unwrap()
            });
            // While they block (or are about to): their sets as /proc shows them.
            let mut seen = Vec::new();
            for tid in [started.recv().unwrap(), started.recv().unwrap()] {
                let text =
                    std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
                seen.push((
                    format!("thread {tid}"),
                    ProcessCaps::parse_status(&text).unwrap(),
                ));
            }
            use std::io::Write;
            w.write_all(b"x").unwrap();
            {
                use std::os::unix::thread::JoinHandleExt;
                // SAFETY: the thread is alive (joined below).
                let r = unsafe { libc::pthread_kill(waiter.as_pthread_t(), libc::SIGUSR1) };
                assert_eq!(r, 0);
            }
            seen.push(("reader".into(), reader.join().unwrap()));
            seen.push(("waiter".into(), waiter.join().unwrap()));
            seen.push(("dropping thread".into(), ProcessCaps::current().unwrap()));
            (d, seen)
        })
        .join()
        .unwrap();
        assert_eq!(d.after, keep.and(start.permitted));
        assert_eq!(d.bounding, bounding);
        assert_eq!(seen.len(), 5);
        for (who, c) in &seen {
            assert!(keep.contains(c.effective), "{who}: {c:?}");
            assert!(keep.contains(c.permitted), "{who}: {c:?}");
            assert!(!c.effective.has(Capability::Bpf), "{who}: {c:?}");
            if bounding {
                assert!(!c.bounding.has(Capability::Bpf), "{who}: {c:?}");
            }
        }
        // This thread, not started from the dropping one, keeps its sets.
        assert_eq!(ProcessCaps::current().unwrap(), start);
    }
}
