//! The dashboard's API on a real listener, over a real registry and ledger: what each owner
//! sees, that nobody sees another owner's rigs by any path, and that hostile requests are
//! refused while the service keeps serving. The clock is the test's own, so sessions expire
//! and login limits lift by construction.

use rigd_coordinator::ledger::{
    BatchRecord, Entry, Ledger, ReceiptState, Refused, DAY_MS, FORFEITED,
};
use rigd_coordinator::statement::StatementKey;
use rigd_coordinator::verify::Rejection;
use rigd_dashboard::auth::{Limits, LoginLimiter, Sessions};
use rigd_dashboard::data::Store;
use rigd_dashboard::http::{self, App};
use rigd_exporter::fleet::Fleet;
use rigd_protocol::claim::Inventory;
use rigd_protocol::{
    encode, topics, Domain, EthAddress, JobId, PublicKey, Receipt, RefusalReason, RigId,
};
use rigd_provisioning::registry::Registry;
use rigd_testkit::fixtures;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

const TTL_MS: u64 = 3_600_000;
/// Every API path that answers with the session owner's own data.
const OWNER_PATHS: [&str; 5] = [
    "/api/rigs",
    "/api/earnings",
    "/api/disputes",
    "/api/statements",
    "/api/me",
];
const NOW: u64 = 40 * DAY_MS;

struct Fixture {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    clock: Arc<AtomicU64>,
    ledger: Ledger,
    passwords: Vec<(String, String)>,
    rigs: Vec<(String, RigId)>,
    stop: CancellationToken,
    _runtime: tokio::runtime::Runtime,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Owners alice (two rigs) and bob (one rig), receipts over several days on every rig, one
/// rejected on recompute, one forfeited, a refused run after a key change; alice's first rig
/// is online with telemetry, the others were never heard.
fn fixture() -> Fixture {
    let dir = ok(tempfile::tempdir());
    let registry_path = dir.path().join("registry.db");
    let ledger_path = dir.path().join("ledger.db");
    let mut registry = ok(Registry::open(&registry_path));
    let payout = ok(EthAddress::parse(
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    ));
    let mut passwords = Vec::new();
    let mut rigs = Vec::new();
    for (owner, count) in [("alice", 2), ("bob", 1)] {
        passwords.push((owner.to_owned(), ok(registry.add_owner(owner, &payout, 1))));
        let claim = ok(registry.create_claim(owner, 10, u64::MAX / 2));
        for i in 0..count {
            let inventory = Inventory {
                cards: vec![],
                driver: "sim".into(),
                agent_version: "0.1.0".into(),
                receipt_key: PublicKey::P256(vec![2; 33]),
            };
            let key = format!("tls key of {owner} {i}");
            let claimed =
                ok(
                    registry.claim(&claim.token, key.as_bytes(), &inventory, None, 2, |rig| {
                        Ok::<_, std::convert::Infallible>((
                            format!("cert {rig}"),
                            format!("serial {rig}"),
                        ))
                    }),
                );
            let claimed = claimed.unwrap_or_else(|r| panic!("{r:?}"));
            rigs.push((owner.to_owned(), claimed.record.rig));
        }
    }
    let mut ledger = ok(Ledger::create(&ledger_path, 3));
    for (n, (_, rig)) in rigs.iter().enumerate() {
        let receipts: Vec<Receipt> = (1..=30)
            .map(|s| fixtures::receipt(rig.as_str(), s, "job-a", s, (s % 2) as u32))
            .collect();
        for (day, chunk) in receipts.chunks(10).enumerate() {
            let entries = chunk
                .iter()
                .map(|r| {
                    let rejected = r.seq == 7 && n == 0;
                    Entry {
                        receipt: r,
                        state: if rejected {
                            ReceiptState::Rejected
                        } else if r.seq % 4 == 0 {
                            ReceiptState::Pending
                        } else {
                            ReceiptState::Credited
                        },
                        reason: rejected.then_some(Rejection::ResultMismatch.reason()),
                        micros: if rejected {
                            0
                        } else {
                            1_000 * r.seq + n as u64
                        },
                    }
                })
                .collect();
            let refused = if day == 2 && n == 0 {
                vec![Refused {
                    first_seq: 31,
                    last_seq: 40,
                    reason: RefusalReason::KeyChanged.as_str(),
                }]
            } else {
                vec![]
            };
            let batch = BatchRecord {
                entries,
                refused,
                ..BatchRecord::default()
            };
            ok(ledger.record_batch(rig, &batch, (37 + day as u64) * DAY_MS + 5));
        }
    }
    let job = ok(JobId::new("job-a"));
    let forfeit = BatchRecord {
        forfeit: Some((&job, 39 * DAY_MS)),
        ..BatchRecord::default()
    };
    let bobs = &rigs[2].1;
    ok(ledger.record_batch(bobs, &forfeit, 39 * DAY_MS + 100));
    // Epoch 0 paid Alice's first rig its first day, and is posted; epoch 1, for Bob's rig, is
    // built but not posted yet, so it has paid nothing.
    let alices = &rigs[0].1;
    let first_day = ok(ledger.payable(38 * DAY_MS));
    let alice_paid = std::collections::BTreeMap::from([(alices.clone(), first_day[alices])]);
    ok(ledger.build_epoch(0, 38 * DAY_MS, [1; 32], &alice_paid, &[]));
    ok(ledger.mark_posted(0, "0x01"));
    let bob_owed = std::collections::BTreeMap::from([(bobs.clone(), 1)]);
    ok(ledger.build_epoch(1, 38 * DAY_MS, [2; 32], &bob_owed, &[]));
    // The payout run's credit statements as of the first day's end.
    let key_file = dir.path().join("statement.key");
    ok(std::fs::write(&key_file, format!("0x{}", "5a".repeat(32))));
    let key = ok(StatementKey::open(&key_file));
    let domain = Domain::new(31337, EthAddress([0x99; 20]));
    let signed: Vec<_> = ok(ledger.all_credited_before(38 * DAY_MS))
        .into_iter()
        .map(|s| ok(key.sign(s, &domain)))
        .collect();
    ok(ledger.record_statements(&signed));

    let mut fleet = Fleet::new(100);
    let alices = &rigs[0].1;
    let mut status = fixtures::status(alices.as_str(), 1);
    status.cards[0].name = "RTX <b>3090</b>".into();
    ok(fleet.apply(
        &topics::rig(alices, topics::Channel::Status),
        &encode(&status),
        NOW,
    ));
    ok(fleet.apply(
        &topics::rig(alices, topics::Channel::Telemetry),
        &encode(&fixtures::telemetry(alices.as_str(), 1)),
        NOW - 100,
    ));

    let clock = Arc::new(AtomicU64::new(NOW));
    let now = clock.clone();
    let app = Arc::new(App {
        store: Store::new(registry_path, ledger_path.clone(), 4),
        fleet: Mutex::new(fleet),
        sessions: Mutex::new(Sessions::new(TTL_MS, 100, 4)),
        limiter: Mutex::new(LoginLimiter::new(Limits::default())),
        alerts: Mutex::new(ok(rigd_dashboard::alerts::Alerts::open(
            &dir.path().join("alerts.db"),
        ))),
        allow_private_webhooks: true,
        secure_cookie: true,
        clock: Arc::new(move || now.load(Ordering::SeqCst)),
    });
    let runtime = ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build());
    let listener = ok(runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")));
    let addr = ok(listener.local_addr());
    let stop = CancellationToken::new();
    runtime.spawn(rigd_httpd::serve(
        listener,
        http::router(app),
        rigd_httpd::Front::default(),
        stop.clone(),
    ));
    Fixture {
        _dir: dir,
        addr,
        clock,
        ledger: ok(Ledger::open(&ledger_path)),
        passwords,
        rigs,
        stop,
        _runtime: runtime,
    }
}

struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Sends `raw` as it is and reads the whole answer (the request asks to close).
fn raw(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = ok(TcpStream::connect(addr));
    ok(s.write_all(raw));
    let mut out = Vec::new();
    ok(s.read_to_end(&mut out));
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Answer {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: dash\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    raw(addr, req.as_bytes())
}

fn login(f: &Fixture, name: &str, password: &str) -> Answer {
    let body = serde_json::json!({ "name": name, "password": password }).to_string();
    request(
        f.addr,
        "POST",
        "/api/login",
        &["Content-Type: application/json"],
        &body,
    )
}

fn token_of(f: &Fixture, owner: &str) -> String {
    let pw = &f
        .passwords
        .iter()
        .find(|(o, _)| o == owner)
        .unwrap_or_else(|| panic!("no owner {owner}"))
        .1;
    let a = login(f, owner, pw);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token"))
        .to_owned()
}

fn get(f: &Fixture, path: &str, token: &str) -> Answer {
    let auth = format!("Authorization: Bearer {token}");
    request(f.addr, "GET", path, &[&auth], "")
}

fn rigs_of<'a>(f: &'a Fixture, owner: &str) -> Vec<&'a RigId> {
    f.rigs
        .iter()
        .filter(|(o, _)| o == owner)
        .map(|(_, r)| r)
        .collect()
}

#[test]
fn each_owner_sees_exactly_their_rigs_and_earnings_equal_to_the_ledger() {
    let f = fixture();
    for owner in ["alice", "bob"] {
        let token = token_of(&f, owner);
        let mine = rigs_of(&f, owner);

        let rigs = get(&f, "/api/rigs", &token).json();
        let mut listed: Vec<String> = rigs["rigs"]
            .as_array()
            .unwrap_or_else(|| panic!("{rigs}"))
            .iter()
            .map(|r| r["rig"].as_str().unwrap_or_default().to_owned())
            .collect();
        listed.sort();
        let mut expected: Vec<String> = mine.iter().map(|r| r.to_string()).collect();
        expected.sort();
        assert_eq!(listed, expected, "{owner}");

        let earnings = get(&f, "/api/earnings", &token).json();
        let (mut credited, mut pending, mut rejected) = (0u64, 0u64, 0u64);
        for rig in &mine {
            let e = ok(f.ledger.earnings(rig));
            let t = e.total();
            credited += t.credited_micros;
            pending += t.pending_micros;
            rejected += t.rejected_units;
        }
        assert!(credited > 0, "{owner}");
        let total = &earnings["total"];
        assert_eq!(total["credited_micros"], credited, "{owner}: {earnings}");
        assert_eq!(total["pending_micros"], pending, "{owner}: {earnings}");
        assert_eq!(total["rejected"], rejected, "{owner}: {earnings}");
        let paid: u64 = mine.iter().map(|r| ok(f.ledger.paid(r))).sum();
        assert_eq!(
            paid > 0,
            owner == "alice",
            "{owner}: only posted epochs pay"
        );
        assert_eq!(total["paid_micros"], paid, "{owner}");
        assert_eq!(total["payable_micros"], credited - paid, "{owner}");
        let days = earnings["days"]
            .as_array()
            .unwrap_or_else(|| panic!("{earnings}"));
        let by_day: u64 = days
            .iter()
            .map(|d| d["credited_micros"].as_u64().unwrap_or_default())
            .sum();
        assert_eq!(by_day, credited, "{owner}");
        assert_eq!(days.len(), 3, "{owner}: three days of receipts");
        for card in earnings["cards"]
            .as_array()
            .unwrap_or_else(|| panic!("{earnings}"))
        {
            let rig = card["rig"].as_str().unwrap_or_default();
            assert!(mine.iter().any(|r| r.as_str() == rig), "{owner} sees {rig}");
        }
    }
    // Alice's first rig is online with its card's readings; her second was never heard.
    let token = token_of(&f, "alice");
    let rigs = get(&f, "/api/rigs", &token).json();
    let first = f.rigs[0].1.to_string();
    let rig = rigs["rigs"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["rig"] == first.as_str()))
        .unwrap_or_else(|| panic!("{rigs}"));
    assert_eq!(rig["online"], true);
    assert_eq!(rig["state"], "working");
    let card = &rig["cards"][0];
    assert_eq!(card["core_c"], 76.5);
    assert_eq!(card["mem_c"], 88.2);
    assert_eq!(card["power_w"], 331);
    assert_eq!(card["governor_level"], 1);
    assert_eq!(card["state"], "busy");
    let second = f.rigs[1].1.to_string();
    let rig = rigs["rigs"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["rig"] == second.as_str()))
        .unwrap_or_else(|| panic!("{rigs}"));
    assert_eq!(rig["online"], false);
    let me = get(&f, "/api/me", &token).json();
    assert_eq!(me["payout"], "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed");
    assert_eq!(me["rigs"], 2);
}

#[test]
fn disputes_carry_their_reasons_in_words() {
    let f = fixture();
    let alice = token_of(&f, "alice");
    let d = get(&f, "/api/disputes", &alice).json();
    let rejected = d["rejected"].as_array().unwrap_or_else(|| panic!("{d}"));
    assert_eq!(rejected.len(), 1, "{d}");
    assert_eq!(rejected[0]["reason"], "result mismatch");
    assert_eq!(rejected[0]["seq"], 7);
    assert!(rejected[0]["explanation"]
        .as_str()
        .is_some_and(|e| e.contains("recomputed")));
    let refused = d["refused"].as_array().unwrap_or_else(|| panic!("{d}"));
    assert_eq!(refused.len(), 1, "{d}");
    assert_eq!(refused[0]["reason"], "key changed");
    assert_eq!(refused[0]["first_seq"], 31);
    assert_eq!(refused[0]["last_seq"], 40);
    assert!(refused[0]["explanation"]
        .as_str()
        .is_some_and(|e| e.contains("different key")));

    let bob = token_of(&f, "bob");
    let d = get(&f, "/api/disputes", &bob).json();
    let forfeited = d["rejected"].as_array().unwrap_or_else(|| panic!("{d}"));
    assert!(!forfeited.is_empty(), "{d}");
    assert!(forfeited.iter().all(|r| r["reason"] == FORFEITED), "{d}");
    assert!(d["refused"].as_array().is_some_and(|r| r.is_empty()), "{d}");

    let rig = &f.rigs[0].1;
    let page = get(&f, &format!("/api/rigs/{rig}/receipts?limit=5"), &alice).json();
    let seqs: Vec<u64> = page["receipts"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![30, 29, 28, 27, 26]);
    let page = get(
        &f,
        &format!("/api/rigs/{rig}/receipts?before=8&rejected=true"),
        &alice,
    )
    .json();
    assert_eq!(page["receipts"][0]["seq"], 7, "{page}");
}

#[test]
fn each_owner_gets_the_networks_credit_statements_of_its_own_rigs() {
    let f = fixture();
    for (owner, count) in [("alice", 2), ("bob", 1)] {
        let token = token_of(&f, owner);
        let body = get(&f, "/api/statements", &token).json();
        let list = body["statements"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"));
        assert_eq!(list.len(), count, "{body}");
        for s in list {
            let rig = ok(RigId::new(s["rig"].as_str().unwrap_or_default()));
            assert!(
                f.rigs.iter().any(|(o, r)| o == owner && *r == rig),
                "{owner} got {rig}"
            );
            let credited = ok(f.ledger.credited_before(&rig, 38 * DAY_MS));
            let credited = credited.unwrap_or_else(|| panic!("{rig} credited nothing"));
            assert_eq!(s["credited_total"], credited.credited_total, "{s}");
            assert_eq!(s["last_seq"], credited.last_seq, "{s}");
            assert_eq!(s["before_ms"], 38 * DAY_MS, "{s}");
            assert_eq!(s["chain_id"], 31337, "{s}");
            assert_eq!(s["contract"], EthAddress([0x99; 20]).to_string(), "{s}");
            let sig = s["signature"].as_str().unwrap_or_default();
            assert_eq!(sig.len(), 2 + 65 * 2, "{s}");
        }
    }
}

#[test]
fn another_owners_rigs_are_refused_by_every_path() {
    let f = fixture();
    let alice = token_of(&f, "alice");
    let bob = token_of(&f, "bob");
    let bobs = &f.rigs[2].1;
    let alices = &f.rigs[0].1;
    let foreign = format!("/api/rigs/{bobs}/receipts");
    let missing = "/api/rigs/rig-0000000000000000/receipts";
    let a = get(&f, &foreign, &alice);
    let b = get(&f, missing, &alice);
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(
        (a.status, a.body.clone()),
        (b.status, b.body),
        "a foreign rig reads as a missing one"
    );
    assert_eq!(get(&f, &foreign, &bob).status, 200);
    assert_eq!(
        get(&f, &format!("/api/rigs/{alices}/receipts"), &bob).status,
        404
    );
    for path in OWNER_PATHS {
        let body = get(&f, path, &alice).body;
        assert!(
            !body.contains(bobs.as_str()),
            "{path} shows bob's rig to alice"
        );
        let body = get(&f, path, &bob).body;
        assert!(
            !body.contains(alices.as_str()),
            "{path} shows alice's rig to bob"
        );
    }

    let forged = "0".repeat(64);
    for path in OWNER_PATHS.into_iter().chain([foreign.as_str()]) {
        let none = request(f.addr, "GET", path, &[], "");
        assert_eq!(none.status, 401, "{path} without a session");
        assert_eq!(
            get(&f, path, &forged).status,
            401,
            "{path} with a forged token"
        );
        assert_eq!(get(&f, path, "not-a-token").status, 401, "{path}");
    }

    // Alert settings and incidents are per owner.
    let set = request(
        f.addr,
        "PUT",
        "/api/alerts",
        &[
            "Content-Type: application/json",
            &format!("Authorization: Bearer {alice}"),
        ],
        r#"{"url":"https://hooks.example.net/alice","offline_after_s":60}"#,
    );
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.json()["secret"].as_str().map(str::len), Some(64));
    let mine = get(&f, "/api/alerts", &alice).json();
    assert_eq!(mine["settings"]["url"], "https://hooks.example.net/alice");
    let theirs = get(&f, "/api/alerts", &bob);
    assert!(!theirs.body.contains("alice"), "{}", theirs.body);
    assert_eq!(theirs.json()["settings"], Value::Null);

    // The cookie works like the bearer token, and logging out ends the session.
    let cookie = format!("Cookie: theme=dark; rigd_session={alice}");
    assert_eq!(
        request(f.addr, "GET", "/api/me", &[&cookie], "").status,
        200
    );
    let out = request(f.addr, "POST", "/api/logout", &[&cookie], "");
    assert_eq!(out.status, 200);
    assert!(out
        .header("set-cookie")
        .is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(
        request(f.addr, "GET", "/api/me", &[&cookie], "").status,
        401
    );

    // Sessions expire: one second before the end it works, at the end it does not.
    let bob_login = login(&f, "bob", &f.passwords[1].1);
    let cookie = bob_login.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Secure"),
        "{cookie}"
    );
    let fresh = bob_login.json()["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    f.clock.store(NOW + TTL_MS - 1, Ordering::SeqCst);
    assert_eq!(get(&f, "/api/me", &fresh).status, 200);
    f.clock.store(NOW + TTL_MS, Ordering::SeqCst);
    assert_eq!(get(&f, "/api/me", &fresh).status, 401, "expired");
    assert_eq!(get(&f, &foreign, &bob).status, 401, "expired");
}

#[test]
fn failed_logins_are_limited_per_name_and_lift_after_the_window() {
    let f = fixture();
    let pw = f.passwords[0].1.clone();
    assert_eq!(login(&f, "alice", "wrong").status, 401);
    assert_eq!(
        login(&f, "nobody", &pw).status,
        401,
        "an unknown name reads like a wrong password"
    );
    for _ in 1..Limits::default().per_name {
        assert_eq!(login(&f, "alice", "wrong").status, 401);
    }
    let locked = login(&f, "alice", &pw);
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert_eq!(
        login(&f, "bob", &f.passwords[1].1).status,
        200,
        "another name is not locked"
    );
    f.clock
        .store(NOW + Limits::default().window_ms, Ordering::SeqCst);
    assert_eq!(login(&f, "alice", &pw).status, 200);
}

#[test]
fn hostile_requests_are_refused_and_the_service_keeps_serving() {
    let f = fixture();
    let alice = token_of(&f, "alice");
    let json = "Content-Type: application/json";
    let cases: Vec<(&str, Answer, u16)> = vec![
        (
            "not json",
            request(f.addr, "POST", "/api/login", &[json], "{name:"),
            400,
        ),
        (
            "wrong content type",
            request(
                f.addr,
                "POST",
                "/api/login",
                &["Content-Type: text/plain"],
                r#"{"name":"a","password":"b"}"#,
            ),
            415,
        ),
        (
            "no content type",
            request(
                f.addr,
                "POST",
                "/api/login",
                &[],
                r#"{"name":"a","password":"b"}"#,
            ),
            415,
        ),
        (
            "unknown field",
            request(
                f.addr,
                "POST",
                "/api/login",
                &[json],
                r#"{"name":"a","password":"b","admin":true}"#,
            ),
            422,
        ),
        (
            "wrong types",
            request(
                f.addr,
                "POST",
                "/api/login",
                &[json],
                r#"{"name":1,"password":[]}"#,
            ),
            422,
        ),
        (
            "oversized body",
            request(
                f.addr,
                "POST",
                "/api/login",
                &[json],
                &format!(r#"{{"name":"{}","password":"b"}}"#, "a".repeat(8192)),
            ),
            413,
        ),
        (
            "long name",
            request(
                f.addr,
                "POST",
                "/api/login",
                &[json],
                &format!(r#"{{"name":"{}","password":"b"}}"#, "a".repeat(200)),
            ),
            422,
        ),
        (
            "sql in the name",
            login(&f, "alice' OR '1'='1", "x' OR '1'='1"),
            401,
        ),
        (
            "script in the name",
            login(&f, "<script>alert(1)</script>", "<img src=x>"),
            401,
        ),
        (
            "get on login",
            request(f.addr, "GET", "/api/login", &[], ""),
            405,
        ),
        (
            "bad query",
            get(
                &f,
                &format!("/api/rigs/{}/receipts?limit=-1", f.rigs[0].1),
                &alice,
            ),
            400,
        ),
        (
            "unknown query",
            get(
                &f,
                &format!("/api/rigs/{}/receipts?x=1", f.rigs[0].1),
                &alice,
            ),
            400,
        ),
        (
            "script in the path",
            get(&f, "/api/rigs/%3Cscript%3E/receipts", &alice),
            404,
        ),
        (
            "sql in the path",
            get(&f, "/api/rigs/rig-1'%20OR%201=1--/receipts", &alice),
            404,
        ),
        ("unknown path", get(&f, "/etc/passwd", &alice), 404),
        (
            "garbage",
            raw(f.addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n"),
            400,
        ),
        (
            "bad header",
            raw(
                f.addr,
                b"GET /api/me HTTP/1.1\r\nHost: x\r\nBad Header\r\nConnection: close\r\n\r\n",
            ),
            400,
        ),
    ];
    let auth = format!("Authorization: Bearer {alice}");
    let put = |body: &str| request(f.addr, "PUT", "/api/alerts", &[json, &auth], body);
    let cases: Vec<(&str, Answer, u16)> = cases
        .into_iter()
        .chain([
            (
                "webhook not http",
                put(r#"{"url":"javascript:alert(1)","offline_after_s":60}"#),
                422,
            ),
            (
                "webhook with credentials",
                put(r#"{"url":"http://u:p@h/","offline_after_s":60}"#),
                422,
            ),
            (
                "delay zero",
                put(r#"{"url":"https://h.example/","offline_after_s":0}"#),
                422,
            ),
            (
                "delay over a week",
                put(r#"{"url":"https://h.example/","offline_after_s":999999999}"#),
                422,
            ),
            (
                "alerts without a session",
                request(
                    f.addr,
                    "PUT",
                    "/api/alerts",
                    &[json],
                    r#"{"url":"https://h.example/","offline_after_s":60}"#,
                ),
                401,
            ),
        ])
        .collect();
    for (what, answer, status) in &cases {
        assert_eq!(answer.status, *status, "{what}: {}", answer.body);
        assert!(
            !answer.body.contains("<script>"),
            "{what} reflects markup: {}",
            answer.body
        );
        if let Some(ct) = answer.header("content-type") {
            assert!(!ct.contains("html"), "{what}: {ct}");
        }
    }
    // Every answer of the service carries the page's policy.
    let page = request(f.addr, "GET", "/", &[], "");
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(!page.body.contains("innerHTML"));
    let script = request(f.addr, "GET", "/app.js", &[], "");
    assert!(!script.body.contains("innerHTML") && !script.body.contains("eval("));
    // And it still answers.
    assert_eq!(get(&f, "/api/earnings", &alice).status, 200);
    // Markup from a rig's own status reaches the owner as data in JSON, never as markup.
    let rigs = get(&f, "/api/rigs", &alice);
    assert!(
        rigs.body.contains(r#""name":"RTX <b>3090</b>""#),
        "{}",
        rigs.body
    );
    assert!(rigs
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
}
