//! The MQTT shell around [`FleetView`]: connect, subscribe, read the retained messages, stop
//! once the broker has been quiet for a moment or the wait is over.

use crate::view::FleetView;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::{timeout_at, Instant};

/// How long the broker must stay quiet after the last retained message before collecting
/// stops early.
pub const QUIET: Duration = Duration::from_millis(300);

/// Where and how long to listen.
#[derive(Debug, Clone)]
pub struct Collect {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// How long to wait for retained messages at most.
    pub wait: Duration,
    /// Mutual TLS settings; `None` for plain TCP.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Why collecting failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// No MQTT session came up within the wait.
    #[error("broker {addr} unreachable: {reason}; is it running, and is --broker right?")]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The session broke after it was up.
    #[error("connection to broker {addr} lost: {source}")]
    Lost {
        /// `host:port`.
        addr: String,
        /// What rumqttc said.
        #[source]
        source: Box<ConnectionError>,
    },
    /// The subscription could not be queued.
    #[error("could not subscribe: {0}")]
    Subscribe(String),
}

/// Subscribes to `filters` and folds every message received into a [`FleetView`]. Bad frames
/// are logged and skipped.
pub async fn collect(opts: &Collect, filters: &[String]) -> Result<FleetView, CollectError> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let (client, mut eventloop) = connect(opts);
    let subs: Vec<Filter> = filters
        .iter()
        .map(|f| Filter::new(f.clone(), QoS::AtMostOnce))
        .collect();
    client
        .subscribe_many(subs)
        .await
        .map_err(|e| CollectError::Subscribe(e.to_string()))?;

    let deadline = Instant::now() + opts.wait;
    let mut view = FleetView::default();
    let mut connected = false;
    // Set once the subscription is acknowledged: collection ends when it passes.
    let mut quiet_until: Option<Instant> = None;
    loop {
        let until = quiet_until.map_or(deadline, |q| q.min(deadline));
        let Some(event) = poll_before(&mut eventloop, until, connected, &addr, opts.wait).await?
        else {
            break;
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => connected = true,
            Event::Incoming(Packet::SubAck(_)) => quiet_until = Some(Instant::now() + QUIET),
            Event::Incoming(Packet::Publish(p)) => {
                let topic = String::from_utf8_lossy(&p.topic);
                if let Err(error) = view.apply(&topic, &p.payload) {
                    tracing::warn!(%topic, %error, bytes = p.payload.len(), "skipping message");
                }
                if quiet_until.is_some() {
                    quiet_until = Some(Instant::now() + QUIET);
                }
            }
            _ => {}
        }
    }
    disconnect(&client, &mut eventloop).await;
    Ok(view)
}

/// Subscribes to `topic` and returns the payload of every message received until the wait is
/// over (live messages, unlike [`collect`], which stops once the retained ones are in).
pub async fn listen(opts: &Collect, topic: &str) -> Result<Vec<Vec<u8>>, CollectError> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let (client, mut eventloop) = connect(opts);
    client
        .subscribe(topic, QoS::AtMostOnce)
        .await
        .map_err(|e| CollectError::Subscribe(e.to_string()))?;
    let deadline = Instant::now() + opts.wait;
    let (mut payloads, mut connected) = (vec![], false);
    while let Some(event) =
        poll_before(&mut eventloop, deadline, connected, &addr, opts.wait).await?
    {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => connected = true,
            Event::Incoming(Packet::Publish(p)) => payloads.push(p.payload.to_vec()),
            _ => {}
        }
    }
    disconnect(&client, &mut eventloop).await;
    Ok(payloads)
}

/// A fresh MQTT 5 client for `opts` (TLS when set); nothing is sent until it is polled.
fn connect(opts: &Collect) -> (AsyncClient, EventLoop) {
    let mut options = rigd_tls::options(
        client_id(),
        opts.host.clone(),
        opts.port,
        opts.tls.clone(),
        rigd_tls::Session::Fresh,
    );
    options.set_connection_timeout(opts.wait.as_secs().max(1));
    AsyncClient::new(options, 16)
}

/// One event from the broker before `until`: `Ok(None)` when the time passes on a live
/// session; an error when no session came up (`Unreachable`) or it was lost (`Lost`).
async fn poll_before(
    eventloop: &mut EventLoop,
    until: Instant,
    connected: bool,
    addr: &str,
    wait: Duration,
) -> Result<Option<Event>, CollectError> {
    match timeout_at(until, eventloop.poll()).await {
        Err(_) if connected => Ok(None),
        Err(_) => Err(CollectError::Unreachable {
            addr: addr.to_owned(),
            reason: format!("no session within {} ms", wait.as_millis()),
        }),
        Ok(Err(e)) if connected => Err(CollectError::Lost {
            addr: addr.to_owned(),
            source: Box::new(e),
        }),
        Ok(Err(e)) => Err(CollectError::Unreachable {
            addr: addr.to_owned(),
            reason: e.to_string(),
        }),
        Ok(Ok(event)) => Ok(Some(event)),
    }
}

/// Best effort: the broker drops the session when the socket closes anyway.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_ok() {
        let _ = timeout_at(
            Instant::now() + Duration::from_millis(100),
            eventloop.poll(),
        )
        .await;
    }
}

/// The current time, Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn client_id() -> String {
    format!("rigctl-{}-{}", std::process::id(), now_ms() % 1_000_000)
}
