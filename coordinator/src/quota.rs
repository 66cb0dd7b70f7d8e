//! The per-rig batch rate: a token bucket per rig, checked by the topic alone before a batch
//! is decoded, so that a rig flooding batches costs next to nothing per frame. The leader and
//! every replica that checks batches for it keep their own.

use rigd_protocol::RigId;
use std::collections::HashMap;

/// Batch tokens per rig: refilled at `per_s`, at most `burst` saved.
#[derive(Debug)]
pub(crate) struct BatchRate {
    per_s: u32,
    burst: u32,
    /// Each rig's (thousandths of a token, when last refilled, ms).
    buckets: HashMap<RigId, (u64, u64)>,
}

impl BatchRate {
    /// A full bucket for every rig first seen.
    pub(crate) fn new(per_s: u32, burst: u32) -> Self {
        Self {
            per_s,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Takes one of `rig`'s tokens; `false` when it has none (its batch is dropped).
    pub(crate) fn take(&mut self, rig: &RigId, now_ms: u64) -> bool {
        // Tokens are counted in thousandths so that a refill of a few milliseconds counts.
        let cap = u64::from(self.burst).saturating_mul(1000);
        let bucket = self.buckets.entry(rig.clone()).or_insert((cap, now_ms));
        let earned = now_ms
            .saturating_sub(bucket.1)
            .saturating_mul(u64::from(self.per_s));
        bucket.0 = bucket.0.saturating_add(earned).min(cap);
        bucket.1 = now_ms;
        if bucket.0 < 1000 {
            return false;
        }
        bucket.0 -= 1000;
        true
    }
}
