//! The alert watcher: every tick it judges the rigs of every owner who set a webhook
//! ([`crate::alerts::conditions`]), brings their incidents up to date, and posts the notices
//! that are due.

use crate::alerts::{conditions, signature, RigClock};
use crate::http::{lock, App};
use crate::webhook;
use rigd_client::http::Url;
use rigd_protocol::RigState;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Notices posted per tick at most.
const POSTS_PER_TICK: u32 = 50;

/// Watches until `stop` is cancelled, judging every `tick`.
pub async fn watch(app: Arc<App>, tick: Duration, stop: CancellationToken) {
    let mut offline_since: HashMap<String, u64> = HashMap::new();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = (app.clock)();
        let judged = {
            let app = app.clone();
            let mut since = std::mem::take(&mut offline_since);
            let judged = tokio::task::spawn_blocking(move || {
                let r = judge(&app, &mut since, now);
                (r, since)
            })
            .await;
            match judged {
                Ok((r, since)) => {
                    offline_since = since;
                    r
                }
                Err(e) => Err(e.to_string()),
            }
        };
        if let Err(e) = judged {
            tracing::error!(error = %e, "alerts could not be judged");
        }
        deliver(&app, now).await;
    }
}

/// Judges every watched owner's rigs at `now`.
fn judge(app: &App, offline_since: &mut HashMap<String, u64>, now: u64) -> Result<(), String> {
    let watched = lock(&app.alerts).watched().map_err(|e| e.to_string())?;
    let mut still_watched = HashSet::new();
    for (owner, settings) in watched {
        let rigs = app.store.rigs(&owner).map_err(|e| e.to_string())?;
        let mut found = vec![];
        let mut offline = HashSet::new();
        for record in rigs.iter().filter(|r| r.state == "active") {
            let rig = record.rig.to_string();
            still_watched.insert(rig.clone());
            let last_earning_ms = if settings.quiet_after_ms > 0 {
                app.store
                    .last_change_ms(&record.rig)
                    .map_err(|e| e.to_string())?
            } else {
                None
            };
            let fleet = lock(&app.fleet);
            let seen = fleet.get(&record.rig);
            let online = seen
                .and_then(|s| s.status.as_ref())
                .is_some_and(|s| s.state != RigState::Offline);
            let offline_since_ms = if online {
                offline_since.remove(&rig);
                None
            } else {
                offline.insert(rig.clone());
                Some(*offline_since.entry(rig.clone()).or_insert(now))
            };
            let clock = RigClock {
                offline_since_ms,
                last_earning_ms,
            };
            found.extend(conditions(&rig, seen, clock, &settings, now));
        }
        let (opened, closed) = lock(&app.alerts)
            .update(&owner, &found, &offline, now)
            .map_err(|e| e.to_string())?;
        if opened + closed > 0 {
            tracing::info!(%owner, opened, closed, "incidents changed");
        }
    }
    offline_since.retain(|rig, _| still_watched.contains(rig));
    Ok(())
}

/// Posts the notices due at `now`.
async fn deliver(app: &Arc<App>, now: u64) {
    let due = match lock(&app.alerts).due(now, POSTS_PER_TICK) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "due notices could not be read");
            return;
        }
    };
    for d in due {
        let headers = [
            ("x-rigd-delivery", d.id.to_string()),
            ("x-rigd-signature", signature(&d.secret, d.body.as_bytes())),
        ];
        let outcome = match Url::parse(&d.url) {
            Ok(target) => {
                webhook::post(&target, &d.body, &headers, app.allow_private_webhooks).await
            }
            Err(e) => Err(e),
        };
        let delivered = match outcome {
            Ok(status) if (200..300).contains(&status) => true,
            Ok(status) => {
                tracing::warn!(
                    delivery = d.id,
                    status,
                    attempts = d.attempts,
                    "webhook refused a notice"
                );
                false
            }
            Err(e) => {
                tracing::warn!(delivery = d.id, error = %e, attempts = d.attempts, "webhook not reached");
                false
            }
        };
        if let Err(e) = lock(&app.alerts).attempted(d.id, delivered, (app.clock)()) {
            tracing::error!(delivery = d.id, error = %e, "a delivery could not be recorded");
        }
    }
}
