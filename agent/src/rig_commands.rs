//! The shell's side of operator commands: check ([`crate::commands::Verifier`]), record
//! the nonce durably, hand the action to the core, keep the holds it asks to keep, and
//! answer on the rig's `replies` topic with the command's MQTT 5 correlation data.

use super::Rig;
use crate::commands::{NonceStore, Verifier};
use crate::config::RigSettings;
use crate::state_dir::{StateDir, StateFile};
use crate::supervisor::{Input, OperatorHolds, ReplyTo};
use crate::worker::unix_ms;
use crate::RunError;
use rigd_protocol::command::{
    Command, CommandReply, Diagnostics, Outcome, Rejection, MAX_CORRELATION_BYTES,
};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{clip, decode, encode, GpuUuid, RigId, RigState};
use rumqttc::v5::mqttbytes::v5::Publish;

/// What the shell keeps about commands: who may send them, the nonces they used, counts,
/// and where the operator holds are kept.
pub(super) struct CommandState {
    verifier: Verifier,
    nonces: NonceStore,
    accepted: u64,
    rejected: u64,
    /// Where the holds are kept across restarts.
    state: StateDir,
}

impl CommandState {
    /// The policy of `config` for commands to `rig`, with the nonces of its state directory.
    pub(super) fn open(config: &RigSettings, rig: &RigId) -> Result<Self, RunError> {
        let nonces =
            NonceStore::open(&config.state()).map_err(|e| RunError::Runtime(e.to_string()))?;
        tracing::info!(
            operators = config.operator_keys.len(),
            allowed = ?config.allowed_commands,
            "signed commands: operator keys trusted"
        );
        Ok(Self {
            verifier: Verifier::new(
                rig.clone(),
                config.operator_keys(),
                config.allowed_commands.clone(),
            ),
            nonces,
            accepted: 0,
            rejected: 0,
            state: config.state(),
        })
    }

    /// The drains and pauses in effect when rigd last stopped. A holds file that cannot be
    /// read holds the whole rig: an operator's stop is never lost to a bad disk.
    pub(super) fn restore_holds(&self) -> OperatorHolds {
        let path = self.state.file(StateFile::Holds);
        let read = self
            .state
            .read(StateFile::Holds)
            .map_err(|e| e.to_string())
            .and_then(|bytes| match bytes {
                None => Ok(OperatorHolds::default()),
                Some(b) => serde_json::from_slice::<OperatorHolds>(&b).map_err(|e| e.to_string()),
            });
        read.unwrap_or_else(|error| {
            tracing::error!(path = %path.display(), %error, "operator holds unreadable: the rig stays held until an operator resumes it");
            OperatorHolds {
                rig: true,
                cards: vec![],
            }
        })
    }

    /// Records `holds`; false (logged) if they could not be.
    pub(super) fn save_holds(&self, holds: &OperatorHolds) -> bool {
        let written = serde_json::to_vec(holds)
            .map_err(std::io::Error::other)
            .and_then(|b| self.state.write(StateFile::Holds, &b));
        if let Err(error) = &written {
            tracing::error!(path = %self.state.file(StateFile::Holds).display(), %error, "operator holds not recorded: a restart would lose them");
        }
        written.is_ok()
    }
}

/// The most bytes of an error or a topic that a reply quotes back.
const MAX_ERROR: usize = 200;

impl Rig {
    /// Handles one message of the `commands` topic.
    pub(super) async fn on_command(&mut self, p: &Publish) -> Result<(), RunError> {
        let props = p.properties.as_ref();
        let response = props.and_then(|p| p.response_topic.clone());
        let own = topics::rig(&self.rig, Channel::Replies);
        let decoded = decode::<Command>(&p.payload);
        let to = ReplyTo {
            correlation: props
                .and_then(|p| p.correlation_data.clone())
                .filter(|c| c.len() <= MAX_CORRELATION_BYTES),
            nonce: decoded.as_ref().map_or(0, |c| c.nonce),
            action: decoded.as_ref().ok().map(|c| c.action.kind()),
        };
        let checked = match decoded {
            Err(e) => Err((Rejection::Malformed(clip(&e.to_string(), MAX_ERROR)), None)),
            Ok(cmd) => {
                let verdict = match &response {
                    Some(t) if *t != own => Err(Rejection::ResponseTopic(clip(t, MAX_ERROR))),
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
                return Ok(());
            }
        };
        if let Err(e) = self.commands.nonces.accept(cmd.operator, cmd.nonce) {
            tracing::error!(error = %e, "command not carried out: its nonce could not be recorded");
            self.reply_if(
                &response,
                &to,
                Outcome::Failed(clip(&e.to_string(), MAX_ERROR)),
            );
            return Ok(());
        }
        self.commands.accepted += 1;
        tracing::info!(nonce = cmd.nonce, action = %cmd.action.kind(), gpu = ?cmd.action.gpu().map(GpuUuid::as_str),
            operator = %hex::encode(cmd.operator), "command accepted");
        let reply = response.is_some().then_some(to);
        self.step(Input::Action {
            action: cmd.action,
            reply,
        })
        .await
    }

    pub(super) fn diagnostics(&self) -> Diagnostics {
        let status = self.status(RigState::Idle);
        Diagnostics {
            agent_version: status.agent_version,
            key_backend: status.key_backend,
            key_health: status.key_health,
            units_queued: status.units_queued,
            units_running: status.units_running,
            seq_journaled: status.seq_journaled,
            receipts_unacked: status.receipts_unacked,
            held: self.core.held(),
            commands_accepted: self.commands.accepted,
            commands_rejected: self.commands.rejected,
            cards: self.core.diagnostics(self.now_ms()),
        }
    }

    fn reply_if(&self, response: &Option<String>, to: &ReplyTo, outcome: Outcome) {
        if response.is_some() {
            self.reply(to, outcome);
        }
    }

    pub(super) fn reply(&self, to: &ReplyTo, outcome: Outcome) {
        let reply = CommandReply {
            rig: self.rig.clone(),
            nonce: to.nonce,
            action: to.action,
            outcome,
        };
        if !self.link.reply(encode(&reply), to.correlation.clone()) {
            tracing::warn!(nonce = to.nonce, "command reply not queued");
        }
    }
}
