//! The provisioner's decisions, without I/O: a claim request in, a claim response out; an
//! admin request in, an admin response out (plus, for revocations, a new CRL to publish).

use crate::ca::{Ca, CaError, P256Public};
use crate::registry::{Registry, RegistryError};
use rcgen::{CertificateSigningRequestParams, PublicKeyData};
use rigd_protocol::claim::{
    AdminRequest, AdminResponse, ClaimRequest, ClaimResponse, Grant, Refusal,
};
use rigd_protocol::{decode, Domain};
use rustls::pki_types::CertificateSigningRequestDer;
use std::path::PathBuf;

/// The CA, the registry and the operator keys rigs are told to trust.
pub struct Provisioner {
    ca: Ca,
    ca_pem: String,
    registry: Registry,
    operator_keys: Vec<[u8; 32]>,
    /// The deployment every rig is told to sign its receipts for.
    domain: Domain,
    /// Where the CRL goes (the broker's `crlfile`), if revocations are to reach a broker.
    crl_path: Option<PathBuf>,
    /// The broker's ACL file, whose revoked-rigs section is rewritten on revocation.
    acl_path: Option<PathBuf>,
    /// The step [`TEST_CRASH_ENV`] names, if set.
    crash_at: Option<String>,
}

/// Why the provisioner could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionerError {
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Checks that `der` is a CSR signed by the key `tls_key` (SEC1 P-256); returns that key.
pub fn check_csr(tls_key: &[u8], der: &[u8]) -> Result<P256Public, Refusal> {
    let key = P256Public::from_sec1(tls_key).map_err(|_| Refusal::KeyMismatch)?;
    // rcgen verifies the CSR's self-signature while parsing it.
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
        .map_err(|_| Refusal::BadCsr)?;
    if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256
        || csr.public_key.der_bytes() != key.der_bytes()
    {
        return Err(Refusal::KeyMismatch);
    }
    Ok(key)
}

/// Test-only hook: names a step of a claim at which the provisioner aborts, as a crash or
/// power loss there would: `issued` (certificate signed, registry transaction not
/// committed), `recorded` (committed, answer not sent). The provisioning tests use it to
/// crash at every step; nothing else sets it.
pub const TEST_CRASH_ENV: &str = "RIG_PROVISIONER_TEST_CRASH_AT";

/// Reads [`TEST_CRASH_ENV`], loudly.
fn test_crash_at() -> Option<String> {
    let at = std::env::var(TEST_CRASH_ENV).ok()?;
    tracing::warn!(step = %at, "{TEST_CRASH_ENV} is set: the provisioner aborts at this claim step (tests only)");
    Some(at)
}

/// Aborts the process if `crash_at` names `step`.
fn crash_point(crash_at: &Option<String>, step: &str) {
    if crash_at.as_deref() == Some(step) {
        tracing::error!(step, "{TEST_CRASH_ENV}: aborting");
        std::process::abort();
    }
}

fn refused(reason: Refusal, message: impl Into<String>) -> ClaimResponse {
    ClaimResponse::Refused {
        reason,
        message: message.into(),
    }
}

impl Provisioner {
    /// A provisioner over `ca` and `registry`.
    pub fn new(
        ca: Ca,
        registry: Registry,
        operator_keys: Vec<[u8; 32]>,
        crl_path: Option<PathBuf>,
        acl_path: Option<PathBuf>,
    ) -> Result<Provisioner, ProvisionerError> {
        let ca_pem = std::fs::read_to_string(ca.cert_path()).map_err(|source| CaError::Io {
            path: ca.cert_path(),
            source,
        })?;
        Ok(Provisioner {
            ca,
            ca_pem,
            registry,
            operator_keys,
            domain: Domain::LOCAL,
            crl_path,
            acl_path,
            crash_at: test_crash_at(),
        })
    }

    /// Grants `domain` to every rig (the default is [`Domain::LOCAL`]).
    pub fn with_domain(mut self, domain: Domain) -> Self {
        self.domain = domain;
        self
    }

    /// Answers one ClaimRequest frame; the flag tells whether the CRL changed (a rekey
    /// retired a certificate) and the broker must reload it.
    pub fn claim(&mut self, payload: &[u8], now_ms: u64) -> (ClaimResponse, bool) {
        let req: ClaimRequest = match decode(payload) {
            Ok(r) => r,
            Err(e) => return (refused(Refusal::Malformed, e.to_string()), false),
        };
        let key = match check_csr(&req.tls_key, &req.csr_der) {
            Ok(k) => k,
            Err(r) => {
                return (
                    refused(r, "the CSR must be signed by the key in tls_key (P-256)"),
                    false,
                )
            }
        };
        let ca = &self.ca;
        let crash_at = &self.crash_at;
        let outcome = self.registry.claim(
            &req.token,
            &req.tls_key,
            &req.inventory,
            req.rekey.as_ref(),
            now_ms,
            |rig| {
                let issued = ca.issue_for(rig.as_str(), &key);
                crash_point(crash_at, "issued");
                issued.map(|i| (i.cert_pem, i.serial))
            },
        );
        match outcome {
            Ok(Ok(claimed)) => {
                crash_point(&self.crash_at, "recorded");
                tracing::info!(rig = %claimed.record.rig, owner = %claimed.record.owner, new = claimed.created, rekeyed = claimed.rekeyed, "rig provisioned");
                let crl_changed = claimed.rekeyed;
                if crl_changed {
                    if let Err(e) = self.write_revocations() {
                        tracing::error!(error = %e, "the retired certificate is not in the CRL yet");
                    }
                }
                let grant = ClaimResponse::Granted(Grant {
                    rig: claimed.record.rig,
                    owner: claimed.record.owner,
                    chain_pem: format!("{}{}", claimed.record.cert_pem, self.ca_pem),
                    operator_keys: self.operator_keys.clone(),
                    domain: self.domain,
                });
                (grant, crl_changed)
            }
            Ok(Err(reason)) => {
                tracing::warn!(?reason, "claim refused");
                (refused(reason, format!("claim refused: {reason:?}")), false)
            }
            Err(e) => {
                tracing::error!(error = %e, "registry failed");
                (
                    refused(Refusal::Internal, "the provisioner failed; try again"),
                    false,
                )
            }
        }
    }

    /// Answers one admin request (JSON). Returns the response and whether the CRL changed.
    pub fn admin(&mut self, payload: &[u8], now_ms: u64) -> (AdminResponse, bool) {
        let req: AdminRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                return (
                    AdminResponse::Error {
                        message: format!("malformed request: {e}"),
                    },
                    false,
                )
            }
        };
        let fail = |e: &dyn std::fmt::Display| AdminResponse::Error {
            message: e.to_string(),
        };
        match req {
            AdminRequest::CreateClaim {
                owner,
                uses,
                expires_ms,
            } => {
                if owner.is_empty() || owner.len() > rigd_protocol::MAX_TEXT || expires_ms <= now_ms
                {
                    return (
                        fail(&"owner must be 1 to 128 bytes and the expiry in the future"),
                        false,
                    );
                }
                match self.registry.create_claim(&owner, uses, expires_ms) {
                    Ok(c) => (
                        AdminResponse::Claim {
                            token: c.token,
                            id: c.id,
                        },
                        false,
                    ),
                    Err(e) => (fail(&e), false),
                }
            }
            AdminRequest::RevokeClaim { token } => match self.registry.revoke_claim(&token) {
                Ok(true) => (
                    AdminResponse::Done {
                        message: "claim revoked".into(),
                    },
                    false,
                ),
                Ok(false) => (fail(&"no such claim"), false),
                Err(e) => (fail(&e), false),
            },
            AdminRequest::RevokeRig { rig } => match self.revoke_rig(&rig) {
                Ok(serial) => (
                    AdminResponse::Done {
                        message: format!("rig {rig} revoked (certificate {serial})"),
                    },
                    true,
                ),
                Err(e) => (fail(&e), false),
            },
            AdminRequest::Rigs => match self.registry.rigs() {
                Ok(rigs) => (
                    AdminResponse::Rigs {
                        rigs: rigs
                            .into_iter()
                            .map(|r| (r.rig.to_string(), r.owner, r.state, r.serial))
                            .collect(),
                    },
                    false,
                ),
                Err(e) => (fail(&e), false),
            },
            AdminRequest::AddOwner { name, payout } => {
                let payout = match rigd_protocol::EthAddress::parse(&payout) {
                    Ok(a) => a,
                    Err(e) => return (fail(&format!("payout address: {e}")), false),
                };
                match self.registry.add_owner(&name, &payout, now_ms) {
                    Ok(password) => {
                        tracing::info!(owner = %name, %payout, "owner added");
                        (AdminResponse::Password { name, password }, false)
                    }
                    Err(e) => (fail(&e), false),
                }
            }
            AdminRequest::ResetPassword { name } => match self.registry.reset_password(&name) {
                Ok(password) => {
                    tracing::info!(owner = %name, "owner password reset");
                    (AdminResponse::Password { name, password }, false)
                }
                Err(e) => (fail(&e), false),
            },
            AdminRequest::Owners => match self.registry.owners_with_rig_counts() {
                Ok(owners) => (
                    AdminResponse::Owners {
                        owners: owners
                            .into_iter()
                            .map(|(o, rigs)| (o.name, o.payout.to_string(), rigs))
                            .collect(),
                    },
                    false,
                ),
                Err(e) => (fail(&e), false),
            },
        }
    }

    /// Revokes `rig` and rewrites the CRL; returns the certificate's serial.
    pub fn revoke_rig(&mut self, rig: &str) -> Result<String, ProvisionerError> {
        let serial = self.registry.revoke_rig(rig)?;
        self.write_revocations()?;
        tracing::warn!(%rig, %serial, "rig revoked");
        Ok(serial)
    }

    /// Writes the CRL of every revoked rig to the broker's `crlfile` and denies them every
    /// topic in its ACL file; the broker applies both on its next reload.
    pub fn write_revocations(&mut self) -> Result<(), ProvisionerError> {
        if let Some(path) = &self.crl_path {
            let revoked = self.registry.revoked_serials()?;
            // Seconds since the epoch: increasing across restarts, as CRL numbers must.
            let number = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs());
            let crl = self.ca.crl(number, &revoked, 3650)?;
            crate::ca::write_file(path, crl.as_bytes(), 0o644)?;
        }
        if let Some(path) = &self.acl_path {
            let io = |source| CaError::Io {
                path: path.clone(),
                source,
            };
            let acl = std::fs::read_to_string(path).map_err(io)?;
            let acl = crate::broker::with_revoked(&acl, &self.registry.revoked_rigs()?);
            crate::ca::write_file(path, acl.as_bytes(), 0o644)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_protocol::claim::Inventory;
    use rigd_protocol::{encode, PublicKey};

    fn csr_for(key: &rcgen::KeyPair) -> Vec<u8> {
        rcgen::CertificateParams::default()
            .serialize_request(key)
            .map(|c| c.der().to_vec())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn p256() -> rcgen::KeyPair {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn request(token: &str, tls_key: &[u8], csr_der: Vec<u8>) -> Vec<u8> {
        encode(&ClaimRequest {
            token: token.into(),
            tls_key: tls_key.to_vec(),
            csr_der,
            inventory: Inventory {
                cards: vec![],
                driver: "sim".into(),
                agent_version: "0.1.0".into(),
                receipt_key: PublicKey::P256(tls_key.to_vec()),
            },
            rekey: None,
        })
    }

    #[test]
    fn a_csr_must_be_well_signed_and_for_the_declared_key() {
        let (a, b) = (p256(), p256());
        let good = csr_for(&a);
        assert!(check_csr(a.public_key_raw(), &good).is_ok());
        assert_eq!(
            check_csr(b.public_key_raw(), &good).err(),
            Some(Refusal::KeyMismatch)
        );
        let mut tampered = good.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            check_csr(a.public_key_raw(), &tampered).err(),
            Some(Refusal::BadCsr)
        );
        // The subject changed after signing: the signature no longer covers it.
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "aaaaaaaa");
        let mut forged = params
            .serialize_request(&a)
            .map(|c| c.der().to_vec())
            .unwrap_or_else(|e| panic!("{e}"));
        let at = forged
            .windows(8)
            .position(|w| w == b"aaaaaaaa")
            .unwrap_or_else(|| panic!("subject not found"));
        forged[at..at + 8].copy_from_slice(b"bbbbbbbb");
        assert_eq!(
            check_csr(a.public_key_raw(), &forged).err(),
            Some(Refusal::BadCsr)
        );
        assert_eq!(
            check_csr(&[4; 65], &csr_for(&a)).err(),
            Some(Refusal::KeyMismatch)
        );
        let ed =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            check_csr(a.public_key_raw(), &csr_for(&ed)).err(),
            Some(Refusal::KeyMismatch)
        );
    }

    #[test]
    fn a_claim_with_a_good_csr_is_granted_a_chain_to_the_fleet_ca() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = Ca::init(&dir.path().join("ca"), "t").unwrap_or_else(|e| panic!("{e}"));
        let mut registry =
            Registry::open(&dir.path().join("r.db")).unwrap_or_else(|e| panic!("{e}"));
        registry
            .add_owner("alice", &rigd_protocol::EthAddress([1; 20]), 0)
            .unwrap_or_else(|e| panic!("{e}"));
        let claim = registry
            .create_claim("alice", 2, u64::MAX / 2)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut p = Provisioner::new(ca, registry, vec![[5; 32]], None, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (p256(), p256());
        let refused = |r: ClaimResponse| match r {
            ClaimResponse::Refused { reason, .. } => Some(reason),
            ClaimResponse::Granted(_) => None,
        };
        assert_eq!(
            refused(
                p.claim(&request(&claim.token, b.public_key_raw(), csr_for(&a)), 0)
                    .0
            ),
            Some(Refusal::KeyMismatch)
        );
        assert_eq!(refused(p.claim(b"\x01\x0a", 0).0), Some(Refusal::Malformed));
        let (ClaimResponse::Granted(g), false) =
            p.claim(&request(&claim.token, a.public_key_raw(), csr_for(&a)), 0)
        else {
            panic!("refused")
        };
        assert_eq!(g.owner, "alice");
        assert_eq!(g.operator_keys, vec![[5; 32]]);
        assert_eq!(g.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    }
}
