//! Compute kernels for rigd work units.
//!
//! Two kinds of work are supported:
//!
//! * **int8 GEMM** ([`Kernels::gemm_i8`]): row-major `i8 x i8 -> i32`
//!   matrix multiply. Integer arithmetic makes every backend bit-exact.
//! * **MLP training** ([`Kernels::mlp_loss_grad`]): loss and gradient sums
//!   of a one-hidden-layer ReLU network over a shard of a generated data set
//!   ([`BlobSpec`]), combined by the caller with [`sgd_step`].
//!
//! [`CpuKernels`] is the reference backend; with the `cuda` feature,
//! `CudaKernels` runs the same kernels from the committed PTX on an NVIDIA
//! GPU. Everything that feeds it
//! (matrices, data sets, initial parameters) is generated from a seed by the
//! crate's own [`SplitMix64`] generator and transcendental functions written
//! with basic IEEE operations only, so results are identical on every
//! x86_64 machine.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod data;
mod error;
mod gemm;
mod math;
mod mlp;
pub mod rng;
pub mod unit;

pub use cpu::CpuKernels;
#[cfg(feature = "cuda")]
pub use cuda::{driver_present, CudaKernels};
pub use data::BlobSpec;
pub use error::KernelError;
pub use gemm::{gemm_flops, gemm_inputs, GEMM_MAX_DIM};
pub use mlp::{
    mlp_init_params, mlp_loss, sgd_step, LossGrad, MlpShape, MLP_MAX_DIM, MLP_MAX_PARAMS,
};
pub use rng::SplitMix64;

/// One kernel interface shared by the CPU reference and the CUDA backend.
pub trait Kernels {
    /// Row-major int8 GEMM with i32 accumulation: `c (m x n) = a (m x k) * b (k x n)`.
    ///
    /// Bit-exact on every backend. Each dimension must be at most
    /// [`GEMM_MAX_DIM`] (zero is allowed and yields an empty or all-zero
    /// result); `a`, `b` and `c` must have exactly `m*k`, `k*n` and `m*n`
    /// elements. `c` is overwritten.
    fn gemm_i8(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[i8],
        b: &[i8],
        c: &mut [i32],
    ) -> Result<(), KernelError>;

    /// Sum over the batch of cross-entropy loss, and the sum of its gradient
    /// with respect to `params`.
    ///
    /// `params` uses the layout documented on [`MlpShape`]; `x` holds
    /// `batch * shape.input` features row-major and `y` holds `batch` labels,
    /// each below `shape.output`. An empty batch yields zero loss, a zero
    /// gradient and `samples == 0`.
    fn mlp_loss_grad(
        &self,
        shape: &MlpShape,
        params: &[f32],
        x: &[f32],
        y: &[u32],
    ) -> Result<LossGrad, KernelError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a over a byte stream.
    fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
        bytes.into_iter().fold(0xCBF2_9CE4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        })
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|f| f.to_le_bytes()).collect()
    }

    /// Pinned digests of generated inputs and kernel outputs. Any change here
    /// means results differ from other machines or earlier versions.
    #[test]
    fn generated_data_and_results_match_pinned_digests() -> Result<(), KernelError> {
        let (a, b) = gemm_inputs(1, 8, 8, 8);
        let mut c = vec![0i32; 64];
        CpuKernels.gemm_i8(8, 8, 8, &a, &b, &mut c)?;
        let gemm = fnv1a(c.iter().flat_map(|v| v.to_le_bytes()));

        let spec = BlobSpec {
            seed: 7,
            input: 16,
            classes: 4,
            spread: 1.0,
        };
        let (x, y) = spec.samples(0, 16);
        let data = fnv1a(
            f32_bytes(&x)
                .into_iter()
                .chain(y.iter().flat_map(|v| v.to_le_bytes())),
        );

        let shape = MlpShape {
            input: 16,
            hidden: 32,
            output: 4,
        };
        let params = mlp_init_params(&shape, 1);
        let init = fnv1a(f32_bytes(&params));
        let out = CpuKernels.mlp_loss_grad(&shape, &params, &x, &y)?;
        let grad = fnv1a(
            f32_bytes(&out.grad_sum)
                .into_iter()
                .chain(out.loss_sum.to_le_bytes()),
        );

        assert_eq!(gemm, 0x7791_4fd1_f44d_934b, "gemm output");
        assert_eq!(data, 0x840d_6b29_3f40_4a55, "blob samples");
        assert_eq!(init, 0x12f4_e55f_ccd5_8d4d, "initial parameters");
        assert_eq!(grad, 0x0d14_5316_35ba_e72f, "loss and gradient");
        Ok(())
    }
}
