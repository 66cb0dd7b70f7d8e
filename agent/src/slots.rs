//! The supervisor's view of its cards: each card's governor, what it is running, whether it
//! may take a unit now, its failures and quarantine.
//!
//! Every governor period [`Slots::govern`] reads each card, steps its governor, applies the
//! power limit and fan speed it asks for, and stops the running unit when the card must
//! pause or is quarantined. A card is quarantined after Xid 79 (fallen off the bus), after
//! repeated critical trips (the governor's L5), or after `failures_to_quarantine` worker
//! failures within `failure_window_ms`. The other cards keep working.

use crate::cards::{CardEvent, CardHandle, Job};
use crate::config::SimFaultConfig;
use crate::governor::{Decision, Governor, RunPermit, ThermalLimits, ThermalOverrides};
use crate::gpu::{Gpu, GpuError, Reading, XID_FALLEN_OFF_BUS};
use rigd_protocol::command::CardDiagnostics;
use rigd_protocol::{CardInfo, CardState, GpuSample, GpuUuid, WorkUnit};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One card as the supervisor sees it.
struct Slot {
    info: CardInfo,
    handle: CardHandle,
    unit: Option<WorkUnit>,
    governor: Governor,
    decision: Decision,
    reading: Option<Reading>,
    applied_power_w: Option<u32>,
    applied_fan: Option<Option<f32>>,
    resume_at: Option<Instant>,
    quarantined: Option<String>,
    restarting: bool,
    failures: VecDeque<Instant>,
    given: u32,
    done: u32,
    restarts: u16,
    /// Held by an operator's pause: starts nothing until resumed.
    held: bool,
    /// The operator's power cap, W: the governor may go lower, never higher.
    power_cap_w: Option<u32>,
    /// The next unit starts on a fresh worker (an operator asked for a restart).
    fresh_worker: bool,
}

/// Policy for worker failures.
#[derive(Debug, Clone, Copy)]
pub struct FailurePolicy {
    /// Failures that quarantine a card...
    pub count: u32,
    /// ...within this window.
    pub window: Duration,
}

/// The cards of the rig.
pub struct Slots {
    gpu: Box<dyn Gpu>,
    slots: Vec<Slot>,
    faults: Vec<SimFaultConfig>,
    failures: FailurePolicy,
}

const NORMAL: Decision = Decision {
    level: 0,
    fan_pct: None,
    power_limit_w: None,
    run: RunPermit::Run,
};

impl Slots {
    /// Builds the slots for `handles` (one per card of `gpu`, in inventory order).
    pub fn new(
        gpu: Box<dyn Gpu>,
        handles: Vec<CardHandle>,
        thermal: &ThermalOverrides,
        faults: Vec<SimFaultConfig>,
        failures: FailurePolicy,
    ) -> Result<Self, String> {
        let mut slots = vec![];
        for (i, (info, handle)) in gpu.inventory().into_iter().zip(handles).enumerate() {
            let model = gpu.model(i).map_err(|e| e.to_string())?;
            let limits =
                ThermalLimits::with_overrides(&model, thermal).map_err(|e| e.to_string())?;
            slots.push(Slot {
                info,
                handle,
                unit: None,
                governor: Governor::new(limits, &model),
                decision: NORMAL,
                reading: None,
                applied_power_w: None,
                applied_fan: None,
                resume_at: None,
                quarantined: None,
                restarting: false,
                failures: VecDeque::new(),
                given: 0,
                done: 0,
                restarts: 0,
                held: false,
                power_cap_w: None,
                fresh_worker: false,
            });
        }
        Ok(Self {
            gpu,
            slots,
            faults,
            failures,
        })
    }

    /// The cards found.
    pub fn inventory(&self) -> Vec<CardInfo> {
        self.slots.iter().map(|s| s.info.clone()).collect()
    }

    /// Units running now.
    pub fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.unit.is_some()).count()
    }

    /// Reads every card, steps its governor and acts on the decision.
    pub fn govern(&mut self, now_ms: u64) {
        for i in 0..self.slots.len() {
            if self.slots[i].quarantined.is_some() {
                continue;
            }
            let xids = self.gpu.take_xid_events(i).unwrap_or_default();
            if xids.contains(&XID_FALLEN_OFF_BUS) {
                self.quarantine(i, "Xid 79: the card has fallen off the bus");
                continue;
            }
            let busy = self.slots[i].unit.is_some();
            let reading = match self.gpu.read(i, now_ms, busy) {
                Ok(r) => Some(r),
                Err(GpuError::FallenOffBus(_)) => {
                    self.quarantine(i, "Xid 79: the card has fallen off the bus");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(gpu = %self.slots[i].info.uuid, error = %e, "no telemetry; the card counts as hot");
                    None
                }
            };
            let slot = &mut self.slots[i];
            if reading.is_some() {
                slot.reading = reading;
            }
            let decision = slot.governor.step(now_ms, reading.as_ref());
            if decision.level != slot.decision.level || decision.run != slot.decision.run {
                tracing::info!(gpu = %slot.info.uuid, level = decision.level, run = ?decision.run,
                    core_c = ?reading.map(|r| r.core_c), mem_c = ?reading.and_then(|r| r.mem_c),
                    "thermal level changed");
            }
            slot.decision = decision;
            self.actuate(i);
            match decision.run {
                RunPermit::Pause => self.abort(i),
                RunPermit::Quarantine => self.quarantine(i, "repeated critical temperature trips"),
                RunPermit::Run | RunPermit::DutyCycle { .. } => {}
            }
        }
    }

    fn actuate(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let uuid = slot.info.uuid.clone();
        let wanted = match (slot.decision.power_limit_w, slot.power_cap_w) {
            (Some(governor), Some(cap)) => Some(governor.min(cap)),
            (governor, cap) => governor.or(cap),
        };
        if let Some(watts) = wanted {
            if slot.applied_power_w != Some(watts) {
                match self.gpu.set_power_limit(i, watts) {
                    Ok(()) => slot.applied_power_w = Some(watts),
                    Err(e) => tracing::warn!(gpu = %uuid, watts, error = %e, "power limit not set"),
                }
            }
        }
        let fan = slot.decision.fan_pct;
        if slot.applied_fan != Some(fan) {
            match self.gpu.set_fan(i, fan) {
                Ok(()) => slot.applied_fan = Some(fan),
                Err(GpuError::NoFanControl(_)) => slot.applied_fan = Some(fan),
                Err(e) => tracing::warn!(gpu = %uuid, fan_pct = ?fan, error = %e, "fan not set"),
            }
        }
    }

    fn abort(&mut self, i: usize) {
        if self.slots[i].unit.is_some() {
            let _ = self.slots[i].handle.abort.try_send(());
        }
    }

    /// Sets card `i` aside: its running unit is stopped and handed back, it takes no more.
    pub fn quarantine(&mut self, i: usize, reason: &str) {
        if self.slots[i].quarantined.is_none() {
            tracing::error!(gpu = %self.slots[i].info.uuid, %reason, "card quarantined; the other cards keep working");
            self.slots[i].quarantined = Some(reason.to_owned());
        }
        self.abort(i);
    }

    /// Cards that may start a unit now.
    pub fn ready(&self, now: Instant) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.unit.is_none()
                    && s.quarantined.is_none()
                    && !s.held
                    && match s.decision.run {
                        RunPermit::Run => true,
                        RunPermit::DutyCycle { .. } => s.resume_at.is_none_or(|t| t <= now),
                        RunPermit::Pause | RunPermit::Quarantine => false,
                    }
            })
            .collect()
    }

    /// When the next duty-cycled card may start a unit, if one is waiting for that.
    pub fn next_start(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.unit.is_none() && s.quarantined.is_none())
            .filter(|s| matches!(s.decision.run, RunPermit::DutyCycle { .. }))
            .filter_map(|s| s.resume_at)
            .min()
    }

    /// Hands `unit` to card `i`; `Err(unit)` when the card's task cannot take it now.
    pub fn start(&mut self, i: usize, unit: WorkUnit) -> Result<(), WorkUnit> {
        let fault = self.inject_due_fault(i);
        let slot = &mut self.slots[i];
        let job = Job {
            unit: unit.clone(),
            fault,
            governor_level: slot.decision.level,
            fresh_worker: slot.fresh_worker,
        };
        match slot.handle.jobs.try_send(job) {
            Ok(()) => {
                slot.fresh_worker = false;
                slot.given += 1;
                slot.unit = Some(unit);
                Ok(())
            }
            Err(_) => Err(unit),
        }
    }

    fn inject_due_fault(&mut self, i: usize) -> Option<crate::gpu::WorkerFault> {
        let given = self.slots[i].given;
        let due: Vec<_> = self
            .faults
            .iter()
            .filter(|f| f.card as usize == i && f.after_units == given)
            .map(SimFaultConfig::sim_fault)
            .collect();
        for fault in due {
            tracing::warn!(gpu = %self.slots[i].info.uuid, ?fault, "injecting a simulated fault");
            if let Err(e) = self.gpu.inject(i, fault) {
                tracing::warn!(error = %e, "fault not injected");
            }
        }
        self.gpu.take_worker_fault(i)
    }

    /// Records what a card task reported.
    pub fn finished(&mut self, event: &CardEvent, now: Instant) {
        let (card, crashed) = match event {
            CardEvent::Done { card, .. } => (*card, false),
            CardEvent::Refused { card, .. } | CardEvent::Aborted { card, .. } => (*card, false),
            CardEvent::Crashed { card, .. } => (*card, true),
        };
        let policy = self.failures;
        let Some(slot) = self.slots.get_mut(card) else {
            return;
        };
        slot.unit = None;
        if let CardEvent::Done { .. } = event {
            slot.done += 1;
            slot.restarting = false;
            if let RunPermit::DutyCycle { pause_ms } = slot.decision.run {
                slot.resume_at = Some(now + Duration::from_millis(pause_ms));
            }
        }
        if crashed {
            slot.restarts = slot.restarts.saturating_add(1);
            slot.restarting = true;
            slot.failures.push_back(now);
            while slot
                .failures
                .front()
                .is_some_and(|t| now.duration_since(*t) > policy.window)
            {
                slot.failures.pop_front();
            }
            if slot.failures.len() as u32 >= policy.count {
                self.quarantine(card, "repeated worker failures");
            }
        }
    }

    /// The index of the card `uuid`.
    pub fn find(&self, uuid: &GpuUuid) -> Option<usize> {
        self.slots.iter().position(|s| &s.info.uuid == uuid)
    }

    /// The cards an operator paused.
    pub fn held_cards(&self) -> Vec<GpuUuid> {
        self.slots
            .iter()
            .filter(|s| s.held)
            .map(|s| s.info.uuid.clone())
            .collect()
    }

    /// Every card index.
    pub fn indices(&self) -> std::ops::Range<usize> {
        0..self.slots.len()
    }

    /// An operator's pause (`true`: the running unit goes back to the queue, nothing starts)
    /// or resume of card `i`.
    pub fn hold(&mut self, i: usize, held: bool) {
        self.slots[i].held = held;
        if held {
            self.abort(i);
        }
    }

    /// Lifts card `i`'s quarantine (an operator's decision): its governor restarts paused
    /// until the card reads cool, its failure count is cleared. `false` if it was not
    /// quarantined.
    pub fn release(&mut self, i: usize) -> bool {
        let slot = &mut self.slots[i];
        let Some(reason) = slot.quarantined.take() else {
            return false;
        };
        tracing::info!(gpu = %slot.info.uuid, %reason, "quarantine lifted by an operator");
        slot.governor.release();
        slot.failures.clear();
        slot.restarting = false;
        true
    }

    /// Caps card `i`'s power limit at `watts` (within what the card accepts) and applies it
    /// now; the governor may still set it lower.
    pub fn set_power_cap(&mut self, i: usize, watts: u32) -> Result<(), String> {
        let model = self.gpu.model(i).map_err(|e| e.to_string())?;
        let watts = model.check_power_limit(watts).map_err(|e| e.to_string())?;
        self.slots[i].power_cap_w = Some(watts);
        self.slots[i].applied_power_w = None;
        self.actuate(i);
        Ok(())
    }

    /// Replaces card `i`'s thermal limits with the model's defaults under `overrides`,
    /// checked like rig.conf's `[thermal]`.
    pub fn set_limits(&mut self, i: usize, overrides: &ThermalOverrides) -> Result<(), String> {
        let model = self.gpu.model(i).map_err(|e| e.to_string())?;
        let limits = ThermalLimits::with_overrides(&model, overrides).map_err(|e| e.to_string())?;
        self.slots[i].governor.set_limits(limits);
        Ok(())
    }

    /// Kills card `i`'s worker: a running unit goes back to the queue; the next unit starts
    /// on a fresh worker.
    pub fn restart_worker(&mut self, i: usize) {
        self.slots[i].fresh_worker = true;
        self.abort(i);
    }

    /// What `diagnostics` reports of each card.
    pub fn diagnostics(&self) -> Vec<CardDiagnostics> {
        self.samples()
            .into_iter()
            .zip(&self.slots)
            .map(|(sample, s)| {
                let limits = s.governor.limits();
                CardDiagnostics {
                    uuid: sample.uuid,
                    name: s.info.name.clone(),
                    state: sample.state,
                    governor_level: sample.governor_level,
                    power_cap_w: s.power_cap_w,
                    target_c: limits.target_c.clamp(0.0, 255.0) as u8,
                    critical_c: limits.critical_c.clamp(0.0, 255.0) as u8,
                    operator_paused: s.held,
                    quarantined: s.quarantined.clone(),
                    units_done: s.done,
                    worker_restarts: s.restarts,
                }
            })
            .collect()
    }

    /// Telemetry of every card from the latest readings.
    pub fn samples(&self) -> Vec<GpuSample> {
        self.slots
            .iter()
            .map(|s| {
                let r = s.reading;
                let state = if s.quarantined.is_some() {
                    CardState::Quarantined
                } else if s.unit.is_some() {
                    CardState::Busy
                } else if s.restarting {
                    CardState::Restarting
                } else if s.held
                    || matches!(s.decision.run, RunPermit::Pause)
                    || s.resume_at.is_some_and(|t| t > Instant::now())
                {
                    CardState::Paused
                } else {
                    CardState::Idle
                };
                GpuSample {
                    uuid: s.info.uuid.clone(),
                    core_dc: r.map_or(0, |r| (r.core_c * 10.0).round() as i16),
                    mem_dc: r.and_then(|r| r.mem_c).map(|m| (m * 10.0).round() as i16),
                    power_w: r.map_or(0, |r| r.power_w.round() as u16),
                    power_limit_w: r.map_or(0, |r| r.power_limit_w.round() as u16),
                    fan_pct: r.map_or(0, |r| r.fan_pct.round() as u8),
                    util_pct: r.map_or(0, |r| r.util_pct.round() as u8),
                    sm_mhz: r.map_or(0, |r| r.sm_mhz.min(u32::from(u16::MAX)) as u16),
                    governor_level: if s.quarantined.is_some() {
                        5
                    } else {
                        s.decision.level
                    },
                    state,
                    unit: s.unit.as_ref().map(|u| u.unit),
                    units_done: s.done,
                    worker_restarts: s.restarts,
                }
            })
            .collect()
    }
}
