//! rigd's MQTT 5 session: the fleet client's [`Session`] with the rig's subscriptions and
//! last will. Publishing never blocks (`try_publish`): what cannot be queued now is sent
//! again from the durable outbox later.

use bytes::Bytes;
use rigd_client::{Backoff, Reconnect, Session, SessionSpec};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::RigId;
use rumqttc::v5::mqttbytes::v5::{LastWill, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the link tells the supervisor: the fleet client's session events (a revoked
/// certificate ends the link; every other failure is retried).
pub use rigd_client::SessionEvent as LinkEvent;

/// The publishing side of the session.
#[derive(Clone)]
pub struct Link {
    session: Session,
    rig: RigId,
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
        let session = rigd_client::Lifetime::Persistent {
            expiry_s: 7 * 24 * 3600,
        };
        let mut opts = rigd_client::options(s.rig.as_str(), s.host, s.port, s.tls, session);
        opts.set_manual_acks(true).set_last_will(LastWill::new(
            topics::rig(&s.rig, Channel::Status),
            s.will,
            QoS::AtLeastOnce,
            true,
            None,
        ));
        let subscriptions = [
            Channel::Units,
            Channel::Acks,
            Channel::Commands,
            Channel::Earnings,
        ]
        .map(|ch| (topics::rig(&s.rig, ch), QoS::AtLeastOnce))
        .to_vec();
        let spec = SessionSpec {
            options: opts,
            subscriptions,
            requests: 256,
            events: 1024,
            reconnect: Reconnect::Backoff(Backoff::default()),
        };
        let (session, rx) = Session::start(spec, stop);
        (
            Link {
                session,
                rig: s.rig,
            },
            rx,
        )
    }

    /// Queues a publish; `false` when it could not be queued now.
    pub fn publish(&self, channel: Channel, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        let topic = topics::rig(&self.rig, channel);
        match self
            .session
            .client()
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
        self.session
            .client()
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
        if let Err(e) = self.session.client().try_ack(publish) {
            tracing::debug!(error = %e, "ack not queued");
        }
    }

    /// Disconnects cleanly, so that the broker drops the last will over the status just
    /// sent (see [`Session::close`]); gives up after 2 s.
    pub async fn disconnect(&self) {
        if !self.session.close(Duration::from_secs(2)).await {
            tracing::warn!("the broker was not told of the stop; it may publish the last will");
        }
    }
}
