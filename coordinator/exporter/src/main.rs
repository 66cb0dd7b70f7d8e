//! `rigd-exporter`: the fleet's figures for Prometheus, read from the broker, served on
//! `/metrics` until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown, 2 for a configuration error, 1 when the broker
//! session ends for good (e.g. a revoked certificate) or the listener fails.

use anyhow::Context;
use clap::Parser;
use rigd_exporter::follow::{follow_while_serving, Broker, BrokerArgs};
use rigd_exporter::Exporter;
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
    broker: BrokerArgs,
}

fn config(args: Args) -> anyhow::Result<(Args, Broker)> {
    let broker = args.broker.resolve("rigd-exporter")?;
    Ok((args, broker))
}

async fn run((args, broker): (Args, Broker), stop: CancellationToken) -> anyhow::Result<()> {
    let exporter = Arc::new(Exporter::new(
        args.max_rigs,
        args.stale_after_s.saturating_mul(1000),
    )?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %args.listen, broker = %args.broker.broker, "serving /metrics");
    let http = tokio::spawn(rigd_exporter::http::serve(
        listener,
        exporter.clone(),
        stop.clone(),
    ));
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
