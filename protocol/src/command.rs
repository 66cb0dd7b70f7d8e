//! Signed operator commands (`rig/{rig}/commands`) and their replies (`rig/{rig}/replies`).
//!
//! A [`Command`] is typed: one [`Action`] with its own payload, never a string to run. It
//! names the rig it is for, the operator's Ed25519 public key, a nonce that must grow with
//! every command the operator sends to that rig, when it was issued and when it expires, and
//! an Ed25519 signature over [`Command::signing_digest`].
//!
//! # Signed bytes
//!
//! The signature is not over postcard bytes. The operator signs the 32-byte SHA-256 digest of
//! this byte string (all integers big-endian, `str8` = one length byte then the UTF-8 bytes,
//! `opt` = `0x00` for absent or `0x01` followed by the value):
//!
//! ```text
//! "rigd/v1/command\0"           16 bytes, the domain tag
//! rig                           str8
//! operator                      32 bytes, Ed25519 public key
//! nonce                         u64
//! issued_ms                     u64   Unix ms
//! expires_ms                    u64   Unix ms
//! action tag                    u8    (see below)
//! action fields
//! ```
//!
//! | tag | action | fields |
//! |---|---|---|
//! | 1 | drain | none |
//! | 2 | pause | gpu: opt str8 |
//! | 3 | resume | gpu: opt str8 |
//! | 4 | set power limit | gpu: opt str8, watts: u32 |
//! | 5 | set thermal limits | gpu: opt str8, target_c, critical_c, hysteresis_c, mem_limit_c, mem_critical_c: each opt u8 |
//! | 6 | restart worker | gpu: str8 |
//! | 7 | quarantine card | gpu: str8 |
//! | 8 | release card | gpu: str8 |
//! | 9 | rotate logs | none |
//! | 10 | report diagnostics | none |
//! | 11 | update | bundle: str16 (URL), version: str8, sha256: 32 bytes |
//!
//! `str16` = two length bytes (big-endian) then the UTF-8 bytes.
//! The test `signing_digest_follows_the_documented_layout` builds this layout by hand.

use crate::digest::{sha256, Hash32};
use crate::frame::{cap, Frame};
use crate::ids::{GpuUuid, RigId};
use crate::messages::{CardState, MAX_CARDS, MAX_TEXT};
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The domain tag that starts every signed command digest.
pub const COMMAND_DOMAIN: &[u8; 16] = b"rigd/v1/command\0";

/// The longest a command may live, from issue to expiry, ms.
pub const MAX_COMMAND_TTL_MS: u64 = 3_600_000;

/// The most bytes of MQTT correlation data rigd echoes.
pub const MAX_CORRELATION_BYTES: usize = 64;

/// What a command asks a rig to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Finish running units and let their receipts flush, start no new ones, then idle;
    /// answered again once drained.
    Drain,
    /// Stop now (running units go back to the queue) and start nothing: the whole rig, or
    /// one card.
    Pause {
        /// One card, or the whole rig.
        gpu: Option<GpuUuid>,
    },
    /// Take work again after a drain or a pause: the whole rig (every card), or one card.
    Resume {
        /// One card, or the whole rig.
        gpu: Option<GpuUuid>,
    },
    /// Cap a card's power limit (every card when `gpu` is absent); the governor may set it
    /// lower still, never higher.
    SetPowerLimit {
        /// One card, or every card.
        gpu: Option<GpuUuid>,
        /// The cap, W.
        watts: u32,
    },
    /// Replace a card's thermal limits (every card when `gpu` is absent); absent fields keep
    /// rig.conf's value. Checked against the card like rig.conf's `[thermal]`.
    SetThermalLimits {
        /// One card, or every card.
        gpu: Option<GpuUuid>,
        /// The limits.
        limits: ThermalLimitsCmd,
    },
    /// Kill the card's worker process; a fresh one starts with the next unit.
    RestartWorker {
        /// The card.
        gpu: GpuUuid,
    },
    /// Set a card aside: its running unit goes back to the queue, it takes no more.
    Quarantine {
        /// The card.
        gpu: GpuUuid,
    },
    /// Lift a card's quarantine; it starts paused until it reads cool.
    Release {
        /// The card.
        gpu: GpuUuid,
    },
    /// Rotate the logs.
    RotateLogs,
    /// Report versions, cards, governor levels and journal figures.
    Diagnostics,
    /// Drain, then fetch the RAUC bundle at `bundle` (HTTPS), check that it is the file of
    /// `sha256` and an image of `version` for this machine signed by the fleet's update key,
    /// install it into the other root slot and reboot into it. The new slot is marked good
    /// once rigd is READY on it, on the broker, with its cards; otherwise the rig boots the
    /// old slot again by itself ([`crate::update`]).
    Update {
        /// Where the bundle is: an `https://` URL.
        bundle: String,
        /// The image version the bundle must hold.
        version: String,
        /// SHA-256 of the bundle file.
        sha256: Hash32,
    },
}

/// The longest bundle URL a command carries, bytes.
pub const MAX_BUNDLE_URL: usize = 1024;

/// Thermal limits carried by a command, whole degrees C.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThermalLimitsCmd {
    /// Core target.
    pub target_c: Option<u8>,
    /// Core critical.
    pub critical_c: Option<u8>,
    /// Cool-down below critical before work resumes.
    pub hysteresis_c: Option<u8>,
    /// Memory target.
    pub mem_limit_c: Option<u8>,
    /// Memory critical.
    pub mem_critical_c: Option<u8>,
}

/// The kinds of [`Action`], as named in rig.conf's `allowed_commands`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// [`Action::Drain`].
    Drain,
    /// [`Action::Pause`].
    Pause,
    /// [`Action::Resume`].
    Resume,
    /// [`Action::SetPowerLimit`].
    SetPowerLimit,
    /// [`Action::SetThermalLimits`].
    SetThermalLimits,
    /// [`Action::RestartWorker`].
    RestartWorker,
    /// [`Action::Quarantine`].
    Quarantine,
    /// [`Action::Release`].
    Release,
    /// [`Action::RotateLogs`].
    RotateLogs,
    /// [`Action::Diagnostics`].
    Diagnostics,
    /// [`Action::Update`].
    Update,
}

impl ActionKind {
    /// The name used in rig.conf and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Drain => "drain",
            ActionKind::Pause => "pause",
            ActionKind::Resume => "resume",
            ActionKind::SetPowerLimit => "set_power_limit",
            ActionKind::SetThermalLimits => "set_thermal_limits",
            ActionKind::RestartWorker => "restart_worker",
            ActionKind::Quarantine => "quarantine",
            ActionKind::Release => "release",
            ActionKind::RotateLogs => "rotate_logs",
            ActionKind::Diagnostics => "diagnostics",
            ActionKind::Update => "update",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Action {
    /// Its kind.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Drain => ActionKind::Drain,
            Action::Pause { .. } => ActionKind::Pause,
            Action::Resume { .. } => ActionKind::Resume,
            Action::SetPowerLimit { .. } => ActionKind::SetPowerLimit,
            Action::SetThermalLimits { .. } => ActionKind::SetThermalLimits,
            Action::RestartWorker { .. } => ActionKind::RestartWorker,
            Action::Quarantine { .. } => ActionKind::Quarantine,
            Action::Release { .. } => ActionKind::Release,
            Action::RotateLogs => ActionKind::RotateLogs,
            Action::Diagnostics => ActionKind::Diagnostics,
            Action::Update { .. } => ActionKind::Update,
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Action::Drain => 1,
            Action::Pause { .. } => 2,
            Action::Resume { .. } => 3,
            Action::SetPowerLimit { .. } => 4,
            Action::SetThermalLimits { .. } => 5,
            Action::RestartWorker { .. } => 6,
            Action::Quarantine { .. } => 7,
            Action::Release { .. } => 8,
            Action::RotateLogs => 9,
            Action::Diagnostics => 10,
            Action::Update { .. } => 11,
        }
    }

    fn write_fields(&self, out: &mut Vec<u8>) {
        match self {
            Action::Drain | Action::RotateLogs | Action::Diagnostics => {}
            Action::Pause { gpu } | Action::Resume { gpu } => opt_gpu(out, gpu.as_ref()),
            Action::SetPowerLimit { gpu, watts } => {
                opt_gpu(out, gpu.as_ref());
                out.extend_from_slice(&watts.to_be_bytes());
            }
            Action::SetThermalLimits { gpu, limits } => {
                opt_gpu(out, gpu.as_ref());
                for v in [
                    limits.target_c,
                    limits.critical_c,
                    limits.hysteresis_c,
                    limits.mem_limit_c,
                    limits.mem_critical_c,
                ] {
                    match v {
                        Some(c) => out.extend_from_slice(&[1, c]),
                        None => out.push(0),
                    }
                }
            }
            Action::RestartWorker { gpu }
            | Action::Quarantine { gpu }
            | Action::Release { gpu } => str8(out, gpu.as_str()),
            Action::Update {
                bundle,
                version,
                sha256,
            } => {
                let url = &bundle.as_bytes()[..bundle.len().min(usize::from(u16::MAX))];
                out.extend_from_slice(&(url.len() as u16).to_be_bytes());
                out.extend_from_slice(url);
                str8(out, version);
                out.extend_from_slice(sha256);
            }
        }
    }

    /// The card it is about, where it names one.
    pub fn gpu(&self) -> Option<&GpuUuid> {
        match self {
            Action::Pause { gpu }
            | Action::Resume { gpu }
            | Action::SetPowerLimit { gpu, .. }
            | Action::SetThermalLimits { gpu, .. } => gpu.as_ref(),
            Action::RestartWorker { gpu }
            | Action::Quarantine { gpu }
            | Action::Release { gpu } => Some(gpu),
            Action::Drain | Action::RotateLogs | Action::Diagnostics | Action::Update { .. } => {
                None
            }
        }
    }

    /// Why the action cannot be what it says, if it cannot.
    fn check(&self) -> Result<(), String> {
        if let Action::Update {
            bundle, version, ..
        } = self
        {
            if bundle.len() > MAX_BUNDLE_URL {
                return Err(format!("bundle URL over {MAX_BUNDLE_URL} bytes"));
            }
            if !bundle.starts_with("https://") || bundle.chars().any(|c| c.is_whitespace()) {
                return Err("bundle URL must be an https:// URL".into());
            }
            if version.is_empty()
                || version.len() > 64
                || !version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'))
            {
                return Err(
                    "version must be 1-64 characters of letters, digits and . - + _".into(),
                );
            }
        }
        Ok(())
    }
}

/// Identifiers are capped at 64 bytes, so one length byte always fits.
fn str8(out: &mut Vec<u8>, s: &str) {
    out.push(s.len().min(255) as u8);
    out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
}

fn opt_gpu(out: &mut Vec<u8>, gpu: Option<&GpuUuid>) {
    match gpu {
        Some(g) => {
            out.push(1);
            str8(out, g.as_str());
        }
        None => out.push(0),
    }
}

/// On `rig/{rig}/commands`: a signed operator command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The rig it is for.
    pub rig: RigId,
    /// The operator's Ed25519 public key.
    pub operator: [u8; 32],
    /// Grows with every command this operator sends to this rig.
    pub nonce: u64,
    /// When it was issued, Unix ms.
    pub issued_ms: u64,
    /// After this, Unix ms, it is refused.
    pub expires_ms: u64,
    /// What to do.
    pub action: Action,
    /// Ed25519 signature (64 bytes) over [`Command::signing_digest`].
    pub signature: Vec<u8>,
}

impl Command {
    /// The bytes the digest is taken over (see the module documentation).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(COMMAND_DOMAIN);
        str8(&mut out, self.rig.as_str());
        out.extend_from_slice(&self.operator);
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out.extend_from_slice(&self.issued_ms.to_be_bytes());
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
        out.push(self.action.tag());
        self.action.write_fields(&mut out);
        out
    }

    /// SHA-256 of [`Command::signing_bytes`]: what the operator signs.
    pub fn signing_digest(&self) -> Hash32 {
        sha256(&[&self.signing_bytes()])
    }

    /// Whether `signature` is the operator's Ed25519 signature over the digest.
    pub fn signature_valid(&self) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.operator)
            .verify(&self.signing_digest(), &self.signature)
            .is_ok()
    }
}

impl Frame for Command {
    const KIND: u8 = 8;
    const NAME: &'static str = "Command";
    fn validate(&self) -> Result<(), String> {
        if self.signature.len() != 64 {
            return Err(format!(
                "signature is {} bytes, an Ed25519 signature is 64",
                self.signature.len()
            ));
        }
        self.action.check()
    }
}

/// Why a rig refused a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The payload is not a command frame.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// The command names another rig.
    #[error("command is for rig {0}")]
    WrongRig(RigId),
    /// The operator key is not one the rig trusts.
    #[error("operator key {0} is not trusted by this rig")]
    UnknownOperator(String),
    /// The signature does not verify under the operator key.
    #[error("signature does not verify: forged or altered")]
    BadSignature,
    /// The command has expired.
    #[error("expired at {expires_ms} (rig clock {now_ms})")]
    Expired {
        /// Its expiry, Unix ms.
        expires_ms: u64,
        /// The rig's time, Unix ms.
        now_ms: u64,
    },
    /// Issued in the future, or valid for longer than the rig accepts.
    #[error("validity window refused: {0}")]
    Window(String),
    /// The nonce is not above the last one accepted from this operator.
    #[error("replayed: nonce {nonce} is not above {last}, the last accepted from this operator")]
    Replayed {
        /// The command's nonce.
        nonce: u64,
        /// The last accepted.
        last: u64,
    },
    /// The rig's configuration does not allow this action.
    #[error("action {0} is not allowed on this rig")]
    NotAllowed(ActionKind),
    /// The response topic is outside the rig's own `replies` topic.
    #[error("response topic {0:?} refused: replies go to the rig's own replies topic")]
    ResponseTopic(String),
}

/// One card in a diagnostics report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardDiagnostics {
    /// The card.
    pub uuid: GpuUuid,
    /// Model name.
    pub name: String,
    /// What it is doing.
    pub state: CardState,
    /// Governor level (0..=5).
    pub governor_level: u8,
    /// The operator's power cap, W.
    pub power_cap_w: Option<u32>,
    /// Thermal target in force, C.
    pub target_c: u8,
    /// Critical temperature in force, C.
    pub critical_c: u8,
    /// Held by an operator pause.
    pub operator_paused: bool,
    /// Why it is quarantined, if it is.
    pub quarantined: Option<String>,
    /// Units finished since start.
    pub units_done: u32,
    /// Worker restarts since start.
    pub worker_restarts: u16,
}

/// What `diagnostics` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// rigd's version.
    pub agent_version: String,
    /// Where the receipt key lives.
    pub key_backend: String,
    /// Whether that key store answers.
    pub key_health: crate::messages::KeyHealth,
    /// Units queued for a card.
    pub units_queued: u32,
    /// Units running.
    pub units_running: u32,
    /// Highest receipt sequence number journaled.
    pub seq_journaled: u64,
    /// Receipts not acknowledged by the coordinator.
    pub receipts_unacked: u64,
    /// Whether an operator drain or pause holds the rig.
    pub held: bool,
    /// Commands accepted since start.
    pub commands_accepted: u64,
    /// Commands refused since start.
    pub commands_rejected: u64,
    /// The cards.
    pub cards: Vec<CardDiagnostics>,
}

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (or, for a drain, started: a [`Outcome::Completed`] follows once drained).
    Accepted(String),
    /// A drain has finished: no unit runs and every receipt is acknowledged.
    Completed(String),
    /// Refused before anything was done.
    Rejected(Rejection),
    /// Accepted but could not be carried out (an unknown card, a limit out of range).
    Failed(String),
    /// The rig does not do this (with why).
    Unsupported(String),
    /// The diagnostics report.
    Diagnostics(Box<Diagnostics>),
}

impl Outcome {
    /// Whether no further reply follows for this command.
    pub fn is_final(&self, action: ActionKind) -> bool {
        !(matches!(action, ActionKind::Drain | ActionKind::Update)
            && matches!(self, Outcome::Accepted(_)))
    }
}

/// On `rig/{rig}/replies`, with the command's MQTT correlation data: what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    /// The rig answering.
    pub rig: RigId,
    /// The command's nonce (0 when the command could not be decoded).
    pub nonce: u64,
    /// The command's action, when it could be decoded.
    pub action: Option<ActionKind>,
    /// What became of it.
    pub outcome: Outcome,
}

impl Frame for CommandReply {
    const KIND: u8 = 9;
    const NAME: &'static str = "CommandReply";
    fn validate(&self) -> Result<(), String> {
        let long = |what: &str, s: &str| {
            if s.len() > 4 * MAX_TEXT {
                Err(format!("{what} is {} bytes, over the cap", s.len()))
            } else {
                Ok(())
            }
        };
        match &self.outcome {
            Outcome::Accepted(s)
            | Outcome::Completed(s)
            | Outcome::Failed(s)
            | Outcome::Unsupported(s) => long("detail", s),
            Outcome::Rejected(Rejection::Malformed(s))
            | Outcome::Rejected(Rejection::UnknownOperator(s))
            | Outcome::Rejected(Rejection::Window(s))
            | Outcome::Rejected(Rejection::ResponseTopic(s)) => long("reason", s),
            Outcome::Rejected(_) => Ok(()),
            Outcome::Diagnostics(d) => {
                cap("cards", d.cards.len(), MAX_CARDS)?;
                long("agent_version", &d.agent_version)?;
                long("key_backend", &d.key_backend)?;
                d.key_health.validate()?;
                d.cards.iter().try_for_each(|c| {
                    long("card name", &c.name)?;
                    c.quarantined
                        .as_deref()
                        .map_or(Ok(()), |q| long("quarantine reason", q))
                })
            }
        }
    }
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
