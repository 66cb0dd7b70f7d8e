//! Job state machines: which units exist, what each must look like, and what to do with an
//! accepted result. Pure: no I/O, no clock.
//!
//! # MLP shard layout
//! Step `s` (0-based) of a [`JobSpec::TrainMlp`] job is units `s * shards .. (s + 1) * shards`.
//! Unit `u` covers the generated samples `u * samples_per_shard .. (u + 1) * samples_per_shard`,
//! so every step trains on fresh samples and no two units share one. The loss is evaluated
//! on the held-out samples `EVAL_START .. EVAL_START + eval_samples` ([`EVAL_START`] is
//! `2^62`); training never reaches them (checked when the job is built). The initial
//! parameters are `mlp_init_params(shape, data_seed)`.
//!
//! A step is stitched once every shard has an accepted result: the gradient sums are added
//! in shard order (in `f64`), divided by the total sample count, applied with `sgd_step`, and
//! the held-out loss is computed. The job finishes when that loss is at or below the target
//! or after `max_steps` steps.
//!
//! # GEMM
//! Unit `u` of a [`JobSpec::Gemm`] job multiplies matrices generated from `seed + u`
//! (wrapping); the job finishes when every unit has an accepted result.

use crate::ledger::Checkpoint;
use crate::JobSpec;
use rigd_kernels::{mlp_init_params, mlp_loss, sgd_step, BlobSpec, KernelError, MlpShape};
use rigd_protocol::digest::Hash32;
use rigd_protocol::units::{MAX_GEMM_DIM, MAX_UNIT_SAMPLES};
use rigd_protocol::{JobId, UnitKind, UnitOutput, WorkUnit, MAX_FRAME_BYTES};
use std::collections::HashSet;
use std::ops::Range;

/// First sample of the held-out evaluation range.
pub const EVAL_START: u64 = 1 << 62;

/// Why a job specification was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// The MLP shape breaks the kernels' caps.
    #[error("MLP shape: {0}")]
    Shape(#[from] KernelError),
    /// A parameter is out of range.
    #[error("{0}")]
    Range(String),
}

/// What an open unit's receipt must state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// SHA-256 of the unit's input as assigned.
    pub input_digest: Hash32,
    /// Work in FLOPs.
    pub work: u64,
}

/// Where a unit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Waiting for a result.
    Open(Expected),
    /// Has its accepted result (or belongs to a stitched step).
    Done,
    /// Never issued by this job.
    Unknown,
}

/// A stitched MLP step.
#[derive(Debug, Clone, PartialEq)]
pub struct Stitched {
    /// Units of the step.
    pub units: Range<u64>,
    /// Steps stitched so far, parameters and loss: what to persist.
    pub checkpoint: Checkpoint,
    /// Units of the next step (empty when the job finished).
    pub next_units: Range<u64>,
}

/// Data-parallel SGD of a one-hidden-layer MLP. See the module docs for the shard layout.
#[derive(Debug, Clone)]
pub struct MlpJob {
    id: JobId,
    dims: [u32; 3],
    shape: MlpShape,
    data: BlobSpec,
    shards: u32,
    samples: u32,
    lr: f32,
    max_steps: u64,
    loss_target: f32,
    eval: (Vec<f32>, Vec<u32>),
    params: Vec<f32>,
    step: u64,
    loss: Option<f32>,
    finished: bool,
    input_digests: Vec<Hash32>,
    results: Vec<Option<(u32, Vec<f32>)>>,
    /// Shards clipped in this run.
    clipped: u64,
}

/// Independent int8 GEMM units.
#[derive(Debug, Clone)]
pub struct GemmJob {
    id: JobId,
    units: u64,
    dims: [u32; 3],
    seed: u64,
    done: HashSet<u64>,
}

/// A running job.
#[derive(Debug, Clone)]
pub enum Job {
    /// MLP training.
    Mlp(Box<MlpJob>),
    /// GEMM batch.
    Gemm(GemmJob),
}

fn range_err(msg: &str) -> JobError {
    JobError::Range(msg.into())
}

impl Job {
    /// Builds a job from its specification.
    pub fn new(spec: &JobSpec) -> Result<Self, JobError> {
        match spec {
            JobSpec::TrainMlp {
                job,
                shape,
                data_seed,
                data_spread,
                shards_per_step,
                samples_per_shard,
                lr,
                max_steps,
                loss_target,
                eval_samples,
            } => {
                let mlp = MlpShape {
                    input: shape[0],
                    hidden: shape[1],
                    output: shape[2],
                };
                mlp.validate()?;
                if mlp.param_count().saturating_mul(4).saturating_add(4096) > MAX_FRAME_BYTES {
                    return Err(JobError::Range(format!(
                        "{} parameters do not fit in a {MAX_FRAME_BYTES}-byte frame: use a smaller shape",
                        mlp.param_count()
                    )));
                }
                if *shards_per_step == 0 || *max_steps == 0 || *eval_samples == 0 {
                    return Err(range_err(
                        "shards_per_step, max_steps and eval_samples must be at least 1",
                    ));
                }
                if !(1..=MAX_UNIT_SAMPLES).contains(samples_per_shard)
                    || *eval_samples > MAX_UNIT_SAMPLES
                {
                    return Err(JobError::Range(format!(
                        "samples_per_shard and eval_samples must be 1..={MAX_UNIT_SAMPLES}"
                    )));
                }
                let trained = max_steps
                    .checked_mul(u64::from(*shards_per_step))
                    .and_then(|u| u.checked_mul(u64::from(*samples_per_shard)));
                if trained.is_none_or(|t| t > EVAL_START) {
                    return Err(range_err(
                        "training would reach the held-out samples: lower max_steps",
                    ));
                }
                if !lr.is_finite() || !data_spread.is_finite() {
                    return Err(range_err("lr and data_spread must be finite"));
                }
                let data = BlobSpec {
                    seed: *data_seed,
                    input: shape[0],
                    classes: shape[2],
                    spread: *data_spread,
                };
                let mut job = MlpJob {
                    id: job.clone(),
                    dims: *shape,
                    shape: mlp,
                    data,
                    shards: *shards_per_step,
                    samples: *samples_per_shard,
                    lr: *lr,
                    max_steps: *max_steps,
                    loss_target: *loss_target,
                    eval: data.samples(EVAL_START, *eval_samples),
                    params: mlp_init_params(&mlp, *data_seed),
                    step: 0,
                    loss: None,
                    finished: false,
                    clipped: 0,
                    input_digests: vec![],
                    results: vec![],
                };
                job.open_step();
                Ok(Job::Mlp(Box::new(job)))
            }
            JobSpec::Gemm {
                job,
                units,
                m,
                n,
                k,
                seed,
            } => {
                if [m, n, k].iter().any(|d| **d == 0 || **d > MAX_GEMM_DIM) {
                    return Err(JobError::Range(format!(
                        "GEMM dimensions must be 1..={MAX_GEMM_DIM}"
                    )));
                }
                if *units == 0 {
                    return Err(range_err("a GEMM job needs at least one unit"));
                }
                Ok(Job::Gemm(GemmJob {
                    id: job.clone(),
                    units: *units,
                    dims: [*m, *n, *k],
                    seed: *seed,
                    done: HashSet::new(),
                }))
            }
        }
    }

    /// The job's id.
    pub fn id(&self) -> &JobId {
        match self {
            Job::Mlp(j) => &j.id,
            Job::Gemm(j) => &j.id,
        }
    }

    /// Whether accepted results are credited at once (GEMM) or when their step is stitched
    /// (MLP: pending until then).
    pub fn credits_on_accept(&self) -> bool {
        matches!(self, Job::Gemm(_))
    }

    /// Whether the job has finished.
    pub fn finished(&self) -> bool {
        match self {
            Job::Mlp(j) => j.finished,
            Job::Gemm(j) => j.done.len() as u64 >= j.units,
        }
    }

    /// Units waiting for a result.
    pub fn open_units(&self) -> Vec<u64> {
        match self {
            Job::Mlp(j) if j.finished => vec![],
            Job::Mlp(j) => j
                .step_units()
                .filter(|u| matches!(j.lookup(*u), Lookup::Open(_)))
                .collect(),
            Job::Gemm(j) => (0..j.units).filter(|u| !j.done.contains(u)).collect(),
        }
    }

    /// Where `unit` stands.
    pub fn lookup(&self, unit: u64) -> Lookup {
        match self {
            Job::Mlp(j) => j.lookup(unit),
            Job::Gemm(j) if unit >= j.units => Lookup::Unknown,
            Job::Gemm(j) if j.done.contains(&unit) => Lookup::Done,
            Job::Gemm(j) => {
                let kind = j.kind(unit);
                Lookup::Open(Expected {
                    input_digest: kind.input_digest(),
                    work: rigd_kernels::unit::work(&kind),
                })
            }
        }
    }

    /// The unit as assigned, for an open unit.
    pub fn work_unit(&self, unit: u64, attempt: u32) -> Option<WorkUnit> {
        let kind = match self {
            Job::Mlp(j) => j.kind(unit)?,
            Job::Gemm(j) if unit < j.units => j.kind(unit),
            Job::Gemm(_) => return None,
        };
        Some(WorkUnit {
            job: self.id().clone(),
            unit,
            attempt,
            kind,
        })
    }

    /// Whether `output` has the form the unit's result must have (kind, sizes, finite
    /// values); cheap, checked for every result.
    pub fn output_fits(&self, unit: u64, output: &UnitOutput) -> bool {
        match (self, output) {
            (Job::Mlp(j), _) => j.fits(unit, output),
            (Job::Gemm(_), UnitOutput::GemmI8 { .. }) => true,
            _ => false,
        }
    }

    /// Takes an accepted result of an open unit. Returns the stitched step when it completed
    /// one (MLP).
    pub fn accept(
        &mut self,
        unit: u64,
        output: &UnitOutput,
    ) -> Result<Option<Stitched>, KernelError> {
        match self {
            Job::Mlp(j) => j.accept(unit, output),
            Job::Gemm(j) => {
                if unit < j.units {
                    j.done.insert(unit);
                }
                Ok(None)
            }
        }
    }

    /// A unit whose credit was forfeited needs a result again: a GEMM unit, or an MLP shard
    /// of the step not stitched yet (its result is dropped before it is applied; a shard of a
    /// stitched step is in the model, and forfeiting it changes only what is paid). Whether
    /// the unit is open again.
    pub fn reopen(&mut self, unit: u64) -> bool {
        match self {
            Job::Gemm(j) => j.done.remove(&unit),
            Job::Mlp(j) => j.reopen(unit),
        }
    }

    /// Shards clipped by the robust aggregate in this run (see [`CLIP_FACTOR`]).
    pub fn clipped(&self) -> u64 {
        match self {
            Job::Mlp(j) => j.clipped,
            Job::Gemm(_) => 0,
        }
    }

    /// Progress: `(step, steps_total, loss)`. For GEMM a step is a unit.
    pub fn progress(&self) -> (u64, u64, Option<f32>) {
        match self {
            Job::Mlp(j) => (j.step, j.max_steps, j.loss),
            Job::Gemm(j) => (j.done.len() as u64, j.units, None),
        }
    }

    /// Restores an MLP job from its last checkpoint and the kept outputs of the step after
    /// it; marks credited GEMM units done. Returns a step that the kept outputs complete.
    pub fn restore(
        &mut self,
        checkpoint: Option<Checkpoint>,
        kept: &[(u64, UnitOutput)],
        credited: &[u64],
    ) -> Result<Option<Stitched>, KernelError> {
        match self {
            Job::Mlp(j) => {
                if let Some(cp) = checkpoint.filter(|cp| cp.params.len() == j.params.len()) {
                    j.params = cp.params;
                    j.step = cp.step;
                    j.loss = cp.loss;
                    j.finished =
                        j.step >= j.max_steps || j.loss.is_some_and(|l| l <= j.loss_target);
                    j.open_step();
                }
                let mut stitched = None;
                for (unit, output) in kept {
                    if matches!(j.lookup(*unit), Lookup::Open(_)) && j.fits(*unit, output) {
                        stitched = j.accept(*unit, output)?.or(stitched);
                    }
                }
                Ok(stitched)
            }
            Job::Gemm(j) => {
                j.done.extend(credited.iter().filter(|u| **u < j.units));
                Ok(None)
            }
        }
    }
}

/// The largest L2 norm a shard's mean per-sample gradient may have; a shard beyond it (or
/// with a non-finite or negative value) is refused as malformed before it is applied. One
/// shard of `shards` then moves the parameters by at most `lr * MAX_GRAD_NORM / shards` per
/// step whatever its rig sends, and every applied step is finite. Honest shards of the
/// network's MLP jobs stay far below (see `job_tests`).
pub const MAX_GRAD_NORM: f64 = 100.0;

/// A step's shards are averaged after clipping: a shard whose mean per-sample gradient norm
/// exceeds `CLIP_FACTOR` times the median of the step's shard norms is scaled down to that.
/// While fewer than half of a step's shards are dishonest the median is an honest norm *m*,
/// so one shard of `shards` moves the parameters by at most `lr * CLIP_FACTOR * m / shards`
/// per step. Honest shards of one step differ by sampling noise only and are never clipped
/// (see `job_tests`).
pub const CLIP_FACTOR: f64 = 3.0;

/// Mean per-sample gradient norm of a shard.
fn shard_norm(samples: u32, grad_sum: &[f32]) -> f64 {
    let norm_sq: f64 = grad_sum.iter().map(|g| f64::from(*g).powi(2)).sum();
    norm_sq.sqrt() / f64::from(samples.max(1))
}

impl MlpJob {
    fn fits(&self, unit: u64, output: &UnitOutput) -> bool {
        let UnitOutput::MlpGrad {
            loss_sum,
            samples,
            grad_sum,
        } = output
        else {
            return false;
        };
        let bounded = || shard_norm(*samples, grad_sum) <= MAX_GRAD_NORM;
        self.step_units().contains(&unit)
            && *samples == self.samples
            && grad_sum.len() == self.params.len()
            // Cross-entropy is never negative.
            && loss_sum.is_finite()
            && *loss_sum >= 0.0
            && grad_sum.iter().all(|g| g.is_finite())
            && bounded()
    }

    fn step_units(&self) -> Range<u64> {
        let shards = u64::from(self.shards);
        self.step * shards..(self.step + 1) * shards
    }

    fn shard_kind(&self, unit: u64) -> UnitKind {
        UnitKind::MlpGrad {
            shape: self.dims,
            params: self.params.clone(),
            data_seed: self.data.seed,
            data_classes: self.data.classes,
            data_spread: self.data.spread,
            start: unit * u64::from(self.samples),
            count: self.samples,
        }
    }

    fn kind(&self, unit: u64) -> Option<UnitKind> {
        (!self.finished && self.step_units().contains(&unit)).then(|| self.shard_kind(unit))
    }

    fn open_step(&mut self) {
        if self.finished {
            self.input_digests.clear();
            self.results.clear();
            return;
        }
        self.input_digests = self
            .step_units()
            .map(|u| self.shard_kind(u).input_digest())
            .collect();
        self.results = vec![None; self.shards as usize];
    }

    fn lookup(&self, unit: u64) -> Lookup {
        let step = unit / u64::from(self.shards);
        let shard = (unit % u64::from(self.shards)) as usize;
        if step < self.step {
            return Lookup::Done;
        }
        if step > self.step || self.finished {
            return Lookup::Unknown;
        }
        match (self.results.get(shard), self.input_digests.get(shard)) {
            (Some(None), Some(digest)) => Lookup::Open(Expected {
                input_digest: *digest,
                work: self
                    .shape
                    .flops_per_sample()
                    .saturating_mul(u64::from(self.samples)),
            }),
            _ => Lookup::Done,
        }
    }

    fn accept(&mut self, unit: u64, output: &UnitOutput) -> Result<Option<Stitched>, KernelError> {
        let UnitOutput::MlpGrad {
            samples, grad_sum, ..
        } = output
        else {
            return Ok(None);
        };
        if !matches!(self.lookup(unit), Lookup::Open(_)) {
            return Ok(None);
        }
        let shard = (unit % u64::from(self.shards)) as usize;
        if let Some(slot) = self.results.get_mut(shard) {
            *slot = Some((*samples, grad_sum.clone()));
        }
        if self.results.iter().any(Option::is_none) {
            return Ok(None);
        }
        self.stitch().map(Some)
    }

    fn reopen(&mut self, unit: u64) -> bool {
        if !self.step_units().contains(&unit) || self.finished {
            return false;
        }
        let shard = (unit % u64::from(self.shards)) as usize;
        self.results
            .get_mut(shard)
            .is_some_and(|slot| slot.take().is_some())
    }

    fn stitch(&mut self) -> Result<Stitched, KernelError> {
        let units = self.step_units();
        let mut norms: Vec<f64> = self
            .results
            .iter()
            .flatten()
            .map(|(samples, grad)| shard_norm(*samples, grad))
            .collect();
        norms.sort_by(f64::total_cmp);
        let median = norms.get(norms.len() / 2).copied().unwrap_or(0.0);
        let bound = CLIP_FACTOR * median;
        let mut sum = vec![0f64; self.params.len()];
        let mut total = 0u64;
        let mut clipped = 0;
        for (samples, grad) in self.results.iter().flatten() {
            total += u64::from(*samples);
            let norm = shard_norm(*samples, grad);
            let scale = if norm > bound && norm > 0.0 {
                clipped += 1;
                bound / norm
            } else {
                1.0
            };
            for (s, g) in sum.iter_mut().zip(grad) {
                *s += f64::from(*g) * scale;
            }
        }
        if clipped > 0 {
            tracing::warn!(job = %self.id, step = self.step, clipped, median_norm = median, "shards far above the step's median gradient norm clipped");
        }
        self.clipped += clipped;
        if total == 0 {
            return Err(KernelError::EmptyBatch);
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / total as f64) as f32).collect();
        sgd_step(&mut self.params, &mean, self.lr)?;
        let loss = mlp_loss(&self.shape, &self.params, &self.eval.0, &self.eval.1)?;
        self.step += 1;
        self.loss = Some(loss);
        self.finished = loss <= self.loss_target || self.step >= self.max_steps;
        self.open_step();
        let next_units = if self.finished {
            units.end..units.end
        } else {
            self.step_units()
        };
        Ok(Stitched {
            units,
            checkpoint: Checkpoint {
                step: self.step,
                params: self.params.clone(),
                loss: Some(loss),
            },
            next_units,
        })
    }
}

impl GemmJob {
    fn kind(&self, unit: u64) -> UnitKind {
        UnitKind::GemmI8 {
            seed: self.seed.wrapping_add(unit),
            m: self.dims[0],
            n: self.dims[1],
            k: self.dims[2],
        }
    }
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
