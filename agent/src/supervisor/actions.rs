//! Operator actions on the rig and its cards (already verified by the shell), and the
//! drains and pauses kept across restarts.

use super::{Effect, Reply, RigCore};
use crate::governor::ThermalOverrides;
use bytes::Bytes;
use rigd_protocol::command::{Action, ActionKind, Outcome, ThermalLimitsCmd};
use rigd_protocol::GpuUuid;
use serde::{Deserialize, Serialize};

/// Where a reply goes: the rig's own `replies` topic, with the command's correlation data.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyTo {
    /// The command's MQTT 5 correlation data.
    pub correlation: Option<Bytes>,
    /// The command's nonce (0 when it could not be decoded).
    pub nonce: u64,
    /// The command's action, when it could be decoded.
    pub action: Option<ActionKind>,
}

/// Operator drains and pauses as kept in the state directory, so that neither a restart
/// nor a crash of rigd puts a held rig or card back to work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperatorHolds {
    /// A drain or a pause of the whole rig.
    pub rig: bool,
    /// Cards paused one by one.
    pub cards: Vec<GpuUuid>,
}

impl RigCore {
    /// Puts back the holds in effect when rigd last stopped.
    pub(super) fn restore(&mut self, holds: &OperatorHolds, out: &mut Vec<Effect>) {
        if *holds == OperatorHolds::default() {
            return;
        }
        tracing::info!(
            rig = holds.rig,
            cards = holds.cards.len(),
            "operator holds kept from before the restart"
        );
        self.held = holds.rig;
        for uuid in &holds.cards {
            match self.find(uuid) {
                Some(i) => self.cards[i].hold(i, true, out),
                None => tracing::warn!(gpu = %uuid, "a paused card is gone; its pause is dropped"),
            }
        }
    }

    /// The drains and pauses now in effect.
    pub fn holds(&self) -> OperatorHolds {
        OperatorHolds {
            rig: self.held,
            cards: self
                .cards
                .iter()
                .filter(|c| c.held)
                .map(|c| c.info.uuid.clone())
                .collect(),
        }
    }

    /// Carries out `action`; its reply (where `reply` is given) and any change of state are
    /// pushed onto `out`.
    pub(super) fn act(&mut self, action: &Action, reply: Option<ReplyTo>, out: &mut Vec<Effect>) {
        let cards: Vec<usize> = match action.gpu() {
            Some(uuid) => match self.find(uuid) {
                Some(i) => vec![i],
                None => {
                    let outcome = Outcome::Failed(format!("no card {uuid} on this rig"));
                    if let Some(to) = reply {
                        out.push(Effect::Reply(Reply { to, outcome }));
                    }
                    return;
                }
            },
            None => (0..self.cards.len()).collect(),
        };
        let outcome = match action {
            Action::Drain => {
                self.held = true;
                out.push(Effect::PublishStatus);
                if self.drained() {
                    Outcome::Completed(
                        "drained: no unit running, every receipt acknowledged".into(),
                    )
                } else {
                    if let Some(to) = &reply {
                        self.drains.push(to.clone());
                    }
                    Outcome::Accepted(format!(
                        "draining: {} units running, {} receipts unacknowledged",
                        self.running(),
                        self.stats.unacked_receipts
                    ))
                }
            }
            Action::Pause { gpu } => {
                if gpu.is_none() {
                    self.held = true;
                }
                for &i in &cards {
                    self.cards[i].hold(i, true, out);
                }
                Outcome::Accepted(format!(
                    "paused {} cards; running units queued again",
                    cards.len()
                ))
            }
            Action::Resume { gpu } => {
                for &i in &cards {
                    self.cards[i].hold(i, false, out);
                }
                if gpu.is_none() {
                    self.held = false;
                    for to in std::mem::take(&mut self.drains) {
                        out.push(Effect::Reply(Reply {
                            to,
                            outcome: Outcome::Failed("resumed before the drain finished".into()),
                        }));
                    }
                    Outcome::Accepted(format!("resumed: {} cards take work", cards.len()))
                } else if self.held {
                    Outcome::Accepted(
                        "card resumed; the rig is still held by a drain or pause".into(),
                    )
                } else {
                    Outcome::Accepted("card resumed".into())
                }
            }
            Action::SetPowerLimit { watts, .. } => {
                let set = cards
                    .iter()
                    .try_for_each(|&i| self.cards[i].set_power_cap(i, *watts, out));
                match set {
                    Ok(()) => Outcome::Accepted(format!(
                        "power limit capped at {watts} W on {} cards",
                        cards.len()
                    )),
                    Err(e) => Outcome::Failed(e),
                }
            }
            Action::SetThermalLimits { limits, .. } => {
                let overrides = overrides(&self.settings.thermal, limits);
                match cards
                    .iter()
                    .try_for_each(|&i| self.cards[i].set_limits(&overrides))
                {
                    Ok(()) => {
                        Outcome::Accepted(format!("thermal limits set on {} cards", cards.len()))
                    }
                    Err(e) => Outcome::Failed(e),
                }
            }
            Action::RestartWorker { .. } => {
                for &i in &cards {
                    self.cards[i].fresh_worker = true;
                    self.cards[i].abort(i, out);
                }
                Outcome::Accepted(
                    "worker replaced: a running unit is queued again, the next unit starts on a fresh worker"
                        .into(),
                )
            }
            Action::Quarantine { .. } => {
                for &i in &cards {
                    self.cards[i].quarantine(i, "quarantined by an operator", out);
                }
                Outcome::Accepted("card quarantined".into())
            }
            Action::Release { .. } => {
                if cards.iter().all(|&i| self.cards[i].release()) {
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
            Action::Diagnostics => {
                out.push(Effect::Diagnose(reply));
                return;
            }
            Action::Update { version, .. } => {
                if self.updating.is_some() {
                    Outcome::Failed("an update is already under way".into())
                } else {
                    self.updating = Some((action.clone(), reply.clone(), false));
                    out.push(Effect::PublishStatus);
                    Outcome::Accepted(format!(
                        "update to {version}: draining first ({} units running, {} receipts unacknowledged)",
                        self.running(),
                        self.stats.unacked_receipts
                    ))
                }
            }
        };
        let reply = reply.map(|to| Reply { to, outcome });
        if matches!(
            action,
            Action::Drain | Action::Pause { .. } | Action::Resume { .. }
        ) {
            out.push(Effect::SaveHolds {
                holds: self.holds(),
                reply,
            });
        } else if let Some(reply) = reply {
            out.push(Effect::Reply(reply));
        }
    }
}

/// rig.conf's thermal overrides with the command's on top.
fn overrides(base: &ThermalOverrides, cmd: &ThermalLimitsCmd) -> ThermalOverrides {
    let mut o = base.clone();
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
