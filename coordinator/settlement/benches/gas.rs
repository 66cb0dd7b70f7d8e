//! Gas of the settlement contracts on revm (Osaka rules), as a table: posting an epoch, an
//! owner's claim (by epoch size), checking one receipt on chain by curve and batch size, and
//! a dispute's three steps (open, answer, settle) by the rig's curve; then the cost per
//! receipt of settling a day of 10,000 rigs x 8 cards x 1 unit a minute.
//!
//! `cargo bench -p rigd-settlement --bench gas`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/chain/mod.rs"]
mod chain;

use alloy_primitives::FixedBytes;
use alloy_primitives::U256;
use alloy_sol_types::SolCall;
use chain::{addr, signed_batch, Chain, RigKey, ANSWER_WINDOW_S, MATURITY_S};
use rigd_protocol::{CreditStatement, EthAddress, RigId};
use rigd_settlement::{
    open_dispute_call, register_rig, Epoch, RigTree, RigdPayoutToken, RigdSettlement,
};
use std::collections::BTreeMap;

fn owner(i: u32) -> EthAddress {
    let mut a = [0x10u8; 20];
    a[16..].copy_from_slice(&i.to_be_bytes());
    EthAddress(a)
}

/// Gas of posting an epoch of `owners` and of the median owner's claim.
fn epoch_gas(owners: u32) -> (u64, u64) {
    let mut chain = Chain::deploy(u128::from(u64::MAX));
    let epoch = Epoch::new(0, (0..owners).map(|i| (owner(i), 1_000_000)).collect()).unwrap();
    let approve = RigdPayoutToken::approveCall {
        spender: chain.settlement,
        value: U256::MAX,
    }
    .abi_encode();
    assert!(chain.call(chain.network, chain.token, approve).ok);
    let paid: BTreeMap<RigId, u64> = (0..owners)
        .map(|i| (RigId::new(format!("rig-{i}")).unwrap(), 1_000_000))
        .collect();
    let rigs = RigTree::new(0, &paid);
    let post = chain.call(chain.network, chain.settlement, epoch.post_call(&rigs));
    assert!(post.ok);
    let who = owner(owners / 2);
    let claim = chain.call(addr(who), chain.settlement, epoch.claim_call(who).unwrap());
    assert!(claim.ok);
    (post.gas, claim.gas)
}

/// Gas of `verifyReceipt` for one receipt of a batch of `count`.
fn receipt_gas(key: RigKey, count: u64) -> u64 {
    let mut chain = Chain::deploy(0);
    let rig = RigId::new("rig-gas").unwrap();
    let call = register_rig(&rig, &key.public(), owner(0)).unwrap();
    assert!(chain.call(chain.network, chain.registry, call).ok);
    let (header, sig, items) = signed_batch(&rig, &key, chain.domain(), 1, count, 1);
    let (ok, gas) = chain.verify(&items[0], &header, &sig);
    assert!(ok);
    gas
}

/// Gas of a dispute's steps for a rig whose key is `key`: opening it (both signatures
/// checked), the network's answer (a rig leaf showing part of the statement paid) and its
/// settlement from the bond.
fn dispute_gas(key: RigKey) -> (u64, u64, u64) {
    let mut chain = Chain::deploy(u128::from(u64::MAX));
    let rig = RigId::new("rig-gas").unwrap();
    let call = register_rig(&rig, &key.public(), owner(0)).unwrap();
    assert!(chain.call(chain.network, chain.registry, call).ok);
    let (header, sig, _) = signed_batch(&rig, &key, chain.domain(), 1, 2, 1);
    let approve = RigdPayoutToken::approveCall {
        spender: chain.settlement,
        value: U256::MAX,
    }
    .abi_encode();
    assert!(chain.call(chain.network, chain.token, approve).ok);
    let epoch = Epoch::new(0, vec![(owner(0), 40)]).unwrap();
    let rigs = RigTree::new(0, &BTreeMap::from([(rig.clone(), 40)]));
    assert!(
        chain
            .call(chain.network, chain.settlement, epoch.post_call(&rigs))
            .ok
    );
    let fund = RigdSettlement::fundBondCall {
        amount: U256::from(1_000),
    }
    .abi_encode();
    assert!(chain.call(chain.network, chain.settlement, fund).ok);
    let statement = CreditStatement {
        rig: rig.clone(),
        last_seq: 2,
        before_ms: 1_000,
        credited_total: 100,
    };
    let signed = chain.statements.sign(statement, &chain.domain()).unwrap();
    let id = signed.statement.signing_digest(&chain.domain());
    chain.set_time(1 + MATURITY_S);
    let open = open_dispute_call(&signed.statement, &signed.signature, &header, &sig.0);
    let open = chain.call(addr(owner(0)), chain.settlement, open);
    assert!(open.ok);
    let answer = rigs.answer_call(id, &rig).unwrap();
    let answer = chain.call(chain.network, chain.settlement, answer);
    assert!(answer.ok);
    chain.set_time(2 + MATURITY_S + ANSWER_WINDOW_S);
    let settle = RigdSettlement::settleDisputeCall { id: FixedBytes(id) }.abi_encode();
    let settle = chain.call(addr(owner(0)), chain.settlement, settle);
    assert!(settle.ok);
    (open.gas, answer.gas, settle.gas)
}

fn main() {
    println!("| what | gas |");
    println!("|---|---|");
    let mut per_owner = vec![];
    for owners in [3u32, 100, 1000] {
        let (post, claim) = epoch_gas(owners);
        println!("| post an epoch of {owners} owners | {post} |");
        println!("| one owner's claim, epoch of {owners} owners | {claim} |");
        per_owner.push((owners, post, claim));
    }
    let mut p256_one = 0;
    for (curve, name) in [("secp256k1", "secp256k1"), ("P-256", "p256")] {
        for count in [1u64, 64] {
            let gas = receipt_gas(RigKey::file(name), count);
            println!("| verifyReceipt, {curve}, batch of {count} | {gas} |");
            if curve == "P-256" && count == 1 {
                p256_one = gas;
            }
        }
    }
    for (curve, name) in [("secp256k1", "secp256k1"), ("P-256", "p256")] {
        let (open, answer, settle) = dispute_gas(RigKey::file(name));
        println!("| open a dispute, rig key {curve} | {open} |");
        println!("| answer a dispute (rig leaf, partly paid), rig key {curve} | {answer} |");
        println!("| settle a dispute from the bond, rig key {curve} | {settle} |");
    }
    // A day of 10,000 rigs x 8 cards x 1 unit a minute, settled in one epoch; owners as
    // many as the largest epoch measured (claims are per owner, not per receipt).
    let receipts_per_day: u64 = 10_000 * 8 * 60 * 24;
    let (owners, post, claim) = per_owner[per_owner.len() - 1];
    let epoch_day = post + u64::from(owners) * claim;
    println!(
        "| a day of 10,000 rigs x 8 cards x 1 unit/min ({receipts_per_day} receipts), one epoch of {owners} owners | {epoch_day} in all, {:.4} per receipt |",
        epoch_day as f64 / receipts_per_day as f64
    );
    println!(
        "| the same day checking each receipt's P-256 signature on chain | {} in all, {p256_one} per receipt |",
        u128::from(p256_one) * u128::from(receipts_per_day)
    );
}
