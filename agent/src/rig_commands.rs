//! The supervisor's side of operator commands: check ([`crate::commands::Verifier`]),
//! record the nonce durably, act on the cards, and answer on the rig's `replies` topic with
//! the command's MQTT 5 correlation data.

use super::Rig;
use crate::commands::{NonceStore, Verifier};
use crate::config::RigConfig;
use crate::worker::unix_ms;
use crate::RunError;
use bytes::Bytes;
use rigd_protocol::command::{
    Action, ActionKind, Command, CommandReply, Diagnostics, Outcome, Rejection, ThermalLimitsCmd,
    MAX_CORRELATION_BYTES,
};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{decode, encode, GpuUuid, RigState};
use rumqttc::v5::mqttbytes::v5::Publish;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a reply goes: the rig's own `replies` topic, with the command's correlation data.
#[derive(Debug, Clone)]
pub(super) struct ReplyTo {
    correlation: Option<Bytes>,
    nonce: u64,
    action: Option<ActionKind>,
}

/// What the supervisor keeps about commands.
pub(super) struct CommandState {
    verifier: Verifier,
    nonces: NonceStore,
    accepted: u64,
    rejected: u64,
    /// Drains waiting for the rig to finish its units and flush its receipts.
    drains: Vec<ReplyTo>,
    /// An operator drain or pause holds the rig: no unit starts until a resume.
    pub(super) held: bool,
    /// Where the holds are kept across restarts.
    holds_path: PathBuf,
}

/// Operator drains and pauses as kept in the state directory, so that neither a restart
/// nor a crash of rigd puts a held rig or card back to work.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct OperatorHolds {
    /// A drain or a pause of the whole rig.
    rig: bool,
    /// Cards paused one by one.
    cards: Vec<GpuUuid>,
}

impl CommandState {
    /// The policy of `config`, with the nonces of its state directory.
    pub(super) fn open(config: &RigConfig) -> Result<Self, RunError> {
        let nonces =
            NonceStore::open(&config.state_dir).map_err(|e| RunError::Runtime(e.to_string()))?;
        tracing::info!(
            operators = config.operator_keys.len(),
            allowed = ?config.allowed_commands,
            "signed commands: operator keys trusted"
        );
        Ok(Self {
            verifier: Verifier::new(
                config.rig_id.clone(),
                config.operator_keys(),
                config.allowed_commands.clone(),
            ),
            nonces,
            accepted: 0,
            rejected: 0,
            drains: vec![],
            held: false,
            holds_path: config.state_dir.join(crate::state_dir::HOLDS),
        })
    }
}

fn clipped(s: &str) -> String {
    s.chars().take(200).collect()
}

impl Rig {
    /// Puts back the drains and pauses in effect when rigd last stopped. A holds file that
    /// cannot be read holds the whole rig: an operator's stop is never lost to a bad disk.
    pub(super) fn restore_holds(&mut self) {
        let path = &self.commands.holds_path;
        let read = crate::state_dir::read_optional(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| match bytes {
                None => Ok(OperatorHolds::default()),
                Some(b) => serde_json::from_slice::<OperatorHolds>(&b).map_err(|e| e.to_string()),
            });
        let holds = read.unwrap_or_else(|error| {
            tracing::error!(path = %path.display(), %error, "operator holds unreadable: the rig stays held until an operator resumes it");
            OperatorHolds {
                rig: true,
                cards: vec![],
            }
        });
        if holds == OperatorHolds::default() {
            return;
        }
        tracing::info!(
            rig = holds.rig,
            cards = holds.cards.len(),
            "operator holds kept from before the restart"
        );
        self.commands.held = holds.rig;
        for uuid in &holds.cards {
            match self.slots.find(uuid) {
                Some(i) => self.slots.hold(i, true),
                None => tracing::warn!(gpu = %uuid, "a paused card is gone; its pause is dropped"),
            }
        }
    }

    /// Records the drains and pauses now in effect; false (logged) if they could not be.
    fn save_holds(&self) -> bool {
        let holds = OperatorHolds {
            rig: self.commands.held,
            cards: self.slots.held_cards(),
        };
        let written = serde_json::to_vec(&holds)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::state_dir::write_atomic(&self.commands.holds_path, &b, 0o644));
        if let Err(error) = &written {
            tracing::error!(path = %self.commands.holds_path.display(), %error, "operator holds not recorded: a restart would lose them");
        }
        written.is_ok()
    }

    /// Handles one message of the `commands` topic.
    pub(super) fn on_command(&mut self, p: &Publish) {
        let props = p.properties.as_ref();
        let response = props.and_then(|p| p.response_topic.clone());
        let own = topics::rig(&self.config.rig_id, Channel::Replies);
        let decoded = decode::<Command>(&p.payload);
        let to = ReplyTo {
            correlation: props
                .and_then(|p| p.correlation_data.clone())
                .filter(|c| c.len() <= MAX_CORRELATION_BYTES),
            nonce: decoded.as_ref().map_or(0, |c| c.nonce),
            action: decoded.as_ref().ok().map(|c| c.action.kind()),
        };
        let checked = match decoded {
            Err(e) => Err((Rejection::Malformed(clipped(&e.to_string())), None)),
            Ok(cmd) => {
                let verdict = match &response {
                    Some(t) if *t != own => Err(Rejection::ResponseTopic(clipped(t))),
                    _ => self.commands.verifier.check(
                        &cmd,
                        unix_ms(),
                        self.commands.nonces.last(&cmd.operator),
                    ),
                };
                match verdict {
                    Ok(()) => Ok(cmd),
                    Err(r) => Err((r, Some(cmd.operator))),
                }
            }
        };
        let cmd = match checked {
            Ok(cmd) => cmd,
            Err((reason, operator)) => {
                self.commands.rejected += 1;
                tracing::warn!(
                    nonce = to.nonce,
                    action = ?to.action,
                    operator = operator.map(hex::encode).unwrap_or_default(),
                    reason = %reason,
                    rejected = self.commands.rejected,
                    "command refused"
                );
                self.reply_if(&response, &to, Outcome::Rejected(reason));
                return;
            }
        };
        if let Err(e) = self.commands.nonces.accept(cmd.operator, cmd.nonce) {
            tracing::error!(error = %e, "command not carried out: its nonce could not be recorded");
            self.reply_if(&response, &to, Outcome::Failed(clipped(&e.to_string())));
            return;
        }
        self.commands.accepted += 1;
        tracing::info!(nonce = cmd.nonce, action = %cmd.action.kind(), gpu = ?cmd.action.gpu().map(GpuUuid::as_str),
            operator = %hex::encode(cmd.operator), "command accepted");
        let mut outcome = self.act(&cmd.action, &to, response.is_some());
        let holds = matches!(
            cmd.action,
            Action::Drain | Action::Pause { .. } | Action::Resume { .. }
        );
        if holds && !self.save_holds() {
            outcome = Outcome::Failed(
                "in effect now, but not recorded on disk: a restart of rigd would lose it".into(),
            );
        }
        self.reply_if(&response, &to, outcome);
    }

    fn act(&mut self, action: &Action, to: &ReplyTo, answered: bool) -> Outcome {
        let cards = match action.gpu() {
            Some(uuid) => match self.slots.find(uuid) {
                Some(i) => vec![i],
                None => return Outcome::Failed(format!("no card {uuid} on this rig")),
            },
            None => self.slots.indices().collect(),
        };
        let each =
            |slots: &mut crate::slots::Slots,
             f: &dyn Fn(&mut crate::slots::Slots, usize) -> Result<(), String>| {
                cards.iter().try_for_each(|&i| f(slots, i))
            };
        let done = |r: Result<(), String>, ok: String| match r {
            Ok(()) => Outcome::Accepted(ok),
            Err(e) => Outcome::Failed(e),
        };
        match action {
            Action::Drain => {
                self.commands.held = true;
                self.publish_status(self.state());
                if self.drained() {
                    return Outcome::Completed(
                        "drained: no unit running, every receipt acknowledged".into(),
                    );
                }
                if answered {
                    self.commands.drains.push(to.clone());
                }
                Outcome::Accepted(format!(
                    "draining: {} units running, {} receipts unacknowledged",
                    self.slots.running(),
                    self.stats.unacked_receipts
                ))
            }
            Action::Pause { gpu } => {
                if gpu.is_none() {
                    self.commands.held = true;
                }
                for &i in &cards {
                    self.slots.hold(i, true);
                }
                Outcome::Accepted(format!(
                    "paused {} cards; running units queued again",
                    cards.len()
                ))
            }
            Action::Resume { gpu } => {
                for &i in &cards {
                    self.slots.hold(i, false);
                }
                if gpu.is_none() {
                    self.commands.held = false;
                    for waiting in std::mem::take(&mut self.commands.drains) {
                        self.reply(
                            &waiting,
                            Outcome::Failed("resumed before the drain finished".into()),
                        );
                    }
                    return Outcome::Accepted(format!("resumed: {} cards take work", cards.len()));
                }
                if self.commands.held {
                    Outcome::Accepted(
                        "card resumed; the rig is still held by a drain or pause".into(),
                    )
                } else {
                    Outcome::Accepted("card resumed".into())
                }
            }
            Action::SetPowerLimit { watts, .. } => done(
                each(&mut self.slots, &|s, i| s.set_power_cap(i, *watts)),
                format!("power limit capped at {watts} W on {} cards", cards.len()),
            ),
            Action::SetThermalLimits { limits, .. } => {
                let overrides = self.thermal_overrides(limits);
                done(
                    each(&mut self.slots, &|s, i| s.set_limits(i, &overrides)),
                    format!("thermal limits set on {} cards", cards.len()),
                )
            }
            Action::RestartWorker { .. } => {
                cards.iter().for_each(|&i| self.slots.restart_worker(i));
                Outcome::Accepted(
                    "worker replaced: a running unit is queued again, the next unit starts on a fresh worker"
                        .into(),
                )
            }
            Action::Quarantine { .. } => {
                cards
                    .iter()
                    .for_each(|&i| self.slots.quarantine(i, "quarantined by an operator"));
                Outcome::Accepted("card quarantined".into())
            }
            Action::Release { .. } => {
                if cards.iter().all(|&i| self.slots.release(i)) {
                    Outcome::Accepted(
                        "quarantine lifted; the card starts once it reads cool".into(),
                    )
                } else {
                    Outcome::Failed("the card is not quarantined".into())
                }
            }
            Action::RotateLogs => Outcome::Unsupported(
                "rigd keeps no log files: it logs to stderr, which journald stores and rotates \
                 (journalctl --rotate, SystemMaxUse= in journald.conf)"
                    .into(),
            ),
            Action::Diagnostics => Outcome::Diagnostics(Box::new(self.diagnostics())),
        }
    }

    fn thermal_overrides(&self, cmd: &ThermalLimitsCmd) -> crate::governor::ThermalOverrides {
        let mut o = self.config.thermal.clone();
        let set = |field: &mut Option<f32>, v: Option<u8>| {
            if let Some(c) = v {
                *field = Some(f32::from(c));
            }
        };
        set(&mut o.target_c, cmd.target_c);
        set(&mut o.critical_c, cmd.critical_c);
        set(&mut o.hysteresis_c, cmd.hysteresis_c);
        set(&mut o.mem_limit_c, cmd.mem_limit_c);
        set(&mut o.mem_critical_c, cmd.mem_critical_c);
        o
    }

    fn diagnostics(&self) -> Diagnostics {
        let status = self.status(RigState::Idle);
        Diagnostics {
            agent_version: status.agent_version,
            key_backend: status.key_backend,
            key_health: status.key_health,
            units_queued: status.units_queued,
            units_running: status.units_running,
            seq_journaled: status.seq_journaled,
            receipts_unacked: status.receipts_unacked,
            held: self.commands.held,
            commands_accepted: self.commands.accepted,
            commands_rejected: self.commands.rejected,
            cards: self.slots.diagnostics(),
        }
    }

    /// No unit runs and the coordinator has acknowledged every receipt.
    fn drained(&self) -> bool {
        self.slots.running() == 0 && self.stats.unacked_receipts == 0
    }

    /// Answers waiting drains once the rig has drained.
    pub(super) fn drain_progress(&mut self) {
        if self.commands.drains.is_empty() || !self.drained() {
            return;
        }
        for waiting in std::mem::take(&mut self.commands.drains) {
            tracing::info!(nonce = waiting.nonce, "drain finished");
            self.reply(
                &waiting,
                Outcome::Completed("drained: no unit running, every receipt acknowledged".into()),
            );
        }
        self.publish_status(self.state());
    }

    fn reply_if(&self, response: &Option<String>, to: &ReplyTo, outcome: Outcome) {
        if response.is_some() {
            self.reply(to, outcome);
        }
    }

    fn reply(&self, to: &ReplyTo, outcome: Outcome) {
        let reply = CommandReply {
            rig: self.config.rig_id.clone(),
            nonce: to.nonce,
            action: to.action,
            outcome,
        };
        if !self.link.reply(encode(&reply), to.correlation.clone()) {
            tracing::warn!(nonce = to.nonce, "command reply not queued");
        }
    }
}
