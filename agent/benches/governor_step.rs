//! Thermal governor figures, printed as a table: `cargo bench -p rigd --bench governor_step`.
//!
//! Each card profile idles for 300 s, then runs at full load for 1200 s under its governor
//! (1 s samples, the thermal model in 100 ms substeps). Reported: peak core temperature
//! (between samples too), overshoot over the target, settle time (from the step until the
//! core stays within ±1.5 C of its final value), final core, power limit and ladder level,
//! and the cost of one governor step.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd::governor::{Governor, ThermalLimits};
use rigd::gpu::sim_loop::SimLoop;
use rigd::gpu::{Reading, SimGpu, SimProfile, Throttle};
use rigd_protocol::RigId;
use std::hint::black_box;
use std::time::Instant;

struct Row {
    card: String,
    ambient_c: f32,
    target_c: f32,
    peak_c: f32,
    settle_s: usize,
    final_c: f32,
    final_cap_w: u32,
    default_w: u32,
    final_level: u8,
    peak_mem_c: Option<f32>,
}

fn step_response(profile: SimProfile, ambient_c: f32) -> Row {
    let target_c = ThermalLimits::for_model(&profile.model).target_c;
    let card = profile.model.name.clone();
    let default_w = profile.model.power_default_w;
    let rig = RigId::new("bench").unwrap();
    let mut sim = SimLoop::new(SimGpu::with_profiles(&rig, &[profile], ambient_c)).unwrap();
    sim.run(300);
    sim.set_load(true);
    let samples = sim.run(1200);
    let last = *samples.last().unwrap();
    let settle_s = samples
        .iter()
        .rposition(|s| (s.core_c - last.core_c).abs() > 1.5)
        .map_or(0, |i| i + 1);
    Row {
        card,
        ambient_c,
        target_c,
        peak_c: samples
            .iter()
            .map(|s| s.peak_core_c)
            .fold(f32::MIN, f32::max),
        settle_s,
        final_c: last.core_c,
        final_cap_w: last.decision.power_limit_w.unwrap_or(default_w),
        default_w,
        final_level: last.decision.level,
        peak_mem_c: samples
            .iter()
            .filter_map(|s| s.reading?.mem_c)
            .reduce(f32::max),
    }
}

fn ns_per_step() -> f64 {
    let model = SimProfile::rtx_3090().model;
    let mut g = Governor::new(ThermalLimits::for_model(&model), &model);
    let n = 2_000_000u64;
    let start = Instant::now();
    for i in 0..n {
        let r = Reading {
            at_ms: i * 1000,
            core_c: 70.0 + (i % 20) as f32,
            mem_c: Some(95.0 + (i % 10) as f32),
            power_w: 300.0,
            power_limit_w: 350.0,
            fan_pct: 60.0,
            util_pct: 100.0,
            sm_mhz: 1695,
            throttle: Throttle::NONE,
            fb_used_mib: 300,
            xid: None,
        };
        black_box(g.step(i * 1000, Some(black_box(&r))));
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let rows = [
        step_response(SimProfile::rtx_3090(), 30.0),
        step_response(SimProfile::rtx_3060(), 30.0),
        step_response(SimProfile::gtx_1080_ti_blower(), 30.0),
        step_response(SimProfile::gtx_1080_ti_blower(), 35.0),
    ];
    println!("Step response, idle -> full load, 1 s samples:");
    println!();
    println!("| card | ambient | target | peak core | overshoot | settle | final core | final power cap | level | peak memory |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let overshoot = r.peak_c - r.target_c;
        let overshoot = if overshoot > 0.0 {
            format!("{overshoot:.1} C")
        } else {
            format!("none ({:.1} C below)", -overshoot)
        };
        let mem = r
            .peak_mem_c
            .map_or("not reported".into(), |m| format!("{m:.1} C"));
        println!(
            "| {} | {:.0} C | {:.0} C | {:.1} C | {overshoot} | {} s | {:.1} C | {} W of {} W | L{} | {mem} |",
            r.card, r.ambient_c, r.target_c, r.peak_c, r.settle_s, r.final_c, r.final_cap_w, r.default_w, r.final_level
        );
    }
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| one governor step | {:.0} ns |", ns_per_step());
}
