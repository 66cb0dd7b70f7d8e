//! An embedded rumqttd broker on a free loopback port, for the devnet and for tests.
//!
//! rumqttd reports a failed bind only in its own log, so readiness is proven by connecting to
//! the port; on failure another port is tried.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// Largest MQTT payload the broker accepts: above a maximal frame.
pub const MAX_PAYLOAD_BYTES: usize = 1_153_434; // about 1.1 MiB

/// How long to wait for the broker to accept connections on a port.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ports tried before giving up.
const ATTEMPTS: usize = 3;

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free port could be found.
    #[error("cannot find a free loopback port: {0}")]
    Port(#[source] std::io::Error),
    /// Its thread could not be spawned.
    #[error("cannot spawn the broker thread: {0}")]
    Thread(#[source] std::io::Error),
    /// It never accepted connections.
    #[error("embedded broker did not accept connections on 127.0.0.1 within {READY_TIMEOUT:?} after {ATTEMPTS} tries")]
    NotReady,
}

/// A running embedded broker. It lives on its own threads until the process exits: rumqttd
/// has no way to stop it.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker speaking MQTT 5 on a free port of 127.0.0.1 and waits until it
    /// accepts connections.
    pub fn start() -> Result<Self, BrokerError> {
        for attempt in 1..=ATTEMPTS {
            let addr = free_port().map_err(BrokerError::Port)?;
            let mut broker = rumqttd::Broker::new(config(addr));
            thread::Builder::new()
                .name("rumqttd".into())
                .spawn(move || {
                    if let Err(error) = broker.start() {
                        tracing::error!(%error, "embedded broker stopped");
                    }
                })
                .map_err(BrokerError::Thread)?;
            if wait_until_accepting(addr, READY_TIMEOUT) {
                tracing::debug!(%addr, attempt, "embedded broker up");
                return Ok(Self { addr });
            }
            tracing::warn!(%addr, attempt, "embedded broker did not come up; trying another port");
        }
        Err(BrokerError::NotReady)
    }

    /// Host of the broker.
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// Port of the broker.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Asks the OS for a free port by binding port 0 and letting it go.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Polls `addr` with TCP connects until one succeeds or `timeout` passes.
pub fn wait_until_accepting(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One segment of a topic's commit log, bytes of payload (a larger message still fits: it
/// fills a segment of its own).
const SEGMENT_BYTES: usize = 16 * 1024;
/// Segments kept per topic; older ones are dropped (every devnet client reads as it goes).
const SEGMENT_COUNT: usize = 4;

fn config(addr: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PAYLOAD_BYTES,
        max_inflight_count: 200,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, addr: SocketAddr| rumqttd::ServerSettings {
        name: name.into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    // Only v5 listens on the port; the devnet's clients all speak MQTT 5.
    let mut v5 = HashMap::new();
    v5.insert("v5".to_string(), server("rigd-devnet-v5", addr));
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            // rumqttd keeps the messages of every topic in a commit log, a segment at a
            // time, and each kept payload pins the read buffer it arrived in. Small segments
            // cap a topic's log within minutes even for small, frequent messages
            // (telemetry): a long devnet run holds a bounded, small amount per topic.
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            ..Default::default()
        },
        v5: Some(v5),
        ..Default::default()
    }
}
