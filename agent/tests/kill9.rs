//! SIGKILL a real rigd at random moments while it works; nothing is lost or paid twice.
//! `RIGD_KILL_ROUNDS` sets the number of kills (default 50; 30 with the slow key, 20 with the TPM key).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{wait_job_done, wait_until, Coordinator, Mosquitto, RigProcess};
use rand::Rng;
use std::time::{Duration, Instant};

fn rounds(default: u64) -> u64 {
    std::env::var("RIGD_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_no_receipt() {
    kill_run(rounds(50), "");
}

/// With a key that takes 150 ms per signature (a slow TPM), most kills land while receipts
/// are journaled but not yet signed, or signed but not yet published and acknowledged.
#[test]
fn sigkill_between_journaling_signing_and_publishing_loses_and_duplicates_no_receipt() {
    let (unsigned, unacked) =
        kill_run(rounds(30), "key = \"file:receipt-key?sign_delay_ms=150\"\n");
    assert!(
        unsigned > 0,
        "no kill landed between journaling and signing"
    );
    assert!(
        unacked > 0,
        "no kill landed between signing and acknowledgement"
    );
}

/// The same with receipts signed in a TPM (swtpm): a kill can land between journaling,
/// signing in the TPM and publishing.
#[test]
#[cfg(feature = "tpm")]
fn sigkill_while_a_tpm_signs_the_batches_loses_and_duplicates_no_receipt() {
    let state = tempfile::tempdir().unwrap();
    let tpm = common::swtpm::Swtpm::start(state.path());
    kill_run(rounds(20), &format!("key = \"tpm:{}\"\n", tpm.rest()));
}

/// Returns how many kills left receipts journaled but unsigned, and how many left signed
/// batches unacknowledged.
fn kill_run(rounds: u64, key_conf: &str) -> (u64, u64) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let units = rounds * 4 + 40;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 64, |c| {
        c.units_per_card = 4;
        c.lease_ms = 5_000;
    });
    let mut rig = RigProcess::start(
        "rig-k",
        broker.port,
        2,
        &dir.path().join("k"),
        &format!("sim_gflops = 0.01\n{key_conf}"),
    );
    wait_until("first receipt", 30, || rig.journal().0 > 0);
    let mut rng = rand::thread_rng();
    let t0 = Instant::now();
    let (mut during_work, mut unsigned, mut unacked) = (0, 0, 0);
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.gen_range(10..300)));
        if !rig.worker_pids().is_empty() {
            during_work += 1;
        }
        rig.kill9();
        let (u, b) = rig.unsigned_and_unacked();
        unsigned += u64::from(u > 0);
        unacked += u64::from(b > 0);
        rig.start_again();
    }
    let killing = t0.elapsed();
    wait_job_done(&coordinator, units, &[&rig], 180);
    coordinator.assert_exactly_once(units, &[&rig]);
    let (last, _) = rig.journal();
    let dups = coordinator
        .ledger()
        .and_then(|l| {
            l.duplicate_deliveries(&rigd_protocol::RigId::new("rig-k").unwrap())
                .ok()
        })
        .unwrap_or(0);
    println!(
        "{rounds} kills ({during_work} with workers running, {unsigned} with receipts journaled but unsigned, {unacked} with signed batches unacknowledged) in {:.1} s; {last} receipts, each recorded once; {dups} duplicate deliveries absorbed",
        killing.as_secs_f64()
    );
    (unsigned, unacked)
}
