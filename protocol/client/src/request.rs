//! One MQTT 5 request/response exchange on a fresh session.

use crate::{Reconnect, Session, SessionEvent, SessionSpec};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::MqttOptions;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The session failed or could not be set up.
    #[error("broker session failed: {0}")]
    Session(String),
    /// No answer came in time.
    #[error("no answer within {0} ms")]
    Timeout(u128),
}

/// Subscribes to `mailbox`; once the broker acknowledged that, publishes `payload` on `topic`
/// with `mailbox` as response topic and random correlation data, and returns the payload of
/// the first message on `mailbox` carrying that correlation data. `opts` must name a client
/// id the broker lets read `mailbox`.
pub async fn request(
    opts: MqttOptions,
    topic: &str,
    mailbox: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, RequestError> {
    let correlation = Bytes::from(rand::random::<[u8; 16]>().to_vec());
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let spec = SessionSpec {
        options: opts,
        subscriptions: vec![(mailbox.to_owned(), QoS::AtLeastOnce)],
        requests: 16,
        events: 16,
        reconnect: Reconnect::Never,
    };
    let (session, mut events) = Session::start(spec, stop);
    let exchange = async {
        let mut sent = false;
        while let Some(event) = events.recv().await {
            match event {
                SessionEvent::Subscribed if !sent => {
                    let properties = PublishProperties {
                        response_topic: Some(mailbox.to_owned()),
                        correlation_data: Some(correlation.clone()),
                        ..PublishProperties::default()
                    };
                    session
                        .client()
                        .try_publish_with_properties(
                            topic,
                            QoS::AtLeastOnce,
                            false,
                            payload.clone(),
                            properties,
                        )
                        .map_err(|e| RequestError::Session(e.to_string()))?;
                    sent = true;
                }
                SessionEvent::Message(m)
                    if m.topic == mailbox.as_bytes()
                        && m.properties
                            .as_ref()
                            .and_then(|p| p.correlation_data.as_ref())
                            == Some(&correlation) =>
                {
                    return Ok(m.payload);
                }
                SessionEvent::Failed { reason, .. } | SessionEvent::Revoked { reason } => {
                    return Err(RequestError::Session(reason))
                }
                _ => {}
            }
        }
        Err(RequestError::Session("the session ended".into()))
    };
    let out = tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(RequestError::Timeout(timeout.as_millis())));
    session.close(Duration::from_millis(500)).await;
    out
}
