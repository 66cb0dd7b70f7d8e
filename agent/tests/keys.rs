//! Receipts signed by hardware-held keys, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::swtpm::Swtpm;
use common::{wait_job_done, Coordinator, Mosquitto, RigProcess};

#[test]
fn a_rig_signing_with_a_tpm_key_gets_every_receipt_verified_and_credited() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let tpm_state = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(tpm_state.path());
    let units = 40;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 32, |c| {
        c.verify_fraction = 0.2;
    });
    let key = format!("key = \"tpm:{}\"\n", tpm.rest());
    let rig = RigProcess::start("rig-tpm", broker.port, 2, &dir.path().join("r"), &key);
    wait_job_done(&coordinator, units, &[&rig], 60);
    coordinator.assert_exactly_once(units, &[&rig]);
    let log = rig.log();
    assert!(log.contains("tpm P-256 handle 0x81010001"), "{log}");
    assert!(!log.contains("SOFTWARE key"), "{log}");
}
