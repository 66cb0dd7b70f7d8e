//! The subcommands that read the fleet's retained messages (`status`, `gpus`, `earnings`)
//! and check saved receipts (`receipts verify`).

use crate::admin::{self, AdminError};
use crate::cli::{ClaimsCommand, Cli, Command, ReceiptsCommand, RigsCommand};
use crate::collect::{collect, listen, now_ms, Collect, CollectError};
use crate::devnet::{self, DevnetError};
use crate::{receipts, report, table};
use rigd_protocol::claim::{AdminRequest, AdminResponse};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::RigId;
use serde::Serialize;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

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
    /// The devnet failed.
    #[error(transparent)]
    Devnet(#[from] DevnetError),
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
    Tls(#[from] rigd_tls::TlsError),
    /// The hidden `worker` subcommand runs before the runtime starts; it cannot get here.
    #[error("the worker subcommand is run by the devnet's rigs, not through run()")]
    Worker,
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

/// Runs a parsed command line and returns the exit status of a success.
pub async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let opts = Collect {
        host: cli.broker.host.clone(),
        port: cli.broker.port,
        wait: Duration::from_millis(cli.wait_ms),
        tls: match cli.tls.files() {
            Some(files) => Some(rigd_tls::client_config_from_files(&files)?),
            None => None,
        },
    };
    match cli.command {
        Command::Status => {
            let filters = [
                topics::all_rigs(Channel::Status),
                topics::all_rigs(Channel::Telemetry),
                topics::COORDINATOR_STATUS.to_string(),
            ];
            let view = collect(&opts, &filters).await?;
            let r = report::status(&view, now_ms());
            emit(cli.json, &r, || table::status(&r))?;
        }
        Command::Gpus { rig } => {
            let filters = [
                topics::rig(&rig, Channel::Status),
                topics::rig(&rig, Channel::Telemetry),
            ];
            let view = collect(&opts, &filters).await?;
            let r = report::gpus(&view, &rig).ok_or(Error::NoSuchRig(rig))?;
            emit(cli.json, &r, || table::gpus(&r, now_ms()))?;
        }
        Command::Earnings { rig } => {
            let filter = match &rig {
                Some(rig) => topics::rig(rig, Channel::Earnings),
                None => topics::all_rigs(Channel::Earnings),
            };
            let view = collect(&opts, &[filter]).await?;
            let r = report::earnings(&view);
            emit(cli.json, &r, || table::earnings(&r))?;
        }
        Command::Receipts {
            action: ReceiptsCommand::Verify { target, key },
        } => {
            let key = key
                .map(|text| receipts::parse_key(&text).ok_or(Error::BadKey))
                .transpose()?;
            let reports = if target.is_file() {
                let bad_file = |reason: String| Error::BatchFile {
                    path: target.display().to_string(),
                    reason,
                };
                let bytes = std::fs::read(&target).map_err(|e| bad_file(e.to_string()))?;
                let batch = receipts::read_batch(&bytes).map_err(|e| bad_file(e.to_string()))?;
                let key = match key {
                    Some(key) => key,
                    None => rig_key(&opts, &batch.header.rig).await?,
                };
                vec![receipts::verify_batch(&batch, &key)]
            } else {
                let rig = RigId::new(target.to_string_lossy())
                    .map_err(|_| Error::NoSuchTarget(target.display().to_string()))?;
                let key = match key {
                    Some(key) => key,
                    None => rig_key(&opts, &rig).await?,
                };
                let payloads = listen(&opts, &topics::rig(&rig, Channel::Receipts)).await?;
                let batches = receipts::distinct_batches(&rig, &payloads);
                if batches.is_empty() {
                    return Err(Error::NoBatch {
                        rig,
                        wait_ms: cli.wait_ms,
                    });
                }
                batches
                    .iter()
                    .map(|b| receipts::verify_batch(b, &key))
                    .collect()
            };
            emit(cli.json, &reports, || {
                reports
                    .iter()
                    .map(receipts::table)
                    .collect::<Vec<_>>()
                    .join("\n")
                    + &receipts::summary(&reports)
            })?;
            if !reports.iter().all(receipts::Report::all_ok) {
                return Err(Error::Unverified);
            }
        }
        Command::Claims { action } => {
            let request = match action {
                ClaimsCommand::Create {
                    owner,
                    uses,
                    expires,
                } => AdminRequest::CreateClaim {
                    owner,
                    uses,
                    expires_ms: now_ms().saturating_add(expires.as_millis() as u64),
                },
                ClaimsCommand::Revoke { token } => AdminRequest::RevokeClaim { token },
            };
            admin_command(cli.json, &cli.tls, &opts, &request).await?;
        }
        Command::Rigs {
            action: Some(action),
        } => {
            let request = match action {
                RigsCommand::Revoke { rig } => AdminRequest::RevokeRig {
                    rig: rig.to_string(),
                },
                RigsCommand::Registry => AdminRequest::Rigs,
            };
            admin_command(cli.json, &cli.tls, &opts, &request).await?;
        }
        Command::Devnet(args) => return Ok(devnet::run(&args).await?.exit_code()),
        Command::Worker => return Err(Error::Worker),
        cmd => return crate::control::run(cli.json, &opts, cmd).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// The rig's key from its retained status.
/// The key the network pinned for `rig`, from the coordinator's retained earnings (a topic
/// only the coordinator may write), never the key the rig announces about itself.
async fn rig_key(opts: &Collect, rig: &RigId) -> Result<rigd_protocol::PublicKey, Error> {
    let view = collect(opts, &[topics::rig(rig, Channel::Earnings)]).await?;
    let earnings = view.rigs.get(rig).and_then(|r| r.earnings.as_ref());
    let pinned = earnings.and_then(|e| e.pinned_key.clone());
    if earnings.is_some_and(|e| e.key_changed) {
        tracing::warn!(rig = %rig, "the rig has announced another key since; receipts are checked under the key the network pinned");
    }
    pinned.ok_or_else(|| Error::NoPinnedKey(rig.clone()))
}

/// Sends an admin request to the provisioner and prints its answer.
async fn admin_command(
    json: bool,
    tls: &rigd_tls::TlsArgs,
    opts: &Collect,
    request: &AdminRequest,
) -> Result<(), Error> {
    let cert = tls.tls_cert.clone().ok_or(AdminError::NoCertificate)?;
    let answer = admin::request(opts, &cert, request).await?;
    emit(json, &answer, || match &answer {
        AdminResponse::Claim { token, id } => {
            format!("claim {id} created; put this in rig.conf [provision]:\nclaim = \"{token}\"\n")
        }
        AdminResponse::Done { message } | AdminResponse::Error { message } => {
            format!("{message}\n")
        }
        AdminResponse::Rigs { rigs } => {
            let mut t = format!("{:<22} {:<16} {:<8} SERIAL\n", "RIG", "OWNER", "STATE");
            for (rig, owner, state, serial) in rigs {
                t.push_str(&format!("{rig:<22} {owner:<16} {state:<8} {serial}\n"));
            }
            t
        }
    })
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
