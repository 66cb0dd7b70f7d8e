//! The receipt batcher: decides when journaled receipts are sealed into a batch and how many,
//! so that signing never holds back work. Pure: it takes counts, durations and `now`, and
//! returns decisions; the supervisor does the journaling and the signing.
//!
//! Receipts are durable (journaled) before they are batched. One signature is in flight at a
//! time, off the journal's commit path; while it runs, cards keep computing and receipts keep
//! being journaled. A batch is sealed when the key is free and either
//! - the receipts waiting reach the target size: what arrives, at the measured arrival rate,
//!   during two signatures at the key's measured signing time (so the key is busy about half
//!   the time at most), within `1..=batch_max` (`batch_max_receipts`); or
//! - the oldest waiting receipt is `max_age` old (`batch_max_age_ms`).
//!
//! A fast key thus signs every group commit at once; a TPM at a few signatures per second
//! signs batches of hundreds. For settlement, where every signature costs gas to check, a
//! window (`batch_window_ms`) makes a batch cover a span of time instead: nothing is sealed
//! before its oldest receipt is that old (or `batch_max` receipts wait), so one signature
//! covers every receipt of the window whatever the key's speed. Receipts journaled before a restart count as old: they are
//! sealed at once. A failed signature is tried again after [`RETRY_AFTER`].

use std::time::{Duration, Instant};

/// How long after a failed signature the batcher tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The shortest window over which the arrival rate is measured.
const RATE_WINDOW: Duration = Duration::from_millis(250);

/// What the supervisor should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Seal the oldest `n` waiting receipts into a batch and sign it.
    Seal(u32),
    /// Nothing before this instant (unless receipts arrive).
    WaitUntil(Instant),
    /// Nothing to do: no receipt waits, or a signature is in flight.
    Idle,
}

/// The batcher's state. Receipts are counted by sequence number (journaled through, sealed
/// through), so the counts cannot drift from the journal's.
#[derive(Debug, Clone)]
pub struct Batcher {
    batch_max: u32,
    max_age: Duration,
    window: Duration,
    journaled: u64,
    sealed: u64,
    oldest: Option<Instant>,
    /// When the signature in flight started, and the last seq journaled then.
    in_flight: Option<(Instant, u64)>,
    retry_at: Option<Instant>,
    sign_time: Option<Duration>,
    rate_per_s: f64,
    window_start: Instant,
    window_count: u64,
}

impl Batcher {
    /// A batcher for a journal whose receipts are sealed through `sealed` and journaled
    /// through `journaled` (those in between are sealed at once).
    pub fn new(
        batch_max: u32,
        max_age: Duration,
        sealed: u64,
        journaled: u64,
        now: Instant,
    ) -> Self {
        Self {
            batch_max: batch_max.max(1),
            max_age,
            window: Duration::ZERO,
            journaled: journaled.max(sealed),
            sealed,
            oldest: (journaled > sealed).then(|| now.checked_sub(max_age).unwrap_or(now)),
            in_flight: None,
            retry_at: None,
            sign_time: None,
            rate_per_s: 0.0,
            window_start: now,
            window_count: 0,
        }
    }

    /// Batches cover `window` each: none is sealed before its oldest receipt is that old,
    /// unless `batch_max` receipts wait. Receipts journaled before this batcher existed are
    /// sealed at once, as without a window.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        if let Some(oldest) = self.oldest.as_mut() {
            *oldest = oldest.checked_sub(window).unwrap_or(*oldest);
        }
        self
    }

    /// Receipts are journaled through sequence number `last_seq` at `now`.
    pub fn journaled(&mut self, last_seq: u64, now: Instant) {
        if last_seq <= self.journaled {
            return;
        }
        self.window_count += last_seq - self.journaled;
        self.journaled = last_seq;
        if self.journaled > self.sealed {
            self.oldest.get_or_insert(now);
        }
        let span = now.saturating_duration_since(self.window_start);
        if span >= RATE_WINDOW {
            let rate = self.window_count as f64 / span.as_secs_f64();
            self.rate_per_s = if self.rate_per_s == 0.0 {
                rate
            } else {
                0.5 * (self.rate_per_s + rate)
            };
            self.window_start = now;
            self.window_count = 0;
        }
    }

    /// The batch size sealed without waiting for `max_age`.
    pub fn target(&self) -> u32 {
        let sign_s = self.sign_time.map_or(0.0, |d| d.as_secs_f64());
        let n = (2.0 * self.rate_per_s * sign_s).ceil();
        if n >= f64::from(self.batch_max) {
            self.batch_max
        } else {
            (n as u32).max(1)
        }
    }

    /// The next step. A `Seal` marks the signature in flight until [`Self::signed`] or
    /// [`Self::failed`].
    pub fn poll(&mut self, now: Instant) -> Decision {
        let waiting = self.waiting();
        if self.in_flight.is_some() || waiting == 0 {
            return Decision::Idle;
        }
        if let Some(at) = self.retry_at {
            if now < at {
                return Decision::WaitUntil(at);
            }
            self.retry_at = None;
        }
        let oldest = self.oldest.unwrap_or(now);
        let due = oldest + self.max_age.max(self.window);
        let full = waiting >= u64::from(self.batch_max);
        let sized = waiting >= u64::from(self.target()) && now >= oldest + self.window;
        if full || sized || now >= due {
            self.in_flight = Some((now, self.journaled));
            Decision::Seal(u32::try_from(waiting).map_or(self.batch_max, |w| w.min(self.batch_max)))
        } else {
            Decision::WaitUntil(due)
        }
    }

    /// Receipts are sealed through sequence number `sealed` (the batch in flight is signed and
    /// stored); its signature took `took`.
    pub fn signed(&mut self, sealed: u64, took: Duration, now: Instant) {
        let (started, journaled_then) = self.in_flight.take().unwrap_or((now, self.journaled));
        self.sealed = self.sealed.max(sealed);
        self.journaled = self.journaled.max(self.sealed);
        self.oldest = if self.journaled == self.sealed {
            None
        } else if self.sealed >= journaled_then {
            // Everything waiting arrived while the batch was being signed.
            Some(self.oldest.map_or(started, |o| o.max(started)))
        } else {
            // More waited than one batch holds: the rest is as old as before.
            self.oldest.or(Some(started))
        };
        self.sign_time = Some(match self.sign_time {
            None => took,
            Some(t) => (t + took) / 2,
        });
    }

    /// The signature failed; the receipts stay waiting and are tried again later.
    pub fn failed(&mut self, now: Instant) {
        self.in_flight = None;
        self.retry_at = Some(now + RETRY_AFTER);
    }

    /// Receipts journaled and not yet in a signed batch.
    pub fn waiting(&self) -> u64 {
        self.journaled - self.sealed
    }

    /// Whether a signature is in flight.
    pub fn signing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The measured signing time, once a batch was signed.
    pub fn sign_time(&self) -> Option<Duration> {
        self.sign_time
    }
}

#[cfg(test)]
#[path = "batcher_tests.rs"]
mod tests;
