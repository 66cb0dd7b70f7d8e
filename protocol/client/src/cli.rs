//! What the fleet's command-line programs share (feature `cli`: only binaries need it): the
//! flags of their broker link and their log setup.

use crate::TlsFiles;
use rigd_protocol::{Domain, EthAddress};
use std::path::PathBuf;

/// Command-line TLS flags shared by the fleet's tools (`--tls-ca`, `--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file of the fleet CA: connect to the broker with mutual TLS.
    #[arg(long, global = true, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate (with --tls-ca).
    #[arg(long, global = true, requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of this client's private key (with --tls-ca).
    #[arg(long, global = true, requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files named, or `None` for a plain TCP connection.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            ca: self.tls_ca.clone()?,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone(),
        })
    }
}

/// The deployment receipts are signed for (`--chain-id`, `--settlement-contract`), shared by
/// the provisioner (which grants it to every rig) and the coordinator (which accepts batches
/// signed for it). Both absent: the local development chain, [`Domain::LOCAL`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DomainArgs {
    /// EIP-155 chain id of the settlement contract (with --settlement-contract).
    #[arg(long, requires = "settlement_contract")]
    pub chain_id: Option<u64>,
    /// Address of the settlement contract, 0x and 40 hex digits (with --chain-id).
    #[arg(long, requires = "chain_id", value_parser = parse_address)]
    pub settlement_contract: Option<EthAddress>,
}

impl DomainArgs {
    /// The domain named, or the local development one.
    pub fn domain(&self) -> Domain {
        self.given().unwrap_or(Domain::LOCAL)
    }

    /// The domain named, if one was.
    pub fn given(&self) -> Option<Domain> {
        Some(Domain::new(self.chain_id?, self.settlement_contract?))
    }
}

fn parse_address(text: &str) -> Result<EthAddress, String> {
    EthAddress::parse(text).map_err(|e| e.to_string())
}

/// Sets up the program's log: `RUST_LOG` or else `default_filter`, on stderr, colored only on
/// a terminal, and without timestamps under systemd (`JOURNAL_STREAM` set), where journald
/// stamps every line itself.
pub fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        log.without_time().init();
    } else {
        log.init();
    }
}

/// Runs `work` to its end on a new multi-threaded runtime; the token it is given is cancelled
/// at the first SIGINT or SIGTERM, which is how the fleet's daemons are stopped. `Err` when
/// the runtime cannot start.
pub fn run_until_signal<F, T>(
    work: impl FnOnce(tokio_util::sync::CancellationToken) -> F,
) -> std::io::Result<T>
where
    F: std::future::Future<Output = T>,
{
    let runtime = tokio::runtime::Runtime::new()?;
    let stop = tokio_util::sync::CancellationToken::new();
    runtime.spawn(cancel_on_signal(stop.clone()));
    Ok(runtime.block_on(work(stop)))
}

/// The `main` of a fleet daemon, after its log is set up: a configuration error exits 2;
/// otherwise `run` runs with [`run_until_signal`]'s token and exits 0 when it returns `Ok`
/// (stopped by SIGINT or SIGTERM) and 1 when it fails or the runtime cannot start. Errors
/// are logged with their whole chain.
pub fn daemon_main<C, E, R, F>(
    what: &str,
    config: Result<C, E>,
    run: impl FnOnce(C, tokio_util::sync::CancellationToken) -> F,
) -> std::process::ExitCode
where
    E: std::fmt::Display,
    R: std::fmt::Display,
    F: std::future::Future<Output = Result<(), R>>,
{
    use std::process::ExitCode;
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "configuration error");
            return ExitCode::from(2);
        }
    };
    match run_until_signal(|stop| run(config, stop)) {
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            ExitCode::from(1)
        }
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = format!("{e:#}"), "{what} failed");
            ExitCode::from(1)
        }
    }
}

async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    shutdown.cancel();
}
