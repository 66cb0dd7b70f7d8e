//! What untrusted rigs cost the coordinator: `cargo bench -p rigd --bench untrusted_bench`
//! (needs mosquitto; prints two tables).
//!
//! 1. Verification cost per credited receipt: the coordinator's engine in this process, its
//!    SQLite ledger in a temp dir, one honest rig with 8 cards sending a signed batch per
//!    round of leased 64^3 GEMM units (the `coordinator` binary's default job) with the
//!    default levers (probation of 10, 5 % sampled). Timed: the engine handling each batch
//!    (authentication, judging, the ledger transaction) and the recomputation it asks for,
//!    apart; computing the results and signing the batches is the rig's and not timed.
//! 2. Honest acknowledgement latency during a flood: mosquitto with mutual TLS and the fleet
//!    ACL, the `coordinator` binary, an honest client that computes its leased 32^3 units and
//!    times each batch from publish to ack, first alone, then while a rogue rig publishes
//!    signed batches of 1,500 receipts for never-issued units as fast as the broker takes them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_coordinator::engine::Outbound;
use rigd_coordinator::{CoordinatorConfig, Engine, JobSpec};
use rigd_harness::rogue::Rogue;
use rigd_harness::tls::Pki;
use rigd_harness::{mosquitto_tls, Coordinator};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{
    decode, encode, JobId, ReceiptBatch, RigId, RigState, UnitAssignment, UnitOutput, WorkUnit,
};
use rigd_testkit::measure::percentile;
use rigd_testkit::signer::TestRig;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Distinct flood batches, published over and over.
const FLOOD_FRAMES: u64 = 40;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn results(units: &[WorkUnit]) -> Vec<(WorkUnit, UnitOutput)> {
    units
        .iter()
        .map(|u| {
            (
                u.clone(),
                rigd_coordinator::verify::recompute(&u.kind).unwrap(),
            )
        })
        .collect()
}

fn signed(rig: &mut TestRig, done: &[(WorkUnit, UnitOutput)]) -> ReceiptBatch {
    let items = done
        .iter()
        .map(|(u, out)| rig.receipt(u, out, rigd_kernels::unit::work(&u.kind)))
        .collect();
    rig.batch(items)
}

/// Splits what the engine returned into units assigned to `rig` and recompute requests.
fn sort_out(
    out: Vec<Outbound>,
    rig: &RigId,
    units: &mut Vec<WorkUnit>,
    jobs: &mut Vec<rigd_coordinator::recompute::Recompute>,
) {
    let topic = topics::rig(rig, Channel::Units);
    for o in out {
        match o {
            Outbound::Publish {
                topic: t, payload, ..
            } if t == topic => {
                units.extend(decode::<UnitAssignment>(&payload).unwrap().units);
            }
            Outbound::Recompute(job) => jobs.push(job),
            _ => {}
        }
    }
}

fn verification_cost(total_units: u64) {
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::Gemm {
        job: JobId::new("gemm-bench").unwrap(),
        units: total_units,
        m: 64,
        n: 64,
        k: 64,
        seed: 1,
    };
    let config = CoordinatorConfig::new("127.0.0.1", 1, dir.path().join("ledger.db"), spec);
    let mut engine = Engine::open(&config, now_ms()).unwrap();
    let mut rig = TestRig::new("rig-honest", 3);
    let (mut units, mut jobs) = (vec![], vec![]);
    let status = encode(&rig.status(8, RigState::Idle));
    let out = engine.handle(&topics::rig(&rig.id, Channel::Status), &status, now_ms());
    sort_out(out, &rig.id, &mut units, &mut jobs);
    let receipts_topic = topics::rig(&rig.id, Channel::Receipts);
    let (mut engine_time, mut recompute_time) = (Duration::ZERO, Duration::ZERO);
    let mut batches = 0u64;
    while engine.status(now_ms()).units_done < total_units {
        if units.is_empty() {
            let out = engine.tick(now_ms());
            sort_out(out, &rig.id, &mut units, &mut jobs);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let done = results(&std::mem::take(&mut units));
        let frame = encode(&signed(&mut rig, &done));
        batches += 1;
        let t = Instant::now();
        let out = engine.handle(&receipts_topic, &frame, now_ms());
        engine_time += t.elapsed();
        sort_out(out, &rig.id, &mut units, &mut jobs);
        while let Some(job) = jobs.pop() {
            let t = Instant::now();
            let back = job.run();
            recompute_time += t.elapsed();
            let t = Instant::now();
            let out = engine.recomputed(back, now_ms());
            engine_time += t.elapsed();
            sort_out(out, &rig.id, &mut units, &mut jobs);
        }
    }
    let status = engine.status(now_ms());
    let per = |d: Duration| d.as_secs_f64() * 1e6 / status.units_done as f64;
    println!("\n## Verification cost per credited receipt ({total_units} GEMM 64^3 units, {batches} batches of 24)\n");
    println!("| figure | value |\n|---|---|");
    println!(
        "| engine (authenticate, judge, ledger transaction, ack) | {:.0} us/receipt |",
        per(engine_time)
    );
    println!(
        "| recomputation on the pool | {:.0} us/receipt |",
        per(recompute_time)
    );
    println!(
        "| total | {:.0} us/receipt |",
        per(engine_time + recompute_time)
    );
    println!(
        "| share recomputed | {:.1} % ({} of {}: 10 on probation, then 5 % sampled) |",
        100.0 * status.units_verified as f64 / status.units_done as f64,
        status.units_verified,
        status.units_done
    );
}

/// rigd's default resend interval.
const RESEND: Duration = Duration::from_secs(1);

/// Rounds of the honest client: computes its leased units, publishes one batch, waits for
/// its ack (resending it every second, as rigd does). Returns each batch's latency from its
/// first publish to its ack; counts resends in `resends`.
fn honest_rounds(
    honest: &mut Rogue,
    rounds: usize,
    resends: &mut u64,
    coordinator: &Coordinator,
) -> Vec<Duration> {
    let mut latencies = vec![];
    let deadline = Instant::now() + Duration::from_secs(120);
    while latencies.len() < rounds {
        assert!(
            Instant::now() < deadline,
            "the honest client got no units or acks"
        );
        let given = honest.take_units();
        if given.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let done = results(&given);
        let batch = signed(honest, &done);
        let first = batch.header.first_seq;
        let frame = encode(&batch);
        let sent = Instant::now();
        let mut last_sent = sent;
        honest.send(frame.clone());
        let acked = loop {
            if let Some(t) = honest.acked_at(first) {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "batch {first} never acked; the coordinator's log ends:\n{}",
                coordinator.log_tail(30)
            );
            // As rigd does (`resend_interval_ms`): a broker may drop a message to a
            // subscriber whose queue is full.
            if last_sent.elapsed() >= RESEND {
                honest.send(frame.clone());
                last_sent = Instant::now();
                *resends += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        latencies.push(acked.duration_since(sent));
    }
    latencies.sort();
    latencies
}

fn flood_latency(rounds: usize) {
    let pki = Pki::create();
    let broker = mosquitto_tls(&pki.ca_dir());
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::process_gemm(
        broker.port,
        dir.path(),
        100_000,
        32,
        Some(&pki.client("fleet:coordinator")),
    );
    let mut flood = Rogue::connect(broker.port, "rig-flood", 9, &pki.client("rig-flood"));
    flood.announce();
    let mut honest = Rogue::connect(broker.port, "rig-honest", 3, &pki.client("rig-honest"));
    honest.announce_cards(1);
    let template = WorkUnit {
        job: JobId::new("gemm-test").unwrap(),
        unit: 0,
        attempt: 0,
        kind: rigd_protocol::UnitKind::GemmI8 {
            m: 32,
            n: 32,
            k: 32,
            seed: 11,
        },
    };
    let out = rigd_coordinator::verify::recompute(&template.kind).unwrap();
    let frames: Vec<Vec<u8>> = (0..FLOOD_FRAMES)
        .map(|b| {
            let items = (0..1500u64)
                .map(|i| {
                    let unit = WorkUnit {
                        unit: 10_000_000 + b * 1500 + i,
                        ..template.clone()
                    };
                    flood.receipt(&unit, &out, 1)
                })
                .collect();
            encode(&flood.batch(items))
        })
        .collect();
    let (mut resends_alone, mut resends_flooded) = (0, 0);
    let alone = honest_rounds(&mut honest, rounds, &mut resends_alone, &coordinator);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let flooder = std::thread::spawn(move || {
        let mut sent = 0u64;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            for f in &frames {
                flood.send(f.clone());
                sent += 1;
            }
        }
        (sent, flood)
    });
    let flooded = honest_rounds(&mut honest, rounds, &mut resends_flooded, &coordinator);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, flood) = flooder.join().unwrap();
    let recorded = coordinator
        .ledger()
        .and_then(|l| l.refused_rows(&flood.id).ok())
        .unwrap_or(0);
    println!("\n## Honest acknowledgement latency during a flood ({rounds} honest batches of 3 GEMM 32^3 units)\n");
    println!("| run | p50 | p99 | max | resends |\n|---|---|---|---|---|");
    for (name, l, r) in [
        ("honest rig alone", &alone, resends_alone),
        ("during the flood", &flooded, resends_flooded),
    ] {
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {r} |",
            percentile(l, 0.5).unwrap().as_secs_f64() * 1e3,
            percentile(l, 0.99).unwrap().as_secs_f64() * 1e3,
            l.last().unwrap().as_secs_f64() * 1e3
        );
    }
    println!(
        "\nflood: {sent} batches of 1,500 receipts published ({} distinct), {} acked, {recorded} ledger rows",
        FLOOD_FRAMES,
        flood.acked().len()
    );
}

fn main() {
    let units = std::env::var("RIGD_BENCH_UNITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    verification_cost(units);
    flood_latency(200);
}
