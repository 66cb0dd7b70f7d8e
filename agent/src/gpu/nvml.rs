//! Real cards through NVML (`nvml-wrapper`, which loads `libnvidia-ml` at run time).
//!
//! With no driver, [`NvmlGpu::open`] returns an error that the supervisor logs before going
//! on with no cards. Memory temperature is not exposed by NVML on GeForce cards, so readings
//! carry none. Xid errors come from an NVML event set polled without waiting.

use super::{CardModel, Gpu, GpuError, Reading, Throttle, XID_FALLEN_OFF_BUS};
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::event::EventSet;
use nvml_wrapper::Nvml;
use rigd_protocol::{CardInfo, GpuUuid};
use std::collections::HashMap;

/// Why NVML could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("NVIDIA driver not usable: {0}")]
pub struct NvmlUnavailable(String);

struct Card {
    index: u32,
    info: CardInfo,
    model: CardModel,
    fans: u32,
}

/// The cards NVML sees.
pub struct NvmlGpu {
    nvml: &'static Nvml,
    cards: Vec<Card>,
    events: Option<EventSet<'static>>,
    xids: HashMap<String, Vec<u32>>,
}

fn driver(index: usize, e: NvmlError) -> GpuError {
    GpuError::Driver {
        index,
        reason: e.to_string(),
    }
}

impl NvmlGpu {
    /// Loads NVML and inventories every card. The NVML handle lives as long as the process
    /// (its devices and event set borrow it).
    pub fn open() -> Result<Self, NvmlUnavailable> {
        let nvml = Nvml::init().map_err(|e| NvmlUnavailable(e.to_string()))?;
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let count = nvml
            .device_count()
            .map_err(|e| NvmlUnavailable(e.to_string()))?;
        let mut cards = vec![];
        let mut events = nvml.create_event_set().ok();
        for index in 0..count {
            let device = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(index, error = %e, "card not usable; skipped");
                    continue;
                }
            };
            let Some(uuid) = device.uuid().ok().and_then(|u| GpuUuid::new(u).ok()) else {
                tracing::warn!(index, "card without a usable UUID; skipped");
                continue;
            };
            let name = device.name().unwrap_or_else(|_| "NVIDIA GPU".into());
            let limits = device.power_management_limit_constraints().ok();
            let default_mw = device.power_management_limit_default().unwrap_or(0);
            let model = CardModel {
                name: name.clone(),
                power_min_w: limits.as_ref().map_or(0, |l| l.min_limit / 1000),
                power_max_w: limits.as_ref().map_or(0, |l| l.max_limit / 1000),
                power_default_w: default_mw / 1000,
                slowdown_c: device
                    .temperature_threshold(TemperatureThreshold::Slowdown)
                    .map_or(90.0, |t| t as f32),
                shutdown_c: device
                    .temperature_threshold(TemperatureThreshold::Shutdown)
                    .map_or(100.0, |t| t as f32),
                mem_slowdown_c: None,
                fan_control: device.num_fans().unwrap_or(0) > 0,
            };
            let info = CardInfo {
                uuid,
                index,
                name: rigd_protocol::clip(&name, rigd_protocol::MAX_TEXT),
                vram_mib: device.memory_info().map_or(0, |m| (m.total >> 20) as u32),
                power_limit_w: device.enforced_power_limit().map_or(0, |p| p / 1000),
            };
            if let Some(set) = events.take() {
                events = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(set) => Some(set),
                    Err(e) => {
                        tracing::warn!(index, error = %e.error, "Xid events not available");
                        None
                    }
                };
            }
            let fans = device.num_fans().unwrap_or(0);
            tracing::info!(index, gpu = %info.uuid, name = %info.name, "card found");
            cards.push(Card {
                index,
                info,
                model,
                fans,
            });
        }
        Ok(Self {
            nvml,
            cards,
            events,
            xids: HashMap::new(),
        })
    }

    fn card(&self, index: usize) -> Result<&Card, GpuError> {
        self.cards.get(index).ok_or(GpuError::NoSuchCard(index))
    }

    fn drain_events(&mut self) {
        let Some(set) = &self.events else { return };
        while let Ok(ev) = set.wait(0) {
            let xid = match ev.event_data {
                Some(XidError::Value(v)) => v as u32,
                _ => continue,
            };
            if let Ok(uuid) = ev.device.uuid() {
                tracing::warn!(gpu = %uuid, xid, "Xid error reported");
                self.xids.entry(uuid).or_default().push(xid);
            }
        }
    }
}

impl Gpu for NvmlGpu {
    fn inventory(&self) -> Vec<CardInfo> {
        self.cards.iter().map(|c| c.info.clone()).collect()
    }

    fn model(&self, index: usize) -> Result<CardModel, GpuError> {
        Ok(self.card(index)?.model.clone())
    }

    fn read(&mut self, index: usize, now_ms: u64, _busy: bool) -> Result<Reading, GpuError> {
        let card = self.card(index)?;
        let device = self
            .nvml
            .device_by_index(card.index)
            .map_err(|_| GpuError::FallenOffBus(index))?;
        let core_c = match device.temperature(TemperatureSensor::Gpu) {
            Ok(t) => t as f32,
            Err(NvmlError::GpuLost) => return Err(GpuError::FallenOffBus(index)),
            Err(_) => return Err(GpuError::TelemetryLost(index)),
        };
        let reasons = device
            .current_throttle_reasons()
            .unwrap_or(ThrottleReasons::empty());
        let mut throttle = Throttle::NONE;
        if reasons.contains(ThrottleReasons::SW_POWER_CAP) {
            throttle.insert(Throttle::POWER_CAP);
        }
        if reasons.contains(ThrottleReasons::SW_THERMAL_SLOWDOWN) {
            throttle.insert(Throttle::SW_THERMAL);
        }
        if reasons.intersects(ThrottleReasons::HW_THERMAL_SLOWDOWN | ThrottleReasons::HW_SLOWDOWN) {
            throttle.insert(Throttle::HW_THERMAL);
        }
        let fan_pct = if card.fans > 0 {
            device.fan_speed(0).map_or(0.0, |f| f as f32)
        } else {
            0.0
        };
        Ok(Reading {
            at_ms: now_ms,
            core_c,
            mem_c: None,
            power_w: device.power_usage().map_or(0.0, |p| p as f32 / 1000.0),
            power_limit_w: device
                .enforced_power_limit()
                .map_or(0.0, |p| p as f32 / 1000.0),
            fan_pct,
            util_pct: device.utilization_rates().map_or(0.0, |u| u.gpu as f32),
            sm_mhz: device.clock_info(Clock::SM).unwrap_or(0),
            fb_used_mib: device
                .memory_info()
                .map_or(0, |m| u32::try_from(m.used >> 20).unwrap_or(u32::MAX)),
            xid: None,
            throttle,
        })
    }

    fn set_power_limit(&mut self, index: usize, watts: u32) -> Result<(), GpuError> {
        let card = self.card(index)?;
        let watts = card
            .model
            .check_power_limit(watts)
            .map_err(|source| GpuError::PowerLimit { index, source })?;
        let mut device = self
            .nvml
            .device_by_index(card.index)
            .map_err(|e| driver(index, e))?;
        device
            .set_power_management_limit(watts * 1000)
            .map_err(|e| driver(index, e))
    }

    fn set_fan(&mut self, index: usize, pct: Option<f32>) -> Result<(), GpuError> {
        let card = self.card(index)?;
        if card.fans == 0 {
            return Err(GpuError::NoFanControl(index));
        }
        if let Some(p) = pct.filter(|p| !(0.0..=100.0).contains(p)) {
            return Err(GpuError::FanOutOfRange { index, pct: p });
        }
        let fans = card.fans;
        let mut device = self
            .nvml
            .device_by_index(card.index)
            .map_err(|e| driver(index, e))?;
        for fan in 0..fans {
            match pct {
                Some(p) => device.set_fan_speed(fan, p.round() as u32),
                None => device.set_default_fan_speed(fan),
            }
            .map_err(|e| driver(index, e))?;
        }
        Ok(())
    }

    fn take_xid_events(&mut self, index: usize) -> Result<Vec<u32>, GpuError> {
        self.drain_events();
        let uuid = self.card(index)?.info.uuid.to_string();
        let xids = self.xids.remove(&uuid).unwrap_or_default();
        if xids.contains(&XID_FALLEN_OFF_BUS) {
            tracing::error!(gpu = %uuid, "card has fallen off the bus (Xid 79)");
        }
        Ok(xids)
    }
}
