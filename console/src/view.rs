//! The in-memory view of the fleet built from retained MQTT messages.
//!
//! [`FleetView::apply`] is pure: it takes a topic and a payload and either updates the view
//! or says why the message was refused. The MQTT shell ([`crate::collect`]) logs refusals and
//! keeps going, so one hostile or stale frame never stops the console.

use rigd_protocol::topics::{self, Channel};
use rigd_protocol::update::UpdateStatus;
use rigd_protocol::{
    decode, CoordinatorStatus, Earnings, Frame, FrameError, RigId, RigStatus, Telemetry,
};
use std::collections::BTreeMap;

/// The most rigs the view holds; messages about further rigs are refused.
pub const MAX_RIGS: usize = 4096;

/// Everything known about one rig.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RigView {
    /// Its retained status.
    pub status: Option<RigStatus>,
    /// Its retained telemetry.
    pub telemetry: Option<Telemetry>,
    /// Its retained earnings.
    pub earnings: Option<Earnings>,
    /// Its retained image and update status.
    pub update: Option<UpdateStatus>,
}

impl RigView {
    fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.telemetry.is_none()
            && self.earnings.is_none()
            && self.update.is_none()
    }
}

/// The fleet as seen through retained messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetView {
    /// Per rig, ordered by id.
    pub rigs: BTreeMap<RigId, RigView>,
    /// The coordinator's progress, where it published one.
    pub coordinator: Option<CoordinatorStatus>,
}

/// What a message changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A rig's status was stored.
    Status(RigId),
    /// A rig's telemetry was stored.
    Telemetry(RigId),
    /// A rig's earnings were stored.
    Earnings(RigId),
    /// A rig's image and update status was stored.
    Image(RigId),
    /// The coordinator's progress was stored.
    Coordinator,
    /// An empty payload cleared the retained message of this topic.
    Cleared,
}

/// Why a message was refused. The view is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The topic is not one the console reads.
    #[error(
        "topic is not a rig status, telemetry, earnings or update topic nor the coordinator status"
    )]
    UnexpectedTopic,
    /// The payload is not a valid frame of the topic's message type.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The message names another rig than its topic.
    #[error("message is about rig {message} but arrived on the topic of rig {topic}")]
    RigMismatch {
        /// The rig in the topic.
        topic: RigId,
        /// The rig in the message.
        message: RigId,
    },
    /// The view already holds [`MAX_RIGS`] rigs.
    #[error("already tracking {MAX_RIGS} rigs; ignoring rig {0}")]
    TooManyRigs(RigId),
}

impl FleetView {
    /// Applies one message received on `topic`. An empty payload (how MQTT clears a retained
    /// message) removes what the view held for that topic.
    pub fn apply(&mut self, topic: &str, payload: &[u8]) -> Result<Update, ViewError> {
        if topic == topics::COORDINATOR_STATUS {
            if payload.is_empty() {
                self.coordinator = None;
                return Ok(Update::Cleared);
            }
            self.coordinator = Some(decode::<CoordinatorStatus>(payload)?);
            return Ok(Update::Coordinator);
        }
        let (rig, channel) = topics::parse(topic).ok_or(ViewError::UnexpectedTopic)?;
        if !matches!(
            channel,
            Channel::Status | Channel::Telemetry | Channel::Earnings | Channel::Update
        ) {
            return Err(ViewError::UnexpectedTopic);
        }
        if payload.is_empty() {
            self.clear(&rig, channel);
            return Ok(Update::Cleared);
        }
        match channel {
            Channel::Status => {
                let msg = decode_for::<RigStatus>(&rig, payload, |m| &m.rig)?;
                self.slot(&rig)?.status = Some(msg);
                Ok(Update::Status(rig))
            }
            Channel::Telemetry => {
                let msg = decode_for::<Telemetry>(&rig, payload, |m| &m.rig)?;
                self.slot(&rig)?.telemetry = Some(msg);
                Ok(Update::Telemetry(rig))
            }
            Channel::Update => {
                let msg = decode_for::<UpdateStatus>(&rig, payload, |m| &m.rig)?;
                self.slot(&rig)?.update = Some(msg);
                Ok(Update::Image(rig))
            }
            _ => {
                let msg = decode_for::<Earnings>(&rig, payload, |m| &m.rig)?;
                self.slot(&rig)?.earnings = Some(msg);
                Ok(Update::Earnings(rig))
            }
        }
    }

    fn slot(&mut self, rig: &RigId) -> Result<&mut RigView, ViewError> {
        if !self.rigs.contains_key(rig) && self.rigs.len() >= MAX_RIGS {
            return Err(ViewError::TooManyRigs(rig.clone()));
        }
        Ok(self.rigs.entry(rig.clone()).or_default())
    }

    fn clear(&mut self, rig: &RigId, channel: Channel) {
        let Some(view) = self.rigs.get_mut(rig) else {
            return;
        };
        match channel {
            Channel::Status => view.status = None,
            Channel::Telemetry => view.telemetry = None,
            Channel::Update => view.update = None,
            _ => view.earnings = None,
        }
        if view.is_empty() {
            self.rigs.remove(rig);
        }
    }
}

fn decode_for<T: Frame>(
    topic_rig: &RigId,
    payload: &[u8],
    rig_of: impl Fn(&T) -> &RigId,
) -> Result<T, ViewError> {
    let msg = decode::<T>(payload)?;
    let message_rig = rig_of(&msg);
    if message_rig != topic_rig {
        return Err(ViewError::RigMismatch {
            topic: topic_rig.clone(),
            message: message_rig.clone(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rigd_protocol::{encode, MAX_FRAME_BYTES, WIRE_VERSION};
    use rigd_testkit::fixtures::{coordinator, earnings, rig_id, status, telemetry};

    fn topic(rig: &str, channel: Channel) -> String {
        topics::rig(&rig_id(rig), channel)
    }

    fn good_frames() -> Vec<(String, Vec<u8>)> {
        vec![
            (topic("rig-1", Channel::Status), encode(&status("rig-1", 2))),
            (
                topic("rig-1", Channel::Telemetry),
                encode(&telemetry("rig-1", 2)),
            ),
            (
                topic("rig-1", Channel::Earnings),
                encode(&earnings("rig-1", 2)),
            ),
            (
                topics::COORDINATOR_STATUS.to_string(),
                encode(&coordinator(false)),
            ),
        ]
    }

    /// Every kind of bad payload, each built from a good frame of the topic.
    fn bad_payloads(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        let mut wrong_version = good.to_vec();
        wrong_version[0] = WIRE_VERSION + 1;
        let mut wrong_kind = good.to_vec();
        wrong_kind[1] = if good[1] == 2 { 3 } else { 2 };
        let mut oversized = good.to_vec();
        oversized.resize(MAX_FRAME_BYTES + 1, 0);
        let mut trailing = good.to_vec();
        trailing.push(0);
        vec![
            ("one byte", vec![WIRE_VERSION]),
            ("truncated body", good[..good.len() / 2].to_vec()),
            ("oversized", oversized),
            ("wrong version", wrong_version),
            ("wrong kind", wrong_kind),
            ("trailing bytes", trailing),
            (
                "garbage",
                vec![WIRE_VERSION, good[1], 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ]
    }

    #[test]
    fn good_frames_on_each_topic_fill_the_view() {
        let mut view = FleetView::default();
        for (topic, payload) in good_frames() {
            assert!(view.apply(&topic, &payload).is_ok(), "{topic}");
        }
        let rig = &view.rigs[&rig_id("rig-1")];
        assert_eq!(rig.status, Some(status("rig-1", 2)));
        assert_eq!(rig.telemetry, Some(telemetry("rig-1", 2)));
        assert_eq!(rig.earnings, Some(earnings("rig-1", 2)));
        assert_eq!(view.coordinator, Some(coordinator(false)));
    }

    #[test]
    fn bad_frames_of_every_kind_on_every_topic_are_refused_and_leave_the_view_alone() {
        for (topic, good) in good_frames() {
            for (what, bad) in bad_payloads(&good) {
                let mut view = FleetView::default();
                let result = view.apply(&topic, &bad);
                assert!(
                    matches!(result, Err(ViewError::Frame(_))),
                    "{what} on {topic}: {result:?}"
                );
                assert_eq!(view, FleetView::default(), "{what} on {topic}");
                // The console keeps going: a good frame afterwards is taken.
                assert!(view.apply(&topic, &good).is_ok(), "{what} on {topic}");
            }
        }
    }

    #[test]
    fn bad_frames_name_the_reason() {
        let good = encode(&status("rig-1", 1));
        let t = topic("rig-1", Channel::Status);
        let mut view = FleetView::default();
        let err = |view: &mut FleetView, p: &[u8]| match view.apply(&t, p) {
            Err(ViewError::Frame(e)) => e,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            err(&mut view, &[1]),
            FrameError::Truncated { len: 1 }
        ));
        let mut oversized = good.clone();
        oversized.resize(MAX_FRAME_BYTES + 1, 0);
        assert!(matches!(
            err(&mut view, &oversized),
            FrameError::TooLarge { .. }
        ));
        let mut v = good.clone();
        v[0] = 9;
        assert!(matches!(
            err(&mut view, &v),
            FrameError::Version { got: 9, .. }
        ));
        let wrong_kind = encode(&telemetry("rig-1", 1));
        assert!(matches!(
            err(&mut view, &wrong_kind),
            FrameError::Kind { got: 2, .. }
        ));
    }

    #[test]
    fn a_good_frame_after_a_bad_one_replaces_nothing_it_should_not() {
        let mut view = FleetView::default();
        let t = topic("rig-1", Channel::Status);
        assert!(view.apply(&t, &encode(&status("rig-1", 1))).is_ok());
        assert!(view.apply(&t, &[1, 1, 0xff]).is_err());
        assert_eq!(view.rigs[&rig_id("rig-1")].status, Some(status("rig-1", 1)));
    }

    #[test]
    fn a_message_about_another_rig_is_refused() {
        let mut view = FleetView::default();
        let result = view.apply(
            &topic("rig-1", Channel::Status),
            &encode(&status("rig-2", 1)),
        );
        assert!(matches!(result, Err(ViewError::RigMismatch { .. })));
        assert!(view.rigs.is_empty());
    }

    #[test]
    fn topics_the_console_does_not_read_are_refused() {
        let mut view = FleetView::default();
        let payload = encode(&status("rig-1", 1));
        for t in [
            topic("rig-1", Channel::Units),
            topic("rig-1", Channel::Receipts),
            "rigd/v1/rig/bad+id/status".to_string(),
            "elsewhere".to_string(),
        ] {
            assert_eq!(
                view.apply(&t, &payload),
                Err(ViewError::UnexpectedTopic),
                "{t}"
            );
        }
    }

    #[test]
    fn an_empty_payload_clears_the_retained_entry() {
        let mut view = FleetView::default();
        for (topic, payload) in good_frames() {
            assert!(view.apply(&topic, &payload).is_ok());
        }
        for (topic, _) in good_frames() {
            assert_eq!(view.apply(&topic, &[]), Ok(Update::Cleared));
        }
        assert_eq!(view, FleetView::default());
    }

    #[test]
    fn the_number_of_rigs_tracked_is_capped() {
        let mut view = FleetView::default();
        for i in 0..MAX_RIGS {
            let name = format!("r{i}");
            assert!(view
                .apply(&topic(&name, Channel::Status), &encode(&status(&name, 1)))
                .is_ok());
        }
        let result = view.apply(
            &topic("one-more", Channel::Status),
            &encode(&status("one-more", 1)),
        );
        assert!(matches!(result, Err(ViewError::TooManyRigs(_))));
        // Rigs already tracked are still updated.
        assert!(view
            .apply(&topic("r0", Channel::Status), &encode(&status("r0", 2)))
            .is_ok());
    }
}
