//! Leases and suspensions in the ledger: every unit attempt handed to a rig is recorded before
//! it is sent, so that a restarted coordinator still knows which rig holds which attempt and
//! pays only leased work; a rig suspended from a job stays suspended across a restart. Only
//! the coordinator that leads a job leases its units ([`Ledger::try_lead`]).

use super::db::{p, Db};
use super::{parse_rig, Ledger, LedgerError};
use crate::scheduler::Granted;
use rigd_protocol::{JobId, RigId};

/// The first key of the advisory lock that holds a job's lead on PostgreSQL (the second is
/// the hash of the job's id).
const LEAD_LOCK: &str = "SELECT pg_try_advisory_lock(1919510372, hashtext(?1))";

impl Ledger {
    /// Makes this connection the one coordinator that runs `job` on this ledger, if no other
    /// holds it: `false` while another does. Once taken, the lead is held as long as the
    /// connection lives.
    ///
    /// On PostgreSQL it is a session advisory lock of the ledger's own connection, so the
    /// server gives it up when the session ends, a coordinator killed with SIGKILL included,
    /// and a coordinator whose session ended cannot write anything more: its next group
    /// fails and it stops. Two replicas therefore never lease units or credit receipts of
    /// the same job at once. A SQLite file is written by one coordinator process, which
    /// always leads.
    pub fn try_lead(&self, job: &JobId) -> Result<bool, LedgerError> {
        if !self.db.is_postgres() {
            return Ok(true);
        }
        Ok(self.db.query_one(LEAD_LOCK, p![job.as_str()])?.int(0)? == 1)
    }

    /// Records leases of `job` in one transaction (a lease recorded again is replaced).
    pub fn record_leases(&mut self, job: &JobId, leases: &[Granted]) -> Result<(), LedgerError> {
        if leases.is_empty() {
            return Ok(());
        }
        self.db.atomic(|tx| {
            for (unit, attempt, rig, deadline_ms) in leases {
                tx.exec(
                    "INSERT INTO leases(job, unit, attempt, rig, deadline_ms)
                     VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(job, unit, attempt)
                     DO UPDATE SET rig = excluded.rig, deadline_ms = excluded.deadline_ms",
                    p![job.as_str(), *unit, *attempt, rig.as_str(), *deadline_ms],
                )?;
            }
            Ok(())
        })
    }

    /// Every lease of `job` recorded, by unit and attempt.
    pub fn leases(&self, job: &JobId) -> Result<Vec<Granted>, LedgerError> {
        self.db
            .query(
                "SELECT unit, attempt, rig, deadline_ms FROM leases WHERE job = ?1
                 ORDER BY unit, attempt",
                p![job.as_str()],
            )?
            .iter()
            .map(|r| Ok((r.u64(0)?, r.u32(1)?, parse_rig(r.text(2)?)?, r.u64(3)?)))
            .collect()
    }

    /// Rigs suspended from `job` and until when (Unix ms), by rig.
    pub fn suspensions(&self, job: &JobId) -> Result<Vec<(RigId, u64)>, LedgerError> {
        self.db
            .query(
                "SELECT rig, until_ms FROM suspensions WHERE job = ?1 ORDER BY rig",
                p![job.as_str()],
            )?
            .iter()
            .map(|r| Ok((parse_rig(r.text(0)?)?, r.u64(1)?)))
            .collect()
    }
}

/// Suspends `rig` from `job` until `until_ms` (a later suspension already recorded stands).
pub(super) fn suspend(tx: &Db, rig: &RigId, job: &JobId, until_ms: u64) -> Result<(), LedgerError> {
    tx.exec(
        "INSERT INTO suspensions(rig, job, until_ms) VALUES(?1, ?2, ?3)
         ON CONFLICT(rig, job) DO UPDATE SET until_ms = CASE
             WHEN suspensions.until_ms > excluded.until_ms THEN suspensions.until_ms
             ELSE excluded.until_ms END",
        p![rig.as_str(), job.as_str(), until_ms],
    )?;
    Ok(())
}
