//! The exporter between a real broker and a real Prometheus: sim rigs work a job, Prometheus
//! scrapes the exporter, and PromQL over Prometheus's HTTP API returns each card's
//! temperature under dcgm-exporter's name and labels. Hostile messages and requests leave it
//! serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigd_harness::{
    free_port, spawn_logged, wait_until, workspace_bin, Coordinator, Mosquitto, RigProcess,
};
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{encode, RigId};
use rigd_testkit::fixtures;
use rigd_testkit::prometheus::{http_get, Prometheus};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};

struct Exporter {
    port: u16,
    child: Child,
}

impl Exporter {
    fn start(broker: u16, dir: &Path) -> Self {
        let port = free_port();
        let mut cmd = Command::new(workspace_bin("rigd-exporter"));
        cmd.args(["--broker", &format!("127.0.0.1:{broker}")])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "debug");
        let child = spawn_logged(cmd, &dir.join("exporter.log"));
        let exporter = Exporter { port, child };
        wait_until("the exporter serves /metrics", 30, || {
            matches!(http_get(port, "/metrics"), Some((200, _)))
        });
        exporter
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (rig, gpu index, UUID, model) of every card of `rig`, as `rigctl gpus` reports them.
fn cards_of(broker: u16, rig: &str) -> BTreeSet<(String, String, String, String)> {
    let out = Command::new(workspace_bin("rigctl"))
        .args([
            "--broker",
            &format!("127.0.0.1:{broker}"),
            "--json",
            "gpus",
            rig,
        ])
        .output()
        .expect("run rigctl");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let cards = json["cards"].as_array().cloned().unwrap_or_default();
    cards
        .iter()
        .filter_map(|c| {
            Some((
                rig.to_owned(),
                c["index"].as_u64()?.to_string(),
                c["uuid"].as_str()?.to_owned(),
                c["name"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The series of a PromQL instant query: each one's labels and value.
fn series(prometheus: &Prometheus, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let body = prometheus.query(promql).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    json["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|s| {
                    let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
                    (s["metric"].clone(), value.unwrap_or(f64::NAN))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn prometheus_scrapes_each_card_temperature_with_dcgm_names_and_labels() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let _coordinator = Coordinator::process_gemm(broker.port, dir.path(), 400, 32, None);
    let _rigs = [("rig-a", 2), ("rig-b", 3)].map(|(rig, gpus)| {
        RigProcess::start(
            rig,
            broker.port,
            gpus,
            &dir.path().join(rig),
            "sim.gflops = 0.05\n",
        )
    });
    let exporter = Exporter::start(broker.port, dir.path());
    let prometheus = Prometheus::start(&[format!("127.0.0.1:{}", exporter.port)]);

    let mut expected = BTreeSet::new();
    wait_until("rigctl sees all five cards", 60, || {
        expected = ["rig-a", "rig-b"]
            .iter()
            .flat_map(|rig| cards_of(broker.port, rig))
            .collect();
        expected.len() == 5
    });
    let mut seen = Vec::new();
    wait_until("Prometheus holds every card's temperature", 60, || {
        seen = series(&prometheus, "DCGM_FI_DEV_GPU_TEMP");
        seen.len() == 5
    });
    let labelled: BTreeSet<_> = seen
        .iter()
        .map(|(m, _)| {
            let label = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
            (
                label("rig"),
                label("gpu"),
                label("UUID"),
                label("modelName"),
            )
        })
        .collect();
    assert_eq!(labelled, expected, "{}", prometheus.log());
    for (metric, celsius) in &seen {
        assert!((10.0..=110.0).contains(celsius), "{metric} at {celsius} C");
        assert_eq!(
            metric["device"],
            format!("nvidia{}", metric["gpu"].as_str().unwrap_or(""))
        );
        assert_eq!(metric["job"], "rigd");
    }
    wait_until("the coordinator's progress reaches Prometheus", 60, || {
        series(&prometheus, "rigd_coordinator_units_done_total > 0").len() == 1
    });
    let up = series(&prometheus, "rigd_rig_up == 1");
    assert_eq!(up.len(), 2, "{up:?}");
}

fn publish_retained(broker: u16, topic: &str, payload: &[u8], dir: &Path) {
    let file = dir.join("payload");
    std::fs::write(&file, payload).unwrap();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.to_string(),
            "-V",
            "5",
            "-q",
            "1",
            "-r",
        ])
        .args(["-t", topic])
        .arg("-f")
        .arg(&file)
        .status()
        .expect("mosquitto_pub is not installed: run ./test.sh, which installs it");
    assert!(status.success(), "publish on {topic}");
}

fn refused(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("rigd_exporter_messages_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_messages_and_requests_leave_the_exporter_serving() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = |rig: &str, channel| topics::rig(&RigId::new(rig).unwrap(), channel);
    let good_status = encode(&fixtures::status("good", 2));
    let mut truncated = encode(&fixtures::telemetry("evil-3", 2));
    truncated.truncate(truncated.len() - 3);
    let hostile: [(String, Vec<u8>); 5] = [
        (topic("evil-1", Channel::Status), vec![0xff; 300]),
        (topic("evil-2", Channel::Status), good_status.clone()),
        (topic("evil-3", Channel::Telemetry), truncated),
        (topic("evil-4", Channel::Telemetry), vec![1; 3 << 20]),
        (topic("evil-5", Channel::Receipts), good_status.clone()),
    ];
    for (t, payload) in &hostile {
        publish_retained(broker.port, t, payload, dir.path());
    }
    publish_retained(
        broker.port,
        &topic("good", Channel::Status),
        &good_status,
        dir.path(),
    );
    let telemetry = encode(&fixtures::telemetry("good", 2));
    publish_retained(
        broker.port,
        &topic("good", Channel::Telemetry),
        &telemetry,
        dir.path(),
    );

    let mut exporter = Exporter::start(broker.port, dir.path());
    wait_until(
        "the good rig's cards and the refusals are counted",
        30,
        || {
            let m = exporter.metrics();
            m.lines()
                .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_TEMP{"))
                .count()
                == 2
                && refused(&m, "frame") >= 2
                && refused(&m, "rig_mismatch") >= 1
        },
    );

    let huge_header = format!(
        "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let requests: [&[u8]; 5] = [
        b"GARBAGE\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /../../etc/passwd HTTP/1.1\r\n\r\n",
        b"GET /metrics?<script>alert(1)</script> HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        huge_header.as_bytes(),
    ];
    for request in requests {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", exporter.port)) {
            let _ = stream.write_all(request);
        }
    }
    assert_eq!(
        http_get(exporter.port, "/nope").map(|(code, _)| code),
        Some(404)
    );
    let (code, body) = http_get(exporter.port, "/metrics").expect("the exporter answers");
    assert_eq!(code, 200);
    assert!(
        body.contains("rig=\"good\"") && !body.contains("evil"),
        "{body}"
    );
    assert!(
        matches!(exporter.child.try_wait(), Ok(None)),
        "the exporter exited"
    );
}
