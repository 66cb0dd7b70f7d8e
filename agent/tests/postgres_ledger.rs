//! The coordinator with its ledger on PostgreSQL (a real server the test starts), real rigd
//! processes, and the coordinator killed with SIGKILL mid-job: the one started after it on the
//! same database, or the replica standing by beside it, finishes the job, every unit credited
//! once and every receipt each rig journaled recorded once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_coordinator::ledger::Location;
use rigd_harness::{wait_job_done, Coordinator, Mosquitto, RigProcess};
use rigd_testkit::postgres::Postgres;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The harness's lease length (`--lease-ms`).
const LEASE_MS: u64 = 10_000;

fn rigs(port: u16, dir: &std::path::Path, names: &[&str]) -> Vec<RigProcess> {
    names
        .iter()
        .map(|name| RigProcess::start(name, port, 2, &dir.join(name), "sim.gflops = 0.0002\n"))
        .collect()
}

/// Waits until `c` has credited `n` units.
fn wait_credited(c: &Coordinator, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.credited().len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} units credited on PostgreSQL; the coordinator's log ends:\n{}",
            c.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ledger holds every rig's journal, seq for seq, with no gap.
fn assert_ledger_matches_journals(c: &Coordinator, rigs: &[&RigProcess]) {
    let reader = c.ledger().expect("the ledger on PostgreSQL");
    for rig in rigs {
        let id = rigd_protocol::RigId::new(rig.rig.as_str()).unwrap();
        let earnings = reader.earnings(&id).unwrap();
        assert_eq!(earnings.missing_seqs, 0, "{}", rig.rig);
        assert_eq!(earnings.last_seq, rig.journal().0, "{}", rig.rig);
    }
}

#[test]
fn a_coordinator_on_postgresql_killed_mid_job_resumes_and_credits_every_receipt_once() {
    let broker = Mosquitto::start();
    let database = Postgres::start();
    let ledger = Location::parse(&database.url());
    let dir = tempfile::tempdir().unwrap();
    let units = 120;
    let mut first =
        Coordinator::process_gemm_at(broker.port, dir.path(), units, 32, None, ledger.clone());
    let rigs = rigs(broker.port, dir.path(), &["pg-a", "pg-b"]);
    // Killed once part of the job is credited, with more of it leased and on the way.
    wait_credited(&first, 10);
    first.kill9();
    let credited_before = first.credited().len() as u64;
    assert!(credited_before < units, "the job finished before the kill");
    let second = Coordinator::process_gemm_at(broker.port, dir.path(), units, 32, None, ledger);
    let rigs: Vec<&RigProcess> = rigs.iter().collect();
    wait_job_done(&second, units, &rigs, 240);
    second.assert_exactly_once(units, &rigs);
    assert_ledger_matches_journals(&second, &rigs);
}

/// Which replica the test kills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Killed {
    Leader,
    Checker,
}

/// Two replicas of the coordinator on one PostgreSQL ledger share a job: one leads it, the
/// other takes its share of the receipt batches from the shared subscription, checks them and
/// forwards them to the leader. One is killed with SIGKILL mid-job (the leader: the other takes
/// the lead from the ledger; the checker: the batches it held come again from the rigs) and
/// the survivor finishes the job. Every receipt is credited once, every unit is done, the
/// ledger equals the rigs' journals, and no unit was ever leased to two rigs at once.
fn two_replicas_one_killed(killed: Killed) {
    let broker = Mosquitto::start();
    let database = Postgres::start();
    let ledger = Location::parse(&database.url());
    let dir = tempfile::tempdir().unwrap();
    let units = 120;
    let replica = |name: &str| {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        Coordinator::process_gemm_at(broker.port, &home, units, 32, None, ledger.clone())
    };
    let mut leader = replica("replica-1");
    leader.wait_log("this coordinator leads the job", 60);
    let mut checker = replica("replica-2");
    checker.wait_log(
        "another coordinator leads the job; checking receipt batches",
        60,
    );
    let rigs = rigs(broker.port, dir.path(), &["rep-a", "rep-b"]);
    checker.wait_log("first batch checked and forwarded to the leader", 120);
    leader.wait_log("first batch another replica checked admitted", 60);
    wait_credited(&leader, 10);
    let survivor = match killed {
        Killed::Leader => {
            leader.kill9();
            checker.wait_log("this coordinator leads the job", 60);
            &checker
        }
        Killed::Checker => {
            checker.kill9();
            &leader
        }
    };
    assert!(
        (survivor.credited().len() as u64) < units,
        "the job finished before the kill"
    );
    let rigs: Vec<&RigProcess> = rigs.iter().collect();
    wait_job_done(survivor, units, &rigs, 240);
    survivor.assert_exactly_once(units, &rigs);
    assert_ledger_matches_journals(survivor, &rigs);
    let reader = survivor.ledger().expect("the ledger on PostgreSQL");
    let job = rigd_protocol::JobId::new("gemm-test").unwrap();
    let mut attempts: BTreeMap<u64, Vec<(u32, u64)>> = BTreeMap::new();
    for (unit, attempt, _, deadline_ms) in reader.leases(&job).unwrap() {
        attempts
            .entry(unit)
            .or_default()
            .push((attempt, deadline_ms));
    }
    assert_eq!(attempts.len() as u64, units, "every unit was leased");
    for (unit, leases) in &attempts {
        for pair in leases.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                b.1.saturating_sub(LEASE_MS) >= a.1,
                "unit {unit}: attempt {} leased before attempt {} ran out",
                b.0,
                a.0
            );
        }
    }
}

#[test]
fn two_replicas_on_postgresql_the_leader_killed_mid_job_credit_every_receipt_once() {
    two_replicas_one_killed(Killed::Leader);
}

#[test]
fn two_replicas_on_postgresql_the_checker_killed_mid_job_credit_every_receipt_once() {
    two_replicas_one_killed(Killed::Checker);
}
