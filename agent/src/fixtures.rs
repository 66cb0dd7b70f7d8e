//! Values the unit tests of several modules build: a small GEMM unit and its completion.

use crate::journal::Completion;
use rigd_protocol::{GpuUuid, JobId, UnitKind, UnitOutput, WorkUnit};

/// Unit `n` of job `job`: a 2x2x2 int8 GEMM seeded with `n`.
pub fn unit(n: u64) -> WorkUnit {
    WorkUnit {
        job: JobId::new("job").unwrap_or_else(|_| unreachable!()),
        unit: n,
        attempt: 0,
        kind: UnitKind::GemmI8 {
            seed: n,
            m: 2,
            n: 2,
            k: 2,
        },
    }
}

/// `u` computed on card `card`, its digest derived from the unit number.
pub fn completion(u: &WorkUnit, card: &str) -> Completion {
    Completion {
        unit: u.clone(),
        card: GpuUuid::new(card).unwrap_or_else(|_| unreachable!()),
        output: UnitOutput::GemmI8 {
            c_digest: [u.unit as u8; 32],
        },
        work: 16,
        started_ms: 1,
        finished_ms: 2,
        governor_level: 0,
    }
}
