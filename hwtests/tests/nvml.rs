//! NVML inventory read back from every card. Read-only: no card setting is
//! changed (power-limit actuation is not implemented).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use rigd_hwtests::skip;

/// `Some(value)`, `None` where the card does not report it (e.g. GeForce cards
/// without some sensors), a panic on any other error.
fn optional<T>(what: &str, result: Result<T, NvmlError>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(NvmlError::NotSupported) => None,
        Err(e) => panic!("{what}: {e}"),
    }
}

#[test]
fn nvml_inventory_of_every_card_reads_back() {
    const TEST: &str = "nvml_inventory_of_every_card_reads_back";
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        Err(NvmlError::LibloadingError(e)) => {
            skip(
                TEST,
                &format!("the NVIDIA driver (libnvidia-ml.so.1) is not installed: {e}"),
            );
            return;
        }
        Err(e) => panic!("NVML is installed but does not initialise: {e}"),
    };
    let count = nvml.device_count().expect("device count");
    println!(
        "driver {}, NVML {}, CUDA driver API {}, {count} card(s)",
        nvml.sys_driver_version().expect("driver version"),
        nvml.sys_nvml_version().expect("NVML version"),
        nvml.sys_cuda_driver_version().expect("CUDA driver version"),
    );
    if count == 0 {
        skip(TEST, "NVML reports no cards");
        return;
    }
    for index in 0..count {
        let card = nvml.device_by_index(index).expect("card handle");
        let name = card.name().expect("name");
        let uuid = card.uuid().expect("uuid");
        let pci = card.pci_info().expect("PCI info");
        let memory = card.memory_info().expect("memory info");
        let temperature = optional("temperature", card.temperature(TemperatureSensor::Gpu));
        let limits = optional(
            "power limit constraints",
            card.power_management_limit_constraints(),
        );
        let limit = optional("power limit", card.power_management_limit());
        let enforced = optional("enforced power limit", card.enforced_power_limit());
        let usage = optional("power draw", card.power_usage());
        println!(
            "card {index}: {name} {uuid} pci {} memory {} MiB ({} MiB used) \
             temperature {temperature:?} C power draw {usage:?} mW limit {limit:?} mW \
             (enforced {enforced:?}, range {:?}..{:?} mW)",
            pci.bus_id,
            memory.total >> 20,
            memory.used >> 20,
            limits.as_ref().map(|l| l.min_limit),
            limits.as_ref().map(|l| l.max_limit),
        );

        assert!(!name.is_empty(), "card {index} has no name");
        assert!(uuid.starts_with("GPU-"), "card {index} uuid {uuid:?}");
        assert!(!pci.bus_id.is_empty(), "card {index} has no PCI bus id");
        assert!(memory.total > 0, "card {index} reports no memory");
        assert!(
            memory.used <= memory.total,
            "card {index} memory {memory:?}"
        );
        if let Some(t) = temperature {
            assert!((1..=125).contains(&t), "card {index} temperature {t} C");
        }
        if let (Some(range), Some(limit)) = (limits, limit) {
            assert!(
                range.min_limit <= limit && limit <= range.max_limit,
                "card {index} power limit {limit} mW outside {}..={} mW",
                range.min_limit,
                range.max_limit
            );
        }
    }
}
