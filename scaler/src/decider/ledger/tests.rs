//! The ledger's bookkeeping, with a toy resource whose limits weigh half in the budget.

use super::*;
use crate::decider::Cap;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const T0: u64 = 100 * S;

/// A resource whose limits count for half their value in the budget (to see the weight at
/// work), with the memory policy's timing, and a usage (in limit units).
#[derive(Clone, Debug, Default)]
struct Half {
    usage: u64,
}

impl Ext for Half {
    const RESOURCE: Resource = Resource::Memory;
    type Policy = MemoryPolicy;

    fn weight(&self, limit: u64) -> u64 {
        limit / 2
    }

    fn usage_weight(&self) -> u64 {
        self.usage / 2
    }
}

fn manage_with(l: &mut Ledger<Half>, id: CgId, parent: Option<CgId>, limit: u64, p: MemoryPolicy) {
    l.manage(id, parent, p, limit, T0, Half::default(), |_| {});
}

/// An ancestor rule for walks that must not reach one.
fn no_ancestor(_: &Entry<Half>, _: u64, _: u64) -> Backing {
    Backing {
        raise: None,
        slack: u64::MAX,
    }
}

/// A shrink rule for raises no ancestor bounds.
fn no_shrink(_: &Entry<Half>, _: u64) -> Result<u64, u64> {
    unreachable!("no ancestor bounds this raise")
}

fn manage(l: &mut Ledger<Half>, id: CgId, parent: Option<CgId>, limit: u64) {
    manage_with(l, id, parent, limit, MemoryPolicy::default());
}

/// A pressure signal at `ts` answered, when the round opens, by raising the cgroup alone to
/// `new`.
fn press(l: &mut Ledger<Half>, id: CgId, ts: u64, new: u64) -> Decision {
    let mut out = Decision::new();
    if let Some(escalation) = l.open_round(id, ts, false, &mut out) {
        let delta = new - l.get(id).unwrap().limit();
        l.raise(
            id,
            new,
            delta,
            escalation,
            Reason::Pressure,
            ts,
            &mut out,
            no_ancestor,
            no_shrink,
        );
    }
    out
}

/// `press`, with every action applied `done` later.
fn press_applied(l: &mut Ledger<Half>, id: CgId, ts: u64, new: u64, done: u64) -> Decision {
    let out = press(l, id, ts, new);
    for a in out.actions() {
        l.applied(a, ts + done, WriteOutcome::Written);
    }
    out
}

/// Cgroups 1 to 4 at `limits`: 1 and 4 top-level, 2 under 1, 3 under 2.
fn tree(budget: u64, limits: [u64; 4]) -> Ledger<Half> {
    let mut l = Ledger::new(budget, u64::MAX);
    let parents = [None, Some(1), Some(2), None];
    for (id, (parent, limit)) in (1..).zip(parents.into_iter().zip(limits)) {
        manage(&mut l, id, parent, limit);
    }
    l
}

/// The children index is the exact inverse of the entries' parents, and the top-level sum
/// what a full walk gives.
fn assert_consistent(l: &Ledger<Half>) {
    for (id, e) in &l.entries {
        if let Some(p) = e.parent {
            assert!(l.entries.contains_key(&p), "{id}'s parent {p} is managed");
            assert!(l.children[&p].contains(id), "{p} lists its child {id}");
        }
    }
    for (p, set) in &l.children {
        assert!(!set.is_empty(), "no empty sets kept");
        for c in set {
            assert_eq!(l.entries[c].parent, Some(*p), "{c} listed under {p}");
        }
    }
    let sum: u128 = l
        .entries
        .values()
        .filter(|e| e.parent.is_none())
        .map(|e| u128::from(e.counted_w))
        .sum();
    assert_eq!(l.committed(), sum);
}

#[test]
fn forgetting_touches_only_the_children_and_keeps_the_index_exact() {
    let mut l = Ledger::new(1 << 40, u64::MAX);
    let mut x: u64 = 7;
    let mut next = |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    for round in 0..2000u64 {
        let id = next(60) + 1;
        match next(3) {
            0 => {
                l.forget(id);
            }
            _ => {
                // Parents have smaller ids: a tree, as cgroup paths make.
                let parent = (id > 1 && next(4) > 0).then(|| next(id - 1) + 1);
                manage(&mut l, id, parent, 64 + round);
            }
        }
        assert_consistent(&l);
    }
    assert!(l.len() > 10, "the walk kept a tree: {}", l.len());
}

#[test]
fn the_budget_counts_top_level_weights_and_follows_re_parenting() {
    let mut l = tree(1000, [600, 400, 200, 100]);
    // A parent that is not managed: top-level.
    manage(&mut l, 5, Some(99), 80);
    assert_eq!(l.committed(), 300 + 50 + 40);
    assert_eq!(l.room(l.get(1).unwrap()), 1000 - 90);
    assert_eq!(
        l.room(l.get(2).unwrap()),
        u64::MAX,
        "nested: bounded by its ancestor, not the budget"
    );
    // Forgetting a nested cgroup re-parents its children to its parent: still nested.
    assert!(l.forget(2));
    assert_eq!(l.get(3).unwrap().parent, Some(1));
    assert_eq!(l.committed(), 390);
    // Forgetting a top-level one makes its children top-level: they count from now on.
    assert!(l.forget(1));
    assert!(!l.forget(1));
    assert_eq!(l.get(3).unwrap().parent, None);
    assert_eq!(l.committed(), 100 + 50 + 40);
    // Re-registering moves a cgroup in and out of the sum.
    manage(&mut l, 3, Some(4), 200);
    assert_eq!(l.committed(), 90);
    manage(&mut l, 3, None, 300);
    assert_eq!(l.committed(), 240);
    assert_eq!(l.len(), 3);
    // Unlimited counts for what it takes (its usage), not for infinity: the others keep
    // their room, and the count follows the usage.
    l.manage(
        6,
        None,
        MemoryPolicy::default(),
        UNLIMITED,
        T0,
        Half { usage: 200 },
        |_| {},
    );
    assert_eq!(l.committed(), 240 + 100);
    assert_eq!(l.room(l.get(3).unwrap()), 1000 - 100 - 40 - 50);
    l.get_mut(6).unwrap().ext.usage = 600;
    l.recount(6);
    assert_eq!(l.committed(), 240 + 300);
    assert_eq!(l.room(l.get(3).unwrap()), 1000 - 300 - 40 - 50);
}

#[test]
fn a_failed_write_is_reverted_and_a_lowering_counts_at_its_old_limit_until_written() {
    let mut l = Ledger::new(10_000, u64::MAX);
    manage(&mut l, 1, None, 1000);
    let out = press(&mut l, 1, T0 + S, 1600);
    let [a] = out.actions() else {
        panic!("{out:?}")
    };
    assert_eq!(
        (a.cgroup, a.old, a.new, a.reason),
        (1, 1000, 1600, Reason::Pressure)
    );
    assert_eq!(l.committed(), 800);
    assert!(l.get(1).unwrap().in_flight());
    // Another resource's action is not ours.
    let cpu = Action {
        resource: Resource::Cpu,
        ..*a
    };
    l.applied(&cpu, T0 + S + MS, WriteOutcome::Failed);
    assert!(l.get(1).unwrap().in_flight());
    l.applied(a, T0 + S + MS, WriteOutcome::Failed);
    let st = l.get(1).unwrap();
    assert_eq!((st.limit(), st.in_flight()), (1000, false));
    assert_eq!(l.committed(), 500);
    assert_eq!((l.stats().failed_writes, st.stats.failed_writes), (1, 1));
    // A lowering frees nothing until the kernel has it.
    let mut out = Decision::new();
    l.lower(1, 400, Reason::ScaleDown, T0 + 2 * S, &mut out);
    let [a] = out.actions() else {
        panic!("{out:?}")
    };
    assert_eq!((a.old, a.new, a.reason), (1000, 400, Reason::ScaleDown));
    assert_eq!((l.get(1).unwrap().limit(), l.committed()), (400, 500));
    l.applied(a, T0 + 2 * S + MS, WriteOutcome::Written);
    assert_eq!(l.committed(), 200);
    assert_eq!(l.stats().scale_downs, 1);
    // Not lower: nothing.
    l.lower(1, 400, Reason::ScaleDown, T0 + 3 * S, &mut out);
    assert_eq!(
        out.actions().len(),
        1,
        "the decision is not cleared by lower"
    );
    let mut out = Decision::new();
    l.lower(1, 400, Reason::ScaleDown, T0 + 3 * S, &mut out);
    assert!(out.is_empty());
}

#[test]
fn capped_is_reported_once_per_storm() {
    let mut l = Ledger::new(10_000, u64::MAX);
    manage(&mut l, 1, None, 1000);
    let mut out = Decision::new();
    let capped = Skip::Capped(Cap::AtMax);
    let mut bounded = |l: &mut Ledger<Half>, ts: u64| {
        out.clear();
        l.open_round(1, ts, false, &mut out).expect("round opens");
        l.bounded(1, capped, Some(2000), Some(1000), ts, &mut out);
        if out.skip == Some(capped) {
            let r = out.refusal.expect("a refusal says what was asked");
            assert_eq!(
                (r.cgroup, r.limit, r.wanted, r.allowed),
                (1, l.get(1).unwrap().limit(), Some(2000), Some(1000))
            );
        } else {
            assert_eq!(out.refusal, None);
        }
        out.skip.unwrap()
    };
    let t = T0 + S;
    assert_eq!(bounded(&mut l, t), capped);
    // The same storm (signals less than the escalation window apart): once.
    for i in 1..10 {
        assert_eq!(bounded(&mut l, t + i * 100 * MS), Skip::Coalesced, "{i}");
    }
    assert_eq!((l.stats().capped, l.stats().coalesced), (1, 9));
    // A new storm after a quiet window: reported again.
    let t = t + 10 * S;
    assert_eq!(bounded(&mut l, t), capped);
    assert_eq!(bounded(&mut l, t + 100 * MS), Skip::Coalesced);
    // So is the first cap at another limit (after a raise), in the same storm.
    let out = press_applied(&mut l, 1, t + 200 * MS, 1200, MS);
    assert_eq!(out.actions().len(), 1);
    assert_eq!(bounded(&mut l, t + 300 * MS), capped);
    assert_eq!(bounded(&mut l, t + 400 * MS), Skip::Coalesced);
    assert_eq!(l.get(1).unwrap().stats.capped, 3);
}

#[test]
fn the_rate_limit_refuses_raises_past_the_burst_and_rounds_escalate() {
    let mut l = Ledger::new(u64::MAX, u64::MAX);
    let p = MemoryPolicy {
        max_raises_per_sec: 2,
        max_escalation: 2,
        ..MemoryPolicy::default()
    };
    manage_with(&mut l, 1, None, 1000, p);
    let t = T0 + S;
    let mut escalations = Vec::new();
    let mut round = |l: &mut Ledger<Half>, ts: u64| {
        let mut out = Decision::new();
        let e = l.open_round(1, ts, false, &mut out);
        if let Some(e) = e {
            escalations.push(e);
            let new = l.get(1).unwrap().limit() + 100;
            l.raise(
                1,
                new,
                100,
                e,
                Reason::Pressure,
                ts,
                &mut out,
                no_ancestor,
                no_shrink,
            );
            l.applied(&out.actions()[0], ts + 1, WriteOutcome::Written);
        }
        out.skip
    };
    assert_eq!(round(&mut l, t), None);
    assert_eq!(round(&mut l, t + 10 * MS), None);
    assert_eq!(round(&mut l, t + 20 * MS), Some(Skip::RateLimited));
    let mut out = Decision::new();
    assert_eq!(l.open_round(1, t + 30 * MS, false, &mut out), None);
    let r = out.refusal.expect("rate-limited: a refusal");
    assert_eq!(
        (r.cgroup, r.limit, r.wanted, r.ts_ns),
        (1, 1200, None, t + 30 * MS)
    );
    assert_eq!(round(&mut l, t + 400 * MS), Some(Skip::RateLimited));
    // A token is back 1/rate after the burst.
    assert_eq!(round(&mut l, t + 500 * MS), None);
    assert_eq!(round(&mut l, t + 1500 * MS), None);
    // Escalation: one more doubling per round within the window, at most max_escalation;
    // back to none after a quiet window.
    assert_eq!(round(&mut l, t + 10 * S), None);
    assert_eq!(escalations, [0, 1, 2, 2, 0]);
    let st = l.get(1).unwrap();
    assert_eq!((st.stats.raises, st.stats.rate_limited), (5, 3));
    assert_eq!(l.stats().raises, 5);
}

/// A raise the kernel refused (or that was not made: its owner's value was found) changed
/// nothing, and gives its rate-limit token back: however many were refused, the retry once the
/// obstacle is gone is not refused by the rate limit; written raises still are.
#[test]
fn raises_that_changed_nothing_give_their_rate_limit_token_back() {
    let mut l = Ledger::new(u64::MAX, u64::MAX);
    let p = MemoryPolicy {
        max_raises_per_sec: 2,
        ..MemoryPolicy::default()
    };
    manage_with(&mut l, 1, None, 1000, p);
    let t = T0 + S;
    // Ten refused raises within 10 ms: each one is attempted (none rate-limited).
    for i in 0..10 {
        let ts = t + i * MS;
        let out = press(&mut l, 1, ts, 2000);
        assert_eq!(out.skip, None, "refused raise {i} is attempted");
        let a = out.actions()[0];
        l.applied(&a, ts + MS / 2, WriteOutcome::Failed);
        assert_eq!(l.get(1).unwrap().limit(), 1000);
    }
    // One not made: its owner's 1500 was found just before the write.
    let out = press(&mut l, 1, t + 20 * MS, 2000);
    l.yielded(&out.actions()[0], t + 20 * MS + MS / 2, 1500, |_| {});
    assert_eq!(l.get(1).unwrap().limit(), 1500);
    // The obstacle is gone: the retry is made, and so is the burst's second raise; a third
    // within the second is rate-limited, as ever.
    assert_eq!(press_applied(&mut l, 1, t + 30 * MS, 2000, MS).skip, None);
    assert_eq!(press_applied(&mut l, 1, t + 40 * MS, 3000, MS).skip, None);
    assert_eq!(
        press(&mut l, 1, t + 50 * MS, 4000).skip,
        Some(Skip::RateLimited)
    );
    let st = l.get(1).unwrap();
    assert_eq!(
        (
            st.stats.raises,
            st.stats.failed_writes,
            st.stats.rate_limited
        ),
        (13, 10, 1)
    );
}

/// A ledger whose cgroup 1 was raised from 1000 to 1100 at `T0 + S`: the write (returned)
/// is in flight.
fn raised_in_flight() -> (Ledger<Half>, Action) {
    let mut l = Ledger::new(u64::MAX, u64::MAX);
    manage(&mut l, 1, None, 1000);
    let a = press(&mut l, 1, T0 + S, 1100).actions()[0];
    (l, a)
}

#[test]
fn signals_from_before_a_raise_completed_or_during_a_write_are_coalesced() {
    let (mut l, a) = raised_in_flight();
    let t = T0 + S;
    let mut out = Decision::new();
    assert_eq!(l.open_round(1, t + MS, false, &mut out), None, "in flight");
    l.applied(&a, t + 2 * MS, WriteOutcome::Written);
    assert_eq!(
        l.open_round(1, t + MS, false, &mut out),
        None,
        "before completion"
    );
    assert_eq!(
        l.open_round(1, t + 3 * MS, true, &mut out),
        None,
        "stale, says the resource"
    );
    assert_eq!(out.skip, Some(Skip::Coalesced));
    assert_eq!(l.open_round(1, t + 3 * MS, false, &mut out), Some(1));
    assert_eq!(l.stats().coalesced, 3);
}

#[test]
fn external_changes_are_adopted_only_when_no_write_of_ours_explains_them() {
    let (mut l, a) = raised_in_flight();
    let t = T0 + S;
    assert!(!l.adopt(1, t + MS, 3000, |_| {}), "in flight");
    l.applied(&a, t + 2 * MS, WriteOutcome::Written);
    assert!(
        !l.adopt(1, t + MS, 3000, |_| {}),
        "reported before our write completed"
    );
    assert_eq!(l.committed(), 550);
    assert!(l.adopt(1, t + 2 * MS, 3000, |_| {}));
    assert_eq!((l.get(1).unwrap().limit(), l.committed()), (3000, 1500));
}

#[test]
fn lowering_waits_for_the_cooldown_and_the_down_interval() {
    let mut l = Ledger::new(u64::MAX, u64::MAX);
    let p = MemoryPolicy {
        cooldown_ns: 30 * S,
        down_interval_ns: 5 * S,
        ..MemoryPolicy::default()
    };
    manage_with(&mut l, 1, None, 1000, p);
    let may = |l: &Ledger<Half>, ts| l.get(1).unwrap().may_lower(ts);
    assert!(!may(&l, T0 + 29 * S));
    assert!(may(&l, T0 + 30 * S));
    let mut out = Decision::new();
    l.lower(1, 900, Reason::ScaleDown, T0 + 30 * S, &mut out);
    l.applied(&out.actions()[0], T0 + 30 * S + MS, WriteOutcome::Written);
    assert!(!may(&l, T0 + 34 * S), "down interval");
    assert!(may(&l, T0 + 35 * S));
    l.get_mut(1).unwrap().note_pressure(T0 + 36 * S);
    assert!(!may(&l, T0 + 65 * S), "the cooldown restarted");
    assert!(may(&l, T0 + 66 * S));
}

#[test]
fn the_ancestor_walk_raises_binding_ancestors_first() {
    let mut l = tree(2000, [1000, 500, 200, 1000]);
    // An ancestor binds while its limit is below 900; it is raised by twice the delta, at
    // most to the room it has.
    let rooms = std::cell::RefCell::new(Vec::new());
    let mut rule = |ps: &Entry<Half>, delta: u64, room: u64| {
        rooms.borrow_mut().push(room);
        let new = (ps.limit() + 2 * delta).min(room);
        Backing {
            raise: (ps.limit() < 900 && new > ps.limit()).then(|| (new, new - ps.limit())),
            slack: u64::MAX,
        }
    };
    let mut out = Decision::new();
    let t = T0 + S;
    let e = l.open_round(3, t, false, &mut out).unwrap();
    l.raise(
        3,
        300,
        100,
        e,
        Reason::Pressure,
        t,
        &mut out,
        &mut rule,
        no_shrink,
    );
    let got: Vec<_> = out
        .actions()
        .iter()
        .map(|a| (a.cgroup, a.old, a.new, a.reason))
        .collect();
    assert_eq!(
        got,
        [
            (2, 500, 700, Reason::Ancestor),
            (3, 200, 300, Reason::Pressure)
        ]
    );
    // Cgroup 1 was asked (room: the budget 2000 less cgroup 4's 500) and had room.
    assert_eq!(*rooms.borrow(), [u64::MAX, 1500]);
    for a in out.actions() {
        l.applied(a, t + MS, WriteOutcome::Written);
    }
    // Re-registered at 800, cgroup 1 binds too when cgroup 2 (still binding at 700) is
    // raised by 100: it goes to 1000 (weight 500, within its room); the actions go top-down.
    manage(&mut l, 1, None, 800);
    let t = t + 100 * MS;
    let e = l.open_round(3, t, false, &mut out).unwrap();
    out.clear();
    l.raise(
        3,
        350,
        50,
        e,
        Reason::Pressure,
        t,
        &mut out,
        &mut rule,
        no_shrink,
    );
    let got: Vec<_> = out
        .actions()
        .iter()
        .map(|a| (a.cgroup, a.old, a.new))
        .collect();
    assert_eq!(got, [(1, 800, 1000), (2, 700, 800), (3, 300, 350)]);
    assert_eq!(l.committed(), 500 + 500);
    // An ancestor with a write in flight is not raised (nor one its rate limit holds back):
    // it is asked what it backs with no room above its limit.
    let t = t + 100 * MS;
    l.applied(&out.actions()[2], t, WriteOutcome::Written);
    out.clear();
    rooms.borrow_mut().clear();
    let e = l.open_round(3, t + MS, false, &mut out).unwrap();
    l.raise(
        3,
        400,
        50,
        e,
        Reason::Pressure,
        t + MS,
        &mut out,
        &mut rule,
        no_shrink,
    );
    assert_eq!(out.actions().len(), 1);
    assert_eq!(*rooms.borrow(), [400, 500], "their own weights: no raise");
}

#[test]
fn the_node_figure_less_granted_raises_bounds_every_raise_not_the_sum_of_limits() {
    // Limits far beyond what the node has (overcommit) do not matter: only what it can back.
    let mut l: Ledger<Half> = Ledger::new(u64::MAX, 300);
    for id in 1..=100 {
        manage(&mut l, id, None, 1000);
    }
    assert_eq!(l.committed(), 100 * 500);
    assert_eq!(l.room(l.get(1).unwrap()), 500 + 300);
    // A raise of 400 (weight 200) is charged: the next one sees 100 left.
    let t = T0 + S;
    let out = press_applied(&mut l, 1, t, 1400, MS);
    assert_eq!(out.actions().len(), 1);
    assert_eq!((l.granted(), l.spare()), (200, 100));
    assert_eq!(l.room(l.get(2).unwrap()), 500 + 100);
    // Nested cgroups are bounded by the node too.
    manage(&mut l, 101, Some(2), 100);
    assert_eq!(l.room(l.get(101).unwrap()), 50 + 100);
    // A sample taken before that raise completed keeps the charge; a later one drops it.
    l.set_available(250, t + MS / 2);
    assert_eq!((l.available(), l.spare()), (250, 50));
    l.set_available(250, t + 2 * MS);
    assert_eq!((l.granted(), l.spare()), (0, 250));
    // A failed write gives its charge back; an ancestor's raise is not charged.
    let t = t + S;
    let out = press(&mut l, 3, t, 1200);
    assert_eq!(l.granted(), 100);
    l.applied(&out.actions()[0], t + MS, WriteOutcome::Failed);
    assert_eq!((l.granted(), l.get(3).unwrap().limit()), (0, 1000));
    let ancestor = Action {
        reason: Reason::Ancestor,
        ..out.actions()[0]
    };
    l.applied(&ancestor, t + MS, WriteOutcome::Failed);
    assert_eq!(l.granted(), 0);
    // Unknown (u64::MAX): no bound.
    l.set_available(u64::MAX, t + 2 * MS);
    assert_eq!(l.room(l.get(4).unwrap()), u64::MAX);
}

/// Cgroup 3 under 2 under 1, each at `limit` with `usage` (limit units), and a rule that
/// raises ancestors only when `raise` says so, backing their limit minus their usage.
fn chain(limits: [u64; 3], usages: [u64; 3]) -> Ledger<Half> {
    let mut l = Ledger::new(u64::MAX, u64::MAX);
    let parents = [None, Some(1), Some(2)];
    for (i, id) in (1..=3).enumerate() {
        let ext = Half { usage: usages[i] };
        l.manage(
            id,
            parents[i],
            MemoryPolicy::default(),
            limits[i],
            T0,
            ext,
            |_| {},
        );
    }
    l
}

fn backs(ps: &Entry<Half>, _: u64, _: u64) -> Backing {
    Backing {
        raise: None,
        slack: ps.limit().saturating_sub(ps.ext.usage),
    }
}

#[test]
fn a_raise_never_exceeds_what_its_ancestors_can_back() {
    // The grandparent (1) has 150 left, the parent (2) 400: a raise of 300 becomes 150, through
    // the shrink rule, even though the parent fits (the walk goes on past it).
    let mut l = chain([1000, 900, 100], [850, 500, 100]);
    let t = T0 + S;
    let mut out = Decision::new();
    let e = l.open_round(3, t, false, &mut out).unwrap();
    let mut backed_seen = None;
    l.raise(
        3,
        400,
        300,
        e,
        Reason::Pressure,
        t,
        &mut out,
        backs,
        |st, backed| {
            backed_seen = Some(backed);
            Ok(st.limit() + backed)
        },
    );
    assert_eq!(backed_seen, Some(150));
    let [a] = out.actions() else {
        panic!("{out:?}")
    };
    assert_eq!((a.cgroup, a.old, a.new), (3, 100, 250));
    l.applied(a, t + MS, WriteOutcome::Written);
    // Nothing left worth a raise: refused as capped by an ancestor, with what it allowed.
    let mut l = chain([1000, 900, 100], [1000, 500, 100]);
    let mut out = Decision::new();
    let e = l.open_round(3, t, false, &mut out).unwrap();
    l.raise(
        3,
        400,
        300,
        e,
        Reason::Pressure,
        t,
        &mut out,
        backs,
        |st, _| Err(st.limit()),
    );
    assert!(out.is_empty());
    assert_eq!(out.skip, Some(Skip::Capped(Cap::Ancestor)));
    let r = out.refusal.unwrap();
    assert_eq!(
        (r.cgroup, r.limit, r.wanted, r.allowed),
        (3, 100, Some(400), Some(100))
    );
    assert_eq!(l.get(3).unwrap().limit(), 100, "untouched");
    // An unlimited ancestor backs anything.
    let mut l = chain([UNLIMITED, 900, 100], [5000, 500, 100]);
    let mut out = Decision::new();
    let e = l.open_round(3, t, false, &mut out).unwrap();
    l.raise(
        3,
        400,
        300,
        e,
        Reason::Pressure,
        t,
        &mut out,
        backs,
        no_shrink,
    );
    assert_eq!(out.actions().len(), 1);
}

/// Raises cgroup `id` of `l` toward `new` at `t`, recording what the shrink rule was given.
fn raise_backed(l: &mut Ledger<Half>, id: CgId, new: u64, t: u64) -> (Decision, Option<u64>) {
    let mut out = Decision::new();
    let e = l.open_round(id, t, false, &mut out).unwrap();
    let delta = new - l.get(id).unwrap().limit();
    let mut backed_seen = None;
    l.raise(
        id,
        new,
        delta,
        e,
        Reason::Pressure,
        t,
        &mut out,
        backs,
        |st, backed| {
            backed_seen = Some(backed);
            if backed >= 10 {
                Ok(st.limit() + backed)
            } else {
                Err(st.limit())
            }
        },
    );
    (out, backed_seen)
}

#[test]
fn unmanaged_ancestors_bound_a_raise_less_what_raises_granted_since_their_sample() {
    // 3 under 2 under 1, every managed level with room to spare; an unmanaged ancestor above
    // the top (kubelet's kubepods) had 120 left when 3 used 100 (its limit), sampled at T0.
    let mut l = chain([10_000, 9_000, 100], [100, 100, 100]);
    l.set_outer_room(3, u64::MAX, 100, T0);
    l.set_outer_room(1, 120, 100, T0);
    let t = T0 + S;
    let (out, backed) = raise_backed(&mut l, 3, 400, t);
    assert_eq!(
        backed,
        Some(120),
        "the unmanaged ancestor's room, seen through 1"
    );
    let [a] = out.actions() else {
        panic!("{out:?}")
    };
    assert_eq!((a.cgroup, a.old, a.new), (3, 100, 220));
    l.applied(a, t + MS, WriteOutcome::Written);
    // That growth is charged: before a new sample, a second raise finds nothing left.
    let t2 = t + 3 * S;
    let (out, backed) = raise_backed(&mut l, 3, 600, t2);
    assert_eq!(backed, Some(0));
    assert!(out.is_empty());
    assert_eq!(out.skip, Some(Skip::Capped(Cap::Ancestor)));
    // A new sample taken after the raise replaces the figure and drops the charge: 3's usage
    // may reach 100 + 500.
    l.set_outer_room(1, 500, 100, t2 + MS);
    let t3 = t2 + 3 * S;
    let (out, backed) = raise_backed(&mut l, 3, 500, t3);
    assert_eq!(backed, None, "220 -> 500 fits under 600: no shrink");
    assert_eq!(out.actions().len(), 1);
    // The room of unmanaged ancestors between a cgroup and its managed parent counts too
    // (a QoS-level cgroup between a pod and kubepods), and unbounded is no bound.
    let mut l = chain([10_000, 9_000, 100], [100, 100, 100]);
    l.set_outer_room(3, 50, 100, T0);
    l.set_outer_room(1, u64::MAX, 100, T0);
    let (out, backed) = raise_backed(&mut l, 3, 400, t);
    assert_eq!(backed, Some(50));
    assert_eq!(out.actions()[0].new, 150);
    // A cgroup below its limit at the sample (60 of 100): its usage, not its limit, may grow
    // by the room, so its limit may go 80 higher.
    let mut l = chain([10_000, 9_000, 100], [100, 100, 100]);
    l.set_outer_room(3, u64::MAX, 60, T0);
    l.set_outer_room(1, 120, 100, T0);
    let (_, backed) = raise_backed(&mut l, 3, 400, t);
    assert_eq!(backed, Some(80));
    // Unknown cgroups are ignored.
    l.set_outer_room(99, 0, 0, T0);
}
