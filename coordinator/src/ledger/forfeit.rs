//! Forfeiting a caught rig's unaudited credit, inside the transaction of the batch that
//! caught it.

use super::db::{p, Db};
use super::LedgerError;
use rigd_protocol::{JobId, RigId};

/// The reason forfeited receipts are recorded with.
pub const FORFEITED: &str = "forfeited";

/// The receipts a forfeit takes: the rig's (`?1`) of the job (`?2`), credited or pending
/// since `?3`.
macro_rules! held {
    () => {
        "rig = ?1 AND job = ?2 AND state IN ('credited', 'pending') AND changed_ms >= ?3"
    };
}

/// Turns the rig's receipts of `job` credited or pending since `since_ms` into rejected ones
/// (`forfeited`, nothing paid) and drops the kept MLP results of the pending ones; returns
/// their units, ascending.
pub(super) fn forfeit(
    tx: &Db,
    rig: &RigId,
    job: &JobId,
    since_ms: u64,
    now_ms: u64,
) -> Result<Vec<u64>, LedgerError> {
    let units = tx
        .query(
            concat!(
                "SELECT DISTINCT unit FROM receipts WHERE ",
                held!(),
                " ORDER BY unit"
            ),
            p![rig.as_str(), job.as_str(), since_ms],
        )?
        .iter()
        .map(|r| r.u64(0))
        .collect::<Result<Vec<_>, _>>()?;
    // Kept MLP results of its pending receipts go with them: a restart must not apply them.
    tx.exec(
        concat!(
            "DELETE FROM mlp_results WHERE job = ?2 AND unit IN
             (SELECT unit FROM receipts WHERE ",
            held!(),
            " AND state = 'pending')"
        ),
        p![rig.as_str(), job.as_str(), since_ms],
    )?;
    tx.exec(
        concat!(
            "UPDATE receipts SET state = 'rejected', reason = ?5, micros = 0,
             changed_ms = ?4 WHERE ",
            held!()
        ),
        p![rig.as_str(), job.as_str(), since_ms, now_ms, FORFEITED],
    )?;
    Ok(units)
}
