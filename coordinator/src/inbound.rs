//! Decoders for what arrives from the broker. Input is hostile: every failure is an error
//! value, never a panic, and frames are size-checked before they are looked into.

use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{decode, FrameError, ReceiptBatch, RigId, RigStatus};

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A rig's retained status.
    Status(RigStatus),
    /// A receipt batch, with the rig of the topic it came on: the rig's own topic, or the
    /// one another replica of the coordinator forwarded it on ([`topics::checked`]).
    Receipts {
        /// Rig named by the topic.
        rig: RigId,
        /// The batch.
        batch: ReceiptBatch,
        /// The key (text form) the forwarding replica checked its signature against; `None`
        /// on the rig's own topic or when the replica did not check it.
        checked: Option<String>,
    },
}

/// Why a message was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// The topic is not a per-rig topic the coordinator reads.
    #[error("unexpected topic {0:?}")]
    Topic(String),
    /// The payload is not a valid frame of the topic's message.
    #[error("bad frame on {topic}: {source}")]
    Frame {
        /// The topic.
        topic: String,
        /// What was wrong.
        source: FrameError,
    },
    /// A status names another rig than its topic.
    #[error("status for rig {body} arrived on the topic of rig {topic}")]
    RigMismatch {
        /// Rig of the topic.
        topic: RigId,
        /// Rig in the message.
        body: RigId,
    },
}

/// The rig whose receipt batch a message on `topic` carries, if it carries one (on the rig's
/// own topic or forwarded by a replica): what the batch rate is checked by before decoding.
pub fn batch_rig(topic: &str) -> Option<RigId> {
    match topics::parse_checked(topic) {
        Some((rig, _)) => Some(rig),
        None => match topics::parse(topic)? {
            (rig, Channel::Receipts) => Some(rig),
            _ => None,
        },
    }
}

/// Decodes a message received on `topic`.
pub fn parse(topic: &str, payload: &[u8]) -> Result<Inbound, InboundError> {
    let frame_err = |source| InboundError::Frame {
        topic: topic.to_string(),
        source,
    };
    if let Some((rig, key)) = topics::parse_checked(topic) {
        let batch: ReceiptBatch = decode(payload).map_err(frame_err)?;
        let checked = (key != topics::UNCHECKED).then(|| key.to_string());
        return Ok(Inbound::Receipts {
            rig,
            batch,
            checked,
        });
    }
    let Some((rig, channel)) = topics::parse(topic) else {
        return Err(InboundError::Topic(rigd_protocol::clip(topic, 200)));
    };
    match channel {
        Channel::Status => {
            let status: RigStatus = decode(payload).map_err(frame_err)?;
            if status.rig != rig {
                return Err(InboundError::RigMismatch {
                    topic: rig,
                    body: status.rig,
                });
            }
            Ok(Inbound::Status(status))
        }
        Channel::Receipts => {
            let batch: ReceiptBatch = decode(payload).map_err(frame_err)?;
            Ok(Inbound::Receipts {
                rig,
                batch,
                checked: None,
            })
        }
        _ => Err(InboundError::Topic(topic.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_protocol::crypto::{PublicKey, Signature};
    use rigd_protocol::{encode, BatchHeader, RigState, MAX_FRAME_BYTES, WIRE_VERSION};

    fn rig() -> RigId {
        RigId::new("rig-1").unwrap_or_else(|_| unreachable!())
    }

    fn status() -> RigStatus {
        RigStatus {
            rig: rig(),
            agent_version: "0.1.0".into(),
            pubkey: PublicKey::Secp256k1(vec![2; 33]),
            key_backend: "file".into(),
            key_health: rigd_protocol::KeyHealth::Answering,
            state: RigState::Idle,
            cards: vec![],
            units_running: 0,
            units_queued: 0,
            seq_journaled: 0,
            receipts_unacked: 0,
            started_ms: 0,
            sent_ms: 0,
        }
    }

    fn batch() -> ReceiptBatch {
        ReceiptBatch {
            header: BatchHeader {
                rig: rig(),
                first_seq: 1,
                count: 0,
                root: [0; 32],
                domain: rigd_protocol::Domain::LOCAL,
            },
            signature: Signature(vec![0; 65]),
            items: vec![],
        }
    }

    fn bad_frames(good: &[u8]) -> Vec<Vec<u8>> {
        let mut wrong_version = good.to_vec();
        wrong_version[0] = WIRE_VERSION + 1;
        let mut wrong_kind = good.to_vec();
        wrong_kind[1] = 99;
        let mut trailing = good.to_vec();
        trailing.push(0);
        vec![
            vec![],
            vec![WIRE_VERSION],
            good[..good.len() - 1].to_vec(),
            vec![0u8; MAX_FRAME_BYTES + 1],
            wrong_version,
            wrong_kind,
            trailing,
            vec![WIRE_VERSION, good[1], 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            (0..=255u8).cycle().take(5000).collect(),
        ]
    }

    #[test]
    fn good_frames_decode_on_their_topics() {
        let t = topics::rig(&rig(), Channel::Status);
        assert_eq!(parse(&t, &encode(&status())), Ok(Inbound::Status(status())));
        let t = topics::rig(&rig(), Channel::Receipts);
        assert_eq!(
            parse(&t, &encode(&batch())),
            Ok(Inbound::Receipts {
                rig: rig(),
                batch: batch(),
                checked: None
            })
        );
        let key = rigd_protocol::PublicKey::P256(vec![2; 33]);
        assert_eq!(
            parse(&topics::checked(&rig(), Some(&key)), &encode(&batch())),
            Ok(Inbound::Receipts {
                rig: rig(),
                batch: batch(),
                checked: Some(key.to_string())
            })
        );
        assert_eq!(
            parse(&topics::checked(&rig(), None), &encode(&batch())),
            Ok(Inbound::Receipts {
                rig: rig(),
                batch: batch(),
                checked: None
            })
        );
    }

    #[test]
    fn every_handler_refuses_truncated_oversized_wrong_version_wrong_kind_and_garbage() {
        for (topic, good) in [
            (topics::rig(&rig(), Channel::Status), encode(&status())),
            (topics::rig(&rig(), Channel::Receipts), encode(&batch())),
            (topics::checked(&rig(), None), encode(&batch())),
        ] {
            for bad in bad_frames(&good) {
                assert!(
                    matches!(parse(&topic, &bad), Err(InboundError::Frame { .. })),
                    "{topic} accepted {} bytes",
                    bad.len()
                );
            }
        }
    }

    #[test]
    fn a_message_of_the_wrong_type_for_the_topic_is_refused() {
        let t = topics::rig(&rig(), Channel::Receipts);
        assert!(parse(&t, &encode(&status())).is_err());
        let t = topics::rig(&rig(), Channel::Status);
        assert!(parse(&t, &encode(&batch())).is_err());
    }

    #[test]
    fn a_status_on_another_rigs_topic_or_an_unknown_topic_is_refused() {
        let other = RigId::new("rig-2").unwrap_or_else(|_| unreachable!());
        let t = topics::rig(&other, Channel::Status);
        assert!(matches!(
            parse(&t, &encode(&status())),
            Err(InboundError::RigMismatch { .. })
        ));
        for t in [
            "",
            "rigd/v1/rig/x/units",
            "rigd/v1/rig/a+b/status",
            "garbage/\u{0}",
        ] {
            assert!(matches!(
                parse(t, &encode(&status())),
                Err(InboundError::Topic(_))
            ));
        }
    }
}
