//! Forfeiting a caught rig's unaudited credit, inside the transaction of the batch that
//! caught it.

use super::{u, LedgerError};
use rigd_protocol::{JobId, RigId};
use rusqlite::params;

/// The reason forfeited receipts are recorded with.
pub const FORFEITED: &str = "forfeited";

/// Turns the rig's receipts of `job` credited or pending since `since_ms` into rejected ones
/// (`forfeited`, nothing paid) and drops the kept MLP results of the pending ones; returns
/// their units, ascending.
pub(super) fn forfeit(
    tx: &rusqlite::Connection,
    rig: &RigId,
    job: &JobId,
    since_ms: u64,
    now_ms: u64,
) -> Result<Vec<u64>, LedgerError> {
    let held = "rig = ?1 AND job = ?2 AND state IN ('credited', 'pending') AND changed_ms >= ?3";
    let mut stmt = tx.prepare(&format!(
        "SELECT DISTINCT unit FROM receipts WHERE {held} ORDER BY unit"
    ))?;
    let units = stmt
        .query_map(params![rig.as_str(), job.as_str(), u(since_ms)], |r| {
            r.get::<_, i64>(0)
        })?
        .map(|u| u.map(|u| u as u64))
        .collect::<Result<Vec<_>, _>>()?;
    // Kept MLP results of its pending receipts go with them: a restart must not apply them.
    tx.execute(
        &format!(
            "DELETE FROM mlp_results WHERE job = ?2 AND unit IN
             (SELECT unit FROM receipts WHERE {held} AND state = 'pending')"
        ),
        params![rig.as_str(), job.as_str(), u(since_ms)],
    )?;
    tx.execute(
        &format!(
            "UPDATE receipts SET state = 'rejected', reason = ?5, micros = 0,
             changed_ms = ?4 WHERE {held}"
        ),
        params![
            rig.as_str(),
            job.as_str(),
            u(since_ms),
            u(now_ms),
            FORFEITED
        ],
    )?;
    Ok(units)
}
