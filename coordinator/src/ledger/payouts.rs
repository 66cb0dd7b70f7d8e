//! Payout epochs: what each rig is owed from credit past its audit window, and what each
//! epoch paid it, so that a payout run cut off at any instant neither pays twice nor forgets.
//!
//! Credit becomes payable once it is older than the audit window (a caught wrong result
//! forfeits only credit younger than that, so payable credit is final). An epoch is built in
//! one transaction (`built`: its number, cutoff, root, total and each rig's amount); it turns
//! `posted` with the chain's transaction reference once the settlement contract holds it. While
//! an epoch is `built` no other is: the run that follows a crash finishes it first, asking the
//! chain whether it landed (the contract takes epochs in order, so a second post of the same
//! number cannot pay twice). Before a post is sent, its transaction's hash and the block the
//! chain was at are recorded (`sent_tx`, `sent_block`), so the run after a crash knows where
//! to look for it.

use super::db::p;
use super::{Ledger, LedgerError};
use rigd_protocol::{EthAddress, RigId};
use std::collections::BTreeMap;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS epochs(
    epoch INTEGER PRIMARY KEY, cutoff_ms INTEGER NOT NULL, root BLOB NOT NULL,
    total INTEGER NOT NULL, state TEXT NOT NULL CHECK(state IN ('built', 'posted')),
    tx TEXT, sent_tx TEXT, sent_block INTEGER);
CREATE TABLE IF NOT EXISTS payouts(
    epoch INTEGER NOT NULL, rig TEXT NOT NULL, micros INTEGER NOT NULL,
    PRIMARY KEY(epoch, rig));
CREATE TABLE IF NOT EXISTS epoch_owners(
    epoch INTEGER NOT NULL, owner TEXT NOT NULL, amount INTEGER NOT NULL,
    PRIMARY KEY(epoch, owner));
";

/// Adds the columns a SQLite ledger written before posts were recorded lacks.
pub(super) fn migrate(conn: &rusqlite::Connection) -> Result<(), rusqlite::Error> {
    for (column, kind) in [("sent_tx", "TEXT"), ("sent_block", "INTEGER")] {
        let has = conn
            .prepare("SELECT 1 FROM pragma_table_info('epochs') WHERE name = ?1")?
            .exists([column])?;
        if !has {
            conn.execute(
                &format!("ALTER TABLE epochs ADD COLUMN {column} {kind}"),
                [],
            )?;
        }
    }
    Ok(())
}

/// A post of an epoch, sent or about to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentPost {
    /// The transaction's hash, 0x-hex.
    pub tx: String,
    /// The chain's latest block before it was sent.
    pub block: u64,
}

/// An epoch as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    /// Its number.
    pub epoch: u64,
    /// Credit recorded before this (Unix ms) is what it pays.
    pub cutoff_ms: u64,
    /// The Merkle root of its owner payouts.
    pub root: [u8; 32],
    /// What it pays in all, micro-credits.
    pub total: u64,
    /// Each rig's amount, micro-credits.
    pub rigs: BTreeMap<RigId, u64>,
    /// Each owner's payout address and amount, sorted by address: the epoch's leaves.
    pub owners: Vec<(EthAddress, u128)>,
    /// The last post sent for it, if any.
    pub sent: Option<SentPost>,
    /// The chain's transaction reference, once posted.
    pub posted: Option<String>,
}

fn rig(name: String) -> Result<RigId, LedgerError> {
    RigId::new(name).map_err(|e| LedgerError::Corrupt(e.to_string()))
}

impl Ledger {
    /// Whether the ledger has table `name` (a SQLite file opened read-only may predate
    /// payouts; a PostgreSQL ledger always has the whole schema).
    pub(super) fn has_table(&self, name: &str) -> Result<bool, LedgerError> {
        if self.db.is_postgres() {
            return Ok(true);
        }
        Ok(self
            .db
            .query_opt(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                p![name],
            )?
            .is_some())
    }

    /// What each rig is owed now: its credit recorded before `cutoff_ms`, less what epochs
    /// already pay it (built or posted) and what lost disputes paid it. Rigs owed nothing are
    /// left out.
    pub fn payable(&self, cutoff_ms: u64) -> Result<BTreeMap<RigId, u64>, LedgerError> {
        let rows = self.db.query(
            "SELECT r.rig, COALESCE(CAST(SUM(r.micros) AS BIGINT), 0),
                    (SELECT COALESCE(CAST(SUM(p.micros) AS BIGINT), 0) FROM payouts p
                     WHERE p.rig = r.rig)
                    + (SELECT COALESCE(CAST(SUM(d.made_good) AS BIGINT), 0) FROM disputes d
                       WHERE d.rig = r.rig)
             FROM receipts r WHERE r.state = 'credited' AND r.changed_ms < ?1 GROUP BY r.rig",
            p![cutoff_ms],
        )?;
        let mut owed = BTreeMap::new();
        for r in rows {
            let due = r.u64(1)?.saturating_sub(r.u64(2)?);
            if due > 0 {
                owed.insert(rig(r.text(0)?)?, due);
            }
        }
        Ok(owed)
    }

    /// What posted epochs and lost disputes paid `rig` in all (0 for a ledger written before
    /// payouts existed).
    pub fn paid(&self, rig: &RigId) -> Result<u64, LedgerError> {
        if !self.has_table("payouts")? {
            return Ok(0);
        }
        let paid = self
            .db
            .query_one(
                "SELECT COALESCE(CAST(SUM(p.micros) AS BIGINT), 0) FROM payouts p
                 JOIN epochs e USING (epoch) WHERE p.rig = ?1 AND e.state = 'posted'",
                p![rig.as_str()],
            )?
            .u64(0)?;
        Ok(paid.saturating_add(self.made_good(rig)?))
    }

    /// What epochs up to and including `epoch` (built or posted) pay each rig, in all: the
    /// leaves of that epoch's rig tree.
    pub fn paid_through(&self, epoch: u64) -> Result<BTreeMap<RigId, u64>, LedgerError> {
        self.db
            .query(
                "SELECT rig, CAST(SUM(micros) AS BIGINT) FROM payouts WHERE epoch <= ?1
                 GROUP BY rig ORDER BY rig",
                p![epoch],
            )?
            .into_iter()
            .map(|r| Ok((rig(r.text(0)?)?, r.u64(1)?)))
            .collect()
    }

    /// Records epoch `epoch` as built, with each rig's amount and each owner's (the epoch's
    /// leaves), in one transaction. Refused while another epoch is built and not posted, or
    /// when `epoch` is not the next number.
    pub fn build_epoch(
        &mut self,
        epoch: u64,
        cutoff_ms: u64,
        root: [u8; 32],
        rigs: &BTreeMap<RigId, u64>,
        owners: &[(EthAddress, u128)],
    ) -> Result<(), LedgerError> {
        self.db.atomic(|tx| {
            let r = tx.query_one(
                "SELECT COALESCE(MAX(epoch) + 1, 0), COUNT(*) FILTER (WHERE state = 'built')
                 FROM epochs",
                p![],
            )?;
            let (next, open) = (r.int(0)?, r.int(1)?);
            if open > 0 || next as u64 != epoch {
                return Err(LedgerError::Corrupt(format!(
                    "epoch {epoch} cannot be built: the next is {next} and {open} is still unposted"
                )));
            }
            let total = rigs
                .values()
                .try_fold(0u64, |t, m| t.checked_add(*m))
                .ok_or_else(|| LedgerError::Corrupt("epoch total overflows".into()))?;
            tx.exec(
                "INSERT INTO epochs(epoch, cutoff_ms, root, total, state)
                 VALUES(?1, ?2, ?3, ?4, 'built')",
                p![epoch, cutoff_ms, root.as_slice(), total],
            )?;
            for (rig, micros) in rigs {
                tx.exec(
                    "INSERT INTO payouts(epoch, rig, micros) VALUES(?1, ?2, ?3)",
                    p![epoch, rig.as_str(), *micros],
                )?;
            }
            for (owner, amount) in owners {
                let amount = u64::try_from(*amount)
                    .map_err(|_| LedgerError::Corrupt(format!("{owner} is owed over 2^64")))?;
                tx.exec(
                    "INSERT INTO epoch_owners(epoch, owner, amount) VALUES(?1, ?2, ?3)",
                    p![epoch, &owner.to_string(), amount],
                )?;
            }
            Ok(())
        })
    }

    /// Marks epoch `epoch` posted on chain by transaction `tx_ref`.
    pub fn mark_posted(&self, epoch: u64, tx_ref: &str) -> Result<(), LedgerError> {
        let n = self.db.exec(
            "UPDATE epochs SET state = 'posted', tx = ?2 WHERE epoch = ?1",
            p![epoch, tx_ref],
        )?;
        if n == 1 {
            Ok(())
        } else {
            Err(LedgerError::Corrupt(format!(
                "no epoch {epoch} to mark posted"
            )))
        }
    }

    /// Records that a post of epoch `epoch` (still built) is about to be sent as `sent`.
    pub fn record_sent(&self, epoch: u64, sent: &SentPost) -> Result<(), LedgerError> {
        let n = self.db.exec(
            "UPDATE epochs SET sent_tx = ?2, sent_block = ?3 WHERE epoch = ?1 AND state = 'built'",
            p![epoch, &sent.tx, sent.block],
        )?;
        if n == 1 {
            Ok(())
        } else {
            Err(LedgerError::Corrupt(format!(
                "no built epoch {epoch} to send"
            )))
        }
    }

    /// The epoch built and not yet posted, if any (a run cut off before it learnt the
    /// chain's answer).
    pub fn unposted_epoch(&self) -> Result<Option<EpochRecord>, LedgerError> {
        let e = self
            .db
            .query_opt("SELECT epoch FROM epochs WHERE state = 'built'", p![])?;
        match e {
            Some(r) => self.epoch(r.u64(0)?),
            None => Ok(None),
        }
    }

    /// The number of the latest epoch the ledger holds, if any.
    pub fn latest_epoch(&self) -> Result<Option<u64>, LedgerError> {
        self.latest_epoch_in(None)
    }

    /// The number of the latest epoch posted on chain, if any.
    pub fn latest_posted_epoch(&self) -> Result<Option<u64>, LedgerError> {
        self.latest_epoch_in(Some("posted"))
    }

    /// The latest epoch in `state` (any state when `None`).
    fn latest_epoch_in(&self, state: Option<&str>) -> Result<Option<u64>, LedgerError> {
        if !self.has_table("epochs")? {
            return Ok(None);
        }
        let latest = self
            .db
            .query_one(
                "SELECT MAX(epoch) FROM epochs WHERE CAST(?1 AS TEXT) IS NULL OR state = ?1",
                p![state],
            )?
            .opt_int(0)?;
        Ok(latest.map(|e| e as u64))
    }

    /// Epoch `epoch`, if the ledger holds it.
    pub fn epoch(&self, epoch: u64) -> Result<Option<EpochRecord>, LedgerError> {
        let Some(r) = self.db.query_opt(
            "SELECT cutoff_ms, root, total, tx, sent_tx, sent_block FROM epochs
             WHERE epoch = ?1",
            p![epoch],
        )?
        else {
            return Ok(None);
        };
        let root = <[u8; 32]>::try_from(r.blob(1)?.as_slice())
            .map_err(|_| LedgerError::Corrupt(format!("epoch {epoch} root")))?;
        let rigs = self
            .db
            .query(
                "SELECT rig, micros FROM payouts WHERE epoch = ?1 ORDER BY rig",
                p![epoch],
            )?
            .into_iter()
            .map(|r| Ok((rig(r.text(0)?)?, r.u64(1)?)))
            .collect::<Result<BTreeMap<_, _>, LedgerError>>()?;
        let mut owners = self
            .db
            .query(
                "SELECT owner, amount FROM epoch_owners WHERE epoch = ?1",
                p![epoch],
            )?
            .into_iter()
            .map(|r| {
                let owner = EthAddress::parse(&r.text(0)?)
                    .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
                Ok((owner, u128::from(r.u64(1)?)))
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        owners.sort();
        let sent = match (r.opt_text(4)?, r.opt_int(5)?) {
            (Some(tx), Some(block)) => Some(SentPost {
                tx,
                block: block as u64,
            }),
            _ => None,
        };
        Ok(Some(EpochRecord {
            epoch,
            cutoff_ms: r.u64(0)?,
            root,
            total: r.u64(2)?,
            rigs,
            owners,
            sent,
            posted: r.opt_text(3)?,
        }))
    }
}
