//! Fleet control: signs one command per rig, publishes them all at once with an MQTT 5
//! response topic and correlation data, and gathers the replies, each rig within its timeout.

use crate::collect::{now_ms, Collect, CollectError, OneOff};
use crate::operator::OperatorKey;
use bytes::Bytes;
use rigd_client::SessionEvent;
use rigd_protocol::command::{Action, ActionKind, CommandReply, Diagnostics, Outcome};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{decode, encode, RigId};
use ring::rand::{SecureRandom, SystemRandom};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;
use tokio::time::Instant;

/// How to send.
pub struct Send<'a> {
    /// The broker.
    pub broker: &'a Collect,
    /// The operator's key.
    pub key: &'a OperatorKey,
    /// Each rig's wait for its final reply.
    pub timeout: Duration,
    /// How long the command stays valid.
    pub ttl_ms: u64,
    /// Print progress lines on stderr.
    pub progress: bool,
}

/// One rig's answer.
#[derive(Debug, Clone, Serialize)]
pub struct RigResult {
    /// The rig.
    pub rig: String,
    /// `accepted`, `completed`, `rejected`, `failed`, `unsupported`, `diagnostics` or
    /// `timeout`.
    pub outcome: &'static str,
    /// What the rig said.
    pub detail: String,
    /// Time from sending to the final reply, ms.
    pub elapsed_ms: Option<u64>,
    /// The diagnostics report, for `diag`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Diagnostics>,
}

impl RigResult {
    /// Whether the rig did what it was asked.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, "accepted" | "completed" | "diagnostics")
    }
}

/// What one `rigctl` fleet command did, rig by rig.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// The action.
    pub action: String,
    /// One line per rig, in the order given.
    pub rigs: Vec<RigResult>,
}

fn result(rig: &RigId, outcome: &Outcome, elapsed_ms: Option<u64>) -> RigResult {
    let (name, detail, diagnostics) = match outcome {
        Outcome::Accepted(d) => ("accepted", d.clone(), None),
        Outcome::Completed(d) => ("completed", d.clone(), None),
        Outcome::Rejected(r) => ("rejected", r.to_string(), None),
        Outcome::Failed(d) => ("failed", d.clone(), None),
        Outcome::Unsupported(d) => ("unsupported", d.clone(), None),
        Outcome::Diagnostics(d) => (
            "diagnostics",
            format!(
                "rigd {}, key store {}, {} cards (levels {:?}), journaled {}, unacked {}, held {}, commands {} accepted / {} refused",
                d.agent_version,
                d.key_health,
                d.cards.len(),
                d.cards.iter().map(|c| c.governor_level).collect::<Vec<_>>(),
                d.seq_journaled,
                d.receipts_unacked,
                d.held,
                d.commands_accepted,
                d.commands_rejected
            ),
            Some((**d).clone()),
        ),
    };
    RigResult {
        rig: rig.to_string(),
        outcome: name,
        detail,
        elapsed_ms,
        diagnostics,
    }
}

/// A nonce above any this operator sent before from this machine: the time in microseconds.
fn nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Sends `action` to every rig of `rigs` and waits for each one's final reply.
pub async fn send(
    s: &Send<'_>,
    rigs: &[RigId],
    action: &Action,
) -> Result<Vec<RigResult>, CollectError> {
    let filter = match rigs {
        [one] => topics::rig(one, Channel::Replies),
        _ => topics::all_rigs(Channel::Replies),
    };
    let id = format!("rigctl-cmd-{}-{}", std::process::id(), now_ms() % 1_000_000);
    let mut session = OneOff::start(
        s.broker,
        id,
        vec![(filter, QoS::AtLeastOnce)],
        rigs.len() + 16,
    );
    let connect_by = Instant::now() + s.broker.wait;
    // Commands go out once the replies' subscription is in place.
    loop {
        match session.next_before(connect_by).await? {
            Some(SessionEvent::Subscribed) => break,
            Some(_) => {}
            None => {
                return Err(CollectError::Unreachable {
                    addr: format!("{}:{}", s.broker.host, s.broker.port),
                    reason: format!("no subscription within {} ms", s.broker.wait.as_millis()),
                })
            }
        }
    }
    let rng = SystemRandom::new();
    let nonce = nonce();
    let issued = now_ms();
    let mut waiting: HashMap<Bytes, (usize, Instant)> = HashMap::new();
    for (i, rig) in rigs.iter().enumerate() {
        let mut correlation = [0u8; 16];
        rng.fill(&mut correlation)
            .map_err(|_| CollectError::Subscribe("the system random generator failed".into()))?;
        let correlation = Bytes::copy_from_slice(&correlation);
        let cmd = s
            .key
            .sign(rig.clone(), action.clone(), nonce, issued, s.ttl_ms);
        let properties = PublishProperties {
            response_topic: Some(topics::rig(rig, Channel::Replies)),
            correlation_data: Some(correlation.clone()),
            ..PublishProperties::default()
        };
        session
            .client()
            .try_publish_with_properties(
                topics::rig(rig, Channel::Commands),
                QoS::AtLeastOnce,
                false,
                encode(&cmd),
                properties,
            )
            .map_err(|e| CollectError::Subscribe(e.to_string()))?;
        waiting.insert(correlation, (i, Instant::now()));
    }
    let kind = action.kind();
    let mut results: Vec<Option<RigResult>> = vec![None; rigs.len()];
    let deadline = Instant::now() + s.timeout;
    let mut next_note = Instant::now() + Duration::from_secs(2);
    while !waiting.is_empty() {
        let Some(event) = session.next_before(deadline.min(next_note)).await? else {
            if Instant::now() >= deadline {
                break;
            }
            next_note = Instant::now() + Duration::from_secs(2);
            if s.progress {
                eprintln!("waiting for {} of {} rigs", waiting.len(), rigs.len());
            }
            continue;
        };
        let SessionEvent::Message(p) = event else {
            continue;
        };
        let Some(correlation) = p
            .properties
            .as_ref()
            .and_then(|p| p.correlation_data.clone())
        else {
            continue;
        };
        let Some(&(i, sent)) = waiting.get(&correlation) else {
            continue;
        };
        let rig = &rigs[i];
        let reply = match decode::<CommandReply>(&p.payload) {
            Ok(r) if &r.rig == rig => r,
            Ok(r) => {
                tracing::warn!(rig = %rig, other = %r.rig, "reply from another rig ignored");
                continue;
            }
            Err(e) => {
                tracing::warn!(rig = %rig, error = %e, "malformed reply ignored");
                continue;
            }
        };
        let elapsed = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
        let line = result(rig, &reply.outcome, Some(elapsed));
        if s.progress {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{}: {}: {}", line.rig, line.outcome, line.detail);
        }
        if reply.outcome.is_final(kind) {
            waiting.remove(&correlation);
            results[i] = Some(line);
        }
    }
    session.close().await;
    Ok(rigs
        .iter()
        .zip(results)
        .map(|(rig, r)| {
            r.unwrap_or_else(|| RigResult {
                rig: rig.to_string(),
                outcome: "timeout",
                detail: format!("no final reply within {} ms", s.timeout.as_millis()),
                elapsed_ms: None,
                diagnostics: None,
            })
        })
        .collect())
}

/// The kind's name for reports.
pub fn action_name(kind: ActionKind) -> String {
    kind.as_str().replace('_', "-")
}
