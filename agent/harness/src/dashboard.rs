//! A `rigd-dashboard` process over the test's registry and ledger, following the test's
//! mutual-TLS broker as `fleet:exporter`, and the headless Chromium run that logs an owner in
//! (`coordinator/dashboard/e2e/owner.mjs`, playwright-core from npm).

use crate::tls::Pki;
use std::path::{Path, PathBuf};
use std::process::Child;

/// The dashboard, killed on drop.
pub struct DashboardProcess {
    pub port: u16,
    pub dir: PathBuf,
    https: bool,
    child: Option<Child>,
}

impl DashboardProcess {
    /// Starts it on a free port: on HTTPS with `https` (certificate and key files), else on
    /// plain HTTP with cookies without `Secure` (the browser reaches it on loopback).
    pub fn start(
        pki: &Pki,
        broker_port: u16,
        registry: &Path,
        ledger: &Path,
        dir: &Path,
        https: Option<(PathBuf, PathBuf)>,
    ) -> Self {
        std::fs::create_dir_all(dir).expect("dir");
        let tls = pki.client("fleet:exporter");
        let port = crate::free_port();
        let mut cmd = std::process::Command::new(crate::workspace_bin("rigd-dashboard"));
        cmd.arg("--registry")
            .arg(registry)
            .arg("--ledger")
            .arg(ledger)
            .args(["--broker", &format!("127.0.0.1:{broker_port}")])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--client-id", &format!("dashboard-{port}")])
            .arg("--alerts")
            .arg(dir.join("alerts.db"))
            .args(["--alert-tick-ms", "200"])
            .arg("--allow-private-webhooks")
            .arg("--tls-ca")
            .arg(&tls.ca)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(tls.key.expect("key"))
            .env("RUST_LOG", "info");
        match &https {
            Some((cert, key)) => {
                cmd.arg("--https-cert")
                    .arg(cert)
                    .arg("--https-key")
                    .arg(key);
            }
            None => {
                cmd.arg("--insecure-cookie");
            }
        }
        let child = crate::spawn_logged(cmd, &dir.join("dashboard.log"));
        let d = DashboardProcess {
            port,
            dir: dir.to_owned(),
            https: https.is_some(),
            child: Some(child),
        };
        crate::wait_until("the dashboard serves and follows the broker", 20, || {
            let log = d.log();
            log.contains("serving the dashboard") && log.contains("connected to the broker")
        });
        d
    }

    /// The page's URL (`https://localhost:PORT/` on HTTPS, as the certificate names it).
    pub fn url(&self) -> String {
        if self.https {
            format!("https://localhost:{}/", self.port)
        } else {
            format!("http://127.0.0.1:{}/", self.port)
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dashboard.log")).unwrap_or_default()
    }
}

impl Drop for DashboardProcess {
    fn drop(&mut self) {
        crate::kill9(&mut self.child);
    }
}

/// The rows of one table of what the page showed (`browse_as`'s JSON), as text cells.
pub fn page_table(page: &serde_json::Value, table: &str) -> Vec<Vec<String>> {
    page[table]
        .as_array()
        .unwrap_or_else(|| panic!("no table {table} in {page}"))
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap_or_else(|| panic!("a row of {table} is not a list: {row}"))
                .iter()
                .map(|cell| cell.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .collect()
}

/// The e2e driver's directory (with its `node_modules`).
pub fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../coordinator/dashboard/e2e")
}

/// Logs `owner` in with headless Chromium, saves `<owner>-desktop.png` and
/// `<owner>-phone.png` into `out`, and returns what the page showed (owner.mjs's JSON).
/// `foreign`: a rig of another owner whose receipts the page's session asks for.
pub fn browse_as(
    url: &str,
    owner: &str,
    password: &str,
    out: &Path,
    foreign: Option<&str>,
) -> serde_json::Value {
    let dir = e2e_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix {}` (./test.sh does)",
        dir.display()
    );
    std::fs::create_dir_all(out).expect("screenshot dir");
    let mut cmd = std::process::Command::new("node");
    cmd.arg(dir.join("owner.mjs"))
        .args([url, owner, password])
        .arg(out);
    if let Some(rig) = foreign {
        cmd.arg(rig);
    }
    let run = cmd.output().expect("run node");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "owner.mjs for {owner} failed: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// One HTTP/1.1 request to the dashboard on `port` (with `token` as Bearer when given);
/// returns the status and the JSON body (`Null` when the body is not JSON).
pub fn api(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: dashboard\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// One received POST: its headers (lowercased names) and body.
pub type Received = (Vec<(String, String)>, String);

/// A webhook receiver on a free loopback port: it answers every POST with 200 and keeps
/// each one's headers (lowercased names) and body.
pub struct WebhookReceiver {
    pub port: u16,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl WebhookReceiver {
    pub fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream);
                let mut headers = vec![];
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                keep.lock()
                    .unwrap()
                    .push((headers, String::from_utf8_lossy(&body).into_owned()));
                let mut stream = reader.into_inner();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Self { port, received }
    }

    /// The bodies received so far, as JSON, with whether each one's signature is the
    /// HMAC-SHA256 of its body under `secret`.
    pub fn notices(&self, secret: &str) -> Vec<(serde_json::Value, bool)> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(headers, body)| {
                let signed = headers
                    .iter()
                    .find(|(k, _)| k == "x-rigd-signature")
                    .and_then(|(_, v)| v.strip_prefix("sha256="))
                    .and_then(|h| hex::decode(h).ok())
                    .is_some_and(|mac| ring::hmac::verify(&key, body.as_bytes(), &mac).is_ok());
                (serde_json::from_str(body).unwrap_or_default(), signed)
            })
            .collect()
    }
}
