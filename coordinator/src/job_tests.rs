use super::*;
use crate::verify::recompute;
use rigd_testkit::fixtures::job_id;

fn mlp_spec(max_steps: u64, loss_target: f32) -> JobSpec {
    JobSpec::TrainMlp {
        job: job_id("train"),
        shape: [8, 16, 3],
        data_seed: 11,
        data_spread: 0.5,
        shards_per_step: 3,
        samples_per_shard: 64,
        lr: 0.5,
        max_steps,
        loss_target,
        eval_samples: 256,
    }
}

fn gemm_spec(units: u64) -> JobSpec {
    JobSpec::Gemm {
        job: job_id("gemm"),
        units,
        m: 4,
        n: 4,
        k: 4,
        seed: 3,
    }
}

/// The fields of an MLP result.
fn parts(out: &UnitOutput) -> (f32, u32, Vec<f32>) {
    match out {
        UnitOutput::MlpGrad {
            loss_sum,
            samples,
            grad_sum,
        } => (*loss_sum, *samples, grad_sum.clone()),
        UnitOutput::GemmI8 { .. } => unreachable!(),
    }
}

fn cpu_result(job: &Job, unit: u64) -> UnitOutput {
    let wu = job
        .work_unit(unit, 0)
        .unwrap_or_else(|| panic!("unit {unit} not open"));
    recompute(&wu.kind).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn mlp_training_reaches_the_loss_target_when_fed_cpu_results() {
    let mut job = Job::new(&mlp_spec(200, 0.1)).unwrap_or_else(|e| panic!("{e}"));
    let mut losses = vec![];
    while !job.finished() {
        let open = job.open_units();
        assert_eq!(open.len(), 3);
        for unit in open {
            let out = cpu_result(&job, unit);
            assert!(job.output_fits(unit, &out));
            if let Some(s) = job.accept(unit, &out).unwrap_or_else(|e| panic!("{e}")) {
                losses.extend(s.checkpoint.loss);
            }
        }
    }
    let (step, total, loss) = job.progress();
    assert!(loss.is_some_and(|l| l <= 0.1), "{losses:?}");
    assert!(
        step < total,
        "target reached only at the step cap: {losses:?}"
    );
    assert!(losses[0] > losses[losses.len() - 1]);
}

#[test]
fn shards_cover_fresh_disjoint_samples_and_steps_follow_each_other() {
    let mut job = Job::new(&mlp_spec(5, 0.0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(job.open_units(), vec![0, 1, 2]);
    let shards: Vec<(u64, u32)> = (0..3)
        .filter_map(|u| match job.work_unit(u, 0).map(|w| w.kind) {
            Some(UnitKind::MlpGrad { start, count, .. }) => Some((start, count)),
            _ => None,
        })
        .collect();
    assert_eq!(shards, vec![(0, 64), (64, 64), (128, 64)]);
    let mut stitched = None;
    for u in 0..3 {
        let out = cpu_result(&job, u);
        stitched = job.accept(u, &out).unwrap_or_else(|e| panic!("{e}"));
    }
    let s = stitched.unwrap_or_else(|| panic!("step not stitched"));
    assert_eq!(
        (s.units, s.next_units.clone(), s.checkpoint.step),
        (0..3, 3..6, 1)
    );
    assert_eq!(job.open_units(), vec![3, 4, 5]);
    assert_eq!(job.lookup(0), Lookup::Done);
    assert_eq!(job.lookup(6), Lookup::Unknown);
    assert!(job.work_unit(0, 0).is_none());
}

#[test]
fn a_unit_with_a_result_is_done_and_a_second_result_changes_nothing() {
    let mut job = Job::new(&mlp_spec(5, 0.0)).unwrap_or_else(|e| panic!("{e}"));
    let out = cpu_result(&job, 1);
    assert!(matches!(job.lookup(1), Lookup::Open(_)));
    assert_eq!(job.accept(1, &out), Ok(None));
    assert_eq!(job.lookup(1), Lookup::Done);
    assert_eq!(job.accept(1, &out), Ok(None));
    assert_eq!(job.open_units(), vec![0, 2]);

    let mut gemm = Job::new(&gemm_spec(3)).unwrap_or_else(|e| panic!("{e}"));
    let out = cpu_result(&gemm, 2);
    assert!(matches!(gemm.lookup(2), Lookup::Open(_)));
    assert_eq!(gemm.accept(2, &out), Ok(None));
    assert_eq!(gemm.accept(2, &out), Ok(None));
    assert_eq!(gemm.lookup(2), Lookup::Done);
    assert_eq!(gemm.lookup(3), Lookup::Unknown);
    assert_eq!(gemm.progress(), (1, 3, None));
    assert!(!gemm.finished());
}

#[test]
fn a_gemm_job_finishes_when_every_unit_is_done() {
    let mut job = Job::new(&gemm_spec(4)).unwrap_or_else(|e| panic!("{e}"));
    job.restore(None, &[], &[0, 1, 9])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(job.open_units(), vec![2, 3]);
    for u in [2, 3] {
        let out = cpu_result(&job, u);
        job.accept(u, &out).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(job.finished());
    assert!(job.open_units().is_empty());
}

#[test]
fn an_mlp_job_resumes_from_its_checkpoint_and_kept_outputs() {
    let mut first = Job::new(&mlp_spec(5, 0.0)).unwrap_or_else(|e| panic!("{e}"));
    let mut checkpoint = None;
    for u in 0..3 {
        let out = cpu_result(&first, u);
        if let Some(s) = first.accept(u, &out).unwrap_or_else(|e| panic!("{e}")) {
            checkpoint = Some(s.checkpoint);
        }
    }
    let kept: Vec<(u64, UnitOutput)> = [3, 4]
        .iter()
        .map(|u| (*u, cpu_result(&first, *u)))
        .collect();
    let mut resumed = Job::new(&mlp_spec(5, 0.0)).unwrap_or_else(|e| panic!("{e}"));
    let s = resumed
        .restore(checkpoint, &kept, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s, None);
    assert_eq!(resumed.open_units(), vec![5]);
    assert_eq!(resumed.work_unit(5, 0), first.work_unit(5, 0));
}

#[test]
fn outputs_of_the_wrong_form_do_not_fit() {
    let job = Job::new(&mlp_spec(5, 0.0)).unwrap_or_else(|e| panic!("{e}"));
    let out = cpu_result(&job, 0);
    let (loss_sum, samples, grad_sum) = parts(&out);
    let short = UnitOutput::MlpGrad {
        loss_sum,
        samples,
        grad_sum: grad_sum[1..].to_vec(),
    };
    let nan = UnitOutput::MlpGrad {
        loss_sum: f32::NAN,
        samples,
        grad_sum: grad_sum.clone(),
    };
    let fewer = UnitOutput::MlpGrad {
        loss_sum,
        samples: samples - 1,
        grad_sum,
    };
    for bad in [short, nan, fewer, UnitOutput::GemmI8 { c_digest: [0; 32] }] {
        assert!(!job.output_fits(0, &bad));
    }
    assert!(job.output_fits(0, &out));
    assert!(!job.output_fits(7, &out));
}

/// A poisoned shard (finite gradients of 3e37, a negative loss, a gradient just past the
/// bound) is refused before it is applied; honest shards over a whole training run stay far
/// below the bound.
#[test]
fn poisoned_gradients_do_not_fit_and_honest_ones_stay_far_below_the_bound() {
    let mut job = Job::new(&mlp_spec(40, 0.0)).unwrap_or_else(|e| panic!("{e}"));
    let out = cpu_result(&job, 0);
    let (loss_sum, samples, grad_sum) = parts(&out);
    let huge = UnitOutput::MlpGrad {
        loss_sum,
        samples,
        grad_sum: vec![3e37; grad_sum.len()],
    };
    let negative_loss = UnitOutput::MlpGrad {
        loss_sum: -1.0,
        samples,
        grad_sum: grad_sum.clone(),
    };
    let mut past = vec![0.0f32; grad_sum.len()];
    past[0] = (MAX_GRAD_NORM * f64::from(samples) * 1.001) as f32;
    let just_past = UnitOutput::MlpGrad {
        loss_sum,
        samples,
        grad_sum: past,
    };
    for bad in [huge, negative_loss, just_past] {
        assert!(!job.output_fits(0, &bad));
    }
    let mut largest = 0f64;
    while !job.finished() {
        let (step, _, _) = job.progress();
        let shards = job.open_units();
        for unit in shards {
            let out = cpu_result(&job, unit);
            if let UnitOutput::MlpGrad {
                samples, grad_sum, ..
            } = &out
            {
                let norm: f64 = grad_sum.iter().map(|g| f64::from(*g).powi(2)).sum::<f64>();
                largest = largest.max(norm.sqrt() / f64::from(*samples));
            }
            assert!(
                job.output_fits(unit, &out),
                "honest shard refused at step {step}"
            );
            let _ = job.accept(unit, &out);
        }
    }
    assert!(largest < MAX_GRAD_NORM / 10.0, "honest norm {largest}");
    assert_eq!(job.clipped(), 0, "honest shards are never clipped");
}

/// The parameters after stitching one step of `job` with `outputs` for its shards.
fn step_with(job: &Job, outputs: &[UnitOutput]) -> (Vec<f32>, u64) {
    let mut job = job.clone();
    let mut stitched = None;
    for (unit, out) in outputs.iter().enumerate() {
        stitched = job
            .accept(unit as u64, out)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let params = stitched
        .unwrap_or_else(|| panic!("step not stitched"))
        .checkpoint
        .params;
    (params, job.clipped())
}

/// A shard inside the norm bound but far above the step's median is clipped to
/// `CLIP_FACTOR` times the median: the step moves the model by at most that much more than
/// the honest step would, where unclipped it would move it by the shard's whole norm.
#[test]
fn a_shard_far_above_the_steps_median_norm_is_clipped_before_it_is_applied() {
    let job = Job::new(&mlp_spec(40, 0.0)).unwrap_or_else(|e| panic!("{e}"));
    let honest: Vec<UnitOutput> = job
        .open_units()
        .iter()
        .map(|u| cpu_result(&job, *u))
        .collect();
    let norms: Vec<f64> = honest
        .iter()
        .map(|o| {
            let (_, samples, grad) = parts(o);
            shard_norm(samples, &grad)
        })
        .collect();
    let mut sorted = norms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let (loss_sum, samples, grad) = parts(&honest[0]);
    let target = MAX_GRAD_NORM * 0.9;
    let scale = (target / norms[0]) as f32;
    let poisoned = UnitOutput::MlpGrad {
        loss_sum,
        samples,
        grad_sum: grad.iter().map(|g| -g * scale).collect(),
    };
    assert!(job.output_fits(0, &poisoned), "inside the hard bound");
    let (base, _) = step_with(&job, &honest);
    let mut outputs = honest.clone();
    outputs[0] = poisoned;
    let (moved, clipped) = step_with(&job, &outputs);
    assert_eq!(clipped, 1);
    let shift: f64 = base
        .iter()
        .zip(&moved)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let (lr, shards) = (0.5, honest.len() as f64);
    let bound = lr * (CLIP_FACTOR * median + norms[0]) / shards;
    let unclipped = lr * (target - norms[0]) / shards;
    println!("step shift {shift:.4}: bound {bound:.4}, unclipped it would be about {unclipped:.4}");
    assert!(shift <= bound * 1.001, "{shift} > {bound}");
    assert!(bound < unclipped);
}

/// A forfeited MLP shard of the step not stitched yet is dropped and open again; one of a
/// stitched step is not.
#[test]
fn a_forfeited_shard_of_the_open_step_is_dropped_before_it_is_applied() {
    let mut job = Job::new(&mlp_spec(40, 0.0)).unwrap_or_else(|e| panic!("{e}"));
    let out = cpu_result(&job, 0);
    assert_eq!(job.accept(0, &out).ok(), Some(None));
    assert!(matches!(job.lookup(0), Lookup::Done));
    assert!(job.reopen(0));
    assert!(matches!(job.lookup(0), Lookup::Open(_)));
    assert!(!job.reopen(0), "nothing to drop twice");
    for unit in job.open_units() {
        let out = cpu_result(&job, unit);
        let _ = job.accept(unit, &out);
    }
    assert_eq!(job.progress().0, 1);
    assert!(!job.reopen(0), "its step is in the model");
}

#[test]
fn unusable_specs_are_refused() {
    let bad = vec![
        JobSpec::TrainMlp {
            job: job_id("x"),
            shape: [0, 4, 2],
            data_seed: 1,
            data_spread: 1.0,
            shards_per_step: 1,
            samples_per_shard: 1,
            lr: 0.1,
            max_steps: 1,
            loss_target: 0.0,
            eval_samples: 1,
        },
        JobSpec::TrainMlp {
            job: job_id("x"),
            shape: [4, 4, 2],
            data_seed: 1,
            data_spread: 1.0,
            shards_per_step: 1 << 20,
            samples_per_shard: 1 << 20,
            lr: 0.1,
            max_steps: u64::MAX / 2,
            loss_target: 0.0,
            eval_samples: 1,
        },
        JobSpec::TrainMlp {
            job: job_id("x"),
            shape: [1024, 1024, 2],
            data_seed: 1,
            data_spread: 1.0,
            shards_per_step: 1,
            samples_per_shard: 1,
            lr: 0.1,
            max_steps: 1,
            loss_target: 0.0,
            eval_samples: 1,
        },
        gemm_spec(0),
        JobSpec::Gemm {
            job: job_id("x"),
            units: 1,
            m: 5000,
            n: 1,
            k: 1,
            seed: 0,
        },
    ];
    for spec in bad {
        assert!(Job::new(&spec).is_err(), "{spec:?}");
    }
}
