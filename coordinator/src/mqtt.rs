//! The I/O shell: the fleet client's [`Session`] polls the MQTT event loop and forwards
//! messages; the engine task handles them, runs the timers and publishes with `try_publish`, so nothing ever waits on
//! the event loop from inside it. Recomputation runs on a [`Pool`] of its own threads and
//! comes back to the engine task as a message.

use crate::engine::{Engine, Outbound};
use crate::recompute::Pool;
use crate::CoordinatorConfig;
use rigd_client::{Backoff, Reconnect, Session, SessionEvent, SessionSpec};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::CoordinatorStatus;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Requests the client may queue towards the event loop; a publish beyond that is dropped
/// and logged (units come back through leases, acks through the rig's resend).
const REQUEST_CAPACITY: usize = 4096;
/// Messages from the broker waiting for the engine; when full the event loop waits.
const INBOUND_CAPACITY: usize = 1024;
/// Timer period of the engine: lease expiry, assignment, earnings.
const TICK: Duration = Duration::from_millis(100);

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
        subscriptions: [Channel::Status, Channel::Receipts]
            .map(|c| (topics::all_rigs(c), QoS::AtLeastOnce))
            .to_vec(),
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
    emit(engine.tick(rigd_client::unix_ms()));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = rx.recv() => match event {
                Some(SessionEvent::Connected { .. }) => emit(engine.connected(rigd_client::unix_ms())),
                Some(SessionEvent::Message(p)) => {
                    let topic = String::from_utf8_lossy(&p.topic);
                    emit(engine.handle(&topic, &p.payload, rigd_client::unix_ms()));
                }
                Some(SessionEvent::Revoked { reason } | SessionEvent::Failed { reason, .. }) => {
                    tracing::error!(%reason, "broker session ended");
                    break;
                }
                Some(SessionEvent::Subscribed | SessionEvent::Disconnected { .. }) => {}
                None => break,
            },
            Some(r) = done.recv() => emit(engine.recomputed(r, rigd_client::unix_ms())),
            _ = tick.tick() => emit(engine.tick(rigd_client::unix_ms())),
        }
    }
    tracing::info!("coordinator shutting down");
    if !session.close(Duration::from_secs(2)).await {
        tracing::warn!("the broker did not confirm the disconnect");
    }
}
