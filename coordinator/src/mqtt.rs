//! The I/O shell: the fleet client's [`Session`] polls the MQTT event loop and forwards
//! messages; the engine task handles them, runs the timers and publishes with `try_publish`
//! (what does not fit waits in a backlog, flushed on every wake-up), so nothing ever waits on
//! the event loop from inside it. Recomputation runs on a [`Pool`] of its own threads and
//! comes back to the engine task as a message.

use crate::engine::{Delivery, Engine, Outbound};
use crate::recompute::Pool;
use crate::CoordinatorConfig;
use rigd_client::{Backoff, Reconnect, Session, SessionEvent, SessionSpec};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::CoordinatorStatus;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Requests the client may queue towards the event loop; what does not fit waits in the
/// engine's backlog.
const REQUEST_CAPACITY: usize = 4096;
/// Publishes the engine keeps waiting for room in the client's queue; past that a publish is
/// dropped and counted in the next load report (units come back through leases, acks through
/// the rig's resend).
const BACKLOG_MAX: usize = 65_536;
/// Messages from the broker waiting for the engine; when full the event loop waits.
const INBOUND_CAPACITY: usize = 1024;
/// Timer period of the engine: lease expiry, assignment, earnings.
const TICK: Duration = Duration::from_millis(100);
/// Most inputs the engine handles in one group, committed to the ledger at once: what is
/// waiting when the group starts, up to this.
const GROUP_MAX: usize = 256;
/// How often the engine task logs where its time went (`coordinator load` lines).
const LOAD_REPORT: Duration = Duration::from_secs(10);

/// A publish waiting for room in the client's queue.
struct Pending {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    qos: QoS,
}

/// What the engine is woken for.
enum Input {
    Connected,
    Message(Box<rumqttc::v5::mqttbytes::v5::Publish>),
    Recomputed(crate::recompute::Recomputed),
    Tick,
}

fn step(engine: &mut Engine, input: Input) -> Vec<Outbound> {
    let now_ms = rigd_client::unix_ms();
    match input {
        Input::Connected => engine.connected(now_ms),
        Input::Message(p) => {
            let topic = String::from_utf8_lossy(&p.topic);
            engine.handle(&topic, &p.payload, now_ms)
        }
        Input::Recomputed(r) => engine.recomputed(r, now_ms),
        Input::Tick => engine.tick(now_ms),
    }
}

/// Where the engine task's time went since the last report: what an operator reads to see
/// whether the coordinator keeps up, and with what.
#[derive(Default)]
struct Load {
    groups: u64,
    inputs: u64,
    largest_group: usize,
    handling: Duration,
    committing: Duration,
    largest_backlog: usize,
    dropped: u64,
}

impl Load {
    fn group(&mut self, inputs: usize, handling: Duration, committing: Duration) {
        self.groups += 1;
        self.inputs += inputs as u64;
        self.largest_group = self.largest_group.max(inputs);
        self.handling += handling;
        self.committing += committing;
    }

    /// Logs the figures since the last report and starts again.
    fn report(&mut self, since: Duration, inbound_waiting: usize, recomputing: usize) {
        let busy = (self.handling + self.committing).as_secs_f64() / since.as_secs_f64().max(1e-9);
        tracing::info!(
            groups = self.groups,
            inputs = self.inputs,
            largest_group = self.largest_group,
            handling_ms = self.handling.as_millis() as u64,
            committing_ms = self.committing.as_millis() as u64,
            busy_percent = (busy * 100.0).round() as u64,
            inbound_waiting,
            recomputing,
            largest_backlog = self.largest_backlog,
            publishes_dropped = self.dropped,
            "coordinator load"
        );
        if self.dropped > 0 {
            tracing::warn!(
                dropped = self.dropped,
                "publishes dropped since the last load report: the backlog was full"
            );
        }
        *self = Load::default();
    }
}

/// What is already waiting.
enum Ready {
    Input(Input),
    /// Nothing (or only session news that changes nothing).
    Empty,
    /// The broker session ended.
    End,
}

fn ready(
    rx: &mut mpsc::Receiver<SessionEvent>,
    done: &mut mpsc::UnboundedReceiver<crate::recompute::Recomputed>,
) -> Ready {
    if let Ok(r) = done.try_recv() {
        return Ready::Input(Input::Recomputed(r));
    }
    match rx.try_recv() {
        Ok(SessionEvent::Message(p)) => Ready::Input(Input::Message(p)),
        Ok(SessionEvent::Connected { .. }) => Ready::Input(Input::Connected),
        Ok(SessionEvent::Subscribed | SessionEvent::Disconnected { .. }) => Ready::Empty,
        Ok(SessionEvent::Revoked { reason } | SessionEvent::Failed { reason, .. }) => {
            tracing::error!(%reason, "broker session ended");
            Ready::End
        }
        Err(mpsc::error::TryRecvError::Empty) => Ready::Empty,
        Err(mpsc::error::TryRecvError::Disconnected) => Ready::End,
    }
}

fn options(
    config: &CoordinatorConfig,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    rigd_client::options(
        &config.client_id,
        &config.broker_host,
        config.broker_port,
        tls,
        rigd_client::Lifetime::Persistent { expiry_s: 3600 },
    )
}

/// Runs the engine against the broker until `shutdown` is cancelled.
pub(crate) async fn serve(
    config: &CoordinatorConfig,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    mut engine: Engine,
    shutdown: CancellationToken,
    progress: Option<mpsc::Sender<CoordinatorStatus>>,
) {
    let spec = SessionSpec {
        options: options(config, tls),
        subscriptions: vec![
            (topics::all_rigs(Channel::Status), QoS::AtLeastOnce),
            (topics::shared_receipts(), QoS::AtLeastOnce),
            (topics::all_checked(), QoS::AtLeastOnce),
        ],
        requests: REQUEST_CAPACITY,
        events: INBOUND_CAPACITY,
        reconnect: Reconnect::Backoff(Backoff::default()),
    };
    let stop_session = CancellationToken::new();
    let (session, mut rx) = Session::start(spec, stop_session.clone());
    let _stop_on_return = stop_session.drop_guard();
    let client = session.client();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    // The engine's task keeps one core; the others recompute.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1));
    let pool = match Pool::start(threads, done_tx) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "recompute threads could not start");
            return;
        }
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Publishes wait here, in order, while the client's queue is full (its event loop is
    // bounded by the broker's acknowledgements), so a burst is sent late rather than lost.
    let mut backlog: VecDeque<Pending> = VecDeque::new();
    let flush = |backlog: &mut VecDeque<Pending>| {
        while let Some(p) = backlog.front() {
            if client
                .try_publish(p.topic.clone(), p.qos, p.retain, p.payload.clone())
                .is_err()
            {
                break;
            }
            backlog.pop_front();
        }
    };
    // Returns how many publishes were dropped because the backlog was full.
    let emit = |out: Vec<Outbound>, backlog: &mut VecDeque<Pending>| -> u64 {
        let mut dropped = 0;
        for o in out {
            match o {
                Outbound::Publish {
                    topic,
                    payload,
                    retain,
                    delivery,
                } => {
                    if backlog.len() >= BACKLOG_MAX {
                        dropped += 1;
                        continue;
                    }
                    let qos = match delivery {
                        Delivery::AtLeastOnce => QoS::AtLeastOnce,
                        Delivery::AtMostOnce => QoS::AtMostOnce,
                    };
                    backlog.push_back(Pending {
                        topic,
                        payload,
                        retain,
                        qos,
                    });
                }
                Outbound::Recompute(job) => pool.submit(job),
                Outbound::Progress(status) => {
                    if let Some(p) = &progress {
                        if p.try_send(status).is_err() {
                            tracing::debug!("progress listener is behind or gone; update skipped");
                        }
                    }
                }
            }
        }
        flush(backlog);
        dropped
    };
    let mut input = Some(Input::Tick);
    let mut load = Load::default();
    let mut reported = std::time::Instant::now();
    loop {
        flush(&mut backlog);
        load.largest_backlog = load.largest_backlog.max(backlog.len());
        if reported.elapsed() >= LOAD_REPORT {
            load.report(reported.elapsed(), rx.len(), pool.in_progress());
            reported = std::time::Instant::now();
        }
        let first = match input.take() {
            Some(first) => first,
            None => tokio::select! {
                () = shutdown.cancelled() => break,
                event = rx.recv() => match event {
                    Some(SessionEvent::Connected { .. }) => Input::Connected,
                    Some(SessionEvent::Message(p)) => Input::Message(p),
                    Some(SessionEvent::Revoked { reason } | SessionEvent::Failed { reason, .. }) => {
                        tracing::error!(%reason, "broker session ended");
                        break;
                    }
                    Some(SessionEvent::Subscribed | SessionEvent::Disconnected { .. }) => continue,
                    None => break,
                },
                Some(r) = done.recv() => Input::Recomputed(r),
                _ = tick.tick() => Input::Tick,
            },
        };
        // One group: this input and what is already waiting, committed at once; nothing of
        // it is sent before the commit. A failed commit ends the coordinator (its restart
        // resumes from the ledger; unacked batches come again).
        let started = std::time::Instant::now();
        if let Err(e) = engine.begin_group() {
            tracing::error!(error = %e, "the ledger cannot open a transaction");
            break;
        }
        let mut out = step(&mut engine, first);
        let mut inputs = 1;
        let mut ended = false;
        for _ in 1..GROUP_MAX {
            match ready(&mut rx, &mut done) {
                Ready::Input(next) => {
                    out.extend(step(&mut engine, next));
                    inputs += 1;
                }
                Ready::Empty => break,
                Ready::End => {
                    ended = true;
                    break;
                }
            }
        }
        let handled = std::time::Instant::now();
        if let Err(e) = engine.commit_group() {
            tracing::error!(error = %e, "the ledger cannot commit; nothing of this group is sent");
            break;
        }
        load.group(inputs, handled - started, handled.elapsed());
        load.dropped += emit(out, &mut backlog);
        if ended {
            break;
        }
    }
    tracing::info!("coordinator shutting down");
    if !session.close(Duration::from_secs(2)).await {
        tracing::warn!("the broker did not confirm the disconnect");
    }
}
