//! rigctl, the operator and owner console of a rigd network. It speaks to the fleet over
//! MQTT (and to the owners' dashboard over HTTP): it depends on the wire types and the TLS
//! settings, never on rigd or the coordinator (the demo network is `rigd-devnet`).
//!
//! - [`collect`]: an MQTT 5 client that reads the retained messages of the fleet into a
//!   [`view::FleetView`] (a pure fold: bad frames are logged and skipped).
//! - [`report`] and [`table`]: what `status`, `gpus` and `earnings` show, as JSON or tables.
//! - [`commands`]: the subcommands, [`cli`]: their arguments.
//! - [`operator`], [`fleet`], [`control`]: signed operator commands to many rigs at once.
//! - [`owner`]: an owner's earnings, read from the owners' dashboard over HTTPS.
//! - [`update`]: image updates, rig by rig or canary first, and what each rig runs.

pub mod admin;
pub mod cli;
pub mod collect;
pub mod commands;
pub mod control;
pub mod fleet;
pub mod operator;
pub mod output;
pub mod owner;
pub mod receipts;
pub mod report;
pub mod table;
pub mod update;
pub mod view;

pub use cli::Cli;
pub use commands::run;
pub use output::Error;
