//! How the fleet-side web services (the owners' dashboard, the Prometheus exporter) take HTTP
//! connections. Anyone on the network can open one, so every connection is bounded:
//!
//! - HTTP/1.1 over TCP, or over TLS (rustls, ring) when a certificate and key are given;
//! - a connection that does not finish a TLS handshake within [`Limits::handshake_timeout`],
//!   or a request's head within [`Limits::header_timeout`] (from the connection's start or
//!   the previous answer: a slow or idle peer), is closed;
//! - an answer that takes longer than [`Limits::request_timeout`] becomes a 503;
//! - at most [`Limits::max_connections`] connections are open, at most
//!   [`Limits::max_per_ip`] from one address; one more is closed as soon as it is accepted;
//! - a request's head is at most [`MAX_HEAD`] bytes.
//!
//! Handlers see the peer's address as axum's `ConnectInfo<SocketAddr>`.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most bytes of one request's head (request line and headers) buffered.
pub const MAX_HEAD: usize = 64 * 1024;

/// How long to wait after a failed `accept` (out of file descriptors, for example) before the
/// next one, so a full table does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one connection, and all of them together, may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a request's head, counted from the connection's start or the end of
    /// the previous answer.
    pub header_timeout: Duration,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest time from a request's head to its answer.
    pub request_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one address.
    pub max_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_per_ip: 64,
        }
    }
}

/// The command-line flags of a service's HTTP side.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// PEM certificate chain (leaf first) to serve HTTPS with; without it, plain HTTP.
    #[arg(long, requires = "https_key")]
    pub https_cert: Option<PathBuf>,
    /// PEM private key of `--https-cert`.
    #[arg(long, requires = "https_cert")]
    pub https_key: Option<PathBuf>,
    /// Longest wait for a request's head (and for a TLS handshake), ms.
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Longest time to answer one request, ms.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Most connections open at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Most connections open at once from one address.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_ip: usize,
}

impl HttpArgs {
    /// The TLS settings (when a certificate is given) and the limits the flags name.
    pub fn front(&self) -> Result<Front, HttpdError> {
        let tls = match (&self.https_cert, &self.https_key) {
            (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
            _ => None,
        };
        let header = Duration::from_millis(self.header_timeout_ms.max(1));
        Ok(Front {
            tls,
            limits: Limits {
                header_timeout: header,
                handshake_timeout: header,
                request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
                max_connections: self.max_connections.max(1),
                max_per_ip: self.max_connections_per_ip.max(1),
            },
        })
    }
}

/// How a service takes connections: TLS or not, and the limits.
#[derive(Debug, Clone, Default)]
pub struct Front {
    /// The server's TLS settings; `None` serves plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// What connections may cost.
    pub limits: Limits,
}

impl Front {
    /// Plain HTTP with `limits`.
    pub fn plain(limits: Limits) -> Front {
        Front { tls: None, limits }
    }
}

/// Why the HTTP side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpdError {
    /// The certificate chain could not be read.
    #[error(transparent)]
    Certificate(#[from] rigd_client::TlsError),
    /// The private key could not be read.
    #[error("private key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate and key (a key that does not fit the certificate...).
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The address to serve on could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Binds `addr` and serves `router` on it in a new task, as `front` says, until `stop` is
/// cancelled (see [`serve`]); logs where `service` listens, and warns when it serves plain
/// HTTP beyond loopback.
pub async fn spawn(
    service: &'static str,
    addr: SocketAddr,
    router: Router,
    front: Front,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HttpdError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpdError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let https = front.tls.is_some();
    if !https && !bound.ip().is_loopback() {
        tracing::warn!(service, addr = %bound, "serving plain HTTP beyond loopback: give --https-cert or put a TLS proxy in front");
    }
    tracing::info!(addr = %bound, https, "serving the {service}");
    Ok(tokio::spawn(serve(listener, router, front, stop)))
}

/// The TLS settings of a server showing the chain in `cert` with the key in `key` (PEM),
/// speaking HTTP/1.1 by ALPN.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, HttpdError> {
    let chain = rigd_client::load_certs(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| HttpdError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, private)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` on `listener`, as `front` says, until `stop` is cancelled; then lets
/// every open connection finish the request it is answering (for at most a request timeout
/// and a header timeout) and returns.
pub async fn serve(listener: TcpListener, router: Router, front: Front, stop: CancellationToken) {
    let limits = front.limits;
    let acceptor = front.tls.map(TlsAcceptor::from);
    let open = Arc::new(Open::new(limits));
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Some(slot) = Open::admit(&open, peer.ip()) else {
            tracing::debug!(%peer, "connection closed: too many open");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY refused");
        }
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => drive(tcp, peer, router, limits, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => drive(tls, peer, router, limits, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake too slow"),
                    }
                }
            }
        });
    }
    tasks.close();
    let grace = limits.request_timeout.saturating_add(limits.header_timeout);
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "connections still open after the grace period are dropped"
        );
    }
}

/// Answers the requests of one connection until the peer closes it, a limit closes it, or
/// `stop` asks it to close after the answer in progress.
async fn drive<S>(io: S, peer: SocketAddr, router: Router, limits: Limits, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move {
            let answer = tokio::time::timeout(
                limits.request_timeout,
                tower_service::Service::call(&mut router, request),
            )
            .await;
            Ok::<_, std::convert::Infallible>(match answer {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    tracing::info!(%peer, "an answer took longer than the request timeout");
                    too_slow()
                }
            })
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

fn too_slow() -> Response<Body> {
    let mut response = Response::new(Body::from("the answer took too long\n"));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The connections open, in all and per address.
#[derive(Debug)]
struct Open {
    limits: Limits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
struct Slot {
    open: Arc<Open>,
    ip: IpAddr,
}

impl Open {
    fn new(limits: Limits) -> Open {
        Open {
            limits,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection from `ip`, when both limits allow one more.
    fn admit(open: &Arc<Open>, ip: IpAddr) -> Option<Slot> {
        let mut counts = open.counts();
        if counts.total >= open.limits.max_connections {
            return None;
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= open.limits.max_per_ip {
            return None;
        }
        *from_ip += 1;
        counts.total += 1;
        Some(Slot {
            open: open.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(from_ip) = counts.per_ip.get_mut(&self.ip) {
            *from_ip = from_ip.saturating_sub(1);
            if *from_ip == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_ip: usize) -> Limits {
        Limits {
            max_connections,
            max_per_ip,
            ..Limits::default()
        }
    }

    #[test]
    fn one_address_gets_at_most_its_share_and_a_closed_connection_frees_its_place() {
        let open = Arc::new(Open::new(limits(10, 2)));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = Open::admit(&open, a);
        let second = Open::admit(&open, a);
        assert!(first.is_some() && second.is_some());
        assert!(Open::admit(&open, a).is_none());
        assert!(
            Open::admit(&open, b).is_some(),
            "another address is not held up"
        );
        drop(first);
        assert!(Open::admit(&open, a).is_some());
    }

    #[test]
    fn the_total_is_bounded_whatever_the_addresses_and_forgotten_when_all_close() {
        let open = Arc::new(Open::new(limits(3, 3)));
        let slots: Vec<Slot> = (1..=3u8)
            .filter_map(|i| Open::admit(&open, [10, 0, 0, i].into()))
            .collect();
        assert_eq!(slots.len(), 3);
        assert!(Open::admit(&open, [10, 0, 0, 9].into()).is_none());
        drop(slots);
        let counts = open.counts();
        assert_eq!(counts.total, 0);
        assert!(
            counts.per_ip.is_empty(),
            "no address is remembered after it left"
        );
    }
}
