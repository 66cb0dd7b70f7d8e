//! Disputes as the ledger sees them: what it credited each rig before an instant
//! ([`Ledger::credited_before`], what a credit statement says), the signed statements the
//! payout run last made, one per rig, which the owners' dashboard hands out, and the disputes
//! opened on chain: which rig each is of, the epoch the network last answered it with, and
//! what a lost one paid the rig from the bond (counted as paid, so no later epoch pays it
//! again).

use super::db::p;
use super::{parse_rig, Ledger, LedgerError};
use crate::statement::SignedStatement;
use rigd_protocol::{CreditStatement, Domain, EthAddress, RigId};

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
        let r = self.db.query_one(
            "SELECT MAX(seq), COALESCE(CAST(SUM(micros) AS BIGINT), 0) FROM receipts
             WHERE rig = ?1 AND state = 'credited' AND changed_ms < ?2",
            p![rig.as_str(), before_ms],
        )?;
        let total = r.u64(1)?;
        Ok(r.opt_int(0)?.map(|last| CreditStatement {
            rig: rig.clone(),
            last_seq: last as u64,
            before_ms,
            credited_total: total,
        }))
    }

    /// [`Ledger::credited_before`] of every rig credited anything before `before_ms`.
    pub fn all_credited_before(&self, before_ms: u64) -> Result<Vec<CreditStatement>, LedgerError> {
        self.db
            .query(
                "SELECT rig, MAX(seq), CAST(SUM(micros) AS BIGINT) FROM receipts
                 WHERE state = 'credited' AND changed_ms < ?1 GROUP BY rig ORDER BY rig",
                p![before_ms],
            )?
            .into_iter()
            .map(|r| {
                Ok(CreditStatement {
                    rig: parse_rig(r.text(0)?)?,
                    last_seq: r.u64(1)?,
                    before_ms,
                    credited_total: r.u64(2)?,
                })
            })
            .collect()
    }

    /// Records that dispute `id` of `rig` was opened (again: no change).
    pub fn record_dispute(&self, id: &[u8; 32], rig: &RigId) -> Result<(), LedgerError> {
        self.db.exec(
            "INSERT INTO disputes(id, rig) VALUES(?1, ?2) ON CONFLICT(id) DO NOTHING",
            p![id.as_slice(), rig.as_str()],
        )?;
        Ok(())
    }

    /// Records that dispute `id` was settled paying `micros` from the bond, and closes it.
    /// Returns false for a dispute the ledger never saw opened.
    pub fn record_made_good(&self, id: &[u8; 32], micros: u64) -> Result<bool, LedgerError> {
        let n = self.db.exec(
            "UPDATE disputes SET made_good = ?2, open = 0 WHERE id = ?1",
            p![id.as_slice(), micros],
        )?;
        Ok(n == 1)
    }

    /// Records that the network answered dispute `id` with its leaf in `epoch`.
    pub fn record_answer(&self, id: &[u8; 32], epoch: u64) -> Result<(), LedgerError> {
        self.db.exec(
            "UPDATE disputes SET answered_epoch = ?2 WHERE id = ?1",
            p![id.as_slice(), epoch],
        )?;
        Ok(())
    }

    /// Closes dispute `id` (refused, or past answering).
    pub fn close_dispute(&self, id: &[u8; 32]) -> Result<(), LedgerError> {
        self.db.exec(
            "UPDATE disputes SET open = 0 WHERE id = ?1",
            p![id.as_slice()],
        )?;
        Ok(())
    }

    /// The disputes the ledger holds open.
    pub fn open_disputes(&self) -> Result<Vec<OpenDispute>, LedgerError> {
        self.db
            .query(
                "SELECT id, rig, answered_epoch FROM disputes WHERE open = 1 ORDER BY id",
                p![],
            )?
            .into_iter()
            .map(|r| {
                Ok(OpenDispute {
                    id: <[u8; 32]>::try_from(r.blob(0)?.as_slice())
                        .map_err(|_| LedgerError::Corrupt("dispute id".into()))?,
                    rig: parse_rig(r.text(1)?)?,
                    answered_epoch: r.opt_int(2)?.map(|e| e as u64),
                })
            })
            .collect()
    }

    /// What lost disputes paid `rig` from the bond, in all (0 for a ledger written before
    /// disputes existed).
    pub fn made_good(&self, rig: &RigId) -> Result<u64, LedgerError> {
        if !self.has_table("disputes")? {
            return Ok(0);
        }
        self.db
            .query_one(
                "SELECT COALESCE(CAST(SUM(made_good) AS BIGINT), 0) FROM disputes
                 WHERE rig = ?1",
                p![rig.as_str()],
            )?
            .u64(0)
    }

    /// Keeps `signed` as each rig's latest statement, in one transaction.
    pub fn record_statements(&mut self, signed: &[SignedStatement]) -> Result<(), LedgerError> {
        self.db.atomic(|tx| {
            for s in signed {
                let st = &s.statement;
                tx.exec(
                    "INSERT INTO statements(rig, last_seq, before_ms, credited_total, chain_id,
                         contract, signature) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT(rig) DO UPDATE SET last_seq = excluded.last_seq,
                         before_ms = excluded.before_ms, credited_total = excluded.credited_total,
                         chain_id = excluded.chain_id, contract = excluded.contract,
                         signature = excluded.signature",
                    p![
                        st.rig.as_str(),
                        st.last_seq,
                        st.before_ms,
                        st.credited_total,
                        s.domain.chain_id,
                        s.domain.verifying_contract.as_slice(),
                        &s.signature,
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// `rig`'s latest signed statement, if the payout run has made one.
    pub fn statement(&self, rig: &RigId) -> Result<Option<SignedStatement>, LedgerError> {
        if !self.has_table("statements")? {
            return Ok(None);
        }
        let Some(r) = self.db.query_opt(
            "SELECT last_seq, before_ms, credited_total, chain_id, contract, signature
             FROM statements WHERE rig = ?1",
            p![rig.as_str()],
        )?
        else {
            return Ok(None);
        };
        let contract = <[u8; 20]>::try_from(r.blob(4)?.as_slice())
            .map_err(|_| LedgerError::Corrupt(format!("statement of {rig}: contract")))?;
        Ok(Some(SignedStatement {
            statement: CreditStatement {
                rig: rig.clone(),
                last_seq: r.u64(0)?,
                before_ms: r.u64(1)?,
                credited_total: r.u64(2)?,
            },
            domain: Domain::new(r.u64(3)?, EthAddress(contract)),
            signature: r.blob(5)?,
        }))
    }
}
