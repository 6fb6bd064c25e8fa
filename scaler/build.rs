//! Builds the eBPF programs (scaler-ebpf) with aya-build and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. When bpf-linker or the eBPF toolchain is missing (or
//! SCALER_SKIP_EBPF=1), writes an empty stub instead so that `cargo build`/`cargo test` of the
//! userspace crates still work; the loader then refuses to start with a message saying how to
//! get the real object (`cargo xtask setup`).
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{anyhow, Context as _};

const EBPF_PACKAGE: &str = "scaler-ebpf";
/// The Rust toolchain that builds the BPF target: Debian's rustc-web, installed under /usr
/// (see `cargo xtask setup`). Override with SCALER_EBPF_TOOLCHAIN.
const DEFAULT_TOOLCHAIN: &str = "/usr";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SCALER_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=SCALER_EBPF_TOOLCHAIN");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("scaler");

    let skip_asked = env::var("SCALER_SKIP_EBPF").is_ok_and(|v| v == "1" || v == "true");
    let skip_reason = if skip_asked {
        Some("SCALER_SKIP_EBPF is set".to_string())
    } else if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        Some("bpf-linker is not installed".to_string())
    } else {
        let toolchain =
            env::var("SCALER_EBPF_TOOLCHAIN").unwrap_or_else(|_| DEFAULT_TOOLCHAIN.into());
        let rustc = PathBuf::from(&toolchain).join("bin/rustc");
        (!rustc.exists()).then(|| {
            format!(
                "the eBPF Rust toolchain ({}) is not installed",
                rustc.display()
            )
        })
    };
    if let Some(reason) = skip_reason {
        println!(
            "cargo:warning={reason}: building the agent without its eBPF programs; \
             run `cargo xtask setup` to install the eBPF toolchain"
        );
        fs::write(&object, b"").with_context(|| format!("writing stub {}", object.display()))?;
        if !skip_asked {
            // A path that never exists: cargo reruns this script on every build until the real
            // object has been built (e.g. after `cargo xtask setup` installed bpf-linker).
            // Not when the skip was asked for (fuzz/run.sh): the environment variable's change
            // is what reruns it, and each build of a fuzz target does not rebuild the agent.
            println!(
                "cargo:rerun-if-changed={}",
                out_dir.join("ebpf-build-skipped").display()
            );
        }
        return Ok(());
    }

    let toolchain = env::var("SCALER_EBPF_TOOLCHAIN").unwrap_or_else(|_| DEFAULT_TOOLCHAIN.into());
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let root_dir = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", manifest_dir.display()))?
        .join(EBPF_PACKAGE);
    let root_dir = root_dir.to_str().context("non-UTF-8 path")?;
    // Debian's rustc is a stable compiler: -Z build-std=core needs RUSTC_BOOTSTRAP=1, which
    // aya-build reads from our environment and passes on to the nested cargo.
    // SAFETY: build scripts are single-threaded here.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs (run `cargo xtask setup` if the toolchain is missing)")
}
