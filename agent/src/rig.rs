//! The supervisor's shell around [`RigCore`]: it joins the link, the journal, the key, the
//! cards and their workers, and carries out what the core decides.
//!
//! Units arrive on the link, are journaled, then acknowledged to the broker; the core hands
//! them to idle cards; finished units become receipts (group commit); the [`crate::batcher`] decides when
//! journaled receipts are sealed into a batch, which the key signs off the journal's commit
//! path (one signature in flight, cards and journaling go on meanwhile); signed batches go
//! out through the outbox until the coordinator acknowledges them.

use crate::batcher::{Batcher, Decision};
use crate::cards::{run_card, CardHandle, CardSettings, WorkerCommand};
use crate::config::{Assigned, RigSettings};
use crate::gpu::Gpu;
use crate::hold::{Holds, Point};
use crate::journal::{self, Journal, JournalError, JournalStats, JournalStore, Sealed};
use crate::keys::{self, KeyStore};
use crate::link::{Link, LinkEvent, LinkSettings};
use crate::notify::Notifier;
use crate::supervisor::{CoreSettings, FailurePolicy, Input, ReplyTo, RigCore};
use crate::update::Updater;
use crate::worker::unix_ms;
use crate::RunError;
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{
    decode, encode, Ack, Frame, FrameError, Refusal, RigId, RigState, UnitAssignment,
};
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[path = "rig_commands.rs"]
mod commands;
#[path = "rig_continuity.rs"]
mod continuity;
#[path = "rig_effects.rs"]
mod effects;
#[path = "rig_status.rs"]
mod status;

use status::offline_status;

/// The shell around [`RigCore`]: it carries out the core's effects on the link, the
/// journal, the key, the cards' driver and the card tasks, and feeds it what they report.
struct Rig {
    config: RigSettings,
    /// The rig's id.
    rig: RigId,
    core: RigCore,
    /// The core's clock starts here.
    epoch: Instant,
    journal: Arc<Mutex<dyn JournalStore>>,
    key: Arc<dyn KeyStore>,
    link: Link,
    gpu: Box<dyn Gpu>,
    cards: Vec<CardHandle>,
    sent: HashMap<u64, Instant>,
    batcher: Batcher,
    /// A fresh journal signs nothing until the network's record of the rig is known.
    awaiting_floor: bool,
    /// When the batcher wants to be asked again (a batch's age bound, a retry).
    seal_at: Option<Instant>,
    sealed_tx: mpsc::Sender<Result<Sealed, RunError>>,
    started_ms: u64,
    commands: commands::CommandState,
    holds: Holds,
    updater: Updater,
    /// Where the answer to the update under way goes.
    update_reply: Option<ReplyTo>,
}

async fn journal_op<R: Send + 'static>(
    journal: &Arc<Mutex<dyn JournalStore>>,
    op: impl FnOnce(&mut dyn JournalStore) -> Result<R, JournalError> + Send + 'static,
) -> Result<R, RunError> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || {
        let mut j = journal
            .lock()
            .map_err(|_| RunError::Runtime("journal lock poisoned".into()))?;
        op(&mut *j).map_err(RunError::Journal)
    })
    .await
    .map_err(|e| RunError::Runtime(format!("journal task: {e}")))?
}

/// Runs the rig `assigned` until `shutdown`, then drains in-flight units, flushes the journal
/// and returns.
pub async fn run(
    config: RigSettings,
    assigned: Assigned,
    worker: WorkerCommand,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let (host, port) = config
        .broker_addr()
        .map(|(h, p)| (h.to_owned(), p))
        .ok_or_else(|| RunError::Runtime("broker is not host:port".into()))?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| RunError::Runtime(format!("state dir {}: {e}", config.state_dir.display())))?;
    let key: Arc<dyn KeyStore> = Arc::new(config.open_key(&config.key)?);
    match keys::check_identity(&config.state(), &key.public_key())? {
        keys::Identity::New => {
            tracing::info!(key = %key.public_key(), "this key is now the rig's identity")
        }
        keys::Identity::Same => {}
        keys::Identity::Changed { previous } => tracing::error!(
            key = %key.public_key(), %previous,
            "the rig's identity changed: its key store holds another key than before (replaced or cleared); receipts journaled under the old key are refused as key changed; a provisioned rig has claimed to stay the same rig under the new key, a rig with a fixed id needs the fleet to learn it"
        ),
    }
    let journal = Journal::open(
        &config.state().file(crate::state_dir::StateFile::Journal),
        assigned.rig.clone(),
    )?;
    let command_state = commands::CommandState::open(&config, &assigned.rig)?;
    let queue = journal.queued_units()?;
    let stats = journal.stats()?;
    let (gpu, device) = config.open_cards(&assigned.rig);
    let stop_cards = CancellationToken::new();
    let (events_tx, mut events) = mpsc::channel(64);
    let mut tasks = vec![];
    let mut cards = vec![];
    let mut models = vec![];
    for info in gpu.inventory() {
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
        cards.push(CardHandle { jobs, abort });
        let model = gpu
            .model(models.len())
            .map_err(|e| RunError::Hardware(e.to_string()))?;
        models.push((info, model));
    }
    drop(events_tx);
    let core = RigCore::new(
        CoreSettings {
            thermal: config.thermal.clone(),
            failures: FailurePolicy {
                count: config.failures_to_quarantine,
                window_ms: config.failure_window_ms,
            },
            max_unacked_receipts: config.max_unacked_receipts,
        },
        models,
        queue,
        stats,
    )
    .map_err(RunError::Hardware)?;
    let started_ms = unix_ms();
    let will = encode(&offline_status(&assigned.rig, key.as_ref(), started_ms));
    let tls = crate::tls::client_config(&config, assigned.tls.as_ref(), &key)?;
    let stop_link = CancellationToken::new();
    let (link, mut link_events) = Link::start(
        LinkSettings {
            rig: assigned.rig.clone(),
            host,
            port,
            will,
            tls,
        },
        stop_link.clone(),
    );
    tracing::info!(rig = %assigned.rig, cards = cards.len(), queued = core.queued(), key = %key.describe(), "rigd started");
    let (sealed_tx, mut sealed) = mpsc::channel(1);
    let (progress_tx, mut progress) = mpsc::channel(4);
    let updater = Updater::open(config.update.clone(), config.state(), progress_tx).await;
    let mut rig = Rig {
        batcher: Batcher::new(
            config.batch_max_receipts,
            Duration::from_millis(config.batch_max_age_ms),
            stats.sealed_seq,
            stats.last_seq,
            Instant::now(),
        )
        .with_window(Duration::from_millis(config.batch_window_ms)),
        awaiting_floor: stats.last_seq == 0,
        seal_at: None,
        sealed_tx,
        journal: Arc::new(Mutex::new(journal)),
        core,
        epoch: Instant::now(),
        key,
        link,
        gpu,
        cards,
        sent: HashMap::new(),
        started_ms,
        commands: command_state,
        holds: Holds::from_env(),
        updater,
        update_reply: None,
        config,
        rig: assigned.rig,
    };
    let holds = rig.commands.restore_holds();
    rig.step(Input::Restored(holds)).await?;
    rig.start_seal();
    let mut governor =
        tokio::time::interval(Duration::from_millis(rig.config.governor_interval_ms));
    let mut telemetry =
        tokio::time::interval(Duration::from_millis(rig.config.telemetry_interval_ms));
    let mut resend =
        tokio::time::interval(Duration::from_millis(rig.config.resend_interval_ms / 2));
    let notifier = Notifier::from_env();
    let mut watchdog =
        tokio::time::interval(notifier.ping_every().unwrap_or(Duration::from_secs(3600)));
    notifier.ready(&rig.status(rig.core.state()));
    let floor_wait = Instant::now() + continuity::FLOOR_WAIT;
    loop {
        if let Some(busy) = rig.core.stopped(rig.now_ms()) {
            if busy > 0 {
                tracing::warn!(
                    busy,
                    "drain timed out; unfinished units stay journaled and run after restart"
                );
            }
            break;
        }
        let wake = rig.core.wake_at().map(|ms| rig.instant(ms));
        tokio::select! {
            _ = shutdown.cancelled(), if !rig.core.stopping() => {
                rig.step(Input::Shutdown).await?;
                notifier.stopping();
            }
            Some(ev) = link_events.recv() => rig.on_link(ev).await?,
            Some(ev) = events.recv() => {
                let mut batch = vec![ev];
                while let Ok(more) = events.try_recv() {
                    batch.push(more);
                }
                rig.step(Input::Cards(batch)).await?;
            }
            _ = governor.tick() => rig.govern().await?,
            _ = telemetry.tick() => {
                rig.publish_telemetry();
                if !rig.core.stopping() {
                    notifier.status(&rig.status(rig.core.state()));
                }
            }
            _ = watchdog.tick(), if notifier.ping_every().is_some() => notifier.watchdog(),
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => rig.step(Input::Tick).await?,
            _ = resend.tick() => rig.resend(false).await?,
            Some(done) = sealed.recv() => rig.on_sealed(done).await?,
            Some(p) = progress.recv() => rig.on_update(p).await?,
            _ = tokio::time::sleep_until(rig.seal_at.unwrap_or_else(Instant::now).into()), if rig.seal_at.is_some() => rig.start_seal(),
            _ = tokio::time::sleep_until(floor_wait.into()), if rig.awaiting_floor => rig.floor_wait_over(),
            _ = tokio::time::sleep(Duration::from_millis(100)), if rig.core.stopping() => {}
        }
    }
    // Sign what is journaled before leaving: the signature in flight first, then the rest.
    if rig.batcher.signing() {
        if let Some(done) = sealed.recv().await {
            rig.on_sealed(done).await?;
        }
    }
    let (key, max, domain) = (
        rig.key.clone(),
        rig.config.batch_max_receipts,
        rig.config.domain(),
    );
    match journal_op(&rig.journal, move |j| {
        j.seal_all(max, key.as_ref(), domain)?;
        j.stats()
    })
    .await
    {
        Ok(stats) => rig.step(Input::Journal(stats)).await?,
        Err(e) => {
            tracing::error!(error = %e, "receipts left unsigned at shutdown; they are signed at the next start")
        }
    }
    rig.resend(false).await?;
    rig.publish_status(RigState::Offline);
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

impl Rig {
    /// The core's clock: ms since the rig started, monotonic.
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis().min(u128::from(u64::MAX)) as u64
    }

    /// The instant of core time `ms`.
    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    async fn on_link(&mut self, ev: LinkEvent) -> Result<(), RunError> {
        match ev {
            LinkEvent::Connected { .. } => {
                self.publish_status(self.core.state());
                self.updater.confirm(self.core.inventory().len()).await;
                self.publish_update();
                self.resend(true).await?;
            }
            LinkEvent::Revoked { reason } => {
                tracing::error!(error = %reason, "the broker refused this rig's certificate as revoked");
                crate::claim::record_revoked(&self.config.state())?;
                return Err(RunError::Revoked(format!(
                    "the broker refused the certificate of {}: {reason}",
                    self.rig
                )));
            }
            LinkEvent::Disconnected { reason } => {
                tracing::debug!(%reason, "link down; work goes on, receipts wait in the outbox");
            }
            LinkEvent::Subscribed => {}
            LinkEvent::Failed { reason, .. } => {
                return Err(RunError::Runtime(format!("broker session ended: {reason}")));
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
            Some((rig, Channel::Units)) if rig == self.rig => {
                match decode::<UnitAssignment>(&p.payload) {
                    Ok(msg) => {
                        let added =
                            journal_op(&self.journal, move |j| j.add_units(&msg.units)).await?;
                        tracing::debug!(added = added.len(), "units journaled");
                        self.step(Input::Units(added)).await?;
                    }
                    Err(e) => tracing::warn!(%topic, error = %e, "refused a unit assignment"),
                }
            }
            Some((rig, Channel::Acks)) if rig == self.rig => {
                if self.holds.held(Point::Acks) {
                    tracing::info!("an acknowledgement dropped unread (held by a test)");
                    return Ok(());
                }
                match decode::<Ack>(&p.payload) {
                    Ok(ack) if ack.rig == self.rig => {
                        let first_seqs: Vec<u64> =
                            ack.batches.iter().map(|b| b.first_seq).collect();
                        let mismatched = self
                            .settle(&first_seqs, move |j| j.ack(&ack.batches))
                            .await?;
                        if mismatched > 0 {
                            tracing::warn!(%topic, mismatched, "refused acks naming a batch with another digest than the one held; those batches are sent again");
                        }
                    }
                    Ok(ack) => {
                        tracing::warn!(%topic, other = %ack.rig, "refused an ack for another rig")
                    }
                    Err(FrameError::Kind { got, .. }) if got == Refusal::KIND => {
                        self.on_refusal(&topic, &p.payload).await?;
                    }
                    Err(e) => tracing::warn!(%topic, error = %e, "refused an ack"),
                }
            }
            Some((rig, Channel::Commands)) if rig == self.rig => self.on_command(p).await?,
            Some((rig, Channel::Earnings)) if rig == self.rig => {
                self.on_earnings(&p.payload).await?
            }
            _ => tracing::warn!(%topic, "message on an unexpected topic ignored"),
        }
        Ok(())
    }

    /// Settles batches in the journal with `op` (an ack or a refusal), forgets them as sent
    /// and gives the supervisor the new counts; returns how many named a batch held here with
    /// another digest.
    async fn settle(
        &mut self,
        first_seqs: &[u64],
        op: impl FnOnce(&mut dyn JournalStore) -> Result<(usize, usize), JournalError> + Send + 'static,
    ) -> Result<usize, RunError> {
        for first in first_seqs {
            self.sent.remove(first);
        }
        let (stats, mismatched) = journal_op(&self.journal, move |j| {
            let (_, mismatched) = op(j)?;
            Ok((j.stats()?, mismatched))
        })
        .await?;
        self.step(Input::Journal(stats)).await?;
        Ok(mismatched)
    }

    /// Asks the batcher what to do and, when a batch is due, signs it in the background.
    fn start_seal(&mut self) {
        self.seal_at = None;
        if self.awaiting_floor {
            return;
        }
        match self.batcher.poll(Instant::now()) {
            Decision::Seal(max) => {
                let (journal, key, tx, holds, domain) = (
                    self.journal.clone(),
                    self.key.clone(),
                    self.sealed_tx.clone(),
                    self.holds.clone(),
                    self.config.domain(),
                );
                tokio::spawn(async move {
                    let done = tokio::task::spawn_blocking(move || {
                        holds.wait(Point::Signing);
                        journal::seal_next(&journal, key.as_ref(), max, domain)
                            .map_err(RunError::from)
                    })
                    .await
                    .unwrap_or_else(|e| Err(RunError::Runtime(format!("signing task: {e}"))));
                    let _ = tx.send(done).await;
                });
            }
            Decision::WaitUntil(at) => self.seal_at = Some(at),
            Decision::Idle => {}
        }
    }

    /// A background signature finished: a signed batch goes out; a key that failed is asked
    /// again later while the receipts stay journaled.
    async fn on_sealed(&mut self, done: Result<Sealed, RunError>) -> Result<(), RunError> {
        let now = Instant::now();
        match done {
            Ok(sealed) => {
                let took = sealed.took.or(self.batcher.sign_time()).unwrap_or_default();
                self.batcher.signed(sealed.stats.sealed_seq, took, now);
                tracing::debug!(
                    sealed_through = sealed.stats.sealed_seq,
                    sign_ms = took.as_secs_f64() * 1e3,
                    waiting = self.batcher.waiting(),
                    target = self.batcher.target(),
                    "receipt batch signed"
                );
                self.step(Input::Journal(sealed.stats)).await?;
                self.resend(false).await?;
            }
            Err(RunError::Journal(JournalError::Sign(e))) => {
                self.batcher.failed(now);
                let waiting = self.batcher.waiting();
                if matches!(e, keys::KeyError::Backoff { .. }) {
                    tracing::debug!(error = %e, waiting, "receipts wait for the key store");
                } else {
                    tracing::error!(error = %e, waiting, "the key could not sign a receipt batch; the receipts stay journaled and are signed later");
                }
            }
            Err(e) => return Err(e),
        }
        self.start_seal();
        Ok(())
    }

    /// The journal's latest counters, as the core keeps them.
    fn stats(&self) -> JournalStats {
        self.core.stats()
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
}
