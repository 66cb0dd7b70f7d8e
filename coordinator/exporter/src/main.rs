//! `rigd-exporter`: the fleet's figures for Prometheus, read from the broker, served on
//! `/metrics` until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown, 2 for a configuration error, 1 when the broker
//! session ends for good (e.g. a revoked certificate).

use clap::Parser;
use rigd_exporter::follow::{follow_while_serving, Broker, BrokerArgs};
use rigd_exporter::Exporter;
use rigd_httpd::{Front, HttpArgs};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Serves every rig's cards, every rig and the coordinator as Prometheus metrics.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where to serve /metrics.
    #[arg(long, default_value = "127.0.0.1:9401")]
    listen: SocketAddr,
    /// Most rigs tracked; messages of further rigs are refused and counted.
    #[arg(long, default_value_t = 20_000)]
    max_rigs: usize,
    /// A card's series disappear when its telemetry is older than this, seconds.
    #[arg(long, default_value_t = 60)]
    stale_after_s: u64,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

fn config(args: Args) -> anyhow::Result<(Args, Broker, Front)> {
    let broker = args.broker.resolve("rigd-exporter")?;
    let front = args.http.front()?;
    Ok((args, broker, front))
}

async fn run(
    (args, broker, front): (Args, Broker, Front),
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let exporter = Arc::new(Exporter::new(
        args.max_rigs,
        args.stale_after_s.saturating_mul(1000),
    )?);
    tracing::info!(broker = %args.broker.broker, "following the fleet");
    let http = rigd_httpd::spawn(
        "exporter",
        args.listen,
        rigd_exporter::http::router(exporter.clone()),
        front,
        stop.clone(),
    )
    .await?;
    follow_while_serving(&broker, stop, http, |topic, payload| {
        exporter.receive(topic, payload, rigd_client::unix_ms());
    })
    .await?;
    Ok(())
}

fn main() -> ExitCode {
    rigd_client::init_logging("info");
    rigd_client::daemon_main("exporter", config(Args::parse()), run)
}
