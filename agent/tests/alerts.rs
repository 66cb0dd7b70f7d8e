//! Alerts from the fleet side end to end: real mosquitto with mutual TLS, the provisioner,
//! the coordinator, two rigd processes of one owner, the dashboard, and a webhook receiver in
//! the test. A SIGKILLed rig is one offline alert after the owner's delay and one recovery
//! notice once it is back; a card quarantined by an injected fault is one alert; every
//! notice is signed with the owner's secret.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigd_harness::dashboard::{api, WebhookReceiver};
use rigd_harness::tls::{
    add_owner, create_claim, provision_conf, wait_provisioned, ProvisioningFleet,
};
use rigd_harness::{wait_until, Coordinator, RigProcess};
use serde_json::json;
use std::time::{Duration, Instant};

const OFFLINE_AFTER_S: u64 = 2;

fn count(notices: &[(serde_json::Value, bool)], rig: &str, kind: &str, state: &str) -> usize {
    notices
        .iter()
        .filter(|(n, _)| n["rig"] == rig && n["kind"] == kind && n["state"] == state)
        .count()
}

#[test]
fn a_killed_rig_and_a_quarantined_card_are_one_signed_alert_each_and_recovery_is_noticed() {
    let fleet = ProvisioningFleet::start();
    let (pki, broker) = (&fleet.pki, &fleet.broker);
    let password = add_owner(pki, broker.port, "alice").unwrap();
    let token = create_claim(pki, broker.port, "alice", 2);
    let coordinator_tls = pki.client("fleet:coordinator");
    let coord = Coordinator::gemm(broker.port, fleet.work.path(), 100_000, 16, |c| {
        c.tls = Some(coordinator_tls.clone());
    });
    // Plain keys, then the [provision] table, then the fault's array of tables.
    let faulty = (
        "governor_interval_ms = 200\nsim.gflops = 0.01\n",
        "[[sim.fault]]\ncard = 1\nafter_units = 2\nfault = \"fallen_off_bus\"\n",
    );
    let mut rigs = vec![];
    for (name, cards, (keys, tables)) in [
        ("steady", 1, ("sim.gflops = 0.01\n", "")),
        ("faulty", 2, faulty),
    ] {
        let dir = fleet.work.path().join(name);
        let provision = provision_conf(pki, &token);
        let conf = RigProcess::base_conf(
            broker.port,
            cards,
            &dir,
            &format!("{keys}{provision}{tables}"),
        );
        let mut rig = RigProcess::start_conf_env(name, &dir, &conf, &[]);
        wait_provisioned(&mut rig);
        rigs.push(rig);
    }
    let dashboard = fleet.dashboard(&coord.db);
    let (status, login) = api(
        dashboard.port,
        "POST",
        "/api/login",
        None,
        Some(&json!({ "name": "alice", "password": password })),
    );
    assert_eq!(status, 200, "{login}");
    let session = login["token"].as_str().unwrap().to_owned();
    let session = Some(session.as_str());
    wait_until("both rigs online on the dashboard", 30, || {
        let (_, rigs) = api(dashboard.port, "GET", "/api/rigs", session, None);
        rigs["rigs"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["online"] == true))
    });

    let receiver = WebhookReceiver::start();
    let hook = format!("http://127.0.0.1:{}/hook", receiver.port);
    let (status, set) = api(
        dashboard.port,
        "PUT",
        "/api/alerts",
        session,
        Some(&json!({ "url": hook, "offline_after_s": OFFLINE_AFTER_S })),
    );
    assert_eq!(status, 200, "{set}");
    let secret = set["secret"].as_str().unwrap().to_owned();
    let (steady, faulty) = (rigs[0].rig.clone(), rigs[1].rig.clone());

    wait_until("the quarantined card's alert", 60, || {
        count(&receiver.notices(&secret), &faulty, "quarantined", "alert") == 1
    });
    let killed = Instant::now();
    rigs[0].kill9();
    wait_until("the offline alert", 30, || {
        count(&receiver.notices(&secret), &steady, "offline", "alert") == 1
    });
    let waited = killed.elapsed();
    assert!(
        waited >= Duration::from_secs(OFFLINE_AFTER_S),
        "alerted {waited:?} after the kill, before the owner's delay"
    );
    rigs[0].start_again();
    wait_until("the recovery notice", 30, || {
        count(&receiver.notices(&secret), &steady, "offline", "recovered") == 1
    });

    let notices = receiver.notices(&secret);
    assert!(
        notices.iter().all(|(_, signed)| *signed),
        "every notice is signed: {notices:?}"
    );
    assert_eq!(
        count(&notices, &steady, "offline", "alert"),
        1,
        "{notices:?}"
    );
    assert_eq!(
        count(&notices, &steady, "offline", "recovered"),
        1,
        "{notices:?}"
    );
    assert_eq!(
        count(&notices, &faulty, "quarantined", "alert"),
        1,
        "{notices:?}"
    );
    let quarantined = notices
        .iter()
        .find(|(n, _)| n["kind"] == "quarantined")
        .map(|(n, _)| n.clone())
        .unwrap();
    assert_eq!(
        quarantined["card"],
        format!("SIM-{faulty}-1"),
        "{quarantined}"
    );
    assert_eq!(quarantined["owner"], "alice");
    assert!(quarantined["message"]
        .as_str()
        .unwrap()
        .contains("quarantined"));
    assert!(
        notices
            .iter()
            .all(|(n, _)| n["rig"] == steady || n["rig"] == faulty),
        "{notices:?}"
    );
    // Each notice is a state change of one incident: none repeats.
    let mut seen = std::collections::HashSet::new();
    for (n, _) in &notices {
        assert!(
            seen.insert((n["incident"].to_string(), n["state"].to_string())),
            "repeated: {n}"
        );
    }
    // The dashboard shows the incidents too: the offline one closed, the quarantine open.
    let (_, alerts) = api(dashboard.port, "GET", "/api/alerts", session, None);
    let incidents = alerts["incidents"].as_array().unwrap();
    assert!(incidents
        .iter()
        .any(|i| i["kind"] == "offline" && !i["closed_ms"].is_null()));
    assert!(incidents
        .iter()
        .any(|i| i["kind"] == "quarantined" && i["closed_ms"].is_null()));
}
