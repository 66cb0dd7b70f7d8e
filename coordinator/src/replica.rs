//! A replica of the coordinator that does not lead the job (see [`Ledger::try_lead`]).
//!
//! It takes its share of the receipt batches from the shared subscription
//! ([`topics::shared_receipts`]), checks each batch's signature against the key the ledger
//! pinned for its rig, and forwards the batch to the leader ([`topics::checked`]), which does
//! not check it again. A batch of a rig whose key changed goes on unchecked, for the leader
//! to refuse; one whose signature fails is dropped, as the leader would drop it. The replica
//! records nothing and acks nothing, so one killed at any instant costs only batches their
//! rigs send again. Meanwhile it asks for the lead every [`STANDBY_POLL`]; once it has it, it
//! closes its broker session and the coordinator resumes the job as the leader.

use crate::ledger::{Ledger, LedgerError, RegisteredRig};
use crate::quota::BatchRate;
use crate::{verify, CoordinatorConfig};
use rigd_client::{Backoff, Lifetime, Reconnect, Session, SessionEvent, SessionSpec};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{decode, ReceiptBatch, RigId};
use rumqttc::v5::mqttbytes::QoS;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a replica that does not lead asks whether the job's lead is free.
pub(crate) const STANDBY_POLL: Duration = Duration::from_millis(250);

/// A rig's pinned key read from the ledger is read again after this; at once after a batch
/// fails its check against it (the rig may have been rekeyed).
const KEY_TTL_MS: u64 = 60_000;

/// How often the replica logs what it checked.
const REPORT: Duration = Duration::from_secs(10);

/// What became of the batches since the last report.
#[derive(Debug, Default)]
struct Counts {
    checked: u64,
    unchecked: u64,
    dropped: u64,
}

/// Checks batches against the keys the ledger pinned.
struct Checker {
    rate: BatchRate,
    /// Each rig's registration as last read, and when (ms).
    keys: HashMap<RigId, (RegisteredRig, u64)>,
    counts: Counts,
    forwarded_any: bool,
}

impl Checker {
    /// Where to forward a message on `topic`: the leader's topic and whether the batch was
    /// checked there, or `None` when it is dropped.
    fn check(
        &mut self,
        ledger: &Ledger,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Option<(String, bool)> {
        let Some((rig, Channel::Receipts)) = topics::parse(topic) else {
            return None;
        };
        if !self.rate.take(&rig, now_ms) {
            return None;
        }
        let batch: ReceiptBatch = match decode(payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(rig = %rig, error = %e, "undecodable batch dropped");
                return None;
            }
        };
        let registered = self.registered(ledger, &rig, now_ms)?;
        if registered.key_changed || batch.header.first_seq < registered.from_seq {
            return Some((topics::checked(&rig, None), false));
        }
        match verify::authenticate(&rig, &batch, &registered.key) {
            Ok(()) => Some((topics::checked(&rig, Some(&registered.key)), true)),
            Err(e) => {
                tracing::debug!(rig = %rig, first_seq = batch.header.first_seq, error = %e, "batch failed its check; dropped");
                self.keys.remove(&rig);
                None
            }
        }
    }

    /// The ledger's registration of `rig` (its pinned key), read again when stale; `None`
    /// while the leader has not pinned a key for it (the leader drops its batches too).
    fn registered(&mut self, ledger: &Ledger, rig: &RigId, now_ms: u64) -> Option<RegisteredRig> {
        if let Some((r, read_ms)) = self.keys.get(rig) {
            if now_ms.saturating_sub(*read_ms) < KEY_TTL_MS {
                return Some(r.clone());
            }
        }
        match ledger.registered(rig) {
            Ok(Some(r)) => {
                self.keys.insert(rig.clone(), (r.clone(), now_ms));
                Some(r)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(rig = %rig, error = %e, "the rig's key is not readable; its batch is dropped");
                None
            }
        }
    }
}

/// Serves as a replica that does not lead until this coordinator leads the job (returns the
/// ledger, to resume the job with) or `shutdown` (returns `None`).
pub(crate) async fn check_until_lead(
    config: &CoordinatorConfig,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ledger: Ledger,
    shutdown: &CancellationToken,
) -> Result<Option<Ledger>, LedgerError> {
    let job = config.job.id();
    if ledger.try_lead(job)? {
        tracing::info!(job = %job, "this coordinator leads the job");
        return Ok(Some(ledger));
    }
    tracing::info!(job = %job, "another coordinator leads the job; checking receipt batches for it");
    let client_id = format!(
        "{}-replica-{}-{}",
        config.client_id,
        std::process::id(),
        rigd_client::unix_ms()
    );
    let spec = SessionSpec {
        options: rigd_client::options(
            client_id,
            &config.broker_host,
            config.broker_port,
            tls,
            Lifetime::Fresh,
        ),
        subscriptions: vec![(topics::shared_receipts(), QoS::AtLeastOnce)],
        requests: 4096,
        events: 1024,
        reconnect: Reconnect::Backoff(Backoff::default()),
    };
    let stop = CancellationToken::new();
    let (session, mut rx) = Session::start(spec, stop.clone());
    let _stop_on_return = stop.drop_guard();
    let mut checker = Checker {
        rate: BatchRate::new(config.trust.batches_per_s, config.trust.batch_burst),
        keys: HashMap::new(),
        counts: Counts::default(),
        forwarded_any: false,
    };
    let mut poll = tokio::time::interval(STANDBY_POLL);
    let mut report = tokio::time::interval(REPORT);
    let mut session_over = false;
    let led = loop {
        tokio::select! {
            () = shutdown.cancelled() => break None,
            _ = poll.tick() => {
                if ledger.try_lead(job)? {
                    tracing::info!(job = %job, "this coordinator leads the job");
                    break Some(ledger);
                }
            }
            _ = report.tick() => {
                let c = std::mem::take(&mut checker.counts);
                tracing::info!(checked = c.checked, unchecked = c.unchecked, dropped = c.dropped, "replica load");
            }
            event = rx.recv(), if !session_over => match event {
                Some(SessionEvent::Message(p)) => {
                    let topic = String::from_utf8_lossy(&p.topic);
                    let now_ms = rigd_client::unix_ms();
                    match checker.check(&ledger, &topic, &p.payload, now_ms) {
                        Some((to, checked)) => {
                            if session.client().try_publish(to, QoS::AtLeastOnce, false, p.payload.clone()).is_err() {
                                checker.counts.dropped += 1;
                            } else if !checked {
                                checker.counts.unchecked += 1;
                            } else {
                                checker.counts.checked += 1;
                                if !checker.forwarded_any {
                                    checker.forwarded_any = true;
                                    tracing::info!("first batch checked and forwarded to the leader");
                                }
                            }
                        }
                        None => checker.counts.dropped += 1,
                    }
                }
                Some(SessionEvent::Revoked { reason } | SessionEvent::Failed { reason, .. }) => {
                    tracing::error!(%reason, "broker session ended; standing by without checking batches");
                    session_over = true;
                }
                Some(_) => {}
                None => session_over = true,
            },
        }
    };
    if !session_over && !session.close(Duration::from_secs(2)).await {
        tracing::warn!("the broker did not confirm the disconnect");
    }
    Ok(led)
}
