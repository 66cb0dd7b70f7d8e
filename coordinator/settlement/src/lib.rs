//! Payouts on chain: typed calls to the settlement contracts (`contracts/`, compiled by the
//! pinned solc-js into `artifacts/`, see `solc/build.mjs`) and the epochs the network posts
//! to them.
//!
//! An [`Epoch`] is what one payout run settles: each owner's amount, as the Merkle root of
//! `keccak256(keccak256(abi.encode(epoch, owner, amount)))` leaves (OpenZeppelin's sorted-pair
//! tree, the one receipts use). The contract holds the root and the total; each owner claims
//! its amount once with [`Epoch::proof`]. Receipts keep their own check on chain:
//! `RigdSettlement.verifyReceipt` takes a receipt, its proof, its batch header and signature
//! as rigd made them ([`receipt`], [`batch`]) and checks them under the key the network wrote
//! into `RigKeyRegistry` ([`register_rig`]).
//!
//! Beside its payouts each epoch commits a [`RigTree`], what the network has paid each rig in
//! all; a rig's owner holding the network's signed credit statement for more opens a dispute
//! ([`open_dispute_call`]), which the network answers with the rig's leaf
//! ([`RigTree::answer_call`]) or pays from its bond.

use alloy_primitives::{Address, Bytes, FixedBytes, U256};
use alloy_sol_types::{sol, SolCall, SolConstructor, SolValue};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rigd_protocol::digest::{keccak256, Hash32};
use rigd_protocol::{merkle, BatchHeader, CreditStatement, EthAddress, PublicKey, Receipt, RigId};
use std::collections::BTreeMap;

sol!(
    /// The test deployments' payout token (ERC-20, 6 decimals, minted by its owner).
    #[sol(all_derives)]
    RigdPayoutToken,
    concat!(env!("CARGO_MANIFEST_DIR"), "/artifacts/RigdPayoutToken.json")
);
sol!(
    /// The rigs' receipt keys and owners, written by the network.
    #[sol(all_derives)]
    RigKeyRegistry,
    concat!(env!("CARGO_MANIFEST_DIR"), "/artifacts/RigKeyRegistry.json")
);
sol!(
    /// Epochs, claims and on-chain receipt checks.
    #[sol(all_derives)]
    RigdSettlement,
    concat!(env!("CARGO_MANIFEST_DIR"), "/artifacts/RigdSettlement.json")
);

/// Why an epoch could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    /// Nothing to pay.
    #[error("an epoch pays at least one owner")]
    Empty,
    /// An owner named twice.
    #[error("owner {0} is named twice")]
    Duplicate(EthAddress),
    /// An amount of zero.
    #[error("owner {0} is paid nothing")]
    Zero(EthAddress),
    /// The amounts overflow a uint256 (they cannot, being u128; kept for the contract's sake).
    #[error("the amounts overflow")]
    Overflow,
}

/// One payout run: epoch `id`, each owner's amount in token units (one micro-credit each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// The epoch's number (the contract takes them in order from 0).
    pub id: u64,
    /// Owners and amounts, sorted by owner.
    pub payouts: Vec<(EthAddress, u128)>,
    leaves: Vec<Hash32>,
}

impl Epoch {
    /// The epoch paying `payouts` (any order; each owner once, no zero amounts).
    pub fn new(id: u64, mut payouts: Vec<(EthAddress, u128)>) -> Result<Self, EpochError> {
        payouts.sort();
        if payouts.is_empty() {
            return Err(EpochError::Empty);
        }
        for pair in payouts.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(EpochError::Duplicate(pair[0].0));
            }
        }
        if let Some((owner, _)) = payouts.iter().find(|(_, a)| *a == 0) {
            return Err(EpochError::Zero(*owner));
        }
        payouts
            .iter()
            .try_fold(0u128, |sum, (_, a)| sum.checked_add(*a))
            .ok_or(EpochError::Overflow)?;
        let leaves = payouts
            .iter()
            .map(|(owner, amount)| payout_leaf(id, *owner, *amount))
            .collect();
        Ok(Self {
            id,
            payouts,
            leaves,
        })
    }

    /// The epoch that pays what each rig of `owed` is owed (micro-credits, as
    /// `Ledger::payable` gives it) to its owner's payout address, summed per owner. Rigs whose
    /// owner has no payout address are left out, and stay owed; the rigs paid are returned
    /// with their amounts, to be recorded with the epoch.
    pub fn for_rigs(
        id: u64,
        owed: &BTreeMap<RigId, u64>,
        payout_address: impl Fn(&RigId) -> Option<EthAddress>,
    ) -> Result<(Self, BTreeMap<RigId, u64>), EpochError> {
        let mut per_owner: BTreeMap<EthAddress, u128> = BTreeMap::new();
        let mut paid = BTreeMap::new();
        for (rig, micros) in owed {
            if let Some(owner) = payout_address(rig) {
                *per_owner.entry(owner).or_default() += u128::from(*micros);
                paid.insert(rig.clone(), *micros);
            }
        }
        Ok((Self::new(id, per_owner.into_iter().collect())?, paid))
    }

    /// The Merkle root the contract holds.
    pub fn root(&self) -> Hash32 {
        merkle::root(&self.leaves)
    }

    /// What the epoch pays in all.
    pub fn total(&self) -> u128 {
        self.payouts.iter().map(|(_, a)| a).sum()
    }

    /// `owner`'s amount and the proof of its leaf, if the epoch pays it.
    pub fn proof(&self, owner: EthAddress) -> Option<(u128, Vec<Hash32>)> {
        let i = self.payouts.iter().position(|(o, _)| *o == owner)?;
        Some((self.payouts[i].1, merkle::proof(&self.leaves, i)?))
    }

    /// The call that posts the epoch with `rigs`, its rigs' paid totals
    /// (`RigdSettlement.postEpoch`).
    pub fn post_call(&self, rigs: &RigTree) -> Vec<u8> {
        RigdSettlement::postEpochCall {
            epoch: self.id,
            payoutRoot: FixedBytes(self.root()),
            rigRoot: FixedBytes(rigs.root()),
            total: U256::from(self.total()),
        }
        .abi_encode()
    }

    /// The call by which `owner` (or anyone for it) claims its amount, if the epoch pays it.
    pub fn claim_call(&self, owner: EthAddress) -> Option<Vec<u8>> {
        let (amount, proof) = self.proof(owner)?;
        Some(
            RigdSettlement::claimCall {
                epoch: self.id,
                owner: Address::from(owner.0),
                amount: U256::from(amount),
                proof: proof.into_iter().map(FixedBytes).collect(),
            }
            .abi_encode(),
        )
    }
}

/// What the network has paid each rig in all through one epoch: the tree whose root the
/// epoch commits beside its payouts, and whose leaves answer disputes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RigTree {
    /// The epoch.
    pub epoch: u64,
    /// Each rig's paid total, micro-credits, sorted by rig.
    pub totals: Vec<(RigId, u64)>,
    leaves: Vec<Hash32>,
}

impl RigTree {
    /// The tree of epoch `epoch` over each rig's paid total through it.
    pub fn new(epoch: u64, totals: &BTreeMap<RigId, u64>) -> Self {
        let totals: Vec<(RigId, u64)> = totals.iter().map(|(r, t)| (r.clone(), *t)).collect();
        let leaves = totals
            .iter()
            .map(|(rig, paid)| rig_leaf(epoch, rig, *paid))
            .collect();
        Self {
            epoch,
            totals,
            leaves,
        }
    }

    /// The root the epoch commits.
    pub fn root(&self) -> Hash32 {
        merkle::root(&self.leaves)
    }

    /// `rig`'s paid total and the proof of its leaf, if the tree holds it.
    pub fn proof(&self, rig: &RigId) -> Option<(u64, Vec<Hash32>)> {
        let i = self.totals.iter().position(|(r, _)| r == rig)?;
        Some((self.totals[i].1, merkle::proof(&self.leaves, i)?))
    }

    /// The call answering dispute `id` with `rig`'s leaf, if the tree holds it.
    pub fn answer_call(&self, id: Hash32, rig: &RigId) -> Option<Vec<u8>> {
        let (paid, proof) = self.proof(rig)?;
        Some(
            RigdSettlement::answerDisputeCall {
                id: FixedBytes(id),
                epoch: self.epoch,
                paidTotal: U256::from(paid),
                proof: proof.into_iter().map(FixedBytes).collect(),
            }
            .abi_encode(),
        )
    }
}

/// `keccak256(keccak256(abi.encode(epoch, keccak256(rig), paidTotal)))`, as
/// `RigdSettlement.rigLeaf`.
pub fn rig_leaf(epoch: u64, rig: &RigId, paid: u64) -> Hash32 {
    let rig = FixedBytes(keccak256(&[rig.as_str().as_bytes()]));
    let inner = keccak256(&[&(epoch, rig, U256::from(paid)).abi_encode()]);
    keccak256(&[&inner])
}

/// The call opening a dispute of `statement` (signed by the network's statement key as
/// `statement_sig`) with the rig's signed batch `header` that holds its last receipt.
pub fn open_dispute_call(
    statement: &CreditStatement,
    statement_sig: &[u8],
    header: &BatchHeader,
    rig_sig: &[u8],
) -> Vec<u8> {
    RigdSettlement::openDisputeCall {
        c: RigdSettlement::Credit {
            rig: statement.rig.to_string(),
            lastSeq: statement.last_seq,
            beforeMs: statement.before_ms,
            creditedTotal: U256::from(statement.credited_total),
        },
        statementSig: Bytes::copy_from_slice(statement_sig),
        b: batch(header),
        rigSig: Bytes::copy_from_slice(rig_sig),
    }
    .abi_encode()
}

/// `keccak256(keccak256(abi.encode(epoch, owner, amount)))`, as `RigdSettlement.payoutLeaf`.
pub fn payout_leaf(epoch: u64, owner: EthAddress, amount: u128) -> Hash32 {
    let inner = keccak256(&[&(epoch, Address::from(owner.0), U256::from(amount)).abi_encode()]);
    keccak256(&[&inner])
}

/// A receipt as the contract takes it.
pub fn receipt(r: &Receipt) -> RigdSettlement::Receipt {
    RigdSettlement::Receipt {
        rig: r.rig.to_string(),
        seq: r.seq,
        card: r.card.to_string(),
        job: r.job.to_string(),
        unit: r.unit,
        attempt: r.attempt,
        work: r.work,
        inputDigest: FixedBytes(r.input_digest),
        outputDigest: FixedBytes(r.output_digest),
        startedMs: r.started_ms,
        finishedMs: r.finished_ms,
        governorLevel: r.governor_level,
    }
}

/// A batch header as the contract takes it (the domain is the contract's own).
pub fn batch(h: &BatchHeader) -> RigdSettlement::Batch {
    RigdSettlement::Batch {
        rig: h.rig.to_string(),
        firstSeq: h.first_seq,
        count: h.count,
        root: FixedBytes(h.root),
    }
}

/// The call `RigdSettlement.verifyReceipt(receipt, proof, batch, signature)`.
pub fn verify_receipt_call(
    r: &Receipt,
    proof: &[Hash32],
    header: &BatchHeader,
    signature: &[u8],
) -> Vec<u8> {
    RigdSettlement::verifyReceiptCall {
        r: receipt(r),
        proof: proof.iter().copied().map(FixedBytes).collect(),
        b: batch(header),
        signature: Bytes::copy_from_slice(signature),
    }
    .abi_encode()
}

/// Why a rig's key cannot be written into the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a point of its curve.
    #[error("the rig's {0} key is not a valid point")]
    BadKey(&'static str),
}

/// The registry call that records `rig`'s receipt key and the owner it is paid for.
pub fn register_rig(rig: &RigId, key: &PublicKey, owner: EthAddress) -> Result<Vec<u8>, KeyError> {
    let owner = Address::from(owner.0);
    match key {
        PublicKey::Secp256k1(_) => {
            let signer = key.eth_address().ok_or(KeyError::BadKey("secp256k1"))?;
            Ok(RigKeyRegistry::setSecp256k1Call {
                rig: rig.to_string(),
                signer: Address::from(signer),
                owner,
            }
            .abi_encode())
        }
        PublicKey::P256(sec1) => {
            let point = p256::PublicKey::from_sec1_bytes(sec1)
                .map_err(|_| KeyError::BadKey("P-256"))?
                .to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err(KeyError::BadKey("P-256"));
            };
            Ok(RigKeyRegistry::setP256Call {
                rig: rig.to_string(),
                x: FixedBytes::from_slice(x),
                y: FixedBytes::from_slice(y),
                owner,
            }
            .abi_encode())
        }
    }
}

/// The terms a deployment holds its network to in disputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisputeTerms {
    /// The address of the key the network signs credit statements with.
    pub statement_signer: EthAddress,
    /// Seconds after a statement's `before_ms` before it can be disputed.
    pub maturity_s: u64,
    /// Seconds the network has to answer a dispute.
    pub answer_window_s: u64,
}

/// Creation code of `RigdSettlement` for `token`, `registry` and `terms`.
pub fn settlement_creation(
    token: EthAddress,
    registry: EthAddress,
    terms: DisputeTerms,
) -> Vec<u8> {
    let mut code = RigdSettlement::BYTECODE.to_vec();
    code.extend(
        RigdSettlement::constructorCall {
            token_: Address::from(token.0),
            registry_: Address::from(registry.0),
            statementSigner_: Address::from(terms.statement_signer.0),
            maturity_: terms.maturity_s,
            answerWindow_: terms.answer_window_s,
        }
        .abi_encode(),
    );
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(n: u8) -> EthAddress {
        EthAddress([n; 20])
    }

    #[test]
    fn an_epoch_proves_each_owner_and_refuses_bad_payout_lists() {
        let e = Epoch::new(3, vec![(owner(9), 5), (owner(1), 7), (owner(4), 11)])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.total(), 23);
        assert_eq!(e.payouts[0].0, owner(1), "sorted by owner");
        for (o, amount) in e.payouts.clone() {
            let (got, proof) = e.proof(o).unwrap_or_else(|| panic!("no proof"));
            assert_eq!(got, amount);
            assert!(merkle::verify(
                &payout_leaf(3, o, amount),
                &proof,
                &e.root()
            ));
            assert!(!merkle::verify(
                &payout_leaf(4, o, amount),
                &proof,
                &e.root()
            ));
            assert!(!merkle::verify(
                &payout_leaf(3, o, amount + 1),
                &proof,
                &e.root()
            ));
        }
        assert_eq!(e.proof(owner(2)), None);
        assert_eq!(Epoch::new(0, vec![]), Err(EpochError::Empty));
        assert_eq!(
            Epoch::new(0, vec![(owner(1), 1), (owner(1), 2)]),
            Err(EpochError::Duplicate(owner(1)))
        );
        assert_eq!(
            Epoch::new(0, vec![(owner(1), 0)]),
            Err(EpochError::Zero(owner(1)))
        );
    }
}
