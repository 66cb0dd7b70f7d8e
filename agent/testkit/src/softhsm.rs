//! A SoftHSM2 token of its own in a temporary directory, for tests and benches.

use std::path::PathBuf;
use std::process::Command;

/// The SoftHSM2 PKCS#11 module (Debian `softhsm2`).
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The user PIN of every test token.
pub const PIN: &str = "user-pin-1234";

/// A SoftHSM2 configuration and token directory holding one initialized token.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    label: String,
}

impl SoftHsm {
    /// Initializes a token labelled `label` with user PIN [`PIN`] (with `softhsm2-util`).
    pub fn new(label: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let hsm = Self {
            dir,
            label: label.to_owned(),
        };
        std::fs::create_dir(hsm.tokens()).unwrap();
        std::fs::write(
            hsm.conf(),
            format!(
                "directories.tokendir = {}\nlog.level = ERROR\n",
                hsm.tokens().display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", hsm.conf())
            .args(["--init-token", "--free", "--label", label, "--pin", PIN])
            .args(["--so-pin", "so-pin-4321"])
            .output()
            .unwrap_or_else(|e| {
                panic!("softhsm2-util (run ./test.sh, which installs softhsm2): {e}")
            });
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        hsm
    }

    /// The configuration file: what `SOFTHSM2_CONF` must name.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The token directory.
    pub fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// The `pkcs11:` URI of key `object` (secp256k1) on this token.
    pub fn uri(&self, object: &str) -> String {
        self.uri_curve(object, "secp256k1")
    }

    /// The `pkcs11:` URI of key `object` on `curve` on this token.
    pub fn uri_curve(&self, object: &str, curve: &str) -> String {
        format!(
            "pkcs11:token={};object={object}?module-path={MODULE}&pin-value={PIN}&curve={curve}",
            self.label
        )
    }
}
