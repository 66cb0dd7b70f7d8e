//! The network side of rigd: takes a job, splits it into units, hands them to rigs over
//! MQTT 5, verifies the signed receipt batches that come back, stitches the results, keeps a
//! crash-safe earnings ledger and publishes earnings and progress.
//!
//! Layout: pure cores ([`scheduler`], [`job`], [`verify`], [`inbound`]) take inputs and the
//! time and return decisions; [`engine`] ties them to the [`ledger`] (SQLite or PostgreSQL); `mqtt` is the
//! I/O shell that moves bytes between the broker, the engine and the [`recompute`] pool;
//! `replica` serves a coordinator that does not lead its job (it checks batches for the one
//! that does, until it leads).
//!
//! # Ledger states
//! Every receipt a rig sends is recorded once, keyed by `(rig, seq)`, in one of three states:
//! - `credited`: the result was accepted and paid. GEMM results are credited when accepted;
//!   MLP results when the step they belong to is stitched.
//! - `pending`: an accepted MLP result whose step is not stitched yet. Its output is kept in
//!   the ledger so that a restarted coordinator resumes the step without losing it.
//! - `rejected`: refused, with a reason (`key changed`, `unknown job`, `unit not assigned`,
//!   `unit already done`, `unit not leased to the rig`, `input digest mismatch`, `output
//!   digest mismatch`, `work mismatch`, `malformed output`, `result mismatch`).
//!
//! A receipt is paid only for a unit attempt leased to its rig (or leased until less than
//! `lease_grace_ms` ago). Receipts refused before any check of their result (key changed,
//! unknown job, unit not assigned, already done or not leased) are recorded as runs of
//! sequence numbers, one row per run, so a flood costs a row per batch; every lease is
//! recorded before its unit is sent, so a restart keeps them.
//!
//! A receipt received again after it was recorded is counted as a duplicate delivery and
//! changes nothing. Amounts are `work * micros_per_mflop / 10^6` micro-credits, rounded down.
//! Every recorded batch is acked after its transaction committed, duplicates and rejections
//! included. A batch that cannot be attributed to its rig (key not pinned yet, bad signature,
//! Merkle root that does not match, header of another rig than the topic) is neither
//! recorded nor acked: the rig resends it. So is a batch over its rig's quotas (batches per
//! second, recompute budget, batches waiting for recomputation).
//!
//! Results are recomputed off the engine's thread ([`recompute`]): a batch with results to
//! recompute waits, unrecorded and unacked, until the pool hands their outputs back, while
//! every other batch is judged and acked meanwhile.

pub mod chain;
pub mod engine;
pub mod inbound;
pub mod job;
pub mod ledger;
mod mqtt;
pub mod payout_run;
mod quota;
pub mod recompute;
mod replica;
pub mod scheduler;
pub mod statement;
pub mod verify;

use rigd_protocol::{CoordinatorStatus, JobId};
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use engine::Engine;
pub use ledger::{Ledger, LedgerError};

/// How the coordinator runs.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    /// MQTT broker host.
    pub broker_host: String,
    /// MQTT broker port.
    pub broker_port: u16,
    /// MQTT client id; the session is persistent, so keep it stable across restarts.
    pub client_id: String,
    /// The ledger: a SQLite file (WAL, `synchronous=FULL`) or a PostgreSQL database.
    pub ledger: ledger::Location,
    /// The job to run.
    pub job: JobSpec,
    /// A unit not answered within this is reassigned with `attempt + 1`.
    pub lease_ms: u64,
    /// A result that arrives less than this after its lease ran out is still paid.
    pub lease_grace_ms: u64,
    /// Outstanding units per card of a rig (prefetch depth).
    pub units_per_card: u32,
    /// Share of results recomputed on the CPU, besides each rig's first result.
    pub verify_fraction: f64,
    /// Price, micro-credits per MFLOP of work.
    pub micros_per_mflop: u64,
    /// Tolerance for float results: `|got - want| <= tol * max(|want|, 1)` elementwise.
    pub float_rel_tolerance: f32,
    /// Mutual TLS to the broker (certificate CN `fleet:coordinator`); `None` for plain TCP.
    pub tls: Option<rigd_client::TlsFiles>,
    /// How rigs earn trust and what a caught wrong result costs them.
    pub trust: Trust,
    /// The provisioner's registry (read-only), where the fleet has one: a rig that announces
    /// another key than the one pinned is trusted again under it when the registry holds that
    /// key for it (the rig was rekeyed with its owner's claim); its receipts from before the
    /// rekey are refused as `key changed`. Without it a changed key is refused for good.
    pub registry: Option<PathBuf>,
    /// The deployments (chain and settlement contract) whose receipts are credited: the
    /// current one, and retired ones whose batches may still arrive. A batch its rig signed for
    /// any other is refused as `signed for another deployment`.
    pub domains: Vec<rigd_protocol::Domain>,
}

/// The levers that make cheating a losing bet (see `docs/verification.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trust {
    /// Every result of a rig is recomputed until this many were verified (new rigs, and
    /// rigs back from a suspension, are on probation).
    pub trust_after: u32,
    /// Credit younger than this is forfeited when a wrong result of the rig is caught.
    pub audit_ms: u64,
    /// A rig caught with a wrong result gets no units of the job for this long.
    pub suspend_ms: u64,
    /// Work of a rig's results the coordinator recomputes per second, at most (flops): a
    /// rig whose budget is overdrawn has its batches wait (unacked) until it refills, so
    /// no rig can hold the engine's thread longer than one batch's recomputes.
    pub recompute_flops_per_s: u64,
    /// Budget a rig may save up, flops (its probation fits in it).
    pub recompute_burst_flops: u64,
    /// Batches a rig may send per second; one over the rate is dropped by its topic before
    /// it is decoded, unacked (the rig sends it again).
    pub batches_per_s: u32,
    /// Batches a rig may send at once (a reconnected rigd resends up to 64).
    pub batch_burst: u32,
}

impl Default for Trust {
    /// 10 results on probation, a 10-minute audit window, a 1-hour suspension, 200 MFLOP/s
    /// of recomputation per rig with 2 GFLOP saved at most, 20 batches per second per rig
    /// with 100 at once at most.
    fn default() -> Self {
        Self {
            trust_after: 10,
            audit_ms: 600_000,
            suspend_ms: 3_600_000,
            recompute_flops_per_s: 200_000_000,
            recompute_burst_flops: 2_000_000_000,
            batches_per_s: 20,
            batch_burst: 100,
        }
    }
}

impl CoordinatorConfig {
    /// A configuration with defaults: client id `rigd-coordinator`, 30 s leases paid up to
    /// 30 s after they ran out, 3 units per
    /// card, 5 % of results recomputed, 10,000 micro-credits (0.01 credit) per MFLOP, float
    /// tolerance 1e-4.
    pub fn new(
        broker_host: impl Into<String>,
        broker_port: u16,
        ledger: impl Into<ledger::Location>,
        job: JobSpec,
    ) -> Self {
        Self {
            broker_host: broker_host.into(),
            broker_port,
            client_id: "rigd-coordinator".into(),
            ledger: ledger.into(),
            job,
            lease_ms: 30_000,
            lease_grace_ms: 30_000,
            units_per_card: 3,
            verify_fraction: 0.05,
            micros_per_mflop: 10_000,
            float_rel_tolerance: 1e-4,
            tls: None,
            trust: Trust::default(),
            registry: None,
            domains: vec![rigd_protocol::Domain::LOCAL],
        }
    }
}

/// A job to split into units.
#[derive(Debug, Clone, PartialEq)]
pub enum JobSpec {
    /// Data-parallel SGD of a one-hidden-layer MLP on a generated data set. Each step is
    /// `shards_per_step` units of `samples_per_shard` samples each; see [`job::MlpJob`] for
    /// the shard layout.
    TrainMlp {
        /// The job's id.
        job: JobId,
        /// Input, hidden and output widths (the output width is the number of classes).
        shape: [u32; 3],
        /// Seed of the data set and of the initial parameters.
        data_seed: u64,
        /// Spread of the data set's clusters.
        data_spread: f32,
        /// Units per step.
        shards_per_step: u32,
        /// Samples per unit.
        samples_per_shard: u32,
        /// SGD learning rate.
        lr: f32,
        /// Stop after this many steps.
        max_steps: u64,
        /// Stop once the held-out loss is at or below this.
        loss_target: f32,
        /// Held-out samples the loss is evaluated on after each step.
        eval_samples: u32,
    },
    /// Independent int8 GEMM units.
    Gemm {
        /// The job's id.
        job: JobId,
        /// Number of units.
        units: u64,
        /// Rows of A and C.
        m: u32,
        /// Columns of B and C.
        n: u32,
        /// Columns of A, rows of B.
        k: u32,
        /// Seed; unit `u` uses matrices generated from `seed + u`.
        seed: u64,
    },
}

impl JobSpec {
    /// The job's id.
    pub fn id(&self) -> &JobId {
        match self {
            JobSpec::TrainMlp { job, .. } | JobSpec::Gemm { job, .. } => job,
        }
    }
}

/// Why the coordinator stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The job specification is unusable.
    #[error("invalid job: {0}")]
    Job(#[from] job::JobError),
    /// The ledger could not be opened or written.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Runs the coordinator until `shutdown` is cancelled. Progress goes to `progress` (with
/// `try_send`: a slow reader misses updates, it never stalls the coordinator) and, retained,
/// to [`rigd_protocol::topics::COORDINATOR_STATUS`]. When the job finishes the coordinator
/// keeps serving acks, the ledger and earnings until shutdown.
///
/// Several coordinators may run the same job on one PostgreSQL ledger: one leads it, the
/// others check receipt signatures for it (`replica`), and when the leader dies the next
/// takes over from the ledger (see [`Ledger::try_lead`]).
pub async fn run(
    config: CoordinatorConfig,
    shutdown: CancellationToken,
    progress: Option<mpsc::Sender<CoordinatorStatus>>,
) -> Result<(), CoordinatorError> {
    if config.units_per_card == 0 || config.lease_ms == 0 {
        return Err(CoordinatorError::Config(
            "units_per_card and lease_ms must be at least 1".into(),
        ));
    }
    if !(0.0..=1.0).contains(&config.verify_fraction) {
        return Err(CoordinatorError::Config(
            "verify_fraction must be between 0 and 1".into(),
        ));
    }
    let tls = match &config.tls {
        Some(files) => Some(
            rigd_client::client_config_from_files(files)
                .map_err(|e| CoordinatorError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let ledger = Ledger::create_at(&config.ledger, config.micros_per_mflop)?;
    let Some(ledger) = replica::check_until_lead(&config, tls.clone(), ledger, &shutdown).await?
    else {
        return Ok(());
    };
    let engine = Engine::resume(ledger, &config, rigd_client::unix_ms())?;
    mqtt::serve(&config, tls, engine, shutdown, progress).await;
    Ok(())
}
