//! The fleet as Prometheus series, rebuilt from [`Fleet`] at every scrape, so a rig that went
//! offline or a card it no longer reports drops out instead of leaving a stale series.
//!
//! Each card is one series per figure under the names and labels of NVIDIA's dcgm-exporter
//! (`DCGM_FI_DEV_GPU_TEMP{gpu, UUID, device, modelName}`, plus `rig`), so stock GPU
//! dashboards and alerts work unchanged; rigd's own figures are `rigd_card_*` and
//! `rigd_rig_*`, the coordinator's `rigd_coordinator_*`.
//!
//! The fleet's families are built straight into the crate's `MetricFamily` values, one
//! metric per series (a constant collector, in Prometheus' words), instead of through
//! `GaugeVec`s: a scrape of 80,000 cards then costs two allocations per label and no hash
//! lookups, and the fleet lock is held only while they are built, not while they are encoded.

use crate::fleet::{Fleet, RigSeen};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Registry, TextEncoder};
use rigd_protocol::{CardInfo, CardState, GpuSample, KeyHealth, RigId, RigState, RigStatus};
use std::collections::HashSet;

/// One family being filled with series.
struct Family(MetricFamily);

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        Self(family)
    }

    fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    fn counter(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::COUNTER)
    }

    /// Adds the series `labels` with `value`. Labels are given sorted by name, as the
    /// crate's own vectors write them.
    fn push(&mut self, labels: Vec<LabelPair>, value: f64) {
        let mut metric = Metric::from_label(labels);
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut counter = Counter::default();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        self.0.mut_metric().push(metric);
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

/// `base` with one more label, `name` sorting after every label of `base`.
fn with_label(base: &[LabelPair], name: &str, value: &str) -> Vec<LabelPair> {
    let mut all = base.to_vec();
    all.extend(labels(&[(name, value)]));
    all
}

struct CardFamilies {
    gpu_temp: Family,
    memory_temp: Family,
    power_usage: Family,
    power_limit: Family,
    gpu_util: Family,
    sm_clock: Family,
    fan_speed: Family,
    fb_total: Family,
    fb_used: Family,
    xid_errors: Family,
    governor_level: Family,
    state: Family,
    units_done: Family,
    worker_restarts: Family,
}

impl CardFamilies {
    fn new() -> Self {
        Self {
            gpu_temp: Family::gauge("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)."),
            memory_temp: Family::gauge("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C)."),
            power_usage: Family::gauge("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
            power_limit: Family::gauge(
                "DCGM_FI_DEV_POWER_MGMT_LIMIT",
                "Power management limit (in W).",
            ),
            gpu_util: Family::gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
            sm_clock: Family::gauge("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)."),
            fan_speed: Family::gauge("DCGM_FI_DEV_FAN_SPEED", "Fan speed (in %)."),
            fb_total: Family::gauge("DCGM_FI_DEV_FB_TOTAL", "Framebuffer memory (in MiB)."),
            fb_used: Family::gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
            xid_errors: Family::gauge(
                "DCGM_FI_DEV_XID_ERRORS",
                "Value of the last XID error encountered.",
            ),
            governor_level: Family::gauge(
                "rigd_card_governor_level",
                "Thermal governor level of the card, 0 (full power) to 5.",
            ),
            state: Family::gauge(
                "rigd_card_state",
                "1 for the card's state: idle, busy, paused, restarting or quarantined.",
            ),
            units_done: Family::counter(
                "rigd_card_units_done_total",
                "Units the card finished since rigd started.",
            ),
            worker_restarts: Family::counter(
                "rigd_card_worker_restarts_total",
                "Restarts of the card's worker since rigd started.",
            ),
        }
    }

    fn into_families(self) -> [Family; 14] {
        [
            self.gpu_temp,
            self.memory_temp,
            self.power_usage,
            self.power_limit,
            self.gpu_util,
            self.sm_clock,
            self.fan_speed,
            self.fb_total,
            self.fb_used,
            self.xid_errors,
            self.governor_level,
            self.state,
            self.units_done,
            self.worker_restarts,
        ]
    }
}

struct RigFamilies {
    up: Family,
    state: Family,
    info: Family,
    cards: Family,
    units_running: Family,
    units_queued: Family,
    receipts_unacked: Family,
    seq_journaled: Family,
    key_answering: Family,
    start_time: Family,
}

impl RigFamilies {
    fn new() -> Self {
        Self {
            up: Family::gauge("rigd_rig_up", "1 while the rig is online."),
            state: Family::gauge(
                "rigd_rig_state",
                "1 for the rig's state: working, idle, draining or offline.",
            ),
            info: Family::gauge(
                "rigd_rig_info",
                "1, with rigd's version and where its receipt key lives.",
            ),
            cards: Family::gauge("rigd_rig_cards", "Cards the rig found."),
            units_running: Family::gauge("rigd_rig_units_running", "Units computing."),
            units_queued: Family::gauge(
                "rigd_rig_units_queued",
                "Units received and waiting for a card.",
            ),
            receipts_unacked: Family::gauge(
                "rigd_rig_receipts_unacked",
                "Receipts journaled and not yet acknowledged by the coordinator.",
            ),
            seq_journaled: Family::gauge(
                "rigd_rig_seq_journaled",
                "Highest receipt sequence number journaled.",
            ),
            key_answering: Family::gauge(
                "rigd_rig_key_answering",
                "1 while the rig's key store answers in time.",
            ),
            start_time: Family::gauge(
                "rigd_rig_start_time_seconds",
                "When rigd started, Unix seconds (a change is a restart).",
            ),
        }
    }

    fn into_families(self) -> [Family; 10] {
        [
            self.up,
            self.state,
            self.info,
            self.cards,
            self.units_running,
            self.units_queued,
            self.receipts_unacked,
            self.seq_journaled,
            self.key_answering,
            self.start_time,
        ]
    }
}

/// The coordinator's families: counters first, then gauges, each `(name, help, value)`.
fn coordinator_families(c: &rigd_protocol::CoordinatorStatus) -> Vec<Family> {
    let job = labels(&[("job", c.job.as_str())]);
    let counters = [
        (
            "rigd_coordinator_units_done_total",
            "Units whose results arrived.",
            c.units_done,
        ),
        (
            "rigd_coordinator_units_verified_total",
            "Units checked by recomputation or redundancy.",
            c.units_verified,
        ),
        (
            "rigd_coordinator_units_rejected_total",
            "Units refused.",
            c.units_rejected,
        ),
        (
            "rigd_coordinator_leases_expired_total",
            "Leases that ran out before their result arrived, since the coordinator started.",
            c.leases_expired,
        ),
        (
            "rigd_coordinator_batches_refused_total",
            "Refusals of batches that cannot be attributed to the rig's pinned key, since the coordinator started.",
            c.batches_refused,
        ),
        (
            "rigd_coordinator_receipts_credited_total",
            "Receipts credited (GEMM results when accepted, MLP results when their step is stitched), since the coordinator started.",
            c.receipts_credited,
        ),
    ];
    let gauges = [
        (
            "rigd_coordinator_rigs_online",
            "Rigs online.",
            Some(f64::from(c.rigs_online)),
        ),
        (
            "rigd_coordinator_job_step",
            "Steps stitched.",
            Some(c.step as f64),
        ),
        (
            "rigd_coordinator_job_steps_planned",
            "Steps planned.",
            Some(c.steps_total as f64),
        ),
        (
            "rigd_coordinator_job_loss",
            "Loss after the last step.",
            c.loss.map(f64::from),
        ),
        (
            "rigd_coordinator_job_finished",
            "1 once the job finished.",
            Some(flag(c.finished)),
        ),
    ];
    let mut families = Vec::with_capacity(counters.len() + gauges.len());
    for (name, help, value) in counters {
        let mut family = Family::counter(name, help);
        family.push(job.clone(), value as f64);
        families.push(family);
    }
    for (name, help, value) in gauges {
        let mut family = Family::gauge(name, help);
        if let Some(value) = value {
            family.push(job.clone(), value);
        }
        families.push(family);
    }
    families
}

/// The exposition text of `fleet` at `now_ms`, followed by the families of `own`. A card's
/// series are left out while its rig is offline or its telemetry is older than
/// `stale_after_ms`.
pub fn render(
    fleet: &Fleet,
    own: &Registry,
    now_ms: u64,
    stale_after_ms: u64,
) -> prometheus::Result<String> {
    encode(families(fleet, now_ms, stale_after_ms), own)
}

/// The fleet's families at `now_ms`, families sorted by name, series by rig and then in the
/// rig's card order; a family without series is left out.
pub fn families(fleet: &Fleet, now_ms: u64, stale_after_ms: u64) -> Vec<MetricFamily> {
    let (mut cards, mut rigs) = (CardFamilies::new(), RigFamilies::new());
    let mut seen: Vec<(&RigId, &RigSeen)> = fleet.rigs().collect();
    seen.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (rig, seen) in seen {
        let online = seen
            .status
            .as_ref()
            .is_some_and(|s| s.state != RigState::Offline);
        if let Some(status) = &seen.status {
            rig_series(&mut rigs, rig, status);
        }
        match &seen.telemetry {
            Some((t, heard_ms)) if online && now_ms.saturating_sub(*heard_ms) <= stale_after_ms => {
                let mut uuids = HashSet::with_capacity(t.gpus.len());
                for sample in &t.gpus {
                    // A rig that names one card twice gets its first sample shown: two
                    // series with equal labels would make Prometheus drop the scrape.
                    if uuids.insert(sample.uuid.as_str()) {
                        card_series(&mut cards, rig, seen, sample);
                    }
                }
            }
            _ => {}
        }
    }
    let mut all: Vec<Family> = cards.into_families().into_iter().collect();
    all.extend(rigs.into_families());
    if let Some(c) = fleet.coordinator() {
        all.extend(coordinator_families(c));
    }
    let mut families: Vec<MetricFamily> = all
        .into_iter()
        .map(|f| f.0)
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    families.sort_unstable_by(|a, b| a.name().cmp(b.name()));
    families
}

/// The exposition text of `families`, followed by the families of `own`.
pub fn encode(families: Vec<MetricFamily>, own: &Registry) -> prometheus::Result<String> {
    let mut text = String::new();
    let encoder = TextEncoder::new();
    encoder.encode_utf8(&families, &mut text)?;
    encoder.encode_utf8(&own.gather(), &mut text)?;
    Ok(text)
}

fn rig_series(rigs: &mut RigFamilies, rig: &RigId, status: &RigStatus) {
    let l = labels(&[("rig", rig.as_str())]);
    rigs.up
        .push(l.clone(), flag(status.state != RigState::Offline));
    for (state, name) in [
        (RigState::Working, "working"),
        (RigState::Idle, "idle"),
        (RigState::Draining, "draining"),
        (RigState::Offline, "offline"),
    ] {
        rigs.state
            .push(with_label(&l, "state", name), flag(status.state == state));
    }
    rigs.info.push(
        labels(&[
            ("key_backend", &status.key_backend),
            ("rig", rig.as_str()),
            ("version", &status.agent_version),
        ]),
        1.0,
    );
    rigs.cards.push(l.clone(), status.cards.len() as f64);
    rigs.units_running
        .push(l.clone(), f64::from(status.units_running));
    rigs.units_queued
        .push(l.clone(), f64::from(status.units_queued));
    rigs.receipts_unacked
        .push(l.clone(), status.receipts_unacked as f64);
    rigs.seq_journaled
        .push(l.clone(), status.seq_journaled as f64);
    let answering = matches!(status.key_health, KeyHealth::Answering);
    rigs.key_answering.push(l.clone(), flag(answering));
    rigs.start_time.push(l, status.started_ms as f64 / 1000.0);
}

fn card_series(cards: &mut CardFamilies, rig: &RigId, seen: &RigSeen, s: &GpuSample) {
    let info: Option<&CardInfo> = seen
        .status
        .as_ref()
        .and_then(|st| st.cards.iter().find(|c| c.uuid == s.uuid));
    let (index, device) = match info {
        Some(c) => (c.index.to_string(), format!("nvidia{}", c.index)),
        None => (String::new(), String::new()),
    };
    let model = info.map_or("", |c| c.name.as_str());
    let l = labels(&[
        ("UUID", s.uuid.as_str()),
        ("device", device.as_str()),
        ("gpu", index.as_str()),
        ("modelName", model),
        ("rig", rig.as_str()),
    ]);
    cards.gpu_temp.push(l.clone(), f64::from(s.core_dc) / 10.0);
    if let Some(mem) = s.mem_dc {
        cards.memory_temp.push(l.clone(), f64::from(mem) / 10.0);
    }
    cards.power_usage.push(l.clone(), f64::from(s.power_w));
    cards
        .power_limit
        .push(l.clone(), f64::from(s.power_limit_w));
    cards.gpu_util.push(l.clone(), f64::from(s.util_pct));
    cards.sm_clock.push(l.clone(), f64::from(s.sm_mhz));
    cards.fan_speed.push(l.clone(), f64::from(s.fan_pct));
    if let Some(c) = info {
        cards.fb_total.push(l.clone(), f64::from(c.vram_mib));
    }
    cards.fb_used.push(l.clone(), f64::from(s.fb_used_mib));
    cards.xid_errors.push(l.clone(), f64::from(s.xid));
    cards
        .governor_level
        .push(l.clone(), f64::from(s.governor_level));
    for (state, name) in [
        (CardState::Idle, "idle"),
        (CardState::Busy, "busy"),
        (CardState::Paused, "paused"),
        (CardState::Restarting, "restarting"),
        (CardState::Quarantined, "quarantined"),
    ] {
        cards
            .state
            .push(with_label(&l, "state", name), flag(s.state == state));
    }
    cards.units_done.push(l.clone(), f64::from(s.units_done));
    cards.worker_restarts.push(l, f64::from(s.worker_restarts));
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}
