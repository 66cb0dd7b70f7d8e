//! The I/O shell: the provisioner's MQTT 5 session. Requests arrive on the claim and admin
//! topics with a response topic and correlation data; each is answered on its response
//! topic with the same correlation data. Requests are handled one at a time (a claim is one
//! SQLite transaction and one signature, well under a millisecond of work each).

use crate::provisioner::Provisioner;
use bytes::Bytes;
use rigd_client::{Backoff, Reconnect, Session, SessionEvent, SessionSpec};
use rigd_protocol::claim::{ADMIN_REPLY_PREFIX, ADMIN_TOPIC, CLAIM_TOPIC, REPLY_PREFIX};
use rigd_protocol::encode;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Where the provisioner connects.
pub struct ServiceSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Mutual TLS (certificate CN `fleet:provisioner`); `None` for plain TCP (tests of the
    /// logic only: the broker ACL needs the certificate).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Command run after the CRL changed, so the broker reloads it (e.g.
    /// `systemctl reload mosquitto`); split on whitespace, no shell.
    pub reload_command: Option<Vec<String>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `topic` is one mailbox under `prefix` (one level, no wildcards).
fn is_mailbox(topic: &str, prefix: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|id| !id.is_empty() && !id.contains(['/', '+', '#']))
}

/// Serves requests until `stop` is cancelled.
pub async fn serve(
    settings: ServiceSettings,
    mut provisioner: Provisioner,
    stop: CancellationToken,
) {
    let opts = rigd_client::options(
        "rig-provisioner",
        settings.host.clone(),
        settings.port,
        settings.tls.clone(),
        rigd_client::Lifetime::Persistent { expiry_s: 3600 },
    );
    let spec = SessionSpec {
        options: opts,
        subscriptions: [CLAIM_TOPIC, ADMIN_TOPIC]
            .map(|t| (t.to_owned(), QoS::AtLeastOnce))
            .to_vec(),
        requests: 1024,
        events: 64,
        reconnect: Reconnect::Backoff(Backoff::default()),
    };
    let (session, mut events) = Session::start(spec, stop);
    while let Some(event) = events.recv().await {
        match event {
            SessionEvent::Connected { .. } => {
                tracing::info!("provisioner connected; serving claims")
            }
            SessionEvent::Message(p) => handle(session.client(), &settings, &mut provisioner, &p),
            SessionEvent::Revoked { reason } | SessionEvent::Failed { reason, .. } => {
                tracing::error!(%reason, "broker session ended");
                return;
            }
            SessionEvent::Subscribed | SessionEvent::Disconnected { .. } => {}
        }
    }
}

fn handle(
    client: &AsyncClient,
    settings: &ServiceSettings,
    provisioner: &mut Provisioner,
    p: &Publish,
) {
    let topic = String::from_utf8_lossy(&p.topic);
    let props = p.properties.as_ref();
    let response_topic = props.and_then(|pr| pr.response_topic.clone());
    let correlation = props.and_then(|pr| pr.correlation_data.clone());
    let (prefix, payload, crl_changed) = if topic == CLAIM_TOPIC {
        let (resp, changed) = provisioner.claim(&p.payload, now_ms());
        (REPLY_PREFIX, encode(&resp), changed)
    } else if topic == ADMIN_TOPIC {
        let (resp, changed) = provisioner.admin(&p.payload, now_ms());
        (
            ADMIN_REPLY_PREFIX,
            serde_json::to_vec(&resp).unwrap_or_default(),
            changed,
        )
    } else {
        return;
    };
    if crl_changed {
        reload_broker(settings);
    }
    let Some(response_topic) = response_topic.filter(|t| is_mailbox(t, prefix)) else {
        tracing::warn!(%topic, "request without a valid response topic; not answered");
        return;
    };
    let properties = PublishProperties {
        correlation_data: correlation,
        ..PublishProperties::default()
    };
    if let Err(e) = client.try_publish_with_properties(
        response_topic,
        QoS::AtLeastOnce,
        false,
        Bytes::from(payload),
        properties,
    ) {
        tracing::warn!(error = %e, "response not queued");
    }
}

fn reload_broker(settings: &ServiceSettings) {
    let Some([program, args @ ..]) = settings.reload_command.as_deref() else {
        return;
    };
    match std::process::Command::new(program).args(args).status() {
        Ok(s) if s.success() => tracing::info!("broker reloaded the CRL"),
        Ok(s) => {
            tracing::error!(status = %s, "broker reload command failed: revoked rigs may still connect")
        }
        Err(e) => {
            tracing::error!(error = %e, "broker reload command did not run: revoked rigs may still connect")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_level_mailboxes_are_answered() {
        assert!(is_mailbox(
            "rigd/v1/provision/reply/claim-ab12",
            REPLY_PREFIX
        ));
        for bad in [
            "rigd/v1/provision/reply/",
            "rigd/v1/provision/reply/a/b",
            "rigd/v1/provision/reply/+",
            "rigd/v1/rig/x/units",
            "rigd/v1/provision/replyx/a",
        ] {
            assert!(!is_mailbox(bad, REPLY_PREFIX), "{bad}");
        }
    }
}
