use super::*;

const MS: Duration = Duration::from_millis(1);

/// Runs `secs` of simulated time, one millisecond a step: `per_ms` receipts journaled each
/// step, every signature taking `sign`. Returns (batches signed, largest batch, longest wait of
/// a receipt from journaled to signed, receipts left waiting at the end).
fn simulate(batch_max: u32, sign: Duration, per_ms: u64, secs: u64) -> (u64, u32, Duration, u64) {
    let t0 = Instant::now();
    let mut b = Batcher::new(batch_max, Duration::from_millis(500), 0, 0, t0);
    let mut journaled_at = vec![t0]; // index = seq; seq 0 unused
    let mut in_flight: Option<(Instant, u64)> = None;
    let mut sealed = 0u64;
    let (mut batches, mut largest, mut longest) = (0, 0, Duration::ZERO);
    for step in 1..=secs * 1000 {
        let now = t0 + MS * step as u32;
        for _ in 0..per_ms {
            journaled_at.push(now);
        }
        b.journaled(journaled_at.len() as u64 - 1, now);
        if let Some((done_at, through)) = in_flight {
            if now >= done_at {
                for seq in sealed + 1..=through {
                    longest = longest.max(now - journaled_at[seq as usize]);
                }
                sealed = through;
                b.signed(through, sign, now);
                in_flight = None;
            }
        }
        if let Decision::Seal(n) = b.poll(now) {
            assert!(n >= 1 && n <= batch_max, "batch of {n}");
            assert!(in_flight.is_none(), "one signature at a time");
            largest = largest.max(n);
            batches += 1;
            in_flight = Some((now + sign, sealed + u64::from(n)));
        }
    }
    (batches, largest, longest, b.waiting())
}

#[test]
fn a_fast_key_seals_every_commit_at_once() {
    let t0 = Instant::now();
    let mut b = Batcher::new(256, Duration::from_secs(1), 0, 0, t0);
    assert_eq!(b.poll(t0), Decision::Idle, "nothing waits");
    b.journaled(3, t0);
    assert_eq!(b.poll(t0), Decision::Seal(3));
    assert_eq!(
        b.poll(t0),
        Decision::Idle,
        "one signature in flight at a time"
    );
    b.journaled(5, t0 + MS);
    b.signed(3, Duration::from_micros(100), t0 + MS);
    assert_eq!(b.poll(t0 + MS), Decision::Seal(2));
}

#[test]
fn a_slow_key_signs_large_batches_and_keeps_up_with_the_work() {
    // A TPM at 4 signatures per second, 2,000 receipts per second journaled.
    let (batches, largest, longest, left) = simulate(4096, Duration::from_millis(250), 2, 20);
    assert!(batches <= 20 * 4, "{batches} signatures in 20 s at 4/s");
    assert!(batches >= 20, "{batches} batches: the key sealed regularly");
    assert!(largest >= 500, "batches grew to {largest}");
    assert!(
        longest <= Duration::from_millis(1500),
        "a receipt waited {longest:?} for its signature"
    );
    assert!(left <= 2 * 4096, "{left} receipts left waiting");
}

#[test]
fn with_a_fast_key_batches_stay_small() {
    let (batches, largest, longest, _) = simulate(256, Duration::from_micros(100), 1, 5);
    assert!(largest <= 2, "largest batch {largest}");
    assert!(batches >= 2000, "{batches} batches");
    assert!(longest <= 2 * MS, "a receipt waited {longest:?}");
}

#[test]
fn a_batch_smaller_than_the_target_is_sealed_when_its_oldest_receipt_is_max_age_old() {
    let t0 = Instant::now();
    let max_age = Duration::from_millis(300);
    let mut b = Batcher::new(256, max_age, 0, 0, t0);
    // Learn a slow key and a high arrival rate: the target grows above one.
    b.journaled(1, t0);
    assert_eq!(b.poll(t0), Decision::Seal(1));
    b.journaled(1000, t0 + 300 * MS);
    b.signed(1, Duration::from_millis(200), t0 + 300 * MS);
    assert_eq!(b.target(), 256);
    let mut now = t0 + 300 * MS;
    let mut sealed = 1;
    while let Decision::Seal(n) = b.poll(now) {
        now += 200 * MS;
        sealed += u64::from(n);
        b.signed(sealed, Duration::from_millis(200), now);
    }
    assert_eq!(
        (sealed, b.waiting()),
        (1000, 0),
        "the rest waited from before: sealed at once"
    );
    now += 100 * MS;
    b.journaled(1003, now);
    assert_eq!(b.poll(now), Decision::WaitUntil(now + max_age));
    assert_eq!(b.poll(now + max_age), Decision::Seal(3));
}

#[test]
fn receipts_journaled_before_a_restart_are_sealed_at_once_in_batches_of_at_most_batch_max() {
    let t0 = Instant::now();
    let mut b = Batcher::new(100, Duration::from_secs(5), 40, 290, t0);
    assert_eq!(b.waiting(), 250);
    assert_eq!(b.poll(t0), Decision::Seal(100));
    b.signed(140, Duration::from_millis(1), t0);
    assert_eq!(b.poll(t0), Decision::Seal(100));
    b.signed(240, Duration::from_millis(1), t0);
    assert_eq!(b.poll(t0), Decision::Seal(50));
}

#[test]
fn a_failed_signature_is_tried_again_later() {
    let t0 = Instant::now();
    let mut b = Batcher::new(256, Duration::from_secs(1), 0, 4, t0);
    assert_eq!(b.poll(t0), Decision::Seal(4));
    b.failed(t0);
    assert!(!b.signing());
    assert_eq!(b.poll(t0), Decision::WaitUntil(t0 + RETRY_AFTER));
    assert_eq!(b.poll(t0 + RETRY_AFTER), Decision::Seal(4));
}

/// 8 cards finishing a unit a minute each (staggered), a fast key, `window`: batches signed
/// over `minutes` and the most receipts one held.
fn eight_cards(window: Duration, minutes: u64) -> (u64, u32) {
    let t0 = Instant::now();
    let mut b = Batcher::new(256, Duration::from_secs(1), 0, 0, t0).with_window(window);
    let (mut journaled, mut batches, mut largest) = (0u64, 0u64, 0u32);
    for ms in 1..=minutes * 60_000 {
        let now = t0 + MS * ms as u32;
        if ms % 7_500 == 0 {
            journaled += 1;
            b.journaled(journaled, now);
        }
        if let Decision::Seal(n) = b.poll(now) {
            batches += 1;
            largest = largest.max(n);
            b.signed(b.sealed + u64::from(n), Duration::from_micros(100), now);
        }
    }
    (batches, largest)
}

#[test]
fn a_window_makes_one_signature_cover_the_windows_receipts_however_fast_the_key() {
    // Without a window a fast key signs each receipt on its own.
    assert_eq!(eight_cards(Duration::ZERO, 10), (80, 1));
    // With a minute's window, one signature covers each minute's receipts: 8 a minute, 9
    // where a receipt lands on each end of the window.
    let (batches, largest) = eight_cards(Duration::from_secs(60), 10);
    assert!((8..=9).contains(&largest), "largest batch {largest}");
    assert!((8..=10).contains(&batches), "{batches} batches");
}

#[test]
fn a_window_still_seals_a_full_batch_and_receipts_from_before_a_restart_at_once() {
    let t0 = Instant::now();
    let window = Duration::from_secs(600);
    let mut b = Batcher::new(4, Duration::from_secs(1), 0, 0, t0).with_window(window);
    b.journaled(3, t0);
    assert_eq!(
        b.poll(t0 + Duration::from_secs(5)),
        Decision::WaitUntil(t0 + window)
    );
    b.journaled(4, t0 + Duration::from_secs(6));
    assert_eq!(
        b.poll(t0 + Duration::from_secs(6)),
        Decision::Seal(4),
        "full"
    );
    let restarted = Batcher::new(4, Duration::from_secs(1), 10, 12, t0);
    assert_eq!(restarted.with_window(window).poll(t0), Decision::Seal(2));
}
