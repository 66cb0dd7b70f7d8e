//! Cards behind the [`Gpu`] trait. The simulated backend models each card with two thermal
//! nodes (die and heatsink) so telemetry moves as a real card's would under load.

use rigd_protocol::{CardInfo, GpuUuid, RigId};

/// One telemetry reading of one card.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Core temperature, C.
    pub core_c: f32,
    /// Memory temperature, C, where the card reports it.
    pub mem_c: Option<f32>,
    /// Power draw, W.
    pub power_w: f32,
    /// Power limit in force, W.
    pub power_limit_w: f32,
    /// Fan speed, percent.
    pub fan_pct: f32,
    /// Utilization, percent.
    pub util_pct: f32,
    /// SM clock, MHz.
    pub sm_mhz: u32,
}

/// Why a card could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No such card index.
    #[error("no card at index {0}")]
    NoSuchCard(usize),
}

/// The cards of a rig.
pub trait Gpu: Send {
    /// Every card found.
    fn inventory(&self) -> Vec<CardInfo>;
    /// Advances to `now_ms` with the card `busy` or idle since the last call, and reads it.
    fn read(&mut self, index: usize, now_ms: u64, busy: bool) -> Result<Reading, GpuError>;
}

const AMBIENT_C: f32 = 25.0;
const DIE_HEAT_CAPACITY: f32 = 60.0;
const DIE_TO_SINK_K_PER_W: f32 = 0.02;
const SINK_HEAT_CAPACITY: f32 = 1200.0;
const IDLE_W: f32 = 30.0;

struct SimCard {
    info: CardInfo,
    die_c: f32,
    sink_c: f32,
    fan: f32,
    last_ms: Option<u64>,
    busy: bool,
}

impl SimCard {
    fn power_w(&self) -> f32 {
        if self.busy {
            self.info.power_limit_w as f32
        } else {
            IDLE_W
        }
    }

    /// Integrates the two-node model over `dt_s` in small steps.
    fn advance(&mut self, dt_s: f32) {
        let sink_to_air = 1.0 / (2.0 + 9.0 * self.fan.powf(0.8));
        let mut left = dt_s.min(600.0);
        while left > 0.0 {
            let h = left.min(0.05);
            let die_to_sink_w = (self.die_c - self.sink_c) / DIE_TO_SINK_K_PER_W;
            let sink_to_air_w = (self.sink_c - AMBIENT_C) / sink_to_air;
            self.die_c += h * (self.power_w() - die_to_sink_w) / DIE_HEAT_CAPACITY;
            self.sink_c += h * (die_to_sink_w - sink_to_air_w) / SINK_HEAT_CAPACITY;
            left -= h;
        }
    }
}

/// Simulated cards.
pub struct SimGpu {
    cards: Vec<SimCard>,
}

impl SimGpu {
    /// `count` simulated RTX 3090-like cards with UUIDs derived from the rig id.
    pub fn new(rig: &RigId, count: u32) -> Self {
        let cards = (0..count)
            .filter_map(|i| {
                let uuid = GpuUuid::new(format!("SIM-{rig}-{i}")).ok()?;
                Some(SimCard {
                    info: CardInfo {
                        uuid,
                        index: i,
                        name: "Simulated RTX 3090".into(),
                        vram_mib: 24_576,
                        power_limit_w: 350,
                    },
                    die_c: AMBIENT_C + 5.0,
                    sink_c: AMBIENT_C + 5.0,
                    fan: 0.6,
                    last_ms: None,
                    busy: false,
                })
            })
            .collect();
        Self { cards }
    }
}

impl Gpu for SimGpu {
    fn inventory(&self) -> Vec<CardInfo> {
        self.cards.iter().map(|c| c.info.clone()).collect()
    }

    fn read(&mut self, index: usize, now_ms: u64, busy: bool) -> Result<Reading, GpuError> {
        let card = self
            .cards
            .get_mut(index)
            .ok_or(GpuError::NoSuchCard(index))?;
        if let Some(last) = card.last_ms {
            card.advance(now_ms.saturating_sub(last) as f32 / 1000.0);
        }
        card.last_ms = Some(now_ms);
        card.busy = busy;
        Ok(Reading {
            core_c: card.die_c,
            mem_c: Some(card.die_c + 8.0),
            power_w: card.power_w(),
            power_limit_w: card.info.power_limit_w as f32,
            fan_pct: card.fan * 100.0,
            util_pct: if busy { 100.0 } else { 0.0 },
            sm_mhz: if busy { 1695 } else { 210 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_sim_card_settles_near_76_c_at_350_w_and_60_percent_fan() {
        let rig = RigId::new("r").unwrap_or_else(|_| unreachable!());
        let mut gpu = SimGpu::new(&rig, 1);
        let mut t = 0;
        let mut last = None;
        while t <= 3_600_000 {
            last = gpu.read(0, t, true).ok();
            t += 10_000;
        }
        let core = last.map(|r| r.core_c).unwrap_or_default();
        assert!((core - 76.0).abs() < 3.0, "settled at {core}");
    }
}
