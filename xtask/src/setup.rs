//! `cargo xtask setup`: installs, idempotently, what the eBPF build (and, with `--vm`, the VM
//! tests) need on a Debian machine, checking each piece first and saying what it did.
//!
//! The pieces (see shared FACTS): Debian's `rustc-web` (Rust with LLVM 22, sysroot `/usr`) with
//! its `rust-web-src` and `cargo-web`, `llvm-22-dev`, and `bpf-linker` 0.13.0 built against that
//! LLVM. The agent's build.rs runs the nested eBPF build with `rustup run /usr cargo`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::util;

/// Debian packages of the eBPF toolchain.
pub const EBPF_PACKAGES: &[&str] = &["rustc-web", "rust-web-src", "cargo-web", "llvm-22-dev"];
/// Debian packages the manual-page tests need (groff renders, man(1) reads; scaler-cli/tests/docs.rs).
pub const DOC_PACKAGES: &[&str] = &["groff-base", "man-db"];
/// Debian packages of the benchmark's real-workload suite (`scaler bench --suite real`, and its
/// smoke test in tests/tests/bench.rs): the programs it runs. The same list as the install
/// line the benchmark prints for a missing one (scaler-tools/src/bench/real.rs `INSTALL_ALL`).
pub const BENCH_PACKAGES: &[&str] = &[
    "stress-ng",
    "redis-server",
    "redis-tools",
    "python3-numpy",
    "xz-utils",
    "coreutils",
    "make",
    "gcc",
];
/// Debian packages the packages stage needs (`cargo xtask dist` and tests/tests/dist.rs):
/// podman and crun build and run the image, binutils strips the binary and reads its symbol
/// versions, python3-venv holds kubernetes-validate.
pub const DIST_PACKAGES: &[&str] = &["podman", "crun", "binutils", "python3-venv"];
/// Debian packages of the real container runtimes the root tests run containers with
/// (tests/tests/runtimes.rs): containerd and runc beside podman and crun above, and
/// busybox-static for the OCI image the containerd test builds offline. Installed with the
/// packages stage's tools (bookworm: containerd 1.6.20, runc 1.1.5). Debian's containerd
/// package enables a system service; the tests never use it (they start their own daemon from
/// a private directory).
pub const RUNTIME_PACKAGES: &[&str] = &["containerd", "runc", "busybox-static"];

/// Everything `--dist` installs with apt: [`DIST_PACKAGES`] and [`RUNTIME_PACKAGES`].
pub fn dist_packages() -> Vec<&'static str> {
    DIST_PACKAGES
        .iter()
        .chain(RUNTIME_PACKAGES)
        .copied()
        .collect()
}
/// The PyPI package that validates the Kubernetes manifests, pinned (pip caches the wheel).
pub const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The PyPI package the root tests validate JSON output with against docs/schemas, pinned; it
/// lives in the same virtual environment.
pub const CHECK_JSONSCHEMA: &str = "check-jsonschema==0.39.0";
/// Debian packages the VM tests need (qemu, the initramfs tools, module decompressors).
pub const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "zstd",
    "xz-utils",
    "e2fsprogs",
];
/// The bpf-linker version the build needs; its LLVM major must match Debian rustc's.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM major of Debian's rustc-web and of the bpf-linker build.
pub const LLVM_MAJOR: u32 = 22;
/// The Rust toolchain (sysroot) that builds the BPF target.
pub const EBPF_SYSROOT: &str = "/usr";

/// Options of `cargo xtask setup`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Also install what `cargo xtask vm-test` needs (qemu, busybox-static, cpio, ...).
    #[arg(long)]
    pub vm: bool,
    /// Also install what `cargo xtask dist`, the packages stage and the container runtime
    /// tests need (podman, crun, containerd, runc, busybox-static, binutils,
    /// kubernetes-validate from PyPI in a virtual environment).
    #[arg(long)]
    pub dist: bool,
    /// Only report what is missing; exit non-zero if anything is.
    #[arg(long)]
    pub check: bool,
}

/// One thing the build needs, and whether it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// Debian packages that are not installed.
    Packages(Vec<String>),
    /// Debian's rustc is installed but is not the LLVM 22 one (or is broken).
    DebianRustc(String),
    /// The rust-src of Debian's rustc is missing.
    RustSrc,
    /// bpf-linker is missing or another version (the version it reported).
    BpfLinker(Option<String>),
    /// rustup (which the agent's build.rs uses to run `/usr`'s cargo) is missing.
    Rustup,
    /// kubernetes-validate is not installed in the packages stage's virtual environment.
    KubernetesValidate,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Packages(p) => write!(f, "Debian packages not installed: {}", p.join(" ")),
            Self::DebianRustc(why) => write!(f, "Debian rustc at /usr/bin/rustc: {why}"),
            Self::RustSrc => write!(
                f,
                "rust-src for /usr/bin/rustc missing (/usr/lib/rustlib/src)"
            ),
            Self::BpfLinker(None) => write!(f, "bpf-linker not installed"),
            Self::BpfLinker(Some(v)) => {
                write!(
                    f,
                    "bpf-linker is {v}, need {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR})"
                )
            }
            Self::Rustup => write!(f, "rustup not found on PATH"),
            Self::KubernetesValidate => write!(
                f,
                "{KUBERNETES_VALIDATE} or {CHECK_JSONSCHEMA} (PyPI) not installed in {}",
                dist_venv().display()
            ),
        }
    }
}

/// Whether the Debian package `name` is installed (`dpkg-query` says "install ok installed").
pub fn package_installed(name: &str) -> bool {
    util::probe_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

/// The packages of `names` that are not installed.
pub fn missing_packages(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| !package_installed(n))
        .map(|n| n.to_string())
        .collect()
}

/// Parses `rustc --version --verbose` and returns the LLVM major version.
pub fn llvm_major_of(verbose_version: &str) -> Option<u32> {
    verbose_version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|major| major.parse().ok())
}

/// Parses `bpf-linker --version` ("bpf-linker 0.13.0") into the version.
pub fn bpf_linker_version_of(output: &str) -> Option<&str> {
    output.split_whitespace().nth(1)
}

fn bpf_linker_command() -> Command {
    // Look on PATH first, then in $CARGO_HOME/bin where `cargo install` puts it.
    let mut cmd = Command::new("bpf-linker");
    cmd.env("PATH", util::path_with_cargo_bin());
    cmd
}

/// Checks everything; `vm` adds the VM packages. Returns what is missing, in install order.
pub fn check(vm: bool) -> Vec<Missing> {
    let mut missing = Vec::new();
    let mut wanted: Vec<&str> = EBPF_PACKAGES.to_vec();
    wanted.extend(DOC_PACKAGES);
    wanted.extend(BENCH_PACKAGES);
    if vm {
        wanted.extend(VM_PACKAGES);
    }
    let packages = missing_packages(&wanted);
    let rustc_pkg_missing = packages.iter().any(|p| p == "rustc-web");
    let src_pkg_missing = packages.iter().any(|p| p == "rust-web-src");
    if !packages.is_empty() {
        missing.push(Missing::Packages(packages));
    }
    if !rustc_pkg_missing {
        match util::probe_output(Command::new("/usr/bin/rustc").args(["--version", "--verbose"])) {
            None => missing.push(Missing::DebianRustc("does not run".into())),
            Some(v) => match llvm_major_of(&v) {
                Some(LLVM_MAJOR) => {}
                other => missing.push(Missing::DebianRustc(format!(
                    "LLVM major is {other:?}, need {LLVM_MAJOR}"
                ))),
            },
        }
    }
    if !src_pkg_missing && !Path::new("/usr/lib/rustlib/src/rust/library/core").is_dir() {
        missing.push(Missing::RustSrc);
    }
    if util::on_path("rustup").is_none() {
        missing.push(Missing::Rustup);
    }
    match util::probe_output(bpf_linker_command().arg("--version")) {
        None => missing.push(Missing::BpfLinker(None)),
        Some(out) => {
            if bpf_linker_version_of(&out) != Some(BPF_LINKER_VERSION) {
                missing.push(Missing::BpfLinker(Some(out.trim().to_string())));
            }
        }
    }
    missing
}

fn apt_get() -> Command {
    let mut cmd = if util::is_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Installs Debian packages (after one `apt-get update`).
pub fn install_packages(packages: &[String]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !util::is_root() && util::on_path("sudo").is_none() {
        bail!("installing {} needs root (or sudo)", packages.join(" "));
    }
    println!("setup: installing Debian packages: {}", packages.join(" "));
    util::run(apt_get().args(["update", "-q"])).context("apt-get update")?;
    util::run(
        apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages),
    )
    .context("apt-get install")
}

fn install_bpf_linker() -> Result<()> {
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about 1.5 min)"
    );
    let mut cmd = util::cargo();
    cmd.current_dir(std::env::temp_dir())
        .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ]);
    util::run(&mut cmd).context("cargo install bpf-linker")
}

/// Installs whatever `missing` lists, in order, then re-checks.
fn install(missing: &[Missing], vm: bool) -> Result<()> {
    for m in missing {
        match m {
            Missing::Packages(p) => install_packages(p)?,
            Missing::DebianRustc(_) | Missing::RustSrc => {
                // Reinstalling the packages is the fix; installing them happened above if needed.
                install_packages(&[
                    "rustc-web".into(),
                    "rust-web-src".into(),
                    "cargo-web".into(),
                ])?
            }
            Missing::Rustup => bail!(
                "rustup is required (the agent's build.rs runs `rustup run {EBPF_SYSROOT} cargo` \
                 for the eBPF build); install it from https://rustup.rs"
            ),
            Missing::BpfLinker(_) => install_bpf_linker()?,
            Missing::KubernetesValidate => install_kubernetes_validate()?,
        }
    }
    let mut still = check(vm);
    if missing.iter().any(is_dist) {
        still.extend(check_dist());
    }
    if !still.is_empty() {
        let list: Vec<String> = still.iter().map(ToString::to_string).collect();
        bail!(
            "setup finished but these are still missing:\n  {}",
            list.join("\n  ")
        );
    }
    Ok(())
}

/// The virtual environment that holds kubernetes-validate and check-jsonschema
/// (`~/.cache/scaler-dist/venv`; tests/src/schema.rs looks there too).
pub fn dist_venv() -> PathBuf {
    crate::util::user_cache().join("scaler-dist/venv")
}

/// Whether `m` is one of the packages stage's needs.
fn is_dist(m: &Missing) -> bool {
    match m {
        Missing::KubernetesValidate => true,
        Missing::Packages(p) => p.iter().any(|p| dist_packages().contains(&p.as_str())),
        _ => false,
    }
}

/// What the packages stage needs and is missing.
pub fn check_dist() -> Vec<Missing> {
    let mut missing = Vec::new();
    let packages = missing_packages(&dist_packages());
    if !packages.is_empty() {
        missing.push(Missing::Packages(packages));
    }
    let kv = dist_venv().join("bin/kubernetes-validate");
    let cj = dist_venv().join("bin/check-jsonschema");
    if util::probe_output(Command::new(kv).arg("--version")).is_none()
        || util::probe_output(Command::new(cj).arg("--version")).is_none()
    {
        missing.push(Missing::KubernetesValidate);
    }
    missing
}

fn install_kubernetes_validate() -> Result<()> {
    let venv = dist_venv();
    println!(
        "setup: installing {KUBERNETES_VALIDATE} and {CHECK_JSONSCHEMA} into {}",
        venv.display()
    );
    if !venv.join("bin/pip").exists() {
        util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv (Debian: python3-venv)")?;
    }
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args([KUBERNETES_VALIDATE, CHECK_JSONSCHEMA]),
    )
    .context("pip install kubernetes-validate check-jsonschema")
}

/// Makes sure the packages stage's tools are installed (called by `cargo xtask test`).
pub fn ensure_dist() -> Result<()> {
    let missing = check_dist();
    if missing.is_empty() {
        println!(
            "setup: podman, crun, containerd, runc, busybox-static, binutils and \
             kubernetes-validate present"
        );
        return Ok(());
    }
    for m in &missing {
        println!("setup: [missing] {m}");
    }
    install(&missing, false)
}

/// `cargo xtask setup`.
pub fn setup(opts: &Options) -> Result<()> {
    if !opts.check {
        ensure_test_tools()?;
    }
    let mut missing = check(opts.vm);
    report(&missing, opts.vm);
    if opts.dist {
        let dist = check_dist();
        if dist.is_empty() {
            println!(
                "setup: [ok]      {}, {KUBERNETES_VALIDATE}, {CHECK_JSONSCHEMA}",
                dist_packages().join(", ")
            );
        }
        for m in &dist {
            println!("setup: [missing] {m}");
        }
        missing.extend(dist);
    }
    if missing.is_empty() {
        println!("setup: nothing to do");
        return Ok(());
    }
    if opts.check {
        bail!(
            "setup: {} item(s) missing; run `cargo xtask setup`",
            missing.len()
        );
    }
    install(&missing, opts.vm)?;
    println!("setup: done");
    Ok(())
}

fn report(missing: &[Missing], vm: bool) {
    let pkgs: Vec<&str> = EBPF_PACKAGES
        .iter()
        .chain(DOC_PACKAGES)
        .chain(BENCH_PACKAGES)
        .chain(if vm { VM_PACKAGES } else { &[] })
        .copied()
        .collect();
    let missing_pkgs: Vec<&str> = missing
        .iter()
        .filter_map(|m| match m {
            Missing::Packages(p) => Some(p.iter().map(String::as_str).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    for p in pkgs {
        if missing_pkgs.contains(&p) {
            println!("setup: [missing] Debian package {p}");
        } else {
            println!("setup: [ok]      Debian package {p}");
        }
    }
    for m in missing
        .iter()
        .filter(|m| !matches!(m, Missing::Packages(_)))
    {
        println!("setup: [missing] {m}");
    }
    let has = |f: fn(&Missing) -> bool| missing.iter().any(f);
    if !has(|m| matches!(m, Missing::DebianRustc(_))) && !missing_pkgs.contains(&"rustc-web") {
        println!("setup: [ok]      /usr/bin/rustc uses LLVM {LLVM_MAJOR}");
    }
    if !has(|m| matches!(m, Missing::RustSrc)) && !missing_pkgs.contains(&"rust-web-src") {
        println!("setup: [ok]      rust-src in /usr/lib/rustlib/src");
    }
    if !has(|m| matches!(m, Missing::Rustup)) {
        println!("setup: [ok]      rustup (runs the {EBPF_SYSROOT} toolchain for the eBPF build)");
    }
    if !has(|m| matches!(m, Missing::BpfLinker(_))) {
        println!("setup: [ok]      bpf-linker {BPF_LINKER_VERSION}");
    }
}

/// Makes sure the eBPF toolchain (and with `vm`, the VM tools) is installed, installing what is
/// missing; silent apart from one line when everything is there. Called by build/run/test.
pub fn ensure(vm: bool) -> Result<()> {
    let missing = check(vm);
    if missing.is_empty() {
        println!("setup: toolchain present (rustc-web/LLVM {LLVM_MAJOR}, bpf-linker {BPF_LINKER_VERSION}{})",
            if vm { ", VM tools" } else { "" });
        return Ok(());
    }
    report(&missing, vm);
    install(&missing, vm)
}

/// Debian packages the root tests run: `promtool` (package `prometheus`) checks the agent's
/// `/metrics` and the example alerts (`tests/tests/prometheus.rs`).
pub const TEST_TOOL_PACKAGES: &[&str] = &["prometheus"];

/// Installs the test tools of [`TEST_TOOL_PACKAGES`] that are missing (called by `setup` and
/// `cargo xtask test`).
pub fn ensure_test_tools() -> Result<()> {
    let missing = missing_packages(TEST_TOOL_PACKAGES);
    if missing.is_empty() {
        println!(
            "setup: [ok]      test tools ({})",
            TEST_TOOL_PACKAGES.join(" ")
        );
        return Ok(());
    }
    install_packages(&missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llvm_major() {
        let v =
            "rustc 1.96.0 (ac68faa20 2026-05-25)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\n\
                 release: 1.96.0\nLLVM version: 22.1.8\n";
        assert_eq!(llvm_major_of(v), Some(22));
        assert_eq!(llvm_major_of("rustc 1.95.0\nrelease: 1.95.0\n"), None);
        assert_eq!(llvm_major_of("LLVM version: 20.1.1"), Some(20));
    }

    #[test]
    fn parses_bpf_linker_version() {
        assert_eq!(bpf_linker_version_of("bpf-linker 0.13.0\n"), Some("0.13.0"));
        assert_eq!(bpf_linker_version_of("bpf-linker 0.9.13"), Some("0.9.13"));
        assert_eq!(bpf_linker_version_of(""), None);
    }

    #[test]
    fn dist_installs_the_container_runtimes() {
        let all = dist_packages();
        for p in ["podman", "crun", "containerd", "runc", "busybox-static"] {
            assert!(all.contains(&p), "{p} in {all:?}");
        }
        assert!(is_dist(&Missing::Packages(vec!["containerd".into()])));
        assert!(is_dist(&Missing::Packages(vec!["runc".into()])));
    }

    #[test]
    fn bench_packages_match_the_benchmarks_install_line() {
        let line = scaler_tools_install_line();
        let listed: Vec<&str> = line.split_whitespace().skip(2).collect();
        assert_eq!(listed, BENCH_PACKAGES);
    }

    /// The benchmark's install line, read from its source (xtask does not depend on it).
    fn scaler_tools_install_line() -> String {
        let src = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scaler-tools/src/bench/real.rs"),
        )
        .unwrap();
        let start = src
            .find("\"apt-get install stress-ng")
            .expect("INSTALL_ALL in real.rs");
        let rest = &src[start + 1..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    #[test]
    fn unknown_package_is_missing() {
        // dpkg-query exists on Debian; a package that cannot exist is reported missing either way.
        assert_eq!(
            missing_packages(&["scaler-no-such-package-xyz"]),
            vec!["scaler-no-such-package-xyz".to_string()]
        );
    }
}
