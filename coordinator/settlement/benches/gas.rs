//! Gas of the settlement contracts on revm (Osaka rules), as a table: posting an epoch, an
//! owner's claim (by epoch size), and checking one receipt on chain by curve and batch size;
//! then the cost per receipt of settling a day of 10,000 rigs x 8 cards x 1 unit a minute.
//!
//! `cargo bench -p rigd-settlement --bench gas`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/chain/mod.rs"]
mod chain;

use alloy_primitives::U256;
use alloy_sol_types::SolCall;
use chain::{addr, signed_batch, Chain, RigKey};
use rigd_protocol::{EthAddress, RigId};
use rigd_settlement::{register_rig, Epoch, RigdPayoutToken};

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
    let post = chain.call(chain.network, chain.settlement, epoch.post_call());
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
