//! A real Prometheus (Debian `prometheus`) per test on a free loopback port, scraping the
//! targets it is given every second, and plain HTTP/1.1 GETs to read it and what it scrapes.

use crate::free_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Prometheus server owned by the test.
pub struct Prometheus {
    /// The loopback port of its HTTP API.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every second;
    /// returns once its API answers `/-/ready`.
    pub fn start(targets: &[String]) -> Self {
        let bin = ["/usr/bin/prometheus", "/usr/sbin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("prometheus is not installed: run ./test.sh, which installs it");
        let dir = tempfile::tempdir().expect("tempdir");
        let listed: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: rigd\n    static_configs:\n      - targets: [{}]\n",
                listed.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
            let mut child = Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn prometheus");
            if ready(port, &mut child) {
                return Prometheus {
                    port,
                    dir,
                    child: Some(child),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("prometheus did not start");
    }

    /// The body of `GET /api/v1/query?query=QUERY` (JSON), or `None` while it does not
    /// answer 200.
    pub fn query(&self, promql: &str) -> Option<String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        match http_get(self.port, &path) {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the server on `port` answers `/-/ready`; `false` if `child` exits first or
/// 30 s pass.
fn ready(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if matches!(http_get(port, "/-/ready"), Some((200, _))) {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `GET path` from `127.0.0.1:port` over a fresh connection: the status code and the body,
/// or `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Some((
        code,
        if chunked {
            dechunk(body)?
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
