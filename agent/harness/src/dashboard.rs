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
    child: Option<Child>,
}

impl DashboardProcess {
    /// Starts it on a free port with plain-HTTP cookies (the browser reaches it on loopback).
    pub fn start(pki: &Pki, broker_port: u16, registry: &Path, ledger: &Path, dir: &Path) -> Self {
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
            .arg("--insecure-cookie")
            .arg("--tls-ca")
            .arg(&tls.ca)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(tls.key.expect("key"))
            .env("RUST_LOG", "info");
        let child = crate::spawn_logged(cmd, &dir.join("dashboard.log"));
        let d = DashboardProcess {
            port,
            dir: dir.to_owned(),
            child: Some(child),
        };
        crate::wait_until("the dashboard serves and follows the broker", 20, || {
            let log = d.log();
            log.contains("serving the dashboard") && log.contains("connected to the broker")
        });
        d
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
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
