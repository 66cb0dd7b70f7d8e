//! Zero-touch provisioning end to end: real mosquitto with mutual TLS and the fleet ACL, a
//! real `rig-provisioner serve`, real rigd processes claiming identities with a claim token,
//! `rigctl` creating claims and revoking rigs.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`), as `./test.sh` does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigd_harness::tls::{
    create_claim, create_claim_expiring, options_with_signer, provision_conf, provisioned_id,
    rigctl, ProvisioningFleet, OPERATOR_KEY_HEX,
};
use rigd_harness::{wait_job_done, wait_until, Coordinator, RigProcess};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use std::path::Path;
use std::sync::Arc;

/// The provisioning fleet, with the rig helpers of these tests.
struct Fleet(ProvisioningFleet);

impl std::ops::Deref for Fleet {
    type Target = ProvisioningFleet;
    fn deref(&self) -> &ProvisioningFleet {
        &self.0
    }
}

impl std::ops::DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut ProvisioningFleet {
        &mut self.0
    }
}

impl Fleet {
    fn start() -> Fleet {
        Fleet(ProvisioningFleet::start())
    }

    fn start_for(domain: rigd_protocol::Domain) -> Fleet {
        Fleet(ProvisioningFleet::start_for(Some(domain)))
    }

    fn rig(&self, name: &str, token: &str) -> RigProcess {
        self.rig_env(name, token, &[])
    }

    /// A rig whose first start has the extra environment variables `env`.
    fn rig_env(&self, name: &str, token: &str, env: &[(&str, &str)]) -> RigProcess {
        let dir = self.work.path().join(name);
        let conf =
            RigProcess::base_conf(self.broker.port, 1, &dir, &provision_conf(&self.pki, token));
        RigProcess::start_conf_env(name, &dir, &conf, env)
    }

    /// Uses left on the claims of `owner`, from the registry.
    fn uses_left(&self, owner: &str) -> Vec<i64> {
        let db = rusqlite::Connection::open_with_flags(
            self.provisioner.dir.join("registry.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut st = db
            .prepare("SELECT uses_left FROM claims WHERE owner = ?1")
            .unwrap();
        st.query_map([owner], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

/// PKCS#8 v2 of the Ed25519 key whose public half is `OPERATOR_KEY_HEX` (RFC 8032, test 1).
const OPERATOR_PKCS8_HEX: &str = concat!(
    "3053020101300506032b657004220420",
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "a123032100",
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
);

/// The persisted provisioning state of a rig, as JSON text.
fn state(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("provision.json")).unwrap_or_default()
}

/// The `elapsed_ms` of rigd's "provisioned: ready" line.
fn ready_ms(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("provisioned: ready"))?;
    let rest = line.split("elapsed_ms=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_fresh_rig_with_a_claim_token_provisions_itself_and_works() {
    // The fleet's deployment, granted at provisioning: the coordinator credits nothing
    // else, so the job completes only if the rig signs for what it was granted (its
    // rig.conf names no domain, so it would sign for the local development chain).
    let deployment = rigd_protocol::Domain::new(8453, rigd_protocol::EthAddress([0x5e; 20]));
    let fleet = Fleet::start_for(deployment);
    let token = create_claim(&fleet.pki, fleet.broker.port, "alice", 1);
    let coordinator_tls = fleet.pki.client("fleet:coordinator");
    let coord = Coordinator::gemm(fleet.broker.port, fleet.work.path(), 8, 16, |c| {
        c.tls = Some(coordinator_tls.clone());
        c.domains = vec![deployment];
    });
    let mut rig = fleet.rig("fresh", &token);
    wait_until("the rig is provisioned", 30, || {
        provisioned_id(&rig.dir).is_some()
    });
    rig.rig = provisioned_id(&rig.dir).unwrap();
    wait_job_done(&coord, 8, &[&rig], 60);
    coord.assert_exactly_once(8, &[&rig]);
    let rigs = fleet.provisioner.rigs();
    assert_eq!(rigs.len(), 1, "{rigs:?}");
    assert_eq!(
        (rigs[0].0.as_str(), rigs[0].1.as_str()),
        (rig.rig.as_str(), "alice")
    );
    // The operator keys granted are kept with the identity.
    let kept: serde_json::Value = serde_json::from_str(&state(&rig.dir)).unwrap();
    assert_eq!(
        kept["Provisioned"]["domain"]["chain_id"], 8453,
        "the granted domain is kept with the identity: {kept}"
    );
    let keys = rigd::claim::operator_keys(&rigd::state_dir::StateDir::new(&rig.dir)).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(hex::encode(keys[0]), OPERATOR_KEY_HEX);
    // The operator those keys belong to commands the rig over mTLS and the fleet ACL: the
    // rig trusts the key it was granted at provisioning (its rig.conf lists none).
    let key_file = fleet.work.path().join("operator.key");
    std::fs::write(&key_file, hex::decode(OPERATOR_PKCS8_HEX).unwrap()).unwrap();
    let (code, out) = rigctl(
        &fleet.pki,
        fleet.broker.port,
        &[
            "--json",
            "diag",
            &rig.rig,
            "--operator-key",
            &key_file.display().to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{}", rig.log());
    assert!(out.contains("\"diagnostics\""), "{out}");
    let ms = ready_ms(&rig.log()).expect("ready line with elapsed_ms");
    println!("first connect to ready: {ms} ms (loopback, debug build)");
    assert!(rig.alive(), "{}", rig.log());
}

#[test]
fn provisioning_completes_after_kill_9_of_the_provisioner_or_the_rig() {
    let mut fleet = Fleet::start();
    let first = create_claim(&fleet.pki, fleet.broker.port, "alice", 1);
    let second = create_claim(&fleet.pki, fleet.broker.port, "bob", 1);

    // The provisioner dies before the rig claims: the rig retries until it is back.
    fleet.provisioner.kill9();
    let a = fleet.rig("a", &first);
    wait_until("a claim attempt without an answer", 20, || {
        a.log().contains("claim got no answer")
    });
    fleet.provisioner.restart();
    fleet.provisioner.wait_serving(2);
    wait_until("rig a provisioned", 30, || provisioned_id(&a.dir).is_some());

    // The rig dies the moment the provisioner has recorded it (its answer may or may not
    // have arrived): on restart it gets the same identity, though its one-use claim is
    // spent, and no second rig or certificate exists.
    let mut b = fleet.rig("b", &second);
    wait_until("rig b recorded", 30, || fleet.provisioner.rigs().len() == 2);
    b.kill9();
    let recorded = fleet.provisioner.rigs();
    b.restart();
    wait_until("rig b provisioned", 30, || provisioned_id(&b.dir).is_some());
    let b_id = provisioned_id(&b.dir).unwrap();
    assert_eq!(
        fleet.provisioner.rigs(),
        recorded,
        "no duplicate rig or certificate"
    );
    assert!(recorded.iter().any(|r| r.0 == b_id && r.1 == "bob"));
    // The rig writes its certificate for the link right after recording its identity.
    wait_until("rig b's certificate", 10, || {
        b.dir.join("rig-cert.pem").exists()
    });
    let cert = std::fs::read_to_string(b.dir.join("rig-cert.pem")).unwrap();
    assert_eq!(cert.matches("BEGIN CERTIFICATE").count(), 2, "rig + CA");
}

#[test]
fn used_up_expired_and_revoked_claims_and_revoked_rigs_are_refused() {
    let fleet = Fleet::start();
    let port = fleet.broker.port;
    let expiring = create_claim_expiring(&fleet.pki, port, "carol", 5, "1s");
    let expired_at = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let token = create_claim(&fleet.pki, port, "alice", 1);
    let a = fleet.rig("a", &token);
    wait_until("rig a provisioned", 30, || provisioned_id(&a.dir).is_some());
    let a_id = provisioned_id(&a.dir).unwrap();

    // The one use is spent: another rig is refused.
    let b = fleet.rig("b", &token);
    wait_until("rig b refused: used up", 30, || {
        state(&b.dir).contains("UsedUp")
    });

    // A revoked claim is refused.
    let revoked = create_claim(&fleet.pki, port, "alice", 5);
    let (code, out) = rigctl(&fleet.pki, port, &["claims", "revoke", &revoked]);
    assert_eq!(code, 0, "{out}");
    let c = fleet.rig("c", &revoked);
    wait_until("rig c refused: revoked claim", 30, || {
        state(&c.dir).contains("\"Revoked\"")
    });
    // An unknown claim too.
    let d = fleet.rig("d", "rc_not-a-claim");
    wait_until("rig d refused: unknown claim", 30, || {
        state(&d.dir).contains("UnknownClaim")
    });
    // An expired claim too, though it has uses left: the rig gets no identity.
    std::thread::sleep(expired_at.saturating_duration_since(std::time::Instant::now()));
    let e = fleet.rig("e", &expiring);
    wait_until("rig e refused: expired claim", 30, || {
        state(&e.dir).contains("Expired")
    });
    assert!(e.log().contains("claim refused"), "{}", e.log());
    assert_eq!(provisioned_id(&e.dir), None);
    assert!(!e.dir.join("rig-cert.pem").exists());
    assert!(fleet.provisioner.rigs().iter().all(|r| r.1 != "carol"));
    assert_eq!(fleet.uses_left("carol"), vec![5]);

    // Rig a's key and certificate get in before revocation and not after.
    let key: Arc<dyn rigd::keys::KeyStore> =
        Arc::from(rigd::keys::open("file:receipt-key?curve=p256", &a.dir, true).unwrap());
    let signer = Arc::new(rigd::tls::StoreSigner(key)) as Arc<dyn rigd_client::DigestSigner>;
    let cert = a.dir.join("rig-cert.pem");
    let connect = |id: &str| {
        let opts = options_with_signer(id, port, &fleet.pki.ca_cert(), &cert, signer.clone());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(rigd_harness::tls::connect(opts))
            .is_ok()
    };
    assert!(
        connect("probe-1"),
        "rig a's identity works before revocation"
    );
    // A connection of rig a that stays open across the revocation.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let open = options_with_signer(
        "probe-open",
        port,
        &fleet.pki.ca_cert(),
        &cert,
        signer.clone(),
    );
    let (client, mut events) = rt.block_on(rigd_harness::tls::connect(open)).unwrap();
    let (code, out) = rigctl(&fleet.pki, port, &["rigs", "revoke", &a_id]);
    assert_eq!(code, 0, "{out}");
    let (_, listed) = rigctl(&fleet.pki, port, &["rigs", "registry"]);
    assert!(listed.contains("revoked"), "{listed}");
    wait_until("the broker refuses the revoked rig", 10, || {
        !connect("probe-2")
    });
    // The open connection is cut off from its topics by the reloaded ACL.
    let own = format!("rigd/v1/rig/{a_id}/receipts");
    let reason = rt.block_on(async {
        client
            .publish(own, QoS::AtLeastOnce, false, "after revocation")
            .await
            .unwrap();
        rigd_harness::tls::next(&mut events, |p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await
    });
    assert_eq!(reason, Ok(PubAckReason::NotAuthorized));
    drop(client);
    // rigd of rig a, started again, is refused by the broker: it records the revocation,
    // says so in its systemd status line and exits 4 (which systemd does not restart).
    let mut a = a;
    a.kill9();
    let notify_path = a.dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    a.start_again_env(&[("NOTIFY_SOCKET", &notify_path.display().to_string())]);
    assert_eq!(a.exit_code(30), Some(4), "{}", a.log());
    let mut buf = vec![0u8; 4096];
    let mut lines = vec![];
    while let Ok(n) = notify.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let last = lines.iter().rev().find(|l| l.contains("STATUS=")).cloned();
    assert!(
        last.as_deref()
            .is_some_and(|l| l.contains("STATUS=stopped: revoked by the fleet")),
        "{lines:?}"
    );
    let log = a.log();
    assert!(
        log.contains("the broker refused this rig's certificate as revoked"),
        "{log}"
    );
    assert!(state(&a.dir).contains("\"Revoked\""), "{}", state(&a.dir));
    // And stays revoked: it no longer tries to connect.
    a.start_again();
    assert_eq!(a.exit_code(30), Some(4), "{}", a.log());
}

#[test]
fn malformed_and_oversized_claims_are_refused_and_the_provisioner_keeps_serving() {
    use rigd_protocol::claim::{reply_topic, ClaimResponse, Refusal, CLAIM_TOPIC};
    let fleet = Fleet::start();
    let claim = fleet.pki.client("fleet:claim");
    let ask = |payload: Vec<u8>| {
        let id = format!("claim-{}", hex::encode(rand::random::<[u8; 8]>()));
        let opts = rigd_harness::tls::options(&id, fleet.broker.port, &claim);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(rigd_client::request(
                opts,
                CLAIM_TOPIC,
                &reply_topic(&id),
                payload,
                std::time::Duration::from_secs(3),
            ))
    };
    for garbage in [
        vec![],
        vec![1, 10],
        vec![1, 10, 0xff, 0xff, 0xff],
        b"{}".to_vec(),
    ] {
        let answer = ask(garbage).expect("an answer");
        let decoded: ClaimResponse = rigd_protocol::decode(&answer).unwrap();
        assert!(
            matches!(
                decoded,
                ClaimResponse::Refused {
                    reason: Refusal::Malformed,
                    ..
                }
            ),
            "{decoded:?}"
        );
    }
    // Over the broker's packet limit: the claimant is cut off by the broker.
    assert!(ask(vec![0; rigd_protocol::MAX_FRAME_BYTES + 16 * 1024]).is_err());
    // The provisioner still serves a good claim.
    let token = create_claim(&fleet.pki, fleet.broker.port, "alice", 1);
    let a = fleet.rig("a", &token);
    wait_until("rig a provisioned", 30, || provisioned_id(&a.dir).is_some());
}

/// The serial of the first certificate in `path`, hex, as the registry keeps it.
fn leaf_serial(path: &Path) -> String {
    let chain = rigd_client::load_certs(path).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    hex::encode(cert.raw_serial())
}

#[test]
fn kill_9_of_the_provisioner_while_it_handles_queued_claims_leaves_one_rig_and_one_certificate() {
    let mut fleet = Fleet::start();
    let token = create_claim(&fleet.pki, fleet.broker.port, "alice", 1);
    // With the provisioner down the rig's claims wait in the provisioner's persistent
    // session on the broker; each restart receives them at once, and is killed 0, 3, 6, ...
    // ms after it connects: before, during and after handling them.
    fleet.provisioner.kill9();
    let rig = fleet.rig("r", &token);
    wait_until("two claims without an answer", 20, || {
        rig.log().matches("claim got no answer").count() >= 2
    });
    let mut starts = 1;
    for round in 0..10u64 {
        fleet.provisioner.restart();
        starts += 1;
        fleet.provisioner.wait_serving(starts);
        std::thread::sleep(std::time::Duration::from_millis(3 * round));
        fleet.provisioner.kill9();
    }
    fleet.provisioner.restart();
    wait_until("the rig is provisioned", 30, || {
        provisioned_id(&rig.dir).is_some() && rig.dir.join("rig-cert.pem").exists()
    });
    let rigs = fleet.provisioner.rigs();
    assert_eq!(rigs.len(), 1, "one rig: {rigs:?}");
    assert_eq!(Some(rigs[0].0.clone()), provisioned_id(&rig.dir));
    assert_eq!(
        rigs[0].3,
        leaf_serial(&rig.dir.join("rig-cert.pem")),
        "the rig holds the one certificate the registry recorded"
    );
}

/// Steps at which `RIGD_TEST_CRASH_AT` aborts rigd (see `rigd::claim::TEST_CRASH_ENV`).
const RIG_CRASH_STEPS: [&str; 3] = ["claiming", "answered", "provisioned"];
/// Steps at which `RIG_PROVISIONER_TEST_CRASH_AT` aborts the provisioner.
const PROVISIONER_CRASH_STEPS: [&str; 2] = ["issued", "recorded"];

#[test]
fn provisioning_completes_after_a_crash_of_the_rig_or_the_provisioner_at_every_step() {
    let mut fleet = Fleet::start();
    let mut serving = 1;
    let mut crashes = 0;
    let steps = RIG_CRASH_STEPS
        .iter()
        .map(|s| (true, *s))
        .chain(PROVISIONER_CRASH_STEPS.iter().map(|s| (false, *s)));
    for (rig_crashes, step) in steps {
        let owner = format!("owner-{step}");
        let token = create_claim(&fleet.pki, fleet.broker.port, &owner, 1);
        let mut rig = if rig_crashes {
            let mut rig = fleet.rig_env(
                &format!("rig-{step}"),
                &token,
                &[("RIGD_TEST_CRASH_AT", step)],
            );
            assert!(
                rig.wait_exit(30),
                "rigd did not crash at {step}: {}",
                rig.log()
            );
            assert!(
                rig.log().contains("RIGD_TEST_CRASH_AT: aborting"),
                "{}",
                rig.log()
            );
            rig.start_again();
            rig
        } else {
            fleet
                .provisioner
                .restart_env(&[("RIG_PROVISIONER_TEST_CRASH_AT", step)]);
            serving += 1;
            fleet.provisioner.wait_serving(serving);
            let rig = fleet.rig(&format!("rig-{step}"), &token);
            assert!(
                fleet.provisioner.wait_exit(30),
                "the provisioner did not crash at {step}: {}",
                fleet.provisioner.log()
            );
            crashes += 1;
            assert_eq!(
                fleet
                    .provisioner
                    .log()
                    .matches("RIG_PROVISIONER_TEST_CRASH_AT: aborting")
                    .count(),
                crashes,
                "{step}"
            );
            fleet.provisioner.restart();
            serving += 1;
            fleet.provisioner.wait_serving(serving);
            rig
        };
        wait_until(
            &format!("rig provisioned after a crash at {step}"),
            30,
            || {
                provisioned_id(&rig.dir).is_some()
                    && rig.log().matches("connected to broker").count() >= 1
            },
        );
        let id = provisioned_id(&rig.dir).unwrap();
        assert!(rig.alive(), "{step}: {}", rig.log());
        let of_owner: Vec<_> = fleet
            .provisioner
            .rigs()
            .into_iter()
            .filter(|r| r.1 == owner)
            .collect();
        assert_eq!(
            of_owner.len(),
            1,
            "{step}: one rig for the claim: {of_owner:?}"
        );
        assert_eq!(of_owner[0].0, id, "{step}");
        assert_eq!(
            of_owner[0].3,
            leaf_serial(&rig.dir.join("rig-cert.pem")),
            "{step}: the rig holds the one certificate the registry recorded"
        );
        assert_eq!(
            fleet.uses_left(&owner),
            vec![0],
            "{step}: the claim is spent once"
        );
        rig.kill9();
    }
}
