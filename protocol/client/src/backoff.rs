//! Reconnect delays: doubling up to a cap, each drawn at random from the upper half of its
//! step, so that rigs that lost the broker together do not come back in one wave.

use std::time::Duration;

/// The delay before each reconnect attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays that start at about `first` and double up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            failures: 0,
        }
    }

    /// The step after `failures` failures in a row: `first · 2^failures`, at most `max`.
    fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.failures.min(16);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt, with `unit` in [0, 1] placing it within the upper
    /// half of the current step; counts one more failure.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay before the next attempt, placed at random; counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// Back to the first step (after a successful connection).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 1 s: a broker restart costs a rig about a second.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Steps double from `first` to `max` and stay there; each delay lies in the upper half
    /// of its step; a reset starts again.
    #[test]
    fn doubles_to_the_cap_within_the_upper_half() {
        let mut b = Backoff::new(MS(100), MS(1000));
        let steps = [100, 200, 400, 800, 1000, 1000, 1000];
        for step in steps {
            assert_eq!(b.clone().next_with(0.0), MS(step / 2));
            assert_eq!(b.clone().next_with(1.0), MS(step));
            let d = b.next_delay();
            assert!(
                MS(step / 2) <= d && d <= MS(step),
                "{d:?} outside step {step}"
            );
        }
        b.reset();
        assert_eq!(b.next_with(1.0), MS(100));
    }

    /// A long outage neither overflows nor exceeds the cap.
    #[test]
    fn many_failures_stay_at_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..10_000 {
            assert!(b.next_with(1.0) <= Duration::from_secs(30));
        }
        assert_eq!(b.next_with(0.5), Duration::from_millis(22_500));
    }
}
