//! Judging one receipt of a batch (lease, job, digests, form, recomputation on probation or
//! when sampled) and what a caught wrong result costs its rig.

use super::{Engine, Verdict};
use crate::job::Lookup;
use crate::verify::{self, Rejection};
use rigd_protocol::{ReceiptItem, RigId, UnitKind, UnitOutput};
use std::collections::HashSet;

impl Engine {
    pub(super) fn judge(
        &mut self,
        rig: &RigId,
        item: &ReceiptItem,
        taken: &HashSet<u64>,
        now_ms: u64,
    ) -> Verdict {
        let r = &item.receipt;
        let reject = |why| Verdict::Rejected {
            why,
            requeue: false,
        };
        let retry = |why| Verdict::Rejected { why, requeue: true };
        if &r.job != self.job.id() {
            return reject(Rejection::UnknownJob);
        }
        let expected = match self.job.lookup(r.unit) {
            Lookup::Unknown => return reject(Rejection::NotAssigned),
            Lookup::Done => return reject(Rejection::AlreadyDone),
            Lookup::Open(_) if taken.contains(&r.unit) => return reject(Rejection::AlreadyDone),
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
            return Verdict::Accepted { verified: false };
        }
        let Some(unit) = self.job.work_unit(r.unit, r.attempt) else {
            return reject(Rejection::NotAssigned);
        };
        if self.agrees(&unit.kind, &item.output) {
            *self.verified.entry(rig.clone()).or_default() += 1;
            Verdict::Accepted { verified: true }
        } else {
            tracing::warn!(rig = %rig, seq = r.seq, unit = r.unit, "recomputed result differs");
            retry(Rejection::ResultMismatch)
        }
    }

    /// A result of `rig` was caught wrong: its credit of the audit window is forfeited (in
    /// the batch's transaction, `forfeited` its units), those units go out again, and the
    /// rig is suspended from the job for `suspend_ms`, then back on probation.
    pub(super) fn penalize(&mut self, rig: &RigId, forfeited: &[u64], now_ms: u64) {
        tracing::warn!(rig = %rig, forfeited = forfeited.len(), suspend_ms = self.trust.suspend_ms, "a wrong result caught: the rig's unaudited credit is forfeited and it is suspended from the job");
        for unit in forfeited {
            self.job.reopen(*unit);
        }
        self.scheduler.add_units(forfeited.iter().copied());
        self.units_done = self.units_done.saturating_sub(forfeited.len() as u64);
        self.scheduler
            .suspend(rig, now_ms.saturating_add(self.trust.suspend_ms));
        self.verified.remove(rig);
        self.earnings_dirty.insert(rig.clone());
    }

    fn agrees(&self, kind: &UnitKind, output: &UnitOutput) -> bool {
        match verify::recompute(kind) {
            Ok(want) => verify::outputs_agree(&want, output, self.tolerance),
            Err(e) => {
                tracing::error!(error = %e, "recomputation failed");
                false
            }
        }
    }
}
