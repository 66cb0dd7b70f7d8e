use super::*;
use crate::frame::{decode, encode, FrameError};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

fn keypair() -> Ed25519KeyPair {
    let rng = SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap_or_else(|_| unreachable!());
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap_or_else(|_| unreachable!())
}

fn gpu(s: &str) -> GpuUuid {
    GpuUuid::new(s).unwrap_or_else(|_| unreachable!())
}

fn signed(key: &Ed25519KeyPair, action: Action) -> Command {
    let mut operator = [0u8; 32];
    operator.copy_from_slice(key.public_key().as_ref());
    let mut cmd = Command {
        rig: RigId::new("rig-1").unwrap_or_else(|_| unreachable!()),
        operator,
        nonce: 7,
        issued_ms: 1_000,
        expires_ms: 61_000,
        action,
        signature: vec![],
    };
    cmd.signature = key.sign(&cmd.signing_digest()).as_ref().to_vec();
    cmd
}

fn every_action() -> Vec<Action> {
    vec![
        Action::Drain,
        Action::Pause { gpu: None },
        Action::Pause {
            gpu: Some(gpu("SIM-a-0")),
        },
        Action::Resume { gpu: None },
        Action::SetPowerLimit {
            gpu: Some(gpu("SIM-a-0")),
            watts: 250,
        },
        Action::SetThermalLimits {
            gpu: None,
            limits: ThermalLimitsCmd {
                target_c: Some(70),
                critical_c: Some(84),
                ..ThermalLimitsCmd::default()
            },
        },
        Action::RestartWorker {
            gpu: gpu("SIM-a-0"),
        },
        Action::Quarantine {
            gpu: gpu("SIM-a-0"),
        },
        Action::Release {
            gpu: gpu("SIM-a-0"),
        },
        Action::RotateLogs,
        Action::Diagnostics,
        update("https://bundles.example/rig-2.0.0.raucb", "2.0.0"),
    ]
}

#[test]
fn signing_digest_follows_the_documented_layout() {
    let key = keypair();
    let cmd = signed(
        &key,
        Action::SetThermalLimits {
            gpu: Some(gpu("GPU-1")),
            limits: ThermalLimitsCmd {
                target_c: Some(70),
                hysteresis_c: Some(10),
                ..ThermalLimitsCmd::default()
            },
        },
    );
    let mut expected = b"rigd/v1/command\0".to_vec();
    expected.push(5);
    expected.extend_from_slice(b"rig-1");
    expected.extend_from_slice(&cmd.operator);
    expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
    expected.extend_from_slice(&1_000u64.to_be_bytes());
    expected.extend_from_slice(&61_000u64.to_be_bytes());
    expected.push(5);
    expected.extend_from_slice(&[1, 5]);
    expected.extend_from_slice(b"GPU-1");
    expected.extend_from_slice(&[1, 70, 0, 1, 10, 0, 0]);
    assert_eq!(cmd.signing_bytes(), expected);
    assert_eq!(cmd.signing_digest(), crate::digest::sha256(&[&expected]));
    let power = signed(
        &key,
        Action::SetPowerLimit {
            gpu: None,
            watts: 0x0102_0304,
        },
    );
    assert!(power.signing_bytes().ends_with(&[4, 0, 1, 2, 3, 4]));
}

fn update(bundle: &str, version: &str) -> Action {
    Action::Update {
        bundle: bundle.into(),
        version: version.into(),
        sha256: [0xab; 32],
    }
}

#[test]
fn an_update_signs_its_url_with_a_two_byte_length_its_version_and_its_hash() {
    let key = keypair();
    let cmd = signed(&key, update("https://b/x.raucb", "2.0.0"));
    let mut fields = vec![11, 0, 17];
    fields.extend_from_slice(b"https://b/x.raucb");
    fields.push(5);
    fields.extend_from_slice(b"2.0.0");
    fields.extend_from_slice(&[0xab; 32]);
    assert!(cmd.signing_bytes().ends_with(&fields));
    assert_eq!(cmd.action.kind().as_str(), "update");
}

#[test]
fn an_update_with_a_bad_url_or_version_is_refused_as_malformed() {
    let key = keypair();
    let long = format!("https://b/{}", "x".repeat(1100));
    for (bundle, version) in [
        ("http://b/x.raucb", "2.0.0"),
        ("file:///tmp/x.raucb", "2.0.0"),
        ("https://b/x y.raucb", "2.0.0"),
        (long.as_str(), "2.0.0"),
        ("https://b/x.raucb", ""),
        ("https://b/x.raucb", "2.0.0;reboot"),
        ("https://b/x.raucb", "../../etc"),
    ] {
        let cmd = signed(&key, update(bundle, version));
        assert!(
            matches!(
                decode::<Command>(&encode(&cmd)),
                Err(FrameError::Invalid { .. })
            ),
            "{bundle} {version}"
        );
    }
}

#[test]
fn every_action_signs_verifies_and_round_trips() {
    let key = keypair();
    for action in every_action() {
        let cmd = signed(&key, action);
        assert!(cmd.signature_valid(), "{:?}", cmd.action);
        assert_eq!(decode::<Command>(&encode(&cmd)), Ok(cmd));
    }
}

#[test]
fn any_change_to_a_signed_field_breaks_the_signature() {
    let key = keypair();
    let cmd = signed(&key, Action::Pause { gpu: None });
    let changes: Vec<fn(&mut Command)> = vec![
        |c| c.rig = RigId::new("rig-2").unwrap_or_else(|_| unreachable!()),
        |c| c.operator[0] ^= 1,
        |c| c.nonce += 1,
        |c| c.issued_ms += 1,
        |c| c.expires_ms += 1,
        |c| c.action = Action::Resume { gpu: None },
        |c| {
            c.action = Action::Pause {
                gpu: Some(gpu("SIM-x")),
            }
        },
        |c| c.signature[0] ^= 1,
    ];
    for change in changes {
        let mut c = cmd.clone();
        change(&mut c);
        assert!(!c.signature_valid(), "{c:?}");
    }
    // The same fields signed by another key do not verify under this operator.
    let other = keypair();
    let mut c = cmd.clone();
    c.signature = other.sign(&c.signing_digest()).as_ref().to_vec();
    assert!(!c.signature_valid());
}

#[test]
fn action_digests_differ_per_kind_and_payload() {
    let key = keypair();
    let digests: std::collections::HashSet<_> = every_action()
        .into_iter()
        .map(|a| signed(&key, a).signing_digest())
        .collect();
    assert_eq!(digests.len(), every_action().len());
}

#[test]
fn a_signature_of_the_wrong_length_is_refused_on_decode() {
    let key = keypair();
    let mut cmd = signed(&key, Action::Drain);
    cmd.signature.push(0);
    assert!(matches!(
        decode::<Command>(&encode(&cmd)),
        Err(FrameError::Invalid { .. })
    ));
}

#[test]
fn replies_round_trip_and_long_text_is_refused() {
    let rig = RigId::new("rig-1").unwrap_or_else(|_| unreachable!());
    let reply = CommandReply {
        rig: rig.clone(),
        nonce: 3,
        action: Some(ActionKind::Drain),
        outcome: Outcome::Rejected(Rejection::Replayed { nonce: 3, last: 5 }),
    };
    assert_eq!(decode::<CommandReply>(&encode(&reply)), Ok(reply));
    let long = CommandReply {
        rig,
        nonce: 3,
        action: None,
        outcome: Outcome::Failed("x".repeat(4 * MAX_TEXT + 1)),
    };
    assert!(matches!(
        decode::<CommandReply>(&encode(&long)),
        Err(FrameError::Invalid { .. })
    ));
}

#[test]
fn only_a_drain_acceptance_is_not_final() {
    let accepted = Outcome::Accepted(String::new());
    assert!(!accepted.is_final(ActionKind::Drain));
    assert!(accepted.is_final(ActionKind::Pause));
    assert!(Outcome::Completed(String::new()).is_final(ActionKind::Drain));
    assert!(Outcome::Rejected(Rejection::BadSignature).is_final(ActionKind::Drain));
}
