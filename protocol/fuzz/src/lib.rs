//! The fuzz target of every wire decoder, and its seed frames. `run.sh` builds `fuzz-frames`
//! with AFL++'s coverage instrumentation (rustc's `sancov` passes and Debian's
//! `afl-compiler-rt.o`, on the stable toolchain) and runs `afl-fuzz` on it.
//!
//! One input is tried as a frame of every message type. A frame is `[version][kind][body]`,
//! so the kind byte steers an input to one decoder; the coverage feedback finds each of them
//! from the seeds. For every input that decodes, the target checks that it encodes to a frame
//! that decodes to the same value, and it runs the receipt verifier (Merkle proofs, header
//! digest, signature recovery) on decoded batches, since that too reads wire values before
//! anything is authenticated. An input that is UTF-8 is also parsed as a topic (the rig id
//! and channel every per-rig message is routed by), and a parsed topic must format back to
//! the same string.

use rigd_protocol::claim::{ClaimRequest, ClaimResponse};
use rigd_protocol::topics;
use rigd_protocol::verify::verify_batch;
use rigd_protocol::{
    decode, encode, Ack, Command, CommandReply, CoordinatorStatus, Earnings, Frame, PublicKey,
    ReceiptBatch, Refusal, RigStatus, Telemetry, UnitAssignment, WIRE_VERSION,
};
use std::fmt::Debug;

/// Decodes `data` as `T`; a value that decodes must encode to a frame that decodes and
/// encodes to the same bytes (bytes, not values: a NaN loss is not equal to itself).
/// Returns the value.
fn round_trip<T: Frame + Debug>(data: &[u8]) -> Option<T> {
    let value = decode::<T>(data).ok()?;
    let again = encode(&value);
    match decode::<T>(&again) {
        Ok(back) if encode(&back) == again => Some(value),
        Ok(back) => panic!("{value:?} re-encoded decodes as {back:?}"),
        Err(e) => panic!("{value:?} re-encoded does not decode: {e}"),
    }
}

/// The fuzz target: tries `data` as a topic and as a frame of every message type. Panics
/// (and the fuzzer reports a crash) only when a decoder or the verifier does.
pub fn frames(data: &[u8]) {
    if let Ok(topic) = std::str::from_utf8(data) {
        if let Some((rig, channel)) = topics::parse(topic) {
            assert_eq!(
                topics::rig(&rig, channel),
                topic,
                "a topic parsed and formatted"
            );
        }
    }
    round_trip::<RigStatus>(data);
    round_trip::<Telemetry>(data);
    round_trip::<UnitAssignment>(data);
    round_trip::<Ack>(data);
    round_trip::<Refusal>(data);
    round_trip::<Earnings>(data);
    round_trip::<CoordinatorStatus>(data);
    round_trip::<ClaimRequest>(data);
    round_trip::<ClaimResponse>(data);
    round_trip::<CommandReply>(data);
    if let Some(command) = round_trip::<Command>(data) {
        let _ = command.signature_valid();
    }
    if let Some(batch) = round_trip::<ReceiptBatch>(data) {
        for key in [
            PublicKey::Secp256k1(vec![2; 33]),
            PublicKey::P256(vec![3; 33]),
        ] {
            let _ = verify_batch(&batch, &key);
        }
    }
}

/// Seed inputs: the header of every frame kind over a few body shapes. The fuzzer grows
/// real messages from these.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![];
    for kind in 0..=16u8 {
        for body in [&[][..], &[0; 8][..], &[1; 40][..]] {
            let mut frame = vec![WIRE_VERSION, kind];
            frame.extend_from_slice(body);
            out.push(frame);
        }
    }
    out.push(b"rigd/v1/rig/rig-1/receipts".to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target refuses the seeds, truncated and oversized frames, and a batch whose
    /// sequence numbers overflow, without a panic.
    #[test]
    fn the_target_survives_its_seeds_and_known_hostile_frames() {
        for seed in seeds() {
            frames(&seed);
        }
        frames(&[]);
        frames(&[WIRE_VERSION]);
        frames(&vec![WIRE_VERSION; rigd_protocol::MAX_FRAME_BYTES + 1]);
        let mut overflow = vec![WIRE_VERSION, 0];
        overflow.extend_from_slice(&[0xff; 64]);
        for kind in 0..=16u8 {
            overflow[1] = kind;
            frames(&overflow);
        }
    }
}
