//! The fleet as Prometheus series, rebuilt from [`Fleet`] at every scrape, so a rig that went
//! offline or a card it no longer reports drops out instead of leaving a stale series.
//!
//! Each card is one series per figure under the names and labels of NVIDIA's dcgm-exporter
//! (`DCGM_FI_DEV_GPU_TEMP{gpu, UUID, device, modelName}`, plus `rig`), so stock GPU
//! dashboards and alerts work unchanged; rigd's own figures are `rigd_card_*` and
//! `rigd_rig_*`, the coordinator's `rigd_coordinator_*`.

use crate::fleet::{Fleet, RigSeen};
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use rigd_protocol::{CardInfo, CardState, GpuSample, KeyHealth, RigId, RigState, RigStatus};

/// The labels of a card's series: dcgm-exporter's, and the rig.
pub const CARD_LABELS: [&str; 5] = ["gpu", "UUID", "device", "modelName", "rig"];

struct CardFamilies {
    gpu_temp: GaugeVec,
    memory_temp: GaugeVec,
    power_usage: GaugeVec,
    power_limit: GaugeVec,
    gpu_util: GaugeVec,
    sm_clock: GaugeVec,
    fan_speed: GaugeVec,
    fb_total: GaugeVec,
    fb_used: GaugeVec,
    xid_errors: GaugeVec,
    governor_level: GaugeVec,
    state: GaugeVec,
    units_done: IntCounterVec,
    worker_restarts: IntCounterVec,
}

struct RigFamilies {
    up: GaugeVec,
    state: GaugeVec,
    info: GaugeVec,
    cards: GaugeVec,
    units_running: GaugeVec,
    units_queued: GaugeVec,
    receipts_unacked: GaugeVec,
    seq_journaled: GaugeVec,
    key_answering: GaugeVec,
    start_time: GaugeVec,
}

struct CoordinatorFamilies {
    units_done: IntCounterVec,
    units_verified: IntCounterVec,
    units_rejected: IntCounterVec,
    leases_expired: IntCounterVec,
    batches_refused: IntCounterVec,
    receipts_credited: IntCounterVec,
    rigs_online: GaugeVec,
    step: GaugeVec,
    steps_planned: GaugeVec,
    loss: GaugeVec,
    finished: GaugeVec,
}

struct Families<'r>(&'r Registry);

impl Families<'_> {
    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
        let family = GaugeVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(family.clone()))?;
        Ok(family)
    }

    fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let family = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.0.register(Box::new(family.clone()))?;
        Ok(family)
    }

    fn cards(&self) -> prometheus::Result<CardFamilies> {
        let l = &CARD_LABELS;
        let card_state: Vec<&str> = CARD_LABELS.iter().copied().chain(["state"]).collect();
        Ok(CardFamilies {
            gpu_temp: self.gauge("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", l)?,
            memory_temp: self.gauge("DCGM_FI_DEV_MEMORY_TEMP", "Memory temperature (in C).", l)?,
            power_usage: self.gauge("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", l)?,
            power_limit: self.gauge(
                "DCGM_FI_DEV_POWER_MGMT_LIMIT",
                "Power management limit (in W).",
                l,
            )?,
            gpu_util: self.gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", l)?,
            sm_clock: self.gauge("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", l)?,
            fan_speed: self.gauge("DCGM_FI_DEV_FAN_SPEED", "Fan speed (in %).", l)?,
            fb_total: self.gauge("DCGM_FI_DEV_FB_TOTAL", "Framebuffer memory (in MiB).", l)?,
            fb_used: self.gauge(
                "DCGM_FI_DEV_FB_USED",
                "Framebuffer memory used (in MiB).",
                l,
            )?,
            xid_errors: self.gauge(
                "DCGM_FI_DEV_XID_ERRORS",
                "Value of the last XID error encountered.",
                l,
            )?,
            governor_level: self.gauge(
                "rigd_card_governor_level",
                "Thermal governor level of the card, 0 (full power) to 5.",
                l,
            )?,
            state: self.gauge(
                "rigd_card_state",
                "1 for the card's state: idle, busy, paused, restarting or quarantined.",
                &card_state,
            )?,
            units_done: self.counter(
                "rigd_card_units_done_total",
                "Units the card finished since rigd started.",
                l,
            )?,
            worker_restarts: self.counter(
                "rigd_card_worker_restarts_total",
                "Restarts of the card's worker since rigd started.",
                l,
            )?,
        })
    }

    fn rigs(&self) -> prometheus::Result<RigFamilies> {
        let l = &["rig"];
        Ok(RigFamilies {
            up: self.gauge("rigd_rig_up", "1 while the rig is online.", l)?,
            state: self.gauge(
                "rigd_rig_state",
                "1 for the rig's state: working, idle, draining or offline.",
                &["rig", "state"],
            )?,
            info: self.gauge(
                "rigd_rig_info",
                "1, with rigd's version and where its receipt key lives.",
                &["rig", "version", "key_backend"],
            )?,
            cards: self.gauge("rigd_rig_cards", "Cards the rig found.", l)?,
            units_running: self.gauge("rigd_rig_units_running", "Units computing.", l)?,
            units_queued: self.gauge(
                "rigd_rig_units_queued",
                "Units received and waiting for a card.",
                l,
            )?,
            receipts_unacked: self.gauge(
                "rigd_rig_receipts_unacked",
                "Receipts journaled and not yet acknowledged by the coordinator.",
                l,
            )?,
            seq_journaled: self.gauge(
                "rigd_rig_seq_journaled",
                "Highest receipt sequence number journaled.",
                l,
            )?,
            key_answering: self.gauge(
                "rigd_rig_key_answering",
                "1 while the rig's key store answers in time.",
                l,
            )?,
            start_time: self.gauge(
                "rigd_rig_start_time_seconds",
                "When rigd started, Unix seconds (a change is a restart).",
                l,
            )?,
        })
    }

    fn coordinator(&self) -> prometheus::Result<CoordinatorFamilies> {
        let l = &["job"];
        Ok(CoordinatorFamilies {
            units_done: self.counter(
                "rigd_coordinator_units_done_total",
                "Units whose results arrived.",
                l,
            )?,
            units_verified: self.counter(
                "rigd_coordinator_units_verified_total",
                "Units checked by recomputation or redundancy.",
                l,
            )?,
            units_rejected: self.counter(
                "rigd_coordinator_units_rejected_total",
                "Units refused.",
                l,
            )?,
            leases_expired: self.counter(
                "rigd_coordinator_leases_expired_total",
                "Leases that ran out before their result arrived, since the coordinator started.",
                l,
            )?,
            batches_refused: self.counter(
                "rigd_coordinator_batches_refused_total",
                "Refusals of batches that cannot be attributed to the rig's pinned key, since the coordinator started.",
                l,
            )?,
            receipts_credited: self.counter(
                "rigd_coordinator_receipts_credited_total",
                "Receipts credited (GEMM results when accepted, MLP results when their step is stitched), since the coordinator started.",
                l,
            )?,
            rigs_online: self.gauge("rigd_coordinator_rigs_online", "Rigs online.", l)?,
            step: self.gauge("rigd_coordinator_job_step", "Steps stitched.", l)?,
            steps_planned: self.gauge("rigd_coordinator_job_steps_planned", "Steps planned.", l)?,
            loss: self.gauge("rigd_coordinator_job_loss", "Loss after the last step.", l)?,
            finished: self.gauge(
                "rigd_coordinator_job_finished",
                "1 once the job finished.",
                l,
            )?,
        })
    }
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
    let registry = Registry::new();
    let families = Families(&registry);
    let (cards, rigs, coordinator) = (families.cards()?, families.rigs()?, families.coordinator()?);
    for (rig, seen) in fleet.rigs() {
        let online = seen
            .status
            .as_ref()
            .is_some_and(|s| s.state != RigState::Offline);
        if let Some(status) = &seen.status {
            rig_series(&rigs, rig, status);
        }
        match &seen.telemetry {
            Some((t, heard_ms)) if online && now_ms.saturating_sub(*heard_ms) <= stale_after_ms => {
                for sample in &t.gpus {
                    card_series(&cards, rig, seen, sample);
                }
            }
            _ => {}
        }
    }
    if let Some(c) = fleet.coordinator() {
        let job = [c.job.as_str()];
        coordinator
            .units_done
            .with_label_values(&job)
            .inc_by(c.units_done);
        coordinator
            .units_verified
            .with_label_values(&job)
            .inc_by(c.units_verified);
        coordinator
            .units_rejected
            .with_label_values(&job)
            .inc_by(c.units_rejected);
        coordinator
            .leases_expired
            .with_label_values(&job)
            .inc_by(c.leases_expired);
        coordinator
            .batches_refused
            .with_label_values(&job)
            .inc_by(c.batches_refused);
        coordinator
            .receipts_credited
            .with_label_values(&job)
            .inc_by(c.receipts_credited);
        coordinator
            .rigs_online
            .with_label_values(&job)
            .set(f64::from(c.rigs_online));
        coordinator.step.with_label_values(&job).set(c.step as f64);
        coordinator
            .steps_planned
            .with_label_values(&job)
            .set(c.steps_total as f64);
        if let Some(loss) = c.loss {
            coordinator
                .loss
                .with_label_values(&job)
                .set(f64::from(loss));
        }
        coordinator
            .finished
            .with_label_values(&job)
            .set(flag(c.finished));
    }
    let mut text = Vec::new();
    let encoder = TextEncoder::new();
    encoder.encode(&registry.gather(), &mut text)?;
    encoder.encode(&own.gather(), &mut text)?;
    String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

fn rig_series(rigs: &RigFamilies, rig: &RigId, status: &RigStatus) {
    let l = [rig.as_str()];
    rigs.up
        .with_label_values(&l)
        .set(flag(status.state != RigState::Offline));
    for (state, name) in [
        (RigState::Working, "working"),
        (RigState::Idle, "idle"),
        (RigState::Draining, "draining"),
        (RigState::Offline, "offline"),
    ] {
        rigs.state
            .with_label_values(&[rig.as_str(), name])
            .set(flag(status.state == state));
    }
    rigs.info
        .with_label_values(&[rig.as_str(), &status.agent_version, &status.key_backend])
        .set(1.0);
    rigs.cards
        .with_label_values(&l)
        .set(status.cards.len() as f64);
    rigs.units_running
        .with_label_values(&l)
        .set(f64::from(status.units_running));
    rigs.units_queued
        .with_label_values(&l)
        .set(f64::from(status.units_queued));
    rigs.receipts_unacked
        .with_label_values(&l)
        .set(status.receipts_unacked as f64);
    rigs.seq_journaled
        .with_label_values(&l)
        .set(status.seq_journaled as f64);
    let answering = matches!(status.key_health, KeyHealth::Answering);
    rigs.key_answering
        .with_label_values(&l)
        .set(flag(answering));
    rigs.start_time
        .with_label_values(&l)
        .set(status.started_ms as f64 / 1000.0);
}

fn card_series(cards: &CardFamilies, rig: &RigId, seen: &RigSeen, s: &GpuSample) {
    let info: Option<&CardInfo> = seen
        .status
        .as_ref()
        .and_then(|st| st.cards.iter().find(|c| c.uuid == s.uuid));
    let (index, device) = match info {
        Some(c) => (c.index.to_string(), format!("nvidia{}", c.index)),
        None => (String::new(), String::new()),
    };
    let model = info.map_or("", |c| c.name.as_str());
    let l = [
        index.as_str(),
        s.uuid.as_str(),
        device.as_str(),
        model,
        rig.as_str(),
    ];
    cards
        .gpu_temp
        .with_label_values(&l)
        .set(f64::from(s.core_dc) / 10.0);
    if let Some(mem) = s.mem_dc {
        cards
            .memory_temp
            .with_label_values(&l)
            .set(f64::from(mem) / 10.0);
    }
    cards
        .power_usage
        .with_label_values(&l)
        .set(f64::from(s.power_w));
    cards
        .power_limit
        .with_label_values(&l)
        .set(f64::from(s.power_limit_w));
    cards
        .gpu_util
        .with_label_values(&l)
        .set(f64::from(s.util_pct));
    cards
        .sm_clock
        .with_label_values(&l)
        .set(f64::from(s.sm_mhz));
    cards
        .fan_speed
        .with_label_values(&l)
        .set(f64::from(s.fan_pct));
    if let Some(c) = info {
        cards
            .fb_total
            .with_label_values(&l)
            .set(f64::from(c.vram_mib));
    }
    cards
        .fb_used
        .with_label_values(&l)
        .set(f64::from(s.fb_used_mib));
    cards.xid_errors.with_label_values(&l).set(f64::from(s.xid));
    cards
        .governor_level
        .with_label_values(&l)
        .set(f64::from(s.governor_level));
    for (state, name) in [
        (CardState::Idle, "idle"),
        (CardState::Busy, "busy"),
        (CardState::Paused, "paused"),
        (CardState::Restarting, "restarting"),
        (CardState::Quarantined, "quarantined"),
    ] {
        let [a, b, c, d, e] = l;
        cards
            .state
            .with_label_values(&[a, b, c, d, e, name])
            .set(flag(s.state == state));
    }
    cards
        .units_done
        .with_label_values(&l)
        .inc_by(u64::from(s.units_done));
    cards
        .worker_restarts
        .with_label_values(&l)
        .inc_by(u64::from(s.worker_restarts));
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}
