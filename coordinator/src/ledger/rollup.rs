//! Earnings rolled up per rig, card and UTC day, for owners.
//!
//! `earnings_daily` is kept by triggers on `receipts`, so every transaction that records,
//! stitches or forfeits a receipt changes its day's line in the same transaction: the rollup
//! can never disagree with the receipts, even after a kill -9. A receipt counts on the day
//! of its last change (`changed_ms`): a pending receipt credited at a later stitch moves to
//! the stitch's day. A ledger created before the rollup existed is filled once on open.

use super::db::{p, Db, Row};
use super::{Ledger, LedgerError};
use rigd_protocol::RigId;

/// Milliseconds in a UTC day.
pub const DAY_MS: u64 = 86_400_000;

/// Adds the receipt row `NEW` to its card-day line (both triggers end with it).
macro_rules! add_new_to_its_day {
    () => {
        "    INSERT INTO earnings_daily VALUES(NEW.rig, NEW.card, NEW.changed_ms / 86400000,
        IIF(NEW.state = 'credited', NEW.micros, 0), IIF(NEW.state = 'pending', NEW.micros, 0),
        NEW.state = 'credited', NEW.state = 'pending', NEW.state = 'rejected')
    ON CONFLICT(rig, card, day) DO UPDATE SET
        credited_micros = credited_micros + excluded.credited_micros,
        pending_micros = pending_micros + excluded.pending_micros,
        credited = credited + excluded.credited, pending = pending + excluded.pending,
        rejected = rejected + excluded.rejected;
"
    };
}

/// The rollup's table.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS earnings_daily(
    rig TEXT NOT NULL, card TEXT NOT NULL, day INTEGER NOT NULL,
    credited_micros INTEGER NOT NULL, pending_micros INTEGER NOT NULL,
    credited INTEGER NOT NULL, pending INTEGER NOT NULL, rejected INTEGER NOT NULL,
    PRIMARY KEY(rig, card, day)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS receipts_by_time ON receipts(rig, changed_ms);
CREATE INDEX IF NOT EXISTS receipts_rejected ON receipts(rig, seq) WHERE state = 'rejected';
";

/// The triggers that keep the rollup, in SQLite.
pub(super) const SQLITE_TRIGGERS: &str = concat!(
    "
CREATE TRIGGER IF NOT EXISTS earnings_daily_insert AFTER INSERT ON receipts BEGIN
",
    add_new_to_its_day!(),
    "END;
CREATE TRIGGER IF NOT EXISTS earnings_daily_update AFTER UPDATE OF state, micros, changed_ms
ON receipts BEGIN
    UPDATE earnings_daily SET
        credited_micros = credited_micros - IIF(OLD.state = 'credited', OLD.micros, 0),
        pending_micros = pending_micros - IIF(OLD.state = 'pending', OLD.micros, 0),
        credited = credited - (OLD.state = 'credited'), pending = pending - (OLD.state = 'pending'),
        rejected = rejected - (OLD.state = 'rejected')
    WHERE rig = OLD.rig AND card = OLD.card AND day = OLD.changed_ms / 86400000;
",
    add_new_to_its_day!(),
    "END;
"
);

/// The same triggers in PostgreSQL: one function per row change, the old row out of its
/// day's line, the new row into its own.
pub(super) const POSTGRES_TRIGGERS: &str = "
CREATE OR REPLACE FUNCTION earnings_daily_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        UPDATE earnings_daily SET
            credited_micros = credited_micros
                - CASE WHEN OLD.state = 'credited' THEN OLD.micros ELSE 0 END,
            pending_micros = pending_micros
                - CASE WHEN OLD.state = 'pending' THEN OLD.micros ELSE 0 END,
            credited = credited - CASE WHEN OLD.state = 'credited' THEN 1 ELSE 0 END,
            pending = pending - CASE WHEN OLD.state = 'pending' THEN 1 ELSE 0 END,
            rejected = rejected - CASE WHEN OLD.state = 'rejected' THEN 1 ELSE 0 END
        WHERE rig = OLD.rig AND card = OLD.card AND day = OLD.changed_ms / 86400000;
    END IF;
    INSERT INTO earnings_daily VALUES(NEW.rig, NEW.card, NEW.changed_ms / 86400000,
        CASE WHEN NEW.state = 'credited' THEN NEW.micros ELSE 0 END,
        CASE WHEN NEW.state = 'pending' THEN NEW.micros ELSE 0 END,
        CASE WHEN NEW.state = 'credited' THEN 1 ELSE 0 END,
        CASE WHEN NEW.state = 'pending' THEN 1 ELSE 0 END,
        CASE WHEN NEW.state = 'rejected' THEN 1 ELSE 0 END)
    ON CONFLICT(rig, card, day) DO UPDATE SET
        credited_micros = earnings_daily.credited_micros + excluded.credited_micros,
        pending_micros = earnings_daily.pending_micros + excluded.pending_micros,
        credited = earnings_daily.credited + excluded.credited,
        pending = earnings_daily.pending + excluded.pending,
        rejected = earnings_daily.rejected + excluded.rejected;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS earnings_daily_insert ON receipts;
CREATE TRIGGER earnings_daily_insert AFTER INSERT ON receipts
    FOR EACH ROW EXECUTE FUNCTION earnings_daily_change();
DROP TRIGGER IF EXISTS earnings_daily_update ON receipts;
CREATE TRIGGER earnings_daily_update AFTER UPDATE OF state, micros, changed_ms ON receipts
    FOR EACH ROW EXECUTE FUNCTION earnings_daily_change();
";

/// Fills the rollup from the receipts once, for a SQLite ledger that predates it.
pub(super) fn backfill(conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::OptionalExtension;
    let tx = conn.transaction()?;
    let done = tx
        .query_row("SELECT value FROM meta WHERE key = 'rollup'", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?;
    if done.is_none() {
        tx.execute_batch(
            "DELETE FROM earnings_daily;
             INSERT INTO earnings_daily
             SELECT rig, card, changed_ms / 86400000,
                 SUM(IIF(state = 'credited', micros, 0)), SUM(IIF(state = 'pending', micros, 0)),
                 SUM(state = 'credited'), SUM(state = 'pending'), SUM(state = 'rejected')
             FROM receipts GROUP BY rig, card, changed_ms / 86400000;
             INSERT INTO meta(key, value) VALUES('rollup', 1);",
        )?;
    }
    tx.commit()
}

/// One card's receipts of one UTC day, by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardDay {
    /// The rig.
    pub rig: String,
    /// The card's UUID.
    pub card: String,
    /// Days since the Unix epoch (UTC).
    pub day: u64,
    /// Micro-credits credited.
    pub credited_micros: u64,
    /// Micro-credits pending their training step.
    pub pending_micros: u64,
    /// Receipts credited.
    pub credited: u64,
    /// Receipts pending.
    pub pending: u64,
    /// Receipts rejected.
    pub rejected: u64,
}

/// A receipt as an owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptLine {
    /// The rig.
    pub rig: String,
    /// Its sequence number.
    pub seq: u64,
    /// The card.
    pub card: String,
    /// The job.
    pub job: String,
    /// The unit.
    pub unit: u64,
    /// `credited`, `pending` or `rejected`.
    pub state: String,
    /// Why it was rejected (the coordinator's reason code).
    pub reason: Option<String>,
    /// Micro-credits.
    pub micros: u64,
    /// When its state last changed (Unix ms).
    pub changed_ms: u64,
}

/// A run of receipts refused before any check of their results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLine {
    /// The rig.
    pub rig: String,
    /// First sequence number.
    pub first_seq: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Why (the coordinator's reason code).
    pub reason: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// A card-day line from a row of (card, day, credited_micros, pending_micros, credited,
/// pending, rejected).
pub(super) fn card_day(rig: &RigId, r: &Row) -> Result<CardDay, LedgerError> {
    Ok(CardDay {
        rig: rig.to_string(),
        card: r.text(0)?,
        day: r.u64(1)?,
        credited_micros: r.u64(2)?,
        pending_micros: r.u64(3)?,
        credited: r.u64(4)?,
        pending: r.u64(5)?,
        rejected: r.u64(6)?,
    })
}

/// Card-day lines from a query's rows.
pub(super) fn card_days(
    db: &Db,
    rig: &RigId,
    sql: &'static str,
) -> Result<Vec<CardDay>, LedgerError> {
    db.query(sql, p![rig.as_str()])?
        .iter()
        .map(|r| card_day(rig, r))
        .collect()
}

impl Ledger {
    /// Every card-day line of `rig`, by card and day.
    pub fn card_days(&self, rig: &RigId) -> Result<Vec<CardDay>, LedgerError> {
        card_days(
            &self.db,
            rig,
            "SELECT card, day, credited_micros, pending_micros, credited, pending, rejected
             FROM earnings_daily WHERE rig = ?1 ORDER BY card, day",
        )
    }

    /// Micro-credits of `rig` credited at or after `since_ms`: still inside the audit
    /// window, so not yet payable.
    pub fn credited_since(&self, rig: &RigId, since_ms: u64) -> Result<u64, LedgerError> {
        self.db
            .query_one(
                "SELECT COALESCE(CAST(SUM(micros) AS BIGINT), 0) FROM receipts
                 WHERE rig = ?1 AND changed_ms >= ?2 AND state = 'credited'",
                p![rig.as_str(), since_ms],
            )?
            .u64(0)
    }

    /// When `rig` last had a receipt recorded or changed (Unix ms), if ever.
    pub fn last_change_ms(&self, rig: &RigId) -> Result<Option<u64>, LedgerError> {
        let ms = self
            .db
            .query_one(
                "SELECT MAX(changed_ms) FROM receipts WHERE rig = ?1",
                p![rig.as_str()],
            )?
            .opt_int(0)?;
        Ok(ms.map(|m| m as u64))
    }

    /// Up to `limit` receipts of `rig` below sequence number `before` (all when `None`),
    /// newest first; only rejected ones when `rejected_only`.
    pub fn receipt_lines(
        &self,
        rig: &RigId,
        before: Option<u64>,
        rejected_only: bool,
        limit: u32,
    ) -> Result<Vec<ReceiptLine>, LedgerError> {
        let sql = if rejected_only {
            "SELECT seq, card, job, unit, state, reason, micros, changed_ms FROM receipts
             WHERE rig = ?1 AND seq < ?2 AND state = 'rejected' ORDER BY seq DESC LIMIT ?3"
        } else {
            "SELECT seq, card, job, unit, state, reason, micros, changed_ms FROM receipts
             WHERE rig = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
        };
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.db
            .query(sql, p![rig.as_str(), before, limit])?
            .iter()
            .map(|r| {
                Ok(ReceiptLine {
                    rig: rig.to_string(),
                    seq: r.u64(0)?,
                    card: r.text(1)?,
                    job: r.text(2)?,
                    unit: r.u64(3)?,
                    state: r.text(4)?,
                    reason: r.opt_text(5)?,
                    micros: r.u64(6)?,
                    changed_ms: r.u64(7)?,
                })
            })
            .collect()
    }

    /// The newest `limit` runs of `rig`'s receipts refused before any check.
    pub fn refused_lines(&self, rig: &RigId, limit: u32) -> Result<Vec<RefusedLine>, LedgerError> {
        self.db
            .query(
                "SELECT first_seq, last_seq, reason, at_ms FROM refused
                 WHERE rig = ?1 ORDER BY first_seq DESC LIMIT ?2",
                p![rig.as_str(), limit],
            )?
            .iter()
            .map(|r| {
                Ok(RefusedLine {
                    rig: rig.to_string(),
                    first_seq: r.u64(0)?,
                    last_seq: r.u64(1)?,
                    reason: r.text(2)?,
                    at_ms: r.u64(3)?,
                })
            })
            .collect()
    }
}
