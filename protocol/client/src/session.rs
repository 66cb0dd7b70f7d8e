//! The session loop every fleet program runs: one task polls rumqttc's event loop and hands
//! the program what matters as [`SessionEvent`]s; the program publishes through the
//! [`Session`]'s client, which never waits on that task.
//!
//! - Subscriptions are renewed on every ConnAck, so a broker that lost the session (restart,
//!   expiry) still delivers.
//! - Failures are retried after a jittered [`Backoff`], or end the session ([`Reconnect`]).
//! - A certificate refused as revoked ends the session: retrying cannot help.
//! - [`Session::close`] returns once the broker closed the connection after the DISCONNECT,
//!   so everything published before it was read and no last will follows.

use crate::Backoff;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use rumqttc::Outgoing;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// What the session does when the connection fails.
#[derive(Debug, Clone)]
pub enum Reconnect {
    /// Connect again after each failure, waiting as the backoff says (the daemons).
    Backoff(Backoff),
    /// End the session at the first failure (one-off tools, which report it).
    Never,
}

/// How to run a session.
pub struct SessionSpec {
    /// The MQTT options ([`crate::options`] plus the program's own: last will, manual acks).
    pub options: MqttOptions,
    /// Topic filters subscribed on every ConnAck.
    pub subscriptions: Vec<(String, QoS)>,
    /// Requests (publishes, acks) the client may queue towards the event loop.
    pub requests: usize,
    /// Events that may wait for the program; when full, the event loop waits.
    pub events: usize,
    /// What to do on failure.
    pub reconnect: Reconnect,
}

/// What the session tells the program.
#[derive(Debug)]
pub enum SessionEvent {
    /// (Re)connected; the subscriptions are requested again.
    Connected {
        /// Whether the broker kept the session.
        session_present: bool,
    },
    /// The broker acknowledged a subscription: from now on matching messages arrive,
    /// retained ones first.
    Subscribed,
    /// A message on a subscribed topic. With manual acks, QoS 1 messages must be acked
    /// through [`Session::client`] once handled.
    Message(Box<Publish>),
    /// The connection dropped; the session connects again by itself.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The broker refused the client's certificate as revoked; the session has ended.
    Revoked {
        /// The error as the TLS layer gave it.
        reason: String,
    },
    /// The connection failed and the session does not reconnect; it has ended.
    Failed {
        /// Why.
        reason: String,
        /// Whether it was connected before (lost) or never got there (unreachable).
        connected: bool,
    },
}

/// A running session: the publishing side, and the way to close it.
#[derive(Clone)]
pub struct Session {
    client: AsyncClient,
    /// Notified once the broker closed the connection after our DISCONNECT.
    closed: Arc<Notify>,
}

impl Session {
    /// Starts the session on its own task; events arrive on the receiver until the session
    /// ends, closes, or `stop` is cancelled.
    pub fn start(
        spec: SessionSpec,
        stop: CancellationToken,
    ) -> (Session, mpsc::Receiver<SessionEvent>) {
        let (client, eventloop) = AsyncClient::new(spec.options, spec.requests);
        let (tx, rx) = mpsc::channel(spec.events.max(1));
        let session = Session {
            client,
            closed: Arc::new(Notify::new()),
        };
        let driver = Driver {
            session: session.clone(),
            filters: spec
                .subscriptions
                .into_iter()
                .map(|(topic, qos)| Filter::new(topic, qos))
                .collect(),
            reconnect: spec.reconnect,
            tx,
        };
        tokio::spawn(driver.run(eventloop, stop));
        (session, rx)
    }

    /// The client to publish and ack with; its `try_` calls never wait.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Disconnects cleanly, so that the broker drops the last will: `true` once the broker,
    /// having read the DISCONNECT queued behind every earlier publish, closed the connection;
    /// `false` if that did not happen `within`. Closing the socket sooner loses them: before
    /// the DISCONNECT is written nothing tells the broker, and after it, acknowledgements
    /// still unread make the close a TCP reset, on which the broker discards what it had not
    /// read yet.
    pub async fn close(&self, within: Duration) -> bool {
        let sent = async {
            self.client.disconnect().await.is_ok() && {
                self.closed.notified().await;
                true
            }
        };
        tokio::time::timeout(within, sent).await.unwrap_or(false)
    }
}

struct Driver {
    session: Session,
    filters: Vec<Filter>,
    reconnect: Reconnect,
    tx: mpsc::Sender<SessionEvent>,
}

impl Driver {
    async fn run(mut self, mut eventloop: EventLoop, stop: CancellationToken) {
        let mut connected = false;
        // Failed attempts since the last ConnAck: the first is worth a warning, the rest not.
        let mut failures: u32 = 0;
        // A DISCONNECT went out: read until the broker closes the connection, then stop.
        let mut closing = false;
        loop {
            let polled = tokio::select! {
                p = eventloop.poll() => p,
                () = stop.cancelled() => return,
            };
            let event = match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    (connected, failures) = (true, 0);
                    self.subscribe();
                    let session_present = ack.session_present;
                    // Daemons log each (re)connection; one-off sessions are their caller's detail.
                    if let Reconnect::Backoff(b) = &mut self.reconnect {
                        b.reset();
                        tracing::info!(session_present, "connected to broker");
                    } else {
                        tracing::debug!(session_present, "connected to broker");
                    }
                    SessionEvent::Connected {
                        session_present: ack.session_present,
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => SessionEvent::Subscribed,
                Ok(Event::Incoming(Packet::Publish(p))) => SessionEvent::Message(Box::new(p)),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    closing = true;
                    continue;
                }
                Ok(_) => continue,
                Err(e) if closing => {
                    tracing::debug!(error = %e, "the broker closed the session");
                    self.session.closed.notify_one();
                    return;
                }
                Err(e) if is_revocation(&e) => {
                    let reason = e.to_string();
                    tracing::debug!(error = %reason, "certificate revoked; the session ends");
                    let _ = self.tx.send(SessionEvent::Revoked { reason }).await;
                    return;
                }
                Err(e) => {
                    let reason = e.to_string();
                    let was = std::mem::replace(&mut connected, false);
                    let Reconnect::Backoff(backoff) = &mut self.reconnect else {
                        let failed = SessionEvent::Failed {
                            reason,
                            connected: was,
                        };
                        let _ = self.tx.send(failed).await;
                        return;
                    };
                    let wait = backoff.next_delay();
                    let retry_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                    failures = failures.saturating_add(1);
                    if was {
                        tracing::warn!(error = %reason, retry_ms, "broker connection lost; reconnecting");
                    } else if failures == 1 {
                        tracing::warn!(error = %reason, retry_ms, "broker not reachable; retrying");
                    } else {
                        tracing::debug!(error = %reason, retry_ms, failures, "broker still not reachable");
                    }
                    if was
                        && self
                            .tx
                            .send(SessionEvent::Disconnected { reason })
                            .await
                            .is_err()
                    {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return,
                    }
                    continue;
                }
            };
            if self.tx.send(event).await.is_err() {
                return;
            }
        }
    }

    fn subscribe(&self) {
        if self.filters.is_empty() {
            return;
        }
        if let Err(e) = self.session.client.try_subscribe_many(self.filters.clone()) {
            tracing::error!(error = %e, "subscribe request not queued");
        }
    }
}

/// Whether the broker refused the connection with the TLS alert that our certificate is
/// revoked. rumqttc hides the TLS error inside an io::Error, in places whose `source` does
/// not lead to it, so the places are named here.
fn is_revocation(e: &ConnectionError) -> bool {
    use rumqttc::v5::mqttbytes::Error as Mqtt;
    let io = match e {
        ConnectionError::Io(io)
        | ConnectionError::MqttState(StateError::Io(io))
        | ConnectionError::MqttState(StateError::Deserialization(Mqtt::Io(io))) => io,
        _ => return false,
    };
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)
            )
        })
}
