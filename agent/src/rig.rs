//! The supervisor: joins the link, the journal, the key, the cards and their workers.
//!
//! Units arrive on the link, are journaled, then acknowledged to the broker; idle cards take
//! them; finished units become receipts (group commit), receipts become signed batches, and
//! batches go out through the outbox until the coordinator acknowledges them.

use crate::cards::{run_card, CardEvent, CardHandle, CardSettings, WorkerCommand};
use crate::config::{GpuBackend, RigConfig};
use crate::gpu::nvml::NvmlGpu;
use crate::gpu::{Gpu, SimGpu};
use crate::journal::{Completion, Journal, JournalError, JournalStats};
use crate::keys::{self, KeyStore};
use crate::link::{Link, LinkEvent, LinkSettings};
use crate::slots::{FailurePolicy, Slots};
use crate::worker::{unix_ms, Device};
use crate::RunError;
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{
    decode, encode, Ack, RigState, RigStatus, Telemetry, UnitAssignment, WorkUnit,
};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a drain on shutdown waits for in-flight units.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

struct Rig {
    config: RigConfig,
    journal: Arc<Mutex<Journal>>,
    key: Arc<dyn KeyStore>,
    link: Link,
    slots: Slots,
    queue: VecDeque<WorkUnit>,
    sent: HashMap<u64, Instant>,
    stats: JournalStats,
    outbox_full: bool,
    /// When a shutdown started draining the rig; no new units start from then on.
    draining_since: Option<Instant>,
    started_ms: u64,
}

/// The cards of the configured backend. With `nvml` and no usable driver, the rig runs with
/// no cards (and says so) rather than stopping.
pub(crate) fn open_gpu(config: &RigConfig) -> (Box<dyn Gpu>, Device) {
    match config.gpu {
        GpuBackend::Sim => {
            let mut sim = SimGpu::new(&config.rig_id, config.sim_gpus);
            sim.set_ambient(config.sim_ambient_c);
            (
                Box::new(sim),
                Device::Sim {
                    gflops: config.sim_gflops,
                },
            )
        }
        GpuBackend::Nvml => match NvmlGpu::open() {
            Ok(gpu) => (Box::new(gpu), Device::Cuda),
            Err(e) => {
                tracing::error!(error = %e, "no NVIDIA driver: running with no cards");
                (Box::new(SimGpu::new(&config.rig_id, 0)), Device::Cuda)
            }
        },
    }
}

async fn journal_op<R: Send + 'static>(
    journal: &Arc<Mutex<Journal>>,
    op: impl FnOnce(&mut Journal) -> Result<R, JournalError> + Send + 'static,
) -> Result<R, RunError> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || {
        let mut j = journal
            .lock()
            .map_err(|_| RunError::Runtime("journal lock poisoned".into()))?;
        op(&mut j).map_err(RunError::Journal)
    })
    .await
    .map_err(|e| RunError::Runtime(format!("journal task: {e}")))?
}

/// Runs a rig until `shutdown`, then drains in-flight units, flushes the journal and returns.
pub async fn run(
    config: RigConfig,
    worker: WorkerCommand,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let (host, port) = config
        .broker_addr()
        .map(|(h, p)| (h.to_owned(), p))
        .ok_or_else(|| RunError::Runtime("broker is not host:port".into()))?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| RunError::Runtime(format!("state dir {}: {e}", config.state_dir.display())))?;
    let key: Arc<dyn KeyStore> = Arc::from(keys::open(
        &config.key,
        &config.state_dir,
        config.allow_software_key,
    )?);
    match keys::check_identity(&config.state_dir, &key.public_key())? {
        keys::Identity::New => {
            tracing::info!(key = %key.public_key(), "this key is now the rig's identity")
        }
        keys::Identity::Same => {}
        keys::Identity::Changed { previous } => tracing::error!(
            key = %key.public_key(), %previous,
            "the rig's identity changed: its key store holds another key than before (replaced or cleared); the fleet must learn the new key before it credits these receipts"
        ),
    }
    let journal = Journal::open(&config.state_dir.join("journal.db"), config.rig_id.clone())?;
    let queue: VecDeque<WorkUnit> = journal.queued_units()?.into();
    let (gpu, device) = open_gpu(&config);
    let stop_cards = CancellationToken::new();
    let (events_tx, mut events) = mpsc::channel(64);
    let mut tasks = vec![];
    let handles: Vec<CardHandle> = gpu
        .inventory()
        .into_iter()
        .map(|info| {
            let (jobs, rx) = mpsc::channel(1);
            let (abort, abort_rx) = mpsc::channel(1);
            let settings = CardSettings {
                index: info.index as usize,
                uuid: info.uuid.clone(),
                command: worker.clone(),
                device,
                hang_ms: config.worker_hang_ms,
            };
            tasks.push(tokio::spawn(run_card(
                settings,
                rx,
                abort_rx,
                events_tx.clone(),
                stop_cards.clone(),
            )));
            CardHandle { jobs, abort }
        })
        .collect();
    let failures = FailurePolicy {
        count: config.failures_to_quarantine,
        window: Duration::from_millis(config.failure_window_ms),
    };
    let slots = Slots::new(
        gpu,
        handles,
        &config.thermal,
        config.sim_fault.clone(),
        failures,
    )
    .map_err(RunError::Hardware)?;
    drop(events_tx);
    let started_ms = unix_ms();
    let will = encode(&offline_status(&config, key.as_ref(), started_ms));
    let tls = crate::tls::client_config(&config, &key)?;
    let stop_link = CancellationToken::new();
    let (link, mut link_events) = Link::start(
        LinkSettings {
            rig: config.rig_id.clone(),
            host,
            port,
            will,
            tls,
        },
        stop_link.clone(),
    );
    tracing::info!(rig = %config.rig_id, cards = slots.inventory().len(), queued = queue.len(), key = %key.describe(), "rigd started");
    let mut rig = Rig {
        journal: Arc::new(Mutex::new(journal)),
        key,
        link,
        slots,
        queue,
        sent: HashMap::new(),
        stats: JournalStats::default(),
        outbox_full: false,
        draining_since: None,
        started_ms,
        config,
    };
    let key = rig.key.clone();
    let max = rig.config.batch_max_receipts;
    rig.stats = journal_op(&rig.journal, move |j| {
        j.seal_pending(max, key.as_ref())?;
        j.stats()
    })
    .await?;
    let mut governor =
        tokio::time::interval(Duration::from_millis(rig.config.governor_interval_ms));
    let mut telemetry =
        tokio::time::interval(Duration::from_millis(rig.config.telemetry_interval_ms));
    let mut resend =
        tokio::time::interval(Duration::from_millis(rig.config.resend_interval_ms / 2));
    loop {
        let next_start = rig.dispatch();
        if let Some(since) = rig.draining_since {
            let busy = rig.slots.running();
            if busy == 0 || since.elapsed() > DRAIN_TIMEOUT {
                if busy > 0 {
                    tracing::warn!(
                        busy,
                        "drain timed out; unfinished units stay journaled and run after restart"
                    );
                }
                break;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled(), if rig.draining_since.is_none() => {
                tracing::info!("stopping: draining in-flight units");
                rig.draining_since = Some(Instant::now());
                rig.publish_status(RigState::Draining);
            }
            Some(ev) = link_events.recv() => rig.on_link(ev).await?,
            Some(ev) = events.recv() => {
                let mut batch = vec![ev];
                while let Ok(more) = events.try_recv() {
                    batch.push(more);
                }
                rig.on_cards(batch).await?;
            }
            _ = governor.tick() => rig.slots.govern(unix_ms()),
            _ = telemetry.tick() => rig.publish_telemetry(),
            _ = tokio::time::sleep_until(next_start.unwrap_or_else(Instant::now).into()), if next_start.is_some() => {}
            _ = resend.tick() => rig.resend(false).await?,
            _ = tokio::time::sleep(Duration::from_millis(100)), if rig.draining_since.is_some() => {}
        }
    }
    rig.resend(false).await?;
    rig.publish_status(RigState::Offline);
    // Give the event loop a moment to hand the last publishes to the socket.
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.link.disconnect().await;
    stop_link.cancel();
    stop_cards.cancel();
    drop(rig);
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("rigd stopped");
    Ok(())
}

fn offline_status(config: &RigConfig, key: &dyn KeyStore, started_ms: u64) -> RigStatus {
    RigStatus {
        rig: config.rig_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        pubkey: key.public_key(),
        key_backend: key
            .describe()
            .chars()
            .take(rigd_protocol::MAX_TEXT)
            .collect(),
        state: RigState::Offline,
        cards: vec![],
        units_running: 0,
        units_queued: 0,
        seq_journaled: 0,
        receipts_unacked: 0,
        started_ms,
        sent_ms: started_ms,
    }
}

impl Rig {
    async fn on_link(&mut self, ev: LinkEvent) -> Result<(), RunError> {
        match ev {
            LinkEvent::Connected { .. } => {
                self.publish_status(self.state());
                self.resend(true).await?;
            }
            LinkEvent::Disconnected { reason } => {
                tracing::debug!(%reason, "link down; work goes on, receipts wait in the outbox");
            }
            LinkEvent::Message(p) => {
                self.on_message(&p).await?;
                self.link.ack(&p);
            }
        }
        Ok(())
    }

    async fn on_message(&mut self, p: &Publish) -> Result<(), RunError> {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        match topics::parse(&topic) {
            Some((rig, Channel::Units)) if rig == self.config.rig_id => {
                match decode::<UnitAssignment>(&p.payload) {
                    Ok(msg) => {
                        let added =
                            journal_op(&self.journal, move |j| j.add_units(&msg.units)).await?;
                        tracing::debug!(added = added.len(), "units journaled");
                        self.queue.extend(added);
                    }
                    Err(e) => tracing::warn!(%topic, error = %e, "refused a unit assignment"),
                }
            }
            Some((rig, Channel::Acks)) if rig == self.config.rig_id => {
                match decode::<Ack>(&p.payload) {
                    Ok(ack) if ack.rig == self.config.rig_id => {
                        for first in &ack.batches {
                            self.sent.remove(first);
                        }
                        self.stats = journal_op(&self.journal, move |j| {
                            j.ack(&ack.batches)?;
                            j.stats()
                        })
                        .await?;
                    }
                    Ok(ack) => {
                        tracing::warn!(%topic, other = %ack.rig, "refused an ack for another rig")
                    }
                    Err(e) => tracing::warn!(%topic, error = %e, "refused an ack"),
                }
            }
            _ => tracing::warn!(%topic, "message on an unexpected topic ignored"),
        }
        Ok(())
    }

    async fn on_cards(&mut self, events: Vec<CardEvent>) -> Result<(), RunError> {
        let now = Instant::now();
        let mut done: Vec<Completion> = vec![];
        for ev in events {
            self.slots.finished(&ev, now);
            match ev {
                CardEvent::Done { completion, .. } => done.push(*completion),
                CardEvent::Refused { card, unit, reason } => {
                    tracing::warn!(gpu = card, unit = unit.unit, %reason, "unit refused by the worker; dropped");
                    journal_op(&self.journal, move |j| j.discard_unit(&unit)).await?;
                }
                CardEvent::Crashed { card, unit, reason } => {
                    tracing::warn!(gpu = card, unit = unit.unit, %reason, "worker failed; unit queued again, worker restarts");
                    self.queue.push_front(unit);
                }
                CardEvent::Aborted { card, unit } => {
                    tracing::info!(
                        gpu = card,
                        unit = unit.unit,
                        "unit stopped by the governor; queued again"
                    );
                    self.queue.push_front(unit);
                }
            }
        }
        // Cards go back to work before the journal commit, so that the fsync and the
        // signature never stand between two units of a card.
        self.dispatch();
        if !done.is_empty() {
            let key = self.key.clone();
            let max = self.config.batch_max_receipts;
            let (receipts, stats) = journal_op(&self.journal, move |j| {
                let receipts = j.record(&done, max, key.as_ref())?;
                Ok((receipts.len(), j.stats()?))
            })
            .await?;
            self.stats = stats;
            tracing::debug!(receipts, "receipts journaled and signed");
            self.resend(false).await?;
        }
        Ok(())
    }

    /// Hands queued units to cards that may start one, unless draining or the outbox is
    /// full. Returns when a duty-cycled card may start next, if one waits.
    fn dispatch(&mut self) -> Option<Instant> {
        if self.draining_since.is_some() {
            return None;
        }
        let unacked = self.stats.unacked_receipts;
        let full = unacked >= self.config.max_unacked_receipts;
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
            return None;
        }
        let now = Instant::now();
        for card in self.slots.ready(now) {
            let Some(unit) = self.queue.pop_front() else {
                break;
            };
            if let Err(unit) = self.slots.start(card, unit) {
                self.queue.push_front(unit);
            }
        }
        if self.queue.is_empty() {
            None
        } else {
            self.slots.next_start()
        }
    }

    /// Publishes unacknowledged batches not sent within the resend interval (all of them
    /// when `all`).
    async fn resend(&mut self, all: bool) -> Result<(), RunError> {
        if all {
            self.sent.clear();
        }
        let every = Duration::from_millis(self.config.resend_interval_ms);
        let recent: HashSet<u64> = self
            .sent
            .iter()
            .filter(|(_, t)| t.elapsed() < every)
            .map(|(first, _)| *first)
            .collect();
        let batches = journal_op(&self.journal, move |j| j.unacked_batches(64, &recent)).await?;
        for b in batches {
            let first = b.header.first_seq;
            if !self
                .link
                .publish(Channel::Receipts, QoS::AtLeastOnce, false, encode(&b))
            {
                break;
            }
            self.sent.insert(first, Instant::now());
        }
        Ok(())
    }

    fn state(&self) -> RigState {
        if self.slots.running() > 0 {
            RigState::Working
        } else {
            RigState::Idle
        }
    }

    fn status(&self, state: RigState) -> RigStatus {
        let mut s = offline_status(&self.config, self.key.as_ref(), self.started_ms);
        s.state = state;
        s.cards = self.slots.inventory();
        s.units_running = self.slots.running() as u32;
        s.units_queued = self.queue.len() as u32;
        s.seq_journaled = self.stats.last_seq;
        s.receipts_unacked = self.stats.unacked_receipts;
        s.sent_ms = unix_ms();
        s
    }

    fn publish_status(&self, state: RigState) {
        self.link.publish(
            Channel::Status,
            QoS::AtLeastOnce,
            true,
            encode(&self.status(state)),
        );
    }

    fn publish_telemetry(&mut self) {
        let msg = Telemetry {
            rig: self.config.rig_id.clone(),
            at_ms: unix_ms(),
            gpus: self.slots.samples(),
        };
        self.link
            .publish(Channel::Telemetry, QoS::AtMostOnce, true, encode(&msg));
        let state = if self.draining_since.is_some() {
            RigState::Draining
        } else {
            self.state()
        };
        self.publish_status(state);
    }
}
