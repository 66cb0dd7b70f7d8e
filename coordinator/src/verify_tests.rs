use super::*;
use rigd_kernels::MlpShape;
use rigd_protocol::verify::ReceiptError;
use rigd_protocol::WorkUnit;
use rigd_testkit::fixtures::{job_id, rig_id};
use rigd_testkit::signer::TestRig;

fn gemm_unit() -> WorkUnit {
    WorkUnit {
        job: job_id("job"),
        unit: 3,
        attempt: 0,
        kind: UnitKind::GemmI8 {
            seed: 9,
            m: 8,
            n: 4,
            k: 16,
        },
    }
}

fn expected(unit: &WorkUnit) -> Expected {
    Expected {
        input_digest: unit.kind.input_digest(),
        work: 2 * 8 * 4 * 16,
    }
}

fn signed() -> (TestRig, ReceiptBatch) {
    let mut rig = TestRig::new("rig-1", 5);
    let unit = gemm_unit();
    let output = recompute(&unit.kind).unwrap_or_else(|e| panic!("{e}"));
    let items = vec![
        rig.receipt(&unit, &output, 1024),
        rig.receipt(&unit, &output, 1024),
    ];
    let batch = rig.batch(items);
    (rig, batch)
}

#[test]
fn a_well_signed_batch_authenticates() {
    let (rig, batch) = signed();
    assert_eq!(authenticate(&rig.id, &batch, &rig.pubkey()), Ok(()));
}

#[test]
fn a_batch_signed_by_another_key_is_refused() {
    let (_, batch) = signed();
    let other = TestRig::new("rig-1", 6);
    assert!(matches!(
        authenticate(&other.id, &batch, &other.pubkey()),
        Err(AuthError::Batch(BatchError::Signature(_)))
    ));
    let mut garbled = batch.clone();
    garbled.signature.0.truncate(3);
    let (rig, _) = signed();
    assert!(matches!(
        authenticate(&rig.id, &garbled, &rig.pubkey()),
        Err(AuthError::Batch(BatchError::Signature(_)))
    ));
}

#[test]
fn a_receipt_changed_after_signing_breaks_the_root() {
    let (rig, mut batch) = signed();
    batch.items[1].receipt.work += 1;
    assert_eq!(
        authenticate(&rig.id, &batch, &rig.pubkey()),
        Err(AuthError::Batch(BatchError::Receipt {
            index: 1,
            reason: ReceiptError::NotIncluded
        }))
    );
    let (rig, mut batch) = signed();
    batch.items[0].proof[0][0] ^= 1;
    assert_eq!(
        authenticate(&rig.id, &batch, &rig.pubkey()),
        Err(AuthError::Batch(BatchError::Receipt {
            index: 0,
            reason: ReceiptError::NotIncluded
        }))
    );
    let (rig, mut batch) = signed();
    batch.header.root[0] ^= 1;
    assert!(authenticate(&rig.id, &batch, &rig.pubkey()).is_err());
}

#[test]
fn a_batch_on_another_rigs_topic_is_refused() {
    let (rig, batch) = signed();
    assert!(matches!(
        authenticate(&rig_id("rig-2"), &batch, &rig.pubkey()),
        Err(AuthError::RigMismatch { .. })
    ));
}

#[test]
fn receipt_checks_catch_wrong_output_input_and_work() {
    let (_, batch) = signed();
    let item = &batch.items[0];
    let exp = expected(&gemm_unit());
    assert_eq!(check_receipt(&item.receipt, &item.output, &exp), Ok(()));

    let other_output = UnitOutput::GemmI8 { c_digest: [7; 32] };
    assert_eq!(
        check_receipt(&item.receipt, &other_output, &exp),
        Err(Rejection::OutputDigest)
    );
    let mut r = item.receipt.clone();
    r.input_digest[0] ^= 1;
    assert_eq!(
        check_receipt(&r, &item.output, &exp),
        Err(Rejection::InputDigest)
    );
    let mut r = item.receipt.clone();
    r.work = 1;
    assert_eq!(check_receipt(&r, &item.output, &exp), Err(Rejection::Work));
}

#[test]
fn gemm_results_must_be_bit_exact() {
    let want = recompute(&gemm_unit().kind).unwrap_or_else(|e| panic!("{e}"));
    assert!(outputs_agree(&want, &want, 0.5));
    let UnitOutput::GemmI8 { mut c_digest } = want.clone() else {
        unreachable!()
    };
    c_digest[31] ^= 1;
    assert!(!outputs_agree(&want, &UnitOutput::GemmI8 { c_digest }, 0.5));
}

fn mlp(loss: f32, grad: Vec<f32>) -> UnitOutput {
    UnitOutput::MlpGrad {
        loss_sum: loss,
        samples: 4,
        grad_sum: grad,
    }
}

#[test]
fn float_results_within_tolerance_agree_and_outside_do_not() {
    let want = mlp(100.0, vec![1000.0, 0.5, 0.0]);
    // Relative above magnitude 1, absolute below.
    assert!(outputs_agree(
        &want,
        &mlp(100.009, vec![1000.09, 0.50009, -0.00009]),
        1e-4
    ));
    assert!(!outputs_agree(
        &want,
        &mlp(100.02, vec![1000.0, 0.5, 0.0]),
        1e-4
    ));
    assert!(!outputs_agree(
        &want,
        &mlp(100.0, vec![1000.2, 0.5, 0.0]),
        1e-4
    ));
    assert!(!outputs_agree(
        &want,
        &mlp(100.0, vec![1000.0, 0.5, 0.0002]),
        1e-4
    ));
    assert!(!outputs_agree(
        &want,
        &mlp(100.0, vec![1000.0, 0.5, f32::NAN]),
        1e-4
    ));
    assert!(!outputs_agree(&want, &mlp(100.0, vec![1000.0, 0.5]), 1e-4));
    let other_samples = UnitOutput::MlpGrad {
        loss_sum: 100.0,
        samples: 5,
        grad_sum: vec![1000.0, 0.5, 0.0],
    };
    assert!(!outputs_agree(&want, &other_samples, 1e-4));
    assert!(!outputs_agree(
        &want,
        &UnitOutput::GemmI8 { c_digest: [0; 32] },
        1e-4
    ));
}

#[test]
fn mlp_recompute_matches_the_kernels() {
    let kind = UnitKind::MlpGrad {
        shape: [4, 8, 3],
        params: rigd_kernels::mlp_init_params(
            &MlpShape {
                input: 4,
                hidden: 8,
                output: 3,
            },
            1,
        ),
        data_seed: 2,
        data_classes: 3,
        data_spread: 0.5,
        start: 10,
        count: 16,
    };
    let out = recompute(&kind).unwrap_or_else(|e| panic!("{e}"));
    let UnitOutput::MlpGrad {
        samples, grad_sum, ..
    } = &out
    else {
        panic!("wrong kind")
    };
    assert_eq!((*samples, grad_sum.len()), (16, 4 * 8 + 8 + 8 * 3 + 3));
    assert!(outputs_agree(&out, &out, 0.0));
}

#[test]
fn the_sampler_picks_about_the_share_asked() {
    let rig = rig_id("rig-1");
    let none = Sampler::with_salt(0.0, 1);
    let all = Sampler::with_salt(1.0, 1);
    let half = Sampler::with_salt(0.5, 1);
    assert!((0..1000).all(|s| !none.pick(&rig, s)));
    assert!((0..1000).all(|s| all.pick(&rig, s)));
    let picked = (0..2000).filter(|s| half.pick(&rig, *s)).count();
    assert!((800..1200).contains(&picked), "{picked}");
}

#[test]
fn every_rejection_is_listed_once_with_its_own_reason() {
    let reasons: std::collections::HashSet<&str> =
        Rejection::ALL.iter().map(|r| r.reason()).collect();
    assert_eq!(reasons.len(), Rejection::ALL.len());
}
