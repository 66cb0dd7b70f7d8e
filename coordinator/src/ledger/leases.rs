//! Leases and suspensions in the ledger: every unit attempt handed to a rig is recorded before
//! it is sent, so that a restarted coordinator still knows which rig holds which attempt and
//! pays only leased work; a rig suspended from a job stays suspended across a restart.

use super::{parse_rig, u, Ledger, LedgerError};
use crate::scheduler::Granted;
use rigd_protocol::{JobId, RigId};
use rusqlite::params;

impl Ledger {
    /// Records leases of `job` in one transaction (a lease recorded again is replaced).
    pub fn record_leases(&mut self, job: &JobId, leases: &[Granted]) -> Result<(), LedgerError> {
        if leases.is_empty() {
            return Ok(());
        }
        let tx = self.conn.savepoint()?;
        {
            let mut insert = tx.prepare(
                "INSERT OR REPLACE INTO leases(job, unit, attempt, rig, deadline_ms)
                 VALUES(?1, ?2, ?3, ?4, ?5)",
            )?;
            for (unit, attempt, rig, deadline_ms) in leases {
                insert.execute(params![
                    job.as_str(),
                    u(*unit),
                    attempt,
                    rig.as_str(),
                    u(*deadline_ms)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every lease of `job` recorded, by unit and attempt.
    pub fn leases(&self, job: &JobId) -> Result<Vec<Granted>, LedgerError> {
        let mut stmt = self.conn.prepare(
            "SELECT unit, attempt, rig, deadline_ms FROM leases WHERE job = ?1
             ORDER BY unit, attempt",
        )?;
        let rows = stmt
            .query_map([job.as_str()], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)? as u64,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(unit, attempt, rig, deadline)| Ok((unit, attempt, parse_rig(rig)?, deadline)))
            .collect()
    }

    /// Rigs suspended from `job` and until when (Unix ms), by rig.
    pub fn suspensions(&self, job: &JobId) -> Result<Vec<(RigId, u64)>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT rig, until_ms FROM suspensions WHERE job = ?1 ORDER BY rig")?;
        let rows = stmt
            .query_map([job.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(rig, until)| Ok((parse_rig(rig)?, until)))
            .collect()
    }
}

/// Suspends `rig` from `job` until `until_ms` (a later suspension already recorded stands).
pub(super) fn suspend(
    tx: &rusqlite::Connection,
    rig: &RigId,
    job: &JobId,
    until_ms: u64,
) -> Result<(), LedgerError> {
    tx.execute(
        "INSERT INTO suspensions(rig, job, until_ms) VALUES(?1, ?2, ?3)
         ON CONFLICT(rig, job) DO UPDATE SET until_ms = max(until_ms, excluded.until_ms)",
        params![rig.as_str(), job.as_str(), u(until_ms)],
    )?;
    Ok(())
}
