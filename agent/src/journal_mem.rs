//! [`MemJournal`]: the journal kept in memory, with the behaviour of the SQLite
//! [`super::Journal`] (the same tests run against both) and none of its durability: for tests
//! and tools, never for a rig that is paid.

use super::{Completion, Continuity, JournalError, JournalStats, JournalStore, Receipt, MAX_INBOX};
use rigd_protocol::digest::Hash32;
use rigd_protocol::{
    AckedBatch, BatchHeader, Domain, ReceiptBatch, ReceiptItem, RefusedBatch, RigId, Signature,
    UnitOutput, WorkUnit,
};
use std::collections::{BTreeMap, HashSet};

/// A receipt with its output (dropped once acknowledged) and its batch.
struct Row {
    receipt: Receipt,
    output: Option<UnitOutput>,
    batch: Option<u64>,
}

/// A signed batch and whether the coordinator settled it (acknowledged or refused for good).
struct Batch {
    header: BatchHeader,
    signature: Signature,
    settled: bool,
}

/// The journal of one rig, in memory.
pub struct MemJournal {
    rig: RigId,
    inbox: Vec<WorkUnit>,
    receipts: BTreeMap<u64, Row>,
    batches: BTreeMap<u64, Batch>,
    floor: u64,
}

fn same_attempt(a: &WorkUnit, b: &WorkUnit) -> bool {
    a.job == b.job && a.unit == b.unit && a.attempt == b.attempt
}

impl MemJournal {
    /// An empty journal of `rig`.
    pub fn new(rig: RigId) -> Self {
        MemJournal {
            rig,
            inbox: vec![],
            receipts: BTreeMap::new(),
            batches: BTreeMap::new(),
            floor: 0,
        }
    }

    fn receipted(&self, u: &WorkUnit) -> bool {
        self.receipts.values().any(|r| {
            r.receipt.job == u.job && r.receipt.unit == u.unit && r.receipt.attempt == u.attempt
        })
    }

    /// Settles each open batch named by its first sequence number and digest.
    fn settle(&mut self, batches: &[(u64, Hash32)]) -> (usize, usize) {
        let (mut changed, mut mismatched) = (0, 0);
        for (first_seq, digest) in batches {
            let Some(b) = self.batches.get_mut(first_seq).filter(|b| !b.settled) else {
                continue;
            };
            if b.header.signing_digest() != *digest {
                mismatched += 1;
                continue;
            }
            b.settled = true;
            for row in self.receipts.values_mut() {
                if row.batch == Some(*first_seq) {
                    row.output = None;
                }
            }
            changed += 1;
        }
        (changed, mismatched)
    }

    fn last_seq(&self) -> u64 {
        self.receipts.keys().next_back().copied().unwrap_or(0)
    }
}

impl JournalStore for MemJournal {
    fn add_units(&mut self, units: &[WorkUnit]) -> Result<Vec<WorkUnit>, JournalError> {
        let mut added = vec![];
        let mut refused = 0usize;
        for u in units {
            if self.inbox.len() as u64 >= MAX_INBOX {
                refused += 1;
                continue;
            }
            if self.receipted(u) || self.inbox.iter().any(|q| same_attempt(q, u)) {
                continue;
            }
            self.inbox.push(u.clone());
            added.push(u.clone());
        }
        if refused > 0 {
            tracing::warn!(
                refused,
                held = MAX_INBOX,
                "the inbox is full: units refused"
            );
        }
        Ok(added)
    }

    fn queued_units(&self) -> Result<Vec<WorkUnit>, JournalError> {
        Ok(self.inbox.clone())
    }

    fn record(&mut self, done: &[Completion]) -> Result<Vec<Receipt>, JournalError> {
        let mut seq = self.last_seq().max(self.floor);
        let mut out = vec![];
        for c in done {
            if self.receipted(&c.unit) {
                continue;
            }
            seq += 1;
            let receipt = c.receipt(&self.rig, seq);
            self.receipts.insert(
                seq,
                Row {
                    receipt: receipt.clone(),
                    output: Some(c.output.clone()),
                    batch: None,
                },
            );
            self.inbox.retain(|q| !same_attempt(q, &c.unit));
            out.push(receipt);
        }
        Ok(out)
    }

    fn next_batch(&self, max: u32, domain: Domain) -> Result<Option<BatchHeader>, JournalError> {
        let receipts: Vec<Receipt> = self
            .receipts
            .values()
            .filter(|r| r.batch.is_none())
            .take(max as usize)
            .map(|r| r.receipt.clone())
            .collect();
        if receipts.is_empty() {
            return Ok(None);
        }
        BatchHeader::over(&self.rig, domain, &receipts)
            .map(Some)
            .map_err(|reason| super::corrupt("unbatched receipts", reason))
    }

    fn store_batch(
        &mut self,
        header: &BatchHeader,
        signature: &Signature,
    ) -> Result<(), JournalError> {
        let stale = || JournalError::Stale {
            first_seq: header.first_seq,
        };
        let end = header
            .first_seq
            .checked_add(u64::from(header.count))
            .ok_or_else(stale)?;
        let free = self
            .receipts
            .range(header.first_seq..end)
            .filter(|(_, r)| r.batch.is_none())
            .count();
        if free != header.count as usize {
            return Err(stale());
        }
        for (_, row) in self.receipts.range_mut(header.first_seq..end) {
            row.batch = Some(header.first_seq);
        }
        self.batches.insert(
            header.first_seq,
            Batch {
                header: header.clone(),
                signature: signature.clone(),
                settled: false,
            },
        );
        Ok(())
    }

    fn discard_unit(&mut self, u: &WorkUnit) -> Result<(), JournalError> {
        self.inbox.retain(|q| !same_attempt(q, u));
        Ok(())
    }

    fn unacked_batches(
        &self,
        limit: usize,
        skip: &HashSet<u64>,
    ) -> Result<Vec<ReceiptBatch>, JournalError> {
        let mut out = vec![];
        for (first, b) in &self.batches {
            if b.settled || skip.contains(first) {
                continue;
            }
            if out.len() == limit {
                break;
            }
            let mut items = vec![];
            for row in self.receipts.values().filter(|r| r.batch == Some(*first)) {
                let what = || format!("receipt {}", row.receipt.seq);
                let output = row
                    .output
                    .clone()
                    .ok_or_else(|| super::corrupt(what(), "output missing"))?;
                items.push((row.receipt.clone(), output));
            }
            out.push(ReceiptBatch {
                header: b.header.clone(),
                signature: b.signature.clone(),
                items: ReceiptItem::with_proofs(items),
            });
        }
        Ok(out)
    }

    fn ack(&mut self, acked: &[AckedBatch]) -> Result<(usize, usize), JournalError> {
        let batches: Vec<_> = acked.iter().map(|a| (a.first_seq, a.digest)).collect();
        Ok(self.settle(&batches))
    }

    fn refuse(&mut self, refused: &[RefusedBatch]) -> Result<(usize, usize), JournalError> {
        let batches: Vec<_> = refused.iter().map(|r| (r.first_seq, r.digest)).collect();
        Ok(self.settle(&batches))
    }

    fn stats(&self) -> Result<JournalStats, JournalError> {
        let acked: u64 = self
            .batches
            .values()
            .filter(|b| b.settled)
            .map(|b| u64::from(b.header.count))
            .sum();
        let sealed = self.batches.values().next_back().map_or(0, |b| {
            (b.header.first_seq + u64::from(b.header.count)).saturating_sub(1)
        });
        let last_seq = self.last_seq().max(self.floor);
        Ok(JournalStats {
            last_seq,
            unacked_receipts: last_seq.saturating_sub(self.floor).saturating_sub(acked),
            sealed_seq: sealed.max(self.floor),
            queued_units: self.inbox.len() as u64,
        })
    }

    fn continue_above(&mut self, recorded: u64, margin: u64) -> Result<Continuity, JournalError> {
        let stats = self.stats()?;
        if recorded <= stats.last_seq {
            return Ok(Continuity::Continuous);
        }
        if stats.sealed_seq > self.floor {
            return Ok(Continuity::Signed { recorded });
        }
        let new_floor = recorded.saturating_add(margin);
        let shift = new_floor - self.floor;
        // If the highest number can move, every one can.
        if let Some(&top) = self.receipts.keys().next_back() {
            if top.checked_add(shift).is_none() {
                return Err(super::corrupt(
                    format!("receipt {top}"),
                    "sequence number overflows",
                ));
            }
        }
        let rows = std::mem::take(&mut self.receipts);
        let moved = rows.len() as u64;
        for (seq, mut row) in rows {
            row.receipt.seq = seq.saturating_add(shift);
            self.receipts.insert(row.receipt.seq, row);
        }
        self.floor = new_floor;
        Ok(Continuity::Renumbered {
            floor: new_floor,
            moved,
        })
    }
}
