//! GPU duty cycle with 1 s units on sim cards: how much of the time each card computes.
//! `cargo bench -p rigd --bench duty_cycle` (needs mosquitto; prints a table).
//!
//! A real rigd process with 2 sim cards takes GEMM units sized to last 1 s on its simulated
//! card from an in-process coordinator over a real mosquitto. Busy time per card is the sum
//! of its receipts' `finished_ms - started_ms`, over the span from its first start to its
//! last finish; the rest is the gap between units (reply, journal, dispatch, request).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_harness::{Coordinator, Mosquitto, RigProcess};
use rigd_protocol::Receipt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const UNITS_PER_CARD: u64 = 10;
const CARDS: u32 = 2;
const DIM: u32 = 64;

fn main() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let units = UNITS_PER_CARD * u64::from(CARDS);
    let _coordinator = Coordinator::gemm(broker.port, dir.path(), units, DIM, |c| {
        c.verify_fraction = 0.0;
    });
    let gflops = 2.0 * f64::from(DIM).powi(3) / 1e9;
    let state = dir.path().join("rig");
    let rig = RigProcess::start(
        "duty",
        broker.port,
        CARDS,
        &state,
        &format!("sim.gflops = {gflops}\n"),
    );
    let deadline = Instant::now() + Duration::from_secs(60 + units * 2);
    let receipts = loop {
        let r = receipts(&state.join("journal.db"));
        if r.len() as u64 >= units || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(rig);

    let mut per_card: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for r in &receipts {
        per_card
            .entry(r.card.to_string())
            .or_default()
            .push((r.started_ms, r.finished_ms));
    }
    println!("| card | units | busy | span | duty cycle | mean gap between units |");
    println!("|---|---|---|---|---|---|");
    for (card, mut spans) in per_card {
        spans.sort();
        let busy: u64 = spans.iter().map(|(s, f)| f - s).sum();
        let span = spans.last().map(|l| l.1).unwrap_or(0) - spans.first().map(|f| f.0).unwrap_or(0);
        let gaps: Vec<u64> = spans
            .windows(2)
            .map(|w| w[1].0.saturating_sub(w[0].1))
            .collect();
        let mean_gap = gaps.iter().sum::<u64>() as f64 / gaps.len().max(1) as f64;
        println!(
            "| {card} | {} | {:.3} s | {:.3} s | {:.2} % | {mean_gap:.1} ms |",
            spans.len(),
            busy as f64 / 1000.0,
            span as f64 / 1000.0,
            100.0 * busy as f64 / span.max(1) as f64
        );
    }
}

fn receipts(path: &std::path::Path) -> Vec<Receipt> {
    let Ok(db) =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return vec![];
    };
    let Ok(mut stmt) = db.prepare("SELECT receipt FROM receipts ORDER BY seq") else {
        return vec![];
    };
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map(|rows| {
            rows.flatten()
                .filter_map(|b| postcard::from_bytes(&b).ok())
                .collect()
        })
        .unwrap_or_default()
}
