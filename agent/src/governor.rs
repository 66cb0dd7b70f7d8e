//! The per-card thermal governor: a pure function of telemetry, limits and time.
//!
//! Each call to [`Governor::step`] takes the card's latest reading (or none) and the time, and
//! returns a [`Decision`]: which rung of the ladder the card is on, the fan speed and power
//! limit it should have, and whether it may run work.
//!
//! | level | rung | when | action |
//! |---|---|---|---|
//! | 0 | normal | well below the target | card's own fan, default power limit |
//! | 1 | fan | within 8 C of the target | fan ramps from its own speed to 100 % at the target |
//! | 2 | power cap | above the target | power limit steps down (towards the minimum), back up when 3 C below |
//! | 3 | duty cycle | above the target at the minimum limit | pause `pause_ms` between units |
//! | 4 | pause | at critical, or telemetry missing or stale | no work until `hysteresis_c` below critical |
//! | 5 | quarantine | `trips_to_quarantine` critical trips within `trip_window_ms` | no work until [`Governor::release`] |
//!
//! "Above the target" means the worse of the core over `target_c` and the memory over
//! `mem_limit_c` (where the card reports memory temperature), so hot memory caps the card on
//! its own. A missing reading, a reading older than `stale_after_ms`, a temperature that is
//! not a number, or a card that should report memory temperature but did not, counts as
//! critical: a pause until the card reads `hysteresis_c` below critical, but not a trip. The
//! card's own hardware slowdown counts as a critical trip.
//!
//! Defaults come from the card model ([`ThermalLimits::for_model`]); rig.conf can override
//! them with a `[thermal]` table ([`ThermalOverrides`]), for example:
//!
//! ```toml
//! [thermal]
//! target_c = 75.0
//! critical_c = 86.0
//! hysteresis_c = 12.0
//! mem_limit_c = 98.0
//! ```

use crate::gpu::{CardModel, Reading, Throttle};
use serde::Deserialize;
use std::collections::VecDeque;

/// Readings more than this much over the target step the power limit down, C.
const DEADBAND_C: f32 = 0.5;
/// Readings this much under the target step the power limit back up, C.
const RECOVER_C: f32 = 3.0;
/// Width of the fan ramp below the target, C.
const FAN_BAND_C: f32 = 8.0;
/// The fan goes back to the card this much below the ramp, C.
const FAN_RELEASE_C: f32 = 2.0;
/// Power limit step down per C over the target per second, as a fraction of the default.
const CAP_DOWN_PER_C_S: f32 = 0.03;
/// Largest step down per second, as a fraction of the default.
const CAP_DOWN_MAX_PER_S: f32 = 0.1;
/// Step up per second when cool, as a fraction of the default.
const CAP_UP_PER_S: f32 = 0.01;
/// Power limit cut on each critical trip, as a fraction of default - min.
const TRIP_CUT: f32 = 0.25;
/// Duty-cycle pause added (or removed) per second, ms.
const DUTY_STEP_MS_PER_S: f32 = 1000.0;
/// Longest interval one step integrates over, s.
const MAX_DT_S: f32 = 5.0;

/// The thresholds one card is governed by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThermalLimits {
    /// Core temperature to hold the card at or below, C.
    pub target_c: f32,
    /// Core temperature that stops work, C.
    pub critical_c: f32,
    /// How far below critical (core and memory) the card must cool before it resumes, C.
    pub hysteresis_c: f32,
    /// Memory temperature to hold at or below, C (`None`: not governed).
    pub mem_limit_c: Option<f32>,
    /// Memory temperature that stops work, C.
    pub mem_critical_c: Option<f32>,
    /// A reading older than this counts as missing, ms.
    pub stale_after_ms: u64,
    /// This many critical trips within `trip_window_ms` quarantine the card.
    pub trips_to_quarantine: u32,
    /// Window for counting critical trips, ms.
    pub trip_window_ms: u64,
    /// Longest duty-cycle pause between units, ms.
    pub max_pause_ms: u64,
}

/// Overrides of [`ThermalLimits`] from rig.conf; every field is optional and unknown fields
/// are refused. Memory limits are ignored for cards that do not report memory temperature.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalOverrides {
    /// See [`ThermalLimits::target_c`].
    pub target_c: Option<f32>,
    /// See [`ThermalLimits::critical_c`].
    pub critical_c: Option<f32>,
    /// See [`ThermalLimits::hysteresis_c`].
    pub hysteresis_c: Option<f32>,
    /// See [`ThermalLimits::mem_limit_c`].
    pub mem_limit_c: Option<f32>,
    /// See [`ThermalLimits::mem_critical_c`].
    pub mem_critical_c: Option<f32>,
    /// See [`ThermalLimits::stale_after_ms`].
    pub stale_after_ms: Option<u64>,
    /// See [`ThermalLimits::trips_to_quarantine`].
    pub trips_to_quarantine: Option<u32>,
    /// See [`ThermalLimits::trip_window_ms`].
    pub trip_window_ms: Option<u64>,
    /// See [`ThermalLimits::max_pause_ms`].
    pub max_pause_ms: Option<u64>,
}

/// A thermal limit that is unsafe or inconsistent for the card.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("thermal limit `{field}` for {card}: {problem}")]
pub struct LimitsError {
    /// The offending field.
    pub field: &'static str,
    /// The card model.
    pub card: String,
    /// What is wrong and what would be accepted.
    pub problem: String,
}

impl ThermalLimits {
    /// Safe defaults for `model`: target 78 C and critical 88 C (lower where the card slows
    /// down early), 12 C hysteresis, memory held 10 C below its slowdown (100 C for
    /// GDDR6X) and stopped 2 C below it, telemetry stale after 3 s, quarantine after 3 trips
    /// in 10 minutes, duty-cycle pauses up to 30 s.
    pub fn for_model(model: &CardModel) -> Self {
        let critical_c = 88f32.min(model.slowdown_c - 5.0);
        ThermalLimits {
            target_c: 78f32.min(critical_c - 10.0),
            critical_c,
            hysteresis_c: 12.0,
            mem_limit_c: model.mem_slowdown_c.map(|s| s - 10.0),
            mem_critical_c: model.mem_slowdown_c.map(|s| s - 2.0),
            stale_after_ms: 3_000,
            trips_to_quarantine: 3,
            trip_window_ms: 600_000,
            max_pause_ms: 30_000,
        }
    }

    /// The defaults for `model` with `overrides` applied, checked against the card.
    pub fn with_overrides(
        model: &CardModel,
        overrides: &ThermalOverrides,
    ) -> Result<Self, LimitsError> {
        let d = Self::for_model(model);
        let limits = ThermalLimits {
            target_c: overrides.target_c.unwrap_or(d.target_c),
            critical_c: overrides.critical_c.unwrap_or(d.critical_c),
            hysteresis_c: overrides.hysteresis_c.unwrap_or(d.hysteresis_c),
            mem_limit_c: d.mem_limit_c.map(|v| overrides.mem_limit_c.unwrap_or(v)),
            mem_critical_c: d
                .mem_critical_c
                .map(|v| overrides.mem_critical_c.unwrap_or(v)),
            stale_after_ms: overrides.stale_after_ms.unwrap_or(d.stale_after_ms),
            trips_to_quarantine: overrides
                .trips_to_quarantine
                .unwrap_or(d.trips_to_quarantine),
            trip_window_ms: overrides.trip_window_ms.unwrap_or(d.trip_window_ms),
            max_pause_ms: overrides.max_pause_ms.unwrap_or(d.max_pause_ms),
        };
        limits.check(model)?;
        Ok(limits)
    }

    fn check(&self, model: &CardModel) -> Result<(), LimitsError> {
        let slowdown = model.slowdown_c;
        let (crit, target, hyst) = (self.critical_c, self.target_c, self.hysteresis_c);
        let mut checks = vec![
            (
                (50.0..=slowdown - 2.0).contains(&crit),
                "critical_c",
                format!(
                    "{crit} must be 50 to {} C (2 C below the card's slowdown)",
                    slowdown - 2.0
                ),
            ),
            (
                (40.0..=crit - 5.0).contains(&target),
                "target_c",
                format!("{target} must be 40 C to 5 C below critical ({crit} C)"),
            ),
            (
                (5.0..=30.0).contains(&hyst),
                "hysteresis_c",
                format!("{hyst} must be 5 to 30 C"),
            ),
        ];
        if let (Some(limit), Some(mem_crit), Some(mem_slowdown)) =
            (self.mem_limit_c, self.mem_critical_c, model.mem_slowdown_c)
        {
            checks.push((
                (50.0..=mem_slowdown - 2.0).contains(&mem_crit),
                "mem_critical_c",
                format!(
                    "{mem_crit} must be 50 to {} C (2 C below the memory's slowdown)",
                    mem_slowdown - 2.0
                ),
            ));
            checks.push((
                (40.0..=mem_crit - 3.0).contains(&limit),
                "mem_limit_c",
                format!("{limit} must be 40 C to 3 C below mem_critical_c ({mem_crit} C)"),
            ));
        }
        checks.extend([
            (
                (1_000..=60_000).contains(&self.stale_after_ms),
                "stale_after_ms",
                format!("{} must be 1000 to 60000", self.stale_after_ms),
            ),
            (
                self.trips_to_quarantine >= 1,
                "trips_to_quarantine",
                format!("{} must be at least 1", self.trips_to_quarantine),
            ),
            (
                self.trip_window_ms >= 1_000,
                "trip_window_ms",
                format!("{} must be at least 1000", self.trip_window_ms),
            ),
            (
                (1_000..=600_000).contains(&self.max_pause_ms),
                "max_pause_ms",
                format!("{} must be 1000 to 600000", self.max_pause_ms),
            ),
        ]);
        match checks.into_iter().find(|(ok, _, _)| !ok) {
            Some((_, field, problem)) => Err(LimitsError {
                field,
                card: model.name.clone(),
                problem,
            }),
            None => Ok(()),
        }
    }
}

/// Whether a card may run work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPermit {
    /// Run units back to back.
    Run,
    /// Run units with a pause between them.
    DutyCycle {
        /// Pause after each unit, ms.
        pause_ms: u64,
    },
    /// Stop now (return the running unit to the queue) and start nothing.
    Pause,
    /// Stop now and start nothing until an operator releases the card.
    Quarantine,
}

/// What the governor wants for a card right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Ladder rung, 0 (normal) to 5 (quarantine); see the module table.
    pub level: u8,
    /// Fan speed to set, percent; `None`: leave the fan to the card.
    pub fan_pct: Option<f32>,
    /// Power limit to set, W, always within the card's min..=default; `None` when the card's
    /// limit cannot be changed.
    pub power_limit_w: Option<u32>,
    /// Whether the card may run work.
    pub run: RunPermit,
}

/// The governor of one card.
#[derive(Debug, Clone)]
pub struct Governor {
    limits: ThermalLimits,
    power: Option<(f32, f32)>,
    fan_control: bool,
    expects_mem: bool,
    cap_w: f32,
    fan_base_pct: Option<f32>,
    pause_ms: f32,
    hot_pause: bool,
    quarantined: bool,
    trips: VecDeque<u64>,
    last_ms: Option<u64>,
    last_over_c: f32,
}

impl Governor {
    /// A governor for a card of `model` at level 0, its power limit at the default.
    pub fn new(limits: ThermalLimits, model: &CardModel) -> Self {
        let min = model.power_min_w.min(model.power_default_w) as f32;
        let default = model.power_default_w as f32;
        Governor {
            expects_mem: model.reports_mem_temp() && limits.mem_limit_c.is_some(),
            limits,
            power: (min < default).then_some((min, default)),
            fan_control: model.fan_control,
            cap_w: default,
            fan_base_pct: None,
            pause_ms: 0.0,
            hot_pause: false,
            quarantined: false,
            trips: VecDeque::new(),
            last_ms: None,
            last_over_c: f32::NEG_INFINITY,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &ThermalLimits {
        &self.limits
    }

    /// Replaces the limits (an operator's command); the ladder state is kept.
    pub fn set_limits(&mut self, limits: ThermalLimits) {
        self.limits = limits;
    }

    /// Lifts a quarantine (an operator's decision); the card restarts paused until it reads
    /// cool, with its trip count cleared.
    pub fn release(&mut self) {
        self.quarantined = false;
        self.hot_pause = true;
        self.trips.clear();
    }

    /// Takes the card's latest reading (`None` if it could not be read) at `now_ms` and
    /// decides.
    pub fn step(&mut self, now_ms: u64, reading: Option<&Reading>) -> Decision {
        let dt_s = self
            .last_ms
            .map_or(1.0, |last| now_ms.saturating_sub(last) as f32 / 1000.0)
            .min(MAX_DT_S);
        self.last_ms = Some(now_ms);
        if self.quarantined {
            return self.decide();
        }
        let fresh = reading.filter(|r| {
            now_ms.saturating_sub(r.at_ms) <= self.limits.stale_after_ms
                && r.core_c.is_finite()
                && (!self.expects_mem || r.mem_c.is_some_and(f32::is_finite))
        });
        let Some(r) = fresh else {
            self.hot_pause = true;
            return self.decide();
        };
        let l = self.limits;
        let mem_c = r.mem_c.filter(|_| self.expects_mem);
        let critical = r.core_c >= l.critical_c
            || mem_c.zip(l.mem_critical_c).is_some_and(|(m, c)| m >= c)
            || r.throttle.contains(Throttle::HW_THERMAL);
        if critical {
            if !self.hot_pause {
                self.trip(now_ms);
            }
            self.hot_pause = true;
        } else if self.hot_pause {
            let core_cool = r.core_c <= l.critical_c - l.hysteresis_c;
            let mem_cool = mem_c
                .zip(l.mem_critical_c)
                .is_none_or(|(m, c)| m <= c - l.hysteresis_c);
            self.hot_pause = !(core_cool && mem_cool);
        }
        let over_c = (r.core_c - l.target_c).max(
            mem_c
                .zip(l.mem_limit_c)
                .map_or(f32::NEG_INFINITY, |(m, lim)| m - lim),
        );
        if !self.hot_pause && !self.quarantined {
            self.regulate(over_c, dt_s, r.fan_pct);
        }
        self.decide()
    }

    fn trip(&mut self, now_ms: u64) {
        let window = self.limits.trip_window_ms;
        self.trips.push_back(now_ms);
        while self
            .trips
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) > window)
        {
            self.trips.pop_front();
        }
        if self.trips.len() >= self.limits.trips_to_quarantine as usize {
            self.quarantined = true;
        }
        if let Some((min, default)) = self.power {
            self.cap_w = (self.cap_w - TRIP_CUT * (default - min)).max(min);
        }
    }

    /// Moves fan, power limit and duty cycle by `over_c` (above the target, C) over `dt_s`.
    fn regulate(&mut self, over_c: f32, dt_s: f32, fan_now_pct: f32) {
        let at_floor = match self.power {
            Some((min, default)) => {
                if over_c > DEADBAND_C {
                    let step = (CAP_DOWN_PER_C_S * over_c).min(CAP_DOWN_MAX_PER_S) * default;
                    self.cap_w = (self.cap_w - step * dt_s).max(min);
                } else if over_c < -RECOVER_C && self.pause_ms <= 0.0 {
                    self.cap_w = (self.cap_w + CAP_UP_PER_S * default * dt_s).min(default);
                }
                self.cap_w <= min + 0.5
            }
            None => true,
        };
        if at_floor && over_c > DEADBAND_C {
            self.pause_ms =
                (self.pause_ms + DUTY_STEP_MS_PER_S * dt_s).min(self.limits.max_pause_ms as f32);
        } else if over_c < -RECOVER_C {
            self.pause_ms = (self.pause_ms - DUTY_STEP_MS_PER_S * dt_s).max(0.0);
        }
        if over_c > -FAN_BAND_C {
            self.fan_base_pct
                .get_or_insert(fan_now_pct.clamp(0.0, 100.0));
        } else if over_c < -FAN_BAND_C - FAN_RELEASE_C && !self.capped() {
            self.fan_base_pct = None;
        }
        self.last_over_c = over_c;
    }

    fn capped(&self) -> bool {
        self.power
            .is_some_and(|(_, default)| self.cap_w < default - 0.5)
            || self.pause_ms > 0.0
    }

    fn decide(&self) -> Decision {
        let stopped = self.hot_pause || self.quarantined;
        let fan_pct = if !self.fan_control {
            None
        } else if stopped || self.capped() {
            Some(100.0)
        } else {
            self.fan_base_pct.map(|base| {
                let ramp = ((self.last_over_c + FAN_BAND_C) / FAN_BAND_C).clamp(0.0, 1.0);
                base + (100.0 - base) * ramp
            })
        };
        let (level, run) = if self.quarantined {
            (5, RunPermit::Quarantine)
        } else if self.hot_pause {
            (4, RunPermit::Pause)
        } else if self.pause_ms > 0.0 {
            let pause_ms = self.pause_ms.ceil() as u64;
            (3, RunPermit::DutyCycle { pause_ms })
        } else if self.capped() {
            (2, RunPermit::Run)
        } else if fan_pct.is_some() {
            (1, RunPermit::Run)
        } else {
            (0, RunPermit::Run)
        };
        Decision {
            level,
            fan_pct,
            power_limit_w: self.power.map(|_| self.cap_w.round() as u32),
            run,
        }
    }
}

#[cfg(test)]
#[path = "governor_tests.rs"]
mod tests;
