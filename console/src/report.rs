//! What each subcommand shows, built from a [`FleetView`]: plain serializable structs that
//! [`crate::table`] prints as tables and `--json` prints as JSON.

use crate::view::FleetView;
use rigd_protocol::{
    CardEarnings, CardState, CoordinatorStatus, Earnings, RigId, RigState, RigStatus, Telemetry,
};
use serde::Serialize;

/// The coordinator's progress line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordinatorLine {
    /// The job.
    pub job: String,
    /// Steps stitched.
    pub step: u64,
    /// Steps planned.
    pub steps_total: u64,
    /// Loss after the last step.
    pub loss: Option<f32>,
    /// Units whose results arrived.
    pub units_done: u64,
    /// Units checked.
    pub units_verified: u64,
    /// Units refused.
    pub units_rejected: u64,
    /// Leases that ran out, since the coordinator started.
    pub leases_expired: u64,
    /// Refusals of batches not attributable to the rig's key, since the coordinator started.
    pub batches_refused: u64,
    /// Receipts credited, since the coordinator started.
    pub receipts_credited: u64,
    /// Rigs online.
    pub rigs_online: u32,
    /// Whether the job has finished.
    pub finished: bool,
}

impl From<&CoordinatorStatus> for CoordinatorLine {
    fn from(s: &CoordinatorStatus) -> Self {
        Self {
            job: s.job.to_string(),
            step: s.step,
            steps_total: s.steps_total,
            loss: s.loss,
            units_done: s.units_done,
            units_verified: s.units_verified,
            units_rejected: s.units_rejected,
            leases_expired: s.leases_expired,
            batches_refused: s.batches_refused,
            receipts_credited: s.receipts_credited,
            rigs_online: s.rigs_online,
            finished: s.finished,
        }
    }
}

/// One rig's line of `rigctl status`. Fields other than `rig` are `None` when only its
/// telemetry or earnings were retained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RigRow {
    /// The rig.
    pub rig: String,
    /// Whether its state is other than offline.
    pub online: bool,
    /// Its state.
    pub state: Option<String>,
    /// Cards found.
    pub cards: Option<usize>,
    /// Units running.
    pub running: Option<u32>,
    /// Units queued.
    pub queued: Option<u32>,
    /// Highest receipt sequence number journaled.
    pub journaled: Option<u64>,
    /// Receipts not yet acknowledged.
    pub unacked: Option<u64>,
    /// When the status was sent, Unix ms.
    pub last_seen_ms: Option<u64>,
    /// How long ago that was, ms.
    pub last_seen_age_ms: Option<u64>,
    /// Where its signing key lives.
    pub key_backend: Option<String>,
    /// Whether that key store answers (`answering`, or `unresponsive (...)`).
    pub key_health: Option<String>,
    /// rigd's version.
    pub agent_version: Option<String>,
}

/// `rigctl status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// The coordinator's progress, where retained.
    pub coordinator: Option<CoordinatorLine>,
    /// One line per rig.
    pub rigs: Vec<RigRow>,
}

/// Builds `rigctl status` as of `now_ms`.
pub fn status(view: &FleetView, now_ms: u64) -> StatusReport {
    let rigs = view
        .rigs
        .iter()
        .map(|(rig, v)| match &v.status {
            Some(s) => RigRow {
                rig: rig.to_string(),
                online: s.state != RigState::Offline,
                state: Some(rig_state(s.state).into()),
                cards: Some(s.cards.len()),
                running: Some(s.units_running),
                queued: Some(s.units_queued),
                journaled: Some(s.seq_journaled),
                unacked: Some(s.receipts_unacked),
                last_seen_ms: Some(s.sent_ms),
                last_seen_age_ms: Some(now_ms.saturating_sub(s.sent_ms)),
                key_backend: Some(s.key_backend.clone()),
                key_health: Some(s.key_health.to_string()),
                agent_version: Some(s.agent_version.clone()),
            },
            None => RigRow {
                rig: rig.to_string(),
                online: false,
                state: None,
                cards: v.telemetry.as_ref().map(|t| t.gpus.len()),
                running: None,
                queued: None,
                journaled: None,
                unacked: None,
                last_seen_ms: v.telemetry.as_ref().map(|t| t.at_ms),
                last_seen_age_ms: v.telemetry.as_ref().map(|t| now_ms.saturating_sub(t.at_ms)),
                key_backend: None,
                key_health: None,
                agent_version: None,
            },
        })
        .collect();
    StatusReport {
        coordinator: view.coordinator.as_ref().map(CoordinatorLine::from),
        rigs,
    }
}

/// One card's line of `rigctl gpus`. Inventory fields come from the status, live fields from
/// the telemetry; each is `None` where that message was not retained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CardRow {
    /// Index on the rig.
    pub index: Option<u32>,
    /// UUID.
    pub uuid: String,
    /// Model name.
    pub name: Option<String>,
    /// What the card is doing.
    pub state: Option<String>,
    /// Core temperature, °C.
    pub core_c: Option<f64>,
    /// Memory temperature, °C, where the card reports it.
    pub mem_c: Option<f64>,
    /// Power draw, W.
    pub power_w: Option<u16>,
    /// Power limit, W.
    pub power_limit_w: Option<u32>,
    /// Fan, percent.
    pub fan_pct: Option<u8>,
    /// Utilization, percent.
    pub util_pct: Option<u8>,
    /// Thermal governor level.
    pub governor_level: Option<u8>,
    /// The unit it computes.
    pub unit: Option<u64>,
    /// Units finished.
    pub units_done: Option<u32>,
    /// Worker restarts.
    pub worker_restarts: Option<u16>,
}

/// `rigctl gpus RIG`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpusReport {
    /// The rig.
    pub rig: String,
    /// Its state, where its status was retained.
    pub state: Option<String>,
    /// When the telemetry was sampled, Unix ms.
    pub sampled_ms: Option<u64>,
    /// One line per card.
    pub cards: Vec<CardRow>,
}

/// Builds `rigctl gpus RIG`; `None` when nothing about the rig was retained.
pub fn gpus(view: &FleetView, rig: &RigId) -> Option<GpusReport> {
    let v = view.rigs.get(rig)?;
    if v.status.is_none() && v.telemetry.is_none() {
        return None;
    }
    Some(GpusReport {
        rig: rig.to_string(),
        state: v.status.as_ref().map(|s| rig_state(s.state).into()),
        sampled_ms: v.telemetry.as_ref().map(|t| t.at_ms),
        cards: card_rows(v.status.as_ref(), v.telemetry.as_ref()),
    })
}

/// One line per card a rig's status lists, with its readings from the telemetry, and a line
/// for each card heard only in the telemetry.
pub fn card_rows(status: Option<&RigStatus>, telemetry: Option<&Telemetry>) -> Vec<CardRow> {
    let mut cards: Vec<CardRow> = status
        .iter()
        .flat_map(|s| &s.cards)
        .map(|c| CardRow {
            index: Some(c.index),
            uuid: c.uuid.to_string(),
            name: Some(c.name.clone()),
            power_limit_w: Some(c.power_limit_w),
            ..CardRow::empty(c.uuid.to_string())
        })
        .collect();
    for sample in telemetry.iter().flat_map(|t| &t.gpus) {
        let uuid = sample.uuid.to_string();
        let row = match cards.iter().position(|c| c.uuid == uuid) {
            Some(i) => &mut cards[i],
            None => {
                cards.push(CardRow::empty(uuid));
                let last = cards.len() - 1;
                &mut cards[last]
            }
        };
        row.state = Some(card_state(sample.state).into());
        row.core_c = Some(f64::from(sample.core_dc) / 10.0);
        row.mem_c = sample.mem_dc.map(|d| f64::from(d) / 10.0);
        row.power_w = Some(sample.power_w);
        row.power_limit_w = Some(u32::from(sample.power_limit_w));
        row.fan_pct = Some(sample.fan_pct);
        row.util_pct = Some(sample.util_pct);
        row.governor_level = Some(sample.governor_level);
        row.unit = sample.unit;
        row.units_done = Some(sample.units_done);
        row.worker_restarts = Some(sample.worker_restarts);
    }
    cards
}

impl CardRow {
    fn empty(uuid: String) -> Self {
        Self {
            index: None,
            uuid,
            name: None,
            state: None,
            core_c: None,
            mem_c: None,
            power_w: None,
            power_limit_w: None,
            fan_pct: None,
            util_pct: None,
            governor_level: None,
            unit: None,
            units_done: None,
            worker_restarts: None,
        }
    }
}

/// Amounts of one card, one rig or the whole fleet. `*_micros` are exact integers; the
/// string fields are the same amounts in credits with six decimals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Amounts {
    /// Units verified and paid.
    pub credited_units: u64,
    /// Amount paid, micro-credits.
    pub credited_micros: u64,
    /// Amount paid, credits.
    pub credited: String,
    /// Units not verified yet.
    pub pending_units: u64,
    /// Amount pending, micro-credits.
    pub pending_micros: u64,
    /// Amount pending, credits.
    pub pending: String,
    /// Units refused.
    pub rejected_units: u64,
}

impl From<&CardEarnings> for Amounts {
    fn from(c: &CardEarnings) -> Self {
        Self {
            credited_units: c.credited_units,
            credited_micros: c.credited_micros,
            credited: credits(c.credited_micros),
            pending_units: c.pending_units,
            pending_micros: c.pending_micros,
            pending: credits(c.pending_micros),
            rejected_units: c.rejected_units,
        }
    }
}

/// One card's earnings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardAmounts {
    /// The card; `None` for work not tied to a card.
    pub card: Option<String>,
    /// Its amounts.
    #[serde(flatten)]
    pub amounts: Amounts,
}

/// One rig's earnings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RigEarnings {
    /// The rig.
    pub rig: String,
    /// Per card.
    pub cards: Vec<CardAmounts>,
    /// Sum over the cards.
    pub total: Amounts,
    /// Highest receipt sequence number recorded.
    pub last_seq: u64,
    /// Sequence numbers below it not received yet.
    pub missing_seqs: u64,
    /// When the ledger last changed, Unix ms.
    pub updated_ms: u64,
}

/// `rigctl earnings [RIG]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EarningsReport {
    /// Per rig.
    pub rigs: Vec<RigEarnings>,
    /// Sum over the rigs.
    pub total: Amounts,
}

/// Builds `rigctl earnings` from the retained earnings of every rig in the view.
pub fn earnings(view: &FleetView) -> EarningsReport {
    earnings_of(view.rigs.values().filter_map(|v| v.earnings.as_ref()))
}

/// Builds an earnings report from any earnings messages (the retained ones, or the ledger's).
pub fn earnings_of<'a>(all: impl IntoIterator<Item = &'a Earnings>) -> EarningsReport {
    let rigs: Vec<RigEarnings> = all
        .into_iter()
        .map(|e| RigEarnings {
            rig: e.rig.to_string(),
            cards: e
                .cards
                .iter()
                .map(|c| CardAmounts {
                    card: c.card.as_ref().map(ToString::to_string),
                    amounts: Amounts::from(c),
                })
                .collect(),
            total: Amounts::from(&sum(&e.cards)),
            last_seq: e.last_seq,
            missing_seqs: e.missing_seqs,
            updated_ms: e.updated_ms,
        })
        .collect();
    let totals: Vec<CardEarnings> = rigs
        .iter()
        .map(|r| CardEarnings {
            card: None,
            credited_units: r.total.credited_units,
            credited_micros: r.total.credited_micros,
            pending_units: r.total.pending_units,
            pending_micros: r.total.pending_micros,
            rejected_units: r.total.rejected_units,
        })
        .collect();
    EarningsReport {
        rigs,
        total: Amounts::from(&sum(&totals)),
    }
}

/// Sums card lines, saturating: the figures come off the wire and may be hostile.
fn sum(cards: &[CardEarnings]) -> CardEarnings {
    cards
        .iter()
        .fold(CardEarnings::default(), |t, c| CardEarnings {
            card: None,
            credited_units: t.credited_units.saturating_add(c.credited_units),
            credited_micros: t.credited_micros.saturating_add(c.credited_micros),
            pending_units: t.pending_units.saturating_add(c.pending_units),
            pending_micros: t.pending_micros.saturating_add(c.pending_micros),
            rejected_units: t.rejected_units.saturating_add(c.rejected_units),
        })
}

/// Micro-credits as credits with six decimals: `1234567` -> `"1.234567"`.
pub fn credits(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// A rig state as `rigctl` and the dashboard print it.
pub fn rig_state(s: RigState) -> &'static str {
    match s {
        RigState::Working => "working",
        RigState::Idle => "idle",
        RigState::Draining => "draining",
        RigState::Offline => "offline",
    }
}

fn card_state(s: CardState) -> &'static str {
    match s {
        CardState::Idle => "idle",
        CardState::Busy => "busy",
        CardState::Paused => "paused",
        CardState::Restarting => "restarting",
        CardState::Quarantined => "quarantined",
    }
}
