//! Ring-buffer record decoding never panics, and what it accepts round-trips: the fields read
//! are the bytes the kernel would have written for them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scaler::events::{decode, encode, DecodeError};
use scaler_common::{Event, EVENT_FLAG_ANCESTOR, EVENT_FLAG_WAKEUP, EVENT_SIZE};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(ev) => {
            assert!(data.len() >= EVENT_SIZE);
            let _ = ev.comm();
            let _ = ev.stall_ns();
            let _ = ev.is_pressure();
            let raw_target = u64::from_le_bytes(data[16..24].try_into().unwrap());
            let flags = u32::from_le_bytes(data[60..64].try_into().unwrap());
            assert_eq!(
                ev.target_id,
                if raw_target == 0 {
                    ev.cgroup_id
                } else {
                    raw_target
                }
            );
            // Re-encode with the raw target and flags: the same 80 bytes come back.
            let back = Event {
                ts_ns: ev.ts_ns,
                cgroup_id: ev.cgroup_id,
                target_id: raw_target,
                usage: ev.usage,
                limit: ev.limit,
                value: ev.value,
                pid: ev.pid,
                tid: ev.tid,
                kind: ev.kind as u32,
                flags,
                comm: ev.comm,
            };
            assert_eq!(&encode(&back)[..], &data[..EVENT_SIZE]);
            assert_eq!(ev.woke, flags & EVENT_FLAG_WAKEUP != 0);
            assert_eq!(ev.ancestor, flags & EVENT_FLAG_ANCESTOR != 0);
        }
        Err(DecodeError::Length(n)) => assert!(n < EVENT_SIZE && n == data.len()),
        Err(DecodeError::Kind(k)) => {
            assert!(data.len() >= EVENT_SIZE);
            assert_eq!(k, u32::from_le_bytes(data[56..60].try_into().unwrap()));
        }
    }
});
