#![allow(clippy::unwrap_used)]

use super::*;
use rigd_protocol::command::Action;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

fn keypair() -> Ed25519KeyPair {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
}

fn public(key: &Ed25519KeyPair) -> [u8; 32] {
    key.public_key().as_ref().try_into().unwrap()
}

fn rig(s: &str) -> RigId {
    RigId::new(s).unwrap()
}

fn command(key: &Ed25519KeyPair, rig_id: &str, nonce: u64, action: Action) -> Command {
    let mut cmd = Command {
        rig: rig(rig_id),
        operator: public(key),
        nonce,
        issued_ms: 100_000,
        expires_ms: 110_000,
        action,
        signature: vec![],
    };
    cmd.signature = key.sign(&cmd.signing_digest()).as_ref().to_vec();
    cmd
}

#[test]
fn a_signed_fresh_command_for_this_rig_is_accepted() {
    let k = keypair();
    let v = Verifier::new(rig("r1"), vec![public(&k)], None);
    assert_eq!(
        v.check(&command(&k, "r1", 5, Action::Drain), 105_000, Some(4)),
        Ok(())
    );
    assert_eq!(
        v.check(&command(&k, "r1", 1, Action::Drain), 105_000, None),
        Ok(())
    );
}

#[test]
fn each_bad_command_is_refused_with_its_reason() {
    let k = keypair();
    let stranger = keypair();
    let v = Verifier::new(
        rig("r1"),
        vec![public(&k)],
        Some(vec![ActionKind::Drain, ActionKind::Resume]),
    );
    let ok = command(&k, "r1", 5, Action::Drain);
    assert!(matches!(
        v.check(&command(&k, "r2", 5, Action::Drain), 105_000, None),
        Err(Rejection::WrongRig(_))
    ));
    assert!(matches!(
        v.check(&command(&stranger, "r1", 5, Action::Drain), 105_000, None),
        Err(Rejection::UnknownOperator(_))
    ));
    let mut forged = ok.clone();
    forged.action = Action::Pause { gpu: None };
    assert_eq!(
        v.check(&forged, 105_000, None),
        Err(Rejection::BadSignature)
    );
    let mut resigned = ok.clone();
    resigned.signature = stranger.sign(&ok.signing_digest()).as_ref().to_vec();
    assert_eq!(
        v.check(&resigned, 105_000, None),
        Err(Rejection::BadSignature)
    );
    assert!(matches!(
        v.check(&ok, 110_001, None),
        Err(Rejection::Expired {
            expires_ms: 110_000,
            now_ms: 110_001
        })
    ));
    assert!(matches!(
        v.check(&ok, 100_000 - CLOCK_SKEW_MS - 1, None),
        Err(Rejection::Window(_))
    ));
    let mut long = command(&k, "r1", 5, Action::Drain);
    long.expires_ms = long.issued_ms + MAX_COMMAND_TTL_MS + 1;
    long.signature = k.sign(&long.signing_digest()).as_ref().to_vec();
    assert!(matches!(
        v.check(&long, 105_000, None),
        Err(Rejection::Window(_))
    ));
    assert_eq!(
        v.check(&ok, 105_000, Some(5)),
        Err(Rejection::Replayed { nonce: 5, last: 5 })
    );
    assert_eq!(
        v.check(&command(&k, "r1", 9, Action::Diagnostics), 105_000, None),
        Err(Rejection::NotAllowed(ActionKind::Diagnostics))
    );
}

#[test]
fn nonces_survive_a_reopen_and_a_damaged_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ([1u8; 32], [2u8; 32]);
    let mut store = NonceStore::open(&crate::state_dir::StateDir::new(dir.path())).unwrap();
    assert_eq!(store.last(&a), None);
    store.accept(a, 7).unwrap();
    store.accept(b, 3).unwrap();
    store.accept(a, 9).unwrap();
    let store = NonceStore::open(&crate::state_dir::StateDir::new(dir.path())).unwrap();
    assert_eq!((store.last(&a), store.last(&b)), (Some(9), Some(3)));
    assert!(!dir.path().join("operator-nonces.tmp").exists());
    std::fs::write(dir.path().join("operator-nonces"), "zz 1\n").unwrap();
    assert!(NonceStore::open(&crate::state_dir::StateDir::new(dir.path())).is_err());
}
