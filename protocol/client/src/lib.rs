//! The fleet client: how every fleet program (rigd, the coordinator, the provisioner, rigctl)
//! reaches the broker.
//!
//! - [`tls`](client_config): mutual TLS towards the broker, with the key in a file or in a key
//!   store that signs without showing it;
//! - [`options`]: the MQTT 5 options, the same for every program;
//! - [`Session`]: the session loop (reconnect with jittered backoff, subscriptions renewed on
//!   every ConnAck, a clean close that the broker sees before it would publish a last will);
//! - [`request`]: one MQTT 5 request/response exchange;
//! - `http` (feature `http`): one HTTP/1.1 exchange over TCP or TLS.

mod backoff;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "http")]
pub mod http;
mod options;
mod request;
mod session;
mod tls;

pub use backoff::Backoff;
#[cfg(feature = "cli")]
pub use cli::{daemon_main, init_logging, run_until_signal, DomainArgs, TlsArgs};
pub use options::{options, Lifetime, KEEP_ALIVE, MAX_PACKET_BYTES};
pub use request::{request, RequestError};
pub use session::{Reconnect, Session, SessionEvent, SessionSpec};
pub use tls::{
    client_config, client_config_from_files, common_name, der_signature, load_certs, parse_certs,
    sha256, transport, ClientIdentity, DigestSigner, TlsError, TlsFiles,
};

/// Unix time in milliseconds (0 before 1970, saturating far in the future).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
