//! Checks on receipt batches and results. Pure: no I/O.
//!
//! A batch is first authenticated as a whole ([`authenticate`]): the topic's rig is the
//! header's, and the protocol's verifier ([`rigd_protocol::verify::verify_batch`], the code
//! `rigctl receipts verify` and any owner use) accepts every receipt with the inclusion proof
//! it carries and the signature over `header.signing_digest()` with the rig's pinned key.
//! Then each receipt is checked against the unit as it was assigned ([`check_receipt`]), and a
//! sample
//! of results is recomputed on the CPU ([`recompute`], [`outputs_agree`]).
//!
//! # Float tolerance
//! MLP results agree when `samples` is equal and every float `got` (the loss sum and each
//! gradient sum) satisfies `|got - want| <= tol * max(|want|, 1)`: relative for values of
//! magnitude above 1, absolute `tol` below. NaN or infinity never agrees. GEMM results must
//! be bit-exact.

use crate::job::Expected;
use rigd_kernels::{CpuKernels, KernelError};
use rigd_protocol::verify::{verify_batch, BatchError};
use rigd_protocol::{PublicKey, Receipt, ReceiptBatch, RigId, UnitKind, UnitOutput};
use std::hash::{BuildHasher, Hash, Hasher};

/// Why a batch could not be attributed to its rig. Such a batch is dropped unrecorded:
/// recording it would let anyone use up a rig's sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The topic names another rig than the header.
    #[error("batch for rig {header} arrived on the topic of rig {topic}")]
    RigMismatch {
        /// Rig of the topic.
        topic: RigId,
        /// Rig of the header.
        header: RigId,
    },
    /// The protocol's verifier refused the batch (a receipt, its proof or the signature).
    #[error("{0}")]
    Batch(#[from] BatchError),
}

/// Why a receipt was refused; its text is what the ledger records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The receipt names another job.
    UnknownJob,
    /// The unit (or attempt) was never issued.
    NotAssigned,
    /// The unit already has an accepted result.
    AlreadyDone,
    /// The unit attempt is not leased to this rig (nor was until less than the grace ago).
    NotLeased,
    /// The input digest is not that of the unit as assigned.
    InputDigest,
    /// The output digest is not that of the output carried.
    OutputDigest,
    /// The work amount is not what the unit costs.
    Work,
    /// The output has the wrong kind, size, or non-finite values.
    MalformedOutput,
    /// Recomputation disagrees.
    ResultMismatch,
}

impl Rejection {
    /// Every rejection, for tools that explain their reasons.
    pub const ALL: [Rejection; 9] = [
        Rejection::UnknownJob,
        Rejection::NotAssigned,
        Rejection::AlreadyDone,
        Rejection::NotLeased,
        Rejection::InputDigest,
        Rejection::OutputDigest,
        Rejection::Work,
        Rejection::MalformedOutput,
        Rejection::ResultMismatch,
    ];

    /// Whether the receipt was refused before any check of its result: such receipts are
    /// recorded as runs of sequence numbers, not one by one (see `ledger::Refused`).
    pub fn before_checks(self) -> bool {
        matches!(
            self,
            Rejection::UnknownJob
                | Rejection::NotAssigned
                | Rejection::AlreadyDone
                | Rejection::NotLeased
        )
    }

    /// The reason as recorded.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::UnknownJob => "unknown job",
            Rejection::NotAssigned => "unit not assigned",
            Rejection::AlreadyDone => "unit already done",
            Rejection::NotLeased => "unit not leased to the rig",
            Rejection::InputDigest => "input digest mismatch",
            Rejection::OutputDigest => "output digest mismatch",
            Rejection::Work => "work mismatch",
            Rejection::MalformedOutput => "malformed output",
            Rejection::ResultMismatch => "result mismatch",
        }
    }
}

/// Authenticates a batch received on `topic_rig`'s topic with that rig's pinned `key`.
pub fn authenticate(
    topic_rig: &RigId,
    batch: &ReceiptBatch,
    key: &PublicKey,
) -> Result<(), AuthError> {
    let header = &batch.header;
    if &header.rig != topic_rig {
        return Err(AuthError::RigMismatch {
            topic: topic_rig.clone(),
            header: header.rig.clone(),
        });
    }
    verify_batch(batch, key)?;
    Ok(())
}

/// Checks a receipt against the unit as assigned: the output digest is the carried
/// output's, the input digest and the work are the unit's.
pub fn check_receipt(
    receipt: &Receipt,
    output: &UnitOutput,
    expected: &Expected,
) -> Result<(), Rejection> {
    if receipt.output_digest != output.digest() {
        return Err(Rejection::OutputDigest);
    }
    if receipt.input_digest != expected.input_digest {
        return Err(Rejection::InputDigest);
    }
    if receipt.work != expected.work {
        return Err(Rejection::Work);
    }
    Ok(())
}

/// Computes a unit's output with the CPU reference kernels.
pub fn recompute(kind: &UnitKind) -> Result<UnitOutput, KernelError> {
    rigd_kernels::unit::compute(&CpuKernels, kind)
}

fn close(got: f32, want: f32, tol: f32) -> bool {
    got.is_finite() && want.is_finite() && (got - want).abs() <= tol * want.abs().max(1.0)
}

/// Whether `got` agrees with the reference `want` (see the module docs for the tolerance).
pub fn outputs_agree(want: &UnitOutput, got: &UnitOutput, tol: f32) -> bool {
    match (want, got) {
        (UnitOutput::GemmI8 { c_digest: w }, UnitOutput::GemmI8 { c_digest: g }) => w == g,
        (
            UnitOutput::MlpGrad {
                loss_sum: wl,
                samples: ws,
                grad_sum: wg,
            },
            UnitOutput::MlpGrad {
                loss_sum: gl,
                samples: gs,
                grad_sum: gg,
            },
        ) => {
            ws == gs
                && wg.len() == gg.len()
                && close(*gl, *wl, tol)
                && wg.iter().zip(gg).all(|(w, g)| close(*g, *w, tol))
        }
        _ => false,
    }
}

/// Picks the results to recompute: a share `fraction` of receipts, chosen by a keyed hash of
/// `(rig, seq)` with a secret salt, so a rig cannot tell which of its results are checked.
#[derive(Debug, Clone)]
pub struct Sampler {
    salt: u64,
    fraction: f64,
}

impl Sampler {
    /// A sampler with a salt drawn from the process's random hasher keys.
    pub fn new(fraction: f64) -> Self {
        let salt = std::collections::hash_map::RandomState::new().hash_one(0x5a17_u64);
        Self::with_salt(fraction, salt)
    }

    /// A sampler with a given salt (tests).
    pub fn with_salt(fraction: f64, salt: u64) -> Self {
        Self { salt, fraction }
    }

    /// Whether the receipt `(rig, seq)` is recomputed.
    pub fn pick(&self, rig: &RigId, seq: u64) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.salt.hash(&mut h);
        rig.as_str().hash(&mut h);
        seq.hash(&mut h);
        let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        unit < self.fraction
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
