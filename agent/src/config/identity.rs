//! Who the rig is, from rig.conf: a fixed `rig_id` (with `[tls]` for mutual TLS), or a
//! `[provision]` claim that the fleet answers with an id and a certificate.
//!
//! ```toml
//! rig_id = "rig-7"          # a fixed identity ...
//! [tls]
//! ca = "/etc/rigd/fleet-ca.pem"
//! cert = "/etc/rigd/rig-7.pem"
//! ```
//!
//! ```toml
//! [provision]               # ... or a claim (no rig_id, no [tls])
//! claim = "rc_..."
//! ca = "/etc/rigd/fleet-ca.pem"
//! claim_cert = "/etc/rigd/claim.pem"
//! claim_key = "/etc/rigd/claim.key"
//! ```

use rigd_protocol::RigId;
use serde::Deserialize;
use std::path::PathBuf;

/// Who the rig is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An identity given in rig.conf.
    Fixed(Assigned),
    /// Not provisioned by rig.conf: the rig claims its identity (once; after that it is
    /// read back from the state directory).
    Claim(ProvisionConfig),
}

/// The identity a rig runs with: its id and, with mutual TLS, its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The rig's id (one topic level).
    pub rig: RigId,
    /// Mutual TLS to the broker; without it the link is plain TCP.
    pub tls: Option<RigTls>,
}

/// `[tls]` in rig.conf: the fleet CA and this rig's certificate. The private key is the one
/// named by `tls_key` (or `key`) and never leaves its key store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigTls {
    /// PEM file of the fleet CA the broker's certificate is checked against.
    pub ca: PathBuf,
    /// PEM file of this rig's certificate (common name = rig id), leaf first.
    pub cert: PathBuf,
}

/// `[provision]` in rig.conf: the claim token and the fleet-wide claim credential shipped
/// with the image. The rig's own TLS key is `tls_key` (or `key`), never a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionConfig {
    /// The claim token (`rigctl claims create` prints it).
    pub claim: String,
    /// PEM file of the fleet CA.
    pub ca: PathBuf,
    /// PEM file of the fleet's claim certificate (CN `fleet:claim`).
    pub claim_cert: PathBuf,
    /// PEM file of the claim certificate's key (low privilege: it can only send claims).
    pub claim_key: PathBuf,
    /// How long to wait for the provisioner's answer to one claim, ms.
    #[serde(default = "default_claim_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_claim_timeout_ms() -> u64 {
    5000
}

/// The identity keys of rig.conf as written, read in their own pass over the file (every
/// other key is the settings' pass's).
#[derive(Deserialize)]
pub(super) struct IdentityKeys {
    rig_id: Option<RigId>,
    tls: Option<RigTls>,
    provision: Option<ProvisionConfig>,
}

impl IdentityKeys {
    /// The identity these keys give, or the key at fault and why.
    pub(super) fn identity(self) -> Result<Identity, (&'static str, String)> {
        match (self.rig_id, self.tls, self.provision) {
            (Some(rig), tls, None) => Ok(Identity::Fixed(Assigned { rig, tls })),
            (None, None, Some(claim)) => Ok(Identity::Claim(claim)),
            (None, _, None) => Err((
                "rig_id",
                "missing: give a rig_id, or a [provision] claim to be assigned one".into(),
            )),
            (Some(_), _, Some(_)) => Err((
                "rig_id",
                "a provisioned rig is assigned its id: leave rig_id out with [provision]".into(),
            )),
            (None, Some(_), Some(_)) => Err((
                "tls",
                "[provision] writes the rig's certificate itself: leave [tls] out".into(),
            )),
        }
    }
}
