//! SIGKILL a real rigd while it works; nothing is lost or paid twice.
//!
//! Random kills land wherever they land. Kills meant for a window are sent inside it by
//! construction: a test hold (`rigd::hold`) keeps rigd from signing, or makes it drop the
//! coordinator's acknowledgements, the test waits until the journal is in that window and
//! rigd cannot leave it, and only then kills. `RIGD_KILL_ROUNDS` sets the number of kills
//! (default 50; 30 with the slow key, 21 with the TPM key).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rand::Rng;
use rigd::hold::{Point, TEST_HOLD_DIR_ENV};
use rigd_harness::{wait_job_done, wait_until, Coordinator, Mosquitto, RigProcess};
use std::path::Path;
use std::time::{Duration, Instant};

fn rounds(default: u64) -> u64 {
    std::env::var("RIGD_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where a round's kill lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Window {
    /// After a random 10-300 ms.
    Random,
    /// Receipts journaled, none of them signable: signing is held.
    Unsigned,
    /// Signed batches published, not acknowledged: acknowledgements are held.
    Unacked,
}

const ALL_WINDOWS: &[Window] = &[Window::Unsigned, Window::Unacked, Window::Random];

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_no_receipt() {
    kill_run(rounds(50), "", &[Window::Random]);
}

/// With a key that takes 150 ms per signature (a slow TPM), a third of the kills land while
/// receipts are journaled but not signed, a third while batches are signed but not
/// acknowledged, a third at random.
#[test]
fn sigkill_between_journaling_signing_and_publishing_loses_and_duplicates_no_receipt() {
    kill_run(
        rounds(30),
        "key = \"file:receipt-key?sign_delay_ms=150\"\n",
        ALL_WINDOWS,
    );
}

/// The same with receipts signed in a TPM (swtpm).
#[test]
#[cfg(feature = "tpm")]
fn sigkill_while_a_tpm_signs_the_batches_loses_and_duplicates_no_receipt() {
    let state = tempfile::tempdir().unwrap();
    let tpm = rigd_harness::swtpm::Swtpm::start(state.path());
    kill_run(
        rounds(21),
        &format!("key = \"tpm:{}\"\n", tpm.rest()),
        ALL_WINDOWS,
    );
}

/// Log lines that show a hold in effect.
fn hold_marker(window: Window) -> Option<&'static str> {
    match window {
        Window::Random => None,
        Window::Unsigned => Some("held by a test"),
        Window::Unacked => Some("an acknowledgement dropped unread"),
    }
}

/// Kills rigd once inside `window`; returns when it is dead. The hold (if any) is left in
/// place for the caller to lift.
fn kill_in(rig: &mut RigProcess, holds: &Path, window: Window, rng: &mut impl Rng) {
    let point = match window {
        Window::Random => {
            std::thread::sleep(Duration::from_millis(rng.gen_range(10..300)));
            rig.kill9();
            return;
        }
        Window::Unsigned => Point::Signing,
        Window::Unacked => Point::Acks,
    };
    let marker = hold_marker(window).unwrap();
    let before = rig.log().matches(marker).count();
    std::fs::write(holds.join(point.file_name()), b"").unwrap();
    // The hold is in effect once rigd logs that it met it; from then on no batch is signed
    // (or no acknowledgement read), so the window below, once reached, stays open.
    wait_or_show_log(rig, &format!("rigd held at {point:?}"), |rig| {
        rig.log().matches(marker).count() > before
    });
    wait_or_show_log(rig, &format!("the journal in window {window:?}"), |rig| {
        let (unsigned, unacked) = rig.unsigned_and_unacked();
        match window {
            Window::Unsigned => unsigned > 0,
            _ => unacked > 0,
        }
    });
    rig.kill9();
}

/// Waits up to 60 s for `cond`; on timeout fails with rigd's journal counts and log.
fn wait_or_show_log(rig: &RigProcess, what: &str, cond: impl Fn(&RigProcess) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond(rig) {
        assert!(
            Instant::now() < deadline,
            "timed out after 60 s waiting for {what}{}",
            rig.state_report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills rigd `rounds` times, each in the next of `windows`, and checks that every unit is
/// credited once and every journaled receipt recorded once.
fn kill_run(rounds: u64, key_conf: &str, windows: &[Window]) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let holds = tempfile::tempdir().unwrap();
    let units = rounds * 12 + 40;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 64, |c| {
        c.units_per_card = 4;
        c.lease_ms = 5_000;
    });
    let hold_dir = holds.path().display().to_string();
    let mut rig = RigProcess::start_env(
        "rig-k",
        broker.port,
        2,
        &dir.path().join("k"),
        &format!("sim.gflops = 0.01\n{key_conf}"),
        &[(TEST_HOLD_DIR_ENV, &hold_dir)],
    );
    wait_until("first receipt", 30, || rig.journal().0 > 0);
    let mut rng = rand::thread_rng();
    let t0 = Instant::now();
    let (mut during_work, mut unsigned, mut unacked) = (0, 0, 0);
    let mut planned = std::collections::HashMap::<_, u64>::new();
    for round in 0..rounds {
        let window = windows[round as usize % windows.len()];
        *planned.entry(window).or_default() += 1;
        assert!(
            (coordinator.credited().len() as u64) < units,
            "the job ended after {round} of {rounds} kills: give it more units"
        );
        if !rig.worker_pids().is_empty() {
            during_work += 1;
        }
        kill_in(&mut rig, holds.path(), window, &mut rng);
        let (u, b) = rig.unsigned_and_unacked();
        unsigned += u64::from(u > 0);
        unacked += u64::from(b > 0);
        for point in [Point::Signing, Point::Acks] {
            let _ = std::fs::remove_file(holds.path().join(point.file_name()));
        }
        rig.start_again();
    }
    let killing = t0.elapsed();
    let expect = |w| planned.get(&w).copied().unwrap_or(0);
    assert!(
        unsigned >= expect(Window::Unsigned),
        "{unsigned} kills left receipts unsigned, {} were sent in that window",
        expect(Window::Unsigned)
    );
    assert!(
        unacked >= expect(Window::Unacked),
        "{unacked} kills left batches unacknowledged, {} were sent in that window",
        expect(Window::Unacked)
    );
    wait_job_done(&coordinator, units, &[&rig], 180);
    coordinator.assert_exactly_once(units, &[&rig]);
    let (last, _) = rig.journal();
    let dups = coordinator
        .ledger()
        .and_then(|l| {
            l.duplicate_deliveries(&rigd_protocol::RigId::new("rig-k").unwrap())
                .ok()
        })
        .unwrap_or(0);
    println!(
        "{rounds} kills ({during_work} with workers running, {unsigned} with receipts journaled but unsigned, {unacked} with signed batches unacknowledged) in {:.1} s; {last} receipts, each recorded once; {dups} duplicate deliveries absorbed",
        killing.as_secs_f64()
    );
}
