//! The fleet load generator: N light simulated rigs in this one process against a real
//! mosquitto, the real `coordinator` and the real `rigd-exporter` (release builds of the
//! workspace's binaries, run as processes of their own).
//!
//! Each rig has its own MQTT 5 connection, client id, persistent session, last will and
//! secp256k1 receipt key, and speaks the real protocol through the same session code and
//! reconnect backoff as rigd: retained status, telemetry every `RIGD_LOAD_TELEMETRY_MS`,
//! units taken from the coordinator and run one per card for about `RIGD_LOAD_UNIT_MS`
//! (results computed with the CPU reference kernels), receipts batched every
//! `RIGD_LOAD_BATCH_MS`, signed and published, acks matched by first seq and digest, batches
//! resent after `RIGD_LOAD_RESEND_MS`. `RIGD_LOAD_GARBAGE` of the rigs also publish garbage
//! frames on their receipts and telemetry topics.
//!
//! `RIGD_LOAD_TLS=1` runs the fleet with mutual TLS and the fleet ACL (a CA made by the
//! provisioner's code issues every rig a certificate of its own); `RIGD_LOAD_REPLICAS=N`
//! runs N coordinator replicas on one PostgreSQL ledger (a server the generator starts)
//! instead of one coordinator on SQLite.
//!
//! Phases: ramp (`RIGD_LOAD_RAMP` connections per second), warm-up of one unit time, a
//! measured window of `RIGD_LOAD_SECS`, then (with `RIGD_LOAD_RESTART=1`) a broker restart
//! and the time until every rig is connected again, then a drain in which no new unit is
//! started and every receipt must be acknowledged (within `RIGD_LOAD_DRAIN_S`, 900). It ends with the ledger checked against
//! what the rigs sent (every receipt recorded once, none missing) and prints a table row.
//!
//! `cargo build --release --workspace --bins && RIGD_LOAD_RIGS=1000 cargo bench -p
//! rigd-harness --bench fleet_load`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_client::{Backoff, Lifetime, Reconnect, Session, SessionEvent, SessionSpec};
use rigd_harness::{spawn_logged, wait_until, workspace_bin, Mosquitto};
use rigd_kernels::unit::{compute, work};
use rigd_kernels::CpuKernels;
use rigd_protocol::topics::{self, Channel};
use rigd_protocol::{encode, Ack, ReceiptItem, RigState, UnitAssignment, WorkUnit};
use rigd_testkit::signer::TestRig;
use rigd_testkit::{fixtures, measure};
use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::QoS;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CARDS: u32 = 8;
const UNITS_PER_CARD: u32 = 2;
const DIM: u32 = 16;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone)]
struct Config {
    port: u16,
    unit_ms: u64,
    telemetry_ms: u64,
    batch_ms: u64,
    resend_ms: u64,
}

/// What the rigs did, summed over all of them.
#[derive(Default)]
struct Stats {
    connected: AtomicI64,
    units_received: AtomicU64,
    receipts_made: AtomicU64,
    receipts_acked: AtomicU64,
    batches_sent: AtomicU64,
    resends: AtomicU64,
    garbage_sent: AtomicU64,
    /// Payload bytes the rigs published, by channel (index in `Channel::ALL`), garbage
    /// included.
    bytes_up: [AtomicU64; Channel::ALL.len()],
    /// Payload bytes the rigs received (units, acks, earnings).
    bytes_down: AtomicU64,
    /// Milliseconds from a batch's first publish to its ack, one entry per receipt.
    latencies_ms: Mutex<Vec<u32>>,
    /// Once set, rigs start no new units (the drain).
    draining: AtomicBool,
    /// The last seq each rig used, by rig index.
    last_seq: Mutex<BTreeMap<u32, u64>>,
}

impl Stats {
    /// The byte counters: one per channel published, then the bytes received.
    fn bytes(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .bytes_up
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        all.push(self.bytes_down.load(Ordering::Relaxed));
        all
    }
}

/// A batch sent and not acknowledged yet.
struct Pending {
    digest: rigd_protocol::digest::Hash32,
    receipts: u64,
    first_sent: Instant,
    last_sent: Instant,
    payload: Vec<u8>,
}

struct LightRig {
    index: u32,
    name: String,
    signer: TestRig,
    garbage: bool,
    queue: VecDeque<WorkUnit>,
    /// What each card runs and when it finishes.
    cards: Vec<Option<(Instant, WorkUnit)>>,
    done: Vec<ReceiptItem>,
    pending: BTreeMap<u64, Pending>,
    last_batch: Instant,
    last_telemetry: Instant,
}

impl LightRig {
    fn publish(
        &self,
        session: &Session,
        stats: &Stats,
        channel: Channel,
        retain: bool,
        payload: Vec<u8>,
    ) {
        let at = Channel::ALL.iter().position(|c| *c == channel).unwrap_or(0);
        stats.bytes_up[at].fetch_add(payload.len() as u64, Ordering::Relaxed);
        let topic = topics::rig(&self.signer.id, channel);
        // A full request queue is a lost publish, as for rigd: the resend covers receipts.
        let _ = session
            .client()
            .try_publish(topic, QoS::AtLeastOnce, retain, payload);
    }

    fn announce(&self, session: &Session, stats: &Stats) {
        let status = self.signer.status(CARDS, RigState::Idle);
        self.publish(session, stats, Channel::Status, true, encode(&status));
    }

    fn telemetry(&mut self, session: &Session, stats: &Stats, now: Instant) {
        let mut t = fixtures::telemetry(&self.name, CARDS);
        t.at_ms = rigd_client::unix_ms();
        for (sample, card) in t.gpus.iter_mut().zip(&self.cards) {
            sample.unit = card.as_ref().map(|(_, u)| u.unit);
        }
        self.publish(session, stats, Channel::Telemetry, false, encode(&t));
        self.last_telemetry = now;
    }

    /// Finishes the units whose time is up and starts queued ones on free cards.
    fn run_cards(&mut self, cfg: &Config, stats: &Stats, now: Instant) {
        for card in 0..self.cards.len() {
            if let Some((at, _)) = &self.cards[card] {
                if *at > now {
                    continue;
                }
                let Some((_, unit)) = self.cards[card].take() else {
                    continue;
                };
                let output = compute(&CpuKernels, &unit.kind).expect("reference kernels");
                let mut item = self.signer.receipt(&unit, &output, work(&unit.kind));
                item.receipt.card = fixtures::uuid(&self.name, card as u32);
                self.done.push(item);
                stats.receipts_made.fetch_add(1, Ordering::Relaxed);
            }
            if self.cards[card].is_none() && !stats.draining.load(Ordering::Relaxed) {
                if let Some(unit) = self.queue.pop_front() {
                    // About a unit time each, spread by ±10 % so cards do not finish in step.
                    let spread = cfg.unit_ms / 10;
                    let ms = cfg.unit_ms - spread + rand::random::<u64>() % (2 * spread + 1);
                    self.cards[card] = Some((now + Duration::from_millis(ms), unit));
                }
            }
        }
    }

    fn send_batch(&mut self, session: &Session, stats: &Stats, now: Instant) {
        if self.done.is_empty() {
            return;
        }
        let items = std::mem::take(&mut self.done);
        let receipts = items.len() as u64;
        let batch = self.signer.batch(items);
        let first = batch.header.first_seq;
        let payload = encode(&batch);
        self.publish(session, stats, Channel::Receipts, false, payload.clone());
        stats.batches_sent.fetch_add(1, Ordering::Relaxed);
        self.pending.insert(
            first,
            Pending {
                digest: batch.header.signing_digest(),
                receipts,
                first_sent: now,
                last_sent: now,
                payload,
            },
        );
        self.last_batch = now;
    }

    fn resend(&mut self, session: &Session, cfg: &Config, stats: &Stats, now: Instant) {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_sent).as_millis() as u64 >= cfg.resend_ms)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            if let Some(p) = self.pending.get_mut(&seq) {
                p.last_sent = now;
                let payload = p.payload.clone();
                self.publish(session, stats, Channel::Receipts, false, payload);
                stats.resends.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn garbage(&self, session: &Session, stats: &Stats) {
        let mut junk = vec![0u8; 64 + rand::random::<usize>() % 512];
        junk.iter_mut().for_each(|b| *b = rand::random());
        self.publish(session, stats, Channel::Receipts, false, junk.clone());
        self.publish(session, stats, Channel::Telemetry, false, junk);
        stats.garbage_sent.fetch_add(2, Ordering::Relaxed);
    }

    fn on_message(&mut self, payload: &[u8], stats: &Stats, now: Instant) {
        if let Ok(ack) = rigd_protocol::decode::<Ack>(payload) {
            let mut lat = vec![];
            for b in ack.batches {
                if self
                    .pending
                    .get(&b.first_seq)
                    .is_some_and(|p| p.digest == b.digest)
                {
                    if let Some(p) = self.pending.remove(&b.first_seq) {
                        stats
                            .receipts_acked
                            .fetch_add(p.receipts, Ordering::Relaxed);
                        let ms = now.duration_since(p.first_sent).as_millis() as u32;
                        lat.extend(std::iter::repeat_n(ms, p.receipts as usize));
                    }
                }
            }
            if !lat.is_empty() {
                stats.latencies_ms.lock().unwrap().extend(lat);
            }
        } else if let Ok(a) = rigd_protocol::decode::<UnitAssignment>(payload) {
            stats
                .units_received
                .fetch_add(a.units.len() as u64, Ordering::Relaxed);
            self.queue.extend(a.units);
        }
    }
}

fn rig_name(index: u32) -> String {
    format!("load-{index:05}")
}

async fn run_rig(
    index: u32,
    garbage: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    cfg: Arc<Config>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let name = rig_name(index);
    let signer = TestRig::numbered(&name, index + 1);
    let mut options = rigd_client::options(
        name.clone(),
        "127.0.0.1",
        cfg.port,
        tls,
        Lifetime::Persistent { expiry_s: 3600 },
    );
    options.set_last_will(LastWill::new(
        topics::rig(&signer.id, Channel::Status),
        encode(&signer.status(CARDS, RigState::Offline)),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let subscriptions = [Channel::Units, Channel::Acks, Channel::Earnings]
        .map(|ch| (topics::rig(&signer.id, ch), QoS::AtLeastOnce))
        .to_vec();
    let spec = SessionSpec {
        options,
        subscriptions,
        requests: 64,
        events: 64,
        reconnect: Reconnect::Backoff(Backoff::default()),
    };
    let (session, mut events) = Session::start(spec, stop.clone());
    let now = Instant::now();
    let mut rig = LightRig {
        index,
        name,
        signer,
        garbage,
        queue: VecDeque::new(),
        cards: vec![None; CARDS as usize],
        done: vec![],
        pending: BTreeMap::new(),
        last_batch: now,
        last_telemetry: now,
    };
    let mut connected = false;
    // Rigs tick once a second, each at its own phase.
    let phase = Duration::from_millis(u64::from(index) * 7 % 1000);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            event = events.recv() => match event {
                Some(SessionEvent::Connected { .. }) => {
                    if !connected {
                        stats.connected.fetch_add(1, Ordering::Relaxed);
                        connected = true;
                    }
                    rig.announce(&session, &stats);
                }
                Some(SessionEvent::Disconnected { .. }) => {
                    if connected {
                        stats.connected.fetch_sub(1, Ordering::Relaxed);
                        connected = false;
                    }
                }
                Some(SessionEvent::Message(p)) => {
                    stats.bytes_down.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                    rig.on_message(&p.payload, &stats, Instant::now());
                }
                Some(_) => {}
                None => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                rig.run_cards(&cfg, &stats, now);
                if now.duration_since(rig.last_batch).as_millis() as u64 >= cfg.batch_ms {
                    rig.send_batch(&session, &stats, now);
                }
                rig.resend(&session, &cfg, &stats, now);
                if now.duration_since(rig.last_telemetry).as_millis() as u64 >= cfg.telemetry_ms {
                    rig.telemetry(&session, &stats, now);
                }
                if rig.garbage {
                    rig.garbage(&session, &stats);
                }
            }
        }
    }
    stats
        .last_seq
        .lock()
        .unwrap()
        .insert(rig.index, rig.signer.next_seq - 1);
}

/// CPU seconds and RSS in MiB of a process (zero for what cannot be read).
fn cpu_rss(pid: u32) -> (f64, f64) {
    (
        measure::cpu_seconds(pid).unwrap_or(0.0),
        measure::rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
    )
}

fn main() {
    let rigs = env("RIGD_LOAD_RIGS", 1_000) as u32;
    let secs = env("RIGD_LOAD_SECS", 120);
    let ramp = env("RIGD_LOAD_RAMP", 500).max(1);
    let garbage = env("RIGD_LOAD_GARBAGE", u64::from(rigs / 100)) as u32;
    let restart = env("RIGD_LOAD_RESTART", 1) == 1;
    let replicas = env("RIGD_LOAD_REPLICAS", 1).max(1);
    let pki = (env("RIGD_LOAD_TLS", 0) == 1).then(rigd_harness::tls::Pki::create);
    let mut broker = match &pki {
        Some(pki) => rigd_harness::mosquitto_tls(&pki.ca_dir()),
        None => Mosquitto::start(),
    };
    // Each rig's own certificate, issued before the ramp.
    let issued = Instant::now();
    let rig_tls: Vec<Option<Arc<rustls::ClientConfig>>> = (0..rigs)
        .map(|i| {
            pki.as_ref().map(|pki| {
                rigd_client::client_config_from_files(&pki.client(&rig_name(i))).expect("rig TLS")
            })
        })
        .collect();
    if pki.is_some() {
        eprintln!(
            "{rigs} rig certificates issued in {:.1} s",
            issued.elapsed().as_secs_f64()
        );
    }
    let tls_args = |cn: &str| -> Vec<String> {
        pki.as_ref()
            .map_or(vec![], |pki| rigd_harness::tls::args(&pki.client(cn)))
    };
    let cfg = Arc::new(Config {
        port: broker.port,
        unit_ms: env("RIGD_LOAD_UNIT_MS", 60_000),
        telemetry_ms: env("RIGD_LOAD_TELEMETRY_MS", 10_000),
        batch_ms: env("RIGD_LOAD_BATCH_MS", 5_000),
        resend_ms: env("RIGD_LOAD_RESEND_MS", 30_000),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let ramp_secs = u64::from(rigs) / ramp + 1;
    let total_ms = (ramp_secs + secs) * 1000 + 2 * cfg.unit_ms;
    let units =
        u64::from(rigs) * u64::from(CARDS) * (total_ms / cfg.unit_ms + UNITS_PER_CARD as u64 + 1);
    let database = (replicas > 1).then(rigd_testkit::postgres::Postgres::start);
    let ledger_at = match &database {
        Some(pg) => rigd_coordinator::ledger::Location::parse(&pg.url()),
        None => rigd_coordinator::ledger::Location::File(dir.path().join("ledger.db")),
    };
    let coordinator_tls = tls_args("fleet:coordinator");
    let logs: Vec<std::path::PathBuf> = (0..replicas)
        .map(|i| dir.path().join(format!("coordinator-{i}.log")))
        .collect();
    let mut coordinators: Vec<std::process::Child> = logs
        .iter()
        .map(|log| {
            let mut c = std::process::Command::new(workspace_bin("coordinator"));
            c.args(["--broker", &format!("127.0.0.1:{}", broker.port)])
                .args(["--db", &rigd_harness::ledger_arg(&ledger_at)])
                .args(&coordinator_tls)
                .args([
                    "--job",
                    "gemm",
                    "--job-id",
                    "load",
                    "--units",
                    &units.to_string(),
                ])
                .args(["--mnk", &format!("{DIM},{DIM},{DIM}")])
                .args(["--units-per-card", &UNITS_PER_CARD.to_string()])
                .args(["--lease-ms", &(cfg.unit_ms * 4).to_string()])
                .args(["--verify-fraction", "0.05"])
                .env(
                    "RUST_LOG",
                    "warn,rigd_coordinator::mqtt=info,rigd_coordinator::replica=info",
                );
            let child = spawn_logged(c, log);
            // The first one leads: the others start once it does.
            wait_until("the coordinator up", 60, || {
                std::fs::read_to_string(log).is_ok_and(|l| {
                    l.contains("leads the job") || l.contains("checking receipt batches")
                })
            });
            child
        })
        .collect();
    let exporter_port = rigd_harness::free_port();
    let mut exporter = spawn_logged(
        {
            let mut c = std::process::Command::new(workspace_bin("rigd-exporter"));
            c.args(["--broker", &format!("127.0.0.1:{}", broker.port)])
                .args(["--listen", &format!("127.0.0.1:{exporter_port}")])
                .args(tls_args("fleet:exporter"))
                .env("RUST_LOG", "warn");
            c
        },
        &dir.path().join("exporter.log"),
    );
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut tasks = vec![];
    let started = Instant::now();
    for i in 0..rigs {
        let due = started + Duration::from_secs_f64(f64::from(i) / ramp as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        tasks.push(runtime.spawn(run_rig(
            i,
            i < garbage,
            rig_tls[i as usize].clone(),
            cfg.clone(),
            stats.clone(),
            stop.clone(),
        )));
    }
    wait_until("every rig connected", 600, || {
        stats.connected.load(Ordering::Relaxed) == i64::from(rigs)
    });
    let ramp_time = started.elapsed();
    eprintln!(
        "{rigs} rigs connected in {:.1} s; warming up",
        ramp_time.as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(cfg.unit_ms + cfg.batch_ms));

    let coordinators_cpu_rss = |children: &[std::process::Child]| {
        children
            .iter()
            .map(|c| cpu_rss(c.id()))
            .fold((0.0, 0.0), |(c, r), (c1, r1)| (c + c1, r + r1))
    };
    let (c0, _) = coordinators_cpu_rss(&coordinators);
    let (b0, _) = cpu_rss(broker.pid());
    let (e0, _) = cpu_rss(exporter.id());
    let (l0, _) = cpu_rss(std::process::id());
    let acked0 = stats.receipts_acked.load(Ordering::Relaxed);
    let made0 = stats.receipts_made.load(Ordering::Relaxed);
    let bytes0 = stats.bytes();
    stats.latencies_ms.lock().unwrap().clear();
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let elapsed = window.elapsed().as_secs_f64();
    let acked = stats.receipts_acked.load(Ordering::Relaxed) - acked0;
    let made_in_window = stats.receipts_made.load(Ordering::Relaxed) - made0;
    let bytes1 = stats.bytes();
    let (c1, c_rss) = coordinators_cpu_rss(&coordinators);
    let (b1, b_rss) = cpu_rss(broker.pid());
    let (e1, e_rss) = cpu_rss(exporter.id());
    let (l1, l_rss) = cpu_rss(std::process::id());
    let mut lat = std::mem::take(&mut *stats.latencies_ms.lock().unwrap());
    lat.sort_unstable();
    let scrape = Instant::now();
    let metrics = rigd_testkit::prometheus::http_get(exporter_port, "/metrics");
    let scrape_ms = scrape.elapsed().as_millis();
    let series = metrics.as_ref().map_or(0, |(_, body)| {
        body.lines()
            .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_TEMP{"))
            .count()
    });

    let reconnect = restart.then(|| {
        broker.restart();
        let t = wait_until("every rig back after the broker restart", 600, || {
            stats.connected.load(Ordering::Relaxed) == i64::from(rigs)
        });
        eprintln!(
            "broker restarted; every rig back in {:.2} s",
            t.as_secs_f64()
        );
        t
    });

    eprintln!("draining");
    stats.draining.store(true, Ordering::Relaxed);
    let drain_started = Instant::now();
    // Units already running finish within 1.1 unit times, and their batch goes out after
    // `batch_ms`; after that every receipt made must come to be acknowledged.
    let settle = Duration::from_millis(cfg.unit_ms * 11 / 10 + cfg.batch_ms + 2_000);
    // A drain past `RIGD_LOAD_DRAIN_S` is reported (with the engine's own account of the
    // run) and fails the run at its end.
    let drain_limit = Duration::from_secs(env("RIGD_LOAD_DRAIN_S", 900));
    let drained = loop {
        if drain_started.elapsed() > settle
            && stats.receipts_made.load(Ordering::Relaxed)
                == stats.receipts_acked.load(Ordering::Relaxed)
        {
            break true;
        }
        if drain_started.elapsed() > drain_limit {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let drain = drain_started.elapsed();
    let coordinator_alive = coordinators
        .iter_mut()
        .all(|c| c.try_wait().ok().flatten().is_none());
    let exporter_alive = exporter.try_wait().ok().flatten().is_none()
        && rigd_testkit::prometheus::http_get(exporter_port, "/metrics")
            .is_some_and(|(code, _)| code == 200);
    stop.cancel();
    for t in tasks {
        let _ = runtime.block_on(t);
    }

    // The ledger against what the rigs sent: every seq of every rig recorded once.
    let ledger = rigd_coordinator::Ledger::open_at(&ledger_at).expect("ledger");
    let last_seq = stats.last_seq.lock().unwrap().clone();
    let mut missing = 0u64;
    let mut extra = 0u64;
    for (index, last) in &last_seq {
        let rig = fixtures::rig_id(&rig_name(*index));
        let seqs = ledger.recorded_seqs(&rig).expect("recorded seqs");
        let expected: Vec<u64> = (1..=*last).collect();
        if seqs != expected {
            let got: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
            missing += (1..=*last).filter(|s| !got.contains(s)).count() as u64;
            extra += got.iter().filter(|s| **s == 0 || **s > *last).count() as u64;
            extra += (seqs.len() - got.len()) as u64;
        }
    }
    let job = rigd_protocol::JobId::new("load").expect("job id");
    let credited = ledger.credited_units(&job).expect("credited");
    let twice = credited.iter().filter(|(_, n)| *n > 1).count();
    let made = stats.receipts_made.load(Ordering::Relaxed);
    for c in &mut coordinators {
        let _ = c.kill();
    }
    let _ = exporter.kill();

    println!(
        "| rigs x cards | receipts credited/s | latency p50 / p99 | coordinator CPU / RSS | broker CPU / RSS | exporter CPU / RSS | loadgen CPU / RSS | scrape | lost | reconnect after broker restart |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {rigs} x {CARDS} | {:.1} | {} / {} ms | {:.0} % / {:.0} MiB | {:.0} % / {:.0} MiB | {:.0} % / {:.0} MiB | {:.0} % / {:.0} MiB | {scrape_ms} ms, {series} cards | {} | {} |",
        acked as f64 / elapsed,
        measure::percentile(&lat, 0.5).unwrap_or(0),
        measure::percentile(&lat, 0.99).unwrap_or(0),
        (c1 - c0) / elapsed * 100.0,
        c_rss,
        (b1 - b0) / elapsed * 100.0,
        b_rss,
        (e1 - e0) / elapsed * 100.0,
        e_rss,
        (l1 - l0) / elapsed * 100.0,
        l_rss,
        missing,
        reconnect.map_or("-".to_string(), |t| format!("{:.2} s", t.as_secs_f64())),
    );
    // The engine's own account, every 10 s of the run: groups, time handling and committing;
    // and each other replica's batches checked.
    for (i, log) in logs.iter().enumerate() {
        if let Ok(log) = std::fs::read_to_string(log) {
            for line in log
                .lines()
                .filter(|l| l.contains("coordinator load") || l.contains("replica load"))
            {
                println!("replica {i}: {line}");
            }
        }
    }
    println!(
        "over the window: receipts made {:.1}/s, acknowledged {:.1}/s",
        made_in_window as f64 / elapsed,
        acked as f64 / elapsed,
    );
    println!(
        "receipts made {made}, acknowledged {}, units received {}, batches {}, resends {}, garbage frames {}, units credited {} (twice: {twice}), seqs missing {missing}, extra {extra}, drain {:.1} s (finished: {drained}), coordinator alive {coordinator_alive}, exporter alive {exporter_alive}",
        stats.receipts_acked.load(Ordering::Relaxed),
        stats.units_received.load(Ordering::Relaxed),
        stats.batches_sent.load(Ordering::Relaxed),
        stats.resends.load(Ordering::Relaxed),
        stats.garbage_sent.load(Ordering::Relaxed),
        credited.len(),
        drain.as_secs_f64(),
    );
    let per_rig_s = |i: usize| (bytes1[i] - bytes0[i]) as f64 / elapsed / f64::from(rigs);
    let up: Vec<String> = Channel::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| bytes1[*i] > bytes0[*i])
        .map(|(i, c)| format!("{} {:.1}", c.as_str(), per_rig_s(i)))
        .collect();
    println!(
        "payload bytes per rig per second over the window: up {}; down {:.1}",
        up.join(", "),
        per_rig_s(Channel::ALL.len()),
    );
    assert!(
        coordinator_alive && exporter_alive,
        "a fleet-side process stopped"
    );
    assert!(
        drained,
        "receipts still unacknowledged after the drain's {} s",
        drain_limit.as_secs()
    );
    assert_eq!((missing, extra), (0, 0), "receipts lost or recorded twice");
    assert_eq!(twice, 0, "a unit credited twice");
}
