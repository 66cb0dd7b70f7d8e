//! Where a key lives: its URI (`file:`, `tpm:`, `yubihsm://`, `pkcs11:`) parsed once, when
//! rig.conf is loaded, so that a mistake in it is refused with its line before anything runs.

use super::{file, pkcs11, yubihsm, KeyError};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A key's location, parsed from its URI (in rig.conf: a string, refused at load when it
/// does not parse).
#[derive(Clone, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct KeyLocation {
    uri: String,
    pub(super) place: Place,
}

/// The parsed part of each kind of URI.
#[derive(Clone)]
pub(super) enum Place {
    /// A software key in a file; a relative path is under the state directory.
    File {
        path: PathBuf,
        curve: file::Curve,
        sign_delay: Option<Duration>,
    },
    #[cfg(feature = "tpm")]
    Tpm(super::tpm::TpmLocation),
    YubiHsm(yubihsm::Settings),
    Pkcs11(pkcs11::Uri),
}

impl KeyLocation {
    /// Parses a key URI.
    pub fn parse(uri: &str) -> Result<Self, KeyError> {
        let bad = |reason: &str| KeyError::Uri {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = uri
            .split_once(':')
            .ok_or_else(|| bad("no scheme (expected file:, tpm:, yubihsm:// or pkcs11:)"))?;
        let place = match scheme {
            "file" => parse_file(rest).map_err(|reason| bad(&reason))?,
            #[cfg(feature = "tpm")]
            "tpm" => Place::Tpm(super::tpm::TpmLocation::parse(uri, rest)?),
            #[cfg(not(feature = "tpm"))]
            "tpm" => {
                return Err(bad(
                    "this rigd was built without TPM support (cargo feature `tpm`)",
                ))
            }
            "yubihsm" => Place::YubiHsm(yubihsm::Settings::parse(uri)?),
            "pkcs11" => Place::Pkcs11(pkcs11::parse(uri).map_err(|reason| KeyError::Uri {
                uri: pkcs11::shown(uri).to_owned(),
                reason,
            })?),
            _ => return Err(bad("unknown scheme")),
        };
        Ok(KeyLocation {
            uri: uri.to_owned(),
            place,
        })
    }

    /// The secp256k1 software key in file `name` under the state directory (`file:NAME`).
    pub fn software(name: &str) -> Self {
        KeyLocation {
            uri: format!("file:{name}"),
            place: Place::File {
                path: PathBuf::from(name),
                curve: file::Curve::Secp256k1,
                sign_delay: None,
            },
        }
    }

    /// The URI as written.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Whether this is a software key (a `file:` URI).
    pub fn is_software(&self) -> bool {
        matches!(self.place, Place::File { .. })
    }

    /// The file of a software key, relative paths taken under `state_dir`.
    pub(super) fn file_path(path: &Path, state_dir: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            state_dir.join(path)
        }
    }
}

fn parse_file(rest: &str) -> Result<Place, String> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut curve = file::Curve::Secp256k1;
    let mut sign_delay = None;
    for part in query.split('&').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("curve", "secp256k1")) => curve = file::Curve::Secp256k1,
            Some(("curve", "p256")) => curve = file::Curve::P256,
            Some(("sign_delay_ms", ms)) => {
                let ms = ms
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= 60_000)
                    .ok_or("sign_delay_ms must be 0..=60000")?;
                sign_delay = Some(Duration::from_millis(ms));
            }
            _ => {
                return Err(
                    "query may hold curve=secp256k1|p256 and sign_delay_ms=N, joined by &".into(),
                )
            }
        }
    }
    let path = match path.strip_prefix("//") {
        Some(abs) if abs.starts_with('/') => PathBuf::from(abs),
        Some(_) => return Err("file:// must be followed by an absolute path".into()),
        None if path.is_empty() => return Err("no file name".into()),
        None => PathBuf::from(path),
    };
    Ok(Place::File {
        path,
        curve,
        sign_delay,
    })
}

impl PartialEq for KeyLocation {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
    }
}

impl Eq for KeyLocation {}

/// Shows the URI without its query, where a PIN may be.
impl fmt::Debug for KeyLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyLocation")
            .field(&pkcs11::shown(&self.uri))
            .finish()
    }
}

impl TryFrom<String> for KeyLocation {
    type Error = KeyError;

    fn try_from(uri: String) -> Result<Self, KeyError> {
        KeyLocation::parse(&uri)
    }
}

impl fmt::Display for KeyLocation {
    /// The URI as written, without the query of a `pkcs11:` one (where a PIN may be).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.place {
            Place::Pkcs11(_) => f.write_str(pkcs11::shown(&self.uri)),
            _ => f.write_str(&self.uri),
        }
    }
}
