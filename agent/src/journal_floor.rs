//! Identity continuity: a journal that is gone (a reflash, a swapped disk) while the key is
//! kept makes a rig start again at seq 1, and every new receipt would match one the network
//! recorded and be dropped as a duplicate. The coordinator's retained earnings say how far it
//! recorded the rig; [`Journal::continue_above`] moves this journal's receipts, none signed
//! yet, above that mark and keeps the mark as the journal's floor.

use super::{corrupt, Journal, JournalError, JournalStore};
use rigd_protocol::Receipt;
use rusqlite::{params, Connection, OptionalExtension};

/// What [`JournalStore::continue_above`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The journal already holds everything the network recorded.
    Continuous,
    /// The network recorded receipts this journal never held: its `moved` receipts now
    /// follow `floor` (the network's record plus a margin).
    Renumbered {
        /// The journal's new floor.
        floor: u64,
        /// Receipts given new sequence numbers.
        moved: u64,
    },
    /// The network recorded more than this journal holds, but some of its receipts are
    /// signed already and cannot move: those are counted as duplicates by the network.
    Signed {
        /// The highest sequence number the network recorded.
        recorded: u64,
    },
}

/// The journal's floor: the highest sequence number recorded before this journal (0: none).
pub(super) fn read(db: &Connection) -> Result<u64, JournalError> {
    let floor: Option<i64> = db
        .prepare_cached("SELECT seq FROM floor WHERE only = 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(floor.map_or(0, |f| f.max(0) as u64))
}

/// [`super::JournalStore::continue_above`] of the SQLite journal.
pub(super) fn continue_above(
    j: &mut Journal,
    recorded: u64,
    margin: u64,
) -> Result<Continuity, JournalError> {
    let stats = j.stats()?;
    if recorded <= stats.last_seq {
        return Ok(Continuity::Continuous);
    }
    let tx = j.db.transaction()?;
    let floor = read(&tx)?;
    if stats.sealed_seq > floor {
        return Ok(Continuity::Signed { recorded });
    }
    let new_floor = recorded.saturating_add(margin);
    let shift = new_floor - floor;
    let rows: Vec<(i64, Vec<u8>)> = tx
        .prepare("SELECT seq, receipt FROM receipts ORDER BY seq DESC")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (seq, body) in &rows {
        let mut receipt: Receipt =
            postcard::from_bytes(body).map_err(|e| corrupt(format!("receipt {seq}"), e))?;
        // Every new number is above `new_floor`, above every old one: no clash.
        receipt.seq = receipt
            .seq
            .checked_add(shift)
            .ok_or_else(|| corrupt(format!("receipt {seq}"), "sequence number overflows"))?;
        let body = postcard::to_allocvec(&receipt).map_err(|e| corrupt("receipt", e))?;
        tx.execute(
            "UPDATE receipts SET seq = ?1, receipt = ?2 WHERE seq = ?3",
            params![receipt.seq as i64, body, seq],
        )?;
    }
    tx.execute(
        "INSERT INTO floor (only, seq) VALUES (1, ?1)
             ON CONFLICT (only) DO UPDATE SET seq = excluded.seq",
        [new_floor as i64],
    )?;
    tx.commit()?;
    Ok(Continuity::Renumbered {
        floor: new_floor,
        moved: rows.len() as u64,
    })
}
