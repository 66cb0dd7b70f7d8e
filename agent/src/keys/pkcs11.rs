//! The PKCS#11 backend: the receipt key lives on a token (an HSM, a smart card, SoftHSM2) and
//! signs there; only the public key and signatures leave it.
//!
//! The key is named by an RFC 7512 style URI:
//!
//! ```text
//! pkcs11:token=rigd;object=receipt-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234&curve=secp256k1
//! ```
//!
//! Path attributes (separated by `;`):
//! - `token` (required): the token label.
//! - `object` (required): the key label (`CKA_LABEL`).
//! - `type` (optional): must be `private`.
//!
//! Query attributes (separated by `&`):
//! - `module-path` (required): the absolute path of the PKCS#11 module.
//! - `pin-value` or `pin-source` (exactly one): the user PIN, or an absolute path (optionally
//!   `file:`-prefixed) of a file holding it, so that the PIN need not sit in rig.conf.
//! - `curve` (optional): `secp256k1` (the default) or `p256`.
//!
//! Values may be percent-encoded (`%20`); unknown or repeated attributes are refused.
//!
//! On open the module is loaded (once per process), the token is found by label, the user
//! logs in, and the EC private key labelled `object` is looked up. When it is absent a key pair
//! is generated on the token (sensitive, not extractable) and logged as a new rig identity.
//! Signatures are `CKM_ECDSA` over the 32-byte prehash, normalized to low-s; secp256k1
//! signatures carry the recovery byte `v = 27 + recid` so that `ecrecover` works.

use super::{KeyError, KeyStore};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rigd_protocol::digest::Hash32;
use rigd_protocol::{PublicKey, Signature};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The curve of a token key: secp256k1 (Ethereum `ecrecover`) or NIST P-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    Secp256k1,
    P256,
}

impl Curve {
    /// `CKA_EC_PARAMS`: the DER of the OID 1.3.132.0.10 (secp256k1) or 1.2.840.10045.3.1.7.
    fn ec_params(self) -> &'static [u8] {
        match self {
            Curve::Secp256k1 => &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A],
            Curve::P256 => &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07],
        }
    }
}

/// Where the user PIN comes from (no `Debug`: the PIN stays out of logs).
#[derive(PartialEq, Eq)]
enum Pin {
    Value(String),
    Source(PathBuf),
}

/// A parsed `pkcs11:` URI.
struct Uri {
    token: String,
    object: String,
    module: PathBuf,
    pin: Pin,
    curve: Curve,
}

/// The public key, parsed once, to check what the token returns.
enum Verifier {
    K256(k256::ecdsa::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl Verifier {
    /// The key, SEC1-compressed.
    fn public(&self) -> PublicKey {
        match self {
            Verifier::K256(k) => PublicKey::Secp256k1(k.to_encoded_point(true).as_bytes().to_vec()),
            Verifier::P256(k) => PublicKey::P256(k.to_encoded_point(true).as_bytes().to_vec()),
        }
    }
}

/// An EC key held on a PKCS#11 token.
pub struct Pkcs11Key {
    session: Mutex<Session>,
    private: ObjectHandle,
    verifier: Verifier,
    token: String,
    described: String,
}

/// Opens (creating on the token when missing) the key named by a `pkcs11:` URI.
///
/// Errors name the URI without its query, so that no PIN reaches a log.
pub fn open(uri: &str) -> Result<Pkcs11Key, KeyError> {
    let shown = uri.split('?').next().unwrap_or_default();
    let bad = |reason: String| KeyError::Uri {
        uri: shown.to_owned(),
        reason,
    };
    let parsed = parse(uri).map_err(&bad)?;
    let unavailable = |reason: String| KeyError::Unavailable {
        store: shown.to_owned(),
        reason,
    };
    let pin = match &parsed.pin {
        Pin::Value(pin) => pin.clone(),
        Pin::Source(path) => std::fs::read_to_string(path)
            .map_err(|source| KeyError::Io {
                path: path.clone(),
                source,
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
    };
    let ctx = module(&parsed.module).map_err(&unavailable)?;
    let slot = find_token(&ctx, &parsed.token).map_err(&unavailable)?;
    let (token, object) = (&parsed.token, &parsed.object);
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| unavailable(format!("cannot open a session on token {token:?}: {e}")))?;
    use RvError::{PinIncorrect, PinInvalid, PinLenRange, PinLocked, UserAlreadyLoggedIn};
    let refused = match session.login(UserType::User, Some(&AuthPin::from(pin))) {
        // Login state is per token and process: another open of this token already did it.
        Ok(()) | Err(CkError::Pkcs11(UserAlreadyLoggedIn, _)) => None,
        Err(CkError::Pkcs11(PinIncorrect | PinInvalid | PinLenRange, _)) => Some(format!(
            "token {token:?} refused the user PIN: check pin-value or pin-source"
        )),
        Err(CkError::Pkcs11(PinLocked, _)) => Some(format!(
            "the user PIN of token {token:?} is locked: unlock it with the SO PIN"
        )),
        Err(e) => Some(format!("login to token {token:?} failed: {e}")),
    };
    if let Some(reason) = refused {
        return Err(unavailable(reason));
    }
    let (private, public) = {
        // One find-or-generate at a time in this process, so two opens cannot make two keys.
        static OPENING: Mutex<()> = Mutex::new(());
        let _one = OPENING.lock().unwrap_or_else(PoisonError::into_inner);
        match find_key(&session, object).map_err(&unavailable)? {
            Some(pair) => pair,
            None => {
                let pair = generate(&session, &parsed).map_err(&unavailable)?;
                let curve = parsed.curve;
                tracing::info!(%token, %object, ?curve, "created a new rig identity key");
                pair
            }
        }
    };
    let verifier = read_public(&session, public, parsed.curve).map_err(&unavailable)?;
    let curve = verifier.public().curve();
    let described = format!("pkcs11 {curve} token {token} object {object} (hardware-held)");
    Ok(Pkcs11Key {
        session: Mutex::new(session),
        private,
        verifier,
        token: parsed.token,
        described,
    })
}

impl KeyStore for Pkcs11Key {
    fn public_key(&self) -> PublicKey {
        self.verifier.public()
    }

    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError> {
        let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let raw = session.sign(&Mechanism::Ecdsa, self.private, digest);
        drop(session);
        let raw = raw.map_err(|e| KeyError::Sign(format!("token {:?}: {e}", self.token)))?;
        let odd = |what: &str| KeyError::Sign(format!("token {:?} {what}", self.token));
        let malformed = || odd("returned a malformed ECDSA signature");
        let mismatch = || odd("returned a signature that does not match its key");
        match &self.verifier {
            Verifier::K256(key) => {
                use k256::ecdsa::{RecoveryId, VerifyingKey};
                let sig = k256::ecdsa::Signature::from_slice(&raw).map_err(|_| malformed())?;
                let sig = sig.normalize_s().unwrap_or(sig);
                let recovers = |id: &RecoveryId| {
                    VerifyingKey::recover_from_prehash(digest, &sig, *id).is_ok_and(|k| k == *key)
                };
                let recid = (0u8..2)
                    .filter_map(RecoveryId::from_byte)
                    .find(recovers)
                    .ok_or_else(mismatch)?;
                let mut out = sig.to_bytes().to_vec();
                out.push(27 + recid.to_byte());
                Ok(Signature(out))
            }
            Verifier::P256(key) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| malformed())?;
                let sig = sig.normalize_s().unwrap_or(sig);
                key.verify_prehash(digest, &sig).map_err(|_| mismatch())?;
                Ok(Signature(sig.to_bytes().to_vec()))
            }
        }
    }

    fn describe(&self) -> String {
        self.described.clone()
    }
}

/// Parses a `pkcs11:` URI; the error is the reason, for [`KeyError::Uri`].
fn parse(uri: &str) -> Result<Uri, String> {
    let rest = uri.strip_prefix("pkcs11:").ok_or("not pkcs11:")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut found: HashMap<&str, String> = HashMap::new();
    let path_names = ["token", "object", "type"];
    let query_names = ["module-path", "pin-value", "pin-source", "curve"];
    for (part, sep, known) in [(path, ';', &path_names[..]), (query, '&', &query_names[..])] {
        for attribute in part.split(sep).filter(|a| !a.is_empty()) {
            let (name, value) = attribute
                .split_once('=')
                .ok_or_else(|| format!("attribute {attribute:?} has no '='"))?;
            if !known.contains(&name) {
                return Err(format!("unknown attribute {name:?} (known: {known:?})"));
            }
            let value = percent_decode(value).ok_or("bad percent-encoding")?;
            if found.insert(name, value).is_some() {
                return Err(format!("{name} given twice"));
            }
        }
    }
    let mut take = |name| found.remove(name).filter(|v| !v.is_empty());
    let token = take("token").ok_or("no token=<label>")?;
    if token.len() > 32 {
        return Err("a token label is at most 32 bytes".into());
    }
    let object = take("object").ok_or("no object=<label>")?;
    if take("type").is_some_and(|t| t != "private") {
        return Err("type must be private".into());
    }
    let module = PathBuf::from(take("module-path").ok_or("no module-path=<absolute path>")?);
    let pin = match (take("pin-value"), take("pin-source")) {
        (Some(pin), None) => Pin::Value(pin),
        (None, Some(source)) => Pin::Source(PathBuf::from(
            source.strip_prefix("file:").unwrap_or(&source),
        )),
        (None, None) => return Err("no pin-value or pin-source".into()),
        (Some(_), Some(_)) => return Err("give pin-value or pin-source, not both".into()),
    };
    if !module.is_absolute() || matches!(&pin, Pin::Source(p) if !p.is_absolute()) {
        return Err("module-path and pin-source must be absolute paths".into());
    }
    let curve = match take("curve").as_deref() {
        None | Some("secp256k1") => Curve::Secp256k1,
        Some("p256") => Curve::P256,
        Some(_) => return Err("curve must be secp256k1 or p256".into()),
    };
    Ok(Uri {
        token,
        object,
        module,
        pin,
        curve,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()?
        } else {
            b
        });
    }
    String::from_utf8(out).ok()
}

/// The module at `path`, loaded and initialized once per process (a module keeps login state
/// per process; finalizing it under another open key would log that key out).
fn module(path: &Path) -> Result<Pkcs11, String> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let modules = MODULES.get_or_init(Default::default);
    let mut modules = modules.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let shown = path.display();
    let ctx = Pkcs11::new(path).map_err(|e| format!("cannot load PKCS#11 module {shown}: {e}"))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("PKCS#11 module {shown} failed to initialize: {e}")),
    }
    modules.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

fn find_token(ctx: &Pkcs11, label: &str) -> Result<Slot, String> {
    let slots = ctx.get_slots_with_initialized_token();
    let slots = slots.map_err(|e| format!("cannot list the module's tokens: {e}"))?;
    let labelled = |slot: &Slot| ctx.get_token_info(*slot).is_ok_and(|i| i.label() == label);
    match slots.into_iter().filter(labelled).collect::<Vec<_>>()[..] {
        [slot] => Ok(slot),
        [] => Err(format!("no initialized token labelled {label:?}")),
        _ => Err(format!("several tokens are labelled {label:?}")),
    }
}

/// A (private, public) key pair on the token.
type Pair = (ObjectHandle, ObjectHandle);

/// The EC key pair labelled `label`, if the token holds it.
fn find_key(session: &Session, label: &str) -> Result<Option<Pair>, String> {
    let find = |class| {
        let template = [
            Attribute::Class(class),
            Attribute::KeyType(KeyType::EC),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let found = session.find_objects(&template);
        found.map_err(|e| format!("cannot search the token: {e}"))
    };
    let private = find(ObjectClass::PRIVATE_KEY)?;
    let public = find(ObjectClass::PUBLIC_KEY)?;
    match (&private[..], &public[..]) {
        ([private], [public]) => Ok(Some((*private, *public))),
        ([], []) => Ok(None),
        (private, public) => Err(format!(
            "{} private and {} public keys labelled {label:?}, not one of each: delete the extras",
            private.len(),
            public.len()
        )),
    }
}

/// Generates the key pair on the token; the private key never leaves it.
fn generate(session: &Session, uri: &Uri) -> Result<Pair, String> {
    let label = uri.object.as_bytes().to_vec();
    let common = || {
        [
            Attribute::Token(true),
            Attribute::KeyType(KeyType::EC),
            Attribute::Label(label.clone()),
            Attribute::Id(label.clone()),
        ]
    };
    let mut public = common().to_vec();
    public.extend([
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(uri.curve.ec_params().to_vec()),
    ]);
    let mut private = common().to_vec();
    private.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    let (public, private) = session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .map_err(|e| format!("the token failed to generate a key pair: {e}"))?;
    Ok((private, public))
}

/// Reads the public key's curve and point and checks the curve is the one asked for.
fn read_public(session: &Session, public: ObjectHandle, curve: Curve) -> Result<Verifier, String> {
    let attributes = session
        .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| format!("cannot read the public key: {e}"))?;
    let [Attribute::EcParams(params), Attribute::EcPoint(point)] = &attributes[..] else {
        return Err("the public key has no CKA_EC_PARAMS or CKA_EC_POINT".into());
    };
    if params[..] != *curve.ec_params() {
        return Err(format!(
            "the key on the token is not a {curve:?} key: choose another object label or curve"
        ));
    }
    // The DER-wrapped point (as PKCS#11 says), else the bare point (as some modules return).
    let mut candidates = unwrap_octet_string(point).into_iter().chain([&point[..]]);
    let verifier = match curve {
        Curve::Secp256k1 => candidates
            .find_map(|p| k256::ecdsa::VerifyingKey::from_sec1_bytes(p).ok())
            .map(Verifier::K256),
        Curve::P256 => candidates
            .find_map(|p| p256::ecdsa::VerifyingKey::from_sec1_bytes(p).ok())
            .map(Verifier::P256),
    };
    verifier.ok_or_else(|| format!("CKA_EC_POINT is not a {curve:?} point"))
}

/// The content of a short DER OCTET STRING (a 256-bit curve's point is), or `None` when `der`
/// is not exactly one.
fn unwrap_octet_string(der: &[u8]) -> Option<&[u8]> {
    match der {
        [0x04, n, rest @ ..] if *n < 0x80 && usize::from(*n) == rest.len() => Some(rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "user-pin-1234";
    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

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
        let ctx = module(Path::new(MODULE));
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
                ok(session.sign(&Mechanism::Ecdsa, key.private, &digest));
            });
            let full = rate(&|| drop(ok(key.sign_digest(&digest))));
            println!("softhsm2 {curve:>9}: {full:>6.0} sign_digest/s, {token_only:>6.0} C_Sign/s");
        }
    }
}
