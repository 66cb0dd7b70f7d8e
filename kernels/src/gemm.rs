//! int8 GEMM: shared validation, input generation and the CPU reference.

use crate::error::{check_len, KernelError};
use crate::rng::{derive_seed, SplitMix64};

/// Largest allowed GEMM dimension.
///
/// With `|a|, |b| <= 128` each product is at most `2^14`, so a dot product of
/// length `k <= 4096` stays below `2^26`, far from `i32` overflow (which
/// would first become possible around `k = 131_072`).
pub const GEMM_MAX_DIM: usize = 4096;

/// Stream identifier for matrix A in [`derive_seed`].
const STREAM_A: u64 = 0x4745_4D4D_5F41; // "GEMM_A"
/// Stream identifier for matrix B in [`derive_seed`].
const STREAM_B: u64 = 0x4745_4D4D_5F42; // "GEMM_B"

/// Floating-point-equivalent operation count of one GEMM: `2*m*n*k`
/// (saturating at `u64::MAX`).
pub fn gemm_flops(m: usize, n: usize, k: usize) -> u64 {
    [m, n, k]
        .iter()
        .fold(2u64, |acc, &d| acc.saturating_mul(d as u64))
}

/// Deterministic int8 matrices `(a, b)` for a GEMM unit: `a` is `m x k`,
/// `b` is `k x n`, both row-major.
///
/// Element `i` of `a` is the top byte of output `i + 1` of
/// `SplitMix64::new(derive_seed(seed, 0x4745_4D4D_5F41, 0))` (for `b` the
/// stream is `0x4745_4D4D_5F42`; ASCII "GEMM_A" / "GEMM_B"), so
/// any element can be generated directly. Values cover all of `-128..=127`.
/// Returns two empty vectors if a dimension exceeds [`GEMM_MAX_DIM`].
pub fn gemm_inputs(seed: u64, m: usize, n: usize, k: usize) -> (Vec<i8>, Vec<i8>) {
    if check_dims(m, n, k).is_err() {
        return (Vec::new(), Vec::new());
    }
    let fill = |stream: u64, len: usize| -> Vec<i8> {
        let mut rng = SplitMix64::new(derive_seed(seed, stream, 0));
        (0..len)
            .map(|_| (rng.next_u64() >> 56) as u8 as i8)
            .collect()
    };
    (fill(STREAM_A, m * k), fill(STREAM_B, k * n))
}

/// Checks that every dimension is at most [`GEMM_MAX_DIM`].
fn check_dims(m: usize, n: usize, k: usize) -> Result<(), KernelError> {
    for (what, value) in [("m", m), ("n", n), ("k", k)] {
        if value > GEMM_MAX_DIM {
            return Err(KernelError::DimensionOutOfRange {
                what,
                value: value as u64,
                min: 0,
                max: GEMM_MAX_DIM as u64,
            });
        }
    }
    Ok(())
}

/// Validates GEMM dimensions and buffer lengths; every backend calls this
/// before launching work.
pub(crate) fn check_gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[i8],
    b: &[i8],
    c: &[i32],
) -> Result<(), KernelError> {
    check_dims(m, n, k)?;
    check_len("a", m * k, a.len())?;
    check_len("b", k * n, b.len())?;
    check_len("c", m * n, c.len())
}

/// CPU reference GEMM. Callers validate with [`check_gemm`] first.
///
/// Loop order i-p-j keeps the inner loop contiguous in `b` and `c`; integer
/// accumulation is exact, so the order does not affect the result.
pub(crate) fn gemm_i8_cpu(n: usize, k: usize, a: &[i8], b: &[i8], c: &mut [i32]) {
    if n == 0 {
        return;
    }
    c.fill(0);
    if k == 0 {
        return;
    }
    for (c_row, a_row) in c.chunks_exact_mut(n).zip(a.chunks_exact(k)) {
        for (&a_ip, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
            let a_ip = i32::from(a_ip);
            for (c_ij, &b_pj) in c_row.iter_mut().zip(b_row) {
                *c_ij += a_ip * i32::from(b_pj);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuKernels, Kernels};
    use proptest::prelude::*;

    fn naive(m: usize, n: usize, k: usize, a: &[i8], b: &[i8]) -> Vec<i64> {
        let mut c = vec![0i64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += i64::from(a[i * k + p]) * i64::from(b[p * n + j]);
                }
            }
        }
        c
    }

    proptest! {
        #[test]
        fn gemm_matches_naive_triple_loop(
            seed in any::<u64>(),
            m in 0usize..12,
            n in 0usize..12,
            k in 0usize..40,
        ) {
            let (a, b) = gemm_inputs(seed, m, n, k);
            let mut c = vec![7i32; m * n];
            CpuKernels.gemm_i8(m, n, k, &a, &b, &mut c).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want = naive(m, n, k, &a, &b);
            let got: Vec<i64> = c.iter().map(|&v| i64::from(v)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn gemm_matches_naive_on_arbitrary_values(
            (m, n, k, a, b) in (1usize..6, 1usize..6, 1usize..6).prop_flat_map(|(m, n, k)| (
                Just(m), Just(n), Just(k),
                proptest::collection::vec(any::<i8>(), m * k),
                proptest::collection::vec(any::<i8>(), k * n),
            ))
        ) {
            let mut c = vec![0i32; m * n];
            CpuKernels.gemm_i8(m, n, k, &a, &b, &mut c).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got: Vec<i64> = c.iter().map(|&v| i64::from(v)).collect();
            prop_assert_eq!(got, naive(m, n, k, &a, &b));
        }
    }

    #[test]
    fn gemm_extreme_values_at_max_k_do_not_overflow() {
        let k = GEMM_MAX_DIM;
        let a = vec![i8::MIN; 2 * k];
        let b = vec![i8::MIN; k];
        let mut c = vec![0i32; 2];
        assert_eq!(CpuKernels.gemm_i8(2, 1, k, &a, &b, &mut c), Ok(()));
        assert_eq!(c, vec![16_384 * 4096; 2]);
    }

    #[test]
    fn gemm_shape_mismatch_is_an_error_not_a_panic() {
        let (a, b) = gemm_inputs(1, 3, 4, 5);
        let mut c = vec![0i32; 12];
        let err = CpuKernels.gemm_i8(3, 4, 5, &a[1..], &b, &mut c);
        assert_eq!(
            err,
            Err(KernelError::LengthMismatch {
                what: "a",
                expected: 15,
                actual: 14
            })
        );
        let err = CpuKernels.gemm_i8(3, 4, 5, &a, &b[..19], &mut c);
        assert!(matches!(
            err,
            Err(KernelError::LengthMismatch { what: "b", .. })
        ));
        let err = CpuKernels.gemm_i8(3, 4, 5, &a, &b, &mut c[..11]);
        assert!(matches!(
            err,
            Err(KernelError::LengthMismatch { what: "c", .. })
        ));
    }

    #[test]
    fn gemm_rejects_dimensions_above_the_cap() {
        let err = CpuKernels.gemm_i8(GEMM_MAX_DIM + 1, 1, 1, &[], &[], &mut []);
        assert!(matches!(
            err,
            Err(KernelError::DimensionOutOfRange { what: "m", .. })
        ));
        let err = CpuKernels.gemm_i8(1, 1, usize::MAX, &[], &[], &mut []);
        assert!(matches!(
            err,
            Err(KernelError::DimensionOutOfRange { what: "k", .. })
        ));
        assert_eq!(
            gemm_inputs(0, 1, 1, GEMM_MAX_DIM + 1),
            (Vec::new(), Vec::new())
        );
    }

    #[test]
    fn gemm_inputs_are_deterministic_and_cover_the_range() {
        let (a1, b1) = gemm_inputs(9, 64, 32, 48);
        let (a2, b2) = gemm_inputs(9, 64, 32, 48);
        assert_eq!((&a1, &b1), (&a2, &b2));
        assert_eq!((a1.len(), b1.len()), (64 * 48, 48 * 32));
        assert_ne!(gemm_inputs(10, 64, 32, 48).0, a1);
        assert!(a1.contains(&i8::MIN) && a1.contains(&i8::MAX));
        // A prefix of a larger matrix's stream is the same stream.
        assert_eq!(gemm_inputs(9, 1, 1, 4).0, a1[..4].to_vec());
    }

    #[test]
    fn gemm_flops_is_two_m_n_k() {
        assert_eq!(gemm_flops(2, 3, 4), 48);
        assert_eq!(gemm_flops(4096, 4096, 4096), 2 * 4096u64.pow(3));
        assert_eq!(gemm_flops(0, 3, 4), 0);
        assert_eq!(gemm_flops(usize::MAX, usize::MAX, 2), u64::MAX);
    }
}
