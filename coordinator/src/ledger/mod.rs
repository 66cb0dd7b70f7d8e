//! The earnings ledger and rig registry: one SQLite file in WAL mode with
//! `synchronous=FULL`.
//!
//! Crash safety is by construction: every receipt batch is recorded all or nothing
//! ([`Ledger::record_batch`], a savepoint) and acknowledged only after it committed; stitching
//! an MLP step (crediting its pending receipts, replacing the checkpoint, dropping the kept
//! outputs) is all or nothing too ([`Ledger::stitch`]). The engine commits what it handles in
//! one burst as one group ([`Ledger::begin_group`]): one sync for many batches, nothing of
//! the burst sent before it. Receipts are keyed by `(rig, seq)`, so a receipt
//! delivered again is counted in `deliveries` and changes nothing else.
//!
//! Integers are stored as signed 64-bit values with the bits of the `u64`.
//!
//! The same ledger runs on PostgreSQL ([`Location::Postgres`]), with the same tables, the
//! same statements and the same transactions (`db` holds the two connections).

use db::{p, Db};
use rigd_protocol::{
    CardEarnings, Earnings, GpuUuid, JobId, PublicKey, Receipt, RigId, UnitOutput,
};
use rusqlite::{Connection, OpenFlags};
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rigs(
    rig TEXT PRIMARY KEY, curve TEXT NOT NULL, pubkey BLOB NOT NULL,
    key_changed INTEGER NOT NULL DEFAULT 0, first_seen_ms INTEGER NOT NULL,
    from_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS cards(rig TEXT NOT NULL, card TEXT NOT NULL, PRIMARY KEY(rig, card));
CREATE TABLE IF NOT EXISTS deliveries(rig TEXT PRIMARY KEY, duplicates INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS receipts(
    rig TEXT NOT NULL, seq INTEGER NOT NULL, card TEXT NOT NULL, job TEXT NOT NULL,
    unit INTEGER NOT NULL, attempt INTEGER NOT NULL, work INTEGER NOT NULL,
    state TEXT NOT NULL CHECK(state IN ('credited', 'pending', 'rejected')),
    reason TEXT, micros INTEGER NOT NULL, changed_ms INTEGER NOT NULL,
    PRIMARY KEY(rig, seq));
CREATE INDEX IF NOT EXISTS receipts_by_unit ON receipts(job, unit);
CREATE TABLE IF NOT EXISTS mlp_results(
    job TEXT NOT NULL, unit INTEGER NOT NULL, loss_bits INTEGER NOT NULL,
    samples INTEGER NOT NULL, grad BLOB NOT NULL, PRIMARY KEY(job, unit));
CREATE TABLE IF NOT EXISTS leases(
    job TEXT NOT NULL, unit INTEGER NOT NULL, attempt INTEGER NOT NULL, rig TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL, PRIMARY KEY(job, unit, attempt));
CREATE TABLE IF NOT EXISTS refused(
    rig TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    reason TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY(rig, first_seq));
CREATE TABLE IF NOT EXISTS suspensions(
    rig TEXT NOT NULL, job TEXT NOT NULL, until_ms INTEGER NOT NULL, PRIMARY KEY(rig, job));
CREATE TABLE IF NOT EXISTS mlp_checkpoints(
    job TEXT PRIMARY KEY, step INTEGER NOT NULL, params BLOB NOT NULL, loss_bits INTEGER);
";

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database file could not be opened or its schema created.
    #[error("cannot open ledger {path}: {source} (check the path and its permissions)")]
    Open {
        /// The file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The PostgreSQL database could not be reached or its schema created.
    #[error("cannot open ledger {url}: {source} (check the URL, that the server runs and takes this user)")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// What PostgreSQL said.
        source: postgres::Error,
    },
    /// A query or transaction failed.
    #[error("ledger query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A query or transaction on PostgreSQL failed.
    #[error("ledger query failed: {0}")]
    Postgres(#[from] postgres::Error),
    /// A stored value does not parse (the file was edited or is from another program).
    #[error("ledger holds an unreadable value: {0}")]
    Corrupt(String),
}

/// The state a receipt is recorded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptState {
    /// Accepted and paid.
    Credited,
    /// Accepted, paid when its MLP step is stitched.
    Pending,
    /// Refused.
    Rejected,
}

impl ReceiptState {
    fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Credited => "credited",
            ReceiptState::Pending => "pending",
            ReceiptState::Rejected => "rejected",
        }
    }
}

/// One new receipt to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The receipt.
    pub receipt: &'a Receipt,
    /// Its state.
    pub state: ReceiptState,
    /// Why it was refused, for rejected receipts.
    pub reason: Option<&'static str>,
    /// Amount credited or pending; zero for rejected receipts.
    pub micros: u64,
}

/// Everything one receipt batch changes, written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct BatchRecord<'a> {
    /// Receipts recorded for the first time.
    pub entries: Vec<Entry<'a>>,
    /// Receipts delivered again.
    pub duplicates: u64,
    /// Accepted MLP outputs to keep until their step is stitched: `(job, unit, output)`.
    pub kept_outputs: Vec<(&'a JobId, u64, &'a UnitOutput)>,
    /// Receipts refused before any check of their results, as runs of sequence numbers.
    pub refused: Vec<Refused>,
    /// A result of the rig was caught wrong: its receipts of this job credited or pending
    /// since this time (Unix ms) are forfeited, in the same transaction.
    pub forfeit: Option<(&'a JobId, u64)>,
    /// The rig is suspended from this job until this time (Unix ms), in the same
    /// transaction, so a restarted coordinator keeps the suspension.
    pub suspend: Option<(&'a JobId, u64)>,
}

/// What a rig's status key means for its pinned key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// First sight: the key is now pinned.
    Pinned,
    /// Same key as pinned.
    Same,
    /// A different key: the rig is marked and its batches refused from now on.
    Changed,
}

/// A rig in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredRig {
    /// The rig.
    pub rig: RigId,
    /// Its pinned key.
    pub key: PublicKey,
    /// Whether it has since announced another key.
    pub key_changed: bool,
    /// Receipts numbered below this were made under an earlier key (0: never rekeyed).
    pub from_seq: u64,
}

/// Where a ledger lives: a SQLite file (the embedded default) or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    File(PathBuf),
    /// A PostgreSQL database, by its `postgres://` or `postgresql://` URL (plain TCP or a
    /// Unix socket: the database is the fleet side's own, on its own network).
    Postgres(String),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL is a PostgreSQL database; anything else is a
    /// file path.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_string())
        } else {
            Location::File(PathBuf::from(s))
        }
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::File(path)
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::File(path.to_path_buf())
    }
}

impl std::fmt::Display for Location {
    /// The file's path, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Postgres(url) => f.write_str(&without_password(url)),
        }
    }
}

/// `url` with the password of its user part, if any, replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The ledger. [`Ledger::open`] gives the read side for tests and tools (read-only: WAL lets
/// it run beside the coordinator); the coordinator opens it with [`Ledger::create`] (a file)
/// or [`Ledger::create_at`] (a file or PostgreSQL).
#[derive(Debug)]
pub struct Ledger {
    db: Db,
}

fn u(v: u64) -> i64 {
    v as i64
}

fn curve_key(key: &PublicKey) -> (&'static str, &[u8]) {
    match key {
        PublicKey::Secp256k1(b) => ("secp256k1", b),
        PublicKey::P256(b) => ("p256", b),
    }
}

fn parse_rig(s: String) -> Result<RigId, LedgerError> {
    RigId::new(s).map_err(|e| LedgerError::Corrupt(e.to_string()))
}

fn f32_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn blob_f32(b: &[u8]) -> Result<Vec<f32>, LedgerError> {
    if b.len() % 4 != 0 {
        return Err(LedgerError::Corrupt(
            "float blob length is not a multiple of 4".into(),
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The SQLite schema's tables in PostgreSQL's types (its integers are all 64-bit).
fn postgres_dialect(sql: &str) -> String {
    sql.replace("INTEGER", "BIGINT")
        .replace("BLOB", "BYTEA")
        .replace(" WITHOUT ROWID", "")
}

/// Any fixed key: two replicas creating the schema at once take turns on it.
const SCHEMA_LOCK: i64 = 0x7269_6764;

impl Ledger {
    /// Opens an existing ledger read-only.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let open = || -> Result<Connection, rusqlite::Error> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_secs(5))?;
            Ok(conn)
        };
        let conn = open().map_err(|source| LedgerError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            db: Db::sqlite(conn),
        })
    }

    /// Opens or creates the ledger for writing, in WAL mode with `synchronous=FULL`, and
    /// stores the price earnings are quoted at.
    pub fn create(path: &Path, micros_per_mflop: u64) -> Result<Self, LedgerError> {
        Self::open_writing(path, OpenFlags::default(), Some(micros_per_mflop))
    }

    /// Opens an existing ledger for writing (as [`Ledger::create`], keeping its price): what
    /// the payout run writes its epochs into beside a running coordinator.
    pub fn open_existing(path: &Path) -> Result<Self, LedgerError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_writing(path, flags, None)
    }

    /// As [`Ledger::create`], at `location`: on PostgreSQL the schema is created if missing
    /// (one creator at a time) and the price stored.
    pub fn create_at(location: &Location, micros_per_mflop: u64) -> Result<Self, LedgerError> {
        match location {
            Location::File(path) => Self::create(path, micros_per_mflop),
            Location::Postgres(url) => Self::connect(url, Some(micros_per_mflop)),
        }
    }

    /// The read side at `location`: a SQLite file read-only ([`Ledger::open`]), or a
    /// PostgreSQL session whose transactions are read-only.
    pub fn open_at(location: &Location) -> Result<Self, LedgerError> {
        match location {
            Location::File(path) => Self::open(path),
            Location::Postgres(url) => {
                let ledger = Self::connect(url, None)?;
                ledger
                    .db
                    .batch("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")?;
                Ok(ledger)
            }
        }
    }

    /// As [`Ledger::open_existing`], at `location`.
    pub fn open_existing_at(location: &Location) -> Result<Self, LedgerError> {
        match location {
            Location::File(path) => Self::open_existing(path),
            Location::Postgres(url) => Self::connect(url, None),
        }
    }

    fn connect(url: &str, micros_per_mflop: Option<u64>) -> Result<Self, LedgerError> {
        let connect = || -> Result<postgres::Client, postgres::Error> {
            let mut client = postgres::Client::connect(url, postgres::NoTls)?;
            // A ledger already made is not touched: replacing its triggers would wait for
            // every open transaction on the receipts, a running coordinator's among them.
            let made = client
                .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])?
                .try_get::<_, bool>(0)?
                && client
                    .query_opt("SELECT 1 FROM meta WHERE key = 'rollup'", &[])?
                    .is_some();
            if made {
                return Ok(client);
            }
            let mut schema = format!(
                "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK});\n{}{}{}{}{}",
                postgres_dialect(SCHEMA),
                postgres_dialect(rollup::TABLES),
                postgres_dialect(payouts::SCHEMA),
                postgres_dialect(disputes::SCHEMA),
                rollup::POSTGRES_TRIGGERS,
            );
            schema.push_str(
                "INSERT INTO meta(key, value) VALUES('rollup', 1) ON CONFLICT DO NOTHING;
                 COMMIT;",
            );
            client.batch_execute(&schema)?;
            Ok(client)
        };
        let client = db::blocking(connect).map_err(|source| LedgerError::Connect {
            url: without_password(url),
            source,
        })?;
        let ledger = Self {
            db: Db::postgres(client),
        };
        if let Some(price) = micros_per_mflop {
            ledger.set_meta("micros_per_mflop", price)?;
        }
        Ok(ledger)
    }

    fn open_writing(
        path: &Path,
        flags: OpenFlags,
        micros_per_mflop: Option<u64>,
    ) -> Result<Self, LedgerError> {
        let open = || -> Result<Connection, rusqlite::Error> {
            let mut conn = Connection::open_with_flags(path, flags)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SCHEMA)?;
            let has_from_seq = conn
                .prepare("SELECT 1 FROM pragma_table_info('rigs') WHERE name = 'from_seq'")?
                .exists([])?;
            if !has_from_seq {
                conn.execute(
                    "ALTER TABLE rigs ADD COLUMN from_seq INTEGER NOT NULL DEFAULT 0",
                    [],
                )?;
            }
            conn.execute_batch(rollup::TABLES)?;
            conn.execute_batch(rollup::SQLITE_TRIGGERS)?;
            conn.execute_batch(payouts::SCHEMA)?;
            conn.execute_batch(disputes::SCHEMA)?;
            payouts::migrate(&conn)?;
            rollup::backfill(&mut conn)?;
            if let Some(price) = micros_per_mflop {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES('micros_per_mflop', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    rusqlite::params![u(price)],
                )?;
            }
            Ok(conn)
        };
        let conn = open().map_err(|source| LedgerError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            db: Db::sqlite(conn),
        })
    }

    /// Opens a group: what the ledger records from here until [`Ledger::commit_group`] is
    /// committed at once, in one transaction and one sync (each batch, lease grant or stitch
    /// in it still all or nothing by itself, as a savepoint). The engine groups what it
    /// handles in one burst and sends the acks and units of the burst only after the commit.
    pub fn begin_group(&self) -> Result<(), LedgerError> {
        self.db.begin()
    }

    /// Commits the open group.
    pub fn commit_group(&self) -> Result<(), LedgerError> {
        self.db.commit()
    }

    /// A rig's earnings, one entry per card it reported or sent receipts for.
    pub fn earnings(&self, rig: &RigId) -> Result<Earnings, LedgerError> {
        let mut cards: BTreeMap<String, CardEarnings> = BTreeMap::new();
        for r in self
            .db
            .query("SELECT card FROM cards WHERE rig = ?1", p![rig.as_str()])?
        {
            cards.entry(r.text(0)?).or_default();
        }
        for r in self.db.query(
            "SELECT card, state, COUNT(*), COALESCE(CAST(SUM(micros) AS BIGINT), 0)
             FROM receipts WHERE rig = ?1 GROUP BY card, state",
            p![rig.as_str()],
        )? {
            let (count, micros) = (r.u64(2)?, r.u64(3)?);
            let line = cards.entry(r.text(0)?).or_default();
            match r.text(1)?.as_str() {
                "credited" => {
                    line.credited_units += count;
                    line.credited_micros += micros;
                }
                "pending" => {
                    line.pending_units += count;
                    line.pending_micros += micros;
                }
                _ => line.rejected_units += count,
            }
        }
        let cards = cards
            .into_iter()
            .map(|(card, mut line)| {
                let uuid = GpuUuid::new(card).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
                line.card = Some(uuid);
                Ok(line)
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        let r = self.db.query_one(
            "SELECT COALESCE(MAX(seq), 0), COUNT(*), COALESCE(MAX(changed_ms), 0)
             FROM receipts WHERE rig = ?1",
            p![rig.as_str()],
        )?;
        let (last_seq, recorded, updated_ms) = (r.u64(0)?, r.u64(1)?, r.u64(2)?);
        let (refused, refused_last) = self.refused_totals(rig)?;
        let pinned = self.registered(rig)?;
        let last_seq = last_seq.max(refused_last);
        Ok(Earnings {
            rig: rig.clone(),
            cards,
            micros_per_mflop: self.price()?,
            last_seq,
            missing_seqs: last_seq.saturating_sub(recorded.saturating_add(refused)),
            updated_ms,
            key_changed: pinned.as_ref().is_some_and(|p| p.key_changed),
            pinned_key: pinned.map(|p| p.key),
        })
    }

    fn price(&self) -> Result<u64, LedgerError> {
        Ok(self.meta("micros_per_mflop")?.unwrap_or(0))
    }

    /// The number kept under `key` in the ledger's meta table, if any.
    pub fn meta(&self, key: &str) -> Result<Option<u64>, LedgerError> {
        self.db
            .query_opt("SELECT value FROM meta WHERE key = ?1", p![key])?
            .map(|r| r.u64(0))
            .transpose()
    }

    /// Keeps `value` under `key` in the ledger's meta table.
    pub fn set_meta(&self, key: &str, value: u64) -> Result<(), LedgerError> {
        self.db.exec(
            "INSERT INTO meta(key, value) VALUES(?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            p![key, value],
        )?;
        Ok(())
    }

    /// Every rig in the registry (a rig is registered when its key is pinned).
    pub fn rigs(&self) -> Result<Vec<RigId>, LedgerError> {
        self.db
            .query("SELECT rig FROM rigs ORDER BY rig", p![])?
            .into_iter()
            .map(|r| parse_rig(r.text(0)?))
            .collect()
    }

    /// Every receipt sequence number recorded for `rig`, ascending.
    pub fn recorded_seqs(&self, rig: &RigId) -> Result<Vec<u64>, LedgerError> {
        let mut seqs = self
            .db
            .query(
                "SELECT seq FROM receipts WHERE rig = ?1 ORDER BY seq",
                p![rig.as_str()],
            )?
            .iter()
            .map(|r| r.u64(0))
            .collect::<Result<Vec<u64>, _>>()?;
        seqs.extend(
            self.refused_runs(rig)?
                .into_iter()
                .flat_map(|(first, last)| first..=last),
        );
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The units of `job` credited, each with the number of receipts credited for it
    /// (one, by construction), ascending by unit.
    pub fn credited_units(&self, job: &JobId) -> Result<Vec<(u64, u64)>, LedgerError> {
        self.db
            .query(
                "SELECT unit, COUNT(*) FROM receipts WHERE job = ?1 AND state = 'credited'
                 GROUP BY unit ORDER BY unit",
                p![job.as_str()],
            )?
            .iter()
            .map(|r| Ok((r.u64(0)?, r.u64(1)?)))
            .collect()
    }

    /// Receipts from `rig` received again after they were recorded.
    pub fn duplicate_deliveries(&self, rig: &RigId) -> Result<u64, LedgerError> {
        Ok(self
            .db
            .query_opt(
                "SELECT duplicates FROM deliveries WHERE rig = ?1",
                p![rig.as_str()],
            )?
            .map(|r| r.u64(0))
            .transpose()?
            .unwrap_or(0))
    }

    /// One registered rig with its pinned key, if registered.
    pub fn registered(&self, rig: &RigId) -> Result<Option<RegisteredRig>, LedgerError> {
        let rows = self.db.query(
            "SELECT rig, curve, pubkey, key_changed, from_seq FROM rigs WHERE rig = ?1",
            p![rig.as_str()],
        )?;
        Ok(registered_rigs(rows)?.into_iter().next())
    }

    /// Every registered rig with its pinned key.
    pub fn registry(&self) -> Result<Vec<RegisteredRig>, LedgerError> {
        registered_rigs(self.db.query(
            "SELECT rig, curve, pubkey, key_changed, from_seq FROM rigs ORDER BY rig",
            p![],
        )?)
    }

    /// Pins `key` for `rig` on first sight, or compares it with the pinned one; a different
    /// key marks the rig as changed for good.
    pub fn pin_key(
        &self,
        rig: &RigId,
        key: &PublicKey,
        now_ms: u64,
    ) -> Result<KeyCheck, LedgerError> {
        let (curve, bytes) = curve_key(key);
        let pinned = self.db.query_opt(
            "SELECT curve, pubkey FROM rigs WHERE rig = ?1",
            p![rig.as_str()],
        )?;
        match pinned {
            None => {
                let added = self.db.exec(
                    "INSERT INTO rigs(rig, curve, pubkey, first_seen_ms) VALUES(?1, ?2, ?3, ?4)
                     ON CONFLICT(rig) DO NOTHING",
                    p![rig.as_str(), curve, bytes, now_ms],
                )?;
                if added == 1 {
                    Ok(KeyCheck::Pinned)
                } else {
                    // Pinned meanwhile by another coordinator sharing this ledger.
                    self.pin_key(rig, key, now_ms)
                }
            }
            Some(r) if r.text(0)? == curve && r.blob(1)? == bytes => Ok(KeyCheck::Same),
            Some(_) => {
                self.db.exec(
                    "UPDATE rigs SET key_changed = 1 WHERE rig = ?1",
                    p![rig.as_str()],
                )?;
                Ok(KeyCheck::Changed)
            }
        }
    }

    /// Pins `key` for `rig` in place of its old key, trusted again, with its receipts below
    /// `from_seq` made under the old key (a rekey the registry vouches for); the rig's leases,
    /// granted under the old key, are dropped with it.
    pub fn rekey(
        &mut self,
        rig: &RigId,
        key: &PublicKey,
        from_seq: u64,
    ) -> Result<(), LedgerError> {
        let (curve, bytes) = curve_key(key);
        self.db.atomic(|tx| {
            tx.exec(
                "UPDATE rigs SET curve = ?2, pubkey = ?3, key_changed = 0, from_seq = ?4
                 WHERE rig = ?1",
                p![rig.as_str(), curve, bytes, from_seq],
            )?;
            tx.exec("DELETE FROM leases WHERE rig = ?1", p![rig.as_str()])?;
            Ok(())
        })
    }

    /// Remembers the cards a rig reported, so its earnings list every one of them.
    pub fn add_cards(&self, rig: &RigId, cards: &[GpuUuid]) -> Result<(), LedgerError> {
        for card in cards {
            self.db.exec(
                "INSERT INTO cards(rig, card) VALUES(?1, ?2) ON CONFLICT DO NOTHING",
                p![rig.as_str(), card.as_str()],
            )?;
        }
        Ok(())
    }

    /// Which of `seqs` are already recorded for `rig`.
    pub fn recorded_among(
        &self,
        rig: &RigId,
        seqs: Range<u64>,
    ) -> Result<HashSet<u64>, LedgerError> {
        let mut found = self
            .db
            .query(
                "SELECT seq FROM receipts WHERE rig = ?1 AND seq >= ?2 AND seq < ?3",
                p![rig.as_str(), seqs.start, seqs.end],
            )?
            .iter()
            .map(|r| r.u64(0))
            .collect::<Result<HashSet<u64>, _>>()?;
        found.extend(self.refused_among(rig, &seqs)?);
        Ok(found)
    }

    /// Records one batch in one transaction. A receipt whose `(rig, seq)` is already recorded
    /// counts as a duplicate and changes nothing. Returns the units whose credit was
    /// forfeited ([`BatchRecord::forfeit`]): they need a result again.
    pub fn record_batch(
        &mut self,
        rig: &RigId,
        batch: &BatchRecord<'_>,
        now_ms: u64,
    ) -> Result<Vec<u64>, LedgerError> {
        self.db.atomic(|tx| {
            let mut duplicates = batch.duplicates;
            for e in &batch.entries {
                let r = e.receipt;
                let added = tx.exec(
                    "INSERT INTO receipts(rig, seq, card, job, unit, attempt, work, state,
                     reason, micros, changed_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT DO NOTHING",
                    p![
                        r.rig.as_str(),
                        r.seq,
                        r.card.as_str(),
                        r.job.as_str(),
                        r.unit,
                        r.attempt,
                        r.work,
                        e.state.as_str(),
                        e.reason,
                        e.micros,
                        now_ms,
                    ],
                )?;
                if added == 0 {
                    duplicates += 1;
                }
            }
            for (job, unit, output) in &batch.kept_outputs {
                if let UnitOutput::MlpGrad {
                    loss_sum,
                    samples,
                    grad_sum,
                } = output
                {
                    tx.exec(
                        "INSERT INTO mlp_results(job, unit, loss_bits, samples, grad)
                         VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(job, unit) DO UPDATE SET
                         loss_bits = excluded.loss_bits, samples = excluded.samples,
                         grad = excluded.grad",
                        p![
                            job.as_str(),
                            *unit,
                            loss_sum.to_bits(),
                            *samples,
                            &f32_blob(grad_sum)
                        ],
                    )?;
                }
            }
            refused::insert(tx, rig, &batch.refused, now_ms)?;
            let forfeited = match batch.forfeit {
                Some((job, since_ms)) => forfeit::forfeit(tx, rig, job, since_ms, now_ms)?,
                None => vec![],
            };
            if let Some((job, until_ms)) = batch.suspend {
                leases::suspend(tx, rig, job, until_ms)?;
            }
            if duplicates > 0 {
                tx.exec(
                    "INSERT INTO deliveries(rig, duplicates) VALUES(?1, ?2)
                     ON CONFLICT(rig) DO UPDATE
                     SET duplicates = deliveries.duplicates + excluded.duplicates",
                    p![rig.as_str(), duplicates],
                )?;
            }
            Ok(forfeited)
        })
    }

    /// Receipt counts of `job` by state: `(credited or pending, rejected)`.
    pub fn job_counts(&self, job: &JobId) -> Result<(u64, u64), LedgerError> {
        let r = self.db.query_one(
            "SELECT COUNT(*) FILTER (WHERE state <> 'rejected'),
                    COUNT(*) FILTER (WHERE state = 'rejected')
             FROM receipts WHERE job = ?1",
            p![job.as_str()],
        )?;
        Ok((r.u64(0)?, r.u64(1)?))
    }
}

/// Registered rigs from rows of (rig, curve, pubkey, key_changed, from_seq).
fn registered_rigs(rows: Vec<db::Row>) -> Result<Vec<RegisteredRig>, LedgerError> {
    rows.into_iter()
        .map(|r| {
            let bytes = r.blob(2)?;
            let key = match r.text(1)?.as_str() {
                "secp256k1" => PublicKey::Secp256k1(bytes),
                "p256" => PublicKey::P256(bytes),
                other => return Err(LedgerError::Corrupt(format!("unknown curve {other}"))),
            };
            Ok(RegisteredRig {
                rig: parse_rig(r.text(0)?)?,
                key,
                key_changed: r.int(3)? != 0,
                from_seq: r.int(4)?.max(0) as u64,
            })
        })
        .collect()
}

mod db;
mod disputes;
mod forfeit;
mod leases;
mod payouts;
mod refused;
mod rollup;
mod training;

pub use disputes::OpenDispute;
pub use forfeit::FORFEITED;
pub use payouts::{EpochRecord, SentPost};
pub use refused::{push_refused, Refused};
pub use rollup::{CardDay, ReceiptLine, RefusedLine, DAY_MS};
pub use training::Checkpoint;

#[cfg(test)]
mod tests;

/// The file of a ledger the tests made at a path.
#[cfg(test)]
pub(crate) fn tests_file(location: &Location) -> PathBuf {
    match location {
        Location::File(path) => path.clone(),
        Location::Postgres(url) => panic!("{url} is not a file"),
    }
}
