//! The coordinator of the integration tests against the test's broker, with its ledger in
//! the test's directory: in-process on its own runtime, or the `coordinator` binary as a
//! process of its own (over mutual TLS where the broker has it); and the exactly-once checks.

use super::RigProcess;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A coordinator with its ledger in `dir`.
pub struct Coordinator {
    /// Its SQLite ledger file (absent when the ledger is on PostgreSQL).
    pub db: PathBuf,
    /// Where its ledger is.
    pub ledger: rigd_coordinator::ledger::Location,
    pub job: rigd_protocol::JobId,
    stop: tokio_util::sync::CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
    /// The `coordinator` process, when it runs as one.
    child: Option<std::process::Child>,
    progress: std::sync::Arc<std::sync::Mutex<Option<rigd_protocol::CoordinatorStatus>>>,
    log: PathBuf,
}

impl Coordinator {
    /// Starts a GEMM job of `units` units of `dim`^3 against the broker on `port`.
    pub fn gemm(
        port: u16,
        dir: &Path,
        units: u64,
        dim: u32,
        tune: impl FnOnce(&mut rigd_coordinator::CoordinatorConfig),
    ) -> Self {
        let job = rigd_protocol::JobId::new("gemm-test").expect("job id");
        let spec = rigd_coordinator::JobSpec::Gemm {
            job: job.clone(),
            units,
            m: dim,
            n: dim,
            k: dim,
            seed: 11,
        };
        Self::start(port, dir, spec, tune)
    }

    /// Starts the MLP training job `rigd-devnet` runs (16-32-4, 8 shards of 128 samples a
    /// step) until the held-out loss reaches `loss_target` or `max_steps` pass.
    pub fn mlp(port: u16, dir: &Path, max_steps: u64, loss_target: f32) -> Self {
        let spec = rigd_coordinator::JobSpec::TrainMlp {
            job: rigd_protocol::JobId::new("devnet-mlp").expect("job id"),
            shape: [16, 32, 4],
            data_seed: 7,
            data_spread: 1.0,
            shards_per_step: 8,
            samples_per_shard: 128,
            lr: 0.5,
            max_steps,
            loss_target,
            eval_samples: 1024,
        };
        Self::start(port, dir, spec, |_| {})
    }

    /// Runs the `coordinator` binary as its own process on a GEMM job of `units` units of
    /// `dim`^3, connecting with `tls` when given (see [`Self::process`]).
    pub fn process_gemm(
        port: u16,
        dir: &Path,
        units: u64,
        dim: u32,
        tls: Option<&rigd_client::TlsFiles>,
    ) -> Self {
        let ledger = rigd_coordinator::ledger::Location::File(dir.join("ledger.db"));
        Self::process_gemm_at(port, dir, units, dim, tls, ledger)
    }

    /// As [`Self::process_gemm`], with the ledger at `ledger` (a PostgreSQL database, say).
    pub fn process_gemm_at(
        port: u16,
        dir: &Path,
        units: u64,
        dim: u32,
        tls: Option<&rigd_client::TlsFiles>,
        ledger: rigd_coordinator::ledger::Location,
    ) -> Self {
        let job = format!(
            "--job gemm --job-id gemm-test --units {units} --mnk {dim},{dim},{dim} --seed 11"
        );
        Self::process(port, dir, &job, tls, ledger)
    }

    /// Runs the `coordinator` binary as its own process on the MLP training job of
    /// [`Self::mlp`], connecting with `tls` when given (see [`Self::process`]).
    pub fn process_mlp(
        port: u16,
        dir: &Path,
        max_steps: u64,
        loss_target: f32,
        tls: Option<&rigd_client::TlsFiles>,
    ) -> Self {
        let job = format!(
            "--job train --job-id devnet-mlp --shape 16,32,4 --data-seed 7 --spread 1.0 --shards 8 \
             --samples 128 --lr 0.5 --max-steps {max_steps} --loss-target {loss_target} --eval-samples 1024"
        );
        let ledger = rigd_coordinator::ledger::Location::File(dir.join("ledger.db"));
        Self::process(port, dir, &job, tls, ledger)
    }

    /// Runs the `coordinator` binary with `job` (its job flags, space-separated), 10 s leases
    /// and 10 % of results recomputed. Its progress is read from the ledger, not reported:
    /// `status` is `None`.
    fn process(
        port: u16,
        dir: &Path,
        job: &str,
        tls: Option<&rigd_client::TlsFiles>,
        ledger: rigd_coordinator::ledger::Location,
    ) -> Self {
        let args: Vec<&str> = job.split_whitespace().collect();
        let id = args
            .iter()
            .skip_while(|a| **a != "--job-id")
            .nth(1)
            .expect("--job-id");
        let job_id = rigd_protocol::JobId::new(*id).expect("job id");
        let db = dir.join("ledger.db");
        let log = dir.join("coordinator.log");
        let mut cmd = std::process::Command::new(super::workspace_bin("coordinator"));
        cmd.args(["--broker", &format!("127.0.0.1:{port}")])
            .args(["--db", &ledger_arg(&ledger)])
            .args(["--client-id", &format!("coordinator-{port}")])
            .args(&args)
            .args(["--lease-ms", "10000", "--verify-fraction", "0.1"])
            .env("RUST_LOG", "rigd_coordinator=info");
        if let Some(t) = tls {
            cmd.args(super::tls::args(t));
        }
        let child = super::spawn_logged(cmd, &log);
        Coordinator {
            db,
            ledger,
            job: job_id,
            stop: tokio_util::sync::CancellationToken::new(),
            runtime: None,
            child: Some(child),
            progress: std::sync::Arc::default(),
            log,
        }
    }

    /// The ledger's training checkpoint: steps stitched and the held-out loss after them.
    pub fn checkpoint(&self) -> Option<rigd_coordinator::ledger::Checkpoint> {
        self.ledger()
            .and_then(|l| l.checkpoint(&self.job).ok().flatten())
    }

    /// The coordinator's latest progress report.
    pub fn status(&self) -> Option<rigd_protocol::CoordinatorStatus> {
        self.progress.lock().ok().and_then(|p| p.clone())
    }

    fn start(
        port: u16,
        dir: &Path,
        spec: rigd_coordinator::JobSpec,
        tune: impl FnOnce(&mut rigd_coordinator::CoordinatorConfig),
    ) -> Self {
        let job = spec.id().clone();
        let db = dir.join("ledger.db");
        let log = dir.join("coordinator.log");
        // Each test runs in its own process (nextest), so the process's subscriber is this
        // coordinator's log; under `cargo test` the first coordinator's log takes it.
        if let Ok(file) = std::fs::File::create(&log) {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .with_env_filter("rigd_coordinator=info")
                .try_init();
        }
        let mut config =
            rigd_coordinator::CoordinatorConfig::new("127.0.0.1", port, db.clone(), spec);
        config.client_id = format!("coordinator-{port}");
        config.lease_ms = 10_000;
        config.verify_fraction = 0.1;
        tune(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let progress = std::sync::Arc::new(std::sync::Mutex::new(None));
        let latest = progress.clone();
        runtime.spawn(async move {
            while let Some(status) = rx.recv().await {
                if let Ok(mut p) = latest.lock() {
                    *p = Some(status);
                }
            }
        });
        runtime.spawn(async move {
            if let Err(e) = rigd_coordinator::run(config, s, Some(tx)).await {
                panic!("coordinator failed: {e}");
            }
        });
        Coordinator {
            ledger: rigd_coordinator::ledger::Location::File(db.clone()),
            db,
            job,
            stop,
            runtime: Some(runtime),
            child: None,
            progress,
            log,
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.reverse();
        tail.join("\n")
    }

    /// Waits until a line of its log holds `needle`; panics with the log's end after `secs`.
    pub fn wait_log(&self, needle: &str, secs: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while !std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(needle)) {
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {needle:?} after {secs} s; the log ends:\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connection to its ledger (read-only on SQLite).
    pub fn ledger(&self) -> Option<rigd_coordinator::Ledger> {
        match &self.ledger {
            rigd_coordinator::ledger::Location::File(path) => {
                rigd_coordinator::Ledger::open(path).ok()
            }
            postgres => rigd_coordinator::Ledger::open_existing_at(postgres).ok(),
        }
    }

    /// Kills its process with SIGKILL (an in-process coordinator is stopped instead).
    pub fn kill9(&mut self) {
        self.stop.cancel();
        super::kill9(&mut self.child);
    }

    /// Units credited, as (unit, times credited).
    pub fn credited(&self) -> Vec<(u64, u64)> {
        self.ledger()
            .and_then(|l| l.credited_units(&self.job).ok())
            .unwrap_or_default()
    }

    /// Every seq the coordinator recorded from `rig`.
    pub fn seqs(&self, rig: &str) -> Vec<u64> {
        let rig = rigd_protocol::RigId::new(rig).expect("rig id");
        self.ledger()
            .and_then(|l| l.recorded_seqs(&rig).ok())
            .unwrap_or_default()
    }

    /// Asserts the exactly-once properties: every unit of the job credited once, and every
    /// receipt each rig journaled recorded once with no gap.
    pub fn assert_exactly_once(&self, units: u64, rigs: &[&RigProcess]) {
        let credited = self.credited();
        assert_eq!(credited.len() as u64, units, "every unit credited");
        assert!(
            credited.iter().all(|(_, n)| *n == 1),
            "a unit credited twice: {credited:?}"
        );
        for rig in rigs {
            let (last, unacked) = rig.journal();
            assert_eq!(unacked, 0, "{}: receipts left unacknowledged", rig.rig);
            let seqs = self.seqs(&rig.rig);
            let expected: Vec<u64> = (1..=last).collect();
            assert_eq!(
                seqs, expected,
                "{}: recorded seqs differ from the journal's 1..={last}",
                rig.rig
            );
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        super::kill9(&mut self.child);
    }
}

/// The `--db` argument of the `coordinator` binary for `ledger`: the SQLite file's path or
/// the PostgreSQL URL (with its password, unlike the location's display).
pub fn ledger_arg(ledger: &rigd_coordinator::ledger::Location) -> String {
    match ledger {
        rigd_coordinator::ledger::Location::File(path) => path.display().to_string(),
        rigd_coordinator::ledger::Location::Postgres(url) => url.clone(),
    }
}

/// Waits until every unit of the coordinator's job is credited and every rig's outbox is empty.
pub fn wait_job_done(c: &Coordinator, units: u64, rigs: &[&RigProcess], secs: u64) {
    let done = |c: &Coordinator| c.credited().len() as u64 >= units;
    let drained = || rigs.iter().all(|r| r.journal().1 == 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !(done(c) && drained()) {
        if std::time::Instant::now() > deadline {
            panic!(
                "timed out after {secs} s waiting for the job to finish: {} of {units} units credited, coordinator {:?}; its log ends:\n{}{}",
                c.credited().len(),
                c.status(),
                c.log_tail(30),
                rigs.iter().map(|r| r.state_report()).collect::<String>()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
