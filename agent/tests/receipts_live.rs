//! `rigctl receipts verify RIG`: the batches a real rigd publishes are checked live.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_harness::{wait_job_done, workspace_bin, Coordinator, Mosquitto, RigProcess};
use std::process::Command;

#[test]
fn rigctl_verifies_every_receipt_a_working_rig_publishes_and_refuses_another_key() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    // About 0.33 s a unit, two cards: some 15 s of work, longer than the three listens.
    let units = 90;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 32, |_| {});
    let rig = RigProcess::start(
        "rig-live",
        broker.port,
        2,
        &dir.path().join("r"),
        "sim.gflops = 0.0002\n",
    );
    rigd_harness::wait_until("rigd up", 30, || rig.log().contains("rigd started"));
    let broker_arg = format!("127.0.0.1:{}", broker.port);
    // rigctl takes the rig's key from the network's record (the coordinator's retained
    // earnings), not from the rig's own status.
    rigd_harness::wait_until("the coordinator's record of the rig's key", 30, || {
        let out = Command::new(workspace_bin("rigctl"))
            .args(["--broker", &broker_arg, "--json", "earnings", "rig-live"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("rig-live")
    });
    let verify = |extra: &[&str]| {
        Command::new(workspace_bin("rigctl"))
            .args(["--broker", &broker_arg, "--wait-ms", "2500"])
            .args(extra)
            .args(["receipts", "verify", "rig-live"])
            .output()
            .unwrap()
    };
    let out = verify(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("key: secp256k1:"), "{text}");
    let summary = text.lines().last().unwrap_or_default();
    let checked: u64 = summary
        .split(" receipt(s) checked")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(checked > 0 && summary.ends_with(", 0 refused"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.ends_with("  ok")).count() as u64,
        checked,
        "{text}"
    );

    let other = "secp256k1:0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    let out = verify(&["--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.as_array().is_some_and(|a| !a.is_empty()), "{json}");
    let out = Command::new(workspace_bin("rigctl"))
        .args(["--broker", &broker_arg, "--wait-ms", "2500"])
        .args(["receipts", "verify", "rig-live", "--key", other])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("does not match the rig's key"), "{text}");

    wait_job_done(&coordinator, units, &[&rig], 120);
    coordinator.assert_exactly_once(units, &[&rig]);
    let out = Command::new(workspace_bin("rigctl"))
        .args(["--broker", &broker_arg, "--wait-ms", "600"])
        .args(["receipts", "verify", "rig-live"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("published no receipt batch within 600 ms"),
        "{err}"
    );
}
