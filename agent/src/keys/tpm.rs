//! The TPM 2.0 backend: an ECDSA P-256 key created inside the TPM and kept at a persistent
//! handle. TPMs have no secp256k1, so the rig key is P-256; its signatures are normalized to
//! low-s and returned as 64-byte `r ‖ s`.
//!
//! # URI
//!
//! `tpm:` or `tpm://[HANDLE][?tcti=TCTI]`, where
//! - `HANDLE` is the persistent handle of the rig key, in hex, in the owner range
//!   `0x81000000..=0x817FFFFF` (default `0x81010001`);
//! - `TCTI` says how to reach the TPM, as the TSS writes it (default `device:/dev/tpmrm0`,
//!   the kernel's resource manager; `swtpm:host=127.0.0.1,port=2321` for a software TPM;
//!   also `mssim:...` and `tabrmd:...`).
//!
//! Examples: `tpm:`, `tpm://0x81010002`, `tpm://0x81010001?tcti=device:/dev/tpmrm0`.
//!
//! # First boot and later
//!
//! [`open`] looks for a key at the handle. When there is none (a new TPM, or one that was
//! cleared), it creates an unrestricted ECDSA P-256 (SHA-256) signing key as a primary key of
//! the owner hierarchy, makes it persistent at the handle with `EvictControl` and logs that a
//! new rig identity key was created. Later opens load that key. A key at the handle that is
//! not an unrestricted P-256 signing key is an error, never overwritten. The owner hierarchy
//! must have an empty authorization value on first boot.
//!
//! A replaced or cleared TPM means a new key, and so a new rig identity.

use super::{KeyError, KeyStore};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rigd_protocol::digest::Hash32;
use rigd_protocol::{PublicKey, Signature};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, Digest, EccParameter, EccScheme, HashScheme, Public, SignatureScheme,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

/// The persistent handle used when the URI names none.
pub const DEFAULT_HANDLE: u32 = 0x8101_0001;
/// The TCTI used when the URI names none: the kernel's TPM resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// Where the rig key lives, parsed from a `tpm:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmLocation {
    /// The persistent handle of the key.
    pub handle: u32,
    /// How to reach the TPM, as the TSS writes it.
    pub tcti: String,
}

impl TpmLocation {
    /// Parses the part of a `tpm:` URI after the scheme (`rest`); `uri` is for errors.
    pub fn parse(uri: &str, rest: &str) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::Uri {
            uri: uri.to_owned(),
            reason,
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let handle = match path {
            "" => DEFAULT_HANDLE,
            _ => match path.strip_prefix("//") {
                Some("") => DEFAULT_HANDLE,
                Some(hex) => parse_handle(hex).ok_or_else(|| {
                    bad(format!(
                        "{hex:?} is not a persistent owner handle: write it in hex, \
                         0x81000000 to 0x817FFFFF (default 0x{DEFAULT_HANDLE:08x})"
                    ))
                })?,
                None => return Err(bad("expected tpm: or tpm://HANDLE?tcti=...".into())),
            },
        };
        let mut tcti = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("tcti", value)) if tcti.is_none() && !value.is_empty() => {
                    tcti = Some(value.to_owned());
                }
                Some(("tcti", _)) => return Err(bad("tcti must be given once, not empty".into())),
                _ => {
                    return Err(bad(format!(
                        "unknown query part {pair:?}: only tcti=... is understood"
                    )));
                }
            }
        }
        let tcti = tcti.unwrap_or_else(|| DEFAULT_TCTI.to_owned());
        TctiNameConf::from_str(&tcti).map_err(|e| {
            bad(format!(
                "tcti {tcti:?} is not understood ({e}): use device:/dev/tpmrm0, \
                 swtpm:host=H,port=P, mssim:host=H,port=P or tabrmd:..."
            ))
        })?;
        Ok(Self { handle, tcti })
    }
}

fn parse_handle(text: &str) -> Option<u32> {
    let hex = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .filter(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))?;
    let value = u32::from_str_radix(hex, 16).ok()?;
    (0x8100_0000..=0x817F_FFFF)
        .contains(&value)
        .then_some(value)
}

/// An ECDSA P-256 key held by a TPM at a persistent handle.
pub struct TpmKey {
    tpm: Mutex<Tpm>,
    public: PublicKey,
    verifying: p256::ecdsa::VerifyingKey,
    location: TpmLocation,
}

/// The TSS context and the key's handle in it, used by one thread at a time.
struct Tpm {
    context: Context,
    key: KeyHandle,
}

/// Opens the TPM key at `location` (parsed from `uri`, named in errors), creating and
/// persisting it on first boot.
pub fn open(uri: &str, location: &TpmLocation) -> Result<TpmKey, KeyError> {
    let fail = |what: &str, e: tss_esapi::Error| KeyError::Unavailable {
        store: uri.to_owned(),
        reason: format!("{what} (TPM via {}): {e}", location.tcti),
    };
    let tcti = TctiNameConf::from_str(&location.tcti).map_err(|e| KeyError::Uri {
        uri: uri.to_owned(),
        reason: format!("the TCTI {:?} is not understood: {e}", location.tcti),
    })?;
    let mut context = Context::new(tcti).map_err(|e| {
        fail(
            "cannot reach the TPM; check that it exists and rigd may use it",
            e,
        )
    })?;
    let persistent = PersistentTpmHandle::new(location.handle).map_err(|e| KeyError::Uri {
        uri: uri.to_owned(),
        reason: format!("0x{:08x} is not a persistent handle: {e}", location.handle),
    })?;

    let object = if is_persistent_present(&mut context, location.handle)
        .map_err(|e| fail("cannot list the persistent handles", e))?
    {
        context
            .execute_without_session(|ctx| {
                ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent))
            })
            .map_err(|e| fail("cannot load the persistent rig key", e))?
    } else {
        let object = create_persistent(&mut context, persistent)
            .map_err(|e| fail("cannot create the rig key", e))?;
        tracing::info!(
            handle = %format_args!("0x{:08x}", location.handle),
            tcti = %location.tcti,
            "created a new rig identity key in the TPM and made it persistent"
        );
        object
    };
    let key = KeyHandle::from(object);
    let (public, _, _) = context
        .execute_without_session(|ctx| ctx.read_public(key))
        .map_err(|e| fail("cannot read the rig key's public part", e))?;
    let verifying = p256_public(&public).map_err(|reason| KeyError::Unavailable {
        store: uri.to_owned(),
        reason: format!(
            "handle 0x{:08x} holds {reason}; it is not the rig key: name another handle",
            location.handle
        ),
    })?;
    let public = PublicKey::P256(verifying.to_encoded_point(true).as_bytes().to_vec());
    Ok(TpmKey {
        tpm: Mutex::new(Tpm { context, key }),
        public,
        verifying,
        location: location.clone(),
    })
}

/// Whether an object is at `handle` (asking for one handle from there on).
fn is_persistent_present(context: &mut Context, handle: u32) -> tss_esapi::Result<bool> {
    let (data, _) = context.get_capability(CapabilityType::Handles, handle, 1)?;
    Ok(match data {
        CapabilityData::Handles(list) => list.iter().any(|found| u32::from(*found) == handle),
        _ => false,
    })
}

/// Creates the signing key as an owner-hierarchy primary and moves it to `persistent`.
fn create_persistent(
    context: &mut Context,
    persistent: PersistentTpmHandle,
) -> tss_esapi::Result<ObjectHandle> {
    let template = tss_esapi::utils::create_unrestricted_signing_ecc_public(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )?;
    context.execute_with_session(Some(AuthSession::Password), |ctx| {
        let transient = ctx
            .create_primary(Hierarchy::Owner, template, None, None, None, None)?
            .key_handle;
        let made = ctx.evict_control(
            Provision::Owner,
            transient.into(),
            Persistent::Persistent(persistent),
        );
        // The transient copy is not needed whether or not the persistent one was made.
        let flushed = ctx.flush_context(transient.into());
        let object = made?;
        flushed?;
        Ok(object)
    })
}

/// The P-256 verifying key of a TPM public area, or what the area holds instead.
fn p256_public(public: &Public) -> Result<p256::ecdsa::VerifyingKey, String> {
    let Public::Ecc {
        object_attributes,
        parameters,
        unique,
        ..
    } = public
    else {
        return Err("a key that is not an ECC key".into());
    };
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(format!(
            "an ECC key on {:?}, not P-256",
            parameters.ecc_curve()
        ));
    }
    let sha256_ecdsa = EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256));
    if ![sha256_ecdsa, EccScheme::Null].contains(&parameters.ecc_scheme()) {
        return Err(format!(
            "a P-256 key bound to {:?}, not ECDSA with SHA-256",
            parameters.ecc_scheme()
        ));
    }
    if !object_attributes.sign_encrypt() || object_attributes.restricted() {
        return Err("a P-256 key that is not an unrestricted signing key".into());
    }
    let (x, y) = (
        left_pad(unique.x()).ok_or("a malformed x coordinate")?,
        left_pad(unique.y()).ok_or("a malformed y coordinate")?,
    );
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    p256::ecdsa::VerifyingKey::from_encoded_point(&point)
        .map_err(|_| "a P-256 point that is not on the curve".into())
}

/// A big-endian field element of at most 32 bytes, left-padded to 32.
fn left_pad(value: &EccParameter) -> Option<[u8; 32]> {
    let bytes = value.value();
    let start = 32usize.checked_sub(bytes.len())?;
    let mut out = [0u8; 32];
    out.get_mut(start..)?.copy_from_slice(bytes);
    Some(out)
}

impl TpmKey {
    /// Where the key lives: its persistent handle and TCTI.
    pub fn location(&self) -> &TpmLocation {
        &self.location
    }
}

/// The TPM's name of a public area: its name algorithm (SHA-256, `0x000b`) and the SHA-256 of
/// the marshalled `TPMT_PUBLIC`.
fn sha256_name(public: &Public) -> tss_esapi::Result<Vec<u8>> {
    let area = public.marshall()?;
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &area).as_ref());
    Ok(name)
}

/// The attestation lines of a key's public area and the name the TPM gave it.
fn attestation(
    handle: u32,
    public: &Public,
    name: &[u8],
) -> Result<Vec<(&'static str, String)>, String> {
    let computed =
        sha256_name(public).map_err(|e| format!("cannot marshal the public area: {e}"))?;
    if computed != name {
        return Err("the TPM's name of the key does not match its public area".into());
    }
    let a = public.object_attributes();
    let flags = [
        ("fixedTPM", a.fixed_tpm()),
        ("fixedParent", a.fixed_parent()),
        ("sensitiveDataOrigin", a.sensitive_data_origin()),
        ("userWithAuth", a.user_with_auth()),
        ("sign", a.sign_encrypt()),
        ("restricted", a.restricted()),
        ("decrypt", a.decrypt()),
    ];
    let set: Vec<&str> = flags
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect();
    let sealed = a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin();
    Ok(vec![
        ("handle", format!("0x{handle:08x} (persistent)")),
        ("name", format!("0x{}", hex::encode(name))),
        ("attributes", set.join(" ")),
        (
            "exportable",
            if sealed {
                "no: generated inside this TPM (sensitiveDataOrigin), bound to it (fixedTPM, fixedParent)".into()
            } else {
                "YES: the key may leave this TPM".into()
            },
        ),
        (
            "checked",
            "the name is SHA-256 of the public area read from the TPM, which carries the attributes above".into(),
        ),
    ])
}

impl KeyStore for TpmKey {
    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError> {
        let tpm_err =
            |e: tss_esapi::Error| KeyError::Sign(format!("TPM via {}: {e}", self.location.tcti));
        let digest_in = Digest::try_from(digest.to_vec()).map_err(tpm_err)?;
        // The key is unrestricted: a null hashcheck ticket is enough for an outside digest.
        let validation = TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        }
        .try_into()
        .map_err(tpm_err)?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let signature = {
            // A panic while holding the lock leaves the TSS context usable: every call is a
            // complete TPM command.
            let mut tpm = self.tpm.lock().unwrap_or_else(PoisonError::into_inner);
            let key = tpm.key;
            tpm.context
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.sign(key, digest_in, scheme, validation)
                })
                .map_err(tpm_err)?
        };
        let tss_esapi::structures::Signature::EcDsa(ecc) = signature else {
            return Err(KeyError::Sign(
                "the TPM answered with a non-ECDSA signature".into(),
            ));
        };
        let malformed = || KeyError::Sign("the TPM answered with a malformed r or s".into());
        let r = left_pad(ecc.signature_r()).ok_or_else(malformed)?;
        let s = left_pad(ecc.signature_s()).ok_or_else(malformed)?;
        let sig = p256::ecdsa::Signature::from_scalars(r, s).map_err(|_| malformed())?;
        let sig = sig.normalize_s().unwrap_or(sig);
        // A faulty TPM must not put its name to a wrong signature.
        self.verifying
            .verify_prehash(digest, &sig)
            .map_err(|_| KeyError::Sign("the TPM's signature does not verify".into()))?;
        Ok(Signature(sig.to_bytes().to_vec()))
    }

    fn describe(&self) -> String {
        format!(
            "tpm P-256 handle 0x{:08x} via {} (hardware-held)",
            self.location.handle, self.location.tcti
        )
    }

    fn attest(&self) -> Result<Vec<(&'static str, String)>, KeyError> {
        let unavailable = |reason: String| KeyError::Unavailable {
            store: format!("TPM via {}", self.location.tcti),
            reason,
        };
        let (public, name, _) = {
            let mut tpm = self.tpm.lock().unwrap_or_else(PoisonError::into_inner);
            let key = tpm.key;
            tpm.context
                .execute_without_session(|ctx| ctx.read_public(key))
                .map_err(|e| unavailable(format!("cannot read the rig key's public area: {e}")))?
        };
        attestation(self.location.handle, &public, name.value()).map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::conformance;

    use rigd_testkit::swtpm::{free_port_pair, Swtpm};
    use std::time::Instant;

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Opens the key the way `keys::open` does: the URI's rest parsed, then opened.
    fn open_rest(uri: &str, rest: &str) -> Result<TpmKey, KeyError> {
        open(uri, &TpmLocation::parse(uri, rest)?)
    }

    fn open_boxed(uri: &str, rest: &str) -> Result<Box<dyn KeyStore>, KeyError> {
        open_rest(uri, rest).map(|k| Box::new(k) as Box<dyn KeyStore>)
    }

    #[test]
    fn a_tpm_key_is_created_once_persists_and_signs_verifiably() {
        let state = tempdir();
        let tpm = Swtpm::start(state.path());
        let rest = tpm.rest();
        let uri = format!("tpm:{rest}");
        conformance::check(&|| open_boxed(&uri, &rest));
        let key = open_rest(&uri, &rest).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            key.describe(),
            format!(
                "tpm P-256 handle 0x81010001 via swtpm:host=127.0.0.1,port={} (hardware-held)",
                tpm.port
            )
        );
    }

    #[test]
    fn the_rig_key_survives_a_tpm_restart() {
        let state = tempdir();
        let first = {
            let tpm = Swtpm::start(state.path());
            open_rest(&format!("tpm:{}", tpm.rest()), &tpm.rest())
                .unwrap_or_else(|e| panic!("{e}"))
                .public_key()
        };
        let tpm = Swtpm::start(state.path());
        let again = open_rest(&format!("tpm:{}", tpm.rest()), &tpm.rest())
            .unwrap_or_else(|e| panic!("{e}"))
            .public_key();
        assert_eq!(again, first);
    }

    #[test]
    fn a_replaced_tpm_changes_the_rig_identity() {
        let (state_a, state_b) = (tempdir(), tempdir());
        let (a, b) = (Swtpm::start(state_a.path()), Swtpm::start(state_b.path()));
        let key_a = open_rest("tpm:a", &a.rest()).unwrap_or_else(|e| panic!("{e}"));
        let key_b = open_rest("tpm:b", &b.rest()).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(key_a.public_key(), key_b.public_key());
    }

    #[test]
    fn a_second_handle_holds_a_second_key_slot() {
        let state = tempdir();
        let tpm = Swtpm::start(state.path());
        let tcti = format!("swtpm:host=127.0.0.1,port={}", tpm.port);
        let rest = format!("//0x81010002?tcti={tcti}");
        let key = open_rest("tpm:x", &rest).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.location().handle, 0x8101_0002);
        assert!(key.describe().contains("handle 0x81010002"));
    }

    #[test]
    fn an_unreachable_tpm_is_a_clear_error() {
        // A port that was free a moment ago: nothing listens there.
        let port = free_port_pair().unwrap_or_else(|| panic!("no free port"));
        let rest = format!("//?tcti=swtpm:host=127.0.0.1,port={port}");
        let err = open_rest("tpm:unreachable", &rest)
            .err()
            .unwrap_or_else(|| panic!("opening an unreachable TPM succeeded"));
        let text = err.to_string();
        assert!(matches!(err, KeyError::Unavailable { .. }), "{text}");
        assert!(text.contains("cannot reach the TPM"), "{text}");
        assert!(text.contains(&format!("port={port}")), "{text}");
    }

    #[test]
    fn a_malformed_tpm_uri_is_refused() {
        for rest in [
            "x",
            "//81010001",
            "//0x1",
            "//0x81800000",
            "//0xzz",
            "//0x+8101001",
            "//?tcti=",
            "//?tcti=nonsense:x",
            "//?handle=1",
            "//?tcti=device&tcti=device",
        ] {
            assert!(
                matches!(TpmLocation::parse("tpm:", rest), Err(KeyError::Uri { .. })),
                "{rest:?} must be refused"
            );
        }
        let parsed = |rest| TpmLocation::parse("tpm:", rest).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parsed(""),
            TpmLocation {
                handle: DEFAULT_HANDLE,
                tcti: DEFAULT_TCTI.into()
            }
        );
        assert_eq!(parsed("//").handle, DEFAULT_HANDLE);
        assert_eq!(parsed("//0x8101000A?tcti=swtpm:port=1").handle, 0x8101_000a);
    }

    /// Signatures per second through swtpm; run with `--ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn swtpm_signatures_per_second() {
        let state = tempdir();
        let tpm = Swtpm::start(state.path());
        let key = open_rest("tpm:bench", &tpm.rest()).unwrap_or_else(|e| panic!("{e}"));
        let n = 500u32;
        let digests: Vec<Hash32> = (0..n)
            .map(|i| rigd_protocol::digest::keccak256(&[&i.to_be_bytes()]))
            .collect();
        let rate = |secs: f64| f64::from(n) / secs;
        // The TPM's Sign command alone, without the local checks of `sign_digest`.
        let start = Instant::now();
        {
            let mut tpm = key.tpm.lock().unwrap_or_else(PoisonError::into_inner);
            let handle = tpm.key;
            for d in &digests {
                let validation = TPMT_TK_HASHCHECK {
                    tag: TPM2_ST_HASHCHECK,
                    hierarchy: TPM2_RH_NULL,
                    digest: Default::default(),
                };
                let scheme = SignatureScheme::EcDsa {
                    hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                };
                tpm.context
                    .execute_with_session(Some(AuthSession::Password), |ctx| {
                        let digest = Digest::try_from(d.to_vec())?;
                        ctx.sign(handle, digest, scheme, validation.try_into()?)
                    })
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let raw = rate(start.elapsed().as_secs_f64());
        let start = Instant::now();
        for d in &digests {
            key.sign_digest(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let full = rate(start.elapsed().as_secs_f64());
        println!(
            "swtpm, {n} signatures: TPM Sign command {raw:.0}/s; sign_digest (with low-s and \
             the local verify, in this build's profile) {full:.0}/s"
        );
    }
}
