//! Exit statuses an operator's tools can tell apart (sysexits(3), as systemd names them): a
//! command line that does not parse is 64, an invalid configuration 78, help and version 0.
//! Needs neither root nor the eBPF toolchain (missing privileges, 77, and `scaler exec`'s own
//! 125/126/127 are root tests in tests/tests/faults.rs and tests/tests/exec.rs).

use std::process::{Command, Output};

fn scaler(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scaler"))
        .args(args)
        .output()
        .expect("scaler runs")
}

#[test]
fn usage_errors_are_64_and_help_is_0() {
    for args in [
        &["--no-such-option"][..],
        &["no-such-command"],
        &["check-config"],
    ] {
        let out = scaler(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
    }
    for args in [&["--help"][..], &["--version"], &["agent", "--help"]] {
        let out = scaler(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn an_invalid_configuration_is_78() {
    let dir = std::env::temp_dir().join(format!("scaler-exit-codes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[agent]\nno_such_key = 1\n").unwrap();
    let missing = dir.join("missing.toml");
    for file in [&bad, &missing] {
        let out = scaler(&["check-config", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{}: {stderr}", file.display());
        assert!(
            stderr.contains(file.to_str().unwrap()),
            "names the file: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
