//! End to end against a real mosquitto: rigd processes, the coordinator, rigctl.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd::hold::{Point, TEST_HOLD_DIR_ENV};
use rigd_harness::{wait_job_done, wait_until, workspace_bin, Coordinator, Mosquitto, RigProcess};
use std::process::Command;
use std::time::Duration;

#[test]
fn rigd_processes_do_units_the_ledger_credits_them_and_rigctl_reads_them_back() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let units = 60;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 32, |c| {
        c.verify_fraction = 0.2;
        c.micros_per_mflop = 1000;
    });
    let a = RigProcess::start("rig-a", broker.port, 1, &dir.path().join("a"), "");
    let b = RigProcess::start("rig-b", broker.port, 3, &dir.path().join("b"), "");
    wait_job_done(&coordinator, units, &[&a, &b], 60);
    coordinator.assert_exactly_once(units, &[&a, &b]);
    assert!(a.journal().0 > 0 && b.journal().0 > 0, "both rigs did work");

    let rigctl = workspace_bin("rigctl");
    let broker_arg = format!("127.0.0.1:{}", broker.port);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(&rigctl)
            .args(["--broker", &broker_arg, "--json", "earnings"])
            .output()
            .unwrap();
        let last = String::from_utf8_lossy(&out.stdout).into_owned();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let credited: u64 = json["rigs"]
            .as_array()
            .map(|rigs| {
                rigs.iter()
                    .filter_map(|r| r["total"]["credited_units"].as_u64())
                    .sum()
            })
            .unwrap_or(0);
        let paid = json["rigs"][0]["total"]["credited_micros"]
            .as_u64()
            .unwrap_or(0);
        if credited == units && paid > 0 && last.contains("rig-b") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rigctl earnings never showed {units} credited units:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = Command::new(&rigctl)
        .args(["--broker", &broker_arg, "--json", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("rig-a") && text.contains("rig-b"),
        "{text}"
    );
    let out = Command::new(&rigctl)
        .args(["--broker", &broker_arg, "gpus", "rig-b"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("SIM-rig-b-2"),
        "{text}"
    );
}

#[test]
fn a_broker_outage_queues_receipts_durably_and_they_drain_afterwards() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let units = 240;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 64, |c| {
        c.units_per_card = 12
    });
    let slow = "sim.gflops = 0.01\n";
    let a = RigProcess::start("rig-a", broker.port, 2, &dir.path().join("a"), slow);
    let b = RigProcess::start("rig-b", broker.port, 1, &dir.path().join("b"), slow);
    wait_until("work under way", 30, || coordinator.credited().len() >= 20);
    broker.stop();
    let before = (a.journal().0, b.journal().0);
    wait_until(
        "both rigs to keep computing with the broker down",
        60,
        || a.journal().0 >= before.0 + 3 && b.journal().0 >= before.1 + 3,
    );
    assert!(
        a.journal().1 >= 3 && b.journal().1 >= 3,
        "receipts wait in the outbox during the outage"
    );
    broker.restart();
    wait_job_done(&coordinator, units, &[&a, &b], 120);
    coordinator.assert_exactly_once(units, &[&a, &b]);
}

#[test]
fn a_crashed_worker_is_restarted_and_its_unit_queued_again_not_lost_or_paid_twice() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let units = 60;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 64, |_| {});
    let holds = tempfile::tempdir().unwrap();
    let rig = RigProcess::start_env(
        "rig-a",
        broker.port,
        1,
        &dir.path().join("a"),
        "sim.gflops = 0.004\nfailures_to_quarantine = 10\n",
        &[(TEST_HOLD_DIR_ENV, &holds.path().display().to_string())],
    );
    // Each kill lands mid-unit by construction: the worker holds a unit it received
    // (`rigd::hold`) until it is dead.
    let computing = holds.path().join(Point::Computing.file_name());
    for _ in 0..3 {
        let held = rig.log().matches("held by a test").count();
        let restarts = rig.log().matches("worker started").count();
        std::fs::write(&computing, b"").unwrap();
        wait_until("a worker holding a unit", 30, || {
            rig.log().matches("held by a test").count() > held
        });
        assert!(
            (coordinator.credited().len() as u64) < units - 10,
            "the job ended before the worker was killed"
        );
        for pid in rig.worker_pids() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::fs::remove_file(&computing).unwrap();
        wait_until("the worker restarted", 30, || {
            rig.log().matches("worker started").count() > restarts
        });
    }
    wait_job_done(&coordinator, units, &[&rig], 120);
    coordinator.assert_exactly_once(units, &[&rig]);
    assert!(
        rig.log().matches("unit queued again").count() >= 3,
        "{}",
        rig.log()
    );
}
