//! Units of work as they travel from the coordinator to a rig, and what comes back.
//!
//! Input and output digests are SHA-256 over a defined byte layout (little-endian integers
//! and IEEE-754 bit patterns, a domain tag first), never over postcard bytes, so that any
//! language can recompute them.

use crate::digest::{sha256, Hash32};
use crate::ids::JobId;
use serde::{Deserialize, Serialize};

/// The most parameters an MLP unit may carry.
pub const MAX_PARAMS: usize = 4_000_000;
/// The most samples one MLP unit may cover.
pub const MAX_UNIT_SAMPLES: u32 = 1 << 20;
/// The largest GEMM dimension a unit may ask for.
pub const MAX_GEMM_DIM: u32 = 4096;

/// One unit of work, assigned to one rig.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkUnit {
    /// The job it belongs to.
    pub job: JobId,
    /// Unique within the job.
    pub unit: u64,
    /// Counts reassignments of the same unit; a receipt names the attempt it answers.
    pub attempt: u32,
    /// What to compute.
    pub kind: UnitKind,
}

/// What a unit computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UnitKind {
    /// Sum of loss and gradient of a one-hidden-layer MLP over a shard of a generated data set.
    MlpGrad {
        /// Input, hidden and output widths.
        shape: [u32; 3],
        /// Current parameters (layout defined by the kernels crate).
        params: Vec<f32>,
        /// Seed of the generated data set.
        data_seed: u64,
        /// Number of classes in the data set (equals the output width).
        data_classes: u32,
        /// Spread of the data set's clusters.
        data_spread: f32,
        /// First sample of the shard.
        start: u64,
        /// Samples in the shard.
        count: u32,
    },
    /// Int8 GEMM with i32 accumulation over matrices generated from a seed.
    GemmI8 {
        /// Seed the matrices are generated from.
        seed: u64,
        /// Rows of A and C.
        m: u32,
        /// Columns of B and C.
        n: u32,
        /// Columns of A, rows of B.
        k: u32,
    },
}

/// What a worker returns for a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UnitOutput {
    /// Result of [`UnitKind::MlpGrad`].
    MlpGrad {
        /// Sum of the per-sample loss.
        loss_sum: f32,
        /// Samples covered.
        samples: u32,
        /// Sum of the per-sample gradients.
        grad_sum: Vec<f32>,
    },
    /// Result of [`UnitKind::GemmI8`]: the digest of C (little-endian i32, row-major).
    GemmI8 {
        /// SHA-256 of C.
        c_digest: Hash32,
    },
}

impl UnitKind {
    /// Checks caps and internal consistency.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            UnitKind::MlpGrad {
                shape,
                params,
                data_classes,
                count,
                ..
            } => {
                if shape.contains(&0) || shape.iter().any(|d| *d > 4096) {
                    return Err(format!("MLP shape {shape:?} outside 1..=4096"));
                }
                if params.len() > MAX_PARAMS {
                    return Err(format!(
                        "{} parameters, over the cap of {MAX_PARAMS}",
                        params.len()
                    ));
                }
                if *data_classes != shape[2] {
                    return Err("data classes differ from the output width".into());
                }
                if *count == 0 || *count > MAX_UNIT_SAMPLES {
                    return Err(format!("{count} samples outside 1..={MAX_UNIT_SAMPLES}"));
                }
                Ok(())
            }
            UnitKind::GemmI8 { m, n, k, .. } => {
                if [m, n, k].iter().any(|d| **d == 0 || **d > MAX_GEMM_DIM) {
                    return Err(format!("GEMM {m}x{n}x{k} outside 1..={MAX_GEMM_DIM}"));
                }
                Ok(())
            }
        }
    }

    /// SHA-256 of the unit's input, in the layout documented on this module.
    pub fn input_digest(&self) -> Hash32 {
        match self {
            UnitKind::MlpGrad {
                shape,
                params,
                data_seed,
                data_classes,
                data_spread,
                start,
                count,
            } => {
                let mut buf = Vec::with_capacity(64 + params.len() * 4);
                buf.extend_from_slice(b"rigd/mlp-grad/in/v1");
                for d in shape {
                    buf.extend_from_slice(&d.to_le_bytes());
                }
                buf.extend_from_slice(&(params.len() as u64).to_le_bytes());
                for p in params {
                    buf.extend_from_slice(&p.to_bits().to_le_bytes());
                }
                buf.extend_from_slice(&data_seed.to_le_bytes());
                buf.extend_from_slice(&data_classes.to_le_bytes());
                buf.extend_from_slice(&data_spread.to_bits().to_le_bytes());
                buf.extend_from_slice(&start.to_le_bytes());
                buf.extend_from_slice(&count.to_le_bytes());
                sha256(&[&buf])
            }
            UnitKind::GemmI8 { seed, m, n, k } => sha256(&[
                b"rigd/gemm-i8/in/v1",
                &seed.to_le_bytes(),
                &m.to_le_bytes(),
                &n.to_le_bytes(),
                &k.to_le_bytes(),
            ]),
        }
    }

    /// A short name for logs and tables.
    pub fn name(&self) -> &'static str {
        match self {
            UnitKind::MlpGrad { .. } => "mlp-grad",
            UnitKind::GemmI8 { .. } => "gemm-i8",
        }
    }
}

impl UnitOutput {
    /// SHA-256 of the output, in the layout documented on this module.
    pub fn digest(&self) -> Hash32 {
        match self {
            UnitOutput::MlpGrad {
                loss_sum,
                samples,
                grad_sum,
            } => {
                let mut buf = Vec::with_capacity(48 + grad_sum.len() * 4);
                buf.extend_from_slice(b"rigd/mlp-grad/out/v1");
                buf.extend_from_slice(&loss_sum.to_bits().to_le_bytes());
                buf.extend_from_slice(&samples.to_le_bytes());
                buf.extend_from_slice(&(grad_sum.len() as u64).to_le_bytes());
                for g in grad_sum {
                    buf.extend_from_slice(&g.to_bits().to_le_bytes());
                }
                sha256(&[&buf])
            }
            UnitOutput::GemmI8 { c_digest } => sha256(&[b"rigd/gemm-i8/out/v1", c_digest]),
        }
    }

    /// Checks caps.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            UnitOutput::MlpGrad { grad_sum, .. } if grad_sum.len() > MAX_PARAMS => Err(format!(
                "{} gradient entries, over the cap of {MAX_PARAMS}",
                grad_sum.len()
            )),
            _ => Ok(()),
        }
    }
}

/// SHA-256 of a GEMM result matrix (little-endian i32, row-major), as carried in
/// [`UnitOutput::GemmI8`].
pub fn gemm_c_digest(c: &[i32]) -> Hash32 {
    let mut buf = Vec::with_capacity(c.len() * 4);
    for v in c {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    sha256(&[b"rigd/gemm-i8/c/v1", &buf])
}
