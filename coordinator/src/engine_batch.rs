//! Receipt batches: admission (waiting batches, sequence window, key, signature; the batch
//! rate is checked before decoding, in `Engine::handle`), judging each new
//! receipt, recomputation off the engine's thread, then one ledger transaction and the ack.
//!
//! A batch whose judging needs no recomputation is recorded and acked at once. Otherwise the
//! engine hands its units to the recompute pool ([`Outbound::Recompute`]) and keeps the batch
//! pending, unrecorded and unacked, until [`Engine::recomputed`] brings the outputs: a
//! coordinator killed meanwhile has recorded nothing, and the rig sends the batch again.

use super::judge::Judged;
use super::{answer, Engine, Outbound, Verdict, SEQ_WINDOW};
use crate::ledger::{push_refused, BatchRecord, Entry, LedgerError, ReceiptState, Refused};
use crate::recompute::{Recompute, Recomputed};
use crate::verify::{self, Rejection};
use rigd_protocol::{
    Ack, AckedBatch, ReceiptBatch, ReceiptItem, Refusal, RefusalReason, RefusedBatch, RigId,
    UnitOutput,
};
use std::collections::{BTreeMap, HashSet};

/// Batches of one rig waiting for their recomputation, at most; a further batch of the rig
/// is dropped unrecorded and unacked (the rig sends it again).
pub const MAX_PENDING_BATCHES: usize = 4;

/// A batch waiting for its recomputation.
#[derive(Debug)]
pub(super) struct Pending {
    rig: RigId,
    batch: ReceiptBatch,
    /// Each new receipt's index in the batch and its verdict; `None` while its result is
    /// recomputed.
    judged: Vec<(usize, Option<Verdict>)>,
    duplicates: u64,
}

impl Engine {
    /// A receipt batch: admit it, judge each new receipt, and record, apply and ack it now
    /// or once its recomputation is back.
    pub fn on_batch(
        &mut self,
        rig: &RigId,
        batch: ReceiptBatch,
        now_ms: u64,
    ) -> Result<Vec<Outbound>, LedgerError> {
        self.admit(rig, batch, None, now_ms)
    }

    /// As [`Engine::on_batch`]; `checked` is the key (text form) another replica checked
    /// the batch's signature against: when it is the key pinned here, the check is not
    /// done again.
    pub(super) fn admit(
        &mut self,
        rig: &RigId,
        batch: ReceiptBatch,
        checked: Option<&str>,
        now_ms: u64,
    ) -> Result<Vec<Outbound>, LedgerError> {
        let header = &batch.header;
        let end = header.first_seq.saturating_add(u64::from(header.count));
        let pending = self.pending_seqs.get(rig).map_or(&[][..], Vec::as_slice);
        if pending
            .iter()
            .any(|(a, b)| header.first_seq < *b && *a < end)
        {
            tracing::debug!(rig = %rig, first_seq = header.first_seq, "batch overlaps one waiting for its recomputation; dropped, it is acked when that one is");
            return Ok(vec![]);
        }
        if pending.len() >= MAX_PENDING_BATCHES {
            tracing::debug!(rig = %rig, first_seq = header.first_seq, "the rig has the most batches waiting for recomputation; this one waits for a resend");
            return Ok(vec![]);
        }
        let Some(pinned) = self.keys.get(rig).cloned() else {
            tracing::warn!(rig = %rig, first_seq = header.first_seq, "batch from a rig whose key is not known yet; not acked");
            return Ok(vec![]);
        };
        let high_water = match self.high_water.get(rig) {
            Some(h) => *h,
            None => self.ledger.earnings(rig)?.last_seq,
        };
        if header.first_seq > high_water.saturating_add(SEQ_WINDOW) {
            tracing::warn!(rig = %rig, first_seq = header.first_seq, high_water, "batch far beyond the rig's sequence numbers refused unrecorded");
            return Ok(vec![]);
        }
        // A batch that begins below the rekey's first sequence number holds receipts made
        // under the old key (rigd seals every one of them before it rekeys, so none holds
        // both): refused before its signature is checked, as it may be the old key's.
        if pinned.changed || header.first_seq < pinned.from_seq {
            return self.refuse(rig, &batch, RefusalReason::KeyChanged, high_water, now_ms);
        }
        let checked_elsewhere = checked.is_some_and(|k| k == pinned.key.to_string());
        if checked_elsewhere {
            self.batches_checked_elsewhere = self.batches_checked_elsewhere.saturating_add(1);
            if self.batches_checked_elsewhere == 1 {
                tracing::info!(rig = %rig, first_seq = header.first_seq, "first batch another replica checked admitted");
            }
        } else {
            if let Err(e) = verify::authenticate(rig, &batch, &pinned.key) {
                tracing::warn!(rig = %rig, first_seq = header.first_seq, error = %e, "batch refused unrecorded");
                return Ok(vec![]);
            }
        }
        // Authentic, so only the rig itself can spend its sequence numbers this way.
        if !self.domains.contains(&header.domain) {
            tracing::warn!(rig = %rig, first_seq = header.first_seq, domain = %header.domain, "batch signed for another deployment refused");
            return self.refuse(
                rig,
                &batch,
                RefusalReason::ForeignDomain,
                high_water,
                now_ms,
            );
        }
        if !self.may_judge(rig, now_ms) {
            tracing::debug!(rig = %rig, first_seq = header.first_seq, "the rig's recompute budget is spent; its batch waits for a resend");
            return Ok(vec![]);
        }
        self.scheduler.heard_from(rig);
        self.high_water
            .insert(rig.clone(), high_water.max(end.saturating_sub(1)));
        let recorded = self.ledger.recorded_among(rig, header.first_seq..end)?;
        let mut judged = vec![];
        let mut duplicates = 0;
        // Units judged in this batch.
        let mut taken = HashSet::new();
        let mut units = vec![];
        for (index, item) in batch.items.iter().enumerate() {
            if recorded.contains(&item.receipt.seq) {
                duplicates += 1;
                continue;
            }
            let j = self.judge(rig, item, &taken, now_ms);
            // A unit is judged once per batch: copies of it are refused without a recompute.
            taken.insert(item.receipt.unit);
            let verdict = match j {
                Judged::Done(v) => Some(v),
                Judged::Recompute(kind) => {
                    units.push(kind);
                    None
                }
            };
            judged.push((index, verdict));
        }
        let pending = Pending {
            rig: rig.clone(),
            batch,
            judged,
            duplicates,
        };
        if units.is_empty() {
            return self.settle(pending, Vec::new(), now_ms);
        }
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let header = &pending.batch.header;
        self.pending_seqs
            .entry(rig.clone())
            .or_default()
            .push((header.first_seq, end));
        self.in_recompute
            .extend(pending.judged.iter().filter_map(|(i, v)| {
                v.is_none()
                    .then(|| pending.batch.items.get(*i).map(|it| it.receipt.unit))
                    .flatten()
            }));
        tracing::debug!(rig = %rig, first_seq = header.first_seq, ticket, units = units.len(), "batch waits for its recomputation");
        self.pending.insert(ticket, pending);
        Ok(vec![Outbound::Recompute(Recompute {
            ticket,
            rig: rig.clone(),
            units,
        })])
    }

    /// The outputs of a recomputation the engine asked for: the batch waiting for them is
    /// judged, recorded, applied and acked.
    pub fn recomputed(&mut self, done: Recomputed, now_ms: u64) -> Vec<Outbound> {
        let Some(pending) = self.pending.remove(&done.ticket) else {
            tracing::error!(
                ticket = done.ticket,
                "recomputation for no waiting batch ignored"
            );
            return vec![];
        };
        let first = pending.batch.header.first_seq;
        if let Some(ranges) = self.pending_seqs.get_mut(&pending.rig) {
            ranges.retain(|(a, _)| *a != first);
            if ranges.is_empty() {
                self.pending_seqs.remove(&pending.rig);
            }
        }
        for (i, j) in &pending.judged {
            if let (None, Some(item)) = (j, pending.batch.items.get(*i)) {
                self.in_recompute.remove(&item.receipt.unit);
            }
        }
        let rig = pending.rig.clone();
        self.settle(pending, done.outputs, now_ms)
            .unwrap_or_else(|e| {
                tracing::error!(rig = %rig, error = %e, "ledger write failed; the rig will resend");
                vec![]
            })
    }

    /// A batch the network will never record because it cannot attribute it to the rig's
    /// pinned key: its sequence numbers are recorded as one refused run (a resend changes
    /// nothing) and the rig is told, on its acks topic, to keep the batch as refused and stop
    /// sending it.
    fn refuse(
        &mut self,
        rig: &RigId,
        batch: &ReceiptBatch,
        reason: RefusalReason,
        high_water: u64,
        now_ms: u64,
    ) -> Result<Vec<Outbound>, LedgerError> {
        let header = &batch.header;
        let Some(last_seq) = header
            .first_seq
            .checked_add(u64::from(header.count))
            .and_then(|end| end.checked_sub(1))
            .filter(|last| *last >= header.first_seq)
        else {
            return Ok(vec![]);
        };
        let record = BatchRecord {
            refused: vec![Refused {
                first_seq: header.first_seq,
                last_seq,
                reason: reason.as_str(),
            }],
            ..BatchRecord::default()
        };
        self.ledger.record_batch(rig, &record, now_ms)?;
        self.high_water
            .insert(rig.clone(), high_water.max(last_seq));
        self.earnings_dirty.insert(rig.clone());
        self.batches_refused = self.batches_refused.saturating_add(1);
        tracing::warn!(rig = %rig, first_seq = header.first_seq, last_seq, reason = reason.as_str(), "batch cannot be attributed to the rig's pinned key; recorded as refused and the rig told");
        let refusal = Refusal {
            rig: rig.clone(),
            batches: vec![RefusedBatch {
                first_seq: header.first_seq,
                digest: header.signing_digest(),
                reason,
            }],
        };
        Ok(vec![answer(rig, rigd_protocol::encode(&refusal))])
    }

    /// Turns recomputed outputs into verdicts, then records, applies and acks the batch.
    fn settle(
        &mut self,
        pending: Pending,
        outputs: Vec<Option<UnitOutput>>,
        now_ms: u64,
    ) -> Result<Vec<Outbound>, LedgerError> {
        let Pending {
            rig,
            batch,
            judged,
            duplicates,
        } = pending;
        let mut outputs = outputs.into_iter();
        let mut fresh: Vec<(&ReceiptItem, Verdict)> = vec![];
        for (index, j) in judged {
            let Some(item) = batch.items.get(index) else {
                continue;
            };
            let verdict = match j {
                Some(v) => v,
                None => self.against(&rig, item, outputs.next().flatten()),
            };
            fresh.push((item, verdict));
        }
        // A result shown wrong, or one no honest kernel gives (non-finite, beyond the bounds).
        let caught = fresh.iter().any(|(_, v)| {
            matches!(
                v,
                Verdict::Rejected {
                    why: Rejection::ResultMismatch | Rejection::MalformedOutput,
                    ..
                }
            )
        });
        let forfeited = self.record(&rig, &fresh, duplicates, caught, now_ms)?;
        let mut out = self.apply(&rig, &fresh, now_ms);
        if caught {
            self.penalize(&rig, &forfeited, now_ms);
        }
        let header = &batch.header;
        let ack = Ack {
            rig: rig.clone(),
            batches: vec![AckedBatch {
                first_seq: header.first_seq,
                digest: header.signing_digest(),
            }],
        };
        out.insert(0, answer(&rig, rigd_protocol::encode(&ack)));
        tracing::debug!(rig = %rig, first_seq = header.first_seq, new = fresh.len(), duplicates, "batch recorded");
        self.earnings_dirty.insert(rig.clone());
        out.extend(self.tick(now_ms));
        Ok(out)
    }

    /// The verdict on a recomputed result. A unit another rig completed while this one was
    /// recomputed is already done.
    fn against(&mut self, rig: &RigId, item: &ReceiptItem, want: Option<UnitOutput>) -> Verdict {
        let r = &item.receipt;
        if matches!(self.job.lookup(r.unit), crate::job::Lookup::Done) {
            return Verdict::Rejected {
                why: Rejection::AlreadyDone,
                requeue: false,
            };
        }
        let agrees = want.is_some_and(|w| verify::outputs_agree(&w, &item.output, self.tolerance));
        if agrees {
            *self.verified.entry(rig.clone()).or_default() += 1;
            Verdict::Accepted { verified: true }
        } else {
            tracing::warn!(rig = %rig, seq = r.seq, unit = r.unit, "recomputed result differs");
            Verdict::Rejected {
                why: Rejection::ResultMismatch,
                requeue: true,
            }
        }
    }
    fn micros(&self, work: u64) -> u64 {
        let m = u128::from(work) * u128::from(self.price) / 1_000_000;
        u64::try_from(m).unwrap_or(u64::MAX)
    }

    fn record(
        &mut self,
        rig: &RigId,
        fresh: &[(&ReceiptItem, Verdict)],
        duplicates: u64,
        caught: bool,
        now_ms: u64,
    ) -> Result<Vec<u64>, LedgerError> {
        let credit = self.job.credits_on_accept();
        let id = self.job.id().clone();
        let mut record = BatchRecord {
            duplicates,
            forfeit: caught.then_some((&id, now_ms.saturating_sub(self.trust.audit_ms))),
            suspend: caught.then_some((&id, now_ms.saturating_add(self.trust.suspend_ms))),
            ..BatchRecord::default()
        };
        for (item, verdict) in fresh {
            let r = &item.receipt;
            let entry = match verdict {
                Verdict::Accepted { .. } => {
                    if !credit {
                        record.kept_outputs.push((&id, r.unit, &item.output));
                    }
                    Entry {
                        receipt: r,
                        state: if credit {
                            ReceiptState::Credited
                        } else {
                            ReceiptState::Pending
                        },
                        reason: None,
                        micros: self.micros(r.work),
                    }
                }
                Verdict::Rejected { why, .. } if why.before_checks() => {
                    push_refused(&mut record.refused, r.seq, why.reason());
                    continue;
                }
                Verdict::Rejected { why, .. } => Entry {
                    receipt: r,
                    state: ReceiptState::Rejected,
                    reason: Some(why.reason()),
                    micros: 0,
                },
            };
            record.entries.push(entry);
        }
        let credited = record
            .entries
            .iter()
            .filter(|e| e.state == ReceiptState::Credited)
            .count();
        let forfeited = self.ledger.record_batch(rig, &record, now_ms)?;
        self.receipts_credited = self
            .receipts_credited
            .saturating_add(u64::try_from(credited).unwrap_or(u64::MAX));
        Ok(forfeited)
    }

    fn apply(
        &mut self,
        rig: &RigId,
        fresh: &[(&ReceiptItem, Verdict)],
        now_ms: u64,
    ) -> Vec<Outbound> {
        let mut out = vec![];
        let was_done = self.job.progress().0;
        let mut refused = BTreeMap::new();
        for (item, verdict) in fresh {
            let unit = item.receipt.unit;
            match verdict {
                Verdict::Accepted { verified } => {
                    self.units_done += 1;
                    self.units_verified += u64::from(*verified);
                    self.scheduler.done(unit);
                    match self.job.accept(unit, &item.output) {
                        Ok(Some(stitched)) => out.extend(self.stitched(stitched, now_ms)),
                        Ok(None) => {}
                        Err(e) => tracing::error!(unit, error = %e, "stitching failed"),
                    }
                }
                Verdict::Rejected { why, .. } if why.before_checks() => {
                    self.units_rejected += 1;
                    *refused.entry(why.reason()).or_insert(0u64) += 1;
                }
                Verdict::Rejected { why, requeue } => {
                    self.units_rejected += 1;
                    tracing::info!(rig = %rig, seq = item.receipt.seq, unit, reason = why.reason(), "receipt rejected");
                    if *requeue {
                        self.scheduler.release(unit, rig);
                    }
                }
            }
        }
        for (reason, count) in refused {
            // One line per batch and reason, however many receipts a rig floods.
            tracing::warn!(rig = %rig, reason, count, "receipts refused before any check of their results");
        }
        let done = self.job.progress().0;
        let gemm_tick = self.job.credits_on_accept()
            && done / self.progress_every != was_done / self.progress_every;
        if (gemm_tick || self.job.finished()) && !self.finished_reported {
            self.finished_reported = self.job.finished();
            if self.finished_reported {
                tracing::info!(job = %self.job.id(), "job finished");
            }
            out.extend(self.status_out(now_ms));
        }
        out
    }
}
