//! Following the fleet on the broker: the session every fleet-side reader (the exporter, the
//! owners' dashboard) holds to hear the rigs' retained statuses and telemetry and the
//! coordinator's progress, until it is stopped or the broker refuses it for good.

use crate::fleet::Fleet;
use rigd_client::{Backoff, Lifetime, Reconnect, Session, SessionEvent, SessionSpec};
use rumqttc::v5::mqttbytes::QoS;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a broker could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The address is not `host:port`.
    #[error("--broker must be host:port, not {0:?}")]
    Address(String),
    /// The TLS files could not be read.
    #[error("--tls-*: {0}")]
    Tls(String),
}

/// Why following ended other than by being stopped.
#[derive(Debug, thiserror::Error)]
#[error("broker session ended: {0}")]
pub struct Ended(String);

/// The flags that say which broker a fleet reader follows and as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Broker address, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// MQTT client id (one per process; the program's name when not given).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Mutual TLS to the broker.
    #[command(flatten)]
    pub tls: rigd_client::TlsArgs,
}

impl BrokerArgs {
    /// The broker these flags name; `default_client_id` when `--client-id` is not given.
    pub fn resolve(&self, default_client_id: &str) -> Result<Broker, BrokerError> {
        let client_id = self.client_id.as_deref().unwrap_or(default_client_id);
        Broker::new(&self.broker, client_id, &self.tls)
    }
}

/// A broker to follow and the identity to follow it with.
#[derive(Debug, Clone)]
pub struct Broker {
    host: String,
    port: u16,
    client_id: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Broker {
    /// The broker at `address` (`host:port`), as `client_id`, over mutual TLS with the files
    /// `tls` names (plain TCP when it names none).
    pub fn new(
        address: &str,
        client_id: &str,
        tls: &rigd_client::TlsArgs,
    ) -> Result<Self, BrokerError> {
        let bad = || BrokerError::Address(address.to_owned());
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let tls = match tls.files() {
            Some(files) => Some(
                rigd_client::client_config_from_files(&files)
                    .map_err(|e| BrokerError::Tls(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            client_id: client_id.to_owned(),
            tls,
        })
    }
}

/// Hands every message on the fleet's topics to `on_message` (topic, payload) until `stop`
/// is cancelled (`Ok`) or the broker ends the session for good (a revoked certificate).
/// Lost connections are retried with backoff and resubscribed.
pub async fn follow(
    broker: &Broker,
    stop: CancellationToken,
    mut on_message: impl FnMut(&str, &[u8]),
) -> Result<(), Ended> {
    let spec = SessionSpec {
        options: rigd_client::options(
            &broker.client_id,
            &broker.host,
            broker.port,
            broker.tls.clone(),
            Lifetime::Fresh,
        ),
        subscriptions: Fleet::subscriptions()
            .into_iter()
            .map(|f| (f, QoS::AtMostOnce))
            .collect(),
        requests: 16,
        events: 1024,
        reconnect: Reconnect::Backoff(Backoff::default()),
    };
    let (session, mut events) = Session::start(spec, stop.clone());
    let outcome = loop {
        tokio::select! {
            () = stop.cancelled() => break Ok(()),
            event = events.recv() => match event {
                Some(SessionEvent::Message(p)) => {
                    on_message(&String::from_utf8_lossy(&p.topic), &p.payload);
                }
                Some(SessionEvent::Connected { .. }) => tracing::info!("connected to the broker"),
                Some(SessionEvent::Disconnected { reason }) => {
                    tracing::warn!(%reason, "broker connection lost; reconnecting");
                }
                Some(SessionEvent::Revoked { reason } | SessionEvent::Failed { reason, .. }) => {
                    break Err(Ended(reason.to_string()));
                }
                Some(SessionEvent::Subscribed) => {}
                None => break Err(Ended("the session task stopped".into())),
            },
        }
    };
    stop.cancel();
    session.close(std::time::Duration::from_secs(1)).await;
    outcome
}

/// Why a fleet-side service with an HTTP listener stopped, other than by being stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The broker ended the session for good.
    #[error(transparent)]
    Ended(#[from] Ended),
    /// The listener's task panicked.
    #[error("the HTTP task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// [`follow`]s `broker` while `http` serves, then waits for `http`, which must stop when
/// `stop` is cancelled (following cancels it as it ends).
pub async fn follow_while_serving(
    broker: &Broker,
    stop: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    on_message: impl FnMut(&str, &[u8]),
) -> Result<(), ServiceError> {
    let outcome = follow(broker, stop, on_message).await;
    http.await?;
    Ok(outcome?)
}
