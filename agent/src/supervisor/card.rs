//! One card as the core sees it: its governor and the decision in force, the unit it runs,
//! whether it may take one now, its failures, quarantine and operator settings. Pure: what
//! the card must be told (start, abort, power limit, fan) comes back as [`Effect`]s.

use super::Effect;
use crate::governor::{Decision, Governor, RunPermit, ThermalLimits, ThermalOverrides};
use crate::gpu::{CardModel, Reading};
use rigd_protocol::command::CardDiagnostics;
use rigd_protocol::{CardInfo, CardState, GpuSample, WorkUnit};
use std::collections::VecDeque;

/// Policy for worker failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Failures that quarantine a card...
    pub count: u32,
    /// ...within this window, ms.
    pub window_ms: u64,
}

/// The decision of a card not governed yet: run, nothing set.
pub const NORMAL: Decision = Decision {
    level: 0,
    fan_pct: None,
    power_limit_w: None,
    run: RunPermit::Run,
};

/// One card.
pub(super) struct Card {
    pub(super) info: CardInfo,
    model: CardModel,
    pub(super) unit: Option<WorkUnit>,
    governor: Governor,
    decision: Decision,
    reading: Option<Reading>,
    applied_power_w: Option<u32>,
    applied_fan: Option<Option<f32>>,
    /// A duty-cycled card starts its next unit from then, core ms.
    resume_at_ms: Option<u64>,
    pub(super) quarantined: Option<String>,
    restarting: bool,
    /// Worker failures within the policy's window, core ms.
    failures: VecDeque<u64>,
    done: u32,
    restarts: u16,
    /// The last Xid error reported for the card, 0 for none.
    last_xid: u32,
    /// Held by an operator's pause: starts nothing until resumed.
    pub(super) held: bool,
    /// The operator's power cap, W: the governor may go lower, never higher.
    power_cap_w: Option<u32>,
    /// The next unit starts on a fresh worker (an operator asked for a restart).
    pub(super) fresh_worker: bool,
}

impl Card {
    /// Card `info` of `model` under the model's limits with rig.conf's `thermal` overrides.
    pub(super) fn new(
        info: CardInfo,
        model: CardModel,
        thermal: &ThermalOverrides,
    ) -> Result<Self, String> {
        let limits = ThermalLimits::with_overrides(&model, thermal).map_err(|e| e.to_string())?;
        Ok(Card {
            info,
            governor: Governor::new(limits, &model),
            model,
            unit: None,
            decision: NORMAL,
            reading: None,
            applied_power_w: None,
            applied_fan: None,
            resume_at_ms: None,
            quarantined: None,
            restarting: false,
            failures: VecDeque::new(),
            done: 0,
            restarts: 0,
            last_xid: 0,
            held: false,
            power_cap_w: None,
            fresh_worker: false,
        })
    }

    /// Whether the card may start a unit at `now_ms`.
    pub(super) fn ready(&self, now_ms: u64) -> bool {
        self.unit.is_none()
            && self.quarantined.is_none()
            && !self.held
            && match self.decision.run {
                RunPermit::Run => true,
                RunPermit::DutyCycle { .. } => self.resume_at_ms.is_none_or(|t| t <= now_ms),
                RunPermit::Pause | RunPermit::Quarantine => false,
            }
    }

    /// When this duty-cycled, idle card may start next, if it waits for that.
    pub(super) fn next_start(&self) -> Option<u64> {
        let waits = self.unit.is_none()
            && self.quarantined.is_none()
            && matches!(self.decision.run, RunPermit::DutyCycle { .. });
        self.resume_at_ms.filter(|_| waits)
    }

    /// The governor's decision in force.
    pub(super) fn decision(&self) -> Decision {
        self.decision
    }

    /// The governor level units start at.
    pub(super) fn level(&self) -> u8 {
        self.decision.level
    }

    /// Steps the governor on the card's `reading` (`None`: the card could not be read) and
    /// acts on its decision: power limit and fan, and a pause or quarantine of the card.
    pub(super) fn govern(
        &mut self,
        i: usize,
        now_ms: u64,
        reading: Option<Reading>,
        out: &mut Vec<Effect>,
    ) {
        if let Some(r) = reading {
            self.reading = Some(r);
            if let Some(xid) = r.xid {
                tracing::warn!(gpu = %self.info.uuid, xid, "the driver reported an Xid error");
                self.last_xid = xid;
            }
        }
        let decision = self.governor.step(now_ms, reading.as_ref());
        if decision.level != self.decision.level || decision.run != self.decision.run {
            tracing::info!(gpu = %self.info.uuid, level = decision.level, run = ?decision.run,
                core_c = ?reading.map(|r| r.core_c), mem_c = ?reading.and_then(|r| r.mem_c),
                "thermal level changed");
        }
        self.decision = decision;
        self.actuate(i, out);
        match decision.run {
            RunPermit::Pause => self.abort(i, out),
            RunPermit::Quarantine => self.quarantine(i, "repeated critical temperature trips", out),
            RunPermit::Run | RunPermit::DutyCycle { .. } => {}
        }
    }

    /// Asks for the power limit (the governor's, under the operator's cap) and fan speed the
    /// card does not have yet.
    fn actuate(&mut self, i: usize, out: &mut Vec<Effect>) {
        let wanted = match (self.decision.power_limit_w, self.power_cap_w) {
            (Some(governor), Some(cap)) => Some(governor.min(cap)),
            (governor, cap) => governor.or(cap),
        };
        if let Some(watts) = wanted {
            if self.applied_power_w != Some(watts) {
                self.applied_power_w = Some(watts);
                out.push(Effect::SetPower { card: i, watts });
            }
        }
        let fan = self.decision.fan_pct;
        if self.applied_fan != Some(fan) {
            self.applied_fan = Some(fan);
            out.push(Effect::SetFan { card: i, pct: fan });
        }
    }

    /// The card refused the power limit: asked again at the next governor period.
    pub(super) fn power_not_applied(&mut self) {
        self.applied_power_w = None;
    }

    /// The card refused the fan speed: asked again at the next governor period.
    pub(super) fn fan_not_applied(&mut self) {
        self.applied_fan = None;
    }

    /// Stops the running unit, if any (the card task hands it back as aborted).
    pub(super) fn abort(&self, i: usize, out: &mut Vec<Effect>) {
        if self.unit.is_some() {
            out.push(Effect::Abort { card: i });
        }
    }

    /// Sets the card aside: its running unit is stopped and handed back, it takes no more.
    pub(super) fn quarantine(&mut self, i: usize, reason: &str, out: &mut Vec<Effect>) {
        if self.quarantined.is_none() {
            tracing::error!(gpu = %self.info.uuid, %reason, "card quarantined; the other cards keep working");
            self.quarantined = Some(reason.to_owned());
        }
        self.abort(i, out);
    }

    /// The unit finished; a duty-cycled card pauses from `now_ms`.
    pub(super) fn done(&mut self, now_ms: u64) {
        self.unit = None;
        self.done += 1;
        self.restarting = false;
        if let RunPermit::DutyCycle { pause_ms } = self.decision.run {
            self.resume_at_ms = Some(now_ms.saturating_add(pause_ms));
        }
    }

    /// The worker failed with the unit; true when that makes too many failures within the
    /// policy's window (the caller quarantines the card).
    pub(super) fn crashed(&mut self, now_ms: u64, policy: FailurePolicy) -> bool {
        self.unit = None;
        self.restarts = self.restarts.saturating_add(1);
        self.restarting = true;
        self.failures.push_back(now_ms);
        while self
            .failures
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) > policy.window_ms)
        {
            self.failures.pop_front();
        }
        self.failures.len() as u32 >= policy.count
    }

    /// An operator's pause (`true`: the running unit goes back to the queue) or resume.
    pub(super) fn hold(&mut self, i: usize, held: bool, out: &mut Vec<Effect>) {
        self.held = held;
        if held {
            self.abort(i, out);
        }
    }

    /// Lifts the quarantine: the governor restarts paused until the card reads cool, the
    /// failure count is cleared. False if the card was not quarantined.
    pub(super) fn release(&mut self) -> bool {
        let Some(reason) = self.quarantined.take() else {
            return false;
        };
        tracing::info!(gpu = %self.info.uuid, %reason, "quarantine lifted by an operator");
        self.governor.release();
        self.failures.clear();
        self.restarting = false;
        true
    }

    /// Caps the power limit at `watts` (within what the card accepts) and applies it now;
    /// the governor may still set it lower.
    pub(super) fn set_power_cap(
        &mut self,
        i: usize,
        watts: u32,
        out: &mut Vec<Effect>,
    ) -> Result<(), String> {
        let watts = self
            .model
            .check_power_limit(watts)
            .map_err(|e| e.to_string())?;
        self.power_cap_w = Some(watts);
        self.applied_power_w = None;
        self.actuate(i, out);
        Ok(())
    }

    /// Replaces the thermal limits with the model's defaults under `overrides`.
    pub(super) fn set_limits(&mut self, overrides: &ThermalOverrides) -> Result<(), String> {
        let limits =
            ThermalLimits::with_overrides(&self.model, overrides).map_err(|e| e.to_string())?;
        self.governor.set_limits(limits);
        Ok(())
    }

    /// The card's state as telemetry reports it.
    fn state(&self, now_ms: u64) -> CardState {
        if self.quarantined.is_some() {
            CardState::Quarantined
        } else if self.unit.is_some() {
            CardState::Busy
        } else if self.restarting {
            CardState::Restarting
        } else if self.held
            || matches!(self.decision.run, RunPermit::Pause)
            || self.resume_at_ms.is_some_and(|t| t > now_ms)
        {
            CardState::Paused
        } else {
            CardState::Idle
        }
    }

    /// Telemetry from the latest reading.
    pub(super) fn sample(&self, now_ms: u64) -> GpuSample {
        let r = self.reading;
        GpuSample {
            uuid: self.info.uuid.clone(),
            core_dc: r.map_or(0, |r| (r.core_c * 10.0).round() as i16),
            mem_dc: r.and_then(|r| r.mem_c).map(|m| (m * 10.0).round() as i16),
            power_w: r.map_or(0, |r| r.power_w.round() as u16),
            power_limit_w: r.map_or(0, |r| r.power_limit_w.round() as u16),
            fan_pct: r.map_or(0, |r| r.fan_pct.round() as u8),
            util_pct: r.map_or(0, |r| r.util_pct.round() as u8),
            sm_mhz: r.map_or(0, |r| r.sm_mhz.min(u32::from(u16::MAX)) as u16),
            governor_level: if self.quarantined.is_some() {
                5
            } else {
                self.decision.level
            },
            state: self.state(now_ms),
            unit: self.unit.as_ref().map(|u| u.unit),
            units_done: self.done,
            worker_restarts: self.restarts,
            fb_used_mib: r.map_or(0, |r| r.fb_used_mib),
            xid: self.last_xid,
        }
    }

    /// What `diagnostics` reports of the card.
    pub(super) fn diagnostics(&self, now_ms: u64) -> CardDiagnostics {
        let sample = self.sample(now_ms);
        let limits = self.governor.limits();
        CardDiagnostics {
            uuid: sample.uuid,
            name: self.info.name.clone(),
            state: sample.state,
            governor_level: sample.governor_level,
            power_cap_w: self.power_cap_w,
            target_c: limits.target_c.clamp(0.0, 255.0) as u8,
            critical_c: limits.critical_c.clamp(0.0, 255.0) as u8,
            operator_paused: self.held,
            quarantined: self.quarantined.clone(),
            units_done: self.done,
            worker_restarts: self.restarts,
        }
    }
}
