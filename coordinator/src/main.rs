//! `coordinator`: runs one job against an MQTT broker until SIGINT or SIGTERM.
//! `coordinator payouts ...`: one payout run (see `coordinator payouts --help`).
//!
//! Exit codes: 0 after a clean shutdown, 2 for a configuration error, 1 when the coordinator
//! fails at run time (e.g. the ledger cannot be opened).

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rigd_coordinator::{CoordinatorConfig, CoordinatorError, JobSpec};
use rigd_protocol::{Domain, EthAddress, JobId};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum JobKind {
    /// Data-parallel MLP training.
    Train,
    /// Independent int8 GEMM units.
    Gemm,
}

/// Splits a job into units for rigs, verifies their receipts and keeps the earnings ledger.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Broker address, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// The ledger: a SQLite file, or a PostgreSQL database by its `postgresql://` URL.
    #[arg(long)]
    db: String,
    /// MQTT client id (keep it stable: the session is persistent).
    #[arg(long, default_value = "rigd-coordinator")]
    client_id: String,
    /// Which job to run.
    #[arg(long, value_enum)]
    job: JobKind,
    /// Job id.
    #[arg(long, default_value = "job-1")]
    job_id: String,
    /// Lease of a unit, milliseconds.
    #[arg(long, default_value_t = 30_000)]
    lease_ms: u64,
    /// How long after a lease ran out its result is still paid, milliseconds.
    #[arg(long, default_value_t = 30_000)]
    lease_grace_ms: u64,
    /// Outstanding units per card.
    #[arg(long, default_value_t = 3)]
    units_per_card: u32,
    /// Share of results recomputed on the CPU.
    #[arg(long, default_value_t = 0.05)]
    verify_fraction: f64,
    /// Price, micro-credits per MFLOP.
    #[arg(long, default_value_t = 10_000)]
    micros_per_mflop: u64,
    /// Float tolerance (relative, absolute below magnitude 1).
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
    /// MLP widths: input,hidden,output.
    #[arg(long, value_delimiter = ',', default_value = "16,32,4")]
    shape: Vec<u32>,
    /// Data set and initial-parameter seed.
    #[arg(long, default_value_t = 7)]
    data_seed: u64,
    /// Spread of the data set's clusters.
    #[arg(long, default_value_t = 1.0)]
    spread: f32,
    /// Units per MLP step.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Samples per MLP unit.
    #[arg(long, default_value_t = 256)]
    samples: u32,
    /// Learning rate.
    #[arg(long, default_value_t = 0.5)]
    lr: f32,
    /// Most MLP steps.
    #[arg(long, default_value_t = 100)]
    max_steps: u64,
    /// Held-out loss at which training stops.
    #[arg(long, default_value_t = 0.1)]
    loss_target: f32,
    /// Held-out samples.
    #[arg(long, default_value_t = 1024)]
    eval_samples: u32,
    /// GEMM units.
    #[arg(long, default_value_t = 100)]
    units: u64,
    /// GEMM dimensions m,n,k.
    #[arg(long, value_delimiter = ',', default_value = "64,64,64")]
    mnk: Vec<u32>,
    /// GEMM seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The provisioner's registry (read-only): keys of rigs rekeyed with their owner's claim.
    #[arg(long)]
    registry: Option<PathBuf>,
    /// The deployment receipts are credited for.
    #[command(flatten)]
    domain: rigd_client::DomainArgs,
    /// A retired deployment whose batches are still credited, CHAIN_ID:0xCONTRACT;
    /// repeatable.
    #[arg(long = "retired-domain", value_parser = parse_domain)]
    retired_domains: Vec<Domain>,
    #[command(flatten)]
    tls: rigd_client::TlsArgs,
}

fn parse_domain(text: &str) -> Result<Domain, String> {
    let (chain, contract) = text
        .split_once(':')
        .ok_or("a domain is CHAIN_ID:0xCONTRACT")?;
    let chain = chain
        .parse()
        .map_err(|_| format!("chain id {chain:?} is not a number"))?;
    let contract = EthAddress::parse(contract).map_err(|e| e.to_string())?;
    Ok(Domain::new(chain, contract))
}

fn three(v: &[u32], what: &str) -> anyhow::Result<[u32; 3]> {
    <[u32; 3]>::try_from(v).map_err(|_| anyhow::anyhow!("--{what} takes three numbers"))
}

fn config(args: Args) -> anyhow::Result<CoordinatorConfig> {
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .context("--broker must be host:port")?;
    let port: u16 = port.parse().context("--broker port is not a number")?;
    let job = JobId::new(args.job_id).context("--job-id")?;
    let spec = match args.job {
        JobKind::Train => JobSpec::TrainMlp {
            job,
            shape: three(&args.shape, "shape")?,
            data_seed: args.data_seed,
            data_spread: args.spread,
            shards_per_step: args.shards,
            samples_per_shard: args.samples,
            lr: args.lr,
            max_steps: args.max_steps,
            loss_target: args.loss_target,
            eval_samples: args.eval_samples,
        },
        JobKind::Gemm => {
            let [m, n, k] = three(&args.mnk, "mnk")?;
            JobSpec::Gemm {
                job,
                units: args.units,
                m,
                n,
                k,
                seed: args.seed,
            }
        }
    };
    let ledger = rigd_coordinator::ledger::Location::parse(&args.db);
    let mut config = CoordinatorConfig::new(host, port, ledger, spec);
    config.tls = args.tls.files();
    config.registry = args.registry;
    config.domains = std::iter::once(args.domain.domain())
        .chain(args.retired_domains)
        .collect();
    config.client_id = args.client_id;
    config.lease_ms = args.lease_ms;
    config.lease_grace_ms = args.lease_grace_ms;
    config.units_per_card = args.units_per_card;
    config.verify_fraction = args.verify_fraction;
    config.micros_per_mflop = args.micros_per_mflop;
    config.float_rel_tolerance = args.tolerance;
    Ok(config)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HoldAt {
    Built,
    Signed,
    Sent,
}

/// One payout run: finishes an epoch a cut-off run left, then builds the next epoch from the
/// ledger (credit past its audit window, paid to each rig owner's payout address in the
/// registry) and posts it to the settlement contract; answers the disputes opened since the
/// last run and signs the rigs' credit statements. Prints one JSON line per epoch posted and
/// per dispute answered, and the number of statements signed.
#[derive(Debug, Parser)]
#[command(name = "coordinator payouts", version)]
struct PayoutArgs {
    /// The coordinator's ledger: a SQLite file, or a PostgreSQL database by its
    /// `postgresql://` URL.
    #[arg(long)]
    db: String,
    /// The provisioner's registry (read-only): owners and their payout addresses.
    #[arg(long)]
    registry: PathBuf,
    /// Ethereum JSON-RPC endpoint, http:// or https://.
    #[arg(long, default_value = "http://127.0.0.1:8545")]
    rpc: String,
    /// File with the network account's secp256k1 key (hex): the settlement's owner, holding
    /// the payout token.
    #[arg(long)]
    key_file: PathBuf,
    /// The settlement deployment (the node must be on its chain).
    #[command(flatten)]
    domain: rigd_client::DomainArgs,
    /// Credit younger than this is not paid yet, ms (the coordinator's audit window).
    #[arg(long, default_value_t = 600_000)]
    audit_window_ms: u64,
    /// File with the network's statement key (secp256k1, hex; the settlement contract's
    /// `statementSigner`): the run signs each rig's credit statement as of its cutoff and keeps
    /// it in the ledger for the owners' dashboard.
    #[arg(long)]
    statement_key: Option<PathBuf>,
    /// Stops at this point and waits to be killed (crash tests).
    #[arg(long, value_enum, hide = true)]
    hold_at: Option<HoldAt>,
}

async fn payouts(args: PayoutArgs) -> anyhow::Result<()> {
    use rigd_coordinator::payout_run::{self, Hold, PayoutConfig};
    let domain = args.domain.domain();
    let chain =
        rigd_coordinator::chain::Chain::connect(&args.rpc, &args.key_file, Some(domain.chain_id))
            .await
            .context("connecting to the chain")?;
    let config = PayoutConfig {
        ledger: rigd_coordinator::ledger::Location::parse(&args.db),
        registry: args.registry,
        settlement: alloy_primitives::Address::from(domain.verifying_contract),
        audit_ms: args.audit_window_ms,
        hold: args.hold_at.map(|h| match h {
            HoldAt::Built => Hold::Built,
            HoldAt::Signed => Hold::Signed,
            HoldAt::Sent => Hold::Sent,
        }),
        statement_key: args.statement_key,
    };
    let report = payout_run::run(&chain, &config).await?;
    if report.posted.is_empty() {
        println!("{}", serde_json::json!({"posted": null}));
    }
    for p in report.posted {
        println!(
            "{}",
            serde_json::json!({"posted": p.epoch, "tx": p.tx, "owners": p.owners,
                "total": p.total.to_string(), "recovered": p.recovered})
        );
    }
    for a in report.answered {
        println!(
            "{}",
            serde_json::json!({"answered": format!("0x{}", alloy_primitives::hex::encode(a.id)),
                "rig": a.rig, "epoch": a.epoch, "refused": a.refused})
        );
    }
    if let Some(n) = report.statements {
        println!("{}", serde_json::json!({"statements": n}));
    }
    Ok(())
}

fn payouts_main() -> ExitCode {
    let args = PayoutArgs::parse_from(std::env::args_os().skip(1));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(payouts(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "payout run failed");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    rigd_client::init_logging("info");
    if std::env::args_os().nth(1).is_some_and(|a| a == "payouts") {
        return payouts_main();
    }
    let config = match config(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "configuration error");
            return ExitCode::from(2);
        }
    };
    match rigd_client::run_until_signal(|stop| rigd_coordinator::run(config, stop, None)) {
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            ExitCode::from(1)
        }
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e @ (CoordinatorError::Config(_) | CoordinatorError::Job(_)))) => {
            tracing::error!(error = %e, "configuration error");
            ExitCode::from(2)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "coordinator failed");
            ExitCode::from(1)
        }
    }
}
