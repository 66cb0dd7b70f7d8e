//! The crate's pseudo-random number generator.
//!
//! [`SplitMix64`] is counter-based: output number `n` (counting from 1) of a
//! generator created with `seed` is `mix64(seed + n * GAMMA)`, so any element
//! of a generated stream can be computed directly, on the CPU or on a GPU.
//! All floating-point conversions use exact IEEE operations, and
//! [`SplitMix64::next_gaussian`] uses the crate's own logarithm, so streams
//! are identical on every machine.

use crate::math;

/// The SplitMix64 increment (the 64-bit golden ratio).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output finaliser, a bijection on `u64`.
pub fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives an independent seed for element `index` of stream `stream` of `seed`.
pub fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    mix64(seed ^ mix64(stream.wrapping_add(mix64(index.wrapping_mul(GAMMA)))))
}

/// SplitMix64 pseudo-random generator (Steele, Lea and Flood, 2014).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Creates a generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform `f64` in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        // 2^-53: exact conversion of a 53-bit integer, exact scaling.
        const SCALE: f64 = 1.0 / 9_007_199_254_740_992.0;
        (self.next_u64() >> 11) as f64 * SCALE
    }

    /// Uniform `f64` in `[-1, 1)`.
    pub fn next_symmetric(&mut self) -> f64 {
        2.0 * self.next_f64() - 1.0
    }

    /// Uniform integer in `0..bound` (multiply-high reduction); `0` if `bound` is `0`.
    pub fn next_below(&mut self, bound: u32) -> u32 {
        // The product is below 2^96, so the shifted value is below `bound`.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u32
    }

    /// Standard normal `f64` (Marsaglia's polar method).
    pub fn next_gaussian(&mut self) -> f64 {
        loop {
            let u = self.next_symmetric();
            let v = self.next_symmetric();
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                return u * (-2.0 * math::ln(s) / s).sqrt();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_outputs() {
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn splitmix64_output_n_is_mix_of_counter() {
        let mut r = SplitMix64::new(42);
        for n in 1..10u64 {
            assert_eq!(
                r.next_u64(),
                mix64(42u64.wrapping_add(n.wrapping_mul(GAMMA)))
            );
        }
    }

    #[test]
    fn uniform_and_bounded_values_stay_in_range() {
        let mut r = SplitMix64::new(3);
        for _ in 0..10_000 {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
            let s = r.next_symmetric();
            assert!((-1.0..1.0).contains(&s));
            assert!(r.next_below(7) < 7);
        }
        assert_eq!(r.next_below(0), 0);
    }

    #[test]
    fn gaussian_has_unit_moments() {
        let mut r = SplitMix64::new(11);
        let n = 200_000;
        let (mut sum, mut sq) = (0.0, 0.0);
        for _ in 0..n {
            let g = r.next_gaussian();
            sum += g;
            sq += g * g;
        }
        let mean = sum / f64::from(n);
        let var = sq / f64::from(n) - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
    }

    #[test]
    fn derived_seeds_differ_by_stream_and_index() {
        let a = derive_seed(1, 0, 0);
        assert_ne!(a, derive_seed(1, 1, 0));
        assert_ne!(a, derive_seed(1, 0, 1));
        assert_ne!(a, derive_seed(2, 0, 0));
        assert_eq!(a, derive_seed(1, 0, 0));
    }
}
