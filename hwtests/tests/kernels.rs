//! The PTX kernels on the GPU against the CPU reference: GEMM bit-exact, MLP
//! within the coordinator's tolerance, checked with the coordinator's own
//! verifier; and GEMM throughput, printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rigd_coordinator::verify::outputs_agree;
use rigd_hwtests::cuda_or_skip;
use rigd_kernels::{gemm_inputs, mlp_init_params, unit, CpuKernels, Kernels};
use rigd_protocol::{UnitKind, UnitOutput};
use std::time::{Duration, Instant};

/// The coordinator's default float tolerance.
const TOLERANCE: f32 = 1e-4;

/// First index where the GPU result differs from the CPU result.
fn first_difference(gpu: &[i32], cpu: &[i32]) -> Option<(usize, i32, i32)> {
    gpu.iter()
        .zip(cpu)
        .enumerate()
        .find(|(_, (g, c))| g != c)
        .map(|(i, (&g, &c))| (i, g, c))
}

#[test]
fn gemm_on_the_gpu_is_bit_exact_with_the_cpu_reference() {
    let Some(gpu) = cuda_or_skip("gemm_on_the_gpu_is_bit_exact_with_the_cpu_reference").unwrap()
    else {
        return;
    };
    // Tile edges (64), k not a multiple of 4 or 32, skinny and extreme shapes.
    let mut shapes = vec![
        (1, 1, 1),
        (1, 1, 0),
        (3, 5, 0),
        (64, 64, 32),
        (65, 63, 33),
        (7, 130, 5),
        (130, 7, 4),
        (100, 100, 101),
        (17, 200, 1),
        (4096, 3, 4096),
        (2, 4096, 4095),
        (257, 255, 1023),
    ];
    let mut rng = StdRng::seed_from_u64(1);
    shapes.extend((0..40).map(|_| {
        (
            rng.gen_range(1..600),
            rng.gen_range(1..600),
            rng.gen_range(0..700),
        )
    }));
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let (a, b) = gemm_inputs(i as u64, m, n, k);
        let mut want = vec![0i32; m * n];
        CpuKernels.gemm_i8(m, n, k, &a, &b, &mut want).unwrap();
        let mut got = vec![7i32; m * n];
        gpu.gemm_i8(m, n, k, &a, &b, &mut got).unwrap();
        assert_eq!(
            first_difference(&got, &want),
            None,
            "GEMM {m}x{n}x{k}: (index, gpu, cpu)"
        );
    }
    // Largest magnitudes at the largest k: every product is 2^14.
    let k = 4096;
    let (a, b) = (vec![i8::MIN; 2 * k], vec![i8::MIN; k * 3]);
    let mut got = vec![0i32; 6];
    gpu.gemm_i8(2, 3, k, &a, &b, &mut got).unwrap();
    assert_eq!(got, vec![16_384 * 4096; 6]);
    println!("GEMM: {} shapes bit-exact", shapes.len() + 1);
}

#[test]
fn gemm_units_computed_on_the_gpu_pass_verification() {
    let Some(gpu) = cuda_or_skip("gemm_units_computed_on_the_gpu_pass_verification").unwrap()
    else {
        return;
    };
    for (seed, m, n, k) in [(1, 64, 64, 64), (2, 300, 200, 129), (3, 1024, 512, 777)] {
        let kind = UnitKind::GemmI8 { seed, m, n, k };
        let want = unit::compute(&CpuKernels, &kind).unwrap();
        let got = unit::compute(&gpu, &kind).unwrap();
        assert!(
            outputs_agree(&want, &got, TOLERANCE),
            "GEMM unit {m}x{n}x{k}"
        );
    }
}

/// Largest `|gpu - cpu| / max(|cpu|, 1)` over the loss and gradient sums.
fn worst_scaled_error(want: &UnitOutput, got: &UnitOutput) -> f32 {
    match (want, got) {
        (
            UnitOutput::MlpGrad {
                loss_sum: wl,
                grad_sum: wg,
                ..
            },
            UnitOutput::MlpGrad {
                loss_sum: gl,
                grad_sum: gg,
                ..
            },
        ) => std::iter::once((wl, gl))
            .chain(wg.iter().zip(gg))
            .map(|(w, g)| (g - w).abs() / w.abs().max(1.0))
            .fold(0.0, f32::max),
        _ => f32::INFINITY,
    }
}

#[test]
fn mlp_units_computed_on_the_gpu_agree_within_tolerance() {
    let Some(gpu) = cuda_or_skip("mlp_units_computed_on_the_gpu_agree_within_tolerance").unwrap()
    else {
        return;
    };
    // The demo's shape, a wide model, a batch of two chunks (4096 samples
    // each for a 4096-wide input), then random shapes.
    let mut cases = vec![
        ([16, 32, 4], 128),
        ([784, 256, 10], 2048),
        ([4096, 8, 4], 5000),
        ([1, 1, 1], 3),
    ];
    let mut rng = StdRng::seed_from_u64(2);
    cases.extend((0..30).map(|_| {
        (
            [
                rng.gen_range(1..80),
                rng.gen_range(1..160),
                rng.gen_range(1..20),
            ],
            rng.gen_range(1..3000),
        )
    }));
    let mut worst = 0.0f32;
    for (i, &(shape, count)) in cases.iter().enumerate() {
        let mlp = rigd_kernels::MlpShape {
            input: shape[0],
            hidden: shape[1],
            output: shape[2],
        };
        // Initial parameters with non-zero biases, so every parameter matters.
        let params = mlp_init_params(&mlp, i as u64)
            .into_iter()
            .map(|p| p + rng.gen_range(-0.05..0.05))
            .collect();
        let kind = UnitKind::MlpGrad {
            shape,
            params,
            data_seed: 100 + i as u64,
            data_classes: shape[2],
            data_spread: 1.0,
            start: rng.gen_range(0..1_000_000),
            count,
        };
        let want = unit::compute(&CpuKernels, &kind).unwrap();
        let got = unit::compute(&gpu, &kind).unwrap();
        let err = worst_scaled_error(&want, &got);
        worst = worst.max(err);
        assert!(
            outputs_agree(&want, &got, TOLERANCE),
            "MLP {shape:?} x {count}: worst scaled error {err:e}"
        );
    }
    println!(
        "MLP: {} units agree, worst |gpu - cpu| / max(|cpu|, 1) = {worst:e}",
        cases.len()
    );
}

#[test]
fn gemm_throughput_is_printed() {
    let Some(gpu) = cuda_or_skip("gemm_throughput_is_printed").unwrap() else {
        return;
    };
    println!("GEMM throughput through Kernels::gemm_i8 (host copies included, best of 3):");
    println!(
        "{:>6} {:>6} {:>6} {:>10} {:>8}",
        "m", "n", "k", "ms", "TOPS"
    );
    for d in [1024, 2048, 4096] {
        let (a, b) = gemm_inputs(9, d, d, d);
        let mut c = vec![0i32; d * d];
        gpu.gemm_i8(d, d, d, &a, &b, &mut c).unwrap();
        let best = (0..3)
            .map(|_| {
                let start = Instant::now();
                gpu.gemm_i8(d, d, d, &a, &b, &mut c).unwrap();
                start.elapsed()
            })
            .min()
            .unwrap_or(Duration::MAX);
        let ops = 2.0 * (d as f64).powi(3);
        println!(
            "{d:>6} {d:>6} {d:>6} {:>10.3} {:>8.2}",
            best.as_secs_f64() * 1e3,
            ops / best.as_secs_f64() / 1e12
        );
    }
}
