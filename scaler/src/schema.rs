//! The JSON documents scaler writes carry a `schema_version`, and their JSON Schemas are
//! generated from the Rust types (schemars) and committed in `docs/schemas/`, where a unit test
//! keeps them in step with the types and the root tests validate real output against them
//! (check-jsonschema). A field that changes meaning, or goes away, bumps the version; a field
//! added does not.

use schemars::Schema;

/// The version of every document below (and of the bench's, in scaler-tools).
pub const SCHEMA_VERSION: u32 = 1;

/// Each document's schema, by the file name it has in `docs/schemas/` (`<name>.schema.json`).
pub fn documents() -> Vec<(&'static str, Schema)> {
    vec![
        (
            "exec-summary",
            schemars::schema_for!(crate::cmd::exec::Summary),
        ),
        (
            "status",
            schemars::schema_for!(crate::cmd::agent::status::StatusDoc),
        ),
        (
            "watch-event",
            schemars::schema_for!(crate::cmd::watch::WatchEvent<'static>),
        ),
    ]
}

/// Compares (or, with `SCALER_UPDATE_SCHEMAS=1`, writes) the committed schema files with the
/// generated ones; the error names the files that differ and how to update them.
pub fn check_committed(dir: &std::path::Path, docs: &[(&str, Schema)]) -> Result<(), String> {
    let update = std::env::var_os("SCALER_UPDATE_SCHEMAS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, schema) in docs {
        let path = dir.join(format!("{name}.schema.json"));
        let text = serde_json::to_string_pretty(schema).expect("a schema serializes") + "\n";
        if update {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::write(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "schemas out of date with the types: {}; regenerate with \
             `SCALER_UPDATE_SCHEMAS=1 cargo test -p scaler -p scaler-tools schema` and commit them",
            stale.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schemas_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
        check_committed(&dir, &documents()).unwrap();
    }

    #[test]
    fn every_document_requires_its_schema_version() {
        for (name, schema) in documents() {
            let v = schema.as_value();
            let required = v["required"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: {v}"));
            assert!(
                required.iter().any(|r| r == "schema_version"),
                "{name} requires schema_version"
            );
        }
    }
}
