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
//! [`CpuKernels`] is the reference backend. Everything that feeds it
//! (matrices, data sets, initial parameters) is generated from a seed by the
//! crate's own [`SplitMix64`] generator and transcendental functions written
//! with basic IEEE operations only, so results are identical on every
//! x86_64 machine.

mod cpu;
mod data;
mod error;
mod gemm;
mod math;
mod mlp;
pub mod rng;

pub use cpu::CpuKernels;
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
