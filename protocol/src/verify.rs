//! Checking one receipt without trusting the rig: the receipt, its inclusion proof, the
//! signed batch header, the signature and the rig's public key are all a verifier needs.

use crate::crypto::{PublicKey, Signature, VerifyError};
use crate::digest::Hash32;
use crate::merkle;
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

/// Checks that `receipt` is in the batch `header` (by `proof`), and that `signature` over the
/// header's EIP-712 digest was made by `key`.
pub fn verify_receipt(
    receipt: &Receipt,
    proof: &[Hash32],
    header: &BatchHeader,
    signature: &Signature,
    key: &PublicKey,
) -> Result<Checked, ReceiptError> {
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
    if !merkle::verify(&leaf, proof, &header.root) {
        return Err(ReceiptError::NotIncluded);
    }
    let digest = header.signing_digest();
    key.verify(&digest, signature)?;
    Ok(Checked {
        leaf,
        digest,
        curve: key.curve(),
    })
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
