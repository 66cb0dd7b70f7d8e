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
use cryptoki::context::Function;
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
use std::sync::atomic::{AtomicU64, Ordering};
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
#[derive(Clone, PartialEq, Eq)]
enum Pin {
    Value(String),
    Source(PathBuf),
}

/// A parsed `pkcs11:` URI.
#[derive(Clone)]
pub(crate) struct Uri {
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
    /// `None` only while dropping.
    session: Mutex<Option<Session>>,
    /// The module and its generation when the session was opened (see [`reset_module`]).
    module: PathBuf,
    generation: u64,
    private: ObjectHandle,
    verifier: Verifier,
    token: String,
    described: String,
}

/// Opens (creating on the token when missing) the key named by a `pkcs11:` URI.
///
/// Errors name the URI without its query, so that no PIN reaches a log.
#[cfg(test)]
pub fn open(uri: &str) -> Result<Pkcs11Key, KeyError> {
    let parsed = parse(uri).map_err(|reason| KeyError::Uri {
        uri: shown(uri).to_owned(),
        reason,
    })?;
    open_parsed(uri, &parsed)
}

/// The URI without its query, where a PIN may be.
pub(crate) fn shown(uri: &str) -> &str {
    uri.split('?').next().unwrap_or_default()
}

/// Opens (creating on the token when missing) the key of an already parsed `pkcs11:` URI.
pub(crate) fn open_parsed(uri: &str, parsed: &Uri) -> Result<Pkcs11Key, KeyError> {
    let shown = shown(uri);
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
    let (ctx, generation) = module(&parsed.module).map_err(&unavailable)?;
    let (token, object) = (&parsed.token, &parsed.object);
    let session = find_token(&ctx, token).and_then(|slot| {
        ctx.open_rw_session(slot)
            .map_err(|e| format!("cannot open a session on token {token:?}: {e}"))
    });
    let session = session.map_err(|reason| {
        // A module that lost its token (unplugged, its store gone) may keep failing until it
        // is initialized again: the next open starts it afresh.
        reset_module(&parsed.module, generation);
        unavailable(reason)
    })?;
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
                let pair = generate(&session, parsed).map_err(&unavailable)?;
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
        session: Mutex::new(Some(session)),
        module: parsed.module.clone(),
        generation,
        private,
        verifier,
        token: parsed.token.clone(),
        described,
    })
}

impl KeyStore for Pkcs11Key {
    fn public_key(&self) -> PublicKey {
        self.verifier.public()
    }

    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError> {
        let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let raw = match session.as_ref() {
            Some(session) => session.sign(&Mechanism::Ecdsa, self.private, digest),
            None => Err(CkError::Pkcs11(RvError::SessionClosed, Function::Sign)),
        };
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
pub(crate) fn parse(uri: &str) -> Result<Uri, String> {
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

/// The loaded modules by path, each with its generation.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, (Pkcs11, u64)>>> = OnceLock::new();

/// Counts module initializations in this process; every one gets a new number.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The module at `path` and its generation, loaded and initialized once per process (a
/// module keeps login state per process; finalizing it under another open key would log that
/// key out).
fn module(path: &Path) -> Result<(Pkcs11, u64), String> {
    let modules = MODULES.get_or_init(Default::default);
    let mut modules = modules.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(loaded) = modules.get(path) {
        return Ok(loaded.clone());
    }
    let shown = path.display();
    let ctx = Pkcs11::new(path).map_err(|e| format!("cannot load PKCS#11 module {shown}: {e}"))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("PKCS#11 module {shown} failed to initialize: {e}")),
    }
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    modules.insert(path.to_owned(), (ctx.clone(), generation));
    Ok((ctx, generation))
}

/// Finalizes the module at `path` when `generation` is still the loaded one, so that the
/// next [`module`] call initializes it again and it scans its tokens afresh: a module that
/// lost its token (unplugged, its store gone) may fail until then. rigd opens one key, so
/// only the connection being replaced loses its session; sessions of older generations are
/// never closed (see [`Pkcs11Key`]'s `Drop`), since their handles may name new sessions now.
fn reset_module(path: &Path, generation: u64) {
    let Some(modules) = MODULES.get() else {
        return;
    };
    let mut modules = modules.lock().unwrap_or_else(PoisonError::into_inner);
    if modules.get(path).is_some_and(|(_, g)| *g == generation) {
        if let Some((ctx, _)) = modules.remove(path) {
            if let Err(e) = ctx.finalize() {
                tracing::debug!(error = %e, "finalizing the PKCS#11 module failed");
            }
        }
    }
}

/// Whether the module at `path` was finalized since `generation`.
fn stale(path: &Path, generation: u64) -> bool {
    MODULES.get().is_some_and(|modules| {
        let modules = modules.lock().unwrap_or_else(PoisonError::into_inner);
        modules.get(path).is_none_or(|(_, g)| *g != generation)
    })
}

impl Drop for Pkcs11Key {
    fn drop(&mut self) {
        let session = self
            .session
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if stale(&self.module, self.generation) {
            // Its module was finalized: the session is gone, and closing its handle now
            // could close a session of the new generation.
            std::mem::forget(session.take());
        }
    }
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
#[path = "pkcs11_tests.rs"]
mod tests;
