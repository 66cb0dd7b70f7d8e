//! The I/O shell: one task polls the MQTT event loop and forwards messages; the engine task
//! handles them, runs the timers and publishes with `try_publish`, so nothing ever waits on
//! the event loop from inside it. Recomputation runs on a [`Pool`] of its own threads and
//! comes back to the engine task as a message.

use crate::engine::{Engine, Outbound};
use crate::recompute::Pool;
use crate::CoordinatorConfig;
use bytes::Bytes;
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::CoordinatorStatus;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Requests the client may queue towards the event loop; a publish beyond that is dropped
/// and logged (units come back through leases, acks through the rig's resend).
const REQUEST_CAPACITY: usize = 4096;
/// Messages from the broker waiting for the engine; when full the event loop waits.
const INBOUND_CAPACITY: usize = 1024;
/// Timer period of the engine: lease expiry, assignment, earnings.
const TICK: Duration = Duration::from_millis(100);

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

enum FromBroker {
    Connected,
    Message(String, Bytes),
}

fn options(
    config: &CoordinatorConfig,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    rigd_tls::options(
        &config.client_id,
        &config.broker_host,
        config.broker_port,
        tls,
        rigd_tls::Session::Persistent { expiry_s: 3600 },
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
    let (client, eventloop) = AsyncClient::new(options(config, tls), REQUEST_CAPACITY);
    let (tx, mut rx) = mpsc::channel(INBOUND_CAPACITY);
    let mut poller = tokio::spawn(poll(eventloop, client.clone(), tx));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    // The engine's task keeps one core; the others recompute.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1));
    let pool = match Pool::start(threads, done_tx) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "recompute threads could not start");
            poller.abort();
            return;
        }
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let emit = |out: Vec<Outbound>| {
        for o in out {
            match o {
                Outbound::Publish {
                    topic,
                    payload,
                    retain,
                } => {
                    if let Err(e) = client.try_publish(&topic, QoS::AtLeastOnce, retain, payload) {
                        tracing::warn!(topic, error = %e, "publish dropped: client queue full");
                    }
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
    };
    emit(engine.tick(now_ms()));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(FromBroker::Connected) => emit(engine.connected(now_ms())),
                Some(FromBroker::Message(topic, payload)) => emit(engine.handle(&topic, &payload, now_ms())),
                None => break,
            },
            Some(r) = done.recv() => emit(engine.recomputed(r, now_ms())),
            _ = tick.tick() => emit(engine.tick(now_ms())),
        }
    }
    tracing::info!("coordinator shutting down");
    if client.try_disconnect().is_ok()
        && tokio::time::timeout(Duration::from_secs(2), &mut poller)
            .await
            .is_ok()
    {
        return;
    }
    poller.abort();
}

/// Polls the event loop: forwards messages, resubscribes on every ConnAck, backs off on
/// errors (the broker may be restarting). Ends once a DISCONNECT went out or the engine is
/// gone.
async fn poll(mut eventloop: EventLoop, client: AsyncClient, tx: mpsc::Sender<FromBroker>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(200);
                tracing::info!(session_present = ack.session_present, "connected to broker");
                let filters = [Channel::Status, Channel::Receipts]
                    .map(|c| Filter::new(topics::all_rigs(c), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::error!(error = %e, "subscribe request dropped");
                }
                if tx.send(FromBroker::Connected).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                if tx
                    .send(FromBroker::Message(topic, p.payload))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "broker connection failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
