//! What the exporter has heard from the broker: the last status and telemetry of each rig and
//! the coordinator's progress, bounded in the number of rigs. Every message is decoded and
//! checked here; a bad one is refused with its reason and changes nothing.

use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{decode, CoordinatorStatus, Frame, FrameError, RigId, RigStatus, Telemetry};
use std::collections::HashMap;

/// Why a message was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A topic the exporter does not read.
    #[error("not a status, telemetry or coordinator topic")]
    Topic,
    /// The payload is not a valid frame of the topic's kind.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame names another rig than its topic.
    #[error("a message of rig {message} on the topic of rig {topic}")]
    RigMismatch {
        /// The rig of the topic.
        topic: RigId,
        /// The rig the message names.
        message: RigId,
    },
    /// As many rigs as allowed are tracked already.
    #[error("{max} rigs are tracked already; rig {rig} is not")]
    Full {
        /// The rig left out.
        rig: RigId,
        /// The limit.
        max: usize,
    },
}

impl Refused {
    /// A short name of the reason, for the refusal counter's label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Topic => "topic",
            Refused::Frame(_) => "frame",
            Refused::RigMismatch { .. } => "rig_mismatch",
            Refused::Full { .. } => "too_many_rigs",
        }
    }
}

/// One rig as last heard.
#[derive(Debug, Default)]
pub struct RigSeen {
    /// Its retained status.
    pub status: Option<RigStatus>,
    /// Its last telemetry sample, and when the exporter received it (its own clock, Unix ms).
    pub telemetry: Option<(Telemetry, u64)>,
}

/// The fleet as heard.
#[derive(Debug)]
pub struct Fleet {
    rigs: HashMap<RigId, RigSeen>,
    coordinator: Option<CoordinatorStatus>,
    max_rigs: usize,
}

impl Fleet {
    /// An empty fleet that tracks at most `max_rigs` rigs.
    pub fn new(max_rigs: usize) -> Self {
        Self {
            rigs: HashMap::new(),
            coordinator: None,
            max_rigs,
        }
    }

    /// The topic filters the exporter subscribes to.
    pub fn subscriptions() -> Vec<String> {
        vec![
            topics::all_rigs(Channel::Status),
            topics::all_rigs(Channel::Telemetry),
            topics::COORDINATOR_STATUS.to_owned(),
        ]
    }

    /// Takes one message received at `now_ms`. An empty payload (a cleared retained message)
    /// forgets what it replaced. Returns the channel it was read as.
    pub fn apply(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<&'static str, Refused> {
        if topic == topics::COORDINATOR_STATUS {
            self.coordinator = match payload {
                [] => None,
                _ => Some(decode::<CoordinatorStatus>(payload)?),
            };
            return Ok("coordinator");
        }
        let (rig, channel) = topics::parse(topic).ok_or(Refused::Topic)?;
        match channel {
            Channel::Status => {
                let status = (!payload.is_empty())
                    .then(|| decode_for::<RigStatus>(&rig, payload, |s| &s.rig))
                    .transpose()?;
                self.update(rig, |seen| seen.status = status)?;
            }
            Channel::Telemetry => {
                let telemetry = (!payload.is_empty())
                    .then(|| decode_for::<Telemetry>(&rig, payload, |t| &t.rig))
                    .transpose()?;
                self.update(rig, |seen| seen.telemetry = telemetry.map(|t| (t, now_ms)))?;
            }
            _ => return Err(Refused::Topic),
        }
        Ok(channel.as_str())
    }

    fn update(&mut self, rig: RigId, change: impl FnOnce(&mut RigSeen)) -> Result<(), Refused> {
        if !self.rigs.contains_key(&rig) && self.rigs.len() >= self.max_rigs {
            let max = self.max_rigs;
            return Err(Refused::Full { rig, max });
        }
        let seen = self.rigs.entry(rig.clone()).or_default();
        change(seen);
        if seen.status.is_none() && seen.telemetry.is_none() {
            self.rigs.remove(&rig);
        }
        Ok(())
    }

    /// Every rig heard, in no particular order.
    pub fn rigs(&self) -> impl Iterator<Item = (&RigId, &RigSeen)> {
        self.rigs.iter()
    }

    /// The rig `rig` as last heard, if it was.
    pub fn get(&self, rig: &RigId) -> Option<&RigSeen> {
        self.rigs.get(rig)
    }

    /// Rigs tracked.
    pub fn len(&self) -> usize {
        self.rigs.len()
    }

    /// Whether no rig is tracked.
    pub fn is_empty(&self) -> bool {
        self.rigs.is_empty()
    }

    /// The coordinator's last progress.
    pub fn coordinator(&self) -> Option<&CoordinatorStatus> {
        self.coordinator.as_ref()
    }
}

fn decode_for<T: Frame>(
    topic_rig: &RigId,
    payload: &[u8],
    rig_of: impl Fn(&T) -> &RigId,
) -> Result<T, Refused> {
    let message = decode::<T>(payload)?;
    if rig_of(&message) != topic_rig {
        return Err(Refused::RigMismatch {
            topic: topic_rig.clone(),
            message: rig_of(&message).clone(),
        });
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_protocol::{encode, MAX_FRAME_BYTES, WIRE_VERSION};
    use rigd_testkit::fixtures::{coordinator, rig_id, status, telemetry};

    fn topic(rig: &str, channel: Channel) -> String {
        topics::rig(&rig_id(rig), channel)
    }

    #[test]
    fn status_telemetry_and_progress_are_kept_and_cleared_by_an_empty_payload() {
        let mut fleet = Fleet::new(10);
        let st = encode(&status("rig-a", 2));
        let tm = encode(&telemetry("rig-a", 2));
        let co = encode(&coordinator(false));
        assert_eq!(
            fleet.apply(&topic("rig-a", Channel::Status), &st, 5).ok(),
            Some("status")
        );
        assert!(fleet
            .apply(&topic("rig-a", Channel::Telemetry), &tm, 7)
            .is_ok());
        assert!(fleet.apply(topics::COORDINATOR_STATUS, &co, 7).is_ok());
        let (_, seen) = fleet.rigs().next().unwrap_or_else(|| panic!("no rig"));
        assert_eq!(
            seen.telemetry.as_ref().map(|(t, at)| (t.gpus.len(), *at)),
            Some((2, 7))
        );
        assert!(seen.status.is_some() && fleet.coordinator().is_some());
        assert!(fleet
            .apply(&topic("rig-a", Channel::Status), &[], 8)
            .is_ok());
        assert_eq!(fleet.len(), 1, "the telemetry is still there");
        assert!(fleet
            .apply(&topic("rig-a", Channel::Telemetry), &[], 8)
            .is_ok());
        assert!(fleet.apply(topics::COORDINATOR_STATUS, &[], 8).is_ok());
        assert!(fleet.is_empty() && fleet.coordinator().is_none());
    }

    #[test]
    fn hostile_messages_are_refused_with_their_reason_and_change_nothing() {
        let mut fleet = Fleet::new(2);
        let good = encode(&status("rig-a", 1));
        assert!(fleet
            .apply(&topic("rig-a", Channel::Status), &good, 1)
            .is_ok());
        let other = encode(&status("rig-b", 1));
        let telemetry_as_status = encode(&telemetry("rig-a", 1));
        let mut truncated = good.clone();
        truncated.truncate(good.len() / 2);
        let oversized = vec![WIRE_VERSION; MAX_FRAME_BYTES + 1];
        let cases: [(String, &[u8], &str); 7] = [
            (topic("rig-a", Channel::Status), &other, "rig_mismatch"),
            (
                topic("rig-a", Channel::Status),
                &telemetry_as_status,
                "frame",
            ),
            (topic("rig-a", Channel::Status), &truncated, "frame"),
            (topic("rig-a", Channel::Telemetry), &oversized, "frame"),
            (topic("rig-a", Channel::Telemetry), &[0xff; 64], "frame"),
            (topic("rig-a", Channel::Receipts), &good, "topic"),
            ("rigd/v1/rig/a/b/status".into(), &good, "topic"),
        ];
        for (t, payload, reason) in cases {
            let refused = fleet.apply(&t, payload, 2).err();
            assert_eq!(refused.as_ref().map(Refused::reason), Some(reason), "{t}");
        }
        let (_, seen) = fleet.rigs().next().unwrap_or_else(|| panic!("no rig"));
        assert_eq!(seen.status.as_ref().map(|s| s.cards.len()), Some(1));
        assert!(seen.telemetry.is_none() && fleet.len() == 1);
    }

    #[test]
    fn rigs_past_the_limit_are_refused_and_known_ones_still_update() {
        let mut fleet = Fleet::new(2);
        for rig in ["rig-a", "rig-b"] {
            let st = encode(&status(rig, 1));
            assert!(fleet.apply(&topic(rig, Channel::Status), &st, 1).is_ok());
        }
        let st = encode(&status("rig-c", 1));
        let refused = fleet.apply(&topic("rig-c", Channel::Status), &st, 1).err();
        assert_eq!(refused.as_ref().map(Refused::reason), Some("too_many_rigs"));
        let tm = encode(&telemetry("rig-b", 1));
        assert!(fleet
            .apply(&topic("rig-b", Channel::Telemetry), &tm, 2)
            .is_ok());
        assert!(fleet
            .apply(&topic("rig-a", Channel::Status), &[], 3)
            .is_ok());
        assert!(fleet
            .apply(&topic("rig-c", Channel::Status), &st, 4)
            .is_ok());
        assert_eq!(fleet.len(), 2);
    }
}
