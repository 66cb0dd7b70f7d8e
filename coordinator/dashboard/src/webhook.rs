//! Posting a notice to an owner's webhook: HTTP/1.1 over TCP, or over TLS (rustls with the
//! system's roots) for `https://`. The URL is the owner's, so it is checked like hostile
//! input: only `http` and `https`, a host that resolves to a public address (loopback,
//! private, link-local and other special ranges are refused unless the operator allows them),
//! a deadline on the whole exchange, and the answer's body never read.

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The longest a post may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest webhook URL taken.
pub const MAX_URL: usize = 512;

/// Why a webhook URL or a post failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Not an absolute `http://` or `https://` URL of at most [`MAX_URL`] bytes.
    #[error("not an http:// or https:// URL")]
    Url,
    /// The host does not resolve.
    #[error("the host does not resolve: {0}")]
    Resolve(String),
    /// The host resolves to an address the dashboard does not post to.
    #[error("{0} is not a public address")]
    Private(IpAddr),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Io(String),
    /// No answer within [`TIMEOUT`].
    #[error("no answer within {} s", TIMEOUT.as_secs())]
    Timeout,
}

/// A webhook URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    /// Parses `url`, checking its form only (not where it resolves).
    pub fn parse(url: &str) -> Result<Self, WebhookError> {
        if url.len() > MAX_URL {
            return Err(WebhookError::Url);
        }
        let uri: axum::http::Uri = url.parse().map_err(|_| WebhookError::Url)?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(WebhookError::Url),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or(WebhookError::Url)?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(WebhookError::Url);
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            tls,
            host,
            port,
            path,
        })
    }
}

/// Whether the dashboard posts to `ip` when special addresses are not allowed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Posts `body` to `target` with the delivery id and signature headers; returns the HTTP
/// status of the answer.
pub async fn post(
    target: &Target,
    body: &str,
    headers: &[(&str, String)],
    allow_private: bool,
) -> Result<u16, WebhookError> {
    tokio::time::timeout(TIMEOUT, post_now(target, body, headers, allow_private))
        .await
        .map_err(|_| WebhookError::Timeout)?
}

async fn post_now(
    target: &Target,
    body: &str,
    headers: &[(&str, String)],
    allow_private: bool,
) -> Result<u16, WebhookError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| WebhookError::Resolve(e.to_string()))?
        .collect();
    let addr = addrs
        .first()
        .copied()
        .ok_or_else(|| WebhookError::Resolve("no address".into()))?;
    if let Some(bad) = addrs.iter().find(|a| !allow_private && !is_public(a.ip())) {
        return Err(WebhookError::Private(bad.ip()));
    }
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| WebhookError::Io(e.to_string()))?;
    let mut request = hyper::Request::post(target.path.as_str())
        .header(hyper::header::HOST, target.host.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "rigd-dashboard");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .map_err(|e| WebhookError::Io(e.to_string()))?;
    if !target.tls {
        return send(tcp, request).await;
    }
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|_| WebhookError::Url)?;
    let tls = tokio_rustls::TlsConnector::from(tls_config()?)
        .connect(name, tcp)
        .await
        .map_err(|e| WebhookError::Io(e.to_string()))?;
    send(tls, request).await
}

async fn send<S>(io: S, request: hyper::Request<Full<Bytes>>) -> Result<u16, WebhookError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| WebhookError::Io(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let answer = sender.send_request(request).await;
    driver.abort();
    answer
        .map(|r| r.status().as_u16())
        .map_err(|e| WebhookError::Io(e.to_string()))
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, WebhookError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WebhookError::Io(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_without_credentials_are_taken() {
        let t = Target::parse("https://hooks.example.net/x?y=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.net", 443, "/x?y=1")
        );
        for bad in [
            "ftp://x/",
            "/relative",
            "http://",
            "javascript:alert(1)",
            "http://user:pw@host/",
            &format!("http://h/{}", "a".repeat(MAX_URL)),
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
            assert!(!is_public(ip), "{ip}");
        }
        for ip in ["1.1.1.1", "2606:4700::1111"] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
            assert!(is_public(ip), "{ip}");
        }
    }
}
