//! A key store that stops answering while rigd signs: every call has a deadline, the
//! connection is dropped and reopened with backoff, the cards keep computing, and once the
//! store answers again every receipt is signed, published and credited exactly once, by the
//! same rigd process.
//!
//! The outage begins by construction: signing is held (`rigd::hold`) until receipts are
//! journaled, the key store is stopped, and only then is the hold lifted, so the next
//! signature meets the dead store.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd::hold::{Point, TEST_HOLD_DIR_ENV};
use rigd_harness::{wait_job_done, wait_until, Coordinator, Mosquitto, RigProcess};
use std::path::Path;

/// The rig's key health as `rigctl --json status` shows it.
fn key_health(port: u16, rig: &str) -> String {
    rigd_harness::status_row(port, rig)["key_health"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// How a test takes the key store down and brings it back.
struct Outage<'a> {
    /// Part of the failure rigd must log and show ("" for any).
    reason: &'a str,
    down: &'a mut dyn FnMut(),
    up: &'a mut dyn FnMut(),
}

/// Runs a job on one rig whose key (`key_conf`) fails through `outage` while receipts wait to
/// be signed; checks recovery without a rigd restart and exactly-once credit.
fn survive(key_conf: &str, env: &[(&str, &str)], outage: Outage<'_>) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let holds = tempfile::tempdir().unwrap();
    let units = 60;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 64, |c| {
        c.units_per_card = 4;
    });
    let signing = holds.path().join(Point::Signing.file_name());
    std::fs::write(&signing, b"").unwrap();
    let hold_dir = holds.path().display().to_string();
    let mut all_env = vec![(TEST_HOLD_DIR_ENV, hold_dir.as_str())];
    all_env.extend_from_slice(env);
    let mut rig = RigProcess::start_env(
        "rig-o",
        broker.port,
        2,
        &dir.path().join("o"),
        &format!("sim.gflops = 0.02\nkey_timeout_ms = 1000\n{key_conf}"),
        &all_env,
    );
    let pid = rig.pid();
    wait_until("signing held with receipts journaled", 60, || {
        rig.log().contains("held by a test") && rig.unsigned_and_unacked().0 > 0
    });
    (outage.down)();
    std::fs::remove_file(&signing).unwrap();
    wait_until("rigd to give up on the key store", 60, || {
        rig.log().contains("the key store failed")
    });
    wait_until(
        "rigctl status to show the key store unresponsive",
        30,
        || {
            let health = key_health(broker.port, "rig-o");
            health.starts_with("unresponsive") && health.contains(outage.reason)
        },
    );
    let journaled = rig.journal().0;
    wait_until("the cards to keep computing", 60, || {
        rig.journal().0 > journaled
    });
    (outage.up)();
    wait_job_done(&coordinator, units, &[&rig], 180);
    coordinator.assert_exactly_once(units, &[&rig]);
    assert!(
        rig.log().contains("the key store answers again"),
        "{}",
        rig.log()
    );
    wait_until("rigctl status to show the key store answering", 30, || {
        key_health(broker.port, "rig-o") == "answering"
    });
    assert!(rig.alive(), "rigd exited");
    assert_eq!(rig.pid(), pid, "rigd was not restarted");
    assert_eq!(
        rig.log().matches("rigd started").count(),
        1,
        "rigd started once"
    );
}

#[cfg(feature = "tpm")]
mod tpm {
    use super::*;
    use rigd_harness::swtpm::Swtpm;
    use std::cell::RefCell;

    #[test]
    fn a_stopped_swtpm_is_waited_out_and_every_receipt_is_signed_once_it_resumes() {
        let state = tempfile::tempdir().unwrap();
        let tpm = Swtpm::start(state.path());
        survive(
            &format!("key = \"tpm:{}\"\n", tpm.rest()),
            &[],
            Outage {
                reason: "did not answer",
                down: &mut || tpm.signal("STOP"),
                up: &mut || tpm.signal("CONT"),
            },
        );
    }

    #[test]
    fn a_killed_swtpm_is_reconnected_once_it_restarts_and_every_receipt_is_signed() {
        let state = tempfile::tempdir().unwrap();
        let tpm = RefCell::new(Swtpm::start(state.path()));
        let key = format!("key = \"tpm:{}\"\n", tpm.borrow().rest());
        survive(
            &key,
            &[],
            Outage {
                reason: "",
                down: &mut || tpm.borrow_mut().kill9(),
                up: &mut || tpm.borrow_mut().restart(),
            },
        );
    }
}

/// A SoftHSM2 token whose token directory disappears (renamed away) and comes back.
#[test]
fn a_softhsm2_token_that_vanishes_is_reopened_once_it_is_back_and_every_receipt_is_signed() {
    let hsm = rigd_harness::softhsm::SoftHsm::new("outage");
    let tokens = hsm.tokens();
    let away = tokens.with_extension("away");
    let conf = hsm.conf().display().to_string();
    survive(
        &format!("key = \"{}\"\n", hsm.uri("receipt-key")),
        &[("SOFTHSM2_CONF", conf.as_str())],
        Outage {
            reason: "",
            down: &mut || rename(&tokens, &away),
            up: &mut || rename(&away, &tokens),
        },
    );
}

fn rename(from: &Path, to: &Path) {
    std::fs::rename(from, to).unwrap();
}
