//! The YubiHSM2 backend: a secp256k1 key generated inside a YubiHSM2, never exportable.
//!
//! # URI
//!
//! ```text
//! yubihsm://usb?key=0x0100&auth-key=1&password-file=/etc/rig-config/yubihsm.pass
//! yubihsm://usb?key=0x0100&serial=0123456789&password-file=/etc/rig-config/yubihsm.pass
//! yubihsm://http/127.0.0.1:12345?key=0x0100&auth-key=1&password-file=/etc/rig-config/yubihsm.pass
//! ```
//!
//! - `usb` talks to the device directly (`serial=` picks one of several, 10 digits);
//!   `http/HOST:PORT` talks to a `yubihsm-connector` process (`http` alone means
//!   `127.0.0.1:12345`, the connector's default).
//! - `key` (required): the object id of the signing key, hex (`0x0100`) or decimal, not 0.
//! - `auth-key`: the authentication key that opens the session (default 1).
//! - `password-file` (required): an absolute path to a file holding that authentication
//!   key's password (one trailing newline is ignored). The password itself never goes in
//!   rig.conf.
//!
//! Unknown or repeated parameters are refused; values are taken literally (no %-decoding).
//!
//! # Behaviour
//!
//! On open the backend authenticates, then looks for an asymmetric key at `key`. If there is
//! none it generates a secp256k1 key inside the HSM (domain 1, capability `sign-ecdsa` only,
//! hence not exportable, even under wrap) and logs that a new rig identity was created. An
//! object of another algorithm, or one that may not sign, is an error: the backend never
//! replaces a key. Signatures are 65 bytes `r ‖ s ‖ v`, low-s, `v` = 27 + recovery id, and
//! each is checked against the public key before it is returned.
//!
//! The HSM is driven through `ethers-signers` (`YubiWallet`); its types stay in this file.

use super::{KeyError, KeyStore};
use ethers_signers::YubiWallet;
use rigd_protocol::digest::Hash32;
use rigd_protocol::{PublicKey, Signature};
use std::fmt;
use std::path::{Path, PathBuf};
use yubihsm::ecdsa::{Secp256k1, Signer as YubiSigner};
use yubihsm::{asymmetric, device, object, Capability, Client, Connector, Credentials, Domain};

/// The label written on keys this backend generates.
const LABEL: &[u8] = b"rigd rig identity";

/// A secp256k1 key held in a YubiHSM2.
pub struct YubiHsmKey {
    wallet: YubiWallet,
    public: PublicKey,
    key_id: object::Id,
    via: String,
}

/// How the HSM is reached.
#[derive(Debug, Clone)]
enum Transport {
    Usb {
        serial: Option<device::SerialNumber>,
    },
    Http {
        addr: String,
        port: u16,
    },
}

impl Transport {
    fn connector(&self) -> Connector {
        match self {
            Transport::Usb { serial } => Connector::usb(&yubihsm::UsbConfig {
                serial: *serial,
                ..Default::default()
            }),
            Transport::Http { addr, port } => Connector::http(&yubihsm::HttpConfig {
                addr: addr.clone(),
                port: *port,
                ..Default::default()
            }),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Usb { serial: None } => f.write_str("usb"),
            Transport::Usb { serial: Some(s) } => write!(f, "usb serial {s}"),
            Transport::Http { addr, port } => write!(f, "http://{addr}:{port}"),
        }
    }
}

/// A parsed `yubihsm://` URI.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    transport: Transport,
    key_id: object::Id,
    auth_key_id: object::Id,
    password_file: Option<PathBuf>,
}

impl Settings {
    /// Parses a `yubihsm://` URI (see the module documentation).
    pub(crate) fn parse(uri: &str) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::Uri {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri.strip_prefix("yubihsm://").ok_or_else(|| {
            bad("expected yubihsm://usb?key=... or yubihsm://http/HOST:PORT?key=...".into())
        })?;
        let (target, query) = rest.split_once('?').unwrap_or((rest, ""));

        let (mut key_id, mut auth_key_id, mut password_file, mut serial) = (None, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("parameter {pair:?} has no value")))?;
            let slot_taken = match name {
                "key" => key_id.replace(parse_id(value).map_err(&bad)?).is_some(),
                "auth-key" => auth_key_id
                    .replace(parse_id(value).map_err(&bad)?)
                    .is_some(),
                "password-file" => {
                    let path = PathBuf::from(value);
                    if !path.is_absolute() {
                        return Err(bad(format!(
                            "password-file must be an absolute path, got {value:?}"
                        )));
                    }
                    password_file.replace(path).is_some()
                }
                "serial" => {
                    let number = value
                        .parse::<device::SerialNumber>()
                        .map_err(|e| bad(format!("serial must be the device's 10 digits: {e}")))?;
                    serial.replace(number).is_some()
                }
                _ => {
                    return Err(bad(format!(
                        "unknown parameter {name:?} (known: key, auth-key, password-file, serial)"
                    )))
                }
            };
            if slot_taken {
                return Err(bad(format!("parameter {name:?} is given twice")));
            }
        }

        let transport = match target {
            "usb" => Transport::Usb { serial },
            _ if serial.is_some() => {
                return Err(bad("serial= applies to usb only".into()));
            }
            "http" => Transport::Http {
                addr: "127.0.0.1".into(),
                port: 12345,
            },
            _ => {
                let Some(hostport) = target.strip_prefix("http/") else {
                    return Err(bad(format!(
                        "unknown transport {target:?} (expected usb or http/HOST:PORT)"
                    )));
                };
                let (addr, port) = hostport
                    .rsplit_once(':')
                    .ok_or_else(|| bad("http/ needs HOST:PORT".into()))?;
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(format!("port {port:?} is not a port number")))?;
                if addr.is_empty() || addr.contains('/') {
                    return Err(bad(format!("host {addr:?} is not a host name or address")));
                }
                Transport::Http {
                    addr: addr.to_owned(),
                    port,
                }
            }
        };

        Ok(Self {
            transport,
            key_id: key_id.ok_or_else(|| bad("key=<object id> is required".into()))?,
            auth_key_id: auth_key_id.unwrap_or(1),
            password_file,
        })
    }
}

/// Parses an object id: `0x`-prefixed hex or decimal, 1..=0xffff.
fn parse_id(value: &str) -> Result<object::Id, String> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => value.parse::<u16>(),
    };
    match parsed {
        Ok(0) => Err("object id 0 is not allowed (the key needs a fixed id)".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!("object id {value:?} is not a number in 1..=0xffff")),
    }
}

/// Reads the authentication password from `path` (one trailing newline ignored).
fn read_credentials(auth_key_id: object::Id, path: &Path) -> Result<Credentials, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = std::fs::read(path).map_err(io)?;
    let mut len = bytes.len();
    if bytes[..len].ends_with(b"\n") {
        len -= 1;
        if bytes[..len].ends_with(b"\r") {
            len -= 1;
        }
    }
    if len == 0 {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the YubiHSM2 password file is empty",
        )));
    }
    let credentials = Credentials::from_password(auth_key_id, &bytes[..len]);
    bytes.fill(0);
    Ok(credentials)
}

impl YubiHsmKey {
    /// Opens the key of a parsed `yubihsm://` URI (`uri`, named in errors), creating it inside
    /// the HSM when the id holds no key yet.
    pub(crate) fn open(uri: &str, settings: &Settings) -> Result<Self, KeyError> {
        let Some(path) = settings.password_file.as_deref() else {
            let reason = "password-file=/absolute/path is required (never the password itself)";
            return Err(KeyError::Uri {
                uri: uri.to_owned(),
                reason: reason.into(),
            });
        };
        let credentials = read_credentials(settings.auth_key_id, path)?;
        Self::open_with(
            settings.transport.connector(),
            credentials,
            settings.key_id,
            settings.transport.to_string(),
        )
    }

    /// Opens the key named by `uri` through `connector` instead of the transport the URI
    /// names, so that tests can share one mock HSM. Without `password-file` it uses the
    /// default credentials (auth key 1, password `password`), which only a mock or a
    /// factory-fresh device accepts.
    #[cfg(test)]
    pub(crate) fn open_on(connector: Connector, uri: &str) -> Result<Self, KeyError> {
        let settings = Settings::parse(uri)?;
        let credentials = match &settings.password_file {
            Some(path) => read_credentials(settings.auth_key_id, path)?,
            None => Credentials::default(),
        };
        Self::open_with(connector, credentials, settings.key_id, "mockhsm".into())
    }

    fn open_with(
        connector: Connector,
        credentials: Credentials,
        key_id: object::Id,
        via: String,
    ) -> Result<Self, KeyError> {
        let hsm = |what: &str, e: &dyn fmt::Display| KeyError::Unavailable {
            store: format!("YubiHSM2 via {via}, key {key_id:#06x}"),
            reason: format!("{what}: {e}"),
        };
        // `reconnect = true` keeps the credentials so an idle session that the device closed
        // (after 30 s) is reopened on the next signature.
        let client = Client::open(connector, credentials, true).map_err(|e| {
            hsm(
                "cannot open an authenticated session (check the device or connector, auth-key and password file)",
                &e,
            )
        })?;

        let created = match client.get_object_info(key_id, object::Type::AsymmetricKey) {
            Ok(info) => {
                if info.algorithm != asymmetric::Algorithm::EcK256.into() {
                    return Err(hsm(
                        "the object is not a secp256k1 key; choose another key id",
                        &format_args!("{:?}", info.algorithm),
                    ));
                }
                let caps = info.capabilities;
                if !caps.contains(Capability::SIGN_ECDSA) {
                    let caps = format_args!("{caps:?}");
                    return Err(hsm("the key lacks the sign-ecdsa capability", &caps));
                }
                if caps.contains(Capability::EXPORTABLE_UNDER_WRAP) {
                    tracing::warn!(
                        key_id = %format_args!("{key_id:#06x}"),
                        via = %via,
                        "the YubiHSM2 rig key is exportable under wrap"
                    );
                }
                false
            }
            Err(e) if e.device_error() == Some(device::ErrorKind::ObjectNotFound) => {
                let label = object::Label::from_bytes(LABEL).map_err(|e| hsm("key label", &e))?;
                client
                    .generate_asymmetric_key(
                        key_id,
                        label,
                        Domain::DOM1,
                        Capability::SIGN_ECDSA,
                        asymmetric::Algorithm::EcK256,
                    )
                    .map_err(|e| hsm("cannot generate a secp256k1 key", &e))?;
                true
            }
            Err(e) => return Err(hsm("cannot look the key up", &e)),
        };

        let signer = YubiSigner::<Secp256k1>::create(client, key_id)
            .map_err(|e| hsm("cannot read the public key", &e))?;
        let public = k256::ecdsa::VerifyingKey::from_sec1_bytes(signer.public_key().as_bytes())
            .map_err(|e| hsm("the public key is not a secp256k1 point", &e))?;
        let public = PublicKey::Secp256k1(public.to_encoded_point(true).as_bytes().to_vec());
        if created {
            tracing::info!(
                key_id = %format_args!("{key_id:#06x}"),
                via = %via,
                public_key = %public,
                address = %public.eth_address().map(hex::encode).unwrap_or_default(),
                "created a new rig identity key inside the YubiHSM2 (secp256k1, not exportable)"
            );
        }
        Ok(Self {
            wallet: YubiWallet::from(signer),
            public,
            key_id,
            via,
        })
    }
}

/// Makes `r ‖ s ‖ v` low-s (flipping `v` with `s`) and checks that `v` is 27 or 28.
fn normalize(mut sig: [u8; 65]) -> Result<[u8; 65], KeyError> {
    sig[64] = match sig[64] {
        v @ (0 | 1) => v + 27,
        v @ (27 | 28) => v,
        v => return Err(KeyError::Sign(format!("unexpected recovery byte {v}"))),
    };
    let parsed = k256::ecdsa::Signature::from_slice(&sig[..64])
        .map_err(|e| KeyError::Sign(format!("malformed signature from the YubiHSM2: {e}")))?;
    if let Some(low) = parsed.normalize_s() {
        sig[..64].copy_from_slice(&low.to_bytes());
        sig[64] = 55 - sig[64];
    }
    Ok(sig)
}

impl KeyStore for YubiHsmKey {
    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    fn sign_digest(&self, digest: &Hash32) -> Result<Signature, KeyError> {
        let sig = self
            .wallet
            .sign_hash((*digest).into())
            .map_err(|e| KeyError::Sign(format!("YubiHSM2 via {}: {e}", self.via)))?;
        let sig = Signature(normalize((&sig).into())?.to_vec());
        self.public.verify(digest, &sig).map_err(|e| {
            KeyError::Sign(format!(
                "the YubiHSM2 via {} returned a signature that does not verify: {e}",
                self.via
            ))
        })?;
        Ok(sig)
    }

    fn describe(&self) -> String {
        format!(
            "yubihsm secp256k1 key {:#06x} via {} (hardware-held)",
            self.key_id, self.via
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::conformance;
    use k256::ecdsa::{RecoveryId, Signature as Rs, SigningKey, VerifyingKey};
    use rigd_protocol::digest::keccak256;

    const URI: &str = "yubihsm://usb?key=0x0100";

    fn boxed(key: Result<YubiHsmKey, KeyError>) -> Result<Box<dyn KeyStore>, KeyError> {
        key.map(|k| Box::new(k) as Box<dyn KeyStore>)
    }

    #[test]
    fn a_mock_hsm_key_is_generated_once_and_passes_conformance() {
        let connector = Connector::mockhsm();
        conformance::check(&|| boxed(YubiHsmKey::open_on(connector.clone(), URI)));
        let key = YubiHsmKey::open_on(connector, URI).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            key.describe(),
            "yubihsm secp256k1 key 0x0100 via mockhsm (hardware-held)"
        );
    }

    #[test]
    fn a_signature_recovers_to_the_keys_ethereum_address() {
        use ethers_signers::Signer as _;
        let key = YubiHsmKey::open_on(Connector::mockhsm(), URI).unwrap_or_else(|e| panic!("{e}"));
        let public = key.public_key();
        let address = public.eth_address().unwrap_or_else(|| panic!("no address"));
        assert_eq!(address, key.wallet.address().0, "ethers agrees");
        for i in 0u8..16 {
            let digest = keccak256(&[b"receipt batch", &[i]]);
            let sig = key.sign_digest(&digest).unwrap_or_else(|e| panic!("{e}"));
            let rs = Rs::from_slice(&sig.0[..64]).unwrap_or_else(|e| panic!("{e}"));
            assert!(rs.normalize_s().is_none(), "low-s");
            let recid = RecoveryId::from_byte(sig.0[64] - 27)
                .unwrap_or_else(|| panic!("v = {}", sig.0[64]));
            let recovered = VerifyingKey::recover_from_prehash(&digest, &rs, recid)
                .unwrap_or_else(|e| panic!("{e}"));
            let recovered =
                PublicKey::Secp256k1(recovered.to_encoded_point(true).as_bytes().to_vec());
            assert_eq!(recovered.eth_address(), Some(address), "ecrecover");
        }
    }

    #[test]
    fn a_high_s_signature_is_made_low_s_with_the_other_recovery_byte() {
        let sk = SigningKey::from_slice(&[7; 32]).unwrap_or_else(|e| panic!("{e}"));
        let public = PublicKey::Secp256k1(sk.verifying_key().to_sec1_bytes().to_vec());
        let digest = keccak256(&[b"high s"]);
        let (sig, recid) = sk
            .sign_prehash_recoverable(&digest)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut raw = [recid.to_byte(); 65];
        raw[..64].copy_from_slice(&sig.to_bytes());
        let low = normalize(raw).unwrap_or_else(|e| panic!("{e}"));
        let low_sig = Rs::from_slice(&low[..64]).unwrap_or_else(|e| panic!("{e}"));
        let high_sig =
            Rs::from_scalars(*low_sig.r(), -*low_sig.s()).unwrap_or_else(|e| panic!("{e}"));
        let mut high = [55 - low[64]; 65];
        high[..64].copy_from_slice(&high_sig.to_bytes());
        assert_eq!(normalize(high).unwrap_or_else(|e| panic!("{e}")), low);
        assert_eq!(public.verify(&digest, &Signature(low.to_vec())), Ok(()));
        assert!(normalize([29; 65]).is_err(), "a v of 29 is refused");
    }

    #[test]
    fn a_password_file_authenticates_and_a_wrong_password_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let good = dir.path().join("good.pass");
        let wrong = dir.path().join("wrong.pass");
        std::fs::write(&good, b"password\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&wrong, b"not the password\n").unwrap_or_else(|e| panic!("{e}"));
        let connector = Connector::mockhsm();
        let with = |path: &Path| format!("{URI}&auth-key=1&password-file={}", path.display());
        YubiHsmKey::open_on(connector.clone(), &with(&good)).unwrap_or_else(|e| panic!("{e}"));
        let err = YubiHsmKey::open_on(connector, &with(&wrong))
            .err()
            .unwrap_or_else(|| panic!("a wrong password opened the HSM"));
        assert!(err.to_string().contains("authenticated session"), "{err}");
    }

    #[test]
    fn a_missing_or_empty_password_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("absent.pass");
        let uri = format!("{URI}&password-file={}", missing.display());
        match super::super::open(&uri, dir.path(), false) {
            Err(KeyError::Io { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            Err(other) => panic!("expected a file error, got {other}"),
            Ok(key) => panic!("opened {}", key.describe()),
        }
        let empty = dir.path().join("empty.pass");
        std::fs::write(&empty, b"\n").unwrap_or_else(|e| panic!("{e}"));
        let uri = format!("{URI}&password-file={}", empty.display());
        let err = Settings::parse(&uri)
            .and_then(|settings| YubiHsmKey::open(&uri, &settings))
            .err()
            .unwrap_or_else(|| panic!("an empty password was accepted"));
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn malformed_uris_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let bad = "yubihsm:usb?key=1 yubihsm://usb yubihsm://usb?key=0 yubihsm://usb?key=0x10000 \
            yubihsm://usb?key=zz yubihsm://usb?key=1&key=2 yubihsm://usb?key=1&colour=blue \
            yubihsm://usb?key=1&password yubihsm://usb?key=1&password-file=relative.pass \
            yubihsm://usb?key=1&serial=12 yubihsm://serial/x?key=1 yubihsm://http/host?key=1 \
            yubihsm://http/:12345?key=1 yubihsm://http/host:0?key=1 \
            yubihsm://http/host:1?key=1&serial=0123456789 yubihsm://usb?key=0x0100";
        for uri in bad.split_whitespace() {
            match super::super::open(uri, dir.path(), false) {
                Err(KeyError::Uri { uri: named, reason }) => {
                    assert_eq!(named, uri);
                    assert!(!reason.is_empty());
                }
                Err(other) => panic!("{uri}: expected a URI error, got {other}"),
                Ok(key) => panic!("{uri}: opened {}", key.describe()),
            }
        }
    }

    #[test]
    fn the_documented_uris_parse() {
        let tail = "key=0x0100&auth-key=2&password-file=/etc/rig-config/yubihsm.pass";
        for (head, via) in [
            ("http/127.0.0.1:12345?", "http://127.0.0.1:12345"),
            ("http?", "http://127.0.0.1:12345"),
            ("usb?", "usb"),
            ("usb?serial=0123456789&", "usb serial 0123456789"),
        ] {
            let uri = format!("yubihsm://{head}{tail}");
            let parsed = Settings::parse(&uri).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.transport.to_string(), via);
            assert_eq!((parsed.key_id, parsed.auth_key_id), (0x0100, 2));
            assert!(parsed.password_file.is_some());
        }
        let minimal = Settings::parse("yubihsm://usb?key=256").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((minimal.key_id, minimal.auth_key_id), (0x0100, 1));
    }

    #[test]
    fn a_key_of_another_algorithm_is_refused_not_replaced() {
        let connector = Connector::mockhsm();
        let client = Client::open(connector.clone(), Credentials::default(), false)
            .unwrap_or_else(|e| panic!("{e}"));
        client
            .generate_asymmetric_key(
                0x0100,
                object::Label::default(),
                Domain::DOM1,
                Capability::SIGN_ECDSA,
                asymmetric::Algorithm::EcP256,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let err = YubiHsmKey::open_on(connector, URI)
            .err()
            .unwrap_or_else(|| panic!("a P-256 key was taken for secp256k1"));
        assert!(err.to_string().contains("not a secp256k1 key"), "{err}");
    }

    #[test]
    fn an_unreachable_connector_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pass = dir.path().join("yubihsm.pass");
        std::fs::write(&pass, b"password").unwrap_or_else(|e| panic!("{e}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let uri = format!(
            "yubihsm://http/127.0.0.1:{port}?key=0x0100&password-file={}",
            pass.display()
        );
        let err = Settings::parse(&uri)
            .and_then(|settings| YubiHsmKey::open(&uri, &settings))
            .err()
            .unwrap_or_else(|| panic!("opened a closed port"));
        assert!(err.to_string().contains("http://127.0.0.1:"), "{err}");
    }

    /// Signatures per second against the mock HSM (debug build: the mock refuses release).
    #[test]
    #[ignore = "measurement; run with --ignored --nocapture"]
    fn mock_hsm_signatures_per_second() {
        let key = YubiHsmKey::open_on(Connector::mockhsm(), URI).unwrap_or_else(|e| panic!("{e}"));
        let n = 500u32;
        let digests: Vec<Hash32> = (0..n).map(|i| keccak256(&[&i.to_be_bytes()])).collect();
        let start = std::time::Instant::now();
        let sigs: Vec<Signature> = digests
            .iter()
            .map(|d| key.sign_digest(d).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let secs = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        for (d, sig) in digests.iter().zip(&sigs) {
            assert_eq!(key.public.verify(d, sig), Ok(()));
        }
        let verify_secs = start.elapsed().as_secs_f64();
        println!(
            "yubihsm mock: {n} signatures in {secs:.3} s = {:.0} signatures/s \
             (of which the local check of each signature: {verify_secs:.3} s)",
            f64::from(n) / secs
        );
    }
}
