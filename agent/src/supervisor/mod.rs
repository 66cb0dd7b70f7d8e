//! The supervisor's decisions, without I/O: [`RigCore::handle`] takes one [`Input`] (units
//! the journal took, what a card task reported, a governor period's readings, the journal's
//! counters, an operator's verified action, a shutdown, time passing) and returns the
//! [`Effect`]s the shell carries out (start or abort a unit on a card, set a power limit or a
//! fan, record receipts, discard a unit, keep the operator holds, reply, publish the status).
//!
//! The core owns dispatch, backpressure (no unit starts while the outbox is full), the drain
//! on shutdown and by an operator, the cards' state and failure policy, and the only
//! in-memory queue of units. Its clock is milliseconds on a monotonic clock the shell
//! chooses; it reads no clock itself. The shell (`rig.rs`) does the I/O: the MQTT link, the
//! journal, the key, the cards' driver and the worker processes.

mod actions;
mod card;

pub use actions::{OperatorHolds, ReplyTo};
pub use card::{FailurePolicy, NORMAL};

use crate::cards::{CardEvent, Job};
use crate::governor::ThermalOverrides;
use crate::gpu::{CardModel, Reading};
use crate::journal::{Completion, JournalStats};
use card::Card;
use rigd_protocol::command::{Action, CardDiagnostics, Outcome};
use rigd_protocol::{CardInfo, GpuSample, GpuUuid, RigState, WorkUnit};
use std::collections::VecDeque;

/// How long a drain on shutdown waits for running units, ms.
pub const DRAIN_TIMEOUT_MS: u64 = 20_000;

/// What a governor period read from one card.
#[derive(Debug, Clone, PartialEq)]
pub enum CardRead {
    /// Its telemetry.
    Reading(Reading),
    /// It has fallen off the bus (Xid 79, or the driver says so).
    FallenOffBus,
    /// It answered no telemetry (it counts as hot), with why.
    Lost(String),
}

/// A setting a card can refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The power limit.
    Power,
    /// The fan speed.
    Fan,
}

/// What the core is told.
#[derive(Debug)]
pub enum Input {
    /// The drains and pauses in effect when rigd last stopped.
    Restored(OperatorHolds),
    /// Units the journal took (new ones only), in arrival order.
    Units(Vec<WorkUnit>),
    /// What card tasks reported, in order.
    Cards(Vec<CardEvent>),
    /// A card task could not take the unit it was handed.
    NotStarted {
        /// The card.
        card: usize,
        /// The unit, queued again first.
        unit: WorkUnit,
    },
    /// A governor period: what each card of [`RigCore::to_read`] read.
    Readings(Vec<(usize, CardRead)>),
    /// A card refused a setting; it is asked again at the next governor period.
    NotApplied {
        /// The card.
        card: usize,
        /// What it refused.
        setting: Setting,
    },
    /// The journal's counters after an [`Effect::Record`] was carried out.
    Recorded(JournalStats),
    /// The journal's counters after another change (receipts acknowledged or sealed).
    Journal(JournalStats),
    /// An operator's action, already verified; `reply` where the operator waits for answers.
    Action {
        /// What to do.
        action: Action,
        /// Where answers go.
        reply: Option<ReplyTo>,
    },
    /// The update the core handed over with [`Effect::Install`] failed before the reboot:
    /// the rig takes work again.
    UpdateFailed,
    /// rigd is stopping: no unit starts from now; running ones may finish
    /// ([`RigCore::stopped`]).
    Shutdown,
    /// Time passed: a duty-cycled card may start.
    Tick,
}

/// A reply to an operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Where it goes.
    pub to: ReplyTo,
    /// What became of the command.
    pub outcome: Outcome,
}

/// What the shell must do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Hand `job` to card `card`'s task ([`Input::NotStarted`] if it cannot take it).
    Start {
        /// The card.
        card: usize,
        /// The unit with how to run it.
        job: Job,
    },
    /// Stop the unit card `card` runs; the task hands it back as aborted.
    Abort {
        /// The card.
        card: usize,
    },
    /// Set card `card`'s power limit.
    SetPower {
        /// The card.
        card: usize,
        /// The limit, W.
        watts: u32,
    },
    /// Set card `card`'s fan; `None` gives it back to the card.
    SetFan {
        /// The card.
        card: usize,
        /// Percent.
        pct: Option<f32>,
    },
    /// Journal these results as receipts (one group commit), then send
    /// [`Input::Recorded`].
    Record(Vec<Completion>),
    /// Drop this unit from the journal's inbox: its worker refused it as invalid.
    Discard(WorkUnit),
    /// Keep these holds across restarts, then send `reply` (as a failure if they could not
    /// be kept).
    SaveHolds {
        /// The holds now in effect.
        holds: OperatorHolds,
        /// The reply that waits for them.
        reply: Option<Reply>,
    },
    /// Answer an operator.
    Reply(Reply),
    /// Answer an operator's diagnostics request (the shell adds what the core does not
    /// know: key, version, command counts).
    Diagnose(Option<ReplyTo>),
    /// The rig drained for an operator's [`Action::Update`]: fetch, check and install it
    /// (the rig stays held until [`Input::UpdateFailed`] or the reboot), answering `reply`.
    Install {
        /// The update.
        update: Action,
        /// Where answers go.
        reply: Option<ReplyTo>,
    },
    /// Publish the rig's status: its state changed.
    PublishStatus,
}

/// Settings of the core, from rig.conf.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Thermal overrides of every card (`[thermal]`).
    pub thermal: ThermalOverrides,
    /// Worker failures that quarantine a card.
    pub failures: FailurePolicy,
    /// No unit starts while this many receipts wait for the coordinator.
    pub max_unacked_receipts: u64,
}

/// The supervisor's state.
pub struct RigCore {
    settings: CoreSettings,
    cards: Vec<Card>,
    /// Units journaled and not running, in the order they start.
    queue: VecDeque<WorkUnit>,
    stats: JournalStats,
    /// Records asked for and not answered yet: their receipts are not in `stats`.
    recording: usize,
    outbox_full: bool,
    /// An operator's drain or pause of the whole rig: no unit starts until a resume.
    held: bool,
    /// Drains waiting for the rig to finish its units and flush its receipts.
    drains: Vec<ReplyTo>,
    /// An update that holds the rig (not kept across restarts: a restarted rigd has no
    /// update to finish), and whether it was handed to the shell.
    updating: Option<(Action, Option<ReplyTo>, bool)>,
    /// When a shutdown began, core ms.
    stopping_since: Option<u64>,
}

impl RigCore {
    /// A core for `cards` (inventory order, with each card's model), with the units left in
    /// the journal's inbox and its counters.
    pub fn new(
        settings: CoreSettings,
        cards: Vec<(CardInfo, CardModel)>,
        queue: Vec<WorkUnit>,
        stats: JournalStats,
    ) -> Result<Self, String> {
        let cards = cards
            .into_iter()
            .map(|(info, model)| Card::new(info, model, &settings.thermal))
            .collect::<Result<_, _>>()?;
        Ok(RigCore {
            settings,
            cards,
            queue: queue.into(),
            stats,
            recording: 0,
            outbox_full: false,
            held: false,
            drains: vec![],
            updating: None,
            stopping_since: None,
        })
    }

    /// Takes `input` at `now_ms` and returns what to do.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Effect> {
        let mut out = vec![];
        let mut record = vec![];
        match input {
            Input::Restored(holds) => self.restore(&holds, &mut out),
            Input::Units(units) => self.queue.extend(units),
            Input::Cards(events) => {
                for ev in events {
                    self.on_card(ev, now_ms, &mut record, &mut out);
                }
            }
            Input::NotStarted { card, unit } => {
                if let Some(c) = self.cards.get_mut(card) {
                    c.unit = None;
                }
                self.queue.push_front(unit);
            }
            Input::Readings(reads) => self.govern(reads, now_ms, &mut out),
            Input::NotApplied { card, setting } => {
                if let Some(c) = self.cards.get_mut(card) {
                    match setting {
                        Setting::Power => c.power_not_applied(),
                        Setting::Fan => c.fan_not_applied(),
                    }
                }
            }
            Input::Recorded(stats) => {
                self.recording = self.recording.saturating_sub(1);
                self.stats = stats;
            }
            Input::Journal(stats) => self.stats = stats,
            Input::Action { action, reply } => self.act(&action, reply, &mut out),
            Input::UpdateFailed => {
                self.updating = None;
                out.push(Effect::PublishStatus);
            }
            Input::Shutdown => {
                if self.stopping_since.is_none() {
                    tracing::info!("stopping: draining in-flight units");
                    self.stopping_since = Some(now_ms);
                    out.push(Effect::PublishStatus);
                }
            }
            Input::Tick => {}
        }
        // Cards go back to work before the journal commit, so that the fsync and the
        // signature never stand between two units of a card.
        self.dispatch(now_ms, &mut out);
        if !record.is_empty() {
            self.recording += 1;
            out.push(Effect::Record(record));
        }
        self.drain_progress(&mut out);
        out
    }

    fn on_card(
        &mut self,
        ev: CardEvent,
        now_ms: u64,
        record: &mut Vec<Completion>,
        out: &mut Vec<Effect>,
    ) {
        let policy = self.settings.failures;
        match ev {
            CardEvent::Done { card, completion } => {
                if let Some(c) = self.cards.get_mut(card) {
                    c.done(now_ms);
                }
                record.push(*completion);
            }
            CardEvent::Refused { card, unit, reason } => {
                tracing::warn!(gpu = card, unit = unit.unit, %reason, "unit refused by the worker; dropped");
                if let Some(c) = self.cards.get_mut(card) {
                    c.unit = None;
                }
                out.push(Effect::Discard(unit));
            }
            CardEvent::Crashed { card, unit, reason } => {
                tracing::warn!(gpu = card, unit = unit.unit, %reason, "worker failed; unit queued again, worker restarts");
                self.queue.push_front(unit);
                if let Some(c) = self.cards.get_mut(card) {
                    if c.crashed(now_ms, policy) {
                        c.quarantine(card, "repeated worker failures", out);
                    }
                }
            }
            CardEvent::Aborted { card, unit } => {
                tracing::info!(
                    gpu = card,
                    unit = unit.unit,
                    "unit stopped by the governor; queued again"
                );
                self.queue.push_front(unit);
                if let Some(c) = self.cards.get_mut(card) {
                    c.unit = None;
                }
            }
        }
    }

    fn govern(&mut self, reads: Vec<(usize, CardRead)>, now_ms: u64, out: &mut Vec<Effect>) {
        for (i, read) in reads {
            let Some(card) = self.cards.get_mut(i) else {
                continue;
            };
            if card.quarantined.is_some() {
                continue;
            }
            match read {
                CardRead::FallenOffBus => {
                    card.quarantine(i, "Xid 79: the card has fallen off the bus", out)
                }
                CardRead::Lost(error) => {
                    tracing::warn!(gpu = %card.info.uuid, %error, "no telemetry; the card counts as hot");
                    card.govern(i, now_ms, None, out);
                }
                CardRead::Reading(r) => card.govern(i, now_ms, Some(r), out),
            }
        }
    }

    /// Hands queued units to cards that may start one, unless stopping, held or the outbox
    /// is full.
    fn dispatch(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        if self.stopping_since.is_some() || self.holding() {
            return;
        }
        let unacked = self.stats.unacked_receipts;
        let full = unacked >= self.settings.max_unacked_receipts;
        if full != self.outbox_full {
            if full {
                tracing::warn!(
                    unacked,
                    "outbox full: no new units start until the coordinator acknowledges"
                );
            } else {
                tracing::info!(unacked, "outbox drained: work resumes");
            }
            self.outbox_full = full;
        }
        if full {
            return;
        }
        for (i, card) in self.cards.iter_mut().enumerate() {
            if self.queue.is_empty() {
                break;
            }
            if !card.ready(now_ms) {
                continue;
            }
            let Some(unit) = self.queue.pop_front() else {
                break;
            };
            let job = Job {
                unit: unit.clone(),
                fault: None,
                governor_level: card.level(),
                fresh_worker: std::mem::take(&mut card.fresh_worker),
            };
            card.unit = Some(unit);
            out.push(Effect::Start { card: i, job });
        }
    }

    /// When the shell should send a [`Input::Tick`]: a duty-cycled card may start then, and a
    /// unit waits for it.
    pub fn wake_at(&self) -> Option<u64> {
        if self.queue.is_empty()
            || self.stopping_since.is_some()
            || self.holding()
            || self.outbox_full
        {
            return None;
        }
        self.cards.iter().filter_map(Card::next_start).min()
    }

    /// No unit runs and the coordinator has acknowledged every receipt.
    fn drained(&self) -> bool {
        self.running() == 0 && self.recording == 0 && self.stats.unacked_receipts == 0
    }

    /// An operator's drain or pause, or an update, holds the whole rig.
    fn holding(&self) -> bool {
        self.held || self.updating.is_some()
    }

    /// Answers waiting drains, and hands a waiting update over, once the rig has drained.
    fn drain_progress(&mut self, out: &mut Vec<Effect>) {
        if !self.drained() {
            return;
        }
        if let Some((update, reply, handed)) = &mut self.updating {
            if !*handed {
                *handed = true;
                tracing::info!("drained for the update");
                out.push(Effect::Install {
                    update: update.clone(),
                    reply: reply.clone(),
                });
            }
        }
        if self.drains.is_empty() {
            return;
        }
        for to in std::mem::take(&mut self.drains) {
            tracing::info!(nonce = to.nonce, "drain finished");
            out.push(Effect::Reply(Reply {
                to,
                outcome: Outcome::Completed(
                    "drained: no unit running, every receipt acknowledged".into(),
                ),
            }));
        }
        out.push(Effect::PublishStatus);
    }

    /// During a shutdown: `Some(units still running)` once rigd may stop, when every
    /// running unit has finished or [`DRAIN_TIMEOUT_MS`] has passed.
    pub fn stopped(&self, now_ms: u64) -> Option<usize> {
        let since = self.stopping_since?;
        let busy = self.running();
        (busy == 0 || now_ms.saturating_sub(since) > DRAIN_TIMEOUT_MS).then_some(busy)
    }

    /// Whether a shutdown is under way.
    pub fn stopping(&self) -> bool {
        self.stopping_since.is_some()
    }

    /// The cards a governor period reads, each with whether it is busy.
    pub fn to_read(&self) -> Vec<(usize, bool)> {
        self.cards
            .iter()
            .enumerate()
            .filter(|(_, c)| c.quarantined.is_none())
            .map(|(i, c)| (i, c.unit.is_some()))
            .collect()
    }

    /// The rig's state as its status reports it.
    pub fn state(&self) -> RigState {
        let running = self.running() > 0;
        if self.stopping_since.is_some() || (running && self.holding()) {
            RigState::Draining
        } else if running {
            RigState::Working
        } else {
            RigState::Idle
        }
    }

    /// Units running now.
    pub fn running(&self) -> usize {
        self.cards.iter().filter(|c| c.unit.is_some()).count()
    }

    /// Units waiting for a card.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The journal's latest counters.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// Whether the whole rig is held: by an operator's drain or pause, or by an update.
    pub fn held(&self) -> bool {
        self.holding()
    }

    /// The cards.
    pub fn inventory(&self) -> Vec<CardInfo> {
        self.cards.iter().map(|c| c.info.clone()).collect()
    }

    /// Telemetry of every card from its latest reading.
    pub fn samples(&self, now_ms: u64) -> Vec<GpuSample> {
        self.cards.iter().map(|c| c.sample(now_ms)).collect()
    }

    /// What `diagnostics` reports of each card.
    pub fn diagnostics(&self, now_ms: u64) -> Vec<CardDiagnostics> {
        self.cards.iter().map(|c| c.diagnostics(now_ms)).collect()
    }

    /// The governor's decision in force for card `card`.
    pub fn decision(&self, card: usize) -> Option<crate::governor::Decision> {
        self.cards.get(card).map(Card::decision)
    }

    fn find(&self, uuid: &GpuUuid) -> Option<usize> {
        self.cards.iter().position(|c| &c.info.uuid == uuid)
    }
}

#[cfg(test)]
mod tests;
