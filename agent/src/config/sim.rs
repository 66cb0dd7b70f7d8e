//! `[sim]` in rig.conf: simulated cards, for development, tests and the demo, asked for
//! with `gpu = "sim"` (a rig never simulates cards unless told to):
//!
//! ```toml
//! gpu = "sim"
//!
//! [sim]
//! gpus = 3          # 1 to 16
//! gflops = 0.05     # a unit takes at least work / gflops
//! ambient_c = 25.0  # air around the cards
//!
//! [[sim.fault]]     # faults to inject, for tests and demonstrations
//! card = 1
//! after_units = 4
//! fault = "crash"
//! ```

use crate::gpu::faults::Planned;
use crate::gpu::SimFault;
use serde::Deserialize;

/// `[sim]`: the simulated cards.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Number of simulated cards, 1 to 16.
    #[serde(default = "default_gpus")]
    pub gpus: u32,
    /// Simulated card throughput, GFLOP/s: a unit takes at least `work / gflops`.
    #[serde(default = "default_gflops")]
    pub gflops: f64,
    /// Air temperature around the cards, C.
    #[serde(default = "default_ambient")]
    pub ambient_c: f32,
    /// Faults to inject (tests and demonstrations).
    #[serde(default)]
    pub fault: Vec<SimFaultConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            gpus: default_gpus(),
            gflops: default_gflops(),
            ambient_c: default_ambient(),
            fault: vec![],
        }
    }
}

impl SimConfig {
    /// `gpus` cards with the other settings at their defaults.
    pub fn cards(gpus: u32) -> Self {
        SimConfig {
            gpus,
            ..SimConfig::default()
        }
    }

    /// What is wrong with these settings, as (key, why).
    pub(super) fn problem(&self) -> Option<(&'static str, String)> {
        if !(1..=16).contains(&self.gpus) {
            return Some(("sim.gpus", format!("{} is outside 1..=16", self.gpus)));
        }
        if !(self.gflops.is_finite() && self.gflops > 0.0) {
            return Some((
                "sim.gflops",
                format!("{} is not a positive number", self.gflops),
            ));
        }
        if !(-20.0..=60.0).contains(&self.ambient_c) {
            return Some((
                "sim.ambient_c",
                format!("{} is outside -20..=60", self.ambient_c),
            ));
        }
        if let Some(f) = self.fault.iter().find(|f| f.card >= self.gpus) {
            return Some((
                "sim.fault",
                format!("card {} does not exist (sim.gpus = {})", f.card, self.gpus),
            ));
        }
        None
    }
}

fn default_gpus() -> u32 {
    1
}
fn default_gflops() -> f64 {
    0.05
}
fn default_ambient() -> f32 {
    25.0
}
fn default_lost_ms() -> u64 {
    5000
}

/// A fault to inject into a simulated card once it has been given `after_units` units.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimFaultConfig {
    /// The card's index.
    pub card: u32,
    /// Units the card runs before the fault.
    #[serde(default)]
    pub after_units: u32,
    /// The fault.
    pub fault: SimFaultKind,
    /// How long telemetry stays lost, ms (`lost_telemetry` only).
    #[serde(default = "default_lost_ms")]
    pub for_ms: u64,
}

/// The faults a simulated card can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimFaultKind {
    /// The worker process exits mid-unit.
    Crash,
    /// The worker stops answering.
    Hang,
    /// The worker reports a sticky error (poisoned context).
    Sticky,
    /// The worker returns a wrong result.
    WrongResult,
    /// The card falls off the bus (Xid 79).
    FallenOffBus,
    /// The card stops answering telemetry for `for_ms`.
    LostTelemetry,
}

impl SimFaultConfig {
    /// The fault as [`crate::gpu::faults::Scheduled`] takes it.
    pub fn planned(&self) -> Planned {
        Planned {
            card: self.card as usize,
            after_units: self.after_units,
            fault: self.sim_fault(),
        }
    }

    fn sim_fault(&self) -> SimFault {
        match self.fault {
            SimFaultKind::Crash => SimFault::Crash,
            SimFaultKind::Hang => SimFault::Hang,
            SimFaultKind::Sticky => SimFault::StickyError,
            SimFaultKind::WrongResult => SimFault::WrongResult,
            SimFaultKind::FallenOffBus => SimFault::FallenOffBus,
            SimFaultKind::LostTelemetry => SimFault::LostTelemetry {
                for_ms: self.for_ms,
            },
        }
    }
}
