//! The coordinator's core: ties the job, the scheduler, the checks and the ledger together.
//! It takes decoded messages and the time, writes the ledger, and returns what to publish;
//! the MQTT shell does the rest.

use crate::inbound::{self, Inbound};
use crate::job::{Job, Stitched};
use crate::ledger::{KeyCheck, Ledger, LedgerError};
use crate::quota::BatchRate;
use crate::recompute::Recompute;
use crate::scheduler::Scheduler;
use crate::verify::{Rejection, Sampler};
use crate::{CoordinatorConfig, CoordinatorError};
use rigd_protocol::messages::MAX_UNITS_PER_MESSAGE;
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{
    encode, CoordinatorStatus, PublicKey, RigId, RigState, RigStatus, UnitAssignment, UnitKind,
    MAX_FRAME_BYTES,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Earnings of one rig are published at most this often.
pub const EARNINGS_INTERVAL_MS: u64 = 200;

/// A batch may start at most this far above the highest sequence number recorded for its
/// rig; one further ahead is refused unrecorded. rigd keeps at most `max_unacked_receipts`
/// (default 200,000) unacknowledged, well inside the window.
pub const SEQ_WINDOW: u64 = 1 << 20;

/// Something for the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// Publish.
    Publish {
        /// Topic.
        topic: String,
        /// Frame.
        payload: Vec<u8>,
        /// Retained.
        retain: bool,
        /// How it is delivered.
        delivery: Delivery,
    },
    /// Report progress to the local listener.
    Progress(CoordinatorStatus),
    /// Recompute these results off the engine's thread and hand the outputs to
    /// [`Engine::recomputed`].
    Recompute(Recompute),
}

/// What became of one receipt of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted { verified: bool },
    Rejected { why: Rejection, requeue: bool },
}

/// A rig's pinned receipt key, as batches are checked against it.
#[derive(Debug, Clone)]
struct Pinned {
    key: PublicKey,
    /// It announced another key that no registry vouches for: its batches are refused.
    changed: bool,
    /// Receipts numbered below this were made under an earlier key: refused.
    from_seq: u64,
    /// The last key it announced that the registry did not hold for it (not read again).
    unvouched: Option<PublicKey>,
}

impl Pinned {
    fn new(key: PublicKey) -> Self {
        Self {
            key,
            changed: false,
            from_seq: 0,
            unvouched: None,
        }
    }
}

/// The coordinator's state.
#[derive(Debug)]
pub struct Engine {
    ledger: Ledger,
    job: Job,
    scheduler: Scheduler,
    sampler: Sampler,
    tolerance: f32,
    price: u64,
    keys: HashMap<RigId, Pinned>,
    /// The provisioner's registry, which vouches for the keys of rekeyed rigs.
    registry: Option<std::path::PathBuf>,
    /// The highest sequence number recorded per rig, read from the ledger on first use.
    high_water: HashMap<RigId, u64>,
    lease_ms: u64,
    online: BTreeMap<RigId, bool>,
    /// Results of each rig verified by recomputation in this run.
    verified: HashMap<RigId, u32>,
    /// Each rig's recompute budget: (flops left, may be negative; when last refilled, ms).
    budgets: HashMap<RigId, (i64, u64)>,
    /// Each rig's batch rate.
    batch_rate: BatchRate,
    /// Batches waiting for their recomputation, by ticket.
    pending: HashMap<u64, batch::Pending>,
    /// Sequence ranges `[first, end)` of each rig's waiting batches.
    pending_seqs: HashMap<RigId, Vec<(u64, u64)>>,
    /// Units whose results wait for their recomputation.
    in_recompute: HashSet<u64>,
    next_ticket: u64,
    trust: crate::Trust,
    /// The deployments whose batches are credited.
    domains: Vec<rigd_protocol::Domain>,
    earnings_dirty: BTreeSet<RigId>,
    /// Warnings for undecodable messages, at most one a second (a rig choosing to send
    /// garbage must not choose how much the coordinator logs).
    bad_input_warnings: WarnLimit,
    earnings_sent: HashMap<RigId, u64>,
    units_done: u64,
    units_verified: u64,
    units_rejected: u64,
    leases_expired: u64,
    batches_refused: u64,
    /// Batches admitted whose signature another replica checked.
    batches_checked_elsewhere: u64,
    receipts_credited: u64,
    progress_every: u64,
    finished_reported: bool,
}

/// How a publish is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// QoS 1: units and the coordinator's status.
    AtLeastOnce,
    /// QoS 0: acks and refusals (one lost costs the rig a resend, which is answered again)
    /// and the retained earnings (each supersedes the last; the broker keeps the latest).
    /// They need no broker acknowledgement of their own and take no in-flight slot of the
    /// coordinator's connection, which the units keep.
    AtMostOnce,
}

fn publish(topic: String, payload: Vec<u8>, retain: bool) -> Outbound {
    Outbound::Publish {
        topic,
        payload,
        retain,
        delivery: Delivery::AtLeastOnce,
    }
}

/// An ack or refusal to `rig` (at most once: the rig's resend recovers a lost one).
fn answer(rig: &RigId, payload: Vec<u8>) -> Outbound {
    Outbound::Publish {
        topic: topics::rig(rig, Channel::Acks),
        payload,
        retain: false,
        delivery: Delivery::AtMostOnce,
    }
}

impl Engine {
    /// Opens the ledger, builds the job and resumes it from what the ledger holds.
    pub fn open(config: &CoordinatorConfig, now_ms: u64) -> Result<Self, CoordinatorError> {
        let ledger = Ledger::create_at(&config.ledger, config.micros_per_mflop)?;
        Self::resume(ledger, config, now_ms)
    }

    /// Builds the job and resumes it from what `ledger` holds (a coordinator that leads the
    /// job on it: see [`Ledger::try_lead`]).
    pub fn resume(
        mut ledger: Ledger,
        config: &CoordinatorConfig,
        now_ms: u64,
    ) -> Result<Self, CoordinatorError> {
        let mut job = Job::new(&config.job)?;
        let id = job.id().clone();
        let credited: Vec<u64> = ledger
            .credited_units(&id)?
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        let restored = job
            .restore(
                ledger.checkpoint(&id)?,
                &ledger.kept_outputs(&id)?,
                &credited,
            )
            .map_err(|e| CoordinatorError::Config(format!("cannot resume the job: {e}")))?;
        let mut dirty = BTreeSet::new();
        let mut receipts_credited = 0;
        if let Some(s) = restored {
            let (rigs, credited) = ledger.stitch(&id, s.units, &s.checkpoint, now_ms)?;
            dirty.extend(rigs);
            receipts_credited = credited;
        }
        let keys = ledger
            .registry()?
            .into_iter()
            .map(|r| {
                let pinned = Pinned {
                    key: r.key,
                    changed: r.key_changed,
                    from_seq: r.from_seq,
                    unvouched: None,
                };
                (r.rig, pinned)
            })
            .collect();
        let (units_done, units_rejected) = ledger.job_counts(&id)?;
        let mut scheduler = Scheduler::new(
            config.lease_ms,
            config.lease_grace_ms,
            config.units_per_card,
        );
        scheduler.add_units(job.open_units());
        for lease in ledger.leases(&id)? {
            scheduler.restore_lease(lease);
        }
        for (rig, until_ms) in ledger.suspensions(&id)? {
            scheduler.suspend(&rig, until_ms);
        }
        let units = match &config.job {
            crate::JobSpec::Gemm { units, .. } => *units,
            crate::JobSpec::TrainMlp { .. } => 1,
        };
        tracing::info!(job = %id, open_units = scheduler.live_units(), "job ready");
        Ok(Self {
            ledger,
            job,
            scheduler,
            sampler: Sampler::new(config.verify_fraction),
            tolerance: config.float_rel_tolerance,
            price: config.micros_per_mflop,
            keys,
            registry: config.registry.clone(),
            high_water: HashMap::new(),
            lease_ms: config.lease_ms,
            online: BTreeMap::new(),
            verified: HashMap::new(),
            budgets: HashMap::new(),
            batch_rate: BatchRate::new(config.trust.batches_per_s, config.trust.batch_burst),
            pending: HashMap::new(),
            pending_seqs: HashMap::new(),
            in_recompute: HashSet::new(),
            next_ticket: 0,
            trust: config.trust,
            domains: config.domains.clone(),
            earnings_dirty: dirty,
            bad_input_warnings: WarnLimit::default(),
            earnings_sent: HashMap::new(),
            units_done,
            units_verified: 0,
            units_rejected,
            leases_expired: 0,
            batches_refused: 0,
            batches_checked_elsewhere: 0,
            receipts_credited,
            progress_every: (units / 50).max(1),
            finished_reported: false,
        })
    }

    /// Replaces the result sampler (tests).
    pub fn set_sampler(&mut self, sampler: Sampler) {
        self.sampler = sampler;
    }

    /// The job.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// Opens a group of ledger writes ([`Ledger::begin_group`]): what the engine handles
    /// until [`Engine::commit_group`] commits at once. Its outbound messages must wait for the
    /// commit.
    pub fn begin_group(&self) -> Result<(), LedgerError> {
        self.ledger.begin_group()
    }

    /// Commits the open group; only then may what the group returned be sent.
    pub fn commit_group(&self) -> Result<(), LedgerError> {
        self.ledger.commit_group()
    }

    /// What to publish when (re)connected: the current status, and every rig's earnings
    /// again, since a new broker session may have lost earlier publishes.
    pub fn connected(&mut self, now_ms: u64) -> Vec<Outbound> {
        self.earnings_dirty.extend(self.keys.keys().cloned());
        self.earnings_sent.clear();
        let mut out = self.status_out(now_ms);
        out.extend(self.tick(now_ms));
        out
    }

    /// Handles one message from the broker. Bad input is logged and dropped. A receipts
    /// frame over its rig's batch rate is dropped by its topic alone, before it is decoded:
    /// a flood costs the engine next to nothing per frame. (The broker's ACL lets only the
    /// rig publish on its topics.)
    ///
    /// Batches another replica forwarded ([`topics::checked`]) count against their rig's
    /// rate the same, and their signature is not checked again when the replica checked it
    /// against the key pinned here.
    pub fn handle(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Vec<Outbound> {
        if let Some(rig) = inbound::batch_rig(topic) {
            if !self.batch_rate.take(&rig, now_ms) {
                tracing::debug!(rig = %rig, bytes = payload.len(), "the rig is over its batch rate; its batch is dropped undecoded");
                return vec![];
            }
        }
        let result = match inbound::parse(topic, payload) {
            Err(e) => {
                match self.bad_input_warnings.due(now_ms) {
                    Some(suppressed) => tracing::warn!(
                        topic,
                        error = %e,
                        suppressed_since_last = suppressed,
                        "message dropped"
                    ),
                    None => tracing::debug!(topic, error = %e, "message dropped"),
                }
                return vec![];
            }
            Ok(Inbound::Status(status)) => self.on_status(&status, now_ms),
            Ok(Inbound::Receipts {
                rig,
                batch,
                checked,
            }) => self.admit(&rig, batch, checked.as_deref(), now_ms),
        };
        result.unwrap_or_else(|e| {
            tracing::error!(topic, error = %e, "ledger write failed; the rig will resend");
            vec![]
        })
    }

    /// A rig's status: pins its key on first sight, updates what it can take.
    pub fn on_status(
        &mut self,
        status: &RigStatus,
        now_ms: u64,
    ) -> Result<Vec<Outbound>, LedgerError> {
        let rig = &status.rig;
        match self.ledger.pin_key(rig, &status.pubkey, now_ms)? {
            KeyCheck::Pinned => {
                tracing::info!(rig = %rig, key = %status.pubkey, "rig key pinned on first sight");
                self.keys
                    .insert(rig.clone(), Pinned::new(status.pubkey.clone()));
            }
            KeyCheck::Same => {}
            KeyCheck::Changed => self.key_changed(rig, &status.pubkey)?,
        }
        let cards: Vec<_> = status.cards.iter().map(|c| c.uuid.clone()).collect();
        self.ledger.add_cards(rig, &cards)?;
        let online = status.state != RigState::Offline;
        let trusted = self.keys.get(rig).is_some_and(|p| !p.changed);
        let accepting = trusted && matches!(status.state, RigState::Working | RigState::Idle);
        let card_count = u32::try_from(cards.len()).unwrap_or(u32::MAX);
        self.scheduler
            .rig_status(rig, card_count, accepting, online);
        let was = self.online.insert(rig.clone(), online);
        self.earnings_dirty.insert(rig.clone());
        let mut out = vec![];
        if was != Some(online) {
            tracing::info!(rig = %rig, online, cards = cards.len(), "rig status");
            out.extend(self.status_out(now_ms));
        }
        out.extend(self.assign(now_ms));
        Ok(out)
    }

    /// `rig` announced `key`, not the one pinned: trusted again under it when the registry
    /// vouches for it (receipts below the rekey's first sequence number stay refused),
    /// otherwise its batches are refused. The registry is read once per key announced.
    fn key_changed(&mut self, rig: &RigId, key: &PublicKey) -> Result<(), LedgerError> {
        let Some(pinned) = self.keys.get_mut(rig) else {
            return Ok(());
        };
        if pinned.unvouched.as_ref() == Some(key) {
            return Ok(());
        }
        let Some(path) = &self.registry else {
            tracing::error!(rig = %rig, %key, "rig announced a different key; its batches are refused");
            pinned.changed = true;
            pinned.unvouched = Some(key.clone());
            return Ok(());
        };
        let vouched = rigd_provisioning::registry::Registry::open_read_only(path)
            .and_then(|r| r.vouched_key(rig));
        match vouched {
            Ok(Some(v)) if v.receipt_key == key.to_string() => {
                self.ledger.rekey(rig, key, v.from_seq)?;
                self.scheduler.end_leases(rig);
                tracing::warn!(rig = %rig, %key, from_seq = v.from_seq, "rig rekeyed with its owner's claim: trusted under its new key; its receipts from before are refused");
                *pinned = Pinned {
                    from_seq: v.from_seq,
                    ..Pinned::new(key.clone())
                };
            }
            Ok(_) => {
                tracing::error!(rig = %rig, %key, "rig announced a key the registry does not hold for it; its batches are refused");
                pinned.changed = true;
                pinned.unvouched = Some(key.clone());
            }
            Err(e) => {
                tracing::error!(rig = %rig, %key, error = %e, "registry unreadable: the rig's changed key is refused until it is read");
                pinned.changed = true;
            }
        }
        Ok(())
    }

    fn stitched(&mut self, s: Stitched, now_ms: u64) -> Vec<Outbound> {
        let id = self.job.id().clone();
        match self
            .ledger
            .stitch(&id, s.units.clone(), &s.checkpoint, now_ms)
        {
            Ok((rigs, credited)) => {
                self.receipts_credited = self.receipts_credited.saturating_add(credited);
                self.earnings_dirty.extend(rigs);
            }
            Err(e) => tracing::error!(error = %e, "stitch not recorded; it is redone on restart"),
        }
        tracing::info!(job = %id, step = s.checkpoint.step, loss = ?s.checkpoint.loss, "step stitched");
        self.scheduler.add_units(s.next_units);
        if self.job.finished() {
            vec![]
        } else {
            self.status_out(now_ms)
        }
    }

    /// Periodic work: expire leases, hand out units, publish due earnings.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Outbound> {
        let expired = self.scheduler.expire(now_ms);
        if !expired.is_empty() {
            self.leases_expired = self
                .leases_expired
                .saturating_add(u64::try_from(expired.len()).unwrap_or(u64::MAX));
            tracing::info!(units = expired.len(), "leases expired; units requeued");
        }
        let mut out = self.assign(now_ms);
        let due: Vec<RigId> = self
            .earnings_dirty
            .iter()
            .filter(|r| {
                self.earnings_sent
                    .get(*r)
                    .is_none_or(|t| now_ms.saturating_sub(*t) >= EARNINGS_INTERVAL_MS)
            })
            .cloned()
            .collect();
        for rig in due {
            match self.ledger.earnings(&rig) {
                Ok(e) => {
                    out.push(Outbound::Publish {
                        topic: topics::rig(&rig, Channel::Earnings),
                        payload: encode(&e),
                        retain: true,
                        delivery: Delivery::AtMostOnce,
                    });
                    self.earnings_dirty.remove(&rig);
                    self.earnings_sent.insert(rig, now_ms);
                }
                Err(e) => tracing::error!(rig = %rig, error = %e, "earnings not readable"),
            }
        }
        out
    }

    fn assign(&mut self, now_ms: u64) -> Vec<Outbound> {
        let mut out = vec![];
        let assignments = self.scheduler.assign(now_ms);
        // Leases are durable before their units go out, so a restart still pays them.
        let deadline = now_ms.saturating_add(self.lease_ms);
        let granted: Vec<_> = assignments
            .iter()
            .flat_map(|a| {
                a.units
                    .iter()
                    .map(|(u, n)| (*u, *n, a.rig.clone(), deadline))
            })
            .collect();
        if let Err(e) = self.ledger.record_leases(self.job.id(), &granted) {
            tracing::error!(error = %e, units = granted.len(), "leases not recorded; their units are not sent and go out again once the leases run out");
            return out;
        }
        for a in assignments {
            let mut units = vec![];
            let mut size = 0usize;
            for (unit, attempt) in a.units {
                let Some(wu) = self.job.work_unit(unit, attempt) else {
                    continue;
                };
                let est = match &wu.kind {
                    UnitKind::MlpGrad { params, .. } => params.len() * 4 + 128,
                    UnitKind::GemmI8 { .. } => 128,
                };
                if !units.is_empty()
                    && (size + est > MAX_FRAME_BYTES - 4096 || units.len() == MAX_UNITS_PER_MESSAGE)
                {
                    out.push(self.assignment(&a.rig, std::mem::take(&mut units)));
                    size = 0;
                }
                size += est;
                units.push(wu);
            }
            if !units.is_empty() {
                out.push(self.assignment(&a.rig, units));
            }
        }
        out
    }

    fn assignment(&self, rig: &RigId, units: Vec<rigd_protocol::WorkUnit>) -> Outbound {
        tracing::debug!(rig = %rig, units = units.len(), "units assigned");
        publish(
            topics::rig(rig, Channel::Units),
            encode(&UnitAssignment { units }),
            false,
        )
    }

    /// The coordinator's status now.
    pub fn status(&self, now_ms: u64) -> CoordinatorStatus {
        let (step, steps_total, loss) = self.job.progress();
        CoordinatorStatus {
            job: self.job.id().clone(),
            step,
            steps_total,
            loss,
            units_done: self.units_done,
            units_verified: self.units_verified,
            units_rejected: self.units_rejected,
            leases_expired: self.leases_expired,
            batches_refused: self.batches_refused,
            receipts_credited: self.receipts_credited,
            rigs_online: u32::try_from(self.online.values().filter(|o| **o).count())
                .unwrap_or(u32::MAX),
            finished: self.job.finished(),
            updated_ms: now_ms,
        }
    }

    fn status_out(&self, now_ms: u64) -> Vec<Outbound> {
        let status = self.status(now_ms);
        vec![
            publish(
                topics::COORDINATOR_STATUS.to_string(),
                encode(&status),
                true,
            ),
            Outbound::Progress(status),
        ]
    }
}

/// At most one warning per [`WarnLimit::PERIOD_MS`]; the rest are counted and the count goes
/// with the next warning.
#[derive(Debug, Default)]
struct WarnLimit {
    last_ms: Option<u64>,
    suppressed: u64,
}

impl WarnLimit {
    const PERIOD_MS: u64 = 1_000;

    /// `Some(messages suppressed since the last warning)` when a warning is due at `now_ms`,
    /// `None` when this one is to be counted instead.
    fn due(&mut self, now_ms: u64) -> Option<u64> {
        match self.last_ms {
            Some(last) if now_ms < last.saturating_add(Self::PERIOD_MS) => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last_ms = Some(now_ms);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[path = "engine_batch.rs"]
mod batch;
#[path = "engine_judge.rs"]
mod judge;

pub use batch::MAX_PENDING_BATCHES;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
