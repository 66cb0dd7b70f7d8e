//! Command round trip to a fleet: `cargo bench -p rigd --bench command_rtt` (needs mosquitto;
//! prints a table). `RIGD_BENCH_RIGS` sets the number of rigs (default 100).
//!
//! Starts one mosquitto and N real rigd processes with one sim card each, then signs
//! `diagnostics` commands (Ed25519) and measures, per command, the time from publishing it
//! (QoS 1, MQTT 5 response topic + correlation data) to receiving the rig's reply: once to
//! all rigs at the same moment (fleet-wide), and once to one rig at a time. Also times
//! `rigctl diag --all` end to end (connect, find the rigs, send, gather every reply).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use rigd_harness::{workspace_bin, Mosquitto};
use rigd_protocol::command::{Action, Command, CommandReply, Outcome};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{decode, encode, RigId, RigState, RigStatus};
use rigd_testkit::measure::percentile;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::NetworkOptions;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ROUNDS: usize = 10;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Fleet {
    children: Vec<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_rigs(n: usize, port: u16, dir: &std::path::Path, operator: &str) -> Fleet {
    let mut children = vec![];
    for i in 0..n {
        let state = dir.join(format!("rig-{i:03}"));
        std::fs::create_dir_all(&state).unwrap();
        let conf = state.join("rig.conf");
        std::fs::write(
            &conf,
            format!(
                "rig_id = \"rig-{i:03}\"\nbroker = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nallow_software_key = true\ngpu = \"sim\"\nsim.gpus = 1\noperator_keys = [\"{operator}\"]\n",
                state.display()
            ),
        )
        .unwrap();
        children.push(
            Process::new(env!("CARGO_BIN_EXE_rigd"))
                .arg("--config")
                .arg(&conf)
                .env("RUST_LOG", "rigd=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    Fleet { children }
}

struct Operator {
    client: AsyncClient,
    events: EventLoop,
    pair: Ed25519KeyPair,
    nonce: u64,
}

impl Operator {
    fn command(&mut self, rig: &RigId) -> Command {
        self.nonce += 1;
        let mut cmd = Command {
            rig: rig.clone(),
            operator: self.pair.public_key().as_ref().try_into().unwrap(),
            nonce: self.nonce,
            issued_ms: now_ms(),
            expires_ms: now_ms() + 60_000,
            action: Action::Diagnostics,
            signature: vec![],
        };
        cmd.signature = self.pair.sign(&cmd.signing_digest()).as_ref().to_vec();
        cmd
    }

    /// Sends a command to each of `rigs` at once; the round trip of each, ms.
    async fn round(&mut self, rigs: &[RigId]) -> Vec<f64> {
        let mut waiting: HashMap<Bytes, Instant> = HashMap::new();
        for (i, rig) in rigs.iter().enumerate() {
            let correlation = Bytes::from(format!("{}-{i}", self.nonce).into_bytes());
            let cmd = encode(&self.command(rig));
            let props = PublishProperties {
                response_topic: Some(topics::rig(rig, Channel::Replies)),
                correlation_data: Some(correlation.clone()),
                ..PublishProperties::default()
            };
            self.client
                .publish_with_properties(
                    topics::rig(rig, Channel::Commands),
                    QoS::AtLeastOnce,
                    false,
                    cmd,
                    props,
                )
                .await
                .unwrap();
            waiting.insert(correlation, Instant::now());
        }
        let mut out = vec![];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !waiting.is_empty() {
            let ev = tokio::time::timeout_at(deadline, self.events.poll())
                .await
                .expect("every reply within 60 s")
                .unwrap();
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let c = p.properties.and_then(|p| p.correlation_data);
                if let Some(sent) = c.and_then(|c| waiting.remove(&c)) {
                    let reply = decode::<CommandReply>(&p.payload).unwrap();
                    assert!(
                        matches!(reply.outcome, Outcome::Diagnostics(_)),
                        "{reply:?}"
                    );
                    out.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        out
    }
}

fn row(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
        v.len(),
        percentile(&v, 0.5).unwrap(),
        percentile(&v, 0.99).unwrap(),
        v.last().copied().unwrap_or(0.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("RIGD_BENCH_RIGS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("op.key");
    let out = Process::new(workspace_bin("rigctl"))
        .args(["operator", "keygen"])
        .arg(&key_file)
        .output()
        .unwrap();
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let started = Instant::now();
    let _fleet = start_rigs(n, broker.port, dir.path(), &public);

    let mut opts = MqttOptions::new("bench-operator", "127.0.0.1", broker.port);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    opts.set_network_options(network);
    opts.set_clean_start(true)
        .set_max_packet_size(Some(1 << 21))
        .set_outgoing_inflight_upper_limit(100);
    let (client, mut events) = AsyncClient::new(opts, n + 16);
    for ch in [Channel::Replies, Channel::Status] {
        client
            .subscribe(topics::all_rigs(ch), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    let mut online = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while online.len() < n {
        let ev = tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("every rig online within 120 s")
            .unwrap();
        if let Event::Incoming(Packet::Publish(p)) = ev {
            if let Ok(s) = decode::<RigStatus>(&p.payload) {
                if s.state != RigState::Offline {
                    online.insert(s.rig);
                }
            }
        }
    }
    let up = started.elapsed();
    client
        .unsubscribe(topics::all_rigs(Channel::Status))
        .await
        .unwrap();
    let mut rigs: Vec<RigId> = online.into_iter().collect();
    rigs.sort();
    let mut op = Operator {
        client,
        events,
        pair: Ed25519KeyPair::from_pkcs8(&std::fs::read(&key_file).unwrap()).unwrap(),
        nonce: now_ms() * 1000,
    };
    // Warm-up: the first command of each rig opens nothing new, but rounds out connections.
    op.round(&rigs).await;
    let mut fleet = vec![];
    for _ in 0..ROUNDS {
        fleet.extend(op.round(&rigs).await);
    }
    let mut single = vec![];
    for _ in 0..ROUNDS {
        for rig in &rigs {
            single.extend(op.round(std::slice::from_ref(rig)).await);
        }
    }
    let mut rigctl = vec![];
    for _ in 0..3 {
        let t = Instant::now();
        let out = Process::new(workspace_bin("rigctl"))
            .args(["--broker", &format!("127.0.0.1:{}", broker.port), "--json"])
            .args(["diag", "--all", "--operator-key"])
            .arg(&key_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        rigctl.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "{n} rigd processes (1 sim card each) online in {:.1} s",
        up.as_secs_f64()
    );
    println!();
    println!("| command round trip (diagnostics) | samples | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    row(&format!("fleet-wide: {n} rigs at once"), fleet);
    row("one rig at a time", single);
    row(
        &format!("`rigctl diag --all` wall time ({n} rigs, includes connect and --all lookup)"),
        rigctl,
    );
}
