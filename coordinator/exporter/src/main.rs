//! `rigd-exporter`: the fleet's figures for Prometheus, read from the broker, served on
//! `/metrics` until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown, 2 for a configuration error, 1 when the broker
//! session ends for good (e.g. a revoked certificate) or the listener fails.

use anyhow::Context;
use clap::Parser;
use rigd_client::{Backoff, Lifetime, Reconnect, Session, SessionEvent, SessionSpec};
use rigd_exporter::fleet::Fleet;
use rigd_exporter::Exporter;
use rumqttc::v5::mqttbytes::QoS;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Serves every rig's cards, every rig and the coordinator as Prometheus metrics.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Broker address, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Where to serve /metrics.
    #[arg(long, default_value = "127.0.0.1:9401")]
    listen: SocketAddr,
    /// MQTT client id (one per exporter).
    #[arg(long, default_value = "rigd-exporter")]
    client_id: String,
    /// Most rigs tracked; messages of further rigs are refused and counted.
    #[arg(long, default_value_t = 20_000)]
    max_rigs: usize,
    /// A card's series disappear when its telemetry is older than this, seconds.
    #[arg(long, default_value_t = 60)]
    stale_after_s: u64,
    #[command(flatten)]
    tls: rigd_client::TlsArgs,
}

struct Config {
    host: String,
    port: u16,
    args: Args,
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn config(args: Args) -> anyhow::Result<Config> {
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .context("--broker must be host:port")?;
    let port: u16 = port.parse().context("--broker port is not a number")?;
    let tls = match args.tls.files() {
        Some(files) => Some(rigd_client::client_config_from_files(&files).context("--tls-*")?),
        None => None,
    };
    Ok(Config {
        host: host.to_owned(),
        port,
        args,
        tls,
    })
}

async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<()> {
    let args = &config.args;
    let exporter = Arc::new(Exporter::new(
        args.max_rigs,
        args.stale_after_s.saturating_mul(1000),
    )?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %args.listen, broker = %args.broker, "serving /metrics");
    let http = tokio::spawn(rigd_exporter::http::serve(
        listener,
        exporter.clone(),
        stop.clone(),
    ));
    let spec = SessionSpec {
        options: rigd_client::options(
            &args.client_id,
            &config.host,
            config.port,
            config.tls.clone(),
            Lifetime::Fresh,
        ),
        subscriptions: Fleet::subscriptions()
            .into_iter()
            .map(|f| (f, QoS::AtMostOnce))
            .collect(),
        requests: 16,
        events: 1024,
        reconnect: Reconnect::Backoff(Backoff::default()),
    };
    let (session, mut events) = Session::start(spec, stop.clone());
    let outcome = loop {
        tokio::select! {
            () = stop.cancelled() => break Ok(()),
            event = events.recv() => match event {
                Some(SessionEvent::Message(p)) => {
                    let topic = String::from_utf8_lossy(&p.topic);
                    exporter.receive(&topic, &p.payload, rigd_client::unix_ms());
                }
                Some(SessionEvent::Connected { .. }) => tracing::info!("connected to the broker"),
                Some(SessionEvent::Disconnected { reason }) => {
                    tracing::warn!(%reason, "broker connection lost; reconnecting");
                }
                Some(SessionEvent::Revoked { reason } | SessionEvent::Failed { reason, .. }) => {
                    break Err(anyhow::anyhow!("broker session ended: {reason}"));
                }
                Some(SessionEvent::Subscribed) => {}
                None => break Err(anyhow::anyhow!("broker session ended")),
            },
        }
    };
    stop.cancel();
    session.close(std::time::Duration::from_secs(1)).await;
    match http.await {
        Ok(Ok(())) => outcome,
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the HTTP listener failed")),
        Err(e) => Err(anyhow::Error::new(e).context("the HTTP task failed")),
    }
}

fn main() -> ExitCode {
    rigd_client::init_logging("info");
    let config = match config(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "configuration error");
            return ExitCode::from(2);
        }
    };
    match rigd_client::run_until_signal(|stop| run(config, stop)) {
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            ExitCode::from(1)
        }
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = format!("{e:#}"), "exporter failed");
            ExitCode::from(1)
        }
    }
}
