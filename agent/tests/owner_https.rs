//! The owners' dashboard on HTTPS, as in production: real mosquitto with mutual TLS, the
//! provisioner, and `rigd-dashboard --https-cert` with a server certificate from the fleet
//! CA. `rigctl earnings --owner` logs in over TLS when it trusts that CA
//! (`SSL_CERT_FILE`) and refuses the dashboard when it trusts another; plain HTTP on the
//! HTTPS port gets no answer.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigd_coordinator::ledger::Ledger;
use rigd_harness::tls::{add_owner, Pki, ProvisioningFleet};
use std::io::{Read, Write};
use std::path::Path;

/// `rigctl --json earnings --owner NAME --dashboard URL` trusting only the CA in `ca`;
/// (exit code, stdout and stderr).
fn owner_earnings(url: &str, name: &str, password: &str, ca: &Path) -> (i32, String) {
    let out = std::process::Command::new(rigd_harness::workspace_bin("rigctl"))
        .args(["--json", "earnings", "--owner", name, "--dashboard", url])
        .env("RIGD_OWNER_PASSWORD", password)
        .env("SSL_CERT_FILE", ca)
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn an_owner_logs_in_over_https_with_the_fleet_ca_and_nothing_is_served_in_the_clear() {
    let fleet = ProvisioningFleet::start();
    let password = add_owner(&fleet.pki, fleet.broker.port, "hana").unwrap();
    let ledger = fleet.work.path().join("ledger.db");
    drop(Ledger::create(&ledger, 1).unwrap());
    let dashboard = fleet.dashboard_https(&ledger);
    let url = dashboard.url();
    assert!(url.starts_with("https://localhost:"), "{url}");

    let (code, out) = owner_earnings(&url, "hana", &password, &fleet.pki.ca_cert());
    assert_eq!(code, 0, "{out}");
    let earnings: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(earnings["total"]["credited_micros"], 0, "{earnings}");

    let stranger = Pki::create();
    let (code, out) = owner_earnings(&url, "hana", &password, &stranger.ca_cert());
    assert_ne!(
        code, 0,
        "a dashboard certified by an untrusted CA is refused: {out}"
    );
    assert!(out.to_lowercase().contains("certificate"), "{out}");

    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", dashboard.port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    tcp.write_all(b"GET /api/me HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP gets no HTTP answer: {}",
        String::from_utf8_lossy(&answer)
    );

    let (code, out) = owner_earnings(&url, "hana", &password, &fleet.pki.ca_cert());
    assert_eq!(
        code, 0,
        "the dashboard serves on after the plain request: {out}"
    );
    assert!(
        dashboard.log().contains("https=true"),
        "{}",
        dashboard.log()
    );
}
