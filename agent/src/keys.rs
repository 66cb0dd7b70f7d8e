//! Receipt signing keys behind the [`KeyStore`] trait, chosen by URI.
//!
//! Only the development backend exists here: `file:` keeps a secp256k1 or P-256 secret in a
//! file under the state directory. It is refused unless `allow_software_key = true`, and it
//! logs loudly that the key is not hardware-held. The private key never leaves this module.

use rigd_protocol::digest::Hash32;
use rigd_protocol::{PublicKey, Signature};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// The signer failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A key that signs 32-byte digests and never shows its private part.
pub trait KeyStore: Send + Sync {
    /// The public key receipts are checked against.
    fn public_key(&self) -> PublicKey;
    /// Signs a prehashed digest (low-s, for secp256k1 with the recovery byte).
    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError>;
    /// Where the key lives, for status and logs.
    fn describe(&self) -> String;
}

#[derive(Clone, Copy)]
enum Curve {
    Secp256k1,
    P256,
}

enum Secret {
    K256(k256::ecdsa::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

/// A software key in a file. Development only.
pub struct FileKey {
    secret: Secret,
    path: PathBuf,
}

/// Opens the key named by `uri`; relative `file:` paths are under `state_dir`.
pub fn open(
    uri: &str,
    state_dir: &Path,
    allow_software: bool,
) -> Result<Box<dyn KeyStore>, KeyError> {
    let bad = |reason: &str| KeyError::Uri {
        uri: uri.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = uri
        .split_once(':')
        .ok_or_else(|| bad("no scheme (expected file:...)"))?;
    match scheme {
        "file" => {
            if !allow_software {
                return Err(KeyError::SoftwareRefused {
                    uri: uri.to_owned(),
                });
            }
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let curve = match query {
                "" | "curve=secp256k1" => Curve::Secp256k1,
                "curve=p256" => Curve::P256,
                _ => return Err(bad("query must be curve=secp256k1 or curve=p256")),
            };
            let path = match path.strip_prefix("//") {
                Some(abs) if abs.starts_with('/') => PathBuf::from(abs),
                Some(_) => return Err(bad("file:// must be followed by an absolute path")),
                None if path.is_empty() => return Err(bad("no file name")),
                None => state_dir.join(path),
            };
            let key = FileKey::open_or_create(&path, curve)?;
            tracing::warn!(
                key = %key.describe(),
                "receipts are signed with a SOFTWARE key that is NOT hardware-held: development only"
            );
            Ok(Box::new(key))
        }
        "tpm" | "yubihsm" | "pkcs11" => {
            Err(bad("this hardware backend is not built into this rigd"))
        }
        _ => Err(bad("unknown scheme")),
    }
}

impl FileKey {
    fn open_or_create(path: &Path, curve: Curve) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                    .map_err(|_| KeyError::Sign("no randomness".into()))?;
                write_private(path, &secret).map_err(io)?;
                secret.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let corrupt = || KeyError::Corrupt {
            path: path.to_owned(),
            curve: match curve {
                Curve::Secp256k1 => "secp256k1",
                Curve::P256 => "P-256",
            },
        };
        let secret = match curve {
            Curve::Secp256k1 => {
                Secret::K256(k256::ecdsa::SigningKey::from_slice(&bytes).map_err(|_| corrupt())?)
            }
            Curve::P256 => {
                Secret::P256(p256::ecdsa::SigningKey::from_slice(&bytes).map_err(|_| corrupt())?)
            }
        };
        Ok(Self {
            secret,
            path: path.to_owned(),
        })
    }
}

fn write_private(path: &Path, secret: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl KeyStore for FileKey {
    fn public_key(&self) -> PublicKey {
        match &self.secret {
            Secret::K256(k) => {
                PublicKey::Secp256k1(k.verifying_key().to_encoded_point(true).as_bytes().to_vec())
            }
            Secret::P256(k) => {
                PublicKey::P256(k.verifying_key().to_encoded_point(true).as_bytes().to_vec())
            }
        }
    }

    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError> {
        match &self.secret {
            Secret::K256(k) => {
                let (sig, recid) = k
                    .sign_prehash_recoverable(digest)
                    .map_err(|e| KeyError::Sign(e.to_string()))?;
                let (sig, recid) = match sig.normalize_s() {
                    Some(low) => (
                        low,
                        k256::ecdsa::RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced()),
                    ),
                    None => (sig, recid),
                };
                let mut out = sig.to_bytes().to_vec();
                out.push(27 + recid.to_byte());
                Ok(Signature(out))
            }
            Secret::P256(k) => {
                use p256::ecdsa::signature::hazmat::PrehashSigner;
                let sig: p256::ecdsa::Signature = k
                    .sign_prehash(digest)
                    .map_err(|e| KeyError::Sign(e.to_string()))?;
                let sig = sig.normalize_s().unwrap_or(sig);
                Ok(Signature(sig.to_bytes().to_vec()))
            }
        }
    }

    fn describe(&self) -> String {
        let curve = match self.secret {
            Secret::K256(_) => "secp256k1",
            Secret::P256(_) => "P-256",
        };
        format!(
            "file {curve} {} (software, not hardware-held)",
            self.path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_key_is_created_once_and_signs_verifiably() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for uri in ["file:k1", "file:k2?curve=p256"] {
            let a = open(uri, dir.path(), true).unwrap_or_else(|e| panic!("{e}"));
            let b = open(uri, dir.path(), true).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.public_key(), b.public_key(), "key must persist");
            let digest = [42u8; 32];
            let sig = a.sign_digest(&digest).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.public_key().verify(&digest, &sig), Ok(()));
        }
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
