//! SIGTERM, as `systemctl stop` sends it: in-flight units finish, their receipts are journaled
//! and signed, rigd exits 0 well within the unit's `TimeoutStopSec=`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_harness::{wait_job_done, wait_until, Coordinator, Mosquitto, RigProcess};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{RigId, RigState, RigStatus};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::time::{Duration, Instant};

/// The rig's retained status once the broker is done with rigd's last connection. The reader
/// connects with rigd's own client id: the broker ends any session of that id before it
/// answers, publishing its last will if rigd left without a DISCONNECT, so the retained
/// status read afterwards is final.
fn final_retained_status(port: u16, rig: &str) -> RigStatus {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut opts = MqttOptions::new(rig, "127.0.0.1", port);
        opts.set_clean_start(true);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let rig = RigId::new(rig).unwrap();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client
                            .subscribe(topics::rig(&rig, Channel::Status), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        return rigd_protocol::decode::<RigStatus>(&p.payload).unwrap();
                    }
                    Ok(_) => {}
                    Err(e) => panic!("broker: {e}"),
                }
            }
        })
        .await
        .unwrap()
    })
}

#[test]
fn sigterm_during_work_drains_in_flight_units_flushes_the_journal_and_exits_0() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let units = 60;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 64, |c| {
        c.units_per_card = 4;
    });
    let mut rig = RigProcess::start(
        "rig-term",
        broker.port,
        2,
        &dir.path().join("t"),
        "sim.gflops = 0.005\n",
    );
    wait_until("receipts journaled and workers busy", 30, || {
        rig.journal().0 > 0 && !rig.worker_pids().is_empty()
    });
    let (before, _) = rig.journal();
    let t0 = Instant::now();
    assert_eq!(rig.terminate(), Some(0), "{}", rig.log());
    let stop = t0.elapsed();
    let log = rig.log();
    assert!(log.contains("stopping: draining in-flight units"), "{log}");
    assert!(log.contains("rigd stopped"), "{log}");
    assert!(!log.contains("drain timed out"), "{log}");
    assert!(stop < Duration::from_secs(45), "stop took {stop:?}");
    let (after, unacked) = rig.journal();
    assert!(
        after > before,
        "the units in flight at SIGTERM were not journaled: seq {before} -> {after}"
    );
    // The clean Offline status stays retained; the last will (all counts 0) is not sent.
    let status = final_retained_status(broker.port, "rig-term");
    assert_eq!(status.state, RigState::Offline, "{status:?}");
    assert_eq!(
        (status.seq_journaled, status.receipts_unacked),
        (after, unacked),
        "the retained status is the last will, not the clean stop's: {status:?}\n{}",
        rig.log()
    );
    // Started again, the rig finishes the job; every unit is credited exactly once.
    rig.restart();
    wait_job_done(&coordinator, units, &[&rig], 120);
    coordinator.assert_exactly_once(units, &[&rig]);
}
