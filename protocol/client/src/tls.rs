//! TLS client settings for the fleet's MQTT links (rigd, the coordinator, rigctl, the
//! provisioner).
//!
//! Every link trusts one CA (the fleet CA written by `rig-provisioner ca init`) and shows a
//! client certificate, because the broker requires one (`require_certificate true`) and takes
//! the certificate's common name as the MQTT user name the ACL is checked against.
//!
//! The client key comes either from a PEM file (coordinator, operators, the provisioner) or
//! from a [`DigestSigner`]: a key that never leaves its store (a rig's TPM, HSM or PKCS#11
//! token). For the latter the TLS handshake's CertificateVerify is computed here as
//! ECDSA P-256 with SHA-256: the handshake transcript is hashed, the 32-byte digest is signed
//! by the store, and the `r ‖ s` signature is DER-encoded as TLS wants it.

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ClientConfig, RootCertStore, SignatureAlgorithm, SignatureScheme};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the settings (for example a key that does not fit the certificate).
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS part of a client's configuration file (`[tls]` in rig.conf and the coordinator's
/// configuration, flags in rigctl): the fleet CA and, for clients that keep their key in a
/// file, the certificate and key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// PEM file of the client's certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file of the client's private key (PKCS#8, SEC1 or PKCS#1). Rigs leave it out:
    /// their key stays in the key store.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// A P-256 key that signs SHA-256 digests inside its store and never shows its private part.
pub trait DigestSigner: Send + Sync {
    /// Signs a 32-byte SHA-256 digest; returns the signature as `r ‖ s` (64 bytes).
    fn sign_p256_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], String>;
    /// Where the key lives, for logs.
    fn describe(&self) -> String;
}

/// Who the client is towards the broker.
pub enum ClientIdentity {
    /// A certificate and its private key, both from PEM files.
    KeyFile {
        /// Certificate chain file.
        cert: PathBuf,
        /// Private key file.
        key: PathBuf,
    },
    /// A certificate chain whose key signs inside a key store.
    Signer {
        /// Certificate chain, leaf first.
        chain: Vec<CertificateDer<'static>>,
        /// The key.
        signer: Arc<dyn DigestSigner>,
    },
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem {
        what: "certificate file",
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Reads certificates from PEM text.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem {
        what: "certificate chain",
        path: PathBuf::new(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The rustls settings of a client that trusts the CA in `ca` and shows `identity`.
pub fn client_config(ca: &Path, identity: ClientIdentity) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
    let config = match identity {
        ClientIdentity::KeyFile { cert, key } => {
            let chain = load_certs(&cert)?;
            let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| TlsError::Pem {
                what: "private key file",
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        ClientIdentity::Signer { chain, signer } => {
            let key = Arc::new(StoreKey(signer));
            builder.with_client_cert_resolver(Arc::new(Resolver(Arc::new(CertifiedKey::new(
                chain, key,
            )))))
        }
    };
    Ok(Arc::new(config))
}

/// The same settings from a [`TlsFiles`] section whose key is a file.
pub fn client_config_from_files(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let key = files.key.clone().ok_or_else(|| TlsError::Pem {
        what: "private key file",
        path: PathBuf::new(),
        reason: "no `key` given in the TLS settings".into(),
    })?;
    client_config(
        &files.ca,
        ClientIdentity::KeyFile {
            cert: files.cert.clone(),
            key,
        },
    )
}

/// The rumqttc transport for `config`.
pub fn transport(config: Arc<ClientConfig>) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config))
}

#[derive(Debug)]
struct Resolver(Arc<CertifiedKey>);

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        schemes
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Clone)]
struct StoreKey(Arc<dyn DigestSigner>);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreKey").field(&self.0.describe()).finish()
    }
}

impl SigningKey for StoreKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for StoreKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let digest = sha256(message);
        let rs = self.0.sign_p256_digest(&digest).map_err(|e| {
            tracing::error!(key = %self.0.describe(), error = %e, "TLS handshake signature failed");
            rustls::Error::General(format!("key store could not sign: {e}"))
        })?;
        der_signature(&rs)
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// `r ‖ s` as the DER `ECDSA-Sig-Value` that TLS and X.509 carry.
pub fn der_signature(rs: &[u8; 64]) -> Result<Vec<u8>, rustls::Error> {
    p256::ecdsa::Signature::from_slice(rs)
        .map(|s| s.to_der().as_bytes().to_vec())
        .map_err(|_| rustls::Error::General("key store returned an invalid P-256 signature".into()))
}

/// The common name of the first certificate in a PEM file (the MQTT user name the broker
/// gives that client).
pub fn common_name(cert: &Path) -> Result<String, TlsError> {
    let bad = |reason: &str| TlsError::Pem {
        what: "certificate file",
        path: cert.to_owned(),
        reason: reason.to_owned(),
    };
    let certs = load_certs(cert)?;
    let leaf = certs.first().ok_or_else(|| bad("empty"))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|_| bad("not an X.509 certificate"))?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| bad("no common name"))?;
    Ok(cn.to_owned())
}
