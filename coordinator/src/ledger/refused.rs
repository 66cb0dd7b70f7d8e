//! Receipts refused before any check of their results (unit not leased to the rig, unit
//! never issued, another job): recorded as runs of sequence numbers, one row per run, not
//! one row per receipt, so a rig that floods such receipts grows the ledger by a row per
//! batch at most. A refused sequence number counts as recorded: sent again, it is a
//! duplicate.

use super::db::{p, Db};
use super::{Ledger, LedgerError};
use rigd_protocol::RigId;
use std::collections::HashSet;
use std::ops::Range;

/// A run of consecutive sequence numbers of one batch refused for one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The first sequence number of the run.
    pub first_seq: u64,
    /// The last one (inclusive).
    pub last_seq: u64,
    /// Why.
    pub reason: &'static str,
}

/// Appends `seq` refused for `reason` to `runs`, extending the last run where it continues.
pub fn push_refused(runs: &mut Vec<Refused>, seq: u64, reason: &'static str) {
    if let Some(last) = runs.last_mut() {
        if last.reason == reason && last.last_seq.checked_add(1) == Some(seq) {
            last.last_seq = seq;
            return;
        }
    }
    runs.push(Refused {
        first_seq: seq,
        last_seq: seq,
        reason,
    });
}

pub(super) fn insert(
    tx: &Db,
    rig: &RigId,
    runs: &[Refused],
    now_ms: u64,
) -> Result<(), LedgerError> {
    for run in runs {
        tx.exec(
            "INSERT INTO refused(rig, first_seq, last_seq, reason, at_ms)
             VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            p![
                rig.as_str(),
                run.first_seq,
                run.last_seq,
                run.reason,
                now_ms
            ],
        )?;
    }
    Ok(())
}

impl Ledger {
    /// Sequence numbers of `rig` in `seqs` that lie in refused runs.
    pub(super) fn refused_among(
        &self,
        rig: &RigId,
        seqs: &Range<u64>,
    ) -> Result<HashSet<u64>, LedgerError> {
        let mut found = HashSet::new();
        for run in self.db.query(
            "SELECT first_seq, last_seq FROM refused
             WHERE rig = ?1 AND first_seq < ?3 AND last_seq >= ?2",
            p![rig.as_str(), seqs.start, seqs.end],
        )? {
            let (first, last) = (run.u64(0)?, run.u64(1)?);
            let end = last.saturating_add(1).min(seqs.end);
            found.extend(first.max(seqs.start)..end);
        }
        Ok(found)
    }

    /// `(receipts refused in runs, the highest such sequence number)` of `rig`.
    pub fn refused_totals(&self, rig: &RigId) -> Result<(u64, u64), LedgerError> {
        let r = self.db.query_one(
            "SELECT COALESCE(CAST(SUM(last_seq - first_seq + 1) AS BIGINT), 0),
                    COALESCE(MAX(last_seq), 0)
             FROM refused WHERE rig = ?1",
            p![rig.as_str()],
        )?;
        Ok((r.u64(0)?, r.u64(1)?))
    }

    /// How many rows the refused runs of `rig` take.
    pub fn refused_rows(&self, rig: &RigId) -> Result<u64, LedgerError> {
        self.db
            .query_one(
                "SELECT COUNT(*) FROM refused WHERE rig = ?1",
                p![rig.as_str()],
            )?
            .u64(0)
    }

    /// Every refused run of `rig`, ascending.
    pub(super) fn refused_runs(&self, rig: &RigId) -> Result<Vec<(u64, u64)>, LedgerError> {
        self.db
            .query(
                "SELECT first_seq, last_seq FROM refused WHERE rig = ?1 ORDER BY first_seq",
                p![rig.as_str()],
            )?
            .iter()
            .map(|r| Ok((r.u64(0)?, r.u64(1)?)))
            .collect()
    }
}
