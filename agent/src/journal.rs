//! The durable journal: received units, receipts and signed batches in SQLite (WAL,
//! `synchronous=FULL`).
//!
//! Life of a unit, each step one transaction, so a kill at any instant loses and duplicates
//! nothing:
//! 1. [`Journal::add_units`]: the unit is in the inbox before the broker is acknowledged.
//! 2. [`Journal::record`]: the inbox row becomes a receipt with the next sequence number
//!    (gap-free; many completions per transaction: group commit). The receipt is durable; no
//!    key is involved, so a slow key never holds the commit.
//! 3. [`seal_next`] ([`Journal::next_batch`], then [`Journal::store_batch`]): the oldest unbatched receipts
//!    are cut into a batch, whose EIP-712 header the key signs outside any transaction (the
//!    journal stays free meanwhile); the header and signature are stored in one transaction.
//!    A kill before that leaves the receipts unbatched, and they are cut and signed again.
//!    When to seal and how many is the [`crate::batcher`]'s decision.
//! 4. [`Journal::ack`]: the coordinator recorded the batch; its outputs are dropped.
//!
//! Unacknowledged batches are the outbox: [`Journal::unacked_batches`] rebuilds their
//! messages for (re)sending. Everything read back from disk is decoded with errors, never
//! panics.

use crate::keys::KeyStore;
use rigd_protocol::{
    AckedBatch, BatchHeader, Domain, GpuUuid, Receipt, ReceiptBatch, ReceiptItem, RefusedBatch,
    RigId, Signature, UnitOutput, WorkUnit,
};
use rusqlite::{params, Connection, OptionalExtension};

/// The most units the inbox holds. The coordinator leases `cards x units_per_card` units at
/// a time (24 for an 8-card rig at its default), so only a broken or hostile sender reaches
/// this.
pub const MAX_INBOX: u64 = 4096;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// SQLite failed.
    #[error("journal database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The key store refused to sign a batch.
    #[error("cannot sign a receipt batch: {0}")]
    Sign(#[source] crate::keys::KeyError),
    /// A signed batch no longer matches the unbatched receipts (another batch took them).
    #[error("batch at seq {first_seq} does not match the unbatched receipts")]
    Stale {
        /// First sequence number of the batch.
        first_seq: u64,
    },
    /// A thread panicked while it held the journal.
    #[error("the journal's lock was poisoned by a panic")]
    Poisoned,
    /// A stored row does not decode.
    #[error("journal row {what} is corrupt: {reason}")]
    Corrupt {
        /// Which row.
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
}

/// A unit a worker finished.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The unit as received.
    pub unit: WorkUnit,
    /// The card that computed it.
    pub card: GpuUuid,
    /// The result.
    pub output: UnitOutput,
    /// Work done, FLOPs.
    pub work: u64,
    /// Start, Unix ms.
    pub started_ms: u64,
    /// End, Unix ms.
    pub finished_ms: u64,
    /// Governor level while it ran.
    pub governor_level: u8,
}

impl Completion {
    /// The receipt of this completion as rig `rig`'s receipt number `seq`.
    pub fn receipt(&self, rig: &RigId, seq: u64) -> Receipt {
        let u = &self.unit;
        Receipt {
            rig: rig.clone(),
            seq,
            card: self.card.clone(),
            job: u.job.clone(),
            unit: u.unit,
            attempt: u.attempt,
            work: self.work,
            input_digest: u.kind.input_digest(),
            output_digest: self.output.digest(),
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            governor_level: self.governor_level,
        }
    }
}

/// Counters for status messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Highest sequence number journaled.
    pub last_seq: u64,
    /// Receipts not yet acknowledged by the coordinator.
    pub unacked_receipts: u64,
    /// Highest sequence number in a signed batch.
    pub sealed_seq: u64,
    /// Units waiting in the inbox.
    pub queued_units: u64,
}

/// A batch signed and stored by [`seal_next`].
#[derive(Debug, Clone, Copy)]
pub struct Sealed {
    /// How long the key took to sign; `None` when no receipt waited for a batch.
    pub took: Option<std::time::Duration>,
    /// The journal's counters after storing it.
    pub stats: JournalStats,
}

/// Cuts the next batch of at most `max` receipts from `journal` for `domain`, signs it with
/// `key` while the journal stays free for commits, and stores it.
pub fn seal_next<J: JournalStore + ?Sized>(
    journal: &Mutex<J>,
    key: &dyn KeyStore,
    max: u32,
    domain: Domain,
) -> Result<Sealed, JournalError> {
    let lock = || journal.lock().map_err(|_| JournalError::Poisoned);
    let next = lock()?.next_batch(max, domain)?;
    let Some(header) = next else {
        return Ok(Sealed {
            took: None,
            stats: lock()?.stats()?,
        });
    };
    tracing::debug!(
        first_seq = header.first_seq,
        count = header.count,
        "signing a receipt batch"
    );
    let started = std::time::Instant::now();
    let signature = key
        .sign_digest(&header.signing_digest())
        .map_err(JournalError::Sign)?;
    let took = started.elapsed();
    let mut j = lock()?;
    j.store_batch(&header, &signature)?;
    Ok(Sealed {
        took: Some(took),
        stats: j.stats()?,
    })
}

/// The journal of one rig.
pub struct Journal {
    db: Connection,
    rig: RigId,
}

fn corrupt(what: impl Into<String>, e: impl std::fmt::Display) -> JournalError {
    JournalError::Corrupt {
        what: what.into(),
        reason: e.to_string(),
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path`.
    pub fn open(path: &Path, rig: RigId) -> Result<Self, JournalError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS inbox (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 job TEXT NOT NULL, unit INTEGER NOT NULL, attempt INTEGER NOT NULL,
                 body BLOB NOT NULL,
                 UNIQUE (job, unit, attempt));
             CREATE TABLE IF NOT EXISTS receipts (
                 seq INTEGER PRIMARY KEY,
                 job TEXT NOT NULL, unit INTEGER NOT NULL, attempt INTEGER NOT NULL,
                 receipt BLOB NOT NULL, output BLOB,
                 batch INTEGER,
                 UNIQUE (job, unit, attempt));
             CREATE INDEX IF NOT EXISTS receipts_unbatched ON receipts (batch) WHERE batch IS NULL;
             CREATE TABLE IF NOT EXISTS batches (
                 first_seq INTEGER PRIMARY KEY,
                 count INTEGER NOT NULL,
                 header BLOB NOT NULL, signature BLOB NOT NULL,
                 acked INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS floor (
                 only INTEGER PRIMARY KEY CHECK (only = 1), seq INTEGER NOT NULL);",
        )?;
        Ok(Self { db, rig })
    }

    fn insert_units(&mut self, units: &[WorkUnit]) -> Result<Vec<WorkUnit>, JournalError> {
        let tx = self.db.transaction()?;
        let mut added = vec![];
        let held: i64 = tx.query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get(0))?;
        let mut room = MAX_INBOX.saturating_sub(u64::try_from(held).unwrap_or(u64::MAX));
        let mut refused = 0usize;
        for u in units {
            if room == 0 {
                refused += 1;
                continue;
            }
            let done: Option<i64> = tx
                .prepare_cached(
                    "SELECT seq FROM receipts WHERE job = ?1 AND unit = ?2 AND attempt = ?3",
                )?
                .query_row(params![u.job.as_str(), u.unit as i64, u.attempt], |r| {
                    r.get(0)
                })
                .optional()?;
            if done.is_some() {
                continue;
            }
            let body = postcard::to_allocvec(u).map_err(|e| corrupt("new unit", e))?;
            let n = tx.prepare_cached("INSERT OR IGNORE INTO inbox (job, unit, attempt, body) VALUES (?1, ?2, ?3, ?4)")?.execute(
                params![u.job.as_str(), u.unit as i64, u.attempt, body],
            )?;
            if n == 1 {
                added.push(u.clone());
                room -= 1;
            }
        }
        tx.commit()?;
        if refused > 0 {
            tracing::warn!(refused, held = MAX_INBOX, "the inbox is full: units refused unjournaled (their leases run out and they go to another rig)");
        }
        Ok(added)
    }
}

/// What the supervisor's shell needs of a journal. [`Journal`] keeps it in SQLite on disk;
/// [`MemJournal`] keeps it in memory with the same behaviour, for tests and tools that need
/// no durability. Both keep the same invariants: sequence numbers are gap-free, a unit is
/// receipted once, a batch covers consecutive unbatched receipts, and an ack changes only
/// the batch whose digest it names.
pub trait JournalStore: Send {
    /// Stores units in the inbox, skipping any already queued or already done. Returns the
    /// units that are new.
    ///
    /// The inbox is committed without waiting for the disk (`synchronous=NORMAL`): a kill -9
    /// loses nothing, and a unit lost to a power cut is reassigned when its lease expires.
    /// Receipts and batches are committed with `synchronous=FULL`.
    /// At most [`MAX_INBOX`] units wait in the inbox; more are refused unjournaled.
    fn add_units(&mut self, units: &[WorkUnit]) -> Result<Vec<WorkUnit>, JournalError>;

    /// Every unit in the inbox, oldest first.
    fn queued_units(&self) -> Result<Vec<WorkUnit>, JournalError>;

    /// Turns completions into receipts with the next sequence numbers, in one transaction: a
    /// kill leaves either the units in the inbox or the receipts journaled. A completion whose
    /// unit already has a receipt is skipped. Nothing is signed here.
    fn record(&mut self, done: &[Completion]) -> Result<Vec<Receipt>, JournalError>;

    /// The header of a batch over the oldest (at most `max`) receipts not yet in a batch, for
    /// the key to sign; `None` when every receipt is batched. Reads only.
    fn next_batch(&self, max: u32, domain: Domain) -> Result<Option<BatchHeader>, JournalError>;

    /// Stores a batch cut by [`Self::next_batch`] with the key's signature over its header,
    /// in one transaction. Refused ([`JournalError::Stale`]) unless all its receipts are still
    /// unbatched.
    fn store_batch(
        &mut self,
        header: &BatchHeader,
        signature: &Signature,
    ) -> Result<(), JournalError>;

    /// Removes a unit the worker refused as invalid from the inbox.
    fn discard_unit(&mut self, u: &WorkUnit) -> Result<(), JournalError>;

    /// Up to `limit` unacknowledged batches not in `skip`, oldest first, as messages ready to
    /// send. Only the batches returned have their receipts and outputs read.
    fn unacked_batches(
        &self,
        limit: usize,
        skip: &HashSet<u64>,
    ) -> Result<Vec<ReceiptBatch>, JournalError>;

    /// Marks batches recorded by the coordinator and drops their outputs. A batch changes
    /// only when the ack names its first sequence number *and* the digest of its header;
    /// unknown batches and acks whose digest differs are ignored. Returns how many batches
    /// changed and how many acks named a batch held here with another digest.
    fn ack(&mut self, acked: &[AckedBatch]) -> Result<(usize, usize), JournalError>;

    /// Marks batches the coordinator refused for good (it cannot attribute them to the rig's
    /// pinned key): their receipts stay in the journal, the batches are never sent again and
    /// their outputs are dropped. Matched like [`Self::ack`], with the same counts.
    fn refuse(&mut self, refused: &[RefusedBatch]) -> Result<(usize, usize), JournalError>;

    /// Counters for status messages.
    fn stats(&self) -> Result<JournalStats, JournalError>;

    /// The network recorded this rig's receipts up to `recorded`. When that is beyond what
    /// the journal holds and none of its receipts is signed yet, every receipt moves above
    /// `recorded + margin` (keeping its order) and new ones follow, in one transaction.
    fn continue_above(&mut self, recorded: u64, margin: u64) -> Result<Continuity, JournalError>;

    /// Seals every unbatched receipt into signed batches of at most `max` for `domain`,
    /// signing in turn (used where nothing else runs: shutdown, tools and benchmarks).
    fn seal_all(
        &mut self,
        max: u32,
        key: &dyn KeyStore,
        domain: Domain,
    ) -> Result<(), JournalError> {
        while let Some(header) = self.next_batch(max, domain)? {
            let signature = key
                .sign_digest(&header.signing_digest())
                .map_err(JournalError::Sign)?;
            self.store_batch(&header, &signature)?;
        }
        Ok(())
    }
}

/// What the coordinator made of a stored batch (the `acked` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchState {
    /// Recorded (credited, pending or rejected): forgotten.
    Acked = 1,
    /// Refused for good: kept, not sent again.
    Refused = 2,
}

impl Journal {
    /// Sets the state of each open batch named by its first sequence number and digest.
    fn settle(
        &mut self,
        batches: &[(u64, rigd_protocol::digest::Hash32)],
        state: BatchState,
    ) -> Result<(usize, usize), JournalError> {
        let tx = self.db.transaction()?;
        let (mut changed, mut mismatched) = (0, 0);
        for (first_seq, digest) in batches {
            let first = i64::try_from(*first_seq).unwrap_or(i64::MAX);
            let header: Option<Vec<u8>> = tx
                .prepare_cached("SELECT header FROM batches WHERE first_seq = ?1 AND acked = 0")?
                .query_row([first], |r| r.get(0))
                .optional()?;
            let Some(header) = header else {
                continue;
            };
            let header: BatchHeader =
                postcard::from_bytes(&header).map_err(|e| corrupt(format!("batch {first}"), e))?;
            if header.signing_digest() != *digest {
                mismatched += 1;
                continue;
            }
            tx.prepare_cached("UPDATE batches SET acked = ?2 WHERE first_seq = ?1")?
                .execute([first, state as i64])?;
            tx.prepare_cached("UPDATE receipts SET output = NULL WHERE batch = ?1")?
                .execute([first])?;
            changed += 1;
        }
        tx.commit()?;
        Ok((changed, mismatched))
    }
}

impl JournalStore for Journal {
    fn add_units(&mut self, units: &[WorkUnit]) -> Result<Vec<WorkUnit>, JournalError> {
        self.db.pragma_update(None, "synchronous", "NORMAL")?;
        let added = self.insert_units(units);
        self.db.pragma_update(None, "synchronous", "FULL")?;
        added
    }

    fn queued_units(&self) -> Result<Vec<WorkUnit>, JournalError> {
        let mut stmt = self.db.prepare("SELECT id, body FROM inbox ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = vec![];
        for row in rows {
            let (id, body) = row?;
            out.push(postcard::from_bytes(&body).map_err(|e| corrupt(format!("inbox {id}"), e))?);
        }
        Ok(out)
    }

    fn record(&mut self, done: &[Completion]) -> Result<Vec<Receipt>, JournalError> {
        let tx = self.db.transaction()?;
        let mut seq: u64 = tx
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM receipts")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64;
        seq = seq.max(floor::read(&tx)?);
        let mut out = vec![];
        for c in done {
            let u = &c.unit;
            let exists: Option<i64> = tx
                .prepare_cached(
                    "SELECT seq FROM receipts WHERE job = ?1 AND unit = ?2 AND attempt = ?3",
                )?
                .query_row(params![u.job.as_str(), u.unit as i64, u.attempt], |r| {
                    r.get(0)
                })
                .optional()?;
            if exists.is_some() {
                continue;
            }
            seq += 1;
            let receipt = c.receipt(&self.rig, seq);
            let rbytes = postcard::to_allocvec(&receipt).map_err(|e| corrupt("new receipt", e))?;
            let obytes = postcard::to_allocvec(&c.output).map_err(|e| corrupt("new output", e))?;
            tx.prepare_cached("INSERT INTO receipts (seq, job, unit, attempt, receipt, output) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(
                params![seq as i64, u.job.as_str(), u.unit as i64, u.attempt, rbytes, obytes],
            )?;
            tx.prepare_cached("DELETE FROM inbox WHERE job = ?1 AND unit = ?2 AND attempt = ?3")?
                .execute(params![u.job.as_str(), u.unit as i64, u.attempt])?;
            out.push(receipt);
        }
        tx.commit()?;
        Ok(out)
    }

    fn next_batch(&self, max: u32, domain: Domain) -> Result<Option<BatchHeader>, JournalError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT seq, receipt FROM receipts WHERE batch IS NULL ORDER BY seq LIMIT ?1",
        )?;
        let rows = stmt.query_map([max], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut receipts: Vec<Receipt> = vec![];
        for row in rows {
            let (seq, body) = row?;
            receipts.push(
                postcard::from_bytes(&body).map_err(|e| corrupt(format!("receipt {seq}"), e))?,
            );
        }
        if receipts.is_empty() {
            return Ok(None);
        }
        BatchHeader::over(&self.rig, domain, &receipts)
            .map(Some)
            .map_err(|reason| corrupt("unbatched receipts", reason))
    }

    fn store_batch(
        &mut self,
        header: &BatchHeader,
        signature: &Signature,
    ) -> Result<(), JournalError> {
        let tx = self.db.transaction()?;
        let end = header.first_seq + u64::from(header.count);
        let n = tx
            .prepare_cached(
                "UPDATE receipts SET batch = ?1 WHERE seq >= ?1 AND seq < ?2 AND batch IS NULL",
            )?
            .execute(params![header.first_seq as i64, end as i64])?;
        if n != header.count as usize {
            return Err(JournalError::Stale {
                first_seq: header.first_seq,
            });
        }
        let hbytes = postcard::to_allocvec(header).map_err(|e| corrupt("new batch", e))?;
        tx.prepare_cached(
            "INSERT INTO batches (first_seq, count, header, signature) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            header.first_seq as i64,
            header.count,
            hbytes,
            signature.0
        ])?;
        tx.commit()?;
        Ok(())
    }

    fn discard_unit(&mut self, u: &WorkUnit) -> Result<(), JournalError> {
        self.db
            .prepare_cached("DELETE FROM inbox WHERE job = ?1 AND unit = ?2 AND attempt = ?3")?
            .execute(params![u.job.as_str(), u.unit as i64, u.attempt])?;
        Ok(())
    }

    fn unacked_batches(
        &self,
        limit: usize,
        skip: &HashSet<u64>,
    ) -> Result<Vec<ReceiptBatch>, JournalError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT first_seq, header, signature FROM batches WHERE acked = 0 ORDER BY first_seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut heads = vec![];
        for row in rows {
            let (first, h, s) = row?;
            if skip.contains(&(first as u64)) {
                continue;
            }
            if heads.len() == limit {
                break;
            }
            let header: BatchHeader =
                postcard::from_bytes(&h).map_err(|e| corrupt(format!("batch {first}"), e))?;
            heads.push((header, Signature(s)));
        }
        let mut out = vec![];
        let mut items_stmt = self
            .db
            .prepare("SELECT seq, receipt, output FROM receipts WHERE batch = ?1 ORDER BY seq")?;
        for (header, signature) in heads {
            let rows = items_stmt.query_map([header.first_seq as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                ))
            })?;
            let mut items = vec![];
            for row in rows {
                let (seq, rb, ob) = row?;
                let what = || format!("receipt {seq}");
                let receipt = postcard::from_bytes(&rb).map_err(|e| corrupt(what(), e))?;
                let ob = ob.ok_or_else(|| corrupt(what(), "output missing"))?;
                let output = postcard::from_bytes(&ob).map_err(|e| corrupt(what(), e))?;
                items.push((receipt, output));
            }
            out.push(ReceiptBatch {
                header,
                signature,
                items: ReceiptItem::with_proofs(items),
            });
        }
        Ok(out)
    }

    fn ack(&mut self, acked: &[AckedBatch]) -> Result<(usize, usize), JournalError> {
        let batches: Vec<_> = acked.iter().map(|a| (a.first_seq, a.digest)).collect();
        self.settle(&batches, BatchState::Acked)
    }

    fn refuse(&mut self, refused: &[RefusedBatch]) -> Result<(usize, usize), JournalError> {
        let batches: Vec<_> = refused.iter().map(|r| (r.first_seq, r.digest)).collect();
        self.settle(&batches, BatchState::Refused)
    }

    fn stats(&self) -> Result<JournalStats, JournalError> {
        let last_seq: i64 = self
            .db
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM receipts")?
            .query_row([], |r| r.get(0))?;
        let acked: i64 = self
            .db
            .prepare_cached("SELECT COALESCE(SUM(count), 0) FROM batches WHERE acked != 0")?
            .query_row([], |r| r.get(0))?;
        let queued: i64 = self
            .db
            .query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get(0))?;
        let sealed: i64 = self
            .db
            .prepare_cached(
                "SELECT first_seq + count - 1 FROM batches ORDER BY first_seq DESC LIMIT 1",
            )?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        // Receipts at or below the floor were recorded by the coordinator before this journal
        // (see `continue_above`); every batch here is above it.
        let floor = floor::read(&self.db)?;
        let last_seq = (last_seq.max(0) as u64).max(floor);
        Ok(JournalStats {
            last_seq,
            unacked_receipts: last_seq
                .saturating_sub(floor)
                .saturating_sub(acked.max(0) as u64),
            sealed_seq: (sealed.max(0) as u64).max(floor),
            queued_units: queued as u64,
        })
    }
    fn continue_above(&mut self, recorded: u64, margin: u64) -> Result<Continuity, JournalError> {
        floor::continue_above(self, recorded, margin)
    }
}

#[path = "journal_floor.rs"]
mod floor;
#[path = "journal_mem.rs"]
mod mem;

pub use floor::Continuity;
pub use mem::MemJournal;

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
