//! Tests of the PKCS#11 backend against real SoftHSM2 tokens.

use super::*;

use rigd_testkit::softhsm::{MODULE, PIN};

fn ok<T, E: std::fmt::Display>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh SoftHSM2 token labelled `label` with user PIN [`PIN`].
/// SoftHSM2 reads `SOFTHSM2_CONF` once per process, so the tests of this binary share one
/// token directory and each test uses its own token. No SoftHSM2 fails, never passes.
fn token(label: &str) {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());
    DIR.get_or_init(|| {
        let dir = ok(tempfile::tempdir());
        let (conf, tokens) = (dir.path().join("softhsm2.conf"), dir.path().join("tokens"));
        ok(std::fs::create_dir(&tokens));
        let text = format!("directories.tokendir = {}\n", tokens.display());
        ok(std::fs::write(&conf, text + "log.level = ERROR\n"));
        std::env::set_var("SOFTHSM2_CONF", &conf);
        dir
    });
    let ctx = module(Path::new(MODULE)).map(|(ctx, _)| ctx);
    let ctx = ctx.unwrap_or_else(|e| panic!("{e}: run ./test.sh, which installs SoftHSM2"));
    let _one = INIT.lock().unwrap_or_else(PoisonError::into_inner);
    let free = |s: &Slot| ctx.get_token_info(*s).is_ok_and(|i| !i.token_initialized());
    let slot = ok(ctx.get_slots_with_token()).into_iter().find(free);
    let slot = slot.unwrap_or_else(|| panic!("SoftHSM2 offers no free slot"));
    let so_pin = AuthPin::from("so-pin-4321".to_owned());
    ok(ctx.init_token(slot, &so_pin, label));
    let session = ok(ctx.open_rw_session(slot));
    ok(session.login(UserType::So, Some(&so_pin)));
    ok(session.init_pin(&AuthPin::from(PIN.to_owned())));
}

fn uri(token: &str, query: &str) -> String {
    format!("pkcs11:token={token};object=receipt-key?module-path={MODULE}&{query}")
}

/// Why opening `uri` failed; panics unless it failed with a URI error.
fn refusal(uri: &str) -> String {
    match open(uri) {
        Err(KeyError::Uri { reason, .. }) => reason,
        Err(e) => panic!("expected a URI error, got {e}"),
        Ok(key) => panic!("expected an error, opened {}", key.describe()),
    }
}

/// Why the token could not be used; panics unless opening `uri` failed with
/// [`KeyError::Unavailable`].
fn unavailable(uri: &str) -> String {
    match open(uri) {
        Err(KeyError::Unavailable { reason, .. }) => reason,
        Err(e) => panic!("expected an unavailable key store, got {e}"),
        Ok(key) => panic!("expected an error, opened {}", key.describe()),
    }
}

/// The conformance checks, through `keys::open` with software keys refused.
fn conforms(label: &str, curve: &str) -> Pkcs11Key {
    token(label);
    let uri = uri(label, &format!("pin-value={PIN}&curve={curve}"));
    let dir = ok(tempfile::tempdir());
    crate::keys::conformance::check(&|| crate::keys::open(&uri, dir.path(), false));
    ok(open(&uri))
}

#[test]
fn a_secp256k1_key_is_generated_on_the_token_once_and_signs_verifiably() {
    let key = conforms("k1", "secp256k1");
    let described = "pkcs11 secp256k1 token k1 object receipt-key (hardware-held)";
    assert_eq!(key.describe(), described);
}

#[test]
fn a_p256_key_is_generated_on_the_token_once_and_signs_verifiably() {
    let key = conforms("p256", "p256");
    assert!(matches!(key.public_key(), PublicKey::P256(b) if b.len() == 33));
}

#[test]
fn a_secp256k1_signature_recovers_the_rig_address() {
    token("recover");
    let key = ok(open(&uri("recover", &format!("pin-value={PIN}"))));
    let public = key.public_key();
    assert!(public.eth_address().is_some());
    let v: Vec<u8> = (0u8..64)
        .map(|i| {
            let digest = rigd_protocol::digest::keccak256(&[b"recover", &[i]]);
            let sig = ok(key.sign_digest(&digest));
            // Recovers the signer from (digest, r, s, v) and compares, as `ecrecover` does.
            assert_eq!(public.verify(&digest, &sig), Ok(()), "signature {i}");
            sig.0[64]
        })
        .collect();
    assert!(v.contains(&27) && v.contains(&28), "{v:?}");
}

#[test]
fn the_pin_can_come_from_a_file() {
    token("pin-file");
    let dir = ok(tempfile::tempdir());
    let pin = dir.path().join("pin");
    ok(std::fs::write(&pin, format!("{PIN}\n")));
    let source = format!("pin-source=file:{}", pin.display());
    ok(open(&uri("pin-file", &source)));
    let missing = open(&uri("pin-file", "pin-source=/nonexistent/pin"));
    assert!(matches!(missing, Err(KeyError::Io { .. })));
}

#[test]
fn a_wrong_pin_an_unknown_token_or_module_is_a_clear_error() {
    token("known");
    let wrong = open(&uri("known", "pin-value=not-the-pin-777"));
    let why = wrong.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("refused the user PIN"), "{why}");
    assert!(!why.contains("not-the-pin"), "{why}");
    let why = unavailable(&uri("unknown", "pin-value=1"));
    assert!(why.contains("no initialized token labelled"), "{why}");
    let why = unavailable(&uri("known", "pin-value=1").replace(MODULE, "/no/p11.so"));
    assert!(why.contains("cannot load PKCS#11 module"), "{why}");
}

#[test]
fn a_key_on_the_other_curve_is_not_taken_for_the_rig_key() {
    token("curves");
    let p256 = format!("pin-value={PIN}&curve=p256");
    ok(open(&uri("curves", &p256)));
    let why = unavailable(&uri("curves", &format!("pin-value={PIN}")));
    assert!(why.contains("not a Secp256k1 key"), "{why}");
}

#[test]
fn a_malformed_uri_is_refused() {
    for case in [
        "pkcs:token=a;object=b?M&pin-value=1 => not pkcs11:",
        "pkcs11:object=b?M&pin-value=1 => no token",
        "pkcs11:token=a?M&pin-value=1 => no object",
        "pkcs11:token=a;object=b;slot-id=1?M&pin-value=1 => unknown attribute",
        "pkcs11:token=a;token=c;object=b?M&pin-value=1 => twice",
        "pkcs11:token=a;object=b?M&pin-value=1&token=x => unknown attribute",
        "pkcs11:token=a;object=b?M => no pin-value or pin-source",
        "pkcs11:token=a;object=b?M&pin-value=1&pin-source=/p => not both",
        "pkcs11:token=a;object=b?M&pin-source=pin.txt => absolute",
        "pkcs11:token=a;object=b?M&pin-value=1&curve=ed25519 => curve",
        "pkcs11:token=a;object=b?pin-value=1 => no module-path",
        "pkcs11:token=a;object=b?module-path=p11.so&pin-value=1 => absolute",
        "pkcs11:token=%zz;object=b?M&pin-value=1 => percent",
        "pkcs11:token=a;object?M&pin-value=1 => no '='",
        "pkcs11:token=a;object=b;type=public?M&pin-value=1 => private",
    ] {
        let (uri, why) = case.split_once(" => ").unwrap_or_default();
        let uri = uri.replace('M', &format!("module-path={MODULE}"));
        let got = refusal(&uri);
        assert!(got.contains(why), "{uri}: {got}");
    }
    let text = "pkcs11:token=my%20rig;object=k%3B1;type=private?module-path=/m&pin-value=a%26b";
    let parsed = ok(parse(text));
    assert_eq!((&*parsed.token, &*parsed.object), ("my rig", "k;1"));
    assert!(parsed.pin == Pin::Value("a&b".into()) && parsed.curve == Curve::Secp256k1);
}

#[test]
fn an_ec_point_is_unwrapped_without_panicking_on_odd_lengths() {
    let der: Vec<u8> = [0x04, 65].into_iter().chain([4; 65]).collect();
    assert_eq!(unwrap_octet_string(&der), Some(&der[2..]));
    let odd: [&[u8]; 6] = [
        &[],
        &[4],
        &[4, 0x81, 1, 0],
        &[4, 3, 1],
        &der[..40],
        &[0x30, 1, 0],
    ];
    assert!(odd.iter().all(|o| unwrap_octet_string(o).is_none()));
}

/// Signatures per second through SoftHSM2:
/// `cargo test -p rigd --lib keys::pkcs11 -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn signatures_per_second_through_softhsm2() {
    const N: u32 = 2000;
    for (label, curve) in [("bench-k1", "secp256k1"), ("bench-p256", "p256")] {
        token(label);
        let key = ok(open(&uri(label, &format!("pin-value={PIN}&curve={curve}"))));
        let digest = rigd_protocol::digest::keccak256(&[b"bench"]);
        let rate = |sign: &dyn Fn()| {
            let start = std::time::Instant::now();
            (0..N).for_each(|_| sign());
            f64::from(N) / start.elapsed().as_secs_f64()
        };
        let token_only = rate(&|| {
            let session = key.session.lock().unwrap_or_else(PoisonError::into_inner);
            let session = session.as_ref().unwrap_or_else(|| panic!("no session"));
            ok(session.sign(&Mechanism::Ecdsa, key.private, &digest));
        });
        let full = rate(&|| drop(ok(key.sign_digest(&digest))));
        println!("softhsm2 {curve:>9}: {full:>6.0} sign_digest/s, {token_only:>6.0} C_Sign/s");
    }
}
