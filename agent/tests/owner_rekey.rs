//! A replaced key store on a provisioned rig, end to end: real mosquitto with mutual TLS, the
//! provisioner, the coordinator reading the provisioner's registry, rigd, the dashboard and
//! headless Chromium. The rig's receipts are journaled but not yet signed when its key
//! store is replaced (a new TPM); rigd claims again with its owner's claim to stay the same
//! rig, seals the old receipts, and the network refuses them as `key changed`: the rig keeps
//! them as refused and stops sending them, the owner's page shows them with the reason in
//! words, and the rig earns again under its new key with the same id.
//!
//! Needs the workspace's binaries and the e2e driver's npm package, as `./test.sh` provides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigd::hold::{Point, TEST_HOLD_DIR_ENV};
use rigd_harness::dashboard::{browse_as, page_table};
use rigd_harness::tls::{
    add_owner, create_claim, provision_conf, provisioned_id, wait_provisioned, ProvisioningFleet,
};
use rigd_harness::{wait_until, Coordinator, RigProcess};
use rigd_protocol::RigId;
use std::path::Path;

#[test]
fn a_rekeyed_rig_keeps_its_id_its_old_receipts_are_refused_on_the_owners_page_and_it_earns_again() {
    let fleet = ProvisioningFleet::start();
    let (pki, broker, work) = (&fleet.pki, &fleet.broker, &fleet.work);
    let password = add_owner(pki, broker.port, "erin").unwrap();
    // Two uses: the first claim and the rekey.
    let token = create_claim(pki, broker.port, "erin", 2);
    let coordinator_tls = pki.client("fleet:coordinator");
    let registry = fleet.registry();
    // Leases that outlast the test: the rig holds its units until the rekey ends them.
    let coord = Coordinator::gemm(broker.port, work.path(), 40, 16, |c| {
        c.tls = Some(coordinator_tls.clone());
        c.registry = Some(registry.clone());
        c.lease_ms = 600_000;
    });
    let holds = tempfile::tempdir().unwrap();
    std::fs::write(holds.path().join(Point::Signing.file_name()), b"").unwrap();
    let hold_dir = holds.path().display().to_string();
    let dir = work.path().join("rig");
    let conf = RigProcess::base_conf(broker.port, 1, &dir, &provision_conf(pki, &token));
    let mut rig = RigProcess::start_conf_env("rig", &dir, &conf, &[(TEST_HOLD_DIR_ENV, &hold_dir)]);
    let id = wait_provisioned(&mut rig);
    let rig_id = RigId::new(&id).unwrap();
    // Held at signing: every unit leased to the rig is computed and journaled, none signed.
    let leased = || {
        coord
            .ledger()
            .map(|l| {
                l.leases(&coord.job)
                    .unwrap()
                    .iter()
                    .filter(|(_, _, r, _)| *r == rig_id)
                    .count() as u64
            })
            .unwrap_or(0)
    };
    wait_until("every leased unit journaled, none signed", 60, || {
        let unsigned = rig.unsigned_and_unacked().0;
        unsigned > 0 && unsigned == leased()
    });
    rig.kill9();
    let journaled = rig.unsigned_and_unacked().0;

    // The key store is replaced (the TLS key is the receipt key here); the hold is lifted.
    rigd_harness::remove_receipt_keys(&dir);
    std::fs::remove_file(holds.path().join(Point::Signing.file_name())).unwrap();
    rig.start_again();
    wait_until("the old receipts refused and kept", 60, || {
        rig.refused_batches().1 >= journaled
    });
    assert_eq!(rig.refused_batches().1, journaled, "{}", rig.state_report());
    assert_eq!(
        provisioned_id(&dir).as_deref(),
        Some(id.as_str()),
        "the same rig id under the new key"
    );
    let rigs = fleet.provisioner.rigs();
    assert_eq!(rigs.len(), 1, "no second rig: {rigs:?}");
    assert_ne!(rigs[0].3, "", "a certificate serial");

    // It earns again: receipts under the new key are credited.
    wait_until("receipts under the new key credited", 60, || {
        coord.ledger().is_some_and(|l| {
            l.receipt_lines(&rig_id, None, false, 100)
                .unwrap()
                .iter()
                .any(|r| r.state == "credited" && r.seq > journaled)
        })
    });
    let ledger = coord.ledger().unwrap();
    let refused = ledger.refused_lines(&rig_id, 100).unwrap();
    assert!(
        refused
            .iter()
            .all(|r| r.reason == "key changed" && r.last_seq <= journaled),
        "{refused:?}"
    );
    let covered: u64 = refused.iter().map(|r| r.last_seq - r.first_seq + 1).sum();
    assert_eq!(
        covered, journaled,
        "every old receipt refused once: {refused:?}"
    );
    assert!(
        ledger
            .receipt_lines(&rig_id, None, false, 100)
            .unwrap()
            .iter()
            .all(|r| r.seq > journaled),
        "none of the old receipts credited"
    );

    let dashboard = fleet.dashboard(&coord.db);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rekey-screenshots");
    let page = browse_as(&dashboard.url(), "erin", &password, &shots, None);
    assert_eq!(page["failures"], serde_json::json!([]), "{page}");
    let rows = page_table(&page, "disputes");
    // Columns: rig, receipts, unit, when, reason, explanation.
    assert!(
        rows.iter().any(|r| r[0] == id
            && r[4] == "key changed"
            && r[5].contains("different key")
            && !r[3].is_empty()),
        "the refused receipts and their reason are on the page: {rows:?}"
    );
    assert!(
        rows.iter().all(|r| r[4] == "key changed"),
        "nothing else disputed: {rows:?}"
    );
    assert!(shots.join("erin-desktop.png").exists());
}
