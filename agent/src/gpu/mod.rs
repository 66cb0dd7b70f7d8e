//! Cards behind the [`Gpu`] trait: inventory, telemetry, actuation (power limit, fan) and Xid
//! events. The simulated backend ([`sim`]) models each card with two thermal nodes (die and
//! heatsink) so telemetry moves as a real card's would under load, and takes injected faults;
//! [`faults::Scheduled`] injects rig.conf's `[[sim.fault]]`s into it as units start.

pub mod faults;
pub mod nvml;
pub mod sim;
pub mod sim_loop;

pub use sim::{SimFault, SimGpu, SimProfile, WorkerFault};

use rigd_protocol::CardInfo;

/// Xid 79: the card has fallen off the bus.
pub const XID_FALLEN_OFF_BUS: u32 = 79;

/// Xid 13: graphics engine exception (a kernel faulted; its CUDA context is lost).
pub const XID_GRAPHICS_ENGINE_EXCEPTION: u32 = 13;

/// What a card model allows and where it protects itself: the facts the governor needs.
#[derive(Debug, Clone, PartialEq)]
pub struct CardModel {
    /// Model name, e.g. `RTX 3090`.
    pub name: String,
    /// Lowest power limit the card accepts, W.
    pub power_min_w: u32,
    /// Highest power limit the card accepts, W.
    pub power_max_w: u32,
    /// Power limit the card boots with, W.
    pub power_default_w: u32,
    /// Core temperature at which the card slows itself down (hardware slowdown), C.
    pub slowdown_c: f32,
    /// Core temperature at which the card shuts itself off, C.
    pub shutdown_c: f32,
    /// Memory temperature at which the memory throttles, C; `Some` only where the card
    /// reports its memory temperature.
    pub mem_slowdown_c: Option<f32>,
    /// Whether the fan speed can be set.
    pub fan_control: bool,
}

impl CardModel {
    /// Whether readings of this card carry a memory temperature.
    pub fn reports_mem_temp(&self) -> bool {
        self.mem_slowdown_c.is_some()
    }

    /// `watts` if the card accepts it as a power limit.
    pub fn check_power_limit(&self, watts: u32) -> Result<u32, PowerLimitOutOfRange> {
        if (self.power_min_w..=self.power_max_w).contains(&watts) {
            Ok(watts)
        } else {
            Err(PowerLimitOutOfRange {
                watts,
                min: self.power_min_w,
                max: self.power_max_w,
            })
        }
    }
}

/// A power limit the card does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("power limit {watts} W is outside the card's range {min}..={max} W")]
pub struct PowerLimitOutOfRange {
    /// The limit asked for, W.
    pub watts: u32,
    /// Lowest accepted, W.
    pub min: u32,
    /// Highest accepted, W.
    pub max: u32,
}

/// Why a card is running below its full clocks, as a small set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Throttle(u8);

impl Throttle {
    /// Not throttled.
    pub const NONE: Throttle = Throttle(0);
    /// Held at its power limit (software power cap).
    pub const POWER_CAP: Throttle = Throttle(1);
    /// Above the driver's temperature target: clocks reduced by the driver (software
    /// thermal slowdown).
    pub const SW_THERMAL: Throttle = Throttle(2);
    /// At its slowdown temperature (core or memory): clocks cut by the hardware.
    pub const HW_THERMAL: Throttle = Throttle(4);

    /// Whether every reason in `other` is set.
    pub fn contains(self, other: Throttle) -> bool {
        self.0 & other.0 == other.0
    }

    /// Adds the reasons in `other`.
    pub fn insert(&mut self, other: Throttle) {
        self.0 |= other.0;
    }

    /// Whether no reason is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Throttle {
    type Output = Throttle;
    fn bitor(self, rhs: Throttle) -> Throttle {
        Throttle(self.0 | rhs.0)
    }
}

/// One telemetry reading of one card.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// When it was taken, ms on the caller's clock.
    pub at_ms: u64,
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
    /// Why the clocks are reduced, if they are.
    pub throttle: Throttle,
    /// Framebuffer memory in use, MiB.
    pub fb_used_mib: u32,
    /// The last Xid error the driver reported for the card since the previous reading
    /// ([`Gpu::take_xid_events`]; `read` itself leaves it `None`).
    pub xid: Option<u32>,
}

/// Why a card could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No such card index.
    #[error("no card at index {0}")]
    NoSuchCard(usize),
    /// The card has fallen off the bus (Xid 79): it needs a reset or a reboot; quarantine it.
    #[error("card {0} has fallen off the bus (Xid 79); quarantine it and reboot the rig")]
    FallenOffBus(usize),
    /// The card answered no telemetry this time; treat it as hot and ask again.
    #[error("card {0} returned no telemetry; treat it as hot and read it again")]
    TelemetryLost(usize),
    /// The card refused a power limit outside its range.
    #[error("card {index}: {source}")]
    PowerLimit {
        /// The card.
        index: usize,
        /// The refused limit and the range.
        source: PowerLimitOutOfRange,
    },
    /// The card refused a fan speed outside 0..=100 %.
    #[error("card {index}: fan speed {pct} % is outside 0..=100 %")]
    FanOutOfRange {
        /// The card.
        index: usize,
        /// The refused speed, percent.
        pct: f32,
    },
    /// The card does not let its fan be set (passively cooled, or no driver support).
    #[error("card {0} has no fan control; leave its fan alone")]
    NoFanControl(usize),
    /// The driver refused a call.
    #[error("card {index}: driver error: {reason}")]
    Driver {
        /// The card.
        index: usize,
        /// What the driver said.
        reason: String,
    },
    /// Fault injection is for simulated cards only.
    #[error("card {0} is not simulated; faults cannot be injected")]
    NotSimulated(usize),
}

/// The cards of a rig.
pub trait Gpu: Send {
    /// Every card found.
    fn inventory(&self) -> Vec<CardInfo>;
    /// Limits and protections of the card at `index`.
    fn model(&self, index: usize) -> Result<CardModel, GpuError>;
    /// Advances to `now_ms` with the card `busy` or idle since the last call, and reads it.
    fn read(&mut self, index: usize, now_ms: u64, busy: bool) -> Result<Reading, GpuError>;
    /// Sets the power limit, W; refused outside the card's min..=max.
    fn set_power_limit(&mut self, index: usize, watts: u32) -> Result<(), GpuError>;
    /// Sets the fan speed, percent; `None` gives the fan back to the card's own control.
    /// Refused on cards without fan control.
    fn set_fan(&mut self, index: usize, pct: Option<f32>) -> Result<(), GpuError>;
    /// Takes the Xid errors the card reported since the last call (79: fallen off the bus).
    fn take_xid_events(&mut self, index: usize) -> Result<Vec<u32>, GpuError>;
    /// Injects a fault (simulated cards only).
    fn inject(&mut self, index: usize, _fault: SimFault) -> Result<(), GpuError> {
        Err(GpuError::NotSimulated(index))
    }
    /// A unit is about to start on the card: the fault its worker should act out, if any
    /// (simulated cards only).
    fn unit_starting(&mut self, _index: usize) -> Option<WorkerFault> {
        None
    }
}
