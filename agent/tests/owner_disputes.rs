//! A dispute on the owner's page, end to end: real mosquitto with mutual TLS, the
//! provisioner, the coordinator, a rigd provisioned with the owner's claim, the dashboard and
//! headless Chromium. The rig's card returns a wrong result; the network recomputes it and
//! rejects it, and the owner's page shows the rejected receipt with its reason in words.
//! (A batch refused after a key change is on the owner's page in `owner_rekey.rs`; the rig
//! keeps refused batches as `key_change.rs` shows.)
//!
//! Needs the workspace's binaries and the e2e driver's npm package, as `./test.sh` provides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigd_harness::dashboard::{browse_as, page_table};
use rigd_harness::tls::{
    add_owner, create_claim, provision_conf, wait_provisioned, ProvisioningFleet,
};
use rigd_harness::{wait_until, Coordinator, RigProcess};
use rigd_protocol::RigId;
use std::path::Path;

const WRONG_RESULT: &str = "[[sim.fault]]\ncard = 0\nafter_units = 1\nfault = \"wrong_result\"\n";

#[test]
fn a_result_rejected_on_recompute_shows_on_the_owners_page_with_its_reason() {
    let fleet = ProvisioningFleet::start();
    let (pki, broker, work) = (&fleet.pki, &fleet.broker, &fleet.work);
    let password = add_owner(pki, broker.port, "carol").unwrap();
    let token = create_claim(pki, broker.port, "carol", 1);
    let coordinator_tls = pki.client("fleet:coordinator");
    // Every result audited; leases that outlast the test, so each unit is computed once.
    let coord = Coordinator::gemm(broker.port, work.path(), 40, 16, |c| {
        c.tls = Some(coordinator_tls.clone());
        c.verify_fraction = 1.0;
        c.lease_ms = 600_000;
    });

    // The faulty rig: its card's second unit is wrong; the network recomputes it, rejects
    // it and suspends the rig (for an hour: it is leased nothing more in this test).
    let dir = work.path().join("faulty");
    let extra = format!("{}{WRONG_RESULT}", provision_conf(pki, &token));
    let conf = RigProcess::base_conf(broker.port, 1, &dir, &extra);
    let mut faulty = RigProcess::start_conf_env("faulty", &dir, &conf, &[]);
    let faulty_id = RigId::new(wait_provisioned(&mut faulty)).unwrap();
    wait_until("the wrong result rejected on recompute", 60, || {
        coord.ledger().is_some_and(|l| {
            l.receipt_lines(&faulty_id, None, true, 100)
                .unwrap()
                .iter()
                .any(|r| r.reason.as_deref() == Some("result mismatch"))
        })
    });

    let dashboard = fleet.dashboard(&coord.db);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dispute-screenshots");
    let page = browse_as(&dashboard.url(), "carol", &password, &shots, None);
    assert_eq!(page["failures"], serde_json::json!([]), "{page}");
    let rows = page_table(&page, "disputes");
    // Columns: rig, receipts, unit, when, reason, explanation.
    let shown = |rig: &RigId, reason: &str, says: &str| {
        rows.iter().any(|r| {
            r[0] == rig.as_str() && r[4] == reason && r[5].contains(says) && !r[3].is_empty()
        })
    };
    assert!(
        shown(&faulty_id, "result mismatch", "recomputed this unit"),
        "the rejected result and its reason are on the page: {rows:?}"
    );
    let rejected = coord
        .ledger()
        .unwrap()
        .receipt_lines(&faulty_id, None, true, 100)
        .unwrap();
    assert_eq!(
        rows.len(),
        rejected.len(),
        "every rejected receipt, and nothing else, is a dispute: {rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r[4] == "result mismatch" || r[4] == "forfeited"),
        "{rows:?}"
    );
    assert_eq!(page["totals"]["rejected"], rejected.len().to_string());
    assert!(shots.join("carol-desktop.png").exists());
}
