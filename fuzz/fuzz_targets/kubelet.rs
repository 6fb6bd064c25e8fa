//! The kubelet's configuration file and Kubernetes quantities never panic, whatever the text:
//! every input is either read or rejected with an error that names a key, and what the agent
//! computes from figures it read never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scaler::kubelet::{parse_config, parse_quantity, Threshold};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_quantity(text);
    if let Ok(t) = Threshold::parse(text) {
        let _ = t.to_string();
        for capacity in [0, 1 << 30, u64::MAX] {
            let _ = t.bytes(capacity);
        }
    }
    match parse_config(text) {
        Ok(k) => {
            let _ = k.describe();
            for capacity in [0, 24 << 30, u64::MAX] {
                let _ = k.eviction_threshold(capacity);
                let _ = k.allocatable(capacity);
            }
        }
        Err(e) => {
            assert!(!e.key.is_empty() && !e.message.is_empty(), "{e}");
        }
    }
});
