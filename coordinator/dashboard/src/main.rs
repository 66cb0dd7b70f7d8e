//! `rigd-dashboard`: the owners' dashboard, served until SIGINT or SIGTERM. It reads the
//! provisioner's registry and the coordinator's ledger read-only and the rigs' retained
//! statuses and telemetry from the broker.
//!
//! Exit codes: 0 after a clean shutdown, 2 for a configuration error, 1 when the broker
//! session ends for good.

use anyhow::Context;
use clap::Parser;
use rigd_dashboard::alerts::Alerts;
use rigd_dashboard::auth::{Limits, LoginLimiter, Sessions};
use rigd_dashboard::data::Store;
use rigd_dashboard::http::App;
use rigd_exporter::fleet::Fleet;
use rigd_exporter::follow::{follow_while_serving, Broker, BrokerArgs};
use rigd_httpd::{Front, HttpArgs};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Serves owners their rigs, earnings and disputes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The provisioner's registry database (read-only).
    #[arg(long)]
    registry: PathBuf,
    /// The coordinator's ledger (read-only): a SQLite file, or a PostgreSQL database by its
    /// `postgresql://` URL.
    #[arg(long)]
    ledger: String,
    /// Where to serve the dashboard.
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: SocketAddr,
    /// Most rigs tracked from the broker.
    #[arg(long, default_value_t = 200_000)]
    max_rigs: usize,
    /// How long a session lasts, seconds.
    #[arg(long, default_value_t = 12 * 3600)]
    session_ttl_s: u64,
    /// The dashboard's own database: owners' alert settings, incidents and notices.
    #[arg(long)]
    alerts: PathBuf,
    /// How often rigs are judged for alerts, ms.
    #[arg(long, default_value_t = 1000)]
    alert_tick_ms: u64,
    /// Allow webhooks on loopback and private addresses (tests, closed networks); by default
    /// a webhook must resolve to a public address.
    #[arg(long)]
    allow_private_webhooks: bool,
    /// Leave `Secure` off the session cookie: only for plain HTTP on loopback; in production
    /// the dashboard serves HTTPS (`--https-cert`) or sits behind a TLS proxy.
    #[arg(long)]
    insecure_cookie: bool,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

fn config(args: Args) -> anyhow::Result<(Args, Broker, Front)> {
    let broker = args.broker.resolve("rigd-dashboard")?;
    let front = args.http.front()?;
    Ok((args, broker, front))
}

async fn run(
    (args, broker, front): (Args, Broker, Front),
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = Arc::new(App {
        store: Store::new(
            args.registry.clone(),
            rigd_coordinator::ledger::Location::parse(&args.ledger),
            8,
        ),
        fleet: Mutex::new(Fleet::new(args.max_rigs)),
        sessions: Mutex::new(Sessions::new(
            args.session_ttl_s.saturating_mul(1000),
            100_000,
            16,
        )),
        limiter: Mutex::new(LoginLimiter::new(Limits::default())),
        alerts: Mutex::new(Alerts::open(&args.alerts).context("--alerts")?),
        allow_private_webhooks: args.allow_private_webhooks,
        secure_cookie: !args.insecure_cookie,
        clock: Arc::new(rigd_client::unix_ms),
    });
    tracing::info!(broker = %args.broker.broker, "following the fleet");
    let http = rigd_httpd::spawn(
        "dashboard",
        args.listen,
        rigd_dashboard::http::router(app.clone()),
        front,
        stop.clone(),
    )
    .await?;
    tokio::spawn(rigd_dashboard::watch::watch(
        app.clone(),
        Duration::from_millis(args.alert_tick_ms.max(100)),
        stop.clone(),
    ));
    follow_while_serving(&broker, stop, http, |topic, payload| {
        let now = rigd_client::unix_ms();
        let mut fleet = app.fleet.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = fleet.apply(topic, payload, now) {
            tracing::debug!(%topic, reason = e.reason(), "message refused");
        }
    })
    .await?;
    Ok(())
}

fn main() -> ExitCode {
    rigd_client::init_logging("info");
    rigd_client::daemon_main("dashboard", config(Args::parse()), run)
}
