//! The checks every [`KeyStore`] backend must pass, whatever holds the key.

use super::{KeyError, KeyStore};
use rigd_protocol::digest::keccak256;
use rigd_protocol::{BatchHeader, PublicKey, Receipt, RigId};

/// Runs every check against the backend that `open` opens; `open` is called twice to check
/// that the key persists.
pub(crate) fn check(open: &dyn Fn() -> Result<Box<dyn KeyStore>, KeyError>) {
    let key = open().unwrap_or_else(|e| panic!("open: {e}"));
    let public = key.public_key();
    let again = open().unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_eq!(
        again.public_key(),
        public,
        "the key must persist across opens"
    );
    assert!(
        !key.describe().is_empty(),
        "a backend describes where its key lives"
    );

    for i in 0u8..8 {
        let digest = keccak256(&[&[i]]);
        let sig = key
            .sign_digest(&digest)
            .unwrap_or_else(|e| panic!("sign: {e}"));
        assert_eq!(
            public.verify(&digest, &sig),
            Ok(()),
            "signature {i} verifies"
        );
        let other = keccak256(&[b"other", &[i]]);
        assert!(
            public.verify(&other, &sig).is_err(),
            "signature {i} is bound to its digest"
        );
        assert_eq!(sig.0.len(), expected_len(&public), "signature encoding");
    }

    let rig = RigId::new("conformance").unwrap_or_else(|e| panic!("{e}"));
    let receipts: Vec<Receipt> = (1..=3).map(|seq| receipt(&rig, seq)).collect();
    let header = BatchHeader::over(&rig, rigd_protocol::Domain::LOCAL, &receipts)
        .unwrap_or_else(|e| panic!("{e}"));
    let sig = again
        .sign_digest(&header.signing_digest())
        .unwrap_or_else(|e| panic!("sign batch: {e}"));
    assert_eq!(
        public.verify(&header.signing_digest(), &sig),
        Ok(()),
        "a batch header signed by the reopened key verifies"
    );
}

fn expected_len(public: &PublicKey) -> usize {
    match public {
        PublicKey::Secp256k1(_) => 65,
        PublicKey::P256(_) => 64,
    }
}

fn receipt(rig: &RigId, seq: u64) -> Receipt {
    Receipt {
        rig: rig.clone(),
        seq,
        card: rigd_protocol::GpuUuid::new("SIM-0").unwrap_or_else(|e| panic!("{e}")),
        job: rigd_protocol::JobId::new("job").unwrap_or_else(|e| panic!("{e}")),
        unit: seq,
        attempt: 0,
        work: 1000,
        input_digest: [1; 32],
        output_digest: [2; 32],
        started_ms: 1,
        finished_ms: 2,
        governor_level: 0,
    }
}
