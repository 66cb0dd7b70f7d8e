//! What the scheduler costs per coordinator tick (every 100 ms) with a large job live:
//! `expire` + `assign` on an idle fleet (every rig full, no lease due), one lease running
//! out, and a suspension. Prints a table.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_coordinator::scheduler::Scheduler;
use rigd_protocol::RigId;
use std::time::Instant;

const CARDS: u32 = 8;
const UNITS_PER_CARD: u32 = 2;
const LEASE_MS: u64 = 60_000;

fn rig(i: u32) -> RigId {
    RigId::new(format!("rig-{i:05}")).expect("rig id")
}

/// The best of `runs` timings of `f`, in microseconds.
fn best_us(runs: u32, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..runs {
        let started = Instant::now();
        f();
        best = best.min(started.elapsed().as_secs_f64() * 1e6);
    }
    best
}

fn main() {
    println!("| live units | rigs x cards | idle tick (expire + assign) | one lease expires | suspend one rig |");
    println!("|---|---|---|---|---|");
    for (units, rigs) in [(100_000u64, 1_000u32), (1_000_000, 10_000)] {
        let mut s = Scheduler::new(LEASE_MS, 5_000, UNITS_PER_CARD);
        s.add_units(0..units);
        // Rigs come online one per millisecond, so their leases' deadlines spread.
        for t in 0..rigs {
            s.rig_status(&rig(t), CARDS, true, true);
            s.assign(u64::from(t));
        }
        let now = u64::from(rigs) + 1;
        let idle = best_us(20, || {
            assert!(s.expire(now).is_empty());
            assert!(s.assign(now).is_empty());
        });
        let mut step = 0u64;
        let expire_one = best_us(20, || {
            // Each run lets the earliest remaining lease run out (one rig's leases).
            let due = LEASE_MS + step;
            step += 1;
            let expired = s.expire(due);
            assert!(!expired.is_empty());
        });
        let mut next = rigs / 2;
        let suspend = best_us(20, || {
            s.suspend(&rig(next), now + LEASE_MS * 10);
            next += 1;
        });
        println!(
            "| {units} | {rigs} x {CARDS} | {idle:.0} µs | {expire_one:.0} µs | {suspend:.0} µs |"
        );
    }
}
