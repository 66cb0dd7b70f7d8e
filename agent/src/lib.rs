//! rigd, the rig agent.
//!
//! [`run`] is the supervisor: its decisions are [`supervisor::RigCore`], pure; around it a
//! shell keeps the MQTT session ([`link`]), the durable [`journal`] (inbox, receipts, signed
//! batches: the outbox), the receipt key ([`keys`]), the cards ([`gpu`]) and one worker
//! process per card ([`cards`], [`worker`]). The thermal
//! [`governor`] turns a card's telemetry into its fan speed, power limit and run permit.
//! [`commands`] decides which signed operator commands the rig takes.

pub mod batcher;
pub mod cards;
pub mod claim;
pub mod commands;
pub mod config;
pub mod governor;
pub mod gpu;
pub mod hold;
pub mod journal;
pub mod keys;
pub mod link;
pub mod notify;
pub mod provision;
mod rig;
pub mod state_dir;
pub mod supervisor;
pub mod tls;
pub mod update;
pub mod worker;

#[cfg(test)]
mod fixtures;

pub use cards::WorkerCommand;
pub use config::{Assigned, ConfigError, RigConfig, RigSettings};
pub use rig::run;

/// Why rigd stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `rig.conf` is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The receipt key could not be opened.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// The cards could not be set up.
    #[error("cards: {0}")]
    Hardware(String),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// The fleet revoked this rig's identity: it must not run again as that rig.
    #[error("revoked by the fleet: {0}")]
    Revoked(String),
    /// Anything else.
    #[error("{0}")]
    Runtime(String),
}

impl RunError {
    /// The process exit code: 2 configuration, 3 hardware (key store, cards), 4 revoked,
    /// 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => 2,
            RunError::Key(_) | RunError::Hardware(_) => 3,
            RunError::Revoked(_) => 4,
            RunError::Journal(_) | RunError::Runtime(_) => 1,
        }
    }
}
