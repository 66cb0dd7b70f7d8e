//! Receipt key figures, printed as a table: `cargo bench -p rigd --bench keys_bench`.
//! Starts its own swtpm and SoftHSM2 token (Debian `swtpm`, `softhsm2`).
//!
//! Per backend:
//! - signatures per second through `KeyStore::sign_digest` (the store's signature plus our
//!   check of it);
//! - receipts per second end to end, durable and signed: one thread journals group commits of
//!   256 finished units (as the supervisor does), another follows the [`Batcher`]'s decisions
//!   as the supervisor does, cutting each batch, signing it outside the journal lock and
//!   storing it. The figure counts from the first commit until the last receipt is in a
//!   stored, signed batch.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd::batcher::{Batcher, Decision};
use rigd::journal::{Journal, JournalStore};
use rigd::keys::{self, KeyStore};
use rigd_protocol::RigId;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn signatures_per_second(key: &dyn KeyStore, n: u32) -> f64 {
    let t0 = Instant::now();
    for i in 0..n {
        key.sign_digest(&rigd_protocol::digest::keccak256(&[&i.to_be_bytes()]))
            .unwrap();
    }
    f64::from(n) / t0.elapsed().as_secs_f64()
}

/// Receipts per second, durable and signed; returns (rate, signatures, largest batch).
fn receipts_per_second(key: Arc<dyn KeyStore>, total: u64, batch_max: u32) -> (f64, u64, u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(&dir.path().join("j.db"), RigId::new("bench").unwrap()).unwrap();
    let units: Vec<_> = (0..total).map(rigd_harness::bench_unit).collect();
    j.add_units(&units).unwrap();
    let done: Vec<_> = units.iter().map(rigd_harness::bench_completion).collect();
    let journal = Arc::new(Mutex::new(j));
    let (tx, rx) = mpsc::channel::<u64>();
    let t0 = Instant::now();
    let recorder = {
        let journal = journal.clone();
        std::thread::spawn(move || {
            for chunk in done.chunks(256) {
                let mut j = journal.lock().unwrap();
                j.record(chunk).unwrap();
                let last = j.stats().unwrap().last_seq;
                drop(j);
                tx.send(last).unwrap();
            }
        })
    };
    let mut batcher = Batcher::new(batch_max, Duration::from_millis(1000), 0, 0, t0);
    let (mut signatures, mut largest, mut sealed) = (0u64, 0u32, 0u64);
    while sealed < total {
        while let Ok(last) = rx.try_recv() {
            batcher.journaled(last, Instant::now());
        }
        match batcher.poll(Instant::now()) {
            Decision::Seal(n) => {
                let header = journal
                    .lock()
                    .unwrap()
                    .next_batch(n, rigd_protocol::Domain::LOCAL)
                    .unwrap()
                    .unwrap();
                let t = Instant::now();
                let sig = key.sign_digest(&header.signing_digest()).unwrap();
                let took = t.elapsed();
                let mut j = journal.lock().unwrap();
                j.store_batch(&header, &sig).unwrap();
                sealed = j.stats().unwrap().sealed_seq;
                drop(j);
                batcher.signed(sealed, took, Instant::now());
                signatures += 1;
                largest = largest.max(header.count);
            }
            Decision::WaitUntil(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                if let Ok(last) = rx.recv_timeout(wait) {
                    batcher.journaled(last, Instant::now());
                }
            }
            Decision::Idle => {
                if let Ok(last) = rx.recv_timeout(Duration::from_millis(10)) {
                    batcher.journaled(last, Instant::now());
                }
            }
        }
    }
    let rate = total as f64 / t0.elapsed().as_secs_f64();
    recorder.join().unwrap();
    (rate, signatures, largest)
}

fn main() {
    let state = tempfile::tempdir().unwrap();
    let tpm = rigd_harness::swtpm::Swtpm::start(state.path());
    // SoftHSM2 reads SOFTHSM2_CONF once per process, before the first token is opened.
    let hsm = rigd_harness::softhsm::SoftHsm::new("bench");
    std::env::set_var("SOFTHSM2_CONF", hsm.conf());
    let pkcs11 = |curve: &str| hsm.uri_curve(&format!("key-{curve}"), curve);
    let keydir = tempfile::tempdir().unwrap();
    let backends: Vec<(&str, String, u32)> = vec![
        ("file secp256k1", "file:k1".into(), 256),
        ("file P-256", "file:k2?curve=p256".into(), 256),
        ("swtpm P-256 (tpm:)", format!("tpm:{}", tpm.rest()), 256),
        ("SoftHSM2 secp256k1 (pkcs11:)", pkcs11("secp256k1"), 256),
        ("SoftHSM2 P-256 (pkcs11:)", pkcs11("p256"), 256),
        (
            "file P-256 slowed to 4 signatures/s (a real TPM)",
            "file:k3?curve=p256&sign_delay_ms=250".into(),
            4096,
        ),
    ];
    println!("| backend | signatures/s | batch_max_receipts | receipts/s, durable and signed | signatures | largest batch |");
    println!("|---|---|---|---|---|---|");
    for (name, uri, batch_max) in backends {
        let key: Arc<dyn KeyStore> = Arc::from(keys::open(&uri, keydir.path(), true).unwrap());
        let slow = uri.contains("sign_delay_ms");
        let sigs = signatures_per_second(key.as_ref(), if slow { 8 } else { 1000 });
        let (rate, signatures, largest) = receipts_per_second(key, 100_000, batch_max);
        println!(
            "| {name} | {sigs:.0} /s | {batch_max} | {rate:.0} /s | {signatures} | {largest} |"
        );
    }
}
