//! Zero-touch provisioning: a rig with a claim token asks the provisioner for an identity.
//!
//! MQTT 5 request/response. The rig connects with the fleet's claim certificate (CN
//! `fleet:claim`) and a fresh random client id, subscribes to its mailbox
//! `rigd/v1/provision/reply/{client id}`, and publishes a [`ClaimRequest`] on
//! [`CLAIM_TOPIC`] with that mailbox as response topic and a random correlation id. The
//! provisioner answers a [`ClaimResponse`] there with the same correlation data.

use crate::crypto::PublicKey;
use crate::frame::{cap, Frame};
use crate::ids::RigId;
use crate::messages::{CardInfo, MAX_CARDS, MAX_TEXT};
use serde::{Deserialize, Serialize};

/// Topic claimants publish on; only the provisioner reads it.
pub const CLAIM_TOPIC: &str = "rigd/v1/provision/claim";
/// Prefix of the claim mailboxes (`{REPLY_PREFIX}/{client id}`).
pub const REPLY_PREFIX: &str = "rigd/v1/provision/reply";
/// Largest CSR accepted, bytes of DER.
pub const MAX_CSR_BYTES: usize = 4096;
/// Largest certificate chain sent back, bytes of PEM.
pub const MAX_CHAIN_BYTES: usize = 16 * 1024;
/// Most operator keys a rig is told to trust.
pub const MAX_OPERATOR_KEYS: usize = 64;
/// Largest claim token, bytes.
pub const MAX_TOKEN_BYTES: usize = 128;

/// The mailbox of a claimant connected with `client_id`.
pub fn reply_topic(client_id: &str) -> String {
    format!("{REPLY_PREFIX}/{client_id}")
}

/// What the rig is, for the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Cards found.
    pub cards: Vec<CardInfo>,
    /// GPU driver version (`none` without a driver).
    pub driver: String,
    /// rigd's version.
    pub agent_version: String,
    /// The key receipts will be signed with.
    pub receipt_key: PublicKey,
}

/// On [`CLAIM_TOPIC`]: a claim token and a CSR for the rig's TLS key (P-256, held in its key
/// store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The claim token from rig.conf.
    pub token: String,
    /// The TLS public key (SEC1, P-256) the CSR must be for.
    pub tls_key: Vec<u8>,
    /// PKCS#10 CSR, DER, signed by that key.
    pub csr_der: Vec<u8>,
    /// The rig's hardware and software.
    pub inventory: Inventory,
    /// Set when the rig had an identity and its key store was replaced (a new TPM or token):
    /// the identity it asks to keep under its new keys.
    pub rekey: Option<Rekey>,
}

/// A rig asking to keep its identity under new keys. The provisioner grants it only with a
/// claim of the rig's own owner that has a use left (the claim's use is spent), and retires
/// the old certificate. Receipts numbered below `from_seq` were made under the old key: the
/// network cannot attribute them to the new one and refuses them as `key changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rekey {
    /// The rig's id under its old keys.
    pub rig: RigId,
    /// The first sequence number the rig journals under its new key.
    pub from_seq: u64,
}

impl Frame for ClaimRequest {
    const KIND: u8 = 10;
    const NAME: &'static str = "ClaimRequest";
    fn validate(&self) -> Result<(), String> {
        if self.token.is_empty() || self.token.len() > MAX_TOKEN_BYTES {
            return Err(format!("token must be 1 to {MAX_TOKEN_BYTES} bytes"));
        }
        if self.csr_der.len() > MAX_CSR_BYTES {
            return Err(format!("CSR over {MAX_CSR_BYTES} bytes"));
        }
        if self.tls_key.len() > 65 {
            return Err("tls_key is not a SEC1 P-256 point".into());
        }
        cap("cards", self.inventory.cards.len(), MAX_CARDS)?;
        for (what, s) in [
            ("driver", &self.inventory.driver),
            ("agent_version", &self.inventory.agent_version),
        ] {
            if s.len() > MAX_TEXT {
                return Err(format!("{what} over {MAX_TEXT} bytes"));
            }
        }
        Ok(())
    }
}

/// Why a claim was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// No claim has this token.
    UnknownClaim,
    /// The claim's expiry has passed.
    Expired,
    /// The claim was revoked.
    Revoked,
    /// The claim has no uses left.
    UsedUp,
    /// The CSR does not parse or its signature does not verify.
    BadCsr,
    /// The CSR is for another key than `tls_key`, or the key is not P-256.
    KeyMismatch,
    /// This key belongs to a revoked rig.
    RigRevoked,
    /// A rekey for a rig the claim's owner does not own, or that the registry does not know.
    NotYourRig,
    /// The request could not be decoded.
    Malformed,
    /// The provisioner failed (try again later).
    Internal,
}

impl Refusal {
    /// Whether trying again with the same request may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Refusal::Internal)
    }
}

/// The identity granted to a rig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The rig's id (its certificate's common name).
    pub rig: RigId,
    /// The owner it is credited to.
    pub owner: String,
    /// The rig's certificate followed by the CA's, PEM.
    pub chain_pem: String,
    /// Ed25519 public keys of the operators whose commands the rig obeys.
    pub operator_keys: Vec<[u8; 32]>,
    /// The deployment the rig's receipts are to be signed for.
    pub domain: crate::receipt::Domain,
}

/// On the claimant's mailbox: the identity, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimResponse {
    /// Provisioned.
    Granted(Grant),
    /// Refused.
    Refused {
        /// Why.
        reason: Refusal,
        /// Details for the rig's log.
        message: String,
    },
}

impl Frame for ClaimResponse {
    const KIND: u8 = 11;
    const NAME: &'static str = "ClaimResponse";
    fn validate(&self) -> Result<(), String> {
        match self {
            ClaimResponse::Granted(g) => {
                if g.chain_pem.len() > MAX_CHAIN_BYTES {
                    return Err(format!("certificate chain over {MAX_CHAIN_BYTES} bytes"));
                }
                if g.owner.len() > MAX_TEXT {
                    return Err(format!("owner over {MAX_TEXT} bytes"));
                }
                cap("operator_keys", g.operator_keys.len(), MAX_OPERATOR_KEYS)
            }
            ClaimResponse::Refused { message, .. } => {
                if message.len() > 1024 {
                    Err("message over 1024 bytes".into())
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Topic operators send [`AdminRequest`]s on (JSON); only operator certificates may write it.
pub const ADMIN_TOPIC: &str = "rigd/v1/provision/admin";
/// Prefix of the operators' mailboxes: `{ADMIN_REPLY_PREFIX}/{certificate CN}`.
pub const ADMIN_REPLY_PREFIX: &str = "rigd/v1/provision/admin-reply";

/// An operator's request to the provisioner, JSON on [`ADMIN_TOPIC`] with a response topic
/// and correlation data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// A new claim token.
    CreateClaim {
        /// Owner the rigs are credited to.
        owner: String,
        /// How many rigs may use it.
        uses: u32,
        /// Unix ms after which it is refused.
        expires_ms: u64,
    },
    /// Revokes a claim token.
    RevokeClaim {
        /// The token.
        token: String,
    },
    /// Revokes a rig: its certificate goes on the CRL and the broker reloads it.
    RevokeRig {
        /// The rig.
        rig: String,
    },
    /// Lists the registry's rigs.
    Rigs,
    /// Adds an owner; the answer carries their generated password, once.
    AddOwner {
        /// Login name: 1 to 64 letters, digits, `.`, `_` or `-`.
        name: String,
        /// Ethereum address payouts go to (EIP-55 checked when in mixed case).
        payout: String,
    },
    /// Gives an owner a new generated password; the old one stops working.
    ResetPassword {
        /// The owner.
        name: String,
    },
    /// Lists the owners.
    Owners,
}

/// The provisioner's answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    /// A claim was created.
    Claim {
        /// The token (shown once; the provisioner keeps only its hash).
        token: String,
        /// The claim's number.
        id: i64,
    },
    /// Done.
    Done {
        /// What was done.
        message: String,
    },
    /// The registry's rigs.
    Rigs {
        /// (rig, owner, state, certificate serial).
        rigs: Vec<(String, String, String, String)>,
    },
    /// An owner's new password (shown once; the provisioner keeps only its hash).
    Password {
        /// The owner.
        name: String,
        /// The password.
        password: String,
    },
    /// The owners.
    Owners {
        /// (name, payout address, rigs).
        owners: Vec<(String, String, u64)>,
    },
    /// Refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode, FrameError};

    fn request() -> ClaimRequest {
        ClaimRequest {
            token: "t".repeat(43),
            tls_key: vec![2; 33],
            csr_der: vec![0x30; 300],
            inventory: Inventory {
                cards: vec![],
                driver: "535.161".into(),
                agent_version: "0.1.0".into(),
                receipt_key: PublicKey::P256(vec![3; 33]),
            },
            rekey: None,
        }
    }

    #[test]
    fn claim_frames_round_trip_and_refuse_oversized_fields() {
        let r = request();
        assert_eq!(decode::<ClaimRequest>(&encode(&r)), Ok(r.clone()));
        let mut big = r.clone();
        big.csr_der = vec![0; MAX_CSR_BYTES + 1];
        assert!(matches!(
            decode::<ClaimRequest>(&encode(&big)),
            Err(FrameError::Invalid { .. })
        ));
        let mut empty = r;
        empty.token.clear();
        assert!(matches!(
            decode::<ClaimRequest>(&encode(&empty)),
            Err(FrameError::Invalid { .. })
        ));
        let g = ClaimResponse::Granted(Grant {
            rig: RigId::new("rig-1").unwrap_or_else(|_| unreachable!()),
            owner: "alice".into(),
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            operator_keys: vec![[1; 32]; MAX_OPERATOR_KEYS + 1],
            domain: crate::receipt::Domain::LOCAL,
        });
        assert!(matches!(
            decode::<ClaimResponse>(&encode(&g)),
            Err(FrameError::Invalid { .. })
        ));
    }
}
