//! Tests of the MLP reference.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::{BlobSpec, CpuKernels, Kernels};

const SHAPE: MlpShape = MlpShape {
    input: 5,
    hidden: 7,
    output: 3,
};

fn batch(count: u32) -> (Vec<f32>, Vec<u32>) {
    BlobSpec {
        seed: 3,
        input: SHAPE.input,
        classes: SHAPE.output,
        spread: 1.0,
    }
    .samples(0, count)
}

/// Initial parameters with non-zero biases, so every parameter matters.
fn params_f64() -> Vec<f64> {
    let mut rng = SplitMix64::new(99);
    mlp_init_params(&SHAPE, 5)
        .iter()
        .map(|&p| f64::from(p) + 0.1 * rng.next_symmetric())
        .collect()
}

#[test]
fn param_count_follows_the_documented_layout() {
    assert_eq!(SHAPE.param_count(), 7 * 5 + 7 + 3 * 7 + 3);
    let layout = Layout::new(&SHAPE).unwrap();
    assert_eq!(
        (layout.b1, layout.w2, layout.b2, layout.total),
        (35, 42, 63, 66)
    );
    let big = MlpShape {
        input: u32::MAX,
        hidden: u32::MAX,
        output: u32::MAX,
    };
    assert_eq!(big.param_count_u64(), u64::MAX);
}

#[test]
fn validate_enforces_dimension_and_parameter_caps() {
    assert_eq!(SHAPE.validate(), Ok(()));
    let zero = MlpShape { hidden: 0, ..SHAPE };
    assert!(matches!(
        zero.validate(),
        Err(KernelError::DimensionOutOfRange {
            what: "hidden",
            value: 0,
            ..
        })
    ));
    let wide = MlpShape {
        input: 4097,
        ..SHAPE
    };
    assert!(matches!(
        wide.validate(),
        Err(KernelError::DimensionOutOfRange { what: "input", .. })
    ));
    let heavy = MlpShape {
        input: 4096,
        hidden: 1000,
        output: 10,
    };
    assert!(matches!(
        heavy.validate(),
        Err(KernelError::TooManyParams { .. })
    ));
    let largest = MlpShape {
        input: 4096,
        hidden: 970,
        output: 10,
    };
    assert!(largest.param_count() <= 4_000_000);
    assert_eq!(largest.validate(), Ok(()));
}

#[test]
fn flops_per_sample_is_4ih_plus_6ho() {
    assert_eq!(SHAPE.flops_per_sample(), 4 * 5 * 7 + 6 * 7 * 3);
}

#[test]
fn init_params_are_deterministic_xavier_with_zero_biases() {
    let p = mlp_init_params(&SHAPE, 1);
    assert_eq!(p, mlp_init_params(&SHAPE, 1));
    assert_ne!(p, mlp_init_params(&SHAPE, 2));
    assert_eq!(p.len(), SHAPE.param_count());
    let bound1 = (6.0f32 / 12.0).sqrt();
    let bound2 = (6.0f32 / 10.0).sqrt();
    assert!(p[..35].iter().all(|w| w.abs() <= bound1));
    assert!(p[42..63].iter().all(|w| w.abs() <= bound2));
    assert!(p[35..42].iter().chain(&p[63..]).all(|&b| b == 0.0));
    assert!(mlp_init_params(&MlpShape { output: 0, ..SHAPE }, 1).is_empty());
}

#[test]
fn gradient_matches_central_finite_differences() {
    // Central differences in f64 with h = 1e-6 have truncation error ~h^2
    // and rounding error ~1e-16 / h, so agreement to 1e-6 (absolute, or
    // relative for large components) is a tight check.
    const H: f64 = 1e-6;
    const TOL: f64 = 1e-6;
    let layout = Layout::new(&SHAPE).unwrap();
    let (x, y) = batch(6);
    let params = params_f64();
    let mut grad = vec![0.0; layout.total];
    layout.forward_backward(&params, &x, &y, Some(&mut grad));
    let mut probe = params.clone();
    for i in 0..layout.total {
        probe[i] = params[i] + H;
        let up = layout.forward_backward(&probe, &x, &y, None);
        probe[i] = params[i] - H;
        let down = layout.forward_backward(&probe, &x, &y, None);
        probe[i] = params[i];
        let numeric = (up - down) / (2.0 * H);
        assert!(
            (numeric - grad[i]).abs() <= TOL * grad[i].abs().max(1.0),
            "parameter {i}: analytic {} numeric {numeric}",
            grad[i]
        );
    }
    assert!(grad.iter().any(|g| g.abs() > 1e-3));
}

#[test]
fn f32_interface_rounds_the_f64_reference_once() {
    let layout = Layout::new(&SHAPE).unwrap();
    let (x, y) = batch(20);
    let params: Vec<f32> = params_f64().iter().map(|&p| p as f32).collect();
    let wide: Vec<f64> = params.iter().map(|&p| f64::from(p)).collect();
    let mut grad = vec![0.0; layout.total];
    let loss = layout.forward_backward(&wide, &x, &y, Some(&mut grad));
    let out = CpuKernels.mlp_loss_grad(&SHAPE, &params, &x, &y).unwrap();
    assert_eq!(out.samples, 20);
    assert_eq!(out.loss_sum, loss as f32);
    let rounded: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
    assert_eq!(out.grad_sum, rounded);
    let mean = mlp_loss(&SHAPE, &params, &x, &y).unwrap();
    assert_eq!(mean, (loss / 20.0) as f32);
}

#[test]
fn loss_and_gradient_sums_add_across_shards() {
    let params = mlp_init_params(&SHAPE, 4);
    let (x, y) = batch(10);
    let whole = CpuKernels.mlp_loss_grad(&SHAPE, &params, &x, &y).unwrap();
    let first = CpuKernels
        .mlp_loss_grad(&SHAPE, &params, &x[..20], &y[..4])
        .unwrap();
    let second = CpuKernels
        .mlp_loss_grad(&SHAPE, &params, &x[20..], &y[4..])
        .unwrap();
    assert_eq!(first.samples + second.samples, whole.samples);
    assert!((first.loss_sum + second.loss_sum - whole.loss_sum).abs() < 1e-5);
    for ((a, b), w) in first
        .grad_sum
        .iter()
        .zip(&second.grad_sum)
        .zip(&whole.grad_sum)
    {
        assert!((a + b - w).abs() < 1e-5);
    }
}

#[test]
fn empty_batch_gives_zero_sums_but_no_mean() {
    let params = mlp_init_params(&SHAPE, 1);
    let out = CpuKernels.mlp_loss_grad(&SHAPE, &params, &[], &[]).unwrap();
    assert_eq!(out.samples, 0);
    assert_eq!(out.loss_sum, 0.0);
    assert!(out.grad_sum.iter().all(|&g| g == 0.0));
    assert_eq!(
        mlp_loss(&SHAPE, &params, &[], &[]),
        Err(KernelError::EmptyBatch)
    );
}

#[test]
fn mlp_shape_mismatches_are_errors_not_panics() {
    let params = mlp_init_params(&SHAPE, 1);
    let (x, y) = batch(4);
    let k = CpuKernels;
    assert!(matches!(
        k.mlp_loss_grad(&SHAPE, &params[1..], &x, &y),
        Err(KernelError::LengthMismatch { what: "params", .. })
    ));
    assert!(matches!(
        k.mlp_loss_grad(&SHAPE, &params, &x[1..], &y),
        Err(KernelError::LengthMismatch { what: "x", .. })
    ));
    assert!(matches!(
        k.mlp_loss_grad(&SHAPE, &params, &x, &y[..3]),
        Err(KernelError::LengthMismatch { what: "x", .. })
    ));
    assert_eq!(
        k.mlp_loss_grad(&SHAPE, &params, &x, &[0, 1, 3, 2]),
        Err(KernelError::LabelOutOfRange {
            index: 2,
            label: 3,
            classes: 3
        })
    );
    let bad = MlpShape { output: 0, ..SHAPE };
    assert!(matches!(
        k.mlp_loss_grad(&bad, &params, &x, &y),
        Err(KernelError::DimensionOutOfRange { .. })
    ));
    assert!(mlp_loss(&bad, &params, &x, &y).is_err());
}

#[test]
fn extreme_logits_give_finite_loss() {
    let shape = MlpShape {
        input: 1,
        hidden: 1,
        output: 2,
    };
    // W1 = 1, b1 = 0, W2 = [1000, -1000], b2 = 0: logits differ by 2000 * x.
    let params = [1.0, 0.0, 1000.0, -1000.0, 0.0, 0.0];
    let out = CpuKernels
        .mlp_loss_grad(&shape, &params, &[1.0], &[1])
        .unwrap();
    assert_eq!(out.loss_sum, 2000.0);
    assert!(out.grad_sum.iter().all(|g| g.is_finite()));
}

#[test]
fn sgd_step_moves_against_the_gradient() {
    let mut p = vec![1.0f32, -2.0, 0.5];
    sgd_step(&mut p, &[0.5, -1.0, 0.0], 0.1).unwrap();
    assert_eq!(p, vec![0.95, -1.9, 0.5]);
    assert_eq!(
        sgd_step(&mut p, &[0.0; 2], 0.1),
        Err(KernelError::LengthMismatch {
            what: "grad_mean",
            expected: 3,
            actual: 2
        })
    );
}
