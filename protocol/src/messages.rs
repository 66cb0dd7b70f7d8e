//! The messages carried on each topic (see [`crate::topics`]), each a [`Frame`].

use crate::crypto::{PublicKey, Signature};
use crate::frame::{cap, Frame};
use crate::ids::{GpuUuid, JobId, RigId};
use crate::receipt::{BatchHeader, ReceiptItem};
use crate::units::WorkUnit;
use serde::{Deserialize, Serialize};

/// The most cards one rig may report.
pub const MAX_CARDS: usize = 16;
/// The most units in one assignment message.
pub const MAX_UNITS_PER_MESSAGE: usize = 256;
/// The most receipts in one batch.
pub const MAX_BATCH: usize = 4096;
/// The longest free-text field (versions, names, backends).
pub const MAX_TEXT: usize = 128;

/// `s` cut to at most `max` bytes at a character boundary: free text a frame carries (a
/// reason, an error) made to fit its cap.
pub fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn text(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_TEXT {
        Err(format!(
            "{what} is {} bytes, over the cap of {MAX_TEXT}",
            s.len()
        ))
    } else {
        Ok(())
    }
}

/// What a rig is doing as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RigState {
    /// Units are running.
    Working,
    /// Connected, nothing to do.
    Idle,
    /// Finishing in-flight units, taking no new ones.
    Draining,
    /// Gone (set by the last will or on clean shutdown).
    Offline,
}

/// Whether the rig's key store answers (TPM, PKCS#11 token, HSM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyHealth {
    /// The last call answered in time.
    Answering,
    /// Calls to the key store fail or pass their deadline; rigd reopens its connection with
    /// backoff while receipts wait, journaled, for their signature.
    Unresponsive {
        /// When the first failure of this run of failures happened, Unix ms.
        since_ms: u64,
        /// Failed calls and reopen attempts in a row.
        failures: u32,
        /// The last failure, as the key store or the deadline put it.
        reason: String,
    },
}

impl KeyHealth {
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            KeyHealth::Answering => Ok(()),
            KeyHealth::Unresponsive { reason, .. } => text("key health reason", reason),
        }
    }
}

impl std::fmt::Display for KeyHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyHealth::Answering => f.write_str("answering"),
            KeyHealth::Unresponsive {
                failures, reason, ..
            } => write!(f, "unresponsive ({failures} failures: {reason})"),
        }
    }
}

/// One card as inventoried at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardInfo {
    /// Its UUID.
    pub uuid: GpuUuid,
    /// Index on the rig.
    pub index: u32,
    /// Model name.
    pub name: String,
    /// Memory, MiB.
    pub vram_mib: u32,
    /// Current power limit, watts.
    pub power_limit_w: u32,
}

/// Retained on `rig/{rig}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RigStatus {
    /// The rig.
    pub rig: RigId,
    /// rigd's version.
    pub agent_version: String,
    /// The key its receipts are signed with.
    pub pubkey: PublicKey,
    /// Where that key lives (e.g. `file (software, not hardware-held)`).
    pub key_backend: String,
    /// Whether that key store answers.
    pub key_health: KeyHealth,
    /// Overall state.
    pub state: RigState,
    /// Cards found.
    pub cards: Vec<CardInfo>,
    /// Units being computed now.
    pub units_running: u32,
    /// Units received and waiting for a card.
    pub units_queued: u32,
    /// Highest receipt sequence number journaled.
    pub seq_journaled: u64,
    /// Receipts journaled but not yet acknowledged by the coordinator.
    pub receipts_unacked: u64,
    /// When rigd started, Unix ms.
    pub started_ms: u64,
    /// When this message was sent, Unix ms.
    pub sent_ms: u64,
}

impl Frame for RigStatus {
    const KIND: u8 = 1;
    const NAME: &'static str = "RigStatus";
    fn validate(&self) -> Result<(), String> {
        cap("cards", self.cards.len(), MAX_CARDS)?;
        text("agent_version", &self.agent_version)?;
        text("key_backend", &self.key_backend)?;
        self.key_health.validate()?;
        self.cards
            .iter()
            .try_for_each(|c| text("card name", &c.name))
    }
}

/// What one card is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardState {
    /// Waiting for a unit.
    Idle,
    /// Computing a unit.
    Busy,
    /// Held back by the thermal governor or an operator.
    Paused,
    /// Its worker is being restarted after a failure.
    Restarting,
    /// Set aside after repeated failures.
    Quarantined,
}

/// One telemetry sample of one card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// The card.
    pub uuid: GpuUuid,
    /// Core temperature, tenths of a degree C.
    pub core_dc: i16,
    /// Memory temperature, tenths of a degree C, where the card reports it.
    pub mem_dc: Option<i16>,
    /// Power draw, watts.
    pub power_w: u16,
    /// Power limit in force, watts.
    pub power_limit_w: u16,
    /// Fan speed, percent.
    pub fan_pct: u8,
    /// Utilization, percent.
    pub util_pct: u8,
    /// SM clock, MHz.
    pub sm_mhz: u16,
    /// Thermal governor level (0..=5).
    pub governor_level: u8,
    /// What the card is doing.
    pub state: CardState,
    /// The unit it is computing.
    pub unit: Option<u64>,
    /// Units finished since rigd started.
    pub units_done: u32,
    /// Worker restarts since rigd started.
    pub worker_restarts: u16,
    /// Framebuffer memory in use, MiB.
    pub fb_used_mib: u32,
    /// The last Xid error the driver reported for the card since rigd started, 0 for none.
    pub xid: u32,
}

/// Retained on `rig/{rig}/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// The rig.
    pub rig: RigId,
    /// Sample time, Unix ms.
    pub at_ms: u64,
    /// One sample per card.
    pub gpus: Vec<GpuSample>,
}

impl Frame for Telemetry {
    const KIND: u8 = 2;
    const NAME: &'static str = "Telemetry";
    fn validate(&self) -> Result<(), String> {
        cap("gpus", self.gpus.len(), MAX_CARDS)
    }
}

/// On `rig/{rig}/units`: units assigned to the rig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitAssignment {
    /// The units.
    pub units: Vec<WorkUnit>,
}

impl Frame for UnitAssignment {
    const KIND: u8 = 3;
    const NAME: &'static str = "UnitAssignment";
    fn validate(&self) -> Result<(), String> {
        cap("units", self.units.len(), MAX_UNITS_PER_MESSAGE)?;
        self.units.iter().try_for_each(|u| u.kind.validate())
    }
}

/// On `rig/{rig}/receipts`: a signed batch of receipts with the outputs they vouch for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptBatch {
    /// The signed header.
    pub header: BatchHeader,
    /// Signature over `header.signing_digest()`.
    pub signature: Signature,
    /// The receipts, in sequence order, each with its inclusion proof and output.
    pub items: Vec<ReceiptItem>,
}

impl Frame for ReceiptBatch {
    const KIND: u8 = 4;
    const NAME: &'static str = "ReceiptBatch";
    fn validate(&self) -> Result<(), String> {
        cap("items", self.items.len(), MAX_BATCH)?;
        if self.items.len() != self.header.count as usize {
            return Err(format!(
                "header counts {} receipts, batch carries {}",
                self.header.count,
                self.items.len()
            ));
        }
        if self.header.first_seq == 0 {
            return Err("sequence numbers start at 1".into());
        }
        let count = u64::from(self.header.count);
        if self.header.first_seq.checked_add(count).is_none() {
            return Err(format!(
                "first_seq {} + count {count} overflows",
                self.header.first_seq
            ));
        }
        for (i, item) in self.items.iter().enumerate() {
            let r = &item.receipt;
            let expected = self.header.first_seq.checked_add(i as u64);
            if r.rig != self.header.rig || Some(r.seq) != expected {
                return Err(format!(
                    "item {i} (rig {} seq {}) does not follow the header",
                    r.rig, r.seq
                ));
            }
            cap("proof", item.proof.len(), crate::merkle::MAX_PROOF)?;
            item.output.validate()?;
        }
        Ok(())
    }
}

/// On `rig/{rig}/acks`: batches the coordinator has durably recorded (credited, pending or
/// rejected); the rig may forget them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The rig.
    pub rig: RigId,
    /// Each recorded batch.
    pub batches: Vec<AckedBatch>,
}

/// One acknowledged batch: its first sequence number and the digest its rig signed
/// ([`crate::BatchHeader::signing_digest`]). A rig forgets a batch only when both match the
/// batch it holds, so an ack forged or meant for another batch drops nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedBatch {
    /// First sequence number of the batch.
    pub first_seq: u64,
    /// The batch header's EIP-712 signing digest.
    pub digest: crate::digest::Hash32,
}

impl Frame for Ack {
    const KIND: u8 = 5;
    const NAME: &'static str = "Ack";
    fn validate(&self) -> Result<(), String> {
        cap("batches", self.batches.len(), MAX_BATCH)
    }
}

/// On `rig/{rig}/acks`, beside [`Ack`]: batches the coordinator will never record because it
/// cannot attribute them to the rig, with why. The rig keeps such a batch in its journal as
/// refused and stops sending it. Like an ack, a refusal names the batch's first sequence
/// number and signed digest, and a rig changes only the batch that matches both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The rig.
    pub rig: RigId,
    /// Each refused batch.
    pub batches: Vec<RefusedBatch>,
}

/// One refused batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedBatch {
    /// First sequence number of the batch.
    pub first_seq: u64,
    /// The batch header's EIP-712 signing digest.
    pub digest: crate::digest::Hash32,
    /// Why it is refused.
    pub reason: RefusalReason,
}

/// Why a batch cannot be attributed to its rig.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalReason {
    /// The rig announced another key than the one the network pinned for it (a replaced TPM
    /// or token): nothing it signs with the new key is credited until it is provisioned again.
    KeyChanged,
    /// The batch is signed, by the rig's key, for another deployment (another chain or
    /// settlement contract) than any this network pays for.
    ForeignDomain,
}

impl RefusalReason {
    /// The reason as the ledger records it.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::KeyChanged => "key changed",
            RefusalReason::ForeignDomain => "signed for another deployment",
        }
    }
}

impl Frame for Refusal {
    const KIND: u8 = 12;
    const NAME: &'static str = "Refusal";
    fn validate(&self) -> Result<(), String> {
        cap("batches", self.batches.len(), MAX_BATCH)
    }
}

/// One card's line in the ledger. Amounts are in micro-credits (10^-6 of the network's
/// payment unit), integers so that sums are exact.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CardEarnings {
    /// The card.
    pub card: Option<GpuUuid>,
    /// Units verified and paid.
    pub credited_units: u64,
    /// Amount paid.
    pub credited_micros: u64,
    /// Units received, not yet verified.
    pub pending_units: u64,
    /// Amount they will pay once verified.
    pub pending_micros: u64,
    /// Units refused (bad result, duplicate, bad signature).
    pub rejected_units: u64,
}

/// Retained on `rig/{rig}/earnings`, published by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Earnings {
    /// The rig.
    pub rig: RigId,
    /// Per card.
    pub cards: Vec<CardEarnings>,
    /// Price, micro-credits per MFLOP of work.
    pub micros_per_mflop: u64,
    /// Highest receipt sequence number recorded from the rig.
    pub last_seq: u64,
    /// Sequence numbers below `last_seq` not received yet.
    pub missing_seqs: u64,
    /// When the ledger last changed, Unix ms.
    pub updated_ms: u64,
    /// The key the network pinned for the rig at first sight: the one its receipts are
    /// verified under (not the key a rig announces about itself).
    pub pinned_key: Option<PublicKey>,
    /// Whether the rig has since announced another key (its batches are refused).
    pub key_changed: bool,
}

impl Earnings {
    /// The sum over all cards.
    pub fn total(&self) -> CardEarnings {
        self.cards.iter().fold(CardEarnings::default(), |mut t, c| {
            t.credited_units += c.credited_units;
            t.credited_micros += c.credited_micros;
            t.pending_units += c.pending_units;
            t.pending_micros += c.pending_micros;
            t.rejected_units += c.rejected_units;
            t
        })
    }
}

impl Frame for Earnings {
    const KIND: u8 = 6;
    const NAME: &'static str = "Earnings";
    fn validate(&self) -> Result<(), String> {
        cap("cards", self.cards.len(), 4 * MAX_CARDS)
    }
}

/// Retained on [`crate::topics::COORDINATOR_STATUS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorStatus {
    /// The job running.
    pub job: JobId,
    /// Steps stitched.
    pub step: u64,
    /// Steps planned.
    pub steps_total: u64,
    /// Loss after the last step (mean cross-entropy), where the job has one.
    pub loss: Option<f32>,
    /// Units whose results arrived.
    pub units_done: u64,
    /// Units whose results were checked by recomputation or redundancy.
    pub units_verified: u64,
    /// Units refused.
    pub units_rejected: u64,
    /// Leases that ran out before their result arrived (the unit went to another rig), since
    /// this coordinator started.
    pub leases_expired: u64,
    /// Refusals sent for whole batches that cannot be attributed to the rig's pinned key (a
    /// changed or unknown key; a batch sent again is refused again), since this coordinator
    /// started.
    pub batches_refused: u64,
    /// Receipts credited (a GEMM result when it is accepted, an MLP result when its step is
    /// stitched), since this coordinator started.
    pub receipts_credited: u64,
    /// Rigs online.
    pub rigs_online: u32,
    /// Whether the job has finished.
    pub finished: bool,
    /// When this was sent, Unix ms.
    pub updated_ms: u64,
}

impl Frame for CoordinatorStatus {
    const KIND: u8 = 7;
    const NAME: &'static str = "CoordinatorStatus";
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_keeps_whole_characters_within_the_cap() {
        assert_eq!(clip("short", 128), "short");
        assert_eq!(clip("abcdef", 3), "abc");
        // "é" is two bytes: a cap inside it leaves it out rather than splitting it.
        assert_eq!(clip("aéb", 2), "a");
        assert_eq!(clip("aéb", 3), "aé");
        let long = "€".repeat(100);
        assert!(clip(&long, 128).len() <= 128);
        assert_eq!(clip("", 0), "");
    }
}
