#![allow(clippy::unwrap_used)]

use super::*;

fn rig() -> RigId {
    RigId::new("r").unwrap()
}

fn one(profile: SimProfile, ambient_c: f32) -> SimGpu {
    SimGpu::with_profiles(&rig(), &[profile], ambient_c)
}

/// Runs card 0 busy (or idle) from `from_ms` for `secs`, reading every second.
fn run(gpu: &mut SimGpu, from_ms: u64, secs: u64, busy: bool) -> Vec<Reading> {
    (1..=secs)
        .filter_map(|s| gpu.read(0, from_ms + s * 1000, busy).ok())
        .collect()
}

#[test]
fn a_busy_sim_card_settles_near_76_c_at_350_w_and_60_percent_fan() {
    let mut gpu = SimGpu::new(&rig(), 1);
    let mut t = 0;
    let mut last = None;
    while t <= 3_600_000 {
        last = gpu.read(0, t, true).ok();
        t += 10_000;
    }
    let r = last.unwrap();
    assert!((r.core_c - 76.0).abs() < 3.0, "settled at {}", r.core_c);
    assert_eq!((r.power_w, r.fan_pct), (350.0, 60.0));
}

#[test]
fn new_cycles_through_the_profiles_by_index() {
    let gpu = SimGpu::new(&rig(), 4);
    let names: Vec<_> = gpu.inventory().into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "Simulated RTX 3090",
            "Simulated RTX 3060",
            "Simulated GTX 1080 Ti",
            "Simulated RTX 3090"
        ]
    );
    assert_eq!(
        gpu.model(2).unwrap(),
        SimProfile::gtx_1080_ti_blower().model
    );
    assert!(matches!(gpu.model(4), Err(GpuError::NoSuchCard(4))));
}

#[test]
fn framebuffer_use_is_the_context_idle_and_a_quarter_more_busy() {
    let mut gpu = one(SimProfile::rtx_3090(), 25.0);
    assert_eq!(gpu.read(0, 0, false).unwrap().fb_used_mib, 300);
    assert_eq!(
        gpu.read(0, 1000, true).unwrap().fb_used_mib,
        300 + 24_576 / 4
    );
}

#[test]
fn an_idle_card_draws_idle_power_and_stays_near_ambient() {
    let mut gpu = one(SimProfile::rtx_3060(), 20.0);
    let r = *run(&mut gpu, 0, 1200, false).last().unwrap();
    assert_eq!((r.power_w, r.util_pct, r.sm_mhz), (15.0, 0.0, 210));
    assert!(r.core_c < 25.0, "{}", r.core_c);
    assert!(r.throttle.is_empty());
}

#[test]
fn a_lower_power_limit_lowers_draw_clocks_and_temperature_and_says_power_cap() {
    let mut full = one(SimProfile::rtx_3090(), 25.0);
    let mut capped = one(SimProfile::rtx_3090(), 25.0);
    capped.set_power_limit(0, 200).unwrap();
    let a = *run(&mut full, 0, 900, true).last().unwrap();
    let b = *run(&mut capped, 0, 900, true).last().unwrap();
    assert_eq!((b.power_w, b.power_limit_w), (200.0, 200.0));
    assert!(
        b.sm_mhz < a.sm_mhz && b.core_c < a.core_c - 10.0,
        "{a:?} {b:?}"
    );
    assert!(b.throttle.contains(Throttle::POWER_CAP));
    assert!(capped.throughput(0).unwrap() < full.throughput(0).unwrap());
}

#[test]
fn set_power_limit_outside_the_range_is_refused() {
    let mut gpu = one(SimProfile::rtx_3090(), 25.0);
    for w in [99, 401, 0] {
        match gpu.set_power_limit(0, w) {
            Err(GpuError::PowerLimit { index: 0, source }) => {
                assert_eq!((source.min, source.max, source.watts), (100, 400, w));
            }
            other => panic!("{w} W: {other:?}"),
        }
    }
    let r = gpu.read(0, 0, true).unwrap();
    assert_eq!(r.power_limit_w, 350.0, "a refused limit changes nothing");
    gpu.set_power_limit(0, 100).unwrap();
    gpu.set_power_limit(0, 400).unwrap();
    assert!(matches!(
        gpu.set_power_limit(1, 300),
        Err(GpuError::NoSuchCard(1))
    ));
}

#[test]
fn fan_speed_is_set_checked_and_given_back() {
    let mut gpu = one(SimProfile::rtx_3060(), 25.0);
    gpu.set_fan(0, Some(90.0)).unwrap();
    assert_eq!(gpu.read(0, 0, false).unwrap().fan_pct, 90.0);
    assert!(matches!(
        gpu.set_fan(0, Some(101.0)),
        Err(GpuError::FanOutOfRange { .. })
    ));
    gpu.set_fan(0, None).unwrap();
    assert_eq!(gpu.read(0, 0, false).unwrap().fan_pct, 50.0);

    let mut passive = SimProfile::rtx_3060();
    passive.model.fan_control = false;
    let mut gpu = one(passive, 25.0);
    assert!(matches!(
        gpu.set_fan(0, Some(80.0)),
        Err(GpuError::NoFanControl(0))
    ));
}

#[test]
fn more_fan_cools_the_card() {
    let mut slow = one(SimProfile::rtx_3090(), 25.0);
    let mut fast = one(SimProfile::rtx_3090(), 25.0);
    fast.set_fan(0, Some(100.0)).unwrap();
    let a = *run(&mut slow, 0, 1800, true).last().unwrap();
    let b = *run(&mut fast, 0, 1800, true).last().unwrap();
    assert!(b.core_c < a.core_c - 5.0, "{} vs {}", a.core_c, b.core_c);
}

#[test]
fn gddr6x_memory_runs_hotter_than_the_core_more_so_at_higher_power() {
    let mut gpu = one(SimProfile::rtx_3090(), 25.0);
    let idle = gpu.read(0, 0, false).unwrap();
    let busy = gpu.read(0, 0, true).unwrap();
    let idle_gap = idle.mem_c.unwrap() - idle.core_c;
    let busy_gap = busy.mem_c.unwrap() - busy.core_c;
    assert!(
        idle_gap > 0.0 && busy_gap > idle_gap + 20.0,
        "{idle_gap} {busy_gap}"
    );
    let mut no_mem = one(SimProfile::rtx_3060(), 25.0);
    assert_eq!(no_mem.read(0, 0, true).unwrap().mem_c, None);
}

#[test]
fn a_hot_card_slows_itself_down_and_says_why() {
    let mut gpu = one(SimProfile::gtx_1080_ti_blower(), 40.0);
    gpu.set_fan(0, Some(20.0)).unwrap();
    let readings = run(&mut gpu, 0, 900, true);
    let slowdown = SimProfile::gtx_1080_ti_blower().model.slowdown_c;
    let sw = readings
        .iter()
        .find(|r| r.throttle.contains(Throttle::SW_THERMAL))
        .unwrap();
    assert!(sw.core_c > 84.0 && sw.power_w < 250.0, "{sw:?}");
    let hw = readings
        .iter()
        .find(|r| r.throttle.contains(Throttle::HW_THERMAL))
        .unwrap();
    assert!(hw.core_c >= slowdown - 1.0 && hw.power_w <= 130.0, "{hw:?}");
    let peak = readings.iter().map(|r| r.core_c).fold(0.0, f32::max);
    assert!(
        peak < slowdown + 2.0,
        "the card's own protection holds: {peak}"
    );
    assert!(gpu.take_xid_events(0).unwrap().is_empty());
}

#[test]
fn fallen_off_the_bus_fails_reads_and_settings_and_reports_xid_79_once() {
    let mut gpu = SimGpu::new(&rig(), 2);
    gpu.read(0, 1000, true).unwrap();
    gpu.inject(0, SimFault::FallenOffBus).unwrap();
    assert!(matches!(
        gpu.read(0, 2000, true),
        Err(GpuError::FallenOffBus(0))
    ));
    assert!(matches!(
        gpu.set_power_limit(0, 300),
        Err(GpuError::FallenOffBus(0))
    ));
    assert!(matches!(
        gpu.set_fan(0, None),
        Err(GpuError::FallenOffBus(0))
    ));
    assert!(gpu.throughput(0).is_err());
    assert_eq!(gpu.take_xid_events(0).unwrap(), vec![XID_FALLEN_OFF_BUS]);
    assert!(gpu.take_xid_events(0).unwrap().is_empty());
    assert!(gpu.read(1, 2000, true).is_ok(), "the other card is fine");
    assert!(gpu.model_core_c(0).unwrap() < 60.0);
    gpu.clear_faults(0).unwrap();
    assert!(gpu.read(0, 3000, false).is_ok());
}

#[test]
fn lost_telemetry_recovers_after_its_duration() {
    let mut gpu = one(SimProfile::rtx_3090(), 25.0);
    gpu.read(0, 10_000, true).unwrap();
    gpu.inject(0, SimFault::LostTelemetry { for_ms: 5_000 })
        .unwrap();
    for t in [10_000, 12_000, 14_999] {
        assert!(
            matches!(gpu.read(0, t, true), Err(GpuError::TelemetryLost(0))),
            "{t}"
        );
    }
    let r = gpu.read(0, 15_000, true).unwrap();
    assert_eq!(r.at_ms, 15_000);
    assert!(
        r.core_c > 30.0,
        "the card kept heating meanwhile: {}",
        r.core_c
    );
    gpu.set_power_limit(0, 200).unwrap();
}

#[test]
fn worker_faults_wait_for_the_worker_and_are_taken_once() {
    let mut gpu = SimGpu::new(&rig(), 2);
    assert_eq!(gpu.pending_worker_fault(0), None);
    for (fault, want) in [
        (SimFault::StickyError, WorkerFault::StickyError),
        (SimFault::Hang, WorkerFault::Hang),
        (SimFault::WrongResult, WorkerFault::WrongResult),
        (SimFault::Crash, WorkerFault::Crash),
    ] {
        gpu.inject(1, fault).unwrap();
        assert_eq!(gpu.pending_worker_fault(1), Some(want));
        assert_eq!(gpu.take_worker_fault(1), Some(want));
        assert_eq!(gpu.take_worker_fault(1), None);
        let xids = gpu.take_xid_events(1).unwrap();
        if want == WorkerFault::StickyError {
            assert_eq!(
                xids,
                vec![XID_GRAPHICS_ENGINE_EXCEPTION],
                "a kernel fault is Xid 13"
            );
        } else {
            assert!(xids.is_empty(), "{want:?} reports no Xid");
        }
    }
    assert_eq!(gpu.pending_worker_fault(0), None);
    assert!(
        gpu.read(1, 0, true).is_ok(),
        "worker faults leave telemetry alone"
    );
    assert!(gpu.inject(5, SimFault::Crash).is_err());
}

#[test]
fn a_slow_card_reports_lower_clocks_and_throughput() {
    let mut gpu = SimGpu::new(&rig(), 1);
    let before = gpu.read(0, 0, true).unwrap();
    gpu.inject(0, SimFault::Slow { factor: 4.0 }).unwrap();
    let after = gpu.read(0, 0, true).unwrap();
    assert_eq!(after.sm_mhz, before.sm_mhz / 4);
    assert!((gpu.throughput(0).unwrap() - 0.25 * f64::from(before.sm_mhz) / 1695.0).abs() < 0.01);
}

#[test]
fn ambient_moves_the_card_temperature() {
    let mut gpu = one(SimProfile::rtx_3060(), 15.0);
    let cold = *run(&mut gpu, 0, 1200, true).last().unwrap();
    gpu.set_ambient(40.0);
    assert_eq!(gpu.ambient_c(), 40.0);
    let warm = *run(&mut gpu, 1_200_000, 1200, true).last().unwrap();
    assert!(
        (warm.core_c - cold.core_c - 25.0).abs() < 1.0,
        "{cold:?} {warm:?}"
    );
}

#[test]
fn a_card_past_its_shutdown_temperature_falls_off_the_bus() {
    let mut gpu = one(SimProfile::gtx_1080_ti_blower(), 100.0);
    gpu.read(0, 0, false).unwrap();
    gpu.advance(0, 600_000, false).unwrap();
    assert!(matches!(
        gpu.read(0, 601_000, false),
        Err(GpuError::FallenOffBus(0))
    ));
    assert_eq!(gpu.take_xid_events(0).unwrap(), vec![XID_FALLEN_OFF_BUS]);
}
