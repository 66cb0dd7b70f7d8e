//! Judging one receipt of a batch (lease, job, digests, form; whether its result is
//! recomputed: on probation or when sampled), the per-rig quotas, and what a caught wrong result costs its rig.

use super::{Engine, Verdict};
use crate::job::Lookup;
use crate::verify::{self, Rejection};
use rigd_protocol::{ReceiptItem, RigId, UnitKind};
use std::collections::HashSet;

/// How far a receipt was judged without recomputing it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Judged {
    /// Decided.
    Done(Verdict),
    /// Its result is recomputed first (the unit as assigned).
    Recompute(UnitKind),
}

impl Engine {
    pub(super) fn judge(
        &mut self,
        rig: &RigId,
        item: &ReceiptItem,
        taken: &HashSet<u64>,
        now_ms: u64,
    ) -> Judged {
        let r = &item.receipt;
        let reject = |why| {
            Judged::Done(Verdict::Rejected {
                why,
                requeue: false,
            })
        };
        let retry = |why| Judged::Done(Verdict::Rejected { why, requeue: true });
        if &r.job != self.job.id() {
            return reject(Rejection::UnknownJob);
        }
        let expected = match self.job.lookup(r.unit) {
            Lookup::Unknown => return reject(Rejection::NotAssigned),
            Lookup::Done => return reject(Rejection::AlreadyDone),
            Lookup::Open(_) if taken.contains(&r.unit) || self.in_recompute.contains(&r.unit) => {
                return reject(Rejection::AlreadyDone)
            }
            Lookup::Open(e) => e,
        };
        if !self.scheduler.leased_to(r.unit, r.attempt, rig, now_ms) {
            return reject(Rejection::NotLeased);
        }
        if let Err(why) = verify::check_receipt(r, &item.output, &expected) {
            return retry(why);
        }
        if !self.job.output_fits(r.unit, &item.output) {
            return retry(Rejection::MalformedOutput);
        }
        let on_probation = self.verified.get(rig).copied().unwrap_or(0) < self.trust.trust_after;
        if !on_probation && !self.sampler.pick(rig, r.seq) {
            return Judged::Done(Verdict::Accepted { verified: false });
        }
        let Some(unit) = self.job.work_unit(r.unit, r.attempt) else {
            return reject(Rejection::NotAssigned);
        };
        self.charge(rig, rigd_kernels::unit::work(&unit.kind), now_ms);
        Judged::Recompute(unit.kind)
    }

    /// A result of `rig` was caught wrong: its credit of the audit window is forfeited (in
    /// the batch's transaction, `forfeited` its units), those still open to a new result
    /// (GEMM units, MLP shards of the step not stitched yet) go out again, and the rig is
    /// suspended from the job for `suspend_ms`, then back on probation.
    pub(super) fn penalize(&mut self, rig: &RigId, forfeited: &[u64], now_ms: u64) {
        let reopened: Vec<u64> = forfeited
            .iter()
            .copied()
            .filter(|u| self.job.reopen(*u))
            .collect();
        tracing::warn!(rig = %rig, forfeited = forfeited.len(), reopened = reopened.len(), suspend_ms = self.trust.suspend_ms, "a wrong result caught: the rig's unaudited credit is forfeited and it is suspended from the job");
        self.units_done = self.units_done.saturating_sub(reopened.len() as u64);
        self.scheduler.add_units(reopened);
        self.scheduler
            .suspend(rig, now_ms.saturating_add(self.trust.suspend_ms));
        self.verified.remove(rig);
        self.earnings_dirty.insert(rig.clone());
    }

    /// Whether `rig` may have a batch judged now: its recompute budget (refilled at
    /// `recompute_flops_per_s`, at most `recompute_burst_flops` saved) is not overdrawn. A
    /// batch refused here is neither recorded nor acked; the rig sends it again later.
    pub(super) fn may_judge(&mut self, rig: &RigId, now_ms: u64) -> bool {
        self.refill(rig, now_ms) >= 0
    }

    fn refill(&mut self, rig: &RigId, now_ms: u64) -> i64 {
        let (rate, burst) = (
            self.trust.recompute_flops_per_s,
            self.trust.recompute_burst_flops,
        );
        let budget = self
            .budgets
            .entry(rig.clone())
            .or_insert((i64::try_from(burst).unwrap_or(i64::MAX), now_ms));
        let earned = u128::from(now_ms.saturating_sub(budget.1)) * u128::from(rate) / 1000;
        let earned = i64::try_from(earned).unwrap_or(i64::MAX);
        let cap = i64::try_from(burst).unwrap_or(i64::MAX);
        budget.0 = budget.0.saturating_add(earned).min(cap);
        budget.1 = now_ms;
        budget.0
    }

    /// Charges `rig` for recomputing `flops` of its work.
    fn charge(&mut self, rig: &RigId, flops: u64, now_ms: u64) {
        self.refill(rig, now_ms);
        if let Some(budget) = self.budgets.get_mut(rig) {
            budget.0 = budget
                .0
                .saturating_sub(i64::try_from(flops).unwrap_or(i64::MAX));
        }
    }
}
