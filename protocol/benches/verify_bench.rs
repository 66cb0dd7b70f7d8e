//! Verifier figures, printed as a table: `cargo bench -p rigd-protocol --bench verify_bench`.
//!
//! - receipts verified per second one by one ([`verify_receipt`]: leaf, proof, header digest,
//!   signature), secp256k1 (address recovery) and P-256;
//! - receipts verified per second a batch at a time ([`verify_batch`]: the signature once);
//! - Merkle proofs of a whole batch built per second (what rigd does per batch it sends).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use k256::ecdsa::signature::hazmat::PrehashSigner;
use rigd_protocol::digest::Hash32;
use rigd_protocol::verify::{verify_batch, verify_receipt};
use rigd_protocol::{
    merkle, BatchHeader, GpuUuid, JobId, PublicKey, Receipt, ReceiptBatch, ReceiptItem, RigId,
    Signature, UnitOutput,
};
use std::time::Instant;

fn receipts(n: u64) -> Vec<Receipt> {
    (1..=n)
        .map(|seq| Receipt {
            rig: RigId::new("rig-bench").unwrap(),
            seq,
            card: GpuUuid::new("GPU-8a3f2c1e-4b5d-6e7f-8091-a2b3c4d5e6f0").unwrap(),
            job: JobId::new("job-mnist").unwrap(),
            unit: seq,
            attempt: 0,
            work: 2_000_000_000,
            input_digest: [seq as u8; 32],
            output_digest: [!(seq as u8); 32],
            started_ms: 1_750_000_000_000,
            finished_ms: 1_750_000_000_750,
            governor_level: 0,
        })
        .collect()
}

/// A batch of `n` receipts signed by a secp256k1 or a P-256 key, and that key.
fn batch(n: u64, p256: bool) -> (ReceiptBatch, PublicKey) {
    let rs = receipts(n);
    let header = BatchHeader::over(&rs[0].rig, rigd_protocol::Domain::LOCAL, &rs).unwrap();
    let digest = header.signing_digest();
    let (signature, key) = if p256 {
        let sk = p256::ecdsa::SigningKey::from_slice(&[0x22; 32]).unwrap();
        let sig: p256::ecdsa::Signature = sk.sign_prehash(&digest).unwrap();
        let sig = sig.normalize_s().unwrap_or(sig);
        let pk = sk
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        (sig.to_bytes().to_vec(), PublicKey::P256(pk))
    } else {
        let sk = k256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
        let (sig, recid) = sk.sign_prehash_recoverable(&digest).unwrap();
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + recid.to_byte());
        let pk = sk
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec();
        (bytes, PublicKey::Secp256k1(pk))
    };
    let out = UnitOutput::GemmI8 { c_digest: [0; 32] };
    let items = ReceiptItem::with_proofs(rs.into_iter().map(|r| (r, out.clone())).collect());
    (
        ReceiptBatch {
            header,
            signature: Signature(signature),
            items,
        },
        key,
    )
}

fn per_second(count: u64, f: impl Fn()) -> f64 {
    let t = Instant::now();
    f();
    count as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    println!("| figure | value |");
    println!("|---|---|");
    for (curve, p256) in [("secp256k1", false), ("P-256", true)] {
        let (b, key) = batch(256, p256);
        let one = per_second(2 * 256, || {
            for _ in 0..2 {
                for item in &b.items {
                    verify_receipt(&item.receipt, &item.proof, &b.header, &b.signature, &key)
                        .unwrap();
                }
            }
        });
        println!("| receipts verified per second one by one (verify_receipt), {curve}, batch of 256 | {one:.0} /s |");
        for n in [256u64, 4096] {
            let (b, key) = batch(n, p256);
            let reps = 8;
            let all = per_second(reps * n, || {
                for _ in 0..reps {
                    assert_eq!(verify_batch(&b, &key).unwrap().len(), n as usize);
                }
            });
            println!("| receipts verified per second a batch at a time (verify_batch), {curve}, batch of {n} | {all:.0} /s |");
        }
    }
    let leaves: Vec<Hash32> = receipts(4096).iter().map(Receipt::struct_hash).collect();
    let reps = 8;
    let proofs = per_second(reps * 4096, || {
        for _ in 0..reps {
            assert_eq!(merkle::proofs(&leaves).len(), 4096);
        }
    });
    println!("| inclusion proofs built per second, batch of 4096 | {proofs:.0} /s |");
}
