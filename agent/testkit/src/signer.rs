//! A rig's receipt key in a test: builds receipts and signed batches, honest or not.

use crate::fixtures;
use k256::ecdsa::SigningKey;
use rigd_protocol::{
    BatchHeader, PublicKey, ReceiptBatch, ReceiptItem, RigId, RigState, RigStatus, Signature,
    UnitOutput, WorkUnit,
};

/// A rig's id, its secp256k1 receipt key and its next sequence number.
pub struct TestRig {
    /// The rig's id.
    pub id: RigId,
    key: SigningKey,
    /// The sequence number of the next receipt.
    pub next_seq: u64,
}

impl TestRig {
    /// Rig `name` with a key made from `secret` (any nonzero byte), starting at seq 1.
    pub fn new(name: &str, secret: u8) -> Self {
        Self::with_secret(name, [secret; 32])
    }

    /// Rig `name` with the `n`th of 2^32 distinct keys, starting at seq 1 (fleets larger
    /// than [`TestRig::new`]'s 255 keys).
    pub fn numbered(name: &str, n: u32) -> Self {
        let mut secret = [0x11; 32];
        secret[28..].copy_from_slice(&n.to_be_bytes());
        Self::with_secret(name, secret)
    }

    fn with_secret(name: &str, secret: [u8; 32]) -> Self {
        Self {
            id: fixtures::rig_id(name),
            key: SigningKey::from_slice(&secret).unwrap_or_else(|e| panic!("{e}")),
            next_seq: 1,
        }
    }

    /// The public half of its receipt key.
    pub fn pubkey(&self) -> PublicKey {
        let point = self.key.verifying_key().to_encoded_point(true);
        PublicKey::Secp256k1(point.as_bytes().to_vec())
    }

    /// Its retained status in `state` with `cards` cards, its own key and nothing running,
    /// queued or waiting for an acknowledgement.
    pub fn status(&self, cards: u32, state: RigState) -> RigStatus {
        RigStatus {
            pubkey: self.pubkey(),
            state,
            units_running: 0,
            units_queued: 0,
            seq_journaled: 0,
            receipts_unacked: 0,
            ..fixtures::status(self.id.as_str(), cards)
        }
    }

    /// A receipt for `unit` computed on its card 0, claiming `output` and `work`, with the
    /// next sequence number and honest digests.
    pub fn receipt(&mut self, unit: &WorkUnit, output: &UnitOutput, work: u64) -> ReceiptItem {
        let seq = self.next_seq;
        self.next_seq += 1;
        ReceiptItem {
            receipt: rigd_protocol::Receipt {
                rig: self.id.clone(),
                seq,
                card: fixtures::uuid(self.id.as_str(), 0),
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

    /// A batch over `items` (consecutive receipts) signed by its key for the local
    /// development deployment, each item given its inclusion proof.
    pub fn batch(&self, items: Vec<ReceiptItem>) -> ReceiptBatch {
        self.batch_for(items, rigd_protocol::Domain::LOCAL)
    }

    /// [`Self::batch`], signed for `domain`.
    pub fn batch_for(
        &self,
        items: Vec<ReceiptItem>,
        domain: rigd_protocol::Domain,
    ) -> ReceiptBatch {
        let receipts: Vec<_> = items.iter().map(|i| i.receipt.clone()).collect();
        let header =
            BatchHeader::over(&self.id, domain, &receipts).unwrap_or_else(|e| panic!("{e}"));
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(&header.signing_digest())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut signature = sig.to_bytes().to_vec();
        signature.push(27 + recid.to_byte());
        ReceiptBatch {
            header,
            signature: Signature(signature),
            items: ReceiptItem::with_proofs(
                items.into_iter().map(|i| (i.receipt, i.output)).collect(),
            ),
        }
    }
}
