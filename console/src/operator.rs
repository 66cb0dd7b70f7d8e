//! The operator's Ed25519 key: created by `rigctl operator keygen FILE` (PKCS#8, mode
//! 0600), used with `--operator-key FILE` or `RIGCTL_OPERATOR_KEY` to sign commands.

use rigd_protocol::command::{Action, Command};
use rigd_protocol::RigId;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The environment variable naming the key file when `--operator-key` is not given.
pub const KEY_ENV: &str = "RIGCTL_OPERATOR_KEY";

/// Why the operator key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Neither `--operator-key` nor the environment names a key.
    #[error("no operator key: pass --operator-key FILE or set {KEY_ENV} (create one with `rigctl operator keygen FILE`)")]
    Missing,
    /// The file could not be read or written.
    #[error("operator key {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// An operator's signing key.
pub struct OperatorKey {
    pair: Ed25519KeyPair,
}

fn file_error(path: &Path, reason: impl ToString) -> KeyError {
    KeyError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl OperatorKey {
    /// Creates a new key in `path` (refusing to overwrite one), readable by its owner only.
    pub fn generate(path: &Path) -> Result<Self, KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| file_error(path, "the system random generator failed"))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| file_error(path, e))?;
        f.write_all(doc.as_ref())
            .and_then(|()| f.sync_all())
            .map_err(|e| file_error(path, e))?;
        Self::from_pkcs8(path, doc.as_ref())
    }

    /// Reads the key named by `path`, or else by [`KEY_ENV`].
    pub fn load(path: Option<&Path>) -> Result<Self, KeyError> {
        let path = match path {
            Some(p) => p.to_owned(),
            None => std::env::var_os(KEY_ENV)
                .map(PathBuf::from)
                .ok_or(KeyError::Missing)?,
        };
        let bytes = std::fs::read(&path).map_err(|e| file_error(&path, e))?;
        Self::from_pkcs8(&path, &bytes)
    }

    fn from_pkcs8(path: &Path, bytes: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes)
            .map_err(|e| file_error(path, format!("not a PKCS#8 Ed25519 key ({e})")))?;
        Ok(Self { pair })
    }

    /// The public key, as rig.conf's `operator_keys` lists it.
    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// A signed command for `rig`, valid from `issued_ms` for `ttl_ms`.
    pub fn sign(
        &self,
        rig: RigId,
        action: Action,
        nonce: u64,
        issued_ms: u64,
        ttl_ms: u64,
    ) -> Command {
        let mut cmd = Command {
            rig,
            operator: self.public(),
            nonce,
            issued_ms,
            expires_ms: issued_ms.saturating_add(ttl_ms),
            action,
            signature: vec![],
        };
        cmd.signature = self.pair.sign(&cmd.signing_digest()).as_ref().to_vec();
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_key_is_private_reloads_and_signs_verifiable_commands() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("op.key");
        let key = OperatorKey::generate(&path).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        assert!(OperatorKey::generate(&path).is_err(), "overwrote a key");
        let again = OperatorKey::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.public(), key.public());
        let rig = RigId::new("r").unwrap_or_else(|e| panic!("{e}"));
        let cmd = again.sign(rig, Action::Drain, 1, 1000, 5000);
        assert!(cmd.signature_valid());
        assert_eq!(cmd.expires_ms, 6000);
        std::fs::write(dir.path().join("bad"), b"nope").unwrap_or_else(|e| panic!("{e}"));
        assert!(OperatorKey::load(Some(&dir.path().join("bad"))).is_err());
    }
}
