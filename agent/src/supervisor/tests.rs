//! The core, table-driven: each case is a list of steps (an input at a time, the effects it
//! must produce, rendered as short words); no I/O, no processes, no sleeps.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::fixtures::{completion, unit};
use crate::gpu::{Gpu, SimGpu, Throttle};
use rigd_protocol::RigId;

const MAX_UNACKED: u64 = 100;
const FAILURES: FailurePolicy = FailurePolicy {
    count: 3,
    window_ms: 60_000,
};

fn core(cards: u32, queued: &[u64]) -> RigCore {
    let gpu = SimGpu::new(&RigId::new("rig-t").unwrap(), cards);
    let models = gpu
        .inventory()
        .into_iter()
        .enumerate()
        .map(|(i, info)| (info, gpu.model(i).unwrap()))
        .collect();
    RigCore::new(
        CoreSettings {
            thermal: ThermalOverrides::default(),
            failures: FAILURES,
            max_unacked_receipts: MAX_UNACKED,
        },
        models,
        queued.iter().map(|&n| unit(n)).collect(),
        JournalStats::default(),
    )
    .unwrap()
}

fn uuid(card: u32) -> GpuUuid {
    GpuUuid::new(format!("SIM-rig-t-{card}")).unwrap()
}

fn done(card: usize, n: u64) -> CardEvent {
    CardEvent::Done {
        card,
        completion: Box::new(completion(&unit(n), uuid(card as u32).as_str())),
    }
}

fn crashed(card: usize, n: u64) -> CardEvent {
    CardEvent::Crashed {
        card,
        unit: unit(n),
        reason: "exit 1".into(),
    }
}

fn aborted(card: usize, n: u64) -> CardEvent {
    CardEvent::Aborted {
        card,
        unit: unit(n),
    }
}

fn cool() -> CardRead {
    CardRead::Reading(Reading {
        at_ms: 0,
        core_c: 30.0,
        mem_c: Some(40.0),
        power_w: 100.0,
        power_limit_w: 350.0,
        fan_pct: 30.0,
        util_pct: 0.0,
        sm_mhz: 1_500,
        throttle: Throttle::NONE,
        fb_used_mib: 300,
        xid: None,
    })
}

fn stats(unacked: u64) -> JournalStats {
    JournalStats {
        unacked_receipts: unacked,
        ..JournalStats::default()
    }
}

fn to(nonce: u64) -> Option<ReplyTo> {
    Some(ReplyTo {
        correlation: None,
        nonce,
        action: None,
    })
}

fn action(action: Action, nonce: u64) -> Input {
    Input::Action {
        action,
        reply: to(nonce),
    }
}

fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Accepted(_) => "accepted".into(),
        Outcome::Completed(_) => "completed".into(),
        Outcome::Rejected(_) => "rejected".into(),
        Outcome::Failed(why) => format!("failed: {why}"),
        Outcome::Unsupported(_) => "unsupported".into(),
        Outcome::Diagnostics(_) => "diagnostics".into(),
    }
}

fn render(e: &Effect) -> String {
    match e {
        Effect::Start { card, job } => format!(
            "start {card} u{}{}",
            job.unit.unit,
            if job.fresh_worker { " fresh" } else { "" }
        ),
        Effect::Abort { card } => format!("abort {card}"),
        Effect::SetPower { card, watts } => format!("power {card} {watts}"),
        Effect::SetFan { card, .. } => format!("fan {card}"),
        Effect::Record(done) => format!("record {}", done.len()),
        Effect::Discard(u) => format!("discard u{}", u.unit),
        Effect::SaveHolds { holds, reply } => format!(
            "save rig={} cards={}{}",
            holds.rig,
            holds.cards.len(),
            reply.as_ref().map_or(String::new(), |r| format!(
                ", reply {} {}",
                r.to.nonce,
                outcome(&r.outcome)
            ))
        ),
        Effect::Reply(r) => format!("reply {} {}", r.to.nonce, outcome(&r.outcome)),
        Effect::Diagnose(_) => "diagnose".into(),
        Effect::Install { reply, .. } => format!(
            "install{}",
            reply
                .as_ref()
                .map_or(String::new(), |r| format!(" {}", r.nonce))
        ),
        Effect::PublishStatus => "status".into(),
    }
}

/// Runs `steps` (input at a time, expected effects) on `core`, then returns it.
fn run(mut core: RigCore, steps: Vec<(u64, Input, &[&str])>) -> RigCore {
    for (i, (at, input, want)) in steps.into_iter().enumerate() {
        let label = format!("step {i}: {input:?}");
        let got: Vec<String> = core.handle(input, at).iter().map(render).collect();
        assert_eq!(got, want, "{label}");
    }
    core
}

#[test]
fn units_go_to_idle_cards_in_order_and_a_finished_card_takes_the_next_before_the_commit() {
    let core = run(
        core(2, &[1]),
        vec![
            (0, Input::Tick, &["start 0 u1"]),
            (0, Input::Units(vec![unit(2), unit(3)]), &["start 1 u2"]),
            (
                5,
                Input::Cards(vec![done(0, 1)]),
                &["start 0 u3", "record 1"],
            ),
            (6, Input::Cards(vec![done(1, 2), done(0, 3)]), &["record 2"]),
        ],
    );
    assert_eq!((core.running(), core.queued()), (0, 0));
    assert_eq!(core.state(), RigState::Idle);
}

#[test]
fn a_full_outbox_starts_nothing_until_acknowledgements_drain_it() {
    let core = run(
        core(1, &[]),
        vec![
            (0, Input::Journal(stats(MAX_UNACKED)), &[]),
            (0, Input::Units(vec![unit(1)]), &[]),
            (0, Input::Journal(stats(MAX_UNACKED - 1)), &["start 0 u1"]),
        ],
    );
    assert_eq!(core.running(), 1);
}

#[test]
fn a_crashed_unit_goes_back_first_and_repeated_crashes_quarantine_the_card_alone() {
    let core = run(
        core(2, &[1, 2, 3]),
        vec![
            (0, Input::Tick, &["start 0 u1", "start 1 u2"]),
            (10, Input::Cards(vec![crashed(0, 1)]), &["start 0 u1"]),
            (20, Input::Cards(vec![crashed(0, 1)]), &["start 0 u1"]),
            // The third failure within the window: the card is set aside, the unit waits
            // for the other card.
            (30, Input::Cards(vec![crashed(0, 1)]), &[]),
            (
                40,
                Input::Cards(vec![done(1, 2)]),
                &["start 1 u1", "record 1"],
            ),
        ],
    );
    let samples = core.samples(40);
    assert_eq!(samples[0].state, rigd_protocol::CardState::Quarantined);
    assert_eq!(core.to_read(), vec![(1, true)]);
}

#[test]
fn crashes_spread_wider_than_the_window_do_not_quarantine() {
    let w = FAILURES.window_ms + 1;
    run(
        core(1, &[1]),
        vec![
            (0, Input::Tick, &["start 0 u1"]),
            (0, Input::Cards(vec![crashed(0, 1)]), &["start 0 u1"]),
            (w, Input::Cards(vec![crashed(0, 1)]), &["start 0 u1"]),
            (2 * w, Input::Cards(vec![crashed(0, 1)]), &["start 0 u1"]),
        ],
    );
}

#[test]
fn a_refused_unit_is_discarded_and_a_unit_the_task_could_not_take_goes_back_first() {
    run(
        core(1, &[1, 2]),
        vec![
            (0, Input::Tick, &["start 0 u1"]),
            (
                0,
                Input::Cards(vec![CardEvent::Refused {
                    card: 0,
                    unit: unit(1),
                    reason: "bad shape".into(),
                }]),
                &["discard u1", "start 0 u2"],
            ),
            (
                0,
                Input::NotStarted {
                    card: 0,
                    unit: unit(2),
                },
                &["start 0 u2"],
            ),
        ],
    );
}

#[test]
fn lost_telemetry_pauses_a_card_and_a_fallen_card_is_quarantined_and_no_longer_read() {
    let core = run(
        core(2, &[1, 2]),
        vec![
            (0, Input::Tick, &["start 0 u1", "start 1 u2"]),
            (
                1_000,
                Input::Readings(vec![
                    (0, CardRead::Lost("no answer".into())),
                    (1, CardRead::FallenOffBus),
                ]),
                &["power 0 350", "fan 0", "abort 0", "abort 1"],
            ),
            // The paused card's unit comes back and waits; the quarantined card's too.
            (1_001, Input::Cards(vec![aborted(0, 1), aborted(1, 2)]), &[]),
        ],
    );
    assert_eq!(core.to_read(), vec![(0, false)]);
    assert_eq!(core.queued(), 2);
}

#[test]
fn a_cool_reading_lets_a_card_run_and_a_refused_setting_is_asked_again() {
    run(
        core(1, &[1]),
        vec![
            (
                0,
                Input::Readings(vec![(0, cool())]),
                &["power 0 350", "fan 0", "start 0 u1"],
            ),
            (1_000, Input::Readings(vec![(0, cool())]), &[]),
            (
                1_000,
                Input::NotApplied {
                    card: 0,
                    setting: Setting::Fan,
                },
                &[],
            ),
            (2_000, Input::Readings(vec![(0, cool())]), &["fan 0"]),
        ],
    );
}

#[test]
fn an_operator_drain_holds_the_rig_is_kept_and_completes_once_receipts_are_acknowledged() {
    let core = run(
        core(1, &[1, 2]),
        vec![
            (0, Input::Tick, &["start 0 u1"]),
            (
                0,
                action(Action::Drain, 7),
                &["status", "save rig=true cards=0, reply 7 accepted"],
            ),
            // Not drained while its receipt is being recorded, nor while it is unacknowledged.
            (0, Input::Cards(vec![done(0, 1)]), &["record 1"]),
            (0, Input::Recorded(stats(1)), &[]),
            (
                0,
                Input::Journal(stats(0)),
                &["reply 7 completed", "status"],
            ),
            // A second drain of a drained rig completes at once.
            (
                0,
                action(Action::Drain, 8),
                &["status", "save rig=true cards=0, reply 8 completed"],
            ),
        ],
    );
    assert!(core.held());
    assert_eq!(core.queued(), 1);
}

fn update() -> Action {
    Action::Update {
        bundle: "https://b/rig.raucb".into(),
        version: "2.0.0".into(),
        sha256: [7; 32],
    }
}

#[test]
fn an_update_drains_first_is_handed_over_once_drained_and_a_failed_one_resumes_work() {
    let core = run(
        core(1, &[1, 2]),
        vec![
            (0, Input::Tick, &["start 0 u1"]),
            // Not kept across restarts: a restarted rigd has no update to finish.
            (0, action(update(), 3), &["status", "reply 3 accepted"]),
            (
                0,
                action(update(), 4),
                &["reply 4 failed: an update is already under way"],
            ),
            (0, Input::Cards(vec![done(0, 1)]), &["record 1"]),
            (0, Input::Recorded(stats(1)), &[]),
            (0, Input::Journal(stats(0)), &["install 3"]),
            // Held while it installs: nothing starts.
            (0, Input::Tick, &[]),
            (0, Input::UpdateFailed, &["status", "start 0 u2"]),
        ],
    );
    assert!(!core.held());
    assert_eq!(core.holds(), OperatorHolds::default());
}

#[test]
fn an_update_of_a_drained_rig_is_handed_over_at_once() {
    run(
        core(1, &[]),
        vec![(
            0,
            action(update(), 5),
            &["status", "reply 5 accepted", "install 5"],
        )],
    );
}

#[test]
fn a_resume_before_the_drain_finished_fails_the_drain_and_work_resumes() {
    run(
        core(1, &[1, 2]),
        vec![
            (0, Input::Tick, &["start 0 u1"]),
            (
                0,
                action(Action::Drain, 1),
                &["status", "save rig=true cards=0, reply 1 accepted"],
            ),
            (0, Input::Cards(vec![done(0, 1)]), &["record 1"]),
            (0, Input::Recorded(stats(1)), &[]),
            (
                0,
                action(Action::Resume { gpu: None }, 2),
                &[
                    "reply 1 failed: resumed before the drain finished",
                    "save rig=false cards=0, reply 2 accepted",
                    "start 0 u2",
                ],
            ),
        ],
    );
}

#[test]
fn a_paused_card_hands_its_unit_back_and_its_pause_is_restored_after_a_restart() {
    let pause = Action::Pause { gpu: Some(uuid(0)) };
    let before = run(
        core(2, &[1, 2]),
        vec![
            (0, Input::Tick, &["start 0 u1", "start 1 u2"]),
            (
                0,
                action(pause, 3),
                &["abort 0", "save rig=false cards=1, reply 3 accepted"],
            ),
            (0, Input::Cards(vec![aborted(0, 1)]), &[]),
            (
                0,
                Input::Cards(vec![done(1, 2)]),
                &["start 1 u1", "record 1"],
            ),
        ],
    );
    let holds = before.holds();
    assert_eq!(holds.cards, vec![uuid(0)]);
    // A restarted rigd with the same holds: the paused card takes nothing.
    run(
        core(2, &[5, 6]),
        vec![(0, Input::Restored(holds), &["start 1 u5"])],
    );
    // A held rig restarts held.
    run(
        core(2, &[5]),
        vec![
            (
                0,
                Input::Restored(OperatorHolds {
                    rig: true,
                    cards: vec![],
                }),
                &[],
            ),
            (0, Input::Tick, &[]),
        ],
    );
}

#[test]
fn card_actions_name_a_card_of_the_rig_and_a_power_cap_within_its_range() {
    let other = GpuUuid::new("GPU-elsewhere").unwrap();
    run(
        core(1, &[]),
        vec![
            (
                0,
                action(Action::Quarantine { gpu: other }, 1),
                &["reply 1 failed: no card GPU-elsewhere on this rig"],
            ),
            (
                0,
                action(
                    Action::SetPowerLimit {
                        gpu: None,
                        watts: 10,
                    },
                    2,
                ),
                &["reply 2 failed: power limit 10 W is outside the card's range 100..=400 W"],
            ),
            (
                0,
                action(
                    Action::SetPowerLimit {
                        gpu: None,
                        watts: 200,
                    },
                    3,
                ),
                &["power 0 200", "fan 0", "reply 3 accepted"],
            ),
            (
                0,
                action(Action::Release { gpu: uuid(0) }, 4),
                &["reply 4 failed: the card is not quarantined"],
            ),
            (0, action(Action::Diagnostics, 5), &["diagnose"]),
        ],
    );
}

#[test]
fn a_restarted_worker_runs_the_next_unit_fresh() {
    run(
        core(1, &[1]),
        vec![
            (0, Input::Tick, &["start 0 u1"]),
            (
                0,
                action(Action::RestartWorker { gpu: uuid(0) }, 1),
                &["abort 0", "reply 1 accepted"],
            ),
            (0, Input::Cards(vec![aborted(0, 1)]), &["start 0 u1 fresh"]),
        ],
    );
}

#[test]
fn a_shutdown_starts_nothing_and_stops_once_running_units_finish_or_the_drain_times_out() {
    let mut c = run(
        core(2, &[1, 2, 3]),
        vec![
            (0, Input::Tick, &["start 0 u1", "start 1 u2"]),
            (100, Input::Shutdown, &["status"]),
            (100, Input::Shutdown, &[]),
        ],
    );
    assert_eq!(c.state(), RigState::Draining);
    assert_eq!(c.stopped(100), None);
    c = run(
        c,
        vec![(200, Input::Cards(vec![done(0, 1)]), &["record 1"])],
    );
    assert_eq!(c.stopped(200), None);
    assert_eq!(c.stopped(100 + DRAIN_TIMEOUT_MS + 1), Some(1));
    c = run(
        c,
        vec![(300, Input::Cards(vec![done(1, 2)]), &["record 1"])],
    );
    assert_eq!(c.stopped(300), Some(0));
}
