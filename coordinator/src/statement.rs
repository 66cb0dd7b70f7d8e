//! The network's credit statements, signed by its statement key (a secp256k1 key file): what
//! the ledger credited a rig before an instant past the audit window, which the rig's owner
//! can take to the settlement contract if an epoch leaves it out (`RigdSettlement.openDispute`).

use crate::chain::{read_key, ChainError};
use crate::ledger::{Ledger, LedgerError};
use alloy_primitives::B256;
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use rigd_protocol::{CreditStatement, Domain, EthAddress, RigId};
use std::path::Path;

/// Why a statement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    /// The key file.
    #[error(transparent)]
    Key(#[from] ChainError),
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The signer.
    #[error("signing: {0}")]
    Sign(#[from] alloy_signer::Error),
}

/// A statement and the network's signature over it (65 bytes, r ‖ s ‖ v).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedStatement {
    /// What it states.
    pub statement: CreditStatement,
    /// The deployment it is signed for.
    pub domain: Domain,
    /// The statement key's signature of its digest in the deployment's domain.
    pub signature: Vec<u8>,
}

/// The key credit statements are signed with.
pub struct StatementKey {
    signer: PrivateKeySigner,
}

impl StatementKey {
    /// The key in `key_file` (32 bytes, hex).
    pub fn open(key_file: &Path) -> Result<Self, StatementError> {
        Ok(Self {
            signer: read_key(key_file)?,
        })
    }

    /// The address the settlement contract is deployed with as its statement signer.
    pub fn address(&self) -> EthAddress {
        EthAddress(self.signer.address().into_array())
    }

    /// `statement`, signed for deployment `domain`.
    pub fn sign(
        &self,
        statement: CreditStatement,
        domain: &Domain,
    ) -> Result<SignedStatement, StatementError> {
        let digest = B256::from(statement.signing_digest(domain));
        let signature = self.signer.sign_hash_sync(&digest)?.as_bytes().to_vec();
        Ok(SignedStatement {
            statement,
            domain: *domain,
            signature,
        })
    }

    /// The statement, signed for `domain`, of what `ledger` credited `rig` before
    /// `before_ms` (`None` while it credited nothing). Only an instant older than the audit
    /// window makes a statement that stays true.
    pub fn statement(
        &self,
        ledger: &Ledger,
        rig: &RigId,
        before_ms: u64,
        domain: &Domain,
    ) -> Result<Option<SignedStatement>, StatementError> {
        ledger
            .credited_before(rig, before_ms)?
            .map(|s| self.sign(s, domain))
            .transpose()
    }
}
