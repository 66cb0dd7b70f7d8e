//! Deterministic generated classification data.

use crate::rng::{derive_seed, SplitMix64};

/// Stream identifier for class centres in [`derive_seed`].
const STREAM_CENTER: u64 = 0x424C_4F42_5F43; // "BLOB_C"
/// Stream identifier for samples in [`derive_seed`].
const STREAM_SAMPLE: u64 = 0x424C_4F42_5F53; // "BLOB_S"

/// Deterministic generated classification data set (Gaussian blobs):
/// `classes` centres drawn from the seed in `input` dimensions, each point is
/// its class centre plus Gaussian noise.
///
/// * Centre `c` has coordinates drawn independently from a standard normal
///   distribution by `SplitMix64::new(derive_seed(seed, 0x424C_4F42_5F43, c))` (ASCII "BLOB_C").
/// * Sample `i` uses `SplitMix64::new(derive_seed(seed, 0x424C_4F42_5F53, i))` ("BLOB_S"):
///   first its label, uniform in `0..classes`, then `input` coordinates
///   `centre[d] + spread * N(0, 1)`.
///
/// Sample `i` therefore depends only on `(seed, input, classes, spread, i)`:
/// any shard can be regenerated independently and identically on any machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlobSpec {
    /// Seed of the data set.
    pub seed: u64,
    /// Number of features per sample.
    pub input: u32,
    /// Number of classes.
    pub classes: u32,
    /// Standard deviation of the noise around each centre (centres
    /// themselves have unit standard deviation per coordinate).
    pub spread: f32,
}

impl BlobSpec {
    /// Samples `start .. start + count` as `(x, y)`: `x` holds
    /// `count * input` features row-major, `y` the `count` labels. Sample
    /// indices wrap around at `u64::MAX`. A spec with zero classes yields
    /// two empty vectors.
    pub fn samples(&self, start: u64, count: u32) -> (Vec<f32>, Vec<u32>) {
        if self.classes == 0 {
            return (Vec::new(), Vec::new());
        }
        let dims = self.input as usize;
        let centers = self.centers();
        let spread = f64::from(self.spread);
        let mut x = Vec::with_capacity(count as usize * dims);
        let mut y = Vec::with_capacity(count as usize);
        for offset in 0..u64::from(count) {
            let index = start.wrapping_add(offset);
            let mut rng = SplitMix64::new(derive_seed(self.seed, STREAM_SAMPLE, index));
            let label = rng.next_below(self.classes);
            let center = &centers[label as usize * dims..][..dims];
            x.extend(
                center
                    .iter()
                    .map(|&c| (c + spread * rng.next_gaussian()) as f32),
            );
            y.push(label);
        }
        (x, y)
    }

    /// All class centres, `classes * input` coordinates row-major.
    fn centers(&self) -> Vec<f64> {
        (0..u64::from(self.classes))
            .flat_map(|c| {
                let mut rng = SplitMix64::new(derive_seed(self.seed, STREAM_CENTER, c));
                (0..self.input).map(move |_| rng.next_gaussian())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: BlobSpec = BlobSpec {
        seed: 7,
        input: 16,
        classes: 4,
        spread: 1.0,
    };

    #[test]
    fn blob_samples_are_identical_when_regenerated_in_different_shards() {
        let (x_all, y_all) = SPEC.samples(0, 10);
        let (x_one, y_one) = SPEC.samples(5, 1);
        assert_eq!(y_one[0], y_all[5]);
        assert_eq!(x_one, x_all[5 * 16..6 * 16].to_vec());
        let (x_tail, y_tail) = SPEC.samples(3, 7);
        assert_eq!(y_tail, y_all[3..].to_vec());
        assert_eq!(x_tail, x_all[3 * 16..].to_vec());
        assert_eq!(SPEC.samples(0, 10), (x_all, y_all));
    }

    #[test]
    fn blob_samples_have_expected_shape_and_labels() {
        let (x, y) = SPEC.samples(100, 4000);
        assert_eq!(x.len(), 4000 * 16);
        assert_eq!(y.len(), 4000);
        let mut counts = [0u32; 4];
        for &label in &y {
            counts[label as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
        assert!(x.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn blob_samples_depend_on_the_seed_and_wrap_at_the_end() {
        let other = BlobSpec { seed: 8, ..SPEC };
        assert_ne!(other.samples(0, 4), SPEC.samples(0, 4));
        let (x, _) = SPEC.samples(u64::MAX, 2);
        assert_eq!(x[16..].to_vec(), SPEC.samples(0, 1).0);
        let none = BlobSpec { classes: 0, ..SPEC };
        assert_eq!(none.samples(0, 5), (Vec::new(), Vec::new()));
    }
}
