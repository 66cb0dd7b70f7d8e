//! A rig whose journal is lost while its key is kept (a reflash, a swapped disk) learns how
//! far the network recorded it and continues above that, so its new work is paid.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_harness::{wait_job_done, wait_until, Coordinator, Mosquitto, RigProcess};

#[test]
fn a_rig_whose_journal_is_lost_but_key_kept_continues_above_the_network_record_and_is_paid() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let units = 120;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 64, |c| {
        c.lease_ms = 3_000;
    });
    let state = dir.path().join("j");
    let mut rig = RigProcess::start("rig-j", broker.port, 2, &state, "sim.gflops = 0.01\n");
    wait_until("work credited", 60, || coordinator.credited().len() >= 20);
    rig.kill9();
    let recorded = coordinator.seqs("rig-j").last().copied().unwrap();
    let credited_before = coordinator.credited().len();
    for file in ["journal.db", "journal.db-wal", "journal.db-shm"] {
        let _ = std::fs::remove_file(state.join(file));
    }
    rig.start_again();
    wait_until("rigd continuing above the network's record", 30, || {
        rig.log().contains("receipts continue above it")
    });
    wait_until("new work credited within a minute", 60, || {
        coordinator.credited().len() > credited_before
    });
    wait_job_done(&coordinator, units, &[&rig], 180);
    let credited = coordinator.credited();
    assert_eq!(credited.len() as u64, units, "every unit credited");
    assert!(credited.iter().all(|(_, n)| *n == 1), "{credited:?}");
    let (last, unacked) = rig.journal();
    assert_eq!(unacked, 0);
    let seqs = coordinator.seqs("rig-j");
    // The new journal continues above the network's record plus the outbox bound (200,000).
    // The record it heard is the coordinator's retained earnings, which may lag the ledger
    // read here, or lead it when batches published just before the kill land after it: the
    // floor it chose is in its log.
    let log = rig.log();
    let line = log
        .lines()
        .find(|l| l.contains("receipts continue above it"))
        .unwrap();
    let floor: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("floor="))
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("no floor in {line:?}"));
    assert!(
        floor > 200_000 && floor <= *seqs.iter().filter(|s| **s < 200_000).max().unwrap() + 200_000,
        "floor {floor} is not the network's record of the old journal plus 200000"
    );
    let new: Vec<u64> = seqs.iter().copied().filter(|s| *s > floor).collect();
    assert_eq!(
        new,
        (floor + 1..=last).collect::<Vec<_>>(),
        "every receipt of the new journal recorded, above the old record {recorded}"
    );
}
