//! The guard against a fake key store that hangs, fails or changes its key on command. A
//! hung call never returns until the test lets it, so every deadline is passed by
//! construction; the calls that must succeed are retried until a generous deadline.

use super::*;
use crate::keys::file::{Curve, FileKey};
use std::sync::Condvar;

/// What the fake store does, shared by every connection it opens.
#[derive(Default)]
struct Control {
    /// While set, opens and signatures block.
    hung: Mutex<bool>,
    released: Condvar,
    /// Opens so far.
    opens: AtomicUsize,
    /// Signatures to fail before answering again.
    fail: AtomicUsize,
    /// Open another key from now on.
    other_key: std::sync::atomic::AtomicBool,
}

impl Control {
    fn set_hung(&self, hung: bool) {
        *self.hung.lock().unwrap_or_else(PoisonError::into_inner) = hung;
        self.released.notify_all();
    }

    fn wait_while_hung(&self) {
        let mut hung = self.hung.lock().unwrap_or_else(PoisonError::into_inner);
        while *hung {
            hung = self
                .released
                .wait(hung)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

struct Fake {
    key: FileKey,
    control: Arc<Control>,
}

impl KeyStore for Fake {
    fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError> {
        self.control.wait_while_hung();
        let fail = &self.control.fail;
        if fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(KeyError::Sign("the token reported a device error".into()));
        }
        self.key.sign_digest(digest)
    }
    fn describe(&self) -> String {
        "fake".into()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    control: Arc<Control>,
    key: GuardedKey,
}

fn fixture(deadline_ms: u64, first_backoff_ms: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let control = Arc::new(Control::default());
    let opener = || -> Opener {
        let (c, path) = (control.clone(), dir.path().to_owned());
        Box::new(move || {
            c.opens.fetch_add(1, Ordering::SeqCst);
            c.wait_while_hung();
            let name = if c.other_key.load(Ordering::SeqCst) {
                "other"
            } else {
                "key"
            };
            Ok(Box::new(Fake {
                key: FileKey::open_or_create(&path.join(name), Curve::P256)?,
                control: c.clone(),
            }))
        })
    };
    let timing = Timing {
        deadline: Duration::from_millis(deadline_ms),
        first_backoff: Duration::from_millis(first_backoff_ms),
        max_backoff: Duration::from_millis(first_backoff_ms * 4),
    };
    // The keys exist before the guarded open, and an open the loaded machine did not finish
    // within the short deadline is tried again: what the tests look at starts after it,
    // counting that one open.
    for name in ["key", "other"] {
        FileKey::open_or_create(&dir.path().join(name), Curve::P256)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let give_up = Instant::now() + Duration::from_secs(30);
    let key = loop {
        match GuardedKey::open(opener(), timing) {
            Ok(key) => break key,
            Err(e) => assert!(Instant::now() < give_up, "never opened: {e}"),
        }
    };
    control.opens.store(1, Ordering::SeqCst);
    Fixture {
        _dir: dir,
        control,
        key,
    }
}

/// Signs until it works or 30 s pass; returns the signature.
fn sign_eventually(key: &GuardedKey, digest: &Hash32) -> Signature {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match key.sign_digest(digest) {
            Ok(sig) => return sig,
            Err(e) => assert!(Instant::now() < deadline, "never signed again: {e}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_threads(key: &GuardedKey, at_most: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while key.threads() > at_most {
        assert!(Instant::now() < deadline, "{} threads left", key.threads());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_signature_past_its_deadline_fails_and_the_store_is_left_alone_until_its_backoff_ends() {
    let f = fixture(100, 60_000);
    f.control.set_hung(true);
    let err = f.key.sign_digest(&[7; 32]).err();
    assert!(
        err.as_ref().is_some_and(|e| e
            .to_string()
            .contains("did not answer a signature within 100 ms")),
        "{err:?}"
    );
    assert!(
        matches!(f.key.health(), KeyHealth::Unresponsive { failures: 1, ref reason, .. } if reason.contains("100 ms")),
        "{:?}",
        f.key.health()
    );
    assert!(matches!(
        f.key.sign_digest(&[7; 32]),
        Err(KeyError::Backoff { .. })
    ));
    assert_eq!(f.control.opens.load(Ordering::SeqCst), 1, "no reopen yet");
    f.control.set_hung(false);
}

#[test]
fn after_a_timeout_the_store_is_reopened_and_signs_again() {
    let f = fixture(100, 1);
    let digest = [7; 32];
    f.control.set_hung(true);
    assert!(f.key.sign_digest(&digest).is_err());
    f.control.set_hung(false);
    let sig = sign_eventually(&f.key, &digest);
    assert_eq!(f.key.public_key().verify(&digest, &sig), Ok(()));
    assert_eq!(f.key.health(), KeyHealth::Answering);
    assert!(f.control.opens.load(Ordering::SeqCst) >= 2, "reopened");
    // The abandoned connection's thread ended once its call returned.
    wait_threads(&f.key, 1);
}

#[test]
fn a_store_that_never_answers_costs_a_bounded_number_of_threads() {
    let f = fixture(20, 1);
    f.control.set_hung(true);
    for _ in 0..50 {
        assert!(f.key.sign_digest(&[1; 32]).is_err());
        assert!(
            f.key.threads() <= MAX_THREADS,
            "{} threads",
            f.key.threads()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(f.key.threads(), MAX_THREADS);
    assert!(
        matches!(f.key.health(), KeyHealth::Unresponsive { failures, .. } if failures >= 5),
        "{:?}",
        f.key.health()
    );
    f.control.set_hung(false);
    let sig = sign_eventually(&f.key, &[1; 32]);
    assert_eq!(f.key.public_key().verify(&[1; 32], &sig), Ok(()));
    wait_threads(&f.key, 1);
}

#[test]
fn a_failing_store_is_reopened_and_signs_again() {
    let f = fixture(5_000, 1);
    f.control.fail.store(3, Ordering::SeqCst);
    let digest = [3; 32];
    for _ in 0..3 {
        let e = f.key.sign_digest(&digest);
        assert!(
            e.as_ref()
                .err()
                .is_some_and(|e| e.to_string().contains("device error")
                    || matches!(e, KeyError::Backoff { .. })),
            "{e:?}"
        );
    }
    let sig = sign_eventually(&f.key, &digest);
    assert_eq!(f.key.public_key().verify(&digest, &sig), Ok(()));
    assert_eq!(
        f.control.opens.load(Ordering::SeqCst),
        4,
        "one open per failure"
    );
}

#[test]
fn a_reopened_store_that_holds_another_key_is_refused() {
    let f = fixture(5_000, 1);
    f.control.fail.store(1, Ordering::SeqCst);
    f.control.other_key.store(true, Ordering::SeqCst);
    assert!(f.key.sign_digest(&[4; 32]).is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match f.key.sign_digest(&[4; 32]) {
            Err(KeyError::Backoff { .. }) => {}
            Err(e) => break e.to_string(),
            Ok(_) => panic!("signed with another key than the rig's"),
        }
        assert!(Instant::now() < deadline, "never reopened");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(refused.contains("another key"), "{refused}");
}

#[test]
fn an_open_that_hangs_is_an_error_after_the_deadline() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let control = Arc::new(Control::default());
    control.set_hung(true);
    let (c, path) = (control.clone(), dir.path().to_owned());
    let open: Opener = Box::new(move || {
        c.wait_while_hung();
        Ok(Box::new(FileKey::open_or_create(
            &path.join("k"),
            Curve::P256,
        )?))
    });
    let err = GuardedKey::open(open, Timing::with_deadline(Duration::from_millis(50))).err();
    assert!(
        matches!(&err, Some(KeyError::Unavailable { reason, .. }) if reason.contains("within 50 ms")),
        "{:?}",
        err.map(|e| e.to_string())
    );
    control.set_hung(false);
}
