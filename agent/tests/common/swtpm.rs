//! A real swtpm on free loopback ports, for tests (shared by the TPM unit tests and the
//! integration tests).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real swtpm on free loopback ports, killed on drop.
pub struct Swtpm {
    child: Child,
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
                    break; // a port clash: pick new ports
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { child, port };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("swtpm did not accept connections on port {port} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start swtpm on free loopback ports after 20 tries");
    }

    /// The `rest` of a URI (after `tpm:`) for this TPM at the default handle.
    pub fn rest(&self) -> String {
        format!("//?tcti=swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port `p` such that `p` and `p + 1` were free a moment ago.
pub fn free_port_pair() -> Option<u16> {
    let first = TcpListener::bind(("127.0.0.1", 0)).ok()?;
    let port = first.local_addr().ok()?.port();
    let next = port.checked_add(1)?;
    let _second = TcpListener::bind(("127.0.0.1", next)).ok()?;
    Some(port)
}
