//! Helpers for the unit tests: a rig with a software key that builds signed batches.

use k256::ecdsa::SigningKey;
use rigd_protocol::{
    BatchHeader, GpuUuid, JobId, PublicKey, Receipt, ReceiptBatch, ReceiptItem, RigId, Signature,
    UnitOutput, WorkUnit,
};

/// A simulated rig: id, key and the next sequence number.
pub struct TestRig {
    pub id: RigId,
    pub key: SigningKey,
    pub next_seq: u64,
}

pub fn rig_id(name: &str) -> RigId {
    RigId::new(name).unwrap_or_else(|_| unreachable!())
}

pub fn job_id(name: &str) -> JobId {
    JobId::new(name).unwrap_or_else(|_| unreachable!())
}

impl TestRig {
    pub fn new(name: &str, secret: u8) -> Self {
        Self {
            id: rig_id(name),
            key: SigningKey::from_slice(&[secret; 32]).unwrap_or_else(|_| unreachable!()),
            next_seq: 1,
        }
    }

    pub fn pubkey(&self) -> PublicKey {
        PublicKey::Secp256k1(
            self.key
                .verifying_key()
                .to_encoded_point(true)
                .as_bytes()
                .to_vec(),
        )
    }

    /// A receipt for `unit` claiming `output`, with honest digests and `work`.
    pub fn receipt(&mut self, unit: &WorkUnit, output: &UnitOutput, work: u64) -> ReceiptItem {
        let seq = self.next_seq;
        self.next_seq += 1;
        ReceiptItem {
            receipt: Receipt {
                rig: self.id.clone(),
                seq,
                card: GpuUuid::new("SIM-0").unwrap_or_else(|_| unreachable!()),
                job: unit.job.clone(),
                unit: unit.unit,
                attempt: unit.attempt,
                work,
                input_digest: unit.kind.input_digest(),
                output_digest: output.digest(),
                started_ms: 1,
                finished_ms: 2,
                governor_level: 0,
            },
            proof: vec![],
            output: output.clone(),
        }
    }

    /// Signs a batch over `items` (which must be consecutive), giving each its proof.
    pub fn batch(&self, items: Vec<ReceiptItem>) -> ReceiptBatch {
        let receipts: Vec<Receipt> = items.iter().map(|i| i.receipt.clone()).collect();
        let items =
            ReceiptItem::with_proofs(items.into_iter().map(|i| (i.receipt, i.output)).collect());
        let header = BatchHeader::over(&self.id, &receipts).unwrap_or_else(|e| panic!("{e}"));
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(&header.signing_digest())
            .unwrap_or_else(|_| unreachable!());
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + recid.to_byte());
        ReceiptBatch {
            header,
            signature: Signature(bytes),
            items,
        }
    }
}
