//! Rogue rigs against real processes: the `coordinator` binary, mosquitto with mutual TLS
//! and the ACL `rig-provisioner broker-config` writes, and an honest rigd. A rogue with a
//! genuine fleet certificate and its own receipt key is still paid only for work leased to
//! it, and what it sends costs the ledger a bounded amount and never stops the honest rig's
//! pay.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_coordinator::job::Job;
use rigd_coordinator::JobSpec;
use rigd_harness::rogue::Rogue;
use rigd_harness::tls::Pki;
use rigd_harness::{mosquitto_tls, wait_job_done, wait_until, Coordinator, Mosquitto, RigProcess};
use rigd_protocol::{encode, RigId, WorkUnit};

const UNITS: u64 = 40;
const DIM: u32 = 32;

/// The job's units as an attacker can derive them (the job's parameters are no secret).
fn every_unit() -> Vec<WorkUnit> {
    let job = Job::new(&JobSpec::Gemm {
        job: rigd_protocol::JobId::new("gemm-test").unwrap(),
        units: UNITS,
        m: DIM,
        n: DIM,
        k: DIM,
        seed: 11,
    })
    .unwrap();
    (0..UNITS).filter_map(|u| job.work_unit(u, 0)).collect()
}

/// A fleet CA, a broker with mutual TLS and the fleet ACL, a coordinator process running a
/// GEMM job, an honest rigd with one card and a rogue rig whose key the coordinator pinned.
struct Scene {
    _pki: Pki,
    _broker: Mosquitto,
    _dir: tempfile::TempDir,
    coordinator: Coordinator,
    honest: RigProcess,
    rogue: Rogue,
}

impl Scene {
    fn start() -> Self {
        Self::new(
            |port, dir, tls| Coordinator::process_gemm(port, dir, UNITS, DIM, Some(tls)),
            0,
            1,
            "sim.gflops = 0.002\n",
        )
    }

    /// `coordinator` starts the coordinator process; the rogue announces `rogue_cards`
    /// cards; the honest rig has `gpus` cards and `extra` in its rig.conf.
    fn new(
        coordinator: impl FnOnce(u16, &std::path::Path, &rigd_client::TlsFiles) -> Coordinator,
        rogue_cards: u32,
        gpus: u32,
        extra: &str,
    ) -> Self {
        let pki = Pki::create();
        let broker = mosquitto_tls(&pki.ca_dir());
        let dir = tempfile::tempdir().unwrap();
        let coordinator = coordinator(broker.port, dir.path(), &pki.client("fleet:coordinator"));
        // The rogue is pinned (and, with cards, leased units) before the honest rig starts.
        let rogue = Rogue::connect(broker.port, "rig-rogue", 7, &pki.client("rig-rogue"));
        rogue.announce_cards(rogue_cards);
        pinned(&coordinator, "rig-rogue");
        let state = dir.path().join("h");
        let tls = pki.rig_tls_conf("rig-h", &state);
        let honest =
            RigProcess::start("rig-h", broker.port, gpus, &state, &format!("{extra}{tls}"));
        Self {
            _pki: pki,
            _broker: broker,
            _dir: dir,
            coordinator,
            honest,
            rogue,
        }
    }

    fn parts(&mut self) -> (&Coordinator, &RigProcess, &mut Rogue) {
        (&self.coordinator, &self.honest, &mut self.rogue)
    }
}

/// Waits until the coordinator pinned the rig's key (its batches are heard from then on).
fn pinned(c: &Coordinator, rig: &str) {
    let rig = RigId::new(rig).unwrap();
    wait_until("the rogue's key pinned", 30, || {
        c.ledger()
            .and_then(|l| l.registered(&rig).ok().flatten())
            .is_some()
    });
}

fn credited_micros(c: &Coordinator, rig: &str) -> u64 {
    let rig = RigId::new(rig).unwrap();
    c.ledger()
        .and_then(|l| l.earnings(&rig).ok())
        .map_or(0, |e| e.total().credited_micros)
}

/// A rogue computes every unit of the job correctly (some leased to the honest rig at that
/// moment) and sends them in one signed batch: it is paid nothing, and the honest rig is
/// paid for every unit it was leased, each once.
#[test]
fn a_rogue_rig_that_computes_units_it_was_never_leased_is_paid_nothing() {
    let mut scene = Scene::start();
    let (coordinator, honest, rogue) = scene.parts();
    wait_until("the honest rig paid for some units", 60, || {
        !coordinator.credited().is_empty()
    });
    let items = every_unit()
        .iter()
        .map(|u| {
            let out = rigd_coordinator::verify::recompute(&u.kind).unwrap();
            rogue.receipt(u, &out, rigd_kernels::unit::work(&u.kind))
        })
        .collect();
    let batch = rogue.batch(items);
    rogue.send(encode(&batch));
    wait_until("the rogue's batch recorded", 30, || {
        rogue.acked() == vec![1]
    });
    wait_job_done(coordinator, UNITS, &[honest], 120);
    coordinator.assert_exactly_once(UNITS, &[honest]);
    let (honest_pay, rogue_pay) = (
        credited_micros(coordinator, "rig-h"),
        credited_micros(coordinator, "rig-rogue"),
    );
    println!("honest rig paid {honest_pay} micros, rogue {rogue_pay} micros for {UNITS} units it computed unleased");
    assert_eq!(rogue_pay, 0);
    assert!(honest_pay > 0);
    let ledger = coordinator.ledger().unwrap();
    let rogue_id = RigId::new("rig-rogue").unwrap();
    assert_eq!(
        ledger.refused_totals(&rogue_id).unwrap(),
        (UNITS, UNITS),
        "every receipt refused before any recompute"
    );
}

/// A rogue floods signed batches of receipts for units never issued, one with sequence
/// numbers far ahead and an unsigned one whose sequence numbers overflow: the ledger grows
/// by one row per batch at most, and the honest rig's job completes, paid exactly once.
#[test]
fn a_flood_of_receipts_for_units_never_issued_costs_a_row_per_batch() {
    let mut scene = Scene::start();
    let (coordinator, honest, rogue) = scene.parts();
    wait_until("the honest rig working", 60, || honest.journal().0 > 0);
    let template = every_unit().remove(0);
    let out = rigd_coordinator::verify::recompute(&template.kind).unwrap();
    let (batches, per_batch) = (20u64, 1500u64);
    for b in 0..batches {
        let items = (0..per_batch)
            .map(|i| {
                let unit = WorkUnit {
                    unit: 1_000_000 + b * per_batch + i,
                    ..template.clone()
                };
                rogue.receipt(&unit, &out, 1)
            })
            .collect();
        rogue.send(encode(&rogue.batch(items)));
    }
    // Far beyond the rogue's sequence numbers: refused unrecorded, not acked.
    rogue.next_seq = 1 << 40;
    let far = rogue.receipt(&template, &out, 1);
    rogue.send(encode(&rogue.batch(vec![far])));
    // Unsigned, decoded before authentication: first_seq = 2^64 - 1.
    let last = rogue.receipt(&template, &out, 1);
    let mut overflow = rogue.batch(vec![last]);
    overflow.header.first_seq = u64::MAX;
    overflow.items[0].receipt.seq = u64::MAX;
    overflow.signature = rigd_protocol::Signature(vec![0; 65]);
    rogue.send(encode(&overflow));
    wait_until("every flood batch recorded", 60, || {
        rogue.acked().len() as u64 == batches
    });
    wait_job_done(coordinator, UNITS, &[honest], 120);
    coordinator.assert_exactly_once(UNITS, &[honest]);
    let rogue_id = RigId::new("rig-rogue").unwrap();
    let ledger = coordinator.ledger().unwrap();
    let (refused, highest) = ledger.refused_totals(&rogue_id).unwrap();
    assert_eq!(
        (refused, highest),
        (batches * per_batch, batches * per_batch)
    );
    assert!(ledger.recorded_seqs(&rogue_id).unwrap().len() as u64 == batches * per_batch);
    let rows = ledger.refused_rows(&rogue_id).unwrap();
    println!(
        "{} flood receipts in {batches} batches: {rows} ledger rows, no receipt rows",
        batches * per_batch
    );
    assert!(rows <= batches, "{rows} rows");
    assert_eq!(credited_micros(coordinator, "rig-rogue"), 0);
}

/// A rogue that is leased units (before the honest rig starts) computes the first one and
/// invents the results of the rest, round after round, beside an honest rig: it is caught
/// while on probation, its unaudited credit is forfeited, it is leased nothing more, and it
/// ends with less pay than the honest rig; every unit is paid once.
#[test]
fn a_rogue_rig_that_invents_results_earns_less_than_an_honest_one() {
    let mut scene = Scene::new(
        |port, dir, tls| Coordinator::process_gemm(port, dir, UNITS, DIM, Some(tls)),
        1,
        1,
        "sim.gflops = 0.002\n",
    );
    let (coordinator, honest, rogue) = scene.parts();
    let work = |u: &WorkUnit| rigd_kernels::unit::work(&u.kind);
    let mut computed_one = false;
    let mut rounds = 0;
    while (coordinator.credited().len() as u64) < UNITS && rounds < 200 {
        let given = rogue.take_units();
        if given.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(50));
            rounds += 1;
            continue;
        }
        let items = given
            .iter()
            .map(|u| {
                let out = if computed_one {
                    rigd_protocol::UnitOutput::GemmI8 {
                        c_digest: [0xAB; 32],
                    }
                } else {
                    computed_one = true;
                    rigd_coordinator::verify::recompute(&u.kind).unwrap()
                };
                rogue.receipt(u, &out, work(u))
            })
            .collect();
        rogue.send(encode(&rogue.batch(items)));
    }
    wait_job_done(coordinator, UNITS, &[honest], 120);
    coordinator.assert_exactly_once(UNITS, &[honest]);
    let (honest_pay, rogue_pay) = (
        credited_micros(coordinator, "rig-h"),
        credited_micros(coordinator, "rig-rogue"),
    );
    println!("over {UNITS} units: honest rig paid {honest_pay} micros, the rogue that invented results {rogue_pay}");
    assert!(rogue_pay < honest_pay, "{rogue_pay} >= {honest_pay}");
    assert_eq!(rogue_pay, 0, "its unaudited credit was forfeited");
    let rogue_id = RigId::new("rig-rogue").unwrap();
    let caught = coordinator
        .ledger()
        .unwrap()
        .earnings(&rogue_id)
        .unwrap()
        .total()
        .rejected_units;
    assert!(
        computed_one && caught >= 2,
        "the rogue was leased units and caught: {caught} rejected"
    );
}

/// A rogue leased shards of the devnet MLP job (before the honest rig starts, so step 0
/// cannot complete without them) poisons them (gradients of 3e37, and finite
/// ones inside the hard bound pointing the wrong way) beside an honest rigd: it is caught,
/// paid nothing and suspended, no honest receipt is rejected, and the job reaches its loss
/// target with the honest rig.
#[test]
fn a_rogue_that_poisons_training_is_caught_and_the_job_reaches_its_loss_target() {
    const TARGET: f32 = 0.15;
    let mut scene = Scene::new(
        |port, dir, tls| Coordinator::process_mlp(port, dir, 60, TARGET, Some(tls)),
        1,
        2,
        "",
    );
    let (coordinator, honest, rogue) = scene.parts();
    let mut poisoned = 0;
    let reached = || {
        coordinator
            .checkpoint()
            .and_then(|c| c.loss)
            .is_some_and(|l| l <= TARGET)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !reached() {
        assert!(
            std::time::Instant::now() < deadline,
            "loss target not reached: {:?}; coordinator log ends:\n{}",
            coordinator.checkpoint().map(|c| (c.step, c.loss)),
            coordinator.log_tail(20)
        );
        let given = rogue.take_units();
        if given.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        }
        let items = given
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let rigd_protocol::UnitOutput::MlpGrad {
                    loss_sum,
                    samples,
                    grad_sum,
                } = rigd_coordinator::verify::recompute(&u.kind).unwrap()
                else {
                    panic!("MLP unit expected")
                };
                let norm = grad_sum.iter().map(|g| g * g).sum::<f32>().sqrt() / samples as f32;
                let grad_sum = if i % 2 == 0 {
                    vec![3e37; grad_sum.len()]
                } else {
                    // 90 % of the hard bound, against the honest direction.
                    let scale = 90.0 / norm.max(1e-6);
                    grad_sum.iter().map(|g| -g * scale).collect()
                };
                poisoned += 1;
                let out = rigd_protocol::UnitOutput::MlpGrad {
                    loss_sum,
                    samples,
                    grad_sum,
                };
                rogue.receipt(u, &out, rigd_kernels::unit::work(&u.kind))
            })
            .collect();
        rogue.send(encode(&rogue.batch(items)));
    }
    let ledger = coordinator.ledger().unwrap();
    let rogue_id = RigId::new("rig-rogue").unwrap();
    let honest_id = RigId::new("rig-h").unwrap();
    let (rogue_t, honest_t) = (
        ledger.earnings(&rogue_id).unwrap().total(),
        ledger.earnings(&honest_id).unwrap().total(),
    );
    let checkpoint = coordinator.checkpoint().unwrap();
    println!(
        "loss {:?} after {} steps; the rogue poisoned {poisoned} shards: paid {} micros, {} rejected; the honest rig paid {} micros, {} rejected",
        checkpoint.loss, checkpoint.step, rogue_t.credited_micros, rogue_t.rejected_units, honest_t.credited_micros, honest_t.rejected_units
    );
    assert!(poisoned > 0, "the rogue was leased shards");
    assert!(rogue_t.rejected_units > 0);
    assert_eq!(rogue_t.credited_micros, 0);
    assert_eq!(honest_t.rejected_units, 0, "no honest receipt rejected");
    assert!(honest_t.credited_micros > 0);
    assert!(honest.journal().0 > 0);
}
