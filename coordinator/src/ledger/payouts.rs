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

use super::{u, Ledger, LedgerError};
use rigd_protocol::{EthAddress, RigId};
use rusqlite::{params, OptionalExtension};
use std::collections::BTreeMap;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS epochs(
    epoch INTEGER PRIMARY KEY, cutoff_ms INTEGER NOT NULL, root BLOB NOT NULL,
    total INTEGER NOT NULL, state TEXT NOT NULL CHECK(state IN ('built', 'posted')),
    tx TEXT);
CREATE TABLE IF NOT EXISTS payouts(
    epoch INTEGER NOT NULL, rig TEXT NOT NULL, micros INTEGER NOT NULL,
    PRIMARY KEY(epoch, rig));
CREATE TABLE IF NOT EXISTS epoch_owners(
    epoch INTEGER NOT NULL, owner TEXT NOT NULL, amount INTEGER NOT NULL,
    PRIMARY KEY(epoch, owner));
";

/// Adds the columns a ledger written before posts were recorded lacks.
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

impl Ledger {
    /// Whether the ledger has table `name` (one opened read-only may predate payouts).
    pub(super) fn has_table(&self, name: &str) -> Result<bool, LedgerError> {
        Ok(self
            .conn
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([name])?)
    }

    /// What each rig is owed now: its credit recorded before `cutoff_ms`, less what epochs
    /// already pay it (built or posted) and what lost disputes paid it. Rigs owed nothing are
    /// left out.
    pub fn payable(&self, cutoff_ms: u64) -> Result<BTreeMap<RigId, u64>, LedgerError> {
        let mut stmt = self.conn.prepare(
            "SELECT r.rig, COALESCE(SUM(r.micros), 0),
                    (SELECT COALESCE(SUM(p.micros), 0) FROM payouts p WHERE p.rig = r.rig)
                    + (SELECT COALESCE(SUM(d.made_good), 0) FROM disputes d WHERE d.rig = r.rig)
             FROM receipts r WHERE r.state = 'credited' AND r.changed_ms < ?1 GROUP BY r.rig",
        )?;
        let rows = stmt.query_map([u(cutoff_ms)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        let mut owed = BTreeMap::new();
        for row in rows {
            let (rig, credited, paid) = row?;
            let rig = RigId::new(rig).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            let due = credited.saturating_sub(paid);
            if due > 0 {
                owed.insert(rig, due);
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
        let paid = self.conn.query_row(
            "SELECT COALESCE(SUM(p.micros), 0) FROM payouts p JOIN epochs e USING (epoch)
             WHERE p.rig = ?1 AND e.state = 'posted'",
            [rig.as_str()],
            |r| r.get::<_, i64>(0),
        )?;
        Ok((paid as u64).saturating_add(self.made_good(rig)?))
    }

    /// What epochs up to and including `epoch` (built or posted) pay each rig, in all: the
    /// leaves of that epoch's rig tree.
    pub fn paid_through(&self, epoch: u64) -> Result<BTreeMap<RigId, u64>, LedgerError> {
        let mut stmt = self.conn.prepare(
            "SELECT rig, SUM(micros) FROM payouts WHERE epoch <= ?1 GROUP BY rig ORDER BY rig",
        )?;
        let mut totals = BTreeMap::new();
        for row in stmt.query_map([u(epoch)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })? {
            let (rig, micros) = row?;
            let rig = RigId::new(rig).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            totals.insert(rig, micros);
        }
        Ok(totals)
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
        let tx = self.conn.savepoint()?;
        let (next, open): (i64, i64) = tx.query_row(
            "SELECT COALESCE(MAX(epoch) + 1, 0), COUNT(*) FILTER (WHERE state = 'built') FROM epochs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if open > 0 || next as u64 != epoch {
            return Err(LedgerError::Corrupt(format!(
                "epoch {epoch} cannot be built: the next is {next} and {open} is still unposted"
            )));
        }
        let total = rigs
            .values()
            .try_fold(0u64, |t, m| t.checked_add(*m))
            .ok_or_else(|| LedgerError::Corrupt("epoch total overflows".into()))?;
        tx.execute(
            "INSERT INTO epochs(epoch, cutoff_ms, root, total, state) VALUES(?1, ?2, ?3, ?4, 'built')",
            params![u(epoch), u(cutoff_ms), root.as_slice(), u(total)],
        )?;
        {
            let mut insert =
                tx.prepare("INSERT INTO payouts(epoch, rig, micros) VALUES(?1, ?2, ?3)")?;
            for (rig, micros) in rigs {
                insert.execute(params![u(epoch), rig.as_str(), u(*micros)])?;
            }
            let mut insert =
                tx.prepare("INSERT INTO epoch_owners(epoch, owner, amount) VALUES(?1, ?2, ?3)")?;
            for (owner, amount) in owners {
                let amount = u64::try_from(*amount)
                    .map_err(|_| LedgerError::Corrupt(format!("{owner} is owed over 2^64")))?;
                insert.execute(params![u(epoch), owner.to_string(), u(amount)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks epoch `epoch` posted on chain by transaction `tx_ref`.
    pub fn mark_posted(&self, epoch: u64, tx_ref: &str) -> Result<(), LedgerError> {
        let n = self.conn.execute(
            "UPDATE epochs SET state = 'posted', tx = ?2 WHERE epoch = ?1",
            params![u(epoch), tx_ref],
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
        let n = self.conn.execute(
            "UPDATE epochs SET sent_tx = ?2, sent_block = ?3 WHERE epoch = ?1 AND state = 'built'",
            params![u(epoch), sent.tx, u(sent.block)],
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
            .conn
            .query_row("SELECT epoch FROM epochs WHERE state = 'built'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?;
        e.map(|e| self.epoch(e as u64))
            .transpose()
            .map(Option::flatten)
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
        let latest = self.conn.query_row(
            "SELECT MAX(epoch) FROM epochs WHERE ?1 IS NULL OR state = ?1",
            [state],
            |r| r.get::<_, Option<i64>>(0),
        )?;
        Ok(latest.map(|e| e as u64))
    }

    /// Epoch `epoch`, if the ledger holds it.
    pub fn epoch(&self, epoch: u64) -> Result<Option<EpochRecord>, LedgerError> {
        let row = self
            .conn
            .query_row(
                "SELECT cutoff_ms, root, total, tx, sent_tx, sent_block FROM epochs
                 WHERE epoch = ?1",
                [u(epoch)],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)? as u64,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((cutoff_ms, root, total, posted, sent_tx, sent_block)) = row else {
            return Ok(None);
        };
        let root = <[u8; 32]>::try_from(root.as_slice())
            .map_err(|_| LedgerError::Corrupt(format!("epoch {epoch} root")))?;
        let mut stmt = self
            .conn
            .prepare("SELECT rig, micros FROM payouts WHERE epoch = ?1 ORDER BY rig")?;
        let mut rigs = BTreeMap::new();
        for row in stmt.query_map([u(epoch)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })? {
            let (rig, micros) = row?;
            let rig = RigId::new(rig).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            rigs.insert(rig, micros);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT owner, amount FROM epoch_owners WHERE epoch = ?1")?;
        let mut owners = Vec::new();
        for row in stmt.query_map([u(epoch)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })? {
            let (owner, amount) = row?;
            let owner =
                EthAddress::parse(&owner).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
            owners.push((owner, u128::from(amount)));
        }
        owners.sort();
        let sent = match (sent_tx, sent_block) {
            (Some(tx), Some(block)) => Some(SentPost {
                tx,
                block: block as u64,
            }),
            _ => None,
        };
        Ok(Some(EpochRecord {
            epoch,
            cutoff_ms,
            root,
            total,
            rigs,
            owners,
            sent,
            posted,
        }))
    }
}
