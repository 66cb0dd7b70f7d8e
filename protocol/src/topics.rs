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
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 8] = [
        Channel::Status,
        Channel::Telemetry,
        Channel::Receipts,
        Channel::Units,
        Channel::Acks,
        Channel::Earnings,
        Channel::Commands,
        Channel::Replies,
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

#[cfg(test)]
mod tests {
    use super::*;

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
