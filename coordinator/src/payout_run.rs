//! The payout run (`coordinator payouts`): builds an epoch from the ledger (credit past its
//! audit window, per owner's payout address from the provisioner's registry), posts it to the
//! settlement contract over JSON-RPC and marks it paid with the transaction's hash.
//!
//! Cut off at any instant, it neither pays twice nor forgets. Each step is recorded before the
//! next begins: the epoch is `built` in the ledger (its rigs' amounts and owner leaves, one
//! transaction) before anything is signed; the post's hash and the chain's block are recorded
//! before it is sent; the epoch turns `posted` only once the chain holds it. The run after a
//! crash finishes a built epoch first, asking the chain (the contract holds each epoch's root
//! and takes epochs strictly in order, so a second post of the same number reverts): the root
//! is there, so it is marked posted with the transaction that put it there; or it is not, so
//! the post is signed again and sent.
//!
//! Disputes (`docs/payouts.md`): before the epoch it reads the disputes opened and paid since
//! the last run (what a lost one paid counts as paid, so the epoch does not pay it again);
//! after it, it answers every open dispute with the rig's leaf in the latest posted epoch
//! and, given the network's statement key, signs each rig's credit statement as of this run's
//! cutoff and keeps it in the ledger for the owners' dashboard to hand out.

use crate::chain::{Chain, ChainError};
use crate::ledger::{EpochRecord, Ledger, LedgerError, SentPost};
use crate::statement::{StatementError, StatementKey};
use alloy_primitives::{Address, FixedBytes, U256};
use alloy_rpc_types_eth::Filter;
use alloy_sol_types::{SolCall, SolEvent};
use rigd_protocol::{Domain, EthAddress, RigId};
use rigd_settlement::{Epoch, EpochError, RigTree, RigdPayoutToken, RigdSettlement};
use std::path::PathBuf;

/// Where a run stops and waits to be killed (for the crash tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The epoch is built in the ledger, nothing is signed.
    Built,
    /// The post is signed and recorded, not sent.
    Signed,
    /// The node has the post (mined, on a dev chain), the ledger does not know.
    Sent,
}

impl Hold {
    fn name(self) -> &'static str {
        match self {
            Hold::Built => "built",
            Hold::Signed => "signed",
            Hold::Sent => "sent",
        }
    }
}

/// What a run is given.
#[derive(Debug, Clone)]
pub struct PayoutConfig {
    /// The coordinator's ledger (it must exist).
    pub ledger: crate::ledger::Location,
    /// The provisioner's registry (read-only): each rig's owner and payout address.
    pub registry: PathBuf,
    /// The settlement contract.
    pub settlement: Address,
    /// Credit younger than this is not paid yet (the audit window), ms.
    pub audit_ms: u64,
    /// Stop at this point and wait to be killed.
    pub hold: Option<Hold>,
    /// The network's statement key file, if this run signs credit statements.
    pub statement_key: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The epochs posted.
    pub posted: Vec<Posted>,
    /// The disputes answered.
    pub answered: Vec<Answered>,
    /// The statements signed, when the run had the statement key.
    pub statements: Option<usize>,
}

/// A dispute answered with a rig's leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The dispute (its statement's digest).
    pub id: [u8; 32],
    /// The rig.
    pub rig: String,
    /// The epoch whose leaf answered it.
    pub epoch: u64,
    /// Whether the answer refused it (the leaf paid the whole statement).
    pub refused: bool,
}

/// The ledger's meta key of the first block the next run reads dispute logs from.
const DISPUTES_FROM: &str = "disputes_from_block";

/// An epoch a run posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The epoch.
    pub epoch: u64,
    /// The transaction that posted it.
    pub tx: String,
    /// Owners it pays.
    pub owners: usize,
    /// What it pays in all, token units.
    pub total: u128,
    /// Whether this run only finished an epoch an earlier run had built.
    pub recovered: bool,
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum PayoutError {
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The registry failed.
    #[error("registry: {0}")]
    Registry(#[from] rigd_provisioning::registry::RegistryError),
    /// The chain failed.
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    /// The epoch could not be made.
    #[error("epoch: {0}")]
    Epoch(#[from] EpochError),
    /// The chain and the ledger disagree: someone else posts to this contract, or the
    /// ledger is not the one this contract was paid from. Nothing is sent.
    #[error("the chain and the ledger disagree: {0}")]
    Disagree(String),
    /// The account cannot pay the epoch in.
    #[error("the account holds {held} of the token, the epoch pays {needed}")]
    Funds {
        /// What the account holds.
        held: U256,
        /// What the epoch pays.
        needed: U256,
    },
    /// The statement key or a statement.
    #[error("statements: {0}")]
    Statement(#[from] StatementError),
    /// A chain answer did not decode.
    #[error("undecodable answer to {0}")]
    Decode(&'static str),
}

async fn hold_here(config: &PayoutConfig, at: Hold) {
    if config.hold == Some(at) {
        eprintln!("payout run held at {}", at.name());
        std::future::pending::<()>().await;
    }
}

/// Runs view call `call` against `to` and decodes its answer.
async fn view<C: SolCall>(
    chain: &Chain,
    to: Address,
    call: C,
    what: &'static str,
) -> Result<C::Return, PayoutError> {
    let out = chain.call(to, call.abi_encode()).await?;
    C::abi_decode_returns(&out).map_err(|_| PayoutError::Decode(what))
}

/// The settlement contract as the run sees it.
struct Settlement<'a> {
    chain: &'a Chain,
    address: Address,
}

impl Settlement<'_> {
    async fn next_epoch(&self) -> Result<u64, PayoutError> {
        let call = RigdSettlement::nextEpochCall {};
        view(self.chain, self.address, call, "nextEpoch").await
    }

    /// The root the contract holds for `epoch` (zero: none).
    async fn root(&self, epoch: u64) -> Result<[u8; 32], PayoutError> {
        let call = RigdSettlement::epochsCall(epoch);
        let e = view(self.chain, self.address, call, "epochs").await?;
        Ok(e.payoutRoot.0)
    }

    async fn token(&self) -> Result<Address, PayoutError> {
        let call = RigdSettlement::tokenCall {};
        view(self.chain, self.address, call, "token").await
    }

    /// The transaction that posted `epoch`, found in the contract's `EpochPosted` logs from
    /// block `from` on.
    async fn posting_tx(&self, epoch: u64, from: u64) -> Result<Option<String>, PayoutError> {
        let filter = Filter::new()
            .address(self.address)
            .event_signature(RigdSettlement::EpochPosted::SIGNATURE_HASH)
            .topic1(U256::from(epoch))
            .from_block(from);
        let logs = self.chain.logs(&filter).await?;
        Ok(logs
            .iter()
            .find_map(|l| l.transaction_hash)
            .map(|h| h.to_string()))
    }
}

/// Runs once: finishes an epoch an earlier run left built, builds and posts the next if
/// anything is payable, answers the disputes opened since the last run and, given the
/// statement key, signs each rig's statement as of this run's cutoff.
pub async fn run(chain: &Chain, config: &PayoutConfig) -> Result<Report, PayoutError> {
    let mut ledger = Ledger::open_existing_at(&config.ledger)?;
    let settlement = Settlement {
        chain,
        address: config.settlement,
    };
    let cutoff_ms = rigd_client::unix_ms().saturating_sub(config.audit_ms);
    sync_disputes(&ledger, &settlement).await?;
    let posted = post(&mut ledger, &settlement, config, cutoff_ms).await?;
    let answered = answer_disputes(&ledger, &settlement).await?;
    let statements = match &config.statement_key {
        Some(key) => {
            let key = StatementKey::open(key)?;
            let domain = Domain::new(chain.chain_id(), EthAddress(config.settlement.into_array()));
            let signed = ledger
                .all_credited_before(cutoff_ms)?
                .into_iter()
                .map(|s| key.sign(s, &domain))
                .collect::<Result<Vec<_>, _>>()?;
            ledger.record_statements(&signed)?;
            tracing::info!(
                statements = signed.len(),
                cutoff_ms,
                "credit statements signed"
            );
            Some(signed.len())
        }
        None => None,
    };
    Ok(Report {
        posted,
        answered,
        statements,
    })
}

/// Reads the contract's `DisputeOpened` and `DisputePaid` logs since the last run into the
/// ledger: each dispute's rig, and what a lost one paid from the bond (counted as paid from
/// here on, so no epoch pays it again).
async fn sync_disputes(ledger: &Ledger, settlement: &Settlement<'_>) -> Result<(), PayoutError> {
    let from = ledger.meta(DISPUTES_FROM)?.unwrap_or(0);
    let to = settlement.chain.block_number().await?;
    let logs = |signature| {
        let filter = Filter::new()
            .address(settlement.address)
            .event_signature(signature)
            .from_block(from)
            .to_block(to);
        async move { settlement.chain.logs(&filter).await }
    };
    for log in logs(RigdSettlement::DisputeOpened::SIGNATURE_HASH).await? {
        match RigdSettlement::DisputeOpened::decode_log_data(&log.inner.data) {
            Ok(opened) => match RigId::new(opened.rig.clone()) {
                Ok(rig) => ledger.record_dispute(&opened.id.0, &rig)?,
                Err(_) => tracing::warn!(id = %opened.id, "a dispute of no valid rig id"),
            },
            Err(_) => tracing::warn!("a DisputeOpened log that does not decode"),
        }
    }
    for log in logs(RigdSettlement::DisputePaid::SIGNATURE_HASH).await? {
        let Ok(paid) = RigdSettlement::DisputePaid::decode_log_data(&log.inner.data) else {
            tracing::warn!("a DisputePaid log that does not decode");
            continue;
        };
        let micros = u64::try_from(paid.amount).map_err(|_| PayoutError::Decode("DisputePaid"))?;
        if ledger.record_made_good(&paid.id.0, micros)? {
            tracing::warn!(id = %paid.id, micros, "a dispute was lost: paid from the bond");
        } else {
            tracing::warn!(id = %paid.id, "a paid dispute the ledger never saw opened");
        }
    }
    ledger.set_meta(DISPUTES_FROM, to.saturating_add(1))?;
    Ok(())
}

/// Answers each dispute the ledger holds open with the rig's leaf in the latest posted
/// epoch (once per epoch); closes those the contract no longer holds open.
async fn answer_disputes(
    ledger: &Ledger,
    settlement: &Settlement<'_>,
) -> Result<Vec<Answered>, PayoutError> {
    let Some(epoch) = ledger.latest_posted_epoch()? else {
        return Ok(Vec::new());
    };
    let tree = RigTree::new(epoch, &ledger.paid_through(epoch)?);
    let state = |id: [u8; 32]| async move {
        let call = RigdSettlement::disputesCall(FixedBytes(id));
        view(settlement.chain, settlement.address, call, "disputes")
            .await
            .map(|d| d.state)
    };
    let mut answered = Vec::new();
    for d in ledger.open_disputes()? {
        if state(d.id).await? != OPEN {
            ledger.close_dispute(&d.id)?;
            continue;
        }
        if d.answered_epoch == Some(epoch) {
            continue;
        }
        let Some(call) = tree.answer_call(d.id, &d.rig) else {
            tracing::warn!(rig = %d.rig, epoch, "a dispute of a rig no epoch has paid");
            continue;
        };
        match settlement.chain.send(Some(settlement.address), call).await {
            Ok(_) => {}
            Err(ChainError::Reverted(data)) => {
                tracing::warn!(rig = %d.rig, ?data, "the contract refused the answer (too late?)");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        ledger.record_answer(&d.id, epoch)?;
        let refused = state(d.id).await? == REFUSED;
        if refused {
            ledger.close_dispute(&d.id)?;
        }
        tracing::info!(rig = %d.rig, epoch, refused, "dispute answered");
        answered.push(Answered {
            id: d.id,
            rig: d.rig.to_string(),
            epoch,
            refused,
        });
    }
    Ok(answered)
}

/// The contract's dispute states.
const OPEN: u8 = 1;
const REFUSED: u8 = 2;

/// Finishes an epoch an earlier run left built, then builds and posts the next if anything
/// is payable before `cutoff_ms`. Returns the epochs posted.
async fn post(
    ledger: &mut Ledger,
    settlement: &Settlement<'_>,
    config: &PayoutConfig,
    cutoff_ms: u64,
) -> Result<Vec<Posted>, PayoutError> {
    let mut posted = Vec::new();
    if let Some(open) = ledger.unposted_epoch()? {
        tracing::info!(
            epoch = open.epoch,
            "finishing the epoch an earlier run built"
        );
        posted.push(finish(ledger, settlement, config, open, true).await?);
    }
    let next = settlement.next_epoch().await?;
    let ledger_next = match ledger.latest_epoch()? {
        Some(e) => e
            .checked_add(1)
            .ok_or(PayoutError::Decode("epoch number"))?,
        None => 0,
    };
    if next != ledger_next {
        return Err(PayoutError::Disagree(format!(
            "the contract takes epoch {next}, the ledger's next is {ledger_next}"
        )));
    }
    let owed = ledger.payable(cutoff_ms)?;
    let registry = rigd_provisioning::registry::Registry::open_read_only(&config.registry)?;
    let addresses = registry.payout_addresses()?;
    let unaddressed = owed.keys().filter(|r| !addresses.contains_key(*r)).count();
    if unaddressed > 0 {
        tracing::warn!(
            rigs = unaddressed,
            "rigs owed credit have no owner with a payout address in the registry; they stay owed"
        );
    }
    let (epoch, rigs) = match Epoch::for_rigs(next, &owed, |rig| addresses.get(rig).copied()) {
        Ok(built) => built,
        Err(EpochError::Empty) => {
            tracing::info!(cutoff_ms, "nothing is payable");
            return Ok(posted);
        }
        Err(e) => return Err(e.into()),
    };
    ledger.build_epoch(next, cutoff_ms, epoch.root(), &rigs, &epoch.payouts)?;
    tracing::info!(
        epoch = next,
        owners = epoch.payouts.len(),
        rigs = rigs.len(),
        total = %epoch.total(),
        "epoch built"
    );
    hold_here(config, Hold::Built).await;
    let record = ledger
        .epoch(next)?
        .ok_or_else(|| PayoutError::Disagree(format!("epoch {next} vanished from the ledger")))?;
    posted.push(finish(ledger, settlement, config, record, false).await?);
    Ok(posted)
}

/// Brings built epoch `record` onto the chain (or learns that it is there) and marks it
/// posted.
async fn finish(
    ledger: &Ledger,
    settlement: &Settlement<'_>,
    config: &PayoutConfig,
    record: EpochRecord,
    recovered: bool,
) -> Result<Posted, PayoutError> {
    let n = record.epoch;
    let epoch = Epoch::new(n, record.owners.clone())?;
    if epoch.root() != record.root {
        return Err(PayoutError::Ledger(LedgerError::Corrupt(format!(
            "epoch {n}'s owners do not give its root"
        ))));
    }
    let done = |tx: String| Posted {
        epoch: n,
        tx,
        owners: epoch.payouts.len(),
        total: epoch.total(),
        recovered,
    };
    let on_chain = settlement.root(n).await?;
    if on_chain == record.root {
        let tx = landed_tx(settlement, &record).await?;
        ledger.mark_posted(n, &tx)?;
        tracing::info!(epoch = n, %tx, "the chain already held the epoch: marked posted");
        return Ok(done(tx));
    }
    if on_chain != [0; 32] {
        return Err(PayoutError::Disagree(format!(
            "the contract holds another root for epoch {n}"
        )));
    }
    let next = settlement.next_epoch().await?;
    if next != n {
        return Err(PayoutError::Disagree(format!(
            "the contract takes epoch {next}, the ledger holds epoch {n} unposted"
        )));
    }
    let chain = settlement.chain;
    let needed = U256::from(epoch.total());
    let token = settlement.token().await?;
    let me = chain.address();
    let held = view(
        chain,
        token,
        RigdPayoutToken::balanceOfCall { account: me },
        "balanceOf",
    )
    .await?;
    if held < needed {
        return Err(PayoutError::Funds { held, needed });
    }
    let spend = RigdPayoutToken::allowanceCall {
        owner: me,
        spender: settlement.address,
    };
    let allowed = view(chain, token, spend, "allowance").await?;
    if allowed < needed {
        let approve = RigdPayoutToken::approveCall {
            spender: settlement.address,
            value: needed,
        };
        chain.send(Some(token), approve.abi_encode()).await?;
    }
    let post = RigdSettlement::postEpochCall {
        epoch: n,
        payoutRoot: FixedBytes(record.root),
        rigRoot: FixedBytes(RigTree::new(n, &ledger.paid_through(n)?).root()),
        total: needed,
    };
    let block = chain.block_number().await?;
    let signed = chain
        .sign(Some(settlement.address), post.abi_encode())
        .await?;
    let tx = signed.hash.to_string();
    ledger.record_sent(
        n,
        &SentPost {
            tx: tx.clone(),
            block,
        },
    )?;
    hold_here(config, Hold::Signed).await;
    chain.submit(&signed).await?;
    hold_here(config, Hold::Sent).await;
    let mined = chain.wait(signed.hash).await?;
    if mined.success {
        ledger.mark_posted(n, &tx)?;
        tracing::info!(epoch = n, %tx, block = mined.block, "epoch posted");
        return Ok(done(tx));
    }
    // Reverted: another post of this epoch (an earlier run's, still pending then) may have
    // landed first.
    if settlement.root(n).await? == record.root {
        let tx = landed_tx(settlement, &record).await?;
        ledger.mark_posted(n, &tx)?;
        return Ok(done(tx));
    }
    Err(PayoutError::Chain(ChainError::Reverted(None)))
}

/// The transaction that put `record` on the chain: its recorded post when that one is mined
/// and succeeded, otherwise the one the contract's logs name.
async fn landed_tx(
    settlement: &Settlement<'_>,
    record: &EpochRecord,
) -> Result<String, PayoutError> {
    if let Some(sent) = &record.sent {
        let hash = sent
            .tx
            .parse()
            .map_err(|_| LedgerError::Corrupt(format!("epoch {} sent tx", record.epoch)))?;
        if settlement
            .chain
            .mined(hash)
            .await?
            .is_some_and(|m| m.success)
        {
            return Ok(sent.tx.clone());
        }
    }
    let from = record.sent.as_ref().map_or(0, |s| s.block);
    settlement
        .posting_tx(record.epoch, from)
        .await?
        .ok_or_else(|| {
            PayoutError::Disagree(format!(
                "the contract holds epoch {} but no log says which transaction posted it",
                record.epoch
            ))
        })
}

/// The owner amounts of posted `epoch` in the ledger, as the epoch the contract holds
/// (for claims and proofs).
pub fn epoch_of(ledger: &Ledger, epoch: u64) -> Result<Option<Epoch>, PayoutError> {
    match ledger.epoch(epoch)? {
        None => Ok(None),
        Some(record) => Ok(Some(Epoch::new(epoch, record.owners)?)),
    }
}
