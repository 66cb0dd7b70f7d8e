//! Alerts from the fleet side: a dead rig cannot report its own death, so the dashboard
//! watches each owner's rigs as the broker has them and opens an incident when a rig is
//! offline longer than the owner's delay, a card is quarantined or stopped at its critical
//! temperature, or an online rig has earned nothing for the owner's quiet time. Each
//! incident is one alert, and one recovery notice when it ends, delivered to the owner's
//! webhook as a JSON POST signed with HMAC-SHA256.
//!
//! State is in the dashboard's own SQLite database: owners' settings, incidents and a
//! delivery outbox. An incident and its notice are written in one transaction, so a crash
//! neither loses nor repeats an alert; a notice is posted until the receiver answers 2xx
//! (at least once: the `X-Rigd-Delivery` id lets a receiver drop a repeat).

use rigd_exporter::fleet::RigSeen;
use rigd_protocol::{CardState, RigState};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;

/// The governor's level for a card stopped at its critical temperature (or without readings).
pub const LEVEL_CRITICAL: u8 = 4;
/// The governor's level for a quarantined card.
pub const LEVEL_QUARANTINE: u8 = 5;
/// Most webhook attempts for one notice.
pub const MAX_ATTEMPTS: u32 = 20;

/// Why an alert operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The database failed.
    #[error("alerts database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// What an owner set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Where notices are posted.
    pub url: String,
    /// A rig offline this long is an incident, ms.
    pub offline_after_ms: u64,
    /// An online rig that earned nothing this long is an incident, ms; 0: never.
    pub quiet_after_ms: u64,
}

/// Something wrong with a rig or one of its cards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Condition {
    /// The rig.
    pub rig: String,
    /// The card, for card conditions.
    pub card: Option<String>,
    /// `offline`, `quarantined`, `critical_temperature` or `not_earning`.
    pub kind: &'static str,
}

/// What the watcher knows of one rig beside the broker's view.
#[derive(Debug, Clone, Copy, Default)]
pub struct RigClock {
    /// Since when the dashboard has seen the rig offline (its own clock), if it is.
    pub offline_since_ms: Option<u64>,
    /// When the rig's receipts last changed in the ledger.
    pub last_earning_ms: Option<u64>,
}

/// The conditions of `rig` now. Card conditions are judged only while the rig is online (an
/// offline rig's last readings are old news); a rig the broker never had is offline from the
/// moment the watcher first looked.
pub fn conditions(
    rig: &str,
    seen: Option<&RigSeen>,
    clock: RigClock,
    settings: &Settings,
    now_ms: u64,
) -> Vec<Condition> {
    let status = seen.and_then(|s| s.status.as_ref());
    let online = status.is_some_and(|s| s.state != RigState::Offline);
    let mut out = vec![];
    let condition = |card: Option<String>, kind| Condition {
        rig: rig.to_owned(),
        card,
        kind,
    };
    if !online {
        let since = clock.offline_since_ms.unwrap_or(now_ms);
        if now_ms.saturating_sub(since) >= settings.offline_after_ms {
            out.push(condition(None, "offline"));
        }
        return out;
    }
    if let Some((telemetry, _)) = seen.and_then(|s| s.telemetry.as_ref()) {
        for g in &telemetry.gpus {
            let card = Some(g.uuid.to_string());
            if g.state == CardState::Quarantined || g.governor_level >= LEVEL_QUARANTINE {
                out.push(condition(card, "quarantined"));
            } else if g.governor_level == LEVEL_CRITICAL {
                out.push(condition(card, "critical_temperature"));
            }
        }
    }
    if settings.quiet_after_ms > 0 {
        let started = status.map_or(now_ms, |s| s.started_ms);
        let last = clock.last_earning_ms.unwrap_or(0).max(started);
        if now_ms.saturating_sub(last) >= settings.quiet_after_ms {
            out.push(condition(None, "not_earning"));
        }
    }
    out
}

/// An incident as the owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incident {
    /// Its number.
    pub id: i64,
    /// What.
    #[serde(flatten)]
    pub condition: Condition,
    /// When it began (Unix ms).
    pub opened_ms: u64,
    /// When it ended, if it did.
    pub closed_ms: Option<u64>,
}

/// A notice waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its id (the `X-Rigd-Delivery` header).
    pub id: i64,
    /// Where to.
    pub url: String,
    /// The owner's webhook secret.
    pub secret: String,
    /// The JSON body.
    pub body: String,
    /// Attempts so far.
    pub attempts: u32,
}

/// The alerts database.
pub struct Alerts {
    db: Connection,
}

fn u(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Alerts {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, AlertError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS settings(
                 owner TEXT PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL,
                 offline_after_ms INTEGER NOT NULL, quiet_after_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS incidents(
                 id INTEGER PRIMARY KEY, owner TEXT NOT NULL, rig TEXT NOT NULL,
                 card TEXT NOT NULL, kind TEXT NOT NULL,
                 opened_ms INTEGER NOT NULL, closed_ms INTEGER);
             CREATE UNIQUE INDEX IF NOT EXISTS incidents_open
                 ON incidents(owner, rig, card, kind) WHERE closed_ms IS NULL;
             CREATE INDEX IF NOT EXISTS incidents_by_owner ON incidents(owner, id);
             CREATE TABLE IF NOT EXISTS deliveries(
                 id INTEGER PRIMARY KEY, owner TEXT NOT NULL, body TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL,
                 done INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(next_ms) WHERE done = 0;",
        )?;
        Ok(Self { db })
    }

    /// Sets `owner`'s webhook and delays; returns the new signing secret (64 hex digits).
    pub fn set(&mut self, owner: &str, settings: &Settings) -> Result<String, AlertError> {
        let secret = hex::encode(rand::random::<[u8; 32]>());
        self.db.execute(
            "INSERT INTO settings(owner, url, secret, offline_after_ms, quiet_after_ms)
             VALUES(?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(owner) DO UPDATE SET url = excluded.url, secret = excluded.secret,
                 offline_after_ms = excluded.offline_after_ms,
                 quiet_after_ms = excluded.quiet_after_ms",
            params![
                owner,
                settings.url,
                secret,
                u(settings.offline_after_ms),
                u(settings.quiet_after_ms)
            ],
        )?;
        Ok(secret)
    }

    /// `owner`'s settings, if they set any.
    pub fn settings(&self, owner: &str) -> Result<Option<Settings>, AlertError> {
        Ok(self
            .db
            .query_row(
                "SELECT url, offline_after_ms, quiet_after_ms FROM settings WHERE owner = ?1",
                [owner],
                |r| {
                    Ok(Settings {
                        url: r.get(0)?,
                        offline_after_ms: r.get::<_, i64>(1)? as u64,
                        quiet_after_ms: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .optional()?)
    }

    /// Every owner with settings.
    pub fn watched(&self) -> Result<Vec<(String, Settings)>, AlertError> {
        let mut st = self.db.prepare(
            "SELECT owner, url, offline_after_ms, quiet_after_ms FROM settings ORDER BY owner",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get(0)?,
                Settings {
                    url: r.get(1)?,
                    offline_after_ms: r.get::<_, i64>(2)? as u64,
                    quiet_after_ms: r.get::<_, i64>(3)? as u64,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `owner`'s newest incidents, open ones included.
    pub fn incidents(&self, owner: &str, limit: u32) -> Result<Vec<Incident>, AlertError> {
        let mut st = self.db.prepare(
            "SELECT id, rig, card, kind, opened_ms, closed_ms FROM incidents
             WHERE owner = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![owner, limit], incident)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Brings `owner`'s open incidents to `now` (the conditions of all their rigs): opens
    /// the new ones, closes the ended ones, and queues one notice for each change, all in
    /// one transaction. The card incidents of rigs in `offline` stay as they are (nothing is
    /// known of their cards). Returns how many incidents opened and closed.
    pub fn update(
        &mut self,
        owner: &str,
        now: &[Condition],
        offline: &HashSet<String>,
        now_ms: u64,
    ) -> Result<(usize, usize), AlertError> {
        let tx = self.db.transaction()?;
        let open: Vec<Incident> = {
            let mut st = tx.prepare(
                "SELECT id, rig, card, kind, opened_ms, closed_ms FROM incidents
                 WHERE owner = ?1 AND closed_ms IS NULL",
            )?;
            let rows = st.query_map([owner], incident)?;
            rows.collect::<Result<_, _>>()?
        };
        let (mut opened, mut closed) = (0, 0);
        for i in &open {
            let c = &i.condition;
            let unknown = c.card.is_some() && offline.contains(&c.rig);
            if !now.contains(c) && !unknown {
                tx.execute(
                    "UPDATE incidents SET closed_ms = ?2 WHERE id = ?1",
                    params![i.id, u(now_ms)],
                )?;
                let body = notice(i.id, owner, c, "recovered", i.opened_ms, Some(now_ms));
                queue(&tx, owner, &body, now_ms)?;
                closed += 1;
            }
        }
        for c in now {
            if open.iter().any(|i| &i.condition == c) {
                continue;
            }
            tx.execute(
                "INSERT INTO incidents(owner, rig, card, kind, opened_ms) VALUES(?1, ?2, ?3, ?4, ?5)",
                params![owner, c.rig, c.card.clone().unwrap_or_default(), c.kind, u(now_ms)],
            )?;
            let id = tx.last_insert_rowid();
            let body = notice(id, owner, c, "alert", now_ms, None);
            queue(&tx, owner, &body, now_ms)?;
            opened += 1;
        }
        tx.commit()?;
        Ok((opened, closed))
    }

    /// Notices due for an attempt at `now_ms`, oldest first, with their owners' webhooks.
    pub fn due(&self, now_ms: u64, limit: u32) -> Result<Vec<Delivery>, AlertError> {
        let mut st = self.db.prepare(
            "SELECT d.id, s.url, s.secret, d.body, d.attempts FROM deliveries d
             JOIN settings s ON s.owner = d.owner
             WHERE d.done = 0 AND d.next_ms <= ?1 ORDER BY d.id LIMIT ?2",
        )?;
        let rows = st.query_map(params![u(now_ms), limit], |r| {
            Ok(Delivery {
                id: r.get(0)?,
                url: r.get(1)?,
                secret: r.get(2)?,
                body: r.get(3)?,
                attempts: r.get::<_, i64>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records an attempt: delivered, or tried again after a backoff (1 s doubling to an
    /// hour), given up after [`MAX_ATTEMPTS`].
    pub fn attempted(&mut self, id: i64, delivered: bool, now_ms: u64) -> Result<(), AlertError> {
        if delivered {
            self.db
                .execute("UPDATE deliveries SET done = 1 WHERE id = ?1", [id])?;
            return Ok(());
        }
        let attempts: i64 = self.db.query_row(
            "UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?1 RETURNING attempts",
            [id],
            |r| r.get(0),
        )?;
        let backoff_ms = 1000u64
            .saturating_mul(1 << attempts.clamp(0, 12))
            .min(3_600_000);
        let done = i64::from(attempts >= i64::from(MAX_ATTEMPTS));
        self.db.execute(
            "UPDATE deliveries SET next_ms = ?2, done = ?3 WHERE id = ?1",
            params![id, u(now_ms.saturating_add(backoff_ms)), done],
        )?;
        Ok(())
    }
}

/// An incident from a row of (id, rig, card, kind, opened_ms, closed_ms).
fn incident(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let card: String = r.get(2)?;
    Ok(Incident {
        id: r.get(0)?,
        condition: Condition {
            rig: r.get(1)?,
            card: (!card.is_empty()).then_some(card),
            kind: kind_name(&r.get::<_, String>(3)?),
        },
        opened_ms: r.get::<_, i64>(4)? as u64,
        closed_ms: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
    })
}

fn kind_name(stored: &str) -> &'static str {
    match stored {
        "offline" => "offline",
        "quarantined" => "quarantined",
        "critical_temperature" => "critical_temperature",
        "not_earning" => "not_earning",
        _ => "unknown",
    }
}

fn queue(
    tx: &rusqlite::Transaction<'_>,
    owner: &str,
    body: &str,
    now_ms: u64,
) -> Result<(), AlertError> {
    tx.execute(
        "INSERT INTO deliveries(owner, body, next_ms) VALUES(?1, ?2, ?3)",
        params![owner, body, u(now_ms)],
    )?;
    Ok(())
}

/// What a notice says, in words.
fn message(c: &Condition, state: &str) -> String {
    let what = match (c.kind, &c.card) {
        ("offline", _) => format!("rig {} is offline", c.rig),
        ("quarantined", Some(card)) => format!("card {card} of rig {} is quarantined", c.rig),
        ("critical_temperature", Some(card)) => {
            format!(
                "card {card} of rig {} stopped at its critical temperature",
                c.rig
            )
        }
        ("not_earning", _) => format!("rig {} is online but earns nothing", c.rig),
        (kind, _) => format!("rig {}: {kind}", c.rig),
    };
    match state {
        "recovered" => format!("recovered: {what} no more"),
        _ => what,
    }
}

fn notice(
    incident: i64,
    owner: &str,
    c: &Condition,
    state: &str,
    opened_ms: u64,
    closed_ms: Option<u64>,
) -> String {
    serde_json::json!({
        "incident": incident,
        "owner": owner,
        "rig": c.rig,
        "card": c.card,
        "kind": c.kind,
        "state": state,
        "opened_ms": opened_ms,
        "closed_ms": closed_ms,
        "message": message(c, state),
    })
    .to_string()
}

/// The `X-Rigd-Signature` of `body` under `secret`: `sha256=` and the hex HMAC-SHA256.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            url: "http://127.0.0.1:1/hook".into(),
            offline_after_ms: 5_000,
            quiet_after_ms: 0,
        }
    }

    fn offline(rig: &str) -> Condition {
        Condition {
            rig: rig.into(),
            card: None,
            kind: "offline",
        }
    }

    #[test]
    fn a_rig_offline_past_the_delay_is_one_incident_and_one_recovery() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut a = Alerts::open(&dir.path().join("a.db")).unwrap_or_else(|e| panic!("{e}"));
        a.set("alice", &settings())
            .unwrap_or_else(|e| panic!("{e}"));
        let none = HashSet::new();
        let clock = |since| RigClock {
            offline_since_ms: Some(since),
            last_earning_ms: None,
        };
        assert!(conditions("r", None, clock(1_000), &settings(), 5_999).is_empty());
        let now = conditions("r", None, clock(1_000), &settings(), 6_000);
        assert_eq!(now, vec![offline("r")]);
        assert_eq!(a.update("alice", &now, &none, 6_000).ok(), Some((1, 0)));
        assert_eq!(
            a.update("alice", &now, &none, 7_000).ok(),
            Some((0, 0)),
            "one per incident"
        );
        assert_eq!(a.update("alice", &[], &none, 8_000).ok(), Some((0, 1)));
        assert_eq!(a.update("alice", &[], &none, 9_000).ok(), Some((0, 0)));
        let due = a.due(9_000, 10).unwrap_or_default();
        let states: Vec<String> = due
            .iter()
            .map(|d| serde_json::from_str::<serde_json::Value>(&d.body).unwrap_or_default())
            .map(|v| format!("{} {}", v["kind"], v["state"]))
            .collect();
        assert_eq!(
            states,
            vec![r#""offline" "alert""#, r#""offline" "recovered""#]
        );
        let incidents = a.incidents("alice", 10).unwrap_or_default();
        assert_eq!(incidents.len(), 1);
        assert_eq!(incidents[0].closed_ms, Some(8_000));
        assert!(a.incidents("bob", 10).unwrap_or_default().is_empty());
    }

    #[test]
    fn a_failed_delivery_backs_off_and_is_given_up_after_its_attempts() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut a = Alerts::open(&dir.path().join("a.db")).unwrap_or_else(|e| panic!("{e}"));
        a.set("alice", &settings())
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = a.update("alice", &[offline("r")], &HashSet::new(), 0);
        let id = a.due(0, 1).unwrap_or_default()[0].id;
        let _ = a.attempted(id, false, 0);
        assert!(
            a.due(1_999, 1).unwrap_or_default().is_empty(),
            "backing off"
        );
        assert_eq!(a.due(2_000, 1).unwrap_or_default().len(), 1);
        for _ in 1..MAX_ATTEMPTS {
            let _ = a.attempted(id, false, 0);
        }
        assert!(
            a.due(u64::MAX / 2, 1).unwrap_or_default().is_empty(),
            "given up"
        );
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        let s = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
