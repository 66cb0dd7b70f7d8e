//! What the tests of every crate start and wait on: a real mosquitto per test on a free
//! loopback port, polling with deadlines instead of sleeps, a TPM ([`swtpm`]) and a PKCS#11
//! token ([`softhsm`]) of their own, a Prometheus ([`prometheus`]), a PostgreSQL
//! ([`postgres`]), [`fixtures`]: messages of every kind, and
//! [`signer::TestRig`]: a rig's receipt key building signed batches, and [`measure`]: what benches
//! read off samples and processes. Dev-only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fixtures;
pub mod measure;
pub mod postgres;
pub mod prometheus;
pub mod signer;
pub mod softhsm;
pub mod swtpm;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polls `cond` every 50 ms until it holds or `secs` pass; panics naming `what` on timeout.
/// Returns how long it waited.
pub fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// A mosquitto broker owned by the test.
pub struct Mosquitto {
    /// The loopback port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Writes the configuration for a port into a directory; `None`: plain, anonymous.
    config: Option<ConfigWriter>,
}

/// Writes a mosquitto configuration for `port` into `dir` and returns its path.
pub type ConfigWriter = Arc<dyn Fn(u16, &Path) -> PathBuf + Send + Sync>;

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto is not installed: run ./test.sh, which installs it");
}

impl Mosquitto {
    /// Starts a broker on a free loopback port, retrying on a clash.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a broker whose configuration `config` writes (mutual TLS and an ACL, say).
    pub fn start_configured(config: ConfigWriter) -> Self {
        Self::start_with(Some(config))
    }

    fn start_with(config: Option<ConfigWriter>) -> Self {
        for _ in 0..5 {
            let mut m = Mosquitto {
                port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
                config: config.clone(),
            };
            if m.spawn() {
                return m;
            }
        }
        panic!("mosquitto did not start");
    }

    fn spawn(&mut self) -> bool {
        let conf = match &self.config {
            Some(write) => write(self.port, self.dir.path()),
            None => self.plain_config(),
        };
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join("mosquitto.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The broker's log (errors; with TLS also warnings and notices).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Sends SIGHUP: mosquitto reloads its ACL and (2.0) its TLS files.
    pub fn reload(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-HUP")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The directory of the broker's configuration files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn plain_config(&self) -> PathBuf {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\nmax_queued_messages 100000\nmax_inflight_messages 100\nlog_dest stderr\nlog_type error\n",
                self.port
            ),
        )
        .expect("write mosquitto.conf");
        conf
    }

    /// Kills the broker (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "mosquitto did not come back on port {}",
            self.port
        );
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
