//! SIGTERM, as `systemctl stop` sends it: in-flight units finish, their receipts are journaled
//! and signed, rigd exits 0 well within the unit's `TimeoutStopSec=`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{wait_job_done, wait_until, Coordinator, Mosquitto, RigProcess};
use std::time::{Duration, Instant};

#[test]
fn sigterm_during_work_drains_in_flight_units_flushes_the_journal_and_exits_0() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let units = 60;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 64, |c| {
        c.units_per_card = 4;
    });
    let mut rig = RigProcess::start(
        "rig-term",
        broker.port,
        2,
        &dir.path().join("t"),
        "sim_gflops = 0.005\n",
    );
    wait_until("receipts journaled and workers busy", 30, || {
        rig.journal().0 > 0 && !rig.worker_pids().is_empty()
    });
    let (before, _) = rig.journal();
    let t0 = Instant::now();
    assert_eq!(rig.terminate(), Some(0), "{}", rig.log());
    let stop = t0.elapsed();
    let log = rig.log();
    assert!(log.contains("stopping: draining in-flight units"), "{log}");
    assert!(log.contains("rigd stopped"), "{log}");
    assert!(!log.contains("drain timed out"), "{log}");
    assert!(stop < Duration::from_secs(45), "stop took {stop:?}");
    let (after, _) = rig.journal();
    assert!(
        after > before,
        "the units in flight at SIGTERM were not journaled: seq {before} -> {after}"
    );
    // Started again, the rig finishes the job; every unit is credited exactly once.
    rig.restart();
    wait_job_done(&coordinator, units, &[&rig], 120);
    coordinator.assert_exactly_once(units, &[&rig]);
}
