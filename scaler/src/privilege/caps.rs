//! Capabilities and capability sets, and a thread's sets as `/proc/<pid>/status` shows them.

use std::fmt;

use super::PrivilegeError;

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
    fn current_thread_status_parses() {
        // Whatever we run as, our own status has the three required lines.
        let c = ProcessCaps::current().unwrap();
        assert!(c.permitted.contains(c.effective));
    }
}
