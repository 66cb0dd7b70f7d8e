//! The MQTT 5 session. The event loop runs on its own task and forwards what matters to the
//! supervisor; publishing never blocks (`try_publish`): what cannot be queued now is sent
//! again from the durable outbox later.

use bytes::Bytes;
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::RigId;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, StateError};
use rumqttc::Outgoing;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// What the link tells the supervisor.
#[derive(Debug)]
pub enum LinkEvent {
    /// (Re)connected; subscriptions are renewed.
    Connected {
        /// Whether the broker kept the session.
        session_present: bool,
    },
    /// A message on a subscribed topic. QoS 1 messages must be acknowledged with
    /// [`Link::ack`] once handled.
    Message(Box<Publish>),
    /// The connection dropped; the link reconnects by itself.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The broker refused the rig's certificate as revoked; the link has stopped.
    Revoked {
        /// The error as the TLS layer gave it.
        reason: String,
    },
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

/// The publishing side of the session.
#[derive(Clone)]
pub struct Link {
    client: AsyncClient,
    rig: RigId,
    /// Notified once the broker closed the session after rigd's DISCONNECT.
    closed: Arc<Notify>,
}

/// Settings of the session.
pub struct LinkSettings {
    /// The rig (also the client id).
    pub rig: RigId,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Last will, published retained on the rig's status topic if the rig vanishes.
    pub will: Vec<u8>,
    /// Mutual TLS settings; `None` for plain TCP.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Link {
    /// Starts the session; events arrive on the returned receiver until `stop`.
    pub fn start(s: LinkSettings, stop: CancellationToken) -> (Link, mpsc::Receiver<LinkEvent>) {
        let session = rigd_tls::Session::Persistent {
            expiry_s: 7 * 24 * 3600,
        };
        let mut opts = rigd_tls::options(s.rig.as_str(), s.host, s.port, s.tls, session);
        opts.set_manual_acks(true)
            .set_request_channel_capacity(256)
            .set_last_will(LastWill::new(
                topics::rig(&s.rig, Channel::Status),
                s.will,
                QoS::AtLeastOnce,
                true,
                None,
            ));
        let (client, eventloop) = AsyncClient::new(opts, 256);
        let (tx, rx) = mpsc::channel(1024);
        let link = Link {
            client,
            rig: s.rig,
            closed: Arc::new(Notify::new()),
        };
        tokio::spawn(drive(eventloop, link.clone(), tx, stop));
        (link, rx)
    }

    /// Queues a publish; `false` when it could not be queued now.
    pub fn publish(&self, channel: Channel, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        let topic = topics::rig(&self.rig, channel);
        match self
            .client
            .try_publish(topic, qos, retain, Bytes::from(payload))
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(channel = channel.as_str(), error = %e, "publish not queued");
                false
            }
        }
    }

    /// Queues a command reply on the rig's own `replies` topic (QoS 1), echoing the
    /// command's MQTT 5 correlation data; `false` when it could not be queued now.
    pub fn reply(&self, payload: Vec<u8>, correlation: Option<Bytes>) -> bool {
        let properties = PublishProperties {
            correlation_data: correlation,
            ..PublishProperties::default()
        };
        self.client
            .try_publish_with_properties(
                topics::rig(&self.rig, Channel::Replies),
                QoS::AtLeastOnce,
                false,
                Bytes::from(payload),
                properties,
            )
            .is_ok()
    }

    /// Acknowledges a QoS 1 message after it was handled.
    pub fn ack(&self, publish: &Publish) {
        if let Err(e) = self.client.try_ack(publish) {
            tracing::debug!(error = %e, "ack not queued");
        }
    }

    /// Disconnects cleanly, so that the broker drops the last will: returns once the broker,
    /// having read the DISCONNECT queued behind every earlier publish, closed the connection,
    /// or after 2 s. Closing the socket sooner loses them: before the DISCONNECT is written
    /// nothing tells the broker, and after it, acknowledgements still unread make the close
    /// a TCP reset, on which the broker discards what it had not read yet. Either way the
    /// broker publishes the last will over the status just sent.
    pub async fn disconnect(&self) {
        let sent = async {
            self.client.disconnect().await.is_ok() && {
                self.closed.notified().await;
                true
            }
        };
        let sent = tokio::time::timeout(Duration::from_secs(2), sent)
            .await
            .unwrap_or(false);
        if !sent {
            tracing::warn!("the broker was not told of the stop; it may publish the last will");
        }
    }

    fn subscribe(&self) {
        for ch in [
            Channel::Units,
            Channel::Acks,
            Channel::Commands,
            Channel::Earnings,
        ] {
            if let Err(e) = self
                .client
                .try_subscribe(topics::rig(&self.rig, ch), QoS::AtLeastOnce)
            {
                tracing::warn!(channel = ch.as_str(), error = %e, "subscribe not queued");
            }
        }
    }
}

async fn drive(
    mut eventloop: EventLoop,
    link: Link,
    tx: mpsc::Sender<LinkEvent>,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut connected = false;
    // A DISCONNECT went out: read until the broker closes the connection, then stop.
    let mut closing = false;
    loop {
        let polled = tokio::select! {
            p = eventloop.poll() => p,
            _ = stop.cancelled() => return,
        };
        let event = match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                connected = true;
                link.subscribe();
                tracing::info!(session_present = ack.session_present, "connected to broker");
                LinkEvent::Connected {
                    session_present: ack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Message(Box::new(p)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                closing = true;
                continue;
            }
            Ok(_) => continue,
            Err(e) if closing => {
                tracing::debug!(error = %e, "the broker closed the session");
                link.closed.notify_one();
                return;
            }
            Err(e) if is_revocation(&e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "the broker refused this rig's certificate as revoked");
                let _ = tx.send(LinkEvent::Revoked { reason }).await;
                return;
            }
            Err(e) => {
                failures += 1;
                let reason = e.to_string();
                if connected {
                    tracing::warn!(error = %reason, "broker connection lost; reconnecting");
                } else {
                    tracing::debug!(error = %reason, "broker not reachable; retrying");
                }
                let was = std::mem::replace(&mut connected, false);
                let wait = Duration::from_millis((100u64 << failures.min(4)).min(1000));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
                if !was {
                    continue;
                }
                LinkEvent::Disconnected { reason }
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
