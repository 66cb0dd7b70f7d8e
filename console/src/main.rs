//! `rigctl`: the console's entry point. Exit codes are listed in `rigctl --help`.

use anyhow::Context;
use clap::Parser;
use rigctl::cli::Cli;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = "warn";
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rigctl: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(rigctl::run(cli));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rigctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
