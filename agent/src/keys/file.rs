//! The development backend: a secp256k1 or P-256 secret in a file (mode 0600) under the
//! state directory. Refused unless rig.conf allows software keys; never hardware-held.

use super::{KeyError, KeyStore};
use rigd_protocol::digest::Hash32;
use rigd_protocol::{PublicKey, Signature};
use std::path::{Path, PathBuf};

/// The curve of a file key.
#[derive(Clone, Copy)]
pub enum Curve {
    /// secp256k1 (Ethereum `ecrecover`).
    Secp256k1,
    /// NIST P-256.
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

impl FileKey {
    /// Loads the key at `path`, creating it (from the system's randomness) when missing.
    pub fn open_or_create(path: &Path, curve: Curve) -> Result<Self, KeyError> {
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
                crate::state_dir::write_atomic(path, &secret, 0o600).map_err(io)?;
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
