//! GPU backends as a rig owner meets them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_harness::{wait_until, Mosquitto, RigProcess};

/// A rig.conf that names no `gpu` means NVIDIA cards: on a machine without the driver the rig
/// runs with no cards, never with simulated ones.
#[test]
fn without_a_gpu_line_and_no_driver_rigd_says_so_and_keeps_running_with_no_cards() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        "rig_id = \"rig-nodriver\"\nbroker = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\nallow_software_key = true\ntelemetry_interval_ms = 200\n",
        broker.port,
        dir.path().display()
    );
    assert!(!conf.contains("gpu"));
    let mut rig = RigProcess::start_conf("rig-nodriver", dir.path(), &conf);
    wait_until("the missing driver logged", 20, || {
        rig.log().contains("no NVIDIA driver")
    });
    wait_until("connected with no cards", 20, || {
        rig.log().contains("rigd started") && rig.log().contains("cards=0")
    });
    rigd_harness::watch_statuses(broker.port, "rig-nodriver", 3, 20, |row| {
        assert_eq!(row["cards"], 0, "{row}");
    });
    assert!(rig.alive(), "rigd stopped without a driver:\n{}", rig.log());
    assert_eq!(rig.terminate(), Some(0), "{}", rig.log());
}
