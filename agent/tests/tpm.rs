//! Receipts signed by a TPM-held key (a real swtpm), end to end.
#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_harness::{wait_job_done, workspace_bin, Coordinator, Mosquitto, RigProcess};
use rigd_protocol::topics::{self, Channel};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::time::Duration;

/// The payload of the first receipt batch `rig` publishes, read from the broker.
fn first_batch(port: u16, rig: &str) -> Vec<u8> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut opts = MqttOptions::new("batch-reader", "127.0.0.1", port);
        opts.set_max_packet_size(Some(4 << 20));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let rig = rigd_protocol::RigId::new(rig).unwrap();
        client
            .subscribe(topics::rig(&rig, Channel::Receipts), QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(Event::Incoming(Packet::Publish(p))) = eventloop.poll().await {
                    return p.payload.to_vec();
                }
            }
        })
        .await
        .unwrap()
    })
}

#[test]
fn a_rig_signing_with_a_tpm_key_gets_every_receipt_verified_and_credited() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let tpm_state = tempfile::tempdir().unwrap();
    let tpm = rigd_harness::swtpm::Swtpm::start(tpm_state.path());
    let units = 40;
    let coordinator = Coordinator::gemm(broker.port, dir.path(), units, 32, |c| {
        c.verify_fraction = 0.2;
    });
    let key = format!("key = \"tpm:{}\"\n", tpm.rest());
    let reader = {
        let port = broker.port;
        std::thread::spawn(move || first_batch(port, "rig-tpm"))
    };
    let rig = RigProcess::start("rig-tpm", broker.port, 2, &dir.path().join("r"), &key);
    let batch = dir.path().join("batch.bin");
    std::fs::write(&batch, reader.join().unwrap()).unwrap();
    let out = std::process::Command::new(workspace_bin("rigctl"))
        .args([
            "--broker",
            &format!("127.0.0.1:{}", broker.port),
            "receipts",
            "verify",
        ])
        .arg(&batch)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("key: p256:") && text.contains("  ok"),
        "{text}"
    );
    wait_job_done(&coordinator, units, &[&rig], 60);
    coordinator.assert_exactly_once(units, &[&rig]);
    let log = rig.log();
    assert!(log.contains("tpm P-256 handle 0x81010001"), "{log}");
    assert!(!log.contains("SOFTWARE key"), "{log}");
}

/// The job `rigd-devnet` runs (MLP training until the held-out loss reaches 0.15), by two
/// rigd processes whose receipts are signed in their own swtpm.
#[test]
fn the_devnet_mlp_job_signed_in_tpms_reaches_its_loss_and_every_receipt_is_credited_once() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::mlp(broker.port, dir.path(), 60, 0.15);
    let states = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let tpms: Vec<_> = states
        .iter()
        .map(|s| rigd_harness::swtpm::Swtpm::start(s.path()))
        .collect();
    let rigs: Vec<RigProcess> = tpms
        .iter()
        .enumerate()
        .map(|(i, tpm)| {
            RigProcess::start(
                &format!("rig-mlp-{i}"),
                broker.port,
                1 + i as u32,
                &dir.path().join(format!("r{i}")),
                &format!("key = \"tpm:{}\"\n", tpm.rest()),
            )
        })
        .collect();
    rigd_harness::wait_until("the job finished", 120, || {
        coordinator.status().is_some_and(|s| s.finished)
    });
    let status = coordinator.status().unwrap();
    assert!(
        status.loss.is_some_and(|l| l <= 0.15),
        "the loss target was not reached: {status:?}"
    );
    let units = coordinator.credited().len() as u64;
    assert_eq!(
        units,
        status.step * 8,
        "every unit of every step credited: {status:?}"
    );
    let refs: Vec<&RigProcess> = rigs.iter().collect();
    rigd_harness::wait_until("every outbox drained", 60, || {
        refs.iter().all(|r| r.journal().1 == 0)
    });
    coordinator.assert_exactly_once(units, &refs);
    for rig in &rigs {
        let log = rig.log();
        assert!(log.contains("tpm P-256 handle 0x81010001"), "{log}");
        assert!(!log.contains("SOFTWARE key"), "{log}");
    }
    println!(
        "MLP job signed in two swtpms: loss {:?} after {} steps, {units} units credited once",
        status.loss, status.step
    );
}
