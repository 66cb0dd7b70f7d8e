//! The owners' dashboard under load, printed as a table:
//!
//! - the owner rollup query (`Store::earnings`, what `/api/earnings` runs) for an owner with
//!   50 rigs, 400 cards and 90 days of earnings, in a ledger of RECEIPTS receipts (10 million
//!   by default) over 100 owners of 50 rigs each;
//! - `/api/disputes` and `/api/rigs` of the same owner;
//! - API latency p50/p99 with 100 owners logged in at once, each loading the page's five API
//!   requests in a loop over its own connection per request;
//! - with `--browser`: headless Chromium logging that owner in (`e2e/owner.mjs`): time to
//!   first paint and to complete data.
//!
//! ```sh
//! cargo bench -p rigd-dashboard --bench owners -- [RECEIPTS] [--browser]
//! ```
//!
//! The ledger is filled with plain SQL inserts into `receipts` (the ledger's own triggers keep
//! the daily rollup), which is what the coordinator's batches leave behind.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_client::http::{exchange, Bounds, Request, Url};
use rigd_coordinator::ledger::{Ledger, DAY_MS};
use rigd_dashboard::auth::{Limits, LoginLimiter, Sessions};
use rigd_dashboard::data::Store;
use rigd_dashboard::http::{self, App};
use rigd_exporter::fleet::Fleet;
use rigd_protocol::claim::Inventory;
use rigd_protocol::{EthAddress, PublicKey, RigId};
use rigd_provisioning::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const OWNERS: usize = 100;
const RIGS_PER_OWNER: usize = 50;
const CARDS: u64 = 8;
const DAYS: u64 = 90;
const ROUNDS: usize = 10;
const PAGE: [&str; 5] = [
    "/api/me",
    "/api/rigs",
    "/api/earnings",
    "/api/disputes",
    "/api/alerts",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

struct Built {
    passwords: Vec<(String, String)>,
    rigs: Vec<Vec<RigId>>,
}

fn build_registry(path: &std::path::Path) -> Built {
    let mut registry = Registry::open(path).unwrap();
    let payout = EthAddress::parse("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").unwrap();
    let mut passwords = Vec::new();
    let mut rigs = Vec::new();
    for o in 0..OWNERS {
        let owner = format!("owner{o:03}");
        passwords.push((
            owner.clone(),
            registry.add_owner(&owner, &payout, 1).unwrap(),
        ));
        let claim = registry
            .create_claim(&owner, RIGS_PER_OWNER as u32, u64::MAX / 2)
            .unwrap();
        let mut mine = Vec::new();
        for r in 0..RIGS_PER_OWNER {
            let inventory = Inventory {
                cards: vec![],
                driver: "sim".into(),
                agent_version: "0.1.0".into(),
                receipt_key: PublicKey::P256(vec![2; 33]),
            };
            let key = format!("tls key {o} {r}");
            let claimed = registry
                .claim(&claim.token, key.as_bytes(), &inventory, None, 2, |rig| {
                    Ok::<_, std::convert::Infallible>((
                        format!("cert {rig}"),
                        format!("serial {rig}"),
                    ))
                })
                .unwrap()
                .unwrap();
            mine.push(claimed.record.rig);
        }
        rigs.push(mine);
    }
    Built { passwords, rigs }
}

/// `receipts` rows spread evenly over every rig, its cards and 90 days; one in 50 rejected,
/// one in 10 pending.
fn fill_ledger(path: &std::path::Path, rigs: &[Vec<RigId>], receipts: u64) {
    drop(Ledger::create(path, 3).unwrap());
    let mut db = rusqlite::Connection::open(path).unwrap();
    db.pragma_update(None, "synchronous", "OFF").unwrap();
    let all: Vec<&RigId> = rigs.iter().flatten().collect();
    let per_rig = receipts / all.len() as u64;
    let started = Instant::now();
    for chunk in all.chunks(250) {
        let tx = db.transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO receipts (rig, seq, card, job, unit, attempt, work, state, reason, micros, changed_ms)
                     VALUES (?1, ?2, ?3, 'bench', ?4, 0, 2000000, ?5, ?6, ?7, ?8)",
                )
                .unwrap();
            for rig in chunk {
                for seq in 1..=per_rig {
                    let card = format!("GPU-{}-{}", rig.as_str(), seq % CARDS);
                    let (state, reason, micros) = match seq % 50 {
                        0 => ("rejected", Some("result mismatch"), 0),
                        s if s % 10 == 5 => ("pending", None, 6_000),
                        _ => ("credited", None, 6_000 + seq % 7),
                    };
                    let day = seq * DAYS / per_rig.max(1);
                    let at = day * DAY_MS + seq % DAY_MS;
                    insert
                        .execute(rusqlite::params![
                            rig.as_str(),
                            seq as i64,
                            card,
                            seq as i64,
                            state,
                            reason,
                            micros as i64,
                            at as i64
                        ])
                        .unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    eprintln!(
        "filled {} receipts over {} rigs in {:.1} s",
        per_rig * all.len() as u64,
        all.len(),
        started.elapsed().as_secs_f64()
    );
}

fn timed<T>(n: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let receipts: u64 = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let browser = args.iter().any(|a| a == "--browser");
    let dir = tempfile::tempdir().unwrap();
    let registry_path = dir.path().join("registry.db");
    let ledger_path = dir.path().join("ledger.db");
    let built = build_registry(&registry_path);
    fill_ledger(&ledger_path, &built.rigs, receipts);
    let owner = built.passwords[0].0.clone();

    let store = Store::new(registry_path.clone(), ledger_path.clone(), 8);
    let earnings = store.earnings(&owner).unwrap();
    assert_eq!(earnings.cards.len() as u64, RIGS_PER_OWNER as u64 * CARDS);
    let rollup = timed(20, || store.earnings(&owner).unwrap());
    let disputes = timed(20, || store.disputes(&owner).unwrap());
    let rig_list = timed(20, || store.rigs(&owner).unwrap());

    let app = Arc::new(App {
        store,
        fleet: Mutex::new(Fleet::new(1000)),
        sessions: Mutex::new(Sessions::new(3_600_000, 10_000, 16)),
        limiter: Mutex::new(LoginLimiter::new(Limits::default())),
        alerts: Mutex::new(
            rigd_dashboard::alerts::Alerts::open(&dir.path().join("alerts.db")).unwrap(),
        ),
        allow_private_webhooks: true,
        secure_cookie: false,
        clock: Arc::new(rigd_client::unix_ms),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    // Every owner here connects from 127.0.0.1: the per-address cap is lifted to the load.
    let front = rigd_httpd::Front::plain(rigd_httpd::Limits {
        max_per_ip: 4096,
        request_timeout: Duration::from_secs(120),
        ..rigd_httpd::Limits::default()
    });
    runtime.spawn(rigd_httpd::serve(
        listener,
        http::router(app),
        front,
        stop.clone(),
    ));
    let base = Url::parse(&format!("http://{addr}")).unwrap();
    let bounds = Bounds {
        timeout: Duration::from_secs(120),
        max_body: 16 << 20,
        reach: |_| true,
        agent: "bench",
    };
    let started = Instant::now();
    let (latencies, wall) = runtime.block_on(async {
        let mut tokens = Vec::new();
        for (name, password) in &built.passwords {
            let body = serde_json::json!({ "name": name, "password": password }).to_string();
            let login = Request {
                method: "POST",
                headers: &[],
                json: Some(&body),
            };
            let a = exchange(&base.join("/api/login"), login, bounds)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            tokens.push(v["token"].as_str().unwrap().to_owned());
        }
        let started = Instant::now();
        let tasks: Vec<_> = tokens
            .into_iter()
            .map(|token| {
                let base = base.clone();
                tokio::spawn(async move {
                    let auth = format!("Bearer {token}");
                    let headers = [("authorization", auth.as_str())];
                    let mut out = Vec::new();
                    for _ in 0..ROUNDS {
                        for path in PAGE {
                            let get = Request {
                                method: "GET",
                                headers: &headers,
                                json: None,
                            };
                            let t = Instant::now();
                            let a = exchange(&base.join(path), get, bounds).await.unwrap();
                            assert_eq!(a.status, 200, "{path}");
                            out.push(t.elapsed());
                        }
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        (all, started.elapsed())
    });
    let logins = started.elapsed() - wall;

    println!("| figure | value |");
    println!("|---|---|");
    println!("| ledger | {receipts} receipts, {OWNERS} owners x {RIGS_PER_OWNER} rigs x {CARDS} cards, {DAYS} days |");
    println!(
        "| owner rollup (Store::earnings, 50 rigs, 400 cards, 90 days) p50 / max | {} / {} |",
        ms(percentile(&rollup, 0.5)),
        ms(percentile(&rollup, 1.0))
    );
    println!(
        "| owner disputes (Store::disputes) p50 / max | {} / {} |",
        ms(percentile(&disputes, 0.5)),
        ms(percentile(&disputes, 1.0))
    );
    println!(
        "| owner rigs (Store::rigs) p50 / max | {} / {} |",
        ms(percentile(&rig_list, 0.5)),
        ms(percentile(&rig_list, 1.0))
    );
    println!(
        "| {OWNERS} logins in a row (PBKDF2, 100k iterations each) | {} |",
        ms(logins)
    );
    println!(
        "| API, {OWNERS} owners at once x {ROUNDS} page loads x 5 requests: p50 / p99 / max | {} / {} / {} |",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0))
    );
    println!(
        "| API throughput | {:.0} requests/s |",
        latencies.len() as f64 / wall.as_secs_f64()
    );
    if browser {
        let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
        let out = std::process::Command::new("node")
            .arg(e2e.join("owner.mjs"))
            .arg(format!("http://{addr}/"))
            .arg(&owner)
            .arg(&built.passwords[0].1)
            .arg(dir.path())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        println!("| page, Chromium: first paint | {} ms |", v["paintMs"]);
        println!(
            "| page, Chromium: login to complete data (50 rigs, 400 cards, 90 days) | {} ms |",
            v["loadedMs"]
        );
    }
    stop.cancel();
}
