//! The supervisor's side of identity continuity: the coordinator's retained earnings for
//! this rig say how far the network recorded its receipts; a fresh journal signs nothing
//! until it has heard them (or [`FLOOR_WAIT`] passed without them: a network that never
//! recorded the rig may publish none), and continues above that mark when its own history
//! is gone. And the network's refusals: batches it cannot attribute to the rig's pinned key
//! (after a TPM or token was replaced) are kept in the journal as refused, not sent again.

use super::{journal_op, Rig};
use crate::batcher::Batcher;
use crate::journal::Continuity;
use crate::supervisor::Input;
use crate::RunError;
use rigd_protocol::{decode, Earnings, Refusal};
use std::time::{Duration, Instant};

/// How long a fresh journal waits for the network's record before it signs anyway.
pub(super) const FLOOR_WAIT: Duration = Duration::from_secs(10);

impl Rig {
    /// [`FLOOR_WAIT`] passed without the network's record of the rig: signing starts.
    pub(super) fn floor_wait_over(&mut self) {
        self.awaiting_floor = false;
        tracing::warn!(wait_s = FLOOR_WAIT.as_secs(), "no record of this rig from the network yet: signing starts (should this journal be a replacement, the first receipts may count as duplicates)");
        self.start_seal();
    }

    /// The coordinator's earnings for this rig arrived.
    pub(super) async fn on_earnings(&mut self, payload: &[u8]) -> Result<(), RunError> {
        let earnings = match decode::<Earnings>(payload) {
            Ok(e) if e.rig == self.rig => e,
            Ok(e) => {
                tracing::warn!(other = %e.rig, "refused earnings of another rig");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused an earnings message");
                return Ok(());
            }
        };
        let recorded = earnings.last_seq;
        // Batches the lost journal had sent may still be on their way to the coordinator (and
        // the retained earnings may lag by a publish): new receipts start above the record by
        // the most the lost journal can have had unacknowledged.
        let margin = self.config.max_unacked_receipts;
        let outcome =
            journal_op(&self.journal, move |j| j.continue_above(recorded, margin)).await?;
        match outcome {
            Continuity::Continuous => {}
            Continuity::Renumbered { floor, moved } => {
                tracing::warn!(
                    recorded,
                    floor,
                    moved,
                    "the network has recorded receipts of this rig that this journal does not hold (a lost or replaced journal with the same key): receipts continue above it"
                );
                let stats = journal_op(&self.journal, |j| j.stats()).await?;
                self.batcher = Batcher::new(
                    self.config.batch_max_receipts,
                    Duration::from_millis(self.config.batch_max_age_ms),
                    stats.sealed_seq,
                    stats.last_seq,
                    Instant::now(),
                )
                .with_window(Duration::from_millis(self.config.batch_window_ms));
                self.step(Input::Journal(stats)).await?;
            }
            Continuity::Signed { recorded } => tracing::error!(
                recorded,
                last_seq = self.stats().last_seq,
                "the network has recorded receipts of this rig beyond this journal's signed batches; those batches count as duplicates there"
            ),
        }
        if self.awaiting_floor {
            self.awaiting_floor = false;
            tracing::info!(
                recorded,
                "the network's record of this rig is known: signing starts"
            );
            self.start_seal();
        }
        Ok(())
    }

    /// The coordinator refused batches for good: the journal keeps them as refused and they
    /// are not sent again.
    pub(super) async fn on_refusal(&mut self, topic: &str, payload: &[u8]) -> Result<(), RunError> {
        let refusal = match decode::<Refusal>(payload) {
            Ok(r) if r.rig == self.rig => r,
            Ok(r) => {
                tracing::warn!(%topic, other = %r.rig, "ignored a refusal for another rig");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "ignored a malformed refusal");
                return Ok(());
            }
        };
        for b in &refusal.batches {
            tracing::error!(first_seq = b.first_seq, reason = b.reason.as_str(), "the network refused a receipt batch for good; it is kept in the journal as refused and not sent again");
        }
        let first_seqs: Vec<u64> = refusal.batches.iter().map(|b| b.first_seq).collect();
        let mismatched = self
            .settle(&first_seqs, move |j| j.refuse(&refusal.batches))
            .await?;
        if mismatched > 0 {
            tracing::warn!(%topic, mismatched, "ignored refusals naming a batch with another digest than the one held");
        }
        Ok(())
    }
}
