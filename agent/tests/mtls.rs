//! The fleet broker with mutual TLS and the per-identity ACL, on a real mosquitto configured
//! by `rig-provisioner broker-config`: a rig is confined to its own topics, clients without a
//! fleet certificate are refused, and a rig whose TLS key stays in its key store works end
//! to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigd_harness::tls::{connect, next, options, options_with_signer, options_without_cert, Pki};
use rigd_harness::{mosquitto_tls, wait_job_done, Coordinator, RigProcess};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use std::sync::Arc;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn suback(p: &Packet) -> Option<Vec<SubscribeReasonCode>> {
    match p {
        Packet::SubAck(a) => Some(a.return_codes.clone()),
        _ => None,
    }
}

fn puback(p: &Packet) -> Option<PubAckReason> {
    match p {
        Packet::PubAck(a) => Some(a.reason),
        _ => None,
    }
}

#[test]
fn a_rig_can_neither_publish_nor_subscribe_under_another_rigs_topics() {
    let pki = Pki::create();
    let broker = mosquitto_tls(&pki.ca_dir());
    let coordinator = pki.client("fleet:coordinator");
    let rig_a = pki.client("rig-a");
    runtime().block_on(async {
        let (coord, mut coord_loop) = connect(options("coord", broker.port, &coordinator))
            .await
            .expect("coordinator connects");
        // As the coordinator's replicas subscribe: one shared subscription.
        coord
            .subscribe(rigd_protocol::topics::shared_receipts(), QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(
            next(&mut coord_loop, suback).await.unwrap(),
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );

        // The client id is chosen by the client: calling itself rig-b changes nothing, the
        // certificate's name decides.
        let (a, mut a_loop) = connect(options("rig-b", broker.port, &rig_a))
            .await
            .expect("rig-a connects");
        // mosquitto 2.0.11 grants subscriptions whatever the ACL says (SUBACK success) and
        // applies the read ACL to every message it would deliver: what matters is that
        // nothing of another rig ever arrives.
        for filter in [
            "rigd/v1/rig/rig-b/units",
            "rigd/v1/rig/+/units",
            "rigd/v1/rig/rig-a/units",
        ] {
            a.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
            next(&mut a_loop, suback).await.unwrap();
        }
        coord
            .publish("rigd/v1/rig/rig-b/units", QoS::AtLeastOnce, false, "for b")
            .await
            .unwrap();
        coord
            .publish("rigd/v1/rig/rig-a/units", QoS::AtLeastOnce, false, "for a")
            .await
            .unwrap();
        for _ in 0..2 {
            assert_eq!(
                next(&mut coord_loop, puback).await.unwrap(),
                PubAckReason::Success
            );
        }
        let delivered = next(&mut a_loop, |p| match p {
            Packet::Publish(p) => Some((
                String::from_utf8_lossy(&p.topic).into_owned(),
                p.payload.to_vec(),
            )),
            _ => None,
        })
        .await
        .unwrap();
        assert_eq!(
            delivered,
            ("rigd/v1/rig/rig-a/units".to_owned(), b"for a".to_vec()),
            "the first message rig-a receives is its own, not rig-b's"
        );

        // Neither under another rig nor as a replica of the coordinator forwarding a batch
        // it checked.
        for topic in [
            "rigd/v1/rig/rig-b/receipts",
            "rigd/v1/coordinator/checked/rig-a/p256:02",
        ] {
            a.publish(topic, QoS::AtLeastOnce, false, "forged")
                .await
                .unwrap();
            assert_eq!(
                next(&mut a_loop, puback).await.unwrap(),
                PubAckReason::NotAuthorized,
                "publishing on {topic}"
            );
        }
        a.publish("rigd/v1/rig/rig-a/receipts", QoS::AtLeastOnce, false, "own")
            .await
            .unwrap();
        assert_eq!(
            next(&mut a_loop, puback).await.unwrap(),
            PubAckReason::Success
        );

        // The coordinator sees the rig's own receipt and never the forged one.
        let first = next(&mut coord_loop, |p| match p {
            Packet::Publish(p) => Some(String::from_utf8_lossy(&p.topic).into_owned()),
            _ => None,
        })
        .await
        .unwrap();
        assert_eq!(first, "rigd/v1/rig/rig-a/receipts");
    });
}

#[test]
fn clients_without_a_fleet_certificate_are_refused() {
    let pki = Pki::create();
    let broker = mosquitto_tls(&pki.ca_dir());
    let other = Pki::create();
    let stranger = other.client("rig-a");
    runtime().block_on(async {
        let no_cert = connect(options_without_cert("x", broker.port, &pki.ca_cert())).await;
        assert!(no_cert.is_err(), "a client without a certificate got in");
        let mut other_ca = stranger.clone();
        other_ca.ca = pki.ca_cert();
        let foreign = connect(options("y", broker.port, &other_ca)).await;
        assert!(foreign.is_err(), "a certificate of another CA got in");
        let mut plain = rumqttc::v5::MqttOptions::new("z", "127.0.0.1", broker.port);
        plain.set_keep_alive(std::time::Duration::from_secs(5));
        assert!(connect(plain).await.is_err(), "plain TCP got in");
        // The fleet's own certificate does get in: the refusals are about the certificate.
        assert!(connect(options("w", broker.port, &pki.client("rig-a")))
            .await
            .is_ok());
    });
}

/// A software P-256 key behind the same trait the rig uses, to prove the broker checks the
/// handshake signature: a certificate for one key with another key signing is refused.
#[test]
fn a_handshake_signed_by_a_key_other_than_the_certificates_is_refused() {
    let pki = Pki::create();
    let broker = mosquitto_tls(&pki.ca_dir());
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| -> Arc<dyn rigd::keys::KeyStore> {
        Arc::from(rigd::keys::open(&format!("file:{name}?curve=p256"), dir.path(), true).unwrap())
    };
    let (right, wrong) = (open("right"), open("wrong"));
    let rigd_protocol::PublicKey::P256(sec1) = right.public_key() else {
        panic!("P-256 key expected")
    };
    let cert = pki.cert_for("rig-k", &sec1);
    runtime().block_on(async {
        let signer = |k: &Arc<dyn rigd::keys::KeyStore>| {
            Arc::new(rigd::tls::StoreSigner(k.clone())) as Arc<dyn rigd_client::DigestSigner>
        };
        let ok = options_with_signer("a", broker.port, &pki.ca_cert(), &cert, signer(&right));
        assert!(connect(ok).await.is_ok(), "the key store's own key");
        let bad = options_with_signer("b", broker.port, &pki.ca_cert(), &cert, signer(&wrong));
        assert!(connect(bad).await.is_err(), "another key got in");
    });
}

#[test]
fn a_rig_works_end_to_end_over_mutual_tls_with_its_tls_key_in_the_key_store() {
    let pki = Pki::create();
    let broker = mosquitto_tls(&pki.ca_dir());
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("rig-m");
    let tls_conf = pki.rig_tls_conf("rig-m", &state);
    let coordinator_tls = pki.client("fleet:coordinator");
    let coord = Coordinator::gemm(broker.port, work.path(), 12, 16, |c| {
        c.tls = Some(coordinator_tls.clone());
    });
    let mut rig = RigProcess::start("rig-m", broker.port, 2, &state, &tls_conf);
    wait_job_done(&coord, 12, &[&rig], 60);
    coord.assert_exactly_once(12, &[&rig]);
    assert!(rig.alive(), "rigd exited: {}", rig.log());
    assert!(
        rig.log().contains("mutual TLS to the broker"),
        "{}",
        rig.log()
    );
}
