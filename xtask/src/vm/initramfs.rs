//! The guest's initramfs: static busybox, the 9p modules and an init script that builds a
//! chroot-able view of the host (read-only `/` over 9p, an ext4 scratch disk on /tmp, tmpfs on /run, fresh
//! proc/sys/dev, cgroup v2 with `+memory +cpu`, bpffs, tracefs, the writable work dir bound at
//! its host path) and runs the work dir's `run.sh` in it.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::util;

/// Where Debian's busybox-static installs busybox.
const BUSYBOX: &str = "/bin/busybox";
/// The 9p mount tags the qemu command line uses.
pub const ROOT_TAG: &str = "hostroot";
/// See [`ROOT_TAG`].
pub const WORK_TAG: &str = "work";

/// The init script. `@WORK@` is the work dir's host path, `@EXPOSE@` the host paths under
/// /tmp that the guest needs to see through the tmpfs (binaries built under /tmp).
///
/// `pin` names tracepoints to keep enabled for the whole boot (see [`pinned_tracepoints`]);
/// with a non-empty list the BPF run-time statistics are kept enabled too.
pub fn init_script(work: &Path, expose_under_tmp: &[PathBuf], pin: &[String]) -> String {
    let expose: Vec<String> = expose_under_tmp
        .iter()
        .map(|p| shell_quote(&p.to_string_lossy()))
        .collect();
    let pin: Vec<String> = pin
        .iter()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .cloned()
        .collect();
    INIT.replace("@WORK@", &shell_quote(&work.to_string_lossy()))
        .replace("@EXPOSE@", &expose.join(" "))
        .replace("@PIN@", &pin.join(" "))
}

/// The tracepoints the agent's embedded eBPF object attaches to, from its section names
/// (`tp_btf/NAME`, `raw_tracepoint/NAME`, `tracepoint/CATEGORY/NAME`) found in the binary.
///
/// Under multi-threaded TCG the guest keeps these tracepoints enabled for the whole boot, in
/// two tracing instances that record nothing, and keeps the BPF statistics static key on: then
/// attaching and detaching the agent's programs while tests run adds and removes probes of
/// already-active tracepoints, which patches no kernel text. Multi-threaded TCG was seen to
/// execute a stale `int3` left by the kernel's live text patching (an oops in
/// `enqueue_entity`/`ttwu_do_activate` while the scheduler programs attached); measured with
/// ftrace in the guest, one attach/detach cycle of the agent's programs went from 68 text-poke
/// batches to 14 with the scheduler and memory tracepoints pinned, and the rest came from the
/// remaining tracepoints and the statistics key, now pinned as well.
pub fn pinned_tracepoints(agent: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for prefix in [&b"tp_btf/"[..], b"raw_tracepoint/", b"tracepoint/"] {
        let mut at = 0;
        while let Some(pos) = find(&agent[at..], prefix) {
            let start = at + pos + prefix.len();
            let len = agent[start..]
                .iter()
                .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'/')
                .count();
            let path = String::from_utf8_lossy(&agent[start..start + len]).into_owned();
            // `raw_tracepoint/NAME` also contains `tracepoint/NAME`: counted once.
            let preceded_by_raw = prefix == b"tracepoint/" && agent[..at + pos].ends_with(b"raw_");
            if let Some(name) = path.rsplit('/').next().filter(|n| !n.is_empty()) {
                if !preceded_by_raw {
                    names.push(name.to_string());
                }
            }
            at = start + len;
        }
    }
    names.sort();
    names.dedup();
    names
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /mnt/root /mnt/work /mnt/hosttmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
say() { echo "scaler-vm: $*"; }
die() { say "FATAL: $*"; reboot -f; }
say "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
for m in $(cat /modules.load); do
    insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done
# Loopback (tests talk to the agent's metrics endpoint on 127.0.0.1); no other network.
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up || say "cannot bring up lo"
hostname scaler-vm
WORK=@WORK@
R=/mnt/root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot $R || die "cannot mount the host root over 9p"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 work /mnt/work || die "cannot mount the work dir over 9p"
mount --bind $R/tmp /mnt/hosttmp
if mount -t ext4 /dev/vda $R/tmp; then
    chmod 1777 $R/tmp
else
    say "cannot mount the scratch disk: /tmp is a tmpfs (its pages cannot be reclaimed)"
    mount -t tmpfs -o mode=1777 tmpfs $R/tmp
fi
mount -t tmpfs tmpfs $R/run
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || die "cannot mount cgroup2"
echo "+memory +cpu" > $R/sys/fs/cgroup/cgroup.subtree_control || say "cannot enable +memory +cpu in the root cgroup"
say "cgroup2 controllers: $(cat $R/sys/fs/cgroup/cgroup.controllers); subtree_control: $(cat $R/sys/fs/cgroup/cgroup.subtree_control)"
mount -t bpf bpf $R/sys/fs/bpf || say "no bpffs"
mount -t tracefs tracefs $R/sys/kernel/tracing || say "no tracefs"
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
# Under multi-threaded TCG: keep the agent's tracepoints (and the BPF statistics key) enabled
# for the whole boot, so that attaching BPF programs while tests run patches no kernel text
# (see pinned_tracepoints in xtask/src/vm/initramfs.rs).
T=$R/sys/kernel/tracing
# Enabled from the kernel command line (trace_event=) in early boot; record nothing.
[ -e $T/tracing_on ] && echo 0 > $T/tracing_on
pinned=""
for tp in @PIN@; do
    for i in a b; do
        mkdir -p $T/instances/scaler-vm-pin-$i 2>/dev/null && echo 0 > $T/instances/scaler-vm-pin-$i/tracing_on
        for e in $T/instances/scaler-vm-pin-$i/events/*/$tp/enable; do
            [ -e "$e" ] && echo 1 > "$e" && [ $i = a ] && pinned="$pinned $tp"
        done
    done
done
if [ -n "@PIN@" ]; then
    echo 1 > $R/proc/sys/kernel/bpf_stats_enabled || say "cannot enable the BPF statistics"
    say "tracepoints kept enabled (no text patching while tests attach):$pinned"
fi
for p in @EXPOSE@; do
    mkdir -p "$R$p" && mount --bind "/mnt/hosttmp${p#/tmp}" "$R$p" || say "cannot expose $p"
done
mkdir -p "$R$WORK" 2>/dev/null
mount --bind /mnt/work "$R$WORK" || die "cannot bind the work dir at $WORK"
say "running the guest command"
chroot $R /bin/sh "$WORK/run.sh"
say "guest command finished (chroot status $?; the test status is in the work dir)"
sync
umount "$R$WORK" /mnt/work 2>/dev/null
reboot -f
"#;

/// Builds the initramfs (an uncompressed newc cpio) at `out`, staging in `stage`.
pub fn build(stage: &Path, out: &Path, modules: &[PathBuf], init: &str) -> Result<()> {
    let _ = fs::remove_dir_all(stage);
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "mnt/root",
        "mnt/work",
        "mnt/hosttmp",
        "lib/modules",
    ] {
        fs::create_dir_all(stage.join(dir))?;
    }
    let busybox =
        fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX} (package busybox-static)"))?;
    if !is_static_elf(&busybox) {
        bail!(
            "{BUSYBOX} is not statically linked: install busybox-static (`cargo xtask setup --vm`)"
        );
    }
    let bb = stage.join("bin/busybox");
    fs::write(&bb, busybox)?;
    fs::set_permissions(&bb, fs::Permissions::from_mode(0o755))?;
    let mut load = String::new();
    for module in modules {
        let name = module
            .file_stem()
            .context("module name")?
            .to_string_lossy()
            .into_owned();
        fs::copy(module, stage.join("lib/modules").join(format!("{name}.ko")))
            .with_context(|| format!("copying {}", module.display()))?;
        load.push_str(&name);
        load.push('\n');
    }
    fs::write(stage.join("modules.load"), load)?;
    let init_path = stage.join("init");
    fs::write(&init_path, init)?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
    // The kernel opens /dev/console before running init; without it init has no stdio until it
    // mounts devtmpfs. mknod needs root, which the VM tests need anyway.
    let _ = util::probe_output(
        Command::new("mknod")
            .arg(stage.join("dev/console"))
            .args(["c", "5", "1"]),
    );
    let script = format!(
        "cd {} && find . | cpio --quiet -o -H newc -R 0:0 > {}",
        shell_quote(&stage.to_string_lossy()),
        shell_quote(&out.to_string_lossy())
    );
    util::output(Command::new("sh").args(["-c", &script]))
        .context("building the initramfs with cpio")?;
    Ok(())
}

/// Whether an ELF file has no program interpreter (PT_INTERP), i.e. is statically linked.
pub fn is_static_elf(data: &[u8]) -> bool {
    // 64-bit little-endian ELF only (x86_64).
    if data.len() < 64 || !data.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let Some(phoff) = data
        .get(32..40)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    else {
        return false;
    };
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let off = phoff + i * phentsize;
        data.get(off..off + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != 3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_substitutes_paths() {
        let s = init_script(
            Path::new("/root/.cache/scaler-vm/runs/6.12-1"),
            &[PathBuf::from("/tmp/t x")],
            &["sched_switch".into(), "bad name;".into()],
        );
        assert!(s.contains("WORK='/root/.cache/scaler-vm/runs/6.12-1'"));
        assert!(s.contains("for p in '/tmp/t x'; do"));
        assert!(s.contains("for tp in sched_switch; do"));
        assert!(!s.contains('@'));
    }

    #[test]
    fn finds_the_tracepoints_of_an_embedded_object() {
        let blob = b"\0tp_btf/sched_switch\0.text\0raw_tracepoint/inject_x\0tracepoint/sched/sched_wakeup\0tp_btf/sched_switch\0tp_btf/\0";
        assert_eq!(
            pinned_tracepoints(blob),
            ["inject_x", "sched_switch", "sched_wakeup"]
        );
    }

    #[test]
    fn detects_dynamic_elf() {
        // The test binary itself is dynamically linked (glibc).
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"not an elf"));
    }
}
