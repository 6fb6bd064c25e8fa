//! The log stream as an operator's tools see it: stderr is a pipe here (as under journald or
//! `kubectl logs`), so text logs carry no ANSI escape codes, and `--log-format json` gives one
//! JSON object per line. Needs neither root nor the eBPF toolchain.

use std::process::Command;

/// Runs `scaler <args> check-config <missing file>`: quick, unprivileged, and with an
/// invalid `--log` filter it logs a warning through the subscriber before failing.
fn stderr_of(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scaler"));
    cmd.args(args)
        .args(["check-config", "/nonexistent/scaler-logs-test.toml"])
        .env_remove("RUST_LOG")
        .env_remove("SCALER_LOG")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("scaler runs");
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let err = stderr_of(&["--log", "scaler=[nonsense"], &[]);
    assert!(err.contains("invalid log filter"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape in piped logs: {err:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    for args in [
        &["--log-format", "json", "--log", "scaler=[nonsense"][..],
        &["--log-json", "--log", "scaler=[nonsense"],
    ] {
        let err = stderr_of(args, &[]);
        let line = err
            .lines()
            .find(|l| l.contains("invalid log filter"))
            .unwrap_or_else(|| panic!("no warning in {err:?}"));
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert_eq!(v["level"], "WARN", "{v}");
    }
}

#[test]
fn the_log_option_beats_rust_log() {
    // RUST_LOG asks for a broken filter, `--log` for a good one: no warning.
    let err = stderr_of(&["--log", "info"], &[("RUST_LOG", "scaler=[nonsense")]);
    assert!(!err.contains("invalid log filter"), "{err}");
    // Without `--log`, RUST_LOG is used (and here it is broken, so it says so).
    let err = stderr_of(&[], &[("RUST_LOG", "scaler=[nonsense")]);
    assert!(err.contains("invalid log filter"), "{err}");
}
