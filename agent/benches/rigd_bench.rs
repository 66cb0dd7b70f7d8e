//! rigd figures, printed as a table: `cargo bench -p rigd --bench rigd_bench`.
//!
//! - supervisor RSS with 8 sim cards, connected to a real mosquitto and idle;
//! - agent overhead per unit on the durable path (journal the unit, journal the receipt,
//!   sign the batch, store it, build the outgoing message), p50/p99, one unit at a time;
//! - journal appends per second with group commit;
//! - telemetry bytes per card sample, postcard frame beside JSON.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd::journal::{Journal, JournalStore};
use rigd::keys;
use rigd_harness::{Mosquitto, RigProcess};
use rigd_protocol::{encode, CardState, GpuSample, GpuUuid, RigId, Telemetry};
use rigd_testkit::measure::{percentile, rss_kib};
use std::time::{Duration, Instant};

fn overhead_per_unit(units: u64) -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let rig = RigId::new("bench").unwrap();
    let key = keys::open("file:key", dir.path(), true).unwrap();
    let mut j = Journal::open(&dir.path().join("j.db"), rig.clone()).unwrap();
    let mut times = vec![];
    for n in 0..units {
        let u = rigd_harness::bench_unit(n);
        let t0 = Instant::now();
        j.add_units(std::slice::from_ref(&u)).unwrap();
        j.record(&[rigd_harness::bench_completion(&u)]).unwrap();
        j.seal_all(256, key.as_ref(), rigd_protocol::Domain::LOCAL)
            .unwrap();
        let batches = j.unacked_batches(1, &Default::default()).unwrap();
        let bytes = batches.iter().map(|b| encode(b).len()).sum::<usize>();
        times.push(t0.elapsed());
        assert!(bytes > 0);
        let acked: Vec<_> = batches
            .iter()
            .map(|b| rigd_protocol::AckedBatch {
                first_seq: b.header.first_seq,
                digest: b.header.signing_digest(),
            })
            .collect();
        j.ack(&acked).unwrap();
    }
    times.sort();
    (
        percentile(&times, 0.5).unwrap(),
        percentile(&times, 0.99).unwrap(),
    )
}

fn signatures_per_second(uri: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let key = keys::open(uri, dir.path(), true).unwrap();
    let n = 2000;
    let t0 = Instant::now();
    for i in 0..n {
        key.sign_digest(&[i as u8; 32]).unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn group_commit_rate(total: u64, group: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let key = keys::open("file:key", dir.path(), true).unwrap();
    let mut j = Journal::open(&dir.path().join("j.db"), RigId::new("bench").unwrap()).unwrap();
    let units: Vec<_> = (0..total).map(rigd_harness::bench_unit).collect();
    j.add_units(&units).unwrap();
    let done: Vec<_> = units.iter().map(rigd_harness::bench_completion).collect();
    let t0 = Instant::now();
    for chunk in done.chunks(group as usize) {
        j.record(chunk).unwrap();
        j.seal_all(256, key.as_ref(), rigd_protocol::Domain::LOCAL)
            .unwrap();
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

fn telemetry_sizes() -> (usize, usize) {
    let rig = RigId::new("rig-0001").unwrap();
    let gpus: Vec<_> = (0..8)
        .map(|i| GpuSample {
            uuid: GpuUuid::new(format!("GPU-5c3f0e9a-1b2c-4d5e-8f90-a1b2c3d4e5f{i}")).unwrap(),
            core_dc: 713,
            mem_dc: Some(842),
            power_w: 312,
            power_limit_w: 350,
            fan_pct: 64,
            util_pct: 100,
            sm_mhz: 1695,
            governor_level: 1,
            state: CardState::Busy,
            unit: Some(123_456),
            units_done: 9_876,
            worker_restarts: 0,
            fb_used_mib: 6_144,
            xid: 0,
        })
        .collect();
    let msg = Telemetry {
        rig,
        at_ms: 1_790_000_000_000,
        gpus,
    };
    let frame = encode(&msg).len();
    let json = serde_json::to_vec(&msg).unwrap().len();
    (frame / 8, json / 8)
}

fn idle_rss_kib() -> Option<u64> {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let rig = RigProcess::start("bench", broker.port, 8, dir.path(), "");
    rigd_harness::wait_until("rigd connected", 20, || rig.log().contains("rigd started"));
    std::thread::sleep(Duration::from_secs(3));
    rss_kib(rig.pid())
}

fn main() {
    let (p50, p99) = overhead_per_unit(2000);
    let rate = group_commit_rate(50_000, 256);
    let (frame, json) = telemetry_sizes();
    let rss = idle_rss_kib();
    let k1 = signatures_per_second("file:k1");
    let p256 = signatures_per_second("file:k2?curve=p256");
    println!("| figure | value | goal |");
    println!("|---|---|---|");
    if let Some(kib) = rss {
        println!(
            "| supervisor RSS, 8 sim cards, connected, idle | {:.1} MiB | <= 12 MiB |",
            kib as f64 / 1024.0
        );
    }
    println!(
        "| agent overhead per unit, durable + signed, p50 | {} us | <= 200 us |",
        p50.as_micros()
    );
    println!(
        "| agent overhead per unit, durable + signed, p99 | {} us | |",
        p99.as_micros()
    );
    println!("| receipts journaled and signed per second, group commit of 256 | {rate:.0} /s | >= 5,000 /s |");
    println!("| signatures per second, file key secp256k1 | {k1:.0} /s | |");
    println!("| signatures per second, file key P-256 | {p256:.0} /s | |");
    println!("| telemetry bytes per card sample (8 cards), postcard frame | {frame} B | |");
    println!("| telemetry bytes per card sample (8 cards), JSON | {json} B | |");
}
