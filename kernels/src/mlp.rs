//! One-hidden-layer MLP: shape, parameters, CPU reference loss and gradient.
//!
//! The network is `logits = W2 · relu(W1 · x + b1) + b2` followed by softmax
//! cross-entropy. The CPU reference computes in `f64` with a fixed summation
//! order (features in index order, samples in batch order) and rounds results
//! to `f32` once, so it is deterministic on every machine.

use crate::error::{check_len, KernelError};
use crate::math;
use crate::rng::{derive_seed, SplitMix64};

/// Largest allowed MLP dimension (input, hidden or output).
pub const MLP_MAX_DIM: u32 = 4096;
/// Largest allowed MLP parameter count.
pub const MLP_MAX_PARAMS: u64 = 4_000_000;

/// Stream identifier for parameter initialisation in [`derive_seed`].
const STREAM_INIT: u64 = 0x4D4C_505F_494E_4954; // "MLP_INIT"

/// A one-hidden-layer MLP: `input -> hidden (ReLU) -> output logits`,
/// trained with softmax cross-entropy.
///
/// Parameters are one flat `f32` vector, in this order:
///
/// 1. `W1`: `hidden x input`, row-major (`W1[j][i]` at `j * input + i`);
/// 2. `b1`: `hidden`;
/// 3. `W2`: `output x hidden`, row-major (`W2[o][j]` at `w2_start + o * hidden + j`);
/// 4. `b2`: `output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpShape {
    /// Number of input features.
    pub input: u32,
    /// Number of hidden units.
    pub hidden: u32,
    /// Number of classes (output logits).
    pub output: u32,
}

impl MlpShape {
    /// Number of parameters: `hidden*input + hidden + output*hidden + output`
    /// (saturating at `usize::MAX` for absurd shapes).
    pub fn param_count(&self) -> usize {
        usize::try_from(self.param_count_u64()).unwrap_or(usize::MAX)
    }

    /// Parameter count in `u64`, saturating.
    fn param_count_u64(&self) -> u64 {
        let (i, h, o) = (
            u64::from(self.input),
            u64::from(self.hidden),
            u64::from(self.output),
        );
        (h * i)
            .saturating_add(h)
            .saturating_add(o * h)
            .saturating_add(o)
    }

    /// Checks the caps: each dimension in `1..=`[`MLP_MAX_DIM`] and at most
    /// [`MLP_MAX_PARAMS`] parameters.
    pub fn validate(&self) -> Result<(), KernelError> {
        for (what, value) in [
            ("input", self.input),
            ("hidden", self.hidden),
            ("output", self.output),
        ] {
            if !(1..=MLP_MAX_DIM).contains(&value) {
                return Err(KernelError::DimensionOutOfRange {
                    what,
                    value: u64::from(value),
                    min: 1,
                    max: u64::from(MLP_MAX_DIM),
                });
            }
        }
        let count = self.param_count_u64();
        if count > MLP_MAX_PARAMS {
            return Err(KernelError::TooManyParams {
                count,
                max: MLP_MAX_PARAMS,
            });
        }
        Ok(())
    }

    /// Estimated floating-point operations for one sample, forward plus
    /// backward, counting a multiply-add as 2:
    ///
    /// * forward: `2*input*hidden + 2*hidden*output`;
    /// * backward: `2*hidden*output` (W2 gradient) + `2*hidden*output`
    ///   (hidden gradient) + `2*input*hidden` (W1 gradient);
    ///
    /// so `4*input*hidden + 6*hidden*output` in total. Elementwise work
    /// (biases, ReLU, softmax) is not counted. Saturates at `u64::MAX`.
    pub fn flops_per_sample(&self) -> u64 {
        let (i, h, o) = (
            u64::from(self.input),
            u64::from(self.hidden),
            u64::from(self.output),
        );
        (i * h)
            .saturating_mul(4)
            .saturating_add((h * o).saturating_mul(6))
    }
}

/// Result of [`crate::Kernels::mlp_loss_grad`] over one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct LossGrad {
    /// Sum of the per-sample cross-entropy losses (natural log).
    pub loss_sum: f32,
    /// Sum of the per-sample gradients, in the parameter layout of [`MlpShape`].
    pub grad_sum: Vec<f32>,
    /// Number of samples summed over.
    pub samples: u32,
}

/// Deterministic initial parameters ("Xavier uniform").
///
/// `W1` entries are uniform in `±sqrt(6 / (input + hidden))`, `W2` entries
/// uniform in `±sqrt(6 / (hidden + output))`, biases zero. Values are drawn in
/// layout order from `SplitMix64::new(derive_seed(seed, 0x4D4C_505F_494E_4954, 0))` (ASCII
/// "MLP_INIT").
/// Returns an empty vector if the shape fails [`MlpShape::validate`].
pub fn mlp_init_params(shape: &MlpShape, seed: u64) -> Vec<f32> {
    let Ok(layout) = Layout::new(shape) else {
        return Vec::new();
    };
    let mut rng = SplitMix64::new(derive_seed(seed, STREAM_INIT, 0));
    let mut params = vec![0.0f32; layout.total];
    let bound1 = (6.0 / (layout.input + layout.hidden) as f64).sqrt();
    let bound2 = (6.0 / (layout.hidden + layout.output) as f64).sqrt();
    for p in &mut params[..layout.b1] {
        *p = (rng.next_symmetric() * bound1) as f32;
    }
    for p in &mut params[layout.w2..layout.b2] {
        *p = (rng.next_symmetric() * bound2) as f32;
    }
    params
}

/// Mean cross-entropy loss over a batch, for evaluation (no gradient).
///
/// Takes the same inputs as [`crate::Kernels::mlp_loss_grad`]; an empty
/// batch is [`KernelError::EmptyBatch`].
pub fn mlp_loss(
    shape: &MlpShape,
    params: &[f32],
    x: &[f32],
    y: &[u32],
) -> Result<f32, KernelError> {
    let layout = Layout::new(shape)?;
    let batch = layout.check_batch(params, x, y)?;
    if batch == 0 {
        return Err(KernelError::EmptyBatch);
    }
    let params: Vec<f64> = params.iter().map(|&p| f64::from(p)).collect();
    let loss_sum = layout.forward_backward(&params, x, y, None);
    Ok((loss_sum / f64::from(batch)) as f32)
}

/// One plain SGD step: `params[i] -= lr * grad_mean[i]`.
pub fn sgd_step(params: &mut [f32], grad_mean: &[f32], lr: f32) -> Result<(), KernelError> {
    check_len("grad_mean", params.len(), grad_mean.len())?;
    for (p, &g) in params.iter_mut().zip(grad_mean) {
        *p -= lr * g;
    }
    Ok(())
}

/// CPU reference for [`crate::Kernels::mlp_loss_grad`].
pub(crate) fn mlp_loss_grad_cpu(
    shape: &MlpShape,
    params: &[f32],
    x: &[f32],
    y: &[u32],
) -> Result<LossGrad, KernelError> {
    let layout = Layout::new(shape)?;
    let samples = layout.check_batch(params, x, y)?;
    let params: Vec<f64> = params.iter().map(|&p| f64::from(p)).collect();
    let mut grad = vec![0.0f64; layout.total];
    let loss_sum = layout.forward_backward(&params, x, y, Some(&mut grad));
    Ok(LossGrad {
        loss_sum: loss_sum as f32,
        grad_sum: grad.iter().map(|&g| g as f32).collect(),
        samples,
    })
}

/// Validated dimensions and parameter offsets of an [`MlpShape`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub(crate) input: usize,
    pub(crate) hidden: usize,
    pub(crate) output: usize,
    /// Offset of `b1` (`W1` starts at 0).
    pub(crate) b1: usize,
    /// Offset of `W2`.
    pub(crate) w2: usize,
    /// Offset of `b2`.
    pub(crate) b2: usize,
    /// Parameter count.
    pub(crate) total: usize,
}

impl Layout {
    /// Validates `shape` and computes the offsets of `W1` (0), `b1`, `W2`, `b2`.
    pub(crate) fn new(shape: &MlpShape) -> Result<Self, KernelError> {
        shape.validate()?;
        let (input, hidden, output) = (
            shape.input as usize,
            shape.hidden as usize,
            shape.output as usize,
        );
        let b1 = hidden * input;
        let w2 = b1 + hidden;
        let b2 = w2 + output * hidden;
        Ok(Self {
            input,
            hidden,
            output,
            b1,
            w2,
            b2,
            total: b2 + output,
        })
    }

    /// Checks buffer lengths and labels; returns the batch size.
    pub(crate) fn check_batch(
        &self,
        params: &[f32],
        x: &[f32],
        y: &[u32],
    ) -> Result<u32, KernelError> {
        check_len("params", self.total, params.len())?;
        let samples =
            u32::try_from(y.len()).map_err(|_| KernelError::BatchTooLarge { samples: y.len() })?;
        let x_len = y
            .len()
            .checked_mul(self.input)
            .ok_or(KernelError::BatchTooLarge { samples: y.len() })?;
        check_len("x", x_len, x.len())?;
        let classes = self.output as u32;
        if let Some((index, &label)) = y.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(KernelError::LabelOutOfRange {
                index,
                label,
                classes,
            });
        }
        Ok(samples)
    }

    /// Loss sum over the batch; adds the gradient sum into `grad` when given.
    /// Inputs must have passed [`Layout::check_batch`].
    pub(crate) fn forward_backward(
        &self,
        params: &[f64],
        x: &[f32],
        y: &[u32],
        mut grad: Option<&mut [f64]>,
    ) -> f64 {
        let (w1, rest) = params.split_at(self.b1);
        let (b1, rest) = rest.split_at(self.hidden);
        let (w2, b2) = rest.split_at(self.output * self.hidden);
        let mut act = vec![0.0f64; self.hidden];
        let mut logits = vec![0.0f64; self.output];
        let mut d_hidden = vec![0.0f64; self.hidden];
        let mut loss_sum = 0.0f64;
        for (xs, &label) in x.chunks_exact(self.input).zip(y) {
            for ((a, w_row), &b) in act.iter_mut().zip(w1.chunks_exact(self.input)).zip(b1) {
                let z = w_row
                    .iter()
                    .zip(xs)
                    .fold(b, |acc, (&w, &xi)| acc + w * f64::from(xi));
                *a = z.max(0.0);
            }
            for ((l, w_row), &b) in logits.iter_mut().zip(w2.chunks_exact(self.hidden)).zip(b2) {
                *l = w_row.iter().zip(&act).fold(b, |acc, (&w, &a)| acc + w * a);
            }
            let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l));
            let label = label as usize;
            let label_shifted = logits[label] - max;
            for l in &mut logits {
                *l = math::exp(*l - max);
            }
            let denom: f64 = logits.iter().fold(0.0, |s, &e| s + e);
            // loss = logsumexp(z) - z_label = ln(denom) - (z_label - max).
            loss_sum += math::ln(denom) - label_shifted;
            if let Some(grad) = grad.as_deref_mut() {
                // Softmax minus one-hot, reusing the logits buffer.
                for l in &mut logits {
                    *l /= denom;
                }
                logits[label] -= 1.0;
                self.backward(w2, xs, &act, &logits, &mut d_hidden, grad);
            }
        }
        loss_sum
    }

    /// Adds one sample's gradient into `grad`, given the hidden activations
    /// and the logit gradient `d_logits`.
    fn backward(
        &self,
        w2: &[f64],
        xs: &[f32],
        act: &[f64],
        d_logits: &[f64],
        d_hidden: &mut [f64],
        grad: &mut [f64],
    ) {
        let (g_w1, rest) = grad.split_at_mut(self.b1);
        let (g_b1, rest) = rest.split_at_mut(self.hidden);
        let (g_w2, g_b2) = rest.split_at_mut(self.output * self.hidden);
        d_hidden.fill(0.0);
        for (((&d, g_row), w_row), gb) in d_logits
            .iter()
            .zip(g_w2.chunks_exact_mut(self.hidden))
            .zip(w2.chunks_exact(self.hidden))
            .zip(g_b2.iter_mut())
        {
            *gb += d;
            for (((g, &a), &w), dh) in g_row
                .iter_mut()
                .zip(act)
                .zip(w_row)
                .zip(d_hidden.iter_mut())
            {
                *g += d * a;
                *dh += w * d;
            }
        }
        for (((&dh, &a), g_row), gb) in d_hidden
            .iter()
            .zip(act)
            .zip(g_w1.chunks_exact_mut(self.input))
            .zip(g_b1.iter_mut())
        {
            // ReLU passes the gradient only where the unit was active.
            if a > 0.0 {
                *gb += dh;
                for (g, &xi) in g_row.iter_mut().zip(xs) {
                    *g += dh * f64::from(xi);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "mlp_tests.rs"]
mod tests;
