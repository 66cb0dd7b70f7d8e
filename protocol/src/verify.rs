//! Checking receipts without trusting the rig: the receipt, its inclusion proof, the signed
//! batch header, the signature and the rig's public key are all a verifier needs.
//! [`verify_receipt`] checks one receipt; [`verify_batch`] checks every receipt of a batch
//! message with the same code and the signature once.

use crate::crypto::{PublicKey, Signature, VerifyError};
use crate::digest::Hash32;
use crate::merkle;
use crate::messages::ReceiptBatch;
use crate::receipt::{BatchHeader, Receipt};

/// Why a receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The receipt names another rig than the batch header.
    #[error("receipt is from rig {receipt}, the batch from rig {batch}")]
    WrongRig {
        /// Rig in the receipt.
        receipt: String,
        /// Rig in the header.
        batch: String,
    },
    /// The receipt's sequence number lies outside the batch.
    #[error("receipt seq {seq} is outside the batch ({first}..{end})")]
    OutsideBatch {
        /// The receipt's sequence number.
        seq: u64,
        /// First sequence number of the batch.
        first: u64,
        /// One past the last.
        end: u64,
    },
    /// The receipt is not at its place in the batch.
    #[error("receipt seq {seq} stands where seq {expected} belongs")]
    OutOfOrder {
        /// The receipt's sequence number.
        seq: u64,
        /// The sequence number of its place.
        expected: u64,
    },
    /// The proof does not link the receipt to the batch root.
    #[error("the inclusion proof does not lead to the batch root")]
    NotIncluded,
    /// The signature over the batch header does not verify under the key.
    #[error("batch signature: {0}")]
    Signature(#[from] VerifyError),
}

/// What a successful check established, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The receipt's Merkle leaf (its EIP-712 struct hash).
    pub leaf: Hash32,
    /// The EIP-712 digest the rig signed.
    pub digest: Hash32,
    /// The curve of the key that signed.
    pub curve: &'static str,
}

/// Why a batch message was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The header counts another number of receipts than the batch carries.
    #[error("header counts {header} receipts, the batch carries {carried}")]
    Count {
        /// Count in the header.
        header: u32,
        /// Items carried.
        carried: usize,
    },
    /// A receipt is not where the header says, or not in the signed root.
    #[error("receipt {index} of the batch: {reason}")]
    Receipt {
        /// Position of the receipt in the batch.
        index: usize,
        /// Why it was refused.
        reason: ReceiptError,
    },
    /// The signature over the batch header does not verify under the key.
    #[error("batch signature: {0}")]
    Signature(#[from] VerifyError),
}

/// Checks that `receipt` is in the batch `header` (by `proof`), and that `signature` over the
/// header's EIP-712 digest was made by `key`.
pub fn verify_receipt(
    receipt: &Receipt,
    proof: &[Hash32],
    header: &BatchHeader,
    signature: &Signature,
    key: &PublicKey,
) -> Result<Checked, ReceiptError> {
    let leaf = included(receipt, proof, header)?;
    let digest = header.signing_digest();
    key.verify(&digest, signature)?;
    Ok(Checked {
        leaf,
        digest,
        curve: key.curve(),
    })
}

/// Checks every receipt of `batch` as [`verify_receipt`] does, each with the proof it carries,
/// verifying the header's signature once; the receipts must also be the header's, in sequence
/// order. Returns one [`Checked`] per receipt.
pub fn verify_batch(batch: &ReceiptBatch, key: &PublicKey) -> Result<Vec<Checked>, BatchError> {
    let header = &batch.header;
    if batch.items.len() != header.count as usize {
        return Err(BatchError::Count {
            header: header.count,
            carried: batch.items.len(),
        });
    }
    let digest = header.signing_digest();
    key.verify(&digest, &batch.signature)?;
    batch
        .items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let refused = |reason| BatchError::Receipt { index, reason };
            let expected = header.first_seq.saturating_add(index as u64);
            if item.receipt.seq != expected {
                return Err(refused(ReceiptError::OutOfOrder {
                    seq: item.receipt.seq,
                    expected,
                }));
            }
            let leaf = included(&item.receipt, &item.proof, header).map_err(refused)?;
            Ok(Checked {
                leaf,
                digest,
                curve: key.curve(),
            })
        })
        .collect()
}

/// The receipt's leaf, once its rig, sequence number and inclusion proof match `header`.
fn included(
    receipt: &Receipt,
    proof: &[Hash32],
    header: &BatchHeader,
) -> Result<Hash32, ReceiptError> {
    if receipt.rig != header.rig {
        return Err(ReceiptError::WrongRig {
            receipt: receipt.rig.to_string(),
            batch: header.rig.to_string(),
        });
    }
    let end = header.first_seq.saturating_add(u64::from(header.count));
    if receipt.seq < header.first_seq || receipt.seq >= end {
        return Err(ReceiptError::OutsideBatch {
            seq: receipt.seq,
            first: header.first_seq,
            end,
        });
    }
    let leaf = receipt.struct_hash();
    if proof.len() > merkle::MAX_PROOF || !merkle::verify(&leaf, proof, &header.root) {
        return Err(ReceiptError::NotIncluded);
    }
    Ok(leaf)
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
