//! Test vectors of the receipt formats, for checks by implementations we did not write.
//!
//! Builds batches of receipts, their EIP-712 struct hashes (the Merkle leaves), Merkle roots
//! and proofs, batch digests, secp256k1 and P-256 signatures, and unit input/output digests,
//! all from fixed inputs and fixed test keys, and compares them with `tests/vectors.json`.
//! `RIGD_WRITE_VECTORS=1 cargo test -p rigd-protocol --test vectors` rewrites the file after a
//! deliberate format change; `tests/check_vectors.sh` recomputes it with eth-account and
//! cryptography (Python).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use k256::ecdsa::RecoveryId;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use rigd_protocol::credit::{CreditStatement, CREDIT_TYPE};
use rigd_protocol::digest::{keccak256, Hash32};
use rigd_protocol::frame::{self, FrameError};
use rigd_protocol::receipt::{BATCH_TYPE, DOMAIN_NAME, DOMAIN_TYPE, DOMAIN_VERSION, RECEIPT_TYPE};
use rigd_protocol::units::gemm_c_digest;
use rigd_protocol::{
    merkle, BatchHeader, Domain, EthAddress, GpuUuid, JobId, PublicKey, Receipt, ReceiptBatch,
    ReceiptItem, RigId, Signature, UnitKind, UnitOutput,
};
use serde_json::{json, Value};
use std::path::PathBuf;

/// The secp256k1 test key. Never a real key.
const K256_KEY: [u8; 32] = [0x11; 32];
/// The P-256 test key. Never a real key.
const P256_KEY: [u8; 32] = [0x22; 32];

/// The deployment most vectors are signed for: a test chain id and contract.
fn domain() -> Domain {
    Domain::new(11_155_111, EthAddress([0xcc; 20]))
}

fn domain_json(d: &Domain) -> Value {
    json!({
        "chainId": d.chain_id,
        "verifyingContract": hx(&d.verifying_contract),
        "separator": hx(&d.separator()),
    })
}

fn hx(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

fn id64(prefix: &str) -> String {
    let mut s = prefix.to_string();
    let mut i = 0u8;
    while s.len() < 64 {
        s.push(char::from(
            b"abcdefghijklmnopqrstuvwxyz0123456789._-"[usize::from(i % 39)],
        ));
        i = i.wrapping_add(7);
    }
    s
}

/// The output a receipt of `style` vouches for: GEMM digests for ordinary values, MLP
/// gradients with signed zeros, infinities and a NaN for the extremes.
fn output(tag: &Hash32, i: u64, style: u8) -> UnitOutput {
    let mut c_digest = *tag;
    c_digest.reverse();
    match style {
        0 => UnitOutput::GemmI8 { c_digest },
        _ => UnitOutput::MlpGrad {
            loss_sum: f32::from_bits(u32::from(c_digest[0]) << 16 | 0x3f80_0000),
            samples: u32::MAX - u32::try_from(i).unwrap(),
            grad_sum: [0.0, -0.0, f32::INFINITY, f32::NAN, 1.5e-7, f32::MIN]
                .into_iter()
                .take(usize::try_from(i % 7).unwrap())
                .collect(),
        },
    }
}

/// `count` consecutive receipts from `first_seq`, each with the output it vouches for, with
/// field values varied by `style`.
fn batch(rig: &str, first_seq: u64, count: u64, style: u8) -> Vec<(Receipt, UnitOutput)> {
    (0..count)
        .map(|i| {
            let seq = first_seq + i;
            let tag = keccak256(&[rig.as_bytes(), &seq.to_le_bytes()]);
            let (card, job, unit, attempt, work, started_ms, finished_ms, level) = match style {
                // Ordinary values.
                0 => (
                    format!("GPU-8a3f2c1e-4b5d-6e7f-8091-a2b3c4d5e6f{i}"),
                    "job-mnist.7".to_string(),
                    1000 + i,
                    0,
                    2_000_000_000 + i * 12_345,
                    1_750_000_000_000 + i * 1000,
                    1_750_000_000_750 + i * 1000,
                    u8::try_from(i % 3).unwrap(),
                ),
                // Extremes: the largest integers, 64-character ids, zero work.
                _ => (
                    id64(&format!("GPU-{i}-")),
                    id64("job_"),
                    u64::MAX - i,
                    u32::MAX - u32::try_from(i).unwrap(),
                    if i % 2 == 0 { u64::MAX } else { 0 },
                    u64::MAX - 1 - i,
                    u64::MAX - i,
                    5 - u8::try_from(i % 6).unwrap(),
                ),
            };
            let out = output(&tag, i, style);
            let receipt = Receipt {
                rig: RigId::new(rig).unwrap(),
                seq,
                card: GpuUuid::new(card).unwrap(),
                job: JobId::new(job).unwrap(),
                unit,
                attempt,
                work,
                input_digest: if style == 1 && i == 0 {
                    [0xff; 32]
                } else {
                    tag
                },
                output_digest: out.digest(),
                started_ms,
                finished_ms,
                governor_level: level,
            };
            (receipt, out)
        })
        .collect()
}

fn output_json(o: &UnitOutput) -> Value {
    match o {
        UnitOutput::GemmI8 { c_digest } => json!({ "kind": "gemm-i8", "cDigest": hx(c_digest) }),
        UnitOutput::MlpGrad {
            loss_sum,
            samples,
            grad_sum,
        } => json!({
            "kind": "mlp-grad",
            "lossSumBits": f32_bits(&[*loss_sum])[0],
            "samples": samples,
            "gradSumBits": f32_bits(grad_sum),
        }),
    }
}

fn receipt_json(r: &Receipt, out: &UnitOutput, leaf: &Hash32, proof: &[Hash32]) -> Value {
    json!({
        "rig": r.rig.as_str(),
        "seq": r.seq,
        "card": r.card.as_str(),
        "job": r.job.as_str(),
        "unit": r.unit,
        "attempt": r.attempt,
        "work": r.work,
        "inputDigest": hx(&r.input_digest),
        "outputDigest": hx(&r.output_digest),
        "startedMs": r.started_ms,
        "finishedMs": r.finished_ms,
        "governorLevel": r.governor_level,
        "output": output_json(out),
        "leaf": hx(leaf),
        "proof": proof.iter().map(|p| hx(p)).collect::<Vec<_>>(),
    })
}

/// secp256k1, 65 bytes `r ‖ s ‖ v`, low-s, v = 27 + recovery id.
fn sign_k256(digest: &Hash32) -> Vec<u8> {
    let sk = k256::ecdsa::SigningKey::from_slice(&K256_KEY).unwrap();
    let (sig, recid) = sk.sign_prehash_recoverable(digest).unwrap();
    let (sig, recid) = match sig.normalize_s() {
        Some(low) => (
            low,
            RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced()),
        ),
        None => (sig, recid),
    };
    let mut out = sig.to_bytes().to_vec();
    out.push(27 + recid.to_byte());
    out
}

/// P-256, 64 bytes `r ‖ s`, low-s.
fn sign_p256(digest: &Hash32) -> Vec<u8> {
    let sk = p256::ecdsa::SigningKey::from_slice(&P256_KEY).unwrap();
    let sig: p256::ecdsa::Signature = sk.sign_prehash(digest).unwrap();
    sig.normalize_s().unwrap_or(sig).to_bytes().to_vec()
}

fn k256_public() -> PublicKey {
    let sk = k256::ecdsa::SigningKey::from_slice(&K256_KEY).unwrap();
    PublicKey::Secp256k1(
        sk.verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec(),
    )
}

fn p256_public(compressed: bool) -> Vec<u8> {
    let sk = p256::ecdsa::SigningKey::from_slice(&P256_KEY).unwrap();
    sk.verifying_key()
        .to_encoded_point(compressed)
        .as_bytes()
        .to_vec()
}

fn batch_json(name: &str, domain: Domain, batch: &[(Receipt, UnitOutput)]) -> Value {
    let receipts: Vec<Receipt> = batch.iter().map(|(r, _)| r.clone()).collect();
    let header = BatchHeader::over(&receipts[0].rig, domain, &receipts).unwrap();
    let leaves: Vec<Hash32> = receipts.iter().map(Receipt::struct_hash).collect();
    let digest = header.signing_digest();
    let k_sig = sign_k256(&digest);
    let p_sig = sign_p256(&digest);
    // The vectors must be what rigd itself accepts.
    let k_pub = k256_public();
    assert_eq!(k_pub.verify(&digest, &Signature(k_sig.clone())), Ok(()));
    let p_pub = PublicKey::P256(p256_public(true));
    assert_eq!(p_pub.verify(&digest, &Signature(p_sig.clone())), Ok(()));
    // The proofs a batch message carries are the ones written here.
    let carried = ReceiptItem::with_proofs(batch.to_vec());
    let items: Vec<Value> = batch
        .iter()
        .zip(&leaves)
        .enumerate()
        .map(|(i, ((r, out), leaf))| {
            let proof = merkle::proof(&leaves, i).unwrap();
            assert!(merkle::verify(leaf, &proof, &header.root));
            assert_eq!(carried[i].proof, proof);
            assert_eq!(out.digest(), r.output_digest);
            receipt_json(r, out, leaf, &proof)
        })
        .collect();
    // The whole message as it travels on `rig/{rig}/receipts`, signed with the secp256k1 key.
    let message = ReceiptBatch {
        header: header.clone(),
        signature: Signature(k_sig.clone()),
        items: carried,
    };
    let frame = frame::encode(&message);
    // Compared as bytes: a NaN in a gradient is not equal to itself.
    let decoded = frame::decode::<ReceiptBatch>(&frame).unwrap();
    assert!(
        frame::encode(&decoded) == frame,
        "{name}: the frame does not round-trip"
    );
    json!({
        "name": name,
        "receipts": items,
        "root": hx(&header.root),
        "header": {
            "rig": header.rig.as_str(),
            "firstSeq": header.first_seq,
            "count": header.count,
            "root": hx(&header.root),
            "domain": domain_json(&domain),
        },
        "domainSeparator": hx(&domain.separator()),
        "batchStructHash": hx(&header.struct_hash()),
        "signingDigest": hx(&digest),
        "secp256k1": {
            "signature": hx(&k_sig),
            "address": hx(&k_pub.eth_address().unwrap()),
        },
        "p256": {
            "signature": hx(&p_sig),
            "publicKey": hx(&p256_public(false)),
        },
        "frame": hx(&frame),
    })
}

/// Frames every decoder must refuse, each a small change to the first batch's frame, with the
/// rule it breaks. rigd's own decoder refuses each for that rule (asserted here).
fn refused_frames() -> Value {
    let receipts = batch("rig-01", 1, 1, 0);
    let header = BatchHeader::over(&receipts[0].0.rig, domain(), &[receipts[0].0.clone()]).unwrap();
    let good = frame::encode(&ReceiptBatch {
        signature: Signature(sign_k256(&header.signing_digest())),
        header,
        items: ReceiptItem::with_proofs(receipts),
    });
    // Byte 2 is the length of the header's rig id ("rig-01"); byte 10 the header's count.
    assert_eq!((good[2], good[10]), (6, 1));
    let with = |at: usize, bytes: &[u8]| -> Vec<u8> {
        let mut f = good[..at].to_vec();
        f.extend_from_slice(bytes);
        f.extend_from_slice(&good[at + 1..]);
        f
    };
    let mut trailing = good.clone();
    trailing.push(0);
    let mut version = good.clone();
    version[0] = 1;
    let cases = [
        (
            "rig id length as an overlong varint (0x86 0x00 for 6)",
            with(2, &[0x86, 0x00]),
            "nonCanonical",
        ),
        ("one byte after the message", trailing, "trailing"),
        (
            "wire version 1 (before headers named their domain)",
            version,
            "version",
        ),
        (
            "header counts 2 receipts, the batch carries 1",
            with(10, &[2]),
            "invalid",
        ),
        (
            "cut off inside the last item",
            good[..good.len() - 1].to_vec(),
            "malformed",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, bytes, rule)| {
            let refused = frame::decode::<ReceiptBatch>(&bytes).unwrap_err();
            let got = match refused {
                FrameError::NonCanonical { .. } => "nonCanonical",
                FrameError::Trailing { .. } => "trailing",
                FrameError::Version { .. } => "version",
                FrameError::Invalid { .. } => "invalid",
                FrameError::Malformed { .. } => "malformed",
                other => panic!("{name}: refused as {other}"),
            };
            assert_eq!(got, rule, "{name}");
            json!({ "name": name, "frame": hx(&bytes), "rule": rule })
        })
        .collect()
}

fn f32_bits(v: &[f32]) -> Vec<String> {
    v.iter().map(|f| format!("0x{:08x}", f.to_bits())).collect()
}

fn units_json() -> Value {
    let params: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -2.5,
        0.1,
        f32::MIN_POSITIVE,
        f32::from_bits(1), // smallest subnormal
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NAN,
        std::f32::consts::PI,
    ];
    let mlp_in = UnitKind::MlpGrad {
        shape: [16, 32, 4],
        params: params.clone(),
        data_seed: 0x0123_4567_89ab_cdef,
        data_classes: 4,
        data_spread: 0.35,
        start: u64::MAX - 7,
        count: 1 << 20,
    };
    let grad: Vec<f32> = vec![-1.5e-7, 2.0, -0.0, f32::NEG_INFINITY, 12345.678];
    let mlp_out = UnitOutput::MlpGrad {
        loss_sum: 17.25,
        samples: 1 << 20,
        grad_sum: grad.clone(),
    };
    let c: Vec<i32> = vec![0, -1, 1, i32::MIN, i32::MAX, 123_456_789];
    let gemm_in = UnitKind::GemmI8 {
        seed: u64::MAX,
        m: 2,
        n: 3,
        k: 4096,
    };
    let c_digest = gemm_c_digest(&c);
    let gemm_out = UnitOutput::GemmI8 { c_digest };
    json!([
        {
            "kind": "mlp-grad",
            "input": {
                "shape": [16, 32, 4],
                "paramsBits": f32_bits(&params),
                "dataSeed": 0x0123_4567_89ab_cdef_u64,
                "dataClasses": 4,
                "dataSpreadBits": f32_bits(&[0.35])[0],
                "start": u64::MAX - 7,
                "count": 1 << 20,
            },
            "inputDigest": hx(&mlp_in.input_digest()),
            "output": {
                "lossSumBits": f32_bits(&[17.25])[0],
                "samples": 1 << 20,
                "gradSumBits": f32_bits(&grad),
            },
            "outputDigest": hx(&mlp_out.digest()),
        },
        {
            "kind": "gemm-i8",
            "input": { "seed": u64::MAX, "m": 2, "n": 3, "k": 4096 },
            "inputDigest": hx(&gemm_in.input_digest()),
            "output": { "c": c, "cDigest": hx(&c_digest) },
            "outputDigest": hx(&gemm_out.digest()),
        },
    ])
}

/// A credit statement as the network's statement key signs it (here the secp256k1 test key).
fn credit_json(name: &str, domain: Domain, statement: CreditStatement) -> Value {
    let digest = statement.signing_digest(&domain);
    json!({
        "name": name,
        "rig": statement.rig.as_str(),
        "lastSeq": statement.last_seq,
        "beforeMs": statement.before_ms,
        "creditedTotal": statement.credited_total,
        "domain": domain_json(&domain),
        "structHash": hx(&statement.struct_hash()),
        "signingDigest": hx(&digest),
        "signature": hx(&sign_k256(&digest)),
    })
}

fn credits() -> Value {
    let rig = |s: &str| RigId::new(s).unwrap();
    json!([
        credit_json(
            "a rig's credit before an instant",
            domain(),
            CreditStatement {
                rig: rig("rig-01"),
                last_seq: 3,
                before_ms: 1_750_000_000_000,
                credited_total: 60_000,
            },
        ),
        credit_json(
            "largest integers, a 64-character id, the local development chain",
            Domain::LOCAL,
            CreditStatement {
                rig: rig(&id64("rig-")),
                last_seq: u64::MAX,
                before_ms: u64::MAX,
                credited_total: u64::MAX,
            },
        ),
    ])
}

fn vectors() -> Value {
    let typehash = |s: &str| hx(&keccak256(&[s.as_bytes()]));
    let batches = vec![
        batch_json("one receipt", domain(), &batch("rig-01", 1, 1, 0)),
        batch_json("two receipts", domain(), &batch("rig-01", 2, 2, 0)),
        batch_json(
            "three receipts, odd node carried up, signed for the local development chain",
            Domain::LOCAL,
            &batch("garage_2.rig-7", 41, 3, 0),
        ),
        batch_json(
            "seven receipts, largest integers (the last sequence number a frame allows) and 64-character ids",
            domain(),
            &batch(&id64("rig-"), u64::MAX - 7, 7, 1),
        ),
    ];
    json!({
        "about": "Generated by protocol/tests/vectors.rs (RIGD_WRITE_VECTORS=1 cargo test -p rigd-protocol --test vectors); checked by protocol/tests/check_vectors.sh. Hashes and signatures are 0x-prefixed hex; f32 values are IEEE-754 bit patterns. Test keys only.",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "typeString": DOMAIN_TYPE,
            "typeHash": typehash(DOMAIN_TYPE),
            "examples": [domain_json(&domain()), domain_json(&Domain::LOCAL)],
        },
        "types": {
            "Receipt": { "typeString": RECEIPT_TYPE, "typeHash": typehash(RECEIPT_TYPE) },
            "ReceiptBatch": { "typeString": BATCH_TYPE, "typeHash": typehash(BATCH_TYPE) },
            "Credit": { "typeString": CREDIT_TYPE, "typeHash": typehash(CREDIT_TYPE) },
        },
        "keys": {
            "secp256k1": {
                "privateKey": hx(&K256_KEY),
                "address": hx(&k256_public().eth_address().unwrap()),
            },
            "p256": {
                "privateKey": hx(&P256_KEY),
                "publicKey": hx(&p256_public(false)),
            },
        },
        "batches": batches,
        "credits": credits(),
        "refusedFrames": refused_frames(),
        "units": units_json(),
    })
}

#[test]
fn committed_vectors_match_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.json");
    let text = serde_json::to_string_pretty(&vectors()).unwrap() + "\n";
    if std::env::var("RIGD_WRITE_VECTORS").as_deref() == Ok("1") {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let first_difference = committed
        .lines()
        .zip(text.lines())
        .position(|(a, b)| a != b)
        .map(|i| format!("line {}", i + 1))
        .unwrap_or_else(|| "the length".into());
    assert!(
        committed == text,
        "{} differs from what the code computes (first at {first_difference}); after a \
         deliberate format change run RIGD_WRITE_VECTORS=1 cargo test -p rigd-protocol --test \
         vectors, then sh protocol/tests/check_vectors.sh",
        path.display()
    );
}
