//! The MQTT 5 options every fleet program connects with, built in one place so that their
//! settings cannot drift: keep-alive, `TCP_NODELAY`, the packet size cap, the outgoing
//! in-flight window, the session's lifetime and TLS.

use crate::transport;
use rigd_protocol::MAX_FRAME_BYTES;
use rumqttc::v5::MqttOptions;
use rumqttc::NetworkOptions;
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;

/// The largest packet a fleet client takes or sends: a frame's cap plus room for its topic
/// and properties. Larger ones are refused before they are read.
pub const MAX_PACKET_BYTES: u32 = MAX_FRAME_BYTES as u32 + 4096;

/// Keep-alive of every fleet client.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How a client's session lives on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Kept for `expiry_s` while the client is away, so QoS 1 messages wait for it (rigd,
    /// the coordinator, the provisioner).
    Persistent {
        /// Seconds the broker keeps the session after a disconnect.
        expiry_s: u32,
    },
    /// Started afresh on every connection (rigctl, one-off requests).
    Fresh,
}

/// The options of client `client_id` to `host:port`, over TLS when `tls` is given.
pub fn options(
    client_id: impl Into<String>,
    host: impl Into<String>,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    session: Lifetime,
) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, host, port);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    opts.set_network_options(network);
    if let Some(tls) = tls {
        opts.set_transport(transport(tls));
    }
    opts.set_keep_alive(KEEP_ALIVE)
        .set_max_packet_size(Some(MAX_PACKET_BYTES))
        .set_outgoing_inflight_upper_limit(100);
    match session {
        Lifetime::Persistent { expiry_s } => {
            opts.set_clean_start(false)
                .set_session_expiry_interval(Some(expiry_s));
        }
        Lifetime::Fresh => {
            opts.set_clean_start(true);
        }
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds of session get the shared settings; only the session's lifetime differs.
    #[test]
    fn every_client_gets_the_same_settings() {
        let kept = options(
            "a",
            "127.0.0.1",
            1883,
            None,
            Lifetime::Persistent { expiry_s: 60 },
        );
        let fresh = options("b", "127.0.0.1", 1883, None, Lifetime::Fresh);
        for o in [&kept, &fresh] {
            assert_eq!(o.keep_alive(), KEEP_ALIVE);
            assert_eq!(o.max_packet_size(), Some(MAX_PACKET_BYTES));
        }
        assert!(!kept.clean_start() && fresh.clean_start());
        assert_eq!(kept.session_expiry_interval(), Some(60));
    }
}
