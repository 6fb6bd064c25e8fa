//! Booting a prepared kernel under qemu (TCG) with the initramfs and the two 9p shares, with a
//! timeout, streaming the console and collecting the guest command's status and output.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{initramfs, kernel::Prepared, GuestCommand, VmConfig, VmResult};
use crate::{report::Counts, util};

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The chroot-side script: runs the guest command, tees each test binary's output into the work
/// dir, and writes the overall status to `exit-status`.
pub fn run_script(command: &GuestCommand, work: &Path, kernel: &str, config: &VmConfig) -> String {
    let w = quote(&work.to_string_lossy());
    let tcg = if config.single_thread {
        "single"
    } else {
        "multi"
    };
    let mut s = format!(
        "#!/bin/sh\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         export HOME=/tmp RUST_BACKTRACE=1 SCALER_VM_KERNEL={kernel} SCALER_VM_TCG={tcg}\n\
         export W={w}\nstatus=0\n"
    );
    for (key, value) in forwarded_env() {
        s.push_str(&format!("export {key}={}\n", quote(&value)));
    }
    match command {
        GuestCommand::Shell(cmd) => {
            s.push_str(&format!(
                "{{ /bin/sh -c {}; echo $? > \"$W/rc.0\"; }} 2>&1 | tee \"$W/output.0\"\n\
                 status=$(cat \"$W/rc.0\" 2>/dev/null || echo 125)\n",
                quote(cmd)
            ));
        }
        GuestCommand::Tests {
            executables,
            agent,
            filter,
        } => {
            let root = util::workspace_root().join("tests");
            s.push_str(&format!(
                "export SCALER_BIN={}\ncd {} || cd /\n",
                quote(&agent.to_string_lossy()),
                quote(&root.to_string_lossy())
            ));
            let filter: Vec<String> = filter.iter().map(|f| quote(f)).collect();
            for (i, exe) in executables.iter().enumerate() {
                let exe = quote(&exe.to_string_lossy());
                s.push_str(&format!(
                    "echo \"==== {exe}\"\n\
                     {{ {exe} --test-threads=1 {f}; echo $? > \"$W/rc.{i}\"; }} 2>&1 | tee \"$W/output.{i}\"\n\
                     rc=$(cat \"$W/rc.{i}\" 2>/dev/null || echo 125)\n\
                     [ \"$rc\" = 0 ] || {{ echo \"==== {exe} exited with $rc\"; status=1; }}\n",
                    f = filter.join(" ")
                ));
            }
        }
    }
    s.push_str("echo \"$status\" > \"$W/exit-status\"\nsync\n");
    s
}

/// Host environment variables the guest command sees too: RUST_LOG, CI, and the project's own
/// `SCALER_*` settings (but not the VM's own knobs).
fn forwarded_env() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k == "RUST_LOG"
                || k == "CI"
                || (k.starts_with("SCALER_") && !k.starts_with("SCALER_VM_") && k != "SCALER_BIN")
        })
        .filter(|(k, _)| k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .collect();
    vars.sort();
    vars
}

/// Paths under /tmp that the guest must see (the tmpfs on /tmp hides the host's /tmp).
fn under_tmp(command: &GuestCommand, work: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let GuestCommand::Tests {
        executables, agent, ..
    } = command
    {
        for p in executables.iter().chain(std::iter::once(agent)) {
            if let Some(dir) = p.parent() {
                paths.push(dir.to_path_buf());
            }
        }
    }
    let root = util::workspace_root();
    paths.push(root);
    paths.retain(|p| p.starts_with("/tmp") && !work.starts_with(p));
    paths.sort();
    paths.dedup();
    paths
}

/// Whether a console line is the start of a guest kernel oops or BUG report.
fn is_kernel_oops(line: &str) -> bool {
    // Kernel messages carry a `[ seconds.micros]` stamp; test output quoting them does not start
    // with one.
    let Some(msg) = line
        .trim_start()
        .strip_prefix('[')
        .and_then(|l| l.split_once(']'))
        .filter(|(stamp, _)| {
            stamp.trim().split_once('.').is_some_and(|(secs, micros)| {
                !secs.is_empty()
                    && secs.bytes().all(|b| b.is_ascii_digit())
                    && micros.len() == 6
                    && micros.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .map(|(_, m)| m.trim_start())
    else {
        return false;
    };
    [
        "Oops:",
        "BUG:",
        "kernel BUG at",
        "general protection fault",
        "int3: 0000",
    ]
    .iter()
    .any(|p| msg.starts_with(p))
        || msg.contains("] int3")
}

/// A sparse raw disk with an empty ext4 file system, the guest's /tmp: tmpfs pages cannot be
/// reclaimed without swap, so tests that need reclaimable page cache need a real disk. No
/// metadata checksums, so that older kernels need no crc32c driver to mount it.
fn make_scratch_disk(path: &Path, size_mib: u32) -> Result<()> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(u64::from(size_mib) << 20)?;
    drop(file);
    util::output(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-O",
                "^metadata_csum,^has_journal",
                "-L",
                "scaler-tmp",
            ])
            .arg(path),
    )
    .context("mkfs.ext4 (package e2fsprogs) for the guest's scratch disk")?;
    Ok(())
}

/// Boots `kernel` with `command` and waits for it (at most `config.timeout`).
pub fn run(
    kernel: &Prepared,
    command: &GuestCommand,
    cache: &Path,
    config: &VmConfig,
) -> Result<VmResult> {
    let runs = cache.join("runs");
    let work = runs.join(format!("{}-{}", kernel.name, std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let work = work.canonicalize()?;
    fs::write(
        work.join("run.sh"),
        run_script(command, &work, &kernel.name, config),
    )?;

    let boot = runs.join(format!("{}-{}-boot", kernel.name, std::process::id()));
    fs::create_dir_all(&boot)?;
    let initrd = boot.join("initramfs.cpio");
    // The agent whose tracepoints stay enabled under multi-threaded TCG: the one under test, or
    // for a shell command the one named by SCALER_BIN on the host, if any.
    let pin_from = match command {
        GuestCommand::Tests { agent, .. } => Some(agent.clone()),
        GuestCommand::Shell(_) => std::env::var_os("SCALER_BIN").map(PathBuf::from),
    };
    let pin = match pin_from.filter(|_| !config.single_thread) {
        Some(agent) => {
            let bytes = fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
            initramfs::pinned_tracepoints(&bytes)
        }
        None => Vec::new(),
    };
    let init = initramfs::init_script(&work, &under_tmp(command, &work), &pin);
    initramfs::build(&boot.join("stage"), &initrd, &kernel.modules, &init)?;
    let scratch = boot.join("scratch.img");
    make_scratch_disk(&scratch, config.disk_mib)?;

    let logs = cache.join("logs");
    fs::create_dir_all(&logs)?;
    let console_log = logs.join(format!("console-{}.log", kernel.name));
    let mut log = fs::File::create(&console_log)?;

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        if config.single_thread {
            "tcg,thread=single"
        } else {
            "tcg,thread=multi"
        },
        "-cpu",
        "max",
        "-display",
        "none",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .args([
        "-m",
        &config.memory_mib.to_string(),
        "-smp",
        &config.cpus.to_string(),
    ])
    .arg("-kernel")
    .arg(&kernel.vmlinux)
    .arg("-initrd")
    .arg(&initrd)
    .args([
        "-append",
        format!(
            "console=ttyS0 panic=-1 cgroup_no_v1=all quiet {}{}",
            // The pinned tracepoints are enabled by the kernel itself in early boot, while
            // only the boot CPU runs (text patched with no other vCPU to race), so that the
            // init script's pinning below finds them on and patches nothing either.
            if pin.is_empty() {
                String::new()
            } else {
                format!("trace_event={} trace_buf_size=4K ", pin.join(","))
            },
            config.append
        )
        .trim(),
    ])
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio,cache=unsafe",
        scratch.display()
    ))
    .args([
        "-fsdev",
        "local,readonly=on,id=root,path=/,security_model=none,multidevs=remap",
    ])
    .args([
        "-device",
        &format!("virtio-9p-pci,fsdev=root,mount_tag={}", initramfs::ROOT_TAG),
    ])
    .args([
        "-fsdev",
        &format!("local,id=work,path={},security_model=none", work.display()),
    ])
    .args([
        "-device",
        &format!("virtio-9p-pci,fsdev=work,mount_tag={}", initramfs::WORK_TAG),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    println!(
        "vm: booting {} ({}) under {} TCG, timeout {}s; console log {}",
        kernel.name,
        kernel.package,
        if config.single_thread {
            "single-threaded"
        } else {
            "multi-threaded"
        },
        config.timeout.as_secs(),
        console_log.display()
    );
    eprintln!("+ {}", util::display(&cmd));
    // If xtask dies (killed, Ctrl-C), the VM must not outlive it.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
    let lines = util::line_reader(child.stdout.take().context("qemu stdout")?);
    let errs = util::line_reader(child.stderr.take().context("qemu stderr")?);
    let mut problem = None;
    let mut oops: Option<String> = None;
    loop {
        let left = config.timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            problem = Some(format!(
                "timed out after {}s; killed qemu (pid {})",
                config.timeout.as_secs(),
                child.id()
            ));
            let _ = child.kill();
            break;
        }
        match lines.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => {
                if oops.is_none() && is_kernel_oops(&line) {
                    oops = Some(line.trim().to_string());
                }
                println!("[{}] {line}", kernel.name);
                let _ = writeln!(log, "{line}");
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(line) = errs.try_recv() {
            eprintln!("[{} qemu] {line}", kernel.name);
            let _ = writeln!(log, "qemu: {line}");
        }
    }
    let status = child.wait()?;
    while let Ok(line) = errs.try_recv() {
        eprintln!("[{} qemu] {line}", kernel.name);
        let _ = writeln!(log, "qemu: {line}");
    }
    let elapsed = start.elapsed();
    if problem.is_none() && !status.success() {
        problem = Some(format!("qemu exited with {status}"));
    }

    if let Some(line) = oops {
        // A guest kernel oops fails the run even when the tests passed: it is either the
        // product's bug or the emulator's (multi-threaded TCG and kernel text patching), and
        // either way the run proves nothing.
        problem = Some(format!(
            "the guest kernel oopsed: `{line}` (under multi-threaded TCG an int3 oops in \
             scheduler code is the emulator's cross-modifying-code problem; rerun, or set \
             SCALER_VM_TCG_THREAD=single to confirm)"
        ));
    }
    let guest_status = fs::read_to_string(work.join("exit-status"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut counts = Counts::default();
    let mut outputs: Vec<PathBuf> = fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("output."))
        })
        .collect();
    outputs.sort();
    for out in &outputs {
        let text = fs::read_to_string(out).unwrap_or_default();
        for line in text.lines() {
            counts.add_line(line);
        }
        fs::copy(
            out,
            logs.join(format!(
                "{}-{}",
                kernel.name,
                out.file_name().unwrap().to_string_lossy()
            )),
        )?;
    }
    if guest_status.is_none() && problem.is_none() {
        problem = Some(
            "the guest wrote no exit status (it crashed or the command could not start)".into(),
        );
    }
    let _ = fs::remove_dir_all(&boot);
    let _ = fs::remove_dir_all(&work);
    Ok(VmResult {
        status: guest_status,
        counts,
        console_log,
        elapsed,
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(single_thread: bool) -> VmConfig {
        VmConfig {
            timeout: Duration::from_secs(60),
            memory_mib: 1024,
            cpus: 2,
            disk_mib: 64,
            single_thread,
            append: String::new(),
        }
    }

    #[test]
    fn shell_script_reports_the_command_status() {
        let s = run_script(
            &GuestCommand::Shell("exit 3".into()),
            Path::new("/w d"),
            "6.12",
            &config(false),
        );
        assert!(s.contains("export W='/w d'"), "{s}");
        assert!(
            s.contains("{ /bin/sh -c 'exit 3'; echo $? > \"$W/rc.0\"; }"),
            "{s}"
        );
        assert!(
            s.ends_with("echo \"$status\" > \"$W/exit-status\"\nsync\n"),
            "{s}"
        );
    }

    #[test]
    fn test_script_runs_each_binary_with_the_agent() {
        let cmd = GuestCommand::Tests {
            executables: vec!["/t/a".into(), "/t/b".into()],
            agent: "/t/scaler".into(),
            filter: vec!["memory".into()],
        };
        let s = run_script(&cmd, Path::new("/w"), "6.1", &config(false));
        assert!(s.contains("export SCALER_BIN='/t/scaler'"), "{s}");
        assert!(
            s.contains("SCALER_VM_KERNEL=6.1 SCALER_VM_TCG=multi"),
            "{s}"
        );
        assert!(
            s.contains("{ '/t/a' --test-threads=1 'memory'; echo $? > \"$W/rc.0\"; }"),
            "{s}"
        );
        assert!(
            s.contains("{ '/t/b' --test-threads=1 'memory'; echo $? > \"$W/rc.1\"; }"),
            "{s}"
        );
    }

    #[test]
    fn recognizes_kernel_oopses_only_in_kernel_messages() {
        assert!(is_kernel_oops(
            "[   41.123456] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"
        ));
        assert!(is_kernel_oops(
            "[    3.000001] BUG: kernel NULL pointer dereference, address: 0000000000000008"
        ));
        assert!(is_kernel_oops(
            "[   12.500000] general protection fault, probably for non-canonical address"
        ));
        assert!(!is_kernel_oops(
            "[    7.819099] Memory cgroup out of memory: Killed process 203 (scaler)"
        ));
        assert!(!is_kernel_oops("test foo ... Oops: not a kernel line"));
        assert!(!is_kernel_oops("[6.12] BUG: quoted"));
    }

    #[test]
    fn exposes_binaries_under_tmp_only() {
        let cmd = GuestCommand::Tests {
            executables: vec!["/tmp/tgt/release/deps/a".into()],
            agent: "/tmp/tgt/release/scaler".into(),
            filter: vec![],
        };
        let paths = under_tmp(&cmd, Path::new("/root/.cache/scaler-vm/runs/x"));
        assert!(paths.contains(&PathBuf::from("/tmp/tgt/release/deps")));
        assert!(paths.contains(&PathBuf::from("/tmp/tgt/release")));
        assert!(paths.iter().all(|p| p.starts_with("/tmp")));
    }
}
