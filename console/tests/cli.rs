//! rigctl against a real broker: mosquitto holds retained frames published by a rumqttc
//! client; the `rigctl` binary reads them back.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{encode, CoordinatorStatus, Earnings, RigState, RigStatus, Telemetry};
use rigd_testkit::{fixtures, Mosquitto};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use std::net::TcpListener;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::process::Command;
use tokio::time::{timeout_at, Instant};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A rig's status as it reads at the instant of the test (a rig not heard from for long is
/// shown offline).
fn status(rig: &str, cards: u32, state: RigState) -> RigStatus {
    RigStatus {
        state,
        started_ms: now_ms() - 60_000,
        sent_ms: now_ms(),
        ..fixtures::status(rig, cards)
    }
}

fn telemetry(rig: &str, cards: u32) -> Telemetry {
    Telemetry {
        at_ms: now_ms(),
        ..fixtures::telemetry(rig, cards)
    }
}

fn earnings(rig: &str, cards: u32) -> Earnings {
    Earnings {
        updated_ms: now_ms(),
        ..fixtures::earnings(rig, cards)
    }
}

fn coordinator() -> CoordinatorStatus {
    CoordinatorStatus {
        updated_ms: now_ms(),
        ..fixtures::coordinator(false)
    }
}

/// Publishes each `(topic, payload)` retained at QoS 1 and returns once the broker has
/// acknowledged all of them.
async fn publish_retained(broker: &Mosquitto, messages: Vec<(String, Vec<u8>)>) {
    let mut opts = MqttOptions::new("test-publisher", "127.0.0.1", broker.port);
    opts.set_max_packet_size(Some(rigd_client::MAX_PACKET_BYTES));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let count = messages.len();
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut acked = 0;
    while acked < count {
        let event = timeout_at(deadline, eventloop.poll())
            .await
            .expect("broker acknowledges the publishes in time")
            .unwrap();
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acked += 1;
        }
    }
    client.disconnect().await.unwrap();
    let _ = timeout_at(
        Instant::now() + Duration::from_millis(200),
        eventloop.poll(),
    )
    .await;
}

async fn rigctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rigctl"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

async fn rigctl_json(broker: &Mosquitto, args: &[&str]) -> Value {
    let addr = format!("127.0.0.1:{}", broker.port);
    let mut all = vec!["--broker", &addr, "--json", "--wait-ms", "5000"];
    all.extend_from_slice(args);
    let out = rigctl(&all).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_gpus_and_earnings_read_retained_frames_and_skip_bad_ones() {
    let broker = tokio::task::spawn_blocking(Mosquitto::start).await.unwrap();
    let rig = |name: &str, ch| topics::rig(&fixtures::rig_id(name), ch);
    let mut messages = vec![
        (
            rig("rig-a", Channel::Status),
            encode(&status("rig-a", 1, RigState::Working)),
        ),
        (
            rig("rig-b", Channel::Status),
            encode(&status("rig-b", 2, RigState::Offline)),
        ),
        (
            rig("rig-a", Channel::Telemetry),
            encode(&telemetry("rig-a", 1)),
        ),
        (
            rig("rig-b", Channel::Telemetry),
            encode(&telemetry("rig-b", 2)),
        ),
        (
            rig("rig-a", Channel::Earnings),
            encode(&earnings("rig-a", 1)),
        ),
        (
            rig("rig-b", Channel::Earnings),
            encode(&earnings("rig-b", 2)),
        ),
        (
            topics::COORDINATOR_STATUS.to_string(),
            encode(&coordinator()),
        ),
    ];
    // Hostile frames on every channel: logged and skipped.
    let mut wrong_version = encode(&status("rig-c", 1, RigState::Idle));
    wrong_version[0] = 99;
    messages.push((rig("rig-c", Channel::Status), wrong_version));
    messages.push((rig("rig-c", Channel::Telemetry), vec![1]));
    messages.push((
        rig("rig-c", Channel::Earnings),
        encode(&telemetry("rig-c", 1)),
    ));
    messages.push((rig("rig-d", Channel::Status), vec![1, 1, 0xff, 0xff, 0xff]));
    publish_retained(&broker, messages).await;

    let s = rigctl_json(&broker, &["status"]).await;
    let rigs = s["rigs"].as_array().unwrap();
    assert_eq!(rigs.len(), 2, "{s}");
    assert_eq!(rigs[0]["rig"], "rig-a");
    assert_eq!(rigs[0]["online"], true);
    assert_eq!(rigs[0]["state"], "working");
    assert_eq!(rigs[0]["journaled"], 41);
    assert_eq!(rigs[1]["online"], false);
    assert_eq!(rigs[1]["cards"], 2);
    assert!(rigs[1]["last_seen_age_ms"].as_u64().unwrap() < 60_000);
    assert_eq!(s["coordinator"]["step"], 12);

    let g = rigctl_json(&broker, &["gpus", "rig-b"]).await;
    let cards = g["cards"].as_array().unwrap();
    assert_eq!(cards.len(), 2, "{g}");
    assert_eq!(cards[1]["uuid"], "SIM-rig-b-1");
    assert_eq!(cards[1]["name"], "Sim RTX 3090");
    assert_eq!(cards[1]["units_done"], 12);
    assert!((cards[1]["core_c"].as_f64().unwrap() - 76.5).abs() < 1e-3);

    let e = rigctl_json(&broker, &["earnings"]).await;
    assert_eq!(e["rigs"].as_array().unwrap().len(), 2, "{e}");
    assert_eq!(e["total"]["credited_micros"], 3 * 1_234_567);
    assert_eq!(e["total"]["credited"], "3.703701");
    assert_eq!(e["total"]["pending"], "0.000015");

    let one = rigctl_json(&broker, &["earnings", "rig-a"]).await;
    assert_eq!(one["rigs"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["total"]["credited"], "1.234567");

    // The text table of the same data.
    let addr = format!("127.0.0.1:{}", broker.port);
    let out = rigctl(&["--broker", &addr, "--wait-ms", "5000", "earnings"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("RIG"), "{text}");
    assert!(text.contains("3.703701"), "{text}");

    let out = rigctl(&["--broker", &addr, "--wait-ms", "5000", "status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.starts_with("coordinator: job mlp-1  step 12/60"),
        "{text}"
    );
    assert!(text.lines().nth(1).unwrap().starts_with("RIG  "), "{text}");
    // The hostile frames were logged with their topics.
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(err.contains("rigd/v1/rig/rig-c/telemetry"), "{err}");
    let out = rigctl(&["--broker", &addr, "--wait-ms", "5000", "gpus", "rig-b"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.contains("SIM-rig-b-1"), "{text}");

    let missing = rigctl(&["--broker", &addr, "gpus", "rig-zz"]).await;
    assert_eq!(missing.status.code(), Some(1));
}

#[tokio::test]
async fn an_unreachable_broker_exits_3() {
    // A port nothing listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    for cmd in [&["status"][..], &["gpus", "rig-a"], &["earnings"]] {
        let mut args = vec!["--broker", &addr, "--wait-ms", "2000"];
        args.extend_from_slice(cmd);
        let out = rigctl(&args).await;
        assert_eq!(out.status.code(), Some(3), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unreachable"), "{err}");
    }
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let out = rigctl(&["gpus", "not/a/rig"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = rigctl(&["--broker", "nope", "status"]).await;
    assert_eq!(out.status.code(), Some(2));
}
