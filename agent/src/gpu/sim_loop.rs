//! One simulated card driven by the supervisor's own core ([`RigCore`]): every sample period
//! the card is read and the core governs it (power limit, fan, run permit); units of fixed
//! length are offered while load is on and start when the core starts them; a duty cycle
//! idles the card for `pause_ms` after each unit; a pause or quarantine stops the running
//! unit at once. The thermal model moves in substeps, so peaks between samples are seen.
//! Used by the governor's tests and benchmark: they exercise the same decisions as a rig.

use super::{Gpu, GpuError, Reading, SimGpu};
use crate::cards::CardEvent;
use crate::governor::{Decision, ThermalLimits, ThermalOverrides};
use crate::journal::{Completion, JournalStats};
use crate::supervisor::{CardRead, CoreSettings, Effect, FailurePolicy, Input, RigCore, Setting};
use rigd_protocol::{JobId, UnitKind, UnitOutput, WorkUnit};
use std::collections::VecDeque;

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

/// Card 0 of a [`SimGpu`] in a closed loop with the supervisor's core.
pub struct SimLoop {
    gpu: SimGpu,
    core: RigCore,
    critical_c: f32,
    now_ms: u64,
    sample_ms: u64,
    substep_ms: u64,
    unit_ms: u64,
    load: bool,
    /// The unit the card runs, with the time it has left, ms.
    running: Option<(WorkUnit, u64)>,
    offered: u64,
    critical_busy_ms: u64,
    actuation_errors: u32,
}

impl SimLoop {
    /// Card 0 of `gpu`, idle, governed by the default limits for its model; 1 s samples,
    /// 100 ms substeps, 2 s units.
    pub fn new(mut gpu: SimGpu) -> Result<Self, GpuError> {
        let model = gpu.model(0)?;
        let info = gpu
            .inventory()
            .into_iter()
            .next()
            .ok_or(GpuError::NoSuchCard(0))?;
        let critical_c = ThermalLimits::for_model(&model).critical_c;
        let settings = CoreSettings {
            thermal: ThermalOverrides::default(),
            failures: FailurePolicy {
                count: u32::MAX,
                window_ms: 0,
            },
            max_unacked_receipts: u64::MAX,
        };
        let core = RigCore::new(
            settings,
            vec![(info, model)],
            vec![],
            JournalStats::default(),
        )
        .map_err(|reason| GpuError::Driver { index: 0, reason })?;
        let first = gpu.read(0, 0, false)?;
        let mut sim = SimLoop {
            gpu,
            core,
            critical_c,
            now_ms: 0,
            sample_ms: 1_000,
            substep_ms: 100,
            unit_ms: 2_000,
            load: false,
            running: None,
            offered: 0,
            critical_busy_ms: 0,
            actuation_errors: 0,
        };
        sim.give(Input::Readings(vec![(0, CardRead::Reading(first))]));
        Ok(sim)
    }

    /// The simulated card, to change the ambient or inject faults.
    pub fn gpu_mut(&mut self) -> &mut SimGpu {
        &mut self.gpu
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

    /// Gives the core `input` and carries out what it asks of the card.
    fn give(&mut self, input: Input) {
        let mut todo: VecDeque<Effect> = self.core.handle(input, self.now_ms).into();
        while let Some(effect) = todo.pop_front() {
            let back = match effect {
                Effect::Start { job, .. } => {
                    self.running = Some((job.unit, self.unit_ms));
                    None
                }
                Effect::Abort { .. } => self
                    .running
                    .take()
                    .map(|(unit, _)| Input::Cards(vec![CardEvent::Aborted { card: 0, unit }])),
                Effect::SetPower { watts, .. } => match self.gpu.set_power_limit(0, watts) {
                    Ok(()) => None,
                    Err(_) => Some(Setting::Power),
                }
                .map(|setting| {
                    self.actuation_errors += 1;
                    Input::NotApplied { card: 0, setting }
                }),
                Effect::SetFan { pct, .. } => match self.gpu.set_fan(0, pct) {
                    Ok(()) | Err(GpuError::NoFanControl(_)) => None,
                    Err(_) => {
                        self.actuation_errors += 1;
                        Some(Input::NotApplied {
                            card: 0,
                            setting: Setting::Fan,
                        })
                    }
                },
                Effect::Record(_)
                | Effect::Discard(_)
                | Effect::SaveHolds { .. }
                | Effect::Reply(_)
                | Effect::Diagnose(_)
                | Effect::Install { .. }
                | Effect::PublishStatus => None,
            };
            if let Some(input) = back {
                todo.extend(self.core.handle(input, self.now_ms));
            }
        }
    }

    /// Offers a unit while load is on and none waits, lets the core start it, and says
    /// whether the card is busy.
    fn busy_now(&mut self) -> bool {
        if self.load && self.running.is_none() && self.core.queued() == 0 {
            self.offered += 1;
            let unit = WorkUnit {
                job: JobId::new("sim-loop").unwrap_or_else(|_| unreachable!("a valid job id")),
                unit: self.offered,
                attempt: 0,
                kind: UnitKind::GemmI8 {
                    seed: self.offered,
                    m: 1,
                    n: 1,
                    k: 1,
                },
            };
            self.give(Input::Units(vec![unit]));
        } else if self.running.is_none() {
            self.give(Input::Tick);
        }
        self.running.is_some()
    }

    fn after_substep(&mut self) {
        let Some((unit, left)) = self.running.take() else {
            return;
        };
        let left = left.saturating_sub(self.substep_ms);
        if left > 0 {
            self.running = Some((unit, left));
            return;
        }
        let card = self.core.inventory().remove(0).uuid;
        let completion = Completion {
            unit,
            card,
            output: UnitOutput::GemmI8 { c_digest: [0; 32] },
            work: 0,
            started_ms: self.now_ms.saturating_sub(self.unit_ms),
            finished_ms: self.now_ms,
            governor_level: 0,
        };
        self.give(Input::Cards(vec![CardEvent::Done {
            card: 0,
            completion: Box::new(completion),
        }]));
    }

    /// Runs one sample period: the model moves in substeps, then the card is read and the
    /// core governs it.
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
        let read = match reading {
            Some(r) => CardRead::Reading(r),
            None => CardRead::Lost("no telemetry".into()),
        };
        self.give(Input::Readings(vec![(0, read)]));
        let busy_after = self.busy_now();
        Sample {
            at_ms: self.now_ms,
            reading,
            decision: self.core.decision(0).unwrap_or(crate::supervisor::NORMAL),
            core_c: self.gpu.model_core_c(0).unwrap_or(f32::NAN),
            peak_core_c,
            critical_busy_ms,
            busy_ms,
            busy_after,
        }
    }

    /// Runs `n` sample periods and returns their samples.
    pub fn run(&mut self, n: usize) -> Vec<Sample> {
        (0..n).map(|_| self.tick()).collect()
    }
}
