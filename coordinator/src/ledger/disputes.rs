//! Disputes as the ledger sees them: what it credited each rig before an instant
//! ([`Ledger::credited_before`], what a credit statement says), the signed statements the
//! payout run last made, one per rig, which the owners' dashboard hands out, and the disputes
//! opened on chain: which rig each is of, the epoch the network last answered it with, and
//! what a lost one paid the rig from the bond (counted as paid, so no later epoch pays it
//! again).

use super::{u, Ledger, LedgerError};
use crate::statement::SignedStatement;
use rigd_protocol::{CreditStatement, Domain, EthAddress, RigId};
use rusqlite::{params, OptionalExtension};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS statements(
    rig TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, before_ms INTEGER NOT NULL,
    credited_total INTEGER NOT NULL, chain_id INTEGER NOT NULL, contract BLOB NOT NULL,
    signature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS disputes(
    id BLOB PRIMARY KEY, rig TEXT NOT NULL, open INTEGER NOT NULL DEFAULT 1,
    answered_epoch INTEGER, made_good INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS disputes_by_rig ON disputes(rig);
";

/// A dispute the ledger holds open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenDispute {
    /// Its id (the statement's digest).
    pub id: [u8; 32],
    /// The rig.
    pub rig: RigId,
    /// The epoch the network last answered it with.
    pub answered_epoch: Option<u64>,
}

impl Ledger {
    /// `rig`'s credit recorded before `before_ms`, in all, and the highest sequence number
    /// among it: what a credit statement for that instant says (`None` while there is none).
    /// Once `before_ms` is older than the audit window this never changes.
    pub fn credited_before(
        &self,
        rig: &RigId,
        before_ms: u64,
    ) -> Result<Option<CreditStatement>, LedgerError> {
        let (last, total): (Option<i64>, i64) = self.conn.query_row(
            "SELECT MAX(seq), COALESCE(SUM(micros), 0) FROM receipts
             WHERE rig = ?1 AND state = 'credited' AND changed_ms < ?2",
            params![rig.as_str(), u(before_ms)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(last.map(|last| CreditStatement {
            rig: rig.clone(),
            last_seq: last as u64,
            before_ms,
            credited_total: total as u64,
        }))
    }

    /// [`Ledger::credited_before`] of every rig credited anything before `before_ms`.
    pub fn all_credited_before(&self, before_ms: u64) -> Result<Vec<CreditStatement>, LedgerError> {
        let mut stmt = self.conn.prepare(
            "SELECT rig, MAX(seq), SUM(micros) FROM receipts
             WHERE state = 'credited' AND changed_ms < ?1 GROUP BY rig ORDER BY rig",
        )?;
        let rows = stmt.query_map([u(before_ms)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (rig, last_seq, credited_total) = row?;
            out.push(CreditStatement {
                rig: RigId::new(rig).map_err(|e| LedgerError::Corrupt(e.to_string()))?,
                last_seq,
                before_ms,
                credited_total,
            });
        }
        Ok(out)
    }

    /// Records that dispute `id` of `rig` was opened (again: no change).
    pub fn record_dispute(&self, id: &[u8; 32], rig: &RigId) -> Result<(), LedgerError> {
        self.conn.execute(
            "INSERT INTO disputes(id, rig) VALUES(?1, ?2) ON CONFLICT(id) DO NOTHING",
            params![id.as_slice(), rig.as_str()],
        )?;
        Ok(())
    }

    /// Records that dispute `id` was settled paying `micros` from the bond, and closes it.
    /// Returns false for a dispute the ledger never saw opened.
    pub fn record_made_good(&self, id: &[u8; 32], micros: u64) -> Result<bool, LedgerError> {
        let n = self.conn.execute(
            "UPDATE disputes SET made_good = ?2, open = 0 WHERE id = ?1",
            params![id.as_slice(), u(micros)],
        )?;
        Ok(n == 1)
    }

    /// Records that the network answered dispute `id` with its leaf in `epoch`.
    pub fn record_answer(&self, id: &[u8; 32], epoch: u64) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE disputes SET answered_epoch = ?2 WHERE id = ?1",
            params![id.as_slice(), u(epoch)],
        )?;
        Ok(())
    }

    /// Closes dispute `id` (refused, or past answering).
    pub fn close_dispute(&self, id: &[u8; 32]) -> Result<(), LedgerError> {
        self.conn.execute(
            "UPDATE disputes SET open = 0 WHERE id = ?1",
            [id.as_slice()],
        )?;
        Ok(())
    }

    /// The disputes the ledger holds open.
    pub fn open_disputes(&self) -> Result<Vec<OpenDispute>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, rig, answered_epoch FROM disputes WHERE open = 1 ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, rig, answered) = row?;
            out.push(OpenDispute {
                id: <[u8; 32]>::try_from(id.as_slice())
                    .map_err(|_| LedgerError::Corrupt("dispute id".into()))?,
                rig: RigId::new(rig).map_err(|e| LedgerError::Corrupt(e.to_string()))?,
                answered_epoch: answered.map(|e| e as u64),
            });
        }
        Ok(out)
    }

    /// What lost disputes paid `rig` from the bond, in all (0 for a ledger written before
    /// disputes existed).
    pub fn made_good(&self, rig: &RigId) -> Result<u64, LedgerError> {
        if !self.has_table("disputes")? {
            return Ok(0);
        }
        let paid = self.conn.query_row(
            "SELECT COALESCE(SUM(made_good), 0) FROM disputes WHERE rig = ?1",
            [rig.as_str()],
            |r| r.get::<_, i64>(0),
        )?;
        Ok(paid as u64)
    }

    /// Keeps `signed` as each rig's latest statement, in one transaction.
    pub fn record_statements(&mut self, signed: &[SignedStatement]) -> Result<(), LedgerError> {
        let tx = self.conn.savepoint()?;
        {
            let mut upsert = tx.prepare(
                "INSERT INTO statements(rig, last_seq, before_ms, credited_total, chain_id,
                     contract, signature) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(rig) DO UPDATE SET last_seq = excluded.last_seq,
                     before_ms = excluded.before_ms, credited_total = excluded.credited_total,
                     chain_id = excluded.chain_id, contract = excluded.contract,
                     signature = excluded.signature",
            )?;
            for s in signed {
                let st = &s.statement;
                upsert.execute(params![
                    st.rig.as_str(),
                    u(st.last_seq),
                    u(st.before_ms),
                    u(st.credited_total),
                    u(s.domain.chain_id),
                    s.domain.verifying_contract.as_slice(),
                    s.signature,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// `rig`'s latest signed statement, if the payout run has made one.
    pub fn statement(&self, rig: &RigId) -> Result<Option<SignedStatement>, LedgerError> {
        if !self.has_table("statements")? {
            return Ok(None);
        }
        let row = self
            .conn
            .query_row(
                "SELECT last_seq, before_ms, credited_total, chain_id, contract, signature
                 FROM statements WHERE rig = ?1",
                [rig.as_str()],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u64,
                        r.get::<_, i64>(3)? as u64,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((last_seq, before_ms, credited_total, chain_id, contract, signature)) = row else {
            return Ok(None);
        };
        let contract = <[u8; 20]>::try_from(contract.as_slice())
            .map_err(|_| LedgerError::Corrupt(format!("statement of {rig}: contract")))?;
        Ok(Some(SignedStatement {
            statement: CreditStatement {
                rig: rig.clone(),
                last_seq,
                before_ms,
                credited_total,
            },
            domain: Domain::new(chain_id, EthAddress(contract)),
            signature,
        }))
    }
}
