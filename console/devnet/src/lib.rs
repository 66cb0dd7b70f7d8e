//! The demo network in one process: [`broker`], an embedded rumqttd broker on a free
//! loopback port, and [`run`]: the coordinator and simulated rigs (each card's worker is this
//! binary run as `rigd-devnet worker`) train a small MLP; progress is printed per stitched
//! step and the ledger's earnings at the end.

pub mod broker;
mod devnet;

pub use devnet::*;

use clap::Parser;
use std::path::PathBuf;

/// What `rigd-devnet --help` says of its exit codes.
pub const EXIT_CODES: &str = "\
Exit codes:
  0    the loss target was reached
  1    the job ended above the loss target, or the demo could not run
  130  interrupted with Ctrl-C";

/// `rigd-devnet`: a broker, a coordinator and simulated rigs in this process train a small
/// MLP across them until the held-out loss reaches the target or the step budget runs out.
#[derive(Debug, Clone, Parser)]
#[command(name = "rigd-devnet", version, after_help = EXIT_CODES)]
pub struct DevnetArgs {
    /// Number of rigs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub rigs: u32,
    /// Most cards per rig: rig i gets 1 + (i mod M) cards.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub gpus: u32,
    /// Most training steps.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub steps: u64,
    /// Held-out loss (mean cross-entropy) to reach; the job stops once it is at or below.
    #[arg(long, default_value_t = 0.15)]
    pub loss_target: f32,
    /// Keep the ledger and the rigs' journals and keys in DIR instead of a temporary folder.
    #[arg(long, value_name = "DIR")]
    pub keep_state: Option<PathBuf>,
}
