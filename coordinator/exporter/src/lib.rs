//! rigd-exporter: the fleet's figures for Prometheus. It subscribes to every rig's retained
//! status and telemetry and to the coordinator's progress, keeps the last of each
//! ([`fleet::Fleet`], bounded in rigs), and serves them on `GET /metrics` ([`http`]), one
//! series per card under dcgm-exporter's names and labels ([`metrics`]).
//!
//! Rigs are untrusted: a message that does not decode, names another rig than its topic, or
//! would push the fleet past its rig limit is refused, logged at debug level and counted in
//! `rigd_exporter_messages_refused_total{reason}`; it changes nothing.

pub mod fleet;
pub mod follow;
pub mod http;
pub mod metrics;
#[cfg(test)]
mod metrics_tests;

use fleet::Fleet;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::sync::Mutex;

/// The exporter's state: the fleet as heard and the exporter's own counters.
pub struct Exporter {
    fleet: Mutex<Fleet>,
    stale_after_ms: u64,
    own: Registry,
    messages: IntCounterVec,
    refused: IntCounterVec,
    rigs: IntGauge,
}

impl Exporter {
    /// An exporter tracking at most `max_rigs` rigs whose cards' series disappear once their
    /// telemetry is older than `stale_after_ms`.
    pub fn new(max_rigs: usize, stale_after_ms: u64) -> prometheus::Result<Self> {
        let own = Registry::new();
        let messages = IntCounterVec::new(
            Opts::new(
                "rigd_exporter_messages_total",
                "Messages taken, by channel.",
            ),
            &["channel"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "rigd_exporter_messages_refused_total",
                "Messages refused, by reason: topic, frame, rig_mismatch, too_many_rigs.",
            ),
            &["reason"],
        )?;
        let rigs = IntGauge::new("rigd_exporter_rigs", "Rigs tracked.")?;
        own.register(Box::new(messages.clone()))?;
        own.register(Box::new(refused.clone()))?;
        own.register(Box::new(rigs.clone()))?;
        Ok(Self {
            fleet: Mutex::new(Fleet::new(max_rigs)),
            stale_after_ms,
            own,
            messages,
            refused,
            rigs,
        })
    }

    /// Takes one message from the broker, received at `now_ms`.
    pub fn receive(&self, topic: &str, payload: &[u8], now_ms: u64) {
        let mut fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        match fleet.apply(topic, payload, now_ms) {
            Ok(channel) => self.messages.with_label_values(&[channel]).inc(),
            Err(refused) => {
                tracing::debug!(topic, bytes = payload.len(), %refused, "message refused");
                self.refused.with_label_values(&[refused.reason()]).inc();
            }
        }
        self.rigs
            .set(i64::try_from(fleet.len()).unwrap_or(i64::MAX));
    }

    /// The exposition text at `now_ms`. The fleet lock is held while the families are built,
    /// not while they are encoded, so messages keep flowing during a large scrape.
    pub fn scrape(&self, now_ms: u64) -> prometheus::Result<String> {
        let families = {
            let fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
            metrics::families(&fleet, now_ms, self.stale_after_ms)
        };
        metrics::encode(families, &self.own)
    }
}
