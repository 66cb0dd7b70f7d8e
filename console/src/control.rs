//! The fleet-control subcommands: `operator`, `rigs`, `drain`, `pause`, `resume`,
//! `limits set`, `quarantine`, `release`, `restart-worker`, `diag`, `rotate-logs`, `update`,
//! `update-status`.

use crate::cli::{CardSendArgs, Command, LimitsCommand, OperatorCommand, SendArgs};
use crate::collect::{collect, now_ms, Collect};
use crate::fleet::{self, FleetReport, Send};
use crate::operator::OperatorKey;
use crate::output::{emit, Error};
use crate::{report, table};
use rigd_protocol::command::{Action, ThermalLimitsCmd};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{RigId, RigState};
use std::process::ExitCode;
use std::time::Duration;

/// Runs one fleet-control subcommand.
pub async fn run(json: bool, opts: &Collect, command: Command) -> Result<ExitCode, Error> {
    let (send, actions) = match command {
        Command::Operator {
            action: OperatorCommand::Keygen { file },
        } => {
            let key = OperatorKey::generate(&file)?;
            println!("{}", hex::encode(key.public()));
            eprintln!(
                "wrote {}; add the line above to operator_keys in each rig's rig.conf",
                file.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Operator {
            action: OperatorCommand::Show { operator_key },
        } => {
            let key = OperatorKey::load(operator_key.as_deref())?;
            println!("{}", hex::encode(key.public()));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Rigs { action: None } => {
            let filters = [
                topics::all_rigs(Channel::Status),
                topics::all_rigs(Channel::Telemetry),
            ];
            let view = collect(opts, &filters).await?;
            let r = report::status(&view, now_ms());
            emit(json, &r, || table::status(&r))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Drain(send) => (send, vec![Action::Drain]),
        Command::Pause(CardSendArgs { send, gpu }) => (send, vec![Action::Pause { gpu }]),
        Command::Resume(CardSendArgs { send, gpu }) => (send, vec![Action::Resume { gpu }]),
        Command::Limits {
            action: LimitsCommand::Set(a),
        } => {
            let gpu = a.card.gpu;
            let mut actions = vec![];
            if let Some(watts) = a.power_w {
                actions.push(Action::SetPowerLimit {
                    gpu: gpu.clone(),
                    watts,
                });
            }
            let limits = ThermalLimitsCmd {
                target_c: a.target_c,
                critical_c: a.critical_c,
                hysteresis_c: a.hysteresis_c,
                mem_limit_c: a.mem_limit_c,
                mem_critical_c: a.mem_critical_c,
            };
            if limits != ThermalLimitsCmd::default() {
                actions.push(Action::SetThermalLimits { gpu, limits });
            }
            (a.card.send, actions)
        }
        Command::Quarantine(a) => (a.send, vec![Action::Quarantine { gpu: a.gpu }]),
        Command::Release(a) => (a.send, vec![Action::Release { gpu: a.gpu }]),
        Command::RestartWorker(a) => (a.send, vec![Action::RestartWorker { gpu: a.gpu }]),
        Command::Diag(send) => (send, vec![Action::Diagnostics]),
        Command::RotateLogs(send) => (send, vec![Action::RotateLogs]),
        Command::Update(args) => {
            let rigs = targets(opts, &args.send).await?;
            return crate::update::run(json, opts, &args, rigs).await;
        }
        Command::UpdateStatus { rig } => {
            let filter = match &rig {
                Some(r) => topics::rig(r, Channel::Update),
                None => topics::all_rigs(Channel::Update),
            };
            let view = collect(opts, &[filter]).await?;
            let r = crate::update::statuses(&view);
            emit(json, &r, || crate::update::table(&r))?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => return Err(Error::NotAFleetCommand),
    };
    let key = OperatorKey::load(send.operator_key.as_deref())?;
    let rigs = targets(opts, &send).await?;
    let mut failed = 0;
    let mut reports = vec![];
    for action in actions {
        let default_ms = if action == Action::Drain {
            120_000
        } else {
            10_000
        };
        let s = Send {
            broker: opts,
            key: &key,
            timeout: Duration::from_millis(send.timeout_ms.unwrap_or(default_ms)),
            ttl_ms: send.ttl_ms,
            progress: true,
        };
        let results = fleet::send(&s, &rigs, &action).await?;
        failed += results.iter().filter(|r| !r.ok()).count();
        reports.push(FleetReport {
            action: fleet::action_name(action.kind()),
            rigs: results,
        });
    }
    emit(json, &reports, || {
        reports.iter().map(table::fleet).collect()
    })?;
    if failed > 0 {
        return Err(Error::CommandsFailed {
            failed,
            of: rigs.len() * reports.len(),
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// The rigs named, or with `--all` every rig whose retained status is not offline.
pub(crate) async fn targets(opts: &Collect, send: &SendArgs) -> Result<Vec<RigId>, Error> {
    if !send.all {
        return Ok(send.rigs.clone());
    }
    let view = collect(opts, &[topics::all_rigs(Channel::Status)]).await?;
    let rigs: Vec<RigId> = view
        .rigs
        .iter()
        .filter(|(_, v)| {
            v.status
                .as_ref()
                .is_some_and(|s| s.state != RigState::Offline)
        })
        .map(|(rig, _)| rig.clone())
        .collect();
    if rigs.is_empty() {
        return Err(Error::NoOnlineRigs);
    }
    Ok(rigs)
}
