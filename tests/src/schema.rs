//! Real output checked against the committed JSON Schemas (`docs/schemas/`, generated from the
//! types by schemars) with an independent validator: check-jsonschema, from PyPI (`cargo xtask
//! setup --dist` installs it, as `cargo xtask test` does). In the VMs there is no Python: there the check is left to the host
//! stage, and says so.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

use crate::{note, tempdir};

/// check-jsonschema: on PATH, or in the virtual environment `cargo xtask setup --dist` makes
/// (`~/.cache/scaler-dist/venv`, as xtask's `setup::dist_venv`).
fn validator() -> PathBuf {
    let on_path = Command::new("check-jsonschema")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return PathBuf::from("check-jsonschema");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("scaler-dist/venv/bin/check-jsonschema")
}

/// `docs/schemas/<name>.schema.json`.
pub fn schema_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/schemas/{name}.schema.json"))
}

/// Validates each of `docs` against schema `name` (`exec-summary`, `status`, `watch-event`,
/// `bench`); panics with the validator's report when one does not match, or when the validator
/// is missing on the host.
pub fn assert_valid(name: &str, docs: &[Value]) {
    assert!(!docs.is_empty(), "no {name} document to validate");
    if std::env::var_os("SCALER_VM_KERNEL").is_some() {
        note(&format!(
            "  schema: {} {name} document(s) not validated in the VM (no Python here; the host stage validates them)",
            docs.len()
        ));
        return;
    }
    let dir = tempdir();
    let files: Vec<PathBuf> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let f = dir.join(format!("{name}-{i}.json"));
            std::fs::write(&f, serde_json::to_vec_pretty(d).unwrap()).unwrap();
            f
        })
        .collect();
    let out = Command::new(validator())
        .arg("--schemafile")
        .arg(schema_file(name))
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "check-jsonschema ({e}) is needed to validate JSON output: \
                 `cargo xtask setup --dist` installs it (or `pip install check-jsonschema`)"
            )
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {name} document(s) do not match {}:\n{report}\nfirst document: {}",
        docs.len(),
        schema_file(name).display(),
        docs[0]
    );
    note(&format!(
        "  schema: {} {name} document(s) valid against docs/schemas/{name}.schema.json",
        docs.len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
