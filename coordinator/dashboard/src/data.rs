//! What an owner may read, from the provisioner's registry (owners and their rigs) and the
//! coordinator's ledger (receipts, refused runs, the daily rollup), both opened read-only.
//! Every query names the owner and reads only that owner's rigs: a rig of another owner is
//! answered exactly like a rig that does not exist.

use rigd_coordinator::ledger::{CardDay, Ledger, LedgerError, Location, ReceiptLine, RefusedLine};
use rigd_coordinator::statement::SignedStatement;
use rigd_protocol::owner_api::{CardTotal, DayTotal, OwnerEarnings, Totals};
use rigd_protocol::RigId;
use rigd_provisioning::registry::{Owner, Registry, RegistryError, RigRecord};
use std::path::PathBuf;
use std::sync::Mutex;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The registry could not be read.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// The ledger could not be read.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
}

/// Most receipts or refused runs one answer holds.
pub const MAX_LINES: u32 = 500;

struct Conns {
    registry: Registry,
    ledger: Ledger,
}

/// Read-only connections to the registry and the ledger, kept for reuse (at most
/// `max_idle` idle at once; a busy moment opens more and closes them after).
pub struct Store {
    registry: PathBuf,
    ledger: Location,
    idle: Mutex<Vec<Conns>>,
    max_idle: usize,
}

/// A ledger row's sums.
fn totals(d: &CardDay) -> Totals {
    Totals {
        credited_micros: d.credited_micros,
        pending_micros: d.pending_micros,
        credited: d.credited,
        pending: d.pending,
        rejected: d.rejected,
        payable_micros: d.credited_micros,
        paid_micros: 0,
    }
}

impl Store {
    /// A store over the registry database at this path and the ledger at `ledger` (a
    /// SQLite file or a PostgreSQL database).
    pub fn new(registry: PathBuf, ledger: impl Into<Location>, max_idle: usize) -> Self {
        Self {
            registry,
            ledger: ledger.into(),
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Conns) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conns = match idle {
            Some(c) => c,
            None => Conns {
                registry: Registry::open_read_only(&self.registry)?,
                ledger: Ledger::open_at(&self.ledger)?,
            },
        };
        let out = f(&conns);
        if out.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.max_idle {
                idle.push(conns);
            }
        }
        out
    }

    /// The owner `name` when `password` is theirs.
    pub fn login(&self, name: &str, password: &str) -> Result<Option<Owner>, StoreError> {
        self.with(|c| Ok(c.registry.login(name, password)?))
    }

    /// The owner `name`.
    pub fn owner(&self, name: &str) -> Result<Option<Owner>, StoreError> {
        self.with(|c| Ok(c.registry.owner(name)?))
    }

    /// The owner's rigs as the registry has them.
    pub fn rigs(&self, owner: &str) -> Result<Vec<RigRecord>, StoreError> {
        self.with(|c| Ok(c.registry.owner_rigs(owner)?))
    }

    /// When the ledger last recorded or changed a receipt of `rig`.
    pub fn last_change_ms(&self, rig: &RigId) -> Result<Option<u64>, StoreError> {
        self.with(|c| Ok(c.ledger.last_change_ms(rig)?))
    }

    /// The owner's earnings.
    pub fn earnings(&self, owner: &str) -> Result<OwnerEarnings, StoreError> {
        self.with(|c| {
            let mut total = Totals::default();
            let mut days = std::collections::BTreeMap::<u64, Totals>::new();
            let mut cards = std::collections::BTreeMap::<(String, String), Totals>::new();
            let mut paid = 0u64;
            for rig in c.registry.owner_rigs(owner)? {
                paid = paid.saturating_add(c.ledger.paid(&rig.rig)?);
                for d in c.ledger.card_days(&rig.rig)? {
                    let t = totals(&d);
                    total.add(&t);
                    days.entry(d.day).or_default().add(&t);
                    cards.entry((d.rig, d.card)).or_default().add(&t);
                }
            }
            // Payouts are per rig and epoch, not per day or card: the total carries them.
            total.paid_micros = paid;
            total.payable_micros = total.credited_micros.saturating_sub(paid);
            Ok(OwnerEarnings {
                total,
                days: days
                    .into_iter()
                    .map(|(day, totals)| DayTotal { day, totals })
                    .collect(),
                cards: cards
                    .into_iter()
                    .map(|((rig, card), totals)| CardTotal { rig, card, totals })
                    .collect(),
            })
        })
    }

    /// Receipts of the owner's rig `rig` below sequence number `before` (all when `None`),
    /// newest first; `None` when the owner has no such rig.
    pub fn receipts(
        &self,
        owner: &str,
        rig: &RigId,
        before: Option<u64>,
        rejected_only: bool,
        limit: u32,
    ) -> Result<Option<Vec<ReceiptLine>>, StoreError> {
        self.with(|c| {
            if !owns(&c.registry, owner, rig)? {
                return Ok(None);
            }
            Ok(Some(c.ledger.receipt_lines(
                rig,
                before,
                rejected_only,
                limit.min(MAX_LINES),
            )?))
        })
    }

    /// The owner's disputes: rejected receipts and refused runs of all their rigs, newest
    /// first, at most `MAX_LINES` of each.
    pub fn disputes(
        &self,
        owner: &str,
    ) -> Result<(Vec<ReceiptLine>, Vec<RefusedLine>), StoreError> {
        self.with(|c| {
            let mut rejected = Vec::new();
            let mut refused = Vec::new();
            for rig in c.registry.owner_rigs(owner)? {
                rejected.extend(c.ledger.receipt_lines(&rig.rig, None, true, MAX_LINES)?);
                refused.extend(c.ledger.refused_lines(&rig.rig, MAX_LINES)?);
            }
            rejected.sort_by_key(|r| std::cmp::Reverse(r.changed_ms));
            rejected.truncate(MAX_LINES as usize);
            refused.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
            refused.truncate(MAX_LINES as usize);
            Ok((rejected, refused))
        })
    }

    /// The network's latest signed credit statement of each of the owner's rigs (those the
    /// payout run has signed one for), by rig.
    pub fn statements(&self, owner: &str) -> Result<Vec<SignedStatement>, StoreError> {
        self.with(|c| {
            let mut out = Vec::new();
            for rig in c.registry.owner_rigs(owner)? {
                out.extend(c.ledger.statement(&rig.rig)?);
            }
            Ok(out)
        })
    }
}

fn owns(registry: &Registry, owner: &str, rig: &RigId) -> Result<bool, StoreError> {
    Ok(registry.owner_rigs(owner)?.iter().any(|r| &r.rig == rig))
}
