//! The registry: claims and rigs in SQLite (WAL, `synchronous=FULL`).
//!
//! A claim is checked, its use counted, the rig's certificate recorded and the rig created in
//! one transaction, so a crash leaves either nothing or all of it. The rig id is derived from
//! the TLS key, and a key seen again gets the certificate already recorded back: a rig that
//! crashed before it received its answer, or whose answer was lost with the provisioner,
//! claims again and gets the same identity, with no second rig, no second certificate and no
//! second use of the claim.

use rigd_protocol::claim::{Inventory, Refusal, Rekey};
use rigd_protocol::{EthAddress, RigId};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::Path;

/// Why the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite failed.
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    /// No rig by that id.
    #[error("no rig {0} in the registry")]
    NoSuchRig(String),
    /// No owner by that name.
    #[error("no owner {0:?} in the registry (add the owner first)")]
    NoSuchOwner(String),
    /// An owner by that name exists already.
    #[error("owner {0:?} exists already")]
    OwnerExists(String),
    /// An owner name outside the allowed form.
    #[error("an owner name is 1 to 64 letters, digits, '.', '_' or '-'")]
    OwnerName,
}

/// An owner: the person the rigs of their claims belong to and are paid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The login name.
    pub name: String,
    /// Where payouts go.
    pub payout: EthAddress,
    /// When the owner was added (Unix ms).
    pub created_ms: u64,
}

/// Whether `name` is a valid owner name: 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
pub fn valid_owner_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A claim as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClaim {
    /// The token to put in rig.conf; only its hash is stored.
    pub token: String,
    /// The claim's number.
    pub id: i64,
}

/// A provisioned rig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RigRecord {
    /// Its id.
    pub rig: RigId,
    /// Its owner.
    pub owner: String,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// The certificate's serial, hex.
    pub serial: String,
    /// `active` or `revoked`.
    pub state: String,
}

/// What a successful claim gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The rig.
    pub record: RigRecord,
    /// Whether this request created it (false: a repeat of an earlier claim by this key).
    pub created: bool,
    /// Whether this request moved an existing rig to a new key (its old certificate is
    /// retired: the CRL must be written again).
    pub rekeyed: bool,
}

/// The receipt key the registry holds for a rig, as the coordinator checks a key it did not
/// pin: a rig rekeyed with its owner's claim has its new key here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VouchedKey {
    /// The receipt key, as [`rigd_protocol::PublicKey`] prints it.
    pub receipt_key: String,
    /// Receipts numbered below this were made under an earlier key (0: never rekeyed).
    pub from_seq: u64,
}

/// The registry database.
pub struct Registry {
    db: Connection,
}

/// The rekey half of [`Registry::claim`], inside its transaction: the claim `claim_id` of
/// `owner` is valid and has a use left.
#[allow(clippy::too_many_arguments)]
fn rekey_rig<E>(
    tx: rusqlite::Transaction<'_>,
    rekey: &Rekey,
    claim_id: i64,
    owner: &str,
    tls_key: &[u8],
    inventory: &Inventory,
    now_ms: u64,
    issue: impl FnOnce(&RigId) -> Result<(String, String), E>,
) -> Result<Result<Claimed, Refusal>, RegistryError> {
    let rig = &rekey.rig;
    let current = tx
        .query_row(
            "SELECT owner, serial, state FROM rigs WHERE id = ?1",
            params![rig.as_str()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((rig_owner, old_serial, state)) = current else {
        return Ok(Err(Refusal::NotYourRig));
    };
    if rig_owner != owner {
        return Ok(Err(Refusal::NotYourRig));
    }
    if state != "active" {
        return Ok(Err(Refusal::RigRevoked));
    }
    let Ok((cert_pem, serial)) = issue(rig) else {
        return Ok(Err(Refusal::Internal));
    };
    let inventory_text = serde_json::to_string(inventory).unwrap_or_default();
    tx.execute(
        "INSERT OR IGNORE INTO retired_certs (serial, rig, retired_ms) VALUES (?1, ?2, ?3)",
        params![old_serial, rig.as_str(), now_ms as i64],
    )?;
    tx.execute(
        "UPDATE rigs SET tls_key = ?2, receipt_key = ?3, cert_pem = ?4, serial = ?5,
                inventory = ?6, claim = ?7, rekey_from_seq = ?8
         WHERE id = ?1",
        params![
            rig.as_str(),
            tls_key,
            inventory.receipt_key.to_string(),
            cert_pem,
            serial,
            inventory_text,
            claim_id,
            i64::try_from(rekey.from_seq).unwrap_or(i64::MAX)
        ],
    )?;
    tx.execute(
        "UPDATE claims SET uses_left = uses_left - 1 WHERE id = ?1",
        params![claim_id],
    )?;
    tx.commit()?;
    tracing::warn!(rig = %rig, owner, from_seq = rekey.from_seq, retired = %old_serial, "rig moved to a new key");
    Ok(Ok(Claimed {
        record: RigRecord {
            rig: rig.clone(),
            owner: owner.to_owned(),
            cert_pem,
            serial,
            state: "active".into(),
        },
        created: false,
        rekeyed: true,
    }))
}

/// The rig id for a TLS key: `rig-` and 16 hex digits of its SHA-256.
pub fn rig_id_for(tls_key: &[u8]) -> RigId {
    let h = rigd_client::sha256(tls_key);
    // 16 hex digits and a dash are always a valid rig id.
    RigId::new(format!("rig-{}", hex::encode(&h[..8])))
        .unwrap_or_else(|_| unreachable!("rig-<hex> is a valid rig id"))
}

/// SHA-256 of a claim token, as stored.
fn token_hash(token: &str) -> Vec<u8> {
    rigd_client::sha256(token.as_bytes()).to_vec()
}

impl Registry {
    /// Opens (creating) the registry at `path`.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS claims (
                id INTEGER PRIMARY KEY,
                token_hash BLOB NOT NULL UNIQUE,
                owner TEXT NOT NULL,
                uses_left INTEGER NOT NULL,
                expires_ms INTEGER NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS owners (
                name TEXT PRIMARY KEY,
                payout TEXT NOT NULL,
                password TEXT NOT NULL,
                created_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS rigs (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                tls_key BLOB NOT NULL UNIQUE,
                receipt_key TEXT NOT NULL,
                cert_pem TEXT NOT NULL,
                serial TEXT NOT NULL UNIQUE,
                inventory TEXT NOT NULL,
                state TEXT NOT NULL,
                claim INTEGER NOT NULL REFERENCES claims(id),
                created_ms INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS rigs_by_owner ON rigs(owner, id);
            CREATE TABLE IF NOT EXISTS retired_certs (
                serial TEXT PRIMARY KEY,
                rig TEXT NOT NULL,
                retired_ms INTEGER NOT NULL
            );",
        )?;
        let has_from_seq = db
            .prepare("SELECT 1 FROM pragma_table_info('rigs') WHERE name = 'rekey_from_seq'")?
            .exists([])?;
        if !has_from_seq {
            db.execute("ALTER TABLE rigs ADD COLUMN rekey_from_seq INTEGER", [])?;
        }
        Ok(Registry { db })
    }

    /// Opens an existing registry read-only (WAL lets it run beside the provisioner): the
    /// owners' dashboard reads owners and rigs this way.
    pub fn open_read_only(path: &Path) -> Result<Registry, RegistryError> {
        let db = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Registry { db })
    }

    /// Adds an owner paid at `payout`; returns their password, generated here and shown once
    /// (only its hash is stored).
    pub fn add_owner(
        &mut self,
        name: &str,
        payout: &EthAddress,
        now_ms: u64,
    ) -> Result<String, RegistryError> {
        if !valid_owner_name(name) {
            return Err(RegistryError::OwnerName);
        }
        let password = crate::password::generate();
        let inserted = self.db.execute(
            "INSERT OR IGNORE INTO owners (name, payout, password, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, payout.to_string(), crate::password::hash(&password), now_ms as i64],
        )?;
        if inserted == 0 {
            return Err(RegistryError::OwnerExists(name.to_owned()));
        }
        Ok(password)
    }

    /// Gives `name` a new generated password (the old one stops working); returns it.
    pub fn reset_password(&mut self, name: &str) -> Result<String, RegistryError> {
        let password = crate::password::generate();
        let changed = self.db.execute(
            "UPDATE owners SET password = ?2 WHERE name = ?1",
            params![name, crate::password::hash(&password)],
        )?;
        if changed == 0 {
            return Err(RegistryError::NoSuchOwner(name.to_owned()));
        }
        Ok(password)
    }

    /// The owner `name`, when `password` is theirs; `None` for an unknown name or a wrong
    /// password alike.
    pub fn login(&self, name: &str, password: &str) -> Result<Option<Owner>, RegistryError> {
        let row = self
            .db
            .query_row(
                "SELECT password FROM owners WHERE name = ?1",
                params![name],
                |r| r.get::<_, String>(0),
            )
            .optional()?;
        match row {
            Some(stored) if crate::password::verify(&stored, password) => self.owner(name),
            Some(_) => Ok(None),
            None => {
                crate::password::verify_nothing(password);
                Ok(None)
            }
        }
    }

    /// The owner `name`, if there is one.
    pub fn owner(&self, name: &str) -> Result<Option<Owner>, RegistryError> {
        let row = self
            .db
            .query_row(
                "SELECT name, payout, created_ms FROM owners WHERE name = ?1",
                params![name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.and_then(|(name, payout, created_ms)| {
            Some(Owner {
                name,
                payout: EthAddress::parse(&payout).ok()?,
                created_ms: created_ms as u64,
            })
        }))
    }

    /// Every owner, by name, with how many rigs they have.
    pub fn owners_with_rig_counts(&self) -> Result<Vec<(Owner, u64)>, RegistryError> {
        let mut st = self.db.prepare(
            "SELECT o.name, o.payout, o.created_ms, (SELECT COUNT(*) FROM rigs r WHERE r.owner = o.name)
             FROM owners o ORDER BY o.name",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = vec![];
        for row in rows {
            let (name, payout, created_ms, rigs) = row?;
            if let Ok(payout) = EthAddress::parse(&payout) {
                let owner = Owner {
                    name,
                    payout,
                    created_ms: created_ms as u64,
                };
                out.push((owner, rigs as u64));
            }
        }
        Ok(out)
    }

    /// Creates a claim for `owner` (who must exist), usable `uses` times until `expires_ms`.
    pub fn create_claim(
        &mut self,
        owner: &str,
        uses: u32,
        expires_ms: u64,
    ) -> Result<NewClaim, RegistryError> {
        if self.owner(owner)?.is_none() {
            return Err(RegistryError::NoSuchOwner(owner.to_owned()));
        }
        let token = format!(
            "rc_{}{}",
            hex::encode(rand::random::<[u8; 16]>()),
            hex::encode(rand::random::<[u8; 8]>())
        );
        self.db.execute(
            "INSERT INTO claims (token_hash, owner, uses_left, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash(&token), owner, uses, expires_ms as i64],
        )?;
        Ok(NewClaim {
            token,
            id: self.db.last_insert_rowid(),
        })
    }

    /// Revokes the claim with `token`; `false` when there is none.
    pub fn revoke_claim(&mut self, token: &str) -> Result<bool, RegistryError> {
        Ok(self.db.execute(
            "UPDATE claims SET revoked = 1 WHERE token_hash = ?1",
            params![token_hash(token)],
        )? == 1)
    }

    /// Checks a claim and, in the same transaction, records the rig with the certificate
    /// `issue` makes for it. `issue` runs only for a new rig or a rekey.
    ///
    /// With `rekey`, the claim moves the existing rig `rekey.rig` to this key instead of
    /// creating one: only a claim of that rig's owner with a use left does (a use is spent,
    /// as for a new rig), and the rig's old certificate is retired.
    pub fn claim<E>(
        &mut self,
        token: &str,
        tls_key: &[u8],
        inventory: &Inventory,
        rekey: Option<&Rekey>,
        now_ms: u64,
        issue: impl FnOnce(&RigId) -> Result<(String, String), E>,
    ) -> Result<Result<Claimed, Refusal>, RegistryError> {
        let tx = self
            .db
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing = tx
            .query_row(
                "SELECT id, owner, cert_pem, serial, state FROM rigs WHERE tls_key = ?1",
                params![tls_key],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()?;
        if let Some((id, owner, cert_pem, serial, state)) = existing {
            if state != "active" {
                return Ok(Err(Refusal::RigRevoked));
            }
            let rig = RigId::new(id).map_err(|_| rusqlite::Error::InvalidQuery)?;
            return Ok(Ok(Claimed {
                record: RigRecord {
                    rig,
                    owner,
                    cert_pem,
                    serial,
                    state,
                },
                created: false,
                rekeyed: false,
            }));
        }
        let claim = tx
            .query_row(
                "SELECT id, owner, uses_left, expires_ms, revoked FROM claims WHERE token_hash = ?1",
                params![token_hash(token)],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, bool>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((claim_id, owner, uses_left, expires_ms, revoked)) = claim else {
            return Ok(Err(Refusal::UnknownClaim));
        };
        if revoked {
            return Ok(Err(Refusal::Revoked));
        }
        if expires_ms <= now_ms as i64 {
            return Ok(Err(Refusal::Expired));
        }
        if uses_left <= 0 {
            return Ok(Err(Refusal::UsedUp));
        }
        if let Some(rekey) = rekey {
            return rekey_rig(
                tx, rekey, claim_id, &owner, tls_key, inventory, now_ms, issue,
            );
        }
        let rig = rig_id_for(tls_key);
        let Ok((cert_pem, serial)) = issue(&rig) else {
            return Ok(Err(Refusal::Internal));
        };
        let inventory_text = serde_json::to_string(inventory).unwrap_or_default();
        tx.execute(
            "INSERT INTO rigs (id, owner, tls_key, receipt_key, cert_pem, serial, inventory, state, claim, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'active', ?8, ?9)",
            params![
                rig.as_str(),
                owner,
                tls_key,
                inventory.receipt_key.to_string(),
                cert_pem,
                serial,
                inventory_text,
                claim_id,
                now_ms as i64
            ],
        )?;
        tx.execute(
            "UPDATE claims SET uses_left = uses_left - 1 WHERE id = ?1",
            params![claim_id],
        )?;
        tx.commit()?;
        Ok(Ok(Claimed {
            record: RigRecord {
                rig,
                owner,
                cert_pem,
                serial,
                state: "active".into(),
            },
            created: true,
            rekeyed: false,
        }))
    }

    /// The receipt key of the active rig `rig`, if the registry knows one.
    pub fn vouched_key(&self, rig: &RigId) -> Result<Option<VouchedKey>, RegistryError> {
        Ok(self
            .db
            .query_row(
                "SELECT receipt_key, rekey_from_seq FROM rigs WHERE id = ?1 AND state = 'active'",
                params![rig.as_str()],
                |r| {
                    Ok(VouchedKey {
                        receipt_key: r.get(0)?,
                        from_seq: r.get::<_, Option<i64>>(1)?.map_or(0, |s| s.max(0) as u64),
                    })
                },
            )
            .optional()?)
    }

    /// Marks `rig` revoked; returns its certificate serial.
    pub fn revoke_rig(&mut self, rig: &str) -> Result<String, RegistryError> {
        let serial: Option<String> = self
            .db
            .query_row(
                "UPDATE rigs SET state = 'revoked' WHERE id = ?1 RETURNING serial",
                params![rig],
                |r| r.get(0),
            )
            .optional()?;
        serial.ok_or_else(|| RegistryError::NoSuchRig(rig.to_owned()))
    }

    /// Serials of every revoked rig certificate and every certificate retired by a rekey (for
    /// the CRL).
    pub fn revoked_serials(&self) -> Result<Vec<String>, RegistryError> {
        let mut st = self.db.prepare(
            "SELECT serial FROM rigs WHERE state = 'revoked'
                 UNION SELECT serial FROM retired_certs ORDER BY 1",
        )?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ids of every revoked rig.
    pub fn revoked_rigs(&self) -> Result<Vec<String>, RegistryError> {
        let mut st = self
            .db
            .prepare("SELECT id FROM rigs WHERE state = 'revoked' ORDER BY id")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every rig: (id, owner, state, serial).
    pub fn rigs(&self) -> Result<Vec<RigRecord>, RegistryError> {
        self.rigs_where("", [])
    }

    /// Where each rig's payouts go: its owner's payout address, for every rig the registry
    /// holds (revoked ones too: what they earned before is still their owner's).
    pub fn payout_addresses(&self) -> Result<BTreeMap<RigId, EthAddress>, RegistryError> {
        let mut st = self
            .db
            .prepare("SELECT r.id, o.payout FROM rigs r JOIN owners o ON o.name = r.owner")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (id, payout) = row?;
            if let (Ok(rig), Ok(payout)) = (RigId::new(id), EthAddress::parse(&payout)) {
                out.insert(rig, payout);
            }
        }
        Ok(out)
    }

    /// The rigs of `owner`, by id.
    pub fn owner_rigs(&self, owner: &str) -> Result<Vec<RigRecord>, RegistryError> {
        self.rigs_where("WHERE owner = ?1", [owner])
    }

    fn rigs_where<P: rusqlite::Params>(
        &self,
        filter: &str,
        params: P,
    ) -> Result<Vec<RigRecord>, RegistryError> {
        let mut st = self.db.prepare(&format!(
            "SELECT id, owner, cert_pem, serial, state FROM rigs {filter} ORDER BY id"
        ))?;
        let rows = st.query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = vec![];
        for row in rows {
            let (id, owner, cert_pem, serial, state) = row?;
            if let Ok(rig) = RigId::new(id) {
                out.push(RigRecord {
                    rig,
                    owner,
                    cert_pem,
                    serial,
                    state,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_protocol::PublicKey;

    fn inventory() -> Inventory {
        Inventory {
            cards: vec![],
            driver: "none".into(),
            agent_version: "0.1.0".into(),
            receipt_key: PublicKey::P256(vec![2; 33]),
        }
    }

    fn issue(rig: &RigId) -> Result<(String, String), ()> {
        Ok((format!("cert of {rig}"), format!("serial-{rig}")))
    }

    fn add_owners(r: &mut Registry, names: &[&str]) {
        let payout = EthAddress([7; 20]);
        for name in names {
            r.add_owner(name, &payout, 1)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn owners_log_in_with_their_generated_password_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("r.db");
        let mut r = Registry::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let payout = EthAddress([9; 20]);
        let pw = r
            .add_owner("alice", &payout, 5)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            r.add_owner("alice", &payout, 6),
            Err(RegistryError::OwnerExists(_))
        ));
        for bad in ["", "a b", "x'--", &"a".repeat(65), "<script>"] {
            assert!(
                matches!(r.add_owner(bad, &payout, 6), Err(RegistryError::OwnerName)),
                "{bad:?}"
            );
        }
        assert!(matches!(
            r.create_claim("nobody", 1, u64::MAX / 2),
            Err(RegistryError::NoSuchOwner(_))
        ));
        let read = Registry::open_read_only(&path).unwrap_or_else(|e| panic!("{e}"));
        let alice = read.login("alice", &pw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            alice,
            Some(Owner {
                name: "alice".into(),
                payout,
                created_ms: 5
            })
        );
        assert_eq!(read.login("alice", "guess").unwrap_or_default(), None);
        assert_eq!(read.login("bob", &pw).unwrap_or_default(), None);
        let fresh = r.reset_password("alice").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.login("alice", &pw).unwrap_or_default(), None);
        assert!(read.login("alice", &fresh).unwrap_or_default().is_some());
        let mut read = read;
        assert!(read.reset_password("alice").is_err(), "read-only");
    }

    #[test]
    fn a_claim_is_refused_when_unknown_expired_revoked_or_used_up() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut r = Registry::open(&dir.path().join("r.db")).unwrap_or_else(|e| panic!("{e}"));
        let claim = |r: &mut Registry, token: &str, key: &[u8], now: u64| {
            r.claim(token, key, &inventory(), None, now, issue)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(
            claim(&mut r, "nope", b"k0", 0).err(),
            Some(Refusal::UnknownClaim)
        );
        add_owners(&mut r, &["alice", "bob"]);
        let c = r
            .create_claim("alice", 1, 1000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            claim(&mut r, &c.token, b"k1", 1000).err(),
            Some(Refusal::Expired)
        );
        let first = claim(&mut r, &c.token, b"k1", 999).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(first.created);
        assert_eq!(first.record.owner, "alice");
        assert_eq!(
            claim(&mut r, &c.token, b"k2", 999).err(),
            Some(Refusal::UsedUp)
        );
        // The same key again: the same rig and certificate, no use counted.
        let again = claim(&mut r, &c.token, b"k1", 999).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!again.created);
        assert_eq!(again.record, first.record);
        let d = r
            .create_claim("bob", 5, 1000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.revoke_claim(&d.token).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            claim(&mut r, &d.token, b"k3", 0).err(),
            Some(Refusal::Revoked)
        );
        let serial = r
            .revoke_rig(first.record.rig.as_str())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serial, first.record.serial);
        assert_eq!(
            claim(&mut r, &c.token, b"k1", 999).err(),
            Some(Refusal::RigRevoked)
        );
        assert_eq!(r.revoked_serials().unwrap_or_default(), vec![serial]);
        assert_eq!(
            r.revoked_rigs().unwrap_or_default(),
            vec![first.record.rig.to_string()]
        );
        assert_eq!(r.rigs().unwrap_or_default().len(), 1);
    }

    #[test]
    fn a_rekey_keeps_the_rig_for_its_owners_claim_and_retires_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut r = Registry::open(&dir.path().join("r.db")).unwrap_or_else(|e| panic!("{e}"));
        add_owners(&mut r, &["alice", "bob"]);
        let a = r
            .create_claim("alice", 3, u64::MAX / 2)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = r
            .create_claim("bob", 1, u64::MAX / 2)
            .unwrap_or_else(|e| panic!("{e}"));
        let issued = std::cell::Cell::new(0);
        let claim = |r: &mut Registry, token: &str, key: &[u8], rekey: Option<&Rekey>| {
            let mut inv = inventory();
            inv.receipt_key = PublicKey::P256(vec![key.len() as u8; 33]);
            r.claim(token, key, &inv, rekey, 5, |rig: &RigId| {
                issued.set(issued.get() + 1);
                Ok::<_, ()>((format!("cert {rig}"), format!("serial-{}", issued.get())))
            })
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let first = claim(&mut r, &a.token, b"k1", None).unwrap_or_else(|e| panic!("{e:?}"));
        let rig = first.record.rig.clone();
        let rekey = Rekey {
            rig: rig.clone(),
            from_seq: 7,
        };
        assert_eq!(
            claim(&mut r, &b.token, b"key2", Some(&rekey)).err(),
            Some(Refusal::NotYourRig),
            "another owner's claim cannot take the rig"
        );
        let nobody = Rekey {
            rig: RigId::new("rig-nope").unwrap_or_else(|e| panic!("{e}")),
            from_seq: 1,
        };
        assert_eq!(
            claim(&mut r, &a.token, b"key2", Some(&nobody)).err(),
            Some(Refusal::NotYourRig)
        );
        let moved =
            claim(&mut r, &a.token, b"key2", Some(&rekey)).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(moved.rekeyed && !moved.created);
        assert_eq!(moved.record.rig, rig, "the same rig id");
        assert_ne!(
            moved.record.serial, first.record.serial,
            "a new certificate"
        );
        assert_eq!(
            r.vouched_key(&rig).unwrap_or_default(),
            Some(VouchedKey {
                receipt_key: PublicKey::P256(vec![4; 33]).to_string(),
                from_seq: 7
            })
        );
        assert_eq!(
            r.revoked_serials().unwrap_or_default(),
            vec![first.record.serial.clone()],
            "the old certificate is in the CRL"
        );
        let again =
            claim(&mut r, &a.token, b"key2", Some(&rekey)).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!again.rekeyed, "a repeat of the rekey changes nothing");
        assert_eq!(again.record, moved.record);
        assert!(
            claim(&mut r, &a.token, b"k3", None).is_ok(),
            "two of three uses spent"
        );
        assert_eq!(
            claim(&mut r, &a.token, b"k4", None).err(),
            Some(Refusal::UsedUp)
        );
        assert_eq!(r.rigs().unwrap_or_default().len(), 2);
    }
}
