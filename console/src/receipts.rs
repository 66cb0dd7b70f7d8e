//! `rigctl receipts verify FILE|RIG`: checks every receipt of a saved batch frame (the payload
//! of a `rig/{rig}/receipts` message), or of every batch the rig publishes while rigctl
//! listens, with the protocol's verifier: the inclusion proof each receipt carries, the
//! output it carries against its signed output digest, the batch header, the signature and
//! the rig's key (given, or read from the rig's retained status on the broker), and the
//! deployment the batch is signed for (when one is given).

use rigd_protocol::verify::verify_receipt;
use rigd_protocol::{decode, Domain, PublicKey, ReceiptBatch};
use serde::Serialize;

/// One receipt's verdict.
#[derive(Debug, Serialize)]
pub struct Line {
    /// Sequence number.
    pub seq: u64,
    /// Unit.
    pub unit: u64,
    /// Card.
    pub card: String,
    /// Work, FLOPs.
    pub work: u64,
    /// `ok`, or why the receipt was refused.
    pub verdict: String,
}

/// The verdicts of a batch.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The rig.
    pub rig: String,
    /// First sequence number.
    pub first_seq: u64,
    /// Receipts in the batch.
    pub count: u32,
    /// The key checked against.
    pub key: String,
    /// The deployment the batch is signed for (chain id and settlement contract).
    pub domain: String,
    /// What was checked, in words.
    pub checked: &'static str,
    /// Per receipt.
    pub receipts: Vec<Line>,
}

impl Report {
    /// Whether the batch holds receipts and every one verified (an empty batch proves
    /// nothing, so it fails).
    pub fn all_ok(&self) -> bool {
        !self.receipts.is_empty() && self.receipts.iter().all(|l| l.verdict == "ok")
    }
}

/// Decodes a saved batch frame.
pub fn read_batch(bytes: &[u8]) -> Result<ReceiptBatch, rigd_protocol::FrameError> {
    decode::<ReceiptBatch>(bytes)
}

/// The distinct batches of `rig` among `payloads` (a batch sent again is counted once), by
/// first sequence number. Frames that do not decode, or name another rig, are logged and
/// skipped.
pub fn distinct_batches(rig: &rigd_protocol::RigId, payloads: &[Vec<u8>]) -> Vec<ReceiptBatch> {
    let mut seen = std::collections::BTreeMap::new();
    for bytes in payloads {
        match read_batch(bytes) {
            Ok(b) if &b.header.rig == rig => {
                seen.entry(b.header.first_seq).or_insert(b);
            }
            Ok(b) => tracing::warn!(rig = %b.header.rig, "skipping a batch of another rig"),
            Err(error) => tracing::warn!(%error, "skipping a frame that is not a receipt batch"),
        }
    }
    seen.into_values().collect()
}

/// One line over all reports: batches, receipts, failures.
pub fn summary(reports: &[Report]) -> String {
    let receipts: usize = reports.iter().map(|r| r.receipts.len()).sum();
    let failed: usize = reports
        .iter()
        .map(|r| r.receipts.iter().filter(|l| l.verdict != "ok").count())
        .sum();
    format!(
        "{} batch(es), {receipts} receipt(s) checked, {failed} refused\n",
        reports.len()
    )
}

/// Parses a key as `rigctl` and rigd print it: `secp256k1:HEX` or `p256:HEX`.
pub fn parse_key(text: &str) -> Option<PublicKey> {
    let (curve, hex_key) = text.split_once(':')?;
    let bytes = hex::decode(hex_key).ok()?;
    match curve {
        "secp256k1" => Some(PublicKey::Secp256k1(bytes)),
        "p256" => Some(PublicKey::P256(bytes)),
        _ => None,
    }
}

/// Checks every receipt of `batch` against `key`, each with the inclusion proof it carries,
/// and, when `expected` is given, that the batch is signed for that deployment.
pub fn verify_batch(batch: &ReceiptBatch, key: &PublicKey, expected: Option<Domain>) -> Report {
    let signed_for = batch.header.domain;
    let lines = batch
        .items
        .iter()
        .map(|item| {
            let r = &item.receipt;
            let verdict = match verify_receipt(r, &item.proof, &batch.header, &batch.signature, key)
            {
                Ok(_) if item.output.digest() != r.output_digest => {
                    "the carried output does not match the signed output digest".to_owned()
                }
                Ok(_) if expected.is_some_and(|d| d != signed_for) => {
                    format!("signed for another deployment ({signed_for})")
                }
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            };
            Line {
                seq: r.seq,
                unit: r.unit,
                card: r.card.to_string(),
                work: r.work,
                verdict,
            }
        })
        .collect();
    Report {
        rig: batch.header.rig.to_string(),
        first_seq: batch.header.first_seq,
        count: batch.header.count,
        key: key.to_string(),
        domain: signed_for.to_string(),
        checked: "each receipt's EIP-712 leaf and the Merkle inclusion proof it carries, the carried output against the signed output digest, the batch header's EIP-712 digest, and its signature under the rig's key",
        receipts: lines,
    }
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "batch of rig {} seqs {}..{} ({} receipts)\nkey: {}\nsigned for: {}\nchecked: {}\n{:>8}  {:>10}  {:<28}  {:>14}  VERDICT\n",
        r.rig,
        r.first_seq,
        r.first_seq + u64::from(r.count),
        r.count,
        r.key,
        r.domain,
        r.checked,
        "SEQ",
        "UNIT",
        "CARD",
        "WORK"
    );
    for l in &r.receipts {
        out.push_str(&format!(
            "{:>8}  {:>10}  {:<28}  {:>14}  {}\n",
            l.seq, l.unit, l.card, l.work, l.verdict
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_protocol::{
        encode, BatchHeader, GpuUuid, JobId, Receipt, ReceiptItem, RigId, Signature, UnitOutput,
    };

    fn batch(sign_with: u8) -> (ReceiptBatch, PublicKey) {
        let sk =
            k256::ecdsa::SigningKey::from_slice(&[sign_with; 32]).unwrap_or_else(|e| panic!("{e}"));
        let pk = PublicKey::Secp256k1(
            sk.verifying_key()
                .to_encoded_point(true)
                .as_bytes()
                .to_vec(),
        );
        let rig = RigId::new("rig-v").unwrap_or_else(|e| panic!("{e}"));
        let items = ReceiptItem::with_proofs(
            (1..=3)
                .map(|seq| {
                    (
                        Receipt {
                            rig: rig.clone(),
                            seq,
                            card: GpuUuid::new("SIM-0").unwrap_or_else(|e| panic!("{e}")),
                            job: JobId::new("job").unwrap_or_else(|e| panic!("{e}")),
                            unit: seq,
                            attempt: 0,
                            work: 100,
                            input_digest: [1; 32],
                            output_digest: UnitOutput::GemmI8 {
                                c_digest: [seq as u8; 32],
                            }
                            .digest(),
                            started_ms: 1,
                            finished_ms: 2,
                            governor_level: 0,
                        },
                        UnitOutput::GemmI8 {
                            c_digest: [seq as u8; 32],
                        },
                    )
                })
                .collect(),
        );
        let receipts: Vec<Receipt> = items.iter().map(|i| i.receipt.clone()).collect();
        let header = BatchHeader::over(&rig, rigd_protocol::Domain::LOCAL, &receipts)
            .unwrap_or_else(|e| panic!("{e}"));
        let (sig, recid) = sk
            .sign_prehash_recoverable(&header.signing_digest())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + recid.to_byte());
        (
            ReceiptBatch {
                header,
                signature: Signature(bytes),
                items,
            },
            pk,
        )
    }

    #[test]
    fn a_saved_batch_verifies_and_a_wrong_key_or_tampered_receipt_is_named() {
        let (b, pk) = batch(3);
        let decoded = read_batch(&encode(&b)).unwrap_or_else(|e| panic!("{e}"));
        let ok = verify_batch(&decoded, &pk, Some(Domain::LOCAL));
        assert!(ok.all_ok(), "{}", table(&ok));
        assert_eq!(parse_key(&pk.to_string()), Some(pk.clone()));
        let (_, other) = batch(4);
        let wrong = verify_batch(&b, &other, None);
        assert!(
            wrong
                .receipts
                .iter()
                .all(|l| l.verdict.contains("does not match")),
            "{}",
            table(&wrong)
        );
        let mut tampered = b.clone();
        tampered.items[1].receipt.work += 1;
        let r = verify_batch(
            &tampered,
            &parse_key(&ok.key).unwrap_or_else(|| unreachable!()),
            None,
        );
        assert_eq!(
            r.receipts[1].verdict,
            "the inclusion proof does not lead to the batch root"
        );
        let mut bad_proof = b.clone();
        bad_proof.items[2].proof[0][7] ^= 1;
        let r = verify_batch(&bad_proof, &pk, None);
        assert_eq!(
            r.receipts
                .iter()
                .map(|l| l.verdict == "ok")
                .collect::<Vec<_>>(),
            [true, true, false],
            "{}",
            table(&r)
        );
        let mut altered_output = b.clone();
        altered_output.items[0].output = UnitOutput::GemmI8 {
            c_digest: [0xee; 32],
        };
        let r = verify_batch(&altered_output, &pk, None);
        assert_eq!(
            r.receipts[0].verdict,
            "the carried output does not match the signed output digest"
        );
        assert!(!r.all_ok());
        assert_eq!(r.receipts[1].verdict, "ok");
        assert!(read_batch(b"garbage").is_err());
        let elsewhere = Domain::new(1, rigd_protocol::EthAddress([0x42; 20]));
        let r = verify_batch(&b, &pk, Some(elsewhere));
        assert!(!r.all_ok());
        assert!(
            r.receipts
                .iter()
                .all(|l| l.verdict == format!("signed for another deployment ({})", Domain::LOCAL)),
            "{}",
            table(&r)
        );
        assert!(table(&r).contains(
            "signed for: chain 31337 contract 0x5FbDB2315678afecb367f032d93F642f64180aa3"
        ));
    }

    #[test]
    fn batches_heard_live_are_counted_once_and_foreign_or_bad_frames_are_skipped() {
        let (b, pk) = batch(3);
        let rig = b.header.rig.clone();
        let mut other = b.clone();
        other.header.rig = RigId::new("rig-w").unwrap_or_else(|e| panic!("{e}"));
        let payloads = vec![encode(&b), b"garbage".to_vec(), encode(&b), encode(&other)];
        let batches = distinct_batches(&rig, &payloads);
        assert_eq!(batches, vec![b]);
        let reports: Vec<Report> = batches.iter().map(|b| verify_batch(b, &pk, None)).collect();
        assert_eq!(
            summary(&reports),
            "1 batch(es), 3 receipt(s) checked, 0 refused\n"
        );
    }
}
