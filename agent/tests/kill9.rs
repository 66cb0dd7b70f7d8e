//! SIGKILL a real rigd at random moments while it works; nothing is lost or paid twice.
//! `RIGD_KILL_ROUNDS` sets the number of kills (default 50; 20 with the TPM key).
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

/// The same with receipts signed in a TPM (swtpm): a kill can land between journaling,
/// signing in the TPM and publishing.
#[test]
#[cfg(feature = "tpm")]
fn sigkill_while_a_tpm_signs_the_batches_loses_and_duplicates_no_receipt() {
    let state = tempfile::tempdir().unwrap();
    let tpm = common::swtpm::Swtpm::start(state.path());
    kill_run(rounds(20), &format!("key = \"tpm:{}\"\n", tpm.rest()));
}

fn kill_run(rounds: u64, key_conf: &str) {
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
    let mut during_work = 0;
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.gen_range(10..300)));
        if !rig.worker_pids().is_empty() {
            during_work += 1;
        }
        rig.restart();
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
        "{rounds} kills ({during_work} with workers running) in {:.1} s; {last} receipts, each recorded once; {dups} duplicate deliveries absorbed",
        killing.as_secs_f64()
    );
}
