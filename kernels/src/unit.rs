//! Units of work as the wire defines them, computed with the CPU reference kernels: what a
//! sim card's worker runs and what the coordinator recomputes to check a result.

use crate::{gemm_flops, gemm_inputs, BlobSpec, KernelError, Kernels, MlpShape};
use rigd_protocol::units::gemm_c_digest;
use rigd_protocol::{UnitKind, UnitOutput};

fn mlp_shape(shape: &[u32; 3]) -> MlpShape {
    MlpShape {
        input: shape[0],
        hidden: shape[1],
        output: shape[2],
    }
}

/// The work a unit amounts to, in FLOPs, as receipts state it and the coordinator prices it.
pub fn work(kind: &UnitKind) -> u64 {
    match kind {
        UnitKind::MlpGrad { shape, count, .. } => mlp_shape(shape)
            .flops_per_sample()
            .saturating_mul(u64::from(*count)),
        UnitKind::GemmI8 { m, n, k, .. } => gemm_flops(*m as usize, *n as usize, *k as usize),
    }
}

/// Computes a unit with `kernels`.
pub fn compute(kernels: &impl Kernels, kind: &UnitKind) -> Result<UnitOutput, KernelError> {
    match kind {
        UnitKind::MlpGrad {
            shape,
            params,
            data_seed,
            data_classes,
            data_spread,
            start,
            count,
        } => {
            let data = BlobSpec {
                seed: *data_seed,
                input: shape[0],
                classes: *data_classes,
                spread: *data_spread,
            };
            let (x, y) = data.samples(*start, *count);
            let out = kernels.mlp_loss_grad(&mlp_shape(shape), params, &x, &y)?;
            Ok(UnitOutput::MlpGrad {
                loss_sum: out.loss_sum,
                samples: out.samples,
                grad_sum: out.grad_sum,
            })
        }
        UnitKind::GemmI8 { seed, m, n, k } => {
            let (m, n, k) = (*m as usize, *n as usize, *k as usize);
            let (a, b) = gemm_inputs(*seed, m, n, k);
            let mut c = vec![0i32; m * n];
            kernels.gemm_i8(m, n, k, &a, &b, &mut c)?;
            Ok(UnitOutput::GemmI8 {
                c_digest: gemm_c_digest(&c),
            })
        }
    }
}
