use super::*;
use proptest::prelude::*;

fn rig(n: u32) -> RigId {
    RigId::new(format!("rig-{n}")).unwrap_or_else(|_| unreachable!())
}

fn units_of(a: &[Assignment], r: &RigId) -> Vec<(u64, u32)> {
    a.iter()
        .filter(|x| &x.rig == r)
        .flat_map(|x| x.units.clone())
        .collect()
}

#[test]
fn a_rig_gets_at_most_cards_times_units_per_card() {
    let mut s = Scheduler::new(1000, 0, 3);
    s.add_units(0..20);
    s.rig_status(&rig(1), 2, true, true);
    let a = s.assign(0);
    assert_eq!(units_of(&a, &rig(1)).len(), 6);
    assert!(s.assign(1).is_empty());
    s.done(0);
    assert_eq!(units_of(&s.assign(2), &rig(1)), vec![(6, 0)]);
    assert_eq!(s.outstanding(&rig(1)), 6);
}

#[test]
fn rigs_share_a_short_queue() {
    let mut s = Scheduler::new(1000, 0, 3);
    s.add_units(0..4);
    s.rig_status(&rig(1), 1, true, true);
    s.rig_status(&rig(2), 1, true, true);
    let a = s.assign(0);
    assert_eq!(units_of(&a, &rig(1)).len(), 2);
    assert_eq!(units_of(&a, &rig(2)).len(), 2);
}

#[test]
fn an_expired_lease_is_reassigned_with_the_next_attempt() {
    let mut s = Scheduler::new(100, 0, 1);
    s.add_units([7]);
    s.rig_status(&rig(1), 1, true, true);
    assert_eq!(units_of(&s.assign(0), &rig(1)), vec![(7, 0)]);
    assert!(s.expire(99).is_empty());
    assert_eq!(s.expire(100), vec![7]);
    assert_eq!(s.attempt(7), Some(1));
    s.rig_status(&rig(2), 1, true, true);
    let a = s.assign(150);
    assert_eq!(
        a.iter().flat_map(|x| x.units.clone()).collect::<Vec<_>>(),
        vec![(7, 1)]
    );
}

#[test]
fn only_the_lease_holder_holds_a_unit_attempt_and_an_ended_lease_only_for_the_grace() {
    let mut s = Scheduler::new(100, 50, 1);
    s.add_units([7, 8]);
    s.rig_status(&rig(1), 1, true, true);
    assert_eq!(units_of(&s.assign(0), &rig(1)), vec![(7, 0)]);
    assert!(s.leased_to(7, 0, &rig(1), 10));
    assert!(!s.leased_to(7, 0, &rig(2), 10), "another rig");
    assert!(!s.leased_to(7, 1, &rig(1), 10), "another attempt");
    assert!(!s.leased_to(8, 0, &rig(1), 10), "a queued unit");
    assert!(!s.leased_to(99, 0, &rig(1), 10), "a unit never issued");
    assert_eq!(s.expire(100), vec![7]);
    s.rig_status(&rig(2), 1, true, true);
    s.heard_from(&rig(1));
    let a = s.assign(120);
    assert!(units_of(&a, &rig(2)).contains(&(7, 1)) || units_of(&a, &rig(1)).contains(&(7, 1)));
    assert!(s.leased_to(7, 0, &rig(1), 150), "within the grace");
    assert!(!s.leased_to(7, 0, &rig(1), 151), "past the grace");
    s.done(7);
    assert!(!s.leased_to(7, 1, &rig(2), 152), "a unit done");
}

#[test]
fn leases_restored_after_a_restart_hold_as_before() {
    let mut s = Scheduler::new(100, 50, 1);
    s.add_units([7]);
    s.restore_lease((7, 0, rig(1), 100));
    s.restore_lease((7, 2, rig(2), 300));
    s.restore_lease((7, 1, rig(3), 200));
    assert_eq!(s.attempt(7), Some(2));
    assert!(s.leased_to(7, 2, &rig(2), 250));
    assert!(s.leased_to(7, 1, &rig(3), 250));
    assert!(!s.leased_to(7, 0, &rig(1), 250));
    assert_eq!(s.outstanding(&rig(2)), 1);
    s.rig_status(&rig(4), 1, true, true);
    assert!(
        s.assign(250).is_empty(),
        "a leased unit is not handed out again"
    );
    assert_eq!(s.expire(300), vec![7]);
    assert_eq!(s.attempt(7), Some(3));
}

#[test]
fn a_rig_whose_lease_ran_out_waits_a_lease_before_new_units_unless_heard_from() {
    let mut s = Scheduler::new(100, 0, 1);
    s.add_units([1, 2]);
    s.rig_status(&rig(1), 1, true, true);
    s.assign(0);
    assert_eq!(s.expire(100), vec![1]);
    s.rig_status(&rig(2), 1, true, true);
    let a = s.assign(100);
    assert_eq!(units_of(&a, &rig(2)), vec![(2, 0)]);
    assert!(units_of(&a, &rig(1)).is_empty());
    assert!(s.assign(150).is_empty());
    s.heard_from(&rig(1));
    assert_eq!(units_of(&s.assign(160), &rig(1)), vec![(1, 1)]);
}

#[test]
fn an_offline_rig_keeps_its_leases_until_they_expire() {
    let mut s = Scheduler::new(10_000, 0, 2);
    s.add_units(0..2);
    s.rig_status(&rig(1), 1, true, true);
    assert_eq!(units_of(&s.assign(0), &rig(1)).len(), 2);
    s.rig_status(&rig(1), 1, false, false);
    assert_eq!(
        s.outstanding(&rig(1)),
        2,
        "a restart does not lose the rig its units"
    );
    s.rig_status(&rig(2), 1, true, true);
    assert!(s.assign(1).is_empty());
    assert_eq!(s.expire(10_000), vec![0, 1]);
    assert_eq!(units_of(&s.assign(10_001), &rig(2)), vec![(0, 1), (1, 1)]);
}

#[test]
fn a_draining_rig_keeps_its_leases_but_gets_nothing_new() {
    let mut s = Scheduler::new(10_000, 0, 1);
    s.add_units(0..3);
    s.rig_status(&rig(1), 1, true, true);
    assert_eq!(s.assign(0).len(), 1);
    s.rig_status(&rig(1), 1, false, true);
    s.done(0);
    assert!(s.assign(1).is_empty());
    assert_eq!(s.live_units(), 2);
}

#[test]
fn a_done_unit_is_never_handed_out_again() {
    let mut s = Scheduler::new(100, 0, 1);
    s.add_units([1, 2]);
    s.rig_status(&rig(1), 1, true, true);
    s.assign(0);
    s.expire(200);
    s.done(1);
    s.done(2);
    assert!(s.assign(300).is_empty());
    assert_eq!(s.attempt(1), None);
}

proptest! {
    #[test]
    fn leases_never_exceed_capacity_and_every_live_unit_is_queued_or_leased(
        ops in proptest::collection::vec((0u8..8, 0u32..3, 0u64..12), 1..80)
    ) {
        let mut s = Scheduler::new(50, 0, 2);
        s.add_units(0..12);
        let mut now = 0;
        // Leases restored after a restart may exceed what the rig now offers.
        let mut restored = false;
        for (op, r, unit) in ops {
            now += 10;
            match op {
                0 => s.rig_status(&rig(r), r, true, true),
                1 => s.rig_status(&rig(r), r, false, false),
                2 => { s.assign(now); }
                3 => s.done(unit),
                4 => { s.expire(now); }
                5 => s.suspend(&rig(r), now + 30),
                6 => s.release(unit, &rig(r)),
                _ => {
                    let attempt = s.attempt(unit).unwrap_or(0);
                    s.restore_lease((unit, attempt, rig(r), now + 50));
                    restored = true;
                }
            }
            for r in 0..3 {
                prop_assert!(restored || s.outstanding(&rig(r)) <= (r as usize) * 2);
            }
            let leased: usize = (0..3).map(|r| s.outstanding(&rig(r))).sum();
            let queued: std::collections::HashSet<u64> = s.queue.iter().copied()
                .filter(|u| s.live.get(u).is_some_and(|l| l.lease.is_none())).collect();
            prop_assert_eq!(leased + queued.len(), s.live_units());
            // The indexes hold exactly the current leases.
            let current: std::collections::BTreeSet<(u64, u64)> = s.live.iter()
                .filter_map(|(u, l)| l.lease.as_ref().map(|l| (l.deadline_ms, *u)))
                .collect();
            prop_assert_eq!(&current, &s.deadlines);
            for r in 0..3 {
                let held: std::collections::BTreeSet<u64> = s.live.iter()
                    .filter(|(_, l)| l.lease.as_ref().is_some_and(|l| l.rig == rig(r)))
                    .map(|(u, _)| *u)
                    .collect();
                prop_assert_eq!(held.len(), s.outstanding(&rig(r)));
            }
        }
    }
}
