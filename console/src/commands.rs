//! The subcommands that read the fleet's retained messages (`status`, `gpus`, `earnings`)
//! and check saved receipts (`receipts verify`).

use crate::admin::{self, AdminError};
use crate::cli::{
    ClaimsCommand, Cli, Command, OwnerArgs, OwnersCommand, ReceiptsCommand, RigsCommand,
};
use crate::collect::{collect, listen, now_ms, Collect};
use crate::output::{emit, Error};
use crate::{owner, receipts, report, table};
use rigd_protocol::claim::{AdminRequest, AdminResponse};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::RigId;
use std::process::ExitCode;
use std::time::Duration;

/// Runs a parsed command line and returns the exit status of a success.
pub async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let opts = Collect {
        host: cli.broker.host.clone(),
        port: cli.broker.port,
        wait: Duration::from_millis(cli.wait_ms),
        tls: match cli.tls.files() {
            Some(files) => Some(rigd_client::client_config_from_files(&files)?),
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
        Command::Earnings {
            rig,
            owner:
                OwnerArgs {
                    owner: Some(name),
                    dashboard: Some(dashboard),
                    password_file,
                },
        } => {
            let password = owner::password(password_file.as_deref())?;
            let mut e = owner::earnings(&dashboard, &name, &password).await?;
            if let Some(rig) = &rig {
                e = owner::only_rig(e, rig.as_str());
            }
            emit(cli.json, &e, || table::owner_earnings(&e))?;
        }
        Command::Earnings { rig, .. } => {
            let filter = match &rig {
                Some(rig) => topics::rig(rig, Channel::Earnings),
                None => topics::all_rigs(Channel::Earnings),
            };
            let view = collect(&opts, &[filter]).await?;
            let r = report::earnings(&view);
            emit(cli.json, &r, || table::earnings(&r))?;
        }
        Command::Receipts {
            action:
                ReceiptsCommand::Verify {
                    target,
                    key,
                    domain,
                },
        } => {
            let domain = domain.given();
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
                vec![receipts::verify_batch(&batch, &key, domain)]
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
                    .map(|b| receipts::verify_batch(b, &key, domain))
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
        Command::Owners { action } => {
            let request = match action {
                None => AdminRequest::Owners,
                Some(OwnersCommand::Add { name, payout }) => {
                    AdminRequest::AddOwner { name, payout }
                }
                Some(OwnersCommand::ResetPassword { name }) => AdminRequest::ResetPassword { name },
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
    tls: &rigd_client::TlsArgs,
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
        AdminResponse::Password { name, password } => {
            format!("owner {name}: password (shown once) {password}\n")
        }
        AdminResponse::Owners { owners } => {
            let mut t = format!("{:<24} {:<44} RIGS\n", "OWNER", "PAYOUT");
            for (name, payout, rigs) in owners {
                t.push_str(&format!("{name:<24} {payout:<44} {rigs}\n"));
            }
            t
        }
    })
}
