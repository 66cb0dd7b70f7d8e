//! `rigd`: the rig agent's entry point.

use clap::{Parser, Subcommand};
use rigd::keys::KeyStore;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// rigd, the rig agent. Exit codes: 0 stopped cleanly, 1 runtime failure, 2 bad rig.conf,
/// 3 hardware (key store, cards), 4 identity revoked by the fleet.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Path of rig.conf.
    #[arg(long, default_value = "/etc/rig-config/rig.conf")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one card's worker over stdin/stdout (started by rigd itself).
    #[command(hide = true)]
    Worker,
    /// The receipt key named in rig.conf.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Creates the key in its key store if it does not exist yet, then shows it.
    Init,
    /// Shows the public key (and Ethereum address for secp256k1) and where the key lives.
    Show,
    /// Shows the key and what its key store vouches for: for a TPM, the persistent handle,
    /// the key's TPM name and the attributes that keep it inside the TPM.
    Attest,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Worker) = args.command {
        return rigd::worker::serve_stdio();
    }
    rigd_client::init_logging("info");
    let config = match rigd::RigConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "rig.conf refused");
            eprintln!("rigd: {e}");
            rigd::notify::status_line(&format!("rig.conf refused: {e}"));
            return ExitCode::from(2);
        }
    };
    if let Some(Cmd::Keys { action }) = &args.command {
        return keys(&config.settings, action);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rigd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let worker = rigd::WorkerCommand {
        program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rigd")),
        args: vec!["worker".into()],
    };
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            stop.cancel();
        });
        // With [provision], claim an identity first (read back once provisioned). The
        // operator keys granted are the ones signed commands are checked against, the
        // domain granted the one receipts are signed for.
        let rigd::RigConfig {
            identity,
            mut settings,
        } = config;
        let (assigned, granted) = rigd::claim::provision(&settings, identity, &shutdown).await?;
        settings.trust(granted);
        rigd::run(settings, assigned, worker, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "rigd stopped");
            eprintln!("rigd: {e}");
            rigd::notify::status_line(&format!("stopped: {e}"));
            ExitCode::from(e.exit_code())
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `rigd keys init|show|attest`. Opening a key creates it where the backend creates keys on first
/// use (TPM, PKCS#11 token, YubiHSM2, file), so `init` and `show` differ only in wording.
fn keys(config: &rigd::RigSettings, action: &KeysAction) -> ExitCode {
    let key = match config.open_key(&config.key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("rigd: {e}");
            return ExitCode::from(3);
        }
    };
    let public = key.public_key();
    if matches!(action, KeysAction::Init) {
        println!("key ready");
    }
    println!("key:        {}", key.describe());
    println!("public key: {public}");
    if let Some(address) = public.eth_address() {
        println!("address:    0x{}", hex::encode(address));
    }
    if matches!(action, KeysAction::Attest) {
        match key.attest() {
            Ok(lines) if lines.is_empty() => {
                println!("attestation: none (this key store attests nothing about its keys)")
            }
            Ok(lines) => {
                for (label, value) in lines {
                    println!("{:<11} {value}", format!("{label}:"));
                }
            }
            Err(e) => {
                eprintln!("rigd: {e}");
                return ExitCode::from(3);
            }
        }
    }
    if let Some(uri) = config.tls_key.as_ref().filter(|u| **u != config.key) {
        match config.open_key(uri) {
            Ok(k) => println!("tls key:    {} ({})", k.public_key(), k.describe()),
            Err(e) => {
                eprintln!("rigd: tls_key: {e}");
                return ExitCode::from(3);
            }
        }
    }
    ExitCode::SUCCESS
}
