//! The front on a real loopback socket: HTTPS with a certificate from a test CA, a head that
//! never ends, an answer that never comes, one address opening too many connections, a stop
//! with a connection open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rigd_httpd::{serve, tls_config, Front, Limits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Far longer than any limit set below: only a server that never closes reaches it.
const BOUND: Duration = Duration::from_secs(20);

fn router() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
        .route("/never", get(std::future::pending::<&'static str>))
}

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(300),
        handshake_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
        max_connections: 64,
        max_per_ip: 8,
    }
}

struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(front: Front) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(listener, router(), front, stop.clone()));
    Server { addr, stop, task }
}

impl Server {
    /// Cancels the server and waits (within `BOUND`) for `serve` to return.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn request(path: &str, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n")
}

/// Everything the server sends until it closes the connection.
async fn until_closed(mut io: impl AsyncRead + Unpin) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(BOUND, io.read_to_end(&mut all))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&all).into_owned()
}

/// One answer's head and body on a kept-alive connection (bodies here are short and sized).
async fn one_answer(io: &mut (impl AsyncRead + Unpin)) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(BOUND, io.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before a whole answer: {all:?}");
        all.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&all).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if all.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

async fn get_once(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request(path, true).as_bytes()).await.unwrap();
    until_closed(tcp).await
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: rustls::pki_types::CertificateDer<'static>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("dashboard.crt");
    let key = dir.path().join("dashboard.key");
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    Pki {
        ca: ca.der().clone(),
        _dir: dir,
        cert,
        key,
    }
}

async fn tls_client(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("the handshake succeeds with the test CA")
}

#[tokio::test]
async fn https_is_served_with_the_certificate_and_handlers_see_the_peer() {
    let pki = pki();
    let front = Front {
        tls: Some(tls_config(&pki.cert, &pki.key).unwrap()),
        limits: limits(),
    };
    let server = start(front).await;
    let mut tls = tls_client(server.addr, &pki.ca).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(request("/hello", false).as_bytes())
        .await
        .unwrap();
    let answer = one_answer(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
    tls.write_all(request("/peer", true).as_bytes())
        .await
        .unwrap();
    let answer = until_closed(&mut tls).await;
    assert!(answer.ends_with("127.0.0.1"), "{answer}");

    let plain = get_once(server.addr, "/hello").await;
    assert!(
        !plain.contains("hello"),
        "plain HTTP to the TLS port gets no answer: {plain}"
    );
    server.stop().await;
}

#[test]
fn a_key_that_is_not_a_key_is_refused_with_its_path() {
    let pki = pki();
    let err = tls_config(&pki.cert, &pki.cert).unwrap_err();
    assert!(err.to_string().contains("dashboard.crt"), "{err}");
    let missing = pki.cert.with_file_name("missing.crt");
    assert!(tls_config(&missing, &pki.key).is_err());
}

#[tokio::test]
async fn a_head_that_never_ends_and_a_silent_peer_are_cut_off_while_others_are_served() {
    let server = start(Front::plain(limits())).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let mut tls_silent = TcpStream::connect(server.addr).await.unwrap();
    tls_silent.write_all(&[0x16, 0x03, 0x01]).await.unwrap();

    let answer = get_once(server.addr, "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    let cut = until_closed(slow).await;
    assert!(
        !cut.contains("hello"),
        "the slow head is never answered: {cut}"
    );
    assert!(!until_closed(silent).await.contains("200"));
    assert!(!until_closed(tls_silent).await.contains("200"));
    server.stop().await;
}

#[tokio::test]
async fn a_silent_peer_on_the_tls_port_is_cut_off_at_the_handshake() {
    let pki = pki();
    let front = Front {
        tls: Some(tls_config(&pki.cert, &pki.key).unwrap()),
        limits: limits(),
    };
    let server = start(front).await;
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    until_closed(half).await;
    let mut tls = tls_client(server.addr, &pki.ca).await;
    tls.write_all(request("/hello", true).as_bytes())
        .await
        .unwrap();
    assert!(until_closed(&mut tls).await.ends_with("hello"));
    server.stop().await;
}

#[tokio::test]
async fn an_answer_that_never_comes_becomes_a_503_and_the_connection_serves_on() {
    let server = start(Front::plain(limits())).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request("/never", false).as_bytes())
        .await
        .unwrap();
    let answer = one_answer(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    tcp.write_all(request("/hello", true).as_bytes())
        .await
        .unwrap();
    assert!(until_closed(tcp).await.ends_with("hello"));
    server.stop().await;
}

#[tokio::test]
async fn one_address_opening_too_many_connections_gets_no_more_until_one_closes() {
    let front = Front::plain(Limits {
        header_timeout: Duration::from_secs(60),
        max_per_ip: 2,
        ..limits()
    });
    let server = start(front).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(request("/hello", false).as_bytes())
            .await
            .unwrap();
        assert!(one_answer(&mut tcp).await.ends_with("hello"));
        held.push(tcp);
    }
    let refused = get_once(server.addr, "/hello").await;
    assert!(
        refused.is_empty(),
        "a third connection is closed unanswered: {refused}"
    );

    held.pop();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if get_once(server.addr, "/hello").await.ends_with("hello") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's place is never freed"
        );
        tokio::task::yield_now().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_stop_closes_idle_connections_and_returns() {
    let front = Front::plain(Limits {
        header_timeout: Duration::from_secs(60),
        ..limits()
    });
    let server = start(front).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(request("/hello", false).as_bytes())
        .await
        .unwrap();
    assert!(one_answer(&mut idle).await.ends_with("hello"));
    server.stop().await;
    assert_eq!(until_closed(idle).await, "");
}
