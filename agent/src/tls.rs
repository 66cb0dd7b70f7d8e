//! Mutual TLS towards the broker with the rig's key kept in its [`KeyStore`].
//!
//! The rig's certificate (common name = rig id) is read from `[tls] cert`; the handshake is
//! signed by the key named by `tls_key` (default: the receipt key `key`) through
//! [`KeyStore::sign_digest`], so a TPM, HSM or PKCS#11 key never leaves its store. TLS knows
//! no secp256k1: the TLS key must be P-256.

use crate::config::{RigSettings, RigTls};
use crate::keys::{KeyError, KeyStore};
use crate::RunError;
use rigd_client::{ClientIdentity, DigestSigner};
use rigd_protocol::PublicKey;
use std::sync::Arc;

/// A [`KeyStore`] seen as the P-256 signer of TLS handshakes.
pub struct StoreSigner(pub Arc<dyn KeyStore>);

impl DigestSigner for StoreSigner {
    fn sign_p256_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], String> {
        let sig = self.0.sign_digest(digest).map_err(|e| e.to_string())?;
        <[u8; 64]>::try_from(sig.0.as_slice()).map_err(|_| {
            format!(
                "expected a 64-byte P-256 signature, got {} bytes",
                sig.0.len()
            )
        })
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// Opens the TLS key: `tls_key` when set and different from `key`, else the receipt key.
pub fn open_key(
    config: &RigSettings,
    receipt_key: &Arc<dyn KeyStore>,
) -> Result<Arc<dyn KeyStore>, KeyError> {
    let key = match &config.tls_key {
        Some(uri) if *uri != config.key => Arc::new(config.open_key(uri)?),
        _ => receipt_key.clone(),
    };
    match key.public_key() {
        PublicKey::P256(_) => Ok(key),
        PublicKey::Secp256k1(_) => Err(KeyError::Uri {
            uri: config.tls_key.as_ref().unwrap_or(&config.key).to_string(),
            reason: "TLS needs a P-256 key and this one is secp256k1: set tls_key in rig.conf to a P-256 key (e.g. \"file:tls-key?curve=p256\" or a TPM key)".into(),
        }),
    }
}

/// The rustls settings of the rig's link with the certificate `tls`, or `None` without one.
pub fn client_config(
    config: &RigSettings,
    tls: Option<&RigTls>,
    receipt_key: &Arc<dyn KeyStore>,
) -> Result<Option<Arc<rustls::ClientConfig>>, RunError> {
    let Some(files) = tls else {
        return Ok(None);
    };
    let key = open_key(config, receipt_key)?;
    let chain =
        rigd_client::load_certs(&files.cert).map_err(|e| RunError::Runtime(e.to_string()))?;
    tracing::info!(key = %key.describe(), cert = %files.cert.display(), "mutual TLS to the broker; the handshake is signed in the key store");
    let identity = ClientIdentity::Signer {
        chain,
        signer: Arc::new(StoreSigner(key)),
    };
    rigd_client::client_config(&files.ca, identity)
        .map(Some)
        .map_err(|e| RunError::Runtime(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use std::path::Path;

    fn config(dir: &Path, extra: &str) -> RigSettings {
        let text = format!(
            "rig_id = \"r\"\nbroker = \"127.0.0.1:1\"\nstate_dir = \"{}\"\nallow_software_key = true\n{extra}",
            dir.display()
        );
        crate::RigConfig::parse(Path::new("rig.conf"), &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .settings
    }

    #[test]
    fn a_secp256k1_tls_key_is_refused_and_tls_key_names_a_p256_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = config(dir.path(), "");
        let receipt: Arc<dyn KeyStore> =
            Arc::from(keys::open_at(&c.key, &c.state_dir, true).unwrap_or_else(|e| panic!("{e}")));
        assert!(matches!(open_key(&c, &receipt), Err(KeyError::Uri { .. })));
        let c = config(dir.path(), "tls_key = \"file:tls?curve=p256\"\n");
        let tls = open_key(&c, &receipt).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(tls.public_key(), PublicKey::P256(_)));
        assert_ne!(tls.public_key(), receipt.public_key());
    }

    #[test]
    fn the_store_signer_returns_a_signature_that_verifies_over_the_digest() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key: Arc<dyn KeyStore> = Arc::from(
            keys::open("file:k?curve=p256", dir.path(), true).unwrap_or_else(|e| panic!("{e}")),
        );
        let digest = [7u8; 32];
        let rs = StoreSigner(key.clone())
            .sign_p256_digest(&digest)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(key
            .public_key()
            .verify(&digest, &rigd_protocol::Signature(rs.to_vec()))
            .is_ok());
    }
}
