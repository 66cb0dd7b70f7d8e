//! Public keys, signatures over 32-byte digests, and their verification.
//!
//! secp256k1 signatures are 65 bytes `r ‖ s ‖ v` (v = 27 + recovery id), checked by
//! recovering the signer, as Ethereum's `ecrecover` does. P-256 signatures are 64 bytes
//! `r ‖ s`, checked against the public key, as the P256VERIFY precompile does. Both must be
//! low-s.

use crate::digest::{keccak256, Hash32};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A rig's public signing key, SEC1-compressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublicKey {
    /// secp256k1 (software keys, YubiHSM2, PKCS#11).
    Secp256k1(Vec<u8>),
    /// NIST P-256 (TPM 2.0, PKCS#11).
    P256(Vec<u8>),
}

/// A signature over a 32-byte digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(pub Vec<u8>);

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The public key bytes are not a point on the curve.
    #[error("public key is not a valid {curve} point")]
    BadKey {
        /// The curve.
        curve: &'static str,
    },
    /// The signature has the wrong length or is not a valid signature encoding.
    #[error("signature is malformed: {0}")]
    Malformed(String),
    /// High-s signatures are refused (malleability).
    #[error("signature is not low-s normalized")]
    HighS,
    /// The signature does not verify under the key.
    #[error("signature does not match the rig's key")]
    Mismatch,
}

impl PublicKey {
    /// The curve's name.
    pub fn curve(&self) -> &'static str {
        match self {
            PublicKey::Secp256k1(_) => "secp256k1",
            PublicKey::P256(_) => "P-256",
        }
    }

    /// The Ethereum address of a secp256k1 key (last 20 bytes of keccak of the uncompressed
    /// point); `None` for P-256 keys.
    pub fn eth_address(&self) -> Option<[u8; 20]> {
        let PublicKey::Secp256k1(bytes) = self else {
            return None;
        };
        let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).ok()?;
        let point = key.to_encoded_point(false);
        let hash = keccak256(&[point.as_bytes().get(1..)?]);
        let mut out = [0u8; 20];
        out.copy_from_slice(&hash[12..]);
        Some(out)
    }

    /// Checks `sig` over `digest` (a prehash: no further hashing).
    pub fn verify(&self, digest: &Hash32, sig: &Signature) -> Result<(), VerifyError> {
        match self {
            PublicKey::Secp256k1(bytes) => verify_k256(bytes, digest, &sig.0),
            PublicKey::P256(bytes) => verify_p256(bytes, digest, &sig.0),
        }
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Secp256k1(b) => write!(f, "secp256k1:{}", hex::encode(b)),
            PublicKey::P256(b) => write!(f, "p256:{}", hex::encode(b)),
        }
    }
}

fn verify_k256(key: &[u8], digest: &Hash32, sig: &[u8]) -> Result<(), VerifyError> {
    use k256::ecdsa::{RecoveryId, Signature as KSig, VerifyingKey};
    let expected = VerifyingKey::from_sec1_bytes(key)
        .map_err(|_| VerifyError::BadKey { curve: "secp256k1" })?;
    let [rs @ .., v] = sig else {
        return Err(VerifyError::Malformed("empty".into()));
    };
    if rs.len() != 64 {
        return Err(VerifyError::Malformed(format!(
            "secp256k1 signature is 65 bytes, got {}",
            sig.len()
        )));
    }
    let parsed = KSig::from_slice(rs).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if parsed.normalize_s().is_some() {
        return Err(VerifyError::HighS);
    }
    let recid = v
        .checked_sub(27)
        .filter(|b| *b < 2)
        .and_then(RecoveryId::from_byte)
        .ok_or_else(|| VerifyError::Malformed(format!("recovery byte {v} is not 27 or 28")))?;
    let recovered = VerifyingKey::recover_from_prehash(digest, &parsed, recid)
        .map_err(|_| VerifyError::Mismatch)?;
    if recovered == expected {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

fn verify_p256(key: &[u8], digest: &Hash32, sig: &[u8]) -> Result<(), VerifyError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::ecdsa::{Signature as PSig, VerifyingKey};
    let key =
        VerifyingKey::from_sec1_bytes(key).map_err(|_| VerifyError::BadKey { curve: "P-256" })?;
    if sig.len() != 64 {
        return Err(VerifyError::Malformed(format!(
            "P-256 signature is 64 bytes, got {}",
            sig.len()
        )));
    }
    let parsed = PSig::from_slice(sig).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if parsed.normalize_s().is_some() {
        return Err(VerifyError::HighS);
    }
    key.verify_prehash(digest, &parsed)
        .map_err(|_| VerifyError::Mismatch)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;

    /// A fixed secp256k1 test key (seed byte 7) and its public key.
    pub(crate) fn k256_pair() -> (SigningKey, PublicKey) {
        k256_pair_from(7)
    }

    /// The secp256k1 test key with every secret byte `seed`, and its public key.
    pub(crate) fn k256_pair_from(seed: u8) -> (SigningKey, PublicKey) {
        let sk = SigningKey::from_slice(&[seed; 32]).unwrap_or_else(|_| unreachable!());
        let pk = PublicKey::Secp256k1(
            sk.verifying_key()
                .to_encoded_point(true)
                .as_bytes()
                .to_vec(),
        );
        (sk, pk)
    }

    /// An Ethereum-style signature (r, s, v = 27 + recovery id) over a prehash.
    pub(crate) fn k256_sign(sk: &SigningKey, digest: &Hash32) -> Signature {
        let (sig, recid) = sk
            .sign_prehash_recoverable(digest)
            .unwrap_or_else(|_| unreachable!());
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + recid.to_byte());
        Signature(bytes)
    }

    #[test]
    fn secp256k1_signature_verifies_and_tampering_is_refused() {
        let (sk, pk) = k256_pair();
        let digest = keccak256(&[b"batch"]);
        let sig = k256_sign(&sk, &digest);
        assert_eq!(pk.verify(&digest, &sig), Ok(()));
        let other = keccak256(&[b"other"]);
        assert_eq!(pk.verify(&other, &sig), Err(VerifyError::Mismatch));
        let mut bad = sig.clone();
        bad.0[64] = 30;
        assert!(matches!(
            pk.verify(&digest, &bad),
            Err(VerifyError::Malformed(_))
        ));
        let short = Signature(sig.0[..10].to_vec());
        assert!(matches!(
            pk.verify(&digest, &short),
            Err(VerifyError::Malformed(_))
        ));
        assert!(PublicKey::Secp256k1(vec![1, 2, 3])
            .verify(&digest, &sig)
            .is_err());
    }

    #[test]
    fn p256_signature_verifies_and_wrong_digest_is_refused() {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        let sk = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap_or_else(|_| unreachable!());
        let pk = PublicKey::P256(
            sk.verifying_key()
                .to_encoded_point(true)
                .as_bytes()
                .to_vec(),
        );
        let digest = keccak256(&[b"batch"]);
        let sig: p256::ecdsa::Signature =
            sk.sign_prehash(&digest).unwrap_or_else(|_| unreachable!());
        let sig = sig.normalize_s().unwrap_or(sig);
        let sig = Signature(sig.to_bytes().to_vec());
        assert_eq!(pk.verify(&digest, &sig), Ok(()));
        assert_eq!(
            pk.verify(&keccak256(&[b"x"]), &sig),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn eth_address_matches_a_known_vector() {
        // Private key 1 -> address 0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf.
        let mut one = [0u8; 32];
        one[31] = 1;
        let sk = SigningKey::from_slice(&one).unwrap_or_else(|_| unreachable!());
        let pk = PublicKey::Secp256k1(
            sk.verifying_key()
                .to_encoded_point(true)
                .as_bytes()
                .to_vec(),
        );
        assert_eq!(
            pk.eth_address().map(hex::encode).unwrap_or_default(),
            "7e5f4552091a69125d5dfcb7b8c2659029395bdf"
        );
    }
}
