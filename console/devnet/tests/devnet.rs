//! The demo network end to end: the `rigd-devnet` binary trains to its loss target, prints
//! progress and earnings, and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;
use tokio::process::Command;

#[tokio::test]
async fn the_demo_trains_to_the_target_prints_progress_and_earnings_and_exits_0() {
    let run = Command::new(env!("CARGO_BIN_EXE_rigd-devnet"))
        .args(["--rigs", "2", "--gpus", "2"])
        .env("RUST_LOG", "warn,rumqttd=off,rigd::keys=error")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("devnet finishes in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("at or below 0.15"), "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with("step   1  loss ")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("is at or below the target 0.15")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("rig-02  SIM-rig-02-1")),
        "{text}"
    );
    assert!(lines.last().unwrap().starts_with("TOTAL"), "{text}");
}
