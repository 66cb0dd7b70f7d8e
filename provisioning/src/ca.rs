//! The fleet CA: one P-256 key and a self-signed certificate in a directory, issuing the
//! broker's server certificate and the client certificates of rigs, the coordinator, the
//! provisioner, operators and the claim identity.
//!
//! Common names are the MQTT user names the broker's ACL is checked against
//! (`use_identity_as_username true`). Rig ids cannot contain `:`, so the fleet's own
//! identities carry one and can never be taken by a rig:
//!
//! | who | CN |
//! | --- | --- |
//! | a rig | its rig id, e.g. `rig-7` |
//! | the coordinator | `fleet:coordinator` |
//! | the provisioner | `fleet:provisioner` |
//! | the metrics exporter (read-only) | `fleet:exporter` |
//! | an operator | `operator:NAME` |
//! | the claim identity shipped in rig images | `fleet:claim` |

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevokedCertParams, SanType, SerialNumber,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// CN of the coordinator's certificate.
pub const COORDINATOR_CN: &str = "fleet:coordinator";
/// CN of the provisioner's certificate.
pub const PROVISIONER_CN: &str = "fleet:provisioner";
/// CN of the metrics exporter's certificate: it reads statuses and telemetry, writes nothing.
pub const EXPORTER_CN: &str = "fleet:exporter";
/// CN of the claim certificate shipped with rig images.
pub const CLAIM_CN: &str = "fleet:claim";
/// Prefix of operators' CNs.
pub const OPERATOR_PREFIX: &str = "operator:";

/// File of the CA certificate in a CA directory.
pub const CA_CERT: &str = "ca.pem";
/// File of the CA key in a CA directory (mode 0600).
pub const CA_KEY: &str = "ca-key.pem";

/// Why the CA could not act.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A CA directory that already holds a CA.
    #[error("{0} already holds a CA; refusing to overwrite it")]
    Exists(PathBuf),
    /// Generating, parsing or signing failed.
    #[error("X.509: {0}")]
    X509(#[from] rcgen::Error),
    /// A name that cannot be a certificate's common name here.
    #[error("bad name {0:?}: use letters, digits, '.', '_', '-'")]
    Name(String),
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The broker: server authentication, with the host names and addresses as SANs.
    Server,
    /// Any MQTT client.
    Client,
}

/// An issued certificate and, where it was made here, its key.
pub struct Issued {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM of the private key (`None` when issued for a CSR's key).
    pub key_pem: Option<String>,
    /// The serial number, hex.
    pub serial: String,
}

/// The loaded CA.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename) with `mode`.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    // The rename is durable only once the directory is.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// Checks a CN: letters, digits, `.`, `_`, `-`, and `:` (the fleet's own prefixes).
pub fn check_name(name: &str) -> Result<(), CaError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(CaError::Name(name.to_owned()))
    }
}

impl Ca {
    /// Creates a new CA in `dir` (refusing to overwrite one).
    pub fn init(dir: &Path, name: &str) -> Result<Ca, CaError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if dir.join(CA_KEY).exists() {
            return Err(CaError::Exists(dir.to_owned()));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        write_file(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
        Ok(Ca {
            cert,
            key,
            dir: dir.to_owned(),
        })
    }

    /// Loads the CA of `dir`.
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)?;
        // Re-signing gives a certificate object with the same name, key and key identifier;
        // rcgen needs one to issue from. The file on disk stays the one clients trust.
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert,
            key,
            dir: dir.to_owned(),
        })
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the CA certificate clients and the broker trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    fn leaf_params(cn: &str, role: Role, sans: &[String]) -> Result<CertificateParams, CaError> {
        check_name(cn)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.serial_number = Some(random_serial());
        match role {
            Role::Server => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                for san in sans {
                    params.subject_alt_names.push(match san.parse() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => SanType::DnsName(san.clone().try_into()?),
                    });
                }
                validity(&mut params, 825);
            }
            Role::Client => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                validity(&mut params, 3650);
            }
        }
        Ok(params)
    }

    fn serial_hex(params: &CertificateParams) -> String {
        params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.as_ref()))
            .unwrap_or_default()
    }

    /// Issues a certificate with a fresh P-256 key.
    pub fn issue(&self, cn: &str, role: Role, sans: &[String]) -> Result<Issued, CaError> {
        let params = Self::leaf_params(cn, role, sans)?;
        let serial = Self::serial_hex(&params);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
            serial,
        })
    }

    /// Issues a client certificate named `cn` for a public key whose owner holds the
    /// private part (from a checked CSR).
    pub fn issue_for(&self, cn: &str, public_key: &impl PublicKeyData) -> Result<Issued, CaError> {
        let params = Self::leaf_params(cn, Role::Client, &[])?;
        let serial = Self::serial_hex(&params);
        let cert = params.signed_by(public_key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: None,
            serial,
        })
    }

    /// A CRL listing `revoked` serials (hex), valid for `days`.
    pub fn crl(&self, number: u64, revoked: &[String], days: i64) -> Result<String, CaError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(days),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .filter_map(|s| hex::decode(s).ok())
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }
}

/// A P-256 public key (SEC1 point) to issue a certificate for.
pub struct P256Public(Vec<u8>);

impl P256Public {
    /// From a SEC1 point, compressed or not; stored uncompressed as X.509 carries it.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, CaError> {
        let key = p256::PublicKey::from_sec1_bytes(bytes)
            .map_err(|_| CaError::X509(rcgen::Error::CouldNotParseKeyPair))?;
        Ok(Self(
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key, false)
                .as_bytes()
                .to_vec(),
        ))
    }
}

impl PublicKeyData for P256Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}
