//! A whole network in one process. An embedded broker, the coordinator with its ledger, and
//! simulated rigs (each with one worker process per card, this same binary run as
//! `rigd-devnet worker`) train a small MLP together; progress is printed per stitched step
//! and the ledger's earnings at the end.

use crate::broker::{BrokerError, EmbeddedBroker};
use crate::DevnetArgs;
use rigctl::{report, table};
use rigd_coordinator::{CoordinatorConfig, CoordinatorError, JobSpec, Ledger, LedgerError};
use rigd_protocol::{CoordinatorStatus, Earnings, JobId, RigId};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Input, hidden and output widths of the model trained (as in the kernels' training test).
pub const SHAPE: [u32; 3] = [16, 32, 4];
/// Spread of the generated clusters.
pub const DATA_SPREAD: f32 = 1.0;
/// SGD learning rate.
pub const LR: f32 = 0.5;
/// Units per step.
pub const SHARDS_PER_STEP: u32 = 8;
/// Samples per unit.
pub const SAMPLES_PER_SHARD: u32 = 128;
/// A job that stitches no step for this long is declared stuck.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the tasks get to stop after shutdown before they are abandoned.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the demo ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The loss reached the target.
    Reached,
    /// The job finished above the target.
    Missed,
    /// Ctrl-C.
    Interrupted,
}

impl Outcome {
    /// 0, 1 or 130.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Reached => ExitCode::SUCCESS,
            Outcome::Missed => ExitCode::FAILURE,
            Outcome::Interrupted => ExitCode::from(130),
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// The state folder could not be made.
    #[error("cannot create state folder {path}: {source}")]
    State {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The Ctrl-C handler could not be installed.
    #[error("cannot listen for Ctrl-C: {0}")]
    Signal(#[source] std::io::Error),
    /// This executable's path is needed to start workers.
    #[error("cannot find this executable to run the workers: {0}")]
    Exe(#[source] std::io::Error),
    /// The broker did not start.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The coordinator stopped with an error.
    #[error("coordinator failed: {0}")]
    Coordinator(#[from] CoordinatorError),
    /// The coordinator stopped before the job finished.
    #[error("coordinator stopped before the job finished")]
    CoordinatorStopped,
    /// No step was stitched for [`STALL_TIMEOUT`].
    #[error("no training step finished in {}s: are the rigs connected? (RUST_LOG=info shows more)", STALL_TIMEOUT.as_secs())]
    Stalled,
    /// The ledger could not be read.
    #[error("cannot read the earnings ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// A generated id was refused.
    #[error("invalid id: {0}")]
    Id(#[from] rigd_protocol::IdError),
}

/// Runs the demo until the job finishes or Ctrl-C.
pub async fn run(args: &DevnetArgs) -> Result<Outcome, DevnetError> {
    // Listening from the start: a Ctrl-C during setup stops the demo as cleanly as a later one.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DevnetError::Signal)?;
    let cards: u32 = (0..args.rigs).map(|i| cards_of(i, args.gpus)).sum();
    say(&format!(
        "devnet: {} rigs with {cards} simulated cards train a {}-{}-{} MLP for up to {} steps, \
         until the held-out loss is at or below {} (--loss-target)",
        args.rigs, SHAPE[0], SHAPE[1], SHAPE[2], args.steps, args.loss_target
    ));
    // The temporary folder is removed on return; --keep-state names one to keep instead.
    let (root, _temp) = match &args.keep_state {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("rigd-devnet-")
                .tempdir()
                .map_err(|source| DevnetError::State {
                    path: std::env::temp_dir(),
                    source,
                })?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    std::fs::create_dir_all(&root).map_err(|source| DevnetError::State {
        path: root.clone(),
        source,
    })?;
    let program = std::env::current_exe().map_err(DevnetError::Exe)?;

    let broker = tokio::task::spawn_blocking(EmbeddedBroker::start)
        .await
        .map_err(|e| DevnetError::Broker(BrokerError::Thread(std::io::Error::other(e))))??;
    say("keys: software receipt keys in the state folder (development only)");
    say(&format!(
        "broker: {}:{} (try `rigctl --broker {}:{} status` in another terminal)",
        broker.host(),
        broker.port(),
        broker.host(),
        broker.port()
    ));

    let shutdown = CancellationToken::new();
    let db = root.join("coordinator.sqlite");
    let (progress_tx, mut progress) = mpsc::channel::<CoordinatorStatus>(64);
    let mut config = CoordinatorConfig::new(broker.host(), broker.port(), db.clone(), job(args)?);
    config.client_id = "rigd-devnet-coordinator".into();
    let coordinator = tokio::spawn(rigd_coordinator::run(
        config,
        shutdown.clone(),
        Some(progress_tx),
    ));

    let mut rigs = Vec::new();
    for i in 0..args.rigs {
        let rig = RigId::new(format!("rig-{:02}", i + 1))?;
        let dir = root.join(rig.as_str());
        let config =
            rigd::RigSettings::sim(&broker.host(), broker.port(), dir, cards_of(i, args.gpus));
        let worker = rigd::WorkerCommand {
            program: program.clone(),
            args: vec!["worker".into()],
        };
        let token = shutdown.clone();
        rigs.push(tokio::spawn(async move {
            let assigned = rigd::Assigned {
                rig: rig.clone(),
                tls: None,
            };
            if let Err(error) = rigd::run(config, assigned, worker, token).await {
                tracing::error!(rig = %rig, %error, "rig stopped");
            }
        }));
    }

    let mut coordinator = coordinator;
    let ended = watch(
        &mut progress,
        &mut coordinator,
        &mut interrupt,
        args.loss_target,
    )
    .await;
    shutdown.cancel();
    // A coordinator task that already ended must not be awaited again.
    let running = !matches!(ended, Watch::CoordinatorEnded(_));
    stop(running.then_some(coordinator), rigs).await;
    print_earnings(&db)?;
    if let Some(dir) = &args.keep_state {
        say(&format!("state kept in {}", dir.display()));
    }
    match ended {
        Watch::Finished { reached: true } => Ok(Outcome::Reached),
        Watch::Finished { reached: false } => Ok(Outcome::Missed),
        Watch::Interrupted => Ok(Outcome::Interrupted),
        Watch::CoordinatorEnded(e) => Err(e),
        Watch::Stalled => Err(DevnetError::Stalled),
    }
}

/// Rig `i` gets `1 + (i mod max)` cards, so rigs differ.
pub fn cards_of(i: u32, max: u32) -> u32 {
    1 + i % max.max(1)
}

fn job(args: &DevnetArgs) -> Result<JobSpec, DevnetError> {
    Ok(JobSpec::TrainMlp {
        job: JobId::new("devnet-mlp")?,
        shape: SHAPE,
        data_seed: 7,
        data_spread: DATA_SPREAD,
        shards_per_step: SHARDS_PER_STEP,
        samples_per_shard: SAMPLES_PER_SHARD,
        lr: LR,
        max_steps: args.steps,
        loss_target: args.loss_target,
        eval_samples: 1024,
    })
}

type CoordinatorTask = JoinHandle<Result<(), CoordinatorError>>;

/// How watching the job ended.
enum Watch {
    Finished {
        reached: bool,
    },
    Interrupted,
    /// The coordinator task ended (and was awaited).
    CoordinatorEnded(DevnetError),
    Stalled,
}

fn ended_error(ended: Result<Result<(), CoordinatorError>, tokio::task::JoinError>) -> DevnetError {
    match ended {
        Ok(Err(e)) => DevnetError::Coordinator(e),
        _ => DevnetError::CoordinatorStopped,
    }
}

/// Prints a line per stitched step until the job finishes, the coordinator stops, the job
/// stalls or Ctrl-C.
async fn watch(
    progress: &mut mpsc::Receiver<CoordinatorStatus>,
    coordinator: &mut CoordinatorTask,
    interrupt: &mut Signal,
    loss_target: f32,
) -> Watch {
    let mut last_step = None;
    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                say("interrupted: stopping");
                return Watch::Interrupted;
            }
            ended = &mut *coordinator => return Watch::CoordinatorEnded(ended_error(ended)),
            status = tokio::time::timeout(STALL_TIMEOUT, next_step(progress, last_step)) => {
                let status = match status {
                    Ok(Some(status)) => status,
                    // The coordinator dropped its end of the channel: it is stopping.
                    Ok(None) => return Watch::CoordinatorEnded(ended_error(coordinator.await)),
                    Err(_) => return Watch::Stalled,
                };
                // The first status, before any step, has nothing to show.
                if last_step != Some(status.step) && (status.step > 0 || status.loss.is_some()) {
                    say(&progress_line(&status));
                }
                last_step = Some(status.step);
                if status.finished {
                    say(&verdict(&status, loss_target));
                    return Watch::Finished {
                        reached: status.loss.is_some_and(|l| l <= loss_target),
                    };
                }
            }
        }
    }
}

/// The next status that stitched a new step or finished the job.
async fn next_step(
    progress: &mut mpsc::Receiver<CoordinatorStatus>,
    last_step: Option<u64>,
) -> Option<CoordinatorStatus> {
    loop {
        let status = progress.recv().await?;
        if status.finished || last_step != Some(status.step) {
            return Some(status);
        }
    }
}

/// `step  12  loss 0.4312  units done 96  verified 14  rigs online 3`.
pub fn progress_line(s: &CoordinatorStatus) -> String {
    format!(
        "step {:>3}  loss {}  units done {}  verified {}  rigs online {}",
        s.step,
        s.loss
            .map_or_else(|| "-".to_string(), |l| format!("{l:.4}")),
        s.units_done,
        s.units_verified,
        s.rigs_online
    )
}

/// Whether the finished job reached the target.
pub fn verdict(s: &CoordinatorStatus, target: f32) -> String {
    match s.loss {
        Some(loss) if loss <= target => format!(
            "finished after {} steps: loss {loss:.4} is at or below the target {target}",
            s.step
        ),
        Some(loss) => format!(
            "finished after {} steps: loss {loss:.4} is above the target {target}",
            s.step
        ),
        None => format!("finished after {} steps without a loss", s.step),
    }
}

/// Waits for the tasks after shutdown was cancelled; abandons them after [`STOP_TIMEOUT`].
async fn stop(coordinator: Option<CoordinatorTask>, rigs: Vec<JoinHandle<()>>) {
    let all = async {
        if let Some(c) = coordinator {
            match c.await {
                Ok(Err(error)) => tracing::warn!(%error, "coordinator stopped with an error"),
                Err(error) => tracing::warn!(%error, "coordinator task failed"),
                Ok(Ok(())) => {}
            }
        }
        for r in rigs {
            if let Err(error) = r.await {
                tracing::warn!(%error, "rig task failed");
            }
        }
    };
    if tokio::time::timeout(STOP_TIMEOUT, all).await.is_err() {
        tracing::warn!(
            timeout_s = STOP_TIMEOUT.as_secs(),
            "tasks did not stop in time"
        );
    }
}

/// Prints the ledger's earnings per rig and card.
fn print_earnings(db: &Path) -> Result<(), DevnetError> {
    let all = if db.exists() {
        read_ledger(db)?
    } else {
        Vec::new()
    };
    say("earnings (from the coordinator's ledger):");
    say(table::earnings(&report::earnings_of(&all)).trim_end());
    Ok(())
}

fn read_ledger(db: &Path) -> Result<Vec<Earnings>, LedgerError> {
    let ledger = Ledger::open(db)?;
    ledger
        .rigs()?
        .iter()
        .map(|rig| ledger.earnings(rig))
        .collect()
}

/// Prints a line to stdout; a closed stdout is not worth failing the demo for.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigd_testkit::fixtures::coordinator;

    #[test]
    fn rigs_get_different_card_counts() {
        let counts: Vec<u32> = (0..4).map(|i| cards_of(i, 3)).collect();
        assert_eq!(counts, [1, 2, 3, 1]);
        assert_eq!(cards_of(5, 1), 1);
    }

    #[test]
    fn progress_line_has_the_documented_shape() {
        assert_eq!(
            progress_line(&coordinator(false)),
            "step  12  loss 0.4312  units done 96  verified 14  rigs online 3"
        );
    }

    #[test]
    fn verdict_says_whether_the_target_was_reached() {
        let mut s = coordinator(true);
        assert!(verdict(&s, 0.5).contains("at or below the target 0.5"));
        assert!(verdict(&s, 0.15).contains("above the target 0.15"));
        s.loss = None;
        assert!(verdict(&s, 0.15).contains("without a loss"));
    }
}
