//! Disputes on a real EVM (revm): an epoch that leaves out credit the coordinator's ledger
//! recorded is proven short on chain with the network's signed credit statement and the rig's
//! hardware-signed batch, and the owner is paid the difference from the bond, once; forged
//! batches, batches under another rig's key, statements the network did not sign and
//! replayed disputes are refused, and a rig paid in full cannot dispute at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain;

use alloy_primitives::{FixedBytes, U256};
use alloy_sol_types::SolCall;
use chain::{
    addr, build_epoch_0, owners, rigs, signed_batch, Chain, Rig, ANSWER_WINDOW_S, MATURITY_S,
    PRICE, WORK,
};
use rigd_coordinator::ledger::{BatchRecord, Entry, ReceiptState};
use rigd_coordinator::statement::{SignedStatement, StatementKey};
use rigd_coordinator::Ledger;
use rigd_protocol::{BatchHeader, EthAddress, ReceiptItem, RigId, Signature};
use rigd_settlement::{open_dispute_call, RigdPayoutToken, RigdSettlement};
use std::collections::BTreeMap;

use RigdSettlement::RigdSettlementErrors as E;

/// When the ledger credited every batch (Unix ms) and the epoch's cutoff.
const CREDITED_MS: u64 = 1_000_000;
const CUTOFF_MS: u64 = 2_000_000;

/// A rig's batches as it signed them: receipts 1..=3, then 4..=5.
struct Signed {
    first: (BatchHeader, Signature, Vec<ReceiptItem>),
    second: (BatchHeader, Signature, Vec<ReceiptItem>),
}

/// Records `batch` as credited in `ledger` and returns its credit.
fn credit(ledger: &mut Ledger, rig: &RigId, items: &[ReceiptItem]) -> u64 {
    let entries: Vec<Entry> = items
        .iter()
        .map(|item| Entry {
            receipt: &item.receipt,
            state: ReceiptState::Credited,
            reason: None,
            micros: item.receipt.work / 1_000_000 * PRICE,
        })
        .collect();
    let micros = entries.iter().map(|e| e.micros).sum();
    let record = BatchRecord {
        entries,
        ..BatchRecord::default()
    };
    ledger.record_batch(rig, &record, CREDITED_MS).unwrap();
    micros
}

fn open(
    chain: &mut Chain,
    s: &SignedStatement,
    batch: &(BatchHeader, Signature),
) -> chain::Outcome {
    let call = open_dispute_call(&s.statement, &s.signature, &batch.0, &batch.1 .0);
    chain.call(addr(EthAddress([0x42; 20])), chain.settlement, call)
}

fn dispute_id(chain: &Chain, s: &SignedStatement) -> [u8; 32] {
    s.statement.signing_digest(&chain.domain())
}

fn settle(chain: &mut Chain, id: [u8; 32]) -> chain::Outcome {
    let call = RigdSettlement::settleDisputeCall { id: FixedBytes(id) }.abi_encode();
    chain.call(addr(EthAddress([0x42; 20])), chain.settlement, call)
}

fn state(chain: &mut Chain, id: [u8; 32]) -> u8 {
    let out = chain.call(
        chain.network,
        chain.settlement,
        RigdSettlement::disputesCall(FixedBytes(id)).abi_encode(),
    );
    RigdSettlement::disputesCall::abi_decode_returns(&out.output)
        .unwrap()
        .state
}

#[test]
fn credit_left_out_of_an_epoch_is_proven_with_the_rigs_signature_and_paid_once() {
    let mut chain = Chain::deploy(1_000_000_000_000);
    chain.set_time(3_000);
    let rigs: Vec<Rig> = rigs(&mut chain);
    let domain = chain.domain();
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::create(&dir.path().join("ledger.db"), PRICE).unwrap();
    let mut batches = BTreeMap::new();
    for rig in &rigs {
        let signed = Signed {
            first: signed_batch(&rig.id, &rig.key, domain, 1, 3, WORK),
            second: signed_batch(&rig.id, &rig.key, domain, 4, 2, WORK),
        };
        credit(&mut ledger, &rig.id, &signed.first.2);
        credit(&mut ledger, &rig.id, &signed.second.2);
        batches.insert(rig.id.clone(), signed);
    }
    // The network builds epoch 0 from its ledger but leaves out rig 0's second batch (and
    // says so in its rig tree: rig 0 paid only its first batch).
    let short = &rigs[0];
    let left_out: u64 = 2 * (WORK / 1_000_000 * PRICE);
    let mut owed = ledger.payable(CUTOFF_MS).unwrap();
    assert_eq!(owed.len(), 5);
    let full = owed[&short.id];
    *owed.get_mut(&short.id).unwrap() -= left_out;
    let (epoch, tree) = build_epoch_0(&mut ledger, &rigs, CUTOFF_MS, &owed);
    let bond = 10 * left_out;
    let approve = RigdPayoutToken::approveCall {
        spender: chain.settlement,
        value: U256::from(epoch.total() + u128::from(bond)),
    }
    .abi_encode();
    assert!(chain.call(chain.network, chain.token, approve).ok);
    assert!(
        chain
            .call(chain.network, chain.settlement, epoch.post_call(&tree))
            .ok
    );
    let fund = RigdSettlement::fundBondCall {
        amount: U256::from(bond),
    }
    .abi_encode();
    assert!(chain.call(chain.network, chain.settlement, fund).ok);

    // The coordinator's statement of what it credited rig 0 before the epoch's cutoff.
    let statement = chain
        .statements
        .statement(&ledger, &short.id, CUTOFF_MS, &domain)
        .unwrap()
        .unwrap();
    assert_eq!(statement.statement.credited_total, full);
    assert_eq!(statement.statement.last_seq, 5);
    let b = &batches[&short.id];
    let second = (b.second.0.clone(), b.second.1.clone());

    // Too early: the network still has time to post an epoch that pays it.
    assert!(matches!(
        open(&mut chain, &statement, &second).settlement_error(),
        E::NotDueYet(_)
    ));
    chain.set_time(CUTOFF_MS / 1000 + MATURITY_S);

    // A forged batch (its root changed), the rig's batch signed by another rig's key, the
    // rig's batch that does not hold the statement's last receipt, and another rig's
    // genuine batch: none is the rig's work.
    let mut forged = second.clone();
    forged.0.root[0] ^= 1;
    let other_key = signed_batch(&short.id, &rigs[1].key, domain, 4, 2, WORK);
    let first = (b.first.0.clone(), b.first.1.clone());
    let theirs = &batches[&rigs[1].id].second;
    for batch in [
        forged,
        (other_key.0, other_key.1),
        first,
        (theirs.0.clone(), theirs.1.clone()),
    ] {
        assert!(matches!(
            open(&mut chain, &statement, &batch).settlement_error(),
            E::NotTheRigsWork(_)
        ));
    }
    // A statement for more than the network signed, and one signed by another key.
    let mut inflated = statement.clone();
    inflated.statement.credited_total += 1;
    let stranger_file = dir.path().join("stranger-key");
    std::fs::write(&stranger_file, format!("0x{}", "77".repeat(32))).unwrap();
    let stranger = StatementKey::open(&stranger_file).unwrap();
    let not_networks = stranger.sign(statement.statement.clone(), &domain).unwrap();
    for s in [&inflated, &not_networks] {
        assert!(matches!(
            open(&mut chain, s, &second).settlement_error(),
            E::NotTheNetworksStatement(_)
        ));
    }

    // The real dispute opens, once.
    let id = dispute_id(&chain, &statement);
    let opened = open(&mut chain, &statement, &second);
    assert!(opened.ok, "0x{}", hex::encode(&opened.output));
    assert!(matches!(
        open(&mut chain, &statement, &second).settlement_error(),
        E::AlreadyDisputed(_)
    ));
    // The network answers with the rig's leaf; it shows less than the statement. A made-up
    // leaf paying everything is not in the epoch.
    let answer = tree.answer_call(id, &short.id).unwrap();
    assert!(chain.call(chain.network, chain.settlement, answer).ok);
    let made_up = RigdSettlement::answerDisputeCall {
        id: FixedBytes(id),
        epoch: 0,
        paidTotal: U256::from(full),
        proof: tree
            .proof(&short.id)
            .unwrap()
            .1
            .into_iter()
            .map(FixedBytes)
            .collect(),
    }
    .abi_encode();
    assert!(matches!(
        chain
            .call(chain.network, chain.settlement, made_up)
            .settlement_error(),
        E::NotInEpoch(_)
    ));
    assert!(matches!(
        settle(&mut chain, id).settlement_error(),
        E::NotDueYet(_)
    ));
    chain.set_time(CUTOFF_MS / 1000 + MATURITY_S + ANSWER_WINDOW_S + 1);
    // Late answers change nothing.
    let late = tree.answer_call(id, &short.id).unwrap();
    assert!(matches!(
        chain
            .call(chain.network, chain.settlement, late)
            .settlement_error(),
        E::AnswerTooLate(_)
    ));

    // Settled: the owner is paid what the epoch left out, from the bond, once.
    let owner = short.owner;
    let before = chain.balance(addr(owner));
    assert!(settle(&mut chain, id).ok);
    assert_eq!(chain.balance(addr(owner)) - before, u128::from(left_out));
    assert_eq!(state(&mut chain, id), 3, "paid");
    assert!(matches!(
        settle(&mut chain, id).settlement_error(),
        E::NotOpen(_)
    ));

    // A later statement of the same credit is a new dispute, but what the dispute paid
    // counts: the network's answer refuses it and nothing more is paid.
    let again = chain
        .statements
        .statement(&ledger, &short.id, CUTOFF_MS + 1, &domain)
        .unwrap()
        .unwrap();
    let again_id = dispute_id(&chain, &again);
    assert!(open(&mut chain, &again, &second).ok);
    let answer = tree.answer_call(again_id, &short.id).unwrap();
    assert!(chain.call(chain.network, chain.settlement, answer).ok);
    assert_eq!(state(&mut chain, again_id), 2, "refused");
    assert_eq!(chain.balance(addr(owner)) - before, u128::from(left_out));

    // A rig the epoch paid in full (its key in a TPM): its dispute is refused by the answer.
    let whole = &rigs[3];
    let s = chain
        .statements
        .statement(&ledger, &whole.id, CUTOFF_MS, &domain)
        .unwrap()
        .unwrap();
    let theirs = &batches[&whole.id].second;
    let whole_id = dispute_id(&chain, &s);
    assert!(open(&mut chain, &s, &(theirs.0.clone(), theirs.1.clone())).ok);
    let answer = tree.answer_call(whole_id, &whole.id).unwrap();
    assert!(chain.call(chain.network, chain.settlement, answer).ok);
    assert_eq!(state(&mut chain, whole_id), 2, "refused");
    assert!(matches!(
        settle(&mut chain, whole_id).settlement_error(),
        E::NotOpen(_)
    ));

    // Every owner claims the epoch and ends holding exactly what the ledger credited its
    // rigs; the bond lost only what the epoch left out.
    for o in owners() {
        let claim = epoch.claim_call(o).unwrap();
        assert!(chain.call(addr(o), chain.settlement, claim).ok);
        let credited: u64 = rigs
            .iter()
            .filter(|r| r.owner == o)
            .map(|r| {
                ledger
                    .credited_before(&r.id, CUTOFF_MS)
                    .unwrap()
                    .unwrap()
                    .credited_total
            })
            .sum();
        assert_eq!(chain.balance(addr(o)), u128::from(credited), "{o}");
    }
    assert_eq!(
        chain.balance(chain.settlement),
        u128::from(bond - left_out),
        "the epoch paid out, the bond less what was made good"
    );
}
