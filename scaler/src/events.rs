//! Decoding of ring-buffer records into typed events (memory pressure and CPU).
//!
//! The record layout is [`scaler_common::Event`], defined once for kernel and user code. Decoding
//! reads the fields explicitly (little-endian, as the BPF target of this host writes them) with
//! the `bytes` crate rather than casting, so a short or corrupt record is an error, never UB.

use bytes::Buf;
use scaler_common::{
    Event, EventKind, EVENT_FLAG_ANCESTOR, EVENT_FLAG_OBSERVED, EVENT_FLAG_WAKEUP, EVENT_SIZE,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ring-buffer record of {0} bytes, expected {EVENT_SIZE}")]
    Length(usize),
    #[error("ring-buffer record of unknown kind {0}")]
    Kind(u32),
}

/// A decoded event. The name is historical: CPU kinds (`CpuQuotaNear`, `RunqLatency`) decode
/// into it too, with the fields meaning what [`EventKind`] documents; [`MemEvent::cpu`] gives
/// them typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEvent {
    pub kind: EventKind,
    /// Kernel CLOCK_MONOTONIC timestamp, ns.
    pub ts_ns: u64,
    /// Kernfs id of the task's memory cgroup.
    pub cgroup_id: u64,
    /// Kernfs id of the memory cgroup whose limit binds (itself or an ancestor).
    pub target_id: u64,
    /// Usage of the target in bytes when the event fired (0 if not reported).
    pub usage: u64,
    /// Limit of the target in bytes (u64::MAX: unlimited).
    pub limit: u64,
    /// Kind-specific value: stall (ns) for reclaim end and direct reclaim, the allocation order
    /// for reclaim begin, the headroom for usage_high.
    pub value: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
    /// The kernel woke the consumer for this event.
    pub woke: bool,
    /// The binding limit is an ancestor's.
    pub ancestor: bool,
    /// An observe-only event: no watched level covers its cgroup, the kernel reported it only
    /// because every cgroup is observed (`agent.observe_all`, `scaler watch` without
    /// `--cgroup`). Never submitted with a wakeup; shed in the kernel under load.
    pub observed: bool,
}

impl MemEvent {
    /// The task name, up to its first NUL.
    pub fn comm(&self) -> &str {
        let end = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        std::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }

    /// The stall in ns, for the kinds that carry one.
    pub fn stall_ns(&self) -> Option<u64> {
        matches!(self.kind, EventKind::ReclaimEnd | EventKind::DirectReclaim).then_some(self.value)
    }

    /// Whether this event calls for a memory decision (as opposed to being informational).
    pub fn is_pressure(&self) -> bool {
        matches!(
            self.kind,
            EventKind::ReclaimBegin | EventKind::UsageHigh | EventKind::OomKill
        )
    }

    /// The CPU figures of a CPU event (`None` for memory kinds).
    pub fn cpu(&self) -> Option<CpuEvent> {
        match self.kind {
            EventKind::CpuQuotaNear => Some(CpuEvent::QuotaNear {
                used_ns: self.usage,
                quota_ns: self.limit,
                period_ns: self.value,
            }),
            EventKind::RunqLatency => Some(CpuEvent::RunqLatency {
                latency_ns: self.value,
                samples: self.usage,
                target_ns: self.limit,
            }),
            _ => None,
        }
    }
}

/// The figures of a CPU event, in the cpu cgroup `MemEvent::cgroup_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuEvent {
    /// The cgroup used `used_ns` of its `quota_ns` within the current `period_ns`.
    QuotaNear {
        used_ns: u64,
        quota_ns: u64,
        period_ns: u64,
    },
    /// A run-queue wait of `latency_ns` made more than 1% of the period's `samples` exceed
    /// `target_ns` (the period's p99 is above the target).
    RunqLatency {
        latency_ns: u64,
        samples: u64,
        target_ns: u64,
    },
}

impl CpuEvent {
    /// Used / quota within the period (quota-near only).
    pub fn quota_fraction(&self) -> Option<f64> {
        match *self {
            Self::QuotaNear {
                used_ns, quota_ns, ..
            } if quota_ns > 0 => Some(used_ns as f64 / quota_ns as f64),
            _ => None,
        }
    }
}

/// Decodes one record. No allocation.
pub fn decode(mut buf: &[u8]) -> Result<MemEvent, DecodeError> {
    if buf.len() < EVENT_SIZE {
        return Err(DecodeError::Length(buf.len()));
    }
    let ts_ns = buf.get_u64_le();
    let cgroup_id = buf.get_u64_le();
    let target_id = buf.get_u64_le();
    let usage = buf.get_u64_le();
    let limit = buf.get_u64_le();
    let value = buf.get_u64_le();
    let pid = buf.get_u32_le();
    let tid = buf.get_u32_le();
    let kind_raw = buf.get_u32_le();
    let flags = buf.get_u32_le();
    let mut comm = [0u8; 16];
    buf.copy_to_slice(&mut comm);
    let kind = EventKind::from_u32(kind_raw).ok_or(DecodeError::Kind(kind_raw))?;
    Ok(MemEvent {
        kind,
        ts_ns,
        cgroup_id,
        target_id: if target_id == 0 { cgroup_id } else { target_id },
        usage,
        limit,
        value,
        pid,
        tid,
        comm,
        woke: flags & EVENT_FLAG_WAKEUP != 0,
        ancestor: flags & EVENT_FLAG_ANCESTOR != 0,
        observed: flags & EVENT_FLAG_OBSERVED != 0,
    })
}

/// Encodes an [`Event`] the way the kernel lays it out (for tests and fuzzing).
pub fn encode(ev: &Event) -> [u8; EVENT_SIZE] {
    let mut out = [0u8; EVENT_SIZE];
    let mut w = &mut out[..];
    use bytes::BufMut;
    w.put_u64_le(ev.ts_ns);
    w.put_u64_le(ev.cgroup_id);
    w.put_u64_le(ev.target_id);
    w.put_u64_le(ev.usage);
    w.put_u64_le(ev.limit);
    w.put_u64_le(ev.value);
    w.put_u32_le(ev.pid);
    w.put_u32_le(ev.tid);
    w.put_u32_le(ev.kind);
    w.put_u32_le(ev.flags);
    w.put_slice(&ev.comm);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"alloc");
        Event {
            ts_ns: 123_456_789,
            cgroup_id: 42,
            target_id: 7,
            usage: 64 << 20,
            limit: 64 << 20,
            value: 3,
            pid: 1000,
            tid: 1001,
            kind: EventKind::ReclaimBegin as u32,
            flags: EVENT_FLAG_WAKEUP | EVENT_FLAG_ANCESTOR,
            comm,
        }
    }

    #[test]
    fn layout_matches_the_repr_c_struct() {
        // The kernel writes the #[repr(C)] struct's bytes; decode must read the same fields.
        let ev = sample();
        // SAFETY: Event is repr(C), Pod, 80 bytes with no padding.
        let raw: [u8; EVENT_SIZE] = unsafe { std::mem::transmute(ev) };
        assert_eq!(raw, encode(&ev));
        let d = decode(&raw).unwrap();
        assert_eq!(d.kind, EventKind::ReclaimBegin);
        assert_eq!((d.ts_ns, d.cgroup_id, d.target_id), (123_456_789, 42, 7));
        assert_eq!((d.usage, d.limit, d.value), (64 << 20, 64 << 20, 3));
        assert_eq!((d.pid, d.tid), (1000, 1001));
        assert_eq!(d.comm(), "alloc");
        assert!(d.woke && d.ancestor && d.is_pressure());
        assert_eq!(d.stall_ns(), None);
    }

    #[test]
    fn stall_only_for_end_kinds() {
        let mut ev = sample();
        ev.kind = EventKind::ReclaimEnd as u32;
        ev.value = 5_000;
        ev.flags = 0;
        let d = decode(&encode(&ev)).unwrap();
        assert_eq!(d.stall_ns(), Some(5_000));
        assert!(!d.woke && !d.ancestor && !d.is_pressure());
        assert!(!d.observed);
    }

    #[test]
    fn observe_only_flag_decodes_without_a_wakeup() {
        let mut ev = sample();
        ev.flags = EVENT_FLAG_OBSERVED;
        let d = decode(&encode(&ev)).unwrap();
        assert!(d.observed && !d.woke && !d.ancestor);
        // The flags are independent bits.
        ev.flags = EVENT_FLAG_OBSERVED | EVENT_FLAG_ANCESTOR;
        let d = decode(&encode(&ev)).unwrap();
        assert!(d.observed && d.ancestor && !d.woke);
        assert!(!decode(&encode(&sample())).unwrap().observed);
    }

    #[test]
    fn zero_target_means_own_cgroup() {
        let mut ev = sample();
        ev.target_id = 0;
        assert_eq!(decode(&encode(&ev)).unwrap().target_id, 42);
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let raw = encode(&sample());
        assert_eq!(decode(&raw[..79]), Err(DecodeError::Length(79)));
        assert_eq!(decode(&[]), Err(DecodeError::Length(0)));
        let mut ev = sample();
        ev.kind = 99;
        assert_eq!(decode(&encode(&ev)), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn comm_without_nul_and_non_utf8() {
        let mut ev = sample();
        ev.comm = *b"abcdefghijklmnop";
        assert_eq!(decode(&encode(&ev)).unwrap().comm(), "abcdefghijklmnop");
        ev.comm = [0xff; 16];
        assert_eq!(decode(&encode(&ev)).unwrap().comm(), "?");
    }

    #[test]
    fn cpu_quota_near_fields() {
        let mut ev = sample();
        ev.kind = EventKind::CpuQuotaNear as u32;
        ev.usage = 16_000_000;
        ev.limit = 20_000_000;
        ev.value = 100_000_000;
        ev.target_id = ev.cgroup_id;
        let d = decode(&encode(&ev)).unwrap();
        assert_eq!(d.kind.as_str(), "cpu_quota_near");
        assert!(!d.is_pressure(), "CPU events are not memory pressure");
        assert_eq!(d.stall_ns(), None);
        let c = d.cpu().unwrap();
        assert_eq!(
            c,
            CpuEvent::QuotaNear {
                used_ns: 16_000_000,
                quota_ns: 20_000_000,
                period_ns: 100_000_000
            }
        );
        assert_eq!(c.quota_fraction(), Some(0.8));
    }

    #[test]
    fn runq_latency_fields() {
        let mut ev = sample();
        ev.kind = EventKind::RunqLatency as u32;
        ev.usage = 150;
        ev.limit = 5_000_000;
        ev.value = 7_500_000;
        let d = decode(&encode(&ev)).unwrap();
        assert_eq!(d.kind.as_str(), "runq_latency");
        let c = d.cpu().unwrap();
        assert_eq!(
            c,
            CpuEvent::RunqLatency {
                latency_ns: 7_500_000,
                samples: 150,
                target_ns: 5_000_000
            }
        );
        assert_eq!(c.quota_fraction(), None);
    }

    #[test]
    fn memory_kinds_have_no_cpu_figures() {
        for k in 1..=5u32 {
            let mut ev = sample();
            ev.kind = k;
            assert_eq!(decode(&encode(&ev)).unwrap().cpu(), None, "kind {k}");
        }
        for k in 6..=7u32 {
            let mut ev = sample();
            ev.kind = k;
            assert!(decode(&encode(&ev)).unwrap().cpu().is_some(), "kind {k}");
        }
        let mut ev = sample();
        ev.kind = 8;
        assert_eq!(decode(&encode(&ev)), Err(DecodeError::Kind(8)));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
