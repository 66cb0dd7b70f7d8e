//! rigctl, the operator and owner console of a rigd network.
//!
//! - [`collect`]: an MQTT 5 client that reads the retained messages of the fleet into a
//!   [`view::FleetView`] (a pure fold: bad frames are logged and skipped).
//! - [`report`] and [`table`]: what `status`, `gpus` and `earnings` show, as JSON or tables.
//! - [`broker`]: an embedded rumqttd broker on a free loopback port.
//! - [`devnet`]: the one-command demo: broker, coordinator and simulated rigs in one process.
//! - [`commands`]: the subcommands, [`cli`]: their arguments.
//! - [`operator`], [`fleet`], [`control`]: signed operator commands to many rigs at once.

pub mod admin;
pub mod broker;
pub mod cli;
pub mod collect;
pub mod commands;
pub mod control;
pub mod devnet;
pub mod fleet;
pub mod operator;
pub mod output;
pub mod receipts;
pub mod report;
pub mod table;
pub mod view;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
mod fixtures;

pub use cli::Cli;
pub use commands::run;
pub use output::Error;
