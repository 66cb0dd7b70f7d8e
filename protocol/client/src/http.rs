//! One HTTP/1.1 exchange over TCP, or over TLS (rustls with the system's roots) for
//! `https://`: what the fleet side posts owners' webhooks with and what `rigctl` reads the
//! owners' dashboard with. Every exchange has a deadline, connection included; the caller
//! decides which addresses may be reached and how much of the answer's body is read.
//! [`download`] streams a `GET`'s body into a file instead (rigd's update bundles), hashing
//! it on the way, with the fleet's own CA beside the system's roots.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The longest URL taken.
pub const MAX_URL: usize = 512;

/// Why a URL or an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not an absolute `http://` or `https://` URL of at most [`MAX_URL`] bytes without
    /// credentials in it.
    #[error("not an http:// or https:// URL")]
    Url,
    /// The host does not resolve.
    #[error("the host does not resolve: {0}")]
    Resolve(String),
    /// The host resolves to an address the caller does not reach.
    #[error("{0} is not an address this program reaches")]
    Refused(IpAddr),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Io(String),
    /// The answer's body is longer than the caller takes.
    #[error("the answer is longer than {0} bytes")]
    TooLong(usize),
    /// No answer within the deadline.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// An `http://` or `https://` URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Url {
    /// Parses `url`, checking its form only (not where it resolves).
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        if url.len() > MAX_URL {
            return Err(HttpError::Url);
        }
        let uri: hyper::Uri = url.parse().map_err(|_| HttpError::Url)?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or(HttpError::Url)?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(HttpError::Url);
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

    /// The same server with `path` (starting with `/`) in place of this URL's path, its own
    /// path prefix kept (`https://h/dash` + `/api/me` is `https://h/dash/api/me`).
    pub fn join(&self, path: &str) -> Self {
        Self {
            path: format!("{}{path}", self.path.trim_end_matches('/')),
            ..self.clone()
        }
    }
}

/// A request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, `PUT`...
    pub method: &'a str,
    /// Headers besides `Host` and `User-Agent`.
    pub headers: &'a [(&'a str, &'a str)],
    /// A JSON body, when there is one.
    pub json: Option<&'a str>,
}

/// How an exchange is bounded.
#[derive(Clone, Copy)]
pub struct Bounds {
    /// The deadline of the whole exchange, connection included.
    pub timeout: Duration,
    /// Most bytes of the answer's body read (0: the body is not read).
    pub max_body: usize,
    /// Whether an address may be reached: every address the host resolves to must pass.
    pub reach: fn(IpAddr) -> bool,
    /// The `User-Agent` sent.
    pub agent: &'static str,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (empty when [`Bounds::max_body`] is 0).
    pub body: Vec<u8>,
}

/// Sends `request` to `url` and waits for the answer, within `bounds`.
pub async fn exchange(
    url: &Url,
    request: Request<'_>,
    bounds: Bounds,
) -> Result<Answer, HttpError> {
    tokio::time::timeout(bounds.timeout, exchange_now(url, request, bounds))
        .await
        .map_err(|_| HttpError::Timeout(bounds.timeout))?
}

async fn exchange_now(
    url: &Url,
    request: Request<'_>,
    bounds: Bounds,
) -> Result<Answer, HttpError> {
    let mut built = head(url, request.method, bounds.agent);
    for (name, value) in request.headers {
        built = built.header(*name, *value);
    }
    if request.json.is_some() {
        built = built.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let body = Bytes::copy_from_slice(request.json.unwrap_or("").as_bytes());
    let built = built
        .body(Full::new(body))
        .map_err(|e| HttpError::Io(e.to_string()))?;
    let mut connection = Connection::open(url, bounds.reach, &[]).await?;
    read(connection.sender.send_request(built).await, bounds.max_body).await
}

/// A request to `url`'s path with the headers every request carries.
fn head(url: &Url, method: &str, agent: &'static str) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(url.path.as_str())
        .header(hyper::header::HOST, url.host.as_str())
        .header(hyper::header::USER_AGENT, agent)
}

/// An HTTP/1.1 connection to `url`'s host, over TLS for `https://`; its driver task ends
/// with it.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Connection {
    /// Resolves the host (every address must pass `reach`), connects to the first address
    /// and, for `https://`, checks the server on the system's roots and `extra_roots`.
    async fn open(
        url: &Url,
        reach: fn(IpAddr) -> bool,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, HttpError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| HttpError::Resolve(e.to_string()))?
            .collect();
        let addr = addrs
            .first()
            .copied()
            .ok_or_else(|| HttpError::Resolve("no address".into()))?;
        if let Some(bad) = addrs.iter().find(|a| !reach(a.ip())) {
            return Err(HttpError::Refused(bad.ip()));
        }
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        if !url.tls {
            return Self::over(tcp).await;
        }
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|_| HttpError::Url)?;
        let tls = tokio_rustls::TlsConnector::from(tls_config(extra_roots)?)
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        Self::over(tls).await
    }

    async fn over<S>(io: S) -> Result<Self, HttpError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        Ok(Self {
            sender,
            driver: tokio::spawn(connection),
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// What [`download`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written.
    pub bytes: u64,
    /// Their SHA-256.
    pub sha256: [u8; 32],
}

/// `GET`s `url` (`https://` only) and writes the body to `to` (created or truncated, synced
/// before this returns), hashing it, within `timeout` for the whole transfer and `max_bytes`
/// for the body; the server is trusted on the system's roots and `extra_roots`. A status other
/// than 200 is an error that writes nothing.
pub async fn download(
    url: &Url,
    to: &std::path::Path,
    max_bytes: u64,
    timeout: Duration,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    agent: &'static str,
) -> Result<Downloaded, HttpError> {
    tokio::time::timeout(
        timeout,
        download_now(url, to, max_bytes, extra_roots, agent),
    )
    .await
    .map_err(|_| HttpError::Timeout(timeout))?
}

async fn download_now(
    url: &Url,
    to: &std::path::Path,
    max_bytes: u64,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    agent: &'static str,
) -> Result<Downloaded, HttpError> {
    use ring::digest::{Context, SHA256};
    use tokio::io::AsyncWriteExt;
    if !url.tls {
        return Err(HttpError::Url);
    }
    let request = head(url, "GET", agent)
        .body(Full::new(Bytes::new()))
        .map_err(|e| HttpError::Io(e.to_string()))?;
    let mut connection = Connection::open(url, |_| true, extra_roots).await?;
    let answer = connection
        .sender
        .send_request(request)
        .await
        .map_err(|e| HttpError::Io(e.to_string()))?;
    if answer.status() != hyper::StatusCode::OK {
        return Err(HttpError::Io(format!("HTTP status {}", answer.status())));
    }
    let mut body = answer.into_body();
    let mut file = tokio::fs::File::create(to)
        .await
        .map_err(|e| HttpError::Io(format!("{}: {e}", to.display())))?;
    let mut hash = Context::new(&SHA256);
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| HttpError::Io(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        bytes = bytes.saturating_add(data.len() as u64);
        if bytes > max_bytes {
            return Err(HttpError::TooLong(
                usize::try_from(max_bytes).unwrap_or(usize::MAX),
            ));
        }
        hash.update(&data);
        file.write_all(&data)
            .await
            .map_err(|e| HttpError::Io(format!("{}: {e}", to.display())))?;
    }
    file.sync_all()
        .await
        .map_err(|e| HttpError::Io(format!("{}: {e}", to.display())))?;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(hash.finish().as_ref());
    Ok(Downloaded { bytes, sha256 })
}

async fn read(
    answer: Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
    max_body: usize,
) -> Result<Answer, HttpError> {
    let answer = answer.map_err(|e| HttpError::Io(e.to_string()))?;
    let status = answer.status().as_u16();
    if max_body == 0 {
        return Ok(Answer {
            status,
            body: Vec::new(),
        });
    }
    let body = Limited::new(answer.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLong(max_body)
            } else {
                HttpError::Io(e.to_string())
            }
        })?
        .to_bytes()
        .to_vec();
    Ok(Answer { status, body })
}

fn tls_config(
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| HttpError::Io(format!("the fleet's CA: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| HttpError::Io(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_without_credentials_are_taken() {
        let t = Url::parse("https://hooks.example.net/x?y=1").unwrap_or_else(|e| panic!("{e}"));
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
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn join_keeps_the_path_prefix() {
        let base = Url::parse("http://127.0.0.1:8480/dash/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(base.join("/api/me").path, "/dash/api/me");
        let root = Url::parse("http://127.0.0.1:8480").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(root.join("/api/me").path, "/api/me");
    }

    const GET: Request<'static> = Request {
        method: "GET",
        headers: &[],
        json: None,
    };

    fn bounds(max_body: usize, reach: fn(IpAddr) -> bool) -> Bounds {
        Bounds {
            timeout: Duration::from_secs(10),
            max_body,
            reach,
            agent: "test",
        }
    }

    fn answer_of(raw: &'static [u8], max_body: usize) -> Result<Answer, HttpError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let port = listener.local_addr().map_or(0, |a| a.port());
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                if let Ok((mut s, _)) = listener.accept().await {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(raw).await;
                }
            });
            let url = Url::parse(&format!("http://127.0.0.1:{port}/"))?;
            exchange(&url, GET, bounds(max_body, |_| true)).await
        })
    }

    #[test]
    fn a_body_is_read_up_to_the_bound_and_no_further() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let a = answer_of(raw, 5).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
        assert!(matches!(answer_of(raw, 4), Err(HttpError::TooLong(4))));
        let a = answer_of(raw, 0).unwrap_or_else(|e| panic!("{e}"));
        assert!(a.body.is_empty());
    }

    #[test]
    fn an_address_the_caller_does_not_reach_is_not_connected_to() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let url = Url::parse("http://127.0.0.1:9/").unwrap_or_else(|e| panic!("{e}"));
        let r = rt.block_on(exchange(&url, GET, bounds(0, |ip| !ip.is_loopback())));
        assert!(matches!(r, Err(HttpError::Refused(_))), "{r:?}");
    }
}
