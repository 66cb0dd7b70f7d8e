//! Provisioning throughput: N simulated rigs (real P-256 keys, real CSRs) claim identities at
//! once through one mosquitto with mutual TLS and the fleet ACL, served by one provisioner.
//! Prints a table of time per claim (first connect to answer) and rigs provisioned per
//! second.
//!
//! `cargo bench -p rigd-provisioning --bench claims [-- RIGS]` (default 100; needs
//! mosquitto installed).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_client::{ClientIdentity, TlsFiles};
use rigd_protocol::claim::{reply_topic, ClaimRequest, ClaimResponse, Inventory, CLAIM_TOPIC};
use rigd_protocol::{decode, encode, EthAddress, PublicKey};
use rigd_provisioning::broker::{self, BrokerSettings};
use rigd_provisioning::ca::{Ca, Role};
use rigd_provisioning::provisioner::Provisioner;
use rigd_provisioning::registry::Registry;
use rigd_provisioning::service::{self, ServiceSettings};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn client(ca: &Ca, dir: &Path, cn: &str) -> TlsFiles {
    let issued = ca.issue(cn, Role::Client, &[]).unwrap();
    let stem = cn.replace(':', "_");
    let (cert, key) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}-key.pem")),
    );
    std::fs::write(&cert, issued.cert_pem).unwrap();
    std::fs::write(&key, issued.key_pem.unwrap()).unwrap();
    TlsFiles {
        ca: ca.cert_path(),
        cert,
        key: Some(key),
    }
}

fn mosquitto(ca: &Ca, dir: &Path) -> (Child, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let settings = BrokerSettings {
        bind: "127.0.0.1".into(),
        port,
        hosts: vec!["127.0.0.1".into()],
        persistence_dir: None,
        run_as: "root".into(),
    };
    let conf = broker::write(ca, &settings, &[], &dir.join("broker")).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto installed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// A ClaimRequest frame for a fresh P-256 key.
fn request(token: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    encode(&ClaimRequest {
        token: token.into(),
        tls_key: key.public_key_raw().to_vec(),
        csr_der: csr.der().to_vec(),
        inventory: Inventory {
            cards: vec![],
            driver: "sim".into(),
            agent_version: "bench".into(),
            receipt_key: PublicKey::P256(key.public_key_raw().to_vec()),
        },
        rekey: None,
    })
}

async fn claim(port: u16, claim: &TlsFiles, token: &str) -> Duration {
    let request = request(token);
    let id = format!("claim-{}", hex::encode(rand::random::<[u8; 16]>()));
    let tls = rigd_client::client_config(
        &claim.ca,
        ClientIdentity::KeyFile {
            cert: claim.cert.clone(),
            key: claim.key.clone().unwrap(),
        },
    )
    .unwrap();
    let opts = rigd_client::options(
        id.clone(),
        "127.0.0.1",
        port,
        Some(tls),
        rigd_client::Lifetime::Fresh,
    );
    let start = Instant::now();
    let answer = rigd_client::request(
        opts,
        CLAIM_TOPIC,
        &reply_topic(&id),
        request,
        Duration::from_secs(60),
    )
    .await
    .expect("an answer");
    let took = start.elapsed();
    match decode::<ClaimResponse>(&answer).unwrap() {
        ClaimResponse::Granted(_) => took,
        r => panic!("refused: {r:?}"),
    }
}

fn main() {
    let rigs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca"), "bench CA").unwrap();
    let (mut broker, port) = mosquitto(&ca, dir.path());
    let claim_tls = client(&ca, dir.path(), "fleet:claim");
    let prov_tls = client(&ca, dir.path(), "fleet:provisioner");
    let mut registry = Registry::open(&dir.path().join("registry.db")).unwrap();
    for owner in ["bench", "warm"] {
        registry.add_owner(owner, &EthAddress([1; 20]), 0).unwrap();
    }
    let token = registry
        .create_claim("bench", rigs as u32, u64::MAX / 2)
        .unwrap()
        .token;
    // The provisioner's own work per claim (CSR check, certificate, one SQLite transaction
    // with fsync), without the broker.
    let core = {
        let d = tempfile::tempdir().unwrap();
        let mut r = Registry::open(&d.path().join("r.db")).unwrap();
        r.add_owner("core", &EthAddress([1; 20]), 0).unwrap();
        let t = r.create_claim("core", 50, u64::MAX / 2).unwrap().token;
        let mut p = Provisioner::new(
            Ca::load(&dir.path().join("ca")).unwrap(),
            r,
            vec![],
            None,
            None,
        )
        .unwrap();
        let requests: Vec<_> = (0..50).map(|_| request(&t)).collect();
        let start = Instant::now();
        for req in &requests {
            assert!(matches!(p.claim(req, 0).0, ClaimResponse::Granted(_)));
        }
        start.elapsed() / 50
    };
    let provisioner = Provisioner::new(
        Ca::load(&dir.path().join("ca")).unwrap(),
        registry,
        vec![],
        None,
        None,
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    let settings = ServiceSettings {
        host: "127.0.0.1".into(),
        port,
        tls: Some(rigd_client::client_config_from_files(&prov_tls).unwrap()),
        reload_command: None,
    };
    runtime.spawn(service::serve(settings, provisioner, stop.clone()));
    // One claim first, so the provisioner is connected and subscribed before timing.
    let warm_token = {
        let mut r = Registry::open(&dir.path().join("registry.db")).unwrap();
        r.create_claim("warm", 1, u64::MAX / 2).unwrap().token
    };
    runtime.block_on(claim(port, &claim_tls, &warm_token));

    let start = Instant::now();
    let mut times: Vec<Duration> = runtime.block_on(async {
        let tasks: Vec<_> = (0..rigs)
            .map(|_| {
                let (c, t) = (claim_tls.clone(), token.clone());
                tokio::spawn(async move { claim(port, &c, &t).await })
            })
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let wall = start.elapsed();
    stop.cancel();
    let _ = broker.kill();
    let _ = broker.wait();
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("| concurrent claims | p50 per rig (ms) | p99 per rig (ms) | max (ms) | wall (s) | rigs/s | provisioner work per claim (ms) |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {rigs} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} | {:.2} |",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(pct(1.0)),
        wall.as_secs_f64(),
        rigs as f64 / wall.as_secs_f64(),
        ms(core)
    );
}
