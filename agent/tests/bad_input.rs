//! Hostile input: bad rig.conf files and bad frames on every topic rigd subscribes to.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_harness::{wait_until, Mosquitto, RigProcess};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{
    decode, encode, Ack, JobId, ReceiptBatch, RigId, RigStatus, UnitAssignment, UnitKind, WorkUnit,
    MAX_FRAME_BYTES,
};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::process::Command;
use std::time::Duration;

#[test]
fn a_bad_rig_conf_stops_rigd_with_exit_code_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "rig_id = \"r\"\nbroker = \"127.0.0.1:1\"\nstate_dir = \"/tmp\"\nsim_gpu = 2\n",
            "line 4",
        ),
        (
            "rig_id = \"r/1\"\nbroker = \"127.0.0.1:1\"\nstate_dir = \"/tmp\"\n",
            "line 1",
        ),
        (
            "rig_id = \"r\"\nbroker = \"nowhere\"\nstate_dir = \"/tmp\"\n",
            "broker",
        ),
        ("rig_id = \"r\"\nbroker = [1\n", "line 3"),
    ];
    for (text, expect) in cases {
        let conf = dir.path().join("rig.conf");
        std::fs::write(&conf, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rigd"))
            .arg("--config")
            .arg(&conf)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{text:?}: stderr does not name {expect:?}: {stderr}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_rigd"))
        .arg("--config")
        .arg(dir.path().join("missing.conf"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_software_key_without_permission_stops_rigd_with_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("rig.conf");
    std::fs::write(
        &conf,
        format!(
            "rig_id = \"r\"\nbroker = \"127.0.0.1:1\"\nstate_dir = \"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rigd"))
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_software_key"));
}

fn bad_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut wrong_version = encode(&UnitAssignment { units: vec![] });
    wrong_version[0] = 9;
    vec![
        ("empty", vec![]),
        ("truncated", vec![rigd_protocol::WIRE_VERSION]),
        (
            "oversized",
            vec![rigd_protocol::WIRE_VERSION; MAX_FRAME_BYTES + 100],
        ),
        ("wrong version", wrong_version),
        (
            "garbage",
            vec![
                rigd_protocol::WIRE_VERSION,
                3,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0x7f,
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_on_units_and_acks_are_refused_and_rigd_keeps_working() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut rig = RigProcess::start("rig-hostile", broker.port, 1, dir.path(), "");
    let rig_id = RigId::new("rig-hostile").unwrap();

    let mut opts = MqttOptions::new("hostile-test", "127.0.0.1", broker.port);
    opts.set_max_packet_size(Some(4 << 20));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    client
        .subscribe(topics::rig(&rig_id, Channel::Receipts), QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(topics::rig(&rig_id, Channel::Status), QoS::AtLeastOnce)
        .await
        .unwrap();

    // The rig is up once its retained status shows its key.
    let status: RigStatus = loop {
        let p = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let Ok(s) = decode::<RigStatus>(&p.payload) {
            break s;
        }
    };

    // What a coordinator that never recorded the rig publishes: the rig may sign at once.
    let earnings = rigd_protocol::Earnings {
        rig: rig_id.clone(),
        cards: vec![],
        micros_per_mflop: 1,
        last_seq: 0,
        missing_seqs: 0,
        updated_ms: 1,
        pinned_key: Some(status.pubkey.clone()),
        key_changed: false,
    };
    client
        .publish(
            topics::rig(&rig_id, Channel::Earnings),
            QoS::AtLeastOnce,
            true,
            encode(&earnings),
        )
        .await
        .unwrap();

    for channel in [Channel::Units, Channel::Acks] {
        let mut frames = bad_frames();
        let wrong_kind = match channel {
            Channel::Units => encode(&Ack {
                rig: rig_id.clone(),
                batches: vec![],
            }),
            _ => encode(&UnitAssignment { units: vec![] }),
        };
        frames.push(("wrong kind", wrong_kind));
        for (_, payload) in frames {
            client
                .publish(
                    topics::rig(&rig_id, channel),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
    }
    let unit = WorkUnit {
        job: JobId::new("probe").unwrap(),
        unit: 42,
        attempt: 0,
        kind: UnitKind::GemmI8 {
            seed: 5,
            m: 8,
            n: 8,
            k: 8,
        },
    };
    client
        .publish(
            topics::rig(&rig_id, Channel::Units),
            QoS::AtLeastOnce,
            false,
            encode(&UnitAssignment {
                units: vec![unit.clone()],
            }),
        )
        .await
        .unwrap();

    let batch: ReceiptBatch = loop {
        let p = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let Ok(b) = decode::<ReceiptBatch>(&p.payload) {
            break b;
        }
    };
    assert_eq!(batch.items[0].receipt.unit, 42);
    assert_eq!(
        batch.items[0].receipt.input_digest,
        unit.kind.input_digest()
    );
    status
        .pubkey
        .verify(&batch.header.signing_digest(), &batch.signature)
        .expect("the receipt batch is signed by the rig's key");
    assert!(rig.alive(), "rigd died on hostile input");
    wait_until("every bad frame logged", 10, || {
        rig.log().matches("refused").count() >= 12
    });
}
