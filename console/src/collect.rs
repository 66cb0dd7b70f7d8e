//! The MQTT shell around [`FleetView`]: connect, subscribe, read the retained messages, stop
//! once the broker has been quiet for a moment or the wait is over.

use crate::view::FleetView;
use rigd_client::{Reconnect, Session, SessionEvent, SessionSpec};
use rumqttc::v5::mqttbytes::QoS;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::Receiver;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

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
    #[error("connection to broker {addr} lost: {reason}")]
    Lost {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The subscription could not be queued.
    #[error("could not subscribe: {0}")]
    Subscribe(String),
}

/// Subscribes to `filters` and folds every message received into a [`FleetView`]. Bad frames
/// are logged and skipped.
pub async fn collect(opts: &Collect, filters: &[String]) -> Result<FleetView, CollectError> {
    let subs = filters.iter().map(|f| (f.clone(), QoS::AtMostOnce));
    let mut session = OneOff::start(opts, client_id(), subs.collect(), 16);
    let deadline = Instant::now() + opts.wait;
    let mut view = FleetView::default();
    // Set once the subscription is acknowledged: collection ends when it passes.
    let mut quiet_until: Option<Instant> = None;
    loop {
        let until = quiet_until.map_or(deadline, |q| q.min(deadline));
        let Some(event) = session.next_before(until).await? else {
            break;
        };
        match event {
            SessionEvent::Subscribed => quiet_until = Some(Instant::now() + QUIET),
            SessionEvent::Message(p) => {
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
    session.close().await;
    Ok(view)
}

/// Subscribes to `topic` and returns the payload of every message received until the wait is
/// over (live messages, unlike [`collect`], which stops once the retained ones are in).
pub async fn listen(opts: &Collect, topic: &str) -> Result<Vec<Vec<u8>>, CollectError> {
    let mut session = OneOff::start(
        opts,
        client_id(),
        vec![(topic.to_owned(), QoS::AtMostOnce)],
        16,
    );
    let deadline = Instant::now() + opts.wait;
    let mut payloads = vec![];
    while let Some(event) = session.next_before(deadline).await? {
        if let SessionEvent::Message(p) = event {
            payloads.push(p.payload.to_vec());
        }
    }
    session.close().await;
    Ok(payloads)
}

/// rigctl's session: one connection, no reconnect; its failures become [`CollectError`]s.
pub(crate) struct OneOff {
    session: Session,
    events: Receiver<SessionEvent>,
    addr: String,
    wait: Duration,
    connected: bool,
    _stop: DropGuard,
}

impl OneOff {
    /// Connects to the broker of `opts` (TLS when set) as `client_id`, subscribed to
    /// `filters`, with room for `requests` queued publishes.
    pub(crate) fn start(
        opts: &Collect,
        client_id: String,
        filters: Vec<(String, QoS)>,
        requests: usize,
    ) -> Self {
        let mut options = rigd_client::options(
            client_id,
            opts.host.clone(),
            opts.port,
            opts.tls.clone(),
            rigd_client::Lifetime::Fresh,
        );
        options.set_connection_timeout(opts.wait.as_secs().max(1));
        let spec = SessionSpec {
            options,
            subscriptions: filters,
            requests,
            events: 1024,
            reconnect: Reconnect::Never,
        };
        let stop = CancellationToken::new();
        let (session, events) = Session::start(spec, stop.clone());
        OneOff {
            session,
            events,
            addr: format!("{}:{}", opts.host, opts.port),
            wait: opts.wait,
            connected: false,
            _stop: stop.drop_guard(),
        }
    }

    /// The client to publish with.
    pub(crate) fn client(&self) -> &rumqttc::v5::AsyncClient {
        self.session.client()
    }

    /// The next event before `until`: `Ok(None)` when the time passes on a live session; an
    /// error when no session came up (`Unreachable`) or it was lost (`Lost`).
    pub(crate) async fn next_before(
        &mut self,
        until: Instant,
    ) -> Result<Option<SessionEvent>, CollectError> {
        let ended = |connected: bool, reason: String, addr: &str| {
            let addr = addr.to_owned();
            if connected {
                CollectError::Lost { addr, reason }
            } else {
                CollectError::Unreachable { addr, reason }
            }
        };
        match timeout_at(until, self.events.recv()).await {
            Err(_) if self.connected => Ok(None),
            Err(_) => Err(CollectError::Unreachable {
                addr: self.addr.clone(),
                reason: format!("no session within {} ms", self.wait.as_millis()),
            }),
            Ok(None) => Err(ended(
                self.connected,
                "the session ended".into(),
                &self.addr,
            )),
            Ok(Some(SessionEvent::Failed { reason, connected })) => {
                Err(ended(connected, reason, &self.addr))
            }
            Ok(Some(SessionEvent::Revoked { reason })) => {
                Err(ended(self.connected, reason, &self.addr))
            }
            Ok(Some(event)) => {
                if matches!(event, SessionEvent::Connected { .. }) {
                    self.connected = true;
                }
                Ok(Some(event))
            }
        }
    }

    /// Disconnects; best effort, as the broker drops a fresh session with its socket anyway.
    pub(crate) async fn close(self) {
        self.session.close(Duration::from_millis(500)).await;
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
