//! Work receipts, their EIP-712 struct hashes, and the signed batch header.
//!
//! A receipt is a leaf of a Merkle tree (see [`crate::merkle`]); the rig's key signs the
//! EIP-712 digest of the [`BatchHeader`] once per batch, in the [`Domain`] of the deployment
//! that pays for it (the header names it). The typed-data definitions are:
//!
//! ```text
//! EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
//!                                                              name "rigd", version "1"
//! Receipt(string rig,uint64 seq,string card,string job,uint64 unit,uint32 attempt,
//!         uint64 work,bytes32 inputDigest,bytes32 outputDigest,uint64 startedMs,
//!         uint64 finishedMs,uint8 governorLevel)
//! ReceiptBatch(string rig,uint64 firstSeq,uint32 count,bytes32 root)
//! ```
//!
//! A leaf is `hashStruct(Receipt)`; the root is built from the leaves in sequence order.

use crate::address::EthAddress;
use crate::digest::{abi_u64, keccak256, Hash32};
use crate::ids::{GpuUuid, JobId, RigId};
use crate::merkle;
use crate::units::UnitOutput;
use serde::{Deserialize, Serialize};

/// The EIP-712 type string of a receipt.
pub const RECEIPT_TYPE: &str = "Receipt(string rig,uint64 seq,string card,string job,uint64 unit,uint32 attempt,uint64 work,bytes32 inputDigest,bytes32 outputDigest,uint64 startedMs,uint64 finishedMs,uint8 governorLevel)";
/// The EIP-712 type string of a batch header.
pub const BATCH_TYPE: &str = "ReceiptBatch(string rig,uint64 firstSeq,uint32 count,bytes32 root)";
/// The EIP-712 type string of the domain.
pub const DOMAIN_TYPE: &str =
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";
/// The domain's name.
pub const DOMAIN_NAME: &str = "rigd";
/// The domain's version.
pub const DOMAIN_VERSION: &str = "1";

/// The deployment receipts are signed for: the chain and the settlement contract on it. A
/// signature made for one deployment is worth nothing to any other, on any chain. Rigs learn
/// it when they are provisioned; each batch header names the one it was signed in, so batches
/// signed before a move to a new contract keep verifying under theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Domain {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The settlement contract's address.
    pub verifying_contract: [u8; 20],
}

impl Domain {
    /// A local development chain (chain id 31337, as Anvil and Hardhat number theirs) and
    /// the address its first deployment from the well-known development account gets. The
    /// default where nothing else is configured; the coordinator of a real network refuses
    /// batches signed for it.
    pub const LOCAL: Domain = Domain {
        chain_id: 31337,
        verifying_contract: [
            0x5f, 0xbd, 0xb2, 0x31, 0x56, 0x78, 0xaf, 0xec, 0xb3, 0x67, 0xf0, 0x32, 0xd9, 0x3f,
            0x64, 0x2f, 0x64, 0x18, 0x0a, 0xa3,
        ],
    };

    /// The domain of `contract` on chain `chain_id`.
    pub fn new(chain_id: u64, contract: EthAddress) -> Self {
        Self {
            chain_id,
            verifying_contract: contract.0,
        }
    }

    /// The EIP-712 domain separator: `hashStruct(EIP712Domain)`.
    pub fn separator(&self) -> Hash32 {
        let mut contract = [0u8; 32];
        contract[12..].copy_from_slice(&self.verifying_contract);
        keccak256(&[
            &keccak256(&[DOMAIN_TYPE.as_bytes()]),
            &keccak256(&[DOMAIN_NAME.as_bytes()]),
            &keccak256(&[DOMAIN_VERSION.as_bytes()]),
            &abi_u64(self.chain_id),
            &contract,
        ])
    }

    /// The settlement contract.
    pub fn contract(&self) -> EthAddress {
        EthAddress(self.verifying_contract)
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chain {} contract {}", self.chain_id, self.contract())
    }
}

/// A signed statement that a rig's card finished a unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The rig that did the work.
    pub rig: RigId,
    /// Per-rig sequence number, gap-free from 1.
    pub seq: u64,
    /// The card that did the work.
    pub card: GpuUuid,
    /// The job the unit belongs to.
    pub job: JobId,
    /// The unit.
    pub unit: u64,
    /// The assignment attempt the unit came with.
    pub attempt: u32,
    /// Work done, in FLOPs.
    pub work: u64,
    /// SHA-256 of the unit's input.
    pub input_digest: Hash32,
    /// SHA-256 of the unit's output.
    pub output_digest: Hash32,
    /// Unix time the worker started the unit, milliseconds.
    pub started_ms: u64,
    /// Unix time the worker finished the unit, milliseconds.
    pub finished_ms: u64,
    /// Thermal governor level of the card while it ran (0 normal .. 5 quarantined).
    pub governor_level: u8,
}

impl Receipt {
    /// `hashStruct(Receipt)`: the Merkle leaf.
    pub fn struct_hash(&self) -> Hash32 {
        keccak256(&[
            &keccak256(&[RECEIPT_TYPE.as_bytes()]),
            &keccak256(&[self.rig.as_str().as_bytes()]),
            &abi_u64(self.seq),
            &keccak256(&[self.card.as_str().as_bytes()]),
            &keccak256(&[self.job.as_str().as_bytes()]),
            &abi_u64(self.unit),
            &abi_u64(u64::from(self.attempt)),
            &abi_u64(self.work),
            &self.input_digest,
            &self.output_digest,
            &abi_u64(self.started_ms),
            &abi_u64(self.finished_ms),
            &abi_u64(u64::from(self.governor_level)),
        ])
    }
}

/// The header a rig signs once per batch of receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// The rig.
    pub rig: RigId,
    /// Sequence number of the first receipt in the batch.
    pub first_seq: u64,
    /// Receipts in the batch (sequence numbers `first_seq .. first_seq + count`).
    pub count: u32,
    /// Merkle root over the receipts' struct hashes, in sequence order.
    pub root: Hash32,
    /// The deployment the batch is signed for (the EIP-712 domain, not a field of the
    /// `ReceiptBatch` struct).
    pub domain: Domain,
}

impl BatchHeader {
    /// Builds the header over `receipts`, which must be consecutive from `receipts[0].seq`,
    /// for `domain`.
    pub fn over(rig: &RigId, domain: Domain, receipts: &[Receipt]) -> Result<Self, String> {
        let first = receipts
            .first()
            .ok_or("a batch holds at least one receipt")?;
        for (i, r) in receipts.iter().enumerate() {
            let expected = first
                .seq
                .checked_add(i as u64)
                .ok_or("sequence numbers overflow")?;
            if r.seq != expected || &r.rig != rig {
                return Err(format!(
                    "receipt {i} has rig {} seq {}, batch expects rig {rig} seq {expected}",
                    r.rig, r.seq
                ));
            }
        }
        let leaves: Vec<Hash32> = receipts.iter().map(Receipt::struct_hash).collect();
        Ok(Self {
            rig: rig.clone(),
            first_seq: first.seq,
            count: u32::try_from(receipts.len()).map_err(|_| "too many receipts")?,
            root: merkle::root(&leaves),
            domain,
        })
    }

    /// `hashStruct(ReceiptBatch)`.
    pub fn struct_hash(&self) -> Hash32 {
        keccak256(&[
            &keccak256(&[BATCH_TYPE.as_bytes()]),
            &keccak256(&[self.rig.as_str().as_bytes()]),
            &abi_u64(self.first_seq),
            &abi_u64(u64::from(self.count)),
            &self.root,
        ])
    }

    /// The EIP-712 digest the rig's key signs: `keccak256(0x1901 ‖ domainSeparator ‖ hashStruct)`,
    /// with the separator of the header's domain.
    pub fn signing_digest(&self) -> Hash32 {
        keccak256(&[b"\x19\x01", &self.domain.separator(), &self.struct_hash()])
    }
}

/// A receipt with its inclusion proof and the output it vouches for. With the batch's header
/// and signature, `receipt` and `proof` are all anyone needs to check the receipt (see
/// [`crate::verify::verify_receipt`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptItem {
    /// The receipt.
    pub receipt: Receipt,
    /// Its Merkle inclusion proof in the batch: the sibling at each level, bottom up (at most
    /// [`merkle::MAX_PROOF`] hashes).
    pub proof: Vec<Hash32>,
    /// The unit's output; its digest is `receipt.output_digest`.
    pub output: UnitOutput,
}

impl ReceiptItem {
    /// The items of the batch over `receipts` (consecutive, see [`BatchHeader::over`]), each
    /// with its inclusion proof.
    pub fn with_proofs(receipts: Vec<(Receipt, UnitOutput)>) -> Vec<Self> {
        let leaves: Vec<Hash32> = receipts.iter().map(|(r, _)| r.struct_hash()).collect();
        receipts
            .into_iter()
            .zip(merkle::proofs(&leaves))
            .map(|((receipt, output), proof)| Self {
                receipt,
                proof,
                output,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn receipt(seq: u64) -> Receipt {
        Receipt {
            rig: RigId::new("rig-1").unwrap_or_else(|_| unreachable!()),
            seq,
            card: GpuUuid::new("SIM-0").unwrap_or_else(|_| unreachable!()),
            job: JobId::new("job").unwrap_or_else(|_| unreachable!()),
            unit: seq * 10,
            attempt: 0,
            work: 1000,
            input_digest: [1; 32],
            output_digest: [2; 32],
            started_ms: 5,
            finished_ms: 6,
            governor_level: 0,
        }
    }

    #[test]
    fn batch_header_refuses_gaps_and_foreign_receipts() {
        let rig = RigId::new("rig-1").unwrap_or_else(|_| unreachable!());
        assert!(BatchHeader::over(&rig, Domain::LOCAL, &[receipt(1), receipt(2)]).is_ok());
        assert!(BatchHeader::over(&rig, Domain::LOCAL, &[receipt(1), receipt(3)]).is_err());
        assert!(BatchHeader::over(&rig, Domain::LOCAL, &[]).is_err());
        let other = RigId::new("rig-2").unwrap_or_else(|_| unreachable!());
        assert!(BatchHeader::over(&other, Domain::LOCAL, &[receipt(1)]).is_err());
    }

    #[test]
    fn every_receipt_field_changes_the_leaf() {
        let base = receipt(1);
        let mut changed = vec![];
        let mut r = base.clone();
        r.seq = 2;
        changed.push(r);
        let mut r = base.clone();
        r.work += 1;
        changed.push(r);
        let mut r = base.clone();
        r.output_digest[0] ^= 1;
        changed.push(r);
        let mut r = base.clone();
        r.governor_level = 1;
        changed.push(r);
        let mut r = base.clone();
        r.attempt = 1;
        changed.push(r);
        for c in changed {
            assert_ne!(c.struct_hash(), base.struct_hash());
        }
    }

    #[test]
    fn a_signature_is_bound_to_its_chain_and_contract() {
        let rig = RigId::new("rig-1").unwrap_or_else(|_| unreachable!());
        let header = BatchHeader::over(&rig, Domain::LOCAL, &[receipt(1)])
            .unwrap_or_else(|_| unreachable!());
        let mut other_chain = header.clone();
        other_chain.domain.chain_id = 1;
        let mut other_contract = header.clone();
        other_contract.domain.verifying_contract[19] ^= 1;
        for other in [other_chain, other_contract] {
            assert_eq!(other.struct_hash(), header.struct_hash());
            assert_ne!(other.signing_digest(), header.signing_digest());
        }
    }
}
