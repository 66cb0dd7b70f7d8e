//! A rig whose receipt key changed (a replaced TPM or token) while receipts were journaled
//! but unsigned: it signs them with the new key, the network cannot attribute them to the
//! key it pinned, records them as refused ("key changed") and says so on the rig's acks
//! topic, and the rig keeps them as refused instead of sending them forever.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd::hold::{Point, TEST_HOLD_DIR_ENV};
use rigd_harness::{wait_until, Coordinator, Mosquitto, RigProcess};

#[test]
fn batches_signed_after_a_key_change_are_refused_once_and_kept_not_resent() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    // Two units, leases that outlast the test: the rig computes each unit once.
    let coordinator = Coordinator::gemm(broker.port, dir.path(), 2, 16, |c| {
        c.lease_ms = 600_000;
    });
    let holds = tempfile::tempdir().unwrap();
    std::fs::write(holds.path().join(Point::Signing.file_name()), b"").unwrap();
    let hold_dir = holds.path().display().to_string();
    let state = dir.path().join("k");
    let conf = format!(
        "rig_id = \"rig-k\"\n{}",
        RigProcess::base_conf(broker.port, 1, &state, "")
    );
    let mut rig =
        RigProcess::start_conf_env("rig-k", &state, &conf, &[(TEST_HOLD_DIR_ENV, &hold_dir)]);
    // Held at signing: every unit is computed and journaled, nothing is signed.
    wait_until("both receipts journaled, none signed", 60, || {
        rig.unsigned_and_unacked().0 >= 2
    });
    rig.kill9();
    let id = rigd_protocol::RigId::new("rig-k").unwrap();
    let pinned = coordinator.ledger().unwrap().registered(&id).unwrap();
    assert!(pinned.is_some(), "the first key was pinned");
    // The key is replaced; the hold is lifted.
    rigd_harness::remove_receipt_keys(&state);
    std::fs::remove_file(holds.path().join(Point::Signing.file_name())).unwrap();
    rig.start_again();
    wait_until("both receipts refused and kept", 60, || {
        rig.refused_batches().1 >= 2
    });
    assert_eq!(
        rig.unsigned_and_unacked(),
        (0, 0),
        "nothing left to send: the refused batches are out of the outbox"
    );
    let ledger = coordinator.ledger().unwrap();
    let refused = ledger.refused_lines(&id, 100).unwrap();
    assert!(!refused.is_empty());
    assert!(
        refused.iter().all(|r| r.reason == "key changed"),
        "{refused:?}"
    );
    let covered: u64 = refused.iter().map(|r| r.last_seq - r.first_seq + 1).sum();
    assert_eq!(covered, 2, "the ledger and the rig agree");
    assert_eq!(rig.refused_batches().1, 2);
    assert!(
        coordinator.credited().is_empty(),
        "nothing signed by the new key is paid"
    );
    assert!(rig.log().contains("refused a receipt batch for good"));
}
