//! The packages, installed and run as an operator would, offline (issue 18 item 6).
//!
//! `cargo xtask test` runs `cargo xtask dist --no-image` (target/dist: the .deb and the image
//! build context) and then this file with `SCALER_DIST_DIR` set, as root. Without that variable
//! (the plain host and VM runs of the integration tests) the package and image tests skip
//! LOUDLY; the manifest checks run everywhere, and need `kubernetes-validate` (PyPI, installed
//! by `cargo xtask setup --dist`) only where SCALER_DIST_DIR is set.
//!
//! - The .deb is installed with `dpkg --root` into a throwaway root whose dpkg database is a
//!   copy of the host's (so its Depends are checked against the host's real packages; the
//!   host's own /usr and dpkg database are untouched); then `scaler --version` and
//!   `scaler check-config` on the installed configuration run from it, and a purge removes it.
//! - The image is built by podman from target/dist/image (FROM scratch, `--pull=never
//!   --network=none`: no registry) into a private store, and run as the README says: the agent
//!   starts, answers GET /metrics, and `podman stop` (SIGTERM) ends it with status 0.
//!   podman runs in a private mount namespace with the hybrid layout's
//!   /sys/fs/cgroup/unified unmounted (crun refuses hybrid cgroups), with explicit ulimits
//!   (no CAP_SYS_RESOURCE here) and `--network=host` so the test reaches /metrics on a free
//!   loopback port.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use scaler_tests::{note, scaler_bin, tempdir};

fn dist_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("SCALER_DIST_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            note(&format!(
                "SKIPPED {test}: SCALER_DIST_DIR is not set (`cargo xtask test` sets it in its \
                 packages stage, after `cargo xtask dist`)"
            ));
            None
        }
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[track_caller]
fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn the_one(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one *{suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

/// The version the binary under test reports ("scaler 0.1.0").
fn version() -> String {
    let out = ok(Command::new(scaler_bin()).arg("--version"));
    stdout(&out).split_whitespace().nth(1).unwrap().to_owned()
}

#[test]
fn the_deb_installs_with_dpkg_and_runs() {
    let Some(dist) = dist_dir("the_deb_installs_with_dpkg_and_runs") else {
        return;
    };
    let deb = the_one(&dist, ".deb");
    let field = |f: &str| stdout(&ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f)));
    assert_eq!(field("Package").trim(), "scaler");
    assert_eq!(field("Version").trim(), version());
    let arch = stdout(&ok(Command::new("dpkg").arg("--print-architecture")));
    assert_eq!(field("Architecture").trim(), arch.trim());
    let depends = field("Depends");
    assert!(depends.contains("libc6 (>= 2."), "Depends: {depends}");
    // A throwaway root whose dpkg database starts as a copy of the host's: Depends are checked
    // for real, against what the host has installed.
    let root = tempdir();
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        fs::create_dir_all(admin.join(d)).unwrap();
    }
    fs::copy("/var/lib/dpkg/status", admin.join("status")).unwrap();
    fs::write(admin.join("available"), "").unwrap();
    let dpkg = || {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display()));
        c
    };
    ok(dpkg().arg("-i").arg(&deb));
    let status = stdout(&ok(dpkg().args(["-s", "scaler"])));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("Conffiles:\n /etc/scaler/scaler.toml "),
        "the configuration is a conffile: {status}"
    );

    let bin = root.join("usr/bin/scaler");
    let v = stdout(&ok(Command::new(&bin).arg("--version")));
    assert_eq!(v.trim(), format!("scaler {}", version()));
    let config = root.join("etc/scaler/scaler.toml");
    let checked = ok(Command::new(&bin).arg("check-config").arg(&config));
    assert!(stdout(&checked).contains(": OK ("), "{checked:?}");
    // The installed configuration is the shipped example.
    assert_eq!(
        fs::read(&config).unwrap(),
        fs::read(repo().join("config/scaler.example.toml")).unwrap()
    );

    // The container runtime policies, as examples that check.
    for example in ["podman.toml", "containerd.toml"] {
        let path = root.join("usr/share/doc/scaler/examples").join(example);
        assert_eq!(
            fs::read(&path).unwrap(),
            fs::read(repo().join("config").join(example)).unwrap()
        );
        let checked = ok(Command::new(&bin).arg("check-config").arg(&path));
        assert!(stdout(&checked).contains(": OK ("), "{checked:?}");
    }

    // The unit runs the binary where the package put it.
    let unit = fs::read_to_string(root.join("usr/lib/systemd/system/scaler.service")).unwrap();
    for key in ["ExecStartPre=", "ExecStart="] {
        let line = unit
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} in the unit"));
        let exe = line[key.len()..].split_whitespace().next().unwrap();
        assert_eq!(exe, "/usr/bin/scaler", "{line}");
    }
    // Type=notify with a watchdog, and the hardening (checked in full by the unit tests in
    // scaler/src/cmd/agent/deploy_tests.rs).
    for l in [
        "Type=notify",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            unit.lines().any(|u| u.starts_with(l)),
            "the unit has no {l} line"
        );
    }

    // Completions and manuals where the shells and man(1) look for them.
    let bash = root.join("usr/share/bash-completion/completions/scaler");
    ok(Command::new("bash").arg("-n").arg(&bash));
    assert!(root
        .join("usr/share/zsh/vendor-completions/_scaler")
        .is_file());
    assert!(root
        .join("usr/share/fish/vendor_completions.d/scaler.fish")
        .is_file());
    let man = ok(Command::new("man")
        .arg("-l")
        .arg(root.join("usr/share/man/man1/scaler.1.gz"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "200"));
    let page = stdout(&man);
    for sub in ["watch", "agent", "status", "check-config", "exec"] {
        assert!(page.contains(&format!("scaler-{sub}(1)")), "{page}");
        assert!(root
            .join(format!("usr/share/man/man1/scaler-{sub}.1.gz"))
            .is_file());
    }

    ok(dpkg().args(["--purge", "scaler"]));
    assert!(!bin.exists(), "purge removes the binary");
    assert!(!config.exists(), "purge removes the conffile");
    fs::remove_dir_all(&root).unwrap();
}

/// podman with its own store under `dir`, each command in a private mount namespace.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            // crun refuses the hybrid layout: hide the v2 mount from this namespace only.
            .arg("umount /sys/fs/cgroup/unified 2>/dev/null; exec podman \"$@\"")
            .arg("podman")
            .arg(format!("--root={}", self.dir.join("storage").display()))
            .arg(format!("--runroot={}", self.dir.join("run").display()))
            .arg("--events-backend=file")
            .args(args);
        c
    }
}

/// Removes the container (by name) even when the test fails.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .cmd(&["rm", "-f", "-t", "0", &self.name])
            .output();
    }
}

fn get_metrics(port: u16) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    Some((head.to_owned(), body.to_owned()))
}

#[test]
fn the_image_builds_offline_and_runs_the_agent() {
    let Some(dist) = dist_dir("the_image_builds_offline_and_runs_the_agent") else {
        return;
    };
    let ctx = dist.join("image");
    assert!(ctx.join("Containerfile").is_file() && ctx.join("rootfs.tar").is_file());
    let dir = tempdir();
    let podman = Podman { dir: dir.clone() };
    let tag = format!("localhost/scaler-test:{}", std::process::id());

    // No registry: FROM scratch, nothing pulled, no network during the build.
    let containerfile = ctx.join("Containerfile");
    ok(&mut podman.cmd(&[
        "build",
        "--pull=never",
        "--network=none",
        "-t",
        &tag,
        "-f",
        containerfile.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]));

    // The DaemonSet's command: nsenter into the host's cgroup namespace, then the agent. Its
    // target is host PID 1's namespace; here PID 1 holds CAP_SYS_RESOURCE, which this root
    // lacks, so opening /proc/1/ns/cgroup is denied even on the host: the test enters the same
    // (host) cgroup namespace through its own process, visible with --pid=host.
    let ns = format!("--cgroup=/proc/{}/ns/cgroup", std::process::id());
    let v = ok(&mut podman.cmd(&[
        "run",
        "--rm",
        "--privileged",
        "--pid=host",
        "--network=none",
        "--ulimit=nofile=4096:4096",
        "--ulimit=nproc=4096:4096",
        "--entrypoint=nsenter",
        &tag,
        &ns,
        "--",
        "/usr/local/bin/scaler",
        "--version",
    ]));
    assert_eq!(stdout(&v).trim(), format!("scaler {}", version()));

    // The agent, on a configuration that observes and changes nothing, metrics on a free
    // loopback port of the host's network namespace.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("scaler.toml");
    fs::write(
        &config,
        format!("[agent]\nmetrics = true\nmetrics_addr = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let name = format!("scaler-test-{}", std::process::id());
    let container = Container {
        podman: &podman,
        name: name.clone(),
    };
    let log_path = dir.join("agent.log");
    let log = fs::File::create(&log_path).unwrap();
    let mount = format!("{}:/etc/scaler/scaler.toml:ro", config.display());
    let mut run = podman
        .cmd(&[
            "run",
            "--rm",
            "--name",
            &name,
            "--privileged",
            "--pid=host",
            "--network=host",
            "--ulimit=nofile=4096:4096",
            "--ulimit=nproc=4096:4096",
            "-v",
            &mount,
            &tag,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("podman run starts");
    let agent_log = || fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(60);
    let (head, body) = loop {
        // Metrics are served from before the programs are attached: wait for both.
        if agent_log().contains("agent running") {
            if let Some(r) = get_metrics(port) {
                break r;
            }
        }
        if let Some(status) = run.try_wait().unwrap() {
            panic!(
                "the container exited with {status} before serving /metrics:\n{}",
                agent_log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no /metrics in 60 s:\n{}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("scaler_ringbuf_records_total"),
        "the agent's metrics: {body}"
    );

    // `podman stop` sends the image's STOPSIGNAL, SIGTERM; the agent detaches and exits 0,
    // which `podman run` returns.
    ok(&mut podman.cmd(&["stop", "-t", "30", &name]));
    let status = run.wait().unwrap();
    let text = agent_log();
    assert_eq!(status.code(), Some(0), "podman run: {status}\n{text}");
    assert!(text.contains("SIGTERM"), "{text}");
    drop(container);
    let _ = podman.cmd(&["rmi", "-f", &tag]).output();
    if let Err(e) = fs::remove_dir_all(&dir) {
        note(&format!("note: could not remove {}: {e}", dir.display()));
    }
}

// ---- Kubernetes manifests -------------------------------------------------------------------

type Yaml = serde_yaml::Value;

fn manifests() -> Vec<(PathBuf, Vec<Yaml>)> {
    use serde::Deserialize as _;
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = fs::read_to_string(&f).unwrap();
            let docs = serde_yaml::Deserializer::from_str(&text)
                .map(|d| Yaml::deserialize(d).expect("valid YAML"))
                .filter(|v| !v.is_null())
                .collect();
            (f, docs)
        })
        .collect()
}

fn find<'a>(all: &'a [(PathBuf, Vec<Yaml>)], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = all
        .iter()
        .flat_map(|(_, d)| d)
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in deploy/kubernetes");
    found[0]
}

fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

#[test]
fn the_kubernetes_manifests_validate() {
    let all = manifests();
    let files: Vec<&PathBuf> = all.iter().map(|(f, _)| f).collect();

    // kubernetes-validate (the Kubernetes OpenAPI schemas, strict: unknown fields are errors)
    // for every built-in kind; it has no schema for the ServiceMonitor CRD (checked below).
    let required = std::env::var_os("SCALER_DIST_DIR").is_some();
    match Command::new("kubernetes-validate")
        .arg("--version")
        .output()
    {
        Err(_) if !required => note(
            "SKIPPED kubernetes-validate: not installed (`cargo xtask setup --dist` installs \
             it; the packages stage requires it); the structural checks below still run",
        ),
        Err(e) => panic!("kubernetes-validate is not installed ({e}): cargo xtask setup --dist"),
        Ok(_) => {
            let out = ok(Command::new("kubernetes-validate")
                .arg("--strict")
                .args(&files));
            let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
            let docs: usize = all.iter().map(|(_, d)| d.len()).sum();
            let passed = text
                .lines()
                .filter(|l| l.contains(" passed for resource "))
                .count();
            let unchecked: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("Couldn't find schema"))
                .collect();
            assert_eq!(
                passed + unchecked.len(),
                docs,
                "every document is seen:\n{text}"
            );
            assert!(
                unchecked.iter().all(|l| l.contains("kind ServiceMonitor ")),
                "only the CRD lacks a schema:\n{text}"
            );
            // The validator does reject a wrong manifest (so a pass means something).
            let bad = tempdir();
            let f = bad.join("bad.yaml");
            fs::write(
                &f,
                "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\nautomountToken: false\n",
            )
            .unwrap();
            let out = Command::new("kubernetes-validate")
                .arg("--strict")
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "an unknown field is rejected: {out:?}"
            );
            fs::remove_dir_all(&bad).unwrap();
        }
    }

    // Consistency across the files: the DaemonSet runs as the ServiceAccount the RBAC binds.
    let ds = find(&all, "DaemonSet");
    let ns = s(&ds["metadata"]["namespace"]);
    let pod = &ds["spec"]["template"];
    let sa = find(&all, "ServiceAccount");
    assert_eq!(
        s(&pod["spec"]["serviceAccountName"]),
        s(&sa["metadata"]["name"])
    );
    assert_eq!(s(&sa["metadata"]["namespace"]), ns);
    let role = find(&all, "ClusterRole");
    let binding = find(&all, "ClusterRoleBinding");
    assert_eq!(s(&binding["roleRef"]["kind"]), "ClusterRole");
    assert_eq!(s(&binding["roleRef"]["name"]), s(&role["metadata"]["name"]));
    let subject = &binding["subjects"][0];
    assert_eq!(s(&subject["kind"]), "ServiceAccount");
    assert_eq!(s(&subject["name"]), s(&sa["metadata"]["name"]));
    assert_eq!(s(&subject["namespace"]), ns);
    // Pods read (the watch of this node's pods), and nothing written but pods/resize (the
    // resize patches of [kubernetes] resize): no other resource, no other verb.
    for rule in role["rules"].as_sequence().unwrap() {
        let groups: Vec<&str> = rule["apiGroups"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(s)
            .collect();
        assert_eq!(groups, [""], "the core group only: {rule:?}");
        let resources: Vec<&str> = rule["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(s)
            .collect();
        let verbs: Vec<&str> = rule["verbs"].as_sequence().unwrap().iter().map(s).collect();
        match resources.as_slice() {
            ["pods"] => assert!(
                verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
                "{verbs:?}"
            ),
            ["pods/resize"] => assert_eq!(verbs, ["patch"]),
            other => panic!("an unexpected rule for {other:?}"),
        }
    }

    // The ServiceMonitor, against the prometheus-operator CRD's structure
    // (monitoring.coreos.com/v1: spec.selector a LabelSelector, spec.endpoints[] with a
    // named `port` of the selected Service, `path`, `scheme` http|https, `interval` and
    // `scrapeTimeout` as Prometheus durations), and what it selects: the Service selects the
    // DaemonSet's pods and targets their `metrics` container port.
    let sm = find(&all, "ServiceMonitor");
    assert_eq!(s(&sm["apiVersion"]), "monitoring.coreos.com/v1");
    assert_eq!(s(&sm["metadata"]["namespace"]), ns);
    let known_spec = [
        "selector",
        "namespaceSelector",
        "endpoints",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    ];
    for k in sm["spec"].as_mapping().unwrap().keys() {
        assert!(known_spec.contains(&s(k)), "spec.{k:?}");
    }
    let svc = find(&all, "Service");
    let svc_labels = svc["metadata"]["labels"].as_mapping().unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            svc_labels.get(k),
            Some(v),
            "the ServiceMonitor selects the Service"
        );
    }
    let names: Vec<&str> = sm["spec"]["namespaceSelector"]["matchNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(names.contains(&s(&svc["metadata"]["namespace"])));
    let duration = |d: &str| {
        let mut rest = d;
        let mut any = false;
        for unit in ["h", "m", "s", "ms"] {
            if let Some(i) = rest.find(unit) {
                let (n, r) = rest.split_at(i);
                if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) {
                    rest = &r[unit.len()..];
                    any = true;
                }
            }
        }
        any && rest.is_empty()
    };
    let known_endpoint = [
        "port",
        "path",
        "scheme",
        "interval",
        "scrapeTimeout",
        "relabelings",
        "metricRelabelings",
        "honorLabels",
    ];
    let svc_ports = svc["spec"]["ports"].as_sequence().unwrap();
    for ep in sm["spec"]["endpoints"].as_sequence().unwrap() {
        for k in ep.as_mapping().unwrap().keys() {
            assert!(known_endpoint.contains(&s(k)), "endpoint {k:?}");
        }
        assert!(["http", "https"].contains(&s(&ep["scheme"])));
        assert!(s(&ep["path"]).starts_with('/'));
        for d in ["interval", "scrapeTimeout"] {
            assert!(duration(s(&ep[d])), "{d}: {:?}", ep[d]);
        }
        for r in ep["relabelings"].as_sequence().into_iter().flatten() {
            assert!(r["sourceLabels"].is_sequence() && r["targetLabel"].is_string());
        }
        let port = svc_ports
            .iter()
            .find(|p| p["name"] == ep["port"])
            .unwrap_or_else(|| panic!("the Service has no port {:?}", ep["port"]));
        // The Service targets the container's named port, which the agent serves on.
        let container_ports = pod["spec"]["containers"][0]["ports"].as_sequence().unwrap();
        assert!(container_ports
            .iter()
            .any(|p| p["name"] == port["targetPort"]));
        assert_eq!(
            s(&ep["path"]),
            s(&pod["metadata"]["annotations"]["prometheus.io/path"])
        );
    }
    let pod_labels = pod["metadata"]["labels"].as_mapping().unwrap();
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "the Service selects the DaemonSet's pods"
        );
    }
    assert!(duration("15s") && duration("1m30s") && !duration("15") && !duration("s"));
}
