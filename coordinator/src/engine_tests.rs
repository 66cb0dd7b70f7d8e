use super::*;
use crate::verify;
use crate::JobSpec;
use rigd_protocol::{
    decode, Ack, Earnings, ReceiptBatch, Refusal, RefusalReason, RefusedBatch, UnitOutput, WorkUnit,
};
use rigd_testkit::fixtures::job_id;
use rigd_testkit::signer::TestRig;

struct Fixture {
    _dir: tempfile::TempDir,
    config: CoordinatorConfig,
}

impl Fixture {
    fn new(job: JobSpec) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let mut config = CoordinatorConfig::new("127.0.0.1", 1, dir.path().join("ledger.db"), job);
        config.lease_ms = 1_000;
        config.units_per_card = 2;
        config.micros_per_mflop = 1_000_000;
        Self { _dir: dir, config }
    }

    fn engine(&self) -> Engine {
        let mut e = Engine::open(&self.config, 0).unwrap_or_else(|e| panic!("{e}"));
        e.set_sampler(Sampler::with_salt(0.0, 1));
        e
    }

    fn ledger(&self) -> Ledger {
        Ledger::open(&crate::ledger::tests_file(&self.config.ledger))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

fn gemm(units: u64) -> JobSpec {
    JobSpec::Gemm {
        job: job_id("gemm"),
        units,
        m: 16,
        n: 16,
        k: 16,
        seed: 1,
    }
}

const GEMM_WORK: u64 = 2 * 16 * 16 * 16;

fn status(rig: &TestRig, cards: usize, state: RigState) -> RigStatus {
    rig.status(cards as u32, state)
}

fn published<T: rigd_protocol::Frame>(out: &[Outbound], topic: &str) -> Vec<T> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Publish {
                topic: t, payload, ..
            } if t == topic => decode(payload).ok(),
            _ => None,
        })
        .collect()
}

fn units(out: &[Outbound], rig: &TestRig) -> Vec<WorkUnit> {
    published::<UnitAssignment>(out, &topics::rig(&rig.id, Channel::Units))
        .into_iter()
        .flat_map(|a| a.units)
        .collect()
}

fn acks(out: &[Outbound], rig: &TestRig) -> Vec<u64> {
    published::<Ack>(out, &topics::rig(&rig.id, Channel::Acks))
        .into_iter()
        .flat_map(|a| a.batches)
        .map(|b| b.first_seq)
        .collect()
}

fn refusals(out: &[Outbound], rig: &TestRig) -> Vec<RefusedBatch> {
    published::<Refusal>(out, &topics::rig(&rig.id, Channel::Acks))
        .into_iter()
        .flat_map(|r| r.batches)
        .collect()
}

fn honest(rig: &mut TestRig, units: &[WorkUnit], work: impl Fn(&WorkUnit) -> u64) -> ReceiptBatch {
    let items = units
        .iter()
        .map(|u| {
            let out = verify::recompute(&u.kind).unwrap_or_else(|e| panic!("{e}"));
            rig.receipt(u, &out, work(u))
        })
        .collect();
    rig.batch(items)
}

/// Sends a batch and, as the shell's pool would, recomputes what the engine asks for.
fn send(engine: &mut Engine, batch: &ReceiptBatch, now: u64) -> Vec<Outbound> {
    let out = engine.handle(
        &topics::rig(&batch.header.rig, Channel::Receipts),
        &encode(batch),
        now,
    );
    settle(engine, out, now)
}

/// Runs every recomputation in `out` in place and returns what the engine did with it.
fn settle(engine: &mut Engine, out: Vec<Outbound>, now: u64) -> Vec<Outbound> {
    let mut done = vec![];
    for o in out {
        match o {
            Outbound::Recompute(job) => {
                let back = engine.recomputed(job.run(), now);
                done.extend(settle(engine, back, now));
            }
            other => done.push(other),
        }
    }
    done
}

fn hello(engine: &mut Engine, rig: &TestRig, cards: usize, now: u64) -> Vec<Outbound> {
    let s = status(rig, cards, RigState::Idle);
    engine.handle(&topics::rig(&rig.id, Channel::Status), &encode(&s), now)
}

fn reasons(f: &Fixture, rig: &TestRig) -> Vec<(u64, String, Option<String>)> {
    let conn = rusqlite::Connection::open(crate::ledger::tests_file(&f.config.ledger))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stmt = conn
        .prepare("SELECT seq, state, reason FROM receipts WHERE rig = ?1 ORDER BY seq")
        .unwrap_or_else(|e| panic!("{e}"));
    stmt.query_map([rig.id.as_str()], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .collect::<Result<Vec<_>, _>>()
    .unwrap_or_default()
}

/// The runs of sequence numbers refused before any check: `(first, last, reason)`.
fn refused(f: &Fixture, rig: &TestRig) -> Vec<(u64, u64, String)> {
    let conn = rusqlite::Connection::open(crate::ledger::tests_file(&f.config.ledger))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stmt = conn
        .prepare(
            "SELECT first_seq, last_seq, reason FROM refused WHERE rig = ?1 ORDER BY first_seq",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    stmt.query_map([rig.id.as_str()], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get::<_, i64>(1)? as u64,
            r.get(2)?,
        ))
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .collect::<Result<Vec<_>, _>>()
    .unwrap_or_default()
}

#[test]
fn gemm_results_are_credited_acked_and_resends_change_nothing() {
    let f = Fixture::new(gemm(4));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let out = hello(&mut engine, &a, 1, 0);
    let given = units(&out, &a);
    assert_eq!(
        given
            .iter()
            .map(|u| (u.unit, u.attempt))
            .collect::<Vec<_>>(),
        vec![(0, 0), (1, 0)]
    );
    let batch = honest(&mut a, &given, |_| GEMM_WORK);
    let out = send(&mut engine, &batch, 10);
    assert_eq!(acks(&out, &a), vec![1]);
    assert_eq!(units(&out, &a).len(), 2, "freed capacity is refilled");
    let earnings: Vec<Earnings> = published(&out, &topics::rig(&a.id, Channel::Earnings));
    assert_eq!(earnings.len(), 1);
    assert_eq!(earnings[0].total().credited_micros, 2 * GEMM_WORK);

    let again = send(&mut engine, &batch, 20);
    assert_eq!(acks(&again, &a), vec![1]);
    let ledger = f.ledger();
    assert_eq!(ledger.duplicate_deliveries(&a.id).unwrap_or(0), 2);
    let t = ledger
        .earnings(&a.id)
        .unwrap_or_else(|e| panic!("{e}"))
        .total();
    assert_eq!((t.credited_units, t.credited_micros), (2, 2 * GEMM_WORK));
    assert_eq!(ledger.recorded_seqs(&a.id).unwrap_or_default(), vec![1, 2]);
}

#[test]
fn a_unit_finished_by_another_rig_is_not_credited_twice() {
    let f = Fixture::new(gemm(2));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let mut b = TestRig::new("rig-b", 2);
    let given = units(&hello(&mut engine, &a, 1, 0), &a);
    hello(&mut engine, &b, 1, 0);
    let out = send(&mut engine, &honest(&mut a, &given, |_| GEMM_WORK), 10);
    assert!(engine.status(10).finished);
    let status: Vec<CoordinatorStatus> = published(&out, topics::COORDINATOR_STATUS);
    assert!(status
        .last()
        .is_some_and(|s| s.finished && s.units_done == 2));
    let out = send(&mut engine, &honest(&mut b, &given[..1], |_| GEMM_WORK), 20);
    assert_eq!(acks(&out, &b), vec![1]);
    let ledger = f.ledger();
    assert_eq!(refused(&f, &b), vec![(1, 1, "unit already done".into())]);
    assert_eq!(ledger.recorded_seqs(&b.id).unwrap_or_default(), vec![1]);
    assert_eq!(
        ledger.credited_units(&job_id("gemm")).unwrap_or_default(),
        vec![(0, 1), (1, 1)]
    );
}

#[test]
fn a_wrong_result_is_rejected_and_its_unit_reassigned_with_the_next_attempt_to_another_rig() {
    let f = Fixture::new(gemm(1));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let b = TestRig::new("rig-b", 2);
    let given = units(&hello(&mut engine, &a, 1, 0), &a);
    let wrong = UnitOutput::GemmI8 { c_digest: [9; 32] };
    let bad = a.receipt(&given[0], &wrong, GEMM_WORK);
    let bad_work = a.receipt(
        &given[0],
        &verify::recompute(&given[0].kind).unwrap_or_else(|e| panic!("{e}")),
        5,
    );
    let out = send(&mut engine, &a.batch(vec![bad, bad_work]), 10);
    assert_eq!(acks(&out, &a), vec![1]);
    assert_eq!(
        reasons(&f, &a),
        vec![(1, "rejected".into(), Some("result mismatch".into()))]
    );
    assert_eq!(
        refused(&f, &a),
        vec![(2, 2, "unit already done".into())],
        "a second receipt for the unit in the batch is not judged again"
    );
    assert!(units(&out, &a).is_empty(), "the rig is suspended");
    let again = units(&hello(&mut engine, &b, 1, 20), &b);
    assert_eq!(
        again
            .iter()
            .map(|u| (u.unit, u.attempt))
            .collect::<Vec<_>>(),
        vec![(0, 1)]
    );
    assert_eq!(engine.status(10).units_rejected, 2);
}

/// A rig that sends wrong results among right ones is caught on probation (every result of a
/// new rig is recomputed): its credit of the audit window is forfeited, its units are done
/// again by another rig, and it gets no more units.
#[test]
fn a_caught_wrong_result_forfeits_the_rigs_unaudited_credit_and_suspends_it() {
    let f = Fixture::new(gemm(4));
    let mut engine = f.engine();
    let mut cheat = TestRig::new("rig-c", 1);
    let mut other = TestRig::new("rig-o", 2);
    let given = units(&hello(&mut engine, &cheat, 1, 0), &cheat);
    assert_eq!(given.len(), 2);
    let right = honest(&mut cheat, &given[..1], |_| GEMM_WORK);
    send(&mut engine, &right, 10);
    let t = f
        .ledger()
        .earnings(&cheat.id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.total().credited_units, 1);
    let invented = UnitOutput::GemmI8 { c_digest: [3; 32] };
    let fake = cheat.receipt(&given[1], &invented, GEMM_WORK);
    send(&mut engine, &cheat.batch(vec![fake]), 20);
    let t = f
        .ledger()
        .earnings(&cheat.id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (t.total().credited_units, t.total().credited_micros),
        (0, 0),
        "the audit window's credit is forfeited"
    );
    assert_eq!(
        engine.job().open_units().len(),
        4,
        "its units are open again"
    );
    let redo = units(&hello(&mut engine, &other, 2, 30), &other);
    assert_eq!(redo.len(), 4);
    assert!(units(&engine.tick(40), &cheat).is_empty(), "suspended");
    send(&mut engine, &honest(&mut other, &redo, |_| GEMM_WORK), 60);
    let credited = f
        .ledger()
        .credited_units(&job_id("gemm"))
        .unwrap_or_default();
    assert_eq!(credited, (0..4).map(|u| (u, 1)).collect::<Vec<_>>());
    let t = f
        .ledger()
        .earnings(&other.id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.total().credited_units, 4);
}

#[test]
fn batches_that_cannot_be_attributed_are_neither_recorded_nor_acked() {
    let f = Fixture::new(gemm(1));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let unit = engine
        .job()
        .work_unit(0, 0)
        .unwrap_or_else(|| unreachable!());
    let batch = honest(&mut a, &[unit], |_| GEMM_WORK);
    assert!(send(&mut engine, &batch, 0).is_empty(), "key not known yet");
    hello(&mut engine, &a, 1, 0);
    let mut forged = batch.clone();
    forged.items[0].receipt.work += 1;
    assert!(acks(&send(&mut engine, &forged, 1), &a).is_empty());
    let impostor = TestRig::new("rig-a", 9);
    let signed_by_other = impostor.batch(batch.items.clone());
    assert!(acks(&send(&mut engine, &signed_by_other, 2), &a).is_empty());
    let on_other_topic =
        engine.handle(&topics::rig(&impostor.id, Channel::Receipts), &[1, 4, 0], 3);
    assert!(on_other_topic.is_empty());
    assert!(f
        .ledger()
        .recorded_seqs(&a.id)
        .unwrap_or_default()
        .is_empty());
    assert_eq!(acks(&send(&mut engine, &batch, 4), &a), vec![1]);
}

/// After a TPM replacement the rig signs with a key the network did not pin: its batches,
/// old key or new, are recorded as one refused run each and the rig is told (a refusal, not
/// an ack) so it keeps them as refused instead of sending them forever; a resend changes
/// nothing in the ledger.
#[test]
fn batches_signed_for_another_deployment_are_refused_and_a_retired_one_is_still_credited() {
    let mut f = Fixture::new(gemm(4));
    let current = rigd_protocol::Domain::new(8453, rigd_protocol::EthAddress([0x11; 20]));
    f.config.domains = vec![current, rigd_protocol::Domain::LOCAL];
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let given = units(&hello(&mut engine, &a, 2, 0), &a);
    assert_eq!(given.len(), 4);
    let signed = |a: &mut TestRig, u: &[WorkUnit], domain| {
        let items = u
            .iter()
            .map(|u| {
                let out = verify::recompute(&u.kind).unwrap_or_else(|e| panic!("{e}"));
                a.receipt(u, &out, GEMM_WORK)
            })
            .collect();
        a.batch_for(items, domain)
    };
    // Another chain, then the same chain with another contract: the rig's own key signed
    // them, so they are refused for good, recorded, and the rig is told.
    let other_chain = rigd_protocol::Domain::new(1, rigd_protocol::EthAddress([0x11; 20]));
    let other_contract = rigd_protocol::Domain::new(8453, rigd_protocol::EthAddress([0x12; 20]));
    for (i, domain) in [other_chain, other_contract].into_iter().enumerate() {
        let batch = signed(&mut a, &given[i..=i], domain);
        let out = send(&mut engine, &batch, 10 + i as u64);
        assert!(acks(&out, &a).is_empty());
        assert_eq!(
            refusals(&out, &a),
            vec![RefusedBatch {
                first_seq: batch.header.first_seq,
                digest: batch.header.signing_digest(),
                reason: RefusalReason::ForeignDomain,
            }]
        );
    }
    assert_eq!(
        refused(&f, &a),
        vec![
            (1, 1, "signed for another deployment".into()),
            (2, 2, "signed for another deployment".into())
        ]
    );
    // The current deployment and the retired one are both credited.
    let now = signed(&mut a, &given[2..=2], current);
    assert_eq!(acks(&send(&mut engine, &now, 20), &a), vec![3]);
    let retired = signed(&mut a, &given[3..=3], rigd_protocol::Domain::LOCAL);
    assert_eq!(acks(&send(&mut engine, &retired, 30), &a), vec![4]);
    assert_eq!(
        f.ledger()
            .credited_units(&job_id("gemm"))
            .unwrap_or_default()
            .len(),
        2
    );
}

#[test]
fn after_a_key_change_batches_are_refused_recorded_and_the_rig_is_told() {
    let f = Fixture::new(gemm(2));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let given = units(&hello(&mut engine, &a, 1, 0), &a);
    let mut new_key = TestRig::new("rig-a", 3);
    let changed = status(&new_key, 1, RigState::Idle);
    engine.handle(&topics::rig(&a.id, Channel::Status), &encode(&changed), 5);
    let old = honest(&mut a, &given, |_| GEMM_WORK);
    new_key.next_seq = 3;
    let new = honest(&mut new_key, &given, |_| GEMM_WORK);
    for (batch, now) in [(&old, 10), (&new, 20), (&old, 30)] {
        let out = send(&mut engine, batch, now);
        assert!(acks(&out, &a).is_empty(), "no ack");
        let told = refusals(&out, &a);
        assert_eq!(
            told,
            vec![RefusedBatch {
                first_seq: batch.header.first_seq,
                digest: batch.header.signing_digest(),
                reason: RefusalReason::KeyChanged,
            }]
        );
    }
    assert!(reasons(&f, &a).is_empty());
    assert_eq!(
        refused(&f, &a),
        vec![(1, 2, "key changed".into()), (3, 4, "key changed".into())]
    );
    assert_eq!(
        engine.status(40).batches_refused,
        3,
        "each refusal sent counts"
    );
    assert!(f
        .ledger()
        .credited_units(&job_id("gemm"))
        .unwrap_or_default()
        .is_empty());
}

#[test]
fn an_expired_lease_goes_to_another_rig_and_the_late_result_still_counts_once() {
    let f = Fixture::new(gemm(1));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let mut b = TestRig::new("rig-b", 2);
    let first = units(&hello(&mut engine, &a, 1, 0), &a);
    hello(&mut engine, &b, 1, 0);
    let out = engine.tick(1_000);
    let second: Vec<WorkUnit> = [units(&out, &a), units(&out, &b)].concat();
    assert_eq!(
        second
            .iter()
            .map(|u| (u.unit, u.attempt))
            .collect::<Vec<_>>(),
        vec![(0, 1)]
    );
    assert_eq!(engine.status(1_000).leases_expired, 1);
    let late = send(&mut engine, &honest(&mut a, &first, |_| GEMM_WORK), 1_100);
    assert_eq!(acks(&late, &a), vec![1]);
    send(&mut engine, &honest(&mut b, &second, |_| GEMM_WORK), 1_200);
    let ledger = f.ledger();
    assert_eq!(
        ledger.credited_units(&job_id("gemm")).unwrap_or_default(),
        vec![(0, 1)]
    );
    assert_eq!(refused(&f, &b), vec![(1, 1, "unit already done".into())]);
}

#[test]
fn an_offline_rig_is_not_counted_and_its_units_go_to_others_when_their_leases_expire() {
    let f = Fixture::new(gemm(2));
    let mut engine = f.engine();
    let a = TestRig::new("rig-a", 1);
    let b = TestRig::new("rig-b", 2);
    hello(&mut engine, &a, 1, 0);
    assert_eq!(engine.status(0).rigs_online, 1);
    let gone = status(&a, 1, RigState::Offline);
    engine.handle(&topics::rig(&a.id, Channel::Status), &encode(&gone), 5);
    assert_eq!(engine.status(5).rigs_online, 0);
    assert!(
        units(&hello(&mut engine, &b, 1, 6), &b).is_empty(),
        "a rig that went offline keeps its units while it may come back"
    );
    let given = units(&engine.tick(1_001), &b);
    assert_eq!(
        given
            .iter()
            .map(|u| (u.unit, u.attempt))
            .collect::<Vec<_>>(),
        vec![(0, 1), (1, 1)]
    );
}

fn train() -> JobSpec {
    JobSpec::TrainMlp {
        job: job_id("train"),
        shape: [4, 8, 3],
        data_seed: 5,
        data_spread: 0.5,
        shards_per_step: 2,
        samples_per_shard: 16,
        lr: 0.5,
        max_steps: 2,
        loss_target: 0.0,
        eval_samples: 64,
    }
}

fn mlp_work(u: &WorkUnit) -> u64 {
    (4 * 4 * 8 + 6 * 8 * 3)
        * match u.kind {
            UnitKind::MlpGrad { count, .. } => u64::from(count),
            UnitKind::GemmI8 { .. } => 0,
        }
}

#[test]
fn mlp_results_are_pending_until_their_step_is_stitched_and_survive_a_restart() {
    let f = Fixture::new(train());
    let mut a = TestRig::new("rig-a", 1);
    let given = {
        let mut engine = f.engine();
        let given = units(&hello(&mut engine, &a, 1, 0), &a);
        assert_eq!(given.len(), 2);
        let out = send(&mut engine, &honest(&mut a, &given[..1], mlp_work), 10);
        assert_eq!(acks(&out, &a), vec![1]);
        let t = f
            .ledger()
            .earnings(&a.id)
            .unwrap_or_else(|e| panic!("{e}"))
            .total();
        assert_eq!((t.pending_units, t.credited_units), (1, 0));
        given
    };
    let mut engine = f.engine();
    assert_eq!(engine.job().open_units(), vec![1]);
    hello(&mut engine, &a, 1, 20);
    let out = send(&mut engine, &honest(&mut a, &given[1..], mlp_work), 30);
    let progress: Vec<CoordinatorStatus> = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Progress(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert!(
        progress.iter().any(|s| s.step == 1 && s.loss.is_some()),
        "{progress:?}"
    );
    let next = units(&out, &a);
    assert_eq!(next.iter().map(|u| u.unit).collect::<Vec<_>>(), vec![2, 3]);
    let t = f
        .ledger()
        .earnings(&a.id)
        .unwrap_or_else(|e| panic!("{e}"))
        .total();
    assert_eq!((t.pending_units, t.credited_units), (0, 2));
    assert_eq!(t.credited_micros, mlp_work(&given[0]) * 2);

    let out = send(&mut engine, &honest(&mut a, &next, mlp_work), 40);
    let status = engine.status(40);
    assert!(status.finished && status.step == 2, "{status:?}");
    assert!(out
        .iter()
        .any(|o| matches!(o, Outbound::Progress(s) if s.finished)));
    assert_eq!(
        f.ledger()
            .credited_units(&job_id("train"))
            .unwrap_or_default(),
        (0..4).map(|u| (u, 1)).collect::<Vec<_>>()
    );
}

#[path = "engine_untrusted_tests.rs"]
mod untrusted;

/// A flood of garbage gets one warning a second, each carrying how many were not logged.
#[test]
fn undecodable_messages_are_warned_about_at_most_once_a_second() {
    let mut limit = WarnLimit::default();
    assert_eq!(limit.due(10_000), Some(0));
    for ms in 10_001..10_999 {
        assert_eq!(limit.due(ms), None);
    }
    assert_eq!(limit.due(11_000), Some(998));
    assert_eq!(limit.due(11_001), None);
    assert_eq!(limit.due(20_000), Some(1));
    // A clock that steps back does not open the gate early.
    assert_eq!(limit.due(19_000), None);
}
