//! `rigctl update` and `rigctl update-status`: image updates of rigs, and what each rig runs.
//!
//! An update goes out in waves: with `--canary N` the first N rigs, then (only if every one
//! of them came back on the new version) the rest; without it, all rigs at once. For each
//! rig of a wave the signed [`Action::Update`] must be answered `completed` (installed,
//! rebooting), and then the rig's retained [`UpdateStatus`] must report the version as its
//! last update, ended well (the new slot marked good), within `--confirm-timeout-ms`. A
//! failure in a wave stops the rollout there.

use crate::cli::UpdateArgs;
use crate::collect::{now_ms, Collect, CollectError, OneOff};
use crate::fleet::{self, Send};
use crate::operator::OperatorKey;
use crate::output::{emit, Error};
use crate::view::FleetView;
use rigd_client::SessionEvent;
use rigd_protocol::command::Action;
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::update::{UpdateState, UpdateStatus};
use rigd_protocol::{decode, RigId};
use rumqttc::v5::mqttbytes::QoS;
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

/// One rig's image and update, as `update-status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RigImage {
    /// The rig.
    pub rig: String,
    /// The image version it runs (empty: no image).
    pub version: String,
    /// The root slot it booted.
    pub slot: String,
    /// What the updater is doing.
    pub state: String,
    /// The version being installed.
    pub target: Option<String>,
    /// How the last update ended: `ok` or `failed`, and its version.
    pub last: Option<String>,
    /// What the last update said.
    pub detail: Option<String>,
}

/// Every rig's [`RigImage`] in the view.
pub fn statuses(view: &FleetView) -> Vec<RigImage> {
    view.rigs
        .values()
        .filter_map(|v| v.update.as_ref())
        .map(|u| RigImage {
            rig: u.rig.to_string(),
            version: u.image_version.clone(),
            slot: u.slot.clone(),
            state: u.state.to_string(),
            target: u.target.clone(),
            last: u
                .last
                .as_ref()
                .map(|l| format!("{} {}", if l.ok { "ok" } else { "failed" }, l.version)),
            detail: u.last.as_ref().map(|l| l.detail.clone()),
        })
        .collect()
}

/// `update-status` as a table.
pub fn table(rigs: &[RigImage]) -> String {
    crate::table::images(rigs)
}

/// One rig's part in a rollout.
#[derive(Debug, Clone, Serialize)]
pub struct RigUpdate {
    /// The rig.
    pub rig: String,
    /// `updated`, `failed`, `timeout` or `skipped` (a wave before it failed).
    pub outcome: &'static str,
    /// What happened.
    pub detail: String,
    /// Wave number, from 1.
    pub wave: usize,
    /// From the command to the new slot marked good, ms.
    pub elapsed_ms: Option<u64>,
}

/// Runs `rigctl update` over `rigs`.
pub async fn run(
    json: bool,
    opts: &Collect,
    args: &UpdateArgs,
    rigs: Vec<RigId>,
) -> Result<ExitCode, Error> {
    let sha256 = digest(args)?;
    let action = Action::Update {
        bundle: args.bundle.clone(),
        version: args.version.clone(),
        sha256,
    };
    let key = OperatorKey::load(args.send.operator_key.as_deref())?;
    let waves: Vec<Vec<RigId>> = match args.canary {
        Some(n) if n > 0 && n < rigs.len() => {
            vec![rigs[..n].to_vec(), rigs[n..].to_vec()]
        }
        _ => vec![rigs.clone()],
    };
    let mut report: Vec<RigUpdate> = vec![];
    let mut stopped = false;
    for (i, wave) in waves.iter().enumerate() {
        if stopped {
            report.extend(wave.iter().map(|r| RigUpdate {
                rig: r.to_string(),
                outcome: "skipped",
                detail: "an earlier wave failed".into(),
                wave: i + 1,
                elapsed_ms: None,
            }));
            continue;
        }
        eprintln!("wave {}: {} rigs", i + 1, wave.len());
        let done = one_wave(opts, &key, args, &action, wave, i + 1).await?;
        stopped = done.iter().any(|r| r.outcome != "updated");
        report.extend(done);
    }
    emit(json, &report, || crate::table::rollout(&report))?;
    let failed = report.iter().filter(|r| r.outcome != "updated").count();
    if failed > 0 {
        return Err(Error::CommandsFailed {
            failed,
            of: report.len(),
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn digest(args: &UpdateArgs) -> Result<[u8; 32], Error> {
    let bad = |reason: String| Error::BatchFile {
        path: args
            .file
            .as_ref()
            .map_or("--sha256".into(), |p| p.display().to_string()),
        reason,
    };
    let mut out = [0u8; 32];
    match (&args.sha256, &args.file) {
        (Some(hex_digest), _) => hex::decode_to_slice(hex_digest.trim(), &mut out)
            .map_err(|_| bad("not 64 hex digits".into()))?,
        (None, Some(file)) => {
            use std::io::Read;
            let mut f = std::fs::File::open(file).map_err(|e| bad(e.to_string()))?;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(|e| bad(e.to_string()))?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
            }
            out.copy_from_slice(ctx.finish().as_ref());
        }
        (None, None) => return Err(bad("give --sha256 or --file".into())),
    }
    Ok(out)
}

async fn one_wave(
    opts: &Collect,
    key: &OperatorKey,
    args: &UpdateArgs,
    action: &Action,
    wave: &[RigId],
    number: usize,
) -> Result<Vec<RigUpdate>, Error> {
    let started = Instant::now();
    let since_ms = now_ms();
    // The updates' statuses are watched from before the commands go out.
    let mut watch = OneOff::start(
        opts,
        format!(
            "rigctl-update-{}-{}",
            std::process::id(),
            since_ms % 1_000_000
        ),
        vec![(topics::all_rigs(Channel::Update), QoS::AtLeastOnce)],
        16,
    );
    let s = Send {
        broker: opts,
        key,
        timeout: Duration::from_millis(args.send.timeout_ms.unwrap_or(1_800_000)),
        ttl_ms: args.send.ttl_ms,
        progress: true,
    };
    let replies = fleet::send(&s, wave, action).await?;
    let mut out: BTreeMap<String, RigUpdate> = BTreeMap::new();
    let mut waiting: Vec<RigId> = vec![];
    for (rig, r) in wave.iter().zip(replies) {
        if r.outcome == "completed" {
            waiting.push(rig.clone());
        } else {
            out.insert(
                rig.to_string(),
                RigUpdate {
                    rig: rig.to_string(),
                    outcome: "failed",
                    detail: format!("{}: {}", r.outcome, r.detail),
                    wave: number,
                    elapsed_ms: r.elapsed_ms,
                },
            );
        }
    }
    let deadline = Instant::now() + Duration::from_millis(args.confirm_timeout_ms);
    let mut next_note = Instant::now() + Duration::from_secs(10);
    while !waiting.is_empty() {
        let event = match watch.next_before(deadline.min(next_note)).await {
            Ok(Some(e)) => e,
            Ok(None) if Instant::now() >= deadline => break,
            Ok(None) => {
                next_note = Instant::now() + Duration::from_secs(10);
                eprintln!(
                    "wave {number}: waiting for {} rigs to come back on {}",
                    waiting.len(),
                    args.version
                );
                continue;
            }
            Err(CollectError::Lost { reason, .. }) => {
                tracing::warn!(%reason, "watch of the update statuses lost; reconnecting");
                watch = OneOff::start(
                    opts,
                    format!(
                        "rigctl-update-{}-{}",
                        std::process::id(),
                        now_ms() % 1_000_000
                    ),
                    vec![(topics::all_rigs(Channel::Update), QoS::AtLeastOnce)],
                    16,
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let SessionEvent::Message(p) = event else {
            continue;
        };
        let Some((rig, Channel::Update)) = topics::parse(&String::from_utf8_lossy(&p.topic)) else {
            continue;
        };
        let Some(at) = waiting.iter().position(|r| *r == rig) else {
            continue;
        };
        let status = match decode::<UpdateStatus>(&p.payload) {
            Ok(s) if s.rig == rig => s,
            _ => continue,
        };
        if let Some(line) = ended(&status, &args.version, since_ms) {
            eprintln!("{rig}: {}: {}", line.0, line.1);
            waiting.remove(at);
            out.insert(
                rig.to_string(),
                RigUpdate {
                    rig: rig.to_string(),
                    outcome: line.0,
                    detail: line.1,
                    wave: number,
                    elapsed_ms: Some(started.elapsed().as_millis() as u64),
                },
            );
        }
    }
    watch.close().await;
    for rig in waiting {
        out.insert(
            rig.to_string(),
            RigUpdate {
                rig: rig.to_string(),
                outcome: "timeout",
                detail: format!(
                    "installed, but not back on {} within {} ms",
                    args.version, args.confirm_timeout_ms
                ),
                wave: number,
                elapsed_ms: None,
            },
        );
    }
    Ok(wave.iter().filter_map(|r| out.remove(r.as_str())).collect())
}

/// Whether `status` says the update to `version` sent at `since_ms` ended, and how.
fn ended(status: &UpdateStatus, version: &str, since_ms: u64) -> Option<(&'static str, String)> {
    let last = status.last.as_ref()?;
    if status.state != UpdateState::Idle || last.version != version || last.finished_ms < since_ms {
        return None;
    }
    Some(if last.ok {
        ("updated", last.detail.clone())
    } else {
        ("failed", last.detail.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_protocol::update::UpdateResult;

    fn status(state: UpdateState, version: &str, ok: bool, finished_ms: u64) -> UpdateStatus {
        UpdateStatus {
            rig: RigId::new("rig-1").unwrap_or_else(|e| panic!("{e}")),
            image_version: "1.0.0".into(),
            slot: "B".into(),
            state,
            target: None,
            last: Some(UpdateResult {
                version: version.into(),
                ok,
                detail: "d".into(),
                finished_ms,
            }),
            sent_ms: finished_ms,
        }
    }

    #[test]
    fn an_update_ends_with_the_rigs_result_for_that_version_after_the_command() {
        assert_eq!(
            ended(&status(UpdateState::Idle, "2.0.0", true, 10), "2.0.0", 5),
            Some(("updated", "d".into()))
        );
        assert_eq!(
            ended(&status(UpdateState::Idle, "2.0.0", false, 10), "2.0.0", 5),
            Some(("failed", "d".into()))
        );
        // An older result, another version, or an update still under way: not yet.
        assert_eq!(
            ended(&status(UpdateState::Idle, "2.0.0", true, 4), "2.0.0", 5),
            None
        );
        assert_eq!(
            ended(&status(UpdateState::Idle, "1.9.0", true, 10), "2.0.0", 5),
            None
        );
        assert_eq!(
            ended(&status(UpdateState::Trial, "2.0.0", true, 10), "2.0.0", 5),
            None
        );
    }
}
