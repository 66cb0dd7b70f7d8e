//! End-to-end: data-parallel SGD on generated blobs, as the coordinator runs it.

use rigd_kernels::{mlp_init_params, mlp_loss, sgd_step, BlobSpec, CpuKernels, Kernels, MlpShape};

const SHAPE: MlpShape = MlpShape {
    input: 16,
    hidden: 32,
    output: 4,
};
const SHARDS: u64 = 8;
const SHARD_SIZE: u32 = 128;

fn spec(spread: f32) -> BlobSpec {
    BlobSpec {
        seed: 7,
        input: 16,
        classes: 4,
        spread,
    }
}

/// Trains for `steps` steps and returns the eval loss before each step and after the last.
fn train(spec: &BlobSpec, lr: f32, steps: u64) -> Vec<f32> {
    let kernels = CpuKernels;
    let mut params = mlp_init_params(&SHAPE, 1);
    let (eval_x, eval_y) = spec.samples(1 << 40, 2048);
    let mut losses = Vec::new();
    for step in 0..steps {
        losses.push(mlp_loss(&SHAPE, &params, &eval_x, &eval_y).unwrap());
        let mut grad_sum = vec![0.0f32; params.len()];
        let mut samples = 0u32;
        for shard in 0..SHARDS {
            let start = (step * SHARDS + shard) * u64::from(SHARD_SIZE);
            let (x, y) = spec.samples(start, SHARD_SIZE);
            let out = kernels.mlp_loss_grad(&SHAPE, &params, &x, &y).unwrap();
            for (g, s) in grad_sum.iter_mut().zip(&out.grad_sum) {
                *g += s;
            }
            samples += out.samples;
        }
        let grad_mean: Vec<f32> = grad_sum.iter().map(|g| g / samples as f32).collect();
        sgd_step(&mut params, &grad_mean, lr).unwrap();
    }
    losses.push(mlp_loss(&SHAPE, &params, &eval_x, &eval_y).unwrap());
    losses
}

#[test]
fn tune() {
    for spread in [1.0f32, 1.5, 2.0, 2.5] {
        for lr in [0.2f32, 0.5, 1.0] {
            let l = train(&spec(spread), lr, 60);
            let cross = l.iter().position(|&v| v < 0.15);
            println!("spread {spread} lr {lr} start {:.3} cross {cross:?} end {:.4} l10 {:.3} l30 {:.3}", l[0], l[60], l[10], l[30]);
        }
    }
}
