//! A real swtpm on free loopback ports, for the TPM unit tests and the integration tests.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real swtpm on free loopback ports, killed on drop.
pub struct Swtpm {
    child: Child,
    state: PathBuf,
    /// The TPM command port (the control port is the next one).
    pub port: u16,
}

impl Swtpm {
    /// Starts swtpm with its state in `state`, retrying when its ports were taken.
    pub fn start(state: &Path) -> Self {
        for _ in 0..20 {
            let Some(port) = free_port_pair() else {
                continue;
            };
            if let Some(child) = spawn(state, port) {
                return Self {
                    child,
                    state: state.to_owned(),
                    port,
                };
            }
        }
        panic!("could not start swtpm on free loopback ports after 20 tries");
    }

    /// The `rest` of a URI (after `tpm:`) for this TPM at the default handle.
    pub fn rest(&self) -> String {
        format!("//?tcti=swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Sends `signal` (`STOP`, `CONT`) to the swtpm process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{signal} swtpm failed");
    }

    /// SIGKILLs swtpm and waits for it; [`Self::restart`] brings it back.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts swtpm again on the same ports with the same state (after [`Self::kill9`]).
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = spawn(&self.state, self.port) {
                self.child = child;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "swtpm did not start again on port {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts swtpm on `port` and `port + 1`; `None` when it exited (a port clash).
fn spawn(state: &Path, port: u16) -> Option<Child> {
    let mut child = match Command::new("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .args(["--flags", "not-need-init,startup-clear"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "swtpm is not installed: run ./test.sh, which installs it (Debian \
             packages swtpm, swtpm-tools, libtss2-dev)"
        ),
        Err(e) => panic!("cannot start swtpm: {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("swtpm did not accept connections on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port `p` such that `p` and `p + 1` were free a moment ago (tries 100 ports: the one
/// after a free port may be taken by another test).
pub fn free_port_pair() -> Option<u16> {
    (0..100).find_map(|_| {
        let first = TcpListener::bind(("127.0.0.1", 0)).ok()?;
        let port = first.local_addr().ok()?.port();
        let next = port.checked_add(1)?;
        let _second = TcpListener::bind(("127.0.0.1", next)).ok()?;
        Some(port)
    })
}
