//! Test-only holds: points where rigd waits while a test keeps it there, so that a test can
//! kill or fault rigd inside a window it chose instead of one it hoped to hit.
//!
//! [`TEST_HOLD_DIR_ENV`] names a directory; while a file named after a [`Point`] exists in
//! it, rigd holds at that point. Nothing but tests sets the variable, and rigd logs loudly
//! when it is set.

use std::path::PathBuf;
use std::time::Duration;

/// The environment variable naming the directory of hold files.
pub const TEST_HOLD_DIR_ENV: &str = "RIGD_TEST_HOLD_DIR";

/// A point where a test can hold rigd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// File `signing`: no receipt batch is signed; receipts stay journaled, unsigned.
    Signing,
    /// File `acks`: the coordinator's acknowledgements are dropped unread; signed batches stay
    /// unacknowledged in the outbox (the coordinator acknowledges them again on resend).
    Acks,
    /// File `computing`: a worker that received a unit holds before it computes it; the unit
    /// stays in flight.
    Computing,
}

impl Point {
    /// The name of its hold file.
    pub fn file_name(self) -> &'static str {
        match self {
            Point::Signing => "signing",
            Point::Acks => "acks",
            Point::Computing => "computing",
        }
    }
}

/// The holds of this process, read once from the environment.
#[derive(Debug, Clone, Default)]
pub struct Holds {
    dir: Option<PathBuf>,
}

impl Holds {
    /// Reads [`TEST_HOLD_DIR_ENV`], loudly.
    pub fn from_env() -> Self {
        let dir = std::env::var_os(TEST_HOLD_DIR_ENV).map(PathBuf::from);
        if let Some(dir) = &dir {
            tracing::warn!(dir = %dir.display(), "{TEST_HOLD_DIR_ENV} is set: rigd holds where a file in this directory says (tests only)");
        }
        Self { dir }
    }

    /// Whether a test holds rigd at `point` now.
    pub fn held(&self, point: Point) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|d| d.join(point.file_name()).exists())
    }

    /// Blocks the calling thread while `point` is held.
    pub fn wait(&self, point: Point) {
        if self.held(point) {
            tracing::info!(?point, "held by a test");
            while self.held(point) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
