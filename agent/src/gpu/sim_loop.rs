//! One simulated card under its [`Governor`], driven the way the supervisor drives a card:
//! every sample period it reads the card, steps the governor and applies the decision (power
//! limit, fan, run permit). Work comes as units of fixed length while load is on; a duty
//! cycle idles the card for `pause_ms` after each unit; a pause or quarantine stops the
//! running unit at once. The thermal model moves in substeps, so peaks between samples are
//! seen. Used by the governor's tests and benchmark, and as a demonstration of the wiring.

use super::{Gpu, GpuError, Reading, SimGpu};
use crate::governor::{Decision, Governor, RunPermit, ThermalLimits};

/// What one sample period looked like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// End of the period, ms.
    pub at_ms: u64,
    /// What the card reported at the end of the period.
    pub reading: Option<Reading>,
    /// The governor's decision on it, applied from `at_ms`.
    pub decision: Decision,
    /// The model's core temperature at `at_ms`, C (whether or not the card reported it).
    pub core_c: f32,
    /// Highest model core temperature during the period, C.
    pub peak_core_c: f32,
    /// Longest time, up to the end of the period, that the card has been busy with its core
    /// at or above critical, ms (a stretch may begin in an earlier period).
    pub critical_busy_ms: u64,
    /// Time the card spent busy during the period, ms.
    pub busy_ms: u64,
    /// Whether the card is busy right after the decision is applied.
    pub busy_after: bool,
}

/// Card 0 of a [`SimGpu`] in a closed loop with its governor.
pub struct SimLoop {
    gpu: SimGpu,
    governor: Governor,
    critical_c: f32,
    fan_control: bool,
    now_ms: u64,
    sample_ms: u64,
    substep_ms: u64,
    unit_ms: u64,
    load: bool,
    unit_left_ms: u64,
    pause_left_ms: u64,
    decision: Decision,
    critical_busy_ms: u64,
    actuation_errors: u32,
}

impl SimLoop {
    /// Card 0 of `gpu`, idle, governed by the default limits for its model; 1 s samples,
    /// 100 ms substeps, 2 s units.
    pub fn new(gpu: SimGpu) -> Result<Self, GpuError> {
        let limits = ThermalLimits::for_model(&gpu.model(0)?);
        Self::with_limits(gpu, limits)
    }

    /// As [`SimLoop::new`], governed by `limits`.
    pub fn with_limits(mut gpu: SimGpu, limits: ThermalLimits) -> Result<Self, GpuError> {
        let model = gpu.model(0)?;
        let critical_c = limits.critical_c;
        let mut governor = Governor::new(limits, &model);
        let first = gpu.read(0, 0, false)?;
        let decision = governor.step(0, Some(&first));
        Ok(SimLoop {
            gpu,
            governor,
            critical_c,
            fan_control: model.fan_control,
            now_ms: 0,
            sample_ms: 1_000,
            substep_ms: 100,
            unit_ms: 2_000,
            load: false,
            unit_left_ms: 0,
            pause_left_ms: 0,
            decision,
            critical_busy_ms: 0,
            actuation_errors: 0,
        })
    }

    /// The simulated card, to change the ambient or inject faults.
    pub fn gpu_mut(&mut self) -> &mut SimGpu {
        &mut self.gpu
    }

    /// The governor.
    pub fn governor(&self) -> &Governor {
        &self.governor
    }

    /// Time now, ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Whether work is waiting for the card.
    pub fn set_load(&mut self, on: bool) {
        self.load = on;
    }

    /// How many power limit or fan settings the card refused.
    pub fn actuation_errors(&self) -> u32 {
        self.actuation_errors
    }

    fn busy_now(&mut self) -> bool {
        if matches!(self.decision.run, RunPermit::Pause | RunPermit::Quarantine) {
            self.unit_left_ms = 0;
            return false;
        }
        if self.unit_left_ms == 0 && self.pause_left_ms == 0 && self.load {
            self.unit_left_ms = self.unit_ms;
        }
        self.unit_left_ms > 0
    }

    fn after_substep(&mut self) {
        if self.unit_left_ms > 0 {
            self.unit_left_ms = self.unit_left_ms.saturating_sub(self.substep_ms);
            if self.unit_left_ms == 0 {
                if let RunPermit::DutyCycle { pause_ms } = self.decision.run {
                    self.pause_left_ms = pause_ms;
                }
            }
        } else {
            self.pause_left_ms = self.pause_left_ms.saturating_sub(self.substep_ms);
        }
    }

    /// Runs one sample period: the model moves in substeps, then the card is read, the
    /// governor decides and the decision is applied.
    pub fn tick(&mut self) -> Sample {
        let mut peak_core_c = f32::NEG_INFINITY;
        let mut critical_busy_ms = self.critical_busy_ms;
        let mut busy_ms = 0;
        let mut busy = false;
        let end = self.now_ms + self.sample_ms;
        while self.now_ms < end {
            busy = self.busy_now();
            self.now_ms = (self.now_ms + self.substep_ms).min(end);
            if self.gpu.advance(0, self.now_ms, busy).is_err() {
                self.actuation_errors += 1;
            }
            let core = self.gpu.model_core_c(0).unwrap_or(f32::NAN);
            peak_core_c = peak_core_c.max(core);
            if busy && core >= self.critical_c {
                self.critical_busy_ms += self.substep_ms;
                critical_busy_ms = critical_busy_ms.max(self.critical_busy_ms);
            } else {
                self.critical_busy_ms = 0;
            }
            if busy {
                busy_ms += self.substep_ms;
            }
            self.after_substep();
        }
        let reading = self.gpu.read(0, self.now_ms, busy).ok();
        self.decision = self.governor.step(self.now_ms, reading.as_ref());
        self.apply();
        let busy_after = self.busy_now();
        Sample {
            at_ms: self.now_ms,
            reading,
            decision: self.decision,
            core_c: self.gpu.model_core_c(0).unwrap_or(f32::NAN),
            peak_core_c,
            critical_busy_ms,
            busy_ms,
            busy_after,
        }
    }

    fn apply(&mut self) {
        let d = self.decision;
        let mut ok = true;
        if let Some(w) = d.power_limit_w {
            ok &= self.gpu.set_power_limit(0, w).is_ok();
        }
        if self.fan_control {
            ok &= self.gpu.set_fan(0, d.fan_pct).is_ok();
        }
        if !ok {
            self.actuation_errors += 1;
        }
    }

    /// Runs `n` sample periods and returns their samples.
    pub fn run(&mut self, n: usize) -> Vec<Sample> {
        (0..n).map(|_| self.tick()).collect()
    }
}
