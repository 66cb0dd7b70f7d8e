//! The settlement contracts on a real EVM (revm), deployed from the committed artifacts:
//! rig receipts checked on chain under the registry's keys in the deployment's domain, an
//! epoch built from the coordinator's ledger of five rigs' work posted for their owners, and
//! every owner paid exactly what the ledger credited it, once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain;

use alloy_primitives::{Address, U256};
use alloy_sol_types::SolCall;
use chain::{
    addr, build_epoch_0, eth, owners, rigs, signed_batch, Chain, RigKey, CHAIN_ID, PRICE, WORK,
};
use rigd_coordinator::ledger::{BatchRecord, Entry, ReceiptState};
use rigd_coordinator::Ledger;
use rigd_protocol::{Domain, EthAddress, RigId};
use rigd_settlement::{Epoch, RigdPayoutToken, RigdSettlement};
use std::collections::BTreeMap;

#[test]
fn receipts_verify_on_chain_only_under_the_rigs_key_in_this_deployment() {
    let mut chain = Chain::deploy(0);
    let rigs = rigs(&mut chain);
    let domain = chain.domain();
    for rig in &rigs {
        let (header, sig, items) = signed_batch(&rig.id, &rig.key, domain, 1, 5, WORK);
        for item in &items {
            assert!(chain.verify(item, &header, &sig).0, "{}", rig.id);
        }
        // Signed for another chain, or for another contract on this chain.
        let elsewhere = [
            Domain::new(1, eth(chain.settlement)),
            Domain::new(CHAIN_ID, EthAddress([0x99; 20])),
        ];
        for other in elsewhere {
            let (h, s, items) = signed_batch(&rig.id, &rig.key, other, 1, 5, WORK);
            assert!(!chain.verify(&items[0], &h, &s).0, "{other}");
        }
        // A receipt changed after signing.
        let mut forged = items[2].clone();
        forged.receipt.work += 1;
        assert!(!chain.verify(&forged, &header, &sig).0);
    }
    // One rig's batch under another rig's key, and an unregistered rig.
    let (h, s, items) = signed_batch(&rigs[0].id, &rigs[1].key, domain, 1, 3, WORK);
    assert!(!chain.verify(&items[0], &h, &s).0);
    let stranger = RigId::new("rig-unknown").unwrap();
    let (h, s, items) = signed_batch(&stranger, &RigKey::file("secp256k1"), domain, 1, 3, WORK);
    assert!(!chain.verify(&items[0], &h, &s).0);
}

#[test]
fn each_owner_claims_exactly_what_the_ledger_credited_it_once() {
    let mut chain = Chain::deploy(1_000_000_000_000);
    let rigs = rigs(&mut chain);
    let domain = chain.domain();
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::create(&dir.path().join("ledger.db"), PRICE).unwrap();
    // Each rig's receipts, checked on chain, recorded in the coordinator's ledger as it
    // credits them (at t = 1000 ms), the last rig's last batch later (still in its audit
    // window at the epoch's cutoff).
    for (i, rig) in rigs.iter().enumerate() {
        let count = 2 + i as u64;
        let (header, sig, items) = signed_batch(&rig.id, &rig.key, domain, 1, count, WORK);
        let mut entries = vec![];
        for item in &items {
            assert!(chain.verify(item, &header, &sig).0);
            entries.push(Entry {
                receipt: &item.receipt,
                state: ReceiptState::Credited,
                reason: None,
                micros: item.receipt.work / 1_000_000 * PRICE,
            });
        }
        let at = if i == rigs.len() - 1 { 5_000 } else { 1_000 };
        let record = BatchRecord {
            entries,
            ..BatchRecord::default()
        };
        ledger.record_batch(&rig.id, &record, at).unwrap();
    }
    let cutoff = 2_000;
    let owed = ledger.payable(cutoff).unwrap();
    assert_eq!(
        owed.len(),
        4,
        "the rig still in its audit window waits: {owed:?}"
    );
    let (epoch, rig_tree) = build_epoch_0(&mut ledger, &rigs, cutoff, &owed);
    assert_eq!(rig_tree.totals.len(), 4);
    assert_eq!(ledger.epoch(0).unwrap().unwrap().owners, epoch.payouts);
    // What each owner is owed, from the ledger itself.
    let mut credited: BTreeMap<EthAddress, u128> = BTreeMap::new();
    for rig in rigs.iter().filter(|r| owed.contains_key(&r.id)) {
        let e = ledger.earnings(&rig.id).unwrap();
        *credited.entry(rig.owner).or_default() += e
            .cards
            .iter()
            .map(|c| u128::from(c.credited_micros))
            .sum::<u128>();
    }
    let total = epoch.total();
    let approve = RigdPayoutToken::approveCall {
        spender: chain.settlement,
        value: U256::from(total),
    }
    .abi_encode();
    assert!(chain.call(chain.network, chain.token, approve).ok);
    let posted = chain.call(chain.network, chain.settlement, epoch.post_call(&rig_tree));
    assert!(
        posted.ok,
        "post reverted: 0x{}",
        hex::encode(&posted.output)
    );
    assert_eq!(chain.balance(chain.settlement), total);
    ledger.mark_posted(0, "revm").unwrap();
    assert_eq!(ledger.unposted_epoch().unwrap(), None);
    // The same epoch again is out of order: nothing is paid in twice.
    let again = chain.call(chain.network, chain.settlement, epoch.post_call(&rig_tree));
    assert!(matches!(
        again.settlement_error(),
        RigdSettlement::RigdSettlementErrors::EpochOutOfOrder(_)
    ));

    let [a, b, c] = owners();
    // A claims with B's amount and proof, then with B's proof as B's amount.
    let (b_amount, b_proof) = epoch.proof(b).unwrap();
    let theft = RigdSettlement::claimCall {
        epoch: 0,
        owner: addr(a),
        amount: U256::from(b_amount),
        proof: b_proof
            .iter()
            .copied()
            .map(alloy_primitives::FixedBytes)
            .collect(),
    }
    .abi_encode();
    assert!(matches!(
        chain
            .call(addr(a), chain.settlement, theft)
            .settlement_error(),
        RigdSettlement::RigdSettlementErrors::NotInEpoch(_)
    ));
    assert_eq!(
        epoch.claim_call(c),
        None,
        "C's only rig is still in its audit window"
    );
    for owner in [a, b] {
        let claim = epoch.claim_call(owner).unwrap();
        // Anyone may send the claim; it pays the owner.
        let out = chain.call(Address::repeat_byte(0x77), chain.settlement, claim.clone());
        assert!(out.ok, "claim of {owner}");
        assert_eq!(chain.balance(addr(owner)), credited[&owner], "{owner}");
        assert!(matches!(
            chain
                .call(addr(owner), chain.settlement, claim)
                .settlement_error(),
            RigdSettlement::RigdSettlementErrors::AlreadyClaimed(_)
        ));
    }
    assert_eq!(chain.balance(chain.settlement), 0, "every unit paid out");
    // An epoch that was never posted pays nothing.
    let next = Epoch::new(1, vec![(a, 5)]).unwrap();
    assert!(matches!(
        chain
            .call(addr(a), chain.settlement, next.claim_call(a).unwrap())
            .settlement_error(),
        RigdSettlement::RigdSettlementErrors::NoSuchEpoch(_)
    ));
}
