//! Leases in the ledger: every unit attempt handed to a rig is recorded before it is sent, so
//! that a restarted coordinator still knows which rig holds which attempt and pays only
//! leased work.

use super::{parse_rig, u, Ledger, LedgerError};
use crate::scheduler::Granted;
use rigd_protocol::JobId;
use rusqlite::params;

impl Ledger {
    /// Records leases of `job` in one transaction (a lease recorded again is replaced).
    pub fn record_leases(&mut self, job: &JobId, leases: &[Granted]) -> Result<(), LedgerError> {
        if leases.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
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
}
