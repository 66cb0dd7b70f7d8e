//! The coordinator with its ledger on PostgreSQL (a real server the test starts), real rigd
//! processes, and the coordinator killed with SIGKILL mid-job: the one started after it on the
//! same database finishes the job, every unit credited once and every receipt each rig
//! journaled recorded once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_coordinator::ledger::Location;
use rigd_harness::{wait_job_done, Coordinator, Mosquitto, RigProcess};
use rigd_testkit::postgres::Postgres;

#[test]
fn a_coordinator_on_postgresql_killed_mid_job_resumes_and_credits_every_receipt_once() {
    let broker = Mosquitto::start();
    let database = Postgres::start();
    let ledger = Location::parse(&database.url());
    let dir = tempfile::tempdir().unwrap();
    let units = 120;
    let mut first =
        Coordinator::process_gemm_at(broker.port, dir.path(), units, 32, None, ledger.clone());
    let rigs: Vec<RigProcess> = ["pg-a", "pg-b"]
        .iter()
        .map(|name| {
            RigProcess::start(
                name,
                broker.port,
                2,
                &dir.path().join(name),
                "sim.gflops = 0.0002\n",
            )
        })
        .collect();
    // Killed once part of the job is credited, with more of it leased and on the way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while first.credited().len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "no units credited on PostgreSQL; the coordinator's log ends:\n{}",
            first.log_tail(30)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    first.kill9();
    let credited_before = first.credited().len() as u64;
    assert!(credited_before < units, "the job finished before the kill");
    let second = Coordinator::process_gemm_at(broker.port, dir.path(), units, 32, None, ledger);
    let rigs: Vec<&RigProcess> = rigs.iter().collect();
    wait_job_done(&second, units, &rigs, 240);
    second.assert_exactly_once(units, &rigs);
    let reader = second.ledger().expect("the ledger on PostgreSQL");
    for rig in &rigs {
        let id = rigd_protocol::RigId::new(rig.rig.as_str()).unwrap();
        let earnings = reader.earnings(&id).unwrap();
        assert_eq!(earnings.missing_seqs, 0, "{}", rig.rig);
        assert_eq!(earnings.last_seq, rig.journal().0, "{}", rig.rig);
    }
}
