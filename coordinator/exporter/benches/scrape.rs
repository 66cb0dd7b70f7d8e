//! What one scrape of a large fleet costs: messages taken per second, and the time and size
//! of one exposition at 1,000 and 10,000 rigs of 8 cards. Prints a table.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_exporter::Exporter;
use rigd_protocol::encode;
use rigd_protocol::topics::{self, Channel};
use rigd_testkit::fixtures::{rig_id, status, telemetry};
use std::time::Instant;

fn main() {
    println!("| rigs x cards | messages taken per second | scrape time | exposition size |");
    println!("|---|---|---|---|");
    for rigs in [1_000u32, 10_000] {
        let exporter = Exporter::new(20_000, 60_000).expect("exporter");
        let messages: Vec<(String, Vec<u8>)> = (0..rigs)
            .flat_map(|i| {
                let rig = format!("rig-{i:05}");
                let id = rig_id(&rig);
                [
                    (topics::rig(&id, Channel::Status), encode(&status(&rig, 8))),
                    (
                        topics::rig(&id, Channel::Telemetry),
                        encode(&telemetry(&rig, 8)),
                    ),
                ]
            })
            .collect();
        let started = Instant::now();
        for (topic, payload) in &messages {
            exporter.receive(topic, payload, 1);
        }
        let per_second = messages.len() as f64 / started.elapsed().as_secs_f64();
        let mut best = f64::MAX;
        let mut bytes = 0;
        for _ in 0..3 {
            let started = Instant::now();
            bytes = exporter.scrape(2).expect("scrape").len();
            best = best.min(started.elapsed().as_secs_f64());
        }
        println!(
            "| {rigs} x 8 | {per_second:.0} | {:.0} ms | {:.1} MiB |",
            best * 1000.0,
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
}
