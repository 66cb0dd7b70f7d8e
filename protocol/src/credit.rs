//! The network's credit statements: what the coordinator credited a rig, signed by the
//! network's statement key in the deployment's EIP-712 [`Domain`], so that a rig's owner can
//! prove on chain what the network owes it (a dispute, `RigdSettlement.openDispute`).
//!
//! ```text
//! Credit(string rig,uint64 lastSeq,uint64 beforeMs,uint256 creditedTotal)
//! ```

use crate::digest::{abi_u64, keccak256, Hash32};
use crate::ids::RigId;
use crate::receipt::Domain;
use serde::{Deserialize, Serialize};

/// The EIP-712 type string of a credit statement.
pub const CREDIT_TYPE: &str =
    "Credit(string rig,uint64 lastSeq,uint64 beforeMs,uint256 creditedTotal)";

/// All the credit the coordinator recorded for `rig` before `before_ms` and kept past its
/// audit window (so final: a caught wrong result forfeits only younger credit), in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditStatement {
    /// The rig.
    pub rig: RigId,
    /// The highest sequence number among the receipts counted.
    pub last_seq: u64,
    /// Credit recorded before this Unix time (ms) is counted.
    pub before_ms: u64,
    /// What it totals, micro-credits (one token unit each).
    pub credited_total: u64,
}

impl CreditStatement {
    /// `hashStruct(Credit)`.
    pub fn struct_hash(&self) -> Hash32 {
        keccak256(&[
            &keccak256(&[CREDIT_TYPE.as_bytes()]),
            &keccak256(&[self.rig.as_str().as_bytes()]),
            &abi_u64(self.last_seq),
            &abi_u64(self.before_ms),
            &abi_u64(self.credited_total),
        ])
    }

    /// The EIP-712 digest the statement key signs in `domain`; on chain, the dispute's id.
    pub fn signing_digest(&self, domain: &Domain) -> Hash32 {
        keccak256(&[b"\x19\x01", &domain.separator(), &self.struct_hash()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EthAddress;

    #[test]
    fn each_field_and_the_domain_change_the_digest() {
        let s = CreditStatement {
            rig: RigId::new("rig-1").unwrap_or_else(|e| panic!("{e}")),
            last_seq: 7,
            before_ms: 1_000,
            credited_total: 500,
        };
        let d = Domain::LOCAL;
        let base = s.signing_digest(&d);
        let variants = [
            CreditStatement {
                last_seq: 8,
                ..s.clone()
            },
            CreditStatement {
                before_ms: 1_001,
                ..s.clone()
            },
            CreditStatement {
                credited_total: 501,
                ..s.clone()
            },
            CreditStatement {
                rig: RigId::new("rig-2").unwrap_or_else(|e| panic!("{e}")),
                ..s.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.signing_digest(&d), base, "{v:?}");
        }
        assert_ne!(
            s.signing_digest(&Domain::new(1, EthAddress(d.verifying_contract))),
            base
        );
    }
}
