//! MQTT topic names. Everything a rig publishes or receives sits under
//! `rigd/v1/rig/{rig}/...`, so a broker ACL can confine a rig to its own subtree.

use crate::ids::RigId;

/// Root of every topic.
pub const ROOT: &str = "rigd/v1";

/// The coordinator's retained progress (job, step, loss, counts).
pub const COORDINATOR_STATUS: &str = "rigd/v1/coordinator/status";

/// The per-rig channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// rig -> all, retained: identity, cards, state; the last will marks it offline.
    Status,
    /// rig -> all, retained, QoS 0: per-card samples.
    Telemetry,
    /// rig -> coordinator, QoS 1: signed receipt batches with outputs.
    Receipts,
    /// coordinator -> rig, QoS 1: unit assignments.
    Units,
    /// coordinator -> rig, QoS 0: batches recorded (or refused) by the coordinator; a lost
    /// one costs the rig a resend, which is answered again.
    Acks,
    /// coordinator -> all, retained, QoS 0: the rig's earnings (each supersedes the last).
    Earnings,
    /// operator -> rig, QoS 1: signed commands (MQTT 5 response topic + correlation data).
    Commands,
    /// rig -> operator, QoS 1: command replies, with the command's correlation data.
    Replies,
    /// rig -> all, retained: the image version, root slot and update state
    /// ([`crate::update::UpdateStatus`]).
    Update,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 9] = [
        Channel::Status,
        Channel::Telemetry,
        Channel::Receipts,
        Channel::Units,
        Channel::Acks,
        Channel::Earnings,
        Channel::Commands,
        Channel::Replies,
        Channel::Update,
    ];

    /// The last topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Status => "status",
            Channel::Telemetry => "telemetry",
            Channel::Receipts => "receipts",
            Channel::Units => "units",
            Channel::Acks => "acks",
            Channel::Earnings => "earnings",
            Channel::Commands => "commands",
            Channel::Replies => "replies",
            Channel::Update => "update",
        }
    }
}

/// `rigd/v1/rig/{rig}/{channel}`.
pub fn rig(rig: &RigId, channel: Channel) -> String {
    format!("{ROOT}/rig/{rig}/{}", channel.as_str())
}

/// `rigd/v1/rig/+/{channel}`: the channel of every rig.
pub fn all_rigs(channel: Channel) -> String {
    format!("{ROOT}/rig/+/{}", channel.as_str())
}

/// Splits a per-rig topic into its rig and channel; `None` for anything else.
pub fn parse(topic: &str) -> Option<(RigId, Channel)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix("/rig/")?;
    let (rig, channel) = rest.split_once('/')?;
    let channel = Channel::ALL.into_iter().find(|c| c.as_str() == channel)?;
    Some((RigId::new(rig).ok()?, channel))
}

/// The shared-subscription group of the coordinator's replicas (MQTT 5 `$share`): each
/// receipt batch goes to one of them.
pub const SHARE_GROUP: &str = "coordinators";

/// `$share/coordinators/rigd/v1/rig/+/receipts`: every rig's receipt batches, each to one
/// replica of the coordinator.
pub fn shared_receipts() -> String {
    format!("$share/{SHARE_GROUP}/{}", all_rigs(Channel::Receipts))
}

/// Where a replica that does not lead the job forwards a rig's batch to the one that does.
pub const CHECKED: &str = "rigd/v1/coordinator/checked";

/// The key segment of a forwarded batch whose signature the forwarding replica did not
/// check.
pub const UNCHECKED: &str = "-";

/// `rigd/v1/coordinator/checked/{rig}/{key}`: a batch of `rig` forwarded to the leader;
/// `key` is the key its signature was checked against (its text form), or [`UNCHECKED`].
pub fn checked(rig: &RigId, key: Option<&crate::PublicKey>) -> String {
    match key {
        Some(key) => format!("{CHECKED}/{rig}/{key}"),
        None => format!("{CHECKED}/{rig}/{UNCHECKED}"),
    }
}

/// `rigd/v1/coordinator/checked/+/+`: every forwarded batch.
pub fn all_checked() -> String {
    format!("{CHECKED}/+/+")
}

/// Splits a forwarded batch's topic into its rig and the key segment; `None` for anything
/// else.
pub fn parse_checked(topic: &str) -> Option<(RigId, &str)> {
    let rest = topic.strip_prefix(CHECKED)?.strip_prefix('/')?;
    let (rig, key) = rest.split_once('/')?;
    if key.is_empty() || key.contains('/') {
        return None;
    }
    Some((RigId::new(rig).ok()?, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_batch_topics_round_trip_through_parse_checked() {
        let id = RigId::new("rig-7").unwrap_or_else(|_| unreachable!());
        let key = crate::PublicKey::P256(vec![2; 33]);
        let topic = checked(&id, Some(&key));
        assert_eq!(
            parse_checked(&topic),
            Some((id.clone(), key.to_string().as_str()))
        );
        assert_eq!(
            parse_checked(&checked(&id, None)),
            Some((id.clone(), UNCHECKED))
        );
        assert_eq!(parse_checked("rigd/v1/coordinator/checked/rig-7"), None);
        assert_eq!(parse_checked("rigd/v1/coordinator/checked/rig-7/a/b"), None);
        assert_eq!(parse_checked("rigd/v1/coordinator/checked/rig-7/"), None);
        assert_eq!(parse(&topic), None);
    }

    #[test]
    fn topics_round_trip_through_parse() {
        let id = RigId::new("rig-7").unwrap_or_else(|_| unreachable!());
        for ch in Channel::ALL {
            assert_eq!(parse(&rig(&id, ch)), Some((id.clone(), ch)));
        }
        assert_eq!(parse("rigd/v1/rig/rig-7/nope"), None);
        assert_eq!(parse("rigd/v1/rig/a/b/status"), None);
        assert_eq!(parse("other/rig/x/status"), None);
    }
}
