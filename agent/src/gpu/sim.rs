//! Simulated cards: a two-node thermal model per card (die and heatsink), card profiles, the
//! card's own protections (power cap, driver temperature target, hardware slowdown, shutdown)
//! and injectable faults.
//!
//! The model: the die (heat capacity `C_die`) feeds the heatsink through `R_die` K/W; the
//! heatsink (`C_sink`) loses heat to the air through `1 / (cooling * (2 + 9 * fan^0.8))` K/W.
//! A busy card draws `min(power limit, max draw)`, an idle one its idle power. Above the
//! driver's temperature target the card sheds power (5 % per C, down to 60 %); at its slowdown
//! temperature (core or memory) it halves its power until 3 C below; at its shutdown
//! temperature it falls off the bus. Memory, where reported, runs `mem_k_per_w` C per W above
//! the core. The model integrates in 50 ms steps.

use super::{
    CardModel, Gpu, GpuError, Reading, Throttle, XID_FALLEN_OFF_BUS, XID_GRAPHICS_ENGINE_EXCEPTION,
};
use rigd_protocol::{CardInfo, GpuUuid, RigId};

const STEP_S: f32 = 0.05;
const MAX_GAP_S: f32 = 600.0;
const DEFAULT_AMBIENT_C: f32 = 25.0;
const SW_SHED_PER_C: f32 = 0.05;
const SW_SHED_FLOOR: f32 = 0.6;
const HW_SLOWDOWN_FACTOR: f32 = 0.5;
const HW_SLOWDOWN_RELEASE_C: f32 = 3.0;

/// A simulated card's model and physics.
#[derive(Debug, Clone, PartialEq)]
pub struct SimProfile {
    /// What the card reports as its limits.
    pub model: CardModel,
    /// Memory, MiB.
    pub vram_mib: u32,
    /// What the card draws busy with no power limit in the way, W.
    pub max_draw_w: f32,
    /// What it draws idle, W.
    pub idle_w: f32,
    /// Die heat capacity, J/K.
    pub die_j_per_k: f32,
    /// Die to heatsink resistance, K/W.
    pub die_to_sink_k_per_w: f32,
    /// Heatsink heat capacity, J/K.
    pub sink_j_per_k: f32,
    /// Heatsink to air conductance as a fraction of a good open-air cooler's
    /// `2 + 9 * fan^0.8` W/K (1.0: good; 0.45: a dusty blower).
    pub cooling: f32,
    /// Fan speed while the card controls its fan, percent.
    pub default_fan_pct: f32,
    /// Memory temperature above the core per W drawn, C/W (cards that report memory).
    pub mem_k_per_w: f32,
    /// The driver's temperature target: above it the card sheds power, C.
    pub driver_target_c: f32,
    /// SM clock at full power, MHz.
    pub max_sm_mhz: u32,
    /// SM clock idle, MHz.
    pub idle_sm_mhz: u32,
}

impl SimProfile {
    /// RTX 3090: 350 W, a large open-air cooler, GDDR6X memory that runs hot and is reported.
    pub fn rtx_3090() -> Self {
        SimProfile {
            model: CardModel {
                name: "RTX 3090".into(),
                power_min_w: 100,
                power_max_w: 400,
                power_default_w: 350,
                slowdown_c: 95.0,
                shutdown_c: 98.0,
                mem_slowdown_c: Some(110.0),
                fan_control: true,
            },
            vram_mib: 24_576,
            max_draw_w: 370.0,
            idle_w: 30.0,
            die_j_per_k: 60.0,
            die_to_sink_k_per_w: 0.02,
            sink_j_per_k: 1200.0,
            cooling: 1.0,
            default_fan_pct: 60.0,
            mem_k_per_w: 0.09,
            driver_target_c: 83.0,
            max_sm_mhz: 1695,
            idle_sm_mhz: 210,
        }
    }

    /// RTX 3060: 170 W, a mid-size cooler, GDDR6 memory whose temperature is not reported.
    pub fn rtx_3060() -> Self {
        SimProfile {
            model: CardModel {
                name: "RTX 3060".into(),
                power_min_w: 100,
                power_max_w: 170,
                power_default_w: 170,
                slowdown_c: 95.0,
                shutdown_c: 98.0,
                mem_slowdown_c: None,
                fan_control: true,
            },
            vram_mib: 12_288,
            max_draw_w: 175.0,
            idle_w: 15.0,
            die_j_per_k: 40.0,
            die_to_sink_k_per_w: 0.025,
            sink_j_per_k: 700.0,
            cooling: 0.8,
            default_fan_pct: 50.0,
            mem_k_per_w: 0.0,
            driver_target_c: 83.0,
            max_sm_mhz: 1777,
            idle_sm_mhz: 210,
        }
    }

    /// GTX 1080 Ti with a dusty blower: 250 W, a small heatsink and poor cooling; at 35 C
    /// ambient it cannot run at its default limit below 78 C.
    pub fn gtx_1080_ti_blower() -> Self {
        SimProfile {
            model: CardModel {
                name: "GTX 1080 Ti".into(),
                power_min_w: 125,
                power_max_w: 300,
                power_default_w: 250,
                slowdown_c: 93.0,
                shutdown_c: 96.0,
                mem_slowdown_c: None,
                fan_control: true,
            },
            vram_mib: 11_264,
            max_draw_w: 265.0,
            idle_w: 15.0,
            die_j_per_k: 50.0,
            die_to_sink_k_per_w: 0.03,
            sink_j_per_k: 250.0,
            cooling: 0.45,
            default_fan_pct: 50.0,
            mem_k_per_w: 0.0,
            driver_target_c: 84.0,
            max_sm_mhz: 1582,
            idle_sm_mhz: 139,
        }
    }

    /// The profile [`SimGpu::new`] gives card `index`: 3090, 3060, 1080 Ti, then again.
    pub fn for_index(index: u32) -> Self {
        match index % 3 {
            0 => Self::rtx_3090(),
            1 => Self::rtx_3060(),
            _ => Self::gtx_1080_ti_blower(),
        }
    }
}

/// What the worker of a card should do with its next unit (passed on by the supervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkerFault {
    /// Report a sticky compute error (the context is poisoned).
    StickyError,
    /// Stop answering.
    Hang,
    /// Return a wrong result.
    WrongResult,
    /// Exit abruptly.
    Crash,
}

/// A fault injected into a simulated card.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SimFault {
    /// Xid 79: every read and set fails from now on and the Xid is reported.
    FallenOffBus,
    /// Reads fail for `for_ms` from the card's current time (its last read).
    LostTelemetry {
        /// How long, ms.
        for_ms: u64,
    },
    /// The card computes `factor` times slower (and reports lower clocks).
    Slow {
        /// Slow-down factor, at least 1.
        factor: f64,
    },
    /// The card's worker reports a sticky error on its next unit.
    StickyError,
    /// The card's worker hangs on its next unit.
    Hang,
    /// The card's worker returns a wrong result for its next unit.
    WrongResult,
    /// The card's worker crashes on its next unit.
    Crash,
}

#[derive(Debug, Default)]
struct Faults {
    fallen_off: bool,
    telemetry_lost_until_ms: Option<u64>,
    slow_factor: Option<f64>,
    worker: Option<WorkerFault>,
    xids: Vec<u32>,
}

/// Framebuffer memory a simulated worker's CUDA context holds, MiB.
const SIM_CONTEXT_MIB: u32 = 300;

struct SimCard {
    info: CardInfo,
    profile: SimProfile,
    die_c: f32,
    sink_c: f32,
    manual_fan_pct: Option<f32>,
    power_limit_w: u32,
    hw_slowdown: bool,
    last_ms: Option<u64>,
    busy: bool,
    faults: Faults,
}

impl SimCard {
    fn fan_pct(&self) -> f32 {
        self.manual_fan_pct.unwrap_or(self.profile.default_fan_pct)
    }

    /// The worker's CUDA context, and a quarter of the card's memory for a unit's buffers
    /// while one runs.
    fn fb_used_mib(&self) -> u32 {
        let unit = if self.busy {
            self.profile.vram_mib / 4
        } else {
            0
        };
        (SIM_CONTEXT_MIB + unit).min(self.profile.vram_mib)
    }

    fn mem_c(&self, power_w: f32) -> f32 {
        self.die_c + self.profile.mem_k_per_w * power_w
    }

    /// The driver's own power shedding above its temperature target, 1.0 below it.
    fn sw_factor(&self) -> f32 {
        let over = self.die_c - self.profile.driver_target_c;
        if over > 0.0 {
            (1.0 - SW_SHED_PER_C * over).max(SW_SHED_FLOOR)
        } else {
            1.0
        }
    }

    /// What the card draws busy at its limit before thermal shedding, W.
    fn busy_draw_w(&self) -> f32 {
        (self.power_limit_w as f32).min(self.profile.max_draw_w)
    }

    fn power_w(&self) -> f32 {
        if self.faults.fallen_off {
            return 0.0;
        }
        if !self.busy {
            return self.profile.idle_w;
        }
        let hw = if self.hw_slowdown {
            HW_SLOWDOWN_FACTOR
        } else {
            1.0
        };
        (self.busy_draw_w() * self.sw_factor() * hw).max(self.profile.idle_w)
    }

    fn update_protections(&mut self) {
        let p = &self.profile.model;
        let mem_hot = p
            .mem_slowdown_c
            .is_some_and(|s| self.profile.mem_k_per_w > 0.0 && self.mem_c(self.power_w()) >= s);
        if self.die_c >= p.slowdown_c || mem_hot {
            self.hw_slowdown = true;
        } else if self.die_c < p.slowdown_c - HW_SLOWDOWN_RELEASE_C {
            let mem_cool = p
                .mem_slowdown_c
                .is_none_or(|s| self.mem_c(self.power_w()) < s - HW_SLOWDOWN_RELEASE_C);
            if mem_cool {
                self.hw_slowdown = false;
            }
        }
        if self.die_c >= p.shutdown_c && !self.faults.fallen_off {
            self.faults.fallen_off = true;
            self.faults.xids.push(XID_FALLEN_OFF_BUS);
        }
    }

    /// Integrates the two-node model over `dt_s` in small steps.
    fn advance(&mut self, dt_s: f32, ambient_c: f32) {
        let p = &self.profile;
        let fan = (self.fan_pct() / 100.0).clamp(0.0, 1.0);
        let sink_to_air_w_per_k = p.cooling * (2.0 + 9.0 * fan.powf(0.8));
        let (c_die, r_die, c_sink) = (p.die_j_per_k, p.die_to_sink_k_per_w, p.sink_j_per_k);
        let mut left = dt_s.min(MAX_GAP_S);
        while left > 0.0 {
            let h = left.min(STEP_S);
            let die_to_sink_w = (self.die_c - self.sink_c) / r_die;
            let sink_to_air_w = (self.sink_c - ambient_c) * sink_to_air_w_per_k;
            self.die_c += h * (self.power_w() - die_to_sink_w) / c_die;
            self.sink_c += h * (die_to_sink_w - sink_to_air_w) / c_sink;
            self.update_protections();
            left -= h;
        }
    }

    fn throttle(&self) -> Throttle {
        let mut t = Throttle::NONE;
        if self.busy && (self.power_limit_w as f32) < self.profile.max_draw_w {
            t.insert(Throttle::POWER_CAP);
        }
        if self.busy && self.sw_factor() < 1.0 {
            t.insert(Throttle::SW_THERMAL);
        }
        if self.hw_slowdown {
            t.insert(Throttle::HW_THERMAL);
        }
        t
    }

    /// Clock ratio (0..=1) the card would run a unit at now, before any `Slow` fault.
    fn clock_ratio(&self) -> f32 {
        let hw = if self.hw_slowdown {
            HW_SLOWDOWN_FACTOR
        } else {
            1.0
        };
        let draw = self.busy_draw_w() * self.sw_factor() * hw;
        (draw / self.profile.max_draw_w).clamp(0.0, 1.0).cbrt()
    }

    fn reading(&self, now_ms: u64) -> Reading {
        let p = &self.profile;
        let power_w = self.power_w();
        let slow = self.faults.slow_factor.unwrap_or(1.0);
        let sm_mhz = if self.busy {
            (f64::from(p.max_sm_mhz) * f64::from(self.clock_ratio()) / slow) as u32
        } else {
            p.idle_sm_mhz
        };
        Reading {
            at_ms: now_ms,
            core_c: self.die_c,
            mem_c: p.model.reports_mem_temp().then(|| self.mem_c(power_w)),
            power_w,
            power_limit_w: self.power_limit_w as f32,
            fan_pct: self.fan_pct(),
            util_pct: if self.busy { 100.0 } else { 0.0 },
            sm_mhz,
            throttle: self.throttle(),
            fb_used_mib: self.fb_used_mib(),
            xid: None,
        }
    }
}

/// Simulated cards in one room at a shared ambient temperature.
pub struct SimGpu {
    cards: Vec<SimCard>,
    ambient_c: f32,
}

impl SimGpu {
    /// `count` simulated cards with UUIDs derived from the rig id, profiles by index
    /// ([`SimProfile::for_index`]), at 25 C ambient.
    pub fn new(rig: &RigId, count: u32) -> Self {
        let profiles: Vec<_> = (0..count).map(SimProfile::for_index).collect();
        Self::with_profiles(rig, &profiles, DEFAULT_AMBIENT_C)
    }

    /// One simulated card per profile, at `ambient_c`, each starting at ambient + 5 C.
    pub fn with_profiles(rig: &RigId, profiles: &[SimProfile], ambient_c: f32) -> Self {
        let cards = profiles
            .iter()
            .zip(0u32..)
            .filter_map(|(profile, i)| {
                let uuid = GpuUuid::new(format!("SIM-{rig}-{i}")).ok()?;
                Some(SimCard {
                    info: CardInfo {
                        uuid,
                        index: i,
                        name: format!("Simulated {}", profile.model.name),
                        vram_mib: profile.vram_mib,
                        power_limit_w: profile.model.power_default_w,
                    },
                    profile: profile.clone(),
                    die_c: ambient_c + 5.0,
                    sink_c: ambient_c + 5.0,
                    manual_fan_pct: None,
                    power_limit_w: profile.model.power_default_w,
                    hw_slowdown: false,
                    last_ms: None,
                    busy: false,
                    faults: Faults::default(),
                })
            })
            .collect();
        Self { cards, ambient_c }
    }

    /// The room temperature now, C.
    pub fn ambient_c(&self) -> f32 {
        self.ambient_c
    }

    /// Changes the room temperature from now on, C.
    pub fn set_ambient(&mut self, ambient_c: f32) {
        self.ambient_c = ambient_c;
    }

    fn card(&mut self, index: usize) -> Result<&mut SimCard, GpuError> {
        self.cards.get_mut(index).ok_or(GpuError::NoSuchCard(index))
    }

    fn live_card(&mut self, index: usize) -> Result<&mut SimCard, GpuError> {
        let card = self.card(index)?;
        if card.faults.fallen_off {
            return Err(GpuError::FallenOffBus(index));
        }
        Ok(card)
    }

    /// Advances card `index` to `now_ms`, `busy` (or idle) over the time since its last
    /// advance or read, without reading it.
    pub fn advance(&mut self, index: usize, now_ms: u64, busy: bool) -> Result<(), GpuError> {
        let ambient_c = self.ambient_c;
        let card = self.card(index)?;
        card.busy = busy;
        if let Some(last) = card.last_ms {
            card.advance(now_ms.saturating_sub(last) as f32 / 1000.0, ambient_c);
        }
        card.last_ms = Some(card.last_ms.map_or(now_ms, |last| last.max(now_ms)));
        Ok(())
    }

    /// Injects `fault` into card `index`.
    pub fn inject(&mut self, index: usize, fault: SimFault) -> Result<(), GpuError> {
        let card = self.card(index)?;
        let f = &mut card.faults;
        match fault {
            SimFault::FallenOffBus => {
                if !f.fallen_off {
                    f.fallen_off = true;
                    f.xids.push(XID_FALLEN_OFF_BUS);
                }
            }
            SimFault::LostTelemetry { for_ms } => {
                f.telemetry_lost_until_ms = Some(card.last_ms.unwrap_or(0).saturating_add(for_ms));
            }
            SimFault::Slow { factor } => f.slow_factor = Some(factor.max(1.0)),
            SimFault::StickyError => f.worker = Some(WorkerFault::StickyError),
            SimFault::Hang => f.worker = Some(WorkerFault::Hang),
            SimFault::WrongResult => f.worker = Some(WorkerFault::WrongResult),
            SimFault::Crash => f.worker = Some(WorkerFault::Crash),
        }
        Ok(())
    }

    /// Clears every fault of card `index` (a rig reboot, as far as the card is concerned).
    pub fn clear_faults(&mut self, index: usize) -> Result<(), GpuError> {
        self.card(index)?.faults = Faults::default();
        Ok(())
    }

    /// What the worker of card `index` should do with its next unit, if anything.
    pub fn pending_worker_fault(&self, index: usize) -> Option<WorkerFault> {
        self.cards.get(index).and_then(|c| c.faults.worker)
    }

    /// Takes the pending worker fault of card `index`, to pass it to the worker.
    /// A sticky error is a kernel fault, which the driver reports as Xid 13.
    pub fn take_worker_fault(&mut self, index: usize) -> Option<WorkerFault> {
        let faults = &mut self.cards.get_mut(index)?.faults;
        let fault = faults.worker.take();
        if fault == Some(WorkerFault::StickyError) {
            faults.xids.push(XID_GRAPHICS_ENGINE_EXCEPTION);
        }
        fault
    }

    /// The model's die temperature of card `index`, C, whether or not the card reports it.
    pub fn model_core_c(&self, index: usize) -> Option<f32> {
        self.cards.get(index).map(|c| c.die_c)
    }

    /// Relative speed (0..=1) card `index` computes at now: its clocks under its power limit
    /// and thermal state, divided by any `Slow` factor.
    pub fn throughput(&self, index: usize) -> Result<f64, GpuError> {
        let card = self.cards.get(index).ok_or(GpuError::NoSuchCard(index))?;
        if card.faults.fallen_off {
            return Err(GpuError::FallenOffBus(index));
        }
        Ok(f64::from(card.clock_ratio()) / card.faults.slow_factor.unwrap_or(1.0))
    }
}

impl Gpu for SimGpu {
    fn inventory(&self) -> Vec<CardInfo> {
        self.cards.iter().map(|c| c.info.clone()).collect()
    }

    fn model(&self, index: usize) -> Result<CardModel, GpuError> {
        self.cards
            .get(index)
            .map(|c| c.profile.model.clone())
            .ok_or(GpuError::NoSuchCard(index))
    }

    fn read(&mut self, index: usize, now_ms: u64, busy: bool) -> Result<Reading, GpuError> {
        self.advance(index, now_ms, busy)?;
        let card = self.live_card(index)?;
        if card
            .faults
            .telemetry_lost_until_ms
            .is_some_and(|until| now_ms < until)
        {
            return Err(GpuError::TelemetryLost(index));
        }
        Ok(card.reading(now_ms))
    }

    fn set_power_limit(&mut self, index: usize, watts: u32) -> Result<(), GpuError> {
        let card = self.live_card(index)?;
        card.power_limit_w = card
            .profile
            .model
            .check_power_limit(watts)
            .map_err(|source| GpuError::PowerLimit { index, source })?;
        Ok(())
    }

    fn set_fan(&mut self, index: usize, pct: Option<f32>) -> Result<(), GpuError> {
        let card = self.live_card(index)?;
        if !card.profile.model.fan_control {
            return Err(GpuError::NoFanControl(index));
        }
        if let Some(p) = pct {
            if !(0.0..=100.0).contains(&p) {
                return Err(GpuError::FanOutOfRange { index, pct: p });
            }
        }
        card.manual_fan_pct = pct;
        Ok(())
    }

    fn take_xid_events(&mut self, index: usize) -> Result<Vec<u32>, GpuError> {
        Ok(std::mem::take(&mut self.card(index)?.faults.xids))
    }

    fn inject(&mut self, index: usize, fault: SimFault) -> Result<(), GpuError> {
        SimGpu::inject(self, index, fault)
    }

    fn unit_starting(&mut self, index: usize) -> Option<WorkerFault> {
        SimGpu::take_worker_fault(self, index)
    }
}

#[cfg(test)]
#[path = "sim_tests.rs"]
mod tests;
