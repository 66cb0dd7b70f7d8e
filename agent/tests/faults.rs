//! Injected card faults on a rig of two simulated cards: real rigd and worker processes, a
//! real mosquitto and the in-process coordinator running a GEMM job. Each fault hits card 1;
//! card 0 stays healthy and must keep finishing units, the faulty card must be restarted,
//! quarantined or paused as designed, and no unit may be lost or paid twice.
//!
//! The rig's retained telemetry is recorded from the broker: each frame is one consistent
//! snapshot of both cards, so "card 0 finished units after the fault" is read as card 0's
//! `units_done` in the first frame that shows the fault against a frame taken after the job.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_harness::{wait_job_done, wait_until, Coordinator, Mosquitto, RigProcess};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{decode, CardEarnings, CardState, GpuSample, RigId, Telemetry};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RIG: &str = "rig-f";
/// Each unit is a 64^3 int8 GEMM: 2 * 64^3 FLOP, about 52 ms at 0.01 GFLOP/s.
const DIM: u32 = 64;
const SPEED: &str = "sim.gflops = 0.01\n";
/// Units card 0 must finish after the fault shows, at the least.
const HEALTHY_CARD_UNITS_AFTER_FAULT: u32 = 5;
/// Deadline for each wait, s: a bound for a test that fails, not a window (a passing test
/// takes 3-25 s; the wrong-result test waits out a lease and a suspension).
const WAIT_S: u64 = 120;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Every telemetry frame the rig publishes, in arrival order, read by an MQTT client of the
/// test's own.
struct TelemetryLog {
    frames: Arc<Mutex<Vec<Telemetry>>>,
    stop: Arc<AtomicBool>,
    client: Client,
}

impl TelemetryLog {
    fn subscribe(port: u16, rig: &str) -> Self {
        let topic = topics::rig(&RigId::new(rig).unwrap(), Channel::Telemetry);
        let opts = MqttOptions::new(format!("faults-telemetry-{port}"), "127.0.0.1", port);
        let (client, mut connection) = Client::new(opts, 64);
        let frames = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s, c) = (frames.clone(), stop.clone(), client.clone());
        std::thread::spawn(move || {
            for event in connection.iter() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                match event {
                    // Subscribed on every connection: the session is not persistent.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(topic.clone(), QoS::AtMostOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(t) = decode::<Telemetry>(&p.payload) {
                            f.lock().unwrap().push(t);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        TelemetryLog {
            frames,
            stop,
            client,
        }
    }

    /// The first frame, oldest first, that `cond` holds for; waits up to `secs` for one.
    fn wait_for(&self, what: &str, secs: u64, cond: impl Fn(&Telemetry) -> bool) -> Telemetry {
        let mut found = None;
        let deadline = Instant::now() + Duration::from_secs(secs);
        while found.is_none() {
            found = self
                .frames
                .lock()
                .unwrap()
                .iter()
                .find(|t| cond(t))
                .cloned();
            if found.is_none() {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {secs} s waiting for telemetry showing {what}; last frame: {:#?}",
                    self.frames.lock().unwrap().last()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        found.unwrap()
    }

    /// Every frame received so far.
    fn frames(&self) -> Vec<Telemetry> {
        self.frames.lock().unwrap().clone()
    }
}

impl Drop for TelemetryLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
    }
}

/// Card `i`'s sample in a frame.
fn card(t: &Telemetry, i: usize) -> &GpuSample {
    let s = &t.gpus[i];
    assert_eq!(
        s.uuid.as_str(),
        format!("SIM-{RIG}-{i}"),
        "cards in inventory order"
    );
    s
}

/// A rig of two simulated cards with `conf` (extra rig.conf lines) doing a GEMM job of `units`
/// units. Fields drop in order: the coordinator stops first, the broker last.
struct FaultyRig {
    coordinator: Coordinator,
    rig: RigProcess,
    telemetry: TelemetryLog,
    units: u64,
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
}

impl FaultyRig {
    fn start(
        units: u64,
        conf: &str,
        tune: impl FnOnce(&mut rigd_coordinator::CoordinatorConfig),
    ) -> Self {
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().unwrap();
        let telemetry = TelemetryLog::subscribe(broker.port, RIG);
        let rig = RigProcess::start(
            RIG,
            broker.port,
            2,
            &dir.path().join("rig"),
            &format!("{SPEED}{conf}"),
        );
        // Telemetry flows before any unit does, so no frame of the fault can be missed.
        telemetry.wait_for("the rig up with two idle cards", WAIT_S, |t| {
            t.gpus.len() == 2 && t.gpus.iter().all(|g| g.state == CardState::Idle)
        });
        let coordinator = Coordinator::gemm(broker.port, dir.path(), units, DIM, tune);
        FaultyRig {
            coordinator,
            rig,
            telemetry,
            units,
            _broker: broker,
            _dir: dir,
        }
    }

    /// Waits for the job to finish, checks that every unit was paid exactly once and every
    /// receipt recorded once, and returns a telemetry frame taken after the job.
    fn finish(&self) -> Telemetry {
        wait_job_done(&self.coordinator, self.units, &[&self.rig], WAIT_S);
        self.coordinator
            .assert_exactly_once(self.units, &[&self.rig]);
        let done_ms = unix_ms();
        self.telemetry
            .wait_for("a frame after the job", WAIT_S, |t| t.at_ms > done_ms)
    }

    /// The ledger's line for card `i` of the rig.
    fn earnings(&self, i: usize) -> CardEarnings {
        let rig = RigId::new(RIG).unwrap();
        let uuid = format!("SIM-{RIG}-{i}");
        self.coordinator
            .ledger()
            .and_then(|l| l.earnings(&rig).ok())
            .and_then(|e| {
                e.cards
                    .into_iter()
                    .find(|c| c.card.as_ref().is_some_and(|u| u.as_str() == uuid))
            })
            .unwrap_or_default()
    }

    /// Asserts that card 0 finished units after `at_fault` (the first frame showing the
    /// fault) and was never restarted.
    fn assert_healthy_card_kept_working(&self, at_fault: &Telemetry, end: &Telemetry) {
        let (before, after) = (card(at_fault, 0), card(end, 0));
        assert!(
            after.units_done >= before.units_done + HEALTHY_CARD_UNITS_AFTER_FAULT,
            "card 0 finished {} units when the fault showed and {} at the end: it stopped \
             working\n{}",
            before.units_done,
            after.units_done,
            self.rig.log()
        );
        assert_eq!(
            after.worker_restarts, 0,
            "the healthy card's worker restarted"
        );
        assert_ne!(after.state, CardState::Quarantined);
    }

    /// Lines of the rig's log containing every one of `words`.
    fn log_lines(&self, words: &[&str]) -> usize {
        self.rig
            .log()
            .lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .count()
    }
}

/// The fault `kind` on card 1 once it was given `after` units.
fn fault(kind: &str, after: u32) -> String {
    format!("[[sim.fault]]\ncard = 1\nafter_units = {after}\nfault = \"{kind}\"\n")
}

/// A worker fault that the supervisor answers by killing and restarting the worker: card 1
/// restarts once and finishes units with its new worker, card 0 keeps working throughout.
/// Card 1's telemetry shows `xid` as its last Xid error afterwards (0: none), card 0's none.
fn worker_is_restarted(kind: &str, extra: &str, log_reason: &str, xid: u32) {
    let units = 60;
    let r = FaultyRig::start(units, &format!("{extra}{}", fault(kind, 2)), |_| {});
    let at_fault = r
        .telemetry
        .wait_for("card 1's worker restarted", WAIT_S, |t| {
            card(t, 1).worker_restarts >= 1
        });
    assert!(
        (r.coordinator.credited().len() as u64) < units,
        "the job ended before the fault showed"
    );
    let end = r.finish();
    r.assert_healthy_card_kept_working(&at_fault, &end);
    let faulty = card(&end, 1);
    assert_eq!(
        faulty.worker_restarts,
        1,
        "one fault, one restart\n{}",
        r.rig.log()
    );
    assert_ne!(
        faulty.state,
        CardState::Quarantined,
        "one failure quarantines nothing"
    );
    assert_eq!((card(&end, 0).xid, faulty.xid), (0, xid), "last Xid errors");
    assert!(
        faulty.units_done > card(&at_fault, 1).units_done,
        "card 1 finished no unit with its restarted worker\n{}",
        r.rig.log()
    );
    assert_eq!(
        r.log_lines(&["worker failed; unit queued again", "gpu=1", log_reason]),
        1,
        "{}",
        r.rig.log()
    );
    assert_eq!(
        r.log_lines(&["worker started", &format!("SIM-{RIG}-1")]),
        2,
        "card 1's worker started again\n{}",
        r.rig.log()
    );
    assert_eq!(r.log_lines(&["worker failed"]), 1, "{}", r.rig.log());
}

#[test]
fn a_crashed_worker_is_restarted_while_the_other_card_keeps_working() {
    worker_is_restarted("crash", "", "worker failed:", 0);
}

#[test]
fn a_hung_worker_is_killed_and_restarted_while_the_other_card_keeps_working() {
    worker_is_restarted("hang", "worker_hang_ms = 500\n", "worker silent for", 0);
}

#[test]
fn a_sticky_error_kills_and_restarts_the_worker_while_the_other_card_keeps_working() {
    worker_is_restarted("sticky", "", "sticky error", 13);
}

/// Card 1 quarantined: it takes no unit afterwards and card 0 finishes the job.
fn assert_quarantined_for_good(r: &FaultyRig, at_quarantine: &Telemetry, end: &Telemetry) {
    r.assert_healthy_card_kept_working(at_quarantine, end);
    let (then, now) = (card(at_quarantine, 1), card(end, 1));
    assert_eq!(now.state, CardState::Quarantined);
    assert_eq!(now.governor_level, 5);
    assert_eq!(now.unit, None, "the quarantined card holds a unit");
    // The unit running when the card was quarantined is stopped and handed back, unless its
    // result was already on its way (the worker answered before the stop reached it): then
    // it counts as done. No other unit finishes or starts there afterwards.
    let in_flight = u32::from(then.unit.is_some());
    let after: Vec<_> = r
        .telemetry
        .frames()
        .into_iter()
        .filter(|t| t.at_ms >= at_quarantine.at_ms)
        .map(|t| card(&t, 1).clone())
        .collect();
    assert!(
        after.iter().all(|s| s.state == CardState::Quarantined
            && s.units_done <= then.units_done + in_flight
            && (s.unit.is_none() || s.unit == then.unit)),
        "card 1 left quarantine, or started or finished a unit in it: {then:#?} then {after:#?}"
    );
    assert_eq!(r.log_lines(&["card quarantined"]), 1, "{}", r.rig.log());
}

#[test]
fn a_card_fallen_off_the_bus_is_quarantined_and_the_other_card_finishes_the_job() {
    let units = 60;
    let conf = format!("governor_interval_ms = 200\n{}", fault("fallen_off_bus", 2));
    let r = FaultyRig::start(units, &conf, |_| {});
    let at_quarantine = r.telemetry.wait_for("card 1 quarantined", WAIT_S, |t| {
        card(t, 1).state == CardState::Quarantined
    });
    assert!(
        (r.coordinator.credited().len() as u64) < units,
        "the job ended before the fault showed"
    );
    let end = r.finish();
    assert_quarantined_for_good(&r, &at_quarantine, &end);
    assert_eq!(card(&end, 1).worker_restarts, 0);
    assert_eq!(
        r.log_lines(&["card quarantined", "Xid 79"]),
        1,
        "{}",
        r.rig.log()
    );
}

#[test]
fn repeated_worker_crashes_quarantine_the_card_and_the_other_card_finishes_the_job() {
    let units = 60;
    let conf = format!(
        "failures_to_quarantine = 2\n{}{}",
        fault("crash", 2),
        fault("crash", 3)
    );
    let r = FaultyRig::start(units, &conf, |_| {});
    let at_quarantine = r.telemetry.wait_for("card 1 quarantined", WAIT_S, |t| {
        card(t, 1).state == CardState::Quarantined
    });
    assert!(
        (r.coordinator.credited().len() as u64) < units,
        "the job ended before the fault showed"
    );
    let end = r.finish();
    assert_quarantined_for_good(&r, &at_quarantine, &end);
    assert_eq!(card(&end, 1).worker_restarts, 2, "{}", r.rig.log());
    assert_eq!(
        r.log_lines(&["card quarantined", "repeated worker failures"]),
        1,
        "{}",
        r.rig.log()
    );
    assert_eq!(
        r.log_lines(&["worker failed; unit queued again", "gpu=1"]),
        2,
        "{}",
        r.rig.log()
    );
}

#[test]
fn a_card_that_loses_telemetry_is_paused_and_resumes_while_the_other_card_keeps_working() {
    let units = 90;
    let conf = format!(
        "governor_interval_ms = 200\n{}for_ms = 2000\n",
        fault("lost_telemetry", 2)
    );
    let r = FaultyRig::start(units, &conf, |_| {});
    let paused = r
        .telemetry
        .wait_for("card 1 paused", WAIT_S, |t| card(t, 1).governor_level == 4);
    let paused_at = Instant::now();
    assert!(
        (r.coordinator.credited().len() as u64) < units,
        "the job ended before the fault showed"
    );
    let resumed = r.telemetry.wait_for("card 1 resumed", WAIT_S, |t| {
        t.at_ms > paused.at_ms && card(t, 1).governor_level < 4
    });
    let pause = Duration::from_millis(resumed.at_ms - paused.at_ms);
    assert!(
        pause >= Duration::from_millis(1200),
        "card 1 paused for only {pause:?} of its 2 s without telemetry"
    );
    assert!(
        paused_at.elapsed() < Duration::from_secs(10),
        "card 1 stayed paused long after its telemetry came back"
    );
    // During the pause card 1 starts nothing (the unit it ran is stopped and handed back,
    // or counts as done where its result was already on its way) and card 0 goes on.
    let frames = r.telemetry.frames();
    let during: Vec<_> = frames
        .iter()
        .filter(|t| t.at_ms >= paused.at_ms && t.at_ms < resumed.at_ms)
        .collect();
    let then = card(&paused, 1);
    let in_flight = u32::from(then.unit.is_some());
    assert!(
        during
            .iter()
            .map(|t| card(t, 1))
            .all(|s| s.governor_level == 4
                && s.units_done <= then.units_done + in_flight
                && (s.unit.is_none() || s.unit == then.unit)),
        "card 1 ran a unit while paused: {during:#?}"
    );
    let last_paused = during.last().unwrap();
    assert!(
        card(last_paused, 0).units_done
            >= card(&paused, 0).units_done + HEALTHY_CARD_UNITS_AFTER_FAULT,
        "card 0 did not keep working while card 1 was paused: {} -> {}",
        card(&paused, 0).units_done,
        card(last_paused, 0).units_done
    );
    let end = r.finish();
    r.assert_healthy_card_kept_working(&paused, &end);
    let faulty = card(&end, 1);
    assert!(
        faulty.units_done > card(&resumed, 1).units_done,
        "card 1 finished no unit after it resumed\n{}",
        r.rig.log()
    );
    assert_eq!(faulty.worker_restarts, 0, "a pause is not a worker failure");
    assert_ne!(faulty.state, CardState::Quarantined);
    assert!(
        r.log_lines(&[
            "no telemetry; the card counts as hot",
            &format!("SIM-{RIG}-1")
        ]) >= 5,
        "{}",
        r.rig.log()
    );
    assert_eq!(
        r.log_lines(&["no telemetry", &format!("SIM-{RIG}-0")]),
        0,
        "{}",
        r.rig.log()
    );
    assert!(
        r.log_lines(&[
            "thermal level changed",
            &format!("SIM-{RIG}-1"),
            "run=Pause"
        ]) >= 1,
        "{}",
        r.rig.log()
    );
    assert!(
        r.log_lines(&["thermal level changed", &format!("SIM-{RIG}-1"), "run=Run"]) >= 1,
        "{}",
        r.rig.log()
    );
}

#[test]
fn a_wrong_result_is_rejected_by_the_coordinator_and_the_unit_is_redone() {
    // The network cannot tell a faulty card from a cheat: the rig's unaudited credit is
    // forfeited, it is suspended (1 s here), then back on probation, and every unit is still
    // paid once.
    let units = 60;
    let r = FaultyRig::start(units, &fault("wrong_result", 2), |c| {
        c.verify_fraction = 1.0;
        c.trust.suspend_ms = 1_000;
    });
    wait_until("the wrong result rejected", WAIT_S, || {
        r.earnings(1).rejected_units > 0
    });
    assert!(
        (r.coordinator.credited().len() as u64) < units,
        "the job ended before the wrong result was rejected"
    );
    let end = r.finish();
    let (healthy, faulty) = (r.earnings(0), r.earnings(1));
    assert!(
        healthy.credited_units >= u64::from(HEALTHY_CARD_UNITS_AFTER_FAULT),
        "card 0 works again after the suspension: {} units credited",
        healthy.credited_units
    );
    assert_eq!(
        healthy.credited_units + faulty.credited_units,
        units,
        "every unit paid once"
    );
    assert_eq!(healthy.pending_units + faulty.pending_units, 0);
    // The rejected receipt's unit was assigned again and credited for a later attempt.
    let db = rusqlite::Connection::open_with_flags(
        &r.coordinator.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let reasons: Vec<String> = db
        .prepare("SELECT DISTINCT reason FROM receipts WHERE rig = ?1 AND state = 'rejected' ORDER BY reason")
        .unwrap()
        .query_map([RIG], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        reasons
            .iter()
            .all(|r| r == "result mismatch" || r == "forfeited"),
        "{reasons:?}"
    );
    let (unit, attempt): (i64, i64) = db
        .query_row(
            "SELECT unit, attempt FROM receipts WHERE rig = ?1 AND reason = 'result mismatch'",
            [RIG],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let redone: i64 = db
        .query_row(
            "SELECT attempt FROM receipts WHERE rig = ?1 AND unit = ?2 AND state = 'credited'",
            rusqlite::params![RIG, unit],
            |row| row.get(0),
        )
        .unwrap();
    assert!(
        redone > attempt,
        "unit {unit} rejected at attempt {attempt} and credited at attempt {redone}"
    );
    assert_eq!(card(&end, 1).worker_restarts, 0);
    assert_eq!(card(&end, 0).worker_restarts, 0);
}
