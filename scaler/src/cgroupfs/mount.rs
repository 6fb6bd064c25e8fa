//! Parsing of `/proc/<pid>/mountinfo` and `/proc/<pid>/cgroup`, and hierarchy discovery.

use std::path::{Path, PathBuf};

use super::{normalize_cgroup_path, CgroupError, CgroupVersion, Controller, Hierarchy};

/// One line of `/proc/<pid>/mountinfo` (the fields the scaler uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 4: the path within the mounted filesystem that is the mount's root.
    pub root: String,
    /// Field 5: the mount point (octal escapes decoded).
    pub mount_point: PathBuf,
    /// The filesystem type after the `-` separator (`cgroup`, `cgroup2`, ...).
    pub fstype: String,
    /// The per-superblock options (last field), e.g. `rw,memory` or `rw,cpu,cpuacct`.
    pub super_options: String,
}

impl MountEntry {
    /// True when the comma-separated super options contain exactly `option`.
    pub fn has_super_option(&self, option: &str) -> bool {
        self.super_options.split(',').any(|o| o == option)
    }
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> impl Iterator<Item = MountEntry> + '_ {
    text.lines().filter_map(parse_mountinfo_line)
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    // id parent major:minor root mount_point options [optional...] - fstype source super_options
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    if fields.len() < sep + 4 {
        return None;
    }
    Some(MountEntry {
        root: unescape(fields[3]),
        mount_point: PathBuf::from(unescape(fields[4])),
        fstype: fields[sep + 1].to_string(),
        super_options: fields[sep + 3].to_string(),
    })
}

/// Decodes the `\NNN` octal escapes the kernel uses for space, tab, newline and backslash.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controller-list:path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcCgroupLine<'a> {
    /// The hierarchy id (0 for the v2 unified hierarchy).
    pub hierarchy_id: u32,
    /// Comma-separated controllers (`memory`, `cpu,cpuacct`, `name=systemd`; empty for v2).
    pub controllers: &'a str,
    /// The cgroup path relative to the hierarchy root (as the kernel prints it).
    pub path: &'a str,
}

/// Parses `/proc/<pid>/cgroup` text; malformed lines are skipped.
pub fn parse_proc_cgroup(text: &str) -> impl Iterator<Item = ProcCgroupLine<'_>> + '_ {
    text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let hierarchy_id = parts.next()?.parse().ok()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        Some(ProcCgroupLine {
            hierarchy_id,
            controllers,
            path,
        })
    })
}

/// Joins an absolute mount point onto the root prefix.
fn under_root(root: &Path, mount_point: &Path) -> PathBuf {
    match mount_point.strip_prefix("/") {
        Ok(rel) if rel.as_os_str().is_empty() => root.to_path_buf(),
        Ok(rel) => root.join(rel),
        Err(_) => root.join(mount_point),
    }
}

/// Finds the hierarchy carrying `controller`: a v1 mount with the controller in its super
/// options, else the first cgroup2 mount whose `cgroup.controllers` lists it. When the same
/// hierarchy is mounted several times, a mount of the whole hierarchy (root `/`) is preferred.
pub(super) fn find_hierarchy(
    mountinfo: &str,
    root: &Path,
    controller: Controller,
    mountinfo_path: &Path,
) -> Result<Hierarchy, CgroupError> {
    let entries: Vec<MountEntry> = parse_mountinfo(mountinfo).collect();
    let make = |e: &MountEntry, version| Hierarchy {
        controller,
        version,
        mount: under_root(root, &e.mount_point),
        mount_root: normalize_cgroup_path(&e.root),
        root: root.to_path_buf(),
    };
    let v1: Vec<&MountEntry> = entries
        .iter()
        .filter(|e| e.fstype == "cgroup" && e.has_super_option(controller.name()))
        .collect();
    if let Some(e) = v1.iter().find(|e| e.root == "/").or(v1.first()) {
        return Ok(make(e, CgroupVersion::V1));
    }
    let mut v2: Vec<&MountEntry> = entries.iter().filter(|e| e.fstype == "cgroup2").collect();
    // Whole-hierarchy mounts first; the sort is stable.
    v2.sort_by_key(|e| e.root != "/");
    for e in v2 {
        let h = make(e, CgroupVersion::V2);
        let file = h.mount.join("cgroup.controllers");
        let Ok(listed) = std::fs::read_to_string(&file) else {
            continue;
        };
        if listed.split_whitespace().any(|c| c == controller.name()) {
            return Ok(h);
        }
    }
    Err(CgroupError::ControllerNotMounted {
        controller,
        mountinfo: mountinfo_path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// This development machine: v1 memory and cpu, cgroup2 at /sys/fs/cgroup/unified with no
    /// controllers (verbatim apart from the first lines).
    pub(crate) const HYBRID: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd v1 host: cpu and cpuacct co-mounted, with optional fields before the `-`.
    const V1_ONLY: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
28 26 0:26 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,name=systemd
31 26 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
32 26 0:30 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpuset
35 26 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
";

    /// Pure cgroup v2 (the test VMs).
    const V2_ONLY: &str = "\
20 1 0:19 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 20 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn fake_root(controllers_at: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (mount, controllers) in controllers_at {
            let d = dir.path().join(mount.trim_start_matches('/'));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cgroup.controllers"), controllers).unwrap();
        }
        dir
    }

    #[test]
    fn parses_fields_and_optional_fields() {
        let e: Vec<_> = parse_mountinfo(V1_ONLY).collect();
        assert_eq!(e.len(), 6);
        assert_eq!(
            e[3].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(e[3].fstype, "cgroup");
        assert_eq!(e[3].super_options, "rw,cpu,cpuacct");
        assert!(e[3].has_super_option("cpu"));
        assert!(!e[4].has_super_option("cpu"), "cpuset is not cpu");
        assert_eq!(e[3].root, "/");
    }

    #[test]
    fn decodes_octal_escapes_and_skips_garbage() {
        let text = "1 2 0:1 / /mnt/with\\040space rw - tmpfs none rw\ngarbage line\n";
        let e: Vec<_> = parse_mountinfo(text).collect();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn hybrid_host_finds_v1_memory_and_cpu() {
        let root = fake_root(&[("/sys/fs/cgroup/unified", "hugetlb\n")]);
        let m = find_hierarchy(HYBRID, root.path(), Controller::Memory, Path::new("x")).unwrap();
        assert_eq!(m.version, CgroupVersion::V1);
        assert_eq!(m.mount, root.path().join("sys/fs/cgroup/memory"));
        assert_eq!(m.mount_root, "/");
        let c = find_hierarchy(HYBRID, root.path(), Controller::Cpu, Path::new("x")).unwrap();
        assert_eq!(c.version, CgroupVersion::V1);
        assert_eq!(c.mount, root.path().join("sys/fs/cgroup/cpu"));
        assert!(!m.same_tree(&c));
    }

    #[test]
    fn v1_only_host_finds_comounted_cpu() {
        let root = fake_root(&[]);
        let c = find_hierarchy(V1_ONLY, root.path(), Controller::Cpu, Path::new("x")).unwrap();
        assert_eq!(c.mount, root.path().join("sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(c.version, CgroupVersion::V1);
    }

    #[test]
    fn v2_with_controllers() {
        let root = fake_root(&[(
            "/sys/fs/cgroup",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )]);
        let m = find_hierarchy(V2_ONLY, root.path(), Controller::Memory, Path::new("x")).unwrap();
        let c = find_hierarchy(V2_ONLY, root.path(), Controller::Cpu, Path::new("x")).unwrap();
        assert_eq!(m.version, CgroupVersion::V2);
        assert_eq!(m.mount, root.path().join("sys/fs/cgroup"));
        assert!(m.same_tree(&c));
    }

    #[test]
    fn v2_without_the_controller_is_a_clear_error() {
        let root = fake_root(&[("/sys/fs/cgroup", "cpuset io pids\n")]);
        let err = find_hierarchy(
            V2_ONLY,
            root.path(),
            Controller::Memory,
            Path::new("/proc/self/mountinfo"),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            CgroupError::ControllerNotMounted {
                controller: Controller::Memory,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains("no memory controller"), "{msg}");
        assert!(msg.contains("cgroup.controllers"), "{msg}");
        // "cpuset" must not satisfy "cpu".
        assert!(find_hierarchy(V2_ONLY, root.path(), Controller::Cpu, Path::new("x")).is_err());
    }

    #[test]
    fn hybrid_with_empty_unified_has_no_v2_fallback() {
        // Only the empty cgroup2 mount and no v1 memory mount: an error, not a wrong hierarchy.
        let root = fake_root(&[("/sys/fs/cgroup/unified", "")]);
        let text = HYBRID.replace("rw,memory", "rw,blkio");
        assert!(find_hierarchy(&text, root.path(), Controller::Memory, Path::new("x")).is_err());
    }

    #[test]
    fn proc_cgroup_lines() {
        let text = "9:name=systemd:/\n4:memory:/process_api/09b4\n1:cpu:/\n0::/\nbad\n5:x:/a:b\n";
        let lines: Vec<_> = parse_proc_cgroup(text).collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1].controllers, "memory");
        assert_eq!(lines[1].path, "/process_api/09b4");
        assert_eq!(lines[3].hierarchy_id, 0);
        assert_eq!(lines[3].controllers, "");
        assert_eq!(lines[4].path, "/a:b", "paths may contain ':'");
    }
}
