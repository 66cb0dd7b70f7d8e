//! The CPU reference backend.

use crate::error::KernelError;
use crate::gemm::{check_gemm, gemm_i8_cpu};
use crate::mlp::{mlp_loss_grad_cpu, LossGrad, MlpShape};
use crate::Kernels;

/// CPU reference implementation of [`Kernels`]: single-threaded, with a
/// fixed evaluation order, so results are identical on every machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuKernels;

impl Kernels for CpuKernels {
    fn gemm_i8(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[i8],
        b: &[i8],
        c: &mut [i32],
    ) -> Result<(), KernelError> {
        check_gemm(m, n, k, a, b, c)?;
        gemm_i8_cpu(n, k, a, b, c);
        Ok(())
    }

    fn mlp_loss_grad(
        &self,
        shape: &MlpShape,
        params: &[f32],
        x: &[f32],
        y: &[u32],
    ) -> Result<LossGrad, KernelError> {
        mlp_loss_grad_cpu(shape, params, x, y)
    }
}
