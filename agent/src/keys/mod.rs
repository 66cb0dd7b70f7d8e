//! Receipt signing keys behind the [`KeyStore`] trait, chosen by URI.
//!
//! Each backend lives in its own module; the private key never crosses the trait (a key
//! handle is opaque). The development backend ([`file`]) keeps a secp256k1 or P-256 secret in
//! a file under the state directory; it is refused unless `allow_software_key = true`, and it
//! logs loudly that the key is not hardware-held. Every backend passes the same conformance
//! checks (`conformance.rs`, tests only).

pub mod file;
pub mod guard;
mod location;
pub mod pkcs11;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod yubihsm;

pub use location::KeyLocation;
use location::Place;

use rigd_protocol::digest::Hash32;
use rigd_protocol::{KeyHealth, PublicKey, Signature};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a key store could not be opened or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The URI names no known backend or is malformed.
    #[error("key URI {uri:?}: {reason}")]
    Uri {
        /// The URI.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// A software key without `allow_software_key = true`.
    #[error("key {uri:?} is a software key; set allow_software_key = true in rig.conf to use it (development only)")]
    SoftwareRefused {
        /// The URI.
        uri: String,
    },
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file holds no valid key.
    #[error("key file {path} holds no valid {curve} key")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The curve expected.
        curve: &'static str,
    },
    /// The key store (TPM, HSM, token) cannot be reached or refused to open the key: the
    /// hardware is missing, unreachable, locked or holds something else at the key's place.
    #[error("key store {store} cannot be used: {reason}")]
    Unavailable {
        /// The key store, as the URI names it (never with a PIN).
        store: String,
        /// What failed and what to check.
        reason: String,
    },
    /// The signer failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The key store failed a moment ago and is not asked again before its backoff ends.
    #[error("the key store is reopened in {retry_in_ms} ms (it failed: {reason})")]
    Backoff {
        /// How long until the next attempt.
        retry_in_ms: u64,
        /// The failure that started the wait.
        reason: String,
    },
}

/// A key that signs 32-byte digests and never shows its private part.
pub trait KeyStore: Send + Sync {
    /// The public key receipts are checked against.
    fn public_key(&self) -> PublicKey;
    /// Signs a prehashed digest (low-s, for secp256k1 with the recovery byte).
    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError>;
    /// Where the key lives, for status and logs.
    fn describe(&self) -> String;
    /// What the key store itself vouches for about the key (`rigd keys attest`), as labelled
    /// lines; empty where the backend has nothing to attest.
    fn attest(&self) -> Result<Vec<(&'static str, String)>, KeyError> {
        Ok(vec![])
    }
    /// Whether the key store answers; a store without a connection to lose always does.
    fn health(&self) -> KeyHealth {
        KeyHealth::Answering
    }
}

/// A key whose every signature takes `delay` longer: a software stand-in for a slow hardware
/// key (a real TPM signs a few times per second), from the `file:` URI's `sign_delay_ms=N`.
pub struct Slow {
    /// The key that signs.
    pub inner: Box<dyn KeyStore>,
    /// Added to every signature.
    pub delay: Duration,
}

impl KeyStore for Slow {
    fn public_key(&self) -> PublicKey {
        self.inner.public_key()
    }
    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError> {
        std::thread::sleep(self.delay);
        self.inner.sign_digest(digest)
    }
    fn describe(&self) -> String {
        format!(
            "{}, each signature slowed by {} ms",
            self.inner.describe(),
            self.delay.as_millis()
        )
    }
}

/// Opens the key at `location` behind a deadline of `deadline` per call, reopening its
/// store after a failure ([`guard::GuardedKey`]); relative `file:` paths are under
/// `state_dir`. This is how rigd holds its keys.
pub fn open_guarded(
    location: &KeyLocation,
    state_dir: &Path,
    allow_software: bool,
    deadline: Duration,
) -> Result<guard::GuardedKey, KeyError> {
    let (location, state_dir) = (location.clone(), state_dir.to_owned());
    guard::GuardedKey::open(
        Box::new(move || open_at(&location, &state_dir, allow_software)),
        guard::Timing::with_deadline(deadline),
    )
}

/// Opens the key named by `uri` with no deadline on its calls; relative `file:` paths are
/// under `state_dir`.
pub fn open(
    uri: &str,
    state_dir: &Path,
    allow_software: bool,
) -> Result<Box<dyn KeyStore>, KeyError> {
    open_at(&KeyLocation::parse(uri)?, state_dir, allow_software)
}

/// Opens the key at `location` with no deadline on its calls; relative `file:` paths are
/// under `state_dir`.
pub fn open_at(
    location: &KeyLocation,
    state_dir: &Path,
    allow_software: bool,
) -> Result<Box<dyn KeyStore>, KeyError> {
    let uri = location.uri();
    match &location.place {
        Place::File {
            path,
            curve,
            sign_delay,
        } => {
            if !allow_software {
                return Err(KeyError::SoftwareRefused {
                    uri: uri.to_owned(),
                });
            }
            let path = KeyLocation::file_path(path, state_dir);
            let key = file::FileKey::open_or_create(&path, *curve)?;
            tracing::warn!(
                key = %key.describe(),
                "receipts are signed with a SOFTWARE key that is NOT hardware-held: development only"
            );
            Ok(match sign_delay {
                Some(delay) => Box::new(Slow {
                    inner: Box::new(key),
                    delay: *delay,
                }),
                None => Box::new(key),
            })
        }
        #[cfg(feature = "tpm")]
        Place::Tpm(at) => tpm::open(uri, at).map(|k| Box::new(k) as Box<dyn KeyStore>),
        Place::YubiHsm(at) => {
            yubihsm::YubiHsmKey::open(uri, at).map(|k| Box::new(k) as Box<dyn KeyStore>)
        }
        Place::Pkcs11(at) => Ok(Box::new(pkcs11::open_parsed(uri, at)?)),
    }
}

/// How the key compares with the identity this rig had before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// First start: the key is now the rig's identity.
    New,
    /// The same key as before.
    Same,
    /// Another key than before: the key store was replaced or cleared (a new TPM, a reset
    /// HSM). Receipts signed from now on verify only against the new key, so the fleet must
    /// learn it (re-provisioning).
    Changed {
        /// The key the rig had, as text.
        previous: String,
    },
}

/// Compares `key` with the identity recorded in `state_dir/rig-identity` and records it.
pub fn check_identity(
    state: &crate::state_dir::StateDir,
    key: &PublicKey,
) -> Result<Identity, KeyError> {
    let path = state.file(crate::state_dir::StateFile::Identity);
    let now = key.to_string();
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    let verdict = match std::fs::read_to_string(&path) {
        Ok(previous) if previous.trim() == now => return Ok(Identity::Same),
        Ok(previous) => Identity::Changed {
            previous: previous.trim().to_owned(),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Identity::New,
        Err(e) => return Err(io(e)),
    };
    state
        .write(
            crate::state_dir::StateFile::Identity,
            format!("{now}\n").as_bytes(),
        )
        .map_err(io)?;
    Ok(verdict)
}

#[cfg(test)]
pub(crate) mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_key_is_created_once_and_signs_verifiably() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for uri in ["file:k1", "file:k2?curve=p256"] {
            conformance::check(&|| open(uri, dir.path(), true));
        }
    }

    #[test]
    fn a_slowed_file_key_signs_the_same_after_its_delay() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let uri = "file:k3?curve=p256&sign_delay_ms=30";
        conformance::check(&|| open(uri, dir.path(), true));
        let slow = open(uri, dir.path(), true).unwrap_or_else(|e| panic!("{e}"));
        let t = std::time::Instant::now();
        let sig = slow.sign_digest(&[9; 32]).unwrap_or_else(|e| panic!("{e}"));
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!(slow.public_key().verify(&[9; 32], &sig), Ok(()));
        assert!(
            slow.describe().contains("slowed by 30 ms"),
            "{}",
            slow.describe()
        );
    }

    #[test]
    fn a_replaced_key_store_is_reported_as_a_changed_identity() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = PublicKey::P256(vec![2; 33]);
        let b = PublicKey::P256(vec![3; 33]);
        let state = crate::state_dir::StateDir::new(dir.path());
        let check = |k: &PublicKey| check_identity(&state, k).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check(&a), Identity::New);
        assert_eq!(check(&a), Identity::Same);
        assert_eq!(
            check(&b),
            Identity::Changed {
                previous: a.to_string()
            }
        );
        assert_eq!(check(&b), Identity::Same);
    }

    #[test]
    fn a_software_key_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            open("file:k", dir.path(), false),
            Err(KeyError::SoftwareRefused { .. })
        ));
        assert!(matches!(
            open("nope:k", dir.path(), true),
            Err(KeyError::Uri { .. })
        ));
        assert!(matches!(
            open("file:k?curve=x", dir.path(), true),
            Err(KeyError::Uri { .. })
        ));
        assert!(matches!(
            open("file:k?sign_delay_ms=soon", dir.path(), true),
            Err(KeyError::Uri { .. })
        ));
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("k"), b"short").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            open("file:k", dir.path(), true),
            Err(KeyError::Corrupt { .. })
        ));
    }
}
