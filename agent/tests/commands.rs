//! Signed operator commands against a real mosquitto and real rigd processes: every bad
//! command refused with its reason (also after a restart), `rigctl drain` / `resume` on a
//! working rig with the coordinator crediting every unit once, limits in telemetry.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use rigd::hold::{Point, TEST_HOLD_DIR_ENV};
use rigd_harness::{wait_job_done, wait_until, workspace_bin, Coordinator, Mosquitto, RigProcess};
use rigd_protocol::command::{Action, Command, CommandReply, Outcome, Rejection};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{decode, encode, CardState, GpuUuid, RigId, RigState, RigStatus, Telemetry};
use ring::signature::{Ed25519KeyPair, KeyPair};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An operator key written by `rigctl operator keygen`; returns the file and its public key.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let out = std::process::Command::new(workspace_bin("rigctl"))
        .args(["operator", "keygen"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(public.len(), 64, "{public}");
    (file, public)
}

fn rigctl(port: u16, key: &Path, args: &[&str]) -> (Output, Value) {
    let out = std::process::Command::new(workspace_bin("rigctl"))
        .args(["--broker", &format!("127.0.0.1:{port}"), "--json"])
        .args(args)
        .arg("--operator-key")
        .arg(key)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, json)
}

/// The only rig's outcome of the only action of a rigctl JSON report.
fn outcome(json: &Value) -> &str {
    json[0]["rigs"][0]["outcome"].as_str().unwrap_or("")
}

/// A raw MQTT 5 operator client that can send anything, to test what rigd refuses.
struct Operator {
    client: AsyncClient,
    events: EventLoop,
    pair: Ed25519KeyPair,
    rig: RigId,
}

impl Operator {
    /// Connects once the rig is online (its retained status says so).
    async fn connect(port: u16, rig: &str, pkcs8: &[u8]) -> Self {
        let mut opts = MqttOptions::new(format!("op-{}", now_ms()), "127.0.0.1", port);
        opts.set_clean_start(true)
            .set_max_packet_size(Some(1 << 21));
        let (client, mut events) = AsyncClient::new(opts, 16);
        let rig = RigId::new(rig).unwrap();
        for ch in [Channel::Replies, Channel::Status] {
            client
                .subscribe(topics::rig(&rig, ch), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let online = async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                    if decode::<RigStatus>(&p.payload).is_ok_and(|s| s.state != RigState::Offline) {
                        break;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), online)
            .await
            .expect("the rig online within 20 s");
        Operator {
            client,
            events,
            pair: Ed25519KeyPair::from_pkcs8(pkcs8).unwrap(),
            rig,
        }
    }

    fn command(&self, nonce: u64, action: Action) -> Command {
        let mut cmd = Command {
            rig: self.rig.clone(),
            operator: self.pair.public_key().as_ref().try_into().unwrap(),
            nonce,
            issued_ms: now_ms(),
            expires_ms: now_ms() + 30_000,
            action,
            signature: vec![],
        };
        self.sign(&mut cmd);
        cmd
    }

    fn sign(&self, cmd: &mut Command) {
        cmd.signature = self.pair.sign(&cmd.signing_digest()).as_ref().to_vec();
    }

    /// Publishes `payload` on the rig's commands topic and returns the reply that carries
    /// this request's correlation data.
    async fn ask(&mut self, payload: Vec<u8>, response_topic: Option<String>) -> CommandReply {
        let correlation = Bytes::from(now_ms().to_be_bytes().to_vec());
        let props = PublishProperties {
            response_topic: Some(
                response_topic.unwrap_or_else(|| topics::rig(&self.rig, Channel::Replies)),
            ),
            correlation_data: Some(correlation.clone()),
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(
                topics::rig(&self.rig, Channel::Commands),
                QoS::AtLeastOnce,
                false,
                payload,
                props,
            )
            .await
            .unwrap();
        let wait = async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = self.events.poll().await.unwrap() {
                    let c = p
                        .properties
                        .as_ref()
                        .and_then(|p| p.correlation_data.clone());
                    if c.as_ref() == Some(&correlation) {
                        return decode::<CommandReply>(&p.payload).unwrap();
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("a reply within 20 s")
    }
}

fn rejected(reply: &CommandReply) -> &Rejection {
    match &reply.outcome {
        Outcome::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_expired_wrong_rig_unknown_and_unlisted_commands_are_refused_with_their_reason(
) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public) = keygen(dir.path(), "op.key");
    let (stranger_file, _) = keygen(dir.path(), "stranger.key");
    let mut rig = RigProcess::start(
        "rig-c",
        broker.port,
        1,
        &dir.path().join("rig"),
        &format!(
            "operator_keys = [\"{public}\"]\nallowed_commands = [\"drain\", \"pause\", \"resume\", \"diagnostics\"]\n"
        ),
    );
    let mut op = Operator::connect(broker.port, "rig-c", &std::fs::read(&key_file).unwrap()).await;

    // A good command is taken; the same nonce again is a replay.
    let diag = op.command(10, Action::Diagnostics);
    let reply = op.ask(encode(&diag), None).await;
    assert!(
        matches!(reply.outcome, Outcome::Diagnostics(_)),
        "{reply:?}"
    );
    assert_eq!(
        rejected(&op.ask(encode(&diag), None).await),
        &Rejection::Replayed {
            nonce: 10,
            last: 10
        }
    );
    // Forged: a signed field changed after signing.
    let mut forged = op.command(11, Action::Pause { gpu: None });
    forged.action = Action::Drain;
    assert_eq!(
        rejected(&op.ask(encode(&forged), None).await),
        &Rejection::BadSignature
    );
    // Expired.
    let mut old = op.command(12, Action::Diagnostics);
    old.issued_ms -= 120_000;
    old.expires_ms = old.issued_ms + 60_000;
    op.sign(&mut old);
    assert!(matches!(
        rejected(&op.ask(encode(&old), None).await),
        Rejection::Expired { .. }
    ));
    // Signed for another rig, sent to this one.
    let mut other = op.command(13, Action::Diagnostics);
    other.rig = RigId::new("rig-other").unwrap();
    op.sign(&mut other);
    assert!(matches!(
        rejected(&op.ask(encode(&other), None).await),
        Rejection::WrongRig(_)
    ));
    // Not on the allow-list.
    let unlisted = op.command(
        14,
        Action::Quarantine {
            gpu: GpuUuid::new("SIM-rig-c-0").unwrap(),
        },
    );
    assert!(matches!(
        rejected(&op.ask(encode(&unlisted), None).await),
        Rejection::NotAllowed(_)
    ));
    // A response topic outside the rig's own replies topic; the refusal comes on its own.
    let outside = op.command(15, Action::Diagnostics);
    let reply = op
        .ask(encode(&outside), Some("rigd/v1/rig/rig-x/replies".into()))
        .await;
    assert!(matches!(rejected(&reply), Rejection::ResponseTopic(_)));
    // Garbage.
    assert!(matches!(
        rejected(&op.ask(vec![1, 8, 0xff], None).await),
        Rejection::Malformed(_)
    ));
    // An operator the rig does not trust, through rigctl: refused, reported, exit 1.
    let (out, json) = rigctl(broker.port, &stranger_file, &["diag", "rig-c"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(outcome(&json), "rejected", "{json}");
    assert!(
        json[0]["rigs"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not trusted"),
        "{json}"
    );

    // After a restart the last nonce is still known: the old command is still a replay.
    rig.restart();
    let replay = op.command(10, Action::Diagnostics);
    assert_eq!(
        rejected(&op.ask(encode(&replay), None).await),
        &Rejection::Replayed {
            nonce: 10,
            last: 10
        }
    );
    let reply = op
        .ask(encode(&op.command(16, Action::Diagnostics)), None)
        .await;
    let Outcome::Diagnostics(d) = reply.outcome else {
        panic!("{reply:?}")
    };
    assert_eq!((d.commands_accepted, d.commands_rejected), (1, 1));
    let log = rig.log();
    for reason in [
        "replayed",
        "signature does not verify",
        "expired",
        "is for rig rig-other",
        "not allowed",
        "response topic",
        "malformed",
        "not trusted",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("command refused") && l.contains(reason)),
            "no warning naming {reason:?} in the log:\n{log}"
        );
    }
}

#[test]
fn rigctl_drain_lets_running_units_finish_and_flush_then_the_rig_idles_survives_a_kill_and_resume_restarts_it(
) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "op.key");
    let units = 24;
    // Units of about 0.3 s on each of two sim cards.
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 64, |_| {});
    let holds = tempfile::tempdir().unwrap();
    let mut rig = RigProcess::start_env(
        "rig-d",
        broker.port,
        2,
        &dir.path().join("rig"),
        &format!("operator_keys = [\"{public}\"]\nsim.gflops = 0.0017\n"),
        &[(TEST_HOLD_DIR_ENV, &holds.path().display().to_string())],
    );
    wait_until("the rig working", 30, || rig.journal().0 >= 2);
    // The drain arrives while both cards are mid-unit, by construction: the workers hold
    // the units they received (`rigd::hold`) until rigd reports that it drains.
    let computing = holds.path().join(Point::Computing.file_name());
    std::fs::write(&computing, b"").unwrap();
    wait_until("both workers holding a unit", 30, || {
        rig.log().matches("held by a test").count() >= 2
    });
    let at_hold = rig.journal().0;
    let drain = {
        let (port, key) = (broker.port, key.clone());
        std::thread::spawn(move || rigctl(port, &key, &["drain", "rig-d"]))
    };
    wait_until("rigd draining", 30, || {
        rigd_harness::status_row(broker.port, "rig-d")["state"] == "draining"
    });
    std::fs::remove_file(&computing).unwrap();
    let (out, json) = drain.join().unwrap();
    assert!(out.status.success(), "{out:?}\n{json}");
    assert_eq!(outcome(&json), "completed", "{json}");
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("rig-d: accepted: draining: "),
        "no progress while units were in flight: {progress}"
    );
    // Drained: every receipt journaled was credited and acknowledged, nothing runs.
    let (journaled, unacked) = rig.journal();
    assert_eq!(unacked, 0);
    // The two held units finished; besides them at most the unit each card finished just
    // before its hold, which rigd may not have journaled yet when the hold was seen.
    assert!(
        (at_hold + 2..=at_hold + 4).contains(&journaled) && journaled < units,
        "the drain let {journaled} units finish, {at_hold} before the hold"
    );
    assert_eq!(
        coordinator.seqs("rig-d"),
        (1..=journaled).collect::<Vec<_>>()
    );
    // Idle: no unit starts while drained, though units wait for the rig, over five turns of
    // rigd's main loop (five status reports).
    rigd_harness::watch_statuses(broker.port, "rig-d", 5, 30, |row| {
        assert_eq!(row["running"], 0, "a unit ran while drained: {row}");
        assert!(row["queued"].as_u64() > Some(0), "no unit waits: {row}");
    });
    assert_eq!(rig.journal().0, journaled, "a unit ran while drained");
    // Killed and started again, the rig is still drained: nothing runs until the resume.
    rig.kill9();
    rig.start_again();
    wait_until("the drain restored", 30, || {
        rig.log()
            .contains("operator holds kept from before the restart")
    });
    rigd_harness::watch_statuses(broker.port, "rig-d", 5, 30, |row| {
        assert_eq!(row["running"], 0, "a unit ran after the restart: {row}");
    });
    assert_eq!(rig.journal().0, journaled, "a unit ran after the restart");
    let (out, json) = rigctl(broker.port, &key, &["resume", "rig-d"]);
    assert!(out.status.success(), "{out:?}\n{json}");
    assert_eq!(outcome(&json), "accepted", "{json}");
    // Working again; a worker restarted mid-unit loses nothing (its unit runs again).
    let before = rig.worker_pids();
    let (out, json) = rigctl(
        broker.port,
        &key,
        &["restart-worker", "rig-d", "--gpu", "SIM-rig-d-0"],
    );
    assert!(out.status.success(), "{out:?}\n{json}");
    wait_until("a fresh worker", 20, || {
        rig.worker_pids().iter().any(|p| !before.contains(p))
    });
    wait_job_done(&coordinator, units, &[&rig], 60);
    coordinator.assert_exactly_once(units, &[&rig]);
}

/// The latest telemetry sample of the rig's first card.
async fn sample(port: u16, rig: &str, until: impl Fn(&rigd_protocol::GpuSample) -> bool) {
    let mut opts = MqttOptions::new(format!("tm-{}", now_ms()), "127.0.0.1", port);
    opts.set_clean_start(true)
        .set_max_packet_size(Some(1 << 21));
    let (client, mut events) = AsyncClient::new(opts, 16);
    let rig = RigId::new(rig).unwrap();
    client
        .subscribe(topics::rig(&rig, Channel::Telemetry), QoS::AtMostOnce)
        .await
        .unwrap();
    let wait = async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                if let Ok(t) = decode::<Telemetry>(&p.payload) {
                    if t.gpus.first().is_some_and(&until) {
                        return;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("telemetry showing the change within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_commands_from_rigctl_show_in_telemetry_and_diagnostics() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "op.key");
    let _rigs = ["rig-l", "rig-m"].map(|name| {
        RigProcess::start(
            name,
            broker.port,
            1,
            &dir.path().join(name),
            &format!("operator_keys = [\"{public}\"]\n"),
        )
    });
    let port = broker.port;
    let run = |args: &'static [&'static str]| {
        let key = key.clone();
        tokio::task::spawn_blocking(move || rigctl(port, &key, args))
    };
    wait_until("both rigs answering", 20, || {
        let (_, json) = rigctl(port, &key, &["diag", "--all"]);
        json[0]["rigs"].as_array().is_some_and(|rigs| {
            rigs.len() == 2 && rigs.iter().all(|r| r["outcome"] == "diagnostics")
        })
    });
    let out = std::process::Command::new(workspace_bin("rigctl"))
        .args(["--broker", &format!("127.0.0.1:{port}"), "rigs"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("rig-l") && table.contains("rig-m"),
        "{table}"
    );
    // A rig that does not answer times out on its own; the others still report.
    let (out, json) = run(&["diag", "rig-l", "rig-ghost", "--timeout-ms", "1000"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(json[0]["rigs"][0]["outcome"], "diagnostics", "{json}");
    assert_eq!(json[0]["rigs"][1]["outcome"], "timeout", "{json}");
    let (out, json) = run(&["rotate-logs", "rig-l"]).await.unwrap();
    assert_eq!(
        (out.status.code(), outcome(&json)),
        (Some(1), "unsupported"),
        "{json}"
    );
    let (out, json) = run(&["limits", "set", "rig-l", "--power-w", "250"])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{json}");
    sample(port, "rig-l", |s| s.power_limit_w == 250).await;

    let (out, json) = run(&[
        "limits",
        "set",
        "rig-l",
        "--target-c",
        "65",
        "--critical-c",
        "80",
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}\n{json}");
    let (_, json) = run(&["diag", "rig-l"]).await.unwrap();
    let card = &json[0]["rigs"][0]["diagnostics"]["cards"][0];
    assert_eq!(
        (card["target_c"].as_u64(), card["critical_c"].as_u64()),
        (Some(65), Some(80)),
        "{json}"
    );
    assert_eq!(card["power_cap_w"].as_u64(), Some(250), "{json}");

    // A limit the card cannot take is refused by the rig, and rigctl says so.
    let (out, json) = run(&["limits", "set", "rig-l", "--target-c", "200"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(outcome(&json), "failed", "{json}");

    let gpu = "SIM-rig-l-0";
    let args: &'static [&'static str] = &["pause", "rig-l", "--gpu", "SIM-rig-l-0"];
    assert!(run(args).await.unwrap().0.status.success());
    sample(port, "rig-l", |s| {
        s.state == CardState::Paused && s.uuid.as_str() == gpu
    })
    .await;
    assert!(run(&["quarantine", "rig-l", "--gpu", "SIM-rig-l-0"])
        .await
        .unwrap()
        .0
        .status
        .success());
    sample(port, "rig-l", |s| s.state == CardState::Quarantined).await;
    let (out, json) = run(&["release", "rig-l", "--gpu", "SIM-rig-l-0"])
        .await
        .unwrap();
    assert!(out.status.success(), "{json}");
    let (out, json) = run(&["release", "rig-l", "--gpu", "SIM-rig-l-0"])
        .await
        .unwrap();
    assert_eq!(
        (out.status.code(), outcome(&json)),
        (Some(1), "failed"),
        "{json}"
    );
    let (out, json) = run(&["restart-worker", "rig-l", "--gpu", "SIM-rig-l-0"])
        .await
        .unwrap();
    assert!(out.status.success(), "{json}");
}
