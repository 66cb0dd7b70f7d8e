use super::*;
use crate::crypto::tests::{k256_pair_from, k256_sign as sign};
use crate::ids::{GpuUuid, JobId, RigId};
use k256::ecdsa::SigningKey;
use proptest::prelude::*;

fn key() -> (SigningKey, PublicKey) {
    k256_pair_from(5)
}

fn receipts(rig: &RigId, first: u64, works: &[u64]) -> Vec<Receipt> {
    works
        .iter()
        .enumerate()
        .map(|(i, work)| Receipt {
            rig: rig.clone(),
            seq: first + i as u64,
            card: GpuUuid::new(format!("GPU-{}", i % 3)).unwrap_or_else(|_| unreachable!()),
            job: JobId::new("job").unwrap_or_else(|_| unreachable!()),
            unit: i as u64,
            attempt: 0,
            work: *work,
            input_digest: [i as u8; 32],
            output_digest: [(i as u8) ^ 0xff; 32],
            started_ms: 10,
            finished_ms: 20,
            governor_level: (i % 6) as u8,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_receipt_of_a_random_batch_verifies_and_every_tampering_is_refused(
        first in 1u64..1_000_000,
        works in proptest::collection::vec(any::<u64>(), 1..20),
        pick in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let rig = RigId::new("rig-p").unwrap_or_else(|_| unreachable!());
        let batch = receipts(&rig, first, &works);
        let header = BatchHeader::over(&rig, crate::Domain::LOCAL, &batch).unwrap_or_else(|e| panic!("{e}"));
        let (sk, pk) = key();
        let sig = sign(&sk, &header.signing_digest());
        let leaves: Vec<Hash32> = batch.iter().map(Receipt::struct_hash).collect();
        let i = pick.index(batch.len());
        let proof = merkle::proof(&leaves, i).unwrap_or_default();
        let r = &batch[i];
        prop_assert!(verify_receipt(r, &proof, &header, &sig, &pk).is_ok());

        let mut tampered = r.clone();
        tampered.work = tampered.work.wrapping_add(1);
        prop_assert_eq!(verify_receipt(&tampered, &proof, &header, &sig, &pk), Err(ReceiptError::NotIncluded));

        if !proof.is_empty() {
            let mut bad_proof = proof.clone();
            let j = flip.index(bad_proof.len());
            bad_proof[j][0] ^= 1;
            prop_assert_eq!(verify_receipt(r, &bad_proof, &header, &sig, &pk), Err(ReceiptError::NotIncluded));
        }

        let mut bad_header = header.clone();
        bad_header.count += 1;
        let header_refused = matches!(verify_receipt(r, &proof, &bad_header, &sig, &pk), Err(ReceiptError::Signature(_)));
        prop_assert!(header_refused, "a changed header is refused");
        let mut bad_root = header.clone();
        bad_root.root[31] ^= 1;
        prop_assert_eq!(verify_receipt(r, &proof, &bad_root, &sig, &pk), Err(ReceiptError::NotIncluded));

        let mut bad_sig = sig.clone();
        bad_sig.0[10] ^= 1;
        let sig_refused = matches!(verify_receipt(r, &proof, &header, &bad_sig, &pk), Err(ReceiptError::Signature(_)));
        prop_assert!(sig_refused, "a changed signature is refused");

        let (_, other_pk) = k256_pair_from(6);
        prop_assert_eq!(
            verify_receipt(r, &proof, &header, &sig, &other_pk),
            Err(ReceiptError::Signature(VerifyError::Mismatch))
        );

        let mut moved = r.clone();
        moved.seq = header.first_seq + u64::from(header.count);
        let outside = matches!(verify_receipt(&moved, &proof, &header, &sig, &pk), Err(ReceiptError::OutsideBatch { .. }));
        prop_assert!(outside, "a receipt outside the batch is refused");
        let mut foreign = r.clone();
        foreign.rig = RigId::new("rig-q").unwrap_or_else(|_| unreachable!());
        let foreign_refused = matches!(verify_receipt(&foreign, &proof, &header, &sig, &pk), Err(ReceiptError::WrongRig { .. }));
        prop_assert!(foreign_refused, "a receipt of another rig is refused");
    }
}

fn signed_batch(rig: &RigId, first: u64, works: &[u64]) -> ReceiptBatch {
    let receipts = receipts(rig, first, works);
    let header =
        BatchHeader::over(rig, crate::Domain::LOCAL, &receipts).unwrap_or_else(|e| panic!("{e}"));
    let (sk, _) = key();
    let signature = sign(&sk, &header.signing_digest());
    let output = crate::UnitOutput::GemmI8 { c_digest: [0; 32] };
    ReceiptBatch {
        header,
        signature,
        items: crate::ReceiptItem::with_proofs(
            receipts.into_iter().map(|r| (r, output.clone())).collect(),
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_random_batch_verifies_with_its_carried_proofs_and_every_tampering_names_the_receipt(
        first in 1u64..1_000_000,
        works in proptest::collection::vec(any::<u64>(), 1..40),
        pick in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let rig = RigId::new("rig-b").unwrap_or_else(|_| unreachable!());
        let batch = signed_batch(&rig, first, &works);
        let (_, pk) = key();
        let checked = verify_batch(&batch, &pk).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(checked.len(), works.len());
        let i = pick.index(works.len());
        // Each carried proof is also what verify_receipt accepts on its own.
        let item = &batch.items[i];
        prop_assert!(verify_receipt(&item.receipt, &item.proof, &batch.header, &batch.signature, &pk).is_ok());

        let mut t = batch.clone();
        t.items[i].receipt.work = t.items[i].receipt.work.wrapping_add(1);
        prop_assert_eq!(verify_batch(&t, &pk), Err(BatchError::Receipt { index: i, reason: ReceiptError::NotIncluded }));

        if !batch.items[i].proof.is_empty() {
            let mut t = batch.clone();
            let j = flip.index(t.items[i].proof.len());
            t.items[i].proof[j][5] ^= 1;
            prop_assert_eq!(verify_batch(&t, &pk), Err(BatchError::Receipt { index: i, reason: ReceiptError::NotIncluded }));
            let mut t = batch.clone();
            t.items[i].proof = vec![[0; 32]; merkle::MAX_PROOF + 1];
            prop_assert_eq!(verify_batch(&t, &pk), Err(BatchError::Receipt { index: i, reason: ReceiptError::NotIncluded }));
        }

        if works.len() > 1 {
            let mut t = batch.clone();
            let j = (i + 1) % works.len();
            t.items.swap(i, j);
            let refused = matches!(verify_batch(&t, &pk), Err(BatchError::Receipt { reason: ReceiptError::OutOfOrder { .. }, .. }));
            prop_assert!(refused, "swapped receipts are refused");
        }

        let mut t = batch.clone();
        t.items.remove(i);
        let short = matches!(verify_batch(&t, &pk), Err(BatchError::Count { .. }));
        prop_assert!(short, "a dropped receipt is refused");

        let mut t = batch.clone();
        t.signature.0[3] ^= 1;
        let bad_sig = matches!(verify_batch(&t, &pk), Err(BatchError::Signature(_)));
        prop_assert!(bad_sig, "a changed signature is refused");
        let (_, other_pk) = k256_pair_from(6);
        prop_assert_eq!(verify_batch(&batch, &other_pk), Err(BatchError::Signature(VerifyError::Mismatch)));

        let mut t = batch.clone();
        t.header.root[0] ^= 1;
        let bad_root = matches!(verify_batch(&t, &pk), Err(BatchError::Signature(_)));
        prop_assert!(bad_root, "a changed header is refused");
    }
}

#[test]
fn a_batch_frame_round_trips_its_proofs_and_an_overlong_proof_is_refused_on_decode() {
    let rig = RigId::new("rig-f").unwrap_or_else(|_| unreachable!());
    let batch = signed_batch(&rig, 7, &[1, 2, 3, 4, 5]);
    let decoded = crate::decode::<ReceiptBatch>(&crate::encode(&batch));
    assert_eq!(decoded.as_ref(), Ok(&batch));
    let mut long = batch;
    long.items[2].proof = vec![[1; 32]; merkle::MAX_PROOF + 1];
    match crate::decode::<ReceiptBatch>(&crate::encode(&long)) {
        Err(crate::FrameError::Invalid { reason, .. }) => {
            assert!(reason.contains("proof"), "{reason}")
        }
        other => panic!("an overlong proof decoded: {other:?}"),
    }
}
