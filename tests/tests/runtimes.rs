//! Real container runtimes (issue 16, item 5): podman (crun, cgroupfs manager) and containerd
//! (Debian's package, runc), each running containers of 64 MiB that burst to 200 MiB under the
//! shipped runtime policies (config/podman.toml, config/containerd.toml, taken as they are with
//! only the root of their `match` globs moved below the test's own cgroup), with the agent
//! started before and after the containers; and an owner's update mid-run (`podman update
//! --memory`, `runc update --memory`) adopted as the new original, never fought, and restored
//! at SIGTERM.
//!
//! Host quirks (../shared/FACTS.md): crun refuses this host's hybrid layout (hugetlb on the v2
//! mount), so every podman command runs in a private mount namespace with
//! /sys/fs/cgroup/unified unmounted there only; podman needs explicit nofile/nproc ulimits (no
//! CAP_SYS_RESOURCE here), `--rootfs /:O` (a plain `/` fails at pivot_root; `--rootfs` takes
//! the next argument as the root, so it comes last) and `--network none`. containerd runs from
//! a config, socket, root and state in a private temp directory, with a private runc root, and
//! an OCI image built offline (busybox-static and the C libraries the scaler binary needs) and
//! imported with `ctr images import`; the scaler binary is bind-mounted into each container.
//!
//! Everything a test creates is unique and removed even when it fails: containers (by name),
//! podman's store, containerd (stopped by pid) with its state, and the cgroups the runtimes made
//! below the test's cgroup in every hierarchy (with the processes left in them, killed by pid).
//! The tests skip loudly where the runtimes are not installed (never in CI, where `cargo xtask
//! setup` installs them) or cannot run, and in the cgroup v2 test VMs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use scaler::cgroupfs::{Cgroup, Limit};
use scaler_tests::*;

const M: u64 = 1 << 20;
/// The containers' limit, set by their runtime.
const CONTAINER_LIMIT: u64 = 64 * M;
/// Containers started before the agent, and after it.
const BEFORE_AGENT: usize = 5;
const AFTER_AGENT: usize = 5;
/// What each container's workload touches: 200 MiB in 8 MiB steps every 10 ms (800 MiB/s, the
/// race of ../shared/FACTS.md: OOM-killed 0.76 ms after its first reclaim under a plain limit).
const BURST: &str = "/scaler workload steps --total 200M --step 8M --interval 10ms";
/// The owner's new limit in the update test.
const OWNER_LIMIT: u64 = 100 * M;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .any(|d| std::fs::metadata(d.join(program)).is_ok_and(|m| m.is_file()))
    })
}

/// The environment of a runtime test, or `None` (said loudly) where the runtime cannot be
/// tested: in the cgroup v2 test VMs, and where its programs are not installed (a failure in
/// CI, where setup installs them).
fn runtime_env(test: &str, runtime: &str, programs: &[&str]) -> Option<TestEnv> {
    if emulated() {
        note(&format!(
            "SKIP {test}: {runtime} is not run in the cgroup v2 test VMs (kernel {}): their \
             root is the host's, read-only over 9p, with a busybox init and no container store, \
             runtime state or daemon set up, and the containers' bursts would race under \
             software emulation; this test runs on the host stage of `cargo xtask test`",
            std::env::var("SCALER_VM_KERNEL").unwrap_or_default()
        ));
        return None;
    }
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !on_path(p)).collect();
    if !missing.is_empty() {
        let why = format!(
            "{runtime} is not installed (missing on PATH: {}); `cargo xtask setup --dist` \
             installs podman, crun, containerd and runc",
            missing.join(" ")
        );
        assert!(
            !in_ci(),
            "{test}: {why} (CI installs them: this is a failure)"
        );
        note(&format!("SKIP {test}: {why}"));
        return None;
    }
    env(test)
}

/// Skips (loudly) a test whose runtime cannot run a container here, with the runtime's error;
/// in CI that is a failure.
fn cannot_run(test: &str, runtime: &str, why: &str) {
    let why = format!(
        "{runtime} is installed but cannot run a container here: {why}\n(cgroup v2 hosts and \
         VMs without container support may not run it; see the README, \"Running with \
         podman/containerd\")"
    );
    assert!(!in_ci(), "{test}: {why}");
    note(&format!("SKIP {test}: {why}"));
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(cmd: &mut Command) -> String {
    let o = output(cmd);
    assert!(o.status.success(), "{cmd:?}: {}\n{}", o.status, text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Cgroups the runtimes create

/// Every mounted cgroup hierarchy (v1 controllers, named ones, and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

/// A cgroup path below the test's own memory cgroup, unique, which the runtimes use as the
/// root of their layouts (podman's `--cgroup-parent`, containerd's `--cgroup`). The runtimes
/// create it (and any missing ancestors) in every hierarchy: on a v1 host the test's own cgroup
/// may differ between hierarchies (here it is `/process_api/<id>` for memory and `/` for the
/// others), so the ancestors may be missing in some. On drop, every directory it or the
/// runtimes created is removed, the processes left in its subtree first killed by pid.
struct RuntimeRoot {
    path: String,
    /// Per hierarchy: the highest directory that did not exist before.
    created: Vec<(PathBuf, PathBuf)>,
}

impl RuntimeRoot {
    fn new(env: &TestEnv, prefix: &str) -> RuntimeRoot {
        let own = env.memory.own_cgroup().expect("the test's memory cgroup");
        let path = format!("{}/{}", own.trim_end_matches('/'), unique(prefix));
        let mut created = Vec::new();
        for mount in cgroup_mounts() {
            let mut dir = mount.clone();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                dir.push(part);
                if !dir.exists() {
                    created.push((mount.clone(), dir.clone()));
                    break;
                }
            }
        }
        note(&format!("  runtime cgroup root: {path}"));
        RuntimeRoot { path, created }
    }

    /// A `match` glob of the shipped policy with its root moved here.
    fn glob(&self, shipped: &str) -> String {
        format!("{}{shipped}", glob_literal(&self.path))
    }
}

fn subdirs_depth_first(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                subdirs_depth_first(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

impl Drop for RuntimeRoot {
    fn drop(&mut self) {
        for (mount, top) in &self.created {
            let ours = mount.join(self.path.trim_start_matches('/'));
            let mut dirs = Vec::new();
            subdirs_depth_first(&ours, &mut dirs);
            // Whatever a runtime left running in our subtree (a container, a conmon, a shim
            // whose daemon is gone) was started by this test: killed by pid.
            for d in &dirs {
                if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            Signal::SIGKILL,
                        );
                    }
                }
            }
            // Then the ancestors this test made (only those that were missing before).
            let mut up = ours.parent().map(Path::to_path_buf);
            if &ours != top {
                while let Some(p) = up {
                    dirs.push(p.clone());
                    if &p == top {
                        break;
                    }
                    up = p.parent().map(Path::to_path_buf);
                }
            }
            for d in dirs.iter().filter(|d| d.starts_with(top)) {
                for _ in 0..50 {
                    match std::fs::remove_dir(d) {
                        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => break,
                    }
                }
            }
            if ours.exists() {
                note(&format!("note: could not remove {}", ours.display()));
            }
        }
    }
}

fn memory_cgroup_at(env: &TestEnv, path: &str) -> Cgroup {
    env.memory.cgroup(path).expect("a memory cgroup")
}

fn limit_at(env: &TestEnv, path: &str) -> Option<Limit> {
    memory_cgroup_at(env, path).memory_limit().ok()
}

fn memsw_at(env: &TestEnv, path: &str) -> Option<Limit> {
    memory_cgroup_at(env, path).memsw_limit().ok().flatten()
}

/// Waits until the runtime has written the container's limit.
#[track_caller]
fn wait_limit(env: &TestEnv, path: &str, want: u64) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let now = limit_at(env, path);
        if now == Some(Limit::Bytes(want)) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{path}: the runtime's limit {want} not seen (now {now:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// The runtimes

/// What a test needs of a container runtime.
trait Runtime: Sync {
    fn name(&self) -> &'static str;
    /// Starts a container `name` limited to [`CONTAINER_LIMIT`] running `script` (sh), with
    /// the scaler binary at /scaler and `ctl` at /ctl; returns its memory cgroup's path.
    fn start(&self, name: &str, ctl: &Path, script: &str) -> String;
    /// The owner's update of the container's memory limit.
    fn update_memory(&self, name: &str, bytes: u64);
    /// The limit the owner reports for the container, where it says (`podman inspect`; podman
    /// 4.3 keeps the value of `podman run` there even after its own `podman update`, so it is
    /// printed, not asserted).
    fn owners_view(&self, _name: &str) -> Option<u64> {
        None
    }
}

/// podman with its own store under a private directory, the cgroupfs manager, each command
/// in a private mount namespace without the v2 mount.
struct Podman {
    dir: PathBuf,
    parent: String,
    names: Mutex<Vec<String>>,
}

impl Podman {
    /// `parent`: the cgroup root of the test; containers go to `<parent>/libpod_parent`, the
    /// layout of podman's cgroupfs manager under that root.
    fn new(root: &RuntimeRoot) -> Podman {
        Podman {
            dir: tempdir(),
            parent: format!("{}/libpod_parent", root.path),
            names: Mutex::new(Vec::new()),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        // conmon writes an `oom` file into its working directory when a container is
        // OOM-killed: keep it in ours.
        c.current_dir(&self.dir)
            .args(["-m", "--propagation", "private", "sh", "-c"])
            // crun refuses the hybrid layout: hide the v2 mount from this namespace only.
            .arg("umount /sys/fs/cgroup/unified 2>/dev/null; exec podman \"$@\"")
            .arg("podman")
            .arg(format!("--root={}", self.dir.join("storage").display()))
            .arg(format!("--runroot={}", self.dir.join("run").display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg("--events-backend=file")
            .arg("--cgroup-manager=cgroupfs")
            .args(args);
        c
    }

    /// Runs a trivial container: `Err` with podman's words when it cannot run here.
    fn probe(&self) -> Result<(), String> {
        let o = output(&mut self.cmd(&[
            "run",
            "--rm",
            "--network=none",
            "--ulimit=nofile=4096:4096",
            "--ulimit=nproc=4096:4096",
            &format!("--cgroup-parent={}", self.parent),
            "--rootfs",
            "/:O",
            "/bin/true",
        ]));
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("podman run: {}: {}", o.status, text(&o).trim()))
        }
    }
}

impl Runtime for Podman {
    fn name(&self) -> &'static str {
        "podman"
    }

    fn start(&self, name: &str, ctl: &Path, script: &str) -> String {
        self.names.lock().unwrap().push(name.to_owned());
        let bin = format!("{}:/scaler:ro", scaler_bin().display());
        let ctl = format!("{}:/ctl", ctl.display());
        let id = ok(&mut self.cmd(&[
            "run",
            "-d",
            "--name",
            name,
            "--network=none",
            "--ulimit=nofile=4096:4096",
            "--ulimit=nproc=4096:4096",
            &format!("--memory={CONTAINER_LIMIT}"),
            &format!("--cgroup-parent={}", self.parent),
            "-v",
            &bin,
            "-v",
            &ctl,
            // Last: `--rootfs` takes the first argument after the options as the root.
            "--rootfs",
            "/:O",
            "/bin/sh",
            "-c",
            script,
        ]));
        let id = id.lines().last().unwrap_or_default().to_owned();
        assert_eq!(id.len(), 64, "podman run -d prints the container id: {id}");
        format!("{}/libpod-{id}", self.parent)
    }

    fn update_memory(&self, name: &str, bytes: u64) {
        ok(&mut self.cmd(&["update", &format!("--memory={bytes}"), name]));
    }

    fn owners_view(&self, name: &str) -> Option<u64> {
        ok(&mut self.cmd(&["inspect", "--format", "{{.HostConfig.Memory}}", name]))
            .parse()
            .ok()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let names = self.names.lock().unwrap().clone();
        if !names.is_empty() {
            let mut args = vec!["rm", "-f", "-t", "0"];
            args.extend(names.iter().map(String::as_str));
            let o = self.cmd(&args).stdin(Stdio::null()).output();
            if let Ok(o) = o {
                if !o.status.success() {
                    note(&format!("note: podman rm: {}", text(&o)));
                }
            }
        }
        // conmon's `podman container cleanup` may still write its exit files for a moment.
        remove_dir_retrying(&self.dir);
    }
}

fn remove_dir_retrying(dir: &Path) {
    for attempt in 0..50 {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                if attempt == 49 {
                    note(&format!("note: could not remove {}: {e}", dir.display()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => return,
        }
    }
}

/// containerd from a config, socket, root and state in a private directory, started and
/// stopped (by pid) by the test; containers in its `default` namespace (private to this
/// daemon), at `<root>/default/<id>` (the layout runc gets from containerd's default spec,
/// `/<namespace>/<id>`, under the test's root).
struct Containerd {
    dir: PathBuf,
    daemon: Option<Child>,
    parent: String,
    ids: Mutex<Vec<String>>,
}

const CONTAINERD_NAMESPACE: &str = "default";
const IMAGE: &str = "localhost/scaler-test-runtimes:1";

impl Containerd {
    fn start(root: &RuntimeRoot) -> Result<Containerd, String> {
        let dir = tempdir();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             # No Kubernetes here: the CRI plugin would only warn about CNI.\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\n\
             [debug]\n  address = \"{d}/debug.sock\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting containerd: {e}"))?;
        let mut c = Containerd {
            dir,
            daemon: Some(daemon),
            parent: format!("{}/{CONTAINERD_NAMESPACE}", root.path),
            ids: Mutex::new(Vec::new()),
        };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if output(&mut c.ctr(&["version"])).status.success() {
                break;
            }
            if let Some(Ok(Some(s))) = c.daemon.as_mut().map(Child::try_wait) {
                c.daemon = None;
                return Err(format!("containerd exited ({s}):\n{}", c.log()));
            }
            if Instant::now() > end {
                return Err(format!("containerd not serving in 20 s:\n{}", c.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tar = build_image(&c.dir.join("image"));
        let o = output(c.ctr(&["images", "import"]).arg(&tar));
        if !o.status.success() {
            return Err(format!("ctr images import: {}", text(&o)));
        }
        Ok(c)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", CONTAINERD_NAMESPACE])
            .args(args);
        c
    }

    fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// Runs a trivial container: `Err` with the runtime's words when it cannot run here.
    fn probe(&self) -> Result<(), String> {
        let id = unique("probe");
        self.ids.lock().unwrap().push(id.clone());
        let cgroup = format!("{}/{id}", self.parent);
        let o = output(
            self.ctr(&["run", "--rm", "--null-io", "--runc-root"])
                .arg(self.runc_root())
                .args(["--cgroup", &cgroup, IMAGE, &id, "/bin/sh", "-c", "exit 0"]),
        );
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("ctr run: {}: {}", o.status, text(&o).trim()))
        }
    }
}

impl Runtime for Containerd {
    fn name(&self) -> &'static str {
        "containerd"
    }

    fn start(&self, name: &str, ctl: &Path, script: &str) -> String {
        self.ids.lock().unwrap().push(name.to_owned());
        let cgroup = format!("{}/{name}", self.parent);
        let bin = format!(
            "type=bind,src={},dst=/scaler,options=rbind:ro",
            scaler_bin().display()
        );
        let ctl = format!("type=bind,src={},dst=/ctl,options=rbind:rw", ctl.display());
        ok(self
            .ctr(&["run", "-d", "--null-io", "--runc-root"])
            .arg(self.runc_root())
            .args([
                &format!("--memory-limit={CONTAINER_LIMIT}"),
                "--cgroup",
                &cgroup,
                "--mount",
                &bin,
                "--mount",
                &ctl,
                IMAGE,
                name,
                "/bin/sh",
                "-c",
                script,
            ]));
        cgroup
    }

    fn update_memory(&self, name: &str, bytes: u64) {
        ok(Command::new("runc")
            .arg("--root")
            .arg(self.runc_root().join(CONTAINERD_NAMESPACE))
            .args(["update", &format!("--memory={bytes}"), name]));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            for id in self.ids.lock().unwrap().iter() {
                let _ = output(&mut self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]));
                let _ = output(&mut self.ctr(&["tasks", "delete", "--force", id]));
                let _ = output(&mut self.ctr(&["containers", "delete", id]));
            }
            let _ = output(&mut self.ctr(&["images", "remove", IMAGE]));
        }
        if let Some(mut d) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(d.id() as i32);
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(10);
            while matches!(d.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(d.try_wait(), Ok(None)) {
                let _ = d.kill();
                let _ = d.wait();
            }
        }
        // A task's rootfs is mounted in this namespace while it runs: unmount what is left
        // below our directory before removing it.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a valid NUL-terminated path; umount2 reads it only.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        remove_dir_retrying(&self.dir);
    }
}

/// An OCI image layout tarball built offline: busybox-static as /bin/sh and the C libraries
/// the scaler binary links (from `ldd`), which is bind-mounted at run time.
fn build_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let blobs = dir.join("layout/blobs/sha256");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "ctl"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::create_dir_all(&blobs).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("busybox-static (`cargo xtask setup --vm` installs it)");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let ldd = ok(Command::new("ldd").arg(scaler_bin()));
    for lib in ldd.lines().filter_map(|l| {
        let l = l.trim();
        let p = l.split("=>").nth(1).unwrap_or(l).trim();
        let p = p.split(" (").next()?.trim();
        p.starts_with('/').then(|| p.to_owned())
    }) {
        let to = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&lib, &to).unwrap_or_else(|e| panic!("copying {lib}: {e}"));
    }
    let layer = dir.join("layer.tar");
    ok(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-C",
        ])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."));
    let blob = |bytes: &[u8]| -> (String, usize) {
        let tmp = dir.join("blob");
        std::fs::write(&tmp, bytes).unwrap();
        let sum = ok(Command::new("sha256sum").arg(&tmp));
        let digest = sum.split_whitespace().next().unwrap().to_owned();
        std::fs::rename(&tmp, blobs.join(&digest)).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };
    let (layer_digest, layer_size) = blob(&std::fs::read(&layer).unwrap());
    std::fs::remove_file(&layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = blob(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest, "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {
                "io.containerd.image.name": IMAGE,
                "org.opencontainers.image.ref.name": "1",
            },
        }],
    });
    std::fs::write(dir.join("layout/index.json"), index.to_string()).unwrap();
    std::fs::write(
        dir.join("layout/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tar = dir.join("image.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(dir.join("layout"))
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

// ---------------------------------------------------------------------------------------------
// The shipped policies

fn shipped(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The agent on the shipped configuration `file`, as it is but for the root of every `match`
/// glob (moved below the test's cgroup) and the fixture's own `[agent]` paths (state file,
/// status socket, metrics address).
fn shipped_agent(file: &str, root: &RuntimeRoot) -> AgentConfig {
    let mut doc: toml::Table = shipped(file).parse().expect("the shipped config parses");
    let agent = doc.remove("agent").and_then(|a| a.as_table().cloned());
    let policies = doc
        .get_mut("policy")
        .and_then(toml::Value::as_array_mut)
        .expect("[[policy]] tables");
    for p in policies {
        let globs = p["match"].as_array_mut().expect("match");
        for g in globs.iter_mut() {
            *g = toml::Value::String(root.glob(g.as_str().expect("a glob")));
        }
    }
    let mut conf = AgentConfig::new(toml::to_string(&doc).unwrap()).log_filter(AGENT_DEBUG_LOG);
    // The shipped sample interval (the agent's default unless the file sets one).
    conf.sample_interval = "1s".into();
    for (k, v) in agent.unwrap_or_default() {
        match k.as_str() {
            "status_socket" | "state_file" | "metrics" | "metrics_addr" => {}
            "sample_interval" => conf.sample_interval = v.as_str().unwrap().to_owned(),
            "observe_all" => conf.observe_all = v.as_bool().unwrap(),
            _ => conf = conf.agent_key(&k, &v.to_string()),
        }
    }
    conf
}

#[test]
fn the_shipped_runtime_policies_select_the_runtimes_layouts_and_nothing_else() {
    let node = scaler::config::NodeInfo::detect().expect("node info");
    let id = "0123456789abcdef".repeat(4);
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "podman.toml",
            &[
                "/libpod_parent/libpod-ID",
                "/libpod_parent/0f0f0f0f/libpod-ID",
                "/machine.slice/libpod-ID.scope",
                "/machine.slice/machine-libpod_pod_0f0f.slice/libpod-ID.scope",
                "/libpod_parent/libpod-fe",
            ],
            &[
                "/libpod_parent",
                "/libpod_parent/conmon",
                "/machine.slice/libpod-conmon-ID.scope",
                "/machine.slice",
                "/system.slice/podman.service",
                "/default/ID",
                "/kubepods/burstable/pod1/ID",
            ],
        ),
        (
            "containerd.toml",
            &["/default/ID", "/system.slice/containerd-ID.scope"],
            &[
                "/default",
                "/system.slice/containerd.service",
                "/k8s.io/ID",
                "/moby/ID",
                "/libpod_parent/libpod-ID",
                "/kubepods/burstable/pod1/ID",
            ],
        ),
    ];
    for (file, managed, not) in cases {
        let config = scaler::config::Config::from_toml_str(&shipped(file))
            .unwrap_or_else(|e| panic!("config/{file}: {e}"));
        // Valid on any node, however small (a policy max above the node's memory would not be).
        let small = scaler::config::NodeInfo {
            mem_total: 2 << 30,
            ..node
        };
        config.validate(&node).expect("valid here");
        config.validate(&small).expect("valid on a 2 GiB node");
        // No max, deliberately: the only warning says so.
        let warnings = config.warnings();
        assert!(
            warnings.len() == 1 && warnings[0].key == "policy[0].memory.max",
            "{file}: {warnings:?}"
        );
        for p in config.policies.iter().filter_map(|p| p.memory.as_ref()) {
            assert!(p.max.is_none(), "config/{file}: no max");
        }
        for p in managed.iter().map(|p| p.replace("ID", &id)) {
            let policy = config.policy_for(&p, None);
            assert!(
                policy.is_some_and(|p| p.memory.is_some()),
                "config/{file} manages {p}"
            );
        }
        for p in not.iter().map(|p| p.replace("ID", &id)) {
            assert!(
                config.policy_for(&p, None).is_none(),
                "config/{file} leaves {p} alone"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests' body, the same for both runtimes

/// The directory the containers see at /ctl (triggers, exit statuses), removed on drop.
struct CtlDir(PathBuf);

impl CtlDir {
    fn new() -> CtlDir {
        CtlDir(tempdir())
    }
}

impl std::ops::Deref for CtlDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for CtlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A container's script: wait for `/ctl/<go>` (if any), burst, record the workload's exit
/// status in `/ctl/<name>.rc`.
fn burst_script(name: &str, go: Option<&str>) -> String {
    let wait = go
        .map(|g| format!("until [ -e /ctl/{g} ]; do sleep 0.02; done; "))
        .unwrap_or_default();
    format!("{wait}{BURST}; echo $? > /ctl/{name}.rc")
}

/// The workload's exit status, once written (`None`: none within the timeout, the container
/// died before writing it).
fn wait_rc(ctl: &Path, file: &str, t: Duration) -> Option<i32> {
    let end = Instant::now() + t;
    loop {
        if let Ok(s) = std::fs::read_to_string(ctl.join(file)) {
            if let Ok(rc) = s.trim().parse() {
                return Some(rc);
            }
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `n` containers at once; returns (name, cgroup) of each.
fn start_containers(
    rt: &dyn Runtime,
    ctl: &Path,
    group: &str,
    n: usize,
    go: Option<&str>,
) -> Vec<(String, String)> {
    let names: Vec<String> = (0..n)
        .map(|i| unique(&format!("scaler-rt-{group}{i}")))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let script = burst_script(name, go);
                s.spawn(move || (name.clone(), rt.start(name, ctl, &script)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// 5 containers started before the agent, 5 after it; all must survive their burst.
fn bursts_survive(test: &str, env: &TestEnv, rt: &dyn Runtime, root: &RuntimeRoot, file: &str) {
    let ctl = CtlDir::new();
    // Started before the agent: each waits (limit written) until the agent manages it.
    let before = start_containers(rt, &ctl, "b", BEFORE_AGENT, Some("go"));
    for (_, path) in &before {
        wait_limit(env, path, CONTAINER_LIMIT);
    }
    let mut a = shipped_agent(file, root).start();
    for (_, path) in &before {
        a.wait_managed(path, true, Duration::from_secs(10));
    }
    // Started with the agent running: each bursts as soon as it starts (the start race).
    let after = start_containers(rt, &ctl, "a", AFTER_AGENT, None);
    std::fs::write(ctl.join("go"), "").unwrap();

    let mut rows = Vec::new();
    let mut survived = [0usize; 2];
    let mut latencies = Vec::new();
    for (group, list) in [("agent after", &before), ("agent before", &after)] {
        for (name, path) in list {
            let rc = wait_rc(&ctl, &format!("{name}.rc"), Duration::from_secs(60));
            let raises: Vec<AuditRecord> = a
                .audit_of(path)
                .into_iter()
                .filter(|r| r.is_raise() && r.resource == "memory")
                .collect();
            latencies.extend(raises.iter().filter_map(|r| r.latency_us));
            let first = raises.first().map(|r| {
                format!(
                    "first raise {} -> {} MiB ({}, {:.0} us)",
                    r.old / M,
                    r.new / M,
                    r.reason,
                    r.latency_us.unwrap_or(f64::NAN)
                )
            });
            // The limit the agent found when it took the cgroup on: `max` when it came before
            // the runtime's write (the start race).
            let found = a
                .events(&LogQuery::message(msg::MANAGING).field("cgroup", path))
                .first()
                .and_then(|e| e.field("limit").cloned())
                .map_or("-".to_owned(), |l| l.to_string());
            let slot = usize::from(group == "agent before");
            if rc == Some(0) {
                survived[slot] += 1;
            }
            rows.push(format!(
                "  {group:<12} {name}: workload exit {rc:?}, managed at limit {found}, {} raise(s){}",
                raises.len(),
                first.map(|f| format!(", {f}")).unwrap_or_default()
            ));
        }
    }
    latencies.sort_by(f64::total_cmp);
    let summary = format!(
        "{test}: {}: survived {}/{} with the agent started after the containers, {}/{} with \
         it started before; {} raises, reaction latency p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        rt.name(),
        survived[0],
        before.len(),
        survived[1],
        after.len(),
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    note(&summary);
    for r in &rows {
        note(r);
    }
    a.stop_cleanly(Signal::SIGTERM);
    assert_eq!(
        survived,
        [BEFORE_AGENT, AFTER_AGENT],
        "{summary}\n{}",
        rows.join("\n")
    );
}

/// The owner rewrites the limit mid-run: adopted as the original, not fought, and restored at
/// SIGTERM.
fn owner_update_adopted(env: &TestEnv, rt: &dyn Runtime, root: &RuntimeRoot, file: &str) {
    let ctl = CtlDir::new();
    let name = unique("scaler-rt-owner");
    let script = format!(
        "for i in 1 2; do until [ -e /ctl/go$i ]; do sleep 0.02; done; {BURST}; \
         echo $? > /ctl/rc$i; done; exec sleep 600"
    );
    let path = rt.start(&name, &ctl, &script);
    wait_limit(env, &path, CONTAINER_LIMIT);
    let mut a = shipped_agent(file, root).start();
    a.wait_managed(&path, true, Duration::from_secs(10));

    // A burst, raised by the agent from the runtime's 64 MiB.
    std::fs::write(ctl.join("go1"), "").unwrap();
    assert_eq!(
        wait_rc(&ctl, "rc1", Duration::from_secs(60)),
        Some(0),
        "the first burst survived\n{}",
        a.log().tail()
    );
    let raise = a.wait_audit("a raise", Duration::from_secs(5), |r| {
        r.cgroup == path && r.is_raise()
    });
    assert_eq!(raise.old, CONTAINER_LIMIT, "{raise}");

    // The owner's update, while the limit is the agent's.
    rt.update_memory(&name, OWNER_LIMIT);
    assert_eq!(limit_at(env, &path), Some(Limit::Bytes(OWNER_LIMIT)));
    let owner_memsw = memsw_at(env, &path);
    let adopted = a.wait_event(
        &LogQuery::message(msg::ADOPTED).field("cgroup", &path),
        Duration::from_secs(10),
    );
    note(&format!("  adopted: {adopted}"));
    let status = a.wait_status(
        "the owner's limit as the original",
        Duration::from_secs(10),
        |s| {
            s.managed(&path)
                .is_some_and(|m| m["original_limit"] == OWNER_LIMIT && m["limit"] == OWNER_LIMIT)
        },
    );
    note(&format!("  status: {}", status.managed(&path).unwrap()));
    // The state file is saved after the status is updated: wait for it.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(a.state_file()).unwrap_or_default();
        let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if state["cgroups"][&path]["original"] == OWNER_LIMIT {
            break;
        }
        assert!(
            Instant::now() < end,
            "state file: the owner's original: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not fought: samples later, the limit file still holds the owner's value, and no write
    // of the agent's came in between.
    let writes = a.audit_of(&path).len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(limit_at(env, &path), Some(Limit::Bytes(OWNER_LIMIT)));
    assert_eq!(
        memsw_at(env, &path),
        owner_memsw,
        "memsw left as the owner set it"
    );
    assert_eq!(a.audit_of(&path).len(), writes, "{:?}", a.audit_of(&path));

    // Still protected, now from the owner's value.
    std::fs::write(ctl.join("go2"), "").unwrap();
    assert_eq!(
        wait_rc(&ctl, "rc2", Duration::from_secs(60)),
        Some(0),
        "the second burst survived\n{}",
        a.log().tail()
    );
    let raise = a.wait_audit(
        "a raise from the owner's limit",
        Duration::from_secs(5),
        |r| r.cgroup == path && r.is_raise() && r.old == OWNER_LIMIT,
    );
    note(&format!("  raised from the owner's limit: {raise}"));

    // SIGTERM: the owner's value back (the workload has ended: usage is far below it).
    a.stop_cleanly(Signal::SIGTERM);
    assert_eq!(
        limit_at(env, &path),
        Some(Limit::Bytes(OWNER_LIMIT)),
        "the owner's limit restored"
    );
    assert_eq!(
        memsw_at(env, &path),
        owner_memsw,
        "the owner's memsw restored"
    );
    if let Some(view) = rt.owners_view(&name) {
        note(&format!(
            "  {} reports a limit of {} MiB (the limit file holds {} MiB)",
            rt.name(),
            view / M,
            OWNER_LIMIT / M
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// podman

fn podman_setup(test: &str) -> Option<(TestEnv, RuntimeRoot, Podman)> {
    let env = runtime_env(test, "podman", &["podman", "crun", "unshare"])?;
    let root = RuntimeRoot::new(&env, "scaler-test-podman");
    let podman = Podman::new(&root);
    if let Err(why) = podman.probe() {
        cannot_run(test, "podman", &why);
        return None;
    }
    Some((env, root, podman))
}

#[test]
fn podman_64m_containers_bursting_to_200m_survive_with_the_agent_started_before_and_after() {
    let test = "podman_bursts";
    let Some((env, root, podman)) = podman_setup(test) else {
        return;
    };
    bursts_survive(test, &env, &podman, &root, "podman.toml");
    drop(podman);
    drop(root);
}

#[test]
fn podman_update_mid_run_is_adopted_as_the_original_not_fought_and_restored() {
    let Some((env, root, podman)) = podman_setup("podman_owner") else {
        return;
    };
    owner_update_adopted(&env, &podman, &root, "podman.toml");
    drop(podman);
    drop(root);
}

// ---------------------------------------------------------------------------------------------
// containerd

fn containerd_setup(test: &str) -> Option<(TestEnv, RuntimeRoot, Containerd)> {
    let env = runtime_env(test, "containerd", &["containerd", "ctr", "runc"])?;
    let root = RuntimeRoot::new(&env, "scaler-test-containerd");
    let containerd = match Containerd::start(&root) {
        Ok(c) => c,
        Err(why) => {
            cannot_run(test, "containerd", &why);
            return None;
        }
    };
    if let Err(why) = containerd.probe() {
        cannot_run(test, "containerd", &why);
        return None;
    }
    Some((env, root, containerd))
}

#[test]
fn containerd_64m_containers_bursting_to_200m_survive_with_the_agent_started_before_and_after() {
    let test = "containerd_bursts";
    let Some((env, root, containerd)) = containerd_setup(test) else {
        return;
    };
    bursts_survive(test, &env, &containerd, &root, "containerd.toml");
    drop(containerd);
    drop(root);
}

#[test]
fn containerd_runc_update_mid_run_is_adopted_as_the_original_not_fought_and_restored() {
    let Some((env, root, containerd)) = containerd_setup("containerd_owner") else {
        return;
    };
    owner_update_adopted(&env, &containerd, &root, "containerd.toml");
    drop(containerd);
    drop(root);
}
