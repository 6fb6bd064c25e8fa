//! The engine loop with a fake ring buffer and fake limit writers: events in, writes and
//! records out, on the real engine thread.

use std::{
    collections::VecDeque,
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
    sync::{mpsc::Receiver, Arc, Mutex},
    time::Duration,
};

use nix::sys::eventfd::{EfdFlags, EventFd};
use scaler_common::{Event, EventKind, EVENT_FLAG_WAKEUP};

use super::*;
use crate::{
    actuator::{ActuatorError, LimitWriter, Setting, WriteMark},
    cgroupfs::{CpuQuota, Limit},
    clock::monotonic_ns,
    decider::{CpuPolicy, MemoryPolicy, MemorySignal, Reason, Resource, WriteOutcome},
    events::encode,
};

const MIB: u64 = 1 << 20;

/// Records pushed by the test, readable through an eventfd like a ring buffer's fd.
#[derive(Clone)]
struct FakeRing {
    queue: Arc<Mutex<VecDeque<Vec<u8>>>>,
    ready: Arc<EventFd>,
}

impl FakeRing {
    fn new() -> Self {
        Self {
            queue: Arc::default(),
            ready: Arc::new(
                EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap(),
            ),
        }
    }

    fn push_bytes(&self, b: Vec<u8>) {
        self.queue.lock().unwrap().push_back(b);
        self.ready.write(1).unwrap();
    }

    fn push(&self, ev: Event) {
        self.push_bytes(encode(&ev).to_vec());
    }
}

impl RecordSource for FakeRing {
    fn fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }

    fn next_record(&mut self, f: impl FnOnce(&[u8])) -> bool {
        let next = self.queue.lock().unwrap().pop_front();
        match next {
            Some(b) => {
                f(&b);
                true
            }
            None => {
                let _ = self.ready.read();
                false
            }
        }
    }
}

/// What a fake writer was asked to write.
type Writes = Arc<Mutex<Vec<u64>>>;

#[derive(Debug)]
struct FakeWriter {
    current: Mutex<Setting>,
    writes: Writes,
    refuse: bool,
    /// A value the limit's owner wrote to the "file", found by the next re-read.
    owner: Owner,
    /// Re-reads made.
    refreshes: Arc<std::sync::atomic::AtomicU64>,
    /// What `LimitWriter::limit_only` answers.
    limit_only: bool,
}

/// A fake writer's file, as its owner writes it.
type Owner = Arc<Mutex<Option<Setting>>>;

impl FakeWriter {
    fn boxed(current: Setting, refuse: bool) -> (Box<dyn LimitWriter>, Writes) {
        let (w, writes, _) = Self::with_owner(current, refuse);
        (w, writes)
    }

    /// Like `boxed`, with a handle to write the "file" as its owner.
    fn with_owner(current: Setting, refuse: bool) -> (Box<dyn LimitWriter>, Writes, Owner) {
        let writes = Writes::default();
        let owner = Owner::default();
        let w = FakeWriter {
            current: Mutex::new(current),
            writes: writes.clone(),
            refuse,
            owner: owner.clone(),
            refreshes: Arc::default(),
            limit_only: false,
        };
        (Box::new(w), writes, owner)
    }
}

impl LimitWriter for FakeWriter {
    fn current(&self) -> Setting {
        *self.current.lock().unwrap()
    }

    fn write(&self, new: u64) -> Result<u64, ActuatorError> {
        self.writes.lock().unwrap().push(new);
        if self.refuse {
            return Err(ActuatorError::Refused {
                path: PathBuf::from("/fake/memory.limit_in_bytes"),
                value: new.to_string(),
                errno: nix::errno::Errno::EBUSY,
                hint: "test",
            });
        }
        let mut cur = self.current.lock().unwrap();
        *cur = match *cur {
            Setting::Memory(_) => Setting::Memory(Limit::from_bytes(new)),
            Setting::Cpu(q) => Setting::Cpu(CpuQuota::Quota {
                quota_us: new,
                period_us: match q {
                    CpuQuota::Quota { period_us, .. } => period_us,
                    CpuQuota::Max => 100_000,
                },
            }),
        };
        Ok(monotonic_ns())
    }

    fn refresh(&self) -> Result<(Setting, Setting), ActuatorError> {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut cur = self.current.lock().unwrap();
        let before = *cur;
        if let Some(owner) = self.owner.lock().unwrap().take() {
            *cur = owner;
        }
        Ok((before, *cur))
    }

    fn limit_only(&self) -> bool {
        self.limit_only
    }

    fn holds(&self, found: Setting, believed: u64) -> bool {
        match found {
            Setting::Memory(l) => l.as_u64_saturating() == believed,
            Setting::Cpu(CpuQuota::Max) => believed == u64::MAX,
            Setting::Cpu(CpuQuota::Quota { quota_us, .. }) => quota_us == believed,
        }
    }
}

fn start(ring: &FakeRing, dry_run: bool) -> (Engine, Receiver<Record>) {
    let mut e = Engine::start(
        ring.clone(),
        EngineConfig {
            dry_run,
            realtime_priority: None,
            tick: Duration::from_millis(10),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let rx = e.take_records().unwrap();
    (e, rx)
}

fn memory_policy() -> MemoryPolicy {
    MemoryPolicy {
        max: 1 << 30,
        ..MemoryPolicy::default()
    }
}

fn manage_memory(e: &Engine, id: u64, limit: u64, refuse: bool) -> Writes {
    let (writer, writes) = FakeWriter::boxed(Setting::Memory(Limit::Bytes(limit)), refuse);
    e.send(Command::Manage(Box::new(ManageRequest {
        id,
        path: Arc::from(format!("/test/{id}").as_str()),
        parent: None,
        policy: Policy::Memory(memory_policy()),
        writer,
        usage: limit / 2,
        sampled_ns: crate::clock::monotonic_ns(),
        mark: None,
    })))
    .unwrap();
    writes
}

/// An event with every field zero but these.
fn event(kind: EventKind, cgroup_id: u64, target_id: u64, usage: u64, limit: u64) -> Event {
    Event {
        ts_ns: monotonic_ns(),
        cgroup_id,
        target_id,
        usage,
        limit,
        value: 0,
        pid: 1,
        tid: 1,
        kind: kind as u32,
        flags: EVENT_FLAG_WAKEUP,
        comm: [0; 16],
    }
}

fn reclaim(cgroup: u64, target: u64, usage: u64, limit: u64) -> Event {
    event(EventKind::ReclaimBegin, cgroup, target, usage, limit)
}

/// The next action record (events are skipped), or a panic after 5 s.
fn next_action(rx: &Receiver<Record>) -> ActionRecord {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Record::Action(a)) => return a,
            Ok(Record::Event(_) | Record::Refused(_)) => {}
            Err(e) => panic!("no action record within 5 s: {e}"),
        }
    }
}

/// Waits until the engine has handled every command sent so far (a snapshot is a round trip).
fn sync(e: &Engine) -> Vec<Snapshot> {
    e.snapshot(Resource::Memory)
}

/// Waits until the engine has read `n` records in all (the ring is drained before commands
/// are, but a command may be taken while records pushed after it are still queued), then for
/// the commands sent so far.
fn drained(e: &Engine, n: u64) -> Vec<Snapshot> {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while e.stats().loop_stats.records.load(Ordering::Relaxed) < n {
        assert!(
            std::time::Instant::now() < end,
            "the engine read {} of {n} records within 5 s",
            e.stats().loop_stats.records.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    sync(e)
}

#[test]
fn pressure_on_a_managed_cgroup_is_written_once_per_storm_with_its_latency() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let writes = manage_memory(&e, 7, 64 * MIB, false);
    sync(&e);
    let ev = reclaim(7, 7, 64 * MIB, 64 * MIB);
    ring.push(ev);
    let a = next_action(&rx);
    assert_eq!(a.action.cgroup, 7);
    assert_eq!(a.action.resource, Resource::Memory);
    assert_eq!(a.action.reason, Reason::Pressure);
    assert_eq!(a.action.old, 64 * MIB);
    assert!(a.action.new > 64 * MIB);
    assert_eq!(a.outcome, WriteOutcome::Written);
    assert_eq!(a.action.trigger_ts_ns, ev.ts_ns);
    assert_eq!(a.latency_ns, a.done_ns - ev.ts_ns);
    assert_eq!(*writes.lock().unwrap(), vec![a.action.new]);
    // The rest of the storm (queued before the write completed, at the old limit) is coalesced.
    let mut late = reclaim(7, 7, 64 * MIB, 64 * MIB);
    late.ts_ns = ev.ts_ns + 1;
    ring.push(late);
    let snap = drained(&e, 2);
    assert_eq!(writes.lock().unwrap().len(), 1, "one write per storm");
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].memory_limit(), Some(Limit::Bytes(a.action.new)));
    assert_eq!(e.stats().actions.load(Ordering::Relaxed), 1);
    assert!(e.stats().loop_stats.records.load(Ordering::Relaxed) >= 2);
    e.stop().unwrap();
}

#[test]
fn a_refused_write_is_reported_with_its_errno_and_reverted() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let writes = manage_memory(&e, 3, 64 * MIB, true);
    sync(&e);
    ring.push(reclaim(3, 3, 64 * MIB, 64 * MIB));
    let a = next_action(&rx);
    assert_eq!(a.outcome, WriteOutcome::Failed);
    assert_eq!(a.errno, Some(libc::EBUSY));
    assert_eq!(writes.lock().unwrap().len(), 1);
    // The decider went back to the limit the kernel kept.
    let snap = sync(&e);
    assert_eq!(snap[0].memory_limit(), Some(Limit::Bytes(64 * MIB)));
    assert_eq!(e.stats().failed_writes.load(Ordering::Relaxed), 1);
    e.stop().unwrap();
}

#[test]
fn dry_run_decides_and_writes_nothing() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, true);
    let writes = manage_memory(&e, 5, 64 * MIB, false);
    sync(&e);
    ring.push(reclaim(5, 5, 64 * MIB, 64 * MIB));
    let a = next_action(&rx);
    assert_eq!(a.outcome, WriteOutcome::DryRun);
    assert!(writes.lock().unwrap().is_empty());
    e.stop().unwrap();
}

#[test]
fn unmanaged_cgroups_and_binding_ancestors_write_nothing_and_are_counted() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let writes = manage_memory(&e, 10, 64 * MIB, false);
    sync(&e);
    // Pressure in an unmanaged cgroup: nothing.
    ring.push(reclaim(99, 99, 64 * MIB, 64 * MIB));
    // Pressure in the managed cgroup, but its unmanaged parent (11) binds: counted.
    ring.push(reclaim(10, 11, 128 * MIB, 128 * MIB));
    // And a record that does not decode.
    ring.push_bytes(vec![1, 2, 3]);
    drained(&e, 3);
    assert!(writes.lock().unwrap().is_empty());
    let s = e.stats();
    assert_eq!(s.unmanaged_ancestor_binds.load(Ordering::Relaxed), 1);
    assert_eq!(s.loop_stats.decode_errors.load(Ordering::Relaxed), 1);
    assert_eq!(s.actions.load(Ordering::Relaxed), 0);
    // Both events still reach the slow side.
    let events = rx
        .try_iter()
        .filter(|r| matches!(r, Record::Event(_)))
        .count();
    assert_eq!(events, 2);
    e.stop().unwrap();
}

#[test]
fn cpu_quota_near_raises_the_quota_through_the_cpu_writer() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let (writer, writes) = FakeWriter::boxed(
        Setting::Cpu(CpuQuota::Quota {
            quota_us: 20_000,
            period_us: 100_000,
        }),
        false,
    );
    e.send(Command::Manage(Box::new(ManageRequest {
        id: 21,
        path: Arc::from("/cpu/21"),
        parent: None,
        policy: Policy::Cpu(CpuPolicy {
            max_cores: 2.0,
            ..CpuPolicy::default()
        }),
        writer,
        usage: 0,
        sampled_ns: crate::clock::monotonic_ns(),
        mark: None,
    })))
    .unwrap();
    // A memory manage of the same id is a different slot: it must not see CPU signals.
    let mem_writes = manage_memory(&e, 21, 64 * MIB, false);
    sync(&e);
    ring.push(Event {
        value: 100_000_000,
        ..event(EventKind::CpuQuotaNear, 21, 21, 17_000_000, 20_000_000)
    });
    let a = next_action(&rx);
    assert_eq!(a.action.resource, Resource::Cpu);
    assert_eq!(a.action.reason, Reason::CpuQuotaNear);
    assert_eq!(a.action.old, 20_000);
    assert!(a.action.new > 20_000);
    assert_eq!(*writes.lock().unwrap(), vec![a.action.new]);
    assert!(mem_writes.lock().unwrap().is_empty());
    let cpu = e.snapshot(Resource::Cpu);
    assert_eq!(cpu.len(), 1);
    assert_eq!(
        cpu[0].limit,
        Setting::Cpu(CpuQuota::Quota {
            quota_us: a.action.new,
            period_us: 100_000
        })
    );
    assert_eq!(e.stats().cpu_signals.load(Ordering::Relaxed), 1);
    // Forgotten: no longer in the snapshot, and its events decide nothing.
    e.send(Command::Forget(Resource::Cpu, 21)).unwrap();
    assert!(e.snapshot(Resource::Cpu).is_empty());
    assert_eq!(e.snapshot(Resource::Memory).len(), 1);
    e.stop().unwrap();
}

#[test]
fn samples_drive_scale_down_through_the_same_path() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let writes = manage_memory(&e, 8, 1 << 30, false);
    sync(&e);
    // A policy max below the limit, which the policy says to bring the owner's limit down to:
    // the first sample steps toward it, cooldown or not (a quarter of the way, as a scale-down
    // does).
    let mut p = memory_policy();
    p.max = 512 * MIB;
    p.lower_to_max = true;
    p.down_fraction = 0.25;
    let (writer, writes2) = FakeWriter::boxed(Setting::Memory(Limit::Bytes(1 << 30)), false);
    let mark = Arc::new(WriteMark::new(Setting::Memory(Limit::Bytes(1 << 30))));
    e.send(Command::Manage(Box::new(ManageRequest {
        id: 9,
        path: Arc::from("/test/9"),
        parent: None,
        policy: Policy::Memory(p),
        writer,
        usage: 16 * MIB,
        sampled_ns: crate::clock::monotonic_ns(),
        mark: Some(mark.clone()),
    })))
    .unwrap();
    e.send(Command::Signal(
        9,
        Signal::Memory(MemorySignal::Sample {
            ts_ns: monotonic_ns(),
            usage: 16 * MIB,
            limit: Limit::Bytes(1 << 30),
            working_set: 16 * MIB,
            psi_some_total_us: None,
            limit_hits: None,
            refaulted: None,
        }),
    ))
    .unwrap();
    let a = next_action(&rx);
    assert_eq!(a.action.cgroup, 9);
    assert_eq!(a.action.reason, Reason::ScaleDown);
    assert_eq!(a.action.new, 896 * MIB);
    assert_eq!(*writes2.lock().unwrap(), vec![896 * MIB]);
    // The write is marked for the slow side, whether or not its record arrives.
    assert_eq!(
        mark.read().map(|m| m.1),
        Some(Setting::Memory(Limit::Bytes(896 * MIB)))
    );
    assert!(writes.lock().unwrap().is_empty());
    e.send(Command::SetBudget(Budget::MemoryAvailable {
        bytes: 1 << 40,
        measured_ns: 0,
    }))
    .unwrap();
    sync(&e);
    e.stop().unwrap();
}

#[test]
fn stop_handles_what_was_already_queued() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let writes = manage_memory(&e, 4, 64 * MIB, false);
    sync(&e);
    ring.push(reclaim(4, 4, 64 * MIB, 64 * MIB));
    e.stop().unwrap();
    assert_eq!(writes.lock().unwrap().len(), 1);
    assert!(rx.try_iter().any(|r| matches!(r, Record::Action(_))));
}

#[test]
fn limit_hits_in_samples_raise_when_no_event_arrived() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let writes = manage_memory(&e, 12, 64 * MIB, false);
    sync(&e);
    let sample = |hits| {
        Command::Signal(
            12,
            Signal::Memory(MemorySignal::Sample {
                ts_ns: monotonic_ns(),
                usage: 64 * MIB,
                limit: Limit::from_bytes(64 * MIB),
                working_set: 64 * MIB,
                psi_some_total_us: None,
                limit_hits: Some(hits),
                refaulted: None,
            }),
        )
    };
    e.send(sample(0)).unwrap();
    sync(&e);
    std::thread::sleep(Duration::from_millis(2));
    // The ring buffer stays empty (its records were lost); the kernel's count grew.
    e.send(sample(40)).unwrap();
    let a = next_action(&rx);
    assert_eq!(a.action.reason, Reason::LimitHits);
    assert_eq!(*writes.lock().unwrap(), vec![a.action.new]);
    e.stop().unwrap();
}

/// A writer that counts its writes without allocating.
#[derive(Debug)]
struct CountingWriter {
    current: Mutex<Setting>,
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl LimitWriter for CountingWriter {
    fn current(&self) -> Setting {
        *self.current.lock().unwrap()
    }

    fn write(&self, new: u64) -> Result<u64, ActuatorError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        *self.current.lock().unwrap() = Setting::Memory(Limit::from_bytes(new));
        Ok(monotonic_ns())
    }

    fn refresh(&self) -> Result<(Setting, Setting), ActuatorError> {
        let cur = *self.current.lock().unwrap();
        Ok((cur, cur))
    }

    fn holds(&self, found: Setting, believed: u64) -> bool {
        found == Setting::Memory(Limit::from_bytes(believed))
    }
}

/// The hot path — an event in, the decision, the limit write, the feedback and the record
/// out — allocates nothing (the decider's own test counts the decider alone).
#[test]
fn the_hot_path_does_not_allocate() {
    use crate::decider::tests::counting::allocations;
    let (rec_tx, rec_rx) = std::sync::mpsc::sync_channel(1 << 16);
    let (_cmd_tx, cmd_rx) = std::sync::mpsc::channel();
    let cfg = EngineConfig::default();
    let mut h = super::ScalingHandler::new(&cfg, rec_tx, cmd_rx, Arc::default());
    let writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for id in 1..=100u64 {
        let w = CountingWriter {
            current: Mutex::new(Setting::Memory(Limit::Bytes(64 * MIB))),
            writes: writes.clone(),
        };
        h.command(Command::Manage(Box::new(ManageRequest {
            id,
            path: Arc::from(format!("/hot/{id}").as_str()),
            parent: None,
            policy: Policy::Memory(memory_policy()),
            writer: Box::new(w),
            usage: 32 * MIB,
            sampled_ns: crate::clock::monotonic_ns(),
            // The agent's write marks are on the hot path too.
            mark: Some(Arc::new(WriteMark::new(Setting::Memory(Limit::Bytes(
                64 * MIB,
            ))))),
        })));
    }
    let mut ev = reclaim(0, 0, 0, 0);
    let before = allocations();
    for round in 0..3u64 {
        for id in 1..=100u64 {
            let limit = (64 * MIB) << round;
            ev.ts_ns = monotonic_ns();
            ev.cgroup_id = id;
            ev.target_id = id;
            ev.usage = limit;
            ev.limit = limit;
            let decoded = crate::events::decode(&encode(&ev)).unwrap();
            Handler::on_event(&mut h, &decoded);
        }
    }
    let mut allocated = allocations() - before;
    assert!(writes.load(Ordering::Relaxed) >= 100, "raises were written");
    // The node can back nothing more: every raise is refused, counted and reported.
    h.command(Command::SetBudget(Budget::MemoryAvailable {
        bytes: 0,
        measured_ns: monotonic_ns(),
    }));
    let before = allocations();
    for id in 1..=100u64 {
        // A limit above ours (raised behind our back): adopted, then the raise is refused.
        let limit = 4096 * MIB;
        ev.ts_ns = monotonic_ns() + 10_000_000_000;
        ev.cgroup_id = id;
        ev.target_id = id;
        ev.usage = limit;
        ev.limit = limit;
        let decoded = crate::events::decode(&encode(&ev)).unwrap();
        Handler::on_event(&mut h, &decoded);
    }
    allocated += allocations() - before;
    assert_eq!(allocated, 0, "allocations on the hot path");
    let records: Vec<Record> = rec_rx.try_iter().collect();
    assert!(records.len() >= 300);
    let refused = records
        .iter()
        .filter(|r| matches!(r, Record::Refused(_)))
        .count();
    assert!(refused >= 90, "{refused} refusals reported");
}

/// Records the slow side never takes (a full channel) lose no write: the mark the slow side
/// compares samples with holds every write, so the agent's raise is never taken for someone
/// else's, and no original depends on a record arriving.
#[test]
fn dropped_records_lose_no_write_mark() {
    let (rec_tx, rec_rx) = std::sync::mpsc::sync_channel(0);
    let (_cmd_tx, cmd_rx) = std::sync::mpsc::channel();
    let stats: Arc<EngineStats> = Arc::default();
    let mut h = super::ScalingHandler::new(&EngineConfig::default(), rec_tx, cmd_rx, stats.clone());
    let writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mark = Arc::new(WriteMark::new(Setting::Memory(Limit::Bytes(64 * MIB))));
    h.command(Command::Manage(Box::new(ManageRequest {
        id: 1,
        path: Arc::from("/dropped"),
        parent: None,
        policy: Policy::Memory(memory_policy()),
        writer: Box::new(CountingWriter {
            current: Mutex::new(Setting::Memory(Limit::Bytes(64 * MIB))),
            writes: writes.clone(),
        }),
        usage: 60 * MIB,
        sampled_ns: monotonic_ns(),
        mark: Some(mark.clone()),
    })));
    let mut ev = reclaim(1, 1, 63 * MIB, 64 * MIB);
    ev.ts_ns = monotonic_ns();
    let decoded = crate::events::decode(&encode(&ev)).unwrap();
    Handler::on_event(&mut h, &decoded);
    assert_eq!(writes.load(Ordering::Relaxed), 1, "raised");
    assert!(
        stats.records_dropped.load(Ordering::Relaxed) >= 1,
        "records dropped"
    );
    assert_eq!(rec_rx.try_iter().count(), 0);
    let (_, ours) = mark.read().expect("no write under way");
    assert!(
        matches!(ours, Setting::Memory(Limit::Bytes(b)) if b > 64 * MIB),
        "{ours:?}"
    );
}

#[test]
fn a_raise_the_node_cannot_back_is_refused_counted_and_reported() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let writes = manage_memory(&e, 12, 64 * MIB, false);
    // The sampler says the node can back 1 MiB beyond its reserve: less than the hysteresis.
    e.send(Command::SetBudget(Budget::MemoryAvailable {
        bytes: MIB,
        measured_ns: monotonic_ns(),
    }))
    .unwrap();
    sync(&e);
    ring.push(reclaim(12, 12, 64 * MIB, 64 * MIB));
    drained(&e, 1);
    assert!(writes.lock().unwrap().is_empty(), "the limit is untouched");
    assert_eq!(e.stats().refused(Resource::Memory, "budget"), 1);
    assert_eq!(e.stats().refused(Resource::Memory, "at_max"), 0);
    assert_eq!(e.stats().refused(Resource::Cpu, "budget"), 0);
    let r = rx
        .try_iter()
        .find_map(|r| match r {
            Record::Refused(r) => Some(r),
            _ => None,
        })
        .expect("a refusal record");
    assert_eq!(r.resource, Resource::Memory);
    assert_eq!(r.skip.refusal(), Some("budget"));
    assert_eq!(r.refusal.cgroup, 12);
    assert_eq!(r.refusal.limit, 64 * MIB);
    assert_eq!(r.refusal.allowed, Some(65 * MIB));
    assert!(r.refusal.wanted.unwrap() > 65 * MIB);
    // Memory freed on the node (a new sample): the next storm is rescued.
    e.send(Command::SetBudget(Budget::MemoryAvailable {
        bytes: 1 << 30,
        measured_ns: monotonic_ns(),
    }))
    .unwrap();
    sync(&e);
    let mut ev = reclaim(12, 12, 64 * MIB, 64 * MIB);
    ev.ts_ns = monotonic_ns() + 5_000_000_000;
    ring.push(ev);
    let a = next_action(&rx);
    assert!(a.action.new > 64 * MIB);
    e.stop().unwrap();
}

/// A burst of discovery commands (managing and forgetting many cgroups at once) is taken in
/// bounded batches: each tick handles at most [`super::scaling::COMMANDS_PER_TICK`] and says
/// that more is left, so the loop drains the ring buffer between batches.
#[test]
fn commands_are_taken_in_bounded_batches() {
    let (rec_tx, _rec_rx) = std::sync::mpsc::sync_channel(16);
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
    let mut h =
        super::ScalingHandler::new(&EngineConfig::default(), rec_tx, cmd_rx, Arc::default());
    let n = 1000u64;
    for id in 1..=n {
        let (writer, _) = FakeWriter::boxed(Setting::Memory(Limit::Bytes(64 * MIB)), false);
        cmd_tx
            .send(Command::Manage(Box::new(ManageRequest {
                id,
                path: Arc::from(format!("/storm/{id}").as_str()),
                parent: (id > 1).then_some(1),
                policy: Policy::Memory(memory_policy()),
                writer,
                usage: 0,
                sampled_ns: 0,
                mark: None,
            })))
            .unwrap();
        if id > 1 {
            cmd_tx.send(Command::Forget(Resource::Memory, id)).unwrap();
        }
    }
    let mut ticks = 0;
    while Handler::on_tick(&mut h) {
        ticks += 1;
        assert!(ticks < 10_000);
    }
    let batches = (2 * n as usize - 1).div_ceil(super::scaling::COMMANDS_PER_TICK);
    assert!(ticks + 1 >= batches, "{ticks} ticks for {batches} batches");
    assert!(!Handler::on_tick(&mut h), "nothing left");
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    h.command(Command::Snapshot(Resource::Memory, tx));
    let managed: Vec<u64> = rx.recv().unwrap().iter().map(|s| s.id).collect();
    assert_eq!(
        managed,
        [1],
        "every storm cgroup forgotten, the parent kept"
    );
}

/// Manages a memory cgroup at `limit` with a fake writer whose "file" the test writes as the
/// limit's owner, and a write mark: (writes, owner, mark).
fn manage_owned(e: &Engine, id: u64, limit: Limit) -> (Writes, Owner, Arc<WriteMark>) {
    let (writer, writes, owner) = FakeWriter::with_owner(Setting::Memory(limit), false);
    let mark = Arc::new(WriteMark::new(Setting::Memory(limit)));
    e.send(Command::Manage(Box::new(ManageRequest {
        id,
        path: Arc::from(format!("/test/{id}").as_str()),
        parent: None,
        policy: Policy::Memory(memory_policy()),
        writer,
        usage: 16 * MIB,
        sampled_ns: crate::clock::monotonic_ns(),
        mark: Some(mark.clone()),
    })))
    .unwrap();
    (writes, owner, mark)
}

/// Item 4 of issue 16, "before every write": the owner wrote the limit after the decision was
/// made from the old one; the engine re-reads the file before writing, finds the owner's value
/// and adopts it instead of overwriting it (marked for the slow side), and the next pressure
/// is answered from the owner's value.
#[test]
fn an_owners_write_found_just_before_a_write_is_adopted_not_overwritten() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let (writes, owner, mark) = manage_owned(&e, 21, Limit::Bytes(64 * MIB));
    sync(&e);
    // The event saw 64M (what the decider believes); the owner writes 100M meanwhile.
    *owner.lock().unwrap() = Some(Setting::Memory(Limit::Bytes(100 * MIB)));
    ring.push(reclaim(21, 21, 64 * MIB, 64 * MIB));
    let snap = drained(&e, 1);
    assert!(writes.lock().unwrap().is_empty(), "nothing written over it");
    assert_eq!(snap[0].limit, Setting::Memory(Limit::Bytes(100 * MIB)));
    let ad = mark.adoption().unwrap();
    assert_eq!(ad.count, 1);
    assert_eq!(ad.old, Setting::Memory(Limit::Bytes(64 * MIB)));
    assert_eq!(ad.new, Setting::Memory(Limit::Bytes(100 * MIB)));
    assert_eq!(e.stats().failed_writes.load(Ordering::Relaxed), 0);
    // Pressure at the owner's limit: raised from it.
    ring.push(reclaim(21, 21, 100 * MIB, 100 * MIB));
    let a = next_action(&rx);
    assert_eq!(a.action.old, 100 * MIB);
    assert!(a.action.new > 100 * MIB);
    assert_eq!(*writes.lock().unwrap(), vec![a.action.new]);
    assert_eq!(
        mark.adoption().unwrap().count,
        1,
        "its own write is no adoption"
    );
    assert_eq!(
        mark.read().unwrap().1,
        Setting::Memory(Limit::Bytes(a.action.new))
    );
    e.stop().unwrap();
}

/// Item 2 of issue 16: a cgroup found while its limit was still `max`; its owner then wrote
/// 64M. The first pressure event reports 64M, which the decider does not believe: the engine
/// re-reads the file, adopts the owner's 64M and raises from it at once (before, the event
/// was taken for a stale one and coalesced until the next sample, too late).
#[test]
fn an_event_that_disagrees_with_the_decider_rereads_the_limit_and_raises_from_the_owners() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let (writes, owner, mark) = manage_owned(&e, 22, Limit::Max);
    sync(&e);
    *owner.lock().unwrap() = Some(Setting::Memory(Limit::Bytes(64 * MIB)));
    ring.push(reclaim(22, 22, 64 * MIB, 64 * MIB));
    let a = next_action(&rx);
    assert_eq!(a.action.old, 64 * MIB, "{a:?}");
    assert!(a.action.new > 64 * MIB);
    assert_eq!(*writes.lock().unwrap(), vec![a.action.new]);
    let ad = mark.adoption().unwrap();
    assert_eq!(ad.count, 1);
    assert_eq!(ad.old, Setting::Memory(Limit::Max));
    assert_eq!(ad.new, Setting::Memory(Limit::Bytes(64 * MIB)));
    e.stop().unwrap();
}

/// The kubelet applies an older resize patch of the agent's (recorded in the mark as asked)
/// just before the engine writes: an echo, the agent's own value; the decision is written
/// over it, nothing is adopted.
#[test]
fn an_echo_of_an_older_patch_found_just_before_a_write_is_written_over() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let (writes, owner, mark) = manage_owned(&e, 24, Limit::Bytes(64 * MIB));
    sync(&e);
    mark.asked(Setting::Memory(Limit::Bytes(48 * MIB)), monotonic_ns());
    *owner.lock().unwrap() = Some(Setting::Memory(Limit::Bytes(48 * MIB)));
    ring.push(reclaim(24, 24, 64 * MIB, 64 * MIB));
    let a = next_action(&rx);
    assert_eq!(a.action.old, 64 * MIB, "{a:?}");
    assert_eq!(
        *writes.lock().unwrap(),
        vec![a.action.new],
        "written over the echo"
    );
    assert_eq!(mark.adoption().unwrap().count, 0, "no owner's write");
    e.stop().unwrap();
}

/// An event that reports a limit the decider does not believe, and the file holds an echo of
/// one of the agent's patches: the limit in force (raised from at once), not an owner's
/// write; the mark holds it as the agent's, so the slow side does not adopt it either.
#[test]
fn an_event_that_finds_an_echo_raises_from_it_without_adopting_it() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let (writes, owner, mark) = manage_owned(&e, 25, Limit::Bytes(128 * MIB));
    sync(&e);
    mark.asked(Setting::Memory(Limit::Bytes(96 * MIB)), monotonic_ns());
    *owner.lock().unwrap() = Some(Setting::Memory(Limit::Bytes(96 * MIB)));
    ring.push(reclaim(25, 25, 96 * MIB, 96 * MIB));
    let a = next_action(&rx);
    assert_eq!(a.action.old, 96 * MIB, "{a:?}");
    assert!(a.action.new > 96 * MIB);
    assert_eq!(*writes.lock().unwrap(), vec![a.action.new]);
    assert_eq!(mark.adoption().unwrap().count, 0, "no owner's write");
    e.stop().unwrap();
}

/// A dry run re-reads nothing: its decider's limit is the one it would have written.
#[test]
fn a_dry_run_adopts_nothing_from_a_reread() {
    let ring = FakeRing::new();
    let (e, _rx) = start(&ring, true);
    let (writes, owner, mark) = manage_owned(&e, 23, Limit::Max);
    sync(&e);
    *owner.lock().unwrap() = Some(Setting::Memory(Limit::Bytes(64 * MIB)));
    ring.push(reclaim(23, 23, 64 * MIB, 64 * MIB));
    drained(&e, 1);
    assert!(writes.lock().unwrap().is_empty());
    assert_eq!(mark.adoption().unwrap().count, 0);
    e.stop().unwrap();
}

/// A handler managing cgroup 1 at 64 MiB through a fake writer that manages the limit file
/// alone (`limit_only`) or not; returns the handler, the writer's re-read count, its writes,
/// its owner's handle and the stats.
fn reread_handler(
    limit_only: bool,
) -> (
    super::ScalingHandler,
    Arc<std::sync::atomic::AtomicU64>,
    Writes,
    Owner,
    Arc<EngineStats>,
    Receiver<Record>,
) {
    let (rec_tx, rec_rx) = std::sync::mpsc::sync_channel(1 << 10);
    let (_cmd_tx, cmd_rx) = std::sync::mpsc::channel();
    let stats: Arc<EngineStats> = Arc::default();
    let cfg = EngineConfig {
        reported_limit_fresh_ns: super::REPORTED_LIMIT_FRESH_NS,
        ..EngineConfig::default()
    };
    let mut h = super::ScalingHandler::new(&cfg, rec_tx, cmd_rx, stats.clone());
    let refreshes: Arc<std::sync::atomic::AtomicU64> = Arc::default();
    let writes = Writes::default();
    let owner = Owner::default();
    h.command(Command::Manage(Box::new(ManageRequest {
        id: 1,
        path: Arc::from("/reread"),
        parent: None,
        policy: Policy::Memory(memory_policy()),
        writer: Box::new(FakeWriter {
            current: Mutex::new(Setting::Memory(Limit::Bytes(64 * MIB))),
            writes: writes.clone(),
            refuse: false,
            owner: owner.clone(),
            refreshes: refreshes.clone(),
            limit_only,
        }),
        usage: 60 * MIB,
        sampled_ns: monotonic_ns(),
        mark: None,
    })));
    (h, refreshes, writes, owner, stats, rec_rx)
}

/// The re-read before a write is skipped when the kernel's event has just reported the limit
/// the action starts from and the writer manages the limit file alone; it stays when the
/// writer manages more files (v1 memsw, v2 memory.high), when the event is older than
/// `REPORTED_LIMIT_FRESH_NS`, and for signals that are not kernel events (samples).
#[test]
fn a_fresh_event_reporting_the_limit_stands_for_the_reread() {
    let on = |h: &mut super::ScalingHandler, age_ns: u64| {
        let mut ev = reclaim(1, 1, 64 * MIB, 64 * MIB);
        ev.ts_ns = monotonic_ns() - age_ns;
        let decoded = crate::events::decode(&encode(&ev)).unwrap();
        Handler::on_event(h, &decoded);
    };
    // Limit file alone, fresh event at the believed limit: written without a re-read.
    let (mut h, refreshes, writes, _, stats, _rx) = reread_handler(true);
    on(&mut h, 0);
    assert_eq!(writes.lock().unwrap().len(), 1, "the raise is written");
    assert_eq!(refreshes.load(Ordering::Relaxed), 0, "no re-read");
    assert_eq!(stats.rereads_skipped.load(Ordering::Relaxed), 1);
    // More files managed with the limit: re-read.
    let (mut h, refreshes, writes, _, stats, _rx) = reread_handler(false);
    on(&mut h, 0);
    assert_eq!(writes.lock().unwrap().len(), 1);
    assert_eq!(
        refreshes.load(Ordering::Relaxed),
        1,
        "re-read before the write"
    );
    assert_eq!(stats.rereads_skipped.load(Ordering::Relaxed), 0);
    // An event older than the bound: re-read, and an owner's value found then is adopted,
    // not overwritten.
    let (mut h, refreshes, writes, owner, stats, _rx) = reread_handler(true);
    *owner.lock().unwrap() = Some(Setting::Memory(Limit::Bytes(96 * MIB)));
    on(&mut h, 2 * super::REPORTED_LIMIT_FRESH_NS);
    assert_eq!(
        refreshes.load(Ordering::Relaxed),
        1,
        "a stale report is re-read"
    );
    assert!(
        writes.lock().unwrap().is_empty(),
        "the owner's write stands"
    );
    assert_eq!(stats.rereads_skipped.load(Ordering::Relaxed), 0);
}

/// With one engine thread per CPU, every record is read once, by one of them, and a stop
/// ends them all.
#[test]
fn per_cpu_engine_threads_read_each_record_once_and_stop_together() {
    let ring = FakeRing::new();
    let (e, rx) = start(&ring, false);
    let cpus = super::scaling::allowed_cpus().len();
    assert_eq!(
        e.threads(),
        if (2..=super::MAX_ENGINE_THREADS).contains(&cpus) {
            cpus
        } else {
            1
        }
    );
    let n = 500u64;
    for i in 0..n {
        // Unmanaged cgroups: read and forwarded, nothing written.
        ring.push(reclaim(1000 + i, 1000 + i, MIB, MIB));
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drained(&e, n);
    assert_eq!(e.stats().loop_stats.records.load(Ordering::Relaxed), n);
    let events = rx
        .try_iter()
        .filter(|r| matches!(r, Record::Event(_)))
        .count() as u64;
    assert_eq!(events, n, "each record handled once");
    assert!(e.is_running());
    e.stop().unwrap();
}

/// A panic on one engine thread ends the engine: the others stop at their next turn, and the
/// exit is reported (the agent's health check reads `exited`).
#[test]
fn a_panicking_engine_thread_ends_them_all() {
    let ring = FakeRing::new();
    let e = Engine::start(
        ring.clone(),
        EngineConfig {
            realtime_priority: None,
            tick: Duration::from_millis(10),
            fault: Some(EngineFault {
                kind: FaultKind::Panic,
                when: FaultTrigger::After(Duration::ZERO),
            }),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while e.is_running() {
        assert!(std::time::Instant::now() < end, "the engine still runs");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(e.stats().exited.load(Ordering::SeqCst));
    assert!(e.stop().is_err());
}
