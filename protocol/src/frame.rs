//! Versioned frames: `[WIRE_VERSION][kind][postcard body]`.
//!
//! Every MQTT payload in the system is one frame. Decoding refuses anything longer than
//! [`MAX_FRAME_BYTES`] before looking inside, checks the version and the kind, decodes the
//! body with postcard (which never allocates more than the bytes it was given can fill),
//! refuses a body that is not the canonical encoding of what it decodes to (postcard itself
//! takes overlong varints), and then runs the message's own validation (collection caps,
//! consistency).

use serde::{de::DeserializeOwned, Serialize};

/// The wire version this build speaks.
pub const WIRE_VERSION: u8 = 2;

/// The largest frame accepted on any topic. Also the MQTT maximum packet size, less headers.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Zero or one byte: no room for the header.
    #[error("frame of {len} bytes is truncated: a frame starts with a version and a kind byte")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Over [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes is over the {max}-byte cap")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A version this build does not speak.
    #[error("frame version {got} is not supported (this build speaks {expected})")]
    Version {
        /// Version byte received.
        got: u8,
        /// Version this build speaks.
        expected: u8,
    },
    /// A frame of another message type.
    #[error("frame kind {got} where kind {expected} ({name}) was expected")]
    Kind {
        /// Kind byte received.
        got: u8,
        /// Kind expected.
        expected: u8,
        /// Name of the expected message.
        name: &'static str,
    },
    /// The body does not decode.
    #[error("malformed {name} body: {reason}")]
    Malformed {
        /// Name of the expected message.
        name: &'static str,
        /// What postcard said.
        reason: String,
    },
    /// The body decodes but bytes are left over.
    #[error("{name} body has {extra} trailing bytes")]
    Trailing {
        /// Name of the expected message.
        name: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// The body decodes but is not the one encoding of its value (an overlong varint, say):
    /// every message has exactly one frame, so a signed batch cannot travel as many.
    #[error("{name} body is not in canonical form (it decodes, but encodes back differently)")]
    NonCanonical {
        /// Name of the expected message.
        name: &'static str,
    },
    /// The body decodes but breaks a rule of the message (a cap, a consistency check).
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// Name of the expected message.
        name: &'static str,
        /// The rule broken.
        reason: String,
    },
}

/// A message that travels as a frame.
pub trait Frame: Serialize + DeserializeOwned {
    /// The kind byte, unique per message type.
    const KIND: u8;
    /// A name for error messages.
    const NAME: &'static str;

    /// Checks caps and consistency after decoding. The default accepts everything.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Encodes `msg` as a frame.
pub fn encode<T: Frame>(msg: &T) -> Vec<u8> {
    // Serializing into a Vec cannot fail for the types of this crate (no unsupported serde
    // features); should it ever, the empty body is refused on decode, so it cannot go unnoticed.
    postcard::to_extend(msg, vec![WIRE_VERSION, T::KIND])
        .unwrap_or_else(|_| vec![WIRE_VERSION, T::KIND])
}

/// Decodes a frame of type `T`, refusing anything malformed, oversized, of another version
/// or kind, or invalid.
pub fn decode<T: Frame>(bytes: &[u8]) -> Result<T, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let [version, kind, body @ ..] = bytes else {
        return Err(FrameError::Truncated { len: bytes.len() });
    };
    if *version != WIRE_VERSION {
        return Err(FrameError::Version {
            got: *version,
            expected: WIRE_VERSION,
        });
    }
    if *kind != T::KIND {
        return Err(FrameError::Kind {
            got: *kind,
            expected: T::KIND,
            name: T::NAME,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| FrameError::Malformed {
        name: T::NAME,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing {
            name: T::NAME,
            extra: rest.len(),
        });
    }
    if postcard::to_extend(&msg, Vec::with_capacity(body.len())).map_or(true, |b| b != body) {
        return Err(FrameError::NonCanonical { name: T::NAME });
    }
    msg.validate().map_err(|reason| FrameError::Invalid {
        name: T::NAME,
        reason,
    })?;
    Ok(msg)
}

/// Returns `Err` naming `what` when `len` exceeds `max`: a helper for `validate`.
pub fn cap(what: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        Err(format!("{what} has {len} entries, over the cap of {max}"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;
    use proptest::prelude::*;

    fn never_panics(bytes: &[u8]) {
        let _ = decode::<RigStatus>(bytes);
        let _ = decode::<Telemetry>(bytes);
        let _ = decode::<UnitAssignment>(bytes);
        let _ = decode::<ReceiptBatch>(bytes);
        let _ = decode::<Ack>(bytes);
        let _ = decode::<Refusal>(bytes);
        let _ = decode::<Earnings>(bytes);
        let _ = decode::<CoordinatorStatus>(bytes);
        let _ = decode::<crate::command::Command>(bytes);
        let _ = decode::<crate::command::CommandReply>(bytes);
        let _ = decode::<crate::claim::ClaimRequest>(bytes);
        let _ = decode::<crate::claim::ClaimResponse>(bytes);
    }

    proptest! {
        #[test]
        fn no_decoder_panics_on_random_bytes(body in proptest::collection::vec(any::<u8>(), 0..512), kind in 1u8..13) {
            let mut bytes = vec![WIRE_VERSION, kind];
            bytes.extend_from_slice(&body);
            never_panics(&bytes);
            never_panics(&body);
        }
    }

    #[test]
    fn a_refusal_on_the_acks_topic_is_told_from_an_ack_by_its_kind() {
        let refusal = Refusal {
            rig: crate::RigId::new("r").unwrap_or_else(|_| unreachable!()),
            batches: vec![RefusedBatch {
                first_seq: 7,
                digest: [3; 32],
                reason: RefusalReason::KeyChanged,
            }],
        };
        let bytes = encode(&refusal);
        assert_eq!(decode::<Refusal>(&bytes), Ok(refusal));
        assert!(matches!(
            decode::<Ack>(&bytes),
            Err(FrameError::Kind { got, .. }) if got == Refusal::KIND
        ));
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let ack = Ack {
            rig: crate::RigId::new("r").unwrap_or_else(|_| unreachable!()),
            batches: vec![
                AckedBatch {
                    first_seq: 1,
                    digest: [1; 32],
                },
                AckedBatch {
                    first_seq: 2,
                    digest: [2; 32],
                },
            ],
        };
        let good = encode(&ack);
        assert_eq!(decode::<Ack>(&good), Ok(ack));
        assert!(matches!(
            decode::<Ack>(&[]),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            decode::<Ack>(&good[..good.len() - 1]),
            Err(FrameError::Malformed { .. })
        ));
        let mut v = good.clone();
        v[0] = WIRE_VERSION + 1;
        assert!(matches!(
            decode::<Ack>(&v),
            Err(FrameError::Version { got, .. }) if got == WIRE_VERSION + 1
        ));
        assert!(matches!(
            decode::<Earnings>(&good),
            Err(FrameError::Kind { .. })
        ));
        let mut t = good.clone();
        t.push(0);
        assert!(matches!(
            decode::<Ack>(&t),
            Err(FrameError::Trailing { extra: 1, .. })
        ));
        let overlong: Vec<u8> = good[..2]
            .iter()
            .copied()
            .chain([good[2] | 0x80, 0x00])
            .chain(good[3..].iter().copied())
            .collect();
        assert_eq!(good[2], 1, "the rig id's length, one byte");
        assert!(matches!(
            decode::<Ack>(&overlong),
            Err(FrameError::NonCanonical { name: "Ack" })
        ));
        let big = vec![WIRE_VERSION; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            decode::<Ack>(&big),
            Err(FrameError::TooLarge { .. })
        ));
        let mut many = Ack {
            rig: crate::RigId::new("r").unwrap_or_else(|_| unreachable!()),
            batches: vec![],
        };
        many.batches = vec![
            AckedBatch {
                first_seq: 0,
                digest: [0; 32],
            };
            MAX_BATCH + 1
        ];
        assert!(matches!(
            decode::<Ack>(&encode(&many)),
            Err(FrameError::Invalid { .. })
        ));
    }

    /// A batch at the end of the sequence space (first_seq = 2^64 - 1, two receipts) or at
    /// seq 0 is refused on decode, before any signature check, without overflowing.
    #[test]
    fn a_batch_whose_sequence_numbers_overflow_is_refused_on_decode() {
        let rig = crate::RigId::new("r").unwrap_or_else(|_| unreachable!());
        let item = |seq: u64| crate::receipt::ReceiptItem {
            receipt: crate::receipt::Receipt {
                rig: rig.clone(),
                seq,
                card: crate::GpuUuid::new("SIM-0").unwrap_or_else(|_| unreachable!()),
                job: crate::JobId::new("j").unwrap_or_else(|_| unreachable!()),
                unit: 1,
                attempt: 0,
                work: 1,
                input_digest: [0; 32],
                output_digest: [0; 32],
                started_ms: 0,
                finished_ms: 0,
                governor_level: 0,
            },
            proof: vec![],
            output: crate::units::UnitOutput::GemmI8 { c_digest: [0; 32] },
        };
        for (first, seqs) in [
            (u64::MAX, vec![u64::MAX, 0]),
            (u64::MAX, vec![u64::MAX]),
            (0, vec![0]),
        ] {
            let batch = ReceiptBatch {
                header: crate::receipt::BatchHeader {
                    rig: rig.clone(),
                    first_seq: first,
                    count: seqs.len() as u32,
                    root: [0; 32],
                    domain: crate::Domain::LOCAL,
                },
                signature: crate::Signature(vec![0; 65]),
                items: seqs.into_iter().map(item).collect(),
            };
            assert!(
                matches!(
                    decode::<ReceiptBatch>(&encode(&batch)),
                    Err(FrameError::Invalid { .. })
                ),
                "first_seq {first}"
            );
        }
    }
}
