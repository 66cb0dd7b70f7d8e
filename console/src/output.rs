//! What every subcommand shares: why it failed ([`Error`]) and how it prints a report
//! ([`emit`]: JSON or text).

use crate::admin::AdminError;
use crate::collect::CollectError;
use rigd_protocol::RigId;
use serde::Serialize;
use std::io::Write;

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the broker failed.
    #[error(transparent)]
    Collect(#[from] CollectError),
    /// Nothing about the rig is retained on the broker.
    #[error("no retained status or telemetry for rig {0}: check the id with `rigctl status`")]
    NoSuchRig(RigId),
    /// The report could not be serialized.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The output could not be written.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// The batch file could not be read or decoded.
    #[error("{path}: {reason}")]
    BatchFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The coordinator has published no pinned key for the rig.
    #[error("the network has no pinned key for rig {0} (no retained earnings from the coordinator): give --key")]
    NoPinnedKey(RigId),
    /// `--key` is not `secp256k1:HEX` or `p256:HEX`.
    #[error("--key must be secp256k1:HEX or p256:HEX")]
    BadKey,
    /// At least one receipt did not verify (the report says which and why).
    #[error("some receipts do not verify")]
    Unverified,
    /// The operator key is missing or unreadable.
    #[error(transparent)]
    OperatorKey(#[from] crate::operator::KeyError),
    /// `--all` found no rig online.
    #[error("no rig with a retained status other than offline on this broker")]
    NoOnlineRigs,
    /// Some rigs refused, failed or did not answer (the report says which).
    #[error("{failed} of {of} commands were not carried out")]
    CommandsFailed {
        /// Commands not carried out.
        failed: usize,
        /// Commands sent.
        of: usize,
    },
    /// Neither a file nor a rig id.
    #[error("{0} is neither a batch file nor a rig id")]
    NoSuchTarget(String),
    /// The rig published no receipt batch while rigctl listened.
    #[error("rig {rig} published no receipt batch within {wait_ms} ms (a longer --wait-ms, or is it working?)")]
    NoBatch {
        /// The rig.
        rig: RigId,
        /// How long rigctl listened.
        wait_ms: u64,
    },
    /// The provisioner request failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] rigd_client::TlsError),
    /// An owner's earnings could not be read from the dashboard.
    #[error(transparent)]
    Owner(#[from] crate::owner::OwnerError),
    /// A subcommand reached the code that sends fleet commands without being one (a bug).
    #[error("internal error: this subcommand is not a command sent to rigs")]
    NotAFleetCommand,
}

impl Error {
    /// The process exit code: 3 when the broker could not be reached, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Collect(CollectError::Unreachable { .. }) => 3,
            Error::OperatorKey(crate::operator::KeyError::Missing) => 2,
            _ => 1,
        }
    }
}

/// Prints `report` as pretty JSON or as the text `text` renders.
pub(crate) fn emit<T: Serialize>(
    json: bool,
    report: &T,
    text: impl FnOnce() -> String,
) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        out.write_all(b"\n")?;
    } else {
        out.write_all(text().as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
