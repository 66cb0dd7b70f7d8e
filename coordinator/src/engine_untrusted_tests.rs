//! The engine against rigs that send what they were not leased, too much, or too far.

use super::*;

/// A rig that computes units it was never leased (every unit of the job, including one
/// leased to another rig) is paid nothing, its receipts are refused without a recompute and
/// stored as one run, and the lease holder's honest result is credited afterwards.
#[test]
fn receipts_for_units_not_leased_to_the_rig_are_refused_before_any_recompute() {
    let f = Fixture::new(gemm(6));
    let mut engine = f.engine();
    let mut honest_rig = TestRig::new("rig-a", 1);
    let mut rogue = TestRig::new("rig-r", 2);
    let leased = units(&hello(&mut engine, &honest_rig, 1, 0), &honest_rig);
    assert_eq!(leased.len(), 2);
    hello(&mut engine, &rogue, 0, 0);
    let every: Vec<WorkUnit> = (0..6)
        .filter_map(|u| engine.job().work_unit(u, 0))
        .collect();
    let out = send(&mut engine, &honest(&mut rogue, &every, |_| GEMM_WORK), 10);
    assert_eq!(
        acks(&out, &rogue),
        vec![1],
        "recorded (as refused) and acked"
    );
    assert_eq!(
        refused(&f, &rogue),
        vec![(1, 6, "unit not leased to the rig".into())]
    );
    assert!(reasons(&f, &rogue).is_empty(), "no row per receipt");
    assert_eq!(engine.status(10).units_verified, 0, "nothing recomputed");
    let out = send(
        &mut engine,
        &honest(&mut honest_rig, &leased, |_| GEMM_WORK),
        20,
    );
    assert_eq!(acks(&out, &honest_rig), vec![1]);
    let credited = f
        .ledger()
        .credited_units(&job_id("gemm"))
        .unwrap_or_default();
    assert_eq!(credited, vec![(0, 1), (1, 1)]);
    let t = f
        .ledger()
        .earnings(&rogue.id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (t.total().credited_micros, t.missing_seqs, t.last_seq),
        (0, 0, 6)
    );
}

/// Copies of one unit in a batch cost one recompute: the first is judged, the rest refused
/// as already done; after its result is refused the rig cannot try that attempt again.
#[test]
fn copies_of_a_unit_cost_one_recompute_and_a_refused_attempt_is_not_retried() {
    let f = Fixture::new(gemm(1));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let given = units(&hello(&mut engine, &a, 1, 0), &a);
    let wrong = UnitOutput::GemmI8 { c_digest: [9; 32] };
    let copies = (0..100)
        .map(|_| a.receipt(&given[0], &wrong, GEMM_WORK))
        .collect();
    send(&mut engine, &a.batch(copies), 10);
    assert_eq!(
        reasons(&f, &a),
        vec![(1, "rejected".into(), Some("result mismatch".into()))]
    );
    assert_eq!(refused(&f, &a), vec![(2, 100, "unit already done".into())]);
    let again = honest(&mut a, &given, |_| GEMM_WORK);
    send(&mut engine, &again, 20);
    assert_eq!(
        refused(&f, &a).last().map(|r| r.2.clone()),
        Some("unit not leased to the rig".into())
    );
}

/// Recomputation is budgeted per rig: once a rig's recomputes overdraw its budget, its next
/// batch waits (not recorded, not acked) until the budget refills.
#[test]
fn a_rig_that_overdraws_its_recompute_budget_waits_until_it_refills() {
    let mut f = Fixture::new(gemm(4));
    f.config.trust.recompute_flops_per_s = GEMM_WORK;
    f.config.trust.recompute_burst_flops = GEMM_WORK;
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let given = units(&hello(&mut engine, &a, 2, 0), &a);
    assert_eq!(given.len(), 4);
    let first = honest(&mut a, &given[..2], |_| GEMM_WORK);
    assert_eq!(
        acks(&send(&mut engine, &first, 0), &a),
        vec![1],
        "two recomputes, one overdrawn"
    );
    let second = honest(&mut a, &given[2..], |_| GEMM_WORK);
    assert!(
        acks(&send(&mut engine, &second, 500), &a).is_empty(),
        "budget still overdrawn"
    );
    assert_eq!(
        f.ledger().recorded_seqs(&a.id).unwrap_or_default(),
        vec![1, 2]
    );
    assert_eq!(
        acks(&send(&mut engine, &second, 1_000), &a),
        vec![3],
        "refilled"
    );
}

/// A batch that starts far beyond the rig's highest sequence number is refused unrecorded
/// and not acknowledged; one inside the window is recorded.
#[test]
fn a_batch_far_beyond_the_rigs_sequence_numbers_is_refused_unrecorded() {
    let f = Fixture::new(gemm(2));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let given = units(&hello(&mut engine, &a, 1, 0), &a);
    a.next_seq = SEQ_WINDOW + 2;
    let far = honest(&mut a, &given, |_| GEMM_WORK);
    assert!(acks(&send(&mut engine, &far, 10), &a).is_empty());
    assert!(f
        .ledger()
        .recorded_seqs(&a.id)
        .unwrap_or_default()
        .is_empty());
    a.next_seq = SEQ_WINDOW;
    let near = honest(&mut a, &given, |_| GEMM_WORK);
    assert_eq!(acks(&send(&mut engine, &near, 20), &a), vec![SEQ_WINDOW]);
}

/// Leases are durable: after a restart the lease holder's result is paid and another rig's
/// is not.
#[test]
fn leases_survive_a_restart_of_the_coordinator() {
    let f = Fixture::new(gemm(2));
    let mut a = TestRig::new("rig-a", 1);
    let mut b = TestRig::new("rig-b", 2);
    let given = {
        let mut engine = f.engine();
        units(&hello(&mut engine, &a, 1, 0), &a)
    };
    let mut engine = f.engine();
    hello(&mut engine, &b, 1, 10);
    let out = send(&mut engine, &honest(&mut b, &given, |_| GEMM_WORK), 20);
    assert_eq!(acks(&out, &b), vec![1]);
    assert_eq!(
        refused(&f, &b),
        vec![(1, 2, "unit not leased to the rig".into())]
    );
    hello(&mut engine, &a, 1, 30);
    send(&mut engine, &honest(&mut a, &given, |_| GEMM_WORK), 40);
    let credited = f
        .ledger()
        .credited_units(&job_id("gemm"))
        .unwrap_or_default();
    assert_eq!(credited, vec![(0, 1), (1, 1)]);
}

/// A batch whose results are recomputed waits unrecorded and unacked while its recompute
/// runs off the engine's thread; a resend of it is dropped; a trusted rig's batch meanwhile
/// is recorded and acked at once. When the outputs come back the batch is judged and acked.
#[test]
fn a_batch_waiting_for_its_recompute_holds_up_no_other_rig() {
    let mut f = Fixture::new(gemm(8));
    f.config.trust.trust_after = 1;
    let mut engine = f.engine();
    let mut trusted = TestRig::new("rig-t", 1);
    let mut newcomer = TestRig::new("rig-n", 2);
    let given_t = units(&hello(&mut engine, &trusted, 1, 0), &trusted);
    let given_n = units(&hello(&mut engine, &newcomer, 1, 0), &newcomer);
    send(
        &mut engine,
        &honest(&mut trusted, &given_t[..1], |_| GEMM_WORK),
        1,
    );

    let batch = honest(&mut newcomer, &given_n, |_| GEMM_WORK);
    let topic = topics::rig(&newcomer.id, Channel::Receipts);
    let out = engine.handle(&topic, &encode(&batch), 10);
    let [Outbound::Recompute(job)] = out.as_slice() else {
        panic!("expected one recompute request, got {out:?}");
    };
    assert_eq!(job.units.len(), 2, "on probation: every result recomputed");
    assert!(
        engine.handle(&topic, &encode(&batch), 11).is_empty(),
        "resend dropped"
    );
    assert!(f
        .ledger()
        .recorded_seqs(&newcomer.id)
        .unwrap_or_default()
        .is_empty());

    let out = send(
        &mut engine,
        &honest(&mut trusted, &given_t[1..], |_| GEMM_WORK),
        12,
    );
    assert_eq!(
        acks(&out, &trusted),
        vec![2],
        "acked while the newcomer's recompute runs"
    );

    let out = engine.recomputed(job.run(), 20);
    assert_eq!(acks(&out, &newcomer), vec![1]);
    assert_eq!(
        reasons(&f, &newcomer),
        vec![(1, "credited".into(), None), (2, "credited".into(), None)]
    );
    assert_eq!(engine.status(20).units_verified, 3);
}

/// A rig has at most `MAX_PENDING_BATCHES` batches waiting for recomputation; a further one
/// is dropped unrecorded until one of them is settled.
#[test]
fn a_rig_has_a_bounded_number_of_batches_waiting_for_recomputation() {
    let f = Fixture::new(gemm(16));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let given = units(&hello(&mut engine, &a, 8, 0), &a);
    assert!(given.len() > MAX_PENDING_BATCHES);
    let topic = topics::rig(&a.id, Channel::Receipts);
    let mut jobs = vec![];
    for unit in &given[..MAX_PENDING_BATCHES] {
        let out = engine.handle(
            &topic,
            &encode(&honest(&mut a, std::slice::from_ref(unit), |_| GEMM_WORK)),
            1,
        );
        jobs.extend(out.into_iter().filter_map(|o| match o {
            Outbound::Recompute(j) => Some(j),
            _ => None,
        }));
    }
    assert_eq!(jobs.len(), MAX_PENDING_BATCHES);
    let over = honest(
        &mut a,
        &given[MAX_PENDING_BATCHES..=MAX_PENDING_BATCHES],
        |_| GEMM_WORK,
    );
    assert!(engine.handle(&topic, &encode(&over), 2).is_empty());
    let first = jobs.remove(0);
    assert_eq!(acks(&engine.recomputed(first.run(), 3), &a), vec![1]);
    let out = send(&mut engine, &over, 4);
    assert_eq!(acks(&out, &a), vec![MAX_PENDING_BATCHES as u64 + 1]);
}

/// Batches are rate-limited per rig: past its burst a rig's batch is dropped before it is
/// decoded, unrecorded and unacked, until tokens refill.
#[test]
fn a_rig_over_its_batch_rate_is_dropped_until_it_refills() {
    let mut f = Fixture::new(gemm(4));
    f.config.trust.batches_per_s = 1;
    f.config.trust.batch_burst = 2;
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let given = units(&hello(&mut engine, &a, 2, 0), &a);
    let batches: Vec<ReceiptBatch> = given[..3]
        .iter()
        .map(|u| honest(&mut a, std::slice::from_ref(u), |_| GEMM_WORK))
        .collect();
    assert_eq!(acks(&send(&mut engine, &batches[0], 0), &a), vec![1]);
    assert_eq!(acks(&send(&mut engine, &batches[1], 0), &a), vec![2]);
    assert!(acks(&send(&mut engine, &batches[2], 999), &a).is_empty());
    assert_eq!(
        f.ledger().recorded_seqs(&a.id).unwrap_or_default(),
        vec![1, 2]
    );
    assert_eq!(acks(&send(&mut engine, &batches[2], 1_999), &a), vec![3]);
}

/// A rig that sends a poisoned MLP shard (finite gradients of 3e37) is penalised like one
/// caught by recomputation: its pending shard of the open step is forfeited and dropped
/// before it is applied (also from the ledger, so a restart does not apply it), it is
/// suspended, and an honest rig completes the step with a finite loss.
#[test]
fn a_poisoned_shard_forfeits_the_rigs_open_shards_and_the_step_completes_without_them() {
    let f = Fixture::new(train());
    let mut engine = f.engine();
    let mut poisoner = TestRig::new("rig-p", 1);
    let mut other = TestRig::new("rig-o", 2);
    let given = units(&hello(&mut engine, &poisoner, 1, 0), &poisoner);
    assert_eq!(given.len(), 2);
    send(
        &mut engine,
        &honest(&mut poisoner, &given[..1], mlp_work),
        10,
    );
    let honest_shard = verify::recompute(&given[1].kind).unwrap_or_else(|e| panic!("{e}"));
    let UnitOutput::MlpGrad {
        loss_sum,
        samples,
        grad_sum,
    } = honest_shard
    else {
        panic!("MLP result expected")
    };
    let poison = UnitOutput::MlpGrad {
        loss_sum,
        samples,
        grad_sum: vec![3e37; grad_sum.len()],
    };
    let item = poisoner.receipt(&given[1], &poison, mlp_work(&given[1]));
    send(&mut engine, &poisoner.batch(vec![item]), 20);
    let t = f
        .ledger()
        .earnings(&poisoner.id)
        .unwrap_or_else(|e| panic!("{e}"))
        .total();
    assert_eq!((t.pending_units, t.credited_units), (0, 0));
    assert_eq!(
        engine.job().open_units(),
        vec![0, 1],
        "its shard is open again"
    );
    assert!(
        f.ledger()
            .kept_outputs(&job_id("train"))
            .unwrap_or_default()
            .is_empty(),
        "nothing of it kept for a restart"
    );
    let redo = units(&hello(&mut engine, &other, 1, 30), &other);
    assert_eq!(redo.len(), 2);
    assert!(units(&engine.tick(40), &poisoner).is_empty(), "suspended");
    send(&mut engine, &honest(&mut other, &redo, mlp_work), 50);
    let (step, _, loss) = engine.job().progress();
    assert_eq!(step, 1);
    assert!(loss.is_some_and(f32::is_finite), "{loss:?}");
}

/// A suspension is in the ledger: a coordinator restarted during it leases the caught rig
/// nothing until it ends, then leases it units again (on probation).
#[test]
fn a_suspension_survives_a_restart_of_the_coordinator() {
    let mut f = Fixture::new(gemm(4));
    f.config.trust.suspend_ms = 10_000;
    let mut cheat = TestRig::new("rig-c", 1);
    {
        let mut engine = f.engine();
        let given = units(&hello(&mut engine, &cheat, 1, 0), &cheat);
        let invented = UnitOutput::GemmI8 { c_digest: [3; 32] };
        let fake = cheat.receipt(&given[0], &invented, GEMM_WORK);
        send(&mut engine, &cheat.batch(vec![fake]), 20);
    }
    assert_eq!(
        f.ledger().suspensions(&job_id("gemm")).unwrap_or_default(),
        vec![(cheat.id.clone(), 10_020)]
    );
    let mut engine = f.engine();
    assert!(units(&hello(&mut engine, &cheat, 1, 30), &cheat).is_empty());
    assert!(
        units(&engine.tick(10_019), &cheat).is_empty(),
        "still suspended"
    );
    assert_eq!(
        units(&engine.tick(10_020), &cheat).len(),
        2,
        "suspension over"
    );
}

/// A rig rekeyed with its owner's claim (its TPM was replaced): the registry holds its new
/// key, so the engine trusts it again under that key. Its receipts made under the old key
/// (numbered below the rekey's first sequence number) are refused as `key changed` and the
/// rig is told; its old leases end, and its receipts for new ones are credited. A key the registry does not
/// hold stays refused.
#[test]
fn a_rekey_the_registry_vouches_for_refuses_the_old_receipts_and_credits_the_new() {
    use rigd_protocol::claim::{Inventory, Rekey};
    use rigd_provisioning::registry::{rig_id_for, Registry};
    let mut f = Fixture::new(gemm(4));
    let path = crate::ledger::tests_file(&f.config.ledger).with_file_name("registry.db");
    let mut registry = Registry::open(&path).unwrap_or_else(|e| panic!("{e}"));
    registry
        .add_owner("alice", &rigd_protocol::EthAddress([1; 20]), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let claim = registry
        .create_claim("alice", 2, u64::MAX / 2)
        .unwrap_or_else(|e| panic!("{e}"));
    let id = rig_id_for(b"old tls key");
    let mut claim_with = |tls: &[u8], key: PublicKey, rekey: Option<&Rekey>, serial: &str| {
        let inventory = Inventory {
            cards: vec![],
            driver: "sim".into(),
            agent_version: "test".into(),
            receipt_key: key,
        };
        registry
            .claim(&claim.token, tls, &inventory, rekey, 0, |_| {
                Ok::<_, ()>(("cert".into(), serial.to_owned()))
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e:?}"));
    };
    let old = TestRig::new(id.as_str(), 1);
    claim_with(b"old tls key", old.pubkey(), None, "s1");
    f.config.registry = Some(path.clone());
    let mut engine = f.engine();
    let given = units(&hello(&mut engine, &old, 1, 0), &old);
    assert_eq!(given.len(), 2);

    // A key the registry does not hold: refused, the rig gets no work.
    let stranger = TestRig::new(id.as_str(), 9);
    let out = hello(&mut engine, &stranger, 1, 1);
    assert!(units(&out, &stranger).is_empty());

    // The key store is replaced with receipts 1 and 2 journaled; rigd seals them under the
    // new key and rekeys from sequence number 3.
    let mut sealed_late = TestRig::new(id.as_str(), 3);
    claim_with(
        b"new tls key",
        sealed_late.pubkey(),
        Some(&Rekey {
            rig: id.clone(),
            from_seq: 3,
        }),
        "s2",
    );
    // Trusted again: its old leases ended with the old key, it is leased anew.
    let fresh = units(&hello(&mut engine, &sealed_late, 1, 2), &sealed_late);
    assert_eq!(fresh.len(), 2);
    let before = honest(&mut sealed_late, &given, |_| GEMM_WORK);
    let out = send(&mut engine, &before, 10);
    assert_eq!(
        refusals(&out, &sealed_late)
            .iter()
            .map(|r| (r.first_seq, r.reason))
            .collect::<Vec<_>>(),
        vec![(1, RefusalReason::KeyChanged)]
    );
    assert_eq!(
        refused(&f, &sealed_late),
        vec![(1, 2, "key changed".into())]
    );

    // Under the new key from sequence number 3: judged and credited as any rig's.
    let after = honest(&mut sealed_late, &fresh, |_| GEMM_WORK);
    assert_eq!(after.header.first_seq, 3);
    assert_eq!(acks(&send(&mut engine, &after, 20), &sealed_late), vec![3]);
    assert_eq!(
        reasons(&f, &sealed_late)
            .iter()
            .map(|(seq, state, _)| (*seq, state.as_str()))
            .collect::<Vec<_>>(),
        vec![(3, "credited"), (4, "credited")]
    );

    // A restarted engine keeps both the new key and the rekey's first sequence number.
    drop(engine);
    let mut engine = f.engine();
    hello(&mut engine, &sealed_late, 1, 30);
    let out = send(&mut engine, &before, 40);
    assert!(acks(&out, &sealed_late).is_empty());
    assert_eq!(
        refused(&f, &sealed_late),
        vec![(1, 2, "key changed".into())]
    );
}

/// A batch another replica forwarded is checked again unless that replica checked it against
/// the key pinned here: forwarded unchecked, or checked against another key (a stale one), a
/// batch with a bad signature is dropped unacked. Checked against the pinned key it is taken
/// as checked: the forwarding topic is the fleet's own (the broker lets only the coordinator's
/// certificate write it), which is why no rig may write it.
#[test]
fn a_forwarded_batch_skips_the_signature_check_only_when_checked_against_the_pinned_key() {
    let f = Fixture::new(gemm(4));
    let mut engine = f.engine();
    let mut a = TestRig::new("rig-a", 1);
    let given = units(&hello(&mut engine, &a, 2, 0), &a);
    let honest_batch = honest(&mut a, &given[..1], |_| GEMM_WORK);
    let mut forged = honest(&mut a, &given[1..2], |_| GEMM_WORK);
    forged.signature = rigd_protocol::Signature(vec![7; forged.signature.0.len()]);
    let forward = |engine: &mut Engine, batch: &ReceiptBatch, key: Option<&PublicKey>| {
        let out = engine.handle(&topics::checked(&a.id, key), &encode(batch), 10);
        settle(engine, out, 10)
    };
    let stale = TestRig::new("rig-a", 9).pubkey();
    assert!(acks(&forward(&mut engine, &forged, None), &a).is_empty());
    assert!(acks(&forward(&mut engine, &forged, Some(&stale)), &a).is_empty());
    assert_eq!(
        acks(&forward(&mut engine, &honest_batch, Some(&stale)), &a),
        vec![1],
        "checked again here, an honest batch is taken"
    );
    assert_eq!(
        acks(&forward(&mut engine, &forged, Some(&a.pubkey())), &a),
        vec![2]
    );
    assert_eq!(
        f.ledger().recorded_seqs(&a.id).unwrap_or_default(),
        vec![1, 2]
    );
}
