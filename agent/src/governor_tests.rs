#![allow(clippy::unwrap_used)]

use super::*;
use crate::gpu::sim_loop::{Sample, SimLoop};
use crate::gpu::{SimFault, SimGpu, SimProfile};
use proptest::prelude::*;
use rigd_protocol::RigId;

fn reading(at_ms: u64, core_c: f32, mem_c: Option<f32>) -> Reading {
    Reading {
        at_ms,
        core_c,
        mem_c,
        power_w: 300.0,
        power_limit_w: 350.0,
        fan_pct: 60.0,
        util_pct: 100.0,
        sm_mhz: 1695,
        throttle: Throttle::NONE,
        fb_used_mib: 300,
        xid: None,
    }
}

fn sim(profile: SimProfile, ambient_c: f32) -> SimLoop {
    let rig = RigId::new("r").unwrap();
    SimLoop::new(SimGpu::with_profiles(&rig, &[profile], ambient_c)).unwrap()
}

fn governor(profile: &SimProfile) -> Governor {
    Governor::new(ThermalLimits::for_model(&profile.model), &profile.model)
}

/// Idle for `idle_s`, then full load for `load_s`; the samples under load.
fn step_response(profile: SimProfile, ambient_c: f32, idle_s: usize, load_s: usize) -> Vec<Sample> {
    let mut sim = sim(profile, ambient_c);
    sim.run(idle_s);
    sim.set_load(true);
    sim.run(load_s)
}

/// Seconds from the step until the core stays within ±1.5 C of its final value.
fn settle_s(samples: &[Sample]) -> usize {
    let last = samples.last().unwrap().core_c;
    samples
        .iter()
        .rposition(|s| (s.core_c - last).abs() > 1.5)
        .map_or(0, |i| i + 1)
}

#[test]
fn default_limits_follow_the_card_model() {
    let l = ThermalLimits::for_model(&SimProfile::rtx_3090().model);
    assert_eq!(
        (l.target_c, l.critical_c, l.hysteresis_c),
        (78.0, 88.0, 12.0)
    );
    assert_eq!(
        (l.mem_limit_c, l.mem_critical_c),
        (Some(100.0), Some(108.0))
    );
    assert_eq!(
        (l.stale_after_ms, l.trips_to_quarantine, l.trip_window_ms),
        (3_000, 3, 600_000)
    );
    let l = ThermalLimits::for_model(&SimProfile::rtx_3060().model);
    assert_eq!((l.mem_limit_c, l.mem_critical_c), (None, None));
    let mut early = SimProfile::rtx_3060().model;
    early.slowdown_c = 85.0;
    let l = ThermalLimits::for_model(&early);
    assert_eq!((l.target_c, l.critical_c), (70.0, 80.0));
    for p in [
        SimProfile::rtx_3090(),
        SimProfile::rtx_3060(),
        SimProfile::gtx_1080_ti_blower(),
    ] {
        let d = ThermalLimits::for_model(&p.model);
        assert_eq!(
            ThermalLimits::with_overrides(&p.model, &ThermalOverrides::default()),
            Ok(d)
        );
    }
}

#[test]
fn overrides_come_from_a_thermal_table_and_unknown_fields_are_refused() {
    let o: ThermalOverrides =
        toml::from_str("target_c = 75.0\nhysteresis_c = 15.0\nmem_limit_c = 96.0\n").unwrap();
    let l = ThermalLimits::with_overrides(&SimProfile::rtx_3090().model, &o).unwrap();
    assert_eq!(
        (l.target_c, l.hysteresis_c, l.mem_limit_c),
        (75.0, 15.0, Some(96.0))
    );
    let l = ThermalLimits::with_overrides(&SimProfile::rtx_3060().model, &o).unwrap();
    assert_eq!(
        l.mem_limit_c, None,
        "memory limits are ignored where memory is not reported"
    );
    let err = toml::from_str::<ThermalOverrides>("target = 75.0\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `target`"), "{err}");
}

#[test]
fn unsafe_overrides_are_refused_naming_the_field() {
    let model = SimProfile::gtx_1080_ti_blower().model;
    let cases = [
        (
            ThermalOverrides {
                critical_c: Some(92.0),
                ..Default::default()
            },
            "critical_c",
        ),
        (
            ThermalOverrides {
                target_c: Some(85.0),
                ..Default::default()
            },
            "target_c",
        ),
        (
            ThermalOverrides {
                target_c: Some(f32::NAN),
                ..Default::default()
            },
            "target_c",
        ),
        (
            ThermalOverrides {
                hysteresis_c: Some(2.0),
                ..Default::default()
            },
            "hysteresis_c",
        ),
        (
            ThermalOverrides {
                stale_after_ms: Some(100),
                ..Default::default()
            },
            "stale_after_ms",
        ),
        (
            ThermalOverrides {
                trips_to_quarantine: Some(0),
                ..Default::default()
            },
            "trips_to_quarantine",
        ),
    ];
    for (o, field) in cases {
        let err = ThermalLimits::with_overrides(&model, &o).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().contains("GTX 1080 Ti"), "{err}");
    }
    let o = ThermalOverrides {
        mem_limit_c: Some(107.0),
        ..Default::default()
    };
    let err = ThermalLimits::with_overrides(&SimProfile::rtx_3090().model, &o).unwrap_err();
    assert_eq!(err.field, "mem_limit_c");
}

#[test]
fn a_cool_card_runs_at_level_0_with_its_own_fan_and_default_limit() {
    let p = SimProfile::rtx_3090();
    let mut g = governor(&p);
    let d = g.step(1_000, Some(&reading(1_000, 50.0, Some(70.0))));
    assert_eq!(
        d,
        Decision {
            level: 0,
            fan_pct: None,
            power_limit_w: Some(350),
            run: RunPermit::Run
        }
    );
}

#[test]
fn the_ladder_climbs_fan_then_power_cap_then_duty_cycle() {
    let p = SimProfile::rtx_3060();
    let mut g = governor(&p);
    let d = g.step(1_000, Some(&reading(1_000, 74.0, None)));
    assert_eq!(d.level, 1);
    assert!(
        d.fan_pct.unwrap() > 60.0 && d.fan_pct.unwrap() < 100.0,
        "{d:?}"
    );
    let mut t = 1_000;
    let mut levels = vec![];
    for _ in 0..120 {
        t += 1_000;
        let d = g.step(t, Some(&reading(t, 82.0, None)));
        levels.push(d.level);
        let cap = d.power_limit_w.unwrap();
        assert!((100..=170).contains(&cap), "{cap}");
        if d.level >= 2 {
            assert_eq!(d.fan_pct, Some(100.0));
        }
    }
    assert_eq!(levels[0], 2);
    assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{levels:?}");
    let d = g.step(t + 1_000, Some(&reading(t + 1_000, 82.0, None)));
    assert_eq!(d.power_limit_w, Some(100));
    assert!(
        matches!(d.run, RunPermit::DutyCycle { pause_ms } if pause_ms > 1_000 && pause_ms <= 30_000),
        "{d:?}"
    );
    for _ in 0..600 {
        t += 1_000;
        g.step(t, Some(&reading(t, 60.0, None)));
    }
    let d = g.step(t + 1_000, Some(&reading(t + 1_000, 60.0, None)));
    assert_eq!(
        d,
        Decision {
            level: 0,
            fan_pct: None,
            power_limit_w: Some(170),
            run: RunPermit::Run
        }
    );
}

#[test]
fn memory_over_its_limit_caps_power_while_the_core_is_cool() {
    let p = SimProfile::rtx_3090();
    let mut g = governor(&p);
    let mut t = 0;
    for _ in 0..5 {
        t += 1_000;
        let d = g.step(t, Some(&reading(t, 62.0, Some(104.0))));
        assert!(d.level >= 2, "{d:?}");
    }
    assert!(
        g.step(t, Some(&reading(t, 62.0, Some(104.0))))
            .power_limit_w
            .unwrap()
            < 350
    );
    let d = g.step(t + 1_000, Some(&reading(t + 1_000, 62.0, Some(109.0))));
    assert_eq!(
        d.run,
        RunPermit::Pause,
        "memory at its critical stops the card"
    );
}

#[test]
fn memory_limit_caps_a_sim_3090_whose_core_stays_cool() {
    let l = ThermalLimits::for_model(&SimProfile::rtx_3090().model);
    let samples = step_response(SimProfile::rtx_3090(), 40.0, 300, 900);
    assert!(
        samples.iter().all(|s| s.core_c < l.target_c - 2.0),
        "the core never needs the cap"
    );
    let last = samples.last().unwrap();
    let cap = last.decision.power_limit_w.unwrap();
    assert!(cap < 320, "memory alone capped the card to {cap} W");
    let mem_peak = samples
        .iter()
        .filter_map(|s| s.reading?.mem_c)
        .fold(0.0, f32::max);
    assert!(
        mem_peak < 102.0,
        "memory held near its 100 C limit, peaked at {mem_peak}"
    );
    assert!(samples.iter().all(|s| s.decision.run == RunPermit::Run));
}

#[test]
fn a_hot_card_stepped_to_full_load_holds_its_target_and_settles_within_60_s() {
    let p = SimProfile::gtx_1080_ti_blower();
    let target = ThermalLimits::for_model(&p.model).target_c;
    let samples = step_response(p, 35.0, 300, 900);
    let peak = samples.iter().map(|s| s.peak_core_c).fold(0.0, f32::max);
    assert!(peak <= target + 2.0, "peak {peak}");
    let settle = settle_s(&samples);
    assert!(settle <= 60, "settled after {settle} s");
    let last = samples.last().unwrap();
    assert!((last.core_c - target).abs() < 1.5, "{last:?}");
    assert!(
        last.decision.power_limit_w.unwrap() < 250,
        "capped: {:?}",
        last.decision
    );
    assert!(samples.iter().all(|s| s.decision.run == RunPermit::Run));
}

#[test]
fn critical_stops_work_within_a_second_and_resumes_only_after_the_hysteresis() {
    let p = SimProfile::gtx_1080_ti_blower();
    let l = ThermalLimits::for_model(&p.model);
    let mut sim = sim(p, 35.0);
    sim.set_load(true);
    sim.run(120);
    sim.gpu_mut().set_ambient(85.0);
    let samples = sim.run(600);
    assert!(
        samples.iter().any(|s| s.peak_core_c >= l.critical_c),
        "the room heat took the card to critical"
    );
    let longest = samples.iter().map(|s| s.critical_busy_ms).max().unwrap();
    assert!(longest <= 1_000, "busy for {longest} ms at critical");
    for s in samples
        .iter()
        .filter(|s| s.reading.is_some_and(|r| r.core_c >= l.critical_c))
    {
        assert!(
            matches!(s.decision.run, RunPermit::Pause | RunPermit::Quarantine),
            "{s:?}"
        );
        assert!(!s.busy_after);
    }
    assert_eq!(
        samples.last().unwrap().decision.level,
        4,
        "paused, not quarantined"
    );
    sim.gpu_mut().set_ambient(35.0);
    let samples = sim.run(600);
    let resumed = samples
        .iter()
        .position(|s| s.decision.run != RunPermit::Pause)
        .unwrap();
    assert!(resumed > 0, "still hot right after the room cooled");
    let core = samples[resumed].reading.unwrap().core_c;
    assert!(core <= l.critical_c - l.hysteresis_c, "resumed at {core}");
    assert!(samples[..resumed]
        .iter()
        .all(|s| !s.busy_after && s.decision.level == 4));
    assert!(
        samples[resumed..].iter().any(|s| s.busy_after),
        "work resumed"
    );
}

#[test]
fn lost_or_stale_telemetry_pauses_the_card() {
    let p = SimProfile::rtx_3060();
    let mut g = governor(&p);
    assert_eq!(g.step(1_000, None).run, RunPermit::Pause);
    assert_eq!(g.step(1_000, None).level, 4);
    assert_eq!(
        g.step(2_000, Some(&reading(2_000, 50.0, None))).run,
        RunPermit::Run
    );
    let stale = reading(2_000, 50.0, None);
    let d = g.step(5_001, Some(&stale));
    assert_eq!((d.run, d.fan_pct), (RunPermit::Pause, Some(100.0)));
    assert_eq!(
        g.step(6_000, Some(&reading(6_000, 50.0, None))).run,
        RunPermit::Run
    );
    assert_eq!(g.step(7_000, None).run, RunPermit::Pause);
    let d = g.step(8_000, Some(&reading(8_000, 80.0, None)));
    assert_eq!(
        d.run,
        RunPermit::Pause,
        "missing telemetry counts as hot: resume needs the hysteresis"
    );

    let p = SimProfile::rtx_3090();
    let mut g = governor(&p);
    let d = g.step(1_000, Some(&reading(1_000, 50.0, None)));
    assert_eq!(
        d.run,
        RunPermit::Pause,
        "a card that reports memory but did not"
    );
}

#[test]
fn a_sim_card_that_loses_telemetry_is_paused_until_it_answers() {
    let mut sim = sim(SimProfile::rtx_3060(), 25.0);
    sim.set_load(true);
    sim.run(60);
    sim.gpu_mut()
        .inject(0, SimFault::LostTelemetry { for_ms: 10_000 })
        .unwrap();
    let samples = sim.run(30);
    assert!(samples[..9]
        .iter()
        .all(|s| s.reading.is_none() && s.decision.run == RunPermit::Pause && !s.busy_after));
    let back = samples
        .iter()
        .position(|s| s.decision.run == RunPermit::Run)
        .unwrap();
    assert!((9..12).contains(&back), "resumed at {back}");
    assert!(samples[back].busy_after);
}

#[test]
fn repeated_critical_trips_quarantine_the_card() {
    let p = SimProfile::rtx_3060();
    let mut g = governor(&p);
    let mut t = 0;
    let cycle = |g: &mut Governor, t: &mut u64| {
        *t += 1_000;
        let hot = g.step(*t, Some(&reading(*t, 90.0, None)));
        *t += 60_000;
        let cool = g.step(*t, Some(&reading(*t, 60.0, None)));
        (hot, cool)
    };
    for _ in 0..2 {
        let (hot, cool) = cycle(&mut g, &mut t);
        assert_eq!((hot.level, hot.run), (4, RunPermit::Pause));
        assert_eq!(cool.run, RunPermit::Run);
    }
    let (hot, cool) = cycle(&mut g, &mut t);
    assert_eq!((hot.level, hot.run), (5, RunPermit::Quarantine));
    assert_eq!(
        (cool.level, cool.run),
        (5, RunPermit::Quarantine),
        "quarantine stays"
    );
    assert_eq!(cool.fan_pct, Some(100.0));
    g.release();
    assert_eq!(
        g.step(t + 1_000, Some(&reading(t + 1_000, 80.0, None))).run,
        RunPermit::Pause
    );
    assert_eq!(
        g.step(t + 2_000, Some(&reading(t + 2_000, 70.0, None))).run,
        RunPermit::Run
    );
}

#[test]
fn trips_spread_wider_than_the_window_do_not_quarantine() {
    let p = SimProfile::rtx_3060();
    let mut g = governor(&p);
    let mut t = 0;
    for _ in 0..10 {
        t += 301_000;
        assert_eq!(g.step(t, Some(&reading(t, 90.0, None))).level, 4);
        t += 1_000;
        assert_eq!(g.step(t, Some(&reading(t, 60.0, None))).run, RunPermit::Run);
    }
}

#[test]
fn hardware_slowdown_counts_as_critical() {
    let p = SimProfile::rtx_3060();
    let mut g = governor(&p);
    let mut r = reading(1_000, 70.0, None);
    r.throttle = Throttle::HW_THERMAL | Throttle::POWER_CAP;
    assert_eq!(g.step(1_000, Some(&r)).run, RunPermit::Pause);
}

#[test]
fn a_card_without_fan_or_power_control_goes_straight_to_duty_cycle() {
    let mut model = SimProfile::rtx_3060().model;
    model.fan_control = false;
    model.power_min_w = model.power_default_w;
    let mut g = Governor::new(ThermalLimits::for_model(&model), &model);
    let d = g.step(1_000, Some(&reading(1_000, 81.0, None)));
    assert_eq!((d.fan_pct, d.power_limit_w), (None, None));
    assert!(matches!(d.run, RunPermit::DutyCycle { .. }), "{d:?}");
}

fn profile(i: usize) -> SimProfile {
    match i {
        0 => SimProfile::rtx_3090(),
        1 => SimProfile::rtx_3060(),
        _ => SimProfile::gtx_1080_ti_blower(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_core_never_stays_over_critical_under_random_load_and_ambient(
        card in 0usize..3,
        ambient in 15.0f32..45.0,
        later_ambient in 15.0f32..45.0,
        ambient_change_s in 0usize..1200,
        mut toggles in proptest::collection::vec(0usize..1200, 0..10),
    ) {
        let p = profile(card);
        let limits = ThermalLimits::for_model(&p.model);
        let power_range = p.model.power_min_w..=p.model.power_default_w;
        let mut sim = sim(p, ambient);
        toggles.sort_unstable();
        let mut load = true;
        sim.set_load(load);
        let mut over = 0;
        for s in 0..1200 {
            if toggles.binary_search(&s).is_ok() {
                load = !load;
                sim.set_load(load);
            }
            if s == ambient_change_s {
                sim.gpu_mut().set_ambient(later_ambient);
            }
            let sample = sim.tick();
            if sample.core_c > limits.critical_c + 2.0 {
                over += 1;
            }
            prop_assert!(sample.critical_busy_ms <= 1_000, "busy {} ms at critical", sample.critical_busy_ms);
            prop_assert!(sample.decision.level <= 5);
            if let Some(w) = sample.decision.power_limit_w {
                prop_assert!(power_range.contains(&w), "{w}");
            }
        }
        prop_assert!(over <= 1, "{over} samples over critical + 2 C");
        prop_assert_eq!(sim.actuation_errors(), 0);
    }

    #[test]
    fn the_power_limit_stays_within_the_card_range_for_any_readings(
        steps in proptest::collection::vec((20.0f32..110.0, 40.0f32..120.0, 0u64..5_000, any::<bool>()), 1..200),
    ) {
        let p = SimProfile::rtx_3090();
        let mut g = governor(&p);
        let mut t = 0;
        for (core, mem, gap, missing) in steps {
            t += gap;
            let r = reading(t, core, Some(mem));
            let d = g.step(t, (!missing).then_some(&r));
            let cap = d.power_limit_w.unwrap();
            prop_assert!((100..=350).contains(&cap), "{cap}");
            prop_assert!(d.fan_pct.is_none_or(|f| (0.0..=100.0).contains(&f)));
            prop_assert!(d.level <= 5);
        }
    }
}
