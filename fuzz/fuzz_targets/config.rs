//! Configuration parsing and validation never panic, whatever the text: every input is either
//! accepted or rejected with problems that name a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scaler::config::{Config, ConfigError, NodeInfo};

/// Nodes to validate against: a small one, this project's test machine, a huge one.
const NODES: [NodeInfo; 3] = [
    NodeInfo {
        mem_total: 512 << 20,
        nproc: 1,
    },
    NodeInfo {
        mem_total: 24 << 30,
        nproc: 2,
    },
    NodeInfo {
        mem_total: u64::MAX,
        nproc: u32::MAX,
    },
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text) {
        Ok(config) => {
            for node in &NODES {
                match config.validate(node) {
                    Ok(()) => {
                        // What the agent computes from a valid configuration must not panic
                        // either.
                        let _ = config.memory_budget(node);
                        let _ = config.cpu_budget(node);
                        for p in &config.policies {
                            let _ = p.memory_policy();
                            let _ = p.cpu_policy(node);
                        }
                        let _ = config.policy_for("/a/b", Some("1"));
                        let _ = config.policy_for("", None);
                    }
                    Err(e) => check_problems(&e),
                }
            }
        }
        Err(e) => check_problems(&e),
    }
});

fn check_problems(e: &ConfigError) {
    let msg = e.to_string();
    assert!(!msg.is_empty());
    for p in e.problems() {
        assert!(!p.key.is_empty(), "a problem without a key: {msg}");
        assert!(!p.message.is_empty(), "a problem without a message: {msg}");
    }
}
